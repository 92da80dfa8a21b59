//! Named fault-injection points for crash-safety tests.
//!
//! In builds with the `test-hooks` feature (the test suite's), when the environment variable
//! `SMOKER_FAULT` names a point the process reaches, it aborts on the spot (like `kill -9`: no
//! destructors, no cleanup). Tests use this to prove that an interruption at any step leaves
//! `current` on a complete generation and that `recover` finishes the job. Release builds do
//! not have the feature: there a stray variable does nothing.

/// Environment variable naming the point at which to abort.
pub const FAULT_ENV: &str = "SMOKER_FAULT";

/// Every fault point, in the order an apply (then a rollback) reaches them.
pub const POINTS: &[&str] = &[
    "apply:locked",
    "apply:staged",
    "apply:stored",
    "apply:preflight",
    "apply:images",
    "apply:pending",
    "apply:switched",
    "apply:compose-up",
    "apply:health",
    "apply:committed",
    "rollback:switched",
    "rollback:compose-up",
];

/// Aborts the process if `SMOKER_FAULT` names `point` (only with the `test-hooks` feature).
pub fn point(point: &str) {
    if cfg!(feature = "test-hooks") && std::env::var(FAULT_ENV).is_ok_and(|v| v == point) {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
}
