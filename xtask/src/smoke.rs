//! The installer's CLI smoke test against the host's real Docker engine, for an installer
//! binary that may run under an emulator (`cargo xtask armv7` runs the armv7 build under
//! `qemu-arm-static`).
//!
//! What it does, end to end, with nothing stubbed:
//! 1. builds the static test service (`tests/testsvc`) and a `FROM scratch` image of it, pushes
//!    the image to a real registry on loopback (Debian's `docker-registry`) and removes it from
//!    the engine again, so that the installer has to pull it by digest;
//! 2. writes a throw-away project — recipe (compose file, health check, a required secret,
//!    environment `smoke`), a lock pinning the pushed image in the **armv7** slot (the image
//!    itself is x86_64 and runs natively: the armv7 installer only orchestrates `docker`), and a
//!    key — and releases an armv7 bundle with this xtask's own `keygen` and `release`;
//! 3. with the installer under test: `verify` accepts the bundle and rejects a corrupted copy;
//!    `apply` installs it as generation 1, the service answers over HTTP with the released
//!    version, the running container has the pinned image ID, `status --json` reports
//!    generation 1 `good` on armv7, and `audit verify` holds;
//! 4. removes its containers, network, images, registry and files, also on failure.
//!
//! With a payload size (`--measure-mib`) the recipe also bind-mounts a data directory of that
//! size, and verify and apply are timed with their peak RSS (GNU time), next to the x86_64
//! installer's verify of the same bundle.

