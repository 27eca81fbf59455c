//! End-to-end tests on real hosts: network namespaces on one bridge, each
//! running the real `agentnet` binary with its own state directory.
//!
//! They need root (namespaces, TUN). Without it they say why and pass as
//! skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI), which turns the skip into
//! a failure. All traffic stays inside the lab's namespaces.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::agent::{AGENT_PORT, Identity, agentnet_bin, dropped_total, peer_in_status};
use support::watch::{CONTROL_PINGS, ReplyWatch, send_udp};
use support::{Agent, Lab, pcap, step, wait_for, wait_until};

/// Programs the three-host scenario runs inside the namespaces.
const SCENARIO_TOOLS: &[&str] = &["ping", "tcpdump", "curl", "python3", "ss"];

/// How long the first overlay ping may take (handshake included).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the capture on C keeps running after the last datagram C sent
/// to B. This is an observation window for the *absence* of a reply, not a
/// stand-in for a condition: B would answer within milliseconds.
const SILENCE_WINDOW: Duration = Duration::from_secs(3);

/// Size of the file fetched over HTTP through the overlay.
const HTTP_BLOB_LEN: usize = 1 << 20;

/// Port of the HTTP server on B's agent address.
const HTTP_PORT: u16 = 8080;

/// Underlay subnet of the scenario: `10.77.0.0/24`.
const UNDERLAY: [u8; 2] = [77, 0];

const MSG_HANDSHAKE_INITIATION: u8 = 1;

