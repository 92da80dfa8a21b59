//! Writing bundles, byte for byte reproducibly.

use super::{ZSTD_LEVEL, ZSTD_WINDOW_LOG};
use crate::digest::HashingReader;
use crate::manifest::{FileEntry, MANIFEST_PATH, MANIFEST_SIG_PATH, Manifest};
use std::io::{self, Read, Write};
use std::path::PathBuf;

/// Where a payload file's bytes come from.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Bytes held in memory (generated files).
    Bytes(Vec<u8>),
    /// A file on disk, streamed.
    File(PathBuf),
}

impl Payload {
    fn open(&self) -> io::Result<Box<dyn Read + '_>> {
        Ok(match self {
            Payload::Bytes(b) => Box::new(io::Cursor::new(b.as_slice())),
            Payload::File(p) => Box::new(std::fs::File::open(p)?),
        })
    }
}

/// Errors while writing a bundle.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// I/O failure.
    #[error("writing bundle: {0}")]
    Io(#[from] io::Error),
    /// A payload changed between hashing it for the manifest and writing it.
    #[error("payload `{0}` changed while the bundle was being written; rebuild")]
    Changed(String),
    /// The payload list does not match the manifest.
    #[error("payload list does not match the manifest at `{0}`")]
    Mismatch(String),
}

/// Writes a complete bundle: manifest, its signature, then `payload` in manifest order.
/// `payload` must hold exactly the manifest's files, in the same order.
pub fn write_bundle<W: Write>(
    out: W,
    manifest: &Manifest,
    manifest_sig: &str,
    payload: &[(FileEntry, Payload)],
) -> Result<W, WriteError> {
    let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
    enc.window_log(ZSTD_WINDOW_LOG)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(false)?;
    enc.long_distance_matching(false)?;
    let mut tar = tar::Builder::new(enc);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mtime = manifest.created;

    let manifest_json = manifest.to_canonical_json();
    append(
        &mut tar,
        MANIFEST_PATH,
        0o644,
        mtime,
        manifest_json.as_slice(),
    )?;
    append(
        &mut tar,
        MANIFEST_SIG_PATH,
        0o644,
        mtime,
        manifest_sig.as_bytes(),
    )?;

    if payload.len() != manifest.files.len() {
        return Err(WriteError::Mismatch(format!(
            "{} payload files for {} manifest entries",
            payload.len(),
            manifest.files.len()
        )));
    }
    for ((entry, source), listed) in payload.iter().zip(&manifest.files) {
        if entry != listed {
            return Err(WriteError::Mismatch(entry.path.clone()));
        }
        let mut reader = HashingReader::new(source.open()?.take(entry.size));
        let mut header = header(entry.mode, mtime, entry.size);
        tar.append_data(&mut header, &entry.path, &mut reader)?;
        let (sha, len) = reader.finish();
        if sha != entry.sha256 || len != entry.size {
            return Err(WriteError::Changed(entry.path.clone()));
        }
    }
    let enc = tar.into_inner()?;
    Ok(enc.finish()?)
}

fn header(mode: u32, mtime: u64, size: u64) -> tar::Header {
    super::tar_header(tar::EntryType::Regular, mode, mtime, size)
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    mtime: u64,
    bytes: &[u8],
) -> io::Result<()> {
    let mut h = header(mode, mtime, bytes.len() as u64);
    tar.append_data(&mut h, path, bytes)
}