use crate::armv7::{cargo_program, run_capture, step, which};
use anyhow::{Context as _, Result, bail};
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Recipe (and so profile) name of the smoke bundle.
const RECIPE: &str = "smoke";
/// Environment the smoke bundle is built for and the test host declares.
const ENVIRONMENT: &str = "smoke";
/// Version released.
const VERSION: &str = "1.0.0";
/// What the service answers on `/version`.
const VERSION_TEXT: &str = "smoke-1.0.0";
/// The target the static test service is built for (its image runs natively on the host).
const SVC_TARGET: &str = "x86_64-unknown-linux-gnu";
/// Dockerfile of the test service image.
const DOCKERFILE: &str = "FROM scratch
COPY testsvc /testsvc
HEALTHCHECK --interval=1s --timeout=2s --retries=3 --start-period=10s CMD [\"/testsvc\", \"probe\", \"http://127.0.0.1:8080/health\"]
EXPOSE 8080
ENTRYPOINT [\"/testsvc\"]
CMD [\"serve\"]
";

/// What to test.
pub struct Options {
    /// Workspace root.
    pub workspace: PathBuf,
    /// The `smoker-install` binary under test.
    pub installer: PathBuf,
    /// Command prefix that runs it (e.g. `["qemu-arm-static"]`); empty to run it directly.
    pub runner: Vec<OsString>,
    /// Payload MiB for the measuring variant; `None` for the small smoke bundle.
    pub payload_mib: Option<u64>,
    /// An x86_64 installer to compare `verify` times with (measuring variant).
    pub host_installer: Option<PathBuf>,
}

/// Runs the smoke test; every failed expectation is an error naming what was seen.
pub fn run(o: &Options) -> Result<()> {
    require_tools(o)?;
    let unique = unique_name();
    let work = tempfile::Builder::new()
        .prefix("smoker-smoke-")
        .tempdir()
        .context("creating a temporary directory")?
        .keep();
    // The guard removes the directory too, after the containers that use it.
    let mut guard = Guard::default();
    guard.work = Some(work.clone());
    let work = work.as_path();

    step("building the static test service and its image");
    let svc = build_testsvc(&o.workspace)?;
    let context = work.join("image");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(&svc, context.join("testsvc"))
        .with_context(|| format!("copying {}", svc.display()))?;
    std::fs::write(context.join("Dockerfile"), DOCKERFILE)?;
    let local_tag = format!("{unique}:v1");
    guard.images.push(local_tag.clone());
    docker(&[
        "build",
        "--quiet",
        "--tag",
        &local_tag,
        // A label unique to this run gives the image an ID of its own, so removing the tags
        // below really removes the image and the installer has to pull it.
        "--label",
        &format!("org.smoker-release.smoke={unique}"),
        &context.to_string_lossy(),
    ])?;
    let image_id = docker(&["image", "inspect", "--format", "{{.Id}}", &local_tag])?;

    step("pushing it to a registry on loopback");
    let registry = Registry::start(&work.join("registry"))?;
    let port = registry.port;
    guard.registry = Some(registry);
    let repo = format!("127.0.0.1:{port}/{unique}");
    let remote = format!("{repo}:1");
    guard.images.push(remote.clone());
    docker(&["tag", &local_tag, &remote])?;
    docker(&["push", &remote])?;
    let digests = docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        &remote,
    ])?;
    let digests: Vec<String> = serde_json::from_str(&digests)
        .with_context(|| format!("reading the repo digests of {remote}: {digests}"))?;
    let digest = digests
        .iter()
        .find_map(|d| d.strip_prefix(&format!("{repo}@")))
        .with_context(|| format!("no registry digest for {remote} after the push: {digests:?}"))?
        .to_string();
    let pinned = format!("{repo}@{digest}");
    guard.images.push(pinned.clone());
    guard.images.push(image_id.clone());
    docker(&["rmi", &remote, &local_tag])?;
    if docker_ok(&["image", "inspect", &pinned]) {
        bail!(
            "{pinned} is still in the engine after removing its tags; the pull would not be tested"
        );
    }
    println!("image {pinned} (id {image_id}), removed locally: apply must pull it");

    step("writing the project and releasing an armv7 bundle");
    let svc_port = free_port()?;
    let project = work.join("project");
    write_project(
        &project,
        &remote,
        &digest,
        &image_id,
        svc_port,
        o.payload_mib,
    )?;
    // A private copy of this very binary (through /proc/self/exe, which stays readable when a
    // concurrent `cargo build` replaces target/debug/xtask) runs `keygen` and `release`.
    let xtask = work.join("xtask");
    std::fs::copy("/proc/self/exe", &xtask)
        .or_else(|_| std::fs::copy(std::env::current_exe()?, &xtask))
        .context("copying the xtask binary")?;
    let key = work.join("release.key");
    let public = work.join("release.pub");
    run_capture(
        Command::new(&xtask)
            .arg("keygen")
            .arg("--no-password")
            .arg("--secret-key")
            .arg(&key)
            .arg("--public-key")
            .arg(&public),
        "xtask keygen",
    )?;
    let out = work.join("out");
    let t = Instant::now();
    run_capture(
        Command::new(&xtask)
            .args(["release", "--version", VERSION, "--recipe", RECIPE])
            .args(["--arch", "armv7", "--env", ENVIRONMENT])
            .arg("--project-dir")
            .arg(&project)
            .arg("--secret-key")
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .env("SOURCE_DATE_EPOCH", "1700000000")
            .env_remove("SMOKER_SECRET_KEY")
            .env_remove("SMOKER_KEY_PASSWORD"),
        "xtask release",
    )?;
    let bundle = out
        .join(ENVIRONMENT)
        .join(format!("{RECIPE}-{VERSION}-armv7.tar.zst"));
    let bundle_size = std::fs::metadata(&bundle)
        .with_context(|| format!("the release wrote no {}", bundle.display()))?
        .len();
    println!(
        "bundle {} ({bundle_size} bytes) released in {:.1} s",
        bundle.display(),
        t.elapsed().as_secs_f64()
    );
    if o.payload_mib.is_some() {
        // The payload is in the bundle now; free the space.
        std::fs::remove_dir_all(project.join("recipes").join(RECIPE).join("data")).ok();
    }

    let root = work.join("root");
    let host_config = work.join("host.toml");
    std::fs::write(&host_config, format!("environment = \"{ENVIRONMENT}\"\n"))?;
    let env_file = work.join("smoke.env");
    write_private(&env_file, "SMOKE_SECRET=s3cret-for-the-smoke-test\n")?;
    let compose_project = format!("{unique}-stack");
    guard.compose_projects.push(compose_project.clone());
    let host = Host {
        runner: o.runner.clone(),
        installer: o.installer.clone(),
        root,
        host_config,
    };

    step("verify");
    let measure = o.payload_mib.is_some();
    let verify_args = |h: &Host| {
        let mut c = h.cmd();
        c.arg("verify").arg("--key").arg(&public).arg(&bundle);
        c
    };
    let verify = timed(&mut verify_args(&host), measure, work)?;
    expect_success(&verify, "verify")?;
    if !verify.stdout.starts_with("OK ") {
        bail!("verify did not print OK:\n{}", verify.describe());
    }
    println!("{}", verify.stdout.trim());

    if !measure {
        let bad = work.join("corrupted.tar.zst");
        let mut bytes = std::fs::read(&bundle)?;
        let mid = bytes.len() / 2;
        let Some(byte) = bytes.get_mut(mid) else {
            bail!("the released bundle {} is empty", bundle.display());
        };
        *byte ^= 0x55;
        std::fs::write(&bad, bytes)?;
        let mut c = host.cmd();
        let rejected = output(c.arg("verify").arg("--key").arg(&public).arg(&bad))?;
        if rejected.success {
            bail!(
                "verify accepted a corrupted bundle:\n{}",
                rejected.describe()
            );
        }
        println!(
            "corrupted copy rejected: {}",
            rejected
                .stderr
                .lines()
                .chain(rejected.stdout.lines())
                .next()
                .unwrap_or("")
                .trim()
        );
    }

    step("apply");
    let mut apply_cmd = host.cmd();
    apply_cmd
        .arg("apply")
        .arg("--key")
        .arg(&public)
        .arg("--env-file")
        .arg(&env_file)
        .arg("--project")
        .arg(&compose_project)
        .arg(&bundle);
    let apply = timed(&mut apply_cmd, measure, work)?;
    expect_success(&apply, "apply")?;
    for line in apply.stderr.lines().chain(apply.stdout.lines()) {
        println!("    {line}");
    }
    println!("apply succeeded in {:.1} s", apply.wall_secs);

    step("checking the running stack");
    let (status, body) = http_get(svc_port, "/version")
        .with_context(|| format!("the service does not answer on 127.0.0.1:{svc_port}"))?;
    if status != 200 || body.trim() != VERSION_TEXT {
        bail!("GET /version answered {status} {body:?}, expected 200 {VERSION_TEXT:?}");
    }
    println!(
        "GET http://127.0.0.1:{svc_port}/version → {status} {}",
        body.trim()
    );
    let containers = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={compose_project}"),
    ])?;
    let containers: Vec<&str> = containers.split_whitespace().collect();
    if containers.len() != 1 {
        bail!("expected one running container of {compose_project}, found {containers:?}");
    }
    let running_image = docker(&["inspect", "--format", "{{.Image}}", containers[0]])?;
    if running_image != image_id {
        bail!("the container runs image {running_image}, the lock pins {image_id}");
    }
    println!(
        "container {} runs the pinned image {image_id}",
        containers[0]
    );

    let mut c = host.cmd();
    let status_out = output(c.args(["status", "--json"]))?;
    expect_success(&status_out, "status --json")?;
    let v: serde_json::Value = serde_json::from_str(&status_out.stdout)
        .with_context(|| format!("status --json is not JSON:\n{}", status_out.stdout))?;
    let s = v
        .as_array()
        .and_then(|a| a.iter().find(|p| p["profile"] == RECIPE))
        .with_context(|| format!("status lists no profile `{RECIPE}`:\n{}", status_out.stdout))?;
    let expect = [
        ("current", serde_json::json!(1)),
        ("version", serde_json::json!(VERSION)),
        ("arch", serde_json::json!("armv7")),
        ("environment", serde_json::json!(ENVIRONMENT)),
        ("health", serde_json::json!("good")),
    ];
    for (k, want) in &expect {
        if &s[*k] != want {
            bail!(
                "status: `{k}` is {}, expected {want}:\n{}",
                s[*k],
                status_out.stdout
            );
        }
    }
    println!("status: generation 1, {VERSION} armv7, environment {ENVIRONMENT}, health good");
    let mut c = host.cmd();
    let audit = output(c.args(["audit", "verify"]))?;
    expect_success(&audit, "audit verify")?;
    println!("{}", audit.stdout.trim());

    if let Some(mib) = o.payload_mib {
        report_measurements(
            o,
            &host,
            &public,
            &bundle,
            bundle_size,
            mib,
            &verify,
            &apply,
            work,
        )?;
    }

    step("cleaning up");
    drop(guard);
    println!("containers, network, images and registry removed");
    Ok(())
}

