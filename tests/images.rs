//! Images for real, release side: `cargo xtask lock` against a real registry on loopback
//! (single-platform images, Docker manifest lists and OCI indexes, arm variants, registry
//! authentication), and `cargo xtask release --offline` (reproducible bytes, a layer shared by
//! several images stored once, an archive `docker load` accepts).

use base64::Engine as _;
use smoker_build::lock::Lock;
use smoker_format::manifest::Arch;
use smoker_testkit::bundle::{extract_from_bundle, tar_listing};
use smoker_testkit::docker::{docker, require_docker};
use smoker_testkit::images::{derived_image, platform_image, remove_image, unique_testsvc};
use smoker_testkit::project::docker_health_recipe;
use smoker_testkit::{Cleanup, Project, Registry, Release, http, stderr, stdout, text};
use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn short(d: &str) -> String {
    format!("sha256:{}", &d.trim_start_matches("sha256:")[..12])
}

fn lock_only_recipe(ws: &Project, name: &str, services: &[(&str, &str)]) {
    let mut compose = String::from("services:\n");
    for (svc, image) in services {
        compose.push_str(&format!("  {svc}:\n    image: {image}\n"));
    }
    ws.write_recipe(name, &compose, "[env.prod.config]\nA = \"1\"\n");
}

/// The digest of the entry of an index (as the registry serves it) for `os/arch[/variant]`.
fn index_entry(registry: &Registry, repo: &str, tag: &str, platform: &str) -> String {
    let (body, _) = registry.get_manifest(repo, tag);
    let v: serde_json::Value = serde_json::from_slice(&body).expect("index json");
    v["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap_or(""),
                p["architecture"].as_str().unwrap_or("")
            );
            if let Some(v) = p["variant"].as_str() {
                s.push('/');
                s.push_str(v);
            }
            s == platform
        })
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("{repo}:{tag} lists no {platform}"))
        .to_string()
}

