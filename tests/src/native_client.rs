//! A native shell around the real [`protocol::Client`], over a real WebSocket
//! to the edge (wrangler dev on workerd), for integration tests.
//!
//! It is the wasm session's job done natively, and kept honest:
//!
//! - **Network**: a tungstenite WebSocket, non-blocking after the handshake,
//!   opened with the same URL and token as [`crate::edge::Edge::connect`]
//!   (tokens from [`crate::edge::token_for`], or [`Options::tokens`]). Every `Transmit` is encoded
//!   with the core's current read ticket ([`ClientFrame::encode_rx`]), and the frames of one
//!   settle go out bundled ([`protocol::pack_bundles`]), as in the browser. A
//!   close the shell sees (the server's close frame, a reset, a failed
//!   connect or refused upgrade) is reported as `Disconnected`; a
//!   `Disconnect` the core asked for is not.
//! - **Disk**: the simulator's device disk ([`crate::sim::disk::ClientDisk`]):
//!   a `Persist` is queued, becomes durable at once or after
//!   [`Options::disk_delay`] ms (in order), and is then reported with
//!   `Durable`. [`NativeClient::crash`] throws the pending writes away and
//!   rebuilds the core from a [`ClientSnapshot`] of what was durable.
//! - **Time**: wall-clock epoch milliseconds, never going back; the core's
//!   `poll_timeout` is honoured on every [`NativeClient::step`].
//! - **App**: what the app saw is checked as it happens by the simulator's
//!   [`AppView`] (a seq surfaced twice, out of order or with a hole panics
//!   the test at once; so does a history page that does not extend downwards
//!   contiguously), plus: one message id never appears at two seqs, and
//!   within one start of the core an own message's status only moves
//!   forward (Pending, Sent, Delivered) and keeps its seq. A start after a
//!   crash may report a status again, as its outbox write was lost: that is
//!   recorded apart ([`Recorder::repeated_after_crash`]). Statuses, errors,
//!   closes and link states are recorded for the test to assert on.
//!
//! Connecting follows the core: the shell opens a socket when the core asks
//! for one ([`ClientOutput::Connect`]), reports `Connected` or
//! `Disconnected { code: 1006, .. }`, and closes it on
//! [`ClientOutput::Disconnect`]. The backoff between attempts is the core's.
//!
//! [`drive`] steps several clients together in one thread (the tests are
//! single-threaded loops) until a condition holds, and panics with every
//! client's state when it does not within the timeout.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::client::{
    Client, ClientConfig, ClientError, ClientInput, ClientOutput, ClientSnapshot, MessageStatus,
};
use protocol::{MemoryStore, Millis, Seq, StoredMessage};
use tungstenite::handshake::HandshakeError;
use tungstenite::{Message, WebSocket};

use crate::edge::{token_for, Edge};
use crate::sim::check::{AppView, ServerTruth};
use crate::sim::disk::ClientDisk;

/// Close code reported for an abnormal close: a reset, a failed connect or a
/// refused upgrade (what a browser's `CloseEvent` says then).
pub const ABNORMAL: u16 = 1006;

/// Most frames read from one socket per [`NativeClient::step`], so that one
/// busy client does not starve the others of the loop.
const READS_PER_STEP: usize = 256;

/// How long opening a socket (TCP connect, then the upgrade) may block.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Wall-clock now, in epoch milliseconds.
pub fn epoch_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// How a [`NativeClient`] is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Milliseconds a write takes to become durable (0: at once, before the
    /// shell's next input to the core).
    pub disk_delay: Millis,
    /// The core's configuration; [`NativeClient::config`] if `None`.
    pub config: Option<ClientConfig>,
    /// Where tokens come from: `(conversation, user, device, fresh)` to a
    /// token; [`token_for`] (valid for an hour) if `None`. `fresh` is the
    /// core's `Connect { fresh_token }` (or the first connect).
    pub tokens: Option<TokenSource>,
}

/// Mints the token for one connect: `(conversation, user, device, fresh)`.
pub type TokenSource = fn(&str, &str, &str, bool) -> String;

