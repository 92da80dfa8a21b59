//! `smoker-install apply --usb`: install the right bundle from a USB stick, with no network.
//!
//! The media roots (`/media` and `/mnt` by default, or `--media-root`) are searched for
//! `*.tar.zst` files (a few directory levels deep, skipping hidden directories such as
//! `.Trash-1000`, never following directory links). Each one is judged by its signed manifest
//! only — cheap, and the signature is checked against the trusted keys — and skipped, with the
//! reason said, when it is not a bundle signed by a trusted key, when it is for another
//! architecture, another profile or another environment than this host's, or when it carries
//! no images and needs some this host does not have (it would need a registry).
//!
//! The remaining bundles are ordered newest first (semver, then build time) and applied in
//! that order until one passes full verification: a bundle whose copy on the stick is
//! truncated or corrupt is rejected by the verifier before anything is installed, said, and the
//! next newest is tried.
//!
//! The operator's intent wins over a stick left plugged in (udev replays "add" for present
//! devices at every boot):
//! - **Held back after a rollback.** While the profile serves a generation older than a good
//!   one it was rolled back from, a bundle on the media that is that rolled-back-from bundle
//!   (same signed manifest digest), or any version not newer than it, is skipped with the
//!   reason — until a newer version appears on the media or `--force` is given.
//! - **Unchanged sticks are cheap.** A bundle whose signed manifest has the digest of the
//!   generation serving now (and good) is recognised as "already current" from its manifest
//!   alone: the payload is not read or verified again. This is safe because the digest is of
//!   the *signed* manifest, which lists the digest of every payload file: the payload installed
//!   under it was verified when it was stored, and nothing of the file on the media is used. A
//!   file whose manifest differs in a single byte has another digest and takes the full path.

use crate::apply::{self, Options, Outcome};
use crate::error::{Error, Result};
use crate::layout::Layout;
use crate::profile::{Generation, Profile, Status};
use crate::progress::Progress;
use crate::runtime::Runtime;
use serde::Serialize;
use smoker_format::manifest::Manifest;
use std::path::{Path, PathBuf};

/// Where removable media are mounted when `--media-root` is not given.
pub const DEFAULT_MEDIA_ROOTS: [&str; 2] = ["/media", "/mnt"];
/// How deep below a media root bundles are looked for (e.g. `/media/pi/STICK/bundles/prod/`).
pub const MAX_DEPTH: usize = 6;
/// Most directory entries looked at below the media roots.
const MAX_ENTRIES: usize = 100_000;
/// Most bundle files judged (each costs an open and a signature check): a stick holding
/// thousands of stubs is not read to the end.
pub const MAX_BUNDLE_FILES: usize = 256;

/// A bundle file that was not chosen, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why it was not chosen.
    pub reason: String,
}

/// A bundle that may be applied on this host.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The file.
    pub path: PathBuf,
    /// Its signed manifest.
    pub manifest: Manifest,
    /// sha256 of the signed manifest's bytes (what a generation records as `manifest_sha256`).
    pub manifest_sha256: String,
}

/// What the media hold for this host.
#[derive(Debug, Clone)]
pub struct Scan {
    /// The roots searched.
    pub roots: Vec<PathBuf>,
    /// Usable bundles, best first.
    pub usable: Vec<Candidate>,
    /// Bundle files ruled out, with the reason.
    pub skipped: Vec<Skipped>,
}

/// The media roots to search: `given`, or [`DEFAULT_MEDIA_ROOTS`].
pub fn media_roots(given: &[PathBuf]) -> Vec<PathBuf> {
    if given.is_empty() {
        DEFAULT_MEDIA_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        given.to_vec()
    }
}

/// What a search of the media found.
#[derive(Debug, Default)]
pub struct Found {
    /// `*.tar.zst` regular files, sorted, at most [`MAX_BUNDLE_FILES`].
    pub files: Vec<PathBuf>,
    /// Bundle-named entries that are not regular files (links, FIFOs, devices, directories),
    /// and files beyond the budget.
    pub skipped: Vec<Skipped>,
}

