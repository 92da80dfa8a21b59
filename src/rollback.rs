//! Rollback (automatic and manual) and recovery of interrupted runs.
//!
//! A rollback is a switch of `current` back to a kept generation, `compose up` of that
//! generation's files from the store (its images are still present: gc keeps them), and the
//! health gate. It needs neither the network nor the original bundle file.

use crate::activate::{
    Target, activate, entry_env, generation_entry as current_entry, profile_env_file as env_file_of,
};
use crate::error::{Error, Result};
use crate::fault;
use crate::health::Report;
use crate::hostlock;
use crate::layout::Layout;
use crate::profile::{Generation, Profile, Status};
use crate::progress::{Progress, Timer};
use crate::runtime::{Runtime, Stack};
use serde::Serialize;
use std::collections::BTreeMap;

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackOutcome {
    /// Profile.
    pub profile: String,
    /// Generation left.
    pub from: Option<u32>,
    /// Generation now serving.
    pub to: u32,
    /// Health report of the target.
    pub health: Report,
    /// Microseconds per step (`switch`, `up+health`).
    pub durations_us: BTreeMap<String, u64>,
    /// The backup restored because the target predates applied migrations.
    pub restored_backup: Option<String>,
}

/// After generation `failed` failed its gate: go back to `previous` if it is usable, else to
/// the newest good generation. Returns the generation serving afterwards.
pub(crate) fn restore_previous(
    layout: &Layout,
    runtime: &Runtime,
    profile: &mut Profile,
    failed: u32,
    previous: Option<u32>,
    progress: &dyn Progress,
) -> Result<u32> {
    let target = return_target(&profile.state.generations, failed, previous);
    let Some(target) = target else {
        // Nothing to return to (first install): stop the failed stack so it does not linger
        // (`down` starts nothing, so a damaged entry is still good enough to stop it).
        let g = profile
            .generation(failed)
            .ok_or_else(|| Error::State(format!("generation {failed} is not recorded")))?;
        let entry = crate::store::open(layout, &g.store)?;
        let env = entry_env(&entry, &env_file_of(profile))?;
        let stack = Stack {
            project: &profile.state.project,
            dir: &entry.path,
            manifest: &entry.manifest,
            env: &env,
            overrides: &[],
        };
        let _ = runtime.down(&stack);
        return Err(Error::Broken(format!(
            "generation {failed} failed its health gate and there is no earlier good generation to return to; its containers were stopped. See `smoker-install history`."
        )));
    };
    progress.step(&format!("rolling back to generation {target}"));
    let (report, _) = switch_and_activate(layout, runtime, profile, target)?;
    if report.healthy {
        Ok(target)
    } else {
        Err(Error::Broken(format!(
            "rolled back to generation {target}, but it is not healthy either: {}. The host needs attention.",
            report.summary
        )))
    }
}

/// Switches to kept generation `target` and gates it. The target is marked `pending` before
/// the switch, so an interruption anywhere in between is finished by [`recover_profile`];
/// afterwards it is `good` or `failed` according to the gate.
fn switch_and_activate(
    layout: &Layout,
    runtime: &Runtime,
    profile: &mut Profile,
    target: u32,
) -> Result<(Report, BTreeMap<String, u64>)> {
    let entry = current_entry(layout, profile, target)?;
    let env = entry_env(&entry, &env_file_of(profile))?;
    let mut timer = Timer::default();
    profile.decide(target, Status::Pending, None)?;
    timer.time("switch", || profile.switch(target))?;
    fault::point("rollback:switched");
    let (project, name) = (profile.state.project.clone(), profile.state.name.clone());
    let t = Target {
        layout,
        entry: &entry,
        project: &project,
        profile: &name,
        env: &env,
    };
    let report = match timer.time("up+health", || {
        activate(runtime, &t, profile, target, "rollback:compose-up")
    }) {
        Ok(r) => r,
        Err(e) => Report::failed(format!("compose up failed: {e}")),
    };
    if report.healthy {
        profile.decide(target, Status::Good, None)?;
        crate::policy::record_commit(layout, &profile.state.name, &entry.manifest.version, false)?;
    } else {
        profile.decide(target, Status::Failed, Some(report.summary.clone()))?;
    }
    Ok((report, timer.steps))
}

