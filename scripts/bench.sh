#!/usr/bin/env bash
# =============================================================================
# scripts/bench.sh — the project's benchmark: what the agentnet tunnel costs
# against the raw link under it and against other tunnels (as root).
#
# Two network namespaces joined by one veth pair (MTU 1500, 10.210.0.1/.2).
# Measured between them, in one run and one table:
#
#   raw veth       the link itself
#   agentnet       two agents, TUN, direct path, tunnel MTU 1420 (--mtu)
#   agentnet IPv4  the same agents, iperf3 and ping to the peer's IPv4
#                  overlay address (100.64.0.0/10) instead of its IPv6 one
#   the peers      wireguard-go, boringtun, gotatun, nebula, fastd, each with
#                  tunnel MTU 1420 (scripts/bench/peers.sh); a peer that is
#                  not installed is skipped with a printed line
# and, in namespaces of their own:
#   agentnet via relay          the direct path blocked (nftables), traffic
#                               A -> rendezvous -> B on one bridge
#   rootless userspace <-> TUN  an agent in `up --userspace` run as nobody
#                               and a TUN agent, both directions
#
# For each: iperf3 TCP A -> B, 1 stream and $PARALLEL streams, $DURATION s
# each (receiver-side Mbit/s); ping RTT, $PINGS pings at 10 ms (avg, p99
# nearest rank, loss), idle, idle with ping and the daemons pinned to one
# CPU (taskset: each crossing's CPU work without waiting for an idle vCPU
# to wake), and while one iperf3 TCP stream runs (latency under load);
# tunnel CPU-seconds per GB (utime+stime of both daemons during the iperf3
# runs / GB received); peak RSS (VmHWM) of each daemon, each binary dropped
# from the page cache before it starts and faulted in by its daemons, as
# after a boot (a file read or just written sits in large folios, which the
# kernel maps whole on a fault: more RSS for the same code);
# connect time. Every figure comes with its ratio to the agentnet row, e.g.
# "460 (0.21×)".
#
# Idle round trips again, interleaved, in a second table: agentnet and every
# peer up at once, RTT_ROUNDS rounds of $PINGS / RTT_ROUNDS pings through
# each in turn, so that the machine's drift over minutes falls on all alike;
# agentnet takes two turns, at its IPv6 and at its IPv4 addresses, and so
# does every peer that carries IPv6 too (all but nebula): an echo inside
# IPv6 takes the kernels longer than inside IPv4, whatever the tunnel, so
# each family is compared with its own. Each turn pings twice: ping's own
# round trip (the kernel's timestamps: until the reply reaches ping's
# socket) and, with `ping -U`, from user to user (until ping has woken and
# read it: what a program waiting for an answer sees).
#
# Handshakes, two figures under the table:
#   criterion      `cargo bench --bench handshake` responder_only: the
#                  responder's work for one IK handshake on one core
#   end to end     one daemon (B) trusting $HS_IDENTITIES generated agents,
#                  each with its own source address in A; they send real
#                  initiations (examples/handshake_rate.rs, with the cookie
#                  the daemon hands out under load, at most 19/s each, the
#                  per-address limit being 20/s): initiations answered per
#                  second, the daemon's CPU meanwhile, and so answered per
#                  CPU-second
# and the code layout: how many of the functions release builds pack
# together (platform/linker/agentnet.symbol-order) the binary still has,
# and whether its linker packed them.
#
# Usage:   sudo scripts/bench.sh [--install-peers] [--help]
#   --install-peers   first `apt-get install --no-install-recommends
#                     wireguard-go wireguard-tools nebula fastd` (apt-get
#                     update and again if that fails) and `cargo install
#                     --locked` boringtun-cli and gotatun-cli into
#                     $CARGO_ROOT (niced); what fails to install is skipped
# Env:     DURATION=10  PARALLEL=4  PINGS=100  CONNECT_TIMEOUT=30
#          PEERS="wggo boringtun gotatun nebula fastd" (a subset, or "")
#          RELAY=1  USERSPACE=1  HANDSHAKES=1 (0: leave those out)
#          RTT_ROUNDS=10 (0: no interleaved round trips)
#          HS_IDENTITIES=1024 (up to 1024)  HS_SECONDS=5
#          AGENTNET=<binary> (default: cargo build --release, target/release/agentnet,
#          copied to $OUTDIR/agentnet)
#          CARGO_ROOT=/tmp/agentnet-bench/cargo-root  BORINGTUN=  GOTATUN=
#          OUTDIR=/tmp/agentnet-bench/<timestamp> (refused when anyone but root
#          can change it or a directory above it: lab_owned_path)
# Output:  the markdown table (also $OUTDIR/table.md), run.log, raw/
#          (iperf3 JSON, ping logs), logs/ (daemons, install, build)
#
# Traffic goes only to addresses inside the namespaces created here, which
# have no link to the host's network. The measuring part runs in a private
# mount namespace with $OUTDIR/run over /run, so netns handles and the
# WireGuard UAPI sockets stay out of the host's /run. On exit (trap), even
# on failure, only the processes started here are stopped, by PID, and the
# namespaces are deleted.
# =============================================================================
set -uo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh
# shellcheck source=scripts/bench/peers.sh
source scripts/bench/peers.sh

INSTALL_PEERS=0
for arg; do
    case $arg in
        --install-peers) INSTALL_PEERS=1 ;;
        -h | --help) lab_usage; exit 0 ;;
        *) echo "bench: unknown argument $arg" >&2; lab_usage >&2; exit 2 ;;
    esac
done

DURATION=${DURATION:-10}
PARALLEL=${PARALLEL:-4}
PINGS=${PINGS:-100}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-30}
PEERS=${PEERS-$PEERS_ALL}
RELAY=${RELAY:-1}
USERSPACE=${USERSPACE:-1}
HANDSHAKES=${HANDSHAKES:-1}
HS_IDENTITIES=${HS_IDENTITIES:-1024}
HS_SECONDS=${HS_SECONDS:-5}
RTT_ROUNDS=${RTT_ROUNDS:-10}
export OUTDIR=${OUTDIR:-/tmp/agentnet-bench/$(date +%Y%m%d-%H%M%S)}
NS_A='' NS_B='' IP_A=10.210.0.1 IP_B=10.210.0.2
TUN_MTU=1420 # every tunnel between A and B: WireGuard's MTU on a 1500 underlay
PORT=7400 IPERF_PORT=5201

