#!/usr/bin/env bash
# =============================================================================
# scripts/symbol-order.sh — regenerate the release build's code layout (as
# root): platform/pgo/agentnet.profdata, the profile LLVM optimizes by
# (profile-guided optimization), then platform/linker/agentnet.symbol-order,
# the list of functions the linker packs together, and
# platform/linker/agentnet.rodata-order, the constants they use.
#
# First an instrumented release build (-Cprofile-generate) runs the three
# setups below natively, then two more: idle round trips (2,000 pings over
# IPv4 and 500 over IPv6 between two TUN agents, weighted 20 times in the
# profile so that a lone packet's path is laid out as the hot one it is for
# latency) and handshakes (examples/handshake_rate: 64 trusted agents
# flooding one daemon for 3 s). llvm-profdata (`rustup component add
# llvm-tools`) merges what they wrote; the release build is then made anew
# with it (platform/pgo/rustc-wrapper.sh hands it to rustc) and profiled
# as follows for the two lists.
#
# Daemons in network namespaces run under valgrind's callgrind for their
# whole life, counted in three parts: start-up (up to the moment a daemon
# gives back its start-up pages, src/sys/file_pages.rs), running
# (handshakes, traffic, queries; up to the moment an agent's shutdown takes
# back its names, NameService::shutdown, or the rendezvous server drops its
# state) and shutdown, in three setups:
#   direct    two TUN agents on a veth pair: 100 pings over IPv6 and 100
#             over IPv4, iperf3 TCP both ways over each, `agentnet ping`,
#             `status`
#   relay     the direct path blocked (nftables): two agents and the
#             rendezvous server that relays them; trust added while they
#             run, pings, iperf3 both ways
#   rootless  an `up --userspace` agent as nobody with a --forward to a TUN
#             agent's iperf3 server; trust added while they run, pings,
#             iperf3 both ways
# Then each setup runs again natively under `perf record`, which notes
# every page fault (with four iperf3 streams each way as well, and 15 s
# idle before the daemons stop): once a daemon is set up, a fault in the
# binary's code names the first function run in a block the kernel had
# not mapped yet, which finds what a real CPU's run reaches and
# callgrind's did not (other timings, TCP loss and recovery, idle timers,
# threads ending).
# The functions of the binary the running daemons executed are listed
# first, the most instructions first: the direct setup's, then what only
# the other two added, then what only the native runs touched; then what
# only start-up executed, then what only shutdown did (once, at the end:
# kept out of the running code's pages).
# platform/linker/build.rs hands the list to the linker
# (--symbol-ordering-file): the code a running daemon uses then sits
# together at the start of .text instead of spread over all of it, which
# is what keeps the daemon's resident text
# small (the kernel maps 64 KiB around every page touched), and start-up's
# code sits after it, in pages the daemon gives back once it is set up
# (src/sys/file_pages.rs) and does not touch again. Valgrind's virtual CPU
# lacks VAES, AVX-512 and ADX, so the crypto libraries take other paths
# there than on a current CPU: each such function is listed with the
# variant a real CPU runs (scripts/link-order.py, SIBLINGS).
#
# The read-only data those functions refer to (jump tables, lookup tables,
# strings; found in their instructions with objdump and named by input
# section from the binary's link map, since most constants have no symbol)
# is listed the same way, the running daemons' first; build.rs gathers it
# into .rodata.hot after .rodata.
#
# The names are the binary's own mangled symbols, so the list follows the
# code: regenerate it after a toolchain or dependency update or a larger
# change to the daemon (scripts/bench.sh prints how much of the list the
# binary it measures still matches). A stale list never breaks a build.
#
# Usage:   sudo scripts/symbol-order.sh [--help]
# Env:     AGENTNET=<binary> (default: cargo rustc --release, linked with a
#          map; profile that exact binary: its symbol names are the ones
#          written; given, the PGO profile is left as it is),
#          AGENTNET_MAP=<its link map> (-Wl,-Map=; without it, with
#          AGENTNET, the data list is left as it is)
#          PGO=0 (keep the PGO profile as it is)
#          OUT_PROFILE=platform/pgo/agentnet.profdata
#          OUT=platform/linker/agentnet.symbol-order
#          OUT_RODATA=platform/linker/agentnet.rodata-order
# Needs:   valgrind, perf, iperf3, jq, ping, ip, nft, setpriv, objdump,
#          nm, python3 (scripts/test.sh installs all but valgrind, perf and
#          binutils: apt-get install valgrind linux-perf binutils), and for
#          the profile rustup's llvm-tools
#
# Traffic stays inside the namespaces created here. On exit (trap), even
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
OUT_RODATA=${OUT_RODATA:-platform/linker/agentnet.rodata-order}
IP_A=10.213.0.1 IP_B=10.213.0.2 PORT=7500 IPERF_PORT=5203 RV_PORT=3479
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

