//! A client <-> server pair harness, after quinn-proto's `Pair`: real
//! `protocol::Client`s and one real `protocol::server::Conversation` on the
//! shared in-memory store, a fake clock, a fixed one-way network latency and
//! a fixed disk latency. [`Pair::drive`] steps from wakeup to wakeup (the
//! next frame or durability report in flight, or the earliest
//! `poll_timeout`), so a test reads as a script and runs the same way every
//! time: no threads, no wall clock, seeds fixed.
//!
//! The shells are minimal and honest: a frame leaves when the machine says
//! `Transmit`/`Frame` and arrives `latency` later on the same connection (or
//! is lost with it); a client write becomes durable `disk_latency` later; the
//! server commits each round of writes to its store at once (reads must see
//! them) and reports it durable `disk_latency` later. A server restart
//! rebuilds the core from the store and closes every socket.

use std::collections::{BTreeMap, VecDeque};

use protocol::client::{
    Client, ClientConfig, ClientError, ClientInput, ClientOutput, ClientSnapshot, ClientWrite,
    InboxState, MessageStatus, OutboxEntry,
};
use protocol::server::{
    ConnId, Conversation, ServerConfig, ServerInput, ServerOutput, ServerWrite,
};
use protocol::store::DurableStore;
use protocol::{MemoryStore, Millis, Seq, ServerFrame, StoredMessage, WriteId};

/// The clock's start (an epoch time, so `at` values look real).
pub const T0: Millis = 1_700_000_000_000;

/// Most wakeups one `drive` processes before it calls the run a livelock.
const MAX_STEPS: usize = 100_000;

/// How far one `drive` may move the clock: long enough for every backoff the
/// machines use, short enough to stop a periodic timer from running forever.
const DRIVE_SPAN: Millis = 10 * 60 * 1000;
/// Wakeups further out than this do not count against quiescence.
const QUIET_HORIZON: Millis = 60 * 60 * 1000;

/// Something in flight, due at a time.
#[derive(Debug)]
enum Event {
    /// A client frame reaches the server on `conn`.
    ToServer { conn: ConnId, bytes: Vec<u8> },
    /// A server frame reaches `device` on `conn`.
    ToClient {
        device: usize,
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// The server learns that the client closed `conn`.
    ServerSeesClose { conn: ConnId },
    /// `device` learns that the server closed `conn` with `code`.
    ClientSeesClose {
        device: usize,
        conn: ConnId,
        code: u16,
    },
    /// The socket `device` asked for opens (or fails, when it is offline).
    Open { device: usize },
    /// The server's writes through `through` are durable (of one incarnation).
    ServerDurable { incarnation: u64, through: WriteId },
    /// `device`'s writes through `through` are durable (of one incarnation).
    ClientDurable {
        device: usize,
        incarnation: u64,
        through: WriteId,
    },
}

/// A device's IndexedDB, reduced to what a restart reads back.
#[derive(Debug, Clone, Default)]
pub struct ClientDisk {
    /// The inbox record.
    pub inbox: Option<InboxState>,
    /// Stored messages by seq.
    pub messages: BTreeMap<Seq, StoredMessage>,
    /// Outbox entries in insertion order.
    pub outbox: Vec<OutboxEntry>,
}

impl ClientDisk {
    fn apply(&mut self, op: &ClientWrite) {
        match op {
            ClientWrite::Inbox { messages, state } => {
                for m in messages {
                    self.messages.insert(m.seq, m.clone());
                }
                if let Some(s) = state {
                    self.inbox = Some(s.clone());
                }
            }
            ClientWrite::PutOutbox(e) => match self.outbox.iter_mut().find(|x| x.id == e.id) {
                Some(x) => *x = e.clone(),
                None => self.outbox.push(e.clone()),
            },
            ClientWrite::RemoveOutbox { id } => self.outbox.retain(|x| &x.id != id),
            ClientWrite::ClearInbox => {
                self.inbox = None;
                self.messages.clear();
            }
        }
    }

