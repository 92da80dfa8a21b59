//! What a stack needs of a host's Docker Engine and compose front end, and the problems a host
//! (or a recipe's declared host floor) has with it.
//!
//! The release side reads the needs from the compose file and signs them in the manifest
//! ([`crate::manifest::Manifest::requires`]); the installer compares them with the engine and
//! compose it finds before anything changes, and `cargo xtask release` compares them with the
//! recipe's `[hosts]` floor, so a bundle the hosts cannot run is refused before it ships. One
//! function, [`problems`], decides for both.

use crate::manifest::Arch;
pub use crate::manifest::Needs;
use serde::{Deserialize, Serialize};

/// Engine version from which healthcheck `start_interval` works (API 1.44).
pub const START_INTERVAL_ENGINE: (u32, u32) = (25, 0);

/// A compose front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compose {
    /// `docker-compose` 1.x.
    V1,
    /// `docker compose` 2.x.
    V2,
}

impl std::str::FromStr for Compose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "v1" | "1" => Ok(Compose::V1),
            "v2" | "2" => Ok(Compose::V2),
            other => Err(format!(
                "unknown compose front end `{other}` (expected v1 or v2)"
            )),
        }
    }
}

/// What a host has (found by the installer, or declared as the floor of a recipe's hosts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Docker Engine version (`major.minor`), when known.
    pub engine: Option<(u32, u32)>,
    /// Compose front end, when known.
    pub compose: Option<Compose>,
    /// Architecture.
    pub arch: Arch,
}

/// One thing the host cannot run, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The service concerned, when one is.
    pub service: Option<String>,
    /// What is not supported and why, with the fix.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.service {
            Some(s) => write!(f, "service `{s}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Parses the `major.minor` of a Docker Engine version (`20.10.24+dfsg1`, `25.0`, `24`).
pub fn engine_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The OCI platforms an architecture's host runs natively.
fn native_platforms(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::Amd64 => &["linux/amd64", "amd64"],
        Arch::Armv7 => &["linux/arm/v7", "linux/arm", "arm/v7", "arm"],
    }
}

/// Every problem `host` has with `needs`, each with its fix; empty when it runs them all.
/// Unknown host facts (`None`) raise nothing.
pub fn problems(needs: &Needs, host: &Host) -> Vec<Problem> {
    let mut out = Vec::new();
    if let Some(engine) = host.engine
        && engine < START_INTERVAL_ENGINE
    {
        for s in &needs.start_interval {
            out.push(Problem {
                service: Some(s.clone()),
                message: format!(
                    "healthcheck `start_interval` needs Docker Engine {}.{} or later, the host has {}.{}; remove `start_interval` (keep `start_period`) or upgrade the engine",
                    START_INTERVAL_ENGINE.0, START_INTERVAL_ENGINE.1, engine.0, engine.1
                ),
            });
        }
    }
    if needs.project_name && host.compose == Some(Compose::V1) {
        out.push(Problem {
            service: None,
            message: "the compose file sets a top-level `name:`, which docker-compose v1 rejects; remove it (the installer names the project) or install the docker compose v2 plugin".into(),
        });
    }
    for (s, platform) in &needs.platforms {
        let p = platform.trim().to_ascii_lowercase();
        if !native_platforms(host.arch).contains(&p.as_str()) {
            out.push(Problem {
                service: Some(s.clone()),
                message: format!(
                    "`platform: {platform}` is not the host's ({}); the image would need emulation — remove `platform:` and lock the image for {}",
                    native_platforms(host.arch)[0],
                    host.arch
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(engine: &str, compose: Compose) -> Host {
        Host {
            engine: engine_version(engine),
            compose: Some(compose),
            arch: Arch::Armv7,
        }
    }

    #[test]
    fn each_feature_is_refused_only_where_the_host_lacks_it() {
        let needs = Needs {
            start_interval: vec!["db".into()],
            project_name: true,
            platforms: [
                ("web".to_string(), "linux/amd64".to_string()),
                ("api".to_string(), "linux/arm/v7".to_string()),
            ]
            .into(),
        };
        let old = problems(&needs, &host("20.10.24+dfsg1", Compose::V1));
        let text: Vec<String> = old.iter().map(ToString::to_string).collect();
        assert_eq!(old.len(), 3, "{text:#?}");
        assert!(text[0].starts_with("service `db`: healthcheck `start_interval` needs Docker Engine 25.0 or later, the host has 20.10"), "{text:#?}");
        assert!(text[1].contains("top-level `name:`"), "{text:#?}");
        assert!(
            text[2].starts_with("service `web`: `platform: linux/amd64`"),
            "{text:#?}"
        );
        let new = problems(&needs, &host("25.0.3", Compose::V2));
        assert_eq!(new.len(), 1, "{new:#?}");
        assert_eq!(new[0].service.as_deref(), Some("web"));
        assert!(problems(&Needs::default(), &host("1.0", Compose::V1)).is_empty());
    }

    #[test]
    fn engine_versions_parse_as_docker_prints_them() {
        assert_eq!(engine_version("20.10.24+dfsg1"), Some((20, 10)));
        assert_eq!(engine_version("25.0"), Some((25, 0)));
        assert_eq!(engine_version("24"), Some((24, 0)));
        assert_eq!(engine_version("v28.2.2"), Some((28, 2)));
        assert_eq!(engine_version("nonsense"), None);
    }
}
