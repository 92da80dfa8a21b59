//! Signed bundles made by hand, and the raw tar and zstd pieces to take them apart and put
//! altered copies back together (the hostile corpus, signing interop, GNU tar), plus readers of
//! bundle and tar files that do no verification.

use smoker_format::manifest::{
    Arch, ComposeSpec, FORMAT_VERSION, FileEntry, Health, Image, Manifest, Migration, Runner,
    Source,
};
use smoker_format::signing::{SecretKey, TrustedKeys};
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Deterministic pseudo-random (incompressible) bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A signed bundle built in memory from a hand-written manifest, and the means to take it
/// apart and put altered copies back together.
pub struct Fixture {
    /// Holds the key files.
    pub dir: tempfile::TempDir,
    /// The signing key (trusted by [`Fixture::keys`]).
    pub key: SecretKey,
    /// Its public key file.
    pub pub_path: PathBuf,
    /// The trusted key set.
    pub keys: TrustedKeys,
    /// The manifest of the genuine bundle.
    pub manifest: Manifest,
    /// Payload files in manifest order, with their bytes.
    pub files: Vec<(FileEntry, Vec<u8>)>,
}

/// Size of the incompressible payload file of a [`Fixture`].
pub const BLOB_LEN: usize = 300 * 1024;
/// Path of the incompressible payload file of a [`Fixture`].
pub const BLOB_PATH: &str = "images/app.tar";

