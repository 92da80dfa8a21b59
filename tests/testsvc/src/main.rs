//! `testsvc` — a tiny HTTP service (std only, plus `sha2` for hashing) used as the payload of
//! smoker-release's integration tests. It is built as a fully static binary
//! and shipped in a `FROM scratch` image, so it also carries its own health
//! probe (there is no curl in such an image).
//!
//! # Subcommands
//!
//! * `testsvc serve` (the default with no arguments): HTTP/1.1 on
//!   `0.0.0.0:$PORT` (default 8080), one thread per connection, every answer
//!   `Connection: close`, `text/plain`, with no trailing newline. Routes:
//!   * `GET /health` → `200 ok`, or `503 unhealthy` when `TESTSVC_UNHEALTHY=1`;
//!   * `GET /version` → the value of `TESTSVC_VERSION` (default `unknown`);
//!   * `POST /records` → appends the body (one line; one trailing newline is
//!     stripped) to `$TESTSVC_DATA/records.txt` and fsyncs, `201 stored`;
//!   * `GET /records` → the records file (empty when it does not exist yet);
//!   * `GET /records/sha256` → lowercase hex SHA-256 of that file.
//! * `testsvc dump`: writes the records file to stdout; exit 1 when missing.
//! * `testsvc restore`: replaces the records file with stdin (temp file,
//!   fsync, rename, fsync of the directory).
//! * `testsvc migrate <script>`: applies a script, one instruction a line —
//!   `uppercase` (ASCII-uppercase every record), `append <text>`, `fail`
//!   (exit 3) — blank lines and `#` comments ignored. All or nothing: the
//!   result is written with temp file + rename only when every line succeeded.
//! * `testsvc probe <url>`: `GET http://host:port/path`, exit 0 on a 2xx
//!   answer, 1 otherwise. Meant for `HEALTHCHECK` in a scratch image.
//!
//! # Environment
//!
//! `PORT`, `TESTSVC_VERSION`, `TESTSVC_UNHEALTHY=1`, `TESTSVC_DATA` (default
//! `/data`), `TESTSVC_START_DELAY_MS` (wait before binding the port),
//! `TESTSVC_CRASH_AFTER_MS` (exit 1 that long after start),
//! `TESTSVC_SLOW_MS` (delay every `/health` answer).
//!
//! # Exit codes
//!
//! 0 success (also after SIGTERM/SIGINT), 1 runtime failure or probe failure,
//! 2 usage error or bad input, 3 a migration reached `fail`.
//!
//! # Stopping fast (SIGTERM)
//!
//! In a container the service is PID 1, and the kernel drops signals to PID 1
//! that have no handler, so `docker stop` would wait out its grace period. The
//! service therefore installs a SIGTERM/SIGINT handler through a two-line FFI
//! declaration of C's `signal()` (the C library std links anyway; no crate).
//! The handler only sets an atomic flag; the accept loop is non-blocking and
//! polls that flag every 25 ms, so the process exits within a fraction of a
//! second. Every acknowledged record is already fsynced, so exiting then
//! loses nothing. Compose files may still set `stop_grace_period: 1s` as a
//! belt-and-braces measure.

mod http;
mod records;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How often the accept loop and the start delay look at the stop flag.
const POLL: Duration = Duration::from_millis(25);
/// Read/write timeout of one served connection.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);
/// Connect/read timeout of `testsvc probe`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

const USAGE: &str =
    "usage: testsvc [serve | dump | restore | check | migrate <script> | probe <url>]";

/// SIGTERM/SIGINT handling without any crate: a handler that sets a flag.
mod signals {
    use std::ffi::c_int;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once SIGTERM or SIGINT arrived.
    pub static STOP: AtomicBool = AtomicBool::new(false);

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;
    const SIG_ERR: usize = usize::MAX;

    unsafe extern "C" {
        /// C's `signal(2)`; glibc gives it BSD semantics (handler stays
        /// installed, syscalls restart).
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    }

    /// Async-signal-safe: only an atomic store.
    extern "C" fn on_signal(_signum: c_int) {
        STOP.store(true, Ordering::SeqCst);
    }

