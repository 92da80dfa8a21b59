//! Host operations on data outside an apply: preflight of a bundle file, on-demand backup and
//! restore. Each takes the profile lock and writes an audit line.

use crate::activate::{entry_env, env_file_for};
use crate::backup::{self, Record};
use crate::error::{Error, Result, io_at};
use crate::hostconfig::HostConfig;
use crate::hostlock;
use crate::layout::Layout;
use crate::migrate::Ledger;
use crate::profile::Profile;
use crate::runtime::{Runtime, Stack};
use crate::store::{self, StoreEntry};
use smoker_format::bundle::read::{DirSink, Limits, Trust, read_bundle};
use smoker_format::signing::TrustedKeys;
use std::path::Path;

/// `smoker-install preflight <bundle>`: verifies the bundle into a temporary directory (never
/// the store) and runs every preflight check.
pub fn preflight_bundle(
    layout: &Layout,
    bundle: &Path,
    keys: &TrustedKeys,
    env_file: Option<&Path>,
    host: &HostConfig,
    allow_env_change: bool,
) -> Result<crate::preflight::Report> {
    let tmp = tempfile::tempdir().map_err(io_at(Path::new("/tmp")))?;
    let f = std::fs::File::open(bundle).map_err(io_at(bundle))?;
    let v = read_bundle(
        std::io::BufReader::new(f),
        Trust::Keys(keys),
        &mut DirSink::new(tmp.path()),
        Limits::default(),
    )?;
    let name = v.manifest.name.clone();
    let profile = Profile::open(layout, &name)?;
    let env_file = env_file_for(
        &name,
        env_file,
        profile.as_ref().and_then(|p| p.state.env_file.as_deref()),
    );
    let project = profile
        .as_ref()
        .map(|p| p.state.project.clone())
        .unwrap_or_else(|| format!("smoker-{name}"));
    let (_, report) = crate::preflight::run(&crate::preflight::Inputs {
        layout,
        manifest: &v.manifest,
        payload_dir: tmp.path(),
        bundle_bytes: v.compressed_bytes,
        env_file: &env_file,
        host,
        allow_env_change,
        project: &project,
        holds_lock: false,
    })?;
    Ok(report)
}

struct Current {
    profile: Profile,
    number: u32,
    entry: StoreEntry,
    env: std::collections::BTreeMap<String, String>,
}

impl Current {
    fn stack(&self) -> Stack<'_> {
        Stack {
            project: &self.profile.state.project,
            dir: &self.entry.path,
            manifest: &self.entry.manifest,
            env: &self.env,
        }
    }
}

fn current(layout: &Layout, name: &str) -> Result<Current> {
    let profile = Profile::open(layout, name)?
        .ok_or_else(|| Error::State(format!("no profile `{name}` on this host")))?;
    let number = profile
        .current()
        .ok_or_else(|| Error::State(format!("profile `{name}` has no current generation")))?;
    let g = profile
        .generation(number)
        .ok_or_else(|| Error::State(format!("generation {number} is not recorded")))?;
    let entry = store::open(layout, &g.store)?;
    let env_file = env_file_for(name, None, profile.state.env_file.as_deref());
    let env = entry_env(&entry, &env_file)?;
    Ok(Current {
        profile,
        number,
        entry,
        env,
    })
}

fn hooks(entry: &StoreEntry) -> Result<smoker_format::manifest::Backup> {
    entry.manifest.backup.clone().ok_or_else(|| {
        Error::Policy(format!(
            "the recipe of `{}` declares no [backup] hook; add one and release again",
            entry.manifest.name
        ))
    })
}

/// `smoker-install backup`: a backup of the current generation's data now, then retention.
pub fn backup_now(layout: &Layout, name: &str, keep: usize) -> Result<Record> {
    let _lock = hostlock::acquire(layout, name, false)?;
    let c = current(layout, name)?;
    let hooks = hooks(&c.entry)?;
    let runtime = Runtime::detect()?;
    let stack = c.stack();
    let ledger = Ledger::load(layout, name)?;
    let rec = backup::take(
        layout,
        &runtime,
        &stack,
        &hooks,
        c.number,
        ledger.ids(),
        "on-demand",
    )?;
    let kept = c
        .profile
        .state
        .generations
        .iter()
        .map(|g| g.number)
        .collect();
    let pruned = backup::prune(layout, name, keep, &kept)?;
    crate::audit::append(
        layout,
        "backup",
        serde_json::json!({"profile": name, "backup": rec, "pruned": pruned}),
    )?;
    Ok(rec)
}

/// `smoker-install restore <id>`: restores a backup into the running stack, after a safety
/// backup. Refuses a backup whose migration state differs from the current data's (that is a
/// rollback across migrations: `rollback --restore-data`).
pub fn restore_backup(layout: &Layout, name: &str, id: &str) -> Result<String> {
    let _lock = hostlock::acquire(layout, name, false)?;
    let c = current(layout, name)?;
    let hooks = hooks(&c.entry)?;
    let index = backup::list(layout, name)?;
    let rec = index
        .backups
        .iter()
        .find(|b| b.id == id)
        .cloned()
        .ok_or_else(|| {
            Error::State(format!(
                "no backup `{id}` of `{name}`; see `smoker-install backups`"
            ))
        })?;
    let ledger = Ledger::load(layout, name)?;
    if rec.ledger != ledger.ids() {
        return Err(Error::Policy(format!(
            "backup {id} holds data at migrations [{}], but the current data is at [{}]: restoring it under generation {} would run this code on data of another schema. Use `smoker-install rollback --to <generation> --restore-data` instead.",
            rec.ledger.join(", "),
            ledger.ids().join(", "),
            c.number
        )));
    }
    let runtime = Runtime::detect()?;
    let stack = c.stack();
    let safety = backup::take(
        layout,
        &runtime,
        &stack,
        &hooks,
        c.number,
        ledger.ids(),
        "pre-restore",
    )?;
    backup::restore(layout, &runtime, &stack, &hooks, &rec)?;
    crate::audit::append(
        layout,
        "restore",
        serde_json::json!({"profile": name, "backup": id, "safety_backup": safety.id}),
    )?;
    Ok(format!(
        "restored backup {id} into `{name}` (the data before it is in safety backup {})",
        safety.id
    ))
}
