//! `cargo xtask publish` + `smoker-install pull`: a signed channel served by a local static
//! server that counts every byte (ETag, Range, a download cut in the middle), and the real
//! Docker engine behind the applies.

use smoker_testkit::images::version_at;
use smoker_testkit::project::SVC;
use smoker_testkit::statics::StaticServer;
use smoker_testkit::{Host, Project, Testbed, text};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {}", text(out)))
}

/// `xtask publish` of the bundles under `from` into `out`, with `extra` flags.
fn publish(project: &Project, from: &Path, out: &Path, extra: &[&str]) {
    let (from, out, key) = (
        from.display().to_string(),
        out.display().to_string(),
        project.key.display().to_string(),
    );
    let mut args = vec![
        "publish",
        "--channel",
        "stable",
        "--from",
        &from,
        "--out",
        &out,
        "--secret-key",
        &key,
    ];
    args.extend(extra);
    let o = project.xtask(&args, &[]);
    assert!(o.status.success(), "xtask publish: {}", text(&o));
}

/// Copies a released bundle into `dir/prod/`.
fn collect(bundle: &Path, dir: &Path) -> PathBuf {
    let d = dir.join("prod");
    std::fs::create_dir_all(&d).expect("mkdir");
    let to = d.join(bundle.file_name().expect("file name"));
    std::fs::copy(bundle, &to).expect("copy bundle");
    to
}

fn pull(host: &Host, project: &Project, url: &str) -> std::process::Output {
    let mut c = host.cmd();
    c.args([
        "pull",
        "--json",
        "--attempts",
        "1",
        "--profile",
        SVC,
        "--channel",
        url,
    ])
    .arg("--key")
    .arg(&project.public_key)
    .arg("--env-file")
    .arg(&project.env_file)
    .arg("--project")
    .arg(&host.project);
    c.output().expect("run smoker-install pull")
}

fn channel(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("channel.json")).expect("channel.json"))
        .expect("channel JSON")
}

