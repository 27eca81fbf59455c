//! One log line a minute about the traffic dropped before a peer was
//! identified (untrusted handshakes, bad mac1, junk, rejected trust
//! requests): each such datagram is counted and never answered, and logging
//! each one would let anyone fill the log. Likewise one line a minute for
//! the trust requests queued: anyone can send them, with a forged source
//! and a fresh key each, up to the verification budget.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::core::node::Node;
use crate::core::stats::status::DropCounters;

/// How often the counts are compared and logged.
const INTERVAL: Duration = Duration::from_secs(60);

/// The counts last logged.
#[derive(Debug, Default)]
pub(crate) struct DropLog {
    last: DropCounters,
    next: Option<Instant>,
    /// Trust requests queued since the last line.
    trust_requests: u64,
}

impl DropLog {
    /// Counts a trust request queued for the operator.
    pub(crate) fn note_trust_request(&mut self) {
        self.trust_requests = self.trust_requests.saturating_add(1);
    }

    /// Logs what was dropped, and how many trust requests were queued,
    /// since the last line, at most once per [`INTERVAL`] and only when
    /// there was any.
    pub(crate) fn maybe_log(&mut self, now: Instant, node: &Node) {
        if self.next.is_some_and(|next| now < next) {
            return;
        }
        self.next = Some(now + INTERVAL);
        let queued = std::mem::take(&mut self.trust_requests);
        if queued > 0 {
            tracing::info!(
                queued,
                "trust requests received in the last minute (`trust pending` lists them)"
            );
        }
        let current = node.drop_counters();
        let (reasons, total) = increases(&self.last, &current);
        self.last = current;
        if total > 0 {
            tracing::info!(total, %reasons, "dropped unanswered traffic in the last minute");
        }
    }
}

/// "reason=count, ..." of the counters that grew, and the sum.
fn increases(before: &DropCounters, after: &DropCounters) -> (String, u64) {
    let (Ok(Value::Object(before)), Ok(Value::Object(after))) =
        (serde_json::to_value(before), serde_json::to_value(after))
    else {
        return (String::new(), 0);
    };
    let mut total = 0;
    let mut reasons = Vec::new();
    for (reason, count) in &after {
        let grew = count
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before.get(reason).and_then(Value::as_u64).unwrap_or(0));
        if grew > 0 {
            total += grew;
            reasons.push(format!("{reason}={grew}"));
        }
    }
    (reasons.join(", "), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_counters_that_grew_are_named() {
        let before = DropCounters {
            untrusted: 2,
            malformed: 5,
            ..DropCounters::default()
        };
        let after = DropCounters {
            untrusted: 5,
            malformed: 5,
            bad_mac1: 1,
            ..DropCounters::default()
        };
        assert_eq!(
            increases(&before, &after),
            ("bad_mac1=1, untrusted=3".to_string(), 4)
        );
    }
}
