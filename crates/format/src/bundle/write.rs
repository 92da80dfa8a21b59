//! Writing bundles, byte for byte reproducibly.

use super::{ZSTD_JOB_SIZE, ZSTD_LEVEL, ZSTD_OVERLAP_LOG, ZSTD_WINDOW_LOG};
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
    configure(&mut enc, compression_workers())?;
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

/// Worker threads for compression: one per core, at most [`MAX_WORKERS`]. The bytes written do
/// not depend on this number (zstd's multi-threaded mode cuts the input into jobs of
/// [`ZSTD_JOB_SIZE`] whatever the number of workers), only the time taken does.
pub fn compression_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| {
        u32::try_from(n.get())
            .unwrap_or(MAX_WORKERS)
            .clamp(1, MAX_WORKERS)
    })
}

/// Most compression workers started for one bundle.
pub const MAX_WORKERS: u32 = 8;

/// Sets every zstd parameter of a bundle: level, window, checksum, no content size, no long
/// distance matching, and zstd's multi-threaded mode with `workers` (at least 1) workers and
/// fixed job and overlap sizes, so that the bytes are the same for any number of workers.
pub fn configure<W: Write>(
    enc: &mut zstd::stream::write::Encoder<'_, W>,
    workers: u32,
) -> io::Result<()> {
    use zstd::zstd_safe::CParameter;
    enc.window_log(ZSTD_WINDOW_LOG)?;
    enc.include_checksum(true)?;
    enc.include_contentsize(false)?;
    enc.long_distance_matching(false)?;
    // Multi-threaded mode (workers >= 1) writes other bytes than single-threaded mode (0
    // workers), but the same bytes for every count of 1 or more: always use it.
    enc.multithread(workers.max(1))?;
    enc.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
    enc.set_parameter(CParameter::OverlapSizeLog(ZSTD_OVERLAP_LOG))?;
    Ok(())
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