[[ $EUID -eq 0 ]] || { echo "symbol-order: must run as root" >&2; exit 1; }
[[ -d $HOME/.cargo/bin && :$PATH: != *":$HOME/.cargo/bin:"* ]] && PATH=$HOME/.cargo/bin:$PATH
for t in valgrind perf iperf3 jq ping ip awk nft setpriv objdump nm python3 mkfifo timeout; do
    command -v "$t" >/dev/null || fail "missing $t"
done

WORK=$(mktemp -d /tmp/agentnet-symbol-order.XXXXXX) || exit 1
chmod 711 "$WORK" # the rootless agent runs as nobody
lab_init "ans-$$"
trap 'lab_cleanup; rm -rf "$WORK"' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# final_binary : the binary the lists are written for, in BIN (and its link
# map in MAP): AGENTNET, or a release build made now with the profile.
final_binary() {
    if [[ -z ${AGENTNET:-} ]]; then
        log "building the release binary (with a link map)"
        AGENTNET_MAP=$WORK/agentnet.map
        cargo rustc --release --bin agentnet -- -C "link-arg=-Wl,-Map=$AGENTNET_MAP" >&2 ||
            fail "cargo rustc --release"
        AGENTNET=$PWD/target/release/agentnet
    fi
    BIN=$(realpath "$AGENTNET")
    [[ -x $BIN ]] || fail "no agentnet binary at $BIN"
    MAP=${AGENTNET_MAP:-}
    [[ -z $MAP || -s $MAP ]] || fail "no link map at $MAP"
}

PGO=${PGO:-1}
[[ -n ${AGENTNET:-} ]] && PGO=0
PROFILE_OUT=${OUT_PROFILE:-platform/pgo/agentnet.profdata}
if [[ $PGO == 1 ]]; then
    PROFDATA=$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/llvm-profdata
    [[ -x $PROFDATA ]] || fail "no $PROFDATA: rustup component add llvm-tools (or PGO=0)"
    log "building an instrumented release binary and examples/handshake_rate"
    mkdir -m 1777 "$WORK/pgo-raw" || exit 1 # the rootless agent writes its profile as nobody
    # Two builds: the example's dev-dependencies turn on the crate's `sim`
    # feature, and a library built with it has other symbol names than the
    # shipped binary's, which would match no function of the profile.
    for what in "--bin agentnet" "--example handshake_rate"; do
        # shellcheck disable=SC2086 # $what holds an option and its value
        RUSTFLAGS="-Cprofile-generate=$WORK/pgo-raw" cargo build --release $what \
            --target-dir "$WORK/pgo-target" >&2 || fail "the instrumented build ($what)"
    done
    BIN=$WORK/pgo-target/release/agentnet
    # The build's own scripts and macros were instrumented too and wrote
    # counts there; only the runs below count. A process of ours writes its
    # own file (as root or as nobody).
    find "$WORK/pgo-raw" -mindepth 1 -delete || exit 1
    export LLVM_PROFILE_FILE=$WORK/pgo-raw/cli-%p.profraw
else
    final_binary
fi

an() { local dir=$WORK/$1; shift; "$BIN" --state-dir "$dir" "$@"; }
init_agent() { mkdir "$WORK/$1" && an "$1" init --name "order-$1" >/dev/null || fail "agentnet init $1"; }
agent_id() { an "$1" id --json | jq -r ".${2:-id}"; }

