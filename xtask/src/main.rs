//! `cargo xtask`: the project's build and release tasks.
//!
//! - `lock`: resolve every image tag of a recipe to per-architecture digests.
//! - `release`: recipes + lock → signed, reproducible bundles (`--offline`: with the images).
//! - `keygen`: a minisign key pair for signing releases.
//! - `verify-rebuild`: rebuild a bundle from its recorded source and compare.
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
    let reg = registry::Registries::new()?;
    for name in &names {
        lock::lock_recipe(&reg, &recipes_dir, name, &args.arches)
            .with_context(|| format!("locking recipe `{name}`"))?;
    }
    Ok(())
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
    let pinned = release::pinned_images(recipe, lock, lock_path, arch, env)?;
    let images = offline::build(reg, cache, arch, &pinned)
        .with_context(|| format!("building the {arch} image archive of `{}`", recipe.name))?;
    Ok(release::plan_offline(
        recipe, lock, lock_path, arch, env, version, source, &images,
    )?)
}

fn cmd_release(args: ReleaseArgs) -> Result<()> {
    let project = args.project_dir.clone().unwrap_or_else(workspace_root);
    let recipes_dir = project.join("recipes");
    let reg = if args.offline {
        Some(registry::Registries::new()?)
    } else {
        None
    };
    let cache = args
        .blob_cache
        .clone()
        .unwrap_or_else(|| default_blob_cache(&project));
    let offline = reg.as_ref().map(|r| (r, cache.as_path()));
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
    let mut written: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = Default::default();
    for name in &names {
        let recipe = Recipe::load(&recipes_dir, name)?;
        let lock_path = Lock::path(&recipes_dir, name);
        let lock = Lock::load(&lock_path, name)?;
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
            for arch in &arches {
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
        Some(registry::Registries::new()?)
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
