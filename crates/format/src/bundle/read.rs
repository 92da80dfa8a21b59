//! Reading and verifying bundles as one stream.
//!
//! The file is read once. The manifest's signature is checked against the trusted keys before
//! any payload byte is looked at; then every entry is held against the manifest (path, type,
//! order, size, mode, sha256) while it streams through a [`Sink`]. The decompressed stream is
//! bounded by what the signed manifest declares, so a decompression bomb stops early. Callers
//! that stage the payload somewhere must discard it unless [`read_bundle`] returns `Ok`.

use super::ZSTD_WINDOW_LOG_MAX;
pub use super::pipeline::Threads;
use super::pipeline::{self, PayloadHasher, Prefetched};
use crate::digest::{HashingReader, sha256_hex};
use crate::manifest::{
    FileEntry, MANIFEST_PATH, MANIFEST_SIG_PATH, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES, Manifest,
    ManifestError, check_relative_path,
};
use crate::signing::{SigningError, TrustedKeys};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Most bytes the tar reader may read to reach one entry: padding of the previous one, its
/// header, and long-name, long-link or PAX records (which it holds in memory). Genuine bundles
/// need a few blocks; GNU tar's PAX records for a re-packed bundle stay far below this.
pub const MAX_HEADER_BYTES: u64 = 16 * 1024;

/// Most decompressed bytes before the manifest is trusted: the manifest, its signature and
/// their headers.
const HEAD_LIMIT: u64 = MAX_MANIFEST_BYTES + MAX_SIGNATURE_BYTES + 16 * 1024;

/// Everything that can make a bundle unacceptable. Each variant is one specific problem.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The bundle file could not be read.
    #[error("cannot read bundle: {0}")]
    Io(io::Error),
    /// The zstd stream is corrupt.
    #[error("bundle is not a valid zstd stream: {0}")]
    Compression(String),
    /// The file ends early.
    #[error("bundle is truncated (the file ends in the middle of the data)")]
    Truncated,
    /// The tar stream is corrupt.
    #[error("bundle is not a valid tar stream: {0}")]
    Tar(String),
    /// The first entry is not the manifest.
    #[error("first entry must be {MANIFEST_PATH}, found {found}")]
    ManifestMissing {
        /// What was found instead.
        found: String,
    },
    /// The manifest is larger than allowed.
    #[error("manifest is {size} bytes; at most {MAX_MANIFEST_BYTES} are accepted")]
    ManifestTooLarge {
        /// Declared size.
        size: u64,
    },
    /// The second entry is not the manifest signature.
    #[error("second entry must be {MANIFEST_SIG_PATH}, found {found}")]
    SignatureMissing {
        /// What was found instead.
        found: String,
    },
    /// The signature cannot be parsed (or is absurdly large).
    #[error("manifest signature is malformed: {0}")]
    MalformedSignature(String),
    /// Signed by a key this host does not trust.
    #[error(
        "manifest is signed by key {key_id}, which is not trusted here (trusted: {trusted}); install its public key or use a bundle signed by a trusted key"
    )]
    UntrustedKey {
        /// Key id of the signature.
        key_id: String,
        /// Trusted key ids.
        trusted: String,
    },
    /// The signature does not match the manifest.
    #[error(
        "manifest signature by key {key_id} does not match the manifest: the bundle was altered or its signature belongs to another manifest"
    )]
    BadSignature {
        /// Key id of the signature.
        key_id: String,
    },
    /// The manifest is signed but not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest lists more files than allowed.
    #[error("manifest lists {count} files; at most {limit} are accepted")]
    TooManyEntries {
        /// Listed files.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry that is not a regular file.
    #[error("entry `{path}` is a {kind}; only regular files are allowed")]
    ForbiddenType {
        /// Entry path.
        path: String,
        /// Its type.
        kind: &'static str,
    },
    /// An absolute entry path.
    #[error("entry `{path}` has an absolute path")]
    AbsolutePath {
        /// Entry path.
        path: String,
    },
    /// An entry path that climbs out (`..`) or is otherwise unsafe.
    #[error("entry `{path}` has an unsafe path: {reason}")]
    UnsafePath {
        /// Entry path.
        path: String,
        /// Why.
        reason: String,
    },
    /// An entry the manifest does not list.
    #[error("entry `{path}` is not listed in the manifest")]
    UnexpectedEntry {
        /// Entry path.
        path: String,
    },
    /// An entry listed in the manifest appears a second time.
    #[error("entry `{path}` appears more than once")]
    DuplicateEntry {
        /// Entry path.
        path: String,
    },
    /// An entry appears before one the manifest lists first.
    #[error("entry `{path}` is out of order: `{expected}` should come first")]
    OutOfOrder {
        /// Entry path.
        path: String,
        /// The entry expected at this point.
        expected: String,
    },
    /// The bundle ends without a file the manifest lists.
    #[error("file `{path}` is listed in the manifest but missing from the bundle")]
    MissingEntry {
        /// The missing path.
        path: String,
    },
    /// Size differs from the manifest.
    #[error("entry `{path}` is {found} bytes; the manifest says {expected}")]
    SizeMismatch {
        /// Entry path.
        path: String,
        /// Size in the manifest.
        expected: u64,
        /// Size in the bundle.
        found: u64,
    },
    /// Mode differs from the manifest.
    #[error("entry `{path}` has mode {found:o}; the manifest says {expected:o}")]
    ModeMismatch {
        /// Entry path.
        path: String,
        /// Mode in the manifest.
        expected: u32,
        /// Mode in the bundle.
        found: u32,
    },
    /// Content differs from the manifest.
    #[error(
        "entry `{path}` does not match its sha256 in the manifest (expected {expected}, found {found})"
    )]
    HashMismatch {
        /// Entry path.
        path: String,
        /// Hash in the manifest.
        expected: String,
        /// Hash of the bytes.
        found: String,
    },
    /// An entry's tar headers (GNU long name or long link, PAX records) are larger than any
    /// bundle needs: the tar reader would hold them in memory.
    #[error(
        "an entry's tar headers (long name, long link or PAX records) exceed {limit} bytes; bundles never need that much (memory bomb?)"
    )]
    HeaderTooLarge {
        /// The bound, in bytes.
        limit: u64,
    },
    /// The decompressed stream is larger than the manifest allows.
    #[error(
        "decompressed data exceeds {limit} bytes, more than the manifest declares (decompression bomb?)"
    )]
    TooLarge {
        /// The bound that was crossed.
        limit: u64,
    },
    /// Data after the end of the archive.
    #[error("unexpected data after the end of the archive")]
    TrailingData,
    /// The sink refused a file (e.g. disk full while staging).
    #[error("cannot write `{path}`: {source}")]
    Sink {
        /// Entry path.
        path: String,
        /// The cause.
        source: io::Error,
    },
}

