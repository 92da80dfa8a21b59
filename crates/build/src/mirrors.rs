//! Registry mirrors: `recipes/registries.toml`, where the release side fetches an image from.
//!
//! A project may declare, per registry host, an ordered list of mirrors (pull-through caches,
//! an air-gapped site's registry, a CI cache):
//!
//! ```toml
//! [registry."docker.io"]
//! mirrors = ["http://127.0.0.1:5000", "https://harbor.example/dockerhub-proxy"]
//! plain_http = false   # http:// mirrors off loopback need `plain_http = true`
//! upstream = true      # after the mirrors, ask docker.io itself (default true)
//! ```
//!
//! `cargo xtask lock` and `release --offline` ask the mirrors in order, then the registry
//! itself (unless `upstream = false`). The image keeps its canonical name everywhere (the lock,
//! the manifest, the pin override): a mirror is only where the bytes come from, and digests
//! do not depend on it. A mirror URL may carry a path, which prefixes the repository
//! (`https://harbor.example/dockerhub-proxy` serves `docker.io/library/mongo` as
//! `harbor.example/dockerhub-proxy/library/mongo`). Plain HTTP is used only for a mirror
//! written `http://…` that is on loopback or whose registry declares `plain_http = true`.
//! Credentials for a mirror come from the Docker config under the mirror's host, like any
//! registry's.

use oci_client::Reference;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// File name of the mirrors configuration inside `recipes/`.
pub const REGISTRIES_FILE: &str = "registries.toml";

/// Errors reading `registries.toml`.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistriesFile {
    #[serde(default)]
    registry: BTreeMap<String, Section>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    #[serde(default)]
    mirrors: Vec<String>,
    #[serde(default)]
    plain_http: bool,
    #[serde(default = "yes")]
    upstream: bool,
}

fn yes() -> bool {
    true
}

/// One mirror of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The URL as configured, without a trailing `/` (recorded in the lock).
    pub url: String,
    /// `host[:port]`.
    pub host: String,
    /// Repository prefix (the URL's path), empty for none.
    pub prefix: String,
    /// Spoken to over plain HTTP.
    pub plain_http: bool,
}

/// Where an image may be fetched from, in the order to try.
#[derive(Debug, Clone)]
pub struct Source {
    /// The reference to ask that source for.
    pub reference: Reference,
    /// The mirror's URL, `None` for the registry itself.
    pub mirror: Option<String>,
}

impl Source {
    /// For messages: the mirror's URL or the registry's host.
    pub fn label(&self) -> String {
        match &self.mirror {
            Some(url) => format!("mirror {url}"),
            None => format!("registry {}", self.reference.registry()),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    mirrors: Vec<Mirror>,
    upstream: bool,
}

/// The mirrors of every configured registry (empty: every image from its own registry).
#[derive(Debug, Clone, Default)]
pub struct Mirrors {
    by_registry: BTreeMap<String, Entry>,
    path: Option<PathBuf>,
}

/// Docker Hub's names, all meaning `docker.io`.
pub fn normalize_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        other => other.to_ascii_lowercase(),
    }
}

impl Mirrors {
    /// No mirrors.
    pub fn none() -> Mirrors {
        Mirrors::default()
    }

    /// Reads `recipes_dir/registries.toml`; no file means no mirrors.
    pub fn load(recipes_dir: &Path) -> Result<Mirrors, MirrorError> {
        let path = recipes_dir.join(REGISTRIES_FILE);
        if !path.exists() {
            return Ok(Mirrors::none());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| MirrorError::Io {
            path: path.clone(),
            source,
        })?;
        Mirrors::parse(&text, &path)
    }

    /// Parses the text of a `registries.toml` (`path` is for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Mirrors, MirrorError> {
        let invalid = |message: String| MirrorError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let file: RegistriesFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut by_registry = BTreeMap::new();
        for (registry, section) in file.registry {
            let key = normalize_registry(&registry);
            let mut mirrors = Vec::new();
            for url in &section.mirrors {
                let m = parse_mirror(url, section.plain_http).map_err(|why| {
                    invalid(format!(
                        "mirror `{url}` of [registry.\"{registry}\"]: {why}"
                    ))
                })?;
                mirrors.push(m);
            }
            if mirrors.is_empty() && !section.upstream {
                return Err(invalid(format!(
                    "[registry.\"{registry}\"] has no mirrors and `upstream = false`: nothing could serve its images; list a mirror or remove the section"
                )));
            }
            if by_registry
                .insert(
                    key.clone(),
                    Entry {
                        mirrors,
                        upstream: section.upstream,
                    },
                )
                .is_some()
            {
                return Err(invalid(format!(
                    "registry `{key}` is configured twice (Docker Hub's names index.docker.io, registry-1.docker.io and docker.io are one registry); keep one section"
                )));
            }
        }
        Ok(Mirrors {
            by_registry,
            path: Some(path.to_path_buf()),
        })
    }

    /// The file these mirrors came from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True when no registry has mirrors.
    pub fn is_empty(&self) -> bool {
        self.by_registry.is_empty()
    }

    /// Hosts of mirrors spoken to over plain HTTP.
    pub fn plain_http_hosts(&self) -> BTreeSet<String> {
        self.by_registry
            .values()
            .flat_map(|e| e.mirrors.iter())
            .filter(|m| m.plain_http)
            .map(|m| m.host.clone())
            .collect()
    }

    /// Where to fetch `r` from, in order: its registry's mirrors, then the registry itself
    /// (unless the registry is configured with `upstream = false`).
    pub fn sources(&self, r: &Reference) -> Vec<Source> {
        let key = normalize_registry(r.registry());
        let Some(entry) = self.by_registry.get(&key) else {
            return vec![Source {
                reference: r.clone(),
                mirror: None,
            }];
        };
        let mut out: Vec<Source> = entry
            .mirrors
            .iter()
            .map(|m| {
                let repository = if m.prefix.is_empty() {
                    r.repository().to_string()
                } else {
                    format!("{}/{}", m.prefix, r.repository())
                };
                let reference = match (r.tag(), r.digest()) {
                    (Some(t), Some(d)) => Reference::with_tag_and_digest(
                        m.host.clone(),
                        repository,
                        t.to_string(),
                        d.to_string(),
                    ),
                    (_, Some(d)) => Reference::with_digest(m.host.clone(), repository, d.into()),
                    (t, None) => Reference::with_tag(
                        m.host.clone(),
                        repository,
                        t.unwrap_or("latest").to_string(),
                    ),
                };
                Source {
                    reference,
                    mirror: Some(m.url.clone()),
                }
            })
            .collect();
        if entry.upstream {
            out.push(Source {
                reference: r.clone(),
                mirror: None,
            });
        }
        out
    }
}

