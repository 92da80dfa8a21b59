//! Offline image archives: every image an offline bundle needs, in one file `docker load` reads.
//!
//! The format is a *docker-archive* (what `docker save` writes): Docker 20.10 and later load it,
//! while an OCI image layout is only loaded by Docker 25 and later. It is written
//! deterministically from registry blobs fetched by digest, so the same images give the same
//! bytes on every release:
//!
//! ```text
//! manifest.json          Docker's index: per image its config, local reference and layers
//! smoker-archive.json    size of every blob, stored and unpacked (for the disk preflight)
//! blobs/                 directory entries
//! blobs/sha256/
//! blobs/sha256/<hex>…    every config and layer blob exactly as the registry serves it, once
//!                        each (a layer shared by several images is stored once), sorted by
//!                        digest; layers stay compressed — `docker load` decompresses them and
//!                        checks them against the config's diff IDs
//! ```
//!
//! Tar headers are fixed: GNU format, mode 644 (directories 755), uid/gid 0, no user or group
//! names, mtime 0 (no time from a registry or from the build). The two index files come first,
//! so the installer learns what the archive holds from its first entries and streams only the
//! images the host lacks into `docker load` in one pass ([`stream_images`]).
//!
//! After `docker load` an image has no registry digest, so it cannot be run as `repo@sha256:…`.
//! Loaded images are therefore tagged with a deterministic local reference
//! ([`local_reference`]) under the reserved domain `smoker.invalid`, which never resolves: if
//! anything ever tried to pull such a reference it would fail at once instead of fetching
//! something else.

use crate::digest::HashingReader;
use crate::manifest::Image;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Path of the image archive inside an offline bundle.
pub const ARCHIVE_PATH: &str = "images/images.tar";
/// Domain of the local references loaded images are tagged with (RFC 2606: never resolves).
pub const LOCAL_DOMAIN: &str = "smoker.invalid";
/// Docker's index inside the archive (first entry).
pub const DOCKER_MANIFEST: &str = "manifest.json";
/// Blob sizes inside the archive (second entry).
pub const SIZES_FILE: &str = "smoker-archive.json";
/// Version of [`SIZES_FILE`].
pub const SIZES_FORMAT: u32 = 1;
/// Directory of the blobs inside the archive.
pub const BLOB_DIR: &str = "blobs/sha256";
/// Largest index file accepted when reading an archive.
const MAX_INDEX_BYTES: u64 = 4 * 1024 * 1024;

