//! Abuse of the rendezvous (DESIGN.md §5, issue 9): one client flooding it
//! cannot starve the others, and its memory stays bounded whatever arrives.
//!
//! The server is driven directly (sans-IO, virtual time) by clients built
//! from the library's handshake and session types, so floods of hundreds of
//! thousands of datagrams run in a second or two.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use agentnet::core::address::{NetworkId, NodeId};
use agentnet::core::identity::{AgentId, Identity};
use agentnet::core::noise::cipher::CipherSet;
use agentnet::core::noise::cookie::{CookieReplyKey, InitiatorCookie};
use agentnet::core::noise::handshake::{InitiationPayload, InitiatorHandshake};
use agentnet::core::noise::session::Session;
use agentnet::core::noise::static_keys::NoiseStatic;
use agentnet::core::noise::tai64n::Tai64N;
use agentnet::core::rendezvous::{
    ADDRESS_HOLD, ClientAddr, MAX_MAILBOX_BYTES, MAX_MAILBOXES, MAX_STORED_DATAGRAM_LEN,
    MAX_STORED_PER_IP, RendezvousConfig, RendezvousServer,
};
use agentnet::core::rng::{CoreRng, core_rng};
use agentnet::core::wire::control_frame::ControlFrame;
use agentnet::core::wire::path::NatHint;
use agentnet::core::wire::path::relay_envelope;
use agentnet::core::wire::{Datagram, TYPE_COOKIE_REPLY, TYPE_RELAY, TYPE_TRUST_REQUEST};
use agentnet::sim::{LinkConfig, SimNet};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

const UNIX_BASE: u64 = 1_800_000_000;

fn network() -> NetworkId {
    NetworkId::from_name("agentnet")
}

/// The server, with a fixed identity.
fn server(now: Instant, tune: impl FnOnce(&mut RendezvousConfig)) -> RendezvousServer {
    let identity = Identity::from_secret_bytes(&[100; 32]).expect("32 bytes");
    let mut config = RendezvousConfig::new(identity, network());
    tune(&mut config);
    RendezvousServer::new(config, [7; 32], now)
}

/// An agent talking to the server through the library's own pieces.
struct Client {
    identity: Identity,
    addr: ClientAddr,
    rng: CoreRng,
    session: Option<Session>,
    cookie: InitiatorCookie,
    initiations: u64,
}

impl Client {
    fn new(key: [u8; 32], addr: &str) -> Self {
        Self {
            identity: Identity::from_secret_bytes(&key).expect("32 bytes"),
            addr: ClientAddr::Udp(addr.parse().expect("addr")),
            rng: core_rng(key),
            session: None,
            cookie: InitiatorCookie::default(),
            initiations: 0,
        }
    }

    fn node(&self) -> NodeId {
        NodeId::of(&self.identity.agent_id())
    }

    /// One initiation to the server; true when a session came back. A
    /// cookie reply is kept for the next try.
    fn try_handshake(&mut self, server: &mut RendezvousServer, now: Instant) -> bool {
        self.initiations += 1;
        let index = self.initiations as u32;
        let payload = InitiationPayload {
            timestamp: Tai64N::from_unix(Duration::from_secs(UNIX_BASE + self.initiations)),
            versions: vec![1],
            name: "client".into(),
            candidates: Vec::new(),
            nat: NatHint::default(),
            ciphers: CipherSet::ALL,
        };
        let server_key = server.agent_id().noise_public_key();
        let (handshake, mut datagram) = InitiatorHandshake::start(
            &mut self.rng,
            network(),
            &NoiseStatic::new(&self.identity.noise_secret_key()),
            &server_key,
            index,
            &payload,
        )
        .expect("initiation");
        self.cookie.stamp(now, index, &mut datagram);
        server.handle_datagram(now, self.addr, &datagram);
        let mut handshake = Some(handshake);
        for answer in drain_to(server, self.addr) {
            match Datagram::parse(&answer) {
                Ok(Datagram::Response(response)) if response.receiver_index() == index => {
                    let Some(mut pending) = handshake.take() else {
                        continue;
                    };
                    let (_, keys) = pending.finish(response.noise()).expect("response");
                    self.session = Some(Session::new(
                        &keys,
                        index,
                        response.sender_index(),
                        true,
                        now,
                    ));
                }
                Ok(Datagram::CookieReply(reply)) => {
                    let key = CookieReplyKey::for_responder(network(), &server_key);
                    self.cookie
                        .handle_reply(now, index, reply.body(), &key)
                        .expect("cookie opens");
                }
                _ => {}
            }
        }
        self.session.is_some()
    }

