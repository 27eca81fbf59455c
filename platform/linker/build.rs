//! Build script: lay out the release binary's code so that what a daemon
//! runs sits together.
//!
//! `agentnet.symbol-order` (written by `scripts/symbol-order.sh`) lists the
//! functions daemons executed over a whole life, hottest first: once
//! running (handshake, pings, TCP streams, status queries, shutdown) the
//! direct path's, then what the relay path and rootless mode add; then what
//! only start-up ran, whose pages a daemon gives back once it is set up
//! (`src/sys/file_pages.rs`). Given to the
//! linker as a symbol ordering file, those ~2 MB of code are packed at the
//! start of `.text` instead of spread over its ~10 MB. The kernel maps file
//! pages 64 KiB at a time around each page a process touches
//! (fault-around), so a spread-out working set made most of the text
//! resident: ordered, a daemon's peak RSS falls by 5-6 MiB (14.1-14.9 ->
//! 8.6-9.1 MiB in the lab), and the hot path shares fewer pages and TLB
//! entries.
//!
//! `agentnet.rodata-order` (written by the same script) lists the
//! read-only data that code refers to (jump tables, lookup tables,
//! strings), by input section, since most constants have no symbol an
//! ordering file could name. This script wraps the list in a linker script
//! that gathers those sections in an output section of their own,
//! `.rodata.hot`, right after `.rodata` (`INSERT AFTER`, so the default
//! layout stays as it is): a daemon's constants then share a few pages
//! instead of one 64 KiB fault-around block each across 1.5 MB. After, not
//! before: ahead of `.rodata` they followed the loader's relocation table,
//! and the first hot block mapped the table's tail too (0.25–0.38 MiB more
//! read-only pages at the rootless agent's peak in the lab).
//!
//! Only where the linker is known to be LLD, which takes
//! `--symbol-ordering-file`: release builds for x86_64-unknown-linux-gnu,
//! where rustc (>= 1.90; `rust-version` asks for more) links with its own
//! `rust-lld`, and no other linker or link flags were configured. Anywhere
//! else (or with `AGENTNET_SYMBOL_ORDER=0`) the binary is linked as it would
//! be without this script. A name the list has and the binary lacks (after a
//! toolchain or dependency update) is skipped without a warning: a stale
//! list costs memory, never a failed build; `scripts/bench.sh` reports how
//! much of the list the binary still matches.

use std::env;
use std::path::Path;

fn main() {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let order_file = Path::new(&manifest_dir).join("platform/linker/agentnet.symbol-order");
    let rodata_file = Path::new(&manifest_dir).join("platform/linker/agentnet.rodata-order");
    println!("cargo:rerun-if-changed={}", order_file.display());
    println!("cargo:rerun-if-changed={}", rodata_file.display());
    println!("cargo:rerun-if-env-changed=AGENTNET_SYMBOL_ORDER");
    // The PGO profile platform/pgo/rustc-wrapper.sh hands release builds:
    // cargo does not see it, so a new one (or switching it off) reruns this
    // script, and the crate is compiled again with it.
    let profile = Path::new(&manifest_dir).join("platform/pgo/agentnet.profdata");
    println!("cargo:rerun-if-changed={}", profile.display());
    println!("cargo:rerun-if-env-changed=AGENTNET_PGO");

    let var = |name: &str| env::var(name).unwrap_or_default();
    let linker_is_rust_lld = var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("RUSTC_LINKER").is_empty()
        && !var("CARGO_ENCODED_RUSTFLAGS").contains("link");
    let wanted = var("PROFILE") == "release" && var("AGENTNET_SYMBOL_ORDER") != "0";
    if !(wanted && linker_is_rust_lld && order_file.is_file()) {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        order_file.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");

    let Ok(list) = std::fs::read_to_string(&rodata_file) else {
        return;
    };
    let Some(script) = hot_rodata_script(&list) else {
        return;
    };
    let script_file = Path::new(&var("OUT_DIR")).join("hot-rodata.ld");
    if std::fs::write(&script_file, script).is_ok() {
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script_file.display());
    }
}

/// The linker script that gathers the listed sections into `.rodata.hot`,
/// or `None` when the list names none. A line that is not one of the two
/// shapes `scripts/link-order.py` writes (a quoted section name, or a C
/// object's whole `.rodata` inside a crate's archive) is skipped, so that
/// an edited or damaged list cannot break the link.
fn hot_rodata_script(list: &str) -> Option<String> {
    let patterns: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|line| is_section_name(line) || is_archive_member(line))
        .collect();
    if patterns.is_empty() {
        return None;
    }
    let mut script = String::from("SECTIONS {\n  .rodata.hot : {\n");
    for pattern in patterns {
        script.push_str("    ");
        script.push_str(pattern);
        script.push('\n');
    }
    script.push_str("  }\n}\nINSERT AFTER .rodata;\n");
    Some(script)
}

/// `*(".rodata.NAME")`, NAME of letters, digits and `_.$`.
fn is_section_name(line: &str) -> bool {
    line.strip_prefix("*(\".rodata")
        .and_then(|rest| rest.strip_suffix("\")"))
        .is_some_and(|name| {
            name.bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"_.$".contains(&byte))
        })
}

/// `*libCRATE-*.rlib:*-MEMBER.o(.rodata)`.
fn is_archive_member(line: &str) -> bool {
    line.strip_prefix("*lib")
        .and_then(|rest| rest.strip_suffix(".o(.rodata)"))
        .and_then(|rest| rest.split_once("-*.rlib:*-"))
        .is_some_and(|(krate, member)| {
            [krate, member].iter().all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|byte| byte.is_ascii_alphanumeric() || b"_.".contains(&byte))
            })
        })
}
