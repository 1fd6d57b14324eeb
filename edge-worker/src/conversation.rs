//! The `Conversation` Durable Object: a thin shell around
//! [`protocol::Conversation`], the conversation's single writer.
//!
//! The shell turns socket events and alarms into core inputs and carries out the
//! core's outputs: frames go to sockets, `Persist` writes go to SQLite, closes
//! close sockets. Writes run as synchronous SQL calls with no `.await` in
//! between; they commit together and workerd's output gate holds every frame
//! sent after them until they are durable, so the shell reports them durable
//! at once (see `store.rs`).
//!
//! Sockets use the WebSocket Hibernation API. The object may be evicted between
//! any two events; the core is rebuilt lazily from SQLite, and every socket that
//! is still open is re-registered from its attachment (who is on it).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};

use protocol::{
    ConnId, ConnMemo, ServerConfig, ServerFrame, ServerInput, ServerOutput, ServerWrite, MAX_SEQ,
};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, wasm_bindgen, Date, DurableObject, Env, Request, Response, Result, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use crate::http::{error_response, json_response};
use crate::names::validate_name;
use crate::store::Store;

/// Optional Worker variables overriding the core's defaults, for load and
/// limit tests (docs/PROTOCOL.md, "Limits"). Each is a positive integer.
#[derive(Debug, Clone, Copy, Default)]
struct Overrides {
    /// `ACKLINE_RATE_PER_SEC`: frames per second per connection (burst twice that).
    rate_per_sec: Option<u64>,
    /// `ACKLINE_STALL_TIMEOUT_MS`: how long unread answers may block a connection.
    stall_timeout: Option<u64>,
    /// `ACKLINE_DEVICE_RETENTION_MS`: devices not seen this long are forgotten.
    device_retention: Option<u64>,
    /// `ACKLINE_RTO_MS`: first push retransmission timeout (the cap is 30 times it).
    rto_initial: Option<u64>,
}