/// A, B and C on one L2 segment. A and B trust each other: A pings B and
/// fetches a file from an HTTP server bound to B's agent address. C trusts B
/// (so C's daemon sends B handshake initiations) but B does not trust C; C
/// also throws junk, truncated and replayed datagrams at B's port. A capture
/// on C must hold no packet from B. Afterwards `agentnet down` leaves no
/// interface and no daemon behind.
#[test]
fn trusted_pair_talks_while_untrusted_host_gets_no_reply() {
    let Some(()) = support::netns_ready!(SCENARIO_TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    step(&format!("lab {}: bridge with hosts a, b, c", lab.prefix()));
    let hosts = lab
        .bridge_segment(UNDERLAY, &["a", "b", "c"])
        .expect("three hosts on one bridge");
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::new(&lab, h, &format!("host-{}", h.role)).expect("agent"))
        .collect();
    let [a, b, c] = &agents[..] else {
        unreachable!()
    };

    let mut ids = Vec::new();
    for agent in &agents {
        // The bystander runs IPv6 only (`--no-ipv4`).
        let ipv4 = !std::ptr::eq(agent, c);
        step(&format!(
            "{}: init, up{}",
            agent.name,
            if ipv4 { "" } else { " --no-ipv4" }
        ));
        ids.push(start_agent(&lab, agent, ipv4).unwrap_or_else(|e| panic!("{e}")));
    }
    let [id_a, id_b, id_c] = &ids[..] else {
        unreachable!()
    };

    // A knows where B is; B learns A's endpoint from A's handshake.
    step("trust: a <-> b (a has b's endpoint); b does not trust c");
    a.trust_add(id_b, "b", Some(b.endpoint()))
        .expect("a trusts b");
    b.trust_add(id_a, "a", None).expect("b trusts a");

    let mut failures = Vec::new();
    let mut check = |phase: &str, result: Result<(), String>| match result {
        Ok(()) => step(&format!("{phase}: ok")),
        Err(e) => {
            step(&format!("{phase}: FAILED"));
            failures.push(format!("== {phase} ==\n{e}"));
        }
    };

    let ping = ping_over_overlay(&lab, a, b, id_a, id_b);
    let ping_ok = ping.is_ok();
    check("ping a -> b over the overlay", ping);
    if ping_ok {
        check(
            "http a -> b over the overlay",
            http_over_overlay(&lab, a, b, id_b),
        );
    } else {
        check(
            "http a -> b over the overlay",
            Err("not run: the overlay ping failed".into()),
        );
    }
    check(
        "untrusted c gets no reply from b",
        untrusted_host_gets_no_reply(&lab, a, b, c, id_b, id_c),
    );
    check("down leaves nothing behind", down_everywhere(&lab, &agents));

    // Each agent prints its daemon log as the panic unwinds.
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `init` + `up` (with `--no-ipv4` unless `ipv4`), then checks that the
/// interface is ready as soon as `up` returns, with the IPv4 address at /10
/// or none, and that `id`/`status` agree with it.
fn start_agent(lab: &Lab, agent: &Agent, ipv4: bool) -> Result<Identity, String> {
    agent.init()?;
    if ipv4 {
        agent.up()?;
    } else {
        agent.up_with(&["--no-ipv4"])?;
    }
    let ns = &agent.host.ns;
    if !lab.link_exists(ns, &agent.iface) {
        return Err(format!(
            "{}: `up` returned but interface {} does not exist",
            agent.name, agent.iface
        ));
    }
    let id = agent.id()?;
    if id.address.segments()[0] & 0xff00 != 0xfd00 {
        return Err(format!(
            "{}: address {} is not a ULA (fd00::/8)",
            agent.name, id.address
        ));
    }
    let want = format!("{}/48", id.address);
    let have = lab.ipv6_addrs(ns, &agent.iface);
    if !have.contains(&want) {
        return Err(format!(
            "{}: {} carries {have:?}, expected {want}",
            agent.name, agent.iface
        ));
    }
    let have4 = lab
        .exec(ns, &["ip", "-4", "-o", "addr", "show", "dev", &agent.iface])?
        .stdout;
    let address4 = id.json["address4"].as_str().unwrap_or_default().to_string();
    let want4 = format!("inet {address4}/10 ");
    if ipv4 != have4.contains(&want4) || (!ipv4 && have4.contains("inet ")) {
        return Err(format!(
            "{}: {} carries IPv4 {have4:?}; expected {}",
            agent.name,
            agent.iface,
            if ipv4 {
                want4.as_str()
            } else {
                "none (--no-ipv4)"
            }
        ));
    }
    let status = agent.status()?;
    let status4 = if ipv4 {
        Value::from(address4)
    } else {
        Value::Null
    };
    if status["address4"] != status4 {
        return Err(format!(
            "{}: status.address4 = {}, expected {status4}",
            agent.name, status["address4"]
        ));
    }
    let field = |k: &str| status[k].clone();
    let expect = [
        ("id", Value::from(id.id.clone())),
        ("address", Value::from(id.address.to_string())),
        ("interface", Value::from(agent.iface.clone())),
        ("port", Value::from(agent.port)),
    ];
    for (k, v) in expect {
        if field(k) != v {
            return Err(format!(
                "{}: status.{k} = {}, expected {v}",
                agent.name,
                field(k)
            ));
        }
    }
    Ok(id)
}

/// A pings B's agent address; both sides then show an established, direct
/// session, and B has learned A's endpoint from the handshake.
fn ping_over_overlay(
    lab: &Lab,
    a: &Agent,
    b: &Agent,
    id_a: &Identity,
    id_b: &Identity,
) -> Result<(), String> {
    let target = id_b.address.to_string();
    // The first packet starts the handshake; it may be lost while it runs.
    wait_until("the first overlay ping a -> b", CONNECT_TIMEOUT, || {
        lab.exec(
            &a.host.ns,
            &["ping", "-6", "-n", "-c", "1", "-W", "1", &target],
        )
        .is_ok_and(|o| o.ok())
    })?;
    let out = lab
        .exec(
            &a.host.ns,
            &[
                "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", &target,
            ],
        )?
        .check()?;
    if !out.stdout.contains("3 packets transmitted, 3 received") {
        return Err(format!("ping -6 -c 3 lost packets:\n{}", out.stdout));
    }

    let status_a = a.status()?;
    let peer_b = peer_in_status(&status_a, &id_b.id)
        .ok_or_else(|| format!("a's status lists no peer b: {status_a:#}"))?;
    expect_established(peer_b, "a's view of b")?;
    if peer_b["path"] != "direct" {
        return Err(format!(
            "a's view of b: path {}, expected \"direct\"",
            peer_b["path"]
        ));
    }

    let status_b = b.status()?;
    let peer_a = peer_in_status(&status_b, &id_a.id)
        .ok_or_else(|| format!("b's status lists no peer a: {status_b:#}"))?;
    expect_established(peer_a, "b's view of a")?;
    let learned = peer_a["endpoint"]
        .as_str()
        .and_then(|e| e.parse::<SocketAddr>().ok());
    if learned != Some(a.endpoint()) {
        return Err(format!(
            "b's view of a: endpoint {}, expected {} (learned from a's handshake)",
            peer_a["endpoint"],
            a.endpoint()
        ));
    }
    Ok(())
}

fn expect_established(peer: &Value, who: &str) -> Result<(), String> {
    let established = peer["session_established"] == true;
    let rx = peer["rx_bytes"].as_u64().unwrap_or(0);
    let tx = peer["tx_bytes"].as_u64().unwrap_or(0);
    if established && rx > 0 && tx > 0 {
        Ok(())
    } else {
        Err(format!(
            "{who}: expected an established session with traffic both ways, got {peer:#}"
        ))
    }
}

/// `python3 -m http.server` bound to B's agent address; `curl` in A fetches
/// 1 MiB of random bytes, which must arrive intact.
fn http_over_overlay(lab: &Lab, a: &Agent, b: &Agent, id_b: &Identity) -> Result<(), String> {
    support::http::fetch_over_overlay(
        lab,
        a,
        b,
        id_b.address,
        HTTP_PORT,
        HTTP_BLOB_LEN,
        Duration::from_secs(60),
    )
    .map(drop)
}

/// C trusts B, B does not trust C. C's daemon sends B handshake initiations;
/// C also sends junk, truncated, corrupted and replayed datagrams to B's
/// port. A capture on C (proven live by B's control pings) must hold no
/// packet from B but those pings; B's status must not mention C, and B's
/// drop counters must have grown.
fn untrusted_host_gets_no_reply(
    lab: &Lab,
    a: &Agent,
    b: &Agent,
    c: &Agent,
    id_b: &Identity,
    id_c: &Identity,
) -> Result<(), String> {
    // B's traffic to A may be flooded to C's port: not C's business.
    let watch = ReplyWatch::start(lab, &b.host, &c.host, &[a.host.ip])?;
    let talked = c_talks_to_b(lab, b, c, id_b, id_c, &watch);
    let seen = watch.finish()?;
    let inits = talked?;
    step(&format!(
        "capture on c: {} IPv4 packets, {} control pings from b, {} other packets from b, {inits} initiations from c",
        seen.capture.ipv4.len(),
        seen.control_pings,
        seen.from_sender.len()
    ));
    if !seen.from_sender.is_empty() {
        let lines: Vec<String> = seen.from_sender.iter().map(|p| p.summary()).collect();
        return Err(format!(
            "b sent {} packet(s) to c (must be none):\n{}",
            lines.len(),
            lines.join("\n")
        ));
    }
    Ok(())
}

/// What C does while the watch runs, and B's and C's status afterwards.
/// Returns how many handshake initiations C's daemon sent B.
fn c_talks_to_b(
    lab: &Lab,
    b: &Agent,
    c: &Agent,
    id_b: &Identity,
    id_c: &Identity,
    watch: &ReplyWatch,
) -> Result<usize, String> {
    let (ip_b, ip_c) = (b.host.ip, c.host.ip);
    let before = b.status()?;
    let dropped_before = dropped_total(&before);
    let untrusted_before = before["dropped"]["untrusted"].as_u64();

    // C trusts B and sends to B's agent address: its daemon initiates.
    c.trust_add(id_b, "b", Some(b.endpoint()))?;
    let ping = lab.exec(
        &c.host.ns,
        &[
            "ping",
            "-6",
            "-n",
            "-c",
            "3",
            "-i",
            "0.5",
            "-W",
            "1",
            &id_b.address.to_string(),
        ],
    )?;
    if ping.ok() {
        return Err(format!(
            "c, untrusted by b, got a ping reply:\n{}",
            ping.stdout
        ));
    }
    let initiation = wait_for(
        "a handshake initiation from c's daemon to b",
        CONNECT_TIMEOUT,
        || {
            let cap = watch.capture().ok()?;
            initiations(&cap, ip_c, c.port, ip_b, b.port)
                .into_iter()
                .next()
        },
    )?;
    step(&format!(
        "c's daemon sent b an initiation of {} bytes",
        initiation.len()
    ));

    let junk = junk_datagrams(&initiation);
    let to = SocketAddr::new(IpAddr::V4(ip_b), b.port);
    let sent = send_udp(lab, &c.host.ns, to, None, &junk)?;
    step(&format!(
        "c sent b {sent} junk/truncated/replayed datagrams"
    ));
    std::thread::sleep(SILENCE_WINDOW);
    let inits = initiations(&watch.capture()?, ip_c, c.port, ip_b, b.port).len();

    // B counted what it dropped: each initiation from C, and some junk.
    let mut last = Value::Null;
    let counted = wait_until("b's drop counters to grow", Duration::from_secs(5), || {
        let Ok(status) = b.status() else {
            return false;
        };
        let grew = dropped_total(&status) > dropped_before + inits as u64;
        let untrusted_grew = match (untrusted_before, status["dropped"]["untrusted"].as_u64()) {
            (Some(x), Some(y)) => y > x,
            _ => true,
        };
        last = status;
        grew && untrusted_grew
    });
    if let Err(e) = counted {
        return Err(format!(
            "{e}: dropped before {}, after {} (c sent {inits} initiations + {sent} junk)",
            before["dropped"], last["dropped"]
        ));
    }

    // B's status says nothing about C, under any field.
    let text = last.to_string();
    if text.contains(&id_c.id) || text.contains(&ip_c.to_string()) {
        return Err(format!(
            "b's status mentions c ({} / {ip_c}): {last:#}",
            id_c.id
        ));
    }
    let peers: Vec<&str> = last["peers"]
        .as_array()
        .map(|ps| ps.iter().filter_map(|p| p["id"].as_str()).collect())
        .unwrap_or_default();
    if peers.len() != 1 {
        return Err(format!(
            "b should list exactly one peer (a), lists {peers:?}"
        ));
    }

    // C's side: it trusts B but no session may exist.
    let status_c = c.status()?;
    let peer_b = peer_in_status(&status_c, &id_b.id)
        .ok_or_else(|| format!("c's status lists no peer b: {status_c:#}"))?;
    if peer_b["session_established"] != false {
        return Err(format!(
            "c shows a session with b, which does not trust c: {peer_b:#}"
        ));
    }
    Ok(inits)
}

/// Payloads of the handshake initiations from `src:sport` to `dst:dport`.
fn initiations(
    cap: &pcap::Capture,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<Vec<u8>> {
    cap.ipv4
        .iter()
        .filter(|p| p.src == src && p.dst == dst)
        .filter_map(|p| p.udp())
        .filter(|(s, d, data)| {
            *s == sport && *d == dport && data.first() == Some(&MSG_HANDSHAKE_INITIATION)
        })
        .map(|(_, _, data)| data.to_vec())
        .collect()
}

/// Datagrams no agent may answer: random bytes of many sizes, every message
/// type with garbage after the header, and the captured initiation
/// truncated, corrupted, extended and replayed as is.
fn junk_datagrams(initiation: &[u8]) -> Vec<Vec<u8>> {
    let rand = support::random_bytes;
    let mut junk: Vec<Vec<u8>> = vec![Vec::new()];
    for len in [1, 3, 4, 7, 32, 100, 148, 512, 1400] {
        junk.push(rand(len));
    }
    for msg_type in [0u8, 1, 2, 3, 4, 5, 6, 7, 0x40, 0xff] {
        for body in [0, 12, 28, 92, 144, 1000] {
            let mut d = vec![msg_type, 0, 0, 0];
            d.extend(rand(body));
            junk.push(d);
        }
        let mut reserved_set = vec![msg_type, 0xff, 0xff, 0xff];
        reserved_set.extend(rand(60));
        junk.push(reserved_set);
    }
    let n = initiation.len();
    for cut in [1, 4, 8, n / 2, n.saturating_sub(16), n.saturating_sub(1)] {
        junk.push(initiation[..cut.min(n)].to_vec());
    }
    for flip in [4, n / 2, n.saturating_sub(1)] {
        let mut d = initiation.to_vec();
        if let Some(byte) = d.get_mut(flip) {
            *byte ^= 0x01;
        }
        junk.push(d);
    }
    let mut longer = initiation.to_vec();
    longer.push(0);
    junk.push(longer);
    for _ in 0..3 {
        junk.push(initiation.to_vec());
    }
    junk
}

/// The watch behind `untrusted_host_gets_no_reply` must be able to fail:
/// with no agentnet running, B's kernel answers UDP to its closed port with
/// ICMP port unreachable, and the watch has to report exactly that; it also
/// has to find a type-1 datagram C sends from the agent port.
#[test]
fn reply_watch_catches_any_packet_from_the_watched_host() {
    let Some(()) = support::netns_ready!(&["ping", "tcpdump", "python3"]) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let hosts = lab
        .bridge_segment(UNDERLAY, &["a", "b", "c"])
        .expect("three hosts");
    let [a, b, c] = &hosts[..] else {
        unreachable!()
    };
    let watch = ReplyWatch::start(&lab, b, c, &[a.ip]).expect("watch");
    let fake_initiation = [vec![MSG_HANDSHAKE_INITIATION, 0, 0, 0], vec![7; 60]].concat();
    let to = SocketAddr::new(IpAddr::V4(b.ip), AGENT_PORT);
    send_udp(
        &lab,
        &c.ns,
        to,
        Some(AGENT_PORT),
        std::slice::from_ref(&fake_initiation),
    )
    .expect("send");
    wait_until(
        "b's port unreachable in the capture",
        Duration::from_secs(5),
        || {
            watch.capture().is_ok_and(|cap| {
                cap.ipv4
                    .iter()
                    .any(|p| p.src == b.ip && p.icmp_type() == Some(3))
            })
        },
    )
    .expect("the watch must see b's ICMP reply");
    let cap = watch.capture().expect("capture");
    assert_eq!(
        initiations(&cap, c.ip, AGENT_PORT, b.ip, AGENT_PORT),
        vec![fake_initiation],
        "the watch must find c's datagram to b's agent port"
    );
    let seen = watch.finish().expect("finish");
    assert_eq!(seen.control_pings, CONTROL_PINGS);
    assert!(
        !seen.from_sender.is_empty() && seen.from_sender.iter().all(|p| p.icmp_type() == Some(3)),
        "expected only b's port-unreachable, got {:?}",
        seen.from_sender
            .iter()
            .map(|p| p.summary())
            .collect::<Vec<_>>()
    );
}

/// `agentnet down` on every agent; right after it returns, the agent's
/// interface and processes must be gone.
fn down_everywhere(lab: &Lab, agents: &[Agent]) -> Result<(), String> {
    let mut errors = Vec::new();
    for agent in agents {
        if let Err(e) = agent.down() {
            errors.push(e);
            continue;
        }
        if lab.link_exists(&agent.host.ns, &agent.iface) {
            errors.push(format!(
                "{}: interface {} still exists after down",
                agent.name, agent.iface
            ));
        }
        let left = agent.daemon_pids();
        if !left.is_empty() {
            errors.push(format!(
                "{}: processes still running after down: {left:?}",
                agent.name
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// `up` refuses to run with a secret key that others can read. Needs no
/// root: as root it runs in a lab namespace (and also checks that the same
/// state starts once the mode is 0600 again); otherwise the refusal must
/// happen, and say why, before the daemon would need any privilege.
#[test]
fn up_refuses_key_file_readable_by_others() {
    // In a parent only its owner may write, as /var/lib: where an
    // `agentnet` user exists, `up` switches to it and refuses a state
    // directory right in /tmp.
    let parent = tempfile::Builder::new()
        .prefix("an-state-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
        .expect("parent mode");
    let state = parent.path().join("state");
    let state_dir = state.as_path();
    let init = agentnet(state_dir, &["init", "--name", "perm"], None).expect("init");
    assert!(init.ok(), "{}", init.describe());

    // The secret key is a file init wrote with mode 0600 (design §1): the
    // one named like a key if there is one, else every 0600 file.
    let private: Vec<PathBuf> = regular_files(state_dir)
        .into_iter()
        .filter(|(_, mode)| mode & 0o777 == 0o600)
        .map(|(p, _)| p)
        .collect();
    assert!(
        !private.is_empty(),
        "init wrote no mode-0600 file (the key) in {}: {:?}",
        state_dir.display(),
        regular_files(state_dir)
    );
    let named_key: Vec<PathBuf> = private
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().contains("key"))
        })
        .cloned()
        .collect();
    let private = if named_key.is_empty() {
        private
    } else {
        named_key
    };
    set_modes(&private, 0o644);

    if support::is_root() {
        let Some(()) = support::netns_ready!(&[]) else {
            return;
        };
        let lab = Lab::new().expect("lab");
        let ns = lab.add_namespace("k").expect("namespace");
        let iface = lab.iface_name("k");
        let up_args = ["up", "--interface", iface.as_str(), "--port", "7400"];

        let refused = agentnet(state_dir, &up_args, Some(&ns)).expect("up");
        expect_key_refusal(&refused);
        assert!(
            !lab.link_exists(&ns, &iface),
            "a refused `up` left interface {iface} behind"
        );
        assert_no_process_mentions(state_dir);

        // Control: the very same state comes up once the key is private.
        set_modes(&private, 0o600);
        let up = agentnet(state_dir, &up_args, Some(&ns)).expect("up");
        assert!(
            up.ok(),
            "with the key at 0600 `up` must work: {}",
            up.describe()
        );
        assert!(
            lab.link_exists(&ns, &iface),
            "`up` returned without interface {iface}"
        );
        let down = agentnet(state_dir, &["down"], Some(&ns)).expect("down");
        assert!(down.ok(), "{}", down.describe());
    } else {
        let refused = agentnet(state_dir, &["up", "--port", "7400"], None).expect("up");
        expect_key_refusal(&refused);
        assert_no_process_mentions(state_dir);
    }
}

/// Runs `agentnet --state-dir DIR ARGS` (in namespace `ns` if given; as a
/// non-root user inside a fresh user+network namespace when `unshare -rn`
/// works, so nothing can touch the host's network).
fn agentnet(state_dir: &Path, args: &[&str], ns: Option<&str>) -> Result<support::Output, String> {
    let bin = agentnet_bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&bin);
            c
        }
        None if !support::is_root() && unshare_works() => {
            let mut c = Command::new("unshare");
            c.args(["-rn", "--"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("--state-dir").arg(state_dir).args(args);
    support::run(cmd, Duration::from_secs(30))
}

fn unshare_works() -> bool {
    let mut c = Command::new("unshare");
    c.args(["-rn", "true"]);
    support::run(c, Duration::from_secs(10)).is_ok_and(|o| o.ok())
}

/// `up` failed, and its output says the key file's permissions are why.
fn expect_key_refusal(out: &support::Output) {
    assert!(
        !out.ok(),
        "`up` accepted a key file with mode 0644: {}",
        out.describe()
    );
    let text = format!("{}\n{}", out.stdout, out.stderr).to_lowercase();
    let names_key = text.contains("key");
    let names_mode = ["0644", "644", "0600", "mode", "permission", "readable"]
        .iter()
        .any(|w| text.contains(w));
    assert!(
        names_key && names_mode,
        "`up` failed, but its output does not say the key file's mode is the reason: {}",
        out.describe()
    );
}

fn assert_no_process_mentions(state_dir: &Path) {
    let pids = support::pids_mentioning(&state_dir.to_string_lossy());
    assert!(
        pids.is_empty(),
        "a refused `up` left processes running: {pids:?}"
    );
}

/// `(path, mode)` of every regular file directly in `dir` or below.
fn regular_files(dir: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            out.extend(regular_files(&entry.path()));
        } else if meta.is_file() {
            out.push((entry.path(), meta.permissions().mode()));
        }
    }
    out
}

fn set_modes(paths: &[PathBuf], mode: u32) {
    for p in paths {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
    }
}
