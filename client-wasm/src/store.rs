//! The browser client's IndexedDB store, through the `idb` crate.
//!
//! It stores exactly what the core's client machine ([`protocol::Client`]) asks
//! for, so the shell is a thin loop: every `ClientOutput::Persist { write, op }`
//! becomes one [`IdbStore::apply`] (or several, batched, one [`IdbStore::apply_all`]),
//! and when it resolves the shell feeds `ClientInput::Durable { through: write }`
//! back. On start, [`IdbStore::load_snapshot`] gives the [`ClientSnapshot`] for
//! `Client::new`.
//!
//! One database per client (`IdbStore::open(name)`) with four object stores; the
//! records of one conversation are told apart by a `conversation` field:
//!
//! | store | key | records |
//! |---|---|---|
//! | `pages` | generated (auto-increment), index `by_bucket` on `["conversation", "bucket"]` | `{ conversation, bucket, messages }`: `messages` is a JSON array of [`StoredMessage`]s, all with `seq / 256 == bucket` |
//! | `outbox` | `"id"`, index `by_conversation` on `["conversation", "created"]` | [`OutboxEntry`] fields plus `conversation` |
//! | `conversations` | `"conversation"` | [`InboxState`] fields plus `conversation` |
//! | `meta` | `"key"` | `{ key, value }` (the device id) |
//!
//! Schema versions, applied in order by the `upgradeneeded` handler from whatever
//! version the database has (0 for a new one): v1 creates `messages`, `outbox` and
//! `meta`; v2 adds `conversations`; v3 stores the core's records: outbox records
//! get `created` (from v1/v2's `created_at`, which is removed along with
//! `attempts`) and `seq`/`at` = null, the `by_conversation` index moves to
//! `["conversation", "created"]`, and conversation records get `base` = 0 and
//! `oldest` = null (v2's `oldest` was a bare seq; `watermark` and `chain` are
//! kept); v4 replaces `messages` (one record per message, keyed
//! `["conversation", "seq"]`) with `pages`, moving every message into the page
//! record of its bucket. A record that is not an object is left as it was (and
//! reads of it report [`StoreError::Corrupt`]).
//!
//! Why pages: a catch-up of 20,000 messages was bound by IndexedDB's cost per
//! record (one `put` each); a write now puts one record per bucket it touches
//! (a catch-up page of 500 messages: 2 or 3 records), stored as one string the
//! engine clones without walking it. A bucket may hold several page records
//! (one per write that touched it: live messages arrive one or a few at a time);
//! reads take a whole bucket in one `getAll` and, where two records hold the
//! same seq, the later write wins, as a `put` keyed by seq did before. The
//! generated key orders the records of a bucket by write.
//!
//! Guarantees:
//! - Every write resolves only after its transaction's `complete` event, and every
//!   read-write transaction asks for `durability: "strict"` (flushed to disk before
//!   `complete`). web-sys exposes that option only under `web_sys_unstable_apis`, so a
//!   three-line hand-written binding of `IDBDatabase.transaction(names, mode, options)`
//!   is used instead (see `transaction_with_options`); browsers without the option
//!   ignore it.
//! - Writes commit in the order they were called, even when the caller does not
//!   await one before starting the next: every write transaction spans the same
//!   three stores (`messages`, `outbox`, `conversations`), and IndexedDB runs
//!   read-write transactions with overlapping scopes in creation order. That is
//!   the order the core requires for `Durable { through }`.
//! - A write is all-or-nothing: if anything fails while its requests are being
//!   queued, the transaction is aborted, so a batch is never half stored.
//! - Nothing from the browser is unwrapped: every failure becomes a [`StoreError`]
//!   with a stable [`StoreError::code`].
//! - Another tab upgrading (or deleting) the database fires `versionchange`: the
//!   connection is closed at once, so the other tab is not blocked, and every later
//!   call fails with [`StoreError::VersionChange`] instead of hanging. Opening while
//!   an older connection elsewhere refuses to close fails with
//!   [`StoreError::Blocked`]; the app may retry later.
//!
//! Sequence numbers and timestamps are stored as JavaScript numbers (they are keys);
//! values above 2^53 - 1 are rejected with [`StoreError::Failed`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::rc::Rc;

use idb::{
    CursorDirection, Factory, IndexParams, KeyPath, KeyRange, ObjectStore, ObjectStoreParams, Query,
};
use js_sys::{Array, Object, Promise, Reflect};
use protocol::{
    ChainHash, ClientSnapshot, ClientWrite, InboxState, Millis, OutboxEntry, Seq, StoredMessage,
};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{
    DomException, IdbDatabase, IdbOpenDbRequest, IdbTransaction, IdbTransactionMode,
    IdbVersionChangeEvent,
};

use crate::errors::AcklineError;
pub use crate::errors::ErrorCode;

/// Current schema version. Opening runs the upgrade steps from the stored version.
pub const DB_VERSION: u32 = 4;

/// The v1..v3 store of one record per message (moved into `pages` by v4).
const MESSAGES_V3: &str = "messages";
const PAGES: &str = "pages";
const BY_BUCKET: &str = "by_bucket";
/// Seqs per bucket. Bounds what a read of the latest messages takes (one
/// bucket, or two) when live traffic wrote one record per message.
const BUCKET_SEQS: u64 = 256;
const OUTBOX: &str = "outbox";
const CONVERSATIONS: &str = "conversations";
const META: &str = "meta";
const BY_CONVERSATION: &str = "by_conversation";
/// The scope of every write transaction (see the ordering guarantee above).
const WRITE_SCOPE: [&str; 3] = [PAGES, OUTBOX, CONVERSATIONS];
const DEVICE_ID_KEY: &str = "device_id";
/// Rejection value of the open promise when the open request reports `blocked`.
const BLOCKED: &str = "ackline:blocked";

