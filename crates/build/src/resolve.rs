//! `cargo xtask lock`: every image tag of a recipe resolved to per-architecture digests.
//!
//! For each image reference the compose file names (in any of the recipe's environments, after
//! interpolation), the registry is asked what the tag points to:
//! - an OCI image index or a Docker manifest list: its digest is recorded as `index_digest`,
//!   and for each architecture the entry whose platform matches exactly (`linux/amd64`;
//!   `linux/arm/v7` — never arm64 or arm/v6; a `linux/arm` entry without a variant counts as
//!   v7, as Docker reads it) gives the platform `digest`;
//! - a single image manifest: it counts for the platform its config states, and only for that.
//!
//! Each platform manifest is fetched to record its config digest (the image ID Docker will
//! report), and the config itself to check it really is for that platform. A tag that has no
//! image for a requested platform is an error naming the image and the platform.
//!
//! References are locked in canonical form (`docker.io/library/mongo:7.0`,
//! [`crate::lock::canonical`]) and fetched through the project's mirrors
//! ([`crate::mirrors`]); the mirror that answered is recorded with the image.

use crate::lock::{LOCK_VERSION, Lock, LockedImage, PlatformPin, canonical};
use crate::recipe::Recipe;
use crate::registry::{
    ANY_MANIFEST, Fetched, Fit, IMAGE_MANIFEST, ImageConfig, Platform, Registries, fit,
    parse_reference, platform_name,
};
use anyhow::{Context as _, Result, bail};
use smoker_format::manifest::Arch;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every image reference a recipe's compose file names, over all its environments, in
/// canonical form; `version` is the value of the recipe's `version_var`, if any.
pub fn references(recipe: &Recipe, version: Option<&str>) -> Result<BTreeSet<String>> {
    let compose = recipe.dir.join(&recipe.file.compose);
    let text = std::fs::read_to_string(&compose)
        .with_context(|| format!("reading {}", compose.display()))?;
    let mut envs = recipe.environments();
    if envs.is_empty() {
        envs.push(String::new());
    }
    let mut out = BTreeSet::new();
    for env in envs {
        let config = recipe.interpolation(&env, version).unwrap_or_default();
        let info = crate::compose::analyze(&text, &config)
            .with_context(|| format!("recipe `{}`, environment `{env}`", recipe.name))?;
        out.extend(info.services.into_iter().map(|s| canonical(&s.image)));
    }
    Ok(out)
}

