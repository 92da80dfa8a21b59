//! How long-running commands report what they do, and how long each step took.

use std::collections::BTreeMap;
use std::time::Instant;

/// Reports progress of the pipeline's steps (a spinner on a terminal, lines otherwise).
pub trait Progress {
    /// A step starts.
    fn step(&self, name: &str);
    /// A line of information.
    fn info(&self, message: &str);
    /// A meter for a long transfer of `total` bytes (when known); by default one that shows
    /// nothing.
    fn bytes(&self, _what: &str, _total: Option<u64>) -> Box<dyn Meter> {
        Box::new(NoMeter)
    }
}

/// Progress that prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn step(&self, _: &str) {}
    fn info(&self, _: &str) {}
}

/// Wall-clock time of named steps, in microseconds.
#[derive(Debug, Default)]
pub struct Timer {
    /// Microseconds per step name (a step timed twice keeps the last figure).
    pub steps: BTreeMap<String, u64>,
}

impl Timer {
    /// Runs `f`, recording its duration under `name`.
    pub fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.steps
            .insert(name.to_string(), t.elapsed().as_micros() as u64);
        r
    }
}

/// Counts bytes of one long transfer (verifying a bundle, loading images, fetching blobs) and
/// shows them with rate and time left: a bar on a terminal, a plain line now and then in logs.
pub trait Meter: Send + Sync {
    /// `n` more bytes are done.
    fn add(&self, n: u64);
    /// The transfer is over (successfully or not).
    fn done(&self);
}

/// A meter that shows nothing.
pub struct NoMeter;

impl Meter for NoMeter {
    fn add(&self, _: u64) {}
    fn done(&self) {}
}

/// How often [`LineMeter`] prints a line.
pub const LINE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A meter for logs (stderr is not a terminal): one plain line every [`LINE_INTERVAL`] with
/// bytes done, rate and time left, and a last line when done.
pub struct LineMeter {
    what: String,
    total: Option<u64>,
    start: Instant,
    state: std::sync::Mutex<(u64, Instant)>,
}

impl LineMeter {
    /// A meter for `what`, of `total` bytes when known.
    pub fn new(what: &str, total: Option<u64>) -> LineMeter {
        let now = Instant::now();
        LineMeter {
            what: what.to_string(),
            total,
            start: now,
            state: std::sync::Mutex::new((0, now)),
        }
    }
}

impl Meter for LineMeter {
    fn add(&self, n: u64) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.0 += n;
        if s.1.elapsed() >= LINE_INTERVAL {
            s.1 = Instant::now();
            eprintln!(
                "    {}",
                progress_line(&self.what, s.0, self.total, self.start.elapsed())
            );
        }
    }
    fn done(&self) {
        let Ok(s) = self.state.lock() else {
            return;
        };
        // Short transfers stay silent; long ones end with their total figures.
        if self.start.elapsed() >= LINE_INTERVAL {
            eprintln!(
                "    {}",
                progress_line(&self.what, s.0, self.total, self.start.elapsed())
            );
        }
    }
}

/// One progress line: `verifying: 120 MiB of 467 MiB (25%), 36.2 MiB/s, about 10 s left`.
pub fn progress_line(
    what: &str,
    done: u64,
    total: Option<u64>,
    elapsed: std::time::Duration,
) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut line = format!("{what}: {:.0} MiB", done as f64 / MIB);
    if let Some(total) = total.filter(|t| *t > 0) {
        line.push_str(&format!(
            " of {:.0} MiB ({}%)",
            total as f64 / MIB,
            done.saturating_mul(100) / total
        ));
    }
    line.push_str(&format!(", {:.1} MiB/s", rate / MIB));
    if let Some(total) = total
        && rate > 0.0
        && done < total
    {
        line.push_str(&format!(
            ", about {:.0} s left",
            ((total - done) as f64 / rate).ceil()
        ));
    }
    line
}

/// A reader that reports every byte read through it to a [`Meter`].
pub struct MeteredReader<R> {
    inner: R,
    meter: Box<dyn Meter>,
}

impl<R> MeteredReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R, meter: Box<dyn Meter>) -> MeteredReader<R> {
        MeteredReader { inner, meter }
    }
}

impl<R> Drop for MeteredReader<R> {
    fn drop(&mut self) {
        self.meter.done();
    }
}

impl<R: std::io::Read> std::io::Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// A writer that reports every byte written through it to a [`Meter`].
pub struct MeteredWriter<W> {
    inner: W,
    meter: Box<dyn Meter>,
}

impl<W> MeteredWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, meter: Box<dyn Meter>) -> MeteredWriter<W> {
        MeteredWriter { inner, meter }
    }
}

impl<W> Drop for MeteredWriter<W> {
    fn drop(&mut self) {
        self.meter.done();
    }
}

impl<W: std::io::Write> std::io::Write for MeteredWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn a_line_has_bytes_share_rate_and_time_left() {
        let line = progress_line(
            "verifying",
            120 << 20,
            Some(480 << 20),
            Duration::from_secs(4),
        );
        assert_eq!(
            line,
            "verifying: 120 MiB of 480 MiB (25%), 30.0 MiB/s, about 12 s left"
        );
        let open = progress_line("fetching", 3 << 20, None, Duration::from_secs(2));
        assert_eq!(open, "fetching: 3 MiB, 1.5 MiB/s");
    }

    struct Count(Arc<AtomicU64>, Arc<AtomicU64>);
    impl Meter for Count {
        fn add(&self, n: u64) {
            self.0.fetch_add(n, Ordering::SeqCst);
        }
        fn done(&self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn metered_reader_and_writer_count_every_byte_and_finish_once() {
        let (bytes, dones) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let data = vec![7u8; 300_000];
        let mut out = Vec::new();
        {
            let mut r =
                MeteredReader::new(&data[..], Box::new(Count(bytes.clone(), dones.clone())));
            r.read_to_end(&mut out).expect("read");
        }
        assert_eq!(bytes.load(Ordering::SeqCst), 300_000);
        assert_eq!(dones.load(Ordering::SeqCst), 1);
        {
            let mut w =
                MeteredWriter::new(Vec::new(), Box::new(Count(bytes.clone(), dones.clone())));
            w.write_all(&out).expect("write");
        }
        assert_eq!(bytes.load(Ordering::SeqCst), 600_000);
        assert_eq!(dones.load(Ordering::SeqCst), 2);
    }
}
