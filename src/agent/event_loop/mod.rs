//! The event loop: the datapath thread owns the node and feeds it from the
//! UDP socket, the TUN, the quiet inputs the runtime's thread forwards and
//! its deadlines, waiting on them in one `epoll` ([`datapath`]), then
//! drains the node's outputs (the call order documented on [`Node`]).

use std::net::SocketAddr;
use std::time::Instant;

use tokio::sync::mpsc;

use super::DaemonOptions;
use super::commands::Command;
use super::packet_device::PacketDevice;
use super::tun_batch::TunWriteBatch;
use crate::control::{DaemonInfo, Response, TrustedPeer};
use crate::core::address::{NetworkId, NodePrefix};
use crate::core::api::{Event, Ipv4Route, PeerConfig};
use crate::core::identity::AgentId;
use crate::core::node::Node;
use crate::core::trust::store::{TrustEntry, TrustState, TrustStore, TrustUpdate};
use crate::core::wire::packet::IpPacket;
use crate::names::service::NameService;
use crate::rendezvous::link::RendezvousLinks;
use crate::state::AgentConfig;
use crate::sys::probe_sockets::{ProbeDatagram, ProbeSockets};
use crate::sys::udp::{Underlay, resolve_endpoint};

mod busy_poll;
mod chores;
mod datapath;
mod inputs;
mod quiet_inputs;
mod services;
mod signals;
mod throttle;
mod trust_ops;

pub(crate) use self::signals::Signals;
use self::throttle::Throttle;

/// How many packets (datagrams, or TUN packets) one wake-up takes at most
/// from each input before the outputs are drained: amortizes the loop without starving the
/// other inputs, and bounds what waits in the queues (with offloads one read
/// brings up to 64 packets, so a count of reads would not).
const PACKETS_PER_WAKE: usize = 256;
/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Down,
    Signal(&'static str),
}

/// The running daemon: the node and everything around it.
pub(crate) struct Daemon {
    options: DaemonOptions,
    config: AgentConfig,
    network: NetworkId,
    own_id: AgentId,
    node: Node,
    /// The TUN, or the userspace stack.
    tun: PacketDevice,
    interface: String,
    mtu: u16,
    underlay: Underlay,
    /// The trust store as last applied to the node.
    trust: TrustStore,
    /// The endpoints last handed to the node to announce.
    candidates: Vec<SocketAddr>,
    started: Instant,
    stop: Option<Stop>,
    udp_send_warnings: Throttle,
    tun_send_warnings: Throttle,
    udp_recv_warnings: Throttle,
    /// Trust requests: auto-approval rules, saving the pending ones.
    trust_flow: trust_ops::TrustFlow,
    /// `NAME.agent.internal`: the resolver at `PREFIX::53` and host config.
    names: NameService,
    /// How each rendezvous is reached (UDP, or TCP where UDP is blocked).
    links: RendezvousLinks,
    /// `agentnet ping`s waiting for their pongs.
    pings: super::ping::PendingPings,
    /// The minutely summary of dropped, unanswered traffic.
    drop_log: super::drop_log::DropLog,
    /// The gateway's port mapping for our socket (PCP, NAT-PMP, UPnP-IGD).
    portmap: crate::portmap::PortMapper,
    /// Extra sockets for birthday hole punching, opened on demand.
    probes: ProbeSockets,
    probe_datagrams: Option<mpsc::Receiver<ProbeDatagram>>,
    /// Datagrams the node queued for the UDP socket, reused between flushes.
    udp_out: Vec<crate::core::api::Transmit>,
    /// Packets on their way to the TUN.
    tun_out: TunWriteBatch,
    /// Batches written to the TUN so far (whether a turn wrote one).
    tun_batches_written: u64,
    /// Whether the first packet the last flush queued for the TUN is one
    /// its kernel may answer within the write (see
    /// [`IpPacket::may_be_answered_on_delivery`]); `None`: none was queued.
    first_queued_answerable: Option<bool>,
    /// `agentnet serve`: the published ports (`None`: not available).
    services: Option<crate::serve::Services>,
    /// Served connections asking who their caller is.
    caller_queries: Option<mpsc::Receiver<crate::serve::CallerQuery>>,
    /// The services generation last written to the state directory.
    saved_services_generation: u64,
}

