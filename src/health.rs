//! The health gate: is the stack that was just started really serving?
//!
//! The gate runs *while* compose creates the containers ([`crate::activate`] drives it), so a
//! broken service is caught by the installer's own checks, not by compose timing out on a
//! `service_healthy` dependency minutes later. Each round checks every container of the
//! compose project (running, or exited 0; Docker health not `unhealthy`; the image the signed
//! manifest names) and every HTTP check of the bundle (status, optional body substring,
//! latency).
//!
//! Timeline: a check tied to a service (`service = "backend"` in the recipe) starts as soon as
//! that service's *new* container runs (the signed image ID); a check tied to none starts once
//! compose has finished. While compose runs, what it has not yet created or replaced does not
//! count. A wrong answer, a timeout, a slow answer, a crash or an `unhealthy` Docker health
//! state counts at once; a refused connection counts only after the service's container has
//! been running for the connect grace period (`connect_grace_ms`). The gate fails when one
//! check fails `failures` rounds in a row, or when the window ends first; it passes once compose
//! has finished and everything passes in `successes` consecutive rounds. Every failure names
//! the service.

use crate::runtime::{Container, Runtime};
use serde::Serialize;
use smoker_format::manifest::{DEFAULT_CONNECT_GRACE_MS, Health, HttpCheck};
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
    /// The compose service it concerns, when it concerns one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
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
    /// The service that failed, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// How long that service's new container had been running when the gate decided, in
    /// milliseconds (when it ran at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_running_ms: Option<u64>,
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
            service: None,
            service_running_ms: None,
        }
    }
}

/// What one round decided.
pub enum Verdict {
    /// Not decided yet: run another round after the interval.
    Pending,
    /// Healthy (compose has finished and every check passed `successes` rounds in a row).
    Healthy(Report),
    /// Unhealthy: a check failed `failures` rounds in a row, or the window ended.
    Unhealthy(Report),
}

/// The health gate of one generation, round by round (see the module documentation).
pub struct Gate<'a> {
    runtime: &'a Runtime,
    project: &'a str,
    health: &'a Health,
    services: &'a [String],
    images: &'a BTreeMap<String, String>,
    client: std::result::Result<reqwest::blocking::Client, String>,
    start: Instant,
    consecutive: BTreeMap<String, u32>,
    rounds: u32,
    passing_rounds: u32,
    /// When each service's new container was first seen running.
    running_since: BTreeMap<String, Instant>,
    /// When compose finished (checks tied to no service start then).
    compose_done: Option<Instant>,
    /// The project's containers as the last round saw them.
    last_seen: Vec<Container>,
}

