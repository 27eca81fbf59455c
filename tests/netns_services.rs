//! Services advertised among trusted agents (issue 15), end to end in
//! network namespaces: bravo runs the official `mcp` SDK's server on its
//! defaults (loopback, Host checks on; `tests/apps/mcp_server.py`), serves
//! it with `serve --http` and advertises it as an MCP service, and runs the
//! official a2a-sdk's echo agent (`tests/apps/a2a_server.py`) advertised as
//! an A2A agent; alpha, which trusts bravo and is trusted fully, finds both
//! with `agentnet services --json` within a second, uses the advertised
//! MCP URL by name with the SDK's client, and reads the A2A agent's card
//! with `services --cards` and through `agentnet mcp`; delta, allowed
//! only `tcp:9999` on bravo, sees only the A2A service; charlie, whom bravo
//! does not trust, sees nothing; revocation removes the services on either
//! side. The resolver answers DNS-SD for them: `dig SRV
//! _mcp._tcp.bravo.agent.internal` and browsing on alpha, NXDOMAIN on
//! charlie, the A2A agent only on delta.
//!
//! Needs root (skips with a reason otherwise, unless
//! `AGENTNET_REQUIRE_NETNS=1`). All traffic stays inside the lab.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::agent::Identity;
use support::apps::{Python, agentnet_mcp_session, apps_dir, mcp_success, path_str};
use support::{Agent, Lab, step, wait_until};

/// Programs run inside the namespaces.
const TOOLS: &[&str] = &["ping", "ss", "dig"];
/// Underlay subnet: `10.76.0.0/24`.
const UNDERLAY: [u8; 2] = [76, 0];
const MCP_PORT: u16 = 8000;
const A2A_PORT: u16 = 9999;
/// Where the a2a-sdk serves its Agent Card (the current A2A spec's path).
const A2A_CARD_PATH: &str = "/.well-known/agent-card.json";
/// Python modules of the A2A agent, the MCP server and the MCP host (from the venv).
const APP_MODULES: &[&str] = &["a2a", "uvicorn", "mcp"];
/// How long an app may take to listen (Python imports included).
const APP_LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// First contact: the handshake and the first packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// What the issue promises for a change to reach a peer.
const PROPAGATION: Duration = Duration::from_secs(1);

#[test]
fn trusted_peers_find_advertised_services_by_policy_and_lose_them_on_revocation() {
    let Some(python) = support::netns_ready!(TOOLS, Python(APP_MODULES)) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    if let Err(e) = run(&lab, &python) {
        panic!("{e}");
    }
}

/// `agentnet services --json` of `agent`.
fn services(agent: &Agent) -> Result<Vec<Value>, String> {
    let out = agent.cli_ok(&["services", "--json"])?;
    match serde_json::from_str(&out.stdout) {
        Ok(Value::Array(list)) => Ok(list),
        _ => Err(format!(
            "`services --json` is no JSON array:\n{}",
            out.stdout
        )),
    }
}

/// The URLs in `agent`'s `services --json`.
fn urls(agent: &Agent) -> Vec<String> {
    services(agent)
        .unwrap_or_default()
        .iter()
        .filter_map(|service| service["url"].as_str().map(str::to_string))
        .collect()
}

