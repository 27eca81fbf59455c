//! How the agent reaches each rendezvous: UDP by default, TCP (framed
//! datagrams) when UDP gets no answer, and back to UDP as soon as a probe
//! over UDP is answered (DESIGN.md §5). The node never knows which: it
//! addresses the rendezvous by its UDP endpoint either way.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::core::identity::AgentId;
use crate::core::node::Node;
use crate::sys::tcp_frames::{read_frame_within, write_frame};

/// UDP silence after which the agent tries TCP.
const UDP_GIVE_UP: Duration = Duration::from_secs(5);
/// How often a TCP-connected agent probes UDP again.
const UDP_PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// Time allowed for a TCP connect.
const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames queued towards one rendezvous before new ones are dropped.
const TCP_QUEUE: usize = 4096;
/// A TCP link on which nothing arrives for this long is dead (blackholed,
/// NAT state lost): the server answers every registration, sent every 25 s,
/// and registrations lapse after 90 s.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest time one frame may take to arrive, or to be written out.
const TCP_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// A rendezvous as configured: `HOST:PORT=ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousSpec {
    /// `HOST:PORT` (UDP; TCP uses the same port number).
    pub endpoint: String,
    /// The server's agent ID.
    pub id: AgentId,
}

impl FromStr for RendezvousSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (endpoint, id) = text.rsplit_once('=').ok_or_else(|| {
            format!("`{text}`: expected HOST:PORT=ID (the rendezvous's agent ID after `=`)")
        })?;
        let id = id.parse().map_err(|error| format!("`{text}`: {error}"))?;
        if endpoint
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(format!("`{text}`: expected HOST:PORT before `=`"));
        }
        Ok(Self {
            endpoint: endpoint.to_string(),
            id,
        })
    }
}

impl std::fmt::Display for RendezvousSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.endpoint, self.id)
    }
}

/// Which transport carries a rendezvous's datagrams.
#[derive(Debug)]
enum Transport {
    Udp {
        since: Instant,
    },
    Connecting,
    Tcp {
        sender: mpsc::Sender<Vec<u8>>,
        next_udp_probe: Instant,
    },
}

#[derive(Debug)]
struct Link {
    id: AgentId,
    endpoint: SocketAddr,
    transport: Transport,
}

/// Something a TCP connection task reports.
#[derive(Debug)]
pub enum TcpLinkEvent {
    /// Connected; datagrams go through `sender`.
    Connected(SocketAddr, mpsc::Sender<Vec<u8>>),
    /// The connection could not be made or closed.
    Closed(SocketAddr),
    /// A datagram arrived from the rendezvous at this (UDP) endpoint.
    Datagram(SocketAddr, Vec<u8>),
}

/// The transports of every configured rendezvous.
#[derive(Debug)]
pub struct RendezvousLinks {
    links: Vec<Link>,
    events: mpsc::Sender<TcpLinkEvent>,
    /// Rendezvous endpoints whose next datagrams are also sent over UDP
    /// (a probe while on TCP).
    probing_udp: Vec<SocketAddr>,
}

impl RendezvousLinks {
    /// Links for these resolved rendezvous; TCP events arrive on the
    /// returned receiver.
    pub fn new(
        now: Instant,
        rendezvous: &[(AgentId, SocketAddr)],
    ) -> (Self, mpsc::Receiver<TcpLinkEvent>) {
        let (events, receiver) = mpsc::channel(TCP_QUEUE);
        let links = rendezvous
            .iter()
            .map(|(id, endpoint)| Link {
                id: *id,
                endpoint: *endpoint,
                transport: Transport::Udp { since: now },
            })
            .collect();
        (
            Self {
                links,
                events,
                probing_udp: Vec::new(),
            },
            receiver,
        )
    }

