//! The checker: what every device's app saw, and the invariants over it.
//!
//! Safety (checked at every step):
//! - no seq is surfaced twice on a device; live messages are surfaced in
//!   order without holes; history pages extend downwards without holes;
//! - every surfaced message is the one the server stored durably at that
//!   seq, and is already durable on the device when it is surfaced;
//! - nothing is acknowledged that is not durable (client acks against the
//!   device disk; server `sent`, `push` and `batch` against the server disk);
//! - `delivered` is true: when a sender's message is reported delivered,
//!   every other user that was a member when it was stored (its first device
//!   record was durable) has a device that durably stored it (this message,
//!   not another one a restored server put at that seq);
//! - one device's messages are stored in the order its app called `send()`;
//! - announced cursors never move backwards, and never beyond what is durable.
//!
//! Liveness (checked after the final phase): every message whose `send` was
//! durably queued is stored exactly once, surfaced exactly once on every
//! device, and its sender saw `delivered`; stored times never decrease with
//! the seq. A run that does not converge names a connected device the server
//! stopped pushing to, when there is one.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use protocol::client::MessageStatus;
use protocol::{Seq, StoredMessage};

use super::disk::{ClientData, ServerData};

/// One device's app: everything it was shown.
#[derive(Debug, Default, Clone)]
pub struct AppView {
    /// Last live seq shown.
    pub last_live: Option<Seq>,
    /// Every seq shown (live or history).
    pub seen: BTreeSet<Seq>,
    /// Latest status per own message id.
    pub status: HashMap<String, MessageStatus>,
    /// Ids whose `send` was durably queued (status pending reported).
    pub queued: Vec<String>,
    /// Every id `send()` returned, in call order.
    pub send_order: Vec<String>,
    /// `load_older` requests in flight (each must end with a page or a failure).
    pub history_requests: u32,
}

/// What the server durably stored: its storage now, plus what rollbacks
/// took away again (a message durable at the time was legitimately shown).
#[derive(Debug, Clone, Copy)]
pub struct ServerTruth<'a> {
    /// The server's durable storage now.
    pub durable: &'a ServerData,
    /// Messages that were durable until a rollback, by seq.
    pub lost: &'a BTreeMap<Seq, Vec<StoredMessage>>,
}

/// Compares a surfaced message with the server's durable copy.
pub fn same_as_server(server: ServerTruth<'_>, m: &StoredMessage) -> Result<(), String> {
    if server.lost.get(&m.seq).is_some_and(|lost| lost.contains(m)) {
        return Ok(());
    }
    match server.durable.messages.get(&m.seq) {
        None => Err(format!(
            "seq {} ({}) surfaced/sent but not durable on the server",
            m.seq, m.id
        )),
        Some(s) if s != m => Err(format!(
            "seq {} differs from the server's durable copy: device has id {} body {:?}, server id {} body {:?}",
            m.seq, m.id, m.body, s.id, s.body
        )),
        Some(_) => Ok(()),
    }
}

impl AppView {
    /// A live message reached the app.
    pub fn surface(&mut self, server: ServerTruth<'_>, m: &StoredMessage) -> Result<(), String> {
        if self.seen.contains(&m.seq) {
            return Err(format!("seq {} surfaced twice", m.seq));
        }
        if let Some(last) = self.last_live {
            if m.seq != last + 1 {
                return Err(format!(
                    "seq {} surfaced after {} (out of order or a hole)",
                    m.seq, last
                ));
            }
        }
        same_as_server(server, m)?;
        self.last_live = Some(m.seq);
        self.seen.insert(m.seq);
        Ok(())
    }

    /// An older page reached the app.
    pub fn history(
        &mut self,
        server: ServerTruth<'_>,
        page: &[StoredMessage],
    ) -> Result<(), String> {
        let low = self.seen.iter().next().copied();
        for w in page.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                return Err(format!("history page has a hole at {}", w[0].seq + 1));
            }
        }
        if let (Some(last), Some(low)) = (page.last(), low) {
            if last.seq + 1 != low {
                return Err(format!(
                    "history page ends at {} but the lowest shown seq is {}",
                    last.seq, low
                ));
            }
        }
        for m in page {
            if !self.seen.insert(m.seq) {
                return Err(format!("history seq {} surfaced twice", m.seq));
            }
            same_as_server(server, m)?;
        }
        Ok(())
    }

    /// The device restarted: its app shows what its storage holds.
    pub fn reload(&mut self, server: ServerTruth<'_>, disk: &ClientData) -> Result<(), String> {
        // A new client: the old one's requests died with it.
        self.history_requests = 0;
        let Some(st) = &disk.state else {
            if self.last_live.is_some() {
                return Err("the inbox record vanished from durable storage".into());
            }
            return Ok(());
        };
        let last = self.last_live.unwrap_or(st.base);
        if st.watermark < last {
            return Err(format!(
                "the app showed seq {last} but after a reload storage holds only through {} (surfaced before durable)",
                st.watermark
            ));
        }
        // Durable before the crash but never reported: shown from storage now.
        for s in last + 1..=st.watermark {
            let Some(m) = disk.messages.get(&s) else {
                return Err(format!(
                    "record says stored through {} but seq {s} is missing",
                    st.watermark
                ));
            };
            if !self.seen.insert(s) {
                return Err(format!("seq {s} shown twice (after reload)"));
            }
            same_as_server(server, m)?;
        }
        self.last_live = Some(last.max(st.watermark));
        let low = st.oldest.as_ref().map_or(1, |m| m.seq);
        for s in low..=st.base {
            if !self.seen.contains(&s) {
                if let Some(m) = disk.messages.get(&s) {
                    same_as_server(server, m)?;
                }
                self.seen.insert(s);
            }
        }
        Ok(())
    }
}

/// An `ack` may only cover durably stored messages.
pub fn check_ack(disk: &ClientData, seq: Seq, ranges: &[[Seq; 2]]) -> Result<(), String> {
    let Some(st) = &disk.state else {
        return Err(format!("ack {seq} sent with no durable inbox record"));
    };
    if seq > st.watermark {
        for s in st.watermark + 1..=seq {
            if !disk.messages.contains_key(&s) {
                return Err(format!(
                    "ack {seq} covers seq {s} which is not durable (durable watermark {})",
                    st.watermark
                ));
            }
        }
    }
    for [lo, hi] in ranges {
        for s in *lo..=*hi {
            if !disk.messages.contains_key(&s) {
                return Err(format!(
                    "selective ack [{lo}, {hi}] covers seq {s} which is not durable"
                ));
            }
        }
    }
    Ok(())
}
