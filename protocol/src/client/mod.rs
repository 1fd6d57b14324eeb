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

use crate::backoff::{backoff, full_jitter, jittered};
use crate::bugs::Bugs;
use crate::chain::ChainHash;
use crate::frame::{
    ClientFrame, Cursor, DecodeError, ErrorCode, Millis, RateLimit, Seq, ServerFrame,
    StoredMessage, Ticket, MAX_SEQ,
};
use crate::limits;
use crate::outbox::Outbox;
use crate::pacer::Pacer;
use crate::ranges::RangeSet;
use crate::rng::Rng;
use crate::WriteId;

mod delivery;
mod inbox;
mod link;
mod timers;

use delivery::AckState;
use inbox::{Held, Inbox};
use link::Link;
use timers::{Timer, Timers};

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
    /// Give up on a connection that sent nothing at all for this long (the
    /// heartbeat below keeps a live one talking).
    pub dead_after: Millis,
    /// Ping a connection that sent nothing for this long (then every third
    /// of it until something arrives or [`ClientConfig::dead_after`] passes).
    pub ping_after: Millis,
    /// First reconnect delay ceiling; doubles per failed attempt (full jitter).
    pub reconnect_initial: Millis,
    /// Largest reconnect delay (while the platform reports the network
    /// offline, the client waits for [`ClientInput::Network`] instead).
    pub reconnect_max: Millis,
    /// Wait before reconnecting after the server closed this connection
    /// because the same device opened a newer one (4001): another instance
    /// of this device is connected, and fighting it would only cut it off.
    pub replaced_wait: Millis,
    /// The shell can fetch a fresh token ([`ClientOutput::Connect`] with
    /// `fresh_token`): an auth refusal is then retried once with a new token
    /// before the client stops with [`LinkStatus::Auth`].
    pub refresh_token: bool,
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
            dead_after: 25_000,
            ping_after: 15_000,
            reconnect_initial: 250,
            reconnect_max: 15_000,
            replaced_wait: 30_000,
            refresh_token: false,
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
    /// The WebSocket asked for by [`ClientOutput::Connect`] opened.
    Connected,
    /// The WebSocket closed, or could not be opened (or its token could not
    /// be had): the close code and reason as the shell saw them, 1006 when
    /// there was none. The client decides what follows (see [`LinkStatus`]).
    Disconnected {
        /// WebSocket close code (`protocol::server::close` lists the server's).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The platform says the network went away (`false`) or came back, or
    /// the page became visible again (`true`): a reconnect is due at once.
    Network {
        /// `navigator.onLine`, or true for "worth trying now".
        online: bool,
    },
    /// A WebSocket message arrived (its bytes): one frame, or a bundle of
    /// frames (a JSON array), which are taken in order as if each had come
    /// alone.
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
    /// An older page for the app (ascending), all below everything shown so
    /// far, durably stored; `more` says whether still older history exists.
    History {
        /// The page.
        page: Vec<StoredMessage>,
        /// True while history does not reach seq 1 yet.
        more: bool,
    },
    /// A [`Client::load_older`] request ended without a page: the connection
    /// went away ([`ClientError::Offline`]) or the page did not chain into
    /// stored history ([`ClientError::HistoryMismatch`]).
    HistoryFailed(ClientError),
    /// One of this device's messages changed status.
    Status {
        /// Its client message id.
        id: String,
        /// The new status.
        status: MessageStatus,
    },
    /// Something went wrong; the client has already reacted (see the variant).
    Error(ClientError),
    /// Open a WebSocket to the conversation, then report
    /// [`ClientInput::Connected`] or [`ClientInput::Disconnected`].
    Connect {
        /// Get a new token first (the last one was refused or expired).
        fresh_token: bool,
    },
    /// Close the current socket (it looks dead, or took too long). Do not
    /// report `Disconnected` for it: the client already moved on and asks
    /// for the next connection with [`ClientOutput::Connect`].
    Disconnect,
    /// The connection state changed (for the app's status display).
    Link(LinkStatus),
}

