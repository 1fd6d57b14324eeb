//! Ackline browser client: reliable chat delivery over WebSocket, with every
//! message and the outbox kept in IndexedDB.
//!
//! ```js
//! import init, { Ackline } from 'ackline';
//! await init();
//! const client = await Ackline.open({ url: 'https://chat.example', token });
//! const room = await client.conversation('lobby');
//! room.on('message', (m) => show(m));          // each stored message once, in seq order
//! room.on('update', (u) => tick(u.id, u.status)); // pending -> sent -> delivered
//! const { id, seq } = await room.send('hello'); // resolves once the server stored it
//! ```
//!
//! The delivery logic lives in the sans-IO `protocol` crate; this crate is the
//! shell that gives it a WebSocket, IndexedDB and timers (see `session.rs`).

mod errors;
mod session;
pub mod store;
mod tabs;

use std::rc::Rc;

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use js_sys::{Function, Promise};
use serde::Deserialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::session::{Listeners, TokenSource};
use crate::store::IdbStore;
use crate::tabs::{Identity, TabConv, Tabs};

pub use crate::errors::{to_js, AcklineError, ErrorCode};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `Ackline.open`. */
export interface OpenOptions {
  /** Base URL of the Ackline edge, e.g. "https://chat.example" (http(s) or ws(s)). */
  url: string;
  /** A JWT from your backend, or a function returning one (called on every (re)connect). */
  token: string | (() => string | Promise<string>);
  /** IndexedDB database name (default "ackline"); use one per signed-in user. */
  dbName?: string;
}

/** A message stored by the server, as delivered to every member device. */
export interface Message {
  conversation: string;
  seq: number;
  /** Client message id (ULID) chosen by the sending device. */
  id: string;
  user: string;
  device: string;
  body: string;
  /** Server time of storage, epoch milliseconds. */
  at: number;
  /** Sent from this device. */
  mine: boolean;
  /** Own messages only (`mine`): "sent" while some other member has not stored
   *  it yet, "delivered" once every other member has. Later changes arrive as
   *  `update` events; after a reload this is how the ticks stay honest. */
  status?: "sent" | "delivered";
}

/** An own message queued in the outbox. The `pending` event fires only after the
 *  IndexedDB transaction holding it committed: from then on it survives a reload
 *  or a crashed tab. */
export interface PendingMessage {
  conversation: string;
  id: string;
  body: string;
  created: number;
}

/** Status change of an own message. */
export interface MessageUpdate {
  conversation: string;
  id: string;
  status: "pending" | "sent" | "delivered" | "failed";
  seq?: number;
  at?: number;
  /** Set when status is "failed": why the server refused it. */
  code?: AcklineErrorCode;
}

/** What `send` resolves with. */
export interface SendResult { id: string; seq: number; at: number; }

export interface ConnectionStatus {
  conversation: string;
  /** `auth`: the token (and a fresh one from the callback) was refused;
   *  retried when the page comes back online or visible. `stopped`: this
   *  user may not join (`lastError.code` is `forbidden` or `too_many_members`). */
  state: "connecting" | "open" | "offline" | "auth" | "stopped" | "closed";
  /** Own messages still in the outbox: not yet stored by the server, or stored
   *  but not yet delivered to every other member (they leave the outbox then). */
  outbox: number;
  lastError: { code: AcklineErrorCode; message: string } | null;
}

/** The server's history differs from what this device stored (it lost or
 *  rewrote messages, e.g. after a restore from a backup): the conversation's
 *  inbox is frozen (no new `message` events; sending still works) until the
 *  app calls `resetInbox()`. */
export interface Divergence {
  conversation: string;
  /** Where the two histories differ. */
  seq: number;
  /** The server's head seq at the time. */
  serverHead: number;
}

/** Committed IndexedDB requests of one object store. */
export interface WriteCounts { puts: number; deletes: number; }

/** What `storeStats()` returns: IndexedDB writes this tab committed, per store. */
export interface StoreStats {
  pages: WriteCounts;
  outbox: WriteCounts;
  conversations: WriteCounts;
  meta: WriteCounts;
}

/** A page of `history()`: ascending messages, and whether older ones exist. */
export type HistoryPage = Message[] & { more: boolean };

export interface ConversationEvents {
  message: Message;
  pending: PendingMessage;
  update: MessageUpdate;
  diverged: Divergence;
}

export interface ClientEvents {
  status: ConnectionStatus;
  error: { conversation: string; code: AcklineErrorCode; message: string };
}

