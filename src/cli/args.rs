//! The command line's top level: global options and the list of commands.
//! Each command's own arguments live beside it (`init.rs`, `up.rs`,
//! `trust.rs`, ...).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::LogFormat;
use super::attach::{AttachArgs, DetachArgs};
use super::fleet::FleetCommand;
use super::init::InitArgs;
use super::trust::{TRUST_LONG_ABOUT, TrustCommand};
use super::up::UpArgs;
use agentnet::state::DEFAULT_STATE_DIR;

/// Help heading of the options every command takes.
const GLOBAL: &str = "Global options";

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
    Ping(super::ping::PingArgs),

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
    #[command(long_about = super::serve::SERVE_LONG_ABOUT)]
    Serve(super::serve::ServeArgs),

    /// Tell trusted peers which services (MCP, A2A, HTTP, gRPC, ...) this agent offers.
    #[command(long_about = super::services::ADVERTISE_LONG_ABOUT)]
    Advertise(super::services::AdvertiseArgs),

    /// List the services trusted peers advertise to this agent, with URLs and addresses.
    #[command(
        long_about = "List the services trusted peers advertise to this agent.\n\n\
        One line per service: the peer's name here, the kind, a URL under \
        NAME.agent.internal, the name the peer gave it, the peer's overlay addresses (IPv6 ULA \
        and IPv4) and when the peer was last heard from. A peer tells each agent only the \
        services its policy lets that agent open. Kind, path and name are the peer's text \
        (checked and escaped; in --json under \"from_peer\"): data, not instructions.\n\n\
        With --cards, the A2A Agent Card of every a2a service is fetched over the overlay \
        (from the peer's overlay address, at the advertised path if it ends in .json, else at \
        /.well-known/agent-card.json, then /.well-known/agent.json; all cards within 3 s, at most 64 KiB each, \
        no redirects followed) and its name, description, version, interfaces and skills are \
        shown, or why it could not be had (timeout, too large, not JSON, HTTP status). A card \
        is the peer's text too: escaped, capped, and in --json under \"card\": {\"fetched_from\", \
        \"from_peer\"} (or \"card_error\": {\"kind\", \"message\"}).\n\n\
        Examples:\n  \
        agentnet services\n  \
        agentnet services --cards\n  \
        agentnet services --cards --json"
    )]
    Services {
        /// Print a JSON array (peer, peer_id, address, address4, url, from_peer, last_seen_unix, last_seen_age_s, session_up; with --cards also card or card_error).
        #[arg(long)]
        json: bool,
        /// Fetch the A2A Agent Card of each a2a service and show its name, description and skills.
        #[arg(long)]
        cards: bool,
    },

    /// Serve this agent's network as MCP tools on stdio, for an AI agent's MCP host.
    #[command(long_about = super::mcp::MCP_LONG_ABOUT)]
    Mcp(super::mcp::McpArgs),

    /// Run a rendezvous/relay server (own identity from --state-dir).
    #[command(
        long_about = "Run a rendezvous/relay server.\n\n        Agents register with it over a Noise session (`agentnet up --rendezvous \
        HOST:PORT=ID`), learn the address it sees them at, find each other through it to \
        punch holes through NATs, and relay through it where no direct path exists. It \
        forwards only ciphertext and has no list or lookup call: it cannot tell anyone which \
        agents exist. Its identity lives in --state-dir like an agent's."
    )]
    Rendezvous(super::rendezvous::RendezvousArgs),

    /// Check UDP, TCP and NAT behaviour towards rendezvous servers.
    Netcheck(super::rendezvous::NetcheckArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

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
}
