#!/usr/bin/env bash
# =============================================================================
# scripts/lab.sh — the namespace lab for shell scripts (as root).
#
# As a library (`source scripts/lab.sh`, used by scripts/bench.sh):
#   lab_init PREFIX          start a lab; namespaces are PREFIX-<role>
#   lab_usage / lab_no_args NAME "$@"   a script's usage (its header comment);
#                            refuse any argument but -h/--help
#   lab_pair IP_A/LEN IP_B/LEN   namespaces a and b on one veth pair: NS_A, NS_B
#   "${LAB_NOBODY[@]}" CMD...   CMD as nobody (setpriv)
#   lab_ns ROLE              create namespace PREFIX-ROLE (lo up); name in LAB_LAST_NS
#   lab_veth NS1 NS2 IP1/LEN IP2/LEN [MTU]   veth pair, eth0 on both sides
#   lab_segment SUBNET ROLE...   bridge in PREFIX-sw + one host per role,
#                            eth0 = SUBNET.<n> (n = 1, 2, ...); sets LAB_NS[role]
#   lab_bg LOG NS CMD...     start CMD in NS in the background; LAB_LAST_PID
#   lab_run OUT ERR NS CMD...  run CMD in NS, tracked, and wait for it
#   lab_stop PID             TERM, wait up to 5 s, KILL (only our own children)
#   lab_cleanup              stop everything started here, delete the namespaces
#   wait_for SECONDS CMD...  poll CMD every 10 ms until it succeeds
#   lab_private_dir DIR      create DIR; refuse it unless only root or we can
#                            change it or any directory above it
#   lab_owned_path PATH      the same check, without creating anything
#   proc_ticks PID / peak_rss_mib PID   CPU ticks (utime+stime) / VmHWM in MiB
#
# As a command:
#   scripts/lab.sh shell [N]   N agents (default 3) on one bridge, all trusting
#                              each other, then an interactive shell with
#                              NS_<X>/ADDR_<X> set and `an X ARGS` = agentnet
#                              of host X; everything is removed when it exits.
#                              AGENTNET= picks the binary (default: target/debug).
#
# Hygiene: addresses live only inside the lab's namespaces, which have no
# link to the host's network. Cleanup stops only PIDs this shell started, or
# processes inside the namespaces it created.
# =============================================================================

declare -A LAB_TRACKED=()   # PIDs started here and not yet reaped
declare -A LAB_NS=()        # role -> namespace (lab_segment)
LAB_NAMESPACES=()
LAB_PREFIX=
LAB_LAST_PID=
LAB_LAST_NS=

lab_init() { LAB_PREFIX=$1; LAB_NAMESPACES=(); LAB_TRACKED=(); LAB_NS=(); }

# As nobody, without groups or capabilities: "${LAB_NOBODY[@]}" CMD... (an
# array, so that it also goes after `ip netns exec` or lab_bg).
LAB_NOBODY=(setpriv --reuid nobody --regid nogroup --clear-groups)

# A script's usage is its header comment, from line 3 to the closing rule.
lab_usage() { sed -n '3,/^# ====/p' "$SELF" | sed '$d; s/^# \{0,1\}//'; }

# lab_no_args NAME ARG... : for scripts that take no arguments: -h/--help
# prints the usage, anything else is refused.
lab_no_args() {
    local name=$1 arg; shift
    for arg; do
        case $arg in
            -h | --help) lab_usage; exit 0 ;;
            *) echo "$name: unknown argument $arg" >&2; lab_usage >&2; exit 2 ;;
        esac
    done
}

# lab_pair IP_A/LEN IP_B/LEN : namespaces PREFIX-a and PREFIX-b (in NS_A and
# NS_B) joined by a veth pair, eth0 on both sides. Not for $(...).
lab_pair() {
    lab_ns a || return 1; NS_A=$LAB_LAST_NS
    lab_ns b || return 1; NS_B=$LAB_LAST_NS
    lab_veth "$NS_A" "$NS_B" "$1" "$2" 1500
}

# Not meant for $(...): the namespace must be recorded in this shell.
lab_ns() {
    LAB_LAST_NS=$LAB_PREFIX-$1
    ip netns add "$LAB_LAST_NS" || return 1
    LAB_NAMESPACES+=("$LAB_LAST_NS")
    ip -n "$LAB_LAST_NS" link set lo up
}

