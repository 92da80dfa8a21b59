//! A stack shaped like the users' (a database with a bind-mounted init directory, a named
//! volume and a Docker health check; a backend and a frontend each waiting on the one before as
//! `service_healthy`; health checks every 10 s; `pull_policy: always` everywhere), under both
//! Compose front ends, on the real engine:
//!
//! - a release that changes only the backend leaves the database's container alone;
//! - a backend that answers its health URL wrongly is caught by the installer's own gate within
//!   seconds of its container starting (not by compose timing out), named, and rolled back;
//! - a manual rollback works with the registry stopped, although the compose file says
//!   `pull_policy: always`.

use smoker_build::lock::{Lock, LockedImage, PlatformPin};
use smoker_format::manifest::Arch;
use smoker_testkit::docker::docker;
use smoker_testkit::images::{Pushed, unique_testsvc};
use smoker_testkit::ports::free_port;
use smoker_testkit::project::Release;
use smoker_testkit::{Project, Testbed, per_frontend, text, unique_name, wait_for};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

const RECIPE: &str = "shop";

/// The compose file, as untidy as users write them.
fn compose(db: &str, backend_repo: &str, frontend: &str) -> String {
    let check = r#"    healthcheck:
      test: ["CMD", "/testsvc", "probe", "http://127.0.0.1:8080/health"]
      interval: 10s
      timeout: 3s
      retries: 3
      start_period: 30s
    stop_grace_period: 1s
"#;
    format!(
        r#"services:
  db:
    image: {db}
    pull_policy: always
    environment:
      TESTSVC_DATA: /data
    volumes:
      - ./init:/docker-entrypoint-initdb.d:ro
      - dbdata:/data
{check}  backend:
    image: {backend_repo}:${{BACKEND_TAG}}
    pull_policy: always
    environment:
      TESTSVC_VERSION: backend-${{BACKEND_TAG}}
      TESTSVC_UNHEALTHY: ${{BACKEND_UNHEALTHY:-0}}
    depends_on:
      db:
        condition: service_healthy
    ports:
      - "127.0.0.1:${{BACKEND_PORT}}:8080"
{check}  frontend:
    image: {frontend}
    pull_policy: always
    environment:
      TESTSVC_VERSION: frontend
    depends_on:
      backend:
        condition: service_healthy
    ports:
      - "127.0.0.1:${{PORT}}:8080"
{check}volumes:
  dbdata:
"#
    )
}

fn recipe(port: u16, backend_port: u16, backend_tag: &str, unhealthy: bool) -> String {
    format!(
        r#"[health]
window_secs = 120
failures = 3
interval_ms = 1000
successes = 2

[[health.http]]
name = "backend"
service = "backend"
url = "http://127.0.0.1:${{BACKEND_PORT}}/health"
body_contains = "ok"
timeout_ms = 1000

[[health.http]]
name = "frontend"
service = "frontend"
url = "http://127.0.0.1:${{PORT}}/health"
body_contains = "ok"
timeout_ms = 1000

[env.prod.config]
PORT = "{port}"
BACKEND_PORT = "{backend_port}"
BACKEND_TAG = "{backend_tag}"
BACKEND_UNHEALTHY = "{}"
"#,
        if unhealthy { "1" } else { "0" }
    )
}

fn locked(image: &Pushed) -> LockedImage {
    LockedImage {
        reference: image.reference.clone(),
        index_digest: None,
        platforms: BTreeMap::from([(
            Arch::Amd64,
            PlatformPin {
                digest: image.digest.clone(),
                config_digest: Some(image.id.clone()),
            },
        )]),
    }
}

/// The container ID of `service` in `project`.
fn container(project: &str, service: &str) -> String {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
}

fn answer(port: u16, path: &str) -> Option<String> {
    smoker_testkit::http::get(&format!("http://127.0.0.1:{port}{path}"))
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
}

