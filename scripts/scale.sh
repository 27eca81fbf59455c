#!/usr/bin/env bash
# =============================================================================
# scripts/scale.sh — how agentnet behaves with many agents (as root). A
# benchmark, not a test: it prints figures, it does not pass or fail.
#
# N agents (default 50), each in its own network namespace on one bridge
# (10.220.<n/250>.<n%250+1>/16), every one trusting every other with its
# endpoint (written before `up`, so each daemon connects to all at start),
# and permanent ARP entries for all the others (the kernel's ARP table is
# shared by all namespaces and overflows past 1024 dynamic entries). The
# daemons are brought up one after another (ORDER, SPACING). Measured:
#
#   full mesh      seconds from the last `up` (its daemon answering on its
#                  control socket) until every ordered pair (A, B) had an
#                  ICMPv6 echo A -> B answered over the overlay; every agent
#                  pings all others at once (fping, retried until DEADLINE)
#   pairs          ordered pairs that answered / N·(N-1)
#   RSS            mean and max VmRSS of the daemons (from /proc/PID/status,
#                  each daemon tracked by its PID) once the mesh is up
#   drops          UDP socket buffer drops in all namespaces, and what the
#                  daemons counted as dropped (status --json)
#   CPU            utime+stime of all daemons (/proc/PID/stat), as % of one
#                  core in all: over the IDLE seconds right after the pings
#                  (every session active: RTT pings, keepalives), then over
#                  the next IDLE seconds (idle: the protocol's own only)
#   rendezvous     rows from examples/rendezvous_load.rs (100,000 simulated
#                  registrations) when that example exists, else
#                  "rendezvous: (not built)"
#
# Usage:   sudo scripts/scale.sh [--help]
# Env:     N=50  ORDER=random|sequential  SEED=<random>  SPACING=0 (seconds
#          between two `up`s; with ORDER=random a random 0..SPACING each)
#          DEADLINE=60 (seconds after the last up)  IDLE=30
#          AGENTNET=<binary> (default: cargo build --release)
#          AGENTNET_LOG=info (the daemons' verbosity; debug for tracing)
#          OUTDIR=/tmp/agentnet-scale/<timestamp>  KEEP=0 (1: keep the lab
#          until Enter is pressed, for a look inside)
# Output:  the table (also $OUTDIR/table.md), run.log, logs/ (one per daemon),
#          pings/ (per agent: peer, ms after the last up)
#
# Goals (issue 14): a full mesh of 50 in under 10 s after the last up; idle
# CPU of 50 daemons under 1% of one core.
#
# Traffic goes only to addresses inside the namespaces created here, which
# have no link to the host's network. Like scripts/bench.sh, the measuring
# part runs in a private mount namespace with $OUTDIR/run over /run. On exit
# (trap), even on failure, only the processes started here are stopped, by
# PID, and the namespaces are deleted.
# =============================================================================
set -uo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh

lab_no_args scale "$@"

N=${N:-50}
ORDER=${ORDER:-random}
SEED=${SEED:-$((RANDOM * 32768 + RANDOM))}
SPACING=${SPACING:-0}
DEADLINE=${DEADLINE:-60}
IDLE=${IDLE:-30}
KEEP=${KEEP:-0}
export AGENTNET_LOG=${AGENTNET_LOG:-info}
export OUTDIR=${OUTDIR:-/tmp/agentnet-scale/$(date +%Y%m%d-%H%M%S)}
PORT=7400

