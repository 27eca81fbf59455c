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
    println!("cargo:rerun-if-changed={}", order_file.display());
    println!("cargo:rerun-if-env-changed=AGENTNET_SYMBOL_ORDER");

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
}
