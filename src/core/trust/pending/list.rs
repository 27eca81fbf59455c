//! The waiting list of trust requests in arrival order, with the counts the
//! room-making rules of [`super::PendingRequests::insert`] read: per
//! origin, per network and per share. The counts change only with the list
//! (through [`WaitingList::push`] and [`WaitingList::remove`]), so no
//! request scans the list: each step is a few hash-map and B-tree
//! operations on at most [`super::MAX_PENDING`] entries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use crate::core::identity::AgentId;
use crate::core::limit::address_key;

use super::{PendingRequest, RequestOrigin};

/// Where an entry sits in the list: when it arrived, then the order in
/// which it was added (entries of one instant keep theirs).
pub(super) type Slot = (Instant, u64);

/// The part of the list a request takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Share {
    /// Straight from its source, and not approved by the auto-approval
    /// rules: anyone can forge such a source, so these take at most
    /// [`super::MAX_PENDING_DIRECT`].
    Direct,
    /// Through a rendezvous, or approved by the rules.
    Other,
}

/// What the per-origin cap counts: a direct source's address (IPv4, or the
/// /64 of IPv6), or a rendezvous' address and the tag it gave the
/// requester's own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct OriginKey {
    relayed: bool,
    address: IpAddr,
    tag: u32,
}

impl OriginKey {
    /// The origin of a request from `origin`.
    pub(super) fn of(origin: &RequestOrigin) -> Self {
        Self {
            relayed: origin.via_relay,
            address: address_key(origin.from.ip()),
            tag: origin.source_tag,
        }
    }

    /// The network it belongs to.
    pub(super) fn network(&self) -> NetworkKey {
        if self.relayed {
            NetworkKey::Rendezvous(self.address)
        } else {
            NetworkKey::Prefix(network_prefix(self.address))
        }
    }
}

/// What the per-network cap counts, over the origins in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum NetworkKey {
    /// One rendezvous' address, whatever the tags (a stranger spoofing
    /// the address can make them up).
    Rendezvous(IpAddr),
    /// The IPv4 /24 or IPv6 /48 of direct sources.
    Prefix(IpAddr),
}

/// The /24 of an IPv4 address (IPv4-mapped IPv6 included), the /48 of an
/// IPv6 one: the longest prefix routed between networks, and the usual
/// IPv6 site (which holds 65,536 /64s for one host to pick from).
fn network_prefix(address: IpAddr) -> IpAddr {
    match address_key(address) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
        }
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    }
}

/// An origin as its network ranks it: by its number of entries, then by
/// its newest entry.
type OriginRank = (usize, Slot, OriginKey);

/// The entries of one network: how many, and its origins ranked (room is
/// made from the last).
#[derive(Debug, Default, PartialEq)]
struct Network {
    len: usize,
    origins_by_size: BTreeSet<OriginRank>,
}

#[derive(Debug)]
struct Entry {
    pending: PendingRequest,
    share: Share,
}

/// Waiting requests, oldest first, with their counts.
#[derive(Debug, Default)]
pub(super) struct WaitingList {
    entries: BTreeMap<Slot, Entry>,
    added: u64,
    by_requester: HashMap<AgentId, Slot>,
    origins: HashMap<OriginKey, BTreeSet<Slot>>,
    networks: HashMap<NetworkKey, Network>,
    /// The entries outside the direct share.
    others: BTreeSet<Slot>,
    direct: usize,
}

impl WaitingList {
    /// Entries in all.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries in the direct share.
    pub(super) fn direct_len(&self) -> usize {
        self.direct
    }

    /// Entries of `origin`.
    pub(super) fn origin_len(&self, origin: &OriginKey) -> usize {
        self.origins.get(origin).map_or(0, BTreeSet::len)
    }

    /// Entries of `network`.
    pub(super) fn network_len(&self, network: &NetworkKey) -> usize {
        self.networks.get(network).map_or(0, |network| network.len)
    }

    /// The oldest entry of all.
    pub(super) fn oldest(&self) -> Option<Slot> {
        self.entries.keys().next().copied()
    }

    /// The oldest entry outside the direct share.
    pub(super) fn oldest_other(&self) -> Option<Slot> {
        self.others.first().copied()
    }

    /// The oldest entry of `origin`.
    pub(super) fn oldest_of_origin(&self, origin: &OriginKey) -> Option<Slot> {
        self.origins.get(origin)?.first().copied()
    }

    /// The oldest entry of the largest origin of `network` (of equal
    /// ones, that with the newest entry: a flood of one-request origins
    /// replaces its own latest, not what waited before it).
    pub(super) fn oldest_of_largest_origin(&self, network: &NetworkKey) -> Option<Slot> {
        let (_, _, origin) = self.networks.get(network)?.origins_by_size.last()?;
        self.oldest_of_origin(origin)
    }

