//! The client's outbox in memory: entries in creation order plus the indexes a
//! session consults on every event (what is in flight, what is ready to
//! transmit, what waits for delivery by seq). With them, the work per event is
//! bounded by the send window, not by how many messages are queued: a page
//! that queues 10,000 messages at once must not pay 10,000 steps per frame.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::client::OutboxEntry;
use crate::frame::{Millis, Seq};

/// One queued message and its transmission state.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub entry: OutboxEntry,
    /// Transmissions on the current connection (drives the backoff).
    pub transmits: u32,
    /// When to transmit again if still unconfirmed (set while in flight).
    pub retry_at: Option<Millis>,
}

/// A `send` to transmit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transmission {
    pub id: String,
    pub body: String,
    /// The nearest earlier entry not yet confirmed: the server stores this
    /// one only after it (per-device `send()` order).
    pub after: Option<String>,
}

/// Every invariant between the maps is kept by the methods below:
/// - `ids` maps each entry's id to its order (creation rank);
/// - `in_flight` and `ready` are disjoint sets of unconfirmed (`seq == None`)
///   orders; `ready` holds the durable ones not in flight;
/// - `by_seq` maps the seq of every confirmed entry to its order.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    entries: BTreeMap<u64, Outgoing>,
    ids: HashMap<String, u64>,
    next_order: u64,
    in_flight: BTreeSet<u64>,
    ready: BTreeSet<u64>,
    by_seq: BTreeMap<Seq, u64>,
}