impl Fixture {
    /// A bundle with six payload files, one of them a 300 KiB incompressible blob.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let (key, pub_path) = new_key(dir.path(), "release");
        let keys = TrustedKeys::from_file(&pub_path).expect("loading the public key");
        let compose = b"services:\n  app:\n    image: registry.example/app:1.0\n    volumes:\n      - ./config/app.toml:/etc/app.toml:ro\n".to_vec();
        let raw: Vec<(&str, u32, Vec<u8>)> = vec![
            ("config/prod.env", 0o644, b"PORT=8080\nMODE=prod\n".to_vec()),
            (
                "generated/pin.compose.yaml",
                0o644,
                format!(
                    "services:\n  app:\n    image: registry.example/app@sha256:{}\n",
                    "ab".repeat(32)
                )
                .into_bytes(),
            ),
            (BLOB_PATH, 0o644, noise(BLOB_LEN, 7)),
            (
                "migrations/0001-init.sh",
                0o755,
                b"#!/bin/sh\necho migrating\n".to_vec(),
            ),
            ("stack/compose.yaml", 0o644, compose),
            (
                "stack/config/app.toml",
                0o644,
                b"[server]\nport = 8080\n".to_vec(),
            ),
        ];
        let files: Vec<(FileEntry, Vec<u8>)> = raw
            .into_iter()
            .map(|(path, mode, bytes)| {
                (
                    FileEntry {
                        path: path.to_string(),
                        size: bytes.len() as u64,
                        sha256: smoker_format::digest::sha256_hex(&bytes),
                        mode,
                    },
                    bytes,
                )
            })
            .collect();
        let migration_sha = files
            .iter()
            .find(|(e, _)| e.path == "migrations/0001-init.sh")
            .map(|(e, _)| e.sha256.clone())
            .expect("migration listed");
        let manifest = Manifest {
            format: FORMAT_VERSION,
            name: "corpus".into(),
            version: "1.0.0".into(),
            arch: Arch::Amd64,
            environment: "prod".into(),
            source: Source {
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
                dirty: false,
                recipe_dir: "recipes/corpus".into(),
            },
            created: 1_700_000_000,
            min_installer_version: "0.1.0".into(),
            compose: ComposeSpec {
                files: vec![
                    "stack/compose.yaml".into(),
                    "generated/pin.compose.yaml".into(),
                ],
                project_directory: "stack".into(),
                env_file: Some("config/prod.env".into()),
            },
            images: vec![Image {
                service: "app".into(),
                original: "registry.example/app:1.0".into(),
                repository: "registry.example/app".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                index_digest: None,
                config_digest: Some(format!("sha256:{}", "cd".repeat(32))),
                archive: Some(BLOB_PATH.into()),
            }],
            migrations: vec![Migration {
                id: "0001-init".into(),
                path: "migrations/0001-init.sh".into(),
                sha256: migration_sha,
            }],
            migration_runner: Some(Runner {
                service: "app".into(),
                command: vec!["sh".into(), "{script}".into()],
            }),
            health: Health {
                window_secs: 60,
                failures: 3,
                successes: 1,
                interval_ms: 1000,
                http: vec![],
                connect_grace_ms: None,
            },
            backup: None,
            required_secrets: vec![],
            files: files.iter().map(|(e, _)| e.clone()).collect(),
            host_access: Default::default(),
            requires: Default::default(),
        };
        manifest.validate().expect("fixture manifest is valid");
        Fixture {
            dir,
            key,
            pub_path,
            keys,
            manifest,
            files,
        }
    }

    /// Signs a manifest's canonical bytes with the fixture key.
    pub fn sign(&self, m: &Manifest) -> String {
        sign_manifest(&self.key, m)
    }

    /// The genuine bundle, as `write_bundle` makes it.
    pub fn bundle(&self) -> Vec<u8> {
        self.bundle_with_signature(&self.sign(&self.manifest))
    }

    /// The fixture's manifest and payload as `write_bundle` makes a bundle of them, carrying
    /// `signature` as the manifest's signature.
    pub fn bundle_with_signature(&self, signature: &str) -> Vec<u8> {
        let payload: Vec<_> = self
            .files
            .iter()
            .map(|(e, b)| {
                (
                    e.clone(),
                    smoker_format::bundle::write::Payload::Bytes(b.clone()),
                )
            })
            .collect();
        smoker_format::bundle::write::write_bundle(Vec::new(), &self.manifest, signature, &payload)
            .expect("write_bundle")
    }

    /// The genuine bundle's entries, ready to be altered and reassembled with [`tar_bytes`].
    pub fn entries(&self) -> Vec<Raw> {
        self.entries_for(&self.manifest, &self.sign(&self.manifest))
    }

    /// Entries of a bundle with this manifest and signature and the fixture's payload.
    pub fn entries_for(&self, m: &Manifest, sig: &str) -> Vec<Raw> {
        let mtime = self.manifest.created;
        let mut v = vec![
            Raw::file(
                smoker_format::manifest::MANIFEST_PATH,
                0o644,
                m.to_canonical_json(),
                mtime,
            ),
            Raw::file(
                smoker_format::manifest::MANIFEST_SIG_PATH,
                0o644,
                sig.as_bytes().to_vec(),
                mtime,
            ),
        ];
        for (e, b) in &self.files {
            v.push(Raw::file(&e.path, e.mode, b.clone(), mtime));
        }
        v
    }

    /// Index of a payload path among [`Fixture::entries`].
    pub fn index_of(&self, path: &str) -> usize {
        2 + self
            .files
            .iter()
            .position(|(e, _)| e.path == path)
            .unwrap_or_else(|| panic!("{path} is not a fixture file"))
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Fixture::new()
    }
}

/// Generates an unencrypted key pair `<dir>/<name>.key` / `.pub` and loads the secret key.
pub fn new_key(dir: &Path, name: &str) -> (SecretKey, PathBuf) {
    let secret = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    smoker_format::signing::generate(&secret, &public, None).expect("generating a key pair");
    let key = SecretKey::load(&secret, None).expect("loading the new secret key");
    (key, public)
}

/// Signs a manifest the way the release builder does.
pub fn sign_manifest(key: &SecretKey, m: &Manifest) -> String {
    let json = m.to_canonical_json();
    let comment = smoker_build::release::trusted_comment(
        m,
        &smoker_format::digest::sha256_hex(json.as_slice()),
    );
    key.sign(json.as_slice(), &comment).expect("signing")
}

