//! The client session: one device's view of one conversation.
//!
//! One [`Client`] per (device, conversation). A shell that shows many
//! conversations runs one `Client` per conversation, each with its own socket
//! and its own slice of storage; nothing is shared between them, which keeps
//! the machine small and every conversation's failure independent.
//!
//! # Driving it
//!
//! ```text
//! let mut c = Client::new(config, seed, snapshot_loaded_from_storage);
//! loop {
//!     // one of: socket opened/closed, a text frame, a storage write completed,
//!     // the timer fired, or an app call (c.send(..), c.load_older(..))
//!     c.handle(now, input);
//!     while let Some(out) = c.poll_output() {
//!         match out {
//!             ClientOutput::Transmit(frame) => socket.send(frame.encode()),
//!             ClientOutput::Persist { write, op } => storage.apply(write, op), // then later:
//!                 // c.handle(now, ClientInput::Durable { through: write })
//!             ClientOutput::Message(m) => app.show(m),
//!             ClientOutput::History(page) => app.prepend(page),
//!             ClientOutput::Status { id, status } => app.tick(id, status),
//!             ClientOutput::Error(e) => app.warn(e),
//!             ClientOutput::Disconnect => { socket.close(); reconnect_later() }
//!         }
//!     }
//!     timer.set(c.poll_timeout());
//! }
//! ```
//!
//! Storage writes must become durable in the order they were issued (one
//! IndexedDB transaction per `Persist`, in order, satisfies this); `Durable
//! { through }` reports every write up to and including `through`.
//!
//! # Persist before acknowledge
//!
//! A received message is written first. Only when the shell reports the write
//! durable does the client surface it to the app ([`ClientOutput::Message`])
//! and include it in an `ack`. A new outgoing message is written to the
//! outbox first and transmitted only once that write is durable, so a message
//! the server confirmed can never be missing from the sender's outbox.
//!
//! # Integrity
//!
//! Every message that becomes contiguous is checked against the chain value at
//! the watermark. A mismatch drops the unverified messages from that seq on,
//! reports [`ClientError::ChainMismatch`] and refetches from the watermark; a
//! third consecutive mismatch (the server's history really differs from what
//! this device stored) reports [`ClientError::Diverged`] and freezes the inbox
//! until the app calls [`Client::reset_inbox`]. A server whose head is below
//! the device's watermark (rolled back) is reported the same way.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::bugs::Bugs;
use crate::chain::ChainHash;
use crate::frame::{
    ClientFrame, Cursor, DecodeError, ErrorCode, Millis, RateLimit, Seq, ServerFrame, StoredMessage, Ticket, MAX_SEQ,
};
use crate::limits;
use crate::outbox::Outbox;
use crate::pacer::Pacer;
use crate::ranges::RangeSet;
use crate::rng::Rng;
use crate::WriteId;

/// Tunables of a client session. [`ClientConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// This device's user (must match what the server authenticated).
    pub user: String,
    /// This device's id.
    pub device: String,
    /// Most unconfirmed `send` frames in flight at once.
    pub window: usize,
    /// First retransmission timeout for a `send`, and for an unconfirmed `ack`.
    pub rto_initial: Millis,
    /// Largest retransmission timeout (the backoff doubles up to this).
    pub rto_max: Millis,
    /// How long to coalesce acks before sending one.
    pub ack_delay: Millis,
    /// Send an ack at once when this many stored messages are unacknowledged.
    pub ack_every: u64,
    /// `limit` of `sync` requests (gap-fill and history pages).
    pub page: u32,
    /// `limit` when re-requesting the latest page as a fresh device.
    pub fresh_page: u32,
    /// How long to wait for a `batch` before asking again.
    pub sync_timeout: Millis,
    /// How long a hole in the pushes may stay open before asking for it
    /// (pushes may simply arrive out of order).
    pub gap_grace: Millis,
    /// Give up on a connection that has not answered `hello` for this long.
    pub hello_timeout: Millis,
    /// Give up on a connection that sent nothing for this long while the
    /// client waits for an answer.
    pub dead_after: Millis,
    /// Most out-of-order messages held above the watermark.
    pub max_buffer: usize,
    /// With own messages sent but not yet delivered and no cursor news for
    /// this long, say `hello` again on the same connection: its `welcome`
    /// carries every cursor, repairing a lost `delivered` notice. Doubles
    /// while nothing changes, up to [`ClientConfig::rto_max`] * 10.
    pub status_refresh: Millis,
    /// Test-only deliberate mistakes (inert without the `sim-bugs` feature).
    #[doc(hidden)]
    pub bugs: Bugs,
}

impl ClientConfig {
    /// Defaults for `user` on `device`.
    pub fn new(user: impl Into<String>, device: impl Into<String>) -> ClientConfig {
        ClientConfig {
            user: user.into(),
            device: device.into(),
            window: 64,
            rto_initial: 1_000,
            rto_max: 30_000,
            ack_delay: 50,
            ack_every: 32,
            page: 500,
            fresh_page: 50,
            sync_timeout: 5_000,
            gap_grace: 250,
            hello_timeout: 10_000,
            dead_after: 45_000,
            max_buffer: 4_096,
            status_refresh: 20_000,
            bugs: Bugs::default(),
        }
    }
}

/// The small inbox record stored next to the messages (one per conversation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxState {
    /// Seqs `<= base` are history (older than the device's first page); live
    /// messages start at `base + 1`. 0 for a device that started at the beginning.
    pub base: Seq,
    /// Highest seq such that `base+1..=watermark` are all stored.
    pub watermark: Seq,
    /// Chain value of the message at `watermark` (genesis at 0, or at `base`
    /// before the first page).
    pub chain: ChainHash,
    /// The lowest stored message while older history is still missing; older
    /// pages must chain into it. `None` once history reaches seq 1.
    pub oldest: Option<StoredMessage>,
}

/// A message waiting in the outbox until the server confirmed it and every
/// other member received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Client message id (26-character ULID), the idempotency key.
    pub id: String,
    /// Message text.
    pub body: String,
    /// When `send` was called.
    pub created: Millis,
    /// Seq assigned by the server, once known.
    pub seq: Option<Seq>,
    /// Server time of storage, once known.
    pub at: Option<Millis>,
}

/// What the shell read back from storage on start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSnapshot {
    /// The inbox record; `None` for a fresh device.
    pub inbox: Option<InboxState>,
    /// Stored messages with seq above `inbox.watermark` (out-of-order ones).
    pub above: Vec<StoredMessage>,
    /// Every outbox entry, in creation order.
    pub outbox: Vec<OutboxEntry>,
}

/// A storage write the shell must carry out (one transaction each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientWrite {
    /// Put these messages (keyed by seq, overwriting) and, when given, replace
    /// the inbox record.
    Inbox {
        /// Messages to store.
        messages: Vec<StoredMessage>,
        /// New inbox record, if it changed.
        state: Option<InboxState>,
    },
    /// Insert or replace an outbox entry (keyed by id).
    PutOutbox(OutboxEntry),
    /// Delete an outbox entry.
    RemoveOutbox {
        /// Its client message id.
        id: String,
    },
    /// Delete every stored message and the inbox record (after
    /// [`Client::reset_inbox`]).
    ClearInbox,
}

