//! The conversation's SQLite storage (Durable Object SQL API): the edge's
//! [`DurableStore`], checked by the server store suite on workerd
//! (`store_suite.rs`, the contract in protocol/src/store.rs).
//!
//! Every call is synchronous. A batch of the core's writes runs inside one
//! `transactionSync`, so a refused write rolls back the whole batch; and
//! workerd's output gate holds every outgoing frame until the writes are
//! durable: that is what lets the shell report a batch durable as soon as
//! [`Store::commit`] returns.

use protocol::store::{check_range, CommitError, DurableStore};
use protocol::{
    ChainHash, ConversationStore, Cursor, DeviceRecord, Seq, ServerWrite, StoreError,
    StoredMessage, MAX_SEQ,
};
use serde::Deserialize;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::{Result, SqlStorage, SqlStorageValue, Storage};

#[wasm_bindgen]
extern "C" {
    /// The Durable Object's storage object, for the one method workers-rs
    /// 0.8.7 does not bind.
    type SyncTransactions;

    /// `ctx.storage.transactionSync(body)`: runs `body`; if it throws, every
    /// SQL write it made is rolled back and the exception is rethrown.
    #[wasm_bindgen(method, catch, js_name = transactionSync)]
    fn transaction_sync(
        this: &SyncTransactions,
        body: &mut dyn FnMut() -> std::result::Result<JsValue, JsValue>,
    ) -> std::result::Result<JsValue, JsValue>;
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq       INTEGER PRIMARY KEY,
    user      TEXT NOT NULL,
    device    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    body      TEXT NOT NULL,
    at        INTEGER NOT NULL,
    chain     TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_sender_id ON messages (user, device, client_id);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    user    TEXT NOT NULL,
    device  TEXT NOT NULL,
    through INTEGER NOT NULL,
    seen    INTEGER NOT NULL,
    PRIMARY KEY (user, device)
);
";

/// The schema version `SCHEMA` creates; older storage is migrated on open.
const SCHEMA_VERSION: &str = "2";

/// Version 1 keyed devices by device id alone (one user's token could act for
/// another user's device with the same id). Its rows become version 2 rows of
/// the same user, stamped as seen now so retention starts counting today.
/// One statement per entry; the `?` is the migration time.
const MIGRATE_FROM_1: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS cursors (device TEXT PRIMARY KEY, user TEXT NOT NULL, through INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO devices (user, device, through, seen) SELECT user, device, through, ? FROM cursors",
    "DROP TABLE cursors",
    "DROP INDEX IF EXISTS messages_idempotency",
];

/// Whether an `INSERT OR IGNORE` of a message stored it, and if not, why.
enum Inserted {
    Yes,
    SeqTaken,
    IdTaken,
}

/// Typed access to one conversation's tables.
pub struct Store {
    sql: SqlStorage,
    transactions: SyncTransactions,
}

#[derive(Deserialize)]
struct MessageRow {
    seq: Seq,
    user: String,
    device: String,
    client_id: String,
    body: String,
    at: u64,
    chain: String,
}

impl MessageRow {
    fn into_message(self) -> StoredMessage {
        StoredMessage {
            seq: self.seq,
            user: self.user,
            device: self.device,
            id: self.client_id,
            body: self.body,
            at: self.at,
            // Only this module writes the column, always from a ChainHash.
            chain: ChainHash::from_hex(&self.chain).unwrap_or_default(),
        }
    }
}

#[derive(Deserialize)]
struct DeviceRow {
    user: String,
    device: String,
    through: Seq,
    seen: u64,
}

const MESSAGE_COLUMNS: &str = "seq, user, device, client_id, body, at, chain";

fn int(value: u64) -> Result<SqlStorageValue> {
    i64::try_from(value)
        .map_err(|_| worker::Error::from("integer out of range"))
        .and_then(SqlStorageValue::try_from_i64)
}

impl Store {
    /// Opens the tables, creating them on first use and migrating older
    /// storage.
    pub fn open(storage: &Storage, now: u64) -> Result<Store> {
        let sql = storage.sql();
        sql.exec(SCHEMA, None)?;
        let raw: &JsValue = storage.as_raw().as_ref();
        let transactions = raw.clone().unchecked_into::<SyncTransactions>();
        let store = Store { sql, transactions };
        if store.meta("schema")?.as_deref() != Some(SCHEMA_VERSION) {
            for statement in MIGRATE_FROM_1 {
                let bindings = if statement.contains('?') {
                    vec![int(now)?]
                } else {
                    vec![]
                };
                store.sql.exec(statement, bindings)?;
            }
            store.sql.exec(
                "INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                vec![SCHEMA_VERSION.into()],
            )?;
        }
        Ok(store)
    }

