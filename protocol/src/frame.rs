//! Wire frames and their JSON codec.
//!
//! Every frame is one JSON object sent as one WebSocket text message:
//! `{"v":1,"type":"send","id":"...","body":"..."}`. `v` is the protocol version,
//! `type` selects the frame, the other fields belong to that frame. docs/PROTOCOL.md
//! is the prose version of this module.
//!
//! Decoding never panics: any byte string yields either a frame that passed
//! validation or a [`DecodeError`] whose [`DecodeError::code`] is the stable code
//! the server puts in its `error` frame.

use serde::{Deserialize, Serialize};

mod codec;
pub use codec::pack as pack_bundles;

use crate::chain::ChainHash;
use crate::limits;

/// Protocol version carried in every frame's `v` field.
pub const PROTOCOL_VERSION: u32 = 1;

/// Position of a message in its conversation: 1, 2, 3, ... (0 means "none yet").
/// Kept below 2^53 so it survives JavaScript numbers and SQLite via JS.
pub type Seq = u64;

/// Wall-clock time in milliseconds since the Unix epoch.
pub type Millis = u64;

/// Largest seq either side accepts (JavaScript's `Number.MAX_SAFE_INTEGER`).
pub const MAX_SEQ: Seq = (1 << 53) - 1;

/// A message as stored by the conversation and delivered to devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in the conversation, assigned by the server.
    pub seq: Seq,
    /// Sending user (the JWT `sub`).
    pub user: String,
    /// Sending device.
    pub device: String,
    /// Client message id chosen by the sending device (idempotency key).
    pub id: String,
    /// Message text.
    pub body: String,
    /// Server time at which the message was stored.
    pub at: Millis,
    /// Integrity chain value after this message (see [`crate::chain`]).
    pub chain: ChainHash,
}

/// The chain value at one seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainAt {
    /// The seq.
    pub seq: Seq,
    /// The chain value after the message at `seq`.
    pub chain: ChainHash,
}

/// How far one device has stored a conversation (its cumulative ack).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The device's user.
    pub user: String,
    /// The device.
    pub device: String,
    /// Highest seq such that the device has stored 1..=through.
    pub through: Seq,
}

/// The server's per-connection frame budget (a token bucket), announced in
/// `welcome` so that clients pace themselves instead of being refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// Frames per second the bucket refills with.
    pub per_sec: u64,
    /// Bucket size: frames that may arrive at once after a quiet period.
    pub burst: u64,
}

/// A read ticket: an unpredictable number the server puts on every frame
/// that answers a request (`welcome`, `batch`). A client proves it has read
/// such a frame by echoing its ticket as the envelope field `rx` of any later
/// frame; that is the server's only evidence that output was consumed (the
/// runtime gives no socket backpressure), and it bounds what one connection
/// can have in flight. Always below 2^53, so JavaScript numbers carry it.
pub type Ticket = u64;

/// Frames a client sends to the conversation it is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// First frame on every connection.
    Hello {
        /// Highest contiguous seq stored on this device; `None` for a fresh device,
        /// which then receives only the latest page.
        after: Option<Seq>,
        /// Chain value the device holds at `after`, so the server can detect a
        /// diverged history (for example a server restored from an old backup).
        chain: Option<ChainHash>,
        /// The client understands bundles (a JSON array of frames in one
        /// WebSocket message); the server then may send it bundles. Absent:
        /// false, and every server frame comes as a message of its own.
        bundles: bool,
    },
    /// Store a message. Retries reuse the same `id` and get the same seq back.
    Send {
        /// Client message id, unique per device.
        id: String,
        /// Message text.
        body: String,
        /// The id of this device's previous message that the client had not
        /// yet seen confirmed when it sent this one. The server stores this
        /// message only after that one (else `out_of_order`), so one device's
        /// messages get seqs in `send()` order. Absent: no earlier message is
        /// unconfirmed.
        after: Option<String>,
    },
    /// Cumulative ack: the device has durably stored everything from where it
    /// started (seq 1, or the first message of its first page) through `seq`.
    Ack {
        /// Stored-through seq.
        seq: Seq,
        /// Selective ack: inclusive `[first, last]` ranges above `seq` that the
        /// device has also durably stored (out-of-order pushes), so the server
        /// stops resending them. Optional; at most [`limits::MAX_ACK_RANGES`].
        ranges: Vec<[Seq; 2]>,
    },
    /// Ask for stored messages: `after` set means ascending from `after + 1`;
    /// only `before` set means the `limit` messages just below `before`.
    Sync {
        /// Exclusive lower bound.
        after: Option<Seq>,
        /// Exclusive upper bound.
        before: Option<Seq>,
        /// Page size, 1..=[`limits::MAX_PAGE`].
        limit: u32,
    },
    /// Read marker: the user has seen up to `seq`.
    Read {
        /// Read-through seq.
        seq: Seq,
    },
    /// Heartbeat; answered with `pong`.
    Ping {
        /// Echoed back in the `pong`.
        nonce: u64,
    },
}

