//! Many tabs, one connection: the tabs of one browser that open the same
//! database (`dbName`) elect one leader with the Web Lock `ackline:<dbName>`
//! and talk over `BroadcastChannel('ackline:<dbName>')`. See docs/TABS.md.
//!
//! The leader runs today's single-tab engine ([`Session`], one per
//! conversation: the WebSocket, the core, the IndexedDB writer) and relays.
//! Every tab, the leader included, goes through the same request path: an
//! API call becomes a request (`open`, `send`, `history`, `reset`,
//! `online`) that the leader handles (locally when this tab leads) and
//! answers to the tab that asked. Requests stay outstanding until answered;
//! when a new leader announces itself they are asked again with the same
//! request id and, for `send`, the same message id (chosen by the asking
//! tab), which the leader queues idempotently (`Client::send_with_id`).
//!
//! Each tab filters `message` events by the highest seq it surfaced per
//! conversation (no duplicates after a takeover) and fills a gap by asking
//! the leader for everything after it (`open` with `after`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::{Rc, Weak};

use js_sys::{Array, Function, Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BroadcastChannel, MessageEvent};

use crate::errors::{js_message, AcklineError};
use crate::session::{for_each_json_event, now, Listeners, Session, SessionConfig, TokenSource};
use crate::store::IdbStore;

/// Who and where, for the sessions this tab starts when it leads.
pub(crate) struct Identity {
    pub socket_base: String,
    pub token: TokenSource,
    pub user: String,
    pub device: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Waiting in the lock queue: another tab leads.
    Follower,
    /// Holds the lock.
    Leader,
    /// No Web Locks or BroadcastChannel: alone, as before.
    Single,
}

/// What one tab keeps per conversation it opened.
pub(crate) struct TabConv {
    pub id: String,
    /// The app's listeners of this conversation.
    pub app: Rc<Listeners>,
    /// Highest seq surfaced to this tab's app.
    last_seen: Cell<Option<u64>>,
    /// Messages above a gap, waiting for the catch-up.
    buffer: RefCell<BTreeMap<u64, JsValue>>,
    catching_up: Cell<bool>,
    pending: RefCell<JsValue>,
    divergence: RefCell<JsValue>,
    outbox: Cell<usize>,
}

type Handler = Closure<dyn FnMut(JsValue) -> JsValue>;

struct Request {
    msg: JsValue,
    resolve: Function,
    reject: Function,
}

pub(crate) struct Tabs {
    me: Weak<Tabs>,
    tab: String,
    role: Cell<Role>,
    channel: Option<BroadcastChannel>,
    store: Rc<IdbStore>,
    who: Identity,
    /// The leader's sessions (also for conversations only other tabs opened).
    sessions: RefCell<HashMap<String, Session>>,
    opening: RefCell<Vec<String>>,
    convs: RefCell<HashMap<String, Rc<TabConv>>>,
    requests: RefCell<BTreeMap<u64, Request>>,
    next_req: Cell<u64>,
    /// The app's client listeners (`status`, `error`).
    pub app_client: Rc<Listeners>,
    /// Resolves the promise that holds the lock.
    release: RefCell<Option<Function>>,
    abort: Option<web_sys::AbortController>,
    closed: Cell<bool>,
    /// Another tab of this database was heard from (it announces itself on
    /// joining and to every new leader): until then a leader relays nothing,
    /// as posting every event to an empty channel costs more than the event.
    others: Cell<bool>,
    last_id: Cell<Option<(u64, u128)>>,
    /// The channel's and the lock's callbacks, alive as long as the tab.
    handlers: RefCell<Vec<Handler>>,
}

/// The relayed event that tells every tab the inbox was reset.
const RESET: &str = "ackline:reset";

fn get(v: &JsValue, k: &str) -> JsValue {
    Reflect::get(v, &k.into()).unwrap_or(JsValue::UNDEFINED)
}

fn obj(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = Object::new();
    for (k, v) in pairs {
        let _ = Reflect::set(&o, &(*k).into(), v);
    }
    o.into()
}

