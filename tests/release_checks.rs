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
