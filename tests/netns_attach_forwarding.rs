//! What `attach` lets the host forward (issue 17 item 3). Attaching turns
//! on IPv6 forwarding, which on Linux is one switch for every interface;
//! agentnet's nftables table (`table inet agentnet`) confines it: an
//! attached namespace may send only with its own address and only into the
//! TUN, and nothing else forwards into or out of the overlay.
//!
//! Over IPv4 an attached namespace gets an address of its own
//! (`198.19.0.0/24`) that the host masquerades as the agent's IPv4 address
//! on the way into the TUN; only attachments' veths are masqueraded.
//!
//! They need root (namespaces, TUN, nft). Without it they say why and pass
//! as skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI).

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use support::agent::Agent;
use support::capture::TunCapture;
use support::natlab::overlay_ping;
use support::{Lab, say, step, wait_until};

/// Programs these tests run.
const TOOLS: &[&str] = &["ping", "tcpdump", "nft"];
/// Programs the IPv4 test runs.
const TOOLS4: &[&str] = &["ping", "nft", "curl", "python3", "ss"];

fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

/// `address` with its last 16 bits replaced by `last`.
fn with_suffix(address: Ipv6Addr, last: u16) -> Ipv6Addr {
    let mut segments = address.segments();
    segments[7] = last;
    Ipv6Addr::from(segments)
}

/// The network's resolver address `PREFIX::53` (the /48 of `address`).
fn resolver_of(address: Ipv6Addr) -> Ipv6Addr {
    let s = address.segments();
    Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0x53)
}

/// The overlay network's /48 route (`fdXX:XXXX:XXXX::/48`) of `address`.
fn network_of(address: Ipv6Addr) -> String {
    let s = address.segments();
    format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
}

fn ping_from(lab: &Lab, ns: &str, source: Option<Ipv6Addr>, to: Ipv6Addr) -> bool {
    let to = to.to_string();
    let source = source.map(|s| s.to_string());
    let mut args = vec!["ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "1"];
    if let Some(source) = &source {
        args.extend(["-I", source.as_str()]);
    }
    args.push(&to);
    lab.exec(ns, &args).is_ok_and(|o| o.ok())
}

/// An attached namespace that sends with the host's own agent address is
/// dropped at its veth (b never sees the packets), while its own address
/// still reaches b; a LAN neighbour that routes the overlay's /48 through
/// the host reaches neither b nor the name responder at PREFIX::53.
#[test]
fn attached_namespace_cannot_spoof_and_lan_neighbour_cannot_route_into_the_overlay() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([93, 3], &["a", "b", "lan"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    let lan = hosts[2].clone();
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    must(a.up());
    must(b.up());
    must(a.trust_each_other_direct(&id_a, &b, &id_b));
    must(wait_until("a ping A -> B", Duration::from_secs(15), || {
        overlay_ping(&lab, &a, &id_b)
    }));

    step("attach a namespace to a");
    let ctr = must(lab.add_namespace("ctr"));
    must(a.cli_ok(&["attach", "--netns", &ctr, "--address", "::2"]));
    let own = with_suffix(id_a.address, 2);
    let table = must(lab.exec_ok(&a.host.ns, &["nft", "list", "table", "inet", "agentnet"]));
    say(&format!("forwarding | a's filter:\n{}", table.stdout));
    assert!(
        ping_from(&lab, &ctr, None, id_b.address),
        "the attachment reaches b with its own address"
    );

    step("the attachment spoofs a's agent address");
    must(lab.exec_ok(
        &ctr,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{}/128", id_a.address),
            "dev",
            "agentnet0",
            "nodad",
        ],
    ));
    let capture = must(TunCapture::start(&lab, &b.host.ns, &b.iface, "icmp6"));
    let _ = ping_from(&lab, &ctr, Some(id_a.address), id_b.address);
    assert!(
        ping_from(&lab, &ctr, Some(own), id_b.address),
        "its own address still works"
    );
    std::thread::sleep(Duration::from_millis(300));
    let seen = must(capture.finish()).packets;
    let from = |source: Ipv6Addr| -> Vec<String> {
        seen.iter()
            .filter(|p| p.src == source && p.dst == id_b.address)
            .map(|p| p.summary())
            .collect()
    };
    let (spoofed, genuine) = (from(id_a.address), from(own));
    say(&format!(
        "forwarding | b saw {} ICMPv6 packets: {} from a's agent address, {} from the \
         attachment's own",
        seen.len(),
        spoofed.len(),
        genuine.len()
    ));
    assert!(!genuine.is_empty(), "the capture at b works");
    assert!(
        spoofed.is_empty(),
        "packets the attachment sent as a's agent address reached b:\n{}",
        spoofed.join("\n")
    );

    step("a LAN neighbour routes the overlay through a");
    must(lab.exec_ok(
        &a.host.ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd99:93:3::1/64",
            "dev",
            "eth0",
            "nodad",
        ],
    ));
    must(lab.exec_ok(
        &lan.ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd99:93:3::3/64",
            "dev",
            "eth0",
            "nodad",
        ],
    ));
    must(lab.exec_ok(
        &lan.ns,
        &[
            "ip",
            "-6",
            "route",
            "add",
            &network_of(id_a.address),
            "via",
            "fd99:93:3::1",
            "dev",
            "eth0",
        ],
    ));
    assert!(
        ping_from(&lab, &lan.ns, None, "fd99:93:3::1".parse().expect("addr")),
        "the LAN neighbour reaches a on the LAN"
    );
    let responder = resolver_of(id_a.address);
    assert!(
        ping_from(&lab, &a.host.ns, None, responder),
        "a itself gets an echo from its responder {responder}"
    );
    assert!(
        !ping_from(&lab, &lan.ns, None, responder),
        "the LAN neighbour got an answer from a's responder {responder}"
    );
    assert!(
        !ping_from(&lab, &lan.ns, None, id_b.address),
        "the LAN neighbour reached b through a"
    );
    assert!(
        !ping_from(&lab, &lan.ns, None, own),
        "the LAN neighbour reached the attachment through a"
    );

    step("detach refuses a record rewritten to name a's eth0");
    detach_refuses_tampered_records(&lab, &a, &ctr);

    step("the last detach leaves a filter that forwards nothing into the TUN");
    let veth = attached_veth(&table.stdout);
    must(a.cli_ok(&["detach", "--netns", &ctr]));
    let listed = must(lab.exec_ok(&a.host.ns, &["nft", "list", "table", "inet", "agentnet"]));
    assert!(
        !listed.stdout.contains(&veth) && listed.stdout.contains("drop"),
        "after the last detach the table names no veth and still drops into the TUN:\n{}",
        listed.stdout
    );
    must(a.down());
    must(b.down());
}

