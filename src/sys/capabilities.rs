//! Linux capabilities and peer groups: the system calls behind the daemon's
//! privilege drop ([`super::privilege`]) that nix does not wrap. Besides
//! [`super::sys`], the only module of the shell with `unsafe`; each block says
//! why it is sound.
//!
//! Capability sets are bit masks (`1 << CAP_*`). Like the kernel's calls,
//! every function here acts on the calling *thread* only; the caller makes
//! sure the daemon is single-threaded when it matters.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `CAP_NET_ADMIN`: interfaces, routes, netlink configuration.
pub(crate) const CAP_NET_ADMIN: u32 = 12;
/// Highest capability number assumed when the kernel does not say.
const FALLBACK_LAST_CAP: u32 = 40;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Most supplementary groups a peer may have (`NGROUPS_MAX`).
const MAX_PEER_GROUPS: usize = 65_536;

/// The kernel's `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// The kernel's `struct __user_cap_data_struct` (one 32-bit half).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The three capability sets of a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CapabilitySets {
    /// What the thread may use now.
    pub(crate) effective: u64,
    /// What it may make effective.
    pub(crate) permitted: u64,
    /// What may pass through `execve` (with the ambient set).
    pub(crate) inheritable: u64,
}

/// The bit of capability `cap` in a set.
pub(crate) fn bit(cap: u32) -> u64 {
    1u64.checked_shl(cap).unwrap_or(0)
}

/// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub(crate) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|&cap: &u32| cap < 64)
        .unwrap_or(FALLBACK_LAST_CAP)
}

/// The calling thread's capability sets (`capget`).
pub(crate) fn current() -> io::Result<CapabilitySets> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: `header` and `data` are live, exclusively borrowed and laid
    // out as the kernel's v3 structures (`repr(C)`, three u32 per half, two
    // halves); capget writes at most two `CapData` into `data`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut header as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let join = |low: u32, high: u32| u64::from(low) | u64::from(high) << 32;
    Ok(CapabilitySets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
        inheritable: join(data[0].inheritable, data[1].inheritable),
    })
}

/// Sets the calling thread's capability sets (`capset`). Lowering is
/// always allowed; raising only within the permitted and bounding sets.
pub(crate) fn set(sets: CapabilitySets) -> io::Result<()> {
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // Truncation to the two 32-bit halves is the layout, not a loss.
    let half = |set: u64, shift: u32| (set >> shift) as u32;
    let data = [0, 32].map(|shift| CapData {
        effective: half(sets.effective, shift),
        permitted: half(sets.permitted, shift),
        inheritable: half(sets.inheritable, shift),
    });
    // SAFETY: `header` is a live v3 header for the calling thread (pid 0);
    // `data` holds the two halves the v3 ABI reads and outlives the call;
    // capset only reads `data` (and may write the preferred version into
    // `header`, which is exclusively borrowed).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Removes `cap` from the calling thread's bounding set (needs
/// `CAP_SETPCAP`): no later `execve` can ever grant it again.
pub(crate) fn drop_bounding(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAPBSET_DROP takes one integer argument (the capability)
    // and touches no memory of ours; the unused arguments are zero.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAPBSET_DROP,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Adds `cap` (already permitted and inheritable) to the calling thread's
/// ambient set, so that programs it runs (`resolvectl`) keep it.
pub(crate) fn raise_ambient(cap: u32) -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT/PR_CAP_AMBIENT_RAISE takes integer arguments
    // only and touches no memory of ours; the unused arguments are zero.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
            libc::c_ulong::from(cap),
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Empties the calling thread's ambient set.
pub(crate) fn clear_ambient() -> io::Result<()> {
    // SAFETY: PR_CAP_AMBIENT/PR_CAP_AMBIENT_CLEAR_ALL takes integer
    // arguments only and touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The supplementary groups of the process at the other end of a Unix
/// socket, as they were when it connected (`SO_PEERGROUPS`, Linux 4.13+).
pub(crate) fn peer_groups(socket: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let capacity = groups.len() * std::mem::size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity)
            .map_err(|_| io::Error::other("too many peer groups"))?;
        // SAFETY: `groups` is a live buffer of `len` bytes, exclusively
        // borrowed for the call; the kernel writes at most `len` bytes into
        // it and stores the size it needs (or wrote) in `len`.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        let needed =
            usize::try_from(len).unwrap_or(usize::MAX) / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed.min(groups.len()));
            return Ok(groups);
        }
        let error = io::Error::last_os_error();
        // ERANGE: the buffer was too small; `len` says how large it must be.
        if error.raw_os_error() == Some(libc::ERANGE)
            && needed > groups.len()
            && needed <= MAX_PEER_GROUPS
        {
            groups.resize(needed, 0);
            continue;
        }
        return Err(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capget_reads_this_thread() {
        let sets = current().expect("capget");
        // Effective is always within permitted.
        assert_eq!(sets.effective & !sets.permitted, 0);
    }

    #[test]
    fn setting_the_current_sets_again_is_allowed() {
        let sets = current().expect("capget");
        set(sets).expect("capset to the same sets");
        assert_eq!(current().expect("capget"), sets);
    }

    #[test]
    fn bits_and_last_cap_are_sane() {
        assert_eq!(bit(CAP_NET_ADMIN), 1 << 12);
        assert_eq!(bit(64), 0);
        assert!(last_cap() >= CAP_NET_ADMIN);
    }

    #[test]
    fn peer_groups_of_a_socket_pair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().expect("pair");
        use std::os::fd::AsFd;
        let mut groups = peer_groups(a.as_fd()).expect("SO_PEERGROUPS");
        groups.sort_unstable();
        let mut ours: Vec<u32> = nix::unistd::getgroups()
            .expect("getgroups")
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        ours.sort_unstable();
        ours.dedup();
        groups.dedup();
        assert_eq!(groups, ours);
    }
}
