//! Inputs by content: the files of a generation that its containers read from the host.
//!
//! A bundle carries the files its compose file references by relative path (init scripts,
//! configuration, certificates) under `stack/`, and compose resolves them against the project
//! directory. If that directory were the generation's store entry, every release would give a
//! bind mount a new host path, and compose would recreate the service although nothing it runs
//! changed. Instead, like a Nix store path, every bind-mounted file or directory of the bundle,
//! and every file-based `configs`/`secrets` entry, gets a host path that depends only on its
//! content:
//!
//! ```text
//! <root>/inputs/<key>/<name>        read-only copy; key = sha256 of name, paths, modes and hashes
//! <root>/inputs/compose-<sha>.json  the override that points compose at those paths
//! ```
//!
//! The key is computed from the signed manifest's file list (the entry was verified against it),
//! so no file is hashed twice. The override (generated on the host from the front end's own
//! `compose config` output, so every syntax the user wrote is understood) replaces each such bind
//! mount by target path, sets `pull_policy: never`, and labels every service with the host root
//! and profile that own it and with the content address of its inputs: compose then recreates a
//! service exactly when its image, its configuration or the content of its inputs change.

use crate::error::{Result, io_at};
use crate::fsutil;
use crate::layout::Layout;
use crate::runtime::{INPUTS_LABEL, PROFILE_LABEL, ROOT_LABEL, Resolved};
use crate::store::StoreEntry;
use smoker_format::digest::sha256_hex;
use smoker_format::manifest::FileEntry;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Directory of content-addressed inputs under the host root.
pub const INPUTS_DIR: &str = "inputs";

/// What [`prepare`] produced for one generation.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The override compose file to pass after the bundle's own files.
    pub override_file: PathBuf,
    /// The input keys the generation uses (directory names under `inputs/`).
    pub keys: BTreeSet<String>,
    /// Things the operator should know (an input that was changed on disk and replaced).
    pub notes: Vec<String>,
}

/// The inputs directory of a host root.
pub fn dir(layout: &Layout) -> PathBuf {
    layout.root().join(INPUTS_DIR)
}

/// One bundle path (a file or a directory) under a content address.
struct Input<'a> {
    /// Path inside the entry (`stack/init`).
    rel: String,
    /// Manifest entries under it.
    files: Vec<&'a FileEntry>,
    key: String,
}

impl Input<'_> {
    fn name(&self) -> &str {
        self.rel.rsplit('/').next().unwrap_or(&self.rel)
    }
}

/// The content address of bundle path `rel` (a file or a directory), from the manifest's list:
/// `None` when the bundle holds nothing there.
fn input<'a>(entry: &'a StoreEntry, rel: &str) -> Option<Input<'a>> {
    let prefix = format!("{rel}/");
    let files: Vec<&FileEntry> = entry
        .manifest
        .files
        .iter()
        .filter(|f| f.path == rel || f.path.starts_with(&prefix))
        .collect();
    if files.is_empty() {
        return None;
    }
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let mut text = format!("smoker-input 1\nname {name}\n");
    for f in &files {
        let inner = f.path.strip_prefix(&prefix).unwrap_or("");
        text.push_str(&format!("{:o} {} {inner}\n", f.mode, f.sha256));
    }
    Some(Input {
        rel: rel.to_string(),
        files,
        key: sha256_hex(text.as_bytes()),
    })
}

/// The path inside the entry of an absolute host path under it, when it is one.
fn inside(entry: &StoreEntry, source: &Path) -> Option<String> {
    let rel = source.strip_prefix(&entry.path).ok()?;
    let rel = rel.to_str()?;
    (!rel.is_empty()).then(|| rel.to_string())
}

