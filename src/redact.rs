//! Secret values never leave the process: every value of a host env file read by this process
//! (at least [`MIN_LEN`] characters long) is replaced by [`MARK`] in text formed from tool
//! output (compose, docker, hooks), and again at the boundaries where text leaves: the audit
//! log, webhooks and the CLI's messages.
//!
//! The values are registered by [`crate::hostenv::read_host`], the one reader of host env
//! files, into a process-wide set, so code far from the env file (the audit log, a webhook
//! sent after a failure) redacts the same values without being handed them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::RwLock;

/// What a secret value is replaced by.
pub const MARK: &str = "[redacted]";

/// Shorter values are not redacted: they would blank out ordinary words and numbers.
pub const MIN_LEN: usize = 4;

static SECRETS: RwLock<BTreeSet<String>> = RwLock::new(BTreeSet::new());

/// A set of secret values and the replacement of each in text.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Longest first, so a value that contains another is replaced whole.
    values: Vec<String>,
}

impl Redactor {
    /// A redactor for `values` (those shorter than [`MIN_LEN`] are ignored).
    pub fn new<I, S>(values: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set: BTreeSet<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v: &String| v.chars().count() >= MIN_LEN)
            .collect();
        let mut values: Vec<String> = set.into_iter().collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Redactor { values }
    }

    /// `text` with every secret value replaced by [`MARK`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), MARK);
            }
        }
        out
    }

    /// Redacts every string (and object key) inside a JSON value.
    pub fn redact_json(&self, value: &mut Value) {
        match value {
            Value::String(s) => *s = self.redact(s),
            Value::Array(a) => a.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(m) => {
                let old = std::mem::take(m);
                for (k, mut v) in old {
                    self.redact_json(&mut v);
                    m.insert(self.redact(&k), v);
                }
            }
            _ => {}
        }
    }
}

/// Remembers secret values for the rest of the process (see the module documentation).
pub fn register<I, S>(values: I)
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut set = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    set.extend(
        values
            .into_iter()
            .map(Into::into)
            .filter(|v: &String| v.chars().count() >= MIN_LEN),
    );
}

/// A redactor for every value registered so far.
pub fn registered() -> Redactor {
    let set = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    Redactor::new(set.iter().cloned())
}

/// `text` with every registered secret value replaced by [`MARK`].
pub fn redact(text: &str) -> String {
    registered().redact(text)
}

/// A URL as it may be logged: scheme, host and port only. Webhook URLs of Slack and Discord
/// carry their bearer secret in the path.
pub fn url_origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            match u.port() {
                Some(p) => format!("{}://{host}:{p}", u.scheme()),
                None => format!("{}://{host}", u.scheme()),
            }
        }
        Err(_) => "(unparsable URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_replaced_longest_first_and_short_ones_kept() {
        let r = Redactor::new(["abc", "hunter2", "hunter2-long"]);
        assert_eq!(
            r.redact("pw=hunter2-long x=hunter2 y=abc"),
            "pw=[redacted] x=[redacted] y=abc"
        );
        let mut v = serde_json::json!({"error": "bad hunter2", "n": [1, "hunter2"]});
        r.redact_json(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"error": "bad [redacted]", "n": [1, "[redacted]"]})
        );
    }

    #[test]
    fn a_logged_url_keeps_scheme_host_and_port_only() {
        assert_eq!(
            url_origin("https://hooks.slack.com/services/T000/B000/XXXXsecret"),
            "https://hooks.slack.com"
        );
        assert_eq!(
            url_origin("http://127.0.0.1:8080/hook?token=abc"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(url_origin("not a url"), "(unparsable URL)");
    }

    /// A stack whose compose output echoes a secret of the host env file: the error, the audit
    /// line and the webhook payload carry the mark, never the value; a webhook that cannot be
    /// reached is logged by scheme, host and port only.
    #[test]
    fn tool_output_echoing_a_secret_is_redacted_in_errors_audit_and_webhooks() {
        use crate::hostconfig::{HostConfig, Webhook};
        use crate::layout::Layout;
        use crate::notify::{self, Event, Notice};
        use crate::runtime::{Runtime, Stack};
        use smoker_format::manifest::{Arch, Manifest};
        use std::os::unix::fs::PermissionsExt as _;

        let secret = format!("zq-hunter2-{}", std::process::id());
        let dir = tempfile::tempdir().expect("tempdir");
        let env_file = dir.path().join("host.env");
        std::fs::write(&env_file, format!("SMOKER_TEST_TOKEN={secret}\n")).expect("env file");
        std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let host = crate::hostenv::read_host(&env_file).expect("read host env");

        // compose names the volume spec, secret included, in its complaint.
        let entry = dir.path().join("entry");
        std::fs::create_dir_all(entry.join("stack")).expect("mkdir");
        std::fs::write(
            entry.join("stack/compose.yaml"),
            "services:\n  s:\n    image: busybox\n    volumes: [\"${SMOKER_TEST_TOKEN}:/x:zz\"]\n",
        )
        .expect("compose file");
        let mut manifest = Manifest::skeleton("svc", "1.0.0", Arch::Amd64, "prod");
        manifest.compose.files = vec!["stack/compose.yaml".into()];
        let runtime = Runtime::detect().expect("docker and compose");
        let stack = Stack {
            project: "smoker-redact-test",
            dir: &entry,
            manifest: &manifest,
            env: &host,
            overrides: &[],
        };
        let err = runtime
            .config(&stack)
            .map(|_| ())
            .expect_err("an invalid volume spec")
            .to_string();
        assert!(err.contains(MARK), "{err}");
        assert!(!err.contains(&secret), "{err}");

        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        // Even a message formed elsewhere with the value in it is redacted on the way out.
        let leaky = format!("{err}; token was {secret}");
        crate::audit::append(&layout, "apply", serde_json::json!({"error": leaky})).expect("audit");

        let (url, server) = crate::testutil::one_request_server(
            &format!("/services/T0/B0/{secret}"),
            "500 Internal Server Error",
        );
        let cfg = HostConfig {
            webhooks: vec![Webhook {
                url: url.clone(),
                kind: "slack".into(),
                timeout_ms: 5000,
            }],
            ..HostConfig::default()
        };
        let notice = Notice {
            event: Event::Failed,
            profile: "svc".into(),
            version: "1.0.0".into(),
            environment: "prod".into(),
            generation: None,
            message: leaky.clone(),
        };
        let delivered = notify::send(&layout, &cfg, &notice);
        let body = server.join().expect("server");
        assert!(body.contains(MARK), "{body}");
        assert!(!body.contains(&secret), "{body}");
        assert_eq!(delivered.len(), 1);
        assert!(!delivered[0].url.contains("services"), "{:?}", delivered[0]);

        let log = std::fs::read_to_string(layout.audit_log()).expect("audit log");
        assert!(log.contains(MARK), "{log}");
        assert!(!log.contains(&secret), "{log}");
        assert!(
            !log.contains("/services/"),
            "the webhook path is a secret: {log}"
        );
        assert_eq!(crate::audit::verify(&layout), Ok(3));
    }
}
