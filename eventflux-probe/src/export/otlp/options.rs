//! What OTLP export is asked to do: `[otlp]` and the standard `OTEL_*` variables, resolved and
//! checked once, before anything is attached ([`Options::resolve`]).

use std::time::Duration;

use anyhow::{Result, anyhow};

/// The wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Grpc,
    HttpProtobuf,
}

/// What `[otlp]` configures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether span trees are exported (an endpoint for traces is set).
    pub traces: bool,
    /// Where spans go: the whole URL for HTTP (`…/v1/traces`), the collector for gRPC.
    pub endpoint: Option<String>,
    /// The traces' TLS (an `https://` endpoint).
    pub tls: super::tls::Tls,
    pub wire: Wire,
    pub service_name: String,
    pub service_version: String,
    pub environment: String,
    /// Spans queued at most; beyond, new spans are dropped (counted).
    pub queue_spans: usize,
    /// Spans per export request at most.
    pub batch_spans: usize,
    /// How often the queue is exported.
    pub interval: Duration,
    /// An export taking longer fails (its spans are dropped, counted).
    pub timeout: Duration,
    /// OTLP metrics, when asked for.
    pub metrics: Option<MetricsOptions>,
}

/// Whether counters and histograms go out as running totals or as changes since the last
/// export (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporality {
    Cumulative,
    Delta,
}

impl std::str::FromStr for Temporality {
    type Err = String;
    fn from_str(s: &str) -> Result<Temporality, String> {
        match s.to_ascii_lowercase().as_str() {
            "cumulative" => Ok(Temporality::Cumulative),
            "delta" => Ok(Temporality::Delta),
            other => Err(format!("`{other}` is not a temporality: use cumulative or delta")),
        }
    }
}

/// What OTLP metrics export is configured to do.
#[derive(Debug, Clone)]
pub struct MetricsOptions {
    /// Where requests go: the whole URL for HTTP (`…/v1/metrics`), the collector for gRPC.
    pub endpoint: String,
    pub wire: Wire,
    pub temporality: Temporality,
    /// How often the model is exported.
    pub interval: Duration,
    /// Request headers (`OTEL_EXPORTER_OTLP_METRICS_HEADERS`, `OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// gzip the requests.
    pub gzip: bool,
    /// TLS (an `https://` endpoint).
    pub tls: super::tls::Tls,
}

