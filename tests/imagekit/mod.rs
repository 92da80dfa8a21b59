//! Helpers for the image tests (`tests/images.rs`, `tests/offline.rs`): the `xtask` binary,
//! test images with unique image IDs (also for other platforms), Docker manifest lists and OCI
//! image indexes in a real registry, a throw-away project released through `cargo xtask`, and
//! running the installer with no route out.
//!
//! Every image made here has its own image ID (a unique label or file), so removing one never
//! disturbs another test, or anyone else using the same Docker daemon.

#![allow(dead_code)]

use crate::common::{self, Cleanup, Registry, http};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// `SOURCE_DATE_EPOCH` of every release made here.
pub const EPOCH: &str = "1700000000";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Builds the `xtask` binary once per test process (next to `smoker-install`) and returns it.
pub fn xtask() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let installer = PathBuf::from(env!("CARGO_BIN_EXE_smoker-install"));
        let profile_dir = installer.parent().expect("binary dir").to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.current_dir(common::workspace_root())
            .args(["build", "--quiet", "-p", "xtask", "--target-dir"])
            .arg(&target_dir)
            .stdin(Stdio::null());
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().expect("run cargo build -p xtask");
        assert!(
            out.status.success(),
            "building xtask failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("xtask");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// stdout + stderr of a command, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An image pushed to the test registry.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// Repository name in the registry.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// Manifest digest the registry reports for the tag.
    pub digest: String,
    /// Image ID (= config digest).
    pub id: String,
}

/// The test service image with a unique image ID, built and pushed as `repo:tag`.
pub fn unique_testsvc(registry: &Registry, cleanup: &mut Cleanup, repo: &str, tag: &str) -> Pushed {
    let unique = common::unique_name("img");
    let local = cleanup.image(&format!("{unique}:local"));
    let info = common::build_image_with(&local, &[("org.smoker-release.test.unique", &unique)]);
    // The ID too: a later push to the same tag leaves this image without its registry tag.
    cleanup.image(&info.id);
    let digest = registry.push(&local, repo, tag);
    Pushed {
        reference: registry.reference(repo, tag),
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        id: info.id,
    }
}

/// An image `FROM base` plus one extra file of `extra_bytes` (so it shares base's layers).
pub fn derived_image(
    registry: &Registry,
    cleanup: &mut Cleanup,
    base: &str,
    extra_bytes: usize,
    repo: &str,
    tag: &str,
) -> Pushed {
    let unique = common::unique_name("derived");
    let ctx = tempfile::tempdir().expect("context");
    let data: Vec<u8> = (0..extra_bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    std::fs::write(ctx.path().join("extra"), data).expect("extra file");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY extra /extra\nLABEL org.smoker-release.test.unique={unique}\n"),
    )
    .expect("Dockerfile");
    let local = cleanup.image(&format!("{unique}:local"));
    build(&["--tag", &local], ctx.path(), &[]);
    let id = common::docker(&["image", "inspect", "--format", "{{.Id}}", &local]);
    cleanup.image(&id);
    let digest = registry.push(&local, repo, tag);
    Pushed {
        reference: registry.reference(repo, tag),
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        id,
    }
}

/// A `FROM scratch` image for `platform` (e.g. `linux/arm/v7`) with one small unique file,
/// built by the legacy builder (no emulation needed: nothing runs) and pushed as `repo:tag`.
pub fn platform_image(
    registry: &Registry,
    cleanup: &mut Cleanup,
    platform: &str,
    repo: &str,
    tag: &str,
) -> Pushed {
    let unique = common::unique_name("plat");
    let ctx = tempfile::tempdir().expect("context");
    std::fs::write(ctx.path().join("f"), format!("{platform} {unique}\n")).expect("file");
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nCOPY f /f\n").expect("Dockerfile");
    let local = cleanup.image(&format!("{unique}:local"));
    build(
        &["--platform", platform, "--tag", &local],
        ctx.path(),
        &[("DOCKER_BUILDKIT", "0")],
    );
    let id = common::docker(&["image", "inspect", "--format", "{{.Id}}", &local]);
    cleanup.image(&id);
    let digest = registry.push(&local, repo, tag);
    Pushed {
        reference: registry.reference(repo, tag),
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        id,
    }
}