/// Polls `agent`'s URLs until they are `want`; returns how long it took.
fn wait_for_urls(agent: &Agent, want: &[&str], within: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let seen = loop {
        let seen = urls(agent);
        if seen == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            break seen;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Err(format!(
        "{}: expected the services {want:?} within {within:?}, saw {seen:?}",
        agent.name
    ))
}

/// Starts the a2a-sdk echo agent in `agent`'s namespace on its defaults
/// (uvicorn on 0.0.0.0:[`A2A_PORT`]); returns its spawn ID once it listens.
fn start_a2a_agent(lab: &Lab, agent: &Agent, python: &Path) -> Result<u32, String> {
    let port = A2A_PORT.to_string();
    let public = format!("http://{}.agent.internal:{port}/", agent.name);
    start_app(
        lab,
        agent,
        python,
        "a2a_server.py",
        &[&port, &public],
        A2A_PORT,
    )
}

/// Starts the official `mcp` SDK's example server in `agent`'s namespace
/// on its defaults (Streamable HTTP on 127.0.0.1:[`MCP_PORT`]/mcp, Host
/// checks on); returns its spawn ID once it listens.
fn start_mcp_server(lab: &Lab, agent: &Agent, python: &Path) -> Result<u32, String> {
    let port = MCP_PORT.to_string();
    start_app(lab, agent, python, "mcp_server.py", &[&port], MCP_PORT)
}

/// Runs `tests/apps/SCRIPT ARGS` in `agent`'s namespace and waits until it
/// listens on TCP `port`.
fn start_app(
    lab: &Lab,
    agent: &Agent,
    python: &Path,
    script: &str,
    args: &[&str],
    port: u16,
) -> Result<u32, String> {
    let script = apps_dir().join(script);
    let mut command = vec![path_str(python), "-u", path_str(&script)];
    command.extend_from_slice(args);
    let server = lab.spawn(&agent.host.ns, "app", &command)?;
    let sport = format!(":{port}");
    let listening = wait_until("the app listening", APP_LISTEN_TIMEOUT, || {
        !lab.spawn_running(server)
            || lab
                .exec(&agent.host.ns, &["ss", "-Hltn", "sport", "=", &sport])
                .is_ok_and(|o| o.stdout.contains("LISTEN"))
    });
    if listening.is_err() || !lab.spawn_running(server) {
        let (out, err) = lab.stop(server);
        return Err(format!(
            "{} did not listen on {port}:\n{out}\n{err}",
            script.display()
        ));
    }
    Ok(server)
}

/// An agent asks `agentnet mcp` (through the official Python SDK) for the
/// A2A agents its peers offer, with their cards: bravo's echo agent, its
/// card's text under `from_peer`.
fn check_a2a_card_through_mcp(lab: &Lab, python: &Path, agent: &Agent) -> Result<(), String> {
    let calls = serde_json::json!([["services", {"kind": "a2a", "cards": true}]]);
    let report = agentnet_mcp_session(lab, python, agent, &[], &calls)?;
    let answer = mcp_success(&report, "services")?;
    let card = &answer["services"][0]["card"]["from_peer"];
    if card["name"] != "echo" || card["skills"][0]["id"] != "echo" {
        return Err(format!("mcp services with cards: {answer:#}"));
    }
    step(&format!(
        "alpha's MCP host: services {{\"kind\":\"a2a\",\"cards\":true}} -> card {card}"
    ));
    Ok(())
}

/// `agent`'s `services --cards --json` shows bravo's A2A agent card, read
/// over the overlay at `card_url`: the echo agent's name, description and
/// skill; the MCP service gets no card. Returns the card.
fn check_a2a_card(agent: &Agent, card_url: &str) -> Result<Value, String> {
    let out = agent.cli_ok(&["services", "--cards", "--json"])?;
    let listed: Vec<Value> = serde_json::from_str(&out.stdout).map_err(|e| {
        format!(
            "`services --cards --json` is no JSON array ({e}):\n{}",
            out.stdout
        )
    })?;
    let of_kind = |kind: &str| {
        listed
            .iter()
            .find(|service| service["from_peer"]["kind"] == kind)
            .ok_or_else(|| format!("no {kind} service in:\n{}", out.stdout))
    };
    let a2a = of_kind("a2a")?;
    let card = &a2a["card"];
    let skill = &card["from_peer"]["skills"][0];
    let want = [
        (&card["fetched_from"], Value::from(card_url)),
        (&card["from_peer"]["name"], Value::from("echo")),
        (
            &card["from_peer"]["description"],
            Value::from("Echoes messages over agentnet"),
        ),
        (&skill["id"], Value::from("echo")),
        (&skill["name"], Value::from("echo")),
        (&skill["description"], Value::from("echoes")),
    ];
    if want.iter().any(|(seen, value)| *seen != value) {
        return Err(format!(
            "the a2a service's card is not the echo agent's:\n{a2a:#}"
        ));
    }
    let mcp = of_kind("mcp")?;
    if mcp.get("card").is_some() || mcp.get("card_error").is_some() {
        return Err(format!("the mcp service got a card entry: {mcp}"));
    }
    Ok(card.clone())
}

fn run(lab: &Lab, python: &Path) -> Result<(), String> {
    step(&format!(
        "lab {}: alpha, bravo, charlie, delta on one bridge",
        lab.prefix()
    ));
    let hosts = lab.bridge_segment(UNDERLAY, &["a", "b", "c", "d"])?;
    let names = ["alpha", "bravo", "charlie", "delta"];
    let mut agents = Vec::new();
    for (host, name) in hosts.iter().zip(names) {
        let agent = Agent::new(lab, host, name)?;
        agent.init()?;
        agent.up()?;
        agents.push(agent);
    }
    let [a, b, c, d] = &agents[..] else {
        return Err("four agents".into());
    };
    let ids: Vec<Identity> = agents.iter().map(Agent::id).collect::<Result<_, _>>()?;
    let (id_a, id_b, id_d) = (&ids[0], &ids[1], &ids[3]);

    // Bravo: the MCP SDK's server on its defaults (loopback, Host checks
    // on), published with `serve --http` and later advertised as MCP at /mcp.
    let server = start_mcp_server(lab, b, python)?;
    let port = MCP_PORT.to_string();
    b.cli_ok(&["serve", "--http", &port])?;

    a.trust_add(id_b, "bravo", Some(b.endpoint()))?;
    b.trust_add(id_a, "alpha", Some(a.endpoint()))?;
    d.trust_add(id_b, "bravo", Some(b.endpoint()))?;
    let allow = format!("tcp:{A2A_PORT}");
    b.cli_ok(&[
        "trust",
        "add",
        &id_d.id,
        "--name",
        "delta",
        "--endpoint",
        &d.endpoint().to_string(),
        "--allow",
        &allow,
    ])?;
    c.trust_add(id_b, "bravo", Some(b.endpoint()))?;
    for (agent, peer) in [(a, "bravo"), (d, "bravo")] {
        wait_until(
            &format!("ping {peer} from {}", agent.name),
            CONNECT_TIMEOUT,
            || {
                agent
                    .cli(&["ping", peer, "-c", "1"])
                    .is_ok_and(|out| out.ok())
            },
        )?;
    }
    // Served ports are advertised as http on their own.
    let served = format!("http://bravo.agent.internal:{MCP_PORT}/");
    let took = wait_for_urls(a, &[&served], PROPAGATION)?;
    step(&format!(
        "alpha sees bravo's served port as {served} ({took:?})"
    ));

    let out = b.cli_ok(&[
        "advertise",
        &format!("mcp:{MCP_PORT}"),
        "--path",
        "/mcp",
        "--name",
        "notes",
    ])?;
    step(&format!("bravo: {}", out.stdout.trim()));
    let mcp = format!("http://bravo.agent.internal:{MCP_PORT}/mcp");
    let took = wait_for_urls(a, &[&mcp], PROPAGATION)?;
    step(&format!(
        "alpha lists {mcp} {took:?} after the advertisement"
    ));
    // Bravo's A2A agent: the a2a-sdk's server on its defaults, advertised
    // with the path its card is served at.
    let a2a_agent = start_a2a_agent(lab, b, python)?;
    let a2a = format!("http://bravo.agent.internal:{A2A_PORT}{A2A_CARD_PATH}");
    b.cli_ok(&[
        "advertise",
        &format!("a2a:{A2A_PORT}"),
        "--path",
        A2A_CARD_PATH,
    ])?;
    let took = wait_for_urls(a, &[&mcp, &a2a], PROPAGATION)?;
    step(&format!("alpha lists the a2a service too ({took:?})"));
    let card = check_a2a_card(a, &a2a)?;
    check_a2a_card_through_mcp(lab, python, a)?;
    step(&format!(
        "alpha: services --cards --json, the a2a entry's card:\n{card:#}"
    ));
    step(&format!(
        "alpha reads the a2a agent's card over the overlay: agentnet services --cards\n{}",
        a.cli_ok(&["services", "--cards"])?.stdout
    ));
    services_by_dns_sd(lab, a, c, d, &resolver_of(id_b))?;
    step(&format!(
        "bravo: agentnet advertise --list\n{}",
        b.cli_ok(&["advertise", "--list"])?.stdout
    ));
    step(&format!(
        "alpha: agentnet services\n{}",
        a.cli_ok(&["services"])?.stdout
    ));
    let listed = services(a)?;
    step(&format!(
        "alpha: agentnet services --json\n{}",
        serde_json::to_string_pretty(&listed).unwrap_or_default()
    ));
    let first = &listed[0];
    let want = [
        ("peer", Value::from("bravo")),
        ("peer_id", Value::from(id_b.id.as_str())),
        ("address", Value::from(id_b.address.to_string())),
    ];
    for (key, value) in want {
        if first[key] != value {
            return Err(format!(
                "services --json: {key} = {}, expected {value}",
                first[key]
            ));
        }
    }
    if first["from_peer"]["kind"] != "mcp" || first["from_peer"]["name"] != "notes" {
        return Err(format!(
            "from_peer of the mcp service: {}",
            first["from_peer"]
        ));
    }
    if !first["address4"].is_string() || !first["last_seen_unix"].is_u64() {
        return Err(format!("addresses and last seen missing: {first}"));
    }

    // The URL works, by name, from alpha: the MCP SDK's client lists the
    // server's tools there and calls one.
    let client = apps_dir().join("mcp_client.py");
    let out = lab.exec_ok(&a.host.ns, &[path_str(python), path_str(&client), &mcp])?;
    if !out.stdout.contains("tools: add") || !out.stdout.contains("add: 42") {
        return Err(format!("the MCP client at {mcp}: {}", out.describe()));
    }
    step(&format!(
        "alpha: mcp_client.py {mcp} -> {}",
        out.stdout.trim().replace('\n', "; ")
    ));

    // Delta may open only tcp:9999 on bravo: it sees the A2A agent only.
    wait_for_urls(d, &[&a2a], PROPAGATION)?;
    step("delta (allowed tcp:9999 only) sees only the a2a service");
    // Charlie is not trusted by bravo: no session, nothing learned.
    std::thread::sleep(Duration::from_secs(2));
    let seen = services(c)?;
    if !seen.is_empty() {
        return Err(format!("charlie, untrusted, sees {seen:?}"));
    }
    step("charlie (untrusted by bravo) sees nothing");

    // Revocation, either side.
    b.cli_ok(&["trust", "remove", "delta"])?;
    let took = wait_for_urls(d, &[], PROPAGATION)?;
    step(&format!(
        "bravo revokes delta: delta forgets bravo's services ({took:?})"
    ));
    services_gone_by_dns_sd(lab, d, &resolver_of(id_b), "_a2a._tcp.bravo.agent.internal")?;
    a.cli_ok(&["trust", "remove", "bravo"])?;
    wait_for_urls(a, &[], Duration::ZERO)?;
    step("alpha revokes bravo: bravo's services are gone at once");
    services_gone_by_dns_sd(lab, a, &resolver_of(id_b), "_mcp._tcp.bravo.agent.internal")?;
    lab.stop(server);
    lab.stop(a2a_agent);
    Ok(())
}

/// The resolver address `PREFIX::53` of the network `member` is in. (In
/// the lab's namespaces names go to hosts files, so `dig` is pointed at
/// the resolver; on a host with systemd-resolved a bare `dig` gets there.)
fn resolver_of(member: &Identity) -> std::net::Ipv6Addr {
    let s = member.address.segments();
    std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0x53)
}

