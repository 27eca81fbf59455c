//! A network-namespace lab: uniquely named namespaces wired by veth pairs
//! (and a bridge), commands run inside them, tracked background processes,
//! and a cleanup on drop (also when the test panics) that touches only what
//! this lab created.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{Output, pid_alive, run, terminate_pid, wait_until};

/// Default limit for a command run inside the lab.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a process gets between SIGTERM and SIGKILL at cleanup.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Proxy variables that must not send lab traffic anywhere else.
const PROXY_VARS: &[&str] = &[
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
];

static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// A number unique within this process, for names.
pub fn next_serial() -> usize {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// One host of the lab: a namespace with one underlay interface.
#[derive(Debug, Clone)]
pub struct Host {
    /// Role given by the test (`a`, `b`, ...).
    pub role: String,
    /// Network namespace name.
    pub ns: String,
    /// Underlay interface inside the namespace.
    pub iface: String,
    /// Underlay IPv4 address.
    pub ip: Ipv4Addr,
}

struct Tracked {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A set of namespaces and the processes running in them; everything is
/// removed when the lab is dropped.
pub struct Lab {
    prefix: String,
    short: String,
    dir: tempfile::TempDir,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Tracked>>,
}

impl Lab {
    /// An empty lab; namespace names start with `an-<pid>-<serial>-`.
    pub fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let serial = next_serial();
        let dir = tempfile::Builder::new()
            .prefix("an-lab-")
            .tempdir()
            .map_err(|e| format!("lab tempdir: {e}"))?;
        Ok(Self {
            prefix: format!("an-{pid}-{serial}"),
            short: format!("an{pid:x}{serial:x}"),
            dir,
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
        })
    }

    /// The namespace name prefix of this lab.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// An interface name unique to this lab and `role` (at most 15 bytes,
    /// the kernel's limit).
    pub fn iface_name(&self, role: &str) -> String {
        let name = format!("{}{role}", self.short);
        assert!(name.len() <= 15, "interface name too long: {name}");
        name
    }

    /// A scratch directory that lives as long as the lab.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates namespace `<prefix>-<role>` with its loopback up.
    pub fn add_namespace(&self, role: &str) -> Result<String, String> {
        let ns = format!("{}-{role}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.namespaces.lock().unwrap().push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// One L2 segment: a bridge in its own namespace `<prefix>-sw` and one
    /// namespace per role, each with `eth0` = `10.<net>.<net2>.<i+1>/24`.
    /// Returns once every host can ping the first one.
    pub fn bridge_segment(&self, net: [u8; 2], roles: &[&str]) -> Result<Vec<Host>, String> {
        let sw = self.add_namespace("sw")?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        let mut hosts = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            let ns = self.add_namespace(role)?;
            let port = format!("p-{role}");
            let host_octet = u8::try_from(i + 1).map_err(|_| "too many hosts")?;
            let addr = Ipv4Addr::new(10, net[0], net[1], host_octet);
            // Created from inside the switch namespace, straight into the
            // host namespace: no interface ever appears in the host's own.
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            hosts.push(Host {
                role: role.to_string(),
                ns,
                iface: "eth0".into(),
                ip: addr,
            });
        }
        self.wait_underlay(&hosts)?;
        Ok(hosts)
    }

    /// Gives every host permanent neighbour (ARP) entries for all the
    /// others, so no ARP runs between them. Needed for large segments: the
    /// kernel keeps one ARP table for all namespaces, and past
    /// `net.ipv4.neigh.default.gc_thresh3` (1024) dynamic entries in all it
    /// drops datagrams ("neighbor table overflow!" in dmesg) until its
    /// garbage collection, tens of seconds later; a full mesh of N hosts
    /// needs N·(N-1) entries. Permanent entries do not count.
    pub fn static_neighbours(&self, hosts: &[Host]) -> Result<(), String> {
        let mut macs = Vec::new();
        for host in hosts {
            let out = self.exec_ok(
                &host.ns,
                &["cat", &format!("/sys/class/net/{}/address", host.iface)],
            )?;
            macs.push(out.stdout.trim().to_string());
        }
        for host in hosts {
            let batch: String = hosts
                .iter()
                .zip(&macs)
                .filter(|(other, _)| other.ns != host.ns)
                .map(|(other, mac)| {
                    format!(
                        "neigh replace {} lladdr {mac} dev {} nud permanent\n",
                        other.ip, host.iface
                    )
                })
                .collect();
            let path = self.dir().join(format!("neigh-{}", host.role));
            std::fs::write(&path, batch).map_err(|e| format!("{}: {e}", path.display()))?;
            ip(&["-n", &host.ns, "-batch", &path.to_string_lossy()])?;
        }
        Ok(())
    }

    /// Two namespaces joined by one veth pair (`eth0` on both sides,
    /// `10.<net>.<net2>.1/24` and `.2/24`), with the given MTU.
    pub fn veth_pair(&self, net: [u8; 2], roles: [&str; 2], mtu: u16) -> Result<[Host; 2], String> {
        let ns_a = self.add_namespace(roles[0])?;
        let ns_b = self.add_namespace(roles[1])?;
        ip(&[
            "-n",
            &ns_a,
            "link",
            "add",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "mtu",
            &mtu.to_string(),
            "netns",
            &ns_b,
        ])?;
        let mut hosts = Vec::new();
        for (i, (role, ns)) in [(roles[0], ns_a), (roles[1], ns_b)].into_iter().enumerate() {
            let addr = Ipv4Addr::new(10, net[0], net[1], i as u8 + 1);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            hosts.push(Host {
                role: role.to_string(),
                ns,
                iface: "eth0".into(),
                ip: addr,
            });
        }
        self.wait_underlay(&hosts)?;
        let [a, b]: [Host; 2] = hosts.try_into().expect("two hosts");
        Ok([a, b])
    }

    /// Waits until every host reaches the first one over the underlay.
    fn wait_underlay(&self, hosts: &[Host]) -> Result<(), String> {
        let Some(first) = hosts.first() else {
            return Ok(());
        };
        for h in &hosts[1..] {
            let target = first.ip.to_string();
            wait_until(
                &format!("underlay {} -> {}", h.ip, first.ip),
                Duration::from_secs(10),
                || {
                    self.exec(&h.ns, &["ping", "-n", "-c", "1", "-W", "1", &target])
                        .is_ok_and(|o| o.ok())
                },
            )?;
        }
        Ok(())
    }

    /// Limits what `host` sends on its underlay interface to `rate` (tc
    /// syntax, e.g. `8mbit`): a download from it then takes a known time.
    /// The tunnel is far faster than any test needs, and curl's
    /// `--limit-rate` does not hold back a fast start.
    pub fn shape_egress(&self, host: &Host, rate: &str) -> Result<(), String> {
        self.exec_ok(
            &host.ns,
            &[
                "tc",
                "qdisc",
                "add",
                "dev",
                &host.iface,
                "root",
                "tbf",
                "rate",
                rate,
                "burst",
                "64kb",
                "latency",
                "400ms",
            ],
        )
        .map(drop)
    }

    /// A command that runs `args` inside namespace `ns`, without proxies.
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(args);
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        cmd
    }

    /// Runs `args` inside `ns` to completion (at most [`COMMAND_TIMEOUT`]).
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<Output, String> {
        run(self.command(ns, args), COMMAND_TIMEOUT)
    }

    /// Runs `args` inside `ns` and requires exit status 0.
    pub fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<Output, String> {
        self.exec(ns, args)?.check()
    }

    /// Starts `args` inside `ns` in the background, output to files in the
    /// lab directory. Returns its PID (`ip netns exec` execs the program, so
    /// the PID is the program's own); the lab stops it at the latest on drop.
    pub fn spawn(&self, ns: &str, name: &str, args: &[&str]) -> Result<u32, String> {
        let n = next_serial();
        let stdout = self.dir().join(format!("bg-{n}-{name}.out"));
        let stderr = self.dir().join(format!("bg-{n}-{name}.err"));
        let open = |p: &Path| File::create(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut cmd = self.command(ns, args);
        cmd.stdin(Stdio::null())
            .stdout(open(&stdout)?)
            .stderr(open(&stderr)?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} in {ns}: {e}"))?;
        let pid = child.id();
        self.children.lock().unwrap().push(Tracked {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        });
        Ok(pid)
    }

    /// `(stdout, stderr)` of a background process so far.
    pub fn spawn_output(&self, pid: u32) -> (String, String) {
        let children = self.children.lock().unwrap();
        let Some(t) = children.iter().find(|t| t.child.id() == pid) else {
            return (String::new(), String::new());
        };
        (read_lossy(&t.stdout), read_lossy(&t.stderr))
    }

    /// Whether a background process started by [`Lab::spawn`] is still running.
    pub fn spawn_running(&self, pid: u32) -> bool {
        let mut children = self.children.lock().unwrap();
        children
            .iter_mut()
            .find(|t| t.child.id() == pid)
            .is_some_and(|t| matches!(t.child.try_wait(), Ok(None)))
    }

    /// Stops a background process (SIGTERM, then SIGKILL), reaps it, and
    /// returns its `(stdout, stderr)`.
    pub fn stop(&self, pid: u32) -> (String, String) {
        let tracked = {
            let mut children = self.children.lock().unwrap();
            let i = children.iter().position(|t| t.child.id() == pid);
            i.map(|i| children.remove(i))
        };
        let Some(mut t) = tracked else {
            return (String::new(), String::new());
        };
        stop_tracked(&mut t);
        (read_lossy(&t.stdout), read_lossy(&t.stderr))
    }

    /// PIDs of all processes inside namespace `ns`.
    pub fn netns_pids(&self, ns: &str) -> Vec<u32> {
        netns_pids(ns)
    }

    /// Whether interface `iface` exists in `ns`.
    pub fn link_exists(&self, ns: &str, iface: &str) -> bool {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns, "link", "show", "dev", iface]);
        run(cmd, COMMAND_TIMEOUT).is_ok_and(|o| o.ok())
    }

    /// The IPv6 addresses (with prefix length) on `iface` in `ns`.
    pub fn ipv6_addrs(&self, ns: &str, iface: &str) -> Vec<String> {
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns, "-o", "-6", "addr", "show", "dev", iface]);
        run(cmd, COMMAND_TIMEOUT)
            .map(|o| {
                o.stdout
                    .lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        it.find(|w| *w == "inet6")?;
                        it.next().map(str::to_string)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut children = std::mem::take(&mut *self.children.lock().unwrap());
        for t in &mut children {
            stop_tracked(t);
        }
        let namespaces = std::mem::take(&mut *self.namespaces.lock().unwrap());
        for ns in namespaces.iter().rev() {
            // Whatever still runs in a namespace this lab created is the
            // test's own (e.g. a daemon that `agentnet up` forked off).
            for pid in netns_pids(ns) {
                terminate_pid(pid, STOP_GRACE);
            }
            let _ = ip(&["netns", "del", ns]);
            // What an agent or attachment left for `ip netns exec` (its
            // hosts file), should a daemon have died before removing it.
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}

fn stop_tracked(t: &mut Tracked) {
    if matches!(t.child.try_wait(), Ok(None)) {
        terminate_pid(t.child.id(), STOP_GRACE);
    }
    if let Err(e) = t.child.wait() {
        eprintln!("lab: reaping {} failed: {e}", t.name);
    }
}

fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn netns_pids(ns: &str) -> Vec<u32> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "pids", ns]);
    run(cmd, COMMAND_TIMEOUT)
        .map(|o| {
            o.stdout
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .filter(|&pid| pid_alive(pid))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `ip ARGS` in the current namespace and requires success.
fn ip(args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    run(cmd, COMMAND_TIMEOUT)?.check()
}
