//! Ordered migrations and the ledger of those applied on this host.
//!
//! `profiles/<name>/migrations.json` records each applied migration (id, checksum, time,
//! generation). A migration is applied once; an applied id whose script changed is an error
//! before anything else happens.

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::runtime::{Runtime, Stack};
use serde::{Deserialize, Serialize};
use smoker_format::manifest::{Manifest, Migration, Runner};
use std::path::{Path, PathBuf};

/// Where a migration script is mounted in the runner container.
pub const MOUNT: &str = "/smoker/migrations";

/// One applied migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Migration id.
    pub id: String,
    /// sha256 of the script.
    pub sha256: String,
    /// When (RFC 3339).
    pub applied_at: String,
    /// Generation that applied it.
    pub generation: u32,
}

/// The ledger of a profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Applied migrations, in order.
    pub applied: Vec<Applied>,
}

impl Ledger {
    fn path(layout: &Layout, profile: &str) -> std::path::PathBuf {
        layout.profile(profile).join("migrations.json")
    }

    /// Loads a profile's ledger.
    pub fn load(layout: &Layout, profile: &str) -> Result<Ledger> {
        let p = Self::path(layout, profile);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::State(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(io_at(&p)(e)),
        }
    }

    /// Saves it atomically.
    pub fn save(&self, layout: &Layout, profile: &str) -> Result<()> {
        crate::fsutil::write_atomic(
            &Self::path(layout, profile),
            &serde_json::to_vec_pretty(self).unwrap_or_default(),
            0o644,
        )
    }

    /// Ids applied, in order.
    pub fn ids(&self) -> Vec<String> {
        self.applied.iter().map(|a| a.id.clone()).collect()
    }

    /// Checks the manifest against the ledger and returns the migrations still to run, in
    /// order. An applied migration whose checksum changed is an error. See [`Ledger::pending_of`].
    pub fn pending<'m>(&self, m: &'m Manifest) -> Result<Vec<&'m Migration>> {
        self.pending_of(&m.migrations)
    }

    /// The migrations of `migrations` (a bundle's, in its order) not applied here, in that
    /// order. An applied id whose script changed (another sha256) is an [`Error::Policy`]
    /// naming it, whatever else is pending. Applied ids the bundle does not list are not
    /// looked at here (see [`Ledger::unknown_to`]); an id the bundle lists before an applied
    /// one but which was never applied is pending like any other.
    pub fn pending_of<'m>(&self, migrations: &'m [Migration]) -> Result<Vec<&'m Migration>> {
        let mut out = Vec::new();
        for mig in migrations {
            match self.applied.iter().find(|a| a.id == mig.id) {
                Some(a) if a.sha256 != mig.sha256 => {
                    return Err(Error::Policy(format!(
                        "migration {} was already applied on this host with checksum {}, but this bundle carries a different script ({}); applied migrations must never change — add a new migration instead",
                        mig.id, a.sha256, mig.sha256
                    )));
                }
                Some(_) => {}
                None => out.push(mig),
            }
        }
        Ok(out)
    }

    /// Migrations applied here that `m` does not know (data newer than its code).
    pub fn newer_than(&self, m: &Manifest) -> Vec<String> {
        self.unknown_to(&m.migrations)
    }

    /// Ids applied here (in the ledger's order) that `migrations` does not list.
    pub fn unknown_to(&self, migrations: &[Migration]) -> Vec<String> {
        self.applied
            .iter()
            .filter(|a| !migrations.iter().any(|x| x.id == a.id))
            .map(|a| a.id.clone())
            .collect()
    }
}

/// How one migration runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The runner service whose image runs the script.
    pub service: String,
    /// Directory of the script, relative to the store entry, mounted read-only at [`MOUNT`].
    pub dir: PathBuf,
    /// The runner's command with `{script}` replaced by the script's path in the container.
    pub command: Vec<String>,
}

/// How `mig` runs with `runner` (the manifest's migration runner). A bundle with migrations
/// but no runner is an [`Error::Policy`].
pub fn invocation(runner: Option<&Runner>, mig: &Migration) -> Result<Invocation> {
    let runner = runner
        .ok_or_else(|| Error::Policy("the bundle has migrations but no migration runner".into()))?;
    let file = Path::new(&mig.path)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let script = format!("{MOUNT}/{file}");
    let command: Vec<String> = runner
        .command
        .iter()
        .map(|c| c.replace("{script}", &script))
        .collect();
    let dir = Path::new(&mig.path)
        .parent()
        .unwrap_or(Path::new("migrations"))
        .to_path_buf();
    Ok(Invocation {
        service: runner.service.clone(),
        dir,
        command,
    })
}

