//! `smoker-install apply`: the pipeline, one step after another.
//!
//! lock → verify + stage + commit to store → preflight → images → record pending generation →
//! switch → compose up → health gate → commit (good) | automatic rollback → gc → audit.
//!
//! Invariants (see ARCHITECTURE.md): nothing reaches the store before the signature and every
//! hash are checked; `current` only ever points at a complete store entry; a generation is
//! `pending` from before the switch until the gate decides, so an interruption anywhere is
//! finished by the next run ([`crate::rollback::recover_profile`]).

use crate::backup;
use crate::error::{Error, Result};
use crate::fault;
use crate::health::{self, Report};
use crate::hostconfig::HostConfig;
use crate::hostenv;
use crate::hostlock;
use crate::layout::Layout;
use crate::migrate::{self, Applied, Ledger};
use crate::notify::{self, Event, Notice};
use crate::profile::{Generation, Profile, Status, now};
use crate::runtime::{Runtime, Stack};
use crate::store::{self, StoreEntry};
use serde::Serialize;
use smoker_format::manifest::{Arch, Manifest, Migration};
use smoker_format::signing::TrustedKeys;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Reports progress of the pipeline's steps (a spinner on a terminal, lines otherwise).
pub trait Progress {
    /// A step starts.
    fn step(&self, name: &str);
    /// A line of information.
    fn info(&self, message: &str);
}

/// Progress that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: &str) {}
    fn info(&self, _: &str) {}
}

/// Options of an apply.
pub struct Options {
    /// Trusted public keys.
    pub keys: TrustedKeys,
    /// Host env file; default `/etc/smoker/<profile>.env` (or what the profile used last).
    pub env_file: Option<PathBuf>,
    /// Generations to keep (gc).
    pub keep: usize,
    /// Wait for the profile lock instead of failing.
    pub wait: bool,
    /// Allow installing a version older than the newest good one.
    pub allow_downgrade: bool,
    /// Compose project name for a new profile; default `smoker-<profile>`.
    pub project: Option<String>,
    /// The host's declaration (environment, backup retention, webhooks).
    pub host: HostConfig,
    /// Allow a bundle built for another environment than the host's.
    pub allow_env_change: bool,
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Profile.
    pub profile: String,
    /// The generation created (or reused).
    pub generation: u32,
    /// Version installed.
    pub version: String,
    /// `committed`, `unchanged`, `rolled-back` or `failed`.
    pub result: String,
    /// The generation serving afterwards.
    pub current: Option<u32>,
    /// The health gate's report for the new generation.
    pub health: Option<Report>,
    /// Microseconds per step.
    pub durations_us: BTreeMap<String, u64>,
    /// What gc removed.
    pub gc: crate::gc::GcReport,
}

/// Timing of steps.
#[derive(Default)]
pub(crate) struct Timer {
    pub(crate) steps: BTreeMap<String, u64>,
}

impl Timer {
    pub(crate) fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.steps
            .insert(name.to_string(), t.elapsed().as_micros() as u64);
        r
    }
}

/// The env file a profile uses.
pub fn env_file_for(profile: &str, explicit: Option<&Path>, remembered: Option<&Path>) -> PathBuf {
    explicit
        .or(remembered)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| hostenv::default_env_file(profile))
}

/// Starts generation `entry` under `project` and runs the health gate.
pub(crate) fn activate(
    runtime: &Runtime,
    project: &str,
    entry: &StoreEntry,
    env: &BTreeMap<String, String>,
    fault_after_up: &str,
) -> Result<Report> {
    let stack = Stack {
        project,
        dir: &entry.path,
        manifest: &entry.manifest,
        env,
    };
    runtime.up(&stack)?;
    fault::point(fault_after_up);
    Ok(gate(runtime, project, &entry.manifest))
}

/// Runs the health gate for a manifest's stack.
pub(crate) fn gate(runtime: &Runtime, project: &str, manifest: &Manifest) -> Report {
    let services: Vec<String> = manifest.images.iter().map(|i| i.service.clone()).collect();
    let expected: BTreeMap<String, String> = manifest
        .images
        .iter()
        .filter_map(|i| i.config_digest.clone().map(|d| (i.service.clone(), d)))
        .collect();
    health::gate(runtime, project, &manifest.health, &services, &expected)
}

/// Environment for a store entry with the profile's host env file.
pub fn entry_env(entry: &StoreEntry, env_file: &Path) -> Result<BTreeMap<String, String>> {
    let host = hostenv::read_host(env_file)?;
    hostenv::stack_env(
        &entry.path,
        entry.manifest.compose.env_file.as_deref(),
        &host,
    )
}