/// Frames the server sends to a connected device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        /// Conversation id.
        conversation: String,
        /// The connected user.
        user: String,
        /// The connected device.
        device: String,
        /// Highest seq stored in the conversation.
        head: Seq,
        /// Chain value at `head`.
        chain: ChainHash,
        /// The server's chain value at the `hello`'s `after`, when it has that
        /// seq: a client whose chain there differs holds a history the server
        /// no longer has (a server restored from an older backup) and knows it
        /// at once, before it counts anything as delivered. (It names the seq:
        /// a late welcome may answer an earlier `hello`.)
        after_chain: Option<ChainAt>,
        /// For a fresh device (`hello {after: null}`): the first seq of the
        /// page it gets to start from (head + 1 when there is nothing yet). A
        /// fresh client takes only the batch that starts there, not a late
        /// page of an earlier request.
        start: Option<Seq>,
        /// Stored-through cursors: per member user the furthest of that
        /// user's devices, plus the receiving device's own (at most
        /// [`limits::MAX_CURSORS`], however many devices ever joined).
        cursors: Vec<Cursor>,
        /// How many users are members (the receiver's own included). A
        /// client counts a message delivered only once it knows a cursor of
        /// that many users, so a `delivered` lost on the way cannot make it
        /// overlook a member. 0 (absent): unknown.
        members: u32,
        /// Server clock.
        now: Millis,
        /// The connection's frame budget; absent from servers that predate it
        /// (a client then does not pace itself).
        rate: Option<RateLimit>,
        /// Read ticket: echo it as `rx` to show this frame was read (see
        /// [`Ticket`]).
        ticket: Option<Ticket>,
    },
    /// A `send` was stored (or had been stored before: same seq).
    Sent {
        /// The client message id from the `send`.
        id: String,
        /// Its seq.
        seq: Seq,
        /// Server time at which it was stored.
        at: Millis,
    },
    /// Live messages, in seq order; the device must `ack` them.
    Push {
        /// One or more messages.
        messages: Vec<StoredMessage>,
    },
    /// A page of stored messages answering `hello` or `sync`, in seq order.
    Batch {
        /// The page.
        messages: Vec<StoredMessage>,
        /// Conversation head when the page was read.
        head: Seq,
        /// True when more messages exist in the requested direction.
        more: bool,
        /// True when the server sends the next page right after this one
        /// without being asked (a streamed gap-fill): the request is still
        /// being answered, and the client should not ask again yet.
        follows: bool,
        /// Read ticket: echo it as `rx` to show this page was read (see
        /// [`Ticket`]).
        ticket: Option<Ticket>,
    },
    /// Devices stored further: drives the sender's delivered ticks.
    Delivered {
        /// Updated cursors: per user whose devices moved, that user's
        /// furthest; plus the receiving device's own when it moved.
        cursors: Vec<Cursor>,
        /// How many users are members, as in `welcome`.
        members: u32,
    },
    /// Something was wrong with a frame; the connection stays open unless closed
    /// separately.
    Error {
        /// Stable machine-readable code (see [`ErrorCode`]).
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
        /// Client message id of the `send` this refers to, if any.
        id: Option<String>,
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
}