#[test]
fn lock_records_exactly_the_digests_the_registry_reports() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let single = unique_testsvc(&registry, &mut cleanup, "single", "1");
    let amd = unique_testsvc(&registry, &mut cleanup, "multi", "amd64");
    let v7 = platform_image(&registry, &mut cleanup, "linux/arm/v7", "multi", "armv7");
    let v6 = platform_image(&registry, &mut cleanup, "linux/arm/v6", "multi", "armv6");
    let a64 = platform_image(&registry, &mut cleanup, "linux/arm64", "multi", "arm64");
    assert!(v7.digest != v6.digest && v7.digest != a64.digest);

    // A Docker manifest list: arm64 and arm/v6 come before arm/v7, so only the variant can
    // pick the right one.
    let list = registry.push_manifest_list(
        "multi",
        "list",
        &[&amd.reference, &a64.reference, &v6.reference, &v7.reference],
    );
    assert_eq!(
        registry.manifest_digest("multi", "list"),
        Some(list.clone())
    );
    // The same without arm/v7.
    registry.push_manifest_list(
        "multi",
        "nov7",
        &[&amd.reference, &a64.reference, &v6.reference],
    );
    // An OCI image index with an attestation-like entry, pushed over HTTP.
    for (p, tag) in [(&amd, "amd64"), (&v7, "armv7"), (&a64, "arm64")] {
        assert_eq!(registry.push(&p.reference, "oci", tag), p.digest);
    }
    let oci = registry.put_oci_index(
        "oci",
        "idx",
        &[
            (&amd.digest, "unknown/unknown"),
            (&a64.digest, "linux/arm64/v8"),
            (&v7.digest, "linux/arm/v7"),
            (&amd.digest, "linux/amd64"),
        ],
    );
    assert_eq!(registry.manifest_digest("oci", "idx"), Some(oci.clone()));

    let ws = Project::cli();
    let list_ref = registry.reference("multi", "list");
    let oci_ref = registry.reference("oci", "idx");
    lock_only_recipe(&ws, "multi", &[("list", &list_ref), ("oci", &oci_ref)]);
    let out = ws.lock(&["--recipe", "multi"]);
    assert!(out.status.success(), "lock multi: {}", text(&out));
    let lock = Lock::load(&ws.recipes().join("multi.lock"), "multi").expect("lock");
    for (reference, repo, tag, index) in [
        (&list_ref, "multi", "list", &list),
        (&oci_ref, "oci", "idx", &oci),
    ] {
        let img = lock
            .images
            .iter()
            .find(|i| &i.reference == reference)
            .unwrap_or_else(|| panic!("{reference} locked"));
        assert_eq!(img.index_digest.as_ref(), Some(index), "{reference}");
        let amd64 = &img.platforms[&Arch::Amd64];
        let armv7 = &img.platforms[&Arch::Armv7];
        // Exactly what the registry reports: the index's own entries and the pushed tags.
        assert_eq!(
            amd64.digest,
            index_entry(&registry, repo, tag, "linux/amd64")
        );
        assert_eq!(
            armv7.digest,
            index_entry(&registry, repo, tag, "linux/arm/v7")
        );
        assert_eq!(
            Some(amd64.digest.clone()),
            registry.manifest_digest("multi", "amd64")
        );
        assert_eq!(
            Some(armv7.digest.clone()),
            registry.manifest_digest("multi", "armv7")
        );
        assert_eq!(amd64.config_digest.as_deref(), Some(amd.id.as_str()));
        assert_eq!(armv7.config_digest.as_deref(), Some(v7.id.as_str()));
        assert_eq!(img.platforms.len(), 2);
    }
    let said = stdout(&out);
    assert!(
        said.contains(&format!(
            "+ {list_ref}  amd64 {}  armv7 {}",
            short(&amd.digest),
            short(&v7.digest)
        )),
        "{said}"
    );

    // A single-platform image counts for its own platform only.
    lock_only_recipe(&ws, "single", &[("app", &single.reference)]);
    let out = ws.lock(&["--recipe", "single"]);
    assert!(
        !out.status.success(),
        "an amd64-only image cannot be locked for armv7"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "image `{}` has no linux/arm/v7 image",
            single.reference
        )) && err.contains("single-platform image for linux/amd64"),
        "{err}"
    );
    assert!(
        !ws.recipes().join("single.lock").exists(),
        "nothing written on failure"
    );
    let out = ws.lock(&["--recipe", "single", "--arch", "amd64"]);
    assert!(
        out.status.success(),
        "lock single for amd64: {}",
        text(&out)
    );
    let lock = Lock::load(&ws.recipes().join("single.lock"), "single").expect("lock");
    let img = &lock.images[0];
    assert_eq!(img.index_digest, None);
    assert_eq!(img.platforms[&Arch::Amd64].digest, single.digest);
    assert_eq!(
        img.platforms[&Arch::Amd64].config_digest.as_deref(),
        Some(single.id.as_str())
    );
    assert_eq!(img.platforms.len(), 1);

    // arm64 and arm/v6 are not arm/v7: an index without v7 is an error naming image and platform.
    let nov7 = registry.reference("multi", "nov7");
    lock_only_recipe(&ws, "nov7", &[("app", &nov7)]);
    let out = ws.lock(&["--recipe", "nov7"]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("image `{nov7}` has no linux/arm/v7 image"))
            && err.contains("linux/arm64")
            && err.contains("linux/arm/v6"),
        "{err}"
    );

    // The armv7 offline bundle carries the arm/v7 image of both indexes (once: same image).
    let out = ws.release(
        &Release::new("multi", "1.0.0")
            .arch(Arch::Armv7)
            .offline()
            .out("out"),
    );
    let out = out.output();
    let bundle = ws.bundle("out", "prod", "multi", "1.0.0", "armv7");
    let v = smoker_format::bundle::read::inspect_file(&bundle).expect("bundle verifies");
    for img in &v.manifest.images {
        assert_eq!(img.digest, v7.digest, "{}", text(out));
        assert_eq!(img.config_digest.as_deref(), Some(v7.id.as_str()));
        assert_eq!(img.archive.as_deref(), Some("images/images.tar"));
    }
    let archive = ws.path().join("armv7.tar");
    extract_from_bundle(&bundle, "images/images.tar", &archive);
    let index = smoker_format::image_archive::read_index(&archive).expect("archive index");
    assert_eq!(index.docker.len(), 1, "{index:?}");
    assert_eq!(
        index.docker[0].config_digest().as_deref(),
        Some(v7.id.as_str())
    );
}

