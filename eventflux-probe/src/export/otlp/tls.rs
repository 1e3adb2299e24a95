//! TLS for OTLP: the collector's certificate checked against the system's roots or a given CA,
//! and a client certificate for collectors that want mutual TLS. The same [`Tls`] makes the
//! gRPC channel's configuration (tonic) and the HTTP client (reqwest), so both signals and both
//! protocols trust the same roots; both run rustls with the ring provider.
//!
//! Files are read and their PEM checked when the options are resolved, before anything is
//! attached: a missing or malformed file is a one-line error naming the key or variable.

use std::time::Duration;

use anyhow::{Result, anyhow};

/// What a signal's connection trusts and presents.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM of the CA certificates that may sign the collector's; `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
    /// PEM of the client certificate (chain) and of its private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    // The key stays out of logs and debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("identity", &self.identity.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Reads a PEM file that must hold at least one `what` block (`CERTIFICATE`, `PRIVATE KEY`).
pub fn read_pem(path: &str, what: &str, from: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{from}: cannot read `{path}`: {e}"))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{what}-----")));
    if !found {
        return Err(anyhow!("{from}: `{path}` holds no PEM {what} (-----BEGIN …{what}-----)"));
    }
    Ok(bytes)
}

/// Installs rustls' ring provider for the process (reqwest is built without one of its own);
/// a second call changes nothing.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Tls {
    /// tonic's configuration for an `https://` gRPC endpoint.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new();
        c = match &self.ca {
            Some(ca) => c.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => c.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        c
    }

    /// An HTTP client that trusts these roots and presents this identity.
    pub fn reqwest(&self, timeout: Duration) -> Result<reqwest::Client> {
        install_provider();
        let mut b = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout);
        if let Some(ca) = &self.ca {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(|e| anyhow!("the CA certificate: {e}"))?;
            b = b.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &self.identity {
            let pem = [cert.as_slice(), b"\n", key.as_slice()].concat();
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| anyhow!("the client certificate and key: {e}"))?;
            b = b.identity(id);
        }
        b.build().map_err(|e| anyhow!("cannot set up the OTLP HTTP client: {}", error_chain(&e)))
    }
}

/// The HTTP client of the span exporter, which keeps why its last request failed:
/// `opentelemetry-otlp` reports every failure to connect as "network error", and the cause
/// (a certificate its CA did not sign, a refused connection) is what an SRE needs to read.
#[derive(Debug, Clone)]
pub struct Explained {
    inner: reqwest::Client,
    last: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Explained {
    pub fn new(inner: reqwest::Client) -> Explained {
        Explained { inner, last: Default::default() }
    }

    /// Why the last request failed, once.
    pub fn take_cause(&self) -> Option<String> {
        crate::sync::lock(&self.last).take()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Explained {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let result = self.inner.send_bytes(request).await;
        if let Err(e) = &result {
            *crate::sync::lock(&self.last) = Some(error_chain(e.as_ref()));
        }
        result
    }
}

/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))
}

/// `error` with what to do about it when it is a certificate the client did not trust.
pub fn with_hint(error: String) -> String {
    if error.contains("UnknownIssuer") || error.contains("invalid peer certificate") {
        format!(
            "{error} (is the collector's certificate signed by the CA of otlp.certificate / OTEL_EXPORTER_OTLP_CERTIFICATE, or by the system's roots without one?)"
        )
    } else {
        error
    }
}

/// An error with its sources, one line: what a TLS failure says is in the innermost one.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut texts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        texts.push(s.to_string());
        source = s.source();
    }
    join_distinct(&texts)
}

/// `texts` joined with `: `, each `: `-separated part said once: client libraries often
/// repeat their source's text in their own.
pub fn join_distinct(texts: &[String]) -> String {
    let mut kept: Vec<&str> = Vec::new();
    for part in texts.iter().flat_map(|t| t.split(": ")).map(str::trim) {
        if !part.is_empty() && !kept.contains(&part) {
            kept.push(part);
        }
    }
    kept.join(": ")
}

#[cfg(test)]
mod tests {
    use crate::export::otlp::tls::join_distinct;

    #[test]
    fn repeated_causes_are_said_once() {
        let t = |v: &[&str]| join_distinct(&v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(
            t(&["export failed: Unavailable", "transport error: bad certificate", "bad certificate"]),
            "export failed: Unavailable: transport error: bad certificate"
        );
        assert_eq!(t(&["a", "a"]), "a");
        assert_eq!(
            t(&[
                "answered Unavailable: bad certificate: UnknownIssuer",
                "transport error: bad certificate: UnknownIssuer"
            ]),
            "answered Unavailable: bad certificate: UnknownIssuer: transport error"
        );
        assert_eq!(t(&["x", "y"]), "x: y");
    }
}
