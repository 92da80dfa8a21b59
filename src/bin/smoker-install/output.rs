//! Output in one place: every subcommand returns a typed result; [`Report::text`] renders it
//! for people, the [`Envelope`] renders it as JSON (`--json`), and the failure kind decides the
//! exit status (the table in `smoker::error::Kind`).

use serde::Serialize;
use smoker::envelope::Envelope;
use smoker::error::Kind;
use smoker::inspect::{ProfileHistory, ProfileStatus, Unfinished};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// A command that could not do its work: the kind (exit status) and what to say.
#[derive(Debug)]
pub struct Failure {
    /// The kind of failure.
    pub kind: Kind,
    /// What went wrong and what to do.
    pub message: String,
}

impl Failure {
    /// A failure of `kind`.
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        // The last line of defence: no secret value of a host env file leaves in a message.
        Failure {
            kind,
            message: smoker::redact::redact(&message.into()),
        }
    }
}

impl From<smoker::error::Error> for Failure {
    fn from(e: smoker::error::Error) -> Failure {
        Failure::new(e.kind(), e.to_string())
    }
}

/// The typed result of a subcommand.
pub trait Report {
    /// The `data` of the JSON envelope.
    fn data(&self) -> serde_json::Value;
    /// The text for people, printed on stdout (empty: nothing).
    fn text(&self) -> String;
    /// When the command ran to its end but its verdict is a failure (a rejected bundle,
    /// preflight problems, a profile rolled back by `recover`, …).
    fn failure(&self) -> Option<Failure> {
        None
    }
}

/// Serializes a payload (every payload here has string keys, so this does not fail).
fn to_data<T: Serialize>(t: &T) -> serde_json::Value {
    serde_json::to_value(t).unwrap_or(serde_json::Value::Null)
}

/// Where output goes.
pub struct Output {
    /// `--json`: the real stdout, kept for the envelope.
    json: Option<Box<dyn std::io::Write>>,
}

impl Output {
    /// Text output.
    pub fn text() -> Output {
        Output { json: None }
    }

    /// JSON output. The process's stdout (fd 1) is pointed at stderr for the rest of the run
    /// and the envelope is written to a copy of the original, so nothing else — progress, a
    /// GitHub Actions annotation, a library's message — can mix into the one JSON document.
    pub fn json() -> Output {
        use std::os::fd::AsFd as _;
        let real: Box<dyn std::io::Write> = match std::io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => {
                // SAFETY: dup2 of two descriptors this process owns; on failure fd 1 is
                // left as it was, which only loses the isolation.
                unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
                Box::new(std::fs::File::from(fd))
            }
            Err(_) => Box::new(std::io::stdout()),
        };
        Output { json: Some(real) }
    }

    /// Prints a finished command's result and returns its exit status.
    pub fn finish<R: Report>(self, command: &str, result: Result<R, Failure>) -> ExitCode {
        let (data, text, failure) = match result {
            Ok(r) => (r.data(), r.text(), r.failure()),
            Err(f) => (serde_json::Value::Null, String::new(), Some(f)),
        };
        let envelope = match failure {
            None => Envelope::success(command, data),
            Some(f) => Envelope::failure(Some(command), f.kind, f.message, data),
        };
        self.emit(&envelope, &text)
    }

    /// Prints an envelope (JSON) or the text and the error line (text) and returns the exit
    /// status.
    pub fn emit(self, envelope: &Envelope, text: &str) -> ExitCode {
        match self.json {
            Some(mut out) => {
                let _ = writeln!(out, "{}", envelope.to_json());
                let _ = out.flush();
            }
            None => {
                if !text.is_empty() {
                    print!("{text}");
                    if !text.ends_with('\n') {
                        println!();
                    }
                }
                if let Some(m) = &envelope.message {
                    eprintln!("error: {m}");
                }
            }
        }
        ExitCode::from(envelope.exit_code)
    }
}

