//! Recipes: the declarative description of one host role's stack.
//!
//! A recipe is a directory `recipes/<name>/` holding `recipe.toml`, the compose file and every
//! file the compose file references. Its lock is `recipes/<name>.lock`. The format is
//! documented in `recipes/README.md`.

use serde::Deserialize;
use smoker_format::manifest::{Backup, Health, HttpCheck, Runner, is_name};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// File name of a recipe inside its directory.
pub const RECIPE_FILE: &str = "recipe.toml";

/// Errors loading a recipe.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid recipe TOML.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// No such recipe.
    #[error("no recipe `{name}` (expected {path})")]
    NotFound {
        /// Requested name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
}

/// `recipe.toml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Recipe (and host profile) name; defaults to the directory name.
    pub name: Option<String>,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Compose file, relative to the recipe directory.
    #[serde(default = "default_compose")]
    pub compose: String,
    /// The variable that carries the release version into compose interpolation (e.g.
    /// `VERSION` for `image: someorg/app:${VERSION}`): `release --version V` sets it, and
    /// `lock --version V` resolves the tags it yields.
    pub version_var: Option<String>,
    /// Health gate.
    #[serde(default)]
    pub health: HealthSection,
    /// Secrets every environment needs (names only).
    #[serde(default)]
    pub secrets: SecretsSection,
    /// Migrations, if any.
    pub migrations: Option<MigrationsSection>,
    /// Backup hooks, if any.
    pub backup: Option<Backup>,
    /// Per-environment configuration, keyed by environment name.
    #[serde(default)]
    pub env: BTreeMap<String, EnvSection>,
    /// The oldest engine and compose front end the recipe's hosts run; release refuses a
    /// compose file that needs more.
    #[serde(default)]
    pub hosts: HostsSection,
}

/// `[hosts]`: the floor of the hosts a recipe ships to.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsSection {
    /// Oldest Docker Engine version (`"24.0"`).
    pub engine: Option<String>,
    /// Compose front end (`"v1"` or `"v2"`).
    pub compose: Option<String>,
}

fn default_compose() -> String {
    "compose.yaml".into()
}

/// `[health]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// Seconds the gate may take (default 120).
    #[serde(default = "default_window")]
    pub window_secs: u64,
    /// Consecutive failures that make the stack unhealthy (default 3).
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// Milliseconds between rounds (default 1000).
    #[serde(default = "default_interval")]
    pub interval_ms: u64,
    /// Consecutive all-passing rounds required (default 2), so a service that crashes right
    /// after its first good answer is caught.
    #[serde(default = "default_successes")]
    pub successes: u32,
    /// HTTP checks.
    #[serde(default)]
    pub http: Vec<HttpCheckSection>,
    /// Milliseconds a check's service may refuse connections after its container started
    /// before a refusal counts (default: the installer's, 15 s).
    pub connect_grace_ms: Option<u64>,
}

impl Default for HealthSection {
    fn default() -> Self {
        HealthSection {
            window_secs: default_window(),
            failures: default_failures(),
            interval_ms: default_interval(),
            successes: default_successes(),
            http: Vec::new(),
            connect_grace_ms: None,
        }
    }
}

fn default_window() -> u64 {
    120
}
fn default_failures() -> u32 {
    3
}
fn default_interval() -> u64 {
    1000
}
fn default_successes() -> u32 {
    2
}

/// `[[health.http]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckSection {
    /// Name in reports.
    pub name: String,
    /// URL to GET (`${VAR}` from the environment's config is expanded).
    pub url: String,
    /// Expected status (default 200).
    #[serde(default = "default_status")]
    pub status: u16,
    /// Required body substring.
    pub body_contains: Option<String>,
    /// Timeout in ms (default 2000).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Slowest acceptable answer in ms.
    pub max_latency_ms: Option<u64>,
    /// The compose service that answers it: the check starts when that service's new
    /// container runs, and failures name the service.
    pub service: Option<String>,
}

fn default_status() -> u16 {
    200
}
fn default_timeout() -> u64 {
    2000
}

/// `[secrets]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsSection {
    /// Names of host variables that must be present.
    #[serde(default)]
    pub required: Vec<String>,
}

/// `[migrations]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationsSection {
    /// Directory of `NNNN-name.ext` scripts, relative to the recipe.
    pub dir: String,
    /// Service whose image runs them.
    pub service: String,
    /// Command; `{script}` is the script's path in the container.
    pub command: Vec<String>,
}

/// `[env.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSection {
    /// Non-secret configuration values (become the bundle's env file and interpolation vars).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Extra secrets this environment needs.
    #[serde(default)]
    pub secrets: Vec<String>,
}

/// A loaded recipe.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Name (also the host profile).
    pub name: String,
    /// The recipe directory.
    pub dir: PathBuf,
    /// Parsed `recipe.toml`.
    pub file: RecipeFile,
}

impl Recipe {
    /// Loads `recipes_dir/<name>/recipe.toml`.
    pub fn load(recipes_dir: &Path, name: &str) -> Result<Recipe, RecipeError> {
        let dir = recipes_dir.join(name);
        let path = dir.join(RECIPE_FILE);
        if !path.is_file() {
            return Err(RecipeError::NotFound {
                name: name.to_string(),
                path,
            });
        }
        Self::load_dir(&dir)
    }

