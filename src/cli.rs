//! The command line: argument definitions and one function per command.
//!
//! Commands that need the daemon talk to it over the control socket
//! ([`agentnet::control`]); `init` and `id` work on the state directory
//! alone, and the `trust` commands edit the store file directly when no
//! daemon runs.

use std::fs::{self, File};
use std::io::{IsTerminal, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

mod render;

use self::attach::{AttachArgs, DetachArgs};
use self::render::{StatusView, render_status, table};
use self::trust::{ApproveArgs, FleetCommand, RequestArgs, TRUST_LONG_ABOUT};
use agentnet::control::{ControlClient, ControlError, DaemonInfo, Request, Response, TrustedPeer};
use agentnet::core::address::{IPV4_PREFIX_LEN, NetworkId, NodePrefix, agent_address4};
use agentnet::core::identity::AgentId;
use agentnet::core::policy::Policy;
use agentnet::core::trust::store::{TrustEntry, TrustState, validate_name};
use agentnet::rendezvous::link::RendezvousSpec;
use agentnet::names::resolver_config::HostResolverMode;
use agentnet::sys::tun::DEFAULT_INTERFACE;
use agentnet::sys::udp::resolve_endpoint;
use agentnet::agent::{self, DEFAULT_PORT, DaemonOptions};
use agentnet::metrics::MetricsListen;
use agentnet::sys::nofollow::{OpenFor, open_in_dir};
use agentnet::state::{
    AgentConfig, DEFAULT_STATE_DIR, StateDir, TrustChange, default_agent_name,
    validate_network_name,
};

/// Prints a line on stdout. A closed stdout (`agentnet status | head -1`)
/// is not an error worth a panic: the reader has what it wanted.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

// After `say!`, which it uses.
mod attach;
mod ping;
mod rendezvous;
mod serve;
mod trust;
mod userspace;

/// Help heading of the options every command takes.
const GLOBAL: &str = "Global options";
/// How long `up` waits for the daemon to answer on its control socket.
const UP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `down` waits for the daemon process to exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `up` and `down` poll.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Log lines shown when a detached daemon fails to start.
const LOG_TAIL_LINES: usize = 25;
/// A log larger than this is moved to `agentnet.log.old` at the next `up`.
const LOG_ROTATE_BYTES: u64 = 8 * 1024 * 1024;

/// agentnet: key-derived IPv6 addresses and a Noise-encrypted overlay between
/// AI agents that trust each other.
#[derive(Debug, Parser)]
#[command(
    name = "agentnet",
    version,
    about = "An encrypted IPv6 overlay network between AI agents that trust each other",
    long_about = "An encrypted IPv6 overlay network between AI agents that trust each other.\n\n\
        Every agent has an Ed25519 identity and a permanent IPv6 address derived from it. \
        `agentnet up` creates a TUN interface; IP packets to trusted agents travel inside \
        Noise-encrypted UDP. Agents that are not trusted can neither see nor reach this one.\n\n\
        Typical use:\n  \
        agentnet init --name alice\n  \
        agentnet id                      # give the ID to the other operator\n  \
        agentnet trust add ID --name bob --endpoint 192.0.2.7:7400\n  \
        sudo agentnet up\n  \
        ping6 <bob's address>\n\n\
        Several instances on one host each use their own --state-dir (for example one per \
        network namespace)."
)]
pub(crate) struct Cli {
    /// State directory of this agent instance: identity, config, trust store, PID file,
    /// log and (by default) the control socket.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "DIR",
        env = "AGENTNET_STATE_DIR",
        default_value = DEFAULT_STATE_DIR
    )]
    pub(crate) state_dir: PathBuf,

    /// Control socket of the daemon [default: STATE_DIR/agentnet.sock].
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_name = "PATH",
        env = "AGENTNET_SOCKET"
    )]
    pub(crate) socket: Option<PathBuf>,

    /// Format of log lines (the daemon's log; commands log warnings only).
    /// Verbosity: AGENTNET_LOG or RUST_LOG, e.g. `debug` or `agentnet=trace`.
    #[arg(
        long,
        global = true,
        help_heading = GLOBAL,
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub(crate) log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    fn as_arg(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create this agent's identity (Ed25519 key) and configuration.
    #[command(long_about = "Create this agent's identity and configuration.\n\n\
        Writes STATE_DIR/identity.key (the 32-byte Ed25519 secret as 64 hex digits, mode 0600; \
        a key file that group or others can access is refused) and STATE_DIR/config.toml \
        (name and network). Prints the agent ID and address. The agent ID is what another \
        operator needs to trust this agent. Refuses to replace an existing identity unless \
        --force is given.")]
    Init(InitArgs),

    /// Print this agent's ID, address, node prefix and did:key (no daemon needed).
    Id {
        /// Print {"id","address","node_prefix","did","name","network"} as JSON.
        #[arg(long)]
        json: bool,
    },

    /// Create the TUN interface and run the daemon (detached unless --foreground).
    #[command(long_about = "Create the TUN interface and run the daemon.\n\n\
        Creates the identity first if `init` was never run. The interface gets the agent's \
        address with prefix length 48, so the whole overlay network routes into it; its MTU \
        is the largest MTU of this host's interfaces minus 92 bytes of tunnel overhead \
        (at least 1280), unless --mtu is given. One UDP socket on [::]:PORT serves IPv4 and \
        IPv6 peers.\n\n\
        Without --foreground the daemon detaches (its output goes to STATE_DIR/agentnet.log) \
        and `up` returns once the interface is ready, or fails with the log's last lines. \
        With --foreground it runs until SIGTERM, SIGINT or `agentnet down`, then removes \
        everything it created. SIGHUP reloads the trust store. Needs root or CAP_NET_ADMIN, \
        except with --userspace: then no TUN is created, an in-process TCP/IP stack holds the \
        agent address, and programs use --socks5, --forward and --expose instead.")]
    Up(UpArgs),

    /// Stop the daemon and wait until it has exited.
    Down,

    /// Show the daemon's state: identity, peers, paths, RTT, loss, traffic, drops.
    #[command(
        long_about = "Show the daemon's state: identity, interface, and one line per peer \
        with its path (direct endpoint or relay), smoothed RTT, loss and reordering of what it \
        sends us (last 10 s, from the transport counters), traffic and last handshake; then \
        drops by reason.\n\n\
        --json prints the full structure: per peer RTT (last, smoothed, min, max, variation; \
        per path), receive loss, reordering and duplicates (window and totals), ping loss, \
        bytes and packets each way, drops by reason, handshakes and their durations, path \
        changes with timestamps, MTU."
    )]
    Status {
        /// Print the node's status as JSON (with "interface" and "port" at top level).
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds [default: 2] until interrupted.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },

    /// Ping a peer over the overlay and say whether each reply came direct or relayed.
    #[command(
        long_about = "Ping a peer over the overlay, by local name, agent ID or address.\n\n\
        Each ping is a path ping inside the peer's encrypted session, sent along the path its \
        traffic takes now; the reply line says how the answer came back (direct ENDPOINT or \
        relay via RENDEZVOUS) and the round-trip time. The summary gives the loss, like \
        ping(8). No ICMP is involved: the peer's policy does not matter, only its session."
    )]
    Ping(self::ping::PingArgs),

    /// Manage the agents this agent will talk to: add, request, approve, revoke.
    #[command(subcommand, long_about = TRUST_LONG_ABOUT)]
    Trust(TrustCommand),

    /// Fleet keys and endorsements, for approving a fleet's agents without an operator.
    #[command(subcommand)]
    Fleet(FleetCommand),

    /// Give a network namespace (a container) an address of this node, routed through it.
    #[command(
        long_about = "Give a network namespace (a container) an address of this node.\n\n\
        Creates a veth pair between the daemon's namespace and the target (by `ip netns` name \
        or by the PID of a process in it, e.g. a Docker container's), gives the target an \
        address from this node's prefix (::2 to ::fffe) and a route for the overlay through \
        this host, and turns on IPv6 forwarding here. With IPv4 on, it also gets an address \
        from 198.19.0.0/24 and a route for 100.64.0.0/10; the host masquerades that IPv4 as the \
        agent's own IPv4 address (IPv4 forwarding on). Peers accept its traffic as this node's, \
        under their policy for this agent. The daemon lists the trusted names in the target's \
        hosts file (/etc/netns/NAME/hosts, or the container's /etc/hosts). Run it in the \
        daemon's network namespace; needs root and iproute2."
    )]
    Attach(AttachArgs),

    /// Undo `attach`: remove the namespace's veth pair, address and route.
    Detach(DetachArgs),

    /// Publish a local service (e.g. on 127.0.0.1:PORT) to trusted peers on this agent's addresses.
    #[command(long_about = self::serve::SERVE_LONG_ABOUT)]
    Serve(self::serve::ServeArgs),

    /// Run a rendezvous/relay server (own identity from --state-dir).
    #[command(
        long_about = "Run a rendezvous/relay server.\n\n        Agents register with it over a Noise session (`agentnet up --rendezvous \
        HOST:PORT=ID`), learn the address it sees them at, find each other through it to \
        punch holes through NATs, and relay through it where no direct path exists. It \
        forwards only ciphertext and has no list or lookup call: it cannot tell anyone which \
        agents exist. Its identity lives in --state-dir like an agent's."
    )]
    Rendezvous(self::rendezvous::RendezvousArgs),

    /// Check UDP, TCP and NAT behaviour towards rendezvous servers.
    Netcheck(self::rendezvous::NetcheckArgs),
}

