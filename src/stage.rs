//! `smoker-install stage`: verify a bundle and commit it to the store without switching to it.
//!
//! Staging is the first half of an apply (the verify + store steps of [`crate::apply`], the
//! same [`store::stage`] pass and the same [`policy::check`]), recorded per profile in
//! `<root>/staged/<profile>.json`. A later apply of a bundle whose signed manifest has the
//! recorded sha256 (or `apply --staged PROFILE`, with no file at all) starts from the stored
//! entry: the manifest's signature is checked again against the trusted keys, the entry against
//! its commit journal ([`store::check`]) and the host's policy again, but the payload is not
//! read a second time. The manifest's sha256 covers every payload file's hash, and the entry was
//! verified against it when it was staged, so nothing unverified is ever started.
//!
//! gc keeps the entry of a staged record ([`staged_entries`]); an apply that reaches a decision
//! on the staged bundle (committed or rolled back) removes the record ([`clear_if`]).

use crate::apply::{Options, Progress};
use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::policy::{self, HostFacts};
use crate::profile::{Profile, now};
use crate::store::{self, StoreEntry};
use serde::{Deserialize, Serialize};
use smoker_format::manifest::{MANIFEST_PATH, MANIFEST_SIG_PATH};
use std::io::{Seek as _, SeekFrom};
use std::path::{Path, PathBuf};

/// What is staged for one profile: a verified store entry waiting to be switched to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Profile.
    pub profile: String,
    /// The store entry's directory name.
    pub store: String,
    /// sha256 of the signed manifest (identifies the bundle's content).
    pub manifest_sha256: String,
    /// sha256 of the bundle file that was verified.
    pub bundle_sha256: String,
    /// Size of that bundle file in bytes.
    pub bundle_bytes: u64,
    /// The key that signed it.
    pub key_id: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// Environment it was built for.
    pub environment: String,
    /// When it was staged (RFC 3339).
    pub staged_at: String,
    /// Maintenance window (`HH:MM-HH:MM`, host time) in which it is to be applied, if one was
    /// given; informational for `apply --staged`, honoured by `pull`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
}

/// The outcome of [`stage`].
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The record as written.
    #[serde(flatten)]
    pub record: Record,
    /// `staged`, or `unchanged` when this bundle was already staged (nothing was read again).
    pub result: String,
}

/// The directory of staged records.
pub fn records_dir(layout: &Layout) -> PathBuf {
    layout.root().join("staged")
}

/// The staged record of a profile.
pub fn record_path(layout: &Layout, profile: &str) -> PathBuf {
    records_dir(layout).join(format!("{profile}.json"))
}

/// The record staged for `profile`, if any.
pub fn load(layout: &Layout, profile: &str) -> Result<Option<Record>> {
    let path = record_path(layout, profile);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::State(format!(
                "{} is not a staged record ({e}); remove it and stage the bundle again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

fn save(layout: &Layout, record: &Record) -> Result<()> {
    crate::fsutil::private_dir(&records_dir(layout))?;
    let bytes = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::State(format!("the staged record could not be written: {e}")))?;
    crate::fsutil::write_atomic(&record_path(layout, &record.profile), &bytes, 0o600)
}

/// Removes the staged record of `profile` when it names the bundle `manifest_sha256`.
pub fn clear_if(layout: &Layout, profile: &str, manifest_sha256: &str) -> Result<()> {
    if load(layout, profile)?.is_some_and(|r| r.manifest_sha256 == manifest_sha256) {
        let path = record_path(layout, profile);
        std::fs::remove_file(&path).map_err(io_at(&path))?;
    }
    Ok(())
}

/// The store entries named by staged records (gc keeps them).
pub fn staged_entries(layout: &Layout) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(records_dir(layout)) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|b| serde_json::from_slice::<Record>(&b).ok())
        .map(|r| r.store)
        .collect()
}

/// The staged entry of `profile` when its manifest has the sha256 `manifest_sha256` (any, when
/// `None`), checked before use: the manifest's signature against `keys` (returns the signing
/// key id), its sha256 against the record and the entry against its commit journal.
pub fn usable(
    layout: &Layout,
    profile: &str,
    manifest_sha256: Option<&str>,
    keys: &smoker_format::signing::TrustedKeys,
) -> Result<Option<(Record, StoreEntry, String)>> {
    let Some(record) = load(layout, profile)? else {
        return Ok(None);
    };
    if manifest_sha256.is_some_and(|m| m != record.manifest_sha256) {
        return Ok(None);
    }
    let entry = store::open(layout, &record.store)?;
    store::check(&entry, Some(&record.manifest_sha256))?;
    let manifest_bytes = std::fs::read(entry.path.join(MANIFEST_PATH))
        .map_err(io_at(&entry.path.join(MANIFEST_PATH)))?;
    let sig_path = entry.path.join(MANIFEST_SIG_PATH);
    let sig = std::fs::read_to_string(&sig_path).map_err(io_at(&sig_path))?;
    let key_id = keys
        .verify(&manifest_bytes, &sig)
        .map_err(|e| {
            Error::Policy(format!(
                "the bundle staged for profile `{profile}` ({}) is no longer signed by a trusted key ({e}); stage a bundle signed by a trusted key",
                record.version
            ))
        })?
        .key_id;
    Ok(Some((record, entry, key_id)))
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
