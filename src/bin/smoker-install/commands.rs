//! One function per subcommand: each does its work through the library and returns a typed
//! result ([`crate::output`]); none prints its result itself.

use crate::cli::{ApplyArgs, KeyArgs};
use crate::output::{
    Applied, AuditChecked, BackedUp, Backups, Collected, Failure, History, LifecycleDone, MediaLog,
    PolicySuggested, Preflighted, Pulled, RecoveredFirst, Restored, RolledBack, Staged, StagedList,
    Status, StoreVerified, Unlocked, Verified,
};
use smoker::apply::{self, Progress};
use smoker::error::Kind;
use smoker::hostconfig::HostConfig;
use smoker::layout::Layout;
use smoker::progress::{LineMeter, Meter, MeteredReader, NoMeter};
use smoker_format::signing::TrustedKeys;
use std::path::{Path, PathBuf};

/// Default directory of trusted public keys.
const DEFAULT_KEYS_DIR: &str = "/etc/smoker/keys";

/// What every subcommand may need.
pub struct Ctx {
    /// The host layout.
    pub layout: Layout,
    /// The host config file.
    pub host_config: PathBuf,
}

impl Ctx {
    fn host(&self) -> Result<HostConfig, Failure> {
        Ok(HostConfig::load(Some(&self.host_config))?)
    }

    /// The host config with the operator's `--environment` choice, if any.
    fn host_choosing(&self, environment: Option<&str>) -> Result<HostConfig, Failure> {
        Ok(self.host()?.choose_environment(environment)?)
    }
}

impl KeyArgs {
    /// The trusted keys. An unusable key file or directory is host configuration: `state`.
    fn load(&self) -> Result<TrustedKeys, Failure> {
        let keys = match (&self.key, &self.keys) {
            (Some(k), _) => TrustedKeys::from_file(k),
            (None, Some(d)) => TrustedKeys::from_dir(d),
            (None, None) => TrustedKeys::from_dir(Path::new(DEFAULT_KEYS_DIR)),
        };
        keys.map_err(|e| {
            let hint = if self.key.is_none() && self.keys.is_none() {
                "no --key or --keys given and the default key directory is unusable: "
            } else {
                ""
            };
            Failure::new(Kind::State, format!("{hint}{e}"))
        })
    }
}

/// Progress on a terminal (spinner, and a byte bar for long transfers) or as plain lines on
/// stderr.
pub struct Reporter {
    bar: Option<(indicatif::MultiProgress, indicatif::ProgressBar)>,
    quiet: bool,
}

impl Reporter {
    /// A reporter; `quiet` says nothing at all.
    pub fn new(quiet: bool) -> Reporter {
        use std::io::IsTerminal as _;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let multi = indicatif::MultiProgress::new();
            let b = multi.add(indicatif::ProgressBar::new_spinner());
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            (multi, b)
        });
        Reporter { bar, quiet }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some((_, b)) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// A byte bar on a terminal: bytes, rate and time left.
struct BarMeter(indicatif::ProgressBar);

impl Meter for BarMeter {
    fn add(&self, n: u64) {
        self.0.inc(n);
    }
    fn done(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Reporter {
    fn step(&self, name: &str) {
        match &self.bar {
            Some((_, b)) => b.set_message(name.to_string()),
            None if !self.quiet => eprintln!("==> {name}"),
            None => {}
        }
    }
    fn info(&self, message: &str) {
        match &self.bar {
            Some((multi, _)) => {
                let _ = multi.println(message);
            }
            None if !self.quiet => eprintln!("    {message}"),
            None => {}
        }
    }
    fn bytes(&self, what: &str, total: Option<u64>) -> Box<dyn Meter> {
        match &self.bar {
            Some((multi, _)) => {
                let bar = match total {
                    Some(t) => indicatif::ProgressBar::new(t),
                    None => indicatif::ProgressBar::no_length(),
                };
                let template = if total.is_some() {
                    "    {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left"
                } else {
                    "    {msg} {binary_bytes} {binary_bytes_per_sec}"
                };
                if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_message(what.to_string());
                Box::new(BarMeter(multi.add(bar)))
            }
            None if !self.quiet => Box::new(LineMeter::new(what, total)),
            None => Box::new(NoMeter),
        }
    }
}

/// The profile a command works on: the one given, else the only one on the host.
fn only_profile(layout: &Layout, given: Option<String>) -> Result<String, Failure> {
    if let Some(p) = given {
        return Ok(p);
    }
    let names = layout.profile_names();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::new(
            Kind::State,
            format!("no profile is installed under {}", layout.root().display()),
        )),
        _ => Err(Failure::new(
            Kind::Usage,
            format!(
                "several profiles are installed ({}); pass --profile",
                names.join(", ")
            ),
        )),
    }
}