fn real_stack(frontend: &str) {
    let mut bed = Testbed::new();
    let db = unique_testsvc(&bed.registry, &mut bed.cleanup, &unique_name("db"), "1");
    let repo = unique_name("backend");
    let backend1 = unique_testsvc(&bed.registry, &mut bed.cleanup, &repo, "1");
    let backend2 = unique_testsvc(&bed.registry, &mut bed.cleanup, &repo, "2");
    let front = unique_testsvc(&bed.registry, &mut bed.cleanup, &unique_name("front"), "1");
    let (port, backend_port) = (bed.port, free_port());

    let project = Project::library();
    project.write_env_file("");
    let dir = project.recipe_dir(RECIPE);
    smoker_testkit::write_file(
        &dir.join("compose.yaml"),
        compose(
            &db.reference,
            &format!("{}/{repo}", bed.registry.host()),
            &front.reference,
        ),
    );
    smoker_testkit::write_file(&dir.join("init/01-users.js"), "db.createUser({})\n");
    let lock = Lock {
        version: 1,
        images: [&db, &backend1, &backend2, &front]
            .into_iter()
            .map(locked)
            .collect(),
    };
    smoker_testkit::write_file(&Lock::path(&project.recipes(), RECIPE), lock.to_toml());
    let release = |version: &str, tag: &str, unhealthy: bool| -> PathBuf {
        smoker_testkit::write_file(
            &dir.join("recipe.toml"),
            recipe(port, backend_port, tag, unhealthy),
        );
        project.release(&Release::new(RECIPE, version)).bundle
    };
    let v1 = release("1.0.0", "1", false);
    let v2 = release("2.0.0", "2", false);
    let v3 = release("3.0.0", "2", true);
    let host = bed.host(Some(frontend));
    let p = host.project.clone();

    // 1.0.0: the whole stack comes up in dependency order.
    let out = host.apply(&project, &v1);
    assert!(
        out.status.success(),
        "[{frontend}] apply 1.0.0: {}",
        text(&out)
    );
    assert_eq!(
        answer(backend_port, "/version").as_deref(),
        Some("backend-1")
    );
    let db_id = container(&p, "db");
    assert!(!db_id.is_empty());
    let mounts = docker(&["inspect", "--format", "{{json .Mounts}}", &db_id]);
    assert!(
        mounts.contains(&format!("{}/inputs/", host.root().display()))
            && mounts.contains("/docker-entrypoint-initdb.d"),
        "[{frontend}] the init directory is mounted from its content address: {mounts}"
    );
    let script = std::fs::read_dir(host.root().join("inputs"))
        .expect("inputs/")
        .flatten()
        .map(|e| e.path().join("init/01-users.js"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("[{frontend}] no inputs/<key>/init/01-users.js"));
    assert_eq!(
        std::fs::read_to_string(&script).expect("init script"),
        "db.createUser({})\n"
    );

    // 2.0.0 changes only the backend image: the database keeps its container.
    let out = host.apply(&project, &v2);
    assert!(
        out.status.success(),
        "[{frontend}] apply 2.0.0: {}",
        text(&out)
    );
    assert_eq!(
        answer(backend_port, "/version").as_deref(),
        Some("backend-2")
    );
    assert_eq!(
        container(&p, "db"),
        db_id,
        "[{frontend}] the unchanged database was recreated by a backend-only release"
    );

    // 3.0.0: the backend answers 503 on its health URL. The installer's own gate catches it
    // within seconds of the backend's container starting, names the backend, stops compose
    // (which would wait for the backend's Docker health check to give up) and rolls back.
    let started = std::time::Instant::now();
    let out = host.apply(&project, &v3);
    let took = started.elapsed();
    assert!(
        !out.status.success(),
        "[{frontend}] 3.0.0 must fail: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("service `backend`"),
        "[{frontend}] names the backend: {err}"
    );
    assert!(err.contains("503"), "[{frontend}] says what it saw: {err}");
    assert!(err.contains("rolled back"), "[{frontend}] {err}");
    let decided_ms: u64 = err
        .split("decided ")
        .nth(1)
        .and_then(|s| s.split(" ms after").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("[{frontend}] the report says when it decided: {err}"));
    assert!(
        decided_ms <= 10_000,
        "[{frontend}] detected {decided_ms} ms after the backend started (goal: 10 s): {err}"
    );
    eprintln!(
        "[{frontend}] broken backend detected {decided_ms} ms after its container started; failed apply + rollback took {took:?}"
    );
    wait_for(
        "the backend of 2.0.0 to answer again",
        Duration::from_secs(60),
        || (answer(backend_port, "/version").as_deref() == Some("backend-2")).then_some(()),
    );
    assert_eq!(
        container(&p, "db"),
        db_id,
        "[{frontend}] the database survived the rollback"
    );
    assert_eq!(host.status()["current"], 2);

    // Manual rollback to 1.0.0 with the registry gone: nothing is pulled, although every
    // service says `pull_policy: always`.
    bed.registry.stop();
    let out = host.run(&["rollback", "--to", "1"]);
    assert!(
        out.status.success(),
        "[{frontend}] rollback with no registry: {}",
        text(&out)
    );
    assert_eq!(
        answer(backend_port, "/version").as_deref(),
        Some("backend-1")
    );
    assert_eq!(
        container(&p, "db"),
        db_id,
        "[{frontend}] the database survived the rollback"
    );
    assert_eq!(host.status()["current"], 1);
}

per_frontend!(real_stack);
