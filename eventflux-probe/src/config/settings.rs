//! The table of every key (section, name, type, default, help, check) and what it generates:
//! the partial [`Layer`] a source is read into, the resolved [`Settings`] and the [`KEYS`]
//! reference.

use std::net::SocketAddr;
use std::time::Duration;

use super::buckets::Buckets;
use super::checks::*;
use super::error::ConfigError;
use super::values::Raw;
use crate::logging::{LogFormat, LogOutput};

/// Prefix of every environment variable that sets a key.
pub const ENV_PREFIX: &str = "EVENTFLUX_PROBE_";

/// Variables with [`ENV_PREFIX`] that are read elsewhere, so not taken for misspelt keys.
pub const RESERVED_ENV: &[&str] = &["EVENTFLUX_PROBE_VERIFIER_LOG", "EVENTFLUX_PROBE_CONFIG", "EVENTFLUX_PROBE_ATTACH"];

/// One key of the reference: where it lives, how the environment names it, its default (as
/// written in a config file or a variable) and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDoc {
    pub section: &'static str,
    pub key: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

/// The variable names are derived from the table rather than written in it, so a key cannot be
/// renamed without its variable; `macro_rules!` cannot change case, hence this in const.
pub(crate) const fn ascii_upper<const N: usize>(s: &str) -> [u8; N] {
    let bytes = s.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = bytes[i].to_ascii_uppercase();
        i += 1;
    }
    out
}

macro_rules! env_name {
    ($section:ident, $key:ident) => {{
        const LOWER: &str = concat!("EVENTFLUX_PROBE_", stringify!($section), "_", stringify!($key));
        const UPPER: [u8; LOWER.len()] = ascii_upper(LOWER);
        match std::str::from_utf8(&UPPER) {
            Ok(name) => name,
            Err(_) => panic!("identifiers are ASCII"),
        }
    }};
}

