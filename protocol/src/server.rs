//! The conversation server: the single writer of one conversation.
//!
//! One [`Conversation`] per conversation (in production: per Durable Object).
//! It assigns seqs 1, 2, 3, ..., answers retried sends with the seq they
//! already have, pushes every stored message to every connected member device
//! and keeps it pending until that device acknowledges it, and serves
//! gap-fill and history pages from storage.
//!
//! # Storage: synchronous reads, writes as outputs
//!
//! Reads go through the small synchronous [`ConversationStore`] trait, passed
//! to every call: the Durable Object's SQLite API is synchronous, so the shell
//! implements it with a handful of `SELECT`s and stays thin, and the core never
//! has to park a request while waiting for a read. Writes leave as
//! [`ServerOutput::Persist`] outputs, and the core acts on a write (sends
//! `sent`, pushes the message, announces a cursor) only after the shell reports
//! it with [`ServerInput::Durable`]. The shell must apply every `Persist` to the
//! store before its next call (reads then see it), and must report durability
//! in write order.
//!
//! In the Durable Object the shell executes each `Persist` synchronously and
//! feeds `Durable` right away: the output gate holds every frame sent after a
//! write until the write is durable, so "durable before acting" holds. The
//! simulator instead keeps writes pending for a while and can crash in between,
//! losing them; pages and pushes therefore never go beyond the durable head.
//!
//! Nothing but bookkeeping lives in memory: the head, the chain head, the
//! device cursors and per connection the push window. Message bodies come from
//! the store (plus a small cache of recent messages), and a restarted
//! `Conversation` rebuilds everything from the store; pushes that were pending
//! are derived from the cursors of whoever reconnects.
//!
//! # Driving it
//!
//! ```text
//! let mut conv = Conversation::new(config, seed, &store)?;
//! // socket accepted (auth done outside):  Connected { conn, user, device, resumed: false }
//! // a frame:                              Frame { conn, bytes }
//! // socket gone:                          Disconnected { conn }
//! // alarm fired:                          Timeout
//! conv.handle(now, input, &store);
//! while let Some(out) = conv.poll_output() {
//!     match out {
//!         ServerOutput::Frame { conn, frame } => socket(conn).send(frame.encode()),
//!         ServerOutput::Persist { write, op } => { store.apply(op); last = write }
//!         ServerOutput::Close { conn, code, reason } => socket(conn).close(code, reason),
//!     }
//! }
//! if any writes: conv.handle(now, ServerInput::Durable { through: last }, &store) and drain again
//! alarm.set(conv.poll_timeout());
//! ```
//!
//! After the object is evicted with sockets still open (WebSocket
//! hibernation), build a new `Conversation` from the store and feed
//! `Connected { resumed: true }` for each socket: a resumed connection counts
//! as past its `hello`, and pushes to it restart from the device's cursor.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::bugs::Bugs;
use crate::chain::ChainHash;
use crate::frame::{ClientFrame, Cursor, ErrorCode, Millis, RateLimit, Seq, ServerFrame, StoredMessage, MAX_SEQ};
use crate::limits;
use crate::ranges::RangeSet;
use crate::rng::Rng;
use crate::WriteId;

/// WebSocket close codes the server uses.
pub mod close {
    /// Policy violation: repeated abuse, or the conversation is full.
    pub const POLICY: u16 = 1008;
    /// The same device opened a newer connection.
    pub const REPLACED: u16 = 4001;
    /// Pushes stayed unacknowledged through every retry.
    pub const UNRESPONSIVE: u16 = 4002;
}

/// Identifies one WebSocket; chosen by the shell, opaque to the core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// A storage read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend reported an error.
    #[error("storage failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Failed(_) => "storage_failed",
        }
    }
}

/// Synchronous reads of one conversation's storage. Reads must see every
/// write the shell applied so far, durable or not.
pub trait ConversationStore {
    /// The message with the highest seq, if any.
    fn last(&self) -> Result<Option<StoredMessage>, StoreError>;
    /// The message `device` stored under client message id `id`, if any.
    fn find(&self, device: &str, id: &str) -> Result<Option<StoredMessage>, StoreError>;
    /// Up to `limit` messages with seq > `after`, ascending.
    fn after(&self, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError>;
    /// The `limit` messages just below `before` (seq < `before`), ascending.
    fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError>;
    /// Every device's cursor.
    fn cursors(&self) -> Result<Vec<Cursor>, StoreError>;
}

/// A storage write the shell must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerWrite {
    /// Insert a new message (its seq is the previous head + 1).
    Append(StoredMessage),
    /// Insert or raise a device's cursor (it never moves back).
    Cursor(Cursor),
}

