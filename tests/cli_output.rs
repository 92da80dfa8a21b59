//! `smoker-install`'s output and exit statuses, run as a process, without Docker: the help
//! text with the exit status table, the `--json` envelope of successes and of every failure
//! kind reachable without a container engine, and read-only `status` / `history`.
//!
//! Snapshots (insta, `tests/snapshots/`) have temporary paths, key ids, hashes, times, pids and
//! the host name replaced, so they are the same on every run and machine. Every case asserts
//! its exit status explicitly as well.

use smoker::error::Kind;
use smoker::layout::Layout;
use smoker::profile::{Generation, Profile, Status};
use smoker_format::manifest::{
    Arch, ComposeSpec, FORMAT_VERSION, FileEntry, Health, Image, Manifest, Source,
};
use smoker_format::signing::SecretKey;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A host root, a trusted key and a bundle signed by it.
struct Host {
    dir: tempfile::TempDir,
    public_key: PathBuf,
    key: SecretKey,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, public_key) = new_key(dir.path(), "release");
        Host {
            dir,
            public_key,
            key,
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn layout(&self) -> Layout {
        Layout::new(self.root())
    }

    /// `smoker-install --root <root> --host-config <dir>/host.toml ARGS`, with none of the
    /// caller's smoker or GitHub Actions variables.
    fn run(&self, args: &[&str]) -> Output {
        cli()
            .arg("--root")
            .arg(self.root())
            .arg("--host-config")
            .arg(self.dir.path().join("host.toml"))
            .args(args)
            .output()
            .expect("running smoker-install")
    }

    /// A signed bundle of profile `svc` for this host's architecture.
    fn bundle(&self, version: &str, environment: &str, secrets: &[&str]) -> PathBuf {
        signed_bundle(
            &self.key,
            &self.dir.path().join("bundles"),
            version,
            environment,
            secrets,
        )
    }

    /// Settings that replace everything volatile in output.
    fn settings(&self) -> insta::Settings {
        let mut s = insta::Settings::clone_current();
        s.set_prepend_module_to_snapshot(false);
        s.add_filter(&escape(&self.dir.path().display().to_string()), "[TMP]");
        s.add_filter(&escape(&smoker::sys::hostname()), "[HOST]");
        s.add_filter(r"\b[0-9a-f]{64}\b", "[SHA256]");
        s.add_filter(r"\b[0-9A-F]{16}\b", "[KEY-ID]");
        s.add_filter(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "[TIME]");
        s.add_filter(r"pid \d+", "pid [PID]");
        s.add_filter(r#""pid": \d+"#, r#""pid": "[PID]""#);
        s.add_filter(r#""started": \d+"#, r#""started": "[EPOCH]""#);
        s.add_filter(r"running `[^`]*`", "running `[COMMAND]`");
        s.add_filter(
            r#""command": "[^"]*cli_output[^"]*""#,
            r#""command": "[COMMAND]""#,
        );
        s.add_filter(r"\(\d+s ago\)", "([AGE] ago)");
        s.add_filter(r"\d+ bytes", "[N] bytes");
        s.add_filter(r#""compressed_bytes": \d+"#, r#""compressed_bytes": "[N]""#);
        s
    }
}

/// The binary under test, with a clean environment for its options.
fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_smoker-install"));
    for var in [
        "SMOKER_ROOT",
        "SMOKER_HOST_CONFIG",
        "SMOKER_KEYS",
        "SMOKER_FAULT",
        "SMOKER_COMPOSE",
        "SMOKER_ALLOW_FOREIGN_ARCH",
        "GITHUB_ACTIONS",
    ] {
        c.env_remove(var);
    }
    c
}

/// Escapes a literal for an insta filter (a regex).
fn escape(literal: &str) -> String {
    let mut out = String::new();
    for ch in literal.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(ch) {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn new_key(dir: &Path, name: &str) -> (SecretKey, PathBuf) {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    smoker_format::signing::generate(&secret, &public, None).expect("generating a key pair");
    let key = SecretKey::load(&secret, None).expect("loading the secret key");
    (key, public)
}

/// A small signed bundle of profile `svc` (one service pinned to a made-up digest), written as
/// the release builder writes one.
fn signed_bundle(
    key: &SecretKey,
    out: &Path,
    version: &str,
    environment: &str,
    secrets: &[&str],
) -> PathBuf {
    signed_bundle_with(key, out, version, environment, secrets, &Default::default())
}

/// [`signed_bundle`] whose manifest declares `host_access`.
fn signed_bundle_with(
    key: &SecretKey,
    out: &Path,
    version: &str,
    environment: &str,
    secrets: &[&str],
    host_access: &std::collections::BTreeMap<String, smoker_format::host_access::HostAccess>,
) -> PathBuf {
    let env_path = format!("config/{environment}.env");
    let digest = format!("sha256:{}", "ab".repeat(32));
    let raw: Vec<(String, Vec<u8>)> = vec![
        (env_path.clone(), b"MODE=test\n".to_vec()),
        (
            "generated/pin.compose.yaml".into(),
            format!("services:\n  app:\n    image: registry.example/app@{digest}\n").into_bytes(),
        ),
        (
            "stack/compose.yaml".into(),
            b"services:\n  app:\n    image: registry.example/app:1.0\n".to_vec(),
        ),
    ];
    let files: Vec<(FileEntry, Vec<u8>)> = raw
        .into_iter()
        .map(|(path, bytes)| {
            (
                FileEntry {
                    path,
                    size: bytes.len() as u64,
                    sha256: smoker_format::digest::sha256_hex(&bytes),
                    mode: 0o644,
                },
                bytes,
            )
        })
        .collect();
    let manifest = Manifest {
        format: FORMAT_VERSION,
        name: "svc".into(),
        version: version.into(),
        arch: Arch::host().expect("a supported host architecture"),
        environment: environment.into(),
        source: Source {
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            dirty: false,
            recipe_dir: "recipes/svc".into(),
        },
        created: 1_700_000_000,
        min_installer_version: "0.1.0".into(),
        compose: ComposeSpec {
            files: vec![
                "stack/compose.yaml".into(),
                "generated/pin.compose.yaml".into(),
            ],
            project_directory: "stack".into(),
            env_file: Some(env_path),
        },
        images: vec![Image {
            service: "app".into(),
            original: "registry.example/app:1.0".into(),
            repository: "registry.example/app".into(),
            digest,
            index_digest: None,
            config_digest: Some(format!("sha256:{}", "cd".repeat(32))),
            archive: None,
        }],
        migrations: vec![],
        migration_runner: None,
        health: Health {
            window_secs: 5,
            failures: 1,
            successes: 1,
            interval_ms: 100,
            http: vec![],
            connect_grace_ms: None,
        },
        backup: None,
        required_secrets: secrets.iter().map(|s| s.to_string()).collect(),
        files: files.iter().map(|(e, _)| e.clone()).collect(),
        host_access: host_access.clone(),
        requires: Default::default(),
    };
    manifest.validate().expect("a valid manifest");
    let json = manifest.to_canonical_json();
    let comment = smoker_build::release::trusted_comment(
        &manifest,
        &smoker_format::digest::sha256_hex(json.as_slice()),
    );
    let sig = key.sign(json.as_slice(), &comment).expect("signing");
    let payload: Vec<_> = files
        .into_iter()
        .map(|(e, b)| (e, smoker_format::bundle::write::Payload::Bytes(b)))
        .collect();
    let bytes = smoker_format::bundle::write::write_bundle(Vec::new(), &manifest, &sig, &payload)
        .expect("write_bundle");
    std::fs::create_dir_all(out).expect("mkdir");
    let path = out.join(format!("{}.tar.zst", manifest.stem()));
    std::fs::write(&path, bytes).expect("writing the bundle");
    path
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit status, which must be the one of `kind` (0 for `None`).
#[track_caller]
fn assert_exit(o: &Output, kind: Option<Kind>) {
    assert_eq!(
        o.status.code(),
        Some(kind.map_or(0, |k| i32::from(k.exit_code()))),
        "expected {}\nstdout:\n{}\nstderr:\n{}",
        kind.map_or("success", Kind::as_str),
        stdout(o),
        stderr(o)
    );
}

/// stdout as one envelope, checked against the exit status.
#[track_caller]
fn envelope(o: &Output) -> smoker::envelope::Envelope {
    let e: smoker::envelope::Envelope = serde_json::from_slice(&o.stdout).unwrap_or_else(|err| {
        panic!(
            "stdout is not one JSON envelope ({err}):\n{}\nstderr:\n{}",
            stdout(o),
            stderr(o)
        )
    });
    assert_eq!(o.status.code(), Some(i32::from(e.exit_code)), "{e:?}");
    assert_eq!(e.ok, e.exit_code == 0, "{e:?}");
    assert_eq!(e.kind.map(Kind::exit_code), (!e.ok).then_some(e.exit_code));
    e
}

#[test]
fn help_documents_the_exit_statuses() {
    let out = cli().arg("--help").output().expect("run");
    assert_exit(&out, None);
    Host::new()
        .settings()
        .bind(|| insta::assert_snapshot!("help", stdout(&out)));
    for k in Kind::ALL {
        assert!(stdout(&out).contains(k.as_str()), "{k} missing from --help");
    }
    // Every subcommand's help ends with the same table.
    let apply = cli().args(["apply", "--help"]).output().expect("run");
    assert_exit(&apply, None);
    assert!(
        stdout(&apply).contains(&smoker::error::exit_status_table()),
        "{}",
        stdout(&apply)
    );
}

#[test]
fn usage_errors_exit_2_with_an_envelope_under_json() {
    let host = Host::new();
    host.settings().bind(|| {
        let out = host.run(&["status", "--bogus"]);
        assert_exit(&out, Some(Kind::Usage));
        assert!(out.stdout.is_empty());
        insta::assert_snapshot!("usage_text", stderr(&out));

        let out = host.run(&["status", "--bogus", "--json"]);
        let e = envelope(&out);
        assert_eq!(e.kind, Some(Kind::Usage));
        insta::assert_snapshot!("usage_json", stdout(&out));

        // A bundle or --usb is required.
        let out = host.run(&["apply", "--json"]);
        let e = envelope(&out);
        assert_eq!(e.kind, Some(Kind::Usage));
        assert_eq!(e.command.as_deref(), Some("apply"));
        assert!(
            e.message.is_some_and(|m| m.starts_with("no bundle given")),
            "{}",
            stdout(&out)
        );
    });
}

#[test]
fn verify_of_a_good_bundle() {
    let host = Host::new();
    let bundle = host.bundle("1.0.0", "dev", &[]);
    let key = host.public_key.display().to_string();
    let b = bundle.display().to_string();
    host.settings().bind(|| {
        let out = host.run(&["verify", "--key", &key, &b]);
        assert_exit(&out, None);
        insta::assert_snapshot!("verify_ok_text", stdout(&out));

        let out = host.run(&["verify", "--json", "--key", &key, &b]);
        let e = envelope(&out);
        assert!(e.ok);
        assert_eq!(e.data["version"], "1.0.0");
        insta::assert_snapshot!("verify_ok_json", stdout(&out));
    });
    assert!(!host.root().exists(), "verify wrote under the root");
}

#[test]
fn verify_of_a_rejected_bundle_is_kind_verify() {
    let host = Host::new();
    let bundle = host.bundle("1.0.0", "dev", &[]);
    let b = bundle.display().to_string();
    // Signed by a key this host does not trust.
    let (_, other) = new_key(host.dir.path(), "other");
    let other = other.display().to_string();
    host.settings().bind(|| {
        let out = host.run(&["verify", "--key", &other, &b]);
        assert_exit(&out, Some(Kind::Verify));
        assert!(out.stdout.is_empty());
        insta::assert_snapshot!("verify_untrusted_text", stderr(&out));

        let out = host.run(&["verify", "--json", "--key", &other, &b]);
        let e = envelope(&out);
        assert_eq!(e.kind, Some(Kind::Verify));
        assert_eq!(e.data["reason"], "untrusted-key");
        insta::assert_snapshot!("verify_untrusted_json", stdout(&out));
    });

    // A truncated copy: the specific reason is in `data.reason`, the kind is `verify`.
    let key = host.public_key.display().to_string();
    let bytes = std::fs::read(&bundle).expect("read");
    let cut = host.dir.path().join("cut.tar.zst");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = host.run(&[
        "verify",
        "--json",
        "--key",
        &key,
        &cut.display().to_string(),
    ]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Verify), "{e:?}");
    assert_eq!(e.exit_code, 3);
    assert!(e.data["reason"].is_string(), "{e:?}");

    // A bundle that cannot be read at all is `io`, not a verdict on a bundle.
    let missing = host.dir.path().join("missing.tar.zst");
    let out = host.run(&[
        "verify",
        "--json",
        "--key",
        &key,
        &missing.display().to_string(),
    ]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Io), "{e:?}");
    assert_eq!(e.exit_code, 1);
}

#[test]
fn apply_of_another_environment_is_refused_by_policy() {
    let host = Host::new();
    std::fs::write(
        host.dir.path().join("host.toml"),
        "environment = \"prod\"\n",
    )
    .expect("host config");
    let bundle = host.bundle("1.0.0", "dev", &[]).display().to_string();
    let key = host.public_key.display().to_string();
    host.settings().bind(|| {
        let out = host.run(&["apply", "--key", &key, &bundle]);
        assert_exit(&out, Some(Kind::Policy));
        insta::assert_snapshot!(
            "apply_policy_text",
            stderr(&out)
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect::<Vec<_>>()
                .join("\n")
        );

        let out = host.run(&["apply", "--json", "--key", &key, &bundle]);
        let e = envelope(&out);
        assert_eq!(e.kind, Some(Kind::Policy));
        insta::assert_snapshot!("apply_policy_json", stdout(&out));
    });
    assert!(
        host.layout().profile_names().is_empty(),
        "a refused apply created a profile"
    );
}

#[test]
fn preflight_problems_are_kind_preflight() {
    let host = Host::new();
    let bundle = host
        .bundle("1.0.0", "dev", &["TEST_SECRET"])
        .display()
        .to_string();
    let env_file = host.dir.path().join("empty.env");
    std::fs::write(&env_file, "").expect("env file");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let out = host.run(&[
        "preflight",
        "--json",
        "--key",
        &host.public_key.display().to_string(),
        "--env-file",
        &env_file.display().to_string(),
        &bundle,
    ]);
    // Which checks run depends on whether Docker answers; the missing variable fails either way.
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Preflight), "{e:?}");
    assert_eq!(e.exit_code, 5);
    let checks = e.data["checks"].as_array().expect("checks");
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "variables" && c["ok"] == false),
        "{e:?}"
    );
    assert!(
        e.message
            .as_deref()
            .is_some_and(|m| m.contains("TEST_SECRET")),
        "{e:?}"
    );
}

