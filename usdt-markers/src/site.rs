//! The probe site: a `nop` plus its SystemTap v3 note, emitted with stable `asm!`.
//!
//! Layout of a note (`NT_STAPSDT`, type 3, owner "stapsdt"): the address of the `nop`, the
//! link-time address of `.stapsdt.base` (tools compare it with the section's real address to
//! detect prelinking), the semaphore's address, then provider, name and argument spec as
//! NUL-terminated strings. The argument spec is written by the assembler itself: `{x:e}` expands
//! to whichever register the compiler chose, so the note always matches the code.
//!
//! Why the details matter:
//! - The note section is `SHF_LINK_ORDER` (`o`) to the site's own function: when the linker
//!   garbage-collects that function (a binary that never fires the probe), the note goes with
//!   it instead of surviving with an address that points nowhere.
//! - `.stapsdt.base` is flagged `R` (`SHF_GNU_RETAIN`): nothing references it from code, and
//!   `--gc-sections` would otherwise drop it and leave every note's base pointing nowhere.
//! - The compiler may duplicate an inlined site (loop unrolling, several callers); each copy gets
//!   its own note with the same semaphore, and tools attach to all of them.

/// Argument spec fragment for one argument: `4@%eax`, `8@%rdi`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_argspec {
    (u32, $arg:ident) => {
        concat!("4@{", stringify!($arg), ":e}")
    };
    (u64, $arg:ident) => {
        concat!("8@{", stringify!($arg), "}")
    };
    (str, $arg:ident) => {
        concat!("8@{", stringify!($arg), "}")
    };
}

/// Emits one probe site. Must expand inside the function `site` of a module that defines
/// `SEMAPHORE`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_site {
    ($name:ident, $first:ident : $fkind:ident $(, $arg:ident : $kind:ident)*) => {
        // SAFETY: a `nop` that reads its operands and touches no memory, flags or stack; the
        // pushsection/popsection pairs leave the assembler in the section it was in.
        unsafe {
            ::core::arch::asm!(
                "990: nop",
                ".pushsection .note.stapsdt,\"o\",\"note\",{__function}",
                ".balign 4",
                ".4byte 992f-991f, 994f-993f, 3",
                "991: .asciz \"stapsdt\"",
                "992: .balign 4",
                "993: .8byte 990b",
                ".8byte _.stapsdt.base",
                ".8byte {__semaphore}",
                ".asciz \"eventflux\"",
                concat!(".asciz \"", stringify!($name), "\""),
                concat!(
                    ".asciz \"",
                    $crate::__sdt_argspec!($fkind, $first),
                    $(" ", $crate::__sdt_argspec!($kind, $arg),)*
                    "\""
                ),
                "994: .balign 4",
                ".popsection",
                ".ifndef _.stapsdt.base",
                ".pushsection .stapsdt.base,\"aGR\",\"progbits\",.stapsdt.base,comdat",
                ".weak _.stapsdt.base",
                ".hidden _.stapsdt.base",
                "_.stapsdt.base: .space 1",
                ".size _.stapsdt.base, 1",
                ".popsection",
                ".endif",
                __semaphore = sym SEMAPHORE,
                __function = sym site,
                $first = in(reg) $first,
                $($arg = in(reg) $arg,)*
                // `readonly`: a tracer dereferences string arguments while the nop executes, so
                // the bytes must be in memory. (The site is its own out-of-line function, so this
                // constrains nothing in the engine's code.)
                options(att_syntax, readonly, nostack, preserves_flags),
            );
        }
    };
}
