//! Ackline browser client (walking skeleton): a WebSocket connection to one
//! conversation that sends messages and resolves each `send` when the server has
//! stored it and answered with its sequence number.

pub mod store;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use js_sys::{Function, Promise};
use protocol::{ClientFrame, ServerFrame};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{MessageEvent, WebSocket};

type Settle = (Function, Function);

/// A live connection to one conversation.
#[wasm_bindgen]
pub struct Connection {
    ws: WebSocket,
    pending: Rc<RefCell<HashMap<String, Settle>>>,
    // Keeps the message handler alive as long as the connection.
    _on_message: Closure<dyn FnMut(MessageEvent)>,
}

/// The error a JS caller sees: an `Error` with a stable `code`.
fn js_error(code: &str, message: &str) -> JsValue {
    let err = js_sys::Error::new(message);
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&err, &"code".into(), &code.into());
    err.into()
}

fn to_js<T: serde::Serialize>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}

/// What `send` resolves with.
#[derive(serde::Serialize)]
struct SendResult<'a> {
    id: &'a str,
    seq: u64,
    at: u64,
}

fn random_id() -> String {
    let now = js_sys::Date::now() as u64;
    let rand = (js_sys::Math::random() * 4294967296.0) as u64;
    format!("{now:012x}{rand:08x}")
}

#[wasm_bindgen]
impl Connection {
    /// Opens a WebSocket to `url`, says hello and resolves once the server
    /// welcomed it. `on_frame` receives every server frame as a plain object.
    pub async fn open(url: String, on_frame: Function) -> Result<Connection, JsValue> {
        let ws = WebSocket::new(&url).map_err(|_| js_error("bad_url", "cannot open WebSocket"))?;
        let pending: Rc<RefCell<HashMap<String, Settle>>> = Rc::default();
        // Settled by the first `welcome` (resolve) or a socket error (reject).
        let welcome: Rc<RefCell<Option<Settle>>> = Rc::default();
        let welcomed = Promise::new(&mut |resolve, reject| {
            *welcome.borrow_mut() = Some((resolve, reject));
        });
        let on_open = {
            let ws = ws.clone();
            Closure::once_into_js(move || {
                let _ = ws.send_with_str(&ClientFrame::Hello { after: None, chain: None }.encode());
            })
        };
        ws.set_onopen(Some(on_open.unchecked_ref()));
        let on_error = {
            let welcome = welcome.clone();
            Closure::once_into_js(move || {
                if let Some((_, reject)) = welcome.borrow_mut().take() {
                    let _ = reject.call1(&JsValue::NULL, &js_error("connect_failed", "WebSocket failed"));
                }
            })
        };
        ws.set_onerror(Some(on_error.unchecked_ref()));
        let on_message = {
            let pending = pending.clone();
            Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
                let Some(text) = event.data().as_string() else { return };
                let frame = match ServerFrame::decode(text.as_bytes()) {
                    Ok(frame) => frame,
                    Err(e) => {
                        web_sys::console::warn_1(&format!("ackline: bad server frame: {e}").into());
                        return;
                    }
                };
                match &frame {
                    ServerFrame::Welcome { .. } => {
                        if let Some((resolve, _)) = welcome.borrow_mut().take() {
                            let _ = resolve.call1(&JsValue::NULL, &to_js(&frame));
                        }
                    }
                    ServerFrame::Sent { id, seq, at } => {
                        if let Some((resolve, _)) = pending.borrow_mut().remove(id) {
                            let result = to_js(&SendResult { id, seq: *seq, at: *at });
                            let _ = resolve.call1(&JsValue::NULL, &result);
                        }
                    }
                    ServerFrame::Error { id: Some(id), code, message } => {
                        if let Some((_, reject)) = pending.borrow_mut().remove(id) {
                            let _ = reject.call1(&JsValue::NULL, &js_error(code.as_str(), message));
                        }
                    }
                    _ => {}
                }
                let _ = on_frame.call1(&JsValue::NULL, &to_js(&frame));
            })
        };
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        wasm_bindgen_futures::JsFuture::from(welcomed).await?;
        Ok(Connection {
            ws,
            pending,
            _on_message: on_message,
        })
    }

    /// Sends `body`; resolves with `{ id, seq, at }` once the server stored it.
    pub fn send(&self, body: String) -> Promise {
        let id = random_id();
        let frame = ClientFrame::Send { id: id.clone(), body }.encode();
        let pending = self.pending.clone();
        let ws = self.ws.clone();
        Promise::new(&mut |resolve, reject| {
            if ws.send_with_str(&frame).is_err() {
                let _ = reject.call1(&JsValue::NULL, &js_error("not_connected", "socket is not open"));
                return;
            }
            pending.borrow_mut().insert(id.clone(), (resolve, reject));
        })
    }

    /// Sends raw text, for demonstrating how the server answers bad input.
    #[wasm_bindgen(js_name = sendRaw)]
    pub fn send_raw(&self, text: String) -> Result<(), JsValue> {
        self.ws
            .send_with_str(&text)
            .map_err(|_| js_error("not_connected", "socket is not open"))
    }

    /// Closes the connection.
    pub fn close(&self) {
        let _ = self.ws.close();
    }
}

/// The protocol version this client speaks.
#[wasm_bindgen(js_name = protocolVersion)]
pub fn protocol_version() -> u32 {
    protocol::PROTOCOL_VERSION
}
