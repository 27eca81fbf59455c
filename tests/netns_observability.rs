//! Observability end to end on real hosts (network namespaces, the real
//! binary): `status --json` fields for a live peer, the Prometheus endpoints
//! of an agent and a rendezvous (parsed here), `agentnet ping`, loss injected
//! with nftables showing up in `status`, and JSON logs without key material.
//!
//! Needs root; skips (or fails with `AGENTNET_REQUIRE_NETNS=1`) otherwise.
//! All traffic stays inside the lab's namespaces.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::{AGENT_PORT, Identity, peer_in_status};
use support::{Agent, Lab, step, wait_for, wait_until};

const TOOLS: &[&str] = &["ping", "curl", "nft"];
/// Underlay subnet: `10.78.0.0/24`.
const UNDERLAY: [u8; 2] = [78, 0];
/// Where each agent serves metrics, inside its own namespace.
const METRICS: &str = "127.0.0.1:9464";
/// Where the rendezvous serves metrics (in host a's namespace).
const RENDEZVOUS_METRICS: &str = "127.0.0.1:9465";
/// Loss injected by nftables on b's input, in percent.
const INJECTED_LOSS: u32 = 20;
/// How soon the injected loss must show in `status`.
const LOSS_VISIBLE_WITHIN: Duration = Duration::from_secs(10);

