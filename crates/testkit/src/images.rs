//! The test service (`tests/testsvc`) as a fully static binary, its shared base image, and the
//! per-test images every test builds from that base.
//!
//! Why a shared base: Docker's legacy builder keeps one intermediate image per Dockerfile
//! step and reuses it as cache across builds. When two tests build the same Dockerfile prefix
//! at once and one of them removes its image, Docker also prunes the untagged intermediate
//! images below it — including one the other build is standing on, which then fails with
//! "failed to get digest sha256:…: no such file or directory". So:
//!
//! - the base image (binary, health check, entrypoint) is built once, without the build
//!   cache, under a tag derived from the binary's and the Dockerfile's content, while holding
//!   a file lock, so concurrent test threads, test binaries and checkouts wait for one build
//!   and then reuse it; no test ever removes it ([`crate::cleanup::is_shared_base`]);
//! - every per-test image is `FROM` that tag, with a label unique to the test as its first
//!   instruction, so its ID is its own and every later step's cache key is too;
//! - cleanup removes per-test references and IDs without force (see [`crate::Cleanup`]).

use crate::docker::{docker_output, image_id, image_inspect, require_docker};
use crate::registry::Registry;
use crate::{Cleanup, unique_name};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The port `testsvc serve` listens on inside the image.
pub const TESTSVC_PORT: u16 = 8080;

/// Label on the base image, so every test image carries it (value `testsvc`) and stray ones
/// can be found with `docker images --filter label=…`.
pub const TEST_IMAGE_LABEL: &str = "org.smoker-release.test";

/// Label that makes a per-test image unique (its value is the image's local tag).
pub const UNIQUE_LABEL: &str = "org.smoker-release.test.unique";

/// Repository of the shared base image; its tag is a hash of the binary and the Dockerfile.
pub use crate::cleanup::BASE_REPOSITORY;

/// The Rust target the static binary is built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The Dockerfile of the base image. The health check polls every second.
const BASE_DOCKERFILE: &str = "FROM scratch
COPY testsvc /testsvc
HEALTHCHECK --interval=1s --timeout=2s --retries=3 --start-period=10s CMD [\"/testsvc\", \"probe\", \"http://127.0.0.1:8080/health\"]
EXPOSE 8080
ENTRYPOINT [\"/testsvc\"]
CMD [\"serve\"]
LABEL org.smoker-release.test=\"testsvc\"
";

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The tag it was built as, e.g. `smoker-test-img-123-0-ab12:local`.
    pub tag: String,
    /// Its image ID as Docker reports it (`sha256:…`).
    pub id: String,
}

/// An image pushed to a test registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// `127.0.0.1:PORT/repo:tag`.
    pub reference: String,
    /// Repository name in the registry.
    pub repo: String,
    /// Tag in the registry.
    pub tag: String,
    /// Manifest digest the registry reports for the tag.
    pub digest: String,
    /// Image ID (= config digest).
    pub id: String,
    /// The local tag it was built as.
    pub local: String,
}

/// Builds `tests/testsvc` as a fully static release binary (once per process) and returns its
/// path.
///
/// Runs `cargo build --release --locked -p testsvc --target x86_64-unknown-linux-gnu` with
/// `RUSTFLAGS=-C target-feature=+crt-static` into `<target dir>/testsvc-static`, so the main
/// build cache is left alone. Concurrent builds are ordered by cargo's own target-dir lock.
/// Panics when the build fails or the result still needs a dynamic loader.
pub fn testsvc_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_static_binary).clone()
}

fn build_static_binary() -> PathBuf {
    let target_dir = crate::bins::build_dirs().target_dir.join("testsvc-static");
    crate::bins::cargo_build("the static testsvc binary", |cmd| {
        cmd.args(["--release", "-p", "testsvc", "--target", TARGET])
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env("RUSTFLAGS", "-C target-feature=+crt-static");
    });
    let binary = target_dir.join(TARGET).join("release").join("testsvc");
    assert_static(&binary);
    binary
}

