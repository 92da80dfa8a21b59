//! Just enough HTTP/1.1 for the test service: reading one request from a
//! connection, writing one `Connection: close` response, and a tiny GET
//! client for `testsvc probe`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest request head (request line + headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// One parsed HTTP request.
#[derive(Debug)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Request target without the query string, e.g. `/health`.
    pub path: String,
    /// The body (empty when there is no `Content-Length`).
    pub body: Vec<u8>,
}

fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads one request (head and `Content-Length` body) from `stream`.
pub fn read_request(stream: &mut impl Read) -> io::Result<Request> {
    let mut reader = BufReader::new(stream);
    let mut head_len = 0usize;
    let mut request_line = String::new();
    head_len += reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts
        .next()
        .ok_or_else(|| invalid("empty request line"))?
        .to_string();
    let target = parts
        .next()
        .ok_or_else(|| invalid("request line without a target"))?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(invalid("connection closed inside the request head"));
        }
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value
                .trim()
                .parse()
                .map_err(|_| invalid("bad Content-Length"))?;
        }
    }
    if content_length > MAX_BODY {
        return Err(invalid("request body too large"));
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    Ok(Request { method, path, body })
}

/// Writes a complete `Connection: close` response with a text body.
pub fn write_response(stream: &mut impl Write, status: u16, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out)?;
    stream.flush()
}

/// The parts of an `http://host[:port][/path]` URL.
#[derive(Debug, PartialEq, Eq)]
pub struct Url {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path including any query, at least `/`.
    pub path: String,
}

/// Parses a plain-HTTP URL; `https` and anything else are rejected.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unterminated IPv6 literal"))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("{url:?}: missing host"));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
        None => 80,
    };
    Ok(Url { host, port, path })
}

/// Resolves a host without relying on NSS when possible: IP literals and
/// `localhost` never touch the resolver (a static binary in a scratch image
/// has no NSS modules).
fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)]);
    }
    Ok((host, port).to_socket_addrs()?.collect())
}

/// Sends `GET url` and returns the status code of the answer.
pub fn get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let url = parse_url(url)?;
    let addrs = resolve(&url.host, url.port).map_err(|e| format!("resolve {}: {e}", url.host))?;
    let mut last_err = format!("{}: no address", url.host);
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(timeout))
                    .and_then(|()| stream.set_write_timeout(Some(timeout)))
                    .map_err(|e| e.to_string())?;
                let host_header = if url.host.contains(':') {
                    format!("[{}]:{}", url.host, url.port)
                } else {
                    format!("{}:{}", url.host, url.port)
                };
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: testsvc-probe\r\nConnection: close\r\n\r\n",
                    url.path
                );
                stream
                    .write_all(request.as_bytes())
                    .map_err(|e| format!("send to {addr}: {e}"))?;
                let mut status_line = String::new();
                BufReader::new(&mut stream)
                    .read_line(&mut status_line)
                    .map_err(|e| format!("read from {addr}: {e}"))?;
                return parse_status_line(&status_line);
            }
            Err(e) => last_err = format!("connect {addr}: {e}"),
        }
    }
    Err(last_err)
}

/// Extracts the status code from `HTTP/1.x NNN reason`.
fn parse_status_line(line: &str) -> Result<u16, String> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse()
            .map_err(|_| format!("bad status line {line:?}")),
        _ => Err(format!("bad status line {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health"),
            Ok(Url {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/health".into()
            })
        );
        assert_eq!(
            parse_url("http://example"),
            Ok(Url {
                host: "example".into(),
                port: 80,
                path: "/".into()
            })
        );
        assert_eq!(
            parse_url("http://[::1]:9/x?y=1"),
            Ok(Url {
                host: "::1".into(),
                port: 9,
                path: "/x?y=1".into()
            })
        );
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
    }

    #[test]
    fn request_parsing_with_body() {
        let raw = b"POST /records?x=1 HTTP/1.1\r\nHost: a\r\ncontent-length: 5\r\n\r\nhello";
        let req = read_request(&mut &raw[..]).expect("parse");
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/records");
        assert_eq!(req.body, b"hello");
    }

    #[test]
    fn truncated_request_is_an_error() {
        assert!(read_request(&mut &b"GET / HTTP/1.1\r\nHost: a\r\n"[..]).is_err());
        assert!(read_request(&mut &b""[..]).is_err());
    }

    #[test]
    fn response_format() {
        let mut out = Vec::new();
        write_response(&mut out, 503, b"unhealthy").expect("write");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nunhealthy"));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status_line("HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert!(parse_status_line("garbage").is_err());
    }
}
