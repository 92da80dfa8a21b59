//! The system's OpenSSH client (`ssh`), one multiplexed connection per host: whether a host
//! answers, remote commands with their exit status and output, and a resumable copy
//! (`cat >>` onto a `.part` file from the offset already there, checked by sha256 on the host,
//! then renamed).

use crate::inventory::Host;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `ssh` exits with 255 when the connection failed (not the remote command).
pub const SSH_FAILED: i32 = 255;

/// One host's SSH connection settings.
pub struct Ssh<'a> {
    host: &'a Host,
    connect_timeout: u32,
    control: PathBuf,
}

/// Quotes `s` for a POSIX shell.
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:@,+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Quotes and joins words into one remote command line.
pub fn command_line(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

/// What a resumable copy did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Copied {
    /// Bytes sent this time.
    pub sent: u64,
    /// Bytes already on the host from an earlier, cut copy.
    pub resumed_from: u64,
    /// The complete file was already there (checked by sha256).
    pub already_there: bool,
}

impl<'a> Ssh<'a> {
    /// Settings for `host`; `control_dir` holds the multiplexing socket.
    pub fn new(host: &'a Host, connect_timeout: u32, control_dir: &Path) -> Ssh<'a> {
        Ssh {
            host,
            connect_timeout,
            control: control_dir.join(format!("{}.sock", sanitize(&host.name))),
        }
    }

    fn base(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-p")
            .arg(self.host.port.to_string())
            .args(["-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!("ConnectTimeout={}", self.connect_timeout))
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=120"])
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()));
        if let Some(id) = &self.host.identity {
            c.arg("-i").arg(id);
        }
        for o in &self.host.ssh_options {
            c.arg("-o").arg(o);
        }
        c.arg(&self.host.ssh).arg("--");
        c
    }

    /// Runs `remote` (a shell command line) on the host.
    pub fn run(&self, remote: &str) -> std::io::Result<Output> {
        self.base().arg(remote).stdin(Stdio::null()).output()
    }

    /// True when the host answers (`ssh … true`); else the reason.
    pub fn reachable(&self) -> Result<(), String> {
        match self.run("true") {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Err(format!("ssh could not be run: {e}")),
        }
    }

    /// Closes the multiplexed connection, if one is open.
    pub fn close(&self) {
        let _ = Command::new("ssh")
            .arg("-o")
            .arg(format!("ControlPath={}", self.control.display()))
            .args(["-O", "exit"])
            .arg(&self.host.ssh)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Copies `local` (of `size` bytes and `sha256`) to `remote_dir/name` on the host,
    /// resuming a `.part` file an earlier copy left there, checked by sha256 on the host.
    pub fn copy_resumable(
        &self,
        local: &Path,
        size: u64,
        sha256: &str,
        remote_dir: &str,
        name: &str,
    ) -> Result<Copied, String> {
        let dest = format!("{remote_dir}/{name}");
        let part = format!("{dest}.part");
        let probe = format!(
            "mkdir -p {d} && if [ -f {f} ]; then printf 'done %s\\n' \"$(sha256sum < {f} | cut -c1-64)\"; else printf 'part %s\\n' \"$(stat -c %s {p} 2>/dev/null || echo 0)\"; fi",
            d = quote(remote_dir),
            f = quote(&dest),
            p = quote(&part)
        );
        let o = self.run(&probe).map_err(|e| format!("ssh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "could not prepare {remote_dir} on the host: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        let answer = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let mut c = Copied::default();
        if answer.strip_prefix("done ") == Some(sha256) {
            c.already_there = true;
            return Ok(c);
        }
        let have = answer
            .strip_prefix("part ")
            .and_then(|n| n.trim().parse::<u64>().ok())
            .filter(|n| *n <= size)
            .unwrap_or(0);
        let mut f = std::fs::File::open(local).map_err(|e| format!("{}: {e}", local.display()))?;
        f.seek(SeekFrom::Start(have))
            .map_err(|e| format!("{}: {e}", local.display()))?;
        let redirect = if have > 0 { ">>" } else { ">" };
        let mut child = self
            .base()
            .arg(format!("cat {redirect} {}", quote(&part)))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("ssh: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("ssh: no stdin")?;
        let sent = std::io::copy(&mut f.by_ref().take(size - have), &mut stdin);
        drop(stdin);
        let out = child.wait_with_output().map_err(|e| format!("ssh: {e}"))?;
        let sent =
            sent.map_err(|e| format!("the copy was cut: {e}; the next rollout resumes it"))?;
        if !out.status.success() {
            return Err(format!(
                "the copy was cut ({}); the next rollout resumes it",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        c.sent = sent;
        c.resumed_from = have;
        let check = format!(
            "if [ \"$(sha256sum < {p} | cut -c1-64)\" = {h} ]; then mv -f {p} {f}; else rm -f {p}; echo 'sha256 mismatch after the copy' >&2; exit 1; fi",
            p = quote(&part),
            f = quote(&dest),
            h = quote(sha256)
        );
        let o = self.run(&check).map_err(|e| format!("ssh: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "the copy on the host does not match the bundle ({}); it was removed, the next rollout copies it again",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(c)
    }
}

/// A host name usable in a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        assert_eq!(quote("/usr/bin/smoker-install"), "/usr/bin/smoker-install");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(reboot)"), "'$(reboot)'");
        assert_eq!(
            command_line(&["x".into(), "--root".into(), "/a b".into()]),
            "x --root '/a b'"
        );
    }
}
