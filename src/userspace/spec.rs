//! The command-line forms of `--forward` and `--expose`, parsed and printed
//! back (the detaching `up` hands them to its child as text).
//!
//! Grammar (IPv6 literals in brackets, as in URLs and `ssh -L`):
//!
//! - `--forward [tcp:|udp:][BIND_ADDR:]LOCAL_PORT:PEER:PORT`: listen on
//!   `BIND_ADDR:LOCAL_PORT` (default `127.0.0.1`), connect to `PEER:PORT` on
//!   the overlay; `PEER` is a trusted name (`bob` or `bob.agent.internal`)
//!   or an overlay address (`[fd40:…:1]`, or IPv4 `100.64.…`).
//! - `--expose [tcp:|udp:]PORT[:LOCAL_ADDR:LOCAL_PORT]`: accept overlay
//!   traffic to the agent address on `PORT` and hand it to
//!   `LOCAL_ADDR:LOCAL_PORT` (default `127.0.0.1:PORT`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use crate::names::dns::DOMAIN;

/// The transport a forward or an exposed port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP streams (the default).
    Tcp,
    /// UDP datagrams (each local or remote source gets its own flow).
    Udp,
}

impl Transport {
    fn prefix(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Where a forward goes on the overlay: a trusted peer's name, or an
/// overlay address (IPv6, or the peer's IPv4 address in `100.64.0.0/10`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerHost {
    /// A trusted peer's local name (one DNS label, as in the trust store).
    Name(String),
    /// An overlay address.
    Address(IpAddr),
}

impl PeerHost {
    /// Parses a peer as given on the command line or in a SOCKS5 request:
    /// `bob`, `bob.agent.internal` (with or without a final dot), an IPv6
    /// literal (bracketed or not) or an IPv4 literal. Names are lowercased.
    pub fn parse(text: &str) -> Option<Self> {
        let unbracketed = text
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .unwrap_or(text);
        if let Ok(address) = unbracketed.parse::<Ipv6Addr>() {
            return Some(Self::Address(IpAddr::V6(address)));
        }
        if let Ok(address) = text.parse::<Ipv4Addr>() {
            return Some(Self::Address(IpAddr::V4(address)));
        }
        let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
        let label = match name.strip_suffix(DOMAIN) {
            Some(rest) => rest.strip_suffix('.')?,
            None => name.as_str(),
        };
        is_label(label).then(|| Self::Name(label.to_string()))
    }
}

impl fmt::Display for PeerHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => write!(f, "{name}"),
            Self::Address(IpAddr::V6(address)) => write!(f, "[{address}]"),
            Self::Address(IpAddr::V4(address)) => write!(f, "{address}"),
        }
    }
}

/// A DNS label: 1-63 letters, digits and inner hyphens.
fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-')
}

/// `--forward`: a local listener whose connections (or datagrams) go to a
/// peer on the overlay.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    /// TCP or UDP.
    pub transport: Transport,
    /// Where the local listener binds.
    pub listen: SocketAddr,
    /// The peer.
    pub peer: PeerHost,
    /// The port on the peer.
    pub port: u16,
}

/// `--expose`: overlay traffic to the agent address on `port` goes to a
/// local service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExposeSpec {
    /// TCP or UDP.
    pub transport: Transport,
    /// The port on the agent address.
    pub port: u16,
    /// The local service.
    pub local: SocketAddr,
}

/// Splits `text` at `:` outside brackets; a leading `tcp:`/`udp:` is the
/// transport.
fn tokens(text: &str) -> Result<(Transport, Vec<&str>), String> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).ok_or("unbalanced `]`")?,
            ':' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `[`".into());
    }
    parts.push(&text[start..]);
    let transport = match parts.first().map(|p| p.to_ascii_lowercase()) {
        Some(p) if p == "tcp" => Some(Transport::Tcp),
        Some(p) if p == "udp" => Some(Transport::Udp),
        _ => None,
    };
    if let Some(transport) = transport {
        parts.remove(0);
        Ok((transport, parts))
    } else {
        Ok((Transport::Tcp, parts))
    }
}

fn port(text: &str) -> Result<u16, String> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("`{text}` is not a port (1-65535)")),
        Ok(port) => Ok(port),
    }
}

/// A local listening port: 0 lets the OS choose (`status` shows which).
fn listen_port(text: &str) -> Result<u16, String> {
    text.parse::<u16>()
        .map_err(|_| format!("`{text}` is not a port (0-65535)"))
}

