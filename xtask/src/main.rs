//! `cargo xtask`: the project's build and release tasks.
//!
//! - `lock`: resolve every image tag of a recipe to per-architecture digests.
//! - `release`: recipes + lock → signed, reproducible bundles (`--offline`: with the images;
//!   `--lock`: lock missing tags first); each bundle's compose files are checked by the
//!   compose front end's own `config` before it is written.
//! - `keygen`: a minisign key pair for signing releases.
//! - `verify-rebuild`: rebuild a bundle from its recorded source and compare.
//! - `rollout`: push bundles to a fleet over SSH (`crates/fleet`).
//! - `publish`: the signed channel (`channel.json` + `.minisig`) over a release directory.
//! - `armv7`: cross-build the installer for the Pi and test it under qemu (see `armv7.rs`).

mod armv7;
mod process;
mod smoke;

use smoker_build::{offline, registry, resolve as lock};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use smoker_build::lock::Lock;
use smoker_build::recipe::Recipe;
use smoker_build::release::{self, SourceInfo};
use smoker_format::manifest::Arch;
use smoker_format::signing::{self, SecretKey};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "smoker-release build and release tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cross-build smoker-install for armv7 (static, Debian's toolchain) and run the library
    /// tests and a CLI smoke test against the host's Docker under qemu-arm-static.
    Armv7(armv7::Armv7Args),
    /// Resolve every image tag of a recipe to per-architecture digests (writes
    /// recipes/<name>.lock and prints what changed).
    Lock(LockArgs),
    /// Build signed bundles from recipes and their locks.
    Release(ReleaseArgs),
    /// Generate a minisign key pair for signing releases.
    Keygen {
        /// Where to write the secret key (keep it out of the repository).
        #[arg(long)]
        secret_key: PathBuf,
        /// Where to write the public key (e.g. keys/release.pub).
        #[arg(long)]
        public_key: PathBuf,
        /// Store the secret key without a password.
        #[arg(long)]
        no_password: bool,
    },
    /// Write the signed channel (channel.json + channel.json.minisig) listing the newest bundle
    /// per profile, architecture and environment, for `smoker-install pull`.
    Publish(PublishArgs),
    /// Roll bundles out to the hosts of an inventory over SSH (rolling, immediate or
    /// scheduled), and print a table (and a JSON report).
    Rollout(RolloutArgs),
    /// Sign release files (the Pi installer, packages, SHA256SUMS): writes `<file>.minisig`
    /// next to each, a minisign signature `minisign -Vm FILE -p KEY.pub` checks.
    Sign {
        /// Secret key file (minisign format); its password from SMOKER_KEY_PASSWORD.
        #[arg(long, env = "SMOKER_SECRET_KEY")]
        secret_key: PathBuf,
        /// The files to sign.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Rebuild a bundle from the source it records and compare everything but signatures.
    VerifyRebuild {
        /// The bundle to check.
        bundle: PathBuf,
        /// Git repository holding the recorded commit (default: this workspace).
        #[arg(long)]
        repo: Option<PathBuf>,
        /// Blob cache for rebuilding offline bundles (default: target/smoker-blobs).
        #[arg(long, env = "SMOKER_BLOB_CACHE")]
        blob_cache: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct PublishArgs {
    /// Channel name (e.g. stable).
    #[arg(long)]
    channel: String,
    /// The channel directory to write (served as static files); bundles are copied into
    /// `<out>/<environment>/`.
    #[arg(long)]
    out: PathBuf,
    /// Where the bundles are.
    #[arg(long, default_value = "bundles")]
    from: PathBuf,
    /// Secret key that signs the channel (minisign format).
    #[arg(long, env = "SMOKER_SECRET_KEY")]
    secret_key: PathBuf,
    /// Public key, or directory of public keys, the bundles must verify with (default: the
    /// public half of --secret-key).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Seconds until hosts refuse the channel as stale (default 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    expires_in: u64,
    /// Explicit sequence number (must exceed the current channel's).
    #[arg(long)]
    sequence: Option<u64>,
    /// Hosts apply nothing before this time (Unix seconds).
    #[arg(long)]
    not_before: Option<u64>,
    /// Percentage of hosts (by hash of their id) that take this publication.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=100))]
    cohort: Option<u8>,
    /// Maintenance window HH:MM-HH:MM (host time) in which hosts apply.
    #[arg(long)]
    window: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StrategyName {
    Rolling,
    Immediate,
    Scheduled,
}

#[derive(clap::Args)]
struct RolloutArgs {
    /// The inventory.
    #[arg(long, default_value = "fleet.toml")]
    inventory: PathBuf,
    /// Where the bundles are (the newest per profile, architecture and environment is used).
    #[arg(long, default_value = "bundles")]
    from: PathBuf,
    /// Public key file or directory the bundles must verify with (default: keys/).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// Strategy.
    #[arg(long, value_enum, default_value = "rolling")]
    strategy: StrategyName,
    /// rolling: hosts per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// rolling: seconds to wait between batches.
    #[arg(long, default_value_t = 0)]
    pause: u64,
    /// rolling: failures tolerated before the rollout stops.
    #[arg(long, default_value_t = 0)]
    max_failures: usize,
    /// immediate, scheduled: hosts at a time.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// scheduled: the maintenance window HH:MM-HH:MM (host time).
    #[arg(long, required_if_eq("strategy", "scheduled"))]
    window: Option<String>,
    /// An unreachable host fails the rollout (default: reported offline).
    #[arg(long)]
    require_all: bool,
    /// Only hosts of this group (repeatable).
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Only this host (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// SSH connect timeout, seconds.
    #[arg(long, default_value_t = 5)]
    connect_timeout: u32,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Print the JSON report on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct LockArgs {
    /// Recipe to lock (repeatable; default: every recipe).
    #[arg(long = "recipe")]
    recipes: Vec<String>,
    /// Architecture (repeatable; default: those of the previous lock, else amd64 and armv7).
    #[arg(long = "arch")]
    arches: Vec<Arch>,
    /// Project directory holding `recipes/` (default: the workspace root).
    #[arg(long)]
    project_dir: Option<PathBuf>,
    /// Release version for recipes with a `version_var`: lock the tags it yields (the lock
    /// keeps those of other versions).
    #[arg(long)]
    version: Option<semver::Version>,
}

#[derive(clap::Args)]
struct ReleaseArgs {
    /// Release version (semver).
    #[arg(long)]
    version: semver::Version,
    /// Output directory; bundles go to `<out>/<environment>/`.
    #[arg(long, default_value = "bundles")]
    out: PathBuf,
    /// Secret key file (minisign format).
    #[arg(long, env = "SMOKER_SECRET_KEY")]
    secret_key: PathBuf,
    /// Recipe to build (repeatable; default: every recipe).
    #[arg(long = "recipe")]
    recipes: Vec<String>,
    /// Architecture (repeatable; default: amd64 and armv7).
    #[arg(long = "arch")]
    arches: Vec<Arch>,
    /// Environment (repeatable; default: every environment a recipe declares).
    #[arg(long = "env")]
    envs: Vec<String>,
    /// Project directory holding `recipes/` (default: the workspace root).
    #[arg(long)]
    project_dir: Option<PathBuf>,
    /// Carry every image in the bundle (fetched from the registry by the locked digests), for
    /// hosts without network access.
    #[arg(long)]
    offline: bool,
    /// Where fetched registry blobs are cached by digest (default: target/smoker-blobs under
    /// the project directory).
    #[arg(long, env = "SMOKER_BLOB_CACHE")]
    blob_cache: Option<PathBuf>,
    /// Resolve images the lock lacks (e.g. this version's tags) from the registry first,
    /// print the lock diff and write the lock; for CI pipelines.
    #[arg(long)]
    lock: bool,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Armv7(args) => armv7::run(&args, &workspace_root()),
        Cmd::Lock(args) => cmd_lock(args),
        Cmd::Release(args) => cmd_release(args),
        Cmd::Publish(args) => cmd_publish(&args),
        Cmd::Rollout(args) => cmd_rollout(&args),
        Cmd::Keygen {
            secret_key,
            public_key,
            no_password,
        } => cmd_keygen(&secret_key, &public_key, no_password),
        Cmd::VerifyRebuild {
            bundle,
            repo,
            blob_cache,
        } => cmd_verify_rebuild(&bundle, repo, blob_cache),
        Cmd::Sign { secret_key, files } => cmd_sign(&secret_key, &files),
    }
}

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where `path` would really be written: made absolute against the current directory, with
/// the longest existing ancestor's links and `..` resolved.
fn resolved(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        let (Some(parent), Some(name)) = (existing.parent(), existing.file_name()) else {
            break;
        };
        rest.push(name.to_os_string());
        existing = parent;
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.into_iter().rev() {
        if name == ".." {
            out.pop();
        } else if name != "." {
            out.push(name);
        }
    }
    Ok(out)
}

fn cmd_keygen(secret: &Path, public: &Path, no_password: bool) -> Result<()> {
    let root = workspace_root();
    let keys_dir = root.canonicalize().unwrap_or(root).join("keys");
    let target = resolved(secret)?;
    if target.starts_with(&keys_dir) {
        bail!(
            "refusing to write a secret key under keys/ ({} is in {}): only public keys belong there; put it e.g. in ~/.config/smoker/",
            target.display(),
            keys_dir.display()
        );
    }
    let password = if no_password {
        None
    } else if let Ok(p) = std::env::var(signing::PASSWORD_ENV) {
        Some(p)
    } else {
        let p = prompt_password("Password for the new secret key: ")?;
        let again = prompt_password("Password (again): ")?;
        if p != again {
            bail!("passwords do not match");
        }
        if p.is_empty() {
            bail!("empty password; use --no-password to store the key unencrypted");
        }
        Some(p)
    };
    let id = signing::generate(secret, public, password)?;
    println!(
        "key {id}: secret key {} (keep it secret), public key {}",
        secret.display(),
        public.display()
    );
    Ok(())
}

/// `sign`: a detached `.minisig` for each file, its trusted comment naming the file and its
/// sha256.
fn cmd_sign(secret: &Path, files: &[PathBuf]) -> Result<()> {
    let key = SecretKey::load(secret, None)
        .with_context(|| format!("loading the signing key {}", secret.display()))?;
    for f in files {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no file", f.display()))?;
        let (sha, _) = smoker_format::digest::sha256_file(f)
            .with_context(|| format!("reading {}", f.display()))?;
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let sig = key
            .sign(
                std::io::BufReader::new(file),
                &format!("file:{name} sha256:{sha}"),
            )
            .with_context(|| format!("signing {}", f.display()))?;
        let mut out = f.clone().into_os_string();
        out.push(smoker_format::bundle::DETACHED_SIG_SUFFIX);
        let out = PathBuf::from(out);
        smoker_build::release::write_atomic(&out, sig.as_bytes())?;
        println!(
            "signed {} with key {} → {}",
            f.display(),
            key.key_id(),
            out.display()
        );
    }
    Ok(())
}

fn prompt_password(prompt: &str) -> Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        bail!(
            "no terminal to ask for a password: set {} or pass --no-password",
            signing::PASSWORD_ENV
        );
    }
    eprint!("{prompt}");
    std::io::stderr().flush().ok();
    // Turn off echo while the password is typed.
    let echo_off = std::process::Command::new("stty")
        .arg("-echo")
        .status()
        .is_ok();
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if echo_off {
        let _ = std::process::Command::new("stty").arg("echo").status();
    }
    eprintln!();
    read.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn cmd_lock(args: LockArgs) -> Result<()> {
    let project = args.project_dir.clone().unwrap_or_else(workspace_root);
    let recipes_dir = project.join("recipes");
    let names = if args.recipes.is_empty() {
        Recipe::discover(&recipes_dir)?
    } else {
        args.recipes.clone()
    };
    if names.is_empty() {
        bail!("no recipes found in {}", recipes_dir.display());
    }
    let reg = registries(&recipes_dir)?;
    for name in &names {
        let version = args.version.as_ref().map(ToString::to_string);
        lock::lock_recipe(&reg, &recipes_dir, name, &args.arches, version.as_deref())
            .with_context(|| format!("locking recipe `{name}`"))?;
    }
    Ok(())
}

/// A registry client using the project's mirrors (`recipes/registries.toml`, if present).
fn registries(recipes_dir: &Path) -> Result<registry::Registries> {
    let mirrors = smoker_build::mirrors::Mirrors::load(recipes_dir)?;
    if let Some(path) = mirrors.path() {
        eprintln!("registry mirrors from {}", path.display());
    }
    registry::Registries::with_mirrors(mirrors)
}

/// The default blob cache of a project.
fn default_blob_cache(project: &Path) -> PathBuf {
    project.join("target").join("smoker-blobs")
}

/// Plans one bundle, offline (with its images) when `offline` holds a registry client.
#[allow(clippy::too_many_arguments)]
fn plan_bundle(
    recipe: &Recipe,
    lock: &Lock,
    lock_path: &Path,
    arch: Arch,
    env: &str,
    version: &semver::Version,
    source: &SourceInfo,
    offline: Option<(&registry::Registries, &Path)>,
) -> Result<release::Plan> {
    let Some((reg, cache)) = offline else {
        return Ok(release::plan(
            recipe, lock, lock_path, arch, env, version, source,
        )?);
    };
    // The images first (no payload is read or hashed for this), then the bundle, planned once.
    let pinned = release::pinned_images(recipe, lock, lock_path, arch, env, version)?;
    let images = offline::build(reg, cache, arch, &pinned)
        .with_context(|| format!("building the {arch} image archive of `{}`", recipe.name))?;
    Ok(release::plan_offline(
        recipe, lock, lock_path, arch, env, version, source, &images,
    )?)
}

fn cmd_release(args: ReleaseArgs) -> Result<()> {
    let project = args.project_dir.clone().unwrap_or_else(workspace_root);
    let recipes_dir = project.join("recipes");
    let reg = if args.offline || args.lock {
        Some(registries(&recipes_dir)?)
    } else {
        None
    };
    let cache = args
        .blob_cache
        .clone()
        .unwrap_or_else(|| default_blob_cache(&project));
    let offline = reg
        .as_ref()
        .filter(|_| args.offline)
        .map(|r| (r, cache.as_path()));
    let key = SecretKey::load(&args.secret_key, None)
        .with_context(|| format!("loading the signing key {}", args.secret_key.display()))?;
    let names = if args.recipes.is_empty() {
        Recipe::discover(&recipes_dir)?
    } else {
        args.recipes.clone()
    };
    if names.is_empty() {
        bail!("no recipes found in {}", recipes_dir.display());
    }
    let arches = if args.arches.is_empty() {
        Arch::ALL.to_vec()
    } else {
        args.arches.clone()
    };
    let frontend = smoker_build::composecheck::frontend()?;
    let mut written: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for name in &names {
        let recipe = Recipe::load(&recipes_dir, name)?;
        let lock_path = Lock::path(&recipes_dir, name);
        let lock = match (&reg, args.lock) {
            (Some(reg), true) => {
                lock::lock_missing(reg, &recipes_dir, name, &arches, &args.version.to_string())
                    .with_context(|| format!("locking the missing images of recipe `{name}`"))?
            }
            _ => Lock::load(&lock_path, name)?,
        };
        let source = release::source_info(&recipe, &lock_path)?;
        if source.dirty {
            eprintln!(
                "warning: recipe `{name}` has uncommitted changes; its bundles record dirty=true and cannot be rebuilt from their commit"
            );
        }
        let envs = if args.envs.is_empty() {
            recipe.environments()
        } else {
            for e in &args.envs {
                if recipe.config(e).is_none() {
                    bail!(
                        "recipe `{name}` has no environment `{e}` (it has: {})",
                        recipe.environments().join(", ")
                    );
                }
            }
            args.envs.clone()
        };
        for env in &envs {
            let info = release::compose_info(&recipe, env, &args.version)?;
            for w in smoker_build::composecheck::warnings(&info) {
                eprintln!("warning: recipe `{name}` ({env}): {w}");
            }
            for (n, arch) in arches.iter().enumerate() {
                let plan = plan_bundle(
                    &recipe,
                    &lock,
                    &lock_path,
                    *arch,
                    env,
                    &args.version,
                    &source,
                    offline,
                )?;
                // The bundles of one environment differ only in the pinned digests, which
                // compose does not judge: one check per environment.
                if n == 0 {
                    smoker_build::composecheck::check(&frontend, &plan)?;
                }
                let dir = args.out.join(env);
                let w = release::write_release(&plan, &key, &dir)?;
                println!("{}  {}  ({} bytes)", w.sha256, w.path.display(), w.size);
                let sig = PathBuf::from(format!(
                    "{}{}",
                    w.path.display(),
                    smoker_format::bundle::DETACHED_SIG_SUFFIX
                ));
                written.entry(dir).or_default().extend([w.path, sig]);
            }
        }
    }
    for (dir, files) in &written {
        let sums = release::write_sums(dir, files)?;
        println!("wrote {}", sums.display());
    }
    Ok(())
}

fn load_keys(path: &Path) -> Result<signing::TrustedKeys> {
    Ok(if path.is_dir() {
        signing::TrustedKeys::from_dir(path)?
    } else {
        signing::TrustedKeys::from_file(path)?
    })
}

fn cmd_rollout(args: &RolloutArgs) -> Result<()> {
    use smoker_fleet::rollout::{self, Strategy};
    let inv = smoker_fleet::inventory::InventoryFile::load(&args.inventory)?;
    let hosts: Vec<_> = inv
        .hosts()?
        .into_iter()
        .filter(|h| args.hosts.is_empty() || args.hosts.contains(&h.name))
        .filter(|h| args.groups.is_empty() || h.groups.iter().any(|g| args.groups.contains(g)))
        .collect();
    if hosts.is_empty() {
        bail!(
            "no host of {} matches the --host/--group filters",
            args.inventory.display()
        );
    }
    let keys_path = args
        .keys
        .clone()
        .unwrap_or_else(|| workspace_root().join("keys"));
    let keys = load_keys(&keys_path)
        .with_context(|| format!("loading the trusted keys {}", keys_path.display()))?;
    let newest = smoker_build::publish::newest_bundles(&args.from, &keys)?;
    let strategy = match args.strategy {
        StrategyName::Rolling => Strategy::Rolling {
            batch: args.batch,
            pause: std::time::Duration::from_secs(args.pause),
            max_failures: args.max_failures,
        },
        StrategyName::Immediate => Strategy::Immediate {
            parallel: args.parallel,
        },
        StrategyName::Scheduled => {
            let window = args.window.clone().unwrap_or_default();
            smoker_format::channel::Window::parse(&window).map_err(anyhow::Error::msg)?;
            Strategy::Scheduled {
                window,
                parallel: args.parallel,
            }
        }
    };
    let plan = rollout::pick(&hosts, &newest);
    let control = tempfile::Builder::new().prefix("smk-ssh-").tempdir()?;
    let progress = |host: &str, state: &str| eprintln!("[{host}] {state}");
    let report = rollout::run(
        &plan,
        &rollout::Options {
            strategy,
            require_all: args.require_all,
            connect_timeout: args.connect_timeout,
            progress: &progress,
        },
        control.path(),
    );
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(p) = &args.report {
        std::fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", rollout::table(&report));
    }
    if std::env::var_os("GITHUB_ACTIONS").is_some() {
        print!("{}", rollout::annotations(&report));
    }
    if !report.ok {
        let failed: Vec<&str> = report
            .hosts
            .iter()
            .filter(|h| h.result.is_failure(args.require_all))
            .map(|h| h.host.as_str())
            .collect();
        bail!("rollout failed on: {}", failed.join(", "));
    }
    Ok(())
}

fn cmd_publish(args: &PublishArgs) -> Result<()> {
    let key = SecretKey::load(&args.secret_key, None)
        .with_context(|| format!("loading the signing key {}", args.secret_key.display()))?;
    let keys = match &args.keys {
        Some(p) => load_keys(p)?,
        None => {
            let dir = tempfile::tempdir()?;
            let p = dir.path().join("channel.pub");
            std::fs::write(&p, key.public_key_file())?;
            signing::TrustedKeys::from_file(&p)?
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let channel = smoker_build::publish::publish(&smoker_build::publish::Request {
        name: &args.channel,
        release_dir: &args.from,
        out: &args.out,
        keys: &keys,
        key: &key,
        now,
        expires_in: args.expires_in,
        sequence: args.sequence,
        not_before: args.not_before,
        cohort: args.cohort,
        window: args.window.clone(),
    })?;
    for e in &channel.bundles {
        println!(
            "{}  {} {} {} {}  {}",
            e.sha256, e.profile, e.arch, e.environment, e.version, e.file
        );
    }
    println!(
        "channel {} sequence {} expires {} written to {}",
        channel.name,
        channel.sequence,
        channel.expires,
        args.out
            .join(smoker_format::channel::CHANNEL_FILE)
            .display()
    );
    Ok(())
}

fn cmd_verify_rebuild(
    bundle: &Path,
    repo: Option<PathBuf>,
    blob_cache: Option<PathBuf>,
) -> Result<()> {
    let repo = repo.unwrap_or_else(workspace_root);
    let bytes_ok = smoker_format::bundle::read::inspect_file(bundle)
        .with_context(|| format!("reading {}", bundle.display()))?;
    let m = &bytes_ok.manifest;
    let Some(commit) = m.source.commit.clone() else {
        bail!(
            "{} records no source commit; it cannot be rebuilt",
            bundle.display()
        );
    };
    if m.source.dirty {
        bail!(
            "{} was built from a tree with uncommitted changes (dirty); it cannot be rebuilt from commit {commit}",
            bundle.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let checkout = tmp.path().join("src");
    git(&[
        "clone",
        "--quiet",
        "--no-checkout",
        &repo.to_string_lossy(),
        &checkout.to_string_lossy(),
    ])?;
    git(&[
        "-C",
        &checkout.to_string_lossy(),
        "-c",
        "advice.detachedHead=false",
        "checkout",
        "--quiet",
        &commit,
    ])
    .with_context(|| format!("commit {commit} is not in {}", repo.display()))?;
    let recipe_dir = checkout.join(&m.source.recipe_dir);
    let recipe = Recipe::load_dir(&recipe_dir)?;
    let recipes_dir = recipe_dir.parent().unwrap_or(&recipe_dir).to_path_buf();
    let lock_path = Lock::path(&recipes_dir, &recipe.name);
    let lock = Lock::load(&lock_path, &recipe.name)?;
    let source = SourceInfo {
        commit: Some(commit.clone()),
        dirty: false,
        recipe_dir: m.source.recipe_dir.clone(),
        epoch: m.created,
    };
    let version = semver::Version::parse(&m.version)?;
    // An offline bundle's image archive is rebuilt from the registry (or the blob cache).
    let reg = if m.images.iter().any(|i| i.archive.is_some()) {
        Some(registries(&recipes_dir)?)
    } else {
        None
    };
    let cache = blob_cache.unwrap_or_else(|| default_blob_cache(&workspace_root()));
    let plan = plan_bundle(
        &recipe,
        &lock,
        &lock_path,
        m.arch,
        &m.environment,
        &version,
        &source,
        reg.as_ref().map(|r| (r, cache.as_path())),
    )?;
    let rebuilt = plan.manifest.to_canonical_json();
    if rebuilt != bytes_ok.manifest_bytes {
        let theirs = &bytes_ok.manifest;
        let mut diffs = Vec::new();
        for (a, b) in plan.manifest.files.iter().zip(&theirs.files) {
            if a != b {
                diffs.push(format!(
                    "  {}: rebuilt {} vs bundle {}",
                    a.path, a.sha256, b.sha256
                ));
            }
        }
        if plan.manifest.files.len() != theirs.files.len() {
            diffs.push(format!(
                "  file count: rebuilt {} vs bundle {}",
                plan.manifest.files.len(),
                theirs.files.len()
            ));
        }
        bail!(
            "NOT reproducible: the rebuilt manifest differs from the bundle's{}{}",
            if diffs.is_empty() { "" } else { ":\n" },
            diffs.join("\n")
        );
    }
    println!(
        "reproducible: {} rebuilt from commit {commit} — manifest and all {} payload files identical (signatures not compared)",
        bundle.display(),
        m.files.len()
    );
    Ok(())
}

fn git(args: &[&str]) -> Result<()> {
    let status = std::process::Command::new("git")
        .args(args)
        .status()
        .context("running git")?;
    if !status.success() {
        bail!("git {} failed", args.join(" "));
    }
    Ok(())
}