/// Applies a bundle file.
pub fn apply(
    layout: &Layout,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let mut timer = Timer::default();
    progress.step("reading the manifest");
    let peek = smoker_format::bundle::read::peek_manifest(bundle, &opts.keys)?;
    let name = peek.name.clone();

    progress.step("locking the profile");
    let _lock = timer.time("lock", || hostlock::acquire(layout, &name, opts.wait))?;
    fault::point("apply:locked");
    // Finish whatever an interrupted run left behind before starting anew.
    crate::rollback::recover_profile(layout, &name, progress)?;

    let notice = |event: Event, generation: Option<u32>, message: String| Notice {
        event,
        profile: name.clone(),
        version: peek.version.clone(),
        environment: peek.environment.clone(),
        generation,
        message,
    };
    notify::send(
        layout,
        &opts.host,
        &notice(
            Event::Started,
            None,
            format!("applying {}", bundle.display()),
        ),
    );
    let result = apply_locked(layout, bundle, opts, progress, &mut timer, &name);
    let end = match &result {
        Ok(o) if o.result == "unchanged" => None,
        Ok(o) => Some(notice(
            Event::Succeeded,
            Some(o.generation),
            o.health
                .as_ref()
                .map(|h| h.summary.clone())
                .unwrap_or_default(),
        )),
        Err(Error::RolledBack(m)) => Some(notice(Event::RolledBack, None, m.clone())),
        Err(e) => Some(notice(Event::Failed, None, e.to_string())),
    };
    if let Some(n) = end {
        notify::send(layout, &opts.host, &n);
    }
    let (fields, event_outcome) = match &result {
        Ok(o) => (
            serde_json::to_value(o).unwrap_or_default(),
            o.result.clone(),
        ),
        Err(e) => (
            serde_json::json!({"profile": name, "bundle": bundle.display().to_string(), "error": e.to_string()}),
            "error".to_string(),
        ),
    };
    let mut fields = fields;
    if let serde_json::Value::Object(m) = &mut fields {
        m.insert("outcome".into(), event_outcome.into());
        m.insert("bundle".into(), bundle.display().to_string().into());
    }
    crate::audit::append(layout, "apply", fields)?;
    result
}

