//! The installer's error type.

use std::path::PathBuf;

/// Everything that can stop an installer command. Messages say what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The bundle failed verification; nothing was written.
    #[error("bundle rejected, nothing was installed: {0}")]
    Verify(#[from] smoker_format::bundle::read::VerifyError),
    /// Another command holds the profile's lock.
    #[error("{0}")]
    Locked(String),
    /// Preflight found problems; nothing was changed.
    #[error("preflight failed, nothing was changed:\n  - {}", .0.join("\n  - "))]
    Preflight(Vec<String>),
    /// A docker or compose command failed.
    #[error("{0}")]
    Runtime(String),
    /// The bundle is valid but may not be installed here (policy).
    #[error("{0}")]
    Policy(String),
    /// Host state is missing or inconsistent.
    #[error("{0}")]
    State(String),
    /// The health gate failed and the previous generation was restored.
    #[error("{0}")]
    RolledBack(String),
    /// The health gate failed and no healthy generation could be restored.
    #[error("{0}")]
    Broken(String),
}

/// The kind of a failure, stable across releases: the `kind` field of `--json` output and the
/// process exit status of `smoker-install` are both derived from it, the same for every
/// subcommand.
///
/// | kind | exit status | meaning |
/// | --- | --- | --- |
/// | (success) | 0 | the command did what it was asked |
/// | `runtime`, `io` | 1 | a docker/compose command or a file operation failed |
/// | `usage` | 2 | the command line is wrong (clap's usage errors) |
/// | `verify` | 3 | the bundle failed verification; nothing was installed |
/// | `policy` | 4 | the bundle or request is valid but refused here |
/// | `preflight` | 5 | preflight found problems; nothing was changed |
/// | `locked` | 6 | another command holds the profile lock; retry later |
/// | `rolled-back` | 7 | the new generation failed; the previous one serves again |
/// | `broken` | 8 | no healthy generation serves; the host needs attention |
/// | `state` | 9 | host state or configuration is missing or inconsistent |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The command line is wrong (unknown option, missing argument, ambiguous profile).
    Usage,
    /// The bundle failed verification (signature, manifest or content); nothing was installed.
    Verify,
    /// The bundle (or the request) is valid but refused on this host.
    Policy,
    /// Preflight found problems; nothing was changed.
    Preflight,
    /// Another command holds the profile's lock: retry later (or pass `--wait`).
    Locked,
    /// The new generation failed; the previous good one serves again.
    RolledBack,
    /// No healthy generation could be restored: the host needs attention (`smoker-install
    /// history`, then `rollback --to N` or a fixed bundle).
    Broken,
    /// Host state or configuration is missing or inconsistent (no such profile or generation,
    /// a corrupt state file, an unusable key directory, a broken audit log).
    State,
    /// A docker or compose command failed.
    Runtime,
    /// A file operation failed.
    Io,
}

impl Kind {
    /// Every kind, in the order of the exit status table.
    pub const ALL: [Kind; 10] = [
        Kind::Runtime,
        Kind::Io,
        Kind::Usage,
        Kind::Verify,
        Kind::Policy,
        Kind::Preflight,
        Kind::Locked,
        Kind::RolledBack,
        Kind::Broken,
        Kind::State,
    ];

    /// The stable name (`verify`, `rolled-back`, …), as in `--json` output.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Verify => "verify",
            Kind::Policy => "policy",
            Kind::Preflight => "preflight",
            Kind::Locked => "locked",
            Kind::RolledBack => "rolled-back",
            Kind::Broken => "broken",
            Kind::State => "state",
            Kind::Runtime => "runtime",
            Kind::Io => "io",
        }
    }

    /// The process exit status of `smoker-install` for a failure of this kind (0 is success).
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Runtime | Kind::Io => 1,
            Kind::Usage => 2,
            Kind::Verify => 3,
            Kind::Policy => 4,
            Kind::Preflight => 5,
            Kind::Locked => 6,
            Kind::RolledBack => 7,
            Kind::Broken => 8,
            Kind::State => 9,
        }
    }

    /// One line saying what the kind means and what to do.
    pub fn meaning(self) -> &'static str {
        match self {
            Kind::Usage => "the command line is wrong; see --help",
            Kind::Verify => "the bundle failed verification; nothing was installed",
            Kind::Policy => "the bundle or request is valid but refused on this host",
            Kind::Preflight => "preflight found problems; nothing was changed",
            Kind::Locked => "another command holds the profile lock; retry later",
            Kind::RolledBack => "the new generation failed; the previous one serves again",
            Kind::Broken => "no healthy generation serves; the host needs attention (`history`)",
            Kind::State => "host state or configuration is missing or inconsistent",
            Kind::Runtime => "a docker or compose command failed",
            Kind::Io => "a file operation failed",
        }
    }

    /// The kind with this stable name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The exit status table as plain text (for `smoker-install --help`): one line per exit
