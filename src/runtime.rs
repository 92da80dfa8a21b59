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
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

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
    /// The output of its last Docker health check run, when it has one (trimmed, redacted).
    pub health_output: Option<String>,
    /// The host root that started it (label `io.smoker.root`), when smoker-install did.
    pub owner_root: Option<String>,
    /// The profile that started it (label `io.smoker.profile`), when smoker-install did.
    pub owner_profile: Option<String>,
}

/// Label naming the host root whose installer started a container.
pub const ROOT_LABEL: &str = "io.smoker.root";
/// Label naming the profile a container belongs to.
pub const PROFILE_LABEL: &str = "io.smoker.profile";
/// Label carrying the content address of the files a service's container reads from the
/// bundle, so compose recreates it exactly when they change.
pub const INPUTS_LABEL: &str = "io.smoker.inputs";

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
    /// Compose files the host adds after the bundle's own (the inputs override, see
    /// [`crate::inputs`]), in order.
    pub overrides: &'a [PathBuf],
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
        for f in stack.overrides {
            cmd.arg("--file").arg(f);
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

    /// The arguments of `compose up` for a generation: detached, orphans removed, and never a
    /// build or a pull, whatever the compose file's `pull_policy` says (the images step made
    /// every pinned image present; v1 has no `--pull` but pulls only missing images).
    pub fn up_args(&self) -> &'static [&'static str] {
        match self.frontend {
            Frontend::V2 => &[
                "up",
                "-d",
                "--remove-orphans",
                "--no-build",
                "--pull",
                "never",
            ],
            Frontend::V1 => &["up", "-d", "--remove-orphans", "--no-build"],
        }
    }

    /// Starts `compose up` for a generation and returns at once, so the health gate can watch
    /// the containers while compose creates them (compose blocks on `service_healthy`
    /// dependencies, which may take minutes).
    pub fn start_up(&self, stack: &Stack<'_>) -> Result<Up> {
        let mut child = self
            .compose_cmd(stack)
            .args(self.up_args())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Runtime(format!("starting the stack: cannot run compose: {e}")))?;
        let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut r) = r {
                    let _ = std::io::Read::read_to_end(
                        &mut std::io::Read::take(&mut r, 1 << 20),
                        &mut buf,
                    );
                    // Keep reading (and dropping) so compose never blocks on a full pipe.
                    let _ = std::io::copy(&mut r, &mut std::io::sink());
                }
                buf
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|r| Box::new(r) as Box<dyn std::io::Read + Send>),
        );
        Ok(Up {
            child,
            out: Some(out),
            err: Some(err),
            done: None,
        })
    }

    /// `compose up` for a generation, waiting for it to finish.
    pub fn up(&self, stack: &Stack<'_>) -> Result<()> {
        let mut up = self.start_up(stack)?;
        loop {
            if let Some(done) = up.poll()? {
                return done.map_err(|e| Error::Runtime(format!("starting the stack failed: {e}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `compose down` (containers only; volumes are kept).
    pub fn down(&self, stack: &Stack<'_>) -> Result<()> {
        self.compose(stack, &["down", "--remove-orphans"], "stopping the stack")
            .map(|_| ())
    }

    /// The compose front end's resolved view of the files (`compose config`, run once): the
    /// services' bind mounts and published ports. Fails with compose's own error when it
    /// rejects the files.
    pub fn config(&self, stack: &Stack<'_>) -> Result<Resolved> {
        let out = self.compose(stack, &["config"], "reading the compose configuration")?;
        Resolved::parse(&String::from_utf8_lossy(&out.stdout))
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
                health_output: c
                    .pointer("/State/Health/Log")
                    .and_then(|l| l.as_array())
                    .and_then(|l| l.last())
                    .and_then(|l| l.get("Output"))
                    .and_then(|o| o.as_str())
                    .map(|o| crate::redact::redact(o.trim()))
                    .filter(|o| !o.is_empty()),
                owner_root: c
                    .pointer("/Config/Labels")
                    .and_then(|l| l.get(ROOT_LABEL))
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
                owner_profile: c
                    .pointer("/Config/Labels")
                    .and_then(|l| l.get(PROFILE_LABEL))
                    .and_then(|x| x.as_str())
                    .map(str::to_string),
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

    /// The registry mirrors the engine pulls Docker Hub images through (`registry-mirrors` of
    /// the daemon's configuration), as URLs.
    pub fn registry_mirrors(&self) -> Vec<String> {
        let Ok(out) = run(Command::new("docker").args([
            "info",
            "--format",
            "{{json .RegistryConfig.Mirrors}}",
        ])) else {
            return Vec::new();
        };
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Option<Vec<String>>>(&out.stdout)
            .ok()
            .flatten()
            .unwrap_or_default()
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

/// A `compose up` running in the background ([`Runtime::start_up`]).
pub struct Up {
    child: Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
    done: Option<std::result::Result<(), String>>,
}

impl Up {
    /// `None` while compose runs; once it has exited, `Ok(())` when it succeeded, else its
    /// error output (redacted). Every call after it exited gives the same answer.
    pub fn poll(&mut self) -> Result<Option<std::result::Result<(), String>>> {
        if let Some(done) = &self.done {
            return Ok(Some(done.clone()));
        }
        let status = self
            .child
            .try_wait()
            .map_err(|e| Error::Runtime(format!("waiting for compose up: {e}")))?;
        let Some(status) = status else {
            return Ok(None);
        };
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let done = if status.success() {
            Ok(())
        } else {
            let mut msg = text(&err);
            if msg.is_empty() {
                msg = text(&out);
            }
            Err(format!("compose up exited with {status}: {msg}"))
        };
        self.done = Some(done.clone());
        Ok(Some(done))
    }

    /// Stops compose (the health gate has decided): kills it and waits for it to exit.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Compose's text with each container ID it mentions (compose v1 says `Container "ef0be9d83fd4"
/// is unhealthy` of a *dependency*) followed by the service it belongs to.
pub fn name_containers(text: &str, containers: &[Container]) -> String {
    let mut out = text.to_string();
    for c in containers {
        let short = c.id.get(..12).unwrap_or(&c.id);
        if short.len() == 12 && out.contains(short) {
            let full_named = format!("{} (service `{}`)", short, c.service);
            // Replace the longest form present, once per container.
            let form = if out.contains(c.id.as_str()) {
                c.id.as_str()
            } else {
                short
            };
            out = out.replace(form, &full_named);
        }
    }
    out
}

/// One bind mount of a service as the compose front end resolved it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bind {
    /// Absolute host path.
    pub source: PathBuf,
    /// Path inside the container (compose merges override entries by it).
    pub target: String,
    item: BindItem,
}

#[derive(Debug, Clone, PartialEq)]
enum BindItem {
    /// `source:target[:mode]` (compose v1's output); holds what follows the source.
    Short(String),
    /// The long form (compose v2's output), as JSON.
    Long(serde_json::Value),
}

impl Bind {
    /// The same mount with another host path, in the form compose printed it (so options such
    /// as `ro`, propagation or SELinux labels carry over), for an override file.
    pub fn with_source(&self, source: &Path) -> serde_json::Value {
        match &self.item {
            BindItem::Short(rest) => format!("{}{rest}", source.display()).into(),
            BindItem::Long(v) => {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.insert("source".into(), source.display().to_string().into());
                }
                v
            }
        }
    }
}

/// One service of a resolved compose configuration.
#[derive(Debug, Clone, Default)]
pub struct ResolvedService {
    /// Bind mounts (named volumes and tmpfs are not listed).
    pub binds: Vec<Bind>,
    /// Published host ports as (host ip, port).
    pub ports: Vec<(String, u16)>,
    /// Top-level `configs` the service uses (by name).
    pub configs: Vec<String>,
    /// Top-level `secrets` the service uses (by name).
    pub secrets: Vec<String>,
}

/// What `compose config` printed, parsed (v1 and v2 print different shapes of the same model).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// The top-level `version`, when compose printed one (v1 does; an override file must
    /// repeat it).
    pub version: Option<String>,
    /// Services by name.
    pub services: BTreeMap<String, ResolvedService>,
    /// Top-level file-based `configs` and `secrets`: (section, name) → absolute file path.
    pub files: BTreeMap<(String, String), PathBuf>,
}

impl Resolved {
    /// Parses `compose config` output.
    pub fn parse(text: &str) -> Result<Resolved> {
        let docs = yaml_rust2::YamlLoader::load_from_str(text)
            .map_err(|e| Error::Runtime(format!("compose config printed invalid YAML: {e}")))?;
        let mut r = Resolved::default();
        let Some(doc) = docs.first() else {
            return Ok(r);
        };
        r.version = match &doc["version"] {
            yaml_rust2::Yaml::String(s) => Some(s.clone()),
            yaml_rust2::Yaml::Real(s) => Some(s.clone()),
            yaml_rust2::Yaml::Integer(i) => Some(i.to_string()),
            _ => None,
        };
        if let Some(services) = doc["services"].as_hash() {
            for (name, svc) in services {
                let Some(name) = name.as_str() else { continue };
                r.services.insert(name.to_string(), parse_service(svc));
            }
        }
        for section in ["configs", "secrets"] {
            if let Some(h) = doc[section].as_hash() {
                for (name, def) in h {
                    if let (Some(name), Some(file)) = (name.as_str(), def["file"].as_str()) {
                        r.files
                            .insert((section.to_string(), name.to_string()), PathBuf::from(file));
                    }
                }
            }
        }
        Ok(r)
    }

    /// Every published host port of every service.
    pub fn published_ports(&self) -> Vec<(String, u16)> {
        self.services
            .values()
            .flat_map(|s| s.ports.iter().cloned())
            .collect()
    }
}

fn parse_service(svc: &yaml_rust2::Yaml) -> ResolvedService {
    let mut out = ResolvedService::default();
    for v in svc["volumes"].as_vec().map(Vec::as_slice).unwrap_or(&[]) {
        if let Some(s) = v.as_str() {
            // v1: "source:target[:mode]"; a named volume's source is not a path.
            if let Some((source, rest)) = s.split_once(':')
                && source.starts_with('/')
            {
                let target = rest.split(':').next().unwrap_or(rest).to_string();
                out.binds.push(Bind {
                    source: PathBuf::from(source),
                    target,
                    item: BindItem::Short(format!(":{rest}")),
                });
            }
        } else if v["type"].as_str() == Some("bind")
            && let (Some(source), Some(target)) = (v["source"].as_str(), v["target"].as_str())
        {
            out.binds.push(Bind {
                source: PathBuf::from(source),
                target: target.to_string(),
                item: BindItem::Long(yaml_to_json(v)),
            });
        }
    }
    for (section, list) in [("configs", &mut out.configs), ("secrets", &mut out.secrets)] {
        for c in svc[section].as_vec().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(name) = c.as_str().or_else(|| c["source"].as_str()) {
                list.push(name.to_string());
            }
        }
    }
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
                out.ports.push((ip, port));
            }
        } else {
            let published = p["published"]
                .as_i64()
                .or_else(|| p["published"].as_str().and_then(|s| s.parse().ok()));
            if let Some(port) = published.and_then(|n| u16::try_from(n).ok()) {
                let ip = p["host_ip"].as_str().unwrap_or("0.0.0.0").to_string();
                out.ports.push((ip, port));
            }
        }
    }
    out
}

/// A YAML value as JSON (the override files the installer writes are JSON, which compose reads
/// as YAML).
fn yaml_to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Hash(h) => serde_json::Value::Object(
            h.iter()
                .filter_map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        _ => return None,
                    };
                    Some((k, yaml_to_json(v)))
                })
                .collect(),
        ),
        Yaml::Array(a) => serde_json::Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::String(s) => s.clone().into(),
        Yaml::Integer(i) => (*i).into(),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(serde_json::Value::Number)
            .unwrap_or_else(|| r.clone().into()),
        Yaml::Boolean(b) => (*b).into(),
        _ => serde_json::Value::Null,
    }
}

