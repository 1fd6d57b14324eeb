//! The client's stored deadlines: one table, one entry per timer.
//!
//! Deadlines that follow from other state (the hello and connect timeouts,
//! the heartbeat, a hole's grace period, paced and backed-off sends) are not
//! stored here: [`super::Client::poll_timeout`] derives them, so that no
//! deadline is kept twice.

use crate::frame::Millis;

/// A stored deadline of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Ask the shell for a new connection.
    Reconnect,
    /// Send the next (coalesced) ack.
    AckDue,
    /// Repeat an ack the server has not confirmed.
    AckRetry,
    /// A forward `sync` (gap-fill) unanswered by then counts as lost.
    SyncForward,
    /// An older-history `sync` unanswered by then counts as lost.
    SyncBack,
    /// A fresh device's first page unanswered by then: ask again.
    SyncFresh,
    /// Say `hello` again to refresh cursors (a lost `delivered` notice).
    Refresh,
}

impl Timer {
    const ALL: [Timer; 7] = [
        Timer::Reconnect,
        Timer::AckDue,
        Timer::AckRetry,
        Timer::SyncForward,
        Timer::SyncBack,
        Timer::SyncFresh,
        Timer::Refresh,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Deadlines by [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct Timers {
    at: [Option<Millis>; Timer::ALL.len()],
}

impl Timers {
    pub(crate) fn get(&self, timer: Timer) -> Option<Millis> {
        self.at[timer.index()]
    }

    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.get(timer).is_some()
    }

    pub(crate) fn set(&mut self, timer: Timer, at: Millis) {
        self.at[timer.index()] = Some(at);
    }

    /// Sets `timer` to `at` unless it is already due earlier.
    pub(crate) fn set_earliest(&mut self, timer: Timer, at: Millis) {
        let at = self.get(timer).map_or(at, |t| t.min(at));
        self.set(timer, at);
    }

    pub(crate) fn clear(&mut self, timer: Timer) {
        self.at[timer.index()] = None;
    }

    /// True when `timer` is set and due at `now`.
    pub(crate) fn expired(&self, timer: Timer, now: Millis) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// Clears `timer` if it is due: a request unanswered by its deadline
    /// counts as lost. Returns whether it was.
    pub(crate) fn take_expired(&mut self, timer: Timer, now: Millis) -> bool {
        let due = self.expired(timer, now);
        if due {
            self.clear(timer);
        }
        due
    }

    /// The earliest stored deadline.
    pub(crate) fn next(&self) -> Option<Millis> {
        self.at.iter().flatten().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_set_one() {
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Refresh, 50);
        t.set(Timer::AckDue, 70);
        t.set_earliest(Timer::AckDue, 90);
        assert_eq!(t.get(Timer::AckDue), Some(70));
        assert_eq!(t.next(), Some(50));
        assert!(!t.take_expired(Timer::Refresh, 49));
        assert!(t.take_expired(Timer::Refresh, 50));
        assert_eq!(t.next(), Some(70));
        t.clear(Timer::AckDue);
        assert_eq!(t.next(), None);
    }
}