/// One status change of an own message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusEvent {
    /// When it was reported (epoch ms).
    pub at: Millis,
    /// The client message id.
    pub id: String,
    /// The new status.
    pub status: MessageStatus,
    /// Which start of the device reported it (0 before the first crash).
    pub incarnation: u64,
}

/// A socket close (or failed connect) the shell saw and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseEvent {
    /// When (epoch ms).
    pub at: Millis,
    /// The WebSocket close code (1006 for an abnormal close or failed connect).
    pub code: u16,
    /// The close reason, or what went wrong.
    pub reason: String,
}

/// Everything the app of one device saw, across crashes.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Live messages surfaced (`ClientOutput::Message`), in order.
    pub shown: Vec<StoredMessage>,
    /// Older messages from history pages (`ClientOutput::History`), each page
    /// ascending, pages in the order they came (each below the previous).
    pub history: Vec<StoredMessage>,
    /// `more` of the latest history page (older history still exists).
    pub history_more: Option<bool>,
    /// `load_older` requests that ended without a page.
    pub history_failures: Vec<(Millis, ClientError)>,
    /// Messages a restart showed from durable storage that the previous
    /// start had stored but not yet surfaced.
    pub restored: Vec<StoredMessage>,
    /// Own messages' status changes, in order.
    pub statuses: Vec<StatusEvent>,
    /// Errors the core reported, with their time.
    pub errors: Vec<(Millis, ClientError)>,
    /// Closes and failed connects, in order.
    pub closes: Vec<CloseEvent>,
    /// Sockets opened (upgrades that succeeded).
    pub connects: usize,
    /// Times the core asked to close a socket that looked dead.
    pub disconnects: usize,
    /// Link statuses the core reported for the app (`Debug` text).
    pub links: Vec<String>,
    /// Outputs this shell does not know (a newer core), as `Debug` text.
    pub unknown: Vec<String>,
    /// Broken rules that do not stop the test at once: a status repeated or
    /// going back within one start of the core, or moving to another seq.
    pub anomalies: Vec<String>,
    /// A status a later start of the core reported again, or that went back
    /// after a crash (its outbox write was lost): allowed, recorded.
    pub repeated_after_crash: Vec<String>,
}

impl Recorder {
    /// Every status change of `id`, in order.
    pub fn status_of(&self, id: &str) -> Vec<MessageStatus> {
        self.statuses
            .iter()
            .filter(|s| s.id == id)
            .map(|s| s.status.clone())
            .collect()
    }

    /// The latest status of `id`.
    pub fn last_status(&self, id: &str) -> Option<&MessageStatus> {
        self.statuses
            .iter()
            .rev()
            .find(|s| s.id == id)
            .map(|s| &s.status)
    }
}

/// The rank of a status: it never goes back.
fn rank(s: &MessageStatus) -> u8 {
    match s {
        MessageStatus::Pending => 0,
        MessageStatus::Sent { .. } => 1,
        MessageStatus::Delivered { .. } | MessageStatus::Failed { .. } => 2,
    }
}

type Socket = WebSocket<TcpStream>;

/// One device running the real client core against the real edge.
pub struct NativeClient {
    /// `user/device`, for messages.
    pub name: String,
    conversation: String,
    user: String,
    device: String,
    port: u16,
    config: ClientConfig,
    core: Client,
    incarnation: u64,
    disk: ClientDisk,
    disk_delay: Millis,
    /// When each pending write becomes durable, in write order.
    due: VecDeque<Millis>,
    socket: Option<Socket>,
    /// The socket's write buffer could not be flushed at once.
    unflushed: bool,
    /// Frames the core transmitted, not yet sent (one bundle per settle).
    outgoing: Vec<String>,
    /// The socket broke while sending: reported once the outputs are drained.
    broken: Option<(u16, String)>,
    /// The core asked for a socket (with a fresh token?).
    connect_wanted: Option<bool>,
    token: Option<String>,
    tokens: Option<TokenSource>,
    /// Latest `now` handed to the core (the clock never goes back).
    now: Millis,
    /// Whether the shell pretends the network is there.
    online: bool,
    view: AppView,
    /// The first copy seen of every seq (what [`AppView`] compares with).
    observed: MemoryStore,
    /// Seq of every message id seen, by (user, device, id).
    ids: HashMap<(String, String, String), Seq>,
    /// Ids `send` returned, in call order.
    pub sent: Vec<String>,
    /// Writes lost by each crash so far.
    pub lost_writes: Vec<usize>,
    /// What the app saw.
    pub log: Recorder,
}