/// `verify`: the verdict on one bundle.
pub struct Verified {
    /// The bundle file.
    pub bundle: PathBuf,
    /// What was checked, or why it was rejected.
    pub verdict: Result<smoker_format::bundle::read::VerifiedBundle, smoker::error::Error>,
}

impl Report for Verified {
    fn data(&self) -> serde_json::Value {
        let bundle = self.bundle.display().to_string();
        match &self.verdict {
            Ok(v) => serde_json::json!({
                "bundle": bundle,
                "name": v.manifest.name,
                "version": v.manifest.version,
                "arch": v.manifest.arch,
                "environment": v.manifest.environment,
                "key_id": v.key_id,
                "files": v.manifest.files.len(),
                "compressed_bytes": v.compressed_bytes,
                "bundle_sha256": v.bundle_sha256,
                "manifest_sha256": v.manifest_sha256,
            }),
            Err(e) => serde_json::json!({
                "bundle": bundle,
                "reason": match e {
                    smoker::error::Error::Verify(v) => v.kind(),
                    _ => e.kind().as_str(),
                },
            }),
        }
    }

    fn text(&self) -> String {
        match &self.verdict {
            Ok(v) => format!(
                "OK {}: {} {} {} env={} signed by {} ({} files, {} bytes, sha256 {})",
                self.bundle.display(),
                v.manifest.name,
                v.manifest.version,
                v.manifest.arch,
                v.manifest.environment,
                v.key_id,
                v.manifest.files.len(),
                v.compressed_bytes,
                v.bundle_sha256
            ),
            Err(_) => String::new(),
        }
    }

    fn failure(&self) -> Option<Failure> {
        let e = self.verdict.as_ref().err()?;
        let why = match e {
            smoker::error::Error::Verify(v) => v.to_string(),
            other => other.to_string(),
        };
        Some(Failure::new(
            e.kind(),
            format!("REJECTED {}: {why}", self.bundle.display()),
        ))
    }
}

/// `usb-log`: where the run log was written.
pub struct MediaLog {
    /// The log file.
    pub path: PathBuf,
}

impl Report for MediaLog {
    fn data(&self) -> serde_json::Value {
        serde_json::json!({ "path": self.path.display().to_string() })
    }

    fn text(&self) -> String {
        String::new()
    }
}

/// `verify --store`: the full check of the store's entries.
pub struct StoreVerified {
    /// One check per entry.
    pub entries: Vec<smoker::inspect::EntryCheck>,
    /// Whether signatures were checked (keys were usable).
    pub signatures_checked: bool,
}

impl Report for StoreVerified {
    fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "entries": self.entries,
            "damaged": self.entries.iter().filter(|e| !e.problems.is_empty()).map(|e| &e.entry).collect::<Vec<_>>(),
            "signatures_checked": self.signatures_checked,
        })
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let used = if e.used_by.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.used_by.join(", "))
            };
            if e.problems.is_empty() {
                out.push_str(&format!("OK {}{used}\n", e.entry));
            } else {
                out.push_str(&format!(
                    "DAMAGED {}{used}: {}\n",
                    e.entry,
                    e.problems.join("; ")
                ));
            }
        }
        if !self.signatures_checked {
            out.push_str("(signatures not checked: no usable keys; pass --key or --keys)\n");
        }
        out
    }

    fn failure(&self) -> Option<Failure> {
        let damaged: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| !e.problems.is_empty())
            .map(|e| e.entry.as_str())
            .collect();
        (!damaged.is_empty()).then(|| {
            Failure::new(
                Kind::State,
                format!("damaged store entries: {}", damaged.join(", ")),
            )
        })
    }
}

/// `apply`: what the apply did.
pub struct Applied(pub smoker::apply::Outcome);

/// `pull`'s result.
pub struct Pulled(pub smoker::pull::Outcome);

