//! Token and query hardening at the edge, against real workerd: `nbf`, the clock
//! leeway, `crit`, conversation ids inside the claims, fractional NumericDates,
//! strict history integers and a too-short secret (see docs/PROTOCOL.md,
//! "Transport and auth").
//!
//! Tokens with extra header fields or non-integer dates are minted with the
//! `jsonwebtoken` crate from raw JSON claims.

use std::time::{Duration, Instant};

use ackline_tests::edge::{fresh_storage, token_for, unix_now, Edge, TEST_SECRET};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::server::close;
use serde_json::{json, Value};

/// Ann's claims for "room", valid for an hour, with `extra` fields replaced.
fn claims(extra: Value) -> Value {
    let mut claims = json!({
        "sub": "ann",
        "device": "ann-laptop",
        "exp": unix_now() + 3600,
        "conversations": ["room"],
    });
    for (name, value) in extra.as_object().expect("an object") {
        claims[name] = value.clone();
    }
    claims
}

fn sign_with(header: &Header, claims: &Value) -> String {
    jsonwebtoken::encode(
        header,
        claims,
        &EncodingKey::from_secret(TEST_SECRET.as_bytes()),
    )
    .expect("mint a JWT")
}

fn sign(claims: &Value) -> String {
    sign_with(&Header::new(Algorithm::HS256), claims)
}

fn assert_accepted(edge: &Edge, token: &str, what: &str) {
    if let Err(why) = edge.accepts_token("room", token) {
        panic!("{what}: refused: {why}");
    }
}

/// Checks that `token` is refused for "room" on both paths: a WebSocket is
/// closed at once with the status's close code (401: 4401, 403: 4403, 500:
/// 1011) and `code` as the reason, and a history request gets `status` with
/// `code` in its JSON body, which is returned.
fn assert_refused(edge: &Edge, token: &str, status: u16, code: &str, what: &str) -> String {
    let close_code = match status {
        401 => close::UNAUTHORIZED,
        403 => close::FORBIDDEN,
        500 => 1011,
        other => panic!("{what}: no close code for {other}"),
    };
    assert_eq!(
        edge.connect_refused("room", token),
        (close_code, code.to_owned()),
        "{what}: WebSocket refusal"
    );
    let (got, body) = edge
        .http(
            "GET",
            "/v1/conversations/room/messages",
            &[("Authorization", &format!("Bearer {token}"))],
            "",
        )
        .expect("HTTP");
    assert_eq!(got, status, "{what}: {body}");
    assert!(
        body.contains(&format!("\"error\":\"{code}\"")),
        "{what}: expected {code} in {body}"
    );
    body
}

