//! Turning a recipe and its lock into bundles.
//!
//! [`plan`] computes the unsigned content of one bundle (manifest plus payload sources) from a
//! recipe, its lock, an architecture, an environment, a version and the source information.
//! It depends on nothing but those inputs — not on the time, the build directory, the umask or
//! file mtimes — which is what makes bundles reproducible. [`write_release`] signs and writes.

use crate::compose::{self, PinnedService};
use crate::lock::{Lock, LockError, canonical_repository};
use crate::recipe::Recipe;
use smoker_format::bundle::write::{Payload, write_bundle};
use smoker_format::digest::{sha256_file, sha256_hex};
use smoker_format::image_archive;
use smoker_format::manifest::{
    Arch, ComposeSpec, FORMAT_VERSION, FileEntry, Image, Manifest, Migration, Source,
};
use smoker_format::signing::SecretKey;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// Directory of the recipe's files inside a bundle (the compose project directory).
pub const STACK_DIR: &str = "stack";
/// The generated override pinning every image.
pub const PIN_FILE: &str = "generated/pin.compose.yaml";
/// Oldest installer that reads what this builder writes.
pub const MIN_INSTALLER_VERSION: &str = "0.1.0";

/// Errors building a release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// Recipe problem.
    #[error(transparent)]
    Recipe(#[from] crate::recipe::RecipeError),
    /// Lock problem.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Compose problem.
    #[error("recipe `{recipe}`: {source}")]
    Compose {
        /// Recipe name.
        recipe: String,
        /// The cause.
        source: compose::ComposeError,
    },
    /// A referenced file is missing or unsafe.
    #[error("recipe `{recipe}`: {message}")]
    Reference {
        /// Recipe name.
        recipe: String,
        /// What is wrong, naming the file and the service.
        message: String,
    },
    /// The compose file needs what the recipe's declared hosts (`[hosts]`) do not have.
    #[error("recipe `{recipe}`: the compose file uses what its hosts cannot run:\n  - {}", problems.join("\n  - "))]
    Hosts {
        /// Recipe name.
        recipe: String,
        /// Each problem with its fix.
        problems: Vec<String>,
    },
    /// Invalid request.
    #[error("{0}")]
    Invalid(String),
    /// I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing the bundle failed.
    #[error(transparent)]
    Write(#[from] smoker_format::bundle::write::WriteError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the recipe tree came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// Git commit, if in a repository.
    pub commit: Option<String>,
    /// Uncommitted changes under the recipe directory or its lock.
    pub dirty: bool,
    /// Recipe directory relative to the repository root.
    pub recipe_dir: String,
    /// Build time (SOURCE_DATE_EPOCH, else the commit time).
    pub epoch: u64,
}

/// Reads git facts for a recipe. Time comes from `SOURCE_DATE_EPOCH`, else the commit time.
pub fn source_info(recipe: &Recipe, lock_path: &Path) -> Result<SourceInfo, ReleaseError> {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(&recipe.dir)
            .args(args)
            .env("LC_ALL", "C")
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
    };
    let commit = git(&["rev-parse", "HEAD"]);
    let prefix = git(&["rev-parse", "--show-prefix"]).unwrap_or_default();
    let recipe_dir = prefix.trim_end_matches('/').to_string();
    let dirty = match &commit {
        Some(_) => {
            let lock_name = lock_path
                .file_name()
                .map(|n| format!("../{}", n.to_string_lossy()))
                .unwrap_or_default();
            git(&[
                "status",
                "--porcelain",
                "--untracked-files=all",
                "--",
                ".",
                &lock_name,
            ])
            .is_none_or(|s| !s.is_empty())
        }
        None => true,
    };
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v.trim().parse::<u64>().map_err(|_| {
            ReleaseError::Invalid(format!(
                "SOURCE_DATE_EPOCH=`{v}` is not a number of seconds"
            ))
        })?,
        Err(_) => match git(&["log", "-1", "--format=%ct", "HEAD"]) {
            Some(t) => t
                .parse::<u64>()
                .map_err(|_| ReleaseError::Invalid(format!("git reported commit time `{t}`")))?,
            None => {
                return Err(ReleaseError::Invalid(format!(
                    "{} is not in a git repository with commits; set SOURCE_DATE_EPOCH",
                    recipe.dir.display()
                )));
            }
        },
    };
    Ok(SourceInfo {
        commit,
        dirty,
        recipe_dir,
        epoch,
    })
}