/// Where the connection stands, as the app should show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkStatus {
    /// Opening a socket or waiting for `welcome`.
    Connecting,
    /// Welcomed: messages flow.
    Open,
    /// No connection; the next attempt is scheduled (with backoff), or due as
    /// soon as the network comes back.
    Offline,
    /// The server refused the token (and a fresh one, when the shell can get
    /// one). Waits for [`ClientInput::Network`] `{ online: true }`, which
    /// tries once more with a fresh token.
    Auth,
    /// Stopped for good: this user may not join the conversation
    /// ([`ClientError::Forbidden`], [`ClientError::ConversationFull`]).
    Stopped,
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
    /// [`Client::send_with_id`] was given an id that is not a ULID.
    #[error("message id {id:?} is not a ULID (26 Crockford base32 characters)")]
    BadMessageId {
        /// The id given.
        id: String,
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
    /// Not connected: [`Client::load_older`] cannot fetch now.
    #[error("not connected to the conversation")]
    Offline,
    /// The server refused this device's token (close 4401, or 4003 when it
    /// expired) and no fresh one helped.
    #[error("the server refused the token: {reason}")]
    Unauthorized {
        /// The server's reason (an auth code such as `token_expired`).
        reason: String,
    },
    /// The token does not grant this conversation (close 4403).
    #[error("the token does not grant this conversation: {reason}")]
    Forbidden {
        /// The server's reason.
        reason: String,
    },
    /// The conversation has as many members as it may (close 4004).
    #[error("the conversation is full")]
    ConversationFull,
    /// The server closed the connection with a policy or application code
    /// (1008, 4000-4999); the client reconnects.
    #[error("server closed the connection ({code}): {reason}")]
    ConnectionClosed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Nothing arrived for [`ClientConfig::dead_after`], not even a pong:
    /// a half-open connection, closed and replaced.
    #[error("no frame for {idle} ms: the connection is dead")]
    ConnectionDead {
        /// How long nothing arrived.
        idle: Millis,
    },
    /// The server's history differs from what this device stored, or the
    /// server is behind this device. The inbox is frozen until
    /// [`Client::reset_inbox`].
    #[error(
        "the server's history diverged from this device's at seq {seq} (server head {server_head})"
    )]
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
            ClientError::BadMessageId { .. } => "bad_message_id",
            ClientError::Decode(_) => "bad_server_frame",
            ClientError::Server { .. } => "server_error",
            ClientError::ChainMismatch { .. } => "chain_mismatch",
            ClientError::HistoryMismatch { .. } => "history_mismatch",
            ClientError::Diverged { .. } => "diverged",
            ClientError::Offline => "offline",
            ClientError::Unauthorized { .. } => "unauthorized",
            ClientError::Forbidden { .. } => "forbidden",
            ClientError::ConversationFull => "too_many_members",
            ClientError::ConnectionClosed { .. } => "connection_closed",
            ClientError::ConnectionDead { .. } => "heartbeat_timeout",
        }
    }
}

