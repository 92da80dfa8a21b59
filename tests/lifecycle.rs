//! `smoker-install stop`, `start` and `remove` on the real Docker engine: containers stopped
//! and kept with the generation still current, started again by `start`, `apply` and
//! `rollback`; a removed profile's stack down, the profile forgotten, backups kept, its store
//! entries left to gc; audit entries and the JSON envelope like every other subcommand.

use smoker_testkit::docker::{compose_labelled, running_containers};
use smoker_testkit::images::{version_at, wait_version};
use smoker_testkit::project::SVC;
use smoker_testkit::{Project, Testbed, text};

fn envelope(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(out)))
}

#[test]
fn stop_start_and_remove_a_profile_on_the_real_engine() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let v2 = project.release_svc("2.0.0", port, 20, &[("VERSION_TEXT", "v2")]);
    let host = bed.host(None);
    let out = host.apply(&project, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    let containers = compose_labelled("container", &host.project);
    assert!(!containers.is_empty());

    // stop: nothing runs, the same containers are kept, generation 1 stays current and good.
    let out = host.run(&["stop", SVC, "--json"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    let e = envelope(&out);
    assert_eq!(e["command"], "stop");
    assert_eq!(e["data"]["action"], "stop");
    assert_eq!(e["data"]["generation"], 1);
    assert!(running_containers(&host.project).is_empty());
    assert_eq!(compose_labelled("container", &host.project), containers);
    assert_eq!(version_at(port), None, "nothing answers on the port");
    let s = host.status();
    assert_eq!(
        (s["current"].clone(), s["health"].clone()),
        (1.into(), "good".into())
    );
    assert!(s["stopped_since"].is_string(), "{s}");
    let out = host.run(&["status"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped since"),
        "{}",
        text(&out)
    );

    // start: the same generation again, through the health gate.
    let out = host.run(&["start", SVC]);
    assert!(out.status.success(), "start: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started profile `svc` (generation 1"),
        "{}",
        text(&out)
    );
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert!(host.status()["stopped_since"].is_null());

    // stop, then apply brings the stack back (with the new version).
    assert!(host.run(&["stop", SVC]).status.success());
    let out = host.apply(&project, &v2);
    assert!(
        out.status.success(),
        "apply v2 on a stopped profile: {}",
        text(&out)
    );
    wait_version(port, "v2");
    assert!(host.status()["stopped_since"].is_null());

    // stop, then rollback brings it back too.
    assert!(host.run(&["stop", SVC]).status.success());
    let out = host.run(&["rollback", "--to", "1"]);
    assert!(out.status.success(), "rollback: {}", text(&out));
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert!(host.status()["stopped_since"].is_null());

    // remove: the stack goes (containers and networks), the profile is forgotten, backups
    // stay, store entries wait for gc.
    let backups = host.root().join("backups").join(SVC);
    std::fs::create_dir_all(&backups).expect("backups dir");
    std::fs::write(backups.join("index.json"), "{\"backups\":[]}").expect("backup index");
    let store_entries = || {
        std::fs::read_dir(host.root().join("store"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert_eq!(store_entries(), 2);
    let out = host.run(&["remove", SVC, "--json"]);
    assert!(out.status.success(), "remove: {}", text(&out));
    let e = envelope(&out);
    assert_eq!(e["data"]["action"], "remove");
    assert_eq!(e["data"]["generation"], 1);
    assert_eq!(e["data"]["purged_backups"], false);
    assert!(compose_labelled("container", &host.project).is_empty());
    assert!(compose_labelled("network", &host.project).is_empty());
    assert_eq!(version_at(port), None);
    assert!(!host.root().join("profiles").join(SVC).exists());
    assert!(backups.join("index.json").is_file(), "backups are kept");
    let out = host.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(envelope(&out)["data"]["profiles"], serde_json::json!([]));
    assert_eq!(store_entries(), 2, "store entries wait for gc");
    let out = host.run(&["gc"]);
    assert!(out.status.success(), "gc: {}", text(&out));
    assert_eq!(store_entries(), 0, "gc removes what no profile uses");

    // A profile that is not there: kind `state`, in the envelope too.
    let out = host.run(&["stop", SVC, "--json"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let e = envelope(&out);
    assert_eq!(e["kind"], "state");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("no profile `svc`")),
        "{e}"
    );

    // Reinstalling works, and --purge-backups deletes the backups.
    let out = host.apply(&project, &v1);
    assert!(
        !out.status.success(),
        "the anti-rollback floor outlives the profile: 1.0.0 < 2.0.0: {}",
        text(&out)
    );
    let out = host.apply(&project, &v2);
    assert!(out.status.success(), "reinstall: {}", text(&out));
    wait_version(port, "v2");
    let out = host.run(&["remove", SVC, "--purge-backups"]);
    assert!(
        out.status.success(),
        "remove --purge-backups: {}",
        text(&out)
    );
    assert!(!backups.exists(), "backups purged");

    // Every lifecycle command is in the audit log, which is intact.
    let out = host.run(&["audit", "verify"]);
    assert!(out.status.success(), "audit verify: {}", text(&out));
    let log = std::fs::read_to_string(host.root().join("audit.log")).expect("audit log");
    let events: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["event"].as_str().map(str::to_string))
        .filter(|e| ["stop", "start", "remove"].contains(&e.as_str()))
        .collect();
    assert_eq!(
        events,
        ["stop", "start", "stop", "stop", "remove", "stop", "remove"]
    );
}
