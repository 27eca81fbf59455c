#!/usr/bin/env bash
# =============================================================================
# scripts/rtt-stages.sh — where an idle round trip's time goes, stage by
# stage, through agentnet and the other tunnels (as root, with bpftrace).
#
# Each tunnel gets a namespace pair of its own (one veth, 10.210.0.1/.2) and
# its two daemons A and B; ping in A sends to B's tunnel address every 10 ms.
# bpftrace follows every system call and cuts each round trip at the calls
# that carry it:
#
#   1 A reads TUN    ping's sendto (entry) -> A's read of the TUN returns
#                    the request: ping's send, the TUN, A's wake-up
#   2 A sends UDP    -> A's send of the datagram (entry): A's own work
#   3 B receives     -> B's receive returns it: the veth and B's wake-up
#   4 B writes TUN   -> B's write (entry): B's own work
#   5 B reads reply  -> B's read of the TUN returns the reply: B's kernel
#                    answering the ping, and B's next look at the TUN
#   6 B sends UDP    -> B's send (entry): B's own work
#   7 A receives     -> A's receive returns it: the veth and A's wake-up (or
#                    next look, for a daemon that polls)
#   8 A writes TUN   -> A's write (entry): A's own work
#   9 ping wakes     -> ping's recvmsg returns the reply: ping's wake-up
#
# ping's own figure (the `rtt` line, kernel timestamps) ends when the reply
# reaches ping's socket, inside stage 9's write; "user to user" is the sum
# of all nine, what a program that waits for the answer sees. Every stage is
# an average over the round trips that passed all nine in order, summed
# over ROUNDS rounds that visit the tunnels in turn (the order rotated each
# round, so that the machine's drift falls on all alike). Tracing costs
# about a microsecond per system call of every process, so every figure is
# a little high; compare tunnels within one run, on an otherwise idle
# machine (any other ping would be traced as well).
#
# Usage:   sudo scripts/rtt-stages.sh [--help]
# Env:     AGENTNET=<binary> (default target/release/agentnet)
#          PEERS="fastd boringtun" (any of scripts/bench/peers.sh's; one that
#          is not installed is skipped with a printed line)
#          ROUNDS=5  PER=100 (pings per tunnel per round)
#          OUTDIR=/tmp/agentnet-rtt-stages/<timestamp>
# Output:  the table on stdout and in $OUTDIR/stages.md; $OUTDIR/raw/ each
#          round's ping and bpftrace output, logs/ the daemons'.
#
# Traffic goes only to addresses inside the namespaces created here. On
# exit, even on failure, only the processes started here are stopped, by
# PID, and the namespaces are deleted.
# =============================================================================
set -uo pipefail
SELF=$(realpath "${BASH_SOURCE[0]}")
cd "$(dirname "$SELF")/.." || exit 1
# shellcheck source=scripts/lab.sh
source scripts/lab.sh
# shellcheck source=scripts/bench/peers.sh
source scripts/bench/peers.sh

lab_no_args rtt-stages "$@"
[[ $(id -u) == 0 ]] || { echo "rtt-stages: needs root (namespaces, bpftrace)" >&2; exit 1; }
for tool in bpftrace ip ping jq awk; do
    command -v "$tool" >/dev/null || { echo "rtt-stages: missing $tool (apt-get install bpftrace iproute2 iputils-ping jq)" >&2; exit 1; }
done
AGENTNET=${AGENTNET:-target/release/agentnet}
[[ -x $AGENTNET ]] || { echo "rtt-stages: no $AGENTNET (cargo build --release, or AGENTNET=)" >&2; exit 1; }
BIN=$(realpath "$AGENTNET") # what peers.sh's agentnet_* run
IP_BIN=$(realpath "$(command -v ip)") # bpftrace -c wants one path, not a name
PEERS=${PEERS-fastd boringtun}
ROUNDS=${ROUNDS:-5}
PER=${PER:-100}
OUTDIR=${OUTDIR:-/tmp/agentnet-rtt-stages/$(date +%Y%m%d-%H%M%S)}
LOGS=$OUTDIR/logs WORK=$OUTDIR/work RAW=$OUTDIR/raw
lab_private_dir "$OUTDIR" || exit 1
mkdir -p "$LOGS" "$WORK" "$RAW" || exit 1
IP_A=10.210.0.1 IP_B=10.210.0.2 TUN_MTU=1420 PORT=7400
DAEMONS=()
log() { echo "$*"; }

