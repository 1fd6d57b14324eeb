//! One conversation-store conformance suite, every server store: the shared
//! in-memory store and the simulator's disk (natively,
//! `tests/tests/server_store_suite.rs`) and the edge's SQLite store inside a
//! Durable Object on workerd (`edge-worker/src/store_suite.rs` includes this
//! file by path and serves it on a test-only route). The contract it checks is
//! written down in `protocol/src/store.rs`.
//!
//! Depends only on `protocol` and std so that it compiles into the worker,
//! and never panics: a panic there kills the Durable Object's wasm instance,
//! so every case returns its failure as an `Err` instead.

use protocol::server::{
    ConnId, Conversation, ServerConfig, ServerInput, ServerOutput, ServerWrite,
};
use protocol::store::{CommitError, DurableStore};
use protocol::{limits, ChainHash, Cursor, Millis, Seq, ServerFrame, StoredMessage, MAX_SEQ};

/// A store under test.
pub trait Backend: DurableStore {
    /// Drops whatever the store holds in memory and opens it again from what
    /// it made durable (the SQLite store: `Store::open` on the same storage).
    fn reopen(&mut self) -> Result<(), String>;
}

/// What one case found: `Err` says what differed.
pub type Outcome = Result<(), String>;

/// One named case of the suite.
pub struct Case<B> {
    /// Stable name (the edge route reports it).
    pub name: &'static str,
    /// Runs the case on a fresh, empty store.
    pub run: fn(&mut B) -> Outcome,
}

/// Every case, in a stable order. Each expects a fresh, empty store.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        Case {
            name: "empty_store_reads_nothing",
            run: empty_store_reads_nothing::<B>,
        },
        Case {
            name: "appends_round_trip_field_by_field",
            run: appends_round_trip_field_by_field::<B>,
        },
        Case {
            name: "pages_after_and_before",
            run: pages_after_and_before::<B>,
        },
        Case {
            name: "batch_applies_in_order",
            run: batch_applies_in_order::<B>,
        },
        Case {
            name: "cursors_only_move_forward",
            run: cursors_only_move_forward::<B>,
        },
        Case {
            name: "seen_creates_a_record_and_never_moves_back",
            run: seen_creates_a_record_and_never_moves_back::<B>,
        },
        Case {
            name: "forget_deletes_one_device_and_keeps_its_messages",
            run: forget_deletes_one_device_and_keeps_its_messages::<B>,
        },
        Case {
            name: "devices_and_ids_are_namespaced_by_user_and_device",
            run: devices_and_ids_are_namespaced_by_user_and_device::<B>,
        },
        Case {
            name: "dedup_index_refuses_a_repeated_client_id_atomically",
            run: dedup_index_refuses_a_repeated_client_id_atomically::<B>,
        },
        Case {
            name: "taken_seq_is_refused_atomically",
            run: taken_seq_is_refused_atomically::<B>,
        },
        Case {
            name: "out_of_range_values_are_refused_atomically",
            run: out_of_range_values_are_refused_atomically::<B>,
        },
        Case {
            name: "max_values_round_trip",
            run: max_values_round_trip::<B>,
        },
        Case {
            name: "bodies_at_the_limit_and_unicode_round_trip",
            run: bodies_at_the_limit_and_unicode_round_trip::<B>,
        },
        Case {
            name: "reload_keeps_everything",
            run: reload_keeps_everything::<B>,
        },
        Case {
            name: "core_rebuilds_from_the_store",
            run: core_rebuilds_from_the_store::<B>,
        },
        Case {
            name: "retention_forgets_stale_devices_through_the_core",
            run: retention_forgets_stale_devices_through_the_core::<B>,
        },
    ]
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The case.
    pub name: &'static str,
    /// `None` when it passed, else what went wrong.
    pub failure: Option<String>,
}

/// Runs every case, each on its own store from `fresh`.
pub fn run_all<B: Backend>(mut fresh: impl FnMut() -> Result<B, String>) -> Vec<Report> {
    cases::<B>()
        .into_iter()
        .map(|case| {
            let failure = fresh().and_then(|mut b| (case.run)(&mut b)).err();
            Report {
                name: case.name,
                failure,
            }
        })
        .collect()
}

/// Runs the case called `name` on `b`; `None` when there is no such case.
pub fn run_case<B: Backend>(b: &mut B, name: &str) -> Option<Outcome> {
    cases::<B>()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| (c.run)(b))
}

// ------------------------------------------------------------------ helpers

macro_rules! ensure {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err(format!($($why)+));
        }
    };
}

macro_rules! ensure_eq {
    ($got:expr, $want:expr, $what:expr) => {
        match (&$got, &$want) {
            (got, want) => {
                if got != want {
                    return Err(format!("{}: got {:?}, want {:?}", $what, got, want));
                }
            }
        }
    };
}

