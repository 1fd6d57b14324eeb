//! Both directions of delivery: the outbox going out (sends, their
//! confirmations and refusals) and acks and cursors (who stored what).

use super::*;

#[derive(Debug, Clone, Default)]
pub(super) struct AckState {
    /// Last cumulative seq transmitted.
    pub(super) sent: Seq,
    /// Our own cursor as last reported by the server.
    pub(super) confirmed: Seq,
    pub(super) rto: Millis,
}

impl Client {
    /// Our own message coming back stands in for a lost `sent`.
    pub(super) fn note_own(&mut self, now: Millis, messages: &[StoredMessage]) {
        for m in messages {
            if m.user == self.cfg.user
                && m.device == self.cfg.device
                && self.outbox.contains_id(&m.id)
            {
                self.on_sent(now, &m.id, m.seq, m.at);
            }
        }
    }

    pub(super) fn on_sent(&mut self, now: Millis, id: &str, seq: Seq, at: Millis) {
        let Some(order) = self.outbox.order_of(id) else {
            return; // already delivered and forgotten, or not ours
        };
        let displaced = self
            .outbox
            .confirmed_at(seq)
            .map(|(o, _)| o)
            .filter(|o| *o != order);
        if let Some(lost) = displaced {
            // The server holds this message at `seq`: the one we had there
            // was lost (a server restored from an older backup). Send it again.
            self.outbox.unconfirm(lost);
        }
        // The seq is not persisted: the message itself (pushed back to this
        // device) stores it in the inbox, and an entry restored without it
        // is sent again and answered with the same seq (idempotent send).
        if !self.outbox.confirm(order, seq, at) {
            return; // a duplicate `sent`
        }
        self.out.push_back(ClientOutput::Status {
            id: id.to_owned(),
            status: MessageStatus::Sent { seq, at },
        });
        if Bugs::on(self.cfg.bugs.client_delivered_on_sent) {
            self.out.push_back(ClientOutput::Status {
                id: id.to_owned(),
                status: MessageStatus::Delivered { seq },
            });
        }
        self.check_delivered();
        let _ = now;
    }

    pub(super) fn on_error(
        &mut self,
        now: Millis,
        code: ErrorCode,
        message: String,
        id: Option<String>,
    ) {
        let order = id.as_ref().and_then(|id| self.outbox.order_of(id));
        let Some(order) = order else {
            self.out
                .push_back(ClientOutput::Error(ClientError::Server { code, message }));
            return;
        };
        let permanent = matches!(
            code,
            ErrorCode::BodyTooLarge | ErrorCode::BadFrame | ErrorCode::FrameTooLarge
        );
        if permanent {
            if let Some(o) = self.outbox.remove(order) {
                self.persist(
                    ClientWrite::RemoveOutbox {
                        id: o.entry.id.clone(),
                    },
                    Effect::None,
                );
                self.out.push_back(ClientOutput::Status {
                    id: o.entry.id,
                    status: MessageStatus::Failed { code },
                });
            }
        } else {
            // Busy, rate limited or not ready: retry after the backoff.
            let (initial, max) = (self.cfg.rto_initial, self.cfg.rto_max);
            self.outbox.retry_later(order, |transmits| {
                now.saturating_add(backoff(initial, max, transmits))
            });
        }
    }

    pub(super) fn merge_cursors(&mut self, cursors: Vec<Cursor>) {
        for c in cursors {
            let own = c.user == self.cfg.user && c.device == self.cfg.device;
            let e = self.cursors.entry((c.user, c.device)).or_insert(0);
            if c.through > *e {
                // News: the next refresh can wait a full interval again.
                self.timers.clear(Timer::Refresh);
                self.refresh_every = self.cfg.status_refresh;
            }
            *e = (*e).max(c.through);
            if own {
                self.ack.confirmed = self.ack.confirmed.max(c.through);
                if self.ack.confirmed >= self.ack.sent {
                    self.timers.clear(Timer::AckRetry);
                    self.ack.rto = self.cfg.rto_initial;
                }
            }
        }
        self.check_delivered();
    }

    /// An own message the server confirmed at a seq that, verified in our
    /// chain, holds another message was lost by the server (restored from an
    /// older backup): send it again.
    pub(super) fn check_own(&mut self, verified: &[(Seq, String, bool)]) {
        for (seq, id, ours) in verified {
            let lost = match self.outbox.confirmed_at(*seq) {
                Some((order, confirmed_id)) if !*ours || confirmed_id != id => Some(order),
                _ => None,
            };
            if let Some(order) = lost {
                self.outbox.unconfirm(order);
            }
        }
    }