fn apply_locked(
    layout: &Layout,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
    timer: &mut Timer,
    name: &str,
) -> Result<Outcome> {
    // Policy checks that need only the signed manifest.
    let existing = Profile::open(layout, name)?;
    let peek = smoker_format::bundle::read::peek_manifest(bundle, &opts.keys)?;
    check_policy(layout, &peek, existing.as_ref(), opts)?;

    progress.step("verifying and storing the bundle");
    let (entry, verified) = timer.time("verify+store", || {
        store::add(layout, bundle, &opts.keys, || fault::point("apply:staged"))
    })?;
    fault::point("apply:stored");
    progress.info(&format!(
        "verified {} {} {} (signed by {}), stored as {}",
        entry.manifest.name,
        entry.manifest.version,
        entry.manifest.arch,
        verified.key_id,
        entry.name
    ));

    // Already serving exactly this bundle?
    if let Some(p) = &existing
        && let Some(cur) = p.current().and_then(|n| p.generation(n))
        && cur.manifest_sha256 == entry.manifest_sha256
        && cur.status == Status::Good
    {
        progress.info(&format!(
            "generation {} already runs this bundle",
            cur.number
        ));
        return Ok(Outcome {
            profile: name.to_string(),
            generation: cur.number,
            version: cur.version.clone(),
            result: "unchanged".into(),
            current: Some(cur.number),
            health: None,
            durations_us: timer.steps.clone(),
            gc: Default::default(),
        });
    }

    progress.step("preflight");
    let remembered = existing.as_ref().and_then(|p| p.state.env_file.clone());
    let env_file = env_file_for(name, opts.env_file.as_deref(), remembered.as_deref());
    let project = opts
        .project
        .clone()
        .or_else(|| existing.as_ref().map(|p| p.state.project.clone()))
        .unwrap_or_else(|| format!("smoker-{name}"));
    let bundle_bytes = std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0);
    let runtime = timer.time("preflight", || {
        crate::preflight::require(&crate::preflight::Inputs {
            layout,
            manifest: &entry.manifest,
            payload_dir: &entry.path,
            bundle_bytes,
            env_file: &env_file,
            host: &opts.host,
            allow_env_change: opts.allow_env_change,
            project: &project,
            holds_lock: true,
        })
    })?;
    fault::point("apply:preflight");
    let env = entry_env(&entry, &env_file)?;

    progress.step("images");
    timer.time("images", || {
        crate::images::ensure_images(&runtime, &entry, progress)
    })?;
    fault::point("apply:images");

    // Data: the ledger decides which migrations run (checksums of applied ones are checked
    // here, before anything changes).
    let mut ledger = Ledger::load(layout, name)?;
    let to_run: Vec<Migration> = ledger
        .pending(&entry.manifest)?
        .into_iter()
        .cloned()
        .collect();

    let mut profile = Profile::open_or_create(layout, name, &project)?;
    profile.state.env_file = Some(env_file.clone());
    let project = profile.state.project.clone();
    let previous = profile.current();

    // A backup of the data as it is now, before any migration touches it.
    let pre_backup = if to_run.is_empty() {
        None
    } else {
        progress.step("backing up data before migrations");
        timer.time("backup", || {
            pre_migration_backup(
                layout, &runtime, &profile, previous, &entry, &ledger, progress,
            )
        })?
    };

    let number = profile.next_number();
    profile.add_pending(Generation {
        number,
        store: entry.name.clone(),
        version: entry.manifest.version.clone(),
        arch: entry.manifest.arch.to_string(),
        environment: entry.manifest.environment.clone(),
        bundle_sha256: verified.bundle_sha256.clone(),
        manifest_sha256: entry.manifest_sha256.clone(),
        status: Status::Pending,
        installed_at: now(),
        decided_at: None,
        reason: None,
    })?;
    fault::point("apply:pending");

    progress.step(&format!("switching to generation {number}"));
    timer.time("switch", || profile.switch(number))?;
    fault::point("apply:switched");

    progress.step("starting the stack");
    let stack = Stack {
        project: &project,
        dir: &entry.path,
        manifest: &entry.manifest,
        env: &env,
    };
    let mut failure = timer
        .time("up", || runtime.up(&stack))
        .err()
        .map(|e| format!("compose up failed: {e}"));
    fault::point("apply:compose-up");
    let mut migrated = false;
    if failure.is_none() {
        for mig in &to_run {
            progress.step(&format!("migration {}", mig.id));
            migrated = true;
            match timer.time(&format!("migration {}", mig.id), || {
                migrate::run(&runtime, &stack, &entry.path, mig)
            }) {
                Ok(_) => {
                    ledger.applied.push(Applied {
                        id: mig.id.clone(),
                        sha256: mig.sha256.clone(),
                        applied_at: now(),
                        generation: number,
                    });
                    ledger.save(layout, name)?;
                }
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
        }
    }
    let what = if failure.is_some() {
        "failed"
    } else {
        "failed the health gate"
    };
    let report = match failure {
        Some(summary) => Report::failed(summary),
        None => {
            progress.step("health gate");
            timer.time("health", || gate(&runtime, &project, &entry.manifest))
        }
    };
    fault::point("apply:health");

    let mut outcome = Outcome {
        profile: name.to_string(),
        generation: number,
        version: entry.manifest.version.clone(),
        result: String::new(),
        current: Some(number),
        health: Some(report.clone()),
        durations_us: BTreeMap::new(),
        gc: Default::default(),
    };
    if !report.healthy {
        profile.decide(number, Status::Failed, Some(report.summary.clone()))?;
        progress.info(&format!("generation {number} {what}: {}", report.summary));
        // Data first: migrations may have changed it, so the pre-migration backup goes back
        // before the previous code runs again.
        let data_note = if migrated {
            restore_after_failed_migration(
                layout,
                &runtime,
                &stack,
                pre_backup.as_ref(),
                &mut ledger,
                progress,
            )
        } else {
            String::new()
        };
        let back = timer.time("rollback", || {
            crate::rollback::restore_previous(
                layout,
                &runtime,
                &mut profile,
                number,
                previous,
                progress,
            )
        });
        outcome.durations_us = timer.steps.clone();
        return match back {
            Ok(to) => {
                outcome.result = "rolled-back".into();
                outcome.current = Some(to);
                crate::audit::append(
                    layout,
                    "rollback",
                    serde_json::json!({"profile": name, "from": number, "to": to, "automatic": true, "reason": report.summary, "data": data_note}),
                )?;
                Err(Error::RolledBack(format!(
                    "generation {number} ({} {}) {what} — {} — and was rolled back; {data_note}generation {to} is serving again",
                    entry.manifest.name, entry.manifest.version, report.summary
                )))
            }
            Err(e) => Err(Error::Broken(format!("{data_note}{e}"))),
        };
    }
    profile.decide(number, Status::Good, None)?;
    fault::point("apply:committed");
    progress.info(&format!(
        "generation {number} is healthy: {}",
        report.summary
    ));
    outcome.result = "committed".into();

    progress.step("gc");
    outcome.gc = timer.time("gc", || {
        crate::gc::gc(layout, &runtime, opts.keep, &[name.to_string()])
    })?;
    let kept: std::collections::BTreeSet<u32> = Profile::open(layout, name)?
        .map(|p| p.state.generations.iter().map(|g| g.number).collect())
        .unwrap_or_default();
    let pruned = backup::prune(layout, name, opts.host.backups.keep, &kept)?;
    if !pruned.is_empty() {
        progress.info(&format!("removed old backups: {}", pruned.join(", ")));
    }
    outcome.durations_us = timer.steps.clone();
    Ok(outcome)
}