impl VerifyError {
    /// A short stable name for the kind of problem (used in `--json` output and tests).
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Io(_) => "io",
            VerifyError::Compression(_) => "compression",
            VerifyError::Truncated => "truncated",
            VerifyError::Tar(_) => "tar",
            VerifyError::ManifestMissing { .. } => "manifest-missing",
            VerifyError::ManifestTooLarge { .. } => "manifest-too-large",
            VerifyError::SignatureMissing { .. } => "signature-missing",
            VerifyError::MalformedSignature(_) => "malformed-signature",
            VerifyError::UntrustedKey { .. } => "untrusted-key",
            VerifyError::BadSignature { .. } => "bad-signature",
            VerifyError::Manifest(_) => "invalid-manifest",
            VerifyError::TooManyEntries { .. } => "too-many-entries",
            VerifyError::ForbiddenType { .. } => "forbidden-type",
            VerifyError::AbsolutePath { .. } => "absolute-path",
            VerifyError::UnsafePath { .. } => "unsafe-path",
            VerifyError::UnexpectedEntry { .. } => "unexpected-entry",
            VerifyError::DuplicateEntry { .. } => "duplicate-entry",
            VerifyError::OutOfOrder { .. } => "out-of-order",
            VerifyError::MissingEntry { .. } => "missing-entry",
            VerifyError::SizeMismatch { .. } => "size-mismatch",
            VerifyError::ModeMismatch { .. } => "mode-mismatch",
            VerifyError::HashMismatch { .. } => "hash-mismatch",
            VerifyError::HeaderTooLarge { .. } => "header-too-large",
            VerifyError::TooLarge { .. } => "too-large",
            VerifyError::TrailingData => "trailing-data",
            VerifyError::Sink { .. } => "sink",
        }
    }
}

/// Bounds applied while reading.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most payload files a manifest may list.
    pub max_files: usize,
    /// Most decompressed bytes in total, whatever the manifest says.
    pub max_total: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: crate::manifest::MAX_FILES,
            max_total: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// Receives payload files while they are verified.
