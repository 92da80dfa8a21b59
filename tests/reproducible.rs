//! Reproducible releases: the same commit, key and version give the same bytes whatever the
//! checkout's mtimes, the umask, the locale, the time zone or SOURCE_DATE_EPOCH (when it holds
//! the commit time); a one-byte recipe change gives other bytes; `verify-rebuild` confirms a
//! clean bundle and refuses dirty or mislabelled ones.

use smoker_format::bundle::read::{inspect_file, verify_file};
use smoker_format::manifest::{Arch, Manifest};
use smoker_format::signing::TrustedKeys;
use smoker_testkit::bins::{xtask, xtask_release_command};
use smoker_testkit::repo::{clone_workspace, git, hash_tree};
use smoker_testkit::run::{assert_ok, run};
use smoker_testkit::{sha256_file, stderr, stdout, workspace_root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VERSION: &str = "3.1.4";

/// How one release run is set up.
struct Env<'a> {
    umask: &'a str,
    /// (name, Some(value)) sets, (name, None) removes.
    vars: Vec<(&'a str, Option<String>)>,
    cwd: PathBuf,
}

/// `cargo xtask release` through `sh -c 'umask …; exec …'`.
fn release(project: &Path, key: &Path, out: &Path, env: &Env<'_>, extra: &[&str]) -> Output {
    let xtask = xtask_release_command(project, key, out, VERSION, extra);
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("umask {}; exec \"$0\" \"$@\"", env.umask))
        .arg(xtask.get_program())
        .args(xtask.get_args())
        .current_dir(&env.cwd);
    for (k, v) in xtask.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    for (k, v) in &env.vars {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let o = run(&mut cmd);
    assert_ok(&format!("xtask release (umask {})", env.umask), &o);
    o
}

fn plain_env(cwd: &Path) -> Env<'static> {
    Env {
        umask: "022",
        vars: vec![
            ("SOURCE_DATE_EPOCH", None),
            ("LC_ALL", Some("C".into())),
            ("LANG", Some("C".into())),
            ("TZ", Some("UTC".into())),
        ],
        cwd: cwd.to_path_buf(),
    }
}

fn head_time(repo: &Path) -> String {
    git(repo, &["log", "-1", "--format=%ct", "HEAD"])
}

/// Every `.tar.zst` under `dir`, relative path → sha256.
fn bundle_hashes(dir: &Path) -> BTreeMap<String, String> {
    hash_tree(dir)
        .into_iter()
        .filter(|(p, _)| p.ends_with(".tar.zst"))
        .collect()
}

/// How many bundles a full release of `project` must write: recipes × environments × arches.
fn expected_bundles(project: &Path) -> usize {
    let recipes = project.join("recipes");
    smoker_build::recipe::Recipe::discover(&recipes)
        .expect("recipes")
        .iter()
        .map(|n| {
            smoker_build::recipe::Recipe::load(&recipes, n)
                .expect("recipe")
                .environments()
                .len()
                * Arch::ALL.len()
        })
        .sum()
}

fn new_key(dir: &Path) -> (PathBuf, PathBuf) {
    smoker_testkit::bundle::new_key(dir, "release");
    (dir.join("release.key"), dir.join("release.pub"))
}

