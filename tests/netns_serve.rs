//! `agentnet serve` end to end: two agents in network namespaces that trust
//! each other; B publishes services that listen on its loopback only, on
//! their defaults, and A's unmodified programs use them by name:
//!
//! - the official MCP SDK server on `run("streamable-http", port=PORT)`
//!   (127.0.0.1, DNS-rebinding protection on) behind `serve --http`, used
//!   by the SDK client on A at `http://bob.agent.internal:PORT/mcp`;
//! - a header-echo service that sees A's real agent ID and name, also when
//!   curl sends forged ones, over IPv6 by name, over IPv4 (`curl -4`), and
//!   over h2c; a local program dialling B's own overlay address is no
//!   trusted peer and is closed;
//! - `--tcp` with half-close both ways; a target that does not listen
//!   resets in TCP mode and answers 502 in HTTP mode; the usual mistakes
//!   (port already served, port taken, bad TARGET) are refused plainly;
//! - what is served survives `down` and `up` (also what was added while
//!   down), and server-sent events stream through the proxy.
//!
//! Needs root (skips with a reason otherwise, unless
//! `AGENTNET_REQUIRE_NETNS=1`). All traffic stays inside the lab.

mod support;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::agent::Identity;
use support::apps::{Python, apps_dir, path_str};
use support::{Agent, Lab, Output, step, wait_until};

/// Programs run inside the namespaces.
const TOOLS: &[&str] = &["ping", "curl", "ss"];
/// Python modules the apps need (from the venv).
const PYTHON_MODULES: &[&str] = &["mcp", "httpx"];
/// Underlay subnet: `10.81.0.0/24`.
const UNDERLAY: [u8; 2] = [81, 0];
const MCP_PORT: u16 = 8001;
const ECHO_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;
/// Served, but nothing listens behind them.
const DEAD_TCP_PORT: u16 = 9001;
const DEAD_HTTP_PORT: u16 = 9002;
/// Another program holds it on B's overlay IPv4 address.
const TAKEN_PORT: u16 = 9004;
/// Served while B is down.
const OFFLINE_PORT: u16 = 9005;
/// First contact: the handshake and the first packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to listen (Python imports included).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn served_loopback_services_reach_trusted_peers_with_their_identity() {
    let Some(python) = support::netns_ready!(TOOLS, Python(PYTHON_MODULES)) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let world = World::build(&lab, python).unwrap_or_else(|e| panic!("{e}"));

    let mut failures = Vec::new();
    let mut check = |phase: &str, result: Result<(), String>| match result {
        Ok(()) => step(&format!("{phase}: ok")),
        Err(e) => {
            step(&format!("{phase}: FAILED"));
            failures.push(format!("== {phase} ==\n{e}"));
        }
    };
    check(
        "mcp sdk on its defaults behind serve --http, by name",
        world.mcp_by_name(),
    );
    check(
        "the service sees the caller's real id and name, not forged ones",
        world.identity_headers(),
    );
    check("serve --tcp: bytes both ways with half-close", world.tcp());
    check(
        "a target that does not listen: reset (tcp), 502 (http)",
        world.dead_targets(),
    );
    check(
        "already served, port taken, bad target: clear errors",
        world.clear_errors(),
    );
    check("server-sent events stream through --http", world.sse());
    check("served ports survive down and up", world.restart());
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// The IPv4 overlay address in `agentnet id --json`.
fn address4(id: &Identity) -> Result<Ipv4Addr, String> {
    id.json["address4"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("`id --json` has no IPv4 \"address4\": {}", id.json))
}

/// A (alice) and B (bob) trust each other; B serves, A calls.
struct World<'l> {
    lab: &'l Lab,
    python: PathBuf,
    a: Agent<'l>,
    b: Agent<'l>,
    id_a: Identity,
    id_b: Identity,
    /// Released once the header-echo service may end its event stream.
    release: PathBuf,
}

impl<'l> World<'l> {
    fn build(lab: &'l Lab, python: PathBuf) -> Result<Self, String> {
        step(&format!("lab {}: hosts a, b on one bridge", lab.prefix()));
        let hosts = lab.bridge_segment(UNDERLAY, &["a", "b"])?;
        let a = Agent::new(lab, &hosts[0], "alice")?;
        let b = Agent::new(lab, &hosts[1], "bob")?;
        for agent in [&a, &b] {
            agent.init()?;
            agent.up()?;
        }
        let (id_a, id_b) = (a.id()?, b.id()?);
        a.trust_add(&id_b, "bob", Some(b.endpoint()))?;
        // With A's endpoint, B reconnects at once after its restart.
        b.trust_add(&id_a, "alice", Some(a.endpoint()))?;
        let release = lab.dir().join("release-events");
        let world = Self {
            lab,
            python,
            a,
            b,
            id_a,
            id_b,
            release,
        };
        wait_until("ping -6 bob.agent.internal from a", CONNECT_TIMEOUT, || {
            world
                .exec(
                    &world.a,
                    &[
                        "ping",
                        "-6",
                        "-n",
                        "-c",
                        "1",
                        "-W",
                        "1",
                        "bob.agent.internal",
                    ],
                )
                .is_ok_and(|o| o.ok())
        })?;
        Ok(world)
    }

