#!/usr/bin/env bash
# =============================================================================
# scripts/bench.sh — what the agentnet tunnel costs, against the raw link
# under it (as root).
#
# Two network namespaces joined by one veth pair (MTU 1500, 10.210.0.1/.2).
# First the raw veth is measured, then agentnet runs in both namespaces (they
# trust each other, each knows the other's endpoint) and the same is measured
# between the two agent addresses:
#
#   * iperf3 TCP A -> B, 1 stream and $PARALLEL streams, $DURATION s each
#     (receiver-side Mbit/s)
#   * ping RTT A -> B: $PINGS pings at 10 ms interval (avg, loss)
#   * connect time: from the trust being in place to the first echo reply
#   * tunnel CPU: utime+stime (/proc/PID/stat, all threads) of both daemons
#     during each iperf3 run, per GB (1e9 B) received
#   * peak RSS (VmHWM) of each daemon
#   * all of it again between two agents whose direct path is blocked, so
#     their traffic goes through a rendezvous relay (section "relay path")
#
# Usage:   sudo scripts/bench.sh
# Env:     DURATION=10  PARALLEL=4  PINGS=100  CONNECT_TIMEOUT=30  RELAY=1 (0: no relay row)
#          AGENTNET=<binary> (default: cargo build --release, target/release/agentnet)
#          OUTDIR=/tmp/agentnet-bench/<timestamp>
# Output:  the markdown table (also $OUTDIR/table.md), raw/ (iperf3 JSON,
#          ping logs), logs/ (daemon logs)
#
# Traffic goes only to addresses inside the two namespaces, which have no
# link to the host's network. On exit (trap) only the processes started
# here are stopped, by PID, and the namespaces are deleted.
# =============================================================================
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh

DURATION=${DURATION:-10}
PARALLEL=${PARALLEL:-4}
PINGS=${PINGS:-100}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-30}
OUTDIR=${OUTDIR:-/tmp/agentnet-bench/$(date +%Y%m%d-%H%M%S)}
IP_A=10.210.0.1 IP_B=10.210.0.2
PORT=7400 IPERF_PORT=5201

[[ $EUID -eq 0 ]] || { echo "bench: must run as root" >&2; exit 1; }
for t in ip iperf3 jq ping awk; do
    command -v "$t" >/dev/null || { echo "bench: missing $t (scripts/test.sh installs it)" >&2; exit 1; }
done

RAW=$OUTDIR/raw LOGS=$OUTDIR/logs WORK=$OUTDIR/work
mkdir -p "$RAW" "$LOGS" || exit 1
mkdir -m 700 "$WORK" || exit 1
CLK_TCK=$(getconf CLK_TCK)
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUTDIR/run.log" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
fail() { log "FAILED: $*"; exit 1; }

if [[ -n ${AGENTNET:-} ]]; then
    BIN=$AGENTNET
else
    log "building release binary"
    cargo build --release --bin agentnet >"$LOGS/build.log" 2>&1 || { tail -20 "$LOGS/build.log"; fail "cargo build --release"; }
    BIN=$PWD/target/release/agentnet
fi
[[ -x $BIN ]] || fail "no agentnet binary at $BIN"

lab_init "anb-$$"
trap 'lab_cleanup' EXIT
trap 'log "interrupted"; exit 130' INT TERM

lab_ns a || fail "cannot create namespace a"; NS_A=$LAB_LAST_NS
lab_ns b || fail "cannot create namespace b"; NS_B=$LAB_LAST_NS
lab_veth "$NS_A" "$NS_B" "$IP_A/24" "$IP_B/24" 1500 || fail "cannot create the veth pair"
wait_for 5 ip netns exec "$NS_A" ping -c1 -W1 "$IP_B" || fail "veth does not pass a ping"

# ------------------------------------------------------------- measuring ----
# ping_rtt LABEL TARGET : sets RTT_AVG (ms) and LOSS (%).
ping_rtt() {
    local f=$RAW/$1.ping.txt
    lab_run "$f" "$f" "$NS_A" ping -n -c "$PINGS" -i 0.01 -W 1 "$2"
    RTT_AVG=$(awk -F'/' '/^rtt|^round-trip/ { print $5 }' "$f"); RTT_AVG=${RTT_AVG:-NA}
    LOSS=$(grep -oP '[0-9.]+(?=% packet loss)' "$f"); LOSS=${LOSS:-NA}
}