/// Errors writing or reading an image archive.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The archive does not have the layout described in this module.
    #[error("image archive {path}: {message}")]
    Format {
        /// The archive.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A blob's bytes do not hash to its digest (a corrupted cache or download).
    #[error(
        "blob {digest} at {path} does not match its digest (found sha256:{found}, {size} bytes); delete it and fetch it again"
    )]
    BlobMismatch {
        /// Expected digest.
        digest: String,
        /// The file holding it.
        path: PathBuf,
        /// Hex sha256 of the bytes found.
        found: String,
        /// Bytes found.
        size: u64,
    },
    /// The archive does not hold an image the signed manifest names.
    #[error(
        "the bundle's image archive holds no image with ID {config} (service `{service}`); it holds {held}. The bundle does not match its signed manifest: rebuild it with `cargo xtask release --offline`"
    )]
    MissingImage {
        /// Config digest (image ID) looked for.
        config: String,
        /// Service that needs it.
        service: String,
        /// Image IDs the archive holds.
        held: String,
    },
    /// The archive lacks a blob one of its images needs.
    #[error("image archive {path} lacks blob {digest}, which image {config} needs")]
    MissingBlob {
        /// The archive.
        path: PathBuf,
        /// The missing blob.
        digest: String,
        /// The image needing it.
        config: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The local reference a loaded image is tagged with: `smoker.invalid/<path>:sha256-<hex>`,
/// where `<path>` is the repository without its registry host and `<hex>` the platform
/// manifest digest. Deterministic, distinct for distinct images, and never pullable.
pub fn local_reference(repository: &str, digest: &str) -> String {
    let mut parts: Vec<&str> = repository.split('/').collect();
    if parts.len() > 1 {
        let first = parts[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            parts.remove(0);
        }
    }
    let path = parts.join("/").to_ascii_lowercase();
    let tag = digest.replacen(':', "-", 1);
    format!("{LOCAL_DOMAIN}/{path}:{tag}")
}

/// The reference compose runs for a manifest image: the local reference for images carried in
/// the bundle, `repository@digest` otherwise.
pub fn run_reference(image: &Image) -> String {
    if image.archive.is_some() {
        local_reference(&image.repository, &image.digest)
    } else {
        image.pinned_ref()
    }
}

/// Path of a blob inside the archive.
pub fn blob_path(digest: &str) -> String {
    format!("{BLOB_DIR}/{}", digest.trim_start_matches("sha256:"))
}

/// The digest a blob path names, if it is one.
fn blob_digest(path: &str) -> Option<String> {
    let hex = path.strip_prefix(BLOB_DIR)?.strip_prefix('/')?;
    crate::digest::is_digest(&format!("sha256:{hex}")).then(|| format!("sha256:{hex}"))
}

/// One image in Docker's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEntry {
    /// Path of the config blob.
    #[serde(rename = "Config")]
    pub config: String,
    /// References `docker load` tags the image with.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Vec<String>,
    /// Paths of the layer blobs, base first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

impl DockerEntry {
    /// The config digest (image ID) of this entry.
    pub fn config_digest(&self) -> Option<String> {
        blob_digest(&self.config)
    }
}

/// Sizes of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobSize {
    /// Bytes stored in the archive (as the registry serves it).
    pub size: u64,
    /// Bytes once Docker has unpacked it (uncompressed layer tar; a config's own size).
    pub unpacked: u64,
}

/// `smoker-archive.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sizes {
    /// See [`SIZES_FORMAT`].
    pub format: u32,
    /// Every blob of the archive by digest.
    pub blobs: BTreeMap<String, BlobSize>,
}

/// A blob to write, held in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobSource {
    /// `sha256:…`.
    pub digest: String,
    /// Sizes.
    pub size: BlobSize,
    /// File holding exactly the blob's bytes.
    pub path: PathBuf,
}

/// An image to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// The local reference it is tagged with ([`local_reference`]).
    pub reference: String,
    /// Its config blob.
    pub config: BlobSource,
    /// Its layer blobs, base first.
    pub layers: Vec<BlobSource>,
}

/// The two index files of an archive, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Docker's `manifest.json` entries, sorted by reference.
    pub docker: Vec<DockerEntry>,
    /// Blob sizes.
    pub sizes: Sizes,
}

impl Index {
    /// The index of an archive holding `images`: one entry per image ID (config digest),
    /// tagged with every local reference naming it, sorted by the first reference. When
    /// several platform manifests share a config, the layers of the first by reference are
    /// used (Docker checks them against the same diff IDs either way).
    pub fn of(images: &[ImageSource]) -> Index {
        let mut sorted: Vec<&ImageSource> = images.iter().collect();
        sorted.sort_by(|a, b| a.reference.cmp(&b.reference));
        let mut by_config: BTreeMap<&str, (&ImageSource, BTreeSet<&str>)> = BTreeMap::new();
        for i in sorted {
            by_config
                .entry(i.config.digest.as_str())
                .or_insert_with(|| (i, BTreeSet::new()))
                .1
                .insert(i.reference.as_str());
        }
        let mut entries: Vec<(&ImageSource, BTreeSet<&str>)> = by_config.into_values().collect();
        entries.sort_by(|a, b| a.1.first().cmp(&b.1.first()));
        let mut blobs = BTreeMap::new();
        let mut docker = Vec::new();
        for (img, refs) in entries {
            blobs.insert(img.config.digest.clone(), img.config.size);
            for l in &img.layers {
                blobs.insert(l.digest.clone(), l.size);
            }
            docker.push(DockerEntry {
                config: blob_path(&img.config.digest),
                repo_tags: refs.into_iter().map(str::to_string).collect(),
                layers: img.layers.iter().map(|l| blob_path(&l.digest)).collect(),
            });
        }
        Index {
            docker,
            sizes: Sizes {
                format: SIZES_FORMAT,
                blobs,
            },
        }
    }

