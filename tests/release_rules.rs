//! Release-time rules: every relative reference is carried or refused with a message naming
//! the file and the service, unlocked images are refused, and the user's compose file travels
//! byte for byte while a generated override pins every image by digest.

use smoker_build::lock::{Lock, LockedImage, PlatformPin};
use smoker_build::recipe::Recipe;
use smoker_build::release::{self, SourceInfo};
use smoker_format::manifest::Arch;
use std::collections::BTreeMap;
use std::path::Path;

const DIGEST_A: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DIGEST_B: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(path, text).expect("write");
}

/// A recipe `app` in a temp project; `compose` is its compose file.
fn project(compose: &str, arches: &[Arch]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path().join("recipes/app");
    write(&r.join("recipe.toml"), "[env.prod.config]\nTAG = \"2\"\n");
    write(&r.join("compose.yaml"), compose);
    let platforms = |d: &str| -> BTreeMap<Arch, PlatformPin> {
        arches
            .iter()
            .map(|a| {
                (
                    *a,
                    PlatformPin {
                        digest: d.to_string(),
                        config_digest: Some(format!("sha256:{}", "c".repeat(64))),
                    },
                )
            })
            .collect()
    };
    let lock = Lock {
        version: 1,
        images: vec![
            LockedImage {
                reference: "reg.example/web:2".into(),
                mirror: None,
                index_digest: None,
                platforms: platforms(DIGEST_A),
            },
            LockedImage {
                reference: "reg.example/db:7".into(),
                mirror: None,
                index_digest: None,
                platforms: platforms(DIGEST_B),
            },
        ],
    };
    write(&dir.path().join("recipes/app.lock"), &lock.to_toml());
    dir
}

fn plan(dir: &Path, arch: Arch) -> Result<release::Plan, String> {
    let recipes = dir.join("recipes");
    let recipe = Recipe::load(&recipes, "app").map_err(|e| e.to_string())?;
    let lock_path = recipes.join("app.lock");
    let lock = Lock::load(&lock_path, "app").map_err(|e| e.to_string())?;
    let source = SourceInfo {
        commit: None,
        dirty: true,
        recipe_dir: "recipes/app".into(),
        epoch: 1,
    };
    release::plan(
        &recipe,
        &lock,
        &lock_path,
        arch,
        "prod",
        &semver::Version::new(1, 0, 0),
        &source,
    )
    .map_err(|e| e.to_string())
}

const COMPOSE: &str = r#"# comments, anchors and interpolation must survive
x-common: &common
  restart: unless-stopped
services:
  web:
    <<: *common
    image: reg.example/web:${TAG:-1}
    volumes:
      - ./conf:/etc/web:ro
    env_file: ./web.env
  db:
    <<: *common
    image: reg.example/db:7
    volumes:
      - ./init/01.js:/docker-entrypoint-initdb.d/01.js:ro
      - data:/data
volumes:
  data:
"#;

fn with_files(dir: &Path) {
    let r = dir.join("recipes/app");
    write(&r.join("conf/web.toml"), "port = 80\n");
    write(&r.join("conf/sub/extra.txt"), "x\n");
    write(&r.join("web.env"), "A=1\n");
    write(&r.join("init/01.js"), "db.x.insert({})\n");
}

#[test]
fn references_are_carried_and_images_pinned_by_an_override() {
    let dir = project(COMPOSE, &[Arch::Amd64, Arch::Armv7]);
    with_files(dir.path());
    let p = plan(dir.path(), Arch::Armv7).expect("plan");
    let paths: Vec<&str> = p.manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "config/prod.env",
            "generated/pin.compose.yaml",
            "stack/compose.yaml",
            "stack/conf/sub/extra.txt",
            "stack/conf/web.toml",
            "stack/init/01.js",
            "stack/web.env",
        ]
    );
    // The compose file travels byte for byte.
    let compose = p
        .payload
        .iter()
        .find(|(e, _)| e.path == "stack/compose.yaml")
        .expect("compose");
    let bytes = match &compose.1 {
        smoker_format::bundle::write::Payload::File(f) => std::fs::read(f).expect("read"),
        smoker_format::bundle::write::Payload::Bytes(b) => b.clone(),
    };
    assert_eq!(bytes, COMPOSE.as_bytes());
    // The override pins every service by digest; no tag survives.
    let pin = p
        .payload
        .iter()
        .find(|(e, _)| e.path == "generated/pin.compose.yaml")
        .expect("pin");
    let smoker_format::bundle::write::Payload::Bytes(pin) = &pin.1 else {
        panic!("generated in memory")
    };
    let v: serde_json::Value = serde_json::from_slice(pin).expect("override is JSON");
    assert_eq!(
        v["services"]["web"]["image"],
        format!("reg.example/web@{DIGEST_A}")
    );
    assert_eq!(
        v["services"]["db"]["image"],
        format!("reg.example/db@{DIGEST_B}")
    );
    // The interpolated tag (TAG=2 from the environment's config) chose the lock entry.
    let web = p
        .manifest
        .images
        .iter()
        .find(|i| i.service == "web")
        .expect("web");
    assert_eq!(web.original, "reg.example/web:2");
    assert_eq!(p.manifest.arch, Arch::Armv7);
}

