//! One function per subcommand: each does its work through the library and returns a typed
//! result ([`crate::output`]); none prints its result itself.

use crate::cli::{ApplyArgs, KeyArgs};
use crate::output::{
    Applied, AuditChecked, BackedUp, Backups, Collected, Failure, History, MediaLog,
    PolicySuggested, Preflighted, RecoveredFirst, Restored, RolledBack, Status, StoreVerified,
    Unlocked, Verified,
};
use smoker::apply::{self, Progress};
use smoker::error::Kind;
use smoker::hostconfig::HostConfig;
use smoker::layout::Layout;
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

/// Progress on a terminal (spinner) or as plain lines on stderr.
pub struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Reporter {
    /// A reporter; `quiet` says nothing at all.
    pub fn new(quiet: bool) -> Reporter {
        use std::io::IsTerminal as _;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Reporter { bar, quiet }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn step(&self, name: &str) {
        match &self.bar {
            Some(b) => b.set_message(name.to_string()),
            None if !self.quiet => eprintln!("==> {name}"),
            None => {}
        }
    }
    fn info(&self, message: &str) {
        match &self.bar {
            Some(b) => b.println(message),
            None if !self.quiet => eprintln!("    {message}"),
            None => {}
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
    let keys = keys.load()?;
    let verdict = smoker_format::bundle::read::verify_file(&bundle, &keys)
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
    if a.bundle.is_none() && !a.usb {
        return Err(Failure::new(
            Kind::Usage,
            "no bundle given: pass the bundle file (smoker-install apply BUNDLE), or --usb to find one on removable media",
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
