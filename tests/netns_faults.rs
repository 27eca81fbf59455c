//! Faults on real hosts (issue 9): the daemon killed with SIGKILL and
//! started again, a rendezvous server restarted under running sessions, an
//! agent's underlay address changing in the middle of a download, the
//! state directory on a full file system, and a foreground daemon whose log
//! reader went away.
//!
//! They need root (namespaces, TUN, mounts). Without it they say why and
//! pass as skipped, unless `AGENTNET_REQUIRE_NETNS=1` (CI). All traffic
//! stays inside the lab's namespaces; the full file system is a small tmpfs
//! mounted in a private mount namespace (it vanishes with its last process).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agentnet::state::StateDir;
use support::agent::{Agent, Identity, peer_in_status};
use support::http::BackgroundDownload;
use support::natlab::{
    NATLAB_TOOLS, NatLab, Pinger, overlay_ping, peer_path, rendezvous_entry, start_agent,
    trust_each_other, wait_path, wait_registered,
};
use support::{Host, Lab, pid_alive, say, signal_pid, step, wait_for, wait_until};

/// Programs these tests run inside the namespaces.
const TOOLS: &[&str] = &[
    "tc", "ping", "python3", "ss", "sysctl", "curl", "nsenter", "mount", "dd",
];

/// The bound: sessions are back this long after the restart began.
const RESTART_BOUND: Duration = Duration::from_secs(5);

/// How long a restarted rendezvous may take to see its agents again: their
/// next registration goes over the old session, which the new server does
/// not know; 15 s without an answer makes the agent handshake afresh.
const REREGISTER_TIMEOUT: Duration = Duration::from_secs(35);

/// Port of the HTTP server of the roaming download.
const HTTP_PORT: u16 = 8080;

/// The download that the address change interrupts: 6 MiB at 768 KiB/s,
/// about 8 s.
const DOWNLOAD_BYTES: usize = 6 << 20;
const DOWNLOAD_RATE: &str = "768K";

fn tools() -> Vec<&'static str> {
    let mut all: Vec<&str> = NATLAB_TOOLS.to_vec();
    all.extend(TOOLS.iter().filter(|t| !NATLAB_TOOLS.contains(t)));
    all
}

