//! Plain HTTP/1.1 on loopback: the observer's endpoints (`/metrics`, `/health`, `/ready`,
//! `/live`) and anything else a test serves or scrapes.

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A free loopback port (bound and released; the race with other tests is theirs to lose).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits until something listens on loopback `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET on loopback; returns the body, failing the test on a non-200 status.
pub fn http_get(port: u16, path: &str) -> String {
    let (status, body) = http_status(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body, or why there is none
/// (nothing listening, connection reset).
pub fn http_status(port: u16, path: &str) -> Result<(u16, String), String> {
    http_status_accept(port, path, "*/*")
}

/// `GET path` asking for `accept` (a format of `/metrics`): the body, failing the test on a
/// non-200 status.
pub fn http_get_accept(port: u16, path: &str, accept: &str) -> String {
    let (status, body) = http_status_accept(port, path, accept).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

fn http_status_accept(port: u16, path: &str, accept: &str) -> Result<(u16, String), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: {accept}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|_| "response is not UTF-8".to_owned())?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status code in {head:?}"))?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

/// Polls `GET path` every 20 ms until `pred(status, body)` holds; returns that answer, or
/// fails the test with the last one after `limit`.
pub fn poll_http(
    port: u16,
    path: &str,
    limit: Duration,
    what: &str,
    pred: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + limit;
    loop {
        let answer = http_status(port, path);
        if let Ok((status, body)) = &answer
            && pred(*status, body)
        {
            return (*status, body.clone());
        }
        assert!(Instant::now() < deadline, "GET {path}: never {what} within {limit:?}; last answer {answer:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// `text` as JSON, failing the test with the text if it is not.
pub fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `GET /health` of the observer on `port`: its status code (200 healthy or degraded, 503
/// unhealthy) and its report.
pub fn health(port: u16) -> (u16, Value) {
    let (status, body) = http_status(port, "/health").unwrap_or_else(|e| panic!("GET /health: {e}"));
    (status, json(&body))
}
