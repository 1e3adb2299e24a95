//! USDT argument specs (the third string of a stapsdt note) in typed form.
//!
//! A spec is whitespace-separated arguments, each `[-]SIZE@OPERAND` with the operand in AT&T
//! syntax, exactly as the compiler printed it for the probe's asm: `-4@$5` (constant),
//! `8@%rdx`, `-4@%eax`, `1@%cl` (register or sub-register), `-4@-1204(%rbp)` (memory at
//! register + offset), `1@-96(%rbp,%rax,8)` (base + index × scale + offset) and `8@sym(%rip)` or
//! `8@sym+16(%rip)` (a global, as GCC prints one). A negative size means signed. Old (v1/v2)
//! notes may omit `SIZE@`; such arguments are read as 8-byte unsigned, as SystemTap does.
//!
//! Only x86-64 operands are understood: an unknown register name is an error, so a note from
//! another architecture is reported instead of misread.

use std::fmt;

use serde::Serialize;

/// A general-purpose register of x86-64, as numbered in the ISA (rax = 0 … r15 = 15), or rip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Gpr {
    Rax,
    Rcx,
    Rdx,
    Rbx,
    Rsp,
    Rbp,
    Rsi,
    Rdi,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
}

/// The sixteen general-purpose registers in ISA order (`rip` is not one of them).
pub const GPRS: [Gpr; 16] = [
    Gpr::Rax,
    Gpr::Rcx,
    Gpr::Rdx,
    Gpr::Rbx,
    Gpr::Rsp,
    Gpr::Rbp,
    Gpr::Rsi,
    Gpr::Rdi,
    Gpr::R8,
    Gpr::R9,
    Gpr::R10,
    Gpr::R11,
    Gpr::R12,
    Gpr::R13,
    Gpr::R14,
    Gpr::R15,
];

/// Names of the first eight registers at each width: 64, 32, 16, low 8 bits.
const LEGACY_NAMES: [[&str; 4]; 8] = [
    ["rax", "eax", "ax", "al"],
    ["rcx", "ecx", "cx", "cl"],
    ["rdx", "edx", "dx", "dl"],
    ["rbx", "ebx", "bx", "bl"],
    ["rsp", "esp", "sp", "spl"],
    ["rbp", "ebp", "bp", "bpl"],
    ["rsi", "esi", "si", "sil"],
    ["rdi", "edi", "di", "dil"],
];
const HIGH_BYTE_NAMES: [&str; 4] = ["ah", "ch", "dh", "bh"];
const WIDTHS: [u8; 4] = [8, 4, 2, 1];

/// A register operand: which register, and which part of it the compiler named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Register {
    /// The full register.
    pub gpr: Gpr,
    /// Bytes named: 8 (`%rax`), 4 (`%eax`), 2 (`%ax`) or 1 (`%al`, `%ah`).
    pub width: u8,
    /// `%ah`, `%ch`, `%dh`, `%bh`: bits 8–15 rather than 0–7.
    pub high_byte: bool,
}

impl Register {
    /// The full 64-bit register.
    pub const fn full(gpr: Gpr) -> Self {
        Register { gpr, width: 8, high_byte: false }
    }

    /// Parses a register name without the `%`.
    pub fn from_name(name: &str) -> Option<Self> {
        if name == "rip" {
            return Some(Register::full(Gpr::Rip));
        }
        if let Some(i) = HIGH_BYTE_NAMES.iter().position(|n| *n == name) {
            return Some(Register { gpr: GPRS[i], width: 1, high_byte: true });
        }
        for (i, names) in LEGACY_NAMES.iter().enumerate() {
            if let Some(w) = names.iter().position(|n| *n == name) {
                return Some(Register { gpr: GPRS[i], width: WIDTHS[w], high_byte: false });
            }
        }
        // r8..r15 with an optional d/w/b suffix.
        let rest = name.strip_prefix('r')?;
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (digits, suffix) = rest.split_at(digits_end);
        if digits.is_empty() || digits.starts_with('0') {
            return None;
        }
        let n: usize = digits.parse().ok()?;
        if !(8..=15).contains(&n) {
            return None;
        }
        let width = match suffix {
            "" => 8,
            "d" => 4,
            "w" => 2,
            "b" => 1,
            _ => return None,
        };
        Some(Register { gpr: GPRS[n], width, high_byte: false })
    }