impl Outbox {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn contains_id(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn order_of(&self, id: &str) -> Option<u64> {
        self.ids.get(id).copied()
    }

    /// Adds an entry (ignored when its id is already queued).
    pub fn insert(&mut self, entry: OutboxEntry, durable: bool) {
        if self.ids.contains_key(&entry.id) {
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.ids.insert(entry.id.clone(), order);
        match entry.seq {
            Some(seq) => {
                self.by_seq.insert(seq, order);
            }
            None if durable => {
                self.ready.insert(order);
            }
            None => {}
        }
        self.entries.insert(
            order,
            Outgoing {
                entry,
                transmits: 0,
                retry_at: None,
            },
        );
    }

    pub fn remove(&mut self, order: u64) -> Option<Outgoing> {
        let o = self.entries.remove(&order)?;
        self.ids.remove(&o.entry.id);
        self.in_flight.remove(&order);
        self.ready.remove(&order);
        if let Some(seq) = o.entry.seq {
            self.by_seq.remove(&seq);
        }
        Some(o)
    }

    /// Records that the entry's outbox write is durable; returns true when it
    /// is still unconfirmed (so `Pending` is news).
    pub fn mark_durable(&mut self, id: &str) -> bool {
        let Some(&order) = self.ids.get(id) else {
            return false;
        };
        let Some(o) = self.entries.get(&order) else {
            return false;
        };
        let unconfirmed = o.entry.seq.is_none();
        if unconfirmed && !self.in_flight.contains(&order) {
            self.ready.insert(order);
        }
        unconfirmed
    }

    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Some durable entry waits for a free slot in the window.
    pub fn any_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Earliest retransmission deadline of the entries in flight.
    pub fn next_retry(&self) -> Option<Millis> {
        self.in_flight
            .iter()
            .filter_map(|k| self.entries.get(k).and_then(|o| o.retry_at))
            .min()
    }

    /// Some confirmed entry still waits for its `delivered`.
    pub fn any_awaiting_delivery(&self) -> bool {
        !self.by_seq.is_empty()
    }

    /// Records the server's `sent`: the entry leaves the in-flight set, and
    /// the first time also gets its seq. Returns true when the seq is news.
    pub fn confirm(&mut self, order: u64, seq: Seq, at: Millis) -> bool {
        let Some(o) = self.entries.get_mut(&order) else {
            return false;
        };
        self.in_flight.remove(&order);
        o.retry_at = None;
        if o.entry.seq.is_some() {
            return false;
        }
        self.ready.remove(&order);
        o.entry.seq = Some(seq);
        o.entry.at = Some(at);
        self.by_seq.insert(seq, order);
        true
    }

    /// Pushes back the retransmission of an entry in flight to
    /// `deadline(transmits)`, and of every later entry in flight to at least
    /// that (go-back-N: the server refuses later ones until this one is
    /// stored, so they would only be refused again). Entries not in flight
    /// are left alone.
    pub fn retry_later(&mut self, order: u64, deadline: impl FnOnce(u32) -> Millis) {
        if !self.in_flight.contains(&order) {
            return;
        }
        let Some(o) = self.entries.get_mut(&order) else {
            return;
        };
        let at = deadline(o.transmits);
        o.retry_at = Some(at);
        let later: Vec<u64> = self.in_flight.range(order + 1..).copied().collect();
        for k in later {
            if let Some(o) = self.entries.get_mut(&k) {
                o.retry_at = Some(o.retry_at.map_or(at, |r| r.max(at)));
            }
        }
    }

    /// Forgets every confirmation (after the server's history diverged: the
    /// seqs it gave may be gone). The entries are sent again; a server that
    /// still has one answers with its seq.
    pub fn unconfirm_all(&mut self) {
        let orders: Vec<u64> = self.by_seq.values().copied().collect();
        for order in orders {
            self.unconfirm(order);
        }
    }

    /// Forgets the confirmations above `head` (a server whose durable head
    /// is below them cannot hold them: it was restored from an older
    /// backup).
    pub fn unconfirm_above(&mut self, head: Seq) {
        let orders: Vec<u64> = self
            .by_seq
            .range(head.saturating_add(1)..)
            .map(|(_, o)| *o)
            .collect();
        for order in orders {
            self.unconfirm(order);
        }
    }

    /// The entry the server confirmed at `seq`, if any: its order and id.
    pub fn confirmed_at(&self, seq: Seq) -> Option<(u64, &str)> {
        let order = *self.by_seq.get(&seq)?;
        self.entries
            .get(&order)
            .map(|o| (order, o.entry.id.as_str()))
    }

    /// Forgets one confirmation (the server's history holds another message
    /// at that seq): the entry is sent again. Returns true when it changed.
    pub fn unconfirm(&mut self, order: u64) -> bool {
        let Some(o) = self.entries.get_mut(&order) else {
            return false;
        };
        let Some(seq) = o.entry.seq.take() else {
            return false;
        };
        o.entry.at = None;
        o.transmits = 0;
        o.retry_at = None;
        self.by_seq.remove(&seq);
        self.ready.insert(order);
        true
    }

    /// The nearest entry before `order` that the server has not confirmed.
    fn unconfirmed_before(&self, order: u64) -> Option<&str> {
        let in_flight = self.in_flight.range(..order).next_back();
        let ready = self.ready.range(..order).next_back();
        let k = in_flight.max(ready)?;
        self.entries.get(k).map(|o| o.entry.id.as_str())
    }

    /// The connection is gone: nothing is in flight any more.
    pub fn reset_connection(&mut self) {
        for order in std::mem::take(&mut self.in_flight) {
            if let Some(o) = self.entries.get_mut(&order) {
                o.retry_at = None;
                self.ready.insert(order);
            }
        }
    }

    /// A new connection starts every backoff afresh.
    pub fn reset_transmits(&mut self) {
        for o in self.entries.values_mut() {
            o.transmits = 0;
        }
    }

    /// Removes and returns the confirmed entries with seq <= `floor`, in seq order.
    pub fn take_delivered(&mut self, floor: Seq) -> Vec<Outgoing> {
        let orders: Vec<u64> = self.by_seq.range(..=floor).map(|(_, k)| *k).collect();
        orders.into_iter().filter_map(|k| self.remove(k)).collect()
    }

    /// The `send`s due now, in creation order and at most `budget` of them:
    /// retransmissions whose deadline passed and ready entries while fewer
    /// than `window` are in flight. `retry_wait(transmits)` gives how long to
    /// wait before the next retransmission of an entry sent `transmits` times.
    pub fn due(
        &mut self,
        now: Millis,
        window: usize,
        budget: usize,
        mut retry_wait: impl FnMut(u32) -> Millis,
    ) -> Vec<Transmission> {
        let mut due: Vec<u64> = self
            .in_flight
            .iter()
            .copied()
            .filter(|k| {
                self.entries
                    .get(k)
                    .is_some_and(|o| o.retry_at.is_some_and(|r| r <= now))
            })
            .collect();
        let room = window.saturating_sub(self.in_flight.len());
        due.extend(self.ready.iter().copied().take(room));
        due.sort_unstable();
        due.truncate(budget);
        let mut frames = Vec::with_capacity(due.len());
        for order in due {
            let after = self.unconfirmed_before(order).map(str::to_owned);
            let Some(o) = self.entries.get_mut(&order) else {
                continue;
            };
            let wait = retry_wait(o.transmits);
            o.transmits = o.transmits.saturating_add(1);
            o.retry_at = Some(now.saturating_add(wait));
            self.ready.remove(&order);
            self.in_flight.insert(order);
            frames.push(Transmission {
                id: o.entry.id.clone(),
                body: o.entry.body.clone(),
                after,
            });
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> OutboxEntry {
        OutboxEntry {
            id: id.to_owned(),
            body: format!("body {id}"),
            created: 0,
            seq: None,
            at: None,
        }
    }

    #[test]
    fn transmits_durable_entries_in_order_within_the_window() {
        let mut o = Outbox::default();
        for id in ["a", "b", "c", "d"] {
            o.insert(entry(id), false);
        }
        assert!(
            o.due(0, 2, usize::MAX, |_| 100).is_empty(),
            "nothing is durable yet"
        );
        for id in ["b", "a", "c"] {
            assert!(o.mark_durable(id));
        }
        let ids: Vec<String> = o
            .due(0, 2, usize::MAX, |_| 100)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(
            o.due(50, 2, usize::MAX, |_| 100).is_empty(),
            "window full, no deadline passed"
        );
        // a confirmed: c may go; b's deadline passed: it goes again.
        let a = o.order_of("a").unwrap();
        assert!(o.confirm(a, 1, 7));
        let ids: Vec<String> = o
            .due(100, 2, usize::MAX, |_| 100)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(o.next_retry(), Some(200));
    }

    #[test]
    fn a_budget_caps_the_frames_oldest_first() {
        let mut o = Outbox::default();
        for id in ["a", "b", "c"] {
            o.insert(entry(id), true);
        }
        let ids: Vec<String> = o.due(0, 8, 2, |_| 100).into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(o.any_ready());
        assert_eq!(o.in_flight_len(), 2);
        // a's and b's retries are due and c is ready: a budget of one goes to the oldest.
        let ids: Vec<String> = o
            .due(100, 8, 1, |_| 100)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["a"]);
    }

    #[test]
    fn a_lost_connection_makes_in_flight_entries_ready_again() {
        let mut o = Outbox::default();
        o.insert(entry("a"), true);
        o.insert(entry("b"), true);
        assert_eq!(o.due(0, 1, usize::MAX, |_| 100).len(), 1);
        o.reset_connection();
        assert_eq!(o.in_flight_len(), 0);
        assert_eq!(o.next_retry(), None);
        let ids: Vec<String> = o
            .due(1, 8, usize::MAX, |_| 100)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn delivery_removes_confirmed_entries_up_to_the_floor() {
        let mut o = Outbox::default();
        for id in ["a", "b", "c"] {
            o.insert(entry(id), true);
        }
        o.due(0, 8, usize::MAX, |_| 100);
        for (id, seq) in [("a", 5), ("b", 6), ("c", 9)] {
            let k = o.order_of(id).unwrap();
            assert!(o.confirm(k, seq, 0));
            assert!(!o.confirm(k, seq, 0), "a duplicate sent is not news");
        }
        let gone: Vec<String> = o
            .take_delivered(6)
            .into_iter()
            .map(|g| g.entry.id)
            .collect();
        assert_eq!(gone, ["a", "b"]);
        assert_eq!(o.len(), 1);
        assert!(o.any_awaiting_delivery());
        assert!(!o.contains_id("a"));
        o.take_delivered(9);
        assert_eq!(o.len(), 0);
        assert!(!o.any_awaiting_delivery());
    }

    #[test]
    fn restored_entries_keep_their_state() {
        let mut o = Outbox::default();
        let mut confirmed = entry("x");
        confirmed.seq = Some(3);
        o.insert(confirmed, true);
        o.insert(entry("y"), true);
        o.insert(entry("y"), true);
        assert_eq!(o.len(), 2);
        assert!(o.any_awaiting_delivery());
        let ids: Vec<String> = o
            .due(0, 8, usize::MAX, |_| 100)
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(ids, ["y"], "a confirmed entry is never sent again");
    }
}
