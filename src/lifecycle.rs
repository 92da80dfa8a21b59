//! A profile's stack outside an apply: `smoker-install stop`, `start` and `remove`.
//!
//! - **stop**: the current generation's containers are stopped (`compose stop`: kept, not
//!   removed); the generation stays current and `good`, and the profile is marked stopped
//!   (`status` says so) until `start`, `apply` or `rollback` starts a generation again.
//! - **start**: the current generation is started again (`compose up`, from its checked store
//!   entry) and gated by the health checks, like a rollback to itself.
//! - **remove**: the stack is taken down (`compose down`: containers and networks; named
//!   volumes are kept, they hold data), and the profile is forgotten (its generations, state,
//!   migration ledger and lock holder record). Store entries and images are left to `gc`, which
//!   removes them once no kept generation of any profile uses them. Backups are kept unless
//!   `purge_backups`; the anti-rollback floor (`floors/<name>`) is kept too, so reinstalling
//!   cannot silently go back to an older version.
//!
//! Each takes the profile lock like an apply (failing at once when it is held, or waiting with
//! `wait`), finishes an interrupted run first, and records an audit entry and a notification.

use crate::activate::{Target, activate, entry_env, generation_entry, profile_env_file};
use crate::error::{Error, Result};
use crate::health::Report;
use crate::hostconfig::HostConfig;
use crate::hostlock;
use crate::layout::Layout;
use crate::notify::{self, Event, Notice};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::runtime::{Runtime, Stack};
use crate::store::{self, StoreEntry};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which lifecycle command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// `stop`.
    Stop,
    /// `start`.
    Start,
    /// `remove`.
    Remove,
}

impl Action {
    /// The command's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Stop => "stop",
            Action::Start => "start",
            Action::Remove => "remove",
        }
    }
}

/// What a lifecycle command did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The command.
    pub action: Action,
    /// Profile.
    pub profile: String,
    /// Compose project.
    pub project: String,
    /// The current generation (for `remove`: the one that was current).
    pub generation: Option<u32>,
    /// Its version.
    pub version: Option<String>,
    /// The health gate's report (`start` only).
    pub health: Option<Report>,
    /// Backups deleted (`remove --purge-backups` only).
    pub purged_backups: bool,
    /// One sentence for people.
    pub message: String,
}

/// What `remove` is asked to do besides taking the stack down.
#[derive(Debug, Clone, Copy, Default)]
pub struct RemoveOptions {
    /// Delete the profile's backups too.
    pub purge_backups: bool,
}

/// `smoker-install stop PROFILE`.
pub fn stop(
    layout: &Layout,
    host: &HostConfig,
    name: &str,
    wait: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    locked(layout, host, name, Action::Stop, wait, progress, |p| {
        stop_locked(layout, p)
    })
}

/// `smoker-install start PROFILE`.
pub fn start(
    layout: &Layout,
    host: &HostConfig,
    name: &str,
    wait: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    locked(layout, host, name, Action::Start, wait, progress, |p| {
        start_locked(layout, p)
    })
}

/// `smoker-install remove PROFILE`.
pub fn remove(
    layout: &Layout,
    host: &HostConfig,
    name: &str,
    opts: RemoveOptions,
    wait: bool,
    progress: &dyn Progress,
) -> Result<Outcome> {
    locked(layout, host, name, Action::Remove, wait, progress, |p| {
        remove_locked(layout, p, opts)
    })
}

