//! The compose file checked at release time, before a bundle ships.
//!
//! [`check`] writes the bundle's compose files (the recipe's stack, the pin override and the
//! environment's env file — everything but the image archive) into a temporary directory laid
//! out as on the host, and runs the compose front end's own `config -q` on them, with the same
//! `-f`, `--project-directory` and `--env-file` the installer uses: a file compose rejects
//! fails the release with compose's error, here rather than in the host's preflight. The front
//! end is `docker compose` (v2) when present, else `docker-compose` (v1); `SMOKER_COMPOSE=v1`
//! or `v2` chooses one, as on the host. Required secrets are set to a placeholder, since their
//! values live only on the host.
//!
//! [`warnings`] names what undermines pinning or offline rollback, with the fix: services
//! that mount the Docker socket (a Watchtower-like service can replace pinned containers) and
//! `pull_policy: always` (every start needs the registry).

use crate::compose::ComposeInfo;
use crate::release::Plan;
use smoker_format::bundle::write::Payload;
use std::path::Path;
use std::process::Command;

/// Errors of the release-time compose check.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No compose front end is installed.
    #[error(
        "neither `docker compose` (v2) nor `docker-compose` (v1) is installed, and release checks every compose file with the front end itself: install Docker's compose plugin (Debian: docker-compose-plugin or docker-compose), or set SMOKER_COMPOSE to the one installed"
    )]
    NoFrontend,
    /// `SMOKER_COMPOSE` names something else.
    #[error(
        "SMOKER_COMPOSE=`{0}` is not understood; use `v2` (docker compose) or `v1` (docker-compose)"
    )]
    BadChoice(String),
    /// Writing the files to check failed.
    #[error("preparing the compose check: {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Compose rejected the files.
    #[error(
        "`{frontend} config` rejects the compose files of `{name}` ({env}):\n{output}\nfix the compose file; the host's compose would refuse it the same way"
    )]
    Rejected {
        /// The front end that ran.
        frontend: String,
        /// Bundle name.
        name: String,
        /// Environment.
        env: String,
        /// What compose said.
        output: String,
    },
}

/// A compose front end: the program and the arguments before compose's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    program: &'static str,
    prefix: Vec<&'static str>,
}

impl Frontend {
    /// `docker compose` or `docker-compose`, as the user would type it.
    pub fn name(&self) -> String {
        std::iter::once(self.program)
            .chain(self.prefix.iter().copied())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(self.program);
        c.args(&self.prefix);
        c
    }

    fn works(&self) -> bool {
        self.command()
            .arg("version")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// The front end to check with: `SMOKER_COMPOSE` when set, else v2 when present, else v1.
pub fn frontend() -> Result<Frontend, CheckError> {
    let v2 = Frontend {
        program: "docker",
        prefix: vec!["compose"],
    };
    let v1 = Frontend {
        program: "docker-compose",
        prefix: Vec::new(),
    };
    let candidates = match std::env::var("SMOKER_COMPOSE").ok().as_deref() {
        None | Some("") => vec![v2, v1],
        Some("v2") => vec![v2],
        Some("v1") => vec![v1],
        Some(other) => return Err(CheckError::BadChoice(other.to_string())),
    };
    candidates
        .into_iter()
        .find(Frontend::works)
        .ok_or(CheckError::NoFrontend)
}

/// Runs `config -q` of `fe` on the compose files of `plan`, laid out as in the bundle.
pub fn check(fe: &Frontend, plan: &Plan) -> Result<(), CheckError> {
    let m = &plan.manifest;
    let dir = tempfile::Builder::new()
        .prefix("smoker-compose-check-")
        .tempdir()
        .map_err(|source| CheckError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckError::Io { path, source }
    };
    for (entry, payload) in &plan.payload {
        if entry.path.starts_with("images/") || entry.path.starts_with("migrations/") {
            continue;
        }
        let dest = dir.path().join(&entry.path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match payload {
            Payload::Bytes(b) => std::fs::write(&dest, b).map_err(io(&dest))?,
            Payload::File(src) => {
                std::fs::copy(src, &dest).map_err(io(src))?;
            }
        }
    }
    let mut c = fe.command();
    c.current_dir(dir.path())
        .arg("--project-directory")
        .arg(&m.compose.project_directory);
    for f in &m.compose.files {
        c.arg("-f").arg(f);
    }
    if let Some(env) = &m.compose.env_file {
        c.arg("--env-file").arg(env);
    }
    c.args(["config", "-q"]);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("COMPOSE_") {
            c.env_remove(k);
        }
    }
    for s in &m.required_secrets {
        c.env(s, "release-check-placeholder");
    }
    c.stdin(std::process::Stdio::null());
    let out = c.output().map_err(io(Path::new(fe.program)))?;
    if out.status.success() {
        return Ok(());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        output = format!("{}\n{output}", stdout.trim());
    }
    // The temporary directory means nothing to the reader; the bundle's paths do.
    let output = output.replace(&format!("{}/", dir.path().display()), "");
    Err(CheckError::Rejected {
        frontend: fe.name(),
        name: m.name.clone(),
        env: m.environment.clone(),
        output,
    })
}

/// What in a compose file undermines pinned, health-gated deploys, one warning per finding,
/// each with its fix.
pub fn warnings(info: &ComposeInfo) -> Vec<String> {
    let mut out = Vec::new();
    for (svc, access) in &info.host_access {
        let socket = access.docker_socket_mounts();
        if !socket.is_empty() {
            out.push(format!(
                "service `{svc}` mounts the Docker socket ({}): it can start, stop and replace any container, so a Watchtower-like service would swap the pinned, health-gated images for whatever its tag points to next; remove the service (the installer updates the stack), or pin it and disable its updating — the host must also allow it with `docker_socket = true` under [policy.<profile>]",
                socket.join(", ")
            ));
        }
    }
    for s in &info.services {
        if s.pull_policy.as_deref() == Some("always") {
            out.push(format!(
                "service `{}` has `pull_policy: always`: the host would pull at every start, so a start or rollback without the registry fails; remove it (images are pinned by digest, and offline bundles set `pull_policy: never` themselves)",
                s.name
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_socket_and_pull_always_are_named_with_their_fix() {
        let info = crate::compose::analyze(
            "services:\n  app:\n    image: a:1\n    pull_policy: always\n  watchtower:\n    image: containrrr/watchtower\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
            &BTreeMap::new(),
        )
        .expect("valid");
        let w = warnings(&info);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("service `watchtower` mounts the Docker socket (/var/run/docker.sock)"),
            "{w:?}"
        );
        assert!(w[0].contains("remove the service"), "{w:?}");
        assert!(
            w[1].contains("service `app` has `pull_policy: always`"),
            "{w:?}"
        );
        let quiet = crate::compose::analyze("services:\n  a:\n    image: a:1\n", &BTreeMap::new())
            .expect("valid");
        assert!(warnings(&quiet).is_empty());
    }
}
