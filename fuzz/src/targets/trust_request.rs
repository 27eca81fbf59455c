//! Sealed trust requests (type 6) opened by a fixed target identity:
//! arbitrary datagrams; arbitrary content inside a valid mac1 and a valid
//! Noise_X seal from a fixed requester (so the content decoder and the
//! signature check are reached); and structured requests, which must open
//! to exactly what was sealed.

use std::net::SocketAddr;

use crate::{UNIX_START, identity, network};
use agentnet::core::identity::Identity;
use agentnet::core::noise::mac::Mac1Key;
use agentnet::core::policy::Policy;
use agentnet::core::rng::core_rng;
use agentnet::core::trust::request::{Endorsement, MAX_JUSTIFICATION_LEN, TrustRequest};
use agentnet::core::wire::MACS_LEN;
use arbitrary::Arbitrary;

#[derive(Arbitrary, Debug)]
struct Fields {
    skew: i16,
    nonce: [u8; 16],
    name: String,
    justification: String,
    policy: String,
    candidates: Vec<([u8; 4], u16)>,
    endorsed: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(Vec<u8>),
    WithMac1(Vec<u8>),
    SealedContent(Vec<u8>),
    Structured(Fields),
}

/// Wraps `content` the way `TrustRequest::seal` does, without signing.
fn seal_content(requester: &Identity, target: &Identity, content: &[u8]) -> Option<Vec<u8>> {
    let mut prologue = b"agentnet trust request v1".to_vec();
    prologue.extend_from_slice(network().as_bytes());
    let params = "Noise_X_25519_ChaChaPoly_BLAKE2s".parse().ok()?;
    let secret = requester.noise_secret_key();
    let target_public = target.agent_id().noise_public_key();
    let mut state = snow::Builder::new(params)
        .prologue(&prologue)
        .ok()?
        .local_private_key(&secret[..])
        .ok()?
        .fixed_ephemeral_key_for_testing_only(&[3; 32])
        .remote_public_key(&target_public)
        .ok()?
        .build_initiator()
        .ok()?;
    let mut noise = vec![0u8; content.len() + 128];
    let len = state.write_message(content, &mut noise).ok()?;
    let mut datagram = vec![6, 0, 0, 0];
    datagram.extend_from_slice(&noise[..len]);
    datagram.extend_from_slice(&[0; MACS_LEN]);
    Mac1Key::for_responder(network(), &target_public).seal(&mut datagram);
    Some(datagram)
}

/// Runs the target on one input, decoded as libFuzzer's `fuzz_target!` does.
pub fn run(data: &[u8]) {
    crate::structured(data, |input: Input| {
        let target = identity(1);
        let requester = identity(2);
        let own_mac1 = Mac1Key::for_responder(network(), &target.agent_id().noise_public_key());
        let open = |datagram: &[u8]| {
            TrustRequest::open(datagram, network(), &target, &own_mac1, UNIX_START)
        };
        match input {
            Input::Raw(bytes) => {
                let _ = open(&bytes);
            }
            Input::WithMac1(body) => {
                let mut datagram = vec![6, 0, 0, 0];
                datagram.extend_from_slice(&body);
                datagram.extend_from_slice(&[0; MACS_LEN]);
                own_mac1.seal(&mut datagram);
                let _ = open(&datagram);
            }
            Input::SealedContent(content) => {
                if let Some(datagram) = seal_content(&requester, &target, &content) {
                    let _ = open(&datagram);
                }
            }
            Input::Structured(fields) => {
                let requested = fields.policy.parse().unwrap_or(Policy::All);
                let request = TrustRequest {
                    requester: requester.agent_id(),
                    target: target.agent_id(),
                    unix_time: UNIX_START
                        .as_secs()
                        .saturating_add_signed(i64::from(fields.skew)),
                    nonce: fields.nonce,
                    name: fields.name,
                    justification: fields.justification,
                    requested,
                    candidates: fields
                        .candidates
                        .iter()
                        .take(8)
                        .map(|(ip, port)| SocketAddr::from((*ip, *port)))
                        .collect(),
                    endorsement: fields.endorsed.then(|| {
                        Endorsement::sign(
                            &identity(9),
                            &requester.agent_id(),
                            network(),
                            UNIX_START.as_secs() + 3600,
                            fields.policy.parse().unwrap_or(Policy::All),
                        )
                    }),
                };
                let mut rng = core_rng([4; 32]);
                let Ok(datagram) = request.seal(&mut rng, network(), &requester) else {
                    return;
                };
                let opened = open(&datagram);
                let fresh = u64::from(fields.skew.unsigned_abs()) <= 300;
                let fits = request.justification.len() <= MAX_JUSTIFICATION_LEN
                    && request.name.len() <= 255;
                if fresh && fits {
                    assert_eq!(opened, Ok(request), "a sealed request opens to itself");
                } else if !fresh {
                    assert!(opened.is_err(), "a stale request was accepted");
                }
            }
        }
    });
}