/// `smoker-install rollback [--to N]`: back to generation `to`, or to the newest good
/// generation before the current one.
pub fn rollback(
    layout: &Layout,
    name: &str,
    req: Request,
    progress: &dyn Progress,
) -> Result<RollbackOutcome> {
    let _lock = hostlock::acquire(layout, name, req.wait)?;
    let to = req.to;
    let result = rollback_locked(layout, name, req, progress);
    let fields = match &result {
        Ok(o) => serde_json::to_value(o).unwrap_or_default(),
        Err(e) => serde_json::json!({"profile": name, "to": to, "error": e.to_string()}),
    };
    let mut fields = fields;
    if let serde_json::Value::Object(m) = &mut fields {
        m.insert(
            "outcome".into(),
            if result.is_ok() { "ok" } else { "error" }.into(),
        );
        m.insert("automatic".into(), false.into());
    }
    crate::audit::append(layout, "rollback", fields)?;
    result
}

/// What `smoker-install rollback` was asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    /// Target generation (default: the newest good one before the current).
    pub to: Option<u32>,
    /// Restore the matching backup when the target predates applied migrations.
    pub restore_data: bool,
    /// Wait for the profile lock.
    pub wait: bool,
}

fn rollback_locked(
    layout: &Layout,
    name: &str,
    req: Request,
    progress: &dyn Progress,
) -> Result<RollbackOutcome> {
    let to = req.to;
    let mut profile = Profile::open(layout, name)?
        .ok_or_else(|| Error::State(format!("no profile `{name}` on this host")))?;
    let from = profile.current();
    let target = rollback_target(&profile.state.generations, from, to)?;
    let runtime = Runtime::detect()?;
    let data = rewind_data(
        layout,
        &runtime,
        &profile,
        from,
        target,
        req.restore_data,
        progress,
    )?;
    progress.step(&format!("rolling back to generation {target}"));
    if let Some(f) = from
        && profile
            .generation(f)
            .is_some_and(|g| g.status == Status::Pending)
    {
        profile.decide(
            f,
            Status::Failed,
            Some("rolled back before its health gate finished".into()),
        )?;
    }
    let (report, durations) = switch_and_activate(layout, &runtime, &mut profile, target)?;
    if report.healthy {
        return Ok(RollbackOutcome {
            profile: name.to_string(),
            from,
            to: target,
            health: report,
            durations_us: durations,
            restored_backup: data,
        });
    }
    // The target is not healthy: go back to where we were, if that was good.
    let summary = report.summary.clone();
    if let Some(f) = from.filter(|f| {
        profile
            .generation(*f)
            .is_some_and(|g| g.status == Status::Good)
    }) {
        let (back, _) = switch_and_activate(layout, &runtime, &mut profile, f)?;
        return Err(Error::RolledBack(format!(
            "generation {target} is not healthy ({summary}); returned to generation {f} ({})",
            if back.healthy {
                "healthy"
            } else {
                "NOT healthy either"
            }
        )));
    }
    Err(Error::Broken(format!(
        "generation {target} is not healthy: {summary}"
    )))
}

/// Finishes an interrupted apply or rollback of one profile (the caller holds its lock):
/// a current generation still `pending` gets its health gate now, then is committed or rolled
/// back; a pending generation that never became current is marked failed.
pub fn recover_profile(
    layout: &Layout,
    name: &str,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    let Some(mut profile) = Profile::open(layout, name)? else {
        return Ok(None);
    };
    let plan = recovery_plan(&profile.state.generations, profile.current());
    for n in &plan.stray {
        profile.decide(
            *n,
            Status::Failed,
            Some("interrupted before it was switched to".into()),
        )?;
    }
    let stray_note = || {
        (!plan.stray.is_empty()).then(|| format!("marked {:?} failed (interrupted)", plan.stray))
    };
    let Some(cur) = plan.gate else {
        return Ok(stray_note());
    };
    progress.step(&format!(
        "recovering: generation {cur} was interrupted before its health gate"
    ));
    let runtime = Runtime::detect()?;
    let entry = current_entry(layout, &profile, cur)?;
    let env = entry_env(&entry, &env_file_of(&profile))?;
    let project = profile.state.project.clone();
    let t = Target {
        layout,
        entry: &entry,
        project: &project,
        profile: name,
        env: &env,
    };
    let report = match activate(&runtime, &t, &mut profile, cur, "recover:compose-up") {
        Ok(r) => r,
        Err(e) => Report::failed(format!("compose up failed: {e}")),
    };
    let message = if report.healthy {
        profile.decide(cur, Status::Good, None)?;
        crate::policy::record_commit(layout, name, &entry.manifest.version, false)?;
        format!("generation {cur} passed its health gate and is committed")
    } else {
        profile.decide(cur, Status::Failed, Some(report.summary.clone()))?;
        match restore_previous(layout, &runtime, &mut profile, cur, None, progress) {
            Ok(to) => format!(
                "generation {cur} failed its health gate ({}); rolled back to {to}",
                report.summary
            ),
            Err(e) => format!(
                "generation {cur} failed its health gate ({}); {e}",
                report.summary
            ),
        }
    };
    crate::audit::append(
        layout,
        "recover",
        serde_json::json!({"profile": name, "generation": cur, "healthy": report.healthy, "message": message}),
    )?;
    Ok(Some(message))
}

