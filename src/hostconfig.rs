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
}

/// `[backups]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// Backups kept per profile (default 10).
    #[serde(default = "default_keep")]
    pub keep: usize,
}

impl Default for BackupSettings {
    fn default() -> Self {
        BackupSettings {
            keep: default_keep(),
        }
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
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostConfig::default()),
            Err(e) => return Err(Error::Io { path, source: e }),
        };
        let cfg: HostConfig =
            toml::from_str(&text).map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
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
}