/// `detach` run as root refuses `attachments.json` rewritten (as the
/// daemon's user could) to name the lab's `eth0` as the attachment's veth,
/// then as the TUN: it fails naming the file, and eth0 and the attachment's
/// veth both stay. The genuine record is put back afterwards.
fn detach_refuses_tampered_records(lab: &Lab, agent: &Agent, ns: &str) {
    let file = agent.state_dir().join("attachments.json");
    let genuine = std::fs::read_to_string(&file).expect("attachments.json");
    let record: serde_json::Value = serde_json::from_str(&genuine).expect("json");
    let veth = record["attached"][0]["host_interface"]
        .as_str()
        .expect("host_interface")
        .to_string();
    let exists = |name: &str| {
        lab.exec(&agent.host.ns, &["ip", "link", "show", "dev", name])
            .is_ok_and(|o| o.ok())
    };
    for field in ["host_interface", "tun_interface"] {
        let mut tampered = record.clone();
        match field {
            "host_interface" => tampered["attached"][0][field] = "eth0".into(),
            _ => tampered[field] = "eth0".into(),
        }
        let text = serde_json::to_vec_pretty(&tampered).expect("json");
        std::fs::write(&file, text).expect("tamper");
        let out = must(agent.cli(&["detach", "--netns", ns]));
        say(&format!("tamper {field} | {}", out.stderr.trim_end()));
        assert!(
            !out.ok() && out.stderr.contains("attachments.json") && out.stderr.contains("eth0"),
            "detach with {field} = eth0 was not refused naming the file:\n{}",
            out.describe()
        );
        assert!(exists("eth0"), "detach removed eth0 ({field} tampered)");
        assert!(exists(&veth), "detach removed {veth} ({field} tampered)");
    }
    std::fs::write(&file, genuine).expect("restore the record");
}

/// The host side of the (one) attachment veth a filter names.
fn attached_veth(table: &str) -> String {
    table
        .split('"')
        .find(|word| word.starts_with("an") && word.contains('-'))
        .unwrap_or_else(|| panic!("no attachment veth in:\n{table}"))
        .to_string()
}

