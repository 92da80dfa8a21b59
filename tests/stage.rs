//! `smoker-install stage`: verify + store without switching, then an apply of the same bundle
//! (or `apply --staged PROFILE`) that switches without reading the bundle's payload again.
//! On the real Docker engine.

use smoker_testkit::docker::running_containers;
use smoker_testkit::images::version_at;
use smoker_testkit::project::SVC;
use smoker_testkit::{Project, Testbed, text};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(out)))
}

fn stage(
    host: &smoker_testkit::Host,
    project: &Project,
    bundle: &std::path::Path,
) -> serde_json::Value {
    let out = host
        .cmd()
        .args(["stage", "--json", "--key"])
        .arg(&project.public_key)
        .arg(bundle)
        .output()
        .expect("run smoker-install stage");
    assert!(out.status.success(), "stage: {}", text(&out));
    json(&out)
}

#[test]
fn a_staged_bundle_is_stored_not_switched_and_applied_without_a_second_verify() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let v2 = project.release_svc("2.0.0", port, 20, &[("VERSION_TEXT", "v2")]);
    let host = bed.host(None);

    // Stage v1: stored, recorded, nothing switched and nothing started.
    let staged = stage(&host, &project, &v1);
    assert_eq!(staged["command"], "stage");
    assert_eq!(staged["data"]["result"], "staged");
    assert_eq!(staged["data"]["version"], "1.0.0");
    let entry = staged["data"]["store"]
        .as_str()
        .expect("store entry")
        .to_string();
    assert!(
        host.root()
            .join("store")
            .join(&entry)
            .join("manifest.json")
            .is_file()
    );
    assert!(
        host.root()
            .join("staged")
            .join(format!("{SVC}.json"))
            .is_file()
    );
    assert!(
        !host
            .root()
            .join("profiles")
            .join(SVC)
            .join("current")
            .exists()
    );
    assert!(
        running_containers(&host.project).is_empty(),
        "stage started containers"
    );
    assert_eq!(version_at(port), None, "nothing serves after stage");

    // Staging it again reads nothing more.
    assert_eq!(stage(&host, &project, &v1)["data"]["result"], "unchanged");

    // gc keeps the staged entry.
    let out = host.run(&["gc", "--json"]);
    assert!(out.status.success(), "gc: {}", text(&out));
    assert!(
        host.root().join("store").join(&entry).is_dir(),
        "gc removed a staged entry"
    );

    // Apply of the same bundle: no verify+stage step, the staged entry is switched to.
    let out = host.apply_with(&project, &v1, &["--json"], None);
    assert!(
        out.status.success(),
        "apply of the staged v1: {}",
        text(&out)
    );
    let a = json(&out);
    assert_eq!(a["data"]["result"], "committed");
    let steps = a["data"]["durations_us"].as_object().expect("durations");
    assert!(
        !steps.contains_key("verify+stage"),
        "the payload was verified again: {steps:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("was staged"));
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert!(
        !host
            .root()
            .join("staged")
            .join(format!("{SVC}.json"))
            .exists(),
        "the record is cleared once applied"
    );

    // Stage v2, then switch with `apply --staged PROFILE`, the bundle file gone.
    stage(&host, &project, &v2);
    assert_eq!(
        version_at(port).as_deref(),
        Some("v1"),
        "still v1 after staging v2"
    );
    std::fs::remove_file(&v2).expect("remove the v2 bundle");
    let mut c = host.cmd();
    host.apply_args(&mut c, &project)
        .args(["--json", "--staged", SVC]);
    let out = c.output().expect("apply --staged");
    assert!(out.status.success(), "apply --staged: {}", text(&out));
    assert_eq!(json(&out)["data"]["version"], "2.0.0");
    assert_eq!(version_at(port).as_deref(), Some("v2"));
    assert_eq!(host.status()["current"], 2);

    // Nothing staged now: a clear `state` refusal.
    let mut c = host.cmd();
    host.apply_args(&mut c, &project)
        .args(["--json", "--staged", SVC]);
    let out = c.output().expect("apply --staged");
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    assert!(
        json(&out)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing is staged")
    );
}

#[test]
fn a_damaged_staged_entry_is_refused_before_anything_switches() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let host = bed.host(None);
    let staged = stage(&host, &project, &v1);
    let entry = host
        .root()
        .join("store")
        .join(staged["data"]["store"].as_str().expect("entry"));
    // Root can write a read-only entry: change a payload file, size and all.
    let compose = entry.join("stack").join("compose.yaml");
    smoker_testkit::make_writable(&entry);
    std::fs::write(&compose, "services: {}\n# changed after staging\n").expect("tamper");
    let mut c = host.cmd();
    host.apply_args(&mut c, &project)
        .args(["--json", "--staged", SVC]);
    let out = c.output().expect("apply --staged");
    assert_eq!(out.status.code(), Some(9), "{}", text(&out));
    let msg = json(&out)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        msg.contains("compose.yaml"),
        "the damaged file is named: {msg}"
    );
    assert_eq!(version_at(port), None);
    assert!(
        !host
            .root()
            .join("profiles")
            .join(SVC)
            .join("current")
            .exists()
    );
}