#[test]
fn status_and_history_of_an_empty_root() {
    let host = Host::new();
    host.settings().bind(|| {
        for cmd in ["status", "history"] {
            let out = host.run(&[cmd]);
            assert_exit(&out, None);
            insta::assert_snapshot!(format!("{cmd}_empty_text"), stdout(&out));
            let out = host.run(&[cmd, "--json"]);
            let e = envelope(&out);
            assert!(e.ok);
            insta::assert_snapshot!(format!("{cmd}_empty_json"), stdout(&out));
        }
        // Commands that need a profile say there is none: `state`.
        let out = host.run(&["backups", "--json"]);
        assert_eq!(envelope(&out).kind, Some(Kind::State));
        insta::assert_snapshot!("backups_no_profile_json", stdout(&out));
        let out = host.run(&["status", "--profile", "nope", "--json"]);
        assert_eq!(envelope(&out).kind, Some(Kind::State));
        // Nothing to recover; the audit log is empty and intact.
        let out = host.run(&["recover", "--json"]);
        assert!(envelope(&out).ok);
        let out = host.run(&["audit", "verify", "--json"]);
        let e = envelope(&out);
        assert_eq!(e.data["entries"], 0);
        insta::assert_snapshot!("audit_empty_json", stdout(&out));
    });
    assert!(!host.root().exists(), "read-only commands created the root");
}

