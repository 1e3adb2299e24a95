//! Probe discovery against the ground truth: binutils' `readelf -n` on the demo and on C
//! programs built with `sys/sdt.h`, the bytes at every computed file offset, and a live process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use integration_tests::{ReadelfNote, Scratch, assert_one_line_error, bin, readelf_notes, run, run_ok, serial};
use serde_json::Value;

fn list(args: &[&str]) -> Output {
    run(Command::new(bin("eventflux-probe")).arg("list").args(args))
}

fn list_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend(args);
    let out = list(&all);
    assert!(out.status.success(), "list {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).expect("JSON").as_array().expect("array").clone()
}

fn as_readelf(v: &Value) -> ReadelfNote {
    ReadelfNote {
        provider: v["provider"].as_str().expect("provider").to_owned(),
        name: v["name"].as_str().expect("name").to_owned(),
        location: v["raw"]["pc"].as_u64().expect("pc"),
        base: v["raw"]["base"].as_u64().expect("base"),
        semaphore: v["raw"]["semaphore"].as_u64().expect("semaphore"),
        args: v["args"].as_str().expect("args").to_owned(),
    }
}

/// Every note readelf prints is listed with the same fields, and every listed offset points at
/// the probe's `nop` and at a zero semaphore in the file.
fn assert_matches_readelf(path: &Path) -> Vec<Value> {
    let ours = list_json(&["--binary", path.to_str().expect("utf-8 path")]);
    let mut theirs = readelf_notes(path);
    let mut mine: Vec<ReadelfNote> = ours.iter().map(as_readelf).collect();
    theirs.sort();
    mine.sort();
    assert!(!theirs.is_empty(), "{} has no notes", path.display());
    assert_eq!(mine, theirs, "{}", path.display());

    let bytes = std::fs::read(path).expect("read binary");
    for v in &ours {
        let name = v["name"].as_str().expect("name");
        let offset = v["offset"].as_u64().expect("offset") as usize;
        // sys/sdt.h emits a 1-byte nop; usdt-markers a 5-byte one (see usdt-markers/src/site.rs).
        let nop5 = [0x0f, 0x1f, 0x44, 0x00, 0x00];
        assert!(
            bytes[offset] == 0x90 || bytes[offset..offset + 5] == nop5,
            "{name}: no nop at file offset {offset:#x}"
        );
        assert_eq!(v["pc"], v["raw"]["pc"], "not prelinked: pc is the note's pc");
        if let Some(sem) = v["semaphore_offset"].as_u64() {
            let sem = sem as usize;
            assert_eq!(&bytes[sem..sem + 2], &[0, 0], "{name}: semaphore at {sem:#x} is not a zero u16 in the file");
        }
        assert!(v["arg_specs"].is_array(), "{name}: args not parsed: {v}");
        let specs = v["arg_specs"].as_array().expect("specs").len();
        assert_eq!(specs, v["args"].as_str().expect("args").split_whitespace().count());
    }
    ours
}

#[test]
fn demo_notes_match_readelf() {
    let ours = assert_matches_readelf(&bin("eventflux-demo"));
    // Every probe of the ABI is in the demo, each with its semaphore.
    for probe in usdt_markers::PROBES {
        let sites: Vec<&Value> = ours.iter().filter(|v| v["name"] == probe.name).collect();
        assert!(!sites.is_empty(), "the demo has no {} site", probe.name);
        assert!(sites.iter().all(|v| v["semaphore"].as_u64() > Some(0)), "{}: no semaphore", probe.name);
    }
}

/// C programs built with sys/sdt.h at -O0 and -O2 (stack slots, sub-registers, constants,
/// globals, indexed memory) and a shared object with a semaphore.
struct CFixture {
    _scratch: Scratch,
    exes: Vec<PathBuf>,
    lib: PathBuf,
}

fn build_c_fixture() -> CFixture {
    assert!(
        Path::new("/usr/include/x86_64-linux-gnu/sys/sdt.h").exists() || Path::new("/usr/include/sys/sdt.h").exists(),
        "sys/sdt.h is missing: run `cargo xtask setup` (Debian package systemtap-sdt-dev)"
    );
    let scratch = Scratch::new("sdt-c");
    let dir = scratch.path().to_path_buf();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let lib = dir.join("libsdtfix.so");
    run_ok(Command::new("gcc").args(["-O2", "-fPIC", "-shared", "-o"]).arg(&lib).arg(fixtures.join("sdt_lib.c")));
    let mut exes = Vec::new();
    for opt in ["-O0", "-O2"] {
        let exe = dir.join(format!("sdtfix{opt}"));
        run_ok(
            Command::new("gcc")
                .args([opt, "-o"])
                .arg(&exe)
                .arg(fixtures.join("sdt_main.c"))
                .arg("-L")
                .arg(&dir)
                .args(["-lsdtfix", "-Wl,-rpath,$ORIGIN"]),
        );
        exes.push(exe);
    }
    CFixture { _scratch: scratch, exes, lib }
}

