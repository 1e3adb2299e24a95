//! The sources a [`Layer`] is read from: the TOML config file (walked against the table's
//! sections and keys, each value read on its own) and the `EVENTFLUX_PROBE_*` environment;
//! [`load`] merges them over the defaults and under the flags.

use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, one_line};
use super::settings::{ENV_PREFIX, KEYS, Layer, RESERVED_ENV, SECTIONS, Settings};
use super::values::{Raw, de_kind, in_source_order, plain};

/// The configuration file is refused past this size: a real one is a few kilobytes.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

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
    pub(crate) fn builtin() -> Result<Layer, ConfigError> {
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

/// 1-based line of byte `pos`.
pub(crate) fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos].iter().filter(|&&b| b == b'\n').count() + 1
}
