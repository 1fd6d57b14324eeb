//! The browser client's IndexedDB store, through the `idb` crate.
//!
//! One database per client (`IdbStore::open(name)`) with four object stores:
//!
//! | store | key | records |
//! |---|---|---|
//! | `messages` | `["conversation", "seq"]` | [`StoredMessage`] fields plus `conversation` |
//! | `outbox` | `"id"`, index `by_conversation` on `["conversation", "created_at"]` | [`OutboxRecord`] |
//! | `conversations` | `"conversation"` | [`ConversationRecord`] (watermark, chain head, oldest seq) |
//! | `meta` | `"key"` | `{ key, value }` (the device id) |
//!
//! Schema versions, applied in order by the `upgradeneeded` handler from whatever
//! version the database has (0 for a new one): v1 creates `messages`, `outbox` and
//! `meta`; v2 adds `conversations` and the outbox's `by_conversation` index.
//!
//! Guarantees:
//! - Every write resolves only after its transaction's `complete` event, and every
//!   read-write transaction asks for `durability: "strict"` (flushed to disk before
//!   `complete`). web-sys exposes that option only under `web_sys_unstable_apis`, so a
//!   three-line hand-written binding of `IDBDatabase.transaction(names, mode, options)`
//!   is used instead (see `transaction_with_options`); browsers without the option
//!   ignore it.
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
use std::rc::Rc;

use idb::{CursorDirection, Factory, IndexParams, KeyPath, KeyRange, ObjectStore, ObjectStoreParams, Query};
use js_sys::{Array, Object, Promise, Reflect};
use protocol::{ChainHash, Millis, Seq, StoredMessage};
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DomException, IdbDatabase, IdbOpenDbRequest, IdbTransaction, IdbTransactionMode, IdbVersionChangeEvent};

/// Current schema version. Opening runs the upgrade steps from the stored version.
pub const DB_VERSION: u32 = 2;

const MESSAGES: &str = "messages";
const OUTBOX: &str = "outbox";
const CONVERSATIONS: &str = "conversations";
const META: &str = "meta";
const BY_CONVERSATION: &str = "by_conversation";
const DEVICE_ID_KEY: &str = "device_id";
/// Rejection value of the open promise when the open request reports `blocked`.
const BLOCKED: &str = "ackline:blocked";

/// A message typed by the user and not yet confirmed by the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OutboxRecord {
    /// Client message id (the idempotency key of `send`); the record's key.
    pub id: String,
    /// Conversation the message goes to.
    pub conversation: String,
    /// Message text.
    pub body: String,
    /// Local creation time; the outbox is read in `(created_at, id)` order.
    pub created_at: Millis,
    /// How many times it has been transmitted.
    pub attempts: u32,
}

/// What the device knows about one conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ConversationRecord {
    /// Conversation id; the record's key.
    pub conversation: String,
    /// Highest seq such that 1..=watermark are stored locally (the cumulative ack).
    pub watermark: Seq,
    /// Chain value at `watermark` (stored as 32 hex digits).
    pub chain: ChainHash,
    /// Lowest seq stored locally, for paging back through history.
    #[serde(default)]
    pub oldest: Option<Seq>,
}

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
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "store_unavailable",
            StoreError::Blocked => "store_blocked",
            StoreError::VersionChange => "store_version_change",
            StoreError::QuotaExceeded => "store_quota",
            StoreError::Corrupt(_) => "store_corrupt",
            StoreError::Failed(_) => "store_failed",
        }
    }
}

impl From<StoreError> for JsValue {
    /// A JS `Error` whose `code` property is [`StoreError::code`].
    fn from(err: StoreError) -> JsValue {
        let js = js_sys::Error::new(&err.to_string());
        let _ = Reflect::set(&js, &JsValue::from_str("code"), &JsValue::from_str(err.code()));
        js.into()
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
        E::IndexedDbNotFound(_) => StoreError::Unavailable("IndexedDB is not available in this context".into()),
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

/// The `messages` record: a [`StoredMessage`] plus its conversation.
#[derive(Serialize)]
struct MessageRow<'a> {
    conversation: &'a str,
    seq: Seq,
    user: &'a str,
    device: &'a str,
    id: &'a str,
    body: &'a str,
    at: Millis,
    chain: &'a ChainHash,
}

/// The `meta` record.
#[derive(Serialize, Deserialize)]
struct MetaRow {
    key: String,
    value: String,
}

fn seq_key(conversation: &str, seq: f64) -> JsValue {
    Array::of2(&JsValue::from_str(conversation), &JsValue::from_f64(seq)).into()
}

fn key_range(lower: &JsValue, upper: &JsValue, lower_open: bool, upper_open: bool) -> Result<Query, StoreError> {
    KeyRange::bound(lower, upper, Some(lower_open), Some(upper_open)).map(Query::from).map_err(from_idb)
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
        Tx { raw, done: JsFuture::from(done) }
    }

