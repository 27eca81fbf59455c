//! Port mapping: asks the default gateway to forward a public UDP port to
//! the agent's socket, with PCP, NAT-PMP or UPnP-IGD (whichever it speaks,
//! in that order, as Tailscale's portmapper does), and keeps the mapping
//! alive. Its public endpoint is announced to peers as a candidate
//! ([`crate::core::node::Node::set_mapped_candidate`]): a peer that pings it
//! comes through this agent's NAT even when that NAT gives every
//! destination a new port (endpoint-dependent mapping, "hard" NAT), where
//! hole punching alone fails.
//!
//! One background task does all of it ([`PortMapper::start`]); the event
//! loop only hears the outcome (a `watch` channel), so a slow or silent
//! gateway never holds up packets. Requests are bounded (about 2 s for
//! PCP/NAT-PMP, 3 s for the SSDP search, 5 s per UPnP request); a gateway
//! that answers nothing is asked again after 30 s, doubling to 10 min.
//! Mappings are renewed at half their lifetime and deleted when the agent
//! stops.

#![forbid(unsafe_code)]

mod gateway;
mod pmp;
pub mod schedule;
mod upnp;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::core::text::escape_untrusted;

/// How long deleting the mapping may hold up the agent's exit.
const DELETE_TIMEOUT: Duration = Duration::from_secs(3);

/// The protocol a mapping was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device.
    Upnp,
}

impl Protocol {
    /// Its name in `status --json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "nat-pmp",
            Protocol::Upnp => "upnp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP-IGD",
        })
    }
}