    /// Handshake (with a cookie if the server wants one) and `Register`.
    fn register(&mut self, server: &mut RendezvousServer, now: Instant) {
        if !self.try_handshake(server, now) {
            assert!(
                self.try_handshake(server, now),
                "no session even with a cookie"
            );
        }
        let frame = ControlFrame::Register {
            agent: self.identity.agent_id(),
        }
        .encode();
        self.send_sealed(server, now, &frame);
        let registered = drain_to(server, self.addr).into_iter().any(|answer| {
            let Ok(Datagram::Data(data)) = Datagram::parse(&answer) else {
                return false;
            };
            let mut buffer = data.ciphertext().to_vec();
            let session = self.session.as_mut().expect("session");
            let Ok(len) = session.open(now, data.counter(), &mut buffer) else {
                return false;
            };
            matches!(
                ControlFrame::decode(&buffer[..len]),
                Some(ControlFrame::Registered { .. })
            )
        });
        assert!(registered, "the server did not confirm the registration");
    }

    /// Handshake and a `Register` without the flags byte, as an agent that
    /// predates source tags sends it; what the server sent back.
    fn register_legacy(&mut self, server: &mut RendezvousServer, now: Instant) -> Vec<Vec<u8>> {
        assert!(self.try_handshake(server, now));
        let mut legacy = ControlFrame::Register {
            agent: self.identity.agent_id(),
        }
        .encode();
        legacy.truncate(1 + 32);
        self.send_sealed(server, now, &legacy);
        drain_to(server, self.addr)
    }

    fn send_sealed(&mut self, server: &mut RendezvousServer, now: Instant, payload: &[u8]) {
        let mut datagram = Vec::new();
        self.session
            .as_mut()
            .expect("session")
            .seal(now, payload, &mut datagram)
            .expect("seal");
        server.handle_datagram(now, self.addr, &datagram);
    }

    fn relay(&self, server: &mut RendezvousServer, now: Instant, to: NodeId, inner: &[u8]) {
        server.handle_datagram(now, self.addr, &relay_envelope(to, inner));
    }
}

/// Registers `client` and returns the mail (relay envelopes) it got.
fn register_and_collect_mail(
    client: &mut Client,
    server: &mut RendezvousServer,
    now: Instant,
) -> Vec<Vec<u8>> {
    assert!(client.try_handshake(server, now));
    let frame = ControlFrame::Register {
        agent: client.identity.agent_id(),
    }
    .encode();
    client.send_sealed(server, now, &frame);
    drain_to(server, client.addr)
        .into_iter()
        .filter(|datagram| datagram.first() == Some(&TYPE_RELAY))
        .collect()
}

/// Takes the server's output for `addr` (everything else is discarded).
fn drain_to(server: &mut RendezvousServer, addr: ClientAddr) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((to, datagram)) = server.poll_transmit() {
        if to == addr {
            out.push(datagram);
        }
    }
    out
}

/// Takes the server's whole output, by destination.
fn drain_all(server: &mut RendezvousServer) -> HashMap<ClientAddr, Vec<Vec<u8>>> {
    let mut out: HashMap<ClientAddr, Vec<Vec<u8>>> = HashMap::new();
    while let Some((to, datagram)) = server.poll_transmit() {
        out.entry(to).or_default().push(datagram);
    }
    out
}

/// The source node a forwarded relay envelope names.
fn relayed_from(datagram: &[u8]) -> Option<NodeId> {
    match Datagram::parse(datagram) {
        Ok(Datagram::Relay(relay)) => Some(NodeId(relay.destination())),
        _ => None,
    }
}

/// An inner datagram the server forwards without looking further (type 4).
fn inner_data(tag: u32) -> Vec<u8> {
    let mut inner = vec![4, 0, 0, 0];
    inner.extend_from_slice(&tag.to_le_bytes());
    inner.resize(96, 0xab);
    inner
}

/// A trust-request-shaped inner datagram (the server does not open it).
fn inner_request(len: usize, fill: u8) -> Vec<u8> {
    let mut inner = vec![TYPE_TRUST_REQUEST, 0, 0, 0];
    inner.resize(len, fill);
    inner
}

