//! Services an agent advertises to its trusted peers (DESIGN.md §8): what
//! one entry is ([`Service`]: kind, port, optional path and name), the
//! rules every entry obeys wherever it comes from (the operator's command
//! line, the state file, another agent's frame), and the bounds of a set.
//!
//! The set travels in a `Services` control frame
//! (`core::wire::control_frame`) inside the sessions, filtered per peer by
//! the peer's policy (`core::peer::services`); what a peer learned is a
//! [`LearnedServices`].

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::core::identity::AgentId;

/// Most services one agent advertises (and one peer's frame may carry).
pub const MAX_SERVICES: usize = 32;
/// Longest kind (`mcp`, `a2a`, `http`, `grpc` or free-form).
pub const MAX_KIND_LEN: usize = 15;
/// Longest path (`/mcp`, `/.well-known/agent.json`, ...).
pub const MAX_PATH_LEN: usize = 128;
/// Longest service name.
pub const MAX_SERVICE_NAME_LEN: usize = 48;
/// Largest `Services` frame: fits one datagram at the smallest tunnel MTU
/// (1280), so an advertisement is never fragmented.
pub const MAX_SERVICES_FRAME_LEN: usize = 1200;
/// Bytes of a `Services` frame before its entries: type, version,
/// generation (u64), count.
pub const SERVICES_FRAME_HEADER_LEN: usize = 1 + 1 + 8 + 1;
/// The kinds every agent knows by name; others are free-form.
pub const WELL_KNOWN_KINDS: [&str; 4] = ["mcp", "a2a", "http", "grpc"];

/// Why a service, or a set of them, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// KIND is not 1-15 of `a-z`, `0-9`, `-`.
    #[error(
        "bad KIND {0:?}: mcp, a2a, http, grpc or 1-{MAX_KIND_LEN} of a-z, 0-9 and -, e.g. mcp:8000"
    )]
    BadKind(String),
    /// Port 0 or not a number.
    #[error("bad PORT in {0:?}: a port from 1 to 65535, e.g. mcp:8000")]
    BadPort(String),
    /// The text is not `KIND:PORT`.
    #[error("expected KIND:PORT, e.g. mcp:8000 or a2a:9999, not {0:?}")]
    NotKindPort(String),
    /// The path does not start with `/`, is too long or holds characters
    /// a URL cannot hold as they are.
    #[error(
        "bad path {0:?}: it starts with /, has at most {MAX_PATH_LEN} characters and only those a URL holds as they are (printable ASCII without spaces or any of \"<>\\^`{{|}})"
    )]
    BadPath(String),
    /// The name is empty, too long or holds control characters.
    #[error("bad name {0:?}: 1-{MAX_SERVICE_NAME_LEN} printable ASCII characters")]
    BadName(String),
    /// More than [`MAX_SERVICES`] entries.
    #[error("{0} services; at most {MAX_SERVICES} are advertised")]
    TooMany(usize),
    /// The set would not fit one frame.
    #[error("the services take {0} bytes; at most {MAX_SERVICES_FRAME_LEN} fit one advertisement")]
    TooLarge(usize),
}

/// What kind of service: one DNS-label-like token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceKind(String);

impl ServiceKind {
    /// The kind as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceKind {
    type Err = ServiceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let valid = !text.is_empty()
            && text.len() <= MAX_KIND_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(Self(text.to_string()))
        } else {
            Err(ServiceError::BadKind(text.to_string()))
        }
    }
}

