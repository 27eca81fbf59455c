//! The control protocol between the CLI and the daemon.
//!
//! Transport: a Unix stream socket (default `STATE_DIR/agentnet.sock`, mode
//! 0660). Framing: JSON lines, one request object per line, answered by one
//! response object per line, in order; a client may send several requests on
//! one connection.
//!
//! Requests carry their kind in `"cmd"`:
//!
//! ```text
//! {"cmd":"hello"}
//! {"cmd":"status"}
//! {"cmd":"trust_add","id":"<agent id>","name":"bob","endpoint":"host:7400","allow":"tcp:80,icmp"}
//! {"cmd":"trust_list"}
//! {"cmd":"trust_remove","peer":"<agent id or name>"}
//! {"cmd":"trust_request","id":"<agent id>","justification":"why","allow":"tcp:8080","endpoint":"host:7400","name":"bob","endorsement":"<token>"}
//! {"cmd":"trust_pending"}
//! {"cmd":"trust_approve","id":"<agent id>","name":"alice","allow":"tcp:8080"}
//! {"cmd":"trust_deny","id":"<agent id>"}
//! {"cmd":"reload_attachments"}
//! {"cmd":"serve_add","port":8000,"mode":"http","target":"127.0.0.1:8000"}
//! {"cmd":"serve_list"}
//! {"cmd":"serve_off","port":8000}
//! {"cmd":"advertise_add","kind":"mcp","port":8000,"path":"/mcp","name":"notes"}
//! {"cmd":"advertise_list"}
//! {"cmd":"advertise_off","kind":"mcp","port":8000}
//! {"cmd":"services"}
//! {"cmd":"down"}
//! {"cmd":"ping","peer":"<name, agent id or address>","timeout_ms":2000}
//! ```
//!
//! (`endpoint` and `allow` of `trust_add` are optional; `allow` defaults to
//! `"all"`. In `trust_request` only `id` and `justification` are required,
//! `allow` being the ports asked for; in `trust_approve`, `name` and `allow`
//! default to the claimed name and the requested ports.) Each response is an
//! object with exactly one key naming its kind:
//!
//! ```text
//! {"hello":{"pid":..,"id":..,"address":..,"name":..,"network":..,"interface":..,"port":..,"mtu":..,"state_dir":..,"version":..}}
//! {"status":{ NodeStatus fields.., "interface":..,"port":..,"pid":..,"name":..,"network":..,"uptime_s":.. }}
//! {"trust_added":{"peer":{TrustEntry fields.., "address":..},"change":"added"|"updated"}}
//! {"trust_list":{"peers":[{TrustEntry fields.., "address":..}, ..]}}
//! {"trust_removed":{"peer":{TrustEntry fields.., "address":..}}}
//! {"trust_request_sent":{"peer":{TrustEntry fields.., "address":..},"to":"host:port"|null,"rendezvous":0}}
//! {"trust_pending":{"requests":[{"id":..,"name":..,"justification":..,"requested":..,"age_s":..,"from":..,"endorsed_by":..}, ..]}}
//! {"trust_approved":{"peer":{TrustEntry fields.., "address":..}}}
//! {"trust_denied":{"id":..,"name":..}}
//! {"attachments_reloaded":{"attachments":[{"target":{"netns":..}|{"pid":..},"address":..,"hosts_file":..,"note":..}, ..]}}
//! {"serving":{"port":..,"mode":"http"|"tcp","target":..,"listening":[..]}}
//! {"serve_list":{"services":[{"port":..,"mode":..,"target":..,"listening":[..],"problem":..}, ..]}}
//! {"serve_off":{"port":..,"mode":..,"target":..}}
//! {"advertised":{"kind":..,"port":..,"path":..,"name":..,"source":"advertise"|"serve","advertised":true|false}}
//! {"advertise_list":{"services":[{"kind":..,"port":..,"path":..,"name":..,"source":..,"advertised":..}, ..]}}
//! {"advertise_off":{"kind":..,"port":..,"path":..,"name":..}}
//! {"services":{"services":[{"peer":..,"peer_id":..,"address":..,"address4":..,"url":..,"from_peer":{"kind":..,"port":..,"path":..,"name":..},"last_seen_unix":..,"last_seen_age_s":..,"session_up":..}, ..]}}
//! {"stopping":{"pid":..}}
//! {"ping":{"name":..,"id":..,"address":..,"sent_on":{"path":"direct"|"relay","via":..},"reply":{"rtt_ms":..,"from":{..}}|null}}
//! {"error":"human-readable message"}
//! ```