    /// What a restarted shell hands `Client::new`.
    pub fn snapshot(&self) -> ClientSnapshot {
        let above = match &self.inbox {
            Some(s) => self
                .messages
                .range(s.watermark.saturating_add(1)..)
                .map(|(_, m)| m.clone())
                .collect(),
            None => Vec::new(),
        };
        ClientSnapshot {
            inbox: self.inbox.clone(),
            above,
            outbox: self.outbox.clone(),
        }
    }
}

/// One device: its client machine, its disk and what its app saw.
pub struct Device {
    /// The machine.
    pub client: Client,
    config: ClientConfig,
    seed: u64,
    /// Durable writes.
    pub disk: ClientDisk,
    /// Writes not yet durable (lost by a reload).
    pending: VecDeque<(WriteId, ClientWrite)>,
    /// Reloads so far: durability reports of an earlier client are dropped.
    incarnation: u64,
    /// The open connection, if any.
    pub conn: Option<ConnId>,
    /// Messages surfaced to the app, in order.
    pub shown: Vec<StoredMessage>,
    /// When the last message of `shown` was surfaced.
    pub last_shown_at: Option<Millis>,
    /// Own messages' status changes, with the time they were reported.
    pub statuses: Vec<(Millis, String, MessageStatus)>,
    /// Errors the client reported.
    pub errors: Vec<ClientError>,
    /// Times the client asked to drop a connection that looked dead.
    pub gave_up: usize,
    /// Its network is up ([`Pair::connect`]) or down ([`Pair::disconnect`]).
    pub online: bool,
    /// Sockets the client asked for.
    pub connects: usize,
}

impl Device {
    /// The seqs surfaced so far.
    pub fn shown_seqs(&self) -> Vec<Seq> {
        self.shown.iter().map(|m| m.seq).collect()
    }

    /// The status changes of message `id`, in order, without times.
    pub fn status_of(&self, id: &str) -> Vec<MessageStatus> {
        self.statuses
            .iter()
            .filter(|(_, i, _)| i == id)
            .map(|(_, _, s)| s.clone())
            .collect()
    }

    /// When message `id` first reached a status matching `pred`.
    pub fn when(&self, id: &str, pred: impl Fn(&MessageStatus) -> bool) -> Option<Millis> {
        self.statuses
            .iter()
            .find(|(_, i, s)| i == id && pred(s))
            .map(|(t, _, _)| *t)
    }
}

/// The conversation server: its core, its store and what it sent.
pub struct Server {
    /// The core; rebuilt from `store` by [`Pair::restart_server`].
    pub conv: Conversation,
    config: ServerConfig,
    /// Everything the core committed.
    pub store: MemoryStore,
    /// Restarts so far: durability reports of an earlier core are dropped.
    incarnation: u64,
    /// Open connections and their devices.
    conns: BTreeMap<ConnId, usize>,
    /// Every frame sent, in order.
    pub frames: Vec<(ConnId, ServerFrame)>,
    /// Every close, with its code.
    pub closes: Vec<(ConnId, u16)>,
}

/// Real machines on a fake network and clock.
pub struct Pair {
    /// The fake clock.
    pub now: Millis,
    /// One-way delay of every frame (and of a close reaching the other side).
    pub latency: Millis,
    /// How long a write takes to become durable, on either side.
    pub disk_latency: Millis,
    /// The conversation server.
    pub server: Server,
    /// The devices, by index.
    pub devices: Vec<Device>,
    /// In flight, by (due time, order of scheduling).
    queue: BTreeMap<(Millis, u64), Event>,
    scheduled: u64,
    next_conn: u64,
}

impl Pair {
    /// A server for conversation "room", 10 ms latency, 2 ms disks.
    pub fn new() -> Pair {
        Pair::with_config(ServerConfig::new("room"))
    }

