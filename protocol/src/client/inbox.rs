//! The inbox: pages and pushes in, verified against the chain, written,
//! then surfaced once durable; gap-fill and history requests.

use super::*;

/// A received message not yet contiguous with the watermark.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) msg: StoredMessage,
    /// A write for it has been issued.
    pub(super) written: bool,
    /// The connection it came on (0: read back from disk). Only the current
    /// connection's server vouches for it: the chain proves a message
    /// continues our history, not that it is the one this server has now.
    pub(super) conn: u64,
}

#[derive(Debug, Clone)]
pub(super) struct Inbox {
    /// The inbox record is durable (false between a fresh device's first
    /// page and its write): nothing may be acknowledged before.
    pub(super) recorded: bool,
    pub(super) base: Seq,
    /// Surfaced and durably recorded through here.
    pub(super) durable: Seq,
    /// Contiguous, verified and written (maybe not durable yet) through here.
    pub(super) written: Seq,
    /// Chain at `written`.
    pub(super) chain: ChainHash,
    pub(super) oldest: Option<StoredMessage>,
    /// Verified-later messages above `written`.
    pub(super) buffer: BTreeMap<Seq, Held>,
    /// Seqs above `durable` known to be durable on disk (the selective ack).
    pub(super) stored_above: RangeSet,
    /// Written contiguous messages `durable+1..=written`, surfaced on durability.
    pub(super) unsurfaced: BTreeMap<Seq, StoredMessage>,
}

impl Inbox {
    pub(super) fn state(&self) -> InboxState {
        InboxState {
            base: self.base,
            watermark: self.written,
            chain: self.chain,
            oldest: self.oldest.clone(),
        }
    }
}