/// The unsigned content of one bundle.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The manifest.
    pub manifest: Manifest,
    /// Payload sources in manifest order.
    pub payload: Vec<(FileEntry, Payload)>,
}

/// The images an offline bundle carries (built by `cargo xtask release --offline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineImages {
    /// The image archive ([`smoker_format::image_archive`]) holding every image of the bundle.
    pub archive: PathBuf,
    /// The config digest (image ID) of each platform manifest digest, as the registry's
    /// manifests say; used for images whose lock entry records none.
    pub config_digests: BTreeMap<String, String>,
}

/// Everything one bundle is computed from.
struct Inputs<'a> {
    recipe: &'a Recipe,
    lock: &'a Lock,
    lock_path: &'a Path,
    arch: Arch,
    env: &'a str,
    version: &'a semver::Version,
}

impl<'a> Inputs<'a> {
    fn new(
        recipe: &'a Recipe,
        lock: &'a Lock,
        lock_path: &'a Path,
        arch: Arch,
        env: &'a str,
        version: &'a semver::Version,
    ) -> Inputs<'a> {
        Inputs {
            recipe,
            lock,
            lock_path,
            arch,
            env,
            version,
        }
    }
}

/// The compose file of a recipe, read for one environment.
struct Compose {
    /// Path of the compose file inside the recipe.
    rel: String,
    info: compose::ComposeInfo,
    /// The environment's configuration, plus the release version in the recipe's
    /// `version_var`.
    config: BTreeMap<String, String>,
}

/// Payload sources by path inside the bundle, with their modes.
type Files = BTreeMap<String, (Payload, u32)>;

/// Computes one bundle's manifest and payload.
pub fn plan(
    recipe: &Recipe,
    lock: &Lock,
    lock_path: &Path,
    arch: Arch,
    env: &str,
    version: &semver::Version,
    source: &SourceInfo,
) -> Result<Plan, ReleaseError> {
    let inputs = Inputs::new(recipe, lock, lock_path, arch, env, version);
    plan_with(&inputs, source, None)
}

/// Computes one offline bundle's manifest and payload: like [`plan`], plus the image archive
/// at [`image_archive::ARCHIVE_PATH`], every service pinned to its local reference with
/// `pull_policy: never`, and every image's ID recorded (the installer checks it after loading).
#[allow(clippy::too_many_arguments)]
pub fn plan_offline(
    recipe: &Recipe,
    lock: &Lock,
    lock_path: &Path,
    arch: Arch,
    env: &str,
    version: &semver::Version,
    source: &SourceInfo,
    offline: &OfflineImages,
) -> Result<Plan, ReleaseError> {
    let inputs = Inputs::new(recipe, lock, lock_path, arch, env, version);
    plan_with(&inputs, source, Some(offline))
}

/// The images one bundle pins, as its manifest will list them (online form), without reading
/// or hashing any payload: what an offline release fetches before it plans the bundle once.
pub fn pinned_images(
    recipe: &Recipe,
    lock: &Lock,
    lock_path: &Path,
    arch: Arch,
    env: &str,
    version: &semver::Version,
) -> Result<Vec<Image>, ReleaseError> {
    let inputs = Inputs::new(recipe, lock, lock_path, arch, env, version);
    let compose = read_compose(&inputs)?;
    Ok(pin_images(&inputs, &compose, None)?.0)
}