lab_veth() {
    local n1=$1 n2=$2 ip1=$3 ip2=$4 mtu=${5:-1500}
    ip -n "$n1" link add eth0 mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$n2" || return 1
    ip -n "$n1" addr add "$ip1" dev eth0 && ip -n "$n2" addr add "$ip2" dev eth0 || return 1
    ip -n "$n1" link set eth0 up && ip -n "$n2" link set eth0 up
}

lab_segment() {
    local subnet=$1 sw role ns i=0; shift
    lab_ns sw || return 1
    sw=$LAB_LAST_NS
    ip -n "$sw" link add br0 type bridge && ip -n "$sw" link set br0 up || return 1
    for role; do
        i=$((i + 1))
        lab_ns "$role" || return 1
        ns=$LAB_LAST_NS
        # created from inside the switch namespace: nothing appears in the host's
        ip -n "$sw" link add "p-$role" type veth peer name eth0 netns "$ns" || return 1
        ip -n "$sw" link set "p-$role" master br0 up || return 1
        ip -n "$ns" addr add "$subnet.$i/24" dev eth0 && ip -n "$ns" link set eth0 up || return 1
        LAB_NS[$role]=$ns
    done
}

# Every long-running command is a direct, tracked child of this shell, so the
# cleanup can stop it by PID. `ip netns exec` execs, so $! is the command.
lab_bg() {
    local log=$1 ns=$2; shift 2
    ip netns exec "$ns" "$@" >"$log" 2>&1 </dev/null &
    LAB_LAST_PID=$!
    LAB_TRACKED[$LAB_LAST_PID]=1
}

# A trapped signal interrupts `wait` (unlike a foreground command), so
# INT/TERM are acted on at once.
lab_run() {
    local out=$1 err=$2 ns=$3 pid rc; shift 3
    ip netns exec "$ns" "$@" >"$out" 2>>"$err" </dev/null &
    pid=$!; LAB_TRACKED[$pid]=1
    wait "$pid"; rc=$?
    unset "LAB_TRACKED[$pid]"
    return "$rc"
}

# Running (not a zombie) and a child of this shell.
lab_is_our_child() {
    local st ppid
    read -r st ppid < <(awk '{ sub(/.*\) /, ""); print $1, $2 }' "/proc/$1/stat" 2>/dev/null)
    [[ -n ${st:-} && $st != Z && ${ppid:-} == "$$" ]]
}

lab_stop() {
    local pid=$1 i
    if lab_is_our_child "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < 50; i++)); do lab_is_our_child "$pid" || break; sleep 0.1; done
        lab_is_our_child "$pid" && kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    unset "LAB_TRACKED[$pid]"
    return 0
}

