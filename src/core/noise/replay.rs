//! RFC 6479 sliding replay window: check before decrypting, mark only after
//! the tag verified, so forged packets cannot move the window.

/// Bits per block of the bitmap.
const BLOCK_BITS: u64 = 64;
/// Number of blocks; one block is always the "future" block being reused.
const BLOCKS: usize = 32;
/// How far behind the highest counter a packet may arrive and still count.
pub const WINDOW_SIZE: u64 = (BLOCKS as u64 - 1) * BLOCK_BITS;

/// Counters seen on one receiving session.
///
/// A session that never got past its first 64 counters (an idle peer's:
/// the handshake confirmation and a few keepalives) keeps one block of the
/// bitmap inline; the whole bitmap (256 bytes) is allocated when a counter
/// beyond that block is marked (issue 7: memory per idle peer).
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest counter marked so far, plus one (0 = nothing seen).
    next: u64,
    /// Block 0 while `blocks` is not allocated (every counter marked is
    /// below [`BLOCK_BITS`]); unused after.
    first_block: u64,
    /// All blocks; counter `c` is bit `c % 64` of block `c / 64 % BLOCKS`.
    blocks: Option<Box<[u64; BLOCKS]>>,
}

/// The whole bitmap, holding the first block's bits.
#[cold]
fn all_blocks(first_block: u64) -> Box<[u64; BLOCKS]> {
    let mut blocks = Box::new([0; BLOCKS]);
    blocks[0] = first_block;
    blocks
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("next", &self.next)
            .finish()
    }
}

/// What the window says of a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayVerdict {
    /// Not seen and inside or ahead of the window.
    Fresh,
    /// Seen before.
    Duplicate,
    /// Too old to tell: behind the window.
    TooOld,
}

impl ReplayWindow {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            next: 0,
            first_block: 0,
            blocks: None,
        }
    }

    /// Highest counter marked, if any.
    pub fn highest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    fn position(counter: u64) -> (usize, u64) {
        let block = (counter / BLOCK_BITS) as usize % BLOCKS;
        (block, 1u64 << (counter % BLOCK_BITS))
    }

    /// Checks a counter without changing the window.
    #[inline]
    pub fn check(&self, counter: u64) -> ReplayVerdict {
        if counter == u64::MAX {
            // Never valid (the sender rejects far earlier); keeps `next` from overflowing.
            return ReplayVerdict::TooOld;
        }
        if counter >= self.next {
            return ReplayVerdict::Fresh;
        }
        if self.next - counter > WINDOW_SIZE {
            return ReplayVerdict::TooOld;
        }
        let (block, bit) = Self::position(counter);
        let bits = match &self.blocks {
            Some(blocks) => blocks[block],
            // Every counter marked is below 64, so is `counter` (< next).
            None => self.first_block,
        };
        if bits & bit == 0 {
            ReplayVerdict::Fresh
        } else {
            ReplayVerdict::Duplicate
        }
    }

    /// Marks a counter as seen (call only after authentication). Returns
    /// false, changing nothing, if the counter is not fresh.
    #[inline]
    pub fn mark(&mut self, counter: u64) -> bool {
        if self.check(counter) != ReplayVerdict::Fresh {
            return false;
        }
        let (block, bit) = Self::position(counter);
        if self.blocks.is_none() && counter < BLOCK_BITS {
            // Nothing slides: the highest counter is in block 0 too.
            self.first_block |= bit;
            self.next = self.next.max(counter + 1);
            return true;
        }
        let highest = self.highest();
        let first_block = self.first_block;
        let blocks = self.blocks.get_or_insert_with(|| all_blocks(first_block));
        if counter >= self.next {
            // Clear the blocks the window slides over: those after the
            // highest counter's block, up to and including the new one.
            if let Some(highest) = highest {
                let highest_block = highest / BLOCK_BITS;
                let new_block = counter / BLOCK_BITS;
                let to_clear = (new_block - highest_block).min(BLOCKS as u64);
                for step in 1..=to_clear {
                    let block = ((highest_block + step) % BLOCKS as u64) as usize;
                    blocks[block] = 0;
                }
            }
            self.next = counter + 1;
        }
        blocks[block] |= bit;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn accepts_each_counter_once() {
        let mut window = ReplayWindow::new();
        for counter in [0, 1, 2, 5, 4, 3] {
            assert_eq!(window.check(counter), ReplayVerdict::Fresh);
            assert!(window.mark(counter));
            assert_eq!(window.check(counter), ReplayVerdict::Duplicate);
            assert!(!window.mark(counter));
        }
    }

    #[test]
    fn rejects_counters_behind_the_window() {
        let mut window = ReplayWindow::new();
        assert!(window.mark(10_000));
        assert_eq!(
            window.check(10_000 - WINDOW_SIZE - 1),
            ReplayVerdict::TooOld
        );
        assert_eq!(window.check(10_000 - WINDOW_SIZE + 1), ReplayVerdict::Fresh);
    }

    #[test]
    fn a_big_jump_clears_old_bits() {
        let mut window = ReplayWindow::new();
        assert!(window.mark(3));
        assert!(window.mark(3 + 64 * 40));
        // 3 + 64*32 maps to the same bit as 3 but is new.
        assert_eq!(window.check(3 + 64 * 32), ReplayVerdict::Fresh);
    }

    #[test]
    fn check_does_not_change_the_window() {
        let window = ReplayWindow::new();
        assert_eq!(window.check(5), ReplayVerdict::Fresh);
        assert_eq!(window.highest(), None);
    }

    #[test]
    fn first_block_is_kept_inline_until_a_counter_passes_it() {
        let mut window = ReplayWindow::new();
        for counter in (0..BLOCK_BITS).filter(|counter| *counter != 5) {
            assert!(window.mark(counter));
        }
        assert!(window.blocks.is_none());
        assert!(window.mark(BLOCK_BITS * 3));
        assert!(window.blocks.is_some());
        assert_eq!(window.check(5), ReplayVerdict::Fresh);
        assert_eq!(window.check(4), ReplayVerdict::Duplicate);
        assert_eq!(window.check(BLOCK_BITS), ReplayVerdict::Fresh);
    }

    /// Against a model: a counter is accepted iff it was never accepted
    /// and is not more than WINDOW_SIZE behind the highest accepted one.
    fn check_against_set_model(counters: Vec<u64>) -> Result<(), TestCaseError> {
        let mut window = ReplayWindow::new();
        let mut seen = HashSet::new();
        let mut highest: Option<u64> = None;
        for counter in counters {
            let too_old = highest.is_some_and(|h| h >= counter && h - counter >= WINDOW_SIZE);
            let expected = !too_old && !seen.contains(&counter);
            prop_assert_eq!(window.mark(counter), expected, "counter {}", counter);
            if expected {
                seen.insert(counter);
                highest = Some(highest.map_or(counter, |h| h.max(counter)));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn matches_a_set_model(counters in proptest::collection::vec(0u64..6000, 1..400)) {
            check_against_set_model(counters)?;
        }

        // Mostly inside the first block, then past it.
        #[test]
        fn matches_a_set_model_around_the_first_block(
            counters in proptest::collection::vec(0u64..160, 1..200)
        ) {
            check_against_set_model(counters)?;
        }
    }
}
