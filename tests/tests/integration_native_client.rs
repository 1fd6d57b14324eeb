//! The real client core (`protocol::Client`) in a native shell
//! (tests/src/native_client.rs) against the real edge (wrangler dev on
//! workerd): fan-out to three users on four devices with delivery ticks, a
//! SIGKILL of the edge mid-stream, a device crash that loses unflushed
//! writes, and a fresh device paging back to seq 1. Every app view is checked
//! as it happens (nothing surfaced twice, out of order or with a hole) and at
//! the end against what the edge stores (read over HTTP).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ackline_tests::edge::{fresh_storage, Edge};
use ackline_tests::native_client::{
    drive, drive_for, edge_messages, NativeClient, Options, ABNORMAL,
};
use ackline_tests::protocol::client::{ClientError, MessageStatus};
use ackline_tests::protocol::StoredMessage;

const LONG: Duration = Duration::from_secs(30);

/// Options with reconnects backing off to at most `max_ms` (the default 15 s
/// ceiling would make a test wait for nothing after the edge is back).
fn fast_reconnect(user: &str, device: &str, max_ms: u64) -> Options {
    let mut config = NativeClient::config(user, device);
    config.reconnect_max = max_ms;
    Options {
        config: Some(config),
        ..Options::default()
    }
}

fn all_ready(clients: &[NativeClient]) -> bool {
    clients.iter().all(NativeClient::is_ready)
}

/// Sends `per_client` messages from every client, `burst` at a time per
/// client, stepping everyone in between so that sends, pushes and acks mix.
fn send_interleaved(clients: &mut [NativeClient], per_client: usize, burst: usize, tag: &str) {
    let mut i = 0;
    while i < per_client {
        for c in clients.iter_mut() {
            for k in i..(i + burst).min(per_client) {
                let body = format!("{tag} {k} from {}", c.name);
                c.send(&body);
            }
        }
        i += burst;
        drive_for(clients, Duration::from_millis(15));
    }
}

/// Everyone holds `total` messages and every durably queued own message is
/// delivered.
fn converged(total: u64) -> impl Fn(&[NativeClient]) -> bool {
    move |cs| {
        cs.iter()
            .all(|c| c.last_seq() == total && c.all_delivered())
    }
}

/// The end state against the edge's storage: one copy of every message,
/// seqs 1..=head; every app holds exactly the edge's messages; every own
/// message durably queued is delivered at the seq that holds it; a `send`
/// whose queueing was never durable was never stored. Returns the edge's messages.
fn assert_consistent(
    edge: &Edge,
    conversation: &str,
    clients: &[NativeClient],
) -> Vec<StoredMessage> {
    let server = edge_messages(edge, conversation);
    let seqs: Vec<u64> = server.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=server.len() as u64).collect::<Vec<_>>(),
        "the edge's seqs"
    );
    let mut keys = HashSet::new();
    for m in &server {
        assert!(
            keys.insert((&m.user, &m.device, &m.id)),
            "{}/{} {} stored twice",
            m.user,
            m.device,
            m.id
        );
    }
    for c in clients {
        eprintln!("  {}", c.summary());
        for e in &c.log.errors {
            eprintln!("    error {:?}", e);
        }
        for e in &c.log.closes {
            eprintln!("    close {:?}", e);
        }
    }
    let by_seq: BTreeMap<u64, StoredMessage> = server.iter().map(|m| (m.seq, m.clone())).collect();
    for c in clients {
        assert!(
            c.log.anomalies.is_empty(),
            "{}: {:?}",
            c.name,
            c.log.anomalies
        );
        assert!(
            c.log.unknown.is_empty(),
            "{}: unknown outputs {:?}",
            c.name,
            c.log.unknown
        );
        assert_eq!(
            c.all_messages(),
            by_seq,
            "{}: the app's messages differ from the edge's",
            c.name
        );
        let queued: HashSet<String> = c.queued_ids().into_iter().collect();
        for id in &c.sent {
            let stored = server
                .iter()
                .find(|m| &m.id == id && m.device == c.device());
            if !queued.contains(id) {
                // The outbox write was lost (a crash): the message never left.
                assert!(
                    stored.is_none(),
                    "{}: {id} was never durably queued, yet the edge stored it",
                    c.name
                );
                continue;
            }
            let stored = stored
                .unwrap_or_else(|| panic!("{}: queued message {id} is not on the edge", c.name));
            assert_eq!(
                c.log.last_status(id),
                Some(&MessageStatus::Delivered { seq: stored.seq }),
                "{}: {id} ends delivered at its seq",
                c.name
            );
            assert!(
                c.log
                    .status_of(id)
                    .iter()
                    .any(|s| matches!(s, MessageStatus::Sent { seq, .. } if *seq == stored.seq)),
                "{}: {id} was reported sent at {} before delivered: {:?}",
                c.name,
                stored.seq,
                c.log.status_of(id)
            );
        }
    }
    server
}

