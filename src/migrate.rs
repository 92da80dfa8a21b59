//! Ordered migrations and the ledger of those applied on this host.
//!
//! `profiles/<name>/migrations.json` records each applied migration (id, checksum, time,
//! generation). A migration is applied once; an applied id whose script changed is an error
//! before anything else happens.

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::runtime::{Runtime, Stack};
use serde::{Deserialize, Serialize};
use smoker_format::manifest::Manifest;
use std::path::Path;

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
    /// order. An applied migration whose checksum changed is an error.
    pub fn pending<'m>(
        &self,
        m: &'m Manifest,
    ) -> Result<Vec<&'m smoker_format::manifest::Migration>> {
        let mut out = Vec::new();
        for mig in &m.migrations {
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
        self.applied
            .iter()
            .filter(|a| !m.migrations.iter().any(|x| x.id == a.id))
            .map(|a| a.id.clone())
            .collect()
    }
}

/// Runs one migration in a one-off container of the runner service.
pub fn run(
    runtime: &Runtime,
    stack: &Stack<'_>,
    entry_dir: &Path,
    mig: &smoker_format::manifest::Migration,
) -> Result<String> {
    let runner =
        stack.manifest.migration_runner.as_ref().ok_or_else(|| {
            Error::Policy("the bundle has migrations but no migration runner".into())
        })?;
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
    let dir = entry_dir.join(
        Path::new(&mig.path)
            .parent()
            .unwrap_or(Path::new("migrations")),
    );
    runtime
        .run_oneoff(stack, &runner.service, &dir, MOUNT, &command)
        .map_err(|e| Error::Runtime(format!("migration {} failed: {e}", mig.id)))
}
