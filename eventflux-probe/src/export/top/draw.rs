//! The screens of `top`, drawn into a ratatui buffer: the overview (engines, queries,
//! streams, the observer's cost) and a query's stages. The terminal loop draws them into the
//! terminal; `--once` into a buffer printed as plain text. Colours are the terminal's own
//! named ones (its palette), and only for health and the selection.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table, TableState, Widget};

use eventflux_probe_common::hist;

use super::controls::Controls;
use super::view::{Column, QueryRow, View};

/// What the screen says besides the view.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// What is observed: `pid 123`, `every engine of this host`, a URL.
    pub source: String,
    pub refresh_seconds: f64,
    /// Why the figures stopped moving (the target exited, the URL stopped answering).
    pub ended: Option<String>,
}

/// A count per second as top writes it: 950, 9.50k, 12.3k, 1.23M.
pub fn per_second(v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    for (div, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if v >= div {
            return three_digits(v / div, suffix);
        }
    }
    if v >= 100.0 || v == 0.0 { format!("{v:.0}") } else { format!("{v:.1}") }
}

fn three_digits(v: f64, suffix: &str) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}{suffix}"),
        v if v >= 10.0 => format!("{v:.1}{suffix}"),
        v => format!("{v:.2}{suffix}"),
    }
}

/// A duration: 850ns, 12.3µs, 1.20ms, 2.50s.
pub fn seconds(v: Option<f64>) -> String {
    let Some(v) = v else { return "-".into() };
    match v {
        v if v < 1e-6 => format!("{:.0}ns", v * 1e9),
        v if v < 1e-3 => format!("{:.1}µs", v * 1e6),
        v if v < 1.0 => format!("{:.2}ms", v * 1e3),
        v => format!("{v:.2}s"),
    }
}

/// Bytes: 512B, 4.0KiB, 12.3MiB.
pub fn bytes(v: Option<u64>) -> String {
    let Some(v) = v else { return "-".into() };
    for (shift, suffix) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if v >= 1 << shift {
            return format!("{:.1}{suffix}", v as f64 / (1u64 << shift) as f64);
        }
    }
    format!("{v}B")
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.1}"))
}

fn uptime(v: Option<f64>) -> String {
    let Some(s) = v else { return "-".into() };
    let s = s as u64;
    match s {
        s if s >= 86_400 => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s => format!("{}m{:02}s", s / 60, s % 60),
    }
}

fn health_style(status: Option<&str>) -> Style {
    match status {
        Some("healthy") => Style::new().fg(Color::Green),
        Some("degraded") => Style::new().fg(Color::Yellow),
        Some(_) => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        None => Style::new(),
    }
}

/// The file name of an executable path.
fn short_exe(exe: &str) -> &str {
    exe.rsplit('/').next().unwrap_or(exe)
}

fn title(view: &View, c: &Controls, status: &Status) -> Line<'static> {
    let arrow = if c.order.descending { "▼" } else { "▲" };
    let mut spans = vec![
        Span::styled("eventflux-probe top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " · {} · every {}s · rates over {:.1}s · sort {} {arrow}",
            status.source,
            status.refresh_seconds,
            view.window_seconds,
            c.order.column.title()
        )),
    ];
    if c.editing || !c.order.filter.is_empty() {
        spans.push(Span::raw(format!(" · filter: {}{}", c.order.filter, if c.editing { "▏" } else { "" })));
    }
    if c.paused {
        spans.push(Span::styled(" · PAUSED", Style::new().add_modifier(Modifier::REVERSED)));
    }
    Line::from(spans)
}

/// The lines of each engine's header.
fn engine_lines(view: &View) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for e in &view.engines {
        let status = e.status.clone().unwrap_or_else(|| "unknown".into());
        let mut spans = vec![
            Span::styled(format!("pid {}", e.pid), Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(format!("  {}  up {}  ", short_exe(&e.exe), uptime(e.uptime_seconds))),
            Span::styled(status.to_uppercase(), health_style(e.status.as_deref())),
        ];
        if e.state != "running" {
            spans.push(Span::styled(format!(" ({})", e.state), Style::new().fg(Color::Red)));
        }
        spans.push(Span::raw(format!(
            "  in {}/s  out {}/s  cpu {}% (queries {}%)  rss {}",
            per_second(e.events_in_per_second),
            per_second(e.events_out_per_second),
            percent(e.cpu_percent),
            percent(e.attributed_cpu_percent),
            bytes(e.rss_bytes)
        )));
        lines.push(Line::from(spans));
        for r in &e.reasons {
            lines.push(Line::styled(format!("  {r}"), health_style(e.status.as_deref())));
        }
    }
    if view.engines.is_empty() {
        lines.push(Line::raw("no engine observed yet"));
    }
    lines
}

