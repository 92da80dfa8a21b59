//! The content-addressed store: verified bundle contents, immutable once committed.
//!
//! A bundle is streamed once into a fresh directory under `staging/` while every check of
//! [`smoker_format::bundle::read`] runs. Only when the whole bundle has passed is the directory made
//! read-only and renamed into `store/` (one rename(2), then an fsync of `store/`), so a store
//! entry is either absent or complete and verified. A store entry is named by the manifest's
//! sha256, which covers every payload file's hash.

use crate::error::{Error, Result, io_at};
use crate::fsutil;
use crate::layout::Layout;
use smoker_format::bundle::read::{DirSink, Limits, Trust, VerifiedBundle, read_bundle};
use smoker_format::manifest::{MANIFEST_PATH, MANIFEST_SIG_PATH, Manifest};
use smoker_format::signing::TrustedKeys;
use std::path::{Path, PathBuf};

/// A committed store entry.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    /// Absolute path of the entry.
    pub path: PathBuf,
    /// Its directory name (`<hash>-<name>-<version>-<arch>`).
    pub name: String,
    /// The manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest.
    pub manifest_sha256: String,
}

/// The directory name of a bundle's store entry.
pub fn entry_name(manifest: &Manifest, manifest_sha256: &str) -> String {
    format!(
        "{}-{}",
        &manifest_sha256[..manifest_sha256.len().min(32)],
        manifest.stem()
    )
}

/// Verifies `bundle` and commits its contents to the store (or reuses the identical entry).
/// Returns the entry and the verification facts. Nothing reaches `store/` unless every check
/// passed; `after_stage` runs between the verified unpack and the commit (fault injection).
pub fn add(
    layout: &Layout,
    bundle: &Path,
    keys: &TrustedKeys,
    after_stage: impl FnOnce(),
) -> Result<(StoreEntry, VerifiedBundle)> {
    let staging_root = layout.staging();
    std::fs::create_dir_all(&staging_root).map_err(io_at(&staging_root))?;
    std::fs::create_dir_all(layout.store()).map_err(io_at(&layout.store()))?;
    clean_staging(layout);
    let stage = tempfile::Builder::new()
        .prefix(&format!("stage-{}-", std::process::id()))
        .tempdir_in(&staging_root)
        .map_err(io_at(&staging_root))?;
    let file = std::fs::File::open(bundle).map_err(io_at(bundle))?;
    let mut sink = DirSink::new(stage.path());
    let verified = read_bundle(
        std::io::BufReader::with_capacity(1024 * 1024, file),
        Trust::Keys(keys),
        &mut sink,
        Limits::default(),
    )?;
    // The manifest and its signature live in the entry too: the store is self-describing.
    std::fs::write(stage.path().join(MANIFEST_PATH), &verified.manifest_bytes)
        .and_then(|_| std::fs::write(stage.path().join(MANIFEST_SIG_PATH), &verified.signature))
        .map_err(io_at(stage.path()))?;
    for f in [MANIFEST_PATH, MANIFEST_SIG_PATH] {
        let p = stage.path().join(f);
        std::fs::File::open(&p)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&p))?;
    }
    after_stage();
    let name = entry_name(&verified.manifest, &verified.manifest_sha256);
    let dest = layout.store().join(&name);
    if dest.exists() {
        // Same manifest hash = same content; keep the committed copy.
        let existing = open(layout, &name)?;
        return Ok((existing, verified));
    }
    let staged = stage.keep();
    fsutil::make_read_only(&staged)?;
    std::fs::rename(&staged, &dest).map_err(io_at(&dest))?;
    fsutil::fsync_dir(&layout.store())?;
    Ok((
        StoreEntry {
            path: dest,
            name,
            manifest: verified.manifest.clone(),
            manifest_sha256: verified.manifest_sha256.clone(),
        },
        verified,
    ))
}

/// Opens a committed store entry by directory name.
pub fn open(layout: &Layout, name: &str) -> Result<StoreEntry> {
    let path = layout.store().join(name);
    let mpath = path.join(MANIFEST_PATH);
    let bytes = std::fs::read(&mpath).map_err(|e| {
        Error::State(format!(
            "store entry {} is missing or incomplete ({e}); reinstall its bundle",
            path.display()
        ))
    })?;
    let manifest = Manifest::from_json(&bytes)
        .map_err(|e| Error::State(format!("store entry {}: {e}", path.display())))?;
    Ok(StoreEntry {
        path,
        name: name.to_string(),
        manifest,
        manifest_sha256: smoker_format::digest::sha256_hex(&bytes),
    })
}

/// Names of every committed store entry.
pub fn list(layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(layout.store())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Deletes a store entry (gc only).
pub fn remove(layout: &Layout, name: &str) -> Result<()> {
    fsutil::remove_tree(&layout.store().join(name))?;
    fsutil::fsync_dir(&layout.store())
}

/// Removes leftovers of interrupted unpacks (those whose process is gone).
fn clean_staging(layout: &Layout) {
    if let Ok(rd) = std::fs::read_dir(layout.staging()) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("stage-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_none_or(|p| !crate::hostlock::pid_alive(p)) {
                let _ = fsutil::remove_tree(&e.path());
            }
        }
    }
}
