//! The layout holds (ARCHITECTURE.md, "Layers and rules"):
//! - the sans-IO core stays sans-IO (docs/DESIGN.md §7): nothing under
//!   `src/core/` (outside its tests) reaches for sockets, files, processes,
//!   threads, the async runtime, the clock or OS randomness, or for a module
//!   of the shell (`crate::` outside `crate::core`). Time comes in as `now`,
//!   randomness from the seeded generator the shell hands over;
//! - no import cycles: among the children of every folder (each child with
//!   everything below it), the "uses" graph has no cycle. A folder's own
//!   `mod.rs` may use its children and they it;
//! - `unsafe` lives in `src/sys/` only: every other top-level module, and the
//!   binary, says `#![forbid(unsafe_code)]`;
//! - no source file has more than 800 lines outside its tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What only the shell may use, and why the core must not.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the async runtime"),
    ("UdpSocket", "sockets"),
    ("TcpStream", "sockets"),
    ("TcpListener", "sockets"),
    ("UnixStream", "sockets"),
    ("std::fs", "files"),
    ("std::process", "processes"),
    ("std::thread", "threads"),
    ("std::env", "the environment"),
    ("Instant::now(", "the clock (take `now`)"),
    ("SystemTime::now(", "the wall clock (take `unix_now`)"),
    ("OsRng", "OS randomness (use the seeded core RNG)"),
    ("thread_rng", "OS randomness (use the seeded core RNG)"),
    ("getrandom", "OS randomness (use the seeded core RNG)"),
    ("nix::", "system calls"),
    ("libc::", "system calls"),
];

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            into.push(path);
        }
    }
}

/// The lines of `source` that are not test code, as numbered code with
/// comments and blank lines left out (see [`lines_outside_tests`]).
fn non_test_lines(path: &Path, source: &str) -> Vec<(usize, String)> {
    lines_outside_tests(path, source)
        .into_iter()
        .filter_map(|(number, line)| {
            let code = line.split("//").next().unwrap_or_default().trim();
            (!code.is_empty()).then(|| (number, code.to_string()))
        })
        .collect()
}

/// The lines of `source` that are not test code, as they are: an item
/// after `#[cfg(test)]` is skipped to its closing brace (or its `;`), and a
/// file named `tests.rs` is all test code.
fn lines_outside_tests<'a>(path: &Path, source: &'a str) -> Vec<(usize, &'a str)> {
    if path.file_name().is_some_and(|name| name == "tests.rs") {
        return Vec::new();
    }
    let mut kept = Vec::new();
    let mut skipping = false;
    let mut depth: i64 = 0;
    let mut entered = false;
    for (number, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default().trim();
        if !skipping && code == "#[cfg(test)]" {
            (skipping, depth, entered) = (true, 0, false);
            continue;
        }
        if skipping {
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            entered |= code.contains('{');
            if (entered && depth <= 0) || (!entered && code.ends_with(';')) {
                skipping = false;
            }
            continue;
        }
        kept.push((number + 1, line));
    }
    kept
}

