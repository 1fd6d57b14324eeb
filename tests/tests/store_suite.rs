//! The client store suite against the simulator's in-memory disk. The same
//! suite runs against IndexedDB in the browser (client-wasm/tests/store_suite.rs).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use ackline_tests::sim::disk::ClientData;
use ackline_tests::store_suite::{run_all, Backend};
use protocol::{ClientSnapshot, ClientWrite, Seq, StoredMessage};

/// The simulator's client disk, one per conversation (a device's durable data).
#[derive(Default)]
struct MemoryBackend {
    conversations: RefCell<HashMap<String, ClientData>>,
}

impl Backend for MemoryBackend {
    async fn apply_all(&self, conversation: &str, ops: &[ClientWrite]) -> Result<(), String> {
        let mut map = self.conversations.borrow_mut();
        let data = map.entry(conversation.to_owned()).or_default();
        for op in ops {
            data.apply(op);
        }
        Ok(())
    }

    async fn snapshot(&self, conversation: &str) -> Result<ClientSnapshot, String> {
        Ok(self
            .conversations
            .borrow()
            .get(conversation)
            .map(ClientData::snapshot)
            .unwrap_or_default())
    }

    async fn before(
        &self,
        conversation: &str,
        before: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, String> {
        let map = self.conversations.borrow();
        let Some(data) = map.get(conversation) else {
            return Ok(Vec::new());
        };
        let mut page: Vec<StoredMessage> = data
            .messages
            .range(..before)
            .rev()
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect();
        page.reverse();
        Ok(page)
    }
}

/// The memory backend never waits, so polling once must finish the future.
fn run_ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the in-memory store suite must not wait"),
    }
}

#[test]
fn simulator_disk_passes_the_store_suite() {
    run_ready(run_all(&MemoryBackend::default(), "mem"));
}
