//! Ackline edge: the Worker entry point and the `Conversation` Durable Object.
//!
//! The Worker authenticates every request (JWT HS256, see `auth.rs`) before it
//! reaches a Durable Object, then forwards it to the one object that owns the
//! conversation, with the verified identity in `x-ackline-*` headers. That object
//! is the conversation's single writer (see `conversation.rs`). A refused token
//! gets a JSON 401/403 over plain HTTP; on a WebSocket upgrade the Worker accepts
//! the socket itself and closes it at once (4401/4403/1011, reason the error
//! code), since a browser never sees the status of a failed handshake.

mod auth;
mod conversation;
mod history;
mod http;
mod names;
mod store;
mod store_suite;

pub use conversation::Conversation;

use protocol::server::close;
use serde::Deserialize;
use worker::{event, Context, Date, Env, Method, Request, Response, Result, WebSocketPair};

use crate::auth::{AuthError, Claims};
use crate::http::{error_response, json_response};

/// Name of the Durable Object binding in wrangler.toml.
const CONVERSATIONS_BINDING: &str = "CONVERSATIONS";
/// Secret (or local var) holding the JWT signing key.
const SECRET_BINDING: &str = "ACKLINE_JWT_SECRET";
/// Local var that enables the dev-only token endpoint when set to "1".
const DEV_TOKENS_BINDING: &str = "ACKLINE_DEV_TOKENS";
/// Headers through which the Worker tells the Durable Object who is connecting.
pub(crate) const USER_HEADER: &str = "x-ackline-user";
pub(crate) const DEVICE_HEADER: &str = "x-ackline-device";
/// The verified token's `exp` (Unix seconds, integer), so the Durable Object can
/// end the connection when the token runs out.
pub(crate) const TOKEN_EXP_HEADER: &str = "x-ackline-token-exp";
/// Close code of a WebSocket refused because the edge is misconfigured
/// (RFC 6455 1011, "internal error"; the Durable Object uses it too).
const SERVER_ERROR_CLOSE: u16 = 1011;
/// Lifetime of dev tokens.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let segments: Vec<String> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = req.method();
    match (segments.as_slice(), method) {
        (["healthz"], Method::Get) => json_response(200, &serde_json::json!({ "ok": true })),
        (["v1", "conversations", id, "connect" | "messages" | "stats"], Method::Get) => {
            let id = (*id).to_owned();
            forward_to_conversation(req, &env, &id).await
        }
        (["v1", "dev", "token"], Method::Post) if dev_tokens_enabled(&env) => {
            mint_dev_token(req, &env).await
        }
        // Test-only (ACKLINE_TEST_ROUTES=1): the server store suite on real SQLite.
        (["v1", "test", "server-store-suite"], Method::Post) if store_suite::enabled(&env) => {
            store_suite::run(req, &env).await
        }
        (["healthz"] | ["v1", "conversations", _, "connect" | "messages" | "stats"], _) => {
            error_response(405, "method_not_allowed", "this route only answers GET")
        }
        (["v1", "dev", "token"], _) if dev_tokens_enabled(&env) => {
            error_response(405, "method_not_allowed", "this route only answers POST")
        }
        _ => error_response(404, "not_found", "no such route"),
    }
}

fn now_secs() -> u64 {
    Date::now().as_millis() / 1000
}

fn secret(env: &Env) -> Vec<u8> {
    env.secret(SECRET_BINDING)
        .map(|s| s.to_string())
        .or_else(|_| env.var(SECRET_BINDING).map(|v| v.to_string()))
        .unwrap_or_default()
        .into_bytes()
}

fn dev_tokens_enabled(env: &Env) -> bool {
    env.var(DEV_TOKENS_BINDING)
        .map(|v| v.to_string() == "1")
        .unwrap_or(false)
}

/// The bearer token: `Authorization: Bearer` header, or the `access_token` query
/// parameter (browsers cannot set headers on a WebSocket).
fn bearer_token(req: &Request) -> Result<Option<String>> {
    if let Some(value) = req.headers().get("Authorization")? {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return Ok(Some(token.trim().to_owned()));
        }
    }
    Ok(req
        .url()?
        .query_pairs()
        .find(|(k, v)| k == "access_token" && !v.is_empty())
        .map(|(_, v)| v.into_owned()))
}

fn authenticate(
    req: &Request,
    env: &Env,
    conversation: &str,
) -> Result<std::result::Result<Claims, AuthError>> {
    let Some(token) = bearer_token(req)? else {
        return Ok(Err(AuthError::Missing));
    };
    Ok(auth::verify(&token, &secret(env), now_secs())
        .and_then(|claims| auth::authorize(&claims, conversation).map(|()| claims)))
}

async fn forward_to_conversation(req: Request, env: &Env, id: &str) -> Result<Response> {
    if let Err(reason) = names::validate_conversation_id(id) {
        return error_response(400, "bad_conversation_id", &reason);
    }
    let claims = match authenticate(&req, env, id)? {
        Ok(claims) => claims,
        Err(err) => {
            log_auth_failure(id, &err);
            if is_websocket_upgrade(&req) {
                return refuse_upgrade(&err);
            }
            return error_response(err.status(), err.code(), &err.to_string());
        }
    };
    // A fresh mutable copy: client-supplied x-ackline-* headers are overwritten.
    let mut forwarded = req.clone_mut()?;
    let headers = forwarded.headers_mut()?;
    for (name, value) in identity_headers(&claims) {
        headers.set(name, &value)?;
    }
    let stub = env
        .durable_object(CONVERSATIONS_BINDING)?
        .id_from_name(id)?
        .get_stub()?;
    stub.fetch_with_request(forwarded).await
}