/// `verify`.
pub fn verify(keys: &KeyArgs, bundle: PathBuf) -> Result<Verified, Failure> {
    use smoker_format::bundle::read::{Discard, Limits, Trust, read_bundle};
    let keys = keys.load()?;
    let verdict = std::fs::File::open(&bundle)
        .map_err(smoker_format::bundle::read::VerifyError::Io)
        .and_then(|f| {
            let total = f.metadata().ok().map(|m| m.len());
            let reporter = Reporter::new(false);
            let input = MeteredReader::new(
                std::io::BufReader::with_capacity(1024 * 1024, f),
                reporter.bytes("verifying", total),
            );
            read_bundle(input, Trust::Keys(&keys), &mut Discard, Limits::default())
        })
        .map_err(smoker::error::Error::from);
    Ok(Verified { bundle, verdict })
}

/// `verify --store`: every store entry (or `profile`'s) hashed against its manifest; the
/// signature is checked too when keys are usable (given, or the default directory).
pub fn verify_store(
    ctx: &Ctx,
    keys: &KeyArgs,
    profile: Option<&str>,
) -> Result<StoreVerified, Failure> {
    let explicit = keys.key.is_some() || keys.keys.is_some();
    let keys = match keys.load() {
        Ok(k) => Some(k),
        Err(f) if explicit => return Err(f),
        Err(_) => None,
    };
    let entries = smoker::inspect::verify_store(&ctx.layout, profile, keys.as_ref())?;
    Ok(StoreVerified {
        entries,
        signatures_checked: keys.is_some(),
    })
}

/// `usb-log DIR`: standard input to the stick's run log, never through a link.
pub fn usb_log(dir: &Path) -> Result<MediaLog, Failure> {
    let path = smoker::usb::write_media_log(dir, &mut std::io::stdin().lock())?;
    Ok(MediaLog { path })
}

/// `policy suggest`: the policy table that allows exactly what a verified bundle asks of the
/// host. Changes nothing.
pub fn policy_suggest(keys: &KeyArgs, bundle: PathBuf) -> Result<PolicySuggested, Failure> {
    let keys = keys.load()?;
    let verified = smoker_format::bundle::read::verify_file(&bundle, &keys)
        .map_err(smoker::error::Error::from)?;
    let m = &verified.manifest;
    Ok(PolicySuggested {
        bundle,
        profile: m.name.clone(),
        policy: smoker::access::suggest(m),
        host_access: m.host_access.clone(),
    })
}

/// `apply`.
pub fn apply(ctx: &Ctx, a: ApplyArgs) -> Result<Applied, Failure> {
    if a.bundle.is_none() && !a.usb && a.staged.is_none() {
        return Err(Failure::new(
            Kind::Usage,
            "no bundle given: pass the bundle file (smoker-install apply BUNDLE), --usb to find one on removable media, or --staged PROFILE",
        ));
    }
    let opts = apply::Options {
        keys: a.keys.load()?,
        env_file: a.env_file,
        keep: a.keep,
        wait: a.wait,
        allow_downgrade: a.allow_downgrade,
        project: a.project,
        host: ctx.host_choosing(a.environment.as_deref())?,
        allow_env_change: a.allow_env_change,
    };
    let reporter = Reporter::new(false);
    let outcome = match (a.bundle, a.usb) {
        _ if a.staged.is_some() => {
            let profile = a.staged.unwrap_or_default();
            apply::apply_staged(&ctx.layout, &profile, &opts, &reporter)?
        }
        (Some(bundle), _) => apply::apply(&ctx.layout, &bundle, &opts, &reporter)?,
        (None, _) => {
            let roots = smoker::usb::media_roots(&a.media_roots);
            let (outcome, chosen) =
                smoker::usb::apply_from_media(&ctx.layout, &roots, &opts, a.force, &reporter)?;
            if outcome.result != "unchanged" {
                reporter.info(&format!("applied {}", chosen.display()));
            }
            outcome
        }
    };
    Ok(Applied(outcome))
}

/// What `stage` is asked to do.
pub struct StageArgs {
    /// Trusted keys.
    pub keys: KeyArgs,
    /// Wait for the lock.
    pub wait: bool,
    /// `--allow-downgrade`.
    pub allow_downgrade: bool,
    /// `--allow-env-change`.
    pub allow_env_change: bool,
    /// `--environment`.
    pub environment: Option<String>,
    /// `--window`.
    pub window: Option<String>,
}