fn must<T>(result: Result<T, String>) -> T {
    result.unwrap_or_else(|e| panic!("{e}"))
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Two agents on one L2 segment that trust each other with endpoints, up
/// and connected (a first ping came back).
fn connected_pair<'l>(
    lab: &'l Lab,
    net: [u8; 2],
    a_endpoint_at_b: bool,
) -> (Agent<'l>, Identity, Agent<'l>, Identity) {
    let hosts: Vec<Host> = must(lab.bridge_segment(net, &["a", "b"]));
    let a = must(Agent::new(lab, &hosts[0], "alpha"));
    let b = must(Agent::new(lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let (id_a, id_b) = (must(a.id()), must(b.id()));
    must(a.trust_add(&id_b, "bravo", Some(b.endpoint())));
    let endpoint_a = a_endpoint_at_b.then(|| a.endpoint());
    must(b.trust_add(&id_a, "alpha", endpoint_a));
    must(a.up());
    must(b.up());
    must(wait_until(
        "a first ping A -> B",
        Duration::from_secs(15),
        || overlay_ping(lab, &a, &id_b),
    ));
    (a, id_a, b, id_b)
}

fn session_up(agent: &Agent, peer: &Identity) -> bool {
    agent.status().ok().is_some_and(|status| {
        peer_in_status(&status, &peer.id).is_some_and(|p| p["session_established"] == true)
    })
}

/// SIGKILL leaves the PID file and the control socket behind; `up` again
/// must not trip over them, and the session must be back within 5 s.
#[test]
fn killed_daemon_restarts_with_stale_files_and_reconnects_within_5_s() {
    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let lab = must(Lab::new());
    let (a, id_a, b, id_b) = connected_pair(&lab, [91, 1], true);
    let pid = must(a.daemon_pid());
    signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
    must(wait_until(
        "the killed daemon to be gone",
        Duration::from_secs(5),
        || !pid_alive(pid),
    ));
    step("daemon A killed with SIGKILL");
    let state = a.state_dir();
    assert!(
        state.join("agentnet.pid").exists(),
        "the crash leaves a PID file"
    );
    assert!(
        state.join("agentnet.sock").exists(),
        "the crash leaves a socket file"
    );
    must(wait_until(
        "the TUN to go with the process",
        Duration::from_secs(5),
        || !lab.link_exists(&a.host.ns, &a.iface),
    ));

    let started = Instant::now();
    must(a.up());
    let up_took = started.elapsed();
    must(wait_until(
        "a ping A -> B after the restart",
        RESTART_BOUND * 2,
        || overlay_ping(&lab, &a, &id_b),
    ));
    let ping_back = started.elapsed();
    must(wait_until(
        "both sessions up again",
        RESTART_BOUND * 2,
        || session_up(&a, &id_b) && session_up(&b, &id_a),
    ));
    let both = started.elapsed();
    assert!(
        overlay_ping(&lab, &b, &id_a),
        "B reaches the restarted A over the overlay"
    );
    say(&format!(
        "faults | SIGKILL + `up`: up returned after {}, first ping A -> B after {}, both \
         sessions up after {}",
        secs(up_took),
        secs(ping_back),
        secs(both)
    ));
    assert!(
        both <= RESTART_BOUND,
        "sessions took {} to come back (bound {})",
        secs(both),
        secs(RESTART_BOUND)
    );
    assert_ne!(must(a.daemon_pid()), pid, "a new daemon answers");
    // The restarted daemon replaced its predecessor's names block.
    let hosts = std::fs::read_to_string(Path::new("/etc/netns").join(&a.host.ns).join("hosts"))
        .unwrap_or_default();
    let blocks = hosts
        .matches(&format!("# BEGIN agentnet {}", id_a.id))
        .count();
    assert_eq!(blocks, 1, "one names block for A, not two:\n{hosts}");

    // Killed again, A cannot say goodbye: B's session to it looks alive for
    // minutes. Once B's traffic has gone unanswered past 15 s, B's status
    // says A is silent instead of showing the path it last answered on.
    let pid = must(a.daemon_pid());
    signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    must(wait_until(
        "B to report the killed A silent",
        Duration::from_secs(30),
        || {
            overlay_ping(&lab, &b, &id_a);
            b.status().ok().is_some_and(|status| {
                peer_in_status(&status, &id_a.id).is_some_and(|p| p["silent_s"].is_number())
            })
        },
    ));
    say(&format!(
        "faults | A killed again: B reports it silent after {}",
        secs(killed.elapsed())
    ));
    let text = must(b.cli_ok(&["status"])).stdout;
    let row = text
        .lines()
        .find(|line| line.starts_with("alpha "))
        .unwrap_or_else(|| panic!("no row for alpha:\n{text}"));
    assert!(
        row.contains(" silent ") && !row.contains(" direct "),
        "{text}"
    );
    assert!(text.contains("alpha ("), "{text}");
    assert!(text.contains("): no answer for "), "{text}");
    must(b.down());
}

/// A rendezvous server killed and started again with its state directory:
/// the direct session between two agents carries on untouched (no lost
/// ping, no new handshake), and both agents register again.
#[test]
fn rendezvous_restart_keeps_direct_sessions_and_agents_register_again() {
    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let nat = must(NatLab::new());
    let lab = &nat.lab;
    let rv = must(nat.rendezvous("rv1"));
    let mut agents = Vec::new();
    for role in ["a", "b"] {
        let host = must(nat.public_host(role));
        must(nat.wait_reachable(&host, rv.host.ip));
        let agent = must(Agent::new(lab, &host, &format!("host-{role}")));
        let id = must(start_agent(&agent, &[&rv]));
        must(wait_registered(&agent, 1));
        agents.push((agent, id));
    }
    let (b, id_b) = agents.pop().expect("b");
    let (a, id_a) = agents.pop().expect("a");
    must(trust_each_other(&a, &id_a, &b, &id_b));
    must(wait_until(
        "a first ping A -> B",
        Duration::from_secs(20),
        || overlay_ping(lab, &a, &id_b),
    ));
    let before_a = must(wait_path(&a, &id_b, "direct", Duration::from_secs(15)));
    let before_b = must(wait_path(&b, &id_a, "direct", Duration::from_secs(15)));

    let pinger = must(Pinger::start(lab, &a, &id_b, "0.2"));
    must(wait_until("pings flowing", Duration::from_secs(5), || {
        pinger.counts().0 >= 5
    }));
    let before = pinger.counts();
    nat.kill_rendezvous(&rv);
    step("rendezvous killed");
    // Its registrations lapse: the agents notice it is gone.
    must(wait_until(
        "both agents to see the rendezvous gone",
        Duration::from_secs(20),
        || {
            [&a, &b].iter().all(|agent| {
                agent
                    .status()
                    .ok()
                    .and_then(|s| rendezvous_entry(&s, &rv))
                    .is_some_and(|entry| entry["registered"] == false)
            })
        },
    ));
    step("agents see the rendezvous gone");
    must(nat.restart_rendezvous(&rv));
    let restarted = Instant::now();
    let mut seen = Vec::new();
    for agent in [&a, &b] {
        let status = must(wait_for(
            &format!("{} registered again", agent.name),
            REREGISTER_TIMEOUT,
            || {
                let status = agent.status().ok()?;
                let entry = rendezvous_entry(&status, &rv)?;
                (entry["registered"] == true).then_some(entry)
            },
        ));
        seen.push((restarted.elapsed(), status));
    }
    let (ok, lost, gap) = pinger.stop();
    let after_a = peer_path(&a, &id_b).unwrap_or_default();
    let after_b = peer_path(&b, &id_a).unwrap_or_default();
    say(&format!(
        "faults | rendezvous restart: {} replies / {} lost since the kill (longest gap {}), \
         handshakes A {} -> {}, B {} -> {}; registered again after {} (A) and {} (B), \
         reflexive {} / {}, transport {} / {}",
        ok - before.0,
        lost - before.1,
        gap,
        before_a.handshakes,
        after_a.handshakes,
        before_b.handshakes,
        after_b.handshakes,
        secs(seen[0].0),
        secs(seen[1].0),
        seen[0].1["reflexive"],
        seen[1].1["reflexive"],
        seen[0].1["transport"],
        seen[1].1["transport"],
    ));
    assert_eq!(
        after_a.path, "direct",
        "A -> B stays direct: {}",
        after_a.json
    );
    assert_eq!(
        after_b.path, "direct",
        "B -> A stays direct: {}",
        after_b.json
    );
    assert_eq!(
        after_a.handshakes, before_a.handshakes,
        "the direct session was not renegotiated"
    );
    assert_eq!(
        lost - before.1,
        0,
        "pings were lost while the rendezvous was away"
    );
    for (_, entry) in &seen {
        let reflexive: Option<SocketAddr> =
            entry["reflexive"].as_str().and_then(|r| r.parse().ok());
        assert!(reflexive.is_some(), "a reflexive endpoint again: {entry}");
    }
}

/// A's underlay address changes while it downloads from B over the overlay
/// (a new address is added, the old one deleted, as on a network change):
/// B follows A's new endpoint and the download completes intact.
#[test]
fn underlay_address_change_mid_download_roams_and_the_transfer_completes() {
    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let lab = must(Lab::new());
    let (a, id_a, b, id_b) = connected_pair(&lab, [91, 3], true);
    // The move must happen mid-download: 6 MiB at 8 Mbit/s take 6 s.
    must(lab.shape_egress(&b.host, "8mbit"));
    let download = must(BackgroundDownload::start(
        &lab,
        &a,
        (&b, id_b.address, HTTP_PORT),
        DOWNLOAD_BYTES,
        DOWNLOAD_RATE,
        Duration::from_secs(90),
    ));
    let size = || download.size();
    must(wait_until(
        "the download to pass 1 MiB",
        Duration::from_secs(15),
        || size() >= 1 << 20,
    ));

    // Move A to a new address on the same link: add it, delete the old one
    // (promote_secondaries keeps the new one when the old primary goes).
    let old = a.host.ip;
    let octets = old.octets();
    let new = std::net::Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3] + 100);
    let ns = &a.host.ns;
    must(lab.exec_ok(
        ns,
        &["sysctl", "-qw", "net.ipv4.conf.all.promote_secondaries=1"],
    ));
    must(lab.exec_ok(
        ns,
        &["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"],
    ));
    must(lab.exec_ok(
        ns,
        &["ip", "addr", "add", &format!("{new}/24"), "dev", "eth0"],
    ));
    must(lab.exec_ok(
        ns,
        &["ip", "addr", "del", &format!("{old}/24"), "dev", "eth0"],
    ));
    let moved_at = Instant::now();
    let at_move = size();
    step(&format!(
        "A moved from {old} to {new} at {} KiB",
        at_move >> 10
    ));
    let expected = SocketAddr::from((new, a.port));
    must(wait_until(
        "B to follow A to its new endpoint",
        Duration::from_secs(10),
        || {
            b.status().ok().is_some_and(|s| {
                peer_in_status(&s, &id_a.id)
                    .and_then(|p| p["endpoint"].as_str().and_then(|e| e.parse().ok()))
                    == Some(expected)
            })
        },
    ));
    let roamed = moved_at.elapsed();
    must(wait_until(
        "the download to go on after the move",
        Duration::from_secs(10),
        || size() >= at_move + (512 << 10),
    ));
    let (body, got, curl_err) = must(download.finish(Duration::from_secs(60)));
    say(&format!(
        "faults | roaming: B saw A's new endpoint {expected} after {}, download {} of {} bytes",
        secs(roamed),
        got.len(),
        body.len()
    ));
    assert!(
        got == body,
        "the download did not survive the move: {} of {} bytes, curl said: {curl_err}",
        got.len(),
        body.len()
    );
}

