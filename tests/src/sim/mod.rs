//! A deterministic fault simulator for the delivery core, after TigerBeetle's
//! VOPR: one seed draws the fault mix, the schedule and every network and disk
//! decision, so any failure replays exactly.
//!
//! A run has two phases. In the safety phase the world is hostile (frames are
//! dropped, duplicated, delayed and reordered; devices disconnect, get
//! partitioned, go offline for minutes, crash and reload; the server crashes
//! losing pending writes, or is evicted with its sockets kept) while the
//! checker asserts the safety invariants after every step. In the liveness
//! phase the faults stop and everyone reconnects; the run must converge:
//! every queued message stored once, shown once on every device, and
//! delivered to its sender. See [`check`] for the invariants.
//!
//! Environment: `SIM_SEED=n` runs one seed, `SIM_SEEDS=n` sets how many
//! seeds, `SIM_TRACE=1` records a trace (printed on failure and written to
//! `target/sim-traces/seed-<n>.txt`).

pub mod check;
pub mod disk;
mod world;

use std::fmt;
use std::ops::AddAssign;

use protocol::rng::Rng;
pub use protocol::Bugs;
use protocol::Millis;

/// How hostile one run is. Drawn from the seed unless given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultMix {
    /// Length of the safety phase (simulated ms).
    pub safety_ms: Millis,
    /// Longest the liveness phase may take to converge.
    pub liveness_ms: Millis,
    /// Messages the apps send during the safety phase.
    pub messages: u32,
    /// Frame loss, per million frames.
    pub drop_pm: u32,
    /// Frame duplication, per million frames.
    pub dup_pm: u32,
    /// Extra random delay per frame (reordering), in ms.
    pub jitter_ms: Millis,
    /// Longest delay before a disk flush, in ms.
    pub disk_latency_ms: Millis,
    /// Forced disconnects.
    pub disconnects: u32,
    /// Network partitions of one device (frames lost, socket kept).
    pub partitions: u32,
    /// Server crashes (pending writes lost, sockets closed).
    pub server_crashes: u32,
    /// Server evictions (memory lost, sockets kept: hibernation).
    pub server_evictions: u32,
    /// Device crashes or reloads (pending writes lost).
    pub client_crashes: u32,
    /// Devices offline for 1-15 minutes.
    pub long_offline: u32,
    /// Devices that join only after history exists.
    pub late_joiners: u32,
    /// App calls to load older history.
    pub history_loads: u32,
    /// Crashes aimed at the window between a write and its durability: after
    /// a write, with 1 in 20 odds, the writer crashes before the flush.
    pub write_crashes: u32,
    /// Pushes altered on the way (a message body changed), per million
    /// frames to devices: the integrity chain must catch every one.
    pub tamper_pm: u32,
    /// Messages sent during the liveness phase (the world is calm, but the
    /// apps keep talking).
    pub late_sends: u32,
    /// Percent of bodies within 64 bytes of the 16 KiB body limit.
    pub big_bodies_pct: u32,
    /// Restores of an older server storage snapshot (history rolled back):
    /// devices ahead of it must detect the divergence and reset.
    pub rollbacks: u32,
    /// SQLite write failures: the edge drops the core and every socket and
    /// rebuilds from storage (the failed batch and later pending writes lost).
    pub server_write_failures: u32,
    /// Periods in which a device's IndexedDB refuses every write (a quota
    /// error); the shell keeps the writes and retries.
    pub storage_outages: u32,
    /// Steps of a device's wall clock (forwards or back, up to 2 minutes).
    pub clock_jumps: u32,
}

impl FaultMix {
    /// A random mix: each fault is off, light or heavy.
    pub fn draw(rng: &mut Rng) -> FaultMix {
        let mut level = |off: u64, light: u64, heavy: u64| -> u64 {
            match rng.below(3) {
                0 => off,
                1 => light,
                _ => heavy,
            }
        };
        let drop_pm = level(0, 20_000, 150_000) as u32;
        let dup_pm = level(0, 20_000, 100_000) as u32;
        let jitter_ms = level(0, 30, 400);
        let disk_latency_ms = level(1, 20, 200);
        let disconnects = level(0, 2, 8) as u32;
        let partitions = level(0, 1, 4) as u32;
        let server_crashes = level(0, 1, 4) as u32;
        let server_evictions = level(0, 1, 3) as u32;
        let client_crashes = level(0, 2, 6) as u32;
        let long_offline = level(0, 0, 2) as u32;
        let late_joiners = level(0, 1, 2) as u32;
        let history_loads = level(0, 2, 6) as u32;
        let write_crashes = level(0, 1, 4) as u32;
        let tamper_pm = level(0, 5_000, 40_000) as u32;
        let late_sends = level(0, 2, 8) as u32;
        let big_bodies_pct = level(0, 5, 30) as u32;
        // A restore of an older storage snapshot, in a third of the runs.
        let rollbacks = level(0, 0, 1) as u32;
        let server_write_failures = level(0, 1, 3) as u32;
        let storage_outages = level(0, 1, 4) as u32;
        let clock_jumps = level(0, 2, 6) as u32;
        let messages = rng.range(4, 40) as u32;
        let safety_ms = rng.range(5_000, 90_000);
        FaultMix {
            safety_ms,
            liveness_ms: 1_800_000,
            messages,
            drop_pm,
            dup_pm,
            jitter_ms,
            disk_latency_ms,
            disconnects,
            partitions,
            server_crashes,
            server_evictions,
            client_crashes,
            long_offline,
            late_joiners,
            history_loads,
            write_crashes,
            tamper_pm,
            late_sends,
            big_bodies_pct,
            rollbacks,
            server_write_failures,
            storage_outages,
            clock_jumps,
        }
    }
}

