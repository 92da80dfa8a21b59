//! `smoker-install recover` with a typed outcome per profile: the same recovery as
//! [`crate::rollback::recover_profile`] (a current generation left `pending` gets its health gate
//! and is committed or rolled back; a pending one that never became current is marked failed),
//! judged by the state before and after, so a caller can tell "committed" from "rolled back"
//! from "broken".

use crate::apply::Progress;
use crate::error::{Error, Kind};
use crate::hostlock;
use crate::layout::Layout;
use crate::profile::{Profile, Status};
use serde::Serialize;

/// What recovering one profile came to.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRecovery {
    /// Profile name.
    pub profile: String,
    /// `nothing` (nothing was interrupted), `marked-failed` (a run stopped before switching:
    /// its generation is marked failed, the current one is untouched), `committed` (the
    /// interrupted current generation passed its gate), `rolled-back`, `broken`, or `error`
    /// (recovery could not run; see `kind`).
    pub result: String,
    /// The failure kind (`rolled-back`, `broken`, `locked`, …); null when the profile is fine.
    pub kind: Option<Kind>,
    /// What was done.
    pub message: String,
    /// The generation serving afterwards.
    pub current: Option<u32>,
}

/// Every profile's recovery.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoverReport {
    /// One entry per profile, sorted by name.
    pub profiles: Vec<ProfileRecovery>,
}

impl RecoverReport {
    /// The failure the whole run amounts to: a broken profile first, then one rolled back, then
    /// the first other failure; `None` when every profile is fine.
    pub fn failure(&self) -> Option<(Kind, String)> {
        let failed = |k: Kind| {
            self.profiles
                .iter()
                .find(|p| p.kind == Some(k))
                .map(|p| (k, format!("{}: {}", p.profile, p.message)))
        };
        failed(Kind::Broken)
            .or_else(|| failed(Kind::RolledBack))
            .or_else(|| {
                self.profiles
                    .iter()
                    .find_map(|p| p.kind.map(|k| (k, format!("{}: {}", p.profile, p.message))))
            })
    }
}

fn failed(profile: &str, e: &Error) -> ProfileRecovery {
    ProfileRecovery {
        profile: profile.to_string(),
        result: "error".into(),
        kind: Some(e.kind()),
        message: e.to_string(),
        current: None,
    }
}

/// Recovers one profile (takes its lock, waiting when `wait`).
pub fn recover_one(
    layout: &Layout,
    name: &str,
    wait: bool,
    progress: &dyn Progress,
) -> ProfileRecovery {
    let _lock = match hostlock::acquire(layout, name, wait) {
        Ok(l) => l,
        Err(e) => return failed(name, &e),
    };
    let before = match Profile::open(layout, name) {
        Ok(p) => p,
        Err(e) => return failed(name, &e),
    };
    let interrupted = before.as_ref().and_then(|p| {
        let n = p.current()?;
        (p.generation(n)?.status == Status::Pending).then_some(n)
    });
    let message = match crate::rollback::recover_profile(layout, name, progress) {
        Ok(m) => m,
        Err(e) => return failed(name, &e),
    };
    let after = match Profile::open(layout, name) {
        Ok(p) => p,
        Err(e) => return failed(name, &e),
    };
    let current = after.as_ref().and_then(Profile::current);
    let serving_good = after.as_ref().is_some_and(|p| {
        current
            .and_then(|n| p.generation(n))
            .is_some_and(|g| g.status == Status::Good)
    });
    let (result, kind) = match interrupted {
        None if message.is_some() => ("marked-failed", None),
        None => ("nothing", None),
        Some(n) if serving_good && current == Some(n) => ("committed", None),
        Some(_) if serving_good => ("rolled-back", Some(Kind::RolledBack)),
        Some(_) => ("broken", Some(Kind::Broken)),
    };
    ProfileRecovery {
        profile: name.to_string(),
        result: result.into(),
        kind,
        message: message.unwrap_or_else(|| "nothing to recover".into()),
        current,
    }
}

/// Recovers every profile on the host; one profile's failure does not stop the others.
pub fn recover_every(layout: &Layout, wait: bool, progress: &dyn Progress) -> RecoverReport {
    RecoverReport {
        profiles: layout
            .profile_names()
            .iter()
            .map(|name| recover_one(layout, name, wait, progress))
            .collect(),
    }
}