fn plan_with(
    i: &Inputs<'_>,
    source: &SourceInfo,
    offline: Option<&OfflineImages>,
) -> Result<Plan, ReleaseError> {
    let compose = read_compose(i)?;
    let root = i.recipe.dir.canonicalize().map_err(io_err(&i.recipe.dir))?;
    let mut files = stack_files(i, &compose, &root)?;
    let (images, pins) = pin_images(i, &compose, offline)?;
    if let Some(o) = offline {
        files.insert(
            image_archive::ARCHIVE_PATH.to_string(),
            (Payload::File(o.archive.clone()), 0o644),
        );
    }
    files.insert(
        PIN_FILE.to_string(),
        (
            Payload::Bytes(compose::pin_override(
                compose.info.version.as_deref(),
                &pins,
            )),
            0o644,
        ),
    );
    let env_file = format!("config/{}.env", i.env);
    files.insert(
        env_file.clone(),
        (Payload::Bytes(env_text(i.env, &compose.config)?), 0o644),
    );
    let migration_paths = add_migrations(i.recipe, &root, &mut files)?;
    let entries = hash_payload(files)?;
    let migrations = migration_paths
        .into_iter()
        .map(|(id, path)| {
            let sha256 = entries
                .iter()
                .find(|(e, _)| e.path == path)
                .map(|(e, _)| e.sha256.clone())
                .unwrap_or_default();
            Migration { id, path, sha256 }
        })
        .collect();
    let recipe = i.recipe;
    let compose_err = |source| ReleaseError::Compose {
        recipe: recipe.name.clone(),
        source,
    };
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: recipe.name.clone(),
        version: i.version.to_string(),
        arch: i.arch,
        environment: i.env.to_string(),
        source: Source {
            commit: source.commit.clone(),
            dirty: source.dirty,
            recipe_dir: source.recipe_dir.clone(),
        },
        created: source.epoch,
        min_installer_version: MIN_INSTALLER_VERSION.to_string(),
        compose: ComposeSpec {
            files: vec![format!("{STACK_DIR}/{}", compose.rel), PIN_FILE.to_string()],
            project_directory: STACK_DIR.to_string(),
            env_file: Some(env_file),
        },
        images,
        migrations,
        migration_runner: recipe.runner(),
        health: recipe.health(i.env).map_err(compose_err)?,
        backup: recipe.file.backup.clone(),
        required_secrets: recipe.required_secrets(i.env),
        files: entries.iter().map(|(e, _)| e.clone()).collect(),
        host_access: compose.info.host_access.clone(),
        requires: compose.info.requires.clone(),
    };
    manifest
        .validate()
        .map_err(|e| ReleaseError::Invalid(format!("recipe `{}`: {e}", recipe.name)))?;
    Ok(Plan {
        manifest,
        payload: entries,
    })
}

/// Reads the recipe's compose file with the environment's configuration.
fn read_compose(i: &Inputs<'_>) -> Result<Compose, ReleaseError> {
    let compose = read_compose_for(i.recipe, i.env, i.version)?;
    check_hosts(i, &compose.info)?;
    Ok(compose)
}

/// The recipe's compose file as release reads it for `env` and `version` (images, references,
/// host access), for checks outside a plan.
pub fn compose_info(
    recipe: &Recipe,
    env: &str,
    version: &semver::Version,
) -> Result<compose::ComposeInfo, ReleaseError> {
    Ok(read_compose_for(recipe, env, version)?.info)
}

fn read_compose_for(
    recipe: &Recipe,
    env: &str,
    version: &semver::Version,
) -> Result<Compose, ReleaseError> {
    let rname = &recipe.name;
    let version = version.to_string();
    let config = recipe.interpolation(env, Some(&version)).ok_or_else(|| {
        ReleaseError::Invalid(format!(
            "recipe `{rname}` has no environment `{env}` (it has: {})",
            recipe.environments().join(", ")
        ))
    })?;
    let rel = normalize(&recipe.file.compose).ok_or_else(|| ReleaseError::Reference {
        recipe: rname.clone(),
        message: format!(
            "compose file `{}` is outside the recipe",
            recipe.file.compose
        ),
    })?;
    let path = recipe.dir.join(&rel);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let info = compose::analyze(&text, &config).map_err(|source| ReleaseError::Compose {
        recipe: rname.clone(),
        source,
    })?;
    Ok(Compose { rel, info, config })
}

