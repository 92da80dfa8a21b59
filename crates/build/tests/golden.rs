//! The golden recipe. Its bundle: a fixed recipe, lock, key and time give exactly the committed
//! manifest and bundle sha256. Copies of it, altered, show what release refuses. Any change to the format, the planner, the writer, a dependency that
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

/// A copy of the golden recipe in a temporary directory, with its lock.
fn scratch_recipe() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let copy = |from: &Path, to: &Path| {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .expect("run cp");
        assert!(
            status.success(),
            "cp -a {} {}",
            from.display(),
            to.display()
        );
    };
    copy(&fixture().join("golden"), &tmp.path().join("golden"));
    copy(
        &fixture().join("golden.lock"),
        &tmp.path().join("golden.lock"),
    );
    tmp
}

fn plan_in(dir: &Path) -> Result<release::Plan, release::ReleaseError> {
    let recipe = Recipe::load(dir, "golden").expect("the recipe loads");
    let lock_path = Lock::path(dir, "golden");
    let lock = Lock::load(&lock_path, "golden").expect("the lock loads");
    let source = SourceInfo {
        commit: None,
        dirty: false,
        recipe_dir: "recipes/golden".into(),
        epoch: 1_700_000_000,
    };
    release::plan(
        &recipe,
        &lock,
        &lock_path,
        Arch::Amd64,
        "prod",
        &semver::Version::new(1, 0, 0),
        &source,
    )
}

#[test]
fn a_symlinked_migration_is_refused_and_its_target_never_read() {
    let tmp = scratch_recipe();
    let secret = tmp.path().join("secret.txt");
    std::fs::write(&secret, "SMOKER_KEY_PASSWORD=hunter2\n").expect("write the secret");
    let link = tmp.path().join("golden/migrations/0002-leak.sh");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let err = plan_in(tmp.path()).expect_err("a linked migration must be refused");
    let msg = err.to_string();
    assert!(msg.contains("0002-leak.sh"), "{msg}");
    assert!(msg.contains("symbolic link"), "{msg}");
    // Also a link to /proc/self/environ, the case that would ship the key password.
    std::fs::remove_file(&link).expect("remove");
    std::os::unix::fs::symlink("/proc/self/environ", &link).expect("symlink");
    let msg = plan_in(tmp.path()).expect_err("refused").to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
}

#[test]
fn a_migrations_directory_linked_out_of_the_recipe_is_refused() {
    let tmp = scratch_recipe();
    let outside = tmp.path().join("elsewhere");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("0001-init.sh"), "echo hi\n").expect("write");
    let dir = tmp.path().join("golden/migrations");
    std::fs::remove_dir_all(&dir).expect("remove the migrations dir");
    std::os::unix::fs::symlink(&outside, &dir).expect("symlink");
    let msg = plan_in(tmp.path())
        .expect_err("a migrations dir outside the recipe must be refused")
        .to_string();
    assert!(msg.contains("leaves the recipe directory"), "{msg}");
}

#[test]
fn a_lock_without_image_ids_is_refused_naming_the_command_that_fixes_it() {
    let tmp = scratch_recipe();
    let lock = tmp.path().join("golden.lock");
    let text = std::fs::read_to_string(&lock).expect("read the lock");
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("config_digest"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&lock, without).expect("write the lock");
    let msg = plan_in(tmp.path())
        .expect_err("a lock without image IDs must be refused")
        .to_string();
    assert!(msg.contains("records no image ID"), "{msg}");
    assert!(msg.contains("cargo xtask lock --recipe golden"), "{msg}");
}
