//! SOCKS5 (RFC 1928), the part a local proxy for the overlay needs: no
//! authentication, `CONNECT` only, targets by IPv6 or IPv4 overlay address
//! or by name with remote resolution (`curl --socks5-hostname`,
//! `ALL_PROXY=socks5h://`), names resolved in-process from the trust store:
//! to the peer's IPv4 address when it is routed (so servers on their
//! default `0.0.0.0` answer, as a TUN agent's getaddrinfo picks it too),
//! with its IPv6 agent address as the fallback when IPv4 is refused (a
//! server on an IPv6-only socket), else to the IPv6 address alone.
//!
//! The wire formats are plain functions on byte slices ([`parse_greeting`],
//! [`parse_request`], [`encode_reply`]); [`negotiate`] reads them off a
//! stream with exact reads, so bytes a client pipelines after its request
//! stay in the socket for the relay.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::spec::PeerHost;
use crate::core::address::{NetworkId, NodePrefix, in_ipv4_overlay};
use crate::names::dns::NameTable;

/// Protocol version byte.
pub const VERSION: u8 = 5;
/// Method: no authentication required.
pub const METHOD_NO_AUTH: u8 = 0x00;
/// Method: none of the offered methods is acceptable.
pub const METHOD_NONE_ACCEPTABLE: u8 = 0xff;
/// Command: CONNECT.
pub const CMD_CONNECT: u8 = 0x01;
/// Address type: IPv4.
pub const ATYP_IPV4: u8 = 0x01;
/// Address type: domain name.
pub const ATYP_DOMAIN: u8 = 0x03;
/// Address type: IPv6.
pub const ATYP_IPV6: u8 = 0x04;

/// How long a client may take to send its greeting and request.
const NEGOTIATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The reply codes of RFC 1928 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    /// Succeeded.
    Succeeded = 0x00,
    /// General SOCKS server failure (e.g. too many connections).
    GeneralFailure = 0x01,
    /// Connection not allowed by ruleset.
    NotAllowed = 0x02,
    /// Network unreachable: the address is outside the overlay.
    NetworkUnreachable = 0x03,
    /// Host unreachable: unknown name, untrusted address, or no answer.
    HostUnreachable = 0x04,
    /// Connection refused: the peer answered with a reset.
    ConnectionRefused = 0x05,
    /// TTL expired.
    TtlExpired = 0x06,
    /// Command not supported (only CONNECT is).
    CommandNotSupported = 0x07,
    /// Address type not supported (neither IPv4, IPv6 nor a name).
    AddressTypeNotSupported = 0x08,
}

/// Errors of the SOCKS5 negotiation. The client has been answered where
/// the protocol allows it.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    /// The stream failed or closed early.
    #[error("SOCKS5 client I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The client took too long.
    #[error("SOCKS5 client too slow")]
    Timeout,
    /// Not SOCKS version 5.
    #[error("not a SOCKS5 client (version byte {0:#04x})")]
    Version(u8),
    /// The client offers no method without authentication.
    #[error("SOCKS5 client offers no method without authentication")]
    NoAcceptableMethod,
    /// A malformed request.
    #[error("malformed SOCKS5 request: {0}")]
    Malformed(&'static str),
    /// A well-formed request we answer with an error reply.
    #[error("SOCKS5 request refused: {0:?}")]
    Refused(Reply),
}

/// The target of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetHost {
    /// An IP address (IPv4 or IPv6).
    Ip(IpAddr),
    /// A name, to be resolved by the proxy.
    Name(String),
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The command byte.
    pub command: u8,
    /// Where to.
    pub host: TargetHost,
    /// The port.
    pub port: u16,
}

/// The methods of a complete greeting (`VER NMETHODS METHODS...`).
pub fn parse_greeting(bytes: &[u8]) -> Result<&[u8], Socks5Error> {
    match bytes {
        [VERSION, count, methods @ ..] if methods.len() == usize::from(*count) => Ok(methods),
        [VERSION, ..] => Err(Socks5Error::Malformed("greeting length")),
        [version, ..] => Err(Socks5Error::Version(*version)),
        [] => Err(Socks5Error::Malformed("empty greeting")),
    }
}

