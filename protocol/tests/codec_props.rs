//! Property tests of the frame codec: decoding never panics on any input,
//! and every valid frame survives an encode/decode round trip.

use proptest::prelude::*;
use protocol::frame::validate_id;
use protocol::{
    ChainHash, ClientFrame, Cursor, ErrorCode, RateLimit, ServerFrame, StoredMessage, MAX_SEQ,
};

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
        (
            proptest::option::of(seq()),
            proptest::option::of(chain()),
            any::<bool>()
        )
            .prop_map(|(after, chain, bundles)| ClientFrame::Hello {
                after,
                chain,
                bundles
            }),
        (id(), body()).prop_map(|(id, body)| ClientFrame::Send {
            id,
            body,
            after: None
        }),
        (
            0u64..1000,
            proptest::collection::vec((1u64..50, 0u64..50), 0..5)
        )
            .prop_map(|(seq, rs)| {
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
    (
        seq(),
        "[a-z]{1,8}",
        "[a-z0-9-]{1,8}",
        id(),
        body(),
        any::<u64>(),
        chain(),
    )
        .prop_map(|(seq, user, device, id, body, at, chain)| StoredMessage {
            seq,
            user,
            device,
            id,
            body,
            at,
            chain,
        })
}

fn cursor() -> impl Strategy<Value = Cursor> {
    ("[a-z]{1,8}", "[a-z0-9-]{1,8}", seq()).prop_map(|(user, device, through)| Cursor {
        user,
        device,
        through,
    })
}

fn server_frame() -> impl Strategy<Value = ServerFrame> {
    prop_oneof![
        (
            ("[a-z]{1,8}", "[a-z]{1,8}", "[a-z]{1,8}", seq(), chain()),
            proptest::collection::vec(cursor(), 0..4),
            any::<u64>(),
            proptest::option::of(
                (any::<u64>(), any::<u64>())
                    .prop_map(|(per_sec, burst)| RateLimit { per_sec, burst })
            ),
        )
            .prop_map(
                |((conversation, user, device, head, chain), cursors, now, rate)| {
                    ServerFrame::Welcome {
                        conversation,
                        user,
                        device,
                        head,
                        chain,
                        after_chain: None,
                        start: None,
                        cursors,
                        members: 0,
                        now,
                        rate,
                        ticket: None,
                    }
                }
            ),
        (id(), seq(), any::<u64>()).prop_map(|(id, seq, at)| ServerFrame::Sent { id, seq, at }),
        proptest::collection::vec(message(), 0..4)
            .prop_map(|messages| ServerFrame::Push { messages }),
        (
            proptest::collection::vec(message(), 0..4),
            seq(),
            any::<bool>()
        )
            .prop_map(|(messages, head, more)| ServerFrame::Batch {
                messages,
                head,
                more,
                follows: false,
                ticket: None
            }),
        proptest::collection::vec(cursor(), 0..4).prop_map(|cursors| ServerFrame::Delivered {
            cursors,
            members: 0
        }),
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
        Just("hello"),
        Just("send"),
        Just("ack"),
        Just("sync"),
        Just("read"),
        Just("ping"),
        Just("welcome"),
        Just("sent"),
        Just("push"),
        Just("batch"),
        Just("delivered"),
        Just("error"),
        Just("pong"),
        Just("nope")
    ];
    let value = prop_oneof![
        Just("null".to_owned()),
        Just("-1".to_owned()),
        Just("1e400".to_owned()),
        Just("9007199254740992".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("\"\"".to_owned()),
        Just("[[1,2],[0,0]]".to_owned()),
        (0u64..u64::MAX).prop_map(|n| n.to_string()),
        "\"[ -~]{0,10}\"",
    ];
    let field = prop_oneof![
        Just("after"),
        Just("before"),
        Just("limit"),
        Just("seq"),
        Just("ranges"),
        Just("id"),
        Just("body"),
        Just("chain"),
        Just("messages"),
        Just("head"),
        Just("nonce"),
        Just("v")
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
    fn arbitrary_bundles_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), text in jsonish()) {
        let _ = ClientFrame::decode_bundle(&bytes);
        let _ = ServerFrame::decode_bundle(&bytes);
        let bundle = format!("[{text},{text}]");
        let _ = ClientFrame::decode_bundle(bundle.as_bytes());
        let _ = ServerFrame::decode_bundle(bundle.as_bytes());
    }

    #[test]
    fn packed_frames_come_back_in_order(
        client in proptest::collection::vec(client_frame(), 0..12),
        server in proptest::collection::vec(server_frame(), 0..12),
        cap in 1usize..2_000,
    ) {
        let packed = protocol::pack_bundles(client.iter().map(|f| f.encode()), cap);
        let back: Vec<ClientFrame> = packed
            .iter()
            .flat_map(|m| ClientFrame::decode_bundle(m.as_bytes()).unwrap_or_default())
            .filter_map(|f| f.ok().map(|(f, _)| f))
            .collect();
        prop_assert_eq!(back, client);
        let packed = protocol::pack_bundles(server.iter().map(ServerFrame::encode), cap);
        for m in &packed {
            // Over the cap only when one frame alone is.
            prop_assert!(m.len() <= cap || !m.starts_with('['));
        }
        let back: Vec<ServerFrame> = packed
            .iter()
            .flat_map(|m| ServerFrame::decode_bundle(m.as_bytes()).unwrap_or_default())
            .filter_map(Result::ok)
            .collect();
        prop_assert_eq!(back, server);
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
    assert_eq!(
        code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[5,7]]}"#),
        None
    );
    assert_eq!(code(r#"{"v":1,"type":"ack","seq":3}"#), None);
    assert_eq!(
        code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[2,7]]}"#),
        Some(ErrorCode::BadFrame)
    );
    assert_eq!(
        code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[7,5]]}"#),
        Some(ErrorCode::BadFrame)
    );
    assert_eq!(
        code(r#"{"v":1,"type":"ack","seq":3,"ranges":[[5]]}"#),
        Some(ErrorCode::BadFrame)
    );
    let many: Vec<String> = (0..33)
        .map(|i| format!("[{},{}]", 10 + i * 3, 10 + i * 3))
        .collect();
    let text = format!(
        r#"{{"v":1,"type":"ack","seq":3,"ranges":[{}]}}"#,
        many.join(",")
    );
    assert_eq!(code(&text), Some(ErrorCode::BadFrame));
}

