//! The release side of smoker-release: recipes + locks → signed, reproducible bundles.
//!
//! [`recipe`] and [`lock`] read the project's declarations, [`compose`] reads the user's compose
//! file (images, relative references, interpolation) and writes the pin override, [`registry`]
//! and [`resolve`] turn tags into per-architecture digests (through the [`mirrors`] of
//! `recipes/registries.toml`), [`offline`] fetches images into a blob cache for offline
//! bundles, [`composecheck`] has the compose front end check each bundle's files, [`publish`]
//! writes the signed channel over a release directory, and [`release`] plans and writes
//! bundles in the format of `smoker_format`. The installer does not depend on this crate.

pub mod compose;
pub mod composecheck;
pub mod fetch_progress;
pub mod lock;
pub mod mirrors;
pub mod offline;
pub mod publish;
pub mod recipe;
pub mod registry;
pub mod release;
pub mod resolve;