/// `smoker-install recover`: recovers every profile (fit for a boot-time unit).
pub fn recover_all(
    layout: &Layout,
    wait: bool,
    progress: &dyn Progress,
) -> Result<Vec<(String, String)>> {
    let mut done = Vec::new();
    for name in layout.profile_names() {
        let _lock = hostlock::acquire(layout, &name, wait)?;
        let msg = recover_profile(layout, &name, progress)?
            .unwrap_or_else(|| "nothing to recover".into());
        done.push((name, msg));
    }
    Ok(done)
}

/// Before switching back to `target`: if migrations applied here are unknown to the target's
/// bundle, its code must not run on this data. With `restore_data` (or the recipe's
/// `restore_on_rollback` policy), restore the newest backup taken before those migrations
/// (after a safety backup of the current data) and rewind the ledger; otherwise refuse.
fn rewind_data(
    layout: &Layout,
    runtime: &Runtime,
    profile: &Profile,
    from: Option<u32>,
    target: u32,
    restore_data: bool,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    let name = profile.state.name.as_str();
    let target_entry = current_entry(layout, profile, target)?;
    let mut ledger = crate::migrate::Ledger::load(layout, name)?;
    let newer = ledger.newer_than(&target_entry.manifest);
    if newer.is_empty() {
        return Ok(None);
    }
    let policy = target_entry
        .manifest
        .backup
        .as_ref()
        .is_some_and(|b| b.restore_on_rollback);
    let target_ids: Vec<String> = target_entry
        .manifest
        .migrations
        .iter()
        .map(|m| m.id.clone())
        .collect();
    let backups = crate::backup::list(layout, name)?;
    let candidate = backups
        .backups
        .iter()
        .rev()
        .find(|b| b.ledger.iter().all(|id| target_ids.contains(id)))
        .cloned();
    if !(restore_data || policy) {
        return Err(Error::Policy(format!(
            "generation {target} predates migrations applied on this host ({}): its code must not run on migrated data. {}",
            newer.join(", "),
            match &candidate {
                Some(b) => format!(
                    "Roll back with --restore-data to restore backup {} (taken {}, before those migrations) — data written since then is kept in a safety backup — or apply a newer bundle instead.",
                    b.id, b.created
                ),
                None => "No backup from before those migrations is kept, so this rollback cannot be done safely; apply a newer bundle instead.".to_string(),
            }
        )));
    }
    let Some(rec) = candidate else {
        return Err(Error::Policy(format!(
            "generation {target} predates migrations applied here ({}) and no backup from before them is kept; refusing to run old code on migrated data",
            newer.join(", ")
        )));
    };
    // Restore through the stack that runs now (its containers are up).
    let cur =
        from.ok_or_else(|| Error::State("no current generation to restore data through".into()))?;
    let cur_entry = current_entry(layout, profile, cur)?;
    let hooks = cur_entry
        .manifest
        .backup
        .clone()
        .or_else(|| target_entry.manifest.backup.clone())
        .ok_or_else(|| {
            Error::Policy("no backup/restore hook is declared; cannot restore data".into())
        })?;
    let env = entry_env(&cur_entry, &env_file_of(profile))?;
    let stack = Stack {
        project: &profile.state.project,
        dir: &cur_entry.path,
        manifest: &cur_entry.manifest,
        env: &env,
        overrides: &[],
    };
    progress.step("safety backup of the current data");
    let safety = crate::backup::take(
        layout,
        runtime,
        &stack,
        &hooks,
        cur,
        ledger.ids(),
        "pre-restore",
    )?;
    progress.info(&format!("safety backup {}", safety.id));
    progress.step(&format!("restoring data from backup {}", rec.id));
    crate::backup::restore(layout, runtime, &stack, &hooks, &rec)?;
    ledger.applied.retain(|a| rec.ledger.contains(&a.id));
    ledger.save(layout, name)?;
    Ok(Some(rec.id))
}

