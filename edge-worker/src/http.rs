//! Small HTTP helpers shared by the Worker and the Durable Object.

use serde::Serialize;
use worker::{Response, Result};

/// A JSON response with the given status.
pub fn json_response<T: Serialize>(status: u16, body: &T) -> Result<Response> {
    Ok(Response::from_json(body)?.with_status(status))
}

/// A JSON error body `{"error": code, "message": ...}` with the given status.
pub fn error_response(status: u16, code: &str, message: &str) -> Result<Response> {
    json_response(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}
