//! The JSON codec of frames and bundles: one pass each way.
//!
//! Decoding reads a frame object once into a flat struct of every field a
//! frame of that direction may carry (`ClientFields`, `ServerFields`), then
//! builds the frame its `type` names. Only when that pass fails is the text
//! read again, for `v` and `type` alone, so that a frame with a wrong version
//! or type gets that error code rather than `bad_frame` (the order of the
//! checks is `bad_json`, `unsupported_version`, `unknown_frame`,
//! `bad_frame`). No internally tagged enum and no `flatten`: those buffer
//! every value through serde's `Content` (and cost code size in the client).
//!
//! Encoding writes the object field by field, in the fixed order of
//! docs/PROTOCOL.md: `v`, `rx`, `type`, then the frame's fields.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    ChainAt, ChainHash, ClientFrame, Cursor, DecodeError, ErrorCode, Millis, RateLimit, Seq,
    ServerFrame, StoredMessage, Ticket, PROTOCOL_VERSION, REPLACEMENT_CHAR,
};

const CLIENT_TYPES: &[&str] = &["hello", "send", "ack", "sync", "read", "ping"];
const SERVER_TYPES: &[&str] = &[
    "welcome",
    "sent",
    "push",
    "batch",
    "delivered",
    "error",
    "pong",
];

// ---------------------------------------------------------------- bundles

/// The frame texts of one WebSocket message: the message itself when it is
/// one object, or the elements of its array (a bundle), in order. Refuses
/// (as the whole message) one over `max_len` bytes, one that is neither an
/// object nor an array, an array that is not valid JSON, and an empty array.
/// The elements are not checked here: each is decoded as if it had come
/// alone, so one bad element does not spoil the others.
pub(super) fn split(bytes: &[u8], max_len: usize) -> Result<Vec<&[u8]>, DecodeError> {
    if bytes.len() > max_len {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(vec![bytes]),
        Some(b'[') => {
            let elements: Vec<&RawValue> =
                serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
            if elements.is_empty() {
                return Err(DecodeError::Invalid {
                    frame: "bundle".into(),
                    reason: "a bundle holds at least one frame".into(),
                });
            }
            Ok(elements.into_iter().map(|e| e.get().as_bytes()).collect())
        }
        _ => Err(DecodeError::NotJson(
            "expected a JSON object or an array of them".into(),
        )),
    }
}

/// Packs encoded frames, in order, into as few WebSocket messages of at most
/// `max_bytes` as possible: a message of one frame is that frame's text, a
/// message of several is the JSON array of them (a bundle). A frame longer
/// than `max_bytes` by itself goes alone.
pub fn pack(frames: impl IntoIterator<Item = String>, max_bytes: usize) -> Vec<String> {
    let mut messages = Vec::new();
    let mut group: Vec<String> = Vec::new();
    // Bytes of `group` as a bundle: its frames, a comma between two, brackets.
    let mut group_len = 1;
    for frame in frames {
        if !group.is_empty() && group_len + 1 + frame.len() > max_bytes {
            messages.push(join(std::mem::take(&mut group)));
            group_len = 1;
        }
        group_len += 1 + frame.len();
        group.push(frame);
    }
    if !group.is_empty() {
        messages.push(join(group));
    }
    messages
}

fn join(mut group: Vec<String>) -> String {
    if group.len() == 1 {
        return group.pop().unwrap_or_default();
    }
    let len = group.iter().map(|f| f.len() + 1).sum::<usize>() + 1;
    let mut text = String::with_capacity(len);
    text.push('[');
    for (i, frame) in group.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(frame);
    }
    text.push(']');
    text
}

// ---------------------------------------------------------------- decoding

/// Decodes one client frame object (the size was checked by the caller).
pub(super) fn decode_client(bytes: &[u8]) -> Result<(ClientFrame, Option<Ticket>), DecodeError> {
    expect_object(bytes)?;
    match serde_json::from_slice::<ClientFields>(bytes) {
        Ok(mut fields) => {
            let kind = classify(fields.v, fields.kind.take(), CLIENT_TYPES)?;
            let rx = fields.rx;
            Ok((fields.build(&kind)?, rx))
        }
        Err(e) => Err(explain(bytes, CLIENT_TYPES, &e)),
    }
}

/// Decodes one server frame object (the size was checked by the caller).
pub(super) fn decode_server(bytes: &[u8]) -> Result<ServerFrame, DecodeError> {
    expect_object(bytes)?;
    match serde_json::from_slice::<ServerFields>(bytes) {
        Ok(mut fields) => {
            let kind = classify(fields.v, fields.kind.take(), SERVER_TYPES)?;
            fields.build(&kind)
        }
        Err(e) => Err(explain(bytes, SERVER_TYPES, &e)),
    }
}