const T0: Millis = 1_700_000_000_000;

/// A message whose chain value is a non-trivial function of its fields (not
/// a real chain: the store keeps whatever it is given).
fn message(seq: Seq, user: &str, device: &str, id: &str, body: &str) -> StoredMessage {
    StoredMessage {
        seq,
        user: user.into(),
        device: device.into(),
        id: id.into(),
        body: body.into(),
        at: T0.saturating_add(seq),
        chain: ChainHash::GENESIS.next(seq, user, device, id, body),
    }
}

fn ann(seq: Seq) -> StoredMessage {
    message(
        seq,
        "ann",
        "a1",
        &format!("id-{seq:05}"),
        &format!("body {seq}"),
    )
}

fn append(m: &StoredMessage) -> ServerWrite {
    ServerWrite::Append(m.clone())
}

fn cursor(user: &str, device: &str, through: Seq) -> ServerWrite {
    ServerWrite::Cursor(Cursor {
        user: user.into(),
        device: device.into(),
        through,
    })
}

fn seen(user: &str, device: &str, at: Millis) -> ServerWrite {
    ServerWrite::Seen {
        user: user.into(),
        device: device.into(),
        at,
    }
}

fn forget(user: &str, device: &str) -> ServerWrite {
    ServerWrite::Forget {
        user: user.into(),
        device: device.into(),
    }
}

fn commit<B: Backend>(b: &mut B, batch: &[ServerWrite], what: &str) -> Outcome {
    b.commit(batch)
        .map_err(|e| format!("{what}: commit refused: {e}"))
}

/// Commits `batch`, which must be refused as `expected` says.
fn refused<B: Backend>(
    b: &mut B,
    batch: &[ServerWrite],
    what: &str,
    expected: fn(&CommitError) -> bool,
) -> Outcome {
    match b.commit(batch) {
        Ok(()) => Err(format!("{what}: committed, but must be refused")),
        Err(e) if expected(&e) => Ok(()),
        Err(e) => Err(format!("{what}: refused for the wrong reason: {e:?}")),
    }
}

fn read<T>(r: Result<T, protocol::StoreError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn seqs(page: &[StoredMessage]) -> Vec<Seq> {
    page.iter().map(|m| m.seq).collect()
}

fn range(from: Seq, to: Seq) -> Vec<Seq> {
    (from..=to).collect()
}

/// Every device record as (user, device, through, seen), sorted (the store
/// may return them in any order).
fn devices<B: Backend>(b: &B) -> Result<Vec<(String, String, Seq, Millis)>, String> {
    let mut v: Vec<_> = read(b.devices(), "devices")?
        .into_iter()
        .map(|r| (r.cursor.user, r.cursor.device, r.cursor.through, r.seen))
        .collect();
    v.sort();
    Ok(v)
}

fn record(user: &str, device: &str, through: Seq, seen: Millis) -> (String, String, Seq, Millis) {
    (user.into(), device.into(), through, seen)
}

/// Every stored message, read forward in pages.
fn all_messages<B: Backend>(b: &B) -> Result<Vec<StoredMessage>, String> {
    let mut out: Vec<StoredMessage> = Vec::new();
    loop {
        let from = out.last().map_or(0, |m| m.seq);
        let page = read(b.after(from, 100), "after")?;
        if page.is_empty() {
            return Ok(out);
        }
        ensure!(
            page.first().is_some_and(|m| m.seq > from),
            "after({from}) returned seq {:?}",
            seqs(&page)
        );
        out.extend(page);
    }
}

/// Everything a store holds, as its reads show it.
#[derive(Debug, PartialEq)]
struct Dump {
    last: Option<StoredMessage>,
    messages: Vec<StoredMessage>,
    found: Vec<Option<StoredMessage>>,
    devices: Vec<(String, String, Seq, Millis)>,
}

fn dump<B: Backend>(b: &B) -> Result<Dump, String> {
    let messages = all_messages(b)?;
    let mut found = Vec::new();
    for m in &messages {
        found.push(read(b.find(&m.user, &m.device, &m.id), "find")?);
    }
    Ok(Dump {
        last: read(b.last(), "last")?,
        messages,
        found,
        devices: devices(b)?,
    })
}

/// A minimal shell: feeds `input` to the core, commits each round of writes
/// as one batch and reports it durable, until the core is quiet. Returns the
/// frames sent.
fn drive<B: Backend>(
    core: &mut Conversation,
    b: &mut B,
    now: Millis,
    input: ServerInput,
) -> Result<Vec<(ConnId, ServerFrame)>, String> {
    let mut frames = Vec::new();
    let mut input = Some(input);
    while let Some(next) = input.take() {
        core.handle(now, next, &*b);
        let mut batch = Vec::new();
        let mut last = None;
        while let Some(out) = core.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => frames.push((conn, frame)),
                ServerOutput::Persist { write, op } => {
                    batch.push(op);
                    last = Some(write);
                }
                ServerOutput::Close { conn, code, reason } => {
                    return Err(format!("the core closed {conn:?} with {code}: {reason}"))
                }
                ServerOutput::Remember { .. } => {}
            }
        }
        if let Some(through) = last {
            commit(b, &batch, "a core batch")?;
            input = Some(ServerInput::Durable { through });
        }
    }
    Ok(frames)
}

