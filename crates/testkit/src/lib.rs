//! The one test kit of smoker-release, shared by the integration tests (`tests/*.rs`) and the
//! CLI smoke test of `cargo xtask armv7` (`xtask/src/smoke.rs`).
//!
//! - [`registry::Registry`]: a real registry (Debian's `docker-registry`) on loopback.
//! - [`cleanup::Cleanup`]: removes what a test registered, on drop, even after a panic, and
//!   never what another test may stand on.
//! - [`images`]: the static test service (`tests/testsvc`), its shared base image (built once,
//!   under a file lock, never removed by a test) and per-test images derived from it by tag.
//! - [`project::Project`]: one throw-away project (recipes, lock, key, host env file) that
//!   releases through the library or through the `xtask` CLI.
//! - [`host::Host`]: one installer root and the `smoker-install` command lines against it.
//! - [`bins`]: the `xtask` and `smoker-install` binaries of the build profile the tests run
//!   under, in the target directory cargo uses.
//! - [`bundle`]: hand-made signed bundles and raw tar/zstd pieces for the hostile corpus.
//! - [`sshd::Sshd`]: a real OpenSSH server per simulated host, on loopback.
//! - [`statics::StaticServer`]: a counting static file server (ETag, Range, cut downloads).
//! - [`testbed::Testbed`]: the usual start of an installer test (Docker, registry, the test
//!   service pushed, a port, a cleanup guard).
//! - [`docker`], [`http`], [`ports`], [`run`], [`repo`], [`elf`]: Docker and HTTP primitives,
//!   loopback ports no other test holds, running commands, git clones of the workspace, and
//!   whether an executable is static.
//!
//! Tests fail, never skip, when Docker, the registry or another tool is missing. Every name
//! the kit gives to a Docker object or a port is unique to the calling process and call, so
//! tests may run in parallel threads, in parallel test binaries and in parallel checkouts
//! sharing one Docker engine.

#![warn(missing_docs)]

pub mod bins;
pub mod bundle;
pub mod cleanup;
pub mod docker;
pub mod elf;
pub mod host;
pub mod http;
pub mod images;
pub mod ports;
pub mod project;
pub mod registry;
pub mod repo;
pub mod run;
pub mod sshd;
pub mod stack;
pub mod statics;
pub mod testbed;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use cleanup::Cleanup;
pub use host::Host;
pub use images::{ImageInfo, Pushed};
pub use project::{Driver, Project, Release};
pub use registry::Registry;
pub use run::{stderr, stdout, text};
pub use testbed::Testbed;

/// The workspace root (two levels above this crate's manifest directory).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .ancestors()
        .nth(2)
        .expect("the test kit lives at crates/testkit inside the workspace")
        .to_path_buf()
}

/// A name unique to this process and call, safe for containers, images, volumes, networks,
/// registry repositories and Compose projects: `smoker-test-<prefix>-<pid>-<n>-<rand>`,
/// lowercase, `[a-z0-9-]` only.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "smoker-test-{}-{}-{}-{:04x}",
        clean.trim_matches('-'),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        nanos & 0xffff
    )
}

/// Calls `probe` every 100 ms until it returns `Some`, and returns that value; panics naming
/// `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lowercase hex sha256 of `bytes` (the format crate's own helper).
pub fn sha256_hex(bytes: &[u8]) -> String {
    smoker_format::digest::sha256_hex(bytes)
}

/// Lowercase hex sha256 of a file (the format crate's own helper); panics naming the file.
pub fn sha256_file(path: &Path) -> String {
    smoker_format::digest::sha256_file(path)
        .unwrap_or_else(|e| panic!("hashing {}: {e}", path.display()))
        .0
}

/// A fresh temporary directory named `<prefix>…`; panics with the reason.
pub fn tempdir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .unwrap_or_else(|e| panic!("creating a temporary directory {prefix}…: {e}"))
}

/// Gives the owner write permission on every directory below `path` (store entries are
/// read-only), so that the tree can be deleted without root. Best effort.
pub fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() | 0o700);
        let _ = std::fs::set_permissions(path, perm);
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

/// Writes `contents` to `path`, creating its parent directories; panics naming the file.
pub fn write_file(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
