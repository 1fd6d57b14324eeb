//! The simulated world: one or three conversations (a server each), five
//! devices of three users running one client per conversation, disks, a
//! hostile network and a fault schedule, all driven by one seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt::Write as _;

use protocol::client::{
    Client, ClientConfig, ClientError, ClientInput, ClientOutput, MessageStatus,
};
use protocol::rng::Rng;
use protocol::server::{ConnId, Conversation, ServerConfig, ServerInput, ServerOutput};
use protocol::{limits, ClientFrame, Millis, ServerFrame, WriteId};

use super::check::{self, AppView, ServerTruth};
use super::disk::{ClientDisk, ServerDisk};
use super::{FaultCounts, FaultMix, Options, Report, Violation};

/// Epoch time the simulation starts at (any fixed value works).
const EPOCH: Millis = 1_700_000_000_000;
/// A run that takes more steps than this is stuck in a loop.
const MAX_STEPS: u64 = 2_000_000;

/// Two users with two devices each (a second device of a member must never
/// make `delivered` claim what no device of its user stored), one with one.
const USERS: [(&str, &str); 5] = [
    ("ann", "ann-phone"),
    ("ann", "ann-laptop"),
    ("bob", "bob-1"),
    ("bob", "bob-tablet"),
    ("cat", "cat-1"),
];

#[derive(Debug, Clone)]
enum Ev {
    ToServer {
        conn: u64,
        bytes: Vec<u8>,
    },
    ToClient {
        dev: usize,
        conn: u64,
        bytes: Vec<u8>,
    },
    ServerSeesClose {
        conv: usize,
        conn: u64,
        inc: u32,
    },
    ClientSeesClose {
        dev: usize,
        conn: u64,
        code: u16,
    },
    /// The socket a client asked for opens, or fails (offline, server down).
    Dial {
        dev: usize,
        inc: u32,
    },
    ServerFlush {
        conv: usize,
        inc: u32,
    },
    ServerDurable {
        conv: usize,
        inc: u32,
        through: WriteId,
    },
    ClientFlush {
        dev: usize,
        inc: u32,
    },
    ClientDurable {
        dev: usize,
        inc: u32,
        through: WriteId,
    },
    AppSend {
        dev: usize,
    },
    AppOlder {
        dev: usize,
    },
    Disconnect {
        dev: usize,
    },
    Partition {
        dev: usize,
        len: Millis,
    },
    ServerCrash {
        conv: usize,
        down: Millis,
    },
    ServerRestart {
        conv: usize,
        inc: u32,
    },
    ServerEvict {
        conv: usize,
    },
    ClientCrash {
        dev: usize,
        down: Millis,
    },
    ClientRestart {
        dev: usize,
        inc: u32,
    },
    Offline {
        dev: usize,
        len: Millis,
    },
    Online {
        dev: usize,
    },
    ServerSnapshot {
        conv: usize,
    },
    ServerRollback {
        conv: usize,
        down: Millis,
    },
    ServerWriteFailure {
        conv: usize,
    },
    StorageOutage {
        dev: usize,
        len: Millis,
    },
    ClockJump {
        dev: usize,
        by: i64,
    },
    Liveness,
}

struct Sched {
    at: Millis,
    order: u64,
    ev: Ev,
}

impl PartialEq for Sched {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Sched {}
impl PartialOrd for Sched {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Sched {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(o.at, o.order))
    }
}

/// One conversation: its server and what the checker knows about it.
struct ServerNode {
    conv: Option<Conversation>,
    disk: ServerDisk,
    inc: u32,
    flush_scheduled: bool,
    cfg: ServerConfig,
    /// Per user, the durable head when the server first durably recorded one
    /// of its devices: it is a member for every later seq.
    member_since: BTreeMap<String, u64>,
    /// Highest cursor the server announced per (user, device).
    announced: BTreeMap<(String, String), u64>,
    /// Seqs whose push was altered once already.
    tampered_seqs: std::collections::BTreeSet<u64>,
    /// An older copy of the server's storage, for a rollback.
    snapshot: Option<super::disk::ServerData>,
    /// Messages a rollback lost after their senders saw them delivered:
    /// gone for good (the sender's outbox let go of them), so excused.
    lost_delivered: std::collections::BTreeSet<(String, String)>,
    /// Messages that were durable until a rollback took them away.
    lost: BTreeMap<u64, Vec<protocol::StoredMessage>>,
}

impl ServerNode {
    fn new(cfg: ServerConfig) -> ServerNode {
        ServerNode {
            conv: None,
            disk: ServerDisk::default(),
            inc: 0,
            flush_scheduled: false,
            cfg,
            member_since: BTreeMap::new(),
            announced: BTreeMap::new(),
            tampered_seqs: Default::default(),
            snapshot: None,
            lost_delivered: Default::default(),
            lost: BTreeMap::new(),
        }
    }

    fn truth(&self) -> ServerTruth<'_> {
        ServerTruth {
            durable: &self.disk.durable,
            lost: &self.lost,
        }
    }
}

struct DeviceNode {
    cfg: ClientConfig,
    /// The conversation this client is in.
    conv: usize,
    /// The physical device (browser) it runs on, with one client per
    /// conversation: crashes, the network, the clock and storage outages hit
    /// all of them together.
    phys: usize,
    client: Option<Client>,
    disk: ClientDisk,
    inc: u32,
    flush_scheduled: bool,
    conn: Option<u64>,
    online: bool,
    partitioned_until: Millis,
    view: AppView,
    sent: u32,
    /// This device's wall clock minus the world's (clock jumps).
    clock_offset: i64,
    /// Its storage refuses writes until then (a quota error).
    storage_down_until: Millis,
}

struct Conn {
    dev: usize,
    open: bool,
    /// The server's last memo for this socket (its attachment in the edge).
    memo: protocol::ConnMemo,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Safety,
    Liveness,
}

pub(super) struct World {
    opts: Options,
    rng: Rng,
    /// Draws added after the seeds were pinned (when frames go as bundles,
    /// the cursor write delay): a stream of its own, so that the other draws
    /// stay as they were.
    late_rng: Rng,
    now: Millis,
    mix: FaultMix,
    phase: Phase,
    heap: BinaryHeap<Reverse<Sched>>,
    order: u64,
    servers: Vec<ServerNode>,
    devs: Vec<DeviceNode>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    counts: FaultCounts,
    trace: Option<Vec<String>>,
    steps: u64,
    last_step_at: Millis,
    same_time_steps: u64,
    failure: Option<String>,
}

