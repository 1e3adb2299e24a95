//! `eventflux-probe list`: every USDT probe of a binary or a process, as a table or JSON.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use eventflux_probe::find::usdt::{self, BinaryProbes, UsdtNote, verify};
use serde::Serialize;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["binary", "pid"])))]
pub struct Args {
    /// An ELF executable or shared object.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// A running process: its executable and every shared object it has mapped.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Only probes of this provider (e.g. eventflux).
    #[arg(long, value_name = "NAME")]
    provider: Option<String>,
    /// One JSON array on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Row<'a> {
    binary: String,
    #[serde(flatten)]
    note: &'a UsdtNote,
    /// Why an observer would refuse to attach there (`usdt::verify`), if it would: checked in
    /// the process's memory with `--pid`, in the file with `--binary`. JSON: `ok` or
    /// `refused: REASON`.
    #[serde(rename = "site", serialize_with = "site_json")]
    refusal: Option<verify::Refusal>,
}

fn site_json<S: serde::Serializer>(refusal: &Option<verify::Refusal>, s: S) -> Result<S::Ok, S::Error> {
    match refusal {
        None => s.serialize_str("ok"),
        Some(r) => s.serialize_str(&format!("refused: {r}")),
    }
}

pub fn run(args: &Args) -> Result<()> {
    let mut warnings = Vec::new();
    let (binaries, what) = match (&args.binary, args.pid) {
        (Some(path), _) => {
            let notes = usdt::probes_in_file(path)?;
            let b = BinaryProbes { path: path.clone(), opened_at: path.clone(), notes };
            (vec![b], path.display().to_string())
        }
        (None, Some(pid)) => (usdt::probes_in_process(pid, &mut warnings)?, format!("process {pid}")),
        (None, None) => unreachable!("clap requires --binary or --pid"),
    };
    let wanted = |n: &UsdtNote| args.provider.as_deref().is_none_or(|p| p == n.provider);
    let image = args.pid.map(verify::ProcessImage::open).transpose()?;
    let check = |b: &BinaryProbes, note: &UsdtNote| match &image {
        Some(image) => image.check(&b.path, &b.opened_at, note),
        None => verify::check_file(&b.opened_at, note),
    };
    let rows: Vec<Row<'_>> = binaries
        .iter()
        .flat_map(|b| {
            b.notes.notes.iter().filter(|n| wanted(n)).map(|note| Row {
                binary: b.path.display().to_string(),
                note,
                refusal: check(b, note).err(),
            })
        })
        .collect();
    for r in &rows {
        if let Some(refusal) = &r.refusal {
            let n = r.note;
            warnings.push(format!(
                "{}: {}:{} at {:#x} would not be attached: {refusal}",
                r.binary, n.provider, n.name, n.offset
            ));
        }
    }
    for b in &binaries {
        for s in b
            .notes
            .skipped
            .iter()
            .filter(|s| args.provider.as_deref().is_none_or(|p| s.probe.starts_with(&format!("{p}:"))))
        {
            warnings.push(format!("{}: skipped {}: {}", b.path.display(), s.probe, s.reason));
        }
    }

    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &rows).context("cannot write JSON")?;
        writeln!(out)?;
    } else if !rows.is_empty() {
        write_table(&mut out, &rows)?;
    }
    out.flush()?;
    for w in &warnings {
        eprintln!("eventflux-probe: warning: {w}");
    }
    if rows.is_empty() {
        match &args.provider {
            Some(p) => eprintln!("eventflux-probe: no USDT probes of provider {p} in {what}"),
            None => eprintln!("eventflux-probe: no USDT probes in {what}"),
        }
    }
    Ok(())
}

fn write_table(out: &mut impl Write, rows: &[Row<'_>]) -> std::io::Result<()> {
    let header = ["BINARY", "PROVIDER", "NAME", "PC", "OFFSET", "SEMAPHORE", "SEM_OFFSET", "SITE", "ARGS"];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            let n = r.note;
            [
                r.binary.clone(),
                n.provider.clone(),
                n.name.clone(),
                format!("{:#x}", n.pc),
                format!("{:#x}", n.offset),
                if n.semaphore == 0 { "-".into() } else { format!("{:#x}", n.semaphore) },
                n.semaphore_offset.map_or("-".into(), |o| format!("{o:#x}")),
                if r.refusal.is_none() { "ok".into() } else { "REFUSED".into() },
                n.args.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |out: &mut dyn Write, row: &[&str]| -> std::io::Result<()> {
        let mut text = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                text.push_str(c);
            } else {
                text.push_str(&format!("{c:<w$}  "));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, &header)?;
    for row in &cells {
        line(out, &row.each_ref().map(String::as_str))?;
    }
    Ok(())
}
