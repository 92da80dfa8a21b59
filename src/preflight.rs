//! Preflight: everything an apply needs, checked before anything changes, every problem
//! listed at once. Runs inside every apply and as `smoker-install preflight <bundle>`.

use crate::error::{Error, Result};
use crate::hostconfig::HostConfig;
use crate::hostenv;
use crate::layout::Layout;
use crate::runtime::{Resolved, Runtime, Stack};
use serde::Serialize;
use smoker_format::manifest::{Arch, Manifest};
use std::path::Path;

/// Free space kept in reserve on every filesystem the apply writes to.
pub const MARGIN_BYTES: u64 = 64 * 1024 * 1024;

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed?
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

/// The preflight report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Records one check.
    pub fn add(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail: detail.into(),
        });
    }

    /// The failed checks' details.
    pub fn problems(&self) -> Vec<String> {
        self.checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect()
    }
}

/// What preflight looks at.
pub struct Inputs<'a> {
    /// Host layout.
    pub layout: &'a Layout,
    /// The bundle's manifest.
    pub manifest: &'a Manifest,
    /// A directory holding the bundle's payload (store entry or a verified temporary copy).
    pub payload_dir: &'a Path,
    /// Bytes the bundle needs on disk (its size).
    pub bundle_bytes: u64,
    /// Host env file.
    pub env_file: &'a Path,
    /// Host config.
    pub host: &'a HostConfig,
    /// Allow a bundle of another environment.
    pub allow_env_change: bool,
    /// Compose project the stack runs as.
    pub project: &'a str,
    /// Whether the caller holds the profile lock (inside an apply) — else the lock is checked.
    pub holds_lock: bool,
}

fn free(path: &Path, need: u64, what: &str, r: &mut Report) {
    match crate::fsutil::free_bytes(path) {
        Some(f) if f >= need + MARGIN_BYTES => r.add(
            what,
            true,
            format!("{} MiB free under {}", f >> 20, path.display()),
        ),
        Some(f) => r.add(
            what,
            false,
            format!(
                "only {} MiB free under {}; need {} MiB + {} MiB margin — free space (`smoker-install gc`, `docker image prune`) and retry",
                f >> 20,
                path.display(),
                need.div_ceil(1 << 20),
                MARGIN_BYTES >> 20
            ),
        ),
        None => r.add(what, false, format!("cannot read free space of {}", path.display())),
    }
}

/// What preflight found: the runtime (when Docker answered), the report, and compose's
/// resolved configuration (when compose accepted the files), which the apply reuses so compose
/// `config` runs once.
pub struct Found {
    /// The runtime, when Docker answered.
    pub runtime: Option<Runtime>,
    /// Every check.
    pub report: Report,
    /// `compose config`, parsed.
    pub resolved: Option<Resolved>,
}

/// Runs every check. Returns the runtime (when Docker answered) and the report.
pub fn run(i: &Inputs<'_>) -> Result<(Option<Runtime>, Report)> {
    let f = find(i)?;
    Ok((f.runtime, f.report))
}

/// Runs every check and keeps what they found.
pub fn find(i: &Inputs<'_>) -> Result<Found> {
    let mut r = Report { checks: Vec::new() };
    let m = i.manifest;
    let runtime = check_docker(&mut r);
    check_arch(m, &mut r);
    check_environment(i, &mut r);
    let host_vars = hostenv::read_host(i.env_file)?;
    let missing = hostenv::missing(&m.required_secrets, &host_vars);
    check_variables(i, &missing, &mut r);
    free(i.layout.root(), i.bundle_bytes, "disk (store)", &mut r);
    if m.backup.is_some() {
        free(
            &i.layout.root().join("backups"),
            0,
            "disk (backups)",
            &mut r,
        );
    }
    if !i.holds_lock {
        check_lock(i, &mut r);
    }
    check_host_paths(m, &mut r);
    let mut resolved = None;
    if let Some(rt) = &runtime {
        match rt.data_root() {
            Some(root) => free(&root, 0, "disk (docker)", &mut r),
            None => r.add("disk (docker)", false, "cannot read Docker's data root"),
        }
        check_capabilities(m, rt, &mut r);
        check_registries(m, rt, &mut r);
        check_owner(i, rt, &mut r);
        if missing.is_empty() {
            let env = hostenv::stack_env(i.payload_dir, m.compose.env_file.as_deref(), &host_vars)?;
            resolved = check_compose(i, rt, &env, &mut r);
        } else {
            r.add(
                "compose config",
                false,
                "not checked: required variables are missing",
            );
        }
    }
    Ok(Found {
        runtime,
        report: r,
        resolved,
    })
}

