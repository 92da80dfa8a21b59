//! Rollouts: each host's bundle chosen from a release directory, copied over SSH, applied (or
//! staged) by the host's own `smoker-install --json`, and judged by its exit status and JSON
//! envelope.
//!
//! - **rolling**: batches of `batch` hosts (in parallel inside a batch); the next batch starts
//!   only when every host of the previous one is done, after `pause`; when failures exceed
//!   `max_failures`, the hosts not started yet are left untouched (`untouched` in the report).
//! - **immediate**: every host, at most `parallel` at a time; wait for all.
//! - **scheduled**: every host stages the bundle now (`smoker-install stage --window W`: verify
//!   and store, no switch); the host applies it inside its window itself.
//!
//! A host whose SSH does not answer is `offline` (it will update from the channel) and is no
//! failure unless `require_all`.

use crate::inventory::Host;
use crate::ssh::{SSH_FAILED, Ssh, command_line};
use serde::Serialize;
use smoker_build::publish::Newest;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How hosts are worked through.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "strategy", rename_all = "kebab-case")]
pub enum Strategy {
    /// Batches, stop on failures.
    Rolling {
        /// Hosts per batch.
        batch: usize,
        /// Pause between batches.
        #[serde(with = "millis")]
        pause: Duration,
        /// Failures tolerated before stopping.
        max_failures: usize,
    },
    /// All at once, bounded.
    Immediate {
        /// At most this many at a time.
        parallel: usize,
    },
    /// Stage now, the host applies inside the window.
    Scheduled {
        /// `HH:MM-HH:MM`, host time.
        window: String,
        /// At most this many at a time.
        parallel: usize,
    },
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// What a rollout is asked to do.
pub struct Options<'a> {
    /// The strategy.
    pub strategy: Strategy,
    /// An offline host counts as a failure.
    pub require_all: bool,
    /// SSH connect timeout in seconds.
    pub connect_timeout: u32,
    /// Called with (host, state) as each host moves on, for a progress display.
    pub progress: &'a (dyn Fn(&str, &str) + Sync),
}

/// A host's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new generation is committed.
    Committed,
    /// It already ran this bundle.
    Unchanged,
    /// Staged for its window.
    Staged,
    /// The new generation failed and was rolled back.
    RolledBack,
    /// Anything else went wrong.
    Failed,
    /// SSH did not answer.
    Offline,
    /// Not started: the rollout stopped before.
    Untouched,
}

impl Outcome {
    /// A failure for the rollout's verdict (offline only with `require_all`).
    pub fn is_failure(self, require_all: bool) -> bool {
        match self {
            Outcome::RolledBack | Outcome::Failed => true,
            Outcome::Offline => require_all,
            _ => false,
        }
    }
}

/// One host in the report.
#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    /// Host name.
    pub host: String,
    /// Profile.
    pub profile: String,
    /// Version serving before.
    pub old_version: Option<String>,
    /// Version of the bundle rolled out.
    pub new_version: Option<String>,
    /// Result.
    pub result: Outcome,
    /// Wall time for this host, ms.
    pub duration_ms: u64,
    /// Of which the remote `apply`/`stage` itself, ms.
    pub apply_ms: Option<u64>,
    /// The copy.
    pub copy: Option<crate::ssh::Copied>,
    /// Milliseconds per step on this host (`connect`, `status`, `copy`, `apply` or `stage`,
    /// `close`).
    pub steps_ms: std::collections::BTreeMap<String, u64>,
    /// The installer's exit status.
    pub exit_code: Option<i32>,
    /// What happened, in a sentence.
    pub message: String,
    /// The installer's JSON envelope.
    pub envelope: Option<serde_json::Value>,
}

/// The rollout's report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The strategy and its parameters.
    pub strategy: Strategy,
    /// Every host, in inventory order.
    pub hosts: Vec<HostReport>,
    /// Why the rollout stopped early, if it did.
    pub stopped: Option<String>,
    /// No failure (offline hosts count only with `require_all`).
    pub ok: bool,
    /// Total wall time, ms.
    pub duration_ms: u64,
}

/// The bundle for each host (`None`: the release directory has none for it).
pub fn pick<'h>(hosts: &'h [Host], newest: &Newest) -> Vec<(&'h Host, Option<PathBuf>)> {
    hosts
        .iter()
        .map(|h| {
            let key = (h.profile.clone(), h.arch.clone(), h.environment.clone());
            (h, newest.get(&key).map(|(_, p)| p.clone()))
        })
        .collect()
}