fn connected(conn: u64, user: &str, device: &str) -> ServerInput {
    ServerInput::Connected {
        conn: ConnId(conn),
        user: user.into(),
        device: device.into(),
        resumed: None,
        expires: None,
    }
}

fn text(conn: u64, json: &str) -> ServerInput {
    ServerInput::Frame {
        conn: ConnId(conn),
        bytes: json.as_bytes().to_vec(),
    }
}

fn rebuild<B: Backend>(b: &B, now: Millis) -> Result<Conversation, String> {
    Conversation::new(ServerConfig::new("suite"), 7, now, b)
        .map_err(|e| format!("Conversation::new: {e}"))
}

// -------------------------------------------------------------------- cases

/// A new store has no messages and no devices, and a core starts empty on it.
pub fn empty_store_reads_nothing<B: Backend>(b: &mut B) -> Outcome {
    ensure_eq!(read(b.last(), "last")?, None, "last");
    ensure_eq!(read(b.find("ann", "a1", "id"), "find")?, None, "find");
    ensure_eq!(read(b.after(0, 10), "after")?, vec![], "after(0)");
    ensure_eq!(
        read(b.before(MAX_SEQ, 10), "before")?,
        vec![],
        "before(MAX_SEQ)"
    );
    ensure_eq!(devices(b)?, vec![], "devices");
    commit(b, &[], "an empty batch")?;
    let stats = rebuild(b, T0)?.stats();
    ensure_eq!((stats.head, stats.devices), (0, 0), "core head and devices");
    Ok(())
}

/// Appended messages come back equal, field by field, from every read.
pub fn appends_round_trip_field_by_field<B: Backend>(b: &mut B) -> Outcome {
    let m1 = message(1, "ann", "a1", "01HF7YAT00DTAJHVZ36ES6DW83", "hello");
    let m2 = message(2, "bob", "b1", "01HF7YAT00DTAJHVZ36ES6DW84", "hi ann");
    let m3 = message(
        3,
        "ann",
        "a2",
        "01HF7YAT00DTAJHVZ36ES6DW85",
        "from my phone",
    );
    commit(b, &[append(&m1), append(&m2)], "first batch")?;
    commit(b, &[append(&m3)], "second batch")?;
    ensure_eq!(read(b.last(), "last")?, Some(m3.clone()), "last");
    for m in [&m1, &m2, &m3] {
        ensure_eq!(
            read(b.find(&m.user, &m.device, &m.id), "find")?,
            Some(m.clone()),
            format!("find seq {}", m.seq)
        );
    }
    ensure_eq!(
        read(b.after(0, 10), "after")?,
        vec![m1.clone(), m2.clone(), m3.clone()],
        "after(0)"
    );
    ensure_eq!(
        read(b.before(4, 10), "before")?,
        vec![m1, m2, m3],
        "before(4)"
    );
    ensure_eq!(devices(b)?, vec![], "appends create no device records");
    Ok(())
}

