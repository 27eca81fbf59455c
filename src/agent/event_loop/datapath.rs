//! The datapath thread: [`Daemon::run`] starts it and waits for it on the
//! runtime's thread; [`Daemon::run_datapath`] is its loop: one
//! level-triggered `epoll` over the UDP socket, the TUN (or the userspace
//! stack's wake) and the quiet inputs' wake, with the earliest deadline as
//! its timeout.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::busy_poll::BusyPoll;
use super::chores::Chores;
use super::inputs::{Drained, ReadAhead, reads_answer};
use super::quiet_inputs::{QuietChannels, QuietInput};
use super::signals::SignalEvent;
use super::{Daemon, Signals, Stop};
use crate::agent::DaemonError;
use crate::agent::commands::ControlRequest;
use crate::agent::tun_batch::TunReadBatch;
use crate::core::address::NodePrefix;
use crate::rendezvous::link::TcpLinkEvent;
use crate::sys::poller::{Poller, Source};
use crate::sys::udp_batch::ReceivedRun;
use crate::sys::wake::Wake;
use crate::sys::wake_clock::WakeClock;

/// Most quiet inputs (control requests, link events…) one turn takes: the
/// forwarder refills their channel from another thread as the loop drains
/// it.
const QUIET_INPUTS_PER_WAKE: usize = 64;

impl Daemon {
    /// Loads the trust store into the node, then runs the datapath on a
    /// thread of its own until told to stop, while this task's runtime
    /// serves everything else (control connections, served ports, signals,
    /// rendezvous links, the port mapping). Dropping the daemon at the end
    /// closes the TUN.
    pub(crate) async fn run(
        mut self,
        requests: mpsc::Receiver<ControlRequest>,
        signals: Signals,
        link_events: mpsc::Receiver<TcpLinkEvent>,
    ) -> Result<(), DaemonError> {
        let wake = Arc::new(Wake::new().map_err(DaemonError::Runtime)?);
        let probe_datagrams =
            self.probe_datagrams
                .take()
                .ok_or(DaemonError::Runtime(io::Error::other(
                    "the event loop runs only once",
                )))?;
        let quiet = QuietChannels {
            requests,
            caller_queries: self.caller_queries.take(),
            probe_datagrams,
            link_events,
            signals: signals.forward(),
            port_map: self.portmap.watch(),
        }
        .merge(wake.clone());
        // The caller dropped privileges already: that must happen while the
        // process has a single thread.
        let runtime = tokio::runtime::Handle::current();
        let (finished, datapath_finished) = tokio::sync::oneshot::channel();
        let datapath = std::thread::Builder::new()
            .name("agentnet-datapath".into())
            .spawn(move || {
                // Served ports, probe sockets and the trust flow spawn tasks
                // and make sockets: on the runtime, from this thread.
                let _runtime = runtime.enter();
                let outcome = self.run_datapath(quiet, &wake);
                // The runtime's side may have gone only if it failed itself.
                let _ = finished.send((self, outcome));
            })
            .map_err(DaemonError::Runtime)?;
        let finished = datapath_finished.await;
        // It has sent its last word; the join only collects the thread.
        if datapath.join().is_err() {
            tracing::error!("the datapath thread panicked");
        }
        let (mut daemon, outcome) = finished.map_err(|_| {
            DaemonError::Runtime(io::Error::other("the datapath thread ended without a word"))
        })?;
        daemon.portmap.shutdown().await;
        outcome
    }

