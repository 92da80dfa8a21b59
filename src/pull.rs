//! `smoker-install pull --channel URL`: follow a signed channel ([`smoker_format::channel`])
//! served as static files.
//!
//! One poll: a conditional GET of `channel.json` (`If-None-Match` / `If-Modified-Since` from
//! the last answer), so a poll with nothing new costs one small request answered `304`. A new
//! channel is accepted only with a valid signature (`channel.json.minisig`), before its
//! `expires`, and with a `sequence` not lower than the highest seen from that URL; it is then
//! kept under `<root>/pull/` and a `304` reuses it (its expiry is checked again each time, so
//! a server frozen at an old channel stops being followed when it expires).
//!
//! Per followed profile, the channel's bundle for this host's architecture and environment is
//! taken unless it already serves (or a newer version serves — installed from USB or by a
//! rollout: whichever is newer wins —, or it failed here before, or is already staged, or the host
//! is outside the cohort, or `not_before` is ahead): it is downloaded into
//! `<root>/pull/downloads/<sha256>.part` with HTTP `Range` resume, checked against the
//! channel's size and sha256, and then verified by the ordinary apply (or stage) pipeline.
//! Inside the channel's maintenance window (or without one) it is applied; outside, staged,
//! and a later poll applies the staged bundle once the window opens. An unreachable server is
//! retried with exponential backoff and jitter.

use crate::apply::{self, Options, Progress};
use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use crate::profile::{Profile, Status};
use serde::{Deserialize, Serialize};
use smoker_format::channel::{CHANNEL_FILE, CHANNEL_SIG_FILE, Channel, MAX_CHANNEL_BYTES, Window};
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

/// What a poll is asked to do.
pub struct Request<'a> {
    /// URL of the channel directory (`…/channel.json` or the directory it is in).
    pub url: &'a str,
    /// Profiles to follow (default: every profile installed here).
    pub profiles: Vec<String>,
    /// This host's id for cohorts (default: the host name).
    pub host_id: String,
    /// Attempts when the server is unreachable (at least 1).
    pub attempts: u32,
    /// First backoff delay; doubled each attempt, with up to 50 % random jitter added.
    pub backoff: Duration,
    /// The apply options (keys: the channel's and the bundles' trusted keys).
    pub opts: &'a Options,
}

/// What a poll did for one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileOutcome {
    /// Profile.
    pub profile: String,
    /// The channel's version for it, if it lists one.
    pub version: Option<String>,
    /// `up-to-date`, `applied`, `staged`, `waiting`, `skipped`, `rolled-back` or `failed`.
    pub action: String,
    /// Why, in a sentence.
    pub message: String,
    /// Bundle bytes received in this poll.
    pub downloaded_bytes: u64,
    /// Where a resumed download started (bytes already on disk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<u64>,
    /// The apply's outcome, when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply: Option<apply::Outcome>,
    /// The failure's kind, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::error::Kind>,
}

/// What a poll did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The channel URL.
    pub url: String,
    /// Channel name.
    pub channel: String,
    /// Its sequence.
    pub sequence: u64,
    /// The server answered 304: the channel kept here was used.
    pub not_modified: bool,
    /// HTTP body bytes received (channel, signature and bundles).
    pub bytes_received: u64,
    /// HTTP requests made.
    pub requests: u32,
    /// Per profile.
    pub profiles: Vec<ProfileOutcome>,
}

/// What is remembered of a channel URL between polls.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Remembered {
    url: String,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Highest sequence accepted from this URL.
    sequence: u64,
    /// The accepted channel's bytes and signature.
    channel: String,
    signature: String,
}

/// The directory of pull state under the host root.
pub fn pull_dir(layout: &Layout) -> PathBuf {
    layout.root().join("pull")
}

fn state_path(layout: &Layout, url: &str) -> PathBuf {
    let h = smoker_format::digest::sha256_hex(url.as_bytes());
    pull_dir(layout).join(format!("channel-{}.json", &h[..16]))
}

