//! One bad member must never stall, bloat or break a conversation: the limits of
//! docs/PROTOCOL.md ("Limits") against real workerd, each from the attack that
//! broke it. Figures are printed (`cargo test -- --nocapture` shows them).

use std::time::{Duration, Instant};

use ackline_tests::device::Device;
use ackline_tests::edge::{fresh_storage, mint, token_for, unix_now, Claims, Edge, TEST_SECRET};
use protocol::server::close;
use protocol::{limits, ClientFrame, ErrorCode, ServerFrame};

const LONG: Duration = Duration::from_secs(60);

fn stats(edge: &Edge, conversation: &str) -> serde_json::Value {
    let auth = format!("Bearer {}", token_for(conversation, "ops", "ops-1"));
    let (status, body) = edge
        .http(
            "GET",
            &format!("/v1/conversations/{conversation}/stats"),
            &[("Authorization", &auth)],
            "",
        )
        .expect("stats");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats JSON")
}

/// The first history page of "room", as JSON text.
fn history_of_room(edge: &Edge) -> String {
    let auth = format!("Bearer {}", token_for("room", "ann", "ann-1"));
    let (status, body) = edge
        .http(
            "GET",
            "/v1/conversations/room/messages?after=0",
            &[("Authorization", &auth)],
            "",
        )
        .expect("history");
    assert_eq!(status, 200, "{body}");
    body
}

/// 300 messages of 16 KiB from ann in "room", and bob, a bystander who joined
/// after them.
fn room_with_history(edge: &Edge) -> (Device, Device) {
    let mut ann = Device::join(edge, "room", "ann", "ann-1", Some(0));
    let body = "x".repeat(limits::MAX_BODY_BYTES);
    let history: Vec<(String, String)> =
        (0..300).map(|i| (format!("h{i}"), body.clone())).collect();
    ann.send_windowed(&history, 32, LONG);
    let mut bob = Device::join(edge, "room", "bob", "bob-1", None);
    bob.pump_for(Duration::from_millis(300));
    (ann, bob)
}

