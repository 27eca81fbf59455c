//! The NAT lab (issue 4): an "internet" of benchmarking addresses with
//! rendezvous servers on it, NAT routers (nftables) with agents behind them,
//! and agents straight on the internet.
//!
//! ```text
//!             198.18.0.0/24 ("internet": bridge br0 in namespace <prefix>-inet)
//!   ┌───────────┬────────────┬──────────────┬──────────────┐
//!  rv1         rv2        public host    router rt-X (wan)    ...
//! (rendezvous servers)                     │ masquerade / firewall
//!                                     10.77.N.0/24 (bridge "lan" in the router)
//!                                      ┌───┴───┐
//!                                   host a   host b
//! ```
//!
//! Router kinds ([`NatKind`]):
//!
//! - `Easy`: `masquerade` (Linux keeps the source port: endpoint-independent
//!   mapping; conntrack filters by address and port).
//! - `Hard`: `masquerade random,fully-random` (a fresh random port for every
//!   new destination: endpoint-dependent mapping, "symmetric NAT").
//! - `UdpBlocked`: like `Easy`, and the router forwards no UDP at all
//!   (`block_udp` / `unblock_udp` toggle it on any router).
//! - `EasyNoFirewall`: `masquerade` without the input firewall below.
//!
//! Any kind of router can also run miniupnpd ([`NatLab::site_with_port_mapping`]):
//! PCP, NAT-PMP and UPnP-IGD for its LAN, as home routers offer them. Its
//! WAN address is then `192.0.3.N` ([`MAPPING_WAN`] says why), which every
//! host on the internet reaches on-link.
//!
//! Every other router also runs the stateful firewall of any home router:
//! nothing new comes in from the WAN (`ct state new drop` on input and
//! forward). Without it (`EasyNoFirewall`, a common cloud NAT instance) a
//! hole-punching datagram that reaches a router before its own agent has
//! sent anything to that peer is delivered to the router itself and leaves
//! a conntrack entry (peer:port -> wan:port); when the agent then sends to
//! that peer, the mapping that would keep its port clashes with that entry
//! and masquerade picks another port, and the peer's next probes keep
//! refreshing the stale entry (`conntrack -L` shows both routers holding
//! such an entry; [`NatLab::conntrack`]). A firewall drop happens before
//! conntrack confirms the entry, so none is left. Two such routers pass a
//! direct path only when both agents send before either's datagram
//! arrives: the agents time their punches through the relay (see
//! `core::peer::punch`), which works when the routers are some distance
//! apart. In a lab with no delay at all the window is the few microseconds
//! a datagram takes from one namespace to the other: measured with two
//! Python senders busy-waiting for the same instant, 3 of 20 tries passed,
//! and the agents (timers of a millisecond) stay on the relay. So the bare
//! masquerade row gives the internet distance ([`NatLab::delay_ingress`]).
//!
//! The underlay is IPv4 only (IPv6 is off on every lab interface except the
//! agents' TUNs), so candidates and endpoints are predictable.
//!
//! Use (every call returns `Result<_, String>`):
//!
//! ```text
//! let nat = NatLab::new()?;
//! let rv = nat.rendezvous("rv1")?;                 // agentnet rendezvous --foreground
//! let site = nat.site("a", NatKind::Hard)?;        // router rt-a
//! let host = nat.host_behind(&site, "a")?;         // or nat.public_host("a")
//! let agent = Agent::new(&nat.lab, &host, "host-a")?;
//! let id = start_agent(&agent, &[&rv])?;           // init + up --rendezvous
//! wait_registered(&agent, 1)?;
//! nat.cut(site.wan, other.wan)?; nat.heal()?;      // drop between two public addresses
//! ```
//!
//! Network hygiene as for [`Lab`]: every address lives in namespaces the lab
//! created, which have no link to the host's network, and everything is
//! removed when the lab is dropped (also when a test panics).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::agent::{Agent, Identity, agentnet_bin, peer_in_status};
use super::lab::{Host, Lab, next_serial};
use super::{Output, run, step, wait_for, wait_until};

/// The programs a NAT-lab test runs inside the namespaces (besides `ip`).
pub const NATLAB_TOOLS: &[&str] = &["nft", "ping", "python3", "ss", "sysctl"];

/// A delay line (stdlib Python, raw nfnetlink): binds NFQUEUE queue
/// `argv[1]` of its namespace, and accepts each queued packet `argv[2]`
/// milliseconds after it came, in order.
pub const DELAY_LINE: &str = r#"
import collections, select, socket, struct, sys, time
queue, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000.0
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
s.bind((0, 0))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
def send(msg_type, attr_type, payload):
    nla = struct.pack("=HH", 4 + len(payload), attr_type) + payload
    body = struct.pack("=BBH", 0, 0, socket.htons(queue)) + nla + b"\0" * (-len(nla) % 4)
    s.send(struct.pack("=IHHII", 16 + len(body), (3 << 8) | msg_type, 1, 0, 0) + body)
send(2, 1, struct.pack("!BBH", 1, 0, socket.AF_INET))  # config: bind the queue
send(2, 2, struct.pack("!IB", 0, 1))                   # config: copy metadata only
pending = collections.deque()
print("ready", flush=True)
while True:
    wait = max(0.0, pending[0][0] - time.monotonic()) if pending else None
    if select.select([s], [], [], wait)[0]:
        data, now, at = s.recv(1 << 16), time.monotonic(), 0
        while at + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, at)
            if length < 16:
                break
            if kind == 3 << 8:  # a queued packet: find its id
                attr = at + 20
                while attr + 4 <= at + length:
                    attr_len, attr_type = struct.unpack_from("=HH", data, attr)
                    if attr_len < 4:
                        break
                    if attr_type & 0x7FFF == 1:
                        pending.append((now + delay, struct.unpack_from("!I", data, attr + 4)[0]))
                    attr += (attr_len + 3) & ~3
            at += (length + 3) & ~3
    now = time.monotonic()
    while pending and pending[0][0] <= now:
        send(1, 2, struct.pack("!II", 1, pending.popleft()[1]))  # verdict: accept
