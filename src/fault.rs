//! Named fault-injection points for crash-safety tests.
//!
//! When the environment variable `SMOKER_FAULT` names a point the process reaches, it aborts
//! on the spot (like `kill -9`: no destructors, no cleanup). Tests use this to prove that an
//! interruption at any step leaves `current` on a complete generation and that `recover`
//! finishes the job.

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

/// Aborts the process if `SMOKER_FAULT` names `point`.
pub fn point(point: &str) {
    if std::env::var(FAULT_ENV).is_ok_and(|v| v == point) {
        eprintln!("fault injection: aborting at {point}");
        std::process::abort();
    }
}
