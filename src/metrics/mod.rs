//! Prometheus metrics: the text exposition format (0.0.4) for the agent and
//! the rendezvous server, and the small HTTP server that serves it on
//! `--metrics ADDR:PORT` (off by default; loopback only unless
//! `--metrics-allow-remote`).
//!
//! The agent's numbers come from its own control socket (`status`), so the
//! metrics task needs nothing from the event loop and sees exactly what
//! `agentnet status --json` shows. Names follow the Prometheus conventions:
//! `agentnet_` prefix, base units (seconds, bytes, ratios 0..1), counters
//! end in `_total`, one series per label set.

#![forbid(unsafe_code)]

mod server;

pub use self::server::{MetricsError, MetricsListen, fetch_status, serve, spawn_agent};

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::core::rendezvous::RelayCounters;

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_sum` and `_count` of observations.
    Summary,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Summary => "summary",
        }
    }
}

struct Family {
    name: &'static str,
    kind: MetricKind,
    help: &'static str,
    samples: String,
}

/// Builds one exposition: families are declared once and their samples kept
/// together, whatever order they are added in.
#[derive(Default)]
pub struct Exposition {
    families: Vec<Family>,
}

impl Exposition {
    /// Adds one sample of family `name` (declared on first use).
    pub fn add(
        &mut self,
        name: &'static str,
        kind: MetricKind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.add_suffixed(name, "", kind, help, labels, value);
    }

    /// Adds a sample named `name` + `suffix` (`_sum`, `_count`) to family `name`.
    fn add_suffixed(
        &mut self,
        name: &'static str,
        suffix: &str,
        kind: MetricKind,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let position = match self.families.iter().position(|family| family.name == name) {
            Some(position) => position,
            None => {
                self.families.push(Family {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let out = &mut self.families[position].samples;
        out.push_str(name);
        out.push_str(suffix);
        if !labels.is_empty() {
            out.push('{');
            for (index, (key, value)) in labels.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{key}=\"{}\"", escape_label(value));
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", format_value(value));
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
            let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind.as_str());
            out.push_str(&family.samples);
        }
        out
    }
}

fn escape_label(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn number(value: &Value, pointer: &str) -> Option<f64> {
    value.pointer(pointer).and_then(Value::as_f64)
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The agent's metrics, from its `status` JSON.
pub fn agent_metrics(status: &Value) -> String {
    use MetricKind::{Counter, Gauge};
    let mut m = Exposition::default();
    m.add(
        "agentnet_info",
        Gauge,
        "This agent: ID, name, network and version (always 1).",
        &[
            ("id", text(status, "/id")),
            ("name", text(status, "/name")),
            ("network", text(status, "/network")),
            ("address", text(status, "/address")),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    if let Some(uptime) = number(status, "/uptime_s") {
        m.add(
            "agentnet_uptime_seconds",
            Gauge,
            "Seconds since the daemon started.",
            &[],
            uptime,
        );
    }
    if let Some(mtu) = number(status, "/mtu") {
        m.add(
            "agentnet_tunnel_mtu_bytes",
            Gauge,
            "Largest IP packet the tunnel carries.",
            &[],
            mtu,
        );
    }
    let peers = status["peers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    m.add(
        "agentnet_peers",
        Gauge,
        "Trusted peers.",
        &[],
        peers.len() as f64,
    );
    let connected = peers
        .iter()
        .filter(|peer| peer["session_established"].as_bool() == Some(true))
        .count();
    m.add(
        "agentnet_peers_connected",
        Gauge,
        "Peers with an established session.",
        &[],
        connected as f64,
    );
    if let Some(dropped) = status["dropped"].as_object() {
        for (reason, count) in dropped {
            m.add(
                "agentnet_dropped_packets_total",
                Counter,
                "Datagrams and packets dropped before a peer was identified (never answered), by reason.",
                &[("reason", reason)],
                count.as_f64().unwrap_or(0.0),
            );
        }
    }
    for link in status["rendezvous"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let up = if link["registered"].as_bool() == Some(true) {
            1.0
        } else {
            0.0
        };
        m.add(
            "agentnet_registration_up",
            Gauge,
            "Whether the registration with a rendezvous server holds.",
            &[
                ("rendezvous", text(link, "/endpoint")),
                ("id", text(link, "/id")),
            ],
            up,
        );
    }
    for peer in peers {
        peer_metrics(&mut m, peer);
    }
    m.render()
}

fn peer_metrics(m: &mut Exposition, peer: &Value) {
    use MetricKind::{Counter, Gauge, Summary};
    let labels = [("peer", text(peer, "/name")), ("id", text(peer, "/id"))];
    let up = peer["session_established"].as_bool() == Some(true);
    m.add(
        "agentnet_peer_up",
        Gauge,
        "Whether a session with the peer is established.",
        &labels,
        f64::from(u8::from(up)),
    );
    let current = text(peer, "/path");
    for path in ["direct", "relay", "none"] {
        let with_path = [labels[0], labels[1], ("path", path)];
        m.add(
            "agentnet_peer_path",
            Gauge,
            "The path the peer's traffic takes (1 for the current one).",
            &with_path,
            f64::from(u8::from(current == path)),
        );
    }
    let seconds = |ms: Option<f64>| ms.map(|ms| ms / 1000.0);
    let gauges: [(&'static str, &'static str, Option<f64>); 8] = [
        (
            "agentnet_peer_rtt_seconds",
            "Smoothed round-trip time of the current path (path pings, EWMA).",
            seconds(number(peer, "/rtt/smoothed_ms")),
        ),
        (
            "agentnet_peer_rtt_last_seconds",
            "Round-trip time of the last path ping answered on the current path.",
            seconds(number(peer, "/rtt/last_ms")),
        ),
        (
            "agentnet_peer_rtt_min_seconds",
            "Smallest round-trip time seen on the current path.",
            seconds(number(peer, "/rtt/min_ms")),
        ),
        (
            "agentnet_peer_rtt_variation_seconds",
            "Mean deviation of the round-trip time of the current path.",
            seconds(number(peer, "/rtt/variation_ms")),
        ),
        (
            "agentnet_peer_receive_loss_ratio",
            "Fraction of the peer's packets lost on the way here (last 10 s, from transport counters).",
            number(peer, "/receive/loss"),
        ),
        (
            "agentnet_peer_receive_reorder_ratio",
            "Fraction of the peer's packets that arrived out of order (last 10 s).",
            number(peer, "/receive/reordering"),
        ),
        (
            "agentnet_peer_ping_loss_ratio",
            "Fraction of recent path pings to the peer left unanswered (round trip).",
            number(peer, "/pings/loss"),
        ),
        (
            "agentnet_peer_mtu_bytes",
            "Largest IP packet carried to the peer.",
            number(peer, "/mtu"),
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            m.add(name, Gauge, help, &labels, value);
        }
    }
    let counters: [(&'static str, &'static str, Option<f64>); 11] = [
        (
            "agentnet_peer_received_bytes_total",
            "Inner bytes received from the peer.",
            number(peer, "/rx_bytes"),
        ),
        (
            "agentnet_peer_sent_bytes_total",
            "Inner bytes sent to the peer.",
            number(peer, "/tx_bytes"),
        ),
        (
            "agentnet_peer_received_packets_total",
            "Inner packets received from the peer.",
            number(peer, "/rx_packets"),
        ),
        (
            "agentnet_peer_sent_packets_total",
            "Inner packets sent to the peer.",
            number(peer, "/tx_packets"),
        ),
        (
            "agentnet_peer_lost_packets_total",
            "The peer's packets that never arrived (estimated from transport counters).",
            number(peer, "/receive/lost_total"),
        ),
        (
            "agentnet_peer_reordered_packets_total",
            "The peer's packets that arrived out of order.",
            number(peer, "/receive/total/reordered"),
        ),
        (
            "agentnet_peer_duplicate_packets_total",
            "The peer's packets that arrived twice.",
            number(peer, "/receive/total/duplicates"),
        ),
        (
            "agentnet_peer_handshakes_total",
            "Sessions established with the peer (rekeys included).",
            number(peer, "/handshake/completed"),
        ),
        (
            "agentnet_peer_handshake_initiations_total",
            "Handshake initiations sent to the peer (retries included).",
            number(peer, "/handshake/initiations_sent"),
        ),
        (
            "agentnet_peer_path_changes_total",
            "Changes of the path to the peer (direct, relay, none).",
            number(peer, "/path_changes"),
        ),
        (
            "agentnet_peer_pings_total",
            "Path pings sent to the peer to measure it.",
            number(peer, "/pings/sent"),
        ),
    ];
    for (name, help, value) in counters {
        if let Some(value) = value {
            m.add(name, Counter, help, &labels, value);
        }
    }
    for reason in ["policy", "replay", "spoofed", "decrypt", "mtu"] {
        let with_reason = [labels[0], labels[1], ("reason", reason)];
        m.add(
            "agentnet_peer_dropped_packets_total",
            Counter,
            "Packets of the peer dropped, by reason.",
            &with_reason,
            number(peer, &format!("/drops/{reason}")).unwrap_or(0.0),
        );
    }
    if let (Some(count), Some(total_ms)) = (
        number(peer, "/handshake/completed"),
        number(peer, "/handshake/total_duration_ms"),
    ) {
        let help = "How long handshakes with the peer took.";
        let name = "agentnet_peer_handshake_duration_seconds";
        m.add_suffixed(name, "_sum", Summary, help, &labels, total_ms / 1000.0);
        m.add_suffixed(name, "_count", Summary, help, &labels, count);
    }
    if let Some(at) = number(peer, "/handshake/last_unix_s") {
        m.add(
            "agentnet_peer_last_handshake_timestamp_seconds",
            Gauge,
            "When the last session with the peer was established (Unix time).",
            &labels,
            at,
        );
    }
    if let Some(at) = number(peer, "/path_since_unix_s") {
        m.add(
            "agentnet_peer_path_changed_timestamp_seconds",
            Gauge,
            "When the path to the peer last changed (Unix time).",
            &labels,
            at,
        );
    }
}

/// The rendezvous server's metrics.
pub fn rendezvous_metrics(id: &str, counters: &RelayCounters, uptime: Duration) -> String {
    use MetricKind::{Counter, Gauge};
    let mut m = Exposition::default();
    m.add(
        "agentnet_rendezvous_info",
        Gauge,
        "This rendezvous server: ID and version (always 1).",
        &[("id", id), ("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    m.add(
        "agentnet_rendezvous_uptime_seconds",
        Gauge,
        "Seconds since the server started.",
        &[],
        uptime.as_secs_f64(),
    );
    m.add(
        "agentnet_rendezvous_registered_agents",
        Gauge,
        "Agents registered now.",
        &[],
        counters.registered_now as f64,
    );
    let totals: [(&'static str, &'static str, u64); 7] = [
        (
            "agentnet_rendezvous_registrations_total",
            "Registrations accepted (refreshes included).",
            counters.registrations,
        ),
        (
            "agentnet_rendezvous_handshakes_total",
            "Handshakes completed with agents.",
            counters.handshakes,
        ),
        (
            "agentnet_rendezvous_relayed_packets_total",
            "Datagrams relayed between agents.",
            counters.relayed_packets,
        ),
        (
            "agentnet_rendezvous_relayed_bytes_total",
            "Bytes relayed between agents.",
            counters.relayed_bytes,
        ),
        (
            "agentnet_rendezvous_mailbox_stored_total",
            "Trust requests stored for offline agents.",
            counters.mailbox_stored,
        ),
        (
            "agentnet_rendezvous_mailbox_delivered_total",
            "Stored trust requests delivered at registration.",
            counters.mailbox_delivered,
        ),
        (
            "agentnet_rendezvous_mailbox_dropped_total",
            "Stored trust requests dropped (full mailbox, expiry).",
            counters.mailbox_dropped,
        ),
    ];
    for (name, help, value) in totals {
        m.add(name, Counter, help, &[], value as f64);
    }
    let drops = [
        ("unregistered", counters.dropped_unregistered),
        ("rate_limited", counters.dropped_rate_limited),
        ("unknown_destination", counters.dropped_unknown_destination),
        ("rejected", counters.rejected),
        ("address_claimed", counters.address_claims_refused),
    ];
    for (reason, value) in drops {
        m.add(
            "agentnet_rendezvous_dropped_packets_total",
            Counter,
            "Datagrams dropped without an answer, by reason (rate_limited: over a source's relay rate; address_claimed: a Register, over a session made elsewhere, from an address another agent registered from within 30 s).",
            &[("reason", reason)],
            value as f64,
        );
    }
    m.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_declared_once_and_kept_together() {
        let mut m = Exposition::default();
        m.add("a_total", MetricKind::Counter, "A.", &[("peer", "x")], 1.0);
        m.add("b", MetricKind::Gauge, "B.", &[], 0.5);
        m.add(
            "a_total",
            MetricKind::Counter,
            "A.",
            &[("peer", "y\"\\\n")],
            2.0,
        );
        assert_eq!(
            m.render(),
            "# HELP a_total A.\n# TYPE a_total counter\na_total{peer=\"x\"} 1\n\
             a_total{peer=\"y\\\"\\\\\\n\"} 2\n# HELP b B.\n# TYPE b gauge\nb 0.5\n"
        );
    }

    #[test]
    fn agent_metrics_name_peers_and_reasons() {
        let status = serde_json::json!({
            "id": "abc", "name": "alice", "network": "agentnet", "mtu": 1408, "uptime_s": 5,
            "dropped": {"untrusted": 3, "bad_mac1": 0},
            "rendezvous": [],
            "peers": [{
                "id": "bob-id", "name": "bob", "path": "direct", "session_established": true,
                "rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2,
                "rtt": {"smoothed_ms": 12.5, "last_ms": 10.0, "min_ms": 9.0, "variation_ms": 1.0},
                "receive": {"loss": 0.05, "reordering": 0.0, "lost_total": 5, "total": {"expected": 100, "received": 95, "reordered": 1, "duplicates": 2}},
                "drops": {"policy": 4, "replay": 2, "spoofed": 0, "decrypt": 0, "mtu": 1},
                "handshake": {"completed": 2, "initiations_sent": 3, "total_duration_ms": 40.0, "last_unix_s": 1.0e9},
                "path_changes": 1, "mtu": 1408
            }]
        });
        let text = agent_metrics(&status);
        for line in [
            "agentnet_peer_rtt_seconds{peer=\"bob\",id=\"bob-id\"} 0.0125",
            "agentnet_peer_receive_loss_ratio{peer=\"bob\",id=\"bob-id\"} 0.05",
            "agentnet_peer_lost_packets_total{peer=\"bob\",id=\"bob-id\"} 5",
            "agentnet_peer_dropped_packets_total{peer=\"bob\",id=\"bob-id\",reason=\"policy\"} 4",
            "agentnet_peer_path{peer=\"bob\",id=\"bob-id\",path=\"direct\"} 1",
            "agentnet_peer_handshake_duration_seconds_sum{peer=\"bob\",id=\"bob-id\"} 0.04",
            "agentnet_dropped_packets_total{reason=\"untrusted\"} 3",
            "# TYPE agentnet_peer_handshake_duration_seconds summary",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        for line in text.lines().filter(|line| line.starts_with("# TYPE")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words[3] == "counter" {
                assert!(words[2].ends_with("_total"), "{line}");
            }
        }
    }

    #[test]
    fn rendezvous_metrics_count_drops_by_reason() {
        let counters = RelayCounters {
            dropped_rate_limited: 7,
            relayed_bytes: 1000,
            ..RelayCounters::default()
        };
        let text = rendezvous_metrics("rid", &counters, Duration::from_secs(3));
        assert!(
            text.contains("agentnet_rendezvous_dropped_packets_total{reason=\"rate_limited\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("agentnet_rendezvous_relayed_bytes_total 1000"),
            "{text}"
        );
    }
}