fn opt_num(v: Option<u64>) -> JsValue {
    v.map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64))
}

/// An error as it crosses the channel (an Error's `code` does not survive
/// structured cloning).
fn err_plain(e: &JsValue) -> JsValue {
    let code = get(e, "code")
        .as_string()
        .unwrap_or_else(|| "server_error".into());
    obj(&[("code", code.into()), ("message", js_message(e).into())])
}

fn err_js(plain: &JsValue) -> JsValue {
    let e = js_sys::Error::new(&get(plain, "message").as_string().unwrap_or_default());
    let _ = Reflect::set(&e, &"code".into(), &get(plain, "code"));
    e.into()
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Some(c) = Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .and_then(|c| c.dyn_into::<web_sys::Crypto>().ok())
    {
        let _ = c.get_random_values_with_u8_array(&mut b);
    }
    u64::from_le_bytes(b) ^ (js_sys::Math::random() * 4e15) as u64
}

impl Tabs {
    /// Joins the tabs of `db_name`: elects a leader or waits behind it.
    pub(crate) async fn join(
        db_name: &str,
        store: Rc<IdbStore>,
        who: Identity,
        app_client: Rc<Listeners>,
    ) -> Rc<Tabs> {
        let name = format!("ackline:{db_name}");
        let locks = web_sys::window()
            .map(|w| get(&w.navigator(), "locks"))
            .filter(|l| !l.is_undefined() && !l.is_null());
        let channel = if locks.is_some() {
            BroadcastChannel::new(&name).ok()
        } else {
            None
        };
        let single = locks.is_none() || channel.is_none();
        if single {
            web_sys::console::warn_1(
                &"ackline: Web Locks or BroadcastChannel unavailable: this tab runs alone (tabs of one database may cut each other off)".into(),
            );
        }
        let abort = if single {
            None
        } else {
            web_sys::AbortController::new().ok()
        };
        let tabs = Rc::new_cyclic(|me| Tabs {
            me: me.clone(),
            tab: format!("{:016x}", random_u64()),
            role: Cell::new(if single { Role::Single } else { Role::Follower }),
            channel,
            store,
            who,
            sessions: RefCell::default(),
            opening: RefCell::default(),
            convs: RefCell::default(),
            requests: RefCell::default(),
            next_req: Cell::new(1),
            app_client,
            release: RefCell::default(),
            abort,
            closed: Cell::new(false),
            others: Cell::new(false),
            last_id: Cell::new(None),
            handlers: RefCell::default(),
        });
        if single {
            return tabs;
        }
        let locks = locks.unwrap();
        // Channel messages.
        let weak = Rc::downgrade(&tabs);
        let on_msg = Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |e: JsValue| {
            if let (Some(t), Some(e)) = (weak.upgrade(), e.dyn_ref::<MessageEvent>()) {
                t.on_channel(e.data());
            }
            JsValue::UNDEFINED
        });
        if let Some(ch) = &tabs.channel {
            ch.set_onmessage(Some(on_msg.as_ref().unchecked_ref()));
        }
        // Before any request of ours: a leader relays events once it knows
        // another tab listens.
        tabs.post(&obj(&[
            ("k", "hi".into()),
            ("tab", tabs.tab.clone().into()),
        ]));
        // The lock: held until `close()` or the page goes away.
        let granted = Rc::new(Cell::new(false));
        let weak = Rc::downgrade(&tabs);
        let g = granted.clone();
        let on_grant = Closure::<dyn FnMut(JsValue) -> JsValue>::new(move |_lock: JsValue| {
            g.set(true);
            let Some(t) = weak.upgrade() else {
                return Promise::resolve(&JsValue::UNDEFINED).into();
            };
            if t.closed.get() {
                return Promise::resolve(&JsValue::UNDEFINED).into();
            }
            let held = Promise::new(&mut |resolve, _| {
                *t.release.borrow_mut() = Some(resolve);
            });
            t.become_leader();
            held.into()
        });
        let options = obj(&[(
            "signal",
            tabs.abort
                .as_ref()
                .map_or(JsValue::UNDEFINED, |a| a.signal().into()),
        )]);
        let request = get(&locks, "request").dyn_into::<Function>();
        if let Ok(request) = request {
            if let Ok(p) = request.call3(&locks, &name.clone().into(), &options, on_grant.as_ref())
            {
                // An abort (close while queued) rejects it: nothing to do.
                let noop = Closure::<dyn FnMut(JsValue)>::new(|_| {});
                let _ = p.dyn_into::<Promise>().map(|p| p.catch(&noop));
                noop.forget();
            }
        }
        tabs.handlers.borrow_mut().extend([on_msg, on_grant]);
        // Leader or follower? Granted at once, unless another tab holds it.
        let query = get(&locks, "query").dyn_into::<Function>().ok();
        for _ in 0..200 {
            if granted.get() {
                break;
            }
            let held_elsewhere = match &query {
                Some(q) => match q
                    .call0(&locks)
                    .ok()
                    .and_then(|p| p.dyn_into::<Promise>().ok())
                {
                    Some(p) => {
                        let state = wasm_bindgen_futures::JsFuture::from(p)
                            .await
                            .unwrap_or(JsValue::UNDEFINED);
                        let held = get(&state, "held");
                        Array::from(&held)
                            .iter()
                            .any(|l| get(&l, "name").as_string().as_deref() == Some(name.as_str()))
                    }
                    None => false,
                },
                None => false,
            };
            if held_elsewhere && !granted.get() {
                break;
            }
            gloo_timers::future::TimeoutFuture::new(5).await;
        }
        tabs
    }

    fn leads(&self) -> bool {
        matches!(self.role.get(), Role::Leader | Role::Single)
    }

    fn post(&self, msg: &JsValue) {
        if let Some(ch) = &self.channel {
            let _ = ch.post_message(msg);
        }
    }

    /// The lock was granted: announce, then handle every outstanding request
    /// of this tab here (asked again: same ids).
    fn become_leader(&self) {
        self.role.set(Role::Leader);
        self.post(&obj(&[
            ("k", "leader".into()),
            ("tab", self.tab.clone().into()),
        ]));
        let reqs: Vec<(u64, JsValue)> = self
            .requests
            .borrow()
            .iter()
            .map(|(id, r)| (*id, r.msg.clone()))
            .collect();
        for (_, msg) in reqs {
            let _ = Reflect::set(&msg, &"retry".into(), &true.into());
            self.spawn_handle(msg);
        }
        // Start this tab's conversations at once (connecting), and catch
        // each up from the stored history.
        let convs: Vec<Rc<TabConv>> = self.convs.borrow().values().cloned().collect();
        for c in convs {
            if c.last_seen.get().is_some() {
                self.catch_up(&c);
            } else if let Some(me) = self.me.upgrade() {
                wasm_bindgen_futures::spawn_local(async move {
                    let _ = me.session(&c.id).await;
                });
            }
        }
    }

    fn on_channel(&self, msg: JsValue) {
        if self.closed.get() {
            return;
        }
        // Any message comes from another tab (a channel does not hear itself).
        self.others.set(true);
        let kind = get(&msg, "k").as_string().unwrap_or_default();
        match kind.as_str() {
            "req" if self.leads() => self.spawn_handle(msg),
            "res" if get(&msg, "to").as_string().as_deref() == Some(self.tab.as_str()) => {
                self.settle(&msg)
            }
            "ev" if !self.leads() => {
                let conv = get(&msg, "conv").as_string().unwrap_or_default();
                self.deliver(
                    &conv,
                    &get(&msg, "name").as_string().unwrap_or_default(),
                    get(&msg, "value"),
                );
            }
            "evj" if !self.leads() => {
                let conv = get(&msg, "conv").as_string().unwrap_or_default();
                let json = get(&msg, "json").as_string().unwrap_or_default();
                for_each_json_event(&json, |name, value| {
                    self.deliver(&conv, name, value.clone())
                });
            }
            "cev" if !self.leads() => {
                self.deliver_client(
                    &get(&msg, "name").as_string().unwrap_or_default(),
                    get(&msg, "value"),
                );
            }
            "leader" if !self.leads() => {
                // A new leader: say we listen, ask again what is unanswered,
                // then catch up.
                self.post(&obj(&[
                    ("k", "hi".into()),
                    ("tab", self.tab.clone().into()),
                ]));
                let reqs: Vec<JsValue> = self
                    .requests
                    .borrow()
                    .values()
                    .map(|r| r.msg.clone())
                    .collect();
                for msg in reqs {
                    let _ = Reflect::set(&msg, &"retry".into(), &true.into());
                    self.post(&msg);
                }
                let convs: Vec<Rc<TabConv>> = self.convs.borrow().values().cloned().collect();
                for c in convs {
                    self.catch_up(&c);
                }
            }
            _ => {}
        }
    }

    /// Sends a request to the leader (this tab, when it leads).
    pub(crate) fn request(&self, op: &str, conv: &str, args: &[(&str, JsValue)]) -> Promise {
        let req = self.next_req.get();
        self.next_req.set(req + 1);
        let mut pairs = vec![
            ("k", JsValue::from("req")),
            ("tab", self.tab.clone().into()),
            ("req", JsValue::from_f64(req as f64)),
            ("op", op.into()),
            ("conv", conv.into()),
        ];
        pairs.extend(args.iter().cloned());
        let msg = obj(&pairs);
        let promise = Promise::new(&mut |resolve, reject| {
            if self.closed.get() {
                let _ = reject.call1(&JsValue::NULL, &AcklineError::Closed.into());
                return;
            }
            self.requests.borrow_mut().insert(
                req,
                Request {
                    msg: msg.clone(),
                    resolve,
                    reject,
                },
            );
        });
        if self.leads() {
            self.spawn_handle(msg);
        } else {
            self.post(&msg);
        }
        promise
    }

    fn settle(&self, res: &JsValue) {
        let req = get(res, "req").as_f64().unwrap_or(-1.0) as u64;
        let Some(r) = self.requests.borrow_mut().remove(&req) else {
            return;
        };
        let err = get(res, "err");
        if err.is_undefined() {
            let _ = r.resolve.call1(&JsValue::NULL, &get(res, "ok"));
        } else {
            let _ = r.reject.call1(&JsValue::NULL, &err_js(&err));
        }
    }

    fn spawn_handle(&self, msg: JsValue) {
        let Some(me) = self.me.upgrade() else { return };
        wasm_bindgen_futures::spawn_local(async move {
            let result = me.handle(&msg).await;
            let tab = get(&msg, "tab").as_string().unwrap_or_default();
            let mut pairs = vec![
                ("k", JsValue::from("res")),
                ("to", tab.clone().into()),
                ("req", get(&msg, "req")),
            ];
            match result {
                Ok(v) => pairs.push(("ok", v)),
                Err(e) => {
                    // A leader closing stops its sessions: other tabs ask
                    // the next leader instead of hearing `closed`.
                    if get(&e, "code").as_string().as_deref() == Some("closed") && tab != me.tab {
                        return;
                    }
                    pairs.push(("err", err_plain(&e)));
                }
            }
            let res = obj(&pairs);
            if tab == me.tab {
                me.settle(&res);
            } else if me.leads() {
                me.post(&res);
            }
        });
    }

    /// The leader's side of a request.
    async fn handle(&self, msg: &JsValue) -> Result<JsValue, JsValue> {
        let conv = get(msg, "conv").as_string().unwrap_or_default();
        let op = get(msg, "op").as_string().unwrap_or_default();
        if op == "online" {
            let online = get(msg, "online").as_bool().unwrap_or(true);
            let sessions: Vec<Session> = self.sessions.borrow().values().cloned().collect();
            for s in sessions {
                s.set_online(online);
            }
            return Ok(JsValue::UNDEFINED);
        }
        let session = self.session(&conv).await?;
        match op.as_str() {
            "open" => {
                let after = get(msg, "after").as_f64().map(|a| a as u64);
                let messages = match after {
                    Some(after) => session.messages_after(after).await?,
                    None => Array::new(),
                };
                Ok(obj(&[
                    ("watermark", opt_num(session.watermark())),
                    ("messages", messages.into()),
                    ("pending", session.pending_messages()),
                    ("status", session.status_value()),
                    ("diverged", session.divergence()),
                ]))
            }
            "send" => {
                let id = get(msg, "id").as_string().unwrap_or_default();
                let body = get(msg, "body").as_string().unwrap_or_default();
                let retry = get(msg, "retry").as_bool().unwrap_or(false);
                session.send_with_id(id, body, retry).await
            }
            "history" => {
                let before = get(msg, "before")
                    .as_f64()
                    .map_or(protocol::MAX_SEQ, |b| b as u64);
                let limit = get(msg, "limit").as_f64().map_or(50, |l| l as u32);
                let page = session.history(before, limit).await?;
                Ok(obj(&[
                    ("more", get(&page, "more")),
                    ("messages", Array::from(&page).into()),
                ]))
            }
            "reset" => {
                // The inbox starts over: every tab forgets its last seen seq
                // (the server's latest page comes as `message` events again).
                self.relay_event(&conv, RESET, &JsValue::NULL);
                wasm_bindgen_futures::JsFuture::from(session.reset_inbox()).await
            }
            _ => Err(AcklineError::BadOptions("unknown tab request").into()),
        }
    }

    /// The leader's session of `conv`, started on first use.
    async fn session(&self, conv: &str) -> Result<Session, JsValue> {
        loop {
            if self.closed.get() {
                return Err(AcklineError::Closed.into());
            }
            if let Some(s) = self.sessions.borrow().get(conv) {
                return Ok(s.clone());
            }
            if !self.opening.borrow().iter().any(|c| c == conv) {
                break;
            }
            gloo_timers::future::TimeoutFuture::new(5).await;
        }
        self.opening.borrow_mut().push(conv.to_owned());
        let cfg = SessionConfig {
            socket_url: format!(
                "{}/v1/conversations/{}/connect",
                self.who.socket_base,
                String::from(js_sys::encode_uri_component(conv))
            ),
            token: self.who.token.clone(),
            conversation: conv.to_owned(),
            user: self.who.user.clone(),
            device: self.who.device.clone(),
        };
        let weak = self.me.clone();
        let c = conv.to_owned();
        let tap_json = {
            let (weak, c) = (weak.clone(), c.clone());
            Rc::new(move |json: &str| {
                if let Some(t) = weak.upgrade() {
                    t.relay_events_json(&c, json);
                }
            })
        };
        let listeners = Rc::new(Listeners::tapped(
            Rc::new(move |name: &str, value: &JsValue| {
                if let Some(t) = weak.upgrade() {
                    t.relay_event(&c, name, value);
                }
            }),
            Some(tap_json),
        ));
        let weak = self.me.clone();
        let client = Rc::new(Listeners::tapped(
            Rc::new(move |name: &str, value: &JsValue| {
                if let Some(t) = weak.upgrade() {
                    if t.leads() {
                        // A closing leader's `closed` status is its own tab's only.
                        if !t.closed.get() && t.others.get() {
                            t.post(&obj(&[
                                ("k", "cev".into()),
                                ("name", name.into()),
                                ("value", value.clone()),
                            ]));
                        }
                        t.deliver_client(name, value.clone());
                    }
                }
            }),
            None,
        ));
        let started = Session::start(cfg, self.store.clone(), listeners, client).await;
        self.opening.borrow_mut().retain(|x| x != conv);
        let session = started?;
        if self.closed.get() {
            session.close();
            return Err(AcklineError::Closed.into());
        }
        self.sessions
            .borrow_mut()
            .insert(conv.to_owned(), session.clone());
        Ok(session)
    }

    /// A leader session's event: to every other tab, and to this one.
    fn relay_event(&self, conv: &str, name: &str, value: &JsValue) {
        if !self.leads() || self.closed.get() {
            return;
        }
        if self.others.get() {
            self.post(&obj(&[
                ("k", "ev".into()),
                ("conv", conv.into()),
                ("name", name.into()),
                ("value", value.clone()),
            ]));
        }
        self.deliver(conv, name, value.clone());
    }

    /// A run of a leader session's events (a JSON array of `[name, value]`
    /// pairs): to every other tab as one message, and to this one.
    fn relay_events_json(&self, conv: &str, json: &str) {
        if !self.leads() || self.closed.get() {
            return;
        }
        if self.others.get() {
            self.post(&obj(&[
                ("k", "evj".into()),
                ("conv", conv.into()),
                ("json", json.into()),
            ]));
        }
        for_each_json_event(json, |name, value| self.deliver(conv, name, value.clone()));
    }

    fn deliver_client(&self, name: &str, value: JsValue) {
        if name == "status" {
            let conv = get(&value, "conversation").as_string().unwrap_or_default();
            if let Some(c) = self.convs.borrow().get(&conv) {
                c.outbox
                    .set(get(&value, "outbox").as_f64().unwrap_or(0.0) as usize);
            }
        }
        self.app_client.fire(name, &value);
    }

    /// A conversation event for this tab's app; `message`s once, in order.
    fn deliver(&self, conv: &str, name: &str, value: JsValue) {
        let Some(c) = self.convs.borrow().get(conv).cloned() else {
            return;
        };
        match name {
            "message" => {
                let seq = get(&value, "seq").as_f64().unwrap_or(0.0) as u64;
                match c.last_seen.get() {
                    Some(l) if seq <= l => {}
                    Some(l) if seq > l + 1 => {
                        c.buffer.borrow_mut().insert(seq, value);
                        self.catch_up(&c);
                    }
                    _ => {
                        c.last_seen.set(Some(seq));
                        c.app.fire("message", &value);
                        self.drain(&c, false);
                    }
                }
            }
            RESET => {
                c.last_seen.set(None);
                c.buffer.borrow_mut().clear();
                *c.divergence.borrow_mut() = JsValue::NULL;
            }
            "diverged" => {
                *c.divergence.borrow_mut() = value.clone();
                c.app.fire(name, &value);
            }
            _ => c.app.fire(name, &value),
        }
    }

    /// Surfaces buffered messages that continue the last seen one (all of
    /// them, in order, when `force`: a gap nothing can fill).
    fn drain(&self, c: &TabConv, force: bool) {
        loop {
            let next = {
                let mut buf = c.buffer.borrow_mut();
                let Some((&seq, _)) = buf.iter().next() else {
                    return;
                };
                let last = c.last_seen.get();
                if last.is_some_and(|l| seq <= l) {
                    buf.remove(&seq);
                    continue;
                }
                if !force && last.is_some_and(|l| seq > l + 1) {
                    return;
                }
                buf.remove(&seq).map(|v| (seq, v))
            };
            if let Some((seq, v)) = next {
                c.last_seen.set(Some(seq));
                c.app.fire("message", &v);
            }
        }
    }

    /// Asks the leader for everything after the last seen seq.
    fn catch_up(&self, c: &Rc<TabConv>) {
        let Some(after) = c.last_seen.get() else {
            return;
        };
        if c.catching_up.replace(true) {
            return;
        }
        let p = self.request("open", &c.id, &[("after", JsValue::from_f64(after as f64))]);
        let (me, c) = (self.me.clone(), c.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let res = wasm_bindgen_futures::JsFuture::from(p).await;
            c.catching_up.set(false);
            let Some(me) = me.upgrade() else { return };
            if let Ok(res) = res {
                for m in Array::from(&get(&res, "messages")).iter() {
                    let seq = get(&m, "seq").as_f64().unwrap_or(0.0) as u64;
                    c.buffer.borrow_mut().insert(seq, m);
                }
                me.drain(&c, true);
            }
        });
    }

    /// This tab's handle of conversation `id`: asks the leader to open it.
    pub(crate) async fn conversation(&self, id: &str) -> Result<Rc<TabConv>, JsValue> {
        if let Some(c) = self.convs.borrow().get(id) {
            return Ok(c.clone());
        }
        let c = Rc::new(TabConv {
            id: id.to_owned(),
            app: Rc::new(Listeners::default()),
            last_seen: Cell::new(None),
            buffer: RefCell::default(),
            catching_up: Cell::new(false),
            pending: RefCell::new(Array::new().into()),
            divergence: RefCell::new(JsValue::NULL),
            outbox: Cell::new(0),
        });
        self.convs
            .borrow_mut()
            .entry(id.to_owned())
            .or_insert(c.clone());
        let res = wasm_bindgen_futures::JsFuture::from(self.request(
            "open",
            id,
            &[("after", JsValue::NULL)],
        ))
        .await?;
        if c.last_seen.get().is_none() {
            c.last_seen
                .set(get(&res, "watermark").as_f64().map(|w| w as u64));
        }
        *c.pending.borrow_mut() = get(&res, "pending");
        *c.divergence.borrow_mut() = get(&res, "diverged");
        // The connection's state as of now (a tab that joins later hears no
        // change until the next one).
        self.deliver_client("status", get(&res, "status"));
        Ok(c)
    }

    /// A ULID for a message of this tab: 48 bits of time, 80 random bits,
    /// monotonic within the tab.
    fn next_id(&self) -> String {
        let ms = now() & ((1 << 48) - 1);
        let mask80: u128 = (1 << 80) - 1;
        let (ms, rand) = match self.last_id.get() {
            Some((l, r)) if ms <= l && r < mask80 => (l, r + 1),
            _ => (
                ms,
                ((u128::from(random_u64()) & 0xFFFF) << 64) | u128::from(random_u64()),
            ),
        };
        self.last_id.set(Some((ms, rand)));
        ulid::Ulid::from_parts(ms, rand).to_string()
    }

    pub(crate) fn send(&self, conv: &str, body: String) -> Promise {
        let id = self.next_id();
        self.request("send", conv, &[("id", id.into()), ("body", body.into())])
    }

    pub(crate) fn pending(&self, c: &TabConv) -> JsValue {
        c.pending.borrow().clone()
    }

    pub(crate) fn divergence(&self, c: &TabConv) -> JsValue {
        c.divergence.borrow().clone()
    }

    pub(crate) fn outbox(&self, c: &TabConv) -> usize {
        match self.sessions.borrow().get(&c.id) {
            Some(s) if self.leads() => s.outbox_len(),
            _ => c.outbox.get(),
        }
    }

    pub(crate) fn reset_inbox(&self, c: &Rc<TabConv>) -> Promise {
        *c.divergence.borrow_mut() = JsValue::NULL;
        self.request("reset", &c.id, &[])
    }

    /// The browser's network or visibility changed: the leader's sessions hear it.
    pub(crate) fn nudge(&self, online: bool) {
        if self.leads() {
            let sessions: Vec<Session> = self.sessions.borrow().values().cloned().collect();
            for s in sessions {
                s.nudge(online);
            }
        }
    }

    pub(crate) fn set_online(&self, online: bool) {
        let _ = self.request("online", "", &[("online", online.into())]);
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leads()
    }

    /// The IndexedDB writes this tab's connection committed (the leader
    /// writes for every tab; a follower's stay at zero).
    pub(crate) fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    /// Stops everything: the leader's sessions close and the lock goes to
    /// the next tab; this tab's unanswered requests reject with `closed`.
    pub(crate) fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        let sessions: Vec<Session> = self.sessions.borrow_mut().drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.close();
        }
        self.store.close();
        let reqs: Vec<Request> = std::mem::take(&mut *self.requests.borrow_mut())
            .into_values()
            .collect();
        let err: JsValue = AcklineError::Closed.into();
        for r in reqs {
            let _ = r.reject.call1(&JsValue::NULL, &err);
        }
        if let Some(ch) = &self.channel {
            ch.set_onmessage(None);
            ch.close();
        }
        if let Some(a) = &self.abort {
            a.abort();
        }
        if let Some(release) = self.release.borrow_mut().take() {
            let _ = release.call0(&JsValue::NULL);
        }
        self.role.set(Role::Follower);
    }
}
