//! UPnP-IGD (the Internet Gateway Device's `WANIPConnection` service)
//! through the `igd-next` crate: an SSDP search, sent both to the gateway
//! itself and to the SSDP multicast group, then SOAP requests to the
//! device that answered.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use igd_next::aio::Gateway;
use igd_next::aio::tokio::Tokio;
use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};

use super::schedule::REQUESTED_LIFETIME;
use super::{PortMapError, Protocol};

/// How long the SSDP search waits for an answer.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one SOAP request may take (igd-next's own limit is 10 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The SSDP multicast group.
const SSDP_MULTICAST: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)), 1900);
/// What the gateway's mapping table says the mapping is for.
const DESCRIPTION: &str = "agentnet";

/// A mapping made with UPnP-IGD.
#[derive(Debug)]
pub struct UpnpMapping {
    gateway: Gateway<Tokio>,
    external: SocketAddr,
    internal: SocketAddr,
    /// The lease asked for; 0 where the gateway takes only permanent ones.
    lease_seconds: u32,
}

/// Finds the IGD at `gateway` and asks it to forward UDP to `client:port`,
/// for the same external port if it is free, else for any.
pub async fn map(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
) -> Result<UpnpMapping, PortMapError> {
    if port == 0 {
        return Err(PortMapError::NoPort);
    }
    let device = first_ok(
        search(client, SocketAddr::from((gateway, 1900))),
        search(client, SSDP_MULTICAST),
    )
    .await?;
    // Another device on the LAN may claim to be the gateway: only the
    // default gateway's mappings reach us from outside.
    if device.addr.ip() != IpAddr::V4(gateway) {
        return Err(PortMapError::Upnp(format!(
            "the IGD that answered is at {}, not the default gateway {gateway}",
            device.addr.ip()
        )));
    }
    let external_ip = within(device.get_external_ip()).await?;
    let internal = SocketAddr::from((client, port));
    let lease = u32::try_from(REQUESTED_LIFETIME.as_secs()).unwrap_or(u32::MAX);
    let (external_port, lease_seconds) = add(&device, internal, port, lease).await?;
    Ok(UpnpMapping {
        gateway: device,
        external: SocketAddr::new(external_ip, external_port),
        internal,
        lease_seconds,
    })
}

impl UpnpMapping {
    /// UPnP-IGD.
    pub fn protocol(&self) -> Protocol {
        Protocol::Upnp
    }

    /// The public endpoint that reaches our socket.
    pub fn external(&self) -> SocketAddr {
        self.external
    }

    /// The lease granted; a permanent lease counts as the lease asked for,
    /// so that it is still refreshed (a rebooted gateway forgets it).
    pub fn lifetime(&self) -> Duration {
        match self.lease_seconds {
            0 => REQUESTED_LIFETIME,
            seconds => Duration::from_secs(u64::from(seconds)),
        }
    }

    /// Whether the gateway gave only a permanent lease.
    pub fn permanent(&self) -> bool {
        self.lease_seconds == 0
    }

    /// Adds the same mapping again (IGD gateways refresh the lease).
    pub async fn renew(&mut self) -> Result<(), PortMapError> {
        within(self.gateway.add_port(
            PortMappingProtocol::UDP,
            self.external.port(),
            self.internal,
            self.lease_seconds,
            DESCRIPTION,
        ))
        .await?;
        Ok(())
    }

    /// Deletes the mapping on the gateway.
    pub async fn delete(self) -> Result<(), PortMapError> {
        within(
            self.gateway
                .remove_port(PortMappingProtocol::UDP, self.external.port()),
        )
        .await
    }
}

/// One SSDP search from `client` to `target` (the gateway, or the group).
async fn search(client: Ipv4Addr, target: SocketAddr) -> Result<Gateway<Tokio>, PortMapError> {
    let mut options = SearchOptions::default();
    options.bind_addr = SocketAddr::from((client, 0));
    options.broadcast_address = target;
    options.timeout = Some(SEARCH_TIMEOUT);
    options.single_search_timeout = Some(SEARCH_TIMEOUT);
    options.gateway_ip_version = igd_next::GatewayIpVersion::V4;
    igd_next::aio::tokio::search_gateway(options)
        .await
        .map_err(|error| PortMapError::Upnp(format!("SSDP search via {target}: {error}")))
}

/// Adds the mapping: the same external port, else any port; with the
/// lease asked for, else a permanent one where the gateway takes only
/// those. Returns the external port and the lease.
async fn add(
    device: &Gateway<Tokio>,
    internal: SocketAddr,
    port: u16,
    lease: u32,
) -> Result<(u16, u32), PortMapError> {
    let mut lease = lease;
    for _ in 0..2 {
        let same_port =
            within(device.add_port(PortMappingProtocol::UDP, port, internal, lease, DESCRIPTION))
                .await;
        match same_port {
            Ok(()) => return Ok((port, lease)),
            Err(PortMapError::UpnpAdd(AddPortError::OnlyPermanentLeasesSupported))
                if lease != 0 =>
            {
                lease = 0;
            }
            Err(PortMapError::UpnpAdd(AddPortError::PortInUse)) => {
                let any = within(device.add_any_port(
                    PortMappingProtocol::UDP,
                    internal,
                    lease,
                    DESCRIPTION,
                ))
                .await?;
                return Ok((any, lease));
            }
            Err(error) => return Err(error),
        }
    }
    Err(PortMapError::Upnp("the gateway refused every lease".into()))
}

/// A request to the gateway, bounded by [`REQUEST_TIMEOUT`].
async fn within<T, E: Into<PortMapError>>(
    request: impl Future<Output = Result<T, E>>,
) -> Result<T, PortMapError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(Into::into),
        Err(_) => Err(PortMapError::Upnp(format!(
            "the gateway did not answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// The first of two attempts that succeeds, or the second's error when
/// both fail.
async fn first_ok<T, E>(
    a: impl Future<Output = Result<T, E>>,
    b: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    tokio::pin!(a);
    tokio::pin!(b);
    tokio::select! {
        first = &mut a => match first {
            Ok(found) => Ok(found),
            Err(_) => b.await,
        },
        first = &mut b => match first {
            Ok(found) => Ok(found),
            Err(error) => a.await.map_err(|_| error),
        },
    }
}