    /// A server with `config`, on an empty store.
    pub fn with_config(config: ServerConfig) -> Pair {
        let store = MemoryStore::new();
        let conv =
            Conversation::new(config.clone(), 1, T0, &store).expect("a core on an empty store");
        Pair {
            now: T0,
            latency: 10,
            disk_latency: 2,
            server: Server {
                conv,
                config,
                store,
                incarnation: 0,
                conns: BTreeMap::new(),
                frames: Vec::new(),
                closes: Vec::new(),
            },
            devices: Vec::new(),
            queue: BTreeMap::new(),
            scheduled: 0,
            next_conn: 1,
        }
    }

    /// Adds a device (not connected); returns its index.
    pub fn add_device(&mut self, user: &str, device: &str) -> usize {
        let index = self.devices.len();
        let mut config = ClientConfig::new(user, device);
        // Heartbeats would keep every connected pair awake: push them past
        // the quiet horizon (they are tested in machines.rs and the simulator).
        config.ping_after = QUIET_HORIZON * 2;
        config.dead_after = QUIET_HORIZON * 3;
        let seed = 1_000 + index as u64;
        self.devices.push(Device {
            client: Client::new(config.clone(), seed, ClientSnapshot::default()),
            config,
            seed,
            disk: ClientDisk::default(),
            pending: VecDeque::new(),
            incarnation: 0,
            conn: None,
            shown: Vec::new(),
            last_shown_at: None,
            statuses: Vec::new(),
            errors: Vec::new(),
            gave_up: 0,
            online: false,
            connects: 0,
        });
        index
    }

    /// Device `i`.
    pub fn device(&self, i: usize) -> &Device {
        &self.devices[i]
    }

    /// Device `i`'s network comes up: the client connects at once (and by
    /// itself whenever it wants to later). Authentication is outside the core.
    pub fn connect(&mut self, i: usize) {
        self.devices[i].online = true;
        self.client_input(i, ClientInput::Network { online: true });
    }

    /// Opens the socket device `i` asked for.
    fn open_socket(&mut self, i: usize) {
        if !self.devices[i].online || self.devices[i].conn.is_some() {
            let reason = if self.devices[i].online {
                "a socket is open already"
            } else {
                "offline"
            };
            self.client_input(
                i,
                ClientInput::Disconnected {
                    code: 1006,
                    reason: reason.into(),
                },
            );
            return;
        }
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.server.conns.insert(conn, i);
        self.devices[i].conn = Some(conn);
        let (user, device) = (
            self.devices[i].config.user.clone(),
            self.devices[i].config.device.clone(),
        );
        self.server_input(ServerInput::Connected {
            conn,
            user,
            device,
            resumed: None,
            expires: None,
        });
        self.client_input(i, ClientInput::Connected);
    }

    /// Device `i`'s network goes down: its socket closes, and the server
    /// notices `latency` later.
    pub fn disconnect(&mut self, i: usize) {
        self.devices[i].online = false;
        self.client_input(i, ClientInput::Network { online: false });
        let Some(conn) = self.devices[i].conn.take() else {
            return;
        };
        self.client_input(
            i,
            ClientInput::Disconnected {
                code: 1006,
                reason: "network down".into(),
            },
        );
        self.schedule(self.latency, Event::ServerSeesClose { conn });
    }

    /// The app on device `i` sends `body`; returns the client message id.
    pub fn send(&mut self, i: usize, body: &str) -> String {
        let now = self.now;
        let id = self.devices[i]
            .client
            .send(now, body)
            .expect("a body within the limit");
        self.client_outputs(i);
        id
    }

    /// The server process dies and starts again: every socket is gone, and
    /// the core is rebuilt from what the store holds.
    pub fn restart_server(&mut self) {
        self.server.incarnation += 1;
        for (_, i) in std::mem::take(&mut self.server.conns) {
            if self.devices[i].conn.take().is_some() {
                self.client_input(
                    i,
                    ClientInput::Disconnected {
                        code: 1006,
                        reason: "server restarted".into(),
                    },
                );
            }
        }
        let seed = 1 + self.server.incarnation;
        self.server.conv = Conversation::new(
            self.server.config.clone(),
            seed,
            self.now,
            &self.server.store,
        )
        .expect("a core rebuilt from the store");
    }