impl NativeClient {
    /// A fresh device (empty disk, writes durable at once) of `user` in
    /// `conversation` on `edge`. It connects when its core asks.
    pub fn new(edge: &Edge, conversation: &str, user: &str, device: &str) -> NativeClient {
        NativeClient::with_options(edge, conversation, user, device, Options::default())
    }

    /// Like [`NativeClient::new`], with `options`.
    pub fn with_options(
        edge: &Edge,
        conversation: &str,
        user: &str,
        device: &str,
        options: Options,
    ) -> NativeClient {
        let config = options
            .config
            .unwrap_or_else(|| NativeClient::config(user, device));
        assert_eq!(
            (config.user.as_str(), config.device.as_str()),
            (user, device),
            "config of another device"
        );
        let mut c = NativeClient {
            name: format!("{user}/{device}"),
            conversation: conversation.to_owned(),
            user: user.to_owned(),
            device: device.to_owned(),
            port: edge.port,
            core: Client::new(
                config.clone(),
                seed_for(device, 0),
                ClientSnapshot::default(),
            ),
            config,
            incarnation: 0,
            disk: ClientDisk::default(),
            disk_delay: options.disk_delay,
            due: VecDeque::new(),
            socket: None,
            unflushed: false,
            outgoing: Vec::new(),
            broken: None,
            connect_wanted: None,
            token: None,
            tokens: options.tokens,
            now: 0,
            online: true,
            view: AppView::default(),
            observed: MemoryStore::new(),
            ids: HashMap::new(),
            sent: Vec::new(),
            lost_writes: Vec::new(),
            log: Recorder::default(),
        };
        let now = c.clock();
        c.settle(now);
        c
    }

    /// The default core configuration of this shell: the core's defaults,
    /// with `refresh_token` on (the shell mints a fresh token when asked).
    pub fn config(user: &str, device: &str) -> ClientConfig {
        let mut config = ClientConfig::new(user, device);
        config.refresh_token = true;
        config
    }

    /// The core, for its read-only state (watermark, outbox, readiness).
    pub fn core(&self) -> &Client {
        &self.core
    }

    /// The user id.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The device id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Seqs of the live messages surfaced, in order.
    pub fn shown_seqs(&self) -> Vec<Seq> {
        self.log.shown.iter().map(|m| m.seq).collect()
    }

    /// Every message the app holds (history, restored and live), by seq.
    pub fn all_messages(&self) -> std::collections::BTreeMap<Seq, StoredMessage> {
        let all = self
            .log
            .history
            .iter()
            .chain(&self.log.restored)
            .chain(&self.log.shown);
        all.map(|m| (m.seq, m.clone())).collect()
    }

    /// Highest seq the app holds contiguously from its start (0 if none).
    pub fn last_seq(&self) -> Seq {
        self.view.last_live.unwrap_or(0)
    }

    /// True once the core's current connection got its `welcome`.
    pub fn is_ready(&self) -> bool {
        self.core.is_ready()
    }

    /// True when every id `send` returned whose queueing was durable
    /// (`Pending` reported) is `Delivered`.
    pub fn all_delivered(&self) -> bool {
        self.queued_ids().iter().all(|id| {
            matches!(
                self.log.last_status(id),
                Some(MessageStatus::Delivered { .. })
            )
        })
    }

    /// Ids whose `send` was durably queued (`Pending` was reported).
    pub fn queued_ids(&self) -> Vec<String> {
        self.view.queued.clone()
    }

    /// Writes not yet durable.
    pub fn pending_writes(&self) -> usize {
        self.disk.pending.len()
    }

    /// The app sends `body`; returns the client message id.
    pub fn send(&mut self, body: &str) -> String {
        let now = self.clock();
        let id = self
            .core
            .send(now, body)
            .unwrap_or_else(|e| panic!("{}: send refused: {e}", self.name));
        self.sent.push(id.clone());
        self.view.send_order.push(id.clone());
        self.settle(now);
        id
    }