/// Forward and backward pages walk the whole conversation without gaps or
/// overlaps, and honour their limits.
pub fn pages_after_and_before<B: Backend>(b: &mut B) -> Outcome {
    for start in (1..=120).step_by(10) {
        let batch: Vec<ServerWrite> = (start..start + 10).map(|s| append(&ann(s))).collect();
        commit(b, &batch, "ten appends")?;
    }
    ensure_eq!(
        seqs(&read(b.after(0, 50), "after")?),
        range(1, 50),
        "after(0, 50)"
    );
    ensure_eq!(
        seqs(&read(b.after(50, 50), "after")?),
        range(51, 100),
        "after(50, 50)"
    );
    ensure_eq!(
        seqs(&read(b.after(100, 50), "after")?),
        range(101, 120),
        "after(100, 50)"
    );
    ensure_eq!(
        seqs(&read(b.after(120, 50), "after")?),
        Vec::<Seq>::new(),
        "after(120, 50)"
    );
    ensure_eq!(
        seqs(&read(b.after(0, 0), "after")?),
        Vec::<Seq>::new(),
        "after(0, 0)"
    );
    ensure_eq!(seqs(&read(b.after(7, 1), "after")?), vec![8], "after(7, 1)");
    ensure_eq!(
        seqs(&read(b.before(121, 50), "before")?),
        range(71, 120),
        "before(121, 50)"
    );
    ensure_eq!(
        seqs(&read(b.before(71, 50), "before")?),
        range(21, 70),
        "before(71, 50)"
    );
    ensure_eq!(
        seqs(&read(b.before(21, 50), "before")?),
        range(1, 20),
        "before(21, 50)"
    );
    ensure_eq!(
        seqs(&read(b.before(1, 50), "before")?),
        Vec::<Seq>::new(),
        "before(1, 50)"
    );
    ensure_eq!(
        seqs(&read(b.before(0, 50), "before")?),
        Vec::<Seq>::new(),
        "before(0, 50)"
    );
    ensure_eq!(
        seqs(&read(b.before(500, 5), "before")?),
        range(116, 120),
        "before(500, 5)"
    );
    ensure_eq!(
        seqs(&read(b.before(60, 0), "before")?),
        Vec::<Seq>::new(),
        "before(60, 0)"
    );
    let pages = read(b.after(0, limits::MAX_PAGE), "after")?;
    ensure_eq!(seqs(&pages), range(1, 120), "after(0, MAX_PAGE)");
    ensure_eq!(pages.get(41), Some(&ann(42)), "a paged message");
    Ok(())
}

/// Writes apply in the order given, inside a batch and across batches.
pub fn batch_applies_in_order<B: Backend>(b: &mut B) -> Outcome {
    commit(
        b,
        &[
            // Forget then Seen recreates; Seen then Forget deletes.
            seen("ann", "a1", 10),
            forget("ann", "a1"),
            seen("ann", "a1", 5),
            cursor("bob", "b1", 7),
            forget("bob", "b1"),
            forget("cat", "c1"),
            cursor("cat", "c1", 4),
            // An append is visible to the writes after it.
            append(&ann(1)),
            append(&ann(2)),
        ],
        "mixed batch",
    )?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, 5), record("cat", "c1", 4, 0)],
        "devices"
    );
    ensure_eq!(
        seqs(&read(b.after(0, 10), "after")?),
        vec![1, 2],
        "messages"
    );
    commit(b, &[forget("cat", "c1")], "a later forget")?;
    commit(b, &[seen("cat", "c1", 9)], "a later seen")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, 5), record("cat", "c1", 0, 9)],
        "a forgotten device starts over"
    );
    Ok(())
}

/// A cursor is created by its first write and never moves back.
pub fn cursors_only_move_forward<B: Backend>(b: &mut B) -> Outcome {
    commit(b, &[cursor("ann", "a1", 5)], "first cursor")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 5, 0)],
        "a cursor creates its record, never seen"
    );
    commit(b, &[cursor("ann", "a1", 3)], "lower cursor")?;
    commit(
        b,
        &[cursor("ann", "a1", 9), cursor("ann", "a1", 6)],
        "up and down in one batch",
    )?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 9, 0)],
        "cursor after lower writes"
    );
    commit(b, &[seen("ann", "a1", T0)], "seen")?;
    commit(b, &[cursor("ann", "a1", 9)], "same cursor again")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 9, T0)],
        "seen keeps the cursor, a cursor keeps seen"
    );
    Ok(())
}

/// Seen creates a record at cursor 0 and its time never moves back.
pub fn seen_creates_a_record_and_never_moves_back<B: Backend>(b: &mut B) -> Outcome {
    commit(b, &[seen("ann", "a1", T0)], "first seen")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, T0)],
        "seen creates the record"
    );
    commit(b, &[seen("ann", "a1", T0 - 1)], "an older seen")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, T0)],
        "seen never moves back"
    );
    commit(
        b,
        &[seen("ann", "a1", T0 + 1), seen("ann", "a1", T0 + 5)],
        "newer seens",
    )?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, T0 + 5)],
        "seen moves forward"
    );
    Ok(())
}

