//! The few system calls nix does not wrap. The only module of the shell with
//! `unsafe`; each block says why it is sound.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// The MTU of a network interface in the current network namespace
/// (`SIOCGIFMTU`).
pub(crate) fn interface_mtu(name: &str) -> io::Result<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name `{name}`"),
        ));
    }
    let probe = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .or_else(|_| {
        socket(
            AddressFamily::Inet6,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
    })?;
    // SAFETY: `ifreq` is plain data (byte arrays, integers and a union of
    // such, one of them a raw pointer that is never dereferenced here); the
    // all-zero bit pattern is a valid value of every field.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `probe` is an open socket for the whole call; SIOCGIFMTU reads
    // `ifr_name` (NUL-terminated: zeroed and the name is shorter than
    // IFNAMSIZ) and writes only `ifr_ifru.ifru_mtu` inside `request`, which
    // is a live, exclusively borrowed `ifreq`.
    let rc = unsafe {
        libc::ioctl(
            probe.as_raw_fd(),
            libc::SIOCGIFMTU as _,
            &mut request as *mut libc::ifreq,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a successful SIOCGIFMTU has written `ifru_mtu`, a plain
    // integer; every bit pattern is a valid `c_int`.
    let mtu = unsafe { request.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "negative MTU"))
}

/// Raises the soft limit of open files to the hard limit: every relayed or
/// served connection holds a local socket (a served HTTP request two), and
/// the usual soft limit (1024) is below the thousand connections a proxy
/// should carry. Unprivileged.
pub(crate) fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(errno) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::debug!(%errno, soft, hard, "cannot raise the open-file limit");
            }
        }
        Ok(_) => {}
        Err(errno) => tracing::debug!(%errno, "cannot read the open-file limit"),
    }
}

/// Heap memory freed at the top of glibc's heap is kept for reuse until
/// this much is free (glibc's default, 128 KiB, returns it after every
/// burst).
const KEEP_FREED_HEAP: libc::c_int = 4 << 20;
/// Blocks of this size and more get a mapping of their own; smaller ones
/// come from the heap. glibc's default starts at 128 KiB and rises to the
/// size of each mapped block freed, which let the data path's batches move
/// in and out of mappings. Fixed at the userspace stack's 256 KiB socket
/// rings, which then start as untouched zero pages: a ring holds only the
/// pages its connection wrote, and a closed one is unmapped instead of left
/// dirty in the heap (where glibc clears the whole block again for the
/// next connection). Nothing on the data path asks for that much.
const MAPPED_FROM: libc::c_int = 256 << 10;
/// Heaps (arenas) shared by all threads. glibc gives a second thread that
/// allocates a heap of its own, which keeps its own freed memory: rootless
/// mode's stack thread hands packets to the daemon's thread and back, so
/// two heaps each held a burst's worth. The daemon's threads are few and
/// rarely allocate at the same time.
const HEAPS: libc::c_int = 1;

/// Makes glibc's allocator keep freed memory instead of returning it to
/// the kernel at once (`mallopt`). A wake of the data path holds a batch of
/// packet buffers, a few hundred KiB, and frees them all; with glibc's
/// defaults every such batch shrank the heap (`brk`) and the next one grew
/// it again and faulted its pages back in: about 860 `brk` calls a second
/// per daemon under one TCP stream, and a tenth of the throughput (issue
/// 16). With these settings there are none. The memory kept is bounded by
/// [`KEEP_FREED_HEAP`], in one heap ([`HEAPS`]); large blocks are mapped
/// apart ([`MAPPED_FROM`]). Other C libraries: no-op.
pub(crate) fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (parameter, value, name) in [
        (libc::M_TRIM_THRESHOLD, KEEP_FREED_HEAP, "M_TRIM_THRESHOLD"),
        (libc::M_MMAP_THRESHOLD, MAPPED_FROM, "M_MMAP_THRESHOLD"),
        (libc::M_ARENA_MAX, HEAPS, "M_ARENA_MAX"),
    ] {
        // SAFETY: `mallopt` only sets allocator parameters, under the
        // allocator's own lock; all are documented glibc parameters and
        // the values are in their range.
        if unsafe { libc::mallopt(parameter, value) } != 1 {
            tracing::debug!(parameter = name, value, "glibc refused a malloc setting");
        }
    }
}

/// Runs `work` in a forked child process and returns the bytes it
/// produced (at most `limit`). For queries whose side effects the caller
/// must not keep: glibc loads a user-database module (`libnss_systemd` and
/// what it links, ~0.7 MiB resident) on the first `getpwnam` that falls
/// through `files`, and never unloads it.
///
/// Only a single-threaded process may fork and go on running arbitrary code
/// in the child (another thread could hold the allocator's lock), so with
/// more than one thread this refuses (`Unsupported`) and the caller asks in
/// process instead. A child that panics, is killed or says more than
/// `limit` bytes is an error.
pub(crate) fn run_in_child(work: impl FnOnce() -> Vec<u8>, limit: usize) -> io::Result<Vec<u8>> {
    use std::io::{Read, Write};

    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{threads} threads: forking would not be safe"),
        ));
    }
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the process has a single thread (checked just above, and
    // nothing here starts one), so the child is a complete copy in which
    // every lock is free and any code may run. The child never returns
    // from this function: it leaves through `_exit`, running no destructor
    // and no `atexit` handler of the parent's state.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => {
            drop(reader);
            let produced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let code = match produced {
                Ok(bytes) => i32::from(std::fs::File::from(writer).write_all(&bytes).is_err()),
                Err(_) => 2,
            };
            // SAFETY: `_exit` ends the process at once; no Rust value of
            // the child is used after it.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(writer);
            let mut bytes = Vec::new();
            // The read end closes here: a child with more to say gets
            // EPIPE instead of blocking the wait below.
            let read = std::fs::File::from(reader)
                .take(limit as u64 + 1)
                .read_to_end(&mut bytes);
            // Reaped whatever the read gave, so no zombie is left behind.
            let status = loop {
                match nix::sys::wait::waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other?,
                }
            };
            read?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) if bytes.len() <= limit => Ok(bytes),
                nix::sys::wait::WaitStatus::Exited(_, 0) => Err(io::Error::other(format!(
                    "the child process said more than {limit} bytes"
                ))),
                other => Err(io::Error::other(format!(
                    "the child process failed: {other:?}"
                ))),
            }
        }
    }
}

/// How many threads this process has (`/proc/self/task`).
pub(crate) fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`): for
/// benchmarks on a shared machine, where time spent preempted by other work
/// must not count.
pub fn thread_cpu_time() -> io::Result<std::time::Duration> {
    let time = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)?;
    Ok(std::time::Duration::from(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_an_mtu() {
        let mtu = interface_mtu("lo").expect("lo exists");
        assert!(mtu >= 1280, "{mtu}");
    }

    #[test]
    fn unknown_or_bad_names_are_errors() {
        assert!(interface_mtu("no-such-if0").is_err());
        assert!(interface_mtu("").is_err());
        assert!(interface_mtu(&"x".repeat(16)).is_err());
    }
}
