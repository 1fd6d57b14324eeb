//! The connection: when to connect, hello and welcome, heartbeat and
//! dead-connection detection, what a close means, reconnect backoff.

use super::*;

use crate::server::close;

/// The connection's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Link {
    /// No socket; [`Timer::Reconnect`] says when to ask for one.
    Offline,
    /// Asked the shell for a socket at `since`.
    Connecting { since: Millis },
    /// Said `hello` at `since`, waiting for `welcome`.
    Hello { since: Millis },
    /// Welcomed.
    Ready,
    /// The token was refused: wait for a nudge.
    Auth,
    /// Refused for good.
    Stopped,
}

impl Link {
    pub(super) fn status(self) -> LinkStatus {
        match self {
            Link::Offline => LinkStatus::Offline,
            Link::Connecting { .. } | Link::Hello { .. } => LinkStatus::Connecting,
            Link::Ready => LinkStatus::Open,
            Link::Auth => LinkStatus::Auth,
            Link::Stopped => LinkStatus::Stopped,
        }
    }
}

/// What a close means for the next connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum AfterClose {
    /// Reconnect after the usual backoff.
    Backoff,
    /// Reconnect after `replaced_wait` (another instance of this device is connected).
    Replaced,
    /// The token was refused or expired.
    Token,
    /// Never reconnect.
    Stop(ClientError),
}

/// The decision table for a close code (docs/PROTOCOL.md, "Close codes").
fn after_close(code: u16, reason: &str) -> AfterClose {
    match code {
        close::UNAUTHORIZED | close::TOKEN_EXPIRED => AfterClose::Token,
        close::FORBIDDEN => AfterClose::Stop(ClientError::Forbidden {
            reason: reason.to_owned(),
        }),
        close::CONVERSATION_FULL => AfterClose::Stop(ClientError::ConversationFull),
        close::REPLACED => AfterClose::Replaced,
        _ => AfterClose::Backoff,
    }
}

impl Client {
    /// A socket opened (normally the one [`ClientOutput::Connect`] asked for).
    pub(super) fn on_connected(&mut self, now: Millis) {
        if self.link == Link::Stopped {
            self.out.push_back(ClientOutput::Disconnect);
            return;
        }
        self.reset_connection();
        self.conn_epoch += 1;
        self.forget_unvouched_held();
        self.timers.clear(Timer::Reconnect);
        self.last_ping = now;
        // The server's bucket is per connection: a new one starts full.
        self.pacer = None;
        self.ack_pacer = None;
        self.last_rx = now;
        self.say_hello(now);
    }

    /// Held messages from an earlier connection (or the disk) may be of a
    /// history the server has since lost and rewritten (a restored backup):
    /// one that still chains onto our prefix would pass verification, and
    /// our acks would vouch for it. Forget them before this connection's
    /// frames arrive, so they are fetched (and written) again from it.
    fn forget_unvouched_held(&mut self) {
        let epoch = self.conn_epoch;
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        inbox.buffer.retain(|_, h| h.conn == epoch);
        let mut kept = RangeSet::new();
        for seq in inbox
            .buffer
            .keys()
            .filter(|s| inbox.stored_above.contains(**s))
        {
            kept.insert(*seq);
        }
        inbox.stored_above = kept;
    }

    /// Sends `hello` (also again on a live connection: the server then starts
    /// the session over, which is always safe).
    pub(super) fn say_hello(&mut self, now: Millis) {
        self.link = Link::Hello { since: now };
        self.timers.clear(Timer::Refresh);
        let (after, chain) = match &self.inbox {
            Some(i) => (Some(i.written), Some(i.chain)),
            None => (None, None),
        };
        self.hello_from = after.zip(chain);
        self.transmit(ClientFrame::Hello {
            after,
            chain,
            bundles: true,
        });
    }

    /// The socket closed (or never opened): decide what comes next.
    pub(super) fn on_closed(&mut self, now: Millis, code: u16, reason: String) {
        if matches!(self.link, Link::Offline | Link::Auth | Link::Stopped) {
            return; // not about a connection we still count on
        }
        self.reset_connection();
        self.link = Link::Offline;
        let next = after_close(code, &reason);
        // Policy and application closes are worth telling the app, unless
        // the decision below reports a more precise error.
        let app_code = code == close::POLICY || (4000..5000).contains(&code);
        if app_code && matches!(next, AfterClose::Backoff | AfterClose::Replaced) {
            self.out
                .push_back(ClientOutput::Error(ClientError::ConnectionClosed {
                    code,
                    reason: reason.clone(),
                }));
        }
        match next {
            AfterClose::Backoff => self.schedule_reconnect(now),
            AfterClose::Replaced => {
                let wait = jittered(self.cfg.replaced_wait, &mut self.rng);
                self.timers.set(Timer::Reconnect, now.saturating_add(wait));
            }
            AfterClose::Token => {
                if self.cfg.refresh_token && !self.auth_retried {
                    // One retry, at once, with a new token.
                    self.auth_retried = true;
                    self.ask_to_connect(now, true);
                } else {
                    self.link = Link::Auth;
                    self.out
                        .push_back(ClientOutput::Error(ClientError::Unauthorized { reason }));
                }
            }
            AfterClose::Stop(error) => {
                self.link = Link::Stopped;
                self.out.push_back(ClientOutput::Error(error));
            }
        }
    }

