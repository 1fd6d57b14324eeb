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

use crate::backoff::backoff;
use crate::bucket::TokenBucket;
use crate::bugs::Bugs;
use crate::chain::ChainHash;
use crate::frame::{
    ChainAt, ClientFrame, Cursor, DecodeError, ErrorCode, Millis, RateLimit, Seq, ServerFrame,
    StoredMessage, Ticket, MAX_SEQ, REPLACEMENT_CHAR,
};
use crate::limits;
use crate::ranges::RangeSet;
use crate::rng::Rng;
use crate::WriteId;

/// WebSocket close codes the server uses.
pub mod close {
    /// Policy violation: repeated abuse.
    pub const POLICY: u16 = 1008;
    /// A new user would exceed the member limit (after a `too_many_members`
    /// error): do not reconnect, the answer would be the same.
    pub const CONVERSATION_FULL: u16 = 4004;
    /// The edge refused the token on the WebSocket upgrade (a 401-class
    /// failure); the reason is the auth error code, e.g. `token_expired`.
    /// Fetch a fresh token once; if that is refused too, stop.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The edge refused the upgrade because the token does not admit the
    /// conversation (reason `forbidden_conversation`): stop.
    pub const FORBIDDEN: u16 = 4403;
    /// The same device opened a newer connection.
    pub const REPLACED: u16 = 4001;
    /// Pushes stayed unacknowledged through every retry, or answers were
    /// not read (their tickets never came back) within the stall timeout.
    pub const UNRESPONSIVE: u16 = 4002;
    /// The connection's token expired: reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4003;
    /// A text message that is not valid UTF-8 (RFC 6455, 7.4.1).
    pub const INVALID_PAYLOAD: u16 = 1007;
}

/// A device, namespaced by its user: `(user, device)`. Device ids are chosen
/// by clients, so two users' devices with the same id must never share a
/// cursor, a dedup key or a connection slot.
pub type DeviceKey = (String, String);

/// What a connection's limits need to survive an eviction of the object
/// (WebSocket hibernation keeps the socket, not the memory). The shell keeps
/// it with the socket (its attachment) whenever [`ServerOutput::Remember`]
/// says so, and hands it back in [`ServerInput::Connected`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnMemo {
    /// Protocol violations so far.
    #[serde(default)]
    pub strikes: u32,
    /// Push retransmissions without cumulative progress.
    #[serde(default)]
    pub retries: u32,
    /// Bytes of answers sent and not yet confirmed by a ticket.
    #[serde(default)]
    pub unread_bytes: u64,
    /// When the oldest of them was sent.
    #[serde(default)]
    pub unread_since: Option<Millis>,
    /// The ticket of the newest of them.
    #[serde(default)]
    pub unread_ticket: Option<Ticket>,
    /// The client's `hello` said it reads bundles (see
    /// [`Conversation::accepts_bundles`]).
    #[serde(default)]
    pub bundles: bool,
}

/// One device's durable record, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// Its cursor (user, device, stored-through).
    pub cursor: Cursor,
    /// When it last connected (0: unknown, e.g. a record from before this
    /// field existed; such a record is kept and stamped at its next connect).
    pub seen: Millis,
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
    /// The message `user`'s `device` stored under client message id `id`, if any.
    fn find(&self, user: &str, device: &str, id: &str)
        -> Result<Option<StoredMessage>, StoreError>;
    /// Up to `limit` messages with seq > `after`, ascending.
    fn after(&self, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError>;
    /// The `limit` messages just below `before` (seq < `before`), ascending.
    fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError>;
    /// Every device's record.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;
}

/// A storage write the shell must carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerWrite {
    /// Insert a new message (its seq is the previous head + 1).
    Append(StoredMessage),
    /// Insert or raise a device's cursor (it never moves back).
    Cursor(Cursor),
    /// A device connected at `at`: insert its record (cursor 0) if missing,
    /// and set its last-seen time.
    Seen {
        /// The device's user.
        user: String,
        /// The device.
        device: String,
        /// When it connected.
        at: Millis,
    },
    /// Delete a device's record (not seen for [`ServerConfig::device_retention`]).
    Forget {
        /// The device's user.
        user: String,
        /// The device.
        device: String,
    },
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
        /// `Some` when re-registering a socket that survived an eviction: the
        /// last [`ServerOutput::Remember`] memo of that socket (or the default
        /// if it had none).
        resumed: Option<ConnMemo>,
        /// When the connection's credentials expire (the token's `exp` plus
        /// clock leeway): the server closes it then with 4003.
        expires: Option<Millis>,
    },
    /// The socket closed (either side).
    Disconnected {
        /// Which socket.
        conn: ConnId,
    },
    /// A WebSocket text message arrived, as its bytes.
    Frame {
        /// Which socket.
        conn: ConnId,
        /// The message bytes.
        bytes: Vec<u8>,
    },
    /// A WebSocket binary message arrived (frames are text only; refused).
    Binary {
        /// Which socket.
        conn: ConnId,
    },
    /// A message too large to be a frame arrived, and the shell refused to
    /// copy it: `len` is (a lower bound of) its size in bytes. Answered like
    /// any oversized frame.
    Oversized {
        /// Which socket.
        conn: ConnId,
        /// Its size in bytes, or a lower bound of it.
        len: usize,
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
    /// Keep `memo` with the socket (replacing the previous one) and pass it
    /// back as `Connected { resumed: Some(memo) }` after an eviction.
    Remember {
        /// The socket.
        conn: ConnId,
        /// What its limits need to survive.
        memo: ConnMemo,
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
    /// How long a device's acknowledged cursor may wait before it is written:
    /// the acks of that time become one cursor write (written at once when
    /// the device's connection closes). 0 writes every advance at once.
    pub cursor_delay: Millis,
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
    /// Most bytes of answers (`welcome`, `batch`) a connection may have sent
    /// and not confirmed by echoing their tickets; further answers wait.
    pub answer_budget: usize,
    /// Answer bytes per second the whole conversation may send (`welcome`,
    /// `batch`), shared in turn by the connections that owe answers: catch-up
    /// never takes more of the object's time than this costs.
    pub answer_rate: u64,
    /// Answer bytes that may go out at once before `answer_rate` applies.
    pub answer_burst: u64,
    /// An answer waiting for budget while older answers stay unconfirmed this
    /// long closes the connection (4002): the client is not reading.
    pub stall_timeout: Millis,
    /// Devices not seen for this long are forgotten (their cursors leave the
    /// conversation; a returning device starts as a new one).
    pub device_retention: Millis,
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
            cursor_delay: 20,
            fresh_page: 50,
            page_bytes: limits::PAGE_BYTES,
            rate_burst: 2_000,
            rate_per_sec: 1_000,
            abuse_limit: 20,
            cache: 512,
            answer_budget: limits::ANSWER_BUDGET,
            answer_rate: limits::ANSWER_RATE,
            answer_burst: limits::PAGE_BYTES as u64,
            stall_timeout: 30_000,
            device_retention: 90 * 24 * 3600 * 1000,
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
    /// Welcomed connections holding unacknowledged pushes with no resend
    /// scheduled: always 0 for a correct server (a lost push would wait
    /// for the device to notice).
    pub unscheduled_resends: usize,
}

#[derive(Debug, Clone)]
struct Device {
    /// Highest cumulative ack received.
    through: Seq,
    /// Highest cumulative ack known durable.
    persisted: Seq,
}

/// A request whose answer is still owed: answers go out only within the
/// connection's answer budget, and a new request replaces an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    /// `hello`: a `welcome`, then the gap-fill or the latest page.
    Hello { after: Option<Seq> },
    /// Forward pages `from < seq < upper`, streamed, `pages_left` at most.
    After {
        from: Seq,
        upper: Seq,
        limit: u32,
        pages_left: usize,
    },
    /// One page just below `before`.
    Before { before: Seq, limit: u32 },
}