/// status, kinds that share a status on one line.
pub fn exit_status_table() -> String {
    let mut out =
        String::from("Exit status (the same for every subcommand; `kind` in --json output):\n");
    out.push_str(&format!("  {:>2}  {:<18} {}\n", 0, "ok", "success"));
    let mut code = None;
    for k in Kind::ALL {
        if code == Some(k.exit_code()) {
            continue;
        }
        code = Some(k.exit_code());
        let same: Vec<&str> = Kind::ALL
            .iter()
            .filter(|o| o.exit_code() == k.exit_code())
            .map(|o| o.as_str())
            .collect();
        let meaning = if same.len() > 1 {
            "a docker/compose command or a file operation failed"
        } else {
            k.meaning()
        };
        out.push_str(&format!(
            "  {:>2}  {:<18} {}\n",
            k.exit_code(),
            same.join(", "),
            meaning
        ));
    }
    out
}

impl Error {
    /// The kind of this error, which decides the exit status and the `kind` of `--json`
    /// output. A bundle that cannot be read at all (rather than one that is wrong) is `io`.
    pub fn kind(&self) -> Kind {
        use smoker_format::bundle::read::VerifyError;
        match self {
            Error::Io { .. } => Kind::Io,
            Error::Verify(VerifyError::Io(_) | VerifyError::Sink { .. }) => Kind::Io,
            Error::Verify(_) => Kind::Verify,
            Error::Locked(_) => Kind::Locked,
            Error::Preflight(_) => Kind::Preflight,
            Error::Runtime(_) => Kind::Runtime,
            Error::Policy(_) => Kind::Policy,
            Error::State(_) => Kind::State,
            Error::RolledBack(_) => Kind::RolledBack,
            Error::Broken(_) => Kind::Broken,
        }
    }
}

/// Result alias for installer operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure that maps an I/O error to [`Error::Io`] for `path`.
pub fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_stable_names_and_distinct_exit_statuses() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_name(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).ok(),
                Some(serde_json::Value::String(k.as_str().into()))
            );
            assert_ne!(k.exit_code(), 0, "{k}");
            let sharing: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|o| o.exit_code() == k.exit_code())
                .collect();
            // Only the general errors share a status.
            if sharing.len() > 1 {
                assert_eq!(sharing, [Kind::Runtime, Kind::Io]);
            }
        }
        assert_eq!(Kind::Usage.exit_code(), 2, "clap's usage status");
    }

    #[test]
    fn errors_map_to_their_kind() {
        assert_eq!(Error::Locked("x".into()).kind(), Kind::Locked);
        assert_eq!(Error::RolledBack("x".into()).kind(), Kind::RolledBack);
        assert_eq!(Error::Broken("x".into()).kind(), Kind::Broken);
        let unreadable = smoker_format::bundle::read::VerifyError::Io(std::io::Error::other("x"));
        assert_eq!(Error::Verify(unreadable).kind(), Kind::Io);
        let bad = smoker_format::bundle::read::VerifyError::Truncated;
        assert_eq!(Error::Verify(bad).kind(), Kind::Verify);
    }

    #[test]
    fn the_table_lists_every_status_once() {
        let t = exit_status_table();
        for k in Kind::ALL {
            assert!(t.contains(k.as_str()), "{t}");
        }
        assert_eq!(t.lines().count(), 1 + 1 + 9, "{t}");
    }
}