impl Daemon {
    /// Wraps the parts [`super::run`] created.
    pub(crate) fn new(
        options: DaemonOptions,
        config: AgentConfig,
        mut node: Node,
        tun: PacketDevice,
        mtu: u16,
        underlay: Underlay,
        links: RendezvousLinks,
    ) -> Self {
        node.restore_services_generation(services::kept_services_generation(&options.state));
        let saved_services_generation = node.last_services_generation();
        let (probes, probe_datagrams) = ProbeSockets::new();
        let network = NetworkId::from_name(&config.network);
        let own_id = node.agent_id();
        let interface = tun.name().unwrap_or_else(|_| options.interface.clone());
        let tun_out = TunWriteBatch::new(tun.headroom());
        let portmap = crate::portmap::PortMapper::new(options.port_mapping, underlay.port());
        let names = NameService::start(
            network,
            own_id,
            &interface,
            options.state.clone(),
            options.names,
        );
        Self {
            options,
            config,
            network,
            own_id,
            node,
            tun,
            interface,
            mtu,
            underlay,
            trust: TrustStore::default(),
            candidates: Vec::new(),
            started: Instant::now(),
            stop: None,
            udp_send_warnings: Throttle::default(),
            tun_send_warnings: Throttle::default(),
            udp_recv_warnings: Throttle::default(),
            trust_flow: trust_ops::TrustFlow::default(),
            names,
            links,
            pings: super::ping::PendingPings::default(),
            drop_log: super::drop_log::DropLog::default(),
            portmap,
            probes,
            probe_datagrams: Some(probe_datagrams),
            udp_out: Vec::new(),
            tun_out,
            tun_batches_written: 0,
            first_queued_answerable: None,
            services: None,
            caller_queries: None,
            saved_services_generation,
        }
    }

    /// Hands the daemon the served ports and the questions of their
    /// connections (answered from the node and the trust store).
    pub(crate) fn attach_services(
        &mut self,
        services: crate::serve::Services,
        queries: mpsc::Receiver<crate::serve::CallerQuery>,
    ) {
        self.services = Some(services);
        self.caller_queries = Some(queries);
    }

    /// Opens the hosts files the names go to and keeps them open, so they
    /// can still be edited after the daemon dropped its privileges.
    pub(crate) fn hold_name_files(&mut self) {
        self.names.hold_files();
    }

    /// Whether the host's names go through systemd-resolved (`resolvectl`
    /// then needs `CAP_NET_ADMIN` at run time).
    pub(crate) fn names_use_resolved(&self) -> bool {
        self.names.uses_resolved()
    }

    /// Tells the node the endpoints it may announce, when they changed.
    fn refresh_candidates(&mut self) {
        let candidates = self
            .underlay
            .local_candidates(&self.interface, self.network);
        if candidates != self.candidates {
            tracing::debug!(?candidates, "local candidates");
            self.candidates = candidates.clone();
            self.node.set_local_candidates(candidates);
        }
    }

    /// Drains the node's outputs: events first (acting on one, such as an
    /// auto-approval, may queue datagrams), then datagrams and TUN packets.
    /// `now` is the turn's (read once per wake: the clock is on every
    /// packet's path).
    fn flush(&mut self, now: Instant) {
        self.first_queued_answerable = None;
        let mut had_events = false;
        while let Some(event) = self.node.poll_event() {
            had_events = true;
            self.on_trust_event(Instant::now(), &event);
            self.pings.on_event(&event);
            self.log_event(event);
        }
        self.drop_log.maybe_log(now, &self.node);
        // Before the offers that carry a new generation leave (handling an
        // event, such as an auto-approval, may have made one).
        self.save_services_generation_if_changed();
        let mut udp_out = std::mem::take(&mut self.udp_out);
        while let Some(transmit) = self.node.poll_transmit() {
            if let Some(socket) = transmit.source {
                if let Err(error) = self.probes.send(
                    Instant::now(),
                    socket,
                    &transmit.payload,
                    transmit.destination,
                ) {
                    tracing::debug!(%error, socket, "probe socket send failed");
                }
                continue;
            }
            let (tcp, also_udp) = self.links.route(transmit.destination);
            if let Some(tcp) = tcp {
                // A full queue drops the datagram, as a full socket would.
                let _ = tcp.try_send(transmit.payload.clone());
                if !also_udp {
                    continue;
                }
            }
            udp_out.push(transmit);
        }
        if !udp_out.is_empty() {
            for (destination, error) in self.underlay.send_batch(&udp_out) {
                if let Some(suppressed) = self.udp_send_warnings.allow(Instant::now()) {
                    tracing::warn!(%error, %destination, suppressed, "UDP send failed");
                }
            }
        }
        self.node.recycle_sent(&mut udp_out);
        self.udp_out = udp_out;
        self.links.probes_sent();
        // The node decrypted each packet behind the TUN's headroom: it is
        // queued as it is, and the buffer it replaces goes back to the node.
        while let Some(packet) = self.node.poll_tun_delivery() {
            if let Some(ip) = packet.buffer.get(self.tun_out.headroom()..) {
                self.note_queued(ip);
            }
            let spare = self.tun_out.push_with_headroom(packet);
            self.node.recycle_buffer(spare);
            if self.tun_out.is_full() {
                self.write_tun();
            }
        }
        // Events may have changed the trust store (comparing it on every
        // wake would cost O(peers) per packet); then the resolver's replies.
        if had_events {
            self.sync_names();
        }
        // What peers advertised may have changed (O(1) when it did not).
        self.names.sync_services(now, &self.trust, &self.node);
        while let Some(packet) = self.names.poll_tun_packet() {
            self.queue_for_tun(&packet);
        }
        self.write_tun();
    }

