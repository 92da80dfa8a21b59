//! The command line: subcommands, options, and the help text with the exit status table.

use clap::{CommandFactory as _, Parser, Subcommand};
use smoker::layout::{DEFAULT_ROOT, ROOT_ENV};
use std::path::PathBuf;

/// Command line of `smoker-install`.
#[derive(Parser)]
#[command(
    name = "smoker-install",
    version,
    about = "Verify and apply smoker-release bundles"
)]
pub struct Cli {
    /// Host root holding the store, profiles, locks and audit log.
    #[arg(long, global = true, env = ROOT_ENV, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// The host's config: environment, backup retention, webhooks.
    #[arg(long, global = true, env = smoker::hostconfig::HOST_CONFIG_ENV, default_value = smoker::hostconfig::DEFAULT_HOST_CONFIG)]
    pub host_config: PathBuf,
    /// Print one JSON document on stdout: {"ok", "command", "kind", "exit_code", "message",
    /// "data"}, for failures too.
    #[arg(long, global = true)]
    pub json: bool,
    /// The subcommand.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Where trusted public keys come from.
#[derive(clap::Args, Clone)]
pub struct KeyArgs {
    /// A trusted public key file.
    #[arg(long, conflicts_with = "keys")]
    pub key: Option<PathBuf>,
    /// A directory of trusted public keys (`*.pub`).
    #[arg(long, env = "SMOKER_KEYS")]
    pub keys: Option<PathBuf>,
}

/// What `apply` is asked to do.
#[derive(clap::Args)]
pub struct ApplyArgs {
    /// Trusted keys.
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Host env file with the stack's secrets (default /etc/smoker/<profile>.env).
    #[arg(long)]
    pub env_file: Option<PathBuf>,
    /// Generations to keep.
    #[arg(long, default_value_t = 5)]
    pub keep: usize,
    /// Wait for the profile lock instead of failing.
    #[arg(long)]
    pub wait: bool,
    /// Allow a version older than the newest good generation.
    #[arg(long)]
    pub allow_downgrade: bool,
    /// Allow a bundle built for another environment than this host's.
    #[arg(long)]
    pub allow_env_change: bool,
    /// This host's environment, for a host whose config declares none: the explicit choice
    /// a first install needs (a declared environment is not overridden).
    #[arg(long)]
    pub environment: Option<String>,
    /// Compose project name for a new profile (default smoker-<profile>).
    #[arg(long)]
    pub project: Option<String>,
    /// Find the bundle on removable media instead: the newest valid one for this host's
    /// profile, architecture and environment (needs no network).
    #[arg(long, conflicts_with = "bundle")]
    pub usb: bool,
    /// Where removable media are mounted (repeatable; default /media and /mnt).
    #[arg(long = "media-root", requires = "usb")]
    pub media_roots: Vec<PathBuf>,
    /// Switch to the bundle staged for this profile (`smoker-install stage`) instead of
    /// reading a bundle file.
    #[arg(long, value_name = "PROFILE", conflicts_with_all = ["bundle", "usb"])]
    pub staged: Option<String>,
    /// With --usb: apply the newest bundle even when the operator rolled back from it (or
    /// from a newer one); without it such bundles are held back at every boot.
    #[arg(long, requires = "usb")]
    pub force: bool,
    /// The bundle file (or --usb, or --staged).
    pub bundle: Option<PathBuf>,
}

/// The subcommands.
#[derive(Subcommand)]
pub enum Cmd {
    /// Check a bundle's signature and every file in it; writes nothing.
    ///
    /// With --store: hash every file of every store entry (or of --profile's generations)
    /// against its signed manifest instead, and name each damaged entry.
    Verify {
        /// Trusted keys.
        #[command(flatten)]
        keys: KeyArgs,
        /// Check the store's entries (each damaged one is named) instead of a bundle.
        #[arg(long, conflicts_with = "bundle")]
        store: bool,
        /// With --store: only the entries of this profile's generations.
        #[arg(long, requires = "store")]
        profile: Option<String>,
        /// The bundle file.
        #[arg(required_unless_present = "store")]
        bundle: Option<PathBuf>,
    },
    /// Verify a bundle, install it as a new generation, switch, health-check, and roll back by
    /// itself when it is not healthy.
    Apply(ApplyArgs),
    /// Verify a bundle and commit it to the store without switching to it; a later `apply` of
    /// the same bundle (or `apply --staged PROFILE`) switches without reading it again.
    Stage {
        /// Trusted keys.
        #[command(flatten)]
        keys: KeyArgs,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
        /// Accept a version older than the newest good generation (as `apply`).
        #[arg(long)]
        allow_downgrade: bool,
        /// Accept a bundle of another environment (as `apply`).
        #[arg(long)]
        allow_env_change: bool,
        /// This host's environment when its config declares none (as `apply --environment`).
        #[arg(long)]
        environment: Option<String>,
        /// Maintenance window `HH:MM-HH:MM` (host time) recorded with it, for the pull agent.
        #[arg(long)]
        window: Option<String>,
        /// The bundle file.
        bundle: PathBuf,
    },
    /// List the bundles staged on this host; with --apply-due, apply those whose window is
    /// open now (or that have none). For the staged timer: a scheduled rollout stages, the
    /// host applies inside the window by itself.
    Staged {
        /// Trusted keys (the staged manifests' signatures are checked again).
        #[command(flatten)]
        keys: KeyArgs,
        /// Apply every staged bundle whose window is open now.
        #[arg(long)]
        apply_due: bool,
        /// Generations to keep.
        #[arg(long, default_value_t = 5)]
        keep: usize,
    },
    /// Poll a signed channel once: fetch it (conditional GET), and for each followed profile
    /// download its newest bundle (resumable), verify, and apply it inside the channel's
    /// window (else stage it). For the pull timer and boot.
    Pull {
        /// Trusted keys (the channel's and the bundles').
        #[command(flatten)]
        keys: KeyArgs,
        /// URL of the channel directory (or of its channel.json).
        #[arg(long)]
        channel: String,
        /// Profile to follow (repeatable; default: every profile installed here).
        #[arg(long = "profile")]
        profiles: Vec<String>,
        /// This host's id for phased rollouts (default: the host name).
        #[arg(long)]
        host_id: Option<String>,
        /// Attempts while the server is unreachable.
        #[arg(long, default_value_t = 4)]
        attempts: u32,
        /// First retry delay in milliseconds (doubled each time, plus random jitter).
        #[arg(long, default_value_t = 2000)]
        backoff_ms: u64,
        /// Host env file for a profile installed for the first time (as `apply`).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Compose project name for a profile installed for the first time (as `apply`).
        #[arg(long)]
        project: Option<String>,
        /// Generations to keep.
        #[arg(long, default_value_t = 5)]
        keep: usize,
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
    },
    /// Check everything an apply of this bundle needs, listing every problem; changes nothing.
    Preflight {
        /// Trusted keys.
        #[command(flatten)]
        keys: KeyArgs,
        /// Host env file (default: the profile's, else /etc/smoker/<profile>.env).
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Accept a bundle of another environment.
        #[arg(long)]
        allow_env_change: bool,
        /// Accept a version older than the newest good generation (as `apply --allow-downgrade`).
        #[arg(long)]
        allow_downgrade: bool,
        /// This host's environment when its config declares none (as `apply --environment`).
        #[arg(long)]
        environment: Option<String>,
        /// The bundle file.
        bundle: PathBuf,
    },
    /// The host's policy on what bundles may ask of it.
    Policy {
        /// What to do.
        #[command(subcommand)]
        cmd: PolicyCmd,
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
    },
    /// Restore a backup into the running stack (a safety backup is taken first).
    Restore {
        /// Profile (default: the only profile on this host).
        #[arg(long)]
        profile: Option<String>,
        /// Backup id (see `smoker-install backups`).
        id: String,
    },
    /// Current generation of each profile; changes nothing (an interrupted apply is reported,
    /// not finished: see `recover`).
    Status {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Every kept generation with its status; changes nothing.
    History {
        /// Only this profile.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Finish interrupted applies and rollbacks (run at boot).
    Recover {
        /// Wait for locks instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Remove old generations, unreferenced store entries and unused images (finishes
    /// interrupted applies first).
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
    /// Write standard input to DIR/smoker-install.log on a USB stick, never through a link.
    ///
    /// Used by smoker-usb@.service: whatever is at that name on the stick (a link, a FIFO, an
    /// old log) is removed and the log is created anew.
    UsbLog {
        /// The stick's mount point.
        dir: PathBuf,
    },
    /// Stop a profile's containers; its generation stays current (`start` starts it again).
    ///
    /// The containers are kept, not removed; `status` says the profile is stopped until
    /// `start`, `apply` or `rollback` starts a generation again.
    Stop {
        /// Profile.
        profile: String,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Start a stopped profile's current generation again, through the health gate.
    Start {
        /// Profile.
        profile: String,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// Take a profile's stack down and forget the profile (named volumes and backups kept).
    ///
    /// `compose down` removes its containers and networks; named volumes stay. Store entries
    /// and images go at the next `gc`; backups stay unless --purge-backups; the profile's
    /// anti-rollback floor stays too.
    Remove {
        /// Profile.
        profile: String,
        /// Delete the profile's backups too.
        #[arg(long)]
        purge_backups: bool,
        /// Wait for the profile lock instead of failing.
        #[arg(long)]
        wait: bool,
    },
    /// The audit log.
    Audit {
        /// What to do with it.
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

/// `smoker-install policy …`.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Verify a bundle and print the `[policy.<profile>]` table of the host config that would
    /// allow exactly what it asks of the host, for review; changes nothing.
    Suggest {
        /// Trusted keys.
        #[command(flatten)]
        keys: KeyArgs,
        /// The bundle file.
        bundle: PathBuf,
    },
}

/// `smoker-install audit …`.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check the hash chain: detects edited, reordered or truncated logs.
    Verify,
}

impl Cmd {
    /// The subcommand's name as the `command` field of `--json` output.
    pub fn name(&self) -> &'static str {
        match self {
            Cmd::Verify { .. } => "verify",
            Cmd::Apply(_) => "apply",
            Cmd::Stage { .. } => "stage",
            Cmd::Pull { .. } => "pull",
            Cmd::Staged { .. } => "staged",
            Cmd::Rollback { .. } => "rollback",
            Cmd::Preflight { .. } => "preflight",
            Cmd::Backup { .. } => "backup",
            Cmd::Backups { .. } => "backups",
            Cmd::Restore { .. } => "restore",
            Cmd::Status { .. } => "status",
            Cmd::History { .. } => "history",
            Cmd::Recover { .. } => "recover",
            Cmd::Gc { .. } => "gc",
            Cmd::Unlock { .. } => "unlock",
            Cmd::UsbLog { .. } => "usb-log",
            Cmd::Stop { .. } => "stop",
            Cmd::Start { .. } => "start",
            Cmd::Remove { .. } => "remove",
            Cmd::Audit {
                cmd: AuditCmd::Verify,
            } => "audit verify",
            Cmd::Policy {
                cmd: PolicyCmd::Suggest { .. },
            } => "policy suggest",
        }
    }
}

/// The command with the exit status table at the end of every help text (the top level's and
/// each subcommand's).
pub fn command() -> clap::Command {
    fn with_table(c: clap::Command) -> clap::Command {
        c.after_help(help_epilogue()).mut_subcommands(with_table)
    }
    with_table(Cli::command())
}

/// The text after the options in `--help`: the exit status table and the JSON envelope.
pub fn help_epilogue() -> String {
    format!(
        "{}\nWith --json, stdout carries exactly one JSON document, for failures too:\n  {{\"ok\": bool, \"command\": \"…\", \"kind\": \"<kind>\"|null, \"exit_code\": N, \"message\": \"…\"|null, \"data\": …|null}}",
        smoker::error::exit_status_table()
    )
}
