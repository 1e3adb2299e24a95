//! The probe site: a `nop` plus its SystemTap v3 note, emitted with stable `asm!`.
//!
//! Layout of a note (`NT_STAPSDT`, type 3, owner "stapsdt"): the address of the `nop`, the
//! link-time address of `.stapsdt.base` (tools compare it with the section's real address to
//! detect prelinking), the semaphore's address, then provider, name and argument spec as
//! NUL-terminated strings. The argument spec is written by the assembler itself: `{x:e}` expands
//! to whichever register the compiler chose, so the note always matches the code.
//!
//! The site is a 5-byte `nopl 0(%rax,%rax,1)`, not the 1-byte `nop` of `sys/sdt.h`: on a 5-byte
//! nop the kernel (6.x) replaces the uprobe's int3 trap with a call into its uprobe trampoline,
//! about a quarter cheaper per hit. That call pushes a return address at the user stack pointer,
//! i.e. into the 128-byte red zone below it, which a leaf function may be using (libbpf stopped
//! emitting nop5 sites for that reason). So the site moves the stack pointer 128 bytes down
//! around the nop (`lea`, which leaves the flags alone) and declares that it uses the stack, and
//! nothing in the red zone can be overwritten. `tests/it/redzone.rs` checks both halves on the real
//! kernel.
//!
//! Why the other details matter:
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

/// Assembler lines that move the stack pointer below the red zone, for the kernel's uprobe
/// trampoline to push into (see the module docs).
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_guard_enter {
    () => {
        "lea -128(%rsp), %rsp"
    };
}

/// Undoes [`__sdt_guard_enter`].
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_guard_leave {
    () => {
        "lea 128(%rsp), %rsp"
    };
}

/// The probe instruction, labelled `990` for the note: `nopl 0(%rax,%rax,1)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_nop5 {
    () => {
        "990: .byte 0x0f, 0x1f, 0x44, 0x00, 0x00"
    };
}

/// The note for the probe instruction labelled `990` before it, and `.stapsdt.base`.
/// `$semaphore` and `$function` are assembler operands (`{…}`) or `0`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_note {
    ($provider:expr, $name:expr, $args:expr, $semaphore:expr, $function:expr) => {
        concat!(
            ".pushsection .note.stapsdt,\"o\",\"note\",",
            $function,
            "\n",
            ".balign 4\n",
            ".4byte 992f-991f, 994f-993f, 3\n",
            "991: .asciz \"stapsdt\"\n",
            "992: .balign 4\n",
            "993: .8byte 990b\n",
            ".8byte _.stapsdt.base\n",
            ".8byte ",
            $semaphore,
            "\n",
            ".asciz \"",
            $provider,
            "\"\n",
            ".asciz \"",
            $name,
            "\"\n",
            ".asciz \"",
            $args,
            "\"\n",
            "994: .balign 4\n",
            ".popsection\n",
            ".ifndef _.stapsdt.base\n",
            ".pushsection .stapsdt.base,\"aGR\",\"progbits\",.stapsdt.base,comdat\n",
            ".weak _.stapsdt.base\n",
            ".hidden _.stapsdt.base\n",
            "_.stapsdt.base: .space 1\n",
            ".size _.stapsdt.base, 1\n",
            ".popsection\n",
            ".endif",
        )
    };
}

/// Emits one probe site. Must expand inside the function `site` of a module that defines
/// `SEMAPHORE`.
#[doc(hidden)]
#[macro_export]
macro_rules! __sdt_site {
    ($name:ident $(,)?) => {
        $crate::__sdt_site!(@emit $name, "",);
    };
    ($name:ident, $first:ident : $fkind:ident $(, $arg:ident : $kind:ident)* $(,)?) => {
        $crate::__sdt_site!(
            @emit $name,
            concat!($crate::__sdt_argspec!($fkind, $first), $(" ", $crate::__sdt_argspec!($kind, $arg),)*),
            $first $(, $arg)*
        );
    };
    (@emit $name:ident, $spec:expr, $($arg:ident),*) => {
        // SAFETY: a nop between two stack-pointer moves that cancel out; it reads its operands
        // and touches no memory or flags; the note sections are restored by popsection.
        unsafe {
            ::core::arch::asm!(
                $crate::__sdt_guard_enter!(),
                $crate::__sdt_nop5!(),
                $crate::__sdt_guard_leave!(),
                // The provider from the macro that defines `eventflux_abi::PROVIDER`: a template
                // takes literals only, not a `const`.
                $crate::__sdt_note!(
                    $crate::abi::__abi_provider!(),
                    stringify!($name),
                    $spec,
                    "{__semaphore}",
                    "{__function}"
                ),
                __semaphore = sym SEMAPHORE,
                __function = sym site,
                $($arg = in(reg) $arg,)*
                // `readonly`: a tracer dereferences string arguments while the nop executes, so
                // the bytes must be in memory. (The site is its own out-of-line function, so this
                // constrains nothing in the engine's code.) Not `nostack`: the site moves the
                // stack pointer, and the kernel's trampoline writes below it.
                options(att_syntax, readonly, preserves_flags),
            );
        }
    };
}
