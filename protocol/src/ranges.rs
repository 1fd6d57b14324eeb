//! A set of sequence numbers kept as disjoint inclusive ranges.
//!
//! Used on both sides for selective acknowledgements: the client records which
//! seqs above its watermark are durably stored, the server which pushes a
//! device has acknowledged out of order, so it does not resend them.

use std::collections::BTreeMap;

use crate::frame::Seq;

/// Disjoint, non-adjacent inclusive ranges `start..=end`, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<Seq, Seq>,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// True when the set holds no seq.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Number of disjoint ranges.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Number of seqs held.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s + 1).sum()
    }

    /// True when `seq` is in the set.
    pub fn contains(&self, seq: Seq) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Adds one seq.
    pub fn insert(&mut self, seq: Seq) {
        self.insert_range(seq, seq);
    }

    /// Adds `lo..=hi`, merging with overlapping and adjacent ranges. Does
    /// nothing when `hi < lo`.
    pub fn insert_range(&mut self, lo: Seq, hi: Seq) {
        if hi < lo {
            return;
        }
        let (mut lo, mut hi) = (lo, hi);
        // A range starting at or before `lo` that reaches lo - 1 or further absorbs us.
        if let Some((&s, &e)) = self.ranges.range(..=lo).next_back() {
            if e.saturating_add(1) >= lo {
                lo = s;
                hi = hi.max(e);
                self.ranges.remove(&s);
            }
        }
        // Every range starting inside lo..=hi+1 is absorbed.
        loop {
            let next = self
                .ranges
                .range(lo..=hi.saturating_add(1))
                .next()
                .map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) => {
                    hi = hi.max(e);
                    self.ranges.remove(&s);
                }
                None => break,
            }
        }
        self.ranges.insert(lo, hi);
    }

    /// Removes every seq `<= seq`.
    pub fn remove_through(&mut self, seq: Seq) {
        let keep = self.ranges.split_off(&seq.saturating_add(1));
        let cut = std::mem::replace(&mut self.ranges, keep);
        if let Some((_, &end)) = cut.iter().next_back() {
            if end > seq {
                self.ranges.insert(seq + 1, end);
            }
        }
    }

    /// Removes every seq `>= seq`.
    pub fn remove_from(&mut self, seq: Seq) {
        self.ranges.split_off(&seq);
        if let Some((_, end)) = self.ranges.iter_mut().next_back() {
            if *end >= seq {
                *end = seq.saturating_sub(1);
            }
        }
        if seq == 0 {
            self.ranges.clear();
        }
    }

    /// The ranges in ascending order, as `[start, end]` pairs.
    pub fn ranges(&self) -> impl Iterator<Item = [Seq; 2]> + '_ {
        self.ranges.iter().map(|(&s, &e)| [s, e])
    }

    /// Every seq in `lo..=hi` that is NOT in the set, as ranges, ascending.
    pub fn gaps(&self, lo: Seq, hi: Seq) -> Vec<[Seq; 2]> {
        let mut out = Vec::new();
        if hi < lo {
            return out;
        }
        let mut next = lo;
        // Start from the range that may cover `lo`.
        let start = self
            .ranges
            .range(..=lo)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(lo);
        for (&s, &e) in self.ranges.range(start..) {
            if s > hi {
                break;
            }
            if s > next {
                out.push([next, s - 1]);
            }
            if e >= next {
                match e.checked_add(1) {
                    Some(n) => next = n,
                    None => return out,
                }
            }
            if next > hi {
                return out;
            }
        }
        if next <= hi {
            out.push([next, hi]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        RemoveThrough(u64),
        RemoveFrom(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200, 0u64..12).prop_map(|(lo, n)| Op::Insert(lo, lo + n)),
            (0u64..200).prop_map(Op::RemoveThrough),
            (0u64..200).prop_map(Op::RemoveFrom),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_plain_set(ops in proptest::collection::vec(op(), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(lo, hi) => { set.insert_range(lo, hi); model.extend(lo..=hi); }
                    Op::RemoveThrough(s) => { set.remove_through(s); model.retain(|&x| x > s); }
                    Op::RemoveFrom(s) => { set.remove_from(s); model.retain(|&x| x < s); }
                }
                // Canonical form: sorted, disjoint and never adjacent.
                let rs: Vec<_> = set.ranges().collect();
                for w in rs.windows(2) {
                    prop_assert!(w[0][1].saturating_add(1) < w[1][0]);
                }
                for r in &rs { prop_assert!(r[0] <= r[1]); }
                prop_assert_eq!(set.len(), model.len() as u64);
                for x in 0..230u64 {
                    prop_assert_eq!(set.contains(x), model.contains(&x));
                }
                let gaps = set.gaps(10, 150);
                let gap_model: BTreeSet<u64> = (10..=150).filter(|x| !model.contains(x)).collect();
                let gap_set: BTreeSet<u64> = gaps.iter().flat_map(|g| g[0]..=g[1]).collect();
                prop_assert_eq!(gap_set, gap_model);
            }
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut s = RangeSet::new();
        s.insert(u64::MAX);
        s.insert(u64::MAX - 1);
        s.insert(0);
        assert!(s.contains(u64::MAX) && s.contains(0));
        assert_eq!(s.range_count(), 2);
        assert_eq!(
            s.gaps(u64::MAX - 2, u64::MAX),
            vec![[u64::MAX - 2, u64::MAX - 2]]
        );
        s.remove_from(0);
        assert!(s.is_empty());
    }
}