#[test]
fn three_users_four_native_clients_get_everything_once_in_order_and_delivered() {
    let started = Instant::now();
    let edge = Edge::start(&fresh_storage("native-team"));
    eprintln!("edge started in {:?}", started.elapsed());
    let conv = "native-team";
    let mut clients = vec![
        NativeClient::new(&edge, conv, "ann", "ann-laptop"),
        NativeClient::new(&edge, conv, "ann", "ann-phone"),
        NativeClient::new(&edge, conv, "bob", "bob-web"),
        NativeClient::new(&edge, conv, "cat", "cat-web"),
    ];
    drive(&mut clients, LONG, "everyone connected", all_ready);
    const N: usize = 30;
    send_interleaved(&mut clients, N, 3, "hello");
    let total = (N * clients.len()) as u64;
    drive(&mut clients, LONG, "everything shown", |cs| {
        cs.iter().all(|c| c.last_seq() == total)
    });
    drive(&mut clients, LONG, "everything delivered", converged(total));
    let server = assert_consistent(&edge, conv, &clients);
    assert_eq!(server.len() as u64, total);
    for c in &clients {
        // Started at 0: everything is live, nothing restored or paged.
        assert_eq!(
            c.shown_seqs(),
            (1..=total).collect::<Vec<_>>(),
            "{}",
            c.name
        );
        assert_eq!(
            c.log.connects, 1,
            "{}: one connection, never dropped: {:?}",
            c.name, c.log.closes
        );
        assert!(c.log.errors.is_empty(), "{}: {:?}", c.name, c.log.errors);
        for id in &c.sent {
            let statuses = c.log.status_of(id);
            assert!(
                matches!(
                    statuses.as_slice(),
                    [
                        MessageStatus::Pending,
                        MessageStatus::Sent { .. },
                        MessageStatus::Delivered { .. }
                    ]
                ),
                "{}: {id}: {statuses:?}",
                c.name
            );
        }
        // One device's messages are stored in the order its app sent them.
        let own: Vec<&String> = server
            .iter()
            .filter(|m| m.device == c.device())
            .map(|m| &m.id)
            .collect();
        assert_eq!(
            own,
            c.sent.iter().collect::<Vec<_>>(),
            "{}: send order",
            c.name
        );
    }
    eprintln!("fan-out test took {:?}", started.elapsed());
}

#[test]
fn edge_sigkill_mid_stream_loses_and_duplicates_nothing() {
    let started = Instant::now();
    let mut edge = Edge::start(&fresh_storage("native-kill"));
    let conv = "native-kill";
    let mut clients = vec![
        NativeClient::with_options(
            &edge,
            conv,
            "ann",
            "ann-1",
            fast_reconnect("ann", "ann-1", 1_000),
        ),
        NativeClient::with_options(
            &edge,
            conv,
            "bob",
            "bob-1",
            fast_reconnect("bob", "bob-1", 1_000),
        ),
        NativeClient::with_options(
            &edge,
            conv,
            "cat",
            "cat-1",
            fast_reconnect("cat", "cat-1", 1_000),
        ),
    ];
    drive(&mut clients, LONG, "everyone connected", all_ready);
    // 40 each at once: the window and the rate budget keep many in flight.
    for c in clients.iter_mut() {
        for k in 0..40 {
            c.send(&format!("before {k}"));
        }
    }
    drive(&mut clients, LONG, "some stored", |cs| {
        cs.iter().any(|c| c.last_seq() >= 30)
    });
    let confirmed = |c: &NativeClient| {
        c.sent
            .iter()
            .filter(|id| !matches!(c.log.last_status(id), None | Some(MessageStatus::Pending)))
            .count()
    };
    let confirmed_before: usize = clients.iter().map(confirmed).sum();
    edge.kill();
    // The apps go on sending while the edge is gone.
    for c in clients.iter_mut() {
        for k in 0..10 {
            c.send(&format!("during {k}"));
        }
    }
    drive_for(&mut clients, Duration::from_millis(700));
    // cat's device also crashes while the edge is down (writes durable at
    // once, so nothing is lost: it restarts from everything it had).
    assert_eq!(clients[2].crash(), 0);
    drive_for(&mut clients, Duration::from_millis(800));
    for c in &clients {
        assert!(
            c.log.closes.iter().any(|e| e.code == ABNORMAL),
            "{}: saw the edge die: {:?}",
            c.name,
            c.log.closes
        );
        assert!(!c.is_ready(), "{}", c.name);
    }
    edge.restart();
    let total = 3 * 50;
    drive(
        &mut clients,
        LONG,
        "everything delivered after the restart",
        converged(total),
    );
    let server = assert_consistent(&edge, conv, &clients);
    assert_eq!(server.len() as u64, total);
    assert!(
        confirmed_before < 120,
        "the kill came with sends in flight ({confirmed_before} of 120 confirmed)"
    );
    for c in &clients {
        assert!(c.log.connects >= 2, "{}: reconnected", c.name);
        assert_eq!(
            c.shown_seqs(),
            (1..=total).collect::<Vec<_>>(),
            "{}",
            c.name
        );
    }
    eprintln!("SIGKILL test took {:?}", started.elapsed());
}

