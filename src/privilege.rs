//! Who started the installer, and what an elevated caller may not choose.
//!
//! Run through `sudo` (or a set-uid wrapper) by someone who is not root, the installer holds
//! powers its caller does not: whatever it trusts or obeys on the caller's word (which keys,
//! which host root, which host config, which env file, which policy exceptions) would be the
//! caller's to pick, and so root's. In that case trust and policy come only from root-owned
//! files: `/etc/smoker` and the default host root.

use crate::error::{Error, Result};
use std::path::Path;

/// How the process was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invoker {
    /// By root itself (or a service of root's).
    Root,
    /// With privileges its caller does not have: `sudo` by a user, or a set-uid binary.
    Elevated {
        /// The caller, as `sudo` names it (or the real uid).
        caller: String,
    },
    /// Without root privileges.
    Unprivileged,
}

/// The invoker of this process: real and effective uid, then `SUDO_UID`/`SUDO_USER` (set by
/// sudo itself; a caller who forges them only restricts themselves).
pub fn invoker() -> Invoker {
    // SAFETY: getuid and geteuid cannot fail and have no preconditions.
    let (ruid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
    classify(
        ruid,
        euid,
        std::env::var("SUDO_UID").ok(),
        std::env::var("SUDO_USER").ok(),
    )
}

/// [`invoker`] from its inputs.
pub fn classify(
    ruid: u32,
    euid: u32,
    sudo_uid: Option<String>,
    sudo_user: Option<String>,
) -> Invoker {
    if euid != 0 {
        return Invoker::Unprivileged;
    }
    if ruid != 0 {
        return Invoker::Elevated {
            caller: format!("uid {ruid}"),
        };
    }
    match sudo_uid.and_then(|u| u.parse::<u32>().ok()) {
        Some(uid) if uid != 0 => Invoker::Elevated {
            caller: sudo_user.unwrap_or_else(|| format!("uid {uid}")),
        },
        _ => Invoker::Root,
    }
}

/// What an elevated caller asked for, option by option (`None` where they left the default).
#[derive(Debug, Default)]
pub struct Choices<'a> {
    /// `--root` / `SMOKER_ROOT` when not the default.
    pub root: Option<&'a Path>,
    /// `--host-config` when not the default.
    pub host_config: Option<&'a Path>,
    /// `--key` or `--keys` / `SMOKER_KEYS`.
    pub keys: Option<&'a Path>,
    /// `--env-file`.
    pub env_file: Option<&'a Path>,
    /// `--allow-*`, `--environment` and `--project`, by flag name.
    pub exceptions: Vec<&'static str>,
}

/// Refuses, naming every one of them, the choices an elevated caller may not make.
pub fn check_elevated(invoker: &Invoker, choices: &Choices<'_>) -> Result<()> {
    let Invoker::Elevated { caller } = invoker else {
        return Ok(());
    };
    let mut refused = Vec::new();
    if let Some(p) = choices.root {
        refused.push(format!(
            "--root/SMOKER_ROOT {} (the host root is {})",
            p.display(),
            crate::layout::DEFAULT_ROOT
        ));
    }
    if let Some(p) = choices.host_config {
        refused.push(format!(
            "--host-config {} (the host config is {})",
            p.display(),
            crate::hostconfig::DEFAULT_HOST_CONFIG
        ));
    }
    if let Some(p) = choices.keys {
        refused.push(format!(
            "--key/--keys/SMOKER_KEYS {} (trusted keys live in /etc/smoker/keys)",
            p.display()
        ));
    }
    if let Some(p) = choices.env_file
        && !p.starts_with("/etc/smoker")
    {
        refused.push(format!(
            "--env-file {} (env files live in /etc/smoker)",
            p.display()
        ));
    }
    for flag in &choices.exceptions {
        refused.push(format!("{flag} (a policy exception is root's to grant)"));
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Policy(format!(
        "smoker-install runs with privileges its caller ({caller}) does not have, so trust and policy come only from root-owned /etc/smoker and the default host root; not accepted: {}. Run it as root for these, or put what is needed under /etc/smoker.",
        refused.join("; ")
    )))
}

/// Refuses a host root that a user other than root could change: every file the installer
/// trusts later (store entries, state, locks, the audit log) lives under it.
pub fn check_root_dir(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(root) else {
        // Not created yet: the installer creates it itself.
        return Ok(());
    };
    if meta.file_type().is_symlink() {
        return Err(Error::Policy(format!(
            "host root {} is a symbolic link; point --root at the real directory",
            root.display()
        )));
    }
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(Error::Policy(format!(
            "host root {} is owned by uid {} with mode {:o}; it must be owned by root and writable by root only: `chown root:root {} && chmod go-w {}`",
            root.display(),
            meta.uid(),
            meta.mode() & 0o7777,
            root.display(),
            root.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn sudo_by_a_user_is_elevated_and_root_is_not() {
        assert_eq!(classify(0, 0, None, None), Invoker::Root);
        assert_eq!(
            classify(0, 0, Some("0".into()), Some("root".into())),
            Invoker::Root
        );
        assert_eq!(
            classify(0, 0, Some("1000".into()), Some("deploy".into())),
            Invoker::Elevated {
                caller: "deploy".into()
            }
        );
        assert_eq!(
            classify(1000, 0, None, None),
            Invoker::Elevated {
                caller: "uid 1000".into()
            }
        );
        assert_eq!(
            classify(1000, 1000, Some("1000".into()), None),
            Invoker::Unprivileged
        );
    }

    #[test]
    fn an_elevated_caller_cannot_pick_keys_root_config_env_or_exceptions() {
        let elevated = Invoker::Elevated {
            caller: "deploy".into(),
        };
        let choices = Choices {
            root: Some(Path::new("/home/deploy/root")),
            host_config: Some(Path::new("/tmp/host.toml")),
            keys: Some(Path::new("/home/deploy/evil.pub")),
            env_file: Some(Path::new("/home/deploy/x.env")),
            exceptions: vec!["--allow-downgrade", "--allow-env-change"],
        };
        let msg = match check_elevated(&elevated, &choices) {
            Err(Error::Policy(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        for needle in [
            "caller (deploy)",
            "--root/SMOKER_ROOT /home/deploy/root",
            "--host-config /tmp/host.toml",
            "--key/--keys/SMOKER_KEYS /home/deploy/evil.pub",
            "--env-file /home/deploy/x.env",
            "--allow-downgrade",
            "--allow-env-change",
        ] {
            assert!(msg.contains(needle), "`{needle}` not in: {msg}");
        }
        // The defaults, and an env file under /etc/smoker, are fine.
        let ok = Choices {
            env_file: Some(Path::new("/etc/smoker/cloud.env")),
            ..Choices::default()
        };
        check_elevated(&elevated, &ok).expect("defaults are allowed");
        // Root may choose anything.
        check_elevated(&Invoker::Root, &choices).expect("root chooses freely");
    }

    #[test]
    fn a_group_or_world_writable_root_is_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        check_root_dir(&root).expect("absent: created later");
        std::fs::create_dir(&root).expect("mkdir");
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            check_root_dir(&root).expect("root-owned 755 is fine");
        }
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        match check_root_dir(&root) {
            Err(Error::Policy(m)) => assert!(m.contains("chmod go-w"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&root, &link).expect("symlink");
        match check_root_dir(&link) {
            Err(Error::Policy(m)) => assert!(m.contains("symbolic link"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