/// The engine and compose front end run every feature the signed manifest says the compose
/// file uses (see [`smoker_format::capability`]).
fn check_capabilities(m: &Manifest, rt: &Runtime, r: &mut Report) {
    use smoker_format::capability::{self, Compose, Host};
    let Some(arch) = Arch::host() else {
        return;
    };
    let host = Host {
        engine: capability::engine_version(&rt.docker_version),
        compose: Some(match rt.frontend {
            crate::runtime::Frontend::V1 => Compose::V1,
            crate::runtime::Frontend::V2 => Compose::V2,
        }),
        arch,
    };
    let problems = capability::problems(&m.requires, &host);
    if problems.is_empty() {
        r.add(
            "capabilities",
            true,
            "the engine and compose run every feature the stack uses",
        );
    } else {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        r.add("capabilities", false, text.join("; "));
    }
}

/// Images an online bundle still has to pull: their registry (or, for Docker Hub, one of the
/// engine's mirrors) answers from this host. A registry that does not makes the images step
/// fail after the switch would have been prepared; better to say so now.
fn check_registries(m: &Manifest, rt: &Runtime, r: &mut Report) {
    let online: Vec<&smoker_format::manifest::Image> =
        m.images.iter().filter(|i| i.archive.is_none()).collect();
    let wanted = |i: &smoker_format::manifest::Image| {
        i.config_digest.clone().unwrap_or_else(|| i.pinned_ref())
    };
    // One inspect for all of them; only when one is missing, ask image by image which.
    let all: Vec<String> = online.iter().map(|i| wanted(i)).collect();
    let missing: Vec<&smoker_format::manifest::Image> = match rt.image_ids(&all) {
        Some(_) => Vec::new(),
        None => online
            .into_iter()
            .filter(|i| !rt.has_image(&wanted(i)))
            .collect(),
    };
    if missing.is_empty() {
        return r.add(
            "registries",
            true,
            "no image needs a pull (all present, or carried by the bundle)",
        );
    }
    let mut hosts: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for i in &missing {
        hosts
            .entry(registry_host(&i.repository))
            .or_default()
            .push(i.service.clone());
    }
    let mut unreachable = Vec::new();
    for (host, services) in &hosts {
        let mut candidates: Vec<String> = Vec::new();
        if host == "docker.io" {
            candidates.extend(rt.registry_mirrors());
            candidates.push("https://registry-1.docker.io".into());
        } else {
            candidates.push(format!("https://{host}"));
        }
        if !candidates.iter().any(|c| answers(c)) {
            unreachable.push(format!(
                "{host} (for {}; tried {})",
                services.join(", "),
                candidates.join(", ")
            ));
        }
    }
    if unreachable.is_empty() {
        r.add(
            "registries",
            true,
            format!("{} image(s) to pull; every registry answers", missing.len()),
        );
    } else {
        r.add(
            "registries",
            false,
            format!(
                "images must be pulled, but no route to: {} — restore the network, give the engine a reachable mirror (`registry-mirrors` in /etc/docker/daemon.json), or use an offline bundle (`release --offline`)",
                unreachable.join("; ")
            ),
        );
    }
}

/// The registry host of a repository, as Docker reads it (`docker.io` when the first part is
/// not a host name).
fn registry_host(repository: &str) -> String {
    match repository.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first.to_string(),
        _ => "docker.io".to_string(),
    }
}

