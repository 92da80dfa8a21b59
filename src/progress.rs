//! How long-running commands report what they do, and how long each step took.

use std::collections::BTreeMap;
use std::time::Instant;

/// Reports progress of the pipeline's steps (a spinner on a terminal, lines otherwise).
pub trait Progress {
    /// A step starts.
    fn step(&self, name: &str);
    /// A line of information.
    fn info(&self, message: &str);
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
