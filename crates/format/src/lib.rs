//! The smoker-release bundle format: what the release builder writes and the installer reads.
//!
//! Everything both sides must agree on lives here and only here: the [`manifest`] type and its
//! canonical JSON, the deterministic bundle writer and the streaming verifier ([`bundle`]),
//! minisign keys and deterministic signatures ([`signing`]), the signed [`channel`] document,
//! the offline image archive
//! ([`image_archive`]) and sha256 helpers ([`digest`]). Nothing in this crate talks to Docker,
//! a registry or the host's state.

pub mod bundle;
pub mod canonical;
pub mod capability;
pub mod channel;
pub mod digest;
pub mod fsio;
pub mod host_access;
pub mod image_archive;
pub mod manifest;
pub mod signing;
