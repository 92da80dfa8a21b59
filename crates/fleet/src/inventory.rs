//! The fleet inventory (`fleet.toml`): hosts with their SSH address, profile, architecture,
//! environment and groups, defaults for everyone and per group, and optionally a `discover`
//! command whose JSON output lists more hosts (e.g. a filter over `tailscale status --json`).
//!
//! ```toml
//! [defaults]                      # every host
//! installer = ["sudo", "smoker-install"]
//! remote_dir = "/var/tmp/smoker-bundles"
//!
//! [groups.pis]                    # hosts of group `pis` (a host's own fields win)
//! arch = "armv7"
//! profile = "device"
//! environment = "prod"
//!
//! [[hosts]]
//! name = "pi-kitchen"
//! ssh = "pi@100.64.0.7"
//! groups = ["pis"]
//!
//! [discover]                      # prints [{"name": …, "ssh": …, "groups": […]}, …]
//! command = ["sh", "-c", "tailscale status --json | jq '…'"]
//! ```
//!
//! A host's setting is its own, else the first of its groups (in the order listed) that sets
//! it, else `[defaults]`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Settings a host, a group or the defaults may give.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Profile (the bundle's name).
    pub profile: Option<String>,
    /// Architecture (`amd64`, `armv7`).
    pub arch: Option<String>,
    /// Environment.
    pub environment: Option<String>,
    /// SSH port.
    pub port: Option<u16>,
    /// SSH identity file.
    pub identity: Option<String>,
    /// Extra `ssh -o` options (`Key=value`).
    pub ssh_options: Option<Vec<String>>,
    /// The installer command on the host, with its global options (`--root`, …).
    pub installer: Option<Vec<String>>,
    /// Extra arguments of `apply` and `stage` (`--key`, `--env-file`, `--project`, …).
    pub apply_args: Option<Vec<String>>,
    /// Directory on the host the bundles are copied into.
    pub remote_dir: Option<String>,
}

impl Settings {
    /// `self` with every unset field taken from `other`.
    fn or(self, other: &Settings) -> Settings {
        Settings {
            profile: self.profile.or_else(|| other.profile.clone()),
            arch: self.arch.or_else(|| other.arch.clone()),
            environment: self.environment.or_else(|| other.environment.clone()),
            port: self.port.or(other.port),
            identity: self.identity.or_else(|| other.identity.clone()),
            ssh_options: self.ssh_options.or_else(|| other.ssh_options.clone()),
            installer: self.installer.or_else(|| other.installer.clone()),
            apply_args: self.apply_args.or_else(|| other.apply_args.clone()),
            remote_dir: self.remote_dir.or_else(|| other.remote_dir.clone()),
        }
    }
}

/// One host as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Unique name.
    pub name: String,
    /// SSH destination (`user@address` or `address`).
    pub ssh: String,
    /// Groups it belongs to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Its own settings.
    #[serde(flatten)]
    pub settings: Settings,
}

/// The discover command.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discover {
    /// Program and arguments; its stdout is a JSON array of hosts (fields as `[[hosts]]`).
    pub command: Vec<String>,
}

/// The file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryFile {
    /// Defaults for every host.
    #[serde(default)]
    pub defaults: Settings,
    /// Defaults per group.
    #[serde(default)]
    pub groups: BTreeMap<String, Settings>,
    /// Hosts.
    #[serde(default)]
    pub hosts: Vec<HostEntry>,
    /// Optional discovery.
    pub discover: Option<Discover>,
}

/// A host with every setting resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Host {
    /// Name.
    pub name: String,
    /// SSH destination.
    pub ssh: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Profile.
    pub profile: String,
    /// Architecture.
    pub arch: String,
    /// Environment.
    pub environment: String,
    /// SSH port (22).
    pub port: u16,
    /// Identity file.
    pub identity: Option<String>,
    /// Extra ssh options.
    pub ssh_options: Vec<String>,
    /// Installer command.
    pub installer: Vec<String>,
    /// Extra apply/stage arguments.
    pub apply_args: Vec<String>,
    /// Remote bundle directory.
    pub remote_dir: String,
}

/// What is wrong with an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Unreadable file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML for an inventory.
    #[error("{path}: {source}")]
    Toml {
        /// The file.
        path: String,
        /// The cause.
        source: toml::de::Error,
    },
    /// The discover command failed or printed something else than a host list.
    #[error("discover command {command:?}: {message}")]
    Discover {
        /// The command.
        command: Vec<String>,
        /// What went wrong.
        message: String,
    },
    /// A host lacks a setting or is named twice.
    #[error("{0}")]
    Invalid(String),
}

