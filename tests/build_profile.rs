//! The release build's profile-guided optimization (ARCHITECTURE.md,
//! "Profile-guided release builds"): `platform/pgo/rustc-wrapper.sh` hands
//! `platform/pgo/agentnet.profdata` to release compilations only, and this
//! toolchain's LLVM reads that profile. The tests build in the dev profile,
//! which never takes the profile, and a profile LLVM cannot read (damaged,
//! or in a format newer than its own) costs a release build no more than a
//! warning per crate, and the optimization: without these checks neither
//! that nor a wrapper handing it to the wrong builds would show.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn wrapper() -> PathBuf {
    repo().join("platform/pgo/rustc-wrapper.sh")
}

fn profile() -> PathBuf {
    repo().join("platform/pgo/agentnet.profdata")
}

/// What the wrapper runs for these arguments, with `echo` as the compiler.
fn wrapped(args: &[&str], pgo: Option<&str>) -> String {
    let mut command = Command::new(wrapper());
    command.arg("echo").args(args);
    match pgo {
        Some(value) => command.env("AGENTNET_PGO", value),
        None => command.env_remove("AGENTNET_PGO"),
    };
    let output = command.output().expect("run platform/pgo/rustc-wrapper.sh");
    assert!(output.status.success(), "the wrapper failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// (case, the compiler's arguments, AGENTNET_PGO, whether the profile is
/// handed over)
const CASES: &[(&str, &str, Option<&str>, bool)] = &[
    (
        "release",
        "--crate-name agentnet -C opt-level=3 -C lto=thin",
        None,
        true,
    ),
    (
        "release, PGO=1",
        "--crate-name agentnet -C opt-level=3",
        Some("1"),
        true,
    ),
    (
        "release, PGO=0",
        "--crate-name agentnet -C opt-level=3",
        Some("0"),
        false,
    ),
    (
        "dev, this crate",
        "--crate-name agentnet -C opt-level=2",
        None,
        false,
    ),
    (
        "dev, optimized dependency",
        "-C opt-level=3 -C debug-assertions=on",
        None,
        false,
    ),
    (
        "instrumented",
        "-C opt-level=3 -Cprofile-generate=/tmp/raw",
        None,
        false,
    ),
    (
        "fuzzed",
        "-C opt-level=3 -Cpasses=sancov-module",
        None,
        false,
    ),
    (
        "cargo's probe",
        "- --crate-name ___ --print=file-names",
        None,
        false,
    ),
];

#[test]
fn wrapper_hands_the_profile_to_release_compilations_only() {
    let use_flag = format!("-Cprofile-use={}", profile().display());
    for (name, args, pgo, expect_profile) in CASES {
        let args: Vec<&str> = args.split_whitespace().collect();
        let ran = wrapped(&args, *pgo);
        let unchanged = ran.starts_with(&args.join(" "));
        assert!(unchanged, "{name}: the arguments changed: {ran}");
        assert_eq!(ran.contains(&use_flag), *expect_profile, "{name}: {ran}");
        let quiet = ran.contains("-no-pgo-warn-mismatch");
        assert_eq!(quiet, *expect_profile, "{name}: {ran}");
    }
}

#[test]
fn this_toolchain_reads_the_profile() {
    assert!(profile().is_file(), "no {}", profile().display());
    let dir = std::env::temp_dir().join(format!("agentnet-pgo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    let source = dir.join("main.rs");
    std::fs::write(&source, "fn main() { println!(\"profiled\"); }\n").expect("write main.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let output = Command::new(rustc)
        .arg("-O")
        .arg(format!("-Cprofile-use={}", profile().display()))
        .arg("-Cllvm-args=-no-pgo-warn-mismatch")
        .arg("--out-dir")
        .arg(&dir)
        .arg(&source)
        .output()
        .expect("run rustc");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let compiled = output.status.success();
    assert!(
        compiled,
        "rustc could not compile with the profile: {stderr}"
    );
    // An unreadable profile is only a warning ("invalid instrumentation
    // profile data", "malformed ..."); a readable one gives none here.
    let taken = !stderr.contains("warning");
    assert!(taken, "rustc did not take the profile: {stderr}");
}
