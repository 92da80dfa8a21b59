//! Bringing a stored generation up: its environment, `compose up`, and the health gate.
//!
//! Shared by apply, rollback and recovery, so the way a generation is started is the same
//! whichever of them switched to it.

use crate::error::{Error, Result};
use crate::fault;
use crate::health::{self, Report};
use crate::hostenv;
use crate::layout::Layout;
use crate::profile::Profile;
use crate::runtime::{Runtime, Stack};
use crate::store::{self, StoreEntry};
use smoker_format::manifest::Manifest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The env file a profile uses: the one given, else the one it used last, else
/// `/etc/smoker/<profile>.env`.
pub fn env_file_for(profile: &str, explicit: Option<&Path>, remembered: Option<&Path>) -> PathBuf {
    explicit
        .or(remembered)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| hostenv::default_env_file(profile))
}

/// The env file a recorded profile uses.
pub fn profile_env_file(profile: &Profile) -> PathBuf {
    env_file_for(&profile.state.name, None, profile.state.env_file.as_deref())
}

/// Environment for a store entry with the profile's host env file.
pub fn entry_env(entry: &StoreEntry, env_file: &Path) -> Result<BTreeMap<String, String>> {
    let host = hostenv::read_host(env_file)?;
    hostenv::stack_env(
        &entry.path,
        entry.manifest.compose.env_file.as_deref(),
        &host,
    )
}

/// The store entry of recorded generation `n` of `profile`, checked against the store journal
/// and the manifest hash the generation recorded: a damaged entry is refused
/// ([`store::check`]) rather than started.
pub fn generation_entry(layout: &Layout, profile: &Profile, n: u32) -> Result<StoreEntry> {
    let g = profile
        .generation(n)
        .ok_or_else(|| Error::State(format!("generation {n} is not recorded")))?;
    let entry = store::open(layout, &g.store)?;
    store::check(&entry, Some(&g.manifest_sha256)).map_err(|e| match e {
        Error::State(m) => Error::State(format!("generation {n}: {m}")),
        other => other,
    })?;
    Ok(entry)
}

/// Starts generation `entry` under `project` and runs the health gate.
pub fn activate(
    runtime: &Runtime,
    project: &str,
    entry: &StoreEntry,
    env: &BTreeMap<String, String>,
    fault_after_up: &str,
) -> Result<Report> {
    let stack = Stack {
        project,
        dir: &entry.path,
        manifest: &entry.manifest,
        env,
    };
    runtime.up(&stack)?;
    fault::point(fault_after_up);
    Ok(gate(runtime, project, &entry.manifest))
}

/// Runs the health gate for a manifest's stack.
pub fn gate(runtime: &Runtime, project: &str, manifest: &Manifest) -> Report {
    let services: Vec<String> = manifest.images.iter().map(|i| i.service.clone()).collect();
    let expected: BTreeMap<String, String> = manifest
        .images
        .iter()
        .filter_map(|i| i.config_digest.clone().map(|d| (i.service.clone(), d)))
        .collect();
    health::gate(runtime, project, &manifest.health, &services, &expected)
}
