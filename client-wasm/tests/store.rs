//! Browser tests of the IndexedDB store
//! (`wasm-pack test --headless --chrome --mode no-install client-wasm --test store`).
//! Every test uses its own database and deletes it at the end.
#![cfg(target_arch = "wasm32")]

use std::cell::Cell;

use ackline::store::{IdbStore, StoreError, DB_VERSION};
use idb::{
    Database, DatabaseEvent, Factory, IndexParams, KeyPath, ObjectStoreParams, TransactionMode,
};
use protocol::{ChainHash, ClientSnapshot, ClientWrite, InboxState, OutboxEntry, StoredMessage};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

fn db_name(label: &str) -> String {
    format!(
        "ackline-test-{label}-{}-{:08x}",
        js_sys::Date::now() as u64,
        (js_sys::Math::random() * 4294967296.0) as u64
    )
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
        let (user, device, id, body) = (
            "ann".to_string(),
            "d1".to_string(),
            format!("m{seq}"),
            format!("hello {seq}"),
        );
        chain = chain.next(seq, &user, &device, &id, &body);
        if seq >= from {
            out.push(StoredMessage {
                seq,
                user,
                device,
                id,
                body,
                at: 1_700_000_000_000 + seq,
                chain,
            });
        }
    }
    out
}

/// The inbox record after storing `batch` contiguously from seq 1.
fn state(batch: &[StoredMessage]) -> InboxState {
    InboxState {
        base: 0,
        watermark: batch.last().map_or(0, |m| m.seq),
        chain: batch.last().map_or(ChainHash::GENESIS, |m| m.chain),
        oldest: None,
    }
}

fn inbox(batch: &[StoredMessage], state: Option<InboxState>) -> ClientWrite {
    ClientWrite::Inbox {
        messages: batch.to_vec(),
        state,
    }
}

fn seqs(ms: &[StoredMessage]) -> Vec<u64> {
    ms.iter().map(|m| m.seq).collect()
}

fn entry(id: &str, created: u64) -> OutboxEntry {
    OutboxEntry {
        id: id.into(),
        body: format!("body of {id}"),
        created,
        seq: None,
        at: None,
    }
}

fn put(id: &str, created: u64) -> ClientWrite {
    ClientWrite::PutOutbox(entry(id, created))
}

fn remove(id: &str) -> ClientWrite {
    ClientWrite::RemoveOutbox { id: id.into() }
}

fn ids(v: &[OutboxEntry]) -> Vec<&str> {
    v.iter().map(|e| e.id.as_str()).collect()
}

async fn sleep_ms(ms: u32) {
    gloo_timers::future::TimeoutFuture::new(ms).await;
}