"#;

/// Port the rendezvous servers listen on (UDP and TCP).
pub const RENDEZVOUS_PORT: u16 = 3478;

/// Port of the UDP/TCP reflector a lab self-check runs on public hosts.
pub const REFLECTOR_PORT: u16 = 3479;

/// Registration interval the lab's agents use (`up --register-interval`):
/// short, so that a lost rendezvous is noticed within seconds.
pub const REGISTER_INTERVAL_S: u32 = 5;

/// How long an agent may take to register with its rendezvous servers.
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(20);

/// The internet's first three octets (198.18.0.0/15 is reserved for
/// benchmarking, RFC 2544; it is used only inside the lab's namespaces).
const INTERNET: [u8; 3] = [198, 18, 0];

/// The WAN addresses of routers that run miniupnpd (`192.0.3.N/24`, on the
/// same internet bridge). miniupnpd 2.3.1 refuses to map ports on an
/// external address in any reserved range (198.18.0.0/15 included, and
/// every documentation range), so these routers get an ordinary unicast
/// address. It exists only on the lab's bridge: no namespace of the lab
/// has a link to the host's network, so nothing sent to it leaves them.
const MAPPING_WAN: [u8; 3] = [192, 0, 3];

/// The program a port-mapping router runs.
pub const MINIUPNPD: &str = "miniupnpd";

/// How a router's miniupnpd is set up ([`NatLab::site_with_port_mapping`]).
#[derive(Debug, Clone, Copy)]
pub struct Miniupnpd {
    /// PCP and NAT-PMP on (UPnP-IGD is always on).
    pub pcp: bool,
    /// The longest lifetime it grants a PCP/NAT-PMP mapping, in seconds
    /// (the agent asks for more, so it gets this).
    pub lifetime_s: Option<u32>,
}

impl Miniupnpd {
    /// PCP, NAT-PMP and UPnP-IGD, miniupnpd's lifetimes.
    pub const ALL: Miniupnpd = Miniupnpd {
        pcp: true,
        lifetime_s: None,
    };
}

/// How a site's router treats its agents' traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// `masquerade`: endpoint-independent mapping.
    Easy,
    /// `masquerade random,fully-random`: endpoint-dependent mapping.
    Hard,
    /// `masquerade`, and no UDP is forwarded.
    UdpBlocked,
    /// `masquerade` without the stateful input firewall (see the module
    /// documentation): an unsolicited packet to the router leaves a
    /// conntrack entry that clashes with its agent's own mapping later.
    /// Two such routers pass a direct path when the agents punch at the
    /// same moment (timed through the relay) and the routers are some
    /// milliseconds apart.
    EasyNoFirewall,
}

impl NatKind {
    /// A short label for messages.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::Easy => "easy",
            NatKind::Hard => "hard",
            NatKind::UdpBlocked => "udp-blocked",
            NatKind::EasyNoFirewall => "easy-no-firewall",
        }
    }
}

/// A NAT'd site: a router with a WAN address on the internet and a LAN
/// bridge its hosts hang off.
#[derive(Debug)]
pub struct Site {
    /// PID of the router's miniupnpd (PCP, NAT-PMP, UPnP-IGD), if it runs
    /// one ([`NatLab::site_with_port_mapping`]); the lab stops it.
    pub miniupnpd: Option<u32>,
    /// The site's name (its router's role is `rt-<name>`).
    pub name: String,
    /// What the router does.
    pub kind: NatKind,
    /// The router's namespace.
    pub router_ns: String,
    /// The router's address on the internet (every host's public address).
    pub wan: Ipv4Addr,
    /// The router's LAN address (`10.77.N.1`), the hosts' gateway.
    pub gateway: Ipv4Addr,
    next_host: AtomicU8,
}

/// A rendezvous server running in a lab host.
#[derive(Debug)]
pub struct Rendezvous {
    /// Its host on the internet.
    pub host: Host,
    /// Its agent ID.
    pub id: String,
    /// PID of `agentnet rendezvous --foreground`, while it runs.
    pub pid: Mutex<Option<u32>>,
    state: PathBuf,
}

impl Rendezvous {
    /// Its UDP (and TCP) endpoint.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host.ip, RENDEZVOUS_PORT))
    }

    /// The `up --rendezvous` value: `HOST:PORT=ID`.
    pub fn flag(&self) -> String {
        format!("{}={}", self.endpoint(), self.id)
    }

    /// Its state directory (inside the lab's directory, so it outlives the
    /// server, which the lab stops when it is dropped).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }
}

/// The lab: a [`Lab`] plus the internet, its sites and rendezvous servers.
pub struct NatLab {
    /// The namespaces and processes (agents borrow it).
    pub lab: Lab,
    inet_ns: String,
    next_public: AtomicU8,
    next_site: AtomicU8,
}