    fn exec(&self, agent: &Agent, args: &[&str]) -> Result<Output, String> {
        self.lab.exec(&agent.host.ns, args)
    }

    fn python_args<'a>(&'a self, script: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![path_str(&self.python), "-u", path_str(script)];
        all.extend_from_slice(args);
        all
    }

    /// Starts a Python app on B and waits until it listens on TCP `port`.
    fn start_on_b(
        &self,
        name: &str,
        script: &str,
        args: &[&str],
        port: u16,
    ) -> Result<u32, String> {
        let script = apps_dir().join(script);
        let ns = &self.b.host.ns;
        let pid = self.lab.spawn(ns, name, &self.python_args(&script, args))?;
        let sport = format!(":{port}");
        let listening = wait_until(&format!("a server on port {port}"), LISTEN_TIMEOUT, || {
            !self.lab.spawn_running(pid)
                || self
                    .lab
                    .exec(ns, &["ss", "-Hltn", "sport", "=", &sport])
                    .is_ok_and(|o| o.stdout.contains("LISTEN"))
        });
        if listening.is_err() || !self.lab.spawn_running(pid) {
            let (out, err) = self.lab.stop(pid);
            return Err(format!("{name} did not listen on {port}:\n{out}\n{err}"));
        }
        Ok(pid)
    }

    /// `curl ARGS` on A (no proxies, a time limit), its output.
    fn curl(&self, args: &[&str]) -> Result<Output, String> {
        let mut all = vec!["curl", "-sS", "--noproxy", "*", "--max-time", "20"];
        all.extend_from_slice(args);
        self.exec(&self.a, &all)
    }

    /// The headers the echo service saw for one curl from A.
    fn echoed_headers(&self, args: &[&str]) -> Result<Value, String> {
        let mut all = vec!["--fail"];
        all.extend_from_slice(args);
        let out = self.curl(&all)?.check()?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            format!(
                "the echo service's answer is not JSON ({e}): {}",
                out.stdout
            )
        })
    }

    fn mcp_by_name(&self) -> Result<(), String> {
        let port = MCP_PORT.to_string();
        let server = self.start_on_b("mcp-server", "mcp_server.py", &[&port], MCP_PORT)?;
        let served = self.b.cli_ok(&["serve", "--http", &port]);
        let script = apps_dir().join("mcp_client.py");
        let url = format!("http://bob.agent.internal:{port}/mcp");
        let out = served.and_then(|_| {
            self.lab
                .exec(&self.a.host.ns, &self.python_args(&script, &[&url]))
        });
        let (_, log) = self.lab.stop(server);
        let out = out?.check().map_err(|e| format!("{e}\nserver:\n{log}"))?;
        expect_lines(&out, &["tools: add", "add: 42"])
    }

    fn identity_headers(&self) -> Result<(), String> {
        let port = ECHO_PORT.to_string();
        let release = path_str(&self.release).to_string();
        // Runs to the end of the test: the SSE and restart checks use it.
        self.start_on_b("echo", "echo_headers.py", &[&port, &release], ECHO_PORT)?;
        let out = self.b.cli_ok(&["serve", &port])?;
        step(out.stdout.trim());
        let a4 = address4(&self.id_a)?;
        let b4 = address4(&self.id_b)?;
        let by_name = format!("http://bob.agent.internal:{port}/");
        let by_ipv4 = format!("http://{b4}:{port}/");
        let forged = [
            "-H",
            "Agentnet-Peer-Id: forged",
            "-H",
            "agentnet-peer-name: mallory",
            "-H",
            "AGENTNET-PEER-ID: forged-again",
            "-H",
            "X-Forwarded-For: 192.0.2.66",
            "-H",
            "Forwarded: for=192.0.2.66",
        ];
        let cases: [(&str, Vec<&str>, String); 4] = [
            (
                "by name over IPv6",
                vec![by_name.as_str()],
                self.id_a.address.to_string(),
            ),
            (
                "forged headers, by name",
                forged.iter().copied().chain([by_name.as_str()]).collect(),
                self.id_a.address.to_string(),
            ),
            (
                "forged headers, curl -4 to B's IPv4 address",
                ["-4"]
                    .into_iter()
                    .chain(forged)
                    .chain([by_ipv4.as_str()])
                    .collect(),
                a4.to_string(),
            ),
            (
                "h2c (HTTP/2 prior knowledge)",
                vec!["--http2-prior-knowledge", by_name.as_str()],
                self.id_a.address.to_string(),
            ),
        ];
        for (case, args, from) in cases {
            let seen = self.echoed_headers(&args)?;
            step(&format!(
                "{case}: curl {} -> the service saw {seen}",
                args.join(" ")
            ));
            let want = [
                ("agentnet-peer-id", self.id_a.id.clone()),
                ("agentnet-peer-name", "alice".to_string()),
                ("x-forwarded-for", from.clone()),
                ("host", format!("127.0.0.1:{port}")),
            ];
            for (name, value) in want {
                if seen[name] != serde_json::json!([value]) {
                    return Err(format!(
                        "{case}: the service saw {name} = {}, expected [{value:?}]; all: {seen}",
                        seen[name]
                    ));
                }
            }
            let forwarded = seen["forwarded"].to_string();
            if !forwarded.contains(&from) || forwarded.contains("192.0.2.66") {
                return Err(format!("{case}: Forwarded = {forwarded}"));
            }
        }
        // B's own programs dialling its overlay address are no trusted peer.
        let own = format!("http://[{}]:{port}/", self.id_b.address);
        let out = self.exec(
            &self.b,
            &["curl", "-sS", "--noproxy", "*", "--max-time", "10", &own],
        )?;
        // Closed unread: "Empty reply", or a reset when curl's request was
        // still unread at the close.
        let closed = out.stderr.contains("Empty reply") || out.stderr.contains("reset by peer");
        if out.ok() || !closed || !out.stdout.is_empty() {
            return Err(format!(
                "a connection from B's own address was not closed unanswered:\n{}",
                out.describe()
            ));
        }
        Ok(())
    }

    fn tcp(&self) -> Result<(), String> {
        let port = TCP_PORT.to_string();
        let server = self.start_on_b(
            "tcp-server",
            "tcp_halfclose.py",
            &["server", &port],
            TCP_PORT,
        )?;
        let served = self.b.cli_ok(&["serve", "--tcp", &port]);
        let script = apps_dir().join("tcp_halfclose.py");
        let b4 = address4(&self.id_b)?.to_string();
        let mut result = served.map(drop);
        for host in ["bob.agent.internal", b4.as_str()] {
            if result.is_err() {
                break;
            }
            result = self
                .lab
                .exec(
                    &self.a.host.ns,
                    &self.python_args(&script, &["client", host, &port, "1048576"]),
                )
                .and_then(Output::check)
                .and_then(|out| expect_lines(&out, &["half-close ok"]));
        }
        let (_, log) = self.lab.stop(server);
        result.map_err(|e| format!("{e}\nserver:\n{log}"))
    }

    fn dead_targets(&self) -> Result<(), String> {
        let (tcp, http) = (DEAD_TCP_PORT.to_string(), DEAD_HTTP_PORT.to_string());
        self.b.cli_ok(&["serve", "--tcp", &tcp])?;
        self.b.cli_ok(&["serve", "--http", &http])?;
        let script = apps_dir().join("tcp_halfclose.py");
        let out = self
            .lab
            .exec(
                &self.a.host.ns,
                &self.python_args(&script, &["reset", "bob.agent.internal", &tcp]),
            )?
            .check()?;
        expect_lines(&out, &["reset"])?;
        let url = format!("http://bob.agent.internal:{http}/");
        let out = self.curl(&["-o", "/dev/null", "-w", "%{http_code}", &url])?;
        if out.stdout.trim() != "502" {
            return Err(format!(
                "expected 502 from a dead --http target:\n{}",
                out.describe()
            ));
        }
        let log = self.b.log();
        for why in [
            "does not accept connections",
            "did not answer",
            "Connection refused",
        ] {
            if !log.contains(why) {
                return Err(format!(
                    "B's log does not say {why:?}:\n{}",
                    self.b.log_excerpt(30)
                ));
            }
        }
        self.b.cli_ok(&["serve", "--off", &http])?;
        let list = self.b.cli_ok(&["serve", "--list"])?.stdout;
        if list.lines().any(|l| l.starts_with(&format!("{http} "))) {
            return Err(format!("port {http} still listed after --off:\n{list}"));
        }
        Ok(())
    }

    fn clear_errors(&self) -> Result<(), String> {
        let echo = ECHO_PORT.to_string();
        let taken = TAKEN_PORT.to_string();
        let holder = self.lab.spawn(
            &self.b.host.ns,
            "holder",
            &[
                path_str(&self.python),
                "-m",
                "http.server",
                &taken,
                "--bind",
                "0.0.0.0",
            ],
        )?;
        let sport = format!(":{TAKEN_PORT}");
        wait_until("the port holder", LISTEN_TIMEOUT, || {
            self.exec(&self.b, &["ss", "-Hltn", "sport", "=", &sport])
                .is_ok_and(|o| o.stdout.contains("LISTEN"))
        })?;
        let cases: [(Vec<&str>, &str); 5] = [
            (vec!["serve", &echo], "is already served"),
            (vec!["serve", &taken], "is taken on the overlay address"),
            (vec!["serve", "9006", "localhost:80"], "bad TARGET"),
            (vec!["serve", "9006", "0.0.0.0:80"], "unspecified"),
            // The running daemon kept no privilege to bind it.
            (vec!["serve", "80"], "below 1024"),
        ];
        let mut result = Ok(());
        for (args, why) in cases {
            let out = self.b.cli(&args)?;
            if out.ok() || !out.stderr.contains(why) {
                result = Err(format!(
                    "`{}` should fail with {why:?}:\n{}",
                    args.join(" "),
                    out.describe()
                ));
                break;
            }
        }
        self.lab.stop(holder);
        result
    }

    fn sse(&self) -> Result<(), String> {
        let url = format!("http://bob.agent.internal:{ECHO_PORT}/events");
        let events = self.lab.dir().join("events.txt");
        let curl = self.lab.spawn(
            &self.a.host.ns,
            "curl-events",
            &[
                "curl",
                "-sSN",
                "--noproxy",
                "*",
                "--max-time",
                "30",
                "-o",
                path_str(&events),
                &url,
            ],
        )?;
        let read = || std::fs::read_to_string(&events).unwrap_or_default();
        let first = wait_until(
            "the first event while the stream is open",
            Duration::from_secs(15),
            || read().contains("data: first"),
        );
        let still_open = self.lab.spawn_running(curl) && !read().contains("second");
        std::fs::write(&self.release, b"go").map_err(|e| e.to_string())?;
        first?;
        if !still_open {
            return Err(format!(
                "the stream ended before the first event was seen: {:?}",
                read()
            ));
        }
        wait_until("the stream's end", Duration::from_secs(15), || {
            !self.lab.spawn_running(curl)
        })?;
        if !read().contains("data: second") {
            return Err(format!("the second event is missing: {:?}", read()));
        }
        Ok(())
    }

    fn restart(&self) -> Result<(), String> {
        self.b.down()?;
        let offline = OFFLINE_PORT.to_string();
        let out = self.b.cli_ok(&["serve", "--tcp", &offline])?;
        if !out.stdout.contains("applies at the next `agentnet up`") {
            return Err(format!("serve while down says:\n{}", out.stdout));
        }
        // Bound at start-up, before the daemon drops its privileges.
        let echo_target = format!("127.0.0.1:{ECHO_PORT}");
        self.b.cli_ok(&["serve", "80", &echo_target])?;
        self.b.up()?;
        let list = self.b.cli_ok(&["serve", "--list"])?.stdout;
        step(&format!("serve --list after up:\n{list}"));
        for port in [80, ECHO_PORT, TCP_PORT, OFFLINE_PORT] {
            let line = list
                .lines()
                .find(|l| l.starts_with(&format!("{port} ")))
                .ok_or_else(|| format!("port {port} missing after restart:\n{list}"))?;
            if !line.contains(&format!("[{}]:{port}", self.id_b.address)) {
                return Err(format!("port {port} does not listen after restart: {line}"));
            }
        }
        for url in [
            format!("http://bob.agent.internal:{ECHO_PORT}/"),
            "http://bob.agent.internal/".to_string(),
        ] {
            let mut last = String::new();
            wait_until(
                &format!("{url} after B's restart"),
                CONNECT_TIMEOUT,
                || match self.echoed_headers(&["--max-time", "3", &url]) {
                    Ok(seen) => seen["agentnet-peer-name"] == serde_json::json!(["alice"]),
                    Err(e) => {
                        last = e;
                        false
                    }
                },
            )
            .map_err(|e| format!("{e}: {last}"))?;
        }
        Ok(())
    }
}

fn expect_lines(out: &Output, want: &[&str]) -> Result<(), String> {
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    for line in want {
        if !lines.contains(line) {
            return Err(format!("expected the line {line:?} in:\n{}", out.stdout));
        }
    }
    Ok(())
}
