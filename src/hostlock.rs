//! One lock per profile, so two applies or rollbacks never run at once.
//!
//! The lock is an `flock(2)` on `locks/<profile>.lock`: the kernel releases it when the holder
//! dies, so a crashed holder never blocks the next run. The file also records the holder (pid,
//! host, command, start time) so a refused caller can say who holds it; a holder running for
//! more than ten minutes is reported as stale, and `unlock --force` ends a hung one (safe: an
//! interrupted apply is finished by the next run, see [`crate::rollback::recover_profile`]).

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::sys::{hostname, now_secs};
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Seek as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, UNIX_EPOCH};

/// A holder older than this is reported as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    /// Process id.
    pub pid: i32,
    /// Host name.
    pub host: String,
    /// Command line.
    pub command: String,
    /// Start time, seconds since the epoch.
    pub started: u64,
}

impl Holder {
    fn me() -> Holder {
        Holder {
            pid: std::process::id() as i32,
            host: hostname(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            started: now_secs(),
        }
    }

    /// How long the holder has held it.
    pub fn age(&self) -> Duration {
        Duration::from_secs(now_secs().saturating_sub(self.started))
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        let age = self.age();
        format!(
            "pid {} on {} running `{}` since {} ({}s ago){}",
            self.pid,
            self.host,
            self.command,
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(self.started)),
            age.as_secs(),
            if age > STALE_AFTER {
                " — STALE: it has held the lock for over 10 minutes; if it is hung, run `smoker-install unlock --force`"
            } else {
                ""
            }
        )
    }
}

/// A held profile lock; released on drop.
pub struct ProfileLock {
    file: std::fs::File,
}

impl Drop for ProfileLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        // SAFETY: the fd is owned by `self.file` and valid.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

fn open_lock(layout: &Layout, profile: &str) -> Result<std::fs::File> {
    crate::fsutil::open_private(
        &layout.lock_file(profile),
        crate::fsutil::Private::ReadWrite,
    )
}

/// Reads the recorded holder of a profile's lock, if any is recorded.
pub fn holder(layout: &Layout, profile: &str) -> Option<Holder> {
    let mut s = String::new();
    std::fs::File::open(layout.lock_file(profile))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    serde_json::from_str(&s).ok()
}

/// True when the profile's lock is currently held by a live process. Only looks: a missing
/// lock file means free and is not created, and a link is not followed.
pub fn is_locked(layout: &Layout, profile: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(layout.lock_file(profile))
    else {
        return false;
    };
    // SAFETY: valid fd.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: valid fd; releases the shared lock just taken.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        false
    } else {
        true
    }
}

/// Takes the profile's lock. Without `wait`, fails at once naming the holder; with `wait`,
/// blocks until it is free (saying once who it waits for).
pub fn acquire(layout: &Layout, profile: &str, wait: bool) -> Result<ProfileLock> {
    let mut file = open_lock(layout, profile)?;
    let fd = file.as_raw_fd();
    // SAFETY: valid fd.
    let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let who = holder(layout, profile)
            .map(|h| h.describe())
            .unwrap_or_else(|| "an unknown process".into());
        if !wait {
            return Err(Error::Locked(format!(
                "profile `{profile}` is locked by {who}; retry when it finishes, or pass --wait"
            )));
        }
        eprintln!("waiting for the lock of profile `{profile}`, held by {who}");
        // SAFETY: valid fd.
        let rc = unsafe { libc::flock(fd, libc::LOCK_EX) };
        if rc != 0 {
            return Err(Error::Locked(format!(
                "waiting for the lock of `{profile}` failed: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    let me = serde_json::to_vec(&Holder::me()).unwrap_or_default();
    let path = layout.lock_file(profile);
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| file.write_all(&me))
        .and_then(|_| file.sync_all())
        .map_err(io_at(&path))?;
    Ok(ProfileLock { file })
}

/// Ends a hung holder: if the lock is held by a live process on this host, kills it (SIGKILL).
/// Returns a description of what was done.
pub fn force_unlock(layout: &Layout, profile: &str) -> Result<String> {
    if !is_locked(layout, profile) {
        return Ok(format!("profile `{profile}` is not locked"));
    }
    let Some(h) = holder(layout, profile) else {
        return Err(Error::Locked(format!(
            "profile `{profile}` is locked but its holder is not recorded; find it with `fuser {}`",
            layout.lock_file(profile).display()
        )));
    };
    if h.host != hostname() {
        return Err(Error::Locked(format!(
            "the holder runs on another host ({}); stop it there",
            h.host
        )));
    }
    // SAFETY: sending a signal to a pid has no memory-safety implications.
    let rc = unsafe { libc::kill(h.pid, libc::SIGKILL) };
    if rc != 0 {
        return Err(Error::Locked(format!(
            "could not stop pid {}: {}",
            h.pid,
            std::io::Error::last_os_error()
        )));
    }
    for _ in 0..50 {
        if !is_locked(layout, profile) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!(
        "killed the holder ({}); the next command finishes or rolls back its work",
        h.describe()
    ))
}
