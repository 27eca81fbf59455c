//! The name responder: `NAME.agent.internal` for every trusted peer,
//! answered at the network's fixed resolver address `PREFIX::53`.
//!
//! The resolver address is not an address of the host. It lies inside the
//! network's `/48`, so the kernel routes queries to it into the TUN like any
//! overlay packet; the event loop hands every packet it reads from the TUN
//! to [`DnsResponder::handle_tun_packet`] first, which answers UDP port 53
//! (and ICMPv6 echo, for `ping`) by writing the reply back into the TUN.
//! Every namespace and every container routed through the host thus uses
//! the same resolver address, answered by the daemon that owns its TUN
//! (Tailscale does the same with 100.100.100.100). No socket is bound, so
//! nothing on the underlay or from a peer can reach it: the core delivers
//! peers' packets only to our own node prefix, never to `::53`. Only this
//! node's own addresses (its node prefix: the host and attached namespaces)
//! are answered; a LAN neighbour routing a query through the host gets
//! nothing.
//!
//! Answers: `AAAA` for trusted names (their agent address), `A` for those
//! whose IPv4 address is routed to them here (not when IPv4 is off, nor
//! when the address collides with one another agent keeps: such a peer is
//! reachable over IPv6 only), an empty answer (NODATA) for other types of
//! a known name, `NXDOMAIN` for unknown names under `agent.internal`, and
//! `REFUSED` for every other name: the responder is authoritative for its
//! zone and never forwards. Untrusted names get nothing, in either family.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::core::address::{NetworkId, NodePrefix};
use crate::core::identity::AgentId;
use crate::core::trust::store::{TrustState, TrustStore};
use crate::core::wire::emit::{self, Route};
use crate::core::wire::packet::{ICMPV6_ECHO_REQUEST, IpPacket, peek_ipv6_destination};

/// The zone every peer name lives in.
pub const DOMAIN: &str = "agent.internal";
/// Interface ID of the resolver address inside the network's `/48`.
pub const RESOLVER_INTERFACE_ID: u16 = 0x53;
/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// TTL of answers. Short: a name stops resolving soon after its peer is no
/// longer trusted, even in caches (the address itself never changes).
pub const ANSWER_TTL: u32 = 10;
/// TTL of negative answers (the SOA minimum).
pub const NEGATIVE_TTL: u32 = 10;
/// Largest UDP answer we advertise with EDNS (the DNS-flag-day value).
const EDNS_PAYLOAD: u16 = 1232;
/// Hop limit of the packets the responder writes into the TUN.
const HOP_LIMIT: u8 = 64;

/// The resolver address of a network: its `/48` prefix with interface ID
/// `::53`. The same in every namespace; each daemon answers its own.
pub fn resolver_address(network: NetworkId) -> Ipv6Addr {
    let mut segments = network.prefix().segments();
    segments[7] = RESOLVER_INTERFACE_ID;
    Ipv6Addr::from(segments)
}

/// The fully qualified name of a peer: `NAME.agent.internal`.
pub fn peer_fqdn(name: &str) -> String {
    format!("{name}.{DOMAIN}")
}

/// The addresses of one trusted name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NameAddresses {
    /// Its agent address (always).
    address: Ipv6Addr,
    /// Its IPv4 address, when IPv4 to it is routed here.
    address4: Option<Ipv4Addr>,
}

/// Trusted names and their agent addresses (names are lowercase DNS labels,
/// as the trust store requires): the IPv6 agent address of each, and its
/// IPv4 address where IPv4 reaches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    names: BTreeMap<String, NameAddresses>,
}

impl NameTable {
    /// The names of the trusted peers of `store` in `network`, IPv6 only.
    /// Requested-only entries are not peers yet and get no name.
    pub fn from_trust(store: &TrustStore, network: NetworkId) -> Self {
        Self::from_trust_with_ipv4(store, network, |_| None)
    }