/// `key1=value1,key2=value2` with percent-encoded values, as `OTEL_EXPORTER_OTLP_HEADERS`
/// writes headers.
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        // The item itself is not shown: a mistaken `Authorization: Bearer …` is a secret.
        let Some((k, v)) = item.split_once('=') else {
            return Err("an item is not key=value (the value percent-encoded): write key1=value1,key2=value2".into());
        };
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) {
            return Err(format!("`{k}` is not a header name"));
        }
        out.push((
            k.to_ascii_lowercase(),
            percent_decode(v.trim()).ok_or_else(|| format!("the value of `{k}` is not percent-encoded UTF-8"))?,
        ));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'%' {
            let hex = [it.next()?, it.next()?];
            bytes.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

impl Options {
    /// What `[otlp]` and the standard `OTEL_*` variables (read through `var`) ask for, if
    /// anything: the configuration's values first, then the signal's variables, then the
    /// general ones, then the defaults. Every value is checked here, before anything is
    /// attached; an error names the key or variable it came from.
    pub fn resolve(o: &crate::config::Otlp, var: impl Fn(&str) -> Option<String>) -> Result<Option<Options>> {
        let given = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        let endpoint = given(&o.endpoint);
        // The traces' endpoint in effect and where it came from.
        let traces = endpoint
            .clone()
            .map(|e| (e, "otlp.endpoint".to_owned()))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").map(|e| (e, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".into()))
            })
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| (e, "OTEL_EXPORTER_OTLP_ENDPOINT".into())));
        if let Some((e, source)) = &traces {
            check_endpoint(e).map_err(|why| anyhow!("{source}: {why}"))?;
        }
        // A signal's CA and client certificate: the configuration's, the signal's variables,
        // the general ones.
        let tls = |signal: &str| -> Result<super::tls::Tls> {
            let file = |key: &str, value: &str, suffix: &str| {
                let vars = [format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}"), format!("OTEL_EXPORTER_OTLP_{suffix}")];
                given(value)
                    .map(|v| (v, format!("otlp.{key}")))
                    .or_else(|| vars.iter().find_map(|n| var(n).map(|v| (v, n.clone()))))
            };
            let ca = match file("certificate", &o.certificate, "CERTIFICATE") {
                Some((path, from)) => Some(super::tls::read_pem(&path, "CERTIFICATE", &from)?),
                None => None,
            };
            let cert = file("client_certificate", &o.client_certificate, "CLIENT_CERTIFICATE");
            let key = file("client_key", &o.client_key, "CLIENT_KEY");
            let identity = match (cert, key) {
                (Some((c, cf)), Some((k, kf))) => {
                    Some((super::tls::read_pem(&c, "CERTIFICATE", &cf)?, super::tls::read_pem(&k, "PRIVATE KEY", &kf)?))
                }
                (None, None) => None,
                (Some((_, from)), None) => {
                    return Err(anyhow!(
                        "{from} is set but no client key: set otlp.client_key or OTEL_EXPORTER_OTLP_CLIENT_KEY too"
                    ));
                }
                (None, Some((_, from))) => {
                    return Err(anyhow!(
                        "{from} is set but no client certificate: set otlp.client_certificate or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE too"
                    ));
                }
            };
            Ok(super::tls::Tls { ca, identity })
        };
        // Where a value came from, so that a bad one is reported under its own name.
        let pick = |key: &str, value: &str, vars: &[&'static str]| -> Option<(String, String)> {
            given(value)
                .map(|v| (v, format!("otlp.{key}")))
                .or_else(|| vars.iter().find_map(|n| var(n).map(|v| (v, (*n).to_owned()))))
        };
        let (protocol, from) =
            pick("protocol", &o.protocol, &["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
                .unwrap_or_else(|| ("grpc".into(), "default".into()));
        let wire = parse_wire(&protocol).map_err(|e| anyhow!("{from}: {e}"))?;

        let metrics_endpoint = pick("metrics_endpoint", &o.metrics_endpoint, &["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"]);
        let wanted = match pick("metrics", &o.metrics, &["OTEL_METRICS_EXPORTER"]) {
            Some((v, _)) if v == "otlp" => true,
            Some((v, _)) if v == "none" => false,
            Some((v, from)) => {
                return Err(anyhow!("{from}: `{v}` is not a metrics exporter this build has: use otlp or none"));
            }
            None => metrics_endpoint.is_some(),
        };
        let metrics = if wanted {
            let (mprotocol, mfrom) =
                pick("protocol", &o.protocol, &["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
                    .unwrap_or_else(|| ("grpc".into(), "default".into()));
            let mwire = parse_wire(&mprotocol).map_err(|e| anyhow!("{mfrom}: {e}"))?;
            let (url, source) = match metrics_endpoint {
                Some(e) => e,
                None => {
                    let base = endpoint
                        .clone()
                        .map(|e| (e, "otlp.endpoint".to_owned()))
                        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| (e, "OTEL_EXPORTER_OTLP_ENDPOINT".into())))
                        .ok_or_else(|| anyhow!("OTLP metrics are asked for, but no collector is set: set otlp.metrics_endpoint, otlp.endpoint, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT"))?;
                    match mwire {
                        Wire::HttpProtobuf => (format!("{}/v1/metrics", base.0.trim_end_matches('/')), base.1),
                        Wire::Grpc => base,
                    }
                }
            };
            check_endpoint(&url).map_err(|why| anyhow!("{source}: {why}"))?;
            let temporality = match pick(
                "metrics_temporality",
                &o.metrics_temporality,
                &["OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"],
            ) {
                Some((v, from)) => v.parse().map_err(|e| anyhow!("{from}: {e}"))?,
                None => Temporality::Cumulative,
            };
            let headers = match ["OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"]
                .iter()
                .find_map(|n| var(n).map(|v| (v, n)))
            {
                Some((v, from)) => parse_headers(&v).map_err(|e| anyhow!("{from}: {e}"))?,
                None => Vec::new(),
            };
            let gzip = match ["OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"]
                .iter()
                .find_map(|n| var(n).map(|v| (v, n)))
            {
                Some((v, _)) if v == "gzip" => true,
                Some((v, _)) if v == "none" => false,
                Some((v, from)) => {
                    return Err(anyhow!("{from}: `{v}` is not a compression this build has: use gzip or none"));
                }
                None => false,
            };
            Some(MetricsOptions {
                endpoint: url,
                wire: mwire,
                temporality,
                interval: o.metrics_interval,
                headers,
                gzip,
                tls: tls("METRICS")?,
            })
        } else {
            None
        };
        if traces.is_none() && metrics.is_none() {
            return Ok(None);
        }
        // The traces' URL as the exporter takes it: a signal's own variable as given, a
        // collector's address with the signal's path for HTTP.
        let traces_url = traces.map(|(e, source)| match (wire, source.as_str()) {
            (Wire::HttpProtobuf, "otlp.endpoint" | "OTEL_EXPORTER_OTLP_ENDPOINT") => {
                format!("{}/v1/traces", e.trim_end_matches('/'))
            }
            _ => e,
        });
        Ok(Some(Options {
            traces: traces_url.is_some(),
            tls: if traces_url.is_some() { tls("TRACES")? } else { Default::default() },
            endpoint: traces_url,
            wire,
            service_name: given(&o.service_name)
                .or_else(|| var("OTEL_SERVICE_NAME"))
                .unwrap_or_else(|| "eventflux".into()),
            service_version: o.service_version.clone(),
            environment: o.environment.clone(),
            queue_spans: o.queue_spans,
            batch_spans: o.batch_spans,
            interval: o.interval,
            timeout: o.timeout,
            metrics,
        }))
    }

    /// The resource of what the observer exports about itself and its targets as a whole
    /// (OTLP metrics); a trace's resource adds the process it came from.
    pub fn resource(&self) -> Vec<(&'static str, String)> {
        vec![
            ("service.name", self.service_name.clone()),
            ("service.version", self.service_version.clone()),
            ("deployment.environment", self.environment.clone()),
            ("host.name", host_name()),
            ("telemetry.sdk.name", "eventflux-probe".into()),
            ("telemetry.sdk.language", "rust".into()),
        ]
    }
}

pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
}

/// Whether `endpoint` is a URL this build can export to: `http://` or `https://` (TLS),
/// `host[:port][/path]`. Checked before anything is attached, rather than failing every
/// export afterwards. The error shows the URL with its credentials masked.
pub fn check_endpoint(endpoint: &str) -> Result<(), String> {
    let shown = crate::secrets::redact_url(endpoint);
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(format!(
            "`{shown}` is not a URL: give http://HOST:PORT or https://HOST:PORT (4317 for gRPC, 4318 for HTTP)"
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "http" | "https" => {}
        other => return Err(format!("`{shown}`: scheme `{other}` is not supported; use http:// or https://")),
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or("").rsplit('@').next().unwrap_or("");
    if host.is_empty() {
        return Err(format!("`{shown}` has no host: give http://HOST:PORT"));
    }
    Ok(())
}

/// Parses `grpc` or `http/protobuf` (the values of `OTEL_EXPORTER_OTLP_PROTOCOL`).
pub fn parse_wire(s: &str) -> Result<Wire> {
    match s {
        "grpc" => Ok(Wire::Grpc),
        "http/protobuf" => Ok(Wire::HttpProtobuf),
        other => Err(anyhow!("`{other}` is not an OTLP protocol: use grpc or http/protobuf")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> crate::config::Otlp {
        crate::config::Settings::default().otlp
    }

    fn resolve(o: crate::config::Otlp, vars: &[(&str, &str)]) -> Result<Option<Options>> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Options::resolve(&o, |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn metrics_follow_the_specification_variables() {
        let none = resolve(defaults(), &[]).expect("resolves");
        assert!(none.is_none(), "nothing asked for, nothing exported");

        // The general endpoint alone turns traces on, not metrics.
        let o = resolve(defaults(), &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]).expect("ok");
        assert!(o.as_ref().is_some_and(|o| o.traces && o.metrics.is_none()));

        // OTEL_METRICS_EXPORTER=otlp: the general endpoint, with /v1/metrics for HTTP.
        let o = resolve(
            defaults(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_METRICS_EXPORTER", "otlp"),
                ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "Delta"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%2Cb, X-Org=1"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .expect("ok")
        .and_then(|o| o.metrics)
        .expect("metrics");
        assert_eq!(o.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(o.temporality, Temporality::Delta);
        assert_eq!(o.headers, vec![("api-key".into(), "a,b".into()), ("x-org".into(), "1".into())]);
        assert!(o.gzip);

        // A metrics endpoint alone: metrics only, used as given.
        let o = resolve(defaults(), &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317")])
            .expect("ok")
            .expect("some");
        assert!(!o.traces);
        assert_eq!(o.metrics.map(|m| m.endpoint).as_deref(), Some("http://m:4317"));

        // OTEL_METRICS_EXPORTER=none wins over an endpoint.
        let o = resolve(
            defaults(),
            &[("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"), ("OTEL_METRICS_EXPORTER", "none")],
        )
        .expect("ok");
        assert!(o.is_none());
    }

    #[test]
    fn bad_values_name_where_they_came_from() {
        let err = |vars: &[(&str, &str)]| match resolve(defaults(), vars) {
            Err(e) => e.to_string(),
            Ok(o) => panic!("accepted: {o:?}"),
        };
        let e = err(&[("OTEL_METRICS_EXPORTER", "prometheus")]);
        assert!(e.starts_with("OTEL_METRICS_EXPORTER: `prometheus`"), "{e}");
        let e = err(&[("OTEL_METRICS_EXPORTER", "otlp")]);
        assert!(e.contains("no collector is set"), "{e}");
        let e = err(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
            ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "lowmemory"),
        ]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE: `lowmemory`"), "{e}");
        let e = err(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "Authorization: Bearer s3cret"),
        ]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_HEADERS: an item is not key=value"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = err(&[
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4317"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
        ]);
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_COMPRESSION: `zstd`"), "{e}");
    }
}
