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
//! Everything it needs from Docker, the registry, the test service and the project comes from
//! the workspace's test kit (`smoker-testkit`), the same one the integration tests use.
//!
//! With a payload size (`--measure-mib`) the recipe also bind-mounts a data directory of that
//! size, and verify and apply are timed with their peak RSS (GNU time), next to the x86_64
//! installer's verify of the same bundle.

use crate::process::{step, which};
use anyhow::{Context as _, Result, bail};
use smoker_format::manifest::Arch;
use smoker_testkit::docker::{
    available_frontends, check_docker, docker, image_inspect, running_containers,
};
use smoker_testkit::images::unique_testsvc;
use smoker_testkit::ports::free_port;
use smoker_testkit::project::{Driver, RecipeToml, Release, WebService};
use smoker_testkit::registry::find_registry_binary;
use smoker_testkit::{Cleanup, Host, Project, Pushed, Registry, http, unique_name};
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Recipe (and so profile) name of the smoke bundle.
const RECIPE: &str = "smoke";
/// Environment the smoke bundle is built for and the test host declares.
const ENVIRONMENT: &str = "smoke";
/// Version released.
const VERSION: &str = "1.0.0";
/// What the service answers on `/version`.
const VERSION_TEXT: &str = "smoke-1.0.0";

/// What to test.
pub struct Options {
    /// The `smoker-install` binary under test.
    pub installer: PathBuf,
    /// Command prefix that runs it (e.g. `["qemu-arm-static"]`); empty to run it directly.
    pub runner: Vec<OsString>,
    /// Payload MiB for the measuring variant; `None` for the small smoke bundle.
    pub payload_mib: Option<u64>,
    /// An x86_64 installer to compare `verify` times with (measuring variant).
    pub host_installer: Option<PathBuf>,
}

/// Runs the smoke test; every failed expectation is an error naming what was seen. (The test
/// kit panics on a failed Docker or registry step; that becomes an error here too, after its
/// guards cleaned up.)
pub fn run(o: &Options) -> Result<()> {
    require_tools(o)?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| smoke(o))) {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            bail!("the smoke test failed: {why}")
        }
    }
}

fn smoke(o: &Options) -> Result<()> {
    // Declared first, so dropped last: containers, networks and images go after the registry,
    // the host root and the project.
    let mut cleanup = Cleanup::new();
    let work_dir = tempfile::Builder::new()
        .prefix("smoker-smoke-")
        .tempdir()
        .context("creating a temporary directory")?;
    let work = work_dir.path();

    step("building the static test service and its image, pushing it to a registry on loopback");
    let registry = Registry::start();
    let repo = unique_name("smoke");
    // An image ID of its own (a label unique to this run), so removing its tags below really
    // removes the image and the installer has to pull it.
    let image = unique_testsvc(&registry, &mut cleanup, &repo, "1");
    let pinned = registry.digest_reference(&repo, &image.digest);
    cleanup.image(&pinned);
    docker(&["rmi", &image.reference, &image.local]);
    if image_inspect(&pinned, "{{.Id}}").is_some() {
        bail!(
            "{pinned} is still in the engine after removing its tags; the pull would not be tested"
        );
    }
    println!(
        "image {pinned} (id {}), removed locally: apply must pull it",
        image.id
    );

    step("writing the project and releasing an armv7 bundle");
    let svc_port = free_port();
    // A private copy of this very binary (through /proc/self/exe, which stays readable when a
    // concurrent `cargo build` replaces target/debug/xtask) runs `keygen` and `release`.
    let xtask = work.join("xtask");
    std::fs::copy("/proc/self/exe", &xtask)
        .or_else(|_| std::fs::copy(std::env::current_exe()?, &xtask))
        .context("copying the xtask binary")?;
    let project = Project::new(Driver::Cli(xtask));
    write_project(&project, &image, svc_port, o.payload_mib)?;
    let t = Instant::now();
    let bundle = project
        .release(
            &Release::new(RECIPE, VERSION)
                .arch(Arch::Armv7)
                .env(ENVIRONMENT)
                .out("out"),
        )
        .bundle;
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
        std::fs::remove_dir_all(project.recipe_dir(RECIPE).join("data")).ok();
    }

    let host = Host::with_installer(&mut cleanup, o.installer.clone(), o.runner.clone());
    std::fs::write(
        host.host_config(),
        format!("environment = \"{ENVIRONMENT}\"\n"),
    )?;
    project.write_env_file("SMOKE_SECRET=s3cret-for-the-smoke-test\n");
    let public = &project.public_key;

    step("verify");
    let measure = o.payload_mib.is_some();
    let mut verify_cmd = host.cmd();
    verify_cmd
        .arg("verify")
        .arg("--key")
        .arg(public)
        .arg(&bundle);
    let verify = timed(&mut verify_cmd, measure, work)?;
    expect_success(&verify, "verify")?;
    if !verify.stdout.starts_with("OK ") {
        bail!("verify did not print OK:\n{}", verify.describe());
    }
    println!("{}", verify.stdout.trim());

    if !measure {
        corrupted_copy_is_rejected(&host, public, &bundle, work)?;
    }

    step("apply");
    let apply = timed(&mut host.apply_cmd(&project, &bundle, &[]), measure, work)?;
    expect_success(&apply, "apply")?;
    for line in apply.stderr.lines().chain(apply.stdout.lines()) {
        println!("    {line}");
    }
    println!("apply succeeded in {:.1} s", apply.wall_secs);

    step("checking the running stack");
    check_running_stack(&host, &image.id, svc_port)?;

    if let Some(mib) = o.payload_mib {
        report_measurements(
            o,
            &host,
            public,
            &bundle,
            bundle_size,
            mib,
            &verify,
            &apply,
            work,
        )?;
    }

    step("cleaning up");
    drop(host);
    drop(project);
    drop(registry);
    drop(cleanup);
    println!("containers, network, images and registry removed");
    Ok(())
}