fn load_state(layout: &Layout, url: &str) -> Result<Option<Remembered>> {
    let p = state_path(layout, url);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::State(format!(
                "{} is damaged ({e}); remove it (the next poll fetches the channel again, and the sequence floor is lost with it)",
                p.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&p)(e)),
    }
}

fn save_state(layout: &Layout, s: &Remembered) -> Result<()> {
    crate::fsutil::private_dir(&pull_dir(layout))?;
    let bytes = serde_json::to_vec_pretty(s)
        .map_err(|e| Error::State(format!("pull state could not be written: {e}")))?;
    crate::fsutil::write_atomic(&state_path(layout, &s.url), &bytes, 0o600)
}

/// `base` + `name`, for a channel URL given as the directory or as `…/channel.json`.
fn join_url(base: &str, name: &str) -> String {
    let dir = base.strip_suffix(CHANNEL_FILE).unwrap_or(base);
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Counts what went over the wire.
#[derive(Default)]
struct Wire {
    bytes: u64,
    requests: u32,
}

/// A jittered delay: `base * 2^attempt`, plus up to half of it again.
fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let d = base.saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    let jitter = d.mul_f64(f64::from(seed % 1000) / 2000.0);
    d + jitter
}

fn client() -> Result<reqwest::blocking::Client> {
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(None)
        .build()
        .map_err(|e| Error::Runtime(format!("the HTTP client could not be set up: {e}")))
}

/// Unreachable (connect/timeout) errors are retried; an HTTP status is an answer.
fn unreachable(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request()
}

fn net_err(url: &str, e: &reqwest::Error) -> Error {
    Error::Runtime(format!(
        "the channel server is unreachable ({url}: {e}); the host keeps what it runs and the next poll tries again"
    ))
}

/// Reads at most `limit` bytes of a body.
fn read_small(
    resp: reqwest::blocking::Response,
    limit: u64,
    url: &str,
    wire: &mut Wire,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    resp.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::Runtime(format!("reading {url}: {e}")))?;
    wire.bytes += buf.len() as u64;
    if buf.len() as u64 > limit {
        return Err(Error::Policy(format!(
            "{url} is larger than {limit} bytes; not a channel file"
        )));
    }
    Ok(buf)
}

/// Why a fetch of the channel failed.
enum Fetch {
    /// The request failed (unreachable, or an HTTP error status).
    Net(reqwest::Error),
    /// The answer is unusable.
    Other(Error),
}

impl From<reqwest::Error> for Fetch {
    fn from(e: reqwest::Error) -> Fetch {
        Fetch::Net(e)
    }
}

/// Fetches the channel: `Some((bytes, signature, etag, last_modified))` when it changed, `None`
/// on 304.
#[allow(clippy::type_complexity)]
fn fetch_channel(
    http: &reqwest::blocking::Client,
    url: &str,
    known: Option<&Remembered>,
    wire: &mut Wire,
) -> std::result::Result<Option<(Vec<u8>, String, Option<String>, Option<String>)>, Fetch> {
    let chan_url = join_url(url, CHANNEL_FILE);
    let mut req = http.get(&chan_url);
    if let Some(k) = known.filter(|k| !k.channel.is_empty()) {
        if let Some(e) = &k.etag {
            req = req.header(reqwest::header::IF_NONE_MATCH, e);
        }
        if let Some(m) = &k.last_modified {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, m);
        }
    }
    wire.requests += 1;
    let resp = req.send()?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(None);
    }
    let resp = resp.error_for_status()?;
    let header = |r: &reqwest::blocking::Response, h| {
        r.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(&resp, reqwest::header::ETAG);
    let modified = header(&resp, reqwest::header::LAST_MODIFIED);
    let bytes = read_small(resp, MAX_CHANNEL_BYTES, &chan_url, wire).map_err(Fetch::Other)?;
    let sig_url = join_url(url, CHANNEL_SIG_FILE);
    wire.requests += 1;
    let sresp = http.get(&sig_url).send()?.error_for_status()?;
    let sig = read_small(sresp, 64 * 1024, &sig_url, wire).map_err(Fetch::Other)?;
    Ok(Some((
        bytes,
        String::from_utf8_lossy(&sig).into_owned(),
        etag,
        modified,
    )))
}

