//! A real container registry (Debian's `docker-registry`, the CNCF distribution registry v2)
//! on loopback, with filesystem storage in a temporary directory. Docker treats registries on
//! 127.0.0.0/8 as insecure (plain HTTP) by default, so no daemon configuration is needed.

use crate::docker::{docker, docker_output, require_docker};
use crate::http;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Debian package that ships the registry binary.
pub const REGISTRY_PACKAGE: &str = "docker-registry";

/// Manifest media types asked for when reading a manifest: Docker v2 schema 2 (and list) and
/// OCI (manifest and index).
pub const MANIFEST_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
];

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// How long to wait for the registry to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The registry binary on `PATH` or in `/usr/bin`, if installed.
pub fn find_registry_binary() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("docker-registry"))
        .find(|candidate| candidate.is_file())
}

/// Path of the registry binary; panics naming the package when it is absent.
pub fn registry_binary() -> PathBuf {
    find_registry_binary().unwrap_or_else(|| {
        panic!(
            "the container registry binary `docker-registry` was not found on PATH: \
             install the Debian package `{REGISTRY_PACKAGE}` (apt-get install {REGISTRY_PACKAGE})"
        )
    })
}

/// Panics naming the Debian package `docker-registry` unless its binary is installed.
pub fn require_registry() {
    registry_binary();
}

/// A running registry process; killed (and its storage deleted) on drop, when the tags pushed
/// through it are also removed from the local engine.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    pushed: Mutex<Vec<String>>,
}

impl Registry {
    /// Starts a registry on `127.0.0.1:<leased port>` (see [`crate::ports::free_port`]) and
    /// waits until `GET /v2/` answers 200. Panics (with the registry's log) when it does not
    /// come up; tries another port a few times.
    pub fn start() -> Registry {
        require_docker();
        let binary = registry_binary();
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = crate::tempdir("smoker-test-registry-");
            let port = crate::ports::free_port();
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
            crate::write_file(&config_path, config);
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path)
                .unwrap_or_else(|e| panic!("create the registry log: {e}"));
            let log_err = log
                .try_clone()
                .unwrap_or_else(|e| panic!("clone the registry log: {e}"));
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

    /// Stops the registry process (its storage and the engine's tags stay until drop), so a
    /// test can show that nothing reaches it any more.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        assert!(
            http::get(&format!("{}/v2/", self.url())).is_err(),
            "the registry still answers after being stopped"
        );
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

    /// Tags `local` as `127.0.0.1:PORT/repo:tag`, `docker push`es it, and returns the manifest
    /// digest (`sha256:…`) the registry now serves for that tag (see
    /// [`Registry::manifest_digest`]). The registry-side tag is removed from the local engine
    /// when the registry is dropped.
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

    /// `HEAD /v2/<repo>/manifests/<reference>` accepting Docker schema 2 and OCI media types;
    /// returns the `Docker-Content-Digest` header, or `None` on 404. Panics on any other
    /// answer.
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

    /// `GET` of a manifest: its bytes and media type. Panics unless the answer is 200.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (Vec<u8>, String) {
        let url = format!("{}/v2/{repo}/manifests/{reference}", self.url());
        let accept: Vec<(&str, &str)> = MANIFEST_ACCEPT.iter().map(|m| ("Accept", *m)).collect();
        let resp =
            http::request("GET", &url, &accept, &[]).unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status, 200, "GET {url}: {}", resp.text());
        let media = resp.header("Content-Type").unwrap_or_default().to_string();
        (resp.body, media)
    }

    /// `docker manifest create/push` of a Docker manifest list `repo:tag` over `members`
    /// (image references in this registry); returns the digest `docker manifest push` printed.
    pub fn push_manifest_list(&self, repo: &str, tag: &str, members: &[&str]) -> String {
        let list = self.reference(repo, tag);
        let mut create = vec!["manifest", "create", "--insecure", "--amend", &list];
        create.extend(members);
        docker(&create);
        let digest = docker(&["manifest", "push", "--insecure", "--purge", &list]);
        digest
            .lines()
            .rev()
            .find(|l| l.starts_with("sha256:"))
            .unwrap_or_else(|| panic!("docker manifest push printed no digest: {digest}"))
            .trim()
            .to_string()
    }

    /// An OCI image index `repo:tag` PUT over HTTP, with `entries` (digest of a manifest in
    /// `repo`, `os/architecture[/variant]`; os `unknown` makes an attestation-like entry).
    /// Returns the digest the registry reports, checked against the body's sha256.
    pub fn put_oci_index(&self, repo: &str, tag: &str, entries: &[(&str, &str)]) -> String {
        let mut manifests = Vec::new();
        for (digest, platform) in entries {
            let (body, media) = self.get_manifest(repo, digest);
            let parts: Vec<&str> = platform.split('/').collect();
            let mut p = serde_json::json!({"os": parts[0], "architecture": parts[1]});
            if let Some(v) = parts.get(2) {
                p["variant"] = (*v).into();
            }
            let mut m = serde_json::json!({
                "mediaType": media,
                "digest": digest,
                "size": body.len(),
                "platform": p,
            });
            if parts[0] == "unknown" {
                m["annotations"] = serde_json::json!({
                    "vnd.docker.reference.type": "attestation-manifest",
                    "vnd.docker.reference.digest": digest,
                });
            }
            manifests.push(m);
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        });
        let body = serde_json::to_vec(&index).expect("an index serialises to JSON");
        let url = format!("{}/v2/{repo}/manifests/{tag}", self.url());
        let resp = http::request("PUT", &url, &[("Content-Type", OCI_INDEX)], &body)
            .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
        assert_eq!(resp.status, 201, "PUT {url}: {}", resp.text());
        let digest = format!("sha256:{}", crate::sha256_hex(&body));
        assert_eq!(resp.header("Docker-Content-Digest"), Some(digest.as_str()));
        digest
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Exact tags, no force: an image still in use keeps its tag until the test's
        // `Cleanup` removes the image by ID.
        for remote in std::mem::take(self.pushed.get_mut().unwrap_or_else(|e| e.into_inner())) {
            let _ = docker_output(&["image", "rm", &remote]);
        }
    }
}
