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
//!
//! The services trusted peers advertised here are answered too, as DNS-SD
//! (RFC 6763) and SRV (RFC 2782): `dig SRV _mcp._tcp.NAME.agent.internal`,
//! and browsing from `_services._dns-sd._udp.agent.internal` down (the
//! record layout is in [`service_records`]). The daemon hands them over
//! with [`DnsResponder::set_services`], already joined with its trust
//! store; the responder keeps only those of peers in its [`NameTable`],
//! so an untrusted peer's `_mcp._tcp.NAME` is NXDOMAIN like its name. SRV
//! answers carry the target's AAAA (and A where IPv4 reaches it) in the
//! additional section, instance PTR answers the instances' SRV and TXT
//! too. Answers are cut to fit one datagram (`udp_size`), with TC when
//! answers had to go.
//!
//! The responder does no I/O and reads no clock: bytes in, bytes out.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::core::address::{NetworkId, NodePrefix};
use crate::core::wire::emit::{self, Route};
use crate::core::wire::packet::{ICMPV6_ECHO_REQUEST, IpPacket, peek_ipv6_destination};

mod name_table;
pub mod service_records;
mod udp_size;

pub use name_table::NameTable;
pub use service_records::NamedPeerServices;

use name_table::NameAddresses;
use service_records::ServiceRecords;

