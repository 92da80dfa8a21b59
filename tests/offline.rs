//! Images for real, host side: offline bundles applied with the registry stopped, the images
//! removed from the host and no route out (the installer runs in a network namespace whose
//! only interface is loopback); image IDs enforced before and after `compose up`; bundles whose
//! image ID does not match their manifest rejected; `apply --usb` choosing among several
//! bundles on a fake media root and saying why it skipped each other one.

use smoker_build::lock::{Lock, repository_of};
use smoker_build::recipe::Recipe;
use smoker_build::release::{self, OfflineImages, SourceInfo};
use smoker_format::image_archive::local_reference;
use smoker_format::manifest::Arch;
use smoker_format::signing::SecretKey;
use smoker_testkit::bundle::extract_from_bundle;
use smoker_testkit::docker::{
    docker, image_inspect, require_docker, require_docker_compose, running_containers,
};
use smoker_testkit::host::assert_no_route_out;
use smoker_testkit::images::{remove_image, unique_testsvc, wait_version};
use smoker_testkit::per_frontend;
use smoker_testkit::ports::free_port;
use smoker_testkit::project::{WebService, docker_health_recipe, single_image_lock};
use smoker_testkit::{Cleanup, Host, Project, Pushed, Registry, Release, http, stderr, text};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

fn local_of(image: &Pushed) -> String {
    local_reference(repository_of(&image.reference), &image.digest)
}

fn inspect(reference: &str, format: &str) -> Option<String> {
    image_inspect(reference, format)
}

/// Image IDs of the running containers of a compose project.
fn running_ids(project: &str) -> Vec<String> {
    running_containers(project)
        .into_iter()
        .map(|(_, image)| image)
        .collect()
}

/// A workspace with recipe `svc` running `image` on `port`, locked for amd64.
fn project(image: &Pushed, port: u16) -> Project {
    let ws = Project::cli();
    ws.write_recipe(
        "svc",
        &WebService::new(&image.reference).yaml(),
        &docker_health_recipe(port, "v1", "prod"),
    );
    let out = ws.lock(&["--arch", "amd64"]);
    assert!(out.status.success(), "lock: {}", text(&out));
    ws
}

/// Releases `svc` `version` (offline, amd64) with `/version` answering `version_text`.
fn release_offline(ws: &Project, image: &str, port: u16, version: &str, text_: &str) -> PathBuf {
    ws.write_recipe(
        "svc",
        &WebService::new(image).yaml(),
        &docker_health_recipe(port, text_, "prod"),
    );
    let out = format!("out-{version}");
    ws.release(&Release::new("svc", version).offline().out(&out));
    ws.bundle(&out, "prod", "svc", version, "amd64")
}

