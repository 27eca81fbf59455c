//! The responder's answers, built and parsed with hickory: names and
//! addresses here, services in `dnssd`.

mod dnssd;

use std::net::Ipv4Addr;

use super::*;
use crate::core::identity::Identity;
use crate::core::trust::store::{TrustEntry, TrustState, TrustStore};
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
fn a_query_with_many_questions_is_a_format_error_echoing_none() {
    let (responder, _) = responder();
    let mut query = Message::new();
    for _ in 0..100 {
        query.add_query(Query::query(
            Name::from_ascii("bob.agent.internal.").expect("name"),
            RecordType::AAAA,
        ));
    }
    let answer = responder
        .answer(&query.to_vec().expect("encode"))
        .expect("an answer");
    assert!(answer.len() <= 512);
    let reply = Message::from_vec(&answer).expect("decode");
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert!(reply.queries().is_empty());
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
