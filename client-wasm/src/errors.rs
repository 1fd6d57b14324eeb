//! Errors as JS sees them: `Error` objects with a stable `code` property.
//!
//! Every code the npm API can hand to JS — rejected promises, `error` events,
//! `status.lastError`, `update.code` of a failed message — is one [`ErrorCode`].
//! That covers the shell's own codes, the core's [`ClientError::code`] strings
//! and the server's wire codes ([`protocol::ErrorCode`], which reach JS when
//! the server refuses a message). The `error_codes!` list below is the one
//! source: it defines the enum and writes the TypeScript union
//! `AcklineErrorCode` into `ackline.d.ts`, and `errorCodes()` returns it at run
//! time (tests/browser/error-codes.test.mjs checks the shipped `.d.ts` against
//! it; a unit test checks the core's and the server's code lists against it).

use protocol::ClientError;
use serde::{Serialize, Serializer};
use wasm_bindgen::prelude::*;

use crate::store::StoreError;

/// Defines [`ErrorCode`] (variant = "code", with its doc) and the TypeScript
/// union of the same codes, in the same order.
macro_rules! error_codes {
    ($($(#[doc = $doc:literal])+ $variant:ident = $code:literal,)+) => {
        /// A stable, machine-readable `code` of the npm API's errors.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[doc = $doc])+ $variant,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            /// The code as JS sees it (snake_case).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }
        }

        /// The TypeScript declarations of the codes (see `TS_ERROR_CODES_SECTION`).
        // Read by the custom section below, which rustc's lint does not see.
        #[allow(dead_code)]
        const TS_ERROR_CODES: &str = concat!(
            "\n/** Every `code` an Ackline error can carry (`AcklineError.code`, `error` events,\n",
            " *  `status.lastError.code`, `update.code` of a failed message). */\n",
            "export type AcklineErrorCode =\n",
            $("  | \"", $code, "\"\n",)+
            "  ;\n",
            "\n/** An error event, and the shape of every rejected promise (an Error with a code). */\n",
            "export interface AcklineError extends Error { code: AcklineErrorCode; }\n",
        );
    };
}

error_codes! {
    // The shell's own codes.
    /// `Ackline.open` was given options of the wrong shape.
    BadOptions = "bad_options",
    /// The edge URL is not http(s) or ws(s), or no WebSocket opens to it.
    BadUrl = "bad_url",
    /// The token is not a JWT with `sub` and `device`, or the token callback
    /// returned something other than a string.
    BadToken = "bad_token",
    /// The token callback threw or its promise rejected.
    TokenFailed = "token_failed",
    /// `crypto.getRandomValues` is missing (message ids are drawn from it).
    CryptoUnavailable = "crypto_unavailable",
    /// A message id relayed from another tab is not a ULID.
    BadMessageId = "bad_message_id",
    /// `close()` was called; unfinished `send` and `history` promises reject so.
    Closed = "closed",
    // IndexedDB (`store::StoreError`).
    /// IndexedDB cannot be used here (absent, private mode, storage failure).
    StoreUnavailable = "store_unavailable",
    /// Opening waits for another tab holding an older version of the database.
    StoreBlocked = "store_blocked",
    /// Another tab upgraded or deleted the database; reload to continue.
    StoreVersionChange = "store_version_change",
    /// The storage quota is exhausted.
    StoreQuota = "store_quota",
    /// A stored record does not read back.
    StoreCorrupt = "store_corrupt",
    /// Any other IndexedDB failure.
    StoreFailed = "store_failed",
    // The core (`protocol::ClientError::code`).
    /// A body over the limit (the client refuses it before sending; also the
    /// server's wire code for the same).
    BodyTooLarge = "body_too_large",
    /// The server sent a frame the client cannot decode (it is ignored).
    BadServerFrame = "bad_server_frame",
    /// The server reported an error not tied to one message.
    ServerError = "server_error",
    /// A message did not extend the integrity chain; it is being refetched.
    ChainMismatch = "chain_mismatch",
    /// An older history page did not chain into the stored history.
    HistoryMismatch = "history_mismatch",
    /// The server's history differs from this device's; the inbox is frozen
    /// until `resetInbox()`.
    Diverged = "diverged",
    /// `history()` needed the server but there is no connection (or it
    /// dropped before the answer).
    Offline = "offline",
    /// The server refused the token, and a fresh one from the callback
    /// (status `auth`). Retried when the page comes back online or visible.
    Unauthorized = "unauthorized",
    /// The token does not grant this conversation (status `stopped`).
    Forbidden = "forbidden",
    /// The server closed the connection with a policy or application close
    /// code (1008, 4000-4999); the client reconnects.
    ConnectionClosed = "connection_closed",
    /// Nothing came from the server, not even a pong; the client reconnects.
    HeartbeatTimeout = "heartbeat_timeout",
    // The server's wire codes (`protocol::ErrorCode`, docs/PROTOCOL.md).
    /// Wire: the frame was not JSON.
    BadJson = "bad_json",
    /// Wire: unsupported protocol version.
    UnsupportedVersion = "unsupported_version",
    /// Wire: unknown frame type.
    UnknownFrame = "unknown_frame",
    /// Wire: a field is missing, of the wrong type or out of range.
    BadFrame = "bad_frame",
    /// Wire: the frame is over 64 KiB.
    FrameTooLarge = "frame_too_large",
    /// Wire: the connection sent faster than allowed.
    RateLimited = "rate_limited",
    /// Wire: too many sends awaiting storage.
    WindowFull = "window_full",
    /// Wire: the conversation has the maximum number of members.
    TooManyMembers = "too_many_members",
    /// Wire: a frame before `hello`.
    NotReady = "not_ready",
    /// Wire: the server could not complete the request.
    Internal = "internal",
    /// Wire: a send named an earlier message of this device the server has not stored.
    OutOfOrder = "out_of_order",
}

// Into ackline.d.ts (wasm-bindgen consumes the item, so the tests read
// TS_ERROR_CODES).
#[wasm_bindgen(typescript_custom_section)]
const TS_ERROR_CODES_SECTION: &'static str = TS_ERROR_CODES;

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl From<protocol::ErrorCode> for ErrorCode {
    fn from(code: protocol::ErrorCode) -> ErrorCode {
        use protocol::ErrorCode as Wire;
        match code {
            Wire::BadJson => ErrorCode::BadJson,
            Wire::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            Wire::UnknownFrame => ErrorCode::UnknownFrame,
            Wire::BadFrame => ErrorCode::BadFrame,
            Wire::FrameTooLarge => ErrorCode::FrameTooLarge,
            Wire::BodyTooLarge => ErrorCode::BodyTooLarge,
            Wire::RateLimited => ErrorCode::RateLimited,
            Wire::WindowFull => ErrorCode::WindowFull,
            Wire::TooManyMembers => ErrorCode::TooManyMembers,
            Wire::NotReady => ErrorCode::NotReady,
            Wire::Internal => ErrorCode::Internal,
            Wire::OutOfOrder => ErrorCode::OutOfOrder,
            // `protocol::ErrorCode` is non_exhaustive; the unit test
            // `every_core_and_wire_code_is_listed` fails when it grows, so
            // this arm is never reached by a tested build.
            _ => ErrorCode::Internal,
        }
    }
}

impl From<&ClientError> for ErrorCode {
    fn from(e: &ClientError) -> ErrorCode {
        match e {
            ClientError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            ClientError::BadMessageId { .. } => ErrorCode::BadMessageId,
            ClientError::Decode(_) => ErrorCode::BadServerFrame,
            ClientError::Server { .. } => ErrorCode::ServerError,
            ClientError::ChainMismatch { .. } => ErrorCode::ChainMismatch,
            ClientError::HistoryMismatch { .. } => ErrorCode::HistoryMismatch,
            ClientError::Diverged { .. } => ErrorCode::Diverged,
            ClientError::Offline => ErrorCode::Offline,
            ClientError::Unauthorized { .. } => ErrorCode::Unauthorized,
            ClientError::Forbidden { .. } => ErrorCode::Forbidden,
            ClientError::ConversationFull => ErrorCode::TooManyMembers,
            ClientError::ConnectionClosed { .. } => ErrorCode::ConnectionClosed,
            ClientError::ConnectionDead { .. } => ErrorCode::HeartbeatTimeout,
            // Non_exhaustive as well; see above.
            _ => ErrorCode::ServerError,
        }
    }
}

/// Every error the npm API reports, each with its [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum AcklineError {
    /// Options of the wrong shape (the message says which).
    #[error("{0}")]
    BadOptions(&'static str),
    /// A URL that cannot be used (the message says why).
    #[error("{0}")]
    BadUrl(&'static str),
    /// A token the client cannot read.
    #[error("{0}")]
    BadToken(String),
    /// The token callback failed.
    #[error("token callback failed: {0}")]
    TokenFailed(String),
    /// No usable `crypto.getRandomValues`.
    #[error("crypto.getRandomValues is not available in this context (message ids are drawn from it){0}")]
    CryptoUnavailable(String),
    /// The client was closed.
    #[error("the client was closed")]
    Closed,
    /// IndexedDB failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The core reported an error.
    #[error(transparent)]
    Core(#[from] ClientError),
    /// The server refused an own message for good.
    #[error("the server refused message {id} ({})", code.as_str())]
    Refused {
        /// The message's client id.
        id: String,
        /// The server's wire code.
        code: protocol::ErrorCode,
    },
}

impl AcklineError {
    /// The stable code JS sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            AcklineError::BadOptions(_) => ErrorCode::BadOptions,
            AcklineError::BadUrl(_) => ErrorCode::BadUrl,
            AcklineError::BadToken(_) => ErrorCode::BadToken,
            AcklineError::TokenFailed(_) => ErrorCode::TokenFailed,
            AcklineError::CryptoUnavailable(_) => ErrorCode::CryptoUnavailable,
            AcklineError::Closed => ErrorCode::Closed,
            AcklineError::Store(e) => e.error_code(),
            AcklineError::Core(e) => ErrorCode::from(e),
            AcklineError::Refused { code, .. } => ErrorCode::from(*code),
        }
    }
}

impl From<AcklineError> for JsValue {
    /// A JS `Error` with `message` and the stable `code`.
    fn from(err: AcklineError) -> JsValue {
        let js = js_sys::Error::new(&err.to_string());
        // Setting a property on a fresh Error object cannot fail.
        let _ = js_sys::Reflect::set(&js, &"code".into(), &err.code().as_str().into());
        js.into()
    }
}

/// The text of a JS exception: an `Error`'s message, else its debug form.
pub fn js_message(value: &JsValue) -> String {
    match value.dyn_ref::<js_sys::Error>() {
        Some(e) => String::from(e.message()),
        None => value.as_string().unwrap_or_else(|| format!("{value:?}")),
    }
}

/// A plain JS object (JSON-compatible: numbers, not BigInts; maps as objects).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .unwrap_or(JsValue::NULL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use wasm_bindgen_test::*;

    wasm_bindgen_test_configure!(run_in_browser);

    #[wasm_bindgen_test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
        }
    }

    #[wasm_bindgen_test]
    fn the_typescript_union_lists_every_code_in_order() {
        let union: Vec<&str> = TS_ERROR_CODES
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("| \"")
                    .and_then(|l| l.strip_suffix('"'))
            })
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(union, all);
    }

    /// The `"..."` strings of the first `fn <name>` body in `source`.
    fn returned_strings<'a>(source: &'a str, name: &str) -> Vec<&'a str> {
        let start = source
            .find(&format!("fn {name}("))
            .unwrap_or_else(|| panic!("no fn {name}"));
        let body = &source[start..];
        let end = body.find("\n    }\n").expect("end of fn");
        body[..end]
            .split("=> \"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .collect()
    }

    #[wasm_bindgen_test]
    fn every_core_and_wire_code_is_listed() {
        // The protocol's enums are non_exhaustive, so a new variant compiles
        // here unnoticed; reading their code tables from source catches it.
        let client = returned_strings(include_str!("../../protocol/src/client/mod.rs"), "code");
        let wire = returned_strings(include_str!("../../protocol/src/frame.rs"), "as_str");
        assert!(
            client.contains(&"diverged") && wire.contains(&"rate_limited"),
            "{client:?} {wire:?}"
        );
        let ours: HashSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        for code in client.iter().chain(&wire) {
            assert!(
                ours.contains(code),
                "{code} is missing from error_codes! in client-wasm/src/errors.rs"
            );
        }
        // And they map to themselves, not to a fallback.
        for code in &wire {
            let parsed: protocol::ErrorCode =
                serde_json::from_str(&format!("\"{code}\"")).expect("a wire code");
            assert_eq!(ErrorCode::from(parsed).as_str(), *code);
        }
    }

    #[wasm_bindgen_test]
    fn js_errors_carry_their_code() {
        let cases: Vec<(AcklineError, &str)> = vec![
            (AcklineError::Closed, "closed"),
            (AcklineError::BadUrl("x"), "bad_url"),
            (AcklineError::Store(StoreError::Blocked), "store_blocked"),
            (
                AcklineError::Core(ClientError::Diverged {
                    seq: 3,
                    server_head: 2,
                }),
                "diverged",
            ),
            (
                AcklineError::Refused {
                    id: "x".into(),
                    code: protocol::ErrorCode::BodyTooLarge,
                },
                "body_too_large",
            ),
        ];
        for (err, code) in cases {
            let message = err.to_string();
            let js: JsValue = err.into();
            assert!(js.is_instance_of::<js_sys::Error>());
            assert_eq!(
                js_sys::Reflect::get(&js, &"code".into())
                    .unwrap()
                    .as_string()
                    .as_deref(),
                Some(code)
            );
            assert_eq!(js_message(&js), message);
        }
    }
}
