//! Authentication at the edge: standard JWT (HS256) bearer tokens.
//!
//! Claims: `sub` (user id), `device` (device id), `exp` (Unix seconds) and
//! `conversations` (ids the user may join). Any JWT library can mint a token with
//! the shared secret. Verification is plain Rust so it is tested natively.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::names::validate_name;

type HmacSha256 = Hmac<Sha256>;

/// The claims Ackline reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id, unique per user's browser profile.
    pub device: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Conversations the user may join.
    pub conversations: Vec<String>,
}

/// Why a request is not allowed in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the `Authorization` header or the `access_token` parameter.
    #[error("no token: send Authorization: Bearer <jwt> or ?access_token=<jwt>")]
    Missing,
    /// Not three base64url parts, bad JSON, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A header `alg` other than HS256.
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    UnsupportedAlgorithm(String),
    /// The signature does not match the secret.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired at {exp} (now {now})")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The server clock.
        now: u64,
    },
    /// The conversation is not in the token's `conversations`.
    #[error("conversation {0:?} is not in this token")]
    NotMember(String),
    /// The server has no secret configured.
    #[error("the server has no ACKLINE_JWT_SECRET configured")]
    NoSecret,
}

impl AuthError {
    /// HTTP status: 403 for a valid token without access, 500 for a server
    /// misconfiguration, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::NotMember(_) => 403,
            AuthError::NoSecret => 500,
            _ => 401,
        }
    }

    /// Stable machine-readable code for the JSON error body.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::UnsupportedAlgorithm(_) => "token_algorithm",
            AuthError::BadSignature => "token_signature",
            AuthError::Expired { .. } => "token_expired",
            AuthError::NotMember(_) => "forbidden_conversation",
            AuthError::NoSecret => "server_misconfigured",
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Verifies signature, algorithm, expiry and claim shapes.
pub fn verify(token: &str, secret: &[u8], now_secs: u64) -> Result<Claims, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::NoSecret);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected three dot-separated parts".into()));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))
    };
    let header: Header = serde_json::from_slice(&decode(header_b64, "header")?)
        .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
    if header.alg != "HS256" {
        return Err(AuthError::UnsupportedAlgorithm(header.alg));
    }
    let signature = decode(signature_b64, "signature")?;
    let mut mac = mac(secret);
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;
    let claims: Claims = serde_json::from_slice(&decode(payload_b64, "payload")?)
        .map_err(|e| AuthError::Malformed(format!("claims: {e}")))?;
    if claims.exp <= now_secs {
        return Err(AuthError::Expired {
            exp: claims.exp,
            now: now_secs,
        });
    }
    validate_name("sub", &claims.sub).map_err(AuthError::Malformed)?;
    validate_name("device", &claims.device).map_err(AuthError::Malformed)?;
    Ok(claims)
}

/// Checks that `claims` allow `conversation`.
pub fn authorize(claims: &Claims, conversation: &str) -> Result<(), AuthError> {
    if claims.conversations.iter().any(|c| c == conversation) {
        Ok(())
    } else {
        Err(AuthError::NotMember(conversation.to_owned()))
    }
}

/// Mints an HS256 token (for the dev-only token endpoint).
pub fn mint(claims: &Claims, secret: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    // Claims are plain strings and numbers: serializing cannot fail.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload));
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";

    fn claims() -> Claims {
        Claims {
            sub: "ann".into(),
            device: "ann-laptop".into(),
            exp: 2_000,
            conversations: vec!["room".into()],
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let token = mint(&claims(), SECRET);
        assert_eq!(verify(&token, SECRET, 1_000), Ok(claims()));
        assert_eq!(authorize(&claims(), "room"), Ok(()));
        assert_eq!(
            authorize(&claims(), "other").map_err(|e| e.status()),
            Err(403)
        );
    }

    #[test]
    fn rejects_bad_tokens_with_401() {
        let token = mint(&claims(), SECRET);
        let code = |t: &str, now| verify(t, SECRET, now).map_err(|e| (e.status(), e.code()));
        assert_eq!(code(&token, 2_000), Err((401, "token_expired")));
        assert_eq!(
            verify(&token, b"other", 1_000).map_err(|e| e.code()),
            Err("token_signature")
        );
        assert_eq!(code("abc", 0), Err((401, "token_malformed")));
        assert_eq!(code("a.b.c.d", 0), Err((401, "token_malformed")));
        assert_eq!(code("!!.!!.!!", 0), Err((401, "token_malformed")));
        // Tampered claims keep the old signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut forged = claims();
        forged.conversations.push("secret-room".into());
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(code(&parts.join("."), 1_000), Err((401, "token_signature")));
        // alg=none is refused before any signature check.
        parts[0] = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert_eq!(code(&parts.join("."), 1_000), Err((401, "token_algorithm")));
        assert_eq!(
            verify(&token, b"", 1_000).map_err(|e| e.status()),
            Err(500)
        );
    }
}
