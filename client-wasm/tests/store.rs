//! Browser tests of the IndexedDB store (`wasm-pack test --headless --chrome -- --test store`).
//! Every test uses its own database and deletes it at the end.
#![cfg(target_arch = "wasm32")]

use std::cell::Cell;

use ackline::store::{ConversationRecord, IdbStore, OutboxRecord, StoreError, DB_VERSION};
use idb::{Database, DatabaseEvent, Factory, KeyPath, ObjectStoreParams, TransactionMode};
use protocol::{ChainHash, StoredMessage};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn db_name(label: &str) -> String {
    format!("ackline-test-{label}-{}-{:08x}", js_sys::Date::now() as u64, (js_sys::Math::random() * 4294967296.0) as u64)
}

async fn delete_db(name: &str) {
    Factory::new().unwrap().delete(name).unwrap().await.unwrap();
}

/// Messages `from..=to` of a valid chain starting at genesis (chain values are
/// computed from seq 1 so the same seq always has the same record).
fn messages(from: u64, to: u64) -> Vec<StoredMessage> {
    let mut chain = ChainHash::GENESIS;
    let mut out = Vec::new();
    for seq in 1..=to {
        let (user, device, id, body) = ("ann".to_string(), "d1".to_string(), format!("m{seq}"), format!("hello {seq}"));
        chain = chain.next(seq, &user, &device, &id, &body);
        if seq >= from {
            out.push(StoredMessage { seq, user, device, id, body, at: 1_700_000_000_000 + seq, chain });
        }
    }
    out
}

fn state(conversation: &str, batch: &[StoredMessage]) -> ConversationRecord {
    ConversationRecord {
        conversation: conversation.into(),
        watermark: batch.last().map_or(0, |m| m.seq),
        chain: batch.last().map_or(ChainHash::GENESIS, |m| m.chain),
        oldest: batch.first().map(|m| m.seq),
    }
}