/// serde would happily read a struct from a JSON array; frames are objects only.
fn expect_object(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(DecodeError::NotJson("expected a JSON object".into()));
    }
    Ok(())
}

/// The frame type, if `v` is this protocol's version and `type` one of `known`.
fn classify(v: Option<u64>, kind: Option<String>, known: &[&str]) -> Result<String, DecodeError> {
    if v != Some(u64::from(PROTOCOL_VERSION)) {
        return Err(DecodeError::UnsupportedVersion(v));
    }
    match kind {
        Some(k) if known.contains(&k.as_str()) => Ok(k),
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// Why the one-pass decode failed: the text is not JSON, or its `v` or
/// `type` is wrong, or else (the header is fine) a field is.
fn explain(bytes: &[u8], known: &[&str], failure: &serde_json::Error) -> DecodeError {
    let header: Header = match serde_json::from_slice(bytes) {
        Ok(header) => header,
        Err(e) => return DecodeError::NotJson(e.to_string()),
    };
    let version = match header.v {
        Some(Loose::Number(n)) => Some(n),
        _ => None,
    };
    let kind = match header.kind {
        Some(Loose::Text(k)) => Some(k),
        _ => None,
    };
    match classify(version, kind, known) {
        Ok(kind) => DecodeError::Invalid {
            frame: kind,
            reason: failure.to_string(),
        },
        Err(e) => e,
    }
}

/// `v` and `type` of any JSON object, whatever their types.
#[derive(Deserialize)]
struct Header {
    v: Option<Loose>,
    #[serde(rename = "type")]
    kind: Option<Loose>,
}

/// Any JSON value, keeping only what classifying a frame needs.
enum Loose {
    Number(u64),
    Text(String),
    Other,
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Loose, E> {
                Ok(Loose::Number(n))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Loose, E> {
                Ok(Loose::Other)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Loose, E> {
                Ok(Loose::Text(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(LooseVisitor)
    }
}

/// A field that is a seq in some frames and a message id in others (`after`).
enum SeqOrId {
    Seq(Seq),
    Id(String),
}

impl<'de> Deserialize<'de> for SeqOrId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SeqOrIdVisitor;
        impl<'de> Visitor<'de> for SeqOrIdVisitor {
            type Value = SeqOrId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a seq or a message id")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<SeqOrId, E> {
                Ok(SeqOrId::Seq(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<SeqOrId, E> {
                Ok(SeqOrId::Id(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<SeqOrId, E> {
                Ok(SeqOrId::Id(s))
            }
        }
        d.deserialize_any(SeqOrIdVisitor)
    }
}

fn missing(frame: &str, field: &str) -> DecodeError {
    DecodeError::Invalid {
        frame: frame.to_owned(),
        reason: format!("missing field `{field}`"),
    }
}

fn required<T>(frame: &str, field: &str, value: Option<T>) -> Result<T, DecodeError> {
    value.ok_or_else(|| missing(frame, field))
}

fn seq_field(frame: &str, field: &str, value: Option<SeqOrId>) -> Result<Option<Seq>, DecodeError> {
    match value {
        None => Ok(None),
        Some(SeqOrId::Seq(n)) => Ok(Some(n)),
        Some(SeqOrId::Id(_)) => Err(DecodeError::Invalid {
            frame: frame.to_owned(),
            reason: format!("{field} must be a seq, not a string"),
        }),
    }
}

fn id_field(
    frame: &str,
    field: &str,
    value: Option<SeqOrId>,
) -> Result<Option<String>, DecodeError> {
    match value {
        None => Ok(None),
        Some(SeqOrId::Id(id)) => Ok(Some(id)),
        Some(SeqOrId::Seq(_)) => Err(DecodeError::Invalid {
            frame: frame.to_owned(),
            reason: format!("{field} must be a message id, not a number"),
        }),
    }
}

/// Every field of every client frame, plus the envelope. A field must have
/// its type (or be null) whichever frame it appears in; unknown fields are
/// ignored.
#[derive(Deserialize)]
struct ClientFields {
    v: Option<u64>,
    rx: Option<Ticket>,
    #[serde(rename = "type")]
    kind: Option<String>,
    after: Option<SeqOrId>,
    before: Option<Seq>,
    chain: Option<ChainHash>,
    bundles: Option<bool>,
    id: Option<String>,
    body: Option<String>,
    seq: Option<Seq>,
    ranges: Option<Vec<[Seq; 2]>>,
    limit: Option<u32>,
    nonce: Option<u64>,
}

impl ClientFields {
    fn build(self, kind: &str) -> Result<ClientFrame, DecodeError> {
        Ok(match kind {
            "hello" => ClientFrame::Hello {
                after: seq_field(kind, "after", self.after)?,
                chain: self.chain,
                bundles: self.bundles.unwrap_or(false),
            },
            "send" => ClientFrame::Send {
                id: required(kind, "id", self.id)?,
                body: required(kind, "body", self.body)?,
                after: id_field(kind, "after", self.after)?,
            },
            "ack" => ClientFrame::Ack {
                seq: required(kind, "seq", self.seq)?,
                ranges: self.ranges.unwrap_or_default(),
            },
            "sync" => ClientFrame::Sync {
                after: seq_field(kind, "after", self.after)?,
                before: self.before,
                limit: required(kind, "limit", self.limit)?,
            },
            "read" => ClientFrame::Read {
                seq: required(kind, "seq", self.seq)?,
            },
            "ping" => ClientFrame::Ping {
                nonce: self.nonce.unwrap_or(0),
            },
            other => return Err(DecodeError::UnknownType(Some(other.to_owned()))),
        })
    }
}

/// Every field of every server frame, plus the envelope (see
/// [`ClientFields`]).
#[derive(Deserialize)]
struct ServerFields {
    v: Option<u64>,
    // Never sent by a server; read so that a mistyped one is refused as before.
    #[allow(dead_code)]
    rx: Option<Ticket>,
    #[serde(rename = "type")]
    kind: Option<String>,
    conversation: Option<String>,
    user: Option<String>,
    device: Option<String>,
    head: Option<Seq>,
    chain: Option<ChainHash>,
    after_chain: Option<ChainAt>,
    start: Option<Seq>,
    cursors: Option<Vec<Cursor>>,
    members: Option<u32>,
    now: Option<Millis>,
    rate: Option<RateLimit>,
    ticket: Option<Ticket>,
    id: Option<String>,
    seq: Option<Seq>,
    at: Option<Millis>,
    messages: Option<Vec<StoredMessage>>,
    more: Option<bool>,
    follows: Option<bool>,
    code: Option<ErrorCode>,
    message: Option<String>,
    nonce: Option<u64>,
}

impl ServerFields {
    fn build(self, kind: &str) -> Result<ServerFrame, DecodeError> {
        Ok(match kind {
            "welcome" => ServerFrame::Welcome {
                conversation: required(kind, "conversation", self.conversation)?,
                user: required(kind, "user", self.user)?,
                device: required(kind, "device", self.device)?,
                head: required(kind, "head", self.head)?,
                chain: required(kind, "chain", self.chain)?,
                after_chain: self.after_chain,
                start: self.start,
                cursors: required(kind, "cursors", self.cursors)?,
                members: self.members.unwrap_or(0),
                now: required(kind, "now", self.now)?,
                rate: self.rate,
                ticket: self.ticket,
            },
            "sent" => ServerFrame::Sent {
                id: required(kind, "id", self.id)?,
                seq: required(kind, "seq", self.seq)?,
                at: required(kind, "at", self.at)?,
            },
            "push" => ServerFrame::Push {
                messages: required(kind, "messages", self.messages)?,
            },
            "batch" => ServerFrame::Batch {
                messages: required(kind, "messages", self.messages)?,
                head: required(kind, "head", self.head)?,
                more: required(kind, "more", self.more)?,
                follows: self.follows.unwrap_or(false),
                ticket: self.ticket,
            },
            "delivered" => ServerFrame::Delivered {
                cursors: required(kind, "cursors", self.cursors)?,
                members: self.members.unwrap_or(0),
            },
            "error" => ServerFrame::Error {
                code: required(kind, "code", self.code)?,
                message: required(kind, "message", self.message)?,
                id: self.id,
            },
            "pong" => ServerFrame::Pong {
                nonce: required(kind, "nonce", self.nonce)?,
            },
            other => return Err(DecodeError::UnknownType(Some(other.to_owned()))),
        })
    }
}

// ---------------------------------------------------------------- encoding

/// A frame object being written: `{"v":1[,"rx":N],"type":"...",...}`.
struct ObjectWriter {
    buf: Vec<u8>,
}

impl ObjectWriter {
    fn new(kind: &str, rx: Option<Ticket>) -> ObjectWriter {
        let mut w = ObjectWriter {
            buf: Vec::with_capacity(96),
        };
        w.buf.extend_from_slice(b"{\"v\":");
        w.value(&PROTOCOL_VERSION);
        if let Some(rx) = rx {
            w.field("rx", &rx);
        }
        w.field("type", kind);
        w
    }

    fn value<T: Serialize + ?Sized>(&mut self, value: &T) {
        // Writing plain structs, strings and integers into a Vec cannot fail:
        // no maps with non-string keys, no serializer that errors.
        let _ = serde_json::to_writer(&mut self.buf, value);
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) {
        self.buf.push(b',');
        self.value(key);
        self.buf.push(b':');
        self.value(value);
    }

    fn some<T: Serialize>(&mut self, key: &str, value: &Option<T>) {
        if let Some(value) = value {
            self.field(key, value);
        }
    }

    fn finish(mut self) -> String {
        self.buf.push(b'}');
        // serde_json writes UTF-8 only.
        let text = String::from_utf8(self.buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        escape_replacement_char(text)
    }
}

pub(super) fn encode_client(frame: &ClientFrame, rx: Option<Ticket>) -> String {
    let mut w;
    match frame {
        ClientFrame::Hello {
            after,
            chain,
            bundles,
        } => {
            w = ObjectWriter::new("hello", rx);
            w.field("after", after);
            w.some("chain", chain);
            if *bundles {
                w.field("bundles", &true);
            }
        }
        ClientFrame::Send { id, body, after } => {
            w = ObjectWriter::new("send", rx);
            w.field("id", id);
            w.field("body", body);
            w.some("after", after);
        }
        ClientFrame::Ack { seq, ranges } => {
            w = ObjectWriter::new("ack", rx);
            w.field("seq", seq);
            if !ranges.is_empty() {
                w.field("ranges", ranges);
            }
        }
        ClientFrame::Sync {
            after,
            before,
            limit,
        } => {
            w = ObjectWriter::new("sync", rx);
            w.some("after", after);
            w.some("before", before);
            w.field("limit", limit);
        }
        ClientFrame::Read { seq } => {
            w = ObjectWriter::new("read", rx);
            w.field("seq", seq);
        }
        ClientFrame::Ping { nonce } => {
            w = ObjectWriter::new("ping", rx);
            w.field("nonce", nonce);
        }
    }
    w.finish()
}

pub(super) fn encode_server(frame: &ServerFrame) -> String {
    let mut w;
    match frame {
        ServerFrame::Welcome {
            conversation,
            user,
            device,
            head,
            chain,
            after_chain,
            start,
            cursors,
            members,
            now,
            rate,
            ticket,
        } => {
            w = ObjectWriter::new("welcome", None);
            w.field("conversation", conversation);
            w.field("user", user);
            w.field("device", device);
            w.field("head", head);
            w.field("chain", chain);
            w.some("after_chain", after_chain);
            w.some("start", start);
            w.field("cursors", cursors);
            if *members != 0 {
                w.field("members", members);
            }
            w.field("now", now);
            w.some("rate", rate);
            w.some("ticket", ticket);
        }
        ServerFrame::Sent { id, seq, at } => {
            w = ObjectWriter::new("sent", None);
            w.field("id", id);
            w.field("seq", seq);
            w.field("at", at);
        }
        ServerFrame::Push { messages } => {
            w = ObjectWriter::new("push", None);
            w.field("messages", messages);
        }
        ServerFrame::Batch {
            messages,
            head,
            more,
            follows,
            ticket,
        } => {
            w = ObjectWriter::new("batch", None);
            w.field("messages", messages);
            w.field("head", head);
            w.field("more", more);
            if *follows {
                w.field("follows", &true);
            }
            w.some("ticket", ticket);
        }
        ServerFrame::Delivered { cursors, members } => {
            w = ObjectWriter::new("delivered", None);
            w.field("cursors", cursors);
            if *members != 0 {
                w.field("members", members);
            }
        }
        ServerFrame::Error { code, message, id } => {
            w = ObjectWriter::new("error", None);
            w.field("code", code.as_str());
            w.field("message", message);
            w.some("id", id);
        }
        ServerFrame::Pong { nonce } => {
            w = ObjectWriter::new("pong", None);
            w.field("nonce", nonce);
        }
    }
    w.finish()
}

/// Writes U+FFFD as the JSON escape `\ufffd`. A runtime that receives a text
/// message with invalid UTF-8 hands it on with U+FFFD in place of the bad
/// bytes, so a literal U+FFFD in a frame is taken as invalid UTF-8 (close
/// 1007); the escaped form carries the same character through. In JSON text
/// U+FFFD can only occur inside strings, where the escape is equivalent.
fn escape_replacement_char(text: String) -> String {
    if text.contains(REPLACEMENT_CHAR) {
        text.replace(REPLACEMENT_CHAR, "\\ufffd")
    } else {
        text
    }
}