#[test]
fn status_metrics_ping_and_injected_loss_are_visible() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    step(&format!("lab {}: veth pair a <-> b", lab.prefix()));
    let [host_a, host_b] = lab.veth_pair(UNDERLAY, ["a", "b"], 1500).expect("hosts");
    let a = Agent::new(&lab, &host_a, "alice").expect("agent a");
    let b = Agent::new(&lab, &host_b, "bob").expect("agent b");
    for agent in [&a, &b] {
        agent.init().expect("init");
        let port = AGENT_PORT.to_string();
        agent
            .cli_ok(&[
                "--log-format",
                "json",
                "up",
                "--interface",
                &agent.iface,
                "--port",
                &port,
                "--metrics",
                METRICS,
            ])
            .expect("up with metrics");
    }
    let (id_a, id_b) = (a.id().expect("id a"), b.id().expect("id b"));
    a.trust_add(&id_b, "bob", Some(b.endpoint()))
        .expect("a trusts b");
    b.trust_add(&id_a, "alice", None).expect("b trusts a");

    // A ping every 10 ms: ~590 packets in the 10-s window the loss check
    // reads (measured), so a binomial 20 % stays well inside its 10-30 %
    // band (sd 1.6 %). At 50 ms, ~180 packets, the sd was 3 % and a CI run
    // read 30.6 %.
    step("overlay traffic: ping6 a -> b every 10 ms");
    let target = id_b.address.to_string();
    wait_until(
        "the first overlay ping a -> b",
        Duration::from_secs(20),
        || {
            lab.exec(
                &a.host.ns,
                &["ping", "-6", "-n", "-c", "1", "-W", "1", &target],
            )
            .is_ok_and(|o| o.ok())
        },
    )
    .expect("overlay up");
    let flood = lab
        .spawn(
            &a.host.ns,
            "ping-flood",
            &["ping", "-6", "-n", "-q", "-i", "0.01", "-w", "90", &target],
        )
        .expect("ping flood");

    let mut failures = Vec::new();
    let mut check = |phase: &str, result: Result<(), String>| match result {
        Ok(()) => step(&format!("{phase}: ok")),
        Err(e) => {
            step(&format!("{phase}: FAILED"));
            failures.push(format!("== {phase} ==\n{e}"));
        }
    };
    check("status --json of a live peer", live_peer_status(&a, &id_b));
    check("agentnet ping -c 5", ping_five(&a, &b));
    check(
        "agent metrics are valid Prometheus text",
        agent_metrics(&lab, &a),
    );
    check(
        "metrics refuse a non-loopback address",
        metrics_refuse_remote(&a),
    );
    check(
        "rendezvous metrics are valid Prometheus text",
        rendezvous_metrics(&lab, &a),
    );
    check(
        "injected loss shows up in status",
        injected_loss_is_visible(&lab, &b, &id_a),
    );
    check("logs are JSON lines without keys", logs_are_clean(&a, &b));
    lab.stop(flood);
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Every field issue 6 asks for, on a's view of b while traffic flows.
fn live_peer_status(a: &Agent, id_b: &Identity) -> Result<(), String> {
    // RTT pings go out once a second while traffic flows.
    let (status, peer) = wait_for("an RTT measurement of b", Duration::from_secs(10), || {
        let status = a.status().ok()?;
        let peer = peer_in_status(&status, &id_b.id)?.clone();
        peer["rtt"]["samples"]
            .as_u64()
            .filter(|n| *n >= 2)
            .map(|_| (status, peer))
    })?;
    step(&format!("a's view of b: {peer:#}"));
    let mtu = &status["mtu"];
    let number = |pointer: &str| peer.pointer(pointer).and_then(Value::as_f64);
    let mut missing = Vec::new();
    for pointer in [
        "/rtt/last_ms",
        "/rtt/smoothed_ms",
        "/rtt/min_ms",
        "/rtt/variation_ms",
        "/rtt_direct/smoothed_ms",
        "/receive/loss",
        "/receive/reordering",
        "/receive/window/expected",
        "/receive/window/received",
        "/receive/total/duplicates",
        "/receive/total/reordered",
        "/pings/sent",
        "/rx_bytes",
        "/tx_bytes",
        "/rx_packets",
        "/tx_packets",
        "/drops/policy",
        "/drops/replay",
        "/drops/spoofed",
        "/drops/decrypt",
        "/drops/mtu",
        "/handshake/completed",
        "/handshake/last_duration_ms",
        "/handshake/last_unix_s",
        "/path_changes",
        "/path_since_unix_s",
        "/path_history/0/at_unix_s",
        "/mtu",
    ] {
        if number(pointer).is_none() {
            missing.push(pointer);
        }
    }
    if !missing.is_empty() {
        return Err(format!("missing or not numbers: {missing:?} in {peer:#}"));
    }
    let expect = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{what}: {peer:#}"))
        }
    };
    expect(peer["path"] == "direct", "path is not direct")?;
    expect(
        peer["path_history"][0]["path"] == "direct",
        "the history does not show the direct path",
    )?;
    expect(
        peer["path_history"][0]["via"] == peer["endpoint"],
        "the history does not name the endpoint",
    )?;
    expect(peer["session_established"] == true, "no session")?;
    expect(
        number("/rx_packets") > Some(10.0) && number("/tx_packets") > Some(10.0),
        "no traffic counted",
    )?;
    expect(
        number("/rtt/smoothed_ms").is_some_and(|ms| ms > 0.0 && ms < 100.0),
        "implausible RTT on a veth",
    )?;
    expect(number("/receive/loss") == Some(0.0), "loss on a clean veth")?;
    expect(
        number("/handshake/completed") >= Some(1.0),
        "no handshake counted",
    )?;
    expect(peer["mtu"] == *mtu, "the peer's MTU is not the tunnel MTU")?;
    Ok(())
}

/// `agentnet ping -c 5 bob` prints five replies, each saying the path.
fn ping_five(a: &Agent, b: &Agent) -> Result<(), String> {
    let out = a.cli_ok(&["ping", "-c", "5", "-i", "0.2", "bob"])?;
    step(&format!(
        "agentnet ping -c 5 -i 0.2 bob:\n{}",
        out.stdout.trim_end()
    ));
    let direct = format!("direct {}", b.endpoint());
    let replies: Vec<&str> = out
        .stdout
        .lines()
        .filter(|line| line.starts_with("reply from bob: seq="))
        .collect();
    if replies.len() != 5
        || !replies
            .iter()
            .all(|line| line.contains(&direct) && line.contains(" ms"))
    {
        return Err(format!("expected 5 replies via {direct}:\n{}", out.stdout));
    }
    if !out
        .stdout
        .contains("5 sent, 5 received, 0% loss (5 direct, 0 relayed)")
    {
        return Err(format!("no summary with the loss:\n{}", out.stdout));
    }
    // By either address too, and a name nobody has is an error, not lost
    // pings.
    let id_b = b.id()?;
    let address = id_b.address.to_string();
    a.cli_ok(&["ping", "-c", "1", &address])?;
    let address4 = id_b.json["address4"]
        .as_str()
        .ok_or_else(|| format!("no address4 in b's id: {}", id_b.json))?;
    let by_ipv4 = a.cli_ok(&["ping", "-c", "1", address4])?;
    if !by_ipv4.stdout.contains("reply from bob: seq=") {
        return Err(format!(
            "no reply pinging {address4}:
{}",
            by_ipv4.stdout
        ));
    }
    let unknown = a.cli(&["ping", "-c", "1", "carol"])?;
    if unknown.ok() || !unknown.stderr.contains("no trusted peer") {
        return Err(format!("pinging an unknown name: {}", unknown.describe()));
    }
    Ok(())
}

