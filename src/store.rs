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
use std::path::PathBuf;

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

/// A bundle verified and unpacked under `staging/`, not yet in the store. Dropping it removes
/// the staged files; [`Staged::commit`] moves them into the store.
pub struct Staged {
    dir: tempfile::TempDir,
    /// What verification established: the manifest and the hashes of what was read.
    pub verified: VerifiedBundle,
}

impl Staged {
    /// Where the verified payload is staged (removed when this is dropped uncommitted).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The verified manifest (the one every later decision must use).
    pub fn manifest(&self) -> &Manifest {
        &self.verified.manifest
    }

    /// Commits the staged tree to the store (or reuses the identical committed entry): made
    /// read-only, one rename(2) into `store/`, fsync of `store/`.
    pub fn commit(self, layout: &Layout) -> Result<StoreEntry> {
        let name = entry_name(&self.verified.manifest, &self.verified.manifest_sha256);
        let dest = layout.store().join(&name);
        if dest.exists() {
            // Same manifest hash = same content; keep the committed copy.
            return open(layout, &name);
        }
        std::fs::create_dir_all(layout.store()).map_err(io_at(&layout.store()))?;
        let staged = self.dir.keep();
        fsutil::make_read_only(&staged)?;
        std::fs::rename(&staged, &dest).map_err(io_at(&dest))?;
        fsutil::fsync_dir(&layout.store())?;
        Ok(StoreEntry {
            path: dest,
            name,
            manifest: self.verified.manifest.clone(),
            manifest_sha256: self.verified.manifest_sha256.clone(),
        })
    }
}

/// Verifies the bundle read from `input` and unpacks it under `staging/`, in one pass. Nothing
/// is staged unless every check passed (a failed read removes what it wrote); nothing reaches
/// `store/` until [`Staged::commit`].
pub fn stage(layout: &Layout, input: impl std::io::Read, keys: &TrustedKeys) -> Result<Staged> {
    let staging_root = layout.staging();
    std::fs::create_dir_all(&staging_root).map_err(io_at(&staging_root))?;
    clean_staging(layout);
    let stage = tempfile::Builder::new()
        .prefix(&format!("stage-{}-", std::process::id()))
        .tempdir_in(&staging_root)
        .map_err(io_at(&staging_root))?;
    let mut sink = DirSink::new(stage.path());
    let verified = read_bundle(
        std::io::BufReader::with_capacity(1024 * 1024, input),
        Trust::Keys(keys),
        &mut sink,
        Limits::default(),
    )?;
    // The manifest and its signature live in the entry too: the store is self-describing.
    for (f, bytes) in [
        (MANIFEST_PATH, &verified.manifest_bytes[..]),
        (MANIFEST_SIG_PATH, verified.signature.as_bytes()),
    ] {
        let p = stage.path().join(f);
        std::fs::write(&p, bytes)
            .and_then(|_| std::fs::File::open(&p).and_then(|f| f.sync_all()))
            .map_err(io_at(&p))?;
    }
    Ok(Staged {
        dir: stage,
        verified,
    })
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
            if pid.is_none_or(|p| !crate::sys::pid_alive(p)) {
                let _ = fsutil::remove_tree(&e.path());
            }
        }
    }
}