/// Polls two futures to completion concurrently (no futures crate needed); `a`
/// is polled first.
async fn futures_join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
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
async fn same_inbox_write_twice_is_idempotent() {
    let name = db_name("idem");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 20);
    let st = state(&batch);
    let write = inbox(&batch, Some(st.clone()));
    store.apply("c1", &write).await.unwrap();
    store.apply("c1", &write).await.unwrap();
    assert_eq!(store.messages_after("c1", 0, 1000).await.unwrap(), batch);
    let snap = store.load_snapshot("c1").await.unwrap();
    assert_eq!(
        snap,
        ClientSnapshot {
            inbox: Some(st.clone()),
            above: vec![],
            outbox: vec![]
        }
    );
    assert_eq!(
        store.load_snapshot("nope").await.unwrap(),
        ClientSnapshot::default()
    );
    // `state: None` leaves the inbox record alone; an empty batch is fine.
    store
        .apply("c1", &inbox(&messages(21, 21), None))
        .await
        .unwrap();
    store.apply("c1", &inbox(&[], None)).await.unwrap();
    store.apply_all("c1", &[]).await.unwrap();
    let snap = store.load_snapshot("c1").await.unwrap();
    assert_eq!(snap.inbox, Some(st));
    assert_eq!(seqs(&snap.above), [21]);
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn paging_before_and_after() {
    let name = db_name("paging");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 50);
    store
        .apply("a", &inbox(&batch, Some(state(&batch))))
        .await
        .unwrap();
    // A neighbouring conversation (and one whose id is a prefix) must never leak in.
    let other = messages(1, 5);
    store
        .apply("ab", &inbox(&other, Some(state(&other))))
        .await
        .unwrap();
    store
        .apply("", &inbox(&other, Some(state(&other))))
        .await
        .unwrap();

    let r = |a: u64, b: u64| (a..=b).collect::<Vec<u64>>();
    assert_eq!(
        seqs(&store.messages_before("a", 51, 10).await.unwrap()),
        r(41, 50)
    );
    assert_eq!(
        seqs(&store.messages_before("a", u64::MAX, 3).await.unwrap()),
        r(48, 50)
    );
    assert_eq!(
        seqs(&store.messages_before("a", 41, 10).await.unwrap()),
        r(31, 40)
    );
    assert_eq!(
        seqs(&store.messages_before("a", 5, 10).await.unwrap()),
        r(1, 4)
    );
    assert_eq!(
        seqs(&store.messages_before("a", 30, 1).await.unwrap()),
        vec![29]
    );
    assert_eq!(
        seqs(&store.messages_before("a", 51, 1000).await.unwrap()),
        r(1, 50)
    );
    assert!(store.messages_before("a", 1, 10).await.unwrap().is_empty());
    assert!(store.messages_before("a", 0, 10).await.unwrap().is_empty());
    assert!(store.messages_before("a", 30, 0).await.unwrap().is_empty());
    assert!(store
        .messages_before("zzz", 30, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.messages_before("a", 3, 10).await.unwrap(),
        batch[..2].to_vec()
    );

    assert_eq!(
        seqs(&store.messages_after("a", 0, 10).await.unwrap()),
        r(1, 10)
    );
    assert_eq!(
        seqs(&store.messages_after("a", 10, 10).await.unwrap()),
        r(11, 20)
    );
    assert_eq!(
        seqs(&store.messages_after("a", 45, 10).await.unwrap()),
        r(46, 50)
    );
    assert_eq!(
        seqs(&store.messages_after("a", 49, 1).await.unwrap()),
        vec![50]
    );
    assert!(store.messages_after("a", 50, 10).await.unwrap().is_empty());
    assert!(store
        .messages_after("a", u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.messages_after("a", 0, 0).await.unwrap().is_empty());
    assert!(store.messages_after("zzz", 0, 10).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.messages_after("ab", 0, 100).await.unwrap()),
        r(1, 5)
    );
    assert_eq!(
        seqs(&store.messages_before("", 100, 100).await.unwrap()),
        r(1, 5)
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn outbox_order_remove_and_survives_reopen() {
    let name = db_name("outbox");
    let store = IdbStore::open(&name).await.unwrap();
    assert!(store.load_snapshot("c").await.unwrap().outbox.is_empty());
    // Inserted out of order; same `created` is ordered by id.
    for op in [
        put("m3", 300),
        put("m1", 100),
        put("m2b", 200),
        put("m2a", 200),
    ] {
        store.apply("c", &op).await.unwrap();
    }
    store.apply("other", &put("x1", 50)).await.unwrap();
    // apply resolved after `complete`: a second connection sees it at once.
    let second = IdbStore::open(&name).await.unwrap();
    assert_eq!(
        ids(&second.load_snapshot("c").await.unwrap().outbox),
        ["m1", "m2a", "m2b", "m3"]
    );
    second.close();
    // Replacing an entry (the server assigned its seq) keeps one copy.
    let confirmed = OutboxEntry {
        seq: Some(9),
        at: Some(1_700_000_000_009),
        ..entry("m1", 100)
    };
    store
        .apply("c", &ClientWrite::PutOutbox(confirmed.clone()))
        .await
        .unwrap();
    store.close();
    assert!(
        matches!(store.load_snapshot("c").await, Err(StoreError::Failed(_))),
        "calls after close() fail"
    );
    assert!(matches!(
        store.apply("c", &put("late", 1)).await,
        Err(StoreError::Failed(_))
    ));
    assert!(matches!(
        store.apply_all("c", &[]).await,
        Err(StoreError::Failed(_))
    ));

    let store = IdbStore::open(&name).await.unwrap();
    let got = store.load_snapshot("c").await.unwrap().outbox;
    assert_eq!(
        got,
        vec![
            confirmed.clone(),
            entry("m2a", 200),
            entry("m2b", 200),
            entry("m3", 300)
        ]
    );
    assert_eq!(
        ids(&store.load_snapshot("other").await.unwrap().outbox),
        ["x1"]
    );
    store
        .apply_all("c", &[remove("m2a"), remove("m3"), remove("never-existed")])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.load_snapshot("c").await.unwrap().outbox),
        ["m1", "m2b"]
    );
    drop(store);
    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap().outbox,
        vec![confirmed, entry("m2b", 200)]
    );
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
    let (ia, ib) = futures_join(
        a.device_id(|| "from-a".into()),
        b.device_id(|| "from-b".into()),
    )
    .await;
    assert_eq!(ia.unwrap(), ib.unwrap());
    a.close();
    b.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn five_thousand_messages_in_one_apply() {
    let name = db_name("bulk");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 5000);
    let t0 = js_sys::Date::now();
    store
        .apply("big", &inbox(&batch, Some(state(&batch))))
        .await
        .unwrap();
    let t1 = js_sys::Date::now();
    let all = store.messages_after("big", 0, 10_000).await.unwrap();
    let t2 = js_sys::Date::now();
    assert_eq!(all.len(), 5000);
    assert_eq!(all, batch);
    assert_eq!(
        seqs(&store.messages_before("big", 5001, 100).await.unwrap()),
        (4901..=5000).collect::<Vec<_>>()
    );
    let snap = store.load_snapshot("big").await.unwrap();
    assert_eq!(snap.inbox.unwrap().watermark, 5000);
    assert!(snap.above.is_empty());
    console_log!(
        "apply of 5000 messages: {} ms; reading them back: {} ms",
        t1 - t0,
        t2 - t1
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn a_failed_write_stores_nothing() {
    let name = db_name("atomic");
    let store = IdbStore::open(&name).await.unwrap();
    let mut batch = messages(1, 10);
    batch[9].seq = u64::MAX; // not representable as a JS number: rejected
    let err = store
        .apply("c", &inbox(&batch, Some(state(&batch[..9]))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "store_failed");
    assert!(
        store.messages_after("c", 0, 100).await.unwrap().is_empty(),
        "no half batch"
    );
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot::default()
    );
    // In a batch of writes, a bad one undoes the good ones queued before it.
    let good = messages(1, 3);
    let ops = [
        put("o1", 1),
        inbox(&good, Some(state(&good))),
        remove("o1"),
        put("o2", 2),
        inbox(&batch, None),
    ];
    assert_eq!(
        store.apply_all("c", &ops).await.unwrap_err().code(),
        "store_failed"
    );
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot::default()
    );
    assert!(store.messages_after("c", 0, 100).await.unwrap().is_empty());
    // The same batch without the bad write is stored whole, in order.
    store.apply_all("c", &ops[..4]).await.unwrap();
    let snap = store.load_snapshot("c").await.unwrap();
    assert_eq!(
        snap,
        ClientSnapshot {
            inbox: Some(state(&good)),
            above: vec![],
            outbox: vec![entry("o2", 2)]
        }
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn writes_commit_in_call_order_without_awaiting() {
    let name = db_name("order");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 2000);
    // A big inbox write, then a tiny outbox write on other object stores, the
    // second started before the first is awaited: the second still commits (and
    // resolves) after the first, as `Durable { through }` needs. (The store
    // guarantees this by giving every write the same scope; Chrome also happened
    // to keep this order with disjoint scopes when tried, so this pins the
    // behaviour more than it proves the mechanism.)
    let order = std::cell::RefCell::new(Vec::new());
    let big = async {
        store
            .apply("c", &inbox(&batch, Some(state(&batch))))
            .await
            .unwrap();
        order.borrow_mut().push("inbox");
    };
    let small = async {
        store.apply("c", &put("o1", 1)).await.unwrap();
        order.borrow_mut().push("outbox");
    };
    futures_join(big, small).await;
    assert_eq!(*order.borrow(), ["inbox", "outbox"]);
    // Later writes see the effects of earlier ones, not awaited either.
    let (a, b) = futures_join(
        store.apply("c", &put("o2", 2)),
        store.apply("c", &remove("o2")),
    )
    .await;
    a.unwrap();
    b.unwrap();
    let (a, b) = futures_join(
        store.apply("d", &inbox(&batch[..5], Some(state(&batch[..5])))),
        store.apply("d", &ClientWrite::ClearInbox),
    )
    .await;
    a.unwrap();
    b.unwrap();
    assert_eq!(ids(&store.load_snapshot("c").await.unwrap().outbox), ["o1"]);
    assert_eq!(
        store.load_snapshot("d").await.unwrap(),
        ClientSnapshot::default()
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn snapshot_round_trips_after_writes() {
    let name = db_name("snapshot");
    let store = IdbStore::open(&name).await.unwrap();
    // A device that joined late: its first page was 101..=110 (base 100), older
    // history is still missing, and 113 and 115 arrived out of order.
    let all = messages(1, 120);
    let page = all[100..110].to_vec();
    let st = InboxState {
        base: 100,
        watermark: 110,
        chain: page[9].chain,
        oldest: Some(page[0].clone()),
    };
    let confirmed = OutboxEntry {
        seq: Some(116),
        at: Some(1_700_000_000_116),
        ..entry("o2", 20)
    };
    store
        .apply(
            "c",
            &inbox(
                &page[..5],
                Some(InboxState {
                    watermark: 105,
                    chain: page[4].chain,
                    ..st.clone()
                }),
            ),
        )
        .await
        .unwrap();
    store
        .apply_all(
            "c",
            &[
                put("o3", 30),
                put("o1", 10),
                inbox(&page[5..], Some(st.clone())),
                put("o2", 20),
                inbox(&[all[114].clone(), all[112].clone()], None),
                ClientWrite::PutOutbox(confirmed.clone()),
                put("gone", 5),
                remove("gone"),
            ],
        )
        .await
        .unwrap();
    store
        .apply("other", &inbox(&all[..3], Some(state(&all[..3]))))
        .await
        .unwrap();
    store.apply("other", &put("x", 1)).await.unwrap();
    store.close();

    let store = IdbStore::open(&name).await.unwrap();
    let expected = ClientSnapshot {
        inbox: Some(st.clone()),
        above: vec![all[112].clone(), all[114].clone()],
        outbox: vec![entry("o1", 10), confirmed, entry("o3", 30)],
    };
    assert_eq!(store.load_snapshot("c").await.unwrap(), expected);
    assert_eq!(
        seqs(&store.messages_after("c", 0, 100).await.unwrap()),
        [101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 113, 115]
    );
    // Older history arrives and reaches seq 1: `oldest` becomes None.
    let done = InboxState { oldest: None, ..st };
    store
        .apply("c", &inbox(&all[..100], Some(done.clone())))
        .await
        .unwrap();
    let snap = store.load_snapshot("c").await.unwrap();
    assert_eq!(snap.inbox, Some(done));
    assert_eq!(seqs(&snap.above), [113, 115]);
    // Messages stored without an inbox record are not "above" anything.
    store.apply("loose", &inbox(&all[..3], None)).await.unwrap();
    assert_eq!(
        store.load_snapshot("loose").await.unwrap(),
        ClientSnapshot::default()
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn clear_inbox_empties_only_that_conversation() {
    let name = db_name("clear");
    let store = IdbStore::open(&name).await.unwrap();
    let batch = messages(1, 30);
    for conv in ["a", "ab", "b"] {
        store
            .apply_all(
                conv,
                &[
                    inbox(&batch[..20], Some(state(&batch[..20]))),
                    inbox(&batch[25..], None),
                    put(&format!("o-{conv}"), 1),
                ],
            )
            .await
            .unwrap();
    }
    let before_b = store.load_snapshot("b").await.unwrap();
    assert_eq!(seqs(&before_b.above), [26, 27, 28, 29, 30]);
    store.apply("a", &ClientWrite::ClearInbox).await.unwrap();
    // The outbox is not part of the inbox: it stays.
    assert_eq!(
        store.load_snapshot("a").await.unwrap(),
        ClientSnapshot {
            inbox: None,
            above: vec![],
            outbox: vec![entry("o-a", 1)]
        }
    );
    assert!(store.messages_after("a", 0, 100).await.unwrap().is_empty());
    assert!(store
        .messages_before("a", u64::MAX, 100)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.load_snapshot("b").await.unwrap(), before_b);
    assert_eq!(
        store.load_snapshot("ab").await.unwrap().inbox,
        Some(state(&batch[..20]))
    );
    assert_eq!(store.messages_after("ab", 0, 100).await.unwrap().len(), 25);
    // Clearing an empty conversation is fine; the cleared one fills again.
    store.apply("a", &ClientWrite::ClearInbox).await.unwrap();
    store
        .apply("nothing-here", &ClientWrite::ClearInbox)
        .await
        .unwrap();
    store
        .apply("a", &inbox(&batch[..2], Some(state(&batch[..2]))))
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("a").await.unwrap().inbox,
        Some(state(&batch[..2]))
    );
    store.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn corrupt_records_are_reported() {
    let name = db_name("corrupt");
    IdbStore::open(&name).await.unwrap().close();
    let db = Factory::new()
        .unwrap()
        .open(&name, None)
        .unwrap()
        .await
        .unwrap();
    let tx = db
        .transaction(
            &["conversations", "pages", "outbox"],
            TransactionMode::ReadWrite,
        )
        .unwrap();
    let bad = js_sys::JSON::parse(
        r#"{"conversation":"c","base":0,"watermark":"lots","chain":"zz","oldest":null}"#,
    )
    .unwrap();
    tx.object_store("conversations")
        .unwrap()
        .put(&bad, None)
        .unwrap()
        .await
        .unwrap();
    let bad = js_sys::JSON::parse(
        r#"{"conversation":"c","bucket":0,"messages":"[{\"seq\":1,\"body\":3}]"}"#,
    )
    .unwrap();
    tx.object_store("pages")
        .unwrap()
        .put(&bad, None)
        .unwrap()
        .await
        .unwrap();
    let bad =
        js_sys::JSON::parse(r#"{"conversation":"d","id":"o1","created":5,"body":false}"#).unwrap();
    tx.object_store("outbox")
        .unwrap()
        .put(&bad, None)
        .unwrap()
        .await
        .unwrap();
    // A good inbox record next to a corrupt page above its watermark.
    let ok = js_sys::JSON::parse(&format!(
        r#"{{"conversation":"e","base":0,"watermark":0,"chain":"{}","oldest":null}}"#,
        ChainHash::GENESIS.to_hex()
    ))
    .unwrap();
    tx.object_store("conversations")
        .unwrap()
        .put(&ok, None)
        .unwrap()
        .await
        .unwrap();
    let bad = js_sys::JSON::parse(r#"{"conversation":"e","bucket":0,"messages":[4]}"#).unwrap();
    tx.object_store("pages")
        .unwrap()
        .put(&bad, None)
        .unwrap()
        .await
        .unwrap();
    tx.await.unwrap();
    db.close();
    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap_err().code(),
        "store_corrupt"
    );
    assert_eq!(
        store.messages_after("c", 0, 10).await.unwrap_err().code(),
        "store_corrupt"
    );
    assert_eq!(
        store.load_snapshot("d").await.unwrap_err().code(),
        "store_corrupt"
    );
    assert_eq!(
        store.load_snapshot("e").await.unwrap_err().code(),
        "store_corrupt"
    );
    // A fresh write over the bad records repairs them.
    store.apply("c", &ClientWrite::ClearInbox).await.unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot::default()
    );
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

/// The v2 schema, written by hand as the v2 code did (v1 plus `conversations`
/// and the outbox index on `["conversation", "created_at"]`).
async fn create_v2(name: &str) -> Database {
    let mut req = Factory::new().unwrap().open(name, Some(2)).unwrap();
    req.on_upgrade_needed(|event| {
        let db = event.database().unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_array(["conversation", "seq"])));
        db.create_object_store("messages", p).unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_single("id")));
        let outbox = db.create_object_store("outbox", p).unwrap();
        outbox
            .create_index(
                "by_conversation",
                KeyPath::new_array(["conversation", "created_at"]),
                Some(IndexParams::new()),
            )
            .unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_single("key")));
        db.create_object_store("meta", p).unwrap();
        let mut p = ObjectStoreParams::new();
        p.key_path(Some(KeyPath::new_single("conversation")));
        db.create_object_store("conversations", p).unwrap();
    });
    req.await.unwrap()
}