    /// Installs the handler for SIGTERM and SIGINT.
    pub fn install() {
        for sig in [SIGTERM, SIGINT] {
            // SAFETY: `on_signal` is a valid `extern "C" fn(c_int)` that only
            // performs an atomic store, which is async-signal-safe.
            let previous = unsafe { signal(sig, on_signal) };
            if previous == SIG_ERR {
                eprintln!("testsvc: warning: could not install a handler for signal {sig}");
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = run(&args);
    std::process::exit(code);
}

/// Dispatches a subcommand and returns the process exit code.
fn run(args: &[String]) -> i32 {
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        None | Some("serve") if rest.is_empty() => serve_main(),
        Some("dump") if rest.is_empty() => dump_main(),
        Some("restore") if rest.is_empty() => restore_main(),
        Some("check") if rest.is_empty() => check_main(),
        Some("migrate") if rest.len() == 1 => migrate_main(&rest[0]),
        Some("probe") if rest.len() == 1 => probe_main(&rest[0]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        _ => {
            eprintln!("testsvc: bad arguments {args:?}\n{USAGE}");
            2
        }
    }
}

/// Service settings, read from the environment.
#[derive(Clone, Debug)]
struct Config {
    port: u16,
    version: String,
    unhealthy: bool,
    start_delay: Option<Duration>,
    crash_after: Option<Duration>,
    slow: Option<Duration>,
    data_dir: PathBuf,
}

impl Config {
    /// Reads the settings; errors name the variable that is malformed.
    fn from_env() -> Result<Config, String> {
        let port = match std::env::var("PORT") {
            Ok(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("PORT={v:?} is not a port number"))?,
            Err(_) => 8080,
        };
        Ok(Config {
            port,
            version: std::env::var("TESTSVC_VERSION").unwrap_or_else(|_| "unknown".to_string()),
            unhealthy: std::env::var("TESTSVC_UNHEALTHY").is_ok_and(|v| v.trim() == "1"),
            start_delay: env_millis("TESTSVC_START_DELAY_MS")?,
            crash_after: env_millis("TESTSVC_CRASH_AFTER_MS")?,
            slow: env_millis("TESTSVC_SLOW_MS")?,
            data_dir: data_dir(),
        })
    }
}

/// The data dir: `$TESTSVC_DATA`, default `/data`.
fn data_dir() -> PathBuf {
    std::env::var_os("TESTSVC_DATA")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/data"))
}

/// Parses an optional millisecond duration from the environment.
fn env_millis(name: &str) -> Result<Option<Duration>, String> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| format!("{name}={v:?} is not a number of milliseconds")),
        Err(_) => Ok(None),
    }
}

/// `testsvc serve`.
fn serve_main() -> i32 {
    signals::install();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("testsvc: {e}");
            return 2;
        }
    };
    if let Some(after) = config.crash_after {
        thread::spawn(move || {
            thread::sleep(after);
            eprintln!(
                "testsvc: crashing on purpose after {} ms",
                after.as_millis()
            );
            std::process::exit(1);
        });
    }
    if let Some(delay) = config.start_delay {
        eprintln!("testsvc: delaying start by {} ms", delay.as_millis());
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if signals::STOP.load(Ordering::SeqCst) {
                return 0;
            }
            thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
        }
    }
    let listener = match TcpListener::bind(("0.0.0.0", config.port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testsvc: cannot listen on 0.0.0.0:{}: {e}", config.port);
            return 1;
        }
    };
    eprintln!(
        "testsvc: listening on 0.0.0.0:{} (version {}, data {})",
        config.port,
        config.version,
        config.data_dir.display()
    );
    match serve_on(listener, Arc::new(config), &signals::STOP) {
        Ok(()) => {
            eprintln!("testsvc: stopping on signal");
            0
        }
        Err(e) => {
            eprintln!("testsvc: accept loop failed: {e}");
            1
        }
    }
}

/// Accepts connections until `stop` is set, one thread per connection.
fn serve_on(listener: TcpListener, config: Arc<Config>, stop: &AtomicBool) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _peer)) => {
                let config = Arc::clone(&config);
                thread::spawn(move || handle_connection(stream, &config));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves one request on `stream` and closes it.
fn handle_connection(mut stream: TcpStream, config: &Config) {
    let setup = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(CONN_TIMEOUT)))
        .and_then(|()| stream.set_write_timeout(Some(CONN_TIMEOUT)));
    if let Err(e) = setup {
        eprintln!("testsvc: connection setup failed: {e}");
        return;
    }
    let (status, body, what) = match http::read_request(&mut stream) {
        Ok(req) => {
            let (status, body) = route(&req, config);
            (status, body, format!("{} {}", req.method, req.path))
        }
        Err(e) => (
            400,
            format!("bad request: {e}").into_bytes(),
            "-".to_string(),
        ),
    };
    if let Err(e) = http::write_response(&mut stream, status, &body) {
        eprintln!("testsvc: {what}: writing the answer failed: {e}");
        return;
    }
    if !what.starts_with("GET /health") {
        eprintln!("testsvc: {what} -> {status}");
    }
}

