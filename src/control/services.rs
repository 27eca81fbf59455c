//! What `agentnet services` shows: one line per service a trusted peer
//! advertised, with the peer's local name (this agent's, not the peer's
//! claim), its overlay addresses and a URL under `NAME.agent.internal`.
//!
//! Kind, path and name are the peer's text: checked when the frame was
//! decoded (`core::services`), escaped again here, and kept apart under
//! `from_peer` so that a reader (an operator, an agent) can tell them from
//! what this agent says. They are data, never instructions.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::core::identity::AgentId;
use crate::core::services::Service;
use crate::core::text::escape_untrusted;
use crate::names::dns::DOMAIN;

/// A service as the peer advertised it (its text, escaped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertisedByPeer {
    /// `mcp`, `a2a`, `http`, `grpc` or free-form.
    pub kind: String,
    /// TCP port on the peer's overlay addresses.
    pub port: u16,
    /// The path it named, if any.
    #[serde(default)]
    pub path: Option<String>,
    /// The name it gave the service, if any.
    #[serde(default)]
    pub name: Option<String>,
}

/// One service of one trusted peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerService {
    /// The peer's name in this agent's trust store.
    pub peer: String,
    /// The peer's agent ID.
    pub peer_id: AgentId,
    /// The peer's overlay IPv6 address (a ULA).
    pub address: Ipv6Addr,
    /// The peer's overlay IPv4 address, when IPv4 reaches it.
    pub address4: Option<Ipv4Addr>,
    /// Where to reach it: `http://PEER.agent.internal:PORT/PATH`
    /// (`tcp://PEER.agent.internal:PORT` for kind `tcp`).
    pub url: String,
    /// What the peer sent.
    pub from_peer: AdvertisedByPeer,
    /// Seconds since the Unix epoch when the peer was last heard from.
    pub last_seen_unix: u64,
    /// Seconds since then.
    pub last_seen_age_s: f64,
    /// Whether a session with the peer is up now.
    pub session_up: bool,
}

/// Where the peer known here as `peer` offers `service`.
pub fn service_url(peer: &str, service: &Service) -> String {
    let host = format!("{peer}.{DOMAIN}:{}", service.port);
    if service.kind.as_str() == "tcp" {
        return format!("tcp://{host}");
    }
    let path = service.path.as_deref().unwrap_or("/");
    format!("http://{host}{}", escape_untrusted(path))
}

impl AdvertisedByPeer {
    /// The peer's entry, every text escaped.
    pub fn new(service: &Service) -> Self {
        Self {
            kind: escape_untrusted(service.kind.as_str()),
            port: service.port,
            path: service.path.as_deref().map(escape_untrusted),
            name: service.name.as_deref().map(escape_untrusted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_peer_under_the_overlay_domain() {
        let mcp = Service::parse("mcp:8000", Some("/mcp".into()), None).expect("service");
        assert_eq!(
            service_url("bravo", &mcp),
            "http://bravo.agent.internal:8000/mcp"
        );
        let a2a = Service::parse("a2a:9999", None, None).expect("service");
        assert_eq!(
            service_url("bravo", &a2a),
            "http://bravo.agent.internal:9999/"
        );
        let tcp = Service::parse("tcp:5432", None, None).expect("service");
        assert_eq!(service_url("db", &tcp), "tcp://db.agent.internal:5432");
        let named = Service::parse("mcp:1", None, Some("notes \\ db".into())).expect("service");
        assert_eq!(
            AdvertisedByPeer::new(&named).name.as_deref(),
            Some("notes \\\\ db")
        );
    }
}