    /// Like [`NameTable::from_trust`], and each name also gets the IPv4
    /// address `routed_ipv4` gives its agent: the node's routed address
    /// (`None` when IPv4 is off or the address is another agent's).
    pub fn from_trust_with_ipv4(
        store: &TrustStore,
        network: NetworkId,
        routed_ipv4: impl Fn(&AgentId) -> Option<Ipv4Addr>,
    ) -> Self {
        let names = store
            .peers
            .iter()
            .filter(|entry| entry.state == TrustState::Trusted)
            .map(|entry| {
                let addresses = NameAddresses {
                    address: NodePrefix::of_agent(network, &entry.id).agent_address(),
                    address4: routed_ipv4(&entry.id),
                };
                (entry.name.to_ascii_lowercase(), addresses)
            })
            .collect();
        Self { names }
    }

    /// The agent address of a name (one label, any case).
    pub fn lookup(&self, label: &str) -> Option<Ipv6Addr> {
        self.get(label).map(|addresses| addresses.address)
    }

    /// The IPv4 address of a name (one label, any case), if IPv4 reaches it.
    pub fn lookup4(&self, label: &str) -> Option<Ipv4Addr> {
        self.get(label).and_then(|addresses| addresses.address4)
    }

    fn get(&self, label: &str) -> Option<&NameAddresses> {
        self.names.get(&label.to_ascii_lowercase())
    }

    /// `(agent address, fully qualified name)` pairs in name order.
    pub fn entries(&self) -> impl Iterator<Item = (Ipv6Addr, String)> + '_ {
        self.names
            .iter()
            .map(|(name, addresses)| (addresses.address, peer_fqdn(name)))
    }

    /// `(IPv4 address, fully qualified name)` pairs in name order, for the
    /// names IPv4 reaches.
    pub fn entries4(&self) -> impl Iterator<Item = (Ipv4Addr, String)> + '_ {
        self.names.iter().filter_map(|(name, addresses)| {
            addresses
                .address4
                .map(|address4| (address4, peer_fqdn(name)))
        })
    }

    /// Every `(address, fully qualified name)` pair in name order, the
    /// IPv6 address of a name before its IPv4 one: the lines of a hosts
    /// file.
    pub fn host_entries(&self) -> impl Iterator<Item = (IpAddr, String)> + '_ {
        self.names.iter().flat_map(|(name, addresses)| {
            let fqdn = peer_fqdn(name);
            std::iter::once((IpAddr::V6(addresses.address), fqdn.clone())).chain(
                addresses
                    .address4
                    .map(|address4| (IpAddr::V4(address4), fqdn)),
            )
        })
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there is no name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What [`DnsResponder::handle_tun_packet`] made of a TUN packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolverPacket {
    /// Not addressed to the resolver: it belongs to the node.
    NotForResolver,
    /// Addressed to the resolver, and this is the reply to write to the TUN.
    Reply(Vec<u8>),
    /// Addressed to the resolver, and dropped (not DNS, malformed, a response).
    Dropped,
}

/// The authoritative responder for `agent.internal`.
#[derive(Debug, Clone)]
pub struct DnsResponder {
    address: Ipv6Addr,
    /// The only sources answered: this node's own addresses.
    local_prefix: NodePrefix,
    zone: Name,
    soa: Record,
    names: NameTable,
}

impl DnsResponder {
    /// A responder for `network` with no names yet, answering the node
    /// whose prefix is `local_prefix` (its host and attached namespaces).
    pub fn new(network: NetworkId, local_prefix: NodePrefix) -> Self {
        let zone = zone_name();
        let soa = Record::from_rdata(
            zone.clone(),
            NEGATIVE_TTL,
            RData::SOA(SOA::new(
                zone.clone(),
                Name::from_ascii("hostmaster.agent.internal.").unwrap_or_else(|_| zone.clone()),
                1,
                3600,
                600,
                86_400,
                NEGATIVE_TTL,
            )),
        );
        Self {
            address: resolver_address(network),
            local_prefix,
            zone,
            soa,
            names: NameTable::default(),
        }
    }

    /// The resolver address it answers on.
    pub fn address(&self) -> Ipv6Addr {
        self.address
    }

    /// The names it answers.
    pub fn names(&self) -> &NameTable {
        &self.names
    }

    /// Replaces the names it answers.
    pub fn set_names(&mut self, names: NameTable) {
        self.names = names;
    }

