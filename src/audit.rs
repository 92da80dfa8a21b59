//! The audit log: one JSON line per apply, rollback, recover and gc, hash-chained.
//!
//! Every line carries `prev`, the sha256 of the previous line (all zeros for the first), and
//! `seq`, its position. `audit.head` holds the count and hash of the last line, so removing
//! lines from the end is detected as well as editing or reordering them.

use crate::error::{Error, Result, io_at};
use crate::layout::Layout;
use serde_json::{Map, Value};
use smoker_format::digest::sha256_hex;
use std::io::{Read as _, Write as _};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends one event. `fields` is merged into the line (it must be a JSON object); they
/// cannot replace `seq`, `prev`, `time`, `event` or `host`.
///
/// Appends from several processes (applies of different profiles run at once) are serialised
/// by an exclusive lock on the log, held from reading the head to writing the new one.
pub fn append(layout: &Layout, event: &str, fields: Value) -> Result<()> {
    let log = layout.audit_log();
    let mut f = crate::fsutil::open_private(&log, crate::fsutil::Private::Append)?;
    // Released when `f` is closed, after the head is written.
    f.lock().map_err(io_at(&log))?;
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
    let mut line = Value::Object(line);
    // The last line of defence: no secret value of a host env file reaches the log.
    crate::redact::registered().redact_json(&mut line);
    let text = serde_json::to_string(&line).unwrap_or_default();
    f.write_all(format!("{text}\n").as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_at(&log))?;
    crate::fsutil::write_atomic(
        &layout.audit_head(),
        format!("{} {}\n", count + 1, sha256_hex(text.as_bytes())).as_bytes(),
        0o600,
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
/// naming the first line that is wrong. It waits for an append in progress to finish.
pub fn verify(layout: &Layout) -> std::result::Result<u64, String> {
    let log = layout.audit_log();
    // A shared lock on the log keeps an append from landing between reading the log and
    // reading the head; it is released when `_file` is closed, at the end.
    let (text, _file) = match std::fs::File::open(&log) {
        Ok(mut f) => {
            let mut text = String::new();
            f.lock_shared()
                .and_then(|_| f.read_to_string(&mut text))
                .map_err(|e| format!("{}: {e}", log.display()))?;
            (text, Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), None),
        Err(e) => return Err(format!("{}: {e}", log.display())),
    };
    let mut prev = GENESIS.to_string();
    let mut count = 0u64;
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {n} is not JSON ({e}): the log was edited"))?;
        if v.get("seq").and_then(Value::as_u64) != Some(n) {
            let seq = match v.get("seq") {
                Some(s) => format!("seq {s}"),
                None => "no seq".into(),
            };
            return Err(format!(
                "line {n} has {seq}: lines were removed or reordered"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> (tempfile::TempDir, Layout) {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        (root, layout)
    }

    fn append_n(layout: &Layout, n: usize) {
        for i in 0..n {
            append(
                layout,
                "apply",
                serde_json::json!({"profile": "web", "i": i}),
            )
            .expect("append");
        }
    }

    fn lines(layout: &Layout) -> Vec<String> {
        std::fs::read_to_string(layout.audit_log())
            .expect("log")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(layout: &Layout, lines: &[String]) {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        std::fs::write(layout.audit_log(), text).expect("write log");
    }

    fn parse(line: &str) -> Value {
        serde_json::from_str(line).expect("json line")
    }

    #[test]
    fn appended_lines_chain_and_the_head_names_the_last() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        assert_eq!(verify(&layout), Ok(5));
        let lines = lines(&layout);
        assert_eq!(lines.len(), 5);
        let mut prev = GENESIS.to_string();
        for (i, l) in lines.iter().enumerate() {
            let v = parse(l);
            assert_eq!(v["seq"], i as u64 + 1);
            assert_eq!(v["prev"], prev.as_str());
            assert_eq!(v["event"], "apply");
            assert_eq!(v["i"], i);
            prev = sha256_hex(l.as_bytes());
        }
        assert_eq!(
            std::fs::read_to_string(layout.audit_head()).expect("head"),
            format!("5 {prev}\n")
        );
    }

    #[test]
    fn fields_cannot_overwrite_the_chain_or_the_event() {
        let (_root, layout) = host();
        append(
            &layout,
            "gc",
            serde_json::json!({"seq": 99, "prev": "forged", "event": "other", "profile": "web"}),
        )
        .expect("append");
        let v = parse(&lines(&layout)[0]);
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], GENESIS);
        assert_eq!(v["event"], "gc");
        assert_eq!(v["profile"], "web");
        assert_eq!(verify(&layout), Ok(1));
    }

    #[test]
    fn a_host_without_a_log_verifies_with_zero_lines() {
        let (_root, layout) = host();
        assert_eq!(verify(&layout), Ok(0));
    }

    #[test]
    fn an_edited_line_is_detected_at_the_line_after_it() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        let mut l = lines(&layout);
        l[1] = l[1].replace("\"profile\":\"web\"", "\"profile\":\"api\"");
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("line 3 does not chain to line 2: the log was edited, reordered or lines were removed".into())
        );
    }

    #[test]
    fn an_edited_last_line_is_detected_by_the_head() {
        let (_root, layout) = host();
        append_n(&layout, 3);
        let mut l = lines(&layout);
        l[2] = l[2].replace("\"event\":\"apply\"", "\"event\":\"rollback\"");
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("the last line does not match audit.head: the log was edited".into())
        );
    }

    #[test]
    fn a_line_that_is_not_json_is_named() {
        let (_root, layout) = host();
        append_n(&layout, 4);
        let mut l = lines(&layout);
        l[2] = "deleted by hand".into();
        write_lines(&layout, &l);
        let err = verify(&layout).expect_err("not json");
        assert!(err.starts_with("line 3 is not JSON ("), "{err}");
        assert!(err.ends_with("): the log was edited"), "{err}");
    }

    #[test]
    fn a_removed_middle_line_is_detected_where_it_was() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        let mut l = lines(&layout);
        l.remove(2);
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("line 3 has seq 4: lines were removed or reordered".into())
        );
    }

    #[test]
    fn reordered_lines_are_detected_at_the_first_one_moved() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        let mut l = lines(&layout);
        l.swap(1, 2);
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("line 2 has seq 3: lines were removed or reordered".into())
        );
        // A line without a number for its seq says so.
        let mut l = lines(&layout);
        l.swap(1, 2);
        l[1] = l[1].replace("\"seq\":2", "\"seq\":\"2\"");
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("line 2 has seq \"2\": lines were removed or reordered".into())
        );
        l[1] = l[1].replace("\"seq\":\"2\",", "");
        write_lines(&layout, &l);
        assert_eq!(
            verify(&layout),
            Err("line 2 has no seq: lines were removed or reordered".into())
        );
    }

    #[test]
    fn a_truncated_log_is_detected_by_the_head() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        let l = lines(&layout);
        write_lines(&layout, &l[..4]);
        assert_eq!(
            verify(&layout),
            Err("the log has 4 lines but 5 were written: it was truncated".into())
        );
        // All of it gone, the head still counts what was written.
        std::fs::remove_file(layout.audit_log()).expect("rm log");
        assert_eq!(
            verify(&layout),
            Err("the log has 0 lines but 5 were written: it was truncated".into())
        );
    }

    #[test]
    fn appending_after_a_truncation_keeps_it_detectable() {
        let (_root, layout) = host();
        append_n(&layout, 5);
        let l = lines(&layout);
        write_lines(&layout, &l[..4]);
        assert!(
            verify(&layout)
                .expect_err("truncated")
                .contains("truncated")
        );
        // The next line continues from the head (seq 6, chained to the lost line 5).
        append_n(&layout, 1);
        let after = lines(&layout);
        assert_eq!(after.len(), 5);
        let v = parse(&after[4]);
        assert_eq!(v["seq"], 6);
        assert_eq!(v["prev"], sha256_hex(l[4].as_bytes()).as_str());
        let err = verify(&layout).expect_err("still broken");
        assert!(err.starts_with("line 5 has seq "), "{err}");
    }

    #[test]
    fn a_missing_head_is_reported_and_appending_then_restarts_the_chain() {
        let (_root, layout) = host();
        append_n(&layout, 3);
        std::fs::remove_file(layout.audit_head()).expect("rm head");
        assert_eq!(
            verify(&layout),
            Err("audit.head is missing: the log cannot be checked for truncation".into())
        );
        // Without a head, append starts a new chain at seq 1 after the old lines, which verify
        // reports at that line.
        append_n(&layout, 1);
        let v = parse(&lines(&layout)[3]);
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], GENESIS);
        let err = verify(&layout).expect_err("restarted chain");
        assert!(err.starts_with("line 4 has seq "), "{err}");
    }

    #[test]
    fn concurrent_appends_keep_one_chain() {
        // Applies of different profiles hold different profile locks and append to the one
        // log at the same time (each append opens the log itself, as separate processes do).
        let (_root, layout) = host();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let layout = layout.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        append(&layout, "apply", serde_json::json!({"t": t, "i": i}))
                            .expect("append");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(verify(&layout), Ok(100));
    }

    #[test]
    fn a_malformed_head_stops_append_and_verify() {
        let (_root, layout) = host();
        append_n(&layout, 2);
        std::fs::write(layout.audit_head(), "two lines\n").expect("head");
        let expected = format!(
            "{} is malformed; run `smoker-install audit verify`",
            layout.audit_head().display()
        );
        match append(&layout, "apply", serde_json::json!({})) {
            Err(Error::State(m)) => assert_eq!(m, expected),
            other => panic!("expected a state error, got {other:?}"),
        }
        assert_eq!(lines(&layout).len(), 2, "nothing was appended");
        assert_eq!(verify(&layout), Err(expected));
    }
}
