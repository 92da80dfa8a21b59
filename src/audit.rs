//! The audit log: one JSON line per apply, rollback, recover and gc, hash-chained.
//!
//! Every line carries `prev`, the sha256 of the previous line (all zeros for the first), and
//! `seq`, its position. `audit.head` holds the count and hash of the last line, so removing
//! lines from the end is detected as well as editing or reordering them.

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use serde_json::{Map, Value};
use smoker_format::digest::sha256_hex;
use std::io::Write as _;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends one event. `fields` is merged into the line (it must be a JSON object).
pub fn append(layout: &Layout, event: &str, fields: Value) -> Result<()> {
    let log = layout.audit_log();
    let (count, prev) = read_head(layout)?.unwrap_or((0, GENESIS.to_string()));
    let mut line = Map::new();
    line.insert("seq".into(), (count + 1).into());
    line.insert("prev".into(), prev.into());
    line.insert(
        "time".into(),
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    line.insert("event".into(), event.into());
    line.insert("host".into(), crate::sys::hostname().into());
    if let Value::Object(m) = fields {
        for (k, v) in m {
            line.entry(k).or_insert(v);
        }
    }
    let text = serde_json::to_string(&Value::Object(line)).unwrap_or_default();
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(io_at(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(io_at(&log))?;
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_at(&log))?;
    crate::fsutil::write_atomic(
        &layout.audit_head(),
        format!("{} {}\n", count + 1, sha256_hex(text.as_bytes())).as_bytes(),
        0o644,
    )
}

fn read_head(layout: &Layout) -> Result<Option<(u64, String)>> {
    let path = layout.audit_head();
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let mut it = s.split_whitespace();
            match (it.next().and_then(|n| n.parse().ok()), it.next()) {
                (Some(n), Some(h)) => Ok(Some((n, h.to_string()))),
                _ => Err(Error::State(format!(
                    "{} is malformed; run `smoker-install audit verify`",
                    path.display()
                ))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_at(&path)(e)),
    }
}

/// Checks the whole chain and the head. Returns the number of lines on success, or a message
/// naming the first line that is wrong.
pub fn verify(layout: &Layout) -> std::result::Result<u64, String> {
    let log = layout.audit_log();
    let text = match std::fs::read_to_string(&log) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", log.display())),
    };
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {n} is not JSON ({e}): the log was edited"))?;
        if v.get("seq").and_then(Value::as_u64) != Some(n) {
            return Err(format!(
                "line {n} has seq {:?}: lines were removed or reordered",
                v.get("seq")
            ));
        }
        if v.get("prev").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(format!(
                "line {n} does not chain to line {}: the log was edited, reordered or lines were removed",
                n - 1
            ));
        }
        prev = sha256_hex(line.as_bytes());
        count = n;
    }
    match read_head(layout).map_err(|e| e.to_string())? {
        None if count == 0 => Ok(0),
        None => Err("audit.head is missing: the log cannot be checked for truncation".into()),
        Some((n, h)) if n == count && h == prev => Ok(count),
        Some((n, _)) if n > count => Err(format!(
            "the log has {count} lines but {n} were written: it was truncated"
        )),
        Some(_) => Err("the last line does not match audit.head: the log was edited".into()),
    }
}
