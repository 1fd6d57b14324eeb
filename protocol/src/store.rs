//! What a conversation's storage must do for the core, and an in-memory store
//! that does it.
//!
//! # The contract
//!
//! The core ([`crate::server::Conversation`]) reads through
//! [`ConversationStore`] and writes by emitting [`ServerWrite`]s in
//! `ServerOutput::Persist`. A store that serves it is a [`DurableStore`]:
//!
//! 1. **Order.** [`DurableStore::commit`] applies a batch's writes in the
//!    order given; later batches apply after earlier ones. Order matters:
//!    `Forget` then `Seen` recreates a device, `Seen` then `Forget` deletes it.
//! 2. **Atomic per batch.** A refused batch leaves no trace: neither its
//!    earlier writes nor anything else change.
//! 3. **Durable on return.** Once `commit` returns `Ok`, the batch survives a
//!    restart of the process holding the store; reads see it at once.
//! 4. **Meaning of each write.**
//!    - `Append(m)` stores `m` field by field. It is refused when its seq is
//!      taken ([`CommitError::SeqTaken`]) or when `(user, device, id)` was
//!      stored before under any seq ([`CommitError::DuplicateId`]): the
//!      unique index that makes sends idempotent forever.
//!    - `Cursor(c)` creates the device's record (last seen 0) if missing and
//!      raises its cursor to `c.through`; a cursor never moves back.
//!    - `Seen { at }` creates the record (cursor 0) if missing and raises its
//!      last-seen time to `at`; it never moves back either.
//!    - `Forget` deletes the record if there is one; messages stay, so the
//!      dedup index still answers for a forgotten device.
//! 5. **Range.** Seqs are 1..=[`MAX_SEQ`], and every integer (seq, time,
//!    cursor) is at most `MAX_SEQ`: the edge keeps integers in SQLite through
//!    JavaScript numbers. Anything else is refused ([`CommitError::OutOfRange`]).
//! 6. **Reads** ([`ConversationStore`]) see every committed batch: `last`,
//!    `find`, `after` and `before` over messages (up to and including seq
//!    `MAX_SEQ`), `devices` in any order. `Conversation::new` rebuilds the
//!    core from `last` and `devices` alone.
//!
//! `tests/src/server_store_suite.rs` checks this contract, against
//! [`MemoryStore`], the simulator's disk, and the edge's SQLite store in a
//! Durable Object on workerd.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::frame::{Cursor, Millis, Seq, StoredMessage, MAX_SEQ};
use crate::server::{ConversationStore, DeviceKey, DeviceRecord, ServerWrite, StoreError};

/// Why a batch was refused; the batch left no trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// An append to a seq that is already stored.
    #[error("seq {seq} is already stored")]
    SeqTaken {
        /// The seq.
        seq: Seq,
    },
    /// An append whose `(user, device, id)` is already stored.
    #[error("{user}/{device} already stored client message {id}")]
    DuplicateId {
        /// The sending user.
        user: String,
        /// The sending device.
        device: String,
        /// The client message id.
        id: String,
    },
    /// A seq of 0, or an integer above [`MAX_SEQ`].
    #[error("{field} {value} is outside 1..={MAX_SEQ}")]
    OutOfRange {
        /// Which value.
        field: &'static str,
        /// The value.
        value: u64,
    },
    /// The backend failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<StoreError> for CommitError {
    fn from(e: StoreError) -> CommitError {
        CommitError::Storage(e.to_string())
    }
}

/// A conversation store that also takes the core's writes; see the module
/// docs for the contract.
pub trait DurableStore: ConversationStore {
    /// Applies `batch` in order, all or nothing, durably before it returns.
    fn commit(&mut self, batch: &[ServerWrite]) -> Result<(), CommitError>;
}

/// Refuses the integers a store cannot hold (see the module docs, point 5);
/// every store checks this before it writes anything.
pub fn check_range(op: &ServerWrite) -> Result<(), CommitError> {
    let at_most_max = |field: &'static str, value: u64| {
        if value > MAX_SEQ {
            Err(CommitError::OutOfRange { field, value })
        } else {
            Ok(())
        }
    };
    match op {
        ServerWrite::Append(m) => {
            if m.seq == 0 {
                return Err(CommitError::OutOfRange {
                    field: "seq",
                    value: 0,
                });
            }
            at_most_max("seq", m.seq)?;
            at_most_max("at", m.at)
        }
        ServerWrite::Cursor(c) => at_most_max("through", c.through),
        ServerWrite::Seen { at, .. } => at_most_max("seen", *at),
        ServerWrite::Forget { .. } => Ok(()),
    }
}

