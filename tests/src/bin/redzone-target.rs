//! Checks that an attached probe site leaves a leaf function's red zone alone.
//!
//! Two leaf routines, each one asm block: write a pattern into the 128 bytes below the stack
//! pointer (the x86-64 red zone, which a leaf function may use without moving the stack
//! pointer), pass a 5-byte-nop probe site, read the pattern back. `guarded` uses the site exactly
//! as usdt-markers emits it (stack pointer moved below the red zone around the nop); `bare` is
//! the nop alone. While a tracer is attached, the kernel's uprobe trampoline pushes a return
//! address at the stack pointer: the bare site loses the pattern, the guarded one must not.
//!
//! Usage: redzone-target GATE ITERATIONS. Prints {"iterations", "guarded_corrupted",
//! "bare_corrupted"}. Probes: provider `eventflux_test`, names `redzone_guarded`, `redzone_bare`.

use std::time::Duration;

const PATTERN: u64 = 0x1122_3344_5566_7788;

/// Writes `{p}` at three places in the red zone.
macro_rules! fill_red_zone {
    () => {
        "mov {p}, -8(%rsp)\nmov {p}, -64(%rsp)\nmov {p}, -128(%rsp)"
    };
}

/// Counts into `{bad}` the red-zone words that no longer hold `{p}` (`{t}` is scratch).
macro_rules! check_red_zone {
    () => {
        concat!(
            "xor {bad}, {bad}\n",
            "cmp {p}, -8(%rsp)\nsetne {t:l}\nadd {t}, {bad}\n",
            "cmp {p}, -64(%rsp)\nsetne {t:l}\nadd {t}, {bad}\n",
            "cmp {p}, -128(%rsp)\nsetne {t:l}\nadd {t}, {bad}",
        )
    };
}

/// Returns how many of the three red-zone words changed.
#[inline(never)]
fn guarded() -> u64 {
    let bad: u64;
    // SAFETY: writes only below the stack pointer, where no compiler data lives across a block
    // that is not `nostack`; restores the stack pointer it moves.
    unsafe {
        std::arch::asm!(
            fill_red_zone!(),
            usdt_markers::__sdt_guard_enter!(),
            usdt_markers::__sdt_nop5!(),
            usdt_markers::__sdt_guard_leave!(),
            usdt_markers::__sdt_note!("eventflux_test", "redzone_guarded", "", "0", "{f}"),
            check_red_zone!(),
            p = in(reg) PATTERN,
            bad = out(reg) bad,
            t = inout(reg) 0u64 => _,
            f = sym guarded,
            options(att_syntax),
        );
    }
    bad
}

/// The same without the guard: what libbpf's nop5 sites did.
#[inline(never)]
fn bare() -> u64 {
    let bad: u64;
    // SAFETY: as in `guarded`.
    unsafe {
        std::arch::asm!(
            fill_red_zone!(),
            usdt_markers::__sdt_nop5!(),
            usdt_markers::__sdt_note!("eventflux_test", "redzone_bare", "", "0", "{f}"),
            check_red_zone!(),
            p = in(reg) PATTERN,
            bad = out(reg) bad,
            t = inout(reg) 0u64 => _,
            f = sym bare,
            options(att_syntax),
        );
    }
    bad
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(gate), Some(n)) = (args.next(), args.next().and_then(|n| n.parse::<u64>().ok())) else {
        eprintln!("usage: redzone-target GATE ITERATIONS");
        std::process::exit(2);
    };
    while !std::path::Path::new(&gate).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut g, mut b) = (0, 0);
    for _ in 0..n {
        g += u64::from(guarded() != 0);
        b += u64::from(bare() != 0);
    }
    println!("{{\"iterations\": {n}, \"guarded_corrupted\": {g}, \"bare_corrupted\": {b}}}");
}