impl InventoryFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<InventoryFile, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| InventoryError::Toml {
            path: path.display().to_string(),
            source,
        })
    }

    /// The hosts written here plus those the discover command lists, resolved, in order (a
    /// discovered host named like a written one is ignored: the file wins).
    pub fn hosts(&self) -> Result<Vec<Host>, InventoryError> {
        let mut entries = self.hosts.clone();
        if let Some(d) = &self.discover {
            for e in discover(d)? {
                if !entries.iter().any(|x| x.name == e.name) {
                    entries.push(e);
                }
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for e in entries {
            if !seen.insert(e.name.clone()) {
                return Err(InventoryError::Invalid(format!(
                    "host `{}` is listed twice",
                    e.name
                )));
            }
            out.push(self.resolve(e)?);
        }
        Ok(out)
    }

    fn resolve(&self, e: HostEntry) -> Result<Host, InventoryError> {
        let mut s = e.settings.clone();
        for g in &e.groups {
            let Some(gs) = self.groups.get(g) else {
                return Err(InventoryError::Invalid(format!(
                    "host `{}` names group `{g}`, which has no [groups.{g}] table",
                    e.name
                )));
            };
            s = s.or(gs);
        }
        let s = s.or(&self.defaults);
        let need = |v: Option<String>, what: &str| {
            v.ok_or_else(|| {
                InventoryError::Invalid(format!(
                    "host `{}` has no {what}: set it on the host, one of its groups or [defaults]",
                    e.name
                ))
            })
        };
        Ok(Host {
            profile: need(s.profile, "profile")?,
            arch: need(s.arch, "arch")?,
            environment: need(s.environment, "environment")?,
            port: s.port.unwrap_or(22),
            identity: s.identity,
            ssh_options: s.ssh_options.unwrap_or_default(),
            installer: s
                .installer
                .unwrap_or_else(|| vec!["smoker-install".to_string()]),
            apply_args: s.apply_args.unwrap_or_default(),
            remote_dir: s
                .remote_dir
                .unwrap_or_else(|| "/var/tmp/smoker-bundles".to_string()),
            name: e.name,
            ssh: e.ssh,
            groups: e.groups,
        })
    }
}

/// Runs the discover command and parses its host list.
fn discover(d: &Discover) -> Result<Vec<HostEntry>, InventoryError> {
    let err = |message: String| InventoryError::Discover {
        command: d.command.clone(),
        message,
    };
    let (prog, args) = d
        .command
        .split_first()
        .ok_or_else(|| err("is empty".into()))?;
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(format!("could not run: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        err(format!(
            "did not print a JSON array of hosts ({{\"name\", \"ssh\", \"groups\", …}}): {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_settings_win_over_groups_over_defaults_and_discovered_hosts_join() {
        let f: InventoryFile = toml::from_str(
            r#"
            [defaults]
            environment = "prod"
            installer = ["smoker-install"]
            [groups.pis]
            arch = "armv7"
            profile = "device"
            [groups.cloud]
            arch = "amd64"
            profile = "cloud"
            [[hosts]]
            name = "pi-1"
            ssh = "pi@10.0.0.1"
            groups = ["pis"]
            [[hosts]]
            name = "pi-2"
            ssh = "pi@10.0.0.2"
            groups = ["pis", "cloud"]
            environment = "staging"
            [discover]
            command = ["sh", "-c", "echo '[{\"name\": \"vm-1\", \"ssh\": \"vm-1\", \"groups\": [\"cloud\"], \"port\": 2222}, {\"name\": \"pi-1\", \"ssh\": \"elsewhere\"}]'"]
            "#,
        )
        .expect("parses");
        let hosts = f.hosts().expect("resolves");
        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["pi-1", "pi-2", "vm-1"]);
        assert_eq!(hosts[0].ssh, "pi@10.0.0.1", "the file wins over discovery");
        assert_eq!(
            (hosts[1].arch.as_str(), hosts[1].environment.as_str()),
            ("armv7", "staging")
        );
        assert_eq!((hosts[2].profile.as_str(), hosts[2].port), ("cloud", 2222));
        assert_eq!(hosts[2].environment, "prod");
    }

    #[test]
    fn a_host_without_a_profile_or_with_an_unknown_group_is_named() {
        let f: InventoryFile =
            toml::from_str("[[hosts]]\nname = \"a\"\nssh = \"a\"\narch = \"amd64\"\n")
                .expect("parses");
        let e = f.hosts().expect_err("no profile").to_string();
        assert!(e.contains("host `a` has no profile"), "{e}");
        let f: InventoryFile =
            toml::from_str("[[hosts]]\nname = \"a\"\nssh = \"a\"\ngroups = [\"nope\"]\n")
                .expect("parses");
        assert!(
            f.hosts()
                .expect_err("group")
                .to_string()
                .contains("[groups.nope]")
        );
    }
}