    /// The name the compiler printed, without the `%`.
    pub fn name(&self) -> String {
        let idx = self.gpr as usize;
        if self.gpr == Gpr::Rip {
            return "rip".to_owned();
        }
        let w = WIDTHS.iter().position(|w| *w == self.width).unwrap_or(0);
        if self.high_byte {
            return HIGH_BYTE_NAMES.get(idx).copied().unwrap_or("?").to_owned();
        }
        if idx < 8 { LEGACY_NAMES[idx][w].to_owned() } else { format!("r{idx}{}", ["", "d", "w", "b"][w]) }
    }
}

/// Where an argument's value is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Location {
    /// `$imm`: the value itself.
    Const { value: i64 },
    /// `%reg`: the value is in a register (or the named part of one).
    Reg { reg: Register },
    /// `off(%base)`: the value is in memory at `base + off`.
    Deref { base: Register, offset: i64 },
    /// `off(%base,%index,scale)` or `off(,%index,scale)`: memory at
    /// `base + index × scale + off`.
    Indexed { base: Option<Register>, index: Register, scale: u8, offset: i64 },
    /// `sym+off(%rip)`: a global variable; its address must be resolved from the symbol table.
    Global { symbol: String, offset: i64 },
}

/// One argument: its size and signedness, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgSpec {
    /// Size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Sign-extend when widening.
    pub signed: bool,
    /// Where the value is.
    pub location: Location,
}