mod machines_never_panic {
    use super::*;
    use protocol::client::{Client, ClientConfig, ClientInput, ClientOutput, ClientSnapshot};
    use protocol::server::{
        ConnId, Conversation, ConversationStore, ServerConfig, ServerInput, ServerOutput,
        StoreError,
    };
    use protocol::WriteId;

    fn wild_seq() -> impl Strategy<Value = u64> {
        prop_oneof![0u64..20, Just(MAX_SEQ), Just(MAX_SEQ + 1), Just(u64::MAX)]
    }

    fn wild_message() -> impl Strategy<Value = StoredMessage> {
        (message(), wild_seq()).prop_map(|(mut m, seq)| {
            m.seq = seq;
            m
        })
    }

    /// Server frames with hostile seqs, as JSON text (the decoder does not bound them).
    fn hostile_server_frame() -> impl Strategy<Value = ServerFrame> {
        prop_oneof![
            server_frame(),
            proptest::collection::vec(wild_message(), 0..4)
                .prop_map(|messages| ServerFrame::Push { messages }),
            (
                proptest::collection::vec(wild_message(), 0..4),
                wild_seq(),
                any::<bool>()
            )
                .prop_map(|(messages, head, more)| ServerFrame::Batch {
                    messages,
                    head,
                    more,
                    follows: false,
                    ticket: None
                }),
            (wild_seq(), chain()).prop_map(|(head, chain)| ServerFrame::Welcome {
                conversation: "c".into(),
                user: "ann".into(),
                device: "a1".into(),
                head,
                chain,
                after_chain: None,
                start: None,
                cursors: vec![],
                members: 0,
                now: 0,
                rate: None,
                ticket: None,
            }),
        ]
    }

    #[derive(Debug, Clone)]
    enum CIn {
        Connected,
        Disconnected,
        Frame(ServerFrame),
        Garbage(Vec<u8>),
        Durable(u64),
        Timeout(u64),
        Send(String),
        Older,
    }

    fn client_input() -> impl Strategy<Value = CIn> {
        prop_oneof![
            Just(CIn::Connected),
            Just(CIn::Disconnected),
            hostile_server_frame().prop_map(CIn::Frame),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(CIn::Garbage),
            (0u64..30).prop_map(CIn::Durable),
            (0u64..100_000).prop_map(CIn::Timeout),
            ".{0,10}".prop_map(CIn::Send),
            Just(CIn::Older),
        ]
    }