    /// The transport name of a rendezvous, for status.
    pub fn transport_of(&self, endpoint: SocketAddr) -> Option<&'static str> {
        self.links
            .iter()
            .find(|link| link.endpoint == endpoint)
            .map(|link| match link.transport {
                Transport::Udp { .. } | Transport::Connecting => "udp",
                Transport::Tcp { .. } => "tcp",
            })
    }

    /// Where a datagram for `destination` goes: `Some(sender)` for a TCP
    /// link; `None` means UDP. `also_udp` asks for a UDP copy (a probe).
    pub fn route(&self, destination: SocketAddr) -> (Option<&mpsc::Sender<Vec<u8>>>, bool) {
        let also_udp = self.probing_udp.contains(&destination);
        match self.links.iter().find(|link| link.endpoint == destination) {
            Some(Link {
                transport: Transport::Tcp { sender, .. },
                ..
            }) => (Some(sender), also_udp),
            _ => (None, false),
        }
    }

    /// Ends the UDP probes of this flush.
    pub fn probes_sent(&mut self) {
        self.probing_udp.clear();
    }

    /// Feeds a run of UDP datagrams from `from` to the node. If `from` is a
    /// rendezvous reached over TCP and the run carried its authenticated
    /// answer (a registration acknowledged inside its session: a probe of
    /// ours came through), UDP works again and the link goes back to it. A
    /// datagram that merely comes from the server's address proves nothing
    /// (anyone can forge the source) and changes nothing.
    pub fn handle_udp_run<'d>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagrams: impl IntoIterator<Item = &'d [u8]>,
        node: &mut Node,
    ) {
        let on_tcp = self
            .links
            .iter()
            .any(|link| link.endpoint == from && matches!(link.transport, Transport::Tcp { .. }));
        let before = on_tcp.then(|| registration_mark(node, now, from));
        for datagram in datagrams {
            node.handle_datagram(now, from, datagram);
        }
        let Some(before) = before else {
            return;
        };
        // The node stamps an acknowledged registration with `now`: its age
        // at `now` became zero during this run only if one was in it.
        let after = registration_mark(node, now, from);
        if after == before || after != Some(0.0) {
            return;
        }
        let Some(link) = self.links.iter_mut().find(|link| link.endpoint == from) else {
            return;
        };
        tracing::info!(rendezvous = %link.id, endpoint = %from, "UDP answers again; leaving TCP");
        // Dropping the sender closes the connection.
        link.transport = Transport::Udp { since: now };
        node.reconnect_rendezvous(now, &link.id);
    }

    /// A connection task reported; returns a datagram to feed to the node.
    pub fn on_event(
        &mut self,
        now: Instant,
        event: TcpLinkEvent,
        node: &mut Node,
    ) -> Option<(SocketAddr, Vec<u8>)> {
        match event {
            TcpLinkEvent::Datagram(from, datagram) => return Some((from, datagram)),
            TcpLinkEvent::Connected(endpoint, sender) => {
                if let Some(link) = self.links.iter_mut().find(|link| link.endpoint == endpoint)
                    && matches!(link.transport, Transport::Connecting)
                {
                    tracing::info!(rendezvous = %link.id, %endpoint, "reaching rendezvous over TCP");
                    link.transport = Transport::Tcp {
                        sender,
                        next_udp_probe: now + UDP_PROBE_INTERVAL,
                    };
                    node.reconnect_rendezvous(now, &link.id);
                }
            }
            TcpLinkEvent::Closed(endpoint) => {
                if let Some(link) = self.links.iter_mut().find(|link| link.endpoint == endpoint)
                    && !matches!(link.transport, Transport::Udp { .. })
                {
                    tracing::info!(rendezvous = %link.id, %endpoint, "TCP to rendezvous closed; trying UDP");
                    link.transport = Transport::Udp { since: now };
                    node.reconnect_rendezvous(now, &link.id);
                }
            }
        }
        None
    }

    /// Whether there is no rendezvous to look after (then nothing needs
    /// [`RendezvousLinks::tick`], and an idle daemon need not wake for it).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Once a second: gives up on silent UDP links (TCP instead) and probes
    /// UDP from TCP links.
    pub fn tick(&mut self, now: Instant, node: &mut Node) {
        let registered: Vec<(SocketAddr, bool)> = node
            .rendezvous_status(now)
            .into_iter()
            .map(|status| (status.endpoint, status.registered))
            .collect();
        for link in &mut self.links {
            let Some(is_registered) = registered
                .iter()
                .find(|(endpoint, _)| *endpoint == link.endpoint)
                .map(|(_, live)| *live)
            else {
                // The node holds no link to this server (neither one of its
                // own nor needed by a peer now): its silence says nothing,
                // and a TCP connection to it has nothing to carry.
                if !matches!(link.transport, Transport::Udp { .. }) {
                    tracing::debug!(rendezvous = %link.id, "rendezvous link closed; back to UDP");
                }
                link.transport = Transport::Udp { since: now };
                continue;
            };
            match &mut link.transport {
                Transport::Udp { since } => {
                    if is_registered {
                        *since = now;
                    } else if now.saturating_duration_since(*since) >= UDP_GIVE_UP {
                        tracing::info!(rendezvous = %link.id, endpoint = %link.endpoint, "no answer over UDP; trying TCP");
                        link.transport = Transport::Connecting;
                        spawn_connection(link.endpoint, self.events.clone());
                    }
                }
                Transport::Tcp { next_udp_probe, .. } if *next_udp_probe <= now => {
                    *next_udp_probe = now + UDP_PROBE_INTERVAL;
                    self.probing_udp.push(link.endpoint);
                    node.reconnect_rendezvous(now, &link.id);
                }
                Transport::Tcp { .. } | Transport::Connecting => {}
            }
        }
    }
}

