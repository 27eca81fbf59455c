//! Drives one `agentnet` instance through its CLI inside a lab host.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::lab::{Host, Lab};
use super::{Output, pid_comm, pids_mentioning, run, tail};

/// UDP port every test agent listens on (each in its own namespace).
pub const AGENT_PORT: u16 = 7400;

/// Limit for one CLI call (`up` and `down` included).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// The binary under test.
pub fn agentnet_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_agentnet"))
}

/// What `agentnet id --json` says.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Agent ID (the token operators exchange).
    pub id: String,
    /// Overlay address.
    pub address: Ipv6Addr,
    /// The whole JSON object.
    pub json: Value,
}

/// One agent: a state directory (a fresh tempdir) and a daemon in a lab host.
pub struct Agent<'l> {
    lab: &'l Lab,
    /// The host it runs on.
    pub host: Host,
    /// Its own name (`init --name`).
    pub name: String,
    /// Its TUN interface name, unique to this lab.
    pub iface: String,
    /// Its UDP port.
    pub port: u16,
    /// The root-owned directory (mode 755) that holds the state
    /// directory, as /var/lib holds /var/lib/agentnet: `up --user` refuses
    /// a state directory right in /tmp, where others may write.
    _parent: tempfile::TempDir,
    state: PathBuf,
}