#![forbid(unsafe_code)]

pub mod ping;
pub mod services;

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::address::{NetworkId, NodePrefix, agent_address4};
use crate::core::api::Ipv4Route;
use crate::core::identity::AgentId;
use crate::core::policy::Policy;
use crate::core::trust::pending::PendingStatus;
use crate::core::trust::store::TrustEntry;
use crate::state::TrustChange;

/// Longest request line the daemon accepts.
pub const MAX_REQUEST_LEN: usize = 64 * 1024;
/// Longest response line the client accepts (a status with many peers).
pub const MAX_RESPONSE_LEN: usize = 16 * 1024 * 1024;
/// How long the client waits for a response: longer than the longest
/// wait a request asks the daemon for ([`ping::MAX_PING_TIMEOUT`]), so a
/// ping that gets no reply is answered "no reply", not taken for a daemon
/// that hangs.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);

/// A request from the CLI to the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is the daemon up, and who is it? Answered with [`Response::Hello`].
    Hello {},
    /// The node's full state. Answered with [`Response::Status`].
    Status {},
    /// Trust a peer (or update it): store it and apply it to the node.
    TrustAdd {
        /// The peer's agent ID.
        id: AgentId,
        /// Its local name.
        name: String,
        /// Optional underlay endpoint, `HOST:PORT` (an update without one
        /// keeps the stored endpoint).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// What it may open towards this agent (a new peer without one may
        /// open anything, an update without one keeps the stored policy).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow: Option<Policy>,
    },
    /// The trust store's peers. Answered with [`Response::TrustList`].
    TrustList {},
    /// Stop trusting a peer, named by agent ID or local name.
    TrustRemove {
        /// Agent ID or local name.
        peer: String,
    },
    /// Ask an agent for trust: store it as "requested" (this agent trusts
    /// it already) and send it a sealed trust request. Answered with
    /// [`Response::TrustRequestSent`].
    TrustRequest {
        /// The target's agent ID.
        id: AgentId,
        /// Local name for the target [default: `peer-` and its ID's start].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// Why this agent asks (at most 1 KiB), shown to the target's operator.
        justification: String,
        /// The ports this agent asks to open towards the target.
        #[serde(default)]
        allow: Policy,
        /// The target's underlay endpoint, `HOST:PORT`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        /// A fleet endorsement token for this agent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endorsement: Option<String>,
    },
    /// Trust requests waiting for approval. Answered with
    /// [`Response::TrustPending`].
    TrustPending {},
    /// Approve a pending request: trust the requester and connect to it.
    /// Answered with [`Response::TrustApproved`].
    TrustApprove {
        /// The requester's agent ID.
        id: AgentId,
        /// Local name [default: the claimed name, made a unique DNS label].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// What it may open [default: what it asked for; never wider].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        allow: Option<Policy>,
    },
    /// Drop a pending request; the requester is not told. Answered with
    /// [`Response::TrustDenied`].
    TrustDeny {
        /// The requester's agent ID.
        id: AgentId,
    },
    /// Re-read `attachments.json` (after `attach`/`detach`) and update the
    /// names in the attached namespaces. Answered with
    /// [`Response::AttachmentsReloaded`].
    ReloadAttachments {},
    /// Send one overlay-level path ping to a peer along its current path.
    /// Answered with [`Response::Ping`] when the pong arrives or the timeout
    /// passes (`reply` is then null).
    Ping {
        /// Local name, agent ID or overlay address of the peer.
        peer: String,
        /// How long to wait for the pong [default: 2000, at most 30000].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Publish a local service on the overlay addresses (`agentnet serve`).
    /// Answered with [`Response::Serving`].
    ServeAdd(crate::serve::ServeSpec),
    /// The served ports. Answered with [`Response::ServeList`].
    ServeList {},
    /// Stop serving a port. Answered with [`Response::ServeOff`].
    ServeOff {
        /// The overlay port.
        port: u16,
    },
    /// Advertise a service to trusted peers (`agentnet advertise`); the
    /// same `KIND:PORT` again replaces its path and name. Answered with
    /// [`Response::Advertised`].
    AdvertiseAdd(crate::core::services::Service),
    /// The advertised set (declared and served). Answered with
    /// [`Response::AdvertiseList`].
    AdvertiseList {},
    /// Stop advertising `KIND:PORT`. Answered with [`Response::AdvertiseOff`].
    AdvertiseOff {
        /// The service's kind.
        kind: crate::core::services::ServiceKind,
        /// Its port.
        port: u16,
    },
    /// The services trusted peers advertised here. Answered with
    /// [`Response::Services`].
    Services {},
    /// Stop the daemon. Answered with [`Response::Stopping`] before it exits.
    Down {},
}

