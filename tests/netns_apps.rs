//! Unmodified software on its defaults over the overlay, by name: curl,
//! gRPC (grpcio) and A2A (the official `a2a-sdk`) between two agents in network namespaces that trust each
//! other, reaching each other as `NAME.agent.internal`; an untrusted agent
//! that can neither resolve nor reach them, in either family; and a
//! container namespace attached to one agent that reaches the other by name
//! under the other's policy.
//!
//! The servers run as their users start them: `python3 -m http.server` on
//! its default bind (`0.0.0.0`), uvicorn on `host="0.0.0.0"` as the A2A
//! samples do, grpcio on `0.0.0.0:PORT`. Nothing binds `::` for us, so
//! every one of them is reached over IPv4: names answer A (and AAAA), and
//! the clients (`curl -4`, httpx, grpc) take the A record.
//! (MCP on its defaults, behind `agentnet serve`, is in `netns_serve.rs`.)
//!
//! The Python programs are in `tests/apps/`; their packages are pinned in
//! `scripts/requirements-test.txt` and installed into `.venv` by
//! `scripts/test.sh`. Like the other namespace tests these need root; they
//! skip with a reason otherwise, unless `AGENTNET_REQUIRE_NETNS=1`. All
//! traffic stays inside the lab's namespaces.

mod support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::agent::Identity;
use support::apps::{Python, apps_dir, path_str};
use support::http;
use support::{Agent, Lab, Output, step, wait_until};

/// Programs run inside the namespaces.
const TOOLS: &[&str] = &["ping", "curl", "ss", "dig", "getent"];
/// Python modules the apps need (from the venv).
const PYTHON_MODULES: &[&str] = &["grpc", "a2a", "uvicorn", "httpx"];
/// Underlay subnet: `10.78.0.0/24`.
const UNDERLAY: [u8; 2] = [78, 0];
/// What B lets A (and so A's containers) open.
const B_ALLOWS_A: &str = "tcp:8080,tcp:8001,tcp:8002,tcp:50051,icmp";
const HTTP_PORT: u16 = 8080;
const A2A_PORT: u16 = 8002;
const GRPC_PORT: u16 = 50051;
/// A port B listens on but does not allow A to open.
const CLOSED_PORT: u16 = 9090;
/// What B narrows A to for the policy check.
const B_ALLOWS_A_ONLY: &str = "tcp:8080";
/// Size of the file fetched by name.
const BLOB_LEN: usize = 50 << 20;
/// Limit for that download. The test binary is a debug build (about
/// 10 Mbit/s through the tunnel on a 2-core machine, ~40 times slower than
/// release): 50 MiB takes 30-45 s, more on a busy machine.
const BLOB_TIMEOUT: Duration = Duration::from_secs(150);
/// First contact: the handshake and the first packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to listen (Python imports included).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Connect timeout for attempts that must fail: a dropped SYN is
/// retransmitted after 1 s and 3 s, so 4 s shows nothing comes back.
const BLOCKED_CONNECT_TIMEOUT: &str = "4";

/// The scenario. One lab for all checks keeps the run short; every check
/// runs and reports, and the test fails with all failures listed.
#[test]
fn unmodified_apps_reach_trusted_peers_by_name() {
    let Some(python) = support::netns_ready!(TOOLS, Python(PYTHON_MODULES)) else {
        return;
    };
    let hosts_before = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
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
        "names resolve to both families; the responder answers A and AAAA",
        world.names(),
    );
    check("ping -4 between agents that allow icmp", world.ping4());
    check(
        "curl -4 by name, http.server on its default bind: 50 MiB intact",
        world.http_by_name(),
    );
    check("grpc by name: unary and streaming", world.grpc_by_name());
    check("a2a sdk by name: card and message", world.a2a_by_name());
    check(
        "untrusted agent gets no A or AAAA and reaches b in neither family",
        world.untrusted_cannot_resolve_or_reach(),
    );
    check(
        "attached container reaches b by name under b's policy",
        world.container(),
    );
    check(
        "container attached by pid reaches b over IPv4",
        world.container_by_pid(),
    );
    check(
        "b allows a only tcp:8080: nothing else over IPv4",
        world.only_the_allowed_port_over_ipv4(),
    );
    check(
        "one agent's down leaves the others' names",
        world.down_keeps_other_names(),
    );
    // The lab's agents live in named namespaces: the host's own file is
    // never theirs to edit.
    let hosts_after = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    check(
        "the host's /etc/hosts is untouched",
        if hosts_after == hosts_before {
            Ok(())
        } else {
            Err(format!("/etc/hosts changed:\n{hosts_after}"))
        },
    );
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// A and B trust each other (B allows A only [`B_ALLOWS_A`]); C runs but
/// nobody trusts it.
struct World<'l> {
    lab: &'l Lab,
    python: PathBuf,
    a: Agent<'l>,
    b: Agent<'l>,
    c: Agent<'l>,
    id_a: Identity,
    id_b: Identity,
    /// A's and B's IPv4 overlay addresses.
    a4: Ipv4Addr,
    b4: Ipv4Addr,
    /// `PREFIX::53` of the network.
    resolver: Ipv6Addr,
}

