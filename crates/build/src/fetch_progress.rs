//! Progress of a blob fetch: bytes, rate and time left, from the size of the file being
//! written. A bar on a terminal; on a log, a plain line every [`LINE_INTERVAL`] (and none for
//! a fetch that ends sooner).

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How often a plain progress line is printed when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);

/// Watches a file grow to `total` bytes until dropped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts watching `path` (being written by a fetch of `total` bytes, shown as `what`).
    pub fn start(path: &Path, total: u64, what: &str) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = path.to_path_buf();
        let what = what.to_string();
        let thread = std::thread::Builder::new()
            .name("fetch-progress".into())
            .spawn(move || watch(&path, total, &what, &flag))
            .ok();
        Watch { stop, thread }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn size(path: &PathBuf) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn watch(path: &PathBuf, total: u64, what: &str, stop: &AtomicBool) {
    let start = Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "    {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, {eta} left",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        while !stop.load(Ordering::SeqCst) {
            bar.set_position(size(path));
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
        return;
    }
    let mut last = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() >= LINE_INTERVAL {
            last = Instant::now();
            eprintln!("    {}", line(what, size(path), total, start.elapsed()));
        }
    }
}

/// One progress line: `fetching sha256:ab12…: 12 MiB of 48 MiB (25%), 3.0 MiB/s, about 12 s left`.
pub fn line(what: &str, done: u64, total: u64, elapsed: Duration) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut s = format!(
        "{what}: {:.0} MiB of {:.0} MiB ({}%), {:.1} MiB/s",
        done as f64 / MIB,
        total as f64 / MIB,
        done.saturating_mul(100).checked_div(total).unwrap_or(100),
        rate / MIB
    );
    if rate > 0.0 && done < total {
        s.push_str(&format!(
            ", about {:.0} s left",
            ((total - done) as f64 / rate).ceil()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_bytes_share_rate_and_time_left() {
        assert_eq!(
            line("fetching x", 12 << 20, 48 << 20, Duration::from_secs(4)),
            "fetching x: 12 MiB of 48 MiB (25%), 3.0 MiB/s, about 12 s left"
        );
        assert_eq!(
            line("fetching x", 0, 0, Duration::from_secs(1)),
            "fetching x: 0 MiB of 0 MiB (100%), 0.0 MiB/s"
        );
    }

    #[test]
    fn the_watch_stops_when_dropped() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let f = dir.path().join("blob");
        std::fs::write(&f, [0u8; 10]).expect("write");
        let t = Instant::now();
        drop(Watch::start(&f, 20, "fetching"));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