fn observer_line(view: &View) -> Line<'static> {
    let o = &view.observer;
    Line::from(vec![
        Span::styled("observer", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  bpf runs {}/s  {} per run  {}% of a core  drops {}",
            per_second(o.program_runs_per_second),
            seconds(o.nanoseconds_per_run.map(|n| n / 1e9)),
            o.cpu_percent.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            o.drops
        )),
    ])
}

/// Widths of the query table's figure columns (IN/s … GROUPS).
const QUERY_WIDTHS: [u16; 10] = [8, 8, 8, 8, 8, 6, 7, 7, 9, 7];

const KEYS: &str = "q quit  ↑↓ select  enter stages  s/S sort  r reverse  / filter  p pause";
const DETAIL_KEYS: &str = "esc back  p pause  q quit";

fn query_cells(q: &QueryRow, with_pid: bool) -> Vec<String> {
    let mut cells = Vec::new();
    if with_pid {
        cells.push(q.pid.to_string());
    }
    cells.extend([
        q.name.clone(),
        per_second(q.events_in_per_second),
        per_second(q.rows_out_per_second),
        per_second(q.batches_per_second),
        seconds(q.p50_seconds),
        seconds(q.p99_seconds),
        percent(q.cpu_percent),
        per_second(q.errors_per_second),
        per_second(q.backpressure_per_second),
        bytes(q.window_bytes),
        q.groups.map_or_else(|| "-".into(), |g| g.to_string()),
    ]);
    cells
}

/// A name column as wide as its longest name (at least its heading's), capped.
fn name_width<'a>(names: impl Iterator<Item = &'a str>) -> u16 {
    names.map(|n| n.chars().count()).max().unwrap_or(0).clamp(6, 40) as u16 + 1
}

fn header(titles: Vec<String>) -> Row<'static> {
    Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED))
}

fn query_table(view: &View, c: &Controls, with_pid: bool) -> (Table<'static>, TableState) {
    let mut titles: Vec<String> = Vec::new();
    if with_pid {
        titles.push("PID".into());
    }
    let arrow = if c.order.descending { "▼" } else { "▲" };
    titles.extend(
        Column::ALL
            .iter()
            .map(|col| if *col == c.order.column { format!("{}{arrow}", col.title()) } else { col.title().to_owned() }),
    );
    let rows: Vec<Row> = view.queries.iter().map(|q| Row::new(query_cells(q, with_pid))).collect();
    let mut widths = Vec::new();
    if with_pid {
        widths.push(Constraint::Length(7));
    }
    widths.push(Constraint::Length(name_width(view.queries.iter().map(|q| q.name.as_str()))));
    widths.extend(QUERY_WIDTHS.map(Constraint::Length));
    let table = Table::new(rows, widths)
        .header(header(titles))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let state = TableState::default().with_selected((!view.queries.is_empty()).then_some(c.selected));
    (table, state)
}

fn stream_table(view: &View, with_pid: bool) -> Table<'static> {
    let mut titles: Vec<String> = Vec::new();
    if with_pid {
        titles.push("PID".into());
    }
    titles.extend(["STREAM", "EVENTS/s", "QUEUE"].map(String::from));
    let rows: Vec<Row> = view
        .streams
        .iter()
        .map(|s| {
            let mut cells = Vec::new();
            if with_pid {
                cells.push(s.pid.to_string());
            }
            cells.push(s.name.clone());
            cells.push(per_second(s.events_per_second));
            cells.push(s.queue_fill.map_or_else(|| "-".into(), |f| format!("{:.0}%", f * 100.0)));
            Row::new(cells)
        })
        .collect();
    let mut widths = Vec::new();
    if with_pid {
        widths.push(Constraint::Length(7));
    }
    widths.push(Constraint::Length(name_width(view.streams.iter().map(|s| s.name.as_str()))));
    widths.extend([Constraint::Length(9), Constraint::Length(6)]);
    Table::new(rows, widths).header(header(titles))
}

/// Lines the overview needs to show every row (what `--once` sizes its buffer by).
pub fn height(view: &View, c: &Controls, status: &Status) -> u16 {
    if let Some(q) = detail_query(view, c) {
        let bars = q.latency.as_ref().map_or(1, |h| histogram_lines(h, 40).len());
        return (6 + q.stages.len() + bars + 2) as u16;
    }
    // Title, engines, a gap, queries and their heading, a gap, streams and theirs, a gap,
    // the observer, why it ended, the keys.
    let engines = engine_lines(view).len();
    (8 + engines + view.queries.len() + view.streams.len() + usize::from(status.ended.is_some())) as u16
}