    /// Looks at one packet read from the TUN: a UDP query to the resolver
    /// address gets a DNS reply, an echo request an echo reply; anything
    /// else for the resolver is dropped, and everything else is not ours.
    pub fn handle_tun_packet(&self, packet: &[u8]) -> ResolverPacket {
        // Cheap test first: the destination address.
        if peek_ipv6_destination(packet) != Some(self.address) {
            return ResolverPacket::NotForResolver;
        }
        let Some(packet) = IpPacket::new_checked(packet) else {
            return ResolverPacket::Dropped;
        };
        let source = packet.source_ip();
        if NodePrefix::of_octets(&packet.source()) != self.local_prefix {
            // Not from this node: a neighbour routing through the host.
            return ResolverPacket::Dropped;
        }
        let route = Route {
            source: IpAddr::V6(self.address),
            destination: source,
            hop_limit: HOP_LIMIT,
        };
        let reply = if let Some(udp) = packet.udp() {
            if udp.destination_port() != DNS_PORT {
                return ResolverPacket::Dropped;
            }
            let Some(answer) = self.answer(udp.payload()) else {
                return ResolverPacket::Dropped;
            };
            emit::udp_packet(route, DNS_PORT, udp.source_port(), &answer)
        } else if let Some(icmp) = packet.icmp()
            && icmp.message_type() == ICMPV6_ECHO_REQUEST
            && icmp.code() == 0
        {
            emit::icmpv6_echo_reply(route, icmp.identifier(), icmp.sequence(), icmp.body())
        } else {
            return ResolverPacket::Dropped;
        };
        match reply {
            Some(out) => ResolverPacket::Reply(out),
            None => {
                tracing::debug!(
                    to = %source,
                    "cannot build a resolver reply: too long"
                );
                ResolverPacket::Dropped
            }
        }
    }

    /// Answers one DNS message. `None` for what deserves no answer: bytes
    /// that are not a DNS message, and responses (never answer those: two
    /// responders could bounce them forever).
    pub fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let query = Message::from_vec(query).ok()?;
        if query.message_type() != MessageType::Query {
            return None;
        }
        self.respond(&query).to_vec().ok()
    }

    fn respond(&self, query: &Message) -> Message {
        let mut response = Message::new();
        response
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(false)
            .add_queries(query.queries().iter().cloned());
        if query.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        if query.op_code() != OpCode::Query {
            response.set_response_code(ResponseCode::NotImp);
            return response;
        }
        let [question] = query.queries() else {
            response.set_response_code(ResponseCode::FormErr);
            return response;
        };
        let name = question.name();
        if question.query_class() != DNSClass::IN || !self.zone.zone_of(name) {
            // Not ours, and we never forward.
            response.set_response_code(ResponseCode::Refused);
            return response;
        }
        response.set_authoritative(true);
        self.answer_in_zone(question, &mut response);
        response
    }

    fn answer_in_zone(&self, question: &Query, response: &mut Message) {
        let name = question.name();
        let depth = name.num_labels().saturating_sub(self.zone.num_labels());
        let addresses = match depth {
            0 => {
                // The apex exists (it has an SOA) but holds no address.
                if question.query_type() == RecordType::SOA {
                    response.add_answer(self.soa.clone());
                } else {
                    response.add_name_server(self.soa.clone());
                }
                return;
            }
            1 => name
                .iter()
                .next()
                .and_then(|label| std::str::from_utf8(label).ok())
                .and_then(|label| self.names.get(label)),
            _ => None,
        };
        let Some(addresses) = addresses else {
            response.set_response_code(ResponseCode::NXDomain);
            response.add_name_server(self.soa.clone());
            return;
        };
        let kind = question.query_type();
        let mut answers = Vec::new();
        if matches!(kind, RecordType::AAAA | RecordType::ANY) {
            answers.push(RData::AAAA(AAAA(addresses.address)));
        }
        if matches!(kind, RecordType::A | RecordType::ANY)
            && let Some(address4) = addresses.address4
        {
            answers.push(RData::A(A(address4)));
        }
        if answers.is_empty() {
            // The name exists, with no record of this type (NODATA): an A
            // query too when IPv4 does not reach the peer.
            response.add_name_server(self.soa.clone());
        }
        for data in answers {
            response.add_answer(Record::from_rdata(name.clone(), ANSWER_TTL, data));
        }
    }
}

