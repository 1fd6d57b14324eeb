//! One conversation's session in the page: the shell around [`protocol::Client`].
//!
//! It carries the core's outputs out — frames onto the WebSocket, writes into
//! IndexedDB (batched: every write queued while a transaction runs goes into
//! the next one, in order), app events to JS listeners — and feeds back socket
//! events, transaction completions and the one timer the core asks for.
//! Every connection decision is the core's (when to connect, heartbeat,
//! backoff, what a close code means, token retries): the shell opens a socket
//! when asked ([`ClientOutput::Connect`]) and reports what happened to it,
//! and passes on the browser's `online`/`offline` and page visibility.
//!
//! Listeners are called only after every internal borrow is released, so a
//! listener may call back into the client (for example `send` from inside a
//! `message` handler).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};

use gloo_timers::callback::Timeout;
use js_sys::Function;
use protocol::{
    Client, ClientConfig, ClientError, ClientInput, ClientOutput, ClientWrite, LinkStatus,
    MessageStatus, Millis, StoredMessage, WriteId,
};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

use crate::errors::{js_message, to_js, AcklineError, ErrorCode};
use crate::store::IdbStore;

/// Retry delay after IndexedDB refused a write.
const STORE_RETRY_MS: u32 = 1_000;

pub(crate) fn now() -> Millis {
    js_sys::Date::now() as Millis
}

/// Connection state reported in `status` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Opening the socket or waiting for `welcome`.
    Connecting,
    /// Connected and synchronised.
    Open,
    /// Not connected; a reconnect is scheduled (or the browser is offline).
    Offline,
    /// The server refused the token (and a fresh one from the callback):
    /// `lastError.code` is `unauthorized`. Retried when the page comes back
    /// online or becomes visible.
    Auth,
    /// Refused for good (`forbidden`, `too_many_members` in `lastError`).
    Stopped,
    /// `close()` was called.
    Closed,
}

impl From<LinkStatus> for LinkState {
    fn from(status: LinkStatus) -> LinkState {
        match status {
            LinkStatus::Connecting => LinkState::Connecting,
            LinkStatus::Open => LinkState::Open,
            LinkStatus::Offline => LinkState::Offline,
            LinkStatus::Auth => LinkState::Auth,
            LinkStatus::Stopped => LinkState::Stopped,
        }
    }
}

/// A message as the app sees it.
#[derive(Serialize)]
struct AppMessage<'a> {
    conversation: &'a str,
    seq: u64,
    id: &'a str,
    user: &'a str,
    device: &'a str,
    body: &'a str,
    at: u64,
    mine: bool,
    /// Own messages only: "sent" or "delivered" as of now (later changes come
    /// as `update` events), so a reloaded page shows honest ticks.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

impl<'a> AppMessage<'a> {
    fn new(conversation: &'a str, m: &'a StoredMessage, device: &str, core: &Client) -> Self {
        let mine = m.device == device;
        AppMessage {
            conversation,
            seq: m.seq,
            id: &m.id,
            user: &m.user,
            device: &m.device,
            body: &m.body,
            at: m.at,
            mine,
            status: mine.then(|| {
                if core.is_queued(&m.id) {
                    "sent"
                } else {
                    "delivered"
                }
            }),
        }
    }
}

#[derive(Serialize)]
struct PendingEvent<'a> {
    conversation: &'a str,
    id: &'a str,
    body: &'a str,
    created: u64,
}

#[derive(Serialize)]
struct UpdateEvent<'a> {
    conversation: &'a str,
    id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<ErrorCode>,
}

/// A divergence the core reported, kept until `resetInbox()`.
#[derive(Clone, Copy)]
struct Divergence {
    /// Where the server's history and this device's differ.
    seq: u64,
    /// The server's head at the time.
    server_head: u64,
}

/// The `diverged` event, and the `diverged` getter while it lasts.
#[derive(Serialize)]
struct DivergedEvent<'a> {
    conversation: &'a str,
    seq: u64,
    #[serde(rename = "serverHead")]
    server_head: u64,
}

#[derive(Serialize)]
struct SendResult<'a> {
    id: &'a str,
    seq: u64,
    at: u64,
}