    /// The app asks for older history: `Ok(false)` when history is complete,
    /// `Ok(true)` when a page was asked for, `Err(Offline)` when not connected.
    pub fn load_older(&mut self) -> Result<bool, ClientError> {
        let now = self.clock();
        let asked = self.core.load_older(now);
        self.settle(now);
        asked
    }

    /// The network goes away (`false`: the socket is dropped without a word
    /// and connects fail) or comes back.
    pub fn set_online(&mut self, online: bool) {
        let now = self.clock();
        self.online = online;
        if !online {
            if let Some(socket) = self.socket.take() {
                drop(socket);
                self.report_closed(now, ABNORMAL, "network went away".to_owned());
            }
        }
        self.core.handle(now, ClientInput::Network { online });
        self.settle(now);
    }

    /// The device crashes (or its tab reloads): the socket is gone, writes
    /// not yet durable are lost, and a new core starts from a snapshot of what
    /// the disk holds durably. Returns how many writes were lost.
    pub fn crash(&mut self) -> usize {
        if let Some(mut socket) = self.socket.take() {
            // The process dies: the kernel closes the TCP connection.
            let _ = socket.get_mut().shutdown(std::net::Shutdown::Both);
        }
        self.unflushed = false;
        self.broken = None;
        self.connect_wanted = None;
        let lost = self.disk.crash();
        self.due.clear();
        self.lost_writes.push(lost);
        self.incarnation += 1;
        let data = self.disk.durable.clone();
        // The app reloads: it shows what storage holds (checked by the view).
        let before = self.view.last_live;
        for m in data.messages.values() {
            self.observe(m);
        }
        let truth = ServerTruth {
            durable: &self.observed,
            lost: &Default::default(),
        };
        if let Err(e) = self.view.reload(truth, &data) {
            panic!("{}: after a crash: {e}", self.name);
        }
        let from = before.map_or(0, |b| b + 1);
        if let Some(to) = self.view.last_live.filter(|to| *to >= from) {
            self.log
                .restored
                .extend(data.messages.range(from..=to).map(|(_, m)| m.clone()));
        }
        self.core = Client::new(
            self.config.clone(),
            seed_for(&self.device, self.incarnation),
            data.snapshot(),
        );
        let now = self.clock();
        self.settle(now);
        lost
    }