// Typed listeners (merged into the classes below).
export interface Ackline {
  on<K extends keyof ClientEvents>(event: K, listener: (event: ClientEvents[K]) => void): void;
  off<K extends keyof ClientEvents>(event: K, listener: (event: ClientEvents[K]) => void): void;
}
export interface Conversation {
  on<K extends keyof ConversationEvents>(event: K, listener: (event: ConversationEvents[K]) => void): void;
  off<K extends keyof ConversationEvents>(event: K, listener: (event: ConversationEvents[K]) => void): void;
}
"#;

#[derive(Deserialize)]
struct TokenClaims {
    sub: String,
    device: String,
}

/// Reads `sub` and `device` from a JWT's payload (the server verifies it; the
/// client only needs to know who it is).
fn token_identity(token: &str) -> Result<TokenClaims, AcklineError> {
    let payload = token
        .split('.')
        .nth(1)
        .and_then(base64url_decode)
        .ok_or_else(|| AcklineError::BadToken("the token is not a JWT".into()))?;
    serde_json::from_slice(&payload)
        .map_err(|e| AcklineError::BadToken(format!("the token has no sub/device claims: {e}")))
}

/// base64url as JWT parts use it (RFC 7515, unpadded), read leniently: padding
/// is allowed and non-canonical trailing bits are accepted. The server checks
/// the token; the client only reads who it is.
const TOKEN_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    // '+' and '/' (the standard alphabet) are read as '-' and '_', as before.
    let url_safe: Vec<u8> = text
        .bytes()
        .map(|b| match b {
            b'+' => b'-',
            b'/' => b'_',
            other => other,
        })
        .collect();
    TOKEN_BASE64.decode(url_safe).ok()
}

fn socket_base(url: &str) -> Result<String, AcklineError> {
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .map(|r| format!("wss://{r}"))
        .or_else(|| url.strip_prefix("http://").map(|r| format!("ws://{r}")))
        .or_else(|| {
            (url.starts_with("ws://") || url.starts_with("wss://")).then(|| url.to_owned())
        });
    rest.ok_or(AcklineError::BadUrl(
        "url must start with http://, https://, ws:// or wss://",
    ))
}

struct ClientState {
    tabs: Rc<Tabs>,
    user: String,
    device: String,
    /// window `online`/`offline` and document `visibilitychange` handlers.
    _wake: Option<Closure<dyn FnMut()>>,
}

/// An Ackline client: one device, any number of conversations.
#[wasm_bindgen]
pub struct Ackline {
    state: Rc<ClientState>,
}

#[wasm_bindgen]
impl Ackline {
    /// Opens the local database and prepares a client. Rejects with
    /// `code` `store_unavailable`, `store_blocked`, `bad_url` or `bad_token`.
    #[wasm_bindgen(unchecked_return_type = "Ackline")]
    pub async fn open(
        #[wasm_bindgen(unchecked_param_type = "OpenOptions")] options: JsValue,
    ) -> Result<Ackline, JsValue> {
        let get =
            |name: &str| js_sys::Reflect::get(&options, &name.into()).unwrap_or(JsValue::UNDEFINED);
        let url = get("url")
            .as_string()
            .ok_or(AcklineError::BadOptions("options.url (string) is required"))?;
        let socket_base = socket_base(&url)?;
        let token_value = get("token");
        let db_name = get("dbName")
            .as_string()
            .unwrap_or_else(|| "ackline".to_owned());
        // A callback's token is fetched while IndexedDB opens (both take a
        // while on a page load; neither needs the other).
        let (token, first) = if let Some(t) = token_value.as_string() {
            (TokenSource::Fixed(t.clone()), Ok(JsValue::from_str(&t)))
        } else if let Some(f) = token_value.dyn_ref::<Function>() {
            (TokenSource::Callback(f.clone()), session::ask_token(f))
        } else {
            return Err(
                AcklineError::BadOptions("options.token must be a string or a function").into(),
            );
        };
        let store = IdbStore::open(&db_name).await;
        let identity = token_identity(&session::token_from(first).await?)?;
        let store = store?;
        let who = Identity {
            socket_base,
            token,
            user: identity.sub.clone(),
            device: identity.device.clone(),
        };
        let tabs = Tabs::join(&db_name, Rc::new(store), who, Rc::new(Listeners::default())).await;
        let state = Rc::new_cyclic(|weak: &std::rc::Weak<ClientState>| {
            let weak = weak.clone();
            let wake = Closure::<dyn FnMut()>::new(move || {
                if let Some(state) = weak.upgrade() {
                    // `navigator.onLine` false means no network at all; true
                    // (also on becoming visible) means "worth trying now".
                    let online = web_sys::window().is_none_or(|w| w.navigator().on_line());
                    state.tabs.nudge(online);
                }
            });
            if let Some(window) = web_sys::window() {
                let _ = window
                    .add_event_listener_with_callback("online", wake.as_ref().unchecked_ref());
                let _ = window
                    .add_event_listener_with_callback("offline", wake.as_ref().unchecked_ref());
                if let Some(doc) = window.document() {
                    let _ = doc.add_event_listener_with_callback(
                        "visibilitychange",
                        wake.as_ref().unchecked_ref(),
                    );
                }
            }
            ClientState {
                tabs,
                user: identity.sub,
                device: identity.device,
                _wake: Some(wake),
            }
        });
        Ok(Ackline { state })
    }

