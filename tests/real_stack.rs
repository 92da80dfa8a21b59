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

use smoker_build::lock::Lock;
use smoker_testkit::docker::docker;
use smoker_testkit::project::Release;
use smoker_testkit::stack::{INIT_SCRIPT, RECIPE, Shop, answer, container, decided_ms, locked};
use smoker_testkit::{Project, Testbed, per_frontend, text, wait_for};
use std::time::Duration;

/// `out` (a command that switched the stack) succeeded and the backend serves `backend`.
fn serving(
    frontend: &str,
    what: &str,
    out: &std::process::Output,
    backend_port: u16,
    backend: &str,
) {
    assert!(out.status.success(), "[{frontend}] {what}: {}", text(out));
    assert_eq!(
        answer(backend_port, "/version").as_deref(),
        Some(backend),
        "[{frontend}] {what}"
    );
}

fn real_stack(frontend: &str) {
    let mut bed = Testbed::new();
    let Shop {
        project,
        backend_port,
        v1,
        v2,
        v3,
        ..
    } = Shop::new(&mut bed);
    let host = bed.host(Some(frontend));
    let p = host.project.clone();

    // 1.0.0: the whole stack comes up in dependency order.
    let out = host.apply(&project, &v1);
    serving(frontend, "apply 1.0.0", &out, backend_port, "backend-1");
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
        .map(|e| e.path().join(INIT_SCRIPT.0))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("[{frontend}] no inputs/<key>/init/01-users.js"));
    assert_eq!(
        std::fs::read_to_string(&script).expect("init script"),
        INIT_SCRIPT.1
    );

    // 2.0.0 changes only the backend image: the database keeps its container.
    let out = host.apply(&project, &v2);
    serving(frontend, "apply 2.0.0", &out, backend_port, "backend-2");
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
    let decided: u64 = decided_ms(&err)
        .unwrap_or_else(|| panic!("[{frontend}] the report says when it decided: {err}"));
    assert!(
        decided <= 10_000,
        "[{frontend}] detected {decided} ms after the backend started (goal: 10 s): {err}"
    );
    eprintln!(
        "[{frontend}] broken backend detected {decided} ms after its container started; failed apply + rollback took {took:?}"
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
    serving(
        frontend,
        "rollback with no registry",
        &out,
        backend_port,
        "backend-1",
    );
    assert_eq!(
        container(&p, "db"),
        db_id,
        "[{frontend}] the database survived the rollback"
    );
    assert_eq!(host.status()["current"], 1);
}

per_frontend!(real_stack);

/// `smoker-install preflight --json` of `bundle` on `host`: its output and the check named
/// `name` from its report.
fn preflight_check(
    host: &smoker_testkit::Host,
    project: &Project,
    bundle: &std::path::Path,
    name: &str,
) -> (std::process::Output, serde_json::Value) {
    let out = host
        .cmd()
        .args(["preflight", "--json", "--key"])
        .arg(&project.public_key)
        .arg("--env-file")
        .arg(&project.env_file)
        .arg(bundle)
        .output()
        .expect("preflight");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("preflight JSON: {e}: {}", text(&out)));
    let check = report["data"]["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check: {report}"))
        .clone();
    (out, check)
}

/// Preflight (and so apply) names each feature this host's engine or compose front end cannot
/// run, with the fix, before anything changes.
fn preflight_names_what_this_host_cannot_run(frontend: &str) {
    let mut bed = Testbed::new();
    let project = Project::library();
    project.write_env_file("");
    smoker_testkit::write_file(
        &project.recipe_dir(RECIPE).join("compose.yaml"),
        format!(
            "name: shop\nservices:\n  db:\n    image: {}\n    healthcheck:\n      test: [\"CMD\", \"/testsvc\", \"probe\", \"http://127.0.0.1:8080/health\"]\n      start_period: 30s\n      start_interval: 2s\n",
            bed.image.reference
        ),
    );
    smoker_testkit::write_file(
        &project.recipe_dir(RECIPE).join("recipe.toml"),
        "[env.prod.config]\n",
    );
    let lock = Lock {
        version: 1,
        images: vec![locked(&bed.image)],
    };
    smoker_testkit::write_file(&Lock::path(&project.recipes(), RECIPE), lock.to_toml());
    let bundle = project.release(&Release::new(RECIPE, "1.0.0")).bundle;
    let host = bed.host(Some(frontend));
    let (out, capabilities) = preflight_check(&host, &project, &bundle, "capabilities");
    let detail = capabilities["detail"].as_str().unwrap_or_default();
    let engine = docker(&["version", "--format", "{{.Server.Version}}"]);
    let old_engine = smoker_format::capability::engine_version(&engine)
        .is_some_and(|v| v < smoker_format::capability::START_INTERVAL_ENGINE);
    assert_eq!(
        detail.contains("service `db`: healthcheck `start_interval` needs Docker Engine 25.0"),
        old_engine,
        "[{frontend}] engine {engine}: {detail}"
    );
    assert_eq!(
        detail.contains("top-level `name:`"),
        frontend == "v1",
        "[{frontend}] {detail}"
    );
    assert_eq!(
        capabilities["ok"] == true,
        !old_engine && frontend == "v2",
        "[{frontend}] {capabilities}"
    );
    if capabilities["ok"] == false {
        assert!(!out.status.success(), "[{frontend}] {}", text(&out));
        let apply = host.apply(&project, &bundle);
        assert!(
            !apply.status.success(),
            "[{frontend}] apply must refuse too"
        );
        assert!(
            !host
                .root()
                .join("profiles")
                .join(RECIPE)
                .join("current")
                .exists(),
            "[{frontend}] nothing was switched"
        );
    }
}

/// A second host root (or profile) never takes over a compose project another one runs.
fn a_second_root_is_refused_on_a_foreign_project(frontend: &str) {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let first = bed.host(Some(frontend));
    let out = first.apply(&project, &v1);
    assert!(
        out.status.success(),
        "[{frontend}] first root: {}",
        text(&out)
    );
    let before = container(&first.project, "web");

    let second = bed.host(Some(frontend));
    let out = second
        .cmd()
        .args(["apply", "--key"])
        .arg(&project.public_key)
        .arg("--env-file")
        .arg(&project.env_file)
        .arg("--project")
        .arg(&first.project)
        .arg(&v1)
        .output()
        .expect("apply");
    assert!(!out.status.success(), "[{frontend}] {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "compose project `{}` belongs to another installer",
            first.project
        )) && err.contains(&first.root().display().to_string())
            && err.contains(&second.root().display().to_string()),
        "[{frontend}] names both roots: {err}"
    );
    assert_eq!(
        container(&first.project, "web"),
        before,
        "[{frontend}] untouched"
    );
}

per_frontend!(
    preflight_names_what_this_host_cannot_run,
    a_second_root_is_refused_on_a_foreign_project
);

/// An online bundle whose image is not on the host and whose registry does not answer is
/// refused by preflight, naming the registry and the way out, before anything switches.
#[test]
fn preflight_says_when_a_pull_needs_a_registry_that_does_not_answer() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let host = bed.host(None);
    smoker_testkit::images::remove_image(&image.id);
    let registry = bed.registry.host();
    bed.registry.stop();
    let (out, check) = preflight_check(&host, &project, &v1, "registries");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(check["ok"], false, "{check}");
    let detail = check["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&registry) && detail.contains("web") && detail.contains("offline bundle"),
        "{detail}"
    );
    let out = host.apply(&project, &v1);
    assert!(!out.status.success());
    assert!(
        !host.root().join("profiles/svc/current").exists(),
        "nothing was switched"
    );
}