    /// The share of the entry at `slot`.
    pub(super) fn share_of(&self, slot: Slot) -> Option<Share> {
        self.entries.get(&slot).map(|entry| entry.share)
    }

    /// The entry of `requester`.
    pub(super) fn slot_of(&self, requester: &AgentId) -> Option<Slot> {
        self.by_requester.get(requester).copied()
    }

    /// Oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &PendingRequest> {
        self.entries.values().map(|entry| &entry.pending)
    }

    /// Adds `pending` in `share` (the caller made room and removed the
    /// requester's earlier entry).
    pub(super) fn push(&mut self, pending: PendingRequest, share: Share) {
        let slot = (pending.received, self.added);
        self.added = self.added.wrapping_add(1);
        let origin = OriginKey::of(&pending.origin());
        let slots = self.origins.entry(origin).or_default();
        let before = slots.last().map(|newest| (slots.len(), *newest, origin));
        slots.insert(slot);
        let after = slots.last().map(|newest| (slots.len(), *newest, origin));
        self.network_changed(origin.network(), before, after, 1);
        match share {
            Share::Direct => self.direct += 1,
            Share::Other => {
                self.others.insert(slot);
            }
        }
        self.by_requester.insert(pending.request.requester, slot);
        self.entries.insert(slot, Entry { pending, share });
    }

    /// Removes the entry at `slot`.
    pub(super) fn remove(&mut self, slot: Slot) -> Option<PendingRequest> {
        let Entry { pending, share } = self.entries.remove(&slot)?;
        self.by_requester.remove(&pending.request.requester);
        match share {
            Share::Direct => self.direct -= 1,
            Share::Other => {
                self.others.remove(&slot);
            }
        }
        let origin = OriginKey::of(&pending.origin());
        if let Some(slots) = self.origins.get_mut(&origin) {
            let before = slots.last().map(|newest| (slots.len(), *newest, origin));
            slots.remove(&slot);
            let after = slots.last().map(|newest| (slots.len(), *newest, origin));
            if slots.is_empty() {
                self.origins.remove(&origin);
            }
            self.network_changed(origin.network(), before, after, -1);
        }
        Some(pending)
    }

    /// Panics unless every count matches a recount of the entries.
    #[cfg(test)]
    pub(super) fn assert_counts(&self) {
        let mut origins: HashMap<OriginKey, BTreeSet<Slot>> = HashMap::new();
        let mut direct = 0;
        let mut others = BTreeSet::new();
        for (slot, entry) in &self.entries {
            origins
                .entry(OriginKey::of(&entry.pending.origin()))
                .or_default()
                .insert(*slot);
            match entry.share {
                Share::Direct => direct += 1,
                Share::Other => {
                    others.insert(*slot);
                }
            }
            assert_eq!(self.slot_of(&entry.pending.request.requester), Some(*slot));
        }
        assert_eq!(self.by_requester.len(), self.entries.len());
        assert_eq!(self.origins, origins);
        assert_eq!((self.direct, &self.others), (direct, &others));
        let mut networks: HashMap<NetworkKey, Network> = HashMap::new();
        for (origin, slots) in &origins {
            let network = networks.entry(origin.network()).or_default();
            network.len += slots.len();
            let newest = *slots.last().expect("no empty origin");
            network
                .origins_by_size
                .insert((slots.len(), newest, *origin));
        }
        assert_eq!(self.networks, networks);
    }

    /// Moves an origin's place among its network's (`None`: no entries)
    /// and counts the entry added (1) or removed (-1).
    fn network_changed(
        &mut self,
        network: NetworkKey,
        before: Option<OriginRank>,
        after: Option<OriginRank>,
        change: isize,
    ) {
        let entry = self.networks.entry(network).or_default();
        if let Some(before) = before {
            entry.origins_by_size.remove(&before);
        }
        if let Some(after) = after {
            entry.origins_by_size.insert(after);
        }
        entry.len = entry.len.saturating_add_signed(change);
        if entry.len == 0 {
            self.networks.remove(&network);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_sources_share_a_network_by_ipv4_24_and_ipv6_48() {
        let prefix = |address: &str| network_prefix(address.parse().expect("ip"));
        assert_eq!(prefix("192.0.2.77"), prefix("192.0.2.1"));
        assert_ne!(prefix("192.0.2.77"), prefix("192.0.3.77"));
        assert_eq!(prefix("::ffff:192.0.2.77"), prefix("192.0.2.1"));
        assert_eq!(prefix("2001:db8:1:ffff::1"), prefix("2001:db8:1::2"));
        assert_ne!(prefix("2001:db8:1::1"), prefix("2001:db8:2::1"));
    }
}
