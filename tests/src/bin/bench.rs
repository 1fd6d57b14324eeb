//! Native benchmarks through real workerd (`wrangler dev`, local mode):
//! ingest from 1/10/100 senders (bundled like the real client, and one frame
//! per message for comparison) with workerd's CPU time per 10,000 messages,
//! send->sent latency at a fixed rate, fan-out to 10 devices, simulator
//! schedules per second. Prints a table and writes JSON.
//!
//! `cargo run --release -p ackline-tests --bin bench -- [--runs N] [--out FILE] [--quick] [--only ingest] [--single-only | --bundled-only]`
//! (scripts/bench.sh runs it after building). Each figure is the median of N runs
//! (default 3) with min and max.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use ackline_tests::edge::{fresh_storage, token_for, Edge};
use protocol::{limits, pack_bundles, Bugs, ClientFrame, ServerFrame};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// How a load client frames its messages.
#[derive(Clone, Copy, PartialEq)]
enum Framing {
    /// Like the real client: it says `bundles` in its hello, and sends all it
    /// may send at once as bundles (up to its send window per message).
    Bundles,
    /// One frame per WebSocket message both ways (clients before bundles).
    Single,
}

fn connect(edge: &Edge, conv: &str, user: &str, device: &str, framing: Framing) -> Socket {
    let token = token_for(conv, user, device);
    let url = format!(
        "ws://127.0.0.1:{}/v1/conversations/{conv}/connect?access_token={token}",
        edge.port
    );
    let (mut ws, _) = tungstenite::connect(url).expect("connect");
    if let MaybeTlsStream::Plain(tcp) = ws.get_ref() {
        let _ = tcp.set_nodelay(true);
        let _ = tcp.set_read_timeout(Some(Duration::from_millis(20)));
    }
    send(
        &mut ws,
        &ClientFrame::Hello {
            after: None,
            chain: None,
            bundles: framing == Framing::Bundles,
        },
    );
    ws
}

fn send(ws: &mut Socket, frame: &ClientFrame) {
    ws.send(Message::Text(frame.encode().into())).expect("send");
}

/// Sends frames bundled: as few messages as the frame limit allows.
fn send_bundled(ws: &mut Socket, frames: Vec<String>) {
    for text in pack_bundles(frames, limits::MAX_FRAME_BYTES) {
        ws.send(Message::Text(text)).expect("send");
    }
}

/// The frames of the next message within the read timeout (a bundle holds
/// several).
fn read(ws: &mut Socket) -> Vec<ServerFrame> {
    match ws.read() {
        Ok(Message::Text(t)) => ServerFrame::decode_bundle(t.as_bytes())
            .map(|frames| frames.into_iter().filter_map(Result::ok).collect())
            .unwrap_or_default(),
        Ok(Message::Close(c)) => panic!("server closed: {c:?}"),
        Ok(_) => Vec::new(),
        Err(tungstenite::Error::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Vec::new()
        }
        Err(e) => panic!("read: {e}"),
    }
}

/// Acks like the real client: cumulatively, at once after 32 new messages or
/// 50 ms after the first unacknowledged one (ClientConfig's ack_every/ack_delay).
#[derive(Default)]
struct Acker {
    stored: u64,
    acked: u64,
    since: Option<Instant>,
}