/// The daemon's answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Who the daemon is.
    Hello(DaemonInfo),
    /// The node's status: `NodeStatus` fields plus the shell's own
    /// (`interface`, `port`, `pid`, `name`, `network`, `uptime_s`). Kept as
    /// JSON so the CLI shows fields it does not know yet.
    Status(serde_json::Value),
    /// A peer was added or updated.
    TrustAdded {
        /// The stored entry.
        peer: TrustedPeer,
        /// Whether it was new.
        change: TrustChange,
    },
    /// The trust store.
    TrustList {
        /// Its peers, in the order they were added.
        peers: Vec<TrustedPeer>,
    },
    /// A peer was removed; its sessions are gone.
    TrustRemoved {
        /// The entry that was removed.
        peer: TrustedPeer,
    },
    /// A trust request was sent.
    TrustRequestSent {
        /// The target's entry, as stored here.
        peer: TrustedPeer,
        /// The endpoint the sealed request went to, if one is known.
        to: Option<SocketAddr>,
        /// Through how many registered rendezvous servers it also went.
        rendezvous: usize,
    },
    /// The trust requests waiting for approval, oldest first.
    TrustPending {
        /// The requests.
        requests: Vec<PendingStatus>,
    },
    /// A request was approved; the handshake is under way.
    TrustApproved {
        /// The requester's new entry.
        peer: TrustedPeer,
    },
    /// A request was dropped.
    TrustDenied {
        /// The requester.
        id: AgentId,
        /// The name it claimed.
        name: String,
    },
    /// The attachments as the daemon now knows them.
    AttachmentsReloaded {
        /// Each attached namespace and where its names go.
        attachments: Vec<crate::attach::AttachmentNames>,
    },
    /// The outcome of one ping.
    Ping(crate::control::ping::PingOutcome),
    /// A port is served now.
    Serving(crate::serve::ServeStatus),
    /// The served ports.
    ServeList {
        /// By port.
        services: Vec<crate::serve::ServeStatus>,
    },
    /// A port is no longer served.
    ServeOff(crate::serve::ServeSpec),
    /// A service is advertised (or left out: `advertised` false).
    Advertised(crate::state::advertised::AdvertisedStatus),
    /// The advertised set, in the order peers get it.
    AdvertiseList {
        /// Declared services first, then served ports.
        services: Vec<crate::state::advertised::AdvertisedStatus>,
    },
    /// A service is no longer advertised.
    AdvertiseOff(crate::core::services::Service),
    /// What trusted peers advertised.
    Services {
        /// One entry per service, by peer.
        services: Vec<services::PeerService>,
    },
    /// The daemon is shutting down.
    Stopping {
        /// Its PID, to wait for.
        pid: u32,
    },
    /// The request failed.
    Error(String),
}

