//! Every fuzz target's saved corpus (`fuzz/corpus/TARGET/`) and every fixed
//! crasher (`fuzz/regressions/TARGET/`) replayed through the same harness
//! the fuzzer runs (`fuzz/src/targets/`), as an ordinary test on stable
//! Rust: no libFuzzer, no nightly flags. A crasher that was fixed is copied
//! into `fuzz/regressions/TARGET/` so it can never come back unnoticed.

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code, unreachable_pub)]
mod agentnet_fuzz;

// The harness names its own pieces `crate::…` (it is a crate of its own
// under cargo-fuzz); here they are found through this import.
#[allow(unused_imports)]
use agentnet_fuzz::*;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Replays `kind/TARGET/*` for every target; returns how many inputs ran
/// per target. A panic names the target and the file.
fn replay(kind: &str) -> Vec<(&'static str, usize)> {
    let mut counts = Vec::new();
    for &(target, harness) in agentnet_fuzz::targets::ALL {
        let files = inputs(&fuzz_dir().join(kind).join(target));
        for file in &files {
            let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let outcome = std::panic::catch_unwind(|| harness(&bytes));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panicked on {}",
                file.display()
            );
        }
        counts.push((target, files.len()));
    }
    counts
}

#[test]
fn every_fuzz_target_replays_its_corpus_and_fixed_crashers_clean() {
    let corpus = replay("corpus");
    let regressions = replay("regressions");
    for ((target, saved), (_, fixed)) in corpus.iter().zip(&regressions) {
        println!("fuzz {target}: {saved} corpus inputs, {fixed} fixed crashers replayed");
    }
    let empty: Vec<&str> = corpus
        .iter()
        .filter(|(_, count)| *count == 0)
        .map(|(target, _)| *target)
        .collect();
    assert!(
        empty.is_empty(),
        "fuzz targets without a saved corpus: {empty:?}"
    );
}

#[test]
fn every_fuzz_target_is_built_by_cargo_fuzz() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for &(target, _) in agentnet_fuzz::targets::ALL {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz target {target} has no [[bin]] in fuzz/Cargo.toml"
        );
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{target}.rs"))
                .is_file(),
            "fuzz target {target} has no entry in fuzz/fuzz_targets/"
        );
    }
}
