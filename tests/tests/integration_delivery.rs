//! Delivery through the real edge (wrangler dev / workerd, Durable Object with
//! SQLite): multi-member fan-out, idempotent resends across restarts, gap-fill
//! in pages, fresh devices paging back, SIGKILL mid-stream, conversation isolation.

use std::time::Duration;

use ackline_tests::device::{pump_all, Device};
use ackline_tests::edge::{fresh_storage, Edge};

const LONG: Duration = Duration::from_secs(60);

fn assert_complete(d: &Device, head: u64) {
    assert_eq!(
        d.watermark, head,
        "{} holds 1..={} of {head}",
        d.name, d.watermark
    );
    let seqs: Vec<u64> = d.messages.keys().copied().collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "{}: seqs", d.name);
}

#[test]
fn three_members_four_devices_get_everything_once_in_order() {
    let edge = Edge::start(&fresh_storage("delivery"));
    let conv = "team";
    let mut devices = vec![
        Device::join(&edge, conv, "ann", "ann-laptop", Some(0)),
        Device::join(&edge, conv, "ann", "ann-phone", Some(0)),
        Device::join(&edge, conv, "bob", "bob-web", Some(0)),
        Device::join(&edge, conv, "cat", "cat-web", Some(0)),
    ];
    const PER_DEVICE: usize = 25;
    for i in 0..PER_DEVICE {
        for d in devices.iter_mut() {
            let id = format!("{}-{i}", d.name);
            d.send(&id, &format!("message {i} from {}", d.name));
        }
    }
    let total = (PER_DEVICE * devices.len()) as u64;
    pump_all(&mut devices, LONG, |d| {
        d.watermark == total && d.sent.len() == PER_DEVICE
    });
    for d in &devices {
        assert_complete(d, total);
        // Every confirmed seq holds the message that device sent under that id.
        for (id, seq) in &d.sent {
            let m = &d.messages[seq];
            assert_eq!((&m.id, &m.device), (id, &d.name));
        }
    }
    // Everyone's cursor reaches the head, and every device hears about it:
    // cursors are announced per user (the furthest of that user's devices),
    // plus each device's own.
    pump_all(&mut devices, LONG, |d| {
        let own = d
            .cursors
            .values()
            .any(|c| c.device == d.name && c.through == total);
        own && ["ann", "bob", "cat"].iter().all(|user| {
            d.cursors
                .values()
                .any(|c| c.user == *user && c.through == total)
        })
    });
    // The same order everywhere: same seq -> same message.
    for d in &devices[1..] {
        assert_eq!(d.messages, devices[0].messages);
    }
}

#[test]
fn resend_is_idempotent_across_restart_and_gap_fill_pages_thousands() {
    let mut edge = Edge::start(&fresh_storage("gapfill"));
    let conv = "big";
    let mut ann = Device::join(&edge, conv, "ann", "ann-1", Some(0));
    const COUNT: usize = 2_500;
    let batch: Vec<(String, String)> = (0..COUNT)
        .map(|i| (format!("m{i}"), format!("body {i}")))
        .collect();
    ann.send_windowed(&batch, 64, LONG);
    let first_seq = ann.sent["m0"];
    // A retry returns the same seq and stores nothing new.
    ann.send("m0", "body 0");
    ann.pump_for(Duration::from_millis(300));
    assert_eq!(ann.sent["m0"], first_seq);

    edge.restart();
    let mut ann = Device::join(&edge, conv, "ann", "ann-1", Some(COUNT as u64));
    assert_eq!(
        ann.welcome_head, COUNT as u64,
        "nothing new was stored, everything survived"
    );
    ann.send("m0", "body 0");
    ann.send("m1", "body 1");
    ann.pump_until(LONG, |d| d.sent.len() == 2);
    assert_eq!(ann.sent["m0"], first_seq, "dedup holds after a restart");

    // A device that stopped at 100 gets exactly the missing messages, in pages.
    let mut bob = Device::join(&edge, conv, "bob", "bob-1", Some(100));
    bob.pump_until(LONG, |d| d.watermark == COUNT as u64);
    assert_eq!(bob.messages.len(), COUNT - 100);
    assert_eq!(*bob.messages.keys().next().unwrap(), 101);
    assert!(
        bob.pages >= 5,
        "{} pages for {} messages",
        bob.pages,
        COUNT - 100
    );
    assert_eq!(bob.duplicates, 0);

    // A fresh device gets the latest page and can page back to seq 1.
    let mut cat = Device::join(&edge, conv, "cat", "cat-1", None);
    cat.pump_until(LONG, |d| !d.messages.is_empty());
    let mut oldest = *cat.messages.keys().next().unwrap();
    assert!(oldest > 1 && *cat.messages.keys().last().unwrap() == COUNT as u64);
    while oldest > 1 {
        cat.sync_before(oldest, 500);
        cat.pump_until(LONG, |d| *d.messages.keys().next().unwrap() < oldest);
        oldest = *cat.messages.keys().next().unwrap();
    }
    assert_eq!(cat.messages.len(), COUNT);
}

