//! A scripted protocol device for edge integration tests: speaks raw frames
//! over a real WebSocket, records everything it receives, acks what it stored,
//! and fails the test on any duplicate or out-of-order delivery.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use protocol::{ClientFrame, Cursor, Seq, ServerFrame, StoredMessage};

use crate::edge::{Edge, Ws};

/// Pace of [`Device::send_windowed`], well under the server's default of 1,000
/// frames per second per connection (acks count too).
pub const SENDS_PER_SEC: f64 = 600.0;

/// One device's view of a conversation.
pub struct Device {
    /// The device id.
    pub name: String,
    ws: Ws,
    /// Messages received (push or page), by seq.
    pub messages: BTreeMap<Seq, StoredMessage>,
    /// Highest seq such that 1..=watermark (or the first page onwards) are held.
    pub watermark: Seq,
    /// `sent` answers: client id -> seq.
    pub sent: HashMap<String, Seq>,
    /// Latest cursor of every (user, device), from `welcome` and `delivered`.
    pub cursors: HashMap<(String, String), Cursor>,
    /// Head announced by the last `welcome`.
    pub welcome_head: Seq,
    /// Error frames received.
    pub errors: Vec<ServerFrame>,
    /// Pages (`batch` frames) received.
    pub pages: usize,
    /// Seqs received more than once (pushes that crossed a page, resends).
    pub duplicates: usize,
    /// Asking for the next page after each `batch` with `more` (gap-fill is
    /// pulled by the client one page at a time).
    catching_up: bool,
    /// Highest seq acked so far (acks are coalesced like the real client's).
    acked: Seq,
}

impl Device {
    /// Connects and says hello with `after` as its watermark.
    pub fn join(
        edge: &Edge,
        conversation: &str,
        user: &str,
        device: &str,
        after: Option<Seq>,
    ) -> Device {
        let mut d = Device {
            name: device.to_owned(),
            ws: edge.connect(conversation, user, device),
            messages: BTreeMap::new(),
            watermark: after.unwrap_or(0),
            sent: HashMap::new(),
            cursors: HashMap::new(),
            welcome_head: 0,
            errors: Vec::new(),
            pages: 0,
            duplicates: 0,
            catching_up: after.is_some(),
            acked: after.unwrap_or(0),
        };
        d.ws.send(&ClientFrame::Hello {
            after,
            chain: None,
            bundles: false,
        });
        d.ws.set_read_timeout(Duration::from_secs(10));
        loop {
            let frame = d.ws.recv();
            let is_welcome = matches!(frame, ServerFrame::Welcome { .. });
            d.absorb(frame);
            if is_welcome {
                break;
            }
        }
        d
    }

    /// Sends a message with client id `id`.
    pub fn send(&mut self, id: &str, body: &str) {
        self.ws.send(&ClientFrame::Send {
            id: id.into(),
            body: body.into(),
            after: None,
        });
    }

    /// Sends `(id, body)` pairs keeping at most `window` unconfirmed and at most
    /// [`SENDS_PER_SEC`] per second (under the server's per-connection rate
    /// limit, as a well-behaved client), and waits until all are confirmed.
    pub fn send_windowed(
        &mut self,
        messages: &[(String, String)],
        window: usize,
        timeout: Duration,
    ) {
        let start = Instant::now();
        let deadline = start + timeout;
        let base = self.sent.len();
        let mut next = 0;
        while self.sent.len() < base + messages.len() {
            assert!(
                Instant::now() < deadline,
                "{}: sends not confirmed in {timeout:?}",
                self.name
            );
            let allowed = (start.elapsed().as_secs_f64() * SENDS_PER_SEC) as usize + 1;
            while next < messages.len() && next < self.sent.len() - base + window && next < allowed
            {
                let (id, body) = &messages[next];
                self.send(id, body);
                next += 1;
            }
            self.ws.set_read_timeout(Duration::from_millis(20));
            self.poll_once();
        }
    }

    /// The latest cursor announced for `user`'s `device`.
    pub fn cursor(&self, user: &str, device: &str) -> Option<&Cursor> {
        self.cursors.get(&(user.to_owned(), device.to_owned()))
    }

    /// The device's socket, for tests that misbehave on purpose.
    pub fn ws_mut(&mut self) -> &mut Ws {
        &mut self.ws
    }

    /// Sends any frame.
    pub fn send_frame(&mut self, frame: &ClientFrame) {
        self.ws.send(frame);
    }