/// Why a store operation failed. [`StoreError::code`] is stable for the app.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// IndexedDB cannot be used here (absent, private mode, opaque origin, storage
    /// failure while opening, connection dropped by the browser).
    #[error("IndexedDB unavailable: {0}")]
    Unavailable(String),
    /// Opening needs a schema upgrade, but a connection in another tab holding an
    /// older version did not close.
    #[error("opening the database is blocked by another tab holding an older version")]
    Blocked,
    /// Another tab upgraded or deleted the database (or it has a newer version than
    /// this code knows): this connection was closed; reload to continue.
    #[error("the database was changed by another tab; this connection was closed")]
    VersionChange,
    /// The browser's storage quota is exhausted.
    #[error("storage quota exceeded")]
    QuotaExceeded,
    /// A stored record does not deserialize.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Any other failure (bad input, aborted transaction, closed store, ...).
    #[error("IndexedDB operation failed: {0}")]
    Failed(String),
}

impl StoreError {
    /// Stable machine-readable code (one of the npm API's [`ErrorCode`]s).
    pub fn error_code(&self) -> ErrorCode {
        match self {
            StoreError::Unavailable(_) => ErrorCode::StoreUnavailable,
            StoreError::Blocked => ErrorCode::StoreBlocked,
            StoreError::VersionChange => ErrorCode::StoreVersionChange,
            StoreError::QuotaExceeded => ErrorCode::StoreQuota,
            StoreError::Corrupt(_) => ErrorCode::StoreCorrupt,
            StoreError::Failed(_) => ErrorCode::StoreFailed,
        }
    }

    /// [`StoreError::error_code`] as JS sees it.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }
}

impl From<StoreError> for JsValue {
    /// A JS `Error` whose `code` property is [`StoreError::code`].
    fn from(err: StoreError) -> JsValue {
        AcklineError::Store(err).into()
    }
}

fn from_dom(e: &DomException) -> StoreError {
    let name = e.name();
    match name.as_str() {
        "QuotaExceededError" => StoreError::QuotaExceeded,
        "VersionError" => StoreError::VersionChange,
        "SecurityError" => StoreError::Unavailable(format!("{name}: {}", e.message())),
        _ => StoreError::Failed(format!("{name}: {}", e.message())),
    }
}

fn from_js(v: &JsValue) -> StoreError {
    if let Some(e) = v.dyn_ref::<DomException>() {
        from_dom(e)
    } else if let Some(e) = v.dyn_ref::<js_sys::Error>() {
        StoreError::Failed(String::from(e.message()))
    } else {
        StoreError::Failed(format!("{v:?}"))
    }
}

fn from_idb(e: idb::Error) -> StoreError {
    use idb::Error as E;
    match &e {
        E::DomException(d) => from_dom(d),
        E::IndexedDbNotFound(_) => {
            StoreError::Unavailable("IndexedDB is not available in this context".into())
        }
        E::AddFailed(v)
        | E::UpdateFailed(v)
        | E::DeleteFailed(v)
        | E::GetFailed(v)
        | E::GetAllFailed(v)
        | E::GetAllKeysFailed(v)
        | E::CountFailed(v)
        | E::OpenCursorFailed(v)
        | E::OpenKeyCursorFailed(v)
        | E::CursorAdvanceFailed(v)
        | E::CursorKeyNotFound(v)
        | E::KeyRangeCreateFailed(v)
        | E::IndexNotFound(v)
        | E::ObjectStoreNotFound(v)
        | E::ObjectStoreCreateFailed(v)
        | E::IndexCreateFailed(v)
        | E::TransactionOpenFailed(v) => from_js(v),
        _ => StoreError::Failed(e.to_string()),
    }
}

fn corrupt(what: &str, e: serde_wasm_bindgen::Error) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, StoreError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| StoreError::Failed(format!("cannot store value: {e}")))
}

#[wasm_bindgen]
extern "C" {
    /// An `IDBDatabase` seen through the one method web-sys lacks (reached with
    /// `unchecked_ref` from a [`web_sys::IdbDatabase`]).
    #[wasm_bindgen(js_name = IDBDatabase)]
    type DatabaseWithOptions;

    /// `IDBDatabase.transaction(storeNames, mode, options)`. web-sys binds the
    /// options argument (`IDBTransactionOptions`, for `durability`) only under
    /// `web_sys_unstable_apis`; this binding avoids that cfg flag.
    #[wasm_bindgen(method, catch, js_name = transaction)]
    fn transaction_with_options(
        this: &DatabaseWithOptions,
        store_names: &Array,
        mode: &str,
        options: &Object,
    ) -> Result<IdbTransaction, JsValue>;
}

/// The `outbox` record: an [`OutboxEntry`] plus its conversation (read back
/// straight into `OutboxEntry`, which ignores `conversation`).
#[derive(Serialize)]
struct OutboxRow<'a> {
    conversation: &'a str,
    id: &'a str,
    body: &'a str,
    created: Millis,
    seq: Option<Seq>,
    at: Option<Millis>,
}

/// The `conversations` record: an [`InboxState`] plus its conversation (read back
/// straight into `InboxState`).
#[derive(Serialize)]
struct InboxRow<'a> {
    conversation: &'a str,
    base: Seq,
    watermark: Seq,
    chain: &'a ChainHash,
    oldest: Option<&'a StoredMessage>,
}

