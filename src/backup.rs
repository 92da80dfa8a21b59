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
    /// Why: `pre-migration`, `pre-apply` (a host that backs up before every apply) or
    /// `on-demand`.
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
    crate::fsutil::private_dir(&d)?;
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
        let f = crate::fsutil::open_private(&tmp, crate::fsutil::Private::Truncate)?;
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

/// Checks a backup just taken: the dump is read back from disk against its recorded digest
/// and size and, when the recipe declares a `verify` hook, fed to that command in the hook's
/// service container, which must exit 0. Returns a sentence saying what was checked; an
/// error names the backup and what failed.
pub fn verify(
    layout: &Layout,
    runtime: &Runtime,
    stack: &Stack<'_>,
    hooks: &Hooks,
    record: &Record,
) -> Result<String> {
    let path = dir(layout, &stack.manifest.name).join(&record.file);
    let (sha, size) = smoker_format::digest::sha256_file(&path).map_err(io_at(&path))?;
    if sha != record.sha256 || size != record.size {
        return Err(Error::State(format!(
            "backup {} read back from {} does not match what was written (sha256 {sha}, {size} bytes; recorded {} and {} bytes): the disk may be failing; nothing was changed",
            record.id,
            path.display(),
            record.sha256,
            record.size
        )));
    }
    if hooks.verify.is_empty() {
        return Ok(format!(
            "backup {} read back intact ({size} bytes); the recipe declares no verify hook, so its content was not checked",
            record.id
        ));
    }
    let mut f = std::io::BufReader::new(std::fs::File::open(&path).map_err(io_at(&path))?);
    runtime
        .exec_from(stack, &hooks.service, &hooks.verify, &mut f)
        .map_err(|e| {
            Error::Runtime(format!(
                "backup {} failed its verify hook (`{}` in service `{}`): {e}; nothing was changed — the dump is kept at {} for inspection",
                record.id,
                hooks.verify.join(" "),
                hooks.service,
                path.display()
            ))
        })?;
    Ok(format!(
        "backup {} verified: read back intact ({size} bytes) and accepted by `{}`",
        record.id,
        hooks.verify.join(" ")
    ))
}

/// Which backups retention keeps and which it removes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retention {
    /// Ids of the backups kept.
    pub kept: BTreeSet<String>,
    /// Ids of the backups removed, oldest first (the order of the index).
    pub removed: Vec<String>,
}

/// Decides retention over `backups` (oldest first, as in the index): the newest `keep` stay,
/// and so does the newest backup of each generation in `protect`, however old. "Newest" is the
/// position in the index, not the recorded time, so backups taken within the same second
/// keep the order they were taken in. `keep` 0 keeps only the protected ones.
pub fn retention(backups: &[Record], keep: usize, protect: &BTreeSet<u32>) -> Retention {
    let mut protected: BTreeSet<&str> = BTreeSet::new();
    for g in protect {
        if let Some(b) = backups.iter().rev().find(|b| b.generation == *g) {
            protected.insert(&b.id);
        }
    }
    let mut kept = BTreeSet::new();
    for (i, b) in backups.iter().rev().enumerate() {
        if i < keep || protected.contains(b.id.as_str()) {
            kept.insert(b.id.clone());
        }
    }
    let removed = backups
        .iter()
        .filter(|b| !kept.contains(&b.id))
        .map(|b| b.id.clone())
        .collect();
    Retention { kept, removed }
}