/// Sends one message and waits for its `sent`; the latency.
fn timed_send(d: &mut Device, id: &str) -> Duration {
    let start = Instant::now();
    d.send(id, "ping");
    d.pump_until(LONG, |d| d.sent.contains_key(id));
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// Item 1: 300 messages of 16 KiB, then 200 `sync after 0` in a burst from one
// member. Before: 378 MiB streamed, a bystander's send->sent 13.7 s, and a
// paused reader's output buffered without limit.
#[test]
fn a_sync_burst_neither_delays_a_bystander_nor_grows_without_bound() {
    let edge = Edge::start_with_vars(
        &fresh_storage("sync-burst"),
        &[("ACKLINE_STALL_TIMEOUT_MS", "3000")],
    );
    let (_ann, mut bob) = room_with_history(&edge);
    let quiet: Vec<Duration> = (0..20)
        .map(|i| timed_send(&mut bob, &format!("q{i}")))
        .collect();

    let rss_before = edge.workerd_rss_kib();
    // Mallory never reads and never echoes a read ticket.
    let mut mallory = Device::join(&edge, "room", "mallory", "mallory-1", Some(0));
    mallory.ws_mut().echo_tickets(false);
    let read_at_join = mallory.ws_mut().bytes_received();
    let burst = ClientFrame::Sync {
        after: Some(0),
        before: None,
        limit: limits::MAX_PAGE,
    }
    .encode();
    for _ in 0..200 {
        mallory.send_text(&burst);
    }
    let mut busy: Vec<Duration> = (0..40)
        .map(|i| timed_send(&mut bob, &format!("b{i}")))
        .collect();
    let rss_after = edge.workerd_rss_kib();

    // A paused reader is closed once its unread answers stall for the timeout.
    std::thread::sleep(Duration::from_secs(5));
    let code = mallory.ws_mut().drain(Duration::from_secs(10));
    let streamed = mallory.ws_mut().bytes_received() - read_at_join;
    let mut quiet = quiet;
    quiet.sort();
    busy.sort();
    println!(
        "sync burst: bystander send->sent p50/p99/max quiet {:?}/{:?}/{:?}, under the burst {:?}/{:?}/{:?}; \
         attacker received {} KiB; workerd RSS {} -> {} MiB; attacker closed with {code:?}",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99),
        quiet[quiet.len() - 1],
        percentile(&busy, 0.5),
        percentile(&busy, 0.99),
        busy[busy.len() - 1],
        streamed / 1024,
        rss_before / 1024,
        rss_after / 1024,
    );
    assert_eq!(
        code,
        Some(close::UNRESPONSIVE),
        "a client that does not read is closed"
    );
    // At most the answer budget plus one page in answers, and pushes of bob's
    // 60 short messages: far from 200 catch-ups of 4.8 MiB.
    let bound = (limits::ANSWER_BUDGET + limits::PAGE_BYTES + 64 * 1024) as u64;
    assert!(
        streamed <= bound,
        "the attacker got {streamed} bytes (bound {bound})"
    );
    assert!(
        percentile(&busy, 0.5) < Duration::from_millis(100),
        "bystander median send->sent under the burst: {:?}",
        percentile(&busy, 0.5)
    );
    assert!(
        busy[busy.len() - 1] < Duration::from_secs(1),
        "bystander worst send->sent: {:?}",
        busy
    );
    assert!(
        rss_after < rss_before + 100 * 1024,
        "workerd grew from {rss_before} to {rss_after} KiB"
    );

    // A member that reads and echoes, and still bursts 200 syncs, gets each
    // answer once: a new sync replaces the one still being answered.
    let mut carol = Device::join(&edge, "room", "carol", "carol-1", Some(0));
    let before = carol.ws_mut().bytes_received();
    for _ in 0..200 {
        carol.send_text(&burst);
    }
    carol.pump_until(LONG, |d| d.watermark >= 360);
    carol.pump_for(Duration::from_millis(500));
    let got = carol.ws_mut().bytes_received() - before;
    let history_bytes = 300 * (limits::MAX_BODY_BYTES as u64 + 200);
    println!(
        "sync burst with a reader: {} KiB for a {} KiB history",
        got / 1024,
        history_bytes / 1024
    );
    assert!(
        got < 3 * history_bytes,
        "{got} bytes for a {history_bytes}-byte history"
    );
    assert!(carol.is_open());
}

// Item 1, the reading kind: a member that reads and echoes every ticket and
// asks for the whole history again and again gets it only as fast as it reads,
// one request at a time, and the bystander's `sent` stays quick meanwhile.
#[test]
fn a_greedy_reader_does_not_delay_a_bystander() {
    let edge = Edge::start(&fresh_storage("greedy-reader"));
    let (_ann, mut bob) = room_with_history(&edge);
    let mut carol = edge.connect("room", "carol", "carol-1");
    carol.send(&ClientFrame::Hello {
        after: Some(0),
        chain: None,
        bundles: false,
    });
    let sync = ClientFrame::Sync {
        after: Some(0),
        before: None,
        limit: limits::MAX_PAGE,
    };
    let mut latencies = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        // Carol: read what is there, then ask for everything again.
        carol.drain(Duration::from_millis(5));
        for _ in 0..10 {
            carol.send(&sync);
        }
        let i = latencies.len();
        latencies.push(timed_send(&mut bob, &format!("g{i}")));
    }
    latencies.sort();
    let streamed = carol.bytes_received();
    println!(
        "greedy reader: {} MiB read in 6 s; bystander send->sent p50/p99/max {:?}/{:?}/{:?} over {} sends",
        streamed >> 20,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
        latencies.len()
    );
    assert!(
        percentile(&latencies, 0.5) < Duration::from_millis(25),
        "{latencies:?}"
    );
    assert!(
        percentile(&latencies, 0.99) < Duration::from_millis(500),
        "{latencies:?}"
    );
}