#[test]
fn an_edited_audit_log_is_kind_state() {
    let host = Host::new();
    std::fs::create_dir_all(host.root()).expect("root");
    std::fs::write(host.root().join("audit.log"), "not json\n").expect("log");
    host.settings().bind(|| {
        let out = host.run(&["audit", "verify"]);
        assert_exit(&out, Some(Kind::State));
        insta::assert_snapshot!("audit_edited_text", stderr(&out));
        let out = host.run(&["audit", "verify", "--json"]);
        assert_eq!(envelope(&out).kind, Some(Kind::State));
        insta::assert_snapshot!("audit_edited_json", stdout(&out));
    });
}

/// Profile `svc` with generation 1 good and generation 2 `pending` and current: what an apply
/// interrupted between the switch and its health gate leaves behind.
fn interrupted_profile(host: &Host) -> Layout {
    let layout = host.layout();
    let generation = |number: u32, status: Status, store: &str| Generation {
        number,
        store: store.into(),
        version: format!("{number}.0.0"),
        arch: "amd64".into(),
        environment: "dev".into(),
        bundle_sha256: format!("{number}").repeat(64),
        manifest_sha256: format!("{}", number + 2).repeat(64),
        status,
        installed_at: format!("2026-01-0{number}T10:00:00Z"),
        decided_at: (status != Status::Pending).then(|| format!("2026-01-0{number}T10:01:00Z")),
        reason: None,
        inputs: Vec::new(),
    };
    let mut p = Profile::open_or_create(&layout, "svc", "smoker-svc").expect("profile");
    for (n, status) in [(1, Status::Good), (2, Status::Pending)] {
        let store = format!("{n:032}-svc-{n}.0.0-amd64");
        std::fs::create_dir_all(layout.store().join(&store)).expect("store entry");
        p.add_pending(generation(n, Status::Pending, &store))
            .expect("add");
        p.switch(n).expect("switch");
        if status == Status::Good {
            p.decide(n, Status::Good, None).expect("decide");
            if let Some(g) = p.generation_mut(n) {
                g.decided_at = Some("2026-01-01T10:01:00Z".into());
            }
            p.save().expect("save");
        }
    }
    layout
}