/// A copy of the bundle with one byte flipped in the middle must be refused by `verify`.
fn corrupted_copy_is_rejected(
    host: &Host,
    public: &Path,
    bundle: &Path,
    work: &Path,
) -> Result<()> {
    let bad = work.join("corrupted.tar.zst");
    let mut bytes = std::fs::read(bundle)?;
    let mid = bytes.len() / 2;
    let Some(byte) = bytes.get_mut(mid) else {
        bail!("the released bundle {} is empty", bundle.display());
    };
    *byte ^= 0x55;
    std::fs::write(&bad, bytes)?;
    let mut c = host.cmd();
    let rejected = output(c.arg("verify").arg("--key").arg(public).arg(&bad))?;
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
    Ok(())
}

/// The service answers with its version, its one container runs the pinned image, `status`
/// reports generation 1 good, and the audit log is intact.
fn check_running_stack(host: &Host, image_id: &str, svc_port: u16) -> Result<()> {
    let answer = http::get(&format!("http://127.0.0.1:{svc_port}/version"))
        .with_context(|| format!("the service does not answer on 127.0.0.1:{svc_port}"))?;
    let (status, body) = (answer.status, answer.text());
    if status != 200 || body.trim() != VERSION_TEXT {
        bail!("GET /version answered {status} {body:?}, expected 200 {VERSION_TEXT:?}");
    }
    println!(
        "GET http://127.0.0.1:{svc_port}/version → {status} {}",
        body.trim()
    );
    let containers = running_containers(&host.project);
    let [(container, running_image)] = containers.as_slice() else {
        bail!(
            "expected one running container of {}, found {containers:?}",
            host.project
        );
    };
    if *running_image != image_id {
        bail!(
            "the container runs image {running_image}, the lock pins {}",
            image_id
        );
    }
    println!("container {container} runs the pinned image {}", image_id);

    let mut c = host.cmd();
    let status_out = output(c.args(["status", "--json"]))?;
    expect_success(&status_out, "status --json")?;
    let v: serde_json::Value = serde_json::from_str(&status_out.stdout)
        .with_context(|| format!("status --json is not JSON:\n{}", status_out.stdout))?;
    let s = v["data"]["profiles"]
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
    if let Err(e) = check_docker() {
        bail!("the smoke test needs a running Docker daemon: {e}");
    }
    if available_frontends().is_empty() {
        bail!("the smoke test needs a compose front end (`docker compose` or `docker-compose`)");
    }
    if find_registry_binary().is_none() {
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

/// Writes `recipes/smoke/{compose.yaml,recipe.toml[,data/]}` and `recipes/smoke.lock`.
fn write_project(
    project: &Project,
    image: &Pushed,
    port: u16,
    payload_mib: Option<u64>,
) -> Result<()> {
    let mut compose =
        WebService::new(&image.reference).env("SECRET", "${SMOKE_SECRET:?set SMOKE_SECRET}");
    if payload_mib.is_some() {
        compose = compose.volume("./data:/srv/data:ro");
    }
    // The health check goes through `localhost`: name resolution of the static armv7 binary
    // (glibc's built-in files backend) is exercised too.
    let recipe = RecipeToml::new(90)
        .description("Smoke test: the test service, pinned by digest")
        .failures(5)
        .interval_ms(500)
        .successes(2)
        .http_check("http://localhost:${PORT}/health", 3000)
        .secret("SMOKE_SECRET")
        .env(
            ENVIRONMENT,
            &[
                ("PORT", port.to_string()),
                ("VERSION_TEXT", VERSION_TEXT.to_string()),
            ],
        );
    project.write_recipe(RECIPE, &compose.yaml(), &recipe.to_toml());
    // The test image is x86_64 and runs natively; the armv7 installer under qemu only drives
    // docker, so the armv7 slot pins that image.
    project.pin(RECIPE, image, Arch::Armv7);
    if let Some(mib) = payload_mib {
        write_payload(&project.recipe_dir(RECIPE).join("data"), mib)?;
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
