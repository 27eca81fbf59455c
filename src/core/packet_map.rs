//! The hash tables a packet's path looks up: a peer by its prefix or IPv4
//! address (outbound), a session by the receiver index a datagram names
//! (inbound).
//!
//! Their keys are chosen by this node or by its trust store, never by a
//! stranger: a session index is drawn at random by this node for a trusted
//! peer's handshake, and a prefix or IPv4 address enters when a peer is
//! trusted. A stranger only looks keys up, which costs one probe sequence
//! whatever the key. So these tables need no defence against crafted
//! collisions and take foldhash (randomly seeded, a few instructions
//! for a `u32`) instead of the standard SipHash-1-3, which cost ~330
//! instructions of the ~8,100 a daemon spent per ping (callgrind).
//! Tables a stranger can grow keep the standard hasher or a
//! [`crate::core::limit::KeyedLimiter`].

use std::collections::HashMap;

/// A table on the packet path, keyed by what this node or its trust store
/// chose.
pub type PacketMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