/// A `messages` record as every version stored it.
fn message_row(conversation: &str, m: &StoredMessage) -> JsValue {
    js_sys::JSON::parse(&format!(
        r#"{{"conversation":"{conversation}","seq":{},"user":"{}","device":"{}","id":"{}","body":"{}","at":{},"chain":"{}"}}"#,
        m.seq,
        m.user,
        m.device,
        m.id,
        m.body,
        m.at,
        m.chain.to_hex()
    ))
    .unwrap()
}

/// After an upgrade: the schema is the current one.
async fn assert_current_schema(name: &str) {
    let db = Factory::new()
        .unwrap()
        .open(name, None)
        .unwrap()
        .await
        .unwrap();
    assert_eq!(db.version().unwrap(), DB_VERSION);
    let mut names = db.store_names();
    names.sort();
    assert_eq!(names, ["conversations", "meta", "outbox", "pages"]);
    let tx = db
        .transaction(&["outbox", "pages"], TransactionMode::ReadOnly)
        .unwrap();
    let pages = tx.object_store("pages").unwrap();
    assert!(pages.auto_increment());
    assert_eq!(
        pages.index("by_bucket").unwrap().key_path().unwrap(),
        Some(KeyPath::new_array(["conversation", "bucket"]))
    );
    let outbox = tx.object_store("outbox").unwrap();
    assert_eq!(outbox.index_names(), ["by_conversation"]);
    let key_path = outbox.index("by_conversation").unwrap().key_path().unwrap();
    assert_eq!(
        key_path,
        Some(KeyPath::new_array(["conversation", "created"]))
    );
    tx.await.unwrap();
    db.close();
}