/// One tar entry, written exactly as described (no path checks, no normalisation).
#[derive(Debug, Clone)]
pub struct Raw {
    /// Path bytes (a GNU long-name entry precedes the header when longer than 100 bytes).
    pub path: Vec<u8>,
    /// Entry type byte.
    pub kind: tar::EntryType,
    /// Mode bits.
    pub mode: u32,
    /// Size written in the header (normally `data.len()`).
    pub size: u64,
    /// Data written after the header (padded to 512).
    pub data: Vec<u8>,
    /// Link name (symlinks and hard links).
    pub link: Vec<u8>,
    /// Modification time.
    pub mtime: u64,
    /// Owner ids.
    pub uid: u64,
    /// Group id.
    pub gid: u64,
}

impl Raw {
    /// A regular file.
    pub fn file(path: &str, mode: u32, data: Vec<u8>, mtime: u64) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind: tar::EntryType::Regular,
            mode,
            size: data.len() as u64,
            data,
            link: Vec::new(),
            mtime,
            uid: 0,
            gid: 0,
        }
    }

    /// An entry of another type, without data.
    pub fn special(path: &str, kind: tar::EntryType, link: &str) -> Raw {
        Raw {
            path: path.as_bytes().to_vec(),
            kind,
            mode: if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            },
            size: 0,
            data: Vec::new(),
            link: link.as_bytes().to_vec(),
            mtime: 1_700_000_000,
            uid: 0,
            gid: 0,
        }
    }

    /// Replaces the data (and the header size with it).
    pub fn with_data(mut self, data: Vec<u8>) -> Raw {
        self.size = data.len() as u64;
        self.data = data;
        self
    }
}

/// The header block(s) of one entry (a GNU long-name entry first when the path needs it).
pub fn header_bytes(e: &Raw) -> Vec<u8> {
    let mut out = Vec::new();
    if e.path.len() > 100 {
        let mut name = e.path.clone();
        name.push(0);
        let long = Raw {
            path: b"././@LongLink".to_vec(),
            kind: tar::EntryType::GNULongName,
            mode: 0o644,
            size: name.len() as u64,
            data: name,
            link: Vec::new(),
            mtime: 0,
            uid: 0,
            gid: 0,
        };
        out.extend(header_bytes(&long));
        out.extend(padded(&long.data));
    }
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        let n = e.path.len().min(100);
        old.name[..n].copy_from_slice(&e.path[..n]);
        let l = e.link.len().min(100);
        old.linkname[..l].copy_from_slice(&e.link[..l]);
    }
    h.set_entry_type(e.kind);
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    h.set_mtime(e.mtime);
    h.set_size(e.size);
    if e.kind == tar::EntryType::GNUSparse {
        // A well-formed sparse header: no chunks, real size = stored size.
        if let Some(gnu) = h.as_gnu_mut() {
            let real = format!("{:011o}\0", e.size);
            gnu.realsize.copy_from_slice(real.as_bytes());
        }
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

/// Data padded to a multiple of 512 bytes.
pub fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// A tar stream of these entries followed by the end-of-archive marker (two zero blocks).
pub fn tar_bytes(entries: &[Raw]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend(header_bytes(e));
        out.extend(padded(&e.data));
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A PAX extended header entry carrying these records (for the entry that follows it).
pub fn pax(records: &[(&str, &str)]) -> Raw {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        // The length counts its own digits.
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        data.extend(format!("{len}{body}").into_bytes());
    }
    Raw {
        path: b"././@PaxHeader".to_vec(),
        kind: tar::EntryType::XHeader,
        mode: 0o644,
        size: data.len() as u64,
        data,
        link: Vec::new(),
        mtime: 0,
        uid: 0,
        gid: 0,
    }
}

/// zstd-compresses with a checksum, as bundles are.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.include_checksum(true).expect("checksum flag");
    enc.write_all(bytes).expect("compressing");
    enc.finish().expect("finishing the zstd frame")
}

