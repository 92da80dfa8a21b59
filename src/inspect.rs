//! Read-only views of the profiles for `smoker-install status` and `history`.
//!
//! They change nothing: no recovery runs, no lock is taken or waited for, no file or directory
//! is created. A `pending` generation is reported for what it is — an apply or rollback in
//! progress while the profile lock is held, an interrupted one otherwise (then
//! `smoker-install recover` finishes it) — and a held lock is reported with its holder.

use crate::error::{Error, Result};
use crate::hostlock::{self, Holder};
use crate::layout::Layout;
use crate::profile::{Generation, Profile, Status};
use serde::Serialize;

/// Whether a profile's lock is held, and by whom.
#[derive(Debug, Clone, Serialize)]
pub struct LockState {
    /// True when a live process holds the lock.
    pub locked: bool,
    /// The recorded holder, when the lock is held.
    pub holder: Option<Holder>,
}

/// Looks at a profile's lock without taking it and without creating the lock file
/// ([`hostlock::is_locked`]), and names the recorded holder when it is held.
pub fn lock_state(layout: &Layout, profile: &str) -> LockState {
    let locked = hostlock::is_locked(layout, profile);
    LockState {
        locked,
        holder: locked.then(|| hostlock::holder(layout, profile)).flatten(),
    }
}

/// A generation still `pending`: its apply or rollback has not decided it yet.
#[derive(Debug, Clone, Serialize)]
pub struct Unfinished {
    /// Generation number.
    pub generation: u32,
    /// True when `current` points at it (the health gate had not decided); false when the run
    /// stopped before switching to it.
    pub current: bool,
    /// When it became pending (RFC 3339).
    pub since: String,
    /// True while the profile lock is held: the apply or rollback is still running.
    pub in_progress: bool,
    /// A sentence saying what happened and what to do.
    pub message: String,
}

/// The pending generations of a profile, explained.
pub fn unfinished(profile: &Profile, lock: &LockState) -> Vec<Unfinished> {
    let current = profile.current();
    profile
        .state
        .generations
        .iter()
        .filter(|g| g.status == Status::Pending)
        .map(|g| {
            let is_current = Some(g.number) == current;
            let since = g
                .decided_at
                .clone()
                .unwrap_or_else(|| g.installed_at.clone());
            let message = if lock.locked {
                format!(
                    "generation {} pending since {since}: an apply or rollback is in progress ({})",
                    g.number,
                    lock.holder
                        .as_ref()
                        .map(Holder::describe)
                        .unwrap_or_else(|| "holder not recorded".into())
                )
            } else if is_current {
                format!(
                    "generation {} pending since {since}: an apply or rollback was interrupted before its health gate decided; run `smoker-install recover`",
                    g.number
                )
            } else {
                format!(
                    "generation {} pending since {since}: an apply was interrupted before it switched to it; run `smoker-install recover`",
                    g.number
                )
            };
            Unfinished {
                generation: g.number,
                current: is_current,
                since,
                in_progress: lock.locked,
                message,
            }
        })
        .collect()
}

/// One profile as `smoker-install status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileStatus {
    /// Profile name.
    pub profile: String,
    /// Compose project name.
    pub project: String,
    /// The generation `current` points at.
    pub current: Option<u32>,
    /// Its version.
    pub version: Option<String>,
    /// Its architecture.
    pub arch: Option<String>,
    /// Its environment.
    pub environment: Option<String>,
    /// sha256 of the bundle it was installed from.
    pub bundle_sha256: Option<String>,
    /// Its status: `good`, `pending` or `failed`.
    pub health: Option<Status>,
    /// When it was installed (RFC 3339).
    pub installed_at: Option<String>,
    /// Numbers of the pending generations.
    pub pending: Vec<u32>,
    /// Numbers of the failed generations.
    pub failed: Vec<u32>,
    /// True when the profile lock is held.
    pub locked: bool,
    /// Who holds the lock, when it is held.
    pub holder: Option<Holder>,
    /// The pending generations explained (in progress or interrupted).
    pub unfinished: Vec<Unfinished>,
    /// When `smoker-install stop` stopped the profile's containers, while it is stopped.
    pub stopped_since: Option<String>,
}

/// One profile as `smoker-install history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileHistory {
    /// Profile name.
    pub profile: String,
    /// Compose project name.
    pub project: String,
    /// The generation `current` points at.
    pub current: Option<u32>,
    /// Every kept generation, oldest first.
    pub generations: Vec<Generation>,
    /// True when the profile lock is held.
    pub locked: bool,
    /// Who holds the lock, when it is held.
    pub holder: Option<Holder>,
    /// The pending generations explained (in progress or interrupted).
    pub unfinished: Vec<Unfinished>,
}

