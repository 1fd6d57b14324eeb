//! The `Conversation` Durable Object: one per conversation, the single writer
//! that assigns sequence numbers and stores messages in its SQLite storage.
//!
//! Sockets use the WebSocket Hibernation API, so the object may be evicted
//! between frames; everything it needs is read back from SQLite and from the
//! socket's attachment on every wake.

use protocol::{ChainHash, ClientFrame, ErrorCode, Seq, ServerFrame};
use serde::{Deserialize, Serialize};
use worker::{
    durable_object, wasm_bindgen, Date, DurableObject, Env, Request, Response, Result,
    SqlStorage, SqlStorageValue, State, WebSocket, WebSocketIncomingMessage, WebSocketPair,
};

use crate::http::error_response;
use crate::names::validate_name;

/// Who is on a socket; survives hibernation as the socket's attachment.
#[derive(Serialize, Deserialize)]
struct Peer {
    conversation: String,
    user: String,
    device: String,
}

#[durable_object]
pub struct Conversation {
    state: State,
    sql: SqlStorage,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq       INTEGER PRIMARY KEY,
    user      TEXT NOT NULL,
    device    TEXT NOT NULL,
    client_id TEXT NOT NULL,
    body      TEXT NOT NULL,
    at        INTEGER NOT NULL,
    chain     TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_idempotency ON messages (device, client_id);
";

#[derive(Deserialize)]
struct MessageRow {
    seq: Seq,
    at: u64,
    chain: String,
}

impl DurableObject for Conversation {
    fn new(state: State, _env: Env) -> Self {
        let sql = state.storage().sql();
        if let Err(e) = sql.exec(SCHEMA, None) {
            // Without a schema every later statement fails with a clear error;
            // log rather than panic (a panic would kill the whole instance).
            worker::console_error!("{{\"event\":\"schema_error\",\"error\":{:?}}}", e.to_string());
        }
        Self { state, sql }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        if req.headers().get("Upgrade")?.as_deref() != Some("websocket") {
            return error_response(426, "upgrade_required", "expected Upgrade: websocket");
        }
        let url = req.url()?;
        let conversation = url
            .path_segments()
            .and_then(|mut s| s.nth(2))
            .unwrap_or_default()
            .to_owned();
        // Set by the Worker after it verified the token; never taken from the client.
        let header = |name: &str| req.headers().get(name).ok().flatten().unwrap_or_default();
        let (user, device) = (header(crate::USER_HEADER), header(crate::DEVICE_HEADER));
        for (kind, value) in [("user", &user), ("device", &device)] {
            if let Err(reason) = validate_name(kind, value) {
                return error_response(400, "bad_request", &reason);
            }
        }
        let pair = WebSocketPair::new()?;
        self.state.accept_web_socket(&pair.server);
        pair.server.serialize_attachment(Peer {
            conversation,
            user,
            device,
        })?;
        log_event("connect", &[]);
        Response::from_websocket(pair.client)
    }

    async fn websocket_message(&self, ws: WebSocket, message: WebSocketIncomingMessage) -> Result<()> {
        let text = match message {
            WebSocketIncomingMessage::String(text) => text,
            WebSocketIncomingMessage::Binary(_) => {
                return send_frame(&ws, &error_frame(ErrorCode::BadJson, "frames are JSON text, not binary"));
            }
        };
        let frame = match ClientFrame::decode(text.as_bytes()) {
            Ok(frame) => frame,
            Err(err) => return send_frame(&ws, &ServerFrame::from_decode_error(&err)),
        };
        let Some(peer) = ws.deserialize_attachment::<Peer>()? else {
            return send_frame(&ws, &error_frame(ErrorCode::Internal, "socket has no identity"));
        };
        match frame {
            ClientFrame::Hello { .. } => {
                let (head, chain) = self.head()?;
                send_frame(
                    &ws,
                    &ServerFrame::Welcome {
                        conversation: peer.conversation,
                        user: peer.user,
                        device: peer.device,
                        head,
                        chain,
                        cursors: Vec::new(),
                        now: now_millis(),
                    },
                )
            }
            ClientFrame::Send { id, body } => {
                let reply = match self.store(&peer, &id, &body) {
                    Ok((seq, at)) => ServerFrame::Sent { id, seq, at },
                    Err(e) => ServerFrame::Error {
                        code: ErrorCode::Internal,
                        message: format!("could not store the message: {e}"),
                        id: Some(id),
                    },
                };
                send_frame(&ws, &reply)
            }
            ClientFrame::Ping { nonce } => send_frame(&ws, &ServerFrame::Pong { nonce }),
            ClientFrame::Ack { .. } | ClientFrame::Sync { .. } | ClientFrame::Read { .. } => Ok(()),
        }
    }

