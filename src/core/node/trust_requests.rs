//! Trust requests: sending sealed ones, receiving and queueing them for an
//! operator (or the auto-approval rules), and the pending list's upkeep.

use std::net::SocketAddr;
use std::time::Instant;

use crate::core::address::NodeId;
use crate::core::api::{AutoApprove, Event};
use crate::core::identity::AgentId;
use crate::core::policy::Policy;
use crate::core::trust::pending::{
    Admission, PendingRequest, PendingStatus, RequestOrigin, RequestSender, SeenNonce,
};
use crate::core::trust::request::{Endorsement, TrustRequest, TrustRequestError};
use crate::core::wire::path::PathAddr;
use rand::RngCore;

use super::Node;

impl Node {
    /// Sets who is trusted without an operator.
    pub fn set_auto_approve(&mut self, rules: AutoApprove) {
        self.auto_approve = rules;
    }

    /// Builds a sealed trust request to `target` and sends it to the
    /// endpoint hint (if any) and through the target's rendezvous servers.
    /// Returns the datagram.
    pub fn send_trust_request(
        &mut self,
        now: Instant,
        target: AgentId,
        justification: &str,
        requested: Policy,
        endpoint: Option<SocketAddr>,
        endorsement: Option<Endorsement>,
    ) -> Result<Vec<u8>, TrustRequestError> {
        let mut nonce = [0u8; 16];
        self.ctx.rng.fill_bytes(&mut nonce);
        let request = TrustRequest {
            requester: self.ctx.own_id,
            target,
            unix_time: self.ctx.unix_now(now).as_secs(),
            nonce,
            name: self.ctx.name.clone(),
            justification: justification.to_string(),
            requested,
            candidates: self.ctx.local_candidates.clone(),
            endorsement,
        };
        let datagram = request.seal(&mut self.ctx.rng, self.ctx.network, &self.identity)?;
        if let Some(endpoint) = endpoint {
            self.ctx.transmit(endpoint, datagram.clone());
        }
        // And through the target's own servers (rendezvous hashing of its
        // node ID), where it registers: each forwards the request unchanged
        // to the registered target, or keeps it in the target's mailbox. A
        // server we hold no live link to gets it once one registers.
        let node = NodeId::of(&target);
        for server in self.ctx.servers_of(node) {
            self.ctx
                .send_via_server(now, server, node, datagram.clone());
        }
        self.open_wanted_links(now);
        Ok(datagram)
    }

    /// Trust requests waiting for an operator, oldest first.
    pub fn pending_requests(&self, now: Instant) -> Vec<PendingStatus> {
        self.pending.list(now)
    }

    /// Removes a pending request (to approve or deny it).
    pub fn take_pending_request(&mut self, id: &AgentId) -> Option<PendingRequest> {
        self.pending.take(id)
    }

    /// Pending trust requests with all they carry, oldest first (the shell
    /// saves them so they survive a restart).
    pub fn pending_request_details(&self) -> impl Iterator<Item = &PendingRequest> {
        self.pending.iter()
    }

    /// Puts back a pending request saved before a restart; ignored if the
    /// requester is a peer by now.
    pub fn restore_pending_request(&mut self, now: Instant, pending: PendingRequest) {
        let requester = pending.request.requester;
        if requester == self.ctx.own_id || self.peers.contains(&requester) {
            return;
        }
        self.pending.restore(now, pending);
    }

    /// Nonces of trust requests seen recently (waiting, approved or
    /// denied), with how long each must still be remembered: the shell saves
    /// them so a replay after a restart is still a replay.
    pub fn seen_trust_request_nonces(&self, now: Instant) -> impl Iterator<Item = SeenNonce> + '_ {
        self.pending.seen_nonces(now)
    }

    /// Remembers a trust-request nonce saved before a restart.
    pub fn restore_seen_trust_request_nonce(&mut self, now: Instant, seen: SeenNonce) {
        self.pending.restore_seen_nonce(now, seen);
    }

    /// `relayed`: the node a rendezvous named as the sender, and the tag it
    /// gave the sender's address ([`crate::core::wire::Relay::source_tag`]).
    pub(super) fn handle_trust_request(
        &mut self,
        now: Instant,
        path: PathAddr,
        relayed: Option<(NodeId, u32)>,
        datagram: &[u8],
    ) {
        let relayed_by = relayed.map(|(node, _)| node);
        let source_tag = relayed.map_or(0, |(_, tag)| tag);
        let from = path.underlay();
        let unix_now = self.ctx.unix_now(now);
        // Cheap checks first (no table is touched for garbage), then the
        // sender's rate and the verification budget (see `core::pending`).
        match TrustRequest::check_envelope(datagram, &self.ctx.own_mac1) {
            Ok(()) => {}
            Err(TrustRequestError::BadMac1) => {
                self.ctx.dropped.bad_mac1 += 1;
                return;
            }
            Err(_) => {
                self.ctx.dropped.trust_requests_rejected += 1;
                return;
            }
        }
        let sender = RequestSender::of_path(path, relayed_by);
        if self
            .pending
            .allow_verification(now, &sender, &mut self.ctx.rng)
            .is_err()
        {
            self.ctx.dropped.trust_requests_rate_limited += 1;
            return;
        }
        let dropped = &mut self.ctx.dropped;
        let request = match TrustRequest::open(
            datagram,
            self.ctx.network,
            &self.identity,
            &self.ctx.own_mac1,
            unix_now,
        ) {
            Ok(request) => request,
            Err(TrustRequestError::BadMac1) => {
                dropped.bad_mac1 += 1;
                return;
            }
            Err(error) => {
                tracing::debug!(%from, %error, "dropping trust request");
                dropped.trust_requests_rejected += 1;
                return;
            }
        };
        if self.peers.contains(&request.requester) || request.requester == self.ctx.own_id {
            dropped.trust_requests_rejected += 1;
            return;
        }
        match self.pending.check(now, &request, &mut self.ctx.rng) {
            Admission::Replayed => dropped.trust_requests_replayed += 1,
            Admission::RateLimited => dropped.trust_requests_rate_limited += 1,
            Admission::Crowded => dropped.trust_requests_crowded_out += 1,
            Admission::Queued => {
                let id = request.requester;
                let auto_approve =
                    self.auto_approve
                        .approves(&request, self.ctx.network, unix_now.as_secs());
                // At debug level: a flood of them (a forged source and a
                // fresh key each) would fill the log. The agent logs how
                // many arrived once a minute.
                tracing::debug!(requester = %id, name = %crate::core::text::Untrusted(&request.name), %from, auto_approve, "trust request received");
                let origin = RequestOrigin {
                    from,
                    via_relay: path.is_relay(),
                    source_tag,
                };
                let admission = if auto_approve {
                    self.pending.insert_approved(now, request, origin)
                } else {
                    self.pending.insert(now, request, origin)
                };
                if admission == Admission::Crowded {
                    tracing::debug!(requester = %id, %from, "trust request dropped: the direct requests' share is full");
                    self.ctx.dropped.trust_requests_crowded_out += 1;
                    return;
                }
                self.ctx
                    .events
                    .push_back(Event::TrustRequested { id, auto_approve });
            }
        }
    }
}