/// Why an argument spec could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {index} `{arg}`: {reason}")]
pub struct ArgSpecError {
    /// Zero-based position of the argument in the spec.
    pub index: usize,
    /// The argument's text.
    pub arg: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a whole spec string (possibly empty: a probe without arguments).
pub fn parse_args(spec: &str) -> Result<Vec<ArgSpec>, ArgSpecError> {
    spec.split_ascii_whitespace()
        .enumerate()
        .map(|(index, arg)| parse_arg(arg).map_err(|reason| ArgSpecError { index, arg: arg.to_owned(), reason }))
        .collect()
}

/// Parses one argument, e.g. `-4@-1204(%rbp)`.
pub fn parse_arg(arg: &str) -> Result<ArgSpec, String> {
    let (size, signed, operand) = match arg.split_once('@') {
        Some((size, operand)) => {
            let (signed, digits) = match size.strip_prefix('-') {
                Some(d) => (true, d),
                None => (false, size),
            };
            let size = match digits {
                "1" => 1,
                "2" => 2,
                "4" => 4,
                "8" => 8,
                _ => return Err(format!("size `{size}` is not one of 1, 2, 4, 8 (negative for signed)")),
            };
            (size, signed, operand)
        }
        None => (8, false, arg),
    };
    Ok(ArgSpec { size, signed, location: parse_operand(operand)? })
}

fn parse_operand(op: &str) -> Result<Location, String> {
    if let Some(imm) = op.strip_prefix('$') {
        return parse_int(imm).map(|value| Location::Const { value }).ok_or_else(|| format!("bad constant `{op}`"));
    }
    if let Some(name) = op.strip_prefix('%') {
        return parse_reg(name).map(|reg| Location::Reg { reg });
    }
    let Some(open) = op.find('(') else {
        return Err("expected $constant, %register or offset(%register)".to_owned());
    };
    let Some(inner) = op[open + 1..].strip_suffix(')') else {
        return Err("unbalanced parentheses".to_owned());
    };
    let disp = &op[..open];
    let parts: Vec<&str> = inner.split(',').collect();
    match parts.as_slice() {
        [base] => {
            let base = parse_percent_reg(base)?;
            if disp.is_empty() || parse_int(disp).is_some() {
                let offset = if disp.is_empty() { 0 } else { parse_int(disp).unwrap_or(0) };
                return Ok(Location::Deref { base, offset });
            }
            if base.gpr != Gpr::Rip {
                return Err(format!("symbolic offset `{disp}` is only valid relative to %rip"));
            }
            let (symbol, offset) = parse_symbol(disp)?;
            Ok(Location::Global { symbol, offset })
        }
        // `(%base,%index)` means scale 1.
        [base, index] | [base, index, _] => {
            let offset =
                if disp.is_empty() { 0 } else { parse_int(disp).ok_or_else(|| format!("bad offset `{disp}`"))? };
            let base = if base.is_empty() { None } else { Some(parse_percent_reg(base)?) };
            let index = parse_percent_reg(index)?;
            let scale = match parts.get(2).copied().unwrap_or("1") {
                "1" => 1,
                "2" => 2,
                "4" => 4,
                "8" => 8,
                other => return Err(format!("scale `{other}` is not one of 1, 2, 4, 8")),
            };
            Ok(Location::Indexed { base, index, scale, offset })
        }
        _ => Err(format!("bad memory operand `{op}`")),
    }
}

fn parse_percent_reg(s: &str) -> Result<Register, String> {
    match s.strip_prefix('%') {
        Some(name) => parse_reg(name),
        None => Err(format!("expected a %register, found `{s}`")),
    }
}

fn parse_reg(name: &str) -> Result<Register, String> {
    Register::from_name(name).ok_or_else(|| format!("unknown x86-64 register `%{name}`"))
}

fn parse_symbol(disp: &str) -> Result<(String, i64), String> {
    let split = disp[1..].find(['+', '-']).map(|i| i + 1);
    let (symbol, offset) = match split {
        Some(i) => {
            let off = &disp[i..];
            let off = off.strip_prefix('+').unwrap_or(off);
            (&disp[..i], parse_int(off).ok_or_else(|| format!("bad offset in `{disp}`"))?)
        }
        None => (disp, 0),
    };
    let valid = symbol.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '.')
        && symbol.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$');
    if !valid {
        return Err(format!("bad symbol `{symbol}`"));
    }
    Ok((symbol.to_owned(), offset))
}

/// Decimal or `0x` hexadecimal, optionally negative.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let magnitude = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse::<u64>().ok()?,
        None => return None,
    };
    if neg {
        // -9223372036854775808 is representable; anything larger in magnitude is not.
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

impl fmt::Display for Register {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.name())
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Const { value } => write!(f, "${value}"),
            Location::Reg { reg } => write!(f, "{reg}"),
            Location::Deref { base, offset: 0 } => write!(f, "({base})"),
            Location::Deref { base, offset } => write!(f, "{offset}({base})"),
            Location::Indexed { base, index, scale, offset } => {
                if *offset != 0 {
                    write!(f, "{offset}")?;
                }
                match base {
                    Some(base) => write!(f, "({base},{index},{scale})"),
                    None => write!(f, "(,{index},{scale})"),
                }
            }
            Location::Global { symbol, offset: 0 } => write!(f, "{symbol}(%rip)"),
            Location::Global { symbol, offset } => write!(f, "{symbol}{offset:+}(%rip)"),
        }
    }
}