#[test]
fn status_reports_an_interrupted_generation_and_changes_nothing() {
    let host = Host::new();
    let layout = interrupted_profile(&host);
    let state = layout.profile("svc").join("state.json");
    let before = std::fs::read(&state).expect("state");
    let listing = |root: &Path| -> Vec<String> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("readdir") {
                let p = e.expect("entry").path();
                v.push(p.display().to_string());
                if p.is_dir() && !p.is_symlink() {
                    stack.push(p);
                }
            }
        }
        v.sort();
        v
    };
    let tree = listing(&host.root());
    host.settings().bind(|| {
        for cmd in ["status", "history"] {
            let out = host.run(&[cmd]);
            assert_exit(&out, None);
            assert!(
                stdout(&out).contains(
                    "generation 2 pending since 2026-01-02T10:00:00Z: an apply or rollback was interrupted"
                ) && stdout(&out).contains("run `smoker-install recover`"),
                "{}",
                stdout(&out)
            );
            insta::assert_snapshot!(format!("{cmd}_interrupted_text"), stdout(&out));
            let out = host.run(&[cmd, "--json"]);
            let e = envelope(&out);
            assert!(e.ok);
            let p = &e.data["profiles"][0];
            assert_eq!(p["current"], 2);
            assert_eq!(p["unfinished"][0]["generation"], 2);
            assert_eq!(p["unfinished"][0]["in_progress"], false);
            insta::assert_snapshot!(format!("{cmd}_interrupted_json"), stdout(&out));
        }
    });
    assert_eq!(
        std::fs::read(&state).expect("state"),
        before,
        "status changed state.json"
    );
    assert_eq!(
        listing(&host.root()),
        tree,
        "status created or removed files"
    );
    let p = Profile::open(&layout, "svc")
        .expect("open")
        .expect("profile");
    assert_eq!(p.current(), Some(2));
    assert_eq!(
        p.generation(2).map(|g| g.status),
        Some(Status::Pending),
        "status must not recover"
    );
}

