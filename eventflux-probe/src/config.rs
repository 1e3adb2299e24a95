//! The daemon's settings: one model read from four layers, lowest precedence first: the
//! built-in defaults, the TOML config file (`--config FILE`), the environment
//! (`EVENTFLUX_PROBE_<SECTION>_<KEY>`) and the command-line flags.
//!
//! Every key is declared once, in the [`define_settings!`] table below; the table generates the
//! partial [`Layer`] each source is read into, the resolved [`Settings`], the [`KEYS`] reference
//! (docs/configuration.md is checked against it), the merge and the per-key checks. Errors are
//! one line naming where the value came from (file and line, or variable) and the key.
//!
//! A file is parsed into a spanned TOML document and walked against [`SECTIONS`] and [`KEYS`]
//! here, each value read on its own: every message is this module's, written from the type the
//! key expects and the type the TOML value has, never derived from another library's wording.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use eventflux_abi::{FLUSH_LEVELS, SAMPLE_LEVELS};
use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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
const fn ascii_upper<const N: usize>(s: &str) -> [u8; N] {
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
            fn set(&mut self, section: &str, key: &str, raw: Raw) -> Result<(), String> {
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
            fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
                $($($(
                    if let Some(value) = &self.$section.$key {
                        $check(value).map_err(|m| (stringify!($section), stringify!($key), m))?;
                    }
                )?)*)*
                Ok(())
            }

            fn into_settings(self) -> Result<Settings, ConfigError> {
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
    /// Bounds on what the daemon keeps.
    [limits] Limits / LimitsLayer {
        max_series: usize = "2000",
            "Label sets per metric before further ones are folded into one `overflow` series (at least 1)",
            check at_least_one;
    }
    /// OTLP export of the span trees of sampled batches (docs/tracing.md). Off unless an
    /// endpoint is set here or in `OTEL_EXPORTER_OTLP_ENDPOINT` / `..._TRACES_ENDPOINT`.
    [otlp] Otlp / OtlpLayer {
        endpoint: String = "",
            "The collector, e.g. http://127.0.0.1:4317 (gRPC) or http://127.0.0.1:4318 (HTTP; /v1/traces is added); empty: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT, else no export";
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
    }
}

fn otlp_protocol(p: &str) -> Result<(), String> {
    match p {
        "" | "grpc" | "http/protobuf" => Ok(()),
        other => Err(format!("`{other}` is not an OTLP protocol (expected grpc or http/protobuf)")),
    }
}

impl Default for Settings {
    fn default() -> Self {
        // The defaults are literals of the table above and a unit test resolves them, so this
        // fails only on a bug in the table, never on input.
        Layer::default().resolve().expect("the built-in defaults are valid")
    }
}

/// `pretty` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not a log format (expected pretty or json)")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        })
    }
}

/// Where logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stderr,
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

/// Every text names an output; an empty path is left to the `logging.output` check, so that a
/// flag's value is held to it as well as the file's.
impl From<&str> for LogOutput {
    fn from(s: &str) -> Self {
        match s {
            "stderr" => LogOutput::Stderr,
            "stdout" => LogOutput::Stdout,
            path => LogOutput::File(PathBuf::from(path)),
        }
    }
}

impl FromStr for LogOutput {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let output = LogOutput::from(s);
        log_output(&output)?;
        Ok(output)
    }
}

impl fmt::Display for LogOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogOutput::Stderr => f.write_str("stderr"),
            LogOutput::Stdout => f.write_str("stdout"),
            LogOutput::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A configuration that cannot be used. Its Display is one line naming the source (file and
/// line, or variable), the key as `section.key`, and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {}", .path.display(), io_reason(.error))]
    Read { path: PathBuf, error: io::Error },
    /// Not a regular file, or too large for one.
    #[error("config file {0}")]
    Input(crate::input::InputError),
    #[error("config file {origin}{}: {}{message}", line_part(.line), key_part(.key))]
    File { origin: String, line: Option<usize>, key: Option<String>, message: String },
    #[error("environment variable {var}: {}{message}", key_part(.key))]
    Env { var: String, key: Option<String>, message: String },
    /// A value of no file or variable (a flag, or code) out of range.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// Why a file could not be read or opened, in a few words chosen by the error's kind; a kind
/// without words of ours keeps the error's own Display, unedited.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        io::ErrorKind::IsADirectory => "is a directory".into(),
        _ => e.to_string(),
    }
}

