//! `cargo xtask rollout` over real OpenSSH: four simulated hosts on this machine, each its own
//! sshd on a loopback port, its own installer root, host config, env file and Compose project
//! on the one Docker engine.

use smoker_format::manifest::Arch;
use smoker_testkit::images::version_at;
use smoker_testkit::ports::free_port;
use smoker_testkit::project::{SVC, WebService, docker_health_recipe};
use smoker_testkit::sshd::{ClientKey, Sshd};
use smoker_testkit::{Host, Project, Release, Testbed, text};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// One simulated host: sshd, installer root, the port its stack serves on.
struct FleetHost {
    name: String,
    sshd: Sshd,
    host: Host,
    port: u16,
    env_file: PathBuf,
}

fn write_env(path: &Path, port: u16, extra: &str) {
    std::fs::write(
        path,
        format!("TEST_SECRET=fleet-secret-value\nPORT={port}\n{extra}"),
    )
    .expect("env file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

/// The inventory of `hosts` for `project`'s key, written to `dir/fleet.toml`.
fn inventory(dir: &Path, hosts: &[FleetHost], project: &Project, client: &ClientKey) -> PathBuf {
    let installer = smoker_testkit::bins::smoker_install();
    let mut t = format!(
        "[defaults]\nprofile = \"{SVC}\"\narch = \"amd64\"\nenvironment = \"prod\"\nidentity = \"{}\"\nssh_options = [\"StrictHostKeyChecking=no\", \"UserKnownHostsFile=/dev/null\", \"LogLevel=ERROR\"]\n\n[groups.edge]\n\n",
        client.private.display()
    );
    for h in hosts {
        t.push_str(&format!(
            "[[hosts]]\nname = \"{}\"\nssh = \"root@127.0.0.1\"\nport = {}\ngroups = [\"edge\"]\ninstaller = [\"{}\", \"--root\", \"{}\", \"--host-config\", \"{}\"]\napply_args = [\"--key\", \"{}\", \"--env-file\", \"{}\", \"--project\", \"{}\"]\nremote_dir = \"{}\"\n\n",
            h.name,
            h.sshd.port,
            installer.display(),
            h.host.root().display(),
            h.host.host_config().display(),
            project.public_key.display(),
            h.env_file.display(),
            h.host.project,
            h.host.root().join("incoming").display(),
        ));
    }
    let p = dir.join("fleet.toml");
    std::fs::write(&p, t).expect("fleet.toml");
    p
}

/// `xtask rollout` with `args`; returns (success, JSON report, stderr).
fn rollout(
    inv: &Path,
    from: &Path,
    project: &Project,
    report: &Path,
    args: &[&str],
) -> (bool, serde_json::Value, String) {
    let out = std::process::Command::new(smoker_testkit::bins::xtask())
        .arg("rollout")
        .arg("--inventory")
        .arg(inv)
        .arg("--from")
        .arg(from)
        .arg("--keys")
        .arg(&project.public_key)
        .arg("--report")
        .arg(report)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run xtask rollout");
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(report).unwrap_or_else(|e| panic!("no report ({e}): {}", text(&out))),
    )
    .expect("report JSON");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    (
        out.status.success(),
        r,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn results(r: &serde_json::Value) -> Vec<String> {
    r["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["result"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Releases v1 (knobs from the usual variables) and v2 (whose service is unhealthy on a
/// host whose env file sets `V2_UNHEALTHY=1`) into `from/`.
fn release(project: &Project, image: &smoker_testkit::Pushed, from: &Path) {
    project.pin(SVC, image, Arch::Amd64);
    for (version, text, unhealthy) in [
        ("1.0.0", "v1", "${UNHEALTHY:-0}"),
        ("2.0.0", "v2", "${V2_UNHEALTHY:-0}"),
    ] {
        let compose = WebService::new(&image.reference)
            .env("TESTSVC_UNHEALTHY", unhealthy)
            .env("SECRET", "${TEST_SECRET:?set TEST_SECRET}")
            .yaml();
        // PORT comes from each host's env file (it overrides the recipe's config).
        project.write_recipe(SVC, &compose, &docker_health_recipe(1, text, "prod"));
        let b = project.release(&Release::new(SVC, version)).bundle;
        let d = from.join("prod");
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::copy(&b, d.join(b.file_name().expect("name"))).expect("copy bundle");
    }
}

#[test]
fn immediate_then_rolling_stops_at_the_unhealthy_third_host_and_a_stopped_sshd_is_offline() {
    let mut bed = Testbed::new();
    let image = bed.image.clone();
    let project = Project::library();
    let work = smoker_testkit::tempdir("smoker-fleet-");
    let from = work.path().join("release");
    release(&project, &image, &from);
    let client = ClientKey::new();
    let mut hosts: Vec<FleetHost> = (1..=4)
        .map(|i| {
            let host = bed.host(None);
            let port = if i == 1 { bed.port } else { free_port() };
            let env_file = host.root().join("host.env");
            write_env(&env_file, port, "");
            FleetHost {
                name: format!("h{i}"),
                sshd: Sshd::start(&client),
                host,
                port,
                env_file,
            }
        })
        .collect();
    let inv = inventory(work.path(), &hosts, &project, &client);
    let report = work.path().join("report.json");

    // Immediate: v1 everywhere (the release directory holds v1 only at first).
    let v2_file = from.join("prod").join(format!("{SVC}-2.0.0-amd64.tar.zst"));
    let aside = work.path().join("v2-aside.tar.zst");
    std::fs::rename(&v2_file, &aside).expect("set v2 aside");
    let (ok, r, err) = rollout(&inv, &from, &project, &report, &["--strategy", "immediate"]);
    assert!(ok, "immediate rollout: {err}\n{r:#}");
    assert_eq!(results(&r), ["committed"; 4], "{r:#}");
    for h in &hosts {
        assert_eq!(version_at(h.port).as_deref(), Some("v1"), "{}", h.name);
    }
    std::fs::rename(&aside, &v2_file).expect("v2 back");

    // Host 3's environment makes v2 unhealthy.
    write_env(&hosts[2].env_file, hosts[2].port, "V2_UNHEALTHY=1\n");
    let (ok, r, err) = rollout(
        &inv,
        &from,
        &project,
        &report,
        &[
            "--strategy",
            "rolling",
            "--batch",
            "1",
            "--max-failures",
            "0",
        ],
    );
    assert!(!ok, "the rollout must fail: {r:#}");
    assert!(err.contains("rollout failed on: h3"), "{err}");
    assert_eq!(
        results(&r),
        ["committed", "committed", "rolled-back", "untouched"],
        "{r:#}"
    );
    assert!(
        r["stopped"].as_str().unwrap_or("").contains("untouched"),
        "{r:#}"
    );
    assert_eq!(r["hosts"][0]["old_version"], "1.0.0");
    assert_eq!(r["hosts"][0]["new_version"], "2.0.0");
    assert_eq!(r["hosts"][2]["exit_code"], 7);
    assert_eq!(version_at(hosts[0].port).as_deref(), Some("v2"));
    assert_eq!(version_at(hosts[1].port).as_deref(), Some("v2"));
    assert_eq!(
        version_at(hosts[2].port).as_deref(),
        Some("v1"),
        "h3 rolled back"
    );
    assert_eq!(
        version_at(hosts[3].port).as_deref(),
        Some("v1"),
        "h4 untouched"
    );
    assert_eq!(hosts[3].host.status()["current"], 1);
    assert!(
        !hosts[3]
            .host
            .root()
            .join("incoming")
            .join(v2_file.file_name().expect("n"))
            .exists(),
        "nothing was copied to the untouched host"
    );
    for h in r["hosts"].as_array().expect("hosts").iter().take(2) {
        let (total, apply) = (
            h["duration_ms"].as_u64().unwrap_or(0),
            h["apply_ms"].as_u64().unwrap_or(0),
        );
        eprintln!(
            "MEASURE rollout overhead {}: {} ms total, {} ms apply, {} ms beyond the apply (copy of {} bytes); steps {}",
            h["host"],
            total,
            apply,
            total - apply,
            h["copy"]["sent"],
            h["steps_ms"]
        );
    }

    // h4's sshd stopped: offline, not a failure; with --require-all, a failure.
    hosts[3].sshd.stop();
    let (ok, r, err) = rollout(&inv, &from, &project, &report, &["--host", "h4"]);
    assert!(ok, "an offline host is no failure: {err}\n{r:#}");
    assert_eq!(results(&r), ["offline"]);
    assert!(
        r["hosts"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable")
    );
    let (ok, r, _) = rollout(
        &inv,
        &from,
        &project,
        &report,
        &["--host", "h4", "--require-all"],
    );
    assert!(!ok, "--require-all: {r:#}");
    assert_eq!(version_at(hosts[3].port).as_deref(), Some("v1"));
    drop(hosts);
}

/// Seconds into the current local minute, and the local minute of the day (as `date` sees
/// the host's time zone, like the installer).
fn clock() -> (u64, u32) {
    let out = std::process::Command::new("date")
        .arg("+%H %M %S")
        .output()
        .expect("date");
    let t: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(t.len(), 3, "date printed {:?}", out);
    (u64::from(t[2]), t[0] * 60 + t[1])
}

/// `smoker-install staged --apply-due --json` on a host, as its timer runs it.
fn apply_due(h: &FleetHost, project: &Project) -> serde_json::Value {
    let out = h
        .host
        .cmd()
        .args(["staged", "--apply-due", "--json", "--key"])
        .arg(&project.public_key)
        .output()
        .expect("run smoker-install staged");
    assert!(out.status.success(), "staged --apply-due: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn scheduled_stages_now_and_each_host_applies_by_itself_once_its_window_opens() {
    let mut bed = Testbed::new();
    let image = bed.image.clone();
    let project = Project::library();
    let work = smoker_testkit::tempdir("smoker-fleet-");
    let from = work.path().join("release");
    release(&project, &image, &from);
    let client = ClientKey::new();
    let hosts: Vec<FleetHost> = (1..=2)
        .map(|i| {
            let host = bed.host(None);
            let port = if i == 1 { bed.port } else { free_port() };
            let env_file = host.root().join("host.env");
            write_env(&env_file, port, "");
            FleetHost {
                name: format!("s{i}"),
                sshd: Sshd::start(&client),
                host,
                port,
                env_file,
            }
        })
        .collect();
    let inv = inventory(work.path(), &hosts, &project, &client);
    let report = work.path().join("report.json");
    let v2_file = from.join("prod").join(format!("{SVC}-2.0.0-amd64.tar.zst"));
    let aside = work.path().join("v2-aside.tar.zst");
    std::fs::rename(&v2_file, &aside).expect("set v2 aside");
    let (ok, r, err) = rollout(&inv, &from, &project, &report, &["--strategy", "immediate"]);
    assert!(ok, "immediate v1: {err}\n{r:#}");
    std::fs::rename(&aside, &v2_file).expect("v2 back");

    // A window that opens at the next minute (with time left to stage before it does).
    if clock().0 > 40 {
        std::thread::sleep(std::time::Duration::from_secs(61 - clock().0));
    }
    let m = (clock().1 + 1) % 1440;
    let end = (m + 10) % 1440;
    let window = format!(
        "{:02}:{:02}-{:02}:{:02}",
        m / 60,
        m % 60,
        end / 60,
        end % 60
    );
    let (ok, r, err) = rollout(
        &inv,
        &from,
        &project,
        &report,
        &["--strategy", "scheduled", "--window", &window],
    );
    assert!(ok, "scheduled: {err}\n{r:#}");
    assert_eq!(results(&r), ["staged", "staged"], "{r:#}");
    assert!(
        r["hosts"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&window),
        "the report says when: {r:#}"
    );
    for h in &hosts {
        assert_eq!(
            version_at(h.port).as_deref(),
            Some("v1"),
            "nothing switched yet"
        );
        let d = apply_due(h, &project);
        assert_eq!(d["data"]["staged"][0]["action"], "waiting", "{d:#}");
    }
    // The window opens: each host's timer run applies the staged bundle.
    let wait = 60 - clock().0 + 1;
    std::thread::sleep(std::time::Duration::from_secs(wait));
    for h in &hosts {
        let d = apply_due(h, &project);
        assert_eq!(d["data"]["staged"][0]["action"], "applied", "{d:#}");
        assert_eq!(version_at(h.port).as_deref(), Some("v2"), "{}", h.name);
        let steps = &d["data"]["staged"][0]["apply"]["durations_us"];
        assert!(steps.get("verify+stage").is_none(), "re-verified: {steps}");
    }
}