# profiled NAME NS [nobody] CMD... : CMD in NS (as nobody with `nobody`),
# watched as $PASS says:
#   callgrind  under valgrind: start-up's profile in $WORK/callgrind.NAME.1
#              (written as file_pages::release returns), the running
#              daemon's in .2 (written as its shutdown begins), the rest's
#              in $WORK/callgrind.NAME
#   faults     natively, under `perf record`: every page fault and every
#              madvise of its life in $WORK/faults.NAME
#   pgo        natively, instrumented: its counts in
#              $WORK/pgo-raw/$PGO_TAG-NAME-PID.profraw, written as it exits
PASS=callgrind PGO_TAG=run
declare -A PROFILED=()
profiled() {
    local name=$1 ns=$2 wrap=(); shift 2
    if [[ $1 == nobody ]]; then
        shift
        wrap=("${LAB_NOBODY[@]}")
        # callgrind, as nobody, cannot create files in $WORK
        [[ $PASS != callgrind ]] || { touch "$WORK/callgrind.$name" "$WORK/callgrind.$name".{1,2} &&
            chown nobody:nogroup "$WORK/callgrind.$name" "$WORK/callgrind.$name".{1,2}; } || exit 1
    fi
    if [[ $PASS == pgo ]]; then
        lab_bg "$WORK/daemon-$name.log" "$ns" env "LLVM_PROFILE_FILE=$WORK/pgo-raw/$PGO_TAG-$name-%p.profraw" \
            "${wrap[@]}" "$@"
    elif [[ $PASS == faults ]]; then
        # perf stays root; on SIGTERM it ends the daemon with SIGTERM too.
        # Its control FIFO stops the record before the daemon shuts down.
        mkfifo "$WORK/faults.$name".{ctl,ack} || exit 1
        lab_bg "$WORK/daemon-$name.log" "$ns" perf record -q -c 1 -d -e page-faults \
            -e syscalls:sys_exit_madvise -o "$WORK/faults.$name" \
            --control "fifo:$WORK/faults.$name.ctl,$WORK/faults.$name.ack" -- "${wrap[@]}" "$@"
    else
        lab_bg "$WORK/daemon-$name.log" "$ns" "${wrap[@]}" valgrind --tool=callgrind --demangle=no \
            --dump-after='*file_pages7release*' --dump-before='*NameService8shutdown*' \
            --dump-before='*drop_in_place$LT$agentnet..core..rendezvous..RendezvousServer$GT$*' \
            --callgrind-out-file="$WORK/callgrind.$name" "$@"
    fi
    PROFILED[$name]=$LAB_LAST_PID
}
# stop_profiled NAME... : SIGTERM; the daemons shut down and callgrind
# writes each profile on exit (perf its record, an instrumented daemon its
# counts).
stop_profiled() {
    local name
    if [[ $PASS == faults ]]; then
        for name; do
            timeout 10 sh -c 'echo disable >"$1" && read -r _ <"$2"' sh \
                "$WORK/faults.$name".{ctl,ack} || fail "perf record of $name does not answer"
        done
    fi
    for name; do kill -TERM "${PROFILED[$name]}"; done
    for name; do
        for _ in $(seq 300); do lab_is_our_child "${PROFILED[$name]}" || break; sleep 0.1; done
        lab_stop "${PROFILED[$name]}"
        if [[ $PASS == pgo ]]; then
            compgen -G "$WORK/pgo-raw/$PGO_TAG-$name-*.profraw" >/dev/null ||
                fail "no profile counts from $name (see $WORK/daemon-$name.log)"
        elif [[ $PASS == faults ]]; then
            [[ -s $WORK/faults.$name ]] || fail "no perf record of $name (see $WORK/daemon-$name.log)"
        else
            [[ -s $WORK/callgrind.$name && -s $WORK/callgrind.$name.2 ]] ||
                fail "no callgrind profile of $name (see $WORK/daemon-$name.log)"
        fi
    done
}
# iperf3_both_ways NS_SERVER NS_CLIENT TARGET : a server in NS_SERVER, then
# a 3 s stream to TARGET and one back (-R); natively also four streams
# each way.
iperf3_both_ways() {
    local server args runs=("-P1" "-P1 -R")
    [[ $PASS != callgrind ]] && runs+=("-P4" "-P4 -R")
    lab_bg "$WORK/iperf3-server.log" "$1" iperf3 -s -p "$IPERF_PORT"
    server=$LAB_LAST_PID
    wait_for 5 ip netns exec "$1" sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q LISTEN" ||
        fail "the iperf3 server did not start"
    for args in "${runs[@]}"; do
        # shellcheck disable=SC2086 # $args holds separate options
        if ! lab_run "$WORK/iperf3.log" "$WORK/iperf3.log" "$2" iperf3 -c "$3" -p "$IPERF_PORT" -t 3 $args; then
            # The work directory goes at exit: show what failed first.
            tail -n 20 "$WORK/iperf3.log" >&2
            fail "iperf3 $args to $3"
        fi
    done
    lab_stop "$server"
}
# idle_if_native : natively, 15 s without traffic before the daemons stop.
# What a daemon runs once traffic stops (keepalives, idle session keys and
# buffers given back, a thread of tokio's blocking pool ending after its
# 10 s keep-alive) runs in any long-lived daemon: it is running code too.
idle_if_native() {
    [[ $PASS == faults ]] && sleep 15
    return 0
}
# Each setup runs twice for the lists: under callgrind (the profile that
# ranks), then natively under perf (what the running daemons touch on a
# real CPU that callgrind's run did not; see `faults` in
# scripts/link-order.py); before both, instrumented for the PGO profile.
# both_passes FUNCTION : FUNCTION under callgrind, then natively.
both_passes() {
    PASS=callgrind "$1"
    log "  the same natively, its page faults recorded"
    PASS=faults "$1"
}
# Relayed and rootless agents are trusted while they run, as bench.sh and
# users do it, in every run of their setup (each run ends by removing that
# trust again, the daemons stopped): the control request, the update of
# the trust file and the log lines it makes are running code, whose pages
# a daemon keeps. Added once and kept, they would be listed as start-up's.