/// Stable error codes carried by `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame is not valid JSON (or not valid UTF-8).
    BadJson,
    /// The frame's `v` is missing or not a supported version.
    UnsupportedVersion,
    /// The frame's `type` is missing or unknown.
    UnknownFrame,
    /// A field is missing, has the wrong type or is out of range.
    BadFrame,
    /// The frame is larger than [`limits::MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// A message body is larger than [`limits::MAX_BODY_BYTES`].
    BodyTooLarge,
    /// The connection sends faster than allowed.
    RateLimited,
    /// The device has too many sends not yet confirmed by `sent`.
    WindowFull,
    /// The conversation already has the maximum number of members.
    TooManyMembers,
    /// A frame other than `hello` or `ping` was sent before `hello`.
    NotReady,
    /// The server could not complete the request; retry later.
    Internal,
    /// A `send` named in `after` a message of the same device that the server
    /// has not stored yet: send that one first (transient).
    OutOfOrder,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnknownFrame => "unknown_frame",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::WindowFull => "window_full",
            ErrorCode::TooManyMembers => "too_many_members",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::Internal => "internal",
            ErrorCode::OutOfOrder => "out_of_order",
        }
    }
}

/// Why a byte string is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than the frame limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the frame.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON, not an object, or not UTF-8.
    #[error("frame is not a JSON object: {0}")]
    NotJson(String),
    /// Missing or unsupported `v`.
    #[error("unsupported protocol version {0:?} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion(Option<u64>),
    /// Missing or unknown `type`.
    #[error("unknown frame type {0:?}")]
    UnknownType(Option<String>),
    /// Known type but fields are missing, mistyped or out of range.
    #[error("invalid {frame} frame: {reason}")]
    Invalid {
        /// The frame type.
        frame: String,
        /// What is wrong.
        reason: String,
    },
    /// A message body over the body limit.
    #[error("message body of {len} bytes exceeds the limit of {max} bytes")]
    BodyTooLarge {
        /// Size of the body in UTF-8 bytes.
        len: usize,
        /// The limit.
        max: usize,
        /// The `send`'s client message id, so the sender can fail that message.
        id: String,
    },
}

impl DecodeError {
    /// The stable code to report this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::NotJson(_) => ErrorCode::BadJson,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownType(_) => ErrorCode::UnknownFrame,
            DecodeError::Invalid { .. } => ErrorCode::BadFrame,
            DecodeError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
        }
    }
}

fn invalid(frame: &str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        frame: frame.to_owned(),
        reason: reason.into(),
    }
}

fn check_seq(frame: &str, field: &str, seq: Seq) -> Result<(), DecodeError> {
    if seq > MAX_SEQ {
        return Err(invalid(frame, format!("{field} {seq} is above {MAX_SEQ}")));
    }
    Ok(())
}

/// Checks a client message id: 1..=[`limits::MAX_ID_LEN`] printable ASCII bytes.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > limits::MAX_ID_LEN {
        return Err(format!("id must be 1..={} bytes", limits::MAX_ID_LEN));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("id must be printable ASCII without spaces".into());
    }
    Ok(())
}

/// One frame of a bundle: the frame, or why it was refused (the error it
/// would have got alone).
pub type BundleItem<F> = Result<F, DecodeError>;

