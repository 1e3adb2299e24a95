//! What goes wrong with a configuration, said in one line: where the value came from (file and
//! line, or variable), the key, and the problem, with any quoted value cut short.

use std::io;
use std::path::PathBuf;

use crate::input::io_reason;

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

pub(crate) fn line_part(line: &Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

pub(crate) fn key_part(key: &Option<String>) -> String {
    key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default()
}

/// A message kept to one line whatever it quotes.
pub(crate) fn one_line(message: &str) -> String {
    let line = message.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join("; ");
    shorten_quoted(&line)
}

/// A value quoted in a message (between backticks) is shown up to this many characters.
pub(crate) const QUOTED_CHARS: usize = 64;

/// `message` with each backtick-quoted value longer than [`QUOTED_CHARS`] cut, saying how much
/// was left out: a 50 MB value is named, not echoed.
pub(crate) fn shorten_quoted(message: &str) -> String {
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