/// One poll of the channel at `r.url`.
pub fn pull(layout: &Layout, r: &Request<'_>, progress: &dyn Progress) -> Result<Outcome> {
    let http = client()?;
    let mut wire = Wire::default();
    let known = load_state(layout, r.url)?;
    progress.step(&format!("polling {}", r.url));
    let mut attempt = 0;
    let fetched = loop {
        match fetch_channel(&http, r.url, known.as_ref(), &mut wire) {
            Ok(f) => break f,
            Err(Fetch::Other(e)) => return Err(e),
            Err(Fetch::Net(e)) if unreachable(&e) && attempt + 1 < r.attempts.max(1) => {
                let d = backoff_delay(r.backoff, attempt);
                progress.info(&format!(
                    "channel unreachable ({e}); retrying in {} ms",
                    d.as_millis()
                ));
                std::thread::sleep(d);
                attempt += 1;
            }
            Err(Fetch::Net(e)) if e.status().is_some() => {
                return Err(Error::Runtime(format!(
                    "the channel server answered {} for {}; check the channel URL",
                    e.status().map(|s| s.to_string()).unwrap_or_default(),
                    r.url
                )));
            }
            Err(Fetch::Net(e)) => return Err(net_err(r.url, &e)),
        }
    };
    let now = crate::sys::now_secs();
    let not_modified = fetched.is_none();
    let (bytes, sig, etag, modified) = match fetched {
        Some(f) => f,
        None => {
            let k = known.clone().unwrap_or_default();
            (k.channel.into_bytes(), k.signature, k.etag, k.last_modified)
        }
    };
    let (channel, _key) = Channel::from_signed(&bytes, &sig, &r.opts.keys)
        .map_err(|e| Error::Policy(format!("channel {}: {e}", r.url)))?;
    let seen = known.as_ref().map(|k| k.sequence);
    channel
        .check_fresh(now, seen)
        .map_err(|e| Error::Policy(e.to_string()))?;
    if !not_modified {
        save_state(
            layout,
            &Remembered {
                url: r.url.to_string(),
                etag,
                last_modified: modified,
                sequence: channel.sequence.max(seen.unwrap_or(0)),
                channel: String::from_utf8_lossy(&bytes).into_owned(),
                signature: sig,
            },
        )?;
    }
    let profiles = if r.profiles.is_empty() {
        layout.profile_names()
    } else {
        r.profiles.clone()
    };
    if profiles.is_empty() {
        return Err(Error::State(
            "no profile is installed here and none was named: pass --profile NAME to follow one"
                .into(),
        ));
    }
    let facts = crate::policy::HostFacts::gather(layout, &r.opts.host, "", false, false);
    let arch = facts.arch.map(|a| a.to_string()).unwrap_or_default();
    let mut out = Vec::new();
    for name in profiles {
        let o = follow(
            layout, r, &http, &channel, &name, &arch, now, &mut wire, progress,
        );
        out.push(o);
    }
    Ok(Outcome {
        url: r.url.to_string(),
        channel: channel.name.clone(),
        sequence: channel.sequence,
        not_modified,
        bytes_received: wire.bytes,
        requests: wire.requests,
        profiles: out,
    })
}

/// The host's environment for `profile`: the host config's, else the current generation's.
fn environment_of(layout: &Layout, opts: &Options, profile: &str) -> Option<String> {
    if let Some(e) = &opts.host.environment {
        return Some(e.clone());
    }
    let p = Profile::open(layout, profile).ok().flatten()?;
    let cur = p.current().and_then(|n| p.generation(n))?;
    Some(cur.environment.clone())
}

