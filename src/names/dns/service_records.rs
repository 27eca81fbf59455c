//! DNS-SD (RFC 6763) and SRV (RFC 2782) records for the services trusted
//! peers advertised here, built once per change (new services, new
//! names) and then only looked up, query by query.
//!
//! For a trusted peer `NAME` that advertised `KIND:PORT` with path `P` and
//! name `N`, the instance label is `NAME-PORT` and the zone holds:
//!
//! | owner | records |
//! |---|---|
//! | `_services._dns-sd._udp.agent.internal` | PTR `_KIND._tcp.agent.internal`, one per kind any trusted peer offers |
//! | `_KIND._tcp.agent.internal` | PTR `NAME-PORT._KIND._tcp.agent.internal`, one per service of that kind |
//! | `NAME-PORT._KIND._tcp.agent.internal` | SRV `0 0 PORT NAME.agent.internal.`, TXT `txtvers=1 path=P name=N` |
//! | `_services._dns-sd._udp.NAME.agent.internal` | PTR `_KIND._tcp.NAME.agent.internal`, one per kind `NAME` offers |
//! | `_KIND._tcp.NAME.agent.internal` | SRV as above per service of that kind (RFC 2782), TXT per service with `port=PORT` (which SRV it goes with), PTR `NAME-PORT._KIND._tcp.NAME.agent.internal` |
//! | `NAME-PORT._KIND._tcp.NAME.agent.internal` | SRV and TXT as the instance above |
//!
//! So a browser finds every service under `agent.internal`, or one peer's
//! under `NAME.agent.internal`, each domain self-contained as RFC 6763
//! lays it out; and `dig SRV _mcp._tcp.NAME.agent.internal` answers
//! directly. `path=` is there only when the peer gave a path (absent
//! means `/`, DNS-SD's convention); `name=` only when it gave a name.
//!
//! The instance label is made of this agent's name for the peer (from its
//! trust store) and the port, never of the peer's own text: a peer cannot
//! pick an instance name that passes for another peer's. It is unique, as
//! the port has no `-`. A name too long for a 63-byte label with its
//! `-PORT` is cut to fit; should two cut labels meet, the peer first in
//! name order keeps the global instance (its per-peer one stays).
//!
//! Everything is bounded by the trusted peers (the operator's choice) and
//! at most [`MAX_SERVICES`] services each; a peer repeating `KIND:PORT`
//! counts once.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use hickory_proto::rr::rdata::{PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData};

use super::name_table::NameTable;
use crate::core::services::{MAX_SERVICES, Service, ServiceKind};

/// The label of DNS-SD's service type enumeration (RFC 6763 §9):
/// `_services._dns-sd._udp`.
const SERVICE_TYPES: [&str; 3] = ["_services", "_dns-sd", "_udp"];
/// The protocol label of every advertised service: peers open them over TCP.
const PROTOCOL: &str = "_tcp";
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// What one trusted peer advertised here, under its name in this agent's
/// trust store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPeerServices {
    /// The peer's local name (one DNS label, from the trust store).
    pub name: String,
    /// What it advertised (checked when decoded; still the peer's text).
    pub services: Vec<Service>,
}

/// The DNS-SD part of the zone: owner names and their records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServiceRecords {
    /// Owner name to its records, in the order built. Names compare
    /// without case and in canonical order, which puts the descendants of
    /// a name right after it.
    nodes: BTreeMap<Name, Vec<RData>>,
}

impl ServiceRecords {
    /// The records for the services of `peers` that have a name in `names`
    /// (trusted peers only), under `zone`.
    pub(super) fn build(zone: &Name, names: &NameTable, peers: &[NamedPeerServices]) -> Self {
        let mut by_name: BTreeMap<String, &[Service]> = BTreeMap::new();
        for peer in peers {
            let name = peer.name.to_ascii_lowercase();
            if names.get(&name).is_some() {
                by_name.entry(name).or_insert(&peer.services);
            }
        }
        let mut builder = Builder {
            zone,
            nodes: BTreeMap::new(),
            kinds: BTreeSet::new(),
        };
        for (name, services) in by_name {
            builder.add_peer(&name, services);
        }
        builder.finish()
    }

    /// The records of `name`, if it owns any.
    pub(super) fn records(&self, name: &Name) -> Option<&[RData]> {
        self.nodes.get(name).map(Vec::as_slice)
    }

    /// Whether some owner lies below `name`: `name` then exists with no
    /// records of its own (an empty non-terminal such as `_tcp.NAME`,
    /// which must not be NXDOMAIN: RFC 8020 lets a resolver conclude from
    /// that that nothing below exists).
    pub(super) fn has_descendants(&self, name: &Name) -> bool {
        self.nodes
            .range::<Name, _>((Bound::Excluded(name), Bound::Unbounded))
            .next()
            .is_some_and(|(owner, _)| name.zone_of(owner))
    }

    /// How many records there are.
    pub(super) fn len(&self) -> usize {
        self.nodes.values().map(Vec::len).sum()
    }
}

