//! `cargo xtask armv7`: the installer for the Raspberry Pi, built and tested for real.
//!
//! 1. makes sure Debian's armv7 toolchain is there (`scripts/armv7-toolchain.sh --check`;
//!    when something is missing it runs the script to install it, unless `--no-install`);
//! 2. cross-builds `smoker-install` for `armv7-unknown-linux-gnueabihf` with that toolchain,
//!    **fully static** (`-C target-feature=+crt-static`: the Pi's Raspbian bullseye has glibc
//!    2.31, older than the build machine's), into its own target dir (`target/armv7`) so the
//!    host build cache is left alone, and checks the result is a static 32-bit ARM executable;
//! 3. runs the library's unit tests for that target under `qemu-arm-static`;
//! 4. runs the CLI smoke test ([`crate::smoke`]) with the armv7 binary under `qemu-arm-static`,
//!    orchestrating the host's real Docker engine.
//!
//! The toolchain environment (`RUSTC`, `RUSTDOC`, linker, C compiler, archiver) is given only
//! to the cargo processes started here: the rest of the workspace keeps building with the
//! rustup toolchain.

use crate::process::{cargo_program, run_capture, run_checked, step, which};
use anyhow::{Context as _, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The Rust target triple of the Pi's installer.
pub const TARGET: &str = "armv7-unknown-linux-gnueabihf";

/// The emulator the armv7 binaries run under (Debian package `qemu-user-static`).
pub const QEMU: &str = "qemu-arm-static";

/// Rust flags of the armv7 build: a fully static executable (see ARCHITECTURE.md).
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The script that installs and describes the toolchain, relative to the workspace root.
const TOOLCHAIN_SCRIPT: &str = "scripts/armv7-toolchain.sh";

/// Arguments of `cargo xtask armv7`.
#[derive(clap::Args, Debug)]
pub struct Armv7Args {
    /// Fail instead of installing missing toolchain parts.
    #[arg(long)]
    pub no_install: bool,
    /// Only build and check the binary; run no tests.
    #[arg(long)]
    pub build_only: bool,
    /// Skip the library's unit tests under qemu.
    #[arg(long)]
    pub no_lib_tests: bool,
    /// Skip the CLI smoke test under qemu.
    #[arg(long)]
    pub no_smoke: bool,
    /// Cargo target dir of the armv7 build (default: target/armv7).
    #[arg(long)]
    pub target_dir: Option<PathBuf>,
    /// Instead of the small smoke bundle, verify and apply one carrying this many MiB of
    /// payload (a bind-mounted data directory), and print wall time and peak RSS of each
    /// under qemu, next to the x86_64 installer's verify of the same bundle.
    #[arg(long, value_name = "MIB")]
    pub measure_mib: Option<u64>,
}

/// Runs `cargo xtask armv7`.
pub fn run(args: &Armv7Args, workspace: &Path) -> Result<()> {
    let started = Instant::now();
    let toolchain = Toolchain::ensure(workspace, !args.no_install)?;
    let target_dir = args
        .target_dir
        .clone()
        .unwrap_or_else(|| workspace.join("target").join("armv7"));

    step("building smoker-install for armv7 (static, release)");
    let t = Instant::now();
    let mut build = toolchain.cargo(workspace, &target_dir);
    build.args([
        "build",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "-p",
        "smoker-release",
        "--bin",
        "smoker-install",
    ]);
    run_checked(&mut build, "the armv7 release build")?;
    let binary = target_dir
        .join(TARGET)
        .join("release")
        .join("smoker-install");
    let size = check_static_arm_executable(&binary)?;
    println!(
        "armv7 binary: {} — {size} bytes ({:.2} MiB), static 32-bit ARM executable, built in {:.0} s",
        binary.display(),
        size as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );
    let version = run_capture(
        Command::new(QEMU).arg(&binary).arg("--version"),
        "running the armv7 binary under qemu",
    )?;
    println!("under {QEMU}: {}", version.trim());

    if !args.build_only && !args.no_lib_tests && args.measure_mib.is_none() {
        step("library unit tests for armv7 under qemu");
        let t = Instant::now();
        let mut test = toolchain.cargo(workspace, &target_dir);
        test.args([
            "test",
            "--locked",
            "--lib",
            "--target",
            TARGET,
            "-p",
            "smoker-release",
        ]);
        run_checked(&mut test, "the armv7 library tests under qemu")?;
        println!(
            "armv7 library tests passed in {:.0} s",
            t.elapsed().as_secs_f64()
        );
    }

    if !args.build_only && (!args.no_smoke || args.measure_mib.is_some()) {
        let host_installer = match args.measure_mib {
            Some(_) => Some(build_host_installer(workspace)?),
            None => None,
        };
        step(match args.measure_mib {
            Some(_) => "measuring verify and apply of a large bundle under qemu",
            None => "CLI smoke test: the armv7 installer under qemu against the host's Docker",
        });
        let t = Instant::now();
        crate::smoke::run(&crate::smoke::Options {
            installer: binary.clone(),
            runner: vec![QEMU.into()],
            payload_mib: args.measure_mib,
            host_installer,
        })?;
        println!("smoke test passed in {:.0} s", t.elapsed().as_secs_f64());
    }
    println!("armv7: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The environment of Debian's armv7 toolchain, as `scripts/armv7-toolchain.sh --print-env`
/// describes it.
pub struct Toolchain {
    env: Vec<(String, String)>,
}

impl Toolchain {
    /// Checks the toolchain, installs it when allowed and something is missing, and reads its
    /// environment.
    pub fn ensure(workspace: &Path, install: bool) -> Result<Toolchain> {
        let script = workspace.join(TOOLCHAIN_SCRIPT);
        if !script.is_file() {
            bail!("{} is missing", script.display());
        }
        step("checking the armv7 toolchain");
        let check = Command::new("bash")
            .arg(&script)
            .arg("--check")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {} --check", script.display()))?;
        if check.status.success() {
            println!("armv7 toolchain present");
        } else {
            let why = String::from_utf8_lossy(&check.stderr);
            if !install {
                bail!(
                    "the armv7 toolchain is incomplete and --no-install was given:\n{why}\ninstall it with `{TOOLCHAIN_SCRIPT}` (as root)"
                );
            }
            println!("the armv7 toolchain is incomplete; installing it with {TOOLCHAIN_SCRIPT}");
            let mut cmd = if is_root() {
                let mut c = Command::new("bash");
                c.arg(&script);
                c
            } else if which("sudo").is_some() {
                let mut c = Command::new("sudo");
                c.arg("bash").arg(&script);
                c
            } else {
                bail!(
                    "installing the armv7 toolchain needs root: run `{TOOLCHAIN_SCRIPT}` as root (it reported:\n{why})"
                );
            };
            // The script prints the environment on stdout; the log goes to stderr.
            cmd.stdout(Stdio::null());
            run_checked(&mut cmd, "installing the armv7 toolchain")?;
        }
        let out = Command::new("bash")
            .arg(&script)
            .arg("--print-env")
            .output()
            .with_context(|| format!("running {} --print-env", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} --print-env failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut env = parse_exports(&String::from_utf8_lossy(&out.stdout))?;
        for required in ["RUSTC", "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_LINKER"] {
            if !env.iter().any(|(k, _)| k == required) {
                bail!("{TOOLCHAIN_SCRIPT} --print-env does not set {required}");
            }
        }
        // The binaries are static: run them under qemu without `-L` (which would hide a
        // dynamic dependency on the build machine's armhf libraries).
        env.retain(|(k, _)| k != "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER");
        env.push((
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUNNER".into(),
            QEMU.into(),
        ));
        env.push((
            "CARGO_TARGET_ARMV7_UNKNOWN_LINUX_GNUEABIHF_RUSTFLAGS".into(),
            STATIC_RUSTFLAGS.into(),
        ));
        Ok(Toolchain { env })
    }

    /// A cargo command for the armv7 build: the cargo running this xtask, pointed at Debian's
    /// rustc through the toolchain environment, with `target_dir` as its target dir.
    pub fn cargo(&self, workspace: &Path, target_dir: &Path) -> Command {
        let mut c = Command::new(cargo_program());
        c.current_dir(workspace);
        for k in [
            "RUSTFLAGS",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_BUILD_RUSTFLAGS",
            "CARGO_BUILD_TARGET",
            "CARGO_BUILD_TARGET_DIR",
        ] {
            c.env_remove(k);
        }
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.env("CARGO_TARGET_DIR", target_dir);
        c
    }
}

/// Builds the x86_64 installer (release profile, the rustup toolchain, the default target dir)
/// for the comparison in `--measure-mib` and returns its path.
fn build_host_installer(workspace: &Path) -> Result<PathBuf> {
    step("building the x86_64 installer (release) for the comparison");
    let mut c = Command::new(cargo_program());
    c.current_dir(workspace)
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "smoker-release",
            "--bin",
            "smoker-install",
        ]);
    run_checked(&mut c, "the x86_64 release build")?;
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|d| {
            if d.is_absolute() {
                d
            } else {
                workspace.join(d)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    Ok(dir.join("release").join("smoker-install"))
}

/// Parses `export NAME=VALUE` lines (VALUE optionally in double quotes).
fn parse_exports(text: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some(rest) = line.strip_prefix("export ") else {
            bail!("unexpected line in the toolchain environment: `{line}`");
        };
        let Some((name, value)) = rest.split_once('=') else {
            bail!("unexpected line in the toolchain environment: `{line}`");
        };
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        out.push((name.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Checks that `path` is a 32-bit little-endian ARM ELF executable with no program
/// interpreter (`PT_INTERP`), i.e. it needs no dynamic loader or shared glibc on the Pi.
/// Returns its size in bytes.
pub fn check_static_arm_executable(path: &Path) -> Result<u64> {
    let elf = smoker_testkit::elf::read_elf(path).map_err(anyhow::Error::msg)?;
    if elf.bits != 32 {
        bail!("{} is not a 32-bit little-endian ELF file", path.display());
    }
    if elf.machine != smoker_testkit::elf::EM_ARM {
        bail!("{} is not an ARM executable", path.display());
    }
    if elf.interpreter {
        bail!(
            "{} is dynamically linked (it has a program interpreter); the armv7 installer must be static to run on the Pi's older glibc",
            path.display()
        );
    }
    Ok(elf.size)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_parsed() {
        let env = parse_exports(
            "export RUSTC=/usr/bin/rustc\nexport CARGO_TARGET_X_RUNNER=\"qemu-arm-static -L /usr/x\"\n",
        )
        .unwrap();
        assert_eq!(
            env,
            vec![
                ("RUSTC".into(), "/usr/bin/rustc".into()),
                (
                    "CARGO_TARGET_X_RUNNER".into(),
                    "qemu-arm-static -L /usr/x".into()
                )
            ]
        );
        assert!(parse_exports("RUSTC=/usr/bin/rustc").is_err());
    }
}
