//! Data safety on the real engine: backups before migrations, a failing migration restoring
//! the data and the previous generation, rollback across migrations with `--restore-data`,
//! backup retention, environments, preflight and deploy notifications.

use smoker_testkit::images::version_at;
use smoker_testkit::per_frontend;
use smoker_testkit::project::SVC;
use smoker_testkit::{Project, Testbed, http, sha256_hex, text};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn records_hash(port: u16) -> String {
    let r =
        http::get(&format!("http://127.0.0.1:{port}/records/sha256")).expect("GET /records/sha256");
    assert_eq!(r.status, 200);
    r.text().trim().to_string()
}

fn records(port: u16) -> String {
    http::get(&format!("http://127.0.0.1:{port}/records"))
        .expect("GET /records")
        .text()
}

fn post(port: u16, line: &str) {
    let r = http::post(&format!("http://127.0.0.1:{port}/records"), line.as_bytes()).expect("POST");
    assert!(
        r.status == 200 || r.status == 201,
        "POST answered {}",
        r.status
    );
}

fn migrations_backups_and_rollback_across_them_keep_the_data_exact(frontend: &str) {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let v2 = project.release_stateful("2.0.0", port, &[("0002-upper.txt", "uppercase\n")]);
    let v3 = project.release_stateful(
        "3.0.0",
        port,
        &[
            ("0002-upper.txt", "uppercase\n"),
            ("0003-broken.txt", "append half\nfail\n"),
        ],
    );
    let host = bed.host(Some(frontend));

    // v1 with data.
    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    post(port, "alpha");
    post(port, "beta");
    let h1 = records_hash(port);
    assert_eq!(h1, sha256_hex(b"alpha\nbeta\n"));

    // v2: backup of v1's data, then the migration transforms it.
    let out = host.apply(&project, &v2);
    assert!(out.status.success(), "apply v2: {}", text(&out));
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(records(port), "ALPHA\nBETA\n");
    post(port, "gamma");
    let h2 = records_hash(port);
    let backups = host.run(&["backups", "--json"]);
    let idx: serde_json::Value = serde_json::from_slice(&backups.stdout).expect("backups json");
    let list = idx["data"]["backups"].as_array().expect("list");
    assert_eq!(list.len(), 1, "{idx}");
    assert_eq!(list[0]["generation"], 1);
    assert_eq!(
        list[0]["sha256"],
        sha256_hex(b"alpha\nbeta\n"),
        "the backup holds v1's data"
    );
    let ledger: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            host.root()
                .join("profiles")
                .join(SVC)
                .join("migrations.json"),
        )
        .expect("ledger"),
    )
    .expect("ledger json");
    assert_eq!(ledger["applied"][0]["id"], "0002-upper");
    assert_eq!(ledger["applied"][0]["generation"], 2);

    // v3: its migration fails; the data is exactly v2's afterwards and v2 serves.
    let out = host.apply(&project, &v3);
    assert!(!out.status.success(), "apply v3 must fail: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("migration 0003-broken failed"), "{err}");
    assert!(err.contains("data restored from backup"), "{err}");
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(records_hash(port), h2, "data is exactly v2's");
    assert_eq!(host.status()["current"], 2);
    assert_eq!(host.generation_status(3), "failed");

    // Rolling back to v1 over migration 0002 without --restore-data is refused, explained.
    let out = host.run(&["rollback", "--to", "1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0002-upper") && err.contains("--restore-data"),
        "{err}"
    );
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(records_hash(port), h2, "a refused rollback changes nothing");

    // With --restore-data the data is exactly v1's snapshot and v1 serves.
    let out = host.run(&["rollback", "--to", "1", "--restore-data", "--json"]);
    assert!(
        out.status.success(),
        "rollback --restore-data: {}",
        text(&out)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["data"]["to"], 1);
    assert!(r["data"]["restored_backup"].is_string(), "{r}");
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert_eq!(records_hash(port), h1, "data is exactly v1's snapshot");
    // The data written under v2 was kept in a safety backup before the restore.
    let idx: serde_json::Value =
        serde_json::from_slice(&host.run(&["backups", "--json"]).stdout).expect("backups json");
    let safety = idx["data"]["backups"]
        .as_array()
        .expect("list")
        .iter()
        .find(|b| b["reason"] == "pre-restore")
        .cloned()
        .expect("a safety backup");
    assert_eq!(safety["sha256"], h2);
}