    /// One round: reads what arrived, makes due writes durable, fires the
    /// core's timer and carries out every output. True if anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.clock();
        let mut busy = self.read_frames(now);
        if self.unflushed {
            self.flush_socket();
        }
        busy |= self.flush_due(now);
        if self.core.poll_timeout().is_some_and(|t| t <= now) {
            self.core.handle(now, ClientInput::Timeout);
            busy = true;
        }
        self.settle(now);
        busy
    }

    /// A one-line summary of the state, for failure messages.
    pub fn summary(&self) -> String {
        let statuses = {
            let mut counts: HashMap<&'static str, usize> = HashMap::new();
            for id in &self.sent {
                let key = match self.log.last_status(id) {
                    None => "none",
                    Some(MessageStatus::Pending) => "pending",
                    Some(MessageStatus::Sent { .. }) => "sent",
                    Some(MessageStatus::Delivered { .. }) => "delivered",
                    Some(MessageStatus::Failed { .. }) => "failed",
                };
                *counts.entry(key).or_default() += 1;
            }
            let mut v: Vec<_> = counts
                .into_iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            v.sort();
            v.join(",")
        };
        let mut s = format!(
            "{}: inc {} socket {} ready {} shown {} (last {:?}) history {} watermark {:?} outbox {} sent {} [{statuses}] pending writes {} connects {} closes {} errors {}",
            self.name,
            self.incarnation,
            self.socket.is_some(),
            self.core.is_ready(),
            self.log.shown.len(),
            self.view.last_live,
            self.log.history.len(),
            self.core.watermark(),
            self.core.outbox_len(),
            self.sent.len(),
            self.disk.pending.len(),
            self.log.connects,
            self.log.closes.len(),
            self.log.errors.len(),
        );
        if let Some(c) = self.log.closes.last() {
            let _ = write!(s, " last close {} {:?}", c.code, c.reason);
        }
        if let Some((_, e)) = self.log.errors.last() {
            let _ = write!(s, " last error {e}");
        }
        if let Some(l) = self.log.links.last() {
            let _ = write!(s, " link {l}");
        }
        s
    }

    fn clock(&mut self) -> Millis {
        self.now = self.now.max(epoch_ms());
        self.now
    }

    /// Carries out outputs, durability, connects and breaks until the core
    /// has nothing more to say at `now`.
    fn settle(&mut self, now: Millis) {
        loop {
            while let Some(out) = self.core.poll_output() {
                self.on_output(now, out);
            }
            self.send_outgoing();
            if self.flush_due(now) {
                continue;
            }
            if let Some((code, reason)) = self.broken.take() {
                self.socket = None;
                self.report_closed(now, code, reason);
                continue;
            }
            if let Some(fresh) = self.connect_wanted.take() {
                self.open(now, fresh);
                continue;
            }
            break;
        }
    }

    fn on_output(&mut self, now: Millis, out: ClientOutput) {
        match out {
            ClientOutput::Transmit(frame) => {
                let text = frame.encode_rx(self.core.read_ticket());
                self.outgoing.push(text);
            }
            ClientOutput::Persist { write, op } => {
                self.disk.write(write, op);
                self.due.push_back(now.saturating_add(self.disk_delay));
            }
            ClientOutput::Message(m) => self.on_message(m),
            ClientOutput::History { page, more } => self.on_history(page, more),
            ClientOutput::Status { id, status } => self.on_status(now, id, status),
            ClientOutput::Error(e) => self.log.errors.push((now, e)),
            ClientOutput::Disconnect => {
                self.send_outgoing();
                self.log.disconnects += 1;
                if let Some(mut socket) = self.socket.take() {
                    let _ = socket.close(None);
                    let _ = socket.flush();
                }
                self.broken = None;
                self.unflushed = false;
            }
            ClientOutput::Connect { fresh_token } => {
                self.connect_wanted = Some(self.connect_wanted.unwrap_or(false) || fresh_token);
            }
            ClientOutput::Link(status) => self.log.links.push(format!("{status:?}")),
            ClientOutput::HistoryFailed(e) => self.log.history_failures.push((now, e)),
            #[allow(unreachable_patterns)]
            other => self.log.unknown.push(format!("{other:?}")),
        }
    }

    fn report_closed(&mut self, now: Millis, code: u16, reason: String) {
        self.log.closes.push(CloseEvent {
            at: now,
            code,
            reason: reason.clone(),
        });
        self.unflushed = false;
        self.core
            .handle(now, ClientInput::Disconnected { code, reason });
    }

    /// Opens a socket as the core asked; reports `Connected` or `Disconnected`.
    fn open(&mut self, now: Millis, fresh_token: bool) {
        if let Some(mut old) = self.socket.take() {
            // The core asked for a new socket while one is open: replace it.
            let _ = old.close(None);
            let _ = old.flush();
        }
        if fresh_token || self.token.is_none() {
            let mint = self
                .tokens
                .unwrap_or(|conversation, user, device, _| token_for(conversation, user, device));
            self.token = Some(mint(
                &self.conversation,
                &self.user,
                &self.device,
                fresh_token,
            ));
        }
        let result = if self.online {
            self.handshake()
        } else {
            Err("offline".to_owned())
        };
        // `now` stays the settle's time: the core never sees time go back.
        match result {
            Ok(socket) => {
                self.socket = Some(socket);
                self.log.connects += 1;
                self.core.handle(now, ClientInput::Connected);
            }
            Err(reason) => self.report_closed(now, ABNORMAL, reason),
        }
    }

    fn handshake(&self) -> Result<Socket, String> {
        let token = self.token.as_deref().unwrap_or_default();
        let url = format!(
            "ws://127.0.0.1:{}/v1/conversations/{}/connect?access_token={token}",
            self.port, self.conversation
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let socket = match tungstenite::client(url, tcp) {
            Ok((socket, _)) => socket,
            Err(HandshakeError::Failure(tungstenite::Error::Http(response))) => {
                return Err(format!(
                    "upgrade refused: HTTP {}",
                    response.status().as_u16()
                ))
            }
            Err(e) => return Err(format!("upgrade: {e}")),
        };
        socket
            .get_ref()
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        Ok(socket)
    }

    /// Sends the frames the core transmitted since the last call, bundled
    /// like the browser client does.
    fn send_outgoing(&mut self) {
        let frames = std::mem::take(&mut self.outgoing);
        if frames.is_empty() {
            return;
        }
        for text in protocol::pack_bundles(frames, protocol::limits::MAX_FRAME_BYTES) {
            self.send_text(text);
        }
    }

    fn send_text(&mut self, text: String) {
        if self.broken.is_some() {
            return;
        }
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        match socket.send(Message::Text(text)) {
            Ok(()) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.unflushed = true
            }
            Err(e) => self.broken = Some((ABNORMAL, format!("send: {e}"))),
        }
    }

    fn flush_socket(&mut self) {
        let Some(socket) = self.socket.as_mut() else {
            return;
        };
        match socket.flush() {
            Ok(()) => self.unflushed = false,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => self.broken = Some((ABNORMAL, format!("flush: {e}"))),
        }
    }

    /// Reads what arrived; handles a close. True if anything arrived.
    fn read_frames(&mut self, now: Millis) -> bool {
        let mut busy = false;
        for _ in 0..READS_PER_STEP {
            let Some(socket) = self.socket.as_mut() else {
                break;
            };
            match socket.read() {
                Ok(Message::Text(text)) => {
                    busy = true;
                    let bytes = text.as_bytes().to_vec();
                    self.core.handle(now, ClientInput::Frame(bytes));
                    self.settle(now);
                }
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        let code: u16 = f.code.into();
                        (code, f.reason.to_string())
                    });
                    // Answer the close, then forget the socket.
                    let _ = socket.flush();
                    self.socket = None;
                    self.report_closed(now, code, reason);
                    self.settle(now);
                    return true;
                }
                Ok(_) => busy = true,
                Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    break
                }
                Err(e) => {
                    self.socket = None;
                    self.report_closed(now, ABNORMAL, format!("read: {e}"));
                    self.settle(now);
                    return true;
                }
            }
        }
        busy
    }

    /// Makes every write due by `now` durable and tells the core.
    fn flush_due(&mut self, now: Millis) -> bool {
        let n = self.due.iter().take_while(|t| **t <= now).count();
        if n == 0 {
            return false;
        }
        self.due.drain(..n);
        match self.disk.flush(n) {
            Some(through) => {
                self.core.handle(now, ClientInput::Durable { through });
                true
            }
            None => false,
        }
    }

    /// Keeps the first copy of every seq, and checks one id has one seq.
    fn observe(&mut self, m: &StoredMessage) {
        self.observed
            .messages
            .entry(m.seq)
            .or_insert_with(|| m.clone());
        let key = (m.user.clone(), m.device.clone(), m.id.clone());
        if let Some(seq) = self.ids.insert(key, m.seq) {
            assert_eq!(
                seq, m.seq,
                "{}: message {} of {}/{} stored at seqs {seq} and {}",
                self.name, m.id, m.user, m.device, m.seq
            );
        }
    }

    fn on_message(&mut self, m: StoredMessage) {
        self.observe(&m);
        let truth = ServerTruth {
            durable: &self.observed,
            lost: &Default::default(),
        };
        if let Err(e) = self.view.surface(truth, &m) {
            panic!(
                "{}: {e} (message {} of {}/{})",
                self.name, m.id, m.user, m.device
            );
        }
        self.log.shown.push(m);
    }

    fn on_history(&mut self, page: Vec<StoredMessage>, more: bool) {
        self.log.history_more = Some(more);
        for m in &page {
            self.observe(m);
        }
        let truth = ServerTruth {
            durable: &self.observed,
            lost: &Default::default(),
        };
        if let Err(e) = self.view.history(truth, &page) {
            panic!("{}: {e}", self.name);
        }
        // Pages come newest-first, each ascending: keep the whole ascending.
        let mut all = page;
        all.append(&mut self.log.history);
        self.log.history = all;
    }

    fn on_status(&mut self, now: Millis, id: String, status: MessageStatus) {
        if !self.sent.contains(&id) {
            self.log.anomalies.push(format!(
                "status {status:?} for {id}, which this device never sent"
            ));
        }
        let prev = self.log.statuses.iter().rev().find(|s| s.id == id);
        if let Some(prev) = prev {
            let seq_of = |s: &MessageStatus| match s {
                MessageStatus::Sent { seq, .. } | MessageStatus::Delivered { seq } => Some(*seq),
                _ => None,
            };
            if let (Some(a), Some(b)) = (seq_of(&prev.status), seq_of(&status)) {
                if a != b {
                    self.log.anomalies.push(format!(
                        "{id}: {status:?} after {:?}: another seq",
                        prev.status
                    ));
                }
            }
            if rank(&status) <= rank(&prev.status) {
                let line = format!("{id}: {status:?} after {:?}", prev.status);
                if prev.incarnation == self.incarnation {
                    // One start of the core reports each step once, forwards.
                    self.log.anomalies.push(line);
                } else {
                    // Statuses are reported before their outbox write is
                    // durable: a crash in between makes the next start report
                    // the step again (or an earlier one: Sent after Delivered).
                    self.log.repeated_after_crash.push(line);
                }
            }
        }
        if status == MessageStatus::Pending && !self.view.queued.contains(&id) {
            self.view.queued.push(id.clone());
        }
        self.view.status.insert(id.clone(), status.clone());
        self.log.statuses.push(StatusEvent {
            at: now,
            id,
            status,
            incarnation: self.incarnation,
        });
    }
}