/// The state directory on a full file system (a 1 MiB tmpfs): `trust add`
/// fails with a clear message, through the daemon and without it, and
/// trust.toml keeps its old, parseable contents with no temp file left.
#[test]
fn full_state_disk_fails_trust_add_clearly_and_never_corrupts_the_store() {
    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let lab = must(Lab::new());
    let hosts = must(lab.bridge_segment([91, 5], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let peer_one = must(Agent::new(&lab, &hosts[1], "one"));
    let peer_two = must(Agent::new(&lab, &hosts[1], "two"));
    must(peer_one.init());
    must(peer_two.init());
    let (one, two) = (must(peer_one.id()), must(peer_two.id()));

    // A process that holds a private mount namespace with a 1 MiB tmpfs
    // over A's state directory; every A command enters it.
    let state = a.state_dir().to_str().expect("utf-8 path").to_string();
    let mounted = lab.dir().join("mounted");
    let script = format!(
        "mount -t tmpfs -o size=1m,mode=0700 agentnet-full-test {state} && touch {} && exec sleep 300",
        mounted.display()
    );
    let holder = must(lab.spawn(&a.host.ns, "tmpfs-holder", &["sh", "-c", &script]));
    must(wait_until(
        "the tmpfs to be mounted",
        Duration::from_secs(10),
        || mounted.exists() || !lab.spawn_running(holder),
    ));
    assert!(
        lab.spawn_running(holder),
        "mount failed: {:?}",
        lab.spawn_output(holder)
    );
    let holder_text = holder.to_string();
    let inside = ["nsenter", "-t", holder_text.as_str(), "-m", "--"];
    let cli = |args: &[&str]| must(a.cli_wrapped(&inside, args));
    let cli_ok = |args: &[&str]| {
        let out = cli(args);
        assert!(out.ok(), "{}", out.describe());
        out
    };
    // The test reads the tmpfs through the holder's root.
    let seen = Path::new("/proc")
        .join(&holder_text)
        .join("root")
        .join(state.trim_start_matches('/'));

    cli_ok(&["init", "--name", "alpha"]);
    cli_ok(&["trust", "add", &one.id, "--name", "one"]);
    let port = a.port.to_string();
    cli_ok(&["up", "--interface", &a.iface, "--port", &port]);
    let before = std::fs::read(seen.join("trust.toml")).expect("trust.toml through /proc");

    // Fill it up.
    let fill = cli_fill(&lab, &a, &inside, &state, "filler");
    step(&format!("tmpfs filled: {fill}"));

    let refused = cli(&["trust", "add", &two.id, "--name", "two"]);
    assert!(
        !refused.ok(),
        "trust add on a full disk succeeded: {}",
        refused.describe()
    );
    let message = refused.stderr.to_lowercase();
    say(&format!(
        "faults | full disk, through the daemon: {}",
        refused.stderr.trim()
    ));
    assert!(
        message.contains("no space left") && message.contains("trust.toml"),
        "not a clear message: {}",
        refused.stderr
    );
    assert!(message.contains("unchanged"), "{}", refused.stderr);
    let status = cli(&["status", "--json"]);
    assert!(
        status.ok(),
        "the daemon survives a full disk: {}",
        status.describe()
    );
    check_store(&seen, &before, &one);

    cli_ok(&["down"]);
    // The daemon's socket and PID file are gone: fill what they freed.
    cli_fill(&lab, &a, &inside, &state, "filler2");
    let refused = cli(&["trust", "add", &two.id, "--name", "two"]);
    assert!(!refused.ok(), "offline trust add on a full disk succeeded");
    say(&format!(
        "faults | full disk, without the daemon: {}",
        refused.stderr.trim()
    ));
    assert!(
        refused.stderr.to_lowercase().contains("no space left"),
        "{}",
        refused.stderr
    );
    check_store(&seen, &before, &one);

    // Space again: the same command works.
    std::fs::remove_file(seen.join("filler")).expect("remove filler");
    std::fs::remove_file(seen.join("filler2")).expect("remove filler2");
    cli_ok(&["trust", "add", &two.id, "--name", "two"]);
    let store = StateDir::new(&seen).load_trust().expect("parses");
    assert_eq!(store.peers.len(), 2, "{store:?}");
    lab.stop(holder);
}

/// Fills the tmpfs at `state` (as seen from inside `wrapper`) to the last
/// page with a new `file`; returns dd's summary.
fn cli_fill(lab: &Lab, a: &Agent, wrapper: &[&str], state: &str, file: &str) -> String {
    let target = format!("of={state}/{file}");
    let mut args: Vec<&str> = wrapper.to_vec();
    args.extend(["dd", "if=/dev/zero", &target, "bs=4k"]);
    let out = must(lab.exec(&a.host.ns, &args));
    assert!(
        out.stderr.contains("No space left"),
        "dd should end on a full file system: {}",
        out.describe()
    );
    out.stderr.lines().last().unwrap_or_default().to_string()
}

/// trust.toml is byte for byte what it was, parses, lists `one`, and no
/// temp file is left beside it.
fn check_store(dir: &Path, before: &[u8], one: &Identity) {
    let now = std::fs::read(dir.join("trust.toml")).expect("trust.toml still there");
    assert_eq!(now, before, "trust.toml changed on a full disk");
    let store = StateDir::new(dir).load_trust().expect("trust.toml parses");
    assert_eq!(store.peers.len(), 1);
    assert_eq!(store.peers[0].id.to_string(), one.id);
    let leftovers: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

/// A foreground daemon whose stderr reader went away (`up --foreground
/// 2>&1 | head -1`) keeps running: the log lines it can no longer write
/// are lost, not fatal.
#[test]
fn a_foreground_daemon_survives_its_log_reader_going_away() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let hosts: Vec<Host> = must(lab.bridge_segment([79, 9], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let b = must(Agent::new(&lab, &hosts[1], "bravo"));
    must(a.init());
    must(b.init());
    let id_b = must(b.id());
    let bin = support::agent::agentnet_bin();
    let state = a.state_dir().to_string_lossy().into_owned();
    let port = a.port.to_string();
    let args = [
        bin.to_str().expect("utf-8 path"),
        "--state-dir",
        &state,
        "up",
        "--foreground",
        "--names",
        "off",
        "--interface",
        &a.iface,
        "--port",
        &port,
    ];
    let child = lab
        .command(&a.host.ns, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut daemon = KillOnDrop(child);

    step("read the first log line, then close the pipe");
    let stderr = daemon.0.stderr.take().expect("piped stderr");
    let mut first = String::new();
    BufReader::new(stderr)
        .read_line(&mut first)
        .expect("a first log line");
    assert!(!first.is_empty(), "the daemon wrote no log line");
    must(wait_until(
        "the daemon to answer",
        Duration::from_secs(15),
        || a.status().is_ok(),
    ));

    step("make it log: a trust change, then a status");
    must(a.trust_add(&id_b, "bravo", Some(b.endpoint())));
    let status = must(a.status());
    assert!(
        peer_in_status(&status, &id_b.id).is_some(),
        "the trust change did not apply: {status}"
    );
    assert!(
        matches!(daemon.0.try_wait(), Ok(None)),
        "the daemon died when its log reader went away: {:?}",
        daemon.0.try_wait()
    );

    step("down stops it cleanly");
    must(a.down());
    let exit = must(wait_for(
        "the daemon to exit",
        Duration::from_secs(15),
        || daemon.0.try_wait().ok().flatten(),
    ));
    assert!(exit.success(), "the daemon exited with {exit}");
}

/// A second agent of the same network in one namespace is refused, naming
/// the interface that holds the network: both would route it, and the
/// kernel would send every overlay packet to one of them.
#[test]
fn a_second_agent_of_the_network_in_one_namespace_is_refused() {
    let Some(()) = support::netns_ready!(&tools()) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let hosts: Vec<Host> = must(lab.bridge_segment([79, 10], &["a", "b"]));
    let a = must(Agent::new(&lab, &hosts[0], "alpha"));
    let c = must(Agent::new(&lab, &hosts[0], "carol"));
    must(a.init());
    must(c.init());
    must(a.up());
    // The lab names a host's interface once; carol's gets a suffix.
    let iface_c = format!("{}c", c.iface);
    let refused = must(c.cli(&["up", "--interface", &iface_c, "--port", "7402"]));
    assert!(
        !refused.ok(),
        "a second agent started: {}",
        refused.describe()
    );
    assert!(
        refused.stderr.contains(&a.iface)
            && refused.stderr.contains("another agent of this network"),
        "the refusal does not say why: {}",
        refused.describe()
    );
    assert!(c.status().is_err(), "the refused agent answers");
    must(a.status());
}

/// A child the test started: killed and reaped if the test ends early.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
