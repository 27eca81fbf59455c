//! The I/O shell around [`crate::core::node::Node`]: the TUN and the UDP
//! socket on the datapath thread, the control socket, signals and the
//! other tasks on one current-thread tokio runtime.
//!
//! [`run`] sets everything up in this order: state directory and identity,
//! instance lock (PID file), TUN interface, UDP socket, node and trust store,
//! and last the control socket, so a client that gets an answer knows the
//! interface is ready. A daemon started as root then switches to an
//! unprivileged user ([`privilege`]). It runs the event loop until SIGTERM, SIGINT or
//! a `down` request, and removes what it created: the control socket, the
//! PID file, and the TUN interface (it goes when its descriptor closes).

#![forbid(unsafe_code)]

mod commands;
mod control_server;
mod drop_log;
mod event_loop;
mod packet_device;
mod ping;
pub mod privilege;
mod tcp_gro;
mod tun_batch;
mod user_database;

use std::io;
use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use zeroize::Zeroizing;

use self::control_server::ControlServer;
use self::event_loop::{Daemon, Signals};
use crate::control::{ControlClient, ControlError, Request, Response};
use crate::core::address::{NetworkId, NodePrefix, agent_address4};
use crate::core::api::NodeConfig;
use crate::core::node::Node;
use crate::core::noise::cipher::{CipherSet, TransportCipher};
use crate::state::{StateDir, StateError};
use crate::sys::tun::TunError;
use crate::sys::udp::{Underlay, UnderlayError};

/// Default UDP port.
pub const DEFAULT_PORT: u16 = 7400;