/// The last error, as `status.lastError` shows it.
#[derive(Serialize, Clone)]
pub(crate) struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&AcklineError> for ErrorInfo {
    fn from(e: &AcklineError) -> ErrorInfo {
        ErrorInfo {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The `error` event.
#[derive(Serialize)]
struct ErrorEvent<'a> {
    conversation: &'a str,
    code: ErrorCode,
    message: &'a str,
}

#[derive(Serialize)]
struct StatusEvent<'a> {
    conversation: &'a str,
    state: LinkState,
    outbox: usize,
    #[serde(rename = "lastError")]
    last_error: Option<&'a ErrorInfo>,
}

/// Events for JS listeners, collected under the borrow and fired after it.
enum AppEvent {
    Conversation(&'static str, JsValue),
    /// Consecutive conversation events as a JSON array of `[name, value]`
    /// pairs without its closing `]`: parsed by the engine in one call when
    /// fired (and relayed to other tabs as one string), which is far cheaper
    /// than building each object field by field from wasm.
    ConversationJson(String),
    Client(&'static str, JsValue),
    Resolve(Function, JsValue),
    Reject(Function, JsValue),
}

/// How the session gets a token for each (re)connect.
#[derive(Clone)]
pub enum TokenSource {
    /// A fixed token.
    Fixed(String),
    /// A JS function returning a token or a promise of one.
    Callback(Function),
}

/// Who this session is and where it connects.
pub struct SessionConfig {
    /// `ws://` or `wss://` URL of the connect route, without the token.
    pub socket_url: String,
    /// Source of tokens.
    pub token: TokenSource,
    /// Conversation id.
    pub conversation: String,
    /// Authenticated user (the token's `sub`).
    pub user: String,
    /// Authenticated device (the token's `device`).
    pub device: String,
}

/// Listener lists shared by the client object and its sessions.
#[derive(Default)]
pub struct Listeners {
    map: RefCell<HashMap<String, Vec<Function>>>,
    /// When set, events go to this hook instead of the functions (the tab
    /// layer relays a leader's events to every tab, see `tabs.rs`).
    tap: Option<Tap>,
    /// When set, runs of events as JSON (see [`Listeners::fire_json`]) go here.
    tap_json: Option<TapJson>,
}

/// Where tapped [`Listeners`] send their events: `(event name, value)`.
pub type Tap = Rc<dyn Fn(&str, &JsValue)>;

/// Where tapped [`Listeners`] send runs of events: a JSON array of
/// `[name, value]` pairs.
pub type TapJson = Rc<dyn Fn(&str)>;

impl Listeners {
    /// Listeners whose events all go to `tap` (runs of events to `tap_json`).
    pub fn tapped(tap: Tap, tap_json: Option<TapJson>) -> Listeners {
        Listeners {
            map: RefCell::default(),
            tap: Some(tap),
            tap_json,
        }
    }

    pub fn add(&self, event: &str, f: Function) {
        self.map
            .borrow_mut()
            .entry(event.to_owned())
            .or_default()
            .push(f);
    }

    pub fn remove(&self, event: &str, f: &Function) {
        if let Some(list) = self.map.borrow_mut().get_mut(event) {
            list.retain(|g| !Object_is(g, f));
        }
    }

    pub fn fire(&self, event: &str, value: &JsValue) {
        if let Some(tap) = &self.tap {
            tap(event, value);
            return;
        }
        let list = self.map.borrow().get(event).cloned().unwrap_or_default();
        for f in list {
            if let Err(e) = f.call1(&JsValue::NULL, value) {
                web_sys::console::error_2(&format!("ackline: '{event}' listener threw").into(), &e);
            }
        }
    }

    /// Fires a run of events given as a JSON array of `[name, value]` pairs,
    /// in order.
    pub fn fire_json(&self, json: &str) {
        if let Some(tap) = &self.tap_json {
            tap(json);
            return;
        }
        for_each_json_event(json, |name, value| self.fire(name, value));
    }
}

/// Calls `f(name, value)` for each `[name, value]` pair of a JSON array.
pub(crate) fn for_each_json_event(json: &str, mut f: impl FnMut(&str, &JsValue)) {
    let pairs = match js_sys::JSON::parse(json).and_then(|v| v.dyn_into::<js_sys::Array>()) {
        Ok(pairs) => pairs,
        Err(e) => {
            web_sys::console::error_2(&"ackline: events lost (bad JSON)".into(), &e);
            return;
        }
    };
    pairs.for_each(&mut |pair, _, _| {
        let pair = js_sys::Array::from(&pair);
        if let Some(name) = pair.get(0).as_string() {
            f(&name, &pair.get(1));
        }
    });
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = Object, js_name = is)]
    fn Object_is(a: &JsValue, b: &JsValue) -> bool;
}

struct Inner {
    cfg: SessionConfig,
    core: Client,
    store: Rc<IdbStore>,
    ws: Option<WebSocket>,
    /// Keeps the socket's handlers alive while it is current.
    ws_handlers: Vec<Closure<dyn FnMut(JsValue)>>,
    state: LinkState,
    /// Wanted offline by the app (`setOnline(false)`) or the browser.
    held_offline: bool,
    closed: bool,
    core_timer: Option<(Millis, Timeout)>,
    /// Writes waiting for the next IndexedDB transaction, in order.
    writes: VecDeque<(WriteId, ClientWrite)>,
    writer_running: bool,
    /// `send()` promises by client message id (several when a tab asked again).
    sends: HashMap<String, Vec<(Function, Function)>>,
    /// Seq and time of own messages the server confirmed in this session: a
    /// send relayed again after a takeover resolves from it.
    confirmed: HashMap<String, (u64, u64)>,
    /// `history()` promises waiting for the core's answer to `load_older`
    /// (a page, or a failure: never neither).
    history_waiters: Vec<(Function, Function)>,
    /// `resetInbox()` promises, each waiting for its `ClearInbox` write to be durable.
    reset_waiters: Vec<(WriteId, Function, Function)>,
    /// Set by the core's `Diverged` (the inbox is frozen), cleared by `resetInbox()`.
    divergence: Option<Divergence>,
    last_error: Option<ErrorInfo>,
    /// State and outbox size of the last `status` event: a message's own
    /// status change alone fires `status` only when the outbox size changed.
    last_status: Option<(LinkState, usize)>,
    events: Vec<AppEvent>,
    /// The core asked for a socket (with a fresh token?); `pump` opens it.
    connect_wanted: Option<bool>,
    /// Outbox entries when the page loaded (all unconfirmed until the server
    /// answers their resend).
    initial_pending: Vec<protocol::OutboxEntry>,
    /// Messages given to `send` whose outbox write is not durable yet: their
    /// `pending` event waits for the core's `Status { Pending }`, which follows
    /// the IndexedDB transaction's `complete` (so `pending` means "survives a
    /// reload or a crash", not merely "accepted").
    not_yet_durable: HashMap<String, QueuedMessage>,
}

/// What the `pending` event of a sent message carries, kept until its outbox
/// write is durable.
struct QueuedMessage {
    body: String,
    created: Millis,
}

/// A conversation session; cheap to clone (shared state).
#[derive(Clone)]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
    /// Conversation-level listeners (`message`, `pending`, `update`).
    pub listeners: Rc<Listeners>,
    /// Client-level listeners (`status`, `error`).
    client_listeners: Rc<Listeners>,
}

