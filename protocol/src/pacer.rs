//! Pacing of a client's `send` frames to the budget the server announced in
//! `welcome`. Without it, a client flushing a long outbox outruns the server's
//! token bucket, gets `rate_limited` refusals and, as they count as violations,
//! is eventually disconnected; with it, the flush simply takes its time.

use crate::frame::{Millis, RateLimit};

/// Share of the server's budget that sends may use: the rest is left for
/// acks, syncs and pings on the same connection.
const SEND_SHARE_PERCENT: u64 = 80;

/// A token bucket mirroring the server's, in thousandths of a frame.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    tokens: u64,
    cap: u64,
    /// Refill per millisecond, in thousandths of a frame (= frames per second).
    per_sec: u64,
    last: Millis,
}

impl Pacer {
    /// A full bucket (the server's starts full when the connection opens).
    pub fn new(now: Millis, limit: RateLimit) -> Pacer {
        let share = |x: u64| (x.saturating_mul(SEND_SHARE_PERCENT) / 100).max(1);
        let cap = share(limit.burst).saturating_mul(1000);
        Pacer {
            tokens: cap,
            cap,
            per_sec: share(limit.per_sec),
            last: now,
        }
    }

    /// Whole frames that may be sent now.
    pub fn available(&mut self, now: Millis) -> usize {
        let elapsed = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        self.tokens = self.tokens.saturating_add(elapsed.saturating_mul(self.per_sec)).min(self.cap);
        usize::try_from(self.tokens / 1000).unwrap_or(usize::MAX)
    }

    pub fn spend(&mut self, frames: usize) {
        let cost = u64::try_from(frames).unwrap_or(u64::MAX).saturating_mul(1000);
        self.tokens = self.tokens.saturating_sub(cost);
    }

    /// When the next frame may be sent (at or before the last refill if one
    /// may be sent already).
    pub fn next_at(&self) -> Millis {
        let missing = 1000u64.saturating_sub(self.tokens);
        self.last.saturating_add(missing.div_ceil(self.per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_a_share_of_the_burst_then_refills_at_a_share_of_the_rate() {
        let mut p = Pacer::new(0, RateLimit { per_sec: 1_000, burst: 2_000 });
        assert_eq!(p.available(0), 1_600);
        p.spend(1_600);
        assert_eq!(p.available(0), 0);
        assert_eq!(p.next_at(), 2, "800 frames/s: one every 1.25 ms");
        assert_eq!(p.available(1), 0);
        assert_eq!(p.available(2), 1);
        assert_eq!(p.available(1_002), 801);
        assert_eq!(p.available(1_000_000), 1_600, "never above the bucket");
        // Time going backwards (a shell clock step) neither adds nor panics.
        p.spend(1_600);
        assert_eq!(p.available(5), 0);
    }

    #[test]
    fn tiny_budgets_still_let_frames_through() {
        let mut p = Pacer::new(0, RateLimit { per_sec: 0, burst: 0 });
        assert_eq!(p.available(0), 1);
        p.spend(5);
        assert_eq!(p.next_at(), 1_000);
        assert_eq!(p.available(1_000), 1);
    }
}