fn offline_apply_with_the_registry_stopped_the_images_removed_and_no_route_out(frontend: &str) {
    require_docker();
    require_docker_compose();
    assert_no_route_out();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let image = unique_testsvc(&registry, &mut cleanup, "svc", "1");
    let other = unique_testsvc(&registry, &mut cleanup, "svc2", "1");
    let port = free_port();
    let ws = project(&image, port);
    let v1 = release_offline(&ws, &image.reference, port, "1.0.0", "v1");
    let v2 = release_offline(&ws, &image.reference, port, "2.0.0", "v2");
    // v3 runs another image (so it has a local reference of its own).
    ws.write_recipe(
        "svc",
        &WebService::new(&other.reference).yaml(),
        &docker_health_recipe(port, "v3", "prod"),
    );
    assert!(ws.lock(&["--arch", "amd64"]).status.success());
    let v3 = release_offline(&ws, &other.reference, port, "3.0.0", "v3");
    for i in [&image, &other] {
        cleanup.image(&local_of(i));
    }

    // The registry is stopped and the images are gone from the host.
    let registry_url = format!("{}/v2/", registry.url());
    drop(registry);
    assert!(http::get(&registry_url).is_err(), "registry still answers");
    remove_image(&image.id);
    remove_image(&other.id);

    let host = Host::new(&mut cleanup, Some(frontend));
    let out = host.apply_offline(&ws, &v1);
    assert!(out.status.success(), "offline apply v1: {}", text(&out));
    let err = stderr(&out);
    assert!(err.contains("loading 1 image(s) from the bundle"), "{err}");
    wait_version(port, "v1");
    assert_eq!(running_ids(&host.project), std::slice::from_ref(&image.id));
    // The loaded image has no registry digest; it runs under its deterministic local name.
    let local = local_of(&image);
    assert_eq!(
        inspect(&local, "{{.Id}}").as_deref(),
        Some(image.id.as_str())
    );
    assert_eq!(
        inspect(&local, "{{json .RepoDigests}}").as_deref(),
        Some("[]")
    );

    // v2 has the same image: nothing is loaded again.
    let out = host.apply_offline(&ws, &v2);
    assert!(out.status.success(), "offline apply v2: {}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("already present") && !err.contains("loading"),
        "{err}"
    );
    wait_version(port, "v2");

    // v3 is interrupted right after the switch; then its local reference is made to point at
    // another image. The next run starts it and the health gate sees the containers run an
    // image ID other than the signed one: v3 fails and v2 serves again — all with no network.
    let mut c = host.offline_cmd();
    host.apply_args(&mut c, &ws)
        .arg(&v3)
        .env("SMOKER_FAULT", "apply:switched");
    let out = c.output().expect("apply v3");
    assert!(!out.status.success(), "must abort: {}", text(&out));
    docker(&["tag", &image.id, &local_of(&other)]);
    let mut c = host.offline_cmd();
    let out = c.arg("recover").output().expect("recover");
    // Recovery finished the interrupted apply by rolling it back: exit status 7 (rolled-back).
    assert_eq!(out.status.code(), Some(7), "recover: {}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("generation 3 failed its health gate")
            && said.contains("the signed manifest says")
            && said.contains(&other.id)
            && said.contains("rolled back to 2"),
        "{said}"
    );
    wait_version(port, "v2");
    assert_eq!(running_ids(&host.project), std::slice::from_ref(&image.id));
    assert_eq!(host.status()["current"], 2);
    assert_eq!(host.generation_status(3), "failed");

    // A manual rollback with the registry stopped and no route out: everything it needs is on
    // the host, and compose pulls nothing.
    let mut c = host.offline_cmd();
    let out = c
        .args(["rollback", "--to", "1"])
        .output()
        .expect("rollback");
    assert!(out.status.success(), "offline rollback: {}", text(&out));
    wait_version(port, "v1");
    assert_eq!(host.status()["current"], 1);

    // A second apply of v3 puts the right image back under its name and runs it; its gc keeps
    // one generation.
    let mut c = host.offline_cmd();
    host.apply_args(&mut c, &ws).args(["--keep", "1"]).arg(&v3);
    let out = c.output().expect("apply v3");
    assert!(out.status.success(), "offline apply v3: {}", text(&out));
    assert_eq!(
        inspect(&local_of(&other), "{{.Id}}").as_deref(),
        Some(other.id.as_str())
    );
    wait_version(port, "v3");
    assert_eq!(running_ids(&host.project), std::slice::from_ref(&other.id));

    // gc of the older generations removed the loaded image they alone used, by its local name.
    assert!(
        inspect(&local_of(&image), "{{.Id}}").is_none(),
        "v1/v2's image is collected: {}",
        text(&out)
    );
    assert_eq!(
        inspect(&local_of(&other), "{{.Id}}").as_deref(),
        Some(other.id.as_str()),
        "the current generation's image stays"
    );
}

/// `plan_offline` of `svc` `version` over `archive`, its manifest changed by `tamper`, signed
/// with the workspace key.
fn signed_bundle(
    ws: &Project,
    archive: &Path,
    configs: BTreeMap<String, String>,
    version: &str,
    tamper: impl FnOnce(&mut smoker_format::manifest::Manifest),
) -> PathBuf {
    let recipe = Recipe::load(&ws.recipes(), "svc").expect("recipe");
    let lock_path = Lock::path(&ws.recipes(), "svc");
    let lock = Lock::load(&lock_path, "svc").expect("lock");
    let source = SourceInfo {
        commit: None,
        dirty: true,
        recipe_dir: "recipes/svc".into(),
        epoch: 1_700_000_000,
    };
    let offline = OfflineImages {
        archive: archive.to_path_buf(),
        config_digests: configs,
    };
    let mut plan = release::plan_offline(
        &recipe,
        &lock,
        &lock_path,
        Arch::Amd64,
        "prod",
        &semver::Version::parse(version).expect("semver"),
        &source,
        &offline,
    )
    .expect("plan");
    tamper(&mut plan.manifest);
    let key = SecretKey::load(&ws.key, None).expect("key");
    release::write_release(&plan, &key, &ws.path().join(format!("forged-{version}")))
        .expect("write")
        .path
}

