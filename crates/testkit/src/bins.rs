//! The workspace's binaries as the running build sees them: the target directory cargo uses
//! (`CARGO_TARGET_DIR`, `build.target-dir`, or `<workspace>/target`) and the build profile
//! (`dev`, `release` or another), both read from where the running executable lives, with
//! `cargo metadata` as the fallback.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Where the running build puts its binaries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildDirs {
    /// The cargo target directory.
    pub target_dir: PathBuf,
    /// The cargo profile of the running build, as `--profile` takes it (`dev`, `release`, …).
    pub profile: String,
    /// `<target dir>/<profile dir>`, where host binaries of that profile land (`debug` for
    /// `dev` and `test`).
    pub profile_dir: PathBuf,
}

/// The build directories of the running executable (computed once per process).
pub fn build_dirs() -> &'static BuildDirs {
    static DIRS: OnceLock<BuildDirs> = OnceLock::new();
    DIRS.get_or_init(|| {
        let exe = std::env::current_exe().expect("the path of the running executable");
        from_executable(&exe).unwrap_or_else(from_cargo_metadata)
    })
}

/// Reads the target and profile directories from an executable's path:
/// `<target>/<profile>/deps/<test>`, `<target>/<profile>/<bin>`, or the same below
/// `<target>/<triple>/`. The target directory is recognised by its `CACHEDIR.TAG`.
fn from_executable(exe: &Path) -> Option<BuildDirs> {
    let mut dir = exe.parent()?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent()?;
    }
    let profile_name = dir.file_name()?.to_string_lossy().into_owned();
    let target_dir = dir
        .ancestors()
        .skip(1)
        .take(2)
        .find(|d| d.join("CACHEDIR.TAG").is_file())?
        .to_path_buf();
    Some(BuildDirs {
        profile: cargo_profile(&profile_name),
        profile_dir: target_dir.join(&profile_name),
        target_dir,
    })
}

/// `cargo metadata`'s target directory, and the profile the kit was compiled with.
fn from_cargo_metadata() -> BuildDirs {
    let out = Command::new(cargo())
        .current_dir(crate::workspace_root())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .stdin(Stdio::null())
        .output()
        .expect("running `cargo metadata` to find the target directory");
    assert!(
        out.status.success(),
        "`cargo metadata` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("`cargo metadata` prints JSON");
    let target_dir = PathBuf::from(
        meta["target_directory"]
            .as_str()
            .expect("`cargo metadata` names the target directory"),
    );
    let dir_name = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    BuildDirs {
        profile: cargo_profile(dir_name),
        profile_dir: target_dir.join(dir_name),
        target_dir,
    }
}

/// The `--profile` name of a profile directory (`debug` is where `dev` and `test` build).
fn cargo_profile(dir_name: &str) -> String {
    match dir_name {
        "debug" => "dev".to_string(),
        other => other.to_string(),
    }
}

/// The cargo running this build (`CARGO`), else the one that compiled the kit, else `cargo`.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(OsString::from))
        .unwrap_or_else(|| "cargo".into())
}

/// Runs `cargo build --quiet --locked` in the workspace with what `setup` adds (arguments,
/// environment); panics naming `what` with cargo's output when it fails.
pub(crate) fn cargo_build(what: &str, setup: impl FnOnce(&mut Command)) {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(crate::workspace_root())
        .args(["build", "--quiet", "--locked"])
        .stdin(Stdio::null());
    setup(&mut cmd);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {what}: {e}"));
    assert!(
        out.status.success(),
        "building {what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cargo build -p PACKAGE --bin BIN` in the running build's profile and target directory;
/// returns the binary's path.
fn build_binary(package: &str, bin: &str) -> PathBuf {
    let dirs = build_dirs();
    let what = format!(
        "{bin} ({} profile, target dir {})",
        dirs.profile,
        dirs.target_dir.display()
    );
    cargo_build(&what, |cmd| {
        cmd.args(["-p", package, "--bin", bin])
            .arg("--profile")
            .arg(&dirs.profile)
            .arg("--target-dir")
            .arg(&dirs.target_dir);
    });
    let binary = dirs.profile_dir.join(bin);
    assert!(
        binary.is_file(),
        "cargo built {bin} but {} is missing",
        binary.display()
    );
    binary
}

/// The `xtask` binary, built once per process in the running build's profile and target
/// directory (cargo's own lock orders concurrent builds).
pub fn xtask() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_binary("xtask", "xtask")).clone()
}

/// The `smoker-install` binary: the one cargo built for these tests
/// (`CARGO_BIN_EXE_smoker-install`), else the one in the running build's profile directory,
/// else built once per process.
pub fn smoker_install() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CARGO_BIN_EXE_smoker-install").map(PathBuf::from)
            && p.is_file()
        {
            return p;
        }
        let built = build_dirs().profile_dir.join("smoker-install");
        if built.is_file() {
            return built;
        }
        build_binary("smoker-release", "smoker-install")
    })
    .clone()
}

/// `xtask release --version VERSION --secret-key KEY --project-dir PROJECT --out OUT EXTRA…`,
/// with no key password or key path from the caller's environment.
pub fn xtask_release_command(
    project: &Path,
    key: &Path,
    out: &Path,
    version: &str,
    extra: &[&str],
) -> Command {
    let mut cmd = Command::new(xtask());
    cmd.args(["release", "--version", version, "--secret-key"])
        .arg(key)
        .arg("--project-dir")
        .arg(project)
        .arg("--out")
        .arg(out)
        .args(extra)
        .env_remove("SMOKER_KEY_PASSWORD")
        .env_remove("SMOKER_SECRET_KEY");
    cmd
}

/// Runs [`xtask_release_command`]; `password` goes through `SMOKER_KEY_PASSWORD`. Returns the
/// command's output (not checked).
pub fn xtask_release(
    project: &Path,
    key: &Path,
    out: &Path,
    version: &str,
    password: Option<&str>,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = xtask_release_command(project, key, out, version, extra);
    if let Some(p) = password {
        cmd.env("SMOKER_KEY_PASSWORD", p);
    }
    crate::run::run(&mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_and_target_come_from_the_executable() {
        let t = tempfile::tempdir().expect("tempdir");
        let target = t.path().join("tgt");
        std::fs::create_dir_all(target.join("release/deps")).expect("mkdir");
        std::fs::create_dir_all(target.join("x86_64-unknown-linux-gnu/debug/deps")).expect("mkdir");
        std::fs::write(target.join("CACHEDIR.TAG"), "").expect("tag");
        let dirs = from_executable(&target.join("release/deps/images-0123")).expect("dirs");
        assert_eq!(
            dirs,
            BuildDirs {
                target_dir: target.clone(),
                profile: "release".into(),
                profile_dir: target.join("release"),
            }
        );
        let dirs = from_executable(&target.join("release/xtask")).expect("dirs");
        assert_eq!(dirs.profile_dir, target.join("release"));
        let dirs =
            from_executable(&target.join("x86_64-unknown-linux-gnu/debug/deps/t-1")).expect("dirs");
        assert_eq!(dirs.target_dir, target);
        assert_eq!(dirs.profile, "dev");
        assert_eq!(dirs.profile_dir, target.join("debug"));
        assert_eq!(from_executable(&t.path().join("elsewhere/bin/tool")), None);
    }
}