    /// Delivered = every other user that appears in the cursors has a device
    /// stored through the seq, and there is at least one other user.
    pub(super) fn check_delivered(&mut self) {
        let mut best: BTreeMap<&str, Seq> = BTreeMap::new();
        for ((user, _), through) in &self.cursors {
            if *user == self.cfg.user {
                continue;
            }
            let b = best.entry(user.as_str()).or_insert(0);
            *b = (*b).max(*through);
        }
        // A member this device has not heard of yet (its notice was lost)
        // has stored nothing as far as we know: wait for its cursor.
        let users_known = best.len() + 1; // the other users, and ours
        if users_known < self.members as usize {
            return;
        }
        let Some(&floor) = best.values().min() else {
            return;
        };
        // And only once this device holds it too (verified in its own chain
        // at that seq): a server restored from an older backup may have
        // given the seq to another message since.
        let floor = floor.min(self.inbox.as_ref().map_or(0, |i| i.durable));
        for o in self.outbox.take_delivered(floor) {
            let seq = o.entry.seq.unwrap_or_default();
            self.out.push_back(ClientOutput::Status {
                id: o.entry.id.clone(),
                status: MessageStatus::Delivered { seq },
            });
            self.persist(ClientWrite::RemoveOutbox { id: o.entry.id }, Effect::None);
        }
    }

    pub(super) fn maybe_ack(&mut self, now: Millis) {
        let Some(inbox) = &self.inbox else {
            // No inbox (a reset is being written): nothing to acknowledge,
            // and a due ack left armed would keep poll_timeout in the past.
            self.timers.clear(Timer::AckDue);
            self.timers.clear(Timer::AckRetry);
            return;
        };
        if !inbox.recorded || self.diverged {
            // (A diverged inbox describes a history the server no longer has:
            // acking it would claim messages beyond the server's head.)
            self.timers.clear(Timer::AckDue);
            return;
        }
        let early = Bugs::on(self.cfg.bugs.client_ack_before_persist);
        let seq = if early { inbox.written } else { inbox.durable };
        let mut ranges: Vec<[Seq; 2]> = if early {
            let mut r = RangeSet::new();
            for s in inbox.buffer.keys() {
                r.insert(*s);
            }
            r.ranges().collect()
        } else {
            inbox.stored_above.ranges().filter(|r| r[0] > seq).collect()
        };
        ranges.truncate(limits::MAX_ACK_RANGES);
        if seq == 0 && ranges.is_empty() {
            // Nothing to acknowledge: a due ack must not stay armed (it would
            // keep poll_timeout in the past).
            self.timers.clear(Timer::AckDue);
            self.timers.clear(Timer::AckRetry);
            return;
        }
        let due = self.timers.expired(Timer::AckDue, now) || (early && seq > self.ack.sent);
        let retry = self.timers.expired(Timer::AckRetry, now);
        if !(due || retry) {
            return;
        }
        if let Some(p) = &mut self.ack_pacer {
            if p.available(now) == 0 {
                // Over budget: the ack waits for a token (and then covers
                // whatever became durable meanwhile).
                let at = p.next_at().max(now.saturating_add(1));
                self.timers.set(Timer::AckDue, at);
                if retry {
                    self.timers.set(Timer::AckRetry, at);
                }
                return;
            }
            p.spend(1);
        }
        self.timers.clear(Timer::AckDue);
        if retry {
            self.ack.rto = (self.ack.rto.saturating_mul(2)).min(self.cfg.rto_max);
        }
        self.ack.sent = seq;
        if self.ack.confirmed < seq {
            self.timers
                .set(Timer::AckRetry, now.saturating_add(self.ack.rto));
        } else {
            self.timers.clear(Timer::AckRetry);
        }
        self.transmit(ClientFrame::Ack { seq, ranges });
    }

    pub(super) fn pump_outbox(&mut self, now: Millis) {
        let (initial, max) = (self.cfg.rto_initial, self.cfg.rto_max);
        let budget = self.pacer.as_mut().map_or(usize::MAX, |p| p.available(now));
        let rng = &mut self.rng;
        let frames = self.outbox.due(now, self.cfg.window, budget, |transmits| {
            jittered(backoff(initial, max, transmits), rng)
        });
        if let Some(p) = &mut self.pacer {
            p.spend(frames.len());
        }
        for t in frames {
            self.transmit(ClientFrame::Send {
                id: t.id,
                body: t.body,
                after: t.after,
            });
        }
    }
}
