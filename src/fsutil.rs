//! Durable file operations: atomic replace, atomic symlink switch, directory fsync.

use crate::error::{Result, io_at};
use std::path::Path;

/// fsyncs a directory so a rename or create inside it survives a power cut.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    smoker_format::fsio::fsync_dir(dir).map_err(io_at(dir))
}

/// Replaces `path` with `bytes` atomically: temp file in the same directory, fsync, rename(2),
/// fsync of the directory. Readers see the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    smoker_format::fsio::write_atomic(path, bytes, mode).map_err(io_at(path))
}

/// Points symlink `link` at `target` atomically: a new link under a temporary name, then
/// rename(2) over `link`, then fsync of the directory.
pub fn symlink_atomic(target: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, link).map_err(io_at(link))?;
    fsync_dir(dir)
}

/// Sets every file under `root` to read-only (0444, or 0555 when executable) and every
/// directory to 0555.
pub fn make_read_only(root: &Path) -> Result<()> {
    set_tree_modes(root, false)
}

/// Makes a read-only tree writable again (before deleting it).
pub fn make_writable(root: &Path) -> Result<()> {
    set_tree_modes(root, true)
}

fn set_tree_modes(path: &Path, writable: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(io_at(path))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        if writable {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(io_at(path))?;
        }
        for e in std::fs::read_dir(path).map_err(io_at(path))? {
            let e = e.map_err(io_at(path))?;
            set_tree_modes(&e.path(), writable)?;
        }
        if !writable {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o555))
                .map_err(io_at(path))?;
        }
    } else {
        let exec = mode & 0o111 != 0;
        let new = match (writable, exec) {
            (true, true) => 0o755,
            (true, false) => 0o644,
            (false, true) => 0o555,
            (false, false) => 0o444,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(new))
            .map_err(io_at(path))?;
    }
    Ok(())
}

/// Removes a (possibly read-only) tree.
pub fn remove_tree(root: &Path) -> Result<()> {
    if !root.exists() {
        return Ok(());
    }
    make_writable(root)?;
    std::fs::remove_dir_all(root).map_err(io_at(root))
}

/// Free bytes available to unprivileged users on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut p = path;
    while !p.exists() {
        p = p.parent()?;
    }
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Opens `path` for reading only if it is a regular file. With `follow_links` false the last
/// component must not be a symbolic link (`O_NOFOLLOW`); FIFOs and devices are refused without
/// blocking (`O_NONBLOCK` on open, then a check of what was opened, so a name swapped between
/// a look and the open cannot hand over something else).
pub fn open_regular(path: &Path, follow_links: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow_links {
        flags |= libc::O_NOFOLLOW;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                crate::error::Error::Policy(format!(
                    "{} is a symbolic link; links are not followed here",
                    shown(path)
                ))
            } else {
                crate::error::Error::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    let meta = file.metadata().map_err(io_at(path))?;
    if !meta.is_file() {
        return Err(crate::error::Error::Policy(format!(
            "{} is not a regular file",
            shown(path)
        )));
    }
    Ok(file)
}

/// A path as it may be shown in a message or a log: control characters and invalid UTF-8
/// escaped, so a hostile file name cannot rewrite a terminal or forge log lines.
pub fn shown(path: &Path) -> String {
    path.to_string_lossy().escape_debug().to_string()
}

/// Creates `dir` (and missing parents) for the installer's private files: new directories get
/// mode 0700. An existing directory is left as it is.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_at(dir))
}

/// How [`open_private`] opens a file.
#[derive(Debug, Clone, Copy)]
pub enum Private {
    /// Read and write, created when missing, never truncated (lock files).
    ReadWrite,
    /// Appended to, created when missing (logs).
    Append,
    /// Written anew: created, or truncated when it exists (temporary files).
    Truncate,
}

/// Opens one of the installer's own files under the host root: created with mode 0600 in a
/// 0700 directory, and never through a symbolic link (`O_NOFOLLOW`), so a link planted in its
/// place cannot redirect a root-owned write onto another file.
pub fn open_private(path: &Path, how: Private) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let mut o = std::fs::OpenOptions::new();
    o.create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    match how {
        Private::ReadWrite => o.read(true).write(true).truncate(false),
        Private::Append => o.append(true),
        Private::Truncate => o.write(true).truncate(true),
    };
    o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            crate::error::Error::Policy(format!(
                "{} is a symbolic link where the installer keeps its own file; remove it (links are never followed here)",
                shown(path)
            ))
        } else {
            crate::error::Error::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn private_files_are_0600_in_0700_directories() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("locks/x.lock");
        drop(open_private(&p, Private::ReadWrite).expect("open"));
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&d.path().join("locks")), 0o700);
    }

    #[test]
    fn a_planted_link_is_never_written_through() {
        let d = tempfile::tempdir().expect("tempdir");
        let victim = d.path().join("shadow");
        std::fs::write(&victim, "root:secret\n").expect("victim");
        for how in [Private::ReadWrite, Private::Append, Private::Truncate] {
            let link = d.path().join(format!("planted-{how:?}"));
            std::os::unix::fs::symlink(&victim, &link).expect("symlink");
            match open_private(&link, how) {
                Err(crate::error::Error::Policy(m)) => assert!(m.contains("symbolic link"), "{m}"),
                other => panic!("{how:?}: expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(
            std::fs::read_to_string(&victim).expect("read"),
            "root:secret\n"
        );
    }

    #[test]
    fn the_audit_log_and_the_lock_refuse_planted_links() {
        let d = tempfile::tempdir().expect("tempdir");
        let layout = crate::layout::Layout::new(d.path());
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep me\n").expect("victim");
        std::os::unix::fs::symlink(&victim, layout.audit_log()).expect("symlink");
        assert!(crate::audit::append(&layout, "test", serde_json::json!({})).is_err());
        std::fs::create_dir_all(layout.lock_file("p").parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(&victim, layout.lock_file("p")).expect("symlink");
        assert!(crate::hostlock::acquire(&layout, "p", false).is_err());
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "keep me\n");
    }
}