impl<'l> World<'l> {
    fn build(lab: &'l Lab, python: PathBuf) -> Result<Self, String> {
        step(&format!(
            "lab {}: hosts a, b, c on one bridge",
            lab.prefix()
        ));
        let hosts = lab.bridge_segment(UNDERLAY, &["a", "b", "c"])?;
        let a = Agent::new(lab, &hosts[0], "alice")?;
        let b = Agent::new(lab, &hosts[1], "bob")?;
        let c = Agent::new(lab, &hosts[2], "carol")?;
        for agent in [&a, &b, &c] {
            agent.init()?;
            agent.up()?;
        }
        let (id_a, id_b) = (a.id()?, b.id()?);
        step("trust: a -> b as bob (with endpoint), b -> a as alice allowing only some ports");
        a.trust_add(&id_b, "bob", Some(b.endpoint()))?;
        b.cli_ok(&[
            "trust", "add", &id_a.id, "--name", "alice", "--allow", B_ALLOWS_A,
        ])?;
        let s = id_b.address.segments();
        let resolver = Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0x53);
        let (a4, b4) = (address4(&id_a)?, address4(&id_b)?);
        step(&format!(
            "a is {} and {a4}, b is {} and {b4}",
            id_a.address, id_b.address
        ));
        let world = Self {
            lab,
            python,
            a,
            b,
            c,
            id_a,
            id_b,
            a4,
            b4,
            resolver,
        };
        // By name from the start: the hosts file is in place when `trust
        // add` returns, and the first ping opens the session.
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

    /// Starts a Python app on `ns` and waits until something listens on
    /// TCP `port` there.
    fn serve(
        &self,
        ns: &str,
        name: &str,
        script: &str,
        args: &[&str],
        port: u16,
    ) -> Result<u32, String> {
        let script = apps_dir().join(script);
        let pid = self.lab.spawn(ns, name, &self.python_args(&script, args))?;
        self.wait_listening(ns, port, pid)?;
        Ok(pid)
    }