/// A seed that differs on every start of a device (the core requires it).
fn seed_for(device: &str, incarnation: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    h ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(nanos)
}

/// Steps every client round-robin until `done` holds; panics after `timeout`
/// with every client's state. Sleeps a millisecond when nothing happened.
pub fn drive(
    clients: &mut [NativeClient],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[NativeClient]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if done(clients) {
            return;
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = clients.iter().map(NativeClient::summary).collect();
            panic!(
                "{what}: not reached in {timeout:?}:\n  {}",
                states.join("\n  ")
            );
        }
        let mut busy = false;
        for c in clients.iter_mut() {
            busy |= c.step();
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Steps every client for `span`, whatever happens.
pub fn drive_for(clients: &mut [NativeClient], span: Duration) {
    let end = Instant::now() + span;
    drive(clients, span + Duration::from_secs(1), "drive_for", |_| {
        Instant::now() >= end
    });
}

/// Every message the edge stores in `conversation`, read over HTTP in
/// ascending pages (the server's truth, to compare the apps with).
pub fn edge_messages(edge: &Edge, conversation: &str) -> Vec<StoredMessage> {
    let token = token_for(conversation, "auditor", "auditor-http");
    let mut all: Vec<StoredMessage> = Vec::new();
    loop {
        let after = all.last().map_or(0, |m| m.seq);
        let path = format!("/v1/conversations/{conversation}/messages?after={after}&limit=500");
        let (status, body) =
            http_get(edge.port, &path, &token).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(status, 200, "history page: {body}");
        #[derive(serde::Deserialize)]
        struct Page {
            messages: Vec<StoredMessage>,
            more: bool,
        }
        let page: Page =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("history page {body}: {e}"));
        let more = page.more && !page.messages.is_empty();
        all.extend(page.messages);
        if !more {
            return all;
        }
    }
}

/// A GET with a bearer token that returns as soon as the body is complete
/// (by `Content-Length` or the last chunk). [`Edge::http`] reads until the
/// server closes the connection, which wrangler dev does only about 5 s
/// after the response, `Connection: close` notwithstanding.
fn http_get(port: u16, path: &str, token: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(done) = complete_response(&buf) {
            return Ok(done);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return complete_response(&buf)
                .ok_or_else(|| std::io::Error::other("connection closed mid-response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Status and body once `raw` holds a whole HTTP/1.1 response.
fn complete_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let lower = head.to_ascii_lowercase();
    if lower.contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                return Some((status, out));
            }
            if after.len() < size + 2 {
                return None;
            }
            out.push_str(after.get(..size)?);
            rest = &after[size + 2..];
        }
    }
    let length = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) if body.len() >= n => Some((status, body[..n].to_owned())),
        Some(_) => None,
        None => None,
    }
}
