//! Pacing of a client's `send` and `ack` frames to the budget the server
//! announced in `welcome`. Without it, a client flushing a long outbox outruns the server's
//! token bucket, gets `rate_limited` refusals and, as they count as violations,
//! is eventually disconnected; with it, the flush simply takes its time.

use crate::bucket::TokenBucket;
use crate::frame::{Millis, RateLimit};

/// Share of the server's budget that sends may use: the rest is left for
/// acks, syncs and pings on the same connection.
const SEND_SHARE_PERCENT: u64 = 80;

/// A token bucket mirroring the server's, at a share of its budget.
#[derive(Debug, Clone)]
pub(crate) struct Pacer {
    bucket: TokenBucket,
}

/// Share for acks: most of the rest, leaving a little for syncs and pings.
const ACK_SHARE_PERCENT: u64 = 15;

impl Pacer {
    /// The pacer of `send` frames: a full bucket (the server's starts full
    /// when the connection opens).
    pub fn new(now: Millis, limit: RateLimit) -> Pacer {
        Pacer::with_share(now, limit, SEND_SHARE_PERCENT)
    }

    /// The pacer of `ack` frames. Acks are cumulative, so one held back
    /// loses nothing: the next one covers it.
    pub fn for_acks(now: Millis, limit: RateLimit) -> Pacer {
        Pacer::with_share(now, limit, ACK_SHARE_PERCENT)
    }

    fn with_share(now: Millis, limit: RateLimit, percent: u64) -> Pacer {
        let share = |x: u64| (x.saturating_mul(percent) / 100).max(1);
        Pacer {
            bucket: TokenBucket::new(now, share(limit.per_sec), share(limit.burst)),
        }
    }

    /// Whole frames that may be sent now.
    pub fn available(&mut self, now: Millis) -> usize {
        usize::try_from(self.bucket.available(now)).unwrap_or(usize::MAX)
    }

    /// Counts `frames` sent (at most what [`Pacer::available`] allowed).
    pub fn spend(&mut self, frames: usize) {
        self.bucket.spend(u64::try_from(frames).unwrap_or(u64::MAX));
    }

    /// When the next frame may be sent (at or before the last refill if one
    /// may be sent already).
    pub fn next_at(&self) -> Millis {
        self.bucket.ready_at(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_a_share_of_the_burst_then_refills_at_a_share_of_the_rate() {
        let mut p = Pacer::new(
            0,
            RateLimit {
                per_sec: 1_000,
                burst: 2_000,
            },
        );
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
        let mut p = Pacer::new(
            0,
            RateLimit {
                per_sec: 0,
                burst: 0,
            },
        );
        assert_eq!(p.available(0), 1);
        p.spend(1);
        assert_eq!(p.next_at(), 1_000);
        assert_eq!(p.available(1_000), 1);
    }
}