# --- 1. The direct path between two TUN agents: listed first.
lab_pair "$IP_A/24" "$IP_B/24" || fail "cannot create the namespaces and their veth pair"
init_agent a && init_agent b
an a trust add "$(agent_id b)" --name order-b >/dev/null || fail "trust add"
an b trust add "$(agent_id a)" --name order-a --endpoint "$IP_A:$PORT" >/dev/null || fail "trust add"
ADDR_B=$(agent_id b address) ADDR4_B=$(agent_id b address4)
# start_direct : the direct path's two daemons, profiled, once they answer.
start_direct() {
    for side in b a; do
        ns=NS_${side^^}
        profiled "$side" "${!ns}" "$BIN" --state-dir "$WORK/$side" up --foreground --interface "ans-$side" --port "$PORT"
    done
    wait_for 120 ip netns exec "$NS_A" ping -c1 -W1 "$ADDR_B" || fail "no ping A -> B (see $WORK/daemon-*.log)"
}
direct() {
    start_direct
    ip netns exec "$NS_A" ping -q -n -c 100 -i 0.02 "$ADDR_B" >/dev/null || fail "IPv6 pings"
    ip netns exec "$NS_A" ping -q -n -c 100 -i 0.02 "$ADDR4_B" >/dev/null || fail "IPv4 pings"
    iperf3_both_ways "$NS_B" "$NS_A" "$ADDR_B"
    iperf3_both_ways "$NS_B" "$NS_A" "$ADDR4_B"
    an a ping order-b --count 3 --interval 0.1 >/dev/null || fail "agentnet ping"
    for side in a b; do
        an "$side" status >/dev/null && an "$side" status --json >/dev/null || fail "status"
    done
    idle_if_native
    stop_profiled a b
}
# round_trips : (PGO) the lone packet's path, idle round trips between the
# direct path's agents; what a single ping runs there is what sets latency.
round_trips() {
    start_direct
    ip netns exec "$NS_A" ping -q -n -c 2000 -i 0.002 "$ADDR4_B" >/dev/null || fail "IPv4 pings"
    ip netns exec "$NS_A" ping -q -n -c 500 -i 0.002 "$ADDR_B" >/dev/null || fail "IPv6 pings"
    stop_profiled a b
}
# handshakes : (PGO) a responder's path: examples/handshake_rate's 64
# trusted agents, each from its own address, flood one daemon for 3 s.
handshakes() {
    local gen=$WORK/pgo-target/release/examples/handshake_rate i
    local flood=(--identities 64 --source-base 10.213.8.1 --port 7501)
    init_agent hs && "$gen" trust --state-dir "$WORK/hs" "${flood[@]}" >/dev/null ||
        fail "handshake_rate trust"
    for ((i = 1; i <= 64; i++)); do echo "addr add 10.213.8.$i/32 dev lo"; done | ip -n "$NS_A" -batch - &&
        ip -n "$NS_B" route add 10.213.8.0/24 via "$IP_A" || fail "the flood's source addresses"
    profiled hs "$NS_B" "$BIN" --state-dir "$WORK/hs" up --foreground --interface ans-hs --port "$PORT"
    wait_for 120 ip netns exec "$NS_B" sh -c "ss -Hlun 'sport = :$PORT' | grep -q ." ||
        fail "the flooded daemon did not open its port (see $WORK/daemon-hs.log)"
    lab_run "$WORK/handshake_rate.txt" "$WORK/handshake_rate.txt" "$NS_A" "$gen" run \
        --target "$IP_B:$PORT" --id "$(agent_id hs)" "${flood[@]}" --seconds 3 ||
        fail "handshake_rate run (see $WORK/handshake_rate.txt)"
    stop_profiled hs
}

