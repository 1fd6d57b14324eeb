//! Simulated disks: every write is pending until a flush makes it durable,
//! and a crash throws the pending writes away.

use std::collections::{BTreeMap, HashMap, VecDeque};

use protocol::client::{ClientSnapshot, ClientWrite, InboxState, OutboxEntry};
use protocol::server::{ConversationStore, DeviceRecord, ServerWrite, StoreError};
use protocol::{Cursor, Seq, StoredMessage, WriteId};

/// One conversation's tables, as the Durable Object's SQLite holds them.
#[derive(Debug, Clone, Default)]
pub struct ServerData {
    /// `messages` by seq.
    pub messages: BTreeMap<Seq, StoredMessage>,
    /// The unique (user, device, client id) index.
    pub by_id: HashMap<(String, String, String), Seq>,
    /// `cursors` by (user, device), with the device's last-seen time.
    pub cursors: BTreeMap<(String, String), (Cursor, u64)>,
}

impl ServerData {
    fn apply(&mut self, op: &ServerWrite) {
        match op {
            ServerWrite::Append(m) => {
                self.by_id.insert((m.user.clone(), m.device.clone(), m.id.clone()), m.seq);
                self.messages.insert(m.seq, m.clone());
            }
            ServerWrite::Cursor(c) => {
                let key = (c.user.clone(), c.device.clone());
                let e = self.cursors.entry(key).or_insert_with(|| (c.clone(), 0));
                e.0.through = e.0.through.max(c.through);
            }
            ServerWrite::Seen { user, device, at } => {
                let cursor = Cursor { user: user.clone(), device: device.clone(), through: 0 };
                let e = self.cursors.entry((user.clone(), device.clone())).or_insert((cursor, 0));
                e.1 = e.1.max(*at);
            }
            ServerWrite::Forget { user, device } => {
                self.cursors.remove(&(user.clone(), device.clone()));
            }
        }
    }

    /// Highest stored seq.
    pub fn head(&self) -> Seq {
        self.messages.keys().next_back().copied().unwrap_or(0)
    }
}

impl ConversationStore for ServerData {
    fn last(&self) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self.messages.values().next_back().cloned())
    }
    fn find(&self, user: &str, device: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
        Ok(self
            .by_id
            .get(&(user.to_owned(), device.to_owned(), id.to_owned()))
            .and_then(|s| self.messages.get(s))
            .cloned())
    }
    fn after(&self, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        Ok(self
            .messages
            .range(after.saturating_add(1)..)
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect())
    }
    fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        let mut v: Vec<_> = self
            .messages
            .range(..before)
            .rev()
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect();
        v.reverse();
        Ok(v)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        Ok(self
            .cursors
            .values()
            .map(|(cursor, seen)| DeviceRecord { cursor: cursor.clone(), seen: *seen })
            .collect())
    }
}

/// The server's disk: what is durable, what reads see, and what is pending.
#[derive(Debug, Default)]
pub struct ServerDisk {
    /// Survives a crash.
    pub durable: ServerData,
    /// Durable plus pending writes (what SQLite reads return).
    pub visible: ServerData,
    /// Written, not yet durable.
    pub pending: VecDeque<(WriteId, ServerWrite)>,
}

impl ServerDisk {
    /// Applies a write (visible at once, durable later).
    pub fn write(&mut self, id: WriteId, op: ServerWrite) {
        self.visible.apply(&op);
        self.pending.push_back((id, op));
    }

    /// Makes the first `n` pending writes durable; returns the last one's id.
    pub fn flush(&mut self, n: usize) -> Option<WriteId> {
        flush_pending(&mut self.pending, n, |op| self.durable.apply(op))
    }

    /// Loses every pending write.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.len();
        self.pending.clear();
        self.visible = self.durable.clone();
        lost
    }
}

/// A device's IndexedDB for one conversation.
#[derive(Debug, Clone, Default)]
pub struct ClientData {
    /// The inbox record.
    pub state: Option<InboxState>,
    /// Stored messages by seq.
    pub messages: BTreeMap<Seq, StoredMessage>,
    /// Outbox entries in insertion order.
    pub outbox: Vec<OutboxEntry>,
}

impl ClientData {
    /// Applies one write.
    pub fn apply(&mut self, op: &ClientWrite) {
        match op {
            ClientWrite::Inbox { messages, state } => {
                for m in messages {
                    self.messages.insert(m.seq, m.clone());
                }
                if let Some(s) = state {
                    self.state = Some(s.clone());
                }
            }
            ClientWrite::PutOutbox(e) => match self.outbox.iter_mut().find(|x| x.id == e.id) {
                Some(x) => *x = e.clone(),
                None => self.outbox.push(e.clone()),
            },
            ClientWrite::RemoveOutbox { id } => self.outbox.retain(|x| &x.id != id),
            ClientWrite::ClearInbox => {
                self.state = None;
                self.messages.clear();
            }
        }
    }

    /// What a shell would read back on start.
    pub fn snapshot(&self) -> ClientSnapshot {
        let above = match &self.state {
            Some(s) => self
                .messages
                .range(s.watermark.saturating_add(1)..)
                .map(|(_, m)| m.clone())
                .collect(),
            None => Vec::new(),
        };
        ClientSnapshot {
            inbox: self.state.clone(),
            above,
            outbox: self.outbox.clone(),
        }
    }
}

/// A device's disk.
#[derive(Debug, Default)]
pub struct ClientDisk {
    /// Survives a crash.
    pub durable: ClientData,
    /// Written, not yet durable.
    pub pending: VecDeque<(WriteId, ClientWrite)>,
}

impl ClientDisk {
    /// Queues a write.
    pub fn write(&mut self, id: WriteId, op: ClientWrite) {
        self.pending.push_back((id, op));
    }

    /// Makes the first `n` pending writes durable; returns the last one's id.
    pub fn flush(&mut self, n: usize) -> Option<WriteId> {
        flush_pending(&mut self.pending, n, |op| self.durable.apply(op))
    }

    /// Loses every pending write.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.len();
        self.pending.clear();
        lost
    }
}

/// Applies the first `n` queued writes in order; returns the last one's id.
fn flush_pending<W>(pending: &mut VecDeque<(WriteId, W)>, n: usize, mut apply: impl FnMut(&W)) -> Option<WriteId> {
    let mut last = None;
    for (id, op) in pending.drain(..n.min(pending.len())) {
        apply(&op);
        last = Some(id);
    }
    last
}
