//! Deploy notifications: audit log, webhooks (Slack- and Discord-compatible JSON or plain
//! JSON) and GitHub Actions annotations. A notification that cannot be delivered is reported
//! (stderr and audit log) and never fails the deploy.

use crate::hostconfig::{HostConfig, Webhook};
use crate::layout::Layout;
use serde::Serialize;
use std::time::Duration;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Event {
    /// An apply started.
    Started,
    /// An apply committed a healthy generation.
    Succeeded,
    /// An apply or rollback failed and nothing healthy could be restored.
    Failed,
    /// An apply failed and the previous generation was restored.
    RolledBack,
    /// `smoker-install stop` stopped a profile's containers.
    Stopped,
    /// `smoker-install start` started a stopped profile again.
    Resumed,
    /// `smoker-install remove` took a profile's stack down and forgot the profile.
    Removed,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::RolledBack => "rolled-back",
            Event::Stopped => "stopped",
            Event::Resumed => "resumed",
            Event::Removed => "removed",
        }
    }
}

/// One notification.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    /// The event.
    pub event: Event,
    /// Profile.
    pub profile: String,
    /// Version concerned.
    pub version: String,
    /// Environment.
    pub environment: String,
    /// Generation concerned.
    pub generation: Option<u32>,
    /// One line for humans.
    pub message: String,
}

/// Result of delivering to one webhook.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The webhook's scheme, host and port (never its path: Slack and Discord URLs carry
    /// their secret there).
    pub url: String,
    /// None when delivered, else why not.
    pub error: Option<String>,
}

/// The JSON posted to `hook`, with every secret value of the host env files redacted (a
/// failure's message may quote tool output).
fn payload(hook: &Webhook, n: &Notice, host: &str) -> serde_json::Value {
    let mut v = payload_of(hook, n, host);
    crate::redact::registered().redact_json(&mut v);
    v
}

fn payload_of(hook: &Webhook, n: &Notice, host: &str) -> serde_json::Value {
    let text = format!(
        "[{}] {} {} ({}) on {}: {}",
        n.event.as_str(),
        n.profile,
        n.version,
        n.environment,
        host,
        n.message
    );
    match hook.kind.as_str() {
        "slack" => serde_json::json!({ "text": text }),
        "discord" => serde_json::json!({ "content": text }),
        _ => serde_json::json!({
            "event": n.event,
            "profile": n.profile,
            "version": n.version,
            "environment": n.environment,
            "generation": n.generation,
            "host": host,
            "message": n.message,
        }),
    }
}

/// The GitHub Actions workflow command for a notice: an `error` annotation for a failure, a
/// `warning` for a rollback, a `notice` otherwise; the message is escaped so that it stays one
/// command.
pub fn annotation(n: &Notice) -> String {
    let level = match n.event {
        Event::Failed => "error",
        Event::RolledBack => "warning",
        _ => "notice",
    };
    let msg = n
        .message
        .replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A");
    format!(
        "::{level} title=smoker-install {} {}::{} {} {}: {msg}",
        n.event.as_str(),
        n.profile,
        n.profile,
        n.version,
        n.environment
    )
}