    /// The platform's network hint.
    pub(super) fn on_network(&mut self, now: Millis, online: bool) {
        self.network_online = online;
        if !online {
            // A live socket may well still work (a local server, say): keep
            // it. Without one, wait for the network to come back: the
            // platform's "offline" means no network at all.
            self.timers.clear(Timer::Reconnect);
            return;
        }
        self.attempts = 0;
        match self.link {
            // Back online: do not sit out the rest of a backoff.
            Link::Offline => self.ask_to_connect(now, false),
            // Maybe the app has a new token by now: one more try.
            Link::Auth => {
                self.auth_retried = true;
                self.ask_to_connect(now, self.cfg.refresh_token);
            }
            Link::Ready if now.saturating_sub(self.last_rx) >= self.cfg.ping_after / 3 => {
                // The socket may have died with the network: find out now
                // rather than at the next heartbeat.
                self.ping(now);
            }
            _ => {}
        }
    }

    fn ask_to_connect(&mut self, now: Millis, fresh_token: bool) {
        self.timers.clear(Timer::Reconnect);
        self.link = Link::Connecting { since: now };
        self.out.push_back(ClientOutput::Connect { fresh_token });
    }

    /// The next attempt after a failed or lost connection: full jitter over
    /// an exponentially growing ceiling, so that clients cut at the same
    /// moment spread out.
    fn schedule_reconnect(&mut self, now: Millis) {
        if !self.network_online {
            return; // `Network { online: true }` reconnects
        }
        let wait = full_jitter(
            self.cfg.reconnect_initial,
            self.cfg.reconnect_max,
            self.attempts,
            50,
            &mut self.rng,
        );
        self.attempts = self.attempts.saturating_add(1);
        self.timers.set(Timer::Reconnect, now.saturating_add(wait));
    }

    fn ping(&mut self, now: Millis) {
        self.last_ping = now;
        self.transmit(ClientFrame::Ping { nonce: now });
    }

    /// When the current connection counts as dead: nothing arrived for `dead_after`.
    pub(super) fn dead_at(&self) -> Millis {
        self.last_rx.saturating_add(self.cfg.dead_after)
    }

    /// The heartbeat: a ping after `ping_after` of silence, then every third
    /// of it while the silence lasts.
    pub(super) fn next_ping_at(&self) -> Millis {
        if self.last_ping > self.last_rx {
            self.last_ping
                .saturating_add((self.cfg.ping_after / 3).max(1))
        } else {
            self.last_rx.saturating_add(self.cfg.ping_after)
        }
    }

    /// Fires the connection's timers. True when the connection is welcomed
    /// (and the rest of the work may go on).
    pub(super) fn drive_link(&mut self, now: Millis) -> bool {
        match self.link {
            Link::Auth | Link::Stopped => false,
            Link::Offline => {
                if self.timers.take_expired(Timer::Reconnect, now) {
                    self.ask_to_connect(now, false);
                }
                false
            }
            Link::Connecting { since } | Link::Hello { since } => {
                if now >= since.saturating_add(self.cfg.hello_timeout) {
                    self.give_up_connection(now);
                }
                false
            }
            Link::Ready => {
                if now >= self.dead_at() {
                    let idle = now.saturating_sub(self.last_rx);
                    self.out
                        .push_back(ClientOutput::Error(ClientError::ConnectionDead { idle }));
                    self.give_up_connection(now);
                    return false;
                }
                if now >= self.next_ping_at() {
                    self.ping(now);
                }
                true
            }
        }
    }

    /// Emits [`ClientOutput::Link`] when the status changed.
    pub(super) fn report_link(&mut self) {
        let status = self.link.status();
        if self.reported != Some(status) {
            self.reported = Some(status);
            self.out.push_back(ClientOutput::Link(status));
        }
    }