/// Events the shell feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientInput {
    /// The WebSocket to the conversation opened.
    Connected,
    /// The WebSocket closed (for any reason).
    Disconnected,
    /// A frame arrived (the WebSocket message's bytes).
    Frame(Vec<u8>),
    /// Every write up to and including `through` is durable.
    Durable {
        /// The last durable write.
        through: WriteId,
    },
    /// The timer from [`Client::poll_timeout`] fired (early or late is fine).
    Timeout,
}

/// Where one of this device's own messages stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MessageStatus {
    /// Durably stored in the outbox (it now survives a crash or reload), not
    /// yet confirmed by the server. `send` is complete when this is reported.
    Pending,
    /// The server stored it at `seq`.
    Sent {
        /// Its seq.
        seq: Seq,
        /// Server time of storage.
        at: Millis,
    },
    /// Every other member user has a device that stored it (see the crate docs).
    Delivered {
        /// Its seq.
        seq: Seq,
    },
    /// The server refused it for good (the code says why); it left the outbox.
    Failed {
        /// The server's error code.
        code: ErrorCode,
    },
}

/// What the client asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Send this frame on the socket.
    Transmit(ClientFrame),
    /// Carry out this write, then report it with [`ClientInput::Durable`].
    Persist {
        /// Its id; ids increase by one per write.
        write: WriteId,
        /// The write.
        op: ClientWrite,
    },
    /// A new message for the app, in seq order, each seq once.
    Message(StoredMessage),
    /// An older page for the app (ascending), all below everything shown so far.
    History(Vec<StoredMessage>),
    /// One of this device's messages changed status.
    Status {
        /// Its client message id.
        id: String,
        /// The new status.
        status: MessageStatus,
    },
    /// Something went wrong; the client has already reacted (see the variant).
    Error(ClientError),
    /// Close the socket and reconnect later (the connection looks dead).
    Disconnect,
}

/// Client-side errors, each with a stable [`ClientError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// `send` was given a body over the limit.
    #[error("message body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Body size in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server sent something that is not a valid frame (ignored).
    #[error("undecodable server frame: {0}")]
    Decode(#[from] DecodeError),
    /// The server reported an error not tied to one of our messages.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Its code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// A message did not extend the integrity chain; unverified messages from
    /// `seq` on were dropped and are being fetched again.
    #[error("message {seq} does not extend the integrity chain; refetching")]
    ChainMismatch {
        /// First seq that failed.
        seq: Seq,
    },
    /// An older page did not chain into the stored history; it was dropped.
    #[error("history page ending below {seq} does not chain into stored history")]
    HistoryMismatch {
        /// The lowest stored seq it should have chained into.
        seq: Seq,
    },
    /// The server's history differs from what this device stored, or the
    /// server is behind this device. The inbox is frozen until
    /// [`Client::reset_inbox`].
    #[error("the server's history diverged from this device's at seq {seq} (server head {server_head})")]
    Diverged {
        /// Where the histories differ.
        seq: Seq,
        /// The server's head at the time.
        server_head: Seq,
    },
}

impl ClientError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::BodyTooLarge { .. } => "body_too_large",
            ClientError::Decode(_) => "bad_server_frame",
            ClientError::Server { .. } => "server_error",
            ClientError::ChainMismatch { .. } => "chain_mismatch",
            ClientError::HistoryMismatch { .. } => "history_mismatch",
            ClientError::Diverged { .. } => "diverged",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Offline,
    Hello { since: Millis },
    Ready,
}

/// A received message not yet contiguous with the watermark.
#[derive(Debug, Clone)]
struct Held {
    msg: StoredMessage,
    /// A write for it has been issued.
    written: bool,
}

#[derive(Debug, Clone)]
struct Inbox {
    /// The inbox record is durable (false between a fresh device's first
    /// page and its write): nothing may be acknowledged before.
    recorded: bool,
    base: Seq,
    /// Surfaced and durably recorded through here.
    durable: Seq,
    /// Contiguous, verified and written (maybe not durable yet) through here.
    written: Seq,
    /// Chain at `written`.
    chain: ChainHash,
    oldest: Option<StoredMessage>,
    /// Verified-later messages above `written`.
    buffer: BTreeMap<Seq, Held>,
    /// Seqs above `durable` known to be durable on disk (the selective ack).
    stored_above: RangeSet,
    /// Written contiguous messages `durable+1..=written`, surfaced on durability.
    unsurfaced: BTreeMap<Seq, StoredMessage>,
}

impl Inbox {
    fn state(&self) -> InboxState {
        InboxState {
            base: self.base,
            watermark: self.written,
            chain: self.chain,
            oldest: self.oldest.clone(),
        }
    }
}

/// What to do when a write becomes durable.
#[derive(Debug, Clone)]
enum Effect {
    Outbox { id: String },
    Inbox {
        /// Surface through this seq (the record's watermark).
        advance: Option<Seq>,
        /// Out-of-order seqs that are now stored.
        buffered: Vec<Seq>,
        history: Option<Vec<StoredMessage>>,
    },
    None,
}

#[derive(Debug, Clone, Default)]
struct AckState {
    /// Last cumulative seq transmitted.
    sent: Seq,
    /// When to send the next (coalesced) ack.
    due: Option<Millis>,
    /// Our own cursor as last reported by the server.
    confirmed: Seq,
    /// When to repeat an ack the server has not confirmed.
    retry_at: Option<Millis>,
    rto: Millis,
}

/// One device's session with one conversation. See the module docs.
#[derive(Debug)]
pub struct Client {
    cfg: ClientConfig,
    rng: Rng,
    link: Link,
    last_rx: Millis,
    next_write: u64,
    writes: VecDeque<(WriteId, Effect)>,
    out: VecDeque<ClientOutput>,
    inbox: Option<Inbox>,
    outbox: Outbox,
    /// Paces sends to the budget of the current connection's `welcome`.
    pacer: Option<Pacer>,
    /// Paces acks to their share of the same budget.
    ack_pacer: Option<Pacer>,
    /// Time and random part of the last id generated in this session.
    last_id: Option<(u64, u128)>,
    /// `created` of the newest outbox entry: never decreases, whatever the clock does.
    last_created: Millis,
    /// Where the page answering our fresh `hello` starts (its `welcome` says).
    fresh_start: Option<Seq>,
    /// Member users the last `welcome` reported (or a later notice, if more).
    members: u32,
    /// Stored-through cursors by (user, device).
    cursors: BTreeMap<(String, String), Seq>,
    /// Ticket of the newest `welcome` or `batch` read on this connection,
    /// echoed as `rx` on every frame (the server's proof of reading).
    read_ticket: Option<Ticket>,
    /// Head announced by `welcome`/`batch`: catch up to it with pages.
    head_auth: Seq,
    /// Since when a hole below a buffered push has been open.
    gap_since: Option<Millis>,
    sync_fwd: Option<Millis>,
    sync_back: Option<Millis>,
    sync_fresh: Option<Millis>,
    want_history: bool,
    /// When to say `hello` again to refresh cursors, and the current interval.
    refresh_at: Option<Millis>,
    refresh_every: Millis,
    /// What the current connection's `hello` announced (watermark, chain).
    hello_from: Option<(Seq, ChainHash)>,
    /// A fresh device still waits for its first page.
    fresh_pending: bool,
    ack: AckState,
    strikes: u32,
    diverged: bool,
}

