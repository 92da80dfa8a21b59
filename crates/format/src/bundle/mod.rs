//! The bundle file format: a deterministic tar stream compressed with zstd.
//!
//! Layout, in order: `manifest.json` (canonical JSON), `manifest.json.minisig` (minisign
//! signature of the manifest), then every payload file in manifest order. Only regular files,
//! owned by 0:0, mtime = the manifest's `created`, mode 644 or 755. [`write`] produces it;
//! [`read`] verifies it as one stream and can stage the payload into a directory.

mod pipeline;
pub mod read;
pub mod write;

/// zstd compression level used for every bundle (part of the format's reproducibility).
pub const ZSTD_LEVEL: i32 = 9;
/// zstd window log (8 MiB): keeps decompression memory small enough for a Raspberry Pi 3.
pub const ZSTD_WINDOW_LOG: u32 = 23;
/// zstd job size of the multi-threaded compressor (16 MiB): the input is cut into jobs of this
/// size, compressed in parallel; fixed, so the bytes do not depend on the number of workers.
pub const ZSTD_JOB_SIZE: u32 = 16 * 1024 * 1024;
/// zstd overlap log of the multi-threaded compressor (each job sees 1/8 of the window of data
/// before it); fixed for the same reason.
pub const ZSTD_OVERLAP_LOG: u32 = 6;
/// Largest window the reader accepts (a hostile bundle cannot ask for more memory).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// The file name of a bundle: `<name>-<version>-<arch>.tar.zst`.
pub fn file_name(name: &str, version: &str, arch: crate::manifest::Arch) -> String {
    format!("{name}-{version}-{arch}.tar.zst")
}

/// A tar header with every field fixed: GNU format, owner 0:0, the given type, mode, mtime and
/// size. Bundles and image archives both build theirs here, so their bytes depend on nothing
/// of the machine that wrote them.
pub(crate) fn tar_header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

/// Suffix of the detached whole-file signature.
pub const DETACHED_SIG_SUFFIX: &str = ".minisig";