#[test]
fn the_core_uses_no_io_no_clock_no_os_randomness_and_no_shell_module() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() > 20, "found only {} core files", files.len());
    let mut violations = Vec::new();
    for path in &files {
        let source = std::fs::read_to_string(path).expect("readable source");
        let shown = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(path);
        for (number, code) in non_test_lines(path, &source) {
            for (pattern, what) in FORBIDDEN {
                if code.contains(pattern) {
                    violations.push(format!("{}:{number}: {what}: {code}", shown.display()));
                }
            }
            let mut rest = code.as_str();
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                if !after.starts_with("core") {
                    violations.push(format!(
                        "{}:{number}: a shell module: {code}",
                        shown.display()
                    ));
                }
                rest = after;
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the sans-IO core reaches outside itself:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_scanner_sees_through_test_modules_only() {
    let source = "use std::net::SocketAddr;\n\
                  fn work(now: Instant) {}\n\
                  #[cfg(test)]\n\
                  mod tests {\n\
                      fn t() { let now = Instant::now(); }\n\
                  }\n\
                  fn late() { let _ = std::fs::read(\"x\"); }\n\
                  #[cfg(test)]\n\
                  mod more;\n\
                  fn after() {}\n";
    let kept: Vec<String> = non_test_lines(Path::new("x.rs"), source)
        .into_iter()
        .map(|(_, code)| code)
        .collect();
    assert!(kept.iter().any(|code| code.contains("std::fs")), "{kept:?}");
    assert!(
        !kept.iter().any(|code| code.contains("Instant::now")),
        "{kept:?}"
    );
    assert!(
        kept.iter().any(|code| code.contains("fn after")),
        "{kept:?}"
    );
}

/// The project's source directory.
fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Where `path` is shown in a failure: relative to the project.
fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The root of the binary's module tree, told apart from the library's
/// (whose root is the empty path).
const BIN_ROOT: &str = "<bin>";

/// The module a source file is: `src/core/node/mod.rs` → `core::node`,
/// `src/main.rs` and `src/cli/…` → the binary's tree.
fn module_of(file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src_dir()).expect("a file under src/");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    if parts.first().map(String::as_str) == Some("main") {
        parts[0] = BIN_ROOT.to_string();
    } else if parts.first().map(String::as_str) == Some("cli") {
        parts.insert(0, BIN_ROOT.to_string());
    }
    parts
}

/// Every module path `code` names, written from the module `module`:
/// `crate::…`, `agentnet::…` (the library, from the binary), `super::…` and
/// `self::…`, with one level of `{a, b::c}` groups expanded.
fn named_paths(module: &[String], code: &str) -> Vec<Vec<String>> {
    let crate_root: Vec<String> = match module.first() {
        Some(first) if first == BIN_ROOT => vec![BIN_ROOT.to_string()],
        _ => Vec::new(),
    };
    let bytes = code.as_bytes();
    let is_ident = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let starts_word = at == 0 || !(is_ident(bytes[at - 1]) || bytes[at - 1] == b':');
        let Some(rest) = code.get(at..) else {
            at += 1;
            continue;
        };
        let prefix = ["crate::", "agentnet::", "super::", "self::"]
            .into_iter()
            .find(|prefix| starts_word && rest.starts_with(prefix));
        let Some(prefix) = prefix else {
            at += 1;
            continue;
        };
        let mut base = match prefix {
            "crate::" => crate_root.clone(),
            "agentnet::" => Vec::new(),
            "self::" => module.to_vec(),
            _ => module[..module.len().saturating_sub(1)].to_vec(),
        };
        let mut cursor = at + prefix.len();
        // Further `super::` steps.
        while code[cursor..].starts_with("super::") {
            base.pop();
            cursor += "super::".len();
        }
        let end = code[cursor..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |offset| cursor + offset);
        let path = code[cursor..end].trim_end_matches(':');
        let mut segments = base.clone();
        segments.extend(path.split("::").filter(|s| !s.is_empty()).map(String::from));
        if code[cursor..]
            .get(path.len()..)
            .is_some_and(|after| after.starts_with("::{"))
        {
            let open = cursor + path.len() + 3;
            let close = code[open..]
                .find('}')
                .map_or(code.len(), |offset| open + offset);
            for item in code[open..close].split(',') {
                let item = item.trim();
                let mut expanded = segments.clone();
                expanded.extend(
                    item.split("::")
                        .map(|s| s.trim_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(String::from),
                );
                found.push(expanded);
            }
            at = close;
        } else {
            found.push(segments);
            at = end.max(at + 1);
        }
    }
    found
}

/// The longest prefix of `path` that is a module of the tree.
fn resolve(modules: &BTreeSet<Vec<String>>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|len| path[..len].to_vec())
        .find(|prefix| modules.contains(prefix))
}

/// One "uses" edge between two children of a folder, with where it is seen.
type Edges = BTreeMap<(String, String), String>;

/// For every folder, the edges between its children: a use in the subtree
/// of one child of something in the subtree of another.
fn sibling_edges(files: &[PathBuf]) -> BTreeMap<Vec<String>, Edges> {
    let modules: BTreeSet<Vec<String>> = files.iter().map(|file| module_of(file)).collect();
    let mut folders: BTreeMap<Vec<String>, Edges> = BTreeMap::new();
    for file in files {
        let source = std::fs::read_to_string(file).expect("readable source");
        let from = module_of(file);
        for (number, code) in non_test_lines(file, &source) {
            for path in named_paths(&from, &code) {
                let Some(to) = resolve(&modules, &path) else {
                    continue;
                };
                let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
                if common == from.len() || common == to.len() {
                    continue; // a module and its own ancestor or descendant
                }
                folders
                    .entry(from[..common].to_vec())
                    .or_default()
                    .entry((from[common].clone(), to[common].clone()))
                    .or_insert_with(|| format!("{}:{number}: {code}", shown(file)));
            }
        }
    }
    folders
}

