//! Bringing a stored generation up: its environment, `compose up`, and the health gate.
//!
//! Shared by apply, rollback and recovery, so the way a generation is started is the same
//! whichever of them switched to it.

use crate::error::{Error, Result};
use crate::fault;
use crate::health::{self, Gate, Report, Verdict};
use crate::hostenv;
use crate::inputs::{self, Prepared};
use crate::layout::Layout;
use crate::profile::Profile;
use crate::runtime::{Resolved, Runtime, Stack};
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

/// What a generation needs to be started: where, under which project, with which variables.
pub struct Target<'a> {
    /// Host layout (for the inputs).
    pub layout: &'a Layout,
    /// The generation's store entry.
    pub entry: &'a StoreEntry,
    /// Compose project name.
    pub project: &'a str,
    /// Profile name (labels the containers).
    pub profile: &'a str,
    /// Variables for interpolation.
    pub env: &'a BTreeMap<String, String>,
}

impl Target<'_> {
    /// The stack as the bundle alone describes it (no host override).
    pub fn bare_stack(&self) -> Stack<'_> {
        Stack {
            project: self.project,
            dir: &self.entry.path,
            manifest: &self.entry.manifest,
            env: self.env,
            overrides: &[],
        }
    }
}

/// Reads the resolved compose configuration (once) when the caller has none, puts the
/// generation's inputs in place by content ([`inputs::prepare`]) and records what it uses in
/// generation `number` of `profile`, all under the gc lock so no gc removes them in between.
pub fn prepare(
    runtime: &Runtime,
    t: &Target<'_>,
    resolved: Option<Resolved>,
    profile: &mut Profile,
    number: u32,
) -> Result<Prepared> {
    let storing = crate::gc::storing(t.layout)?;
    let prepared = inputs_for(runtime, t, resolved)?;
    if let Some(g) = profile.generation_mut(number) {
        g.inputs = inputs::names(&prepared);
    }
    profile.save()?;
    drop(storing);
    Ok(prepared)
}

/// The generation's inputs put in place ([`inputs::prepare`]), from `resolved` or, when the
/// caller has none, from one `compose config` of the bundle's files. The caller holds the gc
/// lock (shared) until a generation records them.
pub fn inputs_for(
    runtime: &Runtime,
    t: &Target<'_>,
    resolved: Option<Resolved>,
) -> Result<Prepared> {
    let resolved = match resolved {
        Some(r) => r,
        None => runtime.config(&t.bare_stack())?,
    };
    inputs::prepare(t.layout, t.entry, &resolved, t.profile)
}

/// Starts generation `number` of `profile` (its entry, project and variables in `t`) and runs
/// the health gate while compose creates the containers (see [`up_and_gate`]).
pub fn activate(
    runtime: &Runtime,
    t: &Target<'_>,
    profile: &mut Profile,
    number: u32,
    fault_after_up: &str,
) -> Result<Report> {
    let prepared = prepare(runtime, t, None, profile, number)?;
    let overrides = [prepared.override_file.clone()];
    let stack = Stack {
        overrides: &overrides,
        ..t.bare_stack()
    };
    Ok(up_and_gate(runtime, &stack, fault_after_up))
}

/// `compose up` in the background with the health gate watching from the first second: each
/// round also asks whether compose has finished. When the gate decides the stack is unhealthy
/// while compose still runs (a service compose waits on as `service_healthy` answers wrongly),
/// compose is stopped at once. When compose fails, its text is returned with every container
/// ID it mentions named by service, after what the gate saw.
pub fn up_and_gate(runtime: &Runtime, stack: &Stack<'_>, fault_after_up: &str) -> Report {
    let manifest = stack.manifest;
    let services: Vec<String> = manifest.images.iter().map(|i| i.service.clone()).collect();
    let expected = expected_images(manifest);
    let mut gate = Gate::new(
        runtime,
        stack.project,
        &manifest.health,
        &services,
        &expected,
    );
    let mut up = match runtime.start_up(stack) {
        Ok(up) => Some(up),
        Err(e) => return Report::failed(format!("compose up failed: {e}")),
    };
    loop {
        if let Some(u) = up.as_mut() {
            match u.poll() {
                Ok(None) => {}
                Ok(Some(Ok(()))) => {
                    up = None;
                    gate.compose_finished();
                    fault::point(fault_after_up);
                }
                Ok(Some(Err(text))) => {
                    return compose_failed(&mut gate, &text);
                }
                Err(e) => return Report::failed(format!("compose up failed: {e}")),
            }
        }
        match gate.round() {
            Verdict::Pending => {}
            Verdict::Healthy(r) => return r,
            Verdict::Unhealthy(mut r) => {
                if let Some(u) = up.take() {
                    u.stop();
                    r.summary.push_str("; compose up was stopped");
                }
                return r;
            }
        }
        // Sleep the interval, but notice compose finishing sooner.
        let until = std::time::Instant::now() + gate.interval();
        while std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(50));
            if let Some(u) = up.as_mut()
                && matches!(u.poll(), Ok(Some(_)) | Err(_))
            {
                // Decided on the next pass through the loop (poll answers again).
                break;
            }
        }
    }
}

/// The report when compose itself failed: what the gate sees now (which service is unhealthy,
/// exited or missing), then compose's text with its container IDs named.
fn compose_failed(gate: &mut Gate<'_>, text: &str) -> Report {
    gate.compose_finished();
    let seen = match gate.round() {
        Verdict::Unhealthy(r) | Verdict::Healthy(r) => r,
        Verdict::Pending => Report::failed(String::new()),
    };
    let failing: Vec<&crate::health::CheckResult> = seen.checks.iter().filter(|c| !c.ok).collect();
    let service = failing.iter().find_map(|c| c.service.clone());
    let what: Vec<String> = failing
        .iter()
        .map(|c| match &c.service {
            Some(s) => format!("service `{s}`: {}", c.detail),
            None => format!("{}: {}", c.name, c.detail),
        })
        .collect();
    let named = crate::runtime::name_containers(text, gate.containers());
    let summary = if what.is_empty() {
        format!("compose up failed: {named}")
    } else {
        format!("compose up failed ({}): {named}", what.join("; "))
    };
    Report {
        service,
        service_running_ms: seen.service_running_ms,
        checks: seen.checks,
        rounds: seen.rounds,
        elapsed_ms: seen.elapsed_ms,
        ..Report::failed(summary)
    }
}

fn expected_images(manifest: &Manifest) -> BTreeMap<String, String> {
    manifest
        .images
        .iter()
        .filter_map(|i| i.config_digest.clone().map(|d| (i.service.clone(), d)))
        .collect()
}

/// Runs the health gate for a manifest's stack that compose has already started.
pub fn gate(runtime: &Runtime, project: &str, manifest: &Manifest) -> Report {
    let services: Vec<String> = manifest.images.iter().map(|i| i.service.clone()).collect();
    let expected = expected_images(manifest);
    health::gate(runtime, project, &manifest.health, &services, &expected)
}
