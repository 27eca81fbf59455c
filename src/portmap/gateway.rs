//! Where the port-mapping requests go: the IPv4 default gateway (from the
//! kernel's routing table, `/proc/net/route`) and our address towards it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// The kernel's IPv4 routing table.
const ROUTE_TABLE: &str = "/proc/net/route";
/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;
/// `RTF_GATEWAY`: the route goes through a gateway.
const RTF_GATEWAY: u32 = 0x2;

/// The IPv4 default gateway of the routing table, if it has one (the one
/// with the lowest metric when there are several).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string(ROUTE_TABLE)
        .map_err(|error| tracing::debug!(%error, "cannot read {ROUTE_TABLE}"))
        .ok()?;
    default_gateway_in(&table)
}

/// The default gateway named in the text of `/proc/net/route`: a line
/// with destination and mask 0, flags up and gateway, and a gateway other
/// than 0.0.0.0; of several, the lowest metric. Lines that do not parse
/// are skipped.
pub fn default_gateway_in(table: &str) -> Option<Ipv4Addr> {
    table
        .lines()
        .skip(1)
        .filter_map(parse_default_route)
        .min_by_key(|(_, metric)| *metric)
        .map(|(gateway, _)| gateway)
}

/// One line of the table, if it is a usable default route: its gateway
/// and metric.
fn parse_default_route(line: &str) -> Option<(Ipv4Addr, u32)> {
    // Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT
    let fields: Vec<&str> = line.split_whitespace().collect();
    let hex = |index: usize| {
        fields
            .get(index)
            .and_then(|field| u32::from_str_radix(field, 16).ok())
    };
    let (destination, gateway, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
    let metric: u32 = fields.get(6)?.parse().ok()?;
    let usable = flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
    if destination != 0 || mask != 0 || !usable || gateway == 0 {
        return None;
    }
    // The kernel prints the address as the u32 it holds in network order.
    Some((Ipv4Addr::from(gateway.to_ne_bytes()), metric))
}

/// Our address on the link towards `gateway` (what the gateway sees as
/// the source of our requests; PCP names it in each request). No packet
/// is sent: connecting a UDP socket only picks the route.
pub fn local_address_towards(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))?;
    socket.connect(SocketAddr::from((gateway, crab_nat::GATEWAY_PORT)))?;
    match socket.local_addr()?.ip() {
        IpAddr::V4(address) if !address.is_unspecified() => Ok(address),
        other => Err(std::io::Error::other(format!(
            "no IPv4 address towards the gateway (got {other})"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEADER: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";

    /// A line as the kernel writes it, the addresses in host order.
    fn line(
        iface: &str,
        destination: Ipv4Addr,
        gateway: Ipv4Addr,
        flags: u32,
        metric: u32,
        mask: Ipv4Addr,
    ) -> String {
        let hex = |address: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(address.octets()));
        format!(
            "{iface}\t{}\t{}\t{flags:04X}\t0\t0\t{metric}\t{}\t0\t0\t0\n",
            hex(destination),
            hex(gateway),
            hex(mask)
        )
    }

    #[test]
    fn the_default_route_gives_the_gateway() {
        let any = Ipv4Addr::UNSPECIFIED;
        let table = format!(
            "{HEADER}{}{}",
            line("eth0", any, Ipv4Addr::new(10, 77, 1, 1), 0x3, 0, any),
            line(
                "eth0",
                Ipv4Addr::new(10, 77, 1, 0),
                any,
                0x1,
                0,
                Ipv4Addr::new(255, 255, 255, 0)
            ),
        );
        assert_eq!(
            default_gateway_in(&table),
            Some(Ipv4Addr::new(10, 77, 1, 1))
        );
    }

    #[test]
    fn the_lowest_metric_wins_and_unusable_routes_are_skipped() {
        let any = Ipv4Addr::UNSPECIFIED;
        let table = format!(
            "{HEADER}{}{}{}{}",
            line("wlan0", any, Ipv4Addr::new(192, 168, 1, 1), 0x3, 600, any),
            line("eth0", any, Ipv4Addr::new(192, 168, 2, 1), 0x3, 100, any),
            // Down, and on-link without a gateway: not default gateways.
            line("eth1", any, Ipv4Addr::new(192, 168, 3, 1), 0x2, 1, any),
            line("tun0", any, any, 0x1, 0, any),
        );
        assert_eq!(
            default_gateway_in(&table),
            Some(Ipv4Addr::new(192, 168, 2, 1))
        );
    }

    #[test]
    fn no_default_route_no_gateway() {
        assert_eq!(default_gateway_in(""), None);
        assert_eq!(default_gateway_in(HEADER), None);
        assert_eq!(default_gateway_in("garbage\nx 0 0 3 0 0 0 0"), None);
    }

    #[test]
    fn the_machines_own_table_parses() {
        // Whatever this machine has: reading it must not fail or panic.
        let _ = default_gateway();
    }

    proptest! {
        /// Arbitrary text never panics the parser.
        #[test]
        fn any_text_is_safe(text in ".{0,400}") {
            let _ = default_gateway_in(&text);
        }

        /// Lines of the right shape with arbitrary fields never panic it.
        #[test]
        fn any_fields_are_safe(fields in proptest::collection::vec("[0-9A-Fa-fx-]{0,10}", 0..14)) {
            let table = format!("{HEADER}{}\n", fields.join("\t"));
            let _ = default_gateway_in(&table);
        }
    }
}
