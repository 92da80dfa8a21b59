//! Interoperability with the reference `minisign` CLI (Debian package `minisign`), both ways:
//! the CLI verifies our signatures and signs with our keys; we verify its signatures and sign
//! releases with its keys (password-protected and `-W`).

use smoker_format::signing::{SecretKey, TrustedKeys};
use smoker_testkit::bins::{smoker_install, xtask, xtask_release};
use smoker_testkit::bundle::{Fixture, key_id_of};
use smoker_testkit::repo::clone_workspace;
use smoker_testkit::run::{assert_ok, require_minisign, run, run_with_input};
use smoker_testkit::{stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASSWORD: &str = "correct horse battery staple";

fn minisign() -> Command {
    require_minisign();
    Command::new("minisign")
}

/// `minisign -G`; with a password it is read twice from standard input (the CLI reads a line
/// from stdin when stdin is not a terminal), without one `-W` stores the key unencrypted.
fn cli_keygen(dir: &Path, name: &str, password: Option<&str>) -> (PathBuf, PathBuf) {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let mut cmd = minisign();
    cmd.arg("-G").arg("-p").arg(&public).arg("-s").arg(&secret);
    let out = match password {
        Some(p) => run_with_input(&mut cmd, Some(format!("{p}\n{p}\n").as_bytes())),
        None => run(cmd.arg("-W")),
    };
    assert_ok("minisign -G", &out);
    let text = std::fs::read_to_string(&secret).expect("CLI secret key");
    let raw = base64_decode(text.lines().nth(1).expect("key line"));
    assert_eq!(
        &raw[2..4],
        if password.is_some() { b"Sc" } else { b"\0\0" },
        "{name}: unexpected KDF field"
    );
    (secret, public)
}

/// `minisign -S` over `file`; the password, if any, is fed on standard input.
fn cli_sign(
    secret: &Path,
    password: Option<&str>,
    file: &Path,
    sig: &Path,
    trusted: &str,
) -> Output {
    let mut cmd = minisign();
    cmd.arg("-S")
        .arg("-s")
        .arg(secret)
        .arg("-m")
        .arg(file)
        .arg("-x")
        .arg(sig)
        .arg("-t")
        .arg(trusted);
    let input = password.map(|p| format!("{p}\n"));
    run_with_input(&mut cmd, input.as_deref().map(str::as_bytes))
}

fn cli_verify(public: &Path, file: &Path, sig: Option<&Path>) -> Output {
    let mut cmd = minisign();
    cmd.arg("-V").arg("-p").arg(public).arg("-m").arg(file);
    if let Some(s) = sig {
        cmd.arg("-x").arg(s);
    }
    run(&mut cmd)
}

fn smoker_verify(public: &Path, bundle: &Path) -> (Output, serde_json::Value) {
    let root = tempfile::tempdir().expect("tempdir");
    let out = run(Command::new(smoker_install())
        .args(["verify", "--json", "--key"])
        .arg(public)
        .arg(bundle)
        .env("SMOKER_ROOT", root.path().join("root")));
    let (stdout, stderr) = (stdout(&out), stderr(&out));
    let v = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("verify --json printed no JSON ({e}): {stdout}{stderr}"));
    (out, v)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn xtask_keygen(dir: &Path, name: &str, password: Option<&str>) -> (PathBuf, PathBuf) {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let mut cmd = Command::new(xtask());
    cmd.arg("keygen")
        .arg("--secret-key")
        .arg(&secret)
        .arg("--public-key")
        .arg(&public)
        .env_remove("SMOKER_KEY_PASSWORD");
    match password {
        Some(p) => cmd.env("SMOKER_KEY_PASSWORD", p),
        None => cmd.arg("--no-password"),
    };
    let out = run(&mut cmd);
    assert_ok("cargo xtask keygen", &out);
    (secret, public)
}

/// A clone of the committed workspace, whose recipes the releases below are built from.
fn project() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let p = t.path().join("project");
    clone_workspace(&p);
    (t, p)
}

fn release_ok(project: &Path, key: &Path, out: &Path, password: Option<&str>) -> Vec<PathBuf> {
    let o = xtask_release(
        project,
        key,
        out,
        "2.0.0",
        password,
        &[
            "--recipe", "device", "--env", "prod", "--arch", "amd64", "--arch", "armv7",
        ],
    );
    assert_ok("cargo xtask release", &o);
    let bundles: Vec<PathBuf> = ["amd64", "armv7"]
        .iter()
        .map(|a| out.join("prod").join(format!("device-2.0.0-{a}.tar.zst")))
        .collect();
    for b in &bundles {
        assert!(b.is_file(), "{} was not written", b.display());
    }
    bundles
}

