#!/usr/bin/env bash
# =============================================================================
# scripts/test.sh — THE test command of agentnet (README and .ci/run use it).
#
#   1. installs what is missing: as root on Debian, the system tools the
#      tests and the lab use (apt-get update once, then apt-get install), the
#      rustfmt/clippy components, and a Python venv at .venv pinned by
#      scripts/requirements-test.txt
#   2. cargo fmt --check
#   3. cargo clippy --all-targets -- -D warnings
#   4. cargo test --all-targets (built first, then run under
#      AGENTNET_TEST_TIMEOUT), then the doc tests; tests/layout.rs holds
#      the layout rules (sans-IO core, no import cycles, unsafe only in
#      src/sys/, no file over 800 lines outside its tests)
#   5. checks that no test left a lab namespace (an-<pid>-<n>-*) behind
#   6. a short run of every fuzz target (fuzz/) with cargo-fuzz, which it
#      installs (pinned, about a minute to compile) when CI=true or
#      AGENTNET_FUZZ_INSTALL=1; the saved corpora replay in step 4 anyway
#      (tests/fuzz_corpus.rs), fuzzer or not. The short run builds without
#      a sanitizer (the harness reaches no unsafe code, and it compiles
#      faster); long runs (README "Fuzzing") keep AddressSanitizer
#
# Every step runs even when an earlier one failed (one run shows all that is
# wrong); the exit status is non-zero if any failed. What is skipped, and
# why, is printed at the end.
#
# Env:
#   AGENTNET_REQUIRE_NETNS=1   namespace tests must run: a machine where they
#                              cannot is a failure, not a skip (.ci/run sets it)
#   AGENTNET_NO_INSTALL=1      install nothing, only report what is missing
#   AGENTNET_TEST_TIMEOUT=900  seconds allowed for running the tests (once
#                              built: a fresh machine spends minutes compiling)
#   AGENTNET_FUZZ_SECONDS=10   seconds per fuzz target (0: no fuzzing)
#   AGENTNET_FUZZ_INSTALL=1    install cargo-fuzz when missing (default: 1
#                              when CI=true, else 0)
#   CARGO_INCREMENTAL          0 by default when CI=true: a one-off build
#                              gains nothing from incremental state, which
#                              costs GiBs of disk (a CI machine ran out)
# =============================================================================
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

REQUIRE_NETNS=${AGENTNET_REQUIRE_NETNS:-0}
NO_INSTALL=${AGENTNET_NO_INSTALL:-0}
TEST_TIMEOUT=${AGENTNET_TEST_TIMEOUT:-900}
FUZZ_SECONDS=${AGENTNET_FUZZ_SECONDS:-10}
CARGO_FUZZ_VERSION=0.13.1
if [[ ${CI:-} == true ]]; then FUZZ_INSTALL=${AGENTNET_FUZZ_INSTALL:-1}; else FUZZ_INSTALL=${AGENTNET_FUZZ_INSTALL:-0}; fi
[[ ${CI:-} == true ]] && export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
REQUIREMENTS=scripts/requirements-test.txt
VENV=.venv
export AGENTNET_REQUIRE_NETNS=$REQUIRE_NETNS
export DEBIAN_FRONTEND=noninteractive
[[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && PATH=$HOME/.cargo/bin:$PATH

# Debian packages the tests, scripts/bench.sh and scripts/lab.sh run, each
# with one command it provides (to report what is missing off Debian).
PACKAGES=(
    iproute2:ip nftables:nft curl:curl python3-venv:python3 tcpdump:tcpdump
    iperf3:iperf3 jq:jq iputils-ping:ping procps:ps util-linux:unshare
    bind9-dnsutils:dig miniupnpd-nftables:miniupnpd iptables:iptables conntrack:conntrack
    fping:fping
)

T0=$SECONDS
FAILED=()     # steps that failed
SKIPPED=()    # what did not run, and why
RESULTS=()    # "step|status|seconds" for the summary
LOGDIR=$(mktemp -d "${TMPDIR:-/tmp}/agentnet-test.XXXXXX")
trap 'rm -rf "$LOGDIR"' EXIT

say()  { printf '%s\n' "$*"; }
head_line() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
skip() { say "SKIP: $*"; SKIPPED+=("$*"); }
is_root() { [[ $(id -u) -eq 0 ]]; }

# step NAME CMD... : run a step with its output visible; record the result.
step() {
    local name=$1 t=$SECONDS rc=0; shift
    head_line "$name"
    "$@" || rc=$?
    if ((rc == 0)); then
        RESULTS+=("$name|ok|$((SECONDS - t))")
    else
        RESULTS+=("$name|FAILED (exit $rc)|$((SECONDS - t))")
        FAILED+=("$name")
    fi
    return 0
}

# ------------------------------------------------------------ 1. install ----
missing_packages() {
    local entry pkg cmd
    for entry in "${PACKAGES[@]}"; do
        pkg=${entry%%:*} cmd=${entry#*:}
        if command -v dpkg-query >/dev/null; then
            dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || echo "$pkg"
        else
            command -v "$cmd" >/dev/null || echo "$pkg"
        fi
    done
}

install_system_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} == 0)); then
        say "system packages: all present"
        return 0
    fi
    say "system packages missing: ${missing[*]}"
    if [[ $NO_INSTALL == 1 ]] || ! is_root || ! command -v apt-get >/dev/null; then
        skip "installing ${missing[*]} (needs root and apt-get; AGENTNET_NO_INSTALL=$NO_INSTALL)"
        return 0
    fi
    # Inside step() `set -e` does not apply: every failure returns explicitly.
    apt-get update || return 1
    apt-get install -y --no-install-recommends "${missing[@]}"
}