fn build(args: &[&str], ctx: &Path, envs: &[(&str, &str)]) {
    let out = Command::new("docker")
        .arg("build")
        .arg("--quiet")
        .args(args)
        .arg(ctx)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "docker build {args:?}: {}",
        text(&out)
    );
}

/// `docker manifest create/push` of a Docker manifest list `repo:tag` over `members` (image
/// references in the same registry); returns the digest `docker manifest push` printed.
pub fn push_manifest_list(registry: &Registry, repo: &str, tag: &str, members: &[&str]) -> String {
    let list = registry.reference(repo, tag);
    let mut create = vec!["manifest", "create", "--insecure", "--amend", &list];
    create.extend(members);
    common::docker(&create);
    let digest = common::docker(&["manifest", "push", "--insecure", "--purge", &list]);
    digest
        .lines()
        .rev()
        .find(|l| l.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("docker manifest push printed no digest: {digest}"))
        .trim()
        .to_string()
}

/// `GET` of a manifest: its bytes and media type.
pub fn get_manifest(registry: &Registry, repo: &str, reference: &str) -> (Vec<u8>, String) {
    let url = format!("{}/v2/{repo}/manifests/{reference}", registry.url());
    let accept: Vec<(&str, &str)> = common::registry::MANIFEST_ACCEPT
        .iter()
        .map(|m| ("Accept", *m))
        .collect();
    let resp =
        http::request("GET", &url, &accept, &[]).unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status, 200, "GET {url}: {}", resp.text());
    let media = resp.header("Content-Type").unwrap_or_default().to_string();
    (resp.body, media)
}

/// An OCI image index `repo:tag` PUT over HTTP, with `entries` (digest of a manifest in `repo`,
/// `os/architecture[/variant]`). Returns the digest the registry reports.
pub fn put_oci_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    entries: &[(&str, &str)],
) -> String {
    let mut manifests = Vec::new();
    for (digest, platform) in entries {
        let (body, media) = get_manifest(registry, repo, digest);
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
    let body = serde_json::to_vec(&index).expect("json");
    let url = format!("{}/v2/{repo}/manifests/{tag}", registry.url());
    let resp = http::request("PUT", &url, &[("Content-Type", OCI_INDEX)], &body)
        .unwrap_or_else(|e| panic!("PUT {url}: {e}"));
    assert_eq!(resp.status, 201, "PUT {url}: {}", resp.text());
    let digest = format!("sha256:{}", smoker_format::digest::sha256_hex(&body));
    assert_eq!(resp.header("Docker-Content-Digest"), Some(digest.as_str()));
    digest
}

/// A throw-away project: `recipes/`, a signing key, a host env file, a blob cache.
pub struct Workspace {
    /// Everything lives here.
    pub dir: tempfile::TempDir,
    /// Secret key (no password).
    pub key: PathBuf,
    /// Its public key.
    pub public_key: PathBuf,
    /// Host env file for the installer.
    pub env_file: PathBuf,
}

impl Workspace {
    /// An empty project with a fresh key.
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("recipes")).expect("recipes");
        let key = dir.path().join("release.key");
        let public_key = dir.path().join("release.pub");
        smoker_format::signing::generate(&key, &public_key, None).expect("keygen");
        let env_file = dir.path().join("host.env");
        std::fs::write(&env_file, "# no secrets\n").expect("env file");
        Workspace {
            dir,
            key,
            public_key,
            env_file,
        }
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `recipes/`.
    pub fn recipes(&self) -> PathBuf {
        self.dir.path().join("recipes")
    }

    /// Writes `recipes/<name>/compose.yaml` and `recipe.toml`.
    pub fn write_recipe(&self, name: &str, compose: &str, recipe: &str) {
        let d = self.recipes().join(name);
        std::fs::create_dir_all(&d).expect("recipe dir");
        std::fs::write(d.join("compose.yaml"), compose).expect("compose");
        std::fs::write(d.join("recipe.toml"), recipe).expect("recipe");
    }

    /// Runs `xtask <args>` (with `SOURCE_DATE_EPOCH` set and the Docker config given).
    pub fn xtask(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        Command::new(xtask())
            .args(args)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .output()
            .expect("run xtask")
    }

    /// `xtask lock --project-dir DIR <extra>`.
    pub fn lock(&self, extra: &[&str]) -> Output {
        let dir = self.path().display().to_string();
        let mut args = vec!["lock", "--project-dir", &dir];
        args.extend(extra);
        self.xtask(&args, &[])
    }

    /// `xtask release` of `version` into `out` with the blob cache `cache`; panics on failure.
    pub fn release(&self, version: &str, out: &str, cache: &str, extra: &[&str]) -> Output {
        let dir = self.path().display().to_string();
        let key = self.key.display().to_string();
        let out_dir = self.path().join(out).display().to_string();
        let cache_dir = self.path().join(cache).display().to_string();
        let mut args = vec![
            "release",
            "--project-dir",
            &dir,
            "--secret-key",
            &key,
            "--version",
            version,
            "--out",
            &out_dir,
            "--blob-cache",
            &cache_dir,
        ];
        args.extend(extra);
        let o = self.xtask(&args, &[]);
        assert!(o.status.success(), "xtask release {version}: {}", text(&o));
        o
    }

    /// Path of a released bundle.
    pub fn bundle(&self, out: &str, env: &str, name: &str, version: &str, arch: &str) -> PathBuf {
        self.path()
            .join(out)
            .join(env)
            .join(format!("{name}-{version}-{arch}.tar.zst"))
    }
}

