//! Release-time checks of a real project, through the `xtask` CLI: the release version flowing
//! into image tags through the recipe's `version_var` (a tag missing from the lock named with
//! the command that locks it, `release --lock` locking it on the fly), and the compose file
//! checked by the compose front end itself, with warnings for what undermines pinning.

use smoker_build::lock::Lock;
use smoker_format::manifest::Arch;
use smoker_testkit::bundle::extract_from_bundle;
use smoker_testkit::docker::require_docker;
use smoker_testkit::images::unique_testsvc;
use smoker_testkit::project::docker_health_recipe;
use smoker_testkit::{Cleanup, Project, Registry, stderr, stdout, text};
use std::process::Output;

/// `xtask release` of recipe `recipe` `version` for amd64/prod into `out/<version>`, plus
/// `extra` arguments. Not checked.
fn release(ws: &Project, recipe: &str, version: &str, extra: &[&str]) -> Output {
    let dir = ws.path().display().to_string();
    let key = ws.key.display().to_string();
    let out = ws.path().join("out").join(version).display().to_string();
    let mut args = vec![
        "release",
        "--project-dir",
        &dir,
        "--recipe",
        recipe,
        "--arch",
        "amd64",
        "--env",
        "prod",
        "--secret-key",
        &key,
        "--version",
        version,
        "--out",
        &out,
    ];
    args.extend(extra);
    ws.xtask(&args, &[])
}

#[test]
fn the_release_version_flows_into_image_tags_and_missing_tags_are_locked_on_demand() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let v1 = unique_testsvc(&registry, &mut cleanup, "app", "1.2.0");
    let v2 = unique_testsvc(&registry, &mut cleanup, "app", "1.3.0");
    assert_ne!(v1.digest, v2.digest);

    let ws = Project::cli();
    let compose = format!(
        "services:\n  app:\n    image: {}/app:${{VERSION:-latest}}\n    labels:\n      release: \"${{VERSION:-none}}\"\n",
        registry.host()
    );
    let recipe = format!(
        "version_var = \"VERSION\"\n{}",
        docker_health_recipe(8080, "v1", "prod")
    );
    ws.write_recipe("ver", &compose, &recipe);

    let out = ws.lock(&["--arch", "amd64", "--version", "1.2.0"]);
    assert!(out.status.success(), "lock 1.2.0: {}", text(&out));
    let out = release(&ws, "ver", "1.2.0", &[]);
    assert!(out.status.success(), "release 1.2.0: {}", text(&out));
    let b1 = ws.bundle("out/1.2.0", "prod", "ver", "1.2.0", "amd64");
    let m = smoker_format::bundle::read::inspect_file(&b1)
        .expect("bundle verifies")
        .manifest;
    assert_eq!(m.images[0].original, v1.reference, "the tag is the version");
    assert_eq!(m.images[0].digest, v1.digest);
    let env = ws.path().join("prod.env");
    extract_from_bundle(&b1, "config/prod.env", &env);
    let env = std::fs::read_to_string(&env).expect("env file");
    assert!(
        env.lines().any(|l| l == "VERSION=1.2.0"),
        "the host's compose sees the version too: {env}"
    );

    // 1.3.0 is not locked: the error names the tag and the command that locks it.
    let out = release(&ws, "ver", "1.3.0", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("`{}`", v2.reference))
            && err.contains("cargo xtask lock --recipe ver --version 1.3.0"),
        "{err}"
    );
    assert!(
        !ws.bundle("out/1.3.0", "prod", "ver", "1.3.0", "amd64")
            .exists()
    );

    // `--lock` resolves it while releasing and prints the lock diff.
    let out = release(&ws, "ver", "1.3.0", &["--lock"]);
    assert!(out.status.success(), "release --lock: {}", text(&out));
    assert!(
        stdout(&out).contains(&format!("+ {}", v2.reference)),
        "the lock diff: {}",
        text(&out)
    );
    let b2 = ws.bundle("out/1.3.0", "prod", "ver", "1.3.0", "amd64");
    let m = smoker_format::bundle::read::inspect_file(&b2)
        .expect("bundle verifies")
        .manifest;
    assert_eq!(m.images[0].original, v2.reference);
    assert_eq!(m.images[0].digest, v2.digest);
    assert_eq!(m.images[0].config_digest.as_deref(), Some(v2.id.as_str()));
    // The lock keeps 1.2.0, so that release can still be rebuilt.
    let lock = Lock::load(&Lock::path(&ws.recipes(), "ver"), "ver").expect("lock");
    for v in [&v1, &v2] {
        assert_eq!(
            lock.get(&v.reference, Arch::Amd64)
                .map(|(_, p)| p.digest.as_str()),
            Some(v.digest.as_str())
        );
    }
    // A second `--lock` release asks for nothing new.
    let out = release(&ws, "ver", "1.3.0", &["--lock"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stderr(&out).contains("resolving"), "{}", text(&out));
}