pub trait Sink {
    /// Called before a file's bytes stream in; returns where they go.
    fn open(&mut self, entry: &FileEntry) -> io::Result<Box<dyn Write + '_>>;
    /// Called after the file's bytes were checked against the manifest.
    fn close(&mut self, entry: &FileEntry) -> io::Result<()>;
}

/// A sink that keeps nothing (pure verification).
pub struct Discard;

impl Sink for Discard {
    fn open(&mut self, _: &FileEntry) -> io::Result<Box<dyn Write + '_>> {
        Ok(Box::new(io::sink()))
    }
    fn close(&mut self, _: &FileEntry) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that writes every file under a directory, with the manifest's mode, fsynced.
pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    /// Writes under `root` (which must exist and be empty).
    pub fn new(root: &Path) -> DirSink {
        DirSink {
            root: root.to_path_buf(),
        }
    }
}

impl Sink for DirSink {
    fn open(&mut self, entry: &FileEntry) -> io::Result<Box<dyn Write + '_>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.root.join(&entry.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(Box::new(io::BufWriter::with_capacity(256 * 1024, f)))
    }
    fn close(&mut self, entry: &FileEntry) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.root.join(&entry.path);
        let f = std::fs::File::open(&path)?;
        f.set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
        f.sync_all()
    }
}

/// A bundle that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// The manifest's exact signed bytes.
    pub manifest_bytes: Vec<u8>,
    /// The manifest's signature file text.
    pub signature: String,
    /// Id of the trusted key that signed it.
    pub key_id: String,
    /// sha256 of the manifest bytes (identifies the bundle's content).
    pub manifest_sha256: String,
    /// sha256 of the whole bundle file.
    pub bundle_sha256: String,
    /// Size of the bundle file.
    pub compressed_bytes: u64,
    /// Size of the decompressed tar stream.
    pub decompressed_bytes: u64,
}

/// Shared state between the bounded reader and the verifier.
#[derive(Default)]
struct Meter {
    read: u64,
    limit: u64,
    exceeded: bool,
    failure: Option<VerifyError>,
    /// The compressed input has ended: a decoder error from now on means the file is cut short.
    source_ended: bool,
    /// While the tar reader moves to the next entry: where that step started and how much it
    /// may read (headers and extension records, which the tar reader keeps in memory).
    step: Option<(u64, u64)>,
    header_exceeded: bool,
}

/// Counts decompressed bytes, stops at the limit and remembers the first underlying failure.
struct Bounded<R> {
    inner: R,
    meter: Rc<RefCell<Meter>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = self.meter.borrow();
        let total_room = m.limit.saturating_sub(m.read);
        let step_room = m
            .step
            .map(|(start, cap)| (start.saturating_add(cap)).saturating_sub(m.read));
        let room = step_room.map_or(total_room, |r| r.min(total_room));
        drop(m);
        if room == 0 {
            // One more byte than allowed means a bound is crossed; probe for it.
            let mut probe = [0u8; 1];
            let n = self.inner.read(&mut probe).map_err(|e| self.note(e))?;
            if n == 0 {
                return Ok(0);
            }
            let mut m = self.meter.borrow_mut();
            if step_room == Some(0) {
                m.header_exceeded = true;
                return Err(io::Error::other("tar header size limit crossed"));
            }
            m.exceeded = true;
            return Err(io::Error::other("decompressed size limit crossed"));
        }
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self
            .inner
            .read(&mut buf[..want])
            .map_err(|e| self.note(e))?;
        self.meter.borrow_mut().read += n as u64;
        Ok(n)
    }
}

impl<R> Bounded<R> {
    fn note(&self, e: io::Error) -> io::Error {
        let mut m = self.meter.borrow_mut();
        if m.failure.is_none() {
            m.failure = Some(classify_stream_error(&e, m.source_ended));
        }
        e
    }
}

/// Tells a cut-short file from a damaged one by what happened, not by an error's wording: an
/// error after the compressed input ended is a truncation.
fn classify_stream_error(e: &io::Error, source_ended: bool) -> VerifyError {
    if source_ended || e.kind() == io::ErrorKind::UnexpectedEof {
        VerifyError::Truncated
    } else if e.get_ref().is_some() || e.kind() == io::ErrorKind::Other {
        VerifyError::Compression(e.to_string())
    } else {
        VerifyError::Io(io::Error::new(e.kind(), e.to_string()))
    }
}

