//! `agentnet rendezvous` (the rendezvous/relay server) and `agentnet
//! netcheck` (what the network to the rendezvous servers allows).

use std::fs;
use std::net::SocketAddr;
use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;

use super::Instance;
use agentnet::core::address::NetworkId;
use agentnet::metrics::MetricsListen;
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::rendezvous::server::{self, RendezvousOptions};
use agentnet::sys::udp::resolve_endpoint;

/// How long a detaching `rendezvous` waits for the server to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

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
    let log_path = state.root().join("rendezvous.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
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
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let fresh = text
            .get(usize::try_from(log_start).unwrap_or(0)..)
            .unwrap_or("");
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
    fs::write(
        state.root().join("rendezvous.pid"),
        format!("{}\n", child.id()),
    )?;
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