fn line_part(line: &Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

fn key_part(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

impl Layer {
    /// Reads a TOML config file.
    pub fn from_file(path: &Path) -> Result<Layer, ConfigError> {
        let bytes =
            crate::input::read_regular(path, Some(MAX_CONFIG_BYTES), "configuration file").map_err(|e| match e {
                crate::input::InputError::Io { path, error } => ConfigError::Read { path, error },
                other => ConfigError::Input(other),
            })?;
        let origin = path.display().to_string();
        // Read as bytes so that text which is not UTF-8 is reported at its line, which the
        // conversion's typed error gives, rather than as an I/O error of no line.
        let text = String::from_utf8(bytes).map_err(|e| {
            let valid = e.utf8_error().valid_up_to();
            let line = e.as_bytes()[..valid].iter().filter(|&&b| b == b'\n').count() + 1;
            ConfigError::File { origin: origin.clone(), line: Some(line), key: None, message: "not UTF-8 text".into() }
        })?;
        Layer::from_toml(&text, &origin)
    }

    /// Parses a TOML config; `origin` names it in errors (the file's path).
    ///
    /// The text is parsed into a document whose keys and values carry their spans, then walked
    /// here: an unknown section or key is reported at the key, a value of the wrong type or out
    /// of range at the value, each with this module's words.
    pub fn from_toml(text: &str, origin: &str) -> Result<Layer, ConfigError> {
        let error = |at: &Range<usize>, key: Option<String>, message: String| ConfigError::File {
            origin: origin.to_owned(),
            line: Some(line_of(text, at.start)),
            key,
            message: one_line(&message),
        };
        // A syntax error has no key of ours to name: toml's own message is shown, kept to one line.
        let document = DeTable::parse(text).map_err(|e| ConfigError::File {
            origin: origin.to_owned(),
            line: e.span().map(|s| line_of(text, s.start)),
            key: None,
            message: one_line(&format!("invalid TOML: {}", e.message())),
        })?;
        let mut layer = Layer::default();
        for (name, value) in in_source_order(document.into_inner()) {
            let Some(&section) = SECTIONS.iter().find(|s| **s == name.get_ref().as_ref()) else {
                let message = format!("unknown key `{}` (known sections: {})", name.get_ref(), SECTIONS.join(", "));
                return Err(error(&name.span(), None, message));
            };
            let at = value.span();
            let table = match value.into_inner() {
                DeValue::Table(table) => table,
                other => {
                    let message = format!("expected a table, found {}", de_kind(&other));
                    return Err(error(&at, Some(section.to_owned()), message));
                }
            };
            for (name, value) in in_source_order(table) {
                let Some(k) = KEYS.iter().find(|k| k.section == section && k.key == name.get_ref().as_ref()) else {
                    let known: Vec<&str> = KEYS.iter().filter(|k| k.section == section).map(|k| k.key).collect();
                    let message = format!(
                        "unknown key `{section}.{}` (known keys in [{section}]: {})",
                        name.get_ref(),
                        known.join(", ")
                    );
                    return Err(error(&name.span(), None, message));
                };
                let at = value.span();
                plain(value.get_ref())
                    .and_then(|value| layer.set(section, k.key, Raw::Value(value)))
                    .map_err(|message| error(&at, Some(format!("{section}.{}", k.key)), message))?;
            }
        }
        Ok(layer)
    }

    /// Reads the keys' variables through `vars` (e.g. `|name| std::env::var(name).ok()`). An
    /// empty value counts as unset, so `EVENTFLUX_PROBE_HTTP_LISTEN= cmd` falls back to the
    /// file. Misspelt names are caught by [`check_env_names`], which needs the names listed.
    pub fn from_env(vars: impl Fn(&str) -> Option<String>) -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        for k in KEYS {
            let Some(raw) = vars(k.env).filter(|v| !v.is_empty()) else { continue };
            layer.set(k.section, k.key, Raw::Text(&raw)).map_err(|message| ConfigError::Env {
                var: k.env.to_owned(),
                key: Some(format!("{}.{}", k.section, k.key)),
                message: one_line(&message),
            })?;
        }
        Ok(layer)
    }

    /// The settings: this layer over the built-in defaults, every value checked.
    pub fn resolve(self) -> Result<Settings, ConfigError> {
        let layer = Layer::builtin()?.merge(self);
        layer
            .check()
            .map_err(|(section, key, message)| ConfigError::Invalid { key: format!("{section}.{key}"), message })?;
        layer.into_settings()
    }

    /// Every key at its default.
    fn builtin() -> Result<Layer, ConfigError> {
        let mut layer = Layer::default();
        for k in KEYS {
            layer.set(k.section, k.key, Raw::Text(k.default)).map_err(|message| ConfigError::Invalid {
                key: format!("{}.{}", k.section, k.key),
                message: format!("built-in default `{}`: {message}", k.default),
            })?;
        }
        Ok(layer)
    }
}

/// The settings from the defaults, then the file (if any), then the environment read through
/// `env`, then `flags`.
///
/// A lookup cannot list names, so misspelt variables are looked for among the process
/// environment's names that `env` also knows: in production `env` reads the process
/// environment and every name is checked; a test's own `env` is not disturbed by the
/// variables of the process running it.
pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>, flags: Layer) -> Result<Settings, ConfigError> {
    let file_layer = match file {
        Some(path) => Layer::from_file(path)?,
        None => Layer::default(),
    };
    // A value that is not UTF-8 would read as unset through `env`: refused instead.
    for (name, value) in std::env::vars_os() {
        if let (Ok(name), None) = (name.into_string(), value.to_str())
            && name.starts_with(ENV_PREFIX)
        {
            return Err(ConfigError::Env { var: name, key: None, message: "its value is not UTF-8 text".into() });
        }
    }
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| env(name).is_some())
        .collect();
    check_env_names(&names)?;
    let env_layer = Layer::from_env(&env)?;
    file_layer.merge(env_layer).merge(flags).resolve()
}