    /// The user id from the token.
    #[wasm_bindgen(getter)]
    pub fn user(&self) -> String {
        self.state.user.clone()
    }

    /// The device id from the token.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> String {
        self.state.device.clone()
    }

    /// The session of conversation `id` (one per id; opened on first call):
    /// restores its stored state and starts connecting. Rejects with `code`
    /// `crypto_unavailable` without `crypto.getRandomValues` (message ids are
    /// drawn from it), or a `store_*` code if IndexedDB fails.
    #[wasm_bindgen(unchecked_return_type = "Conversation")]
    pub async fn conversation(&self, id: String) -> Result<Conversation, JsValue> {
        let conv = self.state.tabs.conversation(&id).await?;
        Ok(Conversation {
            tabs: self.state.tabs.clone(),
            conv,
        })
    }

    /// True while this tab leads the tabs sharing its database (it holds the
    /// connections; see docs/TABS.md), or runs alone.
    #[wasm_bindgen(getter, js_name = isLeader)]
    pub fn is_leader(&self) -> bool {
        self.state.tabs.is_leader()
    }

    /// IndexedDB writes this tab committed since `open`, per object store:
    /// `{ pages, outbox, conversations, meta }`, each `{ puts, deletes }`
    /// (records put; delete requests). Only the leading tab writes.
    #[wasm_bindgen(js_name = storeStats, unchecked_return_type = "StoreStats")]
    pub fn store_stats(&self) -> JsValue {
        errors::to_js(&self.state.tabs.store_stats())
    }

    /// Listens to client events: `status` (connection state, outbox size, last
    /// error, per conversation) and `error`. (Typed in the custom TS section.)
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: String, listener: Function) {
        self.state.tabs.app_client.add(&event, listener);
    }

    /// Removes a listener added with `on`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: String, listener: Function) {
        self.state.tabs.app_client.remove(&event, &listener);
    }

    /// Cuts (false) or restores (true) every connection of this client on purpose.
    #[wasm_bindgen(js_name = setOnline)]
    /// The connections are shared by every tab of this database, so this
    /// cuts or restores them for all of them.
    pub fn set_online(&self, online: bool) {
        self.state.tabs.set_online(online);
    }

    /// Closes every connection and the database. Unfinished `send` promises
    /// reject with code `closed`; their messages stay in the outbox and are sent
    /// by the next client opened on this database.
    /// A leader's connections pass to the next tab of its database.
    pub fn close(&self) {
        self.state.tabs.close();
    }
}

/// One conversation of a client.
#[wasm_bindgen]
pub struct Conversation {
    tabs: Rc<Tabs>,
    conv: Rc<TabConv>,
}

#[wasm_bindgen]
impl Conversation {
    /// Sends `body`. The message goes to the IndexedDB outbox; once that
    /// transaction committed (the message now survives a reload or a crash) it
    /// is announced with a `pending` event. The promise resolves with
    /// `{ id, seq, at }` once the server stored it, and rejects with an Error
    /// with a `code` if the body is too large or the server refuses it.
    #[wasm_bindgen(unchecked_return_type = "Promise<SendResult>")]
    pub fn send(&self, body: String) -> Promise {
        self.tabs.send(&self.conv.id, body)
    }

