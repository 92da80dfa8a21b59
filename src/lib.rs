//! smoker-release: signed, reproducible release bundles for Docker Compose stacks, and the
//! installer that applies them as atomic, health-gated generations.
//!
//! See ARCHITECTURE.md at the repository root for the map of modules and their invariants.

pub mod bundle;
pub mod compose;
pub mod digest;
pub mod image_archive;
pub mod lock;
pub mod manifest;
pub mod recipe;
pub mod release;
pub mod signing;

// The installer: one module per step of the apply pipeline.
pub mod apply;
pub mod audit;
pub mod backup;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod gc;
pub mod health;
pub mod hostconfig;
pub mod hostenv;
pub mod hostlock;
pub mod images;
pub mod layout;
pub mod migrate;
pub mod notify;
pub mod ops;
pub mod preflight;
pub mod profile;
pub mod rollback;
pub mod runtime;
pub mod store;
pub mod usb;
