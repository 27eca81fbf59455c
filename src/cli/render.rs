//! How the CLI shows things: the status report, tables, human units.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// What `status` shows, read leniently from the daemon's JSON so a CLI and a
/// daemon of different versions still get along.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct StatusView {
    id: String,
    address: String,
    address4: Option<String>,
    node_prefix: String,
    name: String,
    network: String,
    interface: String,
    port: u64,
    mtu: u64,
    pid: u64,
    uptime_s: u64,
    port_mapping: Option<PortMappingView>,
    peers: Vec<PeerView>,
    dropped: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PeerView {
    id: String,
    name: String,
    address4: Option<String>,
    derived_address4: Option<String>,
    address4_conflict: Option<String>,
    endpoint: Option<String>,
    relay: Option<String>,
    path: String,
    silent_s: Option<f64>,
    session_established: bool,
    cipher: Option<String>,
    last_handshake_age_s: Option<f64>,
    rx_bytes: u64,
    tx_bytes: u64,
    dropped_policy: u64,
    dropped_replay: u64,
    dropped_spoofed: u64,
    rtt: Option<RttView>,
    receive: ReceiveView,
    drops: BTreeMap<String, u64>,
}

/// `port_mapping`: what the gateway forwards to the agent's socket.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PortMappingView {
    state: String,
    protocol: Option<String>,
    external: Option<String>,
    internal: Option<String>,
    gateway: Option<String>,
    expires_in_s: Option<u64>,
    renew_in_s: Option<u64>,
    reason: Option<String>,
    retry_in_s: Option<u64>,
}

