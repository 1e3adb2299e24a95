//! How each type of value is read, from TOML or from the text of a variable or flag: the
//! messages say what was expected in the config's own terms (a duration, a socket address)
//! rather than Rust's.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::logging::{LogFormat, LogOutput};

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
pub(crate) trait ConfigValue: Sized {
    fn from_toml(value: toml::Value) -> Result<Self, String>;
}

/// A key's value as a source gives it, before it is read as the key's type.
pub(crate) enum Raw<'a> {
    /// From a config file.
    Value(toml::Value),
    /// From the environment (or a built-in default): see [`from_text`].
    Text(&'a str),
}

impl Raw<'_> {
    pub(crate) fn read<T: ConfigValue>(self) -> Result<T, String> {
        match self {
            Raw::Value(value) => T::from_toml(value),
            Raw::Text(text) => from_text(text),
        }
    }
}

/// A value written as the environment gives it: a TOML value when it is one (`64`, `true`,
/// `0.5`, `"quoted"`), a string otherwise (`0.0.0.0:9469`, `info`). A string key whose text
/// happens to read as another type (`level = 1`) gets the text.
pub(crate) fn from_text<T: ConfigValue>(raw: &str) -> Result<T, String> {
    let as_string = || T::from_toml(toml::Value::String(raw.to_owned()));
    match raw.parse::<toml::Value>() {
        Ok(value) => T::from_toml(value).or_else(|e| as_string().map_err(|_| e)),
        Err(_) => as_string(),
    }
}

/// A parsed document's value as a plain [`toml::Value`], the type every key is read from. The
/// parser has checked the syntax; what is left to fail is a number too large for its type.
pub(crate) fn plain(value: &DeValue<'_>) -> Result<toml::Value, String> {
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
pub(crate) fn in_source_order<'i>(
    table: DeTable<'i>,
) -> Vec<(Spanned<std::borrow::Cow<'i, str>>, Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.into_iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

pub(crate) fn de_kind(value: &DeValue<'_>) -> &'static str {
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

pub(crate) fn kind(value: &toml::Value) -> &'static str {
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

impl ConfigValue for super::buckets::Buckets {
    fn from_toml(value: toml::Value) -> Result<Self, String> {
        match value {
            toml::Value::String(s) => s.parse(),
            toml::Value::Array(items) => {
                let bounds = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::Float(f) => Ok(*f),
                        toml::Value::Integer(i) => Ok(*i as f64),
                        other => Err(format!("expected bucket bounds in seconds, found {}", kind(other))),
                    })
                    .collect::<Result<Vec<f64>, String>>()?;
                super::buckets::Buckets::from_seconds(bounds)
            }
            other => Err(format!("expected \"default\", \"full\" or bucket bounds in seconds, found {}", kind(&other))),
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