    /// Device `i`'s tab reloads: its writes not yet durable are lost, and a
    /// new client starts from its disk, disconnected.
    pub fn reload_device(&mut self, i: usize) {
        if let Some(conn) = self.devices[i].conn.take() {
            self.schedule(self.latency, Event::ServerSeesClose { conn });
        }
        let d = &mut self.devices[i];
        d.pending.clear();
        d.incarnation += 1;
        d.client = Client::new(
            d.config.clone(),
            d.seed + 100 * d.incarnation,
            d.disk.snapshot(),
        );
        self.client_outputs(i);
    }

    /// True when nothing is in flight and no machine has a timer set.
    pub fn is_quiescent(&self) -> bool {
        self.next_wakeup()
            .is_none_or(|t| t > self.now.saturating_add(QUIET_HORIZON))
    }

    /// Steps from wakeup to wakeup until nothing is in flight and no timer
    /// is set, or until the clock has moved [`DRIVE_SPAN`]. Returns whether
    /// everything went quiet.
    pub fn drive(&mut self) -> bool {
        let until = self.now.saturating_add(DRIVE_SPAN);
        self.run_until(until);
        self.is_quiescent()
    }

    /// Processes everything due within the next `ms`, then sets the clock to
    /// exactly `ms` later.
    pub fn advance(&mut self, ms: Millis) {
        let until = self.now.saturating_add(ms);
        self.run_until(until);
        self.now = until;
    }

    fn run_until(&mut self, until: Millis) {
        for _ in 0..MAX_STEPS {
            match self.next_wakeup() {
                Some(t) if t <= until => self.step(t),
                _ => return,
            }
        }
        panic!(
            "no quiescence after {MAX_STEPS} wakeups (now {}): a livelock",
            self.now - T0
        );
    }

    /// The earliest time anything happens: an event in flight or a timer.
    fn next_wakeup(&self) -> Option<Millis> {
        let event = self.queue.keys().next().map(|(t, _)| *t);
        let server = self.server.conv.poll_timeout();
        let clients = self.devices.iter().filter_map(|d| d.client.poll_timeout());
        event.into_iter().chain(server).chain(clients).min()
    }

    /// Moves the clock to `t` (never back) and handles everything due then.
    fn step(&mut self, t: Millis) {
        self.now = self.now.max(t);
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let event = entry.remove();
            self.deliver(event);
        }
        if self
            .server
            .conv
            .poll_timeout()
            .is_some_and(|d| d <= self.now)
        {
            self.server_input(ServerInput::Timeout);
        }
        for i in 0..self.devices.len() {
            if self.devices[i]
                .client
                .poll_timeout()
                .is_some_and(|d| d <= self.now)
            {
                self.client_input(i, ClientInput::Timeout);
            }
        }
    }