impl Acker {
    fn note(&mut self, frame: &ServerFrame) {
        if let ServerFrame::Push { messages } | ServerFrame::Batch { messages, .. } = frame {
            if let Some(last) = messages.last() {
                self.stored = self.stored.max(last.seq);
                self.since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn flush_due(&mut self, ws: &mut Socket) {
        let due = self.stored >= self.acked + 32
            || self
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(50));
        if due && self.stored > self.acked {
            send(
                ws,
                &ClientFrame::Ack {
                    seq: self.stored,
                    ranges: Vec::new(),
                },
            );
            self.acked = self.stored;
            self.since = None;
        }
    }
}

/// One sender: `count` sends with at most `window` unconfirmed; returns latencies (ms).
fn run_sender(
    mut ws: Socket,
    prefix: &str,
    count: usize,
    window: usize,
    interval: Option<Duration>,
    framing: Framing,
) -> Vec<f64> {
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(count);
    let mut next = 0;
    let mut acker = Acker::default();
    let start = Instant::now();
    while latencies.len() < count {
        let due = interval.map_or(true, |i| start + i * next as u32 <= Instant::now());
        let mut out = Vec::new();
        while next < count && sent_at.len() < window && due {
            let id = format!("{prefix}-{next}");
            let frame = ClientFrame::Send {
                id: id.clone(),
                body: format!("benchmark message {next}"),
                after: None,
            };
            match framing {
                Framing::Bundles => out.push(frame.encode()),
                Framing::Single => send(&mut ws, &frame),
            }
            sent_at.insert(id, Instant::now());
            next += 1;
            if interval.is_some() {
                break;
            }
        }
        if !out.is_empty() {
            send_bundled(&mut ws, out);
        }
        let frames = read(&mut ws);
        for frame in &frames {
            if let ServerFrame::Sent { id, .. } = frame {
                if let Some(t) = sent_at.remove(id) {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if let ServerFrame::Error { code, message, .. } = frame {
                panic!("{prefix}: error frame {code:?}: {message}");
            }
            acker.note(frame);
        }
        acker.flush_due(&mut ws);
    }
    latencies
}

/// Sends/s confirmed with `sent`, from `senders` concurrent connections, and
/// workerd's CPU seconds per 10,000 of them.
fn ingest(edge: &Edge, run: usize, senders: usize, total: usize, framing: Framing) -> (f64, f64) {
    let tag = if framing == Framing::Bundles {
        "b"
    } else {
        "s"
    };
    let conv = format!("ingest-{tag}-{senders}-{run}");
    let per = total / senders;
    let sockets: Vec<Socket> = (0..senders)
        .map(|i| connect(edge, &conv, &format!("u{i}"), &format!("d{i}"), framing))
        .collect();
    let barrier = Arc::new(Barrier::new(senders + 1));
    let handles: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, ws)| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                run_sender(ws, &format!("s{i}"), per, 64, None, framing)
            })
        })
        .collect();
    let cpu_before = edge.workerd_cpu_seconds();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().expect("sender thread");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = edge.workerd_cpu_seconds() - cpu_before;
    let messages = (per * senders) as f64;
    (messages / elapsed, cpu / (messages / 10_000.0))
}

/// p50 and p99 of send->sent at `rate` messages/s from one sender.
fn latency(edge: &Edge, run: usize, rate: u32, count: usize) -> (f64, f64) {
    let ws = connect(
        edge,
        &format!("latency-{run}"),
        "lat",
        "lat-1",
        Framing::Bundles,
    );
    let mut l = run_sender(
        ws,
        "l",
        count,
        1_000,
        Some(Duration::from_secs(1) / rate),
        Framing::Bundles,
    );
    l.sort_by(f64::total_cmp);
    (percentile(&l, 0.50), percentile(&l, 0.99))
}

/// Messages/s from one sender until every one of `receivers` devices acked all.
fn fan_out(edge: &Edge, run: usize, receivers: usize, count: usize) -> f64 {
    let conv = format!("fanout-{run}");
    let barrier = Arc::new(Barrier::new(receivers + 1));
    let readers: Vec<_> = (0..receivers)
        .map(|i| {
            let mut ws = connect(
                edge,
                &conv,
                &format!("r{i}"),
                &format!("r{i}-dev"),
                Framing::Bundles,
            );
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                let mut acker = Acker::default();
                barrier.wait();
                while acker.acked < count as u64 {
                    for frame in read(&mut ws) {
                        acker.note(&frame);
                    }
                    acker.flush_due(&mut ws);
                }
                Instant::now()
            })
        })
        .collect();
    let sender = connect(edge, &conv, "sender", "sender-1", Framing::Bundles);
    barrier.wait();
    let start = Instant::now();
    run_sender(sender, "f", count, 64, None, Framing::Bundles);
    let finished = readers
        .into_iter()
        .map(|h| h.join().expect("reader"))
        .max()
        .unwrap_or_else(Instant::now);
    count as f64 / finished.duration_since(start).as_secs_f64()
}

