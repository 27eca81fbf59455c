//! DNS-SD and SRV answers for the services trusted peers advertised, the
//! queries built and the answers parsed with hickory.

use std::collections::BTreeSet;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::rdata::PTR;
use hickory_proto::rr::{Name, RData, RecordType};
use proptest::prelude::*;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::{BOB4, entry, local_prefix, network, responder};
use crate::core::services::{MAX_SERVICES, Service};
use crate::core::trust::store::{TrustState, TrustStore};
use crate::names::dns::udp_size::{EDNS_PAYLOAD, PLAIN_UDP_PAYLOAD};
use crate::names::dns::{
    ANSWER_TTL, DnsResponder, MAX_ANSWERS, NameTable, NamedPeerServices, ResolverPacket,
};

fn service(kind_port: &str, path: Option<&str>, name: Option<&str>) -> Service {
    Service::parse(kind_port, path.map(Into::into), name.map(Into::into)).expect(kind_port)
}

fn advertised(name: &str, services: Vec<Service>) -> NamedPeerServices {
    NamedPeerServices {
        name: name.into(),
        services,
    }
}

/// Bob (trusted, IPv4 routed) offers two MCP servers and an A2A agent,
/// dave (trusted, IPv6 only) an HTTP server; carol (only requested) and
/// zed (not in the trust store) advertised too, and must not show.
fn services_responder() -> DnsResponder {
    let (mut responder, _) = responder();
    responder.set_services(vec![
        advertised(
            "bob",
            vec![
                service("mcp:8000", Some("/mcp"), Some("notes")),
                service("a2a:9999", Some("/.well-known/agent.json"), None),
                service("mcp:8001", None, None),
                // A repeated KIND:PORT counts once.
                service("mcp:8000", Some("/other"), None),
            ],
        ),
        advertised("dave", vec![service("http:80", None, None)]),
        advertised("carol", vec![service("mcp:8000", None, None)]),
        advertised("zed", vec![service("mcp:1", None, None)]),
    ]);
    responder
}

/// Asks `name` `kind`, with EDNS offering `edns` bytes if given; returns
/// the answer and its size on the wire.
fn ask_sized(
    responder: &DnsResponder,
    name: &str,
    kind: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let mut query = Message::new();
    query
        .set_id(0x5d5d)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    if let Some(size) = edns {
        let mut extension = Edns::new();
        extension.set_max_payload(size);
        query.set_edns(extension);
    }
    let bytes = query.to_vec().expect("encode");
    let answer = responder.answer(&bytes).expect("an answer");
    let size = answer.len();
    (Message::from_vec(&answer).expect("decode"), size)
}

fn ask(responder: &DnsResponder, name: &str, kind: RecordType) -> Message {
    ask_sized(responder, name, kind, Some(EDNS_PAYLOAD)).0
}

fn fqdn(text: &str) -> Name {
    Name::from_ascii(text).expect("name")
}

/// `(port, target)` of each SRV answer.
fn srvs(records: &[hickory_proto::rr::Record]) -> Vec<(u16, String)> {
    records
        .iter()
        .filter_map(|record| match record.data() {
            RData::SRV(srv) => {
                assert_eq!((srv.priority(), srv.weight()), (0, 0));
                Some((srv.port(), srv.target().to_ascii()))
            }
            _ => None,
        })
        .collect()
}