/// Arguments of `init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// This agent's name, sent to peers (a DNS label) [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// The overlay network's name; agents in different networks never talk
    /// [default: agentnet].
    #[arg(long, value_name = "NAME")]
    pub(crate) network: Option<String>,
    /// Replace an existing identity (this changes the agent's ID and address).
    #[arg(long)]
    pub(crate) force: bool,
}

/// Arguments of `up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Name of the TUN interface.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_INTERFACE)]
    pub(crate) interface: String,
    /// UDP port to listen on (IPv4 and IPv6); 0 picks a free one.
    #[arg(long, value_name = "PORT", default_value_t = DEFAULT_PORT)]
    pub(crate) port: u16,
    /// Run in this process instead of detaching; log to stderr.
    #[arg(long)]
    pub(crate) foreground: bool,
    /// Tunnel MTU [default: underlay MTU - 92, at least 1280].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1280..))]
    pub(crate) mtu: Option<u16>,
    /// Start a new session first (used by the detaching `up` for its child).
    #[arg(long, hide = true)]
    pub(crate) setsid: bool,
    /// How this host resolves NAME.agent.internal: `auto` (the namespace's
    /// /etc/netns/NAME/hosts in a named network namespace, else
    /// systemd-resolved if it serves the host, else /etc/hosts), `resolved`,
    /// `hosts`, or `off` (only the resolver at PREFIX::53 answers).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    pub(crate) names: HostResolverMode,
    /// A rendezvous/relay server to register with, as HOST:PORT=ID
    /// (repeatable; added to the config file's `rendezvous` list). Through
    /// it, agents behind NATs find each other, punch holes, or relay.
    #[arg(long = "rendezvous", value_name = "HOST:PORT=ID")]
    pub(crate) rendezvous: Vec<RendezvousSpec>,
    /// Seconds between registration refreshes (they also hold NAT mappings
    /// open; keep it below the NAT's UDP timeout).
    #[arg(long, value_name = "SECS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) register_interval: u64,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (per-peer RTT,
    /// loss, traffic, drops); loopback only unless --metrics-allow-remote.
    #[arg(long, value_name = "ADDR:PORT")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Allow --metrics on an address other than loopback.
    #[arg(long, requires = "metrics")]
    pub(crate) metrics_allow_remote: bool,
    /// Once the interface and sockets exist, run as this user (name or
    /// UID) with no capabilities beyond CAP_NET_ADMIN where names need
    /// systemd-resolved [default: `agentnet` if that user exists, else stay
    /// root]. `root` keeps root.
    #[arg(long, value_name = "USER")]
    pub(crate) user: Option<String>,
    /// IPv6 only: no IPv4 overlay address, route or A records (config.toml:
    /// `ipv4 = false`). By default every agent also has a key-derived
    /// address in 100.64.0.0/10 for software that speaks only IPv4.
    #[arg(long)]
    pub(crate) no_ipv4: bool,
    /// Move one packet per system call: no TUN segmentation offload, no UDP
    /// GSO/GRO (for kernels or devices where they misbehave; slower).
    #[arg(long, env = "AGENTNET_NO_OFFLOAD")]
    pub(crate) no_offload: bool,
    /// Rootless mode (--userspace, --socks5, --forward, --expose).
    #[command(flatten)]
    pub(crate) rootless: self::userspace::UserspaceArgs,
}

