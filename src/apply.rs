//! `smoker-install apply`: the pipeline, one step after another.
//!
//! lock → verify + stage + commit to store → preflight → images → record pending generation →
//! switch → compose up → health gate → commit (good) | automatic rollback → gc → audit.
//!
//! Invariants (see ARCHITECTURE.md): nothing reaches the store before the signature and every
//! hash are checked; `current` only ever points at a complete store entry; a generation is
//! `pending` from before the switch until the gate decides, so an interruption anywhere is
//! finished by the next run ([`crate::rollback::recover_profile`]).

use crate::activate::{Target, entry_env, env_file_for, gate, inputs_for, up_and_gate};
use crate::backup;
use crate::error::{Error, Result, io_at};
use crate::fault;
use crate::health::Report;
use crate::hostconfig::{BackupWhen, HostConfig};
use crate::hostlock;
use crate::inputs::Prepared;
use crate::layout::Layout;
use crate::migrate::{self, Applied, Ledger};
use crate::notify::{self, Event, Notice};
use crate::policy::{self, HostFacts};
use crate::profile::{Generation, Profile, Status, now};
use crate::progress::{MeteredReader, Timer};
use crate::runtime::{Resolved, Runtime, Stack};
use crate::store::{self, StoreEntry};
use serde::Serialize;
use smoker_format::manifest::Migration;
use smoker_format::signing::TrustedKeys;
use std::collections::BTreeMap;
use std::io::{Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

pub use crate::progress::{Progress, Quiet};

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

/// Applies a bundle file. The file is opened once: the signed manifest at its start names the
/// profile to lock, then the same open file is verified and staged in one pass, and every later
/// decision uses the manifest that pass verified.
pub fn apply(
    layout: &Layout,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let file = crate::fsutil::open_regular(bundle, true)?;
    apply_open(layout, file, bundle, opts, progress)
}

/// [`apply`] of a bundle on removable media: the path must name a regular file itself, not a
/// symbolic link (the media's files are not trusted to point anywhere).
pub fn apply_media(
    layout: &Layout,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let file = crate::fsutil::open_regular(bundle, false)?;
    apply_open(layout, file, bundle, opts, progress)
}

/// Applies the bundle staged for `profile` (`smoker-install stage`): no bundle file is read;
/// the stored entry is checked (signature of its manifest, commit journal, policy) and
/// switched to.
pub fn apply_staged(
    layout: &Layout,
    profile: &str,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let Some(record) = crate::staged::load(layout, profile)? else {
        return Err(Error::State(format!(
            "nothing is staged for profile `{profile}`; stage a bundle first (smoker-install stage BUNDLE)"
        )));
    };
    let label = PathBuf::from(format!("staged:{}", record.store));
    let peek = record_head(&record);
    run_locked(layout, None, peek, &label, opts, progress)
}

/// What an apply knows of its bundle before taking the lock.
struct Head {
    name: String,
    version: String,
    environment: String,
    manifest_sha256: String,
}

fn record_head(r: &crate::staged::Record) -> Head {
    Head {
        name: r.profile.clone(),
        version: r.version.clone(),
        environment: r.environment.clone(),
        manifest_sha256: r.manifest_sha256.clone(),
    }
}

/// Where the verified content of an apply comes from.
enum Source {
    /// The bundle file, verified and stored in one pass.
    File(std::fs::File),
    /// An entry staged earlier for the same signed manifest.
    Staged(Box<(crate::staged::Record, StoreEntry, String)>),
}

/// Applies an open bundle file; `bundle` names it in messages and the audit log.
fn apply_open(
    layout: &Layout,
    mut file: std::fs::File,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    progress.step("reading the manifest");
    let head = smoker_format::bundle::read::peek_signed_head(&file, &opts.keys)?;
    file.seek(SeekFrom::Start(0)).map_err(io_at(bundle))?;
    let peek = Head {
        name: head.manifest.name.clone(),
        version: head.manifest.version.clone(),
        environment: head.manifest.environment.clone(),
        manifest_sha256: head.manifest_sha256,
    };
    run_locked(layout, Some(file), peek, bundle, opts, progress)
}

/// Locks the profile, finishes interrupted runs, and applies from the bundle file or, when
/// `file` is `None` or the same signed manifest is staged, from the staged entry.
fn run_locked(
    layout: &Layout,
    file: Option<std::fs::File>,
    peek: Head,
    bundle: &Path,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let mut timer = Timer::default();
    let name = peek.name.clone();

    progress.step("locking the profile");
    let _lock = timer.time("lock", || hostlock::acquire(layout, &name, opts.wait))?;
    fault::point("apply:locked");
    // Finish whatever an interrupted run left behind before starting anew.
    crate::rollback::recover_profile(layout, &name, progress)?;
    let staged = match crate::staged::usable(layout, &name, Some(&peek.manifest_sha256), &opts.keys)
    {
        // A bundle file is at hand: an unusable staged entry only means verifying it again
        // (the commit to the store replaces a damaged entry).
        Err(e) if file.is_some() => {
            progress.info(&format!(
                "the staged entry cannot be used ({e}); verifying the bundle file instead"
            ));
            None
        }
        other => other?,
    };
    let source = match (staged, file) {
        (Some((record, entry, key_id)), _) => {
            progress.info(&format!(
                "{} {} was staged as {}: switching without reading the bundle again",
                record.profile, record.version, record.store
            ));
            Source::Staged(Box::new((record, entry, key_id)))
        }
        (None, Some(file)) => Source::File(file),
        (None, None) => {
            return Err(Error::State(format!(
                "the bundle staged for profile `{name}` changed while waiting for the lock; stage it again"
            )));
        }
    };

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
    let mut run = Run {
        layout,
        opts,
        progress,
        timer,
        name: &name,
    };
    let result = run.apply_locked(source);
    if matches!(&result, Ok(_) | Err(Error::RolledBack(_))) {
        crate::staged::clear_if(layout, &name, &peek.manifest_sha256)?;
    }
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
    crate::audit::append(layout, "apply", audit_fields(&name, bundle, &result))?;
    result
}

/// The audit record of an apply.
fn audit_fields(name: &str, bundle: &Path, result: &Result<Outcome>) -> serde_json::Value {
    let (mut fields, outcome) = match result {
        Ok(o) => (
            serde_json::to_value(o).unwrap_or_default(),
            o.result.clone(),
        ),
        Err(e) => (
            serde_json::json!({"profile": name, "error": e.to_string()}),
            "error".to_string(),
        ),
    };
    if let serde_json::Value::Object(m) = &mut fields {
        m.insert("outcome".into(), outcome.into());
        m.insert("bundle".into(), bundle.display().to_string().into());
    }
    fields
}

/// One apply under the profile's lock: the steps of the pipeline as methods, in order.
struct Run<'a> {
    layout: &'a Layout,
    opts: &'a Options,
    progress: &'a dyn Progress,
    timer: Timer,
    name: &'a str,
}