#[test]
fn relay_flooder_gets_only_its_own_rate_and_others_are_not_starved() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut flooder = Client::new([1; 32], "10.0.0.1:7400");
    let mut alice = Client::new([2; 32], "10.0.0.2:7400");
    let mut bob = Client::new([3; 32], "10.0.0.3:7400");
    for client in [&mut flooder, &mut alice, &mut bob] {
        client.register(&mut server, t0);
    }
    let (rate, burst) = (100_000.0, 20_000.0); // RendezvousConfig::new's
    let mut forwarded: HashMap<NodeId, usize> = HashMap::new();
    // One second: the flooder sends 300 envelopes per ms (3x its rate),
    // Alice one.
    for ms in 0..1_000u32 {
        let now = t0 + Duration::from_millis(u64::from(ms));
        for i in 0..300 {
            flooder.relay(&mut server, now, bob.node(), &inner_data(ms * 1000 + i));
        }
        alice.relay(&mut server, now, bob.node(), &inner_data(ms));
        for datagram in drain_to(&mut server, bob.addr) {
            if let Some(from) = relayed_from(&datagram) {
                *forwarded.entry(from).or_default() += 1;
            }
        }
    }
    let counters = server.counters();
    let from_alice = forwarded.get(&alice.node()).copied().unwrap_or(0);
    let from_flooder = forwarded.get(&flooder.node()).copied().unwrap_or(0);
    println!("alice {from_alice}/1000, flooder {from_flooder}/300000, {counters:?}");
    assert_eq!(
        from_alice, 1_000,
        "Alice lost relayed datagrams to the flood"
    );
    assert!(
        (from_flooder as f64) <= burst + rate * 1.0 + 1.0,
        "the flooder got {from_flooder}"
    );
    assert!(counters.dropped_rate_limited >= 170_000, "{counters:?}");
    // The flooder's bucket is its own: a new client is not affected either.
    let mut carol = Client::new([4; 32], "10.0.0.4:7400");
    let now = t0 + Duration::from_secs(1);
    carol.register(&mut server, now);
    carol.relay(&mut server, now, bob.node(), &inner_data(1));
    assert_eq!(drain_to(&mut server, bob.addr).len(), 1);
}

/// How many of `count` clients with made-up keys (numbered from
/// `first_key`), the `i`-th at `address(i)`, finish a handshake at `now`.
fn sybils_accepted(
    server: &mut RendezvousServer,
    now: Instant,
    count: usize,
    first_key: u64,
    address: impl Fn(usize) -> String,
) -> usize {
    (0..count)
        .filter(|&i| {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64 + first_key).to_le_bytes());
            Client::new(key, &address(i)).try_handshake(server, now)
        })
        .count()
}

#[test]
fn one_source_cannot_take_the_client_table() {
    let t0 = Instant::now();
    let per_ip = 40;
    let mut server = server(t0, |config| config.max_clients_per_ip = per_ip);
    server.set_handshake_load_threshold(u32::MAX); // the limit alone
    // Same IP, a new port and a new key each time.
    let accepted = sybils_accepted(&mut server, t0, per_ip + 20, 1000, |i| {
        format!("10.0.0.66:{}", 20_000 + i)
    });
    assert_eq!(accepted, per_ip);
    assert_eq!(server.usage().clients, per_ip);
    // Another source registers as usual.
    let mut alice = Client::new([2; 32], "10.0.0.2:7400");
    alice.register(&mut server, t0);
    // Forgotten clients free their source's share.
    let later = t0 + Duration::from_secs(300);
    server.handle_timeout(later);
    assert_eq!(server.usage().clients, 0);
    let mut again = Client::new([9; 32], "10.0.0.66:30000");
    assert!(again.try_handshake(&mut server, later));
}

#[test]
fn one_ipv6_slash_64_is_one_source_for_the_client_table() {
    // A host holding a /64 picks a new address for every made-up key: the
    // per-IP cap counts the /64, not each address in it.
    let t0 = Instant::now();
    let per_ip = 8;
    let mut server = server(t0, |config| config.max_clients_per_ip = per_ip);
    server.set_handshake_load_threshold(u32::MAX); // the limit alone
    let accepted = sybils_accepted(&mut server, t0, per_ip + 8, 2000, |i| {
        format!("[2001:db8:66:1:{:x}::1]:7400", i + 1)
    });
    assert_eq!(accepted, per_ip);
    // Neighbouring /64s are other sources, each with its own share.
    let accepted = sybils_accepted(&mut server, t0, per_ip, 3000, |i| {
        format!("[2001:db8:66:{:x}::1]:7400", i + 2)
    });
    assert_eq!(accepted, per_ip);
    assert_eq!(server.usage().clients, 2 * per_ip);
}