/// The zone every peer name lives in.
pub const DOMAIN: &str = "agent.internal";
/// Interface ID of the resolver address inside the network's `/48`.
pub const RESOLVER_INTERFACE_ID: u16 = 0x53;
/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// TTL of answers. Short: a name stops resolving soon after its peer is no
/// longer trusted, even in caches (the address itself never changes).
pub const ANSWER_TTL: u32 = 10;
/// Most answer records collected for one query: more than one datagram
/// holds (with EDNS, ~25 SRV or ~45 PTR records), so the encoding that
/// follows cuts to what fits and a query's work stays bounded.
const MAX_ANSWERS: usize = 64;
/// TTL of negative answers (the SOA minimum).
pub const NEGATIVE_TTL: u32 = 10;
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
    /// What trusted peers advertised, as the daemon last handed it over.
    services: Vec<NamedPeerServices>,
    /// The DNS-SD records of `services` whose peers are in `names`.
    service_records: ServiceRecords,
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
            services: Vec::new(),
            service_records: ServiceRecords::default(),
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

    /// Replaces the names it answers (the services of peers no longer
    /// named go with them).
    pub fn set_names(&mut self, names: NameTable) {
        self.names = names;
        self.rebuild_service_records();
    }

    /// Replaces the services it answers by DNS-SD: those of the peers in
    /// its names; the others are kept for when their peer gets a name.
    pub fn set_services(&mut self, services: Vec<NamedPeerServices>) {
        self.services = services;
        self.rebuild_service_records();
    }

    fn rebuild_service_records(&mut self) {
        self.service_records = ServiceRecords::build(&self.zone, &self.names, &self.services);
        tracing::debug!(
            peers = self.services.len(),
            records = self.service_records.len(),
            "names: DNS-SD records rebuilt"
        );
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
        udp_size::encode_within(self.respond(&query), udp_size::payload_limit(&query))
    }

    fn respond(&self, query: &Message) -> Message {
        let mut response = Message::new();
        response
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(false);
        if let [question] = query.queries() {
            // Only one: echoing a stranger's many would not fit the datagram.
            response.add_query(question.clone());
        }
        if query.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(udp_size::EDNS_PAYLOAD);
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
        let kind = question.query_type();
        if name.num_labels() == self.zone.num_labels() {
            // The apex exists (it has an SOA) but holds no address.
            if kind == RecordType::SOA {
                response.add_answer(self.soa.clone());
            } else {
                response.add_name_server(self.soa.clone());
            }
            return;
        }
        let answers = if let Some(addresses) = self.peer_addresses(name) {
            address_records(addresses, kind)
        } else if let Some(records) = self.service_records.records(name) {
            records
                .iter()
                .filter(|data| kind == RecordType::ANY || data.record_type() == kind)
                .take(MAX_ANSWERS + 1)
                .cloned()
                .collect()
        } else if self.service_records.has_descendants(name) {
            // An empty non-terminal (`_tcp.NAME.agent.internal`): it exists.
            Vec::new()
        } else {
            response.set_response_code(ResponseCode::NXDomain);
            response.add_name_server(self.soa.clone());
            return;
        };
        if answers.is_empty() {
            // The name exists, with no record of this type (NODATA): an A
            // query too when IPv4 does not reach the peer.
            response.add_name_server(self.soa.clone());
            return;
        }
        // More than one datagram holds (some 45 PTRs with EDNS): the rest
        // is cut here, so a query's work stays bounded however many
        // services the trusted peers advertise.
        if answers.len() > MAX_ANSWERS {
            response.set_truncated(true);
        }
        for data in answers.into_iter().take(MAX_ANSWERS) {
            response.add_answer(Record::from_rdata(name.clone(), ANSWER_TTL, data));
        }
        self.add_additionals(response);
    }

    /// The addresses of the trusted peer `name` (`NAME.agent.internal`,
    /// one label under the zone) stands for.
    fn peer_addresses(&self, name: &Name) -> Option<&NameAddresses> {
        if name.num_labels() != self.zone.num_labels() + 1 || !self.zone.zone_of(name) {
            return None;
        }
        let label = name.iter().next()?;
        self.names.get(std::str::from_utf8(label).ok()?)
    }

    /// What saves the asker a round trip (RFC 6763 §12): for instance PTR
    /// answers the instances' SRV and TXT, for every SRV its target's
    /// addresses.
    fn add_additionals(&self, response: &mut Message) {
        let mut instances = BTreeSet::new();
        let mut targets = BTreeSet::new();
        let mut additionals = Vec::new();
        for answer in response.answers() {
            match answer.data() {
                RData::PTR(PTR(instance))
                    if is_instance(instance) && instances.insert(instance.clone()) =>
                {
                    for data in self.service_records.records(instance).unwrap_or_default() {
                        if let RData::SRV(srv) = data {
                            targets.insert(srv.target().clone());
                        }
                        additionals.push(Record::from_rdata(
                            instance.clone(),
                            ANSWER_TTL,
                            data.clone(),
                        ));
                    }
                }
                RData::SRV(srv) => {
                    targets.insert(srv.target().clone());
                }
                _ => {}
            }
        }
        for target in targets {
            if let Some(addresses) = self.peer_addresses(&target) {
                for data in address_records(addresses, RecordType::ANY) {
                    additionals.push(Record::from_rdata(target.clone(), ANSWER_TTL, data));
                }
            }
        }
        response.add_additionals(additionals);
    }
}

/// The address records of a name for a query of type `kind`.
fn address_records(addresses: &NameAddresses, kind: RecordType) -> Vec<RData> {
    let mut records = Vec::new();
    if matches!(kind, RecordType::AAAA | RecordType::ANY) {
        records.push(RData::AAAA(AAAA(addresses.address)));
    }
    if matches!(kind, RecordType::A | RecordType::ANY)
        && let Some(address4) = addresses.address4
    {
        records.push(RData::A(A(address4)));
    }
    records
}

/// Whether a PTR target is a service instance (`bravo-8000._mcp._tcp...`)
/// rather than a service type (`_mcp._tcp...`): types start with `_`,
/// instances with a peer's name.
fn is_instance(name: &Name) -> bool {
    name.iter()
        .next()
        .is_some_and(|label| !label.starts_with(b"_"))
}

fn zone_name() -> Name {
    // A constant that parses; the fallback (the root) is never taken.
    Name::from_str("agent.internal.").unwrap_or_else(|_| Name::root())
}

#[cfg(test)]
mod tests;