/// The `trust` subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum TrustCommand {
    /// Trust an agent (or update its name, endpoint and policy).
    #[command(
        long_about = "Trust an agent, or update the entry of one already trusted.\n\n\
        A session forms only when both agents trust each other. With the daemon running the \
        change applies at once (and a handshake starts if an endpoint is known); otherwise \
        it is written to STATE_DIR/trust.toml for the next `up`."
    )]
    Add {
        /// The agent's ID (from its `agentnet id`).
        #[arg(value_name = "ID")]
        id: AgentId,
        /// Local name for it (a DNS label), reachable as NAME.agent.internal.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Where to reach it on the underlay, e.g. 192.0.2.7:7400 or [2001:db8::7]:7400.
        #[arg(long, value_name = "HOST:PORT")]
        endpoint: Option<String>,
        /// What it may open towards this agent: `all`, or a list such as
        /// `tcp:22,tcp:8000-8100,udp:53,icmp`.
        #[arg(long, value_name = "POLICY", default_value = "all")]
        allow: Policy,
    },
    /// List the trusted agents.
    List {
        /// Print a JSON array of entries (with each agent's address).
        #[arg(long)]
        json: bool,
    },
    /// Stop trusting an agent: its sessions and keys are destroyed at once.
    #[command(
        visible_alias = "revoke",
        long_about = "Stop trusting an agent (`trust revoke` is the same command).\n\n\
        With the daemon running, the peer's sessions and keys are destroyed before the \
        command returns, the peer gets a signed revocation notice over its session, and no \
        packet of the peer is delivered afterwards. Without the daemon, the entry is removed \
        from STATE_DIR/trust.toml."
    )]
    Remove {
        /// The agent's ID (or its local name).
        #[arg(value_name = "ID")]
        peer: String,
    },
    /// Ask an agent for trust with a signed justification (needs the daemon).
    #[command(long_about = "Ask an agent for trust with a signed justification.\n\n\
        Sends a sealed trust request (only the target can open it; it is signed by this \
        agent) to the target's endpoint and through every rendezvous, and records the target \
        here at once (state \"requested\", policy `none`, expiring after \
        `[trust_requests] requested_ttl_s`, 7 days by default), so that its handshake after \
        approval is accepted. Asking opens nothing on this agent: the target may only answer \
        this agent's own connections, also after approval, until `trust add ID --allow ...` \
        here says otherwise. The target never answers the request; when its operator \
        approves, it connects. Needs the running daemon.")]
    Request(RequestArgs),
    /// List the trust requests waiting for approval.
    Pending {
        /// Print a JSON array: id, name (claimed), justification, requested, age_s,
        /// from, endorsed_by.
        #[arg(long)]
        json: bool,
    },
    /// Approve a trust request: trust the requester and connect to it at once.
    Approve(ApproveArgs),
    /// Deny a trust request: drop it; the requester is not told.
    Deny {
        /// The requester's agent ID.
        #[arg(value_name = "ID")]
        id: AgentId,
    },
}