    /// Makes the names (resolver, host files, userspace stack) and the
    /// resolver's DNS-SD records follow the trust store.
    fn sync_names(&mut self) {
        self.names.sync(Instant::now(), &self.trust, &self.node);
        self.tun.publish_names(self.names.table());
        self.tun.publish_ipv4_routes(&self.node, &self.trust);
    }

    /// Notes whether `packet`, queued for the TUN, may be answered within
    /// its write, if it is the flush's first: the answer is read only after
    /// a turn that took one packet (`reads_answer`), so a batch's others
    /// are not looked at.
    fn note_queued(&mut self, packet: &[u8]) {
        if self.first_queued_answerable.is_none() {
            self.first_queued_answerable = Some(
                IpPacket::new_checked(packet).is_none_or(|ip| ip.may_be_answered_on_delivery()),
            );
        }
    }

    /// Whether the last flush wrote to the TUN a first packet its kernel
    /// may answer within the write.
    fn wrote_answerable(&self) -> bool {
        self.first_queued_answerable == Some(true)
    }

    /// Queues a packet for the TUN, writing the batch when it is full.
    fn queue_for_tun(&mut self, packet: &[u8]) {
        self.note_queued(packet);
        self.tun_out.push(packet);
        if self.tun_out.is_full() {
            self.write_tun();
        }
    }

    /// Writes the queued packets to the TUN.
    fn write_tun(&mut self) {
        if self.tun_out.is_empty() {
            return;
        }
        self.tun_batches_written = self.tun_batches_written.wrapping_add(1);
        if let Err(error) = self.tun.send_batch(&mut self.tun_out)
            && let Some(suppressed) = self.tun_send_warnings.allow(Instant::now())
        {
            tracing::warn!(%error, suppressed, "TUN write failed");
        }
    }

    fn peer_name(&self, id: &AgentId) -> &str {
        self.trust.get(id).map_or("?", |entry| entry.name.as_str())
    }

    fn log_event(&mut self, event: Event) {
        match event {
            Event::PeerUp { id } => {
                tracing::info!(peer = %self.peer_name(&id), %id, "session established");
            }
            Event::PeerDown { id } => {
                tracing::info!(peer = %self.peer_name(&id), %id, "session closed");
            }
            Event::TrustRequested { id, auto_approve } => {
                // Acted on (saved, auto-approved) by `on_trust_event`. One
                // line each at debug level (anyone can send 200 a second),
                // and a count a minute.
                self.drop_log.note_trust_request();
                tracing::debug!(%id, auto_approve, "trust request received");
            }
            Event::EndpointChanged { id, endpoint } => {
                tracing::info!(peer = %self.peer_name(&id), %id, %endpoint, "endpoint changed");
            }
            Event::PathChanged { id, path } => {
                let via = self.node.peer_path(Instant::now(), &id);
                let via = via.map_or_else(|| "-".to_string(), |path| path.underlay().to_string());
                let path = format!("{path:?}").to_lowercase();
                tracing::info!(peer = %self.peer_name(&id), %id, %path, %via, "path changed");
            }
            Event::RendezvousRegistered { id, reflexive } => {
                tracing::info!(rendezvous = %id, %reflexive, "registered with rendezvous");
            }
            Event::PingReply { id, rtt, path, .. } => {
                tracing::debug!(peer = %self.peer_name(&id), %id, rtt_ms = rtt.as_secs_f64() * 1000.0, %path, "ping answered");
            }
        }
    }