/// Reads, verifies and (through `sink`) unpacks a bundle stream. Returns the verified manifest
/// only when every check passed; on error, whatever the sink received must be discarded.
/// With a second core, hashing runs on worker threads ([`Threads::Auto`]).
pub fn read_bundle<R: Read + Send>(
    input: R,
    keys: Trust<'_>,
    sink: &mut dyn Sink,
    limits: Limits,
) -> Result<VerifiedBundle, VerifyError> {
    read_bundle_on(input, keys, sink, limits, Threads::Auto)
}

/// [`read_bundle`], with the choice of threads made by the caller (both give the same verdict
/// for the same bytes).
pub fn read_bundle_on<R: Read + Send>(
    input: R,
    keys: Trust<'_>,
    sink: &mut dyn Sink,
    limits: Limits,
    threads: Threads,
) -> Result<VerifiedBundle, VerifyError> {
    if threads.pipelined() {
        std::thread::scope(|scope| {
            let source = pipeline::prefetch(scope, input);
            let mut hasher = PayloadHasher::threaded(scope);
            verify_stream(source, Prefetched::finish, &mut hasher, keys, sink, limits)
        })
    } else {
        let source = HashingReader::new(input);
        let finish = |h: HashingReader<R>| Ok(h.finish());
        let mut hasher = PayloadHasher::inline();
        verify_stream(source, finish, &mut hasher, keys, sink, limits)
    }
}

/// Verifies the compressed stream `source`; `finish` returns the sha256 and length of all
/// that was read from it.
fn verify_stream<S: Read>(
    source: S,
    finish: impl FnOnce(S) -> io::Result<(String, u64)>,
    hasher: &mut PayloadHasher,
    keys: Trust<'_>,
    sink: &mut dyn Sink,
    limits: Limits,
) -> Result<VerifiedBundle, VerifyError> {
    let source = Rc::new(RefCell::new(source));
    let meter = Rc::new(RefCell::new(Meter {
        limit: HEAD_LIMIT,
        ..Meter::default()
    }));
    let shared = SharedReader {
        inner: source.clone(),
        meter: meter.clone(),
    };
    // One frame only: anything after it is trailing data, not a further frame to decode.
    let decoder = frame_decoder(shared)?.single_frame();
    let bounded = Bounded {
        inner: decoder,
        meter: meter.clone(),
    };
    let mut archive = tar::Archive::new(bounded);
    let result = verify_entries(&mut archive, keys, sink, hasher, limits, &meter);
    let result = match result {
        Ok(v) => Ok(v),
        Err(e) => {
            let mut m = meter.borrow_mut();
            if m.header_exceeded {
                Err(VerifyError::HeaderTooLarge {
                    limit: MAX_HEADER_BYTES,
                })
            } else if m.exceeded {
                Err(VerifyError::TooLarge { limit: m.limit })
            } else if let Some(f) = m.failure.take() {
                Err(f)
            } else {
                Err(e)
            }
        }
    };
    let (manifest, manifest_bytes, signature, key_id) = result?;
    // Everything after the end-of-archive marker must be zero padding, and the zstd frame
    // must end cleanly (a truncated frame shows up here).
    let mut rest = archive.into_inner();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rest.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let mut m = meter.borrow_mut();
                return Err(if m.exceeded {
                    VerifyError::TooLarge { limit: m.limit }
                } else {
                    let ended = m.source_ended;
                    m.failure
                        .take()
                        .unwrap_or_else(|| classify_stream_error(&e, ended))
                });
            }
        };
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Err(VerifyError::TrailingData);
        }
    }
    // Also require the compressed file to end with the zstd frame (bytes after it may already
    // sit in the decoder's input buffer, so read through that buffer).
    let mut rest = rest.inner.finish();
    let mut tail = [0u8; 1];
    let extra = rest.read(&mut tail).map_err(VerifyError::Io)?;
    if extra != 0 {
        return Err(VerifyError::TrailingData);
    }
    drop(rest);
    let decompressed_bytes = meter.borrow().read;
    let source = Rc::try_unwrap(source)
        .map_err(|_| VerifyError::Io(io::Error::other("reader still shared")))?
        .into_inner();
    let (bundle_sha256, compressed_bytes) = finish(source).map_err(VerifyError::Io)?;
    Ok(VerifiedBundle {
        manifest_sha256: sha256_hex(&manifest_bytes),
        manifest,
        manifest_bytes,
        signature,
        key_id,
        bundle_sha256,
        compressed_bytes,
        decompressed_bytes,
    })
}

