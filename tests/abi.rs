//! The probe ABI is written once in docs/probes.md: the document, the code's table
//! (`usdt_markers::PROBES`) and the notes in a built binary must agree.

use std::collections::BTreeMap;
use std::path::Path;

use integration_tests::{bin, readelf_notes};
use usdt_markers::{ArgKind, PROBES};

/// Probe name → [(arg name, type)] from the doc's table rows: "| `name` | `a: u32`, `b: u64` | …".
fn documented() -> BTreeMap<String, Vec<(String, String)>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/probes.md");
    let doc = std::fs::read_to_string(&path).expect("docs/probes.md");
    let mut probes = BTreeMap::new();
    let table = doc.split("\n## Probes\n").nth(1).expect("a '## Probes' section");
    let table = table.split("\n## ").next().unwrap_or(table);
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let name = cells[1].trim_matches('`').to_owned();
        let args = cells[2]
            .split(',')
            .map(|a| {
                let a = a.trim().trim_matches('`');
                let (n, t) = a.split_once(':').unwrap_or_else(|| panic!("{name}: bad argument cell {a:?}"));
                (n.trim().to_owned(), t.trim().to_owned())
            })
            .collect();
        assert!(probes.insert(name.clone(), args).is_none(), "{name} documented twice");
    }
    probes
}

#[test]
fn doc_and_code_agree() {
    let doc = documented();
    let code: BTreeMap<String, Vec<(String, String)>> = PROBES
        .iter()
        .map(|p| (p.name.to_owned(), p.args.iter().map(|a| (a.name.to_owned(), a.kind.name().to_owned())).collect()))
        .collect();
    assert_eq!(doc, code, "docs/probes.md and usdt_markers::PROBES differ");

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
