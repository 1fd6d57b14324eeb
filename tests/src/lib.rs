//! Native test support for Ackline.

/// Harness for tests against the real edge (wrangler dev on workerd).
pub mod edge;

/// A scripted protocol device for edge integration tests.
pub mod device;

/// The real client core in a native shell, over a real WebSocket to the edge.
pub mod native_client;

/// Deterministic fault simulator for the delivery core (native only).
pub mod sim;

/// The client store conformance suite, shared with the browser's IndexedDB store.
pub mod store_suite;

/// The conversation (server) store conformance suite, shared with the edge's
/// SQLite store in a Durable Object.
pub mod server_store_suite;

pub use protocol;