/// What to do when a write becomes durable.
#[derive(Debug, Clone)]
enum Effect {
    Outbox {
        id: String,
    },
    Inbox {
        /// Surface through this seq (the record's watermark).
        advance: Option<Seq>,
        /// Out-of-order seqs that are now stored.
        buffered: Vec<Seq>,
        history: Option<Vec<StoredMessage>>,
    },
    None,
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
    /// Counts connections (see [`inbox::Held::conn`]).
    conn_epoch: u64,
    /// Since when a hole below a buffered push has been open.
    gap_since: Option<Millis>,
    /// Stored deadlines.
    timers: Timers,
    /// The app asked for older history ([`Client::load_older`]).
    want_history: bool,
    /// The current interval of cursor refreshes (see [`Timer::Refresh`]).
    refresh_every: Millis,
    /// Failed connection attempts since the last `welcome` (the backoff).
    attempts: u32,
    /// An auth refusal was retried with a fresh token since the last `welcome`.
    auth_retried: bool,
    /// What the platform last said about the network.
    network_online: bool,
    /// When the last ping went out on this connection.
    last_ping: Millis,
    /// The status last reported with [`ClientOutput::Link`].
    reported: Option<LinkStatus>,
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
            conn_epoch: 0,
            gap_since: None,
            timers: Timers::default(),
            want_history: false,
            hello_from: None,
            refresh_every: config.status_refresh,
            attempts: 0,
            auth_retried: false,
            network_online: true,
            last_ping: 0,
            reported: None,
            fresh_pending: false,
            ack: AckState {
                rto: config.rto_initial,
                ..AckState::default()
            },
            strikes: 0,
            diverged: false,
            cfg: config,
        };
        // Connect at the first call.
        c.timers.set(Timer::Reconnect, 0);
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
                    inbox.buffer.insert(
                        m.seq,
                        Held {
                            msg: m,
                            written: true,
                            conn: 0,
                        },
                    );
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
            for mut entry in outbox {
                // A restored entry is sent again, confirmed or not: the seq of
                // a confirmation is not persisted (older versions did persist
                // it, but a server restored from a backup may have lost it
                // since); the server answers a resend with the seq it has.
                entry.seq = None;
                entry.at = None;
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
        self.persist(
            ClientWrite::PutOutbox(entry),
            Effect::Outbox { id: id.clone() },
        );
        self.drive(now);
        Ok(id)
    }

    /// Queues a message under an id the caller chose (a ULID, e.g. made by
    /// another tab of this device that relays its `send` through this one),
    /// validated like [`Client::send`]. Idempotent: an id already in the
    /// outbox or held in the inbox is not queued again (`Ok(id)`, no write;
    /// its status follows as usual). An id that is not a ULID is refused with
    /// [`ClientError::BadMessageId`].
    pub fn send_with_id(
        &mut self,
        now: Millis,
        id: &str,
        body: impl Into<String>,
    ) -> Result<String, ClientError> {
        let body = body.into();
        if body.len() > limits::MAX_BODY_BYTES {
            return Err(ClientError::BodyTooLarge {
                len: body.len(),
                max: limits::MAX_BODY_BYTES,
            });
        }
        // The ulid crate wraps a first character above '7' (over 128 bits)
        // instead of refusing it: only a round trip proves a ULID.
        let parsed = ulid::Ulid::from_string(id)
            .ok()
            .filter(|u| u.to_string().eq_ignore_ascii_case(id))
            .ok_or_else(|| ClientError::BadMessageId { id: id.to_owned() })?;
        // Canonical (upper-case) spelling, as the core's own ids.
        let id = parsed.to_string();
        let held = self.inbox.as_ref().is_some_and(|i| {
            i.buffer.values().any(|h| {
                h.msg.id == id && h.msg.user == self.cfg.user && h.msg.device == self.cfg.device
            })
        });
        if self.outbox.contains_id(&id) || held {
            return Ok(id);
        }
        // The core's own ids continue after this one.
        self.last_id = self
            .last_id
            .max(Some((parsed.timestamp_ms(), parsed.random())));
        self.last_created = self.last_created.max(now);
        let entry = OutboxEntry {
            id: id.clone(),
            body,
            created: self.last_created,
            seq: None,
            at: None,
        };
        self.outbox.insert(entry.clone(), false);
        self.persist(
            ClientWrite::PutOutbox(entry),
            Effect::Outbox { id: id.clone() },
        );
        self.drive(now);
        Ok(id)
    }

    /// A ULID: 48 bits of time, 80 random bits, monotonic within this session.
    fn next_id(&mut self, now: Millis) -> String {
        let ms = now & ((1 << 48) - 1);
        let mask80: u128 = (1 << 80) - 1;
        let (ms, rand) = match self.last_id {
            // Same (or earlier) millisecond: count up, as ULID's monotonic mode does.
            Some((last_ms, last_rand)) if ms <= last_ms && last_rand < mask80 => {
                (last_ms, last_rand + 1)
            }
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
    /// with the latest page). `Ok(false)` when history is already complete;
    /// `Ok(true)` when a page was asked for: [`ClientOutput::History`] or
    /// [`ClientOutput::HistoryFailed`] follows, never neither.
    /// [`ClientError::Offline`] when not connected (nothing is asked).
    pub fn load_older(&mut self, now: Millis) -> Result<bool, ClientError> {
        let more = self.inbox.as_ref().is_some_and(|i| i.oldest.is_some());
        if !more {
            return Ok(false);
        }
        if self.link != Link::Ready || self.diverged {
            return Err(ClientError::Offline);
        }
        self.want_history = true;
        self.drive(now);
        Ok(true)
    }

    /// Drops the stored inbox and starts again as a fresh device (the repair
    /// after [`ClientError::Diverged`]). The outbox is kept.
    pub fn reset_inbox(&mut self, now: Millis) {
        self.inbox = None;
        self.fail_history(ClientError::Offline);
        // Writes of the old inbox still on their way to the disk must not,
        // once durable, surface or acknowledge anything of the new one.
        // A history page among them still ends its request (as a failure).
        for (_, effect) in &mut self.writes {
            if let Effect::Inbox { history, .. } = effect {
                if history.is_some() {
                    self.out
                        .push_back(ClientOutput::HistoryFailed(ClientError::Offline));
                }
                *effect = Effect::None;
            }
        }
        // The old history's head is no target for the new one.
        self.head_auth = 0;
        self.hello_from = None;
        // Pages still streaming from the old inbox's hello are no first page.
        self.fresh_start = None;
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
        self.timers.clear(Timer::SyncFresh);
        self.drive(now);
    }

    /// Feeds one event in. Outputs are collected with [`Client::poll_output`].
    pub fn handle(&mut self, now: Millis, input: ClientInput) {
        // A wall clock stepped back must not push the heartbeat's deadlines
        // (taken from these) far into the future.
        self.last_rx = self.last_rx.min(now);
        self.last_ping = self.last_ping.min(now);
        match input {
            ClientInput::Connected => self.on_connected(now),
            ClientInput::Disconnected { code, reason } => self.on_closed(now, code, reason),
            ClientInput::Network { online } => self.on_network(now, online),
            ClientInput::Frame(bytes) => {
                self.last_rx = now;
                // One frame or a bundle of them, each taken as if alone.
                match ServerFrame::decode_bundle(&bytes) {
                    Ok(frames) => {
                        for decoded in frames {
                            match decoded {
                                Ok(frame) => self.on_frame(now, frame),
                                Err(e) => self
                                    .out
                                    .push_back(ClientOutput::Error(ClientError::Decode(e))),
                            }
                        }
                    }
                    Err(e) => self
                        .out
                        .push_back(ClientOutput::Error(ClientError::Decode(e))),
                }
            }
            ClientInput::Durable { through } => self.on_durable(now, through),
            ClientInput::Timeout => {}
        }
        self.drive(now);
        self.report_link();
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
            Link::Offline => at(self.timers.get(Timer::Reconnect)),
            Link::Auth | Link::Stopped => {}
            Link::Connecting { since } | Link::Hello { since } => {
                at(Some(since.saturating_add(self.cfg.hello_timeout)))
            }
            Link::Ready => {
                at(Some(self.dead_at()));
                at(Some(self.next_ping_at()));
                at(self.timers.next());
                // A hole's grace period matters only while no gap-fill is in
                // flight (an in-flight request has its own deadline).
                if !self.timers.is_set(Timer::SyncForward)
                    && self.inbox.as_ref().is_some_and(|i| !i.buffer.is_empty())
                {
                    at(self.gap_since.map(|g| g.saturating_add(self.cfg.gap_grace)));
                }
                // Sends held back by pacing go when the budget allows.
                let paced_until = self.pacer.as_ref().map(Pacer::next_at);
                at(self
                    .outbox
                    .next_retry()
                    .map(|r| r.max(paced_until.unwrap_or(0))));
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

    /// True while the client knows it is behind and is fetching: below the
    /// head a `welcome` or `batch` announced, holding out-of-order messages,
    /// or waiting for a gap-fill answer.
    pub fn is_catching_up(&self) -> bool {
        self.timers.is_set(Timer::SyncForward)
            || self
                .inbox
                .as_ref()
                .is_some_and(|i| i.written < self.head_auth || !i.buffer.is_empty())
    }

    /// The connection state as the app should show it.
    pub fn link_status(&self) -> LinkStatus {
        self.link.status()
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
                    if theirs.seq == w
                        && theirs.chain != mine
                        && matches!(self.link, Link::Hello { .. } | Link::Ready)
                    {
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
                messages,
                head,
                follows,
                ..
            } => {
                self.note_own(now, &messages);
                self.on_batch(now, messages, head, follows)
            }
            ServerFrame::Delivered { cursors, members } => {
                if self.link != Link::Ready {
                    // Before this connection's welcome has checked that the
                    // server still has our history, its cursors may count
                    // seqs our outbox got from a history since lost (a
                    // restored backup). The welcome carries every cursor.
                    return;
                }
                self.members = self.members.max(members);
                self.merge_cursors(cursors)
            }
            ServerFrame::Error { code, message, id } => self.on_error(now, code, message, id),
            ServerFrame::Pong { .. } => {}
        }
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
                        if s > inbox.durable
                            && (s <= inbox.written || inbox.buffer.contains_key(&s))
                        {
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
                        let more = inbox.oldest.is_some();
                        self.out.push_back(ClientOutput::History { page, more });
                    }
                    if progressed {
                        let unacked = inbox.durable.saturating_sub(self.ack.sent);
                        let due = if unacked >= self.cfg.ack_every {
                            now
                        } else {
                            now.saturating_add(self.cfg.ack_delay)
                        };
                        self.timers.set_earliest(Timer::AckDue, due);
                    }
                }
            }
        }
    }

    /// Fires due timers and starts whatever work is possible now.
    fn drive(&mut self, now: Millis) {
        // Connection timers first: only a welcomed connection carries work.
        if !self.drive_link(now) {
            return;
        }
        self.pump_outbox(now);
        self.plan_sync(now);
        self.maybe_ack(now);
        self.plan_refresh(now);
    }
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
        assert!(a
            .bytes()
            .all(|x| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&x)));
        assert!(a < b && b < d, "{a} {b} {d}");
        // Even at time 0 the first id is random, not a counter.
        let mut c1 = Client::new(ClientConfig::new("ann", "d1"), 1, ClientSnapshot::default());
        let mut c2 = Client::new(ClientConfig::new("ann", "d1"), 2, ClientSnapshot::default());
        assert_ne!(c1.next_id(0), c2.next_id(0));
    }
}