/// A copy of `archive` whose config blob `config` holds other bytes (an extra label): the
/// name still claims the old image ID, the content loads as another.
fn archive_with_altered_config(archive: &Path, config: &str, dest: &Path) -> String {
    let name = smoker_format::image_archive::blob_path(config);
    let mut input = tar::Archive::new(std::fs::File::open(archive).expect("archive"));
    let mut out = tar::Builder::new(std::fs::File::create(dest).expect("dest"));
    let mut new_id = String::new();
    for e in input.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read");
        if path == name {
            let mut v: serde_json::Value = serde_json::from_slice(&data).expect("config json");
            v["config"]["Labels"]["tampered"] = "yes".into();
            data = serde_json::to_vec(&v).expect("json");
            new_id = format!("sha256:{}", smoker_format::digest::sha256_hex(&data));
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append(&h, &data[..]).expect("append");
    }
    out.finish().expect("finish");
    new_id
}

#[test]
fn a_bundle_whose_image_id_does_not_match_its_manifest_is_rejected() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let image = unique_testsvc(&registry, &mut cleanup, "svc", "1");
    let port = free_port();
    let ws = project(&image, port);
    let good = release_offline(&ws, &image.reference, port, "1.0.0", "v1");
    let archive = ws.path().join("images.tar");
    extract_from_bundle(&good, "images/images.tar", &archive);
    let local = cleanup.image(&local_of(&image));
    drop(registry);
    remove_image(&image.id);
    let host = Host::new(&mut cleanup, None);
    let configs = BTreeMap::from([(image.digest.clone(), image.id.clone())]);

    // 1. The signed manifest names an image ID the archive does not hold.
    let fake = format!(
        "sha256:{}",
        smoker_format::digest::sha256_hex(b"not this image")
    );
    let forged = signed_bundle(&ws, &archive, configs.clone(), "2.0.0", |m| {
        m.images[0].config_digest = Some(fake.clone());
    });
    let out = host.apply_offline(&ws, &forged);
    assert!(!out.status.success(), "must be rejected: {}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bundle rejected") && err.contains(&format!("no image with ID {fake}")),
        "{err}"
    );
    assert!(inspect(&local, "{{.Id}}").is_none(), "nothing was loaded");

    // 2. The archive's config bytes were changed: Docker loads them as another image ID than
    //    the signed one; the apply is refused and the local name is not left pointing at it.
    let altered = ws.path().join("altered.tar");
    let loaded_as = archive_with_altered_config(&archive, &image.id, &altered);
    cleanup.image(&loaded_as);
    let forged = signed_bundle(&ws, &altered, configs, "3.0.0", |_| {});
    let out = host.apply_offline(&ws, &forged);
    assert!(!out.status.success(), "must be rejected: {}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains("bundle rejected")
            && err.contains(&format!("has ID {loaded_as}"))
            && err.contains(&format!("the signed manifest says {}", image.id)),
        "{err}"
    );
    assert!(
        inspect(&local, "{{.Id}}").is_none(),
        "{local} must not name the wrong image"
    );
    let status = host.run(&["status", "--json"]);
    let s: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    assert!(
        s["data"]["profiles"]
            .as_array()
            .is_none_or(|a| a.iter().all(|p| p["current"].is_null())),
        "no generation may be current: {s}"
    );

    // The honest bundle still installs.
    let out = host.apply_offline(&ws, &good);
    assert!(out.status.success(), "good bundle: {}", text(&out));
    wait_version(port, "v1");
    assert_eq!(running_ids(&host.project), std::slice::from_ref(&image.id));
}

