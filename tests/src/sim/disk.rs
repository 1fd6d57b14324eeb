//! Simulated disks: every write is pending until a flush makes it durable,
//! and a crash throws the pending writes away.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protocol::client::{ClientSnapshot, ClientWrite, InboxState, OutboxEntry};
use protocol::server::ServerWrite;
use protocol::{MemoryStore, Seq, StoredMessage, WriteId};

/// One conversation's tables, as the Durable Object's SQLite holds them: the
/// protocol crate's shared in-memory store (the one protocol tests use too),
/// checked by the server store suite (tests/src/server_store_suite.rs).
/// The disk records writes with its unchecked `apply`, so a deliberately
/// broken core's duplicate still reaches the checker.
pub type ServerData = MemoryStore;

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
    /// Every (seq, id) that was ever durable here: the checker's record (a
    /// device that later resets its inbox still had the message delivered).
    pub ever_stored: BTreeSet<(Seq, String)>,
}

impl ClientDisk {
    /// Queues a write.
    pub fn write(&mut self, id: WriteId, op: ClientWrite) {
        self.pending.push_back((id, op));
    }

    /// Makes the first `n` pending writes durable; returns the last one's id.
    pub fn flush(&mut self, n: usize) -> Option<WriteId> {
        let (durable, ever) = (&mut self.durable, &mut self.ever_stored);
        flush_pending(&mut self.pending, n, |op| {
            if let ClientWrite::Inbox { messages, .. } = op {
                ever.extend(messages.iter().map(|m| (m.seq, m.id.clone())));
            }
            durable.apply(op)
        })
    }

    /// Loses every pending write.
    pub fn crash(&mut self) -> usize {
        let lost = self.pending.len();
        self.pending.clear();
        lost
    }
}

/// Applies the first `n` queued writes in order; returns the last one's id.
fn flush_pending<W>(
    pending: &mut VecDeque<(WriteId, W)>,
    n: usize,
    mut apply: impl FnMut(&W),
) -> Option<WriteId> {
    let mut last = None;
    for (id, op) in pending.drain(..n.min(pending.len())) {
        apply(&op);
        last = Some(id);
    }
    last
}