    /// The datapath: waits on the UDP socket, the TUN (or the userspace
    /// stack) and the wake-ups from the runtime's thread in one `epoll`,
    /// feeds the node and drains its outputs, until a stop.
    fn run_datapath(
        &mut self,
        mut quiet: mpsc::Receiver<QuietInput>,
        wake: &Wake,
    ) -> Result<(), DaemonError> {
        let mut poller = Poller::new().map_err(DaemonError::Runtime)?;
        poller
            .watch(self.underlay.as_fd(), Source::Udp)
            .and_then(|()| self.tun.watch(&poller))
            .and_then(|()| poller.watch(wake.as_fd(), Source::Wake))
            .map_err(DaemonError::Runtime)?;
        self.refresh_candidates();
        self.reload_trust_store(Instant::now());
        self.sync_names();
        self.start_trust_flow(Instant::now())?;
        self.flush(Instant::now());
        let address = NodePrefix::of_agent(self.network, &self.own_id).agent_address();
        tracing::info!(
            id = %self.own_id,
            %address,
            name = %self.config.name,
            network = %self.config.network,
            interface = %self.interface,
            port = self.underlay.port(),
            mtu = self.mtu,
            peers = self.trust.peers.len(),
            tun_offload = self.tun.offload(),
            udp_gso = self.underlay.offload().gso,
            udp_gro = self.underlay.offload().gro,
            "agentnet is up"
        );

        let mut udp_run = ReceivedRun::default();
        let mut tun_read = TunReadBatch::new(self.mtu, self.tun.offload());
        let mut busy_poll = BusyPoll::new(self.options.busy_poll);
        let mut chores = Chores::new(Instant::now());
        // What was queued before the loop (this also starts the userspace
        // stack's thread).
        self.drain_tun(Instant::now(), &mut tun_read, usize::MAX)?;
        let mut udp_ahead = ReadAhead::default();
        let mut tun_ahead = ReadAhead::default();
        let mut took_last_turn = false;
        let mut wake_clock = WakeClock::new();
        let mut deadline = Instant::now();
        while self.stop.is_none() {
            // After a turn that took packets the loop looks again at once,
            // with the deadline it had (see `BusyPoll::skips_upkeep`);
            // otherwise it reads the system clock and the deadlines.
            let (polling, mut timeout) =
                if took_last_turn && busy_poll.skips_upkeep(wake_clock.now()) {
                    (true, Duration::ZERO)
                } else {
                    let now = Instant::now();
                    wake_clock.anchor(now);
                    if took_last_turn {
                        // The window opens once the packets' replies have left.
                        busy_poll.on_packet(now);
                    }
                    deadline = [
                        self.node.poll_timeout(),
                        self.trust_flow_deadline(),
                        self.names.services_deadline(&self.node),
                    ]
                    .into_iter()
                    .flatten()
                    .fold(chores.next(self.links_need_ticks()), Instant::min);
                    busy_poll.upkept();
                    if busy_poll.is_polling(now) {
                        (true, Duration::ZERO)
                    } else {
                        (false, deadline.saturating_duration_since(now))
                    }
                };
            let armed = !timeout.is_zero();
            if armed {
                // About to sleep: from here on the other threads write the
                // wakes; what they queued before is looked at now.
                wake.arm();
                self.tun.arm_wake();
                if !quiet.is_empty() || self.tun.has_queued() {
                    timeout = Duration::ZERO;
                }
            }
            let ready = poller.wait(Some(timeout)).map_err(DaemonError::Runtime)?;
            if armed {
                wake.disarm();
                self.tun.disarm_wake();
                udp_ahead.slept();
                tun_ahead.slept();
            }
            // The clock once for what the wake brought: its packets, the
            // timers and the flush take this reading (a quiet input, rare,
            // reads its own, and then the turn reads it again after it).
            // (After a sleep the system clock's first reading is cold, ~2 µs:
            // the counter bridges the sleep, see `WakeClock`.)
            let now = wake_clock.now();
            let mut from_udp = Drained::default();
            if ready.udp {
                from_udp = self.drain_underlay(now, &mut udp_run, udp_ahead.max_reads());
            }
            udp_ahead.record(from_udp);
            let mut from_tun = Drained::default();
            if ready.tun || self.tun.has_queued() {
                self.tun.reset_wake();
                from_tun = self.drain_tun(now, &mut tun_read, tun_ahead.max_reads())?;
            }
            tun_ahead.record(from_tun);
            let took = from_udp.reads + from_tun.reads > 0;
            if ready.wake {
                wake.reset();
            }
            let mut now = now;
            if ready.wake || !quiet.is_empty() {
                // Bounded: the forwarder refills the channel as it drains.
                // A `down` or a stop signal ends the turn: what came after it
                // is not answered, as the process is going.
                for _ in 0..QUIET_INPUTS_PER_WAKE {
                    let Ok(input) = quiet.try_recv() else { break };
                    self.on_quiet_input(input);
                    if self.stop.is_some() {
                        break;
                    }
                }
                // The node's clock never goes back.
                now = Instant::now().max(now);
                busy_poll.upkeep_now();
            }
            took_last_turn = took;
            if !took && polling && !ready.wake {
                // Nothing this turn: the CPU goes to any other runnable
                // thread before the next look (a busy machine loses only a
                // `sched_yield`).
                std::thread::yield_now();
            }
            if now >= deadline {
                busy_poll.upkeep_now();
                self.node.handle_timeout(now);
                self.on_trust_flow_timer(now);
                if chores.candidates_due(now) {
                    self.refresh_candidates();
                }
                // Only while there is something to look after: an idle
                // daemon without rendezvous or probe sockets sleeps.
                if chores.links_due(now, self.links_need_ticks()) {
                    self.links.tick(now, &mut self.node);
                    self.probes.sweep(now);
                }
            }
            let tun_batches = self.tun_batches_written;
            self.flush(now);
            // What the kernel answered within the TUN write leaves now.
            let wrote_tun = self.tun_batches_written != tun_batches;
            if busy_poll.after_flush(
                from_udp.packets > 0 && wrote_tun,
                polling && from_udp.packets == 0 && from_tun.packets > 0,
            ) {
                // A local program's reply to what this window delivered
                // has left: sleep rather than poll (see
                // `BusyPoll::after_flush`).
                took_last_turn = false;
            }
            if reads_answer(
                from_udp,
                from_tun,
                wrote_tun && self.wrote_answerable(),
                self.tun.answers_within_write(),
            ) && self.read_answer(now, &mut tun_read)?
            {
                self.flush(now);
                // The kernel's answer has left, and nothing more is owed
                // for the packet it answered: sleep rather than poll (see
                // `BusyPoll::answered`).
                busy_poll.answered();
                took_last_turn = false;
            }
        }
        self.save_pending_if_changed();
        self.names.shutdown();
        match self.stop {
            Some(Stop::Signal(name)) => tracing::info!(signal = name, "shutting down"),
            _ => tracing::info!("shutting down on request"),
        }
        Ok(())
    }

