//! One installer host: a root directory, a host config file, a Compose project name, and the
//! `smoker-install` command lines against them (optionally under a runner such as
//! `qemu-arm-static`, optionally with no route out).

use crate::project::Project;
use crate::run::text;
use crate::{Cleanup, unique_name};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// The environment the kit's hosts declare, which is the one its releases are built for.
pub const DEFAULT_ENVIRONMENT: &str = "prod";

/// A host root plus the arguments every installer call needs. The root is deleted on drop.
pub struct Host {
    root: tempfile::TempDir,
    /// Compose project name (registered with the test's [`Cleanup`]).
    pub project: String,
    /// Compose front end to force (`v1`/`v2`, through `SMOKER_COMPOSE`).
    pub compose: Option<String>,
    installer: PathBuf,
    runner: Vec<OsString>,
}

impl Host {
    /// A fresh host root for the `smoker-install` of the running build
    /// ([`crate::bins::smoker_install`]); registers its Compose project with `cleanup`.
    pub fn new(cleanup: &mut Cleanup, compose: Option<&str>) -> Host {
        Host::with_installer(cleanup, crate::bins::smoker_install(), Vec::new()).compose(compose)
    }

    /// A fresh host root for `installer`, run through `runner` (a command prefix such as
    /// `["qemu-arm-static"]`; empty to run it directly); registers its Compose project with
    /// `cleanup`.
    pub fn with_installer(
        cleanup: &mut Cleanup,
        installer: PathBuf,
        runner: Vec<OsString>,
    ) -> Host {
        let host = Host {
            root: crate::tempdir("smoker-test-root-"),
            project: cleanup.compose_project(&unique_name("smk")),
            compose: None,
            installer,
            runner,
        };
        host.write_config("");
        host
    }

    /// Writes this host's config: the environment the kit's bundles are built for
    /// ([`DEFAULT_ENVIRONMENT`]; an installer takes no first bundle of a host that declares
    /// none) followed by `rest`. A test that needs another environment writes the file itself.
    pub fn write_config(&self, rest: &str) {
        std::fs::write(
            self.host_config(),
            format!("environment = \"{DEFAULT_ENVIRONMENT}\"\n{rest}"),
        )
        .unwrap_or_else(|e| panic!("writing the host config: {e}"));
    }

    fn compose(mut self, compose: Option<&str>) -> Host {
        self.compose = compose.map(str::to_string);
        self
    }

    /// The installer root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// This host's config file (declaring [`DEFAULT_ENVIRONMENT`] unless a test rewrites it).
    pub fn host_config(&self) -> PathBuf {
        self.root.path().join("host.toml")
    }

    /// `[runner…] smoker-install --root ROOT --host-config HOST_CONFIG`, with no `SMOKER_*`
    /// variable from the caller's environment (no fault injection, no foreign override) but
    /// `SMOKER_COMPOSE` when a front end is forced.
    pub fn cmd(&self) -> Command {
        let mut c = match self.runner.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.installer);
                c
            }
            None => Command::new(&self.installer),
        };
        self.finish(&mut c);
        c
    }

    /// [`Host::cmd`] with no route out: the installer runs in a network namespace of its own
    /// whose only interface is loopback (see [`offline_command`]).
    pub fn offline_cmd(&self) -> Command {
        let mut c = offline_command(&self.installer);
        self.finish(&mut c);
        c
    }

    fn finish(&self, c: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SMOKER_") {
                c.env_remove(k);
            }
        }
        c.arg("--root").arg(self.root.path());
        c.arg("--host-config").arg(self.host_config());
        if let Some(v) = &self.compose {
            c.env("SMOKER_COMPOSE", v);
        }
    }

    /// Adds `apply --key K --env-file E --project P` for a bundle of `project`.
    pub fn apply_args<'c>(&self, c: &'c mut Command, project: &Project) -> &'c mut Command {
        c.arg("apply")
            .arg("--key")
            .arg(&project.public_key)
            .arg("--env-file")
            .arg(&project.env_file)
            .arg("--project")
            .arg(&self.project)
    }

    /// The `apply` command for a bundle of `project`, with extra args.
    pub fn apply_cmd(&self, project: &Project, bundle: &Path, extra: &[&str]) -> Command {
        let mut c = self.cmd();
        self.apply_args(&mut c, project).args(extra).arg(bundle);
        c
    }

    /// `apply` of a bundle of `project`.
    pub fn apply(&self, project: &Project, bundle: &Path) -> Output {
        self.apply_with(project, bundle, &[], None)
    }

    /// `apply` with extra args and an optional fault point (`SMOKER_FAULT`).
    pub fn apply_with(
        &self,
        project: &Project,
        bundle: &Path,
        extra: &[&str],
        fault: Option<&str>,
    ) -> Output {
        let mut c = self.apply_cmd(project, bundle, extra);
        if let Some(f) = fault {
            c.env("SMOKER_FAULT", f);
        }
        c.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run smoker-install: {e}"))
    }

    /// `apply` of a bundle of `project` with no route out.
    pub fn apply_offline(&self, project: &Project, bundle: &Path) -> Output {
        let mut c = self.offline_cmd();
        self.apply_args(&mut c, project).arg(bundle);
        c.stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run smoker-install: {e}"))
    }

    /// Starts `apply` in the background, its output captured.
    pub fn spawn_apply(&self, project: &Project, bundle: &Path) -> Child {
        self.apply_cmd(project, bundle, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start smoker-install apply: {e}"))
    }

    /// Runs a subcommand and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run smoker-install: {e}"))
    }

    /// `status --json` of the (single) profile.
    pub fn status(&self) -> serde_json::Value {
        let out = self.run(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", text(&out));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
        v["data"]["profiles"][0].clone()
    }

    /// `history --json` generations of the (single) profile.
    pub fn history(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["history", "--json"]);
        assert!(out.status.success(), "history failed: {}", text(&out));
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("history --json prints JSON");
        v["data"]["profiles"][0]["generations"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Status string of generation `n` in history (`absent` when it is not listed).
    pub fn generation_status(&self, n: u64) -> String {
        self.history()
            .iter()
            .find(|g| g["number"].as_u64() == Some(n))
            .and_then(|g| g["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "absent".into())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Store entries are read-only; the temporary directory removes the rest.
        crate::make_writable(self.root.path());
    }
}

/// `program` run with no route out: in a network namespace of its own whose only interface is
/// loopback (brought up, as on any host). Needs `unshare` (util-linux) and root.
pub fn offline_command(program: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--net",
        "--",
        "sh",
        "-c",
        "ip link set lo up && exec \"$0\" \"$@\"",
    ])
    .arg(program);
    c
}

/// Asserts the network namespace [`offline_command`] makes has no route out and only the
/// loopback interface.
pub fn assert_no_route_out() {
    let out = offline_command(Path::new("ip"))
        .args(["-o", "route", "show"])
        .output()
        .expect("run unshare (util-linux) — the offline tests need it");
    assert!(
        out.status.success(),
        "cannot make a network namespace (unshare --net needs root): {}",
        text(&out)
    );
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(
        !routes.lines().any(|l| l.starts_with("default")),
        "the namespace has a default route: {routes}"
    );
    let links = offline_command(Path::new("ip"))
        .args(["-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only loopback: {links}");
}