/// Every `*.tar.zst` regular file below `roots` (links never followed, neither directories nor
/// files), sorted; other entries with a bundle's name are reported as skipped.
pub fn find_bundle_files(roots: &[PathBuf]) -> Found {
    let mut found = Found::default();
    let mut seen = 0usize;
    for root in roots {
        walk(root, 0, &mut found, &mut seen);
    }
    found.files.sort();
    found.files.dedup();
    if found.files.len() > MAX_BUNDLE_FILES {
        for path in found.files.split_off(MAX_BUNDLE_FILES) {
            found.skipped.push(Skipped {
                reason: format!(
                    "not examined: more than {MAX_BUNDLE_FILES} bundle files on the media (the first {MAX_BUNDLE_FILES} by name were)"
                ),
                path,
            });
        }
    }
    found
}

fn walk(dir: &Path, depth: usize, found: &mut Found, seen: &mut usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.filter_map(|e| e.ok()) {
        *seen += 1;
        if *seen > MAX_ENTRIES {
            return;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        // The entry's own type: a symbolic link is a link here, whatever it points at.
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                walk(&path, depth + 1, found, seen);
            }
        } else if name.ends_with(".tar.zst") {
            if kind.is_file() {
                found.files.push(path);
            } else {
                let what = if kind.is_symlink() {
                    "a symbolic link (links on removable media are never followed)"
                } else {
                    "not a regular file"
                };
                found.skipped.push(Skipped {
                    path,
                    reason: what.to_string(),
                });
            }
        }
    }
}

/// Reads and checks the signed manifest of a bundle on the media: opened without following a
/// link and only if it is a regular file.
fn peek(path: &Path, opts: &Options) -> Result<(Manifest, String)> {
    let file = crate::fsutil::open_regular(path, false)?;
    Ok(smoker_format::bundle::read::peek_signed_manifest_from(
        file, &opts.keys,
    )?)
}

/// Looks at every bundle below `roots` and sorts out the ones this host could apply.
pub fn scan(layout: &Layout, roots: &[PathBuf], opts: &Options) -> Result<Scan> {
    let Found { files, mut skipped } = find_bundle_files(roots);
    let mut usable = Vec::new();
    let installed = layout.profile_names();
    let host_arch = crate::policy::host_arch();
    let runtime = Runtime::detect().ok();
    for path in files {
        let skip = |reason: String| Skipped {
            path: path.clone(),
            reason,
        };
        let (m, manifest_sha256) = match peek(&path, opts) {
            Ok(m) => m,
            Err(e) => {
                skipped.push(skip(format!("not usable: {e}")));
                continue;
            }
        };
        let what = format!("{} {} {}/{}", m.name, m.version, m.arch, m.environment);
        if let Some(h) = host_arch
            && m.arch != h
        {
            skipped.push(skip(format!(
                "{what}: built for {}, this host is {h}",
                m.arch
            )));
            continue;
        }
        if !installed.is_empty() && !installed.contains(&m.name) {
            skipped.push(skip(format!(
                "{what}: for profile `{}`, this host runs {}",
                m.name,
                installed
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        }
        if let Some((env, from)) = crate::policy::host_environment(layout, &opts.host, &m.name)
            && env != m.environment
            && !opts.allow_env_change
        {
            skipped.push(skip(format!(
                "{what}: for environment `{}`, this host is `{env}` ({from})",
                m.environment
            )));
            continue;
        }
        if let Some(rt) = &runtime
            && let Some(img) = m
                .images
                .iter()
                .find(|i| i.archive.is_none() && !rt.has_image(&i.pinned_ref()))
        {
            skipped.push(skip(format!(
                "{what}: carries no images and needs {} (service `{}`), which is not on this host — it would need a registry; put an offline bundle (`cargo xtask release --offline`) on the stick",
                img.pinned_ref(),
                img.service
            )));
            continue;
        }
        usable.push(Candidate {
            path,
            manifest: m,
            manifest_sha256,
        });
    }
    usable.sort_by(|a, b| {
        let va = semver::Version::parse(&a.manifest.version).ok();
        let vb = semver::Version::parse(&b.manifest.version).ok();
        vb.cmp(&va)
            .then(b.manifest.created.cmp(&a.manifest.created))
            .then(a.path.cmp(&b.path))
    });
    Ok(Scan {
        roots: roots.to_vec(),
        usable,
        skipped,
    })
}

fn list_roots(roots: &[PathBuf]) -> String {
    roots
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The generation serving now, when it is good and was installed from a bundle whose signed
/// manifest has the digest `manifest_sha256`.
pub fn serving_same<'a>(
    generations: &'a [Generation],
    current: Option<u32>,
    manifest_sha256: &str,
) -> Option<&'a Generation> {
    let cur = current?;
    generations
        .iter()
        .find(|g| g.number == cur)
        .filter(|g| g.status == Status::Good && g.manifest_sha256 == manifest_sha256)
}

/// Why a bundle (`version`, signed manifest digest `manifest_sha256`) is not applied from the
/// media: the profile serves an older generation than a good one the operator rolled back
/// from, and the bundle is that one or not newer than it. `None`: nothing holds it back.
pub fn held_back(
    generations: &[Generation],
    current: Option<u32>,
    version: &str,
    manifest_sha256: &str,
) -> Option<String> {
    let cur = current?;
    // A good generation newer than the one serving: only a rollback leaves one behind (a failed
    // apply marks its generation failed).
    let left: Vec<&Generation> = generations
        .iter()
        .filter(|g| g.status == Status::Good && g.number > cur)
        .collect();
    let how = "it is not applied from removable media until a newer version is there, or with `smoker-install apply --usb --force`";
    if let Some(g) = left.iter().find(|g| g.manifest_sha256 == manifest_sha256) {
        return Some(format!(
            "held back: generation {} ran this very bundle ({}) and was rolled back from to generation {cur}; {how}",
            g.number, g.version
        ));
    }
    let parsed = semver::Version::parse(version).ok();
    let newest = left
        .iter()
        .filter_map(|g| Some((semver::Version::parse(&g.version).ok()?, *g)))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.number.cmp(&b.1.number)));
    let blocking = match (&parsed, &newest) {
        (Some(v), Some((newest_v, g))) if v <= newest_v => Some(*g),
        // Versions that are not semver: only the same version string holds a bundle back.
        _ => left.iter().find(|g| g.version == version).copied(),
    };
    blocking.map(|g| {
        format!(
            "held back: {version} is not newer than {}, which generation {} ran until it was rolled back from to generation {cur}; {how}",
            g.version, g.number
        )
    })
}

