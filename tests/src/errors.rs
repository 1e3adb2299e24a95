//! Mistakes reported the way the tools promise: one line, naming the problem, a non-zero exit,
//! never a panic or a backtrace. These test the message itself, so they read what it says.

use std::process::Output;

/// How every error of `eventflux-probe` begins (its `main` prints it).
pub const PROBE_ERROR: &str = "eventflux-probe: error: ";

/// Exit status 1, stderr exactly one line that starts with `prefix` and names each of
/// `expect`, no panic. Returns that line.
pub fn assert_one_line_error_of(prefix: &str, out: &Output, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert_eq!(out.status.code(), Some(1), "exit status 1 expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with(prefix), "{err:?} should start with {prefix:?}");
    for e in expect {
        assert!(lines[0].contains(e), "{err:?} should say {e:?}");
    }
    lines[0].to_owned()
}

/// [`assert_one_line_error_of`] `eventflux-probe`.
pub fn assert_one_line_error(out: &Output, expect: &[&str]) -> String {
    assert_one_line_error_of(PROBE_ERROR, out, expect)
}

/// A mistake a command can only find once it has attached (`latency`, `trace` and `profile`
/// say what they attached first): exit status 1, the last line of stderr `eventflux-probe`'s
/// error naming each of `expect`, no panic. Returns that line.
pub fn assert_final_error(out: &Output, expect: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert_eq!(out.status.code(), Some(1), "exit status 1 expected: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(PROBE_ERROR), "{err:?}: the last line should start with {PROBE_ERROR:?}");
    for e in expect {
        assert!(last.contains(e), "{err:?} should say {e:?}");
    }
    last.to_owned()
}