/// Prints the measuring variant's figures.
#[allow(clippy::too_many_arguments)]
fn report_measurements(
    o: &Options,
    host: &Host,
    public: &Path,
    bundle: &Path,
    bundle_size: u64,
    mib: u64,
    first_verify: &Outcome,
    apply: &Outcome,
    work: &Path,
) -> Result<()> {
    step("measurements");
    // The emulator's own floor: peak RSS of `--version` under the same runner.
    let mut c = host.cmd();
    let floor = timed(c.arg("--version"), true, work)?;
    let mut armv7_verify = vec![first_verify.clone()];
    let mut c = host.cmd();
    armv7_verify.push(timed(
        c.arg("verify").arg("--key").arg(public).arg(bundle),
        true,
        work,
    )?);
    let mut x86_verify = Vec::new();
    if let Some(h) = &o.host_installer {
        for _ in 0..3 {
            let mut c = Command::new(h);
            c.arg("verify").arg("--key").arg(public).arg(bundle);
            let out = timed(&mut c, true, work)?;
            expect_success(&out, "x86_64 verify")?;
            x86_verify.push(out);
        }
    }
    let tar_bytes = zstd_len(bundle).unwrap_or(0);
    let best = |v: &[Outcome]| v.iter().map(|o| o.wall_secs).fold(f64::INFINITY, f64::min);
    let peak = |v: &[Outcome]| v.iter().map(|o| o.peak_kib).max().unwrap_or(0);
    println!(
        "bundle: {mib} MiB payload requested; {:.1} MiB compressed, {:.1} MiB of tar",
        bundle_size as f64 / 1048576.0,
        tar_bytes as f64 / 1048576.0
    );
    println!(
        "qemu-arm floor (smoker-install --version): peak RSS {:.1} MiB",
        floor.peak_kib as f64 / 1024.0
    );
    println!(
        "armv7 under qemu  verify: best {:.2} s of {}, peak RSS {:.1} MiB",
        best(&armv7_verify),
        armv7_verify.len(),
        peak(&armv7_verify) as f64 / 1024.0
    );
    println!(
        "armv7 under qemu  apply:  {:.2} s (incl. pull, compose up, health gate), peak RSS {:.1} MiB",
        apply.wall_secs,
        apply.peak_kib as f64 / 1024.0
    );
    if !x86_verify.is_empty() {
        let x = best(&x86_verify);
        println!(
            "x86_64 native     verify: best {x:.2} s of {}, peak RSS {:.1} MiB",
            x86_verify.len(),
            peak(&x86_verify) as f64 / 1024.0
        );
        println!(
            "emulated armv7 / native x86_64 verify time: {:.1}x",
            best(&armv7_verify) / x
        );
    }
    Ok(())
}

