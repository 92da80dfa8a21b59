//! The installer on the real Docker engine: generations, atomic switch, health gate,
//! automatic and manual rollback, locks, crash safety and the audit log.

use smoker_testkit::docker::{remove_compose_project, running_containers};
use smoker_testkit::images::{version_at, wait_version};
use smoker_testkit::project::SVC;
use smoker_testkit::{Project, Testbed, per_frontend, text, wait_for};
use std::path::Path;
use std::time::Duration;

/// Every container of the project runs the signed image id.
fn assert_image_ids(project: &str, id: &str) {
    let containers = running_containers(project);
    assert!(!containers.is_empty(), "no running container in {project}");
    for (c, image) in containers {
        assert_eq!(image, id, "container {c} runs another image");
    }
}

fn scenario(compose: &str) {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let v2 = project.release_svc("2.0.0", port, 20, &[("VERSION_TEXT", "v2")]);
    let v3 = project.release_svc(
        "3.0.0",
        port,
        8,
        &[("VERSION_TEXT", "v3"), ("UNHEALTHY", "1")],
    );
    let host = bed.host(Some(compose));

    // v1 healthy.
    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert_image_ids(&host.project, &image.id);
    let s = host.status();
    assert_eq!(s["current"], 1);
    assert_eq!(s["version"], "1.0.0");
    assert_eq!(s["health"], "good");

    // v2 healthy.
    let out = host.apply(&project, &v2);
    assert!(out.status.success(), "apply v2: {}", text(&out));
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(host.status()["current"], 2);

    // v3 unhealthy: automatic rollback, v2 serves again.
    let out = host.apply(&project, &v3);
    assert!(!out.status.success(), "apply v3 must fail: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("failed the health gate") && err.contains("rolled back"),
        "{err}"
    );
    assert!(
        err.contains("503"),
        "the report names the failing check: {err}"
    );
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    let s = host.status();
    assert_eq!(s["current"], 2);
    assert_eq!(s["failed"], serde_json::json!([3]));
    assert_eq!(host.generation_status(3), "failed");
    assert_eq!(host.generation_status(2), "good");

    // Manual rollback to 1, without the bundle file: everything comes from the store and the
    // images already on the host.
    std::fs::remove_file(&v1).expect("remove bundle");
    let out = host.run(&["rollback", "--to", "1", "--json"]);
    assert!(out.status.success(), "rollback: {}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(r["data"]["to"], 1);
    assert_eq!(r["data"]["from"], 2);
    assert!(r["data"]["durations_us"]["switch"].as_u64().is_some());
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert_image_ids(&host.project, &image.id);
    let s = host.status();
    assert_eq!(s["current"], 1);
    assert_eq!(s["version"], "1.0.0");
    let hist = host.history();
    assert_eq!(hist.len(), 3);

    // The audit log recorded every step and is intact; an edit is detected.
    let out = host.run(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", text(&out));
    let log = host.root().join("audit.log");
    let body = std::fs::read_to_string(&log).expect("audit log");
    let events: Vec<String> = body
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["event"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let deploys: Vec<&str> = events
        .iter()
        .map(String::as_str)
        .filter(|e| *e != "notify")
        .collect();
    assert_eq!(deploys, ["apply", "apply", "rollback", "apply", "rollback"]);
    assert_eq!(
        events.iter().filter(|e| *e == "notify").count(),
        6,
        "started + outcome per apply"
    );
    std::fs::write(&log, body.replacen("\"1.0.0\"", "\"1.0.1\"", 1)).expect("edit");
    let out = host.run(&["audit", "verify"]);
    assert!(!out.status.success(), "an edited log must be detected");
    // Truncation is detected too (restore the edit first).
    let lines: Vec<&str> = body.lines().collect();
    std::fs::write(&log, format!("{}\n", lines[..lines.len() - 1].join("\n"))).expect("truncate");
    let out = host.run(&["audit", "verify"]);
    assert!(!out.status.success(), "a truncated log must be detected");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("truncated"),
        "{}",
        text(&out)
    );
    std::fs::write(&log, &body).expect("restore log");

    // gc --keep 1 keeps the newest good generation (2) and the current one (1); the failed
    // generation 3 goes, with its store entry.
    let out = host.run(&["gc", "--keep", "1"]);
    assert!(out.status.success(), "gc: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("removed 1 generations, 1 store entries"),
        "{}",
        text(&out)
    );
    let kept: Vec<u64> = host
        .history()
        .iter()
        .filter_map(|g| g["number"].as_u64())
        .collect();
    assert_eq!(kept, [1, 2]);
    let entries = std::fs::read_dir(host.root().join("store"))
        .expect("store")
        .count();
    assert_eq!(entries, 2);
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert_image_ids(&host.project, &image.id);
}

#[test]
fn second_apply_on_the_same_profile_fails_fast_naming_the_holder() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 30);
    // A slow-starting service keeps the first apply inside its health gate for seconds.
    let slow = project.release_svc(
        "1.0.0",
        port,
        30,
        &[("VERSION_TEXT", "v1"), ("START_DELAY_MS", "4000")],
    );
    let host = bed.host(None);
    let first = host.spawn_apply(&project, &slow);
    let pid = first.id();
    // Wait until the first holds the lock.
    let lock = host.root().join("locks").join(format!("{}.lock", SVC));
    wait_for(
        "the first apply to take the lock",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(&lock)
                .ok()
                .filter(|s| s.contains(&format!("\"pid\":{pid}")))
                .map(|_| ())
        },
    );
    let started = std::time::Instant::now();
    let second = host.apply(&project, &slow);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the second apply must fail fast"
    );
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("is locked by") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    assert!(err.contains("apply"), "names the holder's command: {err}");
    // With --wait the second one waits and then finds the bundle already current.
    let waited = host.apply_with(&project, &slow, &["--wait"], None);
    let first = first.wait_with_output().expect("first apply");
    assert!(first.status.success(), "first apply: {}", text(&first));
    assert!(waited.status.success(), "waiting apply: {}", text(&waited));
    assert!(
        String::from_utf8_lossy(&waited.stdout).contains("unchanged"),
        "{}",
        text(&waited)
    );
    assert_eq!(version_at(port).as_deref(), Some("v1"));
}

