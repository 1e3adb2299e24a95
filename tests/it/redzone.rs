//! The 5-byte-nop probe site is safe for a leaf function's red zone while attached, and the
//! hazard it guards against is real on this kernel (so this test can fail).

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::{Bpftrace, Scratch, bin, map_value, wait_exec, wait_with_deadline};

#[test]
fn an_attached_site_keeps_the_red_zone() {
    let target = bin("redzone-target");
    let n = 20_000u64;
    let scratch = Scratch::new("redzone");
    let gate = scratch.path().join("go");
    let mut child =
        Command::new(&target).arg(&gate).arg(n.to_string()).stdout(Stdio::piped()).spawn().expect("start target");
    wait_exec(child.id(), &target);
    let t = target.display();
    let bt = Bpftrace::attach(
        child.id(),
        &format!(
            "usdt:{t}:eventflux_test:redzone_guarded {{ @guarded = count(); }} \
             usdt:{t}:eventflux_test:redzone_bare {{ @bare = count(); }}"
        ),
    );
    std::fs::write(&gate, b"").expect("gate");
    let status = wait_with_deadline(&mut child, Duration::from_secs(120));
    assert!(status.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut out).expect("read");
    let maps = bt.finish();
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");

    // Both sites fired every time.
    assert_eq!(map_value(&maps, "@guarded"), n);
    assert_eq!(map_value(&maps, "@bare"), n);
    // The kernel's trampoline really writes below the stack pointer: the bare site loses data.
    assert!(v["bare_corrupted"].as_u64().expect("bare") > 0, "the unguarded nop5 kept its red zone: {v}");
    // The site as usdt-markers emits it never does.
    assert_eq!(v["guarded_corrupted"], 0, "{v}");
}
