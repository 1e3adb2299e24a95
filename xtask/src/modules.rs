//! `cargo xtask modules`: the module graph of the crates whose layout is meant to be read (the
//! observer, the markers the engine links, the ABI, the demo), and a check that it has no
//! cycle. Run by `cargo xtask test` with the lints.
//!
//! The model: a module is a file (`a/b.rs` is `a::b`, `a/mod.rs` is `a`; a module written
//! inline in a file is part of that file). A file depends on another when its code (comments
//! left out, so intra-doc links do not count) names a path into it: `crate::a::b::Item`,
//! `super::…`, or for a `mod.rs` a child by its name. The crate root's re-exports (`pub use`)
//! are its facade and do not count, nor do paths to `#[macro_export]` macros (they sit at the
//! root). A path resolves to the deepest module it
//! names, so `crate::kernel::Kernel` is a use of `kernel` (its `mod.rs`). Two checks:
//! - files: no cycle at all, in any crate;
//! - stages (the top-level modules of the observer: `find`, `kernel`, …): no cycle either, so
//!   the data path reads in one direction. The order found is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// The crates checked, by their `src` folder.
const CRATES: &[&str] = &["eventflux-probe/src", "usdt-markers/src", "eventflux-abi/src", "eventflux-demo/src"];

pub fn run(print: bool) -> Result<()> {
    let mut failures = Vec::new();
    for krate in CRATES {
        let graph = graph(&crate::root().join(krate))?;
        for cycle in cycles(&graph) {
            failures.push(format!("{krate}: files import each other in a circle: {}", cycle.join(" → ")));
        }
        let stages = stages(&graph);
        for cycle in cycles(&stages) {
            failures.push(format!("{krate}: top-level modules import each other in a circle: {}", cycle.join(" → ")));
        }
        if print {
            println!("{krate}:");
            for (stage, uses) in &stages {
                let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
                println!("  {stage:<10} uses {}", if uses.is_empty() { "-".into() } else { uses.join(", ") });
            }
        }
    }
    if !failures.is_empty() {
        bail!("module cycles (docs/architecture.md says how the stages depend):\n{}", failures.join("\n"));
    }
    eprintln!("modules: no import cycle in {}", CRATES.join(", "));
    Ok(())
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module → the modules its code names.
fn graph(src: &Path) -> Result<Graph> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    let module_of = |p: &Path| -> String {
        let rel = p.strip_prefix(src).unwrap_or(p).with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            parts.pop();
        }
        parts.join("::")
    };
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let me = module_of(file);
        let is_dir_module = file.file_stem().is_some_and(|s| s == "mod" || s == "lib" || s == "main");
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        // The crate root's re-exports (`pub use`) are the crate's facade, not a use of what they
        // name (a path through the facade, `crate::Item`, resolves to the root: counting both
        // would make every re-exported module a circle with the root). A `#[macro_export]`
        // macro sits at the root wherever it is written, so a path to one (`crate::name!`)
        // names no module.
        let code = if me.is_empty() { without_reexports(&strip_comments(&text)) } else { strip_comments(&text) };
        let mut uses = BTreeSet::new();
        for path in paths(&code).into_iter().filter(|p| !p.last().is_some_and(|l| l.ends_with('!'))) {
            let absolute: Vec<String> = match path.first().map(String::as_str) {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    // `super` of `a::b` (file a/b.rs) is `a`; of a mod.rs `a` it is a's parent.
                    let mut base: Vec<String> = me.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
                    let mut rest = &path[..];
                    while rest.first().is_some_and(|s| s == "super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                    base.extend(rest.iter().cloned());
                    base
                }
                Some(first) if is_dir_module => {
                    let child = if me.is_empty() { first.to_owned() } else { format!("{me}::{first}") };
                    if !modules.contains(&child) {
                        continue;
                    }
                    let mut p: Vec<String> = me.split("::").filter(|s| !s.is_empty()).map(String::from).collect();
                    p.extend(path.iter().cloned());
                    p
                }
                _ => continue,
            };
            // The deepest module the path names.
            let mut target = None;
            for n in (1..=absolute.len()).rev() {
                let candidate = absolute[..n].join("::");
                if modules.contains(&candidate) {
                    target = Some(candidate);
                    break;
                }
            }
            let target = target.unwrap_or_default();
            if target != me && !(target.is_empty() && absolute.is_empty()) {
                uses.insert(target);
            }
        }
        graph.entry(me).or_default().extend(uses);
    }
    Ok(graph)
}

