//! The images step of an apply: every image of the bundle present under the reference compose
//! runs, with exactly the image ID the signed manifest names.
//!
//! - **Online bundles** name `repository@digest`; an image that is not present is pulled by that
//!   digest (`docker pull`), so a moved tag can never change what runs.
//! - **Offline bundles** carry their images in a docker-archive ([`smoker_format::image_archive`]).
//!   Images already present (by image ID = config digest) are only tagged with their local
//!   reference; the others are streamed from the store entry into `docker load` — only the
//!   blobs they need, never the whole file in memory — after a disk preflight.
//!
//! Either way the image ID behind the reference must equal the manifest's `config_digest`
//! before anything starts; after `compose up` the health gate checks every running container's
//! image ID again ([`crate::health`]).
//!
//! Loaded images have no registry digest (a known Docker limitation), so offline bundles pin
//! services to a deterministic local reference (`smoker.invalid/…:sha256-…`, see
//! [`smoker_format::image_archive::local_reference`]) with `pull_policy: never`. Compose v1
//! (`docker-compose` 1.29) ignores `pull_policy`; nothing pulls anyway, because every image is
//! present before `up`, and a local reference could only ever be "pulled" from a domain that
//! never resolves.

use crate::error::{Error, Result};
use crate::progress::{MeteredWriter, Progress};
use crate::runtime::Runtime;
use crate::store::StoreEntry;
use serde::Serialize;
use smoker_format::image_archive::{self, Wanted, local_reference};
use smoker_format::manifest::Image;
use std::collections::BTreeMap;
use std::path::Path;

/// Free space kept in reserve under Docker's data root when loading images.
pub const DISK_MARGIN_BYTES: u64 = crate::preflight::MARGIN_BYTES;

/// What the images step did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImagesReport {
    /// References pulled by digest.
    pub pulled: Vec<String>,
    /// Local references loaded from the bundle.
    pub loaded: Vec<String>,
    /// References that were already present with the right image ID.
    pub present: Vec<String>,
    /// Local references added to images already present under another name.
    pub tagged: Vec<String>,
    /// Bytes streamed into `docker load`.
    pub loaded_bytes: u64,
}

/// Makes every image of `entry` present with the image ID its manifest names: pulls online
/// images by digest, loads offline images from the store entry (only those missing).
pub fn ensure_images(
    runtime: &Runtime,
    entry: &StoreEntry,
    progress: &dyn Progress,
) -> Result<ImagesReport> {
    let mut report = ImagesReport::default();
    let m = &entry.manifest;
    let known = present_ids(runtime, m);
    let id_now = |r: &str| match known.get(r) {
        Some(id) => Some(id.clone()),
        None => runtime.image_id(r),
    };
    for img in m.images.iter().filter(|i| i.archive.is_none()) {
        let r = img.pinned_ref();
        let got = match id_now(&r) {
            Some(id) => {
                report.present.push(r.clone());
                Some(id)
            }
            None => {
                progress.info(&format!("pulling {r}"));
                runtime.pull(&r)?;
                report.pulled.push(r.clone());
                runtime.image_id(&r)
            }
        };
        if let (Some(want), Some(got)) = (&img.config_digest, got)
            && &got != want
        {
            return Err(Error::Runtime(format!(
                "image {r} of service `{}` has id {got}, but the signed manifest says {want}; refusing to run it",
                img.service
            )));
        }
    }

    // Offline images, grouped by the archive that carries them.
    let mut missing: BTreeMap<&str, Vec<Wanted>> = BTreeMap::new();
    for img in m.images.iter().filter(|i| i.archive.is_some()) {
        let want = offline_id(img)?;
        let local = local_reference(&img.repository, &img.digest);
        match id_now(&local) {
            Some(id) if id == want => {
                report.present.push(local);
                continue;
            }
            _ => {}
        }
        if runtime.has_image(want) {
            // Present under another name (pulled earlier, or loaded by another bundle).
            runtime.tag(want, &local)?;
            check_id(runtime, &local, want, &img.service)?;
            report.tagged.push(local);
            continue;
        }
        let archive = img
            .archive
            .as_deref()
            .unwrap_or(image_archive::ARCHIVE_PATH);
        let list = missing.entry(archive).or_default();
        if !list.iter().any(|w| w.reference == local) {
            list.push(Wanted {
                config: want.to_string(),
                reference: local,
                service: img.service.clone(),
            });
        }
    }
    for (archive, wanted) in &missing {
        let path = entry.path.join(archive);
        let loaded = load(runtime, &entry.path, &path, wanted, progress)?;
        report.loaded_bytes += loaded;
        report
            .loaded
            .extend(wanted.iter().map(|w| w.reference.clone()));
    }
    if !report.present.is_empty() || !report.tagged.is_empty() {
        progress.info(&format!(
            "{} image(s) already present with the signed image ID",
            report.present.len() + report.tagged.len()
        ));
    }
    Ok(report)
}

