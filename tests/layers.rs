//! The daemon crate's layer order, enforced. lib.rs's `# Layout` section lists the layers,
//! lowest first; this test reads that list (so the documentation and the check cannot
//! drift) and fails when a module imports from a layer above its own, when an import cycle
//! joins two top-level modules, or when a module is in no layer. The crates below the
//! daemon (keyward-core, keyward-store) need no test: Cargo refuses an upward dependency.
//!
//! It reads source text, not the compiler's view: `crate::a::b`, `crate::{a, b::c}` and,
//! in main.rs, `keyward::a`, outside comments. A path spelled through a re-export or a
//! `use` alias is seen under the name written, which is what a reader sees too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import of `to` by a file of module `from`.
#[derive(Debug, Clone)]
struct Edge {
    from: String,
    to: String,
    file: PathBuf,
    line: usize,
    text: String,
}

/// `module -> layer index`, from lib.rs lines such as ``//! 3. **credentials**: [`creds`] — …``.
fn layers(lib_rs: &str) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut of = BTreeMap::new();
    let mut names = Vec::new();
    let mut in_layout = false;
    for line in lib_rs.lines() {
        let Some(doc) = line.strip_prefix("//!") else { continue };
        let doc = doc.trim();
        if doc.starts_with("# ") {
            in_layout = doc == "# Layout";
            continue;
        }
        if !in_layout {
            continue;
        }
        let Some((num, rest)) = doc.split_once(". **") else { continue };
        let Ok(n) = num.parse::<usize>() else { continue };
        let (name, modules) = rest.split_once("**").unwrap_or((rest, ""));
        names.push(format!("{n}. {name}"));
        // Module names are the `code` spans (intra-doc links or not) before the first " — ".
        let modules = modules.split(" — ").next().unwrap_or("");
        for m in modules.split('`').skip(1).step_by(2) {
            of.insert(m.to_string(), n);
        }
    }
    (of, names)
}

/// Strips `//` comments (doc comments included) and string contents are left alone: an
/// import never hides in a string, and a false hit there would show in the message.
fn code_of(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level module a file under src/ belongs to (`proxy/route.rs` → `proxy`).
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// Every module named after `prefix` on a line: `crate::a`, `crate::{a, b::c}`.
fn imported(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        // `crate::` must start a path, not end an identifier such as `keyward_crate::`.
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            let inner = &group[..end];
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_segment(&inner[start..j]));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            out.push(first_segment(&inner[start..]));
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 1;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return i;
                }
            }
            _ => {}
        }
    }
    s.len()
}

fn first_segment(s: &str) -> String {
    s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn edges(src: &Path) -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
        let from = module_of(&rel);
        if from == "lib" {
            continue;
        }
        let prefix = if from == "main" { "keyward::" } else { "crate::" };
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        // Joined `use` statements span lines; join each statement before scanning.
        let mut stmt = String::new();
        let mut stmt_line = 0;
        for (i, line) in text.lines().enumerate() {
            let code = code_of(line);
            if stmt.is_empty() {
                stmt_line = i + 1;
            }
            stmt.push_str(code);
            stmt.push(' ');
            let open = stmt.matches('{').count() > stmt.matches('}').count();
            if open && stmt.trim_start().starts_with("use ") {
                continue;
            }
            for to in imported(&stmt, prefix) {
                if to != from {
                    out.push(Edge {
                        from: from.clone(),
                        to,
                        file: Path::new("src").join(&rel),
                        line: stmt_line,
                        text: stmt.split_whitespace().collect::<Vec<_>>().join(" "),
                    });
                }
            }
            stmt.clear();
        }
    }
    out
}

/// The violations: modules in no layer, imports of a higher layer, cycles.
fn check(lib_rs: &str, edges: &[Edge], modules: &BTreeSet<String>) -> Vec<String> {
    let (layer, names) = layers(lib_rs);
    let mut problems = Vec::new();
    if layer.is_empty() {
        return vec![
            "lib.rs has no `# Layout` section with numbered layers like ``//! 1. **name**: [`module`]``".into()
        ];
    }
    for m in modules {
        if !layer.contains_key(m) {
            problems.push(format!("module `{m}` is in no layer: add it to lib.rs's `# Layout` list"));
        }
    }
    for e in edges {
        let (Some(&a), Some(&b)) = (layer.get(&e.from), layer.get(&e.to)) else { continue };
        if b > a {
            problems.push(format!(
                "{}:{}: `{}` (layer {}) imports `{}` (layer {}), a layer above its own: `{}`\n    \
                 move what it needs down, or pass it in from above",
                e.file.display(),
                e.line,
                e.from,
                names.get(a.saturating_sub(1)).map_or("?", String::as_str),
                e.to,
                names.get(b.saturating_sub(1)).map_or("?", String::as_str),
                e.text
            ));
        }
    }
    problems.extend(cycles(edges));
    problems
}

