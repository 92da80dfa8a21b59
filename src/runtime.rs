//! Every `docker` and compose invocation lives here.
//!
//! Compose is reached through whichever front end the host has: the v2 plugin
//! (`docker compose`, what the Raspberry Pi has) is preferred, the v1 binary (`docker-compose`)
//! is the fallback; `SMOKER_COMPOSE=v1|v2` forces one. Each profile runs as one compose
//! project with a stable name, so a new generation replaces the previous one's containers.

use crate::error::{Error, Result};
use crate::manifest::Manifest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Environment variable forcing a compose front end (`v1` or `v2`).
pub const COMPOSE_ENV: &str = "SMOKER_COMPOSE";

/// Which compose front end is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Frontend {
    /// `docker compose` (plugin).
    V2,
    /// `docker-compose` (standalone v1).
    V1,
}

/// The container runtime of this host.
#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    /// Compose front end.
    pub frontend: Frontend,
    /// Docker Engine (server) version.
    pub docker_version: String,
    /// Compose version.
    pub compose_version: String,
}

/// One container of a compose project.
#[derive(Debug, Clone, Serialize)]
pub struct Container {
    /// Container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Compose service.
    pub service: String,
    /// `running`, `exited`, `restarting`, …
    pub state: String,
    /// Exit code (meaningful when exited).
    pub exit_code: i64,
    /// Docker health status (`healthy`, `unhealthy`, `starting`) when the image or compose
    /// file defines a health check.
    pub health: Option<String>,
    /// Image id (`sha256:…`, the config digest).
    pub image_id: String,
    /// How many times Docker restarted it.
    pub restart_count: i64,
}

/// Where a generation's compose files are and with which environment it runs.
pub struct Stack<'a> {
    /// Compose project name.
    pub project: &'a str,
    /// Store entry directory.
    pub dir: &'a Path,
    /// The generation's manifest.
    pub manifest: &'a Manifest,
    /// Variables for interpolation: bundle config, then host secrets.
    pub env: &'a BTreeMap<String, String>,
}