/// The compose file's needs against the recipe's `[hosts]` floor and the bundle's
/// architecture ([`smoker_format::capability::problems`], the same rules the installer applies
/// on the host).
fn check_hosts(i: &Inputs<'_>, info: &compose::ComposeInfo) -> Result<(), ReleaseError> {
    use smoker_format::capability::{self, Host};
    let rname = &i.recipe.name;
    let hosts = &i.recipe.file.hosts;
    let engine = match &hosts.engine {
        Some(v) => Some(capability::engine_version(v).ok_or_else(|| {
            ReleaseError::Invalid(format!(
                "recipe `{rname}`: [hosts] engine = \"{v}\" is not a version like \"24.0\""
            ))
        })?),
        None => None,
    };
    let compose = match &hosts.compose {
        Some(c) => Some(c.parse().map_err(|e| {
            ReleaseError::Invalid(format!("recipe `{rname}`: [hosts] compose: {e}"))
        })?),
        None => None,
    };
    let host = Host {
        engine,
        compose,
        arch: i.arch,
    };
    let problems = capability::problems(&info.requires, &host);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ReleaseError::Hosts {
        recipe: rname.clone(),
        problems: problems.iter().map(ToString::to_string).collect(),
    })
}

/// The compose file and every file it references by relative path (resolved against the
/// compose file's directory), under `stack/`.
fn stack_files(i: &Inputs<'_>, compose: &Compose, root: &Path) -> Result<Files, ReleaseError> {
    let rname = &i.recipe.name;
    let mut files = Files::new();
    add_file(&mut files, root, &compose.rel, rname, "the recipe")?;
    let compose_dir = Path::new(&compose.rel)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for r in &compose.info.references {
        let joined = compose_dir.join(&r.path);
        let rel = normalize(&joined.to_string_lossy()).ok_or_else(|| ReleaseError::Reference {
            recipe: rname.clone(),
            message: format!(
                "{} refers to `{}` ({}), which escapes the recipe directory; a bundle carries only the recipe's files. For data (a database directory), use a named volume (`- dbdata:/data/db` plus `volumes: {{dbdata: {{}}}}`); for a directory that lives on the host, write its absolute path (e.g. `/srv/app/database`), which release signs as host access and the host must allow under `[policy.<profile>]` `bind_mounts`; for a file the stack needs, move it into the recipe directory",
                r.owner, r.path, r.kind
            ),
        })?;
        let abs = root.join(&rel);
        if !abs.exists() {
            if !r.required {
                continue;
            }
            return Err(ReleaseError::Reference {
                recipe: rname.clone(),
                message: format!(
                    "{} refers to `{}` ({}), which does not exist at {}",
                    r.owner,
                    r.path,
                    r.kind,
                    abs.display()
                ),
            });
        }
        add_tree(&mut files, root, &rel, rname, &r.owner)?;
    }
    Ok(files
        .into_iter()
        .map(|(rel, v)| (format!("{STACK_DIR}/{rel}"), v))
        .collect())
}

/// Every service's image pinned for the architecture: by digest (online), or to its local
/// reference in the bundle's image archive (offline). Returns the manifest's image list
/// (sorted by service) and the pin override's entries.
fn pin_images(
    i: &Inputs<'_>,
    compose: &Compose,
    offline: Option<&OfflineImages>,
) -> Result<(Vec<Image>, BTreeMap<String, PinnedService>), ReleaseError> {
    let mut images = Vec::new();
    let mut pins = BTreeMap::new();
    for svc in &compose.info.services {
        let (locked, pin) = i
            .lock
            .get(&svc.image, i.arch)
            .ok_or_else(|| LockError::NotLocked {
                command: match &i.recipe.file.version_var {
                    Some(_) => format!(
                        "cargo xtask lock --recipe {} --version {}",
                        i.recipe.name, i.version
                    ),
                    None => format!("cargo xtask lock --recipe {}", i.recipe.name),
                },
                reference: svc.image.clone(),
                service: svc.name.clone(),
                arch: i.arch,
                path: i.lock_path.to_path_buf(),
            })?;
        // The canonical repository (`docker.io/library/mongo`): the host's engine pulls it by
        // digest through its own mirror settings, whichever mirror the lock was resolved from.
        let repository = canonical_repository(&svc.image);
        let (pinned, config_digest, archive) = match offline {
            None => (
                PinnedService {
                    image: format!("{repository}@{}", pin.digest),
                    pull_policy: None,
                },
                // The image ID is what the host checks every running container against.
                Some(pin.config_digest.clone().ok_or_else(|| {
                    ReleaseError::Invalid(format!(
                        "the lock {} records no image ID (config digest) of `{}` for {} (service `{}`); run `cargo xtask lock --recipe {}` to refresh it",
                        i.lock_path.display(),
                        svc.image,
                        i.arch,
                        svc.name,
                        i.recipe.name
                    ))
                })?),
                None,
            ),
            Some(o) => {
                let config = offline_config(o, &svc.image, &svc.name, i.arch, pin, i.lock_path)?;
                (
                    PinnedService {
                        image: image_archive::local_reference(&repository, &pin.digest),
                        pull_policy: Some("never".into()),
                    },
                    Some(config),
                    Some(image_archive::ARCHIVE_PATH.to_string()),
                )
            }
        };
        pins.insert(svc.name.clone(), pinned);
        images.push(Image {
            service: svc.name.clone(),
            original: svc.image.clone(),
            repository,
            digest: pin.digest.clone(),
            index_digest: locked.index_digest.clone(),
            config_digest,
            archive,
        });
    }
    images.sort_by(|a, b| a.service.cmp(&b.service));
    if let Some(o) = offline {
        check_archive(o, &images)?;
    }
    Ok((images, pins))
}