impl PortMappingView {
    /// One line: `pcp 198.51.100.7:40000 -> 10.0.0.2:7400 (gateway
    /// 10.0.0.1, renews in 59m58s, lapses in 1h59m)`, or why there is none.
    fn line(&self) -> String {
        let unknown = || "?".to_string();
        let seconds = |value: Option<u64>| human_duration(value.unwrap_or(0) as f64);
        match self.state.as_str() {
            "mapped" => {
                let lapses = match self.expires_in_s {
                    Some(expires) => format!("lapses in {}", human_duration(expires as f64)),
                    None => "permanent".to_string(),
                };
                format!(
                    "{} {} -> {} (gateway {}, renews in {}, {lapses})",
                    self.protocol.clone().unwrap_or_else(unknown),
                    self.external.clone().unwrap_or_else(unknown),
                    self.internal.clone().unwrap_or_else(unknown),
                    self.gateway.clone().unwrap_or_else(unknown),
                    seconds(self.renew_in_s),
                )
            }
            "none" => format!(
                "none: {} (next try in {})",
                self.reason.clone().unwrap_or_else(unknown),
                seconds(self.retry_in_s)
            ),
            "off" => "off (--no-port-mapping)".to_string(),
            other => other.to_string(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RttView {
    smoothed_ms: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReceiveView {
    loss: Option<f64>,
    reordering: Option<f64>,
    window: WindowView,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WindowView {
    duplicates: u64,
}

pub(super) fn render_status(status: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent      {} (network {})",
        status.name, status.network
    );
    let _ = writeln!(out, "id         {}", status.id);
    let _ = writeln!(
        out,
        "address    {}  (node prefix {})",
        status.address, status.node_prefix
    );
    let _ = writeln!(
        out,
        "address4   {}",
        status
            .address4
            .as_deref()
            .unwrap_or("none (IPv4 is off: --no-ipv4 or ipv4 = false)")
    );
    let _ = writeln!(
        out,
        "interface  {}  mtu {}  udp port {}  pid {}  up {}",
        status.interface,
        status.mtu,
        status.port,
        status.pid,
        human_duration(status.uptime_s as f64)
    );
    if let Some(mapping) = &status.port_mapping {
        let _ = writeln!(out, "port map   {}", mapping.line());
    }
    let _ = writeln!(out);
    if status.peers.is_empty() {
        let _ = writeln!(
            out,
            "no trusted agents; add one with `agentnet trust add ID --name NAME`"
        );
    } else {
        let rows: Vec<Vec<String>> = status
            .peers
            .iter()
            .map(|peer| {
                let (path, via) = match peer.path.as_str() {
                    "relay" => ("relay", peer.relay.clone()),
                    "direct" => ("direct", peer.endpoint.clone()),
                    _ => ("-", peer.endpoint.clone()),
                };
                // The path and RTT it last answered on are not a path now.
                let silent = peer.silent_s.is_some();
                let path = if silent { "silent" } else { path };
                vec![
                    peer.name.clone(),
                    peer.address4.clone().unwrap_or_else(|| "-".into()),
                    path.to_string(),
                    via.unwrap_or_else(|| "-".into()),
                    peer.rtt
                        .as_ref()
                        .filter(|_| !silent)
                        .map_or_else(|| "-".into(), |rtt| human_ms(rtt.smoothed_ms)),
                    percent(peer.receive.loss),
                    percent(peer.receive.reordering),
                    human_bytes(peer.rx_bytes),
                    human_bytes(peer.tx_bytes),
                    peer.last_handshake_age_s
                        .map(|age| format!("{} ago", human_duration(age)))
                        .unwrap_or_else(|| "never".into()),
                    short_cipher(peer.cipher.as_deref()).to_string(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "PEER",
                "IPV4",
                "PATH",
                "VIA",
                "RTT",
                "LOSS",
                "REORDER",
                "RX",
                "TX",
                "HANDSHAKE",
                "CIPHER",
            ],
            &rows,
        ));
        for peer in &status.peers {
            // Older daemons have only the flat counters.
            let mut drops: BTreeMap<&str, u64> = [
                ("policy", peer.dropped_policy),
                ("replay", peer.dropped_replay),
                ("spoofed", peer.dropped_spoofed),
            ]
            .into_iter()
            .collect();
            for (reason, count) in &peer.drops {
                drops.insert(reason.as_str(), *count);
            }
            drops.insert("duplicates (10 s)", peer.receive.window.duplicates);
            if let Some(silent) = peer.silent_s {
                let _ = writeln!(
                    out,
                    "  {} ({}…): no answer for {} to what this agent sent (it stopped, its network changed, or it no longer trusts this agent)",
                    peer.name,
                    short(&peer.id),
                    human_duration(silent)
                );
            }
            if let Some(holder) = &peer.address4_conflict {
                let holder_name = if *holder == status.id {
                    "this agent".to_string()
                } else {
                    status
                        .peers
                        .iter()
                        .find(|other| other.id == *holder)
                        .map_or_else(|| short(holder).to_string(), |other| other.name.clone())
                };
                let _ = writeln!(
                    out,
                    "  {} ({}…): IPv4 off, reachable over IPv6 only: its address {} is also {}'s",
                    peer.name,
                    short(&peer.id),
                    peer.derived_address4.as_deref().unwrap_or("?"),
                    holder_name
                );
            }
            let text = counters(drops.into_iter());
            if !text.is_empty() {
                let _ = writeln!(
                    out,
                    "  {} ({}…): dropped {text}",
                    peer.name,
                    short(&peer.id)
                );
            }
        }
    }
    let dropped = counters(
        status
            .dropped
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_u64().unwrap_or(0))),
    );
    let _ = writeln!(out);
    if dropped.is_empty() {
        let _ = writeln!(out, "dropped    nothing");
    } else {
        let _ = writeln!(out, "dropped    {dropped}");
    }
    out
}

/// The status table's name for a session's transport cipher.
fn short_cipher(cipher: Option<&str>) -> &str {
    match cipher {
        Some("AES-256-GCM") => "aes-gcm",
        Some("ChaCha20-Poly1305") => "chacha",
        // A cipher named by a daemon newer than this CLI (the local
        // daemon's own text, never a peer's).
        Some(other) => other,
        None => "-",
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// "name count, ..." for the nonzero counters.
fn counters<'a>(counters: impl Iterator<Item = (&'a str, u64)>) -> String {
    counters
        .filter(|(_, count)| *count > 0)
        .map(|(name, count)| format!("{} {count}", name.replace('_', " ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Left-aligned columns separated by two spaces.
pub(super) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Milliseconds with 3 significant digits: `0.412 ms`, `12.5 ms`, `230 ms`, `1.20 s`.
fn human_ms(ms: f64) -> String {
    if !ms.is_finite() || ms < 0.0 {
        "-".to_string()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

/// A ratio as a percentage with one decimal, `-` when unknown.
fn percent(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "-".into(), |ratio| format!("{:.1}%", ratio * 100.0))
}

/// Bytes with binary units: `512 B`, `1.5 KiB`, `3.2 MiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

/// Seconds as `42s`, `3m05s`, `2h10m`, `4d03h`.
pub(super) fn human_duration(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    let (days, hours, minutes, secs) = (
        total / 86_400,
        total / 3600 % 24,
        total / 60 % 60,
        total % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{secs:02}s")
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(human_duration(42.7), "42s");
        assert_eq!(human_duration(185.0), "3m05s");
        assert_eq!(human_duration(7800.0), "2h10m");
        assert_eq!(human_duration(-1.0), "0s");
        assert_eq!(human_ms(0.4123), "0.412 ms");
        assert_eq!(human_ms(12.54), "12.5 ms");
        assert_eq!(human_ms(1234.0), "1.23 s");
        assert_eq!(percent(Some(0.05)), "5.0%");
        assert_eq!(percent(None), "-");
    }

    #[test]
    fn port_mapping_lines_say_why_there_is_none() {
        let view = |value: serde_json::Value| -> PortMappingView {
            serde_json::from_value(value).expect("parses")
        };
        assert_eq!(
            view(json!({"state": "none", "reason": "no IPv4 default gateway", "retry_in_s": 30}))
                .line(),
            "none: no IPv4 default gateway (next try in 30s)"
        );
        assert_eq!(
            view(json!({"state": "off"})).line(),
            "off (--no-port-mapping)"
        );
        assert_eq!(view(json!({"state": "searching"})).line(), "searching");
        let permanent = view(
            json!({"state": "mapped", "protocol": "upnp", "external": "198.51.100.7:7400",
            "internal": "10.0.0.2:7400", "gateway": "10.0.0.1", "expires_in_s": null, "renew_in_s": 60}),
        );
        assert!(
            permanent.line().ends_with("renews in 1m00s, permanent)"),
            "{}",
            permanent.line()
        );
    }

    #[test]
    fn a_silent_peer_shows_no_path_or_rtt_and_says_for_how_long() {
        let value = json!({
            "id": "abc", "address": "fd00::1", "node_prefix": "fd00::/112", "mtu": 1408,
            "interface": "agentnet0", "port": 7400, "pid": 9, "name": "alice",
            "network": "agentnet", "uptime_s": 65,
            "peers": [{
                "id": "bobbobbobbobbobbob", "name": "bob", "address": "fd00::2:1",
                "endpoint": "192.0.2.7:7400", "path": "direct", "silent_s": 42.4,
                "session_established": true, "rtt": {"smoothed_ms": 20.04}
            }],
            "dropped": {}
        });
        let view: StatusView = serde_json::from_value(value).expect("parses");
        let text = render_status(&view);
        let row = text
            .lines()
            .find(|line| line.starts_with("bob "))
            .expect("a row for bob");
        assert!(row.contains(" silent "), "{text}");
        assert!(
            !row.contains("direct") && !row.contains("20.0 ms"),
            "{text}"
        );
        assert!(row.contains("192.0.2.7:7400"), "{text}");
        assert!(
            text.contains("bob (bobbobbobbob…): no answer for 42s to what this agent sent"),
            "{text}"
        );
    }

    #[test]
    fn status_text_shows_peers_and_nonzero_drops() {
        let value = json!({
            "id": "abc", "address": "fd00::1", "node_prefix": "fd00::/112", "mtu": 1408,
            "address4": "100.64.0.1",
            "interface": "agentnet0", "port": 7400, "pid": 9, "name": "alice",
            "network": "agentnet", "uptime_s": 65,
            "port_mapping": {"state": "mapped", "protocol": "pcp", "external": "198.51.100.7:7400",
                "internal": "10.0.0.2:7400", "gateway": "10.0.0.1", "expires_in_s": 7190,
                "renew_in_s": 3590},
            "peers": [{
                "id": "bobbobbobbobbobbob", "name": "bob", "address": "fd00::2:1",
                "address4": "100.64.0.2",
                "endpoint": "192.0.2.7:7400", "path": "direct", "session_established": true,
                "cipher": "AES-256-GCM", "last_handshake_age_s": 12.5, "rx_bytes": 2048, "tx_bytes": 10,
                "dropped_policy": 3, "allow": "all", "future_field": 1,
                "rtt": {"smoothed_ms": 20.04}, "receive": {"loss": 0.051, "reordering": 0.0},
                "drops": {"policy": 3, "decrypt": 2}
            }, {
                "id": "carolcarolcarol", "name": "carol", "address": "fd00::3:1",
                "address4": null, "derived_address4": "100.64.0.2",
                "address4_conflict": "bobbobbobbobbobbob", "path": "none"
            }],
            "dropped": {"untrusted": 2, "malformed": 0}
        });
        let view: StatusView = serde_json::from_value(value).expect("parses");
        let text = render_status(&view);
        assert!(text.contains("bob"), "{text}");
        assert!(text.contains("direct"), "{text}");
        assert!(text.contains("12s ago"), "{text}");
        assert!(
            text.lines()
                .any(|line| line.starts_with("bob ") && line.ends_with(" aes-gcm")),
            "{text}"
        );
        assert!(text.contains("2.0 KiB"), "{text}");
        assert!(text.contains("dropped decrypt 2, policy 3"), "{text}");
        assert!(text.contains("20.0 ms"), "{text}");
        assert!(text.contains("5.1%"), "{text}");
        assert!(text.contains("192.0.2.7:7400"), "{text}");
        assert!(text.contains("untrusted 2"), "{text}");
        assert!(!text.contains("malformed"), "{text}");
        assert!(text.contains("up 1m05s"), "{text}");
        assert!(
            text.contains("port map   pcp 198.51.100.7:7400 -> 10.0.0.2:7400 (gateway 10.0.0.1, renews in 59m50s, lapses in 1h59m)"),
            "{text}"
        );
        assert!(text.contains("address4   100.64.0.1"), "{text}");
        assert!(text.contains("100.64.0.2"), "{text}");
        assert!(
            text.contains("carol (carolcarolca…): IPv4 off, reachable over IPv6 only: its address 100.64.0.2 is also bob's"),
            "{text}"
        );
    }
}
