//! What the control server asks of the event loop: each request from the
//! control socket, validated (names checked, endpoints resolved off the
//! loop), as a [`Command`] with the channel its answer goes back on.

use std::net::SocketAddr;

use tokio::sync::oneshot;

use crate::control::{Request, Response};
use crate::core::identity::AgentId;
use crate::core::policy::Policy;
use crate::core::trust::request::{Endorsement, check_justification};
use crate::core::trust::store::{TrustUpdate, validate_name};
use crate::state::fleet::parse_endorsement_token;
use crate::sys::udp::resolve_endpoint;

/// A request as the event loop handles it: validated, endpoint resolved.
#[derive(Debug)]
pub(crate) enum Command {
    /// See [`Request::Hello`].
    Hello,
    /// See [`Request::Status`].
    Status,
    /// See [`Request::TrustAdd`].
    TrustAdd {
        /// What to store (merged into the stored entry, if any).
        update: TrustUpdate,
        /// The endpoint the request named, resolved.
        endpoint: Option<SocketAddr>,
    },
    /// See [`Request::TrustList`].
    TrustList,
    /// See [`Request::TrustRemove`].
    TrustRemove {
        /// Agent ID or local name.
        peer: String,
    },
    /// See [`Request::Down`].
    Down,
    /// See [`Request::ReloadAttachments`].
    ReloadAttachments,
    /// `agentnet serve`: see [`Request::ServeAdd`], [`Request::ServeList`]
    /// and [`Request::ServeOff`].
    Serve(Request),
    /// `agentnet advertise`: see [`Request::AdvertiseAdd`],
    /// [`Request::AdvertiseList`] and [`Request::AdvertiseOff`].
    Advertise(Request),
    /// See [`Request::Services`].
    Services,
    /// The trust-request workflow: see [`TrustOp`].
    TrustOp(TrustOp),
    /// See [`Request::Ping`]: send the ping; the pong goes to `pong`.
    Ping {
        /// Local name, agent ID or overlay address.
        peer: String,
        /// Where the pong goes.
        pong: oneshot::Sender<crate::control::ping::PingReply>,
    },
}

/// A command and where its answer goes.
#[derive(Debug)]
pub(crate) struct ControlRequest {
    /// What to do.
    pub(crate) command: Command,
    /// Where the event loop sends the answer.
    pub(crate) reply: oneshot::Sender<Response>,
}

/// A trust request to send, validated, its endpoint resolved.
#[derive(Debug)]
pub(crate) struct OutgoingRequest {
    /// The target.
    pub(crate) id: AgentId,
    /// Local name for the target.
    pub(crate) name: Option<String>,
    /// Why we ask.
    pub(crate) justification: String,
    /// Ports we ask for.
    pub(crate) allow: Policy,
    /// The endpoint as given and as resolved.
    pub(crate) endpoint: Option<(String, SocketAddr)>,
    /// A fleet endorsement to carry.
    pub(crate) endorsement: Option<Endorsement>,
}

/// A trust-request command, validated.
#[derive(Debug)]
pub(crate) enum TrustOp {
    /// See [`Request::TrustRequest`] (boxed: by far the largest).
    Request(Box<OutgoingRequest>),
    /// See [`Request::TrustPending`].
    Pending,
    /// See [`Request::TrustApprove`].
    Approve {
        /// The requester.
        id: AgentId,
        /// Local name to give it.
        name: Option<String>,
        /// Policy to grant.
        allow: Option<Policy>,
    },
    /// See [`Request::TrustDeny`].
    Deny {
        /// The requester.
        id: AgentId,
    },
}

/// Validates a trust-request command and resolves its endpoint (blocking
/// DNS, off the event loop).
pub(crate) async fn trust_op_of(request: Request) -> Result<TrustOp, String> {
    Ok(match request {
        Request::TrustRequest {
            id,
            name,
            justification,
            allow,
            endpoint,
            endorsement,
        } => {
            if let Some(name) = &name {
                validate_name(name).map_err(|e| e.to_string())?;
            }
            check_justification(&justification).map_err(|e| e.to_string())?;
            let endorsement = endorsement
                .map(|token| parse_endorsement_token(&token))
                .transpose()
                .map_err(|e| e.to_string())?;
            let endpoint = match endpoint {
                Some(text) => {
                    let lookup = text.clone();
                    let resolved = tokio::task::spawn_blocking(move || resolve_endpoint(&lookup))
                        .await
                        .map_err(|e| format!("endpoint resolution failed: {e}"))?
                        .map_err(|e| e.to_string())?;
                    Some((text, resolved))
                }
                None => None,
            };
            TrustOp::Request(Box::new(OutgoingRequest {
                id,
                name,
                justification,
                allow,
                endpoint,
                endorsement,
            }))
        }
        Request::TrustPending {} => TrustOp::Pending,
        Request::TrustApprove { id, name, allow } => {
            if let Some(name) = &name {
                validate_name(name).map_err(|e| e.to_string())?;
            }
            TrustOp::Approve { id, name, allow }
        }
        Request::TrustDeny { id } => TrustOp::Deny { id },
        other => return Err(format!("not a trust-request command: {other:?}")),
    })
}
