//! Which processes node mode observes: `--exe`, `--pid` and `--container`, with the
//! globs they take.

use super::container::Container;

/// Which processes node mode observes. Empty lists select everything with probes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Globs over the executable's path as the process sees it (`*` matches `/` too).
    pub exe: Vec<String>,
    pub pids: Vec<u32>,
    /// Globs over the container id or the cgroup path; a process outside any container does
    /// not match them.
    pub containers: Vec<String>,
}

impl Selection {
    pub(crate) fn wants_pid(&self, pid: u32) -> bool {
        self.pids.is_empty() || self.pids.contains(&pid)
    }

    pub(crate) fn wants(&self, exe: &str, container: Option<&Container>) -> bool {
        // An executable deleted since it started shows as "PATH (deleted)": its path is PATH.
        let path = exe.strip_suffix(" (deleted)").unwrap_or(exe);
        let exe_ok = self.exe.is_empty() || self.exe.iter().any(|g| glob_match(g, path) || glob_match(g, exe));
        let container_ok = self.containers.is_empty()
            || container
                .is_some_and(|c| self.containers.iter().any(|g| glob_match(g, &c.id) || glob_match(g, &c.cgroup)));
        exe_ok && container_ok
    }
}

/// Whether `pattern` is a glob [`glob_match`] can use for `what` (`--exe`, `--container`):
/// only `*` and `?` are special, so brackets and braces (character classes, alternatives in
/// other globs) are refused rather than matched literally; an `--exe` glob must be able to
/// match an absolute path.
pub fn check_glob(what: &str, pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err(format!("{what}: an empty pattern matches nothing"));
    }
    if let Some(c) = pattern.chars().find(|c| matches!(c, '[' | ']' | '{' | '}')) {
        return Err(format!(
            "{what} `{pattern}`: `{c}` is not supported (only * and ? are wildcards, e.g. */eventflux or /usr/bin/eventflux-*)"
        ));
    }
    if what == "--exe" && !(pattern.starts_with('/') || pattern.starts_with('*')) {
        return Err(format!(
            "--exe `{pattern}` can never match: executable paths are absolute (start it with / or *, e.g. */{pattern})"
        ));
    }
    Ok(())
}

/// `*` (any run of characters, `/` included) and `?` (one character) glob matching.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*/eventflux-*", "/usr/bin/eventflux-demo"));
        assert!(glob_match("/opt/?ngine", "/opt/engine"));
        assert!(!glob_match("/opt/?ngine", "/opt/eengine"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acd"));
    }
}
