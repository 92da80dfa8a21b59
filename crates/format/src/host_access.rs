//! What a bundle's services ask of the host beyond an unprivileged container: privileged mode,
//! the host's network, pid, ipc or user namespaces, devices, added capabilities, security
//! options, host paths mounted or read. The release side computes it from the compose file and
//! signs it in the manifest ([`crate::manifest::Manifest::host_access`]); the host compares it
//! with its policy before anything of the bundle is stored.

use serde::{Deserialize, Serialize};

/// The Docker socket paths: a service that mounts one (or a directory holding one) can start,
/// stop and replace any container, the installer's pinned ones included.
pub const DOCKER_SOCKETS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// What one service asks of the host. Every field is empty or false for an unprivileged
/// service, which then has no entry at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAccess {
    /// `privileged: true`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    /// `network_mode: host`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub network_host: bool,
    /// `pid: host`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub pid_host: bool,
    /// `ipc: host`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub ipc_host: bool,
    /// `userns_mode: host`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub userns_host: bool,
    /// Host device paths (`devices:`), sorted, without their container side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Added capabilities (`cap_add:`), upper case without `CAP_`, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Security options (`security_opt:`), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    /// Absolute host paths bind-mounted into the service (also through a named volume bound to
    /// a host directory), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bind_mounts: Vec<String>,
    /// Absolute host files the service reads as `env_file`, config or secret, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_files: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl HostAccess {
    /// True when the service asks nothing of the host.
    pub fn is_empty(&self) -> bool {
        *self == HostAccess::default()
    }

    /// Sorts and deduplicates every list (the release side calls it once when done).
    pub fn normalize(&mut self) {
        for v in [
            &mut self.devices,
            &mut self.cap_add,
            &mut self.security_opt,
            &mut self.bind_mounts,
            &mut self.host_files,
        ] {
            v.sort();
            v.dedup();
        }
    }

    /// Bind mounts that expose the Docker socket: the socket itself or a directory holding it.
    pub fn docker_socket_mounts(&self) -> Vec<&str> {
        self.bind_mounts
            .iter()
            .map(String::as_str)
            .filter(|p| exposes_docker_socket(p))
            .collect()
    }

    /// Checks the shapes: absolute normalized paths, capability and option syntax.
    pub fn validate(&self, service: &str) -> Result<(), String> {
        for (what, list) in [
            ("device", &self.devices),
            ("bind mount", &self.bind_mounts),
            ("host file", &self.host_files),
        ] {
            for p in list {
                check_host_path(p)
                    .map_err(|e| format!("service `{service}`: {what} `{p}`: {e}"))?;
            }
            check_sorted(list).map_err(|e| format!("service `{service}`: {what}s {e}"))?;
        }
        for c in &self.cap_add {
            let ok = !c.is_empty()
                && c.len() <= 64
                && c.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!(
                    "service `{service}`: capability `{c}` is not an upper-case capability name"
                ));
            }
        }
        check_sorted(&self.cap_add).map_err(|e| format!("service `{service}`: cap_add {e}"))?;
        for o in &self.security_opt {
            let ok = !o.is_empty()
                && o.len() <= 256
                && !o.starts_with('-')
                && o.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "service `{service}`: security option `{o}` is not printable text"
                ));
            }
        }
        check_sorted(&self.security_opt)
            .map_err(|e| format!("service `{service}`: security_opt {e}"))?;
        Ok(())
    }
}

fn check_sorted(list: &[String]) -> Result<(), String> {
    if list.windows(2).any(|w| w[0] >= w[1]) {
        return Err("are not sorted or repeat".into());
    }
    Ok(())
}

/// An absolute host path in normal form: starts with `/`, no empty, `.` or `..` component, no
/// trailing `/` (except `/` itself), no control characters, at most 1024 bytes.
pub fn check_host_path(p: &str) -> Result<(), String> {
    if p.is_empty() || p.len() > 1024 {
        return Err("empty or too long".into());
    }
    if !p.starts_with('/') {
        return Err("not absolute".into());
    }
    if p == "/" {
        return Ok(());
    }
    for part in p[1..].split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("has an empty, `.` or `..` component".into());
        }
    }
    if p.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err("has a control character".into());
    }
    Ok(())
}

/// The normal form of an absolute path as written in a compose file (`//x/./y/` → `/x/y`);
/// `None` for a relative path or one with a `..` component.
pub fn normalize_host_path(p: &str) -> Option<String> {
    if !p.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            other => parts.push(other),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// True when `path` equals `prefix` or lies under it, by whole components (`/srv/data`
/// covers `/srv/data/x`, not `/srv/database`).
pub fn path_within(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return path.starts_with('/');
    }
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// True when mounting `path` exposes the Docker socket: the socket or a directory above it.
pub fn exposes_docker_socket(path: &str) -> bool {
    DOCKER_SOCKETS.iter().any(|s| path_within(s, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_matched_by_whole_components() {
        assert!(path_within("/srv/data", "/srv/data"));
        assert!(path_within("/srv/data/x", "/srv/data"));
        assert!(!path_within("/srv/database", "/srv/data"));
        assert!(path_within("/anything", "/"));
        assert!(exposes_docker_socket("/var/run/docker.sock"));
        assert!(exposes_docker_socket("/run/docker.sock"));
        assert!(exposes_docker_socket("/var/run"));
        assert!(exposes_docker_socket("/"));
        assert!(!exposes_docker_socket("/var/lib"));
        assert!(!exposes_docker_socket("/run/docker.socket"));
    }

    #[test]
    fn host_paths_are_normalized_or_refused() {
        assert_eq!(
            normalize_host_path("//srv/./data/").as_deref(),
            Some("/srv/data")
        );
        assert_eq!(normalize_host_path("/").as_deref(), Some("/"));
        assert_eq!(normalize_host_path("/srv/../etc"), None);
        assert_eq!(normalize_host_path("srv"), None);
        check_host_path("/srv/data").expect("normal");
        check_host_path("/").expect("root");
        for bad in [
            "",
            "srv",
            "/srv/",
            "/srv//x",
            "/srv/../etc",
            "/srv/./x",
            "/a\nb",
        ] {
            assert!(check_host_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shapes_are_validated() {
        let a = HostAccess {
            cap_add: vec!["NET_ADMIN".into(), "SYS_TIME".into()],
            bind_mounts: vec!["/srv/data".into(), "/var/run/docker.sock".into()],
            security_opt: vec!["seccomp=unconfined".into()],
            ..HostAccess::default()
        };
        a.validate("svc").expect("valid");
        assert_eq!(a.docker_socket_mounts(), ["/var/run/docker.sock"]);
        let mut b = a.clone();
        b.cap_add = vec!["net_admin".into()];
        assert!(b.validate("svc").unwrap_err().contains("capability"));
        let mut c = a.clone();
        c.bind_mounts = vec!["/b".into(), "/a".into()];
        assert!(c.validate("svc").unwrap_err().contains("sorted"));
        let mut d = a.clone();
        d.devices = vec!["dev/ttyUSB0".into()];
        assert!(d.validate("svc").unwrap_err().contains("not absolute"));
        let mut e = a;
        e.security_opt = vec!["--x".into()];
        assert!(e.validate("svc").is_err());
        assert!(HostAccess::default().is_empty());
    }
}