lab_init "rs$$"
trap 'lab_cleanup' EXIT
trap 'exit 130' INT TERM

# The stages, as a bpftrace program over PID_A ($1) and PID_B ($2): @s is
# the last stage passed (99: none since the last send), @last its time.
# Syscall numbers (x86_64): read 0, write 1, readv 19, writev 20, sendto 44,
# recvfrom 45, sendmsg 46, recvmsg 47, recvmmsg 299, sendmmsg 307.
cat >"$WORK/stages.bt" <<'EOF'
BEGIN { @s = 99; }
tracepoint:raw_syscalls:sys_enter /comm == "ping" && (args->id == 44 || args->id == 46)/ { @s = 0; @last = nsecs; @t0 = nsecs; }
tracepoint:raw_syscalls:sys_exit /@s == 0 && pid == $1 && (args->id == 0 || args->id == 19) && args->ret > 0/ { @ns[1] = stats(nsecs - @last); @last = nsecs; @s = 1; }
tracepoint:raw_syscalls:sys_enter /@s == 1 && pid == $1 && (args->id == 44 || args->id == 46 || args->id == 307)/ { @ns[2] = stats(nsecs - @last); @last = nsecs; @s = 2; }
tracepoint:raw_syscalls:sys_exit /@s == 2 && pid == $2 && (args->id == 45 || args->id == 47 || args->id == 299) && args->ret > 0/ { @ns[3] = stats(nsecs - @last); @last = nsecs; @s = 3; }
tracepoint:raw_syscalls:sys_enter /@s == 3 && pid == $2 && (args->id == 1 || args->id == 20)/ { @ns[4] = stats(nsecs - @last); @last = nsecs; @s = 4; }
tracepoint:raw_syscalls:sys_exit /@s == 4 && pid == $2 && (args->id == 0 || args->id == 19) && args->ret > 0/ { @ns[5] = stats(nsecs - @last); @last = nsecs; @s = 5; }
tracepoint:raw_syscalls:sys_enter /@s == 5 && pid == $2 && (args->id == 44 || args->id == 46 || args->id == 307)/ { @ns[6] = stats(nsecs - @last); @last = nsecs; @s = 6; }
tracepoint:raw_syscalls:sys_exit /@s == 6 && pid == $1 && (args->id == 45 || args->id == 47 || args->id == 299) && args->ret > 0/ { @ns[7] = stats(nsecs - @last); @last = nsecs; @s = 7; }
tracepoint:raw_syscalls:sys_enter /@s == 7 && pid == $1 && (args->id == 1 || args->id == 20)/ { @ns[8] = stats(nsecs - @last); @last = nsecs; @s = 8; }
tracepoint:raw_syscalls:sys_exit /@s == 8 && comm == "ping" && (args->id == 45 || args->id == 47) && args->ret > 0/ { @ns[9] = stats(nsecs - @last); @ns[10] = stats(nsecs - @t0); @s = 99; }
EOF

declare -A NSA PIDA PIDB TGT
LABELS=()