/// Why no mapping was made or kept.
#[derive(Debug, thiserror::Error)]
pub enum PortMapError {
    /// The routing table has no IPv4 default route.
    #[error("no IPv4 default gateway")]
    NoGateway,
    /// The agent's UDP port is 0.
    #[error("no UDP port to map")]
    NoPort,
    /// No local address towards the gateway.
    #[error("no local address towards the gateway: {0}")]
    Local(#[source] std::io::Error),
    /// PCP and NAT-PMP failed.
    #[error("PCP/NAT-PMP: {0}")]
    Pmp(String),
    /// UPnP-IGD failed.
    #[error("UPnP-IGD: {0}")]
    Upnp(String),
    /// UPnP-IGD refused to add the mapping.
    #[error("UPnP-IGD: {0}")]
    UpnpAdd(#[source] igd_next::AddPortError),
    /// The gateway named an external address no peer can reach.
    #[error("{protocol} gave an external address no peer can reach: {external}")]
    Unusable {
        /// The protocol.
        protocol: Protocol,
        /// What it gave.
        external: SocketAddr,
    },
    /// The gateway speaks none of the protocols.
    #[error("gateway {gateway} gave no mapping ({pmp}; {upnp})")]
    NoneAnswered {
        /// The gateway asked.
        gateway: Ipv4Addr,
        /// Why PCP/NAT-PMP failed.
        pmp: Box<PortMapError>,
        /// Why UPnP-IGD failed.
        upnp: Box<PortMapError>,
    },
}

impl PortMapError {
    /// The error as text fit for a log line or the status: the gateway's
    /// own words in it (a UPnP fault's description) are escaped.
    pub fn shown(&self) -> String {
        escape_untrusted(&self.to_string())
    }
}

impl From<igd_next::AddPortError> for PortMapError {
    fn from(error: igd_next::AddPortError) -> Self {
        PortMapError::UpnpAdd(error)
    }
}

macro_rules! upnp_error {
    ($($error:ty),*) => {$(
        impl From<$error> for PortMapError {
            fn from(error: $error) -> Self {
                PortMapError::Upnp(error.to_string())
            }
        }
    )*};
}
upnp_error!(
    igd_next::GetExternalIpError,
    igd_next::AddAnyPortError,
    igd_next::RemovePortError
);

/// What the port mapper has now (`status --json` shows it as
/// `port_mapping`).
#[derive(Debug, Clone, PartialEq)]
pub enum PortMapState {
    /// Turned off (`up --no-port-mapping`).
    Off,
    /// The first attempt is under way.
    Searching,
    /// No mapping; another attempt comes at `retry_at`.
    Unavailable {
        /// Why ([`PortMapError::shown`]).
        reason: String,
        /// When the next attempt is due.
        retry_at: Instant,
    },
    /// The gateway forwards `external` to `internal`.
    Mapped {
        /// How the mapping was made.
        protocol: Protocol,
        /// The public endpoint announced to peers.
        external: SocketAddr,
        /// Our socket, as the gateway sees it.
        internal: SocketAddr,
        /// The gateway.
        gateway: Ipv4Addr,
        /// When it lapses unless renewed (`None`: a permanent UPnP lease).
        expires: Option<Instant>,
        /// When it is renewed.
        renew_at: Instant,
    },
}

impl PortMapState {
    /// The public endpoint a mapping gives, if there is one.
    pub fn external(&self) -> Option<SocketAddr> {
        match self {
            PortMapState::Mapped { external, .. } => Some(*external),
            _ => None,
        }
    }

    /// The `port_mapping` object of `status --json`.
    pub fn to_json(&self, now: Instant) -> serde_json::Value {
        let seconds = |at: Instant| at.saturating_duration_since(now).as_secs();
        match self {
            PortMapState::Off => serde_json::json!({ "state": "off" }),
            PortMapState::Searching => serde_json::json!({ "state": "searching" }),
            PortMapState::Unavailable { reason, retry_at } => serde_json::json!({
                "state": "none",
                "reason": reason,
                "retry_in_s": seconds(*retry_at),
            }),
            PortMapState::Mapped {
                protocol,
                external,
                internal,
                gateway,
                expires,
                renew_at,
            } => serde_json::json!({
                "state": "mapped",
                "protocol": protocol.as_str(),
                "external": external.to_string(),
                "internal": internal.to_string(),
                "gateway": gateway.to_string(),
                "expires_in_s": expires.map(seconds),
                "renew_in_s": seconds(*renew_at),
            }),
        }
    }
}

/// Whether peers can send to `external`: an IPv4 unicast address that
/// leaves this host (a gateway that names 0.0.0.0, loopback, multicast or
/// link-local gave nothing usable), and a port.
pub fn usable_external(external: SocketAddr) -> bool {
    let IpAddr::V4(ip) = external.ip() else {
        return false;
    };
    external.port() != 0
        && !(ip.is_unspecified()
            || ip.is_loopback()
            || ip.is_multicast()
            || ip.is_broadcast()
            || ip.is_link_local())
}

/// The background task that makes and keeps the mapping, seen from the
/// event loop.
#[derive(Debug)]
pub struct PortMapper {
    state: watch::Receiver<PortMapState>,
    /// Tells the task to delete the mapping and end (`None`: no task).
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The endpoint last reported by [`PortMapper::take_change`].
    reported: Option<SocketAddr>,
}

impl PortMapper {
    /// No port mapping (`--no-port-mapping`).
    pub fn off() -> Self {
        let (_, state) = watch::channel(PortMapState::Off);
        Self {
            state,
            stop: None,
            task: None,
            reported: None,
        }
    }

    /// [`PortMapper::start`] when `enabled`, else [`PortMapper::off`].
    pub fn new(enabled: bool, port: u16) -> Self {
        if enabled {
            Self::start(port)
        } else {
            Self::off()
        }
    }

    /// Starts mapping UDP `port` in the background (inside the runtime).
    pub fn start(port: u16) -> Self {
        let (sender, state) = watch::channel(PortMapState::Searching);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(port, sender, stopped));
        Self {
            state,
            stop: Some(stop),
            task: Some(task),
            reported: None,
        }
    }

    /// What it has now.
    pub fn state(&self) -> PortMapState {
        self.state.borrow().clone()
    }

    /// A receiver that sees each change of state, for waiting on them
    /// elsewhere (`None` when mapping is off: there will be none). Then
    /// [`PortMapper::take_change`] says whether the endpoint moved. The
    /// receiver starts where this mapper's own does, which never marks a
    /// change seen: one made before it was taken is still reported.
    pub fn watch(&self) -> Option<watch::Receiver<PortMapState>> {
        self.stop.is_some().then(|| self.state.clone())
    }

    /// The mapped public endpoint if it changed (appeared, moved or went)
    /// since the last call, else `None`.
    pub fn take_change(&mut self) -> Option<Option<SocketAddr>> {
        let external = self.state.borrow().external();
        (external != self.reported).then(|| {
            self.reported = external;
            external
        })
    }

    /// Deletes the mapping on the gateway (waiting at most a few seconds)
    /// and ends the task.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && tokio::time::timeout(DELETE_TIMEOUT + Duration::from_secs(1), task)
                .await
                .is_err()
        {
            tracing::warn!("the port mapping was not deleted in time (it lapses on its own)");
        }
    }
}

