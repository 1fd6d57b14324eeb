//! Auth at the edge, against real workerd: every bad token is refused with the
//! right status and a reason in the body, before any Durable Object is reached.

use ackline_tests::edge::{fresh_storage, mint, token_for, unix_now, Claims, Edge, TEST_SECRET};

fn refused(edge: &Edge, conversation: &str, token: &str) -> (u16, String) {
    match edge.connect_with_token(conversation, token) {
        Ok(_) => panic!("token {token:?} was accepted"),
        Err(refusal) => refusal,
    }
}

fn assert_refused(edge: &Edge, token: &str, status: u16, code: &str) {
    let (got_status, body) = refused(edge, "room", token);
    assert_eq!(got_status, status, "{body}");
    assert!(body.contains(code), "expected {code} in {body}");
}

#[test]
fn bad_tokens_are_refused_with_reasons() {
    let edge = Edge::start(&fresh_storage("auth"));
    let valid = token_for("room", "ann", "ann-laptop");
    assert!(edge.connect_with_token("room", &valid).is_ok());

    assert_refused(&edge, "", 401, "token_missing");
    assert_refused(&edge, "not-a-jwt", 401, "token_malformed");
    let forged = mint(
        &Claims { sub: "ann", device: "d", exp: unix_now() + 60, conversations: vec!["room"] },
        "wrong-secret",
    );
    assert_refused(&edge, &forged, 401, "token_signature");
    // Expired beyond the edge's 60 s clock leeway.
    let expired = mint(
        &Claims { sub: "ann", device: "d", exp: unix_now() - 3600, conversations: vec!["room"] },
        TEST_SECRET,
    );
    assert_refused(&edge, &expired, 401, "token_expired");
    // Claims swapped for other ones under the old signature.
    let other = token_for("secret-room", "eve", "eve-1");
    let parts: Vec<&str> = valid.split('.').collect();
    let other_parts: Vec<&str> = other.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], other_parts[1], parts[2]);
    assert_refused(&edge, &tampered, 401, "token_signature");
    // A valid token for another conversation.
    let (status, body) = refused(&edge, "secret-room", &valid);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("forbidden_conversation"), "{body}");
}

#[test]
fn routes_answer_json_errors() {
    let edge = Edge::start(&fresh_storage("routes"));
    let (status, body) = edge.http_get("/healthz").unwrap();
    assert_eq!((status, body.contains("\"ok\":true")), (200, true), "{body}");
    let (status, body) = edge.http("POST", "/healthz", &[], "").unwrap();
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("method_not_allowed"), "{body}");
    let (status, body) = edge.http_get("/v1/elsewhere").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not_found"), "{body}");
    let (status, body) = edge.http_get("/v1/conversations/room/messages?after=0").unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, body) = edge.http_get("/v1/conversations/bad%20id/connect").unwrap();
    assert_eq!(status, 400, "{body}");

    // The dev token endpoint (enabled for tests) mints tokens the edge accepts.
    let (status, body) = edge.dev_token("ann", "ann-web", &["room"]);
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = token["token"].as_str().unwrap();
    assert!(edge.connect_with_token("room", token).is_ok());
    let (status, _) = edge.http("POST", "/v1/dev/token", &[], "{").unwrap();
    assert_eq!(status, 400);
}