/// Maps a request to `(status, body)`.
fn route(req: &http::Request, config: &Config) -> (u16, Vec<u8>) {
    let text = |status: u16, s: &str| (status, s.as_bytes().to_vec());
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => {
            if let Some(slow) = config.slow {
                thread::sleep(slow);
            }
            if config.unhealthy {
                text(503, "unhealthy")
            } else {
                text(200, "ok")
            }
        }
        ("GET", "/version") => text(200, &config.version),
        ("POST", "/records") => {
            let Ok(body) = std::str::from_utf8(&req.body) else {
                return text(400, "record is not UTF-8");
            };
            let line = body
                .strip_suffix("\r\n")
                .or_else(|| body.strip_suffix('\n'))
                .unwrap_or(body);
            if line.is_empty() {
                return text(400, "empty record");
            }
            if line.contains(['\n', '\r']) {
                return text(400, "a record is a single line");
            }
            match records::append(&config.data_dir, line) {
                Ok(()) => text(201, "stored"),
                Err(e) => text(500, &format!("append failed: {e}")),
            }
        }
        ("GET", "/records") => match records::read(&config.data_dir) {
            Ok(contents) => (200, contents.unwrap_or_default()),
            Err(e) => text(500, &format!("read failed: {e}")),
        },
        ("GET", "/records/sha256") => match records::read(&config.data_dir) {
            Ok(contents) => text(200, &sha256_hex(&contents.unwrap_or_default())),
            Err(e) => text(500, &format!("read failed: {e}")),
        },
        (_, "/health" | "/version" | "/records" | "/records/sha256") => {
            text(405, "method not allowed")
        }
        _ => text(404, "not found"),
    }
}

/// Lowercase hex SHA-256 of `data` (the `sha2` crate).
fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `testsvc dump`.
fn dump_main() -> i32 {
    let dir = data_dir();
    match records::read(&dir) {
        Ok(Some(bytes)) => {
            let mut out = io::stdout().lock();
            match out.write_all(&bytes).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("testsvc dump: writing stdout failed: {e}");
                    1
                }
            }
        }
        Ok(None) => {
            eprintln!(
                "testsvc dump: no records file at {}",
                records::records_path(&dir).display()
            );
            1
        }
        Err(e) => {
            eprintln!(
                "testsvc dump: reading {} failed: {e}",
                records::records_path(&dir).display()
            );
            1
        }
    }
}

/// `testsvc restore`.
fn restore_main() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut input) {
        eprintln!("testsvc restore: reading stdin failed: {e}");
        return 1;
    }
    let dir = data_dir();
    match records::replace(&dir, &input) {
        Ok(()) => {
            eprintln!("testsvc restore: wrote {} bytes", input.len());
            0
        }
        Err(e) => {
            eprintln!("testsvc restore: writing {} failed: {e}", dir.display());
            1
        }
    }
}

/// `testsvc check`: reads a dump on stdin and exits 0 only if it is a records file this
/// service would restore (non-empty UTF-8 text ending with a newline); changes nothing.
fn check_main() -> i32 {
    let mut input = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut input) {
        eprintln!("testsvc check: reading stdin failed: {e}");
        return 1;
    }
    match std::str::from_utf8(&input) {
        Ok(text) if !text.is_empty() && text.ends_with('\n') => {
            eprintln!("testsvc check: {} records", text.lines().count());
            0
        }
        Ok(_) => {
            eprintln!("testsvc check: not a records file (empty or not ending with a newline)");
            1
        }
        Err(e) => {
            eprintln!("testsvc check: not a records file: {e}");
            1
        }
    }
}