macro_rules! define_settings {
    ($(
        $(#[doc = $sdoc:literal])*
        [$section:ident] $Section:ident / $SectionLayer:ident {
            $( $key:ident : $ty:ty = $default:literal, $help:literal $(, check $check:ident)? ; )*
        }
    )*) => {
        /// The resolved settings: every key has a value.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $( $(#[doc = $sdoc])* pub $section: $Section, )*
        }

        $(
            $(#[doc = $sdoc])*
            #[derive(Debug, Clone, PartialEq)]
            pub struct $Section {
                $( #[doc = $help] pub $key: $ty, )*
            }

            $(#[doc = $sdoc])*
            /// `None`: not set by this layer.
            #[derive(Debug, Clone, Default, PartialEq)]
            pub struct $SectionLayer {
                $( #[doc = $help] pub $key: Option<$ty>, )*
            }
        )*

        /// The keys one source sets; a source that does not set a key leaves it `None`.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct Layer {
            $( pub $section: $SectionLayer, )*
        }

        /// The sections, in the order of the reference.
        pub const SECTIONS: &[&str] = &[$(stringify!($section)),*];

        /// Every key, in the order of the reference.
        pub const KEYS: &[KeyDoc] = &[$($(
            KeyDoc {
                section: stringify!($section),
                key: stringify!($key),
                env: env_name!($section, $key),
                default: $default,
                help: $help,
            },
        )*)*];

        impl Layer {
            /// This layer with the keys `higher` sets replaced by its values.
            pub fn merge(self, higher: Layer) -> Layer {
                Layer {
                    $( $section: $SectionLayer {
                        $( $key: higher.$section.$key.or(self.$section.$key), )*
                    }, )*
                }
            }

            /// Sets one key, read as its type and held to its check, so that a source's errors
            /// point at the value that caused them.
            pub(crate) fn set(&mut self, section: &str, key: &str, raw: Raw) -> Result<(), String> {
                $($(
                    if section == stringify!($section) && key == stringify!($key) {
                        let value: $ty = raw.read()?;
                        $( $check(&value)?; )?
                        self.$section.$key = Some(value);
                        return Ok(());
                    }
                )*)*
                Err(format!("unknown key `{section}.{key}`"))
            }

            /// The first key set to a value out of its range: section, key and why.
            pub(crate) fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
                $($($(
                    if let Some(value) = &self.$section.$key {
                        $check(value).map_err(|m| (stringify!($section), stringify!($key), m))?;
                    }
                )?)*)*
                Ok(())
            }

            pub(crate) fn into_settings(self) -> Result<Settings, ConfigError> {
                Ok(Settings {
                    $( $section: $Section {
                        $( $key: self.$section.$key.ok_or_else(|| ConfigError::Invalid {
                            key: concat!(stringify!($section), ".", stringify!($key)).into(),
                            message: "has no value".into(),
                        })?, )*
                    }, )*
                })
            }
        }
    };
}

define_settings! {
    /// How the daemon logs.
    [logging] Logging / LoggingLayer {
        level: String = "info",
            "Which logs to write: a tracing EnvFilter directive such as `info` or `eventflux_probe=debug` (`RUST_LOG`, if set, overrides it, and a `--log-level` flag overrides `RUST_LOG`)",
            check filter_directive;
        format: LogFormat = "pretty",
            "`pretty` (human-readable lines) or `json` (one JSON object per line)";
        output: LogOutput = "stderr",
            "Where logs go: `stderr`, `stdout`, or the path of a file to append to (created if missing)",
            check log_output;
    }
    /// The HTTP endpoints (/metrics, /health, /ready).
    [http] Http / HttpLayer {
        listen: SocketAddr = "127.0.0.1:9469",
            "Address of the HTTP endpoints; loopback by default, `0.0.0.0:9469` to be scraped from elsewhere";
        idle_timeout: Duration = "10s",
            "Close an HTTP connection after this long without traffic",
            check positive;
    }
    /// What the observer asks of the engine.
    [sampling] Sampling / SamplingLayer {
        rate: u32 = "1024",
            "Sampled batches per second per engine thread, at least 16; rounds down to a level: 16, 64, 256, 1024, 4096 or 16384",
            check sample_rate;
        every_batch: bool = "false",
            "Time every batch instead of sampling `rate` per second: exact, but costs the engine more";
        flush_interval: Duration = "1s",
            "How often the engine hands over its counts, at least 10ms; rounds down to a level: 10ms, 20ms, 50ms, 100ms, 250ms, 500ms, 1s or 2s (so anything longer is 2s); counters lag by at most this much",
            check flush_interval;
        cpu_hz: u32 = "99",
            "CPU samples per second on each CPU for CPU attribution (`query_cpu_seconds_total`); 0 turns it off (the engine then keeps no CPU slots). At most 10000",
            check cpu_hz;
    }
    /// What happens when the target exits or the daemon is told to stop.
    [lifecycle] Lifecycle / LifecycleLayer {
        grace_period: Duration = "60s",
            "How long the last values stay served after the target exited, before exiting (or, with `follow`, while waiting); 0 exits at once";
        follow: bool = "false",
            "After the target exited, wait for a new process of the same executable and attach to it";
        drain: Duration = "5s",
            "After SIGTERM, /ready answers 503 for this long before the daemon detaches and exits";
    }
    /// When /health reports a check degraded or failed (docs/health.md defines the checks).
    [health] Health / HealthLayer {
        window: Duration = "30s",
            "The span over which the health checks compute rates and watch the window state",
            check positive;
        max_error_ratio: f64 = "0.05",
            "Errors per event processed, over the window (judged over at least 100 events), above which `event_pipeline` is degraded (0 to 1)",
            check ratio;
        max_backpressure_per_second: f64 = "1.0",
            "Backpressure events per second, over the window, above which `event_pipeline` is degraded (at least 0)",
            check non_negative;
        stall_after: Duration = "10s",
            "Events handed to queries but none processed for this long makes `query_runtime` failed (status unhealthy, HTTP 503); sources connected but no event ingested for this long makes `event_pipeline` degraded",
            check positive;
        max_window_state_bytes: u64 = "0",
            "Window state of all queries above this many bytes makes `state_backend` degraded; 0: no cap";
        window_state_growth: f64 = "2.0",
            "Window state that never shrank through the whole window (at least three growths, from a non-empty start) and ended at least this many times its size at the window's start makes `state_backend` degraded (at least 1)",
            check growth_factor;
    }
    /// How `/metrics` shows latency histograms in the text format (docs/metrics.md).
    [metrics] Metrics / MetricsLayer {
        buckets: Buckets = "default",
            "Classic buckets of batch latency and component operations: `default` (powers of 4, 2^-20 s to 4 s: twelve), `full` (every kernel bucket, 256 ns to 16 s: 104), or bounds in seconds (`0.001,0.01,0.1`, each moved up to the nearest kernel boundary)";
        stage_buckets: Buckets = "default",
            "Classic buckets of stage latencies: `default` (powers of 32, 2^-20 s to 1 s: five), `full`, or bounds in seconds";
    }
    /// Bounds on what the daemon keeps.
    [limits] Limits / LimitsLayer {
        max_series: usize = "2000",
            "Label sets per metric before further ones are folded into one `overflow` series (at least 1)",
            check at_least_one;
    }
    /// OTLP export: the span trees of sampled batches (docs/tracing.md), on when an endpoint
    /// is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT`; the model as
    /// OTLP metrics (docs/metrics.md), on when asked for; TLS for both.
    [otlp] Otlp / OtlpLayer {
        endpoint: String = "",
            "The collector, e.g. http://127.0.0.1:4317 (gRPC) or https://collector:4318 (HTTP; /v1/traces is added); empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as given) or OTEL_EXPORTER_OTLP_ENDPOINT, else no export";
        protocol: String = "",
            "grpc or http/protobuf; empty: OTEL_EXPORTER_OTLP_PROTOCOL, else grpc",
            check otlp_protocol;
        service_name: String = "",
            "The resource's service.name; empty: OTEL_SERVICE_NAME, else eventflux";
        service_version: String = "",
            "The resource's service.version (the engine's version, as the deployment knows it)";
        environment: String = "",
            "The resource's deployment.environment (production, staging, dev)";
        queue_spans: usize = "8192",
            "Spans waiting for export at most; beyond, whole traces are dropped and counted (at least 1)",
            check at_least_one;
        batch_spans: usize = "512",
            "Spans per export request at most (at least 1)",
            check at_least_one;
        interval: Duration = "1s",
            "How often the queue is exported. More than zero",
            check positive;
        timeout: Duration = "5s",
            "An export without an answer this long fails; its spans are dropped and counted. More than zero",
            check positive;
        certificate: String = "",
            "PEM file of the CA certificates that sign the collector's (https:// endpoints); empty: OTEL_EXPORTER_OTLP_{TRACES,METRICS}_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE, else the system's roots";
        client_certificate: String = "",
            "PEM file of a client certificate for collectors that want mutual TLS (with client_key); empty: OTEL_EXPORTER_OTLP_{TRACES,METRICS}_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE";
        client_key: String = "",
            "PEM file of the client certificate's private key; empty: OTEL_EXPORTER_OTLP_{TRACES,METRICS}_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY";
        metrics: String = "",
            "OTLP metrics: `otlp` exports the model as OTLP metrics, `none` does not; empty: OTEL_METRICS_EXPORTER, else on only when a metrics endpoint is set (docs/metrics.md, OTLP metrics)",
            check otlp_metrics;
        metrics_endpoint: String = "",
            "Where OTLP metrics go, used as given (HTTP: the whole URL); empty: OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, else the traces' collector (endpoint, OTEL_EXPORTER_OTLP_ENDPOINT; HTTP: with /v1/metrics added)";
        metrics_temporality: String = "",
            "cumulative or delta; empty: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, else cumulative",
            check otlp_temporality;
        metrics_interval: Duration = "60s",
            "How often OTLP metrics are exported. More than zero",
            check positive;
    }
}

pub(crate) fn otlp_protocol(p: &str) -> Result<(), String> {
    match p {
        "" | "grpc" | "http/protobuf" => Ok(()),
        other => Err(format!("`{other}` is not an OTLP protocol (expected grpc or http/protobuf)")),
    }
}

pub(crate) fn otlp_metrics(p: &str) -> Result<(), String> {
    match p {
        "" | "otlp" | "none" => Ok(()),
        other => Err(format!("`{other}` is not a metrics exporter (expected otlp or none)")),
    }
}

pub(crate) fn otlp_temporality(p: &str) -> Result<(), String> {
    match p.to_ascii_lowercase().as_str() {
        "" | "cumulative" | "delta" => Ok(()),
        other => Err(format!("`{other}` is not a temporality (expected cumulative or delta)")),
    }
}

impl Default for Settings {
    fn default() -> Self {
        // The defaults are literals of the table above and a unit test resolves them, so this
        // fails only on a bug in the table, never on input.
        Layer::default().resolve().expect("the built-in defaults are valid")
    }
}