// Item 2: after 7,000 device ids joined once, every `welcome` was 1.15 MB and
// no client could get in. Now cursors are per member user.
#[test]
fn welcome_stays_small_after_ten_thousand_devices_and_old_devices_are_forgotten() {
    const USERS: usize = 20;
    const DEVICES: usize = 10_000;
    let storage = fresh_storage("many-devices");
    let edge = Edge::start(&storage);
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..4 {
            let edge = &edge;
            s.spawn(move || {
                for i in (t..DEVICES).step_by(4) {
                    let user = format!("u{}", i % USERS);
                    let ws = edge.connect("crowd", &user, &format!("{user}-d{i}"));
                    drop(ws);
                }
            });
        }
    });
    println!("{DEVICES} devices joined in {:?}", start.elapsed());
    let s = stats(&edge, "crowd");
    assert!(s["devices"].as_u64().unwrap_or(0) >= DEVICES as u64, "{s}");

    let mut ann = Device::join(&edge, "crowd", "u0", "u0-fresh", Some(0));
    let welcome_len = ann.ws_mut().bytes_received();
    println!(
        "welcome with {} devices of {USERS} users: {welcome_len} bytes",
        s["devices"]
    );
    assert!(welcome_len < 8 * 1024, "welcome is {welcome_len} bytes");
    assert!(
        ann.cursors.len() <= USERS + 1,
        "{} cursors",
        ann.cursors.len()
    );
    // `delivered` is bounded the same way.
    let mut bob = Device::join(&edge, "crowd", "u1", "u1-fresh", Some(0));
    ann.send("hello", "hi");
    bob.pump_until(LONG, |d| d.watermark == 1);
    bob.pump_for(Duration::from_millis(300));
    let read = ann.ws_mut().bytes_received();
    ann.pump_until(LONG, |d| {
        d.cursor("u1", "u1-fresh").is_some_and(|c| c.through == 1)
    });
    assert!(
        ann.ws_mut().bytes_received() - read < 4 * 1024,
        "delivered is small"
    );
    drop((ann, bob, edge));

    // Retention: a restart with a 1 s retention forgets every device not seen
    // since (the two fresh ones reconnect after it).
    std::thread::sleep(Duration::from_millis(1_500));
    let edge = Edge::start_with_vars(&storage, &[("ACKLINE_DEVICE_RETENTION_MS", "1000")]);
    let _ann = Device::join(&edge, "crowd", "u0", "u0-fresh", Some(1));
    let s = stats(&edge, "crowd");
    println!("after retention: {s}");
    assert!(s["devices"].as_u64().unwrap_or(u64::MAX) <= 2, "{s}");
    assert_eq!(s["head"], 1, "messages are kept: {s}");
}

// Item 3: a token of mallory's with vic's device id closed vic's socket, had
// its send deduplicated against vic's, and forged vic's delivered tick.
#[test]
fn a_token_never_acts_for_another_users_device() {
    let edge = Edge::start(&fresh_storage("device-namespace"));
    let mut ann = Device::join(&edge, "room", "ann", "ann-1", Some(0));
    let mut vic = Device::join(&edge, "room", "vic", "shared", Some(0));
    vic.send("m1", "vic's own words");
    vic.pump_until(LONG, |d| d.sent.get("m1") == Some(&1) && d.watermark == 1);
    vic.pump_for(Duration::from_millis(300)); // acks 1
    ann.pump_until(LONG, |d| d.watermark == 1);
    ann.send("a1", "for vic");
    ann.pump_until(LONG, |d| d.sent.contains_key("a1"));
    // Vic stays silent from here: it stores and acks nothing more.

    let mut mallory = Device::join(&edge, "room", "mallory", "shared", Some(0));
    assert!(vic.is_open(), "mallory's connection did not replace vic's");
    mallory.send("m1", "forged");
    mallory.pump_until(LONG, |d| d.sent.contains_key("m1"));
    assert_eq!(
        mallory.sent["m1"], 3,
        "a new message of mallory's, not vic's seq 1"
    );
    mallory.pump_until(LONG, |d| d.watermark == 3);
    mallory.pump_for(Duration::from_millis(300)); // acks through 3
    ann.pump_for(Duration::from_millis(500));
    let vic_through = ann
        .cursors
        .values()
        .filter(|c| c.user == "vic")
        .map(|c| c.through)
        .max();
    assert_eq!(
        vic_through,
        Some(1),
        "vic stored only through 1: {:?}",
        ann.cursors
    );
    let page: serde_json::Value = serde_json::from_str(&history_of_room(&edge)).expect("JSON");
    assert_eq!(page["messages"][0]["user"], "vic");
    assert_eq!(page["messages"][0]["body"], "vic's own words");
    assert_eq!(page["messages"][2]["user"], "mallory");
}

