//! Exponential backoff, shared by both machines (retransmissions, pushes,
//! reconnects).

use crate::frame::Millis;
use crate::rng::Rng;

/// `initial * 2^attempt`, capped at `max` (and at least 1 ms).
pub(crate) fn backoff(initial: Millis, max: Millis, attempt: u32) -> Millis {
    let factor = 1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX);
    initial.saturating_mul(factor).min(max).max(1)
}

/// `wait` moved by up to +-20%, so that many peers do not retry in lockstep.
pub(crate) fn jittered(wait: Millis, rng: &mut Rng) -> Millis {
    let spread = wait / 5;
    wait - spread + rng.range(0, spread * 2)
}

/// "Full jitter": uniform in `floor..=backoff(..)`, for reconnects, where
/// many clients cut at the same moment must spread out.
pub(crate) fn full_jitter(
    initial: Millis,
    max: Millis,
    attempt: u32,
    floor: Millis,
    rng: &mut Rng,
) -> Millis {
    let ceiling = backoff(initial, max, attempt).max(floor);
    rng.range(floor, ceiling)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1000, 30_000, 0), 1000);
        assert_eq!(backoff(1000, 30_000, 3), 8000);
        assert_eq!(backoff(1000, 30_000, 99), 30_000);
        assert_eq!(backoff(0, 30_000, 0), 1);
    }

    #[test]
    fn jitter_stays_in_its_bounds() {
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            let j = jittered(1000, &mut rng);
            assert!((800..=1200).contains(&j), "{j}");
            let f = full_jitter(250, 15_000, 2, 50, &mut rng);
            assert!((50..=1000).contains(&f), "{f}");
        }
    }
}