impl Overrides {
    fn from_env(env: &Env) -> Overrides {
        let var = |name: &str| {
            env.var(name)
                .ok()
                .and_then(|v| v.to_string().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        Overrides {
            rate_per_sec: var("ACKLINE_RATE_PER_SEC"),
            stall_timeout: var("ACKLINE_STALL_TIMEOUT_MS"),
            device_retention: var("ACKLINE_DEVICE_RETENTION_MS"),
            rto_initial: var("ACKLINE_RTO_MS"),
        }
    }

    fn apply(&self, config: &mut ServerConfig) {
        if let Some(rate) = self.rate_per_sec {
            config.rate_per_sec = rate;
            config.rate_burst = rate.saturating_mul(2);
        }
        if let Some(t) = self.stall_timeout {
            config.stall_timeout = t;
        }
        if let Some(t) = self.device_retention {
            config.device_retention = t;
        }
        if let Some(t) = self.rto_initial {
            config.rto_initial = t;
            config.rto_max = t.saturating_mul(30);
        }
    }
}

/// Who is on a socket and what its limits need to remember; survives
/// hibernation as the socket's attachment (workerd allows 2 KiB; this is
/// well under: ids are at most 64 bytes).
#[derive(Serialize, Deserialize)]
struct Peer {
    conn: u64,
    user: String,
    device: String,
    /// When the token expires, plus the clock leeway (epoch ms).
    #[serde(default)]
    expires: Option<u64>,
    /// The core's memo for this connection (strikes, retries, unread answers).
    #[serde(default)]
    memo: ConnMemo,
}

/// The frames of one event, per connection, in the order the core sent them.
#[derive(Default)]
struct Outgoing(BTreeMap<ConnId, Vec<String>>);

impl Outgoing {
    fn push(&mut self, conn: ConnId, frame: String) {
        self.0.entry(conn).or_default().push(frame);
    }

    fn take(&mut self, conn: ConnId) -> Vec<String> {
        self.0.remove(&conn).unwrap_or_default()
    }
}

#[durable_object]
pub struct Conversation {
    state: State,
    /// Tunables set by Worker variables.
    overrides: Overrides,
    /// Whether the test-only routes are on (`ACKLINE_TEST_ROUTES=1`).
    test_routes: bool,
    store: Option<Store>,
    /// The core; `None` until first needed after a (re)start or a storage error.
    core: RefCell<Option<protocol::Conversation>>,
    /// Open sockets by connection id (rebuilt with the core).
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    /// The alarm time last armed, to skip redundant `set_alarm` calls.
    armed: Cell<Option<u64>>,
}

/// What edge-worker/entry.mjs passes instead of a message too large to be a
/// frame (it is never copied into wasm), followed by its size in decimal.
const OVERSIZED_MARKER: &str = "\u{0}frame_too_large:";

/// The size announced by an [`OVERSIZED_MARKER`] message, if `text` is one.
fn oversized_len(text: &str) -> Option<usize> {
    text.strip_prefix(OVERSIZED_MARKER)?.parse().ok()
}

fn now_millis() -> u64 {
    Date::now().as_millis()
}

/// One JSON line per notable event.
pub(crate) fn log_event(event: &str, fields: serde_json::Value) {
    let mut line = serde_json::Map::new();
    line.insert("event".into(), event.into());
    if let serde_json::Value::Object(fields) = fields {
        line.extend(fields);
    }
    worker::console_log!("{}", serde_json::Value::Object(line));
}

impl DurableObject for Conversation {
    fn new(state: State, env: Env) -> Self {
        let store = match Store::open(&state.storage(), now_millis()) {
            Ok(store) => Some(store),
            Err(e) => {
                // Every request then answers 503 instead of panicking.
                log_event(
                    "storage_error",
                    serde_json::json!({ "error": e.to_string() }),
                );
                None
            }
        };
        Self {
            state,
            test_routes: crate::store_suite::enabled(&env),
            overrides: Overrides::from_env(&env),
            store,
            core: RefCell::new(None),
            sockets: RefCell::new(HashMap::new()),
            armed: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if self.test_routes && req.path() == crate::store_suite::OBJECT_PATH {
            return crate::store_suite::serve(&self.state, &req.url()?).await;
        }
        let Some(store) = &self.store else {
            return error_response(
                503,
                "storage_unavailable",
                "conversation storage failed to open",
            );
        };
        let url = req.url()?;
        let segments: Vec<String> = url
            .path_segments()
            .map(|s| s.map(str::to_owned).collect())
            .unwrap_or_default();
        let (Some(conversation), Some(action)) = (segments.get(2), segments.get(3)) else {
            return error_response(404, "not_found", "no such route");
        };
        store.remember_conversation(conversation)?;
        match action.as_str() {
            "connect" => self.accept_socket(&req).await,
            "messages" => crate::history::page(store, &url),
            "stats" => self.stats(),
            _ => error_response(404, "not_found", "no such route"),
        }
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(peer) = ws.deserialize_attachment::<Peer>()? else {
            let _ = ws.close(Some(1011), Some("socket has no identity"));
            return Ok(());
        };
        let conn = ConnId(peer.conn);
        let input = match message {
            WebSocketIncomingMessage::String(text) => match oversized_len(&text) {
                Some(len) => ServerInput::Oversized { conn, len },
                None => ServerInput::Frame {
                    conn,
                    bytes: text.into_bytes(),
                },
            },
            WebSocketIncomingMessage::Binary(_) => ServerInput::Binary { conn },
        };
        self.run(input).await
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _clean: bool,
    ) -> Result<()> {
        // 1005/1006/1015 are reserved for reporting and may not be sent back.
        let code = match code {
            1005 | 1006 | 1015 => 1000,
            c => u16::try_from(c).unwrap_or(1000),
        };
        // The peer may already be gone; nothing to do if answering fails.
        let _ = ws.close(Some(code), Some("closing"));
        self.socket_gone(&ws).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        log_event(
            "socket_error",
            serde_json::json!({ "error": error.to_string() }),
        );
        self.socket_gone(&ws).await
    }

    async fn alarm(&self) -> Result<Response> {
        self.armed.set(None);
        self.run(ServerInput::Timeout).await?;
        Response::ok("")
    }
}

impl Conversation {
    async fn accept_socket(&self, req: &Request) -> Result<Response> {
        if req.headers().get("Upgrade")?.as_deref() != Some("websocket") {
            return error_response(426, "upgrade_required", "expected Upgrade: websocket");
        }
        // Set by the Worker after it verified the token; never taken from the client.
        let header = |name: &str| req.headers().get(name).ok().flatten().unwrap_or_default();
        let (user, device) = (header(crate::USER_HEADER), header(crate::DEVICE_HEADER));
        // The socket is closed when its token expires (the client reconnects
        // with a fresh one); the same leeway as for accepting the token.
        let expires = header(crate::TOKEN_EXP_HEADER)
            .parse::<u64>()
            .ok()
            .map(|exp| {
                exp.saturating_add(crate::auth::CLOCK_LEEWAY_SECS)
                    .saturating_mul(1000)
            });
        for (kind, value) in [("user", &user), ("device", &device)] {
            if let Err(reason) = validate_name(kind, value) {
                return error_response(400, "bad_request", &reason);
            }
        }
        let Some(store) = &self.store else {
            return error_response(
                503,
                "storage_unavailable",
                "conversation storage failed to open",
            );
        };
        // Rebuild the core (and re-register surviving sockets) before the new
        // socket exists, so that it is not mistaken for a resumed one.
        self.ensure_core()?;
        let conn = ConnId(store.next_conn_id()?);
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(Peer {
            conn: conn.0,
            user: user.clone(),
            device: device.clone(),
            expires,
            memo: ConnMemo::default(),
        })?;
        self.sockets.borrow_mut().insert(conn, pair.server);
        log_event(
            "connect",
            serde_json::json!({ "conn": conn.0, "user": user, "device": device }),
        );
        self.run(ServerInput::Connected {
            conn,
            user,
            device,
            resumed: None,
            expires,
        })
        .await?;
        Response::from_websocket(pair.client)
    }

    fn stats(&self) -> Result<Response> {
        self.ensure_core()?;
        let core = self.core.borrow();
        let Some(core) = core.as_ref() else {
            return error_response(
                503,
                "storage_unavailable",
                "conversation could not be loaded",
            );
        };
        let s = core.stats();
        json_response(
            200,
            &serde_json::json!({
                "head": s.durable_head,
                "connections": s.connections,
                "devices": s.devices,
                "members": s.members,
                "pending": s.pending_pushes,
            }),
        )
    }

    async fn socket_gone(&self, ws: &WebSocket) -> Result<()> {
        let Some(peer) = ws.deserialize_attachment::<Peer>()? else {
            return Ok(());
        };
        let conn = ConnId(peer.conn);
        if self.sockets.borrow_mut().remove(&conn).is_none() && self.core.borrow().is_none() {
            return Ok(());
        }
        self.run(ServerInput::Disconnected { conn }).await
    }

    /// Builds the core from storage if it is not there, and re-registers every
    /// socket that survived an eviction.
    fn ensure_core(&self) -> Result<()> {
        if self.core.borrow().is_some() {
            return Ok(());
        }
        let Some(store) = &self.store else {
            return Err(worker::Error::from("conversation storage failed to open"));
        };
        let conversation = store.conversation()?.unwrap_or_default();
        let seed = now_millis() ^ (worker::js_sys::Math::random() * (MAX_SEQ as f64)) as u64;
        let mut config = ServerConfig::new(conversation);
        self.overrides.apply(&mut config);
        let now = now_millis();
        let mut core = protocol::Conversation::new(config, seed, now, store)
            .map_err(|e| worker::Error::from(e.to_string()))?;
        let mut sockets = HashMap::new();
        for ws in self.state.get_websockets() {
            let Ok(Some(peer)) = ws.deserialize_attachment::<Peer>() else {
                continue;
            };
            let conn = ConnId(peer.conn);
            sockets.insert(conn, ws);
            core.handle(
                now,
                ServerInput::Connected {
                    conn,
                    user: peer.user,
                    device: peer.device,
                    resumed: Some(peer.memo),
                    expires: peer.expires,
                },
                store,
            );
        }
        // Tells operators (and tests) that the object was evicted and rebuilt.
        log_event(
            "core_start",
            serde_json::json!({ "sockets": sockets.len(), "devices": core.stats().devices }),
        );
        *self.sockets.borrow_mut() = sockets;
        *self.core.borrow_mut() = Some(core);
        // Outputs of the re-registration (pushes from cursors) go out with the
        // next drain.
        Ok(())
    }

    /// Feeds one input to the core, carries out its outputs, re-arms the alarm.
    async fn run(&self, input: ServerInput) -> Result<()> {
        self.ensure_core()?;
        let now = now_millis();
        let is_timeout = matches!(input, ServerInput::Timeout);
        let next_deadline = {
            let mut core_slot = self.core.borrow_mut();
            let Some(core) = core_slot.as_mut() else {
                return Ok(());
            };
            let Some(store) = &self.store else {
                return Ok(());
            };
            core.handle(now, input, store);
            match self.drain(core, store, now, is_timeout) {
                Ok(()) => core.poll_timeout(),
                Err(e) => {
                    // A failed write leaves the core ahead of storage: forget the
                    // core and every socket; clients reconnect and resend, and the
                    // core is rebuilt from what storage really holds.
                    log_event(
                        "storage_error",
                        serde_json::json!({ "error": e.to_string() }),
                    );
                    *core_slot = None;
                    for (_, ws) in self.sockets.borrow_mut().drain() {
                        let _ = ws.close(Some(1011), Some("storage error; reconnect"));
                    }
                    None
                }
            }
        };
        self.arm(next_deadline, now).await
    }

    /// Carries out outputs until the core has nothing more to say; the writes
    /// of each round are committed as one batch (all or nothing) and then
    /// reported durable. The frames for one connection are held until the
    /// event is handled and then go out together, as bundles where the
    /// client reads them (fewer, larger messages). Frames may go out before
    /// the commit: the core never sends one that depends on a write before it
    /// is durable, and the output gate holds them until the commit is anyway.
    fn drain(
        &self,
        core: &mut protocol::Conversation,
        store: &Store,
        now: u64,
        is_timeout: bool,
    ) -> Result<()> {
        let mut outgoing = Outgoing::default();
        loop {
            let mut last_write = None;
            let mut batch: Vec<ServerWrite> = Vec::new();
            while let Some(output) = core.poll_output() {
                match output {
                    ServerOutput::Frame { conn, frame } => {
                        outgoing.push(conn, self.encode(conn, &frame, is_timeout))
                    }
                    ServerOutput::Persist { write, op } => {
                        batch.push(op);
                        last_write = Some(write);
                    }
                    ServerOutput::Close { conn, code, reason } => {
                        // What the core sent before the close goes first.
                        self.transmit(core, conn, outgoing.take(conn));
                        log_event(
                            "close",
                            serde_json::json!({ "conn": conn.0, "code": code, "reason": reason }),
                        );
                        if let Some(ws) = self.sockets.borrow_mut().remove(&conn) {
                            let _ = ws.close(Some(code), Some(reason));
                        }
                    }
                    ServerOutput::Remember { conn, memo } => self.remember(conn, memo),
                }
            }
            store
                .commit(&batch)
                .map_err(|e| worker::Error::from(e.to_string()))?;
            match last_write {
                Some(through) => core.handle(now, ServerInput::Durable { through }, store),
                None => break,
            }
        }
        for (conn, frames) in outgoing.0 {
            self.transmit(core, conn, frames);
        }
        Ok(())
    }

    /// Sends a connection's frames, in order: bundled where its client reads
    /// bundles, else one message each.
    fn transmit(&self, core: &protocol::Conversation, conn: ConnId, frames: Vec<String>) {
        if frames.is_empty() {
            return;
        }
        let sockets = self.sockets.borrow();
        let Some(ws) = sockets.get(&conn) else { return };
        let messages = if core.accepts_bundles(conn) {
            protocol::pack_bundles(frames, protocol::limits::MAX_SERVER_FRAME_BYTES)
        } else {
            frames
        };
        for text in messages {
            // A socket that is closing cannot take frames; the core learns it is
            // gone from websocket_close, and the client resyncs on reconnect.
            let _ = ws.send_with_str(text);
        }
    }

    /// Keeps the core's memo in the socket's attachment, so that the limits
    /// it carries survive an eviction.
    fn remember(&self, conn: ConnId, memo: ConnMemo) {
        let sockets = self.sockets.borrow();
        let Some(ws) = sockets.get(&conn) else { return };
        if let Ok(Some(mut peer)) = ws.deserialize_attachment::<Peer>() {
            peer.memo = memo;
            if let Err(e) = ws.serialize_attachment(peer) {
                log_event(
                    "attachment_error",
                    serde_json::json!({ "conn": conn.0, "error": e.to_string() }),
                );
            }
        }
    }

    /// Logs what operators want to see of a frame, and encodes it.
    fn encode(&self, conn: ConnId, frame: &ServerFrame, is_timeout: bool) -> String {
        match frame {
            ServerFrame::Error { code, message, .. } => log_event(
                "frame_error",
                serde_json::json!({ "conn": conn.0, "code": code.as_str(), "message": message }),
            ),
            ServerFrame::Batch { messages, head, .. } => log_event(
                "gap_fill",
                serde_json::json!({ "conn": conn.0, "count": messages.len(), "head": head }),
            ),
            ServerFrame::Push { messages } if is_timeout => log_event(
                "resend",
                serde_json::json!({ "conn": conn.0, "count": messages.len() }),
            ),
            _ => {}
        }
        frame.encode()
    }

    async fn arm(&self, deadline: Option<u64>, now: u64) -> Result<()> {
        let Some(deadline) = deadline else {
            return Ok(());
        };
        if self.armed.get().is_some_and(|armed| armed <= deadline) {
            return Ok(());
        }
        self.armed.set(Some(deadline));
        let offset = i64::try_from(deadline.saturating_sub(now)).unwrap_or(i64::MAX);
        self.state.storage().set_alarm(offset).await
    }
}