fn simulator(seeds: u64) -> f64 {
    let threads = thread::available_parallelism().map_or(1, |n| n.get());
    let start = Instant::now();
    let batch = ackline_tests::sim::run_many((1..=seeds).collect(), threads, Bugs::default());
    if let Some(v) = batch.failures.first() {
        panic!(
            "simulator violation during the benchmark: {v:?}\nreplay: {}",
            v.replay_command()
        );
    }
    seeds as f64 / start.elapsed().as_secs_f64()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Figure {
    name: String,
    unit: &'static str,
    runs: Vec<f64>,
}

impl Figure {
    fn stats(&self) -> (f64, f64, f64) {
        let mut v = self.runs.clone();
        v.sort_by(f64::total_cmp);
        (percentile(&v, 0.5), v[0], v[v.len() - 1])
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = flag("--runs")
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let quick = args.iter().any(|a| a == "--quick");
    // `--only ingest`: just the ingest rows (for quick before/after checks).
    let only_ingest = flag("--only").as_deref() == Some("ingest");
    let out = flag("--out").unwrap_or_else(|| "target/bench/native.json".into());
    let scale = if quick { 5 } else { 1 };

    // Load tests go past the per-connection rate limit on purpose.
    let edge = Edge::start_with_vars(
        &fresh_storage("bench"),
        &[("ACKLINE_RATE_PER_SEC", "1000000")],
    );
    let mut figures: Vec<Figure> = Vec::new();
    let measure = |figures: &mut Vec<Figure>,
                   name: String,
                   unit: &'static str,
                   f: &mut dyn FnMut(usize) -> f64| {
        let runs: Vec<f64> = (0..runs).map(|r| f(r)).collect();
        eprintln!("  {name}: {runs:.1?} {unit}");
        figures.push(Figure { name, unit, runs });
    };
    // `--single-only`: no bundles (for an edge that predates them);
    // `--bundled-only`: no single-frame comparison rows.
    let has = |name: &str| args.iter().any(|a| a == name);
    let framings: &[(Framing, &str)] = if has("--single-only") {
        &[(Framing::Single, "one frame per message")]
    } else if has("--bundled-only") {
        &[(Framing::Bundles, "bundled")]
    } else {
        &[
            (Framing::Bundles, "bundled"),
            (Framing::Single, "one frame per message"),
        ]
    };
    for &(framing, how) in framings {
        for senders in [1usize, 10, 100] {
            let total = 6_000 / scale;
            let mut cpu = Vec::new();
            measure(
                &mut figures,
                format!("ingest, {senders} sender(s), {total} sends, {how}"),
                "sends/s",
                &mut |r| {
                    let (rate, cpu_per_10k) = ingest(&edge, r, senders, total, framing);
                    cpu.push(cpu_per_10k);
                    rate
                },
            );
            eprintln!("  workerd CPU-s per 10k: {cpu:.2?}");
            figures.push(Figure {
                name: format!(
                    "workerd CPU-seconds per 10,000 messages, ingest {senders} sender(s), {how}"
                ),
                unit: "CPU-s",
                runs: cpu,
            });
        }
    }
    if only_ingest {
        drop(edge);
        return report(&figures, runs, &out);
    }
    let mut p99s = Vec::new();
    measure(
        &mut figures,
        "send->sent p50 at 200 msg/s".into(),
        "ms",
        &mut |r| {
            let (p50, p99) = latency(&edge, r, 200, 1_000 / scale);
            p99s.push(p99);
            p50
        },
    );
    figures.push(Figure {
        name: "send->sent p99 at 200 msg/s".into(),
        unit: "ms",
        runs: p99s,
    });
    measure(
        &mut figures,
        format!("fan-out, 1 sender -> 10 devices, {} msgs", 2_000 / scale),
        "msgs/s",
        &mut |r| fan_out(&edge, r, 10, 2_000 / scale),
    );
    let seeds = if quick { 200 } else { 2_000 };
    measure(
        &mut figures,
        format!("simulator, {seeds} seeds"),
        "seeds/s",
        &mut |_| simulator(seeds),
    );
    drop(edge);
    report(&figures, runs, &out);
}

fn report(figures: &[Figure], runs: usize, out: &str) {
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nAckline native benchmarks ({runs} runs each; {cores} cores; wrangler dev local mode)\n"
    );
    println!("| figure | median | min | max | unit |");
    println!("|---|---:|---:|---:|---|");
    let mut json = Vec::new();
    for f in figures {
        let (median, min, max) = f.stats();
        println!(
            "| {} | {median:.2} | {min:.2} | {max:.2} | {} |",
            f.name, f.unit
        );
        json.push(serde_json::json!({ "figure": f.name, "unit": f.unit, "median": median, "min": min, "max": max, "runs": f.runs }));
    }
    let doc = serde_json::json!({ "cores": cores, "runs": runs, "figures": json });
    if let Some(dir) = std::path::Path::new(out).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(out, serde_json::to_string_pretty(&doc).unwrap_or_default())
        .expect("write JSON");
    println!("\nwritten to {out}");
}