impl Client {
    /// A session restored from `restored` (use `ClientSnapshot::default()` for
    /// a new device). `seed` must differ on every start of the same device
    /// (take it from `crypto.getRandomValues`): message ids draw 80 random bits
    /// from it.
    pub fn new(config: ClientConfig, seed: u64, restored: ClientSnapshot) -> Client {
        let mut c = Client {
            rng: Rng::new(seed),
            link: Link::Offline,
            last_rx: 0,
            next_write: 0,
            writes: VecDeque::new(),
            out: VecDeque::new(),
            inbox: None,
            outbox: Outbox::default(),
            pacer: None,
            ack_pacer: None,
            last_id: None,
            last_created: 0,
            members: 0,
            fresh_start: None,
            cursors: BTreeMap::new(),
            read_ticket: None,
            head_auth: 0,
            gap_since: None,
            sync_fwd: None,
            sync_back: None,
            sync_fresh: None,
            want_history: false,
            hello_from: None,
            refresh_at: None,
            refresh_every: config.status_refresh,
            fresh_pending: false,
            ack: AckState {
                rto: config.rto_initial,
                ..AckState::default()
            },
            strikes: 0,
            diverged: false,
            cfg: config,
        };
        if let Some(state) = restored.inbox {
            let mut inbox = Inbox {
                recorded: true,
                base: state.base,
                durable: state.watermark,
                written: state.watermark,
                chain: state.chain,
                oldest: state.oldest,
                buffer: BTreeMap::new(),
                stored_above: RangeSet::new(),
                unsurfaced: BTreeMap::new(),
            };
            for m in restored.above {
                if m.seq > inbox.written && m.seq <= MAX_SEQ {
                    inbox.stored_above.insert(m.seq);
                    inbox.buffer.insert(m.seq, Held { msg: m, written: true });
                }
            }
            c.ack.sent = inbox.durable;
            c.inbox = Some(inbox);
            // Stored messages that became contiguous before the crash (their
            // record update was lost) are verified and recorded now.
            c.advance(0);
        }
        if !Bugs::on(c.cfg.bugs.client_forget_outbox) {
            // Ids are ULIDs, which sort in creation order; the shell's order
            // (by `created`, a wall-clock time) may not after the clock went
            // back. New ids and times continue after the newest restored one.
            let mut outbox = restored.outbox;
            outbox.sort_by(|a, b| a.id.cmp(&b.id));
            for entry in outbox {
                if let Ok(u) = ulid::Ulid::from_string(&entry.id) {
                    c.last_id = c.last_id.max(Some((u.timestamp_ms(), u.random())));
                }
                c.last_created = c.last_created.max(entry.created);
                c.outbox.insert(entry, true);
            }
            // Continue a random distance after the newest restored id, not
            // right after it: ids a crashed session made after it (and lost
            // before they were durable) may be on the server already, and
            // counting up from the same point would make them again.
            if let Some((ms, rand)) = c.last_id {
                let jump = u128::from(c.rng.next_u64()) + 1;
                let mask80: u128 = (1 << 80) - 1;
                c.last_id = Some(match rand.checked_add(jump).filter(|r| *r < mask80) {
                    Some(r) => (ms, r),
                    None => (ms + 1, u128::from(c.rng.next_u64())),
                });
            }
        }
        c
    }

    /// Queues a message: it is written to the outbox, then sent (and resent)
    /// until the server confirms it. Returns its client message id at once;
    /// [`MessageStatus::Pending`] follows when the outbox write is durable
    /// (a crash before that loses the message, as it would lose the call).
    pub fn send(&mut self, now: Millis, body: impl Into<String>) -> Result<String, ClientError> {
        let body = body.into();
        if body.len() > limits::MAX_BODY_BYTES {
            return Err(ClientError::BodyTooLarge {
                len: body.len(),
                max: limits::MAX_BODY_BYTES,
            });
        }
        let id = self.next_id(now);
        self.last_created = self.last_created.max(now);
        let entry = OutboxEntry {
            id: id.clone(),
            body,
            created: self.last_created,
            seq: None,
            at: None,
        };
        self.outbox.insert(entry.clone(), false);
        self.persist(ClientWrite::PutOutbox(entry), Effect::Outbox { id: id.clone() });
        self.drive(now);
        Ok(id)
    }

    /// A ULID: 48 bits of time, 80 random bits, monotonic within this session.
    fn next_id(&mut self, now: Millis) -> String {
        let ms = now & ((1 << 48) - 1);
        let mask80: u128 = (1 << 80) - 1;
        let (ms, rand) = match self.last_id {
            // Same (or earlier) millisecond: count up, as ULID's monotonic mode does.
            Some((last_ms, last_rand)) if ms <= last_ms && last_rand < mask80 => (last_ms, last_rand + 1),
            last => {
                let hi = u128::from(self.rng.next_u64() & 0xFFFF);
                let lo = u128::from(self.rng.next_u64());
                let floor = last.map_or(0, |(l, _)| l + 1);
                (ms.max(floor).min((1 << 48) - 1), (hi << 64) | lo)
            }
        };
        self.last_id = Some((ms, rand));
        let id = ulid::Ulid::from_parts(ms, rand).to_string();
        if self.outbox.contains_id(&id) {
            // Only possible with a reused seed; move on rather than reuse an id.
            return self.next_id(now.saturating_add(1));
        }
        id
    }

    /// Asks for the next older page of history (for a device that started
    /// with the latest page). Returns false when history is already complete.
    pub fn load_older(&mut self, now: Millis) -> bool {
        let more = self.inbox.as_ref().is_some_and(|i| i.oldest.is_some());
        if more {
            self.want_history = true;
            self.drive(now);
        }
        more
    }

    /// Drops the stored inbox and starts again as a fresh device (the repair
    /// after [`ClientError::Diverged`]). The outbox is kept.
    pub fn reset_inbox(&mut self, now: Millis) {
        self.inbox = None;
        // Writes of the old inbox still on their way to the disk must not,
        // once durable, surface or acknowledge anything of the new one.
        for (_, effect) in &mut self.writes {
            if matches!(effect, Effect::Inbox { .. }) {
                *effect = Effect::None;
            }
        }
        // The old history's head is no target for the new one.
        self.head_auth = 0;
        self.hello_from = None;
        self.diverged = false;
        self.strikes = 0;
        self.gap_since = None;
        self.ack = AckState {
            rto: self.cfg.rto_initial,
            ..AckState::default()
        };
        self.persist(ClientWrite::ClearInbox, Effect::None);
        // Ask for the latest page as a fresh device would.
        self.fresh_pending = true;
        self.sync_fresh = None;
        self.drive(now);
    }