/// An answer sent and not yet confirmed by its ticket.
#[derive(Debug, Clone)]
struct Unread {
    ticket: Option<Ticket>,
    bytes: usize,
    at: Millis,
}

#[derive(Debug, Clone)]
struct Conn {
    key: DeviceKey,
    ready: bool,
    /// Messages up to here reach this connection through pages, later ones by push.
    live_from: Seq,
    next_push: Seq,
    sacked: RangeSet,
    resend_at: Option<Millis>,
    retries: u32,
    /// Frames this connection may send (`rate_per_sec`, `rate_burst`).
    frames: TokenBucket,
    strikes: u32,
    request: Option<Request>,
    unread: VecDeque<Unread>,
    unread_bytes: usize,
    expires: Option<Millis>,
    /// The client reads bundles (its `hello` said so).
    bundles: bool,
    /// The memo last handed to the shell.
    memo: ConnMemo,
}

#[derive(Debug, Clone)]
enum Effect {
    Append(Seq),
    Cursor { key: DeviceKey, through: Seq },
    None,
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
    /// (user, device, client id) -> seq for appends not yet durable.
    unconfirmed: HashMap<(String, String, String), Seq>,
    /// Appended, not yet durable.
    pending: BTreeMap<Seq, StoredMessage>,
    recent: BTreeMap<Seq, StoredMessage>,
    devices: BTreeMap<DeviceKey, Device>,
    dirty: BTreeSet<DeviceKey>,
    delivered_due: Option<Millis>,
    /// Devices whose cursor advanced past what was last asked to be written.
    unwritten: BTreeSet<DeviceKey>,
    /// When the cursors in `unwritten` are written.
    cursor_due: Option<Millis>,
    conns: BTreeMap<ConnId, Conn>,
    by_device: HashMap<DeviceKey, ConnId>,
    /// Connections whose memo may have changed during this call.
    touched: BTreeSet<ConnId>,
    /// Answer bytes the conversation may still send (`answer_rate`): answers
    /// cost the object time that live traffic needs too.
    answers: TokenBucket,
    /// Connections owing an answer that wait for `answers`, served in turn.
    answer_queue: VecDeque<ConnId>,
    /// Devices past retention at start, forgotten once the shell has
    /// re-registered the sockets that survived (a connected device is kept).
    expiring: Vec<DeviceKey>,
    out: VecDeque<ServerOutput>,
}

fn encoded_len(m: &StoredMessage) -> usize {
    serde_json::to_string(m)
        .map(|s| s.len())
        .unwrap_or(usize::MAX / 2)
}

/// Envelope and field overhead of a `batch` or `welcome` beyond its list.
const FRAME_OVERHEAD: usize = 160;

/// Rows to read next so that the page's byte budget is probably reached in one
/// more read: estimated from the rows seen so far, never below 8.
fn next_read(want: u32, bytes: usize, rows: usize, budget: usize) -> u32 {
    if rows == 0 {
        return want.min(32);
    }
    let avg = (bytes / rows).max(1);
    let rows_left = budget.saturating_sub(bytes) / avg + 1;
    want.min(u32::try_from(rows_left).unwrap_or(u32::MAX).max(8))
}

/// What a history page asks for: the fields of a `sync` frame, or the
/// parameters of the HTTP history route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageQuery {
    /// Set: the page ascends from `after + 1` (and stays below `before`).
    pub after: Option<Seq>,
    /// With `after`: exclusive upper bound. Alone: the page ends just below
    /// it. Absent: `head + 1`. Never beyond `head + 1` either way.
    pub before: Option<Seq>,
    /// Most messages; clamped to 1..=[`limits::MAX_PAGE`].
    pub limit: u32,
}

/// One page of history, as [`read_page`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Ascending and without a hole.
    pub messages: Vec<StoredMessage>,
    /// The head the page was read under (the `head` given to [`read_page`]).
    pub head: Seq,
    /// Whether messages exist beyond the page in the asked-for direction:
    /// with `after`, between its last message and the upper bound; alone,
    /// below its first message. True when `limit` or the byte budget cut it.
    pub more: bool,
    /// Encoded (JSON) size of its messages.
    pub bytes: usize,
}

/// Reads one history page from `store`: at most `query.limit` messages with
/// seq at most `head`, contiguous, trimmed to `page_bytes` of encoded
/// messages (a first message always fits). An ascending page (`after` set)
/// is cut at its end; a page below `before` is cut at its start, keeping the
/// newest. Rows are read in steps sized from what was read so far, so large
/// messages do not make a page read far more than it returns.
///
/// `head` is the highest seq a page may hold: the core passes its durable
/// head; a reader of a store whose every write is durable (the edge's HTTP
/// history) passes the seq of `store.last()`. The one implementation behind
/// `sync` answers, fresh-device pages and `GET .../messages`.
pub fn read_page(
    store: &dyn ConversationStore,
    head: Seq,
    query: PageQuery,
    page_bytes: usize,
) -> Result<Page, StoreError> {
    let upper = query
        .before
        .map_or(head.saturating_add(1), |b| b.min(head.saturating_add(1)));
    let limit = query.limit.clamp(1, limits::MAX_PAGE);
    let (messages, more, bytes) = match query.after {
        Some(after) => page_after(store, after, upper, limit, page_bytes)?,
        None => page_before(store, upper, limit, page_bytes)?,
    };
    Ok(Page {
        messages,
        head,
        more,
        bytes,
    })
}

/// Appends `m` to a page under construction if it continues it without a
/// hole and fits the byte budget (a first message always fits).
fn fits(
    page: &[StoredMessage],
    bytes: &mut usize,
    m: &StoredMessage,
    ascending: bool,
    budget: usize,
) -> bool {
    let continues = page.last().is_none_or(|p| {
        if ascending {
            p.seq + 1 == m.seq
        } else {
            m.seq + 1 == p.seq
        }
    });
    if !continues {
        return false;
    }
    let len = encoded_len(m);
    if !page.is_empty() && *bytes + len > budget {
        return false;
    }
    *bytes += len;
    true
}

/// Up to `limit` messages with `after < seq < upper`, trimmed to the byte
/// budget; whether more exist below `upper`; and the page's size.
fn page_after(
    store: &dyn ConversationStore,
    after: Seq,
    upper: Seq,
    limit: u32,
    budget: usize,
) -> Result<(Vec<StoredMessage>, bool, usize), StoreError> {
    let mut page: Vec<StoredMessage> = Vec::new();
    let mut bytes = 0;
    let mut from = after;
    'read: while after.saturating_add(1) < upper && (page.len() as u32) < limit {
        let want = limit - page.len() as u32;
        let n = next_read(want, bytes, page.len(), budget);
        let rows = store.after(from, n)?;
        let got = rows.len();
        for m in rows {
            if m.seq >= upper || m.seq <= from || !fits(&page, &mut bytes, &m, true, budget) {
                break 'read;
            }
            from = m.seq;
            page.push(m);
        }
        if got < n as usize {
            break;
        }
    }
    let more = page.last().is_some_and(|m| m.seq + 1 < upper);
    Ok((page, more, bytes))
}

