//! A static file server on loopback for the pull tests, written on `std::net` so every byte is
//! counted: `ETag` / `If-None-Match` and `Last-Modified` / `If-Modified-Since` (304), `Range:
//! bytes=N-` (206), and a knob that cuts the next download of a file after N body bytes (the
//! connection is closed mid-body, as a dropped link would).

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the server saw and sent.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests answered.
    pub requests: AtomicU64,
    /// Body bytes sent.
    pub body_bytes: AtomicU64,
    /// Header bytes sent.
    pub header_bytes: AtomicU64,
}

/// One request as logged: method, path, status, body bytes sent.
pub type Logged = (String, String, u16, u64);

/// A running server; stopped on drop.
pub struct StaticServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    root: Arc<Mutex<PathBuf>>,
    cut: Arc<Mutex<Option<(String, u64)>>>,
    /// Counters.
    pub counters: Arc<Counters>,
    log: Arc<Mutex<Vec<Logged>>>,
    stop: Arc<AtomicBool>,
}

impl StaticServer {
    /// Serves `root` on a free loopback port.
    pub fn start(root: &Path) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local addr").port();
        let s = StaticServer {
            base: format!("http://127.0.0.1:{port}"),
            root: Arc::new(Mutex::new(root.to_path_buf())),
            cut: Arc::new(Mutex::new(None)),
            counters: Arc::new(Counters::default()),
            log: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (root, cut, counters, log, stop) = (
            s.root.clone(),
            s.cut.clone(),
            s.counters.clone(),
            s.log.clone(),
            s.stop.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (root, cut, counters, log) =
                    (root.clone(), cut.clone(), counters.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &cut, &counters, &log);
                });
            }
        });
        s
    }

    /// Serves another directory from now on.
    pub fn set_root(&self, root: &Path) {
        *self.root.lock().expect("root") = root.to_path_buf();
    }

    /// The next GET of a path ending in `suffix` is cut after `bytes` body bytes.
    pub fn cut_next(&self, suffix: &str, bytes: u64) {
        *self.cut.lock().expect("cut") = Some((suffix.to_string(), bytes));
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().expect("log").clone()
    }

    /// Body bytes sent so far.
    pub fn body_bytes(&self) -> u64 {
        self.counters.body_bytes.load(Ordering::SeqCst)
    }

    /// Body plus header bytes sent so far.
    pub fn wire_bytes(&self) -> u64 {
        self.body_bytes() + self.counters.header_bytes.load(Ordering::SeqCst)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::SeqCst)
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

/// RFC 7231 IMF-fixdate.
fn http_date(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil from days (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(mo - 1) as usize];
    format!("{wd}, {d:02} {mon} {y} {h:02}:{m:02}:{s:02} GMT")
}

fn serve(
    conn: TcpStream,
    root: &Mutex<PathBuf>,
    cut: &Mutex<Option<(String, u64)>>,
    counters: &Counters,
    log: &Mutex<Vec<Logged>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("/").to_string();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let rel = path.trim_start_matches('/');
        let file = root.lock().expect("root").join(rel);
        let bytes = if rel.split('/').any(|c| c == "..") {
            None
        } else {
            std::fs::read(&file).ok()
        };
        let mut respond = |status: u16,
                           reason: &str,
                           extra: &[(String, String)],
                           body: &[u8],
                           cut_at: Option<u64>|
         -> std::io::Result<bool> {
            let mut head = format!("HTTP/1.1 {status} {reason}\r\n");
            for (k, v) in extra {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
            head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
            w.write_all(head.as_bytes())?;
            counters
                .header_bytes
                .fetch_add(head.len() as u64, Ordering::SeqCst);
            let send = cut_at.map_or(body.len(), |c| (c as usize).min(body.len()));
            if method != "HEAD" {
                w.write_all(&body[..send])?;
                counters.body_bytes.fetch_add(send as u64, Ordering::SeqCst);
            }
            w.flush()?;
            counters.requests.fetch_add(1, Ordering::SeqCst);
            log.lock()
                .expect("log")
                .push((method.clone(), path.clone(), status, send as u64));
            Ok(cut_at.is_none())
        };
        let Some(bytes) = bytes else {
            respond(404, "Not Found", &[], b"not found\n", None)?;
            continue;
        };
        let etag = format!("\"{}\"", &smoker_format::digest::sha256_hex(&bytes)[..16]);
        let modified = std::fs::metadata(&file)
            .and_then(|m| m.modified())
            .map(http_date)
            .unwrap_or_default();
        let validators = vec![
            ("ETag".to_string(), etag.clone()),
            ("Last-Modified".to_string(), modified.clone()),
            ("Accept-Ranges".to_string(), "bytes".to_string()),
        ];
        let fresh = match (
            headers.get("if-none-match"),
            headers.get("if-modified-since"),
        ) {
            (Some(inm), _) => inm.split(',').any(|t| t.trim() == etag),
            (None, Some(ims)) => *ims == modified,
            _ => false,
        };
        if fresh {
            respond(304, "Not Modified", &validators, b"", None)?;
            continue;
        }
        let cut_at = {
            let mut c = cut.lock().expect("cut");
            match c.as_ref() {
                Some((suffix, n)) if path.ends_with(suffix.as_str()) => {
                    let n = *n;
                    *c = None;
                    Some(n)
                }
                _ => None,
            }
        };
        let range = headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let keep = match range {
            Some(start) if start < bytes.len() => {
                let mut v = validators.clone();
                v.push((
                    "Content-Range".into(),
                    format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
                ));
                respond(206, "Partial Content", &v, &bytes[start..], cut_at)?
            }
            Some(_) => respond(416, "Range Not Satisfiable", &validators, b"", None)?,
            None => respond(200, "OK", &validators, &bytes, cut_at)?,
        };
        if !keep {
            // Cut: drop the connection mid-body.
            let _ = w.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}
