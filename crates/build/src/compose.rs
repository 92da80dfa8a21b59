//! Reading a user's compose file at release time.
//!
//! The compose file is carried into the bundle byte for byte (comments, anchors and all); this
//! module only reads it to learn each service's image and every file it references by relative
//! path, and writes the small override that pins each image to a digest. YAML aliases are
//! resolved by the loader, merge keys (`<<`) and `${VAR:-default}` interpolation are applied
//! here the way compose applies them.

use smoker_format::host_access::{HostAccess, normalize_host_path};
use std::collections::BTreeMap;
use yaml_rust2::{Yaml, YamlLoader};

/// What release needs to know about a compose file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeInfo {
    /// The top-level `version` value, when the file has one (copied into the override).
    pub version: Option<String>,
    /// Services in file order.
    pub services: Vec<Service>,
    /// Relative paths referenced anywhere, with the service (or top-level section) naming them.
    pub references: Vec<Reference>,
    /// What each service asks of the host (services that ask nothing are absent).
    pub host_access: BTreeMap<String, HostAccess>,
    /// Features not every engine or compose front end runs (checked against the recipe's
    /// `[hosts]` floor at release and against the real host before it switches).
    pub requires: smoker_format::capability::Needs,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name.
    pub name: String,
    /// Image reference after interpolation.
    pub image: String,
    /// `pull_policy`, as written (after interpolation).
    pub pull_policy: Option<String>,
}

/// A file or directory the compose file refers to by relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Path as written (after interpolation), relative to the compose file's directory.
    pub path: String,
    /// Who refers to it: `service backend` or `configs.nginx`.
    pub owner: String,
    /// How: `volume`, `env_file`, `config`, `secret`, `extends`.
    pub kind: &'static str,
    /// False for an `env_file` entry marked `required: false`.
    pub required: bool,
}

/// Errors reading a compose file.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// Not YAML.
    #[error("compose file is not valid YAML: {0}")]
    Yaml(String),
    /// YAML, but not a compose file this tool can release.
    #[error("compose file: {0}")]
    Invalid(String),
    /// `${VAR}` with no value and no default.
    #[error(
        "compose file: {owner} uses ${{{var}}}, which has no default and is not set in the environment's config{hint}"
    )]
    Unset {
        /// Where it is used.
        owner: String,
        /// The variable.
        var: String,
        /// Extra advice.
        hint: String,
    },
}