/// The compressed input, shared with the verifier, which learns from it when the input ended.
struct SharedReader<R> {
    inner: Rc<RefCell<R>>,
    meter: Rc<RefCell<Meter>>,
}

impl<R: Read> Read for SharedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.borrow_mut().read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.meter.borrow_mut().source_ended = true;
        }
        Ok(n)
    }
}

type Checked = (Manifest, Vec<u8>, String, String);

fn tar_err(e: io::Error) -> VerifyError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        VerifyError::Truncated
    } else {
        VerifyError::Tar(e.to_string())
    }
}

fn entry_kind(t: tar::EntryType) -> Option<&'static str> {
    match t {
        tar::EntryType::Regular => None,
        tar::EntryType::Symlink => Some("symlink"),
        tar::EntryType::Link => Some("hard link"),
        tar::EntryType::Char => Some("character device"),
        tar::EntryType::Block => Some("block device"),
        tar::EntryType::Fifo => Some("FIFO"),
        tar::EntryType::Directory => Some("directory"),
        tar::EntryType::Continuous => Some("contiguous file"),
        tar::EntryType::GNUSparse => Some("sparse file"),
        tar::EntryType::XGlobalHeader => Some("global pax header"),
        _ => Some("special entry"),
    }
}

/// The zstd decoder of a bundle stream: input buffered as the zstd crate would, a skippable
/// frame in front refused, and the window bounded by [`ZSTD_WINDOW_LOG_MAX`].
fn frame_decoder<R: Read>(
    input: R,
) -> Result<zstd::stream::read::Decoder<'static, io::BufReader<R>>, VerifyError> {
    let mut buffered = io::BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), input);
    refuse_skippable_frame(&mut buffered)?;
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(buffered).map_err(VerifyError::Io)?;
    decoder
        .window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| VerifyError::Compression(e.to_string()))?;
    Ok(decoder)
}

/// A bundle is one zstd frame from its first byte: a skippable frame in front (which a
/// decoder silently passes over, and which could smuggle data past a reader that hashes only
/// what it decodes) is refused.
fn refuse_skippable_frame<R: Read>(input: &mut io::BufReader<R>) -> Result<(), VerifyError> {
    use std::io::BufRead as _;
    let head = input.fill_buf().map_err(VerifyError::Io)?;
    if let Some(magic) = head.get(..4) {
        let m = u32::from_le_bytes([magic[0], magic[1], magic[2], magic[3]]);
        if m & 0xFFFF_FFF0 == 0x184D_2A50 {
            return Err(VerifyError::Compression(
                "the file starts with a skippable zstd frame; a bundle is one zstd frame from its first byte".into(),
            ));
        }
    }
    Ok(())
}

/// PAX keys no bundle entry may carry: GNU sparse maps (the tar reader ignores them, so the
/// bytes it hands over would not be the file a GNU tar extracts) and link targets.
fn forbidden_pax_key(key: &str) -> bool {
    key.starts_with("GNU.sparse") || key == "linkpath"
}

/// Checks an entry's type and path, returning its path.
fn check_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<String, VerifyError> {
    let raw = entry.path_bytes().into_owned();
    let path = String::from_utf8_lossy(&raw).into_owned();
    // Errors name the entry with control characters escaped: a hostile name must not rewrite
    // a terminal or forge lines in a log.
    let shown = || path.escape_debug().to_string();
    if let Some(kind) = entry_kind(entry.header().entry_type()) {
        return Err(VerifyError::ForbiddenType {
            path: shown(),
            kind,
        });
    }
    // The tar reader reads type NUL (an old-style regular file) as regular; bundles are
    // written with `0` only.
    if entry.header().as_bytes()[156] != b'0' {
        return Err(VerifyError::ForbiddenType {
            path: shown(),
            kind: "old-style regular file (type NUL)",
        });
    }
    if let Ok(Some(pax)) = entry.pax_extensions() {
        for ext in pax.flatten() {
            if let Ok(key) = ext.key()
                && forbidden_pax_key(key)
            {
                return Err(VerifyError::ForbiddenType {
                    path: shown(),
                    kind: "sparse file or link (PAX record)",
                });
            }
        }
    }
    if path.starts_with('/') {
        return Err(VerifyError::AbsolutePath { path: shown() });
    }
    if std::str::from_utf8(&raw).is_err() {
        return Err(VerifyError::UnsafePath {
            path: shown(),
            reason: "not UTF-8".into(),
        });
    }
    if let Err(reason) = check_relative_path(&path) {
        return Err(VerifyError::UnsafePath {
            path: shown(),
            reason: reason.escape_debug().to_string(),
        });
    }
    Ok(path)
}

