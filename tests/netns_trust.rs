//! End-to-end tests of the trust workflow on real hosts (network namespaces,
//! the real `agentnet` binary, real programs over the overlay): trust
//! requests with a justification, approval, denial, auto-approval of a
//! fleet, instant revocation under load, per-peer port policy, and a trust
//! store that survives `kill -9` at any moment.
//!
//! They need root (namespaces, TUN). Without it they say why and pass as
//! skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI). All traffic stays inside
//! the lab's namespaces.

mod support;

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agentnet::core::identity::Identity as KeyPair;
use agentnet::state::StateDir;
use serde_json::Value;
use support::agent::{Identity, agentnet_bin, dropped_total, peer_in_status};
use support::capture::{TunCapture, parse_date_nanos, wall_clock};
use support::{Agent, Host, Lab, Output, step, wait_for, wait_until};

/// Programs these tests run inside the namespaces.
const TOOLS: &[&str] = &["ping", "tcpdump", "curl", "python3", "ss", "iperf3"];

/// How long a handshake plus a first packet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a request may take to reach the target's pending list.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The issue's bound from approval to a working connection.
const APPROVAL_TO_CURL: Duration = Duration::from_secs(2);

/// Port of the HTTP server the requester is allowed to reach.
const ALLOWED_PORT: u16 = 8080;

/// A port the policy does not allow (ssh's).
const DENIED_PORT: u16 = 22;

/// Port of the HTTP server on the requester, reached by the approver.
const REQUESTER_PORT: u16 = 9090;

/// Port of the iperf3 server.
const IPERF_PORT: u16 = 5201;

const JUSTIFICATION: &str = "nightly log summaries for the SRE team";

/// Two hosts on one veth pair, each running an initialised, started agent.
struct Pair<'l> {
    a: Agent<'l>,
    b: Agent<'l>,
    id_a: Identity,
    id_b: Identity,
}

fn pair<'l>(lab: &'l Lab, net: [u8; 2]) -> Pair<'l> {
    step(&format!(
        "lab {}: hosts a and b on a veth pair",
        lab.prefix()
    ));
    let [host_a, host_b] = lab.veth_pair(net, ["a", "b"], 1500).expect("veth pair");
    let a = Agent::new(lab, &host_a, "host-a").expect("agent a");
    let b = Agent::new(lab, &host_b, "host-b").expect("agent b");
    let id_a = start(&a);
    let id_b = start(&b);
    Pair { a, b, id_a, id_b }
}

/// `init` and `up`; returns the agent's identity.
fn start(agent: &Agent) -> Identity {
    agent.init().unwrap_or_else(|e| panic!("{e}"));
    agent.up().unwrap_or_else(|e| panic!("{e}"));
    agent.id().unwrap_or_else(|e| panic!("{e}"))
}

fn ok(agent: &Agent, args: &[&str]) -> Output {
    agent.cli_ok(args).unwrap_or_else(|e| panic!("{e}"))
}

fn json(agent: &Agent, args: &[&str]) -> Value {
    let out = ok(agent, args);
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("`{}` is not JSON ({e}): {}", args.join(" "), out.stdout))
}

/// `agent` asks `target` for trust, for `allow`, at `target`'s endpoint.
fn request_trust(agent: &Agent, target: &Agent, id_target: &Identity, allow: &str) -> Output {
    let endpoint = target.endpoint().to_string();
    ok(
        agent,
        &[
            "trust",
            "request",
            &id_target.id,
            "--justification",
            JUSTIFICATION,
            "--allow",
            allow,
            "--endpoint",
            &endpoint,
        ],
    )
}

