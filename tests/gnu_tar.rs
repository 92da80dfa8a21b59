//! A bundle is an ordinary `.tar.zst`: GNU tar (with the `zstd` program) lists and extracts it,
//! in manifest order, owned by 0/0, and every extracted file matches the manifest.

use smoker_format::bundle::read::{VerifiedBundle, inspect_file};
use smoker_testkit::bins::xtask_release;
use smoker_testkit::bundle::{Fixture, new_key};
use smoker_testkit::repo::{clone_workspace, hash_tree};
use smoker_testkit::run::{assert_ok, require_gnu_tar_zstd, run};
use smoker_testkit::{stderr, stdout};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

fn gnu_tar() -> Command {
    require_gnu_tar_zstd();
    let mut c = Command::new("tar");
    c.env("TZ", "UTC").env("LC_ALL", "C");
    c
}

/// `date -u` rendering of a Unix time the way `tar -tv` prints it.
fn tar_time(secs: u64) -> String {
    let o = run(Command::new("date")
        .arg("-u")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg("+%Y-%m-%d %H:%M"));
    assert_ok("date", &o);
    stdout(&o).trim().to_string()
}

fn check_listing(bundle: &Path, info: &VerifiedBundle, numeric: bool) {
    let m = &info.manifest;
    let mut cmd = gnu_tar();
    cmd.arg("--zstd").arg("-tvf").arg(bundle);
    if numeric {
        cmd.arg("--numeric-owner");
    }
    let o = run(&mut cmd);
    assert_ok("tar --zstd -tvf", &o);
    let (stdout, stderr) = (stdout(&o), stderr(&o));
    assert!(stderr.trim().is_empty(), "tar warned: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let mut expected: Vec<(String, u32, u64)> = vec![
        (
            "manifest.json".into(),
            0o644,
            info.manifest_bytes.len() as u64,
        ),
        (
            "manifest.json.minisig".into(),
            0o644,
            info.signature.len() as u64,
        ),
    ];
    expected.extend(m.files.iter().map(|f| (f.path.clone(), f.mode, f.size)));
    assert_eq!(
        lines.len(),
        expected.len(),
        "{}: listing has {} entries, expected {}:\n{stdout}",
        bundle.display(),
        lines.len(),
        expected.len()
    );
    let when = tar_time(m.created);
    for (line, (path, mode, size)) in lines.iter().zip(&expected) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 6, "unexpected listing line: {line}");
        let perm = if *mode == 0o755 {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        assert_eq!(fields[0], perm, "{line}");
        assert_eq!(fields[1], "0/0", "owner of {path} is not 0/0: {line}");
        assert_eq!(fields[2], size.to_string(), "{line}");
        assert_eq!(format!("{} {}", fields[3], fields[4]), when, "{line}");
        assert_eq!(fields[5], path, "order differs: {line}");
    }
}

fn check_extraction(bundle: &Path, info: &VerifiedBundle, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let o = run(gnu_tar()
        .arg("--zstd")
        .arg("-xpf")
        .arg(bundle)
        .arg("-C")
        .arg(into));
    assert_ok("tar --zstd -xpf", &o);
    assert!(stderr(&o).trim().is_empty(), "tar warned: {}", stderr(&o));
    let m = &info.manifest;
    let tree = hash_tree(into);
    let mut expected: Vec<String> = m.files.iter().map(|f| f.path.clone()).collect();
    expected.push("manifest.json".into());
    expected.push("manifest.json.minisig".into());
    expected.sort();
    assert_eq!(
        tree.keys().cloned().collect::<Vec<_>>(),
        expected,
        "extracted files differ from the manifest's"
    );
    assert_eq!(tree["manifest.json"], info.manifest_sha256);
    assert_eq!(
        std::fs::read(into.join("manifest.json")).unwrap(),
        info.manifest_bytes
    );
    for f in &m.files {
        let p = into.join(&f.path);
        assert_eq!(
            tree[&f.path], f.sha256,
            "{}: sha256 differs from the manifest",
            f.path
        );
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), f.size, "{}", f.path);
        assert_eq!(meta.permissions().mode() & 0o7777, f.mode, "{}", f.path);
        assert_eq!(meta.mtime(), m.created as i64, "{}", f.path);
    }
}

fn release_bundle(tmp: &Path) -> PathBuf {
    let project = tmp.join("project");
    clone_workspace(&project);
    new_key(tmp, "release");
    let out = tmp.join("out");
    let o = xtask_release(
        &project,
        &tmp.join("release.key"),
        &out,
        "1.0.0",
        None,
        &["--recipe", "cloud", "--env", "prod", "--arch", "amd64"],
    );
    assert_ok("cargo xtask release", &o);
    out.join("prod/cloud-1.0.0-amd64.tar.zst")
}

#[test]
fn gnu_tar_lists_and_extracts_a_released_bundle() {
    require_gnu_tar_zstd();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = release_bundle(tmp.path());
    let info = inspect_file(&bundle).expect("bundle reads");
    assert!(
        info.manifest.files.len() >= 5,
        "the cloud bundle is expected to carry several files"
    );
    check_listing(&bundle, &info, true);
    check_listing(&bundle, &info, false);
    check_extraction(&bundle, &info, &tmp.path().join("x"));
}

#[test]
fn gnu_tar_lists_and_extracts_a_bundle_with_executables_and_a_large_file() {
    require_gnu_tar_zstd();
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("corpus-1.0.0-amd64.tar.zst");
    std::fs::write(&bundle, f.bundle()).unwrap();
    let info = inspect_file(&bundle).expect("bundle reads");
    assert!(info.manifest.files.iter().any(|e| e.mode == 0o755));
    check_listing(&bundle, &info, true);
    check_extraction(&bundle, &info, &tmp.path().join("x"));
}