/// Panics unless `path` is a 64-bit little-endian ELF executable without a `PT_INTERP`
/// program header (it needs no dynamic loader and can run in a `FROM scratch` image).
pub fn assert_static(path: &Path) {
    let elf = crate::elf::read_elf(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        elf.bits,
        64,
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    assert!(
        !elf.interpreter,
        "{} is dynamically linked (has PT_INTERP); it cannot run in a scratch image",
        path.display()
    );
}

/// The shared base image of the test service: built once (per binary content) under
/// `smoker-testkit/testsvc:<hash>`, and never removed by a test.
///
/// The image has the binary at `/testsvc`, `ENTRYPOINT ["/testsvc"]`, `CMD ["serve"]`, the
/// label [`TEST_IMAGE_LABEL`]`=testsvc` and a `HEALTHCHECK` running
/// `/testsvc probe http://127.0.0.1:8080/health` every second after a 10 s start period (so
/// with a non-default `PORT` the health check fails). The build runs under an exclusive lock
/// on a file in the system's temporary directory; whoever gets the lock first builds, the
/// others find the tag and reuse it.
pub fn base_image() -> &'static ImageInfo {
    BASE.get_or_init(build_base_image)
}

/// The base image, once this process has built or found it.
static BASE: OnceLock<ImageInfo> = OnceLock::new();

