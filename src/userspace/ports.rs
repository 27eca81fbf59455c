//! Ephemeral ports on the agent address for connections and flows the
//! stack opens (RFC 6335 dynamic range), never an exposed port.

use std::collections::HashSet;

/// First dynamic port.
const FIRST: u16 = 49_152;
/// Last dynamic port.
const LAST: u16 = 65_535;

/// Hands out free ports of the dynamic range, round-robin from a random
/// start (a port is not reused soon after its connection ended).
#[derive(Debug)]
pub(crate) struct PortAllocator {
    used: HashSet<u16>,
    reserved: HashSet<u16>,
    next: u16,
}

impl PortAllocator {
    /// An allocator starting at a port derived from `seed`, never giving
    /// out `reserved` ports.
    pub(crate) fn new(seed: u64, reserved: impl IntoIterator<Item = u16>) -> Self {
        let span = u64::from(LAST - FIRST) + 1;
        let offset = u16::try_from(seed % span).unwrap_or(0);
        Self {
            used: HashSet::new(),
            reserved: reserved.into_iter().collect(),
            next: FIRST + offset,
        }
    }

    /// A free port, or `None` when all are taken.
    pub(crate) fn allocate(&mut self) -> Option<u16> {
        for _ in FIRST..=LAST {
            let port = self.next;
            self.next = if port == LAST { FIRST } else { port + 1 };
            if !self.used.contains(&port) && !self.reserved.contains(&port) {
                self.used.insert(port);
                return Some(port);
            }
        }
        None
    }

    /// Gives a port back.
    pub(crate) fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }

    /// Ports in use.
    #[cfg(test)]
    pub(crate) fn in_use(&self) -> usize {
        self.used.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_skip_reserved_and_run_out() {
        let mut ports = PortAllocator::new(0, [FIRST + 1]);
        let first = ports.allocate().expect("port");
        assert_eq!(first, FIRST);
        assert_eq!(ports.allocate(), Some(FIRST + 2));
        let total = usize::from(LAST - FIRST) + 1 - 1;
        let mut seen = HashSet::from([FIRST, FIRST + 2]);
        while let Some(port) = ports.allocate() {
            assert!(seen.insert(port), "{port} twice");
        }
        assert_eq!(seen.len(), total);
        ports.release(first);
        assert_eq!(ports.allocate(), Some(first));
        assert_eq!(ports.in_use(), total);
    }
}
