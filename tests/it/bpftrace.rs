//! Interoperability with Debian's bpftrace on the real kernel: it attaches to our probes,
//! increments their semaphores, and the one-liners of docs/probes.md give exactly what the
//! target did.

use std::path::Path;
use std::process::Command;

use integration_tests::{Bpftrace, GatedDemo, Scratch, bin, map_value, run_ok, serial, summary};
use usdt_markers::abi::ComponentCounter;

/// The bpftrace scripts of docs/probes.md, in order, with `BIN` replaced.
fn documented_one_liners(binary: &Path) -> Vec<String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/probes.md")).expect("doc");
    let scripts: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("bpftrace -p PID -e '"))
        .map(|l| l.strip_suffix('\'').expect("a one-liner ends with '").replace("BIN", &binary.to_string_lossy()))
        .collect();
    assert_eq!(scripts.len(), 7, "docs/probes.md's bpftrace section changed: update this test");
    scripts
}

/// The one-liners, each in its own bpftrace attached at once (six observers): exact totals
/// per stream, per query and per component series, every batch sampled once the control one-liner asks for it, and
/// the registrations replayed to a late observer exactly once.
#[test]
fn documented_one_liners_give_exact_totals() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    // 100,003 events in chunks of 64 over 3 streams: the last chunk is short.
    let events = 100_003u64;
    let target = GatedDemo::start(&demo, &["--events", "100003", "--streams", "3", "--queries", "4", "--batch", "64"]);
    let mut scripts = documented_one_liners(&demo);
    // The last is the CPU one-liner, tested below.
    scripts.truncate(6);
    let observers: Vec<Bpftrace> = scripts.iter().map(|s| Bpftrace::attach(target.pid(), s)).collect();
    let names = Bpftrace::attach(
        target.pid(),
        &format!("usdt:{}:eventflux:query_register {{ @queries[arg0, str(arg1)] = count(); }}", demo.display()),
    );
    let summary = summary(&target.open_and_wait());
    let mut outputs = observers.into_iter().map(Bpftrace::finish_lines);
    let maps = |lines: Vec<String>| -> Vec<(String, String)> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix('@').and_then(|r| r.split_once(": ")))
            .map(|(k, v)| (format!("@{k}"), v.trim().to_owned()))
            .collect()
    };
    let ingest = maps(outputs.next().expect("ingest"));
    let query = maps(outputs.next().expect("query_events"));
    let components = maps(outputs.next().expect("component_count"));
    let latency = outputs.next().expect("batch_sample");
    let stages = outputs.next().expect("stage_sample");
    let every = maps(outputs.next().expect("every batch"));

    assert_eq!(summary["events"], events);
    for s in summary["streams"].as_object().expect("streams").values().filter(|s| s["role"] == "input") {
        assert_eq!(map_value(&ingest, &format!("@events[{}]", s["id"])), s["received"].as_u64().expect("received"));
    }
    let queries = summary["queries"].as_object().expect("queries");
    for q in queries.values() {
        let id = &q["id"];
        assert_eq!(map_value(&query, &format!("@events[{id}]")), q["processed"].as_u64().expect("processed"));
        assert_eq!(map_value(&query, &format!("@batches[{id}]")), q["batches"].as_u64().expect("batches"));
        // ctl_samples_all: every batch was sampled, and reported once.
        assert_eq!(map_value(&every, &format!("@sampled[{id}]")), q["batches"].as_u64().expect("batches"));
        assert!(latency.iter().any(|l| l.starts_with(&format!("@latency_ns[{id}]:"))), "{latency:?}");
    }
    // Every component counter the demo counted, by the names bpftrace learned (registrations
    // replayed to it) and the codes of the ABI.
    let mut compared = 0;
    for (name, c) in summary["components"].as_object().expect("components") {
        let id = components
            .iter()
            .find(|(k, v)| k.starts_with("@name[") && v == name)
            .and_then(|(k, _)| k.strip_prefix("@name[")?.strip_suffix(']'))
            .unwrap_or_else(|| panic!("{name} was not registered to bpftrace: {components:?}"));
        for s in c["series"].as_array().expect("series") {
            let family = s["family"].as_str().expect("family");
            let Some(counter) = ComponentCounter::ALL.iter().find(|c| c.label() == family) else { continue };
            let label = match counter.dimension() {
                Some(d) => {
                    let value = s["labels"][d.name].as_str().expect("dimension label");
                    (0..16).find(|code| (d.decode)(*code) == Some(value)).expect("a code")
                }
                None => 0,
            };
            let key = format!("@count[{id}, {}, {label}]", counter.code());
            assert_eq!(map_value(&components, &key), s["value"].as_u64().expect("value"), "{name} {family}");
            compared += 1;
        }
    }
    assert!(compared >= 20, "{compared} component series compared");
    for stage in 1..=4 {
        assert!(stages.iter().any(|l| l.starts_with(&format!("@self_ns[{stage}]:"))), "stage {stage}: {stages:?}");
    }

    // The demo registered its queries before bpftrace attached; the registrations were replayed
    // to it exactly once, with the names the summary uses.
    let names = names.finish();
    for (name, q) in queries {
        let key = format!("@queries[{}, {name}]", q["id"]);
        assert_eq!(map_value(&names, &key), 1, "{key} in {names:?}");
    }
    assert_eq!(names.iter().filter(|(k, _)| k.starts_with("@queries[")).count(), 4);
}

