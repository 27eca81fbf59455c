//! The rendezvous server fed arbitrary datagram sequences: raw bytes from
//! any client address, and, through clients that make real handshakes,
//! arbitrary control frames and relay envelopes inside real sessions, with
//! a virtual clock. Its tables must stay within their bounds.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::{InitiationShape, RemoteAgent, identity, network};
use agentnet::core::address::NodeId;
use agentnet::core::rendezvous::{
    ClientAddr, MAX_BUCKETS, MAX_CLIENTS, MAX_MAILBOX_BYTES, MAX_MAILBOXES, RendezvousConfig,
    RendezvousServer,
};
use agentnet::core::wire::control_frame::ControlFrame;
use agentnet::core::wire::path::relay_envelope;
use arbitrary::Arbitrary;

const CLIENTS: usize = 4;

#[derive(Arbitrary, Debug)]
enum Op {
    Raw {
        client: u8,
        tcp: bool,
        bytes: Vec<u8>,
    },
    Handshake {
        client: u8,
        shape: InitiationShape,
    },
    Sealed {
        client: u8,
        payload: Vec<u8>,
    },
    Register {
        client: u8,
        as_other: bool,
        /// Sent from the next client's address (a spoofed source).
        from_other: bool,
        /// Without the flags byte, as agents that predate it send it.
        legacy: bool,
    },
    Relay {
        client: u8,
        to: u8,
        inner: Vec<u8>,
    },
    RelayTo {
        client: u8,
        node: [u8; 8],
        inner: Vec<u8>,
    },
    Advance {
        millis: u32,
    },
    Closed {
        client: u8,
        tcp_id: u8,
    },
    Load {
        threshold: u8,
    },
}

struct World {
    server: RendezvousServer,
    clients: Vec<(RemoteAgent, ClientAddr)>,
    now: Instant,
}

impl World {
    fn server_key(&self) -> [u8; 32] {
        self.server.agent_id().noise_public_key()
    }

    fn deliver(&mut self, from: ClientAddr, datagram: &[u8]) {
        self.server.handle_datagram(self.now, from, datagram);
        self.drain();
    }

    fn drain(&mut self) {
        let key = self.server_key();
        let mut budget = 10_000;
        while let Some((to, datagram)) = self.server.poll_transmit() {
            budget -= 1;
            assert!(budget > 0, "the server keeps producing output");
            if let Some((client, _)) = self.clients.iter_mut().find(|(_, addr)| *addr == to) {
                let _ = client.receive(self.now, &key, &datagram);
            }
        }
    }

    fn check_bounds(&self) {
        let usage = self.server.usage();
        assert!(usage.clients <= MAX_CLIENTS);
        assert!(usage.sessions <= 2 * usage.clients);
        assert!(usage.mailboxes <= MAX_MAILBOXES);
        assert!(usage.buckets <= MAX_BUCKETS);
        assert!(usage.stored_bytes <= MAX_MAILBOX_BYTES);
        assert_eq!(
            usage.stored_requests == 0,
            usage.stored_bytes == 0,
            "stored bytes out of step: {usage:?}"
        );
    }
}

/// Runs the target on one input, decoded as libFuzzer's `fuzz_target!` does.
pub fn run(data: &[u8]) {
    crate::structured(data, |ops: Vec<Op>| {
        let now = Instant::now();
        let config = RendezvousConfig::new(identity(100), network());
        let mut world = World {
            server: RendezvousServer::new(config, [1; 32], now),
            clients: (0..CLIENTS)
                .map(|i| {
                    let addr: SocketAddr = ([10, 0, 0, i as u8 + 1], 7400).into();
                    (RemoteAgent::new(i as u8 + 1), ClientAddr::Udp(addr))
                })
                .collect(),
            now,
        };
        for op in ops.into_iter().take(256) {
            match op {
                Op::Raw { client, tcp, bytes } => {
                    let addr = world.clients[usize::from(client) % CLIENTS].1.socket_addr();
                    let from = if tcp {
                        ClientAddr::Tcp(u64::from(client), addr)
                    } else {
                        ClientAddr::Udp(addr)
                    };
                    world.deliver(from, &bytes);
                }
                Op::Handshake { client, shape } => {
                    let key = world.server_key();
                    let index = usize::from(client) % CLIENTS;
                    let now = world.now;
                    let (agent, addr) = &mut world.clients[index];
                    let addr = *addr;
                    if let Some(datagram) = agent.initiation(now, &key, &shape) {
                        world.deliver(addr, &datagram);
                    }
                }
                Op::Sealed { client, payload } => {
                    let index = usize::from(client) % CLIENTS;
                    let now = world.now;
                    let (agent, addr) = &mut world.clients[index];
                    let addr = *addr;
                    if let Some(datagram) = agent.seal(now, &payload) {
                        world.deliver(addr, &datagram);
                    }
                }
                Op::Register {
                    client,
                    as_other,
                    from_other,
                    legacy,
                } => {
                    let index = usize::from(client) % CLIENTS;
                    let other = (index + 1) % CLIENTS;
                    let named = if as_other { other } else { index };
                    let agent = world.clients[named].0.identity.agent_id();
                    let mut frame = ControlFrame::Register { agent }.encode();
                    if legacy {
                        frame.truncate(1 + 32);
                    }
                    let now = world.now;
                    let spoofed = world.clients[other].1;
                    let (agent, addr) = &mut world.clients[index];
                    let addr = if from_other { spoofed } else { *addr };
                    if let Some(datagram) = agent.seal(now, &frame) {
                        world.deliver(addr, &datagram);
                    }
                }
                Op::Relay { client, to, inner } => {
                    let target = &world.clients[usize::from(to) % CLIENTS].0;
                    let node = NodeId::of(&target.identity.agent_id());
                    let from = world.clients[usize::from(client) % CLIENTS].1;
                    world.deliver(from, &relay_envelope(node, &inner));
                }
                Op::RelayTo {
                    client,
                    node,
                    inner,
                } => {
                    let from = world.clients[usize::from(client) % CLIENTS].1;
                    world.deliver(from, &relay_envelope(NodeId(node), &inner));
                }
                Op::Advance { millis } => {
                    world.now += Duration::from_millis(u64::from(millis % 400_000));
                    let now = world.now;
                    world.server.handle_timeout(now);
                    assert!(
                        world.server.poll_timeout() > now,
                        "the sweep timer did not move"
                    );
                    world.drain();
                }
                Op::Closed { client, tcp_id } => {
                    let addr = world.clients[usize::from(client) % CLIENTS].1.socket_addr();
                    world
                        .server
                        .connection_closed(ClientAddr::Tcp(u64::from(tcp_id), addr));
                }
                Op::Load { threshold } => {
                    let threshold = match threshold {
                        0 => 0,
                        255 => u32::MAX,
                        other => u32::from(other),
                    };
                    world.server.set_handshake_load_threshold(threshold);
                }
            }
            world.check_bounds();
        }
    });
}