impl Report for Pulled {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        let o = &self.0;
        let mut s = format!(
            "channel {} sequence {}{} ({} requests, {} bytes)\n",
            o.channel,
            o.sequence,
            if o.not_modified { ", not modified" } else { "" },
            o.requests,
            o.bytes_received
        );
        for p in &o.profiles {
            s.push_str(&format!("  {}: {} — {}\n", p.profile, p.action, p.message));
        }
        s
    }

    fn failure(&self) -> Option<Failure> {
        self.0.profiles.iter().find_map(|p| {
            p.kind
                .map(|k| Failure::new(k, format!("{}: {}", p.profile, p.message)))
        })
    }
}

/// `staged`'s result.
pub struct StagedList(pub Vec<smoker::stage::Due>);

impl Report for StagedList {
    fn data(&self) -> serde_json::Value {
        serde_json::json!({ "staged": to_data(&self.0) })
    }

    fn text(&self) -> String {
        if self.0.is_empty() {
            return "nothing is staged\n".into();
        }
        self.0
            .iter()
            .map(|d| {
                format!(
                    "{} {}: {} — {}\n",
                    d.profile, d.version, d.action, d.message
                )
            })
            .collect()
    }

    fn failure(&self) -> Option<Failure> {
        self.0.iter().find_map(|d| {
            d.kind
                .map(|k| Failure::new(k, format!("{}: {}", d.profile, d.message)))
        })
    }
}

/// `stage`'s result.
pub struct Staged(pub smoker::stage::Outcome);

impl Report for Staged {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        let r = &self.0.record;
        format!(
            "{} {} {}: {} as {} (not switched; `smoker-install apply --staged {}` switches to it){}\n",
            r.profile,
            r.version,
            r.arch,
            self.0.result,
            r.store,
            r.profile,
            r.window
                .as_ref()
                .map(|w| format!("; window {w}"))
                .unwrap_or_default()
        )
    }
}

impl Report for Applied {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        let o = &self.0;
        format!(
            "{} {} generation {} ({}): {}",
            o.profile,
            o.version,
            o.generation,
            o.result,
            o.health
                .as_ref()
                .map(|h| h.summary.as_str())
                .unwrap_or("already current")
        )
    }
}

/// `rollback`: the generation serving now.
pub struct RolledBack(pub smoker::rollback::RollbackOutcome);

impl Report for RolledBack {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        let o = &self.0;
        format!(
            "{}: generation {} is current ({}); switch took {} µs, up + health gate {} ms",
            o.profile,
            o.to,
            o.health.summary,
            o.durations_us.get("switch").copied().unwrap_or(0),
            o.durations_us.get("up+health").copied().unwrap_or(0) / 1000
        )
    }
}

/// `policy suggest`: the policy table for one bundle.
pub struct PolicySuggested {
    /// The bundle file.
    pub bundle: PathBuf,
    /// Its profile.
    pub profile: String,
    /// The host config text (`[policy.<profile>]`) that allows exactly this bundle.
    pub policy: String,
    /// What each service asks of the host, as signed.
    pub host_access: std::collections::BTreeMap<String, smoker_format::host_access::HostAccess>,
}

impl Report for PolicySuggested {
    fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "bundle": self.bundle.display().to_string(),
            "profile": self.profile,
            "policy": self.policy,
            "host_access": self.host_access,
        })
    }

    fn text(&self) -> String {
        self.policy.clone()
    }

    fn failure(&self) -> Option<Failure> {
        None
    }
}

/// `preflight`: every check.
pub struct Preflighted {
    /// The bundle file.
    pub bundle: PathBuf,
    /// The checks.
    pub report: smoker::preflight::Report,
}