    /// Feeds one event in. Outputs are collected with [`Client::poll_output`].
    pub fn handle(&mut self, now: Millis, input: ClientInput) {
        match input {
            ClientInput::Connected => self.on_connected(now),
            ClientInput::Disconnected => self.on_disconnected(),
            ClientInput::Frame(bytes) => {
                self.last_rx = now;
                match ServerFrame::decode(&bytes) {
                    Ok(frame) => self.on_frame(now, frame),
                    Err(e) => self.out.push_back(ClientOutput::Error(ClientError::Decode(e))),
                }
            }
            ClientInput::Durable { through } => self.on_durable(now, through),
            ClientInput::Timeout => {}
        }
        self.drive(now);
    }

    /// The next output, if any. Call until `None` after every `handle`.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// The read ticket to echo as `rx` on every frame sent on the current
    /// connection: encode with [`ClientFrame::encode_rx`]. It tells the server
    /// this client read its answers, and a server that does not get it back
    /// stops answering and eventually closes the connection.
    pub fn read_ticket(&self) -> Option<Ticket> {
        self.read_ticket
    }

    /// When to call `handle(now, ClientInput::Timeout)` next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let mut t: Option<Millis> = None;
        let mut at = |d: Option<Millis>| {
            if let Some(d) = d {
                t = Some(t.map_or(d, |x| x.min(d)));
            }
        };
        match self.link {
            Link::Offline => return None,
            Link::Hello { since } => at(Some(since.saturating_add(self.cfg.hello_timeout))),
            Link::Ready => {
                if self.awaiting_answer() {
                    at(Some(self.last_rx.saturating_add(self.cfg.dead_after)));
                }
                at(self.ack.due);
                at(self.ack.retry_at);
                at(self.sync_fwd);
                at(self.sync_back);
                at(self.sync_fresh);
                at(self.refresh_at);
                // A hole's grace period matters only while no gap-fill is in
                // flight (an in-flight request has its own deadline).
                if self.sync_fwd.is_none() && self.inbox.as_ref().is_some_and(|i| !i.buffer.is_empty()) {
                    at(self.gap_since.map(|g| g.saturating_add(self.cfg.gap_grace)));
                }
                // Sends held back by pacing go when the budget allows.
                let paced_until = self.pacer.as_ref().map(Pacer::next_at);
                at(self.outbox.next_retry().map(|r| r.max(paced_until.unwrap_or(0))));
                if self.outbox.any_ready() && self.outbox.in_flight_len() < self.cfg.window {
                    at(paced_until);
                }
            }
        }
        t
    }

    /// Highest seq such that everything from the device's start is durably
    /// stored (and surfaced); `None` for a fresh device.
    pub fn watermark(&self) -> Option<Seq> {
        self.inbox.as_ref().map(|i| i.durable)
    }

    /// True when history reaches seq 1 (nothing older to load).
    pub fn history_complete(&self) -> bool {
        self.inbox.as_ref().is_some_and(|i| i.oldest.is_none())
    }

    /// Number of messages in the outbox (not yet delivered).
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// True while this device's message `id` is in the outbox: not yet stored
    /// by the server, or stored but not yet delivered to every other member.
    /// (An own message that is stored and no longer queued was delivered.)
    pub fn is_queued(&self, id: &str) -> bool {
        self.outbox.contains_id(id)
    }

    /// True once `welcome` arrived on the current connection.
    pub fn is_ready(&self) -> bool {
        self.link == Link::Ready
    }

    fn awaiting_answer(&self) -> bool {
        self.sync_fwd.is_some()
            || self.sync_back.is_some()
            || self.sync_fresh.is_some()
            || self.outbox.any_in_flight()
    }

    fn persist(&mut self, op: ClientWrite, effect: Effect) {
        self.next_write += 1;
        let write = WriteId(self.next_write);
        self.writes.push_back((write, effect));
        self.out.push_back(ClientOutput::Persist { write, op });
    }

    fn transmit(&mut self, frame: ClientFrame) {
        self.out.push_back(ClientOutput::Transmit(frame));
    }

    fn on_connected(&mut self, now: Millis) {
        self.reset_connection();
        // The server's bucket is per connection: a new one starts full.
        self.pacer = None;
        self.ack_pacer = None;
        self.last_rx = now;
        self.say_hello(now);
    }

    /// Sends `hello` (also again on a live connection: the server then starts
    /// the session over, which is always safe).
    fn say_hello(&mut self, now: Millis) {
        self.link = Link::Hello { since: now };
        self.refresh_at = None;
        let (after, chain) = match &self.inbox {
            Some(i) => (Some(i.written), Some(i.chain)),
            None => (None, None),
        };
        self.hello_from = after.zip(chain);
        self.transmit(ClientFrame::Hello { after, chain });
    }

    fn on_disconnected(&mut self) {
        self.reset_connection();
        self.link = Link::Offline;
    }

    /// Forgets everything tied to the current connection.
    fn reset_connection(&mut self) {
        self.read_ticket = None;
        self.outbox.reset_connection();
        self.sync_fwd = None;
        self.sync_back = None;
        self.sync_fresh = None;
        self.ack.due = None;
        self.ack.retry_at = None;
    }

    fn on_frame(&mut self, now: Millis, frame: ServerFrame) {
        if let Some(ticket) = frame.ticket() {
            self.read_ticket = Some(ticket);
        }
        match frame {
            ServerFrame::Welcome {
                head,
                chain,
                after_chain,
                start,
                cursors,
                members,
                rate,
                ..
            } => {
                // Before anything is counted as delivered: does the server
                // still have the history this device stored?
                if let (Some((w, mine)), Some(theirs)) = (self.hello_from, after_chain) {
                    if theirs.seq == w && theirs.chain != mine && !matches!(self.link, Link::Offline) {
                        self.diverge(w, head);
                    }
                }
                // A welcome carries the whole picture: it replaces what an
                // earlier server (maybe one restored from an older backup,
                // whose cursors are lower) said.
                self.members = members;
                self.cursors.clear();
                if self.inbox.is_none() {
                    self.fresh_start = start;
                }
                self.on_welcome(now, head, chain, cursors, rate)
            }
            ServerFrame::Sent { id, seq, at } => self.on_sent(now, &id, seq, at),
            ServerFrame::Push { messages } => {
                self.note_own(now, &messages);
                self.accept(now, messages);
            }
            ServerFrame::Batch {
                messages, head, follows, ..
            } => {
                self.note_own(now, &messages);
                self.on_batch(now, messages, head, follows)
            }
            ServerFrame::Delivered { cursors, members } => {
                self.members = self.members.max(members);
                self.merge_cursors(cursors)
            }
            ServerFrame::Error { code, message, id } => self.on_error(now, code, message, id),
            ServerFrame::Pong { .. } => {}
        }
    }

    /// Our own message coming back stands in for a lost `sent`.
    fn note_own(&mut self, now: Millis, messages: &[StoredMessage]) {
        for m in messages {
            if m.user == self.cfg.user && m.device == self.cfg.device && self.outbox.contains_id(&m.id) {
                self.on_sent(now, &m.id, m.seq, m.at);
            }
        }
    }

    fn on_welcome(&mut self, now: Millis, head: Seq, chain: ChainHash, cursors: Vec<Cursor>, rate: Option<RateLimit>) {
        if matches!(self.link, Link::Offline) {
            return;
        }
        self.link = Link::Ready;
        // Sends are paced from the first welcome of a connection on (a later
        // one answers a refresh `hello` on the same connection and bucket).
        if self.pacer.is_none() {
            self.pacer = rate.map(|r| Pacer::new(now, r));
            self.ack_pacer = rate.map(|r| Pacer::for_acks(now, r));
        }
        // Held messages above the head are of a history this server does not
        // have (it went back to an older backup) or, if this welcome is stale,
        // will be fetched again: either way, stop holding or acking them.
        if let Some(inbox) = self.inbox.as_mut() {
            let above = head.saturating_add(1);
            if inbox.buffer.range(above..).next().is_some() {
                inbox.buffer.split_off(&above);
                inbox.stored_above.remove_from(above);
            }
        }
        // Only ever raise the catch-up target: this welcome may be older than
        // frames of its own connection, or than an evicted message we must
        // still fetch. (A server that went back is caught just below.)
        self.head_auth = self.head_auth.max(head);
        self.merge_cursors(cursors);
        // Compare with what `hello` announced, not with the inbox now: frames
        // of this connection may have overtaken the welcome.
        if let Some((w, c)) = self.hello_from {
            if head < w || (head == w && chain != c) {
                // The server lost (or rewrote) history this device stored.
                self.diverge(head.min(w), head);
            } else if head > w && self.sync_fwd.is_none() && self.inbox.as_ref().is_some_and(|i| i.written < head) {
                // hello{after: w} is answered with the pages above w (streamed,
                // right behind this welcome): wait for them rather than ask for
                // the same pages again. (If they already overtook the welcome,
                // `written` has reached the head and there is nothing to wait for.)
                self.sync_fwd = Some(now.saturating_add(self.cfg.sync_timeout));
            }
        }
        if self.inbox.is_none() {
            // hello{after: None} is answered with the latest page; ask again
            // if it does not come.
            self.fresh_pending = true;
            self.sync_fresh = Some(now.saturating_add(self.cfg.sync_timeout));
        }
        self.outbox.reset_transmits();
        // Tell the new connection where we are (its cursor may be stale).
        if self.inbox.as_ref().is_some_and(|i| i.durable > 0) {
            self.ack.due = Some(now);
        }
        self.ack.rto = self.cfg.rto_initial;
    }

    fn diverge(&mut self, seq: Seq, server_head: Seq) {
        if !self.diverged {
            self.diverged = true;
            self.out.push_back(ClientOutput::Error(ClientError::Diverged { seq, server_head }));
            // A server that lost or rewrote history may have lost our own
            // messages too, even confirmed ones: send every undelivered one
            // again (one the server still has is answered with its seq).
            for entry in self.outbox.unconfirm_all() {
                self.persist(ClientWrite::PutOutbox(entry), Effect::None);
            }
        }
    }

    fn on_sent(&mut self, now: Millis, id: &str, seq: Seq, at: Millis) {
        let Some(order) = self.outbox.order_of(id) else {
            return; // already delivered and forgotten, or not ours
        };
        let Some(entry) = self.outbox.confirm(order, seq, at) else {
            return; // a duplicate `sent`
        };
        self.persist(ClientWrite::PutOutbox(entry), Effect::None);
        self.out.push_back(ClientOutput::Status {
            id: id.to_owned(),
            status: MessageStatus::Sent { seq, at },
        });
        if Bugs::on(self.cfg.bugs.client_delivered_on_sent) {
            self.out.push_back(ClientOutput::Status {
                id: id.to_owned(),
                status: MessageStatus::Delivered { seq },
            });
        }
        self.check_delivered();
        let _ = now;
    }

    fn on_error(&mut self, now: Millis, code: ErrorCode, message: String, id: Option<String>) {
        let order = id.as_ref().and_then(|id| self.outbox.order_of(id));
        let Some(order) = order else {
            self.out
                .push_back(ClientOutput::Error(ClientError::Server { code, message }));
            return;
        };
        let permanent = matches!(code, ErrorCode::BodyTooLarge | ErrorCode::BadFrame | ErrorCode::FrameTooLarge);
        if permanent {
            if let Some(o) = self.outbox.remove(order) {
                self.persist(
                    ClientWrite::RemoveOutbox {
                        id: o.entry.id.clone(),
                    },
                    Effect::None,
                );
                self.out.push_back(ClientOutput::Status {
                    id: o.entry.id,
                    status: MessageStatus::Failed { code },
                });
            }
        } else {
            // Busy, rate limited or not ready: retry after the backoff.
            let (initial, max) = (self.cfg.rto_initial, self.cfg.rto_max);
            self.outbox
                .retry_later(order, |transmits| now.saturating_add(backoff(initial, max, transmits)));
        }
    }

    fn merge_cursors(&mut self, cursors: Vec<Cursor>) {
        for c in cursors {
            let own = c.user == self.cfg.user && c.device == self.cfg.device;
            let e = self.cursors.entry((c.user, c.device)).or_insert(0);
            if c.through > *e {
                // News: the next refresh can wait a full interval again.
                self.refresh_at = None;
                self.refresh_every = self.cfg.status_refresh;
            }
            *e = (*e).max(c.through);
            if own {
                self.ack.confirmed = self.ack.confirmed.max(c.through);
                if self.ack.confirmed >= self.ack.sent {
                    self.ack.retry_at = None;
                    self.ack.rto = self.cfg.rto_initial;
                }
            }
        }
        self.check_delivered();
    }

    /// An own message the server confirmed at a seq that, verified in our
    /// chain, holds another message was lost by the server (restored from an
    /// older backup): send it again.
    fn check_own(&mut self, verified: &[(Seq, String, bool)]) {
        for (seq, id, ours) in verified {
            let lost = match self.outbox.confirmed_at(*seq) {
                Some((order, confirmed_id)) if !*ours || confirmed_id != id => Some(order),
                _ => None,
            };
            if let Some(entry) = lost.and_then(|order| self.outbox.unconfirm(order)) {
                self.persist(ClientWrite::PutOutbox(entry), Effect::None);
            }
        }
    }

    /// Delivered = every other user that appears in the cursors has a device
    /// stored through the seq, and there is at least one other user.
    fn check_delivered(&mut self) {
        let mut best: BTreeMap<&str, Seq> = BTreeMap::new();
        for ((user, _), through) in &self.cursors {
            if *user == self.cfg.user {
                continue;
            }
            let b = best.entry(user.as_str()).or_insert(0);
            *b = (*b).max(*through);
        }
        // A member this device has not heard of yet (its notice was lost)
        // has stored nothing as far as we know: wait for its cursor.
        let users_known = best.len() + 1; // the other users, and ours
        if users_known < self.members as usize {
            return;
        }
        let Some(&floor) = best.values().min() else {
            return;
        };
        // And only once this device holds it too (verified in its own chain
        // at that seq): a server restored from an older backup may have
        // given the seq to another message since.
        let floor = floor.min(self.inbox.as_ref().map_or(0, |i| i.durable));
        for o in self.outbox.take_delivered(floor) {
            let seq = o.entry.seq.unwrap_or_default();
            self.out.push_back(ClientOutput::Status {
                id: o.entry.id.clone(),
                status: MessageStatus::Delivered { seq },
            });
            self.persist(ClientWrite::RemoveOutbox { id: o.entry.id }, Effect::None);
        }
    }

    fn on_batch(&mut self, now: Millis, messages: Vec<StoredMessage>, head: Seq, follows: bool) {
        // Any batch answers the outstanding request(s); anything still missing
        // is asked for again below. While the server streams pages (`follows`)
        // the forward request stays open, with a fresh deadline in case the
        // next page is lost.
        self.sync_fwd = follows.then(|| now.saturating_add(self.cfg.sync_timeout));
        self.sync_back = None;
        self.head_auth = self.head_auth.max(head);
        if self.inbox.is_none() {
            // Only the page the fresh `hello` was promised, not a late page
            // of an earlier request (after a reset, say).
            let first = messages.first().map_or(head.saturating_add(1), |m| m.seq);
            if self.fresh_start.is_some_and(|s| s != first) {
                return;
            }
            self.sync_fresh = None;
            self.adopt_first_page(messages, head);
            if self.inbox.is_some() {
                self.fresh_pending = false;
            }
            return;
        }
        let oldest = self.inbox.as_ref().and_then(|i| i.oldest.as_ref()).map(|m| m.seq);
        let (older, newer): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| oldest.is_some_and(|o| m.seq < o));
        self.accept(now, newer);
        if !older.is_empty() {
            self.accept_history(older);
        }
    }

    /// A fresh device's first page: the latest messages become its start.
    fn adopt_first_page(&mut self, page: Vec<StoredMessage>, head: Seq) {
        if self.diverged {
            return;
        }
        let Some(first) = page.first() else {
            if head == 0 {
                let inbox = Inbox {
                    recorded: false,
                    base: 0,
                    durable: 0,
                    written: 0,
                    chain: ChainHash::GENESIS,
                    oldest: None,
                    buffer: BTreeMap::new(),
                    stored_above: RangeSet::new(),
                    unsurfaced: BTreeMap::new(),
                };
                let state = inbox.state();
                self.inbox = Some(inbox);
                self.persist(
                    ClientWrite::Inbox {
                        messages: Vec::new(),
                        state: Some(state),
                    },
                    Effect::Inbox {
                        advance: Some(0),
                        buffered: Vec::new(),
                        history: None,
                    },
                );
            }
            return;
        };
        let first_seq = first.seq;
        if first_seq == 0 || !chain_ok(&page, (first_seq == 1).then_some(ChainHash::GENESIS)) {
            self.out
                .push_back(ClientOutput::Error(ClientError::HistoryMismatch { seq: first_seq }));
            return;
        }
        let last = page.last().map(|m| (m.seq, m.chain)).unwrap_or((first_seq, first.chain));
        let inbox = Inbox {
            recorded: false,
            base: first_seq - 1,
            durable: first_seq - 1,
            written: last.0,
            chain: last.1,
            oldest: (first_seq > 1).then(|| first.clone()),
            buffer: BTreeMap::new(),
            stored_above: RangeSet::new(),
            unsurfaced: page.iter().map(|m| (m.seq, m.clone())).collect(),
        };
        let state = inbox.state();
        self.inbox = Some(inbox);
        self.persist(
            ClientWrite::Inbox {
                messages: page,
                state: Some(state),
            },
            Effect::Inbox {
                advance: Some(last.0),
                buffered: Vec::new(),
                history: None,
            },
        );
    }

    /// Takes pushed or paged messages above the watermark.
    fn accept(&mut self, now: Millis, msgs: Vec<StoredMessage>) {
        if self.diverged {
            return;
        }
        let bugs = self.cfg.bugs;
        let max_buffer = self.cfg.max_buffer.max(1);
        if self.inbox.is_none() {
            return; // a fresh device takes nothing before its first page
        }
        let mut dup = false;
        let mut surfaced_again = Vec::new();
        let mut msgs = msgs;
        msgs.sort_by_key(|m| m.seq);
        for m in msgs {
            let Some(inbox) = self.inbox.as_mut() else { return };
            if m.seq == 0 || m.seq > MAX_SEQ {
                continue;
            }
            if m.seq <= inbox.written || inbox.buffer.contains_key(&m.seq) {
                dup = true;
                if Bugs::on(bugs.client_no_dedup) && m.seq > inbox.base && m.seq <= inbox.durable {
                    surfaced_again.push(m);
                }
                continue;
            }
            if Bugs::on(bugs.client_drop_out_of_order) && m.seq > inbox.written + 1 {
                inbox.stored_above.insert(m.seq);
                continue;
            }
            if inbox.buffer.len() >= max_buffer {
                // Full: first move the contiguous run out of the buffer.
                self.advance(now);
                let Some(inbox) = self.inbox.as_mut() else { return };
                if inbox.buffer.len() >= max_buffer {
                    // Still full: a lower seq is worth more (it fills the hole
                    // first), so evict the highest. An evicted message was either
                    // never acknowledged or is durably on disk as its selective
                    // ack says; gap-fill fetches it again either way.
                    match inbox.buffer.last_key_value().map(|(k, _)| *k) {
                        Some(top) if top > m.seq => {
                            inbox.buffer.remove(&top);
                            // It may be acknowledged already (so never pushed
                            // again): remember that it exists so gap-fill
                            // fetches it.
                            self.head_auth = self.head_auth.max(top);
                        }
                        _ => continue, // dropped unacknowledged: it comes again
                    }
                }
            }
            let Some(inbox) = self.inbox.as_mut() else { return };
            inbox.buffer.insert(m.seq, Held { msg: m, written: false });
        }
        for m in surfaced_again {
            self.out.push_back(ClientOutput::Message(m));
        }
        if dup {
            // The server resends: our ack may have been lost.
            self.ack.due = Some(now);
        }
        self.advance(now);
    }

    /// Moves contiguous buffered messages under the watermark (verifying the
    /// chain) and writes everything new.
    fn advance(&mut self, now: Millis) {
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        let mut fresh: Vec<StoredMessage> = Vec::new();
        let mut advanced = false;
        let mut mismatch = None;
        // (seq, id, ours) of each message verified into the inbox.
        let mut verified: Vec<(Seq, String, bool)> = Vec::new();
        while let Some(entry) = inbox.buffer.first_entry() {
            let seq = *entry.key();
            if seq != inbox.written + 1 {
                break;
            }
            let held = entry.remove();
            let m = &held.msg;
            let expect = inbox.chain.next(m.seq, &m.user, &m.device, &m.id, &m.body);
            if m.chain != expect && !Bugs::on(self.cfg.bugs.client_skip_chain_check) {
                mismatch = Some(seq);
                break;
            }
            inbox.written = seq;
            inbox.chain = expect;
            advanced = true;
            verified.push((seq, held.msg.id.clone(), held.msg.user == self.cfg.user && held.msg.device == self.cfg.device));
            inbox.unsurfaced.insert(seq, held.msg.clone());
            if !held.written {
                fresh.push(held.msg);
            }
        }
        if let Some(seq) = mismatch {
            // Everything from the bad seq on is unverified: drop and refetch.
            inbox.buffer.split_off(&seq);
            inbox.stored_above.remove_from(seq);
        }
        let newly: Vec<StoredMessage> = inbox
            .buffer
            .values_mut()
            .filter(|h| !h.written)
            .map(|h| {
                h.written = true;
                h.msg.clone()
            })
            .collect();
        self.gap_since = if inbox.buffer.is_empty() {
            None
        } else {
            Some(self.gap_since.unwrap_or(now))
        };
        let state = inbox.state();
        let written = inbox.written;
        if advanced {
            self.strikes = 0;
            self.persist(
                ClientWrite::Inbox {
                    messages: fresh,
                    state: Some(state),
                },
                Effect::Inbox {
                    advance: Some(written),
                    buffered: Vec::new(),
                    history: None,
                },
            );
        }
        if !newly.is_empty() {
            let seqs = newly.iter().map(|m| m.seq).collect();
            self.persist(
                ClientWrite::Inbox {
                    messages: newly,
                    state: None,
                },
                Effect::Inbox {
                    advance: None,
                    buffered: seqs,
                    history: None,
                },
            );
        }
        self.check_own(&verified);
        if let Some(seq) = mismatch {
            self.strikes += 1;
            if self.strikes >= 3 {
                self.diverge(seq, self.head_auth);
            } else {
                self.out
                    .push_back(ClientOutput::Error(ClientError::ChainMismatch { seq }));
                // Refetch from the watermark at once.
                self.head_auth = self.head_auth.max(seq);
                self.sync_fwd = None;
            }
        }
    }

    /// An older page: must end right below the oldest stored message and chain into it.
    fn accept_history(&mut self, mut page: Vec<StoredMessage>) {
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        let Some(oldest) = inbox.oldest.clone() else {
            return;
        };
        page.sort_by_key(|m| m.seq);
        page.dedup_by_key(|m| m.seq);
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            return;
        };
        let contiguous = first.seq > 0 && page.windows(2).all(|w| w[0].seq.checked_add(1) == Some(w[1].seq));
        if last.seq.checked_add(1) != Some(oldest.seq) || !contiguous {
            return; // a stale answer (the history moved on already) or garbage
        }
        let first_seq = first.seq;
        let links = last
            .chain
            .next(oldest.seq, &oldest.user, &oldest.device, &oldest.id, &oldest.body)
            == oldest.chain;
        if !links || !chain_ok(&page, (first_seq == 1).then_some(ChainHash::GENESIS)) {
            self.out
                .push_back(ClientOutput::Error(ClientError::HistoryMismatch { seq: oldest.seq }));
            return;
        }
        inbox.oldest = (first_seq > 1).then(|| page[0].clone());
        let state = inbox.state();
        self.want_history = false;
        self.persist(
            ClientWrite::Inbox {
                messages: page.clone(),
                state: Some(state),
            },
            Effect::Inbox {
                advance: None,
                buffered: Vec::new(),
                history: Some(page),
            },
        );
    }

    fn on_durable(&mut self, now: Millis, through: WriteId) {
        while self.writes.front().is_some_and(|(w, _)| *w <= through) {
            let Some((_, effect)) = self.writes.pop_front() else {
                break;
            };
            match effect {
                Effect::None => {}
                Effect::Outbox { id } => {
                    // Durably queued: from here on it survives any crash.
                    if self.outbox.mark_durable(&id) {
                        self.out.push_back(ClientOutput::Status {
                            id,
                            status: MessageStatus::Pending,
                        });
                    }
                }
                Effect::Inbox {
                    advance,
                    buffered,
                    history,
                } => {
                    let Some(inbox) = self.inbox.as_mut() else {
                        continue; // cleared by reset_inbox meanwhile
                    };
                    let mut progressed = false;
                    for s in buffered {
                        if s > inbox.durable && (s <= inbox.written || inbox.buffer.contains_key(&s)) {
                            inbox.stored_above.insert(s);
                            progressed = true;
                        }
                    }
                    if let Some(w) = advance {
                        inbox.recorded = true;
                        while inbox.durable < w {
                            inbox.durable += 1;
                            if let Some(m) = inbox.unsurfaced.remove(&inbox.durable) {
                                self.out.push_back(ClientOutput::Message(m));
                            }
                        }
                        if Bugs::on(self.cfg.bugs.client_surface_before_durable) {
                            // The mistake: show everything written, durable or not.
                            while let Some((_, m)) = inbox.unsurfaced.pop_first() {
                                self.out.push_back(ClientOutput::Message(m));
                            }
                        }
                        inbox.stored_above.remove_through(inbox.durable);
                        progressed = true;
                    }
                    if let Some(page) = history {
                        self.out.push_back(ClientOutput::History(page));
                    }
                    if progressed {
                        let unacked = inbox.durable.saturating_sub(self.ack.sent);
                        let due = if unacked >= self.cfg.ack_every {
                            now
                        } else {
                            now.saturating_add(self.cfg.ack_delay)
                        };
                        self.ack.due = Some(self.ack.due.map_or(due, |d| d.min(due)));
                    }
                }
            }
        }
    }

    /// Fires due timers and starts whatever work is possible now.
    fn drive(&mut self, now: Millis) {
        match self.link {
            Link::Offline => return,
            Link::Hello { since } => {
                if now >= since.saturating_add(self.cfg.hello_timeout) {
                    self.give_up_connection();
                }
                return;
            }
            Link::Ready => {
                if self.awaiting_answer() && now >= self.last_rx.saturating_add(self.cfg.dead_after) {
                    self.give_up_connection();
                    return;
                }
            }
        }
        self.pump_outbox(now);
        self.plan_sync(now);
        self.maybe_ack(now);
        self.plan_refresh(now);
    }

    fn plan_refresh(&mut self, now: Millis) {
        let waiting = self.outbox.any_awaiting_delivery();
        if !waiting || self.link != Link::Ready {
            self.refresh_at = None;
            return;
        }
        match self.refresh_at {
            None => self.refresh_at = Some(now.saturating_add(self.refresh_every)),
            Some(t) if t <= now => {
                self.refresh_every = self
                    .refresh_every
                    .saturating_mul(2)
                    .min(self.cfg.rto_max.saturating_mul(10));
                self.say_hello(now);
            }
            Some(_) => {}
        }
    }

    fn give_up_connection(&mut self) {
        self.on_disconnected();
        self.out.push_back(ClientOutput::Disconnect);
    }

    fn pump_outbox(&mut self, now: Millis) {
        let (initial, max) = (self.cfg.rto_initial, self.cfg.rto_max);
        let budget = self.pacer.as_mut().map_or(usize::MAX, |p| p.available(now));
        let rng = &mut self.rng;
        let frames = self.outbox.due(now, self.cfg.window, budget, |transmits| {
            let wait = backoff(initial, max, transmits);
            // +-20% jitter so that many clients do not retry in lockstep.
            wait - wait / 5 + rng.range(0, wait / 5 * 2)
        });
        if let Some(p) = &mut self.pacer {
            p.spend(frames.len());
        }
        for t in frames {
            self.transmit(ClientFrame::Send {
                id: t.id,
                body: t.body,
                after: t.after,
            });
        }
    }

    fn plan_sync(&mut self, now: Millis) {
        if self.diverged {
            return;
        }
        // An expired request counts as unanswered: forget it, and ask again
        // below only if the need is still there.
        for d in [&mut self.sync_fwd, &mut self.sync_back, &mut self.sync_fresh] {
            if d.is_some_and(|d| d <= now) {
                *d = None;
            }
        }
        let expired = |d: Option<Millis>| d.is_none();
        if self.inbox.is_some() {
            self.sync_fresh = None;
        }
        let Some(inbox) = &self.inbox else {
            if self.sync_fresh.is_none() && self.link == Link::Ready && self.fresh_pending {
                // Ask with `hello`, not with a `sync` for the latest page: the
                // server answers a fresh device with pages that chain with
                // what its user's other devices stored, so that its acks
                // never vouch for messages no device of the user has.
                self.say_hello(now);
            }
            return;
        };
        let gap_due = !inbox.buffer.is_empty()
            && self.gap_since.is_some_and(|g| g.saturating_add(self.cfg.gap_grace) <= now);
        let behind = inbox.written < self.head_auth;
        let mut frames = Vec::new();
        if (behind || gap_due) && expired(self.sync_fwd) {
            let before = inbox.buffer.keys().next().copied();
            frames.push(ClientFrame::Sync {
                after: Some(inbox.written),
                before,
                limit: self.cfg.page.clamp(1, limits::MAX_PAGE),
            });
            self.sync_fwd = Some(now.saturating_add(self.cfg.sync_timeout));
        }
        if self.want_history && expired(self.sync_back) {
            if let Some(oldest) = &inbox.oldest {
                frames.push(ClientFrame::Sync {
                    after: None,
                    before: Some(oldest.seq),
                    limit: self.cfg.page.clamp(1, limits::MAX_PAGE),
                });
                self.sync_back = Some(now.saturating_add(self.cfg.sync_timeout));
            } else {
                self.want_history = false;
            }
        }
        for f in frames {
            self.transmit(f);
        }
    }

    fn maybe_ack(&mut self, now: Millis) {
        let Some(inbox) = &self.inbox else {
            return;
        };
        if !inbox.recorded || self.diverged {
            // (A diverged inbox describes a history the server no longer has:
            // acking it would claim messages beyond the server's head.)
            self.ack.due = None;
            return;
        }
        let early = Bugs::on(self.cfg.bugs.client_ack_before_persist);
        let seq = if early { inbox.written } else { inbox.durable };
        let mut ranges: Vec<[Seq; 2]> = if early {
            let mut r = RangeSet::new();
            for s in inbox.buffer.keys() {
                r.insert(*s);
            }
            r.ranges().collect()
        } else {
            inbox.stored_above.ranges().filter(|r| r[0] > seq).collect()
        };
        ranges.truncate(limits::MAX_ACK_RANGES);
        if seq == 0 && ranges.is_empty() {
            // Nothing to acknowledge: a due ack must not stay armed (it would
            // keep poll_timeout in the past).
            self.ack.due = None;
            self.ack.retry_at = None;
            return;
        }
        let due = self.ack.due.is_some_and(|d| d <= now) || (early && seq > self.ack.sent);
        let retry = self.ack.retry_at.is_some_and(|d| d <= now);
        if !(due || retry) {
            return;
        }
        if let Some(p) = &mut self.ack_pacer {
            if p.available(now) == 0 {
                // Over budget: the ack waits for a token (and then covers
                // whatever became durable meanwhile).
                let at = p.next_at().max(now.saturating_add(1));
                self.ack.due = Some(at);
                if retry {
                    self.ack.retry_at = Some(at);
                }
                return;
            }
            p.spend(1);
        }
        self.ack.due = None;
        if retry {
            self.ack.rto = (self.ack.rto.saturating_mul(2)).min(self.cfg.rto_max);
        }
        self.ack.sent = seq;
        self.ack.retry_at = (self.ack.confirmed < seq).then(|| now.saturating_add(self.ack.rto));
        self.transmit(ClientFrame::Ack { seq, ranges });
    }
}

