//! The data path with and without offloads, on real hosts: two namespaces
//! on one veth pair, agents that trust each other, and large HTTP downloads
//! through the overlay checked byte for byte.
//!
//! With offloads the kernel hands the sender's daemon TCP segments of up to
//! 64 KiB through the TUN, which it cuts into packets, encrypts and sends
//! with UDP GSO; the receiver takes coalesced runs (UDP GRO), decrypts them
//! and merges TCP packets back before writing them to its TUN. Without
//! (`--no-offload`) every system call moves one packet. Both must deliver
//! every byte, and so must a pair where only one side has offloads.
//!
//! The transport cipher is negotiated in the handshake: AES-256-GCM where
//! both agents offer it (CPUs with AES instructions), ChaCha20-Poly1305
//! otherwise. The mixed pair also has mixed ciphers (one side `--no-aes`),
//! so each cipher and the negotiation between them run on real hosts.
//!
//! Each daemon busy-polls for a moment after a packet (`--busy-poll`,
//! on by default); the mixed pair turns it off on one side. Once the
//! transfers end, both daemons must go back to sleep: an idle daemon that
//! kept polling would burn a core.
//!
//! Needs root; skips with a reason otherwise (fails under
//! `AGENTNET_REQUIRE_NETNS=1`).

mod support;

use std::time::{Duration, Instant};

use agentnet::core::noise::cipher::{CipherSet, TransportCipher};
use serde_json::Value;
use support::agent::Identity;
use support::{Agent, Lab, cpu_time, step};

const TOOLS: &[&str] = &["curl", "python3", "ss"];
/// Each transfer.
const LARGE: usize = 50 << 20;
/// Debug builds (this crate optimized, see Cargo.toml) move 100-500 Mbit/s
/// through the tunnel on a busy 2-core machine.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
const UNDERLAY: [u8; 2] = [78, 0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Offload,
    Plain,
}

/// Whether an agent offers AES-256-GCM (where its CPU runs it fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aes {
    Offered,
    Off,
}

/// The mixed pair's plain side also turns busy polling off.
fn up_args(mode: Mode, aes: Aes) -> Vec<&'static str> {
    let mut args = Vec::new();
    if mode == Mode::Plain {
        args.push("--no-offload");
    }
    if aes == Aes::Off {
        args.extend(["--no-aes", "--busy-poll", "0"]);
    }
    args
}

/// How long the daemons' CPU time is watched once traffic has stopped, and
/// how much of it they may use: timers and keepalives take microseconds,
/// a daemon still polling would take the whole interval.
const IDLE_WATCH: Duration = Duration::from_secs(1);
const IDLE_CPU_LIMIT: Duration = Duration::from_millis(100);

/// Checks that neither daemon keeps the CPU busy once the traffic is over.
fn idle_daemons_sleep(agents: [&Agent; 2]) -> Result<(), String> {
    let pids = [agents[0].daemon_pid()?, agents[1].daemon_pid()?];
    let before = [cpu_time(pids[0])?, cpu_time(pids[1])?];
    let started = Instant::now();
    // Measuring CPU time over an interval: there is no condition to wait on.
    std::thread::sleep(IDLE_WATCH);
    let watched = started.elapsed();
    for ((agent, pid), before) in agents.iter().zip(&pids).zip(before) {
        let used = cpu_time(*pid)?.saturating_sub(before);
        if used > IDLE_CPU_LIMIT {
            return Err(format!(
                "{}: the idle daemon used {used:?} of CPU in {watched:?} (limit {IDLE_CPU_LIMIT:?}): it did not go back to sleep",
                agent.name
            ));
        }
    }
    Ok(())
}

/// The cipher two agents must agree on: AES-256-GCM only when both offer it
/// and this CPU has the instructions the daemons look for.
fn expected_cipher(a: Aes, b: Aes) -> &'static str {
    let accelerated = CipherSet::accelerated().contains(TransportCipher::Aes256Gcm);
    let cipher = if accelerated && a == Aes::Offered && b == Aes::Offered {
        TransportCipher::Aes256Gcm
    } else {
        TransportCipher::ChaCha20Poly1305
    };
    cipher.name()
}

/// Checks that `agent`'s session with its one peer uses `expected`.
fn expect_cipher(agent: &Agent, expected: &str) -> Result<(), String> {
    let status = agent.status()?;
    let cipher = &status["peers"][0]["cipher"];
    if cipher.as_str() == Some(expected) {
        Ok(())
    } else {
        Err(format!(
            "{}: session cipher {cipher}, expected {expected}",
            agent.name
        ))
    }
}

impl Mode {
    /// What `status --json` must say about the offloads in this mode. The
    /// lab's kernel (and CI's) has all of them: a daemon that silently fell
    /// back would not test the offload path.
    fn expect_status(self, agent: &Agent) -> Result<(), String> {
        let status = agent.status()?;
        let on = self == Mode::Offload;
        let offload = &status["offload"];
        for key in ["tun", "udp_gso", "udp_gro"] {
            if offload[key] != Value::Bool(on) {
                return Err(format!(
                    "{}: status.offload.{key} = {}, expected {on} in mode {self:?} ({offload})",
                    agent.name, offload[key]
                ));
            }
        }
        Ok(())
    }
}