/// A project whose recipe `app` runs `compose` with every image it names locked (placeholder
/// digests: nothing is pulled).
fn locked_project(compose: &str, images: &[&str]) -> Project {
    let ws = Project::cli();
    ws.write_recipe("app", compose, &docker_health_recipe(8080, "v1", "prod"));
    let mut lock = Lock {
        version: 1,
        images: Vec::new(),
    };
    for (n, image) in images.iter().enumerate() {
        let one = smoker_testkit::project::single_image_lock(
            image,
            Arch::Amd64,
            &format!(
                "sha256:{}",
                format!("{n:x}").repeat(64).get(..64).unwrap_or("")
            ),
            &format!("sha256:{}", "c".repeat(64)),
        );
        lock.images.extend(one.images);
    }
    smoker_testkit::write_file(&Lock::path(&ws.recipes(), "app"), lock.to_toml());
    ws
}

#[test]
fn release_refuses_a_compose_file_the_compose_front_end_rejects() {
    // Valid YAML with an image per service, so release's own reading accepts it; compose
    // refuses a dependency on a service that does not exist.
    let ws = locked_project(
        "services:\n  app:\n    image: reg.example/app:1\n    depends_on:\n      - database\n",
        &["reg.example/app:1"],
    );
    let out = release(&ws, "app", "1.0.0", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("config` rejects the compose files of `app` (prod)")
            && err.contains("database"),
        "compose's own error is shown: {err}"
    );
    assert!(
        !ws.bundle("out/1.0.0", "prod", "app", "1.0.0", "amd64")
            .exists(),
        "no bundle is written"
    );

    // The same project with the dependency defined releases.
    let fixed = locked_project(
        "services:\n  app:\n    image: reg.example/app:1\n    depends_on:\n      - database\n  database:\n    image: reg.example/db:1\n",
        &["reg.example/app:1", "reg.example/db:1"],
    );
    let out = release(&fixed, "app", "1.0.0", &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn release_warns_about_docker_socket_and_pull_always_and_explains_escaping_paths() {
    let ws = locked_project(
        "services:\n  app:\n    image: reg.example/app:1\n    pull_policy: always\n  watchtower:\n    image: containrrr/watchtower:1.7.1\n    volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n",
        &["reg.example/app:1", "containrrr/watchtower:1.7.1"],
    );
    let out = release(&ws, "app", "1.0.0", &[]);
    assert!(out.status.success(), "warnings do not fail: {}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: recipe `app` (prod): service `watchtower` mounts the Docker socket (/var/run/docker.sock)")
            && err.contains("remove the service"),
        "{err}"
    );
    assert!(
        err.contains("service `app` has `pull_policy: always`") && err.contains("remove it"),
        "{err}"
    );
    // The lock canonicalises Docker Hub names; the compose file's short form still finds it.
    let m = smoker_format::bundle::read::inspect_file(&ws.bundle(
        "out/1.0.0",
        "prod",
        "app",
        "1.0.0",
        "amd64",
    ))
    .expect("bundle verifies")
    .manifest;
    assert!(
        m.images
            .iter()
            .any(|i| i.repository == "docker.io/containrrr/watchtower"),
        "{:?}",
        m.images
    );

    // A data directory outside the recipe: refused, with the ways out.
    let escaping = locked_project(
        "services:\n  app:\n    image: reg.example/app:1\n    volumes:\n      - ./../../../../database:/data/db\n",
        &["reg.example/app:1"],
    );
    let out = release(&escaping, "app", "1.0.0", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("escapes the recipe directory")
            && err.contains("named volume")
            && err.contains("bind_mounts"),
        "{err}"
    );
}

#[test]
fn release_without_a_compose_front_end_fails_and_says_what_to_install() {
    let ws = locked_project(
        "services:\n  app:\n    image: reg.example/app:1\n",
        &["reg.example/app:1"],
    );
    // Neither `docker` nor `docker-compose` can be found.
    let empty = smoker_testkit::tempdir("smoker-test-empty-path-");
    let path = empty.path().display().to_string();
    let dir = ws.path().display().to_string();
    let key = ws.key.display().to_string();
    let out_dir = ws.path().join("out").display().to_string();
    let args = [
        "release",
        "--project-dir",
        &dir,
        "--recipe",
        "app",
        "--arch",
        "amd64",
        "--env",
        "prod",
        "--secret-key",
        &key,
        "--version",
        "1.0.0",
        "--out",
        &out_dir,
    ];
    let out = ws.xtask(&args, &[("PATH", &path), ("SMOKER_COMPOSE", "")]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("neither `docker compose` (v2) nor `docker-compose` (v1) is installed")
            && err.contains("docker-compose-plugin"),
        "{err}"
    );
    // A front end named that does not exist is refused too.
    let out = ws.xtask(&args, &[("SMOKER_COMPOSE", "v3")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("SMOKER_COMPOSE=`v3`"),
        "{}",
        text(&out)
    );
    assert!(!ws.path().join("out").join("prod").exists(), "no bundle");
}