#[test]
fn one_ipv6_slash_64_is_one_source_for_the_mailbox() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut first = Client::new([1; 32], "[2001:db8:66:1::1]:7400");
    let mut second = Client::new([2; 32], "[2001:db8:66:1::2]:7400");
    let mut alice = Client::new([3; 32], "[2001:db8:66:2::1]:7400");
    for client in [&mut first, &mut second, &mut alice] {
        client.register(&mut server, t0);
    }
    // Two addresses of one /64, each storing requests for up to the whole
    // per-IP share: together they get one share.
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for sender in [&first, &second] {
        for i in 0..MAX_STORED_PER_IP {
            sender.relay(
                &mut server,
                t0,
                NodeId(rng.r#gen()),
                &inner_request(600, i as u8),
            );
        }
    }
    assert_eq!(server.usage().stored_requests, MAX_STORED_PER_IP);
    // The next /64 still stores its request.
    alice.relay(
        &mut server,
        t0,
        NodeId(rng.r#gen()),
        &inner_request(600, 0xa1),
    );
    assert_eq!(server.usage().stored_requests, MAX_STORED_PER_IP + 1);
}

#[test]
fn mailbox_flood_keeps_other_senders_requests_and_memory_bounded() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut flooder = Client::new([1; 32], "10.0.0.1:7400");
    let mut alice = Client::new([2; 32], "10.0.0.2:7400");
    flooder.register(&mut server, t0);
    alice.register(&mut server, t0);
    let target = Client::new([5; 32], "10.0.0.5:7400");
    // Alice asks the offline target first.
    alice.relay(&mut server, t0, target.node(), &inner_request(600, 0xa1));
    // The flooder: requests for 50,000 made-up targets and 1,000 for the
    // same target as Alice, 100 per ms.
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    for ms in 0..510u64 {
        let now = t0 + Duration::from_millis(ms);
        for i in 0..100 {
            let to = if ms < 500 {
                NodeId(rng.r#gen())
            } else {
                target.node()
            };
            flooder.relay(&mut server, now, to, &inner_request(2000, i as u8));
        }
    }
    let usage = server.usage();
    println!("{usage:?} {:?}", server.counters());
    assert!(usage.stored_requests <= MAX_STORED_PER_IP + 1, "{usage:?}");
    assert!(usage.mailboxes <= MAX_MAILBOXES);
    assert!(usage.stored_bytes <= MAX_MAILBOX_BYTES);
    // Alice asks again later (a retry replaces her first request) and for a
    // second target; oversized requests are not kept.
    let now = t0 + Duration::from_secs(1);
    let other = Client::new([6; 32], "10.0.0.6:7400");
    alice.relay(&mut server, now, target.node(), &inner_request(600, 0xa2));
    alice.relay(&mut server, now, other.node(), &inner_request(600, 0xa3));
    let before = server.counters().mailbox_dropped;
    alice.relay(
        &mut server,
        now,
        other.node(),
        &inner_request(MAX_STORED_DATAGRAM_LEN, 0xa4),
    );
    assert_eq!(server.counters().mailbox_dropped, before + 1);
    // The targets come online: each gets Alice's latest request.
    for (mut client, fill) in [(target, 0xa2), (other, 0xa3)] {
        let mail = register_and_collect_mail(&mut client, &mut server, now);
        let from_alice: Vec<u8> = mail
            .iter()
            .filter(|datagram| relayed_from(datagram) == Some(alice.node()))
            .map(|datagram| datagram[16])
            .collect();
        assert_eq!(from_alice, vec![fill]);
    }
}

#[test]
fn mail_is_delivered_fairly_when_the_target_registers() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut flooder = Client::new([1; 32], "10.0.0.1:7400");
    let mut alice = Client::new([2; 32], "10.0.0.2:7400");
    flooder.register(&mut server, t0);
    alice.register(&mut server, t0);
    let mut target = Client::new([5; 32], "10.0.0.5:7400");
    alice.relay(&mut server, t0, target.node(), &inner_request(600, 0xa1));
    for i in 0..1_000u32 {
        flooder.relay(&mut server, t0, target.node(), &inner_request(700, i as u8));
    }
    alice.relay(&mut server, t0, target.node(), &inner_request(600, 0xa2));
    let mail = register_and_collect_mail(&mut target, &mut server, t0);
    let from_alice: Vec<u8> = mail
        .iter()
        .filter(|datagram| relayed_from(datagram) == Some(alice.node()))
        .map(|datagram| datagram[16])
        .collect();
    assert_eq!(
        from_alice,
        vec![0xa2],
        "Alice's latest request survives the flood"
    );
    assert!(mail.len() <= 16, "{} delivered", mail.len());
    assert_eq!(server.usage().stored_requests, 0);
    assert_eq!(server.usage().stored_bytes, 0);
}