/// The `meta` record.
#[derive(Serialize, Deserialize)]
struct MetaRow {
    key: String,
    value: String,
}

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// IndexedDB requests this connection made that committed, per object store
/// (`IdbStore::stats`): how many records a client writes per message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// The `pages` store (message records: one per bucket a write touched).
    pub pages: WriteCounts,
    /// The `outbox` store.
    pub outbox: WriteCounts,
    /// The `conversations` store (inbox records).
    pub conversations: WriteCounts,
    /// The `meta` store (the device id).
    pub meta: WriteCounts,
}

/// Committed `put`s and `delete`s of one object store (a range delete, as
/// `resetInbox` makes, counts as one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WriteCounts {
    /// Records put.
    pub puts: u64,
    /// Delete requests.
    pub deletes: u64,
}

impl StoreStats {
    fn add(&mut self, other: &StoreStats) {
        for (a, b) in [
            (&mut self.pages, &other.pages),
            (&mut self.outbox, &other.outbox),
            (&mut self.conversations, &other.conversations),
            (&mut self.meta, &other.meta),
        ] {
            a.puts += b.puts;
            a.deletes += b.deletes;
        }
    }
}

/// `[conversation, n]`: an outbox index key (`n` = created) or a `pages`
/// index key (`n` = bucket).
fn conversation_key(conversation: &str, n: f64) -> JsValue {
    Array::of2(&JsValue::from_str(conversation), &JsValue::from_f64(n)).into()
}

/// The bucket of `seq`, as its index key holds it.
fn bucket_of(seq: Seq) -> f64 {
    (seq / BUCKET_SEQS) as f64
}

fn key_range(
    lower: &JsValue,
    upper: &JsValue,
    lower_open: bool,
    upper_open: bool,
) -> Result<Query, StoreError> {
    KeyRange::bound(lower, upper, Some(lower_open), Some(upper_open))
        .map(Query::from)
        .map_err(from_idb)
}

/// One transaction plus a future settled by its `complete` (Ok) or `abort` (Err).
struct Tx {
    raw: IdbTransaction,
    done: JsFuture,
}

impl Tx {
    fn new(raw: IdbTransaction) -> Tx {
        // The promise's own resolve/reject are the handlers: no Rust closure to keep alive.
        let done = Promise::new(&mut |resolve, reject| {
            raw.set_oncomplete(Some(&resolve));
            raw.set_onabort(Some(&reject));
        });
        Tx {
            raw,
            done: JsFuture::from(done),
        }
    }

    fn store(&self, name: &str) -> Result<ObjectStore, StoreError> {
        self.raw
            .object_store(name)
            .map(ObjectStore::from)
            .map_err(|e| from_js(&e))
    }

    /// The raw object store, for the puts of a batch parsed from JSON.
    fn raw_store(&self, name: &str) -> Result<web_sys::IdbObjectStore, StoreError> {
        self.raw.object_store(name).map_err(|e| from_js(&e))
    }

    fn abort(&self) {
        // Throws only if the transaction already finished; nothing to do then.
        let _ = self.raw.abort();
    }