#[test]
fn a_held_lock_is_kind_locked_and_status_names_the_holder() {
    let host = Host::new();
    let layout = interrupted_profile(&host);
    let bundle = host.bundle("3.0.0", "dev", &[]).display().to_string();
    let key = host.public_key.display().to_string();
    let _lock = smoker::hostlock::acquire(&layout, "svc", false).expect("lock");
    let state = std::fs::read(layout.profile("svc").join("state.json")).expect("state");
    host.settings().bind(|| {
        let out = host.run(&["apply", "--key", &key, &bundle]);
        assert_exit(&out, Some(Kind::Locked));
        insta::assert_snapshot!(
            "apply_locked_text",
            stderr(&out)
                .lines()
                .filter(|l| l.starts_with("error:"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let out = host.run(&["apply", "--json", "--key", &key, &bundle]);
        assert_eq!(envelope(&out).kind, Some(Kind::Locked));
        insta::assert_snapshot!("apply_locked_json", stdout(&out));

        for args in [
            &["rollback", "--json"][..],
            &["recover", "--json"],
            &["unlock", "--json"],
            &["backup", "--json"],
        ] {
            let out = host.run(args);
            let e = envelope(&out);
            assert_eq!(e.kind, Some(Kind::Locked), "{args:?}: {e:?}");
            assert_eq!(e.exit_code, 6, "{args:?}");
        }

        // status does not wait: it says who holds the lock, and that the pending generation
        // is being worked on.
        let out = host.run(&["status"]);
        assert_exit(&out, None);
        assert!(stdout(&out).contains("locked by pid"), "{}", stdout(&out));
        insta::assert_snapshot!("status_locked_text", stdout(&out));
        let out = host.run(&["status", "--json"]);
        let e = envelope(&out);
        let p = &e.data["profiles"][0];
        assert_eq!(p["locked"], true);
        assert_eq!(p["holder"]["pid"], std::process::id());
        assert_eq!(p["unfinished"][0]["in_progress"], true);
        insta::assert_snapshot!("status_locked_json", stdout(&out));
    });
    assert_eq!(
        std::fs::read(layout.profile("svc").join("state.json")).expect("state"),
        state
    );
}

#[test]
fn several_profiles_need_profile_which_is_a_usage_error() {
    let host = Host::new();
    let layout = host.layout();
    for name in ["a", "b"] {
        Profile::open_or_create(&layout, name, &format!("smoker-{name}")).expect("profile");
    }
    host.settings().bind(|| {
        let out = host.run(&["backups"]);
        assert_exit(&out, Some(Kind::Usage));
        insta::assert_snapshot!("several_profiles_text", stderr(&out));
    });
}

#[test]
fn recover_marks_a_generation_that_never_became_current_failed() {
    let host = Host::new();
    let layout = host.layout();
    let mut p = Profile::open_or_create(&layout, "svc", "smoker-svc").expect("profile");
    for n in [1, 2] {
        let store = format!("{n:032}-svc-{n}.0.0-amd64");
        std::fs::create_dir_all(layout.store().join(&store)).expect("store entry");
        p.add_pending(Generation {
            number: n,
            store,
            version: format!("{n}.0.0"),
            arch: "amd64".into(),
            environment: "dev".into(),
            bundle_sha256: "0".repeat(64),
            manifest_sha256: format!("{n}").repeat(64),
            status: Status::Pending,
            installed_at: format!("2026-01-0{n}T10:00:00Z"),
            decided_at: None,
            reason: None,
            inputs: Vec::new(),
        })
        .expect("add");
        if n == 1 {
            p.switch(1).expect("switch");
            p.decide(1, Status::Good, None).expect("decide");
        }
    }
    host.settings().bind(|| {
        // Before: status reports it, changing nothing.
        let out = host.run(&["status"]);
        assert_exit(&out, None);
        assert!(
            stdout(&out).contains("an apply was interrupted before it switched to it"),
            "{}",
            stdout(&out)
        );
        // recover finishes it without Docker: the generation is marked failed.
        let out = host.run(&["recover", "--json"]);
        let e = envelope(&out);
        assert!(e.ok, "{e:?}");
        assert_eq!(e.data["profiles"][0]["result"], "marked-failed");
        insta::assert_snapshot!("recover_marked_failed_json", stdout(&out));
    });
    let p = Profile::open(&layout, "svc")
        .expect("open")
        .expect("profile");
    assert_eq!(p.generation(2).map(|g| g.status), Some(Status::Failed));
    assert_eq!(p.current(), Some(1));
}

#[test]
fn preflight_refuses_a_downgrade_as_apply_does() {
    let host = Host::new();
    let layout = host.layout();
    let store = format!("{:032}-svc-2.0.0-amd64", 2);
    std::fs::create_dir_all(layout.store().join(&store)).expect("store entry");
    let mut p = Profile::open_or_create(&layout, "svc", "smoker-svc").expect("profile");
    p.add_pending(Generation {
        number: 1,
        store,
        version: "2.0.0".into(),
        arch: "amd64".into(),
        environment: "dev".into(),
        bundle_sha256: "1".repeat(64),
        manifest_sha256: "2".repeat(64),
        status: Status::Pending,
        installed_at: "2026-01-01T10:00:00Z".into(),
        decided_at: None,
        reason: None,
        inputs: Vec::new(),
    })
    .expect("add");
    p.switch(1).expect("switch");
    p.decide(1, Status::Good, None).expect("decide");
    let bundle = host.bundle("1.0.0", "dev", &[]).display().to_string();
    let key = host.public_key.display().to_string();
    let downgrade = |e: &smoker::envelope::Envelope| {
        e.data["checks"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "downgrade").cloned())
            .unwrap_or_else(|| panic!("no downgrade check in {e:?}"))
    };
    let out = host.run(&["preflight", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Preflight), "{e:?}");
    let d = downgrade(&e);
    assert_eq!(d["ok"], false, "{e:?}");
    assert!(
        d["detail"]
            .as_str()
            .is_some_and(|s| s.contains("1.0.0 is older than the newest good generation (2.0.0)")),
        "{e:?}"
    );
    // Nothing was stored or left staged by the check.
    let staged = std::fs::read_dir(layout.staging())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(staged, 0, "preflight left files in staging");
    let out = host.run(&[
        "preflight",
        "--json",
        "--allow-downgrade",
        "--key",
        &key,
        &bundle,
    ]);
    let e = envelope(&out);
    assert_eq!(downgrade(&e)["ok"], true, "{e:?}");
}

#[test]
fn a_caller_elevated_by_sudo_cannot_choose_keys_root_or_exceptions() {
    let host = Host::new();
    let bundle = host.bundle("1.0.0", "dev", &[]).display().to_string();
    let key = host.public_key.display().to_string();
    // What sudo puts in the environment of a command a user runs through it.
    let out = cli()
        .env("SUDO_UID", "1000")
        .env("SUDO_USER", "deploy")
        .env("SUDO_COMMAND", "/usr/bin/smoker-install")
        .args([
            "--json",
            "apply",
            "--key",
            &key,
            "--allow-downgrade",
            "--environment",
            "dev",
            &bundle,
        ])
        .arg("--root")
        .arg(host.root())
        .output()
        .expect("run");
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    assert_exit(&out, Some(Kind::Policy));
    let msg = e.message.unwrap_or_default();
    for needle in [
        "caller (deploy)",
        "--key/--keys/SMOKER_KEYS",
        "--allow-downgrade",
        "--environment",
        "--root/SMOKER_ROOT",
    ] {
        assert!(msg.contains(needle), "`{needle}` not in: {msg}");
    }
    // Nothing was written under the root it named.
    assert!(!host.root().join("store").exists());
    // The same as root itself is not refused for those reasons.
    let out = host.run(&["--json", "verify", "--key", &key, &bundle]);
    assert_exit(&out, None);
}

#[test]
fn a_host_root_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let host = Host::new();
    std::fs::create_dir_all(host.root()).expect("mkdir");
    std::fs::set_permissions(host.root(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = host.run(&["--json", "status"]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    assert!(
        e.message
            .as_deref()
            .is_some_and(|m| m.contains("chmod go-w")),
        "{e:?}"
    );
}

#[test]
fn verify_store_names_each_damaged_entry_and_its_files() {
    use std::os::unix::fs::PermissionsExt as _;
    let host = Host::new();
    let layout = host.layout();
    let keys = smoker_format::signing::TrustedKeys::from_file(&host.public_key).expect("keys");
    let mut entries = Vec::new();
    for version in ["1.0.0", "2.0.0"] {
        let f = std::fs::File::open(host.bundle(version, "dev", &[])).expect("bundle");
        let entry = smoker::store::stage(&layout, f, &keys)
            .expect("stage")
            .commit(&layout)
            .expect("commit");
        entries.push(entry);
    }
    let key = host.public_key.display().to_string();
    let out = host.run(&["verify", "--store", "--key", &key]);
    assert_exit(&out, None);
    assert_eq!(stdout(&out).matches("OK ").count(), 2, "{}", stdout(&out));

    let file = entries[0].path.join("stack/compose.yaml");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::write(&file, "services:\n  app:\n    image: evil\n").expect("tamper");
    let out = host.run(&["verify", "--store", "--key", &key]);
    assert_exit(&out, Some(Kind::State));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "DAMAGED {}: stack/compose.yaml does not match its hash",
            entries[0].name
        )),
        "{text}"
    );
    assert!(text.contains(&format!("OK {}", entries[1].name)), "{text}");
    assert!(stderr(&out).contains(&entries[0].name), "{}", stderr(&out));
    let out = host.run(&["verify", "--store", "--json", "--key", &key]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::State));
    assert_eq!(e.data["damaged"], serde_json::json!([entries[0].name]));
}

