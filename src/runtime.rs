//! Every `docker` and compose invocation lives here.
//!
//! Compose is reached through whichever front end the host has: the v2 plugin
//! (`docker compose`, what the Raspberry Pi has) is preferred, the v1 binary (`docker-compose`)
//! is the fallback; `SMOKER_COMPOSE=v1|v2` forces one. Each profile runs as one compose
//! project with a stable name, so a new generation replaces the previous one's containers.

use crate::error::{Error, Result};
use serde::Serialize;
use smoker_format::manifest::Manifest;
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

/// Tool output as text for messages: trimmed, with every secret value of the host env files
/// replaced (compose and hooks may echo them).
fn text(b: &[u8]) -> String {
    crate::redact::redact(String::from_utf8_lossy(b).trim())
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

/// Data operations inside a generation's containers (backups, restores, migrations).
impl Runtime {
    /// Runs `command` in the running container of `service` (`compose exec -T`) and streams its
    /// standard output into `out`. Returns the bytes written.
    pub fn exec_to(
        &self,
        stack: &Stack<'_>,
        service: &str,
        command: &[String],
        out: &mut dyn std::io::Write,
    ) -> Result<u64> {
        let mut child = self
            .compose_cmd(stack)
            .args(["exec", "-T", service])
            .args(command)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime(format!("cannot run compose exec: {e}")))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Runtime("compose exec gave no stdout".into()))?;
        let copied = std::io::copy(&mut stdout, out);
        let status = child
            .wait_with_output()
            .map_err(|e| Error::Runtime(format!("compose exec: {e}")))?;
        let n =
            copied.map_err(|e| Error::Runtime(format!("writing the output of {service}: {e}")))?;
        if !status.status.success() {
            return Err(Error::Runtime(format!(
                "`{}` in service `{service}` failed ({}): {}",
                command.join(" "),
                status.status,
                text(&status.stderr)
            )));
        }
        Ok(n)
    }

    /// Runs `command` in the running container of `service` with `input` on its standard input.
    pub fn exec_from(
        &self,
        stack: &Stack<'_>,
        service: &str,
        command: &[String],
        input: &mut dyn std::io::Read,
    ) -> Result<()> {
        let mut child = self
            .compose_cmd(stack)
            .args(["exec", "-T", service])
            .args(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime(format!("cannot run compose exec: {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Runtime("compose exec gave no stdin".into()))?;
        let copied = std::io::copy(input, &mut stdin);
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| Error::Runtime(format!("compose exec: {e}")))?;
        copied.map_err(|e| Error::Runtime(format!("feeding {service}: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "`{}` in service `{service}` failed ({}): {}",
                command.join(" "),
                out.status,
                text(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Runs a one-off container of `service` (`compose run --rm -T --no-deps`) with the host
    /// directory `mount` read-only at `target`; returns its combined output on success.
    pub fn run_oneoff(
        &self,
        stack: &Stack<'_>,
        service: &str,
        mount: &Path,
        target: &str,
        command: &[String],
    ) -> Result<String> {
        let out = self
            .compose_cmd(stack)
            .args(["run", "--rm", "-T", "--no-deps", "-v"])
            .arg(format!("{}:{target}:ro", mount.display()))
            .arg(service)
            .args(command)
            .output()
            .map_err(|e| Error::Runtime(format!("cannot run compose run: {e}")))?;
        let both = format!("{}\n{}", text(&out.stdout), text(&out.stderr));
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "`{}` in a one-off `{service}` container failed ({}): {}",
                command.join(" "),
                out.status,
                both.trim()
            )));
        }
        Ok(both.trim().to_string())
    }

    /// Host ports the stack publishes, as (host ip, port), from `compose config`.
    pub fn published_ports(&self, stack: &Stack<'_>) -> Result<Vec<(String, u16)>> {
        let out = self.compose(stack, &["config"], "reading the compose configuration")?;
        let docs = yaml_rust2::YamlLoader::load_from_str(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| Error::Runtime(format!("compose config printed invalid YAML: {e}")))?;
        let mut ports = Vec::new();
        let Some(services) = docs.first().and_then(|d| d["services"].as_hash()) else {
            return Ok(ports);
        };
        for (_, svc) in services {
            for p in svc["ports"].as_vec().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(s) = p.as_str() {
                    // "ip:published:target[/proto]" or "published:target".
                    let s = s.split('/').next().unwrap_or(s);
                    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
                    if let [_, published, rest @ ..] = parts.as_slice()
                        && let Ok(port) = published.parse::<u16>()
                    {
                        let ip = rest
                            .first()
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "0.0.0.0".into());
                        ports.push((ip, port));
                    }
                } else {
                    let published = p["published"]
                        .as_i64()
                        .or_else(|| p["published"].as_str().and_then(|s| s.parse().ok()));
                    if let Some(port) = published.and_then(|n| u16::try_from(n).ok()) {
                        let ip = p["host_ip"].as_str().unwrap_or("0.0.0.0").to_string();
                        ports.push((ip, port));
                    }
                }
            }
        }
        Ok(ports)
    }

    /// Ids of the containers of `project` that publish host port `port`.
    pub fn project_publishes(&self, project: &str, port: u16) -> bool {
        run(Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("publish={port}"),
        ]))
        .map(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
        .unwrap_or(false)
    }
}