/// Faults that actually happened, summed over runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Frames lost (random loss or partition).
    pub dropped: u64,
    /// Frames duplicated.
    pub duplicated: u64,
    /// Forced disconnects.
    pub disconnects: u64,
    /// Partitions.
    pub partitions: u64,
    /// Server crashes.
    pub server_crashes: u64,
    /// Server evictions.
    pub server_evictions: u64,
    /// Device crashes/reloads.
    pub client_crashes: u64,
    /// Long offline periods.
    pub long_offline: u64,
    /// Late-joining devices.
    pub late_joins: u64,
    /// Pending writes lost in crashes.
    pub lost_writes: u64,
    /// Crashes aimed right after a write.
    pub write_crashes: u64,
    /// Connections the server closed after unanswered push retries.
    pub unresponsive_closes: u64,
    /// Connections the server closed because the device connected again.
    pub replaced_closes: u64,
    /// Pushes altered on the way.
    pub tampered: u64,
    /// Integrity-chain mismatches the devices caught (and repaired).
    pub chain_mismatches: u64,
    /// Sends the server refused as busy, rate limited or out of order.
    pub refused_sends: u64,
    /// Server history rolled back to an older snapshot.
    pub rollbacks: u64,
    /// Devices that detected the divergence and reset their inbox.
    pub resets: u64,
    /// Server write failures (core and sockets dropped).
    pub server_write_failures: u64,
    /// Device flushes refused by a storage outage.
    pub refused_flushes: u64,
    /// Device clock steps.
    pub clock_jumps: u64,
    /// Sockets the clients asked for (their own reconnect policy).
    pub connects: u64,
    /// Runs with several conversations (each device in all of them).
    pub multi_conversation_runs: u64,
    /// Messages that carried several frames (bundles), both ways.
    pub bundles: u64,
}

impl AddAssign<&FaultCounts> for FaultCounts {
    fn add_assign(&mut self, o: &FaultCounts) {
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.disconnects += o.disconnects;
        self.partitions += o.partitions;
        self.server_crashes += o.server_crashes;
        self.server_evictions += o.server_evictions;
        self.client_crashes += o.client_crashes;
        self.long_offline += o.long_offline;
        self.late_joins += o.late_joins;
        self.lost_writes += o.lost_writes;
        self.write_crashes += o.write_crashes;
        self.unresponsive_closes += o.unresponsive_closes;
        self.replaced_closes += o.replaced_closes;
        self.tampered += o.tampered;
        self.chain_mismatches += o.chain_mismatches;
        self.refused_sends += o.refused_sends;
        self.rollbacks += o.rollbacks;
        self.resets += o.resets;
        self.server_write_failures += o.server_write_failures;
        self.refused_flushes += o.refused_flushes;
        self.bundles += o.bundles;
        self.clock_jumps += o.clock_jumps;
        self.connects += o.connects;
        self.multi_conversation_runs += o.multi_conversation_runs;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "frames dropped {}, duplicated {}; disconnects {}, partitions {}, server crashes {}, \
             server evictions {}, device crashes/reloads {}, long offline {}, late joins {}, \
             crashes right after a write {}, pending writes lost {}; server closed {} unresponsive \
             and {} replaced connections; pushes tampered {}, chain mismatches caught {}; sends refused {}; \
             rollbacks {} (devices reset {}), server write failures {}, device flushes refused {}, clock jumps {}; connects asked {}; runs with 3 conversations {}; bundles sent {}",
            self.dropped,
            self.duplicated,
            self.disconnects,
            self.partitions,
            self.server_crashes,
            self.server_evictions,
            self.client_crashes,
            self.long_offline,
            self.late_joins,
            self.write_crashes,
            self.lost_writes,
            self.unresponsive_closes,
            self.replaced_closes,
            self.tampered,
            self.chain_mismatches,
            self.refused_sends,
            self.rollbacks,
            self.resets,
            self.server_write_failures,
            self.refused_flushes,
            self.clock_jumps,
            self.connects,
            self.multi_conversation_runs,
            self.bundles
        )
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The seed; everything follows from it.
    pub seed: u64,
    /// Record a trace.
    pub trace: bool,
    /// Deliberate mistakes to plug into both machines.
    pub bugs: Bugs,
    /// A fixed fault mix instead of one drawn from the seed.
    pub mix: Option<FaultMix>,
    /// Conversations in the world (each device runs a client in every one);
    /// drawn from the seed when absent: 1 in two thirds of the runs, else 3.
    pub conversations: Option<usize>,
}