/// Resolves one reference for `arches`.
pub fn resolve(reg: &Registries, reference: &str, arches: &[Arch]) -> Result<LockedImage> {
    let r = parse_reference(reference)?;
    let top = reg
        .manifest(&r, &ANY_MANIFEST)
        .with_context(|| format!("resolving `{reference}`"))?;
    let mut platforms = BTreeMap::new();
    if top.doc.is_index() {
        let entries = top.doc.manifests.clone().unwrap_or_default();
        for &arch in arches {
            let best = entries
                .iter()
                .filter_map(|e| e.platform.as_ref().map(|p| (fit(arch, p), e)))
                .filter(|(f, _)| *f != Fit::No)
                .max_by_key(|(f, _)| *f);
            let Some((_, entry)) = best else {
                let mut have: Vec<String> = entries
                    .iter()
                    .filter_map(|e| e.platform.as_ref())
                    .filter(|p| p.os != "unknown")
                    .map(Platform::to_string)
                    .collect();
                have.dedup();
                bail!(
                    "image `{reference}` has no {} image: its index {} lists {}",
                    platform_name(arch),
                    top.digest,
                    if have.is_empty() {
                        "no platforms".to_string()
                    } else {
                        have.join(", ")
                    }
                );
            };
            let by_digest = parse_reference(&format!("{}@{}", repo_of(&r), entry.digest))?;
            let m = reg.manifest(&by_digest, &IMAGE_MANIFEST).with_context(|| {
                format!(
                    "fetching the {} manifest {} of `{reference}`",
                    platform_name(arch),
                    entry.digest
                )
            })?;
            if m.digest != entry.digest {
                bail!(
                    "registry served {} for `{reference}`'s {} entry {}",
                    m.digest,
                    platform_name(arch),
                    entry.digest
                );
            }
            if m.doc.is_index() {
                bail!(
                    "the {} entry of `{reference}`'s index is itself an index; nested indexes are not supported",
                    platform_name(arch)
                );
            }
            let (config_digest, platform) = config_of(reg, &by_digest, &m, reference)?;
            if fit(arch, &platform) == Fit::No {
                bail!(
                    "image `{reference}`: its index says {} is {}, but that image's config says {platform}",
                    entry.digest,
                    platform_name(arch)
                );
            }
            platforms.insert(
                arch,
                PlatformPin {
                    digest: m.digest,
                    config_digest: Some(config_digest),
                },
            );
        }
        Ok(LockedImage {
            reference: canonical(reference),
            mirror: top.mirror,
            index_digest: Some(top.digest),
            platforms,
        })
    } else {
        let (config_digest, platform) = config_of(reg, &r, &top, reference)?;
        for &arch in arches {
            if fit(arch, &platform) == Fit::No {
                bail!(
                    "image `{reference}` has no {} image: it is a single-platform image for {platform} (digest {}); push a multi-platform index, or lock only the architectures it has with --arch",
                    platform_name(arch),
                    top.digest
                );
            }
            platforms.insert(
                arch,
                PlatformPin {
                    digest: top.digest.clone(),
                    config_digest: Some(config_digest.clone()),
                },
            );
        }
        Ok(LockedImage {
            reference: canonical(reference),
            mirror: top.mirror.clone(),
            index_digest: None,
            platforms,
        })
    }
}

/// `registry/repository` of a reference, as written for a digest reference.
fn repo_of(r: &oci_client::Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// The config digest and platform of an image manifest.
fn config_of(
    reg: &Registries,
    r: &oci_client::Reference,
    m: &Fetched,
    reference: &str,
) -> Result<(String, Platform)> {
    let Some(config) = &m.doc.config else {
        bail!(
            "manifest {} of `{reference}` has no config; it is not a container image",
            m.digest
        );
    };
    let bytes = reg
        .small_blob(r, config)
        .with_context(|| format!("fetching the config of `{reference}` ({})", m.digest))?;
    let parsed: ImageConfig = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "the config {} of `{reference}` is not an image config",
            config.digest
        )
    })?;
    Ok((config.digest.clone(), parsed.platform()))
}

/// What changed between two locks, one line per change.
pub fn diff(old: &Lock, new: &Lock) -> Vec<String> {
    let short = |d: &str| {
        let h = d.trim_start_matches("sha256:");
        format!("sha256:{}", &h[..h.len().min(12)])
    };
    // Keyed by canonical reference, so a lock written before references were canonical
    // (`mongo:7.0`) compares with its canonical successor.
    let old_by: BTreeMap<String, &LockedImage> = old
        .images
        .iter()
        .map(|i| (canonical(&i.reference), i))
        .collect();
    let new_by: BTreeMap<String, &LockedImage> = new
        .images
        .iter()
        .map(|i| (canonical(&i.reference), i))
        .collect();
    let mut lines = Vec::new();
    let mut unchanged = 0;
    for (key, n) in &new_by {
        let reference = &n.reference;
        match old_by.get(key) {
            None => {
                let pins: Vec<String> = n
                    .platforms
                    .iter()
                    .map(|(a, p)| format!("{a} {}", short(&p.digest)))
                    .collect();
                let via = n
                    .mirror
                    .as_deref()
                    .map(|m| format!("  (via {m})"))
                    .unwrap_or_default();
                lines.push(format!("  + {reference}  {}{via}", pins.join("  ")));
            }
            Some(o) if o.index_digest == n.index_digest && o.platforms == n.platforms => {
                unchanged += 1
            }
            Some(o) => {
                let mut changes = Vec::new();
                if o.index_digest != n.index_digest {
                    changes.push(format!(
                        "index {} → {}",
                        o.index_digest
                            .as_deref()
                            .map(short)
                            .unwrap_or("none".into()),
                        n.index_digest
                            .as_deref()
                            .map(short)
                            .unwrap_or("none".into())
                    ));
                }
                let arches: BTreeSet<&Arch> =
                    o.platforms.keys().chain(n.platforms.keys()).collect();
                for a in arches {
                    match (o.platforms.get(a), n.platforms.get(a)) {
                        (Some(x), Some(y)) if x == y => {}
                        (Some(x), Some(y)) if x.digest == y.digest => changes.push(format!(
                            "{a} image ID {} → {}",
                            x.config_digest
                                .as_deref()
                                .map(short)
                                .unwrap_or("none".into()),
                            y.config_digest
                                .as_deref()
                                .map(short)
                                .unwrap_or("none".into())
                        )),
                        (Some(x), Some(y)) => {
                            changes.push(format!("{a} {} → {}", short(&x.digest), short(&y.digest)))
                        }
                        (None, Some(y)) => changes.push(format!("{a} added {}", short(&y.digest))),
                        (Some(x), None) => {
                            changes.push(format!("{a} dropped (was {})", short(&x.digest)))
                        }
                        (None, None) => {}
                    }
                }
                lines.push(format!("  ~ {reference}  {}", changes.join(", ")));
            }
        }
    }
    for (key, o) in &old_by {
        if !new_by.contains_key(key) {
            let reference = &o.reference;
            lines.push(format!("  - {reference}  (no longer used by the recipe)"));
        }
    }
    if unchanged > 0 {
        lines.push(format!("  = {unchanged} image(s) unchanged"));
    }
    lines
}

