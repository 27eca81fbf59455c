//! The core `Node` fed arbitrary sequences of datagrams, TUN packets, timer
//! jumps and trust changes on a virtual clock. A remote agent that the node
//! trusts takes part for real (handshakes both ways, cookies, sessions), so
//! arbitrary control frames and IP packets reach the node inside valid
//! sessions, directly and through a rendezvous relay.
//!
//! Checked on every step, besides "no panic": only packets that pass
//! cryptokey routing reach the TUN (source in the peer's prefix,
//! destination in ours; or our own ICMPv6 errors), and every timer moves
//! forward when it is run (no busy loop in the daemon).

use crate::node_world::Op;

/// Runs the target on one input, decoded as libFuzzer's `fuzz_target!` does.
pub fn run(data: &[u8]) {
    crate::structured(data, |ops: Vec<Op>| {
        crate::node_world::run(ops);
    });
}