    /// Bytes of `manifest.json`.
    pub fn docker_json(&self) -> Vec<u8> {
        json_bytes(&self.docker)
    }

    /// Bytes of `smoker-archive.json`.
    pub fn sizes_json(&self) -> Vec<u8> {
        json_bytes(&self.sizes)
    }

    /// The entry whose config is `config_digest`.
    pub fn image(&self, config_digest: &str) -> Option<&DockerEntry> {
        self.docker
            .iter()
            .find(|e| e.config_digest().as_deref() == Some(config_digest))
    }

    /// Digests of every blob the images with these config digests need (config and layers).
    pub fn blobs_of<'a>(&self, configs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for c in configs {
            if let Some(e) = self.image(c) {
                out.extend(e.config_digest());
                out.extend(e.layers.iter().filter_map(|l| blob_digest(l)));
            }
        }
        out
    }

    /// Stored and unpacked bytes of a set of blobs.
    pub fn bytes_of(&self, blobs: &BTreeSet<String>) -> (u64, u64) {
        blobs
            .iter()
            .filter_map(|d| self.sizes.blobs.get(d))
            .fold((0, 0), |(s, u), b| (s + b.size, u + b.unpacked))
    }
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Canonical: object keys sorted, compact output.
    let mut out = crate::canonical::to_vec(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    crate::bundle::tar_header(kind, mode, 0, size)
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    size: u64,
    data: impl Read,
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, 0o644, size);
    tar.append_data(&mut h, path, data)
}

fn append_dirs<W: Write>(tar: &mut tar::Builder<W>) -> io::Result<()> {
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, dir, io::empty())?;
    }
    Ok(())
}

/// Writes the archive of `images` to `out`, deterministically. Every blob is hashed while it
/// is copied and must match its digest and size. Returns the writer and the index written.
pub fn write_archive<W: Write>(out: W, images: &[ImageSource]) -> Result<(W, Index), ArchiveError> {
    let index = Index::of(images);
    let mut sources: BTreeMap<&str, &BlobSource> = BTreeMap::new();
    for i in images {
        for b in std::iter::once(&i.config).chain(&i.layers) {
            if index.sizes.blobs.contains_key(&b.digest) {
                sources.entry(b.digest.as_str()).or_insert(b);
            }
        }
    }
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let here = Path::new("image archive");
    let docker = index.docker_json();
    append_file(&mut tar, DOCKER_MANIFEST, docker.len() as u64, &docker[..])
        .map_err(io_err(here))?;
    let sizes = index.sizes_json();
    append_file(&mut tar, SIZES_FILE, sizes.len() as u64, &sizes[..]).map_err(io_err(here))?;
    append_dirs(&mut tar).map_err(io_err(here))?;
    for (digest, blob) in sources {
        let file = std::fs::File::open(&blob.path).map_err(io_err(&blob.path))?;
        let mut reader = HashingReader::new(file.take(blob.size.size));
        append_file(&mut tar, &blob_path(digest), blob.size.size, &mut reader)
            .map_err(io_err(&blob.path))?;
        let (found, size) = reader.finish();
        if format!("sha256:{found}") != digest || size != blob.size.size {
            return Err(ArchiveError::BlobMismatch {
                digest: digest.to_string(),
                path: blob.path.clone(),
                found,
                size,
            });
        }
    }
    let out = tar.into_inner().map_err(io_err(here))?;
    Ok((out, index))
}

/// Reads the two index entries at the front of an archive file.
pub fn read_index(path: &Path) -> Result<Index, ArchiveError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut entries = archive.entries().map_err(io_err(path))?;
    let (docker, sizes) = read_index_entries(path, &mut entries)?;
    Ok(Index { docker, sizes })
}