/// A metric, the labels that pick its series, and what its value must satisfy.
type MetricCheck<'a> = (&'a str, &'a [(&'a str, &'a str)], fn(f64) -> bool);

/// Scrapes `/metrics` inside the agent's namespace.
fn scrape(lab: &Lab, ns: &str, address: &str) -> Result<String, String> {
    let url = format!("http://{address}/metrics");
    let out = lab
        .exec(
            ns,
            &[
                "curl",
                "-sS",
                "--fail",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                "-D",
                "-",
                &url,
            ],
        )?
        .check()?;
    let (head, body) = out.stdout.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    if !head
        .to_ascii_lowercase()
        .contains("content-type: text/plain; version=0.0.4")
    {
        return Err(format!("wrong content type:\n{head}"));
    }
    Ok(body.to_string())
}

fn agent_metrics(lab: &Lab, a: &Agent) -> Result<(), String> {
    let text = scrape(lab, &a.host.ns, METRICS)?;
    let samples = parse_prometheus(&text)?;
    let value = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    };
    let peer = [("peer", "bob")];
    let checks: [MetricCheck; 9] = [
        ("agentnet_peer_rtt_seconds", &peer, |v| v > 0.0 && v < 0.1),
        ("agentnet_peer_up", &peer, |v| v == 1.0),
        ("agentnet_peer_received_packets_total", &peer, |v| v > 10.0),
        ("agentnet_peer_sent_bytes_total", &peer, |v| v > 1000.0),
        ("agentnet_peer_receive_loss_ratio", &peer, |v| {
            (0.0..=1.0).contains(&v)
        }),
        (
            "agentnet_peer_path",
            &[("peer", "bob"), ("path", "direct")],
            |v| v == 1.0,
        ),
        (
            "agentnet_peer_dropped_packets_total",
            &[("peer", "bob"), ("reason", "policy")],
            |v| v == 0.0,
        ),
        (
            "agentnet_peer_handshake_duration_seconds_count",
            &peer,
            |v| v >= 1.0,
        ),
        (
            "agentnet_dropped_packets_total",
            &[("reason", "untrusted")],
            |v| v >= 0.0,
        ),
    ];
    for (name, labels, ok) in checks {
        match value(name, labels) {
            Some(v) if ok(v) => {}
            other => return Err(format!("{name}{labels:?} = {other:?}\n{text}")),
        }
    }
    step(&format!(
        "agent metrics: {} samples, e.g.\n{}",
        samples.len(),
        grep(&text, "agentnet_peer_rtt")
    ));
    Ok(())
}

fn metrics_refuse_remote(a: &Agent) -> Result<(), String> {
    let out = a.cli(&["up", "--metrics", "0.0.0.0:9466"])?;
    if out.ok() || !out.stderr.contains("not a loopback address") {
        return Err(format!("expected a refusal: {}", out.describe()));
    }
    Ok(())
}