/// Forget deletes exactly one device's record; the dedup index still knows
/// its messages, so a send it retries later is not stored twice.
pub fn forget_deletes_one_device_and_keeps_its_messages<B: Backend>(b: &mut B) -> Outcome {
    let m = ann(1);
    commit(
        b,
        &[
            seen("ann", "a1", T0),
            seen("ann", "a2", T0),
            seen("bob", "a1", T0),
            cursor("ann", "a1", 1),
            append(&m),
        ],
        "setup",
    )?;
    commit(b, &[forget("ann", "a1")], "forget")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a2", 0, T0), record("bob", "a1", 0, T0)],
        "devices after forget"
    );
    ensure_eq!(
        read(b.find("ann", "a1", &m.id), "find")?,
        Some(m.clone()),
        "a forgotten device's message"
    );
    commit(
        b,
        &[forget("ann", "a1"), forget("nobody", "n1")],
        "forgetting the unknown",
    )?;
    commit(b, &[seen("ann", "a1", T0 + 1)], "the device returns")?;
    ensure_eq!(
        devices(b)?,
        vec![
            record("ann", "a1", 0, T0 + 1),
            record("ann", "a2", 0, T0),
            record("bob", "a1", 0, T0)
        ],
        "a returning device starts at cursor 0"
    );
    let again = message(2, "ann", "a1", &m.id, "the retry");
    refused(b, &[append(&again)], "a forgotten device's old id", |e| {
        matches!(e, CommitError::DuplicateId { .. })
    })
}

/// Two users' devices with the same id share nothing; one user's devices
/// may reuse each other's client ids.
pub fn devices_and_ids_are_namespaced_by_user_and_device<B: Backend>(b: &mut B) -> Outcome {
    let batch = [
        cursor("ann", "x1", 3),
        cursor("bob", "x1", 1),
        append(&message(1, "ann", "x1", "same", "ann on x1")),
        append(&message(2, "bob", "x1", "same", "bob on x1")),
        append(&message(3, "ann", "x2", "same", "ann on x2")),
    ];
    commit(b, &batch, "same ids, different owners")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "x1", 3, 0), record("bob", "x1", 1, 0)],
        "devices"
    );
    for (user, device, seq) in [("ann", "x1", 1), ("bob", "x1", 2), ("ann", "x2", 3)] {
        let found = read(b.find(user, device, "same"), "find")?.map(|m| m.seq);
        ensure_eq!(found, Some(seq), format!("find {user}/{device}/same"));
    }
    ensure_eq!(
        read(b.find("cat", "x1", "same"), "find")?,
        None,
        "find for another user"
    );
    commit(b, &[forget("bob", "x1")], "forget bob's x1")?;
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "x1", 3, 0)],
        "ann's x1 stays"
    );
    Ok(())
}

/// A repeated (user, device, client id) is refused, and its batch leaves no
/// trace: not the cursor before it, not an append before it.
pub fn dedup_index_refuses_a_repeated_client_id_atomically<B: Backend>(b: &mut B) -> Outcome {
    let m1 = ann(1);
    commit(b, &[append(&m1), cursor("ann", "a1", 1)], "setup")?;
    let before = dump(b)?;
    let retry = message(3, "ann", "a1", &m1.id, "the same send again");
    let batch = [
        cursor("ann", "a1", 5),
        seen("bob", "b1", T0),
        append(&ann(2)),
        append(&retry),
    ];
    refused(b, &batch, "a repeated client id", |e| {
        matches!(e, CommitError::DuplicateId { .. })
    })?;
    ensure_eq!(dump(b)?, before, "the store after a refused batch");
    let twice = [
        append(&ann(2)),
        append(&message(3, "ann", "a1", &ann(2).id, "again")),
    ];
    refused(b, &twice, "an id repeated inside one batch", |e| {
        matches!(e, CommitError::DuplicateId { .. })
    })?;
    ensure_eq!(dump(b)?, before, "the store after a refused batch");
    commit(b, &[append(&ann(2))], "the next append")?;
    ensure_eq!(
        read(b.last(), "last")?.map(|m| m.seq),
        Some(2),
        "head after the refusals"
    );
    Ok(())
}

/// An append to a stored seq is refused (never overwrites), atomically.
pub fn taken_seq_is_refused_atomically<B: Backend>(b: &mut B) -> Outcome {
    commit(b, &[append(&ann(1))], "setup")?;
    let before = dump(b)?;
    let other = message(1, "bob", "b1", "other", "overwrite?");
    refused(
        b,
        &[seen("bob", "b1", T0), append(&other)],
        "a taken seq",
        |e| matches!(e, CommitError::SeqTaken { seq: 1 }),
    )?;
    ensure_eq!(dump(b)?, before, "the store after a refused batch");
    let pair = [
        append(&ann(2)),
        append(&message(2, "bob", "b1", "other", "same seq")),
    ];
    refused(b, &pair, "a seq taken inside one batch", |e| {
        matches!(e, CommitError::SeqTaken { seq: 2 })
    })?;
    ensure_eq!(dump(b)?, before, "the store after a refused batch");
    Ok(())
}