/// `initial * 2^attempt`, capped at `max`.
fn backoff(initial: Millis, max: Millis, attempt: u32) -> Millis {
    let factor = 1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX);
    initial.saturating_mul(factor).min(max).max(1)
}

/// True when every message in `page` extends its predecessor's chain
/// (and the first extends `prev`, when known) and seqs are contiguous.
fn chain_ok(page: &[StoredMessage], prev: Option<ChainHash>) -> bool {
    let mut prev = prev;
    let mut last_seq: Option<Seq> = None;
    for m in page {
        if m.seq == 0 || m.seq > MAX_SEQ {
            return false;
        }
        if let Some(s) = last_seq {
            if s.checked_add(1) != Some(m.seq) {
                return false;
            }
        }
        if let Some(p) = prev {
            if p.next(m.seq, &m.user, &m.device, &m.id, &m.body) != m.chain {
                return false;
            }
        }
        prev = Some(m.chain);
        last_seq = Some(m.seq);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_chars_and_increase() {
        let mut c = Client::new(ClientConfig::new("ann", "d1"), 1, ClientSnapshot::default());
        let a = c.next_id(1_700_000_000_000);
        let b = c.next_id(1_700_000_000_000);
        let d = c.next_id(1_699_000_000_000);
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|x| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&x)));
        assert!(a < b && b < d, "{a} {b} {d}");
        // Even at time 0 the first id is random, not a counter.
        let mut c1 = Client::new(ClientConfig::new("ann", "d1"), 1, ClientSnapshot::default());
        let mut c2 = Client::new(ClientConfig::new("ann", "d1"), 2, ClientSnapshot::default());
        assert_ne!(c1.next_id(0), c2.next_id(0));
    }

    #[test]
    fn backoff_caps() {
        assert_eq!(backoff(1000, 30_000, 0), 1000);
        assert_eq!(backoff(1000, 30_000, 3), 8000);
        assert_eq!(backoff(1000, 30_000, 99), 30_000);
    }
}