/// zstd-compresses `bytes` flushing a complete block every `chunk` bytes, so that a prefix of
/// the output decompresses to a known prefix of the input. Returns the frame and, for each
/// flush, (decompressed bytes so far, compressed bytes so far).
pub fn zstd_in_blocks(bytes: &[u8], chunk: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.include_checksum(true).expect("checksum flag");
    let mut marks = Vec::new();
    let mut done = 0;
    for piece in bytes.chunks(chunk) {
        enc.write_all(piece).expect("compressing");
        enc.flush().expect("flushing a block");
        done += piece.len();
        marks.push((done, enc.get_ref().len()));
    }
    (enc.finish().expect("finishing the zstd frame"), marks)
}

/// Writes a zstd frame by hand: `data` in raw (stored) blocks, then `zeros` zero bytes as RLE
/// blocks (4 bytes of frame per 128 KiB). A cheap way to describe gigabytes of output.
pub fn zstd_frame_with_zero_tail(data: &[u8], zeros: u64) -> Vec<u8> {
    const MAX_BLOCK: usize = 128 * 1024;
    fn block_header(out: &mut Vec<u8>, last: bool, kind: u32, size: usize) {
        let v = u32::from(last) | (kind << 1) | ((size as u32) << 3);
        out.extend_from_slice(&v.to_le_bytes()[..3]);
    }
    // Magic, frame header descriptor (no content size, no checksum, not single segment),
    // window descriptor 2^(10+13) = 8 MiB.
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD, 0x00, 13 << 3];
    let chunks: Vec<&[u8]> = data.chunks(MAX_BLOCK).collect();
    let rle_blocks = zeros.div_ceil(MAX_BLOCK as u64);
    for (i, c) in chunks.iter().enumerate() {
        block_header(
            &mut out,
            i + 1 == chunks.len() && rle_blocks == 0,
            0,
            c.len(),
        );
        out.extend_from_slice(c);
    }
    let mut left = zeros;
    while left > 0 {
        let n = left.min(MAX_BLOCK as u64);
        left -= n;
        block_header(&mut out, left == 0, 1, n as usize);
        out.push(0);
    }
    out
}

/// Flips one bit.
pub fn flip(bytes: &mut [u8], at: usize, bit: u8) {
    bytes[at] ^= 1 << bit;
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The entries of a bundle file in stored order: (path, mode, bytes). Reads with the tar and
/// zstd crates only (no verification).
pub fn bundle_entries(path: &Path) -> Vec<(String, u32, Vec<u8>)> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dec = zstd::stream::read::Decoder::new(file).expect("zstd decoder");
    let mut archive = tar::Archive::new(dec);
    let mut out = Vec::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let p = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mode = entry.header().mode().expect("mode");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        out.push((p, mode, data));
    }
    out
}

/// The key id of a public key file, as this crate (and the minisign CLI) prints it.
pub fn key_id_of(public_key: &Path) -> String {
    TrustedKeys::from_file(public_key)
        .unwrap_or_else(|e| panic!("{}: {e}", public_key.display()))
        .keys()[0]
        .id
        .clone()
}

/// The entry `path` of a bundle, extracted into `dest`; panics when there is none.
pub fn extract_from_bundle(bundle: &Path, path: &str, dest: &Path) {
    let f =
        std::fs::File::open(bundle).unwrap_or_else(|e| panic!("opening {}: {e}", bundle.display()));
    let dec = zstd::stream::read::Decoder::new(f).expect("a zstd decoder");
    let mut ar = tar::Archive::new(dec);
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("a tar entry");
        if e.path_bytes().as_ref() == path.as_bytes() {
            let mut out = std::fs::File::create(dest)
                .unwrap_or_else(|e| panic!("creating {}: {e}", dest.display()));
            std::io::copy(&mut e, &mut out).expect("copying the entry");
            return;
        }
    }
    panic!("{} has no entry {path}", bundle.display());
}

/// The entry names of a tar file, with each header's mtime, uid and mode.
pub fn tar_listing(path: &Path) -> Vec<(String, u64, u64, u32)> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    let mut ar = tar::Archive::new(f);
    ar.entries()
        .expect("tar entries")
        .map(|e| {
            let e = e.expect("a tar entry");
            let h = e.header();
            (
                String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                h.mtime().expect("mtime"),
                h.uid().expect("uid"),
                h.mode().expect("mode"),
            )
        })
        .collect()
}
