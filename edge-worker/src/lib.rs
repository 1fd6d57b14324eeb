//! Ackline edge: the Worker entry point and the `Conversation` Durable Object.
//!
//! The Worker routes requests and forwards each conversation's WebSocket to the
//! one Durable Object that owns it; that object is the conversation's single
//! writer (see `conversation.rs`).

mod conversation;
mod http;

pub use conversation::Conversation;

use worker::{event, Context, Env, Method, Request, Response, Result};

use crate::http::{error_response, json_response};

/// Name of the Durable Object binding in wrangler.toml.
const CONVERSATIONS_BINDING: &str = "CONVERSATIONS";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    match segments.as_slice() {
        ["healthz"] => match req.method() {
            Method::Get => json_response(200, &serde_json::json!({ "ok": true })),
            _ => error_response(405, "method_not_allowed", "use GET"),
        },
        ["v1", "conversations", id, "connect"] => {
            if req.method() != Method::Get {
                return error_response(405, "method_not_allowed", "use GET with Upgrade: websocket");
            }
            if let Err(reason) = http::validate_conversation_id(id) {
                return error_response(400, "bad_conversation_id", &reason);
            }
            let stub = env
                .durable_object(CONVERSATIONS_BINDING)?
                .id_from_name(id)?
                .get_stub()?;
            stub.fetch_with_request(req).await
        }
        _ => error_response(404, "not_found", "no such route"),
    }
}