/// Takes the lock, finishes an interrupted run, runs `work` on the open profile, and records
/// the audit entry and the notification of the result.
fn locked(
    layout: &Layout,
    host: &HostConfig,
    name: &str,
    action: Action,
    wait: bool,
    progress: &dyn Progress,
    work: impl FnOnce(Profile) -> Result<Outcome>,
) -> Result<Outcome> {
    progress.step("locking the profile");
    let _lock = hostlock::acquire(layout, name, wait)?;
    let result = (|| {
        if Profile::open(layout, name)?.is_none() {
            return Err(Error::State(format!(
                "no profile `{name}` on this host (see `smoker-install status`)"
            )));
        }
        // An interrupted apply or rollback is finished first, so the generation acted on
        // is a decided one. A profile being removed goes even when that fails.
        let recovered = crate::rollback::recover_profile(layout, name, progress);
        if action != Action::Remove {
            recovered?;
        }
        let profile = Profile::open(layout, name)?
            .ok_or_else(|| Error::State(format!("no profile `{name}` on this host")))?;
        progress.step(&format!("{} {name}", action.as_str()));
        work(profile)
    })();
    let (event, message, generation, version) = match &result {
        Ok(o) => (
            match action {
                Action::Stop => Event::Stopped,
                Action::Start => Event::Resumed,
                Action::Remove => Event::Removed,
            },
            o.message.clone(),
            o.generation,
            o.version.clone().unwrap_or_default(),
        ),
        Err(e) => (Event::Failed, e.to_string(), None, String::new()),
    };
    notify::send(
        layout,
        host,
        &Notice {
            event,
            profile: name.to_string(),
            version,
            environment: host.environment.clone().unwrap_or_default(),
            generation,
            message: message.clone(),
        },
    );
    let fields = match &result {
        Ok(o) => {
            let mut v = serde_json::to_value(o).unwrap_or_default();
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("outcome".into(), "ok".into());
            }
            v
        }
        Err(e) => serde_json::json!({
            "action": action,
            "profile": name,
            "outcome": "error",
            "error": e.to_string(),
        }),
    };
    crate::audit::append(layout, action.as_str(), fields)?;
    result
}

/// The current generation's store entry, opened without the journal check: stopping or taking
/// down a stack starts nothing, so a damaged entry still serves for that.
fn current_entry(layout: &Layout, p: &Profile) -> Result<Option<(u32, StoreEntry)>> {
    let Some(n) = p.current() else {
        return Ok(None);
    };
    let g = p
        .generation(n)
        .ok_or_else(|| Error::State(format!("generation {n} is current but not recorded")))?;
    Ok(Some((n, store::open(layout, &g.store)?)))
}

/// The environment a generation runs with; when the host env file cannot be read, the bundle's
/// configuration alone (enough to stop or take down containers).
fn env_for_stopping(p: &Profile, entry: &StoreEntry) -> Result<BTreeMap<String, String>> {
    match entry_env(entry, &profile_env_file(p)) {
        Ok(env) => Ok(env),
        Err(_) => crate::hostenv::stack_env(
            &entry.path,
            entry.manifest.compose.env_file.as_deref(),
            &BTreeMap::new(),
        ),
    }
}

fn stop_locked(layout: &Layout, p: Profile) -> Result<Outcome> {
    let name = p.state.name.clone();
    let Some((n, entry)) = current_entry(layout, &p)? else {
        return Err(Error::State(format!(
            "profile `{name}` has no current generation, so there is nothing to stop"
        )));
    };
    let runtime = Runtime::detect()?;
    let env = env_for_stopping(&p, &entry)?;
    runtime.stop(&Stack {
        project: &p.state.project,
        dir: &entry.path,
        manifest: &entry.manifest,
        env: &env,
        overrides: &[],
    })?;
    p.mark_stopped()?;
    Ok(Outcome {
        action: Action::Stop,
        profile: name.clone(),
        project: p.state.project.clone(),
        generation: Some(n),
        version: Some(entry.manifest.version.clone()),
        health: None,
        purged_backups: false,
        message: format!(
            "stopped profile `{name}` (generation {n}, version {}); its containers are kept — `smoker-install start {name}` starts them again",
            entry.manifest.version
        ),
    })
}

fn start_locked(layout: &Layout, mut p: Profile) -> Result<Outcome> {
    let name = p.state.name.clone();
    let Some(n) = p.current() else {
        return Err(Error::State(format!(
            "profile `{name}` has no current generation to start; apply a bundle"
        )));
    };
    let entry = generation_entry(layout, &p, n)?;
    let env = entry_env(&entry, &profile_env_file(&p))?;
    let runtime = Runtime::detect()?;
    let (project, profile) = (p.state.project.clone(), p.state.name.clone());
    let t = Target {
        layout,
        entry: &entry,
        project: &project,
        profile: &profile,
        env: &env,
    };
    let report = activate(&runtime, &t, &mut p, n, "start:compose-up")?;
    // The containers run again, healthy or not: the profile is no longer stopped.
    p.clear_stopped()?;
    let version = entry.manifest.version.clone();
    if !report.healthy {
        return Err(Error::Broken(format!(
            "started profile `{name}` (generation {n}, version {version}), but it is not healthy: {}; see `smoker-install status`, or `smoker-install rollback`",
            report.summary
        )));
    }
    Ok(Outcome {
        action: Action::Start,
        profile: name.clone(),
        project: p.state.project.clone(),
        generation: Some(n),
        version: Some(version.clone()),
        message: format!(
            "started profile `{name}` (generation {n}, version {version}): {}",
            report.summary
        ),
        health: Some(report),
        purged_backups: false,
    })
}

