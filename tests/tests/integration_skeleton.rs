//! Walking-skeleton round trip through the real edge: a message is stored by the
//! Conversation Durable Object in SQLite, answered with its seq, deduplicated by
//! client id, survives a SIGKILL of workerd, and bad input gets error frames.

use ackline_tests::edge::{fresh_storage, Edge};
use protocol::{ClientFrame, ErrorCode, ServerFrame};

fn send(id: &str, body: &str) -> ClientFrame {
    ClientFrame::Send {
        id: id.into(),
        body: body.into(),
        after: None,
    }
}

fn sent_seq(frame: &ServerFrame) -> Option<u64> {
    match frame {
        ServerFrame::Sent { seq, .. } => Some(*seq),
        _ => None,
    }
}

fn welcome_head(ws: &mut ackline_tests::edge::Ws) -> u64 {
    ws.send(&ClientFrame::Hello {
        after: None,
        chain: None,
        bundles: false,
    });
    ws.recv_until(|f| match f {
        ServerFrame::Welcome { head, .. } => Some(*head),
        _ => None,
    })
}

/// The next error frame's code (the page after `welcome` and cursor notices,
/// which arrive whenever the server has news, are skipped).
fn error_code(ws: &mut ackline_tests::edge::Ws) -> ErrorCode {
    ws.recv_until(|f| match f {
        ServerFrame::Error { code, .. } => Some(*code),
        ServerFrame::Batch { .. } | ServerFrame::Delivered { .. } => None,
        other => panic!("expected an error frame, got {other:?}"),
    })
}

#[test]
fn round_trip_is_stored_deduplicated_and_survives_a_kill() {
    let mut edge = Edge::start(&fresh_storage("skeleton"));
    assert_eq!(edge.http_get("/healthz").unwrap().0, 200);
    let (status, body) = edge.http_get("/v1/nope").unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("not_found"), "{body}");

    let mut ws = edge.connect("room1", "ann", "ann-laptop");
    assert_eq!(welcome_head(&mut ws), 0);
    ws.send(&send("m1", "hello"));
    assert_eq!(ws.recv_until(sent_seq), 1);
    ws.send(&send("m2", "world"));
    assert_eq!(ws.recv_until(sent_seq), 2);
    ws.send(&send("m1", "hello"));
    assert_eq!(ws.recv_until(sent_seq), 1, "a retry gets the same seq");

    edge.restart();
    let mut ws = edge.connect("room1", "ann", "ann-laptop");
    assert_eq!(welcome_head(&mut ws), 2, "stored rows survive SIGKILL");
    ws.send(&send("m2", "world"));
    assert_eq!(ws.recv_until(sent_seq), 2, "dedup survives a restart");
    ws.send(&send("m3", "again"));
    assert_eq!(ws.recv_until(sent_seq), 3);
}

#[test]
fn bad_input_gets_error_frames_and_the_socket_stays_open() {
    let edge = Edge::start(&fresh_storage("skeleton-bad"));
    let mut ws = edge.connect("room2", "bob", "bob-phone");
    welcome_head(&mut ws);
    ws.send_text("this is not json");
    assert_eq!(error_code(&mut ws), ErrorCode::BadJson);
    ws.send_binary(vec![0, 159, 146, 150]);
    assert_eq!(error_code(&mut ws), ErrorCode::BadJson);
    ws.send_text(r#"{"v":1,"type":"teleport"}"#);
    assert_eq!(error_code(&mut ws), ErrorCode::UnknownFrame);
    ws.send_text(&"x".repeat(protocol::limits::MAX_FRAME_BYTES + 10));
    assert_eq!(error_code(&mut ws), ErrorCode::FrameTooLarge);
    ws.send_text(r#"{"v":1,"type":"ack","seq":-5}"#);
    assert_eq!(error_code(&mut ws), ErrorCode::BadFrame);
    ws.send(&ClientFrame::Ping { nonce: 42 });
    assert_eq!(
        ws.recv_until(|f| match f {
            ServerFrame::Pong { nonce } => Some(*nonce),
            ServerFrame::Batch { .. } | ServerFrame::Delivered { .. } => None,
            other => panic!("expected pong, got {other:?}"),
        }),
        42
    );
    // The object still serves another client.
    let mut other = edge.connect("room2", "cat", "cat-web");
    assert_eq!(welcome_head(&mut other), 0);
}
