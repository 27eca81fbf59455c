//! The signals the daemon handles, delivered to the loop as one channel.
//!
//! SIGTERM and SIGINT stop the daemon, SIGHUP reloads the trust store. The
//! handlers are installed before anything else is created, so a signal
//! during start-up still leads to a clean exit.
//!
//! The loop does not wait for the three tokio `Signal`s itself: the
//! datapath thread has no runtime to poll them on (and when the loop was a
//! task, its `select!` polled every branch on every turn: a `Signal`'s
//! receive future cost ~15 % of its instructions per packet under
//! `callgrind`, issue 16). A task of its own on the runtime's thread waits
//! for them and forwards each as a [`SignalEvent`], onto the quiet inputs.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

/// What a signal asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignalEvent {
    /// SIGTERM or SIGINT (the name, for the log).
    Stop(&'static str),
    /// SIGHUP: reload the trust store.
    Reload,
}

/// The installed handlers.
pub(crate) struct Signals {
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    pub(crate) fn install() -> io::Result<Self> {
        Ok(Self {
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
            sighup: signal(SignalKind::hangup())?,
        })
    }

    /// Forwards every signal from a task of its own (spawned on the
    /// current runtime); the channel closes only when the runtime ends.
    pub(crate) fn forward(self) -> mpsc::Receiver<SignalEvent> {
        let (events, received) = mpsc::channel(4);
        tokio::spawn(self.forward_to(events));
        received
    }

    async fn forward_to(mut self, events: mpsc::Sender<SignalEvent>) {
        loop {
            let event = tokio::select! {
                _ = self.sigterm.recv() => SignalEvent::Stop("SIGTERM"),
                _ = self.sigint.recv() => SignalEvent::Stop("SIGINT"),
                _ = self.sighup.recv() => SignalEvent::Reload,
            };
            // The loop has gone: nothing is left to tell.
            if events.send(event).await.is_err() {
                return;
            }
        }
    }
}