impl Session {
    /// Loads the conversation's snapshot from IndexedDB and starts connecting.
    pub async fn start(
        cfg: SessionConfig,
        store: Rc<IdbStore>,
        listeners: Rc<Listeners>,
        client_listeners: Rc<Listeners>,
    ) -> Result<Session, AcklineError> {
        // Drawn first: without a random source there is no point reading the store.
        let seed = random_seed()?;
        let snapshot = store.load_snapshot(&cfg.conversation).await?;
        let mut config = ClientConfig::new(&cfg.user, &cfg.device);
        // A callback can be asked for a new token after a refusal.
        config.refresh_token = matches!(cfg.token, TokenSource::Callback(_));
        let core = Client::new(config, seed, snapshot.clone());
        let session = Session {
            inner: Rc::new(RefCell::new(Inner {
                cfg,
                core,
                store,
                ws: None,
                ws_handlers: Vec::new(),
                state: LinkState::Connecting,
                held_offline: false,
                closed: false,
                core_timer: None,
                writes: VecDeque::new(),
                writer_running: false,
                sends: HashMap::new(),
                history_waiters: Vec::new(),
                reset_waiters: Vec::new(),
                divergence: None,
                last_error: None,
                last_status: None,
                events: Vec::new(),
                connect_wanted: None,
                // A restored entry counts as unconfirmed (as in the core, which
                // sends it again): its seq is not persisted, and one an older
                // version stored may be from a server since restored.
                initial_pending: snapshot.outbox.clone(),
                confirmed: HashMap::new(),
                not_yet_durable: HashMap::new(),
            })),
            listeners,
            client_listeners,
        };
        // The core asks for its first connection from its first timer.
        session.pump();
        Ok(session)
    }

    fn weak(&self) -> WeakSession {
        WeakSession {
            inner: Rc::downgrade(&self.inner),
            listeners: Rc::downgrade(&self.listeners),
            client_listeners: Rc::downgrade(&self.client_listeners),
        }
    }

    /// Messages that were still unconfirmed in the outbox when the page loaded
    /// (sent before a reload or a crash), for the app to show as pending.
    pub fn pending_messages(&self) -> JsValue {
        let inner = self.inner.borrow();
        let conv = inner.cfg.conversation.clone();
        let list = js_sys::Array::new();
        for e in &inner.initial_pending {
            list.push(&to_js(&PendingEvent {
                conversation: &conv,
                id: &e.id,
                body: &e.body,
                created: e.created,
            }));
        }
        list.into()
    }