lab_cleanup() {
    local pid ns i t
    for pid in "${!LAB_TRACKED[@]}"; do lab_stop "$pid"; done
    for ((i = ${#LAB_NAMESPACES[@]} - 1; i >= 0; i--)); do
        ns=${LAB_NAMESPACES[i]}
        # whatever still runs in a namespace this lab created is ours
        # (e.g. a daemon that `agentnet up` forked off)
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$pid" 2>/dev/null; done
        for ((t = 0; t < 50; t++)); do [[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break; sleep 0.1; done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
    LAB_NAMESPACES=()
}

# lab_owned_path PATH : succeeds when PATH and every directory above it
# are no symbolic links, belong to root or to us, and no other user can
# write to them (a directory others may write counts only with the sticky
# bit, as /tmp, and never as PATH itself). Root runs binaries from and
# bind-mounts directories under /tmp: a local user who made
# /tmp/agentnet-bench first must not be able to swap what is in it.
lab_owned_path() {
    local path=$1 p uid mode
    [[ $path == /* ]] || path=$PWD/$path
    p=$path
    while :; do
        if [[ -L $p ]]; then
            echo "$path: $p is a symbolic link; refusing it as root" >&2
            return 1
        fi
        read -r uid mode < <(stat -c '%u %a' -- "$p") || return 1
        if [[ $uid != 0 && $uid != "$EUID" ]]; then
            echo "$path: $p belongs to uid $uid; refusing it as root" >&2
            return 1
        fi
        if ((8#$mode & 8#022)) && { [[ $p == "$path" ]] || ((!(8#$mode & 8#1000))); }; then
            echo "$path: others may write to $p (mode $mode); refusing it as root" >&2
            return 1
        fi
        [[ $p == / ]] && return 0
        p=$(dirname -- "$p")
    done
}

# lab_private_dir DIR : creates DIR (and what is missing above it, mode
# 755) and checks it with lab_owned_path.
lab_private_dir() {
    (umask 022 && mkdir -p -- "$1") && lab_owned_path "$1"
}

wait_for() {
    local deadline=$(($(date +%s%N) + $1 * 1000000000)); shift
    until "$@" >/dev/null 2>&1; do
        (($(date +%s%N) > deadline)) && return 1
        sleep 0.01
    done
}

has_addr() { ip -n "$1" -o addr show dev "$2" 2>/dev/null | grep -qF " $3/"; }
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/${1:-0}/stat" 2>/dev/null || echo 0; }
peak_rss_mib() { awk '/^VmHWM:/ { printf "%.2f", $2 / 1024 }' "/proc/${1:-0}/status" 2>/dev/null || echo NA; }

# ------------------------------------------------------------ the command ----
lab_shell() {
    local n=${1:-3} roles=() role i ns dir
    local bin=${AGENTNET:-$PWD/target/debug/agentnet}
    [[ $EUID -eq 0 ]] || { echo "lab.sh: must run as root" >&2; return 1; }
    [[ -x $bin ]] || { echo "lab.sh: no agentnet at $bin (cargo build, or set AGENTNET=)" >&2; return 1; }
    ((n >= 1 && n <= 26)) || { echo "lab.sh: 1 to 26 hosts" >&2; return 1; }
    local letters=abcdefghijklmnopqrstuvwxyz
    for ((i = 0; i < n; i++)); do roles+=("${letters:i:1}"); done
    # global: the EXIT trap runs after this function has returned
    LAB_SHELL_WORK=$(mktemp -d /tmp/an-lab-shell.XXXXXX)
    local work=$LAB_SHELL_WORK
    lab_init "anl-$$"
    trap 'lab_cleanup; rm -rf "$LAB_SHELL_WORK"' EXIT
    lab_segment 10.78.0 "${roles[@]}" || return 1
    declare -A ids=()
    i=0
    for role in "${roles[@]}"; do
        i=$((i + 1)); ns=${LAB_NS[$role]}; dir=$work/$role
        mkdir -m 700 "$dir"
        ip netns exec "$ns" "$bin" --state-dir "$dir" init --name "host-$role" >/dev/null || return 1
        ip netns exec "$ns" "$bin" --state-dir "$dir" up --interface "an-$role" --port 7400 || return 1
        ids[$role]=$("$bin" --state-dir "$dir" id --json | jq -r .id)
        export "NS_${role^^}=$ns" "ADDR_${role^^}=$("$bin" --state-dir "$dir" id --json | jq -r .address)"
        export "DIR_${role^^}=$dir" "UNDERLAY_${role^^}=10.78.0.$i"
    done
    local other j
    for role in "${roles[@]}"; do
        j=0
        for other in "${roles[@]}"; do
            j=$((j + 1))
            [[ $other == "$role" ]] && continue
            ip netns exec "${LAB_NS[$role]}" "$bin" --state-dir "$work/$role" trust add "${ids[$other]}" \
                --name "host-$other" --endpoint "10.78.0.$j:7400" >/dev/null || return 1
        done
    done
    echo "lab: ${#roles[@]} agents on bridge 10.78.0.0/24 (state under $work)"
    for role in "${roles[@]}"; do
        local addr=ADDR_${role^^} under=UNDERLAY_${role^^}
        echo "  $role: netns ${LAB_NS[$role]}  underlay ${!under}  overlay ${!addr}"
    done
    echo "shell helpers: an X ARGS (agentnet of host X), inx X CMD (run CMD in host X). exit ends the lab."
    AGENTNET_BIN=$bin LAB_WORK=$work bash --rcfile <(cat <<'RC'
[[ -f ~/.bashrc ]] && source ~/.bashrc
an()  { local x=${1^^}; shift; local ns=NS_$x dir=DIR_$x; ip netns exec "${!ns}" "$AGENTNET_BIN" --state-dir "${!dir}" "$@"; }
inx() { local x=${1^^}; shift; local ns=NS_$x; ip netns exec "${!ns}" "$@"; }
PS1='[agentnet-lab] \w \$ '
RC
) -i
    for role in "${roles[@]}"; do
        ip netns exec "${LAB_NS[$role]}" "$bin" --state-dir "$work/$role" down 2>/dev/null
    done
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -uo pipefail
    cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
    case ${1:-} in
        shell) shift; lab_shell "$@" ;;
        *) sed -n '2,/^# ====/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 2 ;;
    esac
fi
