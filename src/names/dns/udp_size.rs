//! Fitting an answer into one UDP datagram: 512 bytes (RFC 1035), or what
//! the asker offers with EDNS (RFC 6891) up to 1232, the DNS-flag-day size
//! that keeps the datagram inside the IPv6 minimum MTU.
//!
//! What does not fit goes in this order: the additional section, which is
//! a courtesy (RFC 2181 §9: leaving it out sets no TC), then answers from
//! the end, with TC set so the asker knows the answer is partial. An asker
//! would then retry over TCP, which this responder does not serve: `dig
//! +ignore` shows what fit, and EDNS (dig's default) fits the most.

use hickory_proto::op::Message;

/// What an asker without EDNS can take.
pub(super) const PLAIN_UDP_PAYLOAD: usize = 512;
/// Largest UDP answer we advertise and send with EDNS.
pub(super) const EDNS_PAYLOAD: u16 = 1232;

/// The largest answer `query` may get.
pub(super) fn payload_limit(query: &Message) -> usize {
    query
        .extensions()
        .as_ref()
        .map_or(PLAIN_UDP_PAYLOAD, |edns| {
            usize::from(edns.max_payload().min(EDNS_PAYLOAD)).max(PLAIN_UDP_PAYLOAD)
        })
}

/// Encodes `response` in at most `limit` bytes, leaving out what does not
/// fit. `None` when it cannot be encoded, or not even its header and
/// question fit.
pub(super) fn encode_within(mut response: Message, limit: usize) -> Option<Vec<u8>> {
    let fits = |bytes: &Vec<u8>| bytes.len() <= limit;
    let whole = response.to_vec().ok()?;
    if fits(&whole) {
        return Some(whole);
    }
    response.take_additionals();
    let without_additionals = response.to_vec().ok()?;
    if fits(&without_additionals) {
        return Some(without_additionals);
    }
    // The longest run of answers that fits: answers only shrink the
    // message, so a binary search finds it in a few encodings.
    let answers = response.take_answers();
    response.set_truncated(true);
    let mut encode_first = |count: usize| {
        *response.answers_mut() = answers[..count].to_vec();
        response.to_vec().ok().filter(fits)
    };
    let (mut fitting, mut too_many) = (0, answers.len());
    let mut best = encode_first(0)?;
    while too_many - fitting > 1 {
        let middle = fitting + (too_many - fitting) / 2;
        match encode_first(middle) {
            Some(bytes) => {
                fitting = middle;
                best = bytes;
            }
            None => too_many = middle,
        }
    }
    Some(best)
}