fn zone_name() -> Name {
    // A constant that parses; the fallback (the root) is never taken.
    Name::from_str("agent.internal.").unwrap_or_else(|_| Name::root())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::trust::store::TrustEntry;
    use etherparse::{Icmpv6Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

    fn network() -> NetworkId {
        NetworkId::from_name("agentnet")
    }

    fn entry(seed: u8, name: &str, state: TrustState) -> TrustEntry {
        TrustEntry {
            id: Identity::from_secret_bytes(&[seed; 32])
                .expect("key")
                .agent_id(),
            name: name.into(),
            endpoint: None,
            allow: Default::default(),
            state,
            added_unix: 0,
            expires_unix: None,
        }
    }

    /// An IPv4 address inside the overlay, for the names that have one.
    const BOB4: Ipv4Addr = Ipv4Addr::new(100, 70, 1, 2);

    /// Bob trusted with IPv4 routed to him, dave trusted without (his
    /// address collides with another agent's, or IPv4 is off), carol only
    /// requested.
    fn responder() -> (DnsResponder, Ipv6Addr) {
        let store = TrustStore {
            peers: vec![
                entry(1, "bob", TrustState::Trusted),
                entry(2, "carol", TrustState::Requested),
                entry(3, "dave", TrustState::Trusted),
            ],
        };
        let bob_id = store.peers[0].id;
        let bob = NodePrefix::of_agent(network(), &bob_id).agent_address();
        let mut responder = DnsResponder::new(network(), local_prefix());
        responder.set_names(NameTable::from_trust_with_ipv4(&store, network(), |id| {
            (*id == bob_id).then_some(BOB4)
        }));
        (responder, bob)
    }

    /// The node the responder serves.
    fn local_prefix() -> NodePrefix {
        let own = Identity::from_secret_bytes(&[9; 32])
            .expect("key")
            .agent_id();
        NodePrefix::of_agent(network(), &own)
    }

    /// An address of the node (an attached namespace's).
    fn local_client() -> Ipv6Addr {
        local_prefix().address(0x1234)
    }

    fn query_packet(client: Ipv6Addr, responder: &DnsResponder) -> Vec<u8> {
        let mut query = Message::new();
        query.set_id(7).add_query(Query::query(
            Name::from_ascii("bob.agent.internal.").expect("name"),
            RecordType::AAAA,
        ));
        let payload = query.to_vec().expect("encode");
        let builder =
            PacketBuilder::ipv6(client.octets(), responder.address().octets(), 64).udp(40000, 53);
        let mut packet = Vec::new();
        builder.write(&mut packet, &payload).expect("packet");
        packet
    }

    fn ask(responder: &DnsResponder, name: &str, kind: RecordType) -> Message {
        let mut query = Message::new();
        query
            .set_id(0x1234)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
        let bytes = query.to_vec().expect("encode");
        let answer = responder.answer(&bytes).expect("an answer");
        Message::from_vec(&answer).expect("decode")
    }

    fn addresses(message: &Message) -> Vec<Ipv6Addr> {
        message
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::AAAA(aaaa) => Some(aaaa.0),
                _ => None,
            })
            .collect()
    }

    fn addresses4(message: &Message) -> Vec<Ipv4Addr> {
        message
            .answers()
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn resolver_address_is_prefix_53() {
        let address = resolver_address(network());
        assert!(network().contains(&address));
        assert_eq!(address.segments()[3..7], [0, 0, 0, 0]);
        assert_eq!(address.segments()[7], 0x53);
    }

    #[test]
    fn trusted_name_answers_aaaa_with_its_agent_address() {
        let (responder, bob) = responder();
        for name in ["bob.agent.internal.", "BOB.Agent.Internal."] {
            let reply = ask(&responder, name, RecordType::AAAA);
            assert_eq!(reply.id(), 0x1234);
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            assert!(reply.authoritative());
            assert!(!reply.recursion_available());
            assert_eq!(addresses(&reply), vec![bob], "{name}");
            assert_eq!(reply.answers()[0].ttl(), ANSWER_TTL);
        }
    }

    #[test]
    fn other_types_of_a_trusted_name_are_empty_noerror() {
        let (responder, _) = responder();
        for kind in [RecordType::MX, RecordType::TXT] {
            let reply = ask(&responder, "bob.agent.internal.", kind);
            assert_eq!(reply.response_code(), ResponseCode::NoError, "{kind}");
            assert!(reply.answers().is_empty(), "{kind}");
            assert_eq!(reply.name_servers().len(), 1, "SOA for negative caching");
        }
    }

    #[test]
    fn trusted_name_routed_over_ipv4_answers_a_with_its_ipv4_address() {
        let (responder, bob) = responder();
        for name in ["bob.agent.internal.", "BOB.Agent.Internal."] {
            let reply = ask(&responder, name, RecordType::A);
            assert_eq!(reply.response_code(), ResponseCode::NoError);
            assert!(reply.authoritative());
            assert_eq!(addresses4(&reply), vec![BOB4], "{name}");
            assert!(addresses(&reply).is_empty(), "A query answered with AAAA");
            assert_eq!(reply.answers()[0].ttl(), ANSWER_TTL);
        }
        let any = ask(&responder, "bob.agent.internal.", RecordType::ANY);
        assert_eq!(addresses(&any), vec![bob]);
        assert_eq!(addresses4(&any), vec![BOB4]);
    }

    #[test]
    fn trusted_name_without_ipv4_route_answers_aaaa_only() {
        let (responder, _) = responder();
        let dave = responder.names().lookup("dave").expect("dave is trusted");
        let aaaa = ask(&responder, "dave.agent.internal.", RecordType::AAAA);
        assert_eq!(addresses(&aaaa), vec![dave]);
        let a = ask(&responder, "dave.agent.internal.", RecordType::A);
        assert_eq!(a.response_code(), ResponseCode::NoError, "the name exists");
        assert!(a.answers().is_empty(), "{:?}", a.answers());
        assert_eq!(a.name_servers().len(), 1, "SOA for negative caching");
        let any = ask(&responder, "dave.agent.internal.", RecordType::ANY);
        assert_eq!(addresses(&any), vec![dave]);
        assert!(addresses4(&any).is_empty());
    }

    #[test]
    fn untrusted_names_get_nothing_in_either_family() {
        let (responder, _) = responder();
        for name in ["carol.agent.internal.", "nobody.agent.internal."] {
            for kind in [RecordType::A, RecordType::AAAA, RecordType::ANY] {
                let reply = ask(&responder, name, kind);
                assert_eq!(
                    reply.response_code(),
                    ResponseCode::NXDomain,
                    "{name} {kind}"
                );
                assert!(reply.answers().is_empty(), "{name} {kind}");
            }
        }
        assert_eq!(responder.names().lookup4("carol"), None);
    }

    #[test]
    fn table_lists_ipv4_only_for_names_it_reaches() {
        let (responder, bob) = responder();
        let names = responder.names();
        assert_eq!(names.len(), 2, "requested carol has no name");
        assert_eq!(names.lookup4("BOB"), Some(BOB4));
        assert_eq!(names.lookup4("dave"), None);
        assert_eq!(
            names.entries4().collect::<Vec<_>>(),
            vec![(BOB4, "bob.agent.internal".to_string())]
        );
        let dave = names.lookup("dave").expect("dave");
        assert_eq!(
            names.host_entries().collect::<Vec<_>>(),
            vec![
                (IpAddr::V6(bob), "bob.agent.internal".to_string()),
                (IpAddr::V4(BOB4), "bob.agent.internal".to_string()),
                (IpAddr::V6(dave), "dave.agent.internal".to_string()),
            ]
        );
        // Without IPv4 routes (IPv4 off), IPv6 only.
        let store = TrustStore {
            peers: vec![entry(1, "bob", TrustState::Trusted)],
        };
        let plain = NameTable::from_trust(&store, network());
        assert_eq!(plain.lookup4("bob"), None);
        assert_eq!(plain.host_entries().count(), 1);
    }

    #[test]
    fn unknown_requested_and_deeper_names_are_nxdomain() {
        let (responder, _) = responder();
        for name in [
            "nobody.agent.internal.",
            "carol.agent.internal.",
            "x.bob.agent.internal.",
        ] {
            let reply = ask(&responder, name, RecordType::AAAA);
            assert_eq!(reply.response_code(), ResponseCode::NXDomain, "{name}");
            assert!(reply.answers().is_empty());
        }
    }

    #[test]
    fn names_outside_the_zone_are_refused_never_forwarded() {
        let (responder, _) = responder();
        for name in ["example.com.", "internal.", "agent.internal.example."] {
            let reply = ask(&responder, name, RecordType::AAAA);
            assert_eq!(reply.response_code(), ResponseCode::Refused, "{name}");
            assert!(reply.answers().is_empty());
        }
    }

    #[test]
    fn responses_and_garbage_get_no_answer() {
        let (responder, _) = responder();
        assert_eq!(responder.answer(b"\x00\x01garbage"), None);
        assert_eq!(responder.answer(&[]), None);
        let mut response = Message::new();
        response.set_message_type(MessageType::Response);
        assert_eq!(responder.answer(&response.to_vec().expect("encode")), None);
    }

    #[test]
    fn query_from_outside_the_node_prefix_gets_no_answer() {
        let (responder, _) = responder();
        let mut elsewhere = local_client().segments();
        elsewhere[6] ^= 1;
        for client in [
            "fd00::1234".parse().expect("address"),
            "2001:db8::7".parse().expect("address"),
            Ipv6Addr::from(elsewhere),
        ] {
            let packet = query_packet(client, &responder);
            assert_eq!(
                responder.handle_tun_packet(&packet),
                ResolverPacket::Dropped,
                "{client} got an answer"
            );
        }
        let packet = query_packet(local_client(), &responder);
        assert!(matches!(
            responder.handle_tun_packet(&packet),
            ResolverPacket::Reply(_)
        ));
    }

    #[test]
    fn udp_query_packet_to_the_resolver_gets_a_udp_reply_packet() {
        let (responder, bob) = responder();
        let client = local_client();
        let mut query = Message::new();
        query.set_id(7).add_query(Query::query(
            Name::from_ascii("bob.agent.internal.").expect("name"),
            RecordType::AAAA,
        ));
        let payload = query.to_vec().expect("encode");
        let builder =
            PacketBuilder::ipv6(client.octets(), responder.address().octets(), 64).udp(40000, 53);
        let mut packet = Vec::new();
        builder.write(&mut packet, &payload).expect("packet");

        let ResolverPacket::Reply(reply) = responder.handle_tun_packet(&packet) else {
            panic!("no reply");
        };
        let sliced = SlicedPacket::from_ip(&reply).expect("reply parses");
        let Some(NetSlice::Ipv6(ip)) = &sliced.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.header().source_addr(), responder.address());
        assert_eq!(ip.header().destination_addr(), client);
        let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
            panic!("not UDP");
        };
        assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
        let message = Message::from_vec(udp.payload()).expect("DNS");
        assert_eq!(addresses(&message), vec![bob]);

        // Other destinations are the node's business.
        let other = PacketBuilder::ipv6(client.octets(), bob.octets(), 64).udp(40000, 53);
        let mut packet = Vec::new();
        other.write(&mut packet, &payload).expect("packet");
        assert_eq!(
            responder.handle_tun_packet(&packet),
            ResolverPacket::NotForResolver
        );
    }

    #[test]
    fn echo_request_to_the_resolver_gets_an_echo_reply() {
        let (responder, _) = responder();
        let client = local_client();
        let builder = PacketBuilder::ipv6(client.octets(), responder.address().octets(), 64)
            .icmpv6_echo_request(9, 3);
        let mut packet = Vec::new();
        builder.write(&mut packet, b"ping").expect("packet");
        let ResolverPacket::Reply(reply) = responder.handle_tun_packet(&packet) else {
            panic!("no reply");
        };
        let sliced = SlicedPacket::from_ip(&reply).expect("reply parses");
        let Some(TransportSlice::Icmpv6(icmp)) = &sliced.transport else {
            panic!("not ICMPv6");
        };
        assert!(matches!(
            icmp.icmp_type(),
            Icmpv6Type::EchoReply(echo) if echo.id == 9 && echo.seq == 3
        ));
        assert_eq!(icmp.payload(), b"ping");
    }
}
