//! The client store suite (tests/src/store_suite.rs, shared with the native
//! simulator's in-memory disk) against the IndexedDB store in the browser.
#![cfg(target_arch = "wasm32")]

#[path = "../../tests/src/store_suite.rs"]
mod suite;

use ackline::store::IdbStore;
use protocol::{ClientSnapshot, ClientWrite, Seq, StoredMessage};
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

struct Idb(IdbStore);

impl suite::Backend for Idb {
    async fn apply_all(&self, conversation: &str, ops: &[ClientWrite]) -> Result<(), String> {
        self.0
            .apply_all(conversation, ops)
            .await
            .map_err(|e| e.to_string())
    }

    async fn snapshot(&self, conversation: &str) -> Result<ClientSnapshot, String> {
        self.0
            .load_snapshot(conversation)
            .await
            .map_err(|e| e.to_string())
    }

    async fn before(
        &self,
        conversation: &str,
        before: Seq,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, String> {
        self.0
            .messages_before(conversation, before, limit)
            .await
            .map_err(|e| e.to_string())
    }
}

#[wasm_bindgen_test]
async fn indexeddb_passes_the_store_suite() {
    let name = format!("suite-{}", (js_sys::Math::random() * 1e12) as u64);
    let store = Idb(IdbStore::open(&name).await.expect("open"));
    suite::run_all(&store, "idb").await;
    store.0.close();
    if let Ok(factory) = idb::Factory::new() {
        if let Ok(request) = factory.delete(&name) {
            let _ = request.await;
        }
    }
}
