//! The target's system metrics from `/proc/PID`: uptime, memory, CPU, threads, descriptors. Probes do not
//! see these; the design document's system metrics come from here.

use std::time::Instant;

use crate::find::target::Target;
use crate::model::snapshot::{Io, ProcStats};

/// Parses `/proc/PID/io` text; `None` if a field is missing.
pub fn parse_io(text: &str) -> Option<Io> {
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok());
    Some(Io {
        rchar: field("rchar")?,
        wchar: field("wchar")?,
        read_bytes: field("read_bytes")?,
        write_bytes: field("write_bytes")?,
    })
}

/// Reads `/proc/PID/stat` repeatedly, keeping what CPU-percent needs and the last reading, so
/// a process that exited still reports its final values (and never those of a process that
/// got its pid later: readings go through the target's pidfd).
#[derive(Debug, Default)]
pub struct ProcSampler {
    last: Option<(Instant, ProcStats)>,
    /// The CPU-time reading the percentage is measured from: moved on once a second, so the
    /// figure covers about a second whoever reads and how often (a scrape does not change
    /// what the next one sees).
    reference: Option<(Instant, f64)>,
}

/// Span the CPU percentage is measured over, at least.
const CPU_SPAN: std::time::Duration = std::time::Duration::from_secs(1);

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory arguments.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn page_size() -> u64 {
    // SAFETY: as above.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as u64 } else { 4096 }
}

/// Parses `/proc/PID/stat` and `/proc/uptime` text.
pub fn parse(stat: &str, system_uptime: &str) -> Option<ProcStats> {
    // The command name is in parentheses and may contain spaces: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state); field N is f[N - 3].
    let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let ticks = clock_ticks();
    let (utime, stime) = (num(14)?, num(15)?);
    let starttime = num(22)? as f64 / ticks;
    let up: f64 = system_uptime.split_whitespace().next()?.parse().ok()?;
    Some(ProcStats {
        uptime_seconds: (up - starttime).max(0.0),
        rss_bytes: num(24)? * page_size(),
        virtual_bytes: num(23)?,
        threads: num(20)?,
        cpu_percent: 0.0,
        cpu_seconds: (utime + stime) as f64 / ticks,
        open_fds: None,
        io: None,
    })
}

impl ProcSampler {
    /// A fresh reading, or the last one if the process is gone.
    pub fn sample(&mut self, target: &Target) -> Option<ProcStats> {
        let now = Instant::now();
        let fresh = target.read_proc(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .zip(std::fs::read_to_string("/proc/uptime").ok())
                .and_then(|(stat, up)| parse(&stat, &up))
                .map(|stats| ProcStats {
                    open_fds: std::fs::read_dir(format!("/proc/{pid}/fd")).ok().map(|d| d.count() as u64),
                    io: std::fs::read_to_string(format!("/proc/{pid}/io")).ok().as_deref().and_then(parse_io),
                    ..stats
                })
        });
        let Some(mut stats) = fresh else {
            return self.last.map(|(_, s)| s);
        };
        let (then, cpu_then) = *self.reference.get_or_insert((now, stats.cpu_seconds));
        let wall = now.duration_since(then).as_secs_f64();
        stats.cpu_percent = match self.last {
            // Too soon after the reference for a meaningful figure: the previous one stands.
            Some((_, prev)) if wall < CPU_SPAN.as_secs_f64() => prev.cpu_percent,
            _ if wall > 0.0 => ((stats.cpu_seconds - cpu_then) / wall * 100.0).max(0.0),
            _ => 0.0,
        };
        if wall >= CPU_SPAN.as_secs_f64() {
            self.reference = Some((now, stats.cpu_seconds));
        }
        self.last = Some((now, stats));
        Some(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456789 300 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse(stat, "100.50 10.0").unwrap();
        assert_eq!(s.threads, 7);
        assert_eq!(s.virtual_bytes, 123_456_789);
        assert_eq!(s.rss_bytes, 300 * page_size());
        assert!((s.cpu_seconds - 300.0 / clock_ticks()).abs() < 1e-9);
        assert!((s.uptime_seconds - (100.5 - 1000.0 / clock_ticks())).abs() < 1e-9);
    }

    #[test]
    fn parses_io() {
        let text =
            "rchar: 10\nwchar: 20\nsyscr: 1\nsyscw: 2\nread_bytes: 4096\nwrite_bytes: 8192\ncancelled_write_bytes: 0\n";
        assert_eq!(parse_io(text), Some(Io { rchar: 10, wchar: 20, read_bytes: 4096, write_bytes: 8192 }));
        assert_eq!(parse_io("rchar: 10\n"), None);
        let own = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
        assert!(parse_io(&own).is_some_and(|io| io.rchar > 0), "{own}");
    }
}
