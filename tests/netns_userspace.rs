//! Rootless mode end to end: an agent run by `nobody` with `up --userspace`
//! (no TUN, no capabilities) and an ordinary TUN agent, in two lab
//! namespaces on one bridge. The rootless agent fetches 50 MiB from the TUN
//! agent's HTTP server (Python's http.server on its default `0.0.0.0`)
//! through its SOCKS5 proxy by name (remote DNS) and by IPv4 address, runs
//! the official MCP SDK client through the proxy, and relays UDP through a
//! forward; the TUN agent reaches a web server on the rootless agent
//! through an exposed port, by name and with `curl -4` at its IPv4
//! address, and a port that is not exposed refuses.
//!
//! The agent (every CLI call and the daemon) and curl run as `nobody`;
//! the Python programs run as root, because the venv's interpreter may live
//! where `nobody` cannot read it — as local programs they need nothing of
//! the agent but its proxy and ports.
//!
//! Like the other namespace tests this needs root (for the lab, not for
//! the agent under test); it skips with a reason otherwise, unless
//! `AGENTNET_REQUIRE_NETNS=1`. All traffic stays inside the lab.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::agent::Identity;
use support::apps::{Python, apps_dir, path_str};
use support::http;
use support::rootless::{RootlessAgent, uid_and_capabilities};
use support::{Agent, Lab, Output, step, wait_until};

/// Programs the test runs inside the namespaces.
const TOOLS: &[&str] = &["curl", "ss", "setpriv", "sha256sum", "dig", "ping"];
/// Python modules the MCP check needs (socksio: httpx's SOCKS support).
const PYTHON_MODULES: &[&str] = &["mcp", "httpx", "socksio"];
/// Underlay subnet: `10.79.0.0/24`.
const UNDERLAY: [u8; 2] = [79, 0];
/// The rootless agent's SOCKS5 proxy (on its namespace's loopback).
const SOCKS5: &str = "127.0.0.1:1080";
/// The TUN agent's web server.
const HTTP_PORT: u16 = 8080;
/// The TUN agent's MCP server.
const MCP_PORT: u16 = 8001;
/// The TUN agent's UDP echo server.
const UDP_PORT: u16 = 5300;
/// The rootless agent's local UDP forward to it.
const UDP_FORWARD: &str = "udp:127.0.0.1:5300:tunny:5300";
/// A local DNS port forwarded to the network's resolver (`PREFIX::53`).
const DNS_FORWARD_PORT: u16 = 5353;
/// The exposed port on the rootless agent, and its local web server.
const EXPOSED_PORT: u16 = 8000;
/// A port the rootless agent serves (`agentnet serve`, set before `up`).
const SERVED_PORT: u16 = 8070;
/// A port the rootless agent does not expose (but its policy allows).
const UNEXPOSED_PORT: u16 = 8090;
/// Size of the file fetched through SOCKS5.
const BLOB_LEN: usize = 50 << 20;
/// First contact: handshake and first packet.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn rootless_agent_reaches_and_serves_a_tun_agent() {
    let Some(python) = support::netns_ready!(TOOLS, Python(PYTHON_MODULES)) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let world =
        World::build(&lab, python.to_string_lossy().into_owned()).unwrap_or_else(|e| panic!("{e}"));

    let mut failures = Vec::new();
    let mut check = |phase: &str, result: Result<(), String>| match result {
        Ok(()) => step(&format!("{phase}: ok")),
        Err(e) => {
            step(&format!("{phase}: FAILED"));
            failures.push(format!("== {phase} ==\n{e}"));
        }
    };
    check(
        "the daemon runs as nobody, without capabilities or TUN",
        world.unprivileged(),
    );
    check(
        "50 MiB through SOCKS5 by name, sha256 intact",
        world.socks5_download(),
    );
    check(
        "SOCKS5 to the tun agent's IPv4 address",
        world.socks5_ipv4(),
    );
    check("mcp sdk client through SOCKS5", world.mcp_through_socks5());
    check(
        "the tun agent reaches an exposed port; others refuse",
        world.exposed(),
    );
    check(
        "serve through the userspace stack: the caller's identity",
        world.served(),
    );
    check(
        "the tun agent pings the rootless agent by name and over IPv4",
        world.ping(),
    );
    check("udp forward: DNS-sized datagrams", world.udp_forward());
    check(
        "names through a forwarded resolver port",
        world.names_through_forward(),
    );
    check("status shows the userspace stack", world.status());
    check("down stops it", world.down());
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// T: a TUN agent ("tunny" to the rootless agent). U: the rootless agent
/// ("rootless" to T), run by nobody.
struct World<'l> {
    lab: &'l Lab,
    python: String,
    t: Agent<'l>,
    u: RootlessAgent<'l>,
    id_u: Identity,
    /// The TUN agent's IPv4 address.
    t4: Ipv4Addr,
    /// The rootless agent's IPv4 address.
    u4: Ipv4Addr,
}

