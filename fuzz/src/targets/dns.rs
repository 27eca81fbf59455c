//! The name responder at `PREFIX::53`: arbitrary DNS messages, and arbitrary
//! packets read from the TUN (the responder looks at every one first). The
//! trusted peers advertised services, so DNS-SD names (`_mcp._tcp.alice…`,
//! browsing, instances) are answered too; every answer fits a datagram.

use std::sync::OnceLock;

use crate::{identity, network};
use agentnet::core::address::NodePrefix;
use agentnet::core::identity::AgentId;
use agentnet::core::services::Service;
use agentnet::core::trust::store::{TrustEntry, TrustState, TrustStore};
use agentnet::names::dns::{DnsResponder, NameTable, NamedPeerServices, ResolverPacket};

/// The most an answer may take: EDNS's 1232 bytes.
const MAX_ANSWER: usize = 1232;

/// The node the responder serves (queries from elsewhere are dropped).
fn local_prefix() -> NodePrefix {
    NodePrefix::of_agent(network(), &identity(1).agent_id())
}

fn responder() -> &'static DnsResponder {
    static RESPONDER: OnceLock<DnsResponder> = OnceLock::new();
    RESPONDER.get_or_init(|| {
        let mut store = TrustStore::default();
        for (seed, name, state) in [
            (2, "alice", TrustState::Trusted),
            (3, "bob", TrustState::Trusted),
            (4, "carol", TrustState::Requested),
        ] {
            let id: AgentId = identity(seed).agent_id();
            store.peers.push(TrustEntry {
                id,
                name: name.into(),
                endpoint: None,
                allow: Default::default(),
                state,
                added_unix: 0,
                expires_unix: None,
            });
        }
        let mut responder = DnsResponder::new(network(), local_prefix());
        responder.set_names(NameTable::from_trust(&store, network()));
        let service = |text: &str, path: Option<&str>| {
            Service::parse(text, path.map(Into::into), Some("notes".into())).ok()
        };
        let advertised = |name: &str, services: Vec<Option<Service>>| NamedPeerServices {
            name: name.into(),
            services: services.into_iter().flatten().collect(),
        };
        responder.set_services(vec![
            advertised(
                "alice",
                vec![service("mcp:8000", Some("/mcp")), service("a2a:9999", None)],
            ),
            advertised(
                "bob",
                (1..=32)
                    .map(|port| service(&format!("http:{port}"), Some("/x")))
                    .collect(),
            ),
            advertised("carol", vec![service("mcp:8000", None)]),
        ]);
        responder
    })
}

/// Runs the target on one input.
pub fn run(bytes: &[u8]) {
    let responder = responder();
    if let Some(answer) = responder.answer(bytes) {
        assert!(answer.len() <= MAX_ANSWER, "{} bytes", answer.len());
    }
    let _ = responder.handle_tun_packet(bytes);
    // The same bytes as the UDP payload of a query to the resolver, so the
    // DNS parser is reached through the packet path too.
    let address = responder.address().octets();
    let mut packet = vec![0x60, 0, 0, 0];
    let udp_len = (8 + bytes.len()).min(usize::from(u16::MAX)) as u16;
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[17, 64]);
    packet.extend_from_slice(&local_prefix().address(2).octets());
    packet.extend_from_slice(&address);
    packet.extend_from_slice(&5353u16.to_be_bytes());
    packet.extend_from_slice(&53u16.to_be_bytes());
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(bytes);
    if let ResolverPacket::Reply(reply) = responder.handle_tun_packet(&packet) {
        assert_eq!(reply[0] >> 4, 6, "replies are IPv6");
    }
}
