//! The signed channel: `channel.json` + `channel.json.minisig`, static files that tell hosts
//! which bundle is the newest for their profile, architecture and environment.
//!
//! Written by `cargo xtask publish`, read by `smoker-install pull`. Like TUF's timestamp role
//! it carries a `sequence` that only grows (a host refuses one lower than the last it saw: no
//! rollback to an older channel) and an `expires` time (a host refuses a stale channel: no
//! freeze at an old state). Optional: `not_before` (nothing is applied before it), `cohort`
//! (the percentage of hosts that take it, by a hash of the host id, for phased rollouts) and a
//! maintenance `window` (`HH:MM-HH:MM`, host time) in which hosts apply; outside it they stage.
//!
//! The JSON is canonical (keys sorted at every depth, compact) like the manifest, and the
//! minisign signature covers its exact bytes. Every bundle it names is still verified on its
//! own: the channel only says which one to fetch, its size and sha256.

use crate::manifest::is_name;
use crate::signing::{SigningError, TrustedKeys};
use serde::{Deserialize, Serialize};

/// The channel file's name.
pub const CHANNEL_FILE: &str = "channel.json";
/// Its detached signature's name.
pub const CHANNEL_SIG_FILE: &str = "channel.json.minisig";
/// The format version this code reads and writes.
pub const CHANNEL_FORMAT: u32 = 1;
/// The largest channel file a host reads.
pub const MAX_CHANNEL_BYTES: u64 = 1024 * 1024;

/// The channel document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    /// Format version ([`CHANNEL_FORMAT`]).
    pub format: u32,
    /// The channel's name (e.g. `stable`).
    pub name: String,
    /// Grows with every publication; hosts refuse a lower one than they last saw.
    pub sequence: u64,
    /// When it was published (Unix seconds).
    pub published: u64,
    /// After this (Unix seconds) hosts refuse it.
    pub expires: u64,
    /// Nothing is applied before this (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// Percentage (0–100) of hosts that take this publication, by hash of the host id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<u8>,
    /// Maintenance window `HH:MM-HH:MM` (each host's local time) in which hosts apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// The newest bundle per profile, architecture and environment, sorted by those.
    pub bundles: Vec<Entry>,
}

/// One bundle of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Profile (the manifest's name).
    pub profile: String,
    /// Architecture (`amd64`, `armv7`).
    pub arch: String,
    /// Environment.
    pub environment: String,
    /// Version.
    pub version: String,
    /// Path of the bundle relative to the channel file (`<environment>/<file>.tar.zst`).
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the whole file, hex.
    pub sha256: String,
}

/// What is wrong with a channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The signature does not verify against the trusted keys.
    #[error("the channel's signature is not valid for the trusted keys: {0}")]
    Signature(#[from] SigningError),
    /// Not channel JSON.
    #[error("the channel file is not a valid channel: {0}")]
    Parse(#[from] serde_json::Error),
    /// A field breaks a rule.
    #[error("the channel file is invalid: {0}")]
    Invalid(String),
    /// Past `expires`.
    #[error(
        "the channel `{name}` (sequence {sequence}) expired at {expires} (now {now}): a stale channel is refused; publish it again"
    )]
    Expired {
        /// Channel name.
        name: String,
        /// Its sequence.
        sequence: u64,
        /// Its expiry.
        expires: u64,
        /// The host's clock.
        now: u64,
    },
    /// Lower sequence than one already seen.
    #[error(
        "the channel `{name}` has sequence {sequence}, lower than {seen} already seen here: an older channel is refused (a rollback or a replayed file)"
    )]
    Rollback {
        /// Channel name.
        name: String,
        /// Its sequence.
        sequence: u64,
        /// The highest seen.
        seen: u64,
    },
}

impl Channel {
    /// The canonical bytes, as signed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        match crate::canonical::to_vec(self) {
            Ok(mut out) => {
                out.push(b'\n');
                out
            }
            Err(_) => Vec::new(),
        }
    }

    /// Verifies `signature` over `bytes` with `keys`, then parses and validates the channel.
    /// Returns the channel and the id of the key that signed it.
    pub fn from_signed(
        bytes: &[u8],
        signature: &str,
        keys: &TrustedKeys,
    ) -> Result<(Channel, String), ChannelError> {
        let key_id = keys.verify(bytes, signature)?.key_id;
        let c: Channel = serde_json::from_slice(bytes)?;
        c.validate()?;
        Ok((c, key_id))
    }

    /// Checks the rules the type system does not express.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let bad = |s: String| Err(ChannelError::Invalid(s));
        if self.format != CHANNEL_FORMAT {
            return bad(format!(
                "format {} (this installer reads format {CHANNEL_FORMAT}); update the installer",
                self.format
            ));
        }
        if !is_name(&self.name) {
            return bad(format!("channel name `{}` is not a valid name", self.name));
        }
        if self.cohort.is_some_and(|c| c > 100) {
            return bad("cohort is a percentage (0 to 100)".into());
        }
        if let Some(w) = &self.window {
            Window::parse(w).map_err(ChannelError::Invalid)?;
        }
        for e in &self.bundles {
            if !is_name(&e.profile) || !is_name(&e.environment) || !is_name(&e.arch) {
                return bad(format!(
                    "entry {}/{}/{} has an invalid name",
                    e.profile, e.arch, e.environment
                ));
            }
            if semver::Version::parse(&e.version).is_err() {
                return bad(format!("entry {} has version `{}`", e.profile, e.version));
            }
            if !safe_relative(&e.file) {
                return bad(format!(
                    "entry {} names file `{}`: only a relative path of plain names is allowed",
                    e.profile,
                    e.file.escape_debug()
                ));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("entry {} has a malformed sha256", e.profile));
            }
        }
        Ok(())
    }

    /// Refuses a channel past its expiry or older than `seen` (the highest sequence seen).
    pub fn check_fresh(&self, now: u64, seen: Option<u64>) -> Result<(), ChannelError> {
        if let Some(seen) = seen
            && self.sequence < seen
        {
            return Err(ChannelError::Rollback {
                name: self.name.clone(),
                sequence: self.sequence,
                seen,
            });
        }
        if now >= self.expires {
            return Err(ChannelError::Expired {
                name: self.name.clone(),
                sequence: self.sequence,
                expires: self.expires,
                now,
            });
        }
        Ok(())
    }

    /// The bundle for this profile, architecture and environment.
    pub fn entry(&self, profile: &str, arch: &str, environment: &str) -> Option<&Entry> {
        self.bundles
            .iter()
            .find(|e| e.profile == profile && e.arch == arch && e.environment == environment)
    }

    /// True when `host_id` belongs to this publication's cohort (always without a cohort).
    pub fn includes(&self, host_id: &str) -> bool {
        self.cohort
            .is_none_or(|pct| cohort_bucket(&self.name, host_id) < u32::from(pct))
    }
}