/// An online (no images inside) bundle of `svc` for `arch` pinned to made-up digests.
fn online_bundle(ws: &Project, image: &Pushed, arch: Arch, version: &str) -> PathBuf {
    let recipe = Recipe::load(&ws.recipes(), "svc").expect("recipe");
    let lock_path = ws.path().join("made-up.lock");
    let made_up = |s: &str| format!("sha256:{}", smoker_format::digest::sha256_hex(s.as_bytes()));
    let lock = single_image_lock(
        &image.reference,
        arch,
        &made_up(version),
        &made_up("config"),
    );
    let source = SourceInfo {
        commit: None,
        dirty: true,
        recipe_dir: "recipes/svc".into(),
        epoch: 1_700_000_000,
    };
    let plan = release::plan(
        &recipe,
        &lock,
        &lock_path,
        arch,
        "prod",
        &semver::Version::parse(version).expect("semver"),
        &source,
    )
    .expect("plan");
    let key = SecretKey::load(&ws.key, None).expect("key");
    release::write_release(&plan, &key, &ws.path().join(format!("online-{version}")))
        .expect("write")
        .path
}

fn place(src: &Path, root: &Path, rel: &str) -> PathBuf {
    let dest = root.join(rel);
    std::fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    std::fs::copy(src, &dest).expect("copy");
    dest
}