#[test]
fn a_backup_is_taken_and_verified_before_every_apply_when_configured() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    // No migrations at all: only the host's policy asks for these backups.
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let v2 = project.release_stateful("2.0.0", port, &[]);
    let v3 = project.release_stateful("3.0.0", port, &[]);
    let v4 = project.release_stateful("4.0.0", port, &[]);
    let host = bed.host(None);
    host.write_config("[backups]\nbefore = \"every-apply\"\nverify = true\n");
    let backups = || -> Vec<serde_json::Value> {
        let idx: serde_json::Value =
            serde_json::from_slice(&host.run(&["backups", "--json"]).stdout).expect("backups json");
        idx["data"]["backups"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };

    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("first install: no data to back up"),
        "{}",
        text(&out)
    );
    assert!(backups().is_empty());
    post(port, "alpha");

    // v2 has no migration, yet v1's data is backed up first, and verified by the recipe's hook.
    let out = host.apply(&project, &v2);
    assert!(out.status.success(), "apply v2: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("backing up data (pre-apply)"), "{err}");
    assert!(
        err.contains("verified: read back intact") && err.contains("accepted by `/testsvc check`"),
        "{err}"
    );
    let list = backups();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["reason"], "pre-apply");
    assert_eq!(list[0]["generation"], 1);
    assert_eq!(list[0]["sha256"], sha256_hex(b"alpha\n"), "v1's data");
    let dump = host
        .root()
        .join("backups")
        .join(SVC)
        .join(list[0]["file"].as_str().expect("file"));
    assert_eq!(std::fs::read(&dump).expect("dump"), b"alpha\n");
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    post(port, "beta");

    // And again before v3: one backup per apply, each of the data serving at that moment.
    let out = host.apply(&project, &v3);
    assert!(out.status.success(), "apply v3: {}", text(&out));
    let list = backups();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[1]["generation"], 2);
    assert_eq!(list[1]["sha256"], sha256_hex(b"alpha\nbeta\n"));

    // `before = "migrations"` on this prod host: an apply without migrations takes none.
    host.write_config("[backups]\nbefore = \"migrations\"\n");
    let out = host.apply(&project, &v4);
    assert!(out.status.success(), "apply v4: {}", text(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("backing up data"),
        "{}",
        text(&out)
    );
    assert_eq!(backups().len(), 2);
    assert_eq!(version_at(port).as_deref(), Some("v4"));
}

#[test]
fn a_backup_its_verify_hook_rejects_stops_the_apply_before_anything_changes() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let v3 = project.release_stateful("3.0.0", port, &[]);
    // v2's recipe declares a verify hook that rejects every dump (a probe of a closed port).
    project.release_stateful("2.0.0", port, &[]);
    let recipe = project.recipe_dir(SVC).join("recipe.toml");
    let text_ = std::fs::read_to_string(&recipe).expect("recipe");
    assert!(
        text_.contains(r#"verify = ["/testsvc", "check"]"#),
        "{text_}"
    );
    std::fs::write(
        &recipe,
        text_.replace(
            r#"verify = ["/testsvc", "check"]"#,
            r#"verify = ["/testsvc", "probe", "http://127.0.0.1:1/"]"#,
        ),
    )
    .expect("recipe");
    let v2 = project
        .release(&smoker_testkit::Release::new(SVC, "2.0.0").out("out-bad-verify"))
        .bundle;
    let host = bed.host(None);
    host.write_config("[backups]\nbefore = \"migrations\"\n");
    for (bundle, v) in [(&v1, "v1"), (&v2, "v2")] {
        let out = host.apply(&project, bundle);
        assert!(out.status.success(), "apply {v}: {}", text(&out));
        post(port, v);
    }
    let before = records_hash(port);

    // Every apply backed up and verified: the dump of v2's data goes to v2's verify hook,
    // which rejects it, so v3 is not installed and v2 serves on, its data untouched.
    host.write_config("[backups]\nbefore = \"every-apply\"\nverify = true\n");
    let out = host.apply(&project, &v3);
    assert_eq!(out.status.code(), Some(1), "apply v3: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(
            "failed its verify hook (`/testsvc probe http://127.0.0.1:1/` in service `web`)"
        ) && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(records_hash(port), before);
    assert_eq!(host.status()["current"], 2);
    assert_eq!(
        host.generation_status(3),
        "absent",
        "no generation was recorded"
    );
}