    struct NoStore;
    impl ConversationStore for NoStore {
        fn last(&self) -> Result<Option<StoredMessage>, StoreError> {
            Ok(None)
        }
        fn find(&self, _: &str, _: &str, _: &str) -> Result<Option<StoredMessage>, StoreError> {
            Err(StoreError::Failed("down".into()))
        }
        fn after(&self, _: u64, _: u32) -> Result<Vec<StoredMessage>, StoreError> {
            Err(StoreError::Failed("down".into()))
        }
        fn before(&self, _: u64, _: u32) -> Result<Vec<StoredMessage>, StoreError> {
            Ok(vec![])
        }
        fn devices(&self) -> Result<Vec<protocol::server::DeviceRecord>, StoreError> {
            Ok(vec![])
        }
    }

    #[derive(Debug, Clone)]
    enum SIn {
        Connected(u64, u8),
        Disconnected(u64),
        Frame(u64, ClientFrame),
        Garbage(u64, Vec<u8>),
        Durable(u64),
        Timeout(u64),
    }

    fn server_input() -> impl Strategy<Value = SIn> {
        prop_oneof![
            (0u64..4, 0u8..4).prop_map(|(c, d)| SIn::Connected(c, d)),
            (0u64..4).prop_map(SIn::Disconnected),
            (0u64..4, client_frame()).prop_map(|(c, f)| SIn::Frame(c, f)),
            (0u64..4, proptest::collection::vec(any::<u8>(), 0..40))
                .prop_map(|(c, b)| SIn::Garbage(c, b)),
            (0u64..40).prop_map(SIn::Durable),
            (0u64..100_000).prop_map(SIn::Timeout),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn client_survives_any_input_sequence(inputs in proptest::collection::vec(client_input(), 0..40)) {
            let mut c = Client::new(ClientConfig::new("ann", "a1"), 7, ClientSnapshot::default());
            let mut now = 1_700_000_000_000u64;
            for i in inputs {
                now += 1;
                match i {
                    CIn::Connected => c.handle(now, ClientInput::Connected),
                    CIn::Disconnected => c.handle(now, ClientInput::Disconnected { code: 1006, reason: String::new() }),
                    CIn::Frame(f) => c.handle(now, ClientInput::Frame(f.encode().into_bytes())),
                    CIn::Garbage(b) => c.handle(now, ClientInput::Frame(b)),
                    CIn::Durable(w) => c.handle(now, ClientInput::Durable { through: WriteId(w) }),
                    CIn::Timeout(dt) => { now += dt; c.handle(now, ClientInput::Timeout) }
                    CIn::Send(b) => { let _ = c.send(now, b); }
                    CIn::Older => { let _ = c.load_older(now); }
                }
                while let Some(o) = c.poll_output() {
                    if let ClientOutput::Transmit(f) = o {
                        // Whatever the client sends must be a valid frame.
                        prop_assert_eq!(ClientFrame::decode(f.encode().as_bytes()), Ok(f));
                    }
                }
                let _ = c.poll_timeout();
            }
        }

        #[test]
        fn server_survives_any_input_sequence(inputs in proptest::collection::vec(server_input(), 0..40)) {
            let mut s = Conversation::new(ServerConfig::new("c"), 7, 1_700_000_000_000, &NoStore).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut now = 1_700_000_000_000u64;
            for i in inputs {
                now += 1;
                let input = match i {
                    SIn::Connected(c, d) => ServerInput::Connected { conn: ConnId(c), user: format!("u{}", d % 3), device: format!("d{d}"), resumed: (d % 2 == 0).then(Default::default), expires: None },
                    SIn::Disconnected(c) => ServerInput::Disconnected { conn: ConnId(c) },
                    SIn::Frame(c, f) => ServerInput::Frame { conn: ConnId(c), bytes: f.encode().into_bytes() },
                    SIn::Garbage(c, b) => ServerInput::Frame { conn: ConnId(c), bytes: b },
                    SIn::Durable(w) => ServerInput::Durable { through: WriteId(w) },
                    SIn::Timeout(dt) => { now += dt; ServerInput::Timeout }
                };
                s.handle(now, input, &NoStore);
                while let Some(o) = s.poll_output() {
                    if let ServerOutput::Frame { frame, .. } = o {
                        prop_assert!(ServerFrame::decode(frame.encode().as_bytes()).is_ok());
                    }
                }
                let _ = s.poll_timeout();
                let _ = s.stats();
            }
        }
    }
}
