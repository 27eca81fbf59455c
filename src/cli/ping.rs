//! `agentnet ping PEER`: overlay-level path pings through the daemon, with
//! ping(8)-like output that says whether each reply came direct or relayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::Instance;
use agentnet::control::ping::{MAX_PING_TIMEOUT, PingOutcome, find_peer};
use agentnet::control::{ControlError, Request, Response};
use agentnet::core::address::{NetworkId, NodePrefix};
use agentnet::core::stats::status::PathKind;
use agentnet::core::trust::store::TrustStore;

/// Shortest interval between pings.
const MIN_INTERVAL: f64 = 0.01;
/// How often a wait between pings checks for Ctrl-C.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// Arguments of `ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    /// The peer: its local name (or NAME.agent.internal), agent ID, or overlay
    /// address (IPv6, or the IPv4 address routed to it).
    #[arg(value_name = "PEER")]
    pub(crate) peer: String,
    /// Stop after N pings [default: until interrupted].
    #[arg(short = 'c', long = "count", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) count: Option<u64>,
    /// Seconds between pings.
    #[arg(
        short = 'i',
        long = "interval",
        value_name = "SECS",
        default_value_t = 1.0
    )]
    pub(crate) interval: f64,
    /// Seconds to wait for each reply.
    #[arg(
        short = 'W',
        long = "timeout",
        value_name = "SECS",
        default_value_t = 2.0
    )]
    pub(crate) timeout: f64,
    /// Print one JSON object per ping, then one with the summary.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Replies and losses so far.
#[derive(Debug, Default)]
struct Summary {
    sent: u64,
    rtts_ms: Vec<f64>,
    direct: u64,
    relayed: u64,
}

impl Summary {
    fn received(&self) -> u64 {
        self.rtts_ms.len() as u64
    }

    fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        (self.sent - self.received()) as f64 * 100.0 / self.sent as f64
    }

    /// (min, avg, max, mdev) in milliseconds, as ping(8) computes them.
    fn rtt(&self) -> Option<(f64, f64, f64, f64)> {
        if self.rtts_ms.is_empty() {
            return None;
        }
        let n = self.rtts_ms.len() as f64;
        let min = self.rtts_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.rtts_ms.iter().copied().fold(0.0, f64::max);
        let avg = self.rtts_ms.iter().sum::<f64>() / n;
        let square = self.rtts_ms.iter().map(|rtt| rtt * rtt).sum::<f64>() / n;
        let mdev = (square - avg * avg).max(0.0).sqrt();
        Some((min, avg, max, mdev))
    }
}

/// Sets a flag on Ctrl-C (SIGINT), so the summary still prints.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime for signal handling")?;
    let mut interrupt = runtime
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        })
        .context("cannot handle SIGINT")?;
    let set = Arc::clone(&flag);
    std::thread::spawn(move || {
        runtime.block_on(async move {
            interrupt.recv().await;
            set.store(true, Ordering::SeqCst);
        });
    });
    Ok(flag)
}

