//! `smoker-install apply`: the pipeline, one step after another.
//!
//! lock → verify + stage + commit to store → preflight → images → record pending generation →
//! switch → compose up → health gate → commit (good) | automatic rollback → gc → audit.
//!
//! Invariants (see ARCHITECTURE.md): nothing reaches the store before the signature and every
//! hash are checked; `current` only ever points at a complete store entry; a generation is
//! `pending` from before the switch until the gate decides, so an interruption anywhere is
//! finished by the next run ([`crate::rollback::recover_profile`]).

use crate::error::{Error, Result};
use crate::fault;
use crate::health::{self, Report};
use crate::hostenv;
use crate::hostlock;
use crate::layout::Layout;
use crate::manifest::{Arch, Manifest};
use crate::profile::{Generation, Profile, Status, now};
use crate::runtime::{Runtime, Stack};
use crate::signing::TrustedKeys;
use crate::store::{self, StoreEntry};
use serde::Serialize;
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
pub(crate) fn env_file_for(
    profile: &str,
    explicit: Option<&Path>,
    remembered: Option<&Path>,
) -> PathBuf {
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
pub(crate) fn entry_env(entry: &StoreEntry, env_file: &Path) -> Result<BTreeMap<String, String>> {
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
    let peek = crate::bundle::read::peek_manifest(bundle, &opts.keys)?;
    let name = peek.name.clone();

    progress.step("locking the profile");
    let _lock = timer.time("lock", || hostlock::acquire(layout, &name, opts.wait))?;
    fault::point("apply:locked");
    // Finish whatever an interrupted run left behind before starting anew.
    crate::rollback::recover_profile(layout, &name, progress)?;

    let result = apply_locked(layout, bundle, opts, progress, &mut timer, &name);
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
    let peek = crate::bundle::read::peek_manifest(bundle, &opts.keys)?;
    check_policy(&peek, existing.as_ref(), opts)?;

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
    if let Some(p) = &existing {
        if let Some(cur) = p.current().and_then(|n| p.generation(n)) {
            if cur.manifest_sha256 == entry.manifest_sha256 && cur.status == Status::Good {
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
        }
    }

    progress.step("preflight");
    let remembered = existing.as_ref().and_then(|p| p.state.env_file.clone());
    let env_file = env_file_for(name, opts.env_file.as_deref(), remembered.as_deref());
    let runtime = timer.time("preflight", || preflight(layout, &entry, &env_file, bundle))?;
    fault::point("apply:preflight");
    let env = entry_env(&entry, &env_file)?;

    progress.step("images");
    timer.time("images", || {
        ensure_images(&runtime, &entry.manifest, progress)
    })?;
    fault::point("apply:images");

    let project = opts
        .project
        .clone()
        .unwrap_or_else(|| format!("smoker-{name}"));
    let mut profile = Profile::open_or_create(layout, name, &project)?;
    profile.state.env_file = Some(env_file.clone());
    let project = profile.state.project.clone();
    let previous = profile.current();
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

    progress.step("starting the stack and running the health gate");
    let report = match timer.time("up+health", || {
        activate(&runtime, &project, &entry, &env, "apply:compose-up")
    }) {
        Ok(r) => r,
        Err(e) => Report {
            healthy: false,
            rounds: 0,
            elapsed_ms: 0,
            checks: Vec::new(),
            summary: format!("compose up failed: {e}"),
        },
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
    if report.healthy {
        profile.decide(number, Status::Good, None)?;
        fault::point("apply:committed");
        progress.info(&format!(
            "generation {number} is healthy: {}",
            report.summary
        ));
        outcome.result = "committed".into();
    } else {
        profile.decide(number, Status::Failed, Some(report.summary.clone()))?;
        progress.info(&format!(
            "generation {number} failed the health gate: {}",
            report.summary
        ));
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
                    serde_json::json!({"profile": name, "from": number, "to": to, "automatic": true, "reason": report.summary}),
                )?;
                Err(Error::RolledBack(format!(
                    "generation {number} ({} {}) failed the health gate — {} — and was rolled back; generation {to} is serving again",
                    entry.manifest.name, entry.manifest.version, report.summary
                )))
            }
            Err(e) => Err(e),
        };
    }

    progress.step("gc");
    outcome.gc = timer.time("gc", || {
        crate::gc::gc(layout, &runtime, opts.keep, Some(name))
    })?;
    outcome.durations_us = timer.steps.clone();
    Ok(outcome)
}

