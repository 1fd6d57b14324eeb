//! Session tests in headless Chromium against a real edge (wrangler dev on
//! workerd). scripts/test.sh starts the edge and compiles its URL in through
//! ACKLINE_EDGE_URL; without it these tests fail, they are never skipped.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use ackline::{Ackline, Conversation};
use hmac::{Hmac, Mac};
use js_sys::{Function, Reflect};
use sha2::Sha256;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Must match TEST_SECRET in tests/browser/lib/edge.mjs.
const TEST_SECRET: &[u8] = b"ackline-test-secret-not-for-production";

fn edge_url() -> &'static str {
    option_env!("ACKLINE_EDGE_URL")
        .expect("ACKLINE_EDGE_URL is not set: run these tests through scripts/test.sh, which starts an edge")
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 JWT for `user` on `device`, valid for an hour in `conversations`.
fn token(user: &str, device: &str, conversations: &[&str]) -> String {
    let exp = (js_sys::Date::now() / 1000.0) as u64 + 3600;
    let claims = serde_json::json!({ "sub": user, "device": device, "exp": exp, "conversations": conversations });
    let input = format!(
        "{}.{}",
        b64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(TEST_SECRET).expect("hmac key");
    mac.update(input.as_bytes());
    format!("{input}.{}", b64url(&mac.finalize().into_bytes()))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

async fn open(user: &str, device: &str, conv: &str, db: &str) -> Ackline {
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &edge_url().into()).unwrap();
    Reflect::set(
        &options,
        &"token".into(),
        &token(user, device, &[conv]).into(),
    )
    .unwrap();
    Reflect::set(&options, &"dbName".into(), &db.into()).unwrap();
    Ackline::open(options.into()).await.expect("open client")
}

/// A listener that keeps every event it gets, handed to `register`.
fn recorder(register: impl FnOnce(Function)) -> Rc<RefCell<Vec<JsValue>>> {
    let seen: Rc<RefCell<Vec<JsValue>>> = Rc::default();
    let sink = seen.clone();
    let f = Closure::<dyn FnMut(JsValue)>::new(move |v: JsValue| sink.borrow_mut().push(v));
    register(f.as_ref().unchecked_ref::<Function>().clone());
    f.forget();
    seen
}

/// Collects a conversation's events of one kind.
fn collect(conv: &Conversation, event: &str) -> Rc<RefCell<Vec<JsValue>>> {
    recorder(|f| conv.on(event.into(), f))
}

fn field(v: &JsValue, name: &str) -> JsValue {
    Reflect::get(v, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

fn seq_of(v: &JsValue) -> u64 {
    field(v, "seq").as_f64().unwrap_or(-1.0) as u64
}

async fn sleep(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

async fn wait_until(what: &str, timeout_ms: f64, mut done: impl FnMut() -> bool) {
    let start = js_sys::Date::now();
    while !done() {
        assert!(
            js_sys::Date::now() - start < timeout_ms,
            "timed out waiting for {what}"
        );
        sleep(20).await;
    }
}

async fn delete_db(name: &str) {
    if let Ok(factory) = idb::Factory::new() {
        if let Ok(request) = factory.delete(name) {
            let _ = request.await;
        }
    }
}

fn assert_in_order_once(received: &[JsValue], count: u64) {
    let seqs: Vec<u64> = received.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "each seq once, in order"
    );
}

#[wasm_bindgen_test]
async fn two_clients_exchange_messages_with_ticks() {
    let conv_id = unique("pair");
    let (db_a, db_b) = (unique("db-a"), unique("db-b"));
    let a = open("ann", "ann-web", &conv_id, &db_a).await;
    let b = open("bob", "bob-web", &conv_id, &db_b).await;
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    let cb = b.conversation(conv_id.clone()).await.unwrap();
    let got_a = collect(&ca, "message");
    let got_b = collect(&cb, "message");
    let updates = collect(&ca, "update");
    let mut results = Vec::new();
    for i in 0..20 {
        results.push(JsFuture::from(ca.send(format!("hello {i}"))));
    }
    for (i, r) in results.into_iter().enumerate() {
        let sent = r.await.expect("send resolves");
        assert_eq!(seq_of(&sent), i as u64 + 1, "sends keep their order");
    }
    let reply = JsFuture::from(cb.send("hi ann".into())).await.unwrap();
    assert_eq!(seq_of(&reply), 21);
    wait_until("both sides hold 21 messages", 20_000.0, || {
        got_a.borrow().len() == 21 && got_b.borrow().len() == 21
    })
    .await;
    assert_in_order_once(&got_a.borrow(), 21);
    assert_in_order_once(&got_b.borrow(), 21);
    assert_eq!(
        field(&got_b.borrow()[0], "body").as_string().unwrap(),
        "hello 0"
    );
    assert_eq!(field(&got_a.borrow()[0], "mine").as_bool(), Some(true));
    assert_eq!(field(&got_b.borrow()[0], "mine").as_bool(), Some(false));
    wait_until("all 20 delivered ticks", 20_000.0, || {
        updates
            .borrow()
            .iter()
            .filter(|u| field(u, "status").as_string().as_deref() == Some("delivered"))
            .count()
            == 20
    })
    .await;
    // Own messages carry their status; others' do not.
    assert!(matches!(
        field(&got_a.borrow()[0], "status").as_string().as_deref(),
        Some("sent" | "delivered")
    ));
    assert!(field(&got_b.borrow()[0], "status").is_undefined());
    // After a reload the stored messages still say they were delivered.
    a.close();
    let a2 = open("ann", "ann-web", &conv_id, &db_a).await;
    let ca2 = a2.conversation(conv_id.clone()).await.unwrap();
    let options = js_sys::Object::new();
    js_sys::Reflect::set(&options, &"limit".into(), &JsValue::from(50)).unwrap();
    let result = JsFuture::from(ca2.history(options.into())).await.unwrap();
    assert_eq!(
        field(&result, "more").as_bool(),
        Some(false),
        "history reaches seq 1"
    );
    let page = js_sys::Array::from(&result);
    assert_eq!(page.length(), 21);
    for m in page.iter() {
        let status = field(&m, "status").as_string();
        if field(&m, "mine").as_bool() == Some(true) {
            assert_eq!(
                status.as_deref(),
                Some("delivered"),
                "own message {}",
                seq_of(&m)
            );
        } else {
            assert_eq!(status, None);
        }
    }
    a2.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}

#[wasm_bindgen_test]
async fn outbox_survives_closing_and_is_sent_once_after_reopening() {
    let conv_id = unique("outbox");
    let (db_a, db_b) = (unique("db-a"), unique("db-b"));
    let a = open("ann", "ann-web", &conv_id, &db_a).await;
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    a.set_online(false);
    let durable = collect(&ca, "update");
    let mut sends = Vec::new();
    for i in 0..5 {
        sends.push(ca.send(format!("queued {i}")));
    }
    wait_until("5 outbox writes durable", 10_000.0, || {
        durable.borrow().len() == 5
    })
    .await;
    a.close();
    for p in sends {
        let err = JsFuture::from(p)
            .await
            .expect_err("closing rejects unfinished sends");
        assert_eq!(field(&err, "code").as_string().as_deref(), Some("closed"));
    }

    let a2 = open("ann", "ann-web", &conv_id, &db_a).await;
    let ca2 = a2.conversation(conv_id.clone()).await.unwrap();
    let pending = js_sys::Array::from(&ca2.pending());
    assert_eq!(
        pending.length(),
        5,
        "the reopened client lists its queued messages"
    );
    let b = open("bob", "bob-web", &conv_id, &db_b).await;
    let cb = b.conversation(conv_id.clone()).await.unwrap();
    let got_b = collect(&cb, "message");
    wait_until("bob holds the 5 queued messages", 20_000.0, || {
        got_b.borrow().len() >= 5
    })
    .await;
    sleep(500).await;
    assert_in_order_once(&got_b.borrow(), 5);
    let bodies: Vec<String> = got_b
        .borrow()
        .iter()
        .map(|m| field(m, "body").as_string().unwrap())
        .collect();
    assert_eq!(
        bodies,
        (0..5).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
    wait_until("outbox empty", 10_000.0, || ca2.outbox_size() == 0).await;
    a2.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}

#[wasm_bindgen_test]
async fn offline_client_catches_up_on_2000_messages_once_in_order() {
    const COUNT: u64 = 2_000;
    let conv_id = unique("catchup");
    let (db_a, db_b) = (unique("db-a"), unique("db-b"));
    let a = open("ann", "ann-web", &conv_id, &db_a).await;
    let b = open("bob", "bob-web", &conv_id, &db_b).await;
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    let cb = b.conversation(conv_id.clone()).await.unwrap();
    let got_b = collect(&cb, "message");
    // Bob is connected once (so he is a member from seq 1), then goes offline.
    JsFuture::from(ca.send("first".into())).await.unwrap();
    wait_until("bob has the first message", 10_000.0, || {
        got_b.borrow().len() == 1
    })
    .await;
    b.set_online(false);
    let mut last = None;
    for i in 1..COUNT {
        last = Some(ca.send(format!("m{i}")));
    }
    JsFuture::from(last.unwrap()).await.unwrap();
    let start = js_sys::Date::now();
    b.set_online(true);
    wait_until("bob caught up", 60_000.0, || {
        got_b.borrow().len() as u64 >= COUNT
    })
    .await;
    let elapsed = js_sys::Date::now() - start;
    web_sys::console::log_1(&format!("catch-up of {} messages: {elapsed:.0} ms", COUNT - 1).into());
    sleep(300).await;
    assert_in_order_once(&got_b.borrow(), COUNT);
    a.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}

/// The seqs of `conv`'s stored messages in IndexedDB `db`, and the outbox
/// record ids with whether each has a seq (read through a connection of its own).
async fn stored_seqs(db: &str, conv: &str) -> (Vec<u64>, Vec<(String, bool)>) {
    let database = idb::Factory::new()
        .unwrap()
        .open(db, None)
        .unwrap()
        .await
        .expect("open db");
    let tx = database
        .transaction(&["pages", "outbox"], idb::TransactionMode::ReadOnly)
        .unwrap();
    let range = idb::KeyRange::bound(
        &js_sys::Array::of2(&conv.into(), &JsValue::from(0)).into(),
        &js_sys::Array::of2(&conv.into(), &JsValue::from(f64::INFINITY)).into(),
        None,
        None,
    )
    .unwrap();
    let pages = tx
        .object_store("pages")
        .unwrap()
        .index("by_bucket")
        .unwrap()
        .get_all(Some(range.into()), None)
        .unwrap()
        .await
        .unwrap();
    let outbox = tx
        .object_store("outbox")
        .unwrap()
        .get_all(None, None)
        .unwrap()
        .await
        .unwrap();
    database.close();
    let outbox = outbox
        .iter()
        .map(|e| {
            (
                field(e, "id").as_string().unwrap(),
                field(e, "seq").as_f64().is_some(),
            )
        })
        .collect();
    // Every stored copy, so that a message stored twice would show.
    let mut seqs = Vec::new();
    for page in &pages {
        let messages = js_sys::JSON::parse(&field(page, "messages").as_string().unwrap()).unwrap();
        seqs.extend(js_sys::Array::from(&messages).iter().map(|m| seq_of(&m)));
    }
    seqs.sort_unstable();
    (seqs, outbox)
}

#[wasm_bindgen_test]
async fn reset_inbox_rebuilds_from_the_server_and_keeps_the_outbox() {
    let conv_id = unique("reset");
    let db = unique("db-a");
    let a = open("ann", "ann-web", &conv_id, &db).await;
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    assert!(ca.diverged().is_null(), "no divergence to begin with");
    let got = collect(&ca, "message");
    for i in 0..5 {
        JsFuture::from(ca.send(format!("before {i}")))
            .await
            .expect("stored");
    }
    wait_until("5 messages shown", 10_000.0, || got.borrow().len() == 5).await;
    // Offline, two more wait in the outbox while the inbox is reset.
    a.set_online(false);
    let updates = collect(&ca, "update");
    let queued: Vec<_> = (0..2)
        .map(|i| JsFuture::from(ca.send(format!("queued {i}"))))
        .collect();
    wait_until("2 outbox writes durable", 10_000.0, || {
        updates.borrow().len() == 2
    })
    .await;
    let (_, outbox_before) = stored_seqs(&db, &conv_id).await;
    // All seven wait for delivery (ann is alone); the seq of a `sent` is not
    // written to the outbox (the inbox holds it), so none has one on disk.
    assert_eq!(outbox_before.len(), 7);
    assert!(
        outbox_before.iter().all(|(_, sent)| !sent),
        "{outbox_before:?}"
    );
    got.borrow_mut().clear();
    JsFuture::from(ca.reset_inbox())
        .await
        .expect("reset resolves");
    let (seqs, outbox) = stored_seqs(&db, &conv_id).await;
    assert_eq!(seqs, Vec::<u64>::new(), "the stored inbox is gone");
    assert_eq!(outbox, outbox_before, "the outbox is kept");
    assert!(ca.diverged().is_null());
    a.set_online(true);
    for q in queued {
        JsFuture::from(q)
            .await
            .expect("queued messages are sent after the reset");
    }
    wait_until("7 messages shown again", 20_000.0, || {
        got.borrow().len() == 7
    })
    .await;
    sleep(300).await;
    assert_in_order_once(&got.borrow(), 7);
    let bodies: Vec<String> = got
        .borrow()
        .iter()
        .map(|m| field(m, "body").as_string().unwrap())
        .collect();
    assert_eq!(&bodies[5..], ["queued 0", "queued 1"]);
    let (seqs, _) = stored_seqs(&db, &conv_id).await;
    assert_eq!(
        seqs,
        (1..=7).collect::<Vec<_>>(),
        "IndexedDB holds the server's history again"
    );
    a.close();
    let err = JsFuture::from(ca.reset_inbox())
        .await
        .expect_err("no reset after close");
    assert_eq!(field(&err, "code").as_string().as_deref(), Some("closed"));
    delete_db(&db).await;
}

/// Client-level events of one kind (`status`, `error`).
fn collect_client(client: &Ackline, event: &str) -> Rc<RefCell<Vec<JsValue>>> {
    recorder(|f| client.on(event.into(), f))
}

fn last_state(statuses: &Rc<RefCell<Vec<JsValue>>>) -> (Option<String>, Option<String>) {
    let list = statuses.borrow();
    let Some(s) = list.last() else {
        return (None, None);
    };
    let code = field(&field(s, "lastError"), "code").as_string();
    (field(s, "state").as_string(), code)
}

/// A JWT for `user` signed with the wrong secret: readable by the client,
/// refused by the edge.
fn badly_signed_token(user: &str, device: &str, conversations: &[&str]) -> String {
    let good = token(user, device, conversations);
    let (rest, _sig) = good.rsplit_once('.').expect("a JWT");
    format!("{rest}.{}", b64url(b"not the right signature, not at all"))
}

#[wasm_bindgen_test]
async fn a_refused_token_is_asked_for_once_more_then_the_status_is_auth() {
    let conv_id = unique("auth");
    let db = unique("db-auth");
    let calls = Rc::new(RefCell::new(0u32));
    let counter = calls.clone();
    let conv_for_token = conv_id.clone();
    let callback = Closure::<dyn FnMut() -> JsValue>::new(move || {
        *counter.borrow_mut() += 1;
        JsValue::from(badly_signed_token("ann", "ann-web", &[&conv_for_token]))
    });
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &edge_url().into()).unwrap();
    Reflect::set(&options, &"token".into(), callback.as_ref()).unwrap();
    Reflect::set(&options, &"dbName".into(), &db.clone().into()).unwrap();
    let a = Ackline::open(options.into()).await.expect("open client");
    callback.forget();
    let statuses = collect_client(&a, "status");
    let _conv = a.conversation(conv_id.clone()).await.unwrap();
    wait_until("status auth", 15_000.0, || {
        last_state(&statuses).0.as_deref() == Some("auth")
    })
    .await;
    assert_eq!(last_state(&statuses).1.as_deref(), Some("unauthorized"));
    // One call to read the identity, one per connect: the first and its
    // one retry with a fresh token. Then no storm.
    assert_eq!(*calls.borrow(), 3);
    sleep(2_000).await;
    assert_eq!(*calls.borrow(), 3, "no reconnects after the auth failure");
    assert_eq!(last_state(&statuses).0.as_deref(), Some("auth"));
    a.close();
    delete_db(&db).await;
}

#[wasm_bindgen_test]
async fn a_token_without_the_conversation_stops_with_forbidden() {
    let conv_id = unique("forbidden");
    let db = unique("db-forbidden");
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &edge_url().into()).unwrap();
    Reflect::set(
        &options,
        &"token".into(),
        &token("ann", "ann-web", &["elsewhere"]).into(),
    )
    .unwrap();
    Reflect::set(&options, &"dbName".into(), &db.clone().into()).unwrap();
    let a = Ackline::open(options.into()).await.expect("open client");
    let statuses = collect_client(&a, "status");
    let _conv = a.conversation(conv_id).await.unwrap();
    wait_until("status stopped", 15_000.0, || {
        last_state(&statuses).0.as_deref() == Some("stopped")
    })
    .await;
    assert_eq!(last_state(&statuses).1.as_deref(), Some("forbidden"));
    a.close();
    delete_db(&db).await;
}

#[wasm_bindgen_test]
async fn history_rejects_offline_and_says_when_there_is_more() {
    let conv_id = unique("older");
    let (db_a, db_b) = (unique("db-a"), unique("db-b"));
    let b = open("bob", "bob-web", &conv_id, &db_b).await;
    let cb = b.conversation(conv_id.clone()).await.unwrap();
    let mut sends = Vec::new();
    for i in 0..80 {
        sends.push(JsFuture::from(cb.send(format!("old {i}"))));
    }
    for s in sends {
        s.await.expect("stored");
    }
    // A fresh device starts with the latest page only.
    let a = open("ann", "ann-web", &conv_id, &db_a).await;
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    let got = collect(&ca, "message");
    wait_until("the latest page", 15_000.0, || {
        got.borrow().iter().any(|m| seq_of(m) == 80)
    })
    .await;
    let first = seq_of(&got.borrow()[0]);
    assert!(first > 1, "started at {first}");
    let options = js_sys::Object::new();
    Reflect::set(&options, &"before".into(), &JsValue::from(first as f64)).unwrap();
    Reflect::set(&options, &"limit".into(), &JsValue::from(50)).unwrap();
    a.set_online(false);
    let err = JsFuture::from(ca.history(options.clone().into()))
        .await
        .expect_err("offline");
    assert_eq!(field(&err, "code").as_string().as_deref(), Some("offline"));
    a.set_online(true);
    let statuses = collect_client(&a, "status");
    wait_until("open again", 15_000.0, || {
        last_state(&statuses).0.as_deref() == Some("open")
    })
    .await;
    let page = JsFuture::from(ca.history(options.into()))
        .await
        .expect("online: a page");
    let seqs: Vec<u64> = js_sys::Array::from(&page)
        .iter()
        .map(|m| seq_of(&m))
        .collect();
    assert_eq!(
        seqs,
        (first.saturating_sub(50).max(1)..first).collect::<Vec<_>>()
    );
    assert_eq!(field(&page, "more").as_bool(), Some(first > 51));
    a.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}