/// Arguments of a semaphore-gated probe are not evaluated while nothing is attached, and are
/// evaluated once per hit while bpftrace is attached, which sees every hit.
#[test]
fn semaphore_gates_argument_evaluation() {
    let _serial = serial();
    let target = bin("semaphore-target");
    let n = 10_000u64;
    let scratch = Scratch::new("sema");

    // Detached: the gate is open from the start.
    let gate = scratch.path().join("open");
    std::fs::write(&gate, b"").expect("gate");
    let out = run_ok(Command::new(&target).arg(&gate).arg(n.to_string()));
    let detached = summary(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(detached["evaluated"], 0, "arguments were evaluated with nobody attached");
    assert_eq!(detached["semaphore"], 0);

    // Attached.
    let child = GatedDemo::start_target(&target, &[&n.to_string()]);
    let bt = Bpftrace::attach(
        child.pid(),
        &format!(
            "usdt:{}:eventflux:ingest {{ @hits = count(); @sum = sum(arg1); @stream = max(arg0); }}",
            target.display()
        ),
    );
    let attached = summary(&child.open_and_wait());
    let maps = bt.finish();
    assert!(attached["semaphore"].as_u64().expect("semaphore") >= 1, "bpftrace did not raise the semaphore");
    assert_eq!(attached["evaluated"], n);
    assert_eq!(map_value(&maps, "@hits"), n);
    assert_eq!(map_value(&maps, "@sum"), n * (n - 1) / 2);
    assert_eq!(map_value(&maps, "@stream"), 7);
}

/// The CPU attribution one-liner of docs/probes.md: bpftrace's own profile probe reads the
/// engine threads' CPU slots (their addresses from `cpu_slot`). The demo's query 0 costs three
/// times query 1 per event (`--filter-cost`), nearly all in the filter stage, and measures each
/// query's thread CPU time itself: over a whole run inside bpftrace's attachment, the samples
/// of the two queries split as the demo measured (±20%, some five sigma of the sampling noise
/// here), and the expensive query's are nearly all in its filter. The documented 99 Hz is
/// raised to 997 Hz for the test: at 99 Hz a few-second run gives the cheaper query some 150
/// samples on a busy machine, and the ratio's sampling noise alone (±10% at one sigma) would
/// fail a fair tolerance one run in twenty.
#[test]
fn the_cpu_slot_one_liner_splits_samples_by_query() {
    let _serial = serial();
    let demo = bin("eventflux-demo");
    let target = GatedDemo::start(
        &demo,
        &["--queries", "2", "--streams", "1", "--filter-cost", "6000,2000", "--events", "300000"],
    );
    let pid = target.pid().to_string();
    let documented = documented_one_liners(&demo).pop().expect("the CPU one-liner");
    assert!(documented.contains("profile:hz:99 "), "the CPU one-liner's rate changed: {documented}");
    let script = documented.replace("PID", &pid).replace("profile:hz:99 ", "profile:hz:997 ");
    let bt = Bpftrace::attach(target.pid(), &script);
    let summary = summary(&target.open_and_wait());
    let maps = bt.finish();
    // Keys: (query id, state); state 0 is outside any query (the query id is then 0), 1 the
    // query's own code, 2 + Stage code a stage: filter is 3.
    let samples = |query: u64, filter_only: bool| -> u64 {
        maps.iter()
            .filter_map(|(k, v)| {
                let (q, state) = k.strip_prefix("@cpu[")?.strip_suffix(']')?.split_once(", ")?;
                let (q, state): (u64, u64) = (q.parse().ok()?, state.parse().ok()?);
                let counted = q == query && if filter_only { state == 3 } else { state >= 1 };
                counted.then(|| v.parse::<u64>().ok()).flatten()
            })
            .sum()
    };
    let measured = |q: &str| summary["queries"][q]["cpu_s"].as_f64().unwrap_or_else(|| panic!("{q}: {summary}"));
    let (expensive, cheap) = (samples(0, false), samples(1, false));
    let ratio = expensive as f64 / cheap as f64;
    let truth = measured("q0_length") / measured("q1_length_batch");
    assert!(
        (ratio / truth - 1.0).abs() <= 0.20,
        "query samples {expensive}:{cheap} = {ratio:.2}, the demo measured {truth:.2}: {maps:?}"
    );
    let filter = samples(0, true);
    eprintln!(
        "query samples {expensive}:{cheap} = {ratio:.3}, the demo measured {truth:.3}; query 0's filter {filter}"
    );
    assert!(filter as f64 / expensive as f64 > 0.9, "query 0's filter has {filter} of its {expensive} samples");
}
