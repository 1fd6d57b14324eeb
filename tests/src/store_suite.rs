//! One store test suite, two backends: the in-memory client disk of the
//! simulator (native, `tests/tests/store_suite.rs`) and the IndexedDB store of
//! the browser client (`client-wasm/tests/store_suite.rs`, which includes this
//! file by path). If both pass, the simulator's disk and the browser's disk
//! agree on what the core's writes mean.
//!
//! Depends only on `protocol` and std so that it compiles for both targets.

use protocol::{
    ChainHash, ClientSnapshot, ClientWrite, InboxState, OutboxEntry, Seq, StoredMessage,
};

/// What a client store must do for the core.
#[allow(async_fn_in_trait)]
pub trait Backend {
    /// Applies writes in order, all or nothing, durably.
    async fn apply_all(&self, conversation: &str, ops: &[ClientWrite]) -> Result<(), String>;
    /// What the shell reads back on start.
    async fn snapshot(&self, conversation: &str) -> Result<ClientSnapshot, String>;
    /// The `limit` highest stored seqs below `before`, ascending.
    async fn before(
        &self,
        conversation: &str,
        before: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, String>;
}

fn message(seq: Seq) -> StoredMessage {
    StoredMessage {
        seq,
        user: "ann".into(),
        device: "ann-1".into(),
        id: format!("id-{seq:05}"),
        body: format!("body {seq}"),
        at: 1_700_000_000_000 + seq,
        chain: ChainHash([seq as u8; 16]),
    }
}

fn messages(seqs: impl IntoIterator<Item = Seq>) -> Vec<StoredMessage> {
    seqs.into_iter().map(message).collect()
}

fn inbox(watermark: Seq) -> InboxState {
    InboxState {
        base: 0,
        watermark,
        chain: ChainHash([watermark as u8; 16]),
        oldest: None,
    }
}

fn entry(id: &str, created: u64, seq: Option<Seq>) -> OutboxEntry {
    OutboxEntry {
        id: id.into(),
        body: format!("text of {id}"),
        created,
        seq,
        at: seq.map(|s| 1_700_000_000_000 + s),
    }
}

fn seqs(page: &[StoredMessage]) -> Vec<Seq> {
    page.iter().map(|m| m.seq).collect()
}

fn must<T>(what: &str, r: Result<T, String>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Writing the same page twice stores it once.
pub async fn idempotent_inbox_writes<B: Backend>(b: &B, conv: &str) {
    let write = ClientWrite::Inbox {
        messages: messages(1..=3),
        state: Some(inbox(3)),
    };
    must("first write", b.apply_all(conv, &[write.clone()]).await);
    must("second write", b.apply_all(conv, &[write]).await);
    let snap = must("snapshot", b.snapshot(conv).await);
    assert_eq!(snap.inbox, Some(inbox(3)));
    assert!(snap.above.is_empty());
    assert_eq!(
        seqs(&must("page", b.before(conv, 100, 10).await)),
        vec![1, 2, 3]
    );
}

/// Messages above the watermark come back as `above`, in order.
pub async fn above_watermark_is_restored<B: Backend>(b: &B, conv: &str) {
    let ops = [
        ClientWrite::Inbox {
            messages: messages([6, 5]),
            state: None,
        },
        ClientWrite::Inbox {
            messages: messages(1..=2),
            state: Some(inbox(2)),
        },
    ];
    must("writes", b.apply_all(conv, &ops).await);
    let snap = must("snapshot", b.snapshot(conv).await);
    assert_eq!(snap.inbox, Some(inbox(2)));
    assert_eq!(seqs(&snap.above), vec![5, 6]);
    assert_eq!(
        snap.above[0],
        message(5),
        "messages round-trip field by field"
    );
}

/// The outbox keeps creation order; a put replaces, a remove removes.
pub async fn outbox_order_replace_remove<B: Backend>(b: &B, conv: &str) {
    let ops = [
        ClientWrite::PutOutbox(entry("01A", 10, None)),
        ClientWrite::PutOutbox(entry("01B", 20, None)),
        ClientWrite::PutOutbox(entry("01C", 30, None)),
        ClientWrite::PutOutbox(entry("01B", 20, Some(7))),
    ];
    must("puts", b.apply_all(conv, &ops).await);
    let snap = must("snapshot", b.snapshot(conv).await);
    assert_eq!(
        snap.outbox,
        vec![
            entry("01A", 10, None),
            entry("01B", 20, Some(7)),
            entry("01C", 30, None)
        ]
    );
    assert_eq!(snap.inbox, None, "outbox writes create no inbox");
    must(
        "remove",
        b.apply_all(conv, &[ClientWrite::RemoveOutbox { id: "01A".into() }])
            .await,
    );
    must(
        "remove unknown",
        b.apply_all(conv, &[ClientWrite::RemoveOutbox { id: "nope".into() }])
            .await,
    );
    let ids: Vec<String> = must("snapshot", b.snapshot(conv).await)
        .outbox
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec!["01B", "01C"]);
}

/// `ClearInbox` empties this conversation's inbox only; the outbox stays.
pub async fn clear_inbox_is_scoped<B: Backend>(b: &B, conv: &str, other: &str) {
    for c in [conv, other] {
        let ops = [
            ClientWrite::Inbox {
                messages: messages(1..=4),
                state: Some(inbox(4)),
            },
            ClientWrite::PutOutbox(entry(&format!("{c}-x"), 5, None)),
        ];
        must("writes", b.apply_all(c, &ops).await);
    }
    must("clear", b.apply_all(conv, &[ClientWrite::ClearInbox]).await);
    let cleared = must("snapshot", b.snapshot(conv).await);
    assert_eq!(cleared.inbox, None);
    assert_eq!(
        cleared.outbox.len(),
        1,
        "the outbox survives a cleared inbox"
    );
    assert!(must("page", b.before(conv, 100, 10).await).is_empty());
    let kept = must("snapshot", b.snapshot(other).await);
    assert_eq!(kept.inbox, Some(inbox(4)));
    assert_eq!(
        seqs(&must("page", b.before(other, 100, 10).await)),
        vec![1, 2, 3, 4]
    );
}

/// Pages below a seq walk back to seq 1.
pub async fn paging_walks_back<B: Backend>(b: &B, conv: &str) {
    must(
        "write",
        b.apply_all(
            conv,
            &[ClientWrite::Inbox {
                messages: messages(1..=120),
                state: Some(inbox(120)),
            }],
        )
        .await,
    );
    assert_eq!(
        seqs(&must("p1", b.before(conv, 121, 50).await)),
        (71..=120).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&must("p2", b.before(conv, 71, 50).await)),
        (21..=70).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&must("p3", b.before(conv, 21, 50).await)),
        (1..=20).collect::<Vec<_>>()
    );
    assert!(must("p4", b.before(conv, 1, 50).await).is_empty());
}

/// Every case, each on its own conversation ids under `prefix`.
pub async fn run_all<B: Backend>(b: &B, prefix: &str) {
    idempotent_inbox_writes(b, &format!("{prefix}-idem")).await;
    above_watermark_is_restored(b, &format!("{prefix}-above")).await;
    outbox_order_replace_remove(b, &format!("{prefix}-outbox")).await;
    // "a" and "ab": ids that prefix each other must not leak into each other.
    clear_inbox_is_scoped(b, &format!("{prefix}-a"), &format!("{prefix}-ab")).await;
    paging_walks_back(b, &format!("{prefix}-paging")).await;
}
