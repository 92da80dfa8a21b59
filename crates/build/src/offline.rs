//! `release --offline`: the image archive an offline bundle carries.
//!
//! Every image the bundle's services run (for its one architecture) is fetched **by the digest
//! the lock pins** — platform manifest, config, layers — into a blob cache keyed by digest
//! (`<cache>/sha256/<hex>`), so a second release fetches nothing and every byte is checked
//! against its digest. Each layer is decompressed once to check it against the image config's
//! diff IDs (the same check `docker load` does, but at release time, not on the Pi) and to
//! learn its unpacked size (recorded for the installer's disk preflight, cached next to the
//! blob). The archive itself ([`smoker_format::image_archive`]) is a pure function of those blobs, so
//! it is cached too (`<cache>/archives/<key>.tar`, checked against its recorded sha256 before
//! reuse).

use crate::registry::{Descriptor, Fit, IMAGE_MANIFEST, ImageConfig, Registries, fit};
use crate::release::OfflineImages;
use anyhow::{Context as _, Result, bail};
use smoker_format::image_archive::{self, BlobSize, BlobSource, ImageSource, Index};
use smoker_format::manifest::{Arch, Image};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

/// Layer media types `docker load` (Docker 20.10 and later) unpacks.
const GZIP_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.v1.tar+gzip",
];
/// Uncompressed layers.
const TAR_LAYERS: [&str; 2] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// A byte count for people.
fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// The blob cache.
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache under `root` (created on first use).
    pub fn new(root: &Path) -> Cache {
        Cache {
            root: root.to_path_buf(),
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.root
            .join("sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn unpacked_note(&self, digest: &str) -> PathBuf {
        let mut p = self.blob(digest).into_os_string();
        p.push(".unpacked");
        PathBuf::from(p)
    }

    /// Makes sure the blob is in the cache (fetching it from `repo` if not); returns its path.
    fn ensure(
        &self,
        reg: &Registries,
        repo: &oci_client::Reference,
        d: &Descriptor,
    ) -> Result<PathBuf> {
        let path = self.blob(&d.digest);
        let present = std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == d.size);
        if !present {
            eprintln!(
                "fetching {} ({}) from {}/{}",
                d.digest,
                human(d.size),
                repo.registry(),
                repo.repository()
            );
            reg.blob_to_file(repo, d, &path)?;
        }
        Ok(path)
    }
}

/// The uncompressed digest and size of a layer blob (cached next to the blob).
fn unpack_facts(cache: &Cache, d: &Descriptor, path: &Path) -> Result<(String, u64)> {
    let note = cache.unpacked_note(&d.digest);
    if let Ok(text) = std::fs::read_to_string(&note)
        && let Some((diff_id, size)) = text.trim().split_once(' ')
        && let Ok(size) = size.parse::<u64>()
        && smoker_format::digest::is_digest(diff_id)
    {
        return Ok((diff_id.to_string(), size));
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hw = smoker_format::digest::HashingWriter::new(std::io::sink());
    if GZIP_LAYERS.contains(&d.media_type.as_str()) {
        let mut gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        std::io::copy(&mut gz, &mut hw)
            .with_context(|| format!("layer {} is not valid gzip", d.digest))?;
    } else {
        let mut f = std::io::BufReader::new(file);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            std::io::Write::write_all(&mut hw, &buf[..n])?;
        }
    }
    let (hex, size) = hw.finish();
    let diff_id = format!("sha256:{hex}");
    crate::release::write_atomic(&note, format!("{diff_id} {size}\n").as_bytes())?;
    Ok((diff_id, size))
}