/// The lock of a recipe as it is on disk, or an empty one.
fn previous_lock(path: &Path, name: &str) -> Result<Lock> {
    Ok(if path.exists() {
        Lock::load(path, name)?
    } else {
        Lock {
            version: LOCK_VERSION,
            images: Vec::new(),
        }
    })
}

/// `arches`, or when empty: the architectures of `old`, or amd64 and armv7 for a new lock.
fn lock_arches(old: &Lock, arches: &[Arch]) -> Vec<Arch> {
    if !arches.is_empty() {
        return arches.to_vec();
    }
    let previous: BTreeSet<Arch> = old
        .images
        .iter()
        .flat_map(|i| i.platforms.keys().copied())
        .collect();
    if previous.is_empty() {
        Arch::ALL.to_vec()
    } else {
        previous.into_iter().collect()
    }
}

fn resolve_all(
    reg: &Registries,
    refs: &BTreeSet<String>,
    arches: &[Arch],
) -> Result<Vec<LockedImage>> {
    let mut images = Vec::new();
    for reference in refs {
        eprintln!(
            "resolving {reference} for {}",
            arches
                .iter()
                .map(|a| platform_name(*a))
                .collect::<Vec<_>>()
                .join(", ")
        );
        images.push(resolve(reg, reference, arches)?);
    }
    Ok(images)
}

/// `resolved` replacing the entries of `old` for the same images; the other entries of `old`
/// are kept when `keep_others`. Sorted by canonical reference.
fn merged(old: &Lock, resolved: Vec<LockedImage>, keep_others: bool) -> Lock {
    let mut by: BTreeMap<String, LockedImage> = BTreeMap::new();
    if keep_others {
        for i in &old.images {
            by.insert(canonical(&i.reference), i.clone());
        }
    }
    for i in resolved {
        by.insert(canonical(&i.reference), i);
    }
    Lock {
        version: LOCK_VERSION,
        images: by.into_values().collect(),
    }
}

/// Prints the lock diff under the lock's path and writes the new lock.
fn write_lock(path: &Path, old: &Lock, new: &Lock) -> Result<()> {
    let changes = diff(old, new);
    println!("{}:", path.display());
    if changes.iter().all(|l| l.starts_with("  =")) && old.images.len() == new.images.len() {
        println!("  unchanged ({} image(s))", new.images.len());
    } else {
        for l in &changes {
            println!("{l}");
        }
    }
    crate::release::write_atomic(path, new.to_toml().as_bytes())?;
    Ok(())
}

