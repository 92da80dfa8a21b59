//! `apply --usb` and the operator's intent, on the real engine with offline bundles on a fake
//! media root: a stick left plugged in does not undo a manual rollback (the bundle rolled back
//! from, and any version not newer, is held back with its reason, also in the stick's run log)
//! until `--force` is given or a newer version is on the stick; and an unchanged stick is
//! recognised by its signed manifest digest without the payload being read — shown with a copy
//! whose payload is truncated (full verification rejects it) that is still recognised.

use smoker_testkit::docker::require_docker;
use smoker_testkit::host::assert_no_route_out;
use smoker_testkit::images::{unique_testsvc, wait_version};
use smoker_testkit::ports::free_port;
use smoker_testkit::project::{WebService, docker_health_recipe};
use smoker_testkit::{Cleanup, Host, Project, Registry, Release, stderr, text};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// Releases `svc` `version` (offline, amd64) with `/version` answering `answer`.
fn release_offline(ws: &Project, image: &str, port: u16, version: &str, answer: &str) -> PathBuf {
    ws.write_recipe(
        "svc",
        &WebService::new(image).yaml(),
        &docker_health_recipe(port, answer, "prod"),
    );
    let out = format!("out-{version}");
    ws.release(&Release::new("svc", version).offline().out(&out));
    ws.bundle(&out, "prod", "svc", version, "amd64")
}

fn place(src: &Path, stick: &Path) -> PathBuf {
    let name = src.file_name().expect("bundle file name");
    let dest = stick.join("bundles").join(name);
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(src, &dest).expect("copy");
    dest
}

fn apply_usb(host: &Host, ws: &Project, stick: &Path, extra: &[&str]) -> Output {
    let mut c = host.offline_cmd();
    host.apply_args(&mut c, ws)
        .args(["--usb", "--media-root"])
        .arg(stick)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("apply --usb")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_stick_left_plugged_in_does_not_undo_a_rollback_and_an_unchanged_stick_is_not_reread() {
    require_docker();
    assert_no_route_out();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let image = unique_testsvc(&registry, &mut cleanup, "svc", "1");
    cleanup.image(&smoker_format::image_archive::local_reference(
        smoker_build::lock::repository_of(&image.reference),
        &image.digest,
    ));
    let port = free_port();
    let ws = Project::cli();
    ws.write_recipe(
        "svc",
        &WebService::new(&image.reference).yaml(),
        &docker_health_recipe(port, "v1", "prod"),
    );
    assert!(ws.lock(&["--arch", "amd64"]).status.success());
    let v1 = release_offline(&ws, &image.reference, port, "1.0.0", "v1");
    let v2 = release_offline(&ws, &image.reference, port, "2.0.0", "v2");
    let v3 = release_offline(&ws, &image.reference, port, "3.0.0", "v3");
    drop(registry);

    let host = Host::new(&mut cleanup, None);
    let out = host.apply_offline(&ws, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    let media = tempfile::tempdir().expect("media root");
    let stick = media.path().join("SMOKER");
    place(&v2, &stick);

    // The stick's 2.0.0 is applied, then the operator rolls back to generation 1.
    let out = apply_usb(&host, &ws, media.path(), &[]);
    assert!(out.status.success(), "apply --usb: {}", text(&out));
    assert!(
        stdout(&out).contains("svc 2.0.0 generation 2 (committed)"),
        "{}",
        text(&out)
    );
    wait_version(port, "v2");
    let out = host.run(&["rollback", "--to", "1"]);
    assert!(out.status.success(), "rollback: {}", text(&out));
    wait_version(port, "v1");

    // Next boot, the stick still plugged in: 2.0.0 is held back, said why, nothing changes.
    let out = apply_usb(&host, &ws, media.path(), &[]);
    assert!(out.status.success(), "apply --usb: {}", text(&out));
    assert!(
        stdout(&out).contains("svc 1.0.0 generation 1 (unchanged)"),
        "{}",
        text(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("held back: generation 2 ran this very bundle (2.0.0) and was rolled back from to generation 1")
            && err.contains("--force"),
        "{err}"
    );
    assert!(
        err.contains("nothing applied: generation 1 (svc 1.0.0) keeps serving"),
        "{err}"
    );
    wait_version(port, "v1");
    assert_eq!(host.status()["current"].as_u64(), Some(1));
    assert_eq!(host.history().len(), 2, "no generation was added");
    // The run log the unit writes onto the stick carries the reason.
    let mut log = host
        .cmd()
        .arg("usb-log")
        .arg(&stick)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("usb-log");
    log.stdin
        .take()
        .expect("stdin")
        .write_all(err.as_bytes())
        .expect("feed the log");
    let logged = log.wait_with_output().expect("usb-log");
    assert!(logged.status.success(), "usb-log: {}", text(&logged));
    let on_stick = std::fs::read_to_string(stick.join("smoker-install.log")).expect("stick log");
    assert!(on_stick.contains("held back: generation 2"), "{on_stick}");

    // --force applies it again.
    let out = apply_usb(&host, &ws, media.path(), &["--force"]);
    assert!(out.status.success(), "apply --usb --force: {}", text(&out));
    assert!(
        stdout(&out).contains("svc 2.0.0 generation 3 (committed)"),
        "{}",
        text(&out)
    );
    assert!(stderr(&out).contains("--force: applying"), "{}", text(&out));
    wait_version(port, "v2");

    // Rolled back again, a newer version on the stick is applied without --force.
    let out = host.run(&["rollback", "--to", "1"]);
    assert!(out.status.success(), "rollback: {}", text(&out));
    wait_version(port, "v1");
    let v3_on_stick = place(&v3, &stick);
    let out = apply_usb(&host, &ws, media.path(), &[]);
    assert!(out.status.success(), "apply --usb: {}", text(&out));
    assert!(
        stdout(&out).contains("svc 3.0.0 generation 4 (committed)"),
        "{}",
        text(&out)
    );
    wait_version(port, "v3");

    // An unchanged stick: recognised by the signed manifest's digest, the payload not read.
    // The copy's payload is cut short, so a full verification would reject it...
    let len = std::fs::metadata(&v3_on_stick).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&v3_on_stick)
        .and_then(|f| f.set_len(len * 3 / 4))
        .expect("truncate");
    let out = host
        .cmd()
        .arg("verify")
        .arg("--key")
        .arg(&ws.public_key)
        .arg(&v3_on_stick)
        .output()
        .expect("verify");
    assert!(
        !out.status.success(),
        "verify accepted a truncated copy: {}",
        text(&out)
    );
    // ...yet the apply recognises it at once and leaves generation 4 serving.
    let out = apply_usb(&host, &ws, media.path(), &[]);
    assert!(out.status.success(), "apply --usb: {}", text(&out));
    assert!(
        stdout(&out).contains("svc 3.0.0 generation 4 (unchanged)"),
        "{}",
        text(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("is already current: its signed manifest (sha256 ")
            && err.contains("generation 4, serving and good; the rest of the file was not read"),
        "{err}"
    );
    assert!(!err.contains("failed verification"), "{err}");
    assert!(!err.contains("verifying"), "{err}");
    assert_eq!(host.history().len(), 4, "no generation was added");
    wait_version(port, "v3");
}
