#!/usr/bin/env bash
# =============================================================================
# scripts/flood.sh — handshake flood benchmark (issue 9), as root.
#
# Three namespaces on one bridge: agents A (10.212.0.1) and B (10.212.0.2)
# trust each other; F (10.212.0.3) floods B's UDP port with handshake
# initiations (examples/flood.rs) while A sends to B with iperf3 (TCP):
#
#   unloaded       no flood
#   garbage        $RATE/s initiation-shaped garbage (bad mac1: a stranger)
#   mac1           $RATE/s real initiations with a valid mac1 from untrusted
#                  keys (someone who knows B's public key): B is under load,
#                  does no Diffie-Hellman, and answers nothing (cookie
#                  replies go only to trusted peers' addresses)
#   trust6         $RATE/s type-6 datagrams (trust requests) with a valid
#                  mac1, each from a new spoofed source of $SPOOF_RANGE
#                  (issue #17 item 1): the limiters cost O(1) per new
#                  source, and at most the verification budget reaches
#                  Diffie-Hellman
#
# For each: A -> B throughput and its ratio to unloaded (the goal: >= 50%),
# the rate F achieved, B's CPU seconds, B's RSS before and after (the goal:
# no growth), and B's drop counters (bad_mac1, needs_cookie, untrusted).
# Then, still under the mac1 flood, A is restarted and the time until a
# ping crosses the overlay again is measured: a new handshake through a
# responder under load (cookie reply, then the retry with mac2).
#
# Usage:   sudo scripts/flood.sh
# Env:     RATE=100000  DURATION=10  PARALLEL=1
#          AGENTNET=<binary> FLOOD=<binary> (default: cargo build --release)
#          OUTDIR=/tmp/agentnet-flood/<timestamp>
# A benchmark, not a test: it exits non-zero only when the setup fails.
#
# Traffic stays inside the three namespaces (no link to the host's
# network). On exit only the processes started here are stopped, by PID,
# and the namespaces are deleted.
# =============================================================================
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh

RATE=${RATE:-100000}
DURATION=${DURATION:-10}
PARALLEL=${PARALLEL:-1}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-30}
OUTDIR=${OUTDIR:-/tmp/agentnet-flood/$(date +%Y%m%d-%H%M%S)}
PORT=7400 IPERF_PORT=5201
SUBNET=10.212.0
SPOOF_RANGE=10.213.0.0/16

[[ $EUID -eq 0 ]] || { echo "flood: must run as root" >&2; exit 1; }
for t in ip iperf3 jq ping awk; do
    command -v "$t" >/dev/null || { echo "flood: missing $t (scripts/test.sh installs it)" >&2; exit 1; }
done