fn build_base_image() -> ImageInfo {
    require_docker();
    let binary = testsvc_binary();
    let mut key =
        std::fs::read(&binary).unwrap_or_else(|e| panic!("reading {}: {e}", binary.display()));
    key.extend_from_slice(BASE_DOCKERFILE.as_bytes());
    let tag = format!("{BASE_REPOSITORY}:{}", &crate::sha256_hex(&key)[..16]);

    let lock_path = std::env::temp_dir().join("smoker-testkit-base-image.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .unwrap_or_else(|e| panic!("opening {}: {e}", lock_path.display()));
    lock.lock()
        .unwrap_or_else(|e| panic!("locking {}: {e}", lock_path.display()));
    if let Some(id) = image_inspect(&tag, "{{.Id}}") {
        crate::cleanup::protect_shared_base(&id);
        return ImageInfo { tag, id };
    }
    let context = crate::tempdir("testsvc-base-");
    std::fs::copy(&binary, context.path().join("testsvc"))
        .unwrap_or_else(|e| panic!("copy {} into the build context: {e}", binary.display()));
    crate::write_file(&context.path().join("Dockerfile"), BASE_DOCKERFILE);
    // No cache: the base's intermediate images are its own, never another build's.
    docker_build(&["--no-cache", "--tag", &tag], context.path(), &[]);
    let id = image_id(&tag);
    drop(lock);
    crate::cleanup::protect_shared_base(&id);
    ImageInfo { tag, id }
}

/// `docker build --quiet ARGS CONTEXT` with extra environment; panics with its output.
fn docker_build(args: &[&str], context: &Path, envs: &[(&str, &str)]) {
    let out = Command::new("docker")
        .arg("build")
        .arg("--quiet")
        .args(args)
        .arg(context)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker build: {e}"));
    assert!(
        out.status.success(),
        "docker build {args:?}: {}",
        crate::text(&out)
    );
}

/// A `LABEL` argument `key="value"`.
fn label(key: &str, value: &str) -> String {
    format!(
        "{key}={}",
        serde_json::to_string(value).expect("a string serialises")
    )
}

/// Builds the test service image as `tag`: [`base_image`] plus the label
/// [`UNIQUE_LABEL`]`=tag`, so it has an image ID of its own. The caller owns the tag and the
/// image: register both with [`Cleanup::image`].
pub fn build_image(tag: &str) -> ImageInfo {
    build_image_with(tag, &[])
}

/// [`build_image`] with extra image labels, e.g. to make two builds differ in image ID.
pub fn build_image_with(tag: &str, labels: &[(&str, &str)]) -> ImageInfo {
    let base = base_image();
    let mut dockerfile = format!("FROM {}\nLABEL {}", base.tag, label(UNIQUE_LABEL, tag));
    for (key, value) in labels {
        dockerfile.push(' ');
        dockerfile.push_str(&label(key, value));
    }
    dockerfile.push('\n');
    let context = crate::tempdir("testsvc-image-");
    crate::write_file(&context.path().join("Dockerfile"), dockerfile);
    docker_build(&["--tag", tag], context.path(), &[]);
    ImageInfo {
        tag: tag.to_string(),
        id: image_id(tag),
    }
}

/// The test service with an image ID of its own, built, registered with `cleanup` (tag and
/// ID) and pushed to `registry` as `repo:tag`.
pub fn unique_testsvc(registry: &Registry, cleanup: &mut Cleanup, repo: &str, tag: &str) -> Pushed {
    let local = cleanup.image(&format!("{}:local", unique_name("img")));
    build_image(&local);
    push_local(registry, cleanup, local, repo, tag)
}

/// Registers the ID of the per-test image `local` with `cleanup` (a later push to the same
/// registry tag leaves the image without that tag) and pushes it as `repo:tag`.
fn push_local(
    registry: &Registry,
    cleanup: &mut Cleanup,
    local: String,
    repo: &str,
    tag: &str,
) -> Pushed {
    let id = cleanup.image(&image_id(&local));
    let digest = registry.push(&local, repo, tag);
    Pushed {
        reference: registry.reference(repo, tag),
        repo: repo.to_string(),
        tag: tag.to_string(),
        digest,
        id,
        local,
    }
}

/// [`unique_testsvc`] in a repository of its own, tag `1`.
pub fn pinned_testsvc(registry: &Registry, cleanup: &mut Cleanup) -> Pushed {
    unique_testsvc(registry, cleanup, &unique_name("svc"), "1")
}

/// An image `FROM base` (a per-test image) plus one extra file of `extra_bytes` (so it shares
/// base's layers), pushed as `repo:tag`.
pub fn derived_image(
    registry: &Registry,
    cleanup: &mut Cleanup,
    base: &str,
    extra_bytes: usize,
    repo: &str,
    tag: &str,
) -> Pushed {
    let local = cleanup.image(&format!("{}:local", unique_name("derived")));
    let context = crate::tempdir("derived-image-");
    let data: Vec<u8> = (0..extra_bytes)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    crate::write_file(&context.path().join("extra"), data);
    crate::write_file(
        &context.path().join("Dockerfile"),
        format!(
            "FROM {base}\nLABEL {}\nCOPY extra /extra\n",
            label(UNIQUE_LABEL, &local)
        ),
    );
    docker_build(&["--tag", &local], context.path(), &[]);
    push_local(registry, cleanup, local, repo, tag)
}

/// A `FROM scratch` image for `platform` (e.g. `linux/arm/v7`) with one small file unique to
/// the call, built by the legacy builder (no emulation needed: nothing runs) and pushed as
/// `repo:tag`.
pub fn platform_image(
    registry: &Registry,
    cleanup: &mut Cleanup,
    platform: &str,
    repo: &str,
    tag: &str,
) -> Pushed {
    let unique = unique_name("plat");
    let local = cleanup.image(&format!("{unique}:local"));
    let context = crate::tempdir("platform-image-");
    crate::write_file(&context.path().join("f"), format!("{platform} {unique}\n"));
    crate::write_file(
        &context.path().join("Dockerfile"),
        "FROM scratch\nCOPY f /f\n",
    );
    docker_build(
        &["--platform", platform, "--tag", &local],
        context.path(),
        &[("DOCKER_BUILDKIT", "0")],
    );
    push_local(registry, cleanup, local, repo, tag)
}

/// Removes image `id` of this test (each of its tags and repo digests, then the ID, without
/// force) and asserts it is gone.
pub fn remove_image(id: &str) {
    assert!(
        !crate::cleanup::is_shared_base(id),
        "a test may not remove the shared base"
    );
    crate::cleanup::remove_image_refs_and_id(id);
    let left = docker_output(&["image", "inspect", "--format", "{{.RepoTags}}", id]);
    assert!(
        !left.status.success(),
        "image {id} is still present: {}",
        String::from_utf8_lossy(&left.stdout).trim()
    );
}

/// The body of `GET http://127.0.0.1:PORT/version`, if the test service answers 200.
pub fn version_at(port: u16) -> Option<String> {
    crate::http::get(&format!("http://127.0.0.1:{port}/version"))
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.text().trim().to_string())
}

/// Waits up to 20 s until the test service on `port` answers `want` on `/version`.
pub fn wait_version(port: u16, want: &str) {
    crate::wait_for(
        &format!("/version = {want} on port {port}"),
        std::time::Duration::from_secs(20),
        || (version_at(port).as_deref() == Some(want)).then_some(()),
    );
}