/// Runs the parsed command line.
pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let context = Instance::new(&cli)?;
    match cli.command {
        Command::Init(args) => init(&context, args),
        Command::Id { json } => id(&context, json),
        Command::Up(args) => up(&context, cli.log_format, args),
        Command::Down => down(&context),
        Command::Status { json, watch } => status(&context, json, watch),
        Command::Ping(args) => ping::ping(&context, args),
        Command::Trust(TrustCommand::Add {
            id,
            name,
            endpoint,
            allow,
        }) => trust_add(&context, id, name, endpoint, allow),
        Command::Trust(TrustCommand::List { json }) => trust_list(&context, json),
        Command::Trust(TrustCommand::Remove { peer }) => trust_remove(&context, &peer),
        Command::Trust(TrustCommand::Request(args)) => trust::request(&context, args),
        Command::Trust(TrustCommand::Pending { json }) => trust::pending(&context, json),
        Command::Trust(TrustCommand::Approve(args)) => trust::approve(&context, args),
        Command::Trust(TrustCommand::Deny { id }) => trust::deny(&context, id),
        Command::Fleet(command) => trust::fleet(command),
        Command::Attach(args) => attach::attach(&context, args),
        Command::Detach(args) => attach::detach(&context, args),
        Command::Serve(args) => serve::serve(&context, args),
        Command::Rendezvous(args) => rendezvous::rendezvous(&context, args),
        Command::Netcheck(args) => rendezvous::netcheck(&context, args),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// Installs the tracing subscriber: `info` for the daemon, `warn` for the
/// other commands, unless AGENTNET_LOG or RUST_LOG say otherwise.
pub(crate) fn init_logging(cli: &Cli) {
    let is_daemon = matches!(&cli.command, Command::Up(args) if args.foreground)
        || matches!(&cli.command, Command::Rendezvous(args) if args.foreground);
    let default = if is_daemon { "info" } else { "warn" };
    let filter = std::env::var("AGENTNET_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cli.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The paths every command needs, made absolute.
struct Instance {
    state: StateDir,
    socket: PathBuf,
}

impl Instance {
    fn new(cli: &Cli) -> Result<Self> {
        let root = std::path::absolute(&cli.state_dir)
            .with_context(|| format!("bad state directory {}", cli.state_dir.display()))?;
        let state = StateDir::new(root);
        let socket = match &cli.socket {
            Some(socket) => std::path::absolute(socket)
                .with_context(|| format!("bad socket path {}", socket.display()))?,
            None => state.default_socket_path(),
        };
        Ok(Self { state, socket })
    }

    /// A connection to the daemon, or `None` if none runs. A daemon that
    /// holds the state directory but does not answer is an error: editing
    /// behind its back would go unnoticed.
    fn daemon(&self) -> Result<Option<ControlClient>> {
        match ControlClient::connect(&self.socket) {
            Ok(client) => Ok(Some(client)),
            Err(ControlError::NotRunning { .. }) => match self.state.running_pid() {
                Some(pid) => Err(self.unresponsive(pid)),
                None => Ok(None),
            },
            Err(error) => Err(error.into()),
        }
    }

    /// A connection to the daemon, or an error saying none runs.
    fn require_daemon(&self) -> Result<ControlClient> {
        self.daemon()?.ok_or_else(|| self.not_running())
    }

    fn not_running(&self) -> anyhow::Error {
        anyhow!(
            "agentnet is not running for state dir {} (nothing answers on {}); start it with `agentnet up`",
            self.state.root().display(),
            self.socket.display()
        )
    }

    fn unresponsive(&self, pid: u32) -> anyhow::Error {
        anyhow!(
            "agentnet (pid {pid}) holds state dir {} but does not answer on {}; \
             check --socket, or stop it with `kill {pid}`",
            self.state.root().display(),
            self.socket.display()
        )
    }

    fn network(&self) -> Result<(AgentConfig, NetworkId)> {
        let config = self.state.config_or_default()?;
        let network = NetworkId::from_name(&config.network);
        Ok((config, network))
    }
}

fn init(context: &Instance, args: InitArgs) -> Result<()> {
    let state = &context.state;
    if let Some(name) = &args.name {
        validate_name(name)?;
    }
    if let Some(network) = &args.network {
        validate_network_name(network)?;
    }
    if args.force
        && state.has_identity()
        && let Some(pid) = state.running_pid()
    {
        bail!(
            "agentnet is running for {} (pid {pid}); stop it with `agentnet down` before replacing its identity",
            state.root().display()
        );
    }
    // A damaged config is replaced on --force, and reported otherwise.
    let existing = match state.load_config() {
        Ok(existing) => existing,
        Err(_) if args.force => None,
        Err(error) => return Err(error.into()),
    };
    let identity = state.create_identity(args.force)?;
    let config = AgentConfig {
        name: args
            .name
            .or_else(|| existing.as_ref().map(|c| c.name.clone()))
            .unwrap_or_else(default_agent_name),
        network: args
            .network
            .or_else(|| existing.as_ref().map(|c| c.network.clone()))
            .unwrap_or_else(|| AgentConfig::default_for_host().network),
        rendezvous: existing
            .as_ref()
            .map(|c| c.rendezvous.clone())
            .unwrap_or_default(),
        ipv4: existing.as_ref().is_none_or(|c| c.ipv4),
    };
    state.write_config(&config)?;
    let id = identity.agent_id();
    let network = NetworkId::from_name(&config.network);
    let prefix = NodePrefix::of_agent(network, &id);
    say!("created identity in {}", state.root().display());
    say!("id       {id}");
    say!("address  {}", prefix.agent_address());
    if config.ipv4 {
        say!("address4 {}", agent_address4(network, &id));
    }
    say!("name     {}", config.name);
    say!("network  {}", config.network);
    say!("");
    say!("Give the ID to the operators of the agents this one should talk to;");
    say!("they run `agentnet trust add {id} --name {}`.", config.name);
    Ok(())
}

fn id(context: &Instance, json: bool) -> Result<()> {
    let identity = context.state.load_identity()?;
    let (config, network) = context.network()?;
    let id = identity.agent_id();
    let prefix = NodePrefix::of_agent(network, &id);
    let address4 = config.ipv4.then(|| agent_address4(network, &id));
    if json {
        let value = json!({
            "id": id.to_string(),
            "address": prefix.agent_address().to_string(),
            "address4": address4.map(|address| address.to_string()),
            "node_prefix": prefix.to_string(),
            "did": id.to_did_key(),
            "name": config.name,
            "network": config.network,
        });
        say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        say!("id           {id}");
        say!("address      {}", prefix.agent_address());
        match address4 {
            Some(address4) => say!("address4     {address4}"),
            None => say!("address4     none (ipv4 = false in config.toml)"),
        }
        say!("node prefix  {prefix}");
        say!("did          {}", id.to_did_key());
        say!("name         {}", config.name);
        say!("network      {}", config.network);
    }
    Ok(())
}

fn up(context: &Instance, log_format: LogFormat, args: UpArgs) -> Result<()> {
    let metrics = args.metrics.map(|address| MetricsListen {
        address,
        allow_remote: args.metrics_allow_remote,
    });
    if let Some(metrics) = &metrics {
        metrics.check()?;
    }
    args.rootless.check()?;
    if args.foreground {
        if args.setsid {
            detach_from_terminal();
        }
        return Ok(daemon::run(DaemonOptions {
            state: context.state.clone(),
            socket: context.socket.clone(),
            interface: args.interface,
            port: args.port,
            mtu: args.mtu,
            names: args.names,
            rendezvous: args.rendezvous,
            register_interval: Some(std::time::Duration::from_secs(args.register_interval)),
            metrics,
            userspace: args.rootless.options(),
            user: args.user,
            offload: !args.no_offload,
            ipv4: !args.no_ipv4,
        })?);
    }
    let state = &context.state;
    state.create()?;
    daemon::privilege::check_state_permissions(state)?;
    daemon::privilege::PrivilegeDrop::choose(args.user.as_deref())?;
    // Everything that can be checked without privileges is checked here, so
    // the error reaches the terminal directly rather than through the log.
    let (identity, created) = state.load_or_create_identity()?;
    if created {
        say!(
            "created a new identity in {} (agent {})",
            state.root().display(),
            identity.agent_id()
        );
    }
    if state.load_config()?.is_none() {
        state.write_config(&AgentConfig::default_for_host())?;
    }
    daemon::tun::validate_interface_name(&args.interface)?;
    refuse_second_instance(context)?;

    let log_path = state.log_path();
    let (log, log_start) = open_log(state)?;
    let mut command = Process::new(std::env::current_exe().context("cannot find own executable")?);
    command
        .arg("--state-dir")
        .arg(state.root())
        .arg("--socket")
        .arg(&context.socket)
        .args(["--log-format", log_format.as_arg()])
        .args(["up", "--foreground", "--setsid", "--interface"])
        .arg(&args.interface)
        .args(["--port", &args.port.to_string()]);
    if let Some(mtu) = args.mtu {
        command.args(["--mtu", &mtu.to_string()]);
    }
    command.args(["--names", &args.names.to_string()]);
    for spec in &args.rendezvous {
        command.args(["--rendezvous", &spec.to_string()]);
    }
    command.args(["--register-interval", &args.register_interval.to_string()]);
    if args.no_ipv4 {
        command.arg("--no-ipv4");
    }
    if args.no_offload {
        command.arg("--no-offload");
    }
    if let Some(address) = args.metrics {
        command.args(["--metrics", &address.to_string()]);
        if args.metrics_allow_remote {
            command.arg("--metrics-allow-remote");
        }
    }
    args.rootless.add_child_args(&mut command);
    if let Some(user) = &args.user {
        command.args(["--user", user]);
    }
    let log_err = log
        .try_clone()
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err));
    let child = command.spawn().context("cannot start the daemon")?;
    let info = wait_until_ready(context, child, &log_path, log_start)?;
    say!("agentnet is up (pid {})", info.pid);
    say!("  id         {}", info.id);
    say!("  address    {}/48 on {}", info.address, info.interface);
    match info.address4 {
        Some(address4) => say!(
            "  address4   {address4}/{IPV4_PREFIX_LEN} on {}",
            info.interface
        ),
        None => say!("  address4   none (IPv4 is off)"),
    }
    say!("  name       {} (network {})", info.name, info.network);
    say!("  port       {}/udp", info.port);
    say!("  mtu        {}", info.mtu);
    say!("  log        {}", log_path.display());
    if args.rootless.userspace {
        self::userspace::say_listeners(&context.socket);
    }
    if let Some(address) = args.metrics {
        say!("  metrics    http://{address}/metrics");
    }
    Ok(())
}

/// Makes the detached daemon its own session leader, so the terminal that
/// ran `up` closing does not signal it, and lets go of the working directory.
fn detach_from_terminal() {
    if let Err(errno) = nix::unistd::setsid() {
        tracing::debug!(%errno, "setsid failed (already a session leader?)");
    }
    if let Err(errno) = nix::unistd::chdir("/") {
        tracing::debug!(%errno, "cannot change to /");
    }
}

fn refuse_second_instance(context: &Instance) -> Result<()> {
    match ControlClient::call(&context.socket, &Request::Hello) {
        Ok(Response::Hello(info)) => bail!(
            "agentnet is already running for {} (pid {}, interface {}, control socket {}); \
             stop it with `agentnet down`",
            info.state_dir.display(),
            info.pid,
            info.interface,
            context.socket.display()
        ),
        Ok(_) => bail!(
            "something already answers on {}; is another agentnet using it?",
            context.socket.display()
        ),
        Err(ControlError::NotRunning { .. }) => {}
        Err(error) => {
            return Err(anyhow!(error).context(format!(
                "{} exists but does not answer as an agentnet control socket",
                context.socket.display()
            )));
        }
    }
    if let Some(pid) = context.state.running_pid() {
        return Err(context.unresponsive(pid));
    }
    Ok(())
}

/// Opens the daemon's log for appending. The daemon's user owns the state
/// directory: a link planted at the log's name is refused, not followed.
fn open_log(state: &StateDir) -> Result<(File, u64)> {
    let path = state.log_path();
    if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file() && m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(&path, path.with_extension("log.old"));
    }
    let log = state.open_file(agentnet::state::LOG_FILE, OpenFor::Append(0o600))?;
    let start = log.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((log, start))
}