impl TryFrom<String> for ServiceKind {
    type Error = ServiceError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<ServiceKind> for String {
    fn from(kind: ServiceKind) -> Self {
        kind.0
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One advertised service: peers reach it at this agent's overlay
/// addresses on `port` (TCP), under `path` for HTTP-based kinds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// What it is (`mcp`, `a2a`, `http`, `grpc`, free-form).
    pub kind: ServiceKind,
    /// The TCP port on the overlay addresses.
    pub port: u16,
    /// The path under which it answers, e.g. `/mcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A name for people and agents, e.g. `notes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Service {
    /// A checked service.
    pub fn new(
        kind: ServiceKind,
        port: u16,
        path: Option<String>,
        name: Option<String>,
    ) -> Result<Self, ServiceError> {
        let service = Self {
            kind,
            port,
            path,
            name,
        };
        service.validate()?;
        Ok(service)
    }

    /// Parses `KIND:PORT` (the command line's form) with a path and name.
    pub fn parse(
        kind_port: &str,
        path: Option<String>,
        name: Option<String>,
    ) -> Result<Self, ServiceError> {
        let (kind, port) = parse_kind_port(kind_port)?;
        Self::new(kind, port, path, name)
    }

    /// Checks every field (a deserialized entry must be checked too).
    pub fn validate(&self) -> Result<(), ServiceError> {
        self.kind.as_str().parse::<ServiceKind>()?;
        if self.port == 0 {
            return Err(ServiceError::BadPort(format!("{}:0", self.kind)));
        }
        if let Some(path) = &self.path {
            check_path(path)?;
        }
        if let Some(name) = &self.name {
            check_name(name)?;
        }
        Ok(())
    }

    /// Bytes this entry takes in a `Services` frame: kind, port, path and
    /// name, each string with a 1-byte length.
    pub fn wire_len(&self) -> usize {
        1 + self.kind.as_str().len()
            + 2
            + 1
            + self.path.as_deref().map_or(0, str::len)
            + 1
            + self.name.as_deref().map_or(0, str::len)
    }

    /// `KIND:PORT`, the entry's key on the command line.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind, self.port)
    }
}

/// Parses `KIND:PORT`.
pub fn parse_kind_port(text: &str) -> Result<(ServiceKind, u16), ServiceError> {
    let (kind, port) = text
        .split_once(':')
        .ok_or_else(|| ServiceError::NotKindPort(text.to_string()))?;
    let kind: ServiceKind = kind.parse()?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| ServiceError::BadPort(text.to_string()))?;
    Ok((kind, port))
}

/// A path is the part of a URL after `host:port` (RFC 3986's characters:
/// printable ASCII except the space, `"`, `<`, `>`, `\`, `^`, the
/// backtick, `{`, `|` and `}`), so that the URL built
/// from it is one, and escaping it for a terminal (a backslash doubled)
/// changes nothing: what `services` shows is what a client asks for.
fn check_path(path: &str) -> Result<(), ServiceError> {
    let valid = path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"<>\\^`{|}".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ServiceError::BadPath(path.to_string()))
    }
}

fn check_name(name: &str) -> Result<(), ServiceError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
    if valid {
        Ok(())
    } else {
        Err(ServiceError::BadName(name.to_string()))
    }
}

/// Bytes a `Services` frame with these entries takes.
pub fn frame_len(services: &[Service]) -> usize {
    SERVICES_FRAME_HEADER_LEN + services.iter().map(Service::wire_len).sum::<usize>()
}

/// Checks a whole set: every entry, the count and the frame size.
pub fn check_set(services: &[Service]) -> Result<(), ServiceError> {
    for service in services {
        service.validate()?;
    }
    if services.len() > MAX_SERVICES {
        return Err(ServiceError::TooMany(services.len()));
    }
    let len = frame_len(services);
    if len > MAX_SERVICES_FRAME_LEN {
        return Err(ServiceError::TooLarge(len));
    }
    Ok(())
}

/// Splits `services` (in priority order) into those that fit one frame and
/// those left out (over [`MAX_SERVICES`] or [`MAX_SERVICES_FRAME_LEN`]).
pub fn fit_to_frame(services: Vec<Service>) -> (Vec<Service>, Vec<Service>) {
    let fits = fitting(&services);
    let (kept, left_out): (Vec<_>, Vec<_>) =
        services.into_iter().zip(fits).partition(|(_, fits)| *fits);
    let strip = |list: Vec<(Service, bool)>| list.into_iter().map(|(s, _)| s).collect();
    (strip(kept), strip(left_out))
}

