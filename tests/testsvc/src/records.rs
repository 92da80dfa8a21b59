//! The records file of the stateful mode: `records.txt` in the data dir, one
//! record per line, each line ending in `\n`.
//!
//! Appends are fsynced before they are acknowledged; whole-file replacements
//! (`restore`, `migrate`) write a temp file in the same directory, fsync it,
//! rename it over the old file and fsync the directory, so a reader sees the
//! old or the new file, never a mix.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Name of the records file inside the data dir.
pub const RECORDS_FILE: &str = "records.txt";

/// Serialises appends and replacements within one process.
static WRITE_LOCK: Mutex<()> = Mutex::new(());

/// Path of the records file in `data_dir`.
pub fn records_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RECORDS_FILE)
}

/// Appends `line` (which must not contain `\n` or `\r`) plus a newline to the
/// records file, creating the data dir and the file when missing, and fsyncs.
pub fn append(data_dir: &Path, line: &str) -> io::Result<()> {
    if line.contains(['\n', '\r']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a record is a single line",
        ));
    }
    let _guard = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let created_dir = !data_dir.exists();
    fs::create_dir_all(data_dir)?;
    let path = records_path(data_dir);
    let created_file = !path.exists();
    let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    file.write_all(&bytes)?;
    file.sync_all()?;
    if created_file || created_dir {
        sync_dir(data_dir)?;
    }
    Ok(())
}

/// Reads the records file; `Ok(None)` when it does not exist.
pub fn read(data_dir: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(records_path(data_dir)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Atomically replaces the records file with `contents` (temp file, fsync,
/// rename, fsync of the directory). Creates the data dir when missing.
pub fn replace(data_dir: &Path, contents: &[u8]) -> io::Result<()> {
    let _guard = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join(format!(".{RECORDS_FILE}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, records_path(data_dir))?;
        sync_dir(data_dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Fsyncs a directory so a rename or a new entry in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One instruction of a migration script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    /// ASCII-uppercase every record.
    Uppercase,
    /// Append one record with this text.
    Append(String),
    /// Abort the migration (exit code 3), writing nothing.
    Fail,
}

/// Why a migration script could not be parsed or applied.
#[derive(Debug, PartialEq, Eq)]
pub enum MigrateError {
    /// A line is not a known instruction (1-based line number, the line).
    Parse(usize, String),
    /// The script reached a `fail` instruction (1-based line number).
    Fail(usize),
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::Parse(n, line) => write!(f, "line {n}: unknown instruction {line:?}"),
            MigrateError::Fail(n) => write!(f, "line {n}: migration failed on purpose (`fail`)"),
        }
    }
}

impl std::error::Error for MigrateError {}

/// Parses a migration script: one instruction per line; blank lines and lines
/// starting with `#` are ignored. Returns each instruction with its 1-based
/// line number.
pub fn parse_script(script: &str) -> Result<Vec<(usize, Instruction)>, MigrateError> {
    let mut out = Vec::new();
    for (i, raw) in script.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let instruction = if trimmed == "uppercase" {
            Instruction::Uppercase
        } else if trimmed == "fail" {
            Instruction::Fail
        } else if let Some(text) = line.trim_start().strip_prefix("append ") {
            Instruction::Append(text.to_string())
        } else {
            return Err(MigrateError::Parse(n, line.to_string()));
        };
        out.push((n, instruction));
    }
    Ok(out)
}

/// Applies `instructions` to the records `contents` in memory and returns the
/// new contents. A missing trailing newline on the last record is added.
pub fn apply(
    contents: &[u8],
    instructions: &[(usize, Instruction)],
) -> Result<Vec<u8>, MigrateError> {
    let mut data = contents.to_vec();
    if !data.is_empty() && !data.ends_with(b"\n") {
        data.push(b'\n');
    }
    for (n, instruction) in instructions {
        match instruction {
            Instruction::Uppercase => data.make_ascii_uppercase(),
            Instruction::Append(text) => {
                data.extend_from_slice(text.as_bytes());
                data.push(b'\n');
            }
            Instruction::Fail => return Err(MigrateError::Fail(*n)),
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh, empty directory under the system temp dir.
    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "testsvc-unit-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn append_creates_dir_and_file_and_appends_lines() {
        let dir = temp_dir().join("nested");
        assert_eq!(read(&dir).ok(), Some(None));
        append(&dir, "alpha").expect("append alpha");
        append(&dir, "beta").expect("append beta");
        assert_eq!(read(&dir).ok(), Some(Some(b"alpha\nbeta\n".to_vec())));
        assert!(append(&dir, "two\nlines").is_err());
        let _ = fs::remove_dir_all(dir.parent().unwrap_or(&dir));
    }

    #[test]
    fn replace_is_whole_file_and_leaves_no_temp() {
        let dir = temp_dir();
        append(&dir, "old").expect("append");
        replace(&dir, b"new\n").expect("replace");
        assert_eq!(read(&dir).ok(), Some(Some(b"new\n".to_vec())));
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("read_dir")
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(RECORDS_FILE)]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn script_parsing() {
        let script = "# comment\n\nuppercase\nappend hello world\r\n  append  x\nfail\n";
        assert_eq!(
            parse_script(script),
            Ok(vec![
                (3, Instruction::Uppercase),
                (4, Instruction::Append("hello world".into())),
                (5, Instruction::Append(" x".into())),
                (6, Instruction::Fail),
            ])
        );
        assert_eq!(
            parse_script("uppercase\nexplode\n"),
            Err(MigrateError::Parse(2, "explode".into()))
        );
    }

    #[test]
    fn apply_uppercase_and_append() {
        let script = parse_script("uppercase\nappend tail\n").expect("parse");
        assert_eq!(
            apply(b"alpha\nbeta", &script),
            Ok(b"ALPHA\nBETA\ntail\n".to_vec())
        );
        assert_eq!(apply(b"", &script), Ok(b"tail\n".to_vec()));
    }

    #[test]
    fn apply_fail_reports_line() {
        let script = parse_script("append x\nfail\n").expect("parse");
        assert_eq!(apply(b"a\n", &script), Err(MigrateError::Fail(2)));
    }
}