/// Decompressed size of a zstd file (via the `zstd` CLI), for the report.
fn zstd_len(path: &Path) -> Option<u64> {
    let mut child = Command::new("zstd")
        .arg("-dc")
        .arg(path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut out = child.stdout.take()?;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(_) => return None,
        }
    }
    child.wait().ok()?.success().then_some(n)
}

/// The host root and installer command line.
struct Host {
    runner: Vec<OsString>,
    installer: PathBuf,
    root: PathBuf,
    host_config: PathBuf,
}

impl Host {
    /// `[runner…] smoker-install --root R --host-config H`, with no `SMOKER_*` variables from
    /// the caller's environment (no fault injection, no foreign-arch override).
    fn cmd(&self) -> Command {
        let mut c = match self.runner.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.installer);
                c
            }
            None => Command::new(&self.installer),
        };
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SMOKER_") {
                c.env_remove(k);
            }
        }
        c.arg("--root")
            .arg(&self.root)
            .arg("--host-config")
            .arg(&self.host_config);
        c
    }
}

/// A finished command.
#[derive(Clone, Debug)]
struct Outcome {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    wall_secs: f64,
    peak_kib: u64,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn expect_success(o: &Outcome, what: &str) -> Result<()> {
    if !o.success {
        bail!("`smoker-install {what}` failed:\n{}", o.describe());
    }
    Ok(())
}

fn output(c: &mut Command) -> Result<Outcome> {
    let t = Instant::now();
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {:?}", c.get_program()))?;
    Ok(Outcome {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        wall_secs: t.elapsed().as_secs_f64(),
        peak_kib: 0,
    })
}

/// Runs `c`, under GNU time when `measure` (wall time and peak RSS of the whole process tree's
/// largest member: for an emulated binary, the emulator with its guest).
fn timed(c: &mut Command, measure: bool, work: &Path) -> Result<Outcome> {
    if !measure {
        return output(c);
    }
    let report = work.join("time.out");
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%e %M").arg("-o").arg(&report);
    t.arg(c.get_program()).args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let mut o = output(&mut t)?;
    let text = std::fs::read_to_string(&report).context("reading GNU time's report")?;
    let mut it = text.lines().last().unwrap_or_default().split_whitespace();
    o.wall_secs = it
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected GNU time output: {text}"))?;
    o.peak_kib = it
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("unexpected GNU time output: {text}"))?;
    Ok(o)
}