    /// Waits for `complete`; an abort becomes the transaction's error.
    async fn finish(self) -> Result<(), StoreError> {
        match self.done.await {
            Ok(_) => Ok(()),
            Err(_) => Err(match self.raw.error() {
                Some(e) => from_dom(&e),
                None => StoreError::Failed("transaction aborted".into()),
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Open,
    Closed,
    VersionChanged,
    Lost,
}

/// An open connection to the client's IndexedDB database.
///
/// Dropping it closes the connection (as [`IdbStore::close`] does).
pub struct IdbStore {
    db: IdbDatabase,
    state: Rc<Cell<State>>,
    /// Committed writes (see [`StoreStats`]).
    stats: Cell<StoreStats>,
    _on_version_change: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut()>,
}

impl std::fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdbStore")
            .field("name", &self.db.name())
            .field("state", &self.state.get())
            .finish()
    }
}

type Slot = Rc<RefCell<Option<StoreError>>>;

/// Runs the upgrade steps of every version above `old`, in order, inside the
/// version change transaction. Record migrations finish asynchronously (the
/// transaction waits for their requests); a failure there is put in `slot` and
/// aborts the transaction, which fails the open.
fn upgrade(req: &IdbOpenDbRequest, old: f64, slot: &Slot) -> Result<(), StoreError> {
    let db: IdbDatabase = req
        .result()
        .map_err(|e| from_js(&e))?
        .dyn_into()
        .map_err(|_| StoreError::Failed("upgrade: result is not a database".into()))?;
    let tx = req
        .transaction()
        .ok_or_else(|| StoreError::Failed("upgrade: no version change transaction".into()))?;
    let raw_db = db.clone();
    let db = idb::Database::from(db);
    if old < 1.0 {
        // v1 also created `messages`, which v4 replaces: a new database skips it.
        let mut params = ObjectStoreParams::new();
        params.key_path(Some(KeyPath::new_single("id")));
        db.create_object_store(OUTBOX, params).map_err(from_idb)?;
        let mut params = ObjectStoreParams::new();
        params.key_path(Some(KeyPath::new_single("key")));
        db.create_object_store(META, params).map_err(from_idb)?;
    }
    if old < 2.0 {
        let mut params = ObjectStoreParams::new();
        params.key_path(Some(KeyPath::new_single("conversation")));
        db.create_object_store(CONVERSATIONS, params)
            .map_err(from_idb)?;
    }
    if old < 3.0 {
        let raw_outbox = tx.object_store(OUTBOX).map_err(|e| from_js(&e))?;
        let outbox = ObjectStore::from(raw_outbox.clone());
        // v2 indexed ["conversation", "created_at"].
        if outbox.index_names().iter().any(|n| n == BY_CONVERSATION) {
            outbox.delete_index(BY_CONVERSATION).map_err(from_idb)?;
        }
        outbox
            .create_index(
                BY_CONVERSATION,
                KeyPath::new_array(["conversation", "created"]),
                Some(IndexParams::new()),
            )
            .map_err(from_idb)?;
        if old >= 1.0 {
            migrate_records(&tx, raw_outbox, slot, outbox_v3)?;
        }
        if old >= 2.0 {
            let conversations = tx.object_store(CONVERSATIONS).map_err(|e| from_js(&e))?;
            migrate_records(&tx, conversations, slot, conversation_v3)?;
        }
    }
    if old < 4.0 {
        let mut params = ObjectStoreParams::new();
        params.auto_increment(true);
        let pages = db.create_object_store(PAGES, params).map_err(from_idb)?;
        pages
            .create_index(
                BY_BUCKET,
                KeyPath::new_array(["conversation", "bucket"]),
                Some(IndexParams::new()),
            )
            .map_err(from_idb)?;
        if old >= 1.0 {
            move_messages_to_pages(&raw_db, &tx, slot)?;
        }
    }
    Ok(())
}

/// v4: every v1..v3 `messages` record goes into the page record of its
/// bucket (one per conversation and bucket: `getAll` returns them in key
/// order), then `messages` is deleted. A record whose seq is not a number goes
/// to bucket 0, where reading it reports [`StoreError::Corrupt`].
fn move_messages_to_pages(
    db: &IdbDatabase,
    tx: &IdbTransaction,
    slot: &Slot,
) -> Result<(), StoreError> {
    let old = tx.object_store(MESSAGES_V3).map_err(|e| from_js(&e))?;
    let pages = tx.object_store(PAGES).map_err(|e| from_js(&e))?;
    let db = db.clone();
    on_all_records(tx, &old, slot, "upgrade to v4", move |rows| {
        let flush = |page: Option<(JsValue, f64, Array)>| -> Result<(), JsValue> {
            if let Some((conversation, bucket, rows)) = page {
                let record = Object::new();
                set_field(&record, "conversation", &conversation)?;
                set_field(&record, "bucket", &JsValue::from_f64(bucket))?;
                set_field(&record, "messages", &js_sys::JSON::stringify(&rows)?.into())?;
                pages.add(&record)?;
            }
            Ok(())
        };
        let mut page: Option<(JsValue, f64, Array)> = None;
        for row in rows.iter() {
            let Some(obj) = row.dyn_ref::<Object>() else {
                continue;
            };
            let conversation = field(obj, "conversation")?;
            let bucket = field(obj, "seq")?
                .as_f64()
                .map_or(0.0, |s| (s / BUCKET_SEQS as f64).floor());
            if !page
                .as_ref()
                .is_some_and(|(c, b, _)| *c == conversation && *b == bucket)
            {
                flush(page.take())?;
                page = Some((conversation, bucket, Array::new()));
            }
            if let Some((_, _, rows)) = &page {
                rows.push(obj);
            }
        }
        flush(page)?;
        db.delete_object_store(MESSAGES_V3)
    })
}

/// Rewrites every record of `store` with `fix` (records that are not objects are
/// left alone): one `getAll`, then one `put` per record from its success handler.
fn migrate_records(
    tx: &IdbTransaction,
    store: web_sys::IdbObjectStore,
    slot: &Slot,
    fix: fn(&Object) -> Result<(), JsValue>,
) -> Result<(), StoreError> {
    on_all_records(tx, &store.clone(), slot, "upgrade to v3", move |rows| {
        for row in rows.iter() {
            if let Some(obj) = row.dyn_ref::<Object>() {
                fix(obj)?;
                store.put(obj)?;
            }
        }
        Ok(())
    })
}

/// Reads every record of `store` (one `getAll`) and hands them to `handle`
/// from the request's success handler, inside the version change transaction;
/// if `handle` fails, its error (prefixed with `step`) goes to `slot` and the
/// transaction is aborted.
fn on_all_records(
    tx: &IdbTransaction,
    store: &web_sys::IdbObjectStore,
    slot: &Slot,
    step: &'static str,
    handle: impl FnOnce(Array) -> Result<(), JsValue> + 'static,
) -> Result<(), StoreError> {
    let req = store.get_all().map_err(|e| from_js(&e))?;
    let on_success = {
        let (req, tx, slot) = (req.clone(), tx.clone(), slot.clone());
        Closure::once_into_js(move |_: JsValue| {
            let result = req
                .result()
                .and_then(|rows| rows.dyn_into::<Array>())
                .and_then(handle);
            if let Err(e) = result {
                *slot.borrow_mut() = Some(match from_js(&e) {
                    StoreError::Failed(m) => StoreError::Failed(format!("{step}: {m}")),
                    other => other,
                });
                let _ = tx.abort();
            }
        })
    };
    // An error event aborts the version change transaction by itself.
    req.set_onsuccess(Some(on_success.unchecked_ref()));
    Ok(())
}

fn field(row: &Object, name: &str) -> Result<JsValue, JsValue> {
    Reflect::get(row, &JsValue::from_str(name))
}

fn set_field(row: &Object, name: &str, value: &JsValue) -> Result<(), JsValue> {
    Reflect::set(row, &JsValue::from_str(name), value).map(|_| ())
}

/// v1/v2 outbox record `{ id, conversation, body, created_at, attempts }` to v3
/// `{ id, conversation, body, created, seq: null, at: null }`.
fn outbox_v3(row: &Object) -> Result<(), JsValue> {
    let created_at = field(row, "created_at")?;
    if !created_at.is_undefined() {
        if field(row, "created")?.is_undefined() {
            set_field(row, "created", &created_at)?;
        }
        Reflect::delete_property(row, &JsValue::from_str("created_at"))?;
    }
    Reflect::delete_property(row, &JsValue::from_str("attempts"))?;
    for name in ["seq", "at"] {
        if field(row, name)?.is_undefined() {
            set_field(row, name, &JsValue::NULL)?;
        }
    }
    Ok(())
}

/// v2 conversation record `{ conversation, watermark, chain, oldest: seq }` to v3
/// `{ conversation, base: 0, watermark, chain, oldest: null }` (a v2 device stored
/// from seq 1 on, so its history is complete).
fn conversation_v3(row: &Object) -> Result<(), JsValue> {
    if field(row, "base")?.is_undefined() {
        set_field(row, "base", &JsValue::from_f64(0.0))?;
    }
    set_field(row, "oldest", &JsValue::NULL)
}

/// Queues the requests of one core write in `tx` (which spans [`WRITE_SCOPE`]),
/// counting them in `tally`; an inbox record only when `keep_record` (no later
/// write of the same transaction replaces it).
fn queue_write(
    tx: &Tx,
    conversation: &str,
    op: &ClientWrite,
    keep_record: bool,
    tally: &mut StoreStats,
) -> Result<(), StoreError> {
    match op {
        ClientWrite::Inbox { messages, state } => {
            if !messages.is_empty() {
                let store = tx.raw_store(PAGES)?;
                for page in messages.chunk_by(|a, b| a.seq / BUCKET_SEQS == b.seq / BUCKET_SEQS) {
                    store
                        .add(&page_record(conversation, page)?.into())
                        .map_err(|e| from_js(&e))?;
                    tally.pages.puts += 1;
                }
            }
            if let Some(state) = state.as_ref().filter(|_| keep_record) {
                let row = to_js(&InboxRow {
                    conversation,
                    base: state.base,
                    watermark: state.watermark,
                    chain: &state.chain,
                    oldest: state.oldest.as_ref(),
                })?;
                tx.store(CONVERSATIONS)?.put(&row, None).map_err(from_idb)?;
                tally.conversations.puts += 1;
            }
        }
        ClientWrite::PutOutbox(entry) => {
            let row = to_js(&OutboxRow {
                conversation,
                id: &entry.id,
                body: &entry.body,
                created: entry.created,
                seq: entry.seq,
                at: entry.at,
            })?;
            tx.store(OUTBOX)?.put(&row, None).map_err(from_idb)?;
            tally.outbox.puts += 1;
        }
        ClientWrite::RemoveOutbox { id } => {
            // Deleting a missing key succeeds. The key names no conversation: ids are
            // ULIDs, unique across conversations.
            tx.store(OUTBOX)?
                .delete(JsValue::from_str(id))
                .map_err(from_idb)?;
            tally.outbox.deletes += 1;
        }
        ClientWrite::ClearInbox => {
            queue_delete_pages(tx, conversation)?;
            tx.store(CONVERSATIONS)?
                .delete(JsValue::from_str(conversation))
                .map_err(from_idb)?;
            // A clear counts as one request per store.
            tally.pages.deletes += 1;
            tally.conversations.deletes += 1;
        }
    }
    Ok(())
}

/// The `pages` record of `messages` (all in one bucket, as [`queue_write`]
/// groups them): the messages go as one JSON string, which costs the engine
/// one copy where an object per message cost a structured clone walk each.
/// Seqs and times must stay exact as JavaScript numbers.
fn page_record(conversation: &str, messages: &[StoredMessage]) -> Result<Object, StoreError> {
    let Some(first) = messages.first() else {
        return Err(StoreError::Failed("empty page".into()));
    };
    if let Some(m) = messages
        .iter()
        .find(|m| m.seq > MAX_SAFE_INTEGER || m.at > MAX_SAFE_INTEGER)
    {
        return Err(StoreError::Failed(format!(
            "cannot store message {}: seq or time above 2^53 - 1",
            m.seq
        )));
    }
    let json = serde_json::to_string(messages)
        .map_err(|e| StoreError::Failed(format!("cannot store messages: {e}")))?;
    let record = Object::new();
    let set =
        |name: &str, value: &JsValue| set_field(&record, name, value).map_err(|e| from_js(&e));
    set("conversation", &JsValue::from_str(conversation))?;
    set("bucket", &JsValue::from_f64(bucket_of(first.seq)))?;
    set("messages", &JsValue::from_str(&json))?;
    Ok(record)
}

/// Queues the deletion of every `pages` record of `conversation`: the index
/// gives their keys, and the deletes are queued from that request's success
/// handler, inside this transaction. The key request runs in queue order, so
/// it sees the pages added before it in the same transaction (deleted too)
/// and not those added after it (kept). A failure there aborts the transaction.
fn queue_delete_pages(tx: &Tx, conversation: &str) -> Result<(), StoreError> {
    let store = tx.raw_store(PAGES)?;
    let range: JsValue = all_of(conversation)?.into();
    let req = store
        .index(BY_BUCKET)
        .and_then(|index| index.get_all_keys_with_key(&range))
        .map_err(|e| from_js(&e))?;
    let on_success = {
        let (req, raw) = (req.clone(), tx.raw.clone());
        Closure::once_into_js(move |_: JsValue| {
            let deleted = (|| -> Result<(), JsValue> {
                let keys: Array = req.result()?.dyn_into()?;
                for key in keys.iter() {
                    store.delete(&key)?;
                }
                Ok(())
            })();
            if deleted.is_err() {
                let _ = raw.abort();
            }
        })
    };
    req.set_onsuccess(Some(on_success.unchecked_ref()));
    Ok(())
}

/// Every `[conversation, number]` key of one conversation.
fn all_of(conversation: &str) -> Result<Query, StoreError> {
    key_range(
        &conversation_key(conversation, f64::NEG_INFINITY),
        &conversation_key(conversation, f64::INFINITY),
        false,
        false,
    )
}

impl IdbStore {
    /// Opens (creating or upgrading to [`DB_VERSION`]) the database `name`.
    ///
    /// Fails with [`StoreError::Blocked`] at once if the upgrade has to wait for a
    /// connection in another tab that does not close; the pending request is then
    /// left to finish on its own and its connection closed as soon as it opens.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let factory: web_sys::IdbFactory = Factory::new().map_err(from_idb)?.into();
        let req = factory
            .open_with_u32(name, DB_VERSION)
            .map_err(|e| match from_js(&e) {
                StoreError::Failed(m) => StoreError::Unavailable(m),
                other => other,
            })?;

        let upgrade_error: Slot = Rc::default();
        let on_upgrade = {
            let req = req.clone();
            let slot = upgrade_error.clone();
            Closure::once(move |event: IdbVersionChangeEvent| {
                if let Err(e) = upgrade(&req, event.old_version(), &slot) {
                    if let Some(tx) = req.transaction() {
                        let _ = tx.abort();
                    }
                    *slot.borrow_mut() = Some(e);
                }
            })
        };
        req.set_onupgradeneeded(Some(on_upgrade.as_ref().unchecked_ref()));
        let settled = Promise::new(&mut |resolve, reject| {
            req.set_onsuccess(Some(&resolve));
            req.set_onerror(Some(&reject));
            let blocked: js_sys::Function = reject
                .bind1(&JsValue::NULL, &JsValue::from_str(BLOCKED))
                .unchecked_into();
            req.set_onblocked(Some(&blocked));
        });
        let outcome = JsFuture::from(settled).await;
        req.set_onblocked(None);

        if let Err(reason) = outcome {
            if reason.as_string().as_deref() == Some(BLOCKED) {
                // The request stays queued: it upgrades (the handler must stay alive)
                // and opens once the other connection closes. Nobody owns that
                // connection, so close it as soon as it arrives.
                on_upgrade.forget();
                let closer = {
                    let req = req.clone();
                    Closure::once_into_js(move |_: JsValue| {
                        if let Ok(db) = req.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
                            db.close();
                        }
                    })
                };
                req.set_onsuccess(Some(closer.unchecked_ref()));
                return Err(StoreError::Blocked);
            }
            req.set_onupgradeneeded(None);
            if let Some(e) = upgrade_error.borrow_mut().take() {
                return Err(e);
            }
            return Err(match req.error() {
                Ok(Some(e)) => match from_dom(&e) {
                    StoreError::Failed(m) => StoreError::Unavailable(m),
                    other => other,
                },
                _ => StoreError::Unavailable("opening the database failed".into()),
            });
        }
        req.set_onupgradeneeded(None);
        drop(on_upgrade);

        let db: IdbDatabase = req
            .result()
            .map_err(|e| from_js(&e))?
            .dyn_into()
            .map_err(|_| StoreError::Failed("open: result is not a database".into()))?;
        let state = Rc::new(Cell::new(State::Open));
        let on_version_change = {
            let db = db.clone();
            let state = state.clone();
            Closure::<dyn FnMut()>::new(move || {
                state.set(State::VersionChanged);
                db.close();
            })
        };
        db.set_onversionchange(Some(on_version_change.as_ref().unchecked_ref()));
        let on_close = {
            let state = state.clone();
            // `close` fires only when the browser closes the connection abnormally
            // (storage cleared, disk error), never after `db.close()`.
            Closure::<dyn FnMut()>::new(move || state.set(State::Lost))
        };
        db.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        Ok(IdbStore {
            db,
            state,
            stats: Cell::default(),
            _on_version_change: on_version_change,
            _on_close: on_close,
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.state.get() {
            State::Open => Ok(()),
            State::Closed => Err(StoreError::Failed("the store was closed".into())),
            State::VersionChanged => Err(StoreError::VersionChange),
            State::Lost => Err(StoreError::Unavailable(
                "the browser closed the database connection".into(),
            )),
        }
    }

    fn read_tx(&self, stores: &[&str]) -> Result<Tx, StoreError> {
        self.check()?;
        let names: Array = stores.iter().map(|s| JsValue::from_str(s)).collect();
        self.db
            .transaction_with_str_sequence_and_mode(&names, IdbTransactionMode::Readonly)
            .map(Tx::new)
            .map_err(|e| from_js(&e))
    }

    /// A read-write transaction with `durability: "strict"`.
    fn write_tx(&self, stores: &[&str]) -> Result<Tx, StoreError> {
        self.check()?;
        let names: Array = stores.iter().map(|s| JsValue::from_str(s)).collect();
        let options = Object::new();
        let _ = Reflect::set(
            &options,
            &JsValue::from_str("durability"),
            &JsValue::from_str("strict"),
        );
        self.db
            .unchecked_ref::<DatabaseWithOptions>()
            .transaction_with_options(&names, "readwrite", &options)
            .map(Tx::new)
            .map_err(|e| from_js(&e))
    }

    /// Queues the requests `queue` makes in one strict read-write transaction and
    /// resolves after `complete`; aborts the transaction if `queue` fails.
    async fn write(
        &self,
        stores: &[&str],
        queue: impl FnOnce(&Tx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx(stores)?;
        if let Err(e) = queue(&tx) {
            tx.abort();
            return Err(e);
        }
        tx.finish().await
    }

    /// The device id of this database: read it, or create it with `make` and store
    /// it, in one read-write transaction (so two tabs cannot create two ids).
    pub async fn device_id(&self, make: impl FnOnce() -> String) -> Result<String, StoreError> {
        let tx = self.write_tx(&[META])?;
        let result = async {
            let meta = tx.store(META)?;
            let existing = meta
                .get(JsValue::from_str(DEVICE_ID_KEY))
                .map_err(from_idb)?
                .await
                .map_err(from_idb)?;
            match existing {
                Some(v) => {
                    let row: MetaRow =
                        serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("device id", e))?;
                    Ok(row.value)
                }
                None => {
                    let id = make();
                    let row = to_js(&MetaRow {
                        key: DEVICE_ID_KEY.into(),
                        value: id.clone(),
                    })?;
                    meta.put(&row, None).map_err(from_idb)?;
                    let mut stats = self.stats.get();
                    stats.meta.puts += 1;
                    self.stats.set(stats);
                    Ok(id)
                }
            }
        }
        .await;
        match result {
            Ok(id) => tx.finish().await.map(|()| id),
            Err(e) => {
                tx.abort();
                Err(e)
            }
        }
    }

    /// Carries out one core write (`ClientOutput::Persist { op, .. }` of the
    /// client of `conversation`) in one strict read-write transaction; resolves
    /// after `complete`, so the shell may then report `Durable { through: write }`.
    ///
    /// - `Inbox { messages, state }`: adds one `pages` record per bucket the
    ///   messages fall in (a repeated write adds copies, which read back once:
    ///   the later copy of a seq wins) and, when `state` is given, replaces the
    ///   conversation's inbox record.
    /// - `PutOutbox(entry)`: inserts or replaces the entry (keyed by its id).
    /// - `RemoveOutbox { id }`: deletes the entry (a missing one is ignored).
    /// - `ClearInbox`: deletes every message of the conversation and its inbox
    ///   record (other conversations and the outbox are untouched).
    pub async fn apply(&self, conversation: &str, op: &ClientWrite) -> Result<(), StoreError> {
        self.apply_all(conversation, std::slice::from_ref(op)).await
    }

    /// Carries out several core writes, in order, in ONE strict read-write
    /// transaction (all or none of them are stored); resolves after `complete`,
    /// so every one of them is durable then. For batching consecutive `Persist`
    /// outputs: report `Durable { through }` with the last one's write id.
    pub async fn apply_all(
        &self,
        conversation: &str,
        ops: &[ClientWrite],
    ) -> Result<(), StoreError> {
        if ops.is_empty() {
            return self.check();
        }
        // The transaction is all or nothing: an inbox record that a later
        // write of the same batch replaces (or clears) need not be written.
        let mut record_written_later = false;
        let mut keep_record = vec![false; ops.len()];
        for (keep, op) in keep_record.iter_mut().zip(ops).rev() {
            *keep = !record_written_later;
            if matches!(
                op,
                ClientWrite::Inbox { state: Some(_), .. } | ClientWrite::ClearInbox
            ) {
                record_written_later = true;
            }
        }
        let mut tally = StoreStats::default();
        self.write(&WRITE_SCOPE, |tx| {
            ops.iter()
                .zip(&keep_record)
                .try_for_each(|(op, keep)| queue_write(tx, conversation, op, *keep, &mut tally))
        })
        .await?;
        let mut stats = self.stats.get();
        stats.add(&tally);
        self.stats.set(stats);
        Ok(())
    }

    /// The writes this connection committed so far, per object store.
    pub fn stats(&self) -> StoreStats {
        self.stats.get()
    }

    /// What the client of `conversation` needs on start, read in one transaction:
    /// the inbox record (`None` if there is none), the stored messages above its
    /// watermark in ascending seq (none without an inbox record), and the outbox
    /// in creation order (`created`, then `id`).
    pub async fn load_snapshot(&self, conversation: &str) -> Result<ClientSnapshot, StoreError> {
        let tx = self.read_tx(&WRITE_SCOPE)?;
        let pages = tx.store(PAGES)?.index(BY_BUCKET).map_err(from_idb)?;
        // `into_future` attaches the request's handlers: do it before awaiting
        // anything, or an early success event would be missed.
        let inbox = tx
            .store(CONVERSATIONS)?
            .get(JsValue::from_str(conversation))
            .map_err(from_idb)?
            .into_future();
        let outbox = tx
            .store(OUTBOX)?
            .index(BY_CONVERSATION)
            .map_err(from_idb)?
            .get_all(Some(all_of(conversation)?), None)
            .map_err(from_idb)?
            .into_future();
        let inbox: Option<InboxState> = inbox
            .await
            .map_err(from_idb)?
            .map(|v| serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("inbox record", e)))
            .transpose()?;
        let above = match &inbox {
            Some(state) => pages_after(&pages, conversation, state.watermark, None).await?,
            None => Vec::new(),
        };
        let outbox = outbox
            .await
            .map_err(from_idb)?
            .into_iter()
            .map(|v| {
                serde_wasm_bindgen::from_value::<OutboxEntry>(v)
                    .map_err(|e| corrupt("outbox record", e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ClientSnapshot {
            inbox,
            above,
            outbox,
        })
    }

    /// The `limit` highest-seq messages with `seq < before`, returned ascending.
    pub async fn messages_before(
        &self,
        conversation: &str,
        before: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.check()?;
        if limit == 0 || before == 0 {
            return Ok(Vec::new());
        }
        let tx = self.read_tx(&[PAGES])?;
        let pages = tx.store(PAGES)?.index(BY_BUCKET).map_err(from_idb)?;
        let floor = conversation_key(conversation, 0.0);
        let mut found = BTreeMap::new();
        let mut top = bucket_of(before - 1);
        // Bucket by bucket downwards: find the highest non-empty one at or
        // below `top` (a key cursor, so empty buckets cost nothing), read it whole.
        while found.len() < limit as usize {
            let below = key_range(&floor, &conversation_key(conversation, top), false, false)?;
            let cursor = pages
                .open_key_cursor(Some(below), Some(CursorDirection::Prev))
                .map_err(from_idb)?
                .await
                .map_err(from_idb)?;
            let Some(cursor) = cursor else { break };
            let bucket = bucket_in_key(&cursor.key().map_err(from_idb)?)?;
            let rows = pages
                .get_all(Some(conversation_key(conversation, bucket).into()), None)
                .map_err(from_idb)?
                .await
                .map_err(from_idb)?;
            merge_pages(rows, |seq| seq < before, &mut found)?;
            if bucket <= 0.0 {
                break;
            }
            top = bucket - 1.0;
        }
        let skip = found.len().saturating_sub(limit as usize);
        Ok(found.into_values().skip(skip).collect())
    }

    /// Up to `limit` messages with `seq > after`, ascending.
    pub async fn messages_after(
        &self,
        conversation: &str,
        after: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.check()?;
        if limit == 0 {
            return Ok(Vec::new());
        }
        let tx = self.read_tx(&[PAGES])?;
        let pages = tx.store(PAGES)?.index(BY_BUCKET).map_err(from_idb)?;
        pages_after(&pages, conversation, after, Some(limit)).await
    }

    /// Closes the connection once running transactions finish; later calls fail
    /// with [`StoreError::Failed`].
    pub fn close(&self) {
        if self.state.get() == State::Open {
            self.state.set(State::Closed);
        }
        self.db.set_onversionchange(None);
        self.db.set_onclose(None);
        self.db.close();
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        // Detach the handlers before their closures are freed.
        self.close();
    }
}

/// The messages of `conversation` with `seq > after`, ascending; at most
/// `limit` (all without one). Reads whole buckets upwards, at most `limit`
/// records per request (each holds at least one message).
async fn pages_after(
    pages: &idb::Index,
    conversation: &str,
    after: Seq,
    limit: Option<u32>,
) -> Result<Vec<StoredMessage>, StoreError> {
    let mut found = BTreeMap::new();
    let mut from = bucket_of(after.saturating_add(1));
    loop {
        let range = key_range(
            &conversation_key(conversation, from),
            &conversation_key(conversation, f64::INFINITY),
            false,
            false,
        )?;
        let mut rows = pages
            .get_all(Some(range), limit)
            .map_err(from_idb)?
            .await
            .map_err(from_idb)?;
        let Some(last) = rows.last() else { break };
        let last = bucket_in_record(last)?;
        // Fewer records than asked for: every bucket up to the end was read.
        let to_the_end = limit.is_none_or(|l| rows.len() < l as usize);
        if !to_the_end {
            // The last bucket may have more records than fitted: read it whole.
            let mut kept = Vec::with_capacity(rows.len());
            for row in rows {
                if bucket_in_record(&row)? != last {
                    kept.push(row);
                }
            }
            rows = kept;
            rows.extend(
                pages
                    .get_all(Some(conversation_key(conversation, last).into()), None)
                    .map_err(from_idb)?
                    .await
                    .map_err(from_idb)?,
            );
        }
        merge_pages(rows, |seq| seq > after, &mut found)?;
        if to_the_end || limit.is_some_and(|l| found.len() >= l as usize) {
            break;
        }
        from = last + 1.0;
    }
    let limit = limit.map_or(usize::MAX, |l| l as usize);
    Ok(found.into_values().take(limit).collect())
}

/// Adds the messages of `pages` records (in write order) whose seq passes
/// `keep` to `found`; a later record's copy of a seq replaces an earlier one.
fn merge_pages(
    rows: Vec<JsValue>,
    keep: impl Fn(Seq) -> bool,
    found: &mut BTreeMap<Seq, StoredMessage>,
) -> Result<(), StoreError> {
    for row in rows {
        let json = Reflect::get(&row, &JsValue::from_str("messages"))
            .ok()
            .and_then(|v| v.as_string())
            .ok_or_else(|| StoreError::Corrupt("page record without its messages".into()))?;
        let messages: Vec<StoredMessage> = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("page record: {e}")))?;
        for m in messages.into_iter().filter(|m| keep(m.seq)) {
            found.insert(m.seq, m);
        }
    }
    Ok(())
}

/// The bucket of a `pages` record.
fn bucket_in_record(row: &JsValue) -> Result<f64, StoreError> {
    Reflect::get(row, &JsValue::from_str("bucket"))
        .ok()
        .and_then(|v| v.as_f64())
        .ok_or_else(|| StoreError::Corrupt("page record without a bucket".into()))
}

/// The bucket in a `by_bucket` index key `[conversation, bucket]`.
fn bucket_in_key(key: &JsValue) -> Result<f64, StoreError> {
    Reflect::get(key, &JsValue::from_f64(1.0))
        .ok()
        .and_then(|v| v.as_f64())
        .ok_or_else(|| StoreError::Corrupt("page index key without a bucket".into()))
}
