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

/// Most bytes of an HTTP check's answer that are read (and searched for `body_contains`).
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

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
                results.extend(unknown_containers(&list, services));
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

/// Running containers of the project whose service the bundle does not pin: something
/// started them outside the signed manifest (an `include:`d file, a hand-run `docker compose`,
/// a service replaced behind the installer's back). Each one fails the gate, by name.
fn unknown_containers(list: &[Container], services: &[String]) -> Vec<CheckResult> {
    list.iter()
        .filter(|c| !services.contains(&c.service))
        .filter(|c| matches!(c.state.as_str(), "running" | "restarting" | "created"))
        .map(|c| CheckResult {
            name: format!("unpinned:{}", c.service),
            ok: false,
            counts: true,
            detail: format!(
                "container {} of service `{}` runs in this project, but the bundle pins no image for that service",
                c.name, c.service
            ),
        })
        .collect()
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
    // A health answer is small; read at most MAX_BODY_BYTES of it (a service answering with an
    // endless or huge body must not grow the installer's memory).
    let mut raw = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::Read::take(resp, MAX_BODY_BYTES), &mut raw);
    let body = String::from_utf8_lossy(&raw);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A one-shot HTTP server on loopback answering 200 with `body_len` bytes of `a`, streamed.
    /// Returns its URL and how many body bytes it managed to send before the client went away.
    fn endless_server(body_len: u64) -> (String, std::thread::JoinHandle<u64>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}/health", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let Ok((mut sock, _)) = listener.accept() else {
                return 0;
            };
            let mut req = [0u8; 1024];
            let _ = sock.read(&mut req);
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {body_len}\r\n\r\n");
            if sock.write_all(head.as_bytes()).is_err() {
                return 0;
            }
            let chunk = vec![b'a'; 64 * 1024];
            let mut sent = 0u64;
            while sent < body_len {
                if sock.write_all(&chunk).is_err() {
                    break;
                }
                sent += chunk.len() as u64;
            }
            sent
        });
        (url, handle)
    }

    fn container(service: &str, state: &str) -> Container {
        Container {
            id: format!("id-{service}"),
            name: format!("proj-{service}-1"),
            service: service.into(),
            state: state.into(),
            exit_code: 0,
            health: None,
            image_id: format!("sha256:{}", "a".repeat(64)),
            restart_count: 0,
        }
    }

    #[test]
    fn running_containers_of_unpinned_services_fail_the_gate_by_name() {
        let list = vec![
            container("api", "running"),
            container("watchtower", "running"),
            container("old-job", "exited"),
        ];
        let services = vec!["api".to_string()];
        let r = unknown_containers(&list, &services);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].name, "unpinned:watchtower");
        assert!(!r[0].ok && r[0].counts);
        assert!(r[0].detail.contains("proj-watchtower-1"), "{r:?}");
        assert!(unknown_containers(&list[..1], &services).is_empty());
    }

    #[test]
    fn a_huge_answer_is_read_only_up_to_the_bound() {
        // 8 GiB announced and streamed: reading it all would take minutes and the memory of the
        // body; the check reads MAX_BODY_BYTES and decides.
        let (url, server) = endless_server(8 << 30);
        let client = reqwest::blocking::Client::new();
        let check = HttpCheck {
            name: "api".into(),
            url,
            status: 200,
            body_contains: Some("needle".into()),
            timeout_ms: 20_000,
            max_latency_ms: None,
        };
        let started = Instant::now();
        let r = http_result(&client, &check);
        drop(client);
        assert!(!r.ok, "{r:?}");
        assert!(r.detail.contains("body lacks \"needle\""), "{r:?}");
        let sent = server.join().expect("server thread");
        assert!(
            sent < 256 << 20,
            "the server could send {sent} bytes: the body was not cut short"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
    }
}