    fn meta(&self, key: &str) -> Result<Option<String>> {
        #[derive(Deserialize)]
        struct Row {
            value: String,
        }
        let rows: Vec<Row> = self
            .sql
            .exec("SELECT value FROM meta WHERE key = ?", vec![key.into()])?
            .to_array()?;
        Ok(rows.into_iter().next().map(|r| r.value))
    }

    fn messages(&self, query: &str, bindings: Vec<SqlStorageValue>) -> Result<Vec<StoredMessage>> {
        let rows: Vec<MessageRow> = self.sql.exec(query, bindings)?.to_array()?;
        Ok(rows.into_iter().map(MessageRow::into_message).collect())
    }

    /// The last stored message, if any.
    pub fn last(&self) -> Result<Option<StoredMessage>> {
        let query = format!("SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY seq DESC LIMIT 1");
        Ok(self.messages(&query, vec![])?.pop())
    }

    /// The message a user's device stored under a client message id, if any.
    pub fn find(&self, user: &str, device: &str, client_id: &str) -> Result<Option<StoredMessage>> {
        let query =
            format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE user = ? AND device = ? AND client_id = ?");
        Ok(self
            .messages(&query, vec![user.into(), device.into(), client_id.into()])?
            .pop())
    }

    /// Stores a message unless its seq or its (user, device, client id) is
    /// taken: then it says which, and writes nothing.
    fn insert(&self, m: &StoredMessage) -> std::result::Result<(), CommitError> {
        match self.try_insert(m).map_err(write_error)? {
            Inserted::Yes => Ok(()),
            Inserted::SeqTaken => Err(CommitError::SeqTaken { seq: m.seq }),
            Inserted::IdTaken => Err(CommitError::DuplicateId {
                user: m.user.clone(),
                device: m.device.clone(),
                id: m.id.clone(),
            }),
        }
    }

    fn try_insert(&self, m: &StoredMessage) -> Result<Inserted> {
        #[derive(Deserialize)]
        struct Row {
            #[allow(dead_code)] // only whether a row came back matters
            seq: Seq,
        }
        let inserted: Vec<Row> = self
            .sql
            .exec(
                "INSERT OR IGNORE INTO messages (seq, user, device, client_id, body, at, chain)
                 VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
                vec![
                    int(m.seq)?,
                    m.user.as_str().into(),
                    m.device.as_str().into(),
                    m.id.as_str().into(),
                    m.body.as_str().into(),
                    int(m.at)?,
                    m.chain.to_hex().into(),
                ],
            )?
            .to_array()?;
        if !inserted.is_empty() {
            return Ok(Inserted::Yes);
        }
        // Ignored: a conflict on the seq or on the dedup index. Only now is it
        // worth reading which (the same order of checks as MemoryStore).
        let query = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE seq = ?");
        if self.messages(&query, vec![int(m.seq)?])?.is_empty() {
            Ok(Inserted::IdTaken)
        } else {
            Ok(Inserted::SeqTaken)
        }
    }

    /// Carries out one write (inside the batch's transaction).
    fn write(&self, op: &ServerWrite) -> std::result::Result<(), CommitError> {
        match op {
            ServerWrite::Append(message) => self.insert(message),
            ServerWrite::Cursor(cursor) => self.set_cursor(cursor).map_err(write_error),
            ServerWrite::Seen { user, device, at } => {
                self.seen(user, device, *at).map_err(write_error)
            }
            ServerWrite::Forget { user, device } => self.forget(user, device).map_err(write_error),
        }
    }

    /// Applies the core's writes in order, all or nothing (one
    /// `transactionSync`): a refused or failed write rolls back the batch.
    pub fn commit(&self, batch: &[ServerWrite]) -> std::result::Result<(), CommitError> {
        if batch.is_empty() {
            return Ok(());
        }
        for op in batch {
            check_range(op)?;
        }
        let mut refusal = None;
        let outcome = {
            let mut body = || {
                for op in batch {
                    if let Err(e) = self.write(op) {
                        let thrown = JsValue::from_str(&e.to_string());
                        refusal = Some(e);
                        return Err(thrown);
                    }
                }
                Ok(JsValue::UNDEFINED)
            };
            self.transactions.transaction_sync(&mut body)
        };
        match (outcome, refusal) {
            (Ok(_), _) => Ok(()),
            (Err(_), Some(refusal)) => Err(refusal),
            (Err(thrown), None) => Err(write_error(worker::Error::from(thrown))),
        }
    }

    /// Records the conversation id on first use (a Durable Object does not
    /// otherwise know the name it was addressed by after a restart).
    pub fn remember_conversation(&self, id: &str) -> Result<()> {
        self.sql.exec(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('conversation', ?)",
            vec![id.into()],
        )?;
        Ok(())
    }

    /// The conversation id recorded by [`Store::remember_conversation`].
    pub fn conversation(&self) -> Result<Option<String>> {
        self.meta("conversation")
    }