/// The IPv4 address `id --json` shows.
fn address4(id: &support::agent::Identity) -> Ipv4Addr {
    id.json["address4"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("`id --json` has no \"address4\": {}", id.json))
}

/// `curl -4` from `ns` to `url`: the body, or why not.
fn curl4(lab: &Lab, ns: &str, url: &str) -> Result<String, String> {
    lab.exec(ns, &["curl", "-4", "-sS", "--fail", "--max-time", "5", url])?
        .check()
        .map(|o| o.stdout)
}

/// `python3 -m http.server 8080` on its default bind (`0.0.0.0`) in
/// `agent`'s namespace, serving `page` as `/hello.txt` from the lab
/// directory `dir`; its PID once it listens.
fn serve_page_on_defaults(lab: &Lab, agent: &Agent, dir: &str, page: &str) -> u32 {
    let www = lab.dir().join(dir);
    std::fs::create_dir_all(&www).expect("www");
    std::fs::write(www.join("hello.txt"), page).expect("page");
    let server = must(lab.spawn(
        &agent.host.ns,
        dir,
        &[
            "python3",
            "-u",
            "-m",
            "http.server",
            "8080",
            "--directory",
            www.to_str().expect("UTF-8"),
        ],
    ));
    must(wait_until(
        "http.server listens",
        Duration::from_secs(20),
        || {
            lab.exec(&agent.host.ns, &["ss", "-Hltn", "sport", "=", ":8080"])
                .is_ok_and(|o| o.stdout.contains("0.0.0.0:8080"))
        },
    ));
    server
}

