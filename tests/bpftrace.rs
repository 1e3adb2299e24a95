//! Interoperability with Debian's bpftrace on the real kernel: it attaches to our probes,
//! increments their semaphores, and sees exactly what the target did.

use std::process::Command;

use integration_tests::{Bpftrace, GatedDemo, Scratch, bin, map_value, run_ok};

/// `bpftrace -e 'usdt:BIN:eventflux:ingest { @ = sum(arg1) }'` reports exactly the number of
/// events the demo ingested, and one hit per chunk.
#[test]
fn bpftrace_counts_exactly_what_the_demo_ingested() {
    let demo = bin("eventflux-demo");
    // 100,003 events in chunks of 64 over 3 streams: the last chunk is short.
    let events = 100_003u64;
    let target = GatedDemo::start(&demo, &["--events", "100003", "--streams", "3", "--queries", "4", "--batch", "64"]);
    let script = format!(
        "usdt:{}:eventflux:ingest {{ @events = sum(arg1); @chunks = count(); }} \
         usdt:{}:eventflux:query_batch_start {{ @batches = count(); }} \
         usdt:{}:eventflux:query_register {{ @queries[arg0, str(arg1)] = count(); }}",
        demo.display(),
        demo.display(),
        demo.display()
    );
    let bt = Bpftrace::attach(target.pid(), &script);
    let summary: serde_json::Value = serde_json::from_str(target.open_and_wait().trim()).expect("summary JSON");
    let maps = bt.finish();

    assert_eq!(summary["events"], events);
    assert_eq!(map_value(&maps, "@events"), events);
    assert_eq!(map_value(&maps, "@chunks"), events.div_ceil(64));
    let batches: u64 = summary["queries"]
        .as_object()
        .expect("queries")
        .values()
        .map(|q| q["batches"].as_u64().expect("batches"))
        .sum();
    assert_eq!(map_value(&maps, "@batches"), batches);

    // The demo registered its queries before bpftrace attached; the registrations were replayed
    // to it exactly once, with the names the summary uses.
    for (name, q) in summary["queries"].as_object().expect("queries") {
        let key = format!("@queries[{}, {name}]", q["id"]);
        assert_eq!(map_value(&maps, &key), 1, "{key} in {maps:?}");
    }
    assert_eq!(maps.iter().filter(|(k, _)| k.starts_with("@queries[")).count(), 4);
}

/// Arguments of a semaphore-gated probe are not evaluated while nothing is attached, and are
/// evaluated once per hit while bpftrace is attached, which sees every hit.
#[test]
fn semaphore_gates_argument_evaluation() {
    let target = bin("semaphore-target");
    let n = 10_000u64;
    let scratch = Scratch::new("sema");

    // Detached: the gate is open from the start.
    let gate = scratch.path().join("open");
    std::fs::write(&gate, b"").expect("gate");
    let out = run_ok(Command::new(&target).arg(&gate).arg(n.to_string()));
    let detached: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(detached["evaluated"], 0, "arguments were evaluated with nobody attached");
    assert_eq!(detached["semaphore"], 0);

    // Attached.
    let gate = scratch.path().join("attached");
    let mut child = Command::new(&target)
        .arg(&gate)
        .arg(n.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start target");
    integration_tests::wait_exec(child.id(), &target);
    let bt = Bpftrace::attach(
        child.id(),
        &format!(
            "usdt:{}:eventflux:ingest {{ @hits = count(); @sum = sum(arg1); @stream = max(arg0); }}",
            target.display()
        ),
    );
    std::fs::write(&gate, b"").expect("gate");
    let status = integration_tests::wait_with_deadline(&mut child, std::time::Duration::from_secs(60));
    assert!(status.success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout).expect("read");
    let maps = bt.finish();
    let attached: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert!(attached["semaphore"].as_u64().expect("semaphore") >= 1, "bpftrace did not raise the semaphore");
    assert_eq!(attached["evaluated"], n);
    assert_eq!(map_value(&maps, "@hits"), n);
    assert_eq!(map_value(&maps, "@sum"), n * (n - 1) / 2);
    assert_eq!(map_value(&maps, "@stream"), 7);
}