/// Lifecycle of a running stack (`smoker-install stop`, see [`crate::lifecycle`]).
impl Runtime {
    /// `compose stop` for a generation: its containers stopped and kept, so `compose up`
    /// starts the same containers again.
    pub fn stop(&self, stack: &Stack<'_>) -> Result<()> {
        self.compose(stack, &["stop"], "stopping the containers")
            .map(|_| ())
    }
}

/// Batched image lookups of the images step.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_and_ports_are_read_from_either_front_ends_output() {
        // compose v1 prints short forms, v2 long ones; both name the same mounts.
        let v1 = "services:\n  db:\n    image: x\n    volumes:\n    - data:/data:rw\n    - /store/e/stack/init:/init:ro\n    ports:\n    - 127.0.0.1:8080:80/tcp\n    - 9000:9000\n";
        let v2 = "name: p\nservices:\n  db:\n    image: x\n    volumes:\n      - type: volume\n        source: data\n        target: /data\n      - type: bind\n        source: /store/e/stack/init\n        target: /init\n        read_only: true\n        bind:\n          create_host_path: true\n    ports:\n      - mode: ingress\n        host_ip: 127.0.0.1\n        target: 80\n        published: \"8080\"\n        protocol: tcp\nconfigs:\n  c:\n    file: /store/e/stack/c.txt\n";
        for (text, short) in [(v1, true), (v2, false)] {
            let r = Resolved::parse(text).expect("parses");
            let db = &r.services["db"];
            assert_eq!(db.binds.len(), 1, "{db:?}");
            assert_eq!(db.binds[0].source, PathBuf::from("/store/e/stack/init"));
            assert_eq!(db.binds[0].target, "/init");
            let moved = db.binds[0].with_source(Path::new("/inputs/k/init"));
            if short {
                assert_eq!(moved, serde_json::json!("/inputs/k/init:/init:ro"));
            } else {
                assert_eq!(
                    moved,
                    serde_json::json!({"type": "bind", "source": "/inputs/k/init", "target": "/init",
                        "read_only": true, "bind": {"create_host_path": true}})
                );
                assert_eq!(
                    r.files[&("configs".to_string(), "c".to_string())],
                    PathBuf::from("/store/e/stack/c.txt")
                );
            }
            assert!(
                r.published_ports()
                    .contains(&("127.0.0.1".to_string(), 8080))
            );
        }
    }

    #[test]
    fn container_ids_in_compose_text_name_their_service() {
        let c = Container {
            id: format!("ef0be9d83fd4{}", "0".repeat(52)),
            name: "p-backend-1".into(),
            service: "backend".into(),
            state: "running".into(),
            exit_code: 0,
            health: Some("unhealthy".into()),
            image_id: String::new(),
            restart_count: 0,
            health_output: None,
            owner_root: None,
            owner_profile: None,
        };
        let text = "ERROR: for frontend  Container \"ef0be9d83fd4\" is unhealthy.";
        assert_eq!(
            name_containers(text, &[c]),
            "ERROR: for frontend  Container \"ef0be9d83fd4 (service `backend`)\" is unhealthy."
        );
    }
}