#[test]
fn token_dates_headers_and_claims_are_checked() {
    let edge = Edge::start(&fresh_storage("auth-hardening"));
    let now = unix_now();

    // nbf: refused beyond the 60 s leeway, accepted within it.
    let body = assert_refused(
        &edge,
        &sign(&claims(json!({ "nbf": now + 600 }))),
        401,
        "token_not_yet_valid",
        "nbf in 10 minutes",
    );
    assert!(body.contains("not valid before"), "{body}");
    assert_accepted(
        &edge,
        &sign(&claims(json!({ "nbf": now + 5 }))),
        "nbf 5 s ahead",
    );
    assert_accepted(
        &edge,
        &sign(&claims(json!({ "nbf": now - 5 }))),
        "nbf passed",
    );

    // exp: just passed is still within the leeway; beyond it is refused.
    assert_accepted(
        &edge,
        &sign(&claims(json!({ "exp": now - 5 }))),
        "exp 5 s ago",
    );
    assert_refused(
        &edge,
        &sign(&claims(json!({ "exp": now - 120 }))),
        401,
        "token_expired",
        "exp 2 minutes ago",
    );

    // Fractional NumericDates are floored; other types are malformed.
    assert_accepted(
        &edge,
        &sign(&claims(
            json!({ "exp": now as f64 + 3600.5, "nbf": now as f64 - 0.25 }),
        )),
        "fractional exp and nbf",
    );
    assert_accepted(
        &edge,
        &sign(&claims(json!({ "exp": 1.9e10 }))),
        "exp 1.9e10",
    );
    for exp in [json!((now + 3600).to_string()), json!(-1), json!(null)] {
        assert_refused(
            &edge,
            &sign(&claims(json!({ "exp": exp }))),
            401,
            "token_malformed",
            &format!("exp {exp}"),
        );
    }

    // crit: no critical extension is understood, so any crit is refused.
    let mut crit = Header::new(Algorithm::HS256);
    crit.crit = Some(vec!["exp".to_owned()]);
    let body = assert_refused(
        &edge,
        &sign_with(&crit, &claims(json!({}))),
        401,
        "token_malformed",
        "crit",
    );
    assert!(body.contains("crit"), "{body}");
    // typ, when present, must say JWT.
    let mut typ = Header::new(Algorithm::HS256);
    typ.typ = Some("JOSE".to_owned());
    assert_refused(
        &edge,
        &sign_with(&typ, &claims(json!({}))),
        401,
        "token_malformed",
        "typ JOSE",
    );
    typ.typ = None;
    assert_accepted(&edge, &sign_with(&typ, &claims(json!({}))), "no typ");

    // Every conversation id in the claims is checked, even one not asked for.
    let body = assert_refused(
        &edge,
        &sign(&claims(json!({ "conversations": ["room", "bad id"] }))),
        401,
        "token_malformed",
        "bad conversation id in claims",
    );
    assert!(body.contains("conversations[1]"), "{body}");
    let too_many: Vec<String> = (0..1001).map(|i| format!("c{i}")).collect();
    // Sent as a header: a 1001-entry token is too long for a comfortable URL.
    let (status, body) = edge
        .http(
            "GET",
            "/v1/conversations/c1/messages",
            &[(
                "Authorization",
                &format!(
                    "Bearer {}",
                    sign(&claims(json!({ "conversations": too_many })))
                ),
            )],
            "",
        )
        .expect("HTTP");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token_malformed"), "{body}");
    // An empty list is a valid token that admits nothing.
    assert_refused(
        &edge,
        &sign(&claims(json!({ "conversations": [] }))),
        403,
        "forbidden_conversation",
        "empty conversations",
    );
}

#[test]
fn history_integers_are_plain_digits_given_once() {
    let edge = Edge::start(&fresh_storage("history-params"));
    let auth = format!("Bearer {}", token_for("room", "ann", "ann-laptop"));
    let get = |query: &str| {
        edge.http(
            "GET",
            &format!("/v1/conversations/room/messages?{query}"),
            &[("Authorization", &auth)],
            "",
        )
        .expect("HTTP")
    };
    let (status, body) = get("limit=5&after=0");
    assert_eq!(status, 200, "{body}");
    for query in [
        "limit=+5",
        "limit=%2B5",
        "after=05x",
        "after=",
        "limit=%205",
        "before=00000000000000001",
        "limit=5&limit=6",
        "after=1&after=1",
    ] {
        let (status, body) = get(query);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains("bad_request"), "{query}: {body}");
    }
}

#[test]
fn a_short_secret_is_a_server_misconfiguration() {
    let storage = fresh_storage("short-secret");
    // A later --var replaces the harness's test secret.
    let edge = Edge::start_with_vars(&storage, &[("ACKLINE_JWT_SECRET", "short")]);
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"short"),
    )
    .expect("mint a JWT");
    for token in [token, token_for("room", "ann", "ann-laptop")] {
        let body = assert_refused(&edge, &token, 500, "server_misconfigured", "short secret");
        assert!(body.contains("at least 32 bytes"), "{body}");
    }
    let (status, body) = edge.dev_token("ann", "ann-web", &["room"]);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("server_misconfigured"), "{body}");
    // The edge says why in its log, as one JSON line.
    let log = storage.with_extension("log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(r#""event":"config_error""#) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no config_error line in {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
