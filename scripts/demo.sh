#!/usr/bin/env bash
# =============================================================================
# scripts/demo.sh — agentnet in one command (as root).
#
# Builds the binary, then a small world of network namespaces:
#
#     [alice] -- NAT router A --+                +-- NAT router B -- [bob]
#     192.168.1.2               +-- "internet" --+                192.168.2.2
#                                   198.18.0.0/24
#                                   [rendezvous 198.18.0.10]
#
# Alice asks Bob for trust with a justification; Bob sees the request and
# approves it; Bob serves HTTP on his overlay address; Alice fetches it by
# name (bob.agent.internal) through both NATs — direct after hole punching.
# Everything is removed at the end, also on failure or Ctrl-C.
#
# Addresses exist only inside the demo's namespaces (198.18.0.0/15 is the
# benchmarking range); nothing is sent anywhere else.
# Env: AGENTNET=path/to/agentnet (skips the build)
# =============================================================================
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "demo.sh needs root (network namespaces, TUN): sudo $0" >&2
    exit 1
fi
# What the demo runs, by the Debian package that has it; what is missing is
# installed the way scripts/test.sh does (apt-get update once, then install).
declare -A PACKAGE_OF=([ip]=iproute2 [nft]=nftables [curl]=curl [python3]=python3)
missing=()
for tool in "${!PACKAGE_OF[@]}"; do
    command -v "$tool" >/dev/null || missing+=("${PACKAGE_OF[$tool]}")