/// Locks one recipe: resolves every reference, prints what changed, writes the lock file.
/// `arches` empty means: the architectures of the previous lock, or amd64 and armv7.
///
/// `version` sets the recipe's `version_var` for interpolation (without it, the compose
/// file's default applies). A recipe with a `version_var` keeps the lock's entries of other
/// versions (they are what earlier releases are rebuilt from); any other recipe's lock holds
/// exactly the images its compose file names.
pub fn lock_recipe(
    reg: &Registries,
    recipes_dir: &Path,
    name: &str,
    arches: &[Arch],
    version: Option<&str>,
) -> Result<()> {
    let recipe = Recipe::load(recipes_dir, name)?;
    if let (Some(var), None) = (&recipe.file.version_var, version) {
        eprintln!(
            "note: recipe `{name}` takes the release version in ${{{var}}}; without --version the compose file's default applies (lock a release's tags with `cargo xtask lock --recipe {name} --version V`)"
        );
    }
    let path = Lock::path(recipes_dir, name);
    let old = previous_lock(&path, name)?;
    let arches = lock_arches(&old, arches);
    let images = resolve_all(reg, &references(&recipe, version)?, &arches)?;
    let new = merged(&old, images, recipe.file.version_var.is_some());
    write_lock(&path, &old, &new)
}

/// `release --lock`: resolves only the images of `version` that the lock lacks for one of
/// `arches` (for those and the lock's other architectures), prints the lock diff, writes the
/// lock and returns it. Nothing is asked of a registry when every image is locked.
pub fn lock_missing(
    reg: &Registries,
    recipes_dir: &Path,
    name: &str,
    arches: &[Arch],
    version: &str,
) -> Result<Lock> {
    let recipe = Recipe::load(recipes_dir, name)?;
    let path = Lock::path(recipes_dir, name);
    let old = previous_lock(&path, name)?;
    let refs = references(&recipe, Some(version))?;
    let missing: BTreeSet<String> = refs
        .into_iter()
        .filter(|r| arches.iter().any(|a| old.get(r, *a).is_none()))
        .collect();
    if missing.is_empty() {
        return Ok(old);
    }
    let mut all: BTreeSet<Arch> = arches.iter().copied().collect();
    all.extend(lock_arches(&old, &[]));
    if old.images.is_empty() {
        all = arches.iter().copied().collect();
    }
    let all: Vec<Arch> = all.into_iter().collect();
    let images = resolve_all(reg, &missing, &all)?;
    let new = merged(&old, images, true);
    write_lock(&path, &old, &new)?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(reference: &str, index: Option<&str>, pins: &[(Arch, &str)]) -> LockedImage {
        LockedImage {
            reference: reference.into(),
            mirror: None,
            index_digest: index.map(str::to_string),
            platforms: pins
                .iter()
                .map(|(a, d)| {
                    (
                        *a,
                        PlatformPin {
                            digest: d.to_string(),
                            config_digest: None,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn diff_names_added_changed_removed_and_unchanged() {
        let a = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        let b = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let old = Lock {
            version: 1,
            images: vec![
                img("x:1", None, &[(Arch::Amd64, a)]),
                img("y:1", None, &[(Arch::Amd64, a)]),
                img("gone:1", None, &[(Arch::Amd64, a)]),
            ],
        };
        let new = Lock {
            version: 1,
            images: vec![
                img("x:1", None, &[(Arch::Amd64, b)]),
                img("y:1", None, &[(Arch::Amd64, a)]),
                img("new:1", None, &[(Arch::Armv7, a)]),
            ],
        };
        let d = diff(&old, &new).join("\n");
        assert!(d.contains("+ new:1  armv7 sha256:aaaaaaaaaaaa"), "{d}");
        assert!(
            d.contains("~ x:1  amd64 sha256:aaaaaaaaaaaa → sha256:bbbbbbbbbbbb"),
            "{d}"
        );
        assert!(d.contains("- gone:1"), "{d}");
        assert!(d.contains("= 1 image(s) unchanged"), "{d}");
    }
}