LOGS=$OUTDIR/logs WORK=$OUTDIR/work RAW=$OUTDIR/raw
lab_private_dir "$OUTDIR" || exit 1
mkdir -p "$LOGS" "$RAW" || exit 1
mkdir -m 700 "$WORK" || exit 1
CLK_TCK=$(getconf CLK_TCK)
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUTDIR/run.log" >&2; }
fail() { log "FAILED: $*"; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/${1:-0}/status" 2>/dev/null || echo NA; }

if [[ -z ${AGENTNET:-} || -z ${FLOOD:-} ]]; then
    log "building release binaries (agentnet, examples/flood)"
    cargo build --release --bin agentnet --example flood >"$LOGS/build.log" 2>&1 ||
        { tail -20 "$LOGS/build.log"; fail "cargo build --release"; }
fi
BIN=${AGENTNET:-$PWD/target/release/agentnet}
FLOOD_BIN=${FLOOD:-$PWD/target/release/examples/flood}
[[ -x $BIN && -x $FLOOD_BIN ]] || fail "no binaries at $BIN / $FLOOD_BIN"

lab_init "anf-$$"
trap 'lab_cleanup' EXIT
trap 'log "interrupted"; exit 130' INT TERM
lab_segment "$SUBNET" a b f || fail "cannot build the lab"
NS_A=${LAB_NS[a]} NS_B=${LAB_NS[b]} NS_F=${LAB_NS[f]}
IP_A=$SUBNET.1 IP_B=$SUBNET.2
wait_for 5 ip netns exec "$NS_A" ping -c1 -W1 "$IP_B" || fail "the bridge does not pass a ping"

declare -A PID=() ID=() ADDR=()
start_agent() {
    local side=$1 ns=NS_${1^^}
    lab_bg "$LOGS/agentnet-$side.out" "${!ns}" "$BIN" --state-dir "$WORK/$side" up --foreground \
        --interface "anf-$side" --port "$PORT"
    PID[$side]=$LAB_LAST_PID
    wait_for 15 has_addr "${!ns}" "anf-$side" "${ADDR[$side]}" ||
        fail "agent $side has no address (see $LOGS/agentnet-$side.out)"
}
for side in a b; do
    mkdir -m 700 "$WORK/$side" || fail "state dir"
    "$BIN" --state-dir "$WORK/$side" init --name "flood-$side" >>"$LOGS/cli.log" 2>&1 || fail "init $side"
    ID[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .id)
    ADDR[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .address)
    start_agent "$side"
done
"$BIN" --state-dir "$WORK/a" trust add "${ID[b]}" --name flood-b --endpoint "$IP_B:$PORT" >>"$LOGS/cli.log" 2>&1 || fail "trust add on a"
"$BIN" --state-dir "$WORK/b" trust add "${ID[a]}" --name flood-a --endpoint "$IP_A:$PORT" >>"$LOGS/cli.log" 2>&1 || fail "trust add on b"
wait_for "$CONNECT_TIMEOUT" ip netns exec "$NS_A" ping -n -c1 -W1 "${ADDR[b]}" || fail "no ping through the overlay"

lab_bg "$LOGS/iperf3-server.log" "$NS_B" iperf3 -s -p "$IPERF_PORT"
wait_for 5 ip netns exec "$NS_B" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" || fail "iperf3 server"

# B's drop counters (JSON object) now.
dropped_now() {
    ip netns exec "$NS_B" "$BIN" --state-dir "$WORK/b" status --json 2>/dev/null | jq -c '.dropped // {}'
}
# The counters that grew since BEFORE (JSON), as "name=+n ...".
dropped_since() {
    jq -rn --argjson a "$1" --argjson b "$(dropped_now)" \
        '[$b | to_entries[] | select(.value != ($a[.key] // 0)) | "\(.key)=+\(.value - ($a[.key] // 0))"] | join(" ")'
}

# run LABEL MODE : iperf3 A -> B for DURATION s, with a flood of MODE (or none).
declare -A R=()
run() {
    local label=$1 mode=$2 flood_pid= json=$RAW/$1.iperf.json t0 t1 before counters
    before=$(rss_mib "${PID[b]}")
    counters=$(dropped_now)
    if [[ $mode != none ]]; then
        lab_bg "$RAW/$label.flood.txt" "$NS_F" "$FLOOD_BIN" --target "$IP_B:$PORT" --id "${ID[b]}" \
            --mode "$mode" --rate "$RATE" --seconds $((DURATION + 4)) --spoof-from "$SPOOF_RANGE"
        flood_pid=$LAB_LAST_PID
        sleep 2
    fi
    t0=$(proc_ticks "${PID[b]}")
    lab_run "$json" "$LOGS/iperf3-client.log" "$NS_A" timeout $((DURATION + 30)) \
        iperf3 -c "${ADDR[b]}" -p "$IPERF_PORT" -t "$DURATION" -P "$PARALLEL" -J
    t1=$(proc_ticks "${PID[b]}")
    R[$label.mbps]=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$json" 2>/dev/null)
    [[ ${R[$label.mbps]} =~ ^[0-9]+$ ]] || R[$label.mbps]=NA
    R[$label.cpu]=$(awk -v t=$((t1 - t0)) -v k="$CLK_TCK" 'BEGIN { printf "%.1f", t / k }')
    R[$label.rss]="$before -> $(rss_mib "${PID[b]}")"
    R[$label.flood]=-
    if [[ -n $flood_pid ]]; then
        wait "$flood_pid" 2>/dev/null
        unset "LAB_TRACKED[$flood_pid]"
        R[$label.flood]=$(grep -oP 'rate=\K[0-9]+' "$RAW/$label.flood.txt" || echo NA)/s
    fi
    R[$label.drops]=$(dropped_since "$counters")
    log "  $label: ${R[$label.mbps]} Mbit/s, flood ${R[$label.flood]}, B CPU ${R[$label.cpu]} s, B RSS ${R[$label.rss]} MiB, ${R[$label.drops]}"
}

log "flood benchmark: $RATE initiations/s, iperf3 ${DURATION}s x$PARALLEL; $(nproc) CPUs; output in $OUTDIR"
run unloaded none
run garbage garbage
sleep 2 # the load state of B ends 1 s after the flood
run mac1 mac1
# B routes the spoofed range back towards F (so its reverse-path filter
# takes the datagrams; nothing is ever answered).
ip -n "$NS_B" route add "$SPOOF_RANGE" via "$SUBNET.3" || fail "route for the spoofed range"
sleep 2
run trust6 trust-request

# A new handshake through B under load: restart A during a mac1 flood.
log "== reconnect under a mac1 flood"
lab_bg "$RAW/reconnect.flood.txt" "$NS_F" "$FLOOD_BIN" --target "$IP_B:$PORT" --id "${ID[b]}" \
    --mode mac1 --rate "$RATE" --seconds $((CONNECT_TIMEOUT + 10))
flood_pid=$LAB_LAST_PID
sleep 2
counters=$(dropped_now)
lab_stop "${PID[a]}"
t_restart=$(now_ms)
start_agent a
if wait_for "$CONNECT_TIMEOUT" ip netns exec "$NS_A" ping -n -c1 -W1 "${ADDR[b]}"; then
    R[reconnect]="$(($(now_ms) - t_restart)) ms"
else
    R[reconnect]="none within ${CONNECT_TIMEOUT}s"
fi
R[reconnect.drops]=$(dropped_since "$counters")
lab_stop "$flood_pid"
log "  reconnect under flood: ${R[reconnect]} (${R[reconnect.drops]})"

ratio() { awk -v x="$1" -v b="$2" 'BEGIN { if (x == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", x / b }'; }
{
    echo "| flood | A->B TCP Mbit/s | vs unloaded | flood rate achieved | B CPU s | B RSS MiB before -> after | B drop counters (growth during the run and the rest of the flood) |"
    echo "|---|--:|--:|--:|--:|--:|---|"
    for l in unloaded garbage mac1 trust6; do
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$l" "${R[$l.mbps]}" \
            "$(ratio "${R[$l.mbps]}" "${R[unloaded.mbps]}")" "${R[$l.flood]}" "${R[$l.cpu]}" \
            "${R[$l.rss]}" "${R[$l.drops]}"
    done
    echo
    echo "Reconnect (A restarted) during a mac1 flood: first ping after ${R[reconnect]}; B: ${R[reconnect.drops]}."
    echo "Target rate $RATE/s; iperf3 ${DURATION}s x$PARALLEL; $(nproc) CPUs, kernel $(uname -r)."
} | tee "$OUTDIR/table.md"
log "results: $OUTDIR/table.md"