/// Every reference of the manifest (pinned for online images, local for offline ones)
/// with the image ID it has now, from one `docker image inspect` of them all. Empty when any
/// is missing (the images step then asks per reference, and pulls or loads what is missing).
fn present_ids(
    runtime: &Runtime,
    m: &smoker_format::manifest::Manifest,
) -> BTreeMap<String, String> {
    let mut refs: Vec<String> = m
        .images
        .iter()
        .map(|img| match img.archive {
            None => img.pinned_ref(),
            Some(_) => local_reference(&img.repository, &img.digest),
        })
        .collect();
    refs.sort();
    refs.dedup();
    match runtime.image_ids(&refs) {
        Some(ids) => refs.into_iter().zip(ids).collect(),
        None => BTreeMap::new(),
    }
}

/// The image ID an offline image must have.
fn offline_id(img: &Image) -> Result<&str> {
    img.config_digest.as_deref().ok_or_else(|| {
        Error::Runtime(format!(
            "bundle rejected: the image of service `{}` is carried offline but the manifest names no image ID (config digest) to check it against; rebuild the bundle with `cargo xtask release --offline`",
            img.service
        ))
    })
}

/// Fails unless `reference` resolves to image ID `want`.
fn check_id(runtime: &Runtime, reference: &str, want: &str, service: &str) -> Result<()> {
    match runtime.image_id(reference) {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(Error::Runtime(format!(
            "bundle rejected: image {reference} of service `{service}` has ID {got}, but the signed manifest says {want}; refusing to run it"
        ))),
        None => Err(Error::Runtime(format!(
            "image {reference} of service `{service}` is not present after loading; see `docker images`"
        ))),
    }
}

/// What loading some images from an archive needs under Docker's data root: `docker load`
/// copies the stream into a temporary directory there first (`stored`), then unpacks each
/// layer (`unpacked`, an upper bound: layers already present are not unpacked again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskNeed {
    /// Bytes streamed (compressed blobs).
    pub stored: u64,
    /// Bytes once unpacked.
    pub unpacked: u64,
}

impl DiskNeed {
    /// Total bytes needed, without the margin.
    pub fn total(&self) -> u64 {
        self.stored.saturating_add(self.unpacked)
    }
}

