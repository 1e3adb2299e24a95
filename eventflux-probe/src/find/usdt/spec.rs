//! Turning a parsed argument spec into the form the kernel programs read (`ArgLoc`): register
//! names become byte offsets into the saved user registers (`struct pt_regs` on x86-64).

use eventflux_probe_common::{ARG_CONST, ARG_DEREF, ARG_INDEXED, ARG_REG, ArgLoc, MAX_ARGS, SiteSpec};

use super::argspec::{ArgSpec, Gpr, Location, Register};

/// Offset of a register in x86-64 `struct pt_regs` (r15 first, then r14, …; see
/// arch/x86/include/asm/ptrace.h).
pub fn pt_regs_offset(gpr: Gpr) -> u16 {
    let slot = match gpr {
        Gpr::R15 => 0,
        Gpr::R14 => 1,
        Gpr::R13 => 2,
        Gpr::R12 => 3,
        Gpr::Rbp => 4,
        Gpr::Rbx => 5,
        Gpr::R11 => 6,
        Gpr::R10 => 7,
        Gpr::R9 => 8,
        Gpr::R8 => 9,
        Gpr::Rax => 10,
        Gpr::Rcx => 11,
        Gpr::Rdx => 12,
        Gpr::Rsi => 13,
        Gpr::Rdi => 14,
        Gpr::Rip => 16,
        Gpr::Rsp => 19,
    };
    slot * 8
}

fn reg_loc(reg: &Register) -> (u16, u8) {
    (pt_regs_offset(reg.gpr), if reg.high_byte { 8 } else { 0 })
}

/// The kernel form of one argument, or why it cannot be read from BPF.
pub fn arg_loc(spec: &ArgSpec) -> Result<ArgLoc, String> {
    let mut loc = ArgLoc { size: spec.size, signed: u8::from(spec.signed), ..ArgLoc::default() };
    match &spec.location {
        Location::Const { value } => {
            loc.kind = ARG_CONST;
            loc.val_off = *value;
        }
        Location::Reg { reg } => {
            loc.kind = ARG_REG;
            (loc.reg_off, loc.shift) = reg_loc(reg);
            // A sub-register names fewer bytes than the argument may claim; keep the smaller.
            loc.size = loc.size.min(reg.width);
        }
        Location::Deref { base, offset } => {
            loc.kind = ARG_DEREF;
            loc.reg_off = pt_regs_offset(base.gpr);
            loc.val_off = *offset;
        }
        Location::Indexed { base, index, scale, offset } => {
            loc.kind = ARG_INDEXED;
            match base {
                Some(b) => loc.reg_off = pt_regs_offset(b.gpr),
                None => loc.no_base = 1,
            }
            loc.idx_reg_off = pt_regs_offset(index.gpr);
            loc.scale = *scale;
            loc.val_off = *offset;
        }
        Location::Global { symbol, .. } => {
            return Err(format!("global `{symbol}`: rip-relative arguments are not supported"));
        }
    }
    Ok(loc)
}

/// The kernel form of a whole site.
pub fn site_spec(probe: u32, args: &[ArgSpec]) -> Result<SiteSpec, String> {
    if args.len() > MAX_ARGS {
        return Err(format!("{} arguments, more than the {MAX_ARGS} supported", args.len()));
    }
    let mut spec = SiteSpec { probe, arg_count: args.len() as u32, ..SiteSpec::default() };
    for (i, a) in args.iter().enumerate() {
        spec.args[i] = arg_loc(a).map_err(|e| format!("argument {i}: {e}"))?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::find::usdt::argspec::parse_args;

    #[test]
    fn register_offsets_follow_pt_regs() {
        assert_eq!(pt_regs_offset(Gpr::Rax), 80);
        assert_eq!(pt_regs_offset(Gpr::Rdi), 112);
        assert_eq!(pt_regs_offset(Gpr::Rsp), 152);
        let spec = site_spec(3, &parse_args("-4@%eax 8@-16(%rbp) 1@%ah 2@(%rdx,%rax,8) -4@$5").unwrap()).unwrap();
        assert_eq!(spec.arg_count, 5);
        assert_eq!(
            (spec.args[0].kind, spec.args[0].reg_off, spec.args[0].size, spec.args[0].signed),
            (ARG_REG, 80, 4, 1)
        );
        assert_eq!((spec.args[1].kind, spec.args[1].reg_off, spec.args[1].val_off), (ARG_DEREF, 32, -16));
        assert_eq!((spec.args[2].shift, spec.args[2].size), (8, 1));
        assert_eq!((spec.args[3].kind, spec.args[3].idx_reg_off, spec.args[3].scale), (ARG_INDEXED, 80, 8));
        assert_eq!((spec.args[4].kind, spec.args[4].val_off), (ARG_CONST, 5));
        assert!(site_spec(0, &parse_args("4@counter(%rip)").unwrap()).is_err());
    }
}