/// Identity and configuration of a running daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    /// The daemon's PID.
    pub pid: u32,
    /// This agent's ID.
    pub id: AgentId,
    /// This agent's overlay address.
    pub address: Ipv6Addr,
    /// This agent's IPv4 overlay address (`None`: IPv4 is off).
    #[serde(default)]
    pub address4: Option<Ipv4Addr>,
    /// This agent's name.
    pub name: String,
    /// The overlay network's name.
    pub network: String,
    /// The TUN interface.
    pub interface: String,
    /// The UDP port.
    pub port: u16,
    /// The tunnel MTU.
    pub mtu: u16,
    /// The state directory.
    pub state_dir: PathBuf,
    /// The daemon's version.
    pub version: String,
}

/// A trust-store entry with the peer's overlay address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustedPeer {
    /// The stored entry.
    #[serde(flatten)]
    pub entry: TrustEntry,
    /// The peer's agent address in this network.
    pub address: Ipv6Addr,
    /// The peer's IPv4 address, when IPv4 to it is routed here.
    #[serde(default)]
    pub address4: Option<Ipv4Addr>,
    /// The agent that holds the peer's derived IPv4 address here instead
    /// (this one, or a peer trusted earlier): the peer is reachable over
    /// IPv6 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address4_taken_by: Option<AgentId>,
}

impl TrustedPeer {
    /// Adds the peer's addresses in `network` to a trust entry (IPv4 as
    /// derived; [`Self::with_ipv4_route`] says whether it is routed).
    pub fn new(entry: TrustEntry, network: NetworkId) -> Self {
        let address = NodePrefix::of_agent(network, &entry.id).agent_address();
        let address4 = Some(agent_address4(network, &entry.id));
        Self {
            entry,
            address,
            address4,
            address4_taken_by: None,
        }
    }

    /// Sets the IPv4 route as the node decided it.
    pub fn with_ipv4_route(mut self, route: Ipv4Route) -> Self {
        (self.address4, self.address4_taken_by) = match route {
            Ipv4Route::Routed(address) => (Some(address), None),
            Ipv4Route::Off => (None, None),
            Ipv4Route::TakenBy(holder) => (None, Some(holder)),
        };
        self
    }

    /// The trust store's entries as the daemon would route them, without
    /// one (the CLI while agentnet is down): a derived IPv4 address goes to
    /// the first entry that has it, unless it is this agent's own.
    pub fn list_offline(
        entries: Vec<TrustEntry>,
        network: NetworkId,
        own: &AgentId,
        ipv4: bool,
    ) -> Vec<Self> {
        let mut holders: HashMap<Ipv4Addr, AgentId> = HashMap::new();
        if ipv4 {
            holders.insert(agent_address4(network, own), *own);
        }
        entries
            .into_iter()
            .map(|entry| {
                let derived = agent_address4(network, &entry.id);
                let route = if !ipv4 {
                    Ipv4Route::Off
                } else {
                    match holders.get(&derived) {
                        Some(holder) if *holder != entry.id => Ipv4Route::TakenBy(*holder),
                        _ => {
                            holders.insert(derived, entry.id);
                            Ipv4Route::Routed(derived)
                        }
                    }
                };
                Self::new(entry, network).with_ipv4_route(route)
            })
            .collect()
    }
}

