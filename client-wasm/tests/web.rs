//! Browser tests that need no server (run by `wasm-pack test --headless --chrome`):
//! the API's argument checks, and `pending` firing only once the outbox write committed.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use ackline::{protocol_version, Ackline};
use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;
use web_sys::{IdbDatabase, IdbRequest};

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn speaks_protocol_version_1() {
    assert_eq!(protocol_version(), 1);
}

async fn open_error(options: &str) -> (String, String) {
    let parsed = js_sys::JSON::parse(options).unwrap();
    let err = match Ackline::open(parsed).await {
        Ok(_) => panic!("open must fail for {options}"),
        Err(err) => err,
    };
    assert!(
        err.is_instance_of::<js_sys::Error>(),
        "errors are JS Error objects"
    );
    let code = js_sys::Reflect::get(&err, &JsValue::from_str("code")).unwrap();
    let message = js_sys::Reflect::get(&err, &JsValue::from_str("message")).unwrap();
    (code.as_string().unwrap(), message.as_string().unwrap())
}

#[wasm_bindgen_test]
async fn bad_options_reject_with_coded_errors() {
    assert_eq!(open_error(r#"{}"#).await.0, "bad_options");
    assert_eq!(
        open_error(r#"{"url":"ftp://x","token":"a.b.c"}"#).await.0,
        "bad_url"
    );
    assert_eq!(open_error(r#"{"url":"http://x"}"#).await.0, "bad_options");
    assert_eq!(
        open_error(r#"{"url":"http://x","token":"not-a-jwt"}"#)
            .await
            .0,
        "bad_token"
    );
    // A JWT whose payload lacks the device claim.
    let (code, message) =
        open_error(r#"{"url":"http://x","token":"e30.eyJzdWIiOiJhbm4ifQ.sig"}"#).await;
    assert_eq!(code, "bad_token");
    assert!(message.contains("device"), "{message}");
}

// ---- `pending` means durable -------------------------------------------------

/// A JWT-shaped token for ann on ann-web (the client reads, never verifies, it).
const ANN_TOKEN: &str = "e30.eyJzdWIiOiJhbm4iLCJkZXZpY2UiOiJhbm4td2ViIn0.sig";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", (js_sys::Math::random() * 1e12) as u64)
}

fn field(v: &JsValue, name: &str) -> JsValue {
    Reflect::get(v, &name.into()).unwrap_or(JsValue::UNDEFINED)
}

/// A client on database `db` that never connects (nothing listens on port 9,
/// and the session is held offline at once): these tests need no server.
async fn offline_client(db: &str) -> (Ackline, ackline::Conversation) {
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &"http://127.0.0.1:9".into()).unwrap();
    Reflect::set(&options, &"token".into(), &ANN_TOKEN.into()).unwrap();
    Reflect::set(&options, &"dbName".into(), &db.into()).unwrap();
    let client = Ackline::open(options.into()).await.expect("open client");
    let conv = client
        .conversation("durable".into())
        .await
        .expect("open conversation");
    client.set_online(false);
    (client, conv)
}

/// Settles when `request` fires `success` (with its result) or `error`.
/// Attach before yielding to the event loop, or the event is missed.
fn request_done(request: &IdbRequest) -> JsFuture {
    JsFuture::from(Promise::new(&mut |resolve, reject| {
        request.set_onsuccess(Some(&resolve));
        request.set_onerror(Some(&reject));
    }))
}

/// A new IndexedDB connection to `name`, separate from the client's.
async fn fresh_connection(name: &str) -> IdbDatabase {
    let factory = web_sys::window()
        .unwrap()
        .indexed_db()
        .unwrap()
        .expect("IndexedDB");
    let request = factory.open(name).expect("open request");
    let done = request_done(&request);
    done.await.expect("open succeeds");
    request.result().unwrap().dyn_into().expect("a database")
}

/// Starts reading outbox record `id` through `db`, now (the read's transaction
/// is created synchronously, so it sees exactly what is committed before it).
fn read_outbox(db: &IdbDatabase, id: &str) -> (IdbRequest, JsFuture) {
    let tx = db.transaction_with_str("outbox").expect("read transaction");
    let request = tx
        .object_store("outbox")
        .unwrap()
        .get(&JsValue::from_str(id))
        .expect("get");
    let done = request_done(&request);
    (request, done)
}

async fn delete_db(name: &str) {
    if let Ok(factory) = idb::Factory::new() {
        if let Ok(request) = factory.delete(name) {
            let _ = request.await;
        }
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = js_sys::Date::now();
    while !done() {
        assert!(
            js_sys::Date::now() - start < 10_000.0,
            "timed out waiting for {what}"
        );
        gloo_timers::future::TimeoutFuture::new(10).await;
    }
}

#[wasm_bindgen_test]
async fn pending_fires_only_once_the_outbox_record_is_committed() {
    let db = unique("pending-durable");
    let (client, conv) = offline_client(&db).await;
    // Opened before sending: reading through it starts a transaction at the
    // very moment of the event, so the read sees what was committed by then
    // (an IndexedDB read started before a write's transaction exists does not
    // wait for that write).
    let probe = fresh_connection(&db).await;
    let reads: Rc<RefCell<Vec<(JsValue, IdbRequest, JsFuture)>>> = Rc::default();
    let on_pending = Closure::<dyn FnMut(JsValue)>::new({
        let (probe, reads) = (probe.clone(), reads.clone());
        move |event: JsValue| {
            let id = field(&event, "id")
                .as_string()
                .expect("pending carries the id");
            let (request, done) = read_outbox(&probe, &id);
            reads.borrow_mut().push((event, request, done));
        }
    });
    conv.on(
        "pending".into(),
        on_pending.as_ref().unchecked_ref::<Function>().clone(),
    );
    for i in 0..3 {
        // Offline: the promises stay unsettled until close().
        let _ = conv.send(format!("durable {i}"));
    }
    wait_for("three pending events", || reads.borrow().len() == 3).await;
    let reads = std::mem::take(&mut *reads.borrow_mut());
    for (i, (event, request, done)) in reads.into_iter().enumerate() {
        done.await.expect("the read succeeds");
        let record = request.result().unwrap();
        let id = field(&event, "id");
        assert!(
            !record.is_undefined(),
            "pending {i} fired before its outbox record {id:?} was committed"
        );
        assert_eq!(field(&record, "id"), id);
        assert_eq!(
            field(&record, "body").as_string().as_deref(),
            Some(format!("durable {i}").as_str())
        );
        assert_eq!(
            field(&event, "body").as_string().as_deref(),
            Some(format!("durable {i}").as_str())
        );
        assert_eq!(
            field(&event, "created"),
            field(&record, "created"),
            "the event reports the stored creation time"
        );
    }
    probe.close();
    client.close();
    delete_db(&db).await;
}

#[wasm_bindgen_test]
async fn a_tab_that_dies_when_pending_fires_keeps_the_message() {
    let db = unique("pending-crash");
    let (client, conv) = offline_client(&db).await;
    let client = Rc::new(client);
    let announced: Rc<RefCell<Option<String>>> = Rc::default();
    // The listener ends the client at once, as if the tab died right after
    // showing the message as queued: nothing this client does afterwards may
    // be needed for the message to survive.
    let on_pending = Closure::<dyn FnMut(JsValue)>::new({
        let (client, announced) = (client.clone(), announced.clone());
        move |event: JsValue| {
            *announced.borrow_mut() = field(&event, "id").as_string();
            client.close();
        }
    });
    conv.on(
        "pending".into(),
        on_pending.as_ref().unchecked_ref::<Function>().clone(),
    );
    let sent = conv.send("survives".into());
    wait_for("the pending event", || announced.borrow().is_some()).await;
    let err = JsFuture::from(sent)
        .await
        .expect_err("close rejects the unfinished send");
    assert_eq!(field(&err, "code").as_string().as_deref(), Some("closed"));
    let id = announced.borrow().clone().unwrap();

    let fresh = fresh_connection(&db).await;
    let (request, done) = read_outbox(&fresh, &id);
    done.await.expect("the read succeeds");
    let record = request.result().unwrap();
    assert!(
        !record.is_undefined(),
        "the message announced as pending is not in the outbox"
    );
    assert_eq!(
        field(&record, "body").as_string().as_deref(),
        Some("survives")
    );
    fresh.close();

    let (reopened, conv2) = offline_client(&db).await;
    let pending = js_sys::Array::from(&conv2.pending());
    assert_eq!(
        pending.length(),
        1,
        "the reopened client lists the queued message"
    );
    assert_eq!(field(&pending.get(0), "id").as_string(), Some(id));
    reopened.close();
    delete_db(&db).await;
}

// ---- seeds ---------------------------------------------------------------------

#[wasm_bindgen_test]
async fn a_conversation_without_crypto_rejects_with_a_clear_code() {
    let db = unique("no-crypto");
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &"http://127.0.0.1:9".into()).unwrap();
    Reflect::set(&options, &"token".into(), &ANN_TOKEN.into()).unwrap();
    Reflect::set(&options, &"dbName".into(), &db.as_str().into()).unwrap();
    let client = Ackline::open(options.into()).await.expect("open client");
    // Hide the global `crypto` (an own, configurable property of the window)
    // for the one call, then put it back.
    let global = js_sys::global();
    let saved =
        js_sys::Object::get_own_property_descriptor(&global.clone().into(), &"crypto".into());
    assert!(
        !saved.is_undefined(),
        "the window has its own crypto property"
    );
    let hidden = js_sys::Object::new();
    Reflect::set(&hidden, &"value".into(), &JsValue::UNDEFINED).unwrap();
    Reflect::set(&hidden, &"configurable".into(), &JsValue::TRUE).unwrap();
    js_sys::Object::define_property(&global.clone().into(), &"crypto".into(), &hidden);
    let result = client.conversation("seedless".into()).await;
    js_sys::Object::define_property(&global.into(), &"crypto".into(), &saved.unchecked_into());
    let err = result.err().expect("no conversation without crypto");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(
        field(&err, "code").as_string().as_deref(),
        Some("crypto_unavailable")
    );
    assert!(field(&err, "message")
        .as_string()
        .unwrap()
        .contains("getRandomValues"));
    // With crypto back, the same client opens it.
    client
        .conversation("seedless".into())
        .await
        .expect("conversation with crypto");
    client.close();
    delete_db(&db).await;
}

#[wasm_bindgen_test]
async fn message_ids_of_two_starts_differ_in_their_random_part() {
    // A sanity check of the seed plumbing: two starts draw different random
    // id parts (80 bits each, so a collision means the seed is not random).
    let (db_a, db_b) = (unique("seed-a"), unique("seed-b"));
    let (a, conv_a) = offline_client(&db_a).await;
    let (b, conv_b) = offline_client(&db_b).await;
    let ids: Rc<RefCell<Vec<String>>> = Rc::default();
    let mut keep = Vec::new();
    for conv in [&conv_a, &conv_b] {
        let ids = ids.clone();
        let f = Closure::<dyn FnMut(JsValue)>::new(move |e: JsValue| {
            ids.borrow_mut().push(field(&e, "id").as_string().unwrap())
        });
        conv.on(
            "pending".into(),
            f.as_ref().unchecked_ref::<Function>().clone(),
        );
        keep.push(f);
        let _ = conv.send("x".into());
    }
    wait_for("both pending", || ids.borrow().len() == 2).await;
    let ids = ids.borrow().clone();
    // A ULID is 10 characters of time, then 16 of randomness.
    assert_ne!(ids[0][10..], ids[1][10..], "{ids:?}");
    a.close();
    b.close();
    delete_db(&db_a).await;
    delete_db(&db_b).await;
}

#[wasm_bindgen_test]
async fn a_failing_token_callback_rejects_with_token_failed() {
    let options = js_sys::Object::new();
    Reflect::set(&options, &"url".into(), &"http://127.0.0.1:9".into()).unwrap();
    let callback = Function::new_no_args("throw new Error('no session')");
    Reflect::set(&options, &"token".into(), &callback).unwrap();
    let err = Ackline::open(options.into())
        .await
        .err()
        .expect("open must fail");
    assert!(err.is_instance_of::<js_sys::Error>());
    assert_eq!(
        field(&err, "code").as_string().as_deref(),
        Some("token_failed")
    );
    assert!(field(&err, "message")
        .as_string()
        .unwrap()
        .contains("no session"));
    let codes: Vec<String> = ackline::error_codes()
        .iter()
        .filter_map(|c| c.as_string())
        .collect();
    for code in [
        "token_failed",
        "bad_options",
        "bad_url",
        "bad_token",
        "crypto_unavailable",
        "closed",
    ] {
        assert!(codes.iter().any(|c| c == code), "{code} is in errorCodes()");
    }
}
