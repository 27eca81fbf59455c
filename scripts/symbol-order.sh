#!/usr/bin/env bash
# =============================================================================
# scripts/symbol-order.sh — regenerate platform/linker/agentnet.symbol-order,
# the list of functions the linker packs together in release builds (as root).
#
# Two agents in two network namespaces joined by a veth pair, both daemons
# run under valgrind's callgrind for their whole life: start, handshake, 100
# pings over IPv6 and 100 over IPv4, an iperf3 TCP stream each way (IPv6 and
# IPv4), `agentnet ping`, `status` queries, SIGTERM. Every function of the binary
# that either daemon executed is listed, the most instructions first, and
# platform/linker/build.rs hands the list to the linker
# (--symbol-ordering-file): the code a daemon runs then sits in ~2 MB at the
# start of .text instead of spread over all of it, which is what keeps the
# daemon's resident text small (the kernel maps 64 KiB around every page
# touched).
#
# The names are the binary's own mangled symbols, so the list follows the
# code: regenerate it after a toolchain or dependency update or a larger
# change to the daemon (scripts/bench.sh prints how much of the list the
# binary it measures still matches). A stale list never breaks a build.
#
# Usage:   sudo scripts/symbol-order.sh [--help]
# Env:     AGENTNET=<binary> (default: cargo build --release; profile that
#          exact binary: its symbol names are the ones written)
#          OUT=platform/linker/agentnet.symbol-order
# Needs:   valgrind, iperf3, jq, ping, ip (scripts/test.sh installs all but
#          valgrind: apt-get install valgrind)
#
# Traffic stays inside the two namespaces created here. On exit (trap), even
# on failure, only the processes started here are stopped, by PID, and the
# namespaces are deleted.
# =============================================================================
set -uo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh

lab_no_args symbol-order "$@"

OUT=${OUT:-platform/linker/agentnet.symbol-order}
IP_A=10.213.0.1 IP_B=10.213.0.2 PORT=7500 IPERF_PORT=5203
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

