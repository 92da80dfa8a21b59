//! The content-addressed store: verified bundle contents, immutable once committed.
//!
//! A bundle is streamed once into a fresh directory under `staging/` while every check of
//! [`smoker_format::bundle::read`] runs. Only when the whole bundle has passed is the directory made
//! read-only and renamed into `store/` (one rename(2), then an fsync of `store/`), so a store
//! entry is either absent or complete and verified. A store entry is named by the manifest's
//! sha256, which covers every payload file's hash.
//!
//! Entries are only read-only, which root ignores, so an entry is checked again before it is
//! started from the store ([`check`]): at commit, [`JOURNAL`] records each file's size and
//! modification time and the sha256 of the manifest as verified; before a rollback, a
//! recovery or an apply reuses the entry, those are compared with the files (cheap: one
//! `lstat` per file), and any unexpected file is named. [`verify_entry`] hashes every file
//! against the manifest (`smoker-install verify --store`).

use crate::error::{Error, Result, io_at};
use crate::fsutil;
use crate::layout::Layout;
use smoker_format::bundle::read::{DirSink, Limits, Trust, VerifiedBundle, read_bundle};
use smoker_format::manifest::{MANIFEST_PATH, MANIFEST_SIG_PATH, Manifest};
use smoker_format::signing::TrustedKeys;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The journal of a store entry, written inside it at commit (not part of the bundle).
pub const JOURNAL: &str = ".smoker-journal.json";

/// What [`JOURNAL`] records of an entry as it was committed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Journal {
    /// sha256 of `manifest.json` as verified.
    pub manifest_sha256: String,
    /// Every file of the entry (payload, manifest and its signature): size and mtime.
    pub files: BTreeMap<String, FileStamp>,
}

/// Size and modification time of one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_nsec: i64,
}

fn stamp(path: &Path) -> std::io::Result<Option<FileStamp>> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::symlink_metadata(path)?;
    Ok(m.file_type().is_file().then(|| FileStamp {
        size: m.size(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    }))
}

/// The files an entry must hold: the manifest's payload plus the manifest and its signature.
fn expected_files(manifest: &Manifest) -> Vec<String> {
    let mut v: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    v.push(MANIFEST_PATH.to_string());
    v.push(MANIFEST_SIG_PATH.to_string());
    v
}

/// Files and links under `root` (relative, `/`-separated) that `expected` does not name,
/// other than the journal. Directories are walked, not reported.
fn unexpected_files(root: &Path, expected: &[String]) -> Vec<String> {
    fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            match e.file_type() {
                Ok(t) if t.is_dir() => walk(&e.path(), &r, out),
                _ => out.push(r),
            }
        }
    }
    let mut all = Vec::new();
    walk(root, "", &mut all);
    let expected: std::collections::BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    all.into_iter()
        .filter(|f| f != JOURNAL && !expected.contains(f.as_str()))
        .collect()
}

fn journal_of(dir: &Path, manifest: &Manifest, manifest_sha256: &str) -> Result<Journal> {
    let mut files = BTreeMap::new();
    for f in expected_files(manifest) {
        let p = dir.join(&f);
        let s = stamp(&p)
            .map_err(io_at(&p))?
            .ok_or_else(|| Error::State(format!("{} is not a regular file", p.display())))?;
        files.insert(f, s);
    }
    Ok(Journal {
        manifest_sha256: manifest_sha256.to_string(),
        files,
    })
}

/// A committed store entry.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    /// Absolute path of the entry.
    pub path: PathBuf,
    /// Its directory name (`<hash>-<name>-<version>-<arch>`).
    pub name: String,
    /// The manifest.
    pub manifest: Manifest,
    /// sha256 of the manifest.
    pub manifest_sha256: String,
}

/// The directory name of a bundle's store entry.
pub fn entry_name(manifest: &Manifest, manifest_sha256: &str) -> String {
    format!(
        "{}-{}",
        &manifest_sha256[..manifest_sha256.len().min(32)],
        manifest.stem()
    )
}

/// A bundle verified and unpacked under `staging/`, not yet in the store. Dropping it removes
/// the staged files; [`Staged::commit`] moves them into the store.
pub struct Staged {
    dir: tempfile::TempDir,
    /// What verification established: the manifest and the hashes of what was read.
    pub verified: VerifiedBundle,
}

impl Staged {
    /// Where the verified payload is staged (removed when this is dropped uncommitted).
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The verified manifest (the one every later decision must use).
    pub fn manifest(&self) -> &Manifest {
        &self.verified.manifest
    }