    /// A connection id never used before in this conversation, even across
    /// restarts (sockets that survive an eviction keep theirs).
    pub fn next_conn_id(&self) -> Result<u64> {
        #[derive(Deserialize)]
        struct Row {
            value: String,
        }
        let rows: Vec<Row> = self
            .sql
            .exec(
                "INSERT INTO meta (key, value) VALUES ('next_conn', '1')
                 ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
                 RETURNING value",
                None,
            )?
            .to_array()?;
        rows.first()
            .and_then(|r| r.value.parse().ok())
            .ok_or_else(|| worker::Error::from("connection counter unreadable"))
    }

    /// Up to `limit` messages with `after < seq < before`, ascending
    /// (`before` absent: up to and including seq `MAX_SEQ`).
    pub fn range(&self, after: Seq, before: Option<Seq>, limit: u32) -> Result<Vec<StoredMessage>> {
        if after >= MAX_SEQ {
            return Ok(Vec::new());
        }
        // Inclusive upper bound: `before` may be MAX_SEQ + 1, which SQLite
        // cannot get through a JavaScript number.
        let through = before.map_or(MAX_SEQ, |b| b.saturating_sub(1).min(MAX_SEQ));
        let query = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE seq > ? AND seq <= ? ORDER BY seq ASC LIMIT ?"
        );
        self.messages(
            &query,
            vec![int(after)?, int(through)?, int(u64::from(limit))?],
        )
    }

    /// The `limit` messages just below `before`, ascending. The core asks
    /// for `before = head + 1`, which is MAX_SEQ + 1 at the very end.
    pub fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>> {
        if before <= 1 {
            return Ok(Vec::new());
        }
        let through = (before - 1).min(MAX_SEQ);
        let query = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE seq <= ? ORDER BY seq DESC LIMIT ?"
        );
        let mut page = self.messages(&query, vec![int(through)?, int(u64::from(limit))?])?;
        page.reverse();
        Ok(page)
    }

    /// Every device's record.
    pub fn devices(&self) -> Result<Vec<DeviceRecord>> {
        let rows: Vec<DeviceRow> = self
            .sql
            .exec("SELECT user, device, through, seen FROM devices", None)?
            .to_array()?;
        Ok(rows
            .into_iter()
            .map(|r| DeviceRecord {
                cursor: Cursor {
                    user: r.user,
                    device: r.device,
                    through: r.through,
                },
                seen: r.seen,
            })
            .collect())
    }

    /// Records a device's cursor (it only moves forward).
    fn set_cursor(&self, cursor: &Cursor) -> Result<()> {
        self.sql.exec(
            "INSERT INTO devices (user, device, through, seen) VALUES (?, ?, ?, 0)
             ON CONFLICT (user, device) DO UPDATE SET through = MAX(through, excluded.through)",
            vec![
                cursor.user.as_str().into(),
                cursor.device.as_str().into(),
                int(cursor.through)?,
            ],
        )?;
        Ok(())
    }

    /// Records that a device connected at `at` (creating its record).
    fn seen(&self, user: &str, device: &str, at: u64) -> Result<()> {
        self.sql.exec(
            "INSERT INTO devices (user, device, through, seen) VALUES (?, ?, 0, ?)
             ON CONFLICT (user, device) DO UPDATE SET seen = MAX(seen, excluded.seen)",
            vec![user.into(), device.into(), int(at)?],
        )?;
        Ok(())
    }

    /// Deletes a device's record.
    fn forget(&self, user: &str, device: &str) -> Result<()> {
        self.sql.exec(
            "DELETE FROM devices WHERE user = ? AND device = ?",
            vec![user.into(), device.into()],
        )?;
        Ok(())
    }
}

fn read_error(e: worker::Error) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn write_error(e: worker::Error) -> CommitError {
    CommitError::Storage(e.to_string())
}

impl DurableStore for Store {
    fn commit(&mut self, batch: &[ServerWrite]) -> std::result::Result<(), CommitError> {
        Store::commit(self, batch)
    }
}

impl ConversationStore for Store {
    fn last(&self) -> std::result::Result<Option<StoredMessage>, StoreError> {
        Store::last(self).map_err(read_error)
    }

    fn find(
        &self,
        user: &str,
        device: &str,
        id: &str,
    ) -> std::result::Result<Option<StoredMessage>, StoreError> {
        Store::find(self, user, device, id).map_err(read_error)
    }

    fn after(&self, after: Seq, limit: u32) -> std::result::Result<Vec<StoredMessage>, StoreError> {
        self.range(after, None, limit).map_err(read_error)
    }

    fn before(
        &self,
        before: Seq,
        limit: u32,
    ) -> std::result::Result<Vec<StoredMessage>, StoreError> {
        Store::before(self, before, limit).map_err(read_error)
    }

    fn devices(&self) -> std::result::Result<Vec<DeviceRecord>, StoreError> {
        Store::devices(self).map_err(read_error)
    }
}