/// Seq 0 and integers above MAX_SEQ are refused, and the batch leaves no trace.
pub fn out_of_range_values_are_refused_atomically<B: Backend>(b: &mut B) -> Outcome {
    commit(b, &[append(&ann(1)), seen("ann", "a1", T0)], "setup")?;
    let before = dump(b)?;
    let mut late = ann(2);
    late.at = MAX_SEQ + 1;
    let bad: [(&str, ServerWrite); 5] = [
        ("seq 0", append(&ann(0))),
        ("seq above MAX_SEQ", append(&ann(MAX_SEQ + 1))),
        ("at above MAX_SEQ", append(&late)),
        ("cursor above MAX_SEQ", cursor("ann", "a1", MAX_SEQ + 1)),
        ("seen above MAX_SEQ", seen("ann", "a1", MAX_SEQ + 1)),
    ];
    for (what, op) in bad {
        let batch = [cursor("ann", "a1", 1), append(&ann(3)), op];
        refused(b, &batch, what, |e| {
            matches!(e, CommitError::OutOfRange { .. })
        })?;
        ensure_eq!(dump(b)?, before, format!("the store after refusing {what}"));
    }
    Ok(())
}

/// The largest values round-trip: seq, time, cursor and last-seen at MAX_SEQ,
/// and reads around MAX_SEQ (the core asks for pages below head + 1).
pub fn max_values_round_trip<B: Backend>(b: &mut B) -> Outcome {
    let first = ann(1);
    let mut top = ann(MAX_SEQ);
    top.at = MAX_SEQ;
    commit(
        b,
        &[
            append(&first),
            append(&top),
            cursor("ann", "a1", MAX_SEQ),
            seen("ann", "a1", MAX_SEQ),
        ],
        "max values",
    )?;
    ensure_eq!(read(b.last(), "last")?, Some(top.clone()), "last");
    ensure_eq!(
        read(b.find("ann", "a1", &top.id), "find")?,
        Some(top.clone()),
        "find"
    );
    ensure_eq!(
        read(b.after(1, 10), "after")?,
        vec![top.clone()],
        "after(1)"
    );
    ensure_eq!(
        read(b.after(MAX_SEQ - 1, 10), "after")?,
        vec![top.clone()],
        "after(MAX_SEQ - 1)"
    );
    ensure_eq!(
        read(b.after(MAX_SEQ, 10), "after")?,
        vec![],
        "after(MAX_SEQ)"
    );
    ensure_eq!(
        read(b.before(MAX_SEQ, 10), "before")?,
        vec![first.clone()],
        "before(MAX_SEQ)"
    );
    ensure_eq!(
        read(b.before(MAX_SEQ + 1, 10), "before")?,
        vec![first, top],
        "before(MAX_SEQ + 1)"
    );
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", MAX_SEQ, MAX_SEQ)],
        "devices"
    );
    let stats = rebuild(b, T0)?.stats();
    ensure_eq!(stats.head, MAX_SEQ, "core head");
    Ok(())
}

/// Bodies of exactly the body limit (one-byte and four-byte characters),
/// and unicode, quotes, NUL and SQL in every text field, round-trip.
pub fn bodies_at_the_limit_and_unicode_round_trip<B: Backend>(b: &mut B) -> Outcome {
    let ascii = "x".repeat(limits::MAX_BODY_BYTES);
    let emoji = "😀".repeat(limits::MAX_BODY_BYTES / 4);
    let mixed = "héllo wörld ✓✓ 🧵 日本語 עברית e\u{301} \u{200d}\u{feff}\u{ffff} \"q\" \\ '; DROP TABLE messages; --";
    let id64 = "i".repeat(limits::MAX_ID_LEN);
    let texts = [
        message(1, "ann", "a1", "ascii", &ascii),
        message(2, "ann", "a1", "emoji", &emoji),
        message(3, "zoë", "📱 phone", "ид-1", mixed),
        message(4, "ann", "a1", "nul", "before\u{0}after"),
        message(5, "ann", "a1", &id64, ""),
        message(6, "o'brien", "dev\"1", "'; --", "\n\r\t"),
    ];
    let (bytes_ascii, bytes_emoji) = (texts[0].body.len(), texts[1].body.len());
    ensure_eq!(
        (bytes_ascii, bytes_emoji),
        (limits::MAX_BODY_BYTES, limits::MAX_BODY_BYTES),
        "body sizes"
    );
    let batch: Vec<ServerWrite> = texts
        .iter()
        .map(append)
        .chain([seen("zoë", "📱 phone", T0)])
        .collect();
    commit(b, &batch, "unicode batch")?;
    ensure_eq!(all_messages(b)?, texts.to_vec(), "messages");
    for m in &texts {
        ensure_eq!(
            read(b.find(&m.user, &m.device, &m.id), "find")?,
            Some(m.clone()),
            format!("find seq {}", m.seq)
        );
    }
    ensure_eq!(
        read(b.find("zoe", "📱 phone", "ид-1"), "find")?,
        None,
        "find with a different spelling"
    );
    ensure_eq!(
        devices(b)?,
        vec![record("zoë", "📱 phone", 0, T0)],
        "devices"
    );
    Ok(())
}

