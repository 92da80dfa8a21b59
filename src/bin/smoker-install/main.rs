//! `smoker-install`: verifies bundles and applies them on a host.

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use smoker::apply::{self, Progress};
use smoker::layout::{DEFAULT_ROOT, Layout, ROOT_ENV};
use smoker::profile::Profile;
use smoker_format::bundle::read::{VerifiedBundle, VerifyError, verify_file};
use smoker_format::signing::TrustedKeys;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Default directory of trusted public keys.
const DEFAULT_KEYS_DIR: &str = "/etc/smoker/keys";

#[derive(Parser)]
#[command(
    name = "smoker-install",
    version,
    about = "Verify and apply smoker-release bundles"
)]
struct Cli {
    /// Host root holding the store, profiles, locks and audit log.
    #[arg(long, global = true, env = ROOT_ENV, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// The host's config: environment, backup retention, webhooks.
    #[arg(long, global = true, env = smoker::hostconfig::HOST_CONFIG_ENV, default_value = smoker::hostconfig::DEFAULT_HOST_CONFIG)]
    host_config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct KeyArgs {
    /// A trusted public key file.
    #[arg(long, conflicts_with = "keys")]
    key: Option<PathBuf>,
    /// A directory of trusted public keys (`*.pub`).
    #[arg(long, env = "SMOKER_KEYS")]
    keys: Option<PathBuf>,
}

impl KeyArgs {
    fn load(&self) -> Result<TrustedKeys> {
        Ok(match (&self.key, &self.keys) {
            (Some(k), _) => TrustedKeys::from_file(k)?,
            (None, Some(d)) => TrustedKeys::from_dir(d)?,
            (None, None) => TrustedKeys::from_dir(Path::new(DEFAULT_KEYS_DIR))
                .context("no --key or --keys given and the default key directory is unusable")?,
        })
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a bundle's signature and every file in it; writes nothing.
    Verify {
        #[command(flatten)]
        keys: KeyArgs,
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Verify a bundle, install it as a new generation, switch, health-check, and roll back by
    /// itself when it is not healthy.
    Apply {
        #[command(flatten)]
        keys: KeyArgs,
        /// Host env file with the stack's secrets (default /etc/smoker/<profile>.env).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Generations to keep.
        #[arg(long, default_value_t = 5)]
        keep: usize,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
        /// Allow a version older than the newest good generation.
        #[arg(long)]
        allow_downgrade: bool,
        /// Allow a bundle built for another environment than this host's.
        #[arg(long)]
        allow_env_change: bool,
        /// Compose project name for a new profile (default smoker-<profile>).
        #[arg(long)]
        project: Option<String>,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
        /// Find the bundle on removable media instead: the newest valid one for this host's
        /// profile, architecture and environment (needs no network).
        #[arg(long, conflicts_with = "bundle")]
        usb: bool,
        /// Where removable media are mounted (repeatable; default /media and /mnt).
        #[arg(long = "media-root", requires = "usb")]
        media_roots: Vec<PathBuf>,
        /// The bundle file (or --usb).
        bundle: Option<PathBuf>,
    },
    /// Switch back to a kept generation (default: the previous good one). Needs no network and
    /// no bundle file.
    Rollback {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
        /// Generation number to return to.
        #[arg(long)]
        to: Option<u32>,
        /// When the target is older than migrations applied here, restore the backup taken
        /// before them (otherwise such a rollback is refused).
        #[arg(long)]
        restore_data: bool,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
        /// Print a JSON summary.
        #[arg(long)]
        json: bool,
    },
    /// Check everything an apply of this bundle needs, listing every problem; changes nothing.
    Preflight {
        #[command(flatten)]
        keys: KeyArgs,
        /// Host env file (default: the profile's, else /etc/smoker/<profile>.env).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Accept a bundle of another environment.
        #[arg(long)]
        allow_env_change: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The bundle file.
        bundle: PathBuf,
    },
    /// Take a backup of a profile's data now (through the recipe's backup hook).
    Backup {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
    },
    /// List a profile's backups.
    Backups {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup into the running stack (a safety backup is taken first).
    Restore {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
        /// Backup id (see `smoker-install backups`).
        id: String,
    },
    /// Current generation of each profile.
    Status {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every kept generation with its status.
    History {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Finish interrupted applies and rollbacks (run at boot).
    Recover {
        /// Wait for locks instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Remove old generations, unreferenced store entries and unused images.
    Gc {
        /// Generations to keep per profile.
        #[arg(long, default_value_t = 5)]
        keep: usize,
    },
    /// End a hung holder of a profile lock.
    Unlock {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
        /// Required: kill the holder if it is alive (its work is finished by the next run).
        #[arg(long)]
        force: bool,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain: detects edited, reordered or truncated logs.
    Verify,
}

/// Progress on a terminal (spinner) or as plain lines.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Reporter {
    fn new(quiet: bool) -> Reporter {
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

fn only_profile(layout: &Layout, given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let names = layout.profile_names();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no profile is installed under {}", layout.root().display()),
        _ => bail!(
            "several profiles are installed ({}); pass --profile",
            names.join(", ")
        ),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    let layout = Layout::new(&cli.root);
    let needs_recovery = matches!(
        cli.cmd,
        Cmd::Status { .. } | Cmd::History { .. } | Cmd::Gc { .. }
    );
    if needs_recovery {
        // Any invocation finishes an interrupted apply first (when nobody else is working).
        for name in layout.profile_names() {
            if let Ok(_lock) = smoker::hostlock::acquire(&layout, &name, false)
                && let Some(msg) =
                    smoker::rollback::recover_profile(&layout, &name, &Reporter::new(true))?
            {
                eprintln!("recovered `{name}`: {msg}");
            }
        }
    }
    match cli.cmd {
        Cmd::Verify { keys, json, bundle } => {
            let keys = keys.load()?;
            let result = verify_file(&bundle, &keys);
            print_verdict(&bundle, &result, json);
            Ok(if result.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Apply {
            keys,
            env_file,
            keep,
            wait,
            allow_downgrade,
            allow_env_change,
            project,
            json,
            usb,
            media_roots,
            bundle,
        } => {
            let opts = apply::Options {
                keys: keys.load()?,
                env_file,
                keep,
                wait,
                allow_downgrade,
                project,
                host: smoker::hostconfig::HostConfig::load(Some(&cli.host_config))?,
                allow_env_change,
            };
            let reporter = Reporter::new(false);
            let result = match (bundle, usb) {
                (Some(bundle), _) => apply::apply(&layout, &bundle, &opts, &reporter),
                (None, true) => apply_usb(&layout, &media_roots, &opts, &reporter),
                (None, false) => bail!(
                    "no bundle given: pass the bundle file (smoker-install apply BUNDLE), or --usb to find one on removable media"
                ),
            };
            drop(reporter);
            match result {
                Ok(o) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&o)?);
                    } else {
                        println!(
                            "{} {} generation {} ({}): {}",
                            o.profile,
                            o.version,
                            o.generation,
                            o.result,
                            o.health
                                .as_ref()
                                .map(|h| h.summary.as_str())
                                .unwrap_or("already current")
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"ok": false, "error": e.to_string()})
                        );
                    }
                    Err(e.into())
                }
            }
        }
        Cmd::Rollback {
            profile,
            to,
            restore_data,
            wait,
            json,
        } => {
            let name = only_profile(&layout, profile)?;
            let o = smoker::rollback::rollback(
                &layout,
                &name,
                smoker::rollback::Request {
                    to,
                    restore_data,
                    wait,
                },
                &Reporter::new(false),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&o)?);
            } else {
                println!(
                    "{}: generation {} is current ({}); switch took {} µs, up + health gate {} ms",
                    o.profile,
                    o.to,
                    o.health.summary,
                    o.durations_us.get("switch").copied().unwrap_or(0),
                    o.durations_us.get("up+health").copied().unwrap_or(0) / 1000
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { profile, json } => {
            let names = match profile {
                Some(p) => vec![p],
                None => layout.profile_names(),
            };
            let mut out = Vec::new();
            for name in names {
                let p = Profile::open(&layout, &name)?
                    .with_context(|| format!("no profile `{name}`"))?;
                let cur = p.current();
                let g = cur.and_then(|n| p.generation(n)).cloned();
                let pending: Vec<u32> = p
                    .state
                    .generations
                    .iter()
                    .filter(|g| g.status == smoker::profile::Status::Pending)
                    .map(|g| g.number)
                    .collect();
                let failed: Vec<u32> = p
                    .state
                    .generations
                    .iter()
                    .filter(|g| g.status == smoker::profile::Status::Failed)
                    .map(|g| g.number)
                    .collect();
                out.push(serde_json::json!({
                    "profile": name,
                    "project": p.state.project,
                    "current": cur,
                    "version": g.as_ref().map(|g| g.version.clone()),
                    "arch": g.as_ref().map(|g| g.arch.clone()),
                    "environment": g.as_ref().map(|g| g.environment.clone()),
                    "bundle_sha256": g.as_ref().map(|g| g.bundle_sha256.clone()),
                    "health": g.as_ref().map(|g| g.status.to_string()),
                    "installed_at": g.as_ref().map(|g| g.installed_at.clone()),
                    "pending": pending,
                    "failed": failed,
                    "locked": smoker::hostlock::is_locked(&layout, &name),
                }));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else if out.is_empty() {
                println!("no profiles under {}", layout.root().display());
            } else {
                for s in out {
                    let f = |k: &str| s[k].as_str().unwrap_or("-").to_string();
                    println!(
                        "{}: generation {} — {} {} env={} health={} installed {} bundle {}{}{}",
                        f("profile"),
                        s["current"],
                        f("version"),
                        f("arch"),
                        f("environment"),
                        f("health"),
                        f("installed_at"),
                        f("bundle_sha256"),
                        if s["pending"].as_array().is_some_and(|a| !a.is_empty()) {
                            format!(" pending={}", s["pending"])
                        } else {
                            String::new()
                        },
                        if s["failed"].as_array().is_some_and(|a| !a.is_empty()) {
                            format!(" failed={}", s["failed"])
                        } else {
                            String::new()
                        },
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::History { profile, json } => {
            let names = match profile {
                Some(p) => vec![p],
                None => layout.profile_names(),
            };
            let mut all = Vec::new();
            for name in names {
                let p = Profile::open(&layout, &name)?
                    .with_context(|| format!("no profile `{name}`"))?;
                let cur = p.current();
                if !json {
                    println!("{name} (project {}):", p.state.project);
                    for g in p.state.generations.iter().rev() {
                        println!(
                            "  {} {:>4}  {:<10} {:<6} {:<8} {:<8} {}{}",
                            if Some(g.number) == cur { "*" } else { " " },
                            g.number,
                            g.version,
                            g.arch,
                            g.environment,
                            g.status,
                            g.installed_at,
                            g.reason
                                .as_ref()
                                .map(|r| format!("  ({r})"))
                                .unwrap_or_default()
                        );
                    }
                }
                all.push(serde_json::json!({"profile": name, "current": cur, "generations": p.state.generations}));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Recover { wait } => {
            for (name, msg) in smoker::rollback::recover_all(&layout, wait, &Reporter::new(false))?
            {
                println!("{name}: {msg}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gc { keep } => {
            let runtime = smoker::runtime::Runtime::detect()?;
            let mut locks = Vec::new();
            for name in layout.profile_names() {
                locks.push(smoker::hostlock::acquire(&layout, &name, false)?);
            }
            let r = smoker::gc::gc(&layout, &runtime, keep, &layout.profile_names())?;
            drop(locks);
            smoker::audit::append(&layout, "gc", serde_json::to_value(&r)?)?;
            println!(
                "removed {} generations, {} store entries, {} images",
                r.generations.len(),
                r.store_entries.len(),
                r.images.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Unlock { profile, force } => {
            let name = only_profile(&layout, profile)?;
            if !force {
                match smoker::hostlock::holder(&layout, &name)
                    .filter(|_| smoker::hostlock::is_locked(&layout, &name))
                {
                    Some(h) => bail!(
                        "profile `{name}` is locked by {}; pass --force to end it",
                        h.describe()
                    ),
                    None => {
                        println!("profile `{name}` is not locked");
                        return Ok(ExitCode::SUCCESS);
                    }
                }
            }
            println!("{}", smoker::hostlock::force_unlock(&layout, &name)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Preflight {
            keys,
            env_file,
            allow_env_change,
            json,
            bundle,
        } => {
            let host = smoker::hostconfig::HostConfig::load(Some(&cli.host_config))?;
            let report = smoker::ops::preflight_bundle(
                &layout,
                &bundle,
                &keys.load()?,
                env_file.as_deref(),
                &host,
                allow_env_change,
            )?;
            let problems = report.problems();
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for c in &report.checks {
                    println!(
                        "{} {:<16} {}",
                        if c.ok { "ok  " } else { "FAIL" },
                        c.name,
                        c.detail
                    );
                }
                if problems.is_empty() {
                    println!("preflight passed: {} is ready to apply", bundle.display());
                } else {
                    eprintln!("preflight failed: {} problem(s)", problems.len());
                }
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Backup { profile } => {
            let name = only_profile(&layout, profile)?;
            let host = smoker::hostconfig::HostConfig::load(Some(&cli.host_config))?;
            let rec = smoker::ops::backup_now(&layout, &name, host.backups.keep)?;
            println!(
                "backup {} of `{name}`: {} bytes, sha256 {}",
                rec.id, rec.size, rec.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Backups { profile, json } => {
            let name = only_profile(&layout, profile)?;
            let index = smoker::backup::list(&layout, &name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&index)?);
            } else if index.backups.is_empty() {
                println!("no backups of `{name}`");
            } else {
                for b in index.backups.iter().rev() {
                    println!(
                        "{}  gen {:<4} {:>12} bytes  {}  {}  migrations [{}]",
                        b.id,
                        b.generation,
                        b.size,
                        b.reason,
                        b.created,
                        b.ledger.join(", ")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Restore { profile, id } => {
            let name = only_profile(&layout, profile)?;
            let msg = smoker::ops::restore_backup(&layout, &name, &id)?;
            println!("{msg}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify,
        } => match smoker::audit::verify(&layout) {
            Ok(n) => {
                println!("audit log intact: {n} entries");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("audit log NOT intact: {e}");
                Ok(ExitCode::FAILURE)
            }
        },
    }
}

/// `apply --usb`: the newest usable bundle on removable media (see `smoker::usb`).
fn apply_usb(
    layout: &Layout,
    media_roots: &[PathBuf],
    opts: &apply::Options,
    reporter: &Reporter,
) -> smoker::error::Result<apply::Outcome> {
    let roots = smoker::usb::media_roots(media_roots);
    let (outcome, chosen) = smoker::usb::apply_from_media(layout, &roots, opts, reporter)?;
    reporter.info(&format!("applied {}", chosen.display()));
    Ok(outcome)
}

fn print_verdict(path: &Path, result: &Result<VerifiedBundle, VerifyError>, json: bool) {
    match (result, json) {
        (Ok(v), false) => println!(
            "OK {}: {} {} {} env={} signed by {} ({} files, {} bytes, sha256 {})",
            path.display(),
            v.manifest.name,
            v.manifest.version,
            v.manifest.arch,
            v.manifest.environment,
            v.key_id,
            v.manifest.files.len(),
            v.compressed_bytes,
            v.bundle_sha256
        ),
        (Ok(v), true) => println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "bundle": path.display().to_string(),
                "name": v.manifest.name,
                "version": v.manifest.version,
                "arch": v.manifest.arch,
                "environment": v.manifest.environment,
                "key_id": v.key_id,
                "files": v.manifest.files.len(),
                "bundle_sha256": v.bundle_sha256,
                "manifest_sha256": v.manifest_sha256,
            })
        ),
        (Err(e), false) => eprintln!("REJECTED {}: {e}", path.display()),
        (Err(e), true) => println!(
            "{}",
            serde_json::json!({
                "ok": false,
                "bundle": path.display().to_string(),
                "error": e.kind(),
                "message": e.to_string(),
            })
        ),
    }
}
