//! Bad input against the real edge: every malformed, oversized or abusive frame
//! gets an error frame or a clean close, and the Durable Object keeps serving
//! the conversation's other clients.

use std::time::Duration;

use ackline_tests::device::Device;
use ackline_tests::edge::{fresh_storage, Edge};
use protocol::{limits, ErrorCode, ServerFrame};

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
        ("[1,2,3]".into(), ErrorCode::BadJson),
        (r#"{"v":9,"type":"send","id":"a","body":"b"}"#.into(), ErrorCode::UnsupportedVersion),
        (r#"{"v":1,"type":"delete_everything"}"#.into(), ErrorCode::UnknownFrame),
        (r#"{"v":1,"type":"send","id":5,"body":"x"}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"send","id":"a"}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"ack","seq":-1}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"ack","seq":1e300}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"ack","seq":9007199254740993}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"sync","after":0,"limit":100000}"#.into(), ErrorCode::BadFrame),
        (r#"{"v":1,"type":"sync","after":-3,"limit":10}"#.into(), ErrorCode::BadFrame),
        ("x".repeat(limits::MAX_FRAME_BYTES + 1), ErrorCode::FrameTooLarge),
        (
            format!(r#"{{"v":1,"type":"send","id":"big","body":"{}"}}"#, "y".repeat(limits::MAX_BODY_BYTES + 1)),
            ErrorCode::BodyTooLarge,
        ),
        (
            // A huge selective-ack list.
            format!(
                r#"{{"v":1,"type":"ack","seq":0,"ranges":[{}]}}"#,
                (1..2000).map(|i| format!("[{},{}]", i * 2, i * 2)).collect::<Vec<_>>().join(",")
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
        mallory.errors.iter().any(|e| matches!(e, ServerFrame::Error { code: ErrorCode::RateLimited, .. })),
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