/// The IPv4 address `id --json` shows.
fn address4(id: &Identity) -> Result<Ipv4Addr, String> {
    id.json["address4"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("`id --json` has no IPv4 \"address4\": {}", id.json))
}

impl<'l> World<'l> {
    fn build(lab: &'l Lab, python: String) -> Result<Self, String> {
        step(&format!(
            "lab {}: hosts t (TUN) and u (rootless) on one bridge",
            lab.prefix()
        ));
        let hosts = lab.bridge_segment(UNDERLAY, &["t", "u"])?;
        let t = Agent::new(lab, &hosts[0], "tunny")?;
        let u = RootlessAgent::new(lab, &hosts[1], "rootless")?;
        t.init()?;
        t.up()?;
        u.init()?;
        let id_t = t.id()?;
        let id_u = u.id()?;
        // U trusts T (with its endpoint): the first SOCKS5 connection
        // starts the handshake. T lets U open only what the test uses.
        let endpoint = t.endpoint().to_string();
        u.cli_ok(&[
            "trust",
            "add",
            &id_t.id,
            "--name",
            "tunny",
            "--endpoint",
            &endpoint,
        ])?;
        t.cli_ok(&[
            "trust",
            "add",
            &id_u.id,
            "--name",
            "rootless",
            "--allow",
            "tcp:8080,tcp:8001,udp:5300",
        ])?;
        let exposed = EXPOSED_PORT.to_string();
        let s = id_u.address.segments();
        let resolver = std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0x53);
        let dns_forward = format!("udp:127.0.0.1:{DNS_FORWARD_PORT}:[{resolver}]:53");
        u.cli_ok(&["serve", &SERVED_PORT.to_string()])?;
        let up = u.up(&[
            "--socks5",
            SOCKS5,
            "--forward",
            UDP_FORWARD,
            "--forward",
            &dns_forward,
            "--expose",
            &exposed,
        ])?;
        step(&format!("rootless up:\n{}", up.stdout.trim_end()));
        if !up.stdout.contains(&format!("socks5     {SOCKS5}")) {
            return Err(format!(
                "`up` does not show the SOCKS5 proxy:\n{}",
                up.stdout
            ));
        }
        let (t4, u4) = (address4(&id_t)?, address4(&id_u)?);
        Ok(Self {
            lab,
            python,
            t,
            u,
            id_u,
            t4,
            u4,
        })
    }

    fn wait_listening(&self, ns: &str, port: u16, pid: u32, tcp: bool) -> Result<(), String> {
        let sport = format!(":{port}");
        let flags = if tcp { "-Hltn" } else { "-Hlun" };
        let listening = wait_until(&format!("a server on port {port}"), LISTEN_TIMEOUT, || {
            !self.lab.spawn_running(pid)
                || self
                    .lab
                    .exec(ns, &["ss", flags, "sport", "=", &sport])
                    .is_ok_and(|o| !o.stdout.trim().is_empty())
        });
        if listening.is_err() || !self.lab.spawn_running(pid) {
            let (out, err) = self.lab.stop(pid);
            return Err(format!(
                "the server did not listen on {port}:\n{out}\n{err}"
            ));
        }
        Ok(())
    }

    /// `curl` through the SOCKS5 proxy with remote DNS, as nobody.
    fn curl_socks(&self, url: &str, extra: &[&str]) -> Result<Output, String> {
        let mut args = vec![
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "--socks5-hostname",
            SOCKS5,
        ];
        args.extend_from_slice(extra);
        args.push(url);
        self.u.exec(&[], &args)
    }

    fn unprivileged(&self) -> Result<(), String> {
        let pid = self.u.pid()?;
        let (uid, caps) =
            uid_and_capabilities(pid).ok_or_else(|| format!("cannot read /proc/{pid}/status"))?;
        if uid != 65534 || caps != 0 {
            return Err(format!("the daemon runs with uid {uid}, CapEff {caps:#x}"));
        }
        let links = self
            .lab
            .exec_ok(&self.u.host.ns, &["ip", "-o", "link", "show"])?;
        let names: Vec<&str> = links
            .stdout
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        if names != ["lo", "eth0"] {
            return Err(format!("the rootless namespace has interfaces {names:?}"));
        }
        Ok(())
    }

    fn socks5_download(&self) -> Result<(), String> {
        let www = self.lab.dir().join("www");
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        let blob = support::random_bytes(BLOB_LEN);
        std::fs::write(www.join("blob.bin"), &blob).map_err(|e| e.to_string())?;
        let port = HTTP_PORT.to_string();
        let server = self.lab.spawn(
            &self.t.host.ns,
            "http-server",
            // On its default: 0.0.0.0 (IPv4 only).
            &[
                &self.python,
                "-u",
                "-m",
                "http.server",
                &port,
                "--directory",
                path_str(&www),
            ],
        )?;
        self.wait_listening(&self.t.host.ns, HTTP_PORT, server, true)?;
        let banner = self.lab.spawn_output(server).0;
        if !banner.is_empty() && !banner.contains("0.0.0.0") {
            return Err(format!("http.server does not serve on 0.0.0.0: {banner}"));
        }
        let fetched = self.u.scratch().join("fetched.bin");
        // The first connection starts the handshake: wait for it by name.
        let url = format!("http://tunny.agent.internal:{port}/");
        wait_until("the first page through SOCKS5", CONNECT_TIMEOUT, || {
            self.curl_socks(&url, &["-o", "/dev/null", "--max-time", "5"])
                .is_ok_and(|o| o.ok())
        })?;
        let started = Instant::now();
        self.curl_socks(
            &format!("http://tunny.agent.internal:{port}/blob.bin"),
            &["-o", path_str(&fetched)],
        )?
        .check()?;
        let seconds = started.elapsed().as_secs_f64();
        let want = self.lab.exec_ok(
            &self.t.host.ns,
            &["sha256sum", path_str(&www.join("blob.bin"))],
        )?;
        let got = self
            .u
            .exec(&[], &["sha256sum", path_str(&fetched)])?
            .check()?;
        let digest = |o: &Output| {
            o.stdout
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string()
        };
        if digest(&want) != digest(&got) || digest(&got).len() != 64 {
            return Err(format!("sha256 differs: served {want:?}, fetched {got:?}"));
        }
        step(&format!(
            "50 MiB through SOCKS5 in {seconds:.1} s ({:.0} Mbit/s)",
            BLOB_LEN as f64 * 8.0 / seconds / 1e6
        ));
        Ok(())
    }

    /// The TUN agent's IPv4 address through SOCKS5 (curl sends it as an
    /// IPv4 address, ATYP 1), to the server left running by the download.
    fn socks5_ipv4(&self) -> Result<(), String> {
        let url = format!("http://{}:{HTTP_PORT}/blob.bin", self.t4);
        let out = self
            .u
            .exec(
                &[],
                &[
                    "curl",
                    "-sS",
                    "--fail",
                    "--max-time",
                    "60",
                    "--socks5",
                    SOCKS5,
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    &url,
                ],
            )?
            .check()?;
        if out.stdout.trim() != BLOB_LEN.to_string() {
            return Err(format!("fetched {} bytes from {url}", out.stdout.trim()));
        }
        step(&format!(
            "curl --socks5 {SOCKS5} {url} -> {} bytes",
            out.stdout.trim()
        ));
        Ok(())
    }

    /// The MCP server runs on the SDK's defaults (127.0.0.1, Host checks
    /// on) behind `agentnet serve --http` on the TUN agent.
    fn mcp_through_socks5(&self) -> Result<(), String> {
        let port = MCP_PORT.to_string();
        let script = apps_dir().join("mcp_server.py");
        let server = self.lab.spawn(
            &self.t.host.ns,
            "mcp-server",
            &[&self.python, "-u", path_str(&script), &port],
        )?;
        self.wait_listening(&self.t.host.ns, MCP_PORT, server, true)?;
        if let Err(e) = self.t.cli_ok(&["serve", "--http", &port]) {
            self.lab.stop(server);
            return Err(e);
        }
        let client = apps_dir().join("mcp_client.py");
        let url = format!("http://tunny.agent.internal:{port}/mcp");
        // httpx takes the proxy from the environment (socksio speaks SOCKS5);
        // with socks5h the proxy resolves the name.
        let proxy = format!("socks5h://{SOCKS5}");
        let all_proxy = format!("ALL_PROXY={proxy}");
        let out = self.lab.exec(
            &self.u.host.ns,
            &[
                "env",
                &all_proxy,
                &self.python,
                "-u",
                path_str(&client),
                &url,
            ],
        );
        let (_, log) = self.lab.stop(server);
        self.t.cli_ok(&["serve", "--off", &port])?;
        let out = out?.check().map_err(|e| format!("{e}\nserver:\n{log}"))?;
        for line in ["tools: add", "add: 42"] {
            if !out.stdout.lines().any(|l| l.trim() == line) {
                return Err(format!(
                    "expected {line:?} from the MCP client:\n{}",
                    out.stdout
                ));
            }
        }
        Ok(())
    }

    /// A service on the rootless agent's loopback, published with
    /// `agentnet serve` before `up`, sees who calls (forged headers gone).
    fn served(&self) -> Result<(), String> {
        let port = SERVED_PORT.to_string();
        let script = apps_dir().join("echo_headers.py");
        let release = self.lab.dir().join("release-served");
        let server = self.lab.spawn(
            &self.u.host.ns,
            "echo-headers",
            &[
                &self.python,
                "-u",
                path_str(&script),
                &port,
                path_str(&release),
            ],
        )?;
        self.wait_listening(&self.u.host.ns, SERVED_PORT, server, true)?;
        let url = format!("http://rootless.agent.internal:{port}/");
        let got = self.lab.exec(
            &self.t.host.ns,
            &http::as_strs(&http::get_args(
                &url,
                Duration::from_secs(20),
                &["-H", "Agentnet-Peer-Id: forged"],
            )),
        );
        let changed = self.u.cli(&["serve", "8071"]);
        self.lab.stop(server);
        let got = got?.check()?;
        let seen: serde_json::Value = serde_json::from_str(&got.stdout)
            .map_err(|e| format!("not JSON ({e}): {}", got.stdout))?;
        let id_t = self.t.id()?;
        if seen["agentnet-peer-id"] != serde_json::json!([id_t.id])
            || seen["agentnet-peer-name"] != serde_json::json!(["tunny"])
            || seen["x-forwarded-for"] != serde_json::json!([id_t.address.to_string()])
        {
            return Err(format!("the served service saw {seen}"));
        }
        let changed = changed?;
        if changed.ok() || !changed.stderr.contains("set at start") {
            return Err(format!(
                "serve while the rootless agent runs should say the ports are set at start:\n{}",
                changed.describe()
            ));
        }
        Ok(())
    }

    fn exposed(&self) -> Result<(), String> {
        // Written by root into nobody's directory: world-readable.
        let www = self.u.scratch().join("site");
        let page = "hello from a rootless agent\n";
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        std::fs::write(www.join("hello.txt"), page).map_err(|e| e.to_string())?;
        let port = EXPOSED_PORT.to_string();
        let server = self.lab.spawn(
            &self.u.host.ns,
            "exposed-http",
            &[
                &self.python,
                "-m",
                "http.server",
                &port,
                "--directory",
                path_str(&www),
            ],
        )?;
        self.wait_listening(&self.u.host.ns, EXPOSED_PORT, server, true)?;
        let address = self.id_u.address;
        let by_name = format!("http://rootless.agent.internal:{port}/hello.txt");
        let got = self
            .lab
            .exec(
                &self.t.host.ns,
                &[
                    "curl",
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "20",
                    &by_name,
                ],
            )?
            .check()?;
        if got.stdout != page {
            return Err(format!("the tun agent fetched {:?}", got.stdout));
        }
        // Over IPv4, at the rootless agent's IPv4 address.
        let by_ipv4 = format!("http://{}:{port}/hello.txt", self.u4);
        let got = self
            .lab
            .exec(
                &self.t.host.ns,
                &[
                    "curl",
                    "-4",
                    "-sS",
                    "--fail",
                    "--noproxy",
                    "*",
                    "--max-time",
                    "20",
                    &by_ipv4,
                ],
            )?
            .check()?;
        if got.stdout != page {
            return Err(format!("the tun agent fetched {:?} over IPv4", got.stdout));
        }
        step(&format!("tunny: curl -4 {by_ipv4} -> {:?}", got.stdout));
        // Not exposed: the stack answers with a reset (curl: 7, refused), at once.
        let started = Instant::now();
        let refused = self.lab.exec(
            &self.t.host.ns,
            &[
                "curl",
                "-sS",
                "-g",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                &format!("http://[{address}]:{UNEXPOSED_PORT}/"),
            ],
        )?;
        if refused.status.code() != Some(7) || started.elapsed() > Duration::from_secs(5) {
            return Err(format!(
                "an unexposed port: expected a quick refusal (curl exit 7):\n{}",
                refused.describe()
            ));
        }
        // Exposed, but the local service is down: refused too.
        self.lab.stop(server);
        let down = self.lab.exec(
            &self.t.host.ns,
            &[
                "curl",
                "-sS",
                "--noproxy",
                "*",
                "--max-time",
                "10",
                &by_name,
            ],
        )?;
        if down.status.code() != Some(7) {
            return Err(format!(
                "the exposed port with its service stopped: expected a refusal (curl exit 7):\n{}",
                down.describe()
            ));
        }
        Ok(())
    }

    fn ping(&self) -> Result<(), String> {
        let u4 = self.u4.to_string();
        for (family, target) in [("-6", "rootless.agent.internal"), ("-4", u4.as_str())] {
            self.lab
                .exec(
                    &self.t.host.ns,
                    &[
                        "ping", family, "-n", "-c", "3", "-i", "0.2", "-W", "2", target,
                    ],
                )?
                .check()?;
        }
        Ok(())
    }

    fn udp_forward(&self) -> Result<(), String> {
        let echo = "import socket\n\
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
            s.bind(('0.0.0.0', 5300))\n\
            while True:\n    data, peer = s.recvfrom(65535)\n    s.sendto(data, peer)\n";
        let server = self
            .lab
            .spawn(&self.t.host.ns, "udp-echo", &[&self.python, "-c", echo])?;
        self.wait_listening(&self.t.host.ns, UDP_PORT, server, false)?;
        let client = "import socket, sys\n\
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
            s.settimeout(1)\n\
            for size in (64, 512, 1232):\n\
            \x20   data = bytes(range(256)) * (size // 256) + bytes(size % 256)\n\
            \x20   for attempt in range(10):\n\
            \x20       s.sendto(data, ('127.0.0.1', 5300))\n\
            \x20       try:\n\
            \x20           got, _ = s.recvfrom(65535)\n\
            \x20           break\n\
            \x20       except socket.timeout:\n\
            \x20           got = None\n\
            \x20   assert got == data, (size, got and len(got))\n\
            \x20   print('echoed', size)\n";
        let out = self
            .lab
            .exec(&self.u.host.ns, &[&self.python, "-c", client]);
        self.lab.stop(server);
        let out = out?.check()?;
        if out
            .stdout
            .lines()
            .filter(|l| l.starts_with("echoed"))
            .count()
            != 3
        {
            return Err(format!("udp echo:\n{}", out.stdout));
        }
        Ok(())
    }

    /// `dig` (as nobody) at the local port forwarded to `PREFIX::53`: the
    /// daemon's own responder answers.
    fn names_through_forward(&self) -> Result<(), String> {
        let port = DNS_FORWARD_PORT.to_string();
        let out = self
            .u
            .exec(
                &[],
                &[
                    "dig",
                    "+short",
                    "+tries=3",
                    "+time=2",
                    "@127.0.0.1",
                    "-p",
                    &port,
                    "tunny.agent.internal",
                    "AAAA",
                ],
            )?
            .check()?;
        let want = self.t.id()?.address.to_string();
        if out.stdout.trim() != want {
            return Err(format!(
                "dig answered {:?}, expected {want}",
                out.stdout.trim()
            ));
        }
        Ok(())
    }

    fn status(&self) -> Result<(), String> {
        let status = self.u.status()?;
        let userspace = &status["userspace"];
        let opened = userspace["tcp_opened"].as_u64().unwrap_or(0);
        let to_local = userspace["bytes_to_local"].as_u64().unwrap_or(0);
        if status["interface"] != "userspace"
            || userspace["socks5"] != SOCKS5
            || opened < 3
            || to_local < BLOB_LEN as u64
        {
            return Err(format!("unexpected status:\n{status:#}"));
        }
        let peer = support::agent::peer_in_status(&status, &self.t.id()?.id)
            .ok_or_else(|| format!("tunny is not in the status:\n{status:#}"))?;
        if peer["path"] != "direct" {
            return Err(format!("the path to tunny is not direct:\n{peer:#}"));
        }
        let text = self.u.cli_ok(&["status"])?;
        step(&format!("rootless status:\n{}", text.stdout.trim_end()));
        Ok(())
    }

    fn down(&self) -> Result<(), String> {
        let pid = self.u.pid()?;
        self.u.down()?;
        wait_until("the daemon to exit", Duration::from_secs(10), || {
            !support::pid_alive(pid)
        })?;
        let listening = self
            .lab
            .exec_ok(&self.u.host.ns, &["ss", "-Hltn", "sport", "=", ":1080"])?;
        if !listening.stdout.trim().is_empty() {
            return Err(format!(
                "something still listens on 1080:\n{}",
                listening.stdout
            ));
        }
        Ok(())
    }
}