    fn store(&self, name: &str) -> Result<ObjectStore, StoreError> {
        self.raw.object_store(name).map(ObjectStore::from).map_err(|e| from_js(&e))
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
    _on_version_change: Closure<dyn FnMut()>,
    _on_close: Closure<dyn FnMut()>,
}

impl std::fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdbStore").field("name", &self.db.name()).field("state", &self.state.get()).finish()
    }
}

/// Creates the object stores of every version above `old`, in order.
fn upgrade(req: &IdbOpenDbRequest, old: f64) -> Result<(), StoreError> {
    let db: IdbDatabase = req
        .result()
        .map_err(|e| from_js(&e))?
        .dyn_into()
        .map_err(|_| StoreError::Failed("upgrade: result is not a database".into()))?;
    let tx = req.transaction().ok_or_else(|| StoreError::Failed("upgrade: no version change transaction".into()))?;
    let db = idb::Database::from(db);
    if old < 1.0 {
        let mut params = ObjectStoreParams::new();
        params.key_path(Some(KeyPath::new_array(["conversation", "seq"])));
        db.create_object_store(MESSAGES, params).map_err(from_idb)?;
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
        db.create_object_store(CONVERSATIONS, params).map_err(from_idb)?;
        let outbox = tx.object_store(OUTBOX).map(ObjectStore::from).map_err(|e| from_js(&e))?;
        outbox
            .create_index(BY_CONVERSATION, KeyPath::new_array(["conversation", "created_at"]), Some(IndexParams::new()))
            .map_err(from_idb)?;
    }
    Ok(())
}

