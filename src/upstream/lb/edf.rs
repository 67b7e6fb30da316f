//! Earliest-deadline-first scheduling, as Envoy weights hosts and localities: each
//! entry is due `1 / weight` after it was last picked, and the earliest due is picked
//! next (ties in insertion order). Over any stretch, entries are picked in proportion
//! to their weights, smoothly interleaved.
use std::{cmp::Ordering, collections::BinaryHeap};

#[derive(Debug)]
pub struct Edf {
    heap: BinaryHeap<Entry>,
    now: f64,
    seq: u64,
}

#[derive(Debug)]
struct Entry {
    due: f64,
    seq: u64,
    item: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    /// Reversed: the heap's top is the earliest due, then the first inserted.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .due
            .total_cmp(&self.due)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl Edf {
    /// A schedule over the items with a positive weight.
    pub fn new(weights: impl IntoIterator<Item = (usize, f64)>) -> Self {
        let mut edf = Edf {
            heap: BinaryHeap::new(),
            now: 0.0,
            seq: 0,
        };
        for (item, w) in weights {
            edf.add(item, w);
        }
        edf
    }

    fn add(&mut self, item: usize, weight: f64) {
        if weight > 0.0 && weight.is_finite() {
            self.heap.push(Entry {
                due: self.now + 1.0 / weight,
                seq: self.seq,
                item,
            });
            self.seq += 1;
        }
    }

    /// The next item; it is scheduled again with the weight `weight_of` gives it now
    /// (least request re-weighs a host by its active requests).
    pub fn pick(&mut self, weight_of: impl FnOnce(usize) -> f64) -> Option<usize> {
        let e = self.heap.pop()?;
        self.now = e.due;
        self.add(e.item, weight_of(e.item));
        Some(e.item)
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_in_proportion_to_weight_interleaved() {
        let w = [1.0, 2.0, 3.0];
        let mut edf = Edf::new(w.iter().copied().enumerate());
        let picks: Vec<usize> = (0..12).map(|_| edf.pick(|i| w[i]).unwrap()).collect();
        let count = |i| picks.iter().filter(|&&p| p == i).count();
        assert_eq!((count(0), count(1), count(2)), (2, 4, 6));
        // Smooth: the heaviest never waits more than two picks.
        assert!(picks.windows(3).all(|win| win.contains(&2)), "{picks:?}");
    }

    #[test]
    fn equal_weights_go_in_insertion_order() {
        let mut edf = Edf::new([(0, 1.0), (1, 1.0), (2, 1.0)]);
        let picks: Vec<usize> = (0..6).map(|_| edf.pick(|_| 1.0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn zero_weights_are_never_picked() {
        let mut edf = Edf::new([(0, 0.0), (1, 1.0)]);
        assert!((0..5).all(|_| edf.pick(|_| 1.0) == Some(1)));
        assert!(Edf::new([(0, 0.0)]).is_empty());
    }
}