/// Events the shell feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerInput {
    /// An authenticated socket for `user` on `device` was accepted.
    Connected {
        /// The shell's id for the socket.
        conn: ConnId,
        /// The authenticated user.
        user: String,
        /// The authenticated device.
        device: String,
        /// True when re-registering a socket that survived an eviction.
        resumed: bool,
    },
    /// The socket closed (either side).
    Disconnected {
        /// Which socket.
        conn: ConnId,
    },
    /// A WebSocket message arrived (text frames as their UTF-8 bytes).
    Frame {
        /// Which socket.
        conn: ConnId,
        /// The message bytes.
        bytes: Vec<u8>,
    },
    /// Every write up to and including `through` is durable.
    Durable {
        /// The last durable write.
        through: WriteId,
    },
    /// The alarm from [`Conversation::poll_timeout`] fired.
    Timeout,
}

/// What the server asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send `frame` on `conn`.
    Frame {
        /// Target socket.
        conn: ConnId,
        /// The frame.
        frame: ServerFrame,
    },
    /// Apply this write to storage, then report it with [`ServerInput::Durable`].
    Persist {
        /// Its id; ids increase by one per write.
        write: WriteId,
        /// The write.
        op: ServerWrite,
    },
    /// Close `conn` with this WebSocket close code and reason. The core has
    /// already forgotten the connection.
    Close {
        /// Target socket.
        conn: ConnId,
        /// WebSocket close code (see [`close`]).
        code: u16,
        /// Short human-readable reason.
        reason: String,
    },
}

/// Tunables of a conversation. [`ServerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Conversation id (echoed in `welcome`).
    pub conversation: String,
    /// Most distinct users; a new user beyond it is refused.
    pub max_members: usize,
    /// Most pushes beyond a device's cumulative ack (its pending window).
    pub window: u64,
    /// Most sends of one device awaiting durability at once.
    pub max_unconfirmed_sends: usize,
    /// First push retransmission timeout.
    pub rto_initial: Millis,
    /// Largest push retransmission timeout.
    pub rto_max: Millis,
    /// Retransmissions of unacknowledged pushes before closing the connection.
    pub max_retries: u32,
    /// How long cursor changes are coalesced into one `delivered` notice.
    pub delivered_delay: Millis,
    /// Latest-page size for `hello` without `after`.
    pub fresh_page: u32,
    /// Byte budget of one `batch` or `push` frame's messages.
    pub page_bytes: usize,
    /// Token bucket: frames a connection may send in a burst.
    pub rate_burst: u64,
    /// Token bucket: sustained frames per second.
    pub rate_per_sec: u64,
    /// Protocol violations after which the connection is closed with 1008.
    pub abuse_limit: u32,
    /// Recent messages kept in memory for pushes.
    pub cache: usize,
    /// Test-only deliberate mistakes (inert without the `sim-bugs` feature).
    #[doc(hidden)]
    pub bugs: Bugs,
}

impl ServerConfig {
    /// Defaults for conversation `id`.
    pub fn new(conversation: impl Into<String>) -> ServerConfig {
        ServerConfig {
            conversation: conversation.into(),
            max_members: limits::MAX_MEMBERS,
            window: 256,
            max_unconfirmed_sends: 64,
            rto_initial: 1_000,
            rto_max: 30_000,
            max_retries: 6,
            delivered_delay: 50,
            fresh_page: 50,
            page_bytes: limits::PAGE_BYTES,
            rate_burst: 2_000,
            rate_per_sec: 1_000,
            abuse_limit: 20,
            cache: 512,
            bugs: Bugs::default(),
        }
    }
}

/// A snapshot of the conversation for monitoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStats {
    /// Highest assigned seq (durable or not).
    pub head: Seq,
    /// Highest durable seq (what clients can see).
    pub durable_head: Seq,
    /// Open connections.
    pub connections: usize,
    /// Devices that ever joined.
    pub devices: usize,
    /// Distinct users that ever joined.
    pub members: usize,
    /// Pushes sent and not yet acknowledged, over all connections.
    pub pending_pushes: u64,
}

