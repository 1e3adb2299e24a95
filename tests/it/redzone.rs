//! The 5-byte-nop probe site is safe for a leaf function's red zone while attached, and the
//! hazard it guards against is real on this kernel (so this test can fail).

use integration_tests::{Bpftrace, GatedDemo, bin, map_value, serial, summary};

#[test]
fn an_attached_site_keeps_the_red_zone() {
    let _serial = serial();
    let target = bin("redzone-target");
    let n = 20_000u64;
    let child = GatedDemo::start_target(&target, &[&n.to_string()]);
    let t = target.display();
    let bt = Bpftrace::attach(
        child.pid(),
        &format!(
            "usdt:{t}:eventflux_test:redzone_guarded {{ @guarded = count(); }} \
             usdt:{t}:eventflux_test:redzone_bare {{ @bare = count(); }}"
        ),
    );
    let v = summary(&child.open_and_wait());
    let maps = bt.finish();

    // Both sites fired every time.
    assert_eq!(map_value(&maps, "@guarded"), n);
    assert_eq!(map_value(&maps, "@bare"), n);
    // The kernel's trampoline really writes below the stack pointer: the bare site loses data.
    assert!(v["bare_corrupted"].as_u64().expect("bare") > 0, "the unguarded nop5 kept its red zone: {v}");
    // The site as usdt-markers emits it never does.
    assert_eq!(v["guarded_corrupted"], 0, "{v}");
}