impl Drop for PortMapper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A mapping held on the gateway.
#[derive(Debug)]
enum Held {
    Pmp(pmp::PmpMapping),
    Upnp(upnp::UpnpMapping),
}

impl Held {
    fn protocol(&self) -> Protocol {
        match self {
            Held::Pmp(mapping) => mapping.protocol(),
            Held::Upnp(mapping) => mapping.protocol(),
        }
    }

    fn external(&self) -> SocketAddr {
        match self {
            Held::Pmp(mapping) => mapping.external(),
            Held::Upnp(mapping) => mapping.external(),
        }
    }

    fn lifetime(&self) -> Duration {
        match self {
            Held::Pmp(mapping) => mapping.lifetime(),
            Held::Upnp(mapping) => mapping.lifetime(),
        }
    }

    fn permanent(&self) -> bool {
        matches!(self, Held::Upnp(mapping) if mapping.permanent())
    }

    async fn renew(&mut self) -> Result<(), PortMapError> {
        match self {
            Held::Pmp(mapping) => mapping.renew().await,
            Held::Upnp(mapping) => mapping.renew().await,
        }
    }

    async fn delete(self) -> Result<(), PortMapError> {
        match self {
            Held::Pmp(mapping) => mapping.delete().await,
            Held::Upnp(mapping) => mapping.delete().await,
        }
    }
}

/// A mapping and where it was made.
struct Made {
    held: Held,
    gateway: Ipv4Addr,
    internal: SocketAddr,
}

/// Asks the default gateway for a mapping of `port`: PCP/NAT-PMP, then
/// UPnP-IGD.
async fn make(port: u16) -> Result<Made, PortMapError> {
    let gateway = gateway::default_gateway().ok_or(PortMapError::NoGateway)?;
    let client = gateway::local_address_towards(gateway).map_err(PortMapError::Local)?;
    let internal = SocketAddr::from((client, port));
    let pmp_error = match pmp::map(gateway, client, port).await {
        Ok(mapping) => return checked(Held::Pmp(mapping), gateway, internal).await,
        Err(error) => error,
    };
    match upnp::map(gateway, client, port).await {
        Ok(mapping) => checked(Held::Upnp(mapping), gateway, internal).await,
        Err(upnp_error) => Err(PortMapError::NoneAnswered {
            gateway,
            pmp: Box::new(pmp_error),
            upnp: Box::new(upnp_error),
        }),
    }
}

/// The mapping, if its external endpoint is usable; else it is deleted.
async fn checked(
    held: Held,
    gateway: Ipv4Addr,
    internal: SocketAddr,
) -> Result<Made, PortMapError> {
    let external = held.external();
    if usable_external(external) {
        return Ok(Made {
            held,
            gateway,
            internal,
        });
    }
    let protocol = held.protocol();
    let _ = tokio::time::timeout(DELETE_TIMEOUT, held.delete()).await;
    Err(PortMapError::Unusable { protocol, external })
}

/// How keeping a mapping ended.
enum Kept {
    /// The agent stops: the mapping was deleted (or tried).
    Stopped,
    /// The mapping is gone (renewal failed until it lapsed, or the
    /// gateway changed): make a new one.
    Lost(String),
}