impl Report for Preflighted {
    fn data(&self) -> serde_json::Value {
        serde_json::json!({
            "bundle": self.bundle.display().to_string(),
            "checks": self.report.checks,
        })
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for c in &self.report.checks {
            out.push_str(&format!(
                "{} {:<16} {}\n",
                if c.ok { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        if self.report.problems().is_empty() {
            out.push_str(&format!(
                "preflight passed: {} is ready to apply\n",
                self.bundle.display()
            ));
        }
        out
    }

    fn failure(&self) -> Option<Failure> {
        let problems = self.report.problems();
        (!problems.is_empty()).then(|| {
            Failure::new(
                Kind::Preflight,
                format!(
                    "preflight failed: {} problem(s):\n  - {}",
                    problems.len(),
                    problems.join("\n  - ")
                ),
            )
        })
    }
}

/// `backup`: the backup taken.
#[derive(Serialize)]
pub struct BackedUp {
    /// Profile.
    pub profile: String,
    /// The backup.
    pub backup: smoker::backup::Record,
}

impl Report for BackedUp {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        let b = &self.backup;
        format!(
            "backup {} of `{}`: {} bytes, sha256 {}",
            b.id, self.profile, b.size, b.sha256
        )
    }
}

/// `backups`: a profile's backups, oldest first.
#[derive(Serialize)]
pub struct Backups {
    /// Profile.
    pub profile: String,
    /// The backups.
    pub backups: Vec<smoker::backup::Record>,
}

impl Report for Backups {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        if self.backups.is_empty() {
            return format!("no backups of `{}`", self.profile);
        }
        let mut out = String::new();
        for b in self.backups.iter().rev() {
            out.push_str(&format!(
                "{}  gen {:<4} {:>12} bytes  {}  {}  migrations [{}]\n",
                b.id,
                b.generation,
                b.size,
                b.reason,
                b.created,
                b.ledger.join(", ")
            ));
        }
        out
    }
}

/// `restore`: what was restored.
#[derive(Serialize)]
pub struct Restored {
    /// Profile.
    pub profile: String,
    /// The backup restored.
    pub backup: String,
    /// What was done (names the safety backup).
    pub message: String,
}

impl Report for Restored {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        self.message.clone()
    }
}

/// `status`: the current generation of each profile.
#[derive(Serialize)]
pub struct Status {
    /// The host root (text output only).
    #[serde(skip)]
    pub root: PathBuf,
    /// One entry per profile.
    pub profiles: Vec<ProfileStatus>,
}

fn lock_line(locked: bool, holder: Option<&smoker::hostlock::Holder>) -> Option<String> {
    locked.then(|| {
        format!(
            "  locked by {}",
            holder
                .map(smoker::hostlock::Holder::describe)
                .unwrap_or_else(|| "a process that recorded no holder".into())
        )
    })
}

fn unfinished_lines(u: &[Unfinished]) -> String {
    u.iter().map(|u| format!("  ! {}\n", u.message)).collect()
}

impl Report for Status {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        if self.profiles.is_empty() {
            return format!("no profiles under {}", self.root.display());
        }
        let mut out = String::new();
        for s in &self.profiles {
            let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            let list = |label: &str, v: &[u32]| {
                if v.is_empty() {
                    String::new()
                } else {
                    format!(" {label}={v:?}")
                }
            };
            out.push_str(&format!(
                "{}: generation {} — {} {} env={} health={} installed {} bundle {}{}{}\n",
                s.profile,
                s.current
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "none".into()),
                or_dash(&s.version),
                or_dash(&s.arch),
                or_dash(&s.environment),
                s.health
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "-".into()),
                or_dash(&s.installed_at),
                or_dash(&s.bundle_sha256),
                list("pending", &s.pending),
                list("failed", &s.failed),
            ));
            if let Some(since) = &s.stopped_since {
                out.push_str(&format!(
                    "  stopped since {since} (`smoker-install start {}` starts it again)\n",
                    s.profile
                ));
            }
            if let Some(l) = lock_line(s.locked, s.holder.as_ref()) {
                out.push_str(&l);
                out.push('\n');
            }
            out.push_str(&unfinished_lines(&s.unfinished));
        }
        out
    }
}

/// `history`: every kept generation of each profile.
#[derive(Serialize)]
pub struct History {
    /// The host root (text output only).
    #[serde(skip)]
    pub root: PathBuf,
    /// One entry per profile.
    pub profiles: Vec<ProfileHistory>,
}