impl ClientFrame {
    /// Decodes and validates a client frame.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::decode_rx(bytes).map(|(frame, _)| frame)
    }

    /// Decodes and validates a client frame, with its envelope's `rx` (the
    /// read ticket it echoes, if any).
    pub fn decode_rx(bytes: &[u8]) -> Result<(Self, Option<Ticket>), DecodeError> {
        if bytes.len() > limits::MAX_FRAME_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: limits::MAX_FRAME_BYTES,
            });
        }
        Self::decode_element(bytes)
    }

    /// Decodes one WebSocket message from a client: one frame object, or a
    /// bundle (a JSON array of 1 or more frame objects), each element with
    /// its `rx`, in order. `Err` refuses the message as a whole (over
    /// [`limits::MAX_FRAME_BYTES`], not JSON, neither an object nor an
    /// array, an empty array); a bad element is refused alone, with the
    /// error it would get if it had come by itself.
    #[allow(clippy::type_complexity)]
    pub fn decode_bundle(
        bytes: &[u8],
    ) -> Result<Vec<BundleItem<(Self, Option<Ticket>)>>, DecodeError> {
        Ok(codec::split(bytes, limits::MAX_FRAME_BYTES)?
            .into_iter()
            .map(Self::decode_element)
            .collect())
    }

    fn decode_element(bytes: &[u8]) -> Result<(Self, Option<Ticket>), DecodeError> {
        let (frame, rx) = codec::decode_client(bytes)?;
        if rx.is_some_and(|t| t > MAX_SEQ) {
            return Err(invalid("envelope", format!("rx must be at most {MAX_SEQ}")));
        }
        frame.validate()?;
        Ok((frame, rx))
    }

    fn validate(&self) -> Result<(), DecodeError> {
        match self {
            ClientFrame::Hello { after, .. } => check_seq("hello", "after", after.unwrap_or(0)),
            ClientFrame::Send { id, body, after } => {
                validate_id(id).map_err(|r| invalid("send", r))?;
                if let Some(after) = after {
                    validate_id(after).map_err(|r| invalid("send", format!("after: {r}")))?;
                }
                if body.len() > limits::MAX_BODY_BYTES {
                    return Err(DecodeError::BodyTooLarge {
                        len: body.len(),
                        max: limits::MAX_BODY_BYTES,
                        id: id.clone(),
                    });
                }
                Ok(())
            }
            ClientFrame::Ack { seq, ranges } => {
                check_seq("ack", "seq", *seq)?;
                if ranges.len() > limits::MAX_ACK_RANGES {
                    return Err(invalid(
                        "ack",
                        format!("at most {} ranges", limits::MAX_ACK_RANGES),
                    ));
                }
                for [lo, hi] in ranges {
                    check_seq("ack", "ranges", *hi)?;
                    if lo > hi || *lo <= *seq {
                        return Err(invalid("ack", "each range must be [first, last] above seq"));
                    }
                }
                Ok(())
            }
            ClientFrame::Read { seq } => check_seq("read", "seq", *seq),
            ClientFrame::Sync {
                after,
                before,
                limit,
            } => {
                check_seq("sync", "after", after.unwrap_or(0))?;
                check_seq("sync", "before", before.unwrap_or(0))?;
                if *limit == 0 || *limit > limits::MAX_PAGE {
                    return Err(invalid(
                        "sync",
                        format!("limit must be 1..={}", limits::MAX_PAGE),
                    ));
                }
                if after.is_none() && before.is_none() {
                    return Err(invalid("sync", "one of after or before is required"));
                }
                if let (Some(a), Some(b)) = (after, before) {
                    if b <= a {
                        return Err(invalid("sync", "before must be greater than after"));
                    }
                }
                Ok(())
            }
            ClientFrame::Ping { .. } => Ok(()),
        }
    }

    /// Encodes the frame as its JSON text.
    pub fn encode(&self) -> String {
        codec::encode_client(self, None)
    }

    /// Encodes the frame with `rx`: the ticket of the latest `welcome` or
    /// `batch` read on this connection.
    pub fn encode_rx(&self, rx: Option<Ticket>) -> String {
        codec::encode_client(self, rx)
    }
}