/// Materializes the inputs of `entry` that `resolved` mounts, and writes the override that
/// points compose at them (see the module documentation).
pub fn prepare(
    layout: &Layout,
    entry: &StoreEntry,
    resolved: &Resolved,
    profile: &str,
) -> Result<Prepared> {
    let base = dir(layout);
    std::fs::create_dir_all(&base).map_err(io_at(&base))?;
    let mut notes = Vec::new();
    let mut keys = BTreeSet::new();
    let mut placed: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut place = |rel: &str, notes: &mut Vec<String>| -> Result<Option<(String, PathBuf)>> {
        let Some(inp) = input(entry, rel) else {
            return Ok(None);
        };
        if let Some(p) = placed.get(&inp.key) {
            return Ok(Some((inp.key.clone(), p.clone())));
        }
        let path = materialize(&base, entry, &inp, notes)?;
        placed.insert(inp.key.clone(), path.clone());
        Ok(Some((inp.key, path)))
    };

    let mut top_files: BTreeMap<String, serde_json::Map<String, serde_json::Value>> =
        BTreeMap::new();
    let mut file_keys: BTreeMap<(String, String), String> = BTreeMap::new();
    for ((section, name), source) in &resolved.files {
        let Some(rel) = inside(entry, source) else {
            continue;
        };
        if let Some((key, path)) = place(&rel, &mut notes)? {
            top_files.entry(section.clone()).or_default().insert(
                name.clone(),
                serde_json::json!({ "file": path.display().to_string() }),
            );
            file_keys.insert((section.clone(), name.clone()), key.clone());
            keys.insert(key);
        }
    }

    let mut services = serde_json::Map::new();
    for (name, svc) in &resolved.services {
        let mut volumes = Vec::new();
        let mut used: BTreeSet<String> = BTreeSet::new();
        for b in &svc.binds {
            let Some(rel) = inside(entry, &b.source) else {
                continue;
            };
            if let Some((key, path)) = place(&rel, &mut notes)? {
                volumes.push(b.with_source(&path));
                used.insert(format!("{} {key}", b.target));
                keys.insert(key);
            }
        }
        for (section, names) in [("configs", &svc.configs), ("secrets", &svc.secrets)] {
            for n in names {
                if let Some(k) = file_keys.get(&(section.to_string(), n.clone())) {
                    used.insert(format!("{section}:{n} {k}"));
                }
            }
        }
        let mut labels = serde_json::Map::new();
        labels.insert(
            ROOT_LABEL.into(),
            layout.root().display().to_string().into(),
        );
        labels.insert(PROFILE_LABEL.into(), profile.into());
        if !used.is_empty() {
            let all: Vec<String> = used.into_iter().collect();
            labels.insert(
                INPUTS_LABEL.into(),
                sha256_hex(all.join("\n").as_bytes()).into(),
            );
        }
        let mut s = serde_json::Map::new();
        s.insert("pull_policy".into(), "never".into());
        s.insert("labels".into(), labels.into());
        if !volumes.is_empty() {
            s.insert("volumes".into(), volumes.into());
        }
        services.insert(name.clone(), s.into());
    }
    let mut top = serde_json::Map::new();
    if let Some(v) = &resolved.version {
        top.insert("version".into(), v.clone().into());
    }
    top.insert("services".into(), services.into());
    for (section, m) in top_files {
        top.insert(section, m.into());
    }
    let mut bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(top)).unwrap_or_default();
    bytes.push(b'\n');
    let override_file = base.join(format!("compose-{}.json", &sha256_hex(&bytes)[..32]));
    if std::fs::read(&override_file).ok().as_deref() != Some(&bytes[..]) {
        fsutil::write_atomic(&override_file, &bytes, 0o444)?;
    }
    Ok(Prepared {
        override_file,
        keys,
        notes,
    })
}

/// `inputs/<key>/<name>`, copied from the store entry when absent. When present it is checked
/// against the manifest: a copy something wrote into (a container with a read-write bind
/// mount) is moved aside, kept for the operator, and replaced by a fresh copy.
fn materialize(
    base: &Path,
    entry: &StoreEntry,
    inp: &Input<'_>,
    notes: &mut Vec<String>,
) -> Result<PathBuf> {
    let dest = base.join(&inp.key);
    let path = dest.join(inp.name());
    if dest.exists() {
        match differs(&path, inp) {
            None => return Ok(path),
            Some(why) => {
                let aside = base.join(format!(".changed-{}-{}", inp.key, crate::sys::now_secs()));
                std::fs::rename(&dest, &aside).map_err(io_at(&dest))?;
                notes.push(format!(
                    "{} (from {}) was changed on disk ({why}); kept as {} and replaced by a fresh copy — a service that writes there should use a named volume",
                    path.display(),
                    inp.rel,
                    aside.display()
                ));
            }
        }
    }
    let tmp = base.join(format!(".tmp-{}-{}", inp.key, std::process::id()));
    if tmp.exists() {
        fsutil::remove_tree(&tmp)?;
    }
    let top = tmp.join(inp.name());
    for f in &inp.files {
        let inner = f.path.strip_prefix(&inp.rel).unwrap_or("");
        let to = if inner.is_empty() {
            top.clone()
        } else {
            top.join(inner.trim_start_matches('/'))
        };
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io_at(parent))?;
        }
        let from = entry.path.join(&f.path);
        copy_regular(&from, &to, f.mode)?;
    }
    fsutil::make_read_only(&tmp)?;
    std::fs::rename(&tmp, &dest).map_err(io_at(&dest))?;
    fsutil::fsync_dir(base)?;
    Ok(path)
}