/// The disk preflight for loading: refuses when the free space under Docker's data root is
/// below `need` plus [`DISK_MARGIN_BYTES`], with the numbers in the message. When the store is
/// on another filesystem it is checked for the margin too (it already holds the bundle).
pub fn check_disk(runtime: &Runtime, store: &Path, need: DiskNeed) -> Result<()> {
    let mut problems = Vec::new();
    let Some(root) = runtime.data_root() else {
        return Err(Error::Preflight(vec![
            "cannot read Docker's data root (`docker info`) to check its free space before loading images".into(),
        ]));
    };
    match crate::fsutil::free_bytes(&root) {
        Some(free) => problems.extend(docker_space_problem(free, &root, need)),
        None => problems.push(format!(
            "disk (docker): cannot read the free space of Docker's data root {}",
            root.display()
        )),
    }
    if !same_filesystem(store, &root)
        && let Some(free) = crate::fsutil::free_bytes(store)
        && free < DISK_MARGIN_BYTES
    {
        problems.push(format!(
            "disk (store): only {} MiB free under {}; need {} MiB margin",
            free >> 20,
            store.display(),
            DISK_MARGIN_BYTES >> 20
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Preflight(problems))
    }
}

/// The refusal when `free` bytes under Docker's data root `root` are fewer than `need` plus
/// [`DISK_MARGIN_BYTES`], with every number in it; `None` when there is room.
pub fn docker_space_problem(free: u64, root: &Path, need: DiskNeed) -> Option<String> {
    let mib = |b: u64| b.div_ceil(1 << 20);
    (free < need.total().saturating_add(DISK_MARGIN_BYTES)).then(|| {
        format!(
            "disk (docker): only {} MiB free under Docker's data root {}; loading the bundle's images needs {} MiB ({} MiB copied while loading + {} MiB unpacked) + {} MiB margin — free space (`smoker-install gc`, `docker image prune`) and apply again",
            free >> 20,
            root.display(),
            mib(need.total()),
            mib(need.stored),
            mib(need.unpacked),
            DISK_MARGIN_BYTES >> 20
        )
    })
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => true,
    }
}

/// Loads the `wanted` images of the archive at `path` (a file of the store entry at `entry`).
fn load(
    runtime: &Runtime,
    entry: &Path,
    path: &Path,
    wanted: &[Wanted],
    progress: &dyn Progress,
) -> Result<u64> {
    let archive_err = |e: image_archive::ArchiveError| match e {
        image_archive::ArchiveError::MissingImage { .. } => {
            Error::Runtime(format!("bundle rejected: {e}"))
        }
        other => Error::Runtime(other.to_string()),
    };
    let index = image_archive::read_index(path).map_err(archive_err)?;
    for w in wanted {
        if index.image(&w.config).is_none() {
            return Err(archive_err(image_archive::ArchiveError::MissingImage {
                config: w.config.clone(),
                service: w.service.clone(),
                held: index
                    .docker
                    .iter()
                    .filter_map(image_archive::DockerEntry::config_digest)
                    .collect::<Vec<_>>()
                    .join(", "),
            }));
        }
    }
    let blobs = index.blobs_of(wanted.iter().map(|w| w.config.as_str()));
    let (stored, unpacked) = index.bytes_of(&blobs);
    let store = entry.parent().unwrap_or(entry);
    check_disk(runtime, store, DiskNeed { stored, unpacked })?;
    progress.info(&format!(
        "loading {} image(s) from the bundle ({} MiB): {}",
        wanted.len(),
        stored.div_ceil(1 << 20),
        wanted
            .iter()
            .map(|w| w.reference.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let (bytes, _lines) = runtime.load(|stdin| {
        let meter = progress.bytes("loading into Docker", Some(stored));
        image_archive::stream_images(path, wanted, MeteredWriter::new(stdin, meter))
    })?;
    for w in wanted {
        if let Err(e) = check_id(runtime, &w.reference, &w.config, &w.service) {
            // Never leave a local reference pointing at the wrong image.
            runtime.untag(&w.reference);
            return Err(e);
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_need_adds_the_copy_and_the_unpacked_layers() {
        let n = DiskNeed {
            stored: 10,
            unpacked: 32,
        };
        assert_eq!(n.total(), 42);
    }

    #[test]
    fn loading_is_refused_below_need_plus_margin_with_the_numbers() {
        const MIB: u64 = 1 << 20;
        let need = DiskNeed {
            stored: 300 * MIB,
            unpacked: 500 * MIB,
        };
        let root = Path::new("/var/lib/docker");
        let enough = 800 * MIB + DISK_MARGIN_BYTES;
        assert_eq!(docker_space_problem(enough, root, need), None);
        let msg = docker_space_problem(enough - 1, root, need).expect("refused");
        assert!(
            msg.contains(&format!("only {} MiB free", (enough - 1) >> 20))
                && msg.contains("/var/lib/docker")
                && msg.contains("needs 800 MiB (300 MiB copied while loading + 500 MiB unpacked)")
                && msg.contains(&format!("+ {} MiB margin", DISK_MARGIN_BYTES >> 20)),
            "{msg}"
        );
    }
}