impl Report for History {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        if self.profiles.is_empty() {
            return format!("no profiles under {}", self.root.display());
        }
        let mut out = String::new();
        for p in &self.profiles {
            out.push_str(&format!("{} (project {}):\n", p.profile, p.project));
            for g in p.generations.iter().rev() {
                out.push_str(&format!(
                    "  {} {:>4}  {:<10} {:<6} {:<8} {:<8} {}{}\n",
                    if Some(g.number) == p.current {
                        "*"
                    } else {
                        " "
                    },
                    g.number,
                    g.version,
                    g.arch,
                    g.environment,
                    g.status,
                    g.installed_at,
                    g.reason
                        .as_ref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                ));
            }
            if let Some(l) = lock_line(p.locked, p.holder.as_ref()) {
                out.push_str(&l);
                out.push('\n');
            }
            out.push_str(&unfinished_lines(&p.unfinished));
        }
        out
    }
}

/// `recover`: each profile's outcome.
pub struct Recovered(pub smoker::recovery::RecoverReport);

impl Report for Recovered {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        self.0
            .profiles
            .iter()
            .map(|p| format!("{}: {}\n", p.profile, p.message))
            .collect()
    }

    fn failure(&self) -> Option<Failure> {
        self.0
            .failure()
            .map(|(kind, message)| Failure::new(kind, message))
    }
}

/// `gc`: what was recovered first and what was removed.
#[derive(Serialize)]
pub struct Collected {
    /// Profiles whose interrupted run was finished first: (profile, what was done).
    pub recovered: Vec<RecoveredFirst>,
    /// What gc removed.
    #[serde(flatten)]
    pub removed: smoker::gc::GcReport,
}

/// A profile that `gc` recovered before collecting.
#[derive(Serialize)]
pub struct RecoveredFirst {
    /// Profile.
    pub profile: String,
    /// What was done.
    pub message: String,
}

impl Report for Collected {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        let mut out: String = self
            .recovered
            .iter()
            .map(|r| format!("recovered `{}`: {}\n", r.profile, r.message))
            .collect();
        out.push_str(&format!(
            "removed {} generations, {} store entries, {} images",
            self.removed.generations.len(),
            self.removed.store_entries.len(),
            self.removed.images.len()
        ));
        out
    }
}

/// `unlock`: what was done about a lock.
#[derive(Serialize)]
pub struct Unlocked {
    /// Profile.
    pub profile: String,
    /// Whether the lock was held.
    pub was_locked: bool,
    /// Its holder then.
    pub holder: Option<smoker::hostlock::Holder>,
    /// What was done.
    pub message: String,
}

impl Report for Unlocked {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        self.message.clone()
    }
}

/// `stop`, `start`, `remove`: what was done to the profile.
pub struct LifecycleDone(pub smoker::lifecycle::Outcome);

impl Report for LifecycleDone {
    fn data(&self) -> serde_json::Value {
        to_data(&self.0)
    }

    fn text(&self) -> String {
        self.0.message.clone()
    }
}

/// `audit verify`: whether the hash chain holds.
#[derive(Serialize)]
pub struct AuditChecked {
    /// True when the log is intact.
    pub intact: bool,
    /// Entries checked (when intact).
    pub entries: Option<u64>,
    /// What is wrong (when not).
    pub problem: Option<String>,
}

impl Report for AuditChecked {
    fn data(&self) -> serde_json::Value {
        to_data(self)
    }

    fn text(&self) -> String {
        match self.entries {
            Some(n) if self.intact => format!("audit log intact: {n} entries"),
            _ => String::new(),
        }
    }

    fn failure(&self) -> Option<Failure> {
        (!self.intact).then(|| {
            Failure::new(
                Kind::State,
                format!(
                    "audit log NOT intact: {}",
                    self.problem.as_deref().unwrap_or("unknown problem")
                ),
            )
        })
    }
}