done
if ((${#missing[@]})); then
    command -v apt-get >/dev/null ||
        { echo "demo.sh needs ${missing[*]} and this is not a Debian-like system (no apt-get)" >&2; exit 1; }
    echo "installing ${missing[*]}" >&2
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { echo "demo.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

P=an-demo-$$
WORK=$(mktemp -d /tmp/agentnet-demo.XXXXXX)
NAMESPACES=()
PIDS=()
STATE_A=$WORK/alice STATE_B=$WORK/bob STATE_RV=$WORK/rendezvous

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '   %s\n' "$*"; }
run() { printf '   $ %s\n' "$*"; "$@" 2>&1 | sed 's/^/     /'; }

cleanup() {
    set +e
    bold "cleaning up"
    [[ -n ${AGENTNET:-} ]] || return 0
    for state in "$STATE_A" "$STATE_B"; do
        [[ -S $state/agentnet.sock ]] && "$AGENTNET" --state-dir "$state" down >/dev/null 2>&1
    done
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
    say "removed namespaces ${NAMESPACES[*]} and $WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ns() { ip netns add "$P-$1"; NAMESPACES+=("$P-$1"); ip -n "$P-$1" link set lo up; }
inx() { local n=$1; shift; ip netns exec "$P-$n" "$@"; }
# bg NS LOG CMD... : CMD in the background in namespace NS; its PID (that of
# `ip netns exec`, which execs into CMD: the process itself, not a subshell)
# goes to PIDS for cleanup.
bg() { local n=$1 log=$2; shift 2; ip netns exec "$P-$n" "$@" >"$log" 2>&1 & PIDS+=($!); }

bold "building agentnet"
if [[ -z ${AGENTNET:-} ]]; then
    cargo build --release --quiet
    AGENTNET=$PWD/target/release/agentnet
fi
say "$("$AGENTNET" --version)"
an() { local who=$1; shift; local state; case $who in a) state=$STATE_A ;; b) state=$STATE_B ;; rv) state=$STATE_RV ;; esac
    ip netns exec "$P-$who" "$AGENTNET" --state-dir "$state" "$@"; }

bold "building the world: an internet, a rendezvous, two NAT routers, two agents"
for n in inet rv ra rb a b; do ns "$n"; done
ip -n "$P-inet" link add br0 type bridge && ip -n "$P-inet" link set br0 up
attach_inet() { # namespace address
    ip -n "$P-inet" link add "p-$1" type veth peer name wan netns "$P-$1"
    ip -n "$P-inet" link set "p-$1" master br0 up
    ip -n "$P-$1" addr add "$2/24" dev wan && ip -n "$P-$1" link set wan up
}
attach_inet rv 198.18.0.10
attach_inet ra 198.18.0.1
attach_inet rb 198.18.0.2
lan() { # router agent subnet
    ip -n "$P-$1" link add lan type veth peer name eth0 netns "$P-$2"
    ip -n "$P-$1" addr add "$3.1/24" dev lan && ip -n "$P-$1" link set lan up
    ip -n "$P-$2" addr add "$3.2/24" dev eth0 && ip -n "$P-$2" link set eth0 up
    ip -n "$P-$2" route add default via "$3.1"
    inx "$1" sysctl -qw net.ipv4.ip_forward=1
    # A home router: masquerade out, and drop what nobody inside asked for
    # (so an early probe from the other side leaves no conntrack entry that
    # would make the router pick another port for our own first probe).
    inx "$1" nft -f - <<NFT
table ip nat {
    chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
}
table inet firewall {
    chain input { type filter hook input priority 0; iifname "wan" ct state new drop; }
    chain forward { type filter hook forward priority 0; iifname "wan" ct state new drop; }
}
NFT
}
lan ra a 192.168.1
lan rb b 192.168.2
say "alice 192.168.1.2 behind NAT 198.18.0.1; bob 192.168.2.2 behind NAT 198.18.0.2"

bold "starting the rendezvous (it relays ciphertext only and lists nobody)"
an rv init --name rendezvous >/dev/null
RV_ID=$(an rv id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
bg rv "$WORK/rendezvous.log" "$AGENTNET" --state-dir "$STATE_RV" rendezvous --listen 0.0.0.0:7300 \
    --tcp-listen 0.0.0.0:7300 --foreground
for _ in $(seq 100); do grep -q "listening on" "$WORK/rendezvous.log" 2>/dev/null && break; sleep 0.05; done
say "rendezvous $RV_ID at 198.18.0.10:7300"

bold "alice and bob get identities and bring their interfaces up"
an a init --name alice >/dev/null
an b init --name bob >/dev/null
ID_A=$(an a id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
ID_B=$(an b id --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
run an a up --interface agentnet0 --rendezvous "198.18.0.10:7300=$RV_ID"
run an b up --interface agentnet0 --rendezvous "198.18.0.10:7300=$RV_ID"
for _ in $(seq 100); do
    an a status --json | python3 -c 'import json,sys; sys.exit(0 if all(r["registered"] for r in json.load(sys.stdin)["rendezvous"]) else 1)' && break
    sleep 0.1
done

bold "alice asks bob for trust (sealed, signed, carried by the rendezvous)"
say "all alice knows is bob's ID: $ID_B"
run an a trust request "$ID_B" --name bob --allow tcp:8080 \
    --justification "alice summarizes bob's logs every night and needs his HTTP API on 8080"

bold "bob sees the request — he has not answered anything, alice hears nothing yet"
for _ in $(seq 50); do an b trust pending --json | grep -q "$ID_A" && break; sleep 0.1; done
run an b trust pending

bold "bob approves: alice may open tcp:8080 to him, nothing else"
run an b trust approve "$ID_A"

bold "bob serves HTTP on its defaults (0.0.0.0: reached over the IPv4 overlay)"
mkdir -p "$WORK/www" && echo "hello from bob, over agentnet" >"$WORK/www/index.html"
bg b "$WORK/http.log" python3 -u -m http.server --directory "$WORK/www" 8080
for _ in $(seq 100); do grep -q "Serving HTTP" "$WORK/http.log" 2>/dev/null && break; sleep 0.05; done
say "$(head -1 "$WORK/http.log")"

bold "alice fetches it by name"
run inx a curl -sS --max-time 10 http://bob.agent.internal:8080/

bold "the path: direct after hole punching through both NATs"
for _ in $(seq 50); do
    path=$(an a status --json | python3 -c 'import json,sys; p=json.load(sys.stdin)["peers"]; print(p[0]["path"] if p else "none")')
    [[ $path == direct ]] && break
    inx a curl -s -o /dev/null --max-time 2 http://bob.agent.internal:8080/ || true
    sleep 0.1
done
run an a status

bold "bob revokes alice: her packets are dropped from now on"
run an b trust revoke "$ID_A"
if inx a curl -sS --max-time 3 http://bob.agent.internal:8080/ >/dev/null 2>&1; then
    say "unexpected: alice still reached bob"
    exit 1
fi
say "alice's request timed out: bob is invisible to her again"