/// Copies a store file (never through a link) with the manifest's mode, and syncs it.
fn copy_regular(from: &Path, to: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut src = fsutil::open_regular(from, false)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)
        .map_err(io_at(to))?;
    std::io::copy(&mut src, &mut dst).map_err(io_at(to))?;
    dst.sync_all().map_err(io_at(to))
}

/// Why the copy at `path` is not the input any more, if it is not: a file missing, added,
/// replaced by something else or with other bytes.
fn differs(path: &Path, inp: &Input<'_>) -> Option<String> {
    let mut expected: BTreeMap<PathBuf, &str> = BTreeMap::new();
    for f in &inp.files {
        let inner = f.path.strip_prefix(&inp.rel).unwrap_or("");
        let p = if inner.is_empty() {
            path.to_path_buf()
        } else {
            path.join(inner.trim_start_matches('/'))
        };
        expected.insert(p, &f.sha256);
    }
    let mut found = Vec::new();
    if let Err(e) = walk(path, &mut found) {
        return Some(e);
    }
    if found.len() != expected.len() {
        return Some(format!(
            "{} files where the bundle has {}",
            found.len(),
            expected.len()
        ));
    }
    for p in found {
        let Some(want) = expected.get(&p) else {
            return Some(format!("{} is not part of the bundle", p.display()));
        };
        let file = match fsutil::open_regular(&p, false) {
            Ok(f) => f,
            Err(e) => return Some(e.to_string()),
        };
        let mut h = smoker_format::digest::HashingReader::new(file);
        if std::io::copy(&mut h, &mut std::io::sink()).is_err() {
            return Some(format!("{} cannot be read", p.display()));
        }
        if h.finish().0 != *want {
            return Some(format!("{} has other bytes", p.display()));
        }
    }
    None
}

/// Every non-directory under `path` (or `path` itself), without following links.
fn walk(path: &Path, out: &mut Vec<PathBuf>) -> std::result::Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("{}: {e}", path.display()))?;
            walk(&e.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// The names under `inputs/` a generation uses: its input keys and its override file.
pub fn names(p: &Prepared) -> Vec<String> {
    p.keys
        .iter()
        .cloned()
        .chain(
            p.override_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned()),
        )
        .collect()
}

