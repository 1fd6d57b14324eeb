//! Default limits shared by both sides. The server enforces them and reports
//! violations with an `error` frame; clients use them to refuse bad input early.

/// Largest client frame, in bytes of its JSON text.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest server frame (pages of messages), in bytes.
pub const MAX_SERVER_FRAME_BYTES: usize = 1024 * 1024;
/// Largest message body, in UTF-8 bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Longest client message id, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Largest page a `sync` may ask for, and the server's page size.
pub const MAX_PAGE: u32 = 500;
/// Most selective-ack ranges one `ack` may carry.
pub const MAX_ACK_RANGES: usize = 32;
/// Most consecutive pages a server streams in answer to one forward gap-fill
/// (`hello` with a watermark, or `sync` with `after`); the client asks again
/// after the last.
pub const STREAM_PAGES: usize = 8;
/// Target size of one `batch` or `push` frame, in bytes of message content.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Default most distinct users per conversation.
pub const MAX_MEMBERS: usize = 256;
/// Default most bytes of unconfirmed answers (`welcome`, `batch`) per connection.
pub const ANSWER_BUDGET: usize = 512 * 1024;
/// Default answer bytes per second per conversation (all `welcome` and
/// `batch` frames together).
pub const ANSWER_RATE: u64 = 8 * 1024 * 1024;
/// Most cursors a `welcome` or `delivered` carries: one per member user plus
/// the receiving device's own.
pub const MAX_CURSORS: usize = MAX_MEMBERS + 1;