fn detail_query<'a>(view: &'a View, c: &Controls) -> Option<&'a QueryRow> {
    let (pid, name) = c.detail.as_ref()?;
    view.queries.iter().find(|q| q.pid == *pid && &q.name == name)
}

/// Draws the screen into `buf` within `area`.
pub fn draw(area: Rect, buf: &mut Buffer, view: &View, c: &Controls, status: &Status) {
    if c.detail.is_some() {
        return draw_detail(area, buf, view, c, status);
    }
    let with_pid = view.engines.len() > 1;
    let engines = engine_lines(view);
    let ended = u16::from(status.ended.is_some());
    // The tables take what they need, the queries first (the selection scrolls them); what
    // is left stays blank above the observer's line, so the bottom lines never move.
    let fixed = 1 + engines.len() as u16 + 1 + 1 + 1 + ended + 1;
    let room = area.height.saturating_sub(fixed);
    let want_streams = view.streams.len() as u16 + 1;
    let query_rows = (view.queries.len() as u16 + 1).min(room.saturating_sub(want_streams.min(room / 3)).max(2));
    let stream_rows = want_streams.min(room.saturating_sub(query_rows + 1));
    let [top, heads, _, queries, _, stream_area, _, observer, ended_area, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(engines.len() as u16),
        Constraint::Length(1),
        Constraint::Length(query_rows),
        Constraint::Length(1),
        Constraint::Length(stream_rows),
        Constraint::Fill(1),
        Constraint::Length(1),
        Constraint::Length(ended),
        Constraint::Length(1),
    ])
    .areas(area);
    Paragraph::new(title(view, c, status)).render(top, buf);
    Paragraph::new(engines).render(heads, buf);
    let (table, mut state) = query_table(view, c, with_pid);
    ratatui::widgets::StatefulWidget::render(table, queries, buf, &mut state);
    stream_table(view, with_pid).render(stream_area, buf);
    Paragraph::new(observer_line(view)).render(observer, buf);
    if let Some(why) = &status.ended {
        Paragraph::new(Line::styled(why.clone(), Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)))
            .render(ended_area, buf);
    }
    Paragraph::new(Line::styled(KEYS, Style::new().add_modifier(Modifier::DIM))).render(keys, buf);
}

/// bpftrace's histogram layout: `(lower, upper]  count |bars|`.
fn histogram_lines(h: &crate::model::hist::HistData, width: usize) -> Vec<String> {
    let (Some(first), Some(last)) = (h.buckets.iter().position(|n| *n > 0), h.buckets.iter().rposition(|n| *n > 0))
    else {
        return vec!["no batch sampled in the window".into()];
    };
    let top = h.buckets.iter().copied().max().unwrap_or(1).max(1);
    (first..=last)
        .map(|i| {
            let n = h.buckets[i];
            let bar = "█".repeat((n as usize * width).div_ceil(top as usize));
            let range = format!(
                "({}, {}]",
                seconds(Some(hist::lower(i) as f64 / 1e9)),
                seconds(Some(hist::upper(i) as f64 / 1e9))
            );
            format!("{range:>20} {n:>8} │{bar:<width$}│")
        })
        .collect()
}

fn draw_detail(area: Rect, buf: &mut Buffer, view: &View, c: &Controls, status: &Status) {
    let Some(q) = detail_query(view, c) else {
        let (pid, name) = c.detail.clone().unwrap_or_default();
        Paragraph::new(vec![
            title(view, c, status),
            Line::raw(format!("query {name} of pid {pid} is not in the view (filtered out, or gone)")),
            Line::raw(DETAIL_KEYS),
        ])
        .render(area, buf);
        return;
    };
    let bars = q.latency.as_ref().map_or_else(|| vec!["no batch sampled".into()], |h| histogram_lines(h, 40));
    let samples = q.latency.as_ref().map_or(0, |h| h.count);
    let [top, head, _, stages, _, hist_title, hist_area, ended_area, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(q.stages.len() as u16 + 1),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(u16::from(status.ended.is_some())),
        Constraint::Length(1),
    ])
    .areas(area);
    Paragraph::new(title(view, c, status)).render(top, buf);
    Paragraph::new(Line::from(vec![
        Span::styled(format!("query {}", q.name), Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            " (pid {})  batch p50 {}  p99 {}  {} batches sampled  cpu {}%  in {}/s  out {}/s",
            q.pid,
            seconds(q.p50_seconds),
            seconds(q.p99_seconds),
            samples,
            percent(q.cpu_percent),
            per_second(q.events_in_per_second),
            per_second(q.rows_out_per_second)
        )),
    ]))
    .render(head, buf);
    let titles = ["STAGE", "SAMPLES", "MEAN", "P50", "P99", "CPU%"].map(String::from).to_vec();
    let rows: Vec<Row> = q
        .stages
        .iter()
        .map(|s| {
            Row::new([
                Cell::from(s.stage.clone()),
                Cell::from(s.samples.to_string()),
                Cell::from(seconds(s.mean_seconds)),
                Cell::from(seconds(s.p50_seconds)),
                Cell::from(seconds(s.p99_seconds)),
                Cell::from(percent(s.cpu_percent)),
            ])
        })
        .collect();
    Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(7),
        ],
    )
    .header(header(titles))
    .render(stages, buf);
    Paragraph::new(Line::styled(
        format!("batch latency over the last {:.1}s (self time of each stage above)", view.window_seconds),
        Style::new().add_modifier(Modifier::BOLD),
    ))
    .render(hist_title, buf);
    Paragraph::new(bars.into_iter().map(Line::raw).collect::<Vec<_>>()).render(hist_area, buf);
    if let Some(why) = &status.ended {
        Paragraph::new(Line::styled(why.clone(), Style::new().fg(Color::Red))).render(ended_area, buf);
    }
    Paragraph::new(Line::styled(DETAIL_KEYS, Style::new().add_modifier(Modifier::DIM))).render(keys, buf);
}

