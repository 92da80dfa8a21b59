//! Proves the Docker test harness for real: the static `testsvc` image runs
//! and reports its health, a loopback registry round-trips it by digest, and
//! the stateful mode's dump/migrate/restore work through a named volume.

use std::process::Command;
use std::time::{Duration, Instant};

use smoker_testkit::docker::{
    docker, docker_output, published_port, require_docker, wait_for_health,
};
use smoker_testkit::images::{TESTSVC_PORT, build_image, build_image_with};
use smoker_testkit::run::run_with_input;
use smoker_testkit::{Cleanup, Registry, http, sha256_hex, unique_name, wait_for};

const TIMEOUT: Duration = Duration::from_secs(30);

/// `GET http://127.0.0.1:port/path` once the server answers at all.
fn get_when_up(port: u16, path: &str) -> http::Response {
    let url = format!("http://127.0.0.1:{port}{path}");
    wait_for(&format!("an answer from {url}"), TIMEOUT, || {
        http::get(&url).ok()
    })
}

/// Runs the image detached with `-p 127.0.0.1::8080` plus `extra` args;
/// returns the published host port.
fn run_detached(cleanup: &mut Cleanup, name: &str, image: &str, extra: &[&str]) -> u16 {
    cleanup.container(name);
    let port_arg = format!("127.0.0.1::{TESTSVC_PORT}");
    let mut args = vec!["run", "-d", "--name", name, "-p", &port_arg];
    args.extend_from_slice(extra);
    args.push(image);
    docker(&args);
    published_port(name, TESTSVC_PORT)
}

#[test]
fn image_serves_version_and_health_and_stops_fast() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let image = build_image(&cleanup.image(&format!("{}:v7", unique_name("harness-run"))));
    assert!(image.id.starts_with("sha256:"), "image id {:?}", image.id);

    let healthy = unique_name("healthy");
    let port = run_detached(
        &mut cleanup,
        &healthy,
        &image.tag,
        &["-e", "TESTSVC_VERSION=v7"],
    );
    let unhealthy = unique_name("unhealthy");
    let bad_port = run_detached(
        &mut cleanup,
        &unhealthy,
        &image.tag,
        &["-e", "TESTSVC_UNHEALTHY=1"],
    );

    let version = get_when_up(port, "/version");
    assert_eq!((version.status, version.text()), (200, "v7".to_string()));
    let health = get_when_up(port, "/health");
    assert_eq!((health.status, health.text()), (200, "ok".to_string()));
    let bad = get_when_up(bad_port, "/health");
    assert_eq!((bad.status, bad.text()), (503, "unhealthy".to_string()));
    let default_version = get_when_up(bad_port, "/version");
    assert_eq!(default_version.text(), "unknown");

    // The image's HEALTHCHECK (testsvc probe) drives Docker's health status.
    wait_for_health(&healthy, "healthy", TIMEOUT);
    wait_for_health(&unhealthy, "unhealthy", TIMEOUT);

    // PID 1 handles SIGTERM, so `docker stop` does not wait out its timeout.
    let started = Instant::now();
    docker(&["stop", "--time", "20", &healthy]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "docker stop took {took:?}");
    let exit = docker(&["inspect", "--format", "{{.State.ExitCode}}", &healthy]);
    assert_eq!(exit, "0");
}

#[test]
fn registry_push_reports_the_digest_docker_pulls() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let local = cleanup.image(&format!("{}:v1", unique_name("harness-push")));
    let image = build_image_with(&local, &[("org.smoker-release.test.case", &local)]);
    let repo = unique_name("repo");

    let digest = registry.push(&image.tag, &repo, "v1");
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "digest {digest:?}"
    );
    let repo_digest = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &image.tag,
    ]);
    assert_eq!(repo_digest, registry.digest_reference(&repo, &digest));

    // Drop every local reference, then pull back by digest alone.
    let remote = registry.reference(&repo, "v1");
    docker(&["rmi", &image.tag, &remote]);
    let gone = docker_output(&["image", "inspect", &image.id]);
    assert!(
        !gone.status.success(),
        "image {} still present after rmi",
        image.id
    );

    let by_digest = cleanup.image(&registry.digest_reference(&repo, &digest));
    docker(&["pull", &by_digest]);
    let pulled_id = docker(&["image", "inspect", "--format", "{{.Id}}", &by_digest]);
    assert_eq!(
        pulled_id, image.id,
        "pulled image differs from the pushed one"
    );

    // A second build with another label gives another image and digest.
    let other = build_image_with(
        &cleanup.image(&format!("{}:v2", unique_name("harness-push"))),
        &[("org.smoker-release.test.case", "other")],
    );
    assert_ne!(other.id, image.id);
    let other_digest = registry.push(&other.tag, &repo, "v2");
    assert_ne!(other_digest, digest);
    assert_eq!(
        registry.manifest_digest(&repo, "v1").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(registry.manifest_digest(&repo, "missing"), None);
}

