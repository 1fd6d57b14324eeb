//! The conversation store suite (tests/src/server_store_suite.rs) against
//! the shared in-memory store and the simulator's disk.

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
    fn find(&self, user: &str, device: &str, id: &str) -> Result<Option<StoredMessage>, StoreError> {
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
    assert!(failed.is_empty(), "{backend} failed {} of {} cases:\n{}", failed.len(), reports.len(), failed.join("\n"));
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
