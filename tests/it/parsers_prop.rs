//! Property tests over the note and argument-spec parsers: whatever the bytes, they return a
//! value or an error, never panic; and every spec they print parses back to itself.

use eventflux_probe::find::usdt::argspec::{self, ArgSpec, Gpr, Location, Register};
use eventflux_probe::find::usdt::notes;
use proptest::prelude::*;

/// This test binary itself carries stapsdt notes (it links usdt-markers and fires a probe).
fn own_binary() -> Vec<u8> {
    usdt_markers::probe!(ingest(1, 2));
    std::fs::read(std::env::current_exe().expect("exe")).expect("read exe")
}

fn note_section_range(data: &[u8]) -> std::ops::Range<usize> {
    // Find the section by its first note's owner string; good enough to aim mutations.
    let at = data.windows(8).position(|w| w == b"stapsdt\0").expect("a stapsdt note");
    at.saturating_sub(12)..(at + 4096).min(data.len())
}

fn gpr() -> impl Strategy<Value = Gpr> {
    prop::sample::select(argspec::GPRS.to_vec())
}

fn register() -> impl Strategy<Value = Register> {
    (gpr(), prop::sample::select(vec![1u8, 2, 4, 8]), any::<bool>()).prop_map(|(gpr, width, high)| {
        let high_byte = high && width == 1 && matches!(gpr, Gpr::Rax | Gpr::Rcx | Gpr::Rdx | Gpr::Rbx);
        Register { gpr, width, high_byte }
    })
}

fn full(g: Gpr) -> Register {
    Register { gpr: g, width: 8, high_byte: false }
}

fn location() -> impl Strategy<Value = Location> {
    prop_oneof![
        any::<i64>().prop_map(|value| Location::Const { value }),
        register().prop_map(|reg| Location::Reg { reg }),
        (gpr(), any::<i32>()).prop_map(|(g, o)| Location::Deref { base: full(g), offset: i64::from(o) }),
        (prop::option::of(gpr()), gpr(), prop::sample::select(vec![1u8, 2, 4, 8]), any::<i32>()).prop_map(
            |(b, i, scale, o)| Location::Indexed { base: b.map(full), index: full(i), scale, offset: i64::from(o) }
        ),
        ("[a-z_][a-z0-9_]{0,12}", any::<i32>())
            .prop_map(|(symbol, o)| Location::Global { symbol, offset: i64::from(o) }),
    ]
}

fn arg_spec() -> impl Strategy<Value = ArgSpec> {
    (prop::sample::select(vec![1u8, 2, 4, 8]), any::<bool>(), location()).prop_map(|(size, signed, location)| ArgSpec {
        size,
        signed,
        location,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn arg_specs_round_trip(specs in prop::collection::vec(arg_spec(), 0..12)) {
        let text = specs.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ");
        prop_assert_eq!(argspec::parse_args(&text), Ok(specs));
    }

    #[test]
    fn arg_spec_parser_never_panics(s in "\\PC{0,40}") {
        let _ = argspec::parse_args(&s);
    }

    #[test]
    fn arg_spec_parser_never_panics_on_near_misses(s in "-?[1248]@[-$%(),0-9a-z+x ]{0,24}") {
        let _ = argspec::parse_args(&s);
    }

    #[test]
    fn note_parser_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = notes::parse(&data);
        let mut elf = b"\x7fELF\x02\x01\x01\0".to_vec();
        elf.extend_from_slice(&data);
        let _ = notes::parse(&elf);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A real binary with bytes of its note section (or headers) overwritten.
    #[test]
    fn note_parser_never_panics_on_mutated_binaries(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..16),
        in_headers in any::<bool>(),
    ) {
        thread_local! {
            static BINARY: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(own_binary());
        }
        BINARY.with_borrow_mut(|data| {
            let range = if in_headers { 0..256.min(data.len()) } else { note_section_range(data) };
            // Edit in place and restore afterwards: the binary is megabytes, the edits are few.
            let mut undo = Vec::new();
            for (at, byte) in edits {
                let i = range.start + at.index(range.len());
                undo.push((i, data[i]));
                data[i] = byte;
            }
            let _ = notes::parse(data);
            for (i, byte) in undo.into_iter().rev() {
                data[i] = byte;
            }
        });
    }
}

#[test]
fn unmutated_binary_parses() {
    let parsed = notes::parse(&own_binary()).expect("parse own binary");
    assert!(parsed.notes.iter().any(|n| n.provider == "eventflux" && n.name == "ingest"));
}