/// Fails on the first name with [`ENV_PREFIX`] that is no key's variable nor reserved
/// ([`RESERVED_ENV`]): a misspelt variable would otherwise be ignored without a word.
pub fn check_env_names<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<(), ConfigError> {
    for name in names {
        let name = name.as_ref();
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else { continue };
        if RESERVED_ENV.contains(&name) || KEYS.iter().any(|k| k.env == name) {
            continue;
        }
        // A known section narrows the list to its own keys.
        let in_section: Vec<&str> = KEYS
            .iter()
            .filter(|k| rest.strip_prefix(k.section.to_ascii_uppercase().as_str()).is_some_and(|r| r.starts_with('_')))
            .map(|k| k.env)
            .collect();
        let known = if in_section.is_empty() { KEYS.iter().map(|k| k.env).collect() } else { in_section };
        return Err(ConfigError::Env {
            var: name.to_owned(),
            key: None,
            message: format!("not a setting (known: {})", known.join(", ")),
        });
    }
    Ok(())
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a plain number of seconds; fractions such as `1.5s`
/// too. Zero is a duration (whether a key accepts it is that key's check).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let not_a_duration = || format!("`{s}` is not a duration (try 10s, 500ms, 2m)");
    let trimmed = s.trim();
    let split = trimmed.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(trimmed.len());
    let (num, unit) = trimmed.split_at(split);
    let num = num.trim_end();
    // Digits and one point only: f64's parser would also take `inf`, `NaN`, `1e3` and signs.
    if num.is_empty()
        || num == "."
        || !num.chars().all(|c| c.is_ascii_digit() || c == '.')
        || num.matches('.').count() > 1
    {
        return Err(not_a_duration());
    }
    let (millis, secs) = match unit {
        "ms" => (1, 0),
        "" | "s" => (0, 1),
        "m" => (0, 60),
        "h" => (0, 3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    let too_long = || format!("`{s}` is too long a duration");
    // Whole numbers exactly; a fraction through f64.
    if let Ok(n) = num.parse::<u64>() {
        return if millis == 1 {
            Ok(Duration::from_millis(n))
        } else {
            n.checked_mul(secs).map(Duration::from_secs).ok_or_else(too_long)
        };
    }
    let v: f64 = num.parse().map_err(|_| not_a_duration())?;
    let secs = if millis == 1 { v / 1000.0 } else { v * secs as f64 };
    Duration::try_from_secs_f64(secs).map_err(|_| too_long())
}

/// How a key's value is read from TOML; the messages are the user's, so they say what was
/// expected in the config's own terms rather than Rust's.
trait ConfigValue: Sized {
    fn from_toml(value: toml::Value) -> Result<Self, String>;
}

/// A key's value as a source gives it, before it is read as the key's type.
enum Raw<'a> {
    /// From a config file.
    Value(toml::Value),
    /// From the environment (or a built-in default): see [`from_text`].
    Text(&'a str),
}

impl Raw<'_> {
    fn read<T: ConfigValue>(self) -> Result<T, String> {
        match self {
            Raw::Value(value) => T::from_toml(value),
            Raw::Text(text) => from_text(text),
        }
    }
}

/// A value written as the environment gives it: a TOML value when it is one (`64`, `true`,
/// `0.5`, `"quoted"`), a string otherwise (`0.0.0.0:9469`, `info`). A string key whose text
/// happens to read as another type (`level = 1`) gets the text.
fn from_text<T: ConfigValue>(raw: &str) -> Result<T, String> {
    let as_string = || T::from_toml(toml::Value::String(raw.to_owned()));
    match raw.parse::<toml::Value>() {
        Ok(value) => T::from_toml(value).or_else(|e| as_string().map_err(|_| e)),
        Err(_) => as_string(),
    }
}

/// A parsed document's value as a plain [`toml::Value`], the type every key is read from. The
/// parser has checked the syntax; what is left to fail is a number too large for its type.
fn plain(value: &DeValue<'_>) -> Result<toml::Value, String> {
    Ok(match value {
        DeValue::String(s) => toml::Value::String(s.to_string()),
        DeValue::Integer(i) => {
            let n = i64::from_str_radix(i.as_str(), i.radix()).map_err(|e| match e.kind() {
                std::num::IntErrorKind::NegOverflow => format!("{i} is too small (at least {})", i64::MIN),
                _ => format!("{i} is too large (at most {})", i64::MAX),
            })?;
            toml::Value::Integer(n)
        }
        DeValue::Float(f) => {
            let x: f64 = f.as_str().parse().map_err(|_| format!("{f} is not a number"))?;
            // An infinity written as `inf` is a value (which the keys' checks reject); one that
            // came out of a finite literal such as `1e999` is an overflow.
            if x.is_infinite() && !f.as_str().contains("inf") {
                return Err(format!("{f} is too large a number"));
            }
            toml::Value::Float(x)
        }
        DeValue::Boolean(b) => toml::Value::Boolean(*b),
        DeValue::Datetime(d) => toml::Value::Datetime(*d),
        DeValue::Array(items) => {
            toml::Value::Array(items.iter().map(|v| plain(v.get_ref())).collect::<Result<_, _>>()?)
        }
        DeValue::Table(table) => toml::Value::Table(
            table
                .iter()
                .map(|(k, v)| plain(v.get_ref()).map(|v| (k.get_ref().to_string(), v)))
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// A table's entries in the order they are written, so that of several errors the first in the
/// file is reported (the parser's map keeps them sorted by name).
fn in_source_order<'i>(table: DeTable<'i>) -> Vec<(Spanned<std::borrow::Cow<'i, str>>, Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

fn de_kind(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

impl ConfigValue for String {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => Ok(s),
            other => Err(format!("expected a string, found {}", kind(&other))),
        }
    }
}

impl ConfigValue for bool {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Boolean(b) => Ok(b),
            other => Err(format!("expected true or false, found {}", kind(&other))),
        }
    }
}

macro_rules! unsigned_value {
    ($($t:ty),*) => {$(
        impl ConfigValue for $t {
            fn from_toml(value: toml::Value) -> Result<Self, String> {
                match value {
                    toml::Value::Integer(i) if i < 0 => Err(format!("expected a non-negative integer, found {i}")),
                    toml::Value::Integer(i) => {
                        <$t>::try_from(i).map_err(|_| format!("{i} is too large (at most {})", <$t>::MAX))
                    }
                    other => Err(format!("expected an integer, found {}", kind(&other))),
                }
            }
        }
    )*};
}
unsigned_value!(u32, u64, usize);

impl ConfigValue for f64 {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::Float(f) => Ok(f),
            // Precision only suffers beyond 2^53, far past any threshold.
            toml::Value::Integer(i) => Ok(i as f64),
            other => Err(format!("expected a number, found {}", kind(&other))),
        }
    }
}

