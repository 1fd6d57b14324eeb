//! The conversation store suite (tests/src/server_store_suite.rs) against
//! every server store: the shared in-memory store and the simulator's disk
//! natively, and the edge's SQLite store inside a Durable Object on real
//! workerd through the test-only route (enabled by ACKLINE_TEST_ROUTES=1).

use ackline_tests::edge::{fresh_storage, Edge};
use ackline_tests::server_store_suite::{self as suite, Backend, Report};
use ackline_tests::sim::disk::ServerDisk;
use protocol::server::{ConversationStore, DeviceRecord, ServerWrite, StoreError};
use protocol::store::{CommitError, DurableStore};
use protocol::{MemoryStore, Seq, StoredMessage, WriteId};

/// The simulator's server disk, driven like the shell drives SQLite: a batch
/// is checked as the store would check it, written (visible at once), then
/// flushed; reopening is a crash, which must lose nothing once flushed.
#[derive(Default)]
struct SimDisk {
    disk: ServerDisk,
    next_write: u64,
}

impl ConversationStore for SimDisk {
    fn last(&self) -> Result<Option<StoredMessage>, StoreError> {
        self.disk.visible.last()
    }
    fn find(
        &self,
        user: &str,
        device: &str,
        id: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.disk.visible.find(user, device, id)
    }
    fn after(&self, after: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.disk.visible.after(after, limit)
    }
    fn before(&self, before: Seq, limit: u32) -> Result<Vec<StoredMessage>, StoreError> {
        self.disk.visible.before(before, limit)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.disk.visible.devices()
    }
}

impl DurableStore for SimDisk {
    fn commit(&mut self, batch: &[ServerWrite]) -> Result<(), CommitError> {
        self.disk.visible.check(batch)?;
        for op in batch {
            self.next_write += 1;
            self.disk.write(WriteId(self.next_write), op.clone());
        }
        self.disk.flush(batch.len());
        Ok(())
    }
}

impl Backend for SimDisk {
    fn reopen(&mut self) -> Result<(), String> {
        match self.disk.crash() {
            0 => Ok(()),
            lost => Err(format!("a crash lost {lost} committed writes")),
        }
    }
}

fn assert_all_passed(backend: &str, reports: &[Report]) {
    let failed: Vec<String> = reports
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
        .collect();
    assert!(
        failed.is_empty(),
        "{backend} failed {} of {} cases:\n{}",
        failed.len(),
        reports.len(),
        failed.join("\n")
    );
    assert_eq!(reports.len(), suite::cases::<MemoryStore>().len());
}

fn durability<B: Backend>(mut b: B) {
    suite::durability_write(&mut b).expect("durability write");
    b.reopen().expect("reopen");
    suite::durability_check(&mut b).expect("durability check");
}

#[test]
fn shared_memory_store_passes_the_server_store_suite() {
    assert_all_passed("MemoryStore", &suite::run_all(|| Ok(MemoryStore::new())));
    durability(MemoryStore::new());
}

#[test]
fn simulator_disk_passes_the_server_store_suite() {
    assert_all_passed("simulator disk", &suite::run_all(|| Ok(SimDisk::default())));
    durability(SimDisk::default());
}

/// Every case of the suite, run by the edge in a scratch Durable Object.
const ROUTE: &str = "/v1/test/server-store-suite";

fn post(edge: &Edge, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = edge
        .http("POST", path, &[], "")
        .expect("request the suite route");
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: {status} {body:?} is not JSON: {e}"));
    (status, json)
}

#[test]
fn edge_sqlite_store_passes_the_server_store_suite_on_workerd() {
    let storage = fresh_storage("server-store-suite");
    let mut edge = Edge::start_with_vars(&storage, &[("ACKLINE_TEST_ROUTES", "1")]);

    let (status, json) = post(&edge, ROUTE);
    assert_eq!(status, 200, "{json}");
    let cases = json["cases"].as_array().expect("cases");
    let names: Vec<&str> = cases.iter().filter_map(|c| c["name"].as_str()).collect();
    let want: Vec<&str> = suite::cases::<MemoryStore>()
        .iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, want, "the edge ran every case, in order");
    let failed: Vec<String> = cases
        .iter()
        .filter(|c| c["passed"] != true)
        .map(|c| format!("{}: {}", c["name"], c["error"]))
        .collect();
    assert!(
        failed.is_empty(),
        "SQLite store failed {} cases:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert_eq!(json["failed"], 0, "{json}");

    // Durable across a SIGKILL of workerd, not only across a reopen.
    let (status, json) = post(&edge, &format!("{ROUTE}?durability=write"));
    assert_eq!(
        (status, &json["passed"]),
        (200, &serde_json::Value::Bool(true)),
        "{json}"
    );
    edge.restart();
    let (status, json) = post(&edge, &format!("{ROUTE}?durability=check"));
    assert_eq!(
        (status, &json["passed"]),
        (200, &serde_json::Value::Bool(true)),
        "{json}"
    );
}

#[test]
fn server_store_suite_route_is_not_found_without_the_test_var() {
    let storage = fresh_storage("server-store-suite-off");
    let edge = Edge::start(&storage);
    for path in [ROUTE.to_owned(), format!("{ROUTE}?durability=write")] {
        let (status, json) = post(&edge, &path);
        assert_eq!(
            (status, json["error"].as_str()),
            (404, Some("not_found")),
            "{path}: {json}"
        );
    }
    let (status, _) = edge.http_get(ROUTE).expect("GET the suite route");
    assert_eq!(status, 404);
}
