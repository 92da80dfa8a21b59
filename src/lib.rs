//! The host side of smoker-release: the library behind `smoker-install`, which verifies a
//! bundle, installs it into a content-addressed store, switches atomically to a new
//! generation, gates it on health and rolls back by itself.
//!
//! It depends on `smoker_format` (the bundle format) and on nothing of the release side, so the
//! Pi's binary compiles neither compose interpolation nor the release planner. See
//! ARCHITECTURE.md at the repository root for the map of modules and their invariants.

// The installer: one module per step of the apply pipeline.
pub mod access;
pub mod activate;
pub mod apply;
pub mod audit;
pub mod backup;
pub mod envelope;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod gc;
pub mod health;
pub mod hostconfig;
pub mod hostenv;
pub mod hostlock;
pub mod images;
pub mod inputs;
pub mod inspect;
pub mod layout;
pub mod lifecycle;
pub mod migrate;
pub mod notify;
pub mod ops;
pub mod policy;
pub mod preflight;
pub mod privilege;
pub mod profile;
pub mod progress;
pub mod pull;
pub mod recovery;
pub mod redact;
pub mod rollback;
pub mod runtime;
pub mod stage;
pub mod staged;
pub mod store;
pub mod sys;
pub mod usb;

#[cfg(test)]
mod testutil;