#[test]
fn lock_prints_what_changed_against_the_previous_lock() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let first = unique_testsvc(&registry, &mut cleanup, "app", "1");
    let ws = Project::cli();
    lock_only_recipe(&ws, "app", &[("app", &first.reference)]);
    let out = ws.lock(&["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "+ {}  amd64 {}",
            first.reference,
            short(&first.digest)
        )),
        "{}",
        text(&out)
    );
    let out = ws.lock(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains("unchanged (1 image(s))"),
        "{}",
        text(&out)
    );

    // The tag moves: the lock says from what to what, and keeps the architectures it had.
    let second = unique_testsvc(&registry, &mut cleanup, "app", "1");
    assert_ne!(first.digest, second.digest);
    let out = ws.lock(&[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stdout(&out).contains(&format!(
            "~ {}  amd64 {} → {}",
            first.reference,
            short(&first.digest),
            short(&second.digest)
        )),
        "{}",
        text(&out)
    );
    let lock = Lock::load(&ws.recipes().join("app.lock"), "app").expect("lock");
    let pin = &lock.images[0].platforms[&Arch::Amd64];
    assert_eq!(pin.digest, second.digest);
    assert_eq!(pin.config_digest.as_deref(), Some(second.id.as_str()));
    assert_eq!(lock.images[0].platforms.len(), 1);
}

/// A registry front that demands credentials, forwarding authorised requests to a real
/// registry: `Bearer` (a token service on `/token` that wants HTTP Basic credentials) or
/// `Basic` (credentials on every request).
struct AuthProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Scheme {
    Bearer,
    Basic,
}

const TOKEN: &str = "smoker-test-token";

impl AuthProxy {
    fn start(upstream: String, scheme: Scheme, user: &str, password: &str) -> AuthProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve(c, &upstream, scheme, &basic, port);
                }
            }
        });
        AuthProxy {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for AuthProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    mut conn: TcpStream,
    upstream: &str,
    scheme: Scheme,
    basic: &str,
    port: u16,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let auth = headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let respond = |conn: &mut TcpStream,
                   status: u16,
                   extra: &[(String, String)],
                   body: &[u8],
                   head: bool|
     -> std::io::Result<()> {
        let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if !extra
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        conn.write_all(out.as_bytes())?;
        if !head {
            conn.write_all(body)?;
        }
        conn.flush()
    };
    if path.starts_with("/token") {
        return if scheme == Scheme::Bearer && auth == basic {
            let b = format!("{{\"token\":\"{TOKEN}\",\"access_token\":\"{TOKEN}\"}}");
            respond(
                &mut conn,
                200,
                &[("Content-Type".into(), "application/json".into())],
                b.as_bytes(),
                false,
            )
        } else {
            respond(
                &mut conn,
                401,
                &[],
                b"{\"details\":\"bad credentials\"}",
                false,
            )
        };
    }
    let allowed = match scheme {
        Scheme::Bearer => auth == format!("Bearer {TOKEN}"),
        Scheme::Basic => auth == basic,
    };
    if !allowed {
        let challenge = match scheme {
            Scheme::Bearer => {
                format!("Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"smoker-test\"")
            }
            Scheme::Basic => "Basic realm=\"smoker-test\"".to_string(),
        };
        return respond(
            &mut conn,
            401,
            &[
                ("WWW-Authenticate".into(), challenge),
                ("Content-Type".into(), "application/json".into()),
            ],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\"}]}",
            method == "HEAD",
        );
    }
    let accept: Vec<(&str, &str)> = headers
        .iter()
        .filter(|(k, _)| k == "accept")
        .map(|(_, v)| ("Accept", v.as_str()))
        .collect();
    let resp = http::request(&method, &format!("{upstream}{path}"), &accept, &body)?;
    let mut extra = Vec::new();
    for name in [
        "Content-Type",
        "Docker-Content-Digest",
        "Content-Length",
        "Location",
    ] {
        if let Some(v) = resp.header(name) {
            extra.push((name.to_string(), v.to_string()));
        }
    }
    if method != "HEAD" {
        extra.retain(|(k, _)| k != "Content-Length");
    }
    respond(&mut conn, resp.status, &extra, &resp.body, method == "HEAD")
}

/// A Docker config directory with `config` as config.json.
fn docker_config(config: serde_json::Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("docker config dir");
    std::fs::write(d.path().join("config.json"), config.to_string()).expect("config.json");
    d
}

