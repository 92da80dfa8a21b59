//! The host's policy on what a bundle may ask of it: per profile, which kinds of host access
//! (privileged mode, host namespaces, devices, capabilities, security options, host paths, the
//! Docker socket) its services may have. Declared in the host config as `[policy.<profile>]`;
//! a profile without a table may ask nothing beyond an unprivileged stack.
//!
//! Pure functions: [`refusals`] compares a manifest's signed `host_access` with the
//! allowances and names, for each service and capability not allowed, the policy line that
//! would allow it; [`suggest`] writes the table that allows exactly one bundle.

use serde::{Deserialize, Serialize};
use smoker_format::host_access::{HostAccess, exposes_docker_socket, path_within};
use smoker_format::manifest::Manifest;

/// `[policy.<profile>]`: what the profile's services may ask of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Allowances {
    /// `privileged: true`.
    #[serde(default)]
    pub privileged: bool,
    /// `network_mode: host`.
    #[serde(default)]
    pub network_host: bool,
    /// `pid: host`.
    #[serde(default)]
    pub pid_host: bool,
    /// `ipc: host`.
    #[serde(default)]
    pub ipc_host: bool,
    /// `userns_mode: host`.
    #[serde(default)]
    pub userns_host: bool,
    /// Host devices, by path or a directory above them (`/dev/bus/usb`).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Added capabilities (`NET_ADMIN`, without `CAP_`); matched exactly.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Security options (`seccomp=unconfined`, …); matched exactly.
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// Host paths that may be bind-mounted: each allows itself and everything below it.
    #[serde(default)]
    pub bind_mounts: Vec<String>,
    /// Host files that may be read as env file, config or secret (same prefix rule).
    #[serde(default)]
    pub host_files: Vec<String>,
    /// Mounting the Docker socket (`/var/run/docker.sock`, `/run/docker.sock` or a directory
    /// holding one): that service can replace the installer's pinned containers. Never implied
    /// by `bind_mounts`.
    #[serde(default)]
    pub docker_socket: bool,
    /// Mounting the host's whole file system (`/`). Never implied by `bind_mounts`.
    #[serde(default)]
    pub host_root: bool,
}

/// Every service's request this policy does not allow, one line each, naming the service,
/// the capability and the policy line that would allow it. Empty when all is allowed.
pub fn refusals(m: &Manifest, allow: Option<&Allowances>) -> Vec<String> {
    let none = Allowances::default();
    let allow = allow.unwrap_or(&none);
    let mut out = Vec::new();
    for (svc, a) in &m.host_access {
        for need in needs(a) {
            if !need.allowed_by(allow) {
                out.push(format!(
                    "service `{svc}` asks for {}; allow it with `{}`",
                    need.what(),
                    need.line()
                ));
            }
        }
    }
    out
}

/// The `[policy.<profile>]` table that allows exactly what `m` asks (each line says which
/// services ask for it), for the operator to review.
pub fn suggest(m: &Manifest) -> String {
    let mut allow = Allowances::default();
    let mut by: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
    for (svc, a) in &m.host_access {
        for need in needs(a) {
            need.grant(&mut allow);
            let key = need.key().to_string();
            let list = by.entry(key).or_default();
            if !list.contains(&svc.as_str()) {
                list.push(svc);
            }
        }
    }
    let mut t = format!(
        "# What bundle {} {} ({}, environment {}) asks of this host.\n# Review it, then add it to the host config (/etc/smoker/host.toml by default).\n",
        m.name, m.version, m.arch, m.environment
    );
    if m.host_access.is_empty() {
        t.push_str("# It asks nothing beyond an unprivileged stack: no policy is needed.\n");
    }
    t.push_str(&format!("[policy.{}]\n", m.name));
    let services = |k: &str| by.get(k).map(|v| v.join(", ")).unwrap_or_default();
    for (key, on) in [
        ("privileged", allow.privileged),
        ("network_host", allow.network_host),
        ("pid_host", allow.pid_host),
        ("ipc_host", allow.ipc_host),
        ("userns_host", allow.userns_host),
        ("docker_socket", allow.docker_socket),
        ("host_root", allow.host_root),
    ] {
        if on {
            t.push_str(&format!("{key} = true  # {}\n", services(key)));
        }
    }
    for (key, list) in [
        ("devices", &allow.devices),
        ("cap_add", &allow.cap_add),
        ("security_opt", &allow.security_opt),
        ("bind_mounts", &allow.bind_mounts),
        ("host_files", &allow.host_files),
    ] {
        if !list.is_empty() {
            t.push_str(&format!(
                "{key} = {}  # {}\n",
                toml_list(list),
                services(key)
            ));
        }
    }
    t
}

fn toml_list(list: &[String]) -> String {
    let items: Vec<String> = list
        .iter()
        .map(|s| toml::Value::String(s.clone()).to_string())
        .collect();
    format!("[{}]", items.join(", "))
}