/// The strings of each TXT answer.
fn txts(records: &[hickory_proto::rr::Record]) -> Vec<Vec<String>> {
    records
        .iter()
        .filter_map(|record| match record.data() {
            RData::TXT(txt) => Some(
                txt.iter()
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// The targets of each PTR answer.
fn ptrs(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            RData::PTR(PTR(target)) => Some(target.to_ascii()),
            _ => None,
        })
        .collect()
}

fn assert_nxdomain(responder: &DnsResponder, name: &str, kind: RecordType) {
    let reply = ask(responder, name, kind);
    assert_eq!(
        reply.response_code(),
        ResponseCode::NXDomain,
        "{name} {kind}"
    );
    assert!(reply.answers().is_empty(), "{name} {kind}");
    assert_eq!(
        reply.name_servers().len(),
        1,
        "{name}: SOA for negative caching"
    );
}

fn assert_nodata(responder: &DnsResponder, name: &str, kind: RecordType) {
    let reply = ask(responder, name, kind);
    assert_eq!(
        reply.response_code(),
        ResponseCode::NoError,
        "{name} {kind}"
    );
    assert!(
        reply.answers().is_empty(),
        "{name} {kind}: {:?}",
        reply.answers()
    );
    assert_eq!(
        reply.name_servers().len(),
        1,
        "{name}: SOA for negative caching"
    );
    assert!(matches!(reply.name_servers()[0].data(), RData::SOA(_)));
}

#[test]
fn srv_of_a_trusted_peers_kind_names_each_port_and_the_peer_with_its_addresses() {
    let responder = services_responder();
    let bob = responder.names().lookup("bob").expect("bob");
    for name in [
        "_mcp._tcp.bob.agent.internal.",
        "_MCP._TCP.Bob.Agent.Internal.",
    ] {
        let reply = ask(&responder, name, RecordType::SRV);
        assert_eq!(reply.response_code(), ResponseCode::NoError, "{name}");
        assert!(reply.authoritative());
        assert!(!reply.truncated());
        assert_eq!(
            srvs(reply.answers()),
            vec![
                (8000, "bob.agent.internal.".to_string()),
                (8001, "bob.agent.internal.".to_string()),
            ],
            "{name}"
        );
        assert!(reply.answers().iter().all(|r| r.ttl() == ANSWER_TTL));
        // The target's addresses come along: AAAA, and A as IPv4 reaches bob.
        let extra: Vec<&RData> = reply.additionals().iter().map(|r| r.data()).collect();
        assert!(extra.contains(&&RData::AAAA(bob.into())), "{extra:?}");
        assert!(extra.contains(&&RData::A(BOB4.into())), "{extra:?}");
    }
    // Dave: IPv6 only, so AAAA and no A in the additional section.
    let reply = ask(
        &responder,
        "_http._tcp.dave.agent.internal.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(reply.answers()),
        vec![(80, "dave.agent.internal.".into())]
    );
    let kinds: Vec<RecordType> = reply
        .additionals()
        .iter()
        .map(|r| r.record_type())
        .collect();
    assert_eq!(kinds, vec![RecordType::AAAA]);
}

#[test]
fn txt_carries_the_path_and_name_the_peer_gave() {
    let responder = services_responder();
    let reply = ask(&responder, "_mcp._tcp.bob.agent.internal.", RecordType::TXT);
    assert_eq!(
        txts(reply.answers()),
        vec![
            vec!["txtvers=1", "port=8000", "path=/mcp", "name=notes"],
            vec!["txtvers=1", "port=8001"],
        ]
    );
    let reply = ask(
        &responder,
        "bob-8000._mcp._tcp.agent.internal.",
        RecordType::TXT,
    );
    assert_eq!(
        txts(reply.answers()),
        vec![vec!["txtvers=1", "path=/mcp", "name=notes"]]
    );
    let reply = ask(&responder, "_a2a._tcp.bob.agent.internal.", RecordType::ANY);
    assert_eq!(
        srvs(reply.answers()),
        vec![(9999, "bob.agent.internal.".into())]
    );
    assert_eq!(
        txts(reply.answers()),
        vec![vec![
            "txtvers=1",
            "port=9999",
            "path=/.well-known/agent.json"
        ]]
    );
}

#[test]
fn browsing_lists_every_kind_then_its_instances_each_with_srv_and_txt() {
    let responder = services_responder();
    let types = ask(
        &responder,
        "_services._dns-sd._udp.agent.internal.",
        RecordType::PTR,
    );
    assert_eq!(
        ptrs(&types),
        vec![
            "_a2a._tcp.agent.internal.",
            "_http._tcp.agent.internal.",
            "_mcp._tcp.agent.internal.",
        ],
        "carol's and zed's are not listed: only bob's and dave's kinds"
    );
    assert!(
        types.additionals().is_empty(),
        "service types need nothing more"
    );

    let instances = ask(&responder, "_mcp._tcp.agent.internal.", RecordType::PTR);
    assert_eq!(
        ptrs(&instances),
        vec![
            "bob-8000._mcp._tcp.agent.internal.",
            "bob-8001._mcp._tcp.agent.internal.",
        ]
    );
    // Each instance's SRV and TXT, and bob's addresses (RFC 6763 §12.1).
    let extra = instances.additionals();
    assert_eq!(
        srvs(extra),
        vec![
            (8000, "bob.agent.internal.".into()),
            (8001, "bob.agent.internal.".into())
        ]
    );
    assert_eq!(txts(extra).len(), 2);
    assert!(extra.iter().any(|r| r.record_type() == RecordType::AAAA));

    let srv = ask(
        &responder,
        "bob-8001._mcp._tcp.agent.internal.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(srv.answers()),
        vec![(8001, "bob.agent.internal.".into())]
    );
    let http = ask(&responder, "_http._tcp.agent.internal.", RecordType::PTR);
    assert_eq!(ptrs(&http), vec!["dave-80._http._tcp.agent.internal."]);
}

#[test]
fn one_peers_services_browse_under_its_own_name() {
    let responder = services_responder();
    let types = ask(
        &responder,
        "_services._dns-sd._udp.bob.agent.internal.",
        RecordType::PTR,
    );
    assert_eq!(
        ptrs(&types),
        vec![
            "_a2a._tcp.bob.agent.internal.",
            "_mcp._tcp.bob.agent.internal."
        ]
    );
    let instances = ask(&responder, "_mcp._tcp.bob.agent.internal.", RecordType::PTR);
    assert_eq!(
        ptrs(&instances),
        vec![
            "bob-8000._mcp._tcp.bob.agent.internal.",
            "bob-8001._mcp._tcp.bob.agent.internal.",
        ]
    );
    let srv = ask(
        &responder,
        "bob-8000._mcp._tcp.bob.agent.internal.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(srv.answers()),
        vec![(8000, "bob.agent.internal.".into())]
    );
    let types = ask(
        &responder,
        "_services._dns-sd._udp.dave.agent.internal.",
        RecordType::PTR,
    );
    assert_eq!(ptrs(&types), vec!["_http._tcp.dave.agent.internal."]);
}

#[test]
fn services_of_untrusted_unknown_or_silent_peers_and_unknown_names_are_nxdomain() {
    let responder = services_responder();
    for name in [
        // Carol is only requested; zed and nobody are not in the store.
        "_mcp._tcp.carol.agent.internal.",
        "_services._dns-sd._udp.carol.agent.internal.",
        "carol-8000._mcp._tcp.agent.internal.",
        "_mcp._tcp.zed.agent.internal.",
        "zed-1._mcp._tcp.agent.internal.",
        "_mcp._tcp.nobody.agent.internal.",
        // Kinds and ports bob does not offer.
        "_grpc._tcp.bob.agent.internal.",
        "_grpc._tcp.agent.internal.",
        "bob-8002._mcp._tcp.agent.internal.",
        "_mcp._udp.bob.agent.internal.",
        // Dave offers nothing of kind mcp; other underscore names.
        "_mcp._tcp.dave.agent.internal.",
        "_x._y.agent.internal.",
        "_services.agent.internal.",
        "a.b.c.d.e.f.agent.internal.",
        "x.bob-8000._mcp._tcp.agent.internal.",
    ] {
        for kind in [RecordType::SRV, RecordType::TXT, RecordType::PTR] {
            assert_nxdomain(&responder, name, kind);
        }
    }
    // A trusted peer that advertised nothing.
    let (silent, _) = super::responder();
    assert_nxdomain(&silent, "_mcp._tcp.bob.agent.internal.", RecordType::SRV);
    assert_nxdomain(
        &silent,
        "_services._dns-sd._udp.agent.internal.",
        RecordType::PTR,
    );
}

#[test]
fn existing_names_asked_for_other_types_and_empty_non_terminals_are_nodata() {
    let responder = services_responder();
    for (name, kind) in [
        ("_mcp._tcp.bob.agent.internal.", RecordType::AAAA),
        ("_mcp._tcp.bob.agent.internal.", RecordType::A),
        ("bob-8000._mcp._tcp.agent.internal.", RecordType::PTR),
        ("bob-8000._mcp._tcp.bob.agent.internal.", RecordType::AAAA),
        ("_mcp._tcp.agent.internal.", RecordType::SRV),
        ("_services._dns-sd._udp.agent.internal.", RecordType::TXT),
        ("bob.agent.internal.", RecordType::SRV),
        // Empty non-terminals exist (RFC 8020), with nothing of their own.
        ("_tcp.agent.internal.", RecordType::PTR),
        ("_tcp.bob.agent.internal.", RecordType::SRV),
        ("_udp.agent.internal.", RecordType::PTR),
        ("_dns-sd._udp.agent.internal.", RecordType::PTR),
        ("_dns-sd._udp.bob.agent.internal.", RecordType::PTR),
    ] {
        assert_nodata(&responder, name, kind);
    }
}

#[test]
fn services_follow_the_names_and_the_latest_set() {
    let mut responder = services_responder();
    let names = responder.names().clone();
    // Bob is no longer trusted: his services go with his name.
    let store = TrustStore {
        peers: vec![entry(3, "dave", TrustState::Trusted)],
    };
    responder.set_names(NameTable::from_trust(&store, network()));
    assert_nxdomain(&responder, "_mcp._tcp.bob.agent.internal.", RecordType::SRV);
    let types = ask(
        &responder,
        "_services._dns-sd._udp.agent.internal.",
        RecordType::PTR,
    );
    assert_eq!(ptrs(&types), vec!["_http._tcp.agent.internal."]);
    // Trusted again: what he advertised is still here.
    responder.set_names(names);
    let srv = ask(&responder, "_mcp._tcp.bob.agent.internal.", RecordType::SRV);
    assert_eq!(srvs(srv.answers()).len(), 2);
    // A new set replaces the old one.
    responder.set_services(vec![advertised(
        "bob",
        vec![service("grpc:50051", None, None)],
    )]);
    assert_nxdomain(&responder, "_mcp._tcp.bob.agent.internal.", RecordType::SRV);
    assert_nxdomain(
        &responder,
        "_http._tcp.dave.agent.internal.",
        RecordType::SRV,
    );
    let srv = ask(
        &responder,
        "_grpc._tcp.bob.agent.internal.",
        RecordType::SRV,
    );
    assert_eq!(
        srvs(srv.answers()),
        vec![(50051, "bob.agent.internal.".into())]
    );
}

/// Trusted peers `peer0`.. each advertising `per_peer` HTTP services.
fn crowded_responder(peers: u8, per_peer: u16) -> DnsResponder {
    let names: Vec<String> = (0..peers).map(|index| format!("peer{index}")).collect();
    let store = TrustStore {
        peers: names
            .iter()
            .enumerate()
            .map(|(index, name)| entry(100 + index as u8, name, TrustState::Trusted))
            .collect(),
    };
    let mut responder = DnsResponder::new(network(), local_prefix());
    responder.set_names(NameTable::from_trust(&store, network()));
    responder.set_services(
        names
            .iter()
            .map(|name| {
                let services = (1..=per_peer)
                    .map(|port| service(&format!("http:{}", 8000 + port), Some("/api/v1"), None))
                    .collect();
                advertised(name, services)
            })
            .collect(),
    );
    responder
}

#[test]
fn answers_too_large_for_the_datagram_are_cut_to_fit_with_tc() {
    let responder = crowded_responder(40, MAX_SERVICES as u16);
    let mut kept = Vec::new();
    for edns in [None, Some(512), Some(1232), Some(4096)] {
        let (reply, size) = ask_sized(
            &responder,
            "_http._tcp.agent.internal.",
            RecordType::PTR,
            edns,
        );
        let limit = edns.map_or(PLAIN_UDP_PAYLOAD, |offer| {
            usize::from(offer.min(EDNS_PAYLOAD))
        });
        assert!(size <= limit, "{edns:?}: {size} bytes");
        assert!(reply.truncated(), "{edns:?}");
        assert!(!reply.answers().is_empty(), "{edns:?}: what fits is kept");
        assert!(reply.additionals().is_empty(), "{edns:?}: extras go first");
        assert_eq!(reply.response_code(), ResponseCode::NoError);
        kept.push(reply.answers().len());
    }
    assert!(kept[0] < kept[2], "EDNS fits more: {kept:?}");
    assert_eq!(kept[0], kept[1]);
    assert_eq!(kept[2], kept[3], "never more than 1232 bytes");

    // One peer's 20 SRVs fit with EDNS, not in 512 bytes (SRV targets
    // are never compressed, RFC 2782: 40 bytes each here).
    let responder = crowded_responder(1, 20);
    let name = "_http._tcp.peer0.agent.internal.";
    let (reply, size) = ask_sized(&responder, name, RecordType::SRV, Some(1232));
    assert!(!reply.truncated(), "{size} bytes");
    assert_eq!(srvs(reply.answers()).len(), 20);
    let (reply, size) = ask_sized(&responder, name, RecordType::SRV, None);
    assert!(reply.truncated() && size <= PLAIN_UDP_PAYLOAD);
    assert!(srvs(reply.answers()).len() < 20);
}

#[test]
fn a_query_collects_a_bounded_number_of_answers_however_many_services_exist() {
    // 40 peers × 32 services: 1,280 instance PTRs under one name.
    let responder = crowded_responder(40, MAX_SERVICES as u16);
    let mut query = Message::new();
    query.add_query(Query::query(
        fqdn("_http._tcp.agent.internal."),
        RecordType::PTR,
    ));
    let response = responder.respond(&query);
    assert!(response.truncated());
    assert_eq!(response.answers().len(), MAX_ANSWERS);
    // Extras only for the answers kept: each instance's SRV and TXT, and
    // the addresses of the peers they name.
    assert!(response.additionals().len() <= 4 * MAX_ANSWERS);
}

#[test]
fn additional_records_that_do_not_fit_are_left_out_without_tc() {
    // 8 instances fit 512 bytes as PTRs, not with their SRV, TXT and AAAA.
    let responder = crowded_responder(1, 8);
    let (full, size) = ask_sized(
        &responder,
        "_http._tcp.agent.internal.",
        RecordType::PTR,
        Some(1232),
    );
    assert!(
        !full.truncated() && size > PLAIN_UDP_PAYLOAD,
        "{size} bytes"
    );
    assert!(!full.additionals().is_empty());
    let (plain, size) = ask_sized(
        &responder,
        "_http._tcp.agent.internal.",
        RecordType::PTR,
        None,
    );
    assert!(size <= PLAIN_UDP_PAYLOAD);
    assert!(!plain.truncated(), "every answer is there");
    assert_eq!(plain.answers().len(), 8);
    assert!(plain.additionals().is_empty());
}

#[test]
fn an_srv_query_packet_from_the_node_gets_a_reply_packet() {
    let responder = services_responder();
    let mut query = Message::new();
    query.set_id(9).add_query(Query::query(
        fqdn("_a2a._tcp.bob.agent.internal."),
        RecordType::SRV,
    ));
    let payload = query.to_vec().expect("encode");
    let client = super::local_client();
    let mut packet = Vec::new();
    PacketBuilder::ipv6(client.octets(), responder.address().octets(), 64)
        .udp(40001, 53)
        .write(&mut packet, &payload)
        .expect("packet");
    let ResolverPacket::Reply(reply) = responder.handle_tun_packet(&packet) else {
        panic!("no reply");
    };
    let sliced = SlicedPacket::from_ip(&reply).expect("reply parses");
    let Some(TransportSlice::Udp(udp)) = &sliced.transport else {
        panic!("not UDP");
    };
    let message = Message::from_vec(udp.payload()).expect("DNS");
    assert_eq!(message.id(), 9);
    assert_eq!(
        srvs(message.answers()),
        vec![(9999, "bob.agent.internal.".into())]
    );
}

/// Labels a query may be made of: the zone's own, near misses, and bytes.
fn label() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "_services",
            "_dns-sd",
            "_udp",
            "_tcp",
            "_mcp",
            "_a2a",
            "_http",
            "bob",
            "dave",
            "carol",
            "bob-8000",
            "bob-8001",
            "dave-80",
            "agent",
            "internal",
            "*",
        ])
        .prop_map(|label: &str| label.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 1..=63),
    ]
}

