//! The health gate: is the stack that was just started really serving?
//!
//! Each round checks every HTTP check of the bundle (status, optional body substring, latency)
//! and every container of the compose project (running, or exited 0; Docker health not
//! `unhealthy`). The gate passes once everything passes in `successes` consecutive rounds
//! (so a service that answers once and then crashes is caught). It fails when
//! one check fails `failures` rounds in a row, or when the window ends first. A refused
//! connection or a container whose health check is still starting does not count towards
//! `failures` (the service may still be starting) but keeps the gate from passing; a wrong
//! answer, a timeout, a slow answer, a crash or an `unhealthy` container does count.

use crate::runtime::{Container, Runtime};
use serde::Serialize;
use smoker_format::manifest::{Health, HttpCheck};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The outcome of one check in one round.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// Check name (`http:<name>` or `container:<service>`).
    pub name: String,
    /// Did it pass?
    pub ok: bool,
    /// Does a failure count towards the consecutive-failure limit?
    pub counts: bool,
    /// What was seen.
    pub detail: String,
}

/// What the gate decided.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when the stack passed.
    pub healthy: bool,
    /// Rounds run.
    pub rounds: u32,
    /// Time taken in milliseconds.
    pub elapsed_ms: u64,
    /// The last result of every check.
    pub checks: Vec<CheckResult>,
    /// One sentence: why it passed or failed.
    pub summary: String,
}

impl Report {
    /// A failed report for a stack that never reached the gate (e.g. compose up failed).
    pub fn failed(summary: String) -> Report {
        Report {
            healthy: false,
            rounds: 0,
            elapsed_ms: 0,
            checks: Vec::new(),
            summary,
        }
    }
}

/// Runs the gate for a compose project whose services are `services`; `images` maps services
/// to the image id (config digest) their containers must run.
pub fn gate(
    runtime: &Runtime,
    project: &str,
    health: &Health,
    services: &[String],
    images: &BTreeMap<String, String>,
) -> Report {
    let start = Instant::now();
    let window = Duration::from_secs(health.window_secs.max(1));
    let interval = Duration::from_millis(health.interval_ms.max(100));
    let client = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let mut consecutive: BTreeMap<String, u32> = BTreeMap::new();
    let mut rounds = 0;
    let mut passing_rounds = 0;
    loop {
        rounds += 1;
        let mut results = Vec::new();
        match runtime.containers(project) {
            Ok(list) => {
                for svc in services {
                    let mine: Vec<&Container> = list.iter().filter(|c| &c.service == svc).collect();
                    results.push(container_result(svc, &mine, images.get(svc)));
                }
            }
            Err(e) => results.push(CheckResult {
                name: "docker".into(),
                ok: false,
                counts: true,
                detail: e.to_string(),
            }),
        }
        for check in &health.http {
            results.push(match &client {
                Ok(c) => http_result(c, check),
                Err(e) => CheckResult {
                    name: format!("http:{}", check.name),
                    ok: false,
                    counts: true,
                    detail: format!("no HTTP client: {e}"),
                },
            });
        }
        let mut tripped = None;
        for r in &results {
            let n = consecutive.entry(r.name.clone()).or_insert(0);
            if r.ok {
                *n = 0;
            } else if r.counts {
                *n += 1;
                if *n >= health.failures.max(1) && tripped.is_none() {
                    tripped = Some(format!(
                        "{} failed {} times in a row: {}",
                        r.name, n, r.detail
                    ));
                }
            }
        }
        let elapsed = start.elapsed();
        let report = |healthy, summary: String| Report {
            healthy,
            rounds,
            elapsed_ms: elapsed.as_millis() as u64,
            checks: results.clone(),
            summary,
        };
        if results.iter().all(|r| r.ok) {
            passing_rounds += 1;
            if passing_rounds >= health.successes.max(1) {
                return report(
                    true,
                    format!(
                        "all {} checks passed {} rounds in a row",
                        results.len(),
                        passing_rounds
                    ),
                );
            }
        } else {
            passing_rounds = 0;
        }
        if let Some(why) = tripped {
            return report(false, format!("unhealthy: {why}"));
        }
        if elapsed + interval > window && passing_rounds == 0 {
            let failing: Vec<String> = results
                .iter()
                .filter(|r| !r.ok)
                .map(|r| format!("{} ({})", r.name, r.detail))
                .collect();
            return report(
                false,
                format!(
                    "unhealthy: not healthy within {}s; still failing: {}",
                    health.window_secs,
                    failing.join("; ")
                ),
            );
        }
        std::thread::sleep(interval);
    }
}

fn container_result(
    service: &str,
    containers: &[&Container],
    image: Option<&String>,
) -> CheckResult {
    let name = format!("container:{service}");
    if containers.is_empty() {
        return CheckResult {
            name,
            ok: false,
            counts: true,
            detail: "no container".into(),
        };
    }
    for c in containers {
        if let Some(want) = image
            && &c.image_id != want
        {
            return CheckResult {
                name,
                ok: false,
                counts: true,
                detail: format!(
                    "{} runs image {}, but the signed manifest says {want}",
                    c.name, c.image_id
                ),
            };
        }
        let bad = match (c.state.as_str(), c.health.as_deref()) {
            ("exited", _) if c.exit_code == 0 => None,
            ("running", Some("unhealthy")) => Some((true, format!("{} is unhealthy", c.name))),
            ("running", Some("starting")) => {
                Some((false, format!("{} health check is starting", c.name)))
            }
            ("running", _) => None,
            ("created", _) => Some((false, format!("{} is created, not started", c.name))),
            (state, _) => Some((
                true,
                format!("{} is {state} (exit code {})", c.name, c.exit_code),
            )),
        };
        if let Some((counts, detail)) = bad {
            return CheckResult {
                name,
                ok: false,
                counts,
                detail,
            };
        }
    }
    CheckResult {
        name,
        ok: true,
        counts: false,
        detail: "running".into(),
    }
}

fn http_result(client: &reqwest::blocking::Client, check: &HttpCheck) -> CheckResult {
    let name = format!("http:{}", check.name);
    let started = Instant::now();
    let resp = client
        .get(&check.url)
        .timeout(Duration::from_millis(check.timeout_ms.max(1)))
        .send();
    let latency = started.elapsed().as_millis() as u64;
    let fail = |counts: bool, detail: String| CheckResult {
        name: name.clone(),
        ok: false,
        counts,
        detail,
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            return fail(
                true,
                format!(
                    "GET {}: no answer within {} ms",
                    check.url, check.timeout_ms
                ),
            );
        }
        // Refused, reset or closed before an answer: not listening yet (a published port
        // accepts and then drops connections while the process inside has not bound). The
        // window bounds this; a crashed container is caught by its container check.
        Err(e) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            return fail(false, format!("GET {}: not answering ({cause})", check.url));
        }
    };
    let status = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    if status != check.status {
        return fail(
            true,
            format!(
                "GET {} answered {status}, expected {}",
                check.url, check.status
            ),
        );
    }
    if let Some(want) = &check.body_contains
        && !body.contains(want.as_str())
    {
        return fail(true, format!("GET {} body lacks {want:?}", check.url));
    }
    if let Some(max) = check.max_latency_ms
        && latency > max
    {
        return fail(
            true,
            format!("GET {} took {latency} ms, limit {max} ms", check.url),
        );
    }
    CheckResult {
        name,
        ok: true,
        counts: false,
        detail: format!("{status} in {latency} ms"),
    }
}
