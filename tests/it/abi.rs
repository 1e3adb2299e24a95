//! The probe ABI is written once in docs/probes.md: the document, the code's table
//! (`usdt_markers::PROBES`) and the notes in a built binary must agree.

use std::collections::BTreeMap;
use std::path::Path;

use integration_tests::{bin, readelf_notes};
use usdt_markers::{ArgKind, Class, PROBES};

/// One documented probe: class, arguments (name, type), and how many arguments stand before
/// the `;` that separates a series' keys from its values.
type Documented = (String, Vec<(String, String)>, usize);

/// Probe name → what the doc's table row says:
/// "| `name` | class | `a: u32`, `b: u32`; `c: u64` | … |".
fn documented() -> BTreeMap<String, Documented> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/probes.md");
    let doc = std::fs::read_to_string(&path).expect("docs/probes.md");
    let mut probes = BTreeMap::new();
    let table = doc.split("\n## Probes\n").nth(1).expect("a '## Probes' section");
    let table = table.split("\n## ").next().unwrap_or(table);
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 5 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let class = cells[2].to_owned();
        let (keys, values) = match cells[3].split_once(';') {
            Some((k, v)) => (k, v),
            None => (cells[3], ""),
        };
        let parse = |part: &str| -> Vec<(String, String)> {
            part.split(',')
                .map(|a| a.trim().trim_matches('`'))
                .filter(|a| !a.is_empty() && *a != "—")
                .map(|a| {
                    let (n, t) = a.split_once(':').unwrap_or_else(|| panic!("{name}: bad argument cell {a:?}"));
                    (n.trim().to_owned(), t.trim().to_owned())
                })
                .collect()
        };
        let mut args = parse(keys);
        let split = if cells[3].contains(';') { args.len() } else { usize::MAX };
        args.extend(parse(values));
        let split = if split == usize::MAX { args.len() } else { split };
        assert!(probes.insert(name.clone(), (class, args, split)).is_none(), "{name} documented twice");
    }
    probes
}

#[test]
fn doc_and_code_agree() {
    let doc = documented();
    let code: BTreeMap<String, Documented> = PROBES
        .iter()
        .map(|p| {
            let args = p.args.iter().map(|a| (a.name.to_owned(), a.kind.name().to_owned())).collect();
            // Keys are separated from values only for count and gauge probes.
            let split = if matches!(p.class, Class::Count | Class::Gauge) { p.keys } else { p.args.len() };
            (p.name.to_owned(), (p.class.name().to_owned(), args, split))
        })
        .collect();
    assert_eq!(doc, code, "docs/probes.md and the ABI table (eventflux_abi::PROBES) differ");

    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/probes.md")).expect("doc");
    assert!(
        text.contains(&format!("ABI version {}", usdt_markers::ABI_VERSION)),
        "docs/probes.md does not state ABI version {}",
        usdt_markers::ABI_VERSION
    );
}

#[test]
fn binary_notes_follow_the_abi() {
    let notes = readelf_notes(&bin("eventflux-demo"));
    // Every probe has a site in the engine, the control probes too (they never fire, but
    // observers attach to them).
    for p in PROBES {
        assert!(notes.iter().any(|n| n.name == p.name), "{} has no note in the demo", p.name);
    }
    for note in notes.iter().filter(|n| n.provider == usdt_markers::PROVIDER) {
        let def =
            PROBES.iter().find(|p| p.name == note.name).unwrap_or_else(|| panic!("{} is not in the ABI", note.name));
        let sizes: Vec<&str> = note.args.split_whitespace().map(|a| a.split('@').next().expect("size")).collect();
        let want: Vec<String> = def.args.iter().map(|a| a.kind.spec_size().to_string()).collect();
        assert_eq!(sizes, want, "{}: {}", note.name, note.args);
        for (a, spec) in def.args.iter().zip(note.args.split_whitespace()) {
            if a.kind == ArgKind::U32 {
                assert!(spec.starts_with("4@%e") || spec.starts_with("4@%r"), "{}: {spec}", note.name);
            }
        }
    }
}

/// docs/probes.md's "Codes" table lists every code enumeration of the ABI with exactly its
/// codes and labels.
#[test]
fn the_codes_table_is_the_abi() {
    use usdt_markers::abi::*;
    macro_rules! rows {
        ($($t:ident),*) => {
            vec![$(format!(
                "| {} | {} |",
                $t::NAME,
                $t::ALL.iter().map(|v| format!("{} `{}`", v.code(), v.label())).collect::<Vec<_>>().join(", ")
            )),*]
        };
    }
    let code = rows!(
        StreamRole,
        JunctionKind,
        WindowKind,
        ErrorKind,
        Protocol,
        ConnErrorKind,
        Stage,
        ComponentKind,
        Connector,
        TableKind,
        ErrorAction,
        DeliveryError,
        ErrorOrigin,
        TableOp,
        LookupResult,
        JoinSide,
        Duration,
        Direction,
        ComponentCounter,
        ComponentGauge,
        StoreKind,
        Outcome,
        ComponentOp
    );
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/probes.md")).expect("doc");
    let section = text.split("## Codes").nth(1).and_then(|s| s.split("\n## ").next()).expect("a Codes section");
    let documented: Vec<String> =
        section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| enum")).map(str::to_owned).collect();
    assert_eq!(documented, code, "docs/probes.md's Codes and the ABI's code enumerations differ");
}