impl NatLab {
    /// An empty internet: namespace `<prefix>-inet` with bridge `br0`, and a
    /// bridge-family nftables table for path cuts.
    pub fn new() -> Result<Self, String> {
        let lab = Lab::new()?;
        let inet_ns = lab.add_namespace("inet")?;
        let nat = Self {
            lab,
            inet_ns,
            next_public: AtomicU8::new(1),
            next_site: AtomicU8::new(1),
        };
        nat.sysctl(&nat.inet_ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        nat.sysctl(&nat.inet_ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        ip(&["-n", &nat.inet_ns, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &nat.inet_ns, "link", "set", "br0", "up"])?;
        nat.nft(
            &nat.inet_ns,
            "table bridge natcut {\n\
             \x20 chain forward { type filter hook forward priority filter; policy accept; }\n\
             }\n",
        )?;
        Ok(nat)
    }

    /// The lab's namespace prefix.
    pub fn prefix(&self) -> &str {
        self.lab.prefix()
    }

    /// A host straight on the internet (no NAT): namespace `<prefix>-<role>`,
    /// `eth0` = `198.18.0.N/24`.
    pub fn public_host(&self, role: &str) -> Result<Host, String> {
        let n = self.next_public.fetch_add(1, Ordering::Relaxed);
        if n >= 250 {
            return Err("too many public hosts".into());
        }
        let address = Ipv4Addr::new(INTERNET[0], INTERNET[1], INTERNET[2], n);
        let ns = self.lab.add_namespace(role)?;
        // Not `default.disable_ipv6`: an agent's TUN needs IPv6.
        self.plug(&self.inet_ns, "br0", &format!("p-{role}"), &ns, "eth0")?;
        self.sysctl(&ns, "net.ipv6.conf.eth0.disable_ipv6", "1")?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // The port-mapping routers' addresses share the bridge.
        ip(&["-n", &ns, "route", "add", &mapping_wan_net(), "dev", "eth0"])?;
        Ok(Host {
            role: role.to_string(),
            ns,
            iface: "eth0".into(),
            ip: address,
        })
    }

    /// A NAT router `rt-<name>` of `kind`: WAN on the internet, a LAN
    /// bridge with `10.77.N.1/24`, forwarding on, nftables table `ip natlab`.
    pub fn site(&self, name: &str, kind: NatKind) -> Result<Site, String> {
        self.make_site(name, kind, None)
    }

    /// A router as [`NatLab::site`] that also runs miniupnpd, as a home
    /// router with UPnP on does: UPnP-IGD (SSDP and HTTP) on the LAN, and
    /// with `pcp` PCP and NAT-PMP on the LAN address's UDP port 5351;
    /// mappings for LAN hosts only (`secure_mode`: each host for itself),
    /// ports 1024 and up. Its WAN address is `192.0.3.N` (see
    /// [`MAPPING_WAN`]); the firewall lets in what a mapping forwards
    /// (`ct status dnat accept`).
    pub fn site_with_port_mapping(
        &self,
        name: &str,
        kind: NatKind,
        miniupnpd: Miniupnpd,
    ) -> Result<Site, String> {
        self.make_site(name, kind, Some(miniupnpd))
    }

    /// A router; `port_mapping`: runs miniupnpd so.
    fn make_site(
        &self,
        name: &str,
        kind: NatKind,
        port_mapping: Option<Miniupnpd>,
    ) -> Result<Site, String> {
        let n = self.next_site.fetch_add(1, Ordering::Relaxed);
        let role = format!("rt-{name}");
        let wan_host = self.public_host(&role)?;
        // The public host helper named its interface eth0; a router calls it wan.
        let ns = wan_host.ns.clone();
        ip(&["-n", &ns, "link", "set", "eth0", "down"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "name", "wan"])?;
        ip(&["-n", &ns, "link", "set", "wan", "up"])?;
        let mut wan = wan_host.ip;
        if port_mapping.is_some() {
            // The address the router masquerades with and maps on is the
            // only one on its WAN; the internet is reached on-link.
            wan = Ipv4Addr::new(MAPPING_WAN[0], MAPPING_WAN[1], MAPPING_WAN[2], n);
            let internet = format!("{}.{}.{}.0/24", INTERNET[0], INTERNET[1], INTERNET[2]);
            let old = format!("{}/24", wan_host.ip);
            ip(&["-n", &ns, "addr", "del", &old, "dev", "wan"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{wan}/24"), "dev", "wan"])?;
            ip(&["-n", &ns, "route", "add", &internet, "dev", "wan"])?;
        } else {
            // Taking the link down for the rename dropped this route.
            ip(&["-n", &ns, "route", "add", &mapping_wan_net(), "dev", "wan"])?;
        }
        self.sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
        ip(&["-n", &ns, "link", "add", "lan", "type", "bridge"])?;
        let gateway = Ipv4Addr::new(10, 77, n, 1);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{gateway}/24"),
            "dev",
            "lan",
        ])?;
        ip(&["-n", &ns, "link", "set", "lan", "up"])?;
        let masquerade = match kind {
            NatKind::Easy | NatKind::UdpBlocked | NatKind::EasyNoFirewall => "masquerade",
            NatKind::Hard => "masquerade random,fully-random",
        };
        // No UDP leaves or enters a UDP-blocked site. The rule sits in a chain
        // of its own, so that a test can lift and restore the block
        // (`unblock_udp`, `block_udp`).
        let block_udp = match kind {
            NatKind::UdpBlocked => "meta l4proto udp drop",
            _ => "",
        };
        let input_firewall = match kind {
            NatKind::EasyNoFirewall => "",
            _ => "iifname \"wan\" ct state new drop",
        };
        // What a port mapping forwards passes the firewall (as OpenWrt's
        // `ct status dnat accept`).
        let forwarded = if port_mapping.is_some() {
            "iifname \"wan\" ct status dnat accept"
        } else {
            ""
        };
        let ruleset = [
            "table ip natlab {".to_string(),
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;"
                .into(),
            format!("    oifname \"wan\" {masquerade}"),
            "  }".into(),
            "  chain input { type filter hook input priority filter; policy accept;".into(),
            format!("    {input_firewall}"),
            "  }".into(),
            "  chain forward { type filter hook forward priority filter; policy accept;".into(),
            format!("    {forwarded}"),
            "    iifname \"wan\" ct state new drop".into(),
            "  }".into(),
            "  chain udpblock { type filter hook forward priority filter - 1; policy accept;"
                .into(),
            format!("    {block_udp}"),
            "  }".into(),
            "}".into(),
        ]
        .join("\n");
        self.nft(&ns, &ruleset)?;
        let miniupnpd = match port_mapping {
            Some(config) => Some(self.start_miniupnpd(&ns, name, gateway, config)?),
            None => None,
        };
        Ok(Site {
            miniupnpd,
            name: name.to_string(),
            kind,
            router_ns: ns,
            wan,
            gateway,
            next_host: AtomicU8::new(2),
        })
    }

    /// Starts miniupnpd in router namespace `ns` (WAN `wan`, LAN `lan` with
    /// `gateway`; set up as `config` says): its nftables chains (table
    /// `inet miniupnpd`), a config file and lease file in the lab
    /// directory, in the foreground (`-d`), tracked by the lab. Returns its
    /// PID once it listens for SSDP (and PCP/NAT-PMP).
    fn start_miniupnpd(
        &self,
        ns: &str,
        name: &str,
        gateway: Ipv4Addr,
        config: Miniupnpd,
    ) -> Result<u32, String> {
        let (pcp, lifetime) = (config.pcp, config.lifetime_s);
        // The chains miniupnpd fills (its defaults, in a table of its own).
        self.nft(
            ns,
            "table inet miniupnpd {\n\
             \x20 chain miniupnpd { }\n\
             \x20 chain prerouting_miniupnpd { }\n\
             \x20 chain postrouting_miniupnpd { }\n\
             \x20 chain forward { type filter hook forward priority filter; policy accept; jump miniupnpd; }\n\
             \x20 chain prerouting { type nat hook prerouting priority dstnat; policy accept; jump prerouting_miniupnpd; }\n\
             \x20 chain postrouting { type nat hook postrouting priority srcnat; policy accept; jump postrouting_miniupnpd; }\n\
             }\n",
        )?;
        let dir = self.lab.dir();
        let config = dir.join(format!("miniupnpd-{name}.conf"));
        let leases = dir.join(format!("miniupnpd-{name}.leases"));
        let pid_file = dir.join(format!("miniupnpd-{name}.pid"));
        let path = |p: &Path| p.to_str().map(str::to_string).ok_or("non-UTF-8 lab path");
        let o = gateway.octets();
        let mut lines = vec![
            "ext_ifname=wan".to_string(),
            "listening_ip=lan".into(),
            "http_port=0".into(),
            format!("enable_natpmp={}", if pcp { "yes" } else { "no" }),
            "enable_upnp=yes".into(),
            "secure_mode=yes".into(),
            "upnp_table_name=miniupnpd".into(),
            "upnp_nat_table_name=miniupnpd".into(),
            format!("lease_file={}", path(&leases)?),
            "uuid=8e3c2b1a-4d5e-4f60-8172-93a4b5c6d7e8".into(),
        ];
        if let Some(seconds) = lifetime {
            // miniupnpd wants the shortest below the longest.
            lines.push(format!("min_lifetime={}", seconds / 2));
            lines.push(format!("max_lifetime={seconds}"));
        }
        lines.push(format!(
            "allow 1024-65535 {}.{}.{}.0/24 1024-65535",
            o[0], o[1], o[2]
        ));
        lines.push("deny 0-65535 0.0.0.0/0 0-65535".into());
        let text = lines.join("\n");
        std::fs::write(&config, text + "\n").map_err(|e| format!("{}: {e}", config.display()))?;
        let pid = self.lab.spawn(
            ns,
            &format!("miniupnpd-{name}"),
            &[
                MINIUPNPD,
                "-f",
                &path(&config)?,
                "-P",
                &path(&pid_file)?,
                "-d",
            ],
        )?;
        wait_until(
            &format!("miniupnpd on rt-{name} to listen on UDP 1900 (and 5351)"),
            Duration::from_secs(10),
            || {
                if !self.lab.spawn_running(pid) {
                    return true;
                }
                let listening = |port: &str| {
                    self.lab
                        .exec(ns, &["ss", "-Hlun", "sport", "=", port])
                        .is_ok_and(|o| !o.stdout.trim().is_empty())
                };
                (!pcp || listening(":5351")) && listening(":1900")
            },
        )?;
        if !self.lab.spawn_running(pid) {
            let (out, err) = self.lab.spawn_output(pid);
            return Err(format!("miniupnpd on rt-{name} exited:\n{out}{err}"));
        }
        Ok(pid)
    }

    /// The port mappings miniupnpd holds on `site`'s router: the rules of
    /// its `prerouting_miniupnpd` chain (empty without miniupnpd).
    pub fn port_mappings(&self, site: &Site) -> Result<String, String> {
        if site.miniupnpd.is_none() {
            return Ok(String::new());
        }
        let out = self.lab.exec_ok(
            &site.router_ns,
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "miniupnpd",
                "prerouting_miniupnpd",
            ],
        )?;
        Ok(out
            .stdout
            .lines()
            .filter(|line| line.contains("dnat"))
            .map(str::trim)
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// What `site`'s miniupnpd logged so far.
    pub fn miniupnpd_log(&self, site: &Site) -> String {
        match site.miniupnpd {
            Some(pid) => {
                let (out, err) = self.lab.spawn_output(pid);
                format!("{out}{err}")
            }
            None => String::new(),
        }
    }

    /// A host on `site`'s LAN: namespace `<prefix>-<role>`, `eth0` =
    /// `10.77.N.M/24`, default route via the router.
    pub fn host_behind(&self, site: &Site, role: &str) -> Result<Host, String> {
        let m = site.next_host.fetch_add(1, Ordering::Relaxed);
        let o = site.gateway.octets();
        let address = Ipv4Addr::new(o[0], o[1], o[2], m);
        let ns = self.lab.add_namespace(role)?;
        self.plug(&site.router_ns, "lan", &format!("l-{role}"), &ns, "eth0")?;
        self.sysctl(&ns, "net.ipv6.conf.eth0.disable_ipv6", "1")?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &site.gateway.to_string(),
        ])?;
        Ok(Host {
            role: role.to_string(),
            ns,
            iface: "eth0".into(),
            ip: address,
        })
    }

    /// A public host `role` running `agentnet rendezvous --foreground` on
    /// UDP and TCP port [`RENDEZVOUS_PORT`]; returns once both listen and
    /// the server's ID is known.
    pub fn rendezvous(&self, role: &str) -> Result<Rendezvous, String> {
        let host = self.public_host(role)?;
        let bin = agentnet_bin();
        // Created by the server itself ("created if missing").
        let dir = self.lab.dir().join(format!("rendezvous-{role}"));
        let dir_text = dir.to_str().ok_or("non-UTF-8 temp path")?.to_string();
        let listen = format!("{}:{RENDEZVOUS_PORT}", host.ip);
        let pid = self.lab.spawn(
            &host.ns,
            &format!("rendezvous-{role}"),
            &[
                bin.to_str().ok_or("non-UTF-8 binary path")?,
                "--state-dir",
                &dir_text,
                "rendezvous",
                "--listen",
                &listen,
                "--tcp-listen",
                &listen,
                "--foreground",
            ],
        )?;
        let port = format!(":{RENDEZVOUS_PORT}");
        let listening = wait_until(
            &format!("rendezvous {role} to listen on UDP and TCP {listen}"),
            Duration::from_secs(15),
            || {
                if !self.lab.spawn_running(pid) {
                    return true;
                }
                let udp = self
                    .lab
                    .exec(&host.ns, &["ss", "-Hlun", "sport", "=", &port])
                    .is_ok_and(|o| !o.stdout.trim().is_empty());
                let tcp = self
                    .lab
                    .exec(&host.ns, &["ss", "-Hltn", "sport", "=", &port])
                    .is_ok_and(|o| o.stdout.contains("LISTEN"));
                udp && tcp
            },
        );
        if let Err(e) = listening.and_then(|()| {
            if self.lab.spawn_running(pid) {
                Ok(())
            } else {
                Err("it exited".into())
            }
        }) {
            let (out, err) = self.lab.stop(pid);
            return Err(format!(
                "rendezvous {role} did not start: {e}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
            ));
        }
        let cmd = self.lab.command(
            &host.ns,
            &[
                bin.to_str().ok_or("non-UTF-8 binary path")?,
                "--state-dir",
                &dir_text,
                "id",
                "--json",
            ],
        );
        let out = run(cmd, Duration::from_secs(30))?.check()?;
        let json: Value = serde_json::from_str(&out.stdout)
            .map_err(|e| format!("rendezvous `id --json` is not JSON ({e}): {}", out.stdout))?;
        let id = json["id"]
            .as_str()
            .ok_or_else(|| format!("rendezvous `id --json` has no \"id\": {json}"))?
            .to_string();
        step(&format!("rendezvous {role} at {listen} is {id}"));
        Ok(Rendezvous {
            host,
            id,
            pid: Mutex::new(Some(pid)),
            state: dir,
        })
    }

    /// Kills a rendezvous server with SIGKILL (a crash, not a shutdown) and
    /// returns its output.
    pub fn kill_rendezvous(&self, rv: &Rendezvous) -> (String, String) {
        let Some(pid) = rv.pid.lock().unwrap().take() else {
            return (String::new(), String::new());
        };
        super::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        self.lab.stop(pid)
    }

    /// Starts a stopped rendezvous server again (after
    /// [`NatLab::kill_rendezvous`]) on the same host, port and state
    /// directory, so with the same identity; returns once it listens.
    pub fn restart_rendezvous(&self, rv: &Rendezvous) -> Result<(), String> {
        if rv.pid.lock().unwrap().is_some() {
            return Err("the rendezvous server still runs".into());
        }
        let bin = agentnet_bin();
        let dir_text = rv.state.to_str().ok_or("non-UTF-8 temp path")?;
        let listen = rv.endpoint().to_string();
        let pid = self.lab.spawn(
            &rv.host.ns,
            &format!("rendezvous-{}-again", rv.host.role),
            &[
                bin.to_str().ok_or("non-UTF-8 binary path")?,
                "--state-dir",
                dir_text,
                "rendezvous",
                "--listen",
                &listen,
                "--tcp-listen",
                &listen,
                "--foreground",
            ],
        )?;
        *rv.pid.lock().unwrap() = Some(pid);
        let port = format!(":{RENDEZVOUS_PORT}");
        wait_until(
            &format!("restarted rendezvous to listen on {listen}"),
            Duration::from_secs(15),
            || {
                !self.lab.spawn_running(pid)
                    || self
                        .lab
                        .exec(&rv.host.ns, &["ss", "-Hlun", "sport", "=", &port])
                        .is_ok_and(|o| !o.stdout.trim().is_empty())
            },
        )?;
        if !self.lab.spawn_running(pid) {
            let (out, err) = self.lab.spawn_output(pid);
            return Err(format!(
                "restarted rendezvous exited\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
            ));
        }
        step(&format!("rendezvous at {listen} restarted"));
        Ok(())
    }

    /// The output of a rendezvous server so far.
    pub fn rendezvous_output(&self, rv: &Rendezvous) -> (String, String) {
        match *rv.pid.lock().unwrap() {
            Some(pid) => self.lab.spawn_output(pid),
            None => (String::new(), String::new()),
        }
    }

    /// Delays every IPv4 packet arriving on `iface` in namespace `ns` by
    /// `delay`, before connection tracking sees it: distance on the
    /// internet. (The lab's kernel has no `netem`; an `iptables` rule hands
    /// the packets to a small NFQUEUE program, [`DELAY_LINE`], which lets
    /// each go `delay` after it came.) On a router's `wan` it delays what
    /// reaches its agents; on a rendezvous's `eth0`, the relay.
    pub fn delay_ingress(&self, ns: &str, iface: &str, delay: Duration) -> Result<(), String> {
        let ms = delay.as_millis().to_string();
        let pid = self
            .lab
            .spawn(ns, "delay-line", &["python3", "-c", DELAY_LINE, "0", &ms])?;
        wait_until(
            &format!("the delay line in {ns}"),
            Duration::from_secs(10),
            || !self.lab.spawn_running(pid) || self.lab.spawn_output(pid).0.contains("ready"),
        )?;
        if !self.lab.spawn_running(pid) {
            let (out, err) = self.lab.stop(pid);
            return Err(format!("the delay line exited: {out}{err}"));
        }
        self.lab
            .exec_ok(
                ns,
                &[
                    "iptables",
                    "-t",
                    "raw",
                    "-A",
                    "PREROUTING",
                    "-i",
                    iface,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "0",
                ],
            )
            .map(drop)
    }

    /// The router of `site`'s UDP connection-tracking entries
    /// (`conntrack -L -p udp`; empty when the tool is missing).
    pub fn conntrack(&self, site: &Site) -> String {
        self.lab
            .exec(&site.router_ns, &["conntrack", "-L", "-p", "udp"])
            .map(|o| o.stdout)
            .unwrap_or_default()
    }

    /// Drops every packet between the public addresses `a` and `b` (both
    /// ways) on the internet's bridge: the path between two routers is cut.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) -> Result<(), String> {
        for (s, d) in [(a, b), (b, a)] {
            let rule = format!("ip saddr {s} ip daddr {d} drop");
            self.lab.exec_ok(
                &self.inet_ns,
                &["nft", "add", "rule", "bridge", "natcut", "forward", &rule],
            )?;
        }
        Ok(())
    }