#[test]
fn lock_authenticates_with_docker_config_credentials_and_helpers() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let image = unique_testsvc(&registry, &mut cleanup, "private/app", "1");
    let ws = Project::cli();
    let dir = ws.path().display().to_string();
    let lock_with = |proxy: &AuthProxy, envs: &[(&str, &str)]| {
        lock_only_recipe(
            &ws,
            "app",
            &[("app", &format!("{}/private/app:1", proxy.host()))],
        );
        let _ = std::fs::remove_file(ws.recipes().join("app.lock"));
        ws.xtask(&["lock", "--project-dir", &dir, "--arch", "amd64"], envs)
    };
    let locked_digest = || {
        Lock::load(&ws.recipes().join("app.lock"), "app")
            .expect("lock")
            .images[0]
            .platforms[&Arch::Amd64]
            .digest
            .clone()
    };
    let auth = |user: &str, pass: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    };

    // Bearer challenge, token service wants the Docker config's basic credentials.
    let bearer = AuthProxy::start(registry.url(), Scheme::Bearer, "deploy", "s3cret");
    let good = docker_config(
        serde_json::json!({"auths": {bearer.host(): {"auth": auth("deploy", "s3cret")}}}),
    );
    let cfg = good.path().display().to_string();
    let out = lock_with(&bearer, &[("DOCKER_CONFIG", &cfg)]);
    assert!(
        out.status.success(),
        "bearer with credentials: {}",
        text(&out)
    );
    assert_eq!(locked_digest(), image.digest);

    // Anonymous against it: refused, with advice.
    let empty = docker_config(serde_json::json!({}));
    let cfg = empty.path().display().to_string();
    let out = lock_with(&bearer, &[("DOCKER_CONFIG", &cfg)]);
    assert!(
        !out.status.success(),
        "anonymous must be refused: {}",
        text(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains(&bearer.host()) && err.contains("docker login"),
        "{err}"
    );

    // Wrong password.
    let wrong = docker_config(
        serde_json::json!({"auths": {bearer.host(): {"auth": auth("deploy", "nope")}}}),
    );
    let cfg = wrong.path().display().to_string();
    let out = lock_with(&bearer, &[("DOCKER_CONFIG", &cfg)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("refused to authenticate"),
        "{}",
        text(&out)
    );

    // Basic challenge, credentials from a credential helper named in credHelpers.
    let basic = AuthProxy::start(registry.url(), Scheme::Basic, "robot", "t0ken");
    let bin = tempfile::tempdir().expect("helper dir");
    let helper = bin.path().join("docker-credential-smoketest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\nif [ \"$1\" = get ] && [ \"$server\" = \"{}\" ]; then\n  echo '{{\"ServerURL\":\"'$server'\",\"Username\":\"robot\",\"Secret\":\"t0ken\"}}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
            basic.host()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(
        &helper,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .expect("chmod");
    let helped = docker_config(serde_json::json!({"credHelpers": {basic.host(): "smoketest"}}));
    let cfg = helped.path().display().to_string();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = lock_with(&basic, &[("DOCKER_CONFIG", &cfg), ("PATH", &path)]);
    assert!(
        out.status.success(),
        "basic via credential helper: {}",
        text(&out)
    );
    assert_eq!(locked_digest(), image.digest);
    // Without the helper's credentials the same registry denies access.
    let out = lock_with(
        &basic,
        &[("DOCKER_CONFIG", &empty.path().display().to_string())],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(stderr(&out).contains("denied access"), "{}", text(&out));
}

#[test]
fn offline_release_is_reproducible_stores_shared_layers_once_and_loads() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let registry = Registry::start();
    let base = unique_testsvc(&registry, &mut cleanup, "base", "1");
    let derived = derived_image(
        &registry,
        &mut cleanup,
        &base.reference,
        300_000,
        "derived",
        "1",
    );
    let ws = Project::cli();
    let compose = format!(
        "services:\n  a:\n    image: {}\n  b:\n    image: {}\n",
        base.reference, derived.reference
    );
    ws.write_recipe("pair", &compose, &docker_health_recipe(8080, "v1", "prod"));
    let out = ws.lock(&["--arch", "amd64"]);
    assert!(out.status.success(), "{}", text(&out));

    let release = |out: &str, cache| {
        ws.release(
            &Release::new("pair", "1.0.0")
                .offline()
                .out(out)
                .cache(cache),
        )
    };
    let cold = release("out1", "cache1");
    let cold = cold.output();
    assert!(stderr(cold).contains("fetching"), "{}", text(cold));
    let fresh = release("out2", "cache2");
    let fresh = fresh.output();
    let warm = release("out3", "cache1");
    let warm = warm.output();
    assert!(
        !stderr(warm).contains("fetching"),
        "a warm cache fetches nothing: {}",
        text(warm)
    );
    let b1 = ws.bundle("out1", "prod", "pair", "1.0.0", "amd64");
    let read = |p: &std::path::Path| std::fs::read(p).expect("bundle");
    let bytes = read(&b1);
    assert!(
        bytes == read(&ws.bundle("out2", "prod", "pair", "1.0.0", "amd64")),
        "{}",
        text(fresh)
    );
    assert!(bytes == read(&ws.bundle("out3", "prod", "pair", "1.0.0", "amd64")));

    // The manifest lists the archive with its hash; each image with its ID and the archive.
    let v = smoker_format::bundle::read::inspect_file(&b1).expect("bundle verifies");
    let m = &v.manifest;
    let ids: Vec<(&str, Option<&str>, Option<&str>)> = m
        .images
        .iter()
        .map(|i| {
            (
                i.service.as_str(),
                i.config_digest.as_deref(),
                i.archive.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            ("a", Some(base.id.as_str()), Some("images/images.tar")),
            ("b", Some(derived.id.as_str()), Some("images/images.tar"))
        ]
    );
    let entry = m
        .file("images/images.tar")
        .expect("archive listed in the manifest");
    let archive = ws.path().join("images.tar");
    extract_from_bundle(&b1, "images/images.tar", &archive);
    let (sha, size) = smoker_format::digest::sha256_file(&archive).expect("hash");
    assert_eq!((sha.as_str(), size), (entry.sha256.as_str(), entry.size));

    // Fixed headers, index first, every blob once in digest order.
    let listing = tar_listing(&archive);
    assert!(
        listing
            .iter()
            .all(|(_, mtime, uid, _)| *mtime == 0 && *uid == 0),
        "{listing:?}"
    );
    let names: Vec<&str> = listing.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        &names[..4],
        [
            "manifest.json",
            "smoker-archive.json",
            "blobs/",
            "blobs/sha256/"
        ]
    );
    let blobs = &names[4..];
    let mut sorted = blobs.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(blobs, sorted.as_slice(), "sorted, no repeats");
    assert_eq!(
        blobs.len(),
        4,
        "2 configs + the shared testsvc layer + b's own layer: {blobs:?}"
    );
    let index = smoker_format::image_archive::read_index(&archive).expect("index");
    let a = index.image(&base.id).expect("a in the archive");
    let b = index.image(&derived.id).expect("b in the archive");
    assert_eq!(a.layers.len(), 1);
    assert_eq!(b.layers.len(), 2);
    assert_eq!(a.layers[0], b.layers[0], "the shared layer is one file");

    // Services are pinned to local references that are never pulled.
    let pins = ws.path().join("pin.json");
    extract_from_bundle(&b1, "generated/pin.compose.yaml", &pins);
    let pins: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&pins).expect("pins")).expect("json");
    for (svc, img) in [("a", &base), ("b", &derived)] {
        let local = smoker_format::image_archive::local_reference(
            smoker_build::lock::repository_of(&img.reference),
            &img.digest,
        );
        assert_eq!(pins["services"][svc]["image"], local.as_str());
        assert_eq!(pins["services"][svc]["pull_policy"], "never");
        cleanup.image(&local);
    }

    // `docker load` takes the archive as it is, on a host without the images.
    remove_image(&derived.id);
    remove_image(&base.id);
    let out = docker(&["load", "--input", &archive.display().to_string()]);
    for (img, e) in [(&base, a), (&derived, b)] {
        assert!(
            out.contains(&format!("Loaded image: {}", e.repo_tags[0])),
            "{out}"
        );
        assert_eq!(
            docker(&["image", "inspect", "--format", "{{.Id}}", &e.repo_tags[0]]),
            img.id
        );
    }
}