fn read_small<R: Read>(entry: &mut tar::Entry<'_, R>, max: u64) -> Result<Vec<u8>, VerifyError> {
    let mut buf = Vec::new();
    entry.take(max + 1).read_to_end(&mut buf).map_err(tar_err)?;
    Ok(buf)
}

fn verify_entries<R: Read>(
    archive: &mut tar::Archive<Bounded<R>>,
    keys: Trust<'_>,
    sink: &mut dyn Sink,
    hasher: &mut PayloadHasher,
    limits: Limits,
    meter: &Rc<RefCell<Meter>>,
) -> Result<Checked, VerifyError> {
    let mut entries = archive.entries().map_err(tar_err)?;
    // 1. The manifest and 2. its signature, checked before anything else is read.
    let (manifest_bytes, signature) = read_head(&mut entries, meter)?;
    let key_id = match keys {
        Trust::Keys(keys) => verify_signature(keys, &manifest_bytes, &signature)?,
        Trust::ContentOnly => crate::signing::signature_key_id(&signature)
            .map_err(|e| VerifyError::MalformedSignature(e.to_string()))?,
    };
    // 3. The manifest, now trusted, sets the bounds for the rest.
    let manifest = Manifest::from_json(&manifest_bytes)?;
    bound_payload(&manifest, limits, meter)?;
    // 4. Payload, exactly the manifest's files in order.
    let position: HashMap<&str, usize> = manifest
        .files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.path.as_str(), i))
        .collect();
    let mut index = 0usize;
    while let Some(mut entry) = next_entry(&mut entries, meter)? {
        let path = check_entry(&mut entry)?;
        let expected = expect_entry(&manifest, &position, index, path)?;
        check_header(&entry, expected)?;
        copy_verified(&mut entry, expected, sink, hasher)?;
        index += 1;
    }
    if let Some(missing) = manifest.files.get(index) {
        return Err(VerifyError::MissingEntry {
            path: missing.path.clone(),
        });
    }
    Ok((manifest, manifest_bytes, signature, key_id))
}

/// Reads the first two entries: the manifest and its signature, each bounded.
fn read_head<R: Read>(
    entries: &mut tar::Entries<'_, R>,
    meter: &Rc<RefCell<Meter>>,
) -> Result<(Vec<u8>, String), VerifyError> {
    let Some(mut entry) = next_entry(entries, meter)? else {
        return Err(VerifyError::ManifestMissing {
            found: "an empty archive".into(),
        });
    };
    let path = check_entry(&mut entry)?;
    if path != MANIFEST_PATH {
        return Err(VerifyError::ManifestMissing { found: path });
    }
    // The size the tar reader will read (a PAX `size` record overrides the header's).
    let size = entry.size();
    if size > MAX_MANIFEST_BYTES {
        return Err(VerifyError::ManifestTooLarge { size });
    }
    let manifest_bytes = read_small(&mut entry, MAX_MANIFEST_BYTES)?;
    drop(entry);
    let Some(mut entry) = next_entry(entries, meter)? else {
        return Err(VerifyError::Truncated);
    };
    let path = check_entry(&mut entry)?;
    if path != MANIFEST_SIG_PATH {
        return Err(VerifyError::SignatureMissing { found: path });
    }
    let sig_bytes = read_small(&mut entry, MAX_SIGNATURE_BYTES)?;
    if sig_bytes.len() as u64 > MAX_SIGNATURE_BYTES {
        return Err(VerifyError::MalformedSignature("larger than 4 KiB".into()));
    }
    let signature = String::from_utf8(sig_bytes)
        .map_err(|_| VerifyError::MalformedSignature("not UTF-8".into()))?;
    Ok((manifest_bytes, signature))
}

/// Checks the manifest's signature against the trusted keys; returns the signer's key id.
fn verify_signature(
    keys: &TrustedKeys,
    manifest_bytes: &[u8],
    signature: &str,
) -> Result<String, VerifyError> {
    keys.verify(manifest_bytes, signature)
        .map(|v| v.key_id)
        .map_err(|e| match e {
            SigningError::UntrustedKey { key_id, trusted } => {
                VerifyError::UntrustedKey { key_id, trusted }
            }
            SigningError::BadSignature { key_id } => VerifyError::BadSignature { key_id },
            other => VerifyError::MalformedSignature(other.to_string()),
        })
}