    /// Loads the recipe in `dir`.
    pub fn load_dir(dir: &Path) -> Result<Recipe, RecipeError> {
        let path = dir.join(RECIPE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RecipeError::Io {
            path: path.clone(),
            source,
        })?;
        let parse = |message: String| RecipeError::Parse {
            path: path.clone(),
            message,
        };
        let file: RecipeFile = toml::from_str(&text).map_err(|e| parse(e.to_string()))?;
        let dir_name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = file.name.clone().unwrap_or(dir_name);
        if !is_name(&name) {
            return Err(parse(format!(
                "name `{name}` must be letters, digits, `-` or `_`"
            )));
        }
        if file.env.is_empty() {
            return Err(parse("declares no environment (`[env.prod]`, …)".into()));
        }
        for (env, section) in &file.env {
            if !is_name(env) {
                return Err(parse(format!("environment name `{env}` is not valid")));
            }
            for k in section.config.keys().chain(&section.secrets) {
                if !is_var_name(k) {
                    return Err(parse(format!(
                        "`{k}` in [env.{env}] is not a variable name"
                    )));
                }
            }
        }
        if let Some(v) = &file.version_var {
            if !is_var_name(v) {
                return Err(parse(format!("version_var `{v}` is not a variable name")));
            }
            for (env, section) in &file.env {
                if section.config.contains_key(v) {
                    return Err(parse(format!(
                        "`{v}` is the version_var, so the release version sets it; remove it from [env.{env}.config]"
                    )));
                }
            }
        }
        for s in &file.secrets.required {
            if !is_var_name(s) {
                return Err(parse(format!("secret `{s}` is not a variable name")));
            }
        }
        Ok(Recipe {
            name,
            dir: dir.to_path_buf(),
            file,
        })
    }

    /// Every recipe under `recipes_dir` (directories holding a `recipe.toml`), sorted by name.
    pub fn discover(recipes_dir: &Path) -> Result<Vec<String>, RecipeError> {
        let rd = std::fs::read_dir(recipes_dir).map_err(|source| RecipeError::Io {
            path: recipes_dir.to_path_buf(),
            source,
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join(RECIPE_FILE).is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Environments the recipe declares, sorted.
    pub fn environments(&self) -> Vec<String> {
        self.file.env.keys().cloned().collect()
    }

    /// Configuration values of one environment.
    pub fn config(&self, env: &str) -> Option<&BTreeMap<String, String>> {
        self.file.env.get(env).map(|e| &e.config)
    }

    /// The variables compose interpolation sees for `env`: its configuration, plus the
    /// `version_var` set to `version` when both are given.
    pub fn interpolation(
        &self,
        env: &str,
        version: Option<&str>,
    ) -> Option<BTreeMap<String, String>> {
        let mut vars = self.config(env)?.clone();
        if let (Some(var), Some(v)) = (&self.file.version_var, version) {
            vars.insert(var.clone(), v.to_string());
        }
        Some(vars)
    }

    /// Secret names required in `env` (global plus per-environment), sorted and unique.
    pub fn required_secrets(&self, env: &str) -> Vec<String> {
        let mut v: Vec<String> = self.file.secrets.required.clone();
        if let Some(e) = self.file.env.get(env) {
            v.extend(e.secrets.iter().cloned());
        }
        v.sort();
        v.dedup();
        v
    }

    /// The health gate for `env` (URLs interpolated with the environment's config).
    pub fn health(&self, env: &str) -> Result<Health, crate::compose::ComposeError> {
        let empty = BTreeMap::new();
        let vars = self.config(env).unwrap_or(&empty);
        let h = &self.file.health;
        let http = h
            .http
            .iter()
            .map(|c| {
                Ok(HttpCheck {
                    name: c.name.clone(),
                    url: crate::compose::interpolate(
                        &c.url,
                        vars,
                        &format!("health check `{}`", c.name),
                    )?,
                    status: c.status,
                    body_contains: c.body_contains.clone(),
                    timeout_ms: c.timeout_ms,
                    max_latency_ms: c.max_latency_ms,
                    service: c.service.clone(),
                })
            })
            .collect::<Result<Vec<_>, crate::compose::ComposeError>>()?;
        Ok(Health {
            window_secs: h.window_secs,
            failures: h.failures,
            interval_ms: h.interval_ms,
            successes: h.successes.max(1),
            http,
            connect_grace_ms: h.connect_grace_ms,
        })
    }

    /// The migration runner, when migrations are declared.
    pub fn runner(&self) -> Option<Runner> {
        self.file.migrations.as_ref().map(|m| Runner {
            service: m.service.clone(),
            command: m.command.clone(),
        })
    }
}

/// True for shell-style variable names.
pub fn is_var_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(recipe: &str) -> Result<Recipe, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let d = dir.path().join("app");
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        std::fs::write(d.join(RECIPE_FILE), recipe).map_err(|e| e.to_string())?;
        Recipe::load_dir(&d).map_err(|e| e.to_string())
    }

    #[test]
    fn the_version_var_is_set_by_the_release_version_only() {
        let r = load("version_var = \"VERSION\"\n[env.prod.config]\nA = \"1\"\n").expect("valid");
        let vars = r.interpolation("prod", Some("1.2.0")).expect("prod");
        assert_eq!(vars.get("VERSION").map(String::as_str), Some("1.2.0"));
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert!(
            !r.interpolation("prod", None)
                .expect("prod")
                .contains_key("VERSION")
        );
        let err = load("version_var = \"VERSION\"\n[env.prod.config]\nVERSION = \"1\"\n")
            .expect_err("set twice");
        assert!(err.contains("remove it from [env.prod.config]"), "{err}");
        let err = load("version_var = \"1X\"\n[env.prod.config]\n").expect_err("bad name");
        assert!(err.contains("not a variable name"), "{err}");
    }
}
