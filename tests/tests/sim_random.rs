//! The simulator over many random seeds (see `ackline_tests::sim`).
//!
//! - `cargo test -p ackline-tests --test sim_random`: the fixed seeds
//!   `FIXED_SEEDS` (the same on every run, so a change that breaks one fails
//!   every CI run) and 3,000 fresh random seeds (printed, so any failure can
//!   be replayed).
//! - `SIM_SEEDS=100000 cargo test -p ackline-tests --release --test sim_random -- --ignored soak`:
//!   a long soak.
//! - `SIM_SEED=n SIM_TRACE=1 cargo test -p ackline-tests --test sim_random -- replay --nocapture`:
//!   replays one seed and prints its trace (`SIM_CONVERSATIONS=n` for a
//!   seed of a test that fixed the number of conversations).

use std::io::Write as _;
use std::time::Instant;

use ackline_tests::sim::{self, env_flag, env_u64, Bugs, Options};

fn threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8)
}

fn base_seed() -> u64 {
    env_u64("SIM_BASE").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // Spread out so that consecutive CI runs explore different seeds.
        t.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16
    })
}

/// Seeds every run checks.
const FIXED_SEEDS: std::ops::Range<u64> = 0..2_000;

fn run_seeds(default_count: u64) {
    let count = env_u64("SIM_SEEDS").unwrap_or(default_count);
    run_range(base_seed(), count);
}

fn run_range(base: u64, count: u64) -> sim::Batch {
    let started = Instant::now();
    let batch = sim::run_many((base..base + count).collect(), threads(), Bugs::default());
    let secs = started.elapsed().as_secs_f64();
    // Straight to the stderr handle: the test harness captures println!, and
    // the seed rate and fault mix should show on every `cargo test`.
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "simulator: {} of {count} seeds passed (seeds {base}..{}) in {secs:.1}s = {:.0} seeds/s on {} threads; \
         {} messages stored, {:.1} h simulated",
        batch.passed,
        base + count,
        batch.passed as f64 / secs.max(1e-9),
        threads(),
        batch.messages,
        batch.sim_ms as f64 / 3_600_000.0
    );
    let _ = writeln!(err, "simulator fault mix: {}", batch.faults);
    if let Some(v) = batch.failures.first() {
        for f in &batch.failures {
            eprintln!("{f}");
        }
        panic!("{v}");
    }
    assert_eq!(batch.passed, count, "every seed must run and pass");
    batch
}

#[test]
fn fixed_seeds() {
    let batch = run_range(FIXED_SEEDS.start, FIXED_SEEDS.end - FIXED_SEEDS.start);
    // The checker covers bundles only if the runs send some, both ways.
    assert!(
        batch.faults.bundles > 1_000,
        "too few bundles sent: {}",
        batch.faults.bundles
    );
}

#[test]
fn random_seeds() {
    run_seeds(3_000);
}

#[test]
#[ignore = "long soak: SIM_SEEDS=n cargo test -p ackline-tests --release --test sim_random -- --ignored soak"]
fn soak() {
    run_seeds(100_000);
}

#[test]
fn replay() {
    let Some(seed) = env_u64("SIM_SEED") else {
        return; // nothing to replay
    };
    let trace = env_flag("SIM_TRACE");
    // SIM_CONVERSATIONS=n replays a seed of a test that fixed the count.
    let conversations = env_u64("SIM_CONVERSATIONS").map(|n| n as usize);
    match sim::run(Options {
        seed,
        trace,
        conversations,
        ..Options::default()
    }) {
        Ok(r) => println!(
            "seed {seed} passed: {} messages, {} ms simulated, {} steps; faults: {}",
            r.head, r.sim_ms, r.steps, r.faults
        ),
        Err(v) => {
            if trace {
                for line in &v.trace {
                    println!("{line}");
                }
                if let Some(path) = sim::dump_trace(&v) {
                    println!("trace written to {}", path.display());
                }
            }
            panic!("{v}");
        }
    }
}