/// True when a TCP connection to the URL's host and port opens within 3 s.
fn answers(url: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    let (default_port, rest) = match url.split_once("://") {
        Some(("http", rest)) => (80, rest),
        Some((_, rest)) => (443, rest),
        None => (443, url),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let Ok(addrs) = with_port.to_socket_addrs() else {
        return false;
    };
    addrs.into_iter().any(|a| {
        std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(3)).is_ok()
    })
}

/// Device nodes and absolute bind-mount sources the stack names exist on this host.
fn check_host_paths(m: &Manifest, r: &mut Report) {
    let mut missing = Vec::new();
    for (service, access) in &m.host_access {
        for d in &access.devices {
            if std::fs::symlink_metadata(d).is_err() {
                missing.push(format!(
                    "service `{service}`: device {d} does not exist (plug the device in, or remove it from `devices:`)"
                ));
            }
        }
        for b in access.bind_mounts.iter().chain(&access.host_files) {
            if std::fs::symlink_metadata(b).is_err() {
                missing.push(format!(
                    "service `{service}`: host path {b} does not exist (create it, e.g. `mkdir -p {b}` for a data directory, or use a named volume)"
                ));
            }
        }
    }
    if missing.is_empty() {
        r.add("host paths", true, "every device and host path exists");
    } else {
        r.add("host paths", false, missing.join("; "));
    }
}

/// The compose project is this root's and this profile's, or nobody's: containers another host
/// root or profile started under the same project name would be taken over by `up`.
fn check_owner(i: &Inputs<'_>, rt: &Runtime, r: &mut Report) {
    let root = i.layout.root().display().to_string();
    let profile = &i.manifest.name;
    let foreign: Vec<String> = match rt.containers(i.project) {
        Ok(list) => list
            .iter()
            .filter(|c| {
                c.owner_root.as_deref().is_some_and(|o| o != root)
                    || c.owner_profile.as_deref().is_some_and(|p| p != profile)
            })
            .map(|c| {
                format!(
                    "{} (root {}, profile {})",
                    c.name,
                    c.owner_root.as_deref().unwrap_or("?"),
                    c.owner_profile.as_deref().unwrap_or("?")
                )
            })
            .collect(),
        Err(e) => return r.add("project", false, e.to_string()),
    };
    if foreign.is_empty() {
        r.add(
            "project",
            true,
            format!("compose project `{}` is free or this profile's", i.project),
        );
    } else {
        r.add(
            "project",
            false,
            format!(
                "compose project `{}` belongs to another installer: {} — this is root {root}, profile {profile}; give this profile its own project (`--project NAME` on its first apply) or remove the other stack",
                i.project,
                foreign.join(", ")
            ),
        );
    }
}

/// Docker answers, and which compose front end it has.
fn check_docker(r: &mut Report) -> Option<Runtime> {
    match Runtime::detect() {
        Ok(rt) => {
            r.add(
                "docker",
                true,
                format!("Docker Engine {}", rt.docker_version),
            );
            r.add(
                "compose",
                true,
                format!(
                    "{:?} front end, version {}",
                    rt.frontend, rt.compose_version
                ),
            );
            Some(rt)
        }
        Err(e) => {
            r.add("docker", false, e.to_string());
            None
        }
    }
}

/// The bundle is for this host's architecture.
fn check_arch(m: &Manifest, r: &mut Report) {
    match (
        Arch::host(),
        crate::policy::check_arch(m, crate::policy::host_arch()),
    ) {
        (None, _) => r.add(
            "arch",
            false,
            format!(
                "this host's architecture ({}) is not supported",
                std::env::consts::ARCH
            ),
        ),
        (Some(h), Ok(())) => r.add("arch", true, format!("bundle {} on a {h} host", m.arch)),
        (Some(_), Err(e)) => r.add("arch", false, e.to_string()),
    }
}