/// How many times the edge built a conversation core (once per object start).
fn core_starts(edge: &Edge) -> usize {
    edge.log_text().matches(r#""event":"core_start""#).count()
}

// Item 4: each eviction rebuilt the core with no strikes, so violations spread
// over evictions never closed a connection (76 seen on one connection).
#[test]
fn strikes_survive_eviction() {
    let edge = Edge::start(&fresh_storage("eviction-strikes"));
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    let mut strikes = 0;
    let mut strike = |eve: &mut Device| {
        strikes += 1;
        eve.send_text(&format!("{{not json {strikes}"));
        eve.pump_until(LONG, |d| d.errors.len() == strikes);
        strikes
    };
    for _ in 0..10 {
        strike(&mut eve);
    }
    // Idle with only a hibernatable socket, workerd evicts the object (after
    // about 10 s when the machine is quiet); the next message rebuilds the
    // core from storage and the socket's attachment. Probe every 12 s.
    let starts = core_starts(&edge);
    let mut total = 10;
    while core_starts(&edge) == starts {
        assert!(
            total < 18,
            "the object was not evicted in {} idle periods of 12 s",
            total - 10
        );
        std::thread::sleep(Duration::from_secs(12));
        total = strike(&mut eve);
    }
    println!(
        "evicted: the core was rebuilt after {} idle periods of 12 s",
        total - 10
    );
    while total < 19 {
        total = strike(&mut eve);
    }
    assert!(eve.is_open(), "19 violations are tolerated");
    eve.send_text("{the twentieth");
    assert_eq!(
        eve.expect_close(),
        close::POLICY,
        "the 20th violation closes, counting those before the eviction"
    );
}

// Item 4: a device that never acked was re-pushed every ~34 s forever, as
// each eviction rebuilt the core with `retries: 0`.
#[test]
fn an_unacking_device_is_given_up_across_evictions() {
    let edge = Edge::start(&fresh_storage("eviction-retries"));
    let mut ann = Device::join(&edge, "room", "ann", "ann-1", Some(0));
    // A raw socket that never acks the push it gets.
    let mut mute = edge.connect("room", "mute", "mute-1");
    mute.send(&ClientFrame::Hello {
        after: Some(0),
        chain: None,
        bundles: false,
    });
    ann.send("p1", "are you there");
    ann.pump_until(LONG, |d| d.sent.contains_key("p1"));
    let starts = core_starts(&edge);
    let start = Instant::now();
    // Retransmissions back off 1, 2, 4, 8, 16, 30 s; the long gaps let the
    // object be evicted, and the 6th unanswered one closes.
    let code = mute
        .drain(Duration::from_secs(45))
        .expect("mute was neither pushed nor closed for 45 s");
    println!(
        "unacking device closed with {code} after {:?}; core starts {} -> {}",
        start.elapsed(),
        starts,
        core_starts(&edge)
    );
    assert_eq!(code, close::UNRESPONSIVE);
    assert!(
        start.elapsed() < Duration::from_secs(150),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(
        core_starts(&edge) > starts,
        "the object was never evicted; the test proved nothing"
    );
}

// Item 5: frames of 1-31 MiB were copied into wasm before the 64 KiB check,
// and at 32 MiB workerd logged an uncaught exception.
#[test]
fn oversized_messages_are_refused_before_they_are_copied() {
    let edge = Edge::start(&fresh_storage("oversized"));
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    let rss_before = edge.workerd_rss_kib();
    for mib in [1usize, 8, 31] {
        eve.send_text(&"x".repeat(mib << 20));
        eve.pump_until(LONG, |d| !d.errors.is_empty());
        match eve.errors.remove(0) {
            ServerFrame::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::FrameTooLarge);
                assert!(message.contains(&format!("{}", mib << 20)), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    eve.ws_mut().send_binary(vec![b'{'; 2 << 20]);
    eve.pump_until(LONG, |d| !d.errors.is_empty());
    assert!(matches!(
        eve.errors.remove(0),
        ServerFrame::Error {
            code: ErrorCode::FrameTooLarge,
            ..
        }
    ));
    println!(
        "oversized: workerd RSS {} -> {} MiB",
        rss_before / 1024,
        edge.workerd_rss_kib() / 1024
    );
    eve.send("ok", "still served");
    eve.pump_until(LONG, |d| d.sent.contains_key("ok"));
    assert!(
        !edge.log_text().contains("Uncaught"),
        "no uncaught exception in the edge log"
    );
}

// Item 5: permessage-deflate is switched off for the Worker (a 31 KiB deflated
// message could carry 31 MiB). `wrangler dev` puts a proxy of its own in front
// of the Worker that negotiates compression with clients regardless, so
// locally the refusal by length (above) is what holds; deployed, the flag does.
#[test]
fn the_worker_opts_out_of_compression() {
    let config = std::fs::read_to_string(ackline_tests::edge::repo_root().join("wrangler.toml"))
        .expect("wrangler.toml");
    let flags = config
        .lines()
        .find(|l| l.trim_start().starts_with("compatibility_flags"))
        .expect("compatibility_flags in wrangler.toml");
    assert!(flags.contains("\"no_web_socket_compression\""), "{flags}");
}

// Item 6: the smaller mismatches.
#[test]
fn frames_text_and_acks_are_checked_as_documented() {
    let edge = Edge::start(&fresh_storage("mismatches"));
    let mut eve = Device::join(&edge, "room", "eve", "eve-1", Some(0));
    let last_error = |d: &mut Device| {
        d.pump_until(LONG, |d| !d.errors.is_empty());
        match d.errors.remove(0) {
            ServerFrame::Error { code, id, .. } => (code, id),
            other => panic!("{other:?}"),
        }
    };
    // A binary message holding a valid frame is not executed.
    eve.ws_mut().send_binary(
        ClientFrame::Send {
            id: "bin".into(),
            body: "b".into(),
            after: None,
        }
        .encode()
        .into_bytes(),
    );
    assert_eq!(last_error(&mut eve), (ErrorCode::BadJson, None));
    // body_too_large names the message.
    let big = "y".repeat(limits::MAX_BODY_BYTES + 1);
    eve.send("big-1", &big);
    assert_eq!(
        last_error(&mut eve),
        (ErrorCode::BodyTooLarge, Some("big-1".into()))
    );
    // Selective ranges beyond the head are refused like a cumulative ack.
    eve.send("one", "1");
    eve.pump_until(LONG, |d| d.sent.contains_key("one"));
    eve.send_frame(&ClientFrame::Ack {
        seq: 0,
        ranges: vec![[5, 9]],
    });
    assert_eq!(last_error(&mut eve).0, ErrorCode::BadFrame);
    eve.send_frame(&ClientFrame::Ack {
        seq: 7,
        ranges: vec![],
    });
    assert_eq!(last_error(&mut eve).0, ErrorCode::BadFrame);
    // A real U+FFFD in a body travels escaped and is stored as sent.
    eve.send("fffd", "a \u{FFFD} b");
    eve.pump_until(LONG, |d| d.sent.contains_key("fffd"));
    eve.pump_until(LONG, |d| {
        d.messages.values().any(|m| m.body == "a \u{FFFD} b")
    });
    assert!(eve.is_open());

    // Invalid UTF-8 in a text message: close 1007 (RFC 6455 7.4.1).
    let mut raw = edge.connect("room", "mal", "mal-1");
    raw.send(&ClientFrame::Hello {
        after: Some(0),
        chain: None,
        bundles: false,
    });
    raw.send_raw_text_frame(
        b"{\"v\":1,\"type\":\"send\",\"id\":\"u\",\"body\":\"\xff\xfe\"}".to_vec(),
    );
    assert_eq!(raw.expect_close(|_| {}), close::INVALID_PAYLOAD);
    let page = history_of_room(&edge);
    assert!(
        !page.contains("\"u\""),
        "nothing of the invalid frame was stored: {page}"
    );
}

// Item 6: an open socket does not outlive its token.
#[test]
fn a_socket_is_closed_when_its_token_expires() {
    let edge = Edge::start(&fresh_storage("token-expiry"));
    // Expired 52 s ago: still inside the 60 s leeway, so it runs out in ~8 s.
    let token = mint(
        &Claims {
            sub: "ann",
            device: "ann-1",
            exp: unix_now() - 52,
            conversations: vec!["room"],
        },
        TEST_SECRET,
    );
    let mut ws = edge.connect_with_token("room", &token).expect("upgraded");
    ws.send(&ClientFrame::Hello {
        after: Some(0),
        chain: None,
        bundles: false,
    });
    // Accepted within the leeway (a refused token would be closed with 4401).
    assert!(
        matches!(ws.recv(), ServerFrame::Welcome { .. }),
        "welcomed within the leeway"
    );
    let start = Instant::now();
    assert_eq!(ws.expect_close(|_| {}), close::TOKEN_EXPIRED);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "closed after {:?}",
        start.elapsed()
    );
}

/// One HTTP history page of "room": its seqs, head and more.
fn http_page(edge: &Edge, query: &str) -> (Vec<u64>, u64, bool) {
    let auth = format!("Bearer {}", token_for("room", "ann", "ann-1"));
    let (status, body) = edge
        .http(
            "GET",
            &format!("/v1/conversations/room/messages?{query}"),
            &[("Authorization", &auth)],
            "",
        )
        .expect("history");
    assert_eq!(status, 200, "{query}: {body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("history JSON");
    let seqs = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect();
    (
        seqs,
        page["head"].as_u64().expect("head"),
        page["more"].as_bool().expect("more"),
    )
}

// HTTP history is served by the core's page reader: the same byte budget as a
// `sync` page (about 256 KiB), and `more` when the budget cut the page.
#[test]
fn http_history_pages_keep_the_byte_budget() {
    let edge = Edge::start(&fresh_storage("history-bytes"));
    let mut ann = Device::join(&edge, "room", "ann", "ann-1", Some(0));
    let body = "x".repeat(limits::MAX_BODY_BYTES);
    let history: Vec<(String, String)> = (0..40).map(|i| (format!("h{i}"), body.clone())).collect();
    ann.send_windowed(&history, 32, LONG);

    // Ascending from 0: cut at the end by bytes, well before the limit.
    let (first, head, more) = http_page(&edge, "after=0&limit=500");
    assert_eq!(head, 40);
    assert!(more, "a page cut by the byte budget says more");
    let n = first.len();
    assert!((10..40).contains(&n), "{n} messages of 16 KiB in one page");
    assert!(
        n * limits::MAX_BODY_BYTES <= limits::PAGE_BYTES,
        "{n} messages exceed the budget"
    );
    assert_eq!(first, (1..=n as u64).collect::<Vec<_>>());
    // Paging on reaches the head without a hole or a repeat.
    let mut seen = first;
    while let Some(&last) = seen.last().filter(|&&l| l < head) {
        let (page, _, more) = http_page(&edge, &format!("after={last}&limit=500"));
        assert!(!page.is_empty(), "after={last}");
        assert_eq!(page[0], last + 1);
        seen.extend(&page);
        assert_eq!(more, *seen.last().unwrap() < head, "more after {last}");
    }
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
    // The latest page, and one below a seq: cut at the start, keeping the newest.
    let (latest, _, more) = http_page(&edge, "");
    assert_eq!(latest.len(), n);
    assert_eq!(latest.last(), Some(&40));
    assert!(more);
    let (below, _, more) = http_page(&edge, "before=21");
    assert_eq!(below.last(), Some(&20));
    assert_eq!(below.len(), n.min(20));
    assert_eq!(more, n < 20);
    // Small pages are cut by the limit, as before.
    assert_eq!(
        http_page(&edge, "after=3&before=9&limit=2"),
        (vec![4, 5], 40, true)
    );
    assert_eq!(
        http_page(&edge, "after=3&before=6"),
        (vec![4, 5], 40, false)
    );
}