/// Sends a notice everywhere configured. Never fails: returns what could not be delivered.
pub fn send(layout: &Layout, cfg: &HostConfig, n: &Notice) -> Vec<Delivery> {
    let host = crate::sys::hostname();
    let _ = crate::audit::append(layout, "notify", serde_json::json!({"notice": n}));
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
        println!("{}", annotation(n));
    }
    let mut out = Vec::new();
    for hook in &cfg.webhooks {
        let result = reqwest::blocking::Client::builder()
            .timeout(Duration::from_millis(hook.timeout_ms.max(1)))
            .build()
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.post(&hook.url)
                    .header("content-type", "application/json")
                    .body(payload(hook, n, &host).to_string())
                    .send()
                    .map_err(|e| {
                        if e.is_timeout() {
                            format!("no answer within {} ms", hook.timeout_ms)
                        } else {
                            // reqwest names the whole URL in its errors.
                            e.without_url().to_string()
                        }
                    })
            })
            .and_then(|r| {
                if r.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {}", r.status()))
                }
            });
        let error = result.err().map(|e| e.replace(&hook.url, "<webhook URL>"));
        let origin = crate::redact::url_origin(&hook.url);
        if let Some(e) = &error {
            eprintln!(
                "warning: webhook {origin} was not notified ({e}); the deploy is not affected"
            );
            let _ = crate::audit::append(
                layout,
                "notify-failed",
                serde_json::json!({"url": origin, "error": e, "event": n.event}),
            );
        }
        out.push(Delivery { url: origin, error });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn notice(event: Event, message: &str) -> Notice {
        Notice {
            event,
            profile: "web".into(),
            version: "1.2.0".into(),
            environment: "prod".into(),
            generation: Some(3),
            message: message.into(),
        }
    }

    fn hook(url: &str, kind: &str, timeout_ms: u64) -> Webhook {
        Webhook {
            url: url.into(),
            kind: kind.into(),
            timeout_ms,
        }
    }

    #[test]
    fn slack_and_discord_get_one_line_json_gets_every_field() {
        let n = notice(Event::RolledBack, "gate failed");
        let line = "[rolled-back] web 1.2.0 (prod) on pi-3: gate failed";
        assert_eq!(
            payload(&hook("u", "slack", 1), &n, "pi-3"),
            serde_json::json!({ "text": line })
        );
        assert_eq!(
            payload(&hook("u", "discord", 1), &n, "pi-3"),
            serde_json::json!({ "content": line })
        );
        assert_eq!(
            payload(&hook("u", "json", 1), &n, "pi-3"),
            serde_json::json!({
                "event": "rolled-back",
                "profile": "web",
                "version": "1.2.0",
                "environment": "prod",
                "generation": 3,
                "host": "pi-3",
                "message": "gate failed",
            })
        );
    }

    #[test]
    fn annotations_pick_the_level_and_keep_the_message_on_one_line() {
        assert_eq!(
            annotation(&notice(Event::Failed, "50% done\r\nthen broke")),
            "::error title=smoker-install failed web::web 1.2.0 prod: 50%25 done%0D%0Athen broke"
        );
        assert!(annotation(&notice(Event::RolledBack, "x")).starts_with("::warning title="));
        assert!(annotation(&notice(Event::Succeeded, "x")).starts_with("::notice title="));
        assert!(annotation(&notice(Event::Started, "x")).starts_with("::notice title="));
    }

    /// A one-request HTTP server answering `status`; returns its URL and the request body.
    fn server(status: &'static str) -> (String, std::thread::JoinHandle<String>) {
        crate::testutil::one_request_server("/hook", status)
    }

    fn audit_events(layout: &Layout) -> Vec<serde_json::Value> {
        std::fs::read_to_string(layout.audit_log())
            .expect("audit log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect()
    }

    #[test]
    fn a_delivered_notice_posts_the_payload_and_is_audited() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let (url, server) = server("204 No Content");
        let cfg = HostConfig {
            webhooks: vec![hook(&url, "slack", 5000)],
            ..HostConfig::default()
        };
        let out = send(&layout, &cfg, &notice(Event::Succeeded, "healthy"));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].url, crate::redact::url_origin(&url));
        assert!(!out[0].url.contains("/hook"));
        assert_eq!(out[0].error, None);
        let body: serde_json::Value =
            serde_json::from_str(&server.join().expect("server")).expect("json body");
        assert_eq!(
            body["text"],
            format!(
                "[succeeded] web 1.2.0 (prod) on {}: healthy",
                crate::sys::hostname()
            )
        );
        let events = audit_events(&layout);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0]["event"], "notify");
        assert_eq!(events[0]["notice"]["event"], "succeeded");
        assert_eq!(crate::audit::verify(&layout), Ok(1));
    }

    #[test]
    fn undeliverable_notices_are_reported_and_audited_never_raised() {
        let root = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(root.path());
        let (rejecting, server) = server("500 Internal Server Error");
        // A port nobody listens on.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            format!("http://{}/hook", l.local_addr().expect("addr"))
        };
        // One that accepts and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
        let silent_url = format!("http://{}/hook", silent.local_addr().expect("addr"));
        let cfg = HostConfig {
            webhooks: vec![
                hook(&rejecting, "json", 5000),
                hook(&closed, "discord", 5000),
                hook(&silent_url, "json", 300),
            ],
            ..HostConfig::default()
        };
        let out = send(&layout, &cfg, &notice(Event::Failed, "gate failed"));
        server.join().expect("server");
        let (rejecting, closed, silent_url) = (
            crate::redact::url_origin(&rejecting),
            crate::redact::url_origin(&closed),
            crate::redact::url_origin(&silent_url),
        );
        let errors: Vec<(&str, Option<&str>)> = out
            .iter()
            .map(|d| (d.url.as_str(), d.error.as_deref()))
            .collect();
        assert_eq!(
            errors[0],
            (
                rejecting.as_str(),
                Some("answered 500 Internal Server Error")
            )
        );
        assert_eq!(errors[1].0, closed);
        assert!(errors[1].1.is_some(), "{errors:?}");
        assert_eq!(
            errors[2],
            (silent_url.as_str(), Some("no answer within 300 ms"))
        );
        let events = audit_events(&layout);
        let failed: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e["event"] == "notify-failed")
            .map(|e| {
                (
                    e["url"].as_str().unwrap_or_default(),
                    e["error"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(failed.len(), 3);
        assert_eq!(
            failed[0],
            (rejecting.as_str(), "answered 500 Internal Server Error")
        );
        assert_eq!(failed[2], (silent_url.as_str(), "no answer within 300 ms"));
        assert!(
            events
                .iter()
                .all(|e| e["event"] == "notify" || e["event"] == "notify-failed")
        );
        assert_eq!(crate::audit::verify(&layout), Ok(4));
        drop(silent);
    }
}