/// The bundle is for this host's environment (or the operator allowed the change).
fn check_environment(i: &Inputs<'_>, r: &mut Report) {
    let m = i.manifest;
    match crate::policy::host_environment(i.layout, i.host, &m.name) {
        Some((env, _)) if env == m.environment => {
            r.add("environment", true, env.to_string())
        }
        Some((env, from)) if i.allow_env_change => r.add(
            "environment",
            true,
            format!("bundle is for {}, host is {env} ({from}); allowed by --allow-env-change", m.environment),
        ),
        Some((env, from)) => r.add(
            "environment",
            false,
            format!(
                "bundle is for environment `{}`, but this host is `{env}` ({from}); use the `{env}` bundle, or pass --allow-env-change if the host really changes environment",
                m.environment
            ),
        ),
        None => r.add(
            "environment",
            false,
            crate::policy::no_environment(m, &i.host.path),
        ),
    }
}

/// Every variable the bundle names is in the host's env file.
fn check_variables(i: &Inputs<'_>, missing: &[String], r: &mut Report) {
    let required = i.manifest.required_secrets.len();
    if missing.is_empty() {
        r.add(
            "variables",
            true,
            format!("{required} required, all present"),
        );
    } else {
        r.add(
            "variables",
            false,
            format!(
                "missing from {}: {} — add them (KEY=value, file mode 600)",
                i.env_file.display(),
                missing.join(", ")
            ),
        );
    }
}

/// Nobody else holds the profile's lock.
fn check_lock(i: &Inputs<'_>, r: &mut Report) {
    let name = &i.manifest.name;
    if crate::hostlock::is_locked(i.layout, name) {
        let who = crate::hostlock::holder(i.layout, name)
            .map(|h| h.describe())
            .unwrap_or_else(|| "an unknown process".into());
        r.add(
            "lock",
            false,
            format!("profile `{name}` is locked by {who}"),
        );
    } else {
        r.add("lock", true, "free");
    }
}

/// `compose config` accepts the files, and no port they publish is held by another process.
/// Returns the resolved configuration.
fn check_compose(
    i: &Inputs<'_>,
    rt: &Runtime,
    env: &std::collections::BTreeMap<String, String>,
    r: &mut Report,
) -> Option<Resolved> {
    let stack = Stack {
        project: i.project,
        dir: i.payload_dir,
        manifest: i.manifest,
        env,
        overrides: &[],
    };
    let resolved = match rt.config(&stack) {
        Ok(c) => c,
        Err(e) => {
            r.add("compose config", false, e.to_string());
            return None;
        }
    };
    let ports = resolved.published_ports();
    let mut busy = Vec::new();
    for (ip, port) in &ports {
        let addr = if ip.is_empty() {
            "0.0.0.0"
        } else {
            ip.as_str()
        };
        let taken = std::net::TcpListener::bind((addr, *port)).is_err();
        if taken && !rt.project_publishes(i.project, *port) {
            busy.push(format!("{addr}:{port}"));
        }
    }
    if busy.is_empty() {
        r.add(
            "ports",
            true,
            format!("{} published, none held by another process", ports.len()),
        );
    } else {
        r.add(
            "ports",
            false,
            format!(
                "held by another process: {} — stop it or change the stack's ports",
                busy.join(", ")
            ),
        );
    }
    Some(resolved)
}

/// Runs preflight and turns problems into an error; returns the runtime and compose's resolved
/// configuration.
pub fn require(i: &Inputs<'_>) -> Result<(Runtime, Option<Resolved>)> {
    let f = find(i)?;
    let problems = f.report.problems();
    match f.runtime {
        Some(rt) if problems.is_empty() => Ok((rt, f.resolved)),
        _ => Err(Error::Preflight(problems)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_read_as_docker_reads_them() {
        assert_eq!(registry_host("docker.io/library/mongo"), "docker.io");
        assert_eq!(registry_host("library/mongo"), "docker.io");
        assert_eq!(registry_host("someorg/app"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/app"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("ghcr.io/o/app"), "ghcr.io");
    }

    #[test]
    fn a_registry_answers_when_its_port_accepts() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = open.local_addr().expect("addr").port();
        assert!(answers(&format!("https://127.0.0.1:{port}")));
        assert!(answers(&format!("http://127.0.0.1:{port}/v2/")));
        drop(open);
        assert!(!answers(&format!("https://127.0.0.1:{port}")));
    }
}