    /// The router of `site` stops forwarding UDP.
    pub fn block_udp(&self, site: &Site) -> Result<(), String> {
        let rule = [
            "nft", "add", "rule", "ip", "natlab", "udpblock", "meta", "l4proto", "udp", "drop",
        ];
        self.lab.exec_ok(&site.router_ns, &rule).map(drop)
    }

    /// The router of `site` forwards UDP again.
    pub fn unblock_udp(&self, site: &Site) -> Result<(), String> {
        let flush = ["nft", "flush", "chain", "ip", "natlab", "udpblock"];
        self.lab.exec_ok(&site.router_ns, &flush).map(drop)
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        self.lab.exec_ok(
            &self.inet_ns,
            &["nft", "flush", "chain", "bridge", "natcut", "forward"],
        )?;
        Ok(())
    }

    /// Waits until `host` reaches `target` with a ping (the underlay works).
    pub fn wait_reachable(&self, host: &Host, target: Ipv4Addr) -> Result<(), String> {
        let target_text = target.to_string();
        wait_until(
            &format!("underlay {} ({}) -> {target}", host.role, host.ip),
            Duration::from_secs(10),
            || {
                self.lab
                    .exec(
                        &host.ns,
                        &["ping", "-n", "-c", "1", "-W", "1", &target_text],
                    )
                    .is_ok_and(|o| o.ok())
            },
        )
    }

