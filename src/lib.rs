//! smoker-release: signed, reproducible release bundles for Docker Compose stacks, and the
//! installer that applies them as atomic, health-gated generations.
//!
//! See ARCHITECTURE.md at the repository root for the map of modules and their invariants.

pub mod bundle;
pub mod compose;
pub mod digest;
pub mod lock;
pub mod manifest;
pub mod recipe;
pub mod release;
pub mod signing;
