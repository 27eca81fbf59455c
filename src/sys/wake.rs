//! A wake-up for the datapath thread from other threads: an `eventfd` its
//! `epoll` watches, written only while the thread is about to sleep.
//!
//! The senders (the quiet-input forwarder on the runtime's thread, the
//! userspace stack on its own) push onto a channel, then call
//! [`Wake::notify`]. The datapath arms the wake before it checks its
//! channels and sleeps; a sender that finds it armed disarms it and writes
//! the `eventfd` once. The datapath disarms it again once awake, so while
//! it is awake (busy, or polling) no sender makes a system call: it finds
//! what was pushed when it next checks. Each side puts a sequentially
//! consistent fence between its store and its load (the datapath: arming,
//! then reading the channel; the sender: pushing, then reading the flag),
//! so at least one of them sees the other's: a push the datapath's check
//! missed comes from a sender that saw the wake armed.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering, fence};

use nix::errno::Errno;
use nix::sys::eventfd::{EfdFlags, EventFd};

/// An `eventfd` with an armed flag (see the module comment).
#[derive(Debug)]
pub struct Wake {
    fd: EventFd,
    armed: AtomicBool,
}

impl Wake {
    /// A non-blocking `eventfd`, disarmed.
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Self {
            fd,
            armed: AtomicBool::new(false),
        })
    }

    /// The sender's side, after it pushed: wakes the datapath if it is
    /// (about to be) asleep.
    pub fn notify(&self) {
        // The push (the channel's own release store) before the flag's load.
        fence(Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            // A full counter (2^64 - 2 wakes unread) is still readable.
            let _ = self.fd.write(1);
        }
    }

    /// Writes whether armed or not: for what the datapath must see even
    /// while awake and not looking (a sender that stopped for good).
    pub fn notify_now(&self) {
        self.armed.store(false, Ordering::SeqCst);
        let _ = self.fd.write(1);
    }

    /// The datapath's side, before it checks its channels a last time and
    /// sleeps.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
        // The flag's store before the channel's (acquire) loads.
        fence(Ordering::SeqCst);
    }

    /// The datapath's side, once awake: senders need not write any more.
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Relaxed);
    }

    /// Empties the `eventfd` after it woke the datapath.
    pub fn reset(&self) {
        match self.fd.read() {
            Ok(_) | Err(Errno::EAGAIN) => {}
            Err(error) => tracing::debug!(%error, "eventfd read failed"),
        }
    }
}

/// Calls [`Wake::notify_now`] when dropped: held by a sender's thread, so
/// that its end (a return or a panic) wakes the datapath, which then finds
/// the channel closed.
#[derive(Debug)]
pub struct WakeWhenGone(pub Arc<Wake>);

impl Drop for WakeWhenGone {
    fn drop(&mut self) {
        self.0.notify_now();
    }
}

impl AsFd for Wake {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

    fn readable(wake: &Wake) -> bool {
        let mut fds = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::ZERO).expect("poll") == 1
    }

    #[test]
    fn writes_only_when_armed_and_once_per_arming() {
        let wake = Wake::new().expect("eventfd");
        wake.notify();
        assert!(!readable(&wake), "disarmed: no write");
        wake.arm();
        wake.notify();
        wake.notify();
        assert!(readable(&wake));
        wake.reset();
        assert!(!readable(&wake), "reset empties it");
        wake.notify();
        assert!(!readable(&wake), "one write per arming");
    }

    #[test]
    fn a_thread_that_ends_wakes_the_datapath_even_awake() {
        let wake = Arc::new(Wake::new().expect("eventfd"));
        let guard = WakeWhenGone(wake.clone());
        let thread = std::thread::spawn(move || {
            let _guard = guard;
            // The sender's work would be here; it returns.
        });
        thread.join().expect("the sender's thread");
        assert!(readable(&wake), "written although never armed");
    }

    #[test]
    fn a_notify_from_another_thread_wakes_a_sleeper() {
        let wake = Arc::new(Wake::new().expect("eventfd"));
        wake.arm();
        let sender = wake.clone();
        let thread = std::thread::spawn(move || sender.notify());
        let mut fds = [PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(5_000u16)).expect("poll");
        assert_eq!(ready, 1, "woken within 5 s");
        thread.join().expect("sender");
    }
}