for n in DURATION PARALLEL PINGS CONNECT_TIMEOUT RTT_ROUNDS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || { echo "bench: $n must be a whole number, not '${!n}'" >&2; exit 2; }
done
((PINGS > 0)) || { echo "bench: PINGS must be at least 1" >&2; exit 2; }
[[ $EUID -eq 0 ]] || { echo "bench: must run as root" >&2; exit 1; }
[[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && PATH=$HOME/.cargo/bin:$PATH
for t in ip iperf3 jq ping awk ss unshare setpriv nft taskset; do
    command -v "$t" >/dev/null || { echo "bench: missing $t (scripts/test.sh installs it)" >&2; exit 1; }
done

RAW=$OUTDIR/raw LOGS=$OUTDIR/logs WORK=$OUTDIR/work
log() { printf '[%s] %s\n' "$(date +%T)" "$*" | tee -a "$OUTDIR/run.log" >&2; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
fail() { log "FAILED: $*"; exit 1; }

# code_layout BIN : how much of platform/linker/agentnet.symbol-order (the
# functions release builds pack together, platform/linker/build.rs) BIN still
# has, and whether its linker applied the list: the first listed function
# BIN has then starts .text.
code_layout() {
    local list=platform/linker/agentnet.symbol-order symbols listed found first text addr hot applied=no
    [[ -f $list ]] && command -v nm >/dev/null && command -v readelf >/dev/null || return 0
    symbols=$(nm --defined-only "$1" | awk '{ print $1, $3 }') # address name
    listed=$(grep -vc '^#' "$list")
    found=$(comm -12 <(grep -v '^#' "$list" | sort -u) <(cut -d' ' -f2 <<<"$symbols" | sort -u) | wc -l)
    first=$(grep -v '^#' "$list" | grep -m1 -Fxf <(cut -d' ' -f2 <<<"$symbols"))
    text=$(readelf -SW "$1" | sed -n 's/.*\] \.text  *PROGBITS  *\([0-9a-f]*\) .*/\1/p')
    addr=$(awk -v n="$first" '$2 == n { print $1; exit }' <<<"$symbols")
    [[ -n $text && -n $addr ]] && ((16#$text == 16#$addr)) && applied=yes
    printf 'Code layout: %s of the %s functions in %s are in this binary; ' "$found" "$listed" "$list"
    if [[ $applied == yes ]]; then echo "packed at the start of .text."; else echo "NOT applied (not a release build linked by LLD?)."; fi
    ((found * 10 < listed * 9)) && echo "The list is stale: regenerate it with sudo scripts/symbol-order.sh."
    # The constants that code uses (platform/linker/agentnet.rodata-order).
    hot=$(readelf -SW "$1" | sed -n 's/.*\] \.rodata\.hot  *PROGBITS  *[0-9a-f]*  *[0-9a-f]*  *\([0-9a-f]*\) .*/\1/p')
    if [[ -n $hot ]]; then
        echo "Data layout: $((16#$hot / 1024)) KiB of constants gathered in .rodata.hot."
    else
        echo "Data layout: no .rodata.hot (platform/linker/agentnet.rodata-order not applied)."
    fi
    return 0
}

# ------------------------------------ outside the mount namespace: set-up ----
if [[ -z ${AGENTNET_BENCH_INNER:-} ]]; then
    lab_private_dir "$OUTDIR" || exit 1
    mkdir -p "$RAW" "$LOGS" "$OUTDIR/run" || exit 1
    trap 'log "interrupted"; exit 130' INT TERM
    ((INSTALL_PEERS)) && peers_install "$LOGS/install.log"
    if [[ -z ${AGENTNET:-} ]]; then
        log "building the release binary"
        cargo build --release --bin agentnet >"$LOGS/build.log" 2>&1 ||
            { tail -20 "$LOGS/build.log"; fail "cargo build --release"; }
        # A copy: `cargo bench` below rebuilds target/release/agentnet (with
        # the dev-dependency's `sim` feature, under the bench profile), and
        # that is not the binary users build.
        cp target/release/agentnet "$OUTDIR/agentnet" || fail "cannot copy the release binary"
        AGENTNET=$OUTDIR/agentnet
        BUILT_RELEASE=1
    fi
    if [[ $HANDSHAKES == 1 ]]; then
        log "building examples/handshake_rate and the criterion handshake bench"
        HANDSHAKE_RATE=$PWD/target/release/examples/handshake_rate
        cargo build --release --example handshake_rate >>"$LOGS/build.log" 2>&1 ||
            { log "  building examples/handshake_rate failed (logs/build.log): no end-to-end figure"; HANDSHAKE_RATE=; }
        # criterion's estimate of responder_only (the middle of its interval)
        cargo bench --bench handshake -- 'handshake/responder_only$' >"$LOGS/criterion-handshake.log" 2>&1 ||
            log "  the criterion handshake bench failed (logs/criterion-handshake.log)"
        CRITERION_RESPONDER=$(grep -A2 '^handshake/responder_only$' "$LOGS/criterion-handshake.log" |
            awk '/time:/ { print $4, $5; exit }')
        # Put the release binary back in target/release (cargo keeps both
        # builds, so this only links it again): left as `cargo bench` made
        # it, `sudo target/release/agentnet up` would run the `sim` build,
        # compiled without the profile's layout.
        if ((${BUILT_RELEASE:-0})); then
            cargo build --release --bin agentnet >>"$LOGS/build.log" 2>&1 ||
                log "  could not restore target/release/agentnet (logs/build.log)"
        fi
        export HANDSHAKE_RATE CRITERION_RESPONDER
    fi
    CODE_LAYOUT=$(code_layout "$AGENTNET")
    export AGENTNET BORINGTUN GOTATUN CODE_LAYOUT
    exec unshare --mount --propagation private env AGENTNET_BENCH_INNER=1 bash "$SELF" "$@"
fi
mount --bind "$OUTDIR/run" /run || fail "cannot bind-mount $OUTDIR/run over /run"
umask 077 # keys and configs below
mkdir "$WORK" || exit 1
BIN=$AGENTNET
[[ -x $BIN ]] || fail "no agentnet binary at $BIN"
CLK_TCK=$(getconf CLK_TCK)

lab_init "anb-$$"
trap 'lab_cleanup' EXIT
trap 'log "interrupted"; exit 130' INT TERM

lab_pair "$IP_A/24" "$IP_B/24" || fail "cannot create the namespaces and their veth pair"
wait_for 5 ip netns exec "$NS_A" ping -c1 -W1 "$IP_B" || fail "veth does not pass a ping"

# ------------------------------------------------------------- measuring ----
# Results: R[ROW.KEY]; ROWS lists the rows in table order.
declare -A R=()
ROWS=()
DAEMONS=()  # PIDs whose CPU counts as the tunnel's
SKIPPED=()  # "peer (reason)"

# measure_rtt ROW NS TARGET [SUFFIX] : RTT avg and p99 (nearest rank) in ms,
# loss in %, as R[ROW.rttSUFFIX], R[ROW.p99SUFFIX], R[ROW.lossSUFFIX].
# PING_WRAP: a command put in front of ping (the one-CPU pings: taskset).
PING_WRAP=()
measure_rtt() {
    local row=$1 sfx=${4:-} f=$RAW/$1.ping${4:-}.txt
    lab_run "$f" "$f" "$2" "${PING_WRAP[@]}" ping -n -c "$PINGS" -i 0.01 -W 1 "$3"
    rtt_stats "$row" "$sfx" "$f" "$PINGS"
}

# rtt_stats ROW SUFFIX FILE SENT : avg, p99 (nearest rank) and loss of the
# replies ping logged in FILE, as R[ROW.rttSUFFIX], R[ROW.p99SUFFIX],
# R[ROW.lossSUFFIX].
rtt_stats() {
    local row=$1 sfx=$2
    read -r "R[$row.rtt$sfx]" "R[$row.p99$sfx]" "R[$row.loss$sfx]" < <(
        grep -oP 'time=\K[0-9.]+' "$3" | sort -n | awk -v n="$4" '
            { a[NR] = $1; s += $1 }
            END { if (NR == 0) { print "NA NA 100"; exit }
                  i = int((99 * NR + 99) / 100); if (i > NR) i = NR
                  printf "%.3f %.3f %.0f\n", s / NR, a[i], 100 * (n - NR) / n }')
    log "  $row: ping${sfx:+ ($sfx)} avg ${R[$row.rtt$sfx]} ms, p99 ${R[$row.p99$sfx]} ms, loss ${R[$row.loss$sfx]}%"
}

# pin_daemons CPUS : every thread of the row's daemons on CPUS (taskset).
pin_daemons() {
    local pid task
    for pid in "${DAEMONS[@]}"; do
        for task in /proc/"$pid"/task/*; do
            taskset -p -c "$1" "${task##*/}" >/dev/null 2>&1
        done
    done
}

# measure_rtt_one_cpu ROW NS TARGET : the same pings with ping and every
# thread of the daemons on CPU 0, then the daemons back on all CPUs. On one
# CPU nothing waits for an idle vCPU to wake or for the scheduler to place a
# woken task, so the round trip is the CPU work of each crossing (the
# tunnel's code and the kernel's): the like-for-like comparison of the
# tunnels' per-packet cost. Sets R[ROW.rtt_cpu0], R[ROW.p99_cpu0].
measure_rtt_one_cpu() {
    pin_daemons 0
    PING_WRAP=(taskset -c 0)
    measure_rtt "$1" "$2" "$3" _cpu0
    PING_WRAP=()
    pin_daemons "0-$(($(nproc) - 1))"
}

# measure_rtt_loaded ROW NS TARGET [PING_NS PING_TARGET [IPERF3 ARGS]] : the
# same pings while one iperf3 TCP stream runs from NS to TARGET (the server
# runs already): what an agent's request waits behind a bulk transfer on
# the same tunnel. The pings go from PING_NS to PING_TARGET (default: NS to
# TARGET). Sets R[ROW.rtt_load], R[ROW.p99_load], R[ROW.loss_load].
measure_rtt_loaded() {
    local row=$1 ns=$2 target=$3 ping_ns=${4:-$2} ping_target=${5:-$3} secs client
    shift $(($# < 5 ? $# : 5))
    secs=$(((PINGS + 99) / 100 + 3))
    lab_bg "$LOGS/iperf3-load-$row.log" "$ns" iperf3 -c "$target" -p "$IPERF_PORT" -t "$secs" -P 1 "$@"
    client=$LAB_LAST_PID
    # The stream is up once its data connection is established.
    wait_for 5 ip netns exec "$ns" sh -c \
        "ss -Htn state established 'dport = :$IPERF_PORT' | awk 'END { exit NR < 2 }'" ||
        log "  $row: the loading iperf3 stream did not start"
    measure_rtt "$row" "$ping_ns" "$ping_target" _load
    lab_stop "$client"
}

# iperf_server ROW NS : an iperf3 server in NS; its PID in IPERF_PID.
iperf_server() {
    lab_bg "$LOGS/iperf3-server-$1.log" "$2" iperf3 -s -p "$IPERF_PORT"
    IPERF_PID=$LAB_LAST_PID
    wait_for 5 ip netns exec "$2" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        log "  $1: the iperf3 server did not start"
}

# measure_tcp ROW NS TARGET [IPERF3 ARGS] : iperf3 client in NS, 1 and
# $PARALLEL streams (the server runs already). Sets R[ROW.tcp1], R[ROW.tcpN]
# and adds the daemons' CPU seconds and the bytes received to R[ROW.cpu],
# R[ROW.bytes].
measure_tcp() {
    local row=$1 ns=$2 target=$3 par key json pid t0 t1 mbps bytes cpu; shift 3
    R[$row.cpu]=0 R[$row.bytes]=0
    for par in 1 "$PARALLEL"; do
        key=tcpN; [[ $par == 1 ]] && key=tcp1
        json=$RAW/$row.iperf-P$par.json t0=0 t1=0
        for pid in "${DAEMONS[@]}"; do t0=$((t0 + $(proc_ticks "$pid"))); done
        lab_run "$json" "$LOGS/iperf3-client.log" "$ns" timeout $((DURATION + 30)) \
            iperf3 -c "$target" -p "$IPERF_PORT" -t "$DURATION" -P "$par" -J "$@"
        for pid in "${DAEMONS[@]}"; do t1=$((t1 + $(proc_ticks "$pid"))); done
        mbps=$(jq -r '.end.sum_received.bits_per_second / 1e6 | floor' "$json" 2>/dev/null)
        bytes=$(jq -r '.end.sum_received.bytes' "$json" 2>/dev/null)
        [[ $mbps =~ ^[0-9]+$ && $bytes =~ ^[0-9]+$ ]] || mbps=NA bytes=NA
        cpu=$(awk -v t=$((t1 - t0)) -v k="$CLK_TCK" 'BEGIN { printf "%.2f", t / k }')
        R[$row.$key]=$mbps
        if [[ $bytes == NA ]]; then R[$row.bytes]=NA; elif [[ ${R[$row.bytes]} != NA ]]; then
            R[$row.bytes]=$((R[$row.bytes] + bytes))
            R[$row.cpu]=$(awk -v a="${R[$row.cpu]}" -v b="$cpu" 'BEGIN { print a + b }')
        fi
        log "  $row: TCP x$par $mbps Mbit/s (tunnel CPU $cpu s)"
    done
    ((${#DAEMONS[@]})) || R[$row.cpu]=NA
}

# measure ROW NS_CLIENT NS_SERVER TARGET : RTT, then TCP client -> server,
# then RTT under that load.
measure() {
    measure_rtt "$1" "$2" "$4"
    measure_rtt_one_cpu "$1" "$2" "$4"
    iperf_server "$1" "$3"
    measure_tcp "$1" "$2" "$4"
    measure_rtt_loaded "$1" "$2" "$4"
    lab_stop "$IPERF_PID"
}

# record_rss ROW PID_A PID_B [PID_RENDEZVOUS] : peak RSS of the daemons.
record_rss() {
    R[$1.rss_a]=$(peak_rss_mib "$2") R[$1.rss_b]=$(peak_rss_mib "$3")
    [[ -n ${4:-} ]] && R[$1.rss_rv]=$(peak_rss_mib "$4")
}

# first_reply NS TARGET : sets REPLY_MS, the epoch ms of the first echo reply
# (ping -D; -c1 -w5 sends every 10 ms until one reply comes). Until the route
# exists ping fails at once and is retried every 10 ms, up to CONNECT_TIMEOUT.
first_reply() {
    local f=$RAW/first-ping.txt deadline=$(($(date +%s) + CONNECT_TIMEOUT))
    REPLY_MS=
    while (($(date +%s) < deadline)); do
        if lab_run "$f" /dev/null "$1" ping -n -D -i 0.01 -c 1 -w 5 "$2"; then
            REPLY_MS=$(grep -m1 -oP '^\[\K[0-9.]+(?=\] [0-9]+ bytes from)' "$f" |
                awk '{ printf "%.0f", $1 * 1000 }')
            [[ -n $REPLY_MS ]] && return 0
        fi
        sleep 0.01
    done
    return 1
}

# addr_mtu NS ADDR : MTU of the interface that holds ADDR.
addr_mtu() {
    local dev; dev=$(ip -n "$1" -o addr show | awk -v a="$2" 'index($4, a "/") == 1 { print $2; exit }')
    [[ -n $dev ]] && ip -n "$1" -o link show dev "$dev" | grep -oP 'mtu \K[0-9]+'
}

stop_daemons() {
    local pid
    for pid in "${DAEMONS[@]}"; do lab_stop "$pid"; done
    DAEMONS=()
}
# row_failed ROW REASON : the row says FAILED in the table.
row_failed() {
    log "  $1: FAILED: $2"
    R[$1.status]="FAILED: $2"
    stop_daemons
    return 1
}

# ------------------------------------------------- tunnels between A and B ----
# agentnet itself: agentnet_version, _prepare and _start in scripts/bench/peers.sh.

# agentnet_extra : while both agents run, the same measurements over IPv4
# (row agentnet4: inner IPv4 packets on the same sessions).
agentnet_extra() {
    ROWS+=(agentnet4)
    R[agentnet4.version]=${R[agentnet.version]}
    log "== agentnet over IPv4: $TUN_IP4_A <-> $TUN_IP4_B"
    if ! first_reply "$NS_B" "$TUN_IP4_A"; then
        log "  agentnet4: FAILED: no IPv4 ping B -> A"
        R[agentnet4.status]="FAILED: no IPv4 ping B -> A within ${CONNECT_TIMEOUT}s"
        return
    fi
    R[agentnet4.mtu]=$(addr_mtu "$NS_A" "$TUN_IP4_A")
    # interleaved: the peers' inner packets are IPv4 too
    R[agentnet4.tip_a]=$TUN_IP4_A R[agentnet4.tip_b]=$TUN_IP4_B
    measure agentnet4 "$NS_A" "$NS_B" "$TUN_IP4_B"
}

# bench_tunnel P : node A up, then B; connect = B started -> first reply B -> A.
bench_tunnel() {
    local p=$1 t0
    ROWS+=("$p")
    R[$p.version]=$("${p}_version")
    log "== $p (${R[$p.version]})"
    DAEMONS=() TUN_IP_A='' TUN_IP_B='' TUN_IP6_A='' TUN_IP6_B=''
    "${p}_prepare" >>"$LOGS/$p-prepare.log" 2>&1 ||
        { row_failed "$p" "prepare: $(tail -n1 "$LOGS/$p-prepare.log")"; return; }
    "${p}_start" a || { row_failed "$p" "node A did not come up (logs/$p-a.log)"; return; }
    t0=$(now_ms)
    "${p}_start" b || { row_failed "$p" "node B did not come up (logs/$p-b.log)"; return; }
    first_reply "$NS_B" "$TUN_IP_A" || { row_failed "$p" "no ping B -> A within ${CONNECT_TIMEOUT}s"; return; }
    R[$p.connect]=$((REPLY_MS - t0))
    R[$p.mtu]=$(addr_mtu "$NS_A" "$TUN_IP_A")
    # for the interleaved round trips
    R[$p.tip_a]=$TUN_IP_A R[$p.tip_b]=$TUN_IP_B R[$p.tip6_a]=$TUN_IP6_A R[$p.tip6_b]=$TUN_IP6_B
    log "  $p: first reply ${R[$p.connect]} ms after starting B; $TUN_IP_A <-> $TUN_IP_B, MTU ${R[$p.mtu]}"
    measure "$p" "$NS_A" "$NS_B" "$TUN_IP_B"
    [[ $(type -t "${p}_extra") == function ]] && "${p}_extra"
    record_rss "$p" "${DAEMONS[0]}" "${DAEMONS[1]}"
    stop_daemons
}

log "agentnet bench: $BIN; output in $OUTDIR"
log "machine: $(nproc) CPUs, kernel $(uname -r), $(iperf3 --version | head -1)"
log "iperf3 ${DURATION}s x1 and x$PARALLEL; $PINGS pings at 10 ms; tunnel MTU $TUN_MTU"

log "== raw veth $IP_A -> $IP_B"
ROWS+=(veth)
R[veth.version]="kernel $(uname -r)"
measure veth "$NS_A" "$NS_B" "$IP_B"
R[veth.mtu]=$(addr_mtu "$NS_A" "$IP_A")

bench_tunnel agentnet

# ===================================================== handshakes ============
# One daemon in B trusts HS_IDENTITIES generated agents, agent N with the
# endpoint 10.210.8.1 + N, port 7500 (A's loopback holds those addresses; B
# routes them via A). examples/handshake_rate.rs sends their initiations
# to B: R[hs.answered] initiations answered per second, R[hs.cpu] the
# daemon's share of one core meanwhile.
HS_BASE=10.210.8.1 HS_PORT=7500
handshake_bench() {
    local dir=$WORK/hs out=$RAW/handshake_rate.txt id pid t0 t1 ms0 ms1 i
    ((HS_IDENTITIES >= 1 && HS_IDENTITIES <= 1024)) || { log "  handshakes: HS_IDENTITIES must be 1..1024"; return; }
    mkdir "$dir" && "$BIN" --state-dir "$dir" init --name bench-hs >>"$LOGS/cli.log" 2>&1 &&
        "$HANDSHAKE_RATE" trust --state-dir "$dir" --identities "$HS_IDENTITIES" \
            --source-base "$HS_BASE" --port "$HS_PORT" >>"$LOGS/cli.log" 2>&1 ||
        { log "  handshakes: FAILED to prepare (logs/cli.log)"; return; }
    for ((i = 0; i < HS_IDENTITIES; i++)); do
        echo "addr add 10.210.$((8 + (1 + i) / 256)).$(((1 + i) % 256))/32 dev lo"
    done >"$WORK/hs-addresses"
    ip -n "$NS_A" -batch "$WORK/hs-addresses" && ip -n "$NS_B" route add 10.210.8.0/21 via "$IP_A" ||
        { log "  handshakes: FAILED to add the source addresses"; return; }
    lab_bg "$LOGS/agentnet-hs.log" "$NS_B" "$BIN" --state-dir "$dir" up --foreground \
        --interface anb-hs --port "$PORT"
    pid=$LAB_LAST_PID
    id=$("$BIN" --state-dir "$dir" id --json | jq -r .id)
    wait_for 10 ip netns exec "$NS_B" sh -c "ss -Hlun 'sport = :$PORT' | grep -q ." ||
        { log "  handshakes: FAILED: the daemon did not open its port"; lab_stop "$pid"; return; }
    # The generator prepares its initiations first: count from its first send.
    lab_bg "$out" "$NS_A" "$HANDSHAKE_RATE" run --target "$IP_B:$PORT" --id "$id" \
        --identities "$HS_IDENTITIES" --source-base "$HS_BASE" --port "$HS_PORT" --seconds "$HS_SECONDS"
    local generator=$LAB_LAST_PID
    wait_for 120 grep -q "initiations from" "$out" || log "  handshakes: the generator did not start"
    t0=$(proc_ticks "$pid") ms0=$(now_ms)
    wait "$generator" 2>/dev/null
    t1=$(proc_ticks "$pid") ms1=$(now_ms)
    lab_stop "$pid"
    R[hs.answered]=$(grep -oP 'answered/s=\K[0-9]+' "$out")
    R[hs.sent]=$(grep -oP 'sent/s=\K[0-9]+' "$out")
    R[hs.cpu]=$(awk -v t=$((t1 - t0)) -v k="$CLK_TCK" -v ms=$((ms1 - ms0)) 'BEGIN { printf "%.2f", t / k / (ms / 1000) }')
    R[hs.per_core]=$(awk -v a="${R[hs.answered]:-0}" -v c="${R[hs.cpu]}" 'BEGIN { if (c > 0) printf "%.0f", a / c; else print "NA" }')
    log "  handshakes: ${R[hs.answered]:-NA}/s answered of ${R[hs.sent]:-NA}/s sent; daemon at ${R[hs.cpu]} of a core: ${R[hs.per_core]} per core-second"
}
if [[ $HANDSHAKES == 1 && -x ${HANDSHAKE_RATE:-} ]]; then
    log "== handshakes: $HS_IDENTITIES trusted agents -> one daemon"
    handshake_bench
fi
# ===================================================== end of handshakes =====

# ======================================================= relay path ==========
# (NAT traversal, issue 4.) The same measurements between two agents that can
# only reach each other through a rendezvous relay: three namespaces on one
# bridge (10.211.0.1 ra, .2 rb, .3 the rendezvous rr); ra drops every packet
# to and from rb (nftables), so the direct path never answers and the data
# goes A -> rendezvous -> B. The row's tunnel CPU counts both agents and the
# rendezvous server. Connect: trust added -> first reply A -> B.
RV_PORT=3478
relay_bench() {
    local ns_ra ns_rb ns_rr rv_id rv_pid side ns t0 path
    local ip_rb=10.211.0.2 ip_rr=10.211.0.3
    declare -A id=() addr=()
    ROWS+=(relay)
    R[relay.version]=${R[agentnet.version]}
    lab_segment 10.211.0 ra rb rr || { row_failed relay "cannot build the segment"; return; }
    ns_ra=${LAB_NS[ra]} ns_rb=${LAB_NS[rb]} ns_rr=${LAB_NS[rr]}
    wait_for 5 ip netns exec "$ns_ra" ping -c1 -W1 "$ip_rr" || { row_failed relay "the segment does not pass a ping"; return; }
    printf '%s\n' "table ip benchcut {" \
        "  chain input { type filter hook input priority filter; policy accept; ip saddr $ip_rb drop; }" \
        "  chain output { type filter hook output priority filter; policy accept; ip daddr $ip_rb drop; }" \
        "}" | ip netns exec "$ns_ra" nft -f - || { row_failed relay "nft failed"; return; }
    mkdir "$WORK/rv" || { row_failed relay "state directory"; return; }
    from_storage "$BIN"
    lab_bg "$LOGS/rendezvous.log" "$ns_rr" "$BIN" --state-dir "$WORK/rv" rendezvous --foreground \
        --listen "$ip_rr:$RV_PORT" --tcp-listen "$ip_rr:$RV_PORT"
    rv_pid=$LAB_LAST_PID
    DAEMONS=()
    wait_for 10 ip netns exec "$ns_rr" sh -c "ss -Hlun 'sport = :$RV_PORT' | grep -q ." ||
        { lab_stop "$rv_pid"; row_failed relay "the rendezvous did not start (logs/rendezvous.log)"; return; }
    rv_id=$("$BIN" --state-dir "$WORK/rv" id --json | jq -r .id)
    for side in ra rb; do
        ns=${LAB_NS[$side]}
        mkdir "$WORK/$side" && "$BIN" --state-dir "$WORK/$side" init --name "bench-$side" >>"$LOGS/cli.log" 2>&1 ||
            { row_failed relay "init $side (logs/cli.log)"; return; }
        lab_bg "$LOGS/agentnet-$side.log" "$ns" "$BIN" --state-dir "$WORK/$side" up --foreground \
            --interface "anb-$side" --port "$PORT" --rendezvous "$ip_rr:$RV_PORT=$rv_id"
        DAEMONS+=("$LAB_LAST_PID")
        id[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .id)
        addr[$side]=$("$BIN" --state-dir "$WORK/$side" id --json | jq -r .address)
    done
    DAEMONS+=("$rv_pid")
    for side in ra rb; do
        wait_for 15 has_addr "${LAB_NS[$side]}" "anb-$side" "${addr[$side]}" ||
            { row_failed relay "agent $side has no address (logs/agentnet-$side.log)"; return; }
        wait_for 15 "$BIN" --state-dir "$WORK/$side" status ||
            { row_failed relay "agent $side does not answer (logs/agentnet-$side.log)"; return; }
    done
    t0=$(now_ms)
    "$BIN" --state-dir "$WORK/ra" trust add "${id[rb]}" --name bench-rb >>"$LOGS/cli.log" 2>&1 &&
        "$BIN" --state-dir "$WORK/rb" trust add "${id[ra]}" --name bench-ra >>"$LOGS/cli.log" 2>&1 ||
        { row_failed relay "trust add (logs/cli.log)"; return; }
    first_reply "$ns_ra" "${addr[rb]}" || { row_failed relay "no ping through the relay within ${CONNECT_TIMEOUT}s"; return; }
    R[relay.connect]=$((REPLY_MS - t0))
    path=$(ip netns exec "$ns_ra" "$BIN" --state-dir "$WORK/ra" status --json |
        jq -r --arg id "${id[rb]}" '.peers[] | select(.id == $id) | "\(.path) \(.relay)"')
    log "  relay: first reply ${R[relay.connect]} ms after trust add; A's path to B: $path"
    [[ $path == relay* ]] || { row_failed relay "the path is not the relay ($path)"; return; }
    local rv_ticks
    rv_ticks=$(proc_ticks "$rv_pid")
    measure relay "$ns_ra" "$ns_rb" "${addr[rb]}"
    rv_ticks=$(($(proc_ticks "$rv_pid") - rv_ticks))
    # What one rendezvous core forwards: relayed bits per second of its CPU.
    [[ ${R[relay.bytes]} =~ ^[0-9]+$ ]] && ((rv_ticks > 0)) &&
        R[relay.per_core]=$(awk -v b="${R[relay.bytes]}" -v t="$rv_ticks" -v k="$CLK_TCK" \
            'BEGIN { printf "%.2f Gbit/s per CPU-second of the rendezvous (%.2f CPU-s for %.2f GB)", b * 8 / (t / k) / 1e9, t / k, b / 1e9 }')
    log "  relay: ${R[relay.per_core]:-rendezvous CPU not measured}"
    R[relay.mtu]=$(addr_mtu "$ns_ra" "${addr[ra]}")
    record_rss relay "${DAEMONS[@]}"
    path=$(ip netns exec "$ns_ra" "$BIN" --state-dir "$WORK/ra" status --json |
        jq -r --arg id "${id[rb]}" '.peers[] | select(.id == $id) | .path')
    [[ $path == relay ]] || log "  relay: WARNING: the path changed to '$path' during the measurement"
    stop_daemons
}
if [[ $RELAY == 1 ]]; then
    log "== agentnet through a rendezvous relay (direct path blocked)"
    relay_bench
fi
# ================================================ end of the relay path ======

# ===================================================== userspace path ========
# (Rootless mode, issue 8.) A TUN agent T and an agent U in rootless mode
# (`up --userspace`, run as nobody through setpriv: no TUN, no capabilities),
# on one veth pair (10.214.0.1 T, .2 U). iperf3 in U's namespace connects to
# U's `--forward 127.0.0.1:5201:T:5201`; U's in-process smoltcp stack carries
# it over the overlay to T's iperf3 server (row "userspace -> TUN"), and -R
# measures the other direction ("TUN -> userspace"). RTT: T pings U's agent
# address (answered by smoltcp). Tunnel CPU and RSS: both daemons (RSS shown
# rootless / TUN). Connect: trust added -> first reply T -> U.
userspace_bench() {
    local ns_t ns_u t0 id_t id_u addr_u row args
    ROWS+=(usup) # usdown joins once usup is measured
    R[usup.version]=${R[agentnet.version]} R[usdown.version]=${R[agentnet.version]}
    lab_ns ust && ns_t=$LAB_LAST_NS && lab_ns usu && ns_u=$LAB_LAST_NS &&
        lab_veth "$ns_t" "$ns_u" 10.214.0.1/24 10.214.0.2/24 1500 &&
        wait_for 5 ip netns exec "$ns_t" ping -c1 -W1 10.214.0.2 || { row_failed usup "no veth"; return; }
    mkdir "$WORK/ut" "$WORK/uu" && chown nobody:nogroup "$WORK/uu" && chmod 711 "$WORK" ||
        { row_failed usup "state directories"; return; }
    "$BIN" --state-dir "$WORK/ut" init --name bench-t >>"$LOGS/cli.log" 2>&1 &&
        "${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" init --name bench-u >>"$LOGS/cli.log" 2>&1 ||
        { row_failed usup "init (logs/cli.log)"; return; }
    id_t=$("$BIN" --state-dir "$WORK/ut" id --json | jq -r .id)
    id_u=$("${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" id --json | jq -r .id)
    addr_u=$("${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" id --json | jq -r .address)
    DAEMONS=()
    from_storage "$BIN"
    lab_bg "$LOGS/agentnet-uu.log" "$ns_u" "${LAB_NOBODY[@]}" \
        "$BIN" --state-dir "$WORK/uu" up --foreground --userspace --port "$PORT" \
        --forward "127.0.0.1:$IPERF_PORT:bench-t:$IPERF_PORT"
    DAEMONS+=("$LAB_LAST_PID")
    lab_bg "$LOGS/agentnet-ut.log" "$ns_t" "$BIN" --state-dir "$WORK/ut" up --foreground \
        --interface anb-ut --port "$PORT"
    DAEMONS+=("$LAB_LAST_PID")
    wait_for 15 ip netns exec "$ns_u" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        { row_failed usup "the rootless agent did not start (logs/agentnet-uu.log)"; return; }
    # Both daemons answer on their control sockets before trust is added
    # (the PID lock is taken before the socket is bound).
    wait_for 15 "$BIN" --state-dir "$WORK/ut" status ||
        { row_failed usup "the TUN agent does not answer (logs/agentnet-ut.log)"; return; }
    wait_for 15 "${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" status ||
        { row_failed usup "the rootless agent does not answer (logs/agentnet-uu.log)"; return; }
    # T first, then U with T's endpoint: U's first handshake is answered.
    t0=$(now_ms)
    ip netns exec "$ns_t" "$BIN" --state-dir "$WORK/ut" trust add "$id_u" --name bench-u >>"$LOGS/cli.log" 2>&1 &&
        ip netns exec "$ns_u" "${LAB_NOBODY[@]}" \
            "$BIN" --state-dir "$WORK/uu" trust add "$id_t" --name bench-t --endpoint "10.214.0.1:$PORT" \
            >>"$LOGS/cli.log" 2>&1 || { row_failed usup "trust add (logs/cli.log)"; return; }
    first_reply "$ns_t" "$addr_u" || { row_failed usup "no ping T -> U within ${CONNECT_TIMEOUT}s"; return; }
    R[usup.connect]=$((REPLY_MS - t0))
    log "  userspace: first reply T -> U ${R[usup.connect]} ms after trust add"
    measure_rtt usup "$ns_t" "$addr_u"
    iperf_server userspace "$ns_t"
    for row in usup usdown; do
        [[ $row == usdown ]] && ROWS+=(usdown)
        R[$row.mtu]=$("${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" status --json 2>/dev/null | jq -r .mtu)
        args=(); [[ $row == usdown ]] && args=(-R)
        measure_tcp "$row" "$ns_u" 127.0.0.1 "${args[@]}"
        measure_rtt_loaded "$row" "$ns_u" 127.0.0.1 "$ns_t" "$addr_u" "${args[@]}"
        record_rss "$row" "${DAEMONS[@]}"
    done
    for key in rtt p99 loss connect; do R[usdown.$key]=${R[usup.$key]}; done
    lab_stop "$IPERF_PID"
    stop_daemons
}
if [[ $USERSPACE == 1 ]]; then
    log "== agentnet rootless (--userspace, as nobody) <-> TUN agent"
    userspace_bench
fi
# ============================================== end of the userspace path ====

# ----------------------------------------------------------------- peers ----
for p in $PEERS; do
    if [[ -z ${PEER_TOOLS[$p]+x} ]]; then
        log "unknown peer $p (known: $PEERS_ALL)"
    elif absent=$(peer_missing "$p") && [[ -n $absent ]]; then
        log "== $p: skipped, not installed (missing $absent; scripts/bench.sh --install-peers)"
        SKIPPED+=("$p (no ${absent// /, })")
    else
        bench_tunnel "$p"
    fi
done

# ------------------------------------------- round trips, interleaved ----
# Idle round trips on this VM drift over minutes by more than the tunnels
# differ (in a lab pair the same tunnel's average went from 0.15 to 0.30 ms
# over five rounds), so rows measured minutes apart compare the moments as
# much as the tunnels. Here agentnet and every peer whose row passed run
# again, all at once (each has its own interface, subnet and port), and
# RTT_ROUNDS rounds send $PINGS / RTT_ROUNDS pings through each tunnel in
# turn, the order rotated by one every round: every tunnel is measured
# over the same stretch of time. agentnet takes two turns, at its IPv6 and
# its IPv4 addresses, and a peer that carries IPv6 too takes a second turn
# at its IPv6 addresses (row P6). Each turn pings twice, for ping's
# own round trip and then (`ping -U`) from user to user, which adds the
# reader's wake-up: a daemon that keeps a CPU busy can make the scheduler
# wake the reader on another, idle one. Sets R[ROW.rtt_mix], R[ROW.p99_mix],
# R[ROW.rtt_mixu], R[ROW.p99_mixu].
MIXED=()
MIX_PER=0 # pings per tunnel per round
# add_turn ROW TIP_A TIP_B : once B reaches TIP_A, ROW takes turns pinging
# TIP_B from A (its ping logs emptied).
add_turn() {
    first_reply "$NS_B" "$2" || return 1
    MIXED+=("$1")
    R[$1.tip_b]=$3
    : >"$RAW/$1.ping_mix.txt"
    : >"$RAW/$1.ping_mixu.txt"
}
interleaved_rtt() {
    local p round i tmp=$RAW/ping-mix.tmp
    MIX_PER=$(((PINGS + RTT_ROUNDS - 1) / RTT_ROUNDS))
    DAEMONS=()
    for p in agentnet $PEERS; do
        [[ -n ${R[$p.tip_b]:-} && -z ${R[$p.status]:-} ]] || continue
        TUN_IP_A=${R[$p.tip_a]} TUN_IP_B=${R[$p.tip_b]}
        TUN_IP6_A=${R[$p.tip6_a]:-} TUN_IP6_B=${R[$p.tip6_b]:-}
        if ! { "${p}_start" a && "${p}_start" b && add_turn "$p" "$TUN_IP_A" "$TUN_IP_B"; }; then
            log "  $p: did not come up again; left out"
            continue
        fi
        # The same daemons pinged at their IPv4 addresses: a turn of its own.
        if [[ $p == agentnet && -n ${R[agentnet4.tip_b]:-} && -z ${R[agentnet4.status]:-} ]]; then
            add_turn agentnet4 "${R[agentnet4.tip_a]}" "${R[agentnet4.tip_b]}" ||
                log "  agentnet4: no IPv4 reply after the restart; left out"
        fi
        # A peer's daemons pinged at their IPv6 addresses: row P6.
        if [[ -n $TUN_IP6_B ]]; then
            add_turn "${p}6" "$TUN_IP6_A" "$TUN_IP6_B" || log "  $p: no IPv6 reply; its IPv6 turn left out"
        fi
    done
    for ((round = 0; round < RTT_ROUNDS; round++)); do
        for ((i = 0; i < ${#MIXED[@]}; i++)); do
            p=${MIXED[$(((round + i) % ${#MIXED[@]}))]}
            lab_run "$tmp" "$tmp" "$NS_A" ping -n -c "$MIX_PER" -i 0.01 -W 1 "${R[$p.tip_b]}"
            cat "$tmp" >>"$RAW/$p.ping_mix.txt"
            lab_run "$tmp" "$tmp" "$NS_A" ping -U -n -c "$MIX_PER" -i 0.01 -W 1 "${R[$p.tip_b]}"
            cat "$tmp" >>"$RAW/$p.ping_mixu.txt"
        done
    done
    rm -f "$tmp"
    for p in "${MIXED[@]}"; do
        rtt_stats "$p" _mix "$RAW/$p.ping_mix.txt" $((MIX_PER * RTT_ROUNDS))
        rtt_stats "$p" _mixu "$RAW/$p.ping_mixu.txt" $((MIX_PER * RTT_ROUNDS))
    done
    stop_daemons
}
if ((RTT_ROUNDS > 0)); then
    log "== idle round trips, interleaved: $RTT_ROUNDS rounds through every tunnel in turn"
    interleaved_rtt
fi

# ----------------------------------------------------------------- table ----
# ratio X REF : " (X/REF×)", or nothing where either is not a number.
ratio() {
    awk -v x="$1" -v b="$2" 'BEGIN {
        if (x == "" || x == "NA" || b == "" || b == "NA" || b == 0) exit
        r = x / b; f = r >= 100 ? "%.0f" : r >= 10 ? "%.1f" : "%.2f"
        printf " (" f "×)", r }'
}
# cell ROW REF KEY : the figure and its ratio to the reference row's.
cell() { printf '%s%s' "${R[$1.$3]:-NA}" "$(ratio "${R[$1.$3]:-NA}" "${R[$2.$3]:-}")"; }
# derived figures: CPU-s per GB over both iperf3 runs; RSS of A + B
for row in "${ROWS[@]}"; do
    R[$row.cpugb]=$(awk -v c="${R[$row.cpu]:-NA}" -v y="${R[$row.bytes]:-NA}" 'BEGIN {
        if (c == "NA" || y == "NA" || y == 0) print "NA"; else printf "%.2f", c / (y / 1e9) }')
    [[ -n ${R[$row.rss_a]:-} ]] && R[$row.rss]=$(awk -v a="${R[$row.rss_a]}" -v b="${R[$row.rss_b]}" 'BEGIN { print a + b }')
done
declare -A NAME=([veth]="raw veth" [agentnet]="agentnet (TUN, direct)" [agentnet4]="agentnet over IPv4"
    [relay]="agentnet via relay"
    [usup]="agentnet rootless → TUN" [usdown]="agentnet TUN → rootless" [wggo]=wireguard-go
    [boringtun]=boringtun [gotatun]=gotatun [nebula]=nebula [fastd]=fastd
    [wggo6]="wireguard-go over IPv6" [boringtun6]="boringtun over IPv6" [gotatun6]="gotatun over IPv6"
    [fastd6]="fastd over IPv6")
{
    echo "| path | version | TCP 1x Mbit/s | TCP ${PARALLEL}x Mbit/s | RTT avg ms | RTT p99 ms | loss % | RTT on one CPU avg / p99 ms | RTT under load avg / p99 ms | tunnel CPU-s/GB | peak RSS MiB A / B | connect ms | MTU |"
    echo "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for row in "${ROWS[@]}"; do
        ref=agentnet; [[ $row == agentnet ]] && ref=none # no ratio to itself
        if [[ -n ${R[$row.status]:-} ]]; then
            printf '| %s | %s | %s | | | | | | | | | | |\n' "${NAME[$row]}" "${R[$row.version]}" "${R[$row.status]}"
            continue
        fi
        rss=NA
        [[ -n ${R[$row.rss]:-} ]] && rss="${R[$row.rss_a]} / ${R[$row.rss_b]}${R[$row.rss_rv]:+ +rv ${R[$row.rss_rv]}}"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s | %s%s | %s | %s |\n' "${NAME[$row]}" "${R[$row.version]}" \
            "$(cell "$row" $ref tcp1)" "$(cell "$row" $ref tcpN)" "$(cell "$row" $ref rtt)" "$(cell "$row" $ref p99)" \
            "${R[$row.loss]:-NA}" "$(cell "$row" $ref rtt_cpu0)" "$(cell "$row" $ref p99_cpu0)" "$(cell "$row" $ref rtt_load)" "$(cell "$row" $ref p99_load)" "$(cell "$row" $ref cpugb)" "$rss" "$(ratio "${R[$row.rss]:-}" "${R[$ref.rss]:-}")" \
            "$(cell "$row" $ref connect)" "${R[$row.mtu]:-NA}"
    done
    echo
    echo "(×) = this row / the agentnet (TUN, direct) row. iperf3 A -> B, ${DURATION} s per run, receiver-side rate;"
    echo "RTT over $PINGS pings at 10 ms, p99 nearest rank; on one CPU: the same pings with ping and the daemons pinned to CPU 0; under load: the same pings while one iperf3 TCP stream runs. Tunnel CPU = utime+stime of both daemons during both"
    echo "iperf3 runs / GB received (1 GB = 1e9 B). RSS = VmHWM of each daemon; its ratio compares A + B."
    echo "Connect: B started (A up, both configured) -> first echo reply B -> A (relay and rootless rows: trust"
    echo "added -> first reply)."
    [[ " ${ROWS[*]} " == *" agentnet4 "* ]] &&
        echo "IPv4: the agentnet row's two agents, measured to B's IPv4 overlay address (100.64.0.0/10) while up; their RSS is in that row."
    [[ " ${ROWS[*]} " == *" relay "* ]] &&
        echo "Relay: the direct path blocked; its CPU includes the rendezvous server (RSS +rv)."
    [[ -n ${R[relay.per_core]:-} ]] && echo "Relay forwarding: ${R[relay.per_core]}."
    [[ " ${ROWS[*]} " == *" usup "* ]] &&
        echo "Rootless: iperf3 through a --forward of an agent in --userspace mode (smoltcp, as nobody); RSS rootless / TUN; RTT the TUN agent pinging the rootless one (under load: while the row's stream runs)."
    if [[ -n ${R[hs.answered]:-} ]]; then
        echo "Handshakes end to end: ${R[hs.answered]} initiations answered per second by one daemon (${R[hs.sent]}/s sent by $HS_IDENTITIES trusted agents, one source address each, with cookies; the daemon used ${R[hs.cpu]} of a core: ${R[hs.per_core]} handshakes per core-second)."
    fi
    [[ -n ${CRITERION_RESPONDER:-} ]] && echo "Handshake, criterion responder_only: $CRITERION_RESPONDER per handshake on one core ($(awk -v t="${CRITERION_RESPONDER% *}" -v u="${CRITERION_RESPONDER#* }" 'BEGIN { s = u == "ms" ? t / 1e3 : u == "ns" ? t / 1e9 : t / 1e6; printf "%.0f", 1 / s }')/s)."
    if ((${#SKIPPED[@]})); then
        printf -v list '%s; ' "${SKIPPED[@]}"
        echo "Skipped, not installed (scripts/bench.sh --install-peers): ${list%; }."
    fi
    if ((${#MIXED[@]} > 1)); then
        echo
        echo "| idle RTT, interleaved | avg ms | p99 ms | user to user avg ms | user to user p99 ms |"
        echo "|---|--:|--:|--:|--:|"
        # each row against agentnet's of the same inner family
        for row in "${MIXED[@]}"; do
            case $row in
            agentnet | agentnet4) ref=none ;;
            *6) ref=agentnet ;;
            *) ref=agentnet4 ;;
            esac
            printf '| %s | %s | %s | %s | %s |\n' "${NAME[$row]}" "$(cell "$row" $ref rtt_mix)" "$(cell "$row" $ref p99_mix)" \
                "$(cell "$row" $ref rtt_mixu)" "$(cell "$row" $ref p99_mixu)"
        done
        echo
        echo "Interleaved: the tunnels above up at once, $RTT_ROUNDS rounds of $MIX_PER pings at 10 ms through each in turn (order rotated every round), so each figure spans the same minutes; agentnet over IPv4 is the same daemons pinged at their IPv4 addresses, a peer over IPv6 the same daemons of that peer at IPv6 addresses inside (nebula 1.6 carries IPv4 only); the table's RTT columns measure each tunnel at its own time."
        echo "(×) = this row / agentnet's row of the same inner family: agentnet (TUN, direct) for IPv6, agentnet over IPv4 for IPv4."
        echo "Each turn pings twice: ping's own round trip (kernel timestamps: until the reply reaches ping's socket), then \`ping -U\` (user to user: until ping has woken and read it, what a program waiting for the answer sees)."
    fi
    [[ -n ${CODE_LAYOUT:-} ]] && echo "$CODE_LAYOUT"
    echo "$(nproc) CPUs, kernel $(uname -r), $(iperf3 --version | head -1)."
} | tee "$OUTDIR/table.md"
log "results: $OUTDIR/table.md (raw: $RAW, logs: $LOGS)"