/// Image operations of the images step (see [`crate::images`]).
impl Runtime {
    /// True when an image with this ID (`sha256:…`) or reference is present locally.
    pub fn has_image(&self, id_or_reference: &str) -> bool {
        self.image_id(id_or_reference).is_some()
    }

    /// Tags the local image `source` (an ID or reference) as `target`.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let out = run(Command::new("docker").args(["tag", source, target]))
            .map_err(|e| Error::Runtime(format!("docker tag: {e}")))?;
        if !out.status.success() {
            return Err(Error::Runtime(format!(
                "cannot tag {source} as {target}: {}",
                text(&out.stderr)
            )));
        }
        Ok(())
    }

    /// Removes one tag (the image itself stays while other references or containers use it).
    /// Returns true when the tag was removed.
    pub fn untag(&self, reference: &str) -> bool {
        run(Command::new("docker").args(["image", "rm", "--no-prune", reference]))
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `docker load` of a docker-archive that `feed` writes into its standard input, so the
    /// archive streams from disk to the daemon without being held in memory. Returns what
    /// `feed` returned and the lines Docker printed (`Loaded image: …`).
    pub fn load<T, E: std::fmt::Display>(
        &self,
        feed: impl FnOnce(&mut dyn std::io::Write) -> std::result::Result<T, E>,
    ) -> Result<(T, Vec<String>)> {
        let mut child = Command::new("docker")
            .args(["load", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime(format!("cannot run docker load: {e}")))?;
        let (Some(stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Runtime("docker load: no pipes to talk to it".into()));
        };
        // Drain Docker's output on threads so a full pipe can never stall the feed.
        let drain = |r: &mut dyn std::io::Read| {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        };
        let out_thread = std::thread::spawn(move || drain(&mut stdout));
        let err_thread = std::thread::spawn(move || drain(&mut stderr));
        let mut stdin = std::io::BufWriter::with_capacity(256 * 1024, stdin);
        let fed = feed(&mut stdin);
        let flushed = std::io::Write::flush(&mut stdin);
        drop(stdin);
        let status = child
            .wait()
            .map_err(|e| Error::Runtime(format!("docker load: {e}")))?;
        let out = out_thread.join().unwrap_or_default();
        let err = err_thread.join().unwrap_or_default();
        if !status.success() {
            let feed_note = match &fed {
                Err(e) => format!(" (while streaming the archive: {e})"),
                Ok(_) => String::new(),
            };
            return Err(Error::Runtime(format!(
                "docker load failed ({status}): {}{feed_note}",
                text(&err)
            )));
        }
        let value = fed.map_err(|e| {
            Error::Runtime(format!("streaming the image archive to docker load: {e}"))
        })?;
        flushed.map_err(|e| Error::Runtime(format!("streaming to docker load: {e}")))?;
        let lines = text(&out).lines().map(str::to_string).collect();
        Ok((value, lines))
    }
}

impl Runtime {
    /// The image IDs of several local image references, asked with one `docker image inspect`
    /// (one process, one daemon round trip, however many images a bundle has). `Some` holds one
    /// ID per reference, in order, when every reference is present; `None` when any is missing
    /// or Docker did not answer as expected: then ask [`Runtime::image_id`] per reference.
    pub fn image_ids(&self, references: &[String]) -> Option<Vec<String>> {
        if references.is_empty() {
            return Some(Vec::new());
        }
        let out = run(Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", "--"])
            .args(references))
        .ok()?;
        if !out.status.success() {
            return None;
        }
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        (ids.len() == references.len() && ids.iter().all(|id| id.starts_with("sha256:")))
            .then_some(ids)
    }
}