proptest! {
    #[test]
    fn arbitrary_names_types_and_sizes_never_panic_and_always_fit(
        labels in prop::collection::vec(label(), 0..8),
        in_zone in any::<bool>(),
        kind in any::<u16>(),
        edns in prop::option::of(any::<u16>()),
        id in any::<u16>(),
    ) {
        let responder = services_responder();
        let mut name = Name::from_labels(labels.iter().map(Vec::as_slice)).unwrap_or_default();
        if in_zone {
            name = name.append_name(&fqdn("agent.internal.")).unwrap_or_else(|_| fqdn("agent.internal."));
        } else {
            name.set_fqdn(true);
        }
        let mut query = Message::new();
        query.set_id(id).add_query(Query::query(name, RecordType::from(kind)));
        if let Some(size) = edns {
            let mut extension = Edns::new();
            extension.set_max_payload(size);
            query.set_edns(extension);
        }
        let Ok(bytes) = query.to_vec() else {
            return Ok(());
        };
        if let Some(answer) = responder.answer(&bytes) {
            let limit = edns.map_or(PLAIN_UDP_PAYLOAD, |offer| {
                usize::from(offer.min(EDNS_PAYLOAD)).max(PLAIN_UDP_PAYLOAD)
            });
            prop_assert!(answer.len() <= limit);
            let reply = Message::from_vec(&answer).expect("our answers parse");
            prop_assert_eq!(reply.id(), id);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let responder = services_responder();
        let _ = responder.answer(&bytes);
    }
}

#[test]
fn names_types_and_labels_in_every_combination_never_panic() {
    let responder = services_responder();
    let parts = [
        "_services",
        "_dns-sd",
        "_udp",
        "_tcp",
        "_mcp",
        "bob",
        "bob-8000",
        "carol",
        "x",
    ];
    let kinds = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::SRV,
        RecordType::TXT,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::SOA,
        RecordType::NS,
        RecordType::CNAME,
    ];
    let mut seen = BTreeSet::new();
    for first in parts {
        for second in parts {
            for third in parts {
                let name = format!("{first}.{second}.{third}.agent.internal.");
                for kind in kinds {
                    let reply = ask(&responder, &name, kind);
                    seen.insert(u16::from(reply.response_code()));
                }
            }
        }
    }
    assert!(
        seen.contains(&u16::from(ResponseCode::NoError))
            && seen.contains(&u16::from(ResponseCode::NXDomain))
    );
}
