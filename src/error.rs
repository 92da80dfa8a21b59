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

/// Result alias for installer operations.
pub type Result<T> = std::result::Result<T, Error>;

/// Builds a closure that maps an I/O error to [`Error::Io`] for `path`.
pub fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