/// The cycles of one folder's graph: each strongly connected set of more
/// than one child (Tarjan's algorithm).
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    struct Search<'a> {
        edges: &'a Edges,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Search<'a> {
        fn visit(&mut self, node: &'a str) {
            let number = self.index.len();
            self.index.insert(node, number);
            self.low.insert(node, number);
            self.stack.push(node);
            let next: Vec<&'a str> = self
                .edges
                .keys()
                .filter(|(from, _)| from == node)
                .map(|(_, to)| to.as_str())
                .collect();
            for to in next {
                if !self.index.contains_key(to) {
                    self.visit(to);
                    let low = self.low[node].min(self.low[to]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&to) {
                    let low = self.low[node].min(self.index[to]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut set = Vec::new();
                while let Some(member) = self.stack.pop() {
                    set.push(member.to_string());
                    if member == node {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    self.found.push(set);
                }
            }
        }
    }
    let mut search = Search {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    let nodes: BTreeSet<&str> = edges
        .keys()
        .flat_map(|(a, b)| [a.as_str(), b.as_str()])
        .collect();
    for node in nodes {
        if !search.index.contains_key(node) {
            search.visit(node);
        }
    }
    search.found
}

#[test]
fn no_module_imports_in_a_cycle() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let graph = sibling_edges(&files);
    let edge_count: usize = graph.values().map(BTreeMap::len).sum();
    assert!(
        edge_count > 50,
        "the module graph has only {edge_count} edges: the path scanner sees too little"
    );
    let mut report = Vec::new();
    for (folder, edges) in graph {
        for cycle in cycles(&edges) {
            let folder = if folder.is_empty() {
                "crate".to_string()
            } else {
                folder.join("::")
            };
            report.push(format!("in {folder}: {}", cycle.join(" ↔ ")));
            for ((from, to), seen) in &edges {
                if cycle.contains(from) && cycle.contains(to) {
                    report.push(format!("    {from} → {to}: {seen}"));
                }
            }
        }
    }
    assert!(report.is_empty(), "import cycles:\n{}", report.join("\n"));
}

#[test]
fn the_cycle_check_sees_sibling_cycles_and_ignores_parents() {
    let edges: Edges = [
        (("node".into(), "peer".into()), "a".into()),
        (("peer".into(), "context".into()), "b".into()),
        (("context".into(), "node".into()), "c".into()),
        (("node".into(), "wire".into()), "d".into()),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&edges), vec![vec!["context", "node", "peer"]]);
    let module: Vec<String> = vec!["core".into(), "peer".into(), "context".into()];
    let named = named_paths(
        &module,
        "use crate::core::{node::Event, wire::{self, X}}; super::table::Slot; self::x",
    );
    assert!(
        named.contains(&vec!["core".into(), "node".into(), "Event".into()]),
        "{named:?}"
    );
    assert!(
        named.contains(&vec![
            "core".into(),
            "peer".into(),
            "table".into(),
            "Slot".into()
        ]),
        "{named:?}"
    );
    let bin = named_paths(
        &[BIN_ROOT.to_string(), "cli".into()],
        "agentnet::agent::run(crate::cli::x)",
    );
    assert!(bin.contains(&vec!["agent".into(), "run".into()]), "{bin:?}");
    assert!(
        bin.contains(&vec![BIN_ROOT.into(), "cli".into(), "x".into()]),
        "{bin:?}"
    );
}

#[test]
fn unsafe_code_is_forbidden_outside_sys() {
    let src = src_dir();
    let mut missing = Vec::new();
    let mut roots = vec![src.join("main.rs")];
    for entry in std::fs::read_dir(&src).expect("readable src/") {
        let path = entry.expect("directory entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        if name == "sys" || name == "lib.rs" || name == "main.rs" || name == "cli" {
            continue;
        }
        roots.push(if path.is_dir() {
            path.join("mod.rs")
        } else {
            path
        });
    }
    assert!(roots.len() > 8, "found only {roots:?}");
    for root in roots {
        let source = std::fs::read_to_string(&root).expect("readable module root");
        if !source
            .lines()
            .any(|line| line.trim() == "#![forbid(unsafe_code)]")
        {
            missing.push(shown(&root));
        }
    }
    assert!(
        missing.is_empty(),
        "these modules do not say #![forbid(unsafe_code)]: {missing:?}"
    );
}

#[test]
fn no_source_file_is_longer_than_800_lines_outside_its_tests() {
    let mut files = Vec::new();
    rust_files(&src_dir(), &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let source = std::fs::read_to_string(file).expect("readable source");
            let lines = lines_outside_tests(file, &source).len();
            (lines > 800).then(|| format!("{}: {lines} lines", shown(file)))
        })
        .collect();
    assert!(long.is_empty(), "files longer than 800 lines: {long:#?}");
}