    /// Forgets everything tied to the current connection.
    pub(super) fn reset_connection(&mut self) {
        // Its answer is lost with the connection: history() must not hang.
        self.fail_history(ClientError::Offline);
        self.read_ticket = None;
        // The catch-up target comes from the next connection's welcome and
        // frames: the server may come back with less (a restored backup),
        // and asking it for seqs it no longer has would never end.
        self.head_auth = 0;
        // Only this connection's welcome can say where a first page starts
        // (an earlier one's `start` may match a page of another history).
        self.fresh_start = None;
        self.outbox.reset_connection();
        self.timers.clear(Timer::SyncForward);
        self.timers.clear(Timer::SyncBack);
        self.timers.clear(Timer::SyncFresh);
        self.timers.clear(Timer::AckDue);
        self.timers.clear(Timer::AckRetry);
    }

    pub(super) fn on_welcome(
        &mut self,
        now: Millis,
        head: Seq,
        chain: ChainHash,
        cursors: Vec<Cursor>,
        rate: Option<RateLimit>,
    ) {
        if !matches!(self.link, Link::Hello { .. } | Link::Ready) {
            return;
        }
        self.link = Link::Ready;
        self.attempts = 0;
        self.auth_retried = false;
        // Sends are paced from the first welcome of a connection on (a later
        // one answers a refresh `hello` on the same connection and bucket).
        if self.pacer.is_none() {
            self.pacer = rate.map(|r| Pacer::new(now, r));
            self.ack_pacer = rate.map(|r| Pacer::for_acks(now, r));
        }
        // Held messages above the head are of a history this server does not
        // have (it went back to an older backup) or, if this welcome is stale,
        // will be fetched again: either way, stop holding or acking them.
        if let Some(inbox) = self.inbox.as_mut() {
            let above = head.saturating_add(1);
            if inbox.buffer.range(above..).next().is_some() {
                inbox.buffer.split_off(&above);
                inbox.stored_above.remove_from(above);
            }
        }
        // Only ever raise the catch-up target: this welcome may be older than
        // frames of its own connection, or than an evicted message we must
        // still fetch. (A server that went back is caught just below.)
        self.head_auth = self.head_auth.max(head);
        // Compare with what `hello` announced, not with the inbox now: frames
        // of this connection may have overtaken the welcome.
        if let Some((w, c)) = self.hello_from {
            if head < w || (head == w && chain != c) {
                // The server lost (or rewrote) history this device stored.
                self.diverge(head.min(w), head);
            } else if head > w
                && !self.timers.is_set(Timer::SyncForward)
                && self.inbox.as_ref().is_some_and(|i| i.written < head)
            {
                // hello{after: w} is answered with the pages above w (streamed,
                // right behind this welcome): wait for them rather than ask for
                // the same pages again. (If they already overtook the welcome,
                // `written` has reached the head and there is nothing to wait for.)
                self.timers.set(
                    Timer::SyncForward,
                    now.saturating_add(self.cfg.sync_timeout),
                );
            }
        } else {
            // A fresh hello vouches for no history: a seq the server gave
            // one of our messages before (maybe a server since restored from
            // an older backup) is unproven, and cursors through it would
            // claim a delivery. Send those again; a server that still has
            // them answers with their seq.
            self.outbox.unconfirm_all();
        }
        // A seq above this server's head holds none of ours (a stale welcome
        // may be lower than a `sent` of its own connection: then the resend
        // is answered with the same seq again).
        self.outbox.unconfirm_above(head);
        // Only now, with our own seqs checked against this server's history.
        self.merge_cursors(cursors);
        if self.inbox.is_none() {
            // hello{after: None} is answered with the latest page; ask again
            // if it does not come.
            self.fresh_pending = true;
            self.timers
                .set(Timer::SyncFresh, now.saturating_add(self.cfg.sync_timeout));
        }
        self.outbox.reset_transmits();
        // Tell the new connection where we are (its cursor may be stale).
        if self.inbox.as_ref().is_some_and(|i| i.durable > 0) {
            self.timers.set(Timer::AckDue, now);
        }
        self.ack.rto = self.cfg.rto_initial;
    }

    pub(super) fn plan_refresh(&mut self, now: Millis) {
        let waiting = self.outbox.any_awaiting_delivery();
        if !waiting || self.link != Link::Ready {
            self.timers.clear(Timer::Refresh);
            return;
        }
        match self.timers.get(Timer::Refresh) {
            None => self
                .timers
                .set(Timer::Refresh, now.saturating_add(self.refresh_every)),
            Some(t) if t <= now => {
                self.refresh_every = self
                    .refresh_every
                    .saturating_mul(2)
                    .min(self.cfg.rto_max.saturating_mul(10));
                self.say_hello(now);
            }
            Some(_) => {}
        }
    }

    /// Closes a connection that took too long or went silent, and plans the next.
    pub(super) fn give_up_connection(&mut self, now: Millis) {
        self.reset_connection();
        self.link = Link::Offline;
        self.out.push_back(ClientOutput::Disconnect);
        self.schedule_reconnect(now);
    }
}