    /// Starts a reflector on public host `host`: it answers every UDP
    /// datagram on [`REFLECTOR_PORT`] with the source `ip:port` it saw, and
    /// accepts TCP on the same port (and answers likewise). Returns its
    /// endpoint once it listens.
    pub fn reflector(&self, host: &Host) -> Result<SocketAddr, String> {
        const REFLECTOR: &str = r#"
import socket, sys, threading
port = int(sys.argv[1])
def tcp():
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port)); t.listen(16)
    while True:
        c, src = t.accept()
        c.sendall(("%s:%d" % src).encode()); c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
while True:
    data, src = u.recvfrom(2048)
    u.sendto(("%s:%d" % src).encode(), src)
"#;
        let port = REFLECTOR_PORT.to_string();
        self.lab.spawn(
            &host.ns,
            &format!("reflector-{}", host.role),
            &["python3", "-c", REFLECTOR, &port],
        )?;
        let filter = format!(":{REFLECTOR_PORT}");
        wait_until(
            &format!("the reflector on {}", host.role),
            Duration::from_secs(10),
            || {
                let udp = self
                    .lab
                    .exec(&host.ns, &["ss", "-Hlun", "sport", "=", &filter])
                    .is_ok_and(|o| !o.stdout.trim().is_empty());
                let tcp = self
                    .lab
                    .exec(&host.ns, &["ss", "-Hltn", "sport", "=", &filter])
                    .is_ok_and(|o| o.stdout.contains("LISTEN"));
                udp && tcp
            },
        )?;
        Ok(SocketAddr::V4(SocketAddrV4::new(host.ip, REFLECTOR_PORT)))
    }

    /// From `host`, one UDP socket bound to `local_port` asks each reflector
    /// which source endpoint it sees. `None` where no answer came (4 tries
    /// of 0.5 s).
    pub fn udp_mappings(
        &self,
        host: &Host,
        local_port: u16,
        reflectors: &[SocketAddr],
    ) -> Result<Vec<Option<SocketAddr>>, String> {
        const PROBE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.5)
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    seen = "-"
    for _ in range(4):
        s.sendto(b"probe", (host, int(port)))
        try:
            while True:
                data, src = s.recvfrom(2048)
                if src == (host, int(port)):
                    seen = data.decode()
                    break
            break
        except socket.timeout:
            pass
    print(seen)
