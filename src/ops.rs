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
use smoker_format::signing::TrustedKeys;
use std::path::Path;

/// What `smoker-install preflight` is asked about a bundle.
pub struct PreflightRequest<'a> {
    /// The bundle file.
    pub bundle: &'a Path,
    /// Trusted keys.
    pub keys: &'a TrustedKeys,
    /// Host env file (default: the profile's, else `/etc/smoker/<profile>.env`).
    pub env_file: Option<&'a Path>,
    /// The host's declaration.
    pub host: &'a HostConfig,
    /// As `apply --allow-env-change`.
    pub allow_env_change: bool,
    /// As `apply --allow-downgrade`.
    pub allow_downgrade: bool,
}

/// `smoker-install preflight <bundle>`: every check `apply` makes before it changes anything —
/// verification, the host's policy (profile, architecture, environment, downgrade) and the
/// preflight checks — without storing anything. The bundle is verified into a staging
/// directory under the host root (on disk, never `/tmp`, which is memory on many hosts),
/// after checking there is room for its payload; the staged copy is removed afterwards.
pub fn preflight_bundle(
    layout: &Layout,
    req: &PreflightRequest<'_>,
) -> Result<crate::preflight::Report> {
    let mut file = crate::fsutil::open_regular(req.bundle, true)?;
    let peek = smoker_format::bundle::read::peek_manifest_from(&file, req.keys)?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).map_err(io_at(req.bundle))?;
    let staging = layout.staging();
    let need = peek
        .payload_bytes()
        .saturating_add(crate::preflight::MARGIN_BYTES);
    if let Some(free) = crate::fsutil::free_bytes(&staging)
        && free < need
    {
        return Err(Error::Preflight(vec![format!(
            "disk (staging): {} needs {need} bytes free to verify this bundle's payload, {free} are free; free space or remove old generations with `smoker-install gc`",
            staging.display()
        )]));
    }
    let staged = crate::store::stage(layout, file, req.keys)?;
    let m = staged.manifest();
    let name = m.name.clone();
    let profile = Profile::open(layout, &name)?;
    let env_file = env_file_for(
        &name,
        req.env_file,
        profile.as_ref().and_then(|p| p.state.env_file.as_deref()),
    );
    let project = profile
        .as_ref()
        .map(|p| p.state.project.clone())
        .unwrap_or_else(|| format!("smoker-{name}"));
    let (_, mut report) = crate::preflight::run(&crate::preflight::Inputs {
        layout,
        manifest: m,
        payload_dir: staged.path(),
        bundle_bytes: staged.verified.compressed_bytes,
        env_file: &env_file,
        host: req.host,
        allow_env_change: req.allow_env_change,
        project: &project,
        holds_lock: false,
    })?;
    let facts = crate::policy::HostFacts::gather(
        layout,
        req.host,
        &name,
        req.allow_env_change,
        req.allow_downgrade,
    );
    let generations = profile
        .as_ref()
        .map(|p| &p.state.generations[..])
        .unwrap_or(&[]);
    match crate::policy::check_downgrade(
        m,
        generations,
        facts.floor.as_ref(),
        facts.allow_downgrade,
    ) {
        Ok(()) => report.add("downgrade", true, format!("version {}", m.version)),
        Err(e) => report.add("downgrade", false, e.to_string()),
    }
    let signer = crate::policy::Signer::of(req.keys, &staged.verified.key_id);
    match crate::policy::check_key_scope(m, &signer) {
        Ok(()) => report.add(
            "key scope",
            true,
            format!(
                "key {} may sign environment `{}`, profile `{}`",
                signer.key_id, m.environment, m.name
            ),
        ),
        Err(e) => report.add("key scope", false, e.to_string()),
    }
    match crate::policy::check_host_access(m, facts.allowances.as_ref(), &facts.config_path) {
        Ok(()) if m.host_access.is_empty() => report.add(
            "host access",
            true,
            "asks nothing beyond an unprivileged stack",
        ),
        Ok(()) => report.add(
            "host access",
            true,
            format!(
                "services {} ask for host access, all allowed by [policy.{}]",
                m.host_access.keys().cloned().collect::<Vec<_>>().join(", "),
                m.name
            ),
        ),
        Err(e) => report.add("host access", false, e.to_string()),
    }
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
            overrides: &[],
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