    /// Whether the rendezvous links or the probe sockets need the periodic
    /// tick.
    fn links_need_ticks(&self) -> bool {
        !self.links.is_empty() || !self.probes.is_empty()
    }

    fn on_quiet_input(&mut self, input: QuietInput) {
        match input {
            QuietInput::Request(request) => {
                let response = self.on_command(request.command);
                // Names follow the trust store before the client hears back.
                self.sync_names();
                // The client may have gone; its answer is then moot.
                let _ = request.reply.send(response);
            }
            QuietInput::CallerQuery(query) => {
                let caller = self
                    .node
                    .peer_of_address(query.address)
                    .map(|id| (id, self.peer_name(&id).to_string()));
                // The connection may have gone; its answer is then moot.
                let _ = query.reply.send(caller);
            }
            QuietInput::ProbeDatagram((socket, from, datagram)) => {
                let now = Instant::now();
                self.probes.touch(now, socket);
                self.node
                    .handle_datagram_on_probe(now, socket, from, &datagram);
            }
            QuietInput::Link(event) => {
                let now = Instant::now();
                if let Some((from, datagram)) = self.links.on_event(now, event, &mut self.node) {
                    self.node.handle_datagram(now, from, &datagram);
                }
            }
            QuietInput::Signal(SignalEvent::Stop(name)) => self.stop = Some(Stop::Signal(name)),
            QuietInput::Signal(SignalEvent::Reload) => {
                tracing::info!("SIGHUP: reloading the trust store");
                self.reload_trust_store(Instant::now());
                self.sync_names();
            }
            QuietInput::PortMap => {
                if let Some(mapped) = self.portmap.take_change() {
                    self.node.set_mapped_candidate(Instant::now(), mapped);
                }
            }
        }
    }
}
