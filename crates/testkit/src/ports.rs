//! Loopback ports that no other test holds.
//!
//! A port found by binding port 0 is free only for a moment: a parallel test (in this process,
//! in another test binary, or in another checkout using the same machine) may be handed the
//! same one before either publishes it. So ports come from a range below the kernel's
//! ephemeral range (where neither `bind(0)`, outgoing connections nor Docker's own
//! `-p 127.0.0.1::PORT` choices land), and each one is leased with an exclusive lock on a file
//! under the system's temporary directory, held until this process exits.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The first port leased.
const FIRST: u16 = 20_000;
/// How many ports the range holds (up to 31 999, below Linux's default ephemeral range).
const COUNT: u16 = 12_000;

/// The lock files of the ports this process holds (the locks end with the process).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// The directory of the lock files.
fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("smoker-testkit-ports")
}

/// A TCP port on 127.0.0.1 that nothing listens on and that no other user of this kit holds;
/// it stays this process's until it exits. Panics when none is left.
pub fn free_port() -> u16 {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("creating the port lease directory {}: {e}", dir.display()));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let start = (seed % u32::from(COUNT)) as u16;
    for i in 0..COUNT {
        let port = FIRST + (start + i) % COUNT;
        let path = dir.join(port.to_string());
        let Ok(file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock().is_err() {
            continue;
        }
        if nothing_listens(port) {
            HELD.lock().unwrap_or_else(|e| e.into_inner()).push(file);
            return port;
        }
        // Dropping `file` releases the lease of a port something else uses.
    }
    panic!(
        "no free loopback port in {FIRST}..{}: every one is leased under {} or in use",
        FIRST + COUNT,
        dir.display()
    );
}

/// True when both 127.0.0.1:PORT and 0.0.0.0:PORT can be bound right now.
fn nothing_listens(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leased_ports_are_distinct_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            ports.len(),
            "a port was leased twice: {ports:?}"
        );
        for p in ports {
            assert!((FIRST..FIRST + COUNT).contains(&p), "{p}");
            TcpListener::bind(("127.0.0.1", p)).expect("a leased port binds");
        }
    }
}