# --- 2. Through a rendezvous relay (the direct path blocked by nftables),
# the rendezvous server profiled too.
lab_segment 10.214.0 ra rb rr || fail "cannot build the relay segment"
printf '%s\n' "table ip ordercut {" \
    "  chain input { type filter hook input priority filter; policy accept; ip saddr 10.214.0.2 drop; }" \
    "  chain output { type filter hook output priority filter; policy accept; ip daddr 10.214.0.2 drop; }" \
    "}" | ip netns exec "${LAB_NS[ra]}" nft -f - || fail "nft"
mkdir "$WORK/rv" || exit 1
init_agent ra && init_agent rb
relay() {
    profiled rv "${LAB_NS[rr]}" "$BIN" --state-dir "$WORK/rv" rendezvous --foreground \
        --listen "10.214.0.3:$RV_PORT" --tcp-listen "10.214.0.3:$RV_PORT"
    wait_for 120 ip netns exec "${LAB_NS[rr]}" sh -c "ss -Hlun 'sport = :$RV_PORT' | grep -q ." ||
        fail "the rendezvous did not start (see $WORK/daemon-rv.log)"
    RV_ID=$(agent_id rv)
    for side in ra rb; do
        profiled "$side" "${LAB_NS[$side]}" "$BIN" --state-dir "$WORK/$side" up --foreground \
            --interface "ans-$side" --port "$PORT" --rendezvous "10.214.0.3:$RV_PORT=$RV_ID"
    done
    for side in ra rb; do wait_for 120 an "$side" status || fail "agent $side does not answer"; done
    an ra trust add "$(agent_id rb)" --name order-rb >/dev/null &&
        an rb trust add "$(agent_id ra)" --name order-ra >/dev/null || fail "trust add"
    ADDR_RB=$(agent_id rb address)
    wait_for 120 ip netns exec "${LAB_NS[ra]}" ping -c1 -W1 "$ADDR_RB" || fail "no ping through the relay"
    ip netns exec "${LAB_NS[ra]}" ping -q -n -c 50 -i 0.02 "$ADDR_RB" >/dev/null || fail "pings through the relay"
    iperf3_both_ways "${LAB_NS[rb]}" "${LAB_NS[ra]}" "$ADDR_RB"
    an ra status >/dev/null || fail "status"
    idle_if_native
    stop_profiled ra rb rv
    an ra trust remove "$(agent_id rb)" >/dev/null &&
        an rb trust remove "$(agent_id ra)" >/dev/null || fail "trust remove"
}

# --- 3. Rootless: an agent in `up --userspace` as nobody (smoltcp) with a
# --forward to a TUN agent's iperf3 server.
lab_ns ut && NS_UT=$LAB_LAST_NS && lab_ns uu && NS_UU=$LAB_LAST_NS &&
    lab_veth "$NS_UT" "$NS_UU" 10.215.0.1/24 10.215.0.2/24 1500 || fail "cannot create the rootless pair"
