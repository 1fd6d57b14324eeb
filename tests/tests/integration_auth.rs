//! Auth at the edge, against real workerd: every bad token is refused before any
//! Durable Object is reached. A WebSocket upgrade is refused in a way a browser
//! can see: the upgrade succeeds and the socket is closed at once with 4401
//! (token) or 4403 (conversation) and the error code as the reason. Plain HTTP
//! requests get 401/403 with a JSON reason.

use std::time::{Duration, Instant};

use ackline_tests::edge::{fresh_storage, mint, token_for, unix_now, Claims, Edge, TEST_SECRET};
use protocol::server::close;

/// The refusal of `token` on both paths: the close of a WebSocket to
/// `conversation`, and the JSON answer to a history request.
fn assert_refused(edge: &Edge, conversation: &str, token: &str, status: u16, code: &str) {
    let expected_close = match status {
        401 => close::UNAUTHORIZED,
        403 => close::FORBIDDEN,
        other => panic!("no close code for {other}"),
    };
    assert_eq!(
        edge.connect_refused(conversation, token),
        (expected_close, code.to_owned()),
        "WebSocket refusal of {token:?}"
    );
    let bearer = format!("Bearer {token}");
    let headers: &[(&str, &str)] = if token.is_empty() {
        &[]
    } else {
        &[("Authorization", &bearer)]
    };
    let (got, body) = edge
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            headers,
            "",
        )
        .expect("HTTP");
    assert_eq!(got, status, "{body}");
    assert!(
        body.contains(&format!("\"error\":\"{code}\"")),
        "expected {code} in {body}"
    );
}

#[test]
fn bad_tokens_are_refused_with_reasons() {
    let edge = Edge::start(&fresh_storage("auth"));
    let valid = token_for("room", "ann", "ann-laptop");
    assert_eq!(edge.accepts_token("room", &valid), Ok(()));

    assert_refused(&edge, "room", "", 401, "token_missing");
    assert_refused(&edge, "room", "not-a-jwt", 401, "token_malformed");
    let forged = mint(
        &Claims {
            sub: "ann",
            device: "d",
            exp: unix_now() + 60,
            conversations: vec!["room"],
        },
        "wrong-secret",
    );
    assert_refused(&edge, "room", &forged, 401, "token_signature");
    // Expired beyond the edge's 60 s clock leeway.
    let expired = mint(
        &Claims {
            sub: "ann",
            device: "d",
            exp: unix_now() - 3600,
            conversations: vec!["room"],
        },
        TEST_SECRET,
    );
    assert_refused(&edge, "room", &expired, 401, "token_expired");
    // Claims swapped for other ones under the old signature.
    let other = token_for("secret-room", "eve", "eve-1");
    let parts: Vec<&str> = valid.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_refused(&edge, "room", &tampered, 401, "token_signature");
    // A valid token for another conversation.
    assert_refused(&edge, "secret-room", &valid, 403, "forbidden_conversation");

    // Without the upgrade header the connect route is plain HTTP: JSON 401.
    let (status, body) = edge.http_get("/v1/conversations/room/connect").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"error\":\"token_missing\""), "{body}");

    // Every refusal is logged as one JSON line, WebSocket or not: 6 tokens
    // refused twice each, and the plain connect.
    let auth_failures = || {
        edge.log_text()
            .lines()
            .filter(|l| l.contains(r#""event":"auth_failure""#))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while auth_failures() < 13 {
        assert!(
            Instant::now() < deadline,
            "{} auth_failure lines, expected 13:\n{}",
            auth_failures(),
            edge.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn routes_answer_json_errors() {
    let edge = Edge::start(&fresh_storage("routes"));
    let (status, body) = edge.http_get("/healthz").unwrap();
    assert_eq!(
        (status, body.contains("\"ok\":true")),
        (200, true),
        "{body}"
    );
    let (status, body) = edge.http("POST", "/healthz", &[], "").unwrap();
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    let (status, body) = edge.http_get("/v1/elsewhere").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    let (status, body) = edge
        .http_get("/v1/conversations/room/messages?after=0")
        .unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = edge.http_get("/v1/conversations/bad%20id/connect").unwrap();
    assert_eq!(status, 400, "{body}");

    // The dev token endpoint (enabled for tests) mints tokens the edge accepts.
    let (status, body) = edge.dev_token("ann", "ann-web", &["room"]);
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    assert_eq!(edge.accepts_token("room", token), Ok(()));
    let (status, _) = edge.http("POST", "/v1/dev/token", &[], "{").unwrap();
    assert_eq!(status, 400);
}
