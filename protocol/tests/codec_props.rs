//! Property tests of the frame codec: decoding never panics on any input,
//! and every valid frame survives an encode/decode round trip.

use proptest::prelude::*;
use protocol::frame::validate_id;
use protocol::{ChainHash, ClientFrame, Cursor, ErrorCode, ServerFrame, StoredMessage, MAX_SEQ};

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..1000, Just(MAX_SEQ), 0..=MAX_SEQ]
}

fn id() -> impl Strategy<Value = String> {
    "[!-~]{1,64}"
}

fn body() -> impl Strategy<Value = String> {
    prop_oneof![".{0,64}", "\\PC{0,32}", Just("\"\\\n\t\u{0}✓".to_owned())]
}

fn chain() -> impl Strategy<Value = ChainHash> {
    any::<[u8; 16]>().prop_map(ChainHash)
}

fn client_frame() -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (proptest::option::of(seq()), proptest::option::of(chain()))
            .prop_map(|(after, chain)| ClientFrame::Hello { after, chain }),
        (id(), body()).prop_map(|(id, body)| ClientFrame::Send { id, body }),
        (0u64..1000, proptest::collection::vec((1u64..50, 0u64..50), 0..5)).prop_map(|(seq, rs)| {
            // Ranges strictly above `seq`, ascending.
            let mut lo = seq + 1;
            let mut ranges = Vec::new();
            for (gap, len) in rs {
                let start = lo + gap;
                ranges.push([start, start + len]);
                lo = start + len + 2;
            }
            ClientFrame::Ack { seq, ranges }
        }),
        (0u64..10_000, 1u64..10_000, 1u32..=500).prop_map(|(a, d, limit)| ClientFrame::Sync {
            after: Some(a),
            before: Some(a + d),
            limit
        }),
        (1u64..10_000, 1u32..=500).prop_map(|(b, limit)| ClientFrame::Sync {
            after: None,
            before: Some(b),
            limit
        }),
        seq().prop_map(|seq| ClientFrame::Read { seq }),
        any::<u64>().prop_map(|nonce| ClientFrame::Ping { nonce }),
    ]
}

fn message() -> impl Strategy<Value = StoredMessage> {
    (seq(), "[a-z]{1,8}", "[a-z0-9-]{1,8}", id(), body(), any::<u64>(), chain()).prop_map(
        |(seq, user, device, id, body, at, chain)| StoredMessage {
            seq,
            user,
            device,
            id,
            body,
            at,
            chain,
        },
    )
}

fn cursor() -> impl Strategy<Value = Cursor> {
    ("[a-z]{1,8}", "[a-z0-9-]{1,8}", seq()).prop_map(|(user, device, through)| Cursor { user, device, through })
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z]{1,8}", seq(), chain(), proptest::collection::vec(cursor(), 0..4), any::<u64>())
            .prop_map(|(conversation, user, device, head, chain, cursors, now)| ServerFrame::Welcome {
                conversation,
                user,
                device,
                head,
                chain,
                cursors,
                now
            }),
        (id(), seq(), any::<u64>()).prop_map(|(id, seq, at)| ServerFrame::Sent { id, seq, at }),
        proptest::collection::vec(message(), 0..4).prop_map(|messages| ServerFrame::Push { messages }),
        (proptest::collection::vec(message(), 0..4), seq(), any::<bool>())
            .prop_map(|(messages, head, more)| ServerFrame::Batch { messages, head, more }),
        proptest::collection::vec(cursor(), 0..4).prop_map(|cursors| ServerFrame::Delivered { cursors }),
        (".{0,20}", proptest::option::of(id())).prop_map(|(message, id)| ServerFrame::Error {
            code: ErrorCode::WindowFull,
            message,
            id
        }),
        any::<u64>().prop_map(|nonce| ServerFrame::Pong { nonce }),
    ]
}

/// JSON-looking inputs that get past the first checks more often than random bytes.
fn jsonish() -> impl Strategy<Value = String> {
    let kinds = prop_oneof![
        Just("hello"), Just("send"), Just("ack"), Just("sync"), Just("read"), Just("ping"),
        Just("welcome"), Just("sent"), Just("push"), Just("batch"), Just("delivered"), Just("error"), Just("pong"),
        Just("nope")
    ];
    let value = prop_oneof![
        Just("null".to_owned()), Just("-1".to_owned()), Just("1e400".to_owned()), Just("9007199254740992".to_owned()),
        Just("[]".to_owned()), Just("{}".to_owned()), Just("\"\"".to_owned()), Just("[[1,2],[0,0]]".to_owned()),
        (0u64..u64::MAX).prop_map(|n| n.to_string()), "\"[ -~]{0,10}\"",
    ];
    let field = prop_oneof![
        Just("after"), Just("before"), Just("limit"), Just("seq"), Just("ranges"), Just("id"), Just("body"),
        Just("chain"), Just("messages"), Just("head"), Just("nonce"), Just("v")
    ];
    (kinds, proptest::collection::vec((field, value), 0..6)).prop_map(|(kind, fields)| {
        let mut s = format!("{{\"v\":1,\"type\":\"{kind}\"");
        for (f, v) in fields {
            s.push_str(&format!(",\"{f}\":{v}"));
        }
        s.push('}');
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientFrame::decode(&bytes);
        let _ = ServerFrame::decode(&bytes);
    }

    #[test]
    fn jsonish_input_never_panics_and_errors_have_codes(text in jsonish()) {
        if let Err(e) = ClientFrame::decode(text.as_bytes()) {
            prop_assert!(!e.code().as_str().is_empty());
            prop_assert!(!e.to_string().is_empty());
        }
        let _ = ServerFrame::decode(text.as_bytes());
    }

    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        let text = frame.encode();
        prop_assert_eq!(ClientFrame::decode(text.as_bytes()), Ok(frame));
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        let text = frame.encode();
        prop_assert_eq!(ServerFrame::decode(text.as_bytes()), Ok(frame));
    }

    #[test]
    fn ids_validate_like_the_decoder(s in ".{0,70}") {
        let frame = format!(r#"{{"v":1,"type":"send","id":{},"body":"x"}}"#, serde_json::to_string(&s).unwrap_or_default());
        prop_assert_eq!(validate_id(&s).is_ok(), ClientFrame::decode(frame.as_bytes()).is_ok());
    }
}

#[test]
fn ack_ranges_are_validated() {
    let code = |s: &str| ClientFrame::decode(s.as_bytes()).err().map(|e| e.code());
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[5,7]]}"#), None);
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3}"#), None);
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[2,7]]}"#), Some(ErrorCode::BadFrame));
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[7,5]]}"#), Some(ErrorCode::BadFrame));
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[5]]}"#), Some(ErrorCode::BadFrame));
    let many: Vec<String> = (0..33).map(|i| format!("[{},{}]", 10 + i * 3, 10 + i * 3)).collect();
    let text = format!(r#"{{"v":1,"type":"ack","seq":3,"ranges":[{}]}}"#, many.join(","));
    assert_eq!(code(&text), Some(ErrorCode::BadFrame));
}
