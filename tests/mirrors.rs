//! Registry mirrors on the release side: Docker Hub names (`name:1`, `someorg/name:1`) locked
//! and fetched for an offline bundle through a real loopback registry declared as a mirror of
//! `docker.io` in `recipes/registries.toml` — the compose file is not edited, the lock and the
//! bundle keep the canonical names, and the lock records the mirror that answered.

use smoker_build::lock::Lock;
use smoker_format::manifest::Arch;
use smoker_testkit::bundle::extract_from_bundle;
use smoker_testkit::docker::require_docker;
use smoker_testkit::images::unique_testsvc;
use smoker_testkit::project::docker_health_recipe;
use smoker_testkit::{Cleanup, Project, Registry, Release, stderr, text};

#[test]
fn lock_and_offline_release_of_docker_hub_names_through_a_loopback_mirror() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let mirror = Registry::start();
    // Docker Hub's `name` is `library/name`; `someorg/name` stays as it is.
    let name = smoker_testkit::unique_name("hubimg");
    let official = unique_testsvc(&mirror, &mut cleanup, &format!("library/{name}"), "1");
    let org = unique_testsvc(&mirror, &mut cleanup, &format!("someorg/{name}"), "2");

    let ws = Project::cli();
    let compose =
        format!("services:\n  a:\n    image: {name}:1\n  b:\n    image: someorg/{name}:2\n");
    ws.write_recipe("hub", &compose, &docker_health_recipe(8080, "v1", "prod"));
    // The first mirror answers nothing (no one listens there); the second is the registry.
    // `upstream = false`: Docker Hub itself is never asked.
    let dead = smoker_testkit::ports::free_port();
    let config = format!(
        "[registry.\"docker.io\"]\nmirrors = [\"http://127.0.0.1:{dead}\", \"{}\"]\nupstream = false\n",
        mirror.url()
    );
    smoker_testkit::write_file(&ws.recipes().join("registries.toml"), &config);

    let out = ws.lock(&["--arch", "amd64"]);
    assert!(
        out.status.success(),
        "lock through the mirror: {}",
        text(&out)
    );
    assert!(
        std::fs::read_to_string(ws.recipe_dir("hub").join("compose.yaml")).expect("compose")
            == compose,
        "the compose file is not edited"
    );
    let lock_path = Lock::path(&ws.recipes(), "hub");
    let lock = Lock::load(&lock_path, "hub").expect("lock");
    let lock_text = std::fs::read_to_string(&lock_path).expect("lock text");
    for (canonical, pushed) in [
        (format!("docker.io/library/{name}:1"), &official),
        (format!("docker.io/someorg/{name}:2"), &org),
    ] {
        let entry = lock
            .images
            .iter()
            .find(|i| i.reference == canonical)
            .unwrap_or_else(|| panic!("{canonical} not in the lock:\n{lock_text}"));
        assert_eq!(entry.mirror.as_deref(), Some(mirror.url().as_str()));
        let pin = &entry.platforms[&Arch::Amd64];
        assert_eq!(pin.digest, pushed.digest);
        assert_eq!(pin.config_digest.as_deref(), Some(pushed.id.as_str()));
    }
    assert!(
        lock_text.contains(&format!("mirror = \"{}\"", mirror.url())),
        "{lock_text}"
    );
    assert!(
        stderr(&out).contains("registries.toml"),
        "lock says which mirrors it uses: {}",
        text(&out)
    );

    // Online bundle: pinned by digest under the canonical repository, so the host's engine
    // pulls through its own mirror settings.
    let online = ws.release(&Release::new("hub", "1.0.0"));
    let m = smoker_format::bundle::read::inspect_file(&online.bundle)
        .expect("bundle verifies")
        .manifest;
    let repos: Vec<(&str, &str, &str)> = m
        .images
        .iter()
        .map(|i| (i.service.as_str(), i.repository.as_str(), i.digest.as_str()))
        .collect();
    let (ra, rb) = (
        format!("docker.io/library/{name}"),
        format!("docker.io/someorg/{name}"),
    );
    assert_eq!(
        repos,
        [
            ("a", ra.as_str(), official.digest.as_str()),
            ("b", rb.as_str(), org.digest.as_str())
        ]
    );
    let pins = ws.path().join("pin.yaml");
    extract_from_bundle(&online.bundle, "generated/pin.compose.yaml", &pins);
    let pins = std::fs::read_to_string(&pins).expect("pins");
    assert!(
        pins.contains(&format!("{ra}@{}", official.digest)),
        "{pins}"
    );

    // Offline bundle: every blob fetched through the mirror, by the locked digest.
    let offline = ws.release(&Release::new("hub", "1.0.1").offline());
    let o = offline.output();
    assert!(stderr(o).contains("fetching"), "{}", text(o));
    let archive = ws.path().join("images.tar");
    extract_from_bundle(&offline.bundle, "images/images.tar", &archive);
    let index = smoker_format::image_archive::read_index(&archive).expect("archive index");
    for pushed in [&official, &org] {
        assert!(
            index.image(&pushed.id).is_some(),
            "image {} is in the archive",
            pushed.id
        );
    }

    // A mirror that does not have the image: the error names each source tried.
    let missing = format!("services:\n  a:\n    image: {name}-absent:1\n");
    ws.write_recipe(
        "absent",
        &missing,
        &docker_health_recipe(8080, "v1", "prod"),
    );
    let out = ws.lock(&["--recipe", "absent", "--arch", "amd64"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("mirror http://127.0.0.1:{dead}"))
            && err.contains(&format!("mirror {}", mirror.url()))
            && err.contains(&format!("docker.io/library/{name}-absent:1")),
        "{err}"
    );
}
