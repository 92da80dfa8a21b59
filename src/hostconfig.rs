//! The host's own declaration: which environment it belongs to, backup retention and where to
//! send deploy notifications. `/etc/smoker/host.toml` by default (`--host-config`,
//! `SMOKER_HOST_CONFIG`). A missing file means: no declared environment (a profile then keeps
//! the environment of its first install), default retention, no webhooks.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Default location.
pub const DEFAULT_HOST_CONFIG: &str = "/etc/smoker/host.toml";
/// Environment variable overriding the location.
pub const HOST_CONFIG_ENV: &str = "SMOKER_HOST_CONFIG";

/// `host.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The environment this host belongs to (dev, staging, prod, …).
    pub environment: Option<String>,
    /// Backup settings.
    #[serde(default)]
    pub backups: BackupSettings,
    /// Webhooks told about every deploy.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    /// `[policy.<profile>]`: what each profile's services may ask of the host (privileged
    /// mode, host namespaces, devices, host paths, the Docker socket, …). A profile without
    /// a table may ask nothing beyond an unprivileged stack.
    #[serde(default)]
    pub policy: std::collections::BTreeMap<String, crate::access::Allowances>,
    /// The file this was read from (named in refusals that a line of it would lift).
    #[serde(skip)]
    pub path: PathBuf,
    /// The environment was chosen on the command line (`--environment`), not declared.
    #[serde(skip)]
    pub environment_chosen: bool,
}

/// `[backups]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// Backups kept per profile (default 10).
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// When an apply backs up the data of the generation serving: `"migrations"` (only when
    /// migrations will run) or `"every-apply"`. Unset: see [`BackupSettings::before_for`].
    #[serde(default)]
    pub before: Option<BackupWhen>,
    /// Check every backup an apply takes before anything changes: the dump is read back
    /// against its digest and, when the recipe declares a `verify` hook, fed to it; a backup
    /// that fails stops the apply (default false).
    #[serde(default)]
    pub verify: bool,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            keep: default_keep(),
            before: None,
            verify: false,
        }
    }
}

/// When an apply takes a backup of the data of the generation serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackupWhen {
    /// Only when the new bundle has migrations to run here.
    Migrations,
    /// Before every apply that replaces a serving generation.
    EveryApply,
}

/// Environments whose applies back up before every apply unless `before` says otherwise.
pub const BACKUP_EVERY_APPLY_ENVIRONMENTS: [&str; 2] = ["staging", "prod"];

impl BackupSettings {
    /// When an apply of a bundle for `environment` backs up: `before` when set, else every
    /// apply in staging and prod ([`BACKUP_EVERY_APPLY_ENVIRONMENTS`]) and only before
    /// migrations elsewhere.
    pub fn before_for(&self, environment: &str) -> BackupWhen {
        self.before
            .unwrap_or(if BACKUP_EVERY_APPLY_ENVIRONMENTS.contains(&environment) {
                BackupWhen::EveryApply
            } else {
                BackupWhen::Migrations
            })
    }
}

fn default_keep() -> usize {
    10
}

/// `[[webhook]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// Payload shape: `slack`, `discord` or `json` (default `json`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Timeout in milliseconds (default 5000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
}

fn default_kind() -> String {
    "json".into()
}
fn default_timeout() -> u64 {
    5000
}