/// `stage`: verify + store, no switch.
pub fn stage(ctx: &Ctx, a: StageArgs, bundle: PathBuf) -> Result<Staged, Failure> {
    if let Some(w) = &a.window {
        smoker_format::channel::Window::parse(w).map_err(|e| Failure::new(Kind::Usage, e))?;
    }
    let opts = apply::Options {
        keys: a.keys.load()?,
        env_file: None,
        keep: 5,
        wait: a.wait,
        allow_downgrade: a.allow_downgrade,
        project: None,
        host: ctx.host_choosing(a.environment.as_deref())?,
        allow_env_change: a.allow_env_change,
    };
    let outcome =
        smoker::stage::stage(&ctx.layout, &bundle, &opts, a.window, &Reporter::new(false))?;
    Ok(Staged(outcome))
}

/// `staged [--apply-due]`.
pub fn staged(
    ctx: &Ctx,
    keys: &KeyArgs,
    apply_due: bool,
    keep: usize,
) -> Result<StagedList, Failure> {
    let opts = apply::Options {
        keys: keys.load()?,
        env_file: None,
        keep,
        wait: true,
        allow_downgrade: false,
        project: None,
        host: ctx.host()?,
        allow_env_change: false,
    };
    let due = smoker::stage::apply_due(&ctx.layout, &opts, apply_due, &Reporter::new(false))?;
    Ok(StagedList(due))
}

/// What `pull` is asked to do.
pub struct PullArgs {
    /// Trusted keys.
    pub keys: KeyArgs,
    /// Channel URL.
    pub channel: String,
    /// Profiles to follow.
    pub profiles: Vec<String>,
    /// Host id.
    pub host_id: Option<String>,
    /// Attempts.
    pub attempts: u32,
    /// First backoff.
    pub backoff_ms: u64,
    /// Env file.
    pub env_file: Option<PathBuf>,
    /// Project.
    pub project: Option<String>,
    /// Generations kept.
    pub keep: usize,
}

/// `pull`: one poll of a channel.
pub fn pull(ctx: &Ctx, a: PullArgs) -> Result<Pulled, Failure> {
    let opts = apply::Options {
        keys: a.keys.load()?,
        env_file: a.env_file,
        keep: a.keep,
        wait: true,
        allow_downgrade: false,
        project: a.project,
        host: ctx.host()?,
        allow_env_change: false,
    };
    let request = smoker::pull::Request {
        url: &a.channel,
        profiles: a.profiles,
        host_id: a.host_id.unwrap_or_else(smoker::sys::hostname),
        attempts: a.attempts,
        backoff: std::time::Duration::from_millis(a.backoff_ms),
        opts: &opts,
    };
    let outcome = smoker::pull::pull(&ctx.layout, &request, &Reporter::new(false))?;
    Ok(Pulled(outcome))
}

/// `rollback`.
pub fn rollback(
    ctx: &Ctx,
    profile: Option<String>,
    request: smoker::rollback::Request,
) -> Result<RolledBack, Failure> {
    let name = only_profile(&ctx.layout, profile)?;
    let o = smoker::rollback::rollback(&ctx.layout, &name, request, &Reporter::new(false))?;
    Ok(RolledBack(o))
}

/// `preflight`.
pub fn preflight(
    ctx: &Ctx,
    keys: &KeyArgs,
    env_file: Option<&Path>,
    (allow_env_change, allow_downgrade): (bool, bool),
    environment: Option<&str>,
    bundle: PathBuf,
) -> Result<Preflighted, Failure> {
    let report = smoker::ops::preflight_bundle(
        &ctx.layout,
        &smoker::ops::PreflightRequest {
            bundle: &bundle,
            keys: &keys.load()?,
            env_file,
            host: &ctx.host_choosing(environment)?,
            allow_env_change,
            allow_downgrade,
        },
    )?;
    Ok(Preflighted { bundle, report })
}

/// `backup`.
pub fn backup(ctx: &Ctx, profile: Option<String>) -> Result<BackedUp, Failure> {
    let name = only_profile(&ctx.layout, profile)?;
    let keep = ctx.host()?.backups.keep;
    let backup = smoker::ops::backup_now(&ctx.layout, &name, keep)?;
    Ok(BackedUp {
        profile: name,
        backup,
    })
}

/// `backups`.
pub fn backups(ctx: &Ctx, profile: Option<String>) -> Result<Backups, Failure> {
    let name = only_profile(&ctx.layout, profile)?;
    let index = smoker::backup::list(&ctx.layout, &name)?;
    Ok(Backups {
        profile: name,
        backups: index.backups,
    })
}

/// `restore`.
pub fn restore(ctx: &Ctx, profile: Option<String>, id: String) -> Result<Restored, Failure> {
    let name = only_profile(&ctx.layout, profile)?;
    let message = smoker::ops::restore_backup(&ctx.layout, &name, &id)?;
    Ok(Restored {
        profile: name,
        backup: id,
        message,
    })
}