[[ $EUID -eq 0 ]] || { echo "scale: must run as root" >&2; exit 1; }
[[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && PATH=$HOME/.cargo/bin:$PATH
for t in ip jq fping awk unshare shuf; do
    command -v "$t" >/dev/null || { echo "scale: missing $t (scripts/test.sh installs it)" >&2; exit 1; }
done
((N >= 2 && N <= 1000)) || { echo "scale: N must be 2..1000" >&2; exit 2; }

LOGS=$OUTDIR/logs WORK=$OUTDIR/work PINGS=$OUTDIR/pings
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUTDIR/run.log" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
fail() { log "FAILED: $*"; exit 1; }

# ------------------------------------ outside the mount namespace: set-up ----
if [[ -z ${AGENTNET_SCALE_INNER:-} ]]; then
    lab_private_dir "$OUTDIR" || exit 1
    mkdir -p "$LOGS" "$PINGS" "$OUTDIR/run" || exit 1
    trap 'log "interrupted"; exit 130' INT TERM
    if [[ -z ${AGENTNET:-} ]]; then
        log "building the release binary"
        cargo build --release --bin agentnet >"$LOGS/build.log" 2>&1 ||
            { tail -20 "$LOGS/build.log"; fail "cargo build --release"; }
        AGENTNET=$PWD/target/release/agentnet
    fi
    export AGENTNET SEED
    exec unshare --mount --propagation private env AGENTNET_SCALE_INNER=1 bash "$SELF" "$@"
fi
mount --bind "$OUTDIR/run" /run || fail "cannot bind-mount $OUTDIR/run over /run"
umask 077 # keys below
mkdir "$WORK" || exit 1
BIN=$AGENTNET
[[ -x $BIN ]] || fail "no agentnet binary at $BIN"
CLK_TCK=$(getconf CLK_TCK)

lab_init "ans-$$"
trap 'lab_cleanup' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------- the lab ----
# Host i (1..N): role h<i>, underlay 10.220.<i/250>.<i%250+1>/16.
underlay_ip() { echo "10.220.$(($1 / 250)).$(($1 % 250 + 1))"; }
an() { local i=$1; shift; ip netns exec "${NS[$i]}" "$BIN" --state-dir "$WORK/h$i" "$@"; }

log "scale: $N agents, order $ORDER, seed $SEED, spacing ${SPACING}s; $BIN; output in $OUTDIR"
log "machine: $(nproc) CPUs, kernel $(uname -r), $(free -m | awk '/^Mem:/ { print $2 " MiB" }')"
declare -a NS=() ID=() ADDR=() PID=()
lab_ns sw || fail "cannot create the switch namespace"
SW=$LAB_LAST_NS
ip -n "$SW" link add br0 type bridge && ip -n "$SW" link set br0 up || fail "bridge"
for ((i = 1; i <= N; i++)); do
    lab_ns "h$i" || fail "namespace h$i"
    NS[i]=$LAB_LAST_NS
    ip -n "$SW" link add "p$i" type veth peer name eth0 netns "${NS[i]}" &&
        ip -n "$SW" link set "p$i" master br0 up &&
        ip -n "${NS[i]}" addr add "$(underlay_ip "$i")/16" dev eth0 &&
        ip -n "${NS[i]}" link set eth0 up || fail "veth of h$i"
done
# Static neighbours: the kernel's ARP table is one for all namespaces, and
# more than gc_thresh3 (1024) dynamic entries in all overflow it ("neighbor
# table overflow!" in dmesg: datagrams dropped until its garbage collection,
# tens of seconds). N·(N-1) entries of a full mesh would, so every host gets
# permanent entries for all others (exempt from that limit) and no ARP runs.
declare -a MAC=()
for ((i = 1; i <= N; i++)); do
    MAC[i]=$(ip -n "${NS[i]}" -o link show dev eth0 | grep -oP 'link/ether \K[0-9a-f:]+')
done
for ((i = 1; i <= N; i++)); do
    for ((j = 1; j <= N; j++)); do
        ((i == j)) || echo "neigh replace $(underlay_ip "$j") lladdr ${MAC[j]} dev eth0 nud permanent"
    done | ip -n "${NS[i]}" -batch - || fail "static neighbours of h$i"
done
for ((i = 2; i <= N; i++)); do
    wait_for 10 ip netns exec "${NS[i]}" ping -c1 -W1 "$(underlay_ip 1)" || fail "h$i does not reach h1 on the underlay"
done
log "lab: $N namespaces on one bridge (static neighbours)"
# table_fulls (last column of /proc/net/stat/arp_cache, hex, one line a CPU)
arp_table_fulls() {
    local s=0 v
    while read -r v; do s=$((s + 16#$v)); done < <(awk 'NR > 1 { print $NF }' /proc/net/stat/arp_cache)
    echo "$s"
}
ARP_FULL0=$(arp_table_fulls)

for ((i = 1; i <= N; i++)); do
    mkdir "$WORK/h$i" && "$BIN" --state-dir "$WORK/h$i" init --name "h$i" >>"$LOGS/cli.log" 2>&1 ||
        fail "init h$i (logs/cli.log)"
    read -r "ID[i]" "ADDR[i]" < <("$BIN" --state-dir "$WORK/h$i" id --json | jq -r '"\(.id) \(.address)"')
done
t=$SECONDS
for ((i = 1; i <= N; i++)); do
    for ((j = 1; j <= N; j++)); do
        ((i == j)) && continue
        "$BIN" --state-dir "$WORK/h$i" trust add "${ID[j]}" --name "h$j" --endpoint "$(underlay_ip "$j"):$PORT" \
            >>"$LOGS/cli.log" 2>&1 || fail "h$i trust add h$j (logs/cli.log)"
    done
done
log "trust: $((N * (N - 1))) entries written in $((SECONDS - t)) s"

# --------------------------------------------------------- bring-up ----
if [[ $ORDER == random ]]; then
    mapfile -t UP_ORDER < <(seq 1 "$N" | shuf --random-source=<(yes "$SEED"))
else
    mapfile -t UP_ORDER < <(seq 1 "$N")
fi
RANDOM=$SEED
for i in "${UP_ORDER[@]}"; do
    # --foreground keeps the daemon a child of this shell: its PID is known
    lab_bg "$LOGS/h$i.log" "${NS[i]}" "$BIN" --state-dir "$WORK/h$i" up --foreground \
        --interface an0 --port "$PORT" --names off
    PID[i]=$LAB_LAST_PID
    wait_for 30 an "$i" status || fail "h$i does not answer (logs/h$i.log)"
    if [[ $SPACING != 0 ]]; then
        if [[ $ORDER == random ]]; then
            sleep "$(awk -v r=$RANDOM -v s="$SPACING" 'BEGIN { printf "%.3f", s * r / 32767 }')"
        else
            sleep "$SPACING"
        fi
    fi
done
T_UP=$(now_ms)
log "up: all $N daemons answer (order: ${UP_ORDER[*]})"

# ------------------------------------------------------- full mesh ----
# pinger I : pings every other agent from h<I>, all at once, until each
# answered or DEADLINE passed; writes "h<J> MS" (ms after the last up) to
# pings/h<I>.
pinger() {
    local i=$1 j out=$PINGS/h$1 deadline=$((T_UP + DEADLINE * 1000)) alive a t
    local -A left=()
    for ((j = 1; j <= N; j++)); do ((j != i)) && left[${ADDR[j]}]=h$j; done
    : >"$out"
    while ((${#left[@]})) && (($(now_ms) < deadline)); do
        alive=$(ip netns exec "${NS[i]}" fping -a -q -r 0 -t 500 -i 1 "${!left[@]}" 2>/dev/null)
        t=$(($(now_ms) - T_UP))
        for a in $alive; do
            [[ -n ${left[$a]:-} ]] && echo "${left[$a]} $t" >>"$out" && unset "left[$a]"
        done
    done
}
PINGERS=()
for ((i = 1; i <= N; i++)); do
    pinger "$i" &
    LAB_TRACKED[$!]=1
    PINGERS+=("$!")
done
for pid in "${PINGERS[@]}"; do wait "$pid"; unset "LAB_TRACKED[$pid]"; done
PAIRS=$(cat "$PINGS"/h* | wc -l)
MESH_MS=$(cat "$PINGS"/h* | awk '$2 > m { m = $2 } END { print m + 0 }')
if ((PAIRS == N * (N - 1))); then
    MESH=$(awk -v m="$MESH_MS" 'BEGIN { printf "%.1f", m / 1000 }')
    log "full mesh: ${MESH} s after the last up"
else
    MESH="not reached in ${DEADLINE} s"
    log "full mesh: NOT reached: $PAIRS of $((N * (N - 1))) ordered pairs answered within ${DEADLINE} s"
    for ((i = 1; i <= N; i++)); do
        for ((j = 1; j <= N; j++)); do
            ((i != j)) && ! grep -q "^h$j " "$PINGS/h$i" && echo "  h$i -> h$j"
        done
    done | head -50 | tee -a "$OUTDIR/run.log" >&2
fi
ARP_FULL=$(($(arp_table_fulls) - ARP_FULL0))
((ARP_FULL > 0)) && log "WARNING: the kernel's ARP table overflowed $ARP_FULL times meanwhile (other namespaces on this host?)"
P50_MS=$(cat "$PINGS"/h* | awk '{ print $2 }' | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "NA" }')

# ------------------------------------------------------ what was lost ----
# Datagrams the kernel dropped for a full socket buffer (per namespace:
# /proc/net/snmp, Udp RcvbufErrors + SndbufErrors), and what the daemons
# counted as dropped (status --json, every counter of "dropped").
udp_errors() {
    local i s=0 n
    for ((i = 1; i <= N; i++)); do
        n=$(ip netns exec "${NS[i]}" awk '/^Udp:/ { if (!h) { for (k = 2; k <= NF; k++) c[$k] = k; h = 1 }
            else print $c["RcvbufErrors"] + $c["SndbufErrors"] }' /proc/net/snmp)
        s=$((s + ${n:-0}))
    done
    echo "$s"
}
UDP_ERRORS=$(udp_errors)
DAEMON_DROPS=0
for ((i = 1; i <= N; i++)); do
    d=$(an "$i" status --json 2>/dev/null | jq '[.dropped | .. | numbers] | add // 0')
    DAEMON_DROPS=$((DAEMON_DROPS + ${d:-0}))
done
log "UDP socket buffer drops in all namespaces: $UDP_ERRORS; dropped by the daemons: $DAEMON_DROPS"

# ---------------------------------------------------- memory and CPU ----
for ((i = 1; i <= N; i++)); do
    awk '/^VmRSS:/ { print $2 }' "/proc/${PID[i]}/status" 2>/dev/null || echo NA
done >"$OUTDIR/rss.txt"
read -r RSS_MEAN RSS_MAX < <(awk '$1 != "NA" { s += $1; n++; if ($1 > m) m = $1 }
    END { if (n) printf "%.1f %.1f\n", s / n / 1024, m / 1024; else print "NA NA" }' "$OUTDIR/rss.txt")
log "RSS: mean $RSS_MEAN MiB, max $RSS_MAX MiB per daemon"

ticks() { local s=0 i; for ((i = 1; i <= N; i++)); do s=$((s + $(proc_ticks "${PID[i]}"))); done; echo "$s"; }
# cpu_window SECONDS : % of one core all daemons used over the next SECONDS.
cpu_window() {
    local c0 t0 c1 t1
    c0=$(ticks) t0=$(now_ms)
    sleep "$1"
    c1=$(ticks) t1=$(now_ms)
    awk -v c=$((c1 - c0)) -v k="$CLK_TCK" -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", 100 * c / k / (t / 1000) }'
}
# Right after the pings every session is active: the RTT ping (1/s for
# 10 s after the last IP packet) and a keepalive 10 s after the last one
# received. Measured apart; the idle figure is the window after it.
log "CPU after the pings: measuring ${IDLE} s"
AFTER_CPU=$(cpu_window "$IDLE")
log "CPU after the pings: ${AFTER_CPU}% of one core for all $N daemons"
log "idle CPU: measuring ${IDLE} s"
IDLE_CPU=$(cpu_window "$IDLE")
log "idle CPU: ${IDLE_CPU}% of one core for all $N daemons"
alive=0
for ((i = 1; i <= N; i++)); do lab_is_our_child "${PID[i]}" && alive=$((alive + 1)); done
((alive == N)) || log "WARNING: only $alive of $N daemons still run"

# ================================================ rendezvous rows ======
# Filled in by examples/rendezvous_load.rs (100,000 simulated registrations:
# memory, CPU per refresh, relay throughput): each line it prints on stdout
# is one table row ("| what | figure |"). Until it exists: "(not built)".
rendezvous_rows() {
    if [[ -f examples/rendezvous_load.rs ]]; then
        local out=$LOGS/rendezvous_load.log
        if cargo run --release --example rendezvous_load >"$out.stdout" 2>"$out"; then
            local key value
            while read -r key value; do
                case $key in
                    '') ;;
                    rendezvous_agents) echo "| rendezvous: registered agents (one server) | $value |" ;;
                    rendezvous_server_heap_mib) echo "| rendezvous: server heap | $value MiB |" ;;
                    rendezvous_bytes_per_agent) echo "| rendezvous: memory per registered agent | $value B |" ;;
                    rendezvous_handshake_us) echo "| rendezvous: CPU per registration handshake | $value µs |" ;;
                    rendezvous_refresh_us) echo "| rendezvous: CPU per registration refresh | $value µs |" ;;
                    rendezvous_relay_pairs) echo "| rendezvous: pairs relaying at once | $value |" ;;
                    rendezvous_relay_pps) echo "| rendezvous: relayed while loaded (1400 B) | $value packets/s |" ;;
                    rendezvous_relay_mbit) echo "| rendezvous: relayed while loaded | $value Mbit/s |" ;;
                    rendezvous_sweep_ms) echo "| rendezvous: soft-state sweep (every 5 s), mean | $value ms |" ;;
                    rendezvous_sweep_max_ms) echo "| rendezvous: soft-state sweep, max | $value ms |" ;;
                    *) echo "| rendezvous: $key | $value |" ;;
                esac
            done <"$out.stdout"
        else
            echo "| rendezvous | FAILED (logs/rendezvous_load.log) |"
        fi
    else
        echo "| rendezvous: (not built) | |"
    fi
}
log "rendezvous rows"
RENDEZVOUS_ROWS=$(rendezvous_rows)
# ========================================= end of the rendezvous rows ======

