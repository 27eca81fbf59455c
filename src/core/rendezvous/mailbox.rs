//! The mailbox: sealed trust requests for agents that are not registered,
//! kept until they register, fair to every source that sends them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Instant;

use crate::core::address::NodeId;

use super::{
    MAX_MAILBOX_BYTES, MAX_MAILBOXES, MAX_STORED_DATAGRAM_LEN, MAX_STORED_PER_IP, RendezvousServer,
    release_count,
};

/// A trust request waiting in a mailbox.
pub(super) struct StoredRequest {
    pub(super) from_node: NodeId,
    /// The source that relayed it, as
    /// [`address_key`](crate::core::limit::address_key) folds its IP
    /// (counted against [`MAX_STORED_PER_IP`]).
    pub(super) source: IpAddr,
    pub(super) datagram: Vec<u8>,
    pub(super) stored: Instant,
}

impl RendezvousServer {
    /// Keeps a trust request for an offline target. Fair to every source
    /// (`source`: the sender's IP as
    /// [`address_key`](crate::core::limit::address_key) folds it, so one
    /// IPv6 /64 is one source): a source holds at most [`MAX_STORED_PER_IP`]
    /// requests, a newer request from the same node to the same target
    /// replaces the older one, and a full mailbox makes room by dropping a
    /// request of the source that holds the most of it (the sender's own
    /// when that is it), so a flooder only ever pushes out its own requests.
    pub(super) fn store_request(
        &mut self,
        now: Instant,
        target: NodeId,
        from_node: NodeId,
        source: IpAddr,
        datagram: &[u8],
    ) {
        if datagram.len() > MAX_STORED_DATAGRAM_LEN {
            // The target would drop it as oversized anyway.
            self.counters.mailbox_dropped += 1;
            return;
        }
        // A retry from the same node replaces its older copy.
        let replaced = self.mailbox.get_mut(&target).and_then(|queue| {
            let position = queue
                .iter()
                .position(|stored| stored.from_node == from_node)?;
            queue.remove(position)
        });
        if let Some(old) = replaced {
            self.release_stored(&old);
        }
        let holds = self.stored_per_ip.get(&source).copied().unwrap_or(0);
        if holds >= MAX_STORED_PER_IP
            || self.stored_bytes + datagram.len() > MAX_MAILBOX_BYTES
            || (!self.mailbox.contains_key(&target) && self.mailbox.len() >= MAX_MAILBOXES)
        {
            self.counters.mailbox_dropped += 1;
            if self.mailbox.get(&target).is_some_and(VecDeque::is_empty) {
                self.mailbox.remove(&target);
            }
            return;
        }
        let per_target = self.config.mailbox_per_target.max(1);
        let queue = self.mailbox.entry(target).or_default();
        let mut evicted = None;
        if queue.len() >= per_target {
            let count_of = |of: IpAddr| queue.iter().filter(|stored| stored.source == of).count();
            let own = count_of(source);
            let (biggest_source, biggest) = queue
                .iter()
                .map(|stored| (stored.source, count_of(stored.source)))
                .max_by_key(|(_, count)| *count)
                .unwrap_or((source, 0));
            let victim = if own >= biggest {
                source
            } else {
                biggest_source
            };
            evicted = queue
                .iter()
                .position(|stored| stored.source == victim)
                .and_then(|position| queue.remove(position));
            if evicted.is_none() {
                // The sender holds nothing here and everyone holds one:
                // the oldest goes.
                evicted = queue.pop_front();
            }
        }
        queue.push_back(StoredRequest {
            from_node,
            source,
            datagram: datagram.to_vec(),
            stored: now,
        });
        if let Some(old) = evicted {
            self.counters.mailbox_dropped += 1;
            self.release_stored(&old);
        }
        *self.stored_per_ip.entry(source).or_default() += 1;
        self.stored_bytes += datagram.len();
        self.counters.mailbox_stored += 1;
    }

    /// Un-counts a stored request that leaves its mailbox.
    pub(super) fn release_stored(&mut self, stored: &StoredRequest) {
        release_count(&mut self.stored_per_ip, stored.source);
        self.stored_bytes -= stored.datagram.len();
    }
}