    /// Queues a message; the promise resolves with `{id, seq, at}` once stored.
    /// (The npm API sends through `send_with_id`, with the id the tab chose.)
    #[allow(dead_code)]
    pub fn send(&self, body: String) -> js_sys::Promise {
        let mut reject_now = None;
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                reject_now = Some((reject, AcklineError::Closed.into()));
                return;
            }
            // The core stamps the outbox entry with this time; the `pending`
            // event reports the same one.
            let created = now();
            match inner.core.send(created, body.clone()) {
                Ok(id) => {
                    // No `pending` event yet: it fires once the outbox write
                    // committed (see `on_status`).
                    inner.not_yet_durable.insert(
                        id.clone(),
                        QueuedMessage {
                            body: body.clone(),
                            created,
                        },
                    );
                    inner.sends.entry(id).or_default().push((resolve, reject));
                }
                Err(e) => reject_now = Some((reject, AcklineError::Core(e).into())),
            }
        });
        if let Some((reject, err)) = reject_now {
            let _ = reject.call1(&JsValue::NULL, &err);
        }
        self.pump();
        promise
    }

    /// Queues a message under the id another tab (or this one) chose (see
    /// `tabs.rs`); resolves like `send`. Idempotent on the id: already
    /// confirmed in this session resolves at once, already
    /// queued waits for its confirmation, and a `retry` (asked again after a
    /// takeover) also looks for the id among the newest stored messages.
    pub async fn send_with_id(
        &self,
        id: String,
        body: String,
        retry: bool,
    ) -> Result<JsValue, JsValue> {
        let id = id.to_ascii_uppercase();
        let done = |seq: u64, at: u64| to_js(&SendResult { id: &id, seq, at });
        let (store, conv, device, queued, watermark) = {
            let inner = self.inner.borrow();
            if inner.closed {
                return Err(AcklineError::Closed.into());
            }
            if let Some((seq, at)) = inner.confirmed.get(&id) {
                return Ok(done(*seq, *at));
            }
            (
                inner.store.clone(),
                inner.cfg.conversation.clone(),
                inner.cfg.device.clone(),
                inner.core.is_queued(&id),
                inner.core.watermark(),
            )
        };
        if retry && !queued {
            let from = watermark.unwrap_or(0).saturating_sub(1_000);
            let stored = store.messages_after(&conv, from, 2_000).await?;
            if let Some(m) = stored.iter().find(|m| m.id == id && m.device == device) {
                return Ok(done(m.seq, m.at));
            }
        }
        let mut reject_now = None;
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                reject_now = Some((reject, AcklineError::Closed.into()));
                return;
            }
            let was_queued = inner.core.is_queued(&id);
            let created = now();
            match inner.core.send_with_id(created, &id, body.clone()) {
                Ok(id) => {
                    if !was_queued {
                        inner.not_yet_durable.insert(
                            id.clone(),
                            QueuedMessage {
                                body: body.clone(),
                                created,
                            },
                        );
                    }
                    inner.sends.entry(id).or_default().push((resolve, reject));
                }
                Err(e) => reject_now = Some((reject, AcklineError::Core(e).into())),
            }
        });
        if let Some((reject, err)) = reject_now {
            let _ = reject.call1(&JsValue::NULL, &err);
        }
        self.pump();
        wasm_bindgen_futures::JsFuture::from(promise).await
    }

    /// Surfaced messages with `seq > after` (through the watermark, up to
    /// 1,000), as `message` events carry them: a tab's catch-up.
    pub async fn messages_after(&self, after: u64) -> Result<js_sys::Array, JsValue> {
        let (store, conv) = {
            let inner = self.inner.borrow();
            (inner.store.clone(), inner.cfg.conversation.clone())
        };
        let page = store.messages_after(&conv, after, 1_000).await?;
        let inner = self.inner.borrow();
        let through = inner.core.watermark().unwrap_or(0);
        let list = js_sys::Array::new();
        for m in page.iter().filter(|m| m.seq <= through) {
            list.push(&to_js(&AppMessage::new(
                &conv,
                m,
                &inner.cfg.device,
                &inner.core,
            )));
        }
        Ok(list)
    }

    /// The highest seq surfaced so far (`None` for a fresh device).
    pub fn watermark(&self) -> Option<u64> {
        self.inner.borrow().core.watermark()
    }

    /// The current `status` event's value.
    pub fn status_value(&self) -> JsValue {
        let inner = self.inner.borrow();
        to_js(&StatusEvent {
            conversation: &inner.cfg.conversation,
            state: inner.state,
            outbox: inner.core.outbox_len(),
            last_error: inner.last_error.as_ref(),
        })
    }

    /// Local history below `before`, with older pages fetched from the server
    /// when the local copy has fewer than `limit`. Resolves with an array of
    /// messages carrying `more` (false once history reaches seq 1); rejects
    /// with `offline` when a fetch is needed but there is no connection (or it
    /// drops before the answer) and `history_mismatch` when the server's page
    /// does not chain into the stored history. Never hangs.
    pub async fn history(&self, before: u64, limit: u32) -> Result<JsValue, JsValue> {
        let (store, conv) = {
            let inner = self.inner.borrow();
            (inner.store.clone(), inner.cfg.conversation.clone())
        };
        let mut page = store.messages_before(&conv, before, limit).await?;
        let reached_start = page.first().is_some_and(|m| m.seq == 1) || before <= 1;
        if (page.len() as u32) < limit && !reached_start {
            let waiter = js_sys::Promise::new(&mut |resolve, reject| {
                let mut inner = self.inner.borrow_mut();
                match inner.core.load_older(now()) {
                    Ok(true) => inner.history_waiters.push((resolve, reject)),
                    Ok(false) => {
                        let _ = resolve.call0(&JsValue::NULL);
                    }
                    Err(e) => {
                        let _ = reject.call1(&JsValue::NULL, &AcklineError::Core(e).into());
                    }
                }
            });
            self.pump();
            wasm_bindgen_futures::JsFuture::from(waiter).await?;
            page = store.messages_before(&conv, before, limit).await?;
        }
        let inner = self.inner.borrow();
        let list = js_sys::Array::new();
        for m in &page {
            list.push(&to_js(&AppMessage::new(
                &conv,
                m,
                &inner.cfg.device,
                &inner.core,
            )));
        }
        // Seqs are contiguous from 1: anything above 1 has older messages.
        let more = page.first().is_some_and(|m| m.seq > 1);
        let _ = js_sys::Reflect::set(&list, &"more".into(), &more.into());
        Ok(list.into())
    }

    /// Drops the stored inbox (messages and watermark; the outbox stays) and
    /// starts over as a fresh device: the repair after `diverged`. Resolves once
    /// the stored inbox is gone from IndexedDB.
    pub fn reset_inbox(&self) -> js_sys::Promise {
        let promise = js_sys::Promise::new(&mut |resolve, reject| {
            let mut inner = self.inner.borrow_mut();
            if inner.closed {
                let _ = reject.call1(&JsValue::NULL, &AcklineError::Closed.into());
                return;
            }
            inner.core.reset_inbox(now());
            inner.divergence = None;
            inner.drain_outputs();
            // The core asked for exactly one ClearInbox just now: the promise
            // follows that write.
            let clear = inner
                .writes
                .iter()
                .rev()
                .find(|(_, op)| matches!(op, ClientWrite::ClearInbox))
                .map(|(w, _)| *w);
            match clear {
                Some(write) => inner.reset_waiters.push((write, resolve, reject)),
                None => {
                    let _ = resolve.call0(&JsValue::NULL);
                }
            }
        });
        self.pump();
        promise
    }

    /// The divergence the core reported, until `reset_inbox`.
    pub fn divergence(&self) -> JsValue {
        let inner = self.inner.borrow();
        match inner.divergence {
            Some(Divergence { seq, server_head }) => to_js(&DivergedEvent {
                conversation: &inner.cfg.conversation,
                seq,
                server_head,
            }),
            None => JsValue::NULL,
        }
    }

    /// Cuts (false) or restores (true) this session's connection on purpose.
    pub fn set_online(&self, online: bool) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.held_offline = !online;
            inner.core.handle(now(), ClientInput::Network { online });
            if !online {
                inner.detach_socket();
                inner.core.handle(
                    now(),
                    ClientInput::Disconnected {
                        code: 1000,
                        reason: "set offline".into(),
                    },
                );
            }
        }
        self.pump();
    }

    /// The browser went online/offline or the page became visible: tell the
    /// core (which reconnects at once when it is worth trying).
    pub fn nudge(&self, online: bool) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.closed || inner.held_offline {
                return;
            }
            inner.core.handle(now(), ClientInput::Network { online });
        }
        self.pump();
    }

    /// Closes the socket and stops every timer; pending promises reject.
    pub fn close(&self) {
        let mut inner = self.inner.borrow_mut();
        inner.detach_socket();
        inner.state = LinkState::Closed;
        inner.push_status();
        inner.closed = true;
        inner.core_timer = None;
        let err: JsValue = AcklineError::Closed.into();
        inner.not_yet_durable.clear();
        let sends: Vec<_> = inner
            .sends
            .drain()
            .flat_map(|(_, list)| list.into_iter().map(|(_, reject)| reject))
            .collect();
        let mut waiters: Vec<_> = inner
            .history_waiters
            .drain(..)
            .map(|(_, reject)| reject)
            .collect();
        waiters.extend(inner.reset_waiters.drain(..).map(|(_, _, reject)| reject));
        drop(inner);
        self.fire_events();
        for reject in sends.into_iter().chain(waiters) {
            let _ = reject.call1(&JsValue::NULL, &err);
        }
    }

    /// Number of messages not yet confirmed by the server.
    pub fn outbox_len(&self) -> usize {
        self.inner.borrow().core.outbox_len()
    }

    /// Opens the socket the core asked for: gets a token first, reports a
    /// failure to the core as a close without a code (1006).
    fn connect(&self, fresh_token: bool) {
        {
            let mut inner = self.inner.borrow_mut();
            if inner.closed || inner.ws.is_some() {
                return;
            }
            if inner.held_offline {
                inner.core.handle(
                    now(),
                    ClientInput::Disconnected {
                        code: 1006,
                        reason: "set offline".into(),
                    },
                );
                drop(inner);
                self.pump();
                return;
            }
        }
        // The callback is asked on every connect, so `fresh_token` needs no
        // cache to bypass; a fixed token is all there is.
        let _ = fresh_token;
        let token = self.inner.borrow().cfg.token.clone();
        let weak = self.weak();
        wasm_bindgen_futures::spawn_local(async move {
            let token = match token {
                TokenSource::Fixed(t) => Ok(t),
                TokenSource::Callback(f) => resolve_token(&f).await,
            };
            let Some(session) = weak.upgrade() else {
                return;
            };
            match token {
                Ok(token) => session.open_socket(&token),
                Err(e) => {
                    session.record_error(&e);
                    session.connect_failed("no token");
                }
            }
        });
    }

    fn connect_failed(&self, reason: &str) {
        self.inner.borrow_mut().core.handle(
            now(),
            ClientInput::Disconnected {
                code: 1006,
                reason: reason.into(),
            },
        );
        self.pump();
    }

    fn open_socket(&self, token: &str) {
        let url = {
            let inner = self.inner.borrow();
            if inner.closed || inner.ws.is_some() {
                return;
            }
            let sep = if inner.cfg.socket_url.contains('?') {
                '&'
            } else {
                '?'
            };
            format!(
                "{}{sep}access_token={}",
                inner.cfg.socket_url,
                js_sys::encode_uri_component(token)
            )
        };
        let ws = match WebSocket::new(&url) {
            Ok(ws) => ws,
            Err(_) => {
                self.record_error(&AcklineError::BadUrl(
                    "cannot open a WebSocket to the configured url",
                ));
                self.connect_failed("bad url");
                return;
            }
        };
        let weak = self.weak();
        let on_open = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |_| {
                if let Some(s) = weak.upgrade() {
                    s.on_open();
                }
            }
        });
        let on_message = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |event: JsValue| {
                let Some(s) = weak.upgrade() else { return };
                let Some(text) = event
                    .dyn_ref::<MessageEvent>()
                    .and_then(|e| e.data().as_string())
                else {
                    return;
                };
                s.on_frame(text);
            }
        });
        let on_close = Closure::<dyn FnMut(JsValue)>::new({
            let weak = weak.clone();
            move |event: JsValue| {
                if let Some(s) = weak.upgrade() {
                    let reason = event
                        .dyn_ref::<CloseEvent>()
                        .map(|e| (e.code(), e.reason()))
                        .unwrap_or((1006, String::new()));
                    s.on_socket_closed(reason);
                }
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let mut inner = self.inner.borrow_mut();
        inner.ws = Some(ws);
        inner.ws_handlers = vec![on_open, on_message, on_close];
    }

    fn on_open(&self) {
        self.inner
            .borrow_mut()
            .core
            .handle(now(), ClientInput::Connected);
        self.pump();
    }

    fn on_frame(&self, text: String) {
        self.inner
            .borrow_mut()
            .core
            .handle(now(), ClientInput::Frame(text.into_bytes()));
        self.pump();
    }

    /// The socket closed: the core decides what the code means.
    fn on_socket_closed(&self, (code, reason): (u16, String)) {
        {
            let mut inner = self.inner.borrow_mut();
            inner.detach_socket();
            inner
                .core
                .handle(now(), ClientInput::Disconnected { code, reason });
        }
        self.pump();
    }

    /// Reports `error` to the app (an `error` event and `status.lastError`).
    fn record_error(&self, error: &AcklineError) {
        let mut inner = self.inner.borrow_mut();
        inner.record_error(error);
        inner.push_status();
    }

    /// Carries out the core's outputs, starts the writer, re-arms the timer and
    /// fires app events. Call after every input.
    pub fn pump(&self) {
        let (start_writer, connect) = {
            let mut inner = self.inner.borrow_mut();
            inner.drain_outputs();
            let connect = inner.connect_wanted.take();
            inner.arm_core_timer(self.weak());
            let start = !inner.writes.is_empty() && !inner.writer_running;
            if start {
                inner.writer_running = true;
            }
            (start, connect)
        };
        if let Some(fresh_token) = connect {
            self.connect(fresh_token);
        }
        if start_writer {
            let weak = self.weak();
            wasm_bindgen_futures::spawn_local(async move { run_writer(weak).await });
        }
        self.fire_events();
    }

    fn fire_events(&self) {
        let events = std::mem::take(&mut self.inner.borrow_mut().events);
        for event in events {
            match event {
                AppEvent::Conversation(name, value) => self.listeners.fire(name, &value),
                AppEvent::ConversationJson(mut json) => {
                    json.push(']');
                    self.listeners.fire_json(&json);
                }
                AppEvent::Client(name, value) => self.client_listeners.fire(name, &value),
                AppEvent::Resolve(f, value) | AppEvent::Reject(f, value) => {
                    let _ = f.call1(&JsValue::NULL, &value);
                }
            }
        }
    }
}

impl Inner {
    /// Closes and forgets the current socket (its events no longer reach us).
    fn detach_socket(&mut self) {
        if let Some(ws) = self.ws.take() {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
            let _ = ws.close();
        }
        self.ws_handlers.clear();
    }

    /// Settles the `resetInbox()` promises whose write is durable now.
    fn resolve_resets(&mut self, through: WriteId) {
        let (done, waiting): (Vec<_>, Vec<_>) = self
            .reset_waiters
            .drain(..)
            .partition(|(w, _, _)| *w <= through);
        self.reset_waiters = waiting;
        for (_, resolve, _) in done {
            self.events
                .push(AppEvent::Resolve(resolve, JsValue::UNDEFINED));
        }
    }

    /// Keeps `error` as the last error and queues its `error` event.
    fn record_error(&mut self, error: &AcklineError) {
        let info = ErrorInfo::from(error);
        let event = to_js(&ErrorEvent {
            conversation: &self.cfg.conversation,
            code: info.code,
            message: &info.message,
        });
        self.events.push(AppEvent::Client("error", event));
        self.last_error = Some(info);
    }

    fn push_status(&mut self) {
        self.last_status = Some((self.state, self.core.outbox_len()));
        let status = to_js(&StatusEvent {
            conversation: &self.cfg.conversation,
            state: self.state,
            outbox: self.core.outbox_len(),
            last_error: self.last_error.as_ref(),
        });
        self.events.push(AppEvent::Client("status", status));
    }

    fn drain_outputs(&mut self) {
        let mut status_changed = false;
        // The frames of this pump go out together, as few bundles as fit.
        let mut outgoing: Vec<String> = Vec::new();
        while let Some(output) = self.core.poll_output() {
            match output {
                ClientOutput::Transmit(frame) => {
                    if self.ws.is_some() {
                        outgoing.push(frame.encode_rx(self.core.read_ticket()));
                    }
                }
                ClientOutput::Persist { write, op } => self.writes.push_back((write, op)),
                ClientOutput::Message(m) => {
                    let message =
                        AppMessage::new(&self.cfg.conversation, &m, &self.cfg.device, &self.core);
                    push_json_event(&mut self.events, "message", &message);
                }
                ClientOutput::History { .. } => {
                    for (resolve, _) in self.history_waiters.drain(..) {
                        self.events
                            .push(AppEvent::Resolve(resolve, JsValue::UNDEFINED));
                    }
                }
                ClientOutput::HistoryFailed(e) => {
                    let err: JsValue = AcklineError::Core(e).into();
                    for (_, reject) in self.history_waiters.drain(..) {
                        self.events.push(AppEvent::Reject(reject, err.clone()));
                    }
                }
                ClientOutput::Connect { fresh_token } => self.connect_wanted = Some(fresh_token),
                ClientOutput::Link(status) => {
                    if !self.closed {
                        self.state = status.into();
                        status_changed = true;
                    }
                }
                ClientOutput::Status { id, status } => {
                    // `status` reports the outbox size: news only when it changed.
                    status_changed |=
                        self.last_status != Some((self.state, self.core.outbox_len()));
                    self.on_status(&id, status);
                }
                ClientOutput::Error(e) => {
                    if let ClientError::Diverged { seq, server_head } = e {
                        let divergence = Divergence { seq, server_head };
                        self.divergence = Some(divergence);
                        let event = to_js(&DivergedEvent {
                            conversation: &self.cfg.conversation,
                            seq,
                            server_head,
                        });
                        self.events.push(AppEvent::Conversation("diverged", event));
                    }
                    self.record_error(&AcklineError::Core(e));
                    status_changed = true;
                }
                ClientOutput::Disconnect => {
                    self.transmit(std::mem::take(&mut outgoing));
                    self.detach_socket()
                }
            }
        }
        self.transmit(outgoing);
        if status_changed {
            self.push_status();
        }
    }

    /// Sends encoded frames in order, bundled (every server of this protocol
    /// version reads bundles).
    fn transmit(&self, frames: Vec<String>) {
        let Some(ws) = &self.ws else { return };
        if frames.is_empty() {
            return;
        }
        for text in protocol::pack_bundles(frames, protocol::limits::MAX_FRAME_BYTES) {
            // A socket that is not open yet or closing drops the frame; the
            // core resends whatever needs it after reconnecting.
            let _ = ws.send_with_str(&text);
        }
    }

    fn on_status(&mut self, id: &str, status: MessageStatus) {
        let conv = self.cfg.conversation.clone();
        if status == MessageStatus::Pending {
            // The core reports Pending only after `Durable` covering the outbox
            // write, which the writer feeds after the transaction's `complete`.
            if let Some(queued) = self.not_yet_durable.remove(id) {
                push_json_event(
                    &mut self.events,
                    "pending",
                    &PendingEvent {
                        conversation: &conv,
                        id,
                        body: &queued.body,
                        created: queued.created,
                    },
                );
            }
        }
        let (name, seq, at, code) = match &status {
            MessageStatus::Pending => ("pending", None, None, None),
            MessageStatus::Sent { seq, at } => ("sent", Some(*seq), Some(*at), None),
            MessageStatus::Delivered { seq } => ("delivered", Some(*seq), None, None),
            MessageStatus::Failed { code } => ("failed", None, None, Some(ErrorCode::from(*code))),
        };
        push_json_event(
            &mut self.events,
            "update",
            &UpdateEvent {
                conversation: &conv,
                id,
                status: name,
                seq,
                at,
                code,
            },
        );
        match status {
            MessageStatus::Sent { seq, at } => {
                self.confirmed.insert(id.to_owned(), (seq, at));
                for (resolve, _) in self.sends.remove(id).unwrap_or_default() {
                    self.events.push(AppEvent::Resolve(
                        resolve,
                        to_js(&SendResult { id, seq, at }),
                    ));
                }
            }
            MessageStatus::Failed { code } => {
                for (_, reject) in self.sends.remove(id).unwrap_or_default() {
                    let err = AcklineError::Refused {
                        id: id.to_owned(),
                        code,
                    };
                    self.events.push(AppEvent::Reject(reject, err.into()));
                }
            }
            _ => {}
        }
    }

    fn arm_core_timer(&mut self, weak: WeakSession) {
        let Some(deadline) = self.core.poll_timeout() else {
            self.core_timer = None;
            return;
        };
        if self
            .core_timer
            .as_ref()
            .is_some_and(|(armed, _)| *armed == deadline)
        {
            return;
        }
        let delay = deadline.saturating_sub(now()).min(u64::from(u32::MAX)) as u32;
        let timer = Timeout::new(delay, move || {
            let Some(s) = weak.upgrade() else { return };
            {
                let mut inner = s.inner.borrow_mut();
                inner.core_timer = None;
                inner.core.handle(now(), ClientInput::Timeout);
            }
            s.pump();
        });
        self.core_timer = Some((deadline, timer));
    }
}

/// Queues a conversation event as JSON, appended to the previous event when
/// that one is JSON too (a run of events becomes one parse).
fn push_json_event<T: Serialize>(events: &mut Vec<AppEvent>, name: &'static str, value: &T) {
    // Plain structs of strings and numbers: serializing cannot fail. Seqs
    // and times stay below 2^53 (the store refuses larger ones).
    let Ok(item) = serde_json::to_string(&(name, value)) else {
        web_sys::console::error_1(&format!("ackline: '{name}' event not serializable").into());
        return;
    };
    match events.last_mut() {
        Some(AppEvent::ConversationJson(json)) => {
            json.push(',');
            json.push_str(&item);
        }
        _ => events.push(AppEvent::ConversationJson(format!("[{item}"))),
    }
}

/// 64 random bits from `crypto.getRandomValues` of the global scope (a window
/// or a worker), for the core's seed: message ids draw 80 random bits from it,
/// so two starts of the same device must not share one (`Math.random` and the
/// clock could).
fn random_seed() -> Result<u64, AcklineError> {
    let crypto = js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("crypto"))
        .ok()
        .and_then(|c| c.dyn_into::<web_sys::Crypto>().ok())
        .ok_or_else(|| AcklineError::CryptoUnavailable(String::new()))?;
    let mut seed = [0u8; 8];
    crypto
        .get_random_values_with_u8_array(&mut seed)
        .map_err(|e| AcklineError::CryptoUnavailable(format!(": {}", js_message(&e))))?;
    Ok(u64::from_le_bytes(seed))
}

