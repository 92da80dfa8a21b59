//! Running commands and reading what they printed.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// The exit code, stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's stdout as (lossy) UTF-8 text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr as (lossy) UTF-8 text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Describes a command (program and arguments) for failure messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion (stdin closed unless `input` is given, then fed to it) and
/// returns its output, whatever the exit status.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    let what = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{what}`: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("the child's stdin is piped");
        stdin
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("writing to the stdin of `{what}`: {e}"));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{what}`: {e}"))
}

/// Runs a command (stdin closed) and returns its output, whatever the exit status.
pub fn run(cmd: &mut Command) -> Output {
    run_with_input(cmd, None)
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let what = describe(cmd);
    let out = run(cmd);
    assert_ok(&what, &out);
    out
}

/// Panics with the command's output unless it exited with status 0.
pub fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "`{what}` failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Panics (never skips) when the Debian `minisign` CLI is not installed.
pub fn require_minisign() {
    let out = Command::new("minisign").arg("-v").output();
    match out {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("minisign") => {}
        Ok(o) => panic!(
            "`minisign -v` did not identify the minisign CLI (stdout: {:?}); install the Debian package `minisign` (apt-get install minisign)",
            String::from_utf8_lossy(&o.stdout)
        ),
        Err(e) => panic!(
            "the `minisign` CLI is required by this test but cannot be run ({e}); install the Debian package `minisign` (apt-get install minisign)"
        ),
    }
}

/// Panics (never skips) unless GNU tar and the `zstd` program it calls are installed.
pub fn require_gnu_tar_zstd() {
    match Command::new("tar").arg("--version").output() {
        Ok(o) if String::from_utf8_lossy(&o.stdout).contains("GNU tar") => {}
        Ok(o) => panic!(
            "`tar` is not GNU tar (it reports {:?}); install the Debian package `tar`",
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
        ),
        Err(e) => panic!(
            "GNU tar is required by this test but cannot be run ({e}); install the Debian package `tar`"
        ),
    }
    match Command::new("zstd").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`zstd --version` failed ({}); install the Debian package `zstd` (GNU tar --zstd runs it)",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "the `zstd` program, which GNU tar --zstd runs, cannot be run ({e}); install the Debian package `zstd` (apt-get install zstd)"
        ),
    }
}