/// Whether the request asks for a WebSocket (`Upgrade: websocket`, any case).
fn is_websocket_upgrade(req: &Request) -> bool {
    req.headers()
        .get("Upgrade")
        .ok()
        .flatten()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// The close code and reason that refuse a WebSocket for `err`: a browser sees
/// only 1006 for an HTTP error answer to its upgrade, but it sees these.
/// 4401 for a token to fetch again, 4403 for a conversation outside the
/// token, 1011 while the edge is misconfigured; the reason is the error code.
fn refusal_close(err: &AuthError) -> (u16, &'static str) {
    let code = match err.status() {
        403 => close::FORBIDDEN,
        401 => close::UNAUTHORIZED,
        _ => SERVER_ERROR_CLOSE,
    };
    (code, err.code())
}

/// Accepts the upgrade in the Worker and closes the socket at once with
/// [`refusal_close`]'s code and reason; no Durable Object is reached.
fn refuse_upgrade(err: &AuthError) -> Result<Response> {
    let (code, reason) = refusal_close(err);
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    pair.server.close(Some(code), Some(reason))?;
    Response::from_websocket(pair.client)
}

/// The `x-ackline-*` headers that carry a verified token to the Durable Object.
fn identity_headers(claims: &Claims) -> [(&'static str, String); 3] {
    [
        (USER_HEADER, claims.sub.clone()),
        (DEVICE_HEADER, claims.device.clone()),
        (TOKEN_EXP_HEADER, claims.exp.to_string()),
    ]
}

fn log_auth_failure(conversation: &str, err: &AuthError) {
    if err.status() == 500 {
        log_config_error(err);
        return;
    }
    worker::console_log!(
        "{}",
        serde_json::json!({
            "event": "auth_failure",
            "conversation": conversation,
            "code": err.code(),
            "reason": err.to_string(),
        })
    );
}

/// The edge cannot authenticate anyone until its configuration is fixed.
fn log_config_error(err: &AuthError) {
    worker::console_log!(
        "{}",
        serde_json::json!({
            "event": "config_error",
            "code": err.code(),
            "reason": err.to_string(),
        })
    );
}

#[derive(Deserialize)]
struct DevTokenRequest {
    user: String,
    device: String,
    conversations: Vec<String>,
}

/// Dev-only: mints a token for any user. Exists only when ACKLINE_DEV_TOKENS=1.
async fn mint_dev_token(mut req: Request, env: &Env) -> Result<Response> {
    let body: DevTokenRequest = match req.json().await {
        Ok(body) => body,
        Err(e) => {
            return error_response(
                400,
                "bad_request",
                &format!("expected {{\"user\",\"device\",\"conversations\"}}: {e}"),
            )
        }
    };
    let checks = std::iter::once(names::validate_name("user", &body.user))
        .chain(std::iter::once(names::validate_name(
            "device",
            &body.device,
        )))
        .chain(
            body.conversations
                .iter()
                .map(|c| names::validate_conversation_id(c)),
        );
    for check in checks {
        if let Err(reason) = check {
            return error_response(400, "bad_request", &reason);
        }
    }
    let secret = secret(env);
    if let Err(err) = auth::check_secret(&secret) {
        log_config_error(&err);
        return error_response(err.status(), err.code(), &err.to_string());
    }
    let claims = Claims {
        sub: body.user,
        device: body.device,
        exp: now_secs() + DEV_TOKEN_TTL_SECS,
        nbf: None,
        conversations: body.conversations,
    };
    json_response(
        200,
        &serde_json::json!({ "token": auth::mint(&claims, &secret), "exp": claims.exp }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Rule: the verified identity and expiry reach the Durable Object.
    #[test]
    fn identity_headers_carry_user_device_and_expiry() {
        let claims = Claims {
            sub: "ann".into(),
            device: "ann-laptop".into(),
            exp: 1_900_000_000,
            nbf: Some(5),
            conversations: vec!["room".into()],
        };
        assert_eq!(
            identity_headers(&claims),
            [
                ("x-ackline-user", "ann".to_owned()),
                ("x-ackline-device", "ann-laptop".to_owned()),
                ("x-ackline-token-exp", "1900000000".to_owned()),
            ]
        );
        assert_eq!(TOKEN_EXP_HEADER, "x-ackline-token-exp");
    }

    // Rule: a refused upgrade closes with 4401/4403/1011 and the error code.
    #[test]
    fn refused_upgrades_close_with_auth_codes() {
        let cases = [
            (AuthError::Missing, 4401, "token_missing"),
            (AuthError::Malformed("x".into()), 4401, "token_malformed"),
            (
                AuthError::UnsupportedAlgorithm("none".into()),
                4401,
                "token_algorithm",
            ),
            (AuthError::BadSignature, 4401, "token_signature"),
            (AuthError::Expired { exp: 1, now: 2 }, 4401, "token_expired"),
            (
                AuthError::NotYetValid { nbf: 9, now: 2 },
                4401,
                "token_not_yet_valid",
            ),
            (
                AuthError::NotMember("room".into()),
                4403,
                "forbidden_conversation",
            ),
            (AuthError::NoSecret, 1011, "server_misconfigured"),
            (AuthError::ShortSecret(5), 1011, "server_misconfigured"),
        ];
        for (err, code, reason) in cases {
            assert_eq!(refusal_close(&err), (code, reason), "{err}");
        }
    }
}