# iperf_run LABEL TARGET STREAMS : sets MBPS, BYTES, CPU_S (tunnel daemons'
# CPU seconds during the run, NA without daemons).
iperf_run() {
    local label=$1 target=$2 par=$3 json=$RAW/$1.iperf-P$3.json pid t0=0 t1=0
    for pid in "${DAEMONS[@]}"; do t0=$((t0 + $(proc_ticks "$pid"))); done
    lab_run "$json" "$LOGS/iperf3-client.log" "$NS_A" timeout $((DURATION + 30)) \
        iperf3 -c "$target" -p "$IPERF_PORT" -t "$DURATION" -P "$par" -J
    for pid in "${DAEMONS[@]}"; do t1=$((t1 + $(proc_ticks "$pid"))); done
    MBPS=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$json" 2>/dev/null) || MBPS=
    BYTES=$(jq -r '.end.sum_received.bytes' "$json" 2>/dev/null) || BYTES=
    [[ $MBPS =~ ^[0-9]+$ ]] || MBPS=NA
    [[ $BYTES =~ ^[0-9]+$ ]] || BYTES=NA
    CPU_S=NA
    ((${#DAEMONS[@]})) && CPU_S=$(awk -v t=$((t1 - t0)) -v k="$CLK_TCK" 'BEGIN { printf "%.2f", t / k }')
}

# measure LABEL TARGET : ping, iperf3 x1 and xPARALLEL; fills ROW_<LABEL>.
declare -A R=()
measure() {
    local label=$1 target=$2 server
    ping_rtt "$label" "$target"
    log "  $label: ping avg $RTT_AVG ms, loss $LOSS%"
    R[$label.rtt]=$RTT_AVG R[$label.loss]=$LOSS
    lab_bg "$LOGS/iperf3-server-$label.log" "$NS_B" iperf3 -s -p "$IPERF_PORT"
    server=$LAB_LAST_PID
    wait_for 5 ip netns exec "$NS_B" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        log "  $label: iperf3 server did not start"
    iperf_run "$label" "$target" 1
    R[$label.tcp1]=$MBPS R[$label.bytes1]=$BYTES R[$label.cpu1]=$CPU_S
    log "  $label: TCP x1 $MBPS Mbit/s (tunnel CPU $CPU_S s)"
    iperf_run "$label" "$target" "$PARALLEL"
    R[$label.tcp4]=$MBPS R[$label.bytes4]=$BYTES R[$label.cpu4]=$CPU_S
    log "  $label: TCP x$PARALLEL $MBPS Mbit/s (tunnel CPU $CPU_S s)"
    lab_stop "$server"
}

if_mtu() { ip -n "$1" -o link show dev "$2" | grep -oP 'mtu \K[0-9]+'; }

log "agentnet bench: $BIN; output in $OUTDIR"
log "machine: $(nproc) CPUs, kernel $(uname -r), $(iperf3 --version | head -1)"
log "iperf3 ${DURATION}s x1 and x$PARALLEL; $PINGS pings at 10 ms"

# ----------------------------------------------------------- raw veth -------
DAEMONS=()
log "== raw veth $IP_A -> $IP_B"
measure veth "$IP_B"
R[veth.mtu]=$(if_mtu "$NS_A" eth0)

# ------------------------------------------------------------- agentnet -----
log "== agentnet"
declare -A ADDR=() ID=()
for side in a b; do
    ns=NS_${side^^}
    mkdir -m 700 "$WORK/$side" || fail "state dir"
    "$BIN" --state-dir "$WORK/$side" init --name "bench-$side" >>"$LOGS/cli.log" 2>&1 || fail "init $side (see logs/cli.log)"
    # --foreground keeps the daemon a child of this shell: its PID is known
    lab_bg "$LOGS/agentnet-$side.out" "${!ns}" "$BIN" --state-dir "$WORK/$side" up --foreground \
        --interface "anb-$side" --port "$PORT"
    DAEMONS+=("$LAB_LAST_PID")
    ID[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .id)
    ADDR[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .address)
    [[ -n ${ID[$side]} && ${ADDR[$side]} == *:* ]] || fail "agentnet id --json ($side)"
    wait_for 15 has_addr "${!ns}" "anb-$side" "${ADDR[$side]}" ||
        fail "agentnet $side: interface anb-$side has no ${ADDR[$side]} (see $LOGS/agentnet-$side.out)"
done
t_trust=$(now_ms)
"$BIN" --state-dir "$WORK/a" trust add "${ID[b]}" --name bench-b --endpoint "$IP_B:$PORT" \
    >>"$LOGS/cli.log" 2>&1 || fail "trust add on a (see logs/cli.log)"
"$BIN" --state-dir "$WORK/b" trust add "${ID[a]}" --name bench-a --endpoint "$IP_A:$PORT" \
    >>"$LOGS/cli.log" 2>&1 || fail "trust add on b (see logs/cli.log)"
wait_for "$CONNECT_TIMEOUT" ip netns exec "$NS_A" ping -n -c 1 -W 1 "${ADDR[b]}" ||
    fail "no ping through the overlay within ${CONNECT_TIMEOUT}s"
R[agentnet.connect]=$(($(now_ms) - t_trust))
log "  agentnet: first reply ${R[agentnet.connect]} ms after trust add; ${ADDR[a]} <-> ${ADDR[b]}"
measure agentnet "${ADDR[b]}"
R[agentnet.mtu]=$(if_mtu "$NS_A" anb-a)
R[agentnet.rss]="$(peak_rss_mib "${DAEMONS[0]}") / $(peak_rss_mib "${DAEMONS[1]}")"
for side in a b; do
    cp "$WORK/$side/agentnet.log" "$LOGS/agentnet-$side.log" 2>/dev/null
    ns=NS_${side^^}
    ip netns exec "${!ns}" "$BIN" --state-dir "$WORK/$side" down >>"$LOGS/cli.log" 2>&1 ||
        log "  agentnet down ($side) failed (see logs/cli.log)"
done
for pid in "${DAEMONS[@]}"; do lab_stop "$pid"; done

# ======================================================= relay path ==========
# (NAT traversal, issue 4; this section and the RELAY_ROWS entry of the table
# loop are all it adds.) The same measurements between two agents that can
# only reach each other through a rendezvous relay: three namespaces on one
# bridge (10.211.0.1 ra, .2 rb, .3 the rendezvous rr); ra drops every packet
# to and from rb (nftables), so the direct path never answers and the data
# goes A -> rendezvous -> B. The row's tunnel CPU counts both agents and the
# rendezvous server. RELAY=0 skips it.
RELAY=${RELAY:-1}
RELAY_ROWS=()
RV_PORT=3478
RV_PID=
relay_bench() {
    local ns_ra ns_rb ns_rr rv_id side ns t0 path
    local ip_rb=10.211.0.2 ip_rr=10.211.0.3
    lab_segment 10.211.0 ra rb rr || { log "relay: cannot build the segment"; return 1; }
    ns_ra=${LAB_NS[ra]} ns_rb=${LAB_NS[rb]} ns_rr=${LAB_NS[rr]}
    wait_for 5 ip netns exec "$ns_ra" ping -c1 -W1 "$ip_rr" || { log "relay: the segment does not pass a ping"; return 1; }
    printf '%s\n' "table ip benchcut {" \
        "  chain input { type filter hook input priority filter; policy accept; ip saddr $ip_rb drop; }" \
        "  chain output { type filter hook output priority filter; policy accept; ip daddr $ip_rb drop; }" \
        "}" | ip netns exec "$ns_ra" nft -f - || { log "relay: nft failed"; return 1; }
    mkdir -m 700 "$WORK/rv" || return 1
    lab_bg "$LOGS/rendezvous.out" "$ns_rr" "$BIN" --state-dir "$WORK/rv" rendezvous --foreground \
        --listen "$ip_rr:$RV_PORT" --tcp-listen "$ip_rr:$RV_PORT"
    RV_PID=$LAB_LAST_PID
    wait_for 10 ip netns exec "$ns_rr" sh -c "ss -Hlun 'sport = :$RV_PORT' | grep -q ." ||
        { log "relay: the rendezvous did not start (see $LOGS/rendezvous.out)"; return 1; }
    rv_id=$("$BIN" --state-dir "$WORK/rv" id --json | jq -r .id)
    [[ -n $rv_id && $rv_id != null ]] || { log "relay: no rendezvous id"; return 1; }
    DAEMONS=()
    for side in ra rb; do
        ns=${LAB_NS[$side]}
        mkdir -m 700 "$WORK/$side" || return 1
        "$BIN" --state-dir "$WORK/$side" init --name "bench-$side" >>"$LOGS/cli.log" 2>&1 || return 1
        lab_bg "$LOGS/agentnet-$side.out" "$ns" "$BIN" --state-dir "$WORK/$side" up --foreground \
            --interface "anb-$side" --port "$PORT" --rendezvous "$ip_rr:$RV_PORT=$rv_id"
        DAEMONS+=("$LAB_LAST_PID")
        ID[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .id)
        ADDR[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .address)
        wait_for 15 has_addr "$ns" "anb-$side" "${ADDR[$side]}" ||
            { log "relay: agent $side has no address (see $LOGS/agentnet-$side.out)"; return 1; }
    done
    t0=$(now_ms)
    "$BIN" --state-dir "$WORK/ra" trust add "${ID[rb]}" --name bench-rb >>"$LOGS/cli.log" 2>&1 || return 1
    "$BIN" --state-dir "$WORK/rb" trust add "${ID[ra]}" --name bench-ra >>"$LOGS/cli.log" 2>&1 || return 1
    wait_for "$CONNECT_TIMEOUT" ip netns exec "$ns_ra" ping -n -c 1 -W 1 "${ADDR[rb]}" ||
        { log "relay: no ping through the relay within ${CONNECT_TIMEOUT}s"; return 1; }
    R[relay.connect]=$(($(now_ms) - t0))
    path=$(ip netns exec "$ns_ra" "$BIN" --state-dir "$WORK/ra" status --json |
        jq -r --arg id "${ID[rb]}" '.peers[] | select(.id == $id) | "\(.path) \(.relay)"')
    log "  relay: first reply ${R[relay.connect]} ms after trust add; A's path to B: $path"
    [[ $path == relay* ]] || { log "relay: the path is not the relay ($path)"; return 1; }
    DAEMONS+=("$RV_PID")
    NS_A=$ns_ra NS_B=$ns_rb # measure() runs the client in NS_A, the server in NS_B
    measure relay "${ADDR[rb]}"
    R[relay.mtu]=$(if_mtu "$ns_ra" anb-ra)
    R[relay.rss]="$(peak_rss_mib "${DAEMONS[0]}") / $(peak_rss_mib "${DAEMONS[1]}") (rv $(peak_rss_mib "$RV_PID"))"
    path=$(ip netns exec "$ns_ra" "$BIN" --state-dir "$WORK/ra" status --json |
        jq -r --arg id "${ID[rb]}" '.peers[] | select(.id == $id) | .path')
    [[ $path == relay ]] || log "  relay: WARNING: the path changed to '$path' during the measurement"
    RELAY_ROWS=(relay)
}
if [[ $RELAY == 1 ]]; then
    log "== agentnet through a rendezvous relay (direct path blocked)"
    relay_bench || log "relay: no relay row in the table (see above)"
    for side in ra rb; do cp "$WORK/$side/agentnet.log" "$LOGS/agentnet-$side.log" 2>/dev/null; done
    for pid in "${DAEMONS[@]}" $RV_PID; do lab_stop "$pid"; done
    DAEMONS=()
fi
# ================================================ end of the relay path ======

# ===================================================== userspace path ========
# (Rootless mode, issue 8; this section and the USERSPACE_ROWS entries of the
# table loop are all it adds.) A TUN agent T and an agent U in rootless mode
# (`up --userspace`, run as nobody through setpriv: no TUN, no capabilities),
# on one veth pair (10.214.0.1 T, .2 U). iperf3 in U's namespace connects to
# U's `--forward 127.0.0.1:5201:T:5201`; U's in-process smoltcp stack carries
# it over the overlay to T's iperf3 server (row "userspace -> TUN"), and -R
# measures the other direction ("TUN -> userspace"). RTT: T pings U's agent
# address (answered by smoltcp). Tunnel CPU and RSS: both daemons.
# USERSPACE=0 skips it.
USERSPACE=${USERSPACE:-1}
USERSPACE_ROWS=()
us_as_nobody() { setpriv --reuid nobody --regid nogroup --clear-groups "$@"; }
# us_iperf LABEL STREAMS [iperf3 args] : like iperf_run, client in U to the
# local forward.
us_iperf() {
    local label=$1 par=$2 json=$RAW/$1.iperf-P$2.json pid t0=0 t1=0; shift 2
    for pid in "${DAEMONS[@]}"; do t0=$((t0 + $(proc_ticks "$pid"))); done
    lab_run "$json" "$LOGS/iperf3-client.log" "$NS_U" timeout $((DURATION + 30)) \
        iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$DURATION" -P "$par" -J "$@"
    for pid in "${DAEMONS[@]}"; do t1=$((t1 + $(proc_ticks "$pid"))); done
    MBPS=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$json" 2>/dev/null) || MBPS=
    BYTES=$(jq -r '.end.sum_received.bytes' "$json" 2>/dev/null) || BYTES=
    [[ $MBPS =~ ^[0-9]+$ ]] || MBPS=NA
    [[ $BYTES =~ ^[0-9]+$ ]] || BYTES=NA
    CPU_S=$(awk -v t=$((t1 - t0)) -v k="$CLK_TCK" 'BEGIN { printf "%.2f", t / k }')
}
userspace_bench() {
    local ns_t ns_u side t0 server id_t id_u addr_u row args
    lab_ns ust || return 1; ns_t=$LAB_LAST_NS
    lab_ns usu || return 1; ns_u=$LAB_LAST_NS; NS_U=$ns_u
    lab_veth "$ns_t" "$ns_u" 10.214.0.1/24 10.214.0.2/24 1500 || return 1
    wait_for 5 ip netns exec "$ns_t" ping -c1 -W1 10.214.0.2 || { log "userspace: the veth does not pass a ping"; return 1; }
    mkdir -m 700 "$WORK/ut" "$WORK/uu" || return 1
    chown nobody:nogroup "$WORK/uu" && chmod 711 "$WORK" || return 1
    "$BIN" --state-dir "$WORK/ut" init --name bench-t >>"$LOGS/cli.log" 2>&1 || return 1
    us_as_nobody "$BIN" --state-dir "$WORK/uu" init --name bench-u >>"$LOGS/cli.log" 2>&1 || return 1
    id_t=$("$BIN" --state-dir "$WORK/ut" id --json | jq -r .id)
    id_u=$(us_as_nobody "$BIN" --state-dir "$WORK/uu" id --json | jq -r .id)
    addr_u=$(us_as_nobody "$BIN" --state-dir "$WORK/uu" id --json | jq -r .address)
    DAEMONS=()
    lab_bg "$LOGS/agentnet-ut.out" "$ns_t" "$BIN" --state-dir "$WORK/ut" up --foreground \
        --interface anb-ut --port "$PORT"
    DAEMONS+=("$LAB_LAST_PID")
    lab_bg "$LOGS/agentnet-uu.out" "$ns_u" setpriv --reuid nobody --regid nogroup --clear-groups \
        "$BIN" --state-dir "$WORK/uu" up --foreground --userspace --port "$PORT" \
        --forward "127.0.0.1:$IPERF_PORT:bench-t:$IPERF_PORT"
    DAEMONS+=("$LAB_LAST_PID")
    wait_for 15 ip netns exec "$ns_u" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        { log "userspace: the rootless agent did not start (see $LOGS/agentnet-uu.out)"; return 1; }
    # T first, then U with T's endpoint: U's first handshake is answered.
    t0=$(now_ms)
    ip netns exec "$ns_t" "$BIN" --state-dir "$WORK/ut" trust add "$id_u" --name bench-u >>"$LOGS/cli.log" 2>&1 || return 1
    ip netns exec "$ns_u" setpriv --reuid nobody --regid nogroup --clear-groups \
        "$BIN" --state-dir "$WORK/uu" trust add "$id_t" --name bench-t --endpoint "10.214.0.1:$PORT" >>"$LOGS/cli.log" 2>&1 || return 1
    lab_bg "$LOGS/iperf3-server-userspace.log" "$ns_t" iperf3 -s -p "$IPERF_PORT"
    server=$LAB_LAST_PID
    wait_for 5 ip netns exec "$ns_t" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        log "  userspace: iperf3 server did not start"
    wait_for "$CONNECT_TIMEOUT" ip netns exec "$ns_t" ping -n -c 1 -W 1 "$addr_u" ||
        { log "userspace: no ping from T to the rootless agent within ${CONNECT_TIMEOUT}s"; return 1; }
    R[usup.connect]=$(($(now_ms) - t0))
    NS_A=$ns_t ping_rtt userspace "$addr_u"
    for row in usup usdown; do
        R[$row.rtt]=$RTT_AVG R[$row.loss]=$LOSS
        R[$row.mtu]=$(us_as_nobody "$BIN" --state-dir "$WORK/uu" status --json 2>/dev/null | jq -r .mtu)
        args=(); [[ $row == usdown ]] && args=(-R)
        us_iperf "$row" 1 "${args[@]}"
        R[$row.tcp1]=$MBPS R[$row.bytes1]=$BYTES R[$row.cpu1]=$CPU_S
        log "  $row: TCP x1 $MBPS Mbit/s (tunnel CPU $CPU_S s)"
        us_iperf "$row" "$PARALLEL" "${args[@]}"
        R[$row.tcp4]=$MBPS R[$row.bytes4]=$BYTES R[$row.cpu4]=$CPU_S
        log "  $row: TCP x$PARALLEL $MBPS Mbit/s (tunnel CPU $CPU_S s)"
        R[$row.rss]="$(peak_rss_mib "${DAEMONS[1]}") / $(peak_rss_mib "${DAEMONS[0]}")"
    done
    log "  userspace: ping T -> U avg $RTT_AVG ms, loss $LOSS%; first reply ${R[usup.connect]} ms after trust add"
    lab_stop "$server"
    USERSPACE_ROWS=(usup usdown)
}
if [[ $USERSPACE == 1 ]]; then
    log "== agentnet rootless (--userspace, as nobody) <-> TUN agent"
    userspace_bench || log "userspace: no userspace rows in the table (see above)"
    for side in ut uu; do cp "$WORK/$side/agentnet.log" "$LOGS/agentnet-$side.log" 2>/dev/null; done
    for pid in "${DAEMONS[@]}"; do lab_stop "$pid"; done
    DAEMONS=()
fi
# ============================================== end of the userspace path ====

# ----------------------------------------------------------------- table ----
ratio() { awk -v x="$1" -v b="$2" 'BEGIN { if (x == "NA" || b == "NA" || b == 0) print "NA"; else printf "%.2f", x / b }'; }
pergb() { awk -v c="$1" -v y="$2" 'BEGIN { if (c == "NA" || y == "NA" || y == 0) print "NA"; else printf "%.2f", c / (y / 1e9) }'; }
{
    echo "| path | TCP 1x Mbit/s | 1x vs veth | TCP ${PARALLEL}x Mbit/s | ${PARALLEL}x vs veth | RTT avg ms | RTT vs veth | ping loss % | connect ms | tunnel CPU-s/GB 1x | tunnel CPU-s/GB ${PARALLEL}x | peak RSS MiB A / B | MTU |"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for p in veth agentnet "${RELAY_ROWS[@]}" "${USERSPACE_ROWS[@]}"; do
        name=$p; [[ $p == veth ]] && name="raw veth"; [[ $p == relay ]] && name="agentnet via relay"
        [[ $p == usup ]] && name="rootless userspace -> TUN"; [[ $p == usdown ]] && name="TUN -> rootless userspace"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$name" \
            "${R[$p.tcp1]}" "$(ratio "${R[$p.tcp1]}" "${R[veth.tcp1]}")" \
            "${R[$p.tcp4]}" "$(ratio "${R[$p.tcp4]}" "${R[veth.tcp4]}")" \
            "${R[$p.rtt]}" "$(ratio "${R[$p.rtt]}" "${R[veth.rtt]}")" "${R[$p.loss]}" \
            "${R[$p.connect]:--}" \
            "$(pergb "${R[$p.cpu1]}" "${R[$p.bytes1]}")" "$(pergb "${R[$p.cpu4]}" "${R[$p.bytes4]}")" \
            "${R[$p.rss]:--}" "${R[$p.mtu]:-NA}"
    done
    echo
    echo "iperf3 A -> B, ${DURATION} s per run, receiver-side rate; RTT over $PINGS pings at 10 ms."
    echo "Tunnel CPU = utime+stime of both daemons during the run / GB received (1 GB = 1e9 B)."
    ((${#RELAY_ROWS[@]})) && echo "Relay row: direct path blocked, A -> rendezvous -> B on one bridge; its tunnel CPU includes the rendezvous server."
    ((${#USERSPACE_ROWS[@]})) && echo "Rootless rows: iperf3 through a --forward of an agent in --userspace mode (smoltcp, run as nobody) to a TUN agent; RTT is the TUN agent pinging the rootless one; RSS rootless / TUN."
    echo "$(nproc) CPUs, kernel $(uname -r), $("$BIN" --version 2>/dev/null | head -1)."
} | tee "$OUTDIR/table.md"
log "results: $OUTDIR/table.md (raw: $RAW, logs: $LOGS)"