/// `docker run --rm -v VOLUME:/data [extra] IMAGE ARGS`, with `stdin` fed.
fn run_once(
    volume: &str,
    extra: &[&str],
    image: &str,
    args: &[&str],
    stdin: &[u8],
) -> std::process::Output {
    let mount = format!("{volume}:/data");
    let mut command = Command::new("docker");
    command
        .args(["run", "--rm", "-i", "-v", &mount])
        .args(extra)
        .arg(image)
        .args(args);
    run_with_input(&mut command, Some(stdin))
}

#[test]
fn records_dump_migrate_and_restore_through_a_volume() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let image = build_image(&cleanup.image(&format!("{}:v1", unique_name("harness-data"))));
    let volume = cleanup.volume(&unique_name("data"));
    docker(&["volume", "create", &volume]);

    let server = unique_name("records");
    let port = run_detached(
        &mut cleanup,
        &server,
        &image.tag,
        &["-v", &format!("{volume}:/data")],
    );
    let base = format!("http://127.0.0.1:{port}");
    get_when_up(port, "/health");
    for record in ["alpha", "beta"] {
        let resp = http::post(&format!("{base}/records"), format!("{record}\n").as_bytes())
            .unwrap_or_else(|e| panic!("POST /records: {e}"));
        assert_eq!(resp.status, 201, "{}", resp.text());
    }
    let original: &[u8] = b"alpha\nbeta\n";
    let listed = get_when_up(port, "/records");
    assert_eq!(listed.body, original);

    let dump = run_once(&volume, &[], &image.tag, &["dump"], b"");
    assert!(
        dump.status.success(),
        "dump: {}",
        String::from_utf8_lossy(&dump.stderr)
    );
    assert_eq!(dump.stdout, original);

    let scripts = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    std::fs::write(
        scripts.path().join("upper.txt"),
        "# make it loud\nuppercase\n",
    )
    .unwrap_or_else(|e| panic!("write script: {e}"));
    std::fs::write(scripts.path().join("broken.txt"), "append never\nfail\n")
        .unwrap_or_else(|e| panic!("write script: {e}"));
    let scripts_mount = format!("{}:/migrations:ro", scripts.path().display());

    let upper = run_once(
        &volume,
        &["-v", &scripts_mount],
        &image.tag,
        &["migrate", "/migrations/upper.txt"],
        b"",
    );
    assert!(
        upper.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&upper.stderr)
    );
    let sha = get_when_up(port, "/records/sha256");
    assert_eq!(sha.text(), sha256_hex(b"ALPHA\nBETA\n"));

    let broken = run_once(
        &volume,
        &["-v", &scripts_mount],
        &image.tag,
        &["migrate", "/migrations/broken.txt"],
        b"",
    );
    assert_eq!(
        broken.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(String::from_utf8_lossy(&broken.stderr).contains("fail"));
    assert_eq!(
        get_when_up(port, "/records/sha256").text(),
        sha256_hex(b"ALPHA\nBETA\n")
    );

    let restore = run_once(&volume, &[], &image.tag, &["restore"], original);
    assert!(
        restore.status.success(),
        "restore: {}",
        String::from_utf8_lossy(&restore.stderr)
    );
    assert_eq!(
        get_when_up(port, "/records/sha256").text(),
        sha256_hex(original)
    );
    assert_eq!(get_when_up(port, "/records").body, original);

    // `dump` on an empty volume exits 1 with a message.
    let empty = cleanup.volume(&unique_name("empty"));
    let missing = run_once(&empty, &[], &image.tag, &["dump"], b"");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no records file"));
}

#[test]
fn start_delay_slow_health_and_crash_knobs() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let image = build_image(&cleanup.image(&format!("{}:v1", unique_name("harness-knobs"))));

    // TESTSVC_START_DELAY_MS: nothing answers before the delay has passed.
    let started = Instant::now();
    let delayed = unique_name("delayed");
    let port = run_detached(
        &mut cleanup,
        &delayed,
        &image.tag,
        &["-e", "TESTSVC_START_DELAY_MS=1500"],
    );
    let health = get_when_up(port, "/health");
    assert_eq!(health.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered after only {:?}",
        started.elapsed()
    );

    // TESTSVC_SLOW_MS: every /health answer is delayed.
    let slow = unique_name("slow");
    let slow_port = run_detached(
        &mut cleanup,
        &slow,
        &image.tag,
        &["-e", "TESTSVC_SLOW_MS=700"],
    );
    get_when_up(slow_port, "/version");
    let asked = Instant::now();
    let answer = get_when_up(slow_port, "/health");
    assert_eq!(answer.status, 200);
    assert!(
        asked.elapsed() >= Duration::from_millis(700),
        "answered in {:?}",
        asked.elapsed()
    );

    // TESTSVC_CRASH_AFTER_MS: the process exits 1 on its own.
    let crash = docker_output(&[
        "run",
        "--rm",
        "-e",
        "TESTSVC_CRASH_AFTER_MS=200",
        &image.tag,
    ]);
    assert_eq!(crash.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&crash.stderr).contains("crashing on purpose"));
}
