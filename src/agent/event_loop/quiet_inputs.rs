//! The loop's quiet inputs, merged into one channel by a task of their own.
//!
//! Control requests, served connections' caller queries, datagrams on the
//! hole-punching probe sockets, rendezvous TCP link events, signals and
//! the port mapping's changes arrive rarely next to packets, and all of
//! them are tokio channels, served by the runtime's thread. A task of
//! their own there forwards them onto one channel, which the datapath
//! thread checks when its `epoll` reports the [`Wake`] the forwarder writes
//! (or, while it polls, at each turn). The datapath never touches the other
//! channels: when the loop was a task waiting in a `select!` on each of
//! them, every one was polled (its state read, a waker registered) twice
//! per packet at idle, cold cache lines paid at every crossing.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::signals::SignalEvent;
use crate::agent::commands::ControlRequest;
use crate::portmap::PortMapState;
use crate::rendezvous::link::TcpLinkEvent;
use crate::serve::CallerQuery;
use crate::sys::probe_sockets::ProbeDatagram;
use crate::sys::wake::Wake;

/// Inputs in flight between the forwarding task and the loop: a small
/// queue that still lets a burst of relayed datagrams (link events) through
/// without the forwarder waiting on each.
const QUEUED_INPUTS: usize = 64;

/// One input for the loop, from whichever channel it came.
pub(super) enum QuietInput {
    Request(ControlRequest),
    CallerQuery(CallerQuery),
    ProbeDatagram(ProbeDatagram),
    Link(TcpLinkEvent),
    Signal(SignalEvent),
    /// The port mapping's state changed (its endpoint may have).
    PortMap,
}

/// The channels the forwarding task waits on.
pub(super) struct QuietChannels {
    pub(super) requests: mpsc::Receiver<ControlRequest>,
    /// `None`: this daemon serves no ports, so no connection asks.
    pub(super) caller_queries: Option<mpsc::Receiver<CallerQuery>>,
    pub(super) probe_datagrams: mpsc::Receiver<ProbeDatagram>,
    pub(super) link_events: mpsc::Receiver<TcpLinkEvent>,
    pub(super) signals: mpsc::Receiver<SignalEvent>,
    /// `None`: port mapping is off.
    pub(super) port_map: Option<watch::Receiver<PortMapState>>,
}

impl QuietChannels {
    /// Spawns the task that forwards every input, in the order each channel
    /// gave them, to the returned receiver, notifying `wake` after each. The
    /// task ends when the loop drops that receiver, or when every channel
    /// has closed.
    pub(super) fn merge(self, wake: Arc<Wake>) -> mpsc::Receiver<QuietInput> {
        let (inputs, merged) = mpsc::channel(QUEUED_INPUTS);
        tokio::spawn(self.forward_to(inputs, wake));
        merged
    }

    async fn forward_to(mut self, inputs: mpsc::Sender<QuietInput>, wake: Arc<Wake>) {
        loop {
            let input = tokio::select! {
                Some(request) = self.requests.recv() => QuietInput::Request(request),
                Some(query) = recv_some(&mut self.caller_queries) => QuietInput::CallerQuery(query),
                Some(datagram) = self.probe_datagrams.recv() => QuietInput::ProbeDatagram(datagram),
                Some(event) = self.link_events.recv() => QuietInput::Link(event),
                Some(signal) = self.signals.recv() => QuietInput::Signal(signal),
                Some(()) = changed_some(&mut self.port_map) => QuietInput::PortMap,
                else => return,
            };
            if inputs.send(input).await.is_err() {
                return;
            }
            wake.notify();
        }
    }
}

/// The next item of an optional channel; `None` at once when there is no
/// channel (which `select!` then leaves out, as a closed one).
async fn recv_some<T>(channel: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match channel {
        Some(channel) => channel.recv().await,
        None => None,
    }
}

/// Waits for the next change of an optional watch; `None` at once when
/// there is no watch, and from the moment its sender is gone.
async fn changed_some<T>(watch: &mut Option<watch::Receiver<T>>) -> Option<()> {
    let receiver = watch.as_mut()?;
    if receiver.changed().await.is_ok() {
        Some(())
    } else {
        *watch = None;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;

    fn channels() -> (
        QuietChannels,
        mpsc::Sender<ControlRequest>,
        mpsc::Sender<SignalEvent>,
        mpsc::Sender<ProbeDatagram>,
        mpsc::Sender<TcpLinkEvent>,
    ) {
        let (request_tx, requests) = mpsc::channel(4);
        let (signal_tx, signals) = mpsc::channel(4);
        let (probe_tx, probe_datagrams) = mpsc::channel(4);
        let (link_tx, link_events) = mpsc::channel(4);
        let channels = QuietChannels {
            requests,
            caller_queries: None,
            probe_datagrams,
            link_events,
            signals,
            port_map: None,
        };
        (channels, request_tx, signal_tx, probe_tx, link_tx)
    }

    fn wake() -> Arc<Wake> {
        Arc::new(Wake::new().expect("eventfd"))
    }

    #[tokio::test]
    async fn forwards_each_input_and_ends_when_every_channel_closed() {
        let (channels, requests, signals, probes, links) = channels();
        let wake = wake();
        // The datapath is asleep: the forward must wake it.
        wake.arm();
        let mut merged = channels.merge(wake.clone());
        signals
            .send(SignalEvent::Reload)
            .await
            .expect("the forwarder holds the receiver");
        assert!(matches!(
            merged.recv().await,
            Some(QuietInput::Signal(SignalEvent::Reload))
        ));
        let mut readable = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        let woken = poll(&mut readable, PollTimeout::from(5_000u16)).expect("poll");
        assert_eq!(woken, 1, "the forwarder wrote the armed wake");
        signals
            .send(SignalEvent::Stop("SIGTERM"))
            .await
            .expect("the forwarder holds the receiver");
        assert!(matches!(
            merged.recv().await,
            Some(QuietInput::Signal(SignalEvent::Stop("SIGTERM")))
        ));
        drop((requests, signals, probes, links));
        assert!(
            merged.recv().await.is_none(),
            "the forwarder ends, closing the merged channel"
        );
    }

    #[tokio::test]
    async fn one_closed_channel_leaves_the_others_forwarded() {
        let (channels, requests, _signals, probes, _links) = channels();
        let mut merged = channels.merge(wake());
        drop(requests);
        let from: std::net::SocketAddr = "192.0.2.7:7400".parse().expect("address");
        probes
            .send((3, from, vec![1, 2, 3]))
            .await
            .expect("the forwarder holds the receiver");
        match merged.recv().await {
            Some(QuietInput::ProbeDatagram((socket, source, datagram))) => {
                assert_eq!((socket, source, datagram), (3, from, vec![1, 2, 3]));
            }
            _ => panic!("the probe datagram was not forwarded"),
        }
    }

    #[tokio::test]
    async fn ends_when_the_loop_is_gone() {
        let (channels, _requests, signals, _probes, _links) = channels();
        let merged = channels.merge(wake());
        drop(merged);
        // The forwarder notices on its next send and drops its receivers.
        let _ = signals.send(SignalEvent::Reload).await;
        tokio::time::timeout(std::time::Duration::from_secs(5), signals.closed())
            .await
            .expect("the forwarder ended and dropped the signal receiver");
    }
}