fn detached(bundle: &Path) -> PathBuf {
    PathBuf::from(format!("{}.minisig", bundle.display()))
}

#[test]
fn minisign_cli_verifies_our_detached_and_manifest_signatures() {
    require_minisign();
    let (tmp, project) = project();
    let (secret, public) = xtask_keygen(tmp.path(), "release", Some(PASSWORD));
    let out = tmp.path().join("out");
    for bundle in release_ok(&project, &secret, &out, Some(PASSWORD)) {
        let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
        let info = smoker_format::bundle::read::inspect_file(&bundle).expect("bundle reads");
        let m = &info.manifest;
        let comment = format!(
            "smoker-release name:device version:2.0.0 arch:{} env:prod manifest-sha256:{}",
            m.arch, info.manifest_sha256
        );

        // The detached whole-file signature.
        let o = run(minisign().arg("-Vm").arg(&bundle).arg("-p").arg(&public));
        assert_ok(&format!("minisign -Vm {name}"), &o);
        let said = stdout(&o);
        assert!(
            said.contains("Signature and comment signature verified"),
            "{said}"
        );
        assert!(
            said.contains(&format!("Trusted comment: {comment} file:{name}")),
            "{name}: trusted comment not printed as expected:\n{said}"
        );

        // The manifest signature inside the bundle, over the manifest inside the bundle.
        let entries = smoker_testkit::bundle::bundle_entries(&bundle);
        let dir = tmp.path().join(format!("extract-{}", m.arch));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = dir.join("manifest.json");
        let sig = dir.join("manifest.json.minisig");
        assert_eq!(entries[0].0, "manifest.json");
        assert_eq!(entries[1].0, "manifest.json.minisig");
        std::fs::write(&manifest, &entries[0].2).unwrap();
        std::fs::write(&sig, &entries[1].2).unwrap();
        let o = cli_verify(&public, &manifest, Some(&sig));
        assert_ok("minisign -V manifest.json", &o);
        assert!(
            stdout(&o).contains(&format!("Trusted comment: {comment}\n")),
            "{}",
            stdout(&o)
        );

        // A one-byte change to the bundle is caught by the CLI.
        let mut bytes = std::fs::read(&bundle).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        let tampered = dir.join(&name);
        std::fs::write(&tampered, &bytes).unwrap();
        let o = cli_verify(&public, &tampered, Some(&detached(&bundle)));
        assert!(
            !o.status.success(),
            "minisign accepted a tampered bundle: {}",
            stdout(&o)
        );
        // So is another key.
        let other = tmp.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        let (_, other_pub) = cli_keygen(&other, &format!("other-{}", m.arch), None);
        let o = cli_verify(&other_pub, &bundle, None);
        assert!(
            !o.status.success(),
            "minisign accepted a signature under the wrong key"
        );
    }
}