/// A run that passed.
#[derive(Debug, Clone)]
pub struct Report {
    /// Its seed.
    pub seed: u64,
    /// Messages stored.
    pub head: u64,
    /// Simulated time.
    pub sim_ms: Millis,
    /// Steps taken.
    pub steps: u64,
    /// Faults injected.
    pub faults: FaultCounts,
}

/// A run that failed.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Its seed.
    pub seed: u64,
    /// Simulated ms since the start.
    pub at: Millis,
    /// What went wrong.
    pub what: String,
    /// The trace, when recorded.
    pub trace: Vec<String>,
}

impl Violation {
    /// The one-line command that replays this seed with a trace.
    pub fn replay_command(&self) -> String {
        format!(
            "SIM_SEED={} SIM_TRACE=1 cargo test -p ackline-tests --test sim_random -- replay --nocapture",
            self.seed
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} violated an invariant at t={}ms: {}\nreplay: {}",
            self.seed,
            self.at,
            self.what,
            self.replay_command()
        )
    }
}

/// Runs one seed.
pub fn run(opts: Options) -> Result<Report, Violation> {
    world::World::new(opts).run()
}

/// Writes a violation's trace under `target/sim-traces/` and returns the path.
pub fn dump_trace(v: &Violation) -> Option<std::path::PathBuf> {
    if v.trace.is_empty() {
        return None;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sim-traces");
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("seed-{}.txt", v.seed));
    std::fs::write(&path, v.trace.join("\n")).ok()?;
    Some(path)
}

/// Reads a `u64` from the environment.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// True when `name` is set to something other than `0`/empty.
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Summary of many runs.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Runs that passed.
    pub passed: u64,
    /// Messages stored over all runs.
    pub messages: u64,
    /// Simulated time over all runs.
    pub sim_ms: u64,
    /// Faults over all runs.
    pub faults: FaultCounts,
    /// Failures (the first few).
    pub failures: Vec<Violation>,
}

/// Runs `seeds` on `threads` threads; stops collecting after a few failures.
pub fn run_many(seeds: Vec<u64>, threads: usize, bugs: Bugs) -> Batch {
    use std::sync::{Arc, Mutex};
    let seeds = Arc::new(Mutex::new(seeds.into_iter()));
    let total = Arc::new(Mutex::new(Batch::default()));
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let seeds = Arc::clone(&seeds);
            let total = Arc::clone(&total);
            std::thread::spawn(move || loop {
                let next = seeds.lock().ok().and_then(|mut s| s.next());
                let Some(seed) = next else { break };
                // A panic in a machine is a failure of its seed, never a
                // silently lost run.
                let result = std::panic::catch_unwind(|| {
                    run(Options {
                        seed,
                        bugs,
                        ..Options::default()
                    })
                })
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a panic without a message".to_owned());
                    Err(Violation {
                        seed,
                        at: 0,
                        what: format!("panicked: {what}"),
                        trace: Vec::new(),
                    })
                });
                let Ok(mut t) = total.lock() else { break };
                match result {
                    Ok(r) => {
                        t.passed += 1;
                        t.messages += r.head;
                        t.sim_ms += r.sim_ms;
                        t.faults += &r.faults;
                    }
                    Err(v) => {
                        t.failures.push(v);
                        if t.failures.len() >= 3 {
                            if let Ok(mut s) = seeds.lock() {
                                for _ in s.by_ref() {}
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        // Runs catch their own panics; a thread can only die outside them.
        if h.join().is_err() {
            if let Ok(mut t) = total.lock() {
                t.failures.push(Violation {
                    seed: 0,
                    at: 0,
                    what: "a simulator thread died".into(),
                    trace: Vec::new(),
                });
            }
        }
    }
    let out = total.lock().map(|t| t.clone()).unwrap_or_default();
    out
}