/// How long ago, at `now`, the rendezvous at `endpoint` last acknowledged
/// our registration (an authenticated frame inside its session).
fn registration_mark(node: &Node, now: Instant, endpoint: SocketAddr) -> Option<f64> {
    node.rendezvous_status(now)
        .into_iter()
        .find(|status| status.endpoint == endpoint)
        .and_then(|status| status.last_registered_age_s)
}

fn spawn_connection(endpoint: SocketAddr, events: mpsc::Sender<TcpLinkEvent>) {
    tokio::spawn(async move {
        let stream =
            match tokio::time::timeout(TCP_CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%endpoint, %error, "TCP connect to rendezvous failed");
                    let _ = events.send(TcpLinkEvent::Closed(endpoint)).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!(%endpoint, "TCP connect to rendezvous timed out");
                    let _ = events.send(TcpLinkEvent::Closed(endpoint)).await;
                    return;
                }
            };
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let (sender, mut outgoing) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
        if events
            .send(TcpLinkEvent::Connected(endpoint, sender))
            .await
            .is_err()
        {
            return;
        }
        let mut writer_task = tokio::spawn(async move {
            while let Some(datagram) = outgoing.recv().await {
                let write = write_frame(&mut writer, &datagram);
                if !matches!(
                    tokio::time::timeout(TCP_FRAME_TIMEOUT, write).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
        });
        let mut frame = Vec::new();
        loop {
            tokio::select! {
                read = read_frame_within(&mut reader, &mut frame, TCP_IDLE_TIMEOUT, TCP_FRAME_TIMEOUT) => match read {
                    Ok(Some(())) => {
                        if events.send(TcpLinkEvent::Datagram(endpoint, std::mem::take(&mut frame))).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) | Err(_) => break,
                },
                // The writer ends when the daemon drops our sender (back to
                // UDP) or a write fails: either way the connection is done.
                _ = &mut writer_task => break,
            }
        }
        writer_task.abort();
        let _ = events.send(TcpLinkEvent::Closed(endpoint)).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::address::NetworkId;
    use crate::core::api::NodeConfig;
    use crate::core::identity::Identity;
    use crate::core::rendezvous::{ClientAddr, RendezvousConfig, RendezvousServer};

    const SERVER: &str = "192.0.2.1:7300";
    const AGENT: &str = "192.0.2.2:40000";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    /// Delivers what the server sends to the agent, as `deliver` does.
    fn server_to_agent(server: &mut RendezvousServer, mut deliver: impl FnMut(Vec<u8>)) -> usize {
        let mut count = 0;
        while let Some((_, datagram)) = server.poll_transmit() {
            deliver(datagram);
            count += 1;
        }
        count
    }

    fn agent_to_server(agent: &mut Node, server: &mut RendezvousServer, now: Instant) -> usize {
        let mut count = 0;
        while let Some(transmit) = agent.poll_transmit() {
            server.handle_datagram(now, ClientAddr::Udp(addr(AGENT)), &transmit.payload);
            count += 1;
        }
        count
    }

    #[test]
    fn only_an_authenticated_udp_answer_moves_a_tcp_link_back_to_udp() {
        let network = NetworkId::from_name("link-test");
        let server_identity = Identity::from_secret_bytes(&[1; 32]).expect("key");
        let server_id = server_identity.agent_id();
        let start = Instant::now();
        let mut server = RendezvousServer::new(
            RendezvousConfig::new(server_identity, network),
            [3; 32],
            start,
        );
        let mut agent = Node::new(
            NodeConfig {
                identity: Identity::from_secret_bytes(&[2; 32]).expect("key"),
                network,
                name: "agent".into(),
                tunnel_mtu: 1280,
            },
            [4; 32],
            start,
            Duration::from_secs(1_800_000_000),
        );
        agent.add_rendezvous(start, server_id, addr(SERVER));
        let (mut links, _events) = RendezvousLinks::new(start, &[(server_id, addr(SERVER))]);

        // Handshake and registration over UDP.
        let mut now = start;
        agent.handle_timeout(now);
        for _ in 0..8 {
            now += Duration::from_millis(5);
            agent_to_server(&mut agent, &mut server, now);
            server_to_agent(&mut server, |datagram| {
                links.handle_udp_run(now, addr(SERVER), [datagram.as_slice()], &mut agent)
            });
        }
        assert!(
            agent.rendezvous_status(now)[0].registered,
            "the agent did not register"
        );

        // UDP went silent and the link moved to TCP.
        let (sender, _outgoing) = mpsc::channel(1);
        links.links[0].transport = Transport::Tcp {
            sender,
            next_udp_probe: now + UDP_PROBE_INTERVAL,
        };
        assert_eq!(links.transport_of(addr(SERVER)), Some("tcp"));

        // Anyone can send datagrams with the server's source address: junk,
        // and a data header with a plausible receiver index.
        now += Duration::from_millis(5);
        let mut forged_data = vec![4u8, 0, 0, 0];
        forged_data.extend_from_slice(&[0x55; 60]);
        let junk: [&[u8]; 3] = [b"", b"\x01garbage", &forged_data];
        links.handle_udp_run(now, addr(SERVER), junk, &mut agent);
        assert_eq!(
            links.transport_of(addr(SERVER)),
            Some("tcp"),
            "an unauthenticated datagram tore down the TCP link"
        );

        // An authenticated answer that arrives over TCP does not count either.
        agent.reconnect_rendezvous(now, &server_id);
        now += Duration::from_millis(5);
        agent_to_server(&mut agent, &mut server, now);
        let answered = server_to_agent(&mut server, |datagram| {
            if let Some((from, datagram)) = links.on_event(
                now,
                TcpLinkEvent::Datagram(addr(SERVER), datagram),
                &mut agent,
            ) {
                agent.handle_datagram(now, from, &datagram);
            }
        });
        assert!(answered > 0, "the server did not answer the registration");
        assert_eq!(links.transport_of(addr(SERVER)), Some("tcp"));

        // The server's authenticated answer to a probe over UDP does.
        now += Duration::from_millis(5);
        agent.reconnect_rendezvous(now, &server_id);
        agent_to_server(&mut agent, &mut server, now);
        now += Duration::from_millis(5);
        server_to_agent(&mut server, |datagram| {
            links.handle_udp_run(now, addr(SERVER), [datagram.as_slice()], &mut agent)
        });
        assert_eq!(links.transport_of(addr(SERVER)), Some("udp"));
    }

    #[test]
    fn spec_parses_host_port_and_id() {
        let id = crate::core::identity::Identity::from_secret_bytes(&[1; 32])
            .expect("key")
            .agent_id();
        let spec: RendezvousSpec = format!("rv.example:7300={id}").parse().expect("valid");
        assert_eq!(spec.endpoint, "rv.example:7300");
        assert_eq!(spec.id, id);
        assert_eq!(spec.to_string().parse::<RendezvousSpec>(), Ok(spec));
        assert!("rv.example:7300".parse::<RendezvousSpec>().is_err());
        assert!(
            format!("rv.example={id}")
                .parse::<RendezvousSpec>()
                .is_err()
        );
        assert!("rv.example:7300=nope".parse::<RendezvousSpec>().is_err());
    }
}