#[wasm_bindgen_test]
async fn upgrade_from_v1_keeps_data() {
    let name = db_name("upgrade-v1");
    let db = create_v1(&name).await;
    assert_eq!(db.version().unwrap(), 1);
    let tx = db
        .transaction(&["messages", "outbox", "meta"], TransactionMode::ReadWrite)
        .unwrap();
    let m = &messages(1, 1)[0];
    tx.object_store("messages")
        .unwrap()
        .put(&message_row("c", m), None)
        .unwrap()
        .await
        .unwrap();
    let ob = js_sys::JSON::parse(
        r#"{"id":"o1","conversation":"c","body":"queued in v1","created_at":5,"attempts":1}"#,
    )
    .unwrap();
    tx.object_store("outbox")
        .unwrap()
        .put(&ob, None)
        .unwrap()
        .await
        .unwrap();
    let meta = js_sys::JSON::parse(r#"{"key":"device_id","value":"dev-v1"}"#).unwrap();
    tx.object_store("meta")
        .unwrap()
        .put(&meta, None)
        .unwrap()
        .await
        .unwrap();
    tx.await.unwrap();
    db.close();

    let store = IdbStore::open(&name).await.unwrap();
    assert_eq!(
        store.messages_after("c", 0, 10).await.unwrap(),
        vec![m.clone()]
    );
    let expected_outbox = vec![OutboxEntry {
        id: "o1".into(),
        body: "queued in v1".into(),
        created: 5,
        seq: None,
        at: None,
    }];
    // No inbox record in v1: nothing is "above".
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot {
            inbox: None,
            above: vec![],
            outbox: expected_outbox
        }
    );
    assert_eq!(store.device_id(|| "new".into()).await.unwrap(), "dev-v1");
    store
        .apply("c", &inbox(&[], Some(state(std::slice::from_ref(m)))))
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap().inbox.unwrap().chain,
        m.chain
    );
    store.close();
    assert_current_schema(&name).await;
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn upgrade_from_v2_keeps_data() {
    let name = db_name("upgrade-v2");
    let db = create_v2(&name).await;
    assert_eq!(db.version().unwrap(), 2);
    let all = messages(1, 8);
    let tx = db
        .transaction(
            &["messages", "outbox", "meta", "conversations"],
            TransactionMode::ReadWrite,
        )
        .unwrap();
    let store = tx.object_store("messages").unwrap();
    // 1..=5 contiguous, 7 and 8 out of order; "d" has messages but no record.
    for m in all[..5].iter().chain(&all[6..]) {
        store
            .put(&message_row("c", m), None)
            .unwrap()
            .await
            .unwrap();
    }
    store
        .put(&message_row("d", &all[0]), None)
        .unwrap()
        .await
        .unwrap();
    let conv = js_sys::JSON::parse(&format!(
        r#"{{"conversation":"c","watermark":5,"chain":"{}","oldest":1}}"#,
        all[4].chain.to_hex()
    ))
    .unwrap();
    tx.object_store("conversations")
        .unwrap()
        .put(&conv, None)
        .unwrap()
        .await
        .unwrap();
    let outbox = tx.object_store("outbox").unwrap();
    for row in [
        r#"{"id":"o3","conversation":"c","body":"third","created_at":30,"attempts":0}"#,
        r#"{"id":"o1","conversation":"c","body":"first","created_at":10,"attempts":4}"#,
        r#"{"id":"o2","conversation":"c","body":"second","created_at":10,"attempts":1}"#,
        r#"{"id":"x","conversation":"d","body":"elsewhere","created_at":1,"attempts":0}"#,
    ] {
        outbox
            .put(&js_sys::JSON::parse(row).unwrap(), None)
            .unwrap()
            .await
            .unwrap();
    }
    let meta = js_sys::JSON::parse(r#"{"key":"device_id","value":"dev-v2"}"#).unwrap();
    tx.object_store("meta")
        .unwrap()
        .put(&meta, None)
        .unwrap()
        .await
        .unwrap();
    tx.await.unwrap();
    db.close();

    let store = IdbStore::open(&name).await.unwrap();
    let ob = |id: &str, body: &str, created| OutboxEntry {
        id: id.into(),
        body: body.into(),
        created,
        seq: None,
        at: None,
    };
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot {
            inbox: Some(InboxState {
                base: 0,
                watermark: 5,
                chain: all[4].chain,
                oldest: None
            }),
            above: vec![all[6].clone(), all[7].clone()],
            outbox: vec![
                ob("o1", "first", 10),
                ob("o2", "second", 10),
                ob("o3", "third", 30)
            ],
        }
    );
    assert_eq!(
        store.load_snapshot("d").await.unwrap(),
        ClientSnapshot {
            inbox: None,
            above: vec![],
            outbox: vec![ob("x", "elsewhere", 1)]
        }
    );
    assert_eq!(
        seqs(&store.messages_after("c", 0, 100).await.unwrap()),
        [1, 2, 3, 4, 5, 7, 8]
    );
    assert_eq!(store.device_id(|| "new".into()).await.unwrap(), "dev-v2");
    // Migrated entries are ordinary v3 records: the core's writes apply to them.
    store
        .apply_all("c", &[remove("o1"), put("o4", 5)])
        .await
        .unwrap();
    assert_eq!(
        ids(&store.load_snapshot("c").await.unwrap().outbox),
        ["o4", "o2", "o3"]
    );
    store.close();
    assert_current_schema(&name).await;
    // The migrated records carry no leftover v2 fields.
    let db = Factory::new()
        .unwrap()
        .open(&name, None)
        .unwrap()
        .await
        .unwrap();
    let tx = db
        .transaction(&["outbox"], TransactionMode::ReadOnly)
        .unwrap();
    let row = tx
        .object_store("outbox")
        .unwrap()
        .get(JsValue::from_str("o2"))
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        js_sys::JSON::stringify(&row).unwrap().as_string().unwrap(),
        r#"{"id":"o2","conversation":"c","body":"second","created":10,"seq":null,"at":null}"#
    );
    tx.await.unwrap();
    db.close();
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn another_tab_upgrading_closes_our_connections() {
    let name = db_name("versionchange");
    let a = IdbStore::open(&name).await.unwrap();
    let b = IdbStore::open(&name).await.unwrap();
    a.apply("c", &put("m1", 1)).await.unwrap();
    // "Another tab" with newer code: not blocked, because both handles close.
    let t0 = js_sys::Date::now();
    let newer = Factory::new()
        .unwrap()
        .open(&name, Some(DB_VERSION + 1))
        .unwrap()
        .await
        .unwrap();
    console_log!(
        "upgrade by another connection went through in {} ms",
        js_sys::Date::now() - t0
    );
    assert!(matches!(
        a.load_snapshot("c").await,
        Err(StoreError::VersionChange)
    ));
    assert!(matches!(
        b.apply("c", &put("m2", 2)).await,
        Err(StoreError::VersionChange)
    ));
    assert!(matches!(
        b.apply_all("c", &[]).await,
        Err(StoreError::VersionChange)
    ));
    assert!(matches!(
        b.device_id(|| "x".into()).await,
        Err(StoreError::VersionChange)
    ));
    // This code's version is now older than the database's.
    assert!(matches!(
        IdbStore::open(&name).await,
        Err(StoreError::VersionChange)
    ));
    newer.close();
    drop((a, b));
    delete_db(&name).await;
}