#[test]
fn two_clones_in_different_conditions_give_identical_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = new_key(tmp.path());

    // Clone A: as it comes.
    let a = tmp.path().join("a");
    clone_workspace(&a);
    // Clone B: checked out under umask 077, then every file's mtime moved to 2001.
    let b = tmp.path().join("elsewhere").join("deeper").join("b");
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    let o = run(Command::new("sh")
        .arg("-c")
        .arg("umask 077; exec git clone --quiet --no-hardlinks \"$0\" \"$1\"")
        .arg(workspace_root())
        .arg(&b));
    assert_ok("git clone under umask 077", &o);
    let o = run(Command::new("find")
        .arg(&b)
        .args(["-path", "*/.git", "-prune", "-o", "-exec"])
        .args(["touch", "-h", "-d", "2001-02-03 04:05:06", "{}", "+"]));
    assert_ok("touch every file of clone B", &o);
    let compose = b.join("recipes/device/compose.yaml");
    let mtime = std::fs::metadata(&compose).unwrap().modified().unwrap();
    assert!(
        mtime < std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000),
        "mtime of {} was not changed",
        compose.display()
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&compose).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "clone B was not checked out under umask 077");
    }
    let commit = git(&a, &["rev-parse", "HEAD"]);
    assert_eq!(git(&b, &["rev-parse", "HEAD"]), commit);
    let epoch = head_time(&b);

    // Run A: SOURCE_DATE_EPOCH unset (the commit time is used), C locale, UTC, umask 022.
    let out_a = tmp.path().join("out-a");
    release(&a, &key, &out_a, &plain_env(tmp.path()), &[]);
    // Run B: SOURCE_DATE_EPOCH = commit time, another locale and zone, umask 077, other cwd.
    let out_b = b.parent().unwrap().join("out-b");
    let env_b = Env {
        umask: "077",
        vars: vec![
            ("SOURCE_DATE_EPOCH", Some(epoch.clone())),
            ("LC_ALL", Some("C.UTF-8".into())),
            ("LANG", Some("de_DE.UTF-8".into())),
            ("TZ", Some("Asia/Kathmandu".into())),
        ],
        cwd: b.clone(),
    };
    release(&b, &key, &out_b, &env_b, &[]);

    let files_a = hash_tree(&out_a);
    let files_b = hash_tree(&out_b);
    let bundles_a = bundle_hashes(&out_a);
    assert_eq!(
        bundles_a.len(),
        expected_bundles(&a),
        "bundles written: {bundles_a:#?}"
    );
    assert_eq!(
        bundles_a,
        bundle_hashes(&out_b),
        "bundle sha256 differ between the runs"
    );
    // The detached signatures and SHA256SUMS are identical too.
    assert_eq!(files_a, files_b, "release outputs differ between the runs");
    assert!(files_a.keys().any(|p| p.ends_with(".tar.zst.minisig")));
    assert!(files_a.keys().any(|p| p.ends_with("SHA256SUMS")));

    // Every bundle is genuine, records the clean commit and the commit time, and the umask did
    // not leak into the files' modes.
    let keys = TrustedKeys::from_file(&public).unwrap();
    for rel in bundles_a.keys() {
        let v = verify_file(&out_a.join(rel), &keys).expect("bundle verifies");
        assert_eq!(
            v.manifest.source.commit.as_deref(),
            Some(commit.as_str()),
            "{rel}"
        );
        assert!(!v.manifest.source.dirty, "{rel}: recorded as dirty");
        assert_eq!(v.manifest.created.to_string(), epoch, "{rel}");
        for out in [&out_a, &out_b] {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(out.join(rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o644, "{rel} under {}", out.display());
        }
    }

    // Control: the comparison is sensitive to its inputs — another SOURCE_DATE_EPOCH gives
    // other bytes.
    let out_c = tmp.path().join("out-c");
    let mut env_c = plain_env(tmp.path());
    env_c.vars[0].1 = Some((epoch.parse::<u64>().unwrap() + 1).to_string());
    let one = ["--recipe", "device", "--env", "prod", "--arch", "amd64"];
    release(&a, &key, &out_c, &env_c, &one);
    let rel = "prod/device-3.1.4-amd64.tar.zst";
    assert_ne!(
        bundle_hashes(&out_c)[rel],
        bundles_a[rel],
        "SOURCE_DATE_EPOCH did not change the bundle"
    );
}

/// The manifest with the fields a new commit of one file may change blanked out.
fn without(m: &Manifest, path: &str) -> Manifest {
    let mut m = m.clone();
    m.source.commit = None;
    for f in &mut m.files {
        if f.path == path {
            f.sha256.clear();
        }
    }
    m
}

#[test]
fn a_one_byte_recipe_change_changes_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path());
    let repo = tmp.path().join("repo");
    clone_workspace(&repo);
    let mut env = plain_env(tmp.path());
    // The same build time for both, so only the content and the commit differ.
    env.vars[0].1 = Some(head_time(&repo));
    let one = ["--recipe", "device", "--env", "prod", "--arch", "amd64"];
    let rel = "prod/device-3.1.4-amd64.tar.zst";

    let before = tmp.path().join("before");
    release(&repo, &key, &before, &env, &one);

    let file = repo.join("recipes/device/config/device.toml");
    let mut bytes = std::fs::read(&file).unwrap();
    let at = bytes
        .iter()
        .position(|b| b.is_ascii_digit())
        .expect("a digit");
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&file, &bytes).unwrap();
    git(&repo, &["commit", "--quiet", "-am", "one byte"]);
    let after = tmp.path().join("after");
    release(&repo, &key, &after, &env, &one);

    let (h1, h2) = (
        sha256_file(&before.join(rel)),
        sha256_file(&after.join(rel)),
    );
    assert_ne!(h1, h2, "a one-byte recipe change left the bundle unchanged");
    let m1 = inspect_file(&before.join(rel)).unwrap().manifest;
    let m2 = inspect_file(&after.join(rel)).unwrap().manifest;
    let path = "stack/config/device.toml";
    assert_ne!(
        m1.file(path).unwrap().sha256,
        m2.file(path).unwrap().sha256,
        "the changed file's hash is the same"
    );
    assert_ne!(m1.source.commit, m2.source.commit);
    assert_eq!(
        without(&m1, path),
        without(&m2, path),
        "more than the changed file and the commit differ"
    );
}