"#;
        let port = local_port.to_string();
        let targets: Vec<String> = reflectors.iter().map(ToString::to_string).collect();
        let mut args = vec!["python3", "-c", PROBE, &port];
        args.extend(targets.iter().map(String::as_str));
        let out = self.lab.exec_ok(&host.ns, &args)?;
        Ok(out
            .stdout
            .lines()
            .map(|l| l.trim().parse::<SocketAddr>().ok())
            .collect())
    }

    /// From `host`, the source endpoint a TCP reflector sees (`None` when
    /// the connection fails within 3 s).
    pub fn tcp_mapping(
        &self,
        host: &Host,
        reflector: SocketAddr,
    ) -> Result<Option<SocketAddr>, String> {
        const PROBE: &str = r#"
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    c = socket.create_connection((host, int(port)), timeout=3)
    print(c.recv(100).decode())
except OSError:
    print("-")
"#;
        let target = reflector.to_string();
        let out = self
            .lab
            .exec_ok(&host.ns, &["python3", "-c", PROBE, &target])?;
        Ok(out.stdout.trim().parse().ok())
    }

    fn plug(
        &self,
        switch_ns: &str,
        bridge: &str,
        port: &str,
        ns: &str,
        iface: &str,
    ) -> Result<(), String> {
        // Created inside the switch namespace, straight into the host's: no
        // interface ever appears in the test machine's own namespace.
        ip(&[
            "-n", switch_ns, "link", "add", port, "type", "veth", "peer", "name", iface, "netns",
            ns,
        ])?;
        ip(&["-n", switch_ns, "link", "set", port, "master", bridge, "up"])?;
        Ok(())
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) -> Result<(), String> {
        self.lab
            .exec_ok(ns, &["sysctl", "-qw", &format!("{key}={value}")])
            .map(drop)
    }

    fn nft(&self, ns: &str, ruleset: &str) -> Result<(), String> {
        let file = self.lab.dir().join(format!("nft-{}.conf", next_serial()));
        std::fs::write(&file, ruleset).map_err(|e| format!("{}: {e}", file.display()))?;
        let path = file.to_str().ok_or("non-UTF-8 lab path")?;
        self.lab
            .exec_ok(ns, &["nft", "-f", path])
            .map(drop)
            .map_err(|e| format!("{e}\nruleset:\n{ruleset}"))
    }
}