#[test]
fn pull_applies_then_costs_one_small_request_resumes_a_cut_download_and_refuses_stale_channels() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let host = bed.host(None);
    let work = tempfile::tempdir().expect("tempdir");
    let (releases, chan) = (work.path().join("releases"), work.path().join("channel"));
    collect(&v1, &releases);
    publish(&project, &releases, &chan, &[]);
    let c1 = channel(&chan);
    let entry = &c1["bundles"][0];
    assert_eq!(entry["profile"], SVC);
    assert_eq!(entry["version"], "1.0.0");
    let (sha, size) =
        smoker_format::digest::sha256_file(&chan.join(entry["file"].as_str().expect("file")))
            .expect("published copy");
    assert_eq!(entry["sha256"], sha.as_str());
    assert_eq!(entry["size"], size);
    assert!(chan.join("channel.json.minisig").is_file());
    let server = StaticServer::start(&chan);
    let url = format!("{}/", server.base);

    // First poll: the bundle is downloaded, verified and applied.
    let out = pull(&host, &project, &url);
    assert!(out.status.success(), "first pull: {}", text(&out));
    let p = json(&out);
    assert_eq!(p["data"]["profiles"][0]["action"], "applied", "{p}");
    assert_eq!(version_at(port).as_deref(), Some("v1"));
    assert_eq!(p["data"]["profiles"][0]["downloaded_bytes"], size);

    // Second poll: one conditional request, answered 304, no body.
    let (before_bytes, before_requests) = (server.wire_bytes(), server.requests());
    let t = Instant::now();
    let out = pull(&host, &project, &url);
    let took = t.elapsed();
    assert!(out.status.success(), "second pull: {}", text(&out));
    let p = json(&out);
    assert_eq!(p["data"]["not_modified"], true, "{p}");
    assert_eq!(p["data"]["profiles"][0]["action"], "up-to-date");
    assert_eq!(p["data"]["bytes_received"], 0);
    assert_eq!(server.requests() - before_requests, 1, "{:?}", server.log());
    let sent = server.wire_bytes() - before_bytes;
    assert!(sent < 512, "a poll with nothing new sent {sent} bytes");
    eprintln!(
        "MEASURE poll with nothing new: {} request, {sent} bytes from the server (headers, no body), {} ms for the whole `smoker-install pull`",
        server.requests() - before_requests,
        took.as_millis()
    );

    // v2 published (sequence grows); its download is cut in the middle, then resumed.
    let v2 = project.release_svc("2.0.0", port, 20, &[("VERSION_TEXT", "v2")]);
    collect(&v2, &releases);
    publish(&project, &releases, &chan, &[]);
    let c2 = channel(&chan);
    assert!(
        c2["sequence"].as_u64() > c1["sequence"].as_u64(),
        "{c1} then {c2}"
    );
    let size2 = c2["bundles"][0]["size"].as_u64().expect("size");
    let half = size2 / 2;
    server.cut_next(".tar.zst", half);
    let out = pull(&host, &project, &url);
    assert!(
        !out.status.success(),
        "a cut download must fail: {}",
        text(&out)
    );
    assert_eq!(json(&out)["data"]["profiles"][0]["downloaded_bytes"], half);
    assert_eq!(version_at(port).as_deref(), Some("v1"), "v1 still serves");
    let before = server.body_bytes();
    let out = pull(&host, &project, &url);
    assert!(out.status.success(), "resumed pull: {}", text(&out));
    let p = json(&out);
    let prof = &p["data"]["profiles"][0];
    assert_eq!(prof["action"], "applied", "{p}");
    assert_eq!(prof["resumed_from"], half);
    assert_eq!(prof["downloaded_bytes"], size2 - half);
    // The channel was not modified since the cut poll fetched it: only the rest of the bundle.
    let again = server.body_bytes() - before;
    assert_eq!(again, size2 - half, "{:?}", server.log());
    eprintln!(
        "MEASURE resume after a cut at {half} of {size2} bytes: {again} body bytes transferred again (0 re-sent)"
    );
    assert_eq!(version_at(port).as_deref(), Some("v2"));

    // A channel with a lower sequence, signed by the same key, is refused.
    let old = work.path().join("old");
    publish(&project, &releases, &old, &["--sequence", "1"]);
    server.set_root(&old);
    let out = pull(&host, &project, &url);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let msg = json(&out)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("lower than"), "{msg}");

    // A channel whose newest is older than what serves (v2 came another way, e.g. USB):
    // whichever is newer wins, nothing is downgraded and the poll succeeds.
    let only_v1 = work.path().join("only-v1");
    collect(&v1, &only_v1);
    let older = work.path().join("older");
    let seq = (c2["sequence"].as_u64().expect("seq") + 5).to_string();
    publish(&project, &only_v1, &older, &["--sequence", &seq]);
    server.set_root(&older);
    let out = pull(&host, &project, &url);
    assert!(
        out.status.success(),
        "older channel content: {}",
        text(&out)
    );
    let p = json(&out);
    assert_eq!(p["data"]["profiles"][0]["action"], "up-to-date", "{p}");
    assert!(
        p["data"]["profiles"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not downgraded"),
        "{p}"
    );
    assert_eq!(version_at(port).as_deref(), Some("v2"));

    // An expired channel (newer sequence) is refused.
    let stale = work.path().join("stale");
    let seq = (c2["sequence"].as_u64().expect("seq") + 10).to_string();
    publish(
        &project,
        &releases,
        &stale,
        &["--sequence", &seq, "--expires-in", "0"],
    );
    server.set_root(&stale);
    let out = pull(&host, &project, &url);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let msg = json(&out)["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("expired"), "{msg}");
    assert_eq!(version_at(port).as_deref(), Some("v2"), "nothing changed");
}

#[test]
fn outside_the_window_pull_stages_and_a_channel_signed_by_another_key_is_refused() {
    let mut bed = Testbed::new();
    let (image, port) = (bed.image.clone(), bed.port);
    let project = Project::testsvc(&image, port, 20);
    let v1 = project.release_svc("1.0.0", port, 20, &[("VERSION_TEXT", "v1")]);
    let host = bed.host(None);
    let work = tempfile::tempdir().expect("tempdir");
    let (releases, chan) = (work.path().join("releases"), work.path().join("channel"));
    collect(&v1, &releases);
    // A window that closed a minute ago (local time) and opens again in ~23 h.
    let m = smoker::stage::local_minute_of_day();
    let (start, end) = ((m + 1440 - 120) % 1440, (m + 1440 - 1) % 1440);
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    );
    publish(&project, &releases, &chan, &["--window", &window]);
    let server = StaticServer::start(&chan);
    let url = server.base.clone();
    let out = pull(&host, &project, &url);
    assert!(out.status.success(), "pull: {}", text(&out));
    let p = json(&out);
    assert_eq!(p["data"]["profiles"][0]["action"], "staged", "{p}");
    assert_eq!(version_at(port), None, "nothing applied outside the window");
    assert!(
        host.root()
            .join("staged")
            .join(format!("{SVC}.json"))
            .is_file()
    );
    // The next poll downloads nothing and keeps waiting.
    let before = server.body_bytes();
    let out = pull(&host, &project, &url);
    assert!(out.status.success(), "pull: {}", text(&out));
    assert_eq!(json(&out)["data"]["profiles"][0]["action"], "waiting");
    assert_eq!(server.body_bytes(), before);

    // A channel re-signed by a key the host does not trust.
    let other = Project::library();
    let forged = work.path().join("forged");
    let o = other.xtask(
        &[
            "publish",
            "--channel",
            "stable",
            "--from",
            &releases.display().to_string(),
            "--out",
            &forged.display().to_string(),
            "--secret-key",
            &other.key.display().to_string(),
            "--keys",
            &project.public_key.display().to_string(),
            "--sequence",
            "99999999999",
        ],
        &[],
    );
    assert!(o.status.success(), "publish with another key: {}", text(&o));
    server.set_root(&forged);
    let out = pull(&host, &project, &url);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        json(&out)["message"]
            .as_str()
            .unwrap_or_default()
            .contains("signature"),
        "{}",
        text(&out)
    );
}

#[test]
fn an_unreachable_channel_is_retried_with_growing_delays_then_reported_without_changing_anything() {
    let mut cleanup = smoker_testkit::Cleanup::new();
    let host = Host::new(&mut cleanup, None);
    let project = Project::library();
    // A port nobody listens on.
    let port = smoker_testkit::ports::free_port();
    let t = Instant::now();
    let out = host
        .cmd()
        .args([
            "pull",
            "--json",
            "--attempts",
            "3",
            "--backoff-ms",
            "200",
            "--profile",
            SVC,
        ])
        .arg("--channel")
        .arg(format!("http://127.0.0.1:{port}/stable/"))
        .arg("--key")
        .arg(&project.public_key)
        .output()
        .expect("run smoker-install pull");
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v = json(&out);
    assert_eq!(v["kind"], "runtime");
    assert!(
        v["message"].as_str().unwrap_or("").contains("unreachable"),
        "{v}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("retrying in").count(), 2, "{err}");
    // 200 ms then 400 ms, each plus up to half again of jitter.
    assert!(
        took >= std::time::Duration::from_millis(600) && took < std::time::Duration::from_secs(5),
        "{took:?}"
    );
    assert!(!host.root().join("pull").join("downloads").exists());
}