impl ServerFrame {
    /// Decodes a server frame (used by clients).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Server frames may carry full pages, which are larger than client frames.
        if bytes.len() > limits::MAX_SERVER_FRAME_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: limits::MAX_SERVER_FRAME_BYTES,
            });
        }
        codec::decode_server(bytes)
    }

    /// Decodes one WebSocket message from the server: one frame or a bundle
    /// (see [`ClientFrame::decode_bundle`]; the limit is
    /// [`limits::MAX_SERVER_FRAME_BYTES`]).
    pub fn decode_bundle(bytes: &[u8]) -> Result<Vec<BundleItem<Self>>, DecodeError> {
        Ok(codec::split(bytes, limits::MAX_SERVER_FRAME_BYTES)?
            .into_iter()
            .map(codec::decode_server)
            .collect())
    }

    /// Encodes the frame as its JSON text.
    pub fn encode(&self) -> String {
        codec::encode_server(self)
    }

    /// The read ticket this frame carries, if any.
    pub fn ticket(&self) -> Option<Ticket> {
        match self {
            ServerFrame::Welcome { ticket, .. } | ServerFrame::Batch { ticket, .. } => *ticket,
            _ => None,
        }
    }

    /// An `error` frame for a decode failure (with the `send`'s id when the
    /// failure belongs to one message).
    pub fn from_decode_error(err: &DecodeError) -> Self {
        let id = match err {
            DecodeError::BodyTooLarge { id, .. } => Some(id.clone()),
            _ => None,
        };
        ServerFrame::Error {
            code: err.code(),
            message: err.to_string(),
            id,
        }
    }
}

