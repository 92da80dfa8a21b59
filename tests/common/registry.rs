//! A real container registry (Debian's `docker-registry`, the CNCF
//! distribution registry v2) on loopback, with filesystem storage in a
//! temporary directory. Docker treats registries on 127.0.0.0/8 as insecure
//! (plain HTTP) by default, so no daemon configuration is needed.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{docker, docker_output, free_port, http, require_docker};

/// Debian package that ships the registry binary.
pub const REGISTRY_PACKAGE: &str = "docker-registry";

/// Manifest media types asked for when reading a manifest digest: Docker v2
/// schema 2 (and list) and OCI (manifest and index).
pub const MANIFEST_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// How long to wait for the registry to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running registry process; killed (and its storage deleted) on drop.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    pushed: Mutex<Vec<String>>,
}

/// Path of the registry binary; panics naming the package when it is absent.
pub fn registry_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("docker-registry"));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "the container registry binary `docker-registry` was not found on PATH: \
         install the Debian package `{REGISTRY_PACKAGE}` (apt-get install {REGISTRY_PACKAGE})"
    );
}

impl Registry {
    /// Starts a registry on `127.0.0.1:<free port>` and waits until
    /// `GET /v2/` answers 200. Panics (with the registry's log) when it does
    /// not come up; retries a few times on a port clash.
    pub fn start() -> Registry {
        require_docker();
        let binary = registry_binary();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("smoker-test-registry-")
                .tempdir()
                .unwrap_or_else(|e| panic!("create a registry dir: {e}"));
            let port = free_port();
            let storage = dir.path().join("storage");
            std::fs::create_dir_all(&storage)
                .unwrap_or_else(|e| panic!("create {}: {e}", storage.display()));
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: smoker-release-test-registry\n\
                 health:\n  storagedriver:\n    enabled: false\n",
                storage.display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config)
                .unwrap_or_else(|e| panic!("write registry config: {e}"));
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path)
                .unwrap_or_else(|e| panic!("create registry log: {e}"));
            let log_err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("clone registry log: {e}"));
            let mut command = Command::new(&binary);
            command
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log_err);
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    command.env_remove(key);
                }
            }
            let child = command
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut registry = Registry {
                child,
                port,
                dir,
                pushed: Mutex::new(Vec::new()),
            };
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(log) => last_log = log,
            }
            // Dropping `registry` kills the process and removes the dir.
        }
        panic!("the test registry did not start; last log:\n{last_log}");
    }

    /// Polls `GET /v2/` until it answers 200; on failure returns the log.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/v2/", self.url());
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("registry exited with {status}\n{}", self.log()));
            }
            if http::get(&url).is_ok_and(|resp| resp.status == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "registry did not answer {url} in {START_TIMEOUT:?}\n{}",
            self.log()
        ))
    }

    /// The port it listens on (on 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `127.0.0.1:PORT/repo:tag`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.host())
    }

    /// `127.0.0.1:PORT/repo@digest`.
    pub fn digest_reference(&self, repo: &str, digest: &str) -> String {
        format!("{}/{repo}@{digest}", self.host())
    }

    /// The directory holding the registry's filesystem storage.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    /// The registry's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Tags `local` as `127.0.0.1:PORT/repo:tag`, `docker push`es it, and
    /// returns the manifest digest (`sha256:…`) the registry now serves for
    /// that tag (see [`Registry::manifest_digest`]). The registry-side tag is
    /// removed from the local daemon when the registry is dropped.
    pub fn push(&self, local: &str, repo: &str, tag: &str) -> String {
        let remote = self.reference(repo, tag);
        docker(&["tag", local, &remote]);
        self.pushed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(remote.clone());
        docker(&["push", &remote]);
        self.manifest_digest(repo, tag).unwrap_or_else(|| {
            panic!(
                "registry has no manifest for {remote} after push\n{}",
                self.log()
            )
        })
    }

    /// `HEAD /v2/<repo>/manifests/<reference>` accepting Docker schema 2 and
    /// OCI media types; returns the `Docker-Content-Digest` header, or `None`
    /// on 404. Panics on any other answer.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Option<String> {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let headers: Vec<(&str, &str)> = MANIFEST_ACCEPT.iter().map(|m| ("Accept", *m)).collect();
        let resp = http::request("HEAD", &url, &headers, &[])
            .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
        match resp.status {
            200 => Some(
                resp.header("Docker-Content-Digest")
                    .unwrap_or_else(|| panic!("HEAD {url}: no Docker-Content-Digest header"))
                    .to_string(),
            ),
            404 => None,
            other => panic!("HEAD {url}: unexpected status {other}"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pushed = std::mem::take(self.pushed.get_mut().unwrap_or_else(|e| e.into_inner()));
        if !pushed.is_empty() {
            let mut args = vec!["rmi", "--force"];
            args.extend(pushed.iter().map(String::as_str));
            let _ = docker_output(&args);
        }
    }
}