impl<'l> Agent<'l> {
    /// An agent for `host`, not initialised yet.
    pub fn new(lab: &'l Lab, host: &Host, name: &str) -> Result<Self, String> {
        let parent = tempfile::Builder::new()
            .prefix("an-state-")
            .tempdir()
            .map_err(|e| format!("state tempdir: {e}"))?;
        std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("state tempdir mode: {e}"))?;
        let state = parent.path().join("state");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .map_err(|e| format!("state directory: {e}"))?;
        Ok(Self {
            lab,
            host: host.clone(),
            name: name.to_string(),
            iface: lab.iface_name(&host.role),
            port: AGENT_PORT,
            _parent: parent,
            state,
        })
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The underlay endpoint its daemon listens on.
    pub fn endpoint(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(self.host.ip, self.port))
    }

    /// Runs `agentnet --state-dir DIR ARGS...` inside the host's namespace.
    pub fn cli(&self, args: &[&str]) -> Result<Output, String> {
        let bin = agentnet_bin();
        let state = self.state_dir().to_string_lossy().into_owned();
        let mut full: Vec<&str> = vec![bin.to_str().expect("utf-8 path"), "--state-dir", &state];
        full.extend_from_slice(args);
        run(self.lab.command(&self.host.ns, &full), CLI_TIMEOUT)
    }

    /// Like [`Agent::cli`], requiring exit status 0; the error carries the
    /// daemon log's tail.
    pub fn cli_ok(&self, args: &[&str]) -> Result<Output, String> {
        self.cli(args)?
            .check()
            .map_err(|e| format!("{}: {e}\n{}", self.name, self.log_excerpt(30)))
    }

    /// `agentnet init --name NAME`.
    pub fn init(&self) -> Result<(), String> {
        self.cli_ok(&["init", "--name", &self.name]).map(drop)
    }

    /// `agentnet up --interface IFACE --port PORT` (returns when the
    /// interface is ready; the daemon keeps running).
    pub fn up(&self) -> Result<(), String> {
        let port = self.port.to_string();
        self.cli_ok(&["up", "--interface", &self.iface, "--port", &port])
            .map(drop)
    }

    /// `up` with extra arguments after `--interface IFACE --port PORT`.
    pub fn up_with(&self, extra: &[&str]) -> Result<(), String> {
        let port = self.port.to_string();
        let mut args = vec!["up", "--interface", &self.iface, "--port", &port];
        args.extend_from_slice(extra);
        self.cli_ok(&args).map(drop)
    }

    /// Runs `WRAPPER... agentnet --state-dir DIR ARGS...` inside the host's
    /// namespace: `wrapper` is e.g. `setpriv --reuid=65534 ...` (run as
    /// another user) or `nsenter -t PID -m --` (see another mount namespace).
    pub fn cli_wrapped(&self, wrapper: &[&str], args: &[&str]) -> Result<Output, String> {
        let bin = agentnet_bin();
        let state = self.state_dir().to_string_lossy().into_owned();
        let mut full: Vec<&str> = wrapper.to_vec();
        full.extend([bin.to_str().expect("utf-8 path"), "--state-dir", &state]);
        full.extend_from_slice(args);
        run(self.lab.command(&self.host.ns, &full), CLI_TIMEOUT)
    }

    /// The daemon's PID, as its status says.
    pub fn daemon_pid(&self) -> Result<u32, String> {
        let status = self.status()?;
        status["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .ok_or_else(|| format!("status has no pid: {status}"))
    }

    /// `agentnet down`.
    pub fn down(&self) -> Result<(), String> {
        self.cli_ok(&["down"]).map(drop)
    }

    /// `agentnet id --json`.
    pub fn id(&self) -> Result<Identity, String> {
        parse_id_json(&self.cli_ok(&["id", "--json"])?.stdout)
    }

    /// `agentnet status --json`.
    pub fn status(&self) -> Result<Value, String> {
        parse_status_json(&self.cli_ok(&["status", "--json"])?.stdout)
    }

    /// `agentnet trust add ID --name NAME [--endpoint HOST:PORT]`.
    pub fn trust_add(
        &self,
        peer: &Identity,
        name: &str,
        endpoint: Option<SocketAddr>,
    ) -> Result<(), String> {
        let endpoint = endpoint.map(|e| e.to_string());
        let mut args = vec!["trust", "add", peer.id.as_str(), "--name", name];
        if let Some(e) = &endpoint {
            args.extend(["--endpoint", e.as_str()]);
        }
        self.cli_ok(&args).map(drop)
    }

    /// This agent and `peer` trust each other under their own names, each
    /// with the other's endpoint (a direct path from the first packet).
    pub fn trust_each_other_direct(
        &self,
        id: &Identity,
        peer: &Agent,
        peer_id: &Identity,
    ) -> Result<(), String> {
        self.trust_add(peer_id, &peer.name, Some(peer.endpoint()))?;
        peer.trust_add(id, &self.name, Some(self.endpoint()))
    }

    /// PIDs of this agent's processes: `agentnet` processes in its namespace,
    /// and any process whose command line names its state directory.
    pub fn daemon_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .lab
            .netns_pids(&self.host.ns)
            .into_iter()
            .filter(|&pid| pid_comm(pid).is_some_and(|c| c.starts_with("agentnet")))
            .collect();
        pids.extend(pids_mentioning(&self.state_dir().to_string_lossy()));
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The daemon log (`STATE_DIR/agentnet.log`), empty if there is none.
    pub fn log(&self) -> String {
        let path = self.state_dir().join("agentnet.log");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the daemon log, headed by the agent's name.
    pub fn log_excerpt(&self, lines: usize) -> String {
        format!(
            "--- {} ({}) agentnet.log, last {lines} lines ---\n{}",
            self.name,
            self.host.ns,
            tail(&self.log(), lines)
        )
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        // The state directory (and the log in it) goes away with the agent:
        // show the log while a failing test unwinds.
        if std::thread::panicking() {
            eprintln!("{}", self.log_excerpt(80));
        }
    }
}

/// The entry of `status["peers"]` whose `id` is `id`.
pub fn peer_in_status<'a>(status: &'a Value, id: &str) -> Option<&'a Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["id"].as_str() == Some(id))
}

/// The sum of every counter in `status["dropped"]`.
pub fn dropped_total(status: &Value) -> u64 {
    fn sum(v: &Value) -> u64 {
        match v {
            Value::Number(n) => n.as_u64().unwrap_or(0),
            Value::Object(m) => m.values().map(sum).sum(),
            Value::Array(a) => a.iter().map(sum).sum(),
            _ => 0,
        }
    }
    sum(&status["dropped"])
}

/// Parses the output of `agentnet id --json`.
pub fn parse_id_json(stdout: &str) -> Result<Identity, String> {
    let json: Value = serde_json::from_str(stdout)
        .map_err(|e| format!("`id --json` is not JSON ({e}): {stdout}"))?;
    let id = json["id"]
        .as_str()
        .ok_or_else(|| format!("`id --json` has no string \"id\": {json}"))?
        .to_string();
    let address = json["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("`id --json` has no IPv6 \"address\": {json}"))?;
    Ok(Identity { id, address, json })
}

/// Parses the output of `agentnet status --json`.
pub fn parse_status_json(stdout: &str) -> Result<Value, String> {
    serde_json::from_str(stdout).map_err(|e| format!("`status --json` is not JSON ({e}): {stdout}"))
}