/// The latest messages below `before`, trimmed to the byte budget (keeping
/// the newest); whether older ones exist; and the page's size.
fn page_before(
    store: &dyn ConversationStore,
    before: Seq,
    limit: u32,
    budget: usize,
) -> Result<(Vec<StoredMessage>, bool, usize), StoreError> {
    let mut page: Vec<StoredMessage> = Vec::new();
    let mut bytes = 0;
    let mut below = before;
    'read: while below > 1 && (page.len() as u32) < limit {
        let want = limit - page.len() as u32;
        let n = next_read(want, bytes, page.len(), budget);
        let rows = store.before(below, n)?;
        let got = rows.len();
        for m in rows.into_iter().rev() {
            if m.seq >= below || !fits(&page, &mut bytes, &m, false, budget) {
                break 'read;
            }
            below = m.seq;
            page.push(m);
        }
        if got < n as usize {
            break;
        }
    }
    page.reverse();
    let more = page.first().is_some_and(|m| m.seq > 1);
    Ok((page, more, bytes))
}

impl Conversation {
    /// Rebuilds the conversation from its storage (empty storage: a new one).
    /// Everything in the store is taken as durable. Devices not seen for
    /// [`ServerConfig::device_retention`] before `now` are forgotten at the
    /// first `handle` that is not a resumed `Connected` (their deletes leave
    /// as `Persist` outputs), unless a resumed socket shows them connected.
    pub fn new(
        config: ServerConfig,
        seed: u64,
        now: Millis,
        store: &dyn ConversationStore,
    ) -> Result<Conversation, StoreError> {
        let last = store.last()?;
        let (head, chain, last_at) = match &last {
            Some(m) => (m.seq, m.chain, m.at),
            None => (0, ChainHash::GENESIS, 0),
        };
        let mut devices = BTreeMap::new();
        let mut expired = Vec::new();
        for record in store.devices()? {
            let c = record.cursor;
            let key = (c.user, c.device);
            if record.seen > 0 && record.seen.saturating_add(config.device_retention) < now {
                expired.push(key.clone());
            }
            let through = c.through.min(head);
            devices.insert(
                key,
                Device {
                    through,
                    persisted: through,
                },
            );
        }
        let answers = TokenBucket::new(now, config.answer_rate, config.answer_burst);
        let mut conv = Conversation {
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
            unwritten: BTreeSet::new(),
            cursor_due: None,
            conns: BTreeMap::new(),
            by_device: HashMap::new(),
            touched: BTreeSet::new(),
            expiring: Vec::new(),
            answers,
            answer_queue: VecDeque::new(),
            out: VecDeque::new(),
        };
        conv.expiring = expired;
        Ok(conv)
    }

    /// Feeds one event in; collect outputs with [`Conversation::poll_output`].
    pub fn handle(&mut self, now: Millis, input: ServerInput, store: &dyn ConversationStore) {
        if !matches!(
            input,
            ServerInput::Connected {
                resumed: Some(_),
                ..
            }
        ) {
            self.forget_expired(now);
        }
        match input {
            ServerInput::Connected {
                conn,
                user,
                device,
                resumed,
                expires,
            } => self.on_connected(now, conn, (user, device), resumed, expires, store),
            ServerInput::Disconnected { conn } => self.forget(conn),
            ServerInput::Frame { conn, bytes } => {
                self.on_frame(now, conn, Incoming::Text(&bytes), store)
            }
            ServerInput::Binary { conn } => self.on_frame(now, conn, Incoming::Binary, store),
            ServerInput::Oversized { conn, len } => {
                self.on_frame(now, conn, Incoming::Oversized(len), store)
            }
            ServerInput::Durable { through } => self.on_durable(now, through, store),
            ServerInput::Timeout => {}
        }
        self.on_timers(now, store);
        self.remember_touched();
    }

    /// The next output, if any. Call until `None` after every `handle`.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// When to call `handle(now, ServerInput::Timeout, ..)` next.
    pub fn poll_timeout(&self) -> Option<Millis> {
        let answers_at = (!self.answer_queue.is_empty()).then(|| self.answers.ready_at(1));
        self.conns
            .values()
            .flat_map(|c| [c.resend_at, self.stall_deadline(c), c.expires])
            .flatten()
            .chain(self.delivered_due)
            .chain(self.cursor_due)
            .chain(answers_at)
            .min()
    }