    /// Sends raw text.
    pub fn send_text(&mut self, text: &str) {
        self.ws.send_text(text);
    }

    fn absorb(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome { head, cursors, .. } => {
                self.welcome_head = head;
                for c in cursors {
                    self.cursors.insert((c.user.clone(), c.device.clone()), c);
                }
            }
            ServerFrame::Push { messages } => self.store(messages),
            ServerFrame::Batch { messages, more, .. } => {
                self.pages += 1;
                let last = messages.last().map(|m| m.seq);
                self.store(messages);
                match last {
                    Some(last) if more && self.catching_up => self.sync_after(last, 500),
                    _ => self.catching_up = false,
                }
            }
            ServerFrame::Sent { id, seq, .. } => {
                if let Some(old) = self.sent.insert(id.clone(), seq) {
                    assert_eq!(old, seq, "{}: {id} confirmed with two seqs", self.name);
                }
            }
            ServerFrame::Delivered { cursors, .. } => {
                for c in cursors {
                    self.cursors.insert((c.user.clone(), c.device.clone()), c);
                }
            }
            ServerFrame::Error { .. } => self.errors.push(frame),
            ServerFrame::Pong { .. } => {}
        }
    }

    fn store(&mut self, messages: Vec<StoredMessage>) {
        for m in messages {
            if let Some(old) = self.messages.get(&m.seq) {
                assert_eq!(old, &m, "{}: seq {} changed content", self.name, m.seq);
                self.duplicates += 1;
                continue;
            }
            self.messages.insert(m.seq, m);
        }
        while self.messages.contains_key(&(self.watermark + 1)) {
            self.watermark += 1;
        }
        if self.watermark >= self.acked + 32 {
            self.flush_ack();
        }
    }

    /// Sends the cumulative ack if the watermark moved since the last one
    /// (called at once after 32 messages, otherwise whenever the socket is idle).
    fn flush_ack(&mut self) {
        if self.watermark > self.acked {
            self.acked = self.watermark;
            self.ws.send(&ClientFrame::Ack {
                seq: self.watermark,
                ranges: Vec::new(),
            });
        }
    }

    /// Reads one frame if one arrives in time; acks when idle.
    fn poll_once(&mut self) {
        match self.ws.try_recv() {
            Some(frame) => self.absorb(frame),
            None => self.flush_ack(),
        }
    }

    /// Reads frames until `done(self)` holds; panics after `timeout`.
    pub fn pump_until(&mut self, timeout: Duration, mut done: impl FnMut(&Device) -> bool) {
        let deadline = Instant::now() + timeout;
        self.ws.set_read_timeout(Duration::from_millis(50));
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{}: condition not reached in {timeout:?} (watermark {}, {} sent, errors {:?})",
                self.name,
                self.watermark,
                self.sent.len(),
                self.errors
            );
            self.poll_once();
        }
    }

    /// Reads whatever arrives within `window`.
    pub fn pump_for(&mut self, window: Duration) {
        let end = Instant::now() + window;
        self.ws.set_read_timeout(Duration::from_millis(20));
        while Instant::now() < end {
            self.poll_once();
        }
    }

    /// Asks for the page after `after`.
    pub fn sync_after(&mut self, after: Seq, limit: u32) {
        self.ws.send(&ClientFrame::Sync {
            after: Some(after),
            before: None,
            limit,
        });
    }

    /// Asks for the page below `before`.
    pub fn sync_before(&mut self, before: Seq, limit: u32) {
        self.ws.send(&ClientFrame::Sync {
            after: None,
            before: Some(before),
            limit,
        });
    }

    /// Reads until the server closes the socket; returns the close code.
    pub fn expect_close(&mut self) -> u16 {
        let mut frames = Vec::new();
        let code = self.ws.expect_close(|f| frames.push(f));
        for f in frames {
            self.absorb(f);
        }
        code
    }

    /// Whether the socket is still open (a ping gets its pong).
    pub fn is_open(&mut self) -> bool {
        self.ws.send_ping_probe()
    }
}

/// Pumps every device round-robin until `done` holds for all; panics after `timeout`.
pub fn pump_all(devices: &mut [Device], timeout: Duration, done: impl Fn(&Device) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if devices.iter().all(&done) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "devices did not converge in {timeout:?}: {}",
            devices
                .iter()
                .map(|d| format!("{} wm={} sent={}", d.name, d.watermark, d.sent.len()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for d in devices.iter_mut() {
            d.pump_for(Duration::from_millis(30));
        }
    }
}