/// Columns the query table needs to show every figure and whole names.
fn table_width(view: &View) -> u16 {
    let pid = if view.engines.len() > 1 { 8 } else { 0 };
    let figures: u16 = QUERY_WIDTHS.iter().map(|w| w + 1).sum();
    pid + name_width(view.queries.iter().map(|q| q.name.as_str())) + 1 + figures
}

/// The screen as plain text, `width` columns wide (wider if the query table needs it) and as
/// tall as its rows need (`--once`).
pub fn text(view: &View, c: &Controls, status: &Status, width: u16) -> String {
    let area = Rect::new(0, 0, width.max(table_width(view)), height(view, c, status));
    let mut buf = Buffer::empty(area);
    draw(area, &mut buf, view, c, status);
    let mut out = String::new();
    for y in 0..area.height {
        let line: String =
            (0..area.width).filter_map(|x| buf.cell((x, y)).map(|cell| cell.symbol().to_owned())).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::top::view::{EngineRow, StageRow, StreamRow};

    #[test]
    fn figures_are_short_and_readable() {
        assert_eq!(per_second(Some(950.0)), "950");
        assert_eq!(per_second(Some(9500.0)), "9.50k");
        assert_eq!(per_second(Some(12_345.0)), "12.3k");
        assert_eq!(per_second(Some(1_234_567.0)), "1.23M");
        assert_eq!(per_second(Some(2.5)), "2.5");
        assert_eq!(per_second(None), "-");
        assert_eq!(seconds(Some(850e-9)), "850ns");
        assert_eq!(seconds(Some(12.3e-6)), "12.3µs");
        assert_eq!(bytes(Some(4096)), "4.0KiB");
        assert_eq!(uptime(Some(3725.0)), "1h02m");
    }

    #[test]
    fn once_text_shows_every_row_and_the_detail_every_stage() {
        let q = |name: &str, input: f64| QueryRow {
            pid: 7,
            name: name.into(),
            events_in_per_second: Some(input),
            stages: ["filter", "window"]
                .map(|s| StageRow { stage: s.into(), samples: 3, ..StageRow::default() })
                .to_vec(),
            ..QueryRow::default()
        };
        let view = View {
            window_seconds: 5.0,
            engines: vec![EngineRow {
                pid: 7,
                exe: "/usr/bin/engine".into(),
                state: "running".into(),
                status: Some("degraded".into()),
                reasons: vec!["event_pipeline: slow".into()],
                ..EngineRow::default()
            }],
            queries: vec![q("q_one", 2000.0), q("q_two", 1000.0)],
            streams: vec![StreamRow {
                pid: 7,
                name: "Trades".into(),
                events_per_second: Some(3000.0),
                queue_fill: Some(0.25),
            }],
            ..View::default()
        };
        let status = Status { source: "pid 7".into(), refresh_seconds: 1.0, ended: Some("process 7 exited".into()) };
        let c = Controls::default();
        let t = text(&view, &c, &status, 120);
        for want in
            ["pid 7  engine", "DEGRADED", "event_pipeline: slow", "q_one", "q_two", "Trades", "25%", "process 7 exited"]
        {
            assert!(t.contains(want), "{want} missing from\n{t}");
        }
        assert!(t.find("q_one") < t.find("q_two"));
        let detail = Controls { detail: Some((7, "q_two".into())), ..Controls::default() };
        let t = text(&view, &detail, &status, 120);
        assert!(t.contains("query q_two") && t.contains("filter") && t.contains("window"), "{t}");
    }
}