#[test]
fn device_crash_restores_from_its_durable_snapshot_without_duplicates() {
    let started = Instant::now();
    let edge = Edge::start(&fresh_storage("native-crash"));
    let conv = "native-crash";
    // ann's writes take 30 ms to become durable: a crash loses the ones in flight.
    let slow_disk = Options {
        disk_delay: 30,
        ..Options::default()
    };
    let mut clients = vec![
        NativeClient::with_options(&edge, conv, "ann", "ann-laptop", slow_disk),
        NativeClient::new(&edge, conv, "bob", "bob-web"),
        NativeClient::new(&edge, conv, "cat", "cat-web"),
    ];
    drive(&mut clients, LONG, "everyone connected", all_ready);
    send_interleaved(&mut clients, 20, 4, "first");
    // ann's app calls send and the tab dies before the outbox write is durable.
    let lost_id = clients[0].send("never queued");
    let lost = clients[0].crash();
    assert!(lost >= 1, "the outbox write of {lost_id} was pending");
    // Back up, ann carries on while the others keep talking; then it crashes
    // again in the middle of receiving.
    send_interleaved(&mut clients, 10, 2, "second");
    drive_for(&mut clients, Duration::from_millis(40));
    let pending = clients[0].pending_writes();
    clients[0].crash();
    send_interleaved(&mut clients, 10, 5, "third");
    // Once ann's disk is idle, a send that never became `pending` never will.
    drive(&mut clients, LONG, "disks idle", |cs| {
        cs.iter().all(|c| c.pending_writes() == 0)
    });
    let queued: usize = clients.iter().map(|c| c.queued_ids().len()).sum();
    let total = queued as u64;
    drive(
        &mut clients,
        LONG,
        "everything delivered after the crashes",
        converged(total),
    );
    let server = assert_consistent(&edge, conv, &clients);
    assert_eq!(
        server.len(),
        queued,
        "every durably queued message stored once, nothing else"
    );
    assert!(!server.iter().any(|m| m.id == lost_id));
    let ann = &clients[0];
    assert_eq!(ann.lost_writes.len(), 2);
    assert!(
        ann.log.connects >= 3,
        "ann connected once per start: {}",
        ann.log.connects
    );
    assert!(
        ann.log.statuses.iter().any(|s| s.incarnation == 2),
        "the restored outbox went on reporting statuses"
    );
    for c in &clients[1..] {
        assert_eq!(
            c.shown_seqs(),
            (1..=total).collect::<Vec<_>>(),
            "{}",
            c.name
        );
    }
    eprintln!(
        "statuses repeated after a crash: {:?}",
        ann.log.repeated_after_crash
    );
    eprintln!(
        "crash test took {:?} (second crash lost {pending} pending writes)",
        started.elapsed()
    );
}