fn wait_until_ready(
    context: &Instance,
    mut child: Child,
    log_path: &Path,
    log_start: u64,
) -> Result<DaemonInfo> {
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait().context("cannot watch the daemon")? {
            bail!(
                "the daemon exited during start-up ({exit}); {}:\n{}",
                log_path.display(),
                log_tail(log_path, log_start)
            );
        }
        if let Ok(Response::Hello(info)) = ControlClient::call(&context.socket, &Request::Hello) {
            if info.pid == child.id() {
                return Ok(info);
            }
            bail!(
                "another agentnet (pid {}) took over {} while this one started",
                info.pid,
                context.socket.display()
            );
        }
        if Instant::now() >= deadline {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let _ = child.wait();
            bail!(
                "the daemon did not become ready within {} s and was stopped; {}:\n{}",
                UP_TIMEOUT.as_secs(),
                log_path.display(),
                log_tail(log_path, log_start)
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The last lines written to the log since `start`.
fn log_tail(path: &Path, start: u64) -> String {
    let mut text = String::new();
    let opened = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(dir), Some(name)) => open_in_dir(dir, name, OpenFor::Read).ok(),
        _ => None,
    };
    if let Some(mut file) = opened
        && file.seek(SeekFrom::Start(start)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.trim().is_empty() {
        "(the log is empty)".to_string()
    } else {
        tail
    }
}

fn down(context: &Instance) -> Result<()> {
    let mut client = context.require_daemon()?;
    let pid = match client.request(&Request::Down) {
        Ok(Response::Stopping { pid }) => pid,
        Ok(other) => bail!("unexpected answer to `down`: {other:?}"),
        // It may have gone before it could answer.
        Err(ControlError::Closed) => match context.state.running_pid() {
            Some(pid) => pid,
            None => {
                say!("agentnet stopped");
                return Ok(());
            }
        },
        Err(error) => return Err(error.into()),
    };
    let deadline = Instant::now() + DOWN_TIMEOUT;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            bail!(
                "agentnet (pid {pid}) was asked to stop but is still running after {} s",
                DOWN_TIMEOUT.as_secs()
            );
        }
        thread::sleep(POLL_INTERVAL);
    }
    say!("agentnet stopped (pid {pid})");
    Ok(())
}