#[test]
fn garbage_floods_from_many_sources_leave_no_state() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    for i in 0..100_000u32 {
        let now = t0 + Duration::from_micros(u64::from(i) * 10);
        let source = SocketAddr::new(IpAddr::from(rng.r#gen::<[u8; 4]>()), rng.r#gen());
        let kind = (i % 7) as u8;
        let len = rng.gen_range(4..300);
        let mut datagram = vec![0u8; len];
        rng.fill(&mut datagram[..]);
        datagram[..4].copy_from_slice(&[kind, 0, 0, 0]);
        server.handle_datagram(now, ClientAddr::Udp(source), &datagram);
        if i % 1000 == 0 {
            server.handle_timeout(now);
        }
    }
    let usage = server.usage();
    assert_eq!(usage.clients, 0, "{usage:?}");
    assert_eq!(usage.registrations, 0);
    assert_eq!(usage.mailboxes, 0);
    assert_eq!(usage.buckets, 0);
    assert!(drain_all(&mut server).is_empty(), "garbage was answered");
}

#[test]
fn initiation_flood_engages_cookies_and_clients_still_register() {
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let server_id: AgentId = server.agent_id();
    // A pool of valid-mac1 initiations from made-up keys, replayed from one
    // address at 5 per ms for 2 s.
    let mut rng = core_rng([3; 32]);
    let pool: Vec<Vec<u8>> = (0..32u8)
        .map(|i| {
            let stranger = Identity::from_secret_bytes(&[i.wrapping_add(50); 32]).expect("key");
            let payload = InitiationPayload {
                timestamp: Tai64N::from_unix(Duration::from_secs(UNIX_BASE)),
                versions: vec![1],
                name: "flood".into(),
                candidates: Vec::new(),
                nat: NatHint::default(),
                ciphers: CipherSet::ALL,
            };
            InitiatorHandshake::start(
                &mut rng,
                network(),
                &NoiseStatic::new(&stranger.noise_secret_key()),
                &server_id.noise_public_key(),
                u32::from(i),
                &payload,
            )
            .expect("initiation")
            .1
        })
        .collect();
    let attacker = ClientAddr::Udp("10.0.9.9:4444".parse().expect("addr"));
    let mut alice = Client::new([2; 32], "10.0.0.2:7400");
    let mut cookie_replies = 0;
    for ms in 0..2_000u64 {
        let now = t0 + Duration::from_millis(ms);
        for i in 0..5 {
            server.handle_datagram(now, attacker, &pool[(ms as usize * 5 + i) % pool.len()]);
        }
        cookie_replies += drain_to(&mut server, attacker)
            .iter()
            .filter(|datagram| datagram.first() == Some(&TYPE_COOKIE_REPLY))
            .count();
        if ms == 1_000 {
            alice.register(&mut server, now);
        }
    }
    let counters = server.counters();
    println!("{counters:?} {:?}", server.usage());
    // Until the load is detected every initiation costs a handshake (and
    // these come from 32 keys, so most are replays of a known client).
    assert!(
        counters.handshakes <= 32 + 2,
        "{} handshakes",
        counters.handshakes
    );
    // Cookie replies to the one flooding address are limited too.
    assert!(
        (1..=5 * 3 + 1).contains(&cookie_replies),
        "{cookie_replies} cookie replies"
    );
    assert!(counters.rejected >= 9_000, "{counters:?}");
    assert!(server.usage().clients <= 33);
}

#[test]
fn agents_register_with_a_rendezvous_under_load() {
    let mut net = SimNet::new(11, LinkConfig::default(), Instant::now());
    net.add_rendezvous(100);
    net.rendezvous[0].server.set_handshake_load_threshold(0);
    let (a, b) = (net.add_host(1), net.add_host(2));
    for host in [a, b] {
        net.use_rendezvous(host);
    }
    assert!(
        net.run_until_condition(Duration::from_secs(5), |net| {
            [a, b]
                .iter()
                .all(|host| net.hosts[*host].node.status(net.now).rendezvous[0].registered)
        }),
        "agents did not register with a rendezvous under load"
    );
    assert!(net.rendezvous[0].server.counters().cookie_replies >= 2);
}

#[test]
fn a_session_registers_only_its_own_key_refreshes_included() {
    let now = Instant::now();
    let mut server = server(now, |_| {});
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let bob = Client::new([0xb1; 32], "10.9.0.2:4000");
    alice.register(&mut server, now);
    let before = server.counters();
    assert_eq!(before.registrations, 1);
    // A refresh naming the key this session registered: accepted (the
    // server checked that key once, and skips the check now).
    let own = ControlFrame::Register {
        agent: alice.identity.agent_id(),
    }
    .encode();
    alice.send_sealed(&mut server, now, &own);
    drain_to(&mut server, alice.addr);
    assert_eq!(server.counters().registrations, 2);
    // Another agent's key over alice's session: refused, before and after
    // a cached refresh alike; bob stays unregistered.
    let other = ControlFrame::Register {
        agent: bob.identity.agent_id(),
    }
    .encode();
    alice.send_sealed(&mut server, now, &other);
    assert!(
        drain_to(&mut server, alice.addr).is_empty(),
        "no answer to a foreign key"
    );
    let after = server.counters();
    assert_eq!(after.registrations, 2);
    assert_eq!(after.rejected, before.rejected + 1);
    assert_eq!(server.usage().registrations, 1);
    alice.relay(&mut server, now, bob.node(), &inner_data(1));
    assert_eq!(server.counters().dropped_unknown_destination, 1);
    // And alice's own key still refreshes.
    alice.send_sealed(&mut server, now, &own);
    assert_eq!(server.counters().registrations, 3);
}

#[test]
fn an_expired_registration_leaves_the_agent_now_at_its_address_registered() {
    // Alice registers and goes away; the NAT hands her endpoint to Bob,
    // who registers from it. Alice's registration expiring must not
    // unregister Bob's address.
    let t0 = Instant::now();
    let mut server = server(t0, |config| {
        config.registration_lifetime = Duration::from_secs(90);
    });
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let mut bob = Client::new([0xb1; 32], "10.9.0.1:4000");
    let mut carol = Client::new([0xc1; 32], "10.9.0.3:4000");
    alice.register(&mut server, t0);
    let t1 = t0 + Duration::from_secs(60);
    bob.register(&mut server, t1);
    carol.register(&mut server, t1);
    let t2 = t0 + Duration::from_secs(95);
    server.handle_timeout(t2);
    bob.relay(&mut server, t2, carol.node(), &inner_data(1));
    let forwarded = drain_to(&mut server, carol.addr);
    assert_eq!(forwarded.len(), 1, "{:?}", server.counters());
    assert_eq!(relayed_from(&forwarded[0]), Some(bob.node()));
    assert_eq!(server.counters().dropped_unregistered, 0);
    assert_eq!(server.usage().registrations, 2);
}

#[test]
fn an_agent_whose_address_was_taken_is_not_reached_there() {
    // Once Bob registers from Alice's old endpoint, Alice's registration
    // no longer names it: what is sent to Alice waits in her mailbox
    // instead of going to Bob, and she gets it from her new address.
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let mut bob = Client::new([0xb1; 32], "10.9.0.1:4000");
    let mut carol = Client::new([0xc1; 32], "10.9.0.3:4000");
    alice.register(&mut server, t0);
    // Bob's handshake comes from the address: the NAT gave him Alice's
    // mapping, and he takes it at once, whenever Alice last refreshed.
    let t1 = t0 + Duration::from_secs(10);
    bob.register(&mut server, t1);
    carol.register(&mut server, t1);
    carol.relay(&mut server, t1, alice.node(), &inner_data(1));
    carol.relay(&mut server, t1, alice.node(), &inner_request(600, 0xc1));
    assert!(
        drain_to(&mut server, bob.addr).is_empty(),
        "Bob got Alice's"
    );
    let counters = server.counters();
    assert_eq!(counters.dropped_unknown_destination, 1);
    assert_eq!(counters.mailbox_stored, 1);
    assert_eq!(server.usage().registrations, 2);
    // Bob's envelopes are his.
    bob.relay(&mut server, t1, carol.node(), &inner_data(2));
    let forwarded = drain_to(&mut server, carol.addr);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(relayed_from(&forwarded[0]), Some(bob.node()));
    // Alice comes back from elsewhere and gets her mail; Bob keeps his.
    alice.addr = ClientAddr::Udp("10.9.0.7:4000".parse().expect("addr"));
    let mail = register_and_collect_mail(&mut alice, &mut server, t1);
    assert_eq!(mail.len(), 1);
    assert_eq!(relayed_from(&mail[0]), Some(carol.node()));
    bob.relay(&mut server, t1, carol.node(), &inner_data(3));
    assert_eq!(drain_to(&mut server, carol.addr).len(), 1);
    assert_eq!(server.counters().dropped_unregistered, 0);
}

/// Sends `client`'s `Register` over its session and returns whether the
/// server answered.
fn refresh(client: &mut Client, server: &mut RendezvousServer, now: Instant) -> bool {
    let register = ControlFrame::Register {
        agent: client.identity.agent_id(),
    }
    .encode();
    client.send_sealed(server, now, &register);
    !drain_to(server, client.addr).is_empty()
}

#[test]
fn a_register_from_a_spoofed_source_does_not_take_a_live_agents_address() {
    // Mallory has a session of her own (made from her address) and sends
    // `Register` with Alice's endpoint as its source.
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let mut carol = Client::new([0xc1; 32], "10.9.0.3:4000");
    let mut mallory = Client::new([0x66; 32], "10.9.0.6:4000");
    alice.register(&mut server, t0);
    carol.register(&mut server, t0);
    mallory.register(&mut server, t0);
    mallory.addr = alice.addr;
    // While Alice refreshes as agents do, the spoof gets no answer and
    // takes nothing: Alice is reached there, and her envelopes are hers.
    let spoof_at = t0 + ADDRESS_HOLD - Duration::from_secs(1);
    assert!(!refresh(&mut mallory, &mut server, spoof_at), "answered");
    assert_eq!(server.counters().address_claims_refused, 1);
    carol.relay(&mut server, spoof_at, alice.node(), &inner_data(1));
    let forwarded = drain_to(&mut server, alice.addr);
    assert_eq!(forwarded.len(), 1, "{:?}", server.counters());
    assert_eq!(relayed_from(&forwarded[0]), Some(carol.node()));
    alice.relay(&mut server, spoof_at, carol.node(), &inner_data(2));
    let forwarded = drain_to(&mut server, carol.addr);
    assert_eq!(forwarded.len(), 1);
    assert_eq!(relayed_from(&forwarded[0]), Some(alice.node()));
    let refreshed = t0 + ADDRESS_HOLD;
    assert!(refresh(&mut alice, &mut server, refreshed));
    let later = refreshed + ADDRESS_HOLD - Duration::from_secs(1);
    assert!(!refresh(&mut mallory, &mut server, later));
    assert_eq!(server.counters().address_claims_refused, 2);
    // An initiation from Alice's address makes a session whose response
    // went to Alice: it vouches neither for itself (Mallory cannot use
    // it) nor for Mallory's older session.
    let older = mallory.session.take();
    assert!(mallory.try_handshake(&mut server, later));
    mallory.session = older;
    assert!(!refresh(&mut mallory, &mut server, later));
    assert_eq!(server.counters().address_claims_refused, 3);
    // A gap in Alice's refreshes (a lost Register, a sleeping laptop) lets
    // the spoof in; Alice's next refresh, over a session made from her
    // address, takes it back at once, and the spoof is refused again.
    let gap = refreshed + ADDRESS_HOLD + Duration::from_secs(1);
    assert!(refresh(&mut mallory, &mut server, gap), "past the hold");
    let back = gap + Duration::from_secs(5);
    assert!(
        refresh(&mut alice, &mut server, back),
        "Alice was locked out"
    );
    assert!(!refresh(
        &mut mallory,
        &mut server,
        back + Duration::from_secs(1)
    ));
    carol.relay(&mut server, back, alice.node(), &inner_data(3));
    let forwarded = drain_to(&mut server, alice.addr);
    assert_eq!(forwarded.len(), 1);
    alice.relay(&mut server, back, carol.node(), &inner_data(4));
    let forwarded = drain_to(&mut server, carol.addr);
    assert_eq!(relayed_from(&forwarded[0]), Some(alice.node()));
}

#[test]
fn relayed_trust_requests_carry_a_tag_of_their_source_only_to_agents_that_read_it() {
    // Two senders at one address and one at another ask Alice (who reads
    // source tags) and Dave (an older agent: his Register has no flags
    // byte, and his parser refuses nonzero spare bytes).
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let mut dave = Client::new([0xd1; 32], "10.9.0.4:4000");
    let mut sender_1 = Client::new([0x51; 32], "10.9.0.5:4000");
    let mut sender_2 = Client::new([0x52; 32], "10.9.0.5:4001");
    let mut sender_3 = Client::new([0x53; 32], "10.9.0.6:4000");
    alice.register(&mut server, t0);
    assert_eq!(
        dave.register_legacy(&mut server, t0).len(),
        1,
        "Dave registered"
    );
    for sender in [&mut sender_1, &mut sender_2, &mut sender_3] {
        sender.register(&mut server, t0);
    }
    for to in [&alice, &dave] {
        for sender in [&sender_1, &sender_2, &sender_3] {
            // A sender's own tag is overwritten.
            let mut envelope = relay_envelope(to.node(), &inner_request(300, 1));
            envelope[1..4].copy_from_slice(&[0xee; 3]);
            server.handle_datagram(t0, sender.addr, &envelope);
        }
        sender_1.relay(&mut server, t0, to.node(), &inner_data(1));
    }
    let mut out = drain_all(&mut server);
    let mut tags = |to: &Client| -> Vec<u32> {
        out.remove(&to.addr)
            .unwrap_or_default()
            .iter()
            .map(|datagram| match Datagram::parse(datagram) {
                Ok(Datagram::Relay(relay)) => relay.source_tag(),
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let to_alice = tags(&alice);
    assert_eq!(to_alice.len(), 4);
    assert_ne!(to_alice[0], 0);
    assert_eq!(to_alice[0], to_alice[1], "one address, one tag");
    assert_ne!(to_alice[0], to_alice[2], "another address, another tag");
    assert_eq!(to_alice[3], 0, "only trust requests are tagged");
    assert_eq!(tags(&dave), vec![0; 4]);
}

#[test]
fn stored_requests_carry_the_servers_tag_or_none() {
    // Requests wait for Alice (who reads tags) and Dave (who does not);
    // their senders wrote bytes of their own into the spare bytes.
    let t0 = Instant::now();
    let mut server = server(t0, |_| {});
    let mut alice = Client::new([0xa1; 32], "10.9.0.1:4000");
    let mut dave = Client::new([0xd1; 32], "10.9.0.4:4000");
    let mut sender = Client::new([0x51; 32], "10.9.0.5:4000");
    sender.register(&mut server, t0);
    for to in [&alice, &dave] {
        let mut envelope = relay_envelope(to.node(), &inner_request(300, 1));
        envelope[1..4].copy_from_slice(&[0xee; 3]);
        server.handle_datagram(t0, sender.addr, &envelope);
    }
    assert_eq!(server.counters().mailbox_stored, 2);
    let tag_of = |mail: &[Vec<u8>]| match Datagram::parse(&mail[0]) {
        Ok(Datagram::Relay(relay)) => relay.source_tag(),
        other => panic!("{other:?}"),
    };
    let mail = register_and_collect_mail(&mut alice, &mut server, t0);
    assert_eq!(mail.len(), 1);
    let tag = tag_of(&mail);
    assert!(tag != 0 && tag != 0x00ee_eeee, "{tag:x}");
    let mail: Vec<Vec<u8>> = dave
        .register_legacy(&mut server, t0)
        .into_iter()
        .filter(|datagram| datagram.first() == Some(&TYPE_RELAY))
        .collect();
    assert_eq!(mail.len(), 1);
    assert_eq!(tag_of(&mail), 0);
    assert!(Datagram::parse(&mail[0]).is_ok());
}
