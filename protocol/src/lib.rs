//! Ackline's sans-IO delivery core.
//!
//! Nothing here touches a socket, a clock, a disk or a random source: the shells
//! (the wasm client and the Durable Object) pass time and inputs in and carry out
//! the outputs. That keeps every delivery rule testable natively and
//! deterministically (see the simulator in `tests/`).
//!
//! - [`frame`]: the wire frames and their JSON codec; [`chain`]: the integrity
//!   chain; [`limits`]: sizes and counts both sides enforce.
//! - [`client::Client`]: one device's session with one conversation (outbox,
//!   inbox watermark, acks, gap-fill, history, delivery ticks).
//! - [`server::Conversation`]: the single writer of one conversation (seqs,
//!   idempotent sends, pushes with per-device windows, pages, limits).
//! - [`store`]: what a conversation's storage must do for the server (the
//!   [`store::DurableStore`] contract) and the shared [`store::MemoryStore`].
//!
//! Both machines have the same shape, after quinn-proto and str0m:
//! `new(config, seed, restored)`, `handle(now, input)`, `poll_output()` until
//! `None`, and `poll_timeout()` for the one timer the shell re-arms after every
//! call. Time is [`Millis`] (epoch milliseconds) passed in; randomness comes from
//! the seed through [`rng::Rng`].
//!
//! Both persist before they acknowledge: a machine emits a `Persist` output and
//! acts on the write (sends `sent`, pushes, acks, surfaces a message) only after
//! the shell reports it durable with a `Durable { through }` input. Write ids
//! ([`WriteId`]) increase by one per write, and durability is reported in order.
//!
//! Two design choices, explained in the module docs:
//!
//! - Server storage: reads go through the small synchronous
//!   [`server::ConversationStore`] trait passed to every call (the Durable
//!   Object's SQLite is synchronous, so its shell stays a few `SELECT`s), while
//!   writes leave as `Persist` outputs and durability comes back as an input.
//!   The Durable Object shell applies a write and reports it durable at once
//!   (the output gate holds frames until it is); the simulator keeps writes
//!   pending and can crash in between.
//! - Client scope: one [`client::Client`] per (device, conversation), matching
//!   the one-socket-per-conversation transport; a shell showing many
//!   conversations runs one per conversation.
//!
//! docs/PROTOCOL.md in the repository is the prose reference of the wire
//! protocol and of both state machines.
#![deny(missing_docs)]

mod backoff;
mod bucket;
mod bugs;
pub mod chain;
pub mod client;
pub mod frame;
pub mod limits;
mod outbox;
mod pacer;
pub mod ranges;
pub mod rng;
pub mod server;
pub mod store;

pub use bugs::Bugs;
pub use chain::ChainHash;
pub use client::{
    Client, ClientConfig, ClientError, ClientInput, ClientOutput, ClientSnapshot, ClientWrite,
    InboxState, LinkStatus, MessageStatus, OutboxEntry,
};
pub use frame::{
    pack_bundles, ChainAt, ClientFrame, Cursor, DecodeError, ErrorCode, Millis, RateLimit, Seq,
    ServerFrame, StoredMessage, Ticket, MAX_SEQ, PROTOCOL_VERSION,
};
pub use ranges::RangeSet;
pub use server::{
    ConnId, ConnMemo, Conversation, ConversationStore, DeviceKey, DeviceRecord, ServerConfig,
    ServerInput, ServerOutput, ServerStats, ServerWrite, StoreError,
};
pub use store::{CommitError, DurableStore, MemoryStore};

/// Identifies one storage write a machine asked for; ids increase by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct WriteId(pub u64);