/// Fails naming what is missing: Docker, a compose front end, the registry, the runner.
fn require_tools(o: &Options) -> Result<()> {
    if !docker_ok(&["info", "--format", "{{.ServerVersion}}"]) {
        bail!("the smoke test needs a running Docker daemon (`docker info` failed)");
    }
    let v2 = docker_ok(&["compose", "version"]);
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !v1 && !v2 {
        bail!("the smoke test needs a compose front end (`docker compose` or `docker-compose`)");
    }
    if registry_binary().is_none() {
        bail!(
            "the smoke test needs the registry binary `docker-registry` (Debian package `docker-registry`)"
        );
    }
    if let Some(r) = o.runner.first()
        && which(&r.to_string_lossy()).is_none()
        && !Path::new(r).is_file()
    {
        bail!("the runner {r:?} is not installed");
    }
    if o.payload_mib.is_some() && !Path::new("/usr/bin/time").is_file() {
        bail!("measuring needs GNU time at /usr/bin/time (Debian package `time`)");
    }
    Ok(())
}

/// Builds `tests/testsvc` fully static for x86_64 (into `target/testsvc-static`, shared with
/// the integration tests) and returns the binary.
fn build_testsvc(workspace: &Path) -> Result<PathBuf> {
    let target_dir = workspace.join("target").join("testsvc-static");
    let out = Command::new(cargo_program())
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--quiet",
            "--locked",
            "-p",
            "testsvc",
            "--target",
            SVC_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .output()
        .context("running cargo")?;
    if !out.status.success() {
        bail!(
            "building the static test service failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(target_dir.join(SVC_TARGET).join("release").join("testsvc"))
}

/// Writes `recipes/smoke/{compose.yaml,recipe.toml[,data/]}` and `recipes/smoke.lock`.
fn write_project(
    project: &Path,
    image: &str,
    digest: &str,
    image_id: &str,
    port: u16,
    payload_mib: Option<u64>,
) -> Result<()> {
    let recipe = project.join("recipes").join(RECIPE);
    std::fs::create_dir_all(&recipe)?;
    let volumes = if payload_mib.is_some() {
        "    volumes:\n      - ./data:/srv/data:ro\n"
    } else {
        ""
    };
    std::fs::write(
        recipe.join("compose.yaml"),
        format!(
            "services:
  web:
    image: {image}
    environment:
      TESTSVC_VERSION: ${{VERSION_TEXT}}
      SECRET: ${{SMOKE_SECRET:?set SMOKE_SECRET}}
    ports:
      - \"127.0.0.1:${{PORT}}:8080\"
    stop_grace_period: 1s
{volumes}"
        ),
    )?;
    // The health check goes through `localhost`: name resolution of the static armv7 binary
    // (glibc's built-in files backend) is exercised too.
    std::fs::write(
        recipe.join("recipe.toml"),
        format!(
            "description = \"Smoke test: the test service, pinned by digest\"

[health]
window_secs = 90
failures = 5
interval_ms = 500
successes = 2

[[health.http]]
name = \"web\"
url = \"http://localhost:${{PORT}}/health\"
body_contains = \"ok\"
timeout_ms = 3000

[secrets]
required = [\"SMOKE_SECRET\"]

[env.{ENVIRONMENT}.config]
PORT = \"{port}\"
VERSION_TEXT = \"{VERSION_TEXT}\"
"
        ),
    )?;
    std::fs::write(
        project.join("recipes").join(format!("{RECIPE}.lock")),
        format!(
            "version = 1

# The test image is x86_64 and runs natively; the armv7 installer under qemu only drives
# docker, so the armv7 slot pins that image.
[[image]]
reference = \"{image}\"

[image.platforms.armv7]
digest = \"{digest}\"
config_digest = \"{image_id}\"
"
        ),
    )?;
    if let Some(mib) = payload_mib {
        write_payload(&recipe.join("data"), mib)?;
    }
    Ok(())
}

/// About `mib` MiB in 16 files of mixed compressibility: 6/16 random bytes, 5/16 hex text,
/// 5/16 log-like lines (a deterministic generator: no entropy needed).
fn write_payload(dir: &Path, mib: u64) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let part = (mib * 1048576 / 16).max(1);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..16u64 {
        let path = dir.join(format!("part-{i:02}"));
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?,
        );
        let mut written = 0u64;
        while written < part {
            let chunk: Vec<u8> = if i < 6 {
                (0..512).flat_map(|_| next().to_le_bytes()).collect()
            } else if i < 11 {
                (0..256)
                    .map(|_| format!("{:016x}", next()))
                    .collect::<Vec<_>>()
                    .join("")
                    .into_bytes()
            } else {
                let r = next();
                format!(
                    "2026-03-{:02} {:02}:{:02}:{:02} level=info probe={} temp_c={}.{} fan={}% msg=\"controller step\"\n",
                    1 + r % 28,
                    (r >> 8) % 24,
                    (r >> 16) % 60,
                    (r >> 24) % 60,
                    (r >> 32) % 4,
                    90 + (r >> 36) % 60,
                    (r >> 44) % 10,
                    (r >> 48) % 100
                )
                .into_bytes()
            };
            let take = chunk.len().min(usize::try_from(part - written)?);
            f.write_all(&chunk[..take])?;
            written += take as u64;
        }
        f.flush()?;
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Runs `docker ARGS`; its trimmed stdout, or an error with its stderr.
fn docker(args: &[&str]) -> Result<String> {
    let out = run_capture(
        Command::new("docker").args(args),
        &format!("docker {}", args.join(" ")),
    )?;
    Ok(out.trim().to_string())
}

fn docker_ok(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `smoker-smoke-<pid>-<random>`: a name for images, the repository and the compose project.
fn unique_name() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "smoker-smoke-{}-{:05x}",
        std::process::id(),
        nanos & 0xfffff
    )
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// `GET path` on 127.0.0.1:port; the status code and body.
fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))?;
    Ok((status, body.to_string()))
}