    async fn websocket_close(&self, ws: WebSocket, code: usize, _reason: String, _clean: bool) -> Result<()> {
        // 1005/1006/1015 are reserved for reporting and may not be sent back.
        let code = match code {
            1005 | 1006 | 1015 => 1000,
            c => u16::try_from(c).unwrap_or(1000),
        };
        // The peer may already be gone; nothing to do if answering fails.
        let _ = ws.close(Some(code), Some("closing"));
        Ok(())
    }

    async fn websocket_error(&self, _ws: WebSocket, error: worker::Error) -> Result<()> {
        log_event("socket_error", &[("error", &error.to_string())]);
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        Response::ok("")
    }
}

impl Conversation {
    fn head(&self) -> Result<(Seq, ChainHash)> {
        let rows: Vec<MessageRow> = self
            .sql
            .exec("SELECT seq, at, chain FROM messages ORDER BY seq DESC LIMIT 1", None)?
            .to_array()?;
        Ok(match rows.first() {
            Some(row) => (row.seq, ChainHash::from_hex(&row.chain).unwrap_or_default()),
            None => (0, ChainHash::GENESIS),
        })
    }

    /// Stores a message once per (device, client id); returns its seq and time.
    /// The statements run back to back with no await, so they commit together
    /// and the output gate holds the reply until they are durable.
    fn store(&self, peer: &Peer, id: &str, body: &str) -> Result<(Seq, u64)> {
        let existing: Vec<MessageRow> = self
            .sql
            .exec(
                "SELECT seq, at, chain FROM messages WHERE device = ? AND client_id = ?",
                vec![peer.device.as_str().into(), id.into()],
            )?
            .to_array()?;
        if let Some(row) = existing.first() {
            return Ok((row.seq, row.at));
        }
        let (head, chain) = self.head()?;
        let seq = head + 1;
        let at = now_millis();
        let chain = chain.next(seq, &peer.user, &peer.device, id, body);
        self.sql.exec(
            "INSERT INTO messages (seq, user, device, client_id, body, at, chain) VALUES (?, ?, ?, ?, ?, ?, ?)",
            vec![
                sql_int(seq)?,
                peer.user.as_str().into(),
                peer.device.as_str().into(),
                id.into(),
                body.into(),
                sql_int(at)?,
                chain.to_hex().into(),
            ],
        )?;
        Ok((seq, at))
    }
}

fn sql_int(value: u64) -> Result<SqlStorageValue> {
    i64::try_from(value)
        .map_err(|_| worker::Error::from("integer out of range"))
        .and_then(SqlStorageValue::try_from_i64)
}

fn now_millis() -> u64 {
    Date::now().as_millis()
}

fn error_frame(code: ErrorCode, message: &str) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.to_owned(),
        id: None,
    }
}

fn send_frame(ws: &WebSocket, frame: &ServerFrame) -> Result<()> {
    ws.send_with_str(frame.encode())
}

/// One JSON line per notable event.
fn log_event(event: &str, fields: &[(&str, &str)]) {
    let mut line = serde_json::Map::new();
    line.insert("event".into(), event.into());
    for (k, v) in fields {
        line.insert((*k).into(), (*v).into());
    }
    worker::console_log!("{}", serde_json::Value::Object(line));
}