#[test]
fn our_verifier_and_installer_accept_signatures_made_by_the_minisign_cli() {
    require_minisign();
    let f = Fixture::new();
    let tmp = tempfile::tempdir().unwrap();
    let (cli_secret, cli_public) = cli_keygen(tmp.path(), "cli", Some(PASSWORD));
    let cli_id = key_id_of(&cli_public);
    let pub_text = std::fs::read_to_string(&cli_public).unwrap();
    // The CLI prints the id as a number (`%PRIX64`: no leading zeros, so one key in sixteen
    // has a 15-digit name); the same number is the same key.
    let cli_named = pub_text
        .lines()
        .next()
        .unwrap()
        .strip_prefix("untrusted comment: minisign public key ")
        .and_then(|id| u64::from_str_radix(id, 16).ok());
    assert_eq!(
        cli_named,
        Some(u64::from_str_radix(&cli_id, 16).expect("our key id is hex")),
        "the CLI names its key {:?}; we compute {cli_id}",
        pub_text.lines().next()
    );

    let manifest_bytes = f.manifest.to_canonical_json();
    let manifest = tmp.path().join("manifest.json");
    std::fs::write(&manifest, &manifest_bytes).unwrap();
    let comment = smoker_build::release::trusted_comment(
        &f.manifest,
        &smoker_format::digest::sha256_hex(&manifest_bytes),
    );
    let sig_path = tmp.path().join("manifest.json.minisig");
    let o = cli_sign(&cli_secret, Some(PASSWORD), &manifest, &sig_path, &comment);
    assert_ok("minisign -S manifest.json", &o);
    let cli_sig = std::fs::read_to_string(&sig_path).unwrap();

    // Our verifier.
    let keys = TrustedKeys::from_file(&cli_public).expect("CLI public key loads");
    let v = keys
        .verify(&manifest_bytes, &cli_sig)
        .expect("a CLI signature verifies");
    assert_eq!(v.key_id, cli_id);
    assert_eq!(v.trusted_comment, comment);
    let mut altered = manifest_bytes.clone();
    altered[10] ^= 0x20;
    let err = keys
        .verify(&altered, &cli_sig)
        .expect_err("altered manifest");
    assert!(
        matches!(
            err,
            smoker_format::signing::SigningError::BadSignature { .. }
        ),
        "{err}"
    );

    // A bundle carrying the CLI-made manifest signature passes the installer's verify.
    let bytes = f.bundle_with_signature(&cli_sig);
    let bundle = tmp.path().join("corpus-1.0.0-amd64.tar.zst");
    std::fs::write(&bundle, bytes).unwrap();
    let (o, v) = smoker_verify(&cli_public, &bundle);
    assert!(o.status.success(), "smoker-install verify refused: {v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["data"]["key_id"], cli_id.as_str());
    // Only the CLI key signed it.
    let (o, v) = smoker_verify(&f.pub_path, &bundle);
    assert!(!o.status.success());
    assert_eq!(v["data"]["reason"], "untrusted-key", "{v}");

    // Ed25519 is deterministic: the CLI signing with our key gives our signature, byte for
    // byte (all but the untrusted comment line).
    let ours = f.sign(&f.manifest);
    let key_file = f.dir.path().join("release.key");
    let cli_with_our_key = tmp.path().join("ours-by-cli.minisig");
    let o = cli_sign(&key_file, None, &manifest, &cli_with_our_key, &comment);
    assert_ok("minisign -S with our unencrypted key", &o);
    let theirs = std::fs::read_to_string(&cli_with_our_key).unwrap();
    assert_eq!(
        theirs.lines().skip(1).collect::<Vec<_>>(),
        ours.lines().skip(1).collect::<Vec<_>>(),
        "the CLI and this crate sign the same manifest differently"
    );
}

#[test]
fn keys_made_by_the_minisign_cli_sign_releases() {
    require_minisign();
    let (tmp, project) = project();
    for (name, password) in [("cli-password", Some(PASSWORD)), ("cli-nopassword", None)] {
        let (secret, public) = cli_keygen(tmp.path(), name, password);
        let id = key_id_of(&public);
        let out = tmp.path().join(format!("out-{name}"));
        for bundle in release_ok(&project, &secret, &out, password) {
            let o = cli_verify(&public, &bundle, None);
            assert_ok(&format!("minisign -Vm {} ({name})", bundle.display()), &o);
            assert!(
                stdout(&o).contains("Trusted comment: smoker-release name:device"),
                "{}",
                stdout(&o)
            );
            let (o, v) = smoker_verify(&public, &bundle);
            assert!(
                o.status.success(),
                "{name}: smoker-install verify refused: {v}"
            );
            assert_eq!(v["ok"], true);
            assert_eq!(v["data"]["key_id"], id.as_str(), "{name}");
        }
    }

    // A password-protected CLI key: a wrong password and no password are refused clearly.
    let secret = tmp.path().join("cli-password.key");
    let o = xtask_release(
        &project,
        &secret,
        &tmp.path().join("out-wrong"),
        "2.0.0",
        Some("not the password"),
        &["--recipe", "device", "--env", "prod", "--arch", "amd64"],
    );
    assert!(!o.status.success(), "a wrong password was accepted");
    assert!(
        stderr(&o).contains("wrong password"),
        "unclear error: {}",
        stderr(&o)
    );
    let o = xtask_release(
        &project,
        &secret,
        &tmp.path().join("out-none"),
        "2.0.0",
        None,
        &["--recipe", "device", "--env", "prod", "--arch", "amd64"],
    );
    assert!(!o.status.success(), "released without the key's password");
    assert!(
        stderr(&o).contains("SMOKER_KEY_PASSWORD"),
        "unclear error: {}",
        stderr(&o)
    );
}

#[test]
fn damaged_unencrypted_cli_key_is_refused() {
    require_minisign();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, _) = cli_keygen(tmp.path(), "plain", None);
    SecretKey::load(&secret, None).expect("an intact -W key loads");
    let text = std::fs::read_to_string(&secret).unwrap();
    let comment = text.lines().next().unwrap();
    let raw = base64_decode(text.lines().nth(1).unwrap());
    // One bit of the seed, then one bit of a (non-zero) checksum.
    for (what, at) in [("seed", 70), ("checksum", 130)] {
        let mut bad = raw.clone();
        bad[at] ^= 0x04;
        let path = tmp.path().join(format!("damaged-{what}.key"));
        std::fs::write(&path, format!("{comment}\n{}\n", base64_encode(&bad))).unwrap();
        let err = match SecretKey::load(&path, None) {
            Ok(_) => panic!("a key with a damaged {what} loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("corrupted"), "{what}: {err}");
    }
}

#[test]
fn minisign_cli_signs_with_keys_made_by_our_keygen() {
    require_minisign();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data.txt");
    std::fs::write(
        &file,
        b"signed by the reference CLI with a key from cargo xtask keygen\n",
    )
    .unwrap();
    for (name, password) in [("ours-password", Some(PASSWORD)), ("ours-nopassword", None)] {
        let (secret, public) = xtask_keygen(tmp.path(), name, password);
        let sig = tmp.path().join(format!("{name}.minisig"));
        let o = cli_sign(&secret, password, &file, &sig, &format!("made with {name}"));
        assert_ok(&format!("minisign -S -s {name}"), &o);
        let o = cli_verify(&public, &file, Some(&sig));
        assert_ok(&format!("minisign -V ({name})"), &o);
        assert!(
            stdout(&o).contains(&format!("Trusted comment: made with {name}")),
            "{}",
            stdout(&o)
        );
        let keys = TrustedKeys::from_file(&public).unwrap();
        let v = keys
            .verify(
                &std::fs::read(&file).unwrap(),
                &std::fs::read_to_string(&sig).unwrap(),
            )
            .expect("our verifier accepts the CLI's signature");
        assert_eq!(v.trusted_comment, format!("made with {name}"));
        assert_eq!(v.key_id, key_id_of(&public));
    }
}

#[test]
fn keygen_refuses_a_secret_key_under_keys_however_the_path_is_spelled() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let outside = tempfile::tempdir().expect("tempdir");
    let public = outside.path().join("k.pub");
    // Relative paths, `.` and `..` climbing back into keys/.
    for (cwd, secret) in [
        (repo.join("xtask"), "../keys/leak.key"),
        (repo.to_path_buf(), "keys/leak.key"),
        (repo.join("keys"), "./leak.key"),
        (repo.join("recipes"), "../recipes/../keys/./leak.key"),
    ] {
        let out = run(Command::new(xtask())
            .current_dir(&cwd)
            .args([
                "keygen",
                "--no-password",
                "--secret-key",
                secret,
                "--public-key",
            ])
            .arg(&public));
        assert!(
            !out.status.success(),
            "keygen wrote {secret} from {}",
            cwd.display()
        );
        assert!(stderr(&out).contains("under keys/"), "{}", stderr(&out));
        assert!(!cwd.join(secret).exists(), "{secret} was written");
        assert!(
            !public.exists(),
            "the public key was written although refused"
        );
    }
}

/// `xtask sign` (release files: SHA256SUMS, the Pi installer, the Debian packages) writes
/// detached signatures the minisign CLI verifies with the public key, with a password-protected
/// key; a file changed after signing is rejected.
#[test]
fn xtask_sign_makes_detached_signatures_the_minisign_cli_verifies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (secret, public) = xtask_keygen(tmp.path(), "release", Some(PASSWORD));
    let sums = tmp.path().join("SHA256SUMS");
    std::fs::write(&sums, "0123  smoker-install-armv7-static\n").expect("write");
    let installer = tmp.path().join("smoker-install-armv7-static");
    std::fs::write(&installer, vec![0x7fu8; 100_000]).expect("write");
    let mut cmd = Command::new(xtask());
    cmd.arg("sign")
        .arg("--secret-key")
        .arg(&secret)
        .arg(&sums)
        .arg(&installer)
        .env("SMOKER_KEY_PASSWORD", PASSWORD);
    assert_ok("cargo xtask sign", &run(&mut cmd));
    for f in [&sums, &installer] {
        let out = cli_verify(&public, f, None);
        assert_ok("minisign -V", &out);
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            stdout(&out).contains(&format!("Trusted comment: file:{name} sha256:")),
            "{}",
            stdout(&out)
        );
    }
    std::fs::write(&installer, vec![0x7eu8; 100_000]).expect("tamper");
    assert!(!cli_verify(&public, &installer, None).status.success());
    // A wrong password signs nothing.
    let mut cmd = Command::new(xtask());
    cmd.arg("sign")
        .arg("--secret-key")
        .arg(&secret)
        .arg(&sums)
        .env("SMOKER_KEY_PASSWORD", "wrong");
    assert!(!run(&mut cmd).status.success());
}