#[test]
fn usb_log_replaces_a_link_on_the_stick_and_leaves_its_target_alone() {
    use std::io::Write as _;
    let host = Host::new();
    let stick = host.dir.path().join("stick");
    std::fs::create_dir(&stick).expect("stick");
    let victim = host.dir.path().join("shadow");
    std::fs::write(&victim, "root:x\n").expect("victim");
    std::os::unix::fs::symlink(&victim, stick.join("smoker-install.log")).expect("link");
    let mut child = cli()
        .arg("--root")
        .arg(host.root())
        .args(["usb-log"])
        .arg(&stick)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"smoker-usb@sda1 finished: result=success exit=0\n")
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert_exit(&out, None);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "root:x\n"
    );
    let log = stick.join("smoker-install.log");
    assert!(std::fs::symlink_metadata(&log).expect("log").is_file());
    assert_eq!(
        std::fs::read_to_string(&log).expect("log"),
        "smoker-usb@sda1 finished: result=success exit=0\n"
    );
}

/// A bundle whose service `ui` is privileged and mounts the Docker socket and a data path.
fn privileged_bundle(host: &Host, environment: &str) -> String {
    let mut access = std::collections::BTreeMap::new();
    access.insert(
        "ui".to_string(),
        smoker_format::host_access::HostAccess {
            privileged: true,
            bind_mounts: vec!["/srv/data".into(), "/var/run/docker.sock".into()],
            ..Default::default()
        },
    );
    signed_bundle_with(
        &host.key,
        &host.dir.path().join("bundles"),
        "1.0.0",
        environment,
        &[],
        &access,
    )
    .display()
    .to_string()
}

