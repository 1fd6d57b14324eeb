//! The one token bucket of both machines: the server's per-connection frame
//! rate and conversation-wide answer rate, and the client's send pacer.
//!
//! Amounts are whole units (frames, bytes); internally thousandths, so that a
//! rate of `per_sec` units refills exactly `per_sec` thousandths per
//! millisecond. A spend may take the bucket below zero (an answer's size is
//! known only once it is built); it then refills from there.

use crate::frame::Millis;

/// A token bucket with explicit time.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Thousandths of a unit; negative after an overdraft.
    tokens: i64,
    /// Most thousandths it holds.
    cap: i64,
    /// Refill per millisecond, in thousandths (= units per second).
    per_sec: i64,
    last: Millis,
}

fn milli(units: u64) -> i64 {
    i64::try_from(units)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

impl TokenBucket {
    /// A full bucket of `burst` units refilling at `per_sec` units a second.
    /// A zero rate or burst is taken as 1, so something always gets through.
    pub fn new(now: Millis, per_sec: u64, burst: u64) -> TokenBucket {
        let cap = milli(burst.max(1));
        TokenBucket {
            tokens: cap,
            cap,
            per_sec: i64::try_from(per_sec.max(1)).unwrap_or(i64::MAX),
            last: now,
        }
    }

    fn refill(&mut self, now: Millis) {
        let elapsed = i64::try_from(now.saturating_sub(self.last)).unwrap_or(i64::MAX);
        // Time going backwards (a shell clock step) neither adds nor panics.
        self.last = self.last.max(now);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.per_sec))
            .min(self.cap);
    }

    /// Whole units available now (0 while overdrawn).
    pub fn available(&mut self, now: Millis) -> u64 {
        self.refill(now);
        u64::try_from(self.tokens / 1000).unwrap_or(0)
    }

    /// Takes `units` if that many are available.
    pub fn try_take(&mut self, now: Millis, units: u64) -> bool {
        if self.available(now) < units {
            return false;
        }
        self.spend(units);
        true
    }

    /// Takes `units` whatever is left (the bucket may go below zero).
    pub fn spend(&mut self, units: u64) {
        self.tokens = self
            .tokens
            .saturating_sub(milli(units))
            .max(-self.cap.saturating_mul(64));
    }

    /// When `units` will be available (at or before the last refill if they
    /// already are).
    pub fn ready_at(&self, units: u64) -> Millis {
        let missing = u64::try_from(milli(units).saturating_sub(self.tokens)).unwrap_or(0);
        // per_sec is at least 1 (see `new`).
        let wait = missing.div_ceil(self.per_sec.unsigned_abs());
        self.last.saturating_add(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_its_rate_up_to_its_burst() {
        let mut b = TokenBucket::new(0, 1_000, 2_000);
        assert_eq!(b.available(0), 2_000);
        assert!(b.try_take(0, 2_000));
        assert!(!b.try_take(0, 1));
        assert_eq!(b.ready_at(1), 1, "1,000 a second: one per millisecond");
        assert_eq!(b.available(1), 1);
        assert_eq!(b.available(1_000_000), 2_000, "never above the burst");
        // Time going backwards neither adds nor panics.
        b.spend(2_000);
        assert_eq!(b.available(5), 0);
    }

    #[test]
    fn an_overdraft_is_paid_back_before_anything_more() {
        let mut b = TokenBucket::new(0, 1_000, 100);
        b.spend(600);
        assert_eq!(b.available(0), 0);
        assert_eq!(b.ready_at(1), 501, "500 owed plus the one wanted");
        assert_eq!(b.available(500), 0);
        assert_eq!(b.available(501), 1);
    }

    #[test]
    fn tiny_rates_still_let_something_through() {
        let mut b = TokenBucket::new(0, 0, 0);
        assert!(b.try_take(0, 1));
        assert_eq!(b.ready_at(1), 1_000);
        assert_eq!(b.available(1_000), 1);
    }
}
