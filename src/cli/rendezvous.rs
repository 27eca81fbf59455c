//! `agentnet rendezvous` (the rendezvous/relay server) and `agentnet
//! netcheck` (what the network to the rendezvous servers allows).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::Instance;
use agentnet::core::address::NetworkId;
use agentnet::metrics::MetricsListen;
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::rendezvous::server::{self, RendezvousOptions};
use agentnet::state::{RENDEZVOUS_LOG_FILE, RENDEZVOUS_PID_FILE, StateDir, atomic_write};
use agentnet::sys::nofollow::OpenFor;
use agentnet::sys::udp::resolve_endpoint;

/// How long a detaching `rendezvous` waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of its log a starting rendezvous server is read for.
const START_LOG_LIMIT: usize = 64 * 1024;

/// Arguments of `rendezvous`.
#[derive(Debug, Args)]
pub(crate) struct RendezvousArgs {
    /// UDP address to listen on, e.g. 0.0.0.0:7300 or [::]:7300.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) listen: SocketAddr,
    /// TCP address for agents whose UDP is blocked (framed datagrams);
    /// agents try the same port number as the UDP one.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) tcp_listen: Option<SocketAddr>,
    /// Stay attached (systemd, containers, tests) instead of detaching.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (registrations,
    /// relayed bytes, drops, rate-limit hits); loopback only unless
    /// --metrics-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Allow --metrics on an address other than loopback.
    #[arg(long, requires = "metrics")]
    pub(crate) metrics_allow_remote: bool,
}