#[allow(clippy::too_many_arguments)]
fn follow(
    layout: &Layout,
    r: &Request<'_>,
    http: &reqwest::blocking::Client,
    channel: &Channel,
    name: &str,
    arch: &str,
    now: u64,
    wire: &mut Wire,
    progress: &dyn Progress,
) -> ProfileOutcome {
    let mut o = ProfileOutcome {
        profile: name.to_string(),
        version: None,
        action: "skipped".into(),
        message: String::new(),
        downloaded_bytes: 0,
        resumed_from: None,
        apply: None,
        kind: None,
    };
    let fail = |mut o: ProfileOutcome, e: Error| {
        o.action = if matches!(e, Error::RolledBack(_)) {
            "rolled-back".into()
        } else {
            "failed".into()
        };
        o.kind = Some(e.kind());
        o.message = e.to_string();
        o
    };
    let Some(env) = environment_of(layout, r.opts, name) else {
        o.message = "this host declares no environment and the profile has none yet; set `environment` in the host config".into();
        return o;
    };
    let Some(entry) = channel.entry(name, arch, &env) else {
        o.message = format!(
            "channel `{}` lists no bundle for {name} {arch} {env}",
            channel.name
        );
        return o;
    };
    o.version = Some(entry.version.clone());
    let window = match channel.window.as_deref().map(Window::parse).transpose() {
        Ok(w) => w,
        Err(e) => return fail(o, Error::Policy(e)),
    };
    let in_window = window.is_none_or(|w| w.contains(crate::stage::local_minute_of_day()));
    let existing = Profile::open(layout, name).ok().flatten();
    if let Some(p) = &existing {
        let current = p.current().and_then(|n| p.generation(n));
        if current.is_some_and(|g| g.bundle_sha256 == entry.sha256 && g.status == Status::Good) {
            o.action = "up-to-date".into();
            o.message = format!("{name} {} already serves", entry.version);
            return o;
        }
        // Whichever is newer wins: a version installed another way (USB, a rollout) that is
        // newer than the channel's is not downgraded.
        if let Some(g) = current
            && let (Ok(have), Ok(offered)) = (
                semver::Version::parse(&g.version),
                semver::Version::parse(&entry.version),
            )
            && have > offered
        {
            o.action = "up-to-date".into();
            o.message =
                format!("{name} {have} serves, newer than the channel's {offered}; not downgraded");
            return o;
        }
        if p.state
            .generations
            .iter()
            .any(|g| g.bundle_sha256 == entry.sha256 && g.status == Status::Failed)
        {
            o.message = format!(
                "{name} {} failed here before and is not retried; publish a fixed version",
                entry.version
            );
            return o;
        }
    }
    if channel.not_before.is_some_and(|t| now < t) {
        o.action = "waiting".into();
        o.message = format!(
            "the channel applies nothing before {}",
            channel.not_before.unwrap_or(0)
        );
        return o;
    }
    if !channel.includes(&r.host_id) {
        o.message = format!(
            "host `{}` is outside this publication's cohort ({}%)",
            r.host_id,
            channel.cohort.unwrap_or(100)
        );
        return o;
    }
    // Already staged (by an earlier poll outside the window, or by a rollout)?
    if let Ok(Some(rec)) = crate::staged::load(layout, name)
        && rec.bundle_sha256 == entry.sha256
    {
        if !in_window {
            o.action = "waiting".into();
            o.message = staged_note(name, &entry.version, window);
            return o;
        }
        progress.step(&format!("applying the staged {name} {}", entry.version));
        return match apply::apply_staged(layout, name, r.opts, progress) {
            Ok(a) => {
                o.action = "applied".into();
                o.message = format!("{name} {}: {}", a.version, a.result);
                o.apply = Some(a);
                o
            }
            Err(e) => fail(o, e),
        };
    }
    let url = join_url(r.url, &entry.file);
    let file = match download(layout, http, &url, entry, wire, &mut o, progress) {
        Ok(f) => f,
        Err(e) => return fail(o, e),
    };
    let result = if in_window {
        progress.step(&format!("applying {name} {}", entry.version));
        apply::apply(layout, &file, r.opts, progress).map(|a| {
            o.action = "applied".into();
            o.message = format!("{name} {}: {}", a.version, a.result);
            o.apply = Some(a);
        })
    } else {
        progress.step(&format!("staging {name} {}", entry.version));
        crate::stage::stage(
            layout,
            &file,
            r.opts,
            window.map(|w| w.to_string()),
            progress,
        )
        .map(|_| {
            o.action = "staged".into();
            o.message = staged_note(name, &entry.version, window);
        })
    };
    let _ = std::fs::remove_file(&file);
    match result {
        Ok(()) => o,
        Err(e) => fail(o, e),
    }
}