/// The task: make a mapping, keep it, make another when it is lost, and
/// delete it when told to stop.
async fn run(port: u16, state: watch::Sender<PortMapState>, mut stop: oneshot::Receiver<()>) {
    let mut failures = 0u32;
    let mut last_reason = String::new();
    loop {
        let made = tokio::select! {
            made = make(port) => made,
            _ = &mut stop => return,
        };
        match made {
            Ok(made) => {
                failures = 0;
                last_reason.clear();
                match keep(made, &state, &mut stop).await {
                    Kept::Stopped => return,
                    Kept::Lost(reason) => {
                        tracing::info!(%reason, "port mapping lost; asking again");
                        state.send_replace(PortMapState::Searching);
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let wait = schedule::retry_after(failures);
                let reason = error.shown();
                if reason != last_reason {
                    tracing::info!(%reason, retry_in_s = wait.as_secs(), "no port mapping");
                } else {
                    tracing::debug!(%reason, retry_in_s = wait.as_secs(), "still no port mapping");
                }
                last_reason = reason.clone();
                state.send_replace(PortMapState::Unavailable {
                    reason,
                    retry_at: Instant::now() + wait,
                });
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = &mut stop => return,
                }
            }
        }
    }
}

/// Publishes the mapping, renews it on schedule, and deletes it on stop.
async fn keep(
    made: Made,
    state: &watch::Sender<PortMapState>,
    stop: &mut oneshot::Receiver<()>,
) -> Kept {
    let Made {
        mut held,
        gateway,
        internal,
    } = made;
    tracing::info!(
        protocol = %held.protocol(),
        external = %held.external(),
        %internal,
        %gateway,
        lifetime_s = held.lifetime().as_secs(),
        "port mapping made"
    );
    let mut granted_at = Instant::now();
    loop {
        let expires = (!held.permanent()).then(|| granted_at + held.lifetime());
        let mut renew_at = granted_at + schedule::renew_after(held.lifetime());
        state.send_replace(PortMapState::Mapped {
            protocol: held.protocol(),
            external: held.external(),
            internal,
            gateway,
            expires,
            renew_at,
        });
        // Renew, retrying a failed renewal while the mapping lasts.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(renew_at.into()) => {}
                _ = &mut *stop => {
                    let external = held.external();
                    match tokio::time::timeout(DELETE_TIMEOUT, held.delete()).await {
                        Ok(Ok(())) => tracing::info!(%external, "port mapping deleted"),
                        Ok(Err(error)) => tracing::info!(%external, error = %error.shown(), "could not delete the port mapping (it lapses on its own)"),
                        Err(_) => tracing::info!(%external, "the gateway did not answer the deletion (the mapping lapses on its own)"),
                    }
                    return Kept::Stopped;
                }
            }
            if gateway::default_gateway() != Some(gateway) {
                let _ = tokio::time::timeout(DELETE_TIMEOUT, held.delete()).await;
                return Kept::Lost(format!("the default gateway is no longer {gateway}"));
            }
            let before = held.external();
            match held.renew().await {
                Ok(()) if usable_external(held.external()) => {
                    if held.external() != before {
                        tracing::info!(from = %before, to = %held.external(), "port mapping moved");
                    } else {
                        tracing::debug!(external = %before, "port mapping renewed");
                    }
                    granted_at = Instant::now();
                    break;
                }
                Ok(()) => {
                    let protocol = held.protocol();
                    let external = held.external();
                    let _ = tokio::time::timeout(DELETE_TIMEOUT, held.delete()).await;
                    return Kept::Lost(PortMapError::Unusable { protocol, external }.shown());
                }
                Err(error) => {
                    let now = Instant::now();
                    // A permanent lease does not lapse: retry as for a
                    // fresh grant of the lifetime it stands for.
                    let remaining =
                        expires.map_or(held.lifetime(), |at| at.saturating_duration_since(now));
                    match schedule::renew_retry_after(remaining) {
                        Some(wait) => {
                            tracing::warn!(error = %error.shown(), retry_in_s = wait.as_secs(), "port mapping renewal failed");
                            renew_at = now + wait;
                        }
                        None => {
                            return Kept::Lost(format!(
                                "renewal failed until it lapsed: {}",
                                error.shown()
                            ));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reachable_external_endpoints_are_usable() {
        let usable = |text: &str| usable_external(text.parse().expect("endpoint"));
        assert!(usable("198.51.100.7:7400"));
        assert!(usable("10.0.0.1:40000"), "double NAT: still worth a probe");
        for bad in [
            "0.0.0.0:7400",
            "127.0.0.1:7400",
            "224.0.0.1:7400",
            "255.255.255.255:7400",
            "169.254.1.1:7400",
            "198.51.100.7:0",
            "[2001:db8::1]:7400",
        ] {
            assert!(!usable(bad), "{bad}");
        }
    }

    #[test]
    fn a_gateways_words_are_escaped() {
        let error = PortMapError::Upnp("fault \u{1b}[31mred\u{202e}".into());
        let shown = error.shown();
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{202e}'),
            "{shown}"
        );
        assert!(shown.starts_with("UPnP-IGD: fault "), "{shown}");
    }

    #[test]
    fn status_says_what_was_mapped_and_when_it_lapses() {
        let now = Instant::now();
        let state = PortMapState::Mapped {
            protocol: Protocol::Pcp,
            external: "198.51.100.7:7400".parse().expect("endpoint"),
            internal: "10.77.1.2:7400".parse().expect("endpoint"),
            gateway: Ipv4Addr::new(10, 77, 1, 1),
            expires: Some(now + Duration::from_secs(7200)),
            renew_at: now + Duration::from_secs(3600),
        };
        let json = state.to_json(now);
        assert_eq!(json["state"], "mapped");
        assert_eq!(json["protocol"], "pcp");
        assert_eq!(json["external"], "198.51.100.7:7400");
        assert_eq!(json["gateway"], "10.77.1.1");
        assert_eq!(json["expires_in_s"], 7200);
        assert_eq!(json["renew_in_s"], 3600);
        assert_eq!(
            state.external(),
            Some("198.51.100.7:7400".parse().expect("endpoint"))
        );
        assert_eq!(PortMapState::Off.to_json(now)["state"], "off");
        assert_eq!(PortMapState::Searching.external(), None);
    }

    #[tokio::test]
    async fn a_mapping_made_before_the_watch_was_taken_is_reported_once() {
        let (sender, state) = watch::channel(PortMapState::Searching);
        let (stop, _stopped) = oneshot::channel();
        let mut mapper = PortMapper {
            state,
            stop: Some(stop),
            task: None,
            reported: None,
        };
        assert_eq!(mapper.take_change(), None, "nothing mapped yet");
        let now = Instant::now();
        let external: SocketAddr = "198.51.100.7:7400".parse().expect("endpoint");
        let mapped = PortMapState::Mapped {
            protocol: Protocol::Pcp,
            external,
            internal: "10.77.1.2:7400".parse().expect("endpoint"),
            gateway: Ipv4Addr::new(10, 77, 1, 1),
            expires: Some(now + Duration::from_secs(7200)),
            renew_at: now + Duration::from_secs(3600),
        };
        sender
            .send(mapped.clone())
            .expect("the mapper holds a receiver");
        let mut watch = mapper.watch().expect("mapping is on");
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("the change made before the watch was taken is seen")
            .expect("the sender is alive");
        assert_eq!(mapper.take_change(), Some(Some(external)));
        sender.send(mapped).expect("the mapper holds a receiver");
        assert_eq!(mapper.take_change(), None, "a renewal at the same endpoint");
    }

    #[tokio::test]
    async fn an_off_mapper_never_reports_and_stops_at_once() {
        let mut mapper = PortMapper::off();
        assert_eq!(mapper.state(), PortMapState::Off);
        assert!(
            mapper.watch().is_none(),
            "an off mapper has nothing to watch"
        );
        assert_eq!(
            mapper.take_change(),
            None,
            "an off mapper reported a change"
        );
        mapper.shutdown().await;
    }
}