/// Import cycles between top-level modules (each reported once, with one import per hop).
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for e in edges {
        graph.entry(e.from.as_str()).or_default().entry(e.to.as_str()).or_insert(e);
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for &start in graph.keys() {
        // Depth-first search for a path back to `start`.
        let mut stack: Vec<(&str, Vec<&Edge>)> = vec![(start, Vec::new())];
        let mut visited = BTreeSet::new();
        while let Some((node, path)) = stack.pop() {
            for (&next, &edge) in graph.get(node).into_iter().flatten() {
                let mut p = path.clone();
                p.push(edge);
                if next == start {
                    let mut members: Vec<&str> = p.iter().map(|e| e.from.as_str()).collect();
                    members.sort_unstable();
                    if seen.insert(members) {
                        let hops: Vec<String> = p
                            .iter()
                            .map(|e| {
                                format!("    {} -> {} at {}:{}: `{}`", e.from, e.to, e.file.display(), e.line, e.text)
                            })
                            .collect();
                        out.push(format!("import cycle:\n{}", hops.join("\n")));
                    }
                } else if visited.insert(next) {
                    stack.push((next, p));
                }
            }
        }
    }
    out
}

fn top_modules(src: &Path) -> BTreeSet<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.iter().filter_map(|f| f.strip_prefix(src).ok()).map(module_of).filter(|m| m != "lib").collect()
}

#[test]
fn no_module_imports_from_a_layer_above_it_and_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let problems = check(&lib_rs, &edges(&src), &top_modules(&src));
    assert!(problems.is_empty(), "the layer order in src/lib.rs does not hold:\n\n{}\n", problems.join("\n\n"));
}

// The checker itself, on a made-up tree: each rule fires with a message that names the
// offending import.

const LIB: &str = "//! # Layout\n//!\n//! 1. **base**: [`a`] — x\n//! 2. **top**: [`b`], [`c`] — y\n//!\n//! # Other\n";

fn edge(from: &str, to: &str, text: &str) -> Edge {
    Edge { from: from.into(), to: to.into(), file: PathBuf::from(format!("src/{from}.rs")), line: 7, text: text.into() }
}

fn mods(m: &[&str]) -> BTreeSet<String> {
    m.iter().map(|s| s.to_string()).collect()
}

#[test]
fn an_upward_import_is_named() {
    let p = check(LIB, &[edge("a", "b", "use crate::b::Thing;")], &mods(&["a", "b", "c"]));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("src/a.rs:7: `a` (layer 1. base) imports `b` (layer 2. top)"), "{}", p[0]);
    assert!(p[0].contains("use crate::b::Thing;"), "{}", p[0]);
}

#[test]
fn a_cycle_within_one_layer_is_named_hop_by_hop() {
    let p =
        check(LIB, &[edge("b", "c", "use crate::c::X;"), edge("c", "b", "use crate::b::Y;")], &mods(&["a", "b", "c"]));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("import cycle:"), "{}", p[0]);
    assert!(p[0].contains("b -> c at src/b.rs:7: `use crate::c::X;`"), "{}", p[0]);
    assert!(p[0].contains("c -> b at src/c.rs:7: `use crate::b::Y;`"), "{}", p[0]);
}

#[test]
fn downward_and_same_layer_imports_pass() {
    let p = check(LIB, &[edge("b", "a", "use crate::a;"), edge("b", "c", "use crate::c;")], &mods(&["a", "b", "c"]));
    assert!(p.is_empty(), "{p:?}");
}

#[test]
fn a_module_in_no_layer_is_named() {
    let p = check(LIB, &[], &mods(&["a", "b", "c", "d"]));
    assert_eq!(p, vec!["module `d` is in no layer: add it to lib.rs's `# Layout` list".to_string()]);
}

#[test]
fn grouped_and_nested_imports_are_all_seen() {
    assert_eq!(imported("use crate::{a::X, b::{c, d}, self};", "crate::"), vec!["a", "b"]);
    assert_eq!(imported("let x = crate::c::f(crate::a::g());", "crate::"), vec!["c", "a"]);
    assert_eq!(imported("use keyward_crate::a;", "crate::"), Vec::<String>::new());
    assert_eq!(code_of("use crate::a; // crate::b"), "use crate::a; ");
}