/// The pending request of `id` on `agent`, once it has arrived.
fn wait_pending(agent: &Agent, id: &Identity) -> Value {
    wait_for(
        "the trust request in `pending --json`",
        DELIVERY_TIMEOUT,
        || {
            json(agent, &["trust", "pending", "--json"])
                .as_array()?
                .iter()
                .find(|r| r["id"] == id.id.as_str())
                .cloned()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The trust-store entry of `id` in `agent`'s `trust list --json`.
fn trust_entry(agent: &Agent, id: &Identity) -> Option<Value> {
    json(agent, &["trust", "list", "--json"])
        .as_array()?
        .iter()
        .find(|e| e["id"] == id.id.as_str())
        .cloned()
}

/// `python3 -m http.server PORT` bound to `address` in `agent`'s namespace,
/// serving `dir`; returns its PID once it listens.
fn http_server(lab: &Lab, agent: &Agent, address: Ipv6Addr, port: u16, dir: &Path) -> u32 {
    support::http::serve_directory(lab, agent, address, port, dir).unwrap_or_else(|e| panic!("{e}"))
}

fn wait_until_listening(lab: &Lab, agent: &Agent, port: u16) {
    support::http::wait_listening(lab, agent, port).unwrap_or_else(|e| panic!("{e}"));
}

/// A directory with `index.txt` holding `text`.
fn www(lab: &Lab, name: &str, text: &str) -> std::path::PathBuf {
    let dir = lab.dir().join(name);
    std::fs::create_dir_all(&dir).expect("www dir");
    std::fs::write(dir.join("index.txt"), text).expect("index");
    dir
}

/// `curl` from `agent`'s namespace to `http://[address]:port/index.txt`.
fn curl(lab: &Lab, agent: &Agent, address: Ipv6Addr, port: u16, limit: &[&str]) -> Output {
    let url = format!("http://[{address}]:{port}/index.txt");
    let mut args = vec!["curl", "-g", "-sS", "--fail", "--noproxy", "*"];
    args.extend_from_slice(limit);
    args.push(&url);
    lab.exec(&agent.host.ns, &args).expect("curl runs")
}

/// A connection from `agent` to `address`:`port` gets no answer at all:
/// curl's exit status 28 is a timeout, 7 would be a refusal (an answer).
fn assert_times_out(lab: &Lab, agent: &Agent, address: Ipv6Addr, port: u16, what: &str) {
    let attempt = curl(lab, agent, address, port, &["--connect-timeout", "3"]);
    assert_eq!(
        attempt.status.code(),
        Some(28),
        "{what} must time out: {}",
        attempt.describe()
    );
}

/// A requests trust from B with a justification and `--allow tcp:8080`; B
/// sees it in `trust pending --json` with everything the operator needs;
/// approving with a wider policy is refused; approving connects at once, and
/// A fetches a page from B's HTTP server within 2 s of the approval.
#[test]
fn requested_trust_once_approved_lets_the_requester_curl_within_two_seconds() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let Pair { a, b, id_a, id_b } = pair(&lab, [78, 1]);
    let page = www(&lab, "b-www", "hello from b\n");
    let _server = http_server(&lab, &b, id_b.address, ALLOWED_PORT, &page);

    step("a: trust request b --allow tcp:8080");
    let out = request_trust(&a, &b, &id_b, "tcp:8080");
    assert!(
        out.stdout.contains("sent a trust request"),
        "{}",
        out.stdout
    );
    let requested = trust_entry(&a, &id_b).expect("a stores b");
    assert_eq!(requested["state"], "requested", "{requested:#}");
    assert_eq!(requested["allow"], "none", "{requested:#}");
    let expires = requested["expires_unix"].as_u64().expect("expires_unix");
    let in_a_week = agentnet::state::unix_now() + 7 * 24 * 3600;
    assert!(
        (in_a_week - 60..=in_a_week).contains(&expires),
        "{requested:#}"
    );
    let listed = ok(&a, &["trust", "list"]).stdout;
    assert!(listed.contains("(requested, expires in "), "{listed}");

    step("b: trust pending --json");
    let pending = wait_pending(&b, &id_a);
    assert_eq!(pending["name"], "host-a", "{pending:#}");
    assert_eq!(pending["justification"], JUSTIFICATION, "{pending:#}");
    assert_eq!(pending["requested"], "tcp:8080", "{pending:#}");
    assert_eq!(
        pending["from"],
        a.endpoint().to_string().as_str(),
        "{pending:#}"
    );
    let age = pending["age_s"].as_f64().expect("age_s");
    assert!((0.0..60.0).contains(&age), "{pending:#}");
    assert!(pending["endorsed_by"].is_null(), "{pending:#}");
    let text = ok(&b, &["trust", "pending"]).stdout;
    assert!(
        text.contains(JUSTIFICATION) && text.contains(&id_a.id),
        "{text}"
    );

    step("b: approving wider than requested is refused");
    let wider = b
        .cli(&["trust", "approve", &id_a.id, "--allow", "all"])
        .expect("runs");
    assert!(
        !wider.ok(),
        "a wider grant was accepted: {}",
        wider.describe()
    );
    assert!(wider.stderr.contains("never widen"), "{}", wider.describe());
    assert!(
        trust_entry(&b, &id_a).is_none(),
        "a refused approval stored a"
    );

    step("b: trust approve a");
    let out = ok(&b, &["trust", "approve", &id_a.id]);
    let approved = Instant::now();
    assert!(out.stdout.contains("approved host-a"), "{}", out.stdout);
    let fetched = curl(&lab, &a, id_b.address, ALLOWED_PORT, &["--max-time", "2"]);
    let took = approved.elapsed();
    assert!(
        fetched.ok(),
        "curl after approval failed: {}",
        fetched.describe()
    );
    assert_eq!(fetched.stdout, "hello from b\n");
    assert!(
        took < APPROVAL_TO_CURL,
        "curl succeeded only {took:?} after the approval"
    );
    step(&format!("a fetched b's page {took:?} after the approval"));

    let entry = trust_entry(&b, &id_a).expect("b stores a");
    assert_eq!(entry["name"], "host-a", "{entry:#}");
    assert_eq!(entry["allow"], "tcp:8080", "{entry:#}");
    assert_eq!(entry["state"], "trusted", "{entry:#}");
    assert_eq!(
        entry["endpoint"],
        a.endpoint().to_string().as_str(),
        "{entry:#}"
    );
    let left = json(&b, &["trust", "pending", "--json"]);
    assert_eq!(
        left,
        Value::Array(Vec::new()),
        "approved request still pending"
    );
    wait_until("a to mark b as trusted", Duration::from_secs(5), || {
        trust_entry(&a, &id_b).is_some_and(|e| e["state"] == "trusted")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let approved = trust_entry(&a, &id_b).expect("a stores b");
    assert_eq!(approved["allow"], "none", "{approved:#}");
    assert!(approved.get("expires_unix").is_none(), "{approved:#}");
}

/// After approval with `tcp:8080`, A reaches B's port 8080 but a connection
/// to port 22 times out: nothing comes back, no SYN-ACK, no RST, no ICMP
/// (a capture on A's TUN proves it), and B counts the drop against A. B, the
/// agent A asked, may open nothing on A (A counts the drop) while A's own
/// connections to B get their replies; once A's operator allows a port
/// (`trust add --allow`), B reaches it.
#[test]
fn approved_port_policy_lets_8080_through_drops_22_silently_and_the_target_opens_nothing_on_the_requester()
 {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let Pair { a, b, id_a, id_b } = pair(&lab, [78, 2]);
    let page = www(&lab, "b-www", "port 8080\n");
    let _allowed = http_server(&lab, &b, id_b.address, ALLOWED_PORT, &page);
    let _denied = http_server(&lab, &b, id_b.address, DENIED_PORT, &page);
    let a_page = www(&lab, "a-www", "served by a\n");
    let _a_server = http_server(&lab, &a, id_a.address, REQUESTER_PORT, &a_page);

    request_trust(&a, &b, &id_b, "tcp:8080");
    wait_pending(&b, &id_a);
    ok(&b, &["trust", "approve", &id_a.id]);

    step("a -> b:8080 works");
    wait_until("a to fetch b:8080", CONNECT_TIMEOUT, || {
        curl(&lab, &a, id_b.address, ALLOWED_PORT, &["--max-time", "3"]).ok()
    })
    .unwrap_or_else(|e| panic!("{e}"));

    step("a -> b:22 times out with nothing answered");
    let filter = format!(
        "ip6 src {} and (tcp src port {DENIED_PORT} or tcp src port {ALLOWED_PORT} or icmp6)",
        id_b.address
    );
    let capture = TunCapture::start(&lab, &a.host.ns, &a.iface, &filter).expect("capture");
    let policy_drops_before = policy_drops(&b, &id_a);
    assert_times_out(
        &lab,
        &a,
        id_b.address,
        DENIED_PORT,
        "the connection to a port the policy denies",
    );

    step("b -> a:9090 times out: a asked b for access, b may open nothing on a");
    let reverse_drops_before = policy_drops(&a, &id_b);
    assert_times_out(
        &lab,
        &b,
        id_a.address,
        REQUESTER_PORT,
        "a connection from the agent a asked",
    );
    let reverse_drops_after = policy_drops(&a, &id_b);
    assert!(
        reverse_drops_after > reverse_drops_before,
        "a did not count b's SYNs ({reverse_drops_before} -> {reverse_drops_after})"
    );

    // A's own connection to B's 8080: B's answers pass (replies to A's
    // flow) and are the capture's proof of life.
    let fetched = curl(&lab, &a, id_b.address, ALLOWED_PORT, &["--max-time", "5"]);
    assert!(fetched.ok(), "a could not reach b: {}", fetched.describe());
    let from_allowed_port =
        |r: &support::capture::Ipv6Record| r.ports().is_some_and(|(src, _)| src == ALLOWED_PORT);
    wait_until(
        "b's answers on 8080 in the capture",
        Duration::from_secs(5),
        || {
            capture
                .packets()
                .is_ok_and(|p| p.iter().any(from_allowed_port))
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let seen = capture.finish().expect("capture");
    let answers: Vec<String> = seen
        .packets
        .iter()
        .filter(|r| !from_allowed_port(r))
        .map(|r| r.summary())
        .collect();
    assert!(
        answers.is_empty(),
        "b answered a's connection to port {DENIED_PORT}:\n{}",
        answers.join("\n")
    );
    let policy_drops_after = policy_drops(&b, &id_a);
    assert!(
        policy_drops_after > policy_drops_before,
        "b did not count the denied SYNs against a ({policy_drops_before} -> {policy_drops_after})"
    );

    step("a allows b tcp:9090; b -> a:9090 works");
    let endpoint = b.endpoint().to_string();
    ok(
        &a,
        &[
            "trust",
            "add",
            &id_b.id,
            "--name",
            "b",
            "--endpoint",
            &endpoint,
            "--allow",
            &format!("tcp:{REQUESTER_PORT}"),
        ],
    );
    let fetched = curl(&lab, &b, id_a.address, REQUESTER_PORT, &["--max-time", "5"]);
    assert!(fetched.ok(), "b could not reach a: {}", fetched.describe());
    assert_eq!(fetched.stdout, "served by a\n");

    step("b renames a: the policy and the endpoint stay, port 22 stays shut");
    let before = trust_entry(&b, &id_a).expect("b trusts a");
    ok(&b, &["trust", "add", &id_a.id, "--name", "renamed-a"]);
    let after = trust_entry(&b, &id_a).expect("b still trusts a");
    assert_eq!(after["name"], "renamed-a");
    assert_eq!(
        after["allow"], "tcp:8080",
        "a rename changed the policy: {after}"
    );
    assert_eq!(
        after["endpoint"], before["endpoint"],
        "a rename changed the endpoint"
    );
    assert_times_out(
        &lab,
        &a,
        id_b.address,
        DENIED_PORT,
        "after a rename, a connection to a port the policy denies",
    );
}

fn policy_drops(agent: &Agent, peer: &Identity) -> u64 {
    let status = agent.status().unwrap_or_else(|e| panic!("{e}"));
    peer_in_status(&status, &peer.id)
        .and_then(|p| p["dropped_policy"].as_u64())
        .unwrap_or_else(|| panic!("no dropped_policy for the peer in {status:#}"))
}

/// An iperf3 stream runs from A to B when B revokes A. A capture on B's TUN
/// (nanosecond wall-clock timestamps) holds no packet from A after the
/// moment `trust revoke` returned, while B's own later packets to A are
/// there (the capture was live) and A kept sending (B counted the drops).
/// A drops its session on B's signed notice.
#[test]
fn revoked_peer_gets_nothing_delivered_after_revoke_returns() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let Pair { a, b, id_a, id_b } = pair(&lab, [78, 3]);
    a.trust_add(&id_b, "b", Some(b.endpoint()))
        .expect("a trusts b");
    b.trust_add(&id_a, "a", None).expect("b trusts a");

    let port = IPERF_PORT.to_string();
    let server = lab
        .spawn(
            &b.host.ns,
            "iperf3-server",
            &["iperf3", "-s", "-B", &id_b.address.to_string(), "-p", &port],
        )
        .expect("iperf3 server");
    wait_until_listening(&lab, &b, IPERF_PORT);
    wait_until("a ping to b over the overlay", CONNECT_TIMEOUT, || {
        lab.exec(
            &a.host.ns,
            &[
                "ping",
                "-6",
                "-n",
                "-c",
                "1",
                "-W",
                "1",
                &id_b.address.to_string(),
            ],
        )
        .is_ok_and(|o| o.ok())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    let filter = format!("ip6 host {}", id_a.address);
    let capture = TunCapture::start(&lab, &b.host.ns, &b.iface, &filter).expect("capture");
    step("a: iperf3 -c b (20 Mbit/s) in the background");
    let client = lab
        .spawn(
            &a.host.ns,
            "iperf3-client",
            &[
                "iperf3",
                "-c",
                &id_b.address.to_string(),
                "-p",
                &port,
                "-t",
                "60",
                "-b",
                "20M",
            ],
        )
        .expect("iperf3 client");
    let from_a = |packets: &[support::capture::Ipv6Record]| {
        packets.iter().filter(|r| r.src == id_a.address).count()
    };
    wait_until(
        "the stream from a on b's TUN",
        Duration::from_secs(15),
        || capture.packets().is_ok_and(|p| from_a(&p) >= 500),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let dropped_before = dropped_total(&b.status().expect("status"));
    step("b: trust revoke a, mid-stream");
    let revoke_started = wall_clock();
    let state = b.state_dir().to_string_lossy().into_owned();
    let bin = agentnet_bin();
    let revoke = lab
        .exec(
            &b.host.ns,
            &[
                "sh",
                "-c",
                r#""$0" --state-dir "$1" trust revoke "$2" && date +%s%N"#,
                bin.to_str().expect("utf-8 path"),
                &state,
                &id_a.id,
            ],
        )
        .expect("revoke runs")
        .check()
        .unwrap_or_else(|e| panic!("{e}"));
    let returned = parse_date_nanos(&revoke.stdout)
        .unwrap_or_else(|| panic!("no timestamp after revoke: {}", revoke.stdout));
    assert!(
        revoke.stdout.contains("sessions and keys destroyed"),
        "{}",
        revoke.stdout
    );

    // Proof of life after the revoke: b's own packets to a cross its TUN
    // (and go nowhere, counted as having no route); and whatever a still
    // sends (data in flight, handshake initiations) b drops and counts. a
    // may fall silent at once: the revocation notice reaches it within a
    // round trip and it drops the session.
    let _ = lab.exec(
        &b.host.ns,
        &[
            "ping",
            "-6",
            "-n",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            &id_a.address.to_string(),
        ],
    );
    wait_until(
        "b to drop a's traffic after the revoke",
        Duration::from_secs(10),
        || {
            b.status()
                .is_ok_and(|status| dropped_total(&status) >= dropped_before + 3)
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until(
        "a to drop its session on b's notice",
        Duration::from_secs(5),
        || {
            a.status().is_ok_and(|status| {
                peer_in_status(&status, &id_b.id).is_some_and(|p| p["session_established"] == false)
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lab.stop(client);
    lab.stop(server);
    let seen = capture.finish().expect("capture");

    let before = seen
        .packets
        .iter()
        .filter(|r| r.src == id_a.address)
        .filter(|r| r.time <= revoke_started && r.time + Duration::from_secs(1) > revoke_started)
        .count();
    let after: Vec<String> = seen
        .packets
        .iter()
        .filter(|r| r.src == id_a.address && r.time > returned)
        .map(|r| r.summary())
        .collect();
    let b_after = seen
        .packets
        .iter()
        .filter(|r| r.src == id_b.address && r.time > returned)
        .count();
    step(&format!(
        "b's TUN: {} packets; from a: {before} in the second before the revoke, {} after it returned; {b_after} from b after",
        seen.packets.len(),
        after.len()
    ));
    assert!(before > 0, "the stream was not running when b revoked a");
    assert!(
        b_after > 0,
        "the capture saw nothing after the revoke: not live"
    );
    assert!(
        after.is_empty(),
        "{} packet(s) of a were delivered on b's TUN after `trust revoke` returned at {:.6}:\n{}",
        after.len(),
        returned.as_secs_f64(),
        after.join("\n")
    );
    assert!(trust_entry(&b, &id_a).is_none(), "b still stores a");
}

/// An agent asked for trust that never approves lapses: with
/// `[trust_requests] requested_ttl_s = 2`, A's requested entry for B is
/// gone from `trust list` and from the daemon's peers soon after, and B's
/// later approval finds no way in.
#[test]
fn unapproved_trust_request_expires_from_the_requesters_store() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let [host_a, host_b] = lab.veth_pair([78, 5], ["a", "b"], 1500).expect("veth pair");
    let a = Agent::new(&lab, &host_a, "host-a").expect("agent a");
    let b = Agent::new(&lab, &host_b, "host-b").expect("agent b");
    a.init().unwrap_or_else(|e| panic!("{e}"));
    let config = a.state_dir().join("config.toml");
    let mut text = std::fs::read_to_string(&config).expect("a's config");
    text.push_str("\n[trust_requests]\nrequested_ttl_s = 2\n");
    std::fs::write(&config, text).expect("a's config");
    a.up().unwrap_or_else(|e| panic!("{e}"));
    let id_a = a.id().unwrap_or_else(|e| panic!("{e}"));
    let id_b = start(&b);

    step("a asks b; b does not answer");
    request_trust(&a, &b, &id_b, "tcp:8080");
    let requested = trust_entry(&a, &id_b).expect("a stores b");
    assert_eq!(requested["state"], "requested", "{requested:#}");
    wait_pending(&b, &id_a);
    wait_until(
        "a's requested entry to expire",
        Duration::from_secs(15),
        || trust_entry(&a, &id_b).is_none(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let status = a.status().expect("status");
    assert!(
        peer_in_status(&status, &id_b.id).is_none(),
        "a still has b as a peer: {status:#}"
    );
    assert!(a.log().contains("did not approve in time"), "a's log");

    step("b approves late: no session forms");
    ok(&b, &["trust", "approve", &id_a.id]);
    std::thread::sleep(Duration::from_secs(2));
    let status = b.status().expect("status");
    let peer_a = peer_in_status(&status, &id_a.id).expect("b lists a");
    assert_eq!(peer_a["session_established"], false, "{peer_a:#}");
}

/// One planned trust-store change of the kill test.
#[derive(Debug, Clone)]
enum Change {
    Add(usize),
    Remove(usize),
}

/// The daemon is killed with SIGKILL, again and again, while `trust add` and
/// `trust remove` calls make it rewrite the trust store. After every kill the
/// store parses and equals the store after some prefix of the changes: at
/// least every change the CLI saw succeed, at most the one in flight.
#[test]
fn daemon_killed_during_trust_writes_leaves_the_old_or_the_new_store() {
    let Some(()) = support::netns_ready!(&[]) else {
        return;
    };
    const ROUNDS: usize = 40;
    const CHANGES: usize = 400;
    let lab = Lab::new().expect("lab");
    let ns = lab.add_namespace("k").expect("namespace");
    let host = Host {
        role: "k".into(),
        ns,
        iface: "lo".into(),
        ip: Ipv4Addr::LOCALHOST,
    };
    let agent = Agent::new(&lab, &host, "killed").expect("agent");
    agent.init().expect("init");
    let state = StateDir::new(agent.state_dir());

    // The planned changes and the store after each prefix of them.
    let peers: Vec<String> = (0..CHANGES)
        .map(|_| {
            KeyPair::from_secret_bytes(&support::random_bytes(32))
                .expect("key")
                .agent_id()
                .to_string()
        })
        .collect();
    let mut changes = Vec::new();
    let mut present: Vec<usize> = Vec::new();
    let mut snapshots: Vec<Vec<usize>> = vec![Vec::new()];
    let mut next_peer = 0;
    while changes.len() < CHANGES {
        let change = if changes.len() % 3 == 2 && present.len() >= 2 {
            Change::Remove(present.remove(0))
        } else {
            present.push(next_peer);
            next_peer += 1;
            Change::Add(next_peer - 1)
        };
        changes.push(change);
        snapshots.push(present.clone());
    }
    let changes = Arc::new(changes);
    let peers = Arc::new(peers);

    let mut done = 0usize;
    let mut in_flight_kills = 0usize;
    for round in 0..ROUNDS {
        agent.up().unwrap_or_else(|e| panic!("round {round}: {e}"));
        let pid = agent.status().expect("status")["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .expect("daemon pid");
        let started = Arc::new(AtomicUsize::new(done));
        let acked = Arc::new(AtomicUsize::new(done));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (started, acked, stop) = (started.clone(), acked.clone(), stop.clone());
            let (changes, peers) = (changes.clone(), peers.clone());
            let bin = agentnet_bin();
            let state_dir = agent.state_dir().to_path_buf();
            let ns = agent.host.ns.clone();
            std::thread::spawn(move || {
                let mut next = acked.load(Ordering::SeqCst);
                while !stop.load(Ordering::SeqCst) && next < changes.len() {
                    let (verb, peer, name) = match changes[next] {
                        Change::Add(p) => ("add", peers[p].clone(), format!("p{p}")),
                        Change::Remove(p) => ("remove", peers[p].clone(), String::new()),
                    };
                    let mut cmd = std::process::Command::new("ip");
                    cmd.args(["netns", "exec", &ns])
                        .arg(&bin)
                        .arg("--state-dir")
                        .arg(&state_dir)
                        .args(["trust", verb, &peer]);
                    if verb == "add" {
                        cmd.args(["--name", &name]);
                    }
                    started.store(next + 1, Ordering::SeqCst);
                    let result = support::run(cmd, Duration::from_secs(30));
                    if !result.is_ok_and(|o| o.ok()) {
                        break;
                    }
                    next += 1;
                    acked.store(next, Ordering::SeqCst);
                }
            })
        };
        // Kill while a change is in flight, a random moment into it.
        let target = done + 1 + support::random_bytes(1)[0] as usize % 4;
        wait_until(
            "the writer to start its changes",
            Duration::from_secs(30),
            || started.load(Ordering::SeqCst) > target,
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let random = support::random_bytes(2);
        let jitter = u64::from(u16::from_le_bytes([random[0], random[1]])) % 3000;
        std::thread::sleep(Duration::from_micros(jitter));
        support::signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
        stop.store(true, Ordering::SeqCst);
        wait_until(
            "the killed daemon to be gone",
            Duration::from_secs(10),
            || !support::pid_alive(pid),
        )
        .unwrap_or_else(|e| panic!("round {round}: {e}"));
        writer.join().expect("writer thread");

        let (low, high) = (acked.load(Ordering::SeqCst), started.load(Ordering::SeqCst));
        if high > low {
            in_flight_kills += 1;
        }
        let store = state.load_trust().unwrap_or_else(|e| {
            panic!("round {round}: the store does not parse after kill -9: {e}")
        });
        let have: Vec<(String, String)> = store
            .peers
            .iter()
            .map(|e| (e.id.to_string(), e.name.clone()))
            .collect();
        let matches = (low..=high).rev().find(|&k| {
            let want: Vec<(String, String)> = snapshots[k]
                .iter()
                .map(|&p| (peers[p].clone(), format!("p{p}")))
                .collect();
            want == have
        });
        let Some(k) = matches else {
            panic!(
                "round {round}: after kill -9 the store is neither the old nor the new one \
                 (changes acknowledged {low}, started {high}); it holds {have:?}"
            );
        };
        done = k;
        step(&format!(
            "round {round}: killed after {low} acknowledged / {high} started changes; store = after {k}"
        ));
    }
    assert!(
        in_flight_kills > 0,
        "no kill landed while a change was in flight: the test proved nothing"
    );
    agent.up().expect("up after the last kill");
    agent.down().expect("down");
}

/// Requests wait across daemon restarts until denied; a denied requester
/// hears nothing. A request endorsed by a fleet key that B's config lists
/// under `[auto_approve]` is approved without an operator, with the ports it
/// asked for, and the requester connects; an endorsement of another agent is
/// refused at the requester.
#[test]
fn pending_requests_survive_restarts_and_fleet_members_are_auto_approved() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    step(&format!("lab {}: a, b, c on a bridge", lab.prefix()));
    let hosts = lab
        .bridge_segment([78, 4], &["a", "b", "c"])
        .expect("bridge");
    let agents: Vec<Agent> = hosts
        .iter()
        .map(|h| Agent::new(&lab, h, &format!("host-{}", h.role)).expect("agent"))
        .collect();
    let [a, b, c] = &agents[..] else {
        unreachable!()
    };

    // The fleet key lives with whoever deploys the fleet (here: the lab).
    let fleet_key = lab.dir().join("fleet.key");
    let fleet_key_text = fleet_key.to_str().expect("utf-8").to_string();
    let keygen = a
        .cli_ok(&["fleet", "keygen", "--fleet-key", &fleet_key_text])
        .unwrap_or_else(|e| panic!("{e}"));
    let fleet_id = keygen
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("fleet id"))
        .map(|id| id.trim().to_string())
        .unwrap_or_else(|| panic!("no fleet id in {}", keygen.stdout));

    for agent in &agents {
        agent.init().unwrap_or_else(|e| panic!("{e}"));
    }
    let config = b.state_dir().join("config.toml");
    let mut text = std::fs::read_to_string(&config).expect("b's config");
    text.push_str(&format!(
        "\n[auto_approve]\nfleet_keys = [\"{fleet_id}\"]\n"
    ));
    std::fs::write(&config, text).expect("b's config");
    for agent in &agents {
        agent.up().unwrap_or_else(|e| panic!("{e}"));
    }
    let ids: Vec<Identity> = agents.iter().map(|x| x.id().expect("id")).collect();
    let [id_a, id_b, id_c] = &ids[..] else {
        unreachable!()
    };

    step("a requests trust from b; b restarts; the request is still pending");
    request_trust(a, b, id_b, "tcp:8080");
    let first = wait_pending(b, id_a);
    b.down().expect("down");
    b.up().expect("up");
    let again = wait_pending(b, id_a);
    for field in ["name", "justification", "requested", "from"] {
        assert_eq!(
            again[field], first[field],
            "{field} changed over the restart"
        );
    }
    assert!(
        again["age_s"].as_f64() >= first["age_s"].as_f64(),
        "the age restarted: {first:#} then {again:#}"
    );

    step("b denies a; the denial survives a restart");
    let out = ok(b, &["trust", "deny", &id_a.id]);
    assert!(out.stdout.contains("denied"), "{}", out.stdout);
    assert_eq!(
        json(b, &["trust", "pending", "--json"]),
        Value::Array(vec![])
    );
    b.down().expect("down");
    b.up().expect("up");
    assert_eq!(
        json(b, &["trust", "pending", "--json"]),
        Value::Array(vec![])
    );
    assert!(trust_entry(b, id_a).is_none());

    step("c, endorsed by the fleet, is approved without an operator");
    let token = ok(
        a,
        &["fleet", "endorse", "--fleet-key", &fleet_key_text, &id_c.id],
    )
    .stdout
    .trim()
    .to_string();
    let stolen = a
        .cli(&[
            "trust",
            "request",
            &id_b.id,
            "--justification",
            "not mine",
            "--endpoint",
            &b.endpoint().to_string(),
            "--endorsement",
            &token,
        ])
        .expect("runs");
    assert!(
        !stolen.ok(),
        "a used c's endorsement: {}",
        stolen.describe()
    );
    assert!(
        stolen.stderr.contains("another agent"),
        "{}",
        stolen.describe()
    );
    let endpoint = b.endpoint().to_string();
    ok(
        c,
        &[
            "trust",
            "request",
            &id_b.id,
            "--justification",
            "fleet member",
            "--allow",
            "tcp:8080",
            "--endpoint",
            &endpoint,
            "--endorsement",
            &token,
            "--name",
            "b",
        ],
    );
    let entry = wait_for("b to auto-approve c", DELIVERY_TIMEOUT, || {
        trust_entry(b, id_c)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(entry["allow"], "tcp:8080", "{entry:#}");
    assert_eq!(entry["name"], "host-c", "{entry:#}");
    wait_until("c's session with b", CONNECT_TIMEOUT, || {
        c.status().is_ok_and(|status| {
            peer_in_status(&status, &id_b.id).is_some_and(|p| p["session_established"] == true)
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    wait_until("c to mark b as trusted", Duration::from_secs(5), || {
        trust_entry(c, id_b).is_some_and(|e| e["state"] == "trusted")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        json(b, &["trust", "pending", "--json"]),
        Value::Array(vec![])
    );
    assert!(
        b.log().contains("auto-approval rules"),
        "b's log does not say why c was trusted"
    );

    // A, denied, never heard from b: no session, nothing received.
    let status_a = a.status().expect("status");
    let peer_b = peer_in_status(&status_a, &id_b.id).expect("a lists b");
    assert_eq!(peer_b["session_established"], false, "{peer_b:#}");
    assert_eq!(peer_b["rx_bytes"], 0, "{peer_b:#}");
}

/// Without a daemon, `trust request` fails and says it needs one (the
/// request leaves from the daemon's socket), and changes nothing.
#[test]
fn trust_request_without_a_daemon_says_it_needs_one() {
    let state = tempfile::Builder::new()
        .prefix("an-state-")
        .tempdir()
        .expect("tempdir");
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(agentnet_bin());
        cmd.arg("--state-dir").arg(state.path()).args(args);
        support::run(cmd, Duration::from_secs(30)).expect("runs")
    };
    let init = run(&["init", "--name", "lonely"]);
    assert!(init.ok(), "{}", init.describe());
    let target = KeyPair::from_secret_bytes(&[9; 32])
        .expect("key")
        .agent_id()
        .to_string();
    let out = run(&[
        "trust",
        "request",
        &target,
        "--justification",
        "hello",
        "--endpoint",
        "192.0.2.1:7400",
    ]);
    assert!(!out.ok(), "{}", out.describe());
    assert!(
        out.stderr.contains("needs the running daemon") && out.stderr.contains("agentnet up"),
        "{}",
        out.describe()
    );
    let blank = run(&["trust", "request", &target, "--justification", " "]);
    assert!(
        !blank.ok(),
        "a blank justification was taken: {}",
        blank.describe()
    );
    assert!(
        blank.stderr.contains("the justification is empty"),
        "{}",
        blank.describe()
    );
    let store = StateDir::new(state.path()).load_trust().expect("store");
    assert!(store.peers.is_empty(), "a failed request changed the store");
}

/// The daemon's signals reach its loop: SIGHUP applies a trust store
/// edited on disk while the daemon runs (the peer appears in `status`,
/// and a ping crosses the tunnel), and SIGTERM stops the daemon cleanly
/// (it exits and logs why). Issue 16 moved the signals into a task of
/// their own that forwards them to the loop.
#[test]
fn sighup_applies_a_trust_store_edited_on_disk_and_sigterm_stops_the_daemon() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let Pair { a, b, id_a, id_b } = pair(&lab, [78, 6]);
    b.trust_add(&id_a, "a", None).expect("b trusts a");
    let pid_a = a.daemon_pid().unwrap_or_else(|e| panic!("{e}"));

    step("a's trust store gains b on disk, behind the daemon's back");
    let own_id = id_a.id.parse().expect("a's id");
    let update = agentnet::core::trust::store::TrustUpdate {
        id: id_b.id.parse().expect("b's id"),
        name: "b".into(),
        endpoint: Some(b.endpoint().to_string()),
        allow: Some(agentnet::core::policy::Policy::All),
    };
    StateDir::new(a.state_dir())
        .trust_update(&own_id, update)
        .expect("edit a's trust store");
    let status = a.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        peer_in_status(&status, &id_b.id).is_none(),
        "the daemon applied the file before SIGHUP: {status}"
    );

    step("SIGHUP: the daemon applies it");
    support::signal_pid(pid_a, nix::sys::signal::Signal::SIGHUP);
    wait_until("b in a's status after SIGHUP", CONNECT_TIMEOUT, || {
        a.status()
            .is_ok_and(|status| peer_in_status(&status, &id_b.id).is_some())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_excerpt(20)));
    let target = id_b.address.to_string();
    wait_until(
        "a ping from a to b over the overlay",
        CONNECT_TIMEOUT,
        || {
            lab.exec(&a.host.ns, &["ping", "-c", "1", "-W", "1", &target])
                .is_ok_and(|out| out.ok())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}\n{}", a.log_excerpt(20), b.log_excerpt(20)));
    assert!(
        support::pid_alive(pid_a),
        "SIGHUP stopped the daemon\n{}",
        a.log_excerpt(20)
    );

    step("a broken trust.toml and SIGHUP: the daemon keeps the peers it has");
    let trust_file = a.state_dir().join("trust.toml");
    let good_store = std::fs::read(&trust_file).expect("read a's trust.toml");
    std::fs::write(&trust_file, "[[peer]] nonsense\n").expect("break a's trust.toml");
    support::signal_pid(pid_a, nix::sys::signal::Signal::SIGHUP);
    wait_until("the reload's complaint in a's log", CONNECT_TIMEOUT, || {
        a.log().contains("cannot load the trust store")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_excerpt(20)));
    let status = a.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        peer_in_status(&status, &id_b.id).is_some(),
        "a broken file on SIGHUP dropped b: {status}"
    );

    step("SIGTERM: the daemon stops and says why");
    support::signal_pid(pid_a, nix::sys::signal::Signal::SIGTERM);
    wait_until("a's daemon to exit after SIGTERM", CONNECT_TIMEOUT, || {
        !support::pid_alive(pid_a)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", a.log_excerpt(20)));
    let log = a.log();
    assert!(
        log.lines()
            .any(|line| line.contains("shutting down") && line.contains("SIGTERM")),
        "no clean shutdown on SIGTERM in the log\n{}",
        a.log_excerpt(20)
    );

    step("up refuses the broken trust.toml instead of starting with no peers");
    let port = a.port.to_string();
    let refused = a
        .cli(&["up", "--interface", &a.iface, "--port", &port])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !refused.ok(),
        "up started on a broken trust.toml: {}",
        refused.describe()
    );
    assert!(
        refused.stderr.contains("trust.toml"),
        "the error does not name the file: {}",
        refused.describe()
    );
    assert!(a.status().is_err(), "a daemon answers after the refused up");
    std::fs::write(&trust_file, good_store).expect("restore a's trust.toml");
    a.up().unwrap_or_else(|e| panic!("{e}"));
    let status = a.status().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        peer_in_status(&status, &id_b.id).is_some(),
        "b missing after up: {status}"
    );
}
