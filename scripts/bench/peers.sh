# shellcheck shell=bash
# =============================================================================
# scripts/bench/peers.sh — the other tunnels scripts/bench.sh measures next to
# agentnet (sourced, not run). Adapted from shared/bench/peerbench.sh.
#
#   wggo       wireguard-go (Debian) + wg(8) from wireguard-tools
#   boringtun  boringtun-cli (crates.io, Cloudflare) + wg(8)
#   gotatun    gotatun-cli (crates.io, Mullvad; binary `gotatun`) + wg(8)
#   nebula     nebula (Debian): its own CA, node A is the lighthouse
#   fastd      fastd (Debian): tun mode, salsa2012+umac
#
# Every peer P provides
#   P_version     one line
#   P_prepare     keys and configs under $WORK/P; sets TUN_IP_A and TUN_IP_B,
#                 and TUN_IP6_A and TUN_IP6_B when the tunnel carries IPv6
#                 too (empty otherwise)
#   P_start a|b   starts that node with lab_bg, appends its PID to DAEMONS and
#                 returns once it is configured (B: not necessarily connected)
# and PEER_TOOLS[P] lists the commands it needs (peer_missing tells which of
# them are not installed). Only node B knows A's underlay address, so B
# initiates, as the agentnet row's B does. Every tunnel gets MTU $TUN_MTU and
# the subnet 10.210.N.0/24 (N = 1..5) inside the two namespaces, and those
# that carry IPv6 also fd0a:210:N::/64 (nebula 1.6's overlay is IPv4 only).
#
# From bench.sh: NS_A NS_B IP_A IP_B TUN_MTU WORK LOGS DAEMONS log (and for
# agentnet BIN and PORT); from
# scripts/lab.sh: lab_bg LAB_LAST_PID wait_for has_addr.
# =============================================================================

# shellcheck disable=SC2034 # used by bench.sh
PEERS_ALL="wggo boringtun gotatun nebula fastd"
PEERS_APT=(wireguard-go wireguard-tools nebula fastd)
PEERS_CRATES=(boringtun-cli gotatun-cli)
CARGO_ROOT=${CARGO_ROOT:-/tmp/agentnet-bench/cargo-root}

# cargo_bin NAME : NAME on the PATH, else in $CARGO_ROOT/bin or ~/.cargo/bin
# (there only when no one but root or we can change it: lab_owned_path).
cargo_bin() {
    local c
    c=$(command -v "$1") && [[ -x $c ]] && { echo "$c"; return; }
    for c in "$CARGO_ROOT/bin/$1" "$HOME/.cargo/bin/$1"; do
        [[ -x $c ]] && lab_owned_path "$c" && { echo "$c"; return; }
    done
    echo "$1"
}
peers_find_bins() {
    BORINGTUN=${BORINGTUN:-$(cargo_bin boringtun-cli)}
    GOTATUN=${GOTATUN:-$(cargo_bin gotatun)}
    declare -gA PEER_TOOLS=(
        [wggo]="wireguard-go wg" [boringtun]="$BORINGTUN wg" [gotatun]="$GOTATUN wg"
        [nebula]="nebula nebula-cert" [fastd]=fastd
    )
}
peers_find_bins

# peer_missing P : prints the tools of P that are not installed.
peer_missing() {
    local t missing=()
    for t in ${PEER_TOOLS[$1]}; do command -v "$t" >/dev/null || missing+=("$t"); done
    echo "${missing[*]}"
}

# peers_install LOGFILE : Debian packages, then the crates (niced: the build
# shares the machine). A failure is reported and the peer stays uninstalled.
peers_install() {
    local out=$1 crate
    # without recommends: wireguard-tools would bring a kernel image and initramfs
    local apt=(apt-get install -y --no-install-recommends "${PEERS_APT[@]}")
    export DEBIAN_FRONTEND=noninteractive
    log "installing peers: ${apt[*]} (output in $out)"
    "${apt[@]}" >>"$out" 2>&1 || { apt-get update >>"$out" 2>&1 && "${apt[@]}" >>"$out" 2>&1; } ||
        log "  apt-get install failed; its peers will be skipped (see $out)"
    if ! command -v cargo >/dev/null; then
        log "  no cargo on the PATH: ${PEERS_CRATES[*]} not installed"
        return
    fi
    if ! lab_private_dir "$CARGO_ROOT"; then
        log "  $CARGO_ROOT is not root's alone: ${PEERS_CRATES[*]} not installed"
        return
    fi
    for crate in "${PEERS_CRATES[@]}"; do
        log "  cargo install --locked --root $CARGO_ROOT $crate"
        (cd / && nice -n 10 cargo install --locked --root "$CARGO_ROOT" "$crate") >>"$out" 2>&1 ||
            log "  cargo install $crate failed; skipped (see $out)"
    done
    unset BORINGTUN GOTATUN
    peers_find_bins
}