/// Sets the decompressed-size bound from the signed manifest: each file's data rounded up to
/// 512, plus headers (a long-name entry at most adds three blocks), plus the end marker and
/// the record padding other tars may add.
fn bound_payload(
    manifest: &Manifest,
    limits: Limits,
    meter: &Rc<RefCell<Meter>>,
) -> Result<(), VerifyError> {
    if manifest.files.len() > limits.max_files {
        return Err(VerifyError::TooManyEntries {
            count: manifest.files.len(),
            limit: limits.max_files,
        });
    }
    let mut m = meter.borrow_mut();
    let mut bound = m.read;
    for f in &manifest.files {
        bound = bound.saturating_add(f.size.div_ceil(512) * 512 + 4 * 512);
    }
    bound = bound.saturating_add(20 * 512);
    m.limit = bound.min(limits.max_total);
    Ok(())
}

/// The manifest file entry number `index` must be `path`; otherwise says how the archive
/// differs (a duplicate, an entry out of order, one the manifest does not list).
fn expect_entry<'m>(
    manifest: &'m Manifest,
    position: &HashMap<&str, usize>,
    index: usize,
    path: String,
) -> Result<&'m FileEntry, VerifyError> {
    let Some(expected) = manifest.files.get(index) else {
        return Err(
            if position.contains_key(path.as_str()) || is_header_path(&path) {
                VerifyError::DuplicateEntry { path }
            } else {
                VerifyError::UnexpectedEntry { path }
            },
        );
    };
    if path == expected.path {
        return Ok(expected);
    }
    Err(match position.get(path.as_str()) {
        Some(&i) if i < index => VerifyError::DuplicateEntry { path },
        Some(_) => VerifyError::OutOfOrder {
            path,
            expected: expected.path.clone(),
        },
        None if is_header_path(&path) => VerifyError::DuplicateEntry { path },
        None => VerifyError::UnexpectedEntry { path },
    })
}

/// The entry's size and mode are the manifest's.
fn check_header<R: Read>(
    entry: &tar::Entry<'_, R>,
    expected: &FileEntry,
) -> Result<(), VerifyError> {
    // The size the tar reader will read (a PAX `size` record overrides the header's).
    let size = entry.size();
    if size != expected.size {
        return Err(VerifyError::SizeMismatch {
            path: expected.path.clone(),
            expected: expected.size,
            found: size,
        });
    }
    let mode = entry.header().mode().map_err(tar_err)? & 0o7777;
    if mode != expected.mode {
        return Err(VerifyError::ModeMismatch {
            path: expected.path.clone(),
            expected: expected.mode,
            found: mode,
        });
    }
    Ok(())
}

/// Streams the entry into the sink while hashing it (on the hasher's thread, if it has one);
/// the sink closes the file only when the length and the hash are the manifest's.
fn copy_verified<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    expected: &FileEntry,
    sink: &mut dyn Sink,
    hasher: &mut PayloadHasher,
) -> Result<(), VerifyError> {
    let sink_err = |source| VerifyError::Sink {
        path: expected.path.clone(),
        source,
    };
    {
        let mut out = sink.open(expected).map_err(sink_err)?;
        loop {
            let mut buf = hasher.buffer();
            let n = entry.read(&mut buf).map_err(tar_err)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(sink_err)?;
            buf.truncate(n);
            hasher.update(buf).map_err(VerifyError::Io)?;
        }
        out.flush().map_err(sink_err)?;
    }
    let (sha, len) = hasher.finish().map_err(VerifyError::Io)?;
    if len != expected.size {
        return Err(VerifyError::Truncated);
    }
    if sha != expected.sha256 {
        return Err(VerifyError::HashMismatch {
            path: expected.path.clone(),
            expected: expected.sha256.clone(),
            found: sha,
        });
    }
    sink.close(expected).map_err(sink_err)
}