    fn schedule(&mut self, delay: Millis, event: Event) {
        self.scheduled += 1;
        self.queue
            .insert((self.now.saturating_add(delay), self.scheduled), event);
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::ToServer { conn, bytes } => {
                if self.server.conns.contains_key(&conn) {
                    self.server_input(ServerInput::Frame { conn, bytes });
                }
            }
            Event::ToClient {
                device,
                conn,
                bytes,
            } => {
                if self.devices[device].conn == Some(conn) {
                    self.client_input(device, ClientInput::Frame(bytes));
                }
            }
            Event::ServerSeesClose { conn } => {
                if self.server.conns.remove(&conn).is_some() {
                    self.server_input(ServerInput::Disconnected { conn });
                }
            }
            Event::ClientSeesClose { device, conn, code } => {
                if self.devices[device].conn == Some(conn) {
                    self.devices[device].conn = None;
                    self.client_input(
                        device,
                        ClientInput::Disconnected {
                            code,
                            reason: String::new(),
                        },
                    );
                }
            }
            Event::Open { device } => self.open_socket(device),
            Event::ServerDurable {
                incarnation,
                through,
            } => {
                if incarnation == self.server.incarnation {
                    self.server_input(ServerInput::Durable { through });
                }
            }
            Event::ClientDurable {
                device,
                incarnation,
                through,
            } => {
                let d = &mut self.devices[device];
                if incarnation != d.incarnation {
                    return;
                }
                while d.pending.front().is_some_and(|(w, _)| *w <= through) {
                    if let Some((_, op)) = d.pending.pop_front() {
                        d.disk.apply(&op);
                    }
                }
                self.client_input(device, ClientInput::Durable { through });
            }
        }
    }

    fn server_input(&mut self, input: ServerInput) {
        let now = self.now;
        self.server.conv.handle(now, input, &self.server.store);
        let mut batch: Vec<ServerWrite> = Vec::new();
        let mut last = None;
        while let Some(out) = self.server.conv.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => {
                    if let Some(&device) = self.server.conns.get(&conn) {
                        let bytes = frame.encode().into_bytes();
                        self.schedule(
                            self.latency,
                            Event::ToClient {
                                device,
                                conn,
                                bytes,
                            },
                        );
                    }
                    self.server.frames.push((conn, frame));
                }
                ServerOutput::Persist { write, op } => {
                    batch.push(op);
                    last = Some(write);
                }
                ServerOutput::Close { conn, code, .. } => {
                    self.server.closes.push((conn, code));
                    if let Some(device) = self.server.conns.remove(&conn) {
                        self.schedule(self.latency, Event::ClientSeesClose { device, conn, code });
                    }
                }
                ServerOutput::Remember { .. } => {}
            }
        }
        if let Some(through) = last {
            // The core only writes what a correct store accepts.
            if let Err(e) = self.server.store.commit(&batch) {
                panic!("the store refused the core's batch {batch:?}: {e}");
            }
            let incarnation = self.server.incarnation;
            self.schedule(
                self.disk_latency,
                Event::ServerDurable {
                    incarnation,
                    through,
                },
            );
        }
    }

    fn client_input(&mut self, i: usize, input: ClientInput) {
        let now = self.now;
        self.devices[i].client.handle(now, input);
        self.client_outputs(i);
    }

    fn client_outputs(&mut self, i: usize) {
        let now = self.now;
        while let Some(out) = self.devices[i].client.poll_output() {
            let d = &mut self.devices[i];
            match out {
                ClientOutput::Transmit(frame) => {
                    if let Some(conn) = d.conn {
                        let bytes = frame.encode_rx(d.client.read_ticket()).into_bytes();
                        self.schedule(self.latency, Event::ToServer { conn, bytes });
                    }
                }
                ClientOutput::Persist { write, op } => {
                    d.pending.push_back((write, op));
                    let incarnation = d.incarnation;
                    self.schedule(
                        self.disk_latency,
                        Event::ClientDurable {
                            device: i,
                            incarnation,
                            through: write,
                        },
                    );
                }
                ClientOutput::Message(m) => {
                    d.shown.push(m);
                    d.last_shown_at = Some(now);
                }
                ClientOutput::History { .. }
                | ClientOutput::HistoryFailed(_)
                | ClientOutput::Link(_) => {}
                ClientOutput::Connect { .. } => {
                    d.connects += 1;
                    self.schedule(self.latency, Event::Open { device: i });
                }
                ClientOutput::Status { id, status } => d.statuses.push((now, id, status)),
                ClientOutput::Error(e) => d.errors.push(e),
                ClientOutput::Disconnect => {
                    // The client has moved on already: close without telling it.
                    d.gave_up += 1;
                    if let Some(conn) = d.conn.take() {
                        self.schedule(self.latency, Event::ServerSeesClose { conn });
                    }
                }
            }
        }
    }
}