# side_vars SIDE : NS, TIP and TIP6 (namespace, tunnel address, tunnel IPv6
# address or empty) of node a or b.
side_vars() {
    if [[ $1 == a ]]; then NS=$NS_A TIP=$TUN_IP_A TIP6=${TUN_IP6_A:-}; else NS=$NS_B TIP=$TUN_IP_B TIP6=${TUN_IP6_B:-}; fi
}

# from_storage EXE : drop EXE from the page cache, as after a boot: the
# daemon's own page faults read it back. How a file entered the cache
# decides how much of it the kernel maps around each page a process
# touches, and so a daemon's RSS by up to ~1 MiB: read by read(2) (`cat`,
# or just written by `cp`) it is held in large folios, and Linux 6.18 maps
# a whole large folio on a fault (256 KiB here) where pages faulted in
# one by one get the 64 KiB fault-around. Every tunnel's binary starts
# from the same state.
from_storage() {
    local f
    f=$(command -v "$1") && [[ -f $f ]] || return 0
    dd if="$f" iflag=nocache count=0 status=none 2>/dev/null
}

# start_daemon P SIDE CMD... : start CMD as node SIDE of peer P, logging to
# logs/P-SIDE.log; sets NS and TIP (declare them local in the caller).
start_daemon() {
    local p=$1 side=$2; shift 2
    side_vars "$side"
    # Before A only: B starts from the same binary, within the connect time.
    [[ $side == a ]] && from_storage "$1"
    lab_bg "$LOGS/$p-$side.log" "$NS" "$@"
    DAEMONS+=("$LAB_LAST_PID")
}
# start_node P SIDE IFNAME CMD... : start_daemon, then wait until IFNAME holds
# the node's tunnel address (the daemon or its up-hook sets it).
start_node() {
    local p=$1 side=$2 ifname=$3 NS TIP TIP6; shift 3
    start_daemon "$p" "$side" "$@"
    wait_for 10 has_addr "$NS" "$ifname" "$TIP"
}

# ---- agentnet itself ($BIN, UDP $PORT): both trust each other, only B knows
# A's endpoint; TUN_IP4_A/B are the agents' IPv4 overlay addresses -------------
agentnet_version() { "$BIN" --version 2>/dev/null | head -1; }
agentnet_prepare() {
    local side
    for side in a b; do
        mkdir "$WORK/$side" && "$BIN" --state-dir "$WORK/$side" init --name "bench-$side" || return 1
    done
    TUN_IP_A=$("$BIN" --state-dir "$WORK/a" id --json | jq -r .address)
    TUN_IP_B=$("$BIN" --state-dir "$WORK/b" id --json | jq -r .address)
    TUN_IP4_A=$("$BIN" --state-dir "$WORK/a" id --json | jq -r .address4)
    TUN_IP4_B=$("$BIN" --state-dir "$WORK/b" id --json | jq -r .address4)
    "$BIN" --state-dir "$WORK/a" trust add "$("$BIN" --state-dir "$WORK/b" id --json | jq -r .id)" \
        --name bench-b || return 1
    # shellcheck disable=SC2153 # PORT is the caller's, as BIN is
    "$BIN" --state-dir "$WORK/b" trust add "$("$BIN" --state-dir "$WORK/a" id --json | jq -r .id)" \
        --name bench-a --endpoint "$IP_A:$PORT"
}
agentnet_start() {
    # --foreground keeps the daemon a child of this shell: its PID is known
    start_node agentnet "$1" "anb-$1" "$BIN" --state-dir "$WORK/$1" up --foreground \
        --interface "anb-$1" --port "$PORT" --mtu "$TUN_MTU"
}