#[test]
fn backup_retention_keeps_exactly_n() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let host = bed.host(None);
    host.write_config("[backups]\nkeep = 4\n");
    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply: {}", text(&out));
    post(port, "one");
    let mut ids = Vec::new();
    for i in 0..7 {
        post(port, &format!("record {i}"));
        let out = host.run(&["backup"]);
        assert!(out.status.success(), "backup: {}", text(&out));
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        ids.push(
            line.split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_string(),
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let idx: serde_json::Value =
        serde_json::from_slice(&host.run(&["backups", "--json"]).stdout).expect("backups json");
    let kept: Vec<String> = idx["data"]["backups"]
        .as_array()
        .expect("list")
        .iter()
        .map(|b| b["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(kept, ids[3..].to_vec(), "the newest 4 remain");
    let dir = host.root().join("backups").join(SVC);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("backup dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".txt"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    // Each kept dump is the exact data at its time.
    let last = &idx["data"]["backups"][3];
    let bytes = std::fs::read(dir.join(last["file"].as_str().expect("file"))).expect("dump");
    assert_eq!(sha256_hex(&bytes), last["sha256"].as_str().expect("sha"));
    assert_eq!(String::from_utf8_lossy(&bytes), records(port));
}

#[test]
fn another_environment_is_refused_and_preflight_lists_every_problem() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let host = bed.host(None);

    // The host says it is staging; the bundle is prod.
    std::fs::write(host.host_config(), "environment = \"staging\"\n").expect("host config");
    let out = host.apply(&project, &v1);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`prod`") && err.contains("`staging`") && err.contains("--allow-env-change"),
        "{err}"
    );
    assert!(
        !host
            .root()
            .join("profiles")
            .join(SVC)
            .join("current")
            .exists()
    );

    // Preflight: wrong environment, a missing secret and a port held by another process,
    // all in one run.
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let empty_env = host.root().join("empty.env");
    std::fs::write(&empty_env, "").expect("env");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&empty_env, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600");
    }
    let out = host
        .cmd()
        .args(["preflight", "--json", "--key"])
        .arg(&project.public_key)
        .arg("--env-file")
        .arg(&empty_env)
        .arg(&v1)
        .output()
        .expect("preflight");
    assert!(!out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let failed: Vec<String> = report["data"]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(failed.contains(&"environment".to_string()), "{report}");
    assert!(failed.contains(&"variables".to_string()), "{report}");
    let detail = report.to_string();
    assert!(detail.contains("TEST_SECRET"), "{report}");
    // Ports are read from `compose config`, which needs the variables; with them present the
    // squatter is named.
    let out = host
        .cmd()
        .args(["preflight", "--json", "--allow-env-change", "--key"])
        .arg(&project.public_key)
        .arg("--env-file")
        .arg(&project.env_file)
        .arg(&v1)
        .output()
        .expect("preflight");
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let ports = report["data"]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "ports")
        .cloned()
        .expect("ports check");
    assert_eq!(ports["ok"], false);
    assert!(
        ports["detail"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("127.0.0.1:{port}")),
        "{ports}"
    );
    drop(squatter);
    // Nothing was written by preflight.
    assert!(!host.root().join("store").exists());
}

/// A loopback HTTP receiver recording request bodies.
fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut s) = stream else { continue };
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            let _ = reader.read_exact(&mut body);
            sink.lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (port, got)
}