impl IdbStore {
    /// Opens (creating or upgrading to [`DB_VERSION`]) the database `name`.
    ///
    /// Fails with [`StoreError::Blocked`] at once if the upgrade has to wait for a
    /// connection in another tab that does not close; the pending request is then
    /// left to finish on its own and its connection closed as soon as it opens.
    pub async fn open(name: &str) -> Result<IdbStore, StoreError> {
        let factory: web_sys::IdbFactory = Factory::new().map_err(from_idb)?.into();
        let req = factory.open_with_u32(name, DB_VERSION).map_err(|e| match from_js(&e) {
            StoreError::Failed(m) => StoreError::Unavailable(m),
            other => other,
        })?;

        let upgrade_error: Rc<RefCell<Option<StoreError>>> = Rc::default();
        let on_upgrade = {
            let req = req.clone();
            let slot = upgrade_error.clone();
            Closure::once(move |event: IdbVersionChangeEvent| {
                if let Err(e) = upgrade(&req, event.old_version()) {
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
            let blocked: js_sys::Function = reject.bind1(&JsValue::NULL, &JsValue::from_str(BLOCKED)).unchecked_into();
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
        Ok(IdbStore { db, state, _on_version_change: on_version_change, _on_close: on_close })
    }

    fn check(&self) -> Result<(), StoreError> {
        match self.state.get() {
            State::Open => Ok(()),
            State::Closed => Err(StoreError::Failed("the store was closed".into())),
            State::VersionChanged => Err(StoreError::VersionChange),
            State::Lost => Err(StoreError::Unavailable("the browser closed the database connection".into())),
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
        let _ = Reflect::set(&options, &JsValue::from_str("durability"), &JsValue::from_str("strict"));
        self.db
            .unchecked_ref::<DatabaseWithOptions>()
            .transaction_with_options(&names, "readwrite", &options)
            .map(Tx::new)
            .map_err(|e| from_js(&e))
    }

    /// Queues the requests `queue` makes in one strict read-write transaction and
    /// resolves after `complete`; aborts the transaction if `queue` fails.
    async fn write(&self, stores: &[&str], queue: impl FnOnce(&Tx) -> Result<(), StoreError>) -> Result<(), StoreError> {
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
            let existing = meta.get(JsValue::from_str(DEVICE_ID_KEY)).map_err(from_idb)?.await.map_err(from_idb)?;
            match existing {
                Some(v) => {
                    let row: MetaRow = serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("device id", e))?;
                    Ok(row.value)
                }
                None => {
                    let id = make();
                    let row = to_js(&MetaRow { key: DEVICE_ID_KEY.into(), value: id.clone() })?;
                    meta.put(&row, None).map_err(from_idb)?;
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

    /// Stores (or replaces) an outbox record; resolves once it is durably committed.
    pub async fn put_outbox(&self, rec: &OutboxRecord) -> Result<(), StoreError> {
        let value = to_js(rec)?;
        self.write(&[OUTBOX], |tx| {
            tx.store(OUTBOX)?.put(&value, None).map_err(from_idb)?;
            Ok(())
        })
        .await
    }

    /// Deletes the outbox records with these ids (missing ones are ignored), in one
    /// transaction.
    pub async fn remove_outbox(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return self.check();
        }
        self.write(&[OUTBOX], |tx| {
            let outbox = tx.store(OUTBOX)?;
            for id in ids {
                outbox.delete(JsValue::from_str(id)).map_err(from_idb)?;
            }
            Ok(())
        })
        .await
    }

    /// The outbox of one conversation in creation order (`created_at`, then `id`).
    pub async fn outbox(&self, conversation: &str) -> Result<Vec<OutboxRecord>, StoreError> {
        let tx = self.read_tx(&[OUTBOX])?;
        let index = tx.store(OUTBOX)?.index(BY_CONVERSATION).map_err(from_idb)?;
        let range = key_range(&seq_key(conversation, f64::NEG_INFINITY), &seq_key(conversation, f64::INFINITY), false, false)?;
        let rows = index.get_all(Some(range), None).map_err(from_idb)?.await.map_err(from_idb)?;
        rows.into_iter()
            .map(|v| serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("outbox record", e)))
            .collect()
    }

    /// Writes `messages` (idempotent puts keyed by `(conversation, seq)`) and the
    /// conversation record `state` in ONE transaction; resolves after `complete`, so
    /// the caller may ack the batch then. `state.conversation` is ignored: the record
    /// is stored under `conversation`.
    pub async fn store_batch(
        &self,
        conversation: &str,
        messages: &[StoredMessage],
        state: &ConversationRecord,
    ) -> Result<(), StoreError> {
        let record = to_js(&ConversationRecord { conversation: conversation.to_owned(), ..state.clone() })?;
        self.write(&[MESSAGES, CONVERSATIONS], |tx| {
            let store = tx.store(MESSAGES)?;
            for m in messages {
                let row = to_js(&MessageRow {
                    conversation,
                    seq: m.seq,
                    user: &m.user,
                    device: &m.device,
                    id: &m.id,
                    body: &m.body,
                    at: m.at,
                    chain: &m.chain,
                })?;
                store.put(&row, None).map_err(from_idb)?;
            }
            tx.store(CONVERSATIONS)?.put(&record, None).map_err(from_idb)?;
            Ok(())
        })
        .await
    }

    /// The stored state of one conversation, if any.
    pub async fn conversation(&self, conversation: &str) -> Result<Option<ConversationRecord>, StoreError> {
        let tx = self.read_tx(&[CONVERSATIONS])?;
        let row = tx
            .store(CONVERSATIONS)?
            .get(JsValue::from_str(conversation))
            .map_err(from_idb)?
            .await
            .map_err(from_idb)?;
        row.map(|v| serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("conversation record", e))).transpose()
    }

    /// The `limit` highest-seq messages with `seq < before`, returned ascending.
    pub async fn messages_before(&self, conversation: &str, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.check()?;
        if limit == 0 || before == 0 {
            return Ok(Vec::new());
        }
        let tx = self.read_tx(&[MESSAGES])?;
        let store = tx.store(MESSAGES)?;
        let floor = seq_key(conversation, 0.0);
        let upper = seq_key(conversation, before as f64);
        // Walk keys downwards to the limit-th one below `before`, then read that
        // range ascending in one request.
        let cursor = store
            .open_key_cursor(Some(key_range(&floor, &upper, false, true)?), Some(CursorDirection::Prev))
            .map_err(from_idb)?
            .await
            .map_err(from_idb)?;
        let Some(cursor) = cursor else {
            return Ok(Vec::new());
        };
        let lower = if limit == 1 {
            cursor.key().map_err(from_idb)?
        } else {
            match cursor.advance(limit - 1).map_err(from_idb)?.await.map_err(from_idb)? {
                Some(c) => c.key().map_err(from_idb)?,
                None => floor,
            }
        };
        let rows = store
            .get_all(Some(key_range(&lower, &upper, false, true)?), None)
            .map_err(from_idb)?
            .await
            .map_err(from_idb)?;
        decode_messages(rows)
    }

    /// Up to `limit` messages with `seq > after`, ascending.
    pub async fn messages_after(&self, conversation: &str, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.check()?;
        if limit == 0 {
            // IndexedDB reads a count of 0 as "no limit".
            return Ok(Vec::new());
        }
        let tx = self.read_tx(&[MESSAGES])?;
        let range = key_range(&seq_key(conversation, after as f64), &seq_key(conversation, f64::INFINITY), true, false)?;
        let rows = tx.store(MESSAGES)?.get_all(Some(range), Some(limit)).map_err(from_idb)?.await.map_err(from_idb)?;
        decode_messages(rows)
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

fn decode_messages(rows: Vec<JsValue>) -> Result<Vec<StoredMessage>, StoreError> {
    rows.into_iter()
        .map(|v| serde_wasm_bindgen::from_value(v).map_err(|e| corrupt("message", e)))
        .collect()
}