// ----------------------------------------------------------------- agents ----

/// `init`, then `up --rendezvous HOST:PORT=ID ... --register-interval N`
/// (detached); returns the identity.
pub fn start_agent(agent: &Agent, rendezvous: &[&Rendezvous]) -> Result<Identity, String> {
    agent.init()?;
    up_with_rendezvous(agent, rendezvous)?;
    agent.id()
}

/// `up` with the lab's rendezvous servers.
pub fn up_with_rendezvous(agent: &Agent, rendezvous: &[&Rendezvous]) -> Result<(), String> {
    up_with_rendezvous_and(agent, rendezvous, &[])
}

/// `up` with the lab's rendezvous servers and `extra` options.
pub fn up_with_rendezvous_and(
    agent: &Agent,
    rendezvous: &[&Rendezvous],
    extra: &[&str],
) -> Result<(), String> {
    let port = agent.port.to_string();
    let interval = REGISTER_INTERVAL_S.to_string();
    let flags: Vec<String> = rendezvous.iter().map(|r| r.flag()).collect();
    let mut args = vec![
        "up",
        "--interface",
        &agent.iface,
        "--port",
        &port,
        "--register-interval",
        &interval,
    ];
    for flag in &flags {
        args.extend(["--rendezvous", flag.as_str()]);
    }
    args.extend_from_slice(extra);
    agent.cli_ok(&args).map(drop)
}

/// The entries of `status["rendezvous"]`.
pub fn rendezvous_entries(status: &Value) -> Vec<Value> {
    status["rendezvous"].as_array().cloned().unwrap_or_default()
}

/// The `status["rendezvous"]` entry of the server `rv`.
pub fn rendezvous_entry(status: &Value, rv: &Rendezvous) -> Option<Value> {
    rendezvous_entries(status)
        .into_iter()
        .find(|r| r["id"].as_str() == Some(rv.id.as_str()))
}

/// Waits until `agent` reports `registered: true` with `count` rendezvous
/// servers; returns the status.
pub fn wait_registered(agent: &Agent, count: usize) -> Result<Value, String> {
    wait_for(
        &format!("{} registered with {count} rendezvous", agent.name),
        REGISTER_TIMEOUT,
        || {
            let status = agent.status().ok()?;
            let registered = rendezvous_entries(&status)
                .iter()
                .filter(|r| r["registered"] == true)
                .count();
            (registered >= count).then_some(status)
        },
    )
    .map_err(|e| {
        let last = agent
            .status()
            .map(|s| s["rendezvous"].to_string())
            .unwrap_or_else(|e| e);
        format!(
            "{e}; rendezvous in status: {last}\n{}",
            agent.log_excerpt(40)
        )
    })
}

/// What `status --json` says about one peer.
#[derive(Debug, Clone, Default)]
pub struct PeerPath {
    /// `path`: "direct", "relay" or "none".
    pub path: String,
    /// `endpoint`, when known.
    pub endpoint: Option<SocketAddr>,
    /// `relay`, when relayed.
    pub relay: Option<SocketAddr>,
    /// `rtt_ms`, when measured.
    pub rtt_ms: Option<f64>,
    /// `session_established`.
    pub established: bool,
    /// `handshakes`.
    pub handshakes: u64,
    /// The whole entry.
    pub json: Value,
}