/// A complete request (`VER CMD RSV ATYP ADDR PORT`).
pub fn parse_request(bytes: &[u8]) -> Result<Request, Socks5Error> {
    let [version, command, _reserved, atyp, rest @ ..] = bytes else {
        return Err(Socks5Error::Malformed("short request"));
    };
    if *version != VERSION {
        return Err(Socks5Error::Version(*version));
    }
    let (host, port_bytes) = match *atyp {
        ATYP_IPV4 => {
            let (address, port) = split_exact::<4>(rest)?;
            (TargetHost::Ip(IpAddr::from(address)), port)
        }
        ATYP_IPV6 => {
            let (address, port) = split_exact::<16>(rest)?;
            (TargetHost::Ip(IpAddr::from(address)), port)
        }
        ATYP_DOMAIN => {
            let [len, rest @ ..] = rest else {
                return Err(Socks5Error::Malformed("short request"));
            };
            let len = usize::from(*len);
            if len == 0 || rest.len() != len + 2 {
                return Err(Socks5Error::Malformed("name length"));
            }
            let name = std::str::from_utf8(&rest[..len])
                .map_err(|_| Socks5Error::Malformed("name is not UTF-8"))?;
            (
                TargetHost::Name(name.to_string()),
                [rest[len], rest[len + 1]],
            )
        }
        _ => return Err(Socks5Error::Refused(Reply::AddressTypeNotSupported)),
    };
    Ok(Request {
        command: *command,
        host,
        port: u16::from_be_bytes(port_bytes),
    })
}

fn split_exact<const N: usize>(rest: &[u8]) -> Result<([u8; N], [u8; 2]), Socks5Error> {
    if rest.len() != N + 2 {
        return Err(Socks5Error::Malformed("address length"));
    }
    let mut address = [0u8; N];
    address.copy_from_slice(&rest[..N]);
    Ok((address, [rest[N], rest[N + 1]]))
}