for tunnel in agentnet $PEERS; do
    if [[ $tunnel != agentnet ]]; then
        [[ -n ${PEER_TOOLS[$tunnel]:-} ]] || { echo "rtt-stages: unknown peer $tunnel" >&2; exit 2; }
        absent=$(peer_missing "$tunnel")
        [[ -z $absent ]] || { echo "$tunnel: skipped, not installed ($absent)"; continue; }
    fi
    lab_ns "a-$tunnel"; NS_A=$LAB_LAST_NS
    lab_ns "b-$tunnel"; NS_B=$LAB_LAST_NS
    lab_veth "$NS_A" "$NS_B" "$IP_A/24" "$IP_B/24" 1500
    "${tunnel}_prepare" >"$LOGS/$tunnel-prepare.log" 2>&1 || { echo "$tunnel: prepare failed" >&2; exit 1; }
    if ! "${tunnel}_start" a || ! "${tunnel}_start" b; then
        echo "$tunnel: could not start" >&2
        exit 1
    fi
    # agentnet pinged at its IPv4 addresses: the peers carry IPv4 too
    [[ $tunnel == agentnet ]] && TUN_IP_A=$TUN_IP4_A TUN_IP_B=$TUN_IP4_B
    PIDA[$tunnel]=${DAEMONS[-2]} PIDB[$tunnel]=${DAEMONS[-1]}
    NSA[$tunnel]=$NS_A TGT[$tunnel]=$TUN_IP_B
    # Only B knows A's underlay address: B's first packet opens the tunnel.
    wait_for 30 ip netns exec "$NS_B" ping -c1 -W1 "$TUN_IP_A" || { echo "$tunnel: no reply B -> A within 30 s" >&2; exit 1; }
    wait_for 30 ip netns exec "$NS_A" ping -c1 -W1 "$TUN_IP_B" || { echo "$tunnel: no reply A -> B within 30 s" >&2; exit 1; }
    LABELS+=("$tunnel")
done

n=${#LABELS[@]}
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < n; k++)); do
        t=${LABELS[$(((r + k) % n))]}
        # bpftrace runs ping (-c) once its probes are attached and ends with
        # it; in the host's namespaces (it traces every process), tracked
        # for the cleanup as lab_bg's children are.
        bpftrace -c "$IP_BIN netns exec ${NSA[$t]} ping -n -c $PER -i 0.01 -W 1 ${TGT[$t]}" \
            "$WORK/stages.bt" "${PIDA[$t]}" "${PIDB[$t]}" >"$RAW/$t-$r.txt" 2>&1 </dev/null &
        bt=$!
        LAB_TRACKED[$bt]=1
        wait "$bt" || { echo "bpftrace or ping failed (see $RAW/$t-$r.txt)" >&2; exit 1; }
        unset "LAB_TRACKED[$bt]"
    done
done

# The table: stage rows, a column per tunnel (µs, averages over all rounds).
{
    printf '| stage |'; printf ' %s |' "${LABELS[@]}"; echo
    printf '|---|'; printf -- '--:|%.0s' "${LABELS[@]}"; echo
    names=("" "1 A reads TUN" "2 A sends UDP" "3 B receives" "4 B writes TUN" "5 B reads reply"
        "6 B sends UDP" "7 A receives" "8 A writes TUN" "9 ping wakes" "user to user")
    declare -A avg count rtt
    for t in "${LABELS[@]}"; do
        while read -r stage c a; do avg[$t.$stage]=$a count[$t]=$c; done < <(
            cat "$RAW/$t"-*.txt | awk '/^@ns\[/ { gsub(/[\[\]:,]/, " "); c[$2] += $4; s[$2] += $8 }
                END { for (k in c) printf "%d %d %.1f\n", k, c[k], s[k] / c[k] / 1000 }' | sort -n)
        rtt[$t]=$(cat "$RAW/$t"-*.txt | grep -oP 'time=\K[0-9.]+' | awk '{ s += $1 } END { if (NR) printf "%.1f", s / NR * 1000 }')
    done
    for stage in 1 2 3 4 5 6 7 8 9 10; do
        printf '| %s |' "${names[$stage]}"
        for t in "${LABELS[@]}"; do printf ' %s |' "${avg[$t.$stage]:--}"; done; echo
    done
    printf '| ping'"'"'s own rtt |'; for t in "${LABELS[@]}"; do printf ' %s |' "${rtt[$t]:--}"; done; echo
    printf '| round trips traced |'; for t in "${LABELS[@]}"; do printf ' %s |' "${count[$t]:-0}"; done; echo
} | tee "$OUTDIR/stages.md"
echo "(µs; $ROUNDS rounds of $PER pings per tunnel; $OUTDIR)"