    fn wait_listening(&self, ns: &str, port: u16, pid: u32) -> Result<(), String> {
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
            return Err(format!(
                "the server did not listen on {port}:\n{out}\n{err}"
            ));
        }
        Ok(())
    }

    /// `getent ahosts NAME` inside an agent's namespace: the addresses the
    /// system resolver (getaddrinfo, both families) gives programs, in its
    /// order.
    fn getaddrinfo(&self, agent: &Agent, name: &str) -> Result<Vec<IpAddr>, String> {
        let out = self.exec(agent, &["getent", "ahosts", name])?;
        // One line per socket type (STREAM, DGRAM, RAW): one address each.
        let mut addresses: Vec<IpAddr> = Vec::new();
        for address in out
            .stdout
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        {
            if !addresses.contains(&address) {
                addresses.push(address);
            }
        }
        Ok(addresses)
    }

    /// B's two addresses, sorted. (Which one getaddrinfo puts first
    /// depends on the libc's address-selection table: glibc's default
    /// puts the ULA IPv6 address first, RFC 6724's puts IPv4 first. Both
    /// reach B.)
    fn b_addresses(&self) -> Vec<IpAddr> {
        sorted(vec![IpAddr::V4(self.b4), IpAddr::V6(self.id_b.address)])
    }

    /// `dig @PREFIX::53 NAME TYPE` from an agent's namespace: (status, answers).
    fn dig(&self, agent: &Agent, name: &str, kind: &str) -> Result<(String, Vec<String>), String> {
        let server = format!("@{}", self.resolver);
        let out = self
            .exec(
                agent,
                &[
                    "dig",
                    "+tries=1",
                    "+time=3",
                    "+nocookie",
                    &server,
                    name,
                    kind,
                ],
            )?
            .check()?;
        support::dig::parse(&out.stdout)
    }

    fn names(&self) -> Result<(), String> {
        let got = self.getaddrinfo(&self.a, "bob.agent.internal")?;
        if sorted(got.clone()) != self.b_addresses() {
            return Err(format!(
                "getaddrinfo(bob.agent.internal) in a = {got:?}, expected {:?}",
                self.b_addresses()
            ));
        }
        // The namespace's hosts file has both lines.
        self.hosts_file_names_b(&Path::new("/etc/netns").join(&self.a.host.ns).join("hosts"))?;
        let (b6, b4) = (self.id_b.address.to_string(), self.b4.to_string());
        let expect = [
            ("bob.agent.internal", "AAAA", "NOERROR", vec![b6.clone()]),
            ("BOB.agent.internal", "AAAA", "NOERROR", vec![b6]),
            ("bob.agent.internal", "A", "NOERROR", vec![b4.clone()]),
            ("Bob.Agent.Internal", "A", "NOERROR", vec![b4]),
            ("bob.agent.internal", "MX", "NOERROR", vec![]),
            ("nobody.agent.internal", "AAAA", "NXDOMAIN", vec![]),
            ("nobody.agent.internal", "A", "NXDOMAIN", vec![]),
            ("example.com", "AAAA", "REFUSED", vec![]),
            ("example.com", "A", "REFUSED", vec![]),
        ];
        for (name, kind, status, answers) in expect {
            let got = self.dig(&self.a, name, kind)?;
            if got != (status.to_string(), answers.clone()) {
                return Err(format!(
                    "dig {name} {kind} at {}: {got:?}, expected ({status}, {answers:?})",
                    self.resolver
                ));
            }
        }
        let ping = self.exec(
            &self.a,
            &[
                "ping",
                "-6",
                "-n",
                "-c",
                "1",
                "-W",
                "2",
                &self.resolver.to_string(),
            ],
        )?;
        if !ping.ok() {
            return Err(format!(
                "the resolver address does not answer ping:\n{}",
                ping.describe()
            ));
        }
        Ok(())
    }

    /// ICMPv4 echo by name both ways: B allows A icmp, A allows B all.
    fn ping4(&self) -> Result<(), String> {
        for (from, to) in [(&self.a, "bob"), (&self.b, "alice")] {
            let name = format!("{to}.agent.internal");
            let ping = self.exec(from, &["ping", "-4", "-n", "-c", "2", "-W", "3", &name])?;
            if !ping.ok() {
                return Err(format!(
                    "ping -4 {name} from {}:\n{}",
                    from.name,
                    ping.describe()
                ));
            }
            let want = if to == "bob" { self.b4 } else { self.a4 };
            if !ping.stdout.contains(&format!("from {want}:")) {
                return Err(format!(
                    "the replies do not come from {want}:\n{}",
                    ping.stdout
                ));
            }
        }
        Ok(())
    }

    /// `python3 -m http.server PORT` as its docs start it, on its default
    /// bind (all IPv4 interfaces), fetched by A with `curl -4` by name; the
    /// server's log shows A's IPv4 address as the client.
    fn http_by_name(&self) -> Result<(), String> {
        let www = self.lab.dir().join("www");
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        let blob = support::random_bytes(BLOB_LEN);
        std::fs::write(www.join("blob.bin"), &blob).map_err(|e| e.to_string())?;
        std::fs::write(www.join("hello.txt"), "hello from bob\n").map_err(|e| e.to_string())?;
        let server = self.http_server("http-server", HTTP_PORT, &www)?;
        let fetched = self.lab.dir().join("fetched.bin");
        let started = std::time::Instant::now();
        let max_time = BLOB_TIMEOUT.as_secs().to_string();
        let curl = self.lab.command(
            &self.a.host.ns,
            &[
                "curl",
                "-4",
                "-sS",
                "--fail",
                "--noproxy",
                "*",
                "--max-time",
                &max_time,
                "-o",
                path_str(&fetched),
                &format!("http://bob.agent.internal:{HTTP_PORT}/blob.bin"),
            ],
        );
        support::run(curl, BLOB_TIMEOUT + Duration::from_secs(10))?.check()?;
        let got = std::fs::read(&fetched).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&fetched);
        if got != blob {
            return Err(format!(
                "downloaded {} bytes that differ from the {} served",
                got.len(),
                blob.len()
            ));
        }
        step(&format!(
            "50 MiB by name over IPv4 in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        let (_, log) = self.lab.spawn_output(server);
        let request = format!("{} - - ", self.a4);
        if !log
            .lines()
            .any(|l| l.starts_with(&request) && l.contains("GET /blob.bin"))
        {
            return Err(format!(
                "the server did not log a request from {}:\n{log}",
                self.a4
            ));
        }
        // The server keeps running: the untrusted, container and policy
        // checks use it.
        Ok(())
    }

    /// Starts `python3 -m http.server PORT --directory DIR` in B's
    /// namespace on its default bind and checks that this is `0.0.0.0`
    /// (what it prints, and what `ss` shows).
    fn http_server(&self, name: &str, port: u16, dir: &Path) -> Result<u32, String> {
        let port_text = port.to_string();
        let server = self.lab.spawn(
            &self.b.host.ns,
            name,
            &[
                path_str(&self.python),
                "-u",
                "-m",
                "http.server",
                &port_text,
                "--directory",
                path_str(dir),
            ],
        )?;
        self.wait_listening(&self.b.host.ns, port, server)?;
        let banner = format!("Serving HTTP on 0.0.0.0 port {port} ");
        let printed = wait_until("http.server's banner", LISTEN_TIMEOUT, || {
            self.lab.spawn_output(server).0.contains(&banner)
        });
        let sport = format!(":{port}");
        let listeners = self
            .exec(&self.b, &["ss", "-Hltn", "sport", "=", &sport])?
            .stdout;
        let bound: Vec<&str> = listeners
            .lines()
            .filter_map(|l| l.split_whitespace().nth(3))
            .collect();
        if printed.is_err() || bound != [format!("0.0.0.0:{port}")] {
            let (out, err) = self.lab.stop(server);
            return Err(format!(
                "http.server's default bind is not 0.0.0.0:{port} here (ss: {bound:?}):\n{out}\n{err}"
            ));
        }
        Ok(server)
    }

    /// grpcio bound to `0.0.0.0:PORT`, called by name: it sees A's IPv4
    /// address as the peer.
    fn grpc_by_name(&self) -> Result<(), String> {
        let listen = format!("0.0.0.0:{GRPC_PORT}");
        let server = self.serve(
            &self.b.host.ns,
            "grpc-server",
            "grpc_echo.py",
            &["serve", &listen],
            GRPC_PORT,
        )?;
        let script = apps_dir().join("grpc_echo.py");
        let target = format!("bob.agent.internal:{GRPC_PORT}");
        let out = self.lab.exec(
            &self.a.host.ns,
            &self.python_args(&script, &["call", &target]),
        );
        let (log, err) = self.lab.stop(server);
        let out = out?
            .check()
            .map_err(|e| format!("{e}\nserver:\n{log}{err}"))?;
        let peer = format!("call from ipv4:{}:", self.a4);
        if !log.lines().any(|l| l.starts_with(&peer)) {
            return Err(format!(
                "the server did not see a call from {}:\n{log}{err}",
                self.a4
            ));
        }
        expect_lines(&out, &["echo: hello", "stream: 5 items, last item 4"])
    }

    /// An A2A server on uvicorn's `host="0.0.0.0"`, its card advertising
    /// its `NAME.agent.internal` URL, answers the SDK client by name; its
    /// access log shows A's IPv4 address.
    fn a2a_by_name(&self) -> Result<(), String> {
        let port = A2A_PORT.to_string();
        let public = format!("http://bob.agent.internal:{port}/");
        let server = self.serve(
            &self.b.host.ns,
            "a2a-server",
            "a2a_server.py",
            &[&port, &public],
            A2A_PORT,
        )?;
        let script = apps_dir().join("a2a_client.py");
        let base = format!("http://bob.agent.internal:{port}");
        let out = self.lab.exec(
            &self.a.host.ns,
            &self.python_args(&script, &[&base, "hello over agentnet"]),
        );
        let (log, err) = self.lab.stop(server);
        let out = out?
            .check()
            .map_err(|e| format!("{e}\nserver:\n{log}{err}"))?;
        let access = format!("{}:", self.a4);
        if !format!("{log}{err}")
            .lines()
            .any(|l| l.contains(&access) && l.contains("\"POST / "))
        {
            return Err(format!(
                "uvicorn did not log a POST from {}:\n{log}{err}",
                self.a4
            ));
        }
        expect_lines(
            &out,
            &[
                &format!("card: echo at {public}"),
                "reply: echo: hello over agentnet",
            ],
        )
    }

    /// C does not trust B: no name in either family (getaddrinfo finds
    /// nothing, the responder says NXDOMAIN to A and to AAAA, curl cannot
    /// resolve), and B's addresses lead nowhere. C then trusts B on its
    /// own: the name resolves (C's trust), but B does not trust C, so
    /// nothing gets through in either family.
    fn untrusted_cannot_resolve_or_reach(&self) -> Result<(), String> {
        let c = &self.c;
        let got = self.getaddrinfo(c, "bob.agent.internal")?;
        if !got.is_empty() {
            return Err(format!("c resolved bob.agent.internal to {got:?}"));
        }
        for kind in ["A", "AAAA"] {
            let dig = self.dig(c, "bob.agent.internal", kind)?;
            if dig != ("NXDOMAIN".to_string(), Vec::new()) {
                return Err(format!("c's responder, {kind}: {dig:?}, expected NXDOMAIN"));
            }
        }
        let url = format!("http://bob.agent.internal:{HTTP_PORT}/hello.txt");
        for family in ["-4", "-6"] {
            let curl = self.exec(
                c,
                &[
                    "curl",
                    family,
                    "-sS",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "10",
                    &url,
                ],
            )?;
            if curl.status.code() != Some(6) {
                return Err(format!(
                    "curl {family} from c: expected exit 6 (cannot resolve):\n{}",
                    curl.describe()
                ));
            }
        }
        self.nothing_reaches_b(c, "c does not trust b")?;

        c.trust_add(&self.id_b, "bob", Some(self.b.endpoint()))?;
        let got = self.getaddrinfo(c, "bob.agent.internal")?;
        if sorted(got.clone()) != self.b_addresses() {
            return Err(format!(
                "after c trusts b, c resolves bob.agent.internal to {got:?}"
            ));
        }
        self.nothing_reaches_b(c, "b does not trust c")
    }

    /// From `from`, B's HTTP server (listening on 0.0.0.0, allowed to A)
    /// cannot be reached at either of B's addresses, and ping gets no
    /// reply in either family: silence, not a reset or an ICMP error.
    fn nothing_reaches_b(&self, from: &Agent, when: &str) -> Result<(), String> {
        let targets = [
            ("-4", self.b4.to_string(), format!("{}", self.b4)),
            (
                "-6",
                self.id_b.address.to_string(),
                format!("[{}]", self.id_b.address),
            ),
        ];
        for (family, address, host) in targets {
            let url = format!("http://{host}:{HTTP_PORT}/hello.txt");
            let curl = self.exec(
                from,
                &[
                    "curl",
                    "-g",
                    "-sS",
                    "--noproxy",
                    "*",
                    "--connect-timeout",
                    BLOCKED_CONNECT_TIMEOUT,
                    &url,
                ],
            )?;
            if curl.status.code() != Some(28) {
                return Err(format!(
                    "{when}: curl from {} to {url}: expected a timeout (28):\n{}",
                    from.name,
                    curl.describe()
                ));
            }
            let ping = self.exec(
                from,
                &["ping", family, "-n", "-c", "1", "-W", "2", &address],
            )?;
            if ping.ok() {
                return Err(format!(
                    "{when}: {} got an echo reply from {address}:\n{}",
                    from.name, ping.stdout
                ));
            }
        }
        Ok(())
    }

    /// A namespace attached to A: it gets an address of A's node prefix and
    /// B's names (both lines); a program in it reaches B's HTTP server (on
    /// its default 0.0.0.0, so over IPv4) by name, but not a port B does
    /// not allow A; `detach` undoes it.
    fn container(&self) -> Result<(), String> {
        let ct = self.lab.add_namespace("ct")?;
        let attach = self.a.cli_ok(&["attach", "--netns", &ct])?;
        step(attach.stdout.trim());
        let address: Ipv6Addr = attach
            .stdout
            .split("address ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no address in `attach` output:\n{}", attach.stdout))?;
        let a_prefix = self.id_a.address.segments();
        if address.segments()[..7] != a_prefix[..7] || address.segments()[7] != 2 {
            return Err(format!(
                "attached address {address} is not ::2 of a's node prefix"
            ));
        }
        let hosts = Path::new("/etc/netns").join(&ct).join("hosts");
        if !attach.stdout.contains(path_str(&hosts)) {
            return Err(format!(
                "`attach` does not name {}:\n{}",
                hosts.display(),
                attach.stdout
            ));
        }
        self.hosts_file_names_b(&hosts)?;

        let url = format!("http://bob.agent.internal:{HTTP_PORT}/hello.txt");
        let curl = self
            .lab
            .exec(
                &ct,
                &http::as_strs(&http::get_args(&url, Duration::from_secs(20), &[])),
            )?
            .check()?;
        if curl.stdout != "hello from bob\n" {
            return Err(format!("container fetched {:?}", curl.stdout));
        }

        // B's policy for A applies: a port B does not allow stays closed,
        // though B listens there (as B itself shows).
        let server = self.http_server("closed-port", CLOSED_PORT, self.lab.dir())?;
        let blocked = self.closed_port_times_out(&ct, &[]);
        self.lab.stop(server);
        blocked?;

        self.a.cli_ok(&["detach", "--netns", &ct])?;
        let host_side = attach
            .stdout
            .split("host side ")
            .nth(1)
            .and_then(|s| s.split([',', ')']).next())
            .unwrap_or_default()
            .to_string();
        if host_side.is_empty() || self.lab.link_exists(&self.a.host.ns, &host_side) {
            return Err(format!(
                "after detach, host side `{host_side}` still exists (or was not named)"
            ));
        }
        if hosts.exists() {
            return Err(format!("after detach, {} still exists", hosts.display()));
        }
        let forwarding = self.exec(&self.a, &["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])?;
        if forwarding.stdout.trim() != "0" {
            return Err("after the last detach, IPv6 forwarding is still on in a".into());
        }
        Ok(())
    }

    /// The hosts file has a line for each of B's addresses.
    fn hosts_file_names_b(&self, hosts: &Path) -> Result<(), String> {
        let text =
            std::fs::read_to_string(hosts).map_err(|e| format!("{}: {e}", hosts.display()))?;
        for address in self.b_addresses() {
            let line = format!("{address}\tbob.agent.internal");
            if !text.lines().any(|l| l == line) {
                return Err(format!("no line {line:?} in {}:\n{text}", hosts.display()));
            }
        }
        Ok(())
    }

    /// B reaches its own server on [`CLOSED_PORT`] (so it listens), and
    /// `curl EXTRA http://bob.agent.internal:CLOSED_PORT/` from `ns` times
    /// out: B's policy for A drops it.
    fn closed_port_times_out(&self, ns: &str, extra: &[&str]) -> Result<(), String> {
        let local = format!("http://127.0.0.1:{CLOSED_PORT}/");
        self.exec(
            &self.b,
            &[
                "curl",
                "-sS",
                "--fail",
                "-o",
                "/dev/null",
                "--max-time",
                "10",
                &local,
            ],
        )?
        .check()?;
        let url = format!("http://bob.agent.internal:{CLOSED_PORT}/");
        let mut args = vec!["curl"];
        args.extend_from_slice(extra);
        args.extend([
            "-sS",
            "--noproxy",
            "*",
            "--connect-timeout",
            BLOCKED_CONNECT_TIMEOUT,
            &url,
        ]);
        let blocked = self.lab.exec(ns, &args)?;
        if blocked.status.code() != Some(28) {
            return Err(format!(
                "a port b does not allow a did not time out:\n{}",
                blocked.describe()
            ));
        }
        Ok(())
    }

    /// A namespace attached by the PID of the process in it, as a Docker
    /// container is, reaches B's HTTP server (on 0.0.0.0) at B's IPv4
    /// address. Its `/etc/hosts` is this host's (the process was not
    /// started with `ip netns exec` of a hosts file), so its names are not
    /// managed. (A peer reaches a service inside such a container through
    /// `agentnet serve --tcp PORT CONTAINER_ADDRESS:PORT`.)
    fn container_by_pid(&self) -> Result<(), String> {
        let ct = self.lab.add_namespace("pid")?;
        // The container's main process: it only has to exist.
        let process = self.lab.spawn(&ct, "container", &["sleep", "infinity"])?;
        let pid = process.to_string();
        let attach = self
            .a
            .cli_ok(&["attach", "--pid", &pid, "--address", "::7"])?;
        step(attach.stdout.trim());
        if !attach.stdout.contains("not managed") {
            return Err(format!(
                "names were managed in a namespace that shares this host's /etc/hosts:\n{}",
                attach.stdout
            ));
        }
        let to_b = self
            .lab
            .exec(
                &ct,
                &[
                    "curl",
                    "-4",
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "20",
                    &format!("http://{}:{HTTP_PORT}/hello.txt", self.b4),
                ],
            )?
            .check()?;
        if to_b.stdout != "hello from bob\n" {
            return Err(format!("the container fetched {:?} from b", to_b.stdout));
        }
        self.a.cli_ok(&["detach", "--pid", &pid])?;
        self.lab.stop(process);
        Ok(())
    }

    /// B narrows A to `tcp:8080` (`trust add` again, applied at once): A
    /// still fetches from 8080 over IPv4, but another port B listens on
    /// (0.0.0.0) times out and ICMPv4 echo gets no reply.
    fn only_the_allowed_port_over_ipv4(&self) -> Result<(), String> {
        self.b.cli_ok(&[
            "trust",
            "add",
            &self.id_a.id,
            "--name",
            "alice",
            "--allow",
            B_ALLOWS_A_ONLY,
        ])?;
        let url = format!("http://bob.agent.internal:{HTTP_PORT}/hello.txt");
        let allowed = self
            .exec(
                &self.a,
                &[
                    "curl",
                    "-4",
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "20",
                    &url,
                ],
            )?
            .check()?;
        if allowed.stdout != "hello from bob\n" {
            return Err(format!("a fetched {:?} from 8080", allowed.stdout));
        }
        let server = self.http_server("closed-port-4", CLOSED_PORT, self.lab.dir())?;
        let blocked = self.closed_port_times_out(&self.a.host.ns, &["-4"]);
        self.lab.stop(server);
        blocked?;
        let ping = self.exec(
            &self.a,
            &[
                "ping",
                "-4",
                "-n",
                "-c",
                "2",
                "-W",
                "2",
                "bob.agent.internal",
            ],
        )?;
        if ping.ok() {
            return Err(format!(
                "b answered ping -4 though it allows a only {B_ALLOWS_A_ONLY}:\n{}",
                ping.stdout
            ));
        }
        Ok(())
    }

    /// C (which has a hosts file naming bob now) goes down: A still resolves
    /// bob; when A goes down its namespace hosts file is gone.
    fn down_keeps_other_names(&self) -> Result<(), String> {
        let hosts = |agent: &Agent| Path::new("/etc/netns").join(&agent.host.ns).join("hosts");
        self.c.down()?;
        if hosts(&self.c).exists() {
            return Err(format!(
                "{} is still there after c's down",
                hosts(&self.c).display()
            ));
        }
        let got = self.getaddrinfo(&self.a, "bob.agent.internal")?;
        if sorted(got.clone()) != self.b_addresses() {
            return Err(format!(
                "after c's down, a resolves bob.agent.internal to {got:?}"
            ));
        }
        self.a.down()?;
        if hosts(&self.a).exists() {
            return Err(format!(
                "{} is still there after a's down",
                hosts(&self.a).display()
            ));
        }
        Ok(())
    }
}

/// `addresses` in order.
fn sorted(mut addresses: Vec<IpAddr>) -> Vec<IpAddr> {
    addresses.sort();
    addresses
}

/// The IPv4 overlay address `agentnet id --json` gives.
fn address4(identity: &Identity) -> Result<Ipv4Addr, String> {
    identity.json["address4"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("`id --json` has no IPv4 \"address4\": {}", identity.json))
}

/// Every `want` line must be among the output's lines.
fn expect_lines(out: &Output, want: &[&str]) -> Result<(), String> {
    let lines: Vec<&str> = out.stdout.lines().map(str::trim).collect();
    for line in want {
        if !lines.contains(line) {
            return Err(format!("expected the line {line:?} in:\n{}", out.stdout));
        }
    }
    Ok(())
}
