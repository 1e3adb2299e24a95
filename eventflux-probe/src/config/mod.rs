//! The daemon's settings: one model read from four layers, lowest precedence first: the
//! built-in defaults, the TOML config file (`--config FILE`), the environment
//! (`EVENTFLUX_PROBE_<SECTION>_<KEY>`) and the command-line flags.
//!
//! Every key is declared once, in the `define_settings!` table of [`settings`]; the table
//! generates the partial [`Layer`] each source is read into, the resolved [`Settings`], the
//! [`KEYS`] reference (docs/configuration.md is checked against it), the merge and the per-key
//! checks. The files, by job:
//! - `settings.rs`: the table and what it generates;
//! - `sources.rs`: the file (a spanned TOML document walked against [`SECTIONS`] and [`KEYS`],
//!   each value read on its own) and the environment, merged by [`load`];
//! - `values.rs`: how each type of value is read; `checks.rs`: the range checks keys name;
//! - `error.rs`: [`ConfigError`], one line naming where the value came from (file and line, or
//!   variable) and the key. Every message is ours, written from the type the key expects and
//!   the type the value has, never derived from another library's wording.

mod buckets;
mod checks;
mod error;
pub mod settings;
mod sources;
mod values;

pub use buckets::Buckets;
pub use error::ConfigError;
pub use settings::*;
pub use sources::{MAX_CONFIG_BYTES, check_env_names, load};
pub use values::parse_duration;

impl Logging {
    /// What `logging::init` takes.
    pub fn options(&self) -> crate::logging::Options<'_> {
        crate::logging::Options { level: &self.level, format: self.format, output: &self.output }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::checks::{flush_interval, sample_rate};
    use super::*;
    use crate::logging::{LogFormat, LogOutput};

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
            "config file x.toml, line 7: unknown key `helth` (known sections: logging, http, sampling, lifecycle, health, metrics, limits, otlp)"
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
            let budget = crate::kernel::budget::Budget::new(Some(rate), flush).is_ok();
            assert_eq!(sample_rate(&rate).is_ok(), budget, "rate {rate}");
        }
        for micros in (0..=3_000_000).step_by(250) {
            let d = Duration::from_micros(micros);
            let budget = crate::kernel::budget::Budget::new(Some(1024), d).is_ok();
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
        let doc = include_str!("../../../docs/configuration.md");
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