    /// Commits the staged tree to the store (or reuses the identical committed entry): made
    /// read-only, one rename(2) into `store/`, fsync of `store/`.
    pub fn commit(self, layout: &Layout) -> Result<StoreEntry> {
        let name = entry_name(&self.verified.manifest, &self.verified.manifest_sha256);
        let dest = layout.store().join(&name);
        if dest.exists() {
            // Same manifest hash = same content; keep the committed copy if it is intact,
            // else (damaged, or not even readable) replace it with the copy just verified.
            let intact = open(layout, &name)
                .ok()
                .filter(|e| check(e, Some(&self.verified.manifest_sha256)).is_ok());
            if let Some(existing) = intact {
                return Ok(existing);
            }
            let aside = layout
                .staging()
                .join(format!("stage-{}-damaged-{name}", std::process::id()));
            std::fs::rename(&dest, &aside).map_err(io_at(&dest))?;
            fsutil::remove_tree(&aside)?;
        }
        std::fs::create_dir_all(layout.store()).map_err(io_at(&layout.store()))?;
        let journal = journal_of(
            self.dir.path(),
            &self.verified.manifest,
            &self.verified.manifest_sha256,
        )?;
        let jpath = self.dir.path().join(JOURNAL);
        fsutil::write_atomic(
            &jpath,
            &serde_json::to_vec(&journal).unwrap_or_default(),
            0o444,
        )?;
        let staged = self.dir.keep();
        fsutil::make_read_only(&staged)?;
        std::fs::rename(&staged, &dest).map_err(io_at(&dest))?;
        fsutil::fsync_dir(&layout.store())?;
        Ok(StoreEntry {
            path: dest,
            name,
            manifest: self.verified.manifest.clone(),
            manifest_sha256: self.verified.manifest_sha256.clone(),
        })
    }
}

/// Verifies the bundle read from `input` and unpacks it under `staging/`, in one pass. Nothing
/// is staged unless every check passed (a failed read removes what it wrote); nothing reaches
/// `store/` until [`Staged::commit`].
pub fn stage(
    layout: &Layout,
    input: impl std::io::Read + Send,
    keys: &TrustedKeys,
) -> Result<Staged> {
    let staging_root = layout.staging();
    std::fs::create_dir_all(&staging_root).map_err(io_at(&staging_root))?;
    clean_staging(layout);
    let stage = tempfile::Builder::new()
        .prefix(&format!("stage-{}-", std::process::id()))
        .tempdir_in(&staging_root)
        .map_err(io_at(&staging_root))?;
    let mut sink = DirSink::new(stage.path());
    let verified = read_bundle(
        std::io::BufReader::with_capacity(1024 * 1024, input),
        Trust::Keys(keys),
        &mut sink,
        Limits::default(),
    )?;
    // The manifest and its signature live in the entry too: the store is self-describing.
    for (f, bytes) in [
        (MANIFEST_PATH, &verified.manifest_bytes[..]),
        (MANIFEST_SIG_PATH, verified.signature.as_bytes()),
    ] {
        let p = stage.path().join(f);
        std::fs::write(&p, bytes)
            .and_then(|_| std::fs::File::open(&p).and_then(|f| f.sync_all()))
            .map_err(io_at(&p))?;
    }
    Ok(Staged {
        dir: stage,
        verified,
    })
}

/// Opens a committed store entry by directory name.
pub fn open(layout: &Layout, name: &str) -> Result<StoreEntry> {
    let path = layout.store().join(name);
    let mpath = path.join(MANIFEST_PATH);
    let bytes = std::fs::read(&mpath).map_err(|e| {
        Error::State(format!(
            "store entry {} is missing or incomplete ({e}); reinstall its bundle",
            path.display()
        ))
    })?;
    let manifest = Manifest::from_json(&bytes)
        .map_err(|e| Error::State(format!("store entry {}: {e}", path.display())))?;
    Ok(StoreEntry {
        path,
        name: name.to_string(),
        manifest,
        manifest_sha256: smoker_format::digest::sha256_hex(&bytes),
    })
}

/// Checks a committed entry before it is started: the manifest hash against `expected` (the
/// generation's record) and the journal, each file's type, size and mtime against the journal,
/// and that no other file was added. An entry without a journal (committed by an older
/// installer) is hashed in full instead. A damaged entry is an [`Error::State`] naming its
/// damaged files.
pub fn check(entry: &StoreEntry, expected: Option<&str>) -> Result<()> {
    let problems = match read_journal(&entry.path) {
        Some(journal) => fast_problems(entry, expected, &journal),
        None => full_problems(entry, expected),
    };
    damaged(entry, problems)
}