impl ConfigValue for Duration {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => parse_duration(&s),
            toml::Value::Integer(i) => u64::try_from(i)
                .map(Duration::from_secs)
                .map_err(|_| format!("`{i}` is not a duration (a duration cannot be negative)")),
            toml::Value::Float(f) => {
                Duration::try_from_secs_f64(f).map_err(|_| format!("`{f}` is not a duration (try 10s, 500ms, 2m)"))
            }
            other => Err(format!("expected a duration such as \"10s\", found {}", kind(&other))),
        }
    }
}

impl ConfigValue for SocketAddr {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => s
                .parse()
                .map_err(|_| format!("`{s}` is not a socket address (expected e.g. 127.0.0.1:9469 or 0.0.0.0:9469)")),
            other => Err(format!("expected a socket address such as \"127.0.0.1:9469\", found {}", kind(&other))),
        }
    }
}

impl ConfigValue for LogFormat {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => s.parse(),
            other => Err(format!("expected \"pretty\" or \"json\", found {}", kind(&other))),
        }
    }
}

impl ConfigValue for LogOutput {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => s.parse(),
            other => Err(format!("expected \"stderr\", \"stdout\" or a file path, found {}", kind(&other))),
        }
    }
}

// The checks of the table's `check` column.

fn filter_directive(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("is empty (expected e.g. info or eventflux_probe=debug)".into());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| format!("`{level}` is not a log filter ({e}); expected e.g. info or eventflux_probe=debug"))
}

fn log_output(output: &LogOutput) -> Result<(), String> {
    match output {
        LogOutput::File(path) if path.as_os_str().is_empty() => {
            Err("is an empty path (expected stderr, stdout or a file path)".into())
        }
        _ => Ok(()),
    }
}

fn positive(d: &Duration) -> Result<(), String> {
    if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(()) }
}

fn at_least_one<T: PartialOrd + From<u8>>(n: &T) -> Result<(), String> {
    if *n < T::from(1) { Err("must be at least 1".into()) } else { Ok(()) }
}

/// The engine's lowest sampling level (batches per second; 0 is the every-batch level).
fn lowest_sample_level() -> u32 {
    SAMPLE_LEVELS.iter().map(|&(_, rate)| rate).filter(|&rate| rate != 0).min().unwrap_or(1)
}

/// The engine's shortest flush level, in milliseconds.
fn shortest_flush_level() -> u32 {
    FLUSH_LEVELS.iter().map(|&(_, ms)| ms).min().unwrap_or(1)
}

/// A rate below every level is one `Budget::new` refuses; higher ones round down to a level.
fn sample_rate(rate: &u32) -> Result<(), String> {
    let lowest = lowest_sample_level();
    if *rate < lowest { Err(format!("{rate} is below the lowest level, {lowest}")) } else { Ok(()) }
}

/// An interval shorter than every level is one `Budget::new` refuses (it compares whole
/// milliseconds); longer ones round down to a level, the longest being 2s.
fn flush_interval(d: &Duration) -> Result<(), String> {
    let shortest = shortest_flush_level();
    if d.as_millis() >= u128::from(shortest) {
        return Ok(());
    }
    // Duration's Debug writes zero as `0ns`, an odd way to write what the user wrote as `0s`.
    let written = if d.is_zero() { "0s".to_owned() } else { format!("{d:?}") };
    Err(format!("{written} is below the shortest level, {shortest}ms"))
}

fn cpu_hz(hz: &u32) -> Result<(), String> {
    if *hz <= crate::budget::MAX_CPU_HZ {
        Ok(())
    } else {
        Err(format!("{hz} is above {} samples per second", crate::budget::MAX_CPU_HZ))
    }
}

fn ratio(r: &f64) -> Result<(), String> {
    if (0.0..=1.0).contains(r) { Ok(()) } else { Err(format!("must be between 0 and 1, found {r}")) }
}

fn non_negative(r: &f64) -> Result<(), String> {
    if r.is_finite() && *r >= 0.0 { Ok(()) } else { Err(format!("must be a finite number of at least 0, found {r}")) }
}

fn growth_factor(r: &f64) -> Result<(), String> {
    // A state that never shrank ends at least at its starting size: below 1, every such state,
    // however steady, would count as grown.
    if r.is_finite() && *r >= 1.0 { Ok(()) } else { Err(format!("must be a finite factor of at least 1, found {r}")) }
}

/// A message kept to one line whatever it quotes.
fn one_line(message: &str) -> String {
    let line = message.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
    shorten_quoted(&line)
}

/// A value quoted in a message (between backticks) is shown up to this many characters.
const QUOTED_CHARS: usize = 64;

