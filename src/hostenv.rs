//! The environment a generation runs with: the bundle's config plus the host's secrets.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Directory of host env files (`<profile>.env`).
pub const DEFAULT_ENV_DIR: &str = "/etc/smoker";

/// The default host env file of a profile.
pub fn default_env_file(profile: &str) -> PathBuf {
    Path::new(DEFAULT_ENV_DIR).join(format!("{profile}.env"))
}

/// Parses `KEY=VALUE` lines (blank lines, `#` comments and an `export ` prefix allowed;
/// matching single or double quotes around the value are removed).
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// Reads a host env file; a missing file is an empty set (the required-secrets check then
/// names what is missing).
pub fn read_host(path: &Path) -> Result<BTreeMap<String, String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(parse(&t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// The full environment of a generation: bundle config, overridden by host values.
pub fn stack_env(
    entry_dir: &Path,
    config_file: Option<&str>,
    host: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if let Some(rel) = config_file {
        let p = entry_dir.join(rel);
        let text = std::fs::read_to_string(&p).map_err(crate::error::io_at(&p))?;
        env.extend(parse(&text));
    }
    env.extend(host.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(env)
}

/// Names in `required` absent (or empty) in `host`.
pub fn missing(required: &[String], host: &BTreeMap<String, String>) -> Vec<String> {
    required
        .iter()
        .filter(|k| host.get(*k).is_none_or(|v| v.is_empty()))
        .cloned()
        .collect()
}
