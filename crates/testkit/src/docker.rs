//! The Docker CLI: checks that it is there, running it, and reading containers and images.

use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `Ok` when `program ARGS` runs and exits 0, else why not.
fn check_runs(program: &str, args: &[&str]) -> Result<(), String> {
    let what = format!("{program} {}", args.join(" "));
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

/// `Ok` when `docker info` answers, else why not.
pub fn check_docker() -> Result<(), String> {
    check_runs("docker", &["info", "--format", "{{.ServerVersion}}"])
}

/// Panics with a clear message unless `docker info` succeeds. The check runs once per process.
pub fn require_docker() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = CHECK.get_or_init(check_docker) {
        panic!(
            "these tests need a running Docker daemon and the docker CLI (Debian package \
             `docker.io`), and they fail rather than skip without them: {e}"
        );
    }
}

/// Panics with a clear message unless `docker-compose version` succeeds (Compose v1, Debian
/// package `docker-compose`).
pub fn require_docker_compose() {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = CHECK.get_or_init(|| check_runs("docker-compose", &["version"])) {
        panic!("these tests need docker-compose (Debian package `docker-compose`): {e}");
    }
}

/// The Compose front ends present on this machine: `v2` (`docker compose`), `v1`
/// (`docker-compose`); possibly none.
pub fn available_frontends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if check_runs("docker", &["compose", "version"]).is_ok() {
        v.push("v2");
    }
    if check_runs("docker-compose", &["version"]).is_ok() {
        v.push("v1");
    }
    v
}

/// Both Compose front ends, `v2` then `v1`; panics naming the one that is missing (the test
/// suite runs every scenario under both and never drops one silently).
pub fn frontends() -> Vec<&'static str> {
    let v = available_frontends();
    for (want, how) in [
        (
            "v2",
            "the docker compose plugin (scripts/install-deps.sh installs it)",
        ),
        ("v1", "docker-compose (Debian package `docker-compose`)"),
    ] {
        assert!(
            v.contains(&want),
            "compose {want} is missing: these tests run under both front ends; install {how}"
        );
    }
    v
}

/// Declares, for each function `name(frontend: &str)` given, a module `name` with one test per
/// Compose front end, `name::compose_v2` and `name::compose_v1`, so the test output names the
/// front end each scenario ran under. A missing front end fails its test ([`frontends`]).
#[macro_export]
macro_rules! per_frontend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn compose_v2() {
                    assert!($crate::docker::frontends().contains(&"v2"));
                    super::$name("v2");
                }
                #[test]
                fn compose_v1() {
                    assert!($crate::docker::frontends().contains(&"v1"));
                    super::$name("v1");
                }
            }
        )*
    };
}

/// Runs `docker ARGS` and returns its output, whatever the exit status.
pub fn docker_output(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `docker {}`: {e}", args.join(" ")))
}

/// Runs `docker ARGS`, panics with its output when it fails, and returns its trimmed stdout.
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

/// `docker image inspect --format FORMAT REFERENCE`, trimmed; `None` when there is no such
/// image.
pub fn image_inspect(reference: &str, format: &str) -> Option<String> {
    let out = docker_output(&["image", "inspect", "--format", format, reference]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The ID of image `reference` (`sha256:…`); panics when there is none.
pub fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "--format", "{{.Id}}", reference])
}

/// The running containers of a Compose project (full IDs), each with the ID of the image it
/// runs.
pub fn running_containers(project: &str) -> Vec<(String, String)> {
    let ids = docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    ids.split_whitespace()
        .map(|c| {
            let image = docker(&["inspect", "-f", "{{.Image}}", c]);
            (c.to_string(), image.trim().to_string())
        })
        .collect()
}

/// IDs of `docker <kind>` objects labelled `com.docker.compose.project=PROJECT` (kind
/// `container` lists stopped ones too).
pub fn compose_labelled(kind: &str, project: &str) -> Vec<String> {
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

/// Runs `docker PREFIX… ITEMS…` when there are items; errors are ignored.
pub(crate) fn docker_many(prefix: &[&str], items: &[String]) {
    if items.is_empty() {
        return;
    }
    let mut args: Vec<&str> = prefix.to_vec();
    args.extend(items.iter().map(String::as_str));
    let _ = docker_output(&args);
}

/// Removes every container, network and volume of a Compose project (found by label, so no
/// compose file is needed). Best effort: errors are ignored.
pub fn remove_compose_project(project: &str) {
    docker_many(&["rm", "-f", "-v"], &compose_labelled("container", project));
    docker_many(&["network", "rm"], &compose_labelled("network", project));
    docker_many(
        &["volume", "rm", "-f"],
        &compose_labelled("volume", project),
    );
}

/// The host port Docker published for `container_port/tcp` of `container` (for containers
/// run with `-p 127.0.0.1::PORT`).
pub fn published_port(container: &str, container_port: u16) -> u16 {
    let out = docker(&["port", container, &format!("{container_port}/tcp")]);
    out.lines()
        .filter_map(|l| l.trim().rsplit_once(':'))
        .find_map(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| {
            panic!("no published port for {container_port}/tcp of {container}: {out:?}")
        })
}

/// The Docker health status of a container (`starting`, `healthy`, `unhealthy`), or `none`
/// when it has no health check.
pub fn container_health(container: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        container,
    ])
}

/// Waits until `container`'s health status is `status`; panics after `timeout` with the
/// container's logs.
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