/// A rendezvous server with `--metrics` beside agent a; agent b registers.
fn rendezvous_metrics(lab: &Lab, a: &Agent) -> Result<(), String> {
    let state = tempfile::Builder::new()
        .prefix("an-rdv-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let bin = support::agent::agentnet_bin();
    let listen = format!("{}:7300", a.host.ip);
    let server = lab.spawn(
        &a.host.ns,
        "rendezvous",
        &[
            bin.to_str().ok_or("path")?,
            "--state-dir",
            state.path().to_str().ok_or("path")?,
            "rendezvous",
            "--foreground",
            "--listen",
            &listen,
            "--metrics",
            RENDEZVOUS_METRICS,
        ],
    )?;
    let text = wait_for("the rendezvous metrics", Duration::from_secs(10), || {
        scrape(lab, &a.host.ns, RENDEZVOUS_METRICS).ok()
    });
    let (_, log) = lab.stop(server);
    let text = text.map_err(|e| format!("{e}\nrendezvous log:\n{log}"))?;
    let samples = parse_prometheus(&text)?;
    for name in [
        "agentnet_rendezvous_registrations_total",
        "agentnet_rendezvous_relayed_bytes_total",
        "agentnet_rendezvous_registered_agents",
    ] {
        if !samples.iter().any(|s| s.name == name) {
            return Err(format!("no {name}:\n{text}"));
        }
    }
    if !samples.iter().any(|s| {
        s.name == "agentnet_rendezvous_dropped_packets_total"
            && s.labels.get("reason").map(String::as_str) == Some("rate_limited")
    }) {
        return Err(format!("no rate-limit drops series:\n{text}"));
    }
    Ok(())
}

/// nftables drops 20 % of b's incoming UDP: b's view of a shows the loss
/// within 10 s.
fn injected_loss_is_visible(lab: &Lab, b: &Agent, id_a: &Identity) -> Result<(), String> {
    let ruleset = format!(
        "table inet anloss {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
         udp dport {AGENT_PORT} numgen random mod 100 < {INJECTED_LOSS} drop\n  }}\n}}\n"
    );
    let file = lab.dir().join("loss.nft");
    std::fs::write(&file, ruleset).map_err(|e| e.to_string())?;
    let loss_of = |status: &Value| {
        peer_in_status(status, &id_a.id).and_then(|peer| peer.pointer("/receive/loss")?.as_f64())
    };
    let before = loss_of(&b.status()?);
    if before.is_none_or(|loss| loss > 0.02) {
        return Err(format!("loss before the injection: {before:?}"));
    }
    lab.exec_ok(&b.host.ns, &["nft", "-f", file.to_str().ok_or("path")?])?;
    let injected = Instant::now();
    let seen = wait_for("loss in b's status", LOSS_VISIBLE_WITHIN, || {
        let loss = loss_of(&b.status().ok()?)?;
        (loss >= 0.08).then_some(loss)
    });
    let took = injected.elapsed();
    let text = b.cli_ok(&["status"]).map(|o| o.stdout).unwrap_or_default();
    // Settled: the whole window is after the injection.
    std::thread::sleep(Duration::from_secs(11).saturating_sub(took));
    let settled_status = b.status()?;
    let settled = loss_of(&settled_status);
    let window = peer_in_status(&settled_status, &id_a.id)
        .and_then(|peer| peer.pointer("/receive/window"))
        .map(Value::to_string)
        .unwrap_or_default();
    let _ = lab.exec(&b.host.ns, &["nft", "delete", "table", "inet", "anloss"]);
    let seen = seen?;
    step(&format!(
        "injected {INJECTED_LOSS}% loss: status showed {:.1}% after {:.1} s, {:.1}% after 11 s \
         (window {window})\n{}",
        seen * 100.0,
        took.as_secs_f64(),
        settled.unwrap_or(0.0) * 100.0,
        text.trim_end()
    ));
    match settled {
        Some(loss) if (0.10..=0.30).contains(&loss) => Ok(()),
        other => Err(format!(
            "after 11 s the window shows {other:?} ({window}), injected {INJECTED_LOSS}%"
        )),
    }
}

/// Both daemons logged JSON lines, the events with structured fields, and
/// never their secret key.
fn logs_are_clean(a: &Agent, b: &Agent) -> Result<(), String> {
    for agent in [a, b] {
        let log = agent.log();
        let key = std::fs::read_to_string(agent.state_dir().join("identity.key"))
            .map_err(|e| e.to_string())?;
        let key = key.trim();
        if key.len() < 32 || log.contains(key) {
            return Err(format!(
                "{}: the log holds the key (or the key file is odd)",
                agent.name
            ));
        }
        let mut messages = HashSet::new();
        for line in log.lines().filter(|line| line.starts_with('{')) {
            let value: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}: not JSON ({e}): {line}", agent.name))?;
            if let Some(message) = value.pointer("/fields/message").and_then(Value::as_str) {
                messages.insert(message.to_string());
                if message == "session established" && value.pointer("/fields/peer").is_none() {
                    return Err(format!("{}: no peer field: {line}", agent.name));
                }
            }
        }
        for wanted in [
            "agentnet is up",
            "session established",
            "path changed",
            "serving metrics on /metrics",
        ] {
            if !messages.contains(wanted) {
                return Err(format!(
                    "{}: no {wanted:?} in the log:\n{}",
                    agent.name,
                    agent.log_excerpt(40)
                ));
            }
        }
    }
    Ok(())
}

