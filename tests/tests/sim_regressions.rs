//! Seeds on which the simulator found bugs in drafts of the protocol core,
//! kept as named runs. The seeds replay today's simulator (whose random
//! choices have changed since), so each bug also has a deterministic scenario
//! test in `protocol/tests/machines.rs` (`regression_*`).

use ackline_tests::sim::{self, Options};

fn passes(seed: u64) {
    if let Err(v) = sim::run(Options {
        seed,
        ..Options::default()
    }) {
        panic!("{v}");
    }
}

/// Client ack timer stayed armed with nothing to acknowledge (timer storm).
#[test]
fn seed_1_ack_timer_storm() {
    passes(1);
}

/// Fresh device acknowledged before its first inbox record was durable.
#[test]
fn seed_2_fresh_device_early_ack() {
    passes(2);
}

/// Expired gap-fill deadline stayed armed (timer storm).
#[test]
fn seed_9_expired_sync_deadline_storm() {
    passes(9);
}

/// Frames overtaking the welcome were reported as a diverged server.
#[test]
fn seed_28_welcome_overtaken() {
    passes(28);
}

/// A lost `delivered` notice was never repaired while connected.
#[test]
fn seed_87_lost_delivered_notice() {
    passes(87);
}

/// Simulator bug: iterating a HashMap of connections made runs
/// irreproducible (a failing seed passed on replay). Every run must be a
/// pure function of its seed.
#[test]
fn runs_are_deterministic() {
    for seed in [4, 28, 152] {
        let a = sim::run(Options { seed, ..Options::default() }).map(|r| (r.head, r.sim_ms, r.steps));
        let b = sim::run(Options { seed, ..Options::default() }).map(|r| (r.head, r.sim_ms, r.steps));
        assert_eq!(a.map_err(|v| v.what), b.map_err(|v| v.what), "seed {seed}");
    }
}

/// A full out-of-order buffer refused the message that filled the hole
/// (gap-fill livelock).
#[test]
fn seed_9100005_full_buffer_livelock() {
    passes(9_100_005);
}

/// An evicted, already selectively acknowledged message was never fetched again.
#[test]
fn seed_9100766_evicted_acked_message() {
    passes(9_100_766);
}

/// A late welcome lowered the catch-up target below an evicted, acknowledged
/// message (found by a 300,000-seed soak).
#[test]
fn seed_20189526_late_welcome_lowers_target() {
    passes(20_189_526);
}