# ----------------------------------------------------------------- table ----
{
    echo "| measure | value |"
    echo "|---|--:|"
    echo "| agents | $N ($ORDER order, seed $SEED, spacing ${SPACING} s) |"
    echo "| full mesh after the last up | $MESH s |"
    echo "| ordered pairs answered | $PAIRS / $((N * (N - 1))) (median ${P50_MS} ms after the last up) |"
    echo "| UDP socket buffer drops / dropped by the daemons | $UDP_ERRORS / $DAEMON_DROPS |"
    echo "| daemon RSS, mean / max | $RSS_MEAN / $RSS_MAX MiB |"
    echo "| CPU of all $N daemons in the ${IDLE} s after the pings | ${AFTER_CPU}% of one core |"
    echo "| idle CPU of all $N daemons, the ${IDLE} s after that | ${IDLE_CPU}% of one core |"
    echo "$RENDEZVOUS_ROWS"
    echo
    echo "Full mesh: every agent pings all others at once (fping, 500 ms timeout, retried) until each"
    echo "answered; the figure is the last first answer. After the pings every session is active for a"
    echo "while (an RTT ping a second for 10 s after the last IP packet, then a keepalive): CPU is measured"
    echo "over that window and, as idle, over the next. CPU = utime+stime of the daemons (/proc/PID/stat)."
    echo "$(nproc) CPUs, kernel $(uname -r); $BIN."
} | tee "$OUTDIR/table.md"
if ((KEEP)); then
    log "KEEP=1: the lab stays until Enter (an I ARGS: agentnet of host I; namespaces ${NS[1]}..)"
    read -r _
fi
log "results: $OUTDIR/table.md (logs: $LOGS, pings: $PINGS)"