fn damaged(entry: &StoreEntry, problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::State(format!(
        "store entry {} is damaged and will not be started: {}. Apply its bundle again to replace the entry, or roll back to another generation",
        entry.name,
        problems.join("; ")
    )))
}

fn read_journal(dir: &Path) -> Option<Journal> {
    let bytes = std::fs::read(dir.join(JOURNAL)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn manifest_problems(
    entry: &StoreEntry,
    expected: Option<&str>,
    journal: Option<&Journal>,
) -> Vec<String> {
    let mut out = Vec::new();
    // An empty record (generations written before the hash was recorded) says nothing.
    if expected.is_some_and(|e| !e.is_empty() && e != entry.manifest_sha256)
        || journal.is_some_and(|j| j.manifest_sha256 != entry.manifest_sha256)
    {
        out.push(format!(
            "{MANIFEST_PATH} changed (sha256 {})",
            entry.manifest_sha256
        ));
    }
    out
}

fn fast_problems(entry: &StoreEntry, expected: Option<&str>, journal: &Journal) -> Vec<String> {
    let mut out = manifest_problems(entry, expected, Some(journal));
    let files = expected_files(&entry.manifest);
    for f in &files {
        let now = stamp(&entry.path.join(f));
        match (journal.files.get(f), now) {
            (_, Err(_)) => out.push(format!("{f} is missing")),
            (_, Ok(None)) => out.push(format!("{f} is not a regular file")),
            (None, Ok(Some(_))) => out.push(format!("{f} is not in the journal")),
            (Some(j), Ok(Some(s))) if *j != s => out.push(format!("{f} was modified")),
            _ => {}
        }
    }
    out.extend(
        unexpected_files(&entry.path, &files)
            .into_iter()
            .map(|f| format!("{f} was added")),
    );
    out
}

fn full_problems(entry: &StoreEntry, expected: Option<&str>) -> Vec<String> {
    let mut out = manifest_problems(entry, expected, read_journal(&entry.path).as_ref());
    for f in &entry.manifest.files {
        let p = entry.path.join(&f.path);
        match stamp(&p) {
            Err(_) => out.push(format!("{} is missing", f.path)),
            Ok(None) => out.push(format!("{} is not a regular file", f.path)),
            Ok(Some(_)) => match smoker_format::digest::sha256_file(&p) {
                Ok((sha, size)) if sha == f.sha256 && size == f.size => {}
                Ok(_) => out.push(format!("{} does not match its hash", f.path)),
                Err(e) => out.push(format!("{} cannot be read ({e})", f.path)),
            },
        }
    }
    for f in [MANIFEST_PATH, MANIFEST_SIG_PATH] {
        if !matches!(stamp(&entry.path.join(f)), Ok(Some(_))) {
            out.push(format!("{f} is missing or not a regular file"));
        }
    }
    out.extend(
        unexpected_files(&entry.path, &expected_files(&entry.manifest))
            .into_iter()
            .map(|f| format!("{f} was added")),
    );
    out
}

/// The full check of one entry (`verify --store`): every file hashed against the manifest,
/// the manifest against `expected` and the journal, and its signature when `keys` are given.
/// Returns the problems found (empty: intact).
pub fn verify_entry(
    layout: &Layout,
    name: &str,
    expected: Option<&str>,
    keys: Option<&TrustedKeys>,
) -> Vec<String> {
    let entry = match open(layout, name) {
        Ok(e) => e,
        Err(e) => return vec![e.to_string()],
    };
    let mut out = full_problems(&entry, expected);
    if let Some(keys) = keys {
        let manifest = std::fs::read(entry.path.join(MANIFEST_PATH)).unwrap_or_default();
        let sig = std::fs::read_to_string(entry.path.join(MANIFEST_SIG_PATH)).unwrap_or_default();
        if let Err(e) = keys.verify(&manifest, &sig) {
            out.push(format!("the manifest's signature does not verify ({e})"));
        }
    }
    out
}

/// Names of every committed store entry.
pub fn list(layout: &Layout) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(layout.store())
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Deletes a store entry (gc only).
pub fn remove(layout: &Layout, name: &str) -> Result<()> {
    fsutil::remove_tree(&layout.store().join(name))?;
    fsutil::fsync_dir(&layout.store())
}

/// Removes leftovers of interrupted unpacks (those whose process is gone).
fn clean_staging(layout: &Layout) {
    if let Ok(rd) = std::fs::read_dir(layout.staging()) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("stage-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_none_or(|p| !crate::sys::pid_alive(p)) {
                let _ = fsutil::remove_tree(&e.path());
            }
        }
    }
}