/// Collects the records while they are built.
struct Builder<'z> {
    zone: &'z Name,
    nodes: BTreeMap<Name, Vec<RData>>,
    /// Every kind any peer offers, for the enumeration of service types.
    kinds: BTreeSet<ServiceKind>,
}

impl Builder<'_> {
    fn push(&mut self, owner: Name, data: RData) {
        self.nodes.entry(owner).or_default().push(data);
    }

    fn add_peer(&mut self, peer: &str, services: &[Service]) {
        let Some(peer_domain) = name_under(&[peer], self.zone) else {
            tracing::debug!(peer, "names: not a DNS name; its services get no records");
            return;
        };
        let mut seen = BTreeSet::new();
        let mut by_kind: BTreeMap<&ServiceKind, Vec<&Service>> = BTreeMap::new();
        for service in services.iter().take(MAX_SERVICES) {
            if service.validate().is_ok() && seen.insert((&service.kind, service.port)) {
                by_kind.entry(&service.kind).or_default().push(service);
            }
        }
        let Some(peer_types) = name_under(&SERVICE_TYPES, &peer_domain) else {
            return;
        };
        for (kind, services) in by_kind {
            let kind_label = format!("_{kind}");
            let type_labels = [kind_label.as_str(), PROTOCOL];
            let (Some(global_type), Some(peer_type)) = (
                name_under(&type_labels, self.zone),
                name_under(&type_labels, &peer_domain),
            ) else {
                continue;
            };
            self.kinds.insert(kind.clone());
            self.push(peer_types.clone(), RData::PTR(PTR(peer_type.clone())));
            for service in services {
                let srv = RData::SRV(SRV::new(0, 0, service.port, peer_domain.clone()));
                // RFC 2782: `_KIND._tcp.NAME` itself.
                self.push(peer_type.clone(), srv.clone());
                self.push(peer_type.clone(), txt(service, true));
                let instance = instance_label(peer, service.port);
                if let Some(peer_instance) = name_under(&[&instance], &peer_type) {
                    self.push(peer_type.clone(), RData::PTR(PTR(peer_instance.clone())));
                    self.push(peer_instance.clone(), srv.clone());
                    self.push(peer_instance, txt(service, false));
                }
                match name_under(&[&instance], &global_type) {
                    Some(global_instance) if !self.nodes.contains_key(&global_instance) => {
                        self.push(
                            global_type.clone(),
                            RData::PTR(PTR(global_instance.clone())),
                        );
                        self.push(global_instance.clone(), srv);
                        self.push(global_instance, txt(service, false));
                    }
                    _ => tracing::debug!(
                        peer,
                        instance,
                        "names: the instance label is taken; this service is only under its peer's name"
                    ),
                }
            }
        }
    }

    fn finish(mut self) -> ServiceRecords {
        if let Some(types) = name_under(&SERVICE_TYPES, self.zone) {
            for kind in std::mem::take(&mut self.kinds) {
                if let Some(global_type) = name_under(&[&format!("_{kind}"), PROTOCOL], self.zone) {
                    self.push(types.clone(), RData::PTR(PTR(global_type)));
                }
            }
        }
        ServiceRecords { nodes: self.nodes }
    }
}

/// `labels` (raw bytes, no IDNA) followed by `domain`, if that is a valid
/// name (labels of 1-63 bytes, 255 bytes in all).
fn name_under(labels: &[&str], domain: &Name) -> Option<Name> {
    Name::from_labels(labels.iter().map(|label| label.as_bytes()))
        .and_then(|name| name.append_name(domain))
        .ok()
}

/// `NAME-PORT`, the name cut so that the label fits 63 bytes.
pub(super) fn instance_label(peer: &str, port: u16) -> String {
    let suffix = format!("-{port}");
    let keep = MAX_LABEL_LEN.saturating_sub(suffix.len());
    // Trust store names are ASCII; cutting on a character boundary keeps
    // any other text from panicking all the same.
    let mut cut = keep.min(peer.len());
    while !peer.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &peer[..cut])
}

/// The TXT record of a service (RFC 6763 §6): `txtvers=1`, then `port=`
/// where several services share the owner, `path=` and `name=` when the
/// peer gave them. The strings fit (paths are at most 128 bytes, names 48).
fn txt(service: &Service, with_port: bool) -> RData {
    let mut strings = vec!["txtvers=1".to_string()];
    if with_port {
        strings.push(format!("port={}", service.port));
    }
    if let Some(path) = &service.path {
        strings.push(format!("path={path}"));
    }
    if let Some(name) = &service.name {
        strings.push(format!("name={name}"));
    }
    RData::TXT(TXT::new(strings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_labels_fit_one_label_and_keep_the_port() {
        assert_eq!(instance_label("bravo", 8000), "bravo-8000");
        let long = "a".repeat(63);
        let label = instance_label(&long, 65535);
        assert_eq!(label.len(), 63);
        assert!(label.ends_with("a-65535"));
        assert_eq!(instance_label("", 1), "-1");
        // Not a trust store name, and still no panic.
        let wide = "é".repeat(40);
        assert!(instance_label(&wide, 8000).len() <= 63);
    }
}
