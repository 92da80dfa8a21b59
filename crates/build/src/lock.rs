//! Locks: every service image of a recipe pinned to a digest per architecture.
//!
//! `recipes/<name>.lock` is TOML. `cargo xtask lock` fills it from a registry; it may also be
//! written by hand. Release refuses any image reference that is not locked for a requested
//! architecture.
//!
//! References are compared in Docker's canonical form ([`canonical`]): `mongo:7.0`,
//! `docker.io/mongo:7.0` and `docker.io/library/mongo:7.0` are one image. `cargo xtask lock`
//! writes the canonical form, and records the mirror that answered (`mirror`) when the image
//! was resolved through one.

use serde::{Deserialize, Serialize};
use smoker_format::manifest::Arch;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Current lock format version.
pub const LOCK_VERSION: u32 = 1;

/// Errors reading or using a lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// No lock file.
    #[error(
        "{path} does not exist; run `cargo xtask lock --recipe {recipe}` (or write it by hand)"
    )]
    Missing {
        /// Expected path.
        path: PathBuf,
        /// Recipe name.
        recipe: String,
    },
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a valid lock.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An image is not locked for an architecture.
    #[error(
        "image `{reference}` of service `{service}` is not locked for {arch} in {path}; run `{command}` (or `cargo xtask release --lock …` to lock missing tags while releasing)"
    )]
    NotLocked {
        /// The command that locks it.
        command: String,
        /// Image reference.
        reference: String,
        /// Service using it.
        service: String,
        /// Architecture.
        arch: Arch,
        /// Lock file.
        path: PathBuf,
    },
}

/// A lock file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version; see [`LOCK_VERSION`].
    pub version: u32,
    /// Locked images.
    #[serde(default, rename = "image")]
    pub images: Vec<LockedImage>,
}

/// One image reference, locked per architecture.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// The reference in canonical form (`docker.io/library/mongo:7`); older locks may hold it
    /// as the compose file writes it (`mongo:7`), which means the same image.
    pub reference: String,
    /// The mirror that answered when the tag was resolved (its URL), if not the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
    /// Digest of the multi-platform index the tag pointed to, when it was one.
    pub index_digest: Option<String>,
    /// Per-architecture pins.
    #[serde(default)]
    pub platforms: BTreeMap<Arch, PlatformPin>,
}

/// One architecture's pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformPin {
    /// Platform manifest digest.
    pub digest: String,
    /// Image config digest (the image ID).
    pub config_digest: Option<String>,
}

impl Lock {
    /// The lock path of a recipe.
    pub fn path(recipes_dir: &Path, recipe: &str) -> PathBuf {
        recipes_dir.join(format!("{recipe}.lock"))
    }

    /// Loads a lock file.
    pub fn load(path: &Path, recipe: &str) -> Result<Lock, LockError> {
        if !path.exists() {
            return Err(LockError::Missing {
                path: path.to_path_buf(),
                recipe: recipe.to_string(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| LockError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let parse = |message: String| LockError::Parse {
            path: path.to_path_buf(),
            message,
        };
        let lock: Lock = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        if lock.version != LOCK_VERSION {
            return Err(parse(format!(
                "lock version {} is not supported (expected {LOCK_VERSION})",
                lock.version
            )));
        }
        for img in &lock.images {
            for (arch, pin) in &img.platforms {
                for d in std::iter::once(&pin.digest)
                    .chain(pin.config_digest.iter())
                    .chain(img.index_digest.iter())
                {
                    if !is_digest(d) {
                        return Err(parse(format!(
                            "`{d}` ({} for {arch}) is not a sha256 digest",
                            img.reference
                        )));
                    }
                }
            }
        }
        Ok(lock)
    }

    /// The TOML text of this lock, with a header comment.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).unwrap_or_default();
        format!(
            "# Image digests per architecture. Written by `cargo xtask lock`; review changes like code.\n{body}"
        )
    }

    /// The pin of `reference` for `arch`.
    /// References are compared in canonical form.
    pub fn get(&self, reference: &str, arch: Arch) -> Option<(&LockedImage, &PlatformPin)> {
        self.find(reference)
            .and_then(|i| i.platforms.get(&arch).map(|p| (i, p)))
    }

    /// The entry of `reference` (compared in canonical form).
    pub fn find(&self, reference: &str) -> Option<&LockedImage> {
        let want = canonical(reference);
        self.images
            .iter()
            .find(|i| i.reference == reference || canonical(&i.reference) == want)
    }
}

/// Docker's canonical form of an image reference: registry host explicit (`docker.io` for
/// Docker Hub, whose `index.docker.io` is the same), Docker Hub's official images under
/// `library/`, and `:latest` when neither tag nor digest is given. A string that is not a
/// reference is returned as it is (release reports it where it is used).
pub fn canonical(reference: &str) -> String {
    match reference.parse::<oci_client::Reference>() {
        Ok(r) => r.whole(),
        Err(_) => reference.to_string(),
    }
}

/// The canonical repository (`docker.io/library/mongo`) of a reference: what online bundles
/// pin by digest, so that the host's engine pulls the same image through its own mirrors.
pub fn canonical_repository(reference: &str) -> String {
    match reference.parse::<oci_client::Reference>() {
        Ok(r) => format!("{}/{}", r.registry(), r.repository()),
        Err(_) => repository_of(reference).to_string(),
    }
}

pub use smoker_format::digest::is_digest;

/// Splits a reference into repository (without tag or digest) and the tag or digest part.
pub fn repository_of(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    // A tag's colon comes after the last slash (a registry port's colon comes before it).
    match without_digest.rfind(':') {
        Some(c) if !without_digest[c..].contains('/') => &without_digest[..c],
        _ => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_strips_tag_and_digest_but_not_port() {
        assert_eq!(repository_of("mongo:7"), "mongo");
        assert_eq!(
            repository_of("127.0.0.1:5000/a/b:1.2"),
            "127.0.0.1:5000/a/b"
        );
        assert_eq!(repository_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("x/y@sha256:00"), "x/y");
    }

    #[test]
    fn canonical_names_are_dockers() {
        assert_eq!(canonical("mongo:7.0"), "docker.io/library/mongo:7.0");
        assert_eq!(canonical("mongo"), "docker.io/library/mongo:latest");
        assert_eq!(
            canonical("index.docker.io/mongo:7.0"),
            "docker.io/library/mongo:7.0"
        );
        assert_eq!(canonical("someorg/app:1"), "docker.io/someorg/app:1");
        assert_eq!(canonical("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000/a/b:1");
        assert_eq!(canonical("localhost/a:1"), "localhost/a:1");
        assert_eq!(canonical_repository("mongo:7.0"), "docker.io/library/mongo");
        assert_eq!(
            canonical_repository("127.0.0.1:5000/a/b:1"),
            "127.0.0.1:5000/a/b"
        );
        let lock = Lock {
            version: 1,
            images: vec![LockedImage {
                reference: "mongo:7.0".into(),
                mirror: None,
                index_digest: None,
                platforms: BTreeMap::new(),
            }],
        };
        assert!(lock.find("docker.io/library/mongo:7.0").is_some());
        assert!(lock.find("mongo:7.1").is_none());
    }
}
