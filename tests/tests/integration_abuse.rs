//! Bad input against the real edge: every malformed, oversized or abusive frame
//! gets an error frame or a clean close, and the Durable Object keeps serving
//! the conversation's other clients.

use std::time::Duration;

use ackline_tests::device::Device;
use ackline_tests::edge::{fresh_storage, Edge};
use protocol::{limits, ClientFrame, ErrorCode, ServerFrame};

const LONG: Duration = Duration::from_secs(30);

fn last_error(d: &mut Device) -> ErrorCode {
    d.pump_until(LONG, |d| !d.errors.is_empty());
    match d.errors.remove(0) {
        ServerFrame::Error { code, .. } => code,
        other => panic!("not an error frame: {other:?}"),
    }
}

#[test]
fn malformed_and_oversized_frames_get_error_frames() {
    let edge = Edge::start(&fresh_storage("abuse"));
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    let cases: Vec<(String, ErrorCode)> = vec![
        ("{not json".into(), ErrorCode::BadJson),
        // A bundle whose one element is not an object, and an empty bundle.
        ("[1]".into(), ErrorCode::BadJson),
        ("[]".into(), ErrorCode::BadFrame),
        (
            r#"{"v":9,"type":"send","id":"a","body":"b"}"#.into(),
            ErrorCode::UnsupportedVersion,
        ),
        (
            r#"{"v":1,"type":"delete_everything"}"#.into(),
            ErrorCode::UnknownFrame,
        ),
        (
            r#"{"v":1,"type":"send","id":5,"body":"x"}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"send","id":"a"}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"ack","seq":-1}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"ack","seq":1e300}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"ack","seq":9007199254740993}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"sync","after":0,"limit":100000}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            r#"{"v":1,"type":"sync","after":-3,"limit":10}"#.into(),
            ErrorCode::BadFrame,
        ),
        (
            "x".repeat(limits::MAX_FRAME_BYTES + 1),
            ErrorCode::FrameTooLarge,
        ),
        (
            format!(
                r#"{{"v":1,"type":"send","id":"big","body":"{}"}}"#,
                "y".repeat(limits::MAX_BODY_BYTES + 1)
            ),
            ErrorCode::BodyTooLarge,
        ),
        (
            // A huge selective-ack list.
            format!(
                r#"{{"v":1,"type":"ack","seq":0,"ranges":[{}]}}"#,
                (1..2000)
                    .map(|i| format!("[{},{}]", i * 2, i * 2))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            ErrorCode::BadFrame,
        ),
    ];
    for (text, expected) in &cases {
        eve.send_text(text);
        let got = last_error(&mut eve);
        assert_eq!(got, *expected, "for {}", &text[..text.len().min(80)]);
    }
    // Absurd but well-formed numbers do not crash anything.
    eve.send_text(r#"{"v":1,"type":"ack","seq":9007199254740991}"#);
    eve.send_text(r#"{"v":1,"type":"sync","after":9007199254740990,"limit":10}"#);
    eve.send_text(r#"{"v":1,"type":"sync","before":1,"limit":10}"#);
    eve.pump_for(Duration::from_millis(300));
    assert!(eve.is_open(), "the connection stays open after errors");
    eve.send("ok-1", "still here");
    eve.pump_until(LONG, |d| d.sent.contains_key("ok-1"));
}

#[test]
fn a_bundle_is_handled_frame_by_frame_and_bad_elements_alone_are_refused() {
    let edge = Edge::start(&fresh_storage("bundles"));
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    let send = |id: &str| {
        ClientFrame::Send {
            id: id.into(),
            body: format!("body of {id}"),
            after: None,
        }
        .encode()
    };
    let bundle = format!(
        "[{},1,{},{},{}]",
        send("b1"),
        r#"{"v":9,"type":"send","id":"x","body":"y"}"#,
        format!(
            r#"{{"v":1,"type":"send","id":"big","body":"{}"}}"#,
            "y".repeat(limits::MAX_BODY_BYTES + 1)
        ),
        send("b2")
    );
    eve.send_text(&bundle);
    eve.pump_until(LONG, |d| {
        d.sent.contains_key("b1") && d.sent.contains_key("b2") && d.errors.len() >= 3
    });
    let errors: Vec<(ErrorCode, Option<String>)> = eve
        .errors
        .drain(..)
        .map(|e| match e {
            ServerFrame::Error { code, id, .. } => (code, id),
            other => panic!("not an error frame: {other:?}"),
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (ErrorCode::BadJson, None),
            (ErrorCode::UnsupportedVersion, None),
            (ErrorCode::BodyTooLarge, Some("big".into()))
        ],
        "each bad element gets the error it would get alone, in order"
    );
    assert!(
        eve.sent["b1"] < eve.sent["b2"],
        "elements are handled in order"
    );
    // The whole message counts against the frame limit.
    let many: Vec<String> = (0..2_000).map(|i| send(&format!("m{i}"))).collect();
    eve.send_text(&format!("[{}]", many.join(",")));
    assert_eq!(last_error(&mut eve), ErrorCode::FrameTooLarge);
    assert!(eve.is_open());
}

#[test]
fn a_bundle_takes_one_rate_token_per_frame() {
    let edge = Edge::start_with_vars(
        &fresh_storage("bundle-rate"),
        &[("ACKLINE_RATE_PER_SEC", "10")],
    );
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    // A burst of 20 tokens (the hello took one): a bundle of 30 pings gets
    // about 19 pongs and then rate_limited errors, like 30 messages would.
    let pings: Vec<String> = (0..30)
        .map(|i| ClientFrame::Ping { nonce: i }.encode())
        .collect();
    eve.send_text(&format!("[{}]", pings.join(",")));
    eve.pump_until(LONG, |d| d.errors.len() >= 8);
    eve.pump_for(Duration::from_millis(300));
    assert!(
        (8..=12).contains(&eve.errors.len()),
        "{} refused",
        eve.errors.len()
    );
    assert!(eve.errors.iter().all(|e| matches!(
        e,
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            ..
        }
    )));
}

#[test]
fn a_flood_is_refused_and_closed_while_others_are_served() {
    let edge = Edge::start(&fresh_storage("flood"));
    let mut ann = Device::join(&edge, "busy", "ann", "ann-1", Some(0));
    let mut mallory = Device::join(&edge, "busy", "mallory", "mallory-1", Some(0));
    // Far beyond the token bucket, as fast as the socket takes it.
    for i in 0..6_000 {
        mallory.send_text(&format!(r#"{{"v":1,"type":"ping","nonce":{i}}}"#));
    }
    let code = mallory.expect_close();
    assert_eq!(code, 1008, "repeated abuse closes with policy violation");
    assert!(
        mallory.errors.iter().any(|e| matches!(
            e,
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        )),
        "rate_limited error frames came first"
    );
    // The Durable Object still serves the conversation.
    ann.send("after-flood", "hello");
    ann.pump_until(LONG, |d| d.sent.contains_key("after-flood"));
    assert!(ann.is_open());
}

#[test]
fn a_second_connection_of_a_device_replaces_the_first() {
    let edge = Edge::start(&fresh_storage("replace"));
    let mut old = Device::join(&edge, "room", "ann", "ann-1", Some(0));
    let mut new = Device::join(&edge, "room", "ann", "ann-1", Some(0));
    let code = old.expect_close();
    assert_eq!(code, protocol::server::close::REPLACED);
    new.send("n1", "from the new connection");
    new.pump_until(LONG, |d| d.watermark == 1);
}