fn format_err(path: &Path, message: impl Into<String>) -> ArchiveError {
    ArchiveError::Format {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn read_index_entries<R: Read>(
    path: &Path,
    entries: &mut tar::Entries<'_, R>,
) -> Result<(Vec<DockerEntry>, Sizes), ArchiveError> {
    let mut read_named = |name: &str| -> Result<Vec<u8>, ArchiveError> {
        let entry = entries
            .next()
            .ok_or_else(|| format_err(path, format!("ends before {name}")))?
            .map_err(io_err(path))?;
        let found = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        if found != name {
            return Err(format_err(
                path,
                format!("expected {name} as the next entry, found {found}"),
            ));
        }
        let mut buf = Vec::new();
        entry
            .take(MAX_INDEX_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(io_err(path))?;
        if buf.len() as u64 > MAX_INDEX_BYTES {
            return Err(format_err(path, format!("{name} is larger than 4 MiB")));
        }
        Ok(buf)
    };
    let docker: Vec<DockerEntry> = serde_json::from_slice(&read_named(DOCKER_MANIFEST)?)
        .map_err(|e| format_err(path, format!("{DOCKER_MANIFEST}: {e}")))?;
    let sizes: Sizes = serde_json::from_slice(&read_named(SIZES_FILE)?)
        .map_err(|e| format_err(path, format!("{SIZES_FILE}: {e}")))?;
    if sizes.format != SIZES_FORMAT {
        return Err(format_err(
            path,
            format!(
                "{SIZES_FILE} has format {}, this installer reads {SIZES_FORMAT}; upgrade smoker-install",
                sizes.format
            ),
        ));
    }
    Ok((docker, sizes))
}

/// One image to stream out of an archive.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// Its config digest (image ID), as the signed manifest says.
    pub config: String,
    /// The local reference to tag it with.
    pub reference: String,
    /// The service that needs it (for messages).
    pub service: String,
}

/// Streams a docker-archive holding only the `wanted` images of the archive at `path` into
/// `out` (e.g. the stdin of `docker load`). Blobs the wanted images do not need are skipped
/// without being read; the tags come from `wanted` (the signed manifest), not from the
/// archive. Returns the number of blob bytes streamed.
pub fn stream_images<W: Write>(
    path: &Path,
    wanted: &[Wanted],
    out: W,
) -> Result<u64, ArchiveError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    stream_from(
        path,
        io::BufReader::with_capacity(256 * 1024, file),
        wanted,
        out,
    )
}

fn stream_from<R: Read + Seek, W: Write>(
    path: &Path,
    input: R,
    wanted: &[Wanted],
    out: W,
) -> Result<u64, ArchiveError> {
    let mut archive = tar::Archive::new(input);
    let mut entries = archive.entries_with_seek().map_err(io_err(path))?;
    let (docker, sizes) = read_index_entries(path, &mut entries)?;
    let index = Index { docker, sizes };
    let held = || {
        let ids: Vec<String> = index
            .docker
            .iter()
            .filter_map(DockerEntry::config_digest)
            .collect();
        if ids.is_empty() {
            "no image".to_string()
        } else {
            ids.join(", ")
        }
    };
    // Docker's index for the wanted images, tagged as the signed manifest says.
    let mut by_config: BTreeMap<&str, (DockerEntry, BTreeSet<String>)> = BTreeMap::new();
    for w in wanted {
        let entry = index
            .image(&w.config)
            .ok_or_else(|| ArchiveError::MissingImage {
                config: w.config.clone(),
                service: w.service.clone(),
                held: held(),
            })?;
        let slot = by_config
            .entry(w.config.as_str())
            .or_insert_with(|| (entry.clone(), BTreeSet::new()));
        slot.1.insert(w.reference.clone());
    }
    for (e, _) in by_config.values() {
        if let Some(bad) = std::iter::once(&e.config)
            .chain(&e.layers)
            .find(|p| blob_digest(p).is_none())
        {
            return Err(format_err(
                path,
                format!("{DOCKER_MANIFEST} names `{bad}`, which is not a blob of the archive"),
            ));
        }
    }
    let docker: Vec<DockerEntry> = by_config
        .values()
        .map(|(e, tags)| DockerEntry {
            config: e.config.clone(),
            repo_tags: tags.iter().cloned().collect(),
            layers: e.layers.clone(),
        })
        .collect();
    let needed = index.blobs_of(by_config.keys().copied());

    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Deterministic);
    let docker_json = json_bytes(&docker);
    append_file(
        &mut tar,
        DOCKER_MANIFEST,
        docker_json.len() as u64,
        &docker_json[..],
    )
    .map_err(io_err(path))?;
    append_dirs(&mut tar).map_err(io_err(path))?;
    let mut sent = BTreeSet::new();
    let mut bytes = 0u64;
    for entry in entries {
        let entry = entry.map_err(io_err(path))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some(digest) = blob_digest(&name) else {
            continue;
        };
        if !needed.contains(&digest) || sent.contains(&digest) {
            continue;
        }
        let size = entry.size();
        append_file(&mut tar, &name, size, entry).map_err(io_err(path))?;
        bytes += size;
        sent.insert(digest);
    }
    for (config, (_, _)) in &by_config {
        for d in index.blobs_of([*config]) {
            if !sent.contains(&d) {
                return Err(ArchiveError::MissingBlob {
                    path: path.to_path_buf(),
                    digest: d,
                    config: config.to_string(),
                });
            }
        }
    }
    tar.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err(path))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(dir: &Path, bytes: &[u8], unpacked: u64) -> BlobSource {
        let digest = format!("sha256:{}", crate::digest::sha256_hex(bytes));
        let path = dir.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&path, bytes).expect("write blob");
        BlobSource {
            digest,
            size: BlobSize {
                size: bytes.len() as u64,
                unpacked,
            },
            path,
        }
    }

    #[test]
    fn local_references_drop_the_registry_host_and_keep_the_digest() {
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(
            local_reference("127.0.0.1:5000/team/app", d),
            format!("smoker.invalid/team/app:sha256-{}", &d[7..])
        );
        assert_eq!(
            local_reference("mongo", d),
            format!("smoker.invalid/mongo:sha256-{}", &d[7..])
        );
        assert_eq!(
            local_reference("ghcr.io/smart-smoker/backend", d),
            format!("smoker.invalid/smart-smoker/backend:sha256-{}", &d[7..])
        );
        assert_eq!(
            local_reference("library/redis", d),
            format!("smoker.invalid/library/redis:sha256-{}", &d[7..])
        );
    }

    #[test]
    fn archives_are_deterministic_store_shared_blobs_once_and_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = blob(dir.path(), b"base layer", 100);
        let top = blob(dir.path(), b"top layer", 50);
        let c1 = blob(dir.path(), b"{\"config\":1}", 12);
        let c2 = blob(dir.path(), b"{\"config\":2}", 12);
        let images = vec![
            ImageSource {
                reference: "smoker.invalid/b:sha256-2".into(),
                config: c2.clone(),
                layers: vec![base.clone(), top.clone()],
            },
            ImageSource {
                reference: "smoker.invalid/a:sha256-1".into(),
                config: c1.clone(),
                layers: vec![base.clone()],
            },
        ];
        let (one, index) = write_archive(Vec::new(), &images).expect("write");
        let mut reversed = images.clone();
        reversed.reverse();
        let (two, _) = write_archive(Vec::new(), &reversed).expect("write");
        assert_eq!(one, two, "same images, same bytes");
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(&one[..]);
        for e in ar.entries().expect("entries") {
            let e = e.expect("entry");
            assert_eq!(e.header().mtime().expect("mtime"), 0);
            assert_eq!(e.header().uid().expect("uid"), 0);
            names.push(String::from_utf8_lossy(&e.path_bytes()).into_owned());
        }
        assert_eq!(names[0], DOCKER_MANIFEST);
        assert_eq!(names[1], SIZES_FILE);
        let blobs: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("blobs/sha256/"))
            .collect();
        assert_eq!(
            blobs.len(),
            1 + 4,
            "directory + four distinct blobs: {names:?}"
        );
        let mut sorted = blobs.clone();
        sorted.sort();
        assert_eq!(blobs, sorted);
        assert_eq!(index.docker[0].repo_tags, ["smoker.invalid/a:sha256-1"]);
        let path = dir.path().join("archive.tar");
        std::fs::write(&path, &one).expect("write archive");
        assert_eq!(read_index(&path).expect("index"), index);
        let (stored, unpacked) = index.bytes_of(&index.blobs_of([c2.digest.as_str()]));
        assert_eq!(stored, c2.size.size + base.size.size + top.size.size);
        assert_eq!(unpacked, 12 + 100 + 50);

        // Only image a: its config and the base layer, tagged as asked.
        let wanted = [Wanted {
            config: c1.digest.clone(),
            reference: "smoker.invalid/x:sha256-9".into(),
            service: "a".into(),
        }];
        let mut out = Vec::new();
        let sent = stream_images(&path, &wanted, &mut out).expect("stream");
        assert_eq!(sent, c1.size.size + base.size.size);
        let mut ar = tar::Archive::new(&out[..]);
        let mut got = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            if name == DOCKER_MANIFEST {
                let mut s = String::new();
                e.read_to_string(&mut s).expect("read");
                assert!(s.contains("smoker.invalid/x:sha256-9"), "{s}");
                assert!(!s.contains(&top.digest[7..]), "{s}");
            }
            got.push(name);
        }
        assert!(got.contains(&blob_path(&base.digest)));
        assert!(!got.contains(&blob_path(&top.digest)));

        // An image the archive does not hold.
        let missing = [Wanted {
            config: top.digest.clone(),
            reference: "smoker.invalid/y:sha256-8".into(),
            service: "web".into(),
        }];
        let err = stream_images(&path, &missing, Vec::new()).expect_err("missing");
        assert!(
            err.to_string().contains("holds no image") && err.to_string().contains("`web`"),
            "{err}"
        );
    }

    #[test]
    fn one_image_under_two_references_is_one_entry_with_both_tags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layer = blob(dir.path(), b"layer", 5);
        let other_layer = blob(dir.path(), b"same content, other compression", 5);
        let config = blob(dir.path(), b"{}", 2);
        let images = vec![
            ImageSource {
                reference: "smoker.invalid/z:sha256-2".into(),
                config: config.clone(),
                layers: vec![other_layer.clone()],
            },
            ImageSource {
                reference: "smoker.invalid/a:sha256-1".into(),
                config: config.clone(),
                layers: vec![layer.clone()],
            },
        ];
        let (bytes, index) = write_archive(Vec::new(), &images).expect("write");
        assert_eq!(index.docker.len(), 1);
        assert_eq!(
            index.docker[0].repo_tags,
            ["smoker.invalid/a:sha256-1", "smoker.invalid/z:sha256-2"]
        );
        assert_eq!(index.docker[0].layers, [blob_path(&layer.digest)]);
        let mut ar = tar::Archive::new(&bytes[..]);
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8_lossy(&e.expect("entry").path_bytes()).into_owned())
            .collect();
        assert!(
            !names.contains(&blob_path(&other_layer.digest)),
            "{names:?}"
        );
    }

    #[test]
    fn a_blob_that_changed_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = blob(dir.path(), b"config", 6);
        std::fs::write(&c.path, b"CONFIG").expect("corrupt");
        c.size.unpacked = 6;
        let images = [ImageSource {
            reference: "smoker.invalid/a:sha256-1".into(),
            config: c,
            layers: vec![],
        }];
        let err = write_archive(Vec::new(), &images).expect_err("mismatch");
        assert!(matches!(err, ArchiveError::BlobMismatch { .. }), "{err}");
    }
}