/// Fetches one platform image by digest and describes it for the archive.
fn image_source(
    reg: &Registries,
    cache: &Cache,
    arch: Arch,
    img: &Image,
) -> Result<(ImageSource, String)> {
    let what = format!(
        "image `{}` of service `{}` ({arch})",
        img.original, img.service
    );
    let r = crate::registry::parse_reference(&format!("{}@{}", img.repository, img.digest))?;
    let m = reg
        .manifest(&r, &IMAGE_MANIFEST)
        .with_context(|| format!("fetching the manifest {} of {what}", img.digest))?;
    if m.doc.is_index() {
        bail!(
            "{what}: the lock pins {}, which is an index, not a platform manifest; run `cargo xtask lock`",
            img.digest
        );
    }
    let Some(config) = m.doc.config.clone() else {
        bail!("{what}: manifest {} has no config", img.digest);
    };
    if let Some(locked) = &img.config_digest
        && *locked != config.digest
    {
        bail!(
            "{what}: the lock records image ID {locked}, but manifest {} names config {}; run `cargo xtask lock` again",
            img.digest,
            config.digest
        );
    }
    let config_path = cache.ensure(reg, &r, &config)?;
    let config_bytes = std::fs::read(&config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let parsed: ImageConfig = serde_json::from_slice(&config_bytes)
        .with_context(|| format!("{what}: config {} is not an image config", config.digest))?;
    if fit(arch, &parsed.platform()) == Fit::No {
        bail!(
            "{what}: the image's config says {}, not {}; run `cargo xtask lock` again",
            parsed.platform(),
            crate::registry::platform_name(arch)
        );
    }
    let layers = m.doc.layers.clone().unwrap_or_default();
    if layers.len() != parsed.rootfs.diff_ids.len() {
        bail!(
            "{what}: manifest {} lists {} layers but its config lists {} diff IDs",
            img.digest,
            layers.len(),
            parsed.rootfs.diff_ids.len()
        );
    }
    let mut sources = Vec::new();
    for (layer, diff_id) in layers.iter().zip(&parsed.rootfs.diff_ids) {
        let mt = layer.media_type.as_str();
        if !GZIP_LAYERS.contains(&mt) && !TAR_LAYERS.contains(&mt) {
            bail!(
                "{what}: layer {} has media type {mt}, which Docker 20.10 and 24 cannot load from an archive (zstd and foreign layers are not supported); push the image with gzip layers",
                layer.digest
            );
        }
        let path = cache.ensure(reg, &r, layer)?;
        let (found, unpacked) = unpack_facts(cache, layer, &path)?;
        if found != *diff_id {
            bail!(
                "{what}: layer {} unpacks to {found}, but the image config says {diff_id}; the registry serves broken content",
                layer.digest
            );
        }
        sources.push(BlobSource {
            digest: layer.digest.clone(),
            size: BlobSize {
                size: layer.size,
                unpacked,
            },
            path,
        });
    }
    Ok((
        ImageSource {
            reference: image_archive::local_reference(&img.repository, &img.digest),
            config: BlobSource {
                digest: config.digest.clone(),
                size: BlobSize {
                    size: config.size,
                    unpacked: config.size,
                },
                path: config_path,
            },
            layers: sources,
        },
        config.digest,
    ))
}

/// Builds (or reuses from the cache) the image archive for `images` of one architecture.
pub fn build(
    reg: &Registries,
    cache_dir: &Path,
    arch: Arch,
    images: &[Image],
) -> Result<OfflineImages> {
    let cache = Cache::new(cache_dir);
    let mut sources = Vec::new();
    let mut config_digests = BTreeMap::new();
    let mut done = BTreeMap::new();
    for img in images {
        let key = (img.repository.clone(), img.digest.clone());
        if done.contains_key(&key) {
            continue;
        }
        let (src, config) = image_source(reg, &cache, arch, img)?;
        config_digests.insert(img.digest.clone(), config);
        done.insert(key, ());
        sources.push(src);
    }
    let index = Index::of(&sources);
    let mut key_bytes = index.docker_json();
    key_bytes.extend(index.sizes_json());
    let key = smoker_format::digest::sha256_hex(&key_bytes);
    let dir = cache_dir.join("archives");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{key}.tar"));
    let sum_path = dir.join(format!("{key}.tar.sha256"));
    if let (Ok(recorded), true) = (std::fs::read_to_string(&sum_path), path.is_file()) {
        let (sha, _) = smoker_format::digest::sha256_file(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if sha == recorded.trim() {
            return Ok(OfflineImages {
                archive: path,
                config_digests,
            });
        }
        eprintln!(
            "cached archive {} is damaged; building it again",
            path.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(&dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let out = smoker_format::digest::HashingWriter::new(std::io::BufWriter::with_capacity(
        1024 * 1024,
        tmp.as_file(),
    ));
    let (mut out, _) = image_archive::write_archive(out, &sources)?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", tmp.path().display()))?;
    let (sha, bytes) = out.finish();
    tmp.as_file()
        .sync_all()
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(&path)
        .map_err(|e| anyhow::anyhow!("storing {}: {}", path.display(), e.error))?;
    crate::release::write_atomic(&sum_path, format!("{sha}\n").as_bytes())?;
    eprintln!(
        "image archive for {arch}: {} image(s), {}",
        sources.len(),
        human(bytes)
    );
    Ok(OfflineImages {
        archive: path,
        config_digests,
    })
}
