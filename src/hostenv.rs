//! The environment a generation runs with: the bundle's config plus the host's secrets.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Directory of host env files (`<profile>.env`).
pub const DEFAULT_ENV_DIR: &str = "/etc/smoker";

/// The default host env file of a profile.
pub fn default_env_file(profile: &str) -> PathBuf {
    Path::new(DEFAULT_ENV_DIR).join(format!("{profile}.env"))
}

/// Parses `KEY=VALUE` lines (blank lines, `#` comments and an `export ` prefix allowed;
/// matching single or double quotes around the value are removed). Key and value are trimmed;
/// nothing else is interpreted (no escapes, no inline comments), the value runs to the end of
/// the line, and a later assignment of a key wins. A line without `=` is skipped, not an error.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = if v.len() >= 2
                && ((v.starts_with('"') && v.ends_with('"'))
                    || (v.starts_with('\'') && v.ends_with('\'')))
            {
                &v[1..v.len() - 1]
            } else {
                v
            };
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// Reads a host env file; a missing file is an empty set (the required-secrets check then
/// names what is missing).
pub fn read_host(path: &Path) -> Result<BTreeMap<String, String>> {
    use std::io::Read as _;
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    // One open: the mode and owner checked are those of the file that is read.
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(io(e)),
    };
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(io)?;
    check_secret_file(path, &file.metadata().map_err(io)?)?;
    let values = parse(&text);
    crate::redact::register(values.values().cloned());
    Ok(values)
}

