//! Benchmark (not a test): the three-service stack of `smoker_testkit::stack` on the local
//! engine, under both Compose front ends, against plain `compose up -d` of the same files in a
//! stable directory on the same host.
//!
//! Prints per front end: apply of a release that changes only the backend (and whether the
//! database and frontend kept their containers), the same change with plain compose (until
//! `up -d` returns, and until every health URL answers), how long after the broken backend's
//! container started the gate decided, the failed apply with its automatic rollback, and a
//! manual rollback against plain compose going back to the previous files.
//!
//! Run: `cargo bench --bench real_stack` (scripts/bench-real-stack.sh).

use smoker_testkit::docker::frontends;
use smoker_testkit::ports::free_port;
use smoker_testkit::stack::{Shop, answer, container, decided_ms};
use smoker_testkit::{Testbed, text, unique_name};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken. BENCH_FRONTENDS=v1 (or v2) limits
    // the run to one front end.
    let only = std::env::var("BENCH_FRONTENDS").ok();
    for frontend in frontends() {
        if only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|f| f == frontend))
        {
            bench(frontend);
        }
    }
}

/// The installer's own step timings from its JSON envelope (`durations_us`), in ms, largest
/// first.
fn steps(out: &std::process::Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let mut d: Vec<(String, u64)> = v["data"]["durations_us"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0) / 1000))
                .collect()
        })
        .unwrap_or_default();
    d.sort_by_key(|e| std::cmp::Reverse(e.1));
    d.iter()
        .take(5)
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Waits until the backend answers `/version` with `want` and the frontend answers `/health`.
fn wait_serving(port: u16, backend_port: u16, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        if answer(backend_port, "/version").as_deref() == Some(want)
            && answer(port, "/health").is_some()
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the stack did not serve {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The store entry of `version` under a host root.
fn entry(root: &Path, version: &str) -> PathBuf {
    std::fs::read_dir(root.join("store"))
        .expect("store")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                n.to_string_lossy()
                    .ends_with(&format!("-shop-{version}-amd64"))
            })
        })
        .unwrap_or_else(|| panic!("no store entry of {version}"))
}

/// Replaces the plain-compose directory's files with those of a store entry (same path, as a
/// user editing their files in place would have it).
fn place(dir: &Path, entry: &Path) {
    if dir.exists() {
        smoker_testkit::make_writable(dir);
        std::fs::remove_dir_all(dir).expect("clear");
    }
    std::fs::create_dir_all(dir).expect("mkdir");
    let out = Command::new("cp")
        .args(["-r"])
        .arg(entry.join("stack"))
        .arg(entry.join("generated"))
        .arg(entry.join("config"))
        .arg(dir)
        .output()
        .expect("cp");
    assert!(out.status.success(), "cp: {}", text(&out));
    smoker_testkit::make_writable(dir);
}

/// Plain `compose up -d` of the files in `dir` as project `project`, on other ports.
fn plain_up(frontend: &str, dir: &Path, project: &str, ports: (u16, u16)) -> Duration {
    let mut c = if frontend == "v2" {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    };
    c.arg("-p")
        .arg(project)
        .arg("--project-directory")
        .arg(dir.join("stack"))
        .arg("-f")
        .arg(dir.join("stack/compose.yaml"))
        .arg("-f")
        .arg(dir.join("generated/pin.compose.yaml"))
        .arg("--env-file")
        .arg(dir.join("config/prod.env"))
        .args(["up", "-d"])
        .env("PORT", ports.0.to_string())
        .env("BACKEND_PORT", ports.1.to_string())
        .stdin(Stdio::null());
    let start = Instant::now();
    let out = c.output().expect("compose");
    let took = start.elapsed();
    assert!(out.status.success(), "plain compose up: {}", text(&out));
    took
}

fn bench(frontend: &str) {
    let mut bed = Testbed::new();
    let shop = Shop::new(&mut bed);
    let host = bed.host(Some(frontend));
    let p = host.project.clone();
    let (port, bport) = (shop.port, shop.backend_port);

    let out = host.apply(&shop.project, &shop.v1);
    assert!(out.status.success(), "apply 1.0.0: {}", text(&out));
    let (db, front) = (container(&p, "db"), container(&p, "frontend"));
    let start = Instant::now();
    let out = host.apply_with(&shop.project, &shop.v2, &["--json"], None);
    let apply_change = start.elapsed();
    assert!(out.status.success(), "apply 2.0.0: {}", text(&out));
    let apply_steps = steps(&out);
    let db_kept = container(&p, "db") == db;
    let front_kept = container(&p, "frontend") == front;

    // Plain compose, same change, in a stable directory.
    let plain = smoker_testkit::tempdir("plain-compose-");
    let dir = plain.path().join("app");
    let raw = bed.cleanup.compose_project(&unique_name("plain"));
    let raw_ports = (free_port(), free_port());
    place(&dir, &entry(host.root(), "1.0.0"));
    plain_up(frontend, &dir, &raw, raw_ports);
    wait_serving(raw_ports.0, raw_ports.1, "backend-1");
    let raw_db = container(&raw, "db");
    place(&dir, &entry(host.root(), "2.0.0"));
    let plain_change = plain_up(frontend, &dir, &raw, raw_ports);
    let plain_change_serving = plain_change + wait_serving(raw_ports.0, raw_ports.1, "backend-2");
    let raw_db_kept = container(&raw, "db") == raw_db;

    // The broken backend.
    let start = Instant::now();
    let out = host.apply(&shop.project, &shop.v3);
    let failed_apply = start.elapsed();
    assert!(!out.status.success(), "3.0.0 must fail");
    let decided = decided_ms(&String::from_utf8_lossy(&out.stderr))
        .unwrap_or_else(|| panic!("no decision time: {}", text(&out)));

    // Manual rollback to 1.0.0 against plain compose going back to the 1.0.0 files.
    let start = Instant::now();
    let out = host.run(&["rollback", "--to", "1", "--json"]);
    let rollback = start.elapsed();
    assert!(out.status.success(), "rollback: {}", text(&out));
    let rollback_steps = steps(&out);
    assert_eq!(answer(bport, "/version").as_deref(), Some("backend-1"));
    place(&dir, &entry(host.root(), "1.0.0"));
    let plain_back = plain_up(frontend, &dir, &raw, raw_ports);
    let plain_back_serving = plain_back + wait_serving(raw_ports.0, raw_ports.1, "backend-1");
    let _ = port;

    println!("compose {frontend}:");
    println!(
        "  apply of a backend-only change      {:>6} ms  (db kept: {db_kept}, frontend kept: {front_kept}; steps ms: {apply_steps})",
        ms(apply_change)
    );
    println!(
        "  plain compose up -d, same change    {:>6} ms  until it returned, {:>6} ms until serving (db kept: {raw_db_kept})",
        ms(plain_change),
        ms(plain_change_serving)
    );
    println!(
        "  broken backend: gate decided        {decided:>6} ms  after its new container started"
    );
    println!(
        "  failed apply + automatic rollback   {:>6} ms",
        ms(failed_apply)
    );
    println!(
        "  manual rollback (to 1.0.0)          {:>6} ms  (steps ms: {rollback_steps})",
        ms(rollback)
    );
    println!(
        "  plain compose up -d, previous files {:>6} ms  until it returned, {:>6} ms until serving",
        ms(plain_back),
        ms(plain_back_serving)
    );
}