/// Backs up the data of the generation serving now, before migrations run. `None` when there
/// is nothing to back up (first install) or no backup hook is declared (said on the way).
fn pre_migration_backup(
    layout: &Layout,
    runtime: &Runtime,
    profile: &Profile,
    previous: Option<u32>,
    entry: &StoreEntry,
    ledger: &Ledger,
    progress: &dyn Progress,
) -> Result<Option<backup::Record>> {
    let Some(prev) = previous.and_then(|n| profile.generation(n)) else {
        progress.info("first install: no data to back up before migrations");
        return Ok(None);
    };
    let prev_entry = store::open(layout, &prev.store)?;
    let Some(hooks) = prev_entry
        .manifest
        .backup
        .clone()
        .or_else(|| entry.manifest.backup.clone())
    else {
        progress
            .info("warning: no backup hook declared; migrations run without a backup to restore");
        return Ok(None);
    };
    let env_file = env_file_for(&profile.state.name, None, profile.state.env_file.as_deref());
    let env = entry_env(&prev_entry, &env_file)?;
    let stack = Stack {
        project: &profile.state.project,
        dir: &prev_entry.path,
        manifest: &prev_entry.manifest,
        env: &env,
    };
    let rec = backup::take(
        layout,
        runtime,
        &stack,
        &hooks,
        prev.number,
        ledger.ids(),
        "pre-migration",
    )?;
    progress.info(&format!(
        "backup {} ({} bytes, sha256 {})",
        rec.id, rec.size, rec.sha256
    ));
    Ok(Some(rec))
}

/// After a failed migration or health gate that followed migrations: restores the
/// pre-migration backup into the running stack and rewinds the ledger. Returns a sentence for
/// the report.
fn restore_after_failed_migration(
    layout: &Layout,
    runtime: &Runtime,
    stack: &Stack<'_>,
    pre: Option<&backup::Record>,
    ledger: &mut Ledger,
    progress: &dyn Progress,
) -> String {
    let Some(rec) = pre else {
        return "WARNING: migrations ran but there is no backup to restore, so the data stays as they left it; ".into();
    };
    let Some(hooks) = stack.manifest.backup.clone() else {
        return format!(
            "WARNING: no restore hook in this bundle; restore backup {} by hand with `smoker-install restore {}`; ",
            rec.id, rec.id
        );
    };
    progress.step(&format!("restoring data from backup {}", rec.id));
    match backup::restore(layout, runtime, stack, &hooks, rec) {
        Ok(()) => {
            ledger.applied.retain(|a| rec.ledger.contains(&a.id));
            match ledger.save(layout, &stack.manifest.name) {
                Ok(()) => format!("data restored from backup {}; ", rec.id),
                Err(e) => format!(
                    "data restored from backup {}, but the migration ledger could not be saved ({e}); ",
                    rec.id
                ),
            }
        }
        Err(e) => format!(
            "WARNING: restoring backup {} failed ({e}); restore it with `smoker-install restore {}`; ",
            rec.id, rec.id
        ),
    }
}

fn check_policy(
    layout: &Layout,
    m: &Manifest,
    existing: Option<&Profile>,
    opts: &Options,
) -> Result<()> {
    if let Some(host) = Arch::host()
        && m.arch != host
        && std::env::var("SMOKER_ALLOW_FOREIGN_ARCH").is_err()
    {
        return Err(Error::Policy(format!(
            "bundle is for {}, this host is {host}; use the {host} bundle",
            m.arch
        )));
    }
    if let Some((env, from)) = crate::preflight::host_environment(layout, &opts.host, &m.name)
        && env != m.environment
        && !opts.allow_env_change
    {
        return Err(Error::Policy(format!(
            "bundle is for environment `{}`, but this host is `{env}` ({from}); use the `{env}` bundle, or pass --allow-env-change if the host really changes environment",
            m.environment
        )));
    }
    if let Some(p) = existing {
        let new = semver::Version::parse(&m.version).ok();
        let newest_good = p
            .state
            .generations
            .iter()
            .filter(|g| g.status == Status::Good)
            .filter_map(|g| semver::Version::parse(&g.version).ok())
            .max();
        if let (Some(new), Some(good)) = (new, newest_good)
            && new < good
            && !opts.allow_downgrade
        {
            return Err(Error::Policy(format!(
                "bundle version {new} is older than the newest good generation ({good}); use `smoker-install rollback` to return to a kept generation, or pass --allow-downgrade"
            )));
        }
    }
    Ok(())
}