#[test]
fn large_transfers_are_intact_with_and_without_offloads() {
    let Some(()) = support::netns_ready!(TOOLS) else {
        return;
    };
    let lab = Lab::new().expect("lab");
    let [host_a, host_b] = lab
        .veth_pair(UNDERLAY, ["a", "b"], 1500)
        .expect("veth pair");
    let a = Agent::new(&lab, &host_a, "off-a").expect("agent a");
    let b = Agent::new(&lab, &host_b, "off-b").expect("agent b");
    a.init().expect("init a");
    b.init().expect("init b");
    let id_a = a.id().expect("id a");
    let id_b = b.id().expect("id b");
    // The trust is written with the daemons stopped and read at each `up`.
    a.trust_add(&id_b, "b", Some(b.endpoint()))
        .expect("a trusts b");
    b.trust_add(&id_a, "a", None).expect("b trusts a");

    let mut failures = Vec::new();
    for ((mode_a, aes_a), (mode_b, aes_b)) in [
        ((Mode::Offload, Aes::Offered), (Mode::Offload, Aes::Offered)),
        ((Mode::Plain, Aes::Offered), (Mode::Plain, Aes::Offered)),
        ((Mode::Offload, Aes::Offered), (Mode::Plain, Aes::Off)),
    ] {
        let label = format!("a {mode_a:?} AES {aes_a:?}, b {mode_b:?} AES {aes_b:?}");
        step(&label);
        let result = run_mode(
            &lab,
            (&a, mode_a, aes_a),
            (&b, mode_b, aes_b),
            (&id_a, &id_b),
        );
        match result {
            Ok(report) => step(&format!("{label}: ok, {report}")),
            Err(e) => {
                step(&format!("{label}: FAILED"));
                failures.push(format!("== {label} ==\n{e}"));
            }
        }
        let _ = a.down();
        let _ = b.down();
    }
    assert!(
        failures.is_empty(),
        "{} mode(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Brings both agents up in their modes and moves the data: B serves A in
/// uniform modes; both ways when the modes differ. Then both sides' session
/// must use the cipher the two offers give.
fn run_mode(
    lab: &Lab,
    (a, mode_a, aes_a): (&Agent, Mode, Aes),
    (b, mode_b, aes_b): (&Agent, Mode, Aes),
    ids: (&Identity, &Identity),
) -> Result<String, String> {
    a.up_with(&up_args(mode_a, aes_a))?;
    b.up_with(&up_args(mode_b, aes_b))?;
    mode_a.expect_status(a)?;
    mode_b.expect_status(b)?;
    let report = transfer(lab, (a, mode_a), (b, mode_b), ids)?;
    idle_daemons_sleep([a, b])?;
    let cipher = expected_cipher(aes_a, aes_b);
    expect_cipher(a, cipher)?;
    expect_cipher(b, cipher)?;
    Ok(format!("{report}, {cipher}"))
}

/// The downloads of [`run_mode`].
fn transfer(
    lab: &Lab,
    (a, mode_a): (&Agent, Mode),
    (b, mode_b): (&Agent, Mode),
    (id_a, id_b): (&Identity, &Identity),
) -> Result<String, String> {
    let mib = |bytes: usize| bytes >> 20;
    let rate = |bytes: usize, took: Duration| bytes as f64 * 8.0 / took.as_secs_f64() / 1e6;
    if mode_a == mode_b {
        let took = support::http::fetch_over_overlay(
            lab,
            a,
            b,
            id_b.address,
            8080,
            LARGE,
            TRANSFER_TIMEOUT,
        )?;
        // The same over IPv4: a server on 0.0.0.0, fetched at B's IPv4
        // overlay address (TCPv4 segments through both TUNs).
        let address4: std::net::Ipv4Addr = id_b.json["address4"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .ok_or("`agentnet id --json` has no address4")?;
        let took4 = support::http::fetch_from(
            lab,
            a,
            b,
            (std::net::Ipv4Addr::UNSPECIFIED.into(), address4.into()),
            8083,
            LARGE,
            TRANSFER_TIMEOUT,
        )?;
        Ok(format!(
            "{} MiB b -> a intact in {:.1} s ({:.0} Mbit/s), over IPv4 in {:.1} s ({:.0} Mbit/s)",
            mib(LARGE),
            took.as_secs_f64(),
            rate(LARGE, took),
            took4.as_secs_f64(),
            rate(LARGE, took4)
        ))
    } else {
        let to_a = support::http::fetch_over_overlay(
            lab,
            a,
            b,
            id_b.address,
            8081,
            LARGE,
            TRANSFER_TIMEOUT,
        )?;
        let to_b = support::http::fetch_over_overlay(
            lab,
            b,
            a,
            id_a.address,
            8082,
            LARGE,
            TRANSFER_TIMEOUT,
        )?;
        Ok(format!(
            "{} MiB each way intact ({:.0} / {:.0} Mbit/s)",
            mib(LARGE),
            rate(LARGE, to_a),
            rate(LARGE, to_b)
        ))
    }
}