fn open(layout: &Layout, name: &str) -> Result<Profile> {
    Profile::open(layout, name)?
        .ok_or_else(|| Error::State(format!("no profile `{name}` on this host")))
}

/// The status of one profile, read without changing anything.
pub fn status(layout: &Layout, name: &str) -> Result<ProfileStatus> {
    let p = open(layout, name)?;
    let lock = lock_state(layout, name);
    let cur = p.current();
    let g = cur.and_then(|n| p.generation(n));
    let numbers = |s: Status| -> Vec<u32> {
        p.state
            .generations
            .iter()
            .filter(|g| g.status == s)
            .map(|g| g.number)
            .collect()
    };
    Ok(ProfileStatus {
        profile: name.to_string(),
        project: p.state.project.clone(),
        current: cur,
        version: g.map(|g| g.version.clone()),
        arch: g.map(|g| g.arch.clone()),
        environment: g.map(|g| g.environment.clone()),
        bundle_sha256: g.map(|g| g.bundle_sha256.clone()),
        health: g.map(|g| g.status),
        installed_at: g.map(|g| g.installed_at.clone()),
        pending: numbers(Status::Pending),
        failed: numbers(Status::Failed),
        unfinished: unfinished(&p, &lock),
        locked: lock.locked,
        holder: lock.holder,
        stopped_since: p.stopped_since(),
    })
}

/// The history of one profile, read without changing anything.
pub fn history(layout: &Layout, name: &str) -> Result<ProfileHistory> {
    let p = open(layout, name)?;
    let lock = lock_state(layout, name);
    Ok(ProfileHistory {
        profile: name.to_string(),
        project: p.state.project.clone(),
        current: p.current(),
        unfinished: unfinished(&p, &lock),
        generations: p.state.generations,
        locked: lock.locked,
        holder: lock.holder,
    })
}

/// The profiles a read-only command looks at: the one named, or every profile on the host.
pub fn profile_names(layout: &Layout, only: Option<&str>) -> Vec<String> {
    match only {
        Some(p) => vec![p.to_string()],
        None => layout.profile_names(),
    }
}

/// The full check of one store entry (`smoker-install verify --store`).
#[derive(Debug, Clone, Serialize)]
pub struct EntryCheck {
    /// Store entry name.
    pub entry: String,
    /// `profile:generation` of every recorded generation that uses it.
    pub used_by: Vec<String>,
    /// What is wrong with it (empty: intact).
    pub problems: Vec<String>,
}

/// Hashes every file of every store entry (or of the entries `profile`'s generations use)
/// against its manifest, the manifest against the hash each generation recorded and, with
/// `keys`, its signature. Changes nothing.
pub fn verify_store(
    layout: &Layout,
    profile: Option<&str>,
    keys: Option<&smoker_format::signing::TrustedKeys>,
) -> Result<Vec<EntryCheck>> {
    let names = match profile {
        Some(p) => vec![p.to_string()],
        None => layout.profile_names(),
    };
    // entry -> (expected manifest sha256, users)
    let mut uses: std::collections::BTreeMap<String, (Option<String>, Vec<String>)> =
        Default::default();
    for name in &names {
        let p = Profile::open(layout, name)?
            .ok_or_else(|| Error::State(format!("no profile `{name}` on this host")))?;
        for g in &p.state.generations {
            let u = uses.entry(g.store.clone()).or_default();
            u.0 = Some(g.manifest_sha256.clone());
            u.1.push(format!("{name}:{}", g.number));
        }
    }
    if profile.is_none() {
        for e in crate::store::list(layout) {
            uses.entry(e).or_default();
        }
    }
    Ok(uses
        .into_iter()
        .map(|(entry, (expected, used_by))| EntryCheck {
            problems: crate::store::verify_entry(layout, &entry, expected.as_deref(), keys),
            entry,
            used_by,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostlock;

    #[test]
    fn a_missing_lock_file_is_free_and_stays_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let s = lock_state(&layout, "svc");
        assert!(!s.locked && s.holder.is_none());
        assert!(!layout.lock_file("svc").exists());
        assert!(!dir.path().join("locks").exists());
    }

    #[test]
    fn a_held_lock_names_its_holder_and_a_released_one_is_free() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let lock = hostlock::acquire(&layout, "svc", false).expect("lock");
        let s = lock_state(&layout, "svc");
        assert!(s.locked);
        assert_eq!(s.holder.map(|h| h.pid), Some(std::process::id() as i32));
        // Still held by us: taking it again must fail (the probe did not disturb it).
        assert!(hostlock::acquire(&layout, "svc", false).is_err());
        drop(lock);
        let s = lock_state(&layout, "svc");
        assert!(!s.locked && s.holder.is_none());
    }
}
