//! A gather list for one vectored write, kept on the stack: the pieces of
//! one UDP run or of one TUN segment.
//!
//! Most writes of an idle or interactive flow carry one piece, and
//! clearing a 64-entry `IoSlice` array (1 KiB) in front of each cost more
//! than the rest of the call's setup; so a lone piece gets a list of one,
//! and the array is made (once per list) only for a longer write.

use std::io::IoSlice;

/// See the module's documentation. `N` is the most pieces one list holds.
#[derive(Debug)]
pub struct GatherList<'a, const N: usize> {
    lone: [IoSlice<'a>; 1],
    many: Option<[IoSlice<'a>; N]>,
}

impl<'a, const N: usize> GatherList<'a, N> {
    /// An empty list; nothing is cleared until a write of two pieces.
    pub fn new() -> Self {
        Self {
            lone: [IoSlice::new(&[])],
            many: None,
        }
    }

    /// The list for `pieces`: the first `N` of them, in order (empty for
    /// none).
    pub fn of(&mut self, mut pieces: impl Iterator<Item = &'a [u8]>) -> &[IoSlice<'a>] {
        let Some(first) = pieces.next() else {
            return &[];
        };
        let Some(second) = pieces.next() else {
            self.lone[0] = IoSlice::new(first);
            return &self.lone;
        };
        let many = self.many.get_or_insert_with(|| [IoSlice::new(&[]); N]);
        let mut count = 0;
        for (slot, piece) in many
            .iter_mut()
            .zip([first, second].into_iter().chain(pieces))
        {
            *slot = IoSlice::new(piece);
            count += 1;
        }
        &many[..count]
    }
}

impl<const N: usize> Default for GatherList<'_, N> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn firsts(list: &[IoSlice<'_>]) -> Vec<u8> {
        list.iter().map(|piece| piece[0]).collect()
    }

    #[test]
    fn lists_the_pieces_in_order_up_to_its_size() {
        let bytes: Vec<[u8; 1]> = (0..5u8).map(|i| [i]).collect();
        let pieces = |n: usize| bytes[..n].iter().map(|piece| &piece[..]);
        let mut list = GatherList::<4>::new();
        assert!(list.of(pieces(0)).is_empty());
        assert_eq!(firsts(list.of(pieces(1))), vec![0], "a lone piece");
        assert_eq!(firsts(list.of(pieces(3))), vec![0, 1, 2]);
        assert_eq!(
            firsts(list.of(pieces(1))),
            vec![0],
            "a lone piece after a longer list"
        );
        assert_eq!(firsts(list.of(pieces(5))), vec![0, 1, 2, 3], "at most N");
    }
}
