//! Every system call of the shell and the only `unsafe` code of the crate:
//! the UDP socket with GSO/GRO batching, the TUN device and its offload
//! batches, the datapath's `epoll`, its wake-ups and its clock after one
//! (the CPU's time-stamp counter), probe sockets, capabilities, the
//! system programs the daemon runs, network namespaces, opening state
//! files without following links, and datagram framing over TCP. Each `unsafe` block says why it is
//! sound.

pub mod calls;
pub mod capabilities;
pub(crate) mod file_pages;
pub mod gather_list;
pub mod netns;
pub mod nofollow;
pub mod poller;
pub mod probe_sockets;
pub mod programs;
pub mod tcp_frames;
pub mod tun;
pub mod udp;
pub mod udp_batch;
pub mod wake;
pub mod wake_clock;

/// Whether a unit test that needs root runs: as root it does; otherwise it
/// is skipped with the reason printed, unless `AGENTNET_REQUIRE_NETNS=1`
/// (CI) forbids skipping, as for the namespace tests.
#[cfg(test)]
pub(crate) fn root_for_test(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("AGENTNET_REQUIRE_NETNS").as_deref() != Ok("1"),
        "{test} needs root, and AGENTNET_REQUIRE_NETNS=1 forbids skipping"
    );
    eprintln!("SKIPPED {test}: not running as root");
    false
}