#[wasm_bindgen_test]
async fn open_blocked_by_an_old_connection() {
    let name = db_name("blocked");
    // An "old tab" at v2 that ignores versionchange.
    let old = create_v2(&name).await;
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
    store.apply("c", &put("m1", 1)).await.unwrap();
    assert_eq!(store.load_snapshot("c").await.unwrap().outbox.len(), 1);
    store.close();
    delete_db(&name).await; // would hang if the orphan connection stayed open
}

/// `stats()` counts committed requests per object store; an inbox record that
/// a later write of the same batch replaces is not written, and one that a
/// later `ClearInbox` removes is gone.
#[wasm_bindgen_test]
async fn stats_count_committed_writes_and_superseded_records_are_skipped() {
    let name = db_name("stats");
    let store = IdbStore::open(&name).await.unwrap();
    let (a, b) = (messages(1, 2), messages(3, 3));
    let ab: Vec<StoredMessage> = a.iter().chain(&b).cloned().collect();
    let ops = [
        put("o1", 1),
        inbox(&a, Some(state(&a))),
        inbox(&b, Some(state(&ab))),
        remove("o1"),
    ];
    store.apply_all("c", &ops).await.unwrap();
    let s = store.stats();
    // Seqs 1-2 and 3 are in one bucket but two writes: two page records.
    assert_eq!((s.pages.puts, s.conversations.puts), (2, 1), "{s:?}");
    assert_eq!((s.outbox.puts, s.outbox.deletes), (1, 1), "{s:?}");
    assert_eq!(
        store.load_snapshot("c").await.unwrap().inbox,
        Some(state(&ab)),
        "the last record is the one stored"
    );
    // A failed write counts nothing.
    let mut bad = messages(4, 4);
    bad[0].seq = u64::MAX;
    assert!(store.apply("c", &inbox(&bad, None)).await.is_err());
    assert_eq!(store.stats(), s);
    // A record followed by a clear is cleared; one after the clear stays.
    store
        .apply_all("c", &[inbox(&a, Some(state(&a))), ClientWrite::ClearInbox])
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap(),
        ClientSnapshot::default()
    );
    store
        .apply_all("c", &[ClientWrite::ClearInbox, inbox(&a, Some(state(&a)))])
        .await
        .unwrap();
    assert_eq!(
        store.load_snapshot("c").await.unwrap().inbox,
        Some(state(&a))
    );
    let s = store.stats();
    assert_eq!(
        (
            s.pages.deletes,
            s.conversations.deletes,
            s.conversations.puts
        ),
        (2, 2, 2),
        "{s:?}"
    );
    store.close();
    delete_db(&name).await;
}

