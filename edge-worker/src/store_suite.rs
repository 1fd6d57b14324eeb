//! Test-only: the server store suite (tests/src/server_store_suite.rs,
//! included by path) against the real SQLite store of a Durable Object.
//!
//! `POST /v1/test/server-store-suite` exists only when the Worker variable
//! `ACKLINE_TEST_ROUTES` is `1` (tests start the edge with it; production
//! never sets it); otherwise it is a 404 like any unknown route. The Worker
//! runs every case in its own scratch object (a unique id, which no
//! conversation can ever be addressed by), whose storage is deleted after the
//! case, and answers `{"cases": [{"name", "passed", "error"}], "passed": N,
//! "failed": N}`. `?durability=write` and then `?durability=check` run the two
//! halves of the durability check in one named object, so a test can SIGKILL
//! workerd in between.
//!
//! The suite returns failures instead of panicking: a panic here would kill
//! the object's wasm instance and report nothing.

#[path = "../../tests/src/server_store_suite.rs"]
#[allow(dead_code)] // `run_all` and `Report` serve the native runner
mod suite;

use protocol::store::{CommitError, DurableStore};
use protocol::{ConversationStore, DeviceRecord, Seq, ServerWrite, StoreError, StoredMessage};
use serde::{Deserialize, Serialize};
use worker::{Date, Env, Request, Response, Result, State, Storage, Url};

use crate::http::{error_response, json_response};
use crate::store::Store;

/// Worker variable that enables the test routes when set to "1".
pub(crate) const TEST_ROUTES_BINDING: &str = "ACKLINE_TEST_ROUTES";

/// The path the Worker uses to ask a scratch object to run the suite; it is
/// not a conversation route, so no client request can reach it.
pub(crate) const OBJECT_PATH: &str = "/__test/server-store-suite";

/// The object holding the durability check's data between its two halves.
/// The colon keeps it outside the conversation id alphabet.
const DURABILITY_OBJECT: &str = "test:server-store-suite:durability";

/// Whether the test routes are on.
pub(crate) fn enabled(env: &Env) -> bool {
    env.var(TEST_ROUTES_BINDING)
        .map(|v| v.to_string() == "1")
        .unwrap_or(false)
}

/// What one case (or durability half) reported.
#[derive(Debug, Serialize, Deserialize)]
struct CaseResult {
    name: String,
    passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl CaseResult {
    fn new(name: &str, outcome: std::result::Result<(), String>) -> CaseResult {
        CaseResult {
            name: name.to_owned(),
            passed: outcome.is_ok(),
            error: outcome.err(),
        }
    }
}

/// The Worker's side: runs the suite in scratch objects and gathers the results.
pub(crate) async fn run(req: Request, env: &Env) -> Result<Response> {
    let url = req.url()?;
    let namespace = env.durable_object(crate::CONVERSATIONS_BINDING)?;
    match query(&url, "durability").as_deref() {
        None => {}
        Some(phase @ ("write" | "check")) => {
            let stub = namespace.id_from_name(DURABILITY_OBJECT)?.get_stub()?;
            let result = ask(
                &stub,
                &format!("durability_{phase}"),
                &format!("durability={phase}"),
            )
            .await;
            return json_response(200, &result);
        }
        Some(_) => return error_response(400, "bad_request", "durability must be write or check"),
    }
    let mut results = Vec::new();
    for case in suite::cases::<SqliteBackend>() {
        let stub = namespace.unique_id()?.get_stub()?;
        results.push(ask(&stub, case.name, &format!("case={}", case.name)).await);
    }
    let passed = results.iter().filter(|r| r.passed).count();
    json_response(
        200,
        &serde_json::json!({ "cases": results, "passed": passed, "failed": results.len() - passed }),
    )
}

/// Asks one object to run `name`; a failed request is that case's failure.
async fn ask(stub: &worker::Stub, name: &str, query: &str) -> CaseResult {
    let outcome = async {
        let mut response = stub
            .fetch_with_str(&format!("https://suite{OBJECT_PATH}?{query}"))
            .await?;
        response.json::<CaseResult>().await
    };
    match outcome.await {
        Ok(result) => result,
        Err(e) => CaseResult::new(name, Err(format!("the scratch object did not answer: {e}"))),
    }
}

/// The object's side: runs one case (then deletes its storage) or one
/// durability half on this object's own SQLite storage.
pub(crate) async fn serve(state: &State, url: &Url) -> Result<Response> {
    let storage = state.storage();
    let mut backend = match SqliteBackend::open(state.storage()) {
        Ok(b) => b,
        Err(e) => return json_response(200, &CaseResult::new("open", Err(e))),
    };
    let result = match (query(url, "case"), query(url, "durability").as_deref()) {
        (Some(name), _) => {
            let outcome = suite::run_case(&mut backend, &name)
                .unwrap_or_else(|| Err(format!("no case named {name}")));
            storage.delete_all().await?;
            CaseResult::new(&name, outcome)
        }
        (None, Some("write")) => {
            CaseResult::new("durability_write", suite::durability_write(&mut backend))
        }
        (None, Some("check")) => {
            let outcome = suite::durability_check(&mut backend);
            storage.delete_all().await?;
            CaseResult::new("durability_check", outcome)
        }
        _ => return error_response(400, "bad_request", "expected case= or durability="),
    };
    json_response(200, &result)
}

fn query(url: &Url, key: &str) -> Option<String> {
    url.query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// The edge's SQLite store as a suite backend; reopening runs `Store::open`
/// again on the same storage, as a restarted object would.
struct SqliteBackend {
    storage: Storage,
    store: Store,
}

impl SqliteBackend {
    fn open(storage: Storage) -> std::result::Result<SqliteBackend, String> {
        let store = Store::open(&storage, Date::now().as_millis())
            .map_err(|e| format!("Store::open: {e}"))?;
        Ok(SqliteBackend { storage, store })
    }
}

impl ConversationStore for SqliteBackend {
    fn last(&self) -> std::result::Result<Option<StoredMessage>, StoreError> {
        ConversationStore::last(&self.store)
    }
    fn find(
        &self,
        user: &str,
        device: &str,
        id: &str,
    ) -> std::result::Result<Option<StoredMessage>, StoreError> {
        ConversationStore::find(&self.store, user, device, id)
    }
    fn after(&self, after: Seq, limit: u32) -> std::result::Result<Vec<StoredMessage>, StoreError> {
        ConversationStore::after(&self.store, after, limit)
    }
    fn before(
        &self,
        before: Seq,
        limit: u32,
    ) -> std::result::Result<Vec<StoredMessage>, StoreError> {
        ConversationStore::before(&self.store, before, limit)
    }
    fn devices(&self) -> std::result::Result<Vec<DeviceRecord>, StoreError> {
        ConversationStore::devices(&self.store)
    }
}

impl DurableStore for SqliteBackend {
    fn commit(&mut self, batch: &[ServerWrite]) -> std::result::Result<(), CommitError> {
        self.store.commit(batch)
    }
}

impl suite::Backend for SqliteBackend {
    fn reopen(&mut self) -> std::result::Result<(), String> {
        self.store = Store::open(&self.storage, Date::now().as_millis())
            .map_err(|e| format!("Store::open: {e}"))?;
        Ok(())
    }
}