impl HostConfig {
    /// Loads the host config from `path`, or from the default location.
    pub fn load(path: Option<&Path>) -> Result<HostConfig> {
        let path: PathBuf = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(HOST_CONFIG_ENV).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_HOST_CONFIG));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(HostConfig {
                    path,
                    ..HostConfig::default()
                });
            }
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        Self::parse(&text, &path)
    }

    /// Parses the text of a host config; `path` names it in messages. Unknown keys are errors
    /// (a misspelt setting must not be ignored silently), and so is a webhook kind other than
    /// `slack`, `discord` or `json`.
    pub fn parse(text: &str, path: &Path) -> Result<HostConfig> {
        let mut cfg: HostConfig =
            toml::from_str(text).map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
        cfg.path = path.to_path_buf();
        for (profile, allow) in &cfg.policy {
            for p in allow
                .devices
                .iter()
                .chain(&allow.bind_mounts)
                .chain(&allow.host_files)
            {
                if !p.starts_with('/') {
                    return Err(Error::State(format!(
                        "{}: [policy.{profile}]: `{p}` is not an absolute path",
                        path.display()
                    )));
                }
            }
        }
        for w in &cfg.webhooks {
            if !matches!(w.kind.as_str(), "slack" | "discord" | "json") {
                return Err(Error::State(format!(
                    "{}: webhook kind `{}` is not slack, discord or json",
                    path.display(),
                    w.kind
                )));
            }
        }
        Ok(cfg)
    }

    /// The operator's explicit choice of environment (`--environment`) for a host that
    /// declares none. A host that declares another one is not overridden from the command
    /// line: the refusal names both.
    pub fn choose_environment(mut self, chosen: Option<&str>) -> Result<HostConfig> {
        let Some(chosen) = chosen else {
            return Ok(self);
        };
        if !smoker_format::manifest::is_name(chosen) {
            return Err(Error::Policy(format!(
                "--environment `{chosen}` is not an environment name (letters, digits, `-`, `_`)"
            )));
        }
        match &self.environment {
            Some(declared) if declared != chosen => Err(Error::Policy(format!(
                "--environment {chosen} contradicts `environment = \"{declared}\"` in {}; change the host config if the host really changes environment",
                self.path.display()
            ))),
            Some(_) => Ok(self),
            None => {
                self.environment = Some(chosen.to_string());
                self.environment_chosen = true;
                Ok(self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HostConfig> {
        HostConfig::parse(text, Path::new("/etc/smoker/host.toml"))
    }

    fn state_error(text: &str) -> String {
        match parse(text) {
            Err(Error::State(m)) => m,
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    #[test]
    fn backups_are_taken_before_every_apply_in_staging_and_prod_unless_told_otherwise() {
        let cfg = parse("").expect("parse");
        assert_eq!(cfg.backups.before_for("prod"), BackupWhen::EveryApply);
        assert_eq!(cfg.backups.before_for("staging"), BackupWhen::EveryApply);
        assert_eq!(cfg.backups.before_for("dev"), BackupWhen::Migrations);
        assert!(!cfg.backups.verify);
        let cfg = parse("[backups]\nbefore = \"migrations\"\nverify = true\n").expect("parse");
        assert_eq!(cfg.backups.before_for("prod"), BackupWhen::Migrations);
        assert!(cfg.backups.verify);
        let cfg = parse("[backups]\nbefore = \"every-apply\"\n").expect("parse");
        assert_eq!(cfg.backups.before_for("dev"), BackupWhen::EveryApply);
        assert_eq!(cfg.backups.keep, 10);
        let m = state_error("[backups]\nbefore = \"sometimes\"\n");
        assert!(
            m.contains("sometimes") || m.contains("unknown variant"),
            "{m}"
        );
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let cfg = parse("").expect("parse");
        assert_eq!(cfg.environment, None);
        assert_eq!(cfg.backups.keep, 10);
        assert!(cfg.webhooks.is_empty());
        let d = HostConfig::default();
        assert_eq!(d.environment, None);
        assert_eq!(d.backups.keep, 10);
        assert!(d.webhooks.is_empty());
    }

    #[test]
    fn every_setting_is_read_and_webhooks_get_their_defaults() {
        let cfg = parse(
            r#"
environment = "prod"

[backups]
keep = 3

[[webhook]]
url = "https://hooks.example/slack"
kind = "slack"
timeout_ms = 750

[[webhook]]
url = "http://127.0.0.1:9/json"
"#,
        )
        .expect("parse");
        assert_eq!(cfg.environment.as_deref(), Some("prod"));
        assert_eq!(cfg.backups.keep, 3);
        let hooks: Vec<(&str, &str, u64)> = cfg
            .webhooks
            .iter()
            .map(|w| (w.url.as_str(), w.kind.as_str(), w.timeout_ms))
            .collect();
        assert_eq!(
            hooks,
            [
                ("https://hooks.example/slack", "slack", 750),
                ("http://127.0.0.1:9/json", "json", 5000),
            ]
        );
        // An empty [backups] table keeps the default retention; zero is allowed.
        assert_eq!(parse("[backups]\n").expect("parse").backups.keep, 10);
        assert_eq!(
            parse("[backups]\nkeep = 0\n").expect("parse").backups.keep,
            0
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_file_and_the_key() {
        for (text, key) in [
            ("enviroment = \"prod\"\n", "enviroment"),
            ("[backups]\nretain = 3\n", "retain"),
            (
                "[[webhook]]\nurl = \"http://x\"\nsecret = \"s\"\n",
                "secret",
            ),
            ("[webhooks]\nurl = \"http://x\"\n", "webhooks"),
        ] {
            let m = state_error(text);
            assert!(m.starts_with("/etc/smoker/host.toml: "), "{m}");
            assert!(m.contains(&format!("unknown field `{key}`")), "{text}: {m}");
        }
    }

    #[test]
    fn wrong_values_are_errors_naming_the_file() {
        let m = state_error("[[webhook]]\nurl = \"http://x\"\nkind = \"teams\"\n");
        assert_eq!(
            m,
            "/etc/smoker/host.toml: webhook kind `teams` is not slack, discord or json"
        );
        let m = state_error("[[webhook]]\nkind = \"json\"\n");
        assert!(m.contains("missing field `url`"), "{m}");
        let m = state_error("[backups]\nkeep = -1\n");
        assert!(m.starts_with("/etc/smoker/host.toml: "), "{m}");
        assert!(m.contains("line 2") && m.contains("keep = -1"), "{m}");
        assert!(m.contains("invalid value: integer `-1`"), "{m}");
        let m = state_error("environment = 3\n");
        assert!(
            m.contains("invalid type: integer `3`, expected a string"),
            "{m}"
        );
        let m = state_error("environment = \n");
        assert!(m.starts_with("/etc/smoker/host.toml: "), "{m}");
    }

    #[test]
    fn load_reads_the_given_file_and_a_missing_one_is_the_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("host.toml");
        let cfg = HostConfig::load(Some(&missing)).expect("missing file");
        assert_eq!(cfg.environment, None);
        assert_eq!(cfg.backups.keep, 10);
        std::fs::write(&missing, "environment = \"staging\"\n").expect("write");
        let cfg = HostConfig::load(Some(&missing)).expect("load");
        assert_eq!(cfg.environment.as_deref(), Some("staging"));
        std::fs::write(&missing, "environment = \"staging\"\ntypo = 1\n").expect("write");
        match HostConfig::load(Some(&missing)) {
            Err(Error::State(m)) => {
                assert!(m.starts_with(&format!("{}: ", missing.display())), "{m}");
                assert!(m.contains("unknown field `typo`"), "{m}");
            }
            other => panic!("expected a state error, got {other:?}"),
        }
        // A path that cannot be read (a directory) is an I/O error on that path.
        match HostConfig::load(Some(dir.path())) {
            Err(Error::Io { path, .. }) => assert_eq!(path, dir.path()),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn policy_tables_are_read_per_profile_and_misspellings_are_refused() {
        let cfg = parse(
            "environment = \"prod\"\n[policy.device]\nprivileged = true\ndevices = [\"/dev/ttyUSB0\"]\nbind_mounts = [\"/srv/data\"]\ndocker_socket = true\n",
        )
        .expect("parse");
        let p = &cfg.policy["device"];
        assert!(p.privileged && p.docker_socket && !p.network_host);
        assert_eq!(p.devices, ["/dev/ttyUSB0"]);
        assert_eq!(cfg.path, Path::new("/etc/smoker/host.toml"));
        assert!(state_error("[policy.device]\nprivilegd = true\n").contains("privilegd"));
        assert!(
            state_error("[policy.device]\nbind_mounts = [\"srv/data\"]\n")
                .contains("`srv/data` is not an absolute path")
        );
    }
}