/// Deletes backups beyond `keep`, newest first, but never the newest backup of a generation in
/// `protect` (the data a kept generation would need); see [`retention`]. Returns the ids
/// removed.
pub fn prune(
    layout: &Layout,
    profile: &str,
    keep: usize,
    protect: &BTreeSet<u32>,
) -> Result<Vec<String>> {
    let mut index = list(layout, profile)?;
    let decision = retention(&index.backups, keep, protect);
    let d = dir(layout, profile);
    for b in &index.backups {
        if !decision.kept.contains(&b.id) {
            let p = d.join(&b.file);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(&p)(e)),
            }
        }
    }
    index.backups.retain(|b| decision.kept.contains(&b.id));
    save(layout, profile, &index)?;
    Ok(decision.removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, generation: u32, created: &str) -> Record {
        Record {
            id: id.into(),
            file: format!("{id}.sql"),
            sha256: String::new(),
            size: 1,
            created: created.into(),
            generation,
            ledger: Vec::new(),
            reason: "pre-migration".into(),
        }
    }

    /// Backups `b1`..`bN` taken a minute apart, of the given generations.
    fn series(generations: &[u32]) -> Vec<Record> {
        generations
            .iter()
            .enumerate()
            .map(|(i, g)| {
                rec(
                    &format!("b{}", i + 1),
                    *g,
                    &format!("2026-01-01T00:{:02}:00Z", i),
                )
            })
            .collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn gens(g: &[u32]) -> BTreeSet<u32> {
        g.iter().copied().collect()
    }

    #[test]
    fn keeps_the_newest_n_and_removes_the_rest_oldest_first() {
        let r = retention(&series(&[1, 1, 2, 2, 3]), 2, &gens(&[]));
        assert_eq!(r.kept, set(&["b4", "b5"]));
        assert_eq!(r.removed, ["b1", "b2", "b3"]);
    }

    #[test]
    fn n_zero_keeps_only_the_newest_backup_of_each_protected_generation() {
        let backups = series(&[1, 1, 2, 3, 3]);
        let r = retention(&backups, 0, &gens(&[1, 3]));
        assert_eq!(r.kept, set(&["b2", "b5"]));
        assert_eq!(r.removed, ["b1", "b3", "b4"]);
        let r = retention(&backups, 0, &gens(&[]));
        assert!(r.kept.is_empty());
        assert_eq!(r.removed, ["b1", "b2", "b3", "b4", "b5"]);
    }

    #[test]
    fn several_backups_of_a_kept_generation_leave_only_its_newest_beyond_n() {
        // Generation 2 has three backups, all outside the newest two.
        let r = retention(&series(&[2, 2, 2, 4, 4]), 2, &gens(&[2, 4]));
        assert_eq!(r.kept, set(&["b3", "b4", "b5"]));
        assert_eq!(r.removed, ["b1", "b2"]);
    }

    #[test]
    fn backups_of_generations_no_longer_kept_get_no_protection() {
        // gc removed generations 1 and 2; only 3 is left.
        let r = retention(&series(&[1, 2, 1, 2, 3, 2]), 1, &gens(&[3]));
        assert_eq!(r.kept, set(&["b5", "b6"]));
        assert_eq!(r.removed, ["b1", "b2", "b3", "b4"]);
    }

    #[test]
    fn a_protected_backup_among_the_newest_n_does_not_widen_the_window() {
        let r = retention(&series(&[1, 2, 3, 4]), 2, &gens(&[4]));
        assert_eq!(r.kept, set(&["b3", "b4"]));
        // A protected generation without any backup protects nothing.
        let r = retention(&series(&[1, 2, 3, 4]), 2, &gens(&[9]));
        assert_eq!(r.kept, set(&["b3", "b4"]));
    }

    #[test]
    fn order_is_the_index_order_even_when_timestamps_tie_or_disagree() {
        let backups = vec![
            rec("x", 1, "2026-01-01T00:00:00Z"),
            rec("y", 2, "2026-01-01T00:00:00Z"),
            rec("z", 3, "2026-01-01T00:00:00Z"),
            // Recorded after `z` although its clock said earlier (the clock was set back).
            rec("w", 4, "2025-12-31T00:00:00Z"),
        ];
        let r = retention(&backups, 2, &gens(&[]));
        assert_eq!(r.kept, set(&["z", "w"]));
        assert_eq!(r.removed, ["x", "y"]);
        // Of two backups of one generation with the same time, the later in the index counts
        // as its newest.
        let backups = vec![
            rec("p", 1, "2026-01-01T00:00:00Z"),
            rec("q", 1, "2026-01-01T00:00:00Z"),
            rec("r", 2, "2026-01-01T00:00:01Z"),
        ];
        let r = retention(&backups, 1, &gens(&[1]));
        assert_eq!(r.kept, set(&["q", "r"]));
        assert_eq!(r.removed, ["p"]);
    }

    #[test]
    fn keep_beyond_the_count_removes_nothing() {
        let r = retention(&series(&[1, 2]), 10, &gens(&[]));
        assert_eq!(r.kept, set(&["b1", "b2"]));
        assert!(r.removed.is_empty());
        assert_eq!(retention(&[], 3, &gens(&[1])), Retention::default());
    }

    #[test]
    fn prune_deletes_the_files_and_rewrites_the_index() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let backups = series(&[1, 2, 2, 3]);
        let d = dir(&layout, "web");
        std::fs::create_dir_all(&d).expect("dir");
        for b in &backups[1..] {
            // b1's file is already gone: pruning it is not an error.
            std::fs::write(d.join(&b.file), b"dump").expect("dump");
        }
        save(&layout, "web", &Index { backups }).expect("save");

        let removed = prune(&layout, "web", 1, &gens(&[2])).expect("prune");
        assert_eq!(removed, ["b1", "b2"]);
        let ids: Vec<String> = list(&layout, "web")
            .expect("list")
            .backups
            .into_iter()
            .map(|b| b.id)
            .collect();
        assert_eq!(ids, ["b3", "b4"]);
        assert!(!d.join("b2.sql").exists());
        assert!(d.join("b3.sql").exists() && d.join("b4.sql").exists());
    }

    #[test]
    fn a_missing_index_is_empty_and_a_corrupt_one_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        assert!(list(&layout, "web").expect("list").backups.is_empty());
        let d = dir(&layout, "web");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("index.json"), b"{not json").expect("write");
        match list(&layout, "web") {
            Err(Error::State(m)) => assert!(
                m.contains(&d.join("index.json").display().to_string()) && m.contains("corrupt"),
                "{m}"
            ),
            other => panic!("expected a state error, got {other:?}"),
        }
    }
}