/// Runs `agentnet ping`.
pub(crate) fn ping(context: &Instance, args: PingArgs) -> Result<()> {
    if !(MIN_INTERVAL..=3600.0).contains(&args.interval) {
        bail!("the interval must be between {MIN_INTERVAL} and 3600 seconds");
    }
    let max_timeout = MAX_PING_TIMEOUT.as_secs_f64();
    if !(0.001..=max_timeout).contains(&args.timeout) {
        bail!("the timeout must be between 0.001 and {max_timeout} seconds");
    }
    let mut client = context.require_daemon()?;
    // Check the name here, so a typo fails at once instead of as lost pings.
    let network = match client.request(&Request::Hello {})? {
        Response::Hello(info) => NetworkId::from_name(&info.network),
        other => bail!("unexpected answer to `hello`: {other:?}"),
    };
    let peers = match client.request(&Request::TrustList {})? {
        Response::TrustList { peers } => peers,
        other => bail!("unexpected answer to `trust list`: {other:?}"),
    };
    // The daemon's list says which peer each IPv4 address is routed to.
    let ipv4_holder = |address| {
        peers
            .iter()
            .find(|peer| peer.address4 == Some(address))
            .map(|peer| peer.entry.id)
    };
    let trust = TrustStore {
        peers: peers.iter().map(|peer| peer.entry.clone()).collect(),
    };
    let entry = find_peer(&trust, network, &args.peer, ipv4_holder).ok_or_else(|| {
        anyhow!(
            "no trusted peer is called {:?}; see `agentnet trust list`",
            args.peer
        )
    })?;
    let name = entry.name.clone();
    let address = NodePrefix::of_agent(network, &entry.id).agent_address();
    let interrupted = interrupt_flag()?;
    let timeout_ms = (args.timeout * 1000.0).round() as u64;
    let interval = Duration::from_secs_f64(args.interval);
    if !args.json {
        say!("PING {name} ({address}): overlay path pings over the current path");
    }
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut seq = 0u64;
    while args.count.is_none_or(|count| seq < count) && !interrupted.load(Ordering::SeqCst) {
        seq += 1;
        let sent_at = Instant::now();
        summary.sent += 1;
        let answer = client.request(&Request::Ping {
            peer: entry.id.to_string(),
            timeout_ms: Some(timeout_ms),
        });
        match answer {
            Ok(Response::Ping(outcome)) => report(&args, &mut summary, seq, &outcome),
            Ok(other) => bail!("unexpected answer to `ping`: {other:?}"),
            Err(ControlError::Daemon(message)) => {
                if args.json {
                    say!("{}", serde_json::json!({ "seq": seq, "error": message }));
                } else {
                    say!("no reply from {name}: seq={seq} ({message})");
                }
            }
            Err(error) => return Err(error.into()),
        }
        if args.count.is_some_and(|count| seq >= count) {
            break;
        }
        let next = sent_at + interval;
        while Instant::now() < next && !interrupted.load(Ordering::SeqCst) {
            std::thread::sleep(WAIT_STEP.min(next.saturating_duration_since(Instant::now())));
        }
    }
    print_summary(&args, &name, &summary, started.elapsed());
    Ok(())
}

fn report(args: &PingArgs, summary: &mut Summary, seq: u64, outcome: &PingOutcome) {
    if let Some(reply) = &outcome.reply {
        summary.rtts_ms.push(reply.rtt_ms);
        match reply.from.path {
            PathKind::Relay => summary.relayed += 1,
            _ => summary.direct += 1,
        }
    }
    if args.json {
        let mut value = serde_json::to_value(outcome).unwrap_or_default();
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("seq".into(), seq.into());
        }
        say!("{value}");
        return;
    }
    match &outcome.reply {
        Some(reply) => say!(
            "reply from {}: seq={seq} {} time={} ms",
            outcome.name,
            reply.from,
            format_ms(reply.rtt_ms)
        ),
        None => say!(
            "no reply from {}: seq={seq} (sent {}, no answer within {} s)",
            outcome.name,
            outcome.sent_on,
            args.timeout
        ),
    }
}

fn print_summary(args: &PingArgs, name: &str, summary: &Summary, elapsed: Duration) {
    let rtt = summary.rtt();
    if args.json {
        let value = serde_json::json!({
            "summary": {
                "peer": name,
                "sent": summary.sent,
                "received": summary.received(),
                "loss_percent": summary.loss_percent(),
                "direct": summary.direct,
                "relayed": summary.relayed,
                "rtt_min_ms": rtt.map(|r| r.0),
                "rtt_avg_ms": rtt.map(|r| r.1),
                "rtt_max_ms": rtt.map(|r| r.2),
                "rtt_mdev_ms": rtt.map(|r| r.3),
            }
        });
        say!("{value}");
        return;
    }
    say!("");
    say!("--- {name} agentnet ping statistics ---");
    say!(
        "{} sent, {} received, {:.0}% loss ({} direct, {} relayed), time {} ms",
        summary.sent,
        summary.received(),
        summary.loss_percent(),
        summary.direct,
        summary.relayed,
        elapsed.as_millis()
    );
    if let Some((min, avg, max, mdev)) = rtt {
        say!(
            "rtt min/avg/max/mdev = {}/{}/{}/{} ms",
            format_ms(min),
            format_ms(avg),
            format_ms(max),
            format_ms(mdev)
        );
    }
}

/// Milliseconds with three decimals, as ping(8) prints them.
fn format_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_loss_and_rtt_like_ping() {
        let mut summary = Summary {
            sent: 4,
            ..Summary::default()
        };
        summary.rtts_ms = vec![1.0, 3.0, 2.0];
        assert_eq!(summary.received(), 3);
        assert!((summary.loss_percent() - 25.0).abs() < 1e-9);
        let (min, avg, max, mdev) = summary.rtt().expect("replies");
        assert_eq!((min, avg, max), (1.0, 2.0, 3.0));
        assert!((mdev - (2.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert!(Summary::default().rtt().is_none());
    }
}