/// `testsvc migrate <script>`.
fn migrate_main(script_path: &str) -> i32 {
    let script = match std::fs::read_to_string(script_path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("testsvc migrate: cannot read script {script_path}: {e}");
            return 2;
        }
    };
    let instructions = match records::parse_script(&script) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("testsvc migrate: {script_path}: {e}");
            return 2;
        }
    };
    let dir = data_dir();
    let current = match records::read(&dir) {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("testsvc migrate: reading records failed: {e}");
            return 1;
        }
    };
    let migrated = match records::apply(&current, &instructions) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("testsvc migrate: {script_path}: {e}; nothing was changed");
            return 3;
        }
    };
    match records::replace(&dir, &migrated) {
        Ok(()) => {
            eprintln!(
                "testsvc migrate: applied {} instruction(s)",
                instructions.len()
            );
            0
        }
        Err(e) => {
            eprintln!("testsvc migrate: writing records failed: {e}");
            1
        }
    }
}

/// `testsvc probe <url>`.
fn probe_main(url: &str) -> i32 {
    match http::get_status(url, PROBE_TIMEOUT) {
        Ok(status) if (200..300).contains(&status) => 0,
        Ok(status) => {
            eprintln!("testsvc probe: {url} answered {status}");
            1
        }
        Err(e) => {
            eprintln!("testsvc probe: {url}: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn temp_dir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir().join(format!(
            "testsvc-serve-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ))
    }

    #[test]
    fn sha256_hex_is_lowercase_hex_of_sha256() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"The quick brown fox jumps over the lazy dog"),
            "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592"
        );
    }

    fn config(data_dir: PathBuf) -> Config {
        Config {
            port: 0,
            version: "v-test".into(),
            unhealthy: false,
            start_delay: None,
            crash_after: None,
            slow: None,
            data_dir,
        }
    }

    /// Sends one raw request and returns (status, body).
    fn call(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let (head, body) = out.split_once("\r\n\r\n").expect("head/body");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status");
        (status, body.to_string())
    }

    #[test]
    fn serves_routes_and_stops_on_flag() {
        let dir = temp_dir();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = Arc::new(config(dir.clone()));
        let server = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || serve_on(listener, cfg, &stop))
        };

        assert_eq!(call(port, "GET", "/health", ""), (200, "ok".into()));
        assert_eq!(call(port, "GET", "/version", ""), (200, "v-test".into()));
        assert_eq!(call(port, "GET", "/records", ""), (200, String::new()));
        assert_eq!(
            call(port, "POST", "/records", "alpha\n"),
            (201, "stored".into())
        );
        assert_eq!(
            call(port, "POST", "/records", "beta"),
            (201, "stored".into())
        );
        assert_eq!(
            call(port, "POST", "/records", "a\nb"),
            (400, "a record is a single line".into())
        );
        assert_eq!(
            call(port, "GET", "/records", ""),
            (200, "alpha\nbeta\n".into())
        );
        assert_eq!(
            call(port, "GET", "/records/sha256", ""),
            (
                200,
                "e49c81e2d2f84e259d40e2fb8192f3bcd198b355184845d76d8f58807d0d78ee".into()
            )
        );
        assert_eq!(call(port, "DELETE", "/records", "").0, 405);
        assert_eq!(call(port, "GET", "/nope", "").0, 404);
        assert_eq!(
            http::get_status(&format!("http://127.0.0.1:{port}/health"), PROBE_TIMEOUT),
            Ok(200)
        );
        assert_eq!(
            http::get_status(&format!("http://localhost:{port}/nope"), PROBE_TIMEOUT),
            Ok(404)
        );

        let t0 = Instant::now();
        stop.store(true, Ordering::SeqCst);
        let result = server.join().expect("server thread");
        assert!(result.is_ok());
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "stop took {:?}",
            t0.elapsed()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unhealthy_answers_503() {
        let mut cfg = config(temp_dir());
        cfg.unhealthy = true;
        let req = http::Request {
            method: "GET".into(),
            path: "/health".into(),
            body: Vec::new(),
        };
        assert_eq!(route(&req, &cfg), (503, b"unhealthy".to_vec()));
    }

    #[test]
    fn argument_errors_exit_2() {
        assert_eq!(run(&["bogus".to_string()]), 2);
        assert_eq!(run(&["migrate".to_string()]), 2);
        assert_eq!(run(&["serve".to_string(), "extra".to_string()]), 2);
        assert_eq!(run(&["probe".to_string(), "ftp://x".to_string()]), 1);
    }
}
