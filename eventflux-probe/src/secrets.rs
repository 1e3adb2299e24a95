//! Credentials the observer is handed and must never show: the userinfo of an OTLP endpoint
//! (`http://user:PASSWORD@host:4317`, from `[otlp] endpoint` or the `OTEL_*`/`EVENTFLUX_PROBE_*`
//! variables) and the values of OTLP headers (`OTEL_EXPORTER_OTLP_HEADERS`).
//!
//! Two mechanisms, because the observer is not the only one that prints:
//! - What we print or serve ourselves shows a URL through [`redact_url`] (`http://***@host`).
//! - Everything else — third-party debug logs (hyper's connection pool prints the URL it
//!   connects to), error chains, whatever a dependency puts in an error text — passes
//!   [`scrub`] on its way out: every log line, at every level and in both formats (the log
//!   writer is wrapped in [`Scrubbing`]), the one-line error `main` prints, and the exporter's
//!   last error that `/health` serves. Each secret is registered once, when it is read, in
//!   the forms it may be printed in: as given, percent-decoded, JSON- and Debug-escaped, and
//!   as the HTTP Basic credentials a client derives from a URL's userinfo.
//!
//! Secrets shorter than [`MIN_SECRET`] are only scrubbed as part of the whole userinfo: masking
//! every occurrence of a two-letter string would garble every line.

use std::borrow::Cow;
use std::io;
use std::sync::RwLock;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Shorter secrets are masked only inside their userinfo (see the module docs).
const MIN_SECRET: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

fn add(secret: &str) {
    if secret.len() < MIN_SECRET {
        return;
    }
    let mut forms = vec![secret.to_owned()];
    if let Ok(json) = serde_json::to_string(secret) {
        forms.push(json.trim_matches('"').to_owned());
    }
    forms.push(format!("{secret:?}").trim_matches('"').to_owned());
    if let Some(decoded) = percent_decode(secret) {
        forms.push(decoded);
    }
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for f in forms {
        if f.len() >= MIN_SECRET && !all.contains(&f) {
            all.push(f);
        }
    }
    // Longest first, so that a secret containing another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// The userinfo of `url` (`user:password` in `scheme://user:password@host`), if it has one.
fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.rsplit_once('@').map(|(info, _)| info).filter(|i| !i.is_empty())
}

/// Registers the credentials of an endpoint URL: its userinfo, the password alone, and the
/// HTTP Basic token a client makes of them.
pub fn register_url(url: &str) {
    let Some(info) = userinfo(url) else { return };
    // The whole userinfo is masked whatever its length.
    {
        let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
        if !all.iter().any(|s| s == info) {
            all.push(info.to_owned());
        }
    }
    add(info);
    if let Some((_, password)) = info.split_once(':') {
        add(password);
    }
    let decoded = percent_decode(info).unwrap_or_else(|| info.to_owned());
    add(&base64(decoded.as_bytes()));
}

/// Registers the values of an OTLP header list (`key=value,key2=value2`); an item without
/// `=` (a mistaken `Authorization: Bearer …`) is registered whole.
pub fn register_headers(list: &str) {
    for pair in list.split(',') {
        match pair.split_once('=') {
            Some((_, value)) => add(value.trim()),
            None => add(pair.trim()),
        }
    }
}

/// Variables whose values may hold credentials: endpoints and header lists.
const ENDPOINT_VARS: [&str; 5] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "EVENTFLUX_PROBE_OTLP_ENDPOINT",
    "EVENTFLUX_PROBE_OTLP_METRICS_ENDPOINT",
];
const HEADER_VARS: [&str; 3] =
    ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"];

/// Registers what the environment hands over; called first thing, before anything can print.
pub fn register_from_env() {
    for var in ENDPOINT_VARS {
        if let Some(v) = std::env::var_os(var) {
            register_url(&v.to_string_lossy());
        }
    }
    for var in HEADER_VARS {
        if let Some(v) = std::env::var_os(var) {
            register_headers(&v.to_string_lossy());
        }
    }
}

/// `text` with every registered secret masked.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let all = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_owned();
    for s in all.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

/// `url` with its userinfo masked (`http://***@collector:4317`) and query values masked.
pub fn redact_url(url: &str) -> String {
    let mut out = match userinfo(url) {
        Some(info) => url.replacen(&format!("{info}@"), &format!("{MASK}@"), 1),
        None => url.to_owned(),
    };
    if let Some((base, query)) = out.split_once('?') {
        let masked: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}={MASK}"),
                None => kv.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", masked.join("&"));
    }
    out
}

/// `%XX` sequences decoded, if there are any and they make UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Standard base64 with padding (what `Authorization: Basic` carries).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A writer that masks secrets in what passes through it (one formatted log line per write).
pub struct Scrubbing<W>(pub W);

impl<W: io::Write> io::Write for Scrubbing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(buf) {
            Ok(text) => self.0.write_all(scrub(text).as_bytes())?,
            Err(_) => self.0.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_userinfo_and_query_values() {
        assert_eq!(redact_url("http://user:pw@host:4317"), "http://***@host:4317");
        assert_eq!(redact_url("http://host:4317/v1?token=abc&x=1"), "http://host:4317/v1?token=***&x=***");
        assert_eq!(redact_url("http://host:4317"), "http://host:4317");
        assert_eq!(redact_url("http://a@b@host/p@q"), "http://***@host/p@q");
        assert_eq!(userinfo("http://host/a@b"), None, "an @ in the path is not userinfo");
    }

    #[test]
    fn registered_secrets_are_masked_in_every_form() {
        register_url("http://alice:S3cr%21t-pass@collector:4317");
        register_headers("api-key=k3y-v\"alue, x-other = second-secret");
        let basic = format!("authorization: Basic {}", base64(b"alice:S3cr!t-pass"));
        for (text, secret) in [
            ("GET http://alice:S3cr%21t-pass@collector:4317/", "S3cr"),
            ("password S3cr!t-pass", "S3cr"),
            (basic.as_str(), "YWxp"),
            (r#"{"value":"k3y-v\"alue"}"#, "k3y"),
            ("k3y-v\"alue", "k3y"),
            ("second-secret here", "second-secret"),
        ] {
            assert!(text.contains(secret));
            let out = scrub(text);
            assert!(!out.contains(secret), "{text} → {out}");
        }
        assert_eq!(scrub("nothing to hide"), "nothing to hide");
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"a"), "YQ==");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }
}