init_agent ut
# uu ARGS... : the CLI on the rootless agent's state, as nobody (its owner).
uu() { "${LAB_NOBODY[@]}" "$BIN" --state-dir "$WORK/uu" "$@"; }
mkdir "$WORK/uu" && chown nobody:nogroup "$WORK/uu" &&
    uu init --name order-uu >/dev/null || fail "agentnet init uu"
ID_UU=$(uu id --json | jq -r .id)
ADDR_UU=$(uu id --json | jq -r .address)
rootless() {
    profiled uu "$NS_UU" nobody "$BIN" --state-dir "$WORK/uu" up --foreground --userspace --port "$PORT" \
        --forward "127.0.0.1:$IPERF_PORT:order-ut:$IPERF_PORT"
    profiled ut "$NS_UT" "$BIN" --state-dir "$WORK/ut" up --foreground --interface ans-ut --port "$PORT"
    wait_for 120 an ut status || fail "the TUN agent does not answer"
    wait_for 120 uu status || fail "the rootless agent does not answer"
    an ut trust add "$ID_UU" --name order-uu >/dev/null &&
        uu trust add "$(agent_id ut)" --name order-ut --endpoint "10.215.0.1:$PORT" >/dev/null ||
        fail "trust add"
    wait_for 120 ip netns exec "$NS_UT" ping -c1 -W1 "$ADDR_UU" || fail "no ping to the rootless agent"
    ip netns exec "$NS_UT" ping -q -n -c 50 -i 0.02 "$ADDR_UU" >/dev/null || fail "pings to the rootless agent"
    iperf3_both_ways "$NS_UT" "$NS_UU" 127.0.0.1
    idle_if_native
    stop_profiled uu ut
    an ut trust remove "$ID_UU" >/dev/null &&
        uu trust remove "$(agent_id ut)" >/dev/null || fail "trust remove"
}

if [[ $PGO == 1 ]]; then
    for setup in direct relay rootless round_trips handshakes; do
        log "PGO: $setup, natively and instrumented"
        tag=run
        [[ $setup == round_trips ]] && tag=rt
        PASS=pgo PGO_TAG=$tag "$setup"
    done
    # The idle round trips weigh 20 times their count: a bulk transfer's
    # millions of packets would otherwise make a lone packet's branches
    # look cold next to a batch's.
    mapfile -t counts < <(find "$WORK/pgo-raw" -name '*.profraw' ! -name 'rt-*')
    "$PROFDATA" merge --sparse -o "$WORK/rt.profdata" "$WORK"/pgo-raw/rt-*.profraw &&
        "$PROFDATA" merge --sparse -o "$WORK/run.profdata" "${counts[@]}" &&
        "$PROFDATA" merge --sparse -o "$PROFILE_OUT.tmp" -weighted-input=20,"$WORK/rt.profdata" \
            "$WORK/run.profdata" && mv "$PROFILE_OUT.tmp" "$PROFILE_OUT" || fail "merging the PGO profile"
    log "wrote $PROFILE_OUT from ${#counts[@]} processes and the round trips' two"
    unset LLVM_PROFILE_FILE
    # Every crate is built again with it (cargo does not see the profile).
    cargo clean --release >&2 || fail "cargo clean --release"
    final_binary
fi
for setup in direct relay rootless; do
    log "$setup: under callgrind (slow)"
    both_passes "$setup"
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

# What the running daemons of the direct path executed, by cost; then what
# only the running relay and rootless daemons added; then what only
# start-up executed (any setup), by cost. Each name is followed by the
# variants other CPUs run in its place.
rank() {
    profile_costs "$@" | sort -k1,1nr -k2 | awk '!seen[$2]++ { print $2 }' |
        python3 scripts/link-order.py siblings "$BIN"
}
# not_in LIST... : the lines of stdin that no LIST holds, in order.
not_in() { grep -vxF -f <(cat "$@") || [[ $? == 1 ]]; }
rank "$WORK/callgrind.a.2" "$WORK/callgrind.b.2" >"$WORK/direct.txt" || fail "reading the profiles"
rank "$WORK"/callgrind.r[abv].2 "$WORK"/callgrind.u[tu].2 | not_in "$WORK/direct.txt" >"$WORK/more.txt" ||
    fail "reading the profiles"