/// The graph of top-level modules (the crate root left out).
fn stages(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut out = Graph::new();
    for (from, uses) in graph {
        let f = top(from);
        if f.is_empty() {
            continue;
        }
        let entry = out.entry(f.clone()).or_default();
        for to in uses {
            let t = top(to);
            if !t.is_empty() && t != f {
                entry.insert(t);
            }
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            // `src/bin` holds separate programs, not modules of the crate.
            if p.file_name().is_some_and(|n| n != "bin") {
                walk(&p, out)?;
            }
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

/// `code` without its `pub use` and `pub(crate) use` statements, each taken whole (up to its
/// `;`, however rustfmt wrapped it).
fn without_reexports(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    loop {
        let at = ["pub use ", "pub(crate) use "].iter().filter_map(|k| rest.find(k)).min();
        let Some(at) = at else { break };
        out.push_str(&rest[..at]);
        rest = rest[at..].find(';').map_or("", |end| &rest[at + end + 1..]);
    }
    out.push_str(rest);
    out
}

/// The text without `//` comments (doc comments included) and `/* */` blocks; string literals
/// kept as they are (a `//` inside one cuts the rest of its line, which only hides paths).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_block = false;
    for line in text.lines() {
        let mut l = line;
        loop {
            if in_block {
                match l.find("*/") {
                    Some(i) => {
                        l = &l[i + 2..];
                        in_block = false;
                    }
                    None => {
                        l = "";
                        break;
                    }
                }
            }
            let block = l.find("/*");
            let line_comment = l.find("//");
            match (block, line_comment) {
                (Some(b), Some(c)) if c < b => {
                    out.push_str(&l[..c]);
                    l = "";
                    break;
                }
                (Some(b), _) => {
                    out.push_str(&l[..b]);
                    l = &l[b + 2..];
                    in_block = true;
                }
                (None, Some(c)) => {
                    out.push_str(&l[..c]);
                    l = "";
                    break;
                }
                (None, None) => break,
            }
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Every path of two or more segments in `code`, `use` groups expanded
/// (`use crate::{a::B, c}` gives `crate::a::B` and `crate::c`).
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            let mut seg = code[start..j].to_owned();
            if code[j..].starts_with('!') {
                seg.push('!');
            }
            segs.push(seg);
            if code[j..].starts_with("::") {
                j += 2;
                if code[j..].starts_with('{') {
                    // A group: each comma-separated member continues the prefix.
                    let end = matching_brace(code, j).unwrap_or(code.len());
                    for member in split_top(&code[j + 1..end.saturating_sub(1).max(j + 1)]) {
                        let member = member.trim();
                        if member.is_empty() || member == "self" || member == "*" {
                            continue;
                        }
                        let mut sub = paths(member);
                        if sub.is_empty() {
                            sub.push(vec![member.split_whitespace().next().unwrap_or("").to_owned()]);
                        }
                        for member_path in sub {
                            let mut p = segs.clone();
                            p.extend(member_path);
                            out.push(p);
                        }
                    }
                    j = end;
                    break;
                }
                if j < bytes.len() && ident(bytes[j]) {
                    continue;
                }
            }
            break;
        }
        if segs.len() >= 2 {
            out.push(segs);
        }
        i = j.max(i + 1);
    }
    out
}

/// Index just past the `}` matching the `{` at `open`.
fn matching_brace(code: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (k, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(open + k + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// `a::{b, c}, d` split at the commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Strongly connected components of more than one module, each as a path that closes.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    // Tarjan's algorithm, iteration order fixed by the BTreeMap so the report is stable.
    struct State<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.reverse();
                comp.push(comp[0].clone());
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_groups_expand() {
        let p = paths("use crate::{kernel::{Kernel, load::L}, find::{self, usdt::Note}, model};");
        let names: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert!(names.contains(&"crate::kernel::Kernel".to_owned()), "{names:?}");
        assert!(names.contains(&"crate::kernel::load::L".to_owned()), "{names:?}");
        assert!(names.contains(&"crate::find::usdt::Note".to_owned()), "{names:?}");
        assert!(names.contains(&"crate::model".to_owned()), "{names:?}");
    }

    #[test]
    fn reexports_are_left_out_whole() {
        let code = "pub use a::{\n    B,\n    C,\n};\nuse crate::d::E;\npub(crate) use f::G;\n";
        let names: Vec<String> = paths(&without_reexports(code)).iter().map(|p| p.join("::")).collect();
        assert_eq!(names, vec!["crate::d::E"]);
    }

    #[test]
    fn a_circle_is_found() {
        let mut g = Graph::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("c".into());
        g.entry("c".into()).or_default().insert("a".into());
        g.entry("d".into()).or_default().insert("a".into());
        assert_eq!(cycles(&g), vec![vec!["a", "b", "c", "a"]]);
        g.get_mut("c").expect("c").clear();
        assert!(cycles(&g).is_empty());
    }

    #[test]
    fn comments_do_not_count() {
        let code =
            strip_comments("/// [`M`](crate::model::M)\nlet x = 1; // crate::export::y\n/* crate::a::b */ crate::c::d");
        let names: Vec<String> = paths(&code).iter().map(|p| p.join("::")).collect();
        assert_eq!(names, vec!["crate::c::d"]);
    }
}