# ---- WireGuard: wireguard-go, boringtun and gotatun share keys/config --------
# wg_prepare P SUBNET PORT : keys and wg(8) configs; A has no Endpoint for B.
wg_prepare() {
    local d=$WORK/$1 net=$2 port=$3 side other net6
    local -A host=([a]=1 [b]=2)
    net6=fd0a:210:${net##*.}:
    mkdir -p "$d" || return 1
    for side in a b; do wg genkey >"$d/$side.key" && wg pubkey <"$d/$side.key" >"$d/$side.pub" || return 1; done
    TUN_IP_A=$net.1 TUN_IP_B=$net.2 TUN_IP6_A=$net6:1 TUN_IP6_B=$net6:2
    for side in a b; do
        other=b; [[ $side == b ]] && other=a
        printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n\n[Peer]\nPublicKey = %s\nAllowedIPs = %s/32, %s/128\n' \
            "$(cat "$d/$side.key")" "$port" "$(cat "$d/$other.pub")" "$net.${host[$other]}" \
            "$net6:${host[$other]}" >"$d/$side.conf"
        [[ $side == b ]] && echo "Endpoint = $IP_A:$port" >>"$d/$side.conf"
    done
    return 0
}
# wg_start P SIDE DAEMON-CMD... (the interface name is appended)
wg_start() {
    local p=$1 side=$2 ifname=an$1-$2 NS TIP TIP6; shift 2
    # A socket left by an earlier run of this node would pass the wait below
    # before the new daemon has its device.
    rm -f "/run/wireguard/$ifname.sock"
    start_daemon "$p" "$side" "$@" "$ifname"
    # the daemon creates its UAPI socket once the TUN device exists
    wait_for 10 test -S "/run/wireguard/$ifname.sock" || return 1
    ip netns exec "$NS" wg setconf "$ifname" "$WORK/$p/$side.conf" || return 1
    ip -n "$NS" addr add "$TIP/24" dev "$ifname" || return 1
    [[ -z $TIP6 ]] || ip -n "$NS" addr add "$TIP6/64" dev "$ifname" nodad || return 1
    ip -n "$NS" link set "$ifname" mtu "$TUN_MTU" up
}

wggo_version() { wireguard-go --version 2>/dev/null | head -1; }
wggo_prepare() { wg_prepare wggo 10.210.1 51820; }
wggo_start() { wg_start wggo "$1" env WG_PROCESS_FOREGROUND=1 wireguard-go -f; }

boringtun_version() { "$BORINGTUN" --version 2>/dev/null | head -1; }
boringtun_prepare() { wg_prepare boringtun 10.210.2 51821; }
boringtun_start() { wg_start boringtun "$1" "$BORINGTUN" --foreground --disable-drop-privileges; }

gotatun_version() { "$GOTATUN" --version 2>/dev/null | head -1; }
gotatun_prepare() { wg_prepare gotatun 10.210.3 51822; }
gotatun_start() { wg_start gotatun "$1" "$GOTATUN" --foreground --disable-drop-privileges; }

# ---- nebula: own CA, A is the lighthouse, B finds A by static_host_map -------
nebula_version() { echo "nebula $(nebula -version 2>/dev/null | awk '{ print $2 }')"; }
nebula_prepare() {
    local d=$WORK/nebula side NS TIP TIP6 lighthouse
    mkdir -p "$d" || return 1
    TUN_IP_A=10.210.4.1 TUN_IP_B=10.210.4.2 TUN_IP6_A='' TUN_IP6_B=
    nebula-cert ca -name agentnet-bench-ca -out-crt "$d/ca.crt" -out-key "$d/ca.key" || return 1
    for side in a b; do
        side_vars "$side"
        nebula-cert sign -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" -name "node-$side" \
            -ip "$TIP/24" -out-crt "$d/$side.crt" -out-key "$d/$side.key" || return 1
        if [[ $side == a ]]; then
            lighthouse=$'static_host_map: {}\nlighthouse:\n  am_lighthouse: true\n  hosts: []'
        else
            lighthouse="static_host_map:
  \"$TUN_IP_A\": [\"$IP_A:4242\"]
lighthouse:
  am_lighthouse: false
  interval: 60
  hosts:
    - \"$TUN_IP_A\""
        fi
        cat >"$d/$side.yml" <<EOF
pki:
  ca: $d/ca.crt
  cert: $d/$side.crt
  key: $d/$side.key
$lighthouse
listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: false
relay:
  am_relay: false
  use_relays: false
tun:
  disabled: false
  dev: anneb-$side
  drop_local_broadcast: false
  drop_multicast: false
  tx_queue: 500
  mtu: $TUN_MTU
logging:
  level: info
  format: text
firewall:
  outbound:
    - port: any
      proto: any
      host: any
  inbound:
    - port: any
      proto: any
      host: any
EOF
    done
}
nebula_start() { start_node nebula "$1" "anneb-$1" nebula -config "$WORK/nebula/$1.yml"; }

# ---- fastd: tun mode, salsa2012+umac; only B has a remote for its peer ------
fastd_version() { fastd --version 2>/dev/null | head -1; }
fastd_prepare() {
    local d=$WORK/fastd side other NS TIP TIP6 remote
    mkdir -p "$d" || return 1
    TUN_IP_A=10.210.5.1 TUN_IP_B=10.210.5.2 TUN_IP6_A=fd0a:210:5::1 TUN_IP6_B=fd0a:210:5::2
    for side in a b; do
        fastd --generate-key --machine-readable >"$d/$side.secret" || return 1
        printf 'secret "%s";\n' "$(cat "$d/$side.secret")" >"$d/$side.secret.conf"
        fastd --show-key --machine-readable -c "$d/$side.secret.conf" >"$d/$side.pub" || return 1
    done
    for side in a b; do
        side_vars "$side"
        if [[ $side == a ]]; then other=b remote=""; else other=a remote="remote $IP_A:10000;"; fi
        cat >"$d/$side.conf" <<EOF
log level info;
interface "anfd-$side";
mode tun;
bind any:10000;
method "salsa2012+umac";
secret "$(cat "$d/$side.secret")";
mtu $TUN_MTU;
on up sync "ip addr add $TIP/24 dev \$INTERFACE && ip addr add $TIP6/64 dev \$INTERFACE nodad && ip link set \$INTERFACE up";
peer "$other" {
    key "$(cat "$d/$other.pub")";
    $remote
}
EOF
    done
}
fastd_start() { start_node fastd "$1" "anfd-$1" fastd -c "$WORK/fastd/$1.conf"; }