install_rust_components() {
    if ! command -v cargo >/dev/null; then
        say "cargo is not installed: install the Rust toolchain with rustup (rust-version in Cargo.toml)"
        return 1
    fi
    local comp installed
    installed=$(rustup component list --installed 2>/dev/null || true)
    for comp in rustfmt clippy; do
        if grep -q "^$comp" <<<"$installed" || cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
            continue
        fi
        if [[ $NO_INSTALL == 1 ]] || ! command -v rustup >/dev/null; then
            say "rust component $comp is missing and cannot be installed here"
            return 1
        fi
        rustup component add "$comp" || return 1
    done
    say "rust: $(cargo --version); $(cargo fmt --version); $(cargo clippy --version)"
}

# The venv holds the pinned Python packages the tests use (grpcio, mcp,
# a2a-sdk for tests/netns_apps.rs). It is rebuilt when the requirements
# file changes.
setup_venv() {
    local want have=
    want=$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)
    [[ -f $VENV/.requirements.sha256 ]] && have=$(cat "$VENV/.requirements.sha256")
    if [[ ! -x $VENV/bin/python3 ]]; then
        python3 -m venv "$VENV" || { rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"; } || return 1
    fi
    if [[ $want != "$have" ]]; then
        if grep -qvE '^[[:space:]]*(#|$)' "$REQUIREMENTS"; then
            "$VENV/bin/python3" -m pip install --disable-pip-version-check --no-input \
                -r "$REQUIREMENTS" || return 1
        fi
        echo "$want" >"$VENV/.requirements.sha256"
    fi
    say "python: $("$VENV/bin/python3" --version) in $VENV"
}

# ------------------------------------------------- namespace capability -----
# Same conditions as require_root_or_skip() in tests/support/mod.rs.
netns_reason() {
    is_root || { echo "not running as root"; return; }
    local t
    for t in ip ping tcpdump curl python3 ss dig; do
        command -v "$t" >/dev/null || { echo "$t is not installed"; return; }
    done
    [[ -e /dev/net/tun ]] || { echo "/dev/net/tun does not exist"; return; }
    local probe=an-probe-$$
    if ! ip netns add "$probe" 2>/dev/null; then echo "ip netns add fails"; return; fi
    ip netns del "$probe"
}

# Lab namespaces (an-<pid>-<n>-<role>) whose creating test process is gone:
# leaks. A live PID is another test run on this machine, not ours to judge.
leaked_lab_namespaces() {
    local ns pid
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
        [[ $ns =~ ^an-([0-9]+)-[0-9]+- ]] || continue
        pid=${BASH_REMATCH[1]}
        [[ -d /proc/$pid ]] || echo "$ns"
    done | sort
}

# ------------------------------------------------------------- the steps ----
run_tests() {
    local log=$LOGDIR/cargo-test.log rc
    set +e
    timeout --kill-after=30 "$TEST_TIMEOUT" cargo test --all-targets --no-fail-fast 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    # a skip notice may share a line with libtest's own output
    grep -oE 'SKIPPED .*' "$log" >"$LOGDIR/skipped" || true
    ((rc == 124)) && say "cargo test did not finish within ${TEST_TIMEOUT}s (AGENTNET_TEST_TIMEOUT)"
    return "$rc"
}

# The start of each failed test's panic message, repeated in the summary:
# a reader that sees only the head and the tail of a long log (as some CI
# views do) still learns what failed. At most 10 panics, 6 lines of each,
# 400 characters a line.
failure_digest() {
    local log=$LOGDIR/cargo-test.log
    grep -q 'panicked at' "$log" 2>/dev/null || return 0
    say "what failed (the start of each panic message; the whole output is above):"
    awk '
        /panicked at/ {
            if (++panics > 10) exit
            printf "  %s\n", substr($0, 1, 400)
            left = 6
            next
        }
        left > 0 {
            if ($0 ~ /^(stack backtrace:|note: run with|---- |$)/) { left = 0; next }
            printf "    %s\n", substr($0, 1, 400)
            left--
        }
    ' "$log"
}