fn run(cmd: &mut Command) -> std::io::Result<Output> {
    cmd.stdin(Stdio::null()).output()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

impl Runtime {
    /// Finds Docker and a compose front end; fails naming what is missing.
    pub fn detect() -> Result<Runtime> {
        let out = run(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
            .map_err(|e| {
                Error::Runtime(format!(
                    "the docker CLI cannot be run ({e}); install Docker Engine"
                ))
            })?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "the Docker daemon does not answer: {}; start it (systemctl start docker) and check permissions",
                text(&out.stderr)
            )));
        }
        let docker_version = text(&out.stdout);
        let forced = std::env::var(COMPOSE_ENV).ok();
        let v2 = || {
            run(Command::new("docker").args(["compose", "version", "--short"]))
                .ok()
                .filter(|o| o.status.success())
                .map(|o| text(&o.stdout))
        };
        let v1 = || {
            run(Command::new("docker-compose").args(["version", "--short"]))
                .ok()
                .filter(|o| o.status.success())
                .map(|o| text(&o.stdout))
        };
        let (frontend, compose_version) = match forced.as_deref() {
            Some("v2") => (Frontend::V2, v2()),
            Some("v1") => (Frontend::V1, v1()),
            _ => match v2() {
                Some(v) => (Frontend::V2, Some(v)),
                None => (Frontend::V1, v1()),
            },
        };
        let compose_version = compose_version.ok_or_else(|| {
            Error::Runtime(
                "no compose front end found: install the `docker compose` plugin or `docker-compose`"
                    .into(),
            )
        })?;
        Ok(Runtime {
            frontend,
            docker_version,
            compose_version,
        })
    }

    fn compose_cmd(&self, stack: &Stack<'_>) -> Command {
        let mut cmd = match self.frontend {
            Frontend::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            Frontend::V1 => Command::new("docker-compose"),
        };
        cmd.arg("--project-name")
            .arg(stack.project)
            .arg("--project-directory")
            .arg(stack.dir.join(&stack.manifest.compose.project_directory));
        for f in &stack.manifest.compose.files {
            cmd.arg("--file").arg(stack.dir.join(f));
        }
        cmd.envs(stack.env);
        // Compose v1 reads `.env` from the project directory; the bundle's config is passed
        // explicitly instead, so nothing on the host's working directory leaks in.
        cmd.stdin(Stdio::null());
        cmd
    }

    fn compose(&self, stack: &Stack<'_>, args: &[&str], what: &str) -> Result<Output> {
        let out = self
            .compose_cmd(stack)
            .args(args)
            .output()
            .map_err(|e| Error::Runtime(format!("{what}: cannot run compose: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "{what} failed (compose {}):\n{}",
                args.join(" "),
                text(&out.stderr)
            )));
        }
        Ok(out)
    }

    /// `compose up -d --remove-orphans` for a generation.
    pub fn up(&self, stack: &Stack<'_>) -> Result<()> {
        self.compose(
            stack,
            &["up", "-d", "--remove-orphans"],
            "starting the stack",
        )
        .map(|_| ())
    }

    /// `compose down` (containers only; volumes are kept).
    pub fn down(&self, stack: &Stack<'_>) -> Result<()> {
        self.compose(stack, &["down", "--remove-orphans"], "stopping the stack")
            .map(|_| ())
    }

    /// Checks the compose files parse with the given environment (`compose config -q`).
    pub fn check_config(&self, stack: &Stack<'_>) -> Result<()> {
        self.compose(stack, &["config", "-q"], "checking the compose files")
            .map(|_| ())
    }

    /// Containers of a compose project (all states).
    pub fn containers(&self, project: &str) -> Result<Vec<Container>> {
        let out = run(Command::new("docker").args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ]))
        .map_err(|e| Error::Runtime(format!("docker ps: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "docker ps failed: {}",
                text(&out.stderr)
            )));
        }
        let ids: Vec<String> = text(&out.stdout)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let out = run(Command::new("docker").arg("inspect").args(&ids))
            .map_err(|e| Error::Runtime(format!("docker inspect: {e}")))?;
        // A container removed between ps and inspect makes inspect fail for it only; parse
        // what was printed.
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut list = Vec::new();
        for c in v.as_array().cloned().unwrap_or_default() {
            let s = |p: &str| {
                c.pointer(p)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            list.push(Container {
                id: s("/Id"),
                name: s("/Name").trim_start_matches('/').to_string(),
                service: s("/Config/Labels/com.docker.compose.service"),
                state: s("/State/Status"),
                exit_code: c
                    .pointer("/State/ExitCode")
                    .and_then(|x| x.as_i64())
                    .unwrap_or(0),
                health: c
                    .pointer("/State/Health/Status")
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
                image_id: s("/Image"),
                restart_count: c
                    .pointer("/RestartCount")
                    .and_then(|x| x.as_i64())
                    .unwrap_or(0),
            });
        }
        list.sort_by(|a, b| a.service.cmp(&b.service).then(a.name.cmp(&b.name)));
        Ok(list)
    }

    /// The image id of a local image reference, if present.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        let out = run(
            Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", reference])
        )
        .ok()?;
        out.status.success().then(|| text(&out.stdout))
    }

    /// Pulls an image by reference.
    pub fn pull(&self, reference: &str) -> Result<()> {
        let out = run(Command::new("docker").args(["pull", "--quiet", reference]))
            .map_err(|e| Error::Runtime(format!("docker pull: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "cannot pull {reference}: {}; check the network and registry credentials, or use an offline bundle",
                text(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Removes an image (ignored when in use or absent). Returns true when it was removed.
    pub fn remove_image(&self, reference: &str) -> bool {
        run(Command::new("docker").args(["image", "rm", reference]))
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Docker's data root (for disk-space checks).
    pub fn data_root(&self) -> Option<PathBuf> {
        let out =
            run(Command::new("docker").args(["info", "--format", "{{.DockerRootDir}}"])).ok()?;
        out.status
            .success()
            .then(|| PathBuf::from(text(&out.stdout)))
            .filter(|p| !p.as_os_str().is_empty())
    }
}