impl Client {
    pub(super) fn on_batch(
        &mut self,
        now: Millis,
        messages: Vec<StoredMessage>,
        head: Seq,
        follows: bool,
    ) {
        // Any batch answers the outstanding request(s); anything still missing
        // is asked for again below. While the server streams pages (`follows`)
        // the forward request stays open, with a fresh deadline in case the
        // next page is lost.
        if follows {
            self.timers.set(
                Timer::SyncForward,
                now.saturating_add(self.cfg.sync_timeout),
            );
            // Echo this batch's read ticket at once (on an ack of what is
            // durable): the server holds the rest of the stream while its
            // unconfirmed answers are at the budget, and an echo only once
            // this batch is durable would stall every stream there.
            self.timers.set_earliest(Timer::AckDue, now);
        } else {
            self.timers.clear(Timer::SyncForward);
        }
        self.timers.clear(Timer::SyncBack);
        self.head_auth = self.head_auth.max(head);
        if self.inbox.is_none() {
            // Only the page a fresh `hello`'s welcome promised (`start`), not
            // a late page of an earlier request (streamed above the old
            // inbox's watermark before a reset, say): adopting that would let
            // our acks vouch for messages below it that we never stored. (A
            // page that overtook its welcome is asked for again.)
            let first = messages.first().map_or(head.saturating_add(1), |m| m.seq);
            if self.fresh_start != Some(first) {
                return;
            }
            self.timers.clear(Timer::SyncFresh);
            self.adopt_first_page(messages, head);
            if self.inbox.is_some() {
                self.fresh_pending = false;
            }
            return;
        }
        let oldest = self
            .inbox
            .as_ref()
            .and_then(|i| i.oldest.as_ref())
            .map(|m| m.seq);
        let (older, newer): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|m| oldest.is_some_and(|o| m.seq < o));
        self.accept(now, newer);
        if !older.is_empty() {
            self.accept_history(older);
        }
    }

    /// A fresh device's first page: the latest messages become its start.
    pub(super) fn adopt_first_page(&mut self, page: Vec<StoredMessage>, head: Seq) {
        if self.diverged {
            return;
        }
        let Some(first) = page.first() else {
            if head == 0 {
                let inbox = Inbox {
                    recorded: false,
                    base: 0,
                    durable: 0,
                    written: 0,
                    chain: ChainHash::GENESIS,
                    oldest: None,
                    buffer: BTreeMap::new(),
                    stored_above: RangeSet::new(),
                    unsurfaced: BTreeMap::new(),
                };
                let state = inbox.state();
                self.inbox = Some(inbox);
                self.persist(
                    ClientWrite::Inbox {
                        messages: Vec::new(),
                        state: Some(state),
                    },
                    Effect::Inbox {
                        advance: Some(0),
                        buffered: Vec::new(),
                        history: None,
                    },
                );
            }
            return;
        };
        let first_seq = first.seq;
        if first_seq == 0 || !chain_ok(&page, (first_seq == 1).then_some(ChainHash::GENESIS)) {
            self.out
                .push_back(ClientOutput::Error(ClientError::HistoryMismatch {
                    seq: first_seq,
                }));
            return;
        }
        let last = page
            .last()
            .map(|m| (m.seq, m.chain))
            .unwrap_or((first_seq, first.chain));
        let inbox = Inbox {
            recorded: false,
            base: first_seq - 1,
            durable: first_seq - 1,
            written: last.0,
            chain: last.1,
            oldest: (first_seq > 1).then(|| first.clone()),
            buffer: BTreeMap::new(),
            stored_above: RangeSet::new(),
            unsurfaced: page.iter().map(|m| (m.seq, m.clone())).collect(),
        };
        let state = inbox.state();
        self.inbox = Some(inbox);
        self.persist(
            ClientWrite::Inbox {
                messages: page,
                state: Some(state),
            },
            Effect::Inbox {
                advance: Some(last.0),
                buffered: Vec::new(),
                history: None,
            },
        );
    }

    /// Takes pushed or paged messages above the watermark.
    pub(super) fn accept(&mut self, now: Millis, msgs: Vec<StoredMessage>) {
        if self.diverged {
            return;
        }
        let bugs = self.cfg.bugs;
        let max_buffer = self.cfg.max_buffer.max(1);
        if self.inbox.is_none() {
            return; // a fresh device takes nothing before its first page
        }
        let mut dup = false;
        let mut surfaced_again = Vec::new();
        let mut msgs = msgs;
        msgs.sort_by_key(|m| m.seq);
        for m in msgs {
            let Some(inbox) = self.inbox.as_mut() else {
                return;
            };
            if m.seq == 0 || m.seq > MAX_SEQ {
                continue;
            }
            if m.seq <= inbox.written || inbox.buffer.contains_key(&m.seq) {
                dup = true;
                if Bugs::on(bugs.client_no_dedup) && m.seq > inbox.base && m.seq <= inbox.durable {
                    surfaced_again.push(m);
                }
                continue;
            }
            if Bugs::on(bugs.client_drop_out_of_order) && m.seq > inbox.written + 1 {
                inbox.stored_above.insert(m.seq);
                continue;
            }
            if inbox.buffer.len() >= max_buffer {
                // Full: first move the contiguous run out of the buffer.
                self.advance(now);
                let Some(inbox) = self.inbox.as_mut() else {
                    return;
                };
                if inbox.buffer.len() >= max_buffer {
                    // Still full: a lower seq is worth more (it fills the hole
                    // first), so evict the highest. An evicted message was either
                    // never acknowledged or is durably on disk as its selective
                    // ack says; gap-fill fetches it again either way.
                    match inbox.buffer.last_key_value().map(|(k, _)| *k) {
                        Some(top) if top > m.seq => {
                            inbox.buffer.remove(&top);
                            // It may be acknowledged already (so never pushed
                            // again): remember that it exists so gap-fill
                            // fetches it.
                            self.head_auth = self.head_auth.max(top);
                        }
                        _ => continue, // dropped unacknowledged: it comes again
                    }
                }
            }
            let Some(inbox) = self.inbox.as_mut() else {
                return;
            };
            inbox.buffer.insert(
                m.seq,
                Held {
                    msg: m,
                    written: false,
                    conn: self.conn_epoch,
                },
            );
        }
        for m in surfaced_again {
            self.out.push_back(ClientOutput::Message(m));
        }
        if dup {
            // The server resends: our ack may have been lost.
            self.timers.set(Timer::AckDue, now);
        }
        self.advance(now);
    }

    /// Moves contiguous buffered messages under the watermark (verifying the
    /// chain) and writes everything new.
    pub(super) fn advance(&mut self, now: Millis) {
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        let mut fresh: Vec<StoredMessage> = Vec::new();
        let mut advanced = false;
        let mut mismatch = None;
        // (seq, id, ours) of each message verified into the inbox.
        let mut verified: Vec<(Seq, String, bool)> = Vec::new();
        while let Some(entry) = inbox.buffer.first_entry() {
            let seq = *entry.key();
            if seq != inbox.written + 1 {
                break;
            }
            let held = entry.remove();
            let m = &held.msg;
            let expect = inbox.chain.next(m.seq, &m.user, &m.device, &m.id, &m.body);
            if m.chain != expect && !Bugs::on(self.cfg.bugs.client_skip_chain_check) {
                mismatch = Some(seq);
                break;
            }
            inbox.written = seq;
            inbox.chain = expect;
            advanced = true;
            verified.push((
                seq,
                held.msg.id.clone(),
                held.msg.user == self.cfg.user && held.msg.device == self.cfg.device,
            ));
            inbox.unsurfaced.insert(seq, held.msg.clone());
            if !held.written {
                fresh.push(held.msg);
            }
        }
        if let Some(seq) = mismatch {
            // Everything from the bad seq on is unverified: drop and refetch.
            inbox.buffer.split_off(&seq);
            inbox.stored_above.remove_from(seq);
        }
        let newly: Vec<StoredMessage> = inbox
            .buffer
            .values_mut()
            .filter(|h| !h.written)
            .map(|h| {
                h.written = true;
                h.msg.clone()
            })
            .collect();
        self.gap_since = if inbox.buffer.is_empty() {
            None
        } else {
            Some(self.gap_since.unwrap_or(now))
        };
        let state = inbox.state();
        let written = inbox.written;
        if advanced {
            self.strikes = 0;
            self.persist(
                ClientWrite::Inbox {
                    messages: fresh,
                    state: Some(state),
                },
                Effect::Inbox {
                    advance: Some(written),
                    buffered: Vec::new(),
                    history: None,
                },
            );
        }
        if !newly.is_empty() {
            let seqs = newly.iter().map(|m| m.seq).collect();
            self.persist(
                ClientWrite::Inbox {
                    messages: newly,
                    state: None,
                },
                Effect::Inbox {
                    advance: None,
                    buffered: seqs,
                    history: None,
                },
            );
        }
        self.check_own(&verified);
        if let Some(seq) = mismatch {
            self.strikes += 1;
            if self.strikes >= 3 {
                self.diverge(seq, self.head_auth);
            } else {
                self.out
                    .push_back(ClientOutput::Error(ClientError::ChainMismatch { seq }));
                // Refetch from the watermark at once.
                self.head_auth = self.head_auth.max(seq);
                self.timers.clear(Timer::SyncForward);
            }
        }
    }

    /// An older page: must end right below the oldest stored message and chain into it.
    pub(super) fn accept_history(&mut self, mut page: Vec<StoredMessage>) {
        let Some(inbox) = self.inbox.as_mut() else {
            return;
        };
        let Some(oldest) = inbox.oldest.clone() else {
            return;
        };
        page.sort_by_key(|m| m.seq);
        page.dedup_by_key(|m| m.seq);
        let (Some(first), Some(last)) = (page.first(), page.last()) else {
            return;
        };
        let contiguous = first.seq > 0
            && page
                .windows(2)
                .all(|w| w[0].seq.checked_add(1) == Some(w[1].seq));
        if last.seq.checked_add(1) != Some(oldest.seq) || !contiguous {
            return; // a stale answer (the history moved on already) or garbage
        }
        let first_seq = first.seq;
        let links = last.chain.next(
            oldest.seq,
            &oldest.user,
            &oldest.device,
            &oldest.id,
            &oldest.body,
        ) == oldest.chain;
        if !links || !chain_ok(&page, (first_seq == 1).then_some(ChainHash::GENESIS)) {
            // Asking again would get the same page: end this request.
            self.want_history = false;
            let error = ClientError::HistoryMismatch { seq: oldest.seq };
            self.out.push_back(ClientOutput::Error(error.clone()));
            self.out.push_back(ClientOutput::HistoryFailed(error));
            return;
        }
        inbox.oldest = (first_seq > 1).then(|| page[0].clone());
        let state = inbox.state();
        self.want_history = false;
        self.persist(
            ClientWrite::Inbox {
                messages: page.clone(),
                state: Some(state),
            },
            Effect::Inbox {
                advance: None,
                buffered: Vec::new(),
                history: Some(page),
            },
        );
    }

    pub(super) fn diverge(&mut self, seq: Seq, server_head: Seq) {
        if !self.diverged {
            self.diverged = true;
            self.out
                .push_back(ClientOutput::Error(ClientError::Diverged {
                    seq,
                    server_head,
                }));
            self.fail_history(ClientError::Diverged { seq, server_head });
            // A server that lost or rewrote history may have lost our own
            // messages too, even confirmed ones: send every undelivered one
            // again (one the server still has is answered with its seq).
            self.outbox.unconfirm_all();
        }
    }

    /// Ends a [`Client::load_older`] request that cannot be answered.
    pub(super) fn fail_history(&mut self, error: ClientError) {
        if std::mem::take(&mut self.want_history) {
            self.out.push_back(ClientOutput::HistoryFailed(error));
        }
    }

    pub(super) fn plan_sync(&mut self, now: Millis) {
        if self.diverged {
            return;
        }
        // An expired request counts as unanswered: forget it, and ask again
        // below only if the need is still there.
        for t in [Timer::SyncForward, Timer::SyncBack, Timer::SyncFresh] {
            self.timers.take_expired(t, now);
        }
        if self.inbox.is_some() {
            self.timers.clear(Timer::SyncFresh);
        }
        let Some(inbox) = &self.inbox else {
            if !self.timers.is_set(Timer::SyncFresh)
                && self.link == Link::Ready
                && self.fresh_pending
            {
                // Ask with `hello`, not with a `sync` for the latest page: the
                // server answers a fresh device with pages that chain with
                // what its user's other devices stored, so that its acks
                // never vouch for messages no device of the user has.
                self.say_hello(now);
            }
            return;
        };
        let gap_due = !inbox.buffer.is_empty()
            && self
                .gap_since
                .is_some_and(|g| g.saturating_add(self.cfg.gap_grace) <= now);
        let behind = inbox.written < self.head_auth;
        let mut frames = Vec::new();
        if (behind || gap_due) && !self.timers.is_set(Timer::SyncForward) {
            let before = inbox.buffer.keys().next().copied();
            frames.push(ClientFrame::Sync {
                after: Some(inbox.written),
                before,
                limit: self.cfg.page.clamp(1, limits::MAX_PAGE),
            });
            self.timers.set(
                Timer::SyncForward,
                now.saturating_add(self.cfg.sync_timeout),
            );
        }
        if self.want_history && !self.timers.is_set(Timer::SyncBack) {
            if let Some(oldest) = &inbox.oldest {
                frames.push(ClientFrame::Sync {
                    after: None,
                    before: Some(oldest.seq),
                    limit: self.cfg.page.clamp(1, limits::MAX_PAGE),
                });
                self.timers
                    .set(Timer::SyncBack, now.saturating_add(self.cfg.sync_timeout));
            } else {
                // Nothing older any more (a reset inbox started at seq 1, say):
                // the request ends with an empty last page, never silently.
                self.want_history = false;
                self.out.push_back(ClientOutput::History {
                    page: Vec::new(),
                    more: false,
                });
            }
        }
        for f in frames {
            self.transmit(f);
        }
    }
}

/// True when every message in `page` extends its predecessor's chain
/// (and the first extends `prev`, when known) and seqs are contiguous.
pub(super) fn chain_ok(page: &[StoredMessage], prev: Option<ChainHash>) -> bool {
    let mut prev = prev;
    let mut last_seq: Option<Seq> = None;
    for m in page {
        if m.seq == 0 || m.seq > MAX_SEQ {
            return false;
        }
        if let Some(s) = last_seq {
            if s.checked_add(1) != Some(m.seq) {
                return false;
            }
        }
        if let Some(p) = prev {
            if p.next(m.seq, &m.user, &m.device, &m.id, &m.body) != m.chain {
                return false;
            }
        }
        prev = Some(m.chain);
        last_seq = Some(m.seq);
    }
    true
}