/// True for registries reached over loopback (`127.0.0.0/8`, `::1`, `localhost`): the only
/// ones spoken to over plain HTTP without being declared.
pub fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(registry)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses one mirror URL.
fn parse_mirror(url: &str, plain_http_declared: bool) -> Result<Mirror, String> {
    let (plain, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (true, rest)
    } else {
        return Err("must start with https:// (or http:// for a plain-HTTP mirror)".into());
    };
    let rest = rest.trim_end_matches('/');
    let (host, prefix) = match rest.split_once('/') {
        Some((h, p)) => (h, p),
        None => (rest, ""),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return Err(format!("`{host}` is not a host[:port]"));
    }
    if prefix.split('/').any(|p| {
        !prefix.is_empty()
            && (p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)))
    }) {
        return Err(format!(
            "the path `{prefix}` is not a repository prefix (lowercase letters, digits, `.`, `_`, `-`, separated by `/`)"
        ));
    }
    let loopback = is_loopback(host);
    if plain && !loopback && !plain_http_declared {
        return Err(format!(
            "plain HTTP to {host}, which is not on loopback, must be declared: add `plain_http = true` to this registry's section (anyone on the path can then change what a tag resolves to), or use https://"
        ));
    }
    Ok(Mirror {
        url: format!(
            "{}://{}",
            if plain { "http" } else { "https" },
            rest.to_ascii_lowercase()
        ),
        host: host.to_ascii_lowercase(),
        prefix: prefix.to_string(),
        plain_http: plain || loopback,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Mirrors, String> {
        Mirrors::parse(text, Path::new("registries.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn docker_hub_names_go_through_their_mirrors_in_order() {
        let m = load(
            "[registry.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:5000\", \"https://harbor.example/hub-proxy/\"]\n",
        )
        .expect("valid");
        let r: Reference = "mongo:7.0".parse().expect("ref");
        let s = m.sources(&r);
        let names: Vec<(String, Option<String>)> = s
            .iter()
            .map(|s| (s.reference.whole(), s.mirror.clone()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "127.0.0.1:5000/library/mongo:7.0".to_string(),
                    Some("http://127.0.0.1:5000".to_string())
                ),
                (
                    "harbor.example/hub-proxy/library/mongo:7.0".to_string(),
                    Some("https://harbor.example/hub-proxy".to_string())
                ),
                ("docker.io/library/mongo:7.0".to_string(), None),
            ]
        );
        assert_eq!(
            m.plain_http_hosts().into_iter().collect::<Vec<_>>(),
            ["127.0.0.1:5000"]
        );
        // Another registry is asked directly.
        let g: Reference = "ghcr.io/a/b:1".parse().expect("ref");
        assert_eq!(m.sources(&g).len(), 1);
        // A digest reference keeps its digest on the mirror.
        let d: Reference = "index.docker.io/someorg/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            .parse()
            .expect("ref");
        assert_eq!(
            m.sources(&d)[0].reference.whole(),
            "127.0.0.1:5000/someorg/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
        );
    }

    #[test]
    fn plain_http_off_loopback_must_be_declared() {
        let err = load("[registry.\"docker.io\"]\nmirrors = [\"http://10.0.0.5:5000\"]\n")
            .expect_err("undeclared plain HTTP");
        assert!(err.contains("plain_http = true"), "{err}");
        let ok = load(
            "[registry.\"docker.io\"]\nmirrors = [\"http://10.0.0.5:5000\"]\nplain_http = true\n",
        )
        .expect("declared");
        assert!(ok.plain_http_hosts().contains("10.0.0.5:5000"));
        let err = load("[registry.\"docker.io\"]\nmirrors = [\"ftp://x\"]\n").expect_err("scheme");
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn upstream_false_leaves_only_the_mirrors_and_duplicates_are_refused() {
        let m =
            load("[registry.\"docker.io\"]\nmirrors = [\"https://m.example\"]\nupstream = false\n")
                .expect("valid");
        let r: Reference = "someorg/app:1".parse().expect("ref");
        let s = m.sources(&r);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].reference.whole(), "m.example/someorg/app:1");
        let err = load(
            "[registry.\"docker.io\"]\nmirrors = [\"https://a.example\"]\n[registry.\"index.docker.io\"]\nmirrors = [\"https://b.example\"]\n",
        )
        .expect_err("twice");
        assert!(err.contains("configured twice"), "{err}");
        let err = load("[registry.\"docker.io\"]\nupstream = false\n").expect_err("nothing");
        assert!(err.contains("nothing could serve"), "{err}");
    }
}
