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
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::RolledBack => "rolled-back",
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
    /// Webhook URL.
    pub url: String,
    /// None when delivered, else why not.
    pub error: Option<String>,
}

fn payload(hook: &Webhook, n: &Notice, host: &str) -> serde_json::Value {
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

/// Sends a notice everywhere configured. Never fails: returns what could not be delivered.
pub fn send(layout: &Layout, cfg: &HostConfig, n: &Notice) -> Vec<Delivery> {
    let host = crate::sys::hostname();
    let _ = crate::audit::append(layout, "notify", serde_json::json!({"notice": n}));
    if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
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
        println!(
            "::{level} title=smoker-install {} {}::{} {} {}: {msg}",
            n.event.as_str(),
            n.profile,
            n.profile,
            n.version,
            n.environment
        );
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
                            e.to_string()
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
        let error = result.err();
        if let Some(e) = &error {
            eprintln!(
                "warning: webhook {} was not notified ({e}); the deploy is not affected",
                hook.url
            );
            let _ = crate::audit::append(
                layout,
                "notify-failed",
                serde_json::json!({"url": hook.url, "error": e, "event": n.event}),
            );
        }
        out.push(Delivery {
            url: hook.url.clone(),
            error,
        });
    }
    out
}