/// `status`: read-only.
pub fn status(ctx: &Ctx, profile: Option<&str>) -> Result<Status, Failure> {
    let profiles = smoker::inspect::profile_names(&ctx.layout, profile)
        .iter()
        .map(|name| smoker::inspect::status(&ctx.layout, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Status {
        root: ctx.layout.root().to_path_buf(),
        profiles,
    })
}

/// `history`: read-only.
pub fn history(ctx: &Ctx, profile: Option<&str>) -> Result<History, Failure> {
    let profiles = smoker::inspect::profile_names(&ctx.layout, profile)
        .iter()
        .map(|name| smoker::inspect::history(&ctx.layout, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(History {
        root: ctx.layout.root().to_path_buf(),
        profiles,
    })
}

/// `recover`.
pub fn recover(ctx: &Ctx, wait: bool) -> Result<crate::output::Recovered, Failure> {
    Ok(crate::output::Recovered(smoker::recovery::recover_every(
        &ctx.layout,
        wait,
        &Reporter::new(false),
    )))
}

/// `gc`: finishes interrupted runs of profiles nobody else works on, then collects.
pub fn gc(ctx: &Ctx, keep: usize) -> Result<Collected, Failure> {
    let layout = &ctx.layout;
    let mut recovered = Vec::new();
    for name in layout.profile_names() {
        if let Ok(_lock) = smoker::hostlock::acquire(layout, &name, false)
            && let Some(message) =
                smoker::rollback::recover_profile(layout, &name, &Reporter::new(true))?
        {
            recovered.push(RecoveredFirst {
                profile: name,
                message,
            });
        }
    }
    let runtime = smoker::runtime::Runtime::detect()?;
    let mut locks = Vec::new();
    for name in layout.profile_names() {
        locks.push(smoker::hostlock::acquire(layout, &name, false)?);
    }
    let removed = smoker::gc::gc(layout, &runtime, keep, &layout.profile_names())?;
    drop(locks);
    smoker::audit::append(
        layout,
        "gc",
        serde_json::to_value(&removed).unwrap_or_default(),
    )?;
    Ok(Collected { recovered, removed })
}

/// `unlock`: without `--force` only says who holds the lock.
pub fn unlock(ctx: &Ctx, profile: Option<String>, force: bool) -> Result<Unlocked, Failure> {
    let name = only_profile(&ctx.layout, profile)?;
    let lock = smoker::inspect::lock_state(&ctx.layout, &name);
    if !lock.locked {
        return Ok(Unlocked {
            message: format!("profile `{name}` is not locked"),
            profile: name,
            was_locked: false,
            holder: None,
        });
    }
    if !force {
        return Err(Failure::new(
            Kind::Locked,
            format!(
                "profile `{name}` is locked by {}; pass --force to end it",
                lock.holder
                    .as_ref()
                    .map(smoker::hostlock::Holder::describe)
                    .unwrap_or_else(|| "a process that recorded no holder".into())
            ),
        ));
    }
    let message = smoker::hostlock::force_unlock(&ctx.layout, &name)?;
    Ok(Unlocked {
        profile: name,
        was_locked: true,
        holder: lock.holder,
        message,
    })
}

/// Which lifecycle command.
pub enum Lifecycle {
    /// `stop`.
    Stop,
    /// `start`.
    Start,
    /// `remove`.
    Remove {
        /// `--purge-backups`.
        purge_backups: bool,
    },
}

/// `stop`, `start`, `remove`.
pub fn lifecycle(
    ctx: &Ctx,
    profile: &str,
    wait: bool,
    what: Lifecycle,
) -> Result<LifecycleDone, Failure> {
    use smoker::lifecycle;
    let host = ctx.host()?;
    let reporter = Reporter::new(false);
    let o = match what {
        Lifecycle::Stop => lifecycle::stop(&ctx.layout, &host, profile, wait, &reporter)?,
        Lifecycle::Start => lifecycle::start(&ctx.layout, &host, profile, wait, &reporter)?,
        Lifecycle::Remove { purge_backups } => lifecycle::remove(
            &ctx.layout,
            &host,
            profile,
            lifecycle::RemoveOptions { purge_backups },
            wait,
            &reporter,
        )?,
    };
    Ok(LifecycleDone(o))
}

/// `audit verify`.
pub fn audit_verify(ctx: &Ctx) -> Result<AuditChecked, Failure> {
    Ok(match smoker::audit::verify(&ctx.layout) {
        Ok(n) => AuditChecked {
            intact: true,
            entries: Some(n),
            problem: None,
        },
        Err(problem) => AuditChecked {
            intact: false,
            entries: None,
            problem: Some(problem),
        },
    })
}
