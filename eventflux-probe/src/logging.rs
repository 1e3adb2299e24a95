//! Logs through `tracing`, as human-readable lines or as the engine team's JSON logging
//! standard, one object per line:
//!
//! ```json
//! {"timestamp":"2025-10-11T10:30:45.123Z","level":"INFO","target":"eventflux_probe::serve::run","message":"attached","fields":{"pid":1234,"probes":22},"span":{"name":"target","id":"1"}}
//! ```
//!
//! `fields` holds the event's fields but `message`, typed, then those of its spans that the
//! event does not have (the innermost span's value wins); `span` is the innermost span, and is
//! absent outside any.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};
use serde_json::{Number, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

use crate::secrets::Scrubbing;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// Logging that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `origin` is `RUST_LOG` or `logging.level`, whichever gave the directive.
    #[error("{origin}: `{directive}` is not a log filter: {message}")]
    Filter { origin: &'static str, directive: String, message: String },
    #[error("cannot open log file {}: {}", .path.display(), open_reason(.error))]
    Open { path: PathBuf, error: io::Error },
    /// An existing path that is not a regular file (a FIFO would hang the first write).
    #[error("log file {0}")]
    Input(crate::input::InputError),
    /// A global subscriber was installed already.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// How to log: the `[logging]` settings (`config::Logging::options`).
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// A tracing `EnvFilter` directive.
    pub level: &'a str,
    pub format: LogFormat,
    pub output: &'a LogOutput,
}

/// [`init_with`] the process's `RUST_LOG`: for callers whose `settings.level` came from no
/// flag, so that `RUST_LOG` overrides it.
pub fn init(settings: Options<'_>) -> Result<(), LogError> {
    init_with(settings, std::env::var("RUST_LOG").ok())
}

/// The file is created if missing, so not finding it means not finding its directory.
fn open_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such directory".into(),
        _ => crate::input::io_reason(e),
    }
}

/// Installs the global subscriber for the process: `settings.format` to `settings.output`,
/// filtered by `rust_log` when it is given and not blank, else by `settings.level`.
///
/// The caller passes `None` when `--log-level` was given on the command line, and the
/// process's `RUST_LOG` otherwise: flags are the highest layer, so a `--log-level` flag
/// overrides `RUST_LOG`, which overrides the level of the file and of
/// `EVENTFLUX_PROBE_LOGGING_LEVEL`.
pub fn init_with(settings: Options<'_>, rust_log: Option<String>) -> Result<(), LogError> {
    let filter = filter(rust_log, settings.level)?;
    let (writer, ansi) = writer(settings.output)?;
    let (pretty, json) = match settings.format {
        LogFormat::Pretty => (Some(tracing_subscriber::fmt::layer().with_writer(writer).with_ansi(ansi)), None),
        LogFormat::Json => (None, Some(JsonLayer::new(writer))),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(pretty)
        .with(json)
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))
}

fn filter(rust_log: Option<String>, level: &str) -> Result<EnvFilter, LogError> {
    let (origin, directive) = directive(rust_log, level);
    EnvFilter::builder().parse(&directive).map_err(|e| LogError::Filter { origin, directive, message: e.to_string() })
}