#[test]
fn apply_usb_chooses_the_newest_valid_bundle_and_says_why_it_skipped_the_others() {
    require_docker();
    assert_no_route_out();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let image = unique_testsvc(&registry, &mut cleanup, "svc", "1");
    cleanup.image(&local_of(&image));
    let port = free_port();
    let ws = project(&image, port);
    let dir = ws.path().display().to_string();
    let v1 = release_offline(&ws, &image.reference, port, "1.0.0", "v1");
    let v2 = release_offline(&ws, &image.reference, port, "2.0.0", "v2");
    let v3 = release_offline(&ws, &image.reference, port, "3.0.0", "v3");
    // The same recipe for environment dev.
    ws.write_recipe(
        "svc",
        &WebService::new(&image.reference).yaml(),
        &format!(
            "{}\n[env.dev.config]\nPORT = \"{port}\"\nVERSION_TEXT = \"dev\"\n",
            docker_health_recipe(port, "v4", "prod")
        ),
    );
    ws.release(
        &Release::new("svc", "4.0.0")
            .env("dev")
            .offline()
            .out("out-dev"),
    );
    let dev = ws.bundle("out-dev", "dev", "svc", "4.0.0", "amd64");
    // Another profile.
    ws.write_recipe(
        "web",
        &WebService::new(&image.reference).yaml(),
        &docker_health_recipe(port, "web", "prod"),
    );
    assert!(
        ws.lock(&["--recipe", "web", "--arch", "amd64"])
            .status
            .success()
    );
    ws.release(&Release::new("web", "9.0.0").offline().out("out-web"));
    let web = ws.bundle("out-web", "prod", "web", "9.0.0", "amd64");
    // Signed by a key this host does not trust.
    let stranger = ws.path().join("stranger.key");
    smoker_format::signing::generate(&stranger, &ws.path().join("stranger.pub"), None)
        .expect("keygen");
    ws.write_recipe(
        "svc",
        &WebService::new(&image.reference).yaml(),
        &docker_health_recipe(port, "v5", "prod"),
    );
    let out = ws.xtask(
        &[
            "release",
            "--project-dir",
            &dir,
            "--recipe",
            "svc",
            "--secret-key",
            &stranger.display().to_string(),
            "--version",
            "5.0.0",
            "--out",
            &ws.path().join("out-stranger").display().to_string(),
            "--blob-cache",
            &ws.path().join("cache").display().to_string(),
            "--offline",
            "--arch",
            "amd64",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let untrusted = ws.bundle("out-stranger", "prod", "svc", "5.0.0", "amd64");
    let arm = online_bundle(&ws, &image, Arch::Armv7, "6.0.0");
    let online = online_bundle(&ws, &image, Arch::Amd64, "2.5.0");
    drop(registry);

    let media = tempfile::tempdir().expect("media root");
    let m = media.path();
    place(&v1, m, "STICK/old/svc-1.0.0-amd64.tar.zst");
    let chosen = place(&v2, m, "STICK/bundles/svc-2.0.0-amd64.tar.zst");
    let broken = place(&v3, m, "STICK/bundles/svc-3.0.0-amd64.tar.zst");
    let len = std::fs::metadata(&broken).expect("meta").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&broken)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let skipped = [
        (
            place(&dev, m, "STICK/dev/svc-4.0.0-amd64.tar.zst"),
            "for environment `dev`, this host is `prod`",
        ),
        (
            place(&web, m, "STICK/web/web-9.0.0-amd64.tar.zst"),
            "for profile `web`, this host runs `svc`",
        ),
        (
            place(&untrusted, m, "STICK/keys/svc-5.0.0-amd64.tar.zst"),
            "not trusted here",
        ),
        (
            place(&arm, m, "STICK/arm/svc-6.0.0-armv7.tar.zst"),
            "built for armv7, this host is amd64",
        ),
        (
            place(&online, m, "STICK/online/svc-2.5.0-amd64.tar.zst"),
            "carries no images and needs",
        ),
    ];
    std::fs::write(m.join("STICK/junk.tar.zst"), b"not a bundle at all").expect("junk");
    place(&v3, m, "STICK/.Trash-1000/svc-3.0.0-amd64.tar.zst");
    std::fs::create_dir_all(m.join("empty-mount")).expect("mkdir");

    let host = Host::new(&mut cleanup, None);
    // Neither a bundle nor --usb: a clear error.
    let mut c = host.cmd();
    let out = host.apply_args(&mut c, &ws).output().expect("apply");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no bundle given"), "{}", text(&out));
    // A fresh host that declares no environment cannot choose between profiles and
    // environments.
    std::fs::write(host.host_config(), "").expect("host config");
    let mut c = host.offline_cmd();
    let out = host
        .apply_args(&mut c, &ws)
        .args(["--usb", "--media-root"])
        .arg(m)
        .output()
        .expect("apply --usb");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("several profiles or environments")
            && stderr(&out).contains("svc/dev")
            && stderr(&out).contains("svc/prod")
            && stderr(&out).contains("web/prod"),
        "{}",
        text(&out)
    );

    // Installed and running 1.0.0 of profile svc in prod, the host chooses on its own.
    host.write_config("");
    let out = host.apply_offline(&ws, &v1);
    assert!(out.status.success(), "apply v1: {}", text(&out));
    let mut c = host.offline_cmd();
    let out = host
        .apply_args(&mut c, &ws)
        .args(["--usb", "--media-root"])
        .arg(m)
        .arg("--media-root")
        .arg(m.join("empty-mount"))
        .output()
        .expect("apply --usb");
    assert!(out.status.success(), "apply --usb: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("svc 2.0.0 generation 2 (committed)"),
        "{}",
        text(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "rejected {}: it failed verification",
            broken.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "chose {}: svc 2.0.0 for amd64/prod — the newest of 3 usable bundles after 1 newer one(s) failed verification",
            chosen.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("svc-1.0.0-amd64.tar.zst: 1.0.0 is older than the chosen 2.0.0"),
        "{err}"
    );
    for (path, why) in &skipped {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("skipped {}:", path.display())))
            .unwrap_or_else(|| panic!("no word on {}: {err}", path.display()));
        assert!(line.contains(why), "{line}");
    }
    assert!(
        err.lines()
            .any(|l| l.contains("skipped") && l.contains("junk.tar.zst: not usable")),
        "{err}"
    );
    assert!(
        !err.contains(".Trash-1000"),
        "hidden directories are not searched: {err}"
    );
    wait_version(port, "v2");
    assert_eq!(running_ids(&host.project), std::slice::from_ref(&image.id));

    // Nothing to find: said plainly.
    let empty = tempfile::tempdir().expect("empty");
    let mut c = host.offline_cmd();
    let out = host
        .apply_args(&mut c, &ws)
        .args(["--usb", "--media-root"])
        .arg(empty.path())
        .output()
        .expect("apply --usb");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no bundle (*.tar.zst) found under"),
        "{}",
        text(&out)
    );
}

per_frontend!(offline_apply_with_the_registry_stopped_the_images_removed_and_no_route_out);