/// Runs the rollout over `plan` (from [`pick`]); `control_dir` holds SSH sockets.
pub fn run(plan: &[(&Host, Option<PathBuf>)], o: &Options<'_>, control_dir: &Path) -> Report {
    let t0 = Instant::now();
    let mut reports: Vec<Option<HostReport>> = vec![None; plan.len()];
    let mut stopped = None;
    let stage_window = match &o.strategy {
        Strategy::Scheduled { window, .. } => Some(window.clone()),
        _ => None,
    };
    let (chunk, pause, max_failures) = match &o.strategy {
        Strategy::Rolling {
            batch,
            pause,
            max_failures,
        } => ((*batch).max(1), *pause, Some(*max_failures)),
        Strategy::Immediate { parallel } | Strategy::Scheduled { parallel, .. } => {
            ((*parallel).max(1), Duration::ZERO, None)
        }
    };
    let mut failures = 0usize;
    let indices: Vec<usize> = (0..plan.len()).collect();
    for (n, batch) in indices.chunks(chunk).enumerate() {
        if n > 0 && !pause.is_zero() {
            std::thread::sleep(pause);
        }
        let done: Vec<(usize, HostReport)> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .iter()
                .map(|&i| {
                    let (host, bundle) = (&plan[i].0, &plan[i].1);
                    let w = stage_window.as_deref();
                    s.spawn(move || (i, deploy(host, bundle.as_deref(), w, o, control_dir)))
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        for (i, r) in done {
            if r.result.is_failure(o.require_all) {
                failures += 1;
            }
            reports[i] = Some(r);
        }
        let last = (n + 1) * chunk >= plan.len();
        if let Some(max) = max_failures
            && failures > max
            && !last
        {
            stopped = Some(format!(
                "stopped after {failures} failure(s) (--max-failures {max}); later hosts were left untouched"
            ));
            break;
        }
    }
    let hosts: Vec<HostReport> = reports
        .into_iter()
        .zip(plan)
        .map(|(r, (h, b))| {
            r.unwrap_or_else(|| {
                (o.progress)(&h.name, "untouched");
                HostReport {
                    host: h.name.clone(),
                    profile: h.profile.clone(),
                    old_version: None,
                    new_version: b.as_ref().and_then(|p| version_of_file(p)),
                    result: Outcome::Untouched,
                    duration_ms: 0,
                    apply_ms: None,
                    copy: None,
                    steps_ms: Default::default(),
                    exit_code: None,
                    message: "not started: the rollout stopped before this host".into(),
                    envelope: None,
                }
            })
        })
        .collect();
    let ok = !hosts.iter().any(|h| h.result.is_failure(o.require_all));
    Report {
        strategy: o.strategy.clone(),
        hosts,
        stopped,
        ok,
        duration_ms: t0.elapsed().as_millis() as u64,
    }
}

/// `<name>-<version>-<arch>.tar.zst` → version (for hosts never reached).
fn version_of_file(p: &Path) -> Option<String> {
    let stem = p.file_name()?.to_str()?.strip_suffix(".tar.zst")?;
    let mut parts: Vec<&str> = stem.rsplitn(3, '-').collect();
    parts.reverse();
    (parts.len() == 3).then(|| parts[1].to_string())
}

/// One host: reachable? old version, copy, apply (or stage), judged.
fn deploy(
    host: &Host,
    bundle: Option<&Path>,
    window: Option<&str>,
    o: &Options<'_>,
    control_dir: &Path,
) -> HostReport {
    let t0 = Instant::now();
    let ssh = Ssh::new(host, o.connect_timeout, control_dir);
    let mut r = HostReport {
        host: host.name.clone(),
        profile: host.profile.clone(),
        old_version: None,
        new_version: bundle.and_then(version_of_file),
        result: Outcome::Failed,
        duration_ms: 0,
        apply_ms: None,
        copy: None,
        steps_ms: Default::default(),
        exit_code: None,
        message: String::new(),
        envelope: None,
    };
    let mut clock = Instant::now();
    let mut lap = |r: &mut HostReport, step: &str| {
        r.steps_ms
            .insert(step.to_string(), clock.elapsed().as_millis() as u64);
        clock = Instant::now();
    };
    let progress = |s: &str| (o.progress)(&host.name, s);
    let finish = |mut r: HostReport, ssh: &Ssh<'_>| {
        let tc = Instant::now();
        ssh.close();
        r.steps_ms
            .insert("close".into(), tc.elapsed().as_millis() as u64);
        r.duration_ms = t0.elapsed().as_millis() as u64;
        (o.progress)(&r.host, &format!("{:?}: {}", r.result, r.message));
        r
    };
    progress("connecting");
    let reached = ssh.reachable();
    lap(&mut r, "connect");
    if let Err(e) = reached {
        r.result = Outcome::Offline;
        r.message = format!("unreachable over SSH ({e}); it will update from the channel");
        return finish(r, &ssh);
    }
    r.old_version = current_version(&ssh, host);
    lap(&mut r, "status");
    let Some(bundle) = bundle else {
        r.message = format!(
            "the release directory has no bundle for {} {} {}",
            host.profile, host.arch, host.environment
        );
        return finish(r, &ssh);
    };
    progress("copying");
    let (sha, size) = match smoker_format::digest::sha256_file(bundle) {
        Ok(x) => x,
        Err(e) => {
            r.message = format!("{}: {e}", bundle.display());
            return finish(r, &ssh);
        }
    };
    let name = bundle
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copied = ssh.copy_resumable(bundle, size, &sha, &host.remote_dir, &name);
    lap(&mut r, "copy");
    match copied {
        Ok(c) => r.copy = Some(c),
        Err(e) => {
            r.message = e;
            return finish(r, &ssh);
        }
    }
    let remote = format!("{}/{name}", host.remote_dir);
    let mut words = host.installer.clone();
    match window {
        Some(w) => {
            words.extend(["stage".into(), "--json".into(), "--window".into(), w.into()]);
            // `stage` takes the key options of apply but not the apply-only ones.
            words.extend(stage_args(&host.apply_args));
        }
        None => {
            words.extend(["apply".into(), "--json".into()]);
            words.extend(host.apply_args.iter().cloned());
        }
    }
    words.push(remote);
    progress(if window.is_some() {
        "staging"
    } else {
        "applying"
    });
    let ta = Instant::now();
    let out = ssh.run(&command_line(&words));
    r.apply_ms = Some(ta.elapsed().as_millis() as u64);
    lap(&mut r, if window.is_some() { "stage" } else { "apply" });
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            r.message = format!("ssh could not be run: {e}");
            return finish(r, &ssh);
        }
    };
    r.exit_code = out.status.code();
    let env: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let message = env
        .as_ref()
        .and_then(|e| e["message"].as_str().map(str::to_string));
    r.result = match (r.exit_code, &env) {
        (Some(0), Some(e)) if window.is_some() => {
            r.message = format!(
                "staged {}; the host applies it inside {} (host time)",
                e["data"]["version"].as_str().unwrap_or("?"),
                window.unwrap_or_default()
            );
            Outcome::Staged
        }
        (Some(0), Some(e)) => {
            let res = e["data"]["result"].as_str().unwrap_or("").to_string();
            r.message = format!(
                "generation {} {res}",
                e["data"]["generation"].as_u64().unwrap_or(0)
            );
            if res == "unchanged" {
                Outcome::Unchanged
            } else {
                Outcome::Committed
            }
        }
        (Some(7), _) => {
            r.message = message.unwrap_or_else(|| "rolled back".into());
            Outcome::RolledBack
        }
        (Some(SSH_FAILED), None) => {
            r.message = format!(
                "the SSH connection failed during the apply ({}); the host finishes or rolls back by itself (smoker-install recover), check `status`",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Outcome::Failed
        }
        (code, _) => {
            r.message = message.unwrap_or_else(|| {
                format!(
                    "exit status {code:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            });
            Outcome::Failed
        }
    };
    r.envelope = env;
    finish(r, &ssh)
}

/// The options of `apply` that `stage` takes too (keys and the environment choice).
fn stage_args(apply_args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = apply_args.iter();
    while let Some(a) = it.next() {
        let with_value = ["--key", "--keys", "--environment"];
        let flags = ["--wait", "--allow-downgrade", "--allow-env-change"];
        if with_value.contains(&a.as_str()) {
            out.push(a.clone());
            if let Some(v) = it.next() {
                out.push(v.clone());
            }
        } else if flags.contains(&a.as_str())
            || with_value.iter().any(|w| a.starts_with(&format!("{w}=")))
        {
            out.push(a.clone());
        } else if !a.contains('=') && a.starts_with("--") {
            // An apply-only option with a value (--env-file F, --project P): skip both.
            it.next();
        }
    }
    out
}

/// The version the host's profile serves, from `smoker-install status --json`.
fn current_version(ssh: &Ssh<'_>, host: &Host) -> Option<String> {
    let mut words = host.installer.clone();
    words.extend(["status".into(), "--json".into()]);
    let out = ssh.run(&command_line(&words)).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["profiles"]
        .as_array()?
        .iter()
        .find(|p| p["profile"] == host.profile.as_str())
        .and_then(|p| p["version"].as_str().map(str::to_string))
}

/// The final table: host, old → new version, result, duration, message.
pub fn table(r: &Report) -> String {
    let mut rows = vec![[
        "HOST".to_string(),
        "VERSION".to_string(),
        "RESULT".to_string(),
        "TIME".to_string(),
        "MESSAGE".to_string(),
    ]];
    for h in &r.hosts {
        rows.push([
            h.host.clone(),
            format!(
                "{} -> {}",
                h.old_version.as_deref().unwrap_or("-"),
                h.new_version.as_deref().unwrap_or("-")
            ),
            serde_json::to_value(h.result)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            format!("{:.1}s", h.duration_ms as f64 / 1000.0),
            h.message.lines().next().unwrap_or("").to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for row in rows {
        for (c, w) in widths.iter().enumerate() {
            s.push_str(&format!("{:<w$}  ", row[c], w = *w));
        }
        s.push_str(&row[4]);
        s.push('\n');
    }
    if let Some(stop) = &r.stopped {
        s.push_str(&format!("rollout {stop}\n"));
    }
    s
}

/// GitHub Actions annotations: one `::error` per failed host, `::warning` per offline or
/// untouched one.
pub fn annotations(r: &Report) -> String {
    let esc = |s: &str| {
        s.replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A")
    };
    let mut s = String::new();
    for h in &r.hosts {
        let level = match h.result {
            Outcome::RolledBack | Outcome::Failed => "error",
            Outcome::Offline if r.ok => "warning",
            Outcome::Offline => "error",
            Outcome::Untouched => "warning",
            _ => continue,
        };
        s.push_str(&format!(
            "::{level} title=rollout {}::{:?}: {}\n",
            esc(&h.host),
            h.result,
            esc(&h.message)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_takes_the_key_options_of_apply_and_drops_the_apply_only_ones() {
        let a: Vec<String> = [
            "--key",
            "k.pub",
            "--env-file",
            "/e",
            "--project",
            "p",
            "--wait",
            "--keep",
            "3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(stage_args(&a), ["--key", "k.pub", "--wait"]);
    }

    fn host(name: &str, result: Outcome, message: &str) -> HostReport {
        HostReport {
            host: name.into(),
            profile: "svc".into(),
            old_version: Some("1.0.0".into()),
            new_version: Some("2.0.0".into()),
            result,
            duration_ms: 1500,
            apply_ms: Some(1000),
            copy: None,
            steps_ms: Default::default(),
            exit_code: None,
            message: message.into(),
            envelope: None,
        }
    }

    #[test]
    fn the_table_and_the_annotations_name_every_host_and_what_happened() {
        let r = Report {
            strategy: Strategy::Immediate { parallel: 2 },
            hosts: vec![
                host("a", Outcome::Committed, "generation 2 committed"),
                host("b", Outcome::RolledBack, "unhealthy\nsecond line"),
                host("c", Outcome::Offline, "unreachable 100%"),
                host("d", Outcome::Untouched, "not started"),
            ],
            stopped: Some("stopped after 1 failure(s)".into()),
            ok: false,
            duration_ms: 3000,
        };
        let t = table(&r);
        assert!(t.lines().next().unwrap_or("").starts_with("HOST"), "{t}");
        assert!(t.contains("1.0.0 -> 2.0.0  rolled-back  1.5s"), "{t}");
        assert!(!t.contains("second line"), "one line per host: {t}");
        assert!(t.ends_with("rollout stopped after 1 failure(s)\n"), "{t}");
        let a = annotations(&r);
        assert_eq!(
            a,
            "::error title=rollout b::RolledBack: unhealthy%0Asecond line\n\
             ::error title=rollout c::Offline: unreachable 100%25\n\
             ::warning title=rollout d::Untouched: not started\n"
        );
    }

    #[test]
    fn the_version_is_read_from_a_bundle_file_name() {
        assert_eq!(
            version_of_file(Path::new("/r/prod/svc-app-1.2.3-amd64.tar.zst")).as_deref(),
            Some("1.2.3")
        );
    }
}