# What the native runs first touched once set up and the profiles did not
# name (in the order of the faults).
for name in a b ra rb rv ut uu; do
    perf script -i "$WORK/faults.$name" --show-mmap-events -F pid,event,addr,ip >"$WORK/faults.$name.txt" 2>/dev/null ||
        fail "perf script of $name"
done
python3 scripts/link-order.py faults "$BIN" --keep "$OUT" "$WORK"/faults.{a,b,ra,rb,rv,ut,uu}.txt |
    not_in "$WORK/direct.txt" "$WORK/more.txt" >"$WORK/native.txt" || fail "reading the page faults"
rank "$WORK"/callgrind.*.1 | not_in "$WORK/direct.txt" "$WORK/more.txt" "$WORK/native.txt" >"$WORK/start-up.txt" ||
    fail "reading the start-up profiles"
SHUTDOWN_PARTS=()
for part in "$WORK"/callgrind.{a,b,ra,rb,rv,ut,uu} "$WORK"/callgrind.{a,b,ra,rb,rv,ut,uu}.[3-9]; do
    [[ -s $part ]] && SHUTDOWN_PARTS+=("$part")
done
rank "${SHUTDOWN_PARTS[@]}" |
    not_in "$WORK/direct.txt" "$WORK/more.txt" "$WORK/native.txt" "$WORK/start-up.txt" >"$WORK/shutdown.txt" ||
    fail "reading the shutdown profiles"
[[ -s $WORK/direct.txt && -s $WORK/start-up.txt ]] || fail "the profiles name no function of $BIN"
{
    echo "# Functions agentnet daemons executed, most instructions first: once running, the"
    echo "# direct path between two TUN agents, then what only the relay path (with the"
    echo "# rendezvous server) and rootless mode added, then what the same runs reached"
    echo "# only natively (page faults); then what only start-up ran, then what only"
    echo "# shutdown ran. The linker packs them together in this order"
    echo "# (platform/linker/build.rs)."
    echo "# Written by scripts/symbol-order.sh from $("$BIN" --version | head -1)" \
        "($(git describe --always --dirty 2>/dev/null || echo unknown)); do not edit."
    echo "# Running: the direct path"
    cat "$WORK/direct.txt"
    echo "# Running: what the relay path and rootless mode add"
    cat "$WORK/more.txt"
    # link-order.py faults --keep reads this block back.
    echo "# Running, reached only natively (page faults; kept while the binary has them)"
    cat "$WORK/native.txt"
    echo "# Start-up only"
    cat "$WORK/start-up.txt"
    echo "# Shutdown only"
    cat "$WORK/shutdown.txt"
} >"$OUT.tmp" || fail "writing $OUT"
mv "$OUT.tmp" "$OUT"
log "wrote $OUT: $(wc -l <"$WORK/direct.txt") functions of the running direct path," \
    "$(wc -l <"$WORK/more.txt") more from the running relay and rootless daemons," \
    "$(wc -l <"$WORK/native.txt") first touched only in the native runs," \
    "$(wc -l <"$WORK/start-up.txt") from start-up only, $(wc -l <"$WORK/shutdown.txt") from shutdown only"

if [[ -z $MAP ]]; then
    log "no link map (AGENTNET_MAP): $OUT_RODATA left as it is"
    exit 0
fi
cat "$WORK/direct.txt" "$WORK/more.txt" "$WORK/native.txt" >"$WORK/running.txt" || exit 1
{
    echo "# Input sections of read-only data the functions of agentnet.symbol-order refer"
    echo "# to: the running daemons' first, then what the native runs read (page faults),"
    echo "# then start-up's. build.rs gathers them into .rodata.hot, after .rodata."
    echo "# Written by scripts/symbol-order.sh from $("$BIN" --version | head -1)" \
        "($(git describe --always --dirty 2>/dev/null || echo unknown)); do not edit."
    python3 scripts/link-order.py rodata "$BIN" "$MAP" "$WORK/running.txt" "$WORK/start-up.txt" \
        "$WORK"/faults.{a,b,ra,rb,rv,ut,uu}.txt
} >"$OUT_RODATA.tmp" || fail "writing $OUT_RODATA"
mv "$OUT_RODATA.tmp" "$OUT_RODATA"
log "wrote $OUT_RODATA: $(grep -vc '^#' "$OUT_RODATA") sections"