/// A host's bucket 0–99 for phased rollouts of channel `name`: stable for the host, spread
/// evenly over hosts.
pub fn cohort_bucket(name: &str, host_id: &str) -> u32 {
    let d = crate::digest::sha256_hex(format!("{name}\0{host_id}").as_bytes());
    let n = u32::from_str_radix(&d[..8], 16).unwrap_or(0);
    n % 100
}

/// A relative path of plain names (no `.`, `..`, empty or absolute components, no `\`).
fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| {
            !c.is_empty() && c != "." && c != ".." && c.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// A daily maintenance window `HH:MM-HH:MM` in the host's local time; the end may be earlier
/// than the start (a window across midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minute of the day it opens (0–1439).
    pub start: u32,
    /// Minute of the day it closes.
    pub end: u32,
}

impl Window {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(s: &str) -> Result<Window, String> {
        let err = || {
            format!(
                "window `{}` is not HH:MM-HH:MM (e.g. 02:00-04:00)",
                s.escape_debug()
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(err)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60 && t.trim().len() == 5).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(err)?, minute(b).ok_or_else(err)?);
        if start == end {
            return Err(format!("window `{s}` is empty (it opens when it closes)"));
        }
        Ok(Window { start, end })
    }

    /// True when minute-of-day `m` is inside the window (start inclusive, end exclusive).
    pub fn contains(&self, m: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }

    /// Minutes from minute-of-day `m` until the window opens (0 when open).
    pub fn minutes_until_open(&self, m: u32) -> u32 {
        if self.contains(m) {
            0
        } else {
            (self.start + 1440 - m) % 1440
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel() -> Channel {
        Channel {
            format: CHANNEL_FORMAT,
            name: "stable".into(),
            sequence: 7,
            published: 1000,
            expires: 2000,
            not_before: None,
            cohort: None,
            window: None,
            bundles: vec![Entry {
                profile: "web".into(),
                arch: "amd64".into(),
                environment: "prod".into(),
                version: "1.2.3".into(),
                file: "prod/web-1.2.3-amd64.tar.zst".into(),
                size: 10,
                sha256: "a".repeat(64),
            }],
        }
    }

    #[test]
    fn windows_parse_contain_and_wrap_midnight() {
        let w = Window::parse("02:00-04:00").expect("parses");
        assert!(w.contains(120) && w.contains(239) && !w.contains(240) && !w.contains(0));
        assert_eq!(w.minutes_until_open(60), 60);
        assert_eq!(w.minutes_until_open(300), 1440 - 300 + 120);
        let n = Window::parse("23:30-00:30").expect("parses");
        assert!(n.contains(1420) && n.contains(10) && !n.contains(60));
        assert_eq!(n.to_string(), "23:30-00:30");
        for bad in [
            "2:00-04:00",
            "02:00",
            "25:00-01:00",
            "02:00-02:00",
            "aa:bb-cc:dd",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expired_and_older_channels_are_refused() {
        let c = channel();
        assert!(c.check_fresh(1500, Some(7)).is_ok());
        assert!(matches!(
            c.check_fresh(2000, None),
            Err(ChannelError::Expired { .. })
        ));
        assert!(matches!(
            c.check_fresh(1500, Some(8)),
            Err(ChannelError::Rollback { seen: 8, .. })
        ));
    }

    #[test]
    fn canonical_json_round_trips_and_unsafe_file_names_are_refused() {
        let c = channel();
        let bytes = c.to_canonical_json();
        let back: Channel = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(back, c);
        assert!(
            String::from_utf8_lossy(&bytes).starts_with(r#"{"bundles":[{"arch":"amd64""#),
            "keys sorted"
        );
        for f in ["../x.tar.zst", "/etc/passwd", "a//b", "a/./b", ""] {
            let mut bad = channel();
            bad.bundles[0].file = f.into();
            assert!(bad.validate().is_err(), "{f}");
        }
    }

    #[test]
    fn cohorts_take_about_their_share_of_hosts() {
        let mut c = channel();
        c.cohort = Some(30);
        let n = (0..1000)
            .filter(|i| c.includes(&format!("host-{i}")))
            .count();
        assert!((230..370).contains(&n), "{n} of 1000 in a 30% cohort");
        c.cohort = Some(0);
        assert!(!c.includes("host-1"));
        c.cohort = Some(100);
        assert!(c.includes("host-1"));
    }
}