/// What recovery must do for a profile, decided from its recorded generations alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryPlan {
    /// Pending generations that never became current: marked failed.
    pub stray: Vec<u32>,
    /// The current generation, when it is still pending: it gets its health gate now.
    pub gate: Option<u32>,
}

/// Decides recovery: pending generations other than the current one were interrupted before
/// the switch; a pending current one was interrupted between the switch and the gate's verdict.
pub fn recovery_plan(generations: &[Generation], current: Option<u32>) -> RecoveryPlan {
    let pending = |g: &&Generation| g.status == Status::Pending;
    RecoveryPlan {
        stray: generations
            .iter()
            .filter(pending)
            .filter(|g| Some(g.number) != current)
            .map(|g| g.number)
            .collect(),
        gate: current.filter(|c| generations.iter().filter(pending).any(|g| g.number == *c)),
    }
}

/// After generation `failed` failed its gate: the generation to return to. `previous` (what
/// served before) when it is good, else the newest good generation other than `failed`;
/// `None` when there is none (a first install).
pub fn return_target(
    generations: &[Generation],
    failed: u32,
    previous: Option<u32>,
) -> Option<u32> {
    let good = |n: u32| {
        generations
            .iter()
            .any(|g| g.number == n && g.status == Status::Good)
    };
    previous.filter(|p| *p != failed && good(*p)).or_else(|| {
        generations
            .iter()
            .rev()
            .find(|g| g.status == Status::Good && g.number != failed)
            .map(|g| g.number)
    })
}