/// Calls the app's token callback and awaits its promise, if it returns one.
pub(crate) async fn resolve_token(f: &Function) -> Result<String, AcklineError> {
    token_from(ask_token(f)).await
}

/// Calls the app's token callback: its value, or a promise of it (already
/// on its way, so the caller can do other work before awaiting it).
pub(crate) fn ask_token(f: &Function) -> Result<JsValue, AcklineError> {
    f.call0(&JsValue::NULL)
        .map_err(|e| AcklineError::TokenFailed(js_message(&e)))
}

/// The token a callback gave ([`ask_token`]), its promise awaited.
pub(crate) async fn token_from(
    asked: Result<JsValue, AcklineError>,
) -> Result<String, AcklineError> {
    let failed = |e: JsValue| AcklineError::TokenFailed(js_message(&e));
    let value = match asked?.dyn_into::<js_sys::Promise>() {
        Ok(promise) => wasm_bindgen_futures::JsFuture::from(promise)
            .await
            .map_err(failed)?,
        Err(value) => value,
    };
    value
        .as_string()
        .ok_or_else(|| AcklineError::BadToken("the token callback must return a string".into()))
}

#[derive(Clone)]
struct WeakSession {
    inner: Weak<RefCell<Inner>>,
    listeners: Weak<Listeners>,
    client_listeners: Weak<Listeners>,
}