fn registry_binary() -> Option<PathBuf> {
    which("docker-registry").or_else(|| {
        let p = PathBuf::from("/usr/bin/docker-registry");
        p.is_file().then_some(p)
    })
}

/// Debian's registry on a free loopback port, storage under `dir`.
struct Registry {
    child: Child,
    port: u16,
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let binary = registry_binary().context("docker-registry is not installed")?;
        std::fs::create_dir_all(dir.join("storage"))?;
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port()?;
            let config = dir.join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n  secret: smoker-release-smoke\n\
                     health:\n  storagedriver:\n    enabled: false\n",
                    dir.join("storage").display()
                ),
            )?;
            let log = std::fs::File::create(dir.join("registry.log"))?;
            let mut cmd = Command::new(&binary);
            cmd.arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", binary.display()))?;
            let mut r = Registry { child, port };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = r.child.try_wait() {
                    last = format!("registry exited with {status}");
                    break;
                }
                if matches!(http_get(port, "/v2/"), Ok((200, _))) {
                    return Ok(r);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            r.stop();
            last = format!(
                "{last}\n{}",
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
        }
        bail!("the loopback registry did not start:\n{last}")
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes, on drop (also after a failure), what the smoke test created in Docker, and stops
/// the registry.
#[derive(Default)]
struct Guard {
    compose_projects: Vec<String>,
    images: Vec<String>,
    registry: Option<Registry>,
    /// The scratch directory, deleted last (store entries in it are read-only).
    work: Option<PathBuf>,
}

/// Gives the owner write permission on every directory below `path` (store entries are
/// read-only), so that it can be deleted without root.
fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let mut perm = meta.permissions();
        perm.set_mode(perm.mode() | 0o700);
        let _ = std::fs::set_permissions(path, perm);
        if let Ok(entries) = std::fs::read_dir(path) {
            for e in entries.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let ids = |args: &[&str]| -> Vec<String> {
            Command::new("docker")
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        // `docker PREFIX… ITEMS…`, only when there are items.
        let quiet = |prefix: &[&str], items: Vec<String>| {
            if !items.is_empty() {
                let _ = Command::new("docker")
                    .args(prefix)
                    .args(items)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        };
        for p in &self.compose_projects {
            let label = format!("label=com.docker.compose.project={p}");
            quiet(&["rm", "-f", "-v"], ids(&["ps", "-aq", "--filter", &label]));
            quiet(
                &["network", "rm"],
                ids(&["network", "ls", "-q", "--filter", &label]),
            );
            quiet(
                &["volume", "rm", "-f"],
                ids(&["volume", "ls", "-q", "--filter", &label]),
            );
        }
        quiet(&["rmi", "-f"], std::mem::take(&mut self.images));
        if let Some(r) = &mut self.registry {
            r.stop();
        }
        if let Some(dir) = self.work.take() {
            make_writable(&dir);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                eprintln!("warning: could not remove {}: {e}", dir.display());
            }
        }
    }
}