/// The unchanged-stick fast path: when `c`'s signed manifest is that of the good generation
/// serving now, says so under the profile's lock and returns "unchanged" without reading the
/// payload (see the module documentation for why that is safe).
fn recognised_current(
    layout: &Layout,
    c: &Candidate,
    opts: &Options,
    progress: &dyn Progress,
) -> Result<Option<Outcome>> {
    let name = &c.manifest.name;
    let same =
        |p: &Profile| serving_same(&p.state.generations, p.current(), &c.manifest_sha256).cloned();
    if Profile::open(layout, name)?
        .as_ref()
        .and_then(same)
        .is_none()
    {
        return Ok(None);
    }
    let _lock = crate::hostlock::acquire(layout, name, opts.wait)?;
    // Read again under the lock: a rollback may have run in between.
    let Some(g) = Profile::open(layout, name)?.as_ref().and_then(same) else {
        return Ok(None);
    };
    progress.info(&format!(
        "{} is already current: its signed manifest (sha256 {}) is that of generation {}, serving and good; the rest of the file was not read",
        crate::fsutil::shown(&c.path),
        &c.manifest_sha256[..c.manifest_sha256.len().min(16)],
        g.number
    ));
    let outcome = unchanged(name, &g);
    crate::audit::append(
        layout,
        "apply",
        serde_json::json!({"profile": name, "generation": g.number, "version": g.version, "outcome": "unchanged", "bundle": c.path.display().to_string(), "recognised_by": "manifest_sha256"}),
    )?;
    Ok(Some(outcome))
}

/// The outcome of an apply that leaves generation `g` serving.
fn unchanged(profile: &str, g: &Generation) -> Outcome {
    Outcome {
        profile: profile.to_string(),
        generation: g.number,
        version: g.version.clone(),
        result: "unchanged".into(),
        current: Some(g.number),
        health: None,
        durations_us: Default::default(),
        gc: Default::default(),
    }
}

