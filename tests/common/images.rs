//! Building the static `testsvc` binary and `FROM scratch` images of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::{docker, workspace_root};

/// The port `testsvc serve` listens on inside the image.
pub const TESTSVC_PORT: u16 = 8080;

/// Label put on every image built here (value `testsvc`), so stray test
/// images can be found with `docker images --filter label=…`.
pub const TEST_IMAGE_LABEL: &str = "org.smoker-release.test";

/// The Rust target the static binary is built for.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The Dockerfile of every test image. The health check polls every second.
const DOCKERFILE: &str = "FROM scratch
COPY testsvc /testsvc
HEALTHCHECK --interval=1s --timeout=2s --retries=3 --start-period=10s CMD [\"/testsvc\", \"probe\", \"http://127.0.0.1:8080/health\"]
EXPOSE 8080
ENTRYPOINT [\"/testsvc\"]
CMD [\"serve\"]
";

/// A built image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The tag it was built as, e.g. `smoker-test-img-123-0-ab12:v1`.
    pub tag: String,
    /// Its image ID as Docker reports it (`sha256:…`).
    pub id: String,
}

/// Builds `tests/testsvc` as a fully static release binary (once per test
/// process) and returns its path.
///
/// Runs `cargo build --release -p testsvc --target x86_64-unknown-linux-gnu`
/// with `RUSTFLAGS=-C target-feature=+crt-static` into the separate target
/// dir `<workspace>/target/testsvc-static`, so the main build cache is left
/// alone. Threads of one test binary share one build through a `OnceLock`;
/// concurrent test binaries are serialised by cargo's own target-dir lock.
/// Panics (failing the test) when the build fails or the result still needs
/// a dynamic loader.
pub fn testsvc_static_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build_static_binary).clone()
}

fn build_static_binary() -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target").join("testsvc-static");
    let output = Command::new(env!("CARGO"))
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "testsvc",
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo ({}): {e}", env!("CARGO")));
    assert!(
        output.status.success(),
        "building the static testsvc binary failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = target_dir.join(TARGET).join("release").join("testsvc");
    assert_static(&binary);
    binary
}

/// Panics unless `path` is a 64-bit little-endian ELF executable without a
/// `PT_INTERP` program header (i.e. it needs no dynamic loader and can run
/// in a `FROM scratch` image).
pub fn assert_static(path: &Path) {
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let u16_at = |off: usize| {
        bytes
            .get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |off: usize| {
        bytes
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        bytes.get(off..off + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    assert!(
        bytes.starts_with(b"\x7fELF") && bytes.get(4) == Some(&2) && bytes.get(5) == Some(&1),
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        panic!("{}: truncated ELF header", path.display());
    };
    for i in 0..usize::from(phnum) {
        let off = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        let p_type =
            u32_at(off).unwrap_or_else(|| panic!("{}: truncated program headers", path.display()));
        assert_ne!(
            p_type,
            PT_INTERP,
            "{} is dynamically linked (has PT_INTERP); it cannot run in a scratch image",
            path.display()
        );
    }
}

/// Builds the `FROM scratch` testsvc image as `tag` and returns its ID.
/// Same as [`build_image_with`] with no extra labels.
pub fn build_image(tag: &str) -> ImageInfo {
    build_image_with(tag, &[])
}

/// Builds the `FROM scratch` testsvc image as `tag` with extra image labels
/// (`docker build --label k=v`), e.g. to make two builds differ in image ID.
///
/// The image has the binary at `/testsvc`, `ENTRYPOINT ["/testsvc"]`,
/// `CMD ["serve"]`, and a `HEALTHCHECK` running
/// `/testsvc probe http://127.0.0.1:8080/health` every second after a 10 s
/// start period (so with a
/// non-default `PORT` the health check fails). It also carries the label
/// [`TEST_IMAGE_LABEL`]`=testsvc`. The build context is a fresh temporary
/// directory. The caller owns the tag: register it with
/// [`super::Cleanup::image`] to have it removed.
pub fn build_image_with(tag: &str, labels: &[(&str, &str)]) -> ImageInfo {
    super::require_docker();
    let binary = testsvc_static_binary();
    let context = tempfile::Builder::new()
        .prefix("testsvc-image-")
        .tempdir()
        .unwrap_or_else(|e| panic!("create a build context dir: {e}"));
    std::fs::copy(&binary, context.path().join("testsvc"))
        .unwrap_or_else(|e| panic!("copy {} into the build context: {e}", binary.display()));
    std::fs::write(context.path().join("Dockerfile"), DOCKERFILE)
        .unwrap_or_else(|e| panic!("write the Dockerfile: {e}"));

    let mut args: Vec<String> = vec!["build".into(), "--quiet".into(), "--tag".into(), tag.into()];
    args.push("--label".into());
    args.push(format!("{TEST_IMAGE_LABEL}=testsvc"));
    for (key, value) in labels {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    args.push(context.path().display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker(&args);
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", tag]);
    ImageInfo {
        tag: tag.to_string(),
        id,
    }
}
