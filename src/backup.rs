//! Data backups: dumps taken through the recipe's backup hook, kept with their hash, restored
//! through its restore hook.
//!
//! `backups/<profile>/<timestamp>-gen<N>.<ext>` plus `index.json`. Each backup records the
//! generation whose data it holds and the migration ledger at that moment, which is what lets
//! a rollback across migrations restore the matching data.

use crate::error::{Error, Result, io_at};
use crate::fsutil;
use crate::layout::Layout;
use crate::runtime::{Runtime, Stack};
use serde::{Deserialize, Serialize};
use smoker_format::manifest::Backup as Hooks;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::PathBuf;

/// One backup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Identifier: the file name without extension, `<timestamp>-gen<N>`.
    pub id: String,
    /// File name inside the profile's backup directory.
    pub file: String,
    /// sha256 of the dump.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was taken (RFC 3339).
    pub created: String,
    /// The generation whose data it holds.
    pub generation: u32,
    /// Migration ids applied to the data at that moment.
    pub ledger: Vec<String>,
    /// Why: `pre-migration` or `on-demand`.
    pub reason: String,
}

/// The backups of one profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Index {
    /// Backups, oldest first.
    pub backups: Vec<Record>,
}

fn dir(layout: &Layout, profile: &str) -> PathBuf {
    layout.root().join("backups").join(profile)
}

/// Reads a profile's backup index.
pub fn list(layout: &Layout, profile: &str) -> Result<Index> {
    let p = dir(layout, profile).join("index.json");
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::State(format!("{} is corrupt: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
        Err(e) => Err(io_at(&p)(e)),
    }
}

fn save(layout: &Layout, profile: &str, index: &Index) -> Result<()> {
    let p = dir(layout, profile).join("index.json");
    fsutil::write_atomic(
        &p,
        &serde_json::to_vec_pretty(index).unwrap_or_default(),
        0o600,
    )
}

/// Takes a backup of the running stack through `hooks.command`. An empty or failed dump is an
/// error and leaves nothing behind.
pub fn take(
    layout: &Layout,
    runtime: &Runtime,
    stack: &Stack<'_>,
    hooks: &Hooks,
    generation: u32,
    ledger: Vec<String>,
    reason: &str,
) -> Result<Record> {
    let d = dir(layout, stack.manifest.name.as_str());
    std::fs::create_dir_all(&d).map_err(io_at(&d))?;
    let now = std::time::SystemTime::now();
    let stamp = humantime::format_rfc3339_millis(now)
        .to_string()
        .replace([':', '.'], "")
        .replace('-', "");
    let id = format!("{stamp}-gen{generation}");
    let file = format!("{id}.{}", hooks.extension);
    let path = d.join(&file);
    let tmp = d.join(format!(".{file}.partial"));
    let result = (|| -> Result<(String, u64)> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        let mut hw = smoker_format::digest::HashingWriter::new(std::io::BufWriter::new(f));
        runtime.exec_to(stack, &hooks.service, &hooks.command, &mut hw)?;
        hw.flush().map_err(io_at(&tmp))?;
        let (sha, size) = hw.finish();
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&tmp))?;
        Ok((sha, size))
    })();
    let (sha256, size) = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::Runtime(format!(
                "backup of `{}` failed, nothing was changed: {e}",
                stack.manifest.name
            )));
        }
    };
    if size == 0 {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::Runtime(format!(
            "backup of `{}` is empty (`{}` in service `{}` wrote nothing); nothing was changed — fix the backup hook",
            stack.manifest.name,
            hooks.command.join(" "),
            hooks.service
        )));
    }
    std::fs::rename(&tmp, &path).map_err(io_at(&path))?;
    fsutil::fsync_dir(&d)?;
    let record = Record {
        id,
        file,
        sha256,
        size,
        created: humantime::format_rfc3339_seconds(now).to_string(),
        generation,
        ledger,
        reason: reason.to_string(),
    };
    let mut index = list(layout, &stack.manifest.name)?;
    index.backups.push(record.clone());
    save(layout, &stack.manifest.name, &index)?;
    Ok(record)
}

/// Restores a backup into the running stack through `hooks.restore`, after checking the dump's
/// hash.
pub fn restore(
    layout: &Layout,
    runtime: &Runtime,
    stack: &Stack<'_>,
    hooks: &Hooks,
    record: &Record,
) -> Result<()> {
    let path = dir(layout, &stack.manifest.name).join(&record.file);
    let (sha, _) = smoker_format::digest::sha256_file(&path).map_err(io_at(&path))?;
    if sha != record.sha256 {
        return Err(Error::State(format!(
            "backup {} does not match its recorded sha256 (the file was changed or damaged); not restoring it",
            record.id
        )));
    }
    let mut f = std::io::BufReader::new(std::fs::File::open(&path).map_err(io_at(&path))?);
    runtime.exec_from(stack, &hooks.service, &hooks.restore, &mut f)
}

/// Deletes backups beyond `keep`, newest first, but never the newest backup of a generation in
/// `protect` (the data a kept generation would need). Returns the ids removed.
pub fn prune(
    layout: &Layout,
    profile: &str,
    keep: usize,
    protect: &BTreeSet<u32>,
) -> Result<Vec<String>> {
    let mut index = list(layout, profile)?;
    let mut protected: BTreeSet<String> = BTreeSet::new();
    for g in protect {
        if let Some(b) = index.backups.iter().rev().find(|b| b.generation == *g) {
            protected.insert(b.id.clone());
        }
    }
    let mut kept = 0usize;
    let mut keep_ids = BTreeSet::new();
    for b in index.backups.iter().rev() {
        if kept < keep || protected.contains(&b.id) {
            keep_ids.insert(b.id.clone());
            kept += 1;
        }
    }
    let mut removed = Vec::new();
    let d = dir(layout, profile);
    for b in &index.backups {
        if !keep_ids.contains(&b.id) {
            let p = d.join(&b.file);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&p)(e)),
            }
            removed.push(b.id.clone());
        }
    }
    index.backups.retain(|b| keep_ids.contains(&b.id));
    save(layout, profile, &index)?;
    Ok(removed)
}