/// Finds the newest usable bundle on the media and applies it. Says which one was chosen and
/// why every other bundle file was not. A bundle held back by a rollback ([`held_back`]) is
/// skipped unless `force`; when only such bundles are found, the generation serving stays and
/// the outcome is "unchanged". Returns the outcome and the bundle applied (or recognised).
pub fn apply_from_media(
    layout: &Layout,
    roots: &[PathBuf],
    opts: &Options,
    force: bool,
    progress: &dyn Progress,
) -> Result<(Outcome, PathBuf)> {
    progress.step(&format!("looking for bundles under {}", list_roots(roots)));
    let scan = scan(layout, roots, opts)?;
    for s in &scan.skipped {
        progress.info(&format!(
            "skipped {}: {}",
            crate::fsutil::shown(&s.path),
            s.reason
        ));
    }
    let mut kinds: Vec<(String, String)> = scan
        .usable
        .iter()
        .map(|c| (c.manifest.name.clone(), c.manifest.environment.clone()))
        .collect();
    kinds.sort();
    kinds.dedup();
    if kinds.len() > 1 {
        return Err(Error::Policy(format!(
            "bundles for several profiles or environments were found under {} ({}), and this host has nothing installed or declared that picks one: declare `environment = \"…\"` in the host config, choose it with --environment, or apply one bundle by its path",
            list_roots(roots),
            kinds
                .iter()
                .map(|(p, e)| format!("{p}/{e}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut rejected: Vec<Skipped> = Vec::new();
    // Bundles held back by a rollback: (file, profile, the generation serving).
    let mut held: Vec<(PathBuf, String, Generation)> = Vec::new();
    let total = scan.usable.len();
    for (i, c) in scan.usable.iter().enumerate() {
        let m = &c.manifest;
        if let Some(o) = recognised_current(layout, c, opts, progress)? {
            return Ok((o, c.path.clone()));
        }
        if let Some(p) = Profile::open(layout, &m.name)?
            && let Some(cur) = p.current().and_then(|n| p.generation(n)).cloned()
            && let Some(reason) = held_back(
                &p.state.generations,
                Some(cur.number),
                &m.version,
                &c.manifest_sha256,
            )
        {
            if force {
                progress.info(&format!(
                    "--force: applying {} although it is {reason}",
                    crate::fsutil::shown(&c.path)
                ));
            } else {
                progress.info(&format!("{}: {reason}", crate::fsutil::shown(&c.path)));
                held.push((c.path.clone(), m.name.clone(), cur));
                continue;
            }
        }
        let mut why = if total == 1 {
            "the only usable bundle".to_string()
        } else {
            format!("the newest of {total} usable bundles")
        };
        if !rejected.is_empty() {
            why.push_str(&format!(
                " after {} newer one(s) failed verification",
                rejected.len()
            ));
        }
        progress.info(&format!(
            "chose {}: {} {} for {}/{} — {why}",
            crate::fsutil::shown(&c.path),
            m.name,
            m.version,
            m.arch,
            m.environment
        ));
        match apply::apply_media(layout, &c.path, opts, progress) {
            Ok(o) => {
                for other in scan.usable.iter().skip(i + 1) {
                    let reason = if other.manifest.version == m.version {
                        format!(
                            "same version {} as the chosen bundle, built no later",
                            m.version
                        )
                    } else {
                        format!(
                            "{} is older than the chosen {}",
                            other.manifest.version, m.version
                        )
                    };
                    progress.info(&format!(
                        "not chosen {}: {reason}",
                        crate::fsutil::shown(&other.path)
                    ));
                }
                return Ok((o, c.path.clone()));
            }
            Err(Error::Verify(e)) => {
                progress.info(&format!(
                    "rejected {}: it failed verification ({e}); nothing of it was installed — trying the next newest bundle",
                    crate::fsutil::shown(&c.path)
                ));
                rejected.push(Skipped {
                    path: c.path.clone(),
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e),
        }
    }
    if let Some((path, profile, serving)) = held.first() {
        progress.info(&format!(
            "nothing applied: generation {} ({profile} {}) keeps serving, as the operator's rollback left it",
            serving.number, serving.version
        ));
        return Ok((unchanged(profile, serving), path.clone()));
    }
    let mut reasons: Vec<String> = scan
        .skipped
        .iter()
        .chain(rejected.iter())
        .map(|s| format!("{}: {}", crate::fsutil::shown(&s.path), s.reason))
        .collect();
    if reasons.is_empty() {
        return Err(Error::State(format!(
            "no bundle (*.tar.zst) found under {}; is the stick mounted? (see `lsblk`, `mount`), or pass --media-root DIR",
            list_roots(roots)
        )));
    }
    reasons.sort();
    Err(Error::State(format!(
        "no usable bundle under {}:\n  - {}",
        list_roots(roots),
        reasons.join("\n  - ")
    )))
}

/// The run log's name at the root of a stick.
pub const MEDIA_LOG: &str = "smoker-install.log";

/// Writes `input` to [`MEDIA_LOG`] in `dir` (the stick's mount point) without ever following a
/// link: the stick is not trusted and may hold, under that name, a link to `/etc/shadow`, a
/// FIFO or a device. The directory is opened with `O_NOFOLLOW`, whatever is at the name is
/// unlinked (a directory there is refused), and the log is created anew relative to the
/// directory with `O_CREAT | O_EXCL | O_NOFOLLOW`, so nothing outside the stick is written.
pub fn write_media_log(dir: &Path, input: &mut dyn std::io::Read) -> Result<PathBuf> {
    use std::ffi::CString;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    let path = dir.join(MEDIA_LOG);
    let cdir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::Policy(format!("{} is not a usable path", dir.display())))?;
    let name = CString::new(MEDIA_LOG).unwrap_or_default();
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let dfd = unsafe {
        libc::open(
            cdir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if dfd < 0 {
        return Err(crate::error::io_at(dir)(std::io::Error::last_os_error()));
    }
    // SAFETY: `dfd` is a fresh descriptor owned by nothing else.
    let dfd = unsafe { OwnedFd::from_raw_fd(dfd) };
    let dfd_raw = std::os::fd::AsRawFd::as_raw_fd(&dfd);
    for _ in 0..8 {
        // SAFETY: valid descriptor and C string.
        if unsafe { libc::unlinkat(dfd_raw, name.as_ptr(), 0) } != 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOENT) => {}
                Some(libc::EISDIR) | Some(libc::EPERM) => {
                    return Err(Error::Policy(format!(
                        "{} is not a file (a directory?); the run log is not written there",
                        path.display()
                    )));
                }
                _ => return Err(crate::error::io_at(&path)(e)),
            }
        }
        // SAFETY: valid descriptor and C string; the returned descriptor is owned below.
        let fd = unsafe {
            libc::openat(
                dfd_raw,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                // Something appeared under the name again: remove it and retry.
                continue;
            }
            return Err(crate::error::io_at(&path)(e));
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        std::io::copy(input, &mut file)
            .and_then(|_| file.sync_all())
            .map_err(crate::error::io_at(&path))?;
        return Ok(path);
    }
    Err(Error::State(format!(
        "{} kept reappearing; the run log is not written",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_bundles_below_roots_but_not_in_hidden_or_too_deep_directories() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let mk = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, b"x").expect("write");
            p
        };
        let a = mk("stick/bundles/prod/device-1.0.0-armv7.tar.zst");
        let b = mk("other/x.tar.zst");
        mk("stick/.Trash-1000/files/device-0.9.0-armv7.tar.zst");
        mk("stick/bundles/prod/device-1.0.0-armv7.tar.zst.minisig");
        mk("a/b/c/d/e/f/g/h/deep.tar.zst");
        std::os::unix::fs::symlink(root.join("stick"), root.join("loop")).expect("symlink");
        let found = find_bundle_files(&[root.to_path_buf()]);
        assert_eq!(found.files, vec![b, a]);
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    }

    #[test]
    fn links_fifos_and_directories_named_like_bundles_are_skipped_with_a_reason() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path();
        let real = root.join("real-1.0.0-amd64.tar.zst");
        std::fs::write(&real, b"x").expect("write");
        // A link to a file that would block a reader forever, and one to a genuine file.
        std::os::unix::fs::symlink("/proc/kmsg", root.join("kmsg.tar.zst")).expect("symlink");
        std::os::unix::fs::symlink(&real, root.join("alias.tar.zst")).expect("symlink");
        let fifo = root.join("pipe.tar.zst");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("c path");
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        std::fs::create_dir(root.join("dir.tar.zst")).expect("mkdir");
        let found = find_bundle_files(&[root.to_path_buf()]);
        assert_eq!(found.files, vec![real]);
        let mut reasons: Vec<(String, String)> = found
            .skipped
            .iter()
            .map(|s| {
                let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned());
                (name.unwrap_or_default(), s.reason.clone())
            })
            .collect();
        reasons.sort();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert_eq!(reasons[0].0, "alias.tar.zst");
        assert!(reasons[0].1.contains("symbolic link"), "{reasons:?}");
        assert_eq!(reasons[1].0, "kmsg.tar.zst");
        assert!(reasons[1].1.contains("symbolic link"), "{reasons:?}");
        assert_eq!(reasons[2].0, "pipe.tar.zst");
        assert!(reasons[2].1.contains("not a regular file"), "{reasons:?}");
    }

    #[test]
    fn a_name_swapped_for_a_link_or_fifo_after_the_scan_is_not_opened() {
        let d = tempfile::tempdir().expect("tempdir");
        let link = d.path().join("swapped.tar.zst");
        std::os::unix::fs::symlink("/proc/kmsg", &link).expect("symlink");
        match crate::fsutil::open_regular(&link, false) {
            Err(Error::Policy(m)) => assert!(m.contains("symbolic link"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let fifo = d.path().join("fifo.tar.zst");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("c path");
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        // O_NONBLOCK: the open returns at once instead of waiting for a writer.
        match crate::fsutil::open_regular(&fifo, true) {
            Err(Error::Policy(m)) => assert!(m.contains("not a regular file"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn thousands_of_stub_bundles_are_judged_only_up_to_the_budget() {
        let d = tempfile::tempdir().expect("tempdir");
        for i in 0..(MAX_BUNDLE_FILES + 40) {
            std::fs::write(d.path().join(format!("stub-{i:05}.tar.zst")), b"").expect("write");
        }
        let found = find_bundle_files(&[d.path().to_path_buf()]);
        assert_eq!(found.files.len(), MAX_BUNDLE_FILES);
        assert_eq!(found.skipped.len(), 40);
        assert!(
            found.skipped[0]
                .reason
                .contains("more than 256 bundle files")
        );
    }

    #[test]
    fn control_characters_in_names_are_escaped_in_messages() {
        let p = PathBuf::from("/media/x/evil\u{1b}[2J\nfake line.tar.zst");
        let shown = crate::fsutil::shown(&p);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\n'),
            "{shown}"
        );
        assert!(
            shown.contains("\\u{1b}") && shown.contains("\\n"),
            "{shown}"
        );
    }

    fn generation(number: u32, version: &str, digest: &str, status: Status) -> Generation {
        Generation {
            number,
            store: format!("svc-{version}"),
            version: version.into(),
            arch: "amd64".into(),
            environment: "prod".into(),
            bundle_sha256: "b".repeat(64),
            manifest_sha256: digest.into(),
            status,
            installed_at: "2026-01-01T00:00:00Z".into(),
            decided_at: None,
            reason: None,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn a_bundle_rolled_back_from_and_versions_not_newer_are_held_back() {
        let (d1, d2, d3) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        let gens = [
            generation(1, "1.0.0", &d1, Status::Good),
            generation(2, "1.1.0", &d2, Status::Good),
            generation(3, "1.2.0", &d3, Status::Good),
        ];
        // Rolled back from 3 to 2: the bundle of 3 and anything up to 1.2.0 stay out.
        let same = held_back(&gens, Some(2), "1.2.0", &d3).expect("held");
        assert!(
            same.contains("generation 3 ran this very bundle (1.2.0)")
                && same.contains("to generation 2")
                && same.contains("--force"),
            "{same}"
        );
        let rebuilt = held_back(&gens, Some(2), "1.2.0", &"9".repeat(64)).expect("held");
        assert!(
            rebuilt.contains("1.2.0 is not newer than 1.2.0"),
            "{rebuilt}"
        );
        assert!(held_back(&gens, Some(2), "1.1.5", &"9".repeat(64)).is_some());
        // A newer version is applied.
        assert_eq!(held_back(&gens, Some(2), "1.3.0", &"9".repeat(64)), None);
        // Serving the newest generation: nothing was rolled back from.
        assert_eq!(held_back(&gens, Some(3), "1.2.0", &d3), None);
        assert_eq!(held_back(&gens, None, "1.2.0", &d3), None);
        // A newer generation that failed its health gate is not a rollback of the operator's
        // (an apply interrupted before its switch is marked failed too, and must be retried).
        let failed = [
            generation(1, "1.0.0", &d1, Status::Good),
            generation(2, "1.1.0", &d2, Status::Failed),
        ];
        assert_eq!(held_back(&failed, Some(1), "1.1.0", &d2), None);
    }

    #[test]
    fn only_the_good_current_generation_with_the_same_manifest_digest_is_recognised() {
        let (d1, d2) = ("1".repeat(64), "2".repeat(64));
        let gens = [
            generation(1, "1.0.0", &d1, Status::Good),
            generation(2, "1.1.0", &d2, Status::Pending),
        ];
        assert_eq!(serving_same(&gens, Some(1), &d1).map(|g| g.number), Some(1));
        // Another manifest (a changed file), a generation that is not current, one not good.
        assert!(serving_same(&gens, Some(1), &d2).is_none());
        assert!(serving_same(&gens, Some(2), &d2).is_none());
        assert!(serving_same(&gens, None, &d1).is_none());
    }

    #[test]
    fn default_roots_are_media_and_mnt() {
        assert_eq!(
            media_roots(&[]),
            vec![PathBuf::from("/media"), PathBuf::from("/mnt")]
        );
        assert_eq!(
            media_roots(&[PathBuf::from("/x")]),
            vec![PathBuf::from("/x")]
        );
    }

    /// The unit writes the run log onto an untrusted stick: a `smoker-install.log` there that
    /// links to a root-owned file must not get that file overwritten. On a real ext4 image
    /// (loop-mounted, as a stick is; links survive on ext4) when loop devices are available,
    /// else on a plain directory — said on stderr, never skipped.
    #[test]
    fn the_media_log_never_follows_a_link_on_the_stick() {
        use std::os::unix::fs::FileTypeExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let victim = tmp.path().join("shadow");
        std::fs::write(&victim, "root:secret-hash:19000::::::\n").expect("victim");
        let mnt = tmp.path().join("stick");
        std::fs::create_dir(&mnt).expect("mount point");
        let img = tmp.path().join("stick.img");
        let mounted = std::fs::File::create(&img)
            .and_then(|f| f.set_len(8 * 1024 * 1024))
            .is_ok()
            && std::process::Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&img)
                .status()
                .is_ok_and(|s| s.success())
            && std::process::Command::new("mount")
                .args(["-o", "loop,rw,nosuid,nodev,noexec"])
                .arg(&img)
                .arg(&mnt)
                .status()
                .is_ok_and(|s| s.success());
        struct Unmount(Option<PathBuf>);
        impl Drop for Unmount {
            fn drop(&mut self) {
                if let Some(m) = &self.0 {
                    let _ = std::process::Command::new("umount").arg(m).status();
                }
            }
        }
        let _unmount = Unmount(mounted.then(|| mnt.clone()));
        if !mounted {
            eprintln!(
                "note: no loop-mounted ext4 here; the media log is tested on a plain directory"
            );
        }

        // A link to the victim, then a FIFO (opening one for writing would block), then an
        // old log: each is replaced by a fresh regular file.
        std::os::unix::fs::symlink(&victim, mnt.join(MEDIA_LOG)).expect("plant link");
        let path = write_media_log(&mnt, &mut &b"run 1\n"[..]).expect("write log");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "root:secret-hash:19000::::::\n",
            "the link's target was written"
        );
        let meta = std::fs::symlink_metadata(&path).expect("log");
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "run 1\n");

        std::fs::remove_file(&path).expect("rm");
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("c path");
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(
            std::fs::symlink_metadata(&path)
                .expect("fifo")
                .file_type()
                .is_fifo()
        );
        write_media_log(&mnt, &mut &b"run 2\n"[..]).expect("write log");
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "run 2\n");
        write_media_log(&mnt, &mut &b"run 3\n"[..]).expect("write log");
        assert_eq!(std::fs::read_to_string(&path).expect("log"), "run 3\n");

        // A directory under the name is refused, and nothing is written through it.
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("dir");
        assert!(write_media_log(&mnt, &mut &b"run 4\n"[..]).is_err());
        // The stick's directory itself must not be a link either.
        let link_dir = tmp.path().join("link-to-stick");
        std::os::unix::fs::symlink(&mnt, &link_dir).expect("dir link");
        assert!(write_media_log(&link_dir, &mut &b"x"[..]).is_err());
    }
}