fn check_policy(m: &Manifest, existing: Option<&Profile>, opts: &Options) -> Result<()> {
    if let Some(host) = Arch::host() {
        if m.arch != host && std::env::var("SMOKER_ALLOW_FOREIGN_ARCH").is_err() {
            return Err(Error::Policy(format!(
                "bundle is for {}, this host is {host}; use the {host} bundle",
                m.arch
            )));
        }
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
        if let (Some(new), Some(good)) = (new, newest_good) {
            if new < good && !opts.allow_downgrade {
                return Err(Error::Policy(format!(
                    "bundle version {new} is older than the newest good generation ({good}); use `smoker-install rollback` to return to a kept generation, or pass --allow-downgrade"
                )));
            }
        }
    }
    Ok(())
}

/// Checks everything an apply needs and lists every problem at once.
pub fn preflight(
    layout: &Layout,
    entry: &StoreEntry,
    env_file: &Path,
    bundle: &Path,
) -> Result<Runtime> {
    let mut problems = Vec::new();
    let runtime = match Runtime::detect() {
        Ok(r) => Some(r),
        Err(e) => {
            problems.push(e.to_string());
            None
        }
    };
    let host = hostenv::read_host(env_file)?;
    let missing = hostenv::missing(&entry.manifest.required_secrets, &host);
    if !missing.is_empty() {
        problems.push(format!(
            "required variables missing from {}: {}",
            env_file.display(),
            missing.join(", ")
        ));
    }
    let bundle_size = std::fs::metadata(bundle).map(|m| m.len()).unwrap_or(0);
    let margin = 64 * 1024 * 1024;
    if let Some(free) = crate::fsutil::free_bytes(layout.root()) {
        if free < bundle_size + margin {
            problems.push(format!(
                "only {} MiB free under {}; need {} MiB (bundle) + {} MiB margin",
                free >> 20,
                layout.root().display(),
                bundle_size >> 20,
                margin >> 20
            ));
        }
    }
    if let Some(rt) = &runtime {
        if let Some(root) = rt.data_root() {
            if let Some(free) = crate::fsutil::free_bytes(&root) {
                if free < margin {
                    problems.push(format!(
                        "only {} MiB free in Docker's data root {}",
                        free >> 20,
                        root.display()
                    ));
                }
            }
        }
        if missing.is_empty() {
            let env = entry_env(entry, env_file)?;
            let stack = Stack {
                project: "smoker-preflight",
                dir: &entry.path,
                manifest: &entry.manifest,
                env: &env,
            };
            if let Err(e) = rt.check_config(&stack) {
                problems.push(e.to_string());
            }
        }
    }
    match runtime {
        Some(rt) if problems.is_empty() => Ok(rt),
        _ => Err(Error::Preflight(problems)),
    }
}

/// Makes sure every image is present locally, pulling by digest when it is not.
pub fn ensure_images(runtime: &Runtime, m: &Manifest, progress: &dyn Progress) -> Result<()> {
    for img in &m.images {
        let r = img.pinned_ref();
        if runtime.image_id(&r).is_none() {
            progress.info(&format!("pulling {r}"));
            runtime.pull(&r)?;
        }
        if let (Some(want), Some(got)) = (&img.config_digest, runtime.image_id(&r)) {
            if &got != want {
                return Err(Error::Runtime(format!(
                    "image {r} of service `{}` has id {got}, but the signed manifest says {want}; refusing to run it",
                    img.service
                )));
            }
        }
    }
    Ok(())
}
