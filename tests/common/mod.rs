//! Shared harness for the integration tests that need real Docker.
//!
//! Include it with `mod common;` from a test in `tests/*.rs`. It provides:
//!
//! * [`testsvc_static_binary`], [`build_image`], [`build_image_with`] —
//!   a fully static build of `tests/testsvc` and `FROM scratch` images of it
//!   (see [`images`]);
//! * [`Registry`] — a real registry (`docker-registry` package) on loopback;
//! * [`require_docker`], [`require_docker_compose`], [`require_registry`] —
//!   fail (never skip) when the tools are missing;
//! * [`unique_name`], [`free_port`], [`wait_for`], [`published_port`],
//!   [`container_health`] and the [`docker`] / [`docker_output`] runners;
//! * [`Cleanup`] — removes what a test registered, on drop, even when the
//!   test panics.
//!
//! Tests must fail, never skip, when Docker or the registry is missing.

#![allow(dead_code, unused_imports)]

pub mod http;
pub mod images;
pub mod registry;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use images::{
    ImageInfo, TEST_IMAGE_LABEL, TESTSVC_PORT, build_image, build_image_with, testsvc_static_binary,
};
pub use registry::{REGISTRY_PACKAGE, Registry, registry_binary};

/// The workspace root (the root package's manifest dir).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Panics with a clear message unless `docker info` succeeds. The check runs
/// once per test process.
pub fn require_docker() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECK.get_or_init(|| {
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`docker info` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run `docker`: {e}")),
        }
    });
    if let Err(e) = result {
        panic!(
            "these tests need a running Docker daemon and the docker CLI (Debian package \
             `docker.io`), and they fail rather than skip without them: {e}"
        );
    }
}

/// Panics with a clear message unless `docker-compose version` succeeds
/// (Compose v1, Debian package `docker-compose`).
pub fn require_docker_compose() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    let result = CHECK.get_or_init(|| {
        match Command::new("docker-compose")
            .arg("version")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(format!(
                "`docker-compose version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => Err(format!("cannot run `docker-compose`: {e}")),
        }
    });
    if let Err(e) = result {
        panic!("these tests need docker-compose (Debian package `docker-compose`): {e}");
    }
}

/// Panics naming the Debian package `docker-registry` unless its registry
/// binary is installed (see [`registry_binary`]).
pub fn require_registry() {
    registry_binary();
}

/// A name unique to this process and call, safe for containers, images,
/// volumes, networks and Compose projects: `smoker-test-<prefix>-<pid>-<n>-<rand>`,
/// lowercase, `[a-z0-9-]` only.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "smoker-test-{}-{}-{}-{:04x}",
        clean.trim_matches('-'),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        nanos & 0xffff
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read
/// the port, release it). Prefer letting Docker choose (`-p 127.0.0.1::8080`
/// plus [`published_port`]) when a container publishes the port.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}

/// Runs `docker ARGS` and returns its output, whatever the exit status.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker ARGS`, panics with its stderr when it fails, and returns
/// its trimmed stdout.
pub fn docker(args: &[&str]) -> String {
    let out = docker_output(args);
    assert!(
        out.status.success(),
        "`docker {}` failed ({}):\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Calls `probe` every 100 ms until it returns `Some`, and returns that
/// value; panics naming `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host port Docker published for `container_port/tcp` of `container`
/// (for containers run with `-p 127.0.0.1::PORT`).
pub fn published_port(container: &str, container_port: u16) -> u16 {
    let out = docker(&["port", container, &format!("{container_port}/tcp")]);
    out.lines()
        .filter_map(|l| l.trim().rsplit_once(':'))
        .find_map(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("no published port for {container_port}/tcp of {container}: {out:?}")
        })
}

/// The Docker health status of a container (`starting`, `healthy`,
/// `unhealthy`), or `none` when it has no health check.
pub fn container_health(container: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        container,
    ])
}

/// Waits until `container`'s health status is `status`; panics after
/// `timeout` with the container's logs.
pub fn wait_for_health(container: &str, status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let current = container_health(container);
        if current == status {
            return;
        }
        if Instant::now() >= deadline {
            let logs = docker_output(&["logs", "--tail", "50", container]);
            panic!(
                "container {container} is {current:?}, not {status:?}, after {timeout:?}; logs:\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Removes, on drop, the Docker objects a test registered: containers
/// (`docker rm -f -v`), Compose projects (every container, network and
/// volume labelled `com.docker.compose.project=NAME`, so no compose file is
/// needed), volumes, networks and images (`docker rmi -f`). Best effort:
/// errors are ignored. Create one at the start of a test so it also cleans up
/// after a panic.
#[derive(Debug, Default)]
pub struct Cleanup {
    containers: Vec<String>,
    compose_projects: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Cleanup {
    /// An empty guard.
    pub fn new() -> Cleanup {
        Cleanup::default()
    }

    /// Registers a container (name or ID); returns it for chaining.
    pub fn container(&mut self, name: &str) -> String {
        self.containers.push(name.to_string());
        name.to_string()
    }

    /// Registers a Compose project name; returns it.
    pub fn compose_project(&mut self, name: &str) -> String {
        self.compose_projects.push(name.to_string());
        name.to_string()
    }

    /// Registers a named volume; returns it.
    pub fn volume(&mut self, name: &str) -> String {
        self.volumes.push(name.to_string());
        name.to_string()
    }

    /// Registers a network; returns it.
    pub fn network(&mut self, name: &str) -> String {
        self.networks.push(name.to_string());
        name.to_string()
    }

    /// Registers an image reference (tag, `repo@digest` or ID); returns it.
    pub fn image(&mut self, reference: &str) -> String {
        self.images.push(reference.to_string());
        reference.to_string()
    }
}

/// IDs from `docker <kind> ls -q --filter label=com.docker.compose.project=NAME`.
fn compose_labelled(kind: &str, project: &str) -> Vec<String> {
    let label = format!("label=com.docker.compose.project={project}");
    let out = match kind {
        "container" => docker_output(&["ps", "-aq", "--filter", &label]),
        _ => docker_output(&[kind, "ls", "-q", "--filter", &label]),
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn docker_many(prefix: &[&str], items: &[String]) {
    if items.is_empty() {
        return;
    }
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend(items.iter().map(String::as_str));
    let _ = docker_output(&args);
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut containers = std::mem::take(&mut self.containers);
        let mut networks = std::mem::take(&mut self.networks);
        let mut volumes = std::mem::take(&mut self.volumes);
        let projects = std::mem::take(&mut self.compose_projects);
        for project in &projects {
            containers.extend(compose_labelled("container", project));
        }
        docker_many(&["rm", "-f", "-v"], &containers);
        for project in &projects {
            networks.extend(compose_labelled("network", project));
            volumes.extend(compose_labelled("volume", project));
        }
        docker_many(&["network", "rm"], &networks);
        docker_many(&["volume", "rm", "-f"], &volumes);
        docker_many(&["rmi", "-f"], &std::mem::take(&mut self.images));
    }
}
