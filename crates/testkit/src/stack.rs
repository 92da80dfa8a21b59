//! A stack shaped like the users' real ones, for the scenario tests and the benchmark: a
//! database-like service with a bind-mounted init directory, a named volume and a Docker health
//! check; a backend and a frontend each waiting on the one before as `service_healthy`; health
//! checks every 10 s; `pull_policy: always` everywhere (as users write it). Every service runs
//! the test service image; the backend's tag and health come from the environment's config.

use crate::images::{Pushed, unique_testsvc};
use crate::project::Release;
use crate::{Project, Testbed, unique_name};
use smoker_build::lock::{Lock, LockedImage, PlatformPin};
use smoker_format::manifest::Arch;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The recipe (and profile) name of the stack.
pub const RECIPE: &str = "shop";

/// The init script the database's bind-mounted init directory holds.
pub const INIT_SCRIPT: (&str, &str) = ("init/01-users.js", "db.createUser({})\n");

/// The three-service compose file.
pub fn compose(db: &str, backend_repo: &str, frontend: &str) -> String {
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

/// The recipe: gate of 120 s, 3 failures, 1 s interval, 2 successes; one HTTP check per
/// published service, tied to it; config `PORT`, `BACKEND_PORT`, `BACKEND_TAG`,
/// `BACKEND_UNHEALTHY`.
pub fn recipe(port: u16, backend_port: u16, backend_tag: &str, unhealthy: bool) -> String {
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

/// A lock entry pinning `image` for amd64.
pub fn locked(image: &Pushed) -> LockedImage {
    LockedImage {
        reference: image.reference.clone(),
        index_digest: None,
        mirror: None,
        platforms: BTreeMap::from([(
            Arch::Amd64,
            PlatformPin {
                digest: image.digest.clone(),
                config_digest: Some(image.id.clone()),
            },
        )]),
    }
}

/// The stack's project with its images pushed and locked, and its three releases.
pub struct Shop {
    /// The project (library driver) holding the recipe.
    pub project: Project,
    /// Frontend port.
    pub port: u16,
    /// Backend port.
    pub backend_port: u16,
    /// 1.0.0: backend tag 1.
    pub v1: PathBuf,
    /// 2.0.0: only the backend changes (tag 2).
    pub v2: PathBuf,
    /// 3.0.0: the backend answers 503 on its health URL.
    pub v3: PathBuf,
}

impl Shop {
    /// Builds and pushes the images (db, backend 1 and 2, frontend), writes the recipe and
    /// lock, and releases the three versions.
    pub fn new(bed: &mut Testbed) -> Shop {
        let db = unique_testsvc(&bed.registry, &mut bed.cleanup, &unique_name("db"), "1");
        let repo = unique_name("backend");
        let backend1 = unique_testsvc(&bed.registry, &mut bed.cleanup, &repo, "1");
        let backend2 = unique_testsvc(&bed.registry, &mut bed.cleanup, &repo, "2");
        let front = unique_testsvc(&bed.registry, &mut bed.cleanup, &unique_name("front"), "1");
        let (port, backend_port) = (bed.port, crate::ports::free_port());
        let project = Project::library();
        project.write_env_file("");
        let dir = project.recipe_dir(RECIPE);
        crate::write_file(
            &dir.join("compose.yaml"),
            compose(
                &db.reference,
                &format!("{}/{repo}", bed.registry.host()),
                &front.reference,
            ),
        );
        crate::write_file(&dir.join(INIT_SCRIPT.0), INIT_SCRIPT.1);
        let lock = Lock {
            version: 1,
            images: [&db, &backend1, &backend2, &front]
                .into_iter()
                .map(locked)
                .collect(),
        };
        crate::write_file(&Lock::path(&project.recipes(), RECIPE), lock.to_toml());
        let release = |version: &str, tag: &str, unhealthy: bool| -> PathBuf {
            crate::write_file(
                &dir.join("recipe.toml"),
                recipe(port, backend_port, tag, unhealthy),
            );
            project.release(&Release::new(RECIPE, version)).bundle
        };
        let v1 = release("1.0.0", "1", false);
        let v2 = release("2.0.0", "2", false);
        let v3 = release("3.0.0", "2", true);
        Shop {
            project,
            port,
            backend_port,
            v1,
            v2,
            v3,
        }
    }
}

/// The container ID of `service` in compose project `project` (empty when none runs).
pub fn container(project: &str, service: &str) -> String {
    crate::docker::docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        &format!("label=com.docker.compose.service={service}"),
    ])
}

/// The body of `GET http://127.0.0.1:<port><path>` when it answers 200.
pub fn answer(port: u16, path: &str) -> Option<String> {
    crate::http::get(&format!("http://127.0.0.1:{port}{path}"))
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
}

/// The "decided N ms after its new container started" figure of a failed apply's output.
pub fn decided_ms(output: &str) -> Option<u64> {
    output
        .split("decided ")
        .nth(1)
        .and_then(|s| s.split(" ms after").next())
        .and_then(|s| s.parse().ok())
}