#[test]
fn webhooks_are_told_and_a_dead_one_never_fails_the_deploy() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::stateful_testsvc(&image, port);
    let v1 = project.release_stateful("1.0.0", port, &[]);
    let host = bed.host(None);
    let (rport, got) = receiver();
    // A listener that accepts but never answers: the webhook times out.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let sport = silent.local_addr().expect("addr").port();
    host.write_config(&format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{rport}/hook\"\nkind = \"slack\"\n\n[[webhook]]\nurl = \"http://127.0.0.1:{sport}/hook\"\nkind = \"discord\"\ntimeout_ms = 400\n"
        ),
    );
    let out = host.apply(&project, &v1);
    assert!(
        out.status.success(),
        "a dead webhook must not fail the deploy: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{sport}")) && err.contains("not notified"),
        "{err}"
    );
    let bodies = got.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 2, "started + succeeded: {bodies:?}");
    let started: serde_json::Value = serde_json::from_str(&bodies[0]).expect("json");
    let done: serde_json::Value = serde_json::from_str(&bodies[1]).expect("json");
    assert!(
        started["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("[started] svc 1.0.0 (prod)"),
        "{started}"
    );
    assert!(
        done["text"]
            .as_str()
            .unwrap_or("")
            .starts_with("[succeeded] svc 1.0.0 (prod)"),
        "{done}"
    );
    let audit = std::fs::read_to_string(host.root().join("audit.log")).expect("audit");
    assert!(audit.contains("\"event\":\"notify-failed\""), "{audit}");
    drop(silent);
}

/// A new generation whose `compose up` fails with the host's secret in its output (docker
/// names the user it cannot find, and the user is the secret): the installer's messages, the
/// audit log and the webhook payloads of the automatic rollback carry `[redacted]`, never the
/// value; a failed webhook is named by scheme, host and port only, never by its secret path.
#[test]
fn a_secret_echoed_by_a_failing_stack_is_redacted_everywhere_it_leaves() {
    use smoker_testkit::project::{TEST_SECRET, WebService};
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let secret = format!("s3cret-token-{}", std::process::id());
    project.write_env_file(&format!("{}={secret}\n", TEST_SECRET.0));
    let v1 = project.release_svc("1.0.0", port, 20, &[]);
    let compose = WebService::testsvc_knobs(&image.reference).yaml().replacen(
        "    environment:\n",
        "    user: \"${TEST_SECRET:?set TEST_SECRET}\"\n    environment:\n",
        1,
    );
    smoker_testkit::write_file(&project.recipe_dir(SVC).join("compose.yaml"), compose);
    let v2 = project.release_svc("2.0.0", port, 20, &[]);
    let host = bed.host(None);
    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));

    let (rport, got) = receiver();
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let cport = closed.local_addr().expect("addr").port();
    drop(closed);
    std::fs::write(
        host.host_config(),
        format!(
            "[[webhook]]\nurl = \"http://127.0.0.1:{rport}/hook\"\nkind = \"json\"\n\n[[webhook]]\nurl = \"http://127.0.0.1:{cport}/services/T0/B0/hooksecret\"\nkind = \"slack\"\ntimeout_ms = 400\n"
        ),
    )
    .expect("host config");
    let out = host.apply(&project, &v2);
    assert!(!out.status.success(), "v2 cannot start: {}", text(&out));
    let all = text(&out);
    assert!(all.contains("[redacted]"), "{all}");
    assert!(!all.contains(&secret), "{all}");
    assert!(!all.contains("hooksecret"), "{all}");

    let audit = std::fs::read_to_string(host.root().join("audit.log")).expect("audit");
    let rollback = audit
        .lines()
        .find(|l| l.contains("\"event\":\"rollback\""))
        .unwrap_or_else(|| panic!("no rollback line: {audit}"));
    assert!(rollback.contains("[redacted]"), "{rollback}");
    assert!(!audit.contains(&secret), "{audit}");
    assert!(!audit.contains("hooksecret"), "{audit}");

    let bodies = got.lock().expect("lock").clone();
    let rolled_back = bodies
        .iter()
        .find(|b| b.contains("\"rolled-back\""))
        .unwrap_or_else(|| panic!("no rollback notice: {bodies:?}"));
    assert!(rolled_back.contains("[redacted]"), "{rolled_back}");
    assert!(bodies.iter().all(|b| !b.contains(&secret)), "{bodies:?}");
}

per_frontend!(migrations_backups_and_rollback_across_them_keep_the_data_exact);