/// Whether a process exists and is not a zombie (a zombie has released its
/// interface and sockets already).
fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // /proc/PID/stat: "pid (comm) STATE ..."; comm may hold spaces and ')'.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn status(context: &Instance, json: bool, watch: Option<f64>) -> Result<()> {
    let mut client = context.require_daemon()?;
    let Some(every) = watch else {
        return show_status(&mut client, json);
    };
    if !(0.1..=3600.0).contains(&every) {
        bail!("--watch takes 0.1 to 3600 seconds");
    }
    let terminal = std::io::stdout().is_terminal();
    // Until interrupted (Ctrl-C ends the process).
    loop {
        if terminal {
            // Home and clear, as watch(1) does.
            say!("\x1b[H\x1b[2J");
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        if !json {
            say!("every {every}s (unix time {now}); Ctrl-C to stop\n");
        }
        show_status(&mut client, json)?;
        if !terminal {
            say!("");
        }
        thread::sleep(Duration::from_secs_f64(every));
    }
}

fn show_status(client: &mut ControlClient, json: bool) -> Result<()> {
    let value = match client.request(&Request::Status)? {
        Response::Status(value) => value,
        other => bail!("unexpected answer to `status`: {other:?}"),
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let view: StatusView =
            serde_json::from_value(value).context("the daemon's status has an unexpected shape")?;
        say!("{}", render_status(&view).trim_end());
    }
    Ok(())
}

