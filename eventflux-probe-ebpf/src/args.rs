//! The USDT argument interpreter: fetch argument N as the note's spec says, whichever register
//! or stack slot the compiler chose. The same job as libbpf's usdt.bpf.h, on our own spec type.

use aya_ebpf::helpers::generated::bpf_probe_read_user;
use aya_ebpf::programs::ProbeContext;
use eventflux_probe_common::{ARG_CONST, ARG_DEREF, ARG_INDEXED, ARG_REG, ArgLoc, MAX_ARGS, SiteSpec};

macro_rules! reg_readers {
    ($($off:literal),* $(,)?) => {
        /// A saved user register, by its byte offset in `struct pt_regs`.
        ///
        /// The verifier accepts context loads only at constant offsets, and `bpf_probe_read_kernel`
        /// at a variable offset costs a helper call per argument. So each register is read by
        /// its own one-instruction asm load at a constant offset: the compiler merged plain
        /// loads (even volatile ones, even out-of-line ones) into a single load at a computed
        /// address, which the verifier rejects.
        #[inline(always)]
        fn reg(ctx: &ProbeContext, off: u16) -> Option<u64> {
            let r = ctx.regs as *const u8;
            let v: u64;
            match off {
                $(
                    // SAFETY: an 8-byte load from the uprobe's context, the saved registers,
                    // at a constant offset inside `struct pt_regs`.
                    $off => unsafe {
                        core::arch::asm!(
                            concat!("{v} = *(u64 *)({r} + ", stringify!($off), ")"),
                            v = out(reg) v,
                            r = in(reg) r,
                            options(readonly, nostack, preserves_flags),
                        )
                    },
                )*
                _ => return None,
            }
            Some(v)
        }
    };
}

// r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi rip rsp
reg_readers!(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 128, 152);

#[inline(always)]
fn user(addr: u64, size: u8) -> Option<u64> {
    let mut v: u64 = 0;
    let len = (size as u32) & 0xf;
    if len == 0 || len > 8 {
        return None;
    }
    // SAFETY: the helper checks the user address; it writes at most `len` <= 8 bytes into `v`.
    let rc = unsafe { bpf_probe_read_user((&mut v as *mut u64).cast(), len, addr as *const _) };
    (rc == 0).then_some(v)
}

/// Argument `n` of the current hit, widened to 64 bits as its spec says.
#[inline(always)]
pub fn arg(ctx: &ProbeContext, spec: &SiteSpec, n: usize) -> Option<u64> {
    if n >= MAX_ARGS || n as u32 >= spec.arg_count {
        return None;
    }
    let a: &ArgLoc = &spec.args[n];
    let raw = match a.kind {
        ARG_CONST => a.val_off as u64,
        ARG_REG => reg(ctx, a.reg_off)? >> (a.shift & 63),
        ARG_DEREF => user(reg(ctx, a.reg_off)?.wrapping_add(a.val_off as u64), a.size)?,
        ARG_INDEXED => {
            let base = if a.no_base != 0 { 0 } else { reg(ctx, a.reg_off)? };
            let index = reg(ctx, a.idx_reg_off)?;
            let addr = base.wrapping_add(index.wrapping_mul(a.scale as u64)).wrapping_add(a.val_off as u64);
            user(addr, a.size)?
        }
        _ => return None,
    };
    let bits = 64u32.saturating_sub((a.size as u32) * 8) & 63;
    Some(if bits == 0 {
        raw
    } else if a.signed != 0 {
        (((raw << bits) as i64) >> bits) as u64
    } else {
        (raw << bits) >> bits
    })
}