fn local_ip(text: &str) -> Result<IpAddr, String> {
    if text.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    unbracketed
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address (IPv6 in brackets)"))
}

impl FromStr for ForwardSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let explain = |why: String| {
            format!("`{text}`: {why}; expected [tcp:|udp:][BIND_ADDR:]LOCAL_PORT:PEER:PORT")
        };
        let (transport, parts) = tokens(text).map_err(|e| explain(e.to_string()))?;
        let (bind, local_port, peer, remote_port) = match parts.as_slice() {
            [local, peer, remote] => (IpAddr::V4(Ipv4Addr::LOCALHOST), *local, *peer, *remote),
            [bind, local, peer, remote] => {
                (local_ip(bind).map_err(explain)?, *local, *peer, *remote)
            }
            _ => return Err(explain("wrong number of fields".into())),
        };
        Ok(Self {
            transport,
            listen: SocketAddr::new(bind, listen_port(local_port).map_err(explain)?),
            peer: PeerHost::parse(peer).ok_or_else(|| {
                explain(format!("`{peer}` is neither a peer name nor an IP address"))
            })?,
            port: port(remote_port).map_err(explain)?,
        })
    }
}

impl fmt::Display for ForwardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}:{}",
            self.transport.prefix(),
            self.listen,
            self.peer,
            self.port
        )
    }
}

impl FromStr for ExposeSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let explain = |why: String| {
            format!("`{text}`: {why}; expected [tcp:|udp:]PORT[:LOCAL_ADDR:LOCAL_PORT]")
        };
        let (transport, parts) = tokens(text).map_err(|e| explain(e.to_string()))?;
        let (exposed, local) = match parts.as_slice() {
            [exposed] => {
                let exposed = port(exposed).map_err(explain)?;
                (
                    exposed,
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), exposed),
                )
            }
            [exposed, local_port] => (
                port(exposed).map_err(explain)?,
                SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port(local_port).map_err(explain)?,
                ),
            ),
            [exposed, address, local_port] => (
                port(exposed).map_err(explain)?,
                SocketAddr::new(
                    local_ip(address).map_err(explain)?,
                    port(local_port).map_err(explain)?,
                ),
            ),
            _ => return Err(explain("wrong number of fields".into())),
        };
        Ok(Self {
            transport,
            port: exposed,
            local,
        })
    }
}

impl fmt::Display for ExposeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.transport.prefix(),
            self.port,
            self.local
        )
    }
}

/// A local listener of `--socks5` or `--forward` that binds outside
/// loopback without `--allow-remote`: anyone who can reach that address
/// would reach the overlay in this agent's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refusing to listen for {option} on {address}: not a loopback address, so other hosts \
     could reach the overlay through this agent (bind 127.0.0.1 or [::1], or add --allow-remote)"
)]
pub struct RemoteBindRefused {
    /// The option that asked for it (`--socks5` or `--forward`).
    pub option: &'static str,
    /// The address it asked for.
    pub address: SocketAddr,
}