    /// Whether the client on `conn` reads bundles (its `hello` said
    /// `bundles: true`): the shell may then coalesce the frames it sends
    /// there ([`crate::pack_bundles`]); otherwise each goes as a message of
    /// its own.
    pub fn accepts_bundles(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|c| c.bundles)
    }

    /// Monitoring numbers.
    pub fn stats(&self) -> ServerStats {
        let pending: Vec<(u64, bool)> = self
            .conns
            .values()
            .map(|c| {
                let floor = self.floor(c);
                let n = c
                    .sacked
                    .gaps(floor + 1, c.next_push.saturating_sub(1))
                    .iter()
                    .map(|g| g[1] - g[0] + 1)
                    .sum::<u64>();
                (n, c.ready && c.resend_at.is_none())
            })
            .collect();
        let pending_pushes = pending.iter().map(|(n, _)| n).sum();
        let unscheduled_resends = pending
            .iter()
            .filter(|(n, unscheduled)| *n > 0 && *unscheduled)
            .count();
        ServerStats {
            head: self.head,
            durable_head: self.durable_head,
            connections: self.conns.len(),
            devices: self.devices.len(),
            members: self.member_count(),
            pending_pushes,
            unscheduled_resends,
        }
    }

    fn member_count(&self) -> usize {
        self.devices
            .keys()
            .map(|(user, _)| user.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    fn floor(&self, c: &Conn) -> Seq {
        let through = self.devices.get(&c.key).map_or(0, |d| d.through);
        through.max(c.live_from)
    }

    /// When an answer waiting for budget turns into a stall (see
    /// [`ServerConfig::stall_timeout`]).
    fn stall_deadline(&self, c: &Conn) -> Option<Millis> {
        if c.request.is_none() || c.unread_bytes < self.cfg.answer_budget {
            return None;
        }
        c.unread
            .front()
            .map(|u| u.at.saturating_add(self.cfg.stall_timeout))
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

    /// Sends an answer (`welcome` or `batch`) of about `bytes` bytes with a
    /// fresh ticket, counting it against the connection's answer budget.
    fn answer(&mut self, now: Millis, conn: ConnId, mut frame: ServerFrame, bytes: usize) {
        self.answers.spend(u64::try_from(bytes).unwrap_or(u64::MAX));
        let ticket = self.rng.range(1, MAX_SEQ);
        match &mut frame {
            ServerFrame::Welcome { ticket: t, .. } | ServerFrame::Batch { ticket: t, .. } => {
                *t = Some(ticket)
            }
            _ => {}
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.unread.push_back(Unread {
                ticket: Some(ticket),
                bytes,
                at: now,
            });
            c.unread_bytes += bytes;
            self.touched.insert(conn);
        }
        self.frame(conn, frame);
    }

    /// The client echoed `ticket`: it read that answer and every earlier one.
    fn confirm(&mut self, conn: ConnId, ticket: Ticket) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Unknown tickets (forged, or already confirmed) confirm nothing.
        let Some(i) = c.unread.iter().position(|u| u.ticket == Some(ticket)) else {
            return;
        };
        for u in c.unread.drain(..=i) {
            c.unread_bytes = c.unread_bytes.saturating_sub(u.bytes);
        }
        self.touched.insert(conn);
    }

    fn error(
        &mut self,
        conn: ConnId,
        code: ErrorCode,
        message: impl Into<String>,
        id: Option<String>,
    ) {
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
            if self.by_device.get(&c.key) == Some(&conn) {
                self.by_device.remove(&c.key);
            }
            // A closing connection's cursor is written now, not left waiting.
            if self.unwritten.remove(&c.key) {
                self.write_cursor(c.key);
            }
        }
        self.touched.remove(&conn);
        self.answer_queue.retain(|c| *c != conn);
    }

    /// Forgets the devices found past retention at start, except those still
    /// connected through a resumed socket: those count as seen now.
    fn forget_expired(&mut self, now: Millis) {
        for key in std::mem::take(&mut self.expiring) {
            let (user, device) = key.clone();
            if self.by_device.contains_key(&key) {
                self.persist(
                    ServerWrite::Seen {
                        user,
                        device,
                        at: now,
                    },
                    Effect::None,
                );
            } else {
                self.devices.remove(&key);
                self.persist(ServerWrite::Forget { user, device }, Effect::None);
            }
        }
    }

    /// Hands the shell the memo of every connection whose limits changed.
    fn remember_touched(&mut self) {
        for conn in std::mem::take(&mut self.touched) {
            let Some(c) = self.conns.get_mut(&conn) else {
                continue;
            };
            let memo = ConnMemo {
                strikes: c.strikes,
                retries: c.retries,
                unread_bytes: c.unread_bytes as u64,
                unread_since: c.unread.front().map(|u| u.at),
                unread_ticket: c.unread.back().and_then(|u| u.ticket),
                bundles: c.bundles,
            };
            if memo != c.memo {
                c.memo = memo.clone();
                self.out.push_back(ServerOutput::Remember { conn, memo });
            }
        }
    }

    /// Answers a message larger than a frame (`frame_too_large`, a strike).
    fn refuse_oversized(&mut self, conn: ConnId, len: usize) {
        let err = DecodeError::TooLarge {
            len,
            max: limits::MAX_FRAME_BYTES,
        };
        self.frame(conn, ServerFrame::from_decode_error(&err));
        self.strike(conn);
    }

    /// Counts a protocol violation; too many close the connection.
    fn strike(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.strikes += 1;
        self.touched.insert(conn);
        if c.strikes >= self.cfg.abuse_limit {
            self.close(conn, close::POLICY, "too many protocol violations");
        }
    }

    fn on_connected(
        &mut self,
        now: Millis,
        conn: ConnId,
        key: DeviceKey,
        resumed: Option<ConnMemo>,
        expires: Option<Millis>,
        store: &dyn ConversationStore,
    ) {
        if let Some(old) = self.by_device.get(&key).copied() {
            if old != conn {
                self.close(old, close::REPLACED, "replaced by a newer connection");
            }
        }
        let is_new = !self.devices.contains_key(&key);
        if is_new {
            let is_member = self.devices.keys().any(|(user, _)| *user == key.0);
            let members = self.member_count();
            if !is_member && members >= self.cfg.max_members {
                self.error(
                    conn,
                    ErrorCode::TooManyMembers,
                    format!("the conversation has {members} members already"),
                    None,
                );
                self.out.push_back(ServerOutput::Close {
                    conn,
                    code: close::CONVERSATION_FULL,
                    reason: "conversation is full".into(),
                });
                return;
            }
            // A new member's first device starts its user's cursor at the
            // head: what was stored before the user joined counts as
            // delivered to it. Another device of a member starts at 0 and
            // never vouches for what it did not store (see `fresh_request`).
            let joined_at = if is_member { 0 } else { self.durable_head };
            self.devices.insert(
                key.clone(),
                Device {
                    through: joined_at,
                    persisted: 0,
                },
            );
        }
        if resumed.is_none() {
            // Creates the record of a new device (announced like a cursor, so
            // members learn of a new member), and refreshes the retention clock.
            let (user, device) = key.clone();
            let joined_at = self.devices.get(&key).map_or(0, |d| d.through);
            let effect = if is_new {
                Effect::Cursor {
                    key: key.clone(),
                    through: 0,
                }
            } else {
                Effect::None
            };
            self.persist(
                ServerWrite::Seen {
                    user: user.clone(),
                    device: device.clone(),
                    at: now,
                },
                effect,
            );
            if is_new && joined_at > 0 {
                self.persist(
                    ServerWrite::Cursor(Cursor {
                        user,
                        device,
                        through: joined_at,
                    }),
                    Effect::Cursor {
                        key: key.clone(),
                        through: joined_at,
                    },
                );
            }
        }
        let through = self.devices.get(&key).map_or(0, |d| d.through);
        let memo = resumed.clone().unwrap_or_default();
        let mut unread = VecDeque::new();
        if memo.unread_bytes > 0 {
            // One entry stands for what was unconfirmed before the eviction;
            // the client's echo of the newest ticket confirms it.
            unread.push_back(Unread {
                ticket: memo.unread_ticket,
                bytes: usize::try_from(memo.unread_bytes).unwrap_or(usize::MAX),
                at: memo.unread_since.unwrap_or(now),
            });
        }
        self.conns.insert(
            conn,
            Conn {
                key: key.clone(),
                ready: resumed.is_some(),
                live_from: through,
                next_push: through + 1,
                sacked: RangeSet::new(),
                resend_at: None,
                retries: memo.retries,
                frames: TokenBucket::new(now, self.cfg.rate_per_sec, self.cfg.rate_burst),
                strikes: memo.strikes,
                request: None,
                unread_bytes: unread.iter().map(|u| u.bytes).sum(),
                unread,
                expires,
                bundles: memo.bundles,
                memo: memo.clone(),
            },
        );
        self.by_device.insert(key, conn);
        if resumed.is_some() {
            self.pump(now, conn, store);
            // Pushes that were already being retransmitted go out again now:
            // that counts as a retransmission, so a device that never acks is
            // still closed after `max_retries`, however often the object is
            // evicted in between.
            let pending = self
                .conns
                .get(&conn)
                .is_some_and(|c| c.next_push.saturating_sub(1) > self.floor(c));
            // Even the first: the shell rebuilds the core, resumes, then feeds
            // the due alarm, which then finds the resend timer reset.
            if pending {
                if memo.retries >= self.cfg.max_retries {
                    self.close(conn, close::UNRESPONSIVE, "pushes were not acknowledged");
                } else if let Some(c) = self.conns.get_mut(&conn) {
                    c.retries += 1;
                    self.touched.insert(conn);
                }
            }
        }
    }

    /// Takes one frame from the connection's bucket; false when it is empty.
    fn take_token(&mut self, now: Millis, conn: ConnId) -> bool {
        self.conns
            .get_mut(&conn)
            .is_some_and(|c| c.frames.try_take(now, 1))
    }

    /// One WebSocket message, whatever its kind: a frame or a bundle of
    /// them, each handled as if it had come alone (and each taking a token).
    fn on_frame(
        &mut self,
        now: Millis,
        conn: ConnId,
        incoming: Incoming<'_>,
        store: &dyn ConversationStore,
    ) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let bytes = match incoming {
            Incoming::Binary => {
                self.take_token(now, conn);
                self.error(
                    conn,
                    ErrorCode::BadJson,
                    "binary messages are not frames: send JSON as text",
                    None,
                );
                self.strike(conn);
                return;
            }
            // Length first: nothing larger than a frame is parsed at all.
            Incoming::Oversized(len) => {
                self.take_token(now, conn);
                return self.refuse_oversized(conn, len);
            }
            Incoming::Text(bytes) if bytes.len() > limits::MAX_FRAME_BYTES => {
                self.take_token(now, conn);
                return self.refuse_oversized(conn, bytes.len());
            }
            Incoming::Text(bytes) => bytes,
        };
        // RFC 6455: a text message must be UTF-8. A runtime that decoded it
        // already put U+FFFD where bytes were invalid; clients escape a real
        // U+FFFD as \ufffd, so a literal one means invalid input.
        match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains(REPLACEMENT_CHAR) => {}
            _ => {
                self.close(
                    conn,
                    close::INVALID_PAYLOAD,
                    "text frame is not valid UTF-8",
                );
                return;
            }
        }
        match ClientFrame::decode_bundle(bytes) {
            Ok(frames) => {
                for decoded in frames {
                    // A frame of the bundle may have closed the connection.
                    if !self.conns.contains_key(&conn) {
                        return;
                    }
                    let has_token = self.take_token(now, conn);
                    self.on_client_frame(now, conn, decoded, has_token, store);
                }
            }
            Err(e) => {
                self.take_token(now, conn);
                self.frame(conn, ServerFrame::from_decode_error(&e));
                self.strike(conn);
            }
        }
    }

    /// One decoded frame (or why it could not be decoded); `has_token`: the
    /// connection's bucket had a token for it.
    fn on_client_frame(
        &mut self,
        now: Millis,
        conn: ConnId,
        decoded: Result<(ClientFrame, Option<Ticket>), DecodeError>,
        has_token: bool,
        store: &dyn ConversationStore,
    ) {
        let (frame, rx) = match decoded {
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
        if !has_token {
            self.error(
                conn,
                ErrorCode::RateLimited,
                "too many frames; slow down",
                id,
            );
            self.strike(conn);
            return;
        }
        if let Some(ticket) = rx {
            self.confirm(conn, ticket);
        }
        let ready = self.conns.get(&conn).is_some_and(|c| c.ready);
        if !ready && !matches!(frame, ClientFrame::Hello { .. } | ClientFrame::Ping { .. }) {
            self.error(conn, ErrorCode::NotReady, "send hello first", id);
            self.strike(conn);
            return;
        }
        match frame {
            ClientFrame::Hello { after, bundles, .. } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.bundles = bundles;
                    self.touched.insert(conn);
                }
                self.request(conn, Request::Hello { after })
            }
            ClientFrame::Send { id, body, after } => {
                self.on_send(now, conn, id, body, after, store)
            }
            ClientFrame::Ack { seq, ranges } => self.on_ack(now, conn, seq, &ranges, store),
            ClientFrame::Sync {
                after,
                before,
                limit,
            } => self.request(
                conn,
                match (after, before) {
                    (Some(a), b) => Request::After {
                        from: a,
                        upper: b.unwrap_or(MAX_SEQ),
                        limit,
                        pages_left: limits::STREAM_PAGES,
                    },
                    (None, b) => Request::Before {
                        before: b.unwrap_or(MAX_SEQ),
                        limit,
                    },
                },
            ),
            // Read markers are accepted and not (yet) tracked.
            ClientFrame::Read { .. } => {}
            ClientFrame::Ping { nonce } => self.frame(conn, ServerFrame::Pong { nonce }),
        }
        self.serve(now, conn, store);
    }

    /// Records a request; it replaces any answer still owed (the client asked
    /// something new), so requests never stack up.
    fn request(&mut self, conn: ConnId, request: Request) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.request = Some(request);
        }
    }

    /// Whether the connection owes an answer it may send now (a request,
    /// and room in its answer budget).
    fn owes_answer(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.request.is_some() && c.unread_bytes < self.cfg.answer_budget)
    }

    /// Answers the owed request as far as the connection's answer budget and
    /// the conversation's answer rate allow. Connections already waiting for
    /// the answer rate go first: this one queues behind them.
    fn serve(&mut self, now: Millis, conn: ConnId, store: &dyn ConversationStore) {
        if !self.answer_queue.is_empty() {
            if self.owes_answer(conn) && !self.answer_queue.contains(&conn) {
                self.answer_queue.push_back(conn);
            }
            return;
        }
        while self.owes_answer(conn) {
            if self.answers.available(now) == 0 {
                self.answer_queue.push_back(conn);
                return;
            }
            self.answer_once(now, conn, store);
        }
    }

    /// Serves the connections waiting for the answer rate, one answer each
    /// in turn, while the rate allows.
    fn serve_queue(&mut self, now: Millis, store: &dyn ConversationStore) {
        while self.answers.available(now) > 0 {
            let Some(conn) = self.answer_queue.pop_front() else {
                return;
            };
            if !self.owes_answer(conn) {
                continue; // it owes nothing more, or is waiting for its reader
            }
            self.answer_once(now, conn, store);
            if self.owes_answer(conn) {
                self.answer_queue.push_back(conn);
            }
        }
    }

    /// Sends the next answer of the connection's owed request (a welcome or
    /// one page); a streamed request stays owed for its next page.
    fn answer_once(&mut self, now: Millis, conn: ConnId, store: &dyn ConversationStore) {
        let Some(request) = self.conns.get_mut(&conn).and_then(|c| c.request.take()) else {
            return;
        };
        match request {
            Request::Hello { after } => self.on_hello(now, conn, after, store),
            Request::After {
                from,
                upper,
                limit,
                pages_left,
            } => {
                let page = self.page(
                    PageQuery {
                        after: Some(from),
                        before: Some(upper),
                        limit,
                    },
                    store,
                );
                if let Some(last) = self.answer_page(now, conn, page, pages_left > 1) {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        // Unless a newer request came in meanwhile.
                        c.request.get_or_insert(Request::After {
                            from: last,
                            upper,
                            limit,
                            pages_left: pages_left - 1,
                        });
                    }
                }
            }
            Request::Before { before, limit } => {
                let page = self.page(
                    PageQuery {
                        after: None,
                        before: Some(before),
                        limit,
                    },
                    store,
                );
                self.answer_page(now, conn, page, false);
            }
        }
    }

    /// Where a fresh device of `user` starts, and the request that sends it
    /// that page: the latest page if it reaches down to what the user's
    /// devices stored through (`floor`), else one ascending page from
    /// `floor` (not streamed: the device takes its first page as its start;
    /// it gap-fills the rest). So its acks never vouch for messages no device
    /// of its user stored.
    fn fresh_start(
        &self,
        user: &str,
        head: Seq,
        store: &dyn ConversationStore,
    ) -> (Option<Seq>, Option<Request>) {
        let floor = self.user_floor(user);
        let latest = match self.page(
            PageQuery {
                after: None,
                before: Some(head + 1),
                limit: self.cfg.fresh_page,
            },
            store,
        ) {
            Ok(page) => page.messages.first().map(|m| m.seq),
            // Storage failed: no page now; the device says hello again.
            Err(_) => return (None, None),
        };
        match latest {
            None => (
                Some(head + 1),
                Some(Request::Before {
                    before: head + 1,
                    limit: self.cfg.fresh_page,
                }),
            ),
            Some(first) if first <= floor + 1 => (
                Some(first),
                Some(Request::Before {
                    before: head + 1,
                    limit: self.cfg.fresh_page,
                }),
            ),
            Some(_) => (
                Some(floor + 1),
                Some(Request::After {
                    from: floor,
                    upper: head + 1,
                    limit: limits::MAX_PAGE,
                    pages_left: 1,
                }),
            ),
        }
    }

    /// How far some device of `user` stored everything (from where the user
    /// joined): the furthest cursor of its devices.
    fn user_floor(&self, user: &str) -> Seq {
        self.devices
            .iter()
            .filter(|((u, _), _)| u == user)
            .map(|(_, d)| d.through)
            .max()
            .unwrap_or(0)
    }

    /// Per member user (all, or only `users`), the furthest of that user's
    /// devices: what delivery ticks need. Bounded by the member limit, however
    /// many devices ever joined.
    fn user_cursors(&self, users: Option<&BTreeSet<&str>>) -> Vec<Cursor> {
        let mut best: BTreeMap<&str, (&str, Seq)> = BTreeMap::new();
        for ((user, device), d) in &self.devices {
            if users.is_some_and(|users| !users.contains(user.as_str())) {
                continue;
            }
            let e = best
                .entry(user.as_str())
                .or_insert((device.as_str(), d.persisted));
            if d.persisted > e.1 {
                *e = (device.as_str(), d.persisted);
            }
        }
        best.into_iter()
            .map(|(user, (device, through))| Cursor {
                user: user.to_owned(),
                device: device.to_owned(),
                through,
            })
            .collect()
    }

    /// Adds `own`'s cursor to `cursors` unless it is already there (so a
    /// device always learns that its acks arrived).
    fn with_own(&self, mut cursors: Vec<Cursor>, own: &DeviceKey) -> Vec<Cursor> {
        if let Some(d) = self.devices.get(own) {
            if !cursors.iter().any(|c| c.user == own.0 && c.device == own.1) {
                cursors.push(Cursor {
                    user: own.0.clone(),
                    device: own.1.clone(),
                    through: d.persisted,
                });
            }
        }
        cursors
    }

    fn on_hello(
        &mut self,
        now: Millis,
        conn: ConnId,
        after: Option<Seq>,
        store: &dyn ConversationStore,
    ) {
        let head = self.durable_head;
        let after_chain = match after {
            Some(0) => Some(ChainHash::GENESIS),
            Some(w) if w <= head => self.load(w, w, store).first().map(|m| m.chain),
            _ => None,
        }
        .zip(after)
        .map(|(chain, seq)| ChainAt { seq, chain });
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let key = c.key.clone();
        let cursors = self.with_own(self.user_cursors(None), &key);
        let bytes = FRAME_OVERHEAD
            + cursors
                .iter()
                .map(|c| c.user.len() + c.device.len() + 48)
                .sum::<usize>();
        let (start, fresh) = if after.is_none() {
            self.fresh_start(&key.0, head, store)
        } else {
            (None, None)
        };
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.ready = true;
        c.live_from = head;
        c.next_push = head + 1;
        c.sacked = RangeSet::new();
        c.resend_at = None;
        c.retries = 0;
        c.request = match after {
            Some(w) if w < head => Some(Request::After {
                from: w,
                upper: head + 1,
                limit: limits::MAX_PAGE,
                pages_left: limits::STREAM_PAGES,
            }),
            Some(_) => None,
            None => fresh,
        };
        self.touched.insert(conn);
        let (user, device) = key;
        self.answer(
            now,
            conn,
            ServerFrame::Welcome {
                conversation: self.cfg.conversation.clone(),
                user,
                device,
                head,
                chain: self.durable_chain,
                after_chain,
                start,
                cursors,
                members: u32::try_from(self.member_count()).unwrap_or(u32::MAX),
                now,
                rate: Some(RateLimit {
                    per_sec: self.cfg.rate_per_sec,
                    burst: self.cfg.rate_burst,
                }),
                ticket: None,
            },
            bytes,
        );
        self.pump(now, conn, store);
    }

    /// A page of durable messages ([`read_page`] under the durable head).
    fn page(&self, query: PageQuery, store: &dyn ConversationStore) -> Result<Page, StoreError> {
        read_page(store, self.durable_head, query, self.cfg.page_bytes)
    }

    /// Sends a page as a `batch` (`follows` when the next one comes unasked),
    /// or a storage failure as an `internal` error. Returns the page's last
    /// seq when another page follows.
    fn answer_page(
        &mut self,
        now: Millis,
        conn: ConnId,
        page: Result<Page, StoreError>,
        may_follow: bool,
    ) -> Option<Seq> {
        match page {
            Ok(Page {
                messages,
                more,
                bytes,
                ..
            }) => {
                let last = messages
                    .last()
                    .map(|m| m.seq)
                    .filter(|_| more && may_follow);
                let head = self.durable_head;
                let follows = last.is_some();
                let batch = ServerFrame::Batch {
                    messages,
                    head,
                    more,
                    follows,
                    ticket: None,
                };
                self.answer(now, conn, batch, bytes + FRAME_OVERHEAD);
                last
            }
            Err(e) => {
                self.error(conn, ErrorCode::Internal, e.to_string(), None);
                None
            }
        }
    }

    fn on_send(
        &mut self,
        now: Millis,
        conn: ConnId,
        id: String,
        body: String,
        after: Option<String>,
        store: &dyn ConversationStore,
    ) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (user, device) = c.key.clone();
        let dedup_key = (user.clone(), device.clone(), id.clone());
        if !Bugs::on(self.cfg.bugs.server_no_dedup) {
            if self.unconfirmed.contains_key(&dedup_key) {
                return; // `sent` follows when the write is durable
            }
            match store.find(&user, &device, &id) {
                Err(e) => {
                    self.error(conn, ErrorCode::Internal, e.to_string(), Some(id));
                    return;
                }
                Ok(Some(m)) if m.seq <= self.durable_head => {
                    self.frame(
                        conn,
                        ServerFrame::Sent {
                            id,
                            seq: m.seq,
                            at: m.at,
                        },
                    );
                    return;
                }
                Ok(Some(_)) => return,
                Ok(None) => {}
            }
        }
        if let Some(prev) = after.filter(|_| !Bugs::on(self.cfg.bugs.server_ignore_send_order)) {
            // One device's messages are stored in its `send()` order: this one
            // waits until the one before it is stored (accepted is enough:
            // its seq is taken).
            let prev_key = (user.clone(), device.clone(), prev);
            let stored = self.unconfirmed.contains_key(&prev_key)
                || match store.find(&user, &device, &prev_key.2) {
                    Ok(found) => found.is_some(),
                    Err(e) => {
                        self.error(conn, ErrorCode::Internal, e.to_string(), Some(id));
                        return;
                    }
                };
            if !stored {
                let message = format!("send {} first: it comes before this message", prev_key.2);
                self.error(conn, ErrorCode::OutOfOrder, message, Some(id));
                return;
            }
        }
        let waiting = self
            .pending
            .values()
            .filter(|m| m.user == user && m.device == device)
            .count();
        if waiting >= self.cfg.max_unconfirmed_sends {
            self.error(
                conn,
                ErrorCode::WindowFull,
                "too many unconfirmed sends",
                Some(id),
            );
            return;
        }
        if self.head >= MAX_SEQ {
            self.error(
                conn,
                ErrorCode::Internal,
                "conversation is out of seqs",
                Some(id),
            );
            return;
        }
        let seq = self.head + 1;
        let at = now.max(self.last_at);
        let chain = self.chain.next(seq, &user, &device, &id, &body);
        let msg = StoredMessage {
            seq,
            user,
            device,
            id,
            body,
            at,
            chain,
        };
        self.head = seq;
        self.chain = chain;
        self.last_at = at;
        self.unconfirmed.insert(dedup_key, seq);
        self.pending.insert(seq, msg.clone());
        self.persist(ServerWrite::Append(msg), Effect::Append(seq));
        if Bugs::on(self.cfg.bugs.server_ack_before_persist) {
            self.append_durable(seq);
            self.pump_all(now, store);
        }
    }

    fn on_ack(
        &mut self,
        now: Millis,
        conn: ConnId,
        seq: Seq,
        ranges: &[[Seq; 2]],
        store: &dyn ConversationStore,
    ) {
        let head = self.durable_head;
        // Nothing beyond the durable head was ever sent: claiming it is a lie.
        let beyond = seq > head || ranges.iter().any(|[_, hi]| *hi > head);
        if beyond {
            self.error(
                conn,
                ErrorCode::BadFrame,
                format!("ack beyond the head {head}"),
                None,
            );
            self.strike(conn);
        }
        let seq = seq.min(head);
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let key = c.key.clone();
        let Some(d) = self.devices.get_mut(&key) else {
            return;
        };
        if seq > d.through {
            // Pushes go on from the new cursor at once; writing it may wait
            // (`cursor_delay`), since nothing is announced before it is durable.
            d.through = seq;
            self.unwritten.insert(key);
            if self.cfg.cursor_delay == 0 {
                self.write_cursors();
            } else {
                self.cursor_due
                    .get_or_insert(now.saturating_add(self.cfg.cursor_delay));
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.retries = 0;
                c.resend_at = None;
                self.touched.insert(conn);
            }
        } else if seq <= d.persisted && seq > 0 {
            // A repeated ack: confirm the cursor so the device stops repeating it.
            let (user, device) = key;
            // (The mutant confirms the ack's own seq: an older, duplicated
            // ack then moves the announced cursor backwards.)
            let through = if Bugs::on(self.cfg.bugs.server_cursor_backwards) {
                seq
            } else {
                d.persisted
            };
            let cursor = Cursor {
                user,
                device,
                through,
            };
            let members = u32::try_from(self.member_count()).unwrap_or(u32::MAX);
            self.frame(
                conn,
                ServerFrame::Delivered {
                    cursors: vec![cursor],
                    members,
                },
            );
        }
        let floor = self.conns.get(&conn).map_or(0, |c| self.floor(c));
        if let Some(c) = self.conns.get_mut(&conn) {
            let top = c.next_push.saturating_sub(1);
            for [lo, hi] in ranges {
                if *lo <= top {
                    c.sacked.insert_range(*lo, (*hi).min(top));
                }
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
                Effect::Cursor { key, through } => {
                    if let Some(d) = self.devices.get_mut(&key) {
                        d.persisted = d.persisted.max(through);
                    }
                    self.dirty.insert(key);
                    let due = now.saturating_add(self.cfg.delivered_delay);
                    self.delivered_due.get_or_insert(due);
                }
                Effect::None => {}
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
        let key = (msg.user.clone(), msg.device.clone());
        self.unconfirmed
            .remove(&(key.0.clone(), key.1.clone(), msg.id.clone()));
        if let Some(conn) = self.by_device.get(&key).copied() {
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
        if self
            .recent
            .first_key_value()
            .is_some_and(|(&k, _)| k <= from)
        {
            return self
                .recent
                .range(from..=to)
                .map(|(_, m)| m.clone())
                .collect();
        }
        let n = u32::try_from(to - from + 1)
            .unwrap_or(u32::MAX)
            .min(limits::MAX_PAGE);
        match store.after(from - 1, n) {
            Ok(v) => v
                .into_iter()
                .filter(|m| m.seq >= from && m.seq <= to)
                .collect(),
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
                self.frame(
                    conn,
                    ServerFrame::Push {
                        messages: std::mem::take(&mut frame),
                    },
                );
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
        if self.cursor_due.is_some_and(|d| d <= now) {
            self.write_cursors();
        }
        if self.delivered_due.is_some_and(|d| d <= now) {
            self.delivered_due = None;
            self.announce_cursors();
        }
        let mut expired = Vec::new();
        let mut stalled = Vec::new();
        let mut due = Vec::new();
        for (&conn, c) in &self.conns {
            if c.expires.is_some_and(|t| t <= now) {
                expired.push(conn);
            } else if self.stall_deadline(c).is_some_and(|t| t <= now) {
                stalled.push(conn);
            } else if c.resend_at.is_some_and(|t| t <= now) {
                due.push(conn);
            }
        }
        for conn in expired {
            self.close(
                conn,
                close::TOKEN_EXPIRED,
                "token expired; reconnect with a fresh token",
            );
        }
        for conn in stalled {
            self.close(conn, close::UNRESPONSIVE, "answers were not read");
        }
        for conn in due {
            self.resend(now, conn, store);
        }
        self.serve_queue(now, store);
    }

    /// Asks for the write of every cursor that advanced since it was last
    /// written (one write per device, however many acks moved it).
    fn write_cursors(&mut self) {
        self.cursor_due = None;
        for key in std::mem::take(&mut self.unwritten) {
            self.write_cursor(key);
        }
    }

    fn write_cursor(&mut self, key: DeviceKey) {
        // A device forgotten meanwhile is not written back.
        let Some(through) = self.devices.get(&key).map(|d| d.through) else {
            return;
        };
        let (user, device) = key.clone();
        self.persist(
            ServerWrite::Cursor(Cursor {
                user,
                device,
                through,
            }),
            Effect::Cursor { key, through },
        );
    }

    /// Sends the coalesced `delivered` notice: per user whose devices moved,
    /// that user's furthest cursor; to each device also its own cursor if it
    /// moved. Bounded by the member limit, like `welcome`.
    fn announce_cursors(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.is_empty() {
            return;
        }
        let users: BTreeSet<&str> = dirty.iter().map(|(user, _)| user.as_str()).collect();
        let ready: Vec<(ConnId, DeviceKey)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ready)
            .map(|(k, c)| (*k, c.key.clone()))
            .collect();
        let shared = self.user_cursors(Some(&users));
        let mut frames = Vec::new();
        for (conn, key) in ready {
            // Own cursor only when it moved; the per-user ones always.
            let cursors = if dirty.contains(&key) {
                self.with_own(shared.clone(), &key)
            } else {
                shared.clone()
            };
            frames.push((conn, cursors));
        }
        let members = u32::try_from(self.member_count()).unwrap_or(u32::MAX);
        for (conn, cursors) in frames {
            self.frame(conn, ServerFrame::Delivered { cursors, members });
        }
    }

    fn resend(&mut self, now: Millis, conn: ConnId, store: &dyn ConversationStore) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let floor = self.floor(c);
        let top = c.next_push.saturating_sub(1);
        if top <= floor || Bugs::on(self.cfg.bugs.server_never_resends) {
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
        // At most one frame's worth, lowest first (like TCP, retransmit the
        // front): the cumulative ack that follows releases the rest, and a
        // device that does not read costs one frame per timeout, not a window.
        let mut msgs = Vec::new();
        let mut bytes = 0;
        'gaps: for [lo, hi] in gaps {
            for m in self.load(lo, hi, store) {
                let len = encoded_len(&m);
                if !msgs.is_empty() && bytes + len > self.cfg.page_bytes {
                    break 'gaps;
                }
                bytes += len;
                msgs.push(m);
            }
        }
        // Already one frame's worth: no need to split it again.
        if !msgs.is_empty() {
            self.frame(conn, ServerFrame::Push { messages: msgs });
        }
        let wait = backoff(self.cfg.rto_initial, self.cfg.rto_max, retries);
        let jitter = self.rng.range(0, wait / 5);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.retries = retries;
            c.resend_at = Some(now.saturating_add(wait + jitter));
            self.touched.insert(conn);
        }
    }
}