/// A reply with the bound address (`VER REP RSV ATYP BND.ADDR BND.PORT`).
pub fn encode_reply(reply: Reply, bound: SocketAddr) -> Vec<u8> {
    let mut out = vec![VERSION, reply as u8, 0];
    match bound.ip() {
        IpAddr::V4(v4) => {
            out.push(ATYP_IPV4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(ATYP_IPV6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&bound.port().to_be_bytes());
    out
}

/// An error reply (the bound address is zero).
pub fn error_reply(reply: Reply) -> Vec<u8> {
    encode_reply(reply, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
}

/// Who the proxy and the forwards can reach: the trusted names with their
/// IPv6 addresses, and the IPv4 addresses routed to trusted peers, by
/// name (a peer whose address another agent keeps after a collision, or
/// every peer with IPv4 off, has none). The daemon publishes both after
/// every trust change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayPeers {
    /// `NAME.agent.internal` of the trusted peers.
    pub names: NameTable,
    /// The trusted peers' routed IPv4 addresses, by lowercase name.
    pub ipv4: BTreeMap<String, Ipv4Addr>,
}

/// Where a request's target is on the overlay, or the reply that says why
/// it is not: names are trusted peers' (`NAME.agent.internal`, answered
/// with the routed IPv4 address, else the IPv6 agent address), IPv6
/// addresses must be in a trusted peer's node prefix, IPv4 addresses
/// routed to a trusted peer.
pub fn resolve(
    host: &TargetHost,
    port: u16,
    peers: &OverlayPeers,
    network: NetworkId,
) -> Result<SocketAddr, Reply> {
    resolve_with_fallback(host, port, peers, network).map(|(target, _)| target)
}

/// As [`resolve`], with the address to try next if the first refuses: a
/// name with both families resolves to IPv4 first and IPv6 next (both
/// reach the same agent).
pub fn resolve_with_fallback(
    host: &TargetHost,
    port: u16,
    peers: &OverlayPeers,
    network: NetworkId,
) -> Result<(SocketAddr, Option<SocketAddr>), Reply> {
    let (address, fallback) = match host {
        TargetHost::Ip(address) => (*address, None),
        TargetHost::Name(name) => match PeerHost::parse(name) {
            Some(PeerHost::Address(address)) => (address, None),
            Some(PeerHost::Name(label)) => {
                let v6 = peers.names.lookup(&label).ok_or(Reply::HostUnreachable)?;
                match peers.ipv4.get(&label) {
                    Some(v4) => (IpAddr::V4(*v4), Some(IpAddr::V6(v6))),
                    None => (IpAddr::V6(v6), None),
                }
            }
            None => return Err(Reply::HostUnreachable),
        },
    };
    match address {
        IpAddr::V6(v6) => check_overlay_target(v6, &peers.names, network)?,
        IpAddr::V4(v4) => check_ipv4_target(v4, peers)?,
    }
    Ok((
        SocketAddr::new(address, port),
        fallback.map(|fallback| SocketAddr::new(fallback, port)),
    ))
}

/// Whether `address` can be reached: inside the network and in the node
/// prefix of a trusted peer (other addresses would only time out).
pub fn check_overlay_target(
    address: Ipv6Addr,
    names: &NameTable,
    network: NetworkId,
) -> Result<(), Reply> {
    if !network.contains(&address) {
        return Err(Reply::NetworkUnreachable);
    }
    let trusted = names
        .entries()
        .any(|(peer, _)| NodePrefix::of_address(&peer) == NodePrefix::of_address(&address));
    if trusted {
        Ok(())
    } else {
        Err(Reply::HostUnreachable)
    }
}

/// Whether an IPv4 `address` can be reached: inside `100.64.0.0/10` and
/// routed to a trusted peer.
pub fn check_ipv4_target(address: Ipv4Addr, peers: &OverlayPeers) -> Result<(), Reply> {
    if !in_ipv4_overlay(address) {
        Err(Reply::NetworkUnreachable)
    } else if peers.ipv4.values().any(|routed| *routed == address) {
        Ok(())
    } else {
        Err(Reply::HostUnreachable)
    }
}

/// Reads the greeting and the request from a client, answering the
/// greeting. An unacceptable request is answered with its error reply
/// here; the caller answers the others once it knows the outcome.
pub async fn negotiate(stream: &mut TcpStream) -> Result<Request, Socks5Error> {
    match tokio::time::timeout(NEGOTIATION_TIMEOUT, negotiate_inner(stream)).await {
        Ok(result) => result,
        Err(_) => Err(Socks5Error::Timeout),
    }
}

async fn negotiate_inner(stream: &mut TcpStream) -> Result<Request, Socks5Error> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    let mut greeting = vec![0u8; 2 + usize::from(head[1])];
    greeting[..2].copy_from_slice(&head);
    stream.read_exact(&mut greeting[2..]).await?;
    let methods = parse_greeting(&greeting)?;
    if !methods.contains(&METHOD_NO_AUTH) {
        stream.write_all(&[VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, METHOD_NO_AUTH]).await?;

    let mut request = vec![0u8; 5];
    stream.read_exact(&mut request).await?;
    let rest = match request[3] {
        ATYP_IPV4 => 4 + 2 - 1,
        ATYP_IPV6 => 16 + 2 - 1,
        ATYP_DOMAIN => usize::from(request[4]) + 2,
        _ => {
            stream
                .write_all(&error_reply(Reply::AddressTypeNotSupported))
                .await?;
            return Err(Socks5Error::Refused(Reply::AddressTypeNotSupported));
        }
    };
    request.resize(5 + rest, 0);
    stream.read_exact(&mut request[5..]).await?;
    let parsed = match parse_request(&request) {
        Ok(parsed) => parsed,
        Err(Socks5Error::Refused(reply)) => {
            stream.write_all(&error_reply(reply)).await?;
            return Err(Socks5Error::Refused(reply));
        }
        Err(error) => {
            let _ = stream.write_all(&error_reply(Reply::GeneralFailure)).await;
            return Err(error);
        }
    };
    if parsed.command != CMD_CONNECT {
        stream
            .write_all(&error_reply(Reply::CommandNotSupported))
            .await?;
        return Err(Socks5Error::Refused(Reply::CommandNotSupported));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::identity::Identity;
    use crate::core::trust::store::{TrustEntry, TrustState, TrustStore};

    fn network() -> NetworkId {
        NetworkId::from_name("agentnet")
    }

    #[test]
    fn greeting_lists_methods() {
        assert_eq!(parse_greeting(&[5, 2, 0, 2]).expect("ok"), &[0, 2]);
        assert!(matches!(
            parse_greeting(&[4, 1, 0]),
            Err(Socks5Error::Version(4))
        ));
        assert!(matches!(
            parse_greeting(&[5, 3, 0]),
            Err(Socks5Error::Malformed(_))
        ));
    }

    #[test]
    fn requests_by_ipv6_and_by_name_parse() {
        let mut bytes = vec![5, 1, 0, ATYP_IPV6];
        bytes.extend_from_slice(&"fd40::1".parse::<Ipv6Addr>().expect("v6").octets());
        bytes.extend_from_slice(&8080u16.to_be_bytes());
        let request = parse_request(&bytes).expect("parses");
        assert_eq!(request.host, TargetHost::Ip("fd40::1".parse().expect("ip")));
        assert_eq!(request.port, 8080);

        let name = b"bob.agent.internal";
        let mut bytes = vec![5, 1, 0, ATYP_DOMAIN, name.len() as u8];
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(&80u16.to_be_bytes());
        let request = parse_request(&bytes).expect("parses");
        assert_eq!(request.host, TargetHost::Name("bob.agent.internal".into()));
        assert_eq!(request.command, CMD_CONNECT);
    }

    #[test]
    fn malformed_requests_are_errors_not_panics() {
        for bytes in [
            &[][..],
            &[5, 1, 0],
            &[5, 1, 0, ATYP_IPV4, 1, 2, 3],
            &[5, 1, 0, ATYP_DOMAIN, 0, 0, 80],
            &[5, 1, 0, ATYP_DOMAIN, 3, b'a', 0, 80],
            &[5, 1, 0, ATYP_DOMAIN, 2, 0xff, 0xfe, 0, 80],
        ] {
            assert!(parse_request(bytes).is_err(), "{bytes:?}");
        }
        assert!(matches!(
            parse_request(&[5, 1, 0, 9, 0, 0]),
            Err(Socks5Error::Refused(Reply::AddressTypeNotSupported))
        ));
    }

    #[test]
    fn replies_carry_the_bound_address() {
        let bound: SocketAddr = "[fd40::1]:49152".parse().expect("addr");
        let reply = encode_reply(Reply::Succeeded, bound);
        assert_eq!(&reply[..4], &[5, 0, 0, ATYP_IPV6]);
        assert_eq!(reply.len(), 4 + 16 + 2);
        assert_eq!(&reply[20..], &49152u16.to_be_bytes());
        assert_eq!(error_reply(Reply::ConnectionRefused)[1], 5);
    }

    #[test]
    fn only_trusted_overlay_targets_resolve() {
        let peer = Identity::from_secret_bytes(&[7; 32])
            .expect("key")
            .agent_id();
        let mut store = TrustStore::default();
        store.peers.push(TrustEntry {
            id: peer,
            name: "bob".into(),
            endpoint: None,
            allow: Default::default(),
            state: TrustState::Trusted,
            added_unix: 0,
            expires_unix: None,
        });
        let bob4 = crate::core::address::agent_address4(network(), &peer);
        let peers = OverlayPeers {
            names: NameTable::from_trust(&store, network()),
            ipv4: BTreeMap::from([("bob".to_string(), bob4)]),
        };
        let bob = NodePrefix::of_agent(network(), &peer).agent_address();

        // By name: the routed IPv4 address.
        let name = TargetHost::Name("Bob.Agent.Internal".into());
        assert_eq!(
            resolve_with_fallback(&name, 80, &peers, network()),
            Ok((
                SocketAddr::from((bob4, 80)),
                Some(SocketAddr::from((bob, 80)))
            ))
        );
        assert_eq!(
            resolve(&TargetHost::Ip(IpAddr::V6(bob)), 80, &peers, network()),
            Ok(SocketAddr::from((bob, 80)))
        );
        // Another address in bob's node prefix (an attached container).
        let mut container = bob.segments();
        container[7] = 2;
        let container = TargetHost::Ip(IpAddr::V6(Ipv6Addr::from(container)));
        assert!(resolve(&container, 80, &peers, network()).is_ok());
        // Bob's IPv4 address, as an address or as a literal in a name.
        for host in [
            TargetHost::Ip(IpAddr::V4(bob4)),
            TargetHost::Name(bob4.to_string()),
        ] {
            assert_eq!(
                resolve(&host, 8080, &peers, network()),
                Ok(SocketAddr::from((bob4, 8080))),
                "{host:?}"
            );
        }
        let other4 = Ipv4Addr::from(u32::from(bob4) ^ 1);

        let cases = [
            (
                TargetHost::Name("carol.agent.internal".into()),
                Reply::HostUnreachable,
            ),
            (
                TargetHost::Name("example.com".into()),
                Reply::HostUnreachable,
            ),
            (
                TargetHost::Ip("192.0.2.1".parse().expect("ip")),
                Reply::NetworkUnreachable,
            ),
            (TargetHost::Ip(IpAddr::V4(other4)), Reply::HostUnreachable),
            (
                TargetHost::Ip("2001:db8::1".parse().expect("ip")),
                Reply::NetworkUnreachable,
            ),
        ];
        for (host, reply) in cases {
            assert_eq!(
                resolve(&host, 80, &peers, network()),
                Err(reply),
                "{host:?}"
            );
        }
        let mut stranger = network().prefix().segments();
        stranger[3] = 0x1234;
        stranger[7] = 1;
        let stranger = TargetHost::Ip(IpAddr::V6(Ipv6Addr::from(stranger)));
        assert_eq!(
            resolve(&stranger, 80, &peers, network()),
            Err(Reply::HostUnreachable)
        );
        // Without its IPv4 route (IPv4 off, or a collision) bob's IPv4
        // address is refused, and his name resolves to his IPv6 address.
        let ipv6_only = OverlayPeers {
            ipv4: BTreeMap::new(),
            ..peers
        };
        assert_eq!(
            resolve(&TargetHost::Ip(IpAddr::V4(bob4)), 80, &ipv6_only, network()),
            Err(Reply::HostUnreachable)
        );
        assert_eq!(
            resolve(&name, 80, &ipv6_only, network()),
            Ok(SocketAddr::from((bob, 80)))
        );
    }
}