/// The configuration file is refused past this size: a real one is a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// `message` with each backtick-quoted value longer than [`QUOTED_CHARS`] cut, saying how much
/// was left out: a 50 MB value is named, not echoed.
fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        let quoted = i % 2 == 0;
        let chars = part.chars().count();
        if quoted && chars > QUOTED_CHARS {
            out.extend(part.chars().take(QUOTED_CHARS));
            out.push_str(&format!("… ({} more characters)", chars - QUOTED_CHARS));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// 1-based line of byte `pos`.
fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |name| map.get(name).cloned()
    }

    fn file_err(text: &str) -> String {
        match Layer::from_toml(text, "x.toml") {
            Ok(layer) => panic!("expected an error for {text:?}, got {layer:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn env_err(pairs: &[(&str, &str)]) -> String {
        match Layer::from_env(env_of(pairs)) {
            Ok(layer) => panic!("expected an error for {pairs:?}, got {layer:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_one_line(message: &str) {
        assert!(!message.contains('\n') && !message.contains('\r'), "not one line: {message:?}");
    }

    #[test]
    fn defaults() {
        let s = Settings::default();
        assert_eq!(s.logging.level, "info");
        assert_eq!(s.logging.format, LogFormat::Pretty);
        assert_eq!(s.logging.output, LogOutput::Stderr);
        assert_eq!(s.http.listen, "127.0.0.1:9469".parse::<SocketAddr>().unwrap());
        assert_eq!(s.http.idle_timeout, Duration::from_secs(10));
        assert_eq!(s.sampling.rate, 1024);
        assert!(!s.sampling.every_batch);
        assert_eq!(s.sampling.flush_interval, Duration::from_secs(1));
        assert_eq!(s.lifecycle.grace_period, Duration::from_secs(60));
        assert!(!s.lifecycle.follow);
        assert_eq!(s.lifecycle.drain, Duration::from_secs(5));
        assert_eq!(s.health.window, Duration::from_secs(30));
        assert_eq!(s.health.max_error_ratio, 0.05);
        assert_eq!(s.health.max_backpressure_per_second, 1.0);
        assert_eq!(s.health.stall_after, Duration::from_secs(10));
        assert_eq!(s.health.max_window_state_bytes, 0);
        assert_eq!(s.health.window_state_growth, 2.0);
        assert_eq!(s.limits.max_series, 2000);
        assert_eq!(load(None, no_env, Layer::default()).unwrap(), s);
        assert_eq!(Layer::from_toml("", "empty.toml").unwrap(), Layer::default());
    }

    #[test]
    fn env_names_are_derived_from_the_keys() {
        let listen = KEYS.iter().find(|k| k.section == "http" && k.key == "listen").unwrap();
        assert_eq!(listen.env, "EVENTFLUX_PROBE_HTTP_LISTEN");
        for k in KEYS {
            assert_eq!(k.env, format!("{ENV_PREFIX}{}_{}", k.section, k.key).to_ascii_uppercase());
        }
        let ratio = KEYS.iter().find(|k| k.key == "max_error_ratio").unwrap();
        assert_eq!(ratio.env, "EVENTFLUX_PROBE_HEALTH_MAX_ERROR_RATIO");
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("eventflux-probe-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("eventflux-probe.toml");
        std::fs::write(&path, "[http]\nlisten = \"0.0.0.0:1000\"\n[sampling]\nrate = 16\n[limits]\nmax_series = 5\n")
            .unwrap();
        let env = env_of(&[("EVENTFLUX_PROBE_SAMPLING_RATE", "64"), ("EVENTFLUX_PROBE_LIMITS_MAX_SERIES", "6")]);
        let mut flags = Layer::default();
        flags.limits.max_series = Some(7);

        let s = load(Some(&path), &env, flags.clone()).unwrap();
        assert_eq!(s.http.listen, "0.0.0.0:1000".parse::<SocketAddr>().unwrap(), "file over default");
        assert_eq!(s.sampling.rate, 64, "env over file");
        assert_eq!(s.limits.max_series, 7, "flag over env");
        assert_eq!(s.http.idle_timeout, Duration::from_secs(10), "default where nothing is set");

        let s = load(Some(&path), &env, Layer::default()).unwrap();
        assert_eq!(s.limits.max_series, 6);
        let s = load(Some(&path), no_env, Layer::default()).unwrap();
        assert_eq!((s.sampling.rate, s.limits.max_series), (16, 5));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn env_values_read_as_toml_or_text() {
        let layer = Layer::from_env(env_of(&[
            ("EVENTFLUX_PROBE_HTTP_LISTEN", "0.0.0.0:9469"),
            ("EVENTFLUX_PROBE_SAMPLING_RATE", "64"),
            ("EVENTFLUX_PROBE_SAMPLING_EVERY_BATCH", "true"),
            ("EVENTFLUX_PROBE_HTTP_IDLE_TIMEOUT", "500ms"),
            ("EVENTFLUX_PROBE_LIFECYCLE_DRAIN", "3"),
            ("EVENTFLUX_PROBE_HEALTH_MAX_ERROR_RATIO", "0.5"),
            ("EVENTFLUX_PROBE_LOGGING_FORMAT", "json"),
            ("EVENTFLUX_PROBE_LOGGING_LEVEL", "eventflux_probe=debug"),
            ("EVENTFLUX_PROBE_LOGGING_OUTPUT", "/var/log/probe.log"),
            ("EVENTFLUX_PROBE_LIMITS_MAX_SERIES", ""),
        ]))
        .unwrap();
        let s = layer.resolve().unwrap();
        assert_eq!(s.http.listen, "0.0.0.0:9469".parse::<SocketAddr>().unwrap());
        assert_eq!(s.sampling.rate, 64);
        assert!(s.sampling.every_batch);
        assert_eq!(s.http.idle_timeout, Duration::from_millis(500));
        assert_eq!(s.lifecycle.drain, Duration::from_secs(3));
        assert_eq!(s.health.max_error_ratio, 0.5);
        assert_eq!(s.logging.format, LogFormat::Json);
        assert_eq!(s.logging.level, "eventflux_probe=debug");
        assert_eq!(s.logging.output, LogOutput::File(PathBuf::from("/var/log/probe.log")));
        assert_eq!(s.limits.max_series, 2000, "an empty variable is unset");
    }

    #[test]
    fn a_whole_file() {
        let text = r#"
# comments are fine; dotted keys and inline tables before the first header
health.window = "2m"
limits = { max_series = 10 }

[logging]
level = "warn,eventflux_probe=debug"
format = "json"
output = "stdout"

[http]
listen = "[::1]:9000"
idle_timeout = 2.5

[lifecycle]
grace_period = "0s"
follow = true
"#;
        let s = Layer::from_toml(text, "x.toml").unwrap().resolve().unwrap();
        assert_eq!(s.logging.format, LogFormat::Json);
        assert_eq!(s.logging.output, LogOutput::Stdout);
        assert_eq!(s.http.listen, "[::1]:9000".parse::<SocketAddr>().unwrap());
        assert_eq!(s.http.idle_timeout, Duration::from_millis(2500));
        assert_eq!(s.lifecycle.grace_period, Duration::ZERO);
        assert!(s.lifecycle.follow);
        assert_eq!(s.health.window, Duration::from_secs(120));
        assert_eq!(s.limits.max_series, 10);
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let m = file_err("[http]\nlisten = \"127.0.0.1:1\"\n\n\n\n\n[helth]\nwindow = \"1s\"\n");
        assert_one_line(&m);
        assert_eq!(
            m,
            "config file x.toml, line 7: unknown key `helth` (known sections: logging, http, sampling, lifecycle, health, limits, otlp)"
        );
        let m = file_err("[http]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert_one_line(&m);
        assert_eq!(
            m,
            "config file x.toml, line 3: unknown key `http.lisen` (known keys in [http]: listen, idle_timeout)"
        );
        let m = file_err("[limits]\nmax_seris = 3\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: unknown key `limits.max_seris` (known keys in [limits]: max_series)"
        );
        let m = file_err("http.lisen = 3\n");
        assert!(m.starts_with("config file x.toml, line 1: unknown key `http.lisen`"), "{m}");
    }

    #[test]
    fn wrong_types_name_key_and_line() {
        let m = file_err("# limits\n[limits]\nmax_series = \"many\"\n");
        assert_eq!(m, "config file x.toml, line 3: limits.max_series: expected an integer, found a string");
        let m = file_err("[sampling]\nevery_batch = \"yes\"\n");
        assert_eq!(m, "config file x.toml, line 2: sampling.every_batch: expected true or false, found a string");
        let m = file_err("[sampling]\nrate = -5\n");
        assert_eq!(m, "config file x.toml, line 2: sampling.rate: expected a non-negative integer, found -5");
        let m = file_err("[logging]\nformat = \"xml\"\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: logging.format: `xml` is not a log format (expected pretty or json)"
        );
        let m = file_err("http = 5\n");
        assert_eq!(m, "config file x.toml, line 1: http: expected a table, found an integer");
        let m = file_err("[http.listen]\n");
        assert_eq!(
            m,
            "config file x.toml, line 1: http.listen: expected a socket address such as \"127.0.0.1:9469\", found a table"
        );
        let m = file_err("limits = { max_series = true }\n");
        assert_eq!(m, "config file x.toml, line 1: limits.max_series: expected an integer, found a boolean");
        for m in [m, file_err("[health]\nmax_error_ratio = \"high\"\n")] {
            assert_one_line(&m);
        }
    }

    #[test]
    fn bad_addresses_and_durations() {
        let m = file_err("\n\n[http]\nlisten = \"127.0.0.1:99999\"\n");
        assert_one_line(&m);
        assert_eq!(
            m,
            "config file x.toml, line 4: http.listen: `127.0.0.1:99999` is not a socket address (expected e.g. 127.0.0.1:9469 or 0.0.0.0:9469)"
        );
        let m = file_err("[lifecycle]\ndrain = \"5 parsecs\"\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: lifecycle.drain: `5 parsecs`: unknown unit `parsecs` (use ms, s, m or h)"
        );
        let m = file_err("[lifecycle]\ndrain = \"soon\"\n");
        assert_eq!(m, "config file x.toml, line 2: lifecycle.drain: `soon` is not a duration (try 10s, 500ms, 2m)");
        let m = file_err("[lifecycle]\ndrain = -1\n");
        assert!(m.starts_with("config file x.toml, line 2: lifecycle.drain: `-1` is not a duration"), "{m}");
    }

    #[test]
    fn out_of_range_values_name_key_and_line() {
        let m = file_err("[limits]\n\nmax_series = 0\n");
        assert_eq!(m, "config file x.toml, line 3: limits.max_series: must be at least 1");
        let m = file_err("[health]\nmax_error_ratio = 1.5\n");
        assert_eq!(m, "config file x.toml, line 2: health.max_error_ratio: must be between 0 and 1, found 1.5");
        let m = file_err("[health]\nmax_backpressure_per_second = nan\n");
        assert!(
            m.starts_with("config file x.toml, line 2: health.max_backpressure_per_second: must be a finite"),
            "{m}"
        );
        let m = file_err("[sampling]\nrate = 0\n");
        assert_eq!(m, "config file x.toml, line 2: sampling.rate: 0 is below the lowest level, 16");
        let m = file_err("[http]\nidle_timeout = \"0s\"\n");
        assert_eq!(m, "config file x.toml, line 2: http.idle_timeout: must be longer than zero");
        let m = file_err("limits = { max_series = 0 }\n");
        assert_eq!(m, "config file x.toml, line 1: limits.max_series: must be at least 1");
        let m = file_err("[logging]\nlevel = \"info,eventflux_probe=loud\"\n");
        assert_one_line(&m);
        assert!(
            m.starts_with("config file x.toml, line 2: logging.level: `info,eventflux_probe=loud` is not a log filter"),
            "{m}"
        );

        let mut flags = Layer::default();
        flags.logging.output = Some(LogOutput::from(""));
        let e = flags.resolve().unwrap_err();
        assert_eq!(e.to_string(), "logging.output: is an empty path (expected stderr, stdout or a file path)");
        let m = file_err("[logging]\noutput = \"\"\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: logging.output: is an empty path (expected stderr, stdout or a file path)"
        );

        let mut flags = Layer::default();
        flags.limits.max_series = Some(0);
        let e = load(None, no_env, flags).unwrap_err();
        assert_eq!(e.to_string(), "limits.max_series: must be at least 1");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let m = file_err("[http]\nlisten = \"127.0.0.1:1\"\nidle_timeout = \n");
        assert_one_line(&m);
        assert!(m.starts_with("config file x.toml, line 3: invalid TOML: "), "{m}");
        let m = file_err("[http\n");
        assert_one_line(&m);
        assert!(m.starts_with("config file x.toml, line 1: invalid TOML: "), "{m}");
        let m = file_err("[http]\nlisten = \"a\"\nlisten = \"b\"\n");
        assert_one_line(&m);
        assert!(m.starts_with("config file x.toml, line 3: invalid TOML: "), "{m}");
    }

    #[test]
    fn missing_file() {
        let e = Layer::from_file(Path::new("/nonexistent/eventflux-probe.toml")).unwrap_err();
        assert_eq!(e.to_string(), "cannot read config file /nonexistent/eventflux-probe.toml: no such file");
        let dir = std::env::temp_dir().join(format!("eventflux-probe-config-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Layer::from_file(&dir).unwrap_err().to_string();
        assert_eq!(e, format!("config file {} is a directory: give a file", dir.display()));
        let path = dir.join("latin1.toml");
        std::fs::write(&path, b"[http]\n# caf\xe9\n").unwrap();
        let e = Layer::from_file(&path).unwrap_err().to_string();
        assert_eq!(e, format!("config file {}, line 2: not UTF-8 text", path.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sampling_holds_to_the_engines_levels() {
        let m = file_err("[sampling]\nrate = 8\n");
        assert_eq!(m, "config file x.toml, line 2: sampling.rate: 8 is below the lowest level, 16");
        let m = file_err("[sampling]\n\nflush_interval = \"5ms\"\n");
        assert_eq!(m, "config file x.toml, line 3: sampling.flush_interval: 5ms is below the shortest level, 10ms");
        let m = file_err("[sampling]\nflush_interval = 0\n");
        assert_eq!(m, "config file x.toml, line 2: sampling.flush_interval: 0s is below the shortest level, 10ms");
        let m = env_err(&[("EVENTFLUX_PROBE_SAMPLING_RATE", "15")]);
        assert_eq!(
            m,
            "environment variable EVENTFLUX_PROBE_SAMPLING_RATE: sampling.rate: 15 is below the lowest level, 16"
        );
        let mut flags = Layer::default();
        flags.sampling.flush_interval = Some(Duration::from_micros(9_999));
        let e = load(None, no_env, flags).unwrap_err().to_string();
        assert_eq!(e, "sampling.flush_interval: 9.999ms is below the shortest level, 10ms");

        let s = Layer::from_toml("[sampling]\nrate = 16\nflush_interval = \"10ms\"\n", "x.toml").unwrap();
        let s = s.resolve().unwrap();
        assert_eq!((s.sampling.rate, s.sampling.flush_interval), (16, Duration::from_millis(10)));
        let s = Layer::from_toml("[sampling]\nrate = 100000\nflush_interval = \"1h\"\n", "x.toml").unwrap();
        s.resolve().unwrap();

        // Exactly what the budget built from these settings accepts.
        let flush = Duration::from_secs(1);
        for rate in (0..=20_000).chain([u32::MAX]) {
            let budget = crate::budget::Budget::new(Some(rate), flush).is_ok();
            assert_eq!(sample_rate(&rate).is_ok(), budget, "rate {rate}");
        }
        for micros in (0..=3_000_000).step_by(250) {
            let d = Duration::from_micros(micros);
            let budget = crate::budget::Budget::new(Some(1024), d).is_ok();
            assert_eq!(flush_interval(&d).is_ok(), budget, "flush interval {d:?}");
        }
    }

    #[test]
    fn odd_but_valid_documents() {
        // Several errors: the first in the file is reported, whatever the order of the names.
        let m = file_err("[http]\nzz = 1\naa = 2\n");
        assert!(m.starts_with("config file x.toml, line 2: unknown key `http.zz`"), "{m}");
        let m = file_err("[sampling]\nrate = 99999999999999999999\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: sampling.rate: 99999999999999999999 is too large (at most 9223372036854775807)"
        );
        let m = file_err("[health]\nmax_error_ratio = 1e999\n");
        assert_eq!(m, "config file x.toml, line 2: health.max_error_ratio: 1e999 is too large a number");
        let m = file_err("[[http]]\nlisten = \"127.0.0.1:1\"\n");
        assert_eq!(m, "config file x.toml, line 1: http: expected a table, found an array");
        let m = file_err("[http]\nlisten = [\"127.0.0.1:1\"]\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: http.listen: expected a socket address such as \"127.0.0.1:9469\", found an array"
        );
        let m = file_err("[lifecycle]\ndrain = 1979-05-27\n");
        assert_eq!(
            m,
            "config file x.toml, line 2: lifecycle.drain: expected a duration such as \"10s\", found a date-time"
        );
        let m = file_err("[logging]\nformat = \"x\\ny\"\n");
        assert_one_line(&m);

        let text = "\"http\".'listen' = \"127.0.0.1:1\"\n[sampling]\nrate = 0x40\n[health]\nmax_error_ratio = 5e-2\n";
        let s = Layer::from_toml(text, "x.toml").unwrap().resolve().unwrap();
        assert_eq!(s.http.listen, "127.0.0.1:1".parse::<SocketAddr>().unwrap());
        assert_eq!(s.sampling.rate, 64);
        assert_eq!(s.health.max_error_ratio, 0.05);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let m = env_err(&[("EVENTFLUX_PROBE_HTTP_LISTEN", "localhost")]);
        assert_one_line(&m);
        assert_eq!(
            m,
            "environment variable EVENTFLUX_PROBE_HTTP_LISTEN: http.listen: `localhost` is not a socket address (expected e.g. 127.0.0.1:9469 or 0.0.0.0:9469)"
        );
        let m = env_err(&[("EVENTFLUX_PROBE_SAMPLING_RATE", "fast")]);
        assert_eq!(
            m,
            "environment variable EVENTFLUX_PROBE_SAMPLING_RATE: sampling.rate: expected an integer, found a string"
        );
        let m = env_err(&[("EVENTFLUX_PROBE_SAMPLING_RATE", "1.5")]);
        assert_eq!(
            m,
            "environment variable EVENTFLUX_PROBE_SAMPLING_RATE: sampling.rate: expected an integer, found a float"
        );
        let m = env_err(&[("EVENTFLUX_PROBE_LIMITS_MAX_SERIES", "0")]);
        assert_eq!(m, "environment variable EVENTFLUX_PROBE_LIMITS_MAX_SERIES: limits.max_series: must be at least 1");

        let e = check_env_names([
            "PATH",
            "EVENTFLUX_PROBE_VERIFIER_LOG",
            "EVENTFLUX_PROBE_CONFIG",
            "EVENTFLUX_PROBE_HTTP_LISTN",
        ])
        .unwrap_err()
        .to_string();
        assert_one_line(&e);
        assert_eq!(
            e,
            "environment variable EVENTFLUX_PROBE_HTTP_LISTN: not a setting (known: EVENTFLUX_PROBE_HTTP_LISTEN, EVENTFLUX_PROBE_HTTP_IDLE_TIMEOUT)"
        );
        let e = check_env_names(["EVENTFLUX_PROBE_LISTEN"]).unwrap_err().to_string();
        assert!(e.starts_with(
            "environment variable EVENTFLUX_PROBE_LISTEN: not a setting (known: EVENTFLUX_PROBE_LOGGING_LEVEL, "
        ));
        assert!(e.contains("EVENTFLUX_PROBE_LIMITS_MAX_SERIES"), "{e}");
        check_env_names(KEYS.iter().map(|k| k.env)).unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 3 s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "inf", "NaN", "1e3s", "1.2.3s", ".s", "+5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration("x"), Err("`x` is not a duration (try 10s, 500ms, 2m)".into()));
        assert!(parse_duration("99999999999999999999h").unwrap_err().contains("too long"));
        assert!(parse_duration("9999999999999999999h").unwrap_err().contains("too long"));
    }

    /// A file written from [`KEYS`] with every default must parse (so every key is one the file
    /// accepts, under its section) and resolve to the built-in defaults.
    #[test]
    fn keys_match_what_the_file_accepts() {
        let mut text = String::new();
        for section in SECTIONS {
            text.push_str(&format!("[{section}]\n"));
            for k in KEYS.iter().filter(|k| k.section == *section) {
                let value = match k.default.parse::<toml::Value>() {
                    Ok(_) => k.default.to_owned(),
                    Err(_) => format!("{:?}", k.default),
                };
                text.push_str(&format!("{} = {value}\n", k.key));
            }
        }
        let layer = Layer::from_toml(&text, "generated.toml").unwrap();
        let all_set = Layer::builtin().unwrap();
        assert_eq!(layer, all_set, "every key set, to its default:\n{text}");
        assert_eq!(layer.resolve().unwrap(), Settings::default());
        assert_eq!(KEYS.iter().map(|k| k.section).collect::<std::collections::BTreeSet<_>>().len(), SECTIONS.len());
    }

    /// docs/configuration.md has a row per key with its variable and default, and its example
    /// file is one the daemon accepts.
    #[test]
    fn the_reference_documents_every_key() {
        let doc = include_str!("../../docs/configuration.md");
        for k in KEYS {
            let row = format!("| `{}` | `{}` | `{}` | `{}` |", k.section, k.key, k.env, k.default);
            assert!(doc.contains(&row), "docs/configuration.md lacks the row starting {row}");
        }
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("docs/configuration.md has an example file");
        let layer = Layer::from_toml(example, "docs/configuration.md").unwrap();
        assert_eq!(layer, Layer::builtin().unwrap(), "the example sets every key, to its default");
        layer.resolve().unwrap();
    }
}