/// The environment's non-secret configuration as an env file.
fn env_text(env: &str, config: &BTreeMap<String, String>) -> Result<Vec<u8>, ReleaseError> {
    let mut text = String::new();
    for (k, v) in config {
        if smoker_format::manifest::steers_tools(k) {
            return Err(ReleaseError::Invalid(format!(
                "config variable {k} of environment `{env}` would steer docker or compose themselves on the host, not the stack; rename it"
            )));
        }
        if v.contains('\n') {
            return Err(ReleaseError::Invalid(format!(
                "config value {k} of environment `{env}` has a newline"
            )));
        }
        text.push_str(&format!("{k}={v}\n"));
    }
    Ok(text.into_bytes())
}

/// The recipe's migration scripts (`NNNN-name.ext`, in name order) under `migrations/`.
/// Returns each migration's id and path in the bundle.
fn add_migrations(
    recipe: &Recipe,
    root: &Path,
    files: &mut Files,
) -> Result<Vec<(String, String)>, ReleaseError> {
    let Some(m) = &recipe.file.migrations else {
        return Ok(Vec::new());
    };
    let rname = &recipe.name;
    let dir_rel = normalize(&m.dir).ok_or_else(|| ReleaseError::Reference {
        recipe: rname.clone(),
        message: format!("migrations dir `{}` escapes the recipe directory", m.dir),
    })?;
    let dir = root.join(&dir_rel);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(io_err(&dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut migrations = Vec::new();
    for name in names {
        let valid = name.len() > 5
            && name.as_bytes()[..4].iter().all(u8::is_ascii_digit)
            && name.as_bytes()[4] == b'-';
        if !valid {
            return Err(ReleaseError::Reference {
                recipe: rname.clone(),
                message: format!("migration `{}/{name}` must be named NNNN-name.ext", m.dir),
            });
        }
        // A migration must be a file of the recipe itself: a link (to `/proc/self/environ`, a
        // key file, another checkout) would ship whatever it points at.
        let src = dir.join(&name);
        let meta = std::fs::symlink_metadata(&src).map_err(io_err(&src))?;
        if meta.file_type().is_symlink() {
            return Err(ReleaseError::Reference {
                recipe: rname.clone(),
                message: format!(
                    "migration `{}/{name}` is a symbolic link; migrations must be regular files inside the recipe",
                    m.dir
                ),
            });
        }
        let real = dir.canonicalize().map_err(io_err(&dir))?;
        if !real.starts_with(root) {
            return Err(ReleaseError::Reference {
                recipe: rname.clone(),
                message: format!(
                    "migrations dir `{}` is a link that leaves the recipe directory (to {})",
                    m.dir,
                    real.display()
                ),
            });
        }
        let (payload, mode) = regular_file(&src, rname, "migrations")?;
        let path = format!("migrations/{name}");
        let id = name.split('.').next().unwrap_or(&name).to_string();
        migrations.push((id, path.clone()));
        files.insert(path, (payload, mode));
    }
    Ok(migrations)
}

/// Hashes every payload once, in path order (the manifest's and the tar stream's order).
fn hash_payload(files: Files) -> Result<Vec<(FileEntry, Payload)>, ReleaseError> {
    let mut entries = Vec::with_capacity(files.len());
    for (path, (payload, mode)) in files {
        let (sha256, size) = match &payload {
            Payload::Bytes(b) => (sha256_hex(b), b.len() as u64),
            Payload::File(p) => sha256_file(p).map_err(io_err(p))?,
        };
        entries.push((
            FileEntry {
                path,
                size,
                sha256,
                mode,
            },
            payload,
        ));
    }
    Ok(entries)
}

/// The image ID an offline image is recorded with: the lock's, which must agree with the
/// registry's manifest, or the registry's when the lock records none.
fn offline_config(
    offline: &OfflineImages,
    reference: &str,
    service: &str,
    arch: Arch,
    pin: &crate::lock::PlatformPin,
    lock_path: &Path,
) -> Result<String, ReleaseError> {
    let fetched = offline.config_digests.get(&pin.digest);
    match (&pin.config_digest, fetched) {
        (Some(locked), Some(seen)) if locked != seen => Err(ReleaseError::Invalid(format!(
            "image `{reference}` of service `{service}` ({arch}, {}): {} records image ID {locked}, but the registry's manifest says {seen}; run `cargo xtask lock` again",
            pin.digest,
            lock_path.display()
        ))),
        (Some(locked), _) => Ok(locked.clone()),
        (None, Some(seen)) => Ok(seen.clone()),
        (None, None) => Err(ReleaseError::Invalid(format!(
            "image `{reference}` of service `{service}` ({arch}) has no image ID: neither {} nor the fetched images record one; run `cargo xtask lock`",
            lock_path.display()
        ))),
    }
}

/// Checks the archive holds every image under its local reference.
fn check_archive(offline: &OfflineImages, images: &[Image]) -> Result<(), ReleaseError> {
    let index = image_archive::read_index(&offline.archive)
        .map_err(|e| ReleaseError::Invalid(e.to_string()))?;
    for img in images {
        let config = img.config_digest.as_deref().unwrap_or_default();
        let local = image_archive::local_reference(&img.repository, &img.digest);
        let held = index
            .image(config)
            .is_some_and(|e| e.repo_tags.contains(&local));
        if !held {
            return Err(ReleaseError::Invalid(format!(
                "image archive {} does not hold image {config} as {local} (service `{}`); build it again",
                offline.archive.display(),
                img.service
            )));
        }
    }
    Ok(())
}

/// Normalizes a relative path (`./a/../b` → `b`); `None` if it is absolute or climbs out.
fn normalize(p: &str) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::CurDir => {}
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

fn regular_file(path: &Path, recipe: &str, owner: &str) -> Result<(Payload, u32), ReleaseError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(ReleaseError::Reference {
            recipe: recipe.to_string(),
            message: format!(
                "{owner} refers to {}, which is not a regular file",
                path.display()
            ),
        });
    }
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    Ok((Payload::File(path.to_path_buf()), mode))
}

