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

/// A leaf routine: fill the red zone, pass a probe site (`$site` lines, then its note), count
/// the red-zone words that changed.
macro_rules! leaf {
    ($(#[$doc:meta])* $fn:ident, $probe:literal, $($site:expr),+) => {
        $(#[$doc])*
        #[inline(never)]
        fn $fn() -> u64 {
            let bad: u64;
            // SAFETY: writes only below the stack pointer, where no compiler data lives across a
            // block that is not `nostack`; restores any stack-pointer move it makes.
            unsafe {
                std::arch::asm!(
                    fill_red_zone!(),
                    $($site,)+
                    usdt_markers::__sdt_note!("eventflux_test", $probe, "", "0", "{f}"),
                    check_red_zone!(),
                    p = in(reg) PATTERN,
                    bad = out(reg) bad,
                    t = inout(reg) 0u64 => _,
                    f = sym $fn,
                    options(att_syntax),
                );
            }
            bad
        }
    };
}

leaf!(
    /// The site exactly as usdt-markers emits it.
    guarded,
    "redzone_guarded",
    usdt_markers::__sdt_guard_enter!(),
    usdt_markers::__sdt_nop5!(),
    usdt_markers::__sdt_guard_leave!()
);

leaf!(
    /// The same without the guard: what libbpf's nop5 sites did.
    bare,
    "redzone_bare",
    usdt_markers::__sdt_nop5!()
);

fn main() {
    let n = integration_tests::gated_iterations("redzone-target");
    let (mut g, mut b) = (0, 0);
    for _ in 0..n {
        g += u64::from(guarded() != 0);
        b += u64::from(bare() != 0);
    }
    println!("{{\"iterations\": {n}, \"guarded_corrupted\": {g}, \"bare_corrupted\": {b}}}");
}