#[test]
fn sigkill_mid_stream_loses_nothing_confirmed() {
    let mut edge = Edge::start(&fresh_storage("kill"));
    let conv = "crash";
    let mut ann = Device::join(&edge, conv, "ann", "ann-1", Some(0));
    const COUNT: usize = 400;
    // Up to 150 sends in flight (within the rate burst), then kill workerd
    // while many are unconfirmed.
    for i in 0..150 {
        ann.send(&format!("k{i}"), "x");
    }
    ann.pump_until(LONG, |d| d.sent.len() >= 20);
    edge.kill();
    let confirmed = ann.sent.clone();
    edge.restart();

    // The client retries everything it has no `sent` for, with the same ids.
    let mut ann2 = Device::join(&edge, conv, "ann", "ann-1", Some(0));
    let retries: Vec<(String, String)> = (0..COUNT)
        .map(|i| format!("k{i}"))
        .filter(|id| !confirmed.contains_key(id))
        .map(|id| (id, "x".to_owned()))
        .collect();
    ann2.send_windowed(&retries, 64, LONG);
    ann2.pump_until(LONG, |d| d.watermark == COUNT as u64);
    // Every confirmed message is there with its seq; seqs are contiguous; each id once.
    for (id, seq) in &confirmed {
        assert_eq!(&ann2.messages[seq].id, id, "confirmed {id} lost or moved");
    }
    assert_complete(&ann2, COUNT as u64);
    let mut ids: Vec<&str> = ann2.messages.values().map(|m| m.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), COUNT, "each message stored once");
}

#[test]
fn conversations_are_isolated_and_history_and_stats_routes_answer() {
    let edge = Edge::start(&fresh_storage("isolation"));
    let mut a = Device::join(&edge, "room-a", "ann", "ann-1", Some(0));
    let mut b = Device::join(&edge, "room-b", "bob", "bob-1", Some(0));
    a.send("a1", "for room a");
    b.send("b1", "for room b");
    a.pump_until(LONG, |d| d.watermark == 1);
    b.pump_until(LONG, |d| d.watermark == 1);
    a.pump_for(Duration::from_millis(300));
    assert_eq!(a.messages.len(), 1);
    assert_eq!(a.messages[&1].body, "for room a");
    assert_eq!(b.messages[&1].body, "for room b");

    let token = ackline_tests::edge::token_for("room-a", "ann", "ann-1");
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let (status, body) = edge
        .http(
            "GET",
            "/v1/conversations/room-a/messages?after=0&limit=10",
            &headers,
            "",
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["messages"][0]["body"], "for room a");
    assert_eq!(page["head"], 1);
    let (status, _) = edge
        .http(
            "GET",
            "/v1/conversations/room-b/messages?after=0",
            &headers,
            "",
        )
        .unwrap();
    assert_eq!(status, 403, "a room-a token cannot read room-b");
    let (status, body) = edge
        .http(
            "GET",
            "/v1/conversations/room-a/messages?limit=0",
            &headers,
            "",
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    let (status, body) = edge
        .http("GET", "/v1/conversations/room-a/stats", &headers, "")
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["head"], 1);
    assert_eq!(stats["connections"], 1);
}
