//! Profiles and generations.
//!
//! A profile (one per recipe installed on a host) is a numbered sequence of generations, each
//! a link `<N>-link -> ../../store/<entry>`, plus one link `current -> <N>-link`. Switching
//! generations is one rename(2) of `current` followed by an fsync of the directory, so a crash
//! leaves `current` on the old or the new generation, both complete. `state.json` records each
//! generation's status: `pending` from just before the switch until the health gate decides,
//! then `good` or `failed`.

use crate::error::{Error, Result, io_at};
use crate::fsutil;
use crate::layout::Layout;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A generation's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Switched to (or about to be) but not yet through the health gate.
    Pending,
    /// Passed the health gate.
    Good,
    /// Failed the health gate, or was interrupted before it switched.
    Failed,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Pending => "pending",
            Status::Good => "good",
            Status::Failed => "failed",
        })
    }
}

/// One generation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// Its number (1, 2, …).
    pub number: u32,
    /// Store entry name.
    pub store: String,
    /// Bundle version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Environment.
    pub environment: String,
    /// sha256 of the bundle file it was installed from.
    pub bundle_sha256: String,
    /// sha256 of its manifest.
    pub manifest_sha256: String,
    /// Status.
    pub status: Status,
    /// When it was installed (RFC 3339).
    pub installed_at: String,
    /// When its status was last decided (RFC 3339).
    pub decided_at: Option<String>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// What it uses under `inputs/` (content-addressed inputs and its override file), as of its
    /// last start; gc keeps these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
}

/// A profile's state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Profile name.
    pub name: String,
    /// The compose project name used for every generation of this profile.
    pub project: String,
    /// Host env file (secrets) used by this profile, remembered for rollback and recover.
    #[serde(default)]
    pub env_file: Option<PathBuf>,
    /// Generations, oldest first (gc removes old ones).
    pub generations: Vec<Generation>,
}

/// An open profile.
pub struct Profile {
    dir: PathBuf,
    /// Its state.
    pub state: State,
}

/// The file in a profile directory that says its containers were stopped on purpose
/// (`smoker-install stop`), holding the time.
const STOPPED_MARK: &str = "stopped";

/// The current time as RFC 3339.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Profile {
    /// Opens a profile, if it exists.
    pub fn open(layout: &Layout, name: &str) -> Result<Option<Profile>> {
        let dir = layout.profile(name);
        let path = dir.join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let state: State = serde_json::from_slice(&bytes)
            .map_err(|e| Error::State(format!("{} is corrupt: {e}", path.display())))?;
        Ok(Some(Profile { dir, state }))
    }

    /// Opens a profile, creating it with `project` as compose project name if new.
    pub fn open_or_create(layout: &Layout, name: &str, project: &str) -> Result<Profile> {
        if let Some(p) = Self::open(layout, name)? {
            return Ok(p);
        }
        let dir = layout.profile(name);
        std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        let p = Profile {
            dir,
            state: State {
                name: name.to_string(),
                project: project.to_string(),
                env_file: None,
                generations: Vec::new(),
            },
        };
        p.save()?;
        Ok(p)
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes the state atomically.
    pub fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).unwrap_or_default();
        fsutil::write_atomic(&self.dir.join("state.json"), &bytes, 0o644)
    }

    /// The generation `current` points to, read from the link itself.
    pub fn current(&self) -> Option<u32> {
        let target = std::fs::read_link(self.dir.join("current")).ok()?;
        target
            .to_string_lossy()
            .strip_suffix("-link")
            .and_then(|n| n.parse().ok())
    }

    /// A generation by number.
    pub fn generation(&self, n: u32) -> Option<&Generation> {
        self.state.generations.iter().find(|g| g.number == n)
    }

    /// A generation by number, mutable.
    pub fn generation_mut(&mut self, n: u32) -> Option<&mut Generation> {
        self.state.generations.iter_mut().find(|g| g.number == n)
    }

    /// The next generation number.
    pub fn next_number(&self) -> u32 {
        self.state
            .generations
            .iter()
            .map(|g| g.number)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// The newest good generation other than `except`.
    pub fn last_good(&self, except: Option<u32>) -> Option<&Generation> {
        self.state
            .generations
            .iter()
            .rev()
            .find(|g| g.status == Status::Good && Some(g.number) != except)
    }

    /// Records a new pending generation and creates its link (not yet current).
    pub fn add_pending(&mut self, g: Generation) -> Result<()> {
        let link = self.dir.join(format!("{}-link", g.number));
        let target = Path::new("../../store").join(&g.store);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).map_err(io_at(&link))?;
        fsutil::fsync_dir(&self.dir)?;
        self.state.generations.push(g);
        self.save()
    }

    /// Points `current` at generation `n` atomically.
    pub fn switch(&self, n: u32) -> Result<()> {
        let link = self.dir.join(format!("{n}-link"));
        if std::fs::metadata(&link).is_err() {
            return Err(Error::State(format!(
                "generation {n} has no complete store entry ({} is dangling)",
                link.display()
            )));
        }
        fsutil::symlink_atomic(Path::new(&format!("{n}-link")), &self.dir.join("current"))?;
        // Switching starts a generation (apply, rollback): the profile is no longer stopped.
        self.clear_stopped()
    }

    /// When `smoker-install stop` stopped this profile's containers (RFC 3339), if it is
    /// stopped: `start`, `apply` and `rollback` end that.
    pub fn stopped_since(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(STOPPED_MARK))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Records that the profile's containers were stopped on purpose.
    pub fn mark_stopped(&self) -> Result<()> {
        fsutil::write_atomic(&self.dir.join(STOPPED_MARK), now().as_bytes(), 0o644)
    }

    /// Forgets that the profile was stopped.
    pub fn clear_stopped(&self) -> Result<()> {
        let path = self.dir.join(STOPPED_MARK);
        match std::fs::remove_file(&path) {
            Ok(()) => fsutil::fsync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Sets a generation's status (and reason) and saves.
    pub fn decide(&mut self, n: u32, status: Status, reason: Option<String>) -> Result<()> {
        if let Some(g) = self.generation_mut(n) {
            g.status = status;
            g.decided_at = Some(now());
            g.reason = reason;
        }
        self.save()
    }

    /// Removes a generation's link and record (gc).
    pub fn forget(&mut self, n: u32) -> Result<()> {
        let link = self.dir.join(format!("{n}-link"));
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&link)(e)),
        }
        self.state.generations.retain(|g| g.number != n);
        self.save()
    }
}

/// A recorded generation with made-up hashes, for unit tests of decisions over generations.
#[cfg(test)]
pub(crate) fn test_generation(number: u32, version: &str, status: Status) -> Generation {
    Generation {
        number,
        store: format!("entry-{number}"),
        version: version.into(),
        arch: "amd64".into(),
        environment: "prod".into(),
        bundle_sha256: String::new(),
        manifest_sha256: String::new(),
        status,
        installed_at: String::new(),
        decided_at: None,
        reason: None,
        inputs: Vec::new(),
    }
}