impl fmt::Display for ArgSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.signed { "-" } else { "" };
        write!(f, "{sign}{}@{}", self.size, self.location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(gpr: Gpr, width: u8) -> Register {
        Register { gpr, width, high_byte: false }
    }

    #[test]
    fn every_form_compilers_emit() {
        let cases: Vec<(&str, ArgSpec)> = vec![
            ("-4@$5", ArgSpec { size: 4, signed: true, location: Location::Const { value: 5 } }),
            ("8@$-1", ArgSpec { size: 8, signed: false, location: Location::Const { value: -1 } }),
            ("8@$0x10", ArgSpec { size: 8, signed: false, location: Location::Const { value: 16 } }),
            ("8@%rdx", ArgSpec { size: 8, signed: false, location: Location::Reg { reg: reg(Gpr::Rdx, 8) } }),
            ("-4@%eax", ArgSpec { size: 4, signed: true, location: Location::Reg { reg: reg(Gpr::Rax, 4) } }),
            ("1@%cl", ArgSpec { size: 1, signed: false, location: Location::Reg { reg: reg(Gpr::Rcx, 1) } }),
            (
                "1@%ah",
                ArgSpec {
                    size: 1,
                    signed: false,
                    location: Location::Reg { reg: Register { gpr: Gpr::Rax, width: 1, high_byte: true } },
                },
            ),
            ("2@%r9w", ArgSpec { size: 2, signed: false, location: Location::Reg { reg: reg(Gpr::R9, 2) } }),
            ("-4@%r15d", ArgSpec { size: 4, signed: true, location: Location::Reg { reg: reg(Gpr::R15, 4) } }),
            ("1@%sil", ArgSpec { size: 1, signed: false, location: Location::Reg { reg: reg(Gpr::Rsi, 1) } }),
            (
                "-4@-1204(%rbp)",
                ArgSpec { size: 4, signed: true, location: Location::Deref { base: reg(Gpr::Rbp, 8), offset: -1204 } },
            ),
            (
                "8@(%rsp)",
                ArgSpec { size: 8, signed: false, location: Location::Deref { base: reg(Gpr::Rsp, 8), offset: 0 } },
            ),
            (
                "1@-96(%rbp,%rax,8)",
                ArgSpec {
                    size: 1,
                    signed: false,
                    location: Location::Indexed {
                        base: Some(reg(Gpr::Rbp, 8)),
                        index: reg(Gpr::Rax, 8),
                        scale: 8,
                        offset: -96,
                    },
                },
            ),
            (
                "4@(,%rcx,4)",
                ArgSpec {
                    size: 4,
                    signed: false,
                    location: Location::Indexed { base: None, index: reg(Gpr::Rcx, 8), scale: 4, offset: 0 },
                },
            ),
            (
                "-4@counter(%rip)",
                ArgSpec { size: 4, signed: true, location: Location::Global { symbol: "counter".into(), offset: 0 } },
            ),
            (
                "8@table+16(%rip)",
                ArgSpec { size: 8, signed: false, location: Location::Global { symbol: "table".into(), offset: 16 } },
            ),
            ("%rdi", ArgSpec { size: 8, signed: false, location: Location::Reg { reg: reg(Gpr::Rdi, 8) } }),
        ];
        for (text, want) in cases {
            let got = parse_arg(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(got, want, "{text}");
            if text.contains('@') {
                assert_eq!(parse_arg(&got.to_string()).as_ref(), Ok(&got), "round trip of {text}");
            }
        }
    }

    #[test]
    fn whole_spec() {
        let args = parse_args("4@%eax 8@%rcx  -4@-20(%rbp)\t8@$3").unwrap();
        assert_eq!(args.len(), 4);
        assert_eq!(args[2].location, Location::Deref { base: reg(Gpr::Rbp, 8), offset: -20 });
        assert!(parse_args("").unwrap().is_empty());
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        for bad in [
            "3@%eax",
            "4@%xmm0",
            "8@x0",
            "4@[sp, 12]",
            "4@$",
            "4@$abc",
            "4@-8(%rbp",
            "4@8(%rbp,%rax,3)",
            "4@foo(%rbp)",
            "4@%r16",
            "4@%r08",
            "@%rax",
            "4@(%rax,%rbx,2,1)",
            "8@$99999999999999999999",
        ] {
            assert!(parse_arg(bad).is_err(), "{bad} should not parse");
        }
        let err = parse_args("8@%rax 4@%foo").unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.to_string(), "argument 1 `4@%foo`: unknown x86-64 register `%foo`");
    }
}