fn seqs(ms: &[StoredMessage]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

fn outbox_rec(id: &str, conversation: &str, created_at: u64) -> OutboxRecord {
    OutboxRecord { id: id.into(), conversation: conversation.into(), body: format!("body of {id}"), created_at, attempts: 0 }
}

async fn sleep_ms(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

#[wasm_bindgen_test]
fn error_codes_are_stable() {
    let cases = [
        (StoreError::Unavailable("x".into()), "store_unavailable"),
        (StoreError::Blocked, "store_blocked"),
        (StoreError::VersionChange, "store_version_change"),
        (StoreError::QuotaExceeded, "store_quota"),
        (StoreError::Corrupt("x".into()), "store_corrupt"),
        (StoreError::Failed("x".into()), "store_failed"),
    ];
    for (err, code) in cases {
        assert_eq!(err.code(), code);
        let js: JsValue = err.into();
        let got = js_sys::Reflect::get(&js, &JsValue::from_str("code")).unwrap();
        assert_eq!(got.as_string().as_deref(), Some(code));
    }
}

#[wasm_bindgen_test]
async fn same_batch_twice_is_idempotent() {
    let name = db_name("idem");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 20);
    let st = state("c1", &batch);
    store.store_batch("c1", &batch, &st).await.unwrap();
    store.store_batch("c1", &batch, &st).await.unwrap();
    let all = store.messages_after("c1", 0, 1000).await.unwrap();
    assert_eq!(all, batch);
    assert_eq!(store.conversation("c1").await.unwrap(), Some(st.clone()));
    assert_eq!(store.conversation("nope").await.unwrap(), None);
    // The record is stored under the `conversation` argument, whatever `state` says.
    store.store_batch("c2", &[], &ConversationRecord { watermark: 7, ..Default::default() }).await.unwrap();
    let c2 = store.conversation("c2").await.unwrap().unwrap();
    assert_eq!((c2.conversation.as_str(), c2.watermark, c2.oldest), ("c2", 7, None));
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn paging_before_and_after() {
    let name = db_name("paging");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 50);
    store.store_batch("a", &batch, &state("a", &batch)).await.unwrap();
    // A neighbouring conversation (and one whose id is a prefix) must never leak in.
    let other = messages(1, 5);
    store.store_batch("ab", &other, &state("ab", &other)).await.unwrap();
    store.store_batch("", &other, &state("", &other)).await.unwrap();

    let r = |a: u64, b: u64| (a..=b).collect::<Vec<u64>>();
    assert_eq!(seqs(&store.messages_before("a", 51, 10).await.unwrap()), r(41, 50));
    assert_eq!(seqs(&store.messages_before("a", u64::MAX, 3).await.unwrap()), r(48, 50));
    assert_eq!(seqs(&store.messages_before("a", 41, 10).await.unwrap()), r(31, 40));
    assert_eq!(seqs(&store.messages_before("a", 5, 10).await.unwrap()), r(1, 4));
    assert_eq!(seqs(&store.messages_before("a", 30, 1).await.unwrap()), vec![29]);
    assert_eq!(seqs(&store.messages_before("a", 51, 1000).await.unwrap()), r(1, 50));
    assert!(store.messages_before("a", 1, 10).await.unwrap().is_empty());
    assert!(store.messages_before("a", 0, 10).await.unwrap().is_empty());
    assert!(store.messages_before("a", 30, 0).await.unwrap().is_empty());
    assert!(store.messages_before("zzz", 30, 10).await.unwrap().is_empty());
    assert_eq!(store.messages_before("a", 3, 10).await.unwrap(), batch[..2].to_vec());

    assert_eq!(seqs(&store.messages_after("a", 0, 10).await.unwrap()), r(1, 10));
    assert_eq!(seqs(&store.messages_after("a", 10, 10).await.unwrap()), r(11, 20));
    assert_eq!(seqs(&store.messages_after("a", 45, 10).await.unwrap()), r(46, 50));
    assert_eq!(seqs(&store.messages_after("a", 49, 1).await.unwrap()), vec![50]);
    assert!(store.messages_after("a", 50, 10).await.unwrap().is_empty());
    assert!(store.messages_after("a", u64::MAX, 10).await.unwrap().is_empty());
    assert!(store.messages_after("a", 0, 0).await.unwrap().is_empty());
    assert!(store.messages_after("zzz", 0, 10).await.unwrap().is_empty());
    assert_eq!(seqs(&store.messages_after("ab", 0, 100).await.unwrap()), r(1, 5));
    assert_eq!(seqs(&store.messages_before("", 100, 100).await.unwrap()), r(1, 5));
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn outbox_order_remove_and_survives_reopen() {
    let name = db_name("outbox");
    let store = IdbStore::open(&name).await.unwrap();
    assert!(store.outbox("c").await.unwrap().is_empty());
    // Inserted out of order; same created_at is ordered by id.
    for rec in [outbox_rec("m3", "c", 300), outbox_rec("m1", "c", 100), outbox_rec("m2b", "c", 200), outbox_rec("m2a", "c", 200), outbox_rec("x1", "other", 50)] {
        store.put_outbox(&rec).await.unwrap();
    }
    // put_outbox resolved after `complete`: a second connection sees it at once.
    let second = IdbStore::open(&name).await.unwrap();
    let ids = |v: Vec<OutboxRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(second.outbox("c").await.unwrap()), ["m1", "m2a", "m2b", "m3"]);
    second.close();
    // Replacing a record (a retry bumps attempts) keeps one copy.
    let mut retried = outbox_rec("m1", "c", 100);
    retried.attempts = 2;
    store.put_outbox(&retried).await.unwrap();
    store.close();
    assert!(matches!(store.outbox("c").await, Err(StoreError::Failed(_))), "calls after close() fail");

    let store = IdbStore::open(&name).await.unwrap();
    let got = store.outbox("c").await.unwrap();
    assert_eq!(got[0], retried);
    assert_eq!(got[1], outbox_rec("m2a", "c", 200));
    assert_eq!(ids(got), ["m1", "m2a", "m2b", "m3"]);
    assert_eq!(ids(store.outbox("other").await.unwrap()), ["x1"]);
    store.remove_outbox(&["m2a".into(), "m3".into(), "never-existed".into()]).await.unwrap();
    store.remove_outbox(&[]).await.unwrap();
    assert_eq!(ids(store.outbox("c").await.unwrap()), ["m1", "m2b"]);
    drop(store);
    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(ids(store.outbox("c").await.unwrap()), ["m1", "m2b"]);
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn device_id_is_created_once_and_stable() {
    let name = db_name("device");
    let calls = Cell::new(0);
    let make = || {
        calls.set(calls.get() + 1);
        format!("dev-{}", calls.get())
    };
    let store = IdbStore::open(&name).await.unwrap();
    let first = store.device_id(make).await.unwrap();
    assert_eq!(first, "dev-1");
    assert_eq!(store.device_id(make).await.unwrap(), first);
    store.close();
    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(store.device_id(make).await.unwrap(), first);
    assert_eq!(calls.get(), 1, "make runs only when no id exists");
    store.close();
    delete_db(&name).await;

    // Two connections racing on a fresh database agree on one id.
    let name = db_name("device-race");
    let a = IdbStore::open(&name).await.unwrap();
    let b = IdbStore::open(&name).await.unwrap();
    let (ia, ib) = futures_join(a.device_id(|| "from-a".into()), b.device_id(|| "from-b".into())).await;
    assert_eq!(ia.unwrap(), ib.unwrap());
    a.close();
    b.close();
    delete_db(&name).await;
}

/// Polls two futures to completion concurrently (no futures crate needed).
async fn futures_join<A: std::future::Future, B: std::future::Future>(a: A, b: B) -> (A::Output, B::Output) {
    use std::task::Poll;
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(|cx| {
        if ra.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[wasm_bindgen_test]
async fn five_thousand_messages_in_one_batch() {
    let name = db_name("bulk");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 5000);
    let t0 = js_sys::Date::now();
    store.store_batch("big", &batch, &state("big", &batch)).await.unwrap();
    let t1 = js_sys::Date::now();
    let all = store.messages_after("big", 0, 10_000).await.unwrap();
    let t2 = js_sys::Date::now();
    assert_eq!(all.len(), 5000);
    assert_eq!(all, batch);
    assert_eq!(seqs(&store.messages_before("big", 5001, 100).await.unwrap()), (4901..=5000).collect::<Vec<_>>());
    assert_eq!(store.conversation("big").await.unwrap().unwrap().watermark, 5000);
    console_log!("store_batch of 5000 messages: {} ms; reading them back: {} ms", t1 - t0, t2 - t1);
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn a_failed_batch_stores_nothing() {
    let name = db_name("atomic");
    let store = IdbStore::open(&name).await.unwrap();
    let mut batch = messages(1, 10);
    batch[9].seq = u64::MAX; // not representable as a JS number: rejected
    let err = store.store_batch("c", &batch, &state("c", &batch[..9])).await.unwrap_err();
    assert_eq!(err.code(), "store_failed");
    assert!(store.messages_after("c", 0, 100).await.unwrap().is_empty(), "no half batch");
    assert_eq!(store.conversation("c").await.unwrap(), None);
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn corrupt_records_are_reported() {
    let name = db_name("corrupt");
    IdbStore::open(&name).await.unwrap().close();
    let db = Factory::new().unwrap().open(&name, None).unwrap().await.unwrap();
    let tx = db.transaction(&["conversations", "messages"], TransactionMode::ReadWrite).unwrap();
    let bad = js_sys::JSON::parse(r#"{"conversation":"c","watermark":"lots","chain":"zz"}"#).unwrap();
    tx.object_store("conversations").unwrap().put(&bad, None).unwrap().await.unwrap();
    let bad = js_sys::JSON::parse(r#"{"conversation":"c","seq":1,"body":3}"#).unwrap();
    tx.object_store("messages").unwrap().put(&bad, None).unwrap().await.unwrap();
    tx.await.unwrap();
    db.close();
    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(store.conversation("c").await.unwrap_err().code(), "store_corrupt");
    assert_eq!(store.messages_after("c", 0, 10).await.unwrap_err().code(), "store_corrupt");
    store.close();
    delete_db(&name).await;
}

/// The v1 schema, written by hand as the v1 code did.
async fn create_v1(name: &str) -> Database {
    let mut req = Factory::new().unwrap().open(name, Some(1)).unwrap();
    req.on_upgrade_needed(|event| {
        let db = event.database().unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_array(["conversation", "seq"])));
        db.create_object_store("messages", p).unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_single("id")));
        db.create_object_store("outbox", p).unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_single("key")));
        db.create_object_store("meta", p).unwrap();
    });
    req.await.unwrap()
}

#[wasm_bindgen_test]
async fn upgrade_from_v1_keeps_data() {
    let name = db_name("upgrade");
    let db = create_v1(&name).await;
    assert_eq!(db.version().unwrap(), 1);
    let tx = db.transaction(&["messages", "outbox", "meta"], TransactionMode::ReadWrite).unwrap();
    let m = &messages(1, 1)[0];
    let row = js_sys::JSON::parse(&format!(
        r#"{{"conversation":"c","seq":1,"user":"{}","device":"{}","id":"{}","body":"{}","at":{},"chain":"{}"}}"#,
        m.user, m.device, m.id, m.body, m.at, m.chain.to_hex()
    ))
    .unwrap();
    tx.object_store("messages").unwrap().put(&row, None).unwrap().await.unwrap();
    let ob = js_sys::JSON::parse(r#"{"id":"o1","conversation":"c","body":"queued in v1","created_at":5,"attempts":1}"#).unwrap();
    tx.object_store("outbox").unwrap().put(&ob, None).unwrap().await.unwrap();
    let meta = js_sys::JSON::parse(r#"{"key":"device_id","value":"dev-v1"}"#).unwrap();
    tx.object_store("meta").unwrap().put(&meta, None).unwrap().await.unwrap();
    tx.await.unwrap();
    db.close();

    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(store.messages_after("c", 0, 10).await.unwrap(), vec![m.clone()]);
    assert_eq!(
        store.outbox("c").await.unwrap(),
        vec![OutboxRecord { id: "o1".into(), conversation: "c".into(), body: "queued in v1".into(), created_at: 5, attempts: 1 }]
    );
    assert_eq!(store.device_id(|| "new".into()).await.unwrap(), "dev-v1");
    assert_eq!(store.conversation("c").await.unwrap(), None);
    store.store_batch("c", &[], &ConversationRecord { watermark: 1, chain: m.chain, oldest: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(store.conversation("c").await.unwrap().unwrap().chain, m.chain);
    store.close();

    let db = Factory::new().unwrap().open(&name, None).unwrap().await.unwrap();
    assert_eq!(db.version().unwrap(), DB_VERSION);
    let mut names = db.store_names();
    names.sort();
    assert_eq!(names, ["conversations", "messages", "meta", "outbox"]);
    let tx = db.transaction(&["outbox"], TransactionMode::ReadOnly).unwrap();
    assert_eq!(tx.object_store("outbox").unwrap().index_names(), ["by_conversation"]);
    tx.await.unwrap();
    db.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn another_tab_upgrading_closes_our_connections() {
    let name = db_name("versionchange");
    let a = IdbStore::open(&name).await.unwrap();
    let b = IdbStore::open(&name).await.unwrap();
    a.put_outbox(&outbox_rec("m1", "c", 1)).await.unwrap();
    // "Another tab" with newer code: not blocked, because both handles close.
    let t0 = js_sys::Date::now();
    let newer = Factory::new().unwrap().open(&name, Some(DB_VERSION + 1)).unwrap().await.unwrap();
    console_log!("upgrade by another connection went through in {} ms", js_sys::Date::now() - t0);
    assert!(matches!(a.outbox("c").await, Err(StoreError::VersionChange)));
    assert!(matches!(b.put_outbox(&outbox_rec("m2", "c", 2)).await, Err(StoreError::VersionChange)));
    assert!(matches!(b.device_id(|| "x".into()).await, Err(StoreError::VersionChange)));
    // This code's version is now older than the database's.
    assert!(matches!(IdbStore::open(&name).await, Err(StoreError::VersionChange)));
    newer.close();
    drop((a, b));
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn open_blocked_by_an_old_connection() {
    let name = db_name("blocked");
    // An "old tab" at v1 that ignores versionchange.
    let old = create_v1(&name).await;
    let err = IdbStore::open(&name).await.unwrap_err();
    assert!(matches!(err, StoreError::Blocked), "{err:?}");
    assert_eq!(err.code(), "store_blocked");
    old.close();
    // The queued request now upgrades and its orphan connection is closed; a new
    // open succeeds (possibly after that request finishes).
    let mut store = None;
    for _ in 0..50 {
        match IdbStore::open(&name).await {
            Ok(s) => {
                store = Some(s);
                break;
            }
            Err(StoreError::Blocked) => sleep_ms(20).await,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    let store = store.expect("open succeeds once the old connection closed");
    store.put_outbox(&outbox_rec("m1", "c", 1)).await.unwrap();
    assert_eq!(store.outbox("c").await.unwrap().len(), 1);
    store.close();
    delete_db(&name).await; // would hang if the orphan connection stayed open
}