#[test]
fn fresh_device_gets_the_latest_page_and_loads_history_to_seq_1() {
    let started = Instant::now();
    let edge = Edge::start(&fresh_storage("native-fresh"));
    let conv = "native-fresh";
    let mut clients = vec![
        NativeClient::new(&edge, conv, "ann", "ann-1"),
        NativeClient::new(&edge, conv, "bob", "bob-1"),
    ];
    drive(&mut clients, LONG, "everyone connected", all_ready);
    send_interleaved(&mut clients, 80, 10, "old");
    let head = 160;
    drive(&mut clients, LONG, "history written", converged(head));

    // A new user's first device: it starts at the latest page (50). Its
    // history pages are 40 messages, so paging back takes several requests.
    let mut config = NativeClient::config("dan", "dan-tablet");
    config.page = 40;
    let options = Options {
        config: Some(config),
        ..Options::default()
    };
    clients.push(NativeClient::with_options(
        &edge,
        conv,
        "dan",
        "dan-tablet",
        options,
    ));
    drive(&mut clients, LONG, "dan has the latest page", |cs| {
        cs[2].last_seq() == head
    });
    let first = clients[2].shown_seqs()[0];
    assert_eq!(first, head - 49, "the latest page of 50");
    assert_eq!(clients[2].shown_seqs(), (first..=head).collect::<Vec<_>>());
    assert!(!clients[2].core().history_complete());

    // Paging back, one `load_older` at a time.
    let mut pages = 0;
    loop {
        let asked = match clients[2].load_older() {
            Ok(asked) => asked,
            Err(ClientError::Offline) => {
                drive(&mut clients, LONG, "dan reconnected", |cs| cs[2].is_ready());
                continue;
            }
            Err(e) => panic!("load_older: {e}"),
        };
        if !asked {
            break;
        }
        let before = (
            clients[2].log.history.len(),
            clients[2].log.history_failures.len(),
        );
        drive(&mut clients, LONG, "an older page", |cs| {
            (cs[2].log.history.len(), cs[2].log.history_failures.len()) != before
        });
        pages += 1;
        assert!(pages < 20, "history does not end");
    }
    let dan = &clients[2];
    assert!(
        dan.log.history_failures.is_empty(),
        "{:?}",
        dan.log.history_failures
    );
    assert!(dan.core().history_complete());
    assert!(
        pages >= 3,
        "110 older messages in pages of 40: {pages} requests"
    );
    assert_eq!(dan.log.history_more, Some(false));
    let history: Vec<u64> = dan.log.history.iter().map(|m| m.seq).collect();
    assert_eq!(
        history,
        (1..first).collect::<Vec<_>>(),
        "history pages reach seq 1, each seq once"
    );

    // Live traffic goes on, now with dan a member: delivered waits for dan too.
    for c in clients.iter_mut() {
        for k in 0..5 {
            c.send(&format!("new {k}"));
        }
    }
    let total = head + 15;
    drive(
        &mut clients,
        LONG,
        "new messages delivered to all three",
        converged(total),
    );
    assert_consistent(&edge, conv, &clients);
    eprintln!(
        "fresh-device test took {:?} ({pages} history requests)",
        started.elapsed()
    );
}

#[test]
fn network_loss_holds_sends_and_reconnects_at_once_when_it_returns() {
    let started = Instant::now();
    let edge = Edge::start(&fresh_storage("native-offline"));
    let conv = "native-offline";
    let mut clients = vec![
        NativeClient::new(&edge, conv, "ann", "ann-1"),
        NativeClient::new(&edge, conv, "bob", "bob-1"),
    ];
    drive(&mut clients, LONG, "everyone connected", all_ready);
    send_interleaved(&mut clients, 10, 5, "online");
    drive(
        &mut clients,
        LONG,
        "first messages delivered",
        converged(20),
    );

    // bob's network goes: the socket is gone without a close frame.
    clients[1].set_online(false);
    let connects = clients[1].log.connects;
    let attempts = clients[1].log.closes.len();
    send_interleaved(&mut clients, 10, 5, "meanwhile");
    drive_for(&mut clients, Duration::from_millis(1_000));
    assert!(!clients[1].is_ready());
    assert_eq!(
        clients[1].log.connects, connects,
        "no socket opened while offline"
    );
    let offline_attempts = clients[1].log.closes.len() - attempts;
    // ann's messages wait for bob's cursor; bob's wait in its outbox.
    assert!(!clients[0].all_delivered());
    assert_eq!(clients[1].core().outbox_len(), 10, "bob's sends are queued");

    // Back online: the core asks for a socket at once, not after its backoff.
    let back = Instant::now();
    clients[1].set_online(true);
    drive(&mut clients, LONG, "bob reconnected", |cs| cs[1].is_ready());
    let reconnect = back.elapsed();
    assert!(
        reconnect < Duration::from_secs(2),
        "reconnected {reconnect:?} after the network came back"
    );
    drive(&mut clients, LONG, "everything delivered", converged(40));
    assert_consistent(&edge, conv, &clients);
    assert_eq!(clients[1].shown_seqs(), (1..=40).collect::<Vec<_>>());
    eprintln!(
        "offline test took {:?} ({offline_attempts} connect attempts while offline, reconnect in {reconnect:?}, links {:?})",
        started.elapsed(),
        clients[1].log.links
    );
}