    fn on_command(&mut self, command: Command) -> Response {
        let now = Instant::now();
        match command {
            Command::Hello => Response::Hello(self.info()),
            Command::Status => self.status(now),
            Command::TrustList => match self.options.state.load_trust() {
                Ok(store) => Response::TrustList {
                    peers: store
                        .peers
                        .into_iter()
                        .map(|entry| self.trusted_peer(entry))
                        .collect(),
                },
                Err(error) => Response::Error(error.to_string()),
            },
            Command::TrustAdd { update, endpoint } => self.trust_add(now, update, endpoint),
            Command::TrustRemove { peer } => self.trust_remove(&peer),
            Command::TrustOp(op) => self.trust_op(now, op),
            Command::Ping { peer, pong } => {
                self.pings
                    .start(&mut self.node, now, &self.trust, self.network, &peer, pong)
            }
            Command::ReloadAttachments => match self.names.reload_attachments() {
                Ok(attachments) => Response::AttachmentsReloaded { attachments },
                Err(error) => Response::Error(error),
            },
            Command::Serve(request) => self.serve(request),
            Command::Advertise(request) => self.advertise(request),
            Command::Services => self.peer_services(now),
            Command::Down => {
                self.stop = Some(Stop::Down);
                Response::Stopping {
                    pid: std::process::id(),
                }
            }
        }
    }