#[test]
fn a_missing_reference_names_the_file_and_the_service() {
    let dir = project(COMPOSE, &[Arch::Amd64]);
    with_files(dir.path());
    std::fs::remove_file(dir.path().join("recipes/app/init/01.js")).expect("rm");
    let err = plan(dir.path(), Arch::Amd64).expect_err("must fail");
    assert!(
        err.contains("service `db`")
            && err.contains("./init/01.js")
            && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn a_reference_escaping_the_recipe_is_refused() {
    let dir = project(
        &COMPOSE.replace("./conf:/etc/web", "../../secrets:/etc/web"),
        &[Arch::Amd64],
    );
    with_files(dir.path());
    let err = plan(dir.path(), Arch::Amd64).expect_err("must fail");
    assert!(
        err.contains("service `web`") && err.contains("escapes the recipe directory"),
        "{err}"
    );

    // Also through a symlink inside the recipe.
    let dir = project(COMPOSE, &[Arch::Amd64]);
    with_files(dir.path());
    let outside = dir.path().join("outside.txt");
    write(&outside, "secret\n");
    let link = dir.path().join("recipes/app/conf/link.txt");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    let err = plan(dir.path(), Arch::Amd64).expect_err("must fail");
    assert!(
        err.contains("service `web`") && err.contains("escapes the recipe directory"),
        "{err}"
    );
}

#[test]
fn an_image_not_locked_for_the_architecture_is_refused_by_name() {
    let dir = project(COMPOSE, &[Arch::Amd64]);
    with_files(dir.path());
    assert!(plan(dir.path(), Arch::Amd64).is_ok());
    let err = plan(dir.path(), Arch::Armv7).expect_err("must fail");
    assert!(
        err.contains("reg.example/") && err.contains("armv7") && err.contains("service `"),
        "{err}"
    );
}

#[test]
fn what_services_ask_of_the_host_is_signed_in_the_manifest() {
    let compose = r#"services:
  web:
    image: reg.example/web:${TAG:-1}
    privileged: true
    volumes:
      - /var/run/docker.sock:/var/run/docker.sock
      - /srv/web:/data
  db:
    image: reg.example/db:7
    volumes:
      - data:/data
volumes:
  data:
"#;
    let dir = project(compose, &[Arch::Amd64]);
    let p = plan(dir.path(), Arch::Amd64).expect("plan");
    let access = &p.manifest.host_access;
    assert_eq!(access.keys().collect::<Vec<_>>(), ["web"], "{access:?}");
    assert!(access["web"].privileged);
    assert_eq!(
        access["web"].bind_mounts,
        ["/srv/web", "/var/run/docker.sock"]
    );
    let json = String::from_utf8(p.manifest.to_canonical_json()).expect("utf8");
    assert!(json.contains(r#""host_access":{"web":{"#), "{json}");
    // An unprivileged stack's manifest carries no such key at all.
    let plain = project(COMPOSE, &[Arch::Amd64]);
    with_files(plain.path());
    let p = plan(plain.path(), Arch::Amd64).expect("plan");
    assert!(p.manifest.host_access.is_empty());
    let json = String::from_utf8(p.manifest.to_canonical_json()).expect("utf8");
    assert!(!json.contains("host_access"), "{json}");
}

#[test]
fn features_the_declared_hosts_cannot_run_are_refused_at_release_and_signed_otherwise() {
    let compose = r#"name: shop
services:
  web:
    image: reg.example/web:${TAG:-1}
    platform: linux/amd64
  db:
    image: reg.example/db:7
    healthcheck:
      test: ["CMD", "true"]
      start_period: 30s
      start_interval: 2s
"#;
    let dir = project(compose, &[Arch::Amd64, Arch::Armv7]);
    // No floor declared: the needs are signed, for the host to check.
    let p = plan(dir.path(), Arch::Amd64).expect("plan");
    let needs = &p.manifest.requires;
    assert_eq!(needs.start_interval, ["db"]);
    assert!(needs.project_name);
    assert_eq!(needs.platforms["web"], "linux/amd64");
    let json = String::from_utf8(p.manifest.to_canonical_json()).expect("utf8");
    assert!(json.contains(r#""requires":{"#), "{json}");
    // A platform that is not the bundle's architecture is refused for that architecture.
    let err = plan(dir.path(), Arch::Armv7).expect_err("amd64 platform in an armv7 bundle");
    assert!(
        err.contains("service `web`: `platform: linux/amd64`"),
        "{err}"
    );
    // The recipe declares its hosts: Engine 24 and compose v1 run neither `start_interval` nor a
    // top-level `name:`; both are named with their fix.
    write(
        &dir.path().join("recipes/app/recipe.toml"),
        "[hosts]\nengine = \"24.0\"\ncompose = \"v1\"\n\n[env.prod.config]\nTAG = \"2\"\n",
    );
    let err = plan(dir.path(), Arch::Amd64).expect_err("hosts cannot run it");
    assert!(err.contains("uses what its hosts cannot run"), "{err}");
    assert!(
        err.contains("service `db`: healthcheck `start_interval` needs Docker Engine 25.0 or later, the host has 24.0; remove `start_interval`"),
        "{err}"
    );
    assert!(err.contains("top-level `name:`"), "{err}");
    // A stack without such features keeps manifests byte-for-byte as before: no `requires`.
    let plain = project(COMPOSE, &[Arch::Amd64]);
    with_files(plain.path());
    let p = plan(plain.path(), Arch::Amd64).expect("plan");
    let json = String::from_utf8(p.manifest.to_canonical_json()).expect("utf8");
    assert!(!json.contains("requires"), "{json}");
}
