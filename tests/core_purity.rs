//! The sans-IO core stays sans-IO (DESIGN.md §7): nothing under `src/core/`
//! (outside its tests) reaches for sockets, files, processes, threads, the
//! async runtime, the clock or OS randomness, or for a module of the shell
//! (`crate::` outside `crate::core`). Time comes in as `now`, randomness
//! from the seeded generator the shell hands over.

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

/// The lines of `source` that are not test code: an item after
/// `#[cfg(test)]` is skipped to its closing brace (or its `;`), and a
/// file named `tests.rs` is all test code. Comments are skipped too.
fn non_test_lines(path: &Path, source: &str) -> Vec<(usize, String)> {
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
        if !code.is_empty() {
            kept.push((number + 1, code.to_string()));
        }
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