/// A recipe whose gate is the containers' own Docker health checks (no HTTP checks, so it also
/// passes when the installer runs in a network namespace of its own).
pub fn recipe_toml(port: u16, version_text: &str, env: &str) -> String {
    format!(
        r#"[health]
window_secs = 40
failures = 3
interval_ms = 300
successes = 2

[env.{env}.config]
PORT = "{port}"
VERSION_TEXT = "{version_text}"
"#
    )
}

/// A compose file running `image` as service `web` on `127.0.0.1:${{PORT}}`.
pub fn compose_yaml(image: &str) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    environment:
      TESTSVC_VERSION: ${{VERSION_TEXT}}
    ports:
      - "127.0.0.1:${{PORT}}:8080"
    stop_grace_period: 1s
"#
    )
}

/// The entry `path` of a bundle, extracted into `dest`.
pub fn extract_from_bundle(bundle: &Path, path: &str, dest: &Path) {
    let f = std::fs::File::open(bundle).expect("open bundle");
    let dec = zstd::stream::read::Decoder::new(f).expect("zstd");
    let mut ar = tar::Archive::new(dec);
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path_bytes().as_ref() == path.as_bytes() {
            let mut out = std::fs::File::create(dest).expect("create");
            std::io::copy(&mut e, &mut out).expect("copy");
            return;
        }
    }
    panic!("{} has no entry {path}", bundle.display());
}

/// The entry names of a tar file, with each header's mtime, uid and mode.
pub fn tar_listing(path: &Path) -> Vec<(String, u64, u64, u32)> {
    let f = std::fs::File::open(path).expect("open tar");
    let mut ar = tar::Archive::new(f);
    ar.entries()
        .expect("entries")
        .map(|e| {
            let e = e.expect("entry");
            let h = e.header();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                h.mtime().expect("mtime"),
                h.uid().expect("uid"),
                h.mode().expect("mode"),
            )
        })
        .collect()
}

/// Removes every tag of image `id` and the image itself; asserts it is gone.
pub fn remove_image(id: &str) {
    let refs = common::docker(&[
        "image",
        "inspect",
        "--format",
        "{{range .RepoTags}}{{.}} {{end}}",
        id,
    ]);
    for r in refs.split_whitespace() {
        let _ = common::docker_output(&["image", "rm", r]);
    }
    let _ = common::docker_output(&["image", "rm", "-f", id]);
    assert!(
        !common::docker_output(&["image", "inspect", id])
            .status
            .success(),
        "image {id} is still present"
    );
}

/// A command run with no route out: a network namespace of its own whose only interface is
/// loopback (brought up, as on any host).
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

/// Asserts the network namespace `offline_command` makes has no route out.
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