/// Errors talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing listens on the socket.
    #[error("agentnet is not running (nothing answers on {})", socket.display())]
    NotRunning {
        /// The control socket path.
        socket: PathBuf,
    },
    /// The socket exists but may not be opened.
    #[error("permission denied on {}: run as root or as a member of the socket's group", socket.display())]
    PermissionDenied {
        /// The control socket path.
        socket: PathBuf,
    },
    /// Reading or writing the socket failed.
    #[error("control socket {}: {source}", socket.display())]
    Io {
        /// The control socket path.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The daemon did not answer in time (stopped or overloaded?).
    #[error("the daemon on {} did not answer within {} s", socket.display(), CLIENT_TIMEOUT.as_secs())]
    Timeout {
        /// The control socket path.
        socket: PathBuf,
    },
    /// The daemon closed the connection without answering.
    #[error("the daemon closed the connection without answering")]
    Closed,
    /// The daemon's answer is not a valid response.
    #[error("the daemon sent an unreadable response: {0}")]
    BadResponse(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Daemon(String),
}

/// A blocking connection to the daemon's control socket (the CLI side).
#[derive(Debug)]
pub struct ControlClient {
    socket: PathBuf,
    stream: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the daemon. A missing socket file or a refused connection
    /// is [`ControlError::NotRunning`].
    pub fn connect(socket: &Path) -> Result<Self, ControlError> {
        let stream = UnixStream::connect(socket).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ControlError::NotRunning {
                    socket: socket.to_path_buf(),
                }
            }
            io::ErrorKind::PermissionDenied => ControlError::PermissionDenied {
                socket: socket.to_path_buf(),
            },
            _ => ControlError::Io {
                socket: socket.to_path_buf(),
                source,
            },
        })?;
        let io_error = |source| ControlError::Io {
            socket: socket.to_path_buf(),
            source,
        };
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io_error)?;
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io_error)?;
        Ok(Self {
            socket: socket.to_path_buf(),
            stream: BufReader::new(stream),
        })
    }

    /// Sends one request and reads its response. An error response becomes
    /// [`ControlError::Daemon`].
    pub fn request(&mut self, request: &Request) -> Result<Response, ControlError> {
        let mut line =
            serde_json::to_vec(request).map_err(|e| ControlError::BadResponse(e.to_string()))?;
        line.push(b'\n');
        let io_error = |source| ControlError::Io {
            socket: self.socket.clone(),
            source,
        };
        self.stream.get_mut().write_all(&line).map_err(io_error)?;
        let mut answer = Vec::new();
        (&mut self.stream)
            .take(MAX_RESPONSE_LEN as u64)
            .read_until(b'\n', &mut answer)
            .map_err(|source| match source.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::Timeout {
                    socket: self.socket.clone(),
                },
                _ => ControlError::Io {
                    socket: self.socket.clone(),
                    source,
                },
            })?;
        if answer.is_empty() {
            return Err(ControlError::Closed);
        }
        match serde_json::from_slice(&answer) {
            Ok(Response::Error(message)) => Err(ControlError::Daemon(message)),
            Ok(response) => Ok(response),
            Err(e) => Err(ControlError::BadResponse(e.to_string())),
        }
    }

    /// Connects, sends one request and returns its response.
    pub fn call(socket: &Path, request: &Request) -> Result<Response, ControlError> {
        Self::connect(socket)?.request(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::trust::store::TrustState;

    fn id() -> AgentId {
        Identity::from_secret_bytes(&[1; 32])
            .expect("key")
            .agent_id()
    }

    #[test]
    fn requests_use_a_cmd_tag() {
        assert_eq!(
            serde_json::to_string(&Request::Status {}).expect("json"),
            r#"{"cmd":"status"}"#
        );
        let text = format!(r#"{{"cmd":"trust_add","id":"{}","name":"bob"}}"#, id());
        let request: Request = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            request,
            Request::TrustAdd {
                id: id(),
                name: "bob".into(),
                endpoint: None,
                allow: None
            }
        );
    }

    #[test]
    fn a_misspelt_field_is_refused_not_left_at_its_default() {
        // `alow` for `allow`: read as "no policy given", it would trust the
        // peer on every port.
        let text = format!(
            r#"{{"cmd":"trust_add","id":"{}","name":"bob","alow":"tcp:22"}}"#,
            id()
        );
        let error = serde_json::from_str::<Request>(&text).expect_err("refused");
        assert!(error.to_string().contains("alow"), "{error}");
        let text = format!(r#"{{"cmd":"trust_approve","id":"{}","allw":"icmp"}}"#, id());
        assert!(serde_json::from_str::<Request>(&text).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).expect("parses"),
            Request::Status {}
        );
        // Commands without arguments too: serde ignores unknown fields of
        // a unit variant, so they are empty struct variants.
        for cmd in [
            "hello",
            "status",
            "trust_list",
            "trust_pending",
            "reload_attachments",
            "serve_list",
            "advertise_list",
            "services",
            "down",
        ] {
            let bare = format!(r#"{{"cmd":"{cmd}"}}"#);
            assert!(serde_json::from_str::<Request>(&bare).is_ok(), "{cmd}");
            let text = format!(r#"{{"cmd":"{cmd}","force":true}}"#);
            let error = serde_json::from_str::<Request>(&text).expect_err(cmd);
            assert!(error.to_string().contains("force"), "{cmd}: {error}");
        }
        let text =
            r#"{"cmd":"serve_add","port":8000,"mode":"http","target":"127.0.0.1:8000","x":1}"#;
        assert!(serde_json::from_str::<Request>(text).is_err());
    }

    #[test]
    fn trust_request_commands_fill_in_their_defaults() {
        let text = format!(
            r#"{{"cmd":"trust_request","id":"{}","justification":"why"}}"#,
            id()
        );
        let request: Request = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            request,
            Request::TrustRequest {
                id: id(),
                name: None,
                justification: "why".into(),
                allow: Policy::All,
                endpoint: None,
                endorsement: None,
            }
        );
        let text = format!(r#"{{"cmd":"trust_approve","id":"{}"}}"#, id());
        let request: Request = serde_json::from_str(&text).expect("parses");
        assert_eq!(
            request,
            Request::TrustApprove {
                id: id(),
                name: None,
                allow: None
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::TrustPending {}).expect("json"),
            r#"{"cmd":"trust_pending"}"#
        );
    }

    #[test]
    fn serve_requests_carry_port_mode_and_target() {
        let spec =
            crate::serve::ServeSpec::new(8000, crate::serve::ServeMode::Http, None).expect("spec");
        assert_eq!(
            serde_json::to_string(&Request::ServeAdd(spec)).expect("json"),
            r#"{"cmd":"serve_add","port":8000,"mode":"http","target":"127.0.0.1:8000"}"#
        );
        let request: Request =
            serde_json::from_str(r#"{"cmd":"serve_off","port":8000}"#).expect("parses");
        assert_eq!(request, Request::ServeOff { port: 8000 });
    }

    #[test]
    fn advertise_requests_carry_kind_port_path_and_name() {
        let service = crate::core::services::Service::parse("mcp:8000", Some("/mcp".into()), None)
            .expect("service");
        assert_eq!(
            serde_json::to_string(&Request::AdvertiseAdd(service)).expect("json"),
            r#"{"cmd":"advertise_add","kind":"mcp","port":8000,"path":"/mcp"}"#
        );
        let request: Request =
            serde_json::from_str(r#"{"cmd":"advertise_off","kind":"a2a","port":9999}"#)
                .expect("parses");
        assert_eq!(
            request,
            Request::AdvertiseOff {
                kind: "a2a".parse().expect("kind"),
                port: 9999
            }
        );
        assert!(
            serde_json::from_str::<Request>(r#"{"cmd":"advertise_add","kind":"M","port":1}"#)
                .is_err()
        );
    }

    #[test]
    fn errors_are_a_single_error_key() {
        let text = serde_json::to_string(&Response::Error("nope".into())).expect("json");
        assert_eq!(text, r#"{"error":"nope"}"#);
        assert_eq!(
            serde_json::to_string(&Response::Stopping { pid: 7 }).expect("json"),
            r#"{"stopping":{"pid":7}}"#
        );
    }

    #[test]
    fn trusted_peer_flattens_the_entry_and_round_trips() {
        let entry = TrustEntry {
            id: id(),
            name: "bob".into(),
            endpoint: Some("10.0.0.2:7400".into()),
            allow: "tcp:80".parse().expect("policy"),
            state: TrustState::Trusted,
            added_unix: 42,
            expires_unix: None,
        };
        let peer = TrustedPeer::new(entry, NetworkId::from_name("agentnet"));
        let response = Response::TrustList { peers: vec![peer] };
        let text = serde_json::to_string(&response).expect("json");
        assert!(text.contains(r#""name":"bob""#), "{text}");
        assert!(text.contains(r#""address":"fd"#), "{text}");
        let back: Response = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, response);
    }
}