    fn info(&self) -> DaemonInfo {
        DaemonInfo {
            pid: std::process::id(),
            id: self.own_id,
            address: NodePrefix::of_agent(self.network, &self.own_id).agent_address(),
            address4: self.node.address4(),
            name: self.config.name.clone(),
            network: self.config.network.clone(),
            interface: self.interface.clone(),
            port: self.underlay.port(),
            mtu: self.mtu,
            state_dir: self.options.state.root().to_path_buf(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    fn status(&self, now: Instant) -> Response {
        let status = self.node.status(now);
        let mut map = match serde_json::to_value(&status) {
            Ok(serde_json::Value::Object(map)) => map,
            Ok(_) => return Response::Error("node status is not a JSON object".to_string()),
            Err(error) => return Response::Error(format!("cannot encode node status: {error}")),
        };
        let extra = [
            ("interface", serde_json::json!(self.interface)),
            ("port", serde_json::json!(self.underlay.port())),
            ("pid", serde_json::json!(std::process::id())),
            (
                "offload",
                serde_json::json!({
                    "tun": self.tun.offload(),
                    "udp_gso": self.underlay.offload().gso,
                    "udp_gro": self.underlay.offload().gro,
                }),
            ),
            ("port_mapping", self.portmap.state().to_json(now)),
            ("name", serde_json::json!(self.config.name)),
            ("network", serde_json::json!(self.config.network)),
            (
                "uptime_s",
                serde_json::json!(now.duration_since(self.started).as_secs()),
            ),
        ];
        for (key, value) in extra {
            map.insert(key.to_string(), value);
        }
        if let Some(userspace) = self.tun.userspace_status() {
            map.insert("userspace".to_string(), serde_json::json!(userspace));
        }
        if let Some(serde_json::Value::Array(links)) = map.get_mut("rendezvous") {
            for link in links.iter_mut() {
                let endpoint = link
                    .get("endpoint")
                    .and_then(|e| e.as_str())
                    .and_then(|e| e.parse().ok());
                if let (Some(endpoint), serde_json::Value::Object(fields)) = (endpoint, link) {
                    let transport = self.links.transport_of(endpoint).unwrap_or("udp");
                    fields.insert("transport".to_string(), serde_json::json!(transport));
                }
            }
        }
        Response::Status(serde_json::Value::Object(map))
    }

    fn trust_add(
        &mut self,
        now: Instant,
        update: TrustUpdate,
        endpoint: Option<SocketAddr>,
    ) -> Response {
        let (stored, change) = match self.options.state.trust_update(&self.own_id, update) {
            Ok(result) => result,
            Err(error) => return Response::Error(error.to_string()),
        };
        // An update that named no endpoint keeps the stored one. A literal
        // address is handed on; a host name is not looked up here (the loop
        // does not block on DNS), and the node keeps the endpoint it has.
        let endpoint = endpoint.or_else(|| stored.endpoint.as_deref()?.parse().ok());
        self.apply_entry(now, &stored, endpoint, true);
        tracing::info!(peer = %stored.name, id = %stored.id, allow = %stored.allow, ?change, "trusted");
        self.remember(stored.clone());
        Response::TrustAdded {
            peer: self.trusted_peer(stored),
            change,
        }
    }

    /// A trust entry with the addresses the node routes to it.
    pub(super) fn trusted_peer(&self, entry: TrustEntry) -> TrustedPeer {
        let route = self.node.peer_ipv4_route(&entry.id);
        let peer = TrustedPeer::new(entry, self.network);
        match route {
            Some(route) => peer.with_ipv4_route(route),
            None if self.node.address4().is_none() => peer.with_ipv4_route(Ipv4Route::Off),
            None => peer,
        }
    }

    fn trust_remove(&mut self, peer: &str) -> Response {
        // Name lookups use the file: it is the authority, and the same the
        // CLI would edit with the daemon stopped.
        let removed = self.options.state.trust_remove(peer);
        let removed = match removed {
            Ok(entry) => entry,
            Err(error) => return Response::Error(error.to_string()),
        };
        // Revoke, not just forget: the peer gets a signed notice over its
        // session (sent by the flush after this command) and loses it.
        self.node.revoke_peer(Instant::now(), &removed.id);
        // Log its events while its name is still known.
        while let Some(event) = self.node.poll_event() {
            self.log_event(event);
        }
        self.trust.peers.retain(|entry| entry.id != removed.id);
        tracing::info!(peer = %removed.name, id = %removed.id, "trust removed; sessions destroyed");
        Response::TrustRemoved {
            peer: TrustedPeer::new(removed, self.network),
        }
    }

    fn remember(&mut self, entry: TrustEntry) {
        match self.trust.peers.iter_mut().find(|e| e.id == entry.id) {
            Some(existing) => *existing = entry,
            None => self.trust.peers.push(entry),
        }
    }

    /// Hands one trust entry to the node. A "requested" entry is a peer too:
    /// this agent trusts the agent it asked, so that agent's handshake after
    /// its approval is accepted. `connect` starts a handshake if there is an
    /// endpoint.
    fn apply_entry(
        &mut self,
        now: Instant,
        entry: &TrustEntry,
        endpoint: Option<SocketAddr>,
        connect: bool,
    ) {
        self.node.upsert_peer(
            now,
            PeerConfig {
                id: entry.id,
                name: entry.name.clone(),
                endpoint,
                allow: entry.allow.clone(),
            },
        );
        if connect && endpoint.is_some() {
            self.node.connect(now, &entry.id);
        }
    }

    /// Makes the node match the trust-store file: removes peers that are
    /// gone, adds new and changed ones and connects to those with an
    /// endpoint; unchanged peers are left alone; then re-reads the advertised
    /// services. Used at start and on SIGHUP.
    fn reload_trust_store(&mut self, now: Instant) {
        let store = match self.options.state.load_trust() {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(%error, "cannot load the trust store; keeping the peers as they are");
                return;
            }
        };
        let previous = std::mem::take(&mut self.trust);
        for old in &previous.peers {
            if store.get(&old.id).is_none() {
                self.node.remove_peer(&old.id);
                tracing::info!(peer = %old.name, id = %old.id, "no longer trusted");
            }
        }
        for entry in &store.peers {
            if previous.get(&entry.id) == Some(entry) {
                continue;
            }
            let endpoint = entry.endpoint.as_deref().and_then(|text| {
                resolve_endpoint(text)
                    .map_err(|error| {
                        tracing::warn!(peer = %entry.name, %error, "ignoring the endpoint");
                    })
                    .ok()
            });
            // An agent we asked waits for its operator: it connects to us.
            let connect = entry.state == TrustState::Trusted;
            self.apply_entry(now, entry, endpoint, connect);
        }
        self.trust = store;
        self.refresh_advertised(now);
    }
}