/// A process in an attached namespace fetches from a peer's server on its
/// default `0.0.0.0` with `curl -4` at the peer's IPv4 address; the peer
/// sees the agent's IPv4 address as the client. A namespace on a veth of
/// its own (not an attachment) that routes the overlay through the host is
/// neither forwarded nor masqueraded, and detach removes the masquerade.
#[test]
fn attached_namespace_reaches_a_peer_over_ipv4_as_the_agents_address() {
    let Some(()) = support::netns_ready!(TOOLS4) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([93, 4], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    let (a4, b4) = (address4(&id_a), address4(&id_b));
    must(a.up());
    must(b.up());
    must(a.trust_each_other_direct(&id_a, &b, &id_b));
    must(wait_until("a ping A -> B", Duration::from_secs(15), || {
        overlay_ping(&lab, &a, &id_b)
    }));

    step("b serves a page with python's http.server on its default (0.0.0.0)");
    let page = "hello over IPv4\n";
    let server = serve_page_on_defaults(&lab, &b, "www4", page);

    step("attach a namespace to a");
    let ctr = must(lab.add_namespace("ctr4"));
    let attached = must(a.cli_ok(&["attach", "--netns", &ctr]));
    say(&format!("attach4 | {}", attached.stdout.trim_end()));
    assert!(
        attached.stdout.contains("198.19.0.2"),
        "attach shows the IPv4 address:\n{}",
        attached.stdout
    );
    let table = must(lab.exec_ok(&a.host.ns, &["nft", "list", "table", "inet", "agentnet"]));
    say(&format!("attach4 | a's table:\n{}", table.stdout));
    assert!(
        table.stdout.contains("masquerade"),
        "a masquerade rule while attached:\n{}",
        table.stdout
    );

    step("the attached namespace fetches from b with curl -4");
    let url = format!("http://{b4}:8080/hello.txt");
    let got = must(curl4(&lab, &ctr, &url));
    assert_eq!(got, page, "the page, byte for byte");
    let (log, errors) = lab.spawn_output(server);
    let requests: Vec<&str> = log
        .lines()
        .chain(errors.lines())
        .filter(|l| l.contains("GET /hello.txt"))
        .collect();
    say(&format!("attach4 | b's server logged: {requests:?}"));
    assert!(
        requests.len() == 1 && requests[0].starts_with(&format!("{a4} ")),
        "b sees the agent's IPv4 address {a4} as the client: {requests:?}"
    );

    step("a namespace on a veth of its own routes 100.64.0.0/10 through a");
    let rogue = must(lab.add_namespace("rogue"));
    let host_side = lab.iface_name("rg");
    must(lab.exec_ok(
        &a.host.ns,
        &[
            "ip", "link", "add", &host_side, "type", "veth", "peer", "name", "eth1", "netns",
            &rogue,
        ],
    ));
    for (ns, args) in [
        (&a.host.ns, vec!["ip", "link", "set", &host_side, "up"]),
        (
            &a.host.ns,
            vec![
                "ip",
                "-4",
                "route",
                "add",
                "198.19.0.200/32",
                "dev",
                &host_side,
            ],
        ),
        (
            &rogue,
            vec!["ip", "-4", "addr", "add", "198.19.0.200/32", "dev", "eth1"],
        ),
        (&rogue, vec!["ip", "link", "set", "eth1", "up"]),
        (
            &rogue,
            vec![
                "ip",
                "-4",
                "route",
                "add",
                "100.64.0.0/10",
                "via",
                "198.19.0.1",
                "dev",
                "eth1",
                "onlink",
            ],
        ),
    ] {
        must(lab.exec_ok(ns, &args));
    }
    assert!(
        curl4(&lab, &rogue, &url).is_err(),
        "a namespace that is not attached reached b over IPv4 through a"
    );
    let (log, errors) = lab.spawn_output(server);
    let count = log
        .lines()
        .chain(errors.lines())
        .filter(|l| l.contains("GET /hello.txt"))
        .count();
    assert_eq!(count, 1, "b served nobody but the attachment");
    assert!(
        must(curl4(&lab, &ctr, &url)) == page,
        "the attachment still reaches b"
    );

    step("detach removes the masquerade");
    must(a.cli_ok(&["detach", "--netns", &ctr]));
    let listed = must(lab.exec(&a.host.ns, &["nft", "list", "ruleset"]));
    assert!(
        !listed.stdout.contains("masquerade"),
        "a masquerade rule is left after detach:\n{}",
        listed.stdout
    );
    lab.stop(server);
    must(a.down());
    must(b.down());
}

/// A host that forwards IPv4 and masquerades its own containers out of
/// every other interface (Docker's default bridge does:
/// `-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`, and `ip_forward=1`)
/// before agentnet starts: its containers must not reach peers as the
/// agent. The daemon installs the forwarding filter at `up`, so the TUN
/// takes nothing forwarded from an interface that is not an attachment,
/// while the agent's own IPv4 traffic flows.
#[test]
fn a_hosts_own_masqueraded_containers_do_not_reach_peers_over_ipv4() {
    let Some(()) = support::netns_ready!(TOOLS4) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([93, 5], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    let b4 = address4(&id_b);

    step("a's host runs a docker-like bridge: forwarding on, masquerade out of everything else");
    let dock = must(lab.add_namespace("dock"));
    let bridge = lab.iface_name("dk");
    must(lab.exec_ok(
        &a.host.ns,
        &[
            "ip", "link", "add", &bridge, "type", "veth", "peer", "name", "eth1", "netns", &dock,
        ],
    ));
    let masquerade = format!(
        "table ip dockerlike {{ chain postrouting {{ type nat hook postrouting priority srcnat; \
         ip saddr 172.31.99.0/24 oifname != \"{bridge}\" masquerade; }}; }}"
    );
    for (ns, args) in [
        (&a.host.ns, vec!["sysctl", "-qw", "net.ipv4.ip_forward=1"]),
        (
            &a.host.ns,
            vec!["ip", "addr", "add", "172.31.99.1/24", "dev", &bridge],
        ),
        (&a.host.ns, vec!["ip", "link", "set", &bridge, "up"]),
        (&a.host.ns, vec!["nft", &masquerade]),
        (
            &dock,
            vec!["ip", "addr", "add", "172.31.99.2/24", "dev", "eth1"],
        ),
        (&dock, vec!["ip", "link", "set", "eth1", "up"]),
        (
            &dock,
            vec!["ip", "route", "add", "default", "via", "172.31.99.1"],
        ),
    ] {
        must(lab.exec_ok(ns, &args));
    }

    step("then agentnet comes up on a and b");
    must(a.up());
    must(b.up());
    must(a.trust_each_other_direct(&id_a, &b, &id_b));
    must(wait_until("a ping A -> B", Duration::from_secs(15), || {
        overlay_ping(&lab, &a, &id_b)
    }));
    let server = serve_page_on_defaults(&lab, &b, "www-dock", "hello\n");
    let url = format!("http://{b4}:8080/hello.txt");
    assert_eq!(
        must(curl4(&lab, &a.host.ns, &url)),
        "hello\n",
        "the agent itself reaches b over IPv4"
    );
    assert!(
        curl4(&lab, &dock, &url).is_err(),
        "a container the host masquerades reached b over IPv4 as the agent"
    );
    lab.stop(server);
    must(a.down());
    must(b.down());
}