/// How starting the new generation went.
struct Started {
    /// The gate's report, or the failure, when already decided (else the gate runs next).
    report: Option<Report>,
    /// Whether a migration ran.
    migrated: bool,
    /// How it failed, for messages (`failed`, `failed the health gate`).
    what: &'static str,
}

/// What the data step decided before anything changes.
struct DataPlan {
    ledger: Ledger,
    to_run: Vec<Migration>,
    pre_backup: Option<backup::Record>,
}

impl Run<'_> {
    fn apply_locked(&mut self, source: Source) -> Result<Outcome> {
        let existing = Profile::open(self.layout, self.name)?;
        let bundle_bytes = match &source {
            Source::File(file) => file.metadata().map(|m| m.len()).unwrap_or(0),
            Source::Staged(staged) => staged.0.bundle_bytes,
        };
        // Held until generation N links the entry, so no gc removes it in between.
        let (entry, bundle_sha256, storing) = match source {
            Source::File(file) => self.verify_and_store(file, existing.as_ref())?,
            Source::Staged(staged) => {
                let (record, entry, key_id) = *staged;
                self.check_staged(record, entry, &key_id, existing.as_ref())?
            }
        };
        if let Some(unchanged) = self.already_serving(existing.as_ref(), &entry) {
            return Ok(unchanged);
        }
        let (runtime, resolved, env_file, project) =
            self.preflight(existing.as_ref(), &entry, bundle_bytes)?;
        let env = entry_env(&entry, &env_file)?;
        self.progress.step("images");
        self.timer.time("images", || {
            crate::images::ensure_images(&runtime, &entry, self.progress)
        })?;
        fault::point("apply:images");

        let mut profile = Profile::open_or_create(self.layout, self.name, &project)?;
        profile.state.env_file = Some(env_file);
        let previous = profile.current();
        let mut data = self.plan_data(&runtime, &profile, previous, &entry)?;
        let prepared = self.inputs(&runtime, &profile, &entry, &env, resolved)?;
        let number = self.record_and_switch(&mut profile, &entry, bundle_sha256, &prepared)?;
        drop(storing);

        let project = profile.state.project.clone();
        let overrides = [prepared.override_file.clone()];
        let stack = Stack {
            project: &project,
            dir: &entry.path,
            manifest: &entry.manifest,
            env: &env,
            overrides: &overrides,
        };
        let started = self.start(&runtime, &stack, &mut data, number);
        let (migrated, what) = (started.migrated, started.what);
        let report = match started.report {
            Some(r) => r,
            None => {
                self.progress.step("health gate");
                self.timer
                    .time("health", || gate(&runtime, &project, &entry.manifest))
            }
        };
        fault::point("apply:health");
        if !report.healthy {
            return self.roll_back(
                &runtime,
                &mut profile,
                &stack,
                &mut data,
                Failed {
                    number,
                    previous,
                    report,
                    what,
                    migrated,
                },
            );
        }
        profile.decide(number, Status::Good, None)?;
        policy::record_commit(
            self.layout,
            self.name,
            &entry.manifest.version,
            self.opts.allow_downgrade,
        )?;
        fault::point("apply:committed");
        self.progress.info(&format!(
            "generation {number} is healthy: {}",
            report.summary
        ));
        let gc = self.collect_garbage(&runtime)?;
        Ok(Outcome {
            profile: self.name.to_string(),
            generation: number,
            version: entry.manifest.version.clone(),
            result: "committed".into(),
            current: Some(number),
            health: Some(report),
            durations_us: self.timer.steps.clone(),
            gc,
        })
    }

    /// Verifies and stages the bundle in one pass, decides policy on the manifest that pass
    /// verified, and only then commits it to the store.
    fn verify_and_store(
        &mut self,
        file: std::fs::File,
        existing: Option<&Profile>,
    ) -> Result<(StoreEntry, String, crate::gc::Storing)> {
        self.progress.step("verifying and storing the bundle");
        let (layout, keys) = (self.layout, &self.opts.keys);
        let total = file.metadata().ok().map(|m| m.len());
        let input = MeteredReader::new(file, self.progress.bytes("verifying", total));
        let staged = self
            .timer
            .time("verify+stage", || store::stage(layout, input, keys))?;
        fault::point("apply:staged");
        self.check_policy(staged.manifest(), &staged.verified.key_id, existing)?;
        let key_id = staged.verified.key_id.clone();
        let bundle_sha256 = staged.verified.bundle_sha256.clone();
        let storing = crate::gc::storing(layout)?;
        let entry = self.timer.time("store", || staged.commit(layout))?;
        fault::point("apply:stored");
        self.progress.info(&format!(
            "verified {} {} {} (signed by {key_id}), stored as {}",
            entry.manifest.name, entry.manifest.version, entry.manifest.arch, entry.name
        ));
        Ok((entry, bundle_sha256, storing))
    }

    /// A staged entry (already verified and stored, its journal and manifest signature checked
    /// by [`crate::staged::usable`]): the host's policy is decided again, as now.
    fn check_staged(
        &mut self,
        record: crate::staged::Record,
        entry: StoreEntry,
        key_id: &str,
        existing: Option<&Profile>,
    ) -> Result<(StoreEntry, String, crate::gc::Storing)> {
        self.progress.step("checking the staged bundle");
        self.check_policy(&entry.manifest, key_id, existing)?;
        let storing = crate::gc::storing(self.layout)?;
        Ok((entry, record.bundle_sha256, storing))
    }

    /// The host's policy on a verified manifest signed by `key_id` (see [`policy::check`]).
    fn check_policy(
        &self,
        manifest: &smoker_format::manifest::Manifest,
        key_id: &str,
        existing: Option<&Profile>,
    ) -> Result<()> {
        let mut facts = HostFacts::gather(
            self.layout,
            &self.opts.host,
            self.name,
            self.opts.allow_env_change,
            self.opts.allow_downgrade,
        );
        facts.signer = Some(policy::Signer::of(&self.opts.keys, key_id));
        let generations = existing.map(|p| &p.state.generations[..]).unwrap_or(&[]);
        policy::check(manifest, self.name, generations, &facts)
    }

    /// The outcome when the current generation is already this bundle and good.
    fn already_serving(&self, existing: Option<&Profile>, entry: &StoreEntry) -> Option<Outcome> {
        let p = existing?;
        let cur = p.current().and_then(|n| p.generation(n))?;
        if cur.manifest_sha256 != entry.manifest_sha256 || cur.status != Status::Good {
            return None;
        }
        self.progress.info(&format!(
            "generation {} already runs this bundle",
            cur.number
        ));
        Some(Outcome {
            profile: self.name.to_string(),
            generation: cur.number,
            version: cur.version.clone(),
            result: "unchanged".into(),
            current: Some(cur.number),
            health: None,
            durations_us: self.timer.steps.clone(),
            gc: Default::default(),
        })
    }

    /// Every check the host can make before anything changes. Returns the runtime, compose's
    /// resolved configuration, the env file and the compose project name.
    fn preflight(
        &mut self,
        existing: Option<&Profile>,
        entry: &StoreEntry,
        bundle_bytes: u64,
    ) -> Result<(Runtime, Option<Resolved>, PathBuf, String)> {
        self.progress.step("preflight");
        let remembered = existing.and_then(|p| p.state.env_file.clone());
        let env_file = env_file_for(
            self.name,
            self.opts.env_file.as_deref(),
            remembered.as_deref(),
        );
        let project = self
            .opts
            .project
            .clone()
            .or_else(|| existing.map(|p| p.state.project.clone()))
            .unwrap_or_else(|| format!("smoker-{}", self.name));
        let inputs = crate::preflight::Inputs {
            layout: self.layout,
            manifest: &entry.manifest,
            payload_dir: &entry.path,
            bundle_bytes,
            env_file: &env_file,
            host: &self.opts.host,
            allow_env_change: self.opts.allow_env_change,
            project: &project,
            holds_lock: true,
        };
        let (runtime, resolved) = self
            .timer
            .time("preflight", || crate::preflight::require(&inputs))?;
        fault::point("apply:preflight");
        Ok((runtime, resolved, env_file, project))
    }

    /// Puts the generation's bind-mounted files in place by content and writes its compose
    /// override ([`crate::inputs`]), before anything switches; runs while the entry is held
    /// against gc.
    fn inputs(
        &mut self,
        runtime: &Runtime,
        profile: &Profile,
        entry: &StoreEntry,
        env: &BTreeMap<String, String>,
        resolved: Option<Resolved>,
    ) -> Result<Prepared> {
        self.progress.step("inputs");
        let t = Target {
            layout: self.layout,
            entry,
            project: &profile.state.project,
            profile: self.name,
            env,
        };
        let prepared = self
            .timer
            .time("inputs", || inputs_for(runtime, &t, resolved))?;
        for note in &prepared.notes {
            self.progress.info(&format!("warning: {note}"));
        }
        Ok(prepared)
    }

    /// The migration ledger decides which migrations run (checksums of applied ones are
    /// checked here, before anything changes); when some will — or before every apply, as the
    /// host's `[backups] before` says for this environment — the data of the generation serving
    /// now is backed up first (and checked, with `[backups] verify`).
    fn plan_data(
        &mut self,
        runtime: &Runtime,
        profile: &Profile,
        previous: Option<u32>,
        entry: &StoreEntry,
    ) -> Result<DataPlan> {
        let ledger = Ledger::load(self.layout, self.name)?;
        let to_run: Vec<Migration> = ledger
            .pending(&entry.manifest)?
            .into_iter()
            .cloned()
            .collect();
        let settings = &self.opts.host.backups;
        let every = settings.before_for(&entry.manifest.environment) == BackupWhen::EveryApply;
        let pre_backup = if to_run.is_empty() && !every {
            None
        } else {
            let reason = if to_run.is_empty() {
                "pre-apply"
            } else {
                "pre-migration"
            };
            self.progress.step(&format!("backing up data ({reason})"));
            let (layout, progress) = (self.layout, self.progress);
            let how = (reason, settings.verify);
            self.timer.time("backup", || {
                pre_migration_backup(
                    layout, runtime, profile, previous, entry, &ledger, how, progress,
                )
            })?
        };
        Ok(DataPlan {
            ledger,
            to_run,
            pre_backup,
        })
    }

    /// Records generation N as pending (with its `N-link`), then switches `current` to it.
    fn record_and_switch(
        &mut self,
        profile: &mut Profile,
        entry: &StoreEntry,
        bundle_sha256: String,
        prepared: &Prepared,
    ) -> Result<u32> {
        let number = profile.next_number();
        profile.add_pending(Generation {
            number,
            store: entry.name.clone(),
            version: entry.manifest.version.clone(),
            arch: entry.manifest.arch.to_string(),
            environment: entry.manifest.environment.clone(),
            bundle_sha256,
            manifest_sha256: entry.manifest_sha256.clone(),
            status: Status::Pending,
            installed_at: now(),
            decided_at: None,
            reason: None,
            inputs: crate::inputs::names(prepared),
        })?;
        fault::point("apply:pending");
        self.progress
            .step(&format!("switching to generation {number}"));
        self.timer.time("switch", || profile.switch(number))?;
        fault::point("apply:switched");
        Ok(number)
    }

    /// Starts the new generation. Without migrations to run: `compose up` with the health gate
    /// watching from the first second ([`up_and_gate`]). With migrations: `compose up`, then
    /// each pending migration in order, recorded in the ledger as it succeeds; the gate runs
    /// after them (the new code may need them to answer correctly).
    fn start(
        &mut self,
        runtime: &Runtime,
        stack: &Stack<'_>,
        data: &mut DataPlan,
        number: u32,
    ) -> Started {
        self.progress.step("starting the stack");
        if data.to_run.is_empty() {
            self.progress
                .step("health gate (while compose starts the stack)");
            let report = self.timer.time("up+health", || {
                up_and_gate(runtime, stack, "apply:compose-up")
            });
            let what = if report.rounds == 0 {
                "failed"
            } else {
                "failed the health gate"
            };
            return Started {
                report: Some(report),
                migrated: false,
                what,
            };
        }
        let failed = |summary: String, migrated: bool| Started {
            report: Some(Report::failed(summary)),
            migrated,
            what: "failed",
        };
        if let Err(e) = self.timer.time("up", || runtime.up(stack)) {
            fault::point("apply:compose-up");
            return failed(format!("compose up failed: {e}"), false);
        }
        fault::point("apply:compose-up");
        let mut migrated = false;
        for mig in &data.to_run {
            self.progress.step(&format!("migration {}", mig.id));
            migrated = true;
            let ran = self.timer.time(&format!("migration {}", mig.id), || {
                migrate::run(runtime, stack, stack.dir, mig)
            });
            if let Err(e) = ran {
                return failed(e.to_string(), migrated);
            }
            data.ledger.applied.push(Applied {
                id: mig.id.clone(),
                sha256: mig.sha256.clone(),
                applied_at: now(),
                generation: number,
            });
            if let Err(e) = data.ledger.save(self.layout, self.name) {
                return failed(
                    format!("the migration ledger could not be saved: {e}"),
                    migrated,
                );
            }
        }
        Started {
            report: None,
            migrated,
            what: "failed the health gate",
        }
    }

    /// The new generation failed: mark it, put the data back when migrations touched it, and
    /// return to the previous good generation.
    fn roll_back(
        &mut self,
        runtime: &Runtime,
        profile: &mut Profile,
        stack: &Stack<'_>,
        data: &mut DataPlan,
        failed: Failed,
    ) -> Result<Outcome> {
        let Failed {
            number,
            previous,
            report,
            what,
            migrated,
        } = failed;
        profile.decide(number, Status::Failed, Some(report.summary.clone()))?;
        self.progress
            .info(&format!("generation {number} {what}: {}", report.summary));
        // Data first: migrations may have changed it, so the pre-migration backup goes back
        // before the previous code runs again.
        let data_note = if migrated {
            restore_after_failed_migration(
                self.layout,
                runtime,
                stack,
                data.pre_backup.as_ref(),
                &mut data.ledger,
                self.progress,
            )
        } else {
            String::new()
        };
        let (layout, progress) = (self.layout, self.progress);
        let back = self.timer.time("rollback", || {
            crate::rollback::restore_previous(layout, runtime, profile, number, previous, progress)
        });
        match back {
            Ok(to) => {
                crate::audit::append(
                    self.layout,
                    "rollback",
                    serde_json::json!({"profile": self.name, "from": number, "to": to, "automatic": true, "reason": report.summary, "data": data_note}),
                )?;
                Err(Error::RolledBack(format!(
                    "generation {number} ({} {}) {what} — {} — and was rolled back; {data_note}generation {to} is serving again",
                    stack.manifest.name, stack.manifest.version, report.summary
                )))
            }
            Err(e) => Err(Error::Broken(format!("{data_note}{e}"))),
        }
    }

    /// gc of generations, store entries and images, and backup retention.
    fn collect_garbage(&mut self, runtime: &Runtime) -> Result<crate::gc::GcReport> {
        self.progress.step("gc");
        let (layout, keep, name) = (self.layout, self.opts.keep, self.name);
        let report = self.timer.time("gc", || {
            crate::gc::gc(layout, runtime, keep, &[name.to_string()])
        })?;
        let kept: std::collections::BTreeSet<u32> = Profile::open(self.layout, self.name)?
            .map(|p| p.state.generations.iter().map(|g| g.number).collect())
            .unwrap_or_default();
        let pruned = backup::prune(self.layout, self.name, self.opts.host.backups.keep, &kept)?;
        if !pruned.is_empty() {
            self.progress
                .info(&format!("removed old backups: {}", pruned.join(", ")));
        }
        Ok(report)
    }
}

