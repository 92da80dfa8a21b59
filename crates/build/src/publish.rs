//! `cargo xtask publish`: the signed channel ([`smoker_format::channel`]) over a release
//! directory.
//!
//! Every `*.tar.zst` under the release directory (a few levels deep) is looked at by its signed
//! manifest (the signature is checked against the trusted keys, so an unsigned or foreign file
//! is refused, not published); per profile, architecture and environment the newest version
//! is listed with its size and sha256, and copied to `<out>/<environment>/<file>` when the
//! channel directory is not the release directory. The sequence is greater than the one of the
//! channel already in `<out>` (and at least the publication time in seconds, so it keeps
//! growing when `<out>` is a fresh directory). `channel.json` is canonical JSON; its detached
//! minisign signature is written next to it first, then both are renamed into place.

use smoker_format::channel::{
    CHANNEL_FILE, CHANNEL_FORMAT, CHANNEL_SIG_FILE, Channel, ChannelError, Entry,
};
use smoker_format::signing::{SecretKey, TrustedKeys};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What a publication is asked to do.
pub struct Request<'a> {
    /// Channel name.
    pub name: &'a str,
    /// Where the bundles are (e.g. `bundles/`).
    pub release_dir: &'a Path,
    /// The channel directory (served as static files).
    pub out: &'a Path,
    /// Keys the bundles' signatures are checked with.
    pub keys: &'a TrustedKeys,
    /// The key that signs the channel.
    pub key: &'a SecretKey,
    /// The publication time (Unix seconds).
    pub now: u64,
    /// Seconds until the channel expires.
    pub expires_in: u64,
    /// An explicit sequence (must exceed the one in `out`); default: see the module doc.
    pub sequence: Option<u64>,
    /// `not_before` (Unix seconds).
    pub not_before: Option<u64>,
    /// Cohort percentage.
    pub cohort: Option<u8>,
    /// Maintenance window `HH:MM-HH:MM`.
    pub window: Option<String>,
}

/// What can stop a publication.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A bundle's manifest did not verify.
    #[error("{path}: {source}; only bundles signed by a trusted key are published")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        source: smoker_format::bundle::read::VerifyError,
    },
    /// The channel would not be valid.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Something asked for cannot be published.
    #[error("{0}")]
    Refused(String),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Bundle files under `dir`, at most `depth` levels down, sorted.
fn bundle_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), PublishError> {
    let rd = std::fs::read_dir(dir).map_err(io_at(dir))?;
    for e in rd {
        let e = e.map_err(io_at(dir))?;
        let p = e.path();
        let t = e.file_type().map_err(io_at(&p))?;
        if t.is_dir() && depth > 0 {
            bundle_files(&p, depth - 1, out)?;
        } else if t.is_file() && p.to_string_lossy().ends_with(".tar.zst") {
            out.push(p);
        }
    }
    out.sort();
    Ok(())
}

/// The channel currently in `out`, if any (parsed, not verified: only its sequence is used).
pub fn current(out: &Path) -> Option<Channel> {
    let bytes = std::fs::read(out.join(CHANNEL_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The newest bundle per (profile, architecture, environment) among the `*.tar.zst` files
/// under `release_dir` (three levels deep), each judged by its signed manifest: a file whose
/// manifest does not verify with `keys` is an error, not skipped.
pub fn newest_bundles(release_dir: &Path, keys: &TrustedKeys) -> Result<Newest, PublishError> {
    let mut files = Vec::new();
    bundle_files(release_dir, 3, &mut files)?;
    let mut newest: Newest = BTreeMap::new();
    for path in files {
        let f = std::fs::File::open(&path).map_err(io_at(&path))?;
        let head = smoker_format::bundle::read::peek_signed_head(f, keys).map_err(|source| {
            PublishError::Bundle {
                path: path.clone(),
                source,
            }
        })?;
        let m = head.manifest;
        let Ok(version) = semver::Version::parse(&m.version) else {
            continue;
        };
        let key = (m.name.clone(), m.arch.to_string(), m.environment.clone());
        if newest.get(&key).is_none_or(|(v, _)| version > *v) {
            newest.insert(key, (version, path));
        }
    }
    Ok(newest)
}

/// (profile, architecture, environment) → (version, bundle file).
pub type Newest = BTreeMap<(String, String, String), (semver::Version, PathBuf)>;

/// Publishes the channel; returns it as written.
pub fn publish(r: &Request<'_>) -> Result<Channel, PublishError> {
    std::fs::create_dir_all(r.out).map_err(io_at(r.out))?;
    let newest = newest_bundles(r.release_dir, r.keys)?;
    if newest.is_empty() {
        return Err(PublishError::Refused(format!(
            "no bundle (*.tar.zst) under {}; run `cargo xtask release` first",
            r.release_dir.display()
        )));
    }
    let mut bundles = Vec::new();
    for ((profile, arch, environment), (version, path)) in newest {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = format!("{environment}/{file_name}");
        let dest = r.out.join(&rel);
        let (sha256, size) = smoker_format::digest::sha256_file(&path).map_err(io_at(&path))?;
        let same = smoker_format::digest::sha256_file(&dest).is_ok_and(|(d, _)| d == sha256);
        if !same {
            let dir = r.out.join(&environment);
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
            let tmp = dir.join(format!(".{file_name}.part"));
            std::fs::copy(&path, &tmp).map_err(io_at(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
        }
        bundles.push(Entry {
            profile,
            arch,
            environment,
            version: version.to_string(),
            file: rel,
            size,
            sha256,
        });
    }
    let previous = current(r.out).map(|c| c.sequence);
    let sequence = match (r.sequence, previous) {
        (Some(s), Some(p)) if s <= p => {
            return Err(PublishError::Refused(format!(
                "sequence {s} is not greater than {p}, the sequence of the channel already in {}; hosts that saw it would refuse this one",
                r.out.display()
            )));
        }
        (Some(s), _) => s,
        (None, p) => p.map_or(r.now, |p| (p + 1).max(r.now)),
    };
    let channel = Channel {
        format: CHANNEL_FORMAT,
        name: r.name.to_string(),
        sequence,
        published: r.now,
        expires: r.now.saturating_add(r.expires_in),
        not_before: r.not_before,
        cohort: r.cohort,
        window: r.window.clone(),
        bundles,
    };
    channel.validate()?;
    let bytes = channel.to_canonical_json();
    let sig = r
        .key
        .sign(
            &bytes[..],
            &format!("channel {} sequence {}", channel.name, channel.sequence),
        )
        .map_err(io_at(r.out))?;
    for (name, data) in [
        (CHANNEL_SIG_FILE, sig.as_bytes()),
        (CHANNEL_FILE, &bytes[..]),
    ] {
        let p = r.out.join(name);
        smoker_format::fsio::write_atomic(&p, data, 0o644).map_err(io_at(&p))?;
    }
    Ok(channel)
}