/// A signed one-file bundle for tests of the store and what uses it.
#[cfg(test)]
pub(crate) mod testbundle {
    use smoker_format::bundle::write::{Payload, write_bundle};
    use smoker_format::manifest::{Arch, FileEntry, Manifest};
    use smoker_format::signing::{SecretKey, TrustedKeys};
    use std::path::{Path, PathBuf};

    /// The compose file the bundle carries.
    pub const COMPOSE: &str = "stack/compose.yaml";

    /// Writes bundle `name` `version` under `dir`; returns its path and the keys trusting it.
    pub fn make(dir: &Path, name: &str, version: &str) -> (PathBuf, TrustedKeys) {
        let body = format!("services:\n  app:\n    image: busybox # {version}\n");
        let mut m = Manifest::skeleton(name, version, Arch::Amd64, "prod");
        m.compose.files = vec![COMPOSE.into()];
        let file = FileEntry {
            path: COMPOSE.into(),
            size: body.len() as u64,
            sha256: smoker_format::digest::sha256_hex(body.as_bytes()),
            mode: 0o644,
        };
        m.files = vec![file.clone()];
        let key = SecretKey::from_seed([7; 8], [9; 32]);
        let sig = key.sign(&m.to_canonical_json()[..], "test").expect("sign");
        let path = dir.join(format!("{name}-{version}.tar.zst"));
        let out = std::fs::File::create(&path).expect("create bundle");
        write_bundle(out, &m, &sig, &[(file, Payload::Bytes(body.into_bytes()))])
            .expect("write bundle");
        let pubkey = dir.join("test.pub");
        std::fs::write(&pubkey, key.public_key_file()).expect("public key");
        (path, TrustedKeys::from_file(&pubkey).expect("keys"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(layout: &Layout, bundle: &Path, keys: &TrustedKeys) -> StoreEntry {
        let f = std::fs::File::open(bundle).expect("open bundle");
        stage(layout, f, keys)
            .expect("stage")
            .commit(layout)
            .expect("commit")
    }

    /// Writes `text` into a read-only store file, as root could (or after `chmod +w`).
    pub(crate) fn tamper(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::write(path, text).expect("tamper");
    }

    #[test]
    fn a_modified_file_of_a_committed_entry_is_found_and_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().join("root"));
        let (bundle, keys) = testbundle::make(dir.path(), "web", "1.0.0");
        let entry = commit(&layout, &bundle, &keys);
        assert!(entry.path.join(JOURNAL).is_file());
        check(&entry, Some(&entry.manifest_sha256)).expect("intact");
        assert!(verify_entry(&layout, &entry.name, None, Some(&keys)).is_empty());

        tamper(&entry.path.join(testbundle::COMPOSE), "services: {}\n");
        let err = check(&entry, Some(&entry.manifest_sha256))
            .expect_err("damaged")
            .to_string();
        assert!(err.contains(testbundle::COMPOSE), "{err}");
        assert!(err.contains(&entry.name), "{err}");
        let full = verify_entry(&layout, &entry.name, None, Some(&keys));
        assert_eq!(
            full,
            [format!("{} does not match its hash", testbundle::COMPOSE)]
        );

        // A file added where compose would read it is damage too.
        std::fs::write(entry.path.join("stack/.env"), "X=1\n").expect("plant");
        let err = check(&entry, None).expect_err("damaged").to_string();
        assert!(err.contains("stack/.env was added"), "{err}");

        // Applying the same bundle again replaces the damaged entry with a verified copy.
        let again = commit(&layout, &bundle, &keys);
        check(&again, Some(&entry.manifest_sha256)).expect("replaced");
        assert!(!again.path.join("stack/.env").exists());

        // So is an entry whose manifest is gone.
        fsutil::make_writable(&again.path).expect("writable");
        std::fs::remove_file(again.path.join(MANIFEST_PATH)).expect("rm manifest");
        let third = commit(&layout, &bundle, &keys);
        check(&third, Some(&entry.manifest_sha256)).expect("replaced again");
    }

    #[test]
    fn an_entry_without_a_journal_is_hashed_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path().join("root"));
        let (bundle, keys) = testbundle::make(dir.path(), "web", "1.0.0");
        let entry = commit(&layout, &bundle, &keys);
        fsutil::make_writable(&entry.path).expect("writable");
        std::fs::remove_file(entry.path.join(JOURNAL)).expect("rm journal");
        check(&entry, None).expect("intact without a journal");
        tamper(&entry.path.join(testbundle::COMPOSE), "services: {}\n");
        let err = check(&entry, None).expect_err("damaged").to_string();
        assert!(err.contains("does not match its hash"), "{err}");
    }
}