    /// Listens to `message` (each stored message once, in seq order, own ones
    /// included), `pending` (an own message is durably in the outbox), `update`
    /// (an own message became sent, delivered or failed) and `diverged` (the
    /// server's history differs from the stored one; see `resetInbox`).
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: String, listener: Function) {
        self.conv.app.add(&event, listener);
    }

    /// Removes a listener added with `on`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: String, listener: Function) {
        self.conv.app.remove(&event, &listener);
    }

    /// Up to `limit` (default 50) messages below seq `before` (default: all),
    /// ascending: from IndexedDB first, fetching older pages from the server
    /// when the local copy has fewer. The array's `more` says whether older
    /// messages exist. Rejects with `offline` when a fetch is needed without
    /// a connection, `history_mismatch` when the server's page does not chain.
    #[wasm_bindgen(unchecked_return_type = "Promise<HistoryPage>")]
    pub fn history(
        &self,
        #[wasm_bindgen(unchecked_param_type = "{ before?: number; limit?: number }")]
        options: JsValue,
    ) -> Promise {
        let get = |name: &str| {
            js_sys::Reflect::get(&options, &name.into())
                .ok()
                .and_then(|v| v.as_f64())
        };
        let before = get("before").map_or(protocol::MAX_SEQ, |b| b.max(0.0) as u64);
        let limit = get("limit").map_or(50, |l| {
            l.clamp(1.0, f64::from(protocol::limits::MAX_PAGE)) as u32
        });
        let p = self.tabs.request(
            "history",
            &self.conv.id,
            &[
                ("before", JsValue::from_f64(before as f64)),
                ("limit", JsValue::from(limit)),
            ],
        );
        wasm_bindgen_futures::future_to_promise(async move {
            let res = wasm_bindgen_futures::JsFuture::from(p).await?;
            let list = js_sys::Reflect::get(&res, &"messages".into())?;
            let more = js_sys::Reflect::get(&res, &"more".into())?;
            let _ = js_sys::Reflect::set(&list, &"more".into(), &more);
            Ok(list)
        })
    }

    /// Own messages that were still unconfirmed when the page loaded.
    #[wasm_bindgen(unchecked_return_type = "PendingMessage[]")]
    pub fn pending(&self) -> JsValue {
        self.tabs.pending(&self.conv)
    }

    /// Repairs a diverged conversation (see the `diverged` event): drops the
    /// stored inbox of this conversation (its messages and watermark) and starts
    /// over as a fresh device. The outbox is kept and sent as usual. Afterwards
    /// `message` events bring the server's latest page and `history()` the older
    /// ones; clear what you show before calling it, since seqs of the old copy
    /// may now belong to other messages. Resolves once the old inbox is gone from
    /// IndexedDB; rejects with code `closed` after `close()`.
    #[wasm_bindgen(js_name = resetInbox, unchecked_return_type = "Promise<void>")]
    pub fn reset_inbox(&self) -> Promise {
        self.tabs.reset_inbox(&self.conv)
    }

    /// The divergence reported by the last `diverged` event, until
    /// `resetInbox()`; `null` otherwise.
    #[wasm_bindgen(getter, unchecked_return_type = "Divergence | null")]
    pub fn diverged(&self) -> JsValue {
        self.tabs.divergence(&self.conv)
    }

    /// Own messages of this conversation still in the outbox: not yet stored
    /// by the server, or not yet delivered to every other member.
    #[wasm_bindgen(getter, js_name = outboxSize)]
    pub fn outbox_size(&self) -> usize {
        self.tabs.outbox(&self.conv)
    }
}

/// Every `code` an error of this package can carry (the `AcklineErrorCode`
/// union), in a stable order.
#[wasm_bindgen(js_name = errorCodes, unchecked_return_type = "AcklineErrorCode[]")]
pub fn error_codes() -> js_sys::Array {
    ErrorCode::ALL
        .iter()
        .map(|c| JsValue::from_str(c.as_str()))
        .collect()
}

/// The protocol version this client speaks.
#[wasm_bindgen(js_name = protocolVersion)]
pub fn protocol_version() -> u32 {
    protocol::PROTOCOL_VERSION
}

#[cfg(test)]
mod tests {
    use super::base64url_decode;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn base64url_reads_jwt_parts() {
        assert_eq!(
            base64url_decode("eyJzdWIiOiJhbm4ifQ").as_deref(),
            Some(&br#"{"sub":"ann"}"#[..])
        );
        assert_eq!(base64url_decode("").as_deref(), Some(&b""[..]));
        // Every length remainder, unpadded and padded.
        assert_eq!(base64url_decode("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64url_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64url_decode("YWI").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64url_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64url_decode("YWJj").as_deref(), Some(&b"abc"[..]));
        // Both alphabets: 0xfb 0xff is "-_8" in base64url and "+/8" in base64.
        assert_eq!(base64url_decode("-_8").as_deref(), Some(&[0xfb, 0xff][..]));
        assert_eq!(base64url_decode("+/8").as_deref(), Some(&[0xfb, 0xff][..]));
        // Non-canonical trailing bits ("YR" has bits set below the one byte).
        assert_eq!(base64url_decode("YR").as_deref(), Some(&b"a"[..]));
    }

    #[wasm_bindgen_test]
    fn base64url_refuses_what_is_not_base64() {
        for bad in ["e30.", "a b", "*", "ey J9", "\u{e9}"] {
            assert_eq!(base64url_decode(bad), None, "{bad:?}");
        }
    }
}
