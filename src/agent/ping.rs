//! `agentnet ping` in the daemon. The event loop sends the ping through the
//! node and keeps the waiting client's channel until the pong comes back as
//! [`Event::PingReply`]; the client's connection task does the waiting (with
//! its timeout), so the loop holds no timer for it.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::commands::{Command, ControlRequest};
use crate::control::Response;
use crate::control::ping::{
    DEFAULT_PING_TIMEOUT, MAX_PING_TIMEOUT, PathView, PingOutcome, PingReply, find_peer,
};
use crate::core::address::{NetworkId, NodePrefix};
use crate::core::api::Event;
use crate::core::identity::AgentId;
use crate::core::node::Node;
use crate::core::trust::store::TrustStore;

/// Pings waiting for their pong at once; more are refused.
const MAX_WAITING: usize = 256;

struct Waiting {
    peer: AgentId,
    ping: u64,
    reply: oneshot::Sender<PingReply>,
}

/// Pings sent for clients, waiting for their pongs.
#[derive(Default)]
pub(crate) struct PendingPings {
    waiting: Vec<Waiting>,
}

impl std::fmt::Debug for PendingPings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPings")
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

impl PendingPings {
    /// Sends a ping to the peer `text` names; the pong goes to `reply`.
    /// Answers at once with the outcome so far (no reply yet) or an error.
    pub(crate) fn start(
        &mut self,
        node: &mut Node,
        now: Instant,
        trust: &TrustStore,
        network: NetworkId,
        text: &str,
        reply: oneshot::Sender<PingReply>,
    ) -> Response {
        let ipv4_holder = |address| node.peer_of_address(std::net::IpAddr::V4(address));
        let Some(entry) = find_peer(trust, network, text, ipv4_holder) else {
            return Response::Error(format!(
                "no trusted peer is called {text:?} (a local name, agent ID or overlay address)"
            ));
        };
        // Clients that gave up have closed their end.
        self.waiting.retain(|waiting| !waiting.reply.is_closed());
        if self.waiting.len() >= MAX_WAITING {
            return Response::Error("too many pings in flight; try again".to_string());
        }
        let (ping, path) = match node.ping(now, &entry.id) {
            Ok(sent) => sent,
            Err(error) => return Response::Error(format!("{}: {error}", entry.name)),
        };
        self.waiting.push(Waiting {
            peer: entry.id,
            ping,
            reply,
        });
        Response::Ping(PingOutcome {
            name: entry.name.clone(),
            id: entry.id,
            address: NodePrefix::of_agent(network, &entry.id).agent_address(),
            sent_on: PathView::from(path),
            reply: None,
        })
    }

    /// Hands a pong to the client waiting for it.
    pub(crate) fn on_event(&mut self, event: &Event) {
        let Event::PingReply {
            id,
            ping,
            rtt,
            path,
        } = event
        else {
            return;
        };
        if let Some(position) = self
            .waiting
            .iter()
            .position(|waiting| waiting.peer == *id && waiting.ping == *ping)
        {
            let waiting = self.waiting.swap_remove(position);
            // The client may have timed out meanwhile.
            let _ = waiting.reply.send(PingReply {
                rtt_ms: rtt.as_secs_f64() * 1000.0,
                from: PathView::from(*path),
            });
        }
    }
}

/// Serves one `ping` request on a client connection: has the event loop
/// send the ping, then waits for the pong up to the timeout.
pub(crate) async fn answer(
    peer: String,
    timeout_ms: Option<u64>,
    requests: &mpsc::Sender<ControlRequest>,
) -> Response {
    let timeout = timeout_ms
        .map_or(DEFAULT_PING_TIMEOUT, Duration::from_millis)
        .min(MAX_PING_TIMEOUT);
    let (pong, pong_rx) = oneshot::channel();
    let (reply, answer) = oneshot::channel();
    let command = Command::Ping { peer, pong };
    if requests
        .send(ControlRequest { command, reply })
        .await
        .is_err()
    {
        return Response::Error("the daemon is shutting down".to_string());
    }
    let mut outcome = match answer.await {
        Ok(Response::Ping(outcome)) => outcome,
        Ok(other) => return other,
        Err(_) => return Response::Error("the daemon is shutting down".to_string()),
    };
    if let Ok(Ok(reply)) = tokio::time::timeout(timeout, pong_rx).await {
        outcome.reply = Some(reply);
    }
    Response::Ping(outcome)
}