/// U+REPLACEMENT CHARACTER.
pub const REPLACEMENT_CHAR: char = '\u{FFFD}';

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_round_trips() {
        let f = ClientFrame::Send {
            id: "01J0ABC".into(),
            body: "hi".into(),
            after: None,
        };
        let text = f.encode();
        assert_eq!(text, r#"{"v":1,"type":"send","id":"01J0ABC","body":"hi"}"#);
        assert_eq!(ClientFrame::decode(text.as_bytes()), Ok(f));
    }

    #[test]
    fn classifies_bad_input() {
        let code = |s: &str| ClientFrame::decode(s.as_bytes()).unwrap_err().code();
        assert_eq!(code("nope"), ErrorCode::BadJson);
        assert_eq!(code("[1,2]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"send"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(
            code(r#"{"v":2,"type":"send"}"#),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(code(r#"{"v":1,"type":"launch"}"#), ErrorCode::UnknownFrame);
        assert_eq!(code(r#"{"v":1}"#), ErrorCode::UnknownFrame);
        assert_eq!(
            code(r#"{"v":1,"type":"send","id":5,"body":"x"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"v":1,"type":"ack","seq":-1}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"v":1,"type":"ack","seq":9007199254740992}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"v":1,"type":"send","id":"","body":"x"}"#),
            ErrorCode::BadFrame
        );
        assert_eq!(
            code(r#"{"v":1,"type":"sync","limit":10}"#),
            ErrorCode::BadFrame
        );
        let body = "x".repeat(limits::MAX_BODY_BYTES + 1);
        let big = format!(r#"{{"v":1,"type":"send","id":"a","body":"{body}"}}"#);
        assert_eq!(code(&big), ErrorCode::BodyTooLarge);
        let huge = "x".repeat(limits::MAX_FRAME_BYTES + 1);
        assert_eq!(code(&huge), ErrorCode::FrameTooLarge);
    }

    #[test]
    fn a_bundle_is_decoded_element_by_element() {
        let send = |id: &str| ClientFrame::Send {
            id: id.into(),
            body: "x".into(),
            after: None,
        };
        let text = format!(
            " [ {}, 5, {{\"v\":2,\"type\":\"ping\"}}, {} ] ",
            send("a").encode_rx(Some(7)),
            send("b").encode()
        );
        let items = ClientFrame::decode_bundle(text.as_bytes()).unwrap();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Ok((send("a"), Some(7))));
        assert_eq!(items[1].as_ref().unwrap_err().code(), ErrorCode::BadJson);
        assert_eq!(
            items[2].as_ref().unwrap_err().code(),
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(items[3], Ok((send("b"), None)));
        // One object is a message of one frame, its error its own.
        let one = ClientFrame::decode_bundle(send("c").encode().as_bytes()).unwrap();
        assert_eq!(one, vec![Ok((send("c"), None))]);
        let bad = ClientFrame::decode_bundle(br#"{"v":1,"type":"nope"}"#).unwrap();
        assert_eq!(bad[0].as_ref().unwrap_err().code(), ErrorCode::UnknownFrame);
    }

    #[test]
    fn a_message_is_refused_whole_only_when_it_cannot_be_split() {
        let code = |s: &[u8]| ClientFrame::decode_bundle(s).unwrap_err().code();
        assert_eq!(code(b"[]"), ErrorCode::BadFrame);
        assert_eq!(code(b"[{}"), ErrorCode::BadJson);
        assert_eq!(code(br#"[{"v":1,"type":"ping"}] x"#), ErrorCode::BadJson);
        assert_eq!(code(b"5"), ErrorCode::BadJson);
        assert_eq!(code(b"\"text\""), ErrorCode::BadJson);
        assert_eq!(code(b""), ErrorCode::BadJson);
        let ping = ClientFrame::Ping { nonce: 1 }.encode();
        let big = format!("[{}]", vec![ping; limits::MAX_FRAME_BYTES / 20].join(","));
        assert_eq!(code(big.as_bytes()), ErrorCode::FrameTooLarge);
        // Server bundles have the server's (larger) limit.
        let pong = ServerFrame::Pong { nonce: 1 }.encode();
        let many = format!("[{}]", vec![pong; limits::MAX_FRAME_BYTES / 20].join(","));
        assert!(ServerFrame::decode_bundle(many.as_bytes())
            .unwrap()
            .iter()
            .all(Result::is_ok));
    }

    #[test]
    fn frames_are_packed_in_order_into_as_few_messages_as_fit() {
        let frames: Vec<String> = (0..10)
            .map(|i| ClientFrame::Ping { nonce: i }.encode())
            .collect();
        let len = frames[0].len();
        assert_eq!(
            pack_bundles(Vec::<String>::new(), 100),
            Vec::<String>::new()
        );
        // One frame alone is sent as it is, not as an array.
        assert_eq!(pack_bundles(frames[..1].to_vec(), 10), frames[..1].to_vec());
        // A frame larger than the cap goes alone.
        assert_eq!(
            pack_bundles(frames[..2].to_vec(), len),
            frames[..2].to_vec()
        );
        // Three frames fit in 3 * len + 4 bytes (brackets and two commas).
        let packed = pack_bundles(frames.clone(), 3 * len + 4);
        assert_eq!(packed.len(), 4);
        assert!(packed.iter().all(|m| m.len() <= 3 * len + 4));
        assert_eq!(
            packed[0],
            format!("[{},{},{}]", frames[0], frames[1], frames[2])
        );
        assert_eq!(packed[3], frames[9]);
        let back: Vec<ClientFrame> = packed
            .iter()
            .flat_map(|m| ClientFrame::decode_bundle(m.as_bytes()).unwrap())
            .map(|f| f.unwrap().0)
            .collect();
        let want: Vec<ClientFrame> = (0..10).map(|i| ClientFrame::Ping { nonce: i }).collect();
        assert_eq!(back, want);
    }

    #[test]
    fn hello_says_bundles_only_when_it_reads_them() {
        let hello = |bundles| ClientFrame::Hello {
            after: None,
            chain: None,
            bundles,
        };
        assert_eq!(
            hello(false).encode(),
            r#"{"v":1,"type":"hello","after":null}"#
        );
        assert_eq!(
            hello(true).encode(),
            r#"{"v":1,"type":"hello","after":null,"bundles":true}"#
        );
        assert_eq!(
            ClientFrame::decode(br#"{"v":1,"type":"hello"}"#),
            Ok(hello(false))
        );
        assert_eq!(
            ClientFrame::decode(br#"{"v":1,"type":"hello","bundles":true}"#),
            Ok(hello(true))
        );
    }

    #[test]
    fn error_frame_uses_stable_code() {
        let text = ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            id: None,
        }
        .encode();
        assert_eq!(
            text,
            r#"{"v":1,"type":"error","code":"rate_limited","message":"slow down"}"#
        );
    }
}
