//! Tab coordination in headless Chromium against a real edge: two
//! `Ackline.open` instances on one dbName in one page are two tabs (Web Locks
//! and BroadcastChannel work between them; each instance has its own tab id).
//! (The edge's connection count is checked by tests/browser/scenario-7-tabs,
//! which can read the stats route without CORS.) scripts/test.sh starts the edge (ACKLINE_EDGE_URL); never skipped.
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

#[allow(dead_code)]
fn assert_in_order_once(received: &[JsValue], count: u64) {
    let seqs: Vec<u64> = received.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        (1..=count).collect::<Vec<_>>(),
        "each seq once, in order"
    );
}

fn is_leader(c: &Ackline) -> bool {
    c.is_leader()
}

fn seqs(v: &Rc<RefCell<Vec<JsValue>>>) -> Vec<u64> {
    v.borrow().iter().map(seq_of).collect()
}

#[wasm_bindgen_test]
async fn two_tabs_share_one_connection_and_the_follower_takes_over() {
    let conv_id = unique("tabs");
    let db = unique("db-tabs");
    let t1 = open("ann", "ann-web", &conv_id, &db).await;
    let t2 = open("ann", "ann-web", &conv_id, &db).await;
    assert!(is_leader(&t1), "the first tab leads");
    assert!(!is_leader(&t2), "the second waits behind it");
    let c1 = t1.conversation(conv_id.clone()).await.unwrap();
    let c2 = t2.conversation(conv_id.clone()).await.unwrap();
    let got1 = collect(&c1, "message");
    let got2 = collect(&c2, "message");
    let pend2 = collect(&c2, "pending");
    let status2 = recorder(|f| t2.on("status".into(), f));
    // A send from the follower resolves there with its seq; the leader's too.
    let s2 = JsFuture::from(c2.send("from the follower".into()))
        .await
        .expect("follower send resolves");
    assert_eq!(seq_of(&s2), 1);
    let s1 = JsFuture::from(c1.send("from the leader".into()))
        .await
        .expect("leader send resolves");
    assert_eq!(seq_of(&s1), 2);
    wait_until("both tabs show both messages", 10_000.0, || {
        seqs(&got1) == [1, 2] && seqs(&got2) == [1, 2]
    })
    .await;
    assert_eq!(
        pend2.borrow().len(),
        2,
        "every tab gets every pending event"
    );
    assert!(
        !status2.borrow().is_empty(),
        "the follower hears the leader's status"
    );
    // History in the follower (relayed to the leader).
    let result = JsFuture::from(c2.history(js_sys::Object::new().into()))
        .await
        .unwrap();
    assert_eq!(js_sys::Array::from(&result).length(), 2);
    assert_eq!(field(&result, "more").as_bool(), Some(false));

    // A send in flight when the leader closes: the follower asks again
    // (same id) when it takes over; it is stored once.
    let pending = JsFuture::from(c2.send("across the takeover".into()));
    let closed_at = js_sys::Date::now();
    t1.close();
    wait_until("the follower takes over", 5_000.0, || is_leader(&t2)).await;
    let s3 = pending.await.expect("the send survives the takeover");
    assert_eq!(seq_of(&s3), 3, "stored once, after the first two");
    let s4 = JsFuture::from(c2.send("after the takeover".into()))
        .await
        .unwrap();
    assert_eq!(seq_of(&s4), 4);
    wait_until("the new leader shows 1..4 once", 10_000.0, || {
        seqs(&got2) == [1, 2, 3, 4]
    })
    .await;
    web_sys::console::log_1(
        &format!(
            "takeover: lock passed and the send resolved {} ms after close",
            js_sys::Date::now() - closed_at
        )
        .into(),
    );

    // A third tab joins the new leader and sees new messages once.
    let t3 = open("ann", "ann-web", &conv_id, &db).await;
    assert!(!is_leader(&t3));
    let c3 = t3.conversation(conv_id.clone()).await.unwrap();
    let got3 = collect(&c3, "message");
    let s5 = JsFuture::from(c3.send("from the third tab".into()))
        .await
        .unwrap();
    assert_eq!(seq_of(&s5), 5);
    wait_until("tabs 2 and 3 show seq 5", 10_000.0, || {
        seqs(&got2) == [1, 2, 3, 4, 5] && seqs(&got3) == [5]
    })
    .await;
    t2.close();
    wait_until("the third tab takes over", 5_000.0, || is_leader(&t3)).await;
    let s6 = JsFuture::from(c3.send("last".into())).await.unwrap();
    assert_eq!(seq_of(&s6), 6);
    wait_until("the third tab shows 5, 6", 10_000.0, || {
        seqs(&got3) == [5, 6]
    })
    .await;
    t3.close();
    delete_db(&db).await;
}

/// Without Web Locks each instance runs alone, as before (and warns): both
/// lead and both send. (The browser's `locks` is hidden from `navigator` for
/// the two opens and put back, as web.rs does with `crypto`.)
#[wasm_bindgen_test]
async fn without_web_locks_each_instance_runs_alone() {
    let conv_id = unique("alone");
    let (db_a, db_b) = (unique("db-alone-a"), unique("db-alone-b"));
    let nav: JsValue = web_sys::window().unwrap().navigator().into();
    let nav_obj: js_sys::Object = nav.clone().unchecked_into();
    let hidden = js_sys::Object::new();
    Reflect::set(&hidden, &"value".into(), &JsValue::UNDEFINED).unwrap();
    Reflect::set(&hidden, &"configurable".into(), &JsValue::TRUE).unwrap();
    js_sys::Object::define_property(&nav_obj, &"locks".into(), &hidden);
    let a = open("ann", "ann-web", &conv_id, &db_a).await;
    let b = open("bob", "bob-web", &conv_id, &db_b).await;
    // Remove the own property again: `locks` of Navigator.prototype shows through.
    Reflect::delete_property(&nav_obj, &"locks".into()).unwrap();
    assert!(
        !Reflect::get(&nav, &"locks".into()).unwrap().is_undefined(),
        "locks restored"
    );
    assert!(is_leader(&a) && is_leader(&b), "each runs alone");
    let ca = a.conversation(conv_id.clone()).await.unwrap();
    let cb = b.conversation(conv_id.clone()).await.unwrap();
    let got_b = collect(&cb, "message");
    let sa = JsFuture::from(ca.send("alone a".into()))
        .await
        .expect("a sends");
    let sb = JsFuture::from(cb.send("alone b".into()))
        .await
        .expect("b sends");
    assert_eq!((seq_of(&sa), seq_of(&sb)), (1, 2));
    wait_until("b shows both", 10_000.0, || seqs(&got_b) == [1, 2]).await;
    a.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}