# cargo-fuzz at the pinned version, when it is missing and installing is on.
install_cargo_fuzz() {
    if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        say "cargo-fuzz $CARGO_FUZZ_VERSION: present"
        return 0
    fi
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

# Every fuzz target for FUZZ_SECONDS, starting from its saved corpus
# (fuzz/corpus/TARGET, read only: what the run finds goes to a scratch
# directory, so the work tree stays clean); a crash fails the step and
# leaves its input in fuzz/artifacts/TARGET/. cargo-fuzz needs nightly
# flags: on a stable toolchain RUSTC_BOOTSTRAP=1 allows them.
run_fuzz() {
    local targets t log scratch rc=0
    mapfile -t targets < <(cargo fuzz list 2>/dev/null)
    ((${#targets[@]})) || { say "cargo fuzz list found no targets"; return 1; }
    RUSTC_BOOTSTRAP=1 cargo fuzz build -a -s none || return 1
    for t in "${targets[@]}"; do
        log=$LOGDIR/fuzz-$t.log scratch=$LOGDIR/corpus-$t
        mkdir -p "$scratch"
        if RUSTC_BOOTSTRAP=1 cargo fuzz run -a -s none "$t" "$scratch" "fuzz/corpus/$t" -- \
            -max_total_time="$FUZZ_SECONDS" \
            -rss_limit_mb=2048 -max_len=4096 -len_control=0 >"$log" 2>&1; then
            say "fuzz $t: clean, $(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)s"
        else
            tail -40 "$log"
            say "fuzz $t: FAILED (the input is under fuzz/artifacts/$t/)"
            rc=1
        fi
    done
    return "$rc"
}

check_no_leaks() {
    local leaked
    leaked=$(comm -13 <(printf '%s\n' "$LEAKED_BEFORE") <(leaked_lab_namespaces) | grep . || true)
    if [[ -n $leaked ]]; then
        say "lab namespaces left behind by the tests:"
        say "$leaked"
        return 1
    fi
    say "no lab namespace left behind"
}

head_line "agentnet tests ($(date -u +%FT%TZ), $(nproc) CPUs, kernel $(uname -r))"
step "install system packages" install_system_packages
step "rust components" install_rust_components
step "python venv ($VENV, $REQUIREMENTS)" setup_venv
[[ -x $VENV/bin/python3 ]] && export PATH=$PWD/$VENV/bin:$PATH VIRTUAL_ENV=$PWD/$VENV

NETNS_REASON=$(netns_reason)
if [[ -z $NETNS_REASON ]]; then
    say "namespace tests: will run (root, ip netns and /dev/net/tun work)"
elif [[ $REQUIRE_NETNS == 1 ]]; then
    say "namespace tests cannot run: $NETNS_REASON; AGENTNET_REQUIRE_NETNS=1 makes that a failure"
    FAILED+=("namespace tests required but impossible: $NETNS_REASON")
else
    skip "namespace tests (they pass as skipped): $NETNS_REASON"
fi

step "cargo fmt --check" cargo fmt --check
step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings
LEAKED_BEFORE=$(leaked_lab_namespaces)
step "build the tests (cargo test --all-targets --no-run)" cargo test --all-targets --no-run
step "cargo test --all-targets" run_tests
step "cargo test --doc" cargo test --doc
if [[ $FUZZ_SECONDS == 0 ]]; then
    skip "fuzzing (AGENTNET_FUZZ_SECONDS=0)"
else
    if [[ $FUZZ_INSTALL == 1 && $NO_INSTALL != 1 ]]; then
        step "install cargo-fuzz $CARGO_FUZZ_VERSION" install_cargo_fuzz
    fi
    if cargo fuzz --version >/dev/null 2>&1; then
        step "fuzz (${FUZZ_SECONDS}s per target)" run_fuzz
    else
        skip "fuzzing: cargo-fuzz is not installed (AGENTNET_FUZZ_INSTALL=1 installs it; the corpora replayed in cargo test)"
    fi
fi
if is_root; then
    step "no leftover lab namespaces" check_no_leaks
fi

# --------------------------------------------------------------- summary ----
head_line "summary ($((SECONDS - T0)) s)"
for r in "${RESULTS[@]}"; do
    IFS='|' read -r name status secs <<<"$r"
    printf '  %-48s %-20s %5ss\n' "$name" "$status" "$secs"
done
if [[ -s $LOGDIR/skipped ]]; then
    while read -r line; do SKIPPED+=("test ${line#SKIPPED }"); done <"$LOGDIR/skipped"
fi
for s in "${SKIPPED[@]}"; do say "  skipped: $s"; done
# One closing line with the totals of every libtest run above.
read -r PASSED_TOTAL FAILED_TOTAL < <(
    grep -hoE 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$LOGDIR/cargo-test.log" 2>/dev/null |
        awk '{ p += $4; f += $6 } END { print p + 0, f + 0 }'
)
if ((${#FAILED[@]})); then
    failure_digest
    say "FAILED: ${FAILED[*]}"
    say "tests: ${PASSED_TOTAL} passed, ${FAILED_TOTAL} failed"
    exit 1
fi
say "all steps passed"
say "tests: ${PASSED_TOTAL} passed, ${FAILED_TOTAL} failed"