fn trust_add(
    context: &Instance,
    id: AgentId,
    name: String,
    endpoint: Option<String>,
    allow: Policy,
) -> Result<()> {
    validate_name(&name)?;
    let running = context.daemon()?;
    let (peer, change) = match running {
        Some(mut client) => match client.request(&Request::TrustAdd {
            id,
            name,
            endpoint,
            allow,
        })? {
            Response::TrustAdded { peer, change } => (peer, change),
            other => bail!("unexpected answer to `trust add`: {other:?}"),
        },
        None => {
            if let Some(text) = &endpoint {
                resolve_endpoint(text)?;
            }
            let own = context.state.load_identity()?.agent_id();
            let (_, network) = context.network()?;
            let entry = TrustEntry {
                id,
                name,
                endpoint,
                allow,
                state: TrustState::Trusted,
                added_unix: 0,
                expires_unix: None,
            };
            let (config, _) = context.network()?;
            let (stored, change) = context.state.trust_upsert(&own, entry)?;
            let store = context.state.load_trust()?;
            let peer = TrustedPeer::list_offline(store.peers, network, &own, config.ipv4)
                .into_iter()
                .find(|peer| peer.entry.id == stored.id)
                .unwrap_or_else(|| TrustedPeer::new(stored, network));
            (peer, change)
        }
    };
    let verb = match change {
        TrustChange::Added => "trusted",
        TrustChange::Updated => "updated",
    };
    let endpoint = peer
        .entry
        .endpoint
        .as_deref()
        .map(|e| format!(", endpoint {e}"))
        .unwrap_or_default();
    say!(
        "{verb} {} ({}): address {}{}, allow {}{endpoint}",
        peer.entry.name,
        peer.entry.id,
        peer.address,
        match peer.address4 {
            Some(address4) => format!(" and {address4}"),
            None => String::new(),
        },
        peer.entry.allow
    );
    if let Some(holder) = peer.address4_taken_by {
        say!(
            "note: {}'s IPv4 address {} is already {}; {} is reachable over IPv6 only (its name resolves to AAAA only)",
            peer.entry.name,
            agent_address4(context.network()?.1, &peer.entry.id),
            ipv4_holder_text(context, &holder),
            peer.entry.name
        );
    }
    if context.state.running_pid().is_none() {
        say!("agentnet is not running; this applies at the next `agentnet up`");
    }
    Ok(())
}

fn trust_list(context: &Instance, json: bool) -> Result<()> {
    let peers = match context.daemon()? {
        Some(mut client) => match client.request(&Request::TrustList)? {
            Response::TrustList { peers } => peers,
            other => bail!("unexpected answer to `trust list`: {other:?}"),
        },
        None => {
            let (config, network) = context.network()?;
            let own = context.state.load_identity()?.agent_id();
            let entries = context.state.load_trust()?.peers;
            TrustedPeer::list_offline(entries, network, &own, config.ipv4)
        }
    };
    if json {
        say!("{}", serde_json::to_string_pretty(&peers)?);
        return Ok(());
    }
    if peers.is_empty() {
        say!("no trusted agents; add one with `agentnet trust add ID --name NAME`");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|peer| {
            let state = match peer.entry.state {
                TrustState::Trusted => String::new(),
                TrustState::Requested => format!(
                    " (requested{})",
                    trust::expiry_note(&peer.entry, agentnet::state::unix_now())
                ),
            };
            let address4 = match (peer.address4, peer.address4_taken_by) {
                (Some(address4), _) => address4.to_string(),
                (None, Some(_)) => "- (IPv4 address taken)".into(),
                (None, None) => "-".into(),
            };
            vec![
                format!("{}{state}", peer.entry.name),
                peer.address.to_string(),
                address4,
                peer.entry.allow.to_string(),
                peer.entry.endpoint.clone().unwrap_or_else(|| "-".into()),
                peer.entry.id.to_string(),
            ]
        })
        .collect();
    say!(
        "{}",
        table(
            &["NAME", "ADDRESS", "IPV4", "ALLOW", "ENDPOINT", "ID"],
            &rows
        )
        .trim_end()
    );
    Ok(())
}