#[derive(Debug, Clone)]
struct Device {
    user: String,
    /// Highest cumulative ack received.
    through: Seq,
    /// Highest cumulative ack known durable.
    persisted: Seq,
}

#[derive(Debug, Clone)]
struct Conn {
    user: String,
    device: String,
    ready: bool,
    /// Messages up to here reach this connection through pages, later ones by push.
    live_from: Seq,
    next_push: Seq,
    sacked: RangeSet,
    resend_at: Option<Millis>,
    retries: u32,
    /// Token bucket, in thousandths of a frame.
    tokens: u64,
    refilled_at: Millis,
    strikes: u32,
}

#[derive(Debug, Clone)]
enum Effect {
    Append(Seq),
    Cursor { device: String, through: Seq },
}

/// The state machine of one conversation. See the module docs.
#[derive(Debug)]
pub struct Conversation {
    cfg: ServerConfig,
    rng: Rng,
    head: Seq,
    chain: ChainHash,
    last_at: Millis,
    durable_head: Seq,
    durable_chain: ChainHash,
    next_write: u64,
    writes: VecDeque<(WriteId, Effect)>,
    /// (device, client id) -> seq for appends not yet durable.
    unconfirmed: HashMap<(String, String), Seq>,
    /// Appended, not yet durable.
    pending: BTreeMap<Seq, StoredMessage>,
    recent: BTreeMap<Seq, StoredMessage>,
    devices: BTreeMap<String, Device>,
    dirty: BTreeSet<String>,
    delivered_due: Option<Millis>,
    conns: BTreeMap<ConnId, Conn>,
    by_device: HashMap<String, ConnId>,
    out: VecDeque<ServerOutput>,
}

fn encoded_len(m: &StoredMessage) -> usize {
    serde_json::to_string(m).map(|s| s.len()).unwrap_or(usize::MAX / 2)
}

fn backoff(initial: Millis, max: Millis, attempt: u32) -> Millis {
    let factor = 1u64.checked_shl(attempt.min(20)).unwrap_or(u64::MAX);
    initial.saturating_mul(factor).min(max).max(1)
}

impl Conversation {
    /// Rebuilds the conversation from its storage (empty storage: a new one).
    /// Everything in the store is taken as durable.
    pub fn new(
        config: ServerConfig,
        seed: u64,
        store: &dyn ConversationStore,
    ) -> Result<Conversation, StoreError> {
        let last = store.last()?;
        let (head, chain, last_at) = match &last {
            Some(m) => (m.seq, m.chain, m.at),
            None => (0, ChainHash::GENESIS, 0),
        };
        let devices = store
            .cursors()?
            .into_iter()
            .map(|c| {
                (
                    c.device,
                    Device {
                        user: c.user,
                        through: c.through.min(head),
                        persisted: c.through.min(head),
                    },
                )
            })
            .collect();
        Ok(Conversation {
            cfg: config,
            rng: Rng::new(seed),
            head,
            chain,
            last_at,
            durable_head: head,
            durable_chain: chain,
            next_write: 0,
            writes: VecDeque::new(),
            unconfirmed: HashMap::new(),
            pending: BTreeMap::new(),
            recent: BTreeMap::new(),
            devices,
            dirty: BTreeSet::new(),
            delivered_due: None,
            conns: BTreeMap::new(),
            by_device: HashMap::new(),
            out: VecDeque::new(),
        })
    }

    /// Feeds one event in; collect outputs with [`Conversation::poll_output`].
    pub fn handle(&mut self, now: Millis, input: ServerInput, store: &dyn ConversationStore) {
        match input {
            ServerInput::Connected {
                conn,
                user,
                device,
                resumed,
            } => self.on_connected(now, conn, user, device, resumed, store),
            ServerInput::Disconnected { conn } => self.forget(conn),
            ServerInput::Frame { conn, bytes } => self.on_frame(now, conn, &bytes, store),
            ServerInput::Durable { through } => self.on_durable(now, through, store),
            ServerInput::Timeout => {}
        }
        self.on_timers(now, store);
    }

