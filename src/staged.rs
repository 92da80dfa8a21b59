//! Bundles staged for a later switch: `<root>/staged/<profile>.json`, one record per profile
//! naming a verified store entry (written by [`crate::stage`]).
//!
//! A later apply of a bundle whose signed manifest has the recorded sha256 (or `apply --staged
//! PROFILE`, with no file at all) starts from the stored entry: [`usable`] checks the
//! manifest's signature again against the trusted keys and the entry against its commit
//! journal ([`store::check`]), and the apply decides the host's policy again, but the payload
//! is not read a second time. The manifest's sha256 covers every payload file's hash, and the
//! entry was verified against it when it was staged, so nothing unverified is ever started.
//!
//! gc keeps the entry of a staged record ([`staged_entries`]); an apply that reaches a decision
//! on the staged bundle (committed or rolled back) removes the record ([`clear_if`]).

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::store::{self, StoreEntry};
use serde::{Deserialize, Serialize};
use smoker_format::manifest::{MANIFEST_PATH, MANIFEST_SIG_PATH};
use std::path::PathBuf;

/// What is staged for one profile: a verified store entry waiting to be switched to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Profile.
    pub profile: String,
    /// The store entry's directory name.
    pub store: String,
    /// sha256 of the signed manifest (identifies the bundle's content).
    pub manifest_sha256: String,
    /// sha256 of the bundle file that was verified.
    pub bundle_sha256: String,
    /// Size of that bundle file in bytes.
    pub bundle_bytes: u64,
    /// The key that signed it.
    pub key_id: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Environment it was built for.
    pub environment: String,
    /// When it was staged (RFC 3339).
    pub staged_at: String,
    /// Maintenance window (`HH:MM-HH:MM`, host time) in which it is to be applied, if one was
    /// given; `staged --apply-due` applies it only inside (`apply --staged` at any time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// The directory of staged records.
pub fn records_dir(layout: &Layout) -> PathBuf {
    layout.root().join("staged")
}

/// The staged record of a profile.
pub fn record_path(layout: &Layout, profile: &str) -> PathBuf {
    records_dir(layout).join(format!("{profile}.json"))
}

/// The record staged for `profile`, if any.
pub fn load(layout: &Layout, profile: &str) -> Result<Option<Record>> {
    if !smoker_format::manifest::is_name(profile) {
        return Err(Error::Policy(format!(
            "`{}` is not a profile name",
            profile.escape_debug()
        )));
    }
    let path = record_path(layout, profile);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::State(format!(
                "{} is not a staged record ({e}); remove it and stage the bundle again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

pub(crate) fn save(layout: &Layout, record: &Record) -> Result<()> {
    crate::fsutil::private_dir(&records_dir(layout))?;
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::State(format!("the staged record could not be written: {e}")))?;
    crate::fsutil::write_atomic(&record_path(layout, &record.profile), &bytes, 0o600)
}

/// Removes the staged record of `profile` when it names the bundle `manifest_sha256`.
pub fn clear_if(layout: &Layout, profile: &str, manifest_sha256: &str) -> Result<()> {
    if load(layout, profile)?.is_some_and(|r| r.manifest_sha256 == manifest_sha256) {
        let path = record_path(layout, profile);
        std::fs::remove_file(&path).map_err(io_at(&path))?;
    }
    Ok(())
}

/// The store entries named by staged records (gc keeps them).
pub fn staged_entries(layout: &Layout) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(records_dir(layout)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Record>(&b).ok())
        .map(|r| r.store)
        .collect()
}

/// The staged entry of `profile` when its manifest has the sha256 `manifest_sha256` (any, when
/// `None`), checked before use: the manifest's signature against `keys` (returns the signing
/// key id), its sha256 against the record and the entry against its commit journal.
pub fn usable(
    layout: &Layout,
    profile: &str,
    manifest_sha256: Option<&str>,
    keys: &smoker_format::signing::TrustedKeys,
) -> Result<Option<(Record, StoreEntry, String)>> {
    let Some(record) = load(layout, profile)? else {
        return Ok(None);
    };
    if manifest_sha256.is_some_and(|m| m != record.manifest_sha256) {
        return Ok(None);
    }
    let entry = store::open(layout, &record.store)?;
    store::check(&entry, Some(&record.manifest_sha256))?;
    let manifest_bytes = std::fs::read(entry.path.join(MANIFEST_PATH))
        .map_err(io_at(&entry.path.join(MANIFEST_PATH)))?;
    let sig_path = entry.path.join(MANIFEST_SIG_PATH);
    let sig = std::fs::read_to_string(&sig_path).map_err(io_at(&sig_path))?;
    let key_id = keys
        .verify(&manifest_bytes, &sig)
        .map_err(|e| {
            Error::Policy(format!(
                "the bundle staged for profile `{profile}` ({}) is no longer signed by a trusted key ({e}); stage a bundle signed by a trusted key",
                record.version
            ))
        })?
        .key_id;
    Ok(Some((record, entry, key_id)))
}