/// A generation that did not pass, and why.
struct Failed {
    number: u32,
    previous: Option<u32>,
    report: Report,
    what: &'static str,
    migrated: bool,
}

/// Backs up the data of the generation serving now, before migrations run (or before any
/// apply: `how` is the record's reason and whether to verify it). `None` when there is
/// nothing to back up (first install) or no backup hook is declared (said on the way).
#[allow(clippy::too_many_arguments)]
fn pre_migration_backup(
    layout: &Layout,
    runtime: &Runtime,
    profile: &Profile,
    previous: Option<u32>,
    entry: &StoreEntry,
    ledger: &Ledger,
    (reason, verify): (&str, bool),
    progress: &dyn Progress,
) -> Result<Option<backup::Record>> {
    let Some(prev) = previous.and_then(|n| profile.generation(n)) else {
        progress.info("first install: no data to back up");
        return Ok(None);
    };
    let prev_entry = store::open(layout, &prev.store)?;
    let Some(hooks) = prev_entry
        .manifest
        .backup
        .clone()
        .or_else(|| entry.manifest.backup.clone())
    else {
        progress.info(&format!(
            "warning: no backup hook declared; no backup is taken ({reason}){}",
            if reason == "pre-migration" {
                " and migrations run without a backup to restore"
            } else {
                ""
            }
        ));
        return Ok(None);
    };
    let env_file = env_file_for(&profile.state.name, None, profile.state.env_file.as_deref());
    let env = entry_env(&prev_entry, &env_file)?;
    let stack = Stack {
        project: &profile.state.project,
        dir: &prev_entry.path,
        manifest: &prev_entry.manifest,
        env: &env,
        overrides: &[],
    };
    let rec = backup::take(
        layout,
        runtime,
        &stack,
        &hooks,
        prev.number,
        ledger.ids(),
        reason,
    )?;
    progress.info(&format!(
        "backup {} ({} bytes, sha256 {})",
        rec.id, rec.size, rec.sha256
    ));
    if verify {
        progress.info(&backup::verify(layout, runtime, &stack, &hooks, &rec)?);
    }
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