/// "this agent's own" or "held by NAME (ID)", for an IPv4 collision.
fn ipv4_holder_text(context: &Instance, holder: &AgentId) -> String {
    let own = context
        .state
        .load_identity()
        .map(|identity| identity.agent_id());
    if own.as_ref().ok() == Some(holder) {
        return "this agent's own".into();
    }
    let name = context
        .state
        .load_trust()
        .ok()
        .and_then(|store| store.peers.into_iter().find(|entry| entry.id == *holder))
        .map(|entry| entry.name)
        .unwrap_or_else(|| "another agent".into());
    format!("held by {name} ({holder}), trusted earlier")
}

fn trust_remove(context: &Instance, peer: &str) -> Result<()> {
    let (removed, live) = match context.daemon()? {
        Some(mut client) => match client.request(&Request::TrustRemove {
            peer: peer.to_string(),
        })? {
            Response::TrustRemoved { peer } => (peer, true),
            other => bail!("unexpected answer to `trust remove`: {other:?}"),
        },
        None => {
            let (_, network) = context.network()?;
            (
                TrustedPeer::new(context.state.trust_remove(peer)?, network),
                false,
            )
        }
    };
    let effect = if live {
        "sessions and keys destroyed, peer notified"
    } else {
        "agentnet is not running"
    };
    say!(
        "removed {} ({}, {}): {effect}",
        removed.entry.name,
        removed.entry.id,
        removed.address
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_command_too() {
        let cli = Cli::try_parse_from(["agentnet", "status", "--state-dir", "/tmp/x", "--json"])
            .expect("parses");
        assert_eq!(cli.state_dir, PathBuf::from("/tmp/x"));
        assert!(matches!(
            cli.command,
            Command::Status {
                json: true,
                watch: None
            }
        ));
        let cli = Cli::try_parse_from(["agentnet", "status", "--watch"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Status {
                watch: Some(2.0),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["agentnet", "ping", "bob", "-c", "5"]).expect("parses");
        assert!(matches!(cli.command, Command::Ping(ref args) if args.count == Some(5)));
    }

    #[test]
    fn up_defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["agentnet", "up"]).expect("parses");
        let Command::Up(args) = cli.command else {
            panic!("not up");
        };
        assert_eq!(args.interface, "agentnet0");
        assert_eq!(args.port, 7400);
        assert!(!args.foreground);
        assert_eq!(args.mtu, None);
        assert!(Cli::try_parse_from(["agentnet", "up", "--mtu", "1000"]).is_err());
    }

    #[test]
    fn up_refuses_remote_socks5_and_forward_binds_without_allow_remote() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["agentnet", "up", "--userspace"];
            argv.extend_from_slice(extra);
            let cli = Cli::try_parse_from(argv).expect("parses");
            let Command::Up(args) = cli.command else {
                panic!("not up");
            };
            args.rootless
        };
        let refused = parse(&["--socks5", "0.0.0.0:1080"])
            .check()
            .expect_err("refused");
        assert!(refused.to_string().contains("--allow-remote"), "{refused}");
        assert!(parse(&["--forward", "[::]:8080:bob:80"]).check().is_err());
        parse(&["--socks5", "127.0.0.1:1080", "--forward", "8080:bob:80"])
            .check()
            .expect("loopback");
        let allowed = parse(&["--socks5", "0.0.0.0:1080", "--allow-remote"]);
        allowed.check().expect("--allow-remote");
        let mut child = Process::new("agentnet");
        allowed.add_child_args(&mut child);
        assert!(
            child.get_args().any(|arg| arg == "--allow-remote"),
            "the detached daemon gets --allow-remote too"
        );
        assert!(Cli::try_parse_from(["agentnet", "up", "--allow-remote"]).is_err());
    }

    #[test]
    fn trust_add_parses_id_and_policy() {
        let id = agentnet::core::identity::Identity::from_secret_bytes(&[3; 32])
            .expect("key")
            .agent_id()
            .to_string();
        let cli = Cli::try_parse_from([
            "agentnet",
            "trust",
            "add",
            &id,
            "--name",
            "bob",
            "--allow",
            "tcp:80,icmp",
        ])
        .expect("parses");
        let Command::Trust(TrustCommand::Add {
            allow, endpoint, ..
        }) = cli.command
        else {
            panic!("not trust add");
        };
        assert_eq!(allow.to_string(), "tcp:80,icmp");
        assert_eq!(endpoint, None);
        assert!(
            Cli::try_parse_from(["agentnet", "trust", "add", "nope", "--name", "bob"]).is_err()
        );
        let default =
            Cli::try_parse_from(["agentnet", "trust", "add", &id, "--name", "b"]).expect("parses");
        let Command::Trust(TrustCommand::Add { allow, .. }) = default.command else {
            panic!("not trust add");
        };
        assert_eq!(allow, Policy::All);
    }
}