#[test]
fn c_sdt_notes_match_readelf() {
    let _serial = serial();
    let fx = build_c_fixture();
    let mut forms = std::collections::BTreeSet::new();
    for exe in &fx.exes {
        for v in assert_matches_readelf(exe) {
            for spec in v["arg_specs"].as_array().expect("specs") {
                forms.insert(spec["location"]["kind"].as_str().expect("kind").to_owned());
            }
        }
    }
    // gcc really emitted every operand form between the two optimisation levels.
    for kind in ["const", "reg", "deref", "indexed", "global"] {
        assert!(forms.contains(kind), "no {kind} operand in the C fixtures: {forms:?}");
    }
    let lib = assert_matches_readelf(&fx.lib);
    assert_eq!(lib.len(), 1);
    assert_eq!(lib[0]["name"], "gated");
    assert!(lib[0]["semaphore_offset"].as_u64().is_some(), "the C semaphore was not found: {}", lib[0]);
}

#[test]
fn list_by_pid_covers_executable_and_shared_objects() {
    let _serial = serial();
    let fx = build_c_fixture();
    let exe = &fx.exes[1];
    let mut child =
        Command::new(exe).arg("wait").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().expect("start fixture");
    // The process has mapped its libraries once it reached main; the probes are static, so
    // polling until the shared object shows up is enough.
    let pid = child.id().to_string();
    let mut rows = Vec::new();
    for _ in 0..100 {
        rows = list_json(&["--pid", &pid]);
        if rows.iter().any(|r| r["provider"] == "fixture_lib") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let binaries: std::collections::BTreeSet<&str> =
        rows.iter().map(|r| r["binary"].as_str().expect("binary")).collect();
    let canon = |p: &Path| std::fs::canonicalize(p).expect("canonicalize").to_string_lossy().into_owned();
    assert!(binaries.contains(canon(exe).as_str()), "{binaries:?}");
    assert!(binaries.contains(canon(&fx.lib).as_str()), "{binaries:?}");
    assert_eq!(rows.iter().filter(|r| r["provider"] == "fixture").count(), readelf_notes(exe).len());

    let only_lib = list_json(&["--pid", &pid, "--provider", "fixture_lib"]);
    assert_eq!(only_lib.len(), 1);
    assert_eq!(only_lib[0]["name"], "gated");

    // The table form shows the same probes.
    let table = list(&["--pid", &pid, "--provider", "fixture"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("BINARY"), "{text}");
    assert_eq!(text.lines().count(), 1 + readelf_notes(exe).len(), "{text}");

    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn bad_input_is_one_clear_line() {
    assert_one_line_error(&list(&["--binary", "/nonexistent/engine"]), &["cannot read /nonexistent/engine"]);
    let not_elf = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    assert_one_line_error(&list(&["--binary", not_elf.to_str().expect("path")]), &["not an ELF file"]);

    let mut gone = Command::new("true").spawn().expect("spawn true");
    let pid = gone.id().to_string();
    gone.wait().expect("wait");
    assert_one_line_error(&list(&["--pid", &pid]), &[&format!("no process with pid {pid}")]);

    // A note whose size fields run past the end of its section.
    let scratch = Scratch::new("corrupt");
    let demo = std::fs::read(bin("eventflux-demo")).expect("read demo");
    let (offset, size) = note_section(&bin("eventflux-demo"));
    let mut bad = demo.clone();
    bad[offset..offset + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    let path = scratch.path().join("bad-namesz");
    std::fs::write(&path, &bad).expect("write");
    assert_one_line_error(&list(&["--binary", path.to_str().expect("path")]), &["malformed stapsdt note #0"]);

    // A description too short for its three addresses.
    let mut bad = demo.clone();
    bad[offset + 4..offset + 8].copy_from_slice(&8u32.to_le_bytes());
    std::fs::write(&path, &bad).expect("write");
    assert_one_line_error(&list(&["--binary", path.to_str().expect("path")]), &["shorter than its three addresses"]);

    // Strings not terminated: the last note's final NUL replaced.
    let mut bad = demo.clone();
    let end = offset + size;
    let last_nul = (offset..end).rev().find(|i| bad[*i] == 0 && bad[*i - 1] != 0).expect("a NUL");
    bad[last_nul] = b'x';
    std::fs::write(&path, &bad).expect("write");
    let out = list(&["--binary", path.to_str().expect("path")]);
    assert_one_line_error(&out, &["malformed stapsdt note"]);

    // A file cut short inside its headers.
    std::fs::write(&path, &demo[..200]).expect("write");
    assert_one_line_error(&list(&["--binary", path.to_str().expect("path")]), &["corrupt ELF file"]);
}

/// File offset and size of `.note.stapsdt`, from readelf.
fn note_section(path: &Path) -> (usize, usize) {
    let out = run_ok(Command::new("readelf").arg("-SW").arg(path));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains(".note.stapsdt")).expect("section");
    let fields: Vec<&str> = line.split(']').nth(1).expect("fields").split_whitespace().collect();
    // name type address offset size …
    let hex = |s: &str| usize::from_str_radix(s, 16).expect("hex");
    (hex(fields[3]), hex(fields[4]))
}

#[test]
fn a_binary_without_probes_is_an_empty_list() {
    let out = list(&["--binary", "/bin/true", "--json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), "eventflux-probe: no USDT probes in /bin/true");

    let out = list(&["--binary", "/bin/true"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let mut sink = std::io::sink();
    let _ = sink.write_all(&out.stderr);
}