fn check<'a>(e: &'a smoker::envelope::Envelope, name: &str) -> &'a serde_json::Value {
    e.data["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no `{name}` check in {e:?}"))
}

#[test]
fn host_access_beyond_the_policy_is_refused_and_policy_suggest_prints_the_allowance() {
    let host = Host::new();
    let config = host.dir.path().join("host.toml");
    std::fs::write(&config, "environment = \"dev\"\n").expect("host config");
    let bundle = privileged_bundle(&host, "dev");
    let key = host.public_key.display().to_string();

    let out = host.run(&["apply", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    let msg = e.message.clone().unwrap_or_default();
    for want in [
        "service `ui` asks for privileged mode",
        "`privileged = true`",
        "service `ui` asks for the Docker socket (bind mount of `/var/run/docker.sock`)",
        "`docker_socket = true`",
        "`bind_mounts = [\"/srv/data\"]`",
        "`[policy.svc]`",
        "policy suggest",
    ] {
        assert!(msg.contains(want), "missing {want}: {msg}");
    }
    assert!(
        host.layout().profile_names().is_empty(),
        "a refused apply created a profile"
    );
    let stored = std::fs::read_dir(host.root().join("store"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "a refused bundle reached the store");

    // Preflight says the same, as one failed check.
    let out = host.run(&["preflight", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(check(&e, "host access")["ok"], false, "{e:?}");

    // `policy suggest` verifies, changes nothing, and prints the table for exactly this bundle.
    let out = host.run(&["policy", "suggest", "--key", &key, &bundle]);
    assert_exit(&out, None);
    let text = stdout(&out);
    let out = host.run(&["policy", "suggest", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.command.as_deref(), Some("policy suggest"));
    let policy = e.data["policy"].as_str().expect("policy text").to_string();
    assert_eq!(policy, text);
    assert!(policy.contains("[policy.svc]"), "{policy}");
    assert!(policy.contains("privileged = true  # ui"), "{policy}");
    assert!(policy.contains("docker_socket = true  # ui"), "{policy}");
    assert!(
        policy.contains("bind_mounts = [\"/srv/data\"]  # ui"),
        "{policy}"
    );
    assert_eq!(e.data["host_access"]["ui"]["privileged"], true);

    // With the suggested table in the host config, the policy check passes.
    std::fs::write(&config, format!("environment = \"dev\"\n{policy}")).expect("host config");
    let out = host.run(&["preflight", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(check(&e, "host access")["ok"], true, "{e:?}");

    // A policy without the socket's own allowance still refuses it, though `/var/run` is
    // allowed as a bind mount.
    std::fs::write(
        &config,
        "environment = \"dev\"\n[policy.svc]\nprivileged = true\nbind_mounts = [\"/srv/data\", \"/var/run\"]\n",
    )
    .expect("host config");
    let out = host.run(&["apply", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    let msg = e.message.unwrap_or_default();
    assert!(msg.contains("docker_socket = true"), "{msg}");
    assert!(!msg.contains("privileged = true"), "{msg}");
}

#[test]
fn a_key_scoped_to_dev_cannot_install_prod() {
    let host = Host::new();
    std::fs::write(
        host.dir.path().join("host.toml"),
        "environment = \"prod\"\n",
    )
    .expect("host config");
    // The host's key lies under keys/dev/: it signs environment dev only.
    let keys = host.dir.path().join("keys");
    std::fs::create_dir_all(keys.join("dev")).expect("mkdir");
    std::fs::copy(&host.public_key, keys.join("dev/ci.pub")).expect("copy key");
    let keys_arg = keys.display().to_string();
    let bundle = host.bundle("1.0.0", "prod", &[]).display().to_string();
    let key_id = host.key.key_id();

    let out = host.run(&["apply", "--json", "--keys", &keys_arg, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    let msg = e.message.unwrap_or_default();
    assert!(msg.contains(&format!("signed by key {key_id}")), "{msg}");
    assert!(msg.contains("trusts only for environment `dev`"), "{msg}");
    assert!(msg.contains("environment `prod`, profile `svc`"), "{msg}");
    assert!(host.layout().profile_names().is_empty());

    let out = host.run(&["preflight", "--json", "--keys", &keys_arg, &bundle]);
    let e = envelope(&out);
    assert_eq!(check(&e, "key scope")["ok"], false, "{e:?}");

    // The same key directly in the keys directory signs anything (as before scopes).
    std::fs::copy(&host.public_key, keys.join("release.pub")).expect("copy key");
    let out = host.run(&["preflight", "--json", "--keys", &keys_arg, &bundle]);
    let e = envelope(&out);
    assert_eq!(check(&e, "key scope")["ok"], true, "{e:?}");
}

#[test]
fn a_first_install_on_a_host_without_environment_needs_an_explicit_choice() {
    let host = Host::new();
    let bundle = host.bundle("1.0.0", "dev", &[]).display().to_string();
    let key = host.public_key.display().to_string();
    let out = host.run(&["apply", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    let msg = e.message.unwrap_or_default();
    assert!(msg.contains("this host has no environment yet"), "{msg}");
    assert!(msg.contains("`environment = \"dev\"` in "), "{msg}");
    assert!(msg.contains("`--environment dev`"), "{msg}");
    assert!(host.layout().profile_names().is_empty());

    // Preflight fails the environment check the same way, and passes it with the choice.
    let out = host.run(&["preflight", "--json", "--key", &key, &bundle]);
    let e = envelope(&out);
    assert_eq!(check(&e, "environment")["ok"], false, "{e:?}");
    let out = host.run(&[
        "preflight",
        "--json",
        "--environment",
        "dev",
        "--key",
        &key,
        &bundle,
    ]);
    let e = envelope(&out);
    assert_eq!(check(&e, "environment")["ok"], true, "{e:?}");

    // With the choice, apply gets past the policy (what follows needs Docker).
    let out = host.run(&[
        "apply",
        "--json",
        "--environment",
        "dev",
        "--key",
        &key,
        &bundle,
    ]);
    let e = envelope(&out);
    assert_ne!(e.kind, Some(Kind::Policy), "{e:?}");

    // A declared environment is not overridden from the command line.
    std::fs::write(
        host.dir.path().join("host.toml"),
        "environment = \"prod\"\n",
    )
    .expect("host config");
    let out = host.run(&[
        "apply",
        "--json",
        "--environment",
        "dev",
        "--key",
        &key,
        &bundle,
    ]);
    let e = envelope(&out);
    assert_eq!(e.kind, Some(Kind::Policy), "{e:?}");
    assert!(
        e.message
            .unwrap_or_default()
            .contains("--environment dev contradicts"),
        "{out:?}"
    );
}