    /// The next output, if any. Call until `None` after every `handle`.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// When to call `handle(now, ServerInput::Timeout, ..)` next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        self.conns
            .values()
            .filter_map(|c| c.resend_at)
            .chain(self.delivered_due)
            .min()
    }

    /// Monitoring numbers.
    pub fn stats(&self) -> ServerStats {
        let users: BTreeSet<&str> = self.devices.values().map(|d| d.user.as_str()).collect();
        let pending_pushes = self
            .conns
            .values()
            .map(|c| {
                let floor = self.floor(c);
                c.sacked
                    .gaps(floor + 1, c.next_push.saturating_sub(1))
                    .iter()
                    .map(|g| g[1] - g[0] + 1)
                    .sum::<u64>()
            })
            .sum();
        ServerStats {
            head: self.head,
            durable_head: self.durable_head,
            connections: self.conns.len(),
            devices: self.devices.len(),
            members: users.len(),
            pending_pushes,
        }
    }

    fn floor(&self, c: &Conn) -> Seq {
        let through = self.devices.get(&c.device).map_or(0, |d| d.through);
        through.max(c.live_from)
    }

    fn persist(&mut self, op: ServerWrite, effect: Effect) {
        self.next_write += 1;
        let write = WriteId(self.next_write);
        self.writes.push_back((write, effect));
        self.out.push_back(ServerOutput::Persist { write, op });
    }

    fn frame(&mut self, conn: ConnId, frame: ServerFrame) {
        self.out.push_back(ServerOutput::Frame { conn, frame });
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: impl Into<String>, id: Option<String>) {
        self.frame(
            conn,
            ServerFrame::Error {
                code,
                message: message.into(),
                id,
            },
        );
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        self.forget(conn);
        self.out.push_back(ServerOutput::Close {
            conn,
            code,
            reason: reason.to_owned(),
        });
    }

    fn forget(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.remove(&conn) {
            if self.by_device.get(&c.device) == Some(&conn) {
                self.by_device.remove(&c.device);
            }
        }
    }

    /// Counts a protocol violation; too many close the connection.
    fn strike(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.strikes += 1;
        if c.strikes >= self.cfg.abuse_limit {
            self.close(conn, close::POLICY, "too many protocol violations");
        }
    }

    fn on_connected(
        &mut self,
        now: Millis,
        conn: ConnId,
        user: String,
        device: String,
        resumed: bool,
        store: &dyn ConversationStore,
    ) {
        if let Some(old) = self.by_device.get(&device).copied() {
            if old != conn {
                self.close(old, close::REPLACED, "replaced by a newer connection");
            }
        }
        if !self.devices.contains_key(&device) {
            let users: BTreeSet<&str> = self.devices.values().map(|d| d.user.as_str()).collect();
            if !users.contains(user.as_str()) && users.len() >= self.cfg.max_members {
                self.error(
                    conn,
                    ErrorCode::TooManyMembers,
                    format!("the conversation has {} members already", users.len()),
                    None,
                );
                self.out.push_back(ServerOutput::Close {
                    conn,
                    code: close::POLICY,
                    reason: "conversation is full".into(),
                });
                return;
            }
            self.devices.insert(
                device.clone(),
                Device {
                    user: user.clone(),
                    through: 0,
                    persisted: 0,
                },
            );
            self.persist(
                ServerWrite::Cursor(Cursor {
                    user: user.clone(),
                    device: device.clone(),
                    through: 0,
                }),
                Effect::Cursor {
                    device: device.clone(),
                    through: 0,
                },
            );
        }
        let through = self.devices.get(&device).map_or(0, |d| d.through);
        self.conns.insert(
            conn,
            Conn {
                user,
                device: device.clone(),
                ready: resumed,
                live_from: through,
                next_push: through + 1,
                sacked: RangeSet::new(),
                resend_at: None,
                retries: 0,
                tokens: self.cfg.rate_burst.saturating_mul(1000),
                refilled_at: now,
                strikes: 0,
            },
        );
        self.by_device.insert(device, conn);
        if resumed {
            self.pump(now, conn, store);
        }
    }

    fn on_frame(&mut self, now: Millis, conn: ConnId, bytes: &[u8], store: &dyn ConversationStore) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Token bucket: refill by elapsed time, one token per frame.
        let elapsed = now.saturating_sub(c.refilled_at);
        c.refilled_at = now;
        let cap = self.cfg.rate_burst.saturating_mul(1000);
        c.tokens = c
            .tokens
            .saturating_add(elapsed.saturating_mul(self.cfg.rate_per_sec))
            .min(cap);
        let limited = c.tokens < 1000;
        if !limited {
            c.tokens -= 1000;
        }
        let ready = c.ready;
        let frame = match ClientFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.frame(conn, ServerFrame::from_decode_error(&e));
                self.strike(conn);
                return;
            }
        };
        let id = match &frame {
            ClientFrame::Send { id, .. } => Some(id.clone()),
            _ => None,
        };
        if limited {
            self.error(conn, ErrorCode::RateLimited, "too many frames; slow down", id);
            self.strike(conn);
            return;
        }
        if !ready && !matches!(frame, ClientFrame::Hello { .. } | ClientFrame::Ping { .. }) {
            self.error(conn, ErrorCode::NotReady, "send hello first", id);
            self.strike(conn);
            return;
        }
        match frame {
            ClientFrame::Hello { after, .. } => self.on_hello(now, conn, after, store),
            ClientFrame::Send { id, body } => self.on_send(now, conn, id, body, store),
            ClientFrame::Ack { seq, ranges } => self.on_ack(now, conn, seq, &ranges, store),
            ClientFrame::Sync {
                after,
                before,
                limit,
            } => self.on_sync(conn, after, before, limit, store),
            // Read markers are accepted and not (yet) tracked.
            ClientFrame::Read { .. } => {}
            ClientFrame::Ping { nonce } => self.frame(conn, ServerFrame::Pong { nonce }),
        }
    }

    fn cursor_list(&self) -> Vec<Cursor> {
        self.devices
            .iter()
            .map(|(device, d)| Cursor {
                user: d.user.clone(),
                device: device.clone(),
                through: d.persisted,
            })
            .collect()
    }

    fn on_hello(&mut self, now: Millis, conn: ConnId, after: Option<Seq>, store: &dyn ConversationStore) {
        let head = self.durable_head;
        let cursors = self.cursor_list();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.ready = true;
        c.live_from = head;
        c.next_push = head + 1;
        c.sacked = RangeSet::new();
        c.resend_at = None;
        c.retries = 0;
        let (user, device) = (c.user.clone(), c.device.clone());
        self.frame(
            conn,
            ServerFrame::Welcome {
                conversation: self.cfg.conversation.clone(),
                user,
                device,
                head,
                chain: self.durable_chain,
                cursors,
                now,
                rate: Some(RateLimit {
                    per_sec: self.cfg.rate_per_sec,
                    burst: self.cfg.rate_burst,
                }),
            },
        );
        match after {
            Some(w) if w < head => self.stream_after(conn, w, head + 1, limits::MAX_PAGE, store),
            Some(_) => {}
            None => {
                let page = self.page_before(head + 1, self.cfg.fresh_page, store);
                self.answer_page(conn, page, false);
            }
        }
        self.pump(now, conn, store);
    }

    /// Up to `limit` durable messages with `after < seq < upper`, trimmed to the
    /// byte budget; and whether more exist below `upper`.
    fn page_after(
        &self,
        after: Seq,
        upper: Seq,
        limit: u32,
        store: &dyn ConversationStore,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let upper = upper.min(self.durable_head + 1);
        if after.saturating_add(1) >= upper {
            return Ok((Vec::new(), false));
        }
        let limit = limit.clamp(1, limits::MAX_PAGE);
        store.after(after, limit).map(|msgs| {
            let mut page = Vec::new();
            let mut bytes = 0;
            for m in msgs {
                if m.seq >= upper || m.seq <= after {
                    break;
                }
                if page.last().is_some_and(|p: &StoredMessage| p.seq + 1 != m.seq) {
                    break; // never hand out a page with a hole
                }
                let len = encoded_len(&m);
                if !page.is_empty() && bytes + len > self.cfg.page_bytes {
                    break;
                }
                bytes += len;
                page.push(m);
            }
            let more = page.last().is_some_and(|m| m.seq + 1 < upper);
            (page, more)
        })
    }

    /// The latest durable messages below `before`, trimmed to the byte budget
    /// (keeping the newest); and whether older ones exist.
    fn page_before(
        &self,
        before: Seq,
        limit: u32,
        store: &dyn ConversationStore,
    ) -> Result<(Vec<StoredMessage>, bool), StoreError> {
        let before = before.min(self.durable_head + 1);
        let limit = limit.clamp(1, limits::MAX_PAGE);
        store.before(before, limit).map(|msgs| {
            let mut page: Vec<StoredMessage> = Vec::new();
            let mut bytes = 0;
            for m in msgs.into_iter().rev() {
                if m.seq >= before {
                    continue;
                }
                if page.last().is_some_and(|p| p.seq != m.seq + 1) {
                    break;
                }
                let len = encoded_len(&m);
                if !page.is_empty() && bytes + len > self.cfg.page_bytes {
                    break;
                }
                bytes += len;
                page.push(m);
            }
            page.reverse();
            let more = page.first().is_some_and(|m| m.seq > 1);
            (page, more)
        })
    }

    fn on_sync(
        &mut self,
        conn: ConnId,
        after: Option<Seq>,
        before: Option<Seq>,
        limit: u32,
        store: &dyn ConversationStore,
    ) {
        let head = self.durable_head;
        match (after, before) {
            (Some(a), b) => self.stream_after(conn, a, b.unwrap_or(MAX_SEQ).min(head + 1), limit, store),
            (None, Some(b)) => {
                let page = self.page_before(b, limit, store);
                self.answer_page(conn, page, false);
            }
            (None, None) => {} // rejected by the decoder
        }
    }

    /// Sends a page as a `batch` (`follows` when the next one comes unasked),
    /// or a storage failure as an `internal` error. Returns the page's last
    /// seq when another page follows.
    fn answer_page(
        &mut self,
        conn: ConnId,
        page: Result<(Vec<StoredMessage>, bool), StoreError>,
        may_follow: bool,
    ) -> Option<Seq> {
        match page {
            Ok((messages, more)) => {
                let last = messages.last().map(|m| m.seq).filter(|_| more && may_follow);
                let head = self.durable_head;
                let follows = last.is_some();
                self.frame(conn, ServerFrame::Batch { messages, head, more, follows });
                last
            }
            Err(e) => {
                self.error(conn, ErrorCode::Internal, e.to_string(), None);
                None
            }
        }
    }

    /// Answers a forward gap-fill with up to [`limits::STREAM_PAGES`] consecutive pages
    /// below `upper`, so that a client far behind is not held to one round
    /// trip per page; every page but the last says another `follows`.
    fn stream_after(&mut self, conn: ConnId, after: Seq, upper: Seq, limit: u32, store: &dyn ConversationStore) {
        let mut from = after;
        for pages_left in (0..limits::STREAM_PAGES).rev() {
            let page = self.page_after(from, upper, limit, store);
            match self.answer_page(conn, page, pages_left > 0) {
                Some(last) => from = last,
                None => return,
            }
        }
    }

    fn on_send(&mut self, now: Millis, conn: ConnId, id: String, body: String, store: &dyn ConversationStore) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (user, device) = (c.user.clone(), c.device.clone());
        if !Bugs::on(self.cfg.bugs.server_no_dedup) {
            if self.unconfirmed.contains_key(&(device.clone(), id.clone())) {
                return; // `sent` follows when the write is durable
            }
            match store.find(&device, &id) {
                Err(e) => {
                    self.error(conn, ErrorCode::Internal, e.to_string(), Some(id));
                    return;
                }
                Ok(Some(m)) if m.seq <= self.durable_head => {
                    self.frame(conn, ServerFrame::Sent { id, seq: m.seq, at: m.at });
                    return;
                }
                Ok(Some(_)) => return,
                Ok(None) => {}
            }
        }
        let waiting = self.pending.values().filter(|m| m.device == device).count();
        if waiting >= self.cfg.max_unconfirmed_sends {
            self.error(conn, ErrorCode::WindowFull, "too many unconfirmed sends", Some(id));
            return;
        }
        if self.head >= MAX_SEQ {
            self.error(conn, ErrorCode::Internal, "conversation is out of seqs", Some(id));
            return;
        }
        let seq = self.head + 1;
        let at = now.max(self.last_at);
        let chain = self.chain.next(seq, &user, &device, &id, &body);
        let msg = StoredMessage {
            seq,
            user,
            device: device.clone(),
            id: id.clone(),
            body,
            at,
            chain,
        };
        self.head = seq;
        self.chain = chain;
        self.last_at = at;
        self.unconfirmed.insert((device, id), seq);
        self.pending.insert(seq, msg.clone());
        self.persist(ServerWrite::Append(msg), Effect::Append(seq));
        if Bugs::on(self.cfg.bugs.server_ack_before_persist) {
            self.append_durable(seq);
            self.pump_all(now, store);
        }
    }

    fn on_ack(&mut self, now: Millis, conn: ConnId, seq: Seq, ranges: &[[Seq; 2]], store: &dyn ConversationStore) {
        let head = self.durable_head;
        let seq = if seq > head {
            self.error(conn, ErrorCode::BadFrame, format!("ack {seq} is beyond the head {head}"), None);
            self.strike(conn);
            head
        } else {
            seq
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (user, device) = (c.user.clone(), c.device.clone());
        let Some(d) = self.devices.get_mut(&device) else {
            return;
        };
        if seq > d.through {
            d.through = seq;
            self.persist(
                ServerWrite::Cursor(Cursor {
                    user,
                    device: device.clone(),
                    through: seq,
                }),
                Effect::Cursor {
                    device: device.clone(),
                    through: seq,
                },
            );
            if let Some(c) = self.conns.get_mut(&conn) {
                c.retries = 0;
                c.resend_at = None;
            }
        } else if seq <= d.persisted && seq > 0 {
            // A repeated ack: confirm the cursor so the device stops repeating it.
            let cursor = Cursor {
                user,
                device: device.clone(),
                through: d.persisted,
            };
            self.frame(conn, ServerFrame::Delivered { cursors: vec![cursor] });
        }
        let floor = self.conns.get(&conn).map_or(0, |c| self.floor(c));
        if let Some(c) = self.conns.get_mut(&conn) {
            let top = c.next_push.saturating_sub(1);
            for [lo, hi] in ranges {
                c.sacked.insert_range(*lo, (*hi).min(top));
            }
            c.sacked.remove_through(floor);
        }
        self.pump(now, conn, store);
    }

    fn on_durable(&mut self, now: Millis, through: WriteId, store: &dyn ConversationStore) {
        let mut any = false;
        while self.writes.front().is_some_and(|(w, _)| *w <= through) {
            let Some((_, effect)) = self.writes.pop_front() else {
                break;
            };
            match effect {
                Effect::Append(seq) => {
                    self.append_durable(seq);
                    any = true;
                }
                Effect::Cursor { device, through } => {
                    if let Some(d) = self.devices.get_mut(&device) {
                        d.persisted = d.persisted.max(through);
                    }
                    self.dirty.insert(device);
                    let due = now.saturating_add(self.cfg.delivered_delay);
                    self.delivered_due.get_or_insert(due);
                }
            }
        }
        if any {
            self.pump_all(now, store);
        }
    }

    /// A message's write is durable: confirm it to its sender.
    fn append_durable(&mut self, seq: Seq) {
        if seq <= self.durable_head {
            return;
        }
        let Some(msg) = self.pending.remove(&seq) else {
            return;
        };
        self.durable_head = seq;
        self.durable_chain = msg.chain;
        self.unconfirmed.remove(&(msg.device.clone(), msg.id.clone()));
        if let Some(conn) = self.by_device.get(&msg.device).copied() {
            if self.conns.get(&conn).is_some_and(|c| c.ready) {
                self.frame(
                    conn,
                    ServerFrame::Sent {
                        id: msg.id.clone(),
                        seq,
                        at: msg.at,
                    },
                );
            }
        }
        self.recent.insert(seq, msg);
        while self.recent.len() > self.cfg.cache {
            self.recent.pop_first();
        }
    }

    /// Durable messages `from..=to` from the cache or the store.
    fn load(&self, from: Seq, to: Seq, store: &dyn ConversationStore) -> Vec<StoredMessage> {
        let to = to.min(self.durable_head);
        if from > to {
            return Vec::new();
        }
        if self.recent.first_key_value().is_some_and(|(&k, _)| k <= from) {
            return self.recent.range(from..=to).map(|(_, m)| m.clone()).collect();
        }
        let n = u32::try_from(to - from + 1).unwrap_or(u32::MAX).min(limits::MAX_PAGE);
        match store.after(from - 1, n) {
            Ok(v) => v.into_iter().filter(|m| m.seq >= from && m.seq <= to).collect(),
            // Left to the retransmission timer (or to gap-fill).
            Err(_) => Vec::new(),
        }
    }

    fn push_frames(&mut self, conn: ConnId, msgs: Vec<StoredMessage>) {
        let mut frame = Vec::new();
        let mut bytes = 0;
        for m in msgs {
            let len = encoded_len(&m);
            if !frame.is_empty() && bytes + len > self.cfg.page_bytes {
                self.frame(conn, ServerFrame::Push { messages: std::mem::take(&mut frame) });
                bytes = 0;
            }
            bytes += len;
            frame.push(m);
        }
        if !frame.is_empty() {
            self.frame(conn, ServerFrame::Push { messages: frame });
        }
    }

    fn pump_all(&mut self, now: Millis, store: &dyn ConversationStore) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.pump(now, conn, store);
        }
    }

    /// Pushes whatever the window allows, and arms the resend timer.
    fn pump(&mut self, now: Millis, conn: ConnId, store: &dyn ConversationStore) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.ready {
            return;
        }
        let floor = self.floor(c);
        let next = c.next_push.max(floor + 1);
        let limit = self.durable_head.min(floor.saturating_add(self.cfg.window));
        let mut sent_to = next.saturating_sub(1);
        if next <= limit {
            let msgs = self.load(next, limit, store);
            // Only a gap-free run starting at `next` advances the window.
            let mut run = Vec::new();
            for m in msgs {
                if m.seq != sent_to + 1 {
                    break;
                }
                sent_to = m.seq;
                run.push(m);
            }
            self.push_frames(conn, run);
        }
        let initial = self.cfg.rto_initial;
        let max = self.cfg.rto_max;
        let jitter_base = backoff(initial, max, 0);
        let jitter = self.rng.range(0, jitter_base / 5);
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.next_push = sent_to + 1;
        // Selectively acknowledged pushes still count: a selective ack is
        // advisory (the device may drop what it buffered), so the timer runs
        // until the cumulative ack covers everything pushed.
        let pending = sent_to > floor;
        if !pending {
            c.resend_at = None;
        } else if c.resend_at.is_none() {
            c.resend_at = Some(now.saturating_add(backoff(initial, max, c.retries) + jitter));
        }
    }

    fn on_timers(&mut self, now: Millis, store: &dyn ConversationStore) {
        if self.delivered_due.is_some_and(|d| d <= now) {
            self.delivered_due = None;
            let dirty = std::mem::take(&mut self.dirty);
            let cursors: Vec<Cursor> = dirty
                .iter()
                .filter_map(|device| {
                    self.devices.get(device).map(|d| Cursor {
                        user: d.user.clone(),
                        device: device.clone(),
                        through: d.persisted,
                    })
                })
                .collect();
            if !cursors.is_empty() {
                let ready: Vec<ConnId> = self.conns.iter().filter(|(_, c)| c.ready).map(|(k, _)| *k).collect();
                for conn in ready {
                    self.frame(
                        conn,
                        ServerFrame::Delivered {
                            cursors: cursors.clone(),
                        },
                    );
                }
            }
        }
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.resend_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for conn in due {
            self.resend(now, conn, store);
        }
    }

    fn resend(&mut self, now: Millis, conn: ConnId, store: &dyn ConversationStore) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let floor = self.floor(c);
        let top = c.next_push.saturating_sub(1);
        if top <= floor {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.resend_at = None;
            }
            return;
        }
        let mut gaps = c.sacked.gaps(floor + 1, top);
        if gaps.is_empty() {
            // Everything is acknowledged selectively but not cumulatively:
            // probe with the lowest one. A device that still holds it answers
            // with an ack; one that dropped it stores it and moves on.
            gaps.push([floor + 1, floor + 1]);
        }
        let retries = c.retries + 1;
        if c.retries >= self.cfg.max_retries {
            // Leave the rest to gap-fill when the device reconnects.
            self.close(conn, close::UNRESPONSIVE, "pushes were not acknowledged");
            return;
        }
        let mut msgs = Vec::new();
        for [lo, hi] in gaps {
            msgs.extend(self.load(lo, hi, store));
        }
        self.push_frames(conn, msgs);
        let wait = backoff(self.cfg.rto_initial, self.cfg.rto_max, retries);
        let jitter = self.rng.range(0, wait / 5);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.retries = retries;
            c.resend_at = Some(now.saturating_add(wait + jitter));
        }
    }
}
