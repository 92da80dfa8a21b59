//! Where the installer keeps things on a host.
//!
//! ```text
//! <root>/store/<hash>-<name>-<version>-<arch>/   immutable, verified bundle contents
//! <root>/staging/                                 unpacks in progress (never trusted)
//! <root>/profiles/<name>/<N>-link -> ../../store/…
//! <root>/profiles/<name>/current  -> <N>-link     switched with rename(2)
//! <root>/profiles/<name>/state.json               generations and their status
//! <root>/locks/<name>.lock                        per-profile lock and its holder
//! <root>/locks/.gc.lock                           host-wide gc lock (see `gc`)
//! <root>/floors/<name>                            anti-rollback floor: highest version committed
//! <root>/inputs/<key>/<name>                      bind-mounted bundle files by content (`inputs`)
//! <root>/audit.log, audit.head                    hash-chained audit log
//! ```

use std::path::{Path, PathBuf};

/// Default host root.
pub const DEFAULT_ROOT: &str = "/var/lib/smoker";
/// Environment variable overriding the root.
pub const ROOT_ENV: &str = "SMOKER_ROOT";

/// Paths under a host root.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// A layout rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed store.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }

    /// Where bundles are unpacked while being verified.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// All profiles.
    pub fn profiles(&self) -> PathBuf {
        self.root.join("profiles")
    }

    /// One profile's directory.
    pub fn profile(&self, name: &str) -> PathBuf {
        self.profiles().join(name)
    }

    /// Lock file of a profile.
    pub fn lock_file(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    /// The host-wide gc lock (see [`crate::gc`]).
    pub fn gc_lock_file(&self) -> PathBuf {
        self.root.join("locks").join(".gc.lock")
    }

    /// A profile's anti-rollback floor (kept outside the profile's directory, so removing or
    /// recreating the profile does not lower it).
    pub fn floor_file(&self, name: &str) -> PathBuf {
        self.root.join("floors").join(name)
    }

    /// The audit log.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    /// The audit log's head (hash and count of the last line), to detect truncation.
    pub fn audit_head(&self) -> PathBuf {
        self.root.join("audit.head")
    }

    /// Names of the profiles present on this host, sorted.
    pub fn profile_names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.profiles())
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_sit_under_the_root() {
        let l = Layout::new("/var/lib/smoker");
        assert_eq!(l.root(), Path::new("/var/lib/smoker"));
        assert_eq!(l.store(), Path::new("/var/lib/smoker/store"));
        assert_eq!(l.staging(), Path::new("/var/lib/smoker/staging"));
        assert_eq!(l.profile("web"), Path::new("/var/lib/smoker/profiles/web"));
        assert_eq!(
            l.lock_file("web"),
            Path::new("/var/lib/smoker/locks/web.lock")
        );
        assert_eq!(l.audit_log(), Path::new("/var/lib/smoker/audit.log"));
        assert_eq!(l.audit_head(), Path::new("/var/lib/smoker/audit.head"));
    }

    #[test]
    fn profile_names_are_the_directories_with_a_state_file_sorted() {
        let root = tempfile::tempdir().expect("tempdir");
        let l = Layout::new(root.path());
        assert!(l.profile_names().is_empty(), "no profiles directory yet");
        for (name, state) in [("web", true), ("api", true), ("half", false)] {
            std::fs::create_dir_all(l.profile(name)).expect("dir");
            if state {
                std::fs::write(l.profile(name).join("state.json"), "{}").expect("state");
            }
        }
        std::fs::write(l.profiles().join("stray.json"), "{}").expect("file");
        assert_eq!(l.profile_names(), ["api", "web"]);
    }
}