/// One conversation's tables in memory, as the Durable Object's SQLite holds
/// them: the store of protocol tests, the pair harness and the simulator
/// (whose disk keeps one durable and one visible copy).
///
/// The fields are public for tests that inspect it (and seed device
/// records). Messages must only be added through [`MemoryStore::commit`] or
/// [`MemoryStore::apply`], which keep `by_id` in step with `messages`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStore {
    /// `messages` by seq.
    pub messages: BTreeMap<Seq, StoredMessage>,
    /// `devices` by (user, device): the cursor and the last-seen time.
    pub cursors: BTreeMap<DeviceKey, (Cursor, Millis)>,
    /// The unique (user, device, client id) index over `messages`: seq by key.
    pub by_id: HashMap<(String, String, String), Seq>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Highest stored seq (0 when empty).
    pub fn head(&self) -> Seq {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }

    /// Why `batch` would be refused by [`MemoryStore::commit`] now, if it would.
    pub fn check(&self, batch: &[ServerWrite]) -> Result<(), CommitError> {
        // Appends earlier in the same batch count as stored.
        let mut seqs = HashSet::new();
        let mut ids = HashSet::new();
        for op in batch {
            check_range(op)?;
            let ServerWrite::Append(m) = op else { continue };
            if self.messages.contains_key(&m.seq) || !seqs.insert(m.seq) {
                return Err(CommitError::SeqTaken { seq: m.seq });
            }
            let key = (m.user.as_str(), m.device.as_str(), m.id.as_str());
            let stored =
                self.by_id
                    .contains_key(&(key.0.to_owned(), key.1.to_owned(), key.2.to_owned()));
            if stored || !ids.insert(key) {
                return Err(CommitError::DuplicateId {
                    user: m.user.clone(),
                    device: m.device.clone(),
                    id: m.id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Applies one write as given, without the refusals of `commit`. For
    /// models that must record whatever a core wrote, even a broken one:
    /// the simulator's checker has to see a duplicate to report it.
    pub fn apply(&mut self, op: &ServerWrite) {
        match op {
            ServerWrite::Append(m) => {
                self.by_id
                    .insert((m.user.clone(), m.device.clone(), m.id.clone()), m.seq);
                self.messages.insert(m.seq, m.clone());
            }
            ServerWrite::Cursor(c) => {
                let key = (c.user.clone(), c.device.clone());
                let record = self.cursors.entry(key).or_insert_with(|| (c.clone(), 0));
                record.0.through = record.0.through.max(c.through);
            }
            ServerWrite::Seen { user, device, at } => {
                let cursor = Cursor {
                    user: user.clone(),
                    device: device.clone(),
                    through: 0,
                };
                let record = self
                    .cursors
                    .entry((user.clone(), device.clone()))
                    .or_insert((cursor, 0));
                record.1 = record.1.max(*at);
            }
            ServerWrite::Forget { user, device } => {
                self.cursors.remove(&(user.clone(), device.clone()));
            }
        }
    }
}

impl DurableStore for MemoryStore {
    fn commit(&mut self, batch: &[ServerWrite]) -> Result<(), CommitError> {
        // Checked as a whole first, so a refusal changes nothing.
        self.check(batch)?;
        for op in batch {
            self.apply(op);
        }
        Ok(())
    }
}

impl ConversationStore for MemoryStore {
    fn last(&self) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages.values().next_back().cloned())
    }

    fn find(
        &self,
        user: &str,
        device: &str,
        id: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self
            .by_id
            .get(&(user.to_owned(), device.to_owned(), id.to_owned()))
            .and_then(|seq| self.messages.get(seq))
            .cloned())
    }

    fn after(&self, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let Some(from) = after.checked_add(1) else {
            return Ok(Vec::new());
        };
        Ok(self
            .messages
            .range(from..)
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect())
    }

    fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let mut page: Vec<StoredMessage> = self
            .messages
            .range(..before)
            .rev()
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect();
        page.reverse();
        Ok(page)
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self
            .cursors
            .values()
            .map(|(cursor, seen)| DeviceRecord {
                cursor: cursor.clone(),
                seen: *seen,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainHash;

    fn message(seq: Seq, id: &str) -> StoredMessage {
        StoredMessage {
            seq,
            user: "ann".into(),
            device: "a1".into(),
            id: id.into(),
            body: "hi".into(),
            at: 1,
            chain: ChainHash::GENESIS,
        }
    }

    // Rule: a batch that repeats a client id within itself is refused whole.
    #[test]
    fn a_duplicate_inside_one_batch_refuses_the_batch() {
        let mut store = MemoryStore::new();
        let batch = [
            ServerWrite::Append(message(1, "x")),
            ServerWrite::Append(message(2, "x")),
        ];
        assert!(matches!(
            store.commit(&batch),
            Err(CommitError::DuplicateId { .. })
        ));
        assert_eq!(store, MemoryStore::new());
    }

    // Rule: `apply` records what it is given, so a model can show a broken core's duplicate.
    #[test]
    fn apply_records_a_duplicate_that_commit_would_refuse() {
        let mut store = MemoryStore::new();
        store.apply(&ServerWrite::Append(message(1, "x")));
        store.apply(&ServerWrite::Append(message(2, "x")));
        assert_eq!(store.messages.len(), 2);
        assert_eq!(store.find("ann", "a1", "x"), Ok(Some(message(2, "x"))));
    }
}
