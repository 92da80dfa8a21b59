//! `smoker-install stage`: verify a bundle and commit it to the store without switching to it.
//!
//! Staging is the first half of an apply (the verify + store steps of [`crate::apply`], the
//! same [`store::stage`] pass and the same [`policy::check`]), recorded per profile by
//! [`crate::staged`], so that a later apply of the same bundle (or `apply --staged PROFILE`)
//! switches without reading the payload again.

use crate::apply::{Options, Progress};
use crate::error::{Result, io_at};
use crate::layout::Layout;
use crate::policy::{self, HostFacts};
use crate::profile::{Profile, now};
use crate::staged::{Record, save, usable};
use crate::store;
use serde::Serialize;
use std::io::{Seek as _, SeekFrom};
use std::path::Path;

/// The outcome of [`stage`].
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The record as written.
    #[serde(flatten)]
    pub record: Record,
    /// `staged`, or `unchanged` when this bundle was already staged (nothing was read again).
    pub result: String,
}

/// Verifies `bundle` (one pass over one open file), checks the host's policy on it exactly as
/// an apply would, commits it to the store and records it as staged for its profile. Nothing
/// is switched and no container is touched.
pub fn stage(
    layout: &Layout,
    bundle: &Path,
    opts: &Options,
    window: Option<String>,
    progress: &dyn Progress,
) -> Result<Outcome> {
    let mut file = crate::fsutil::open_regular(bundle, true)?;
    progress.step("reading the manifest");
    let head = smoker_format::bundle::read::peek_signed_head(&file, &opts.keys)?;
    file.seek(SeekFrom::Start(0)).map_err(io_at(bundle))?;
    let name = head.manifest.name.clone();
    progress.step("locking the profile");
    let _lock = crate::hostlock::acquire(layout, &name, opts.wait)?;

    if let Some((mut record, _, _)) =
        usable(layout, &name, Some(&head.manifest_sha256), &opts.keys)?
    {
        progress.info(&format!(
            "{} {} is already staged ({}); nothing was read again",
            record.profile, record.version, record.store
        ));
        if window.is_some() && record.window != window {
            record.window = window;
            save(layout, &record)?;
        }
        return Ok(Outcome {
            record,
            result: "unchanged".into(),
        });
    }

    progress.step("verifying and storing the bundle");
    let bundle_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    let staged = store::stage(layout, file, &opts.keys)?;
    let mut facts = HostFacts::gather(
        layout,
        &opts.host,
        &name,
        opts.allow_env_change,
        opts.allow_downgrade,
    );
    facts.signer = Some(policy::Signer::of(&opts.keys, &staged.verified.key_id));
    let existing = Profile::open(layout, &name)?;
    let generations = existing
        .as_ref()
        .map(|p| &p.state.generations[..])
        .unwrap_or(&[]);
    policy::check(staged.manifest(), &name, generations, &facts)?;
    let key_id = staged.verified.key_id.clone();
    let bundle_sha256 = staged.verified.bundle_sha256.clone();
    // Shared gc lock until the record names the entry, so no gc removes it in between.
    let storing = crate::gc::storing(layout)?;
    let entry = staged.commit(layout)?;
    let record = Record {
        profile: name.clone(),
        store: entry.name.clone(),
        manifest_sha256: entry.manifest_sha256.clone(),
        bundle_sha256,
        bundle_bytes,
        key_id,
        version: entry.manifest.version.clone(),
        arch: entry.manifest.arch.to_string(),
        environment: entry.manifest.environment.clone(),
        staged_at: now(),
        window,
    };
    save(layout, &record)?;
    drop(storing);
    progress.info(&format!(
        "verified {} {} {} (signed by {}), stored as {}; not switched",
        entry.manifest.name, entry.manifest.version, entry.manifest.arch, record.key_id, entry.name
    ));
    crate::audit::append(
        layout,
        "stage",
        serde_json::to_value(&record).unwrap_or_default(),
    )?;
    Ok(Outcome {
        record,
        result: "staged".into(),
    })
}

/// The minute of the day in the host's local time zone.
pub fn local_minute_of_day() -> u32 {
    let t = libc::time_t::try_from(crate::sys::now_secs()).unwrap_or(0);
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        u32::try_from(tm.tm_hour * 60 + tm.tm_min).unwrap_or(0)
    } else {
        0
    }
}

/// What [`apply_due`] did with one staged bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Due {
    /// Profile.
    pub profile: String,
    /// Version staged.
    pub version: String,
    /// Its window, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// `applied`, `waiting`, `listed`, `rolled-back` or `failed`.
    pub action: String,
    /// In a sentence.
    pub message: String,
    /// The apply's outcome, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<crate::apply::Outcome>,
    /// The failure's kind, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::error::Kind>,
}

/// Every staged bundle; with `apply`, those whose window is open now (or that have none) are
/// applied (`smoker-install staged --apply-due`, run by a timer: the host applies a bundle a
/// scheduled rollout staged, inside its window, by itself).
pub fn apply_due(
    layout: &Layout,
    opts: &Options,
    apply: bool,
    progress: &dyn Progress,
) -> Result<Vec<Due>> {
    let mut names: Vec<String> = std::fs::read_dir(crate::staged::records_dir(layout))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_suffix(".json"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let minute = local_minute_of_day();
    let mut out = Vec::new();
    for name in names {
        let Some(rec) = crate::staged::load(layout, &name)? else {
            continue;
        };
        let window = rec
            .window
            .as_deref()
            .map(smoker_format::channel::Window::parse)
            .transpose()
            .map_err(crate::error::Error::State)?;
        let mut d = Due {
            profile: rec.profile.clone(),
            version: rec.version.clone(),
            window: rec.window.clone(),
            action: "listed".into(),
            message: format!("{} {} is staged as {}", rec.profile, rec.version, rec.store),
            apply: None,
            kind: None,
        };
        if apply {
            match window {
                Some(w) if !w.contains(minute) => {
                    d.action = "waiting".into();
                    d.message = format!(
                        "{} {} waits for its window {w} (opens in {} min)",
                        rec.profile,
                        rec.version,
                        w.minutes_until_open(minute)
                    );
                }
                _ => match crate::apply::apply_staged(layout, &name, opts, progress) {
                    Ok(a) => {
                        d.action = "applied".into();
                        d.message = format!("{} {}: {}", a.profile, a.version, a.result);
                        d.apply = Some(a);
                    }
                    Err(e) => {
                        d.action = if matches!(e, crate::error::Error::RolledBack(_)) {
                            "rolled-back".into()
                        } else {
                            "failed".into()
                        };
                        d.kind = Some(e.kind());
                        d.message = e.to_string();
                    }
                },
            }
        }
        out.push(d);
    }
    Ok(out)
}