fn add_file(
    files: &mut BTreeMap<String, (Payload, u32)>,
    root: &Path,
    rel: &str,
    recipe: &str,
    owner: &str,
) -> Result<(), ReleaseError> {
    let abs = root.join(rel);
    let real = abs.canonicalize().map_err(io_err(&abs))?;
    if !real.starts_with(root) {
        return Err(ReleaseError::Reference {
            recipe: recipe.to_string(),
            message: format!(
                "{owner} refers to `{rel}`, a link that escapes the recipe directory (to {})",
                real.display()
            ),
        });
    }
    let entry = regular_file(&real, recipe, owner)?;
    files.insert(rel.to_string(), entry);
    Ok(())
}

fn add_tree(
    files: &mut BTreeMap<String, (Payload, u32)>,
    root: &Path,
    rel: &str,
    recipe: &str,
    owner: &str,
) -> Result<(), ReleaseError> {
    let abs = root.join(rel);
    let meta = std::fs::metadata(&abs).map_err(io_err(&abs))?;
    if !meta.is_dir() {
        return add_file(files, root, rel, recipe, owner);
    }
    let real = abs.canonicalize().map_err(io_err(&abs))?;
    if !real.starts_with(root) {
        return Err(ReleaseError::Reference {
            recipe: recipe.to_string(),
            message: format!("{owner} refers to `{rel}`, a link that escapes the recipe directory"),
        });
    }
    let mut names: Vec<String> = std::fs::read_dir(&abs)
        .map_err(io_err(&abs))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if names.is_empty() {
        return Err(ReleaseError::Reference {
            recipe: recipe.to_string(),
            message: format!(
                "{owner} refers to directory `{rel}`, which is empty; a bundle carries files only — add a file (e.g. .keep) to it"
            ),
        });
    }
    names.sort();
    for n in names {
        let child = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        add_tree(files, root, &child, recipe, owner)?;
    }
    Ok(())
}