/// Refuses a SOCKS5 or forward listener on an address other than loopback
/// unless `allow_remote` (`--allow-remote`), as `--metrics` does.
pub fn check_local_binds(
    socks5: Option<SocketAddr>,
    forwards: &[ForwardSpec],
    allow_remote: bool,
) -> Result<(), RemoteBindRefused> {
    if allow_remote {
        return Ok(());
    }
    let listeners = socks5
        .map(|address| ("--socks5", address))
        .into_iter()
        .chain(forwards.iter().map(|spec| ("--forward", spec.listen)));
    for (option, address) in listeners {
        if !address.ip().is_loopback() {
            return Err(RemoteBindRefused { option, address });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_socks5_and_forward_binds_need_allow_remote() {
        let local: ForwardSpec = "8080:bob:80".parse().expect("parses");
        let local6: ForwardSpec = "[::1]:8081:bob:80".parse().expect("parses");
        let open: ForwardSpec = "0.0.0.0:9000:bob:22".parse().expect("parses");
        let loopback = "127.0.0.1:1080".parse().ok();
        check_local_binds(loopback, &[local.clone(), local6], false).expect("loopback is fine");

        let error = check_local_binds(loopback, &[local.clone(), open.clone()], false)
            .expect_err("0.0.0.0 refused");
        assert_eq!(error.option, "--forward");
        let message = error.to_string();
        assert!(message.contains("0.0.0.0:9000"), "{message}");
        assert!(message.contains("--allow-remote"), "{message}");

        let everywhere = "[::]:1080".parse().ok();
        let error = check_local_binds(everywhere, &[], false).expect_err("[::] refused");
        assert_eq!(error.option, "--socks5");
        assert!(error.to_string().contains("[::]:1080"), "{error}");
        let lan = "192.168.1.5:1080".parse().ok();
        assert!(check_local_binds(lan, &[], false).is_err());

        check_local_binds(everywhere, &[open], true).expect("--allow-remote allows it");
    }

    #[test]
    fn forward_defaults_to_tcp_on_loopback() {
        let spec: ForwardSpec = "8080:bob:80".parse().expect("parses");
        assert_eq!(spec.transport, Transport::Tcp);
        assert_eq!(spec.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(spec.peer, PeerHost::Name("bob".into()));
        assert_eq!(spec.port, 80);
    }

    #[test]
    fn forward_takes_bind_address_transport_and_literal_peer() {
        let spec: ForwardSpec = "udp:[::1]:5353:[fd40::1:2]:53".parse().expect("parses");
        assert_eq!(spec.transport, Transport::Udp);
        assert_eq!(spec.listen, "[::1]:5353".parse().expect("addr"));
        assert_eq!(
            spec.peer,
            PeerHost::Address("fd40::1:2".parse().expect("v6"))
        );
        assert_eq!(spec.port, 53);
        let spec: ForwardSpec = "0.0.0.0:9000:Bob.agent.internal.:22"
            .parse()
            .expect("parses");
        assert_eq!(spec.peer, PeerHost::Name("bob".into()));
    }

    #[test]
    fn forward_round_trips_through_display() {
        for text in [
            "8080:bob:80",
            "udp:[::1]:5353:[fd40::1:2]:53",
            "10.0.0.1:1:x-y:2",
        ] {
            let spec: ForwardSpec = text.parse().expect("parses");
            let again: ForwardSpec = spec.to_string().parse().expect("reparses");
            assert_eq!(spec, again, "{text}");
        }
    }

    #[test]
    fn bad_forwards_are_refused_with_the_grammar() {
        for bad in [
            "",
            "8080",
            "8080:bob",
            "-1:bob:80",
            "8080:bob:70000",
            "8080:bo_b:80",
            "8080:example.com:80",
            "8080:[fd40::1:80",
            "x:8080:bob:80",
            "sctp:8080:bob:80",
        ] {
            let error = bad.parse::<ForwardSpec>().expect_err(bad);
            assert!(error.contains("LOCAL_PORT:PEER:PORT"), "{bad}: {error}");
        }
    }

    #[test]
    fn expose_defaults_to_the_same_port_on_loopback() {
        let spec: ExposeSpec = "8080".parse().expect("parses");
        assert_eq!(
            spec,
            ExposeSpec {
                transport: Transport::Tcp,
                port: 8080,
                local: "127.0.0.1:8080".parse().expect("addr"),
            }
        );
        let spec: ExposeSpec = "udp:53:[::1]:5353".parse().expect("parses");
        assert_eq!(spec.transport, Transport::Udp);
        assert_eq!(spec.local, "[::1]:5353".parse().expect("addr"));
        let spec: ExposeSpec = "80:8080".parse().expect("parses");
        assert_eq!(spec.local, "127.0.0.1:8080".parse().expect("addr"));
        let again: ExposeSpec = spec.to_string().parse().expect("reparses");
        assert_eq!(spec, again);
    }

    #[test]
    fn peer_hosts_accept_names_and_literals_only() {
        assert_eq!(PeerHost::parse("BOB"), Some(PeerHost::Name("bob".into())));
        assert_eq!(
            PeerHost::parse("bob.agent.internal"),
            Some(PeerHost::Name("bob".into()))
        );
        assert_eq!(
            PeerHost::parse("fd40::1"),
            Some(PeerHost::Address("fd40::1".parse().expect("v6")))
        );
        for bad in [
            "agent.internal",
            ".agent.internal",
            "a.b.agent.internal",
            "example.com",
            "",
            "-x",
        ] {
            assert_eq!(PeerHost::parse(bad), None, "{bad}");
        }
    }
}
