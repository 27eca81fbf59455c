//! Outer datagrams of every type: `Datagram::parse` and every accessor of
//! what it returns, including the inner datagram of a relay envelope.

use agentnet::core::wire::Datagram;

fn touch(bytes: &[u8], depth: u8) {
    match Datagram::parse(bytes) {
        Ok(Datagram::Initiation(m)) => {
            let _ = (m.sender_index(), m.noise().len(), m.bytes().len());
        }
        Ok(Datagram::Response(m)) => {
            let _ = (m.sender_index(), m.receiver_index(), m.noise().len());
        }
        Ok(Datagram::CookieReply(m)) => {
            let _ = (m.receiver_index(), m.body().len());
        }
        Ok(Datagram::Data(m)) => {
            let _ = (m.receiver_index(), m.counter(), m.ciphertext().len());
        }
        Ok(Datagram::Relay(m)) => {
            let _ = m.destination();
            if depth < 2 {
                touch(m.inner(), depth + 1);
            }
        }
        Ok(Datagram::TrustRequest(body)) => assert_eq!(body.len(), bytes.len()),
        Err(_) => {}
    }
}

/// Runs the target on one input.
pub fn run(bytes: &[u8]) {
    touch(bytes, 0)
}