/// What `agentnet up --foreground` was asked to do.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// The instance's state directory.
    pub state: StateDir,
    /// The control socket path.
    pub socket: PathBuf,
    /// The TUN interface name.
    pub interface: String,
    /// The UDP port (0: any free port).
    pub port: u16,
    /// The tunnel MTU; `None` derives it from the underlay.
    pub mtu: Option<u16>,
    /// How the host's resolver learns `NAME.agent.internal`.
    pub names: crate::names::resolver_config::HostResolverMode,
    /// Rendezvous servers to register with (besides the config file's).
    pub rendezvous: Vec<crate::rendezvous::link::RendezvousSpec>,
    /// How often registrations are refreshed (default 25 s).
    pub register_interval: Option<std::time::Duration>,
    /// Where to serve Prometheus metrics (`None`: not at all).
    pub metrics: Option<crate::metrics::MetricsListen>,
    /// Rootless mode: the userspace stack instead of a TUN (`None`: TUN).
    pub userspace: Option<crate::userspace::UserspaceOptions>,
    /// The user to run as once set up (`--user`; `None`: `agentnet` if it
    /// exists, else stay root). See [`privilege`].
    pub user: Option<String>,
    /// Use TUN and UDP offloads (segments of up to 64 KiB through the TUN,
    /// GSO and GRO on the socket) where the kernel has them.
    pub offload: bool,
    /// Offer AES-256-GCM for sessions where the CPU runs it fast
    /// (`--no-aes`: ChaCha20-Poly1305 only).
    pub aes: bool,
    /// How long the loop keeps polling for the next packet after one was
    /// handled, instead of sleeping (`--busy-poll`; zero: never). See
    /// [`event_loop`]'s `BusyPoll`.
    pub busy_poll: std::time::Duration,
    /// Ask the gateway to forward a public port to the UDP socket (PCP,
    /// NAT-PMP, UPnP-IGD) and announce it (`--no-port-mapping` turns it
    /// off).
    pub port_mapping: bool,
    /// Whether the IPv4 overlay may be on (`--no-ipv4` turns it off; so
    /// does `ipv4 = false` in config.toml).
    pub ipv4: bool,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The TUN interface could not be created.
    #[error(transparent)]
    Tun(#[from] TunError),
    /// The UDP socket could not be bound.
    #[error(transparent)]
    Underlay(#[from] UnderlayError),
    /// Another daemon answers on the control socket.
    #[error(
        "agentnet is already running on control socket {} (pid {pid}); stop it with `agentnet down`",
        socket.display()
    )]
    SocketInUse {
        /// The control socket.
        socket: PathBuf,
        /// The PID that answered.
        pid: u32,
    },
    /// The control socket could not be created.
    #[error("cannot create control socket {}: {source}", socket.display())]
    ControlSocket {
        /// The control socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A rendezvous entry in the config file is malformed.
    #[error("bad rendezvous in config.toml: {0}")]
    BadRendezvous(String),
    /// The MTU asked for is below the IPv6 minimum.
    #[error("bad MTU {0}: the tunnel MTU must be at least 1280 (the IPv6 minimum)")]
    BadMtu(u16),
    /// The async runtime or signal handlers could not be set up.
    #[error("cannot start the event loop: {0}")]
    Runtime(#[source] io::Error),
    /// The metrics endpoint could not be served.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The userspace stack could not be started.
    #[error(transparent)]
    Userspace(#[from] crate::userspace::UserspaceError),
    /// Refused permissions, or the privilege drop failed.
    #[error(transparent)]
    Privilege(#[from] privilege::PrivilegeError),
    /// The TUN interface failed while running (deleted from outside?).
    #[error("the TUN interface {interface} failed: {source}")]
    TunIo {
        /// The interface.
        interface: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// Runs the daemon in this process until it is told to stop. See the module
/// docs for what it creates and removes.
pub fn run(mut options: DaemonOptions) -> Result<(), DaemonError> {
    if options.userspace.is_some() {
        // Unprivileged: the host's resolver is not ours to change; the
        // SOCKS5 proxy resolves names in-process.
        options.names = crate::names::resolver_config::HostResolverMode::Off;
    }
    if let Some(mtu) = options.mtu
        && mtu < crate::sys::tun::MIN_TUNNEL_MTU
    {
        return Err(DaemonError::BadMtu(mtu));
    }
    crate::sys::tun::validate_interface_name(&options.interface)?;
    let fronts = userspace_fronts(&mut options);
    let state = &options.state;
    state.create()?;
    privilege::check_state_permissions(state)?;
    let privileges = privilege::PrivilegeDrop::choose(options.user.as_deref())?;
    let (identity, created) = state.load_or_create_identity()?;
    if created {
        tracing::info!(id = %identity.agent_id(), "created a new identity");
    }
    let config = match state.load_config()? {
        Some(config) => config,
        None => {
            let config = crate::state::AgentConfig::default_for_host();
            state.write_config(&config)?;
            config
        }
    };
    // A trust store that cannot be read would start a daemon that trusts no
    // one while every `trust` command fails: refuse, as for config.toml.
    // (A reload on SIGHUP keeps the peers it has instead.)
    state.load_trust_of(&identity.agent_id())?;
    refuse_if_socket_answers(&options)?;
    // Served ports and relays hold sockets by the thousand (rootless mode
    // raises it again when its stack starts; harmless).
    crate::sys::calls::raise_fd_limit();
    crate::sys::calls::keep_freed_heap();
    let lock = state.lock_instance()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime);
    let result = runtime.and_then(|runtime| {
        runtime.block_on(async {
            let signals = Signals::install().map_err(DaemonError::Runtime)?;
            let network = NetworkId::from_name(&config.network);
            let address = NodePrefix::of_agent(network, &identity.agent_id()).agent_address();
            let address4 = (options.ipv4 && config.ipv4)
                .then(|| agent_address4(network, &identity.agent_id()));
            let mtu = options
                .mtu
                .unwrap_or_else(|| crate::sys::tun::tunnel_mtu(crate::sys::tun::underlay_mtu()));
            let device = packet_device::PacketDevice::open(
                &options,
                crate::core::address::OverlayAddresses {
                    v6: address,
                    v4: address4,
                },
                network,
                mtu,
            )?;
            let ipv4_guarded = address4.is_some()
                && guard_tun_forwarding(
                    &options,
                    &device,
                    NodePrefix::of_agent(network, &identity.agent_id()),
                );
            let underlay = Underlay::bind(options.port, options.offload)?;
            let mut seed = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(seed.as_mut_slice());
            let unix_now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let node_config = NodeConfig {
                identity,
                network,
                name: config.name.clone(),
                tunnel_mtu: mtu,
            };
            let mut node = Node::new(node_config, *seed, Instant::now(), unix_now);
            node.set_ipv4(ipv4_guarded);
            // Received packets are decrypted behind the room the device's
            // write batch keeps (the TUN's virtio-net header; nothing for the
            // userspace stack): no copy on the way out.
            node.set_tun_headroom(device.headroom());
            node.set_transport_ciphers(transport_ciphers(options.aes));
            let rendezvous = resolve_rendezvous(&options, &config)?;
            if let Some(interval) = options.register_interval {
                node.set_register_interval(interval);
            }
            for (id, endpoint) in &rendezvous {
                node.add_rendezvous(Instant::now(), *id, *endpoint);
            }
            let (links, link_events) =
                crate::rendezvous::link::RendezvousLinks::new(Instant::now(), &rendezvous);
            // Before the control socket: an address that cannot be served
            // fails the start. Scrapes read the status over that socket.
            let _metrics = match options.metrics {
                Some(listen) => {
                    Some(crate::metrics::spawn_agent(listen, options.socket.clone()).await?)
                }
                None => None,
            };
            // Last: once the socket answers, the interface is ready.
            let (server, requests) = ControlServer::bind(&options.socket, privileges.control_gid())
                .map_err(|source| DaemonError::ControlSocket {
                    socket: options.socket.clone(),
                    source,
                })?;
            let mut daemon =
                Daemon::new(options.clone(), config, node, device, mtu, underlay, links);
            // Served ports below 1024 need root: bound before the drop.
            let (lookup, queries) = crate::serve::CallerLookup::new();
            let services = match fronts {
                Some(fronts) => crate::serve::Services::start_userspace(
                    state.clone(),
                    std::net::IpAddr::V6(address),
                    fronts,
                    lookup,
                ),
                None => {
                    let mut addresses = vec![std::net::IpAddr::V6(address)];
                    addresses.extend(address4.map(std::net::IpAddr::V4));
                    crate::serve::Services::start(state.clone(), addresses, lookup)
                }
            };
            daemon.attach_services(services, queries);
            // Everything privileged exists now: the TUN, the sockets, the
            // host's name configuration (hosts files stay open for edits).
            if privileges.switches_user() {
                daemon.hold_name_files();
            }
            // Start-up is over: the code and constants only it used (and
            // the loader's relocation table) need not stay resident.
            crate::sys::file_pages::release();
            privileges.apply(state, &options.socket, daemon.names_use_resolved())?;
            // Consumes the daemon: closing the TUN descriptor at its end
            // removes the interface.
            let outcome = daemon.run(requests, signals, link_events).await;
            server.shutdown().await;
            outcome
        })
    });
    lock.release();
    // A failure is reported once, by the caller (the CLI prints it).
    if result.is_ok() {
        tracing::info!("agentnet stopped");
    }
    result
}

/// Rootless mode: a loopback front for each port in `served.json`, exposed
/// on the stack in its place (`None` in TUN mode).
fn userspace_fronts(options: &mut DaemonOptions) -> Option<crate::serve::UserspaceFronts> {
    let userspace = options.userspace.as_mut()?;
    match crate::serve::UserspaceFronts::bind(&options.state) {
        Ok((fronts, exposes)) => {
            for (port, local) in exposes {
                userspace.exposes.push(crate::userspace::spec::ExposeSpec {
                    transport: crate::userspace::spec::Transport::Tcp,
                    port,
                    local,
                });
            }
            userspace.served_sources = Some(fronts.sources());
            Some(fronts)
        }
        Err(error) => {
            tracing::error!(%error, "cannot serve the ports in served.json");
            Some(crate::serve::UserspaceFronts::default())
        }
    }
}

/// The transport ciphers this agent offers and accepts: AES-256-GCM too
/// where the CPU accelerates it, unless `--no-aes`.
fn transport_ciphers(aes: bool) -> CipherSet {
    let ciphers = if aes {
        CipherSet::accelerated()
    } else {
        CipherSet::CHACHA_ONLY
    };
    tracing::info!(
        aes_256_gcm = ciphers.contains(TransportCipher::Aes256Gcm),
        "transport ciphers offered"
    );
    ciphers
}

/// Keeps the host's forwarding out of the TUN (TUN mode with IPv4 on):
/// installs the attachments' nftables filter (`inet agentnet`, see
/// [`crate::attach::filter`]) while still root. Without it, a host that
/// forwards and masquerades IPv4 (Docker's default bridge:
/// `! -o docker0 -j MASQUERADE`) would send its containers' packets into
/// the TUN as this agent's own address. Returns whether IPv4 may be on:
/// not when the filter cannot be installed and the host forwards; then
/// IPv4 stays off (IPv6 works) and the log says why.
fn guard_tun_forwarding(
    options: &DaemonOptions,
    device: &packet_device::PacketDevice,
    prefix: NodePrefix,
) -> bool {
    if options.userspace.is_some() {
        return true;
    }
    let interface = device.name().unwrap_or_else(|_| options.interface.clone());
    let installed = crate::attach::Attachments::load(&options.state)
        .map_err(|error| error.to_string())
        .and_then(|record| {
            record
                .install_filter_on(&interface, prefix)
                .map_err(|error| error.to_string())
        });
    match installed {
        Ok(()) => true,
        Err(error) if crate::attach::forwarding_on() => {
            tracing::warn!(
                %error,
                "this host forwards packets and the forwarding filter cannot be installed: \
                 IPv4 on the overlay stays off (containers masqueraded by the host could \
                 otherwise reach peers as this agent); install nftables (`nft`) or run \
                 with --no-ipv4"
            );
            false
        }
        Err(error) => {
            tracing::debug!(%error, "no forwarding filter (this host does not forward)");
            true
        }
    }
}

/// The rendezvous servers of `--rendezvous` and the config file, resolved.
fn resolve_rendezvous(
    options: &DaemonOptions,
    config: &crate::state::AgentConfig,
) -> Result<Vec<(crate::core::identity::AgentId, std::net::SocketAddr)>, DaemonError> {
    let mut specs = options.rendezvous.clone();
    for text in &config.rendezvous {
        let spec: crate::rendezvous::link::RendezvousSpec =
            text.parse().map_err(DaemonError::BadRendezvous)?;
        if !specs.contains(&spec) {
            specs.push(spec);
        }
    }
    let mut resolved = Vec::new();
    for spec in specs {
        let endpoint = crate::sys::udp::resolve_endpoint(&spec.endpoint)?;
        resolved.push((spec.id, endpoint));
    }
    Ok(resolved)
}

fn refuse_if_socket_answers(options: &DaemonOptions) -> Result<(), DaemonError> {
    match ControlClient::call(&options.socket, &Request::Hello {}) {
        Ok(Response::Hello(info)) => Err(DaemonError::SocketInUse {
            socket: options.socket.clone(),
            pid: info.pid,
        }),
        Ok(_) | Err(ControlError::Daemon(_)) => Err(DaemonError::SocketInUse {
            socket: options.socket.clone(),
            pid: 0,
        }),
        Err(_) => Ok(()),
    }
}