impl World {
    pub(super) fn new(opts: Options) -> World {
        let mut rng = Rng::new(opts.seed);
        let mut late_rng = Rng::new(opts.seed ^ 0x6275_6e64_6c65);
        let mix = opts.mix.clone().unwrap_or_else(|| FaultMix::draw(&mut rng));
        let mut scfg = ServerConfig::new("sim");
        scfg.cursor_delay = *pick(&mut late_rng, &[0, 20, 300]);
        scfg.window = *pick(&mut rng, &[4, 16, 256]);
        scfg.fresh_page = *pick(&mut rng, &[3, 8, 50]) as u32;
        scfg.max_retries = *pick(&mut rng, &[2, 6]) as u32;
        scfg.cache = *pick(&mut rng, &[0, 8, 512]) as usize;
        scfg.page_bytes = *pick(&mut rng, &[300, 2_000, 256 * 1024]) as usize;
        scfg.answer_budget =
            *pick(&mut rng, &[1_000, 20_000, limits::ANSWER_BUDGET as u64]) as usize;
        scfg.answer_rate = *pick(&mut rng, &[20_000, 1_000_000, limits::ANSWER_RATE]);
        scfg.answer_burst = *pick(&mut rng, &[500, 20_000, limits::PAGE_BYTES as u64]);
        // Rate-limit pressure: a tight frame budget makes honest clients
        // pace, and sometimes be refused and resend in order.
        let (rate, burst) = *pick2(&mut rng, &[(1_000, 2_000), (100, 50), (30, 15)]);
        scfg.rate_per_sec = rate;
        scfg.rate_burst = burst;
        scfg.bugs = opts.bugs;
        let page = *pick(&mut rng, &[4, 10, 200]) as u32;
        let window = *pick(&mut rng, &[1, 4, 16]) as usize;
        let max_buffer = *pick(&mut rng, &[2, 64, 4_096]) as usize;
        let (ack_delay, ack_every) = *pick2(&mut rng, &[(0, 1), (50, 32), (500, 1_000)]);
        let convs = opts
            .conversations
            .unwrap_or_else(|| if rng.below(3) == 0 { 3 } else { 1 })
            .max(1);
        let servers: Vec<ServerNode> = (0..convs)
            .map(|k| {
                let mut cfg = scfg.clone();
                if convs > 1 {
                    cfg.conversation = format!("sim-{k}");
                }
                ServerNode::new(cfg)
            })
            .collect();
        let devs = (0..convs)
            .flat_map(|conv| {
                USERS
                    .iter()
                    .enumerate()
                    .map(move |(phys, u)| (conv, phys, u))
            })
            .map(|(conv, phys, (user, device))| {
                let mut cfg = ClientConfig::new(*user, *device);
                cfg.page = page;
                cfg.fresh_page = scfg.fresh_page;
                cfg.window = window;
                cfg.max_buffer = max_buffer;
                cfg.ack_delay = ack_delay;
                cfg.ack_every = ack_every;
                cfg.bugs = opts.bugs;
                DeviceNode {
                    cfg,
                    conv,
                    phys,
                    client: None,
                    disk: ClientDisk::default(),
                    inc: 0,
                    flush_scheduled: false,
                    conn: None,
                    online: true,
                    partitioned_until: 0,
                    view: AppView::default(),
                    sent: 0,
                    clock_offset: 0,
                    storage_down_until: 0,
                }
            })
            .collect();
        let trace = opts.trace.then(Vec::new);
        let mut w = World {
            opts,
            rng,
            late_rng,
            now: EPOCH,
            mix,
            phase: Phase::Safety,
            heap: BinaryHeap::new(),
            order: 0,
            servers,
            devs,
            conns: BTreeMap::new(),
            next_conn: 1,
            counts: FaultCounts::default(),
            trace,
            steps: 0,
            last_step_at: 0,
            same_time_steps: 0,
            failure: None,
        };
        w.counts.multi_conversation_runs = u64::from(w.servers.len() > 1);
        for conv in 0..w.servers.len() {
            w.start_server(conv);
        }
        for dev in 0..w.devs.len() {
            w.start_client(dev);
        }
        w.schedule_script();
        w
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let ms = self.now - EPOCH;
            t.push(format!("{ms:>8} {}", line()));
        }
    }

    fn fail(&mut self, what: String) {
        if self.failure.is_none() {
            self.log(|| format!("VIOLATION: {what}"));
            self.failure = Some(what);
        }
    }

    fn at(&mut self, delay: Millis, ev: Ev) {
        self.order += 1;
        self.heap.push(Reverse(Sched {
            at: self.now + delay,
            order: self.order,
            ev,
        }));
    }

    /// Lays out the run: app sends, late joiners and the faults of the mix.
    fn schedule_script(&mut self) {
        let span = self.mix.safety_ms;
        let n = self.mix.messages;
        for _ in 0..n {
            let dev = self.rng.below(self.devs.len() as u64) as usize;
            let t = self.rng.below(span);
            self.at(t, Ev::AppSend { dev });
        }
        for _ in 0..self.mix.late_joiners {
            // Joins after some history exists: starts from the latest page.
            let dev = self.rng.below(self.devs.len() as u64) as usize;
            if self.devs[dev].view.seen.is_empty() && self.devs[dev].online {
                self.devs[dev].online = false;
                let t = self.rng.range(span / 4, span);
                self.at(t, Ev::Online { dev });
                self.counts.late_joins += 1;
            }
        }
        for _ in 0..self.mix.history_loads {
            let dev = self.rng.below(self.devs.len() as u64) as usize;
            let t = self.rng.below(span);
            self.at(t, Ev::AppOlder { dev });
        }
        let ndev = self.devs.len() as u64;
        for _ in 0..self.mix.disconnects {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            self.at(t, Ev::Disconnect { dev });
        }
        for _ in 0..self.mix.partitions {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            let len = self.rng.range(500, 40_000);
            self.at(t, Ev::Partition { dev, len });
        }
        // Server faults hit one conversation each (its own Durable Object).
        let nconv = self.servers.len() as u64;
        for _ in 0..self.mix.server_crashes {
            let t = self.rng.below(span);
            let down = self.rng.range(10, 20_000);
            let conv = self.rng.below(nconv) as usize;
            self.at(t, Ev::ServerCrash { conv, down });
        }
        for _ in 0..self.mix.server_evictions {
            let t = self.rng.below(span);
            let conv = self.rng.below(nconv) as usize;
            self.at(t, Ev::ServerEvict { conv });
        }
        for _ in 0..self.mix.rollbacks {
            let t1 = self.rng.below(span / 2);
            let t2 = self.rng.range(t1 + 1, span);
            let down = self.rng.range(10, 5_000);
            let conv = self.rng.below(nconv) as usize;
            self.at(t1, Ev::ServerSnapshot { conv });
            self.at(t2, Ev::ServerRollback { conv, down });
        }
        for _ in 0..self.mix.server_write_failures {
            let t = self.rng.below(span);
            let conv = self.rng.below(nconv) as usize;
            self.at(t, Ev::ServerWriteFailure { conv });
        }
        for _ in 0..self.mix.storage_outages {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            let len = self.rng.range(200, 30_000);
            self.at(t, Ev::StorageOutage { dev, len });
        }
        for _ in 0..self.mix.clock_jumps {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            let by =
                self.rng.range(1_000, 120_000) as i64 * if self.rng.below(2) == 0 { -1 } else { 1 };
            self.at(t, Ev::ClockJump { dev, by });
        }
        for _ in 0..self.mix.client_crashes {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            let down = self.rng.range(0, 10_000);
            self.at(t, Ev::ClientCrash { dev, down });
        }
        for _ in 0..self.mix.long_offline {
            let (dev, t) = (self.rng.below(ndev) as usize, self.rng.below(span));
            let len = self.rng.range(60_000, 900_000);
            self.at(t, Ev::Offline { dev, len });
        }
        self.at(span, Ev::Liveness);
    }

    fn start_server(&mut self, conv: usize) {
        let seed = self.rng.next_u64();
        let server = &mut self.servers[conv];
        match Conversation::new(server.cfg.clone(), seed, self.now, &server.disk.visible) {
            Ok(c) => server.conv = Some(c),
            Err(e) => self.fail(format!("server {conv} failed to start: {e}")),
        }
    }

    /// The clients running on the same physical device as `dev` (itself included).
    fn siblings(&self, dev: usize) -> Vec<usize> {
        let phys = self.devs[dev].phys;
        (0..self.devs.len())
            .filter(|d| self.devs[*d].phys == phys)
            .collect()
    }

    /// Who a client is in traces and violations: its device, and its
    /// conversation when there are several.
    fn who(&self, dev: usize) -> String {
        let d = &self.devs[dev];
        if self.servers.len() > 1 {
            format!("{}/c{}", d.cfg.device, d.conv)
        } else {
            d.cfg.device.clone()
        }
    }

    fn start_client(&mut self, dev: usize) {
        let seed = self.rng.next_u64();
        let d = &mut self.devs[dev];
        let snapshot = d.disk.durable.snapshot();
        let truth = self.servers[d.conv].truth();
        if let Err(e) = d.view.reload(truth, &d.disk.durable) {
            let who = self.who(dev);
            self.fail(format!("{who}: {e}"));
        }
        let d = &mut self.devs[dev];
        d.client = Some(Client::new(d.cfg.clone(), seed, snapshot));
        self.drain_client(dev);
    }

    /// Runs to the end; `Err` carries the first violation.
    pub(super) fn run(mut self) -> Result<Report, Violation> {
        let deadline = EPOCH + self.mix.safety_ms + self.mix.liveness_ms;
        let mut next_probe = EPOCH;
        loop {
            if let Some(what) = self.failure.take() {
                return Err(self.violation(what));
            }
            self.steps += 1;
            if self.steps > MAX_STEPS {
                let what =
                    format!("no convergence after {MAX_STEPS} steps (a timer or message storm)");
                return Err(self.violation(what));
            }
            if self.phase == Phase::Liveness && self.now >= next_probe {
                next_probe = self.now + 500;
                self.app_tick();
                if self.converged() {
                    self.final_checks();
                    if let Some(what) = self.failure.take() {
                        return Err(self.violation(what));
                    }
                    return Ok(self.report());
                }
            }
            let Some(t) = self.next_time() else {
                // Nothing scheduled at all: only possible when everything is idle.
                if self.phase == Phase::Liveness {
                    self.now = next_probe.max(self.now);
                    if self.now > deadline {
                        return Err(self.stuck());
                    }
                    continue;
                }
                return Err(self.violation("the world stopped before the liveness phase".into()));
            };
            let t = if self.phase == Phase::Liveness {
                t.min(next_probe)
            } else {
                t
            };
            if t > deadline {
                return Err(self.stuck());
            }
            self.now = self.now.max(t);
            self.step();
        }
    }

    fn next_time(&self) -> Option<Millis> {
        let mut t = self.heap.peek().map(|Reverse(s)| s.at);
        let mut min = |x: Option<Millis>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |y| y.min(x)));
            }
        };
        for server in &self.servers {
            min(server.conv.as_ref().and_then(|c| c.poll_timeout()));
        }
        for d in &self.devs {
            if let Some(c) = &d.client {
                // A deadline on the device's clock, in world time.
                min(c
                    .poll_timeout()
                    .map(|t| t.saturating_add_signed(-d.clock_offset).max(self.now)));
            }
        }
        t
    }

    fn step(&mut self) {
        let now = self.now;
        if self.last_step_at == now {
            self.same_time_steps += 1;
            if self.same_time_steps == 50_000 {
                let mut what = format!(
                    "timer storm: 50000 steps at t={}ms without time advancing",
                    now - EPOCH
                );
                if self.trace.is_some() {
                    for d in &self.devs {
                        let _ = write!(what, "\n{}: {:?}", d.cfg.device, d.client);
                    }
                    for server in &self.servers {
                        let _ = write!(
                            what,
                            "\nserver {}: {:?}",
                            server.cfg.conversation, server.conv
                        );
                    }
                }
                self.fail(what);
            }
        } else {
            self.last_step_at = now;
            self.same_time_steps = 0;
        }
        if self.heap.peek().is_some_and(|Reverse(s)| s.at <= now) {
            if let Some(Reverse(s)) = self.heap.pop() {
                self.event(s.ev);
            }
            return;
        }
        for conv in 0..self.servers.len() {
            if self.servers[conv]
                .conv
                .as_ref()
                .and_then(|c| c.poll_timeout())
                .is_some_and(|t| t <= now)
            {
                self.server_input(conv, ServerInput::Timeout);
                return;
            }
        }
        for dev in 0..self.devs.len() {
            let d = &self.devs[dev];
            let Some(c) = &d.client else { continue };
            if c.poll_timeout()
                .is_some_and(|t| t <= now.saturating_add_signed(d.clock_offset))
            {
                self.client_input(dev, ClientInput::Timeout);
                return;
            }
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::ToServer { conn, bytes } => {
                let Some(conv) = self
                    .conns
                    .get(&conn)
                    .filter(|c| c.open)
                    .map(|c| self.devs[c.dev].conv)
                else {
                    return;
                };
                if self.servers[conv].conv.is_some() {
                    self.server_input(
                        conv,
                        ServerInput::Frame {
                            conn: ConnId(conn),
                            bytes,
                        },
                    );
                }
            }
            Ev::ToClient { dev, conn, bytes } => {
                let d = &self.devs[dev];
                if d.conn == Some(conn)
                    && d.client.is_some()
                    && self.conns.get(&conn).is_some_and(|c| c.open)
                {
                    self.client_input(dev, ClientInput::Frame(bytes));
                }
            }
            Ev::ServerSeesClose { conv, conn, inc } => {
                if inc == self.servers[conv].inc && self.servers[conv].conv.is_some() {
                    self.server_input(conv, ServerInput::Disconnected { conn: ConnId(conn) });
                }
            }
            Ev::ClientSeesClose { dev, conn, code } => {
                if self.devs[dev].conn == Some(conn) {
                    self.devs[dev].conn = None;
                    if self.devs[dev].client.is_some() {
                        self.client_input(
                            dev,
                            ClientInput::Disconnected {
                                code,
                                reason: String::new(),
                            },
                        );
                    }
                }
            }
            Ev::Dial { dev, inc } => {
                if inc == self.devs[dev].inc && self.devs[dev].client.is_some() {
                    self.connect(dev);
                }
            }
            Ev::ServerFlush { conv, inc } => {
                if inc != self.servers[conv].inc {
                    return;
                }
                self.servers[conv].flush_scheduled = false;
                let n = self
                    .rng
                    .range(1, self.servers[conv].disk.pending.len().max(1) as u64)
                    as usize;
                if let Some(through) = self.servers[conv].disk.flush(n) {
                    let d = self.rng.range(0, 2);
                    self.at(d, Ev::ServerDurable { conv, inc, through });
                }
                self.note_members(conv);
                self.schedule_server_flush(conv);
            }
            Ev::ServerDurable { conv, inc, through } => {
                if inc == self.servers[conv].inc && self.servers[conv].conv.is_some() {
                    self.server_input(conv, ServerInput::Durable { through });
                }
            }
            Ev::ClientFlush { dev, inc } => {
                if inc != self.devs[dev].inc {
                    return;
                }
                self.devs[dev].flush_scheduled = false;
                if self.now < self.devs[dev].storage_down_until {
                    // The transaction fails; the shell keeps the writes in
                    // order and tries again later.
                    self.counts.refused_flushes += 1;
                    self.devs[dev].flush_scheduled = true;
                    self.at(500, Ev::ClientFlush { dev, inc });
                    return;
                }
                let n = self
                    .rng
                    .range(1, self.devs[dev].disk.pending.len().max(1) as u64)
                    as usize;
                if let Some(through) = self.devs[dev].disk.flush(n) {
                    let d = self.rng.range(0, 2);
                    self.at(d, Ev::ClientDurable { dev, inc, through });
                }
                self.schedule_client_flush(dev);
            }
            Ev::ClientDurable { dev, inc, through } => {
                if inc == self.devs[dev].inc && self.devs[dev].client.is_some() {
                    self.client_input(dev, ClientInput::Durable { through });
                }
            }
            Ev::AppSend { dev } => self.app_send(dev),
            Ev::AppOlder { dev } => {
                let now = self.dev_now(dev);
                if let Some(c) = &mut self.devs[dev].client {
                    // Refused while not connected; a request in flight always
                    // ends with a page or a failure (the checker counts).
                    if c.load_older(now) == Ok(true) {
                        self.devs[dev].view.history_requests = 1;
                    }
                    self.drain_client(dev);
                }
            }
            Ev::Disconnect { dev } => {
                if self.phase == Phase::Safety {
                    if let Some(conn) = self.devs[dev].conn {
                        self.counts.disconnects += 1;
                        self.log(|| format!("FAULT disconnect dev{dev} conn{conn}"));
                        self.close_conn(conn, true, true);
                    }
                }
            }
            Ev::Partition { dev, len } => {
                if self.phase == Phase::Safety {
                    self.counts.partitions += 1;
                    self.log(|| format!("FAULT partition dev{dev} for {len}ms"));
                    for d in self.siblings(dev) {
                        self.devs[d].partitioned_until = self.now + len;
                    }
                }
            }
            Ev::ServerCrash { conv, down } => {
                if self.phase == Phase::Safety && self.servers[conv].conv.is_some() {
                    self.server_crash(conv, down);
                }
            }
            Ev::ServerRestart { conv, inc } => {
                if inc == self.servers[conv].inc && self.servers[conv].conv.is_none() {
                    self.log(|| format!("server {conv} restarts"));
                    self.start_server(conv);
                }
            }
            Ev::ServerEvict { conv } => {
                if self.phase == Phase::Safety && self.servers[conv].conv.is_some() {
                    self.server_evict(conv);
                }
            }
            Ev::ClientCrash { dev, down } => {
                // The browser goes: every conversation's client on it.
                if self.phase == Phase::Safety && self.devs[dev].client.is_some() {
                    for d in self.siblings(dev) {
                        if self.devs[d].client.is_some() {
                            self.client_crash(d, down);
                        }
                    }
                }
            }
            Ev::ClientRestart { dev, inc } => {
                if inc == self.devs[dev].inc && self.devs[dev].client.is_none() {
                    self.log(|| format!("dev{dev} restarts"));
                    self.start_client(dev);
                }
            }
            Ev::Offline { dev, len } => {
                if self.phase == Phase::Safety && self.devs[dev].online {
                    self.counts.long_offline += 1;
                    self.log(|| format!("FAULT dev{dev} offline for {len}ms"));
                    // The platform does not always notice.
                    let noticed = self.rng.chance(500_000);
                    for d in self.siblings(dev) {
                        self.devs[d].online = false;
                        if noticed && self.devs[d].client.is_some() {
                            self.client_input(d, ClientInput::Network { online: false });
                        }
                        if let Some(conn) = self.devs[d].conn {
                            self.close_conn(conn, true, true);
                        }
                        self.at(len, Ev::Online { dev: d });
                    }
                }
            }
            Ev::Online { dev } => {
                self.devs[dev].online = true;
                if self.devs[dev].client.is_some() {
                    self.client_input(dev, ClientInput::Network { online: true });
                }
            }
            Ev::ServerSnapshot { conv } => {
                let head = self.servers[conv].disk.durable.head();
                self.log(|| format!("server {conv} storage snapshot at head {head}"));
                self.servers[conv].snapshot = Some(self.servers[conv].disk.durable.clone());
            }
            Ev::ServerRollback { conv, down } => {
                if self.phase == Phase::Safety && self.servers[conv].conv.is_some() {
                    self.rollback(conv, down);
                }
            }
            Ev::ServerWriteFailure { conv } => {
                if self.phase == Phase::Safety && self.servers[conv].conv.is_some() {
                    // As the edge does: the core and every socket go, the
                    // core is rebuilt from what storage holds.
                    self.counts.server_write_failures += 1;
                    self.log(|| format!("FAULT server {conv} storage write failed"));
                    let down = self.rng.range(0, 50);
                    self.server_crash(conv, down);
                }
            }
            Ev::StorageOutage { dev, len } => {
                if self.phase == Phase::Safety {
                    self.log(|| format!("FAULT dev{dev} storage refuses writes for {len}ms"));
                    for d in self.siblings(dev) {
                        self.devs[d].storage_down_until = self.now + len;
                    }
                }
            }
            Ev::ClockJump { dev, by } => {
                if self.phase == Phase::Safety {
                    self.counts.clock_jumps += 1;
                    self.log(|| format!("FAULT dev{dev} clock steps by {by}ms"));
                    for d in self.siblings(dev) {
                        self.devs[d].clock_offset += by;
                    }
                }
            }
            Ev::Liveness => self.start_liveness(),
        }
    }

    fn start_liveness(&mut self) {
        self.log(|| "LIVENESS: faults off, everyone reconnects".into());
        self.phase = Phase::Liveness;
        for _ in 0..self.mix.late_sends {
            let dev = self.rng.below(self.devs.len() as u64) as usize;
            let t = self.rng.below(10_000);
            self.at(t, Ev::AppSend { dev });
        }
        self.mix.drop_pm = 0;
        self.mix.dup_pm = 0;
        self.mix.jitter_ms = 0;
        for conv in 0..self.servers.len() {
            if self.servers[conv].conv.is_none() {
                self.start_server(conv);
            }
        }
        for dev in 0..self.devs.len() {
            self.devs[dev].online = true;
            self.devs[dev].partitioned_until = 0;
            if self.devs[dev].client.is_none() {
                self.start_client(dev);
            }
            // The network is back for everyone (the client reconnects at once).
            self.client_input(dev, ClientInput::Network { online: true });
        }
    }

    /// The app pages back through history (a device that joined late).
    fn app_tick(&mut self) {
        for dev in 0..self.devs.len() {
            let now = self.dev_now(dev);
            if let Some(c) = &mut self.devs[dev].client {
                if c.is_ready() && !c.history_complete() {
                    if c.load_older(now) == Ok(true) {
                        self.devs[dev].view.history_requests = 1;
                    }
                    self.drain_client(dev);
                }
            }
        }
    }

    fn app_send(&mut self, dev: usize) {
        let big = self.rng.below(100) < u64::from(self.mix.big_bodies_pct);
        let now = self.dev_now(dev);
        let slack = self.rng.below(64) as usize;
        let d = &mut self.devs[dev];
        let Some(c) = &mut d.client else { return };
        d.sent += 1;
        // Some bodies need JSON escaping; one is empty; some are within a
        // few bytes of the limit (multi-byte characters included).
        let mut body = match d.sent % 5 {
            0 => format!("{} says \"hi\" \\ {}\n✓", d.cfg.device, d.sent),
            1 if d.sent == 1 => String::new(),
            _ => format!("{} #{}", d.cfg.device, d.sent),
        };
        if big {
            body.push('✓');
            let pad = limits::MAX_BODY_BYTES.saturating_sub(body.len() + slack);
            body.push_str(&"x".repeat(pad));
        }
        match c.send(now, body) {
            Ok(id) => {
                self.log(|| format!("dev{dev} send() -> {id}"));
                self.devs[dev].view.send_order.push(id);
            }
            Err(e) => self.fail(format!("send() refused a valid body: {e}")),
        }
        self.drain_client(dev);
    }

    /// Opens the socket the client asked for, or tells it the attempt failed.
    fn connect(&mut self, dev: usize) {
        if let Some(old) = self.devs[dev].conn.take() {
            self.close_conn(old, true, false);
        }
        let conv = self.devs[dev].conv;
        if self.servers[conv].conv.is_none() || !self.devs[dev].online {
            self.log(|| format!("dev{dev} cannot connect"));
            self.client_input(
                dev,
                ClientInput::Disconnected {
                    code: 1006,
                    reason: "unreachable".into(),
                },
            );
            return;
        }
        let conn = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            conn,
            Conn {
                dev,
                open: true,
                memo: Default::default(),
            },
        );
        self.devs[dev].conn = Some(conn);
        self.log(|| format!("dev{dev} connects conn{conn}"));
        let (user, device) = (
            self.devs[dev].cfg.user.clone(),
            self.devs[dev].cfg.device.clone(),
        );
        self.server_input(
            conv,
            ServerInput::Connected {
                conn: ConnId(conn),
                user,
                device,
                resumed: None,
                expires: None,
            },
        );
        if self.devs[dev].conn == Some(conn) {
            self.client_input(dev, ClientInput::Connected);
        }
    }

    /// Closes a connection; each side learns it after a delay.
    fn close_conn(&mut self, conn: u64, tell_server: bool, tell_client: bool) {
        self.close_conn_with(conn, tell_server, tell_client, 1006);
    }

    /// [`World::close_conn`] with the close code the client sees.
    fn close_conn_with(&mut self, conn: u64, tell_server: bool, tell_client: bool, code: u16) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.open {
            return;
        }
        c.open = false;
        let dev = c.dev;
        if tell_server {
            let conv = self.devs[dev].conv;
            let (d, inc) = (self.rng.range(1, 50), self.servers[conv].inc);
            self.at(d, Ev::ServerSeesClose { conv, conn, inc });
        }
        if tell_client {
            let d = self.rng.range(1, 50);
            self.at(d, Ev::ClientSeesClose { dev, conn, code });
        }
    }

    /// The open sockets of conversation `conv`.
    fn open_conns(&self, conv: usize) -> Vec<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| c.open && self.devs[c.dev].conv == conv)
            .map(|(k, _)| *k)
            .collect()
    }

    fn server_crash(&mut self, conv: usize, down: Millis) {
        self.counts.server_crashes += 1;
        let lost = self.servers[conv].disk.crash();
        self.counts.lost_writes += lost as u64;
        self.log(|| {
            format!("FAULT server {conv} crash (lost {lost} pending writes), down {down}ms")
        });
        let server = &mut self.servers[conv];
        server.conv = None;
        server.inc += 1;
        server.flush_scheduled = false;
        for conn in self.open_conns(conv) {
            self.close_conn(conn, false, true);
        }
        let inc = self.servers[conv].inc;
        self.at(down, Ev::ServerRestart { conv, inc });
    }

    /// Eviction with sockets kept (hibernation): memory is gone, storage and
    /// connections stay.
    fn server_evict(&mut self, conv: usize) {
        self.counts.server_evictions += 1;
        self.log(|| format!("FAULT server {conv} evicted (sockets stay open)"));
        let n = self.servers[conv].disk.pending.len();
        self.servers[conv].disk.flush(n);
        self.note_members(conv);
        let server = &mut self.servers[conv];
        server.conv = None;
        server.inc += 1;
        server.flush_scheduled = false;
        self.start_server(conv);
        let mut open: Vec<(u64, usize, protocol::ConnMemo)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.open && self.devs[c.dev].conv == conv)
            .map(|(k, c)| (*k, c.dev, c.memo.clone()))
            .collect();
        open.sort_unstable_by_key(|(k, _, _)| *k);
        for (conn, dev, memo) in open {
            let (user, device) = (
                self.devs[dev].cfg.user.clone(),
                self.devs[dev].cfg.device.clone(),
            );
            self.server_input(
                conv,
                ServerInput::Connected {
                    conn: ConnId(conn),
                    user,
                    device,
                    resumed: Some(memo),
                    expires: None,
                },
            );
        }
    }

    fn client_crash(&mut self, dev: usize, down: Millis) {
        self.counts.client_crashes += 1;
        let lost = self.devs[dev].disk.crash();
        self.counts.lost_writes += lost as u64;
        self.log(|| {
            format!("FAULT dev{dev} crash/reload (lost {lost} pending writes), down {down}ms")
        });
        let d = &mut self.devs[dev];
        d.client = None;
        d.inc += 1;
        d.flush_scheduled = false;
        if let Some(conn) = d.conn.take() {
            self.close_conn(conn, true, false);
        }
        let inc = self.devs[dev].inc;
        self.at(down, Ev::ClientRestart { dev, inc });
    }

    /// Restores the older storage snapshot (an operator restoring a backup):
    /// the server goes down and comes back with less history.
    fn rollback(&mut self, conv: usize, down: Millis) {
        let Some(snapshot) = self.servers[conv].snapshot.take() else {
            return;
        };
        let keep = snapshot.head();
        if keep >= self.servers[conv].disk.durable.head() {
            return; // nothing would be lost
        }
        self.counts.rollbacks += 1;
        self.log(|| format!("FAULT server {conv} storage rolled back to head {keep}"));
        let server = &mut self.servers[conv];
        for m in server
            .disk
            .durable
            .messages
            .values()
            .filter(|m| m.seq > keep)
        {
            server.lost.entry(m.seq).or_default().push(m.clone());
            let delivered = self.devs.iter().any(|d| {
                d.conv == conv
                    && d.cfg.device == m.device
                    && matches!(
                        d.view.status.get(&m.id),
                        Some(MessageStatus::Delivered { .. })
                    )
            });
            if delivered {
                server
                    .lost_delivered
                    .insert((m.device.clone(), m.id.clone()));
            }
        }
        server.disk.durable = snapshot;
        self.server_crash(conv, down);
        // Cursors and memberships legitimately went back with the history.
        self.servers[conv].announced.clear();
        self.servers[conv].member_since.clear();
        self.note_members(conv);
    }

    /// Users whose first device record just became durable are members from now on.
    fn note_members(&mut self, conv: usize) {
        let server = &mut self.servers[conv];
        let head = server.disk.durable.head();
        for (user, _) in server.disk.durable.cursors.keys() {
            server.member_since.entry(user.clone()).or_insert(head);
        }
    }

    /// `delivered` for `seq` is true only if every other user that was a
    /// member when `seq` was stored has a device that durably stored it
    /// (this message, not another one a rolled-back server put at `seq`; a
    /// device that stored it and later reset its inbox counts).
    fn check_delivered(&self, dev: usize, id: &str, seq: u64) -> Result<(), String> {
        let (sender, conv) = (&self.devs[dev].cfg.user, self.devs[dev].conv);
        for (user, since) in &self.servers[conv].member_since {
            if user == sender || seq <= *since {
                continue;
            }
            let stored = self.devs.iter().any(|d| {
                d.conv == conv
                    && &d.cfg.user == user
                    && d.disk.ever_stored.contains(&(seq, id.to_owned()))
            });
            if !stored {
                return Err(format!(
                    "{id} (seq {seq}) reported delivered, but no device of {user} (a member since seq {since}) has stored it"
                ));
            }
        }
        Ok(())
    }

    /// One device's messages are stored in the order its app called `send()`.
    fn check_send_order(&self, dev: usize) -> Result<(), String> {
        let d = &self.devs[dev];
        let server = &self.servers[d.conv];
        let durable = &server.disk.durable;
        let mut seqs: HashMap<&str, u64> = HashMap::new();
        for m in durable
            .messages
            .values()
            .filter(|m| m.user == d.cfg.user && m.device == d.cfg.device)
        {
            if let Some(prev) = seqs.insert(m.id.as_str(), m.seq) {
                return Err(format!(
                    "{} {} stored twice: seqs {prev} and {}",
                    m.device, m.id, m.seq
                ));
            }
        }
        // A message a rollback took from the server is stored again later,
        // after messages sent after it: that reorder is the rollback's.
        let lost_here: std::collections::BTreeSet<&str> = server
            .lost
            .values()
            .flatten()
            .filter(|m| m.device == d.cfg.device && m.user == d.cfg.user)
            .map(|m| m.id.as_str())
            .collect();
        let mut last: Option<(&str, u64)> = None;
        for id in &d.view.send_order {
            if lost_here.contains(id.as_str()) {
                continue;
            }
            let Some(&seq) = seqs.get(id.as_str()) else {
                continue;
            };
            if let Some((prev, prev_seq)) = last {
                if seq < prev_seq {
                    return Err(format!(
                        "send order broken: {id} was sent after {prev} but stored at seq {seq}, before {prev_seq}"
                    ));
                }
            }
            last = Some((id, seq));
        }
        Ok(())
    }

    /// Announced cursors never move backwards.
    fn check_announced(&mut self, conv: usize, frame: &ServerFrame) -> Result<(), String> {
        let (ServerFrame::Welcome { cursors, .. } | ServerFrame::Delivered { cursors, .. }) = frame
        else {
            return Ok(());
        };
        for c in cursors {
            let e = self.servers[conv]
                .announced
                .entry((c.user.clone(), c.device.clone()))
                .or_insert(0);
            if c.through < *e {
                return Err(format!(
                    "the cursor of {} moved backwards: announced {} after {}",
                    c.device, c.through, *e
                ));
            }
            *e = c.through;
        }
        Ok(())
    }

    /// Whether to crash the writer before its write can become durable.
    fn crash_after_write(&mut self) -> bool {
        if self.phase != Phase::Safety || self.mix.write_crashes == 0 || !self.rng.chance(50_000) {
            return false;
        }
        self.mix.write_crashes -= 1;
        self.counts.write_crashes += 1;
        true
    }

    fn schedule_server_flush(&mut self, conv: usize) {
        let server = &mut self.servers[conv];
        if !server.flush_scheduled && !server.disk.pending.is_empty() {
            server.flush_scheduled = true;
            let inc = server.inc;
            let d = self.rng.range(1, self.mix.disk_latency_ms.max(1));
            self.at(d, Ev::ServerFlush { conv, inc });
        }
    }

    fn schedule_client_flush(&mut self, dev: usize) {
        let d = &self.devs[dev];
        if !d.flush_scheduled && !d.disk.pending.is_empty() {
            self.devs[dev].flush_scheduled = true;
            let t = self.rng.range(1, self.mix.disk_latency_ms.max(1));
            let inc = self.devs[dev].inc;
            self.at(t, Ev::ClientFlush { dev, inc });
        }
    }

    /// Puts a frame on the wire: maybe lost, delayed, duplicated.
    fn net(&mut self, dev: usize, to_server: bool, conn: u64, bytes: Vec<u8>) {
        if self.devs[dev].partitioned_until > self.now {
            self.counts.dropped += 1;
            return;
        }
        if self.rng.chance(self.mix.drop_pm) {
            self.counts.dropped += 1;
            self.log(|| format!("NET drop conn{conn}"));
            return;
        }
        let bytes = if !to_server && self.rng.chance(self.mix.tamper_pm) {
            self.tamper(dev, bytes)
        } else {
            bytes
        };
        let copies = if self.rng.chance(self.mix.dup_pm) {
            self.counts.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.range(1, 8) + self.rng.below(self.mix.jitter_ms + 1);
            let b = bytes.clone();
            let ev = if to_server {
                Ev::ToServer { conn, bytes: b }
            } else {
                Ev::ToClient {
                    dev,
                    conn,
                    bytes: b,
                }
            };
            self.at(delay, ev);
        }
    }

    /// Alters the first message of the first push in a message (as a faulty
    /// middlebox or a corrupted cache would); other messages pass unchanged.
    fn tamper(&mut self, dev: usize, bytes: Vec<u8>) -> Vec<u8> {
        let Ok(Ok(mut frames)) = ServerFrame::decode_bundle(&bytes)
            .map(|f| f.into_iter().collect::<Result<Vec<_>, _>>())
        else {
            return bytes;
        };
        let Some(m) = frames.iter_mut().find_map(|f| match f {
            ServerFrame::Push { messages } => messages.first_mut(),
            _ => None,
        }) else {
            return bytes;
        };
        // Each message at most once: a flaky middlebox, not a hostile server
        // (which the chain reports as divergence after repeated mismatches).
        if !self.servers[self.devs[dev].conv]
            .tampered_seqs
            .insert(m.seq)
        {
            return bytes;
        }
        m.body.push_str(" (altered)");
        self.counts.tampered += 1;
        let seq = m.seq;
        self.log(|| format!("FAULT tampered push of seq {seq}"));
        // The same message again: one frame, or one bundle of them.
        protocol::pack_bundles(frames.iter().map(ServerFrame::encode), usize::MAX)
            .concat()
            .into_bytes()
    }

    /// The name of server `conv` in traces: "server", or "server N" when
    /// there are several.
    fn server_name(&self, conv: usize) -> String {
        if self.servers.len() > 1 {
            format!("server {conv}")
        } else {
            "server".into()
        }
    }

    fn server_input(&mut self, k: usize, input: ServerInput) {
        let now = self.now;
        if self.trace.is_some() {
            let name = self.server_name(k);
            let line = match &input {
                ServerInput::Frame { conn, bytes } => {
                    format!(
                        "{name} <- conn{} {}",
                        conn.0,
                        String::from_utf8_lossy(bytes)
                    )
                }
                other => format!("{name} <- {other:?}"),
            };
            if let Some(t) = &mut self.trace {
                t.push(format!("{:>8} {line}", now - EPOCH));
            }
        }
        let server = &mut self.servers[k];
        let Some(conv) = &mut server.conv else { return };
        conv.handle(now, input, &server.disk.visible);
        self.drain_server(k);
    }

    fn drain_server(&mut self, k: usize) {
        self.drain_server_outputs(k);
        // A lost push must be resent by the server, not wait for the device
        // to notice (its heartbeat or cursor refresh would mask the bug).
        let stats = self.servers[k].conv.as_ref().map(|c| c.stats());
        if let Some(s) = stats.filter(|s| s.unscheduled_resends > 0) {
            let n = s.unscheduled_resends;
            let name = self.server_name(k);
            self.fail(format!(
                "{name}: {n} connection(s) hold unacknowledged pushes with no resend scheduled"
            ));
        }
    }

    fn drain_server_outputs(&mut self, k: usize) {
        // Each connection's frames of this step go out together at the end.
        let mut outgoing: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        loop {
            let Some(conv) = &mut self.servers[k].conv else {
                return;
            };
            let Some(out) = conv.poll_output() else { break };
            match out {
                ServerOutput::Frame { conn, frame } => {
                    if let Err(e) = self
                        .check_announced(k, &frame)
                        .and_then(|()| self.check_server_frame(k, conn.0, &frame))
                    {
                        let name = self.server_name(k);
                        self.fail(format!("{name}: {e}"));
                    }
                    if matches!(frame, ServerFrame::Error { id: Some(_), .. }) {
                        self.counts.refused_sends += 1;
                    }
                    let Some(c) = self.conns.get(&conn.0) else {
                        continue;
                    };
                    if !c.open {
                        continue;
                    }
                    let dev = c.dev;
                    let text = frame.encode();
                    let name = self.server_name(k);
                    self.log(|| format!("{name} -> dev{dev} conn{} {text}", conn.0));
                    outgoing.entry(conn.0).or_default().push(text);
                }
                ServerOutput::Persist { write, op } => {
                    let name = self.server_name(k);
                    self.log(|| format!("{name} persist #{} {op:?}", write.0));
                    self.servers[k].disk.write(write, op);
                    if self.crash_after_write() {
                        let down = self.rng.range(10, 5_000);
                        self.at(0, Ev::ServerCrash { conv: k, down });
                    }
                    self.schedule_server_flush(k);
                }
                ServerOutput::Close { conn, code, reason } => {
                    let frames = outgoing.remove(&conn.0).unwrap_or_default();
                    self.server_transmit(k, conn.0, frames);
                    let name = self.server_name(k);
                    self.log(|| format!("{name} closes conn{} {code} {reason}", conn.0));
                    match code {
                        protocol::server::close::POLICY => self.fail(format!(
                            "server closed an honest client for abuse: {reason}"
                        )),
                        protocol::server::close::UNRESPONSIVE => {
                            self.counts.unresponsive_closes += 1
                        }
                        _ => self.counts.replaced_closes += 1,
                    }
                    self.close_conn_with(conn.0, false, true, code);
                }
                ServerOutput::Remember { conn, memo } => {
                    if let Some(c) = self.conns.get_mut(&conn.0) {
                        c.memo = memo;
                    }
                }
            }
        }
        for (conn, frames) in outgoing {
            self.server_transmit(k, conn, frames);
        }
    }

    /// Puts a connection's frames of one step on the network: as bundles
    /// half of the time when its client reads them, else one message each.
    fn server_transmit(&mut self, k: usize, conn: u64, frames: Vec<String>) {
        let Some(c) = self.conns.get(&conn).filter(|c| c.open) else {
            return;
        };
        let dev = c.dev;
        let accepts = self.servers[k]
            .conv
            .as_ref()
            .is_some_and(|s| s.accepts_bundles(ConnId(conn)));
        let messages = if frames.len() > 1 && accepts && self.late_rng.chance(500_000) {
            protocol::pack_bundles(frames, limits::MAX_SERVER_FRAME_BYTES)
        } else {
            frames
        };
        for text in messages {
            self.counts.bundles += u64::from(text.starts_with('['));
            self.net(dev, false, conn, text.into_bytes());
        }
    }

    /// Puts a device's frames of one step on its connection: as bundles half
    /// of the time, else one message each.
    fn client_transmit(&mut self, dev: usize, frames: Vec<String>) {
        let Some(conn) = self.devs[dev]
            .conn
            .filter(|c| self.conns.get(c).is_some_and(|c| c.open))
        else {
            return;
        };
        let messages = if frames.len() > 1 && self.late_rng.chance(500_000) {
            protocol::pack_bundles(frames, limits::MAX_FRAME_BYTES)
        } else {
            frames
        };
        for text in messages {
            self.counts.bundles += u64::from(text.starts_with('['));
            self.net(dev, true, conn, text.into_bytes());
        }
    }

    fn check_server_frame(&self, k: usize, conn: u64, frame: &ServerFrame) -> Result<(), String> {
        let server = &self.servers[k];
        let durable = &server.disk.durable;
        let dev = self.conns.get(&conn).map(|c| c.dev);
        if dev.is_some_and(|d| self.devs[d].conv != k) {
            return Err(format!(
                "a frame of conversation {k} went to a client of another conversation"
            ));
        }
        match frame {
            ServerFrame::Sent { id, seq, .. } => match durable.messages.get(seq) {
                Some(m)
                    if &m.id == id && dev.is_some_and(|d| self.devs[d].cfg.device == m.device) =>
                {
                    Ok(())
                }
                Some(m) => Err(format!(
                    "sent {id} -> {seq} but seq {seq} is {} from {}",
                    m.id, m.device
                )),
                None => Err(format!("sent {id} -> {seq} before seq {seq} was durable")),
            },
            ServerFrame::Push { messages } | ServerFrame::Batch { messages, .. } => messages
                .iter()
                .try_for_each(|m| check::same_as_server(server.truth(), m)),
            ServerFrame::Welcome { conversation, .. }
                if *conversation != server.cfg.conversation =>
            {
                Err(format!(
                    "welcome names conversation {conversation:?} on a connection to {:?}",
                    server.cfg.conversation
                ))
            }
            ServerFrame::Welcome { head, .. } if *head > durable.head() => Err(format!(
                "welcome announces head {head} beyond the durable head {}",
                durable.head()
            )),
            ServerFrame::Welcome { cursors, .. } | ServerFrame::Delivered { cursors, .. } => {
                for c in cursors {
                    let stored = durable
                        .cursors
                        .get(&(c.user.clone(), c.device.clone()))
                        .map_or(0, |d| d.0.through);
                    if c.through > stored {
                        return Err(format!(
                            "announces {} stored through {} but only {stored} is durable",
                            c.device, c.through
                        ));
                    }
                }
                Ok(())
            }
            ServerFrame::Error { code, message, .. } => {
                // An honest client never provokes protocol errors; busy
                // signals are fine.
                use protocol::ErrorCode as E;
                match code {
                    E::RateLimited | E::WindowFull | E::Internal | E::OutOfOrder => Ok(()),
                    other => Err(format!("honest client got error {other:?}: {message}")),
                }
            }
            _ => Ok(()),
        }
    }

    /// The device's wall clock.
    fn dev_now(&self, dev: usize) -> Millis {
        self.now.saturating_add_signed(self.devs[dev].clock_offset)
    }

    fn client_input(&mut self, dev: usize, input: ClientInput) {
        let now = self.dev_now(dev);
        if self.trace.is_some() {
            let line = match &input {
                ClientInput::Frame(bytes) => {
                    format!("dev{dev} <- {}", String::from_utf8_lossy(bytes))
                }
                other => format!("dev{dev} <- {other:?}"),
            };
            if let Some(t) = &mut self.trace {
                t.push(format!("{:>8} {line}", self.now - EPOCH));
            }
        }
        let Some(c) = &mut self.devs[dev].client else {
            return;
        };
        c.handle(now, input);
        self.drain_client(dev);
    }

    fn drain_client(&mut self, dev: usize) {
        // The frames of this step go out together at the end.
        let mut outgoing: Vec<String> = Vec::new();
        while let Some(out) = self.devs[dev].client.as_mut().and_then(Client::poll_output) {
            match out {
                ClientOutput::Transmit(frame) => {
                    if let ClientFrame::Ack { seq, ranges } = &frame {
                        if let Err(e) = check::check_ack(&self.devs[dev].disk.durable, *seq, ranges)
                        {
                            let who = self.who(dev);
                            self.fail(format!("{who}: {e}"));
                        }
                    }
                    let rx = self.devs[dev].client.as_ref().and_then(|c| c.read_ticket());
                    let text = frame.encode_rx(rx);
                    self.log(|| format!("dev{dev} -> server {text}"));
                    outgoing.push(text);
                }
                ClientOutput::Persist { write, op } => {
                    self.log(|| format!("dev{dev} persist #{} {}", write.0, short(&op)));
                    self.devs[dev].disk.write(write, op);
                    if self.crash_after_write() {
                        let down = self.rng.range(0, 5_000);
                        self.at(0, Ev::ClientCrash { dev, down });
                    }
                    self.schedule_client_flush(dev);
                }
                ClientOutput::Message(m) => {
                    self.log(|| format!("dev{dev} SURFACE {} {}", m.seq, m.id));
                    if !self.devs[dev].disk.durable.messages.contains_key(&m.seq) {
                        let who = self.who(dev);
                        self.fail(format!(
                            "{who}: seq {} surfaced before durable on the device",
                            m.seq
                        ));
                    }
                    if let Some(other) = self
                        .conversation_of(&m.id)
                        .filter(|c| *c != self.devs[dev].conv)
                    {
                        let who = self.who(dev);
                        self.fail(format!(
                            "{who}: {} (seq {}) of conversation {other} surfaced in this one",
                            m.id, m.seq
                        ));
                    }
                    let truth = self.servers[self.devs[dev].conv].truth();
                    let r = self.devs[dev].view.surface(truth, &m);
                    if let Err(e) = r {
                        let who = self.who(dev);
                        self.fail(format!("{who}: {e}"));
                    }
                }
                ClientOutput::HistoryFailed(e) => {
                    self.log(|| format!("dev{dev} HISTORY FAILED {e}"));
                    let view = &mut self.devs[dev].view;
                    view.history_requests = view.history_requests.saturating_sub(1);
                }
                ClientOutput::Connect { .. } => {
                    self.counts.connects += 1;
                    let (d, inc) = (self.rng.range(1, 50), self.devs[dev].inc);
                    self.at(d, Ev::Dial { dev, inc });
                }
                ClientOutput::Link(status) => self.log(|| format!("dev{dev} LINK {status:?}")),
                ClientOutput::History { page, .. } => {
                    let view = &mut self.devs[dev].view;
                    view.history_requests = view.history_requests.saturating_sub(1);
                    self.log(|| {
                        format!(
                            "dev{dev} HISTORY {:?}",
                            page.iter().map(|m| m.seq).collect::<Vec<_>>()
                        )
                    });
                    let truth = self.servers[self.devs[dev].conv].truth();
                    let r = self.devs[dev].view.history(truth, &page);
                    if let Err(e) = r {
                        let who = self.who(dev);
                        self.fail(format!("{who}: {e}"));
                    }
                }
                ClientOutput::Status { id, status } => {
                    self.log(|| format!("dev{dev} STATUS {id} {status:?}"));
                    let view = &mut self.devs[dev].view;
                    if status == MessageStatus::Pending && !view.queued.contains(&id) {
                        view.queued.push(id.clone());
                    }
                    if let MessageStatus::Failed { code } = status {
                        self.fail(format!("message {id} failed: {code:?}"));
                    }
                    if let MessageStatus::Sent { seq, .. } | MessageStatus::Delivered { seq } =
                        status
                    {
                        let device = &self.devs[dev].cfg.device;
                        let server = &self.servers[self.devs[dev].conv];
                        let ok = server
                            .disk
                            .durable
                            .messages
                            .get(&seq)
                            .is_some_and(|m| m.id == id && &m.device == device)
                            || server.lost.get(&seq).is_some_and(|l| {
                                l.iter().any(|m| m.id == id && &m.device == device)
                            });
                        if !ok {
                            let who = self.who(dev);
                            self.fail(format!("{who}: status of {id} names seq {seq}, which the server did not durably store for it"));
                        }
                    }
                    if let MessageStatus::Delivered { seq } = status {
                        if let Err(e) = self.check_delivered(dev, &id, seq) {
                            let who = self.who(dev);
                            self.fail(format!("{who}: {e}"));
                        }
                    }
                    if let MessageStatus::Sent { .. } = status {
                        if let Err(e) = self.check_send_order(dev) {
                            let who = self.who(dev);
                            self.fail(format!("{who}: {e}"));
                        }
                    }
                    self.devs[dev].view.status.insert(id, status);
                }
                ClientOutput::Error(e) => {
                    self.log(|| format!("dev{dev} ERROR {e}"));
                    match e {
                        ClientError::Server { .. } => {}
                        // Closes by the server (replaced, unresponsive) and
                        // connections that went silent: the client reconnects.
                        ClientError::ConnectionClosed { .. }
                        | ClientError::ConnectionDead { .. } => {}
                        ClientError::ChainMismatch { .. }
                            if self.counts.tampered > 0 || self.counts.rollbacks > 0 =>
                        {
                            self.counts.chain_mismatches += 1;
                        }
                        ClientError::HistoryMismatch { .. } if self.counts.rollbacks > 0 => {}
                        ClientError::Diverged { .. } if self.counts.rollbacks > 0 => {
                            // The app's repair: drop the inbox (and what it
                            // shows) and start again from the server's history.
                            self.counts.resets += 1;
                            let now = self.dev_now(dev);
                            let d = &mut self.devs[dev];
                            d.view.seen.clear();
                            d.view.last_live = None;
                            if let Some(c) = &mut d.client {
                                c.reset_inbox(now);
                            }
                        }
                        other => {
                            let who = self.who(dev);
                            self.fail(format!("{who}: client reported {other}"));
                        }
                    }
                }
                ClientOutput::Disconnect => {
                    self.client_transmit(dev, std::mem::take(&mut outgoing));
                    self.log(|| format!("dev{dev} gives up its connection"));
                    if let Some(conn) = self.devs[dev].conn.take() {
                        self.close_conn(conn, true, false);
                    }
                }
            }
        }
        self.client_transmit(dev, outgoing);
    }

    /// The conversation whose server stores (or stored) message `id`.
    fn conversation_of(&self, id: &str) -> Option<usize> {
        self.servers.iter().position(|s| {
            s.disk.durable.messages.values().any(|m| m.id == id)
                || s.lost.values().flatten().any(|m| m.id == id)
        })
    }

    fn converged(&self) -> bool {
        self.servers
            .iter()
            .all(|s| s.conv.is_some() && s.disk.pending.is_empty())
            && self.devs.iter().all(|d| {
                let head = self.servers[d.conv].disk.durable.head();
                d.disk.pending.is_empty()
                    && d.client.as_ref().is_some_and(|c| {
                        c.is_ready()
                            && c.outbox_len() == 0
                            && c.watermark() == Some(head)
                            && c.history_complete()
                    })
                    && d.view.seen.len() as u64 == head
                    && d.view.queued.iter().all(|id| {
                        matches!(d.view.status.get(id), Some(MessageStatus::Delivered { .. }))
                    })
            })
    }

    fn final_checks(&mut self) {
        let mut problems = Vec::new();
        for (k, server) in self.servers.iter().enumerate() {
            let durable = &server.disk.durable;
            let head = durable.head();
            if durable.messages.len() as u64 != head {
                problems.push(format!(
                    "server {k}: seqs are not contiguous: {} messages, head {head}",
                    durable.messages.len()
                ));
            }
            let mut by_key: HashMap<(&str, &str), u64> = HashMap::new();
            for m in durable.messages.values() {
                if let Some(prev) = by_key.insert((m.device.as_str(), m.id.as_str()), m.seq) {
                    problems.push(format!(
                        "{} {} stored twice: seqs {prev} and {}",
                        m.device, m.id, m.seq
                    ));
                }
            }
            for (dev, d) in self.devs.iter().enumerate().filter(|(_, d)| d.conv == k) {
                for id in &d.view.queued {
                    let excused = server
                        .lost_delivered
                        .contains(&(d.cfg.device.clone(), id.clone()));
                    if !excused && !by_key.contains_key(&(d.cfg.device.as_str(), id.as_str())) {
                        problems.push(format!(
                            "{} queued {id} but it was never stored",
                            self.who(dev)
                        ));
                    }
                }
            }
            let mut last_at = 0;
            for m in durable.messages.values() {
                if m.at < last_at {
                    problems.push(format!(
                        "server {k}: seq {} has time {} before its predecessor's {last_at}",
                        m.seq, m.at
                    ));
                }
                last_at = m.at;
            }
        }
        for (dev, d) in self.devs.iter().enumerate() {
            if d.view.history_requests > 0 {
                problems.push(format!(
                    "{}: a load_older request never ended (no page, no failure)",
                    self.who(dev)
                ));
            }
        }
        for dev in 0..self.devs.len() {
            if let Err(e) = self.check_send_order(dev) {
                problems.push(format!("{}: {e}", self.who(dev)));
            }
        }
        if let Some(p) = problems.into_iter().next() {
            self.fail(p);
        }
    }

    /// True when device `dev` is connected, welcomed and behind the server's
    /// head with nothing on the way to it: only a resend (or a new message)
    /// can help it.
    fn starved(&self, dev: usize) -> bool {
        let d = &self.devs[dev];
        let head = self.servers[d.conv].disk.durable.head();
        let behind = d
            .client
            .as_ref()
            .is_some_and(|c| c.is_ready() && c.watermark().is_some_and(|w| w < head));
        let live = d
            .conn
            .is_some_and(|conn| self.conns.get(&conn).is_some_and(|c| c.open));
        let on_the_way = self
            .heap
            .iter()
            .any(|Reverse(s)| matches!(s.ev, Ev::ToClient { dev: to, .. } if to == dev));
        behind && live && !on_the_way
    }

    fn stuck(&mut self) -> Violation {
        // A device that is connected, welcomed and behind, with nothing on
        // the way to it: only a resend (or a new message) could help it.
        for (dev, d) in self.devs.iter().enumerate() {
            if self.starved(dev) {
                let head = self.servers[d.conv].disk.durable.head();
                let what = format!(
                    "liveness: the server stopped pushing to a live connection: {} is connected and welcomed but stored only through {:?} of head {head}, and nothing is on the way to it",
                    self.who(dev),
                    d.client.as_ref().and_then(|c| c.watermark())
                );
                return self.violation(what);
            }
        }
        let heads: Vec<u64> = self.servers.iter().map(|s| s.disk.durable.head()).collect();
        let heads = heads
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let mut what = format!("liveness: not converged by the deadline (server head {heads}");
        for (dev, d) in self.devs.iter().enumerate() {
            let c = d.client.as_ref();
            let undelivered: Vec<&String> = d
                .view
                .queued
                .iter()
                .filter(|id| {
                    !matches!(
                        d.view.status.get(*id),
                        Some(MessageStatus::Delivered { .. })
                    )
                })
                .collect();
            let _ = write!(
                what,
                "; {}: watermark {:?} shown {} outbox {} ready {} history {} undelivered {:?}",
                self.who(dev),
                c.and_then(|c| c.watermark()),
                d.view.seen.len(),
                c.map_or(0, |c| c.outbox_len()),
                c.is_some_and(|c| c.is_ready()),
                c.is_some_and(|c| c.history_complete()),
                undelivered
            );
        }
        what.push(')');
        self.violation(what)
    }

    fn violation(&mut self, what: String) -> Violation {
        Violation {
            seed: self.opts.seed,
            at: self.now - EPOCH,
            what,
            trace: self.trace.take().unwrap_or_default(),
        }
    }

    fn report(&self) -> Report {
        Report {
            seed: self.opts.seed,
            head: self.servers.iter().map(|s| s.disk.durable.head()).sum(),
            sim_ms: self.now - EPOCH,
            steps: self.steps,
            faults: self.counts.clone(),
        }
    }
}

fn pick<'a>(rng: &mut Rng, xs: &'a [u64]) -> &'a u64 {
    &xs[rng.below(xs.len() as u64) as usize]
}

fn pick2<'a>(rng: &mut Rng, xs: &'a [(u64, u64)]) -> &'a (u64, u64) {
    &xs[rng.below(xs.len() as u64) as usize]
}

fn short(op: &protocol::client::ClientWrite) -> String {
    use protocol::client::ClientWrite as W;
    match op {
        W::Inbox { messages, state } => format!(
            "inbox {:?} watermark {:?}",
            messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            state.as_ref().map(|s| s.watermark)
        ),
        W::PutOutbox(e) => format!("outbox put {} seq {:?}", e.id, e.seq),
        W::RemoveOutbox { id } => format!("outbox remove {id}"),
        W::ClearInbox => "inbox clear".into(),
    }
}