/// Messages are stored one record per bucket of 256 seqs a write touches; reads
/// cross bucket boundaries, skip empty buckets and honour their limits exactly.
#[wasm_bindgen_test]
async fn pages_span_buckets_and_reads_cross_them() {
    let name = db_name("buckets");
    let store = IdbStore::open(&name).await.unwrap();
    // 200..=600 in one write (buckets 0, 1 and 2), then live messages one by
    // one (601..=700), then 5,000..=5,010 far above (empty buckets between).
    let all = messages(1, 5_010);
    store
        .apply("c", &inbox(&all[199..600], None))
        .await
        .unwrap();
    assert_eq!(store.stats().pages.puts, 3, "one record per bucket");
    for m in &all[600..700] {
        store
            .apply("c", &inbox(std::slice::from_ref(m), None))
            .await
            .unwrap();
    }
    store.apply("c", &inbox(&all[4_999..], None)).await.unwrap();
    let r = |a: u64, b: u64| (a..=b).collect::<Vec<_>>();
    assert_eq!(
        seqs(&store.messages_after("c", 0, 3).await.unwrap()),
        r(200, 202)
    );
    assert_eq!(
        seqs(&store.messages_after("c", 250, 10).await.unwrap()),
        r(251, 260)
    );
    assert_eq!(
        seqs(&store.messages_after("c", 690, 30).await.unwrap()),
        [r(691, 700), r(5_000, 5_010)].concat()
    );
    assert_eq!(
        seqs(&store.messages_after("c", 0, 1_000).await.unwrap()),
        [r(200, 700), r(5_000, 5_010)].concat()
    );
    // Many one-message records in one bucket, fewer than the limit per request.
    assert_eq!(
        seqs(&store.messages_after("c", 640, 5).await.unwrap()),
        r(641, 645)
    );
    assert_eq!(
        seqs(&store.messages_before("c", u64::MAX, 15).await.unwrap()),
        [r(697, 700), r(5_000, 5_010)].concat()
    );
    assert_eq!(
        seqs(&store.messages_before("c", 5_000, 50).await.unwrap()),
        r(651, 700)
    );
    assert_eq!(
        seqs(&store.messages_before("c", 513, 3).await.unwrap()),
        r(510, 512)
    );
    assert_eq!(
        seqs(&store.messages_before("c", 257, 100).await.unwrap()),
        r(200, 256)
    );
    assert!(store
        .messages_before("c", 200, 10)
        .await
        .unwrap()
        .is_empty());
    let snapshot_above = |w: u64| {
        let s = state(&all[..w as usize]);
        inbox(&[], Some(s))
    };
    store.apply("c", &snapshot_above(700)).await.unwrap();
    assert_eq!(
        seqs(&store.load_snapshot("c").await.unwrap().above),
        r(5_000, 5_010)
    );
    store.close();
    delete_db(&name).await;
}

/// A seq written again (a refetched message replacing one that failed the
/// chain check) reads back as the later copy, once, as a put keyed by seq did.
#[wasm_bindgen_test]
async fn a_later_write_of_a_seq_wins() {
    let name = db_name("later-wins");
    let store = IdbStore::open(&name).await.unwrap();
    let good = messages(1, 6);
    let mut bad = good[4].clone();
    bad.body = "forged".into();
    store
        .apply("c", &inbox(std::slice::from_ref(&bad), None))
        .await
        .unwrap();
    store.apply("c", &inbox(&good, None)).await.unwrap();
    assert_eq!(store.messages_after("c", 0, 10).await.unwrap(), good);
    assert_eq!(store.messages_before("c", 7, 10).await.unwrap(), good);
    store
        .apply("c", &inbox(std::slice::from_ref(&bad), None))
        .await
        .unwrap();
    assert_eq!(store.messages_after("c", 4, 1).await.unwrap(), vec![bad]);
    store.close();
    delete_db(&name).await;
}
