//! Git: a fixed identity, clones of the workspace's committed HEAD, and hashes of trees.

use crate::run::run_ok;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

/// Runs git in `dir` with a fixed identity and panics on failure; returns trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_ok(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.invalid",
            ])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .env("LC_ALL", "C"),
    );
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Clones the committed HEAD of the workspace repository into `dst`.
pub fn clone_workspace(dst: &Path) {
    run_ok(
        Command::new("git")
            .args(["clone", "--quiet", "--no-hardlinks"])
            .arg(crate::workspace_root())
            .arg(dst),
    );
}

/// Every regular file under `dir`, relative path → sha256.
pub fn hash_tree(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let meta = std::fs::symlink_metadata(&p).expect("metadata");
            if meta.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, crate::sha256_file(&p));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}