/// Which directive filters, and where it came from. `RUST_LOG` wins over the configured level
/// so that a one-off `RUST_LOG=debug` needs no edit of the config; an empty one is taken for
/// unset, as `RUST_LOG= cmd` is how a shell unsets it for one command.
fn directive(rust_log: Option<String>, level: &str) -> (&'static str, String) {
    match rust_log {
        Some(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("logging.level", level.to_owned()),
    }
}

/// The writer for `output`, and whether it is a terminal (colours only then).
fn writer(output: &LogOutput) -> Result<(BoxMakeWriter, bool), LogError> {
    Ok(match output {
        LogOutput::Stderr => (BoxMakeWriter::new(|| Scrubbing(io::stderr())), io::stderr().is_terminal()),
        LogOutput::Stdout => (BoxMakeWriter::new(|| Scrubbing(io::stdout())), io::stdout().is_terminal()),
        LogOutput::File(path) => {
            let file = crate::input::append_regular(path).map_err(|e| match e {
                crate::input::InputError::Io { path, error } => LogError::Open { path, error },
                other => LogError::Input(other),
            })?;
            // Each event is one write of its whole line, and O_APPEND keeps the lines of
            // several writers (or a rotation tool's truncation) whole.
            let file = Arc::new(file);
            (BoxMakeWriter::new(move || Scrubbing(Arc::clone(&file))), false)
        }
    })
}

/// Writes every event as one JSON line (the module's format) to `W`.
pub struct JsonLayer<W> {
    writer: W,
}

impl<W> JsonLayer<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    pub fn new(writer: W) -> Self {
        JsonLayer { writer }
    }
}

/// A span's fields, typed, in the order recorded: kept in the span's extensions because the
/// events inside it need their values, which tracing hands over only once.
#[derive(Debug, Default)]
struct SpanFields(Vec<(&'static str, Value)>);

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut JsonVisitor { fields: &mut fields.0, message: None });
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(fields) = extensions.get_mut::<SpanFields>() {
            values.record(&mut JsonVisitor { fields: &mut fields.0, message: None });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let Some(line) = format_event(event, &ctx, SystemTime::now()) else { return };
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.writer.make_writer_for(event.metadata()).write_all(&line);
    }
}

#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    target: &'a str,
    message: String,
    fields: Fields,
    #[serde(skip_serializing_if = "Option::is_none")]
    span: Option<SpanInfo>,
}

/// The innermost span. With OpenTelemetry wired in, its trace id (and span id) would go here
/// too, from the span's OpenTelemetry context.
#[derive(Serialize)]
struct SpanInfo {
    name: &'static str,
    id: String,
}

/// Fields in the order recorded (a map type would sort them).
struct Fields(Vec<(&'static str, Value)>);

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// The event's line, newline included.
fn format_event<S>(event: &Event<'_>, ctx: &Context<'_, S>, now: SystemTime) -> Option<Vec<u8>>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    // Records of the `log` crate (the kernel programs' diagnostics, through aya-log) arrive as
    // events of target `log` with the real target in `log.*` fields: report them as their own.
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    let mut message = String::new();
    let mut fields = Vec::new();
    event.record(&mut JsonVisitor { fields: &mut fields, message: Some(&mut message) });
    if normalized.is_some() {
        fields.retain(|(name, _)| !name.starts_with("log."));
    }
    let mut span = None;
    if let Some(scope) = ctx.event_scope(event) {
        // Innermost first, so a name already present is an inner (or the event's) value.
        for s in scope {
            if span.is_none() {
                span = Some(SpanInfo { name: s.name(), id: s.id().into_u64().to_string() });
            }
            let extensions = s.extensions();
            let Some(SpanFields(own)) = extensions.get::<SpanFields>() else { continue };
            for (name, value) in own {
                if !fields.iter().any(|(n, _)| n == name) {
                    fields.push((name, value.clone()));
                }
            }
        }
    }
    let line = Line {
        timestamp: rfc3339_millis(now),
        level: meta.level().as_str(),
        target: meta.target(),
        message,
        fields: Fields(fields),
        span,
    };
    let mut bytes = serde_json::to_vec(&line).ok()?;
    bytes.push(b'\n');
    Some(bytes)
}

/// Records fields as JSON values; `message`, when `message` is given, as the line's message.
struct JsonVisitor<'a> {
    fields: &'a mut Vec<(&'static str, Value)>,
    message: Option<&'a mut String>,
}

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message"
            && let Some(message) = self.message.as_deref_mut()
        {
            *message = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            return;
        }
        // A span's `record` of a field it declared replaces its value.
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN nor infinity.
        let v = Number::from_f64(value).map_or_else(|| Value::String(value.to_string()), Value::Number);
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// `2025-10-11T10:30:45.123Z`: UTC, milliseconds.
fn rfc3339_millis(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(since.as_secs(), &format!("{:03}", since.subsec_millis()))
}