/// One thing a service asks of the host.
enum Need<'a> {
    Flag(&'static str, &'static str),
    Device(&'a str),
    Cap(&'a str),
    SecurityOpt(&'a str),
    Mount(&'a str),
    DockerSocket(&'a str),
    HostRoot,
    HostFile(&'a str),
}

fn needs(a: &HostAccess) -> Vec<Need<'_>> {
    let mut n = Vec::new();
    for (on, key, what) in [
        (
            a.privileged,
            "privileged",
            "privileged mode (`privileged: true`)",
        ),
        (
            a.network_host,
            "network_host",
            "the host's network (`network_mode: host`)",
        ),
        (
            a.pid_host,
            "pid_host",
            "the host's process namespace (`pid: host`)",
        ),
        (
            a.ipc_host,
            "ipc_host",
            "the host's IPC namespace (`ipc: host`)",
        ),
        (
            a.userns_host,
            "userns_host",
            "the host's user namespace (`userns_mode: host`)",
        ),
    ] {
        if on {
            n.push(Need::Flag(key, what));
        }
    }
    n.extend(a.devices.iter().map(|d| Need::Device(d)));
    n.extend(a.cap_add.iter().map(|c| Need::Cap(c)));
    n.extend(a.security_opt.iter().map(|o| Need::SecurityOpt(o)));
    for p in &a.bind_mounts {
        if p == "/" {
            n.push(Need::HostRoot);
            n.push(Need::DockerSocket(p));
        } else if exposes_docker_socket(p) {
            n.push(Need::DockerSocket(p));
            if !smoker_format::host_access::DOCKER_SOCKETS.contains(&p.as_str()) {
                n.push(Need::Mount(p));
            }
        } else {
            n.push(Need::Mount(p));
        }
    }
    n.extend(a.host_files.iter().map(|f| Need::HostFile(f)));
    n
}

fn covered(path: &str, prefixes: &[String]) -> bool {
    prefixes.iter().any(|p| {
        let p = match p.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        };
        p.starts_with('/') && path_within(path, p)
    })
}

impl Need<'_> {
    fn allowed_by(&self, a: &Allowances) -> bool {
        match self {
            Need::Flag(key, _) => match *key {
                "privileged" => a.privileged,
                "network_host" => a.network_host,
                "pid_host" => a.pid_host,
                "ipc_host" => a.ipc_host,
                _ => a.userns_host,
            },
            Need::Device(d) => covered(d, &a.devices),
            Need::Cap(c) => a.cap_add.iter().any(|x| x.eq_ignore_ascii_case(c)),
            Need::SecurityOpt(o) => a.security_opt.iter().any(|x| x == o),
            Need::Mount(p) => covered(p, &a.bind_mounts),
            Need::DockerSocket(_) => a.docker_socket,
            Need::HostRoot => a.host_root,
            Need::HostFile(f) => covered(f, &a.host_files),
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Need::Flag(key, _) => key,
            Need::Device(_) => "devices",
            Need::Cap(_) => "cap_add",
            Need::SecurityOpt(_) => "security_opt",
            Need::Mount(_) => "bind_mounts",
            Need::DockerSocket(_) => "docker_socket",
            Need::HostRoot => "host_root",
            Need::HostFile(_) => "host_files",
        }
    }

    fn what(&self) -> String {
        match self {
            Need::Flag(_, what) => what.to_string(),
            Need::Device(d) => format!("the device `{d}`"),
            Need::Cap(c) => format!("the capability `{c}` (`cap_add`)"),
            Need::SecurityOpt(o) => format!("the security option `{o}`"),
            Need::Mount(p) => format!("a bind mount of the host path `{p}`"),
            Need::DockerSocket(p) => format!(
                "the Docker socket (bind mount of `{p}`), with which it could replace the installer's pinned containers"
            ),
            Need::HostRoot => "the host's whole file system (bind mount of `/`)".to_string(),
            Need::HostFile(f) => format!("the host file `{f}` (env file, config or secret)"),
        }
    }

    fn line(&self) -> String {
        let one = |s: &str| toml_list(&[s.to_string()]);
        match self {
            Need::Flag(key, _) => format!("{key} = true"),
            Need::Device(d) => format!("devices = {}", one(d)),
            Need::Cap(c) => format!("cap_add = {}", one(c)),
            Need::SecurityOpt(o) => format!("security_opt = {}", one(o)),
            Need::Mount(p) => format!("bind_mounts = {}", one(p)),
            Need::DockerSocket(_) => "docker_socket = true".to_string(),
            Need::HostRoot => "host_root = true".to_string(),
            Need::HostFile(f) => format!("host_files = {}", one(f)),
        }
    }

    fn grant(&self, a: &mut Allowances) {
        let push = |list: &mut Vec<String>, s: &str| {
            if !list.iter().any(|x| x == s) {
                list.push(s.to_string());
                list.sort();
            }
        };
        match self {
            Need::Flag(key, _) => match *key {
                "privileged" => a.privileged = true,
                "network_host" => a.network_host = true,
                "pid_host" => a.pid_host = true,
                "ipc_host" => a.ipc_host = true,
                _ => a.userns_host = true,
            },
            Need::Device(d) => push(&mut a.devices, d),
            Need::Cap(c) => push(&mut a.cap_add, c),
            Need::SecurityOpt(o) => push(&mut a.security_opt, o),
            Need::Mount(p) => push(&mut a.bind_mounts, p),
            Need::DockerSocket(_) => a.docker_socket = true,
            Need::HostRoot => a.host_root = true,
            Need::HostFile(f) => push(&mut a.host_files, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoker_format::manifest::Arch;

    fn bundle(access: &[(&str, HostAccess)]) -> Manifest {
        let mut m = Manifest::skeleton("device", "1.0.0", Arch::Amd64, "prod");
        for (s, a) in access {
            m.host_access.insert(s.to_string(), a.clone());
        }
        m
    }

    fn ui() -> HostAccess {
        HostAccess {
            privileged: true,
            network_host: true,
            devices: vec!["/dev/ttyUSB0".into()],
            cap_add: vec!["NET_ADMIN".into()],
            security_opt: vec!["seccomp=unconfined".into()],
            bind_mounts: vec!["/srv/data/ui".into(), "/var/run/docker.sock".into()],
            host_files: vec!["/etc/app.env".into()],
            ..HostAccess::default()
        }
    }

    #[test]
    fn an_unprivileged_bundle_needs_no_policy() {
        assert!(refusals(&bundle(&[]), None).is_empty());
        assert!(suggest(&bundle(&[])).contains("no policy is needed"));
    }

    #[test]
    fn without_a_policy_every_request_is_refused_by_service_capability_and_line() {
        let r = refusals(&bundle(&[("ui", ui())]), None);
        let all = r.join("\n");
        for want in [
            "service `ui` asks for privileged mode (`privileged: true`); allow it with `privileged = true`",
            "`network_host = true`",
            "the device `/dev/ttyUSB0`; allow it with `devices = [\"/dev/ttyUSB0\"]`",
            "`cap_add = [\"NET_ADMIN\"]`",
            "`security_opt = [\"seccomp=unconfined\"]`",
            "`bind_mounts = [\"/srv/data/ui\"]`",
            "the Docker socket (bind mount of `/var/run/docker.sock`)",
            "`docker_socket = true`",
            "`host_files = [\"/etc/app.env\"]`",
        ] {
            assert!(all.contains(want), "missing {want}:\n{all}");
        }
        assert_eq!(r.len(), 8, "{all}");
    }

    #[test]
    fn the_suggestion_allows_exactly_the_bundle() {
        let m = bundle(&[
            ("ui", ui()),
            (
                "db",
                HostAccess {
                    pid_host: true,
                    ..HostAccess::default()
                },
            ),
        ]);
        let text = suggest(&m);
        #[derive(Deserialize)]
        struct File {
            policy: std::collections::BTreeMap<String, Allowances>,
        }
        let parsed: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let allow = &parsed.policy["device"];
        assert!(refusals(&m, Some(allow)).is_empty(), "{text}");
        assert!(
            allow.docker_socket && !allow.host_root && !allow.ipc_host,
            "{text}"
        );
        assert!(text.contains("pid_host = true  # db"), "{text}");
        // Another bundle asking one thing more is refused by the same policy.
        let mut more = ui();
        more.bind_mounts.insert(0, "/etc".into());
        let r = refusals(&bundle(&[("ui", more)]), Some(allow));
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("`/etc`"), "{r:?}");
    }

    #[test]
    fn bind_mounts_match_by_prefix_but_never_imply_the_socket_or_the_root() {
        let allow = Allowances {
            bind_mounts: vec!["/srv/data".into(), "/".into(), "/var/run".into()],
            ..Allowances::default()
        };
        let a = HostAccess {
            bind_mounts: vec!["/srv/data/x".into()],
            ..HostAccess::default()
        };
        assert!(refusals(&bundle(&[("s", a)]), Some(&allow)).is_empty());
        let prefix_only = Allowances {
            bind_mounts: vec!["/srv/data".into()],
            ..Allowances::default()
        };
        let sibling = HostAccess {
            bind_mounts: vec!["/srv/database".into()],
            ..HostAccess::default()
        };
        assert_eq!(
            refusals(&bundle(&[("s", sibling)]), Some(&prefix_only)).len(),
            1
        );
        for p in ["/var/run/docker.sock", "/run/docker.sock", "/var/run", "/"] {
            let a = HostAccess {
                bind_mounts: vec![p.into()],
                ..HostAccess::default()
            };
            let r = refusals(&bundle(&[("s", a.clone())]), Some(&allow));
            assert!(
                r.iter().any(|l| l.contains("docker_socket = true")),
                "{p}: {r:?}"
            );
            let with_socket = Allowances {
                docker_socket: true,
                host_root: true,
                ..allow.clone()
            };
            assert!(
                refusals(&bundle(&[("s", a)]), Some(&with_socket)).is_empty(),
                "{p}"
            );
        }
        let root = HostAccess {
            bind_mounts: vec!["/".into()],
            ..HostAccess::default()
        };
        let socket_only = Allowances {
            docker_socket: true,
            ..Allowances::default()
        };
        let r = refusals(&bundle(&[("s", root)]), Some(&socket_only));
        assert!(r.iter().any(|l| l.contains("host_root = true")), "{r:?}");
    }
}