impl<'a> Gate<'a> {
    /// A gate for the compose project `project` whose services are `services`; `images` maps
    /// services to the image ID (config digest) their containers must run. The window starts
    /// now.
    pub fn new(
        runtime: &'a Runtime,
        project: &'a str,
        health: &'a Health,
        services: &'a [String],
        images: &'a BTreeMap<String, String>,
    ) -> Gate<'a> {
        let client = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string());
        Gate {
            runtime,
            project,
            health,
            services,
            images,
            client,
            start: Instant::now(),
            consecutive: BTreeMap::new(),
            rounds: 0,
            passing_rounds: 0,
            running_since: BTreeMap::new(),
            compose_done: None,
            last_seen: Vec::new(),
        }
    }

    /// Pause between rounds.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.health.interval_ms.max(100))
    }

    /// Tells the gate compose has finished creating containers.
    pub fn compose_finished(&mut self) {
        self.compose_done.get_or_insert_with(Instant::now);
    }

    /// The project's containers as the last round saw them (for naming the containers
    /// compose's messages mention).
    pub fn containers(&self) -> &[Container] {
        &self.last_seen
    }

    fn grace(&self) -> Duration {
        Duration::from_millis(
            self.health
                .connect_grace_ms
                .unwrap_or(DEFAULT_CONNECT_GRACE_MS),
        )
    }

    /// Runs one round of checks and decides.
    pub fn round(&mut self) -> Verdict {
        self.rounds += 1;
        let during_up = self.compose_done.is_none();
        let mut results = Vec::new();
        match self.runtime.containers(self.project) {
            Ok(list) => {
                for svc in self.services {
                    let mine: Vec<&Container> = list.iter().filter(|c| &c.service == svc).collect();
                    let r = container_result(svc, &mine, self.images.get(svc), during_up);
                    let new_running = mine.iter().any(|c| {
                        c.state == "running"
                            && self.images.get(svc).is_none_or(|want| &c.image_id == want)
                    });
                    if new_running {
                        self.running_since
                            .entry(svc.clone())
                            .or_insert_with(Instant::now);
                    }
                    results.push(r);
                }
                results.extend(unknown_containers(&list, self.services, during_up));
                self.last_seen = list;
            }
            Err(e) => results.push(CheckResult {
                name: "docker".into(),
                ok: false,
                counts: true,
                detail: e.to_string(),
                service: None,
            }),
        }
        let grace = self.grace();
        for check in &self.health.http {
            let armed_at = match &check.service {
                Some(svc) => self.running_since.get(svc).copied(),
                None => self.compose_done,
            };
            let r = match (armed_at, &self.client) {
                (None, _) => CheckResult {
                    name: format!("http:{}", check.name),
                    ok: false,
                    counts: false,
                    detail: match &check.service {
                        Some(svc) => format!("waiting for the new container of service `{svc}`"),
                        None => "waiting for compose to finish".into(),
                    },
                    service: check.service.clone(),
                },
                (Some(at), Ok(c)) => http_result(c, check, at.elapsed() >= grace),
                (Some(_), Err(e)) => CheckResult {
                    name: format!("http:{}", check.name),
                    ok: false,
                    counts: true,
                    detail: format!("no HTTP client: {e}"),
                    service: check.service.clone(),
                },
            };
            results.push(r);
        }
        self.decide(results)
    }

    fn decide(&mut self, results: Vec<CheckResult>) -> Verdict {
        let mut tripped: Option<(String, Option<String>)> = None;
        for r in &results {
            let n = self.consecutive.entry(r.name.clone()).or_insert(0);
            if r.ok {
                *n = 0;
            } else if r.counts {
                *n += 1;
                if *n >= self.health.failures.max(1) && tripped.is_none() {
                    let who = r
                        .service
                        .as_ref()
                        .map(|s| format!("service `{s}`: "))
                        .unwrap_or_default();
                    tripped = Some((
                        format!("{who}{} failed {} times in a row: {}", r.name, n, r.detail),
                        r.service.clone(),
                    ));
                }
            } else {
                // A failure that does not count (still starting) breaks a run of counted ones.
                *n = 0;
            }
        }
        let elapsed = self.start.elapsed();
        let rounds = self.rounds;
        let running = |service: &Option<String>| {
            service
                .as_ref()
                .and_then(|s| self.running_since.get(s))
                .map(|t| t.elapsed().as_millis() as u64)
        };
        let report = |healthy, summary: String, service: Option<String>| Report {
            healthy,
            rounds,
            elapsed_ms: elapsed.as_millis() as u64,
            checks: results.clone(),
            summary,
            service_running_ms: running(&service),
            service,
        };
        let all_ok = results.iter().all(|r| r.ok);
        if all_ok && self.compose_done.is_some() {
            self.passing_rounds += 1;
            if self.passing_rounds >= self.health.successes.max(1) {
                return Verdict::Healthy(report(
                    true,
                    format!(
                        "all {} checks passed {} rounds in a row",
                        results.len(),
                        self.passing_rounds
                    ),
                    None,
                ));
            }
        } else {
            self.passing_rounds = 0;
        }
        if let Some((why, service)) = tripped {
            let when = running(&service)
                .map(|ms| format!(" (decided {ms} ms after its new container started)"))
                .unwrap_or_default();
            return Verdict::Unhealthy(report(false, format!("unhealthy: {why}{when}"), service));
        }
        let window = Duration::from_secs(self.health.window_secs.max(1));
        if elapsed + self.interval() > window && self.passing_rounds == 0 {
            let failing: Vec<&CheckResult> = results.iter().filter(|r| !r.ok).collect();
            let service = failing.iter().find_map(|r| r.service.clone());
            let text: Vec<String> = failing
                .iter()
                .map(|r| match &r.service {
                    Some(s) => format!("service `{s}`: {} ({})", r.name, r.detail),
                    None => format!("{} ({})", r.name, r.detail),
                })
                .collect();
            let compose = if self.compose_done.is_none() {
                " (compose was still starting the stack)"
            } else {
                ""
            };
            return Verdict::Unhealthy(report(
                false,
                format!(
                    "unhealthy: not healthy within {}s{compose}; still failing: {}",
                    self.health.window_secs,
                    text.join("; ")
                ),
                service,
            ));
        }
        Verdict::Pending
    }
}