/// Reopening the store shows exactly what it showed before, and it goes on
/// working: the next append is taken, an old id is still refused.
pub fn reload_keeps_everything<B: Backend>(b: &mut B) -> Outcome {
    let batches = [
        vec![
            seen("ann", "a1", T0),
            seen("bob", "b1", T0 + 1),
            append(&ann(1)),
            append(&ann(2)),
        ],
        vec![
            cursor("bob", "b1", 2),
            append(&ann(3)),
            seen("cat", "c1", T0 + 2),
        ],
        vec![
            forget("cat", "c1"),
            cursor("ann", "a1", 3),
            append(&message(4, "bob", "b1", "b-1", "hi")),
        ],
    ];
    for batch in &batches {
        commit(b, batch, "setup")?;
    }
    let before = dump(b)?;
    let core = rebuild(b, T0 + 10)?.stats();
    b.reopen()?;
    ensure_eq!(dump(b)?, before, "the store after reopening");
    ensure_eq!(
        rebuild(b, T0 + 10)?.stats(),
        core,
        "a core rebuilt after reopening"
    );
    commit(b, &[append(&ann(5))], "an append after reopening")?;
    refused(
        b,
        &[append(&message(6, "ann", "a1", &ann(1).id, "again"))],
        "an old id after reopening",
        |e| matches!(e, CommitError::DuplicateId { .. }),
    )?;
    b.reopen()?;
    ensure_eq!(
        read(b.last(), "last")?.map(|m| m.seq),
        Some(5),
        "head after a second reopening"
    );
    Ok(())
}