/// The migration ledger stays when a profile is removed: the named volumes (the data those
/// migrations changed) stay too, so a later install of the profile must not run them again.
const KEPT_ON_REMOVE: &str = "migrations.json";

/// Removes everything of a profile's directory (state, generation links, markers) but the
/// migration ledger; the directory goes too when nothing is left.
fn forget_profile(dir: &std::path::Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(crate::error::io_at(dir)(e)),
    };
    let mut kept = false;
    for e in entries {
        let e = e.map_err(crate::error::io_at(dir))?;
        let path = e.path();
        if e.file_name() == KEPT_ON_REMOVE {
            kept = true;
            continue;
        }
        let is_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            crate::fsutil::remove_tree(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(crate::error::io_at(&path))?;
        }
    }
    if !kept {
        std::fs::remove_dir(dir).map_err(crate::error::io_at(dir))?;
    }
    crate::fsutil::fsync_dir(dir.parent().unwrap_or(dir))
}

fn remove_locked(layout: &Layout, p: Profile, opts: RemoveOptions) -> Result<Outcome> {
    let name = p.state.name.clone();
    let project = p.state.project.clone();
    let current = current_entry(layout, &p)?;
    if let Some((_, entry)) = &current {
        let runtime = Runtime::detect()?;
        let env = env_for_stopping(&p, entry)?;
        runtime.down(&Stack {
            project: &project,
            dir: &entry.path,
            manifest: &entry.manifest,
            env: &env,
            overrides: &[],
        })?;
    }
    forget_profile(p.dir())?;
    crate::fsutil::fsync_dir(&layout.profiles())?;
    if opts.purge_backups {
        crate::fsutil::remove_tree(&layout.root().join("backups").join(&name))?;
    }
    let (generation, version) = match &current {
        Some((n, e)) => (Some(*n), Some(e.manifest.version.clone())),
        None => (None, None),
    };
    Ok(Outcome {
        action: Action::Remove,
        profile: name.clone(),
        project: project.clone(),
        generation,
        version,
        health: None,
        purged_backups: opts.purge_backups,
        message: format!(
            "removed profile `{name}`: compose project `{project}` taken down (named volumes kept: `docker volume ls --filter label=com.docker.compose.project={project}`), generations forgotten (the migration ledger stays with the volumes: delete `{}` too if you delete them); store entries and images go at the next `smoker-install gc`; {}",
            p.dir().join(KEPT_ON_REMOVE).display(),
            if opts.purge_backups {
                "its backups were deleted"
            } else {
                "its backups are kept (`--purge-backups` deletes them)"
            }
        ),
    })
}

#[cfg(test)]
mod forget_tests {
    use super::*;

    #[test]
    fn a_removed_profile_keeps_only_its_migration_ledger() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("shop");
        std::fs::create_dir_all(p.join("sub")).expect("mkdir");
        for f in ["state.json", "current", "1-link", "stopped", KEPT_ON_REMOVE] {
            std::fs::write(p.join(f), "x").expect("write");
        }
        forget_profile(&p).expect("forget");
        let left: Vec<String> = std::fs::read_dir(&p)
            .expect("dir stays")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [KEPT_ON_REMOVE]);
        // Without a ledger, nothing of the profile is left.
        let q = dir.path().join("web");
        std::fs::create_dir_all(&q).expect("mkdir");
        std::fs::write(q.join("state.json"), "{}").expect("write");
        forget_profile(&q).expect("forget");
        assert!(!q.exists());
    }
}