/// Runs one migration in a one-off container of the runner service.
pub fn run(
    runtime: &Runtime,
    stack: &Stack<'_>,
    entry_dir: &Path,
    mig: &Migration,
) -> Result<String> {
    let how = invocation(stack.manifest.migration_runner.as_ref(), mig)?;
    runtime
        .run_oneoff(
            stack,
            &how.service,
            &entry_dir.join(&how.dir),
            MOUNT,
            &how.command,
        )
        .map_err(|e| Error::Runtime(format!("migration {} failed: {e}", mig.id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn mig(id: &str, c: char) -> Migration {
        Migration {
            id: id.into(),
            path: format!("migrations/{id}.sql"),
            sha256: sha(c),
        }
    }

    fn ledger(applied: &[(&str, char)]) -> Ledger {
        Ledger {
            applied: applied
                .iter()
                .enumerate()
                .map(|(i, (id, c))| Applied {
                    id: id.to_string(),
                    sha256: sha(*c),
                    applied_at: "2026-01-01T00:00:00Z".into(),
                    generation: i as u32 + 1,
                })
                .collect(),
        }
    }

    fn ids(ms: &[&Migration]) -> Vec<String> {
        ms.iter().map(|m| m.id.clone()).collect()
    }

    fn bundle() -> Vec<Migration> {
        vec![
            mig("0001-create", 'a'),
            mig("0002-index", 'b'),
            mig("0003-upper", 'c'),
        ]
    }

    #[test]
    fn a_fresh_ledger_has_every_migration_pending_in_bundle_order() {
        let b = bundle();
        let pending = Ledger::default().pending_of(&b).expect("pending");
        assert_eq!(ids(&pending), ["0001-create", "0002-index", "0003-upper"]);
    }

    #[test]
    fn applied_migrations_are_not_pending_again() {
        let b = bundle();
        let l = ledger(&[("0001-create", 'a')]);
        assert_eq!(
            ids(&l.pending_of(&b).expect("pending")),
            ["0002-index", "0003-upper"]
        );
        let l = ledger(&[
            ("0001-create", 'a'),
            ("0002-index", 'b'),
            ("0003-upper", 'c'),
        ]);
        assert!(l.pending_of(&b).expect("pending").is_empty());
    }

    #[test]
    fn a_changed_script_of_an_applied_migration_is_refused_by_name() {
        let b = bundle();
        // 0002 was applied with another script; 0003 is pending, but nothing may run.
        let l = ledger(&[("0001-create", 'a'), ("0002-index", 'f')]);
        match l.pending_of(&b) {
            Err(Error::Policy(m)) => {
                assert!(
                    m.starts_with("migration 0002-index was already applied on this host"),
                    "{m}"
                );
                assert!(m.contains(&format!("with checksum {}", sha('f'))), "{m}");
                assert!(
                    m.contains(&format!("different script ({})", sha('b'))),
                    "{m}"
                );
                assert!(m.contains("add a new migration instead"), "{m}");
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
    }

    #[test]
    fn the_first_changed_script_in_bundle_order_is_the_one_named() {
        let b = bundle();
        let l = ledger(&[("0003-upper", 'x'), ("0001-create", 'y')]);
        let err = l.pending_of(&b).expect_err("changed scripts");
        assert!(
            err.to_string().starts_with("migration 0001-create "),
            "{err}"
        );
    }

    #[test]
    fn a_migration_listed_before_an_applied_one_is_still_pending() {
        // A script inserted into the sequence after later ones ran: it runs (after them).
        let b = bundle();
        let l = ledger(&[("0001-create", 'a'), ("0003-upper", 'c')]);
        assert_eq!(ids(&l.pending_of(&b).expect("pending")), ["0002-index"]);
    }

    #[test]
    fn applied_ids_a_bundle_does_not_know_are_reported_in_ledger_order() {
        let l = ledger(&[
            ("0001-create", 'a'),
            ("0002-index", 'b'),
            ("0004-split", 'd'),
            ("0003-upper", 'c'),
        ]);
        // The rollback target knows only the first two.
        let older = &bundle()[..2];
        assert_eq!(l.unknown_to(older), ["0004-split", "0003-upper"]);
        // pending_of does not look at them: nothing is pending for the older bundle.
        assert!(l.pending_of(older).expect("pending").is_empty());
        assert_eq!(l.unknown_to(&bundle()), ["0004-split"]);
        assert!(Ledger::default().unknown_to(&bundle()).is_empty());
        assert_eq!(
            l.ids(),
            ["0001-create", "0002-index", "0004-split", "0003-upper"]
        );
    }

    #[test]
    fn the_ledger_round_trips_and_a_corrupt_one_is_named() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        assert!(
            Ledger::load(&layout, "web")
                .expect("load")
                .applied
                .is_empty()
        );
        std::fs::create_dir_all(layout.profile("web")).expect("dir");
        let l = ledger(&[("0001-create", 'a'), ("0002-index", 'b')]);
        l.save(&layout, "web").expect("save");
        assert_eq!(
            Ledger::load(&layout, "web").expect("load").applied,
            l.applied
        );
        let path = layout.profile("web").join("migrations.json");
        std::fs::write(&path, b"[").expect("corrupt");
        match Ledger::load(&layout, "web") {
            Err(Error::State(m)) => {
                assert!(
                    m.contains(&path.display().to_string()) && m.contains("corrupt"),
                    "{m}"
                )
            }
            other => panic!("expected a state error, got {other:?}"),
        }
    }

    #[test]
    fn the_runner_command_gets_the_mounted_script_path() {
        let runner = Runner {
            service: "db".into(),
            command: vec![
                "sh".into(),
                "-c".into(),
                "psql -f {script} && echo done {script}".into(),
            ],
        };
        let how = invocation(Some(&runner), &mig("0002-index", 'b')).expect("invocation");
        assert_eq!(
            how,
            Invocation {
                service: "db".into(),
                dir: PathBuf::from("migrations"),
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "psql -f /smoker/migrations/0002-index.sql && echo done /smoker/migrations/0002-index.sql".into(),
                ],
            }
        );
        let nested = Migration {
            id: "0001".into(),
            path: "migrations/sql/0001.sql".into(),
            sha256: sha('a'),
        };
        let how = invocation(Some(&runner), &nested).expect("invocation");
        assert_eq!(how.dir, PathBuf::from("migrations/sql"));
        assert_eq!(
            how.command[2],
            "psql -f /smoker/migrations/0001.sql && echo done /smoker/migrations/0001.sql"
        );
    }

    #[test]
    fn migrations_without_a_runner_are_refused() {
        match invocation(None, &mig("0001-create", 'a')) {
            Err(Error::Policy(m)) => {
                assert_eq!(m, "the bundle has migrations but no migration runner")
            }
            other => panic!("expected a policy error, got {other:?}"),
        }
    }
}
