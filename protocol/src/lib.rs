//! Ackline's sans-IO delivery core.
//!
//! Nothing here touches a socket, a clock, a disk or a random source: the shells
//! (the wasm client and the Durable Object) pass time and inputs in and carry out
//! the outputs. That keeps every delivery rule testable natively and
//! deterministically.
#![deny(missing_docs)]

pub mod chain;
pub mod frame;
pub mod limits;

pub use chain::ChainHash;
pub use frame::{
    ClientFrame, Cursor, DecodeError, ErrorCode, Millis, Seq, ServerFrame, StoredMessage,
    MAX_SEQ, PROTOCOL_VERSION,
};