/// The path `agent` reports for `peer` (`None` when the peer is not listed
/// or the status cannot be read).
pub fn peer_path(agent: &Agent, peer: &Identity) -> Option<PeerPath> {
    let status = agent.status().ok()?;
    let entry = peer_in_status(&status, &peer.id)?.clone();
    let addr = |v: &Value| v.as_str().and_then(|s| s.parse().ok());
    Some(PeerPath {
        path: entry["path"].as_str().unwrap_or("").to_string(),
        endpoint: addr(&entry["endpoint"]),
        relay: addr(&entry["relay"]),
        rtt_ms: entry["rtt_ms"].as_f64(),
        established: entry["session_established"] == true,
        handshakes: entry["handshakes"].as_u64().unwrap_or(0),
        json: entry,
    })
}

/// Waits until `agent` reports `path` for `peer`; returns the entry.
pub fn wait_path(
    agent: &Agent,
    peer: &Identity,
    path: &str,
    timeout: Duration,
) -> Result<PeerPath, String> {
    wait_for(
        &format!("{} to report path \"{path}\" to its peer", agent.name),
        timeout,
        || peer_path(agent, peer).filter(|p| p.path == path),
    )
    .map_err(|e| {
        let now = peer_path(agent, peer)
            .map(|p| p.json.to_string())
            .unwrap_or_else(|| "-".into());
        format!("{e}; peer entry now: {now}")
    })
}

/// Both agents trust each other by ID only (no endpoint: they find each
/// other through the rendezvous).
pub fn trust_each_other(
    a: &Agent,
    id_a: &Identity,
    b: &Agent,
    id_b: &Identity,
) -> Result<(), String> {
    a.trust_add(id_b, &b.name, None)?;
    b.trust_add(id_a, &a.name, None)
}

/// One ping over the overlay from `agent` to `to` (1 s deadline).
pub fn overlay_ping(lab: &Lab, agent: &Agent, to: &Identity) -> bool {
    let target = to.address.to_string();
    lab.exec(
        &agent.host.ns,
        &["ping", "-6", "-n", "-c", "1", "-W", "1", &target],
    )
    .is_ok_and(|o| o.ok())
}

/// Pings `to` from `agent` until one answers; returns how long it took.
pub fn time_to_first_packet(
    lab: &Lab,
    agent: &Agent,
    to: &Identity,
    timeout: Duration,
) -> Result<Duration, String> {
    let start = Instant::now();
    wait_until(
        &format!("a first ping reply {} -> {}", agent.name, to.address),
        timeout,
        || overlay_ping(lab, agent, to),
    )
    .map(|()| start.elapsed())
}

/// A background `ping -i INTERVAL` over the overlay: keeps traffic on a
/// path and counts the answers.
pub struct Pinger<'l> {
    lab: &'l Lab,
    pid: Option<u32>,
}

impl<'l> Pinger<'l> {
    /// Starts pinging `to` from `agent` every `interval_s` seconds.
    pub fn start(
        lab: &'l Lab,
        agent: &Agent,
        to: &Identity,
        interval_s: &str,
    ) -> Result<Self, String> {
        let target = to.address.to_string();
        let pid = lab.spawn(
            &agent.host.ns,
            &format!("ping-{}", agent.host.role),
            &[
                "ping", "-6", "-n", "-O", "-i", interval_s, "-W", "1", &target,
            ],
        )?;
        Ok(Self {
            lab,
            pid: Some(pid),
        })
    }

    /// `(answered, unanswered)` so far.
    pub fn counts(&self) -> (usize, usize) {
        let Some(pid) = self.pid else {
            return (0, 0);
        };
        let (out, _) = self.lab.spawn_output(pid);
        count_replies(&out)
    }

    /// The longest run of unanswered pings so far.
    pub fn longest_gap(&self) -> usize {
        let Some(pid) = self.pid else {
            return 0;
        };
        let (out, _) = self.lab.spawn_output(pid);
        longest_gap(&out)
    }

    /// Stops it; returns `(answered, unanswered, longest run unanswered)`.
    pub fn stop(mut self) -> (usize, usize, usize) {
        let Some(pid) = self.pid.take() else {
            return (0, 0, 0);
        };
        let (out, _) = self.lab.stop(pid);
        let (ok, lost) = count_replies(&out);
        (ok, lost, longest_gap(&out))
    }
}

impl Drop for Pinger<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.lab.stop(pid);
        }
    }
}

fn count_replies(out: &str) -> (usize, usize) {
    let ok = out.lines().filter(|l| l.contains("bytes from")).count();
    let lost = out
        .lines()
        .filter(|l| l.starts_with("no answer yet"))
        .count();
    (ok, lost)
}

fn longest_gap(out: &str) -> usize {
    let (mut run, mut longest) = (0, 0);
    for line in out.lines() {
        if line.starts_with("no answer yet") {
            run += 1;
            longest = longest.max(run);
        } else if line.contains("bytes from") {
            run = 0;
        }
    }
    longest
}

/// The port-mapping routers' WAN network, `192.0.3.0/24`.
fn mapping_wan_net() -> String {
    format!(
        "{}.{}.{}.0/24",
        MAPPING_WAN[0], MAPPING_WAN[1], MAPPING_WAN[2]
    )
}

/// Runs `ip ARGS` in the test's own namespace (only `-n NS` forms are used:
/// they act inside the lab's namespaces) and requires success.
fn ip(args: &[&str]) -> Result<Output, String> {
    let mut cmd = std::process::Command::new("ip");
    cmd.args(args);
    run(cmd, super::lab::COMMAND_TIMEOUT)?.check()
}