/// Parses compose YAML and interpolates with `vars`.
pub fn analyze(text: &str, vars: &BTreeMap<String, String>) -> Result<ComposeInfo, ComposeError> {
    let docs = YamlLoader::load_from_str(text).map_err(|e| ComposeError::Yaml(e.to_string()))?;
    let doc = match docs.as_slice() {
        [d] => d,
        [] => return Err(ComposeError::Invalid("the file is empty".into())),
        _ => return Err(ComposeError::Invalid("more than one YAML document".into())),
    };
    let Yaml::Hash(top) = doc else {
        return Err(ComposeError::Invalid("top level is not a mapping".into()));
    };
    if top.contains_key(&key("include")) {
        return Err(ComposeError::Invalid(
            "top-level `include:` brings in services and files this release cannot see, pin or carry; move the included services into the recipe's compose file (or list the file in the recipe's compose files)".into(),
        ));
    }
    let version = top.get(&key("version")).and_then(scalar);
    let Some(Yaml::Hash(services)) = top.get(&key("services")) else {
        return Err(ComposeError::Invalid("no `services:` mapping".into()));
    };
    let mut out = ComposeInfo {
        version,
        services: Vec::new(),
        references: Vec::new(),
        host_access: BTreeMap::new(),
        requires: Default::default(),
    };
    out.requires.project_name = top.contains_key(&key("name"));
    let host_sources = top_level_host_sources(top, vars)?;
    for (name, body) in services {
        let Some(name) = scalar(name) else {
            return Err(ComposeError::Invalid(
                "a service name is not a string".into(),
            ));
        };
        let owner = format!("service `{name}`");
        let body = merged(body)
            .ok_or_else(|| ComposeError::Invalid(format!("{owner} is not a mapping")))?;
        if body.contains_key("build") {
            return Err(ComposeError::Invalid(format!(
                "{owner} has `build:`; a release runs published images only — push the image, lock it and remove `build:`"
            )));
        }
        let image = body
            .get("image")
            .and_then(scalar)
            .ok_or_else(|| ComposeError::Invalid(format!("{owner} has no `image:`")))?;
        let image = interpolate(&image, vars, &owner)?;
        if let Some(Yaml::Array(volumes)) = body.get("volumes") {
            for v in volumes {
                if let Some(s) = scalar(v) {
                    let s = interpolate(&s, vars, &owner)?;
                    let source = s.split(':').next().unwrap_or("");
                    if is_relative_path(source) {
                        out.references
                            .push(reference(source, &owner, "volume", true));
                    }
                } else if let Some(m) = merged(v) {
                    let is_bind = m.get("type").and_then(scalar).as_deref() == Some("bind");
                    if let Some(src) = m.get("source").and_then(scalar) {
                        let src = interpolate(&src, vars, &owner)?;
                        if is_bind && is_relative_path(&src) {
                            out.references.push(reference(&src, &owner, "volume", true));
                        }
                    }
                }
            }
        }
        match body.get("env_file") {
            Some(Yaml::Array(list)) => {
                for item in list {
                    env_file_ref(item, vars, &owner, &mut out.references)?;
                }
            }
            Some(item) => env_file_ref(item, vars, &owner, &mut out.references)?,
            None => {}
        }
        if let Some(ext) = body.get("extends").and_then(merged)
            && let Some(file) = ext.get("file").and_then(scalar)
        {
            let file = interpolate(&file, vars, &owner)?;
            out.references
                .push(reference(&file, &owner, "extends", true));
        }
        if body
            .get("healthcheck")
            .and_then(merged)
            .is_some_and(|h| h.contains_key("start_interval"))
        {
            out.requires.start_interval.push(name.clone());
        }
        if let Some(platform) = body.get("platform").and_then(scalar) {
            let platform = interpolate(&platform, vars, &owner)?;
            out.requires.platforms.insert(name.clone(), platform);
        }
        let access = host_access(&body, vars, &owner, &host_sources)?;
        if !access.is_empty() {
            out.host_access.insert(name.clone(), access);
        }
        let pull_policy = match body.get("pull_policy").and_then(scalar) {
            Some(p) => Some(interpolate(&p, vars, &owner)?),
            None => None,
        };
        out.services.push(Service {
            name,
            image,
            pull_policy,
        });
    }
    for (section, kind) in [("configs", "config"), ("secrets", "secret")] {
        if let Some(Yaml::Hash(items)) = top.get(&key(section)) {
            for (name, body) in items {
                let owner = format!("{section}.{}", scalar(name).unwrap_or_default());
                if let Some(file) = merged(body).and_then(|m| m.get("file").and_then(scalar)) {
                    let file = interpolate(&file, vars, &owner)?;
                    if !file.starts_with('/') {
                        out.references.push(reference(&file, &owner, kind, true));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Host paths behind top-level names: named volumes bound to a host directory
/// (`driver_opts: {o: bind, device: /path}`), and configs and secrets read from an absolute
/// file. Keyed by section (`volumes`, `configs`, `secrets`) and name.
type HostSources = BTreeMap<(&'static str, String), String>;

fn top_level_host_sources(
    top: &yaml_rust2::yaml::Hash,
    vars: &BTreeMap<String, String>,
) -> Result<HostSources, ComposeError> {
    let mut out = HostSources::new();
    for section in ["volumes", "configs", "secrets"] {
        let Some(Yaml::Hash(items)) = top.get(&key(section)) else {
            continue;
        };
        for (name, body) in items {
            let Some(name) = scalar(name) else { continue };
            let owner = format!("{section}.{name}");
            let Some(m) = merged(body) else { continue };
            let path = if section == "volumes" {
                m.get("driver_opts")
                    .and_then(merged)
                    .and_then(|o| o.get("device").and_then(scalar))
            } else {
                m.get("file").and_then(scalar)
            };
            if let Some(p) = path {
                let p = interpolate(&p, vars, &owner)?;
                if p.starts_with('/') {
                    out.insert((section, name), host_path(&p, &owner)?);
                }
            }
        }
    }
    Ok(out)
}

/// An absolute host path in normal form, or an error naming where it is used.
fn host_path(p: &str, owner: &str) -> Result<String, ComposeError> {
    normalize_host_path(p).ok_or_else(|| {
        ComposeError::Invalid(format!(
            "{owner} uses the host path `{p}`, which has a `..` component; write it without"
        ))
    })
}

/// True for a value compose reads as boolean true.
fn truthy(y: Option<&Yaml>) -> bool {
    match y {
        Some(Yaml::Boolean(b)) => *b,
        Some(other) => scalar(other).is_some_and(|s| s.eq_ignore_ascii_case("true")),
        None => false,
    }
}

fn string_list(
    y: Option<&Yaml>,
    vars: &BTreeMap<String, String>,
    owner: &str,
) -> Result<Vec<String>, ComposeError> {
    let mut out = Vec::new();
    match y {
        Some(Yaml::Array(items)) => {
            for i in items {
                if let Some(s) = scalar(i) {
                    out.push(interpolate(&s, vars, owner)?);
                }
            }
        }
        Some(other) => {
            if let Some(s) = scalar(other) {
                out.push(interpolate(&s, vars, owner)?);
            }
        }
        None => {}
    }
    Ok(out)
}

/// What one service asks of the host: privileged mode, host namespaces, devices, added
/// capabilities, security options, absolute bind mounts (directly or through a named volume
/// bound to a host directory) and absolute env files, configs and secrets.
fn host_access(
    body: &BTreeMap<String, Yaml>,
    vars: &BTreeMap<String, String>,
    owner: &str,
    sources: &HostSources,
) -> Result<HostAccess, ComposeError> {
    let text = |k: &str| -> Result<Option<String>, ComposeError> {
        body.get(k)
            .and_then(scalar)
            .map(|s| interpolate(&s, vars, owner))
            .transpose()
    };
    let mut a = HostAccess {
        privileged: truthy(body.get("privileged"))
            || text("privileged")?.is_some_and(|s| s.eq_ignore_ascii_case("true")),
        network_host: text("network_mode")?.as_deref() == Some("host"),
        pid_host: text("pid")?.as_deref() == Some("host"),
        ipc_host: text("ipc")?.as_deref() == Some("host"),
        userns_host: text("userns_mode")?.as_deref() == Some("host"),
        ..HostAccess::default()
    };
    for d in string_list(body.get("devices"), vars, owner)? {
        let host = d.split(':').next().unwrap_or("");
        a.devices.push(host_path(host, owner).map_err(|_| {
            ComposeError::Invalid(format!(
                "{owner}: device `{d}` is not an absolute host path without `..`"
            ))
        })?);
    }
    if let Some(Yaml::Array(items)) = body.get("devices") {
        for i in items {
            if let Some(m) = merged(i)
                && let Some(src) = m.get("source").and_then(scalar)
            {
                a.devices
                    .push(host_path(&interpolate(&src, vars, owner)?, owner)?);
            }
        }
    }
    for c in string_list(body.get("cap_add"), vars, owner)? {
        let c = c.to_ascii_uppercase();
        a.cap_add
            .push(c.strip_prefix("CAP_").unwrap_or(&c).to_string());
    }
    a.security_opt = string_list(body.get("security_opt"), vars, owner)?;
    if let Some(Yaml::Array(volumes)) = body.get("volumes") {
        for v in volumes {
            let (source, named) = if let Some(s) = scalar(v) {
                let s = interpolate(&s, vars, owner)?;
                match s.split_once(':') {
                    Some((src, _)) => (src.to_string(), true),
                    None => continue,
                }
            } else if let Some(m) = merged(v) {
                let Some(src) = m.get("source").and_then(scalar) else {
                    continue;
                };
                let ty = m.get("type").and_then(scalar).unwrap_or_default();
                (interpolate(&src, vars, owner)?, ty == "volume")
            } else {
                continue;
            };
            if source.starts_with('~') {
                return Err(ComposeError::Invalid(format!(
                    "{owner} mounts `{source}` from a home directory; write the absolute host path"
                )));
            }
            if source.starts_with('/') {
                a.bind_mounts.push(host_path(&source, owner)?);
            } else if named && let Some(dev) = sources.get(&("volumes", source.clone())) {
                a.bind_mounts.push(dev.clone());
            }
        }
    }
    match body.get("env_file") {
        Some(Yaml::Array(list)) => {
            for item in list {
                env_file_host(item, vars, owner, &mut a.host_files)?;
            }
        }
        Some(item) => env_file_host(item, vars, owner, &mut a.host_files)?,
        None => {}
    }
    for section in ["configs", "secrets"] {
        if let Some(Yaml::Array(items)) = body.get(section) {
            for i in items {
                let name =
                    scalar(i).or_else(|| merged(i).and_then(|m| m.get("source").and_then(scalar)));
                if let Some(p) = name.and_then(|n| sources.get(&(section, n))) {
                    a.host_files.push(p.clone());
                }
            }
        }
    }
    a.normalize();
    Ok(a)
}

fn env_file_host(
    item: &Yaml,
    vars: &BTreeMap<String, String>,
    owner: &str,
    out: &mut Vec<String>,
) -> Result<(), ComposeError> {
    let path = scalar(item).or_else(|| merged(item).and_then(|m| m.get("path").and_then(scalar)));
    if let Some(p) = path {
        let p = interpolate(&p, vars, owner)?;
        if p.starts_with('/') {
            out.push(host_path(&p, owner)?);
        }
    }
    Ok(())
}

fn reference(path: &str, owner: &str, kind: &'static str, required: bool) -> Reference {
    Reference {
        path: path.to_string(),
        owner: owner.to_string(),
        kind,
        required,
    }
}

fn env_file_ref(
    item: &Yaml,
    vars: &BTreeMap<String, String>,
    owner: &str,
    refs: &mut Vec<Reference>,
) -> Result<(), ComposeError> {
    let (path, required) = if let Some(s) = scalar(item) {
        (s, true)
    } else if let Some(m) = merged(item) {
        let Some(p) = m.get("path").and_then(scalar) else {
            return Ok(());
        };
        let required = !matches!(m.get("required"), Some(Yaml::Boolean(false)));
        (p, required)
    } else {
        return Ok(());
    };
    let path = interpolate(&path, vars, owner)?;
    if !path.starts_with('/') {
        refs.push(reference(&path, owner, "env_file", required));
    }
    Ok(())
}

/// Short-syntax volume sources are paths when they start with `.`; `/` and `~` are host paths.
fn is_relative_path(s: &str) -> bool {
    s == "." || s.starts_with("./") || s.starts_with("../") || s == ".."
}

fn key(s: &str) -> Yaml {
    Yaml::String(s.to_string())
}

fn scalar(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A mapping with YAML merge keys (`<<: *x` or `<<: [*x, *y]`) applied, keyed by string.
fn merged(y: &Yaml) -> Option<BTreeMap<String, Yaml>> {
    let Yaml::Hash(h) = y else { return None };
    let mut out = BTreeMap::new();
    for (k, v) in h {
        if let Some(k) = scalar(k)
            && k != "<<"
        {
            out.insert(k, v.clone());
        }
    }
    match h.get(&key("<<")) {
        Some(Yaml::Array(list)) => {
            for item in list {
                if let Some(m) = merged(item) {
                    for (k, v) in m {
                        out.entry(k).or_insert(v);
                    }
                }
            }
        }
        Some(item) => {
            if let Some(m) = merged(item) {
                for (k, v) in m {
                    out.entry(k).or_insert(v);
                }
            }
        }
        None => {}
    }
    Some(out)
}

/// Applies compose interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`,
/// `${VAR:?msg}`, `${VAR?msg}`, `${VAR:+alt}`, `${VAR+alt}`.
pub fn interpolate(
    s: &str,
    vars: &BTreeMap<String, String>,
    owner: &str,
) -> Result<String, ComposeError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            // The matching brace: defaults may nest `${…}`.
            let mut depth = 1usize;
            let mut end = None;
            for (i, c) in body.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(i);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let end = end.ok_or_else(|| {
                ComposeError::Invalid(format!("{owner}: unterminated `${{` in `{s}`"))
            })?;
            out.push_str(&expand(&body[..end], vars, owner)?);
            rest = &body[end + 1..];
        } else {
            let len = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
                rest = after;
            } else {
                out.push_str(&expand(&after[..len], vars, owner)?);
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(
    expr: &str,
    vars: &BTreeMap<String, String>,
    owner: &str,
) -> Result<String, ComposeError> {
    let name_len = expr
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(expr.len());
    let (name, op) = expr.split_at(name_len);
    let value = vars.get(name);
    let set_nonempty = value.is_some_and(|v| !v.is_empty());
    let unset = |hint: &str| ComposeError::Unset {
        owner: owner.to_string(),
        var: name.to_string(),
        hint: hint.to_string(),
    };
    let nested = |d: &str| interpolate(d, vars, owner);
    Ok(match op {
        "" => value.cloned().ok_or_else(|| {
            unset(" (secrets are resolved on the host and cannot name images or paths)")
        })?,
        _ if op.starts_with(":-") => match value {
            Some(v) if set_nonempty => v.clone(),
            _ => nested(&op[2..])?,
        },
        _ if op.starts_with('-') => match value {
            Some(v) => v.clone(),
            None => nested(&op[1..])?,
        },
        _ if op.starts_with(":?") || op.starts_with('?') => match value {
            Some(v) if set_nonempty || op.starts_with('?') => v.clone(),
            _ => return Err(unset(&format!(": {}", op.trim_start_matches([':', '?'])))),
        },
        _ if op.starts_with(":+") => {
            if set_nonempty {
                nested(&op[2..])?
            } else {
                String::new()
            }
        }
        _ if op.starts_with('+') => {
            if value.is_some() {
                nested(&op[1..])?
            } else {
                String::new()
            }
        }
        _ => {
            return Err(ComposeError::Invalid(format!(
                "{owner}: unsupported interpolation `${{{expr}}}`"
            )));
        }
    })
}

/// The generated override that pins every service image (JSON, which compose reads as YAML).
pub fn pin_override(version: Option<&str>, pins: &BTreeMap<String, PinnedService>) -> Vec<u8> {
    let mut services = serde_json::Map::new();
    for (name, pin) in pins {
        let mut svc = serde_json::Map::new();
        svc.insert("image".into(), pin.image.clone().into());
        if let Some(policy) = &pin.pull_policy {
            svc.insert("pull_policy".into(), policy.clone().into());
        }
        services.insert(name.clone(), svc.into());
    }
    let mut top = serde_json::Map::new();
    if let Some(v) = version {
        top.insert("version".into(), v.into());
    }
    top.insert("services".into(), services.into());
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(top)).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The pinned image settings for one service.
#[derive(Debug, Clone)]
pub struct PinnedService {
    /// The image reference compose must run.
    pub image: String,
    /// `never` for images loaded from an offline bundle.
    pub pull_policy: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn interpolation_follows_compose_rules() {
        let v = vars(&[("A", "x"), ("E", "")]);
        let i = |s| interpolate(s, &v, "t").map_err(|e| e.to_string());
        assert_eq!(i("${A}-$A-$$A").as_deref(), Ok("x-x-$A"));
        assert_eq!(i("${B:-d}/${E:-d}/${E-d}").as_deref(), Ok("d/d/"));
        assert_eq!(i("${A:+alt}${B:+alt}").as_deref(), Ok("alt"));
        assert_eq!(i("${B:-${A}}").as_deref(), Ok("x"));
        assert!(i("${B}").is_err());
        assert!(i("${B:?need it}").unwrap_err().contains("need it"));
    }

    #[test]
    fn anchors_merge_keys_and_references() {
        let text = r#"
version: "3.8"
x-base: &base
  restart: unless-stopped
  env_file: ./common.env
  volumes:
    - ./shared:/shared:ro
services:
  api:
    <<: *base
    image: ${REG:-reg.local}/api:${TAG:-1}
    volumes:
      - ./init:/docker-entrypoint-initdb.d:ro
      - data:/data
      - /dev/ttyUSB0:/dev/ttyUSB0
      - type: bind
        source: ./conf/app.toml
        target: /app.toml
  web:
    <<: *base
    image: web:2
    env_file:
      - path: ./optional.env
        required: false
configs:
  nginx:
    file: ./nginx.conf
"#;
        let info = analyze(text, &vars(&[("TAG", "7")])).expect("valid");
        assert_eq!(info.version.as_deref(), Some("3.8"));
        assert_eq!(info.services[0].image, "reg.local/api:7");
        let refs: Vec<(&str, &str, bool)> = info
            .references
            .iter()
            .map(|r| (r.path.as_str(), r.owner.as_str(), r.required))
            .collect();
        assert_eq!(
            refs,
            vec![
                ("./init", "service `api`", true),
                ("./conf/app.toml", "service `api`", true),
                ("./common.env", "service `api`", true),
                ("./shared", "service `web`", true),
                ("./optional.env", "service `web`", false),
                ("./nginx.conf", "configs.nginx", true),
            ]
        );
    }

    #[test]
    fn top_level_include_is_refused() {
        let err = analyze(
            "include:\n  - other.yaml\nservices:\n  a:\n    image: a\n",
            &BTreeMap::new(),
        )
        .expect_err("include: must be refused")
        .to_string();
        assert!(err.contains("top-level `include:`"), "{err}");
    }

    #[test]
    fn build_sections_are_refused() {
        let err = analyze(
            "services:\n  a:\n    build: .\n    image: a\n",
            &BTreeMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("service `a` has `build:`"), "{err}");
    }
}

#[cfg(test)]
mod host_access_tests {
    use super::*;

    #[test]
    fn every_kind_of_host_access_is_found_per_service() {
        let yaml = r#"
x-priv: &priv
  privileged: true
services:
  plain:
    image: a:1
    volumes: ["./data:/data", "named:/n"]
  ui:
    <<: *priv
    image: b:1
    network_mode: host
    pid: host
    ipc: host
    userns_mode: host
    devices: ["/dev/ttyUSB0:/dev/ttyUSB0", "${DEV}"]
    cap_add: [net_admin, CAP_SYS_TIME]
    security_opt: ["seccomp:unconfined"]
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - //srv/./data/:/srv:ro
      - type: bind
        source: /
        target: /host
      - hostdir:/h
    env_file: [/etc/app.env, ./local.env]
    secrets: [token]
    configs:
      - source: conf
        target: /c
volumes:
  named: {}
  hostdir:
    driver_opts: {type: none, o: bind, device: /mnt/usb}
secrets:
  token: {file: /etc/token}
configs:
  conf: {file: ./conf.txt}
"#;
        let v: BTreeMap<String, String> = [("DEV".to_string(), "/dev/i2c-1".to_string())]
            .into_iter()
            .collect();
        let info = analyze(yaml, &v).expect("analyze");
        assert_eq!(info.host_access.keys().collect::<Vec<_>>(), ["ui"]);
        let a = &info.host_access["ui"];
        assert!(a.privileged && a.network_host && a.pid_host && a.ipc_host && a.userns_host);
        assert_eq!(a.devices, ["/dev/i2c-1", "/dev/ttyUSB0"]);
        assert_eq!(a.cap_add, ["NET_ADMIN", "SYS_TIME"]);
        assert_eq!(a.security_opt, ["seccomp:unconfined"]);
        assert_eq!(
            a.bind_mounts,
            ["/", "/mnt/usb", "/srv/data", "/var/run/docker.sock"]
        );
        assert_eq!(a.host_files, ["/etc/app.env", "/etc/token"]);
        a.validate("ui").expect("a valid shape");
    }

    #[test]
    fn home_and_dotdot_host_paths_are_refused() {
        let home = "services:\n  s:\n    image: a:1\n    volumes: [\"~/x:/x\"]\n";
        assert!(
            analyze(home, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("home directory")
        );
        let up = "services:\n  s:\n    image: a:1\n    volumes: [\"/srv/../etc:/x\"]\n";
        assert!(
            analyze(up, &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("`..`")
        );
    }
}