/// Follows `current` and checks it names a complete, intact store entry.
fn assert_current_complete(root: &Path) -> u64 {
    let profile = root.join("profiles").join(SVC);
    let link = std::fs::read_link(profile.join("current")).expect("current link");
    let n: u64 = link
        .to_string_lossy()
        .trim_end_matches("-link")
        .parse()
        .expect("N-link");
    let entry = profile.join(&link);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(entry.join("manifest.json")).expect("manifest in store"),
    )
    .expect("manifest json");
    for f in manifest["files"].as_array().expect("files") {
        let path = entry.join(f["path"].as_str().expect("path"));
        let (sha, _) = smoker_format::digest::sha256_file(&path).expect("payload file present");
        assert_eq!(
            sha,
            f["sha256"].as_str().unwrap_or(""),
            "{} intact",
            path.display()
        );
    }
    n
}

#[test]
fn a_crash_at_every_step_leaves_a_complete_generation_and_recover_finishes() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let v2 = project.release_svc("2.0.0", port, 20, &[("VERSION_TEXT", "v2")]);
    for point in smoker::fault::POINTS {
        let host = bed.host(None);
        let out = host.apply(&project, &v1);
        assert!(out.status.success(), "{point}: apply v1: {}", text(&out));
        let rollback_point = point.starts_with("rollback:");
        if rollback_point {
            let out = host.apply(&project, &v2);
            assert!(out.status.success(), "{point}: apply v2: {}", text(&out));
            let mut c = host.cmd();
            let out = c
                .args(["rollback", "--to", "1"])
                .env("SMOKER_FAULT", point)
                .output()
                .expect("rollback");
            assert!(
                !out.status.success(),
                "{point}: the rollback must have aborted"
            );
        } else {
            let out = host.apply_with(&project, &v2, &[], Some(point));
            assert!(
                !out.status.success(),
                "{point}: the apply must have aborted: {}",
                text(&out)
            );
            assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("aborting at {point}")));
        }
        // The invariant, right after the crash.
        let n = assert_current_complete(host.root());
        assert!(n == 1 || n == 2, "{point}: current is {n}");
        // Recovery finishes the job: current is good and serves its own version.
        let out = host.run(&["recover"]);
        assert!(out.status.success(), "{point}: recover: {}", text(&out));
        let s = host.status();
        assert_eq!(s["health"], "good", "{point}: {s}");
        assert_eq!(s["pending"], serde_json::json!([]), "{point}: {s}");
        let cur = s["current"].as_u64().expect("current");
        assert_current_complete(host.root());
        wait_version(port, &format!("v{cur}"));
        // A clean apply works afterwards.
        let out = host.apply(&project, &v2);
        assert!(
            out.status.success(),
            "{point}: apply after recovery: {}",
            text(&out)
        );
        assert_eq!(version_at(port).as_deref(), Some("v2"), "{point}");
        // Containers, network and volumes go now: twelve idle networks would eat into
        // Docker's address pools, which parallel tests share.
        remove_compose_project(&host.project);
    }
}

#[test]
fn unlock_force_ends_a_hung_holder_and_the_next_run_finishes_its_work() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 40);
    // Slow to start: the apply sits in its health gate, holding the lock.
    let slow = project.release_svc(
        "1.0.0",
        port,
        40,
        &[("VERSION_TEXT", "v1"), ("START_DELAY_MS", "5000")],
    );
    let host = bed.host(None);
    let first = host.spawn_apply(&project, &slow);
    let pid = first.id();
    let current = host.root().join("profiles").join(SVC).join("current");
    wait_for("the apply to switch", Duration::from_secs(30), || {
        current.exists().then_some(())
    });
    // Without --force, unlock only names the holder.
    let out = host.run(&["unlock"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("pid {pid}")) && err.contains("--force"),
        "{err}"
    );
    // With --force the holder is killed and the lock is free.
    let out = host.run(&["unlock", "--force"]);
    assert!(out.status.success(), "unlock --force: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("killed the holder"));
    let first = first.wait_with_output().expect("wait");
    assert!(!first.status.success(), "the holder was killed");
    // The interrupted generation is pending; the next invocation finishes it.
    let out = host.run(&["recover"]);
    assert!(out.status.success(), "recover: {}", text(&out));
    let s = host.status();
    assert_eq!(s["current"], 1);
    assert_eq!(s["health"], "good", "{s}");
    assert_eq!(s["locked"], false);
    wait_version(port, "v1");
}

per_frontend!(scenario);