fn verify_rebuild(bundle: &Path, repo: &Path) -> Output {
    run(Command::new(xtask())
        .arg("verify-rebuild")
        .arg(bundle)
        .arg("--repo")
        .arg(repo))
}

#[test]
fn verify_rebuild_confirms_bundles_from_a_clean_clone() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path());
    let repo = tmp.path().join("repo");
    clone_workspace(&repo);
    let out = tmp.path().join("out");
    release(&repo, &key, &out, &plain_env(tmp.path()), &[]);
    let bundles = bundle_hashes(&out);
    assert!(!bundles.is_empty());
    for rel in bundles.keys() {
        let o = verify_rebuild(&out.join(rel), &repo);
        assert_ok(&format!("verify-rebuild {rel}"), &o);
        let stdout = stdout(&o);
        assert!(
            stdout.contains("reproducible:") && !stdout.contains("NOT"),
            "{rel}: {stdout}"
        );
    }

    // A later commit does not matter: the bundle is rebuilt from the commit it records.
    std::fs::write(
        repo.join("recipes/device/config/device.toml"),
        "# changed later\n",
    )
    .unwrap();
    git(&repo, &["commit", "--quiet", "-am", "later change"]);
    let device = out.join("prod/device-3.1.4-amd64.tar.zst");
    let o = verify_rebuild(&device, &repo);
    assert_ok("verify-rebuild after a later commit", &o);

    // A repository that lacks the recorded commit cannot confirm it.
    let stranger = tmp.path().join("stranger");
    std::fs::create_dir_all(&stranger).unwrap();
    git(&stranger, &["init", "--quiet"]);
    std::fs::write(stranger.join("README"), "unrelated\n").unwrap();
    git(&stranger, &["add", "README"]);
    git(&stranger, &["commit", "--quiet", "-m", "unrelated"]);
    let o = verify_rebuild(&device, &stranger);
    assert!(
        !o.status.success(),
        "verify-rebuild passed against a repository without the commit"
    );
    assert!(stderr(&o).contains("is not in"), "{}", stderr(&o));
}

#[test]
fn verify_rebuild_refuses_dirty_bundles_and_detects_mislabelled_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path());
    let repo = tmp.path().join("repo");
    clone_workspace(&repo);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let one = ["--recipe", "device", "--env", "prod", "--arch", "amd64"];

    // An uncommitted change: the bundle says dirty, and verify-rebuild refuses it.
    let file = repo.join("recipes/device/config/device.toml");
    let mut text_now = std::fs::read_to_string(&file).unwrap();
    text_now.push_str("# uncommitted\n");
    std::fs::write(&file, &text_now).unwrap();
    let out = tmp.path().join("dirty");
    let o = release(&repo, &key, &out, &plain_env(tmp.path()), &one);
    assert!(
        stderr(&o).contains("uncommitted changes"),
        "no warning: {}",
        stderr(&o)
    );
    let bundle = out.join("prod/device-3.1.4-amd64.tar.zst");
    let m = inspect_file(&bundle).unwrap().manifest;
    assert!(
        m.source.dirty,
        "a bundle from a dirty tree is not marked dirty"
    );
    let o = verify_rebuild(&bundle, &repo);
    assert!(
        !o.status.success(),
        "verify-rebuild accepted a dirty bundle"
    );
    assert!(stderr(&o).contains("dirty"), "{}", stderr(&o));

    // A bundle that claims the clean commit but holds other content (a builder that lies
    // about its source): verify-rebuild finds the difference and names the file.
    let recipes = repo.join("recipes");
    let recipe = smoker_build::recipe::Recipe::load(&recipes, "device").unwrap();
    let lock_path = smoker_build::lock::Lock::path(&recipes, "device");
    let lock = smoker_build::lock::Lock::load(&lock_path, "device").unwrap();
    let source = smoker_build::release::SourceInfo {
        commit: Some(commit.clone()),
        dirty: false,
        recipe_dir: "recipes/device".into(),
        epoch: head_time(&repo).parse().unwrap(),
    };
    let plan = smoker_build::release::plan(
        &recipe,
        &lock,
        &lock_path,
        Arch::Amd64,
        "prod",
        &semver::Version::parse(VERSION).unwrap(),
        &source,
    )
    .unwrap();
    let secret = smoker_format::signing::SecretKey::load(&key, None).unwrap();
    let lying =
        smoker_build::release::write_release(&plan, &secret, &tmp.path().join("lying")).unwrap();
    let o = verify_rebuild(&lying.path, &repo);
    let (stdout, stderr) = (stdout(&o), stderr(&o));
    assert!(
        !o.status.success(),
        "verify-rebuild accepted a mislabelled bundle: {stdout}"
    );
    assert!(stderr.contains("NOT reproducible"), "{stderr}");
    assert!(
        stderr.contains("stack/config/device.toml"),
        "the differing file is not named: {stderr}"
    );
}