/// RFC 3339 in UTC of `secs` since the Unix epoch, with `fraction` (its digits) after the
/// seconds: the logs' and the span trees' timestamps.
pub fn rfc3339(secs: u64, fraction: &str) -> String {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01, so that the leap day ends a year.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
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

pub(crate) fn log_output(output: &LogOutput) -> Result<(), String> {
    match output {
        LogOutput::File(path) if path.as_os_str().is_empty() => {
            Err("is an empty path (expected stderr, stdout or a file path)".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    use serde_json::Map;

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;

        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// The lines `f` logs, as text.
    fn capture(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(EnvFilter::new("trace")).with(JsonLayer::new(buf.clone()));
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        String::from_utf8(bytes).unwrap()
    }

    fn parse(line: &str) -> Map<String, Value> {
        match serde_json::from_str(line) {
            Ok(Value::Object(map)) => map,
            other => panic!("not a JSON object: {line:?}: {other:?}"),
        }
    }

    fn assert_timestamp(v: &Value) {
        let t = v.as_str().unwrap();
        let b = t.as_bytes();
        assert_eq!(b.len(), 24, "{t}");
        for (i, c) in b.iter().enumerate() {
            match i {
                4 | 7 => assert_eq!(*c, b'-', "{t}"),
                10 => assert_eq!(*c, b'T', "{t}"),
                13 | 16 => assert_eq!(*c, b':', "{t}"),
                19 => assert_eq!(*c, b'.', "{t}"),
                23 => assert_eq!(*c, b'Z', "{t}"),
                _ => assert!(c.is_ascii_digit(), "{t}"),
            }
        }
    }

    #[test]
    fn event_in_spans() {
        let out = capture(|| {
            let outer = tracing::info_span!("outer", pid = 1u64, shared = "outer", depth = 1);
            let _outer = outer.enter();
            let span =
                tracing::info_span!("target", shared = "inner", exe = %"/bin/engine", late = tracing::field::Empty);
            span.record("late", 5);
            let _inner = span.enter();
            tracing::info!(
                pid = 1234,
                probes = 22u32,
                ratio = 0.25,
                ok = true,
                name = "engine",
                list = ?vec![1, 2],
                big = u128::MAX,
                "attached"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.starts_with("{\"timestamp\":\"") && out.ends_with("}\n"), "{out}");
        let line = parse(out.trim_end());
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
        for k in ["timestamp", "level", "target", "message", "fields", "span"] {
            assert!(line.contains_key(k), "{k} missing: {out}");
        }
        assert_timestamp(&line["timestamp"]);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["target"], "eventflux_probe::logging::tests");
        assert_eq!(line["message"], "attached");

        let fields = line["fields"].as_object().unwrap();
        assert_eq!(fields["pid"], Value::from(1234), "the event's own value wins");
        assert!(fields["pid"].is_i64());
        assert_eq!(fields["probes"], Value::from(22));
        assert!(fields["probes"].is_u64());
        assert_eq!(fields["ratio"].as_f64(), Some(0.25));
        assert_eq!(fields["ok"], Value::Bool(true));
        assert_eq!(fields["name"], "engine");
        assert_eq!(fields["list"], "[1, 2]");
        assert_eq!(fields["big"], u128::MAX.to_string());
        assert_eq!(fields["shared"], "inner", "the innermost span wins");
        assert_eq!(fields["exe"], "/bin/engine");
        assert_eq!(fields["late"], Value::from(5));
        assert_eq!(fields["depth"], Value::from(1));
        assert!(!fields.contains_key("message"));

        let span = line["span"].as_object().unwrap();
        assert_eq!(span.len(), 2);
        assert_eq!(span["name"], "target");
        let id = span["id"].as_str().unwrap();
        assert!(id.parse::<u64>().is_ok(), "{id}");

        // In recorded order: the event's fields first.
        let order: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert!(out.find("\"pid\":1234").unwrap() < out.find("\"shared\"").unwrap(), "{out} {order:?}");
    }

    #[test]
    fn outside_spans_there_is_no_span() {
        let out = capture(|| tracing::warn!(count = 3, "nothing"));
        let line = parse(out.trim_end());
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "nothing");
        assert_eq!(line["fields"], serde_json::json!({"count": 3}));
        assert!(!line.contains_key("span"));
        let out = capture(|| tracing::error!("bare"));
        assert_eq!(parse(out.trim_end())["fields"], serde_json::json!({}));
    }

    #[test]
    fn quotes_and_newlines_stay_on_one_line() {
        let message = "he said \"stop\"\nthen\r\nleft \\ \u{1b}[31m";
        let out = capture(|| {
            tracing::info!(detail = "a\nb", "{message}");
        });
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        let line = parse(out.trim_end());
        assert_eq!(line["message"], message);
        assert_eq!(line["fields"]["detail"], "a\nb");
    }

    #[test]
    fn non_finite_floats_are_strings() {
        let out = capture(|| tracing::info!(x = f64::NAN, y = f64::INFINITY, "floats"));
        let line = parse(out.trim_end());
        assert_eq!(line["fields"]["x"], "NaN");
        assert_eq!(line["fields"]["y"], "inf");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let at = |ms: u64| rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms));
        assert_eq!(at(1_760_178_645_123), "2025-10-11T10:30:45.123Z");
        assert_eq!(at(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(at(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(at(1_709_164_800_000), "2024-02-29T00:00:00.000Z");
        assert_eq!(at(1_735_689_599_000), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn rust_log_overrides_the_level_unless_the_caller_withholds_it() {
        assert_eq!(directive(Some("debug".into()), "info"), ("RUST_LOG", "debug".into()));
        // What `init_with` gets when `--log-level` was given: the flag's level, whatever the
        // environment holds.
        assert_eq!(directive(None, "warn"), ("logging.level", "warn".into()));
        assert_eq!(directive(Some(" ".into()), "info"), ("logging.level", "info".into()));
        // A RUST_LOG in effect replaces the level entirely: a bad level is not even parsed.
        assert!(filter(Some("debug".into()), "x=loud").is_ok());
    }

    #[test]
    fn filters() {
        assert!(filter(None, "eventflux_probe=debug").is_ok());
        assert!(filter(Some(String::new()), "info").is_ok());
        let e = filter(None, "eventflux_probe=loud").unwrap_err().to_string();
        assert!(e.starts_with("logging.level: `eventflux_probe=loud` is not a log filter"), "{e}");
        let e = filter(Some("x=loud".into()), "info").unwrap_err().to_string();
        assert!(e.starts_with("RUST_LOG: `x=loud`"), "{e}");
    }

    #[test]
    fn log_files() {
        let dir = std::env::temp_dir().join(format!("eventflux-probe-logging-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("probe.log");
        std::fs::write(&path, "kept\n").unwrap();
        let (w, ansi) = writer(&LogOutput::File(path.clone())).unwrap();
        assert!(!ansi);
        w.make_writer().write_all(b"appended\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "kept\nappended\n");

        let missing = dir.join("no-such-dir").join("probe.log");
        let e = writer(&LogOutput::File(missing.clone())).err().unwrap().to_string();
        assert_eq!(e, format!("cannot open log file {}: no such directory", missing.display()));
        let e = writer(&LogOutput::File(dir.clone())).err().unwrap().to_string();
        assert_eq!(e, format!("log file {} is a directory: give a file", dir.display()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