/// A core that ran on the store and a core rebuilt from it agree: same head,
/// chain, devices and cursors, and a retried send gets its original seq.
pub fn core_rebuilds_from_the_store<B: Backend>(b: &mut B) -> Outcome {
    let mut core = rebuild(b, T0)?;
    drive(&mut core, b, T0, connected(1, "ann", "a1"))?;
    drive(&mut core, b, T0, text(1, r#"{"v":1,"type":"hello"}"#))?;
    drive(&mut core, b, T0 + 1, connected(2, "bob", "b1"))?;
    drive(&mut core, b, T0 + 1, text(2, r#"{"v":1,"type":"hello"}"#))?;
    let mut sent = Vec::new();
    for i in 1..=3 {
        let frame = format!(r#"{{"v":1,"type":"send","id":"m{i}","body":"message {i}"}}"#);
        for (conn, f) in drive(&mut core, b, T0 + 2, text(1, &frame))? {
            if let (ConnId(1), ServerFrame::Sent { id, seq, .. }) = (conn, f) {
                sent.push((id, seq));
            }
        }
    }
    let want: Vec<(String, Seq)> = (1..=3).map(|i| (format!("m{i}"), i)).collect();
    ensure_eq!(sent, want, "sent confirmations");
    drive(
        &mut core,
        b,
        T0 + 3,
        text(2, r#"{"v":1,"type":"ack","seq":2}"#),
    )?;
    // The cursor is written once its coalescing delay has passed.
    let cursor_delay = ServerConfig::new("suite").cursor_delay;
    drive(&mut core, b, T0 + 3 + cursor_delay, ServerInput::Timeout)?;
    let ran = core.stats();
    ensure_eq!(
        (ran.head, ran.durable_head, ran.devices, ran.members),
        (3, 3, 2, 2),
        "the running core"
    );
    let chain = read(b.last(), "last")?.map(|m| m.chain);
    ensure!(chain.is_some(), "no last message after three sends");
    ensure_eq!(
        devices(b)?,
        vec![record("ann", "a1", 0, T0), record("bob", "b1", 2, T0 + 1)],
        "device records the core wrote"
    );

    b.reopen()?;
    let mut core = rebuild(b, T0 + 100)?;
    let stats = core.stats();
    ensure_eq!(
        (stats.head, stats.durable_head, stats.devices, stats.members),
        (3, 3, 2, 2),
        "the rebuilt core"
    );
    drive(&mut core, b, T0 + 100, connected(3, "bob", "b1"))?;
    let frames = drive(
        &mut core,
        b,
        T0 + 100,
        text(3, r#"{"v":1,"type":"hello","after":2}"#),
    )?;
    let welcome = frames.iter().find_map(|(_, f)| match f {
        ServerFrame::Welcome {
            head,
            chain,
            cursors,
            ..
        } => Some((*head, Some(*chain), cursors.clone())),
        _ => None,
    });
    let Some((head, welcome_chain, cursors)) = welcome else {
        return Err(format!("no welcome from the rebuilt core: {frames:?}"));
    };
    ensure_eq!((head, welcome_chain), (3, chain), "welcome head and chain");
    let bob = cursors.iter().find(|c| c.user == "bob").map(|c| c.through);
    ensure_eq!(bob, Some(2), "bob's cursor in the welcome");
    let gap: Vec<Seq> = frames
        .iter()
        .flat_map(|(_, f)| match f {
            ServerFrame::Batch { messages, .. } | ServerFrame::Push { messages } => seqs(messages),
            _ => Vec::new(),
        })
        .collect();
    ensure_eq!(gap, vec![3], "gap-fill from the rebuilt core");
    drive(&mut core, b, T0 + 101, connected(4, "ann", "a1"))?;
    drive(
        &mut core,
        b,
        T0 + 101,
        text(4, r#"{"v":1,"type":"hello","after":3}"#),
    )?;
    let retry = drive(
        &mut core,
        b,
        T0 + 102,
        text(4, r#"{"v":1,"type":"send","id":"m2","body":"message 2"}"#),
    )?;
    let again: Vec<Seq> = retry
        .iter()
        .filter_map(|(_, f)| match f {
            ServerFrame::Sent { id, seq, .. } if id == "m2" => Some(*seq),
            _ => None,
        })
        .collect();
    ensure_eq!(again, vec![2], "a retried send after the rebuild");
    ensure_eq!(
        read(b.last(), "last")?.map(|m| m.seq),
        Some(3),
        "head after the retry"
    );
    Ok(())
}

/// Devices unseen for the retention period are forgotten by the core on its
/// first input, through a Forget the store carries out; their messages stay.
pub fn retention_forgets_stale_devices_through_the_core<B: Backend>(b: &mut B) -> Outcome {
    let retention = ServerConfig::new("suite").device_retention;
    let now = T0 + retention;
    let old = message(1, "old", "o1", "o-1", "long ago");
    commit(
        b,
        &[
            append(&old),
            seen("old", "o1", T0 - 1),
            cursor("old", "o1", 1),
            seen("ann", "a1", now - 1_000),
            seen("bob", "b1", 0),
        ],
        "setup",
    )?;
    let mut core = rebuild(b, now)?;
    drive(&mut core, b, now, ServerInput::Timeout)?;
    // Last seen 0 means "unknown" (a record from before the field): kept.
    ensure_eq!(
        devices(b)?,
        vec![
            record("ann", "a1", 0, now - 1_000),
            record("bob", "b1", 0, 0)
        ],
        "devices after retention"
    );
    ensure_eq!(core.stats().devices, 2, "the core's devices");
    b.reopen()?;
    ensure_eq!(
        rebuild(b, now)?.stats().devices,
        2,
        "a rebuilt core's devices"
    );
    ensure_eq!(
        read(b.find("old", "o1", "o-1"), "find")?,
        Some(old),
        "a forgotten device's message"
    );
    Ok(())
}

// ---------------------------------------------------------------- durability

/// The first half of the durability check: writes a known state. Between
/// the halves the process holding the store is killed (the edge test
/// SIGKILLs workerd) or the store is reopened.
pub fn durability_write<B: Backend>(b: &mut B) -> Outcome {
    for batch in durability_batches() {
        commit(b, &batch, "durability batch")?;
    }
    Ok(())
}

/// The second half: everything [`durability_write`] committed is there.
pub fn durability_check<B: Backend>(b: &mut B) -> Outcome {
    let want = durability_want();
    ensure_eq!(dump(b)?, want, "the store after a restart");
    Ok(())
}

fn durability_batches() -> Vec<Vec<ServerWrite>> {
    vec![
        (1..=20)
            .map(|s| append(&ann(s)))
            .chain([seen("ann", "a1", T0)])
            .collect(),
        vec![
            cursor("ann", "a1", 20),
            seen("bob", "b1", T0 + 1),
            forget("bob", "b1"),
            append(&ann(21)),
        ],
    ]
}

fn durability_want() -> Dump {
    let messages: Vec<StoredMessage> = (1..=21).map(ann).collect();
    Dump {
        last: messages.last().cloned(),
        found: messages.iter().cloned().map(Some).collect(),
        messages,
        devices: vec![record("ann", "a1", 20, T0)],
    }
}

/// The shared in-memory store is the reference: it holds nothing elsewhere,
/// so reopening it has nothing to reload.
impl Backend for protocol::MemoryStore {
    fn reopen(&mut self) -> Result<(), String> {
        Ok(())
    }
}