/// For each of `services` (in priority order), whether it fits the frame
/// after those before it that fit.
pub fn fitting(services: &[Service]) -> Vec<bool> {
    let mut count = 0;
    let mut len = SERVICES_FRAME_HEADER_LEN;
    services
        .iter()
        .map(|service| {
            let fits = count < MAX_SERVICES && len + service.wire_len() <= MAX_SERVICES_FRAME_LEN;
            if fits {
                count += 1;
                len += service.wire_len();
            }
            fits
        })
        .collect()
}

/// What a peer advertised to this agent, as last received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedServices {
    /// The peer's generation of the set (newer replaces older).
    pub generation: u64,
    /// The entries (checked on decoding; still the peer's text).
    pub services: Vec<Service>,
    /// When the set was last received (first or repeated).
    pub received_at: Instant,
}

/// One peer's advertised services, as the node reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerServices {
    /// The peer.
    pub id: AgentId,
    /// Its local name (from this agent's trust store, not from the peer).
    pub name: String,
    /// What it advertised.
    pub learned: LearnedServices,
    /// When anything authenticated last came from the peer.
    pub last_seen: Instant,
    /// Whether a session with it is up now.
    pub session_up: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(text: &str) -> Service {
        Service::parse(text, None, None).expect(text)
    }

    #[test]
    fn kinds_ports_paths_and_names_are_checked() {
        for good in ["mcp:8000", "a2a:9999", "http:1", "my-tool-2:65535"] {
            assert!(Service::parse(good, None, None).is_ok(), "{good}");
        }
        for bad in [
            "mcp",
            "MCP:80",
            "mcp:0",
            "mcp:65536",
            ":80",
            "mcp:",
            "a_b:80",
            "x:y",
        ] {
            assert!(Service::parse(bad, None, None).is_err(), "{bad}");
        }
        assert!(
            Service::parse("abcdefghijklmnop:80", None, None).is_err(),
            "16 chars"
        );
        let ok = Service::parse("mcp:80", Some("/mcp".into()), Some("notes db".into()));
        assert!(ok.is_ok());
        for path in [
            "mcp",
            "/a b",
            "/\n",
            "/a\\b",
            "/<script>",
            "/a{b}",
            &format!("/{}", "x".repeat(MAX_PATH_LEN)),
        ] {
            assert!(matches!(
                Service::parse("mcp:80", Some(path.to_string()), None),
                Err(ServiceError::BadPath(_))
            ));
        }
        for name in [
            "",
            "a\x1b[2J",
            "\u{202e}x",
            &"n".repeat(MAX_SERVICE_NAME_LEN + 1),
        ] {
            assert!(matches!(
                Service::parse("mcp:80", None, Some(name.to_string())),
                Err(ServiceError::BadName(_))
            ));
        }
    }

    #[test]
    fn sets_over_the_bounds_are_cut_to_one_frame() {
        let many: Vec<Service> = (1..=40).map(|p| service(&format!("http:{p}"))).collect();
        let (kept, left) = fit_to_frame(many.clone());
        assert_eq!((kept.len(), left.len()), (MAX_SERVICES, 8));
        assert_eq!(check_set(&many), Err(ServiceError::TooMany(40)));
        let big: Vec<Service> = (1..=20)
            .map(|p| {
                Service::parse(
                    &format!("http:{p}"),
                    Some(format!("/{}", "p".repeat(MAX_PATH_LEN - 1))),
                    None,
                )
                .expect("service")
            })
            .collect();
        let (kept, left) = fit_to_frame(big.clone());
        assert!(frame_len(&kept) <= MAX_SERVICES_FRAME_LEN);
        assert!(!left.is_empty());
        assert!(matches!(check_set(&big), Err(ServiceError::TooLarge(_))));
        check_set(&kept).expect("what was kept fits");
    }

    #[test]
    fn services_serialize_without_empty_fields_and_refuse_bad_kinds() {
        let text = serde_json::to_string(&service("mcp:8000")).expect("json");
        assert_eq!(text, r#"{"kind":"mcp","port":8000}"#);
        assert!(serde_json::from_str::<Service>(r#"{"kind":"M C P","port":1}"#).is_err());
    }
}