/// A host env file holds secrets: readable by its owner only, and owned by root when the
/// installer runs as root (anyone else could change what the stack runs with).
pub fn check_secret_file(path: &Path, meta: &std::fs::Metadata) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let mode = meta.mode() & 0o777;
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    if mode & 0o077 != 0 {
        return Err(Error::Policy(format!(
            "host env file {} has mode {mode:o}: it holds secrets and must be readable by its owner only — `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    if as_root && meta.uid() != 0 {
        return Err(Error::Policy(format!(
            "host env file {} is owned by uid {}; the installer runs as root and trusts only root-owned env files — `chown root:root {}`",
            path.display(),
            meta.uid(),
            path.display()
        )));
    }
    Ok(())
}

pub use smoker_format::manifest::steers_tools;

/// The full environment of a generation: bundle config, overridden by host values.
pub fn stack_env(
    entry_dir: &Path,
    config_file: Option<&str>,
    host: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if let Some(rel) = config_file {
        let p = entry_dir.join(rel);
        let text = std::fs::read_to_string(&p).map_err(crate::error::io_at(&p))?;
        env.extend(parse(&text));
    }
    env.extend(host.iter().map(|(k, v)| (k.clone(), v.clone())));
    let steering: Vec<&str> = env
        .keys()
        .map(String::as_str)
        .filter(|k| steers_tools(k))
        .collect();
    if !steering.is_empty() {
        return Err(Error::Policy(format!(
            "{} would steer docker or compose themselves, not the stack; remove them from the recipe's config or the host env file",
            steering.join(", ")
        )));
    }
    Ok(env)
}

/// Names in `required` absent (or empty) in `host`.
pub fn missing(required: &[String], host: &BTreeMap<String, String>) -> Vec<String> {
    required
        .iter()
        .filter(|k| host.get(*k).is_none_or(|v| v.is_empty()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn comments_blank_lines_and_export_are_understood() {
        let env = parse(
            "# database\n\n   # indented comment\nDB_USER=app\nexport DB_PASSWORD=s3cret\n  PORT = 8080  \n",
        );
        assert_eq!(
            env,
            map(&[
                ("DB_PASSWORD", "s3cret"),
                ("DB_USER", "app"),
                ("PORT", "8080")
            ])
        );
    }

    #[test]
    fn matching_quotes_are_removed_and_nothing_else_is_interpreted() {
        let env = parse(concat!(
            "DOUBLE=\"two words\"\n",
            "SINGLE='it''s'\n",
            "MIXED=\"open'\n",
            "INNER=\"a\"b\"\n",
            "ESCAPE=\"a\\nb\"\n",
            "HASH=value # not a comment\n",
            "URL=postgres://u:p@db/app?sslmode=require\n",
            "LONE=\"\n",
        ));
        assert_eq!(
            env,
            map(&[
                ("DOUBLE", "two words"),
                ("ESCAPE", "a\\nb"),
                ("HASH", "value # not a comment"),
                ("INNER", "a\"b"),
                ("LONE", "\""),
                ("MIXED", "\"open'"),
                ("SINGLE", "it''s"),
                ("URL", "postgres://u:p@db/app?sslmode=require"),
            ])
        );
    }

    #[test]
    fn empty_values_are_kept_as_empty() {
        let env = parse("A=\nB=\"\"\nC=''\nD=   \n");
        assert_eq!(env, map(&[("A", ""), ("B", ""), ("C", ""), ("D", "")]));
    }

    #[test]
    fn the_last_assignment_of_a_key_wins() {
        assert_eq!(parse("K=1\nexport K=2\n"), map(&[("K", "2")]));
    }

    #[test]
    fn lines_without_an_equals_sign_are_skipped_without_an_error() {
        // The parser never fails: a line that is not KEY=VALUE is ignored (the required-secrets
        // check then names a secret that was meant to be set on it). An empty key is kept, and
        // `export` followed by a tab is not recognised.
        let env = parse("DB_PASSWORD: s3cret\nexport\nGOOD=1\n=orphan\nexport\tTABBED=2\n");
        assert_eq!(
            env,
            map(&[("", "orphan"), ("GOOD", "1"), ("export\tTABBED", "2")])
        );
        assert_eq!(missing(&["DB_PASSWORD".to_string()], &env), ["DB_PASSWORD"]);
    }

    #[test]
    fn missing_names_absent_and_empty_secrets_in_their_order() {
        let host = map(&[("SET", "x"), ("EMPTY", "")]);
        let required: Vec<String> = ["ZED", "SET", "EMPTY", "ALPHA"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(missing(&required, &host), ["ZED", "EMPTY", "ALPHA"]);
        assert!(missing(&[], &host).is_empty());
    }

    #[test]
    fn read_host_treats_a_missing_file_as_empty_and_names_an_unreadable_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("web.env");
        assert!(read_host(&file).expect("missing").is_empty());
        std::fs::write(&file, "export TOKEN='abc'\n").expect("write");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
        }
        assert_eq!(read_host(&file).expect("read"), map(&[("TOKEN", "abc")]));
        match read_host(dir.path()) {
            Err(Error::Io { path, .. }) => assert_eq!(path, dir.path()),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn host_values_override_the_bundle_config() {
        let entry = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(entry.path().join("config")).expect("dir");
        std::fs::write(
            entry.path().join("config/prod.env"),
            "LOG_LEVEL=info\nDB_HOST=db\n",
        )
        .expect("write");
        let host = map(&[("LOG_LEVEL", "debug"), ("DB_PASSWORD", "pw")]);
        let env = stack_env(entry.path(), Some("config/prod.env"), &host).expect("env");
        assert_eq!(
            env,
            map(&[
                ("DB_HOST", "db"),
                ("DB_PASSWORD", "pw"),
                ("LOG_LEVEL", "debug")
            ])
        );
        assert_eq!(stack_env(entry.path(), None, &host).expect("env"), host);
        match stack_env(entry.path(), Some("config/dev.env"), &host) {
            Err(Error::Io { path, .. }) => assert_eq!(path, entry.path().join("config/dev.env")),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn the_default_env_file_is_named_after_the_profile() {
        assert_eq!(default_env_file("web"), Path::new("/etc/smoker/web.env"));
    }

    #[test]
    fn a_group_or_world_readable_env_file_is_refused_with_the_chmod() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("cloud.env");
        std::fs::write(&p, "TOKEN=s3cret\n").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        match read_host(&p) {
            Err(Error::Policy(m)) => {
                assert!(m.contains("mode 644"), "{m}");
                assert!(m.contains("chmod 600"), "{m}");
                assert!(
                    !m.contains("s3cret"),
                    "the message must not show the secret: {m}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(read_host(&p).expect("600 is fine")["TOKEN"], "s3cret");
    }

    #[test]
    fn variables_that_steer_docker_or_compose_are_refused_wherever_they_come_from() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("config")).expect("mkdir");
        std::fs::write(
            d.path().join("config/prod.env"),
            "PORT=80\nDOCKER_HOST=tcp://203.0.113.9:2375\n",
        )
        .expect("write");
        let msg = match stack_env(d.path(), Some("config/prod.env"), &BTreeMap::new()) {
            Err(Error::Policy(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert!(msg.contains("DOCKER_HOST"), "{msg}");
        let host: BTreeMap<String, String> = [
            ("COMPOSE_FILE".to_string(), "/tmp/x.yml".to_string()),
            ("LD_PRELOAD".to_string(), "/tmp/x.so".to_string()),
            ("PYTHONPATH".to_string(), "/tmp".to_string()),
        ]
        .into_iter()
        .collect();
        std::fs::write(d.path().join("config/prod.env"), "PORT=80\n").expect("write");
        let msg = match stack_env(d.path(), Some("config/prod.env"), &host) {
            Err(Error::Policy(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        for v in ["COMPOSE_FILE", "LD_PRELOAD", "PYTHONPATH"] {
            assert!(msg.contains(v), "{v} not named: {msg}");
        }
        assert!(!steers_tools("DB_HOST") && !steers_tools("PORT") && !steers_tools("COMPOSE"));
    }
}