/// The generation `smoker-install rollback [--to N]` switches to: `N` when it is kept, else the
/// newest good generation before the current one. Errors say what is kept.
pub fn rollback_target(
    generations: &[Generation],
    from: Option<u32>,
    to: Option<u32>,
) -> Result<u32> {
    let target = match to {
        Some(n) => {
            if !generations.iter().any(|g| g.number == n) {
                let kept: Vec<String> = generations.iter().map(|g| g.number.to_string()).collect();
                return Err(Error::State(format!(
                    "generation {n} is not kept on this host (kept: {})",
                    kept.join(", ")
                )));
            }
            n
        }
        None => {
            let cur = from.unwrap_or(0);
            generations
                .iter()
                .rev()
                .find(|g| g.status == Status::Good && g.number < cur)
                .map(|g| g.number)
                .ok_or_else(|| {
                    Error::State(format!(
                        "no good generation before the current one ({cur}) to roll back to; see `smoker-install history`"
                    ))
                })?
        }
    };
    if Some(target) == from {
        return Err(Error::State(format!(
            "generation {target} is already current"
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(number: u32, status: Status) -> Generation {
        crate::profile::test_generation(number, &format!("1.0.{number}"), status)
    }

    fn state_message(r: Result<u32>) -> String {
        match r {
            Err(Error::State(m)) => m,
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    #[test]
    fn recovery_gates_a_pending_current_generation_and_fails_stray_ones() {
        let gens = [
            g(1, Status::Good),
            g(2, Status::Pending),
            g(3, Status::Pending),
        ];
        assert_eq!(
            recovery_plan(&gens, Some(3)),
            RecoveryPlan {
                stray: vec![2],
                gate: Some(3)
            }
        );
        // Interrupted before the switch: current is still the good one.
        assert_eq!(
            recovery_plan(&gens, Some(1)),
            RecoveryPlan {
                stray: vec![2, 3],
                gate: None
            }
        );
        // Nothing pending: nothing to do.
        let calm = [g(1, Status::Good), g(2, Status::Failed)];
        assert_eq!(recovery_plan(&calm, Some(1)), RecoveryPlan::default());
        // No current generation at all (first install interrupted before its switch).
        assert_eq!(
            recovery_plan(&[g(1, Status::Pending)], None),
            RecoveryPlan {
                stray: vec![1],
                gate: None
            }
        );
    }

    #[test]
    fn a_failed_generation_returns_to_the_previous_good_one_else_the_newest_good() {
        let gens = [
            g(1, Status::Good),
            g(2, Status::Good),
            g(3, Status::Failed),
            g(4, Status::Failed),
        ];
        assert_eq!(return_target(&gens, 4, Some(1)), Some(1));
        // The previous one failed too: the newest good generation.
        assert_eq!(return_target(&gens, 4, Some(3)), Some(2));
        // Unknown previous (recovery): the newest good one.
        assert_eq!(return_target(&gens, 4, None), Some(2));
        // A first install that failed has nothing to return to.
        assert_eq!(return_target(&[g(1, Status::Failed)], 1, None), None);
        // The failed generation itself is never the target, even if recorded good.
        assert_eq!(return_target(&[g(1, Status::Good)], 1, Some(1)), None);
    }

    #[test]
    fn manual_rollback_picks_the_newest_good_generation_before_the_current() {
        let gens = [
            g(1, Status::Good),
            g(2, Status::Failed),
            g(3, Status::Good),
            g(4, Status::Good),
        ];
        assert_eq!(rollback_target(&gens, Some(4), None).expect("target"), 3);
        assert_eq!(rollback_target(&gens, Some(3), None).expect("target"), 1);
        // --to a kept generation, whatever its status (the gate judges it).
        assert_eq!(rollback_target(&gens, Some(4), Some(2)).expect("target"), 2);
        let msg = state_message(rollback_target(&gens, Some(4), Some(9)));
        assert!(msg.contains("generation 9 is not kept"), "{msg}");
        assert!(msg.contains("kept: 1, 2, 3, 4"), "{msg}");
        let msg = state_message(rollback_target(&gens, Some(4), Some(4)));
        assert!(msg.contains("already current"), "{msg}");
        let msg = state_message(rollback_target(&gens, Some(1), None));
        assert!(
            msg.contains("no good generation before the current one (1)"),
            "{msg}"
        );
    }

    /// Generation `n` of profile `web` from a freshly committed test bundle of `version`.
    fn install(layout: &Layout, dir: &std::path::Path, n: u32, version: &str) -> String {
        let (bundle, keys) = crate::store::testbundle::make(dir, "web", version);
        let f = std::fs::File::open(bundle).expect("open bundle");
        let entry = crate::store::stage(layout, f, &keys)
            .expect("stage")
            .commit(layout)
            .expect("commit");
        let mut p = Profile::open_or_create(layout, "web", "smoker-web-test").expect("profile");
        p.add_pending(Generation {
            store: entry.name.clone(),
            manifest_sha256: entry.manifest_sha256.clone(),
            ..g(n, Status::Pending)
        })
        .expect("add");
        p.switch(n).expect("switch");
        p.decide(n, Status::Good, None).expect("decide");
        entry.name
    }

    #[test]
    fn rollback_refuses_a_damaged_store_entry_naming_the_file_and_changes_nothing() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().join("root"));
        let first = install(&layout, dir.path(), 1, "1.0.0");
        install(&layout, dir.path(), 2, "2.0.0");
        let file = layout
            .store()
            .join(&first)
            .join(crate::store::testbundle::COMPOSE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(&file, "services:\n  evil:\n    image: evil\n").expect("tamper");

        let err = rollback(&layout, "web", Request::default(), &crate::progress::Quiet)
            .expect_err("a damaged target is refused");
        assert_eq!(err.kind(), crate::error::Kind::State, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&first), "{msg}");
        assert!(msg.contains(crate::store::testbundle::COMPOSE), "{msg}");
        let p = Profile::open(&layout, "web").expect("open").expect("web");
        assert_eq!(p.current(), Some(2), "nothing was switched");
        assert_eq!(p.generation(1).map(|g| g.status), Some(Status::Good));

        // The full check names the same entry.
        let checks = crate::inspect::verify_store(&layout, Some("web"), None).expect("verify");
        let damaged: Vec<&str> = checks
            .iter()
            .filter(|c| !c.problems.is_empty())
            .map(|c| c.entry.as_str())
            .collect();
        assert_eq!(damaged, [first.as_str()]);
    }
}