impl WeakSession {
    fn upgrade(&self) -> Option<Session> {
        Some(Session {
            inner: self.inner.upgrade()?,
            listeners: self.listeners.upgrade()?,
            client_listeners: self.client_listeners.upgrade()?,
        })
    }
}

/// Writes queued batches to IndexedDB one transaction at a time, in order, and
/// reports each batch durable to the core when its transaction completed.
async fn run_writer(weak: WeakSession) {
    loop {
        let Some(session) = weak.upgrade() else {
            return;
        };
        let (store, conv, batch) = {
            let mut inner = session.inner.borrow_mut();
            if inner.writes.is_empty() || inner.closed {
                inner.writer_running = false;
                return;
            }
            let batch: Vec<(WriteId, ClientWrite)> = inner.writes.drain(..).collect();
            (inner.store.clone(), inner.cfg.conversation.clone(), batch)
        };
        drop(session);
        let (ids, ops): (Vec<WriteId>, Vec<ClientWrite>) = batch.into_iter().unzip();
        let result = store.apply_all(&conv, &ops).await;
        let Some(session) = weak.upgrade() else {
            return;
        };
        match result {
            Ok(()) => {
                if let Some(through) = ids.last() {
                    let mut inner = session.inner.borrow_mut();
                    inner
                        .core
                        .handle(now(), ClientInput::Durable { through: *through });
                    inner.resolve_resets(*through);
                }
                session.pump();
            }
            Err(e) => {
                // Nothing of the batch was stored: put it back in front and try
                // again later. The core holds acks and surfacing meanwhile.
                session.record_error(&AcklineError::Store(e));
                {
                    let mut inner = session.inner.borrow_mut();
                    for item in ids.into_iter().zip(ops).rev() {
                        inner.writes.push_front(item);
                    }
                }
                session.pump();
                drop(session);
                gloo_timers::future::TimeoutFuture::new(STORE_RETRY_MS).await;
            }
        }
    }
}