/// What `dig` got: the status and the data of each answer record.
#[derive(Debug, PartialEq, Eq)]
struct Dig {
    status: String,
    answers: Vec<String>,
}

/// `dig @RESOLVER TYPE NAME` in `agent`'s namespace, as a user would ask.
fn dig(
    lab: &Lab,
    agent: &Agent,
    resolver: &std::net::Ipv6Addr,
    kind: &str,
    name: &str,
) -> Result<(Dig, String), String> {
    let server = format!("@{resolver}");
    let out = lab.exec_ok(
        &agent.host.ns,
        &[
            "dig",
            "+tries=1",
            "+time=3",
            "+nocookie",
            &server,
            kind,
            name,
        ],
    )?;
    let (status, answers) = support::dig::parse(&out.stdout)?;
    Ok((Dig { status, answers }, out.stdout))
}

/// Asks until the answer is `want` (a peer's advertisement may still be
/// on its way); returns dig's output.
fn wait_for_dig(
    lab: &Lab,
    agent: &Agent,
    resolver: &std::net::Ipv6Addr,
    (kind, name): (&str, &str),
    want: &Dig,
) -> Result<String, String> {
    let start = Instant::now();
    loop {
        let (got, stdout) = dig(lab, agent, resolver, kind, name)?;
        if got == *want {
            return Ok(stdout);
        }
        if start.elapsed() > PROPAGATION * 2 {
            return Err(format!(
                "{}: dig {kind} {name}: {got:?}, expected {want:?}\n{stdout}",
                agent.name
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn answered(answers: &[&str]) -> Dig {
    Dig {
        status: "NOERROR".into(),
        answers: answers.iter().map(|a| a.to_string()).collect(),
    }
}

fn nxdomain() -> Dig {
    Dig {
        status: "NXDOMAIN".into(),
        answers: Vec::new(),
    }
}

/// Bravo's services at each agent's resolver: SRV, TXT and browsing on
/// alpha; NXDOMAIN on charlie, whom bravo does not trust (charlie trusts
/// bravo, so bravo's name resolves there, but it learned no services);
/// on delta, allowed only tcp:9999, the A2A agent and not the MCP server.
fn services_by_dns_sd(
    lab: &Lab,
    alpha: &Agent,
    charlie: &Agent,
    delta: &Agent,
    resolver: &std::net::Ipv6Addr,
) -> Result<(), String> {
    let mcp = ("SRV", "_mcp._tcp.bravo.agent.internal");
    let srv = wait_for_dig(
        lab,
        alpha,
        resolver,
        mcp,
        &answered(&[&format!("0 0 {MCP_PORT} bravo.agent.internal.")]),
    )?;
    step(&format!(
        "alpha: dig @{resolver} SRV _mcp._tcp.bravo.agent.internal\n{srv}"
    ));
    let txt = wait_for_dig(
        lab,
        alpha,
        resolver,
        ("TXT", "_mcp._tcp.bravo.agent.internal"),
        &answered(&[&format!(
            "\"txtvers=1\" \"port={MCP_PORT}\" \"path=/mcp\" \"name=notes\""
        )]),
    )?;
    step(&format!(
        "alpha: TXT of _mcp._tcp.bravo has path=/mcp\n{txt}"
    ));
    let browse = wait_for_dig(
        lab,
        alpha,
        resolver,
        ("PTR", "_services._dns-sd._udp.agent.internal"),
        &answered(&["_a2a._tcp.agent.internal.", "_mcp._tcp.agent.internal."]),
    )?;
    step(&format!(
        "alpha: dig @{resolver} PTR _services._dns-sd._udp.agent.internal\n{browse}"
    ));
    let instances = wait_for_dig(
        lab,
        alpha,
        resolver,
        ("PTR", "_mcp._tcp.agent.internal"),
        &answered(&["bravo-8000._mcp._tcp.agent.internal."]),
    )?;
    step(&format!(
        "alpha: dig @{resolver} PTR _mcp._tcp.agent.internal\n{instances}"
    ));

    let (name, _) = dig(lab, charlie, resolver, "AAAA", "bravo.agent.internal")?;
    if name.status != "NOERROR" || name.answers.len() != 1 {
        return Err(format!(
            "charlie trusts bravo, its name should resolve: {name:?}"
        ));
    }
    let mut shown = String::new();
    for kind in ["SRV", "TXT", "PTR"] {
        let (got, stdout) = dig(lab, charlie, resolver, kind, mcp.1)?;
        if got != nxdomain() {
            return Err(format!(
                "charlie, untrusted by bravo: {kind} {}: {got:?}\n{stdout}",
                mcp.1
            ));
        }
        if shown.is_empty() {
            shown = stdout;
        }
    }
    step(&format!(
        "charlie (untrusted by bravo): dig @{resolver} SRV {} is NXDOMAIN\n{shown}",
        mcp.1
    ));

    wait_for_dig(
        lab,
        delta,
        resolver,
        ("SRV", "_a2a._tcp.bravo.agent.internal"),
        &answered(&[&format!("0 0 {A2A_PORT} bravo.agent.internal.")]),
    )?;
    wait_for_dig(lab, delta, resolver, mcp, &nxdomain())?;
    step("delta (allowed tcp:9999 only): _a2a._tcp.bravo answers, _mcp._tcp.bravo is NXDOMAIN");
    Ok(())
}

/// After a revocation `name` is NXDOMAIN at `agent`'s resolver. (Delta
/// still trusts bravo: only the node's count of service changes tells
/// its daemon to rebuild the records.)
fn services_gone_by_dns_sd(
    lab: &Lab,
    agent: &Agent,
    resolver: &std::net::Ipv6Addr,
    name: &str,
) -> Result<(), String> {
    wait_for_dig(lab, agent, resolver, ("SRV", name), &nxdomain())?;
    step(&format!("{}: {name} is NXDOMAIN now", agent.name));
    Ok(())
}
