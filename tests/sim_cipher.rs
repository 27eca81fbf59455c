//! The transport cipher negotiated inside the handshake (issue 16), between
//! agents of mixed capabilities on the deterministic simulated network.

use std::time::{Duration, Instant};

use agentnet::core::noise::cipher::{CipherSet, TransportCipher};
use agentnet::sim::{LinkConfig, SimNet};

/// Two trusted agents offering `a_offers` and `b_offers`; `initiator`
/// (0: a, 1: b) sends first, so its handshake makes the session.
fn session_between(a_offers: CipherSet, b_offers: CipherSet, initiator: usize) -> SimNet {
    let mut net = SimNet::new(7, LinkConfig::default(), Instant::now());
    let (a, b) = (net.add_host(1), net.add_host(2));
    net.hosts[a].node.set_transport_ciphers(a_offers);
    net.hosts[b].node.set_transport_ciphers(b_offers);
    net.trust_both(a, b);
    let responder = 1 - initiator;
    net.send_tagged(initiator, responder, 1);
    let connected = net.run_until_condition(Duration::from_secs(5), |net| {
        net.is_connected(a, b) && net.is_connected(b, a)
    });
    assert!(connected, "no session within 5 s");
    net.send_tagged(responder, initiator, 2);
    net.run_for(Duration::from_millis(500));
    assert_eq!(
        net.delivered_tags(responder),
        vec![1],
        "initiator → responder"
    );
    assert_eq!(
        net.delivered_tags(initiator),
        vec![2],
        "responder → initiator"
    );
    net
}

fn cipher(net: &SimNet, host: usize, peer: usize) -> Option<&'static str> {
    net.peer_status(host, peer).and_then(|status| status.cipher)
}

#[test]
fn sessions_use_aes_only_when_both_agents_offer_it() {
    use TransportCipher::{Aes256Gcm, ChaCha20Poly1305};
    let cases = [
        (CipherSet::ALL, CipherSet::ALL, Aes256Gcm),
        (CipherSet::ALL, CipherSet::CHACHA_ONLY, ChaCha20Poly1305),
        (CipherSet::CHACHA_ONLY, CipherSet::ALL, ChaCha20Poly1305),
        (
            CipherSet::CHACHA_ONLY,
            CipherSet::CHACHA_ONLY,
            ChaCha20Poly1305,
        ),
    ];
    for (a_offers, b_offers, expected) in cases {
        for initiator in [0, 1] {
            let net = session_between(a_offers, b_offers, initiator);
            let case = format!("a {a_offers:?}, b {b_offers:?}, initiator {initiator}");
            assert_eq!(cipher(&net, 0, 1), Some(expected.name()), "{case}");
            assert_eq!(cipher(&net, 1, 0), Some(expected.name()), "{case}");
        }
    }
}

#[test]
fn a_rekey_after_the_offer_changes_moves_the_session_to_the_new_cipher() {
    let mut net = session_between(CipherSet::ALL, CipherSet::ALL, 0);
    assert_eq!(cipher(&net, 1, 0), Some(TransportCipher::Aes256Gcm.name()));
    // b turns AES off (`--no-aes` on a restart would do the same). A
    // flow keeps going, one packet a second; a's rekey after two minutes
    // makes the next session, which is ChaCha, and the flow loses nothing.
    net.hosts[1]
        .node
        .set_transport_ciphers(CipherSet::CHACHA_ONLY);
    let chacha = Some(TransportCipher::ChaCha20Poly1305.name());
    let mut sent = Vec::new();
    for tag in 10..250 {
        net.send_tagged(0, 1, tag);
        sent.push(tag);
        net.run_for(Duration::from_secs(1));
        if cipher(&net, 0, 1) == chacha && cipher(&net, 1, 0) == chacha && sent.len() > 5 {
            break;
        }
    }
    assert_eq!(cipher(&net, 0, 1), chacha, "a: still AES after 4 minutes");
    assert_eq!(cipher(&net, 1, 0), chacha, "b: still AES after 4 minutes");
    // Sessions keep their cipher: the change waited for the rekey.
    assert!(sent.len() >= 100, "changed after {} s", sent.len());
    let delivered = net.delivered_tags(1);
    assert_eq!(&delivered[1..], &sent[..], "the flow through the change");
}