/// Trusted comment embedded in a bundle's signatures.
pub fn trusted_comment(m: &Manifest, manifest_sha256: &str) -> String {
    format!(
        "smoker-release name:{} version:{} arch:{} env:{} manifest-sha256:{}",
        m.name, m.version, m.arch, m.environment, manifest_sha256
    )
}

/// One written bundle.
#[derive(Debug, Clone)]
pub struct Written {
    /// The bundle file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Its size.
    pub size: u64,
    /// The manifest written into it.
    pub manifest: Manifest,
}

/// Signs and writes one planned bundle plus its detached `.minisig` into `dir`. The file
/// appears only complete (written to a temporary name, fsynced, renamed).
pub fn write_release(plan: &Plan, key: &SecretKey, dir: &Path) -> Result<Written, ReleaseError> {
    let m = &plan.manifest;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let manifest_json = m.to_canonical_json();
    let manifest_sha = sha256_hex(&manifest_json);
    let comment = trusted_comment(m, &manifest_sha);
    let sig = key
        .sign(manifest_json.as_slice(), &comment)
        .map_err(io_err(dir))?;
    let name = smoker_format::bundle::file_name(&m.name, &m.version, m.arch);
    let path = dir.join(&name);
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    let out = std::io::BufWriter::new(tmp);
    let out = write_bundle(out, m, &sig, &plan.payload)?;
    let tmp = out.into_inner().map_err(|e| ReleaseError::Io {
        path: path.clone(),
        source: e.into_error(),
    })?;
    tmp.as_file().sync_all().map_err(io_err(&path))?;
    let (sha256, size) = sha256_file(tmp.path()).map_err(io_err(&path))?;
    let file = std::fs::File::open(tmp.path()).map_err(io_err(&path))?;
    let detached = key
        .sign(
            std::io::BufReader::new(file),
            &format!("{comment} file:{name}"),
        )
        .map_err(io_err(&path))?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(&path).map_err(|e| ReleaseError::Io {
        path: path.clone(),
        source: e.error,
    })?;
    let sig_path = dir.join(format!(
        "{name}{}",
        smoker_format::bundle::DETACHED_SIG_SUFFIX
    ));
    write_atomic(&sig_path, detached.as_bytes())?;
    Ok(Written {
        path,
        sha256,
        size,
        manifest: m.clone(),
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ReleaseError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Writes a small file atomically and durably (temp file, fsync, rename, fsync of the
/// directory), mode 644.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReleaseError> {
    smoker_format::fsio::write_atomic(path, bytes, 0o644).map_err(io_err(path))
}

/// Writes `SHA256SUMS` (sha256sum format, sorted by file name) in `dir`: the given files, plus
/// the lines of an existing `SHA256SUMS` for other files that are still there.
pub fn write_sums(dir: &Path, files: &[PathBuf]) -> Result<PathBuf, ReleaseError> {
    let path = dir.join("SHA256SUMS");
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    if let Ok(old) = std::fs::read_to_string(&path) {
        for line in old.lines() {
            if let Some((sha, name)) = line.split_once("  ")
                && dir.join(name).is_file()
            {
                sums.insert(name.to_string(), sha.to_string());
            }
        }
    }
    for f in files {
        let (sha, _) = sha256_file(f).map_err(io_err(f))?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        sums.insert(name, sha);
    }
    let text: String = sums
        .iter()
        .map(|(name, sha)| format!("{sha}  {name}\n"))
        .collect();
    write_atomic(&path, text.as_bytes())?;
    Ok(path)
}