fn grep(text: &str, needle: &str) -> String {
    text.lines()
        .filter(|line| line.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One sample of the text exposition format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text format (0.0.4) as strictly as Prometheus
/// does: valid names, `# TYPE` before a family's samples and once, a
/// family's samples together, escaped label values, float values, no
/// repeated series; and the conventions: counters end in `_total`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut samples = Vec::new();
    if !text.ends_with('\n') {
        return Err("the exposition does not end with a newline".into());
    }
    for (number, line) in text.lines().enumerate() {
        let err = |what: &str| format!("line {}: {what}: {line:?}", number + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let words: Vec<&str> = rest.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !valid_name(name) {
                        return Err(err("bad metric name"));
                    }
                    if !["counter", "gauge", "summary", "histogram", "untyped"].contains(kind) {
                        return Err(err("bad type"));
                    }
                    if *kind == "counter" && !name.ends_with("_total") {
                        return Err(err("a counter's name must end in _total"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err("TYPE given twice"));
                    }
                    if finished.contains(*name) || current.as_deref() == Some(*name) {
                        return Err(err("TYPE after the family's samples"));
                    }
                }
                ["HELP", name, ..] if valid_name(name) => {}
                ["HELP", ..] => return Err(err("bad HELP")),
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| err("no value"))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err("bad metric name"));
        }
        let mut rest = &line[name_end..];
        let mut labels = HashMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let mut chars = body.char_indices().peekable();
            let end = loop {
                let Some((start, c)) = chars.next() else {
                    return Err(err("unterminated labels"));
                };
                if c == '}' {
                    break start + 1;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                if !valid_name(&key) || key.contains(':') {
                    return Err(err("bad label name"));
                }
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(err("label value not quoted"));
                }
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, '"')) => break,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => value.push('\\'),
                            Some((_, '"')) => value.push('"'),
                            Some((_, 'n')) => value.push('\n'),
                            _ => return Err(err("bad escape in a label value")),
                        },
                        Some((_, c)) => value.push(c),
                        None => return Err(err("unterminated label value")),
                    }
                }
                if labels.insert(key, value).is_some() {
                    return Err(err("label given twice"));
                }
            };
            rest = &body[end..];
        }
        let mut fields = rest.split_whitespace();
        let value = match fields.next() {
            Some("NaN") => f64::NAN,
            Some("+Inf") => f64::INFINITY,
            Some("-Inf") => f64::NEG_INFINITY,
            Some(text) => text.parse::<f64>().map_err(|_| err("bad value"))?,
            None => return Err(err("no value")),
        };
        if let Some(timestamp) = fields.next()
            && timestamp.parse::<i64>().is_err()
        {
            return Err(err("bad timestamp"));
        }
        if fields.next().is_some() {
            return Err(err("trailing text"));
        }
        let family = ["_sum", "_count", "_bucket"]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                matches!(
                    types.get(base).map(String::as_str),
                    Some("summary" | "histogram")
                )
                .then_some(base)
            })
            .unwrap_or(name)
            .to_string();
        if !types.contains_key(&family) {
            return Err(err("sample without a TYPE"));
        }
        if current.as_deref() != Some(family.as_str()) {
            if finished.contains(&family) {
                return Err(err("the family's samples are not together"));
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished.insert(previous);
            }
        }
        let mut key: Vec<(String, String)> =
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        key.sort();
        if !series.insert((name.to_string(), key)) {
            return Err(err("the same series twice"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    if samples.is_empty() {
        return Err("no samples".into());
    }
    Ok(samples)
}