fn staged_note(name: &str, version: &str, window: Option<Window>) -> String {
    match window {
        Some(w) => format!(
            "{name} {version} is staged; it is applied by the first poll inside the window {w} (opens in {} min)",
            w.minutes_until_open(crate::stage::local_minute_of_day())
        ),
        None => format!("{name} {version} is staged"),
    }
}

/// Downloads `entry` into `pull/downloads/<sha256>.part`, resuming what an earlier poll left,
/// and checks its size and sha256; returns the complete file.
fn download(
    layout: &Layout,
    http: &reqwest::blocking::Client,
    url: &str,
    entry: &smoker_format::channel::Entry,
    wire: &mut Wire,
    o: &mut ProfileOutcome,
    progress: &dyn Progress,
) -> Result<PathBuf> {
    let dir = pull_dir(layout).join("downloads");
    crate::fsutil::private_dir(&dir)?;
    let done = dir.join(format!("{}.tar.zst", entry.sha256));
    let part = dir.join(format!("{}.part", entry.sha256));
    let have = std::fs::symlink_metadata(&part)
        .ok()
        .filter(|m| m.file_type().is_file())
        .map(|m| m.len())
        .unwrap_or(0);
    let have = if have > entry.size { 0 } else { have };
    if have == entry.size
        && smoker_format::digest::sha256_file(&part).is_ok_and(|(sha, _)| sha == entry.sha256)
    {
        // An earlier poll downloaded it all but stopped before the rename.
        std::fs::rename(&part, &done).map_err(io_at(&done))?;
        return Ok(done);
    }
    progress.step(&format!("downloading {url}"));
    let mut req = http.get(url);
    if have > 0 && have < entry.size {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    wire.requests += 1;
    let resp = req
        .send()
        .and_then(|r| r.error_for_status())
        .map_err(|e| net_err(url, &e))?;
    let resumed = resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut f = if resumed {
        o.resumed_from = Some(have);
        progress.info(&format!("resuming at byte {have}"));
        crate::fsutil::open_private(&part, crate::fsutil::Private::Append)?
    } else {
        crate::fsutil::open_private(&part, crate::fsutil::Private::Truncate)?
    };
    let start = if resumed { have } else { 0 };
    let mut body = resp.take(entry.size.saturating_sub(start) + 1);
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    let copied = loop {
        match body.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                got += n as u64;
                if let Err(e) = f.write_all(&buf[..n]) {
                    break Err(io_at(&part)(e));
                }
            }
            Err(e) => {
                break Err(Error::Runtime(format!(
                    "the download of {url} was cut after {} of {} bytes ({e}); the next poll resumes it",
                    start + got,
                    entry.size
                )));
            }
        }
    };
    wire.bytes += got;
    o.downloaded_bytes = got;
    f.sync_all().map_err(io_at(&part))?;
    copied?;
    let (sha, size) = smoker_format::digest::sha256_file(&part).map_err(io_at(&part))?;
    if size != entry.size || sha != entry.sha256 {
        let complete = size >= entry.size;
        if complete {
            let _ = std::fs::remove_file(&part);
        }
        return Err(Error::Runtime(format!(
            "{url}: got {size} bytes with sha256 {sha}, the channel says {} bytes with sha256 {}; {}",
            entry.size,
            entry.sha256,
            if complete {
                "the download was removed and the next poll fetches it again"
            } else {
                "the download was cut; the next poll resumes it"
            }
        )));
    }
    std::fs::rename(&part, &done).map_err(io_at(&done))?;
    Ok(done)
}