[[ $EUID -eq 0 ]] || { echo "symbol-order: must run as root" >&2; exit 1; }
[[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && PATH=$HOME/.cargo/bin:$PATH
for t in valgrind iperf3 jq ping ip awk; do
    command -v "$t" >/dev/null || fail "missing $t"
done

if [[ -z ${AGENTNET:-} ]]; then
    log "building the release binary"
    cargo build --release --bin agentnet >&2 || fail "cargo build --release"
    AGENTNET=$PWD/target/release/agentnet
fi
BIN=$(realpath "$AGENTNET")
[[ -x $BIN ]] || fail "no agentnet binary at $BIN"

WORK=$(mktemp -d /tmp/agentnet-symbol-order.XXXXXX) || exit 1
lab_init "ans-$$"
trap 'lab_cleanup; rm -rf "$WORK"' EXIT
trap 'log "interrupted"; exit 130' INT TERM

lab_pair "$IP_A/24" "$IP_B/24" || fail "cannot create the namespaces and their veth pair"

an() { local dir=$WORK/$1; shift; "$BIN" --state-dir "$dir" "$@"; }
for side in a b; do
    mkdir "$WORK/$side" && an "$side" init --name "order-$side" >/dev/null || fail "agentnet init"
done
an a trust add "$(an b id --json | jq -r .id)" --name order-b >/dev/null || fail "trust add"
an b trust add "$(an a id --json | jq -r .id)" --name order-a --endpoint "$IP_A:$PORT" >/dev/null ||
    fail "trust add"
ADDR_B=$(an b id --json | jq -r .address) ADDR4_B=$(an b id --json | jq -r .address4)

declare -A DAEMON=()
for side in b a; do
    ns=NS_${side^^}
    lab_bg "$WORK/daemon-$side.log" "${!ns}" valgrind --tool=callgrind --demangle=no \
        --callgrind-out-file="$WORK/callgrind.$side" \
        "$BIN" --state-dir "$WORK/$side" up --foreground --interface "ans-$side" --port "$PORT"
    DAEMON[$side]=$LAB_LAST_PID
done
log "daemons under callgrind (slow): waiting for the first ping"
wait_for 120 ip netns exec "$NS_A" ping -c1 -W1 "$ADDR_B" || fail "no ping A -> B (see $WORK/daemon-*.log)"

log "pings over IPv6 and IPv4"
ip netns exec "$NS_A" ping -q -n -c 100 -i 0.02 "$ADDR_B" >/dev/null || fail "IPv6 pings"
ip netns exec "$NS_A" ping -q -n -c 100 -i 0.02 "$ADDR4_B" >/dev/null || fail "IPv4 pings"

log "TCP streams both ways"
lab_bg "$WORK/iperf3-server.log" "$NS_B" iperf3 -s -p "$IPERF_PORT"
IPERF=$LAB_LAST_PID
wait_for 5 ip netns exec "$NS_B" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
    fail "the iperf3 server did not start"
lab_run "$WORK/iperf3-1.log" "$WORK/iperf3-1.log" "$NS_A" iperf3 -c "$ADDR_B" -p "$IPERF_PORT" -t 3 ||
    fail "iperf3 over IPv6"
lab_run "$WORK/iperf3-2.log" "$WORK/iperf3-2.log" "$NS_A" iperf3 -c "$ADDR4_B" -p "$IPERF_PORT" -t 3 -R ||
    fail "iperf3 over IPv4"
lab_stop "$IPERF"

an a ping order-b --count 3 --interval 0.1 >/dev/null || fail "agentnet ping"
for side in a b; do
    an "$side" status >/dev/null && an "$side" status --json >/dev/null || fail "status"
done

# SIGTERM: the daemons shut down, and callgrind writes its profile on exit.
for side in a b; do kill -TERM "${DAEMON[$side]}"; done
for side in a b; do
    for _ in $(seq 300); do lab_is_our_child "${DAEMON[$side]}" || break; sleep 0.1; done
    lab_stop "${DAEMON[$side]}"
    [[ -s $WORK/callgrind.$side ]] || fail "no callgrind profile of daemon $side"
done

# Self cost per function of the binary, both daemons summed. Callgrind
# compresses names: "fn=(12) name" defines 12, "fn=(12)" refers to it; the
# cost line after "calls=" is a callee's inclusive cost, not the caller's own.
# "name'2" is a recursion level of name.
profile_costs() {
    awk -v bin="$BIN" '
        function named(kind, s,   i, id) {
            if (substr(s, 1, 1) != "(") return s
            i = index(s, ")"); id = substr(s, 2, i - 2)
            if (i < length(s)) names[kind, id] = substr(s, i + 2)
            return names[kind, id]
        }
        /^ob=/  { ob = named("ob", substr($0, 4)); next }
        /^fn=/  { fn = named("fn", substr($0, 4)); next }
        /^cob=/ { named("ob", substr($0, 5)); next }
        /^cfn=/ { named("fn", substr($0, 5)); next }
        /^calls=/ { skip = 1; next }
        /^[0-9+*-]/ {
            if (skip) { skip = 0; next }
            if (ob == bin && fn != "") { name = fn; sub(/'\''[0-9]+$/, "", name); cost[name] += $2 }
        }
        END { for (name in cost) print cost[name], name }
    ' "$@"
}

{
    echo "# Functions two agentnet daemons executed over a whole life, most instructions"
    echo "# first: the linker packs them together (platform/linker/build.rs)."
    echo "# Written by scripts/symbol-order.sh from $("$BIN" --version | head -1)" \
        "($(git describe --always --dirty 2>/dev/null || echo unknown)); do not edit."
    profile_costs "$WORK/callgrind.a" "$WORK/callgrind.b" | sort -k1,1nr -k2 | awk '!seen[$2]++ { print $2 }'
} >"$OUT.tmp" || fail "writing $OUT"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT: $(grep -vc '^#' "$OUT") functions"