/// Arguments of `netcheck`.
#[derive(Debug, Args)]
pub(crate) struct NetcheckArgs {
    /// Rendezvous servers to check, as HOST:PORT=ID (repeatable) [default:
    /// the config file's list].
    #[arg(long = "rendezvous", value_name = "HOST:PORT=ID")]
    pub(crate) rendezvous: Vec<RendezvousSpec>,
    /// Print JSON.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Runs (or starts, detached) the rendezvous server.
pub(crate) fn rendezvous(context: &Instance, args: RendezvousArgs) -> Result<()> {
    let state = &context.state;
    state.create()?;
    agentnet::agent::privilege::check_state_permissions(state)?;
    let (identity, _) = state.load_or_create_identity()?;
    let metrics = args.metrics.map(|address| MetricsListen {
        address,
        allow_remote: args.metrics_allow_remote,
    });
    if let Some(metrics) = &metrics {
        metrics.check()?;
    }
    if args.foreground {
        return Ok(server::run(RendezvousOptions {
            state: state.clone(),
            listen: args.listen,
            tcp_listen: args.tcp_listen,
            metrics,
            tcp_limits: server::TcpLimits::default(),
        })?);
    }
    // The directory may belong to the daemon's user (after an `up`): its
    // files are opened without following links, and read back through the
    // descriptor opened here.
    let log_path = state.root().join(RENDEZVOUS_LOG_FILE);
    let log = state.open_file(RENDEZVOUS_LOG_FILE, OpenFor::Append(0o600))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let reader = state.open_file(RENDEZVOUS_LOG_FILE, OpenFor::Read)?;
    if !same_file(&log, &reader)? {
        bail!("{} was replaced while it was opened", log_path.display());
    }
    let mut command = Process::new(std::env::current_exe().context("cannot find own executable")?);
    command.arg("--state-dir").arg(state.root()).args([
        "rendezvous",
        "--foreground",
        "--listen",
        &args.listen.to_string(),
    ]);
    if let Some(tcp) = args.tcp_listen {
        command.args(["--tcp-listen", &tcp.to_string()]);
    }
    if let Some(address) = args.metrics {
        command.args(["--metrics", &address.to_string()]);
        if args.metrics_allow_remote {
            command.arg("--metrics-allow-remote");
        }
    }
    use std::os::unix::process::CommandExt;
    command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let mut child = command
        .spawn()
        .context("cannot start the rendezvous server")?;
    let started = Instant::now();
    loop {
        let fresh = read_from(&reader, log_start);
        if fresh.contains("listening on") {
            break;
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the rendezvous server exited ({status}):\n{}",
                fresh.trim_end()
            );
        }
        if started.elapsed() > START_TIMEOUT {
            bail!(
                "the rendezvous server did not start within {START_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    write_pid_file(state, child.id())?;
    say!("rendezvous is up (pid {})", child.id());
    say!("  id       {}", identity.agent_id());
    say!("  udp      {}", args.listen);
    if let Some(tcp) = args.tcp_listen {
        say!("  tcp      {tcp}");
    }
    if let Some(address) = args.metrics {
        say!("  metrics  http://{address}/metrics");
    }
    say!("  log      {}", log_path.display());
    say!(
        "agents use it with: agentnet up --rendezvous HOST:{}={}",
        args.listen.port(),
        identity.agent_id()
    );
    Ok(())
}

/// Writes the detached server's PID file: replaced, never written through
/// a link planted at its name.
fn write_pid_file(state: &StateDir, pid: u32) -> Result<()> {
    let path = state.root().join(RENDEZVOUS_PID_FILE);
    Ok(atomic_write(&path, format!("{pid}\n").as_bytes(), 0o644)?)
}

/// Whether `a` and `b` are open on the same file.
fn same_file(a: &File, b: &File) -> Result<bool> {
    let (a, b) = (a.metadata()?, b.metadata()?);
    Ok((a.dev(), a.ino()) == (b.dev(), b.ino()))
}

/// What `log` holds from `start` on, read up to [`START_LOG_LIMIT`] bytes
/// (the server writes a few lines before it listens).
fn read_from(log: &File, start: u64) -> String {
    let mut bytes = vec![0; START_LOG_LIMIT];
    let mut filled = 0;
    while filled < bytes.len() {
        match log.read_at(&mut bytes[filled..], start + filled as u64) {
            Ok(0) | Err(_) => break,
            Ok(read) => filled += read,
        }
    }
    bytes.truncate(filled);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Checks UDP, TCP and the NAT's behaviour towards the rendezvous servers.
pub(crate) fn netcheck(context: &Instance, args: NetcheckArgs) -> Result<()> {
    let config = context.state.load_config()?;
    let mut specs = args.rendezvous;
    if specs.is_empty()
        && let Some(config) = &config
    {
        for text in &config.rendezvous {
            specs.push(
                text.parse()
                    .map_err(anyhow::Error::msg)
                    .context("bad rendezvous in config.toml")?,
            );
        }
    }
    if specs.is_empty() {
        bail!(
            "no rendezvous to check: pass --rendezvous HOST:PORT=ID (twice to tell easy from hard NAT)"
        );
    }
    let mut rendezvous = Vec::new();
    for spec in &specs {
        rendezvous.push((spec.id, resolve_endpoint(&spec.endpoint)?));
    }
    let network = NetworkId::from_name(
        config
            .as_ref()
            .map_or(agentnet::core::address::DEFAULT_NETWORK_NAME, |c| {
                c.network.as_str()
            }),
    );
    let local = local_addresses();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(agentnet::rendezvous::netcheck::run(
        network,
        &rendezvous,
        &local,
    ));
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    say!(
        "udp      {}",
        if report.udp {
            "works"
        } else {
            "blocked (no answer)"
        }
    );
    say!(
        "tcp      {}",
        if report.tcp {
            "works (fallback available)"
        } else {
            "no answer"
        }
    );
    say!(
        "nat      {}",
        match report.nat.as_str() {
            "none" => "none (public address)",
            "easy" => "easy (same mapping for every destination: direct paths likely)",
            "hard" => "hard (new port per destination: relay or birthday probing)",
            _ => "unknown (needs answers from two rendezvous over UDP)",
        }
    );
    for check in &report.rendezvous {
        let reflexive = check
            .reflexive
            .map_or("-".to_string(), |address| address.to_string());
        say!(
            "  {}  reflexive {reflexive}  tcp {}",
            check.endpoint,
            if check.tcp { "ok" } else { "-" }
        );
    }
    Ok(())
}

fn local_addresses() -> Vec<SocketAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(SocketAddr::from((v4.ip(), 0)));
            }
            address
                .as_sockaddr_in6()
                .map(|v6| SocketAddr::from((v6.ip(), 0)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_planted_at_the_rendezvous_files_are_not_followed() {
        let temp = tempfile::tempdir().expect("temp");
        let canary = temp.path().join("canary");
        std::fs::write(&canary, "root's file\n").expect("canary");
        let context = Instance {
            state: StateDir::new(temp.path().join("state")),
            socket: temp.path().join("agentnet.sock"),
        };
        let root = context.state.root();
        context.state.create().expect("state");
        for name in [RENDEZVOUS_LOG_FILE, RENDEZVOUS_PID_FILE] {
            std::os::unix::fs::symlink(&canary, root.join(name)).expect("symlink");
        }
        let args = RendezvousArgs {
            listen: "127.0.0.1:0".parse().expect("address"),
            tcp_listen: None,
            foreground: false,
            metrics: None,
            metrics_allow_remote: false,
        };
        let error = rendezvous(&context, args).expect_err("the log is a link");
        assert!(format!("{error:#}").contains("symbolic link"), "{error:#}");
        write_pid_file(&context.state, 4242).expect("pid file");
        let pid_file = root.join(RENDEZVOUS_PID_FILE);
        assert!(!pid_file.is_symlink(), "the link is replaced");
        assert_eq!(std::fs::read_to_string(pid_file).expect("pid"), "4242\n");
        assert_eq!(
            std::fs::read_to_string(&canary).expect("canary"),
            "root's file\n"
        );
    }

    #[test]
    fn the_start_log_is_read_from_where_this_start_began() {
        let temp = tempfile::tempdir().expect("temp");
        let path = temp.path().join("log");
        std::fs::write(&path, "old run listening on\nnew run\n").expect("log");
        let log = File::open(&path).expect("open");
        assert_eq!(read_from(&log, 21), "new run\n");
        assert_eq!(read_from(&log, 100), "");
    }
}
