//! The daemon's side of trust requests (DESIGN.md §4): sending one, listing,
//! approving and denying those received — by the operator or by the
//! `[auto_approve]` rules, through the same path — saving them so they
//! survive a restart, and noticing when a request of ours was approved.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Daemon;
use crate::agent::DaemonError;
use crate::agent::commands::{OutgoingRequest, TrustOp};
use crate::control::{Response, TrustedPeer};
use crate::core::api::{AutoApprove, Event};
use crate::core::identity::AgentId;
use crate::core::policy::Policy;
use crate::core::text::Untrusted;
use crate::core::trust::store::{TrustEntry, TrustState};
use crate::state::fleet::AutoApproveConfig;
use crate::state::pending::{
    PendingRecord, SeenNonceRecord, TrustRequestsConfig, approval_name, default_target_name,
    granted_policy, load_pending, load_seen_nonces, save_pending,
};
use crate::state::unix_now;

/// Least time between two writes of the pending file when requests arrive:
/// a flood of requests costs at most one write per interval. Operator
/// decisions are written at once.
const PENDING_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time between two looks for expired requested entries (entries
/// added by a hand edit and SIGHUP are found by the next look).
const EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// The daemon's trust-request state beside the node.
#[derive(Debug, Default)]
pub(super) struct TrustFlow {
    /// Pending requests changed since the pending file was written.
    unsaved: bool,
    /// When the pending file was last written.
    last_saved: Option<Instant>,
    /// `[trust_requests]` of `config.toml`.
    config: TrustRequestsConfig,
    /// When to look for expired requested entries next.
    next_expiry_sweep: Option<Instant>,
    /// `[auto_approve]` of `config.toml`, as the node applies it.
    rules: AutoApprove,
}

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When an entry expiring at `expires_unix` is due, on the monotonic
/// clock that reads `now` at `unix`; `None` when that lies beyond what the
/// clock can count (a TTL of billions of years in config.toml, or a
/// hand-edited `expires_unix`): never, in practice.
fn expiry_deadline(now: Instant, unix: u64, expires_unix: u64) -> Option<Instant> {
    now.checked_add(Duration::from_secs(expires_unix.saturating_sub(unix)))
}

fn unix_clock() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl Daemon {
    /// Reads the `[auto_approve]` rules and puts back the requests saved
    /// before the last stop. Runs once, after the trust store is loaded.
    pub(super) fn start_trust_flow(&mut self, now: Instant) -> Result<(), DaemonError> {
        let config = AutoApproveConfig::load(&self.options.state)?;
        if config.is_on() {
            tracing::info!(
                agents = config.agents.len(),
                fleet_keys = config.fleet_keys.len(),
                "auto-approval of trust requests is on"
            );
        }
        let rules = config.rules();
        self.node.set_auto_approve(rules.clone());
        self.trust_flow.rules = rules.clone();
        self.trust_flow.config = TrustRequestsConfig::load(&self.options.state)?;
        // Agents asked before the stop that never approved go now.
        self.expire_requested(now);

        let records = match load_pending(&self.options.state) {
            Ok(records) => records,
            Err(error) => {
                // Fail closed: the requesters can ask again.
                tracing::error!(%error, "cannot read the saved trust requests; starting without them");
                Vec::new()
            }
        };
        let unix = unix_clock();
        // The replay set first: a replay after the restart stays a replay.
        match load_seen_nonces(&self.options.state) {
            Ok(seen) => {
                for seen in seen.iter().filter_map(|record| record.restore(unix)) {
                    self.node.restore_seen_trust_request_nonce(now, seen);
                }
            }
            Err(error) => tracing::error!(%error, "cannot read the saved trust-request nonces"),
        }
        let mut auto_approved = Vec::new();
        let mut restored = 0usize;
        for record in records {
            let Some(pending) = record.restore(self.own_id, now, unix) else {
                continue;
            };
            if rules.approves(&pending.request, self.network, unix.as_secs()) {
                auto_approved.push(pending.request.requester);
            }
            self.node.restore_pending_request(now, pending);
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(
                restored,
                "trust requests saved before the restart are pending again"
            );
        }
        for id in auto_approved {
            self.auto_approve(now, id);
        }
        Ok(())
    }

    /// When the pending file is due to be written or requested entries
    /// are due to expire, whichever comes first.
    pub(super) fn trust_flow_deadline(&self) -> Option<Instant> {
        let save = self.trust_flow.unsaved.then(|| {
            self.trust_flow
                .last_saved
                .map_or_else(Instant::now, |at| at + PENDING_SAVE_INTERVAL)
        });
        earliest(save, self.trust_flow.next_expiry_sweep)
    }

    /// Writes the pending file and removes expired requested entries, if
    /// either is due.
    pub(super) fn on_trust_flow_timer(&mut self, now: Instant) {
        let save_due = self.trust_flow.unsaved
            && self
                .trust_flow
                .last_saved
                .is_none_or(|at| at + PENDING_SAVE_INTERVAL <= now);
        if save_due {
            self.save_pending(now);
        }
        if self
            .trust_flow
            .next_expiry_sweep
            .is_some_and(|due| due <= now)
        {
            self.expire_requested(now);
        }
    }

    /// Removes the agents we asked for trust that did not approve in time
    /// (from the store and the node), then schedules the next look.
    fn expire_requested(&mut self, now: Instant) {
        let unix = unix_now();
        let mut expired = self.trust.remove_expired(unix);
        if !expired.is_empty() {
            match self
                .options
                .state
                .edit_trust(|store| Ok(store.remove_expired(unix)))
            {
                Ok(from_file) => expired.extend(from_file),
                // Kept out of the node all the same; the next look retries.
                Err(error) => tracing::warn!(%error, "cannot remove expired trust requests"),
            }
        }
        expired.sort_by_key(|entry| entry.id.to_string());
        expired.dedup_by_key(|entry| entry.id);
        for entry in expired {
            self.node.remove_peer(&entry.id);
            tracing::info!(
                peer = %entry.name,
                id = %entry.id,
                "the agent we asked for trust did not approve in time; no longer trusted"
            );
        }
        self.schedule_expiry(now, unix);
    }

    /// Sets the next look for expired entries: at the earliest expiry, and
    /// at least once per [`EXPIRY_SWEEP_INTERVAL`].
    fn schedule_expiry(&mut self, now: Instant, unix: u64) {
        let next = self
            .trust
            .next_expiry()
            .and_then(|expires| expiry_deadline(now, unix, expires));
        self.trust_flow.next_expiry_sweep = earliest(next, Some(now + EXPIRY_SWEEP_INTERVAL));
    }

    /// Writes the pending file if anything changed (at shutdown).
    pub(super) fn save_pending_if_changed(&mut self) {
        if self.trust_flow.unsaved {
            self.save_pending(Instant::now());
        }
    }

    /// Notes a change of the pending requests: written at once, or at the
    /// end of the current save interval.
    fn pending_changed(&mut self, now: Instant) {
        self.trust_flow.unsaved = true;
        if self
            .trust_flow
            .last_saved
            .is_none_or(|at| now.saturating_duration_since(at) >= PENDING_SAVE_INTERVAL)
        {
            self.save_pending(now);
        }
    }

    fn save_pending(&mut self, now: Instant) {
        let unix = unix_clock();
        let records: Vec<PendingRecord> = self
            .node
            .pending_request_details()
            .map(|pending| PendingRecord::of(pending, now, unix))
            .collect();
        let seen: Vec<SeenNonceRecord> = self
            .node
            .seen_trust_request_nonces(now)
            .map(|seen| SeenNonceRecord::of(&seen, unix))
            .collect();
        let count = records.len();
        match save_pending(&self.options.state, records, seen) {
            Ok(()) => {
                tracing::debug!(count, "saved the pending trust requests");
                self.trust_flow.unsaved = false;
            }
            // Kept unsaved: the next change or the next interval retries.
            Err(error) => tracing::warn!(%error, "cannot save the pending trust requests"),
        }
        self.trust_flow.last_saved = Some(now);
    }

    /// Acts on the node events the workflow cares about.
    pub(super) fn on_trust_event(&mut self, now: Instant, event: &Event) {
        match *event {
            Event::TrustRequested { id, auto_approve } => {
                self.pending_changed(now);
                if auto_approve {
                    self.auto_approve(now, id);
                }
            }
            Event::PeerUp { id } => self.mark_request_accepted(id),
            _ => {}
        }
    }

    /// Approves a request the rules accept, granting what they allow: the
    /// request, within the endorsement's cap. Checked again now: an
    /// endorsement may have expired while the request waited.
    fn auto_approve(&mut self, now: Instant, id: AgentId) {
        let grant = self
            .node
            .pending_request_details()
            .find(|pending| pending.request.requester == id)
            .and_then(|pending| {
                self.trust_flow
                    .rules
                    .grant(&pending.request, self.network, unix_now())
            });
        let Some(grant) = grant else {
            tracing::info!(%id, "the auto-approval rules no longer accept the request; it stays pending");
            return;
        };
        match self.approve(now, id, None, Some(grant)) {
            Ok(peer) => tracing::info!(
                peer = %peer.entry.name,
                %id,
                allow = %peer.entry.allow,
                "trust request approved by the auto-approval rules"
            ),
            Err(error) => {
                tracing::warn!(%id, %error, "auto-approval failed; the request stays pending");
            }
        }
    }

    /// A session with a peer we asked for trust proves that it approved:
    /// the entry becomes an ordinary trusted one (same policy, no expiry).
    fn mark_request_accepted(&mut self, id: AgentId) {
        if self
            .trust
            .get(&id)
            .is_none_or(|entry| entry.state != TrustState::Requested)
        {
            return;
        }
        let updated = self.options.state.edit_trust(|store| {
            let entry = store.peers.iter_mut().find(|entry| entry.id == id);
            Ok(entry.map(|entry| {
                entry.mark_approved();
                entry.clone()
            }))
        });
        match updated {
            Ok(Some(entry)) => {
                tracing::info!(peer = %entry.name, %id, allow = %entry.allow, "our trust request was approved: session up");
                self.remember(entry);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%id, %error, "cannot mark the trust request as approved"),
        }
    }

    /// Runs one trust-request command.
    pub(super) fn trust_op(&mut self, now: Instant, op: TrustOp) -> Response {
        let result = match op {
            TrustOp::Request(request) => self.send_request(now, request),
            TrustOp::Pending => Ok(self.pending(now)),
            TrustOp::Approve { id, name, allow } => self
                .approve(now, id, name, allow)
                .map(|peer| Response::TrustApproved { peer }),
            TrustOp::Deny { id } => self.deny(now, id),
        };
        result.unwrap_or_else(Response::Error)
    }

    /// Trusts the target here ("requested") and sends it the sealed request.
    fn send_request(
        &mut self,
        now: Instant,
        request: Box<OutgoingRequest>,
    ) -> Result<Response, String> {
        let OutgoingRequest {
            id,
            name,
            justification,
            allow,
            endpoint,
            endorsement,
        } = *request;
        if id == self.own_id {
            return Err("an agent cannot ask itself for trust".to_string());
        }
        if let Some(endorsement) = &endorsement
            && let Err(reason) = endorsement.check(&self.own_id, self.network, unix_now())
        {
            return Err(format!(
                "the endorsement by fleet {} does not hold for this agent ({}) in this network: {reason} \
                 (an endorsement of another agent or network, or an expired one, is refused)",
                endorsement.fleet_key, self.own_id
            ));
        }
        // Without --endpoint, an address literal already in the store will
        // do (no DNS on the event loop). The node also sends the request,
        // unchanged, through the target's rendezvous servers (opening a link
        // to one it is not registered with).
        let known = self
            .trust
            .get(&id)
            .and_then(|entry| entry.endpoint.as_deref())
            .and_then(|text| text.parse::<SocketAddr>().ok());
        let destination = endpoint.as_ref().map(|(_, resolved)| *resolved).or(known);
        let rendezvous = self
            .node
            .status(now)
            .rendezvous
            .iter()
            .filter(|server| server.registered)
            .count();
        if destination.is_none() && rendezvous == 0 {
            return Err(format!(
                "no endpoint is known for {id} and no rendezvous is registered: \
                 give --endpoint HOST:PORT"
            ));
        }
        let own = self.own_id;
        let endpoint_text = endpoint.map(|(text, _)| text);
        // A request never renames or re-points a trusted peer: that is a
        // change of trust (`trust add`, full control), and a request may
        // come from a model through `agentnet mcp` without --allow-admin,
        // which could otherwise free a trusted name for another agent.
        if let Some(existing) = self.trust.get(&id)
            && existing.state == TrustState::Trusted
            && (name.as_ref().is_some_and(|name| *name != existing.name)
                || endpoint_text
                    .as_ref()
                    .is_some_and(|text| Some(text) != existing.endpoint.as_ref()))
        {
            return Err(format!(
                "{id} is trusted already as {}; a trust request does not change its name or \
                 endpoint (use `agentnet trust add {id} --name NAME --endpoint HOST:PORT`)",
                existing.name
            ));
        }
        let unix = unix_now();
        let ttl = self.trust_flow.config.requested_ttl();
        let entry = self
            .options
            .state
            .edit_trust(|store| {
                let entry = match store.get(&id) {
                    // Already trusted (same name and endpoint, checked
                    // above) or asked before: keep its state and policy,
                    // take a new name or endpoint if given; asking again
                    // restarts the wait.
                    Some(existing) => TrustEntry {
                        name: name.clone().unwrap_or_else(|| existing.name.clone()),
                        endpoint: endpoint_text.clone().or_else(|| existing.endpoint.clone()),
                        expires_unix: (existing.state == TrustState::Requested)
                            .then(|| unix.saturating_add(ttl.as_secs())),
                        ..existing.clone()
                    },
                    // It may open nothing here until our operator says so.
                    None => TrustEntry::requested(
                        id,
                        name.clone()
                            .unwrap_or_else(|| default_target_name(store, &id)),
                        endpoint_text.clone(),
                        unix,
                        ttl,
                    ),
                };
                store.upsert(&own, entry.clone())?;
                Ok(entry)
            })
            .map_err(|e| e.to_string())?;
        // Trusted from now on, so the target's handshake after its approval
        // is accepted; no handshake of ours until then.
        self.apply_entry(now, &entry, destination, false);
        self.remember(entry.clone());
        self.schedule_expiry(now, unix);
        let requested = allow.to_string();
        let endorsed = endorsement.is_some();
        self.node
            .send_trust_request(now, id, &justification, allow, destination, endorsement)
            .map_err(|e| format!("cannot seal the trust request: {e}"))?;
        tracing::info!(
            peer = %entry.name,
            %id,
            to = ?destination,
            rendezvous,
            requested = %requested,
            endorsed,
            "trust request sent"
        );
        Ok(Response::TrustRequestSent {
            peer: self.trusted_peer(entry),
            to: destination,
            rendezvous,
        })
    }

    fn pending(&mut self, now: Instant) -> Response {
        // A requester trusted meanwhile (e.g. with `trust add`) waits no more.
        let settled: Vec<AgentId> = self
            .node
            .pending_request_details()
            .map(|pending| pending.request.requester)
            .filter(|id| self.trust.get(id).is_some())
            .collect();
        if !settled.is_empty() {
            for id in &settled {
                self.node.take_pending_request(id);
            }
            self.pending_changed(now);
        }
        Response::TrustPending {
            requests: self.node.pending_requests(now),
        }
    }

    /// Trusts a requester with the granted policy and a free name, stores
    /// where its request came from as its endpoint, and starts the handshake
    /// at once. The operator's and the auto-approval's path.
    fn approve(
        &mut self,
        now: Instant,
        id: AgentId,
        name: Option<String>,
        allow: Option<Policy>,
    ) -> Result<TrustedPeer, String> {
        let pending = self
            .node
            .pending_request_details()
            .find(|pending| pending.request.requester == id)
            .cloned()
            .ok_or_else(|| {
                format!("no pending trust request from {id}; see `agentnet trust pending`")
            })?;
        let granted =
            granted_policy(&pending.request.requested, allow).map_err(|e| e.to_string())?;
        let own = self.own_id;
        // A relayed request came from the rendezvous, not the requester: then
        // the node finds the requester through the rendezvous.
        let endpoint = (!pending.via_relay).then_some(pending.from);
        let claimed = pending.request.name.as_str();
        let entry = self
            .options
            .state
            .edit_trust(|store| {
                let entry = TrustEntry::trusted(
                    id,
                    approval_name(store, &id, name.as_deref(), claimed)?,
                    endpoint.map(|endpoint| endpoint.to_string()),
                    granted,
                    store.get(&id).map_or_else(unix_now, |e| e.added_unix),
                );
                store.upsert(&own, entry.clone())?;
                Ok(entry)
            })
            .map_err(|e| e.to_string())?;
        self.node.take_pending_request(&id);
        self.save_pending(now);
        self.apply_entry(now, &entry, endpoint, true);
        if endpoint.is_none() {
            self.node.connect(now, &id);
        }
        self.remember(entry.clone());
        tracing::info!(
            peer = %entry.name,
            %id,
            allow = %entry.allow,
            endpoint = ?endpoint,
            "trust request approved; connecting"
        );
        Ok(self.trusted_peer(entry))
    }

    fn deny(&mut self, now: Instant, id: AgentId) -> Result<Response, String> {
        let pending = self
            .node
            .take_pending_request(&id)
            .ok_or_else(|| format!("no pending trust request from {id}"))?;
        self.save_pending(now);
        tracing::info!(%id, claimed = %Untrusted(&pending.request.name), "trust request denied");
        Ok(Response::TrustDenied {
            id,
            name: pending.request.name,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_beyond_the_clock_is_never_due() {
        let now = Instant::now();
        assert_eq!(
            expiry_deadline(now, 1_000, 1_060),
            Some(now + Duration::from_secs(60))
        );
        assert_eq!(expiry_deadline(now, 1_000, 10), Some(now));
        // A TTL of u64::MAX seconds once overflowed the clock and panicked
        // the event loop.
        assert_eq!(expiry_deadline(now, 1_000, u64::MAX), None);
    }
}
