//! The checkpoint's watermark over batches that land out of order.

use std::collections::BTreeMap;

/// Batches are numbered in read order (0, 1, 2, …) and land in any order;
/// the checkpoint may only move past a batch once it and every batch before it
/// have landed. `Watermark` holds the early ones until the gap below them
/// closes, then hands them back in order.
#[derive(Debug)]
pub(crate) struct Watermark<T> {
    /// The first batch that has not landed.
    next: u64,
    /// Batches that landed above a gap.
    waiting: BTreeMap<u64, T>,
}

impl<T> Watermark<T> {
    pub(crate) fn new() -> Self {
        Watermark {
            next: 0,
            waiting: BTreeMap::new(),
        }
    }

    /// Batch `seq` has landed: returns, in order, every batch the watermark
    /// now passes over (none while a batch below `seq` is still out).
    pub(crate) fn land(&mut self, seq: u64, batch: T) -> Vec<T> {
        debug_assert!(
            seq >= self.next && !self.waiting.contains_key(&seq),
            "batch {seq} landed twice"
        );
        self.waiting.insert(seq, batch);
        let mut passed = Vec::new();
        while let Some(b) = self.waiting.remove(&self.next) {
            passed.push(b);
            self.next += 1;
        }
        passed
    }

    /// How many batches have landed above a gap.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every permutation of `0..n`.
    fn permutations(n: u64) -> Vec<Vec<u64>> {
        if n == 0 {
            return vec![Vec::new()];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn every_landing_order_releases_each_batch_once_in_read_order() {
        let orders = permutations(6);
        assert_eq!(orders.len(), 720);
        for order in orders {
            let mut w = Watermark::new();
            let mut released = Vec::new();
            for (i, &seq) in order.iter().enumerate() {
                released.extend(w.land(seq, seq));
                // Only a prefix is ever released: every batch below the
                // watermark has landed, and none above it is released.
                let landed: Vec<u64> = order[..=i].to_vec();
                let expected: Vec<u64> = (0..).take_while(|s| landed.contains(s)).collect();
                assert_eq!(released, expected, "order {order:?} after {i}");
            }
            assert_eq!(released, (0..6).collect::<Vec<_>>());
            assert_eq!(w.waiting(), 0);
        }
    }

    #[test]
    fn a_gap_holds_everything_above_it() {
        let mut w = Watermark::new();
        assert!(w.land(1, "b").is_empty());
        assert!(w.land(2, "c").is_empty());
        assert_eq!(w.waiting(), 2);
        assert_eq!(w.land(0, "a"), ["a", "b", "c"]);
        assert_eq!(w.land(3, "d"), ["d"]);
    }
}