/// Moves to the next entry, letting the tar reader read at most [`MAX_HEADER_BYTES`] for it
/// (the rest of the previous entry's padding, its headers and any long-name, long-link or PAX
/// records, which the tar reader would otherwise read into memory whatever their size).
fn next_entry<'a, R: Read>(
    entries: &mut tar::Entries<'a, R>,
    meter: &Rc<RefCell<Meter>>,
) -> Result<Option<tar::Entry<'a, R>>, VerifyError> {
    {
        let mut m = meter.borrow_mut();
        m.step = Some((m.read, MAX_HEADER_BYTES));
    }
    let next = entries.next().transpose();
    let mut m = meter.borrow_mut();
    m.step = None;
    if m.header_exceeded {
        return Err(VerifyError::HeaderTooLarge {
            limit: MAX_HEADER_BYTES,
        });
    }
    drop(m);
    next.map_err(tar_err)
}

fn is_header_path(p: &str) -> bool {
    p == MANIFEST_PATH || p == MANIFEST_SIG_PATH
}

/// Verifies a bundle file against trusted keys without writing anything.
pub fn verify_file(path: &Path, keys: &TrustedKeys) -> Result<VerifiedBundle, VerifyError> {
    let f = std::fs::File::open(path).map_err(VerifyError::Io)?;
    read_bundle(
        io::BufReader::with_capacity(1024 * 1024, f),
        Trust::Keys(keys),
        &mut Discard,
        Limits::default(),
    )
}

/// Checks a bundle's structure and every payload hash against its manifest, without judging
/// who signed it (for rebuild comparisons by a party that holds no key). Never use the result
/// to decide whether to install.
pub fn inspect_file(path: &Path) -> Result<VerifiedBundle, VerifyError> {
    let f = std::fs::File::open(path).map_err(VerifyError::Io)?;
    read_bundle(
        io::BufReader::with_capacity(1024 * 1024, f),
        Trust::ContentOnly,
        &mut Discard,
        Limits::default(),
    )
}

/// How the manifest signature is judged.
#[derive(Clone, Copy)]
pub enum Trust<'a> {
    /// It must verify against one of these keys.
    Keys(&'a TrustedKeys),
    /// It is parsed but not verified: content checks only (see [`inspect_file`]).
    ContentOnly,
}

/// Reads only the manifest of a bundle and checks its signature (the payload is not read).
/// Used to learn which profile a bundle belongs to before taking that profile's lock; the full
/// verification still runs afterwards.
pub fn peek_manifest(path: &Path, keys: &TrustedKeys) -> Result<Manifest, VerifyError> {
    let f = std::fs::File::open(path).map_err(VerifyError::Io)?;
    peek_manifest_from(f, keys)
}

/// [`peek_manifest`] of a stream (an already open file: rewind it before reading it again).
pub fn peek_manifest_from(input: impl Read, keys: &TrustedKeys) -> Result<Manifest, VerifyError> {
    peek_signed_head(input, keys).map(|h| h.manifest)
}

/// The signed head of a bundle as [`peek_signed_head`] read it: enough to recognise a bundle
/// whose payload was already verified (same manifest sha256), without reading the payload.
#[derive(Debug, Clone)]
pub struct SignedHead {
    /// The parsed manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest's exact signed bytes.
    pub manifest_sha256: String,
    /// Id of the trusted key that signed it.
    pub key_id: String,
}

/// Reads the manifest and its signature at the start of a bundle stream and verifies the
/// signature; the payload is not read (so it is not verified either).
pub fn peek_signed_head(input: impl Read, keys: &TrustedKeys) -> Result<SignedHead, VerifyError> {
    let decoder = frame_decoder(input)?;
    let meter = Rc::new(RefCell::new(Meter {
        limit: HEAD_LIMIT,
        ..Meter::default()
    }));
    let mut archive = tar::Archive::new(Bounded {
        inner: decoder,
        meter: meter.clone(),
    });
    let mut entries = archive.entries().map_err(tar_err)?;
    let (manifest_bytes, sig) = read_head(&mut entries, &meter)?;
    let key_id = verify_signature(keys, &manifest_bytes, &sig)?;
    Ok(SignedHead {
        manifest: Manifest::from_json(&manifest_bytes)?,
        manifest_sha256: crate::digest::sha256_hex(&manifest_bytes),
        key_id,
    })
}

/// [`peek_manifest_from`] that also returns the sha256 (hex) of the signed manifest's bytes,
/// the same digest a full verification reports as `manifest_sha256`: a bundle whose signed
/// manifest has this digest describes exactly the payload of the one installed under it.
pub fn peek_signed_manifest_from(
    input: impl Read,
    keys: &TrustedKeys,
) -> Result<(Manifest, String), VerifyError> {
    peek_signed_head(input, keys).map(|h| (h.manifest, h.manifest_sha256))
}
