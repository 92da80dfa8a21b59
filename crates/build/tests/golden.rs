//! The golden bundle: a fixed recipe, lock, key and time give exactly the committed manifest
//! and bundle sha256. Any change to the format, the planner, the writer, a dependency that
//! touches their bytes, or the fixture shows up here and must be made deliberately: rerun
//! with `SMOKER_BLESS=1` to rewrite the golden files, and say why in the commit.

use smoker_build::lock::Lock;
use smoker_build::recipe::Recipe;
use smoker_build::release::{self, SourceInfo};
use smoker_format::manifest::Arch;
use smoker_format::signing::SecretKey;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// A fixed key: the same signature bytes on every machine (Ed25519 is deterministic).
fn key() -> SecretKey {
    SecretKey::from_seed(*b"golden01", [7u8; 32])
}

fn build(arch: Arch) -> (Vec<u8>, String, tempfile::TempDir) {
    let dir = fixture();
    let recipe = Recipe::load(&dir, "golden").expect("the golden recipe loads");
    let lock_path = Lock::path(&dir, "golden");
    let lock = Lock::load(&lock_path, "golden").expect("the golden lock loads");
    let source = SourceInfo {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        dirty: false,
        recipe_dir: "recipes/golden".into(),
        epoch: 1_700_000_000,
    };
    let version = semver::Version::new(1, 2, 3);
    let plan = release::plan(&recipe, &lock, &lock_path, arch, "prod", &version, &source)
        .expect("the golden recipe plans");
    let out = tempfile::tempdir().expect("temporary output directory");
    let written = release::write_release(&plan, &key(), out.path()).expect("the bundle is written");
    (plan.manifest.to_canonical_json(), written.sha256, out)
}

fn check_or_bless(path: &Path, got: &[u8]) {
    if std::env::var_os("SMOKER_BLESS").is_some() {
        std::fs::write(path, got).expect("write the golden file");
        return;
    }
    let want = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with SMOKER_BLESS=1 to create it",
            path.display()
        )
    });
    assert!(
        want == got,
        "{} differs from what was built now:\n--- committed\n{}\n--- built\n{}\nIf the change is deliberate, rerun with SMOKER_BLESS=1 and commit the new golden files.",
        path.display(),
        String::from_utf8_lossy(&want),
        String::from_utf8_lossy(got)
    );
}

#[test]
fn golden_manifest_and_bundle_bytes_are_unchanged() {
    for arch in [Arch::Amd64, Arch::Armv7] {
        let (manifest, sha256, _out) = build(arch);
        let dir = fixture();
        check_or_bless(
            &dir.join(format!("expected-{arch}.manifest.json")),
            &manifest,
        );
        check_or_bless(
            &dir.join(format!("expected-{arch}.bundle.sha256")),
            format!("{sha256}\n").as_bytes(),
        );
    }
}

#[test]
fn building_twice_gives_the_same_bytes() {
    let (m1, s1, _a) = build(Arch::Amd64);
    let (m2, s2, _b) = build(Arch::Amd64);
    assert_eq!(m1, m2);
    assert_eq!(s1, s2);
}