/// One WebSocket message as the shell delivered it.
enum Incoming<'a> {
    /// A text message's bytes.
    Text(&'a [u8]),
    /// A binary message (never a frame).
    Binary,
    /// A message the shell did not copy because it is larger than a frame.
    Oversized(usize),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DurableStore, MemoryStore};

    /// A store holding seqs 1..=n, every body `body_len` bytes.
    fn store(n: Seq, body_len: usize) -> MemoryStore {
        let mut store = MemoryStore::new();
        let batch: Vec<ServerWrite> = (1..=n)
            .map(|seq| {
                ServerWrite::Append(StoredMessage {
                    seq,
                    user: "ann".into(),
                    device: "a1".into(),
                    id: format!("m{seq}"),
                    body: "x".repeat(body_len),
                    at: 1,
                    chain: ChainHash::GENESIS,
                })
            })
            .collect();
        store.commit(&batch).expect("seed the store");
        store
    }

    fn query(after: Option<Seq>, before: Option<Seq>, limit: u32) -> PageQuery {
        PageQuery {
            after,
            before,
            limit,
        }
    }

    /// The seqs of a page, and its `more`.
    fn seqs(page: &Page) -> (Vec<Seq>, bool) {
        (page.messages.iter().map(|m| m.seq).collect(), page.more)
    }

    fn read(store: &MemoryStore, head: Seq, q: PageQuery) -> (Vec<Seq>, bool) {
        seqs(&read_page(store, head, q, limits::PAGE_BYTES).expect("read"))
    }

    // Rule: after/before/limit select like sync and the HTTP history route.
    #[test]
    fn after_before_and_limit_select_the_page() {
        let s = store(10, 4);
        // Neither: the latest page.
        assert_eq!(read(&s, 10, query(None, None, 3)), (vec![8, 9, 10], true));
        assert_eq!(
            read(&s, 10, query(None, None, 50)),
            ((1..=10).collect(), false)
        );
        // Only before: the messages just below it.
        assert_eq!(read(&s, 10, query(None, Some(5), 2)), (vec![3, 4], true));
        assert_eq!(read(&s, 10, query(None, Some(3), 5)), (vec![1, 2], false));
        assert_eq!(read(&s, 10, query(None, Some(1), 5)), (vec![], false));
        // before beyond the head: as if head + 1.
        assert_eq!(
            read(&s, 10, query(None, Some(MAX_SEQ), 2)),
            (vec![9, 10], true)
        );
        // Only after: ascending from after + 1.
        assert_eq!(
            read(&s, 10, query(Some(0), None, 4)),
            (vec![1, 2, 3, 4], true)
        );
        assert_eq!(
            read(&s, 10, query(Some(7), None, 4)),
            (vec![8, 9, 10], false)
        );
        assert_eq!(read(&s, 10, query(Some(10), None, 4)), (vec![], false));
        assert_eq!(read(&s, 10, query(Some(MAX_SEQ), None, 4)), (vec![], false));
        // Both: after < seq < before; more only for what is left below before.
        assert_eq!(
            read(&s, 10, query(Some(2), Some(6), 10)),
            (vec![3, 4, 5], false)
        );
        assert_eq!(read(&s, 10, query(Some(2), Some(6), 2)), (vec![3, 4], true));
        assert_eq!(
            read(&s, 10, query(Some(2), Some(MAX_SEQ), 10)),
            ((3..=10).collect(), false)
        );
        assert_eq!(read(&s, 10, query(Some(5), Some(6), 10)), (vec![], false));
        assert_eq!(read(&s, 10, query(Some(6), Some(5), 10)), (vec![], false));
        // limit is clamped to 1..=MAX_PAGE.
        assert_eq!(read(&s, 10, query(None, None, 0)), (vec![10], true));
        assert_eq!(
            read(&s, 10, query(Some(0), None, u32::MAX)),
            ((1..=10).collect(), false)
        );
        // An empty store.
        assert_eq!(
            read(&MemoryStore::new(), 0, query(None, None, 50)),
            (vec![], false)
        );
        assert_eq!(
            read(&MemoryStore::new(), 0, query(Some(0), None, 50)),
            (vec![], false)
        );
    }

    // Rule: never beyond the given head (the core's durable head).
    #[test]
    fn a_page_stops_at_the_head() {
        let s = store(10, 4);
        assert_eq!(read(&s, 6, query(None, None, 3)), (vec![4, 5, 6], true));
        assert_eq!(
            read(&s, 6, query(Some(3), None, 50)),
            (vec![4, 5, 6], false)
        );
        assert_eq!(
            read(&s, 6, query(Some(3), Some(9), 50)),
            (vec![4, 5, 6], false)
        );
        let page = read_page(&s, 6, query(None, None, 50), limits::PAGE_BYTES).unwrap();
        assert_eq!(page.head, 6);
    }

    // Rule: a page is cut to the byte budget and then says more.
    #[test]
    fn a_page_cut_by_bytes_says_more() {
        let s = store(40, 1_000);
        let one = encoded_len(&s.messages[&1]);
        let budget = one * 5 + one / 2; // room for five messages, not six
        let page = |q| seqs(&read_page(&s, 40, q, budget).expect("read"));
        // Ascending: cut at the end.
        assert_eq!(page(query(Some(0), None, 500)), ((1..=5).collect(), true));
        assert_eq!(
            page(query(Some(10), Some(30), 500)),
            ((11..=15).collect(), true)
        );
        // Exactly what fits up to the bound: nothing more.
        assert_eq!(
            page(query(Some(10), Some(16), 500)),
            ((11..=15).collect(), false)
        );
        // Below before, or the latest: cut at the start, keeping the newest.
        assert_eq!(page(query(None, None, 500)), ((36..=40).collect(), true));
        assert_eq!(
            page(query(None, Some(20), 500)),
            ((15..=19).collect(), true)
        );
        assert_eq!(page(query(None, Some(6), 500)), ((1..=5).collect(), false));
        // A message larger than the budget still goes out, alone.
        let big = seqs(&read_page(&s, 40, query(Some(0), None, 500), 10).expect("read"));
        assert_eq!(big, (vec![1], true));
        // The size is the messages' encoded size.
        let cut = read_page(&s, 40, query(Some(0), None, 500), budget).unwrap();
        assert_eq!(cut.bytes, one * 5);
    }

    // Rule: a page never has a hole; it ends before a missing seq.
    #[test]
    fn a_page_ends_at_a_hole() {
        let mut s = store(10, 4);
        s.messages.remove(&5);
        assert_eq!(
            read(&s, 10, query(Some(0), None, 50)),
            (vec![1, 2, 3, 4], true)
        );
        assert_eq!(
            read(&s, 10, query(None, None, 50)),
            ((6..=10).collect(), true)
        );
    }

    // Rule: a page read takes rows in steps; many small rows still fill it.
    #[test]
    fn a_long_page_is_read_in_steps() {
        let s = store(600, 4);
        assert_eq!(
            read(&s, 600, query(Some(0), None, 500)),
            ((1..=500).collect(), true)
        );
        assert_eq!(
            read(&s, 600, query(None, None, 500)),
            ((101..=600).collect(), true)
        );
    }
}