/// Runs the whole gate for a stack compose has already started: rounds until it decides.
pub fn gate(
    runtime: &Runtime,
    project: &str,
    health: &Health,
    services: &[String],
    images: &BTreeMap<String, String>,
) -> Report {
    let mut g = Gate::new(runtime, project, health, services, images);
    g.compose_finished();
    loop {
        match g.round() {
            Verdict::Healthy(r) | Verdict::Unhealthy(r) => return r,
            Verdict::Pending => std::thread::sleep(g.interval()),
        }
    }
}

/// Running containers of the project whose service the bundle does not pin: something
/// started them outside the signed manifest (an `include:`d file, a hand-run `docker compose`,
/// a service replaced behind the installer's back). Each one fails the gate, by name.
fn unknown_containers(
    list: &[Container],
    services: &[String],
    during_up: bool,
) -> Vec<CheckResult> {
    list.iter()
        .filter(|c| !services.contains(&c.service))
        .filter(|c| matches!(c.state.as_str(), "running" | "restarting" | "created"))
        .map(|c| CheckResult {
            name: format!("unpinned:{}", c.service),
            ok: false,
            // While compose runs, it may still be removing the orphans of the last generation.
            counts: !during_up,
            service: Some(c.service.clone()),
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
    during_up: bool,
) -> CheckResult {
    let name = format!("container:{service}");
    let fail = |counts: bool, detail: String| CheckResult {
        name: name.clone(),
        ok: false,
        counts,
        detail,
        service: Some(service.to_string()),
    };
    if containers.is_empty() {
        // While compose runs it may not have created it yet.
        let detail = if during_up {
            "not created yet".to_string()
        } else {
            "no container".to_string()
        };
        return fail(!during_up, detail);
    }
    for c in containers {
        if let Some(want) = image
            && &c.image_id != want
        {
            // While compose runs, the previous generation's container may still be there.
            return fail(
                !during_up,
                format!(
                    "{} runs image {}, but the signed manifest says {want}",
                    c.name, c.image_id
                ),
            );
        }
        let unhealthy = || match &c.health_output {
            Some(out) => format!("{} is unhealthy (Docker health check: {out})", c.name),
            None => format!("{} is unhealthy", c.name),
        };
        let bad = match (c.state.as_str(), c.health.as_deref()) {
            ("exited", _) if c.exit_code == 0 => None,
            ("running", Some("unhealthy")) => Some((true, unhealthy())),
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
            return fail(counts, detail);
        }
    }
    CheckResult {
        name,
        ok: true,
        counts: false,
        detail: "running".into(),
        service: Some(service.to_string()),
    }
}

/// One HTTP check; `refusal_counts` once the service has had its connect grace period.
fn http_result(
    client: &reqwest::blocking::Client,
    check: &HttpCheck,
    refusal_counts: bool,
) -> CheckResult {
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
        service: check.service.clone(),
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
        // accepts and then drops connections while the process inside has not bound). It
        // counts only after the grace period; a crashed container is caught by its container
        // check.
        Err(e) => {
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                cause = s.to_string();
                source = s.source();
            }
            let note = if refusal_counts {
                " after the connect grace period"
            } else {
                ""
            };
            return fail(
                refusal_counts,
                format!("GET {}: not answering ({cause}){note}", check.url),
            );
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
        service: check.service.clone(),
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
            health_output: None,
            owner_root: None,
            owner_profile: None,
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
        let r = unknown_containers(&list, &services, false);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].name, "unpinned:watchtower");
        assert!(!r[0].ok && r[0].counts);
        assert!(r[0].detail.contains("proj-watchtower-1"), "{r:?}");
        assert!(unknown_containers(&list[..1], &services, false).is_empty());
        assert!(!unknown_containers(&list, &services, true)[0].counts);
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
            service: None,
        };
        let started = Instant::now();
        let r = http_result(&client, &check, true);
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
