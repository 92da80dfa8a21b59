//! The one JSON document every `smoker-install` subcommand prints with `--json`:
//!
//! ```json
//! {"ok": false, "command": "apply", "kind": "locked", "exit_code": 6,
//!  "message": "profile `cloud` is locked by …", "data": null}
//! ```
//!
//! `ok` is true exactly when the exit status is 0; then `kind` and `message` are null. `data`
//! is the subcommand's payload (see README.md, "Exit status and JSON output"), also on some
//! failures (`verify`: the bundle and the specific `reason`; `preflight`: every check; `recover`:
//! each profile's outcome), else null. Field names are stable.

use crate::error::{Error, Kind};
use serde::{Deserialize, Serialize};

/// The `--json` output of a `smoker-install` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// True when the command succeeded (exit status 0).
    pub ok: bool,
    /// The subcommand (`apply`, `audit verify`, …); null when the command line could not be
    /// parsed far enough to know it.
    pub command: Option<String>,
    /// The kind of failure ([`Kind::as_str`]); null on success.
    pub kind: Option<Kind>,
    /// The process exit status ([`Kind::exit_code`], 0 on success).
    pub exit_code: u8,
    /// What went wrong and what to do; null on success.
    pub message: Option<String>,
    /// The subcommand's payload, or null.
    pub data: serde_json::Value,
}

impl Envelope {
    /// A successful command with its payload.
    pub fn success(command: &str, data: serde_json::Value) -> Envelope {
        Envelope {
            ok: true,
            command: Some(command.to_string()),
            kind: None,
            exit_code: 0,
            message: None,
            data,
        }
    }

    /// A failed command: its kind, message and payload (or null).
    pub fn failure(
        command: Option<&str>,
        kind: Kind,
        message: impl Into<String>,
        data: serde_json::Value,
    ) -> Envelope {
        Envelope {
            ok: false,
            command: command.map(str::to_string),
            kind: Some(kind),
            exit_code: kind.exit_code(),
            message: Some(message.into()),
            data,
        }
    }

    /// A command that stopped with a library error (no payload).
    pub fn from_error(command: &str, e: &Error) -> Envelope {
        Envelope::failure(
            Some(command),
            e.kind(),
            e.to_string(),
            serde_json::Value::Null,
        )
    }

    /// The envelope as pretty-printed JSON (one document, no trailing newline).
    pub fn to_json(&self) -> String {
        // Serializing this struct cannot fail: every map key is a string.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| {
            serde_json::json!({
                "ok": false,
                "command": self.command,
                "kind": Kind::Io,
                "exit_code": Kind::Io.exit_code(),
                "message": format!("cannot render the JSON output: {e}"),
                "data": null,
            })
            .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_and_order_are_stable() {
        let e = Envelope::failure(Some("apply"), Kind::Locked, "held", serde_json::Value::Null);
        assert_eq!(
            serde_json::to_string(&e).ok().as_deref(),
            Some(
                r#"{"ok":false,"command":"apply","kind":"locked","exit_code":6,"message":"held","data":null}"#
            )
        );
        let back: Envelope = serde_json::from_str(&e.to_json()).expect("round trip");
        assert_eq!(back, e);
        let ok = Envelope::success("status", serde_json::json!({"profiles": []}));
        assert_eq!(
            serde_json::to_string(&ok).ok().as_deref(),
            Some(
                r#"{"ok":true,"command":"status","kind":null,"exit_code":0,"message":null,"data":{"profiles":[]}}"#
            )
        );
    }
}