/// Removes every input and override file under `inputs/` whose name `keep` does not hold, and
/// temporaries of runs that died; copies moved aside as changed are kept for the operator.
/// The caller holds the gc lock exclusively. Returns the names removed.
pub fn collect(layout: &Layout, keep: &BTreeSet<String>) -> Result<Vec<String>> {
    let base = dir(layout);
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(&base) else {
        return Ok(removed);
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".changed-") || keep.contains(&name) {
            continue;
        }
        let path = e.path();
        let is_dir = std::fs::symlink_metadata(&path)
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if is_dir {
            fsutil::remove_tree(&path)?;
        } else {
            std::fs::remove_file(&path).map_err(io_at(&path))?;
        }
        removed.push(name);
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoker_format::manifest::{Arch, Manifest};

    /// A store entry under `root/store/<name>` holding `files` (path, content).
    fn entry(root: &Path, name: &str, files: &[(&str, &str)]) -> StoreEntry {
        let path = root.join("store").join(name);
        let mut manifest = Manifest::skeleton("shop", "1.0.0", Arch::Amd64, "prod");
        for (rel, text) in files {
            let p = path.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
            manifest.files.push(FileEntry {
                path: rel.to_string(),
                size: text.len() as u64,
                sha256: sha256_hex(text.as_bytes()),
                mode: 0o644,
            });
        }
        StoreEntry {
            path,
            name: name.to_string(),
            manifest,
            manifest_sha256: sha256_hex(name.as_bytes()),
        }
    }

    /// `compose config` output of compose v1 mounting the entry's init directory into `db`.
    fn resolved(e: &StoreEntry) -> Resolved {
        Resolved::parse(&format!(
            "version: '3.8'\nservices:\n  db:\n    image: x\n    volumes:\n    - {}/stack/init:/init:ro\n    - data:/data:rw\n  web:\n    image: y\n",
            e.path.display()
        ))
        .expect("parse")
    }

    fn override_json(p: &Prepared) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&p.override_file).expect("override")).expect("json")
    }

    #[test]
    fn same_content_same_path_other_content_other_path_and_label() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let v1 = entry(
            dir.path(),
            "a-shop-1",
            &[("stack/init/01.js", "one\n"), ("stack/compose.yaml", "a\n")],
        );
        // Another release: the compose file changed, the init directory did not.
        let v2 = entry(
            dir.path(),
            "b-shop-2",
            &[("stack/init/01.js", "one\n"), ("stack/compose.yaml", "b\n")],
        );
        let v3 = entry(
            dir.path(),
            "c-shop-3",
            &[("stack/init/01.js", "two\n"), ("stack/compose.yaml", "b\n")],
        );
        let p1 = prepare(&layout, &v1, &resolved(&v1), "shop").expect("prepare 1");
        let p2 = prepare(&layout, &v2, &resolved(&v2), "shop").expect("prepare 2");
        let p3 = prepare(&layout, &v3, &resolved(&v3), "shop").expect("prepare 3");
        let (o1, o2, o3) = (override_json(&p1), override_json(&p2), override_json(&p3));
        let source = |o: &serde_json::Value| o["services"]["db"]["volumes"][0].clone();
        assert_eq!(source(&o1), source(&o2), "unchanged content keeps its path");
        assert_ne!(
            source(&o1),
            source(&o3),
            "changed content gets another path"
        );
        let label = |o: &serde_json::Value| o["services"]["db"]["labels"][INPUTS_LABEL].clone();
        assert_eq!(label(&o1), label(&o2));
        assert_ne!(
            label(&o1),
            label(&o3),
            "a content change recreates the service"
        );
        assert_eq!(
            p1.override_file, p2.override_file,
            "same override, byte for byte"
        );
        // The short form keeps its mode; the copy is the bundle's bytes, read-only.
        let s = source(&o1);
        let s = s.as_str().expect("short form");
        assert!(s.ends_with(":/init:ro"), "{s}");
        let copy = Path::new(s.trim_end_matches(":/init:ro")).join("01.js");
        assert_eq!(std::fs::read_to_string(&copy).expect("copy"), "one\n");
        assert!(
            std::fs::metadata(&copy)
                .expect("meta")
                .permissions()
                .readonly()
        );
        // Every service is labelled with its root and profile and never pulls; the named volume
        // is left to the user's file; v1's version is repeated.
        assert_eq!(o1["version"], "3.8");
        for svc in ["db", "web"] {
            assert_eq!(o1["services"][svc]["pull_policy"], "never");
            assert_eq!(o1["services"][svc]["labels"][PROFILE_LABEL], "shop");
            assert_eq!(
                o1["services"][svc]["labels"][ROOT_LABEL],
                dir.path().display().to_string()
            );
        }
        assert_eq!(
            o1["services"]["db"]["volumes"].as_array().map(Vec::len),
            Some(1)
        );
        assert!(o1["services"]["web"].get("volumes").is_none());

        // gc keeps what is named and removes the rest.
        let keep: BTreeSet<String> = names(&p3).into_iter().collect();
        let removed = collect(&layout, &keep).expect("collect");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(p3.override_file.is_file() && !p1.override_file.exists());
    }

    #[test]
    fn a_copy_something_wrote_into_is_kept_aside_and_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let e = entry(dir.path(), "a-shop-1", &[("stack/init/01.js", "one\n")]);
        let p = prepare(&layout, &e, &resolved(&e), "shop").expect("prepare");
        let key = p.keys.iter().next().expect("a key").clone();
        let copy = dir.path().join("inputs").join(&key).join("init");
        crate::fsutil::make_writable(&copy).expect("writable");
        std::fs::write(copy.join("pid"), "42").expect("a container writes");
        let again = prepare(&layout, &e, &resolved(&e), "shop").expect("prepare again");
        assert_eq!(again.keys, p.keys, "same content address");
        assert_eq!(again.notes.len(), 1, "{:?}", again.notes);
        assert!(
            again.notes[0].contains("was changed on disk"),
            "{:?}",
            again.notes
        );
        assert!(!copy.join("pid").exists(), "fresh copy");
        assert_eq!(
            std::fs::read_to_string(copy.join("01.js")).expect("copy"),
            "one\n"
        );
        let aside: Vec<_> = std::fs::read_dir(dir.path().join("inputs"))
            .expect("inputs")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".changed-"))
            .collect();
        assert_eq!(aside.len(), 1, "the changed copy is kept");
        assert!(aside[0].path().join("init/pid").is_file());
    }
}
