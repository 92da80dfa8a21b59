//! The release side of smoker-release: recipes + locks → signed, reproducible bundles.
//!
//! [`recipe`] and [`lock`] read the project's declarations, [`compose`] reads the user's compose
//! file (images, relative references, interpolation) and writes the pin override, [`registry`]
//! and [`resolve`] turn tags into per-architecture digests, [`offline`] fetches images into a
//! blob cache for offline bundles, and [`release`] plans and writes bundles in the format of
//! `smoker_format`. The installer does not depend on this crate.

pub mod compose;
pub mod fetch_progress;
pub mod lock;
pub mod offline;
pub mod recipe;
pub mod registry;
pub mod release;
pub mod resolve;
