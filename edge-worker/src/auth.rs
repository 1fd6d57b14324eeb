//! Authentication at the edge: standard JWT (HS256) bearer tokens.
//!
//! Claims: `sub` (user id), `device` (device id), `exp` (Unix seconds), optional
//! `nbf` (Unix seconds) and `conversations` (ids the user may join). Any JWT
//! library can mint a token with the shared secret. Verification is plain Rust so
//! it is tested natively.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::names::{validate_conversation_id, validate_name};

type HmacSha256 = Hmac<Sha256>;

/// Tolerated clock skew between token minter and edge, applied to `exp` and `nbf`.
pub const CLOCK_LEEWAY_SECS: u64 = 60;
/// Most entries a token's `conversations` may hold.
pub const MAX_TOKEN_CONVERSATIONS: usize = 1000;
/// Shortest accepted `ACKLINE_JWT_SECRET`: HS256 wants a key of at least its
/// 256-bit output (RFC 7518 3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims Ackline reads from a token. Other claims (`iat`, `iss`, ...) are
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Device id, unique per user's browser profile.
    pub device: String,
    /// Expiry, Unix seconds (a fractional NumericDate is floored).
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    /// Not before, Unix seconds (optional; floored like `exp`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "some_numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Conversations the user may join.
    pub conversations: Vec<String>,
}

/// An RFC 7519 NumericDate: a non-negative JSON number of seconds. Fractions are
/// floored; strings, negatives, null and values beyond `u64` are refused.
fn numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a non-negative number of Unix seconds")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64: the first value that does not fit (exactly representable).
            const LIMIT: f64 = 18_446_744_073_709_551_616.0;
            if v.is_finite() && (0.0..LIMIT).contains(&v) {
                // In range and finite: the cast is exact after flooring.
                Ok(v.floor() as u64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    deserializer.deserialize_any(Visitor)
}

fn some_numeric_date<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    numeric_date(deserializer).map(Some)
}

/// Why a request is not allowed in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the `Authorization` header or the `access_token` parameter.
    #[error("no token: send Authorization: Bearer <jwt> or ?access_token=<jwt>")]
    Missing,
    /// Not three base64url parts, bad JSON, a header or claims Ackline refuses.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// A header `alg` other than HS256.
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    UnsupportedAlgorithm(String),
    /// The signature does not match the secret.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is in the past, beyond the clock leeway.
    #[error("token expired at {exp} (now {now}, leeway {CLOCK_LEEWAY_SECS} s)")]
    Expired {
        /// The token's expiry.
        exp: u64,
        /// The server clock.
        now: u64,
    },
    /// `nbf` is in the future, beyond the clock leeway.
    #[error("token not valid before {nbf} (now {now}, leeway {CLOCK_LEEWAY_SECS} s)")]
    NotYetValid {
        /// The token's not-before time.
        nbf: u64,
        /// The server clock.
        now: u64,
    },
    /// The conversation is not in the token's `conversations`.
    #[error("conversation {0:?} is not in this token")]
    NotMember(String),
    /// The server has no secret configured.
    #[error("the server has no ACKLINE_JWT_SECRET configured")]
    NoSecret,
    /// The configured secret is too short to be safe.
    #[error("ACKLINE_JWT_SECRET is {0} bytes: it must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret(usize),
}

impl AuthError {
    /// HTTP status: 403 for a valid token without access, 500 for a server
    /// misconfiguration, 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::NotMember(_) => 403,
            AuthError::NoSecret | AuthError::ShortSecret(_) => 500,
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
            AuthError::NotYetValid { .. } => "token_not_yet_valid",
            AuthError::NotMember(_) => "forbidden_conversation",
            AuthError::NoSecret | AuthError::ShortSecret(_) => "server_misconfigured",
        }
    }
}

/// Checks that the configured secret is usable: set and at least
/// [`MIN_SECRET_BYTES`] long.
pub fn check_secret(secret: &[u8]) -> Result<(), AuthError> {
    match secret.len() {
        0 => Err(AuthError::NoSecret),
        n if n < MIN_SECRET_BYTES => Err(AuthError::ShortSecret(n)),
        _ => Ok(()),
    }
}

/// Checks the JOSE header: `alg` must be HS256, `typ` (if present) JWT, and no
/// `crit`: Ackline understands no critical extension (RFC 7515 4.1.11).
fn check_header(header: &serde_json::Map<String, serde_json::Value>) -> Result<(), AuthError> {
    let alg = match header.get("alg") {
        Some(serde_json::Value::String(alg)) => alg,
        _ => return Err(AuthError::Malformed("header: alg must be a string".into())),
    };
    if alg != "HS256" {
        return Err(AuthError::UnsupportedAlgorithm(alg.clone()));
    }
    if header.contains_key("crit") {
        return Err(AuthError::Malformed(
            "header: crit is not supported (no critical extensions are understood)".into(),
        ));
    }
    match header.get("typ") {
        None => Ok(()),
        // RFC 7519 5.1: "JWT", or its media type; compared case-insensitively.
        Some(serde_json::Value::String(typ))
            if typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case("application/jwt") =>
        {
            Ok(())
        }
        Some(typ) => Err(AuthError::Malformed(format!(
            "header: typ {typ} is not JWT"
        ))),
    }
}

/// Checks every entry of `conversations` and their number.
fn check_conversations(conversations: &[String]) -> Result<(), AuthError> {
    if conversations.len() > MAX_TOKEN_CONVERSATIONS {
        return Err(AuthError::Malformed(format!(
            "conversations has {} entries: at most {MAX_TOKEN_CONVERSATIONS}",
            conversations.len()
        )));
    }
    for (i, id) in conversations.iter().enumerate() {
        if let Err(reason) = validate_conversation_id(id) {
            // Quote a bounded prefix: the entry comes from the client.
            let shown: String = id.chars().take(80).collect();
            return Err(AuthError::Malformed(format!(
                "conversations[{i}] {shown:?}: {reason}"
            )));
        }
    }
    Ok(())
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Verifies the secret, header, signature, `exp`/`nbf` (with
/// [`CLOCK_LEEWAY_SECS`]) and claim shapes.
pub fn verify(token: &str, secret: &[u8], now_secs: u64) -> Result<Claims, AuthError> {
    check_secret(secret)?;
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))
    };
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&decode(header_b64, "header")?)
            .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
    check_header(&header)?;
    let signature = decode(signature_b64, "signature")?;
    let mut mac = mac(secret);
    mac.update(header_b64.as_bytes());
    mac.update(b".");
    mac.update(payload_b64.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| AuthError::BadSignature)?;
    let claims: Claims = serde_json::from_slice(&decode(payload_b64, "payload")?)
        .map_err(|e| AuthError::Malformed(format!("claims: {e}")))?;
    if claims.exp.saturating_add(CLOCK_LEEWAY_SECS) <= now_secs {
        return Err(AuthError::Expired {
            exp: claims.exp,
            now: now_secs,
        });
    }
    if let Some(nbf) = claims.nbf {
        if nbf > now_secs.saturating_add(CLOCK_LEEWAY_SECS) {
            return Err(AuthError::NotYetValid { nbf, now: now_secs });
        }
    }
    validate_name("sub", &claims.sub).map_err(AuthError::Malformed)?;
    validate_name("device", &claims.device).map_err(AuthError::Malformed)?;
    check_conversations(&claims.conversations)?;
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
    sign(
        br#"{"alg":"HS256","typ":"JWT"}"#,
        &serde_json::to_vec(claims).unwrap_or_default(),
        secret,
    )
}

/// Signs raw header and payload JSON (claims are plain strings and numbers:
/// serializing them cannot fail).
fn sign(header: &[u8], payload: &[u8], secret: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = mac(secret);
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exactly [`MIN_SECRET_BYTES`] long.
    const SECRET: &[u8] = b"test-secret-of-exactly-32-bytes!";

    fn claims() -> Claims {
        Claims {
            sub: "ann".into(),
            device: "ann-laptop".into(),
            exp: 2_000,
            nbf: None,
            conversations: vec!["room".into()],
        }
    }

    const HEADER: &[u8] = br#"{"alg":"HS256","typ":"JWT"}"#;

    /// A correctly signed token with raw header and payload JSON.
    fn raw(header: &str, payload: &str) -> String {
        sign(header.as_bytes(), payload.as_bytes(), SECRET)
    }

    /// A correctly signed token whose claims are `claims()` with `extra`
    /// fields set (replacing any of the same name).
    fn with(extra: serde_json::Value) -> String {
        let mut payload = serde_json::to_value(claims()).unwrap();
        for (k, v) in extra.as_object().unwrap() {
            payload[k] = v.clone();
        }
        sign(HEADER, payload.to_string().as_bytes(), SECRET)
    }

    fn code(token: &str, now: u64) -> Result<Claims, (u16, &'static str)> {
        verify(token, SECRET, now).map_err(|e| (e.status(), e.code()))
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
        assert_eq!(
            code(&token, 2_000 + CLOCK_LEEWAY_SECS),
            Err((401, "token_expired"))
        );
        assert_eq!(
            verify(&token, b"other-secret-also-at-least-32-bytes", 1_000).map_err(|e| e.code()),
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
        assert_eq!(verify(&token, b"", 1_000).map_err(|e| e.status()), Err(500));
    }

    // Rule: `nbf` beyond now + leeway is refused with token_not_yet_valid.
    #[test]
    fn nbf_in_the_future_is_refused() {
        let now = 1_000;
        let not_yet = with(serde_json::json!({ "nbf": now + CLOCK_LEEWAY_SECS + 1 }));
        assert_eq!(code(&not_yet, now), Err((401, "token_not_yet_valid")));
        let err = verify(&not_yet, SECRET, now).unwrap_err();
        assert!(err.to_string().contains("not valid before 1061"), "{err}");
        // Within the leeway, or already past: accepted, and nbf is kept.
        let skewed = with(serde_json::json!({ "nbf": now + CLOCK_LEEWAY_SECS }));
        assert_eq!(
            code(&skewed, now).map(|c| c.nbf),
            Ok(Some(now + CLOCK_LEEWAY_SECS))
        );
        assert_eq!(
            code(&with(serde_json::json!({ "nbf": 0 })), now).map(|c| c.nbf),
            Ok(Some(0))
        );
        // Absent: no lower bound.
        assert_eq!(code(&mint(&claims(), SECRET), now).map(|c| c.nbf), Ok(None));
    }

    // Rule: a 60 s leeway on exp (expired when exp + leeway <= now); iat ignored.
    #[test]
    fn exp_has_a_clock_leeway_and_iat_is_ignored() {
        assert_eq!(CLOCK_LEEWAY_SECS, 60);
        let token = mint(&claims(), SECRET);
        assert!(code(&token, 1_999).is_ok());
        assert!(
            code(&token, 2_000).is_ok(),
            "just expired, within the leeway"
        );
        assert!(code(&token, 2_059).is_ok());
        assert_eq!(code(&token, 2_060), Err((401, "token_expired")));
        // Saturates instead of overflowing.
        let forever = with(serde_json::json!({ "exp": u64::MAX }));
        assert!(code(&forever, u64::MAX - 1).is_ok());
        // iat is not read at all, whatever its value.
        for iat in [
            serde_json::json!(9_999_999),
            serde_json::json!("x"),
            serde_json::json!(-1),
        ] {
            assert!(
                code(&with(serde_json::json!({ "iat": iat })), 1_000).is_ok(),
                "{iat}"
            );
        }
    }

    // Rule: a `crit` header (any value) is refused; `typ` must be JWT.
    #[test]
    fn crit_header_is_refused_and_typ_must_be_jwt() {
        let payload = serde_json::to_string(&claims()).unwrap();
        for crit in [r#"["exp"]"#, "[]", "null", r#""b64""#] {
            let token = raw(
                &format!(r#"{{"alg":"HS256","typ":"JWT","crit":{crit}}}"#),
                &payload,
            );
            assert_eq!(
                code(&token, 1_000),
                Err((401, "token_malformed")),
                "crit {crit}"
            );
            let err = verify(&token, SECRET, 1_000).unwrap_err();
            assert!(err.to_string().contains("crit"), "{err}");
        }
        for typ in [r#""JWT""#, r#""jwt""#, r#""application/JWT""#] {
            let token = raw(&format!(r#"{{"alg":"HS256","typ":{typ}}}"#), &payload);
            assert!(code(&token, 1_000).is_ok(), "typ {typ}");
        }
        assert!(
            code(&raw(r#"{"alg":"HS256"}"#, &payload), 1_000).is_ok(),
            "no typ"
        );
        for typ in [r#""JWE""#, r#""at+jwt""#, "1", "null"] {
            let token = raw(&format!(r#"{{"alg":"HS256","typ":{typ}}}"#), &payload);
            assert_eq!(
                code(&token, 1_000),
                Err((401, "token_malformed")),
                "typ {typ}"
            );
        }
        // alg still has to be there and a string.
        assert_eq!(
            code(&raw(r#"{"typ":"JWT"}"#, &payload), 1_000),
            Err((401, "token_malformed"))
        );
        assert_eq!(
            code(&raw(r#"{"alg":5}"#, &payload), 1_000),
            Err((401, "token_malformed"))
        );
    }

    // Rule: every conversation id in the claims is validated; at most 1000.
    #[test]
    fn conversation_ids_in_claims_are_validated() {
        let bad = with(serde_json::json!({ "conversations": ["room", "bad id"] }));
        assert_eq!(code(&bad, 1_000), Err((401, "token_malformed")));
        let err = verify(&bad, SECRET, 1_000).unwrap_err();
        assert!(
            err.to_string().contains(r#"conversations[1] "bad id""#),
            "{err}"
        );
        for id in ["", "../x", &"a".repeat(65), "é"] {
            let token = with(serde_json::json!({ "conversations": [id] }));
            assert_eq!(code(&token, 1_000), Err((401, "token_malformed")), "{id:?}");
        }
        // A long bad entry is quoted only in part.
        let long = with(serde_json::json!({ "conversations": ["x ".repeat(5_000)] }));
        assert!(verify(&long, SECRET, 1_000).unwrap_err().to_string().len() < 300);
        // Empty: a valid token that admits nothing.
        let empty = code(&with(serde_json::json!({ "conversations": [] })), 1_000).unwrap();
        assert_eq!(authorize(&empty, "room").map_err(|e| e.status()), Err(403));
        // The cap.
        let ids = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
        let full = with(serde_json::json!({ "conversations": ids(MAX_TOKEN_CONVERSATIONS) }));
        assert_eq!(code(&full, 1_000).map(|c| c.conversations.len()), Ok(1_000));
        let over = with(serde_json::json!({ "conversations": ids(MAX_TOKEN_CONVERSATIONS + 1) }));
        assert_eq!(code(&over, 1_000), Err((401, "token_malformed")));
    }

    // Rule: exp and nbf are NumericDates: non-negative numbers, fractions floored.
    #[test]
    fn numeric_dates_are_floored_and_checked() {
        let exp = |json: &str| {
            let payload =
                format!(r#"{{"sub":"ann","device":"d","conversations":["room"],"exp":{json}}}"#);
            code(&raw(std::str::from_utf8(HEADER).unwrap(), &payload), 1_000).map(|c| c.exp)
        };
        assert_eq!(exp("1.9e9"), Ok(1_900_000_000));
        assert_eq!(exp("1900000000.5"), Ok(1_900_000_000));
        assert_eq!(exp("1900000000.999"), Ok(1_900_000_000));
        assert_eq!(exp("2000"), Ok(2_000));
        // 940.9 floors to 940, and 940 + leeway <= now (1000): expired.
        assert_eq!(exp("940.9"), Err((401, "token_expired")), "floored");
        assert_eq!(exp("941"), Ok(941));
        for bad in [r#""2000""#, "-1", "-0.5", "null", "true", "1e20", "[2000]"] {
            assert_eq!(exp(bad), Err((401, "token_malformed")), "exp {bad}");
        }
        let nbf = |v: serde_json::Value| code(&with(serde_json::json!({ "nbf": v })), 1_000);
        assert_eq!(nbf(serde_json::json!(1.5)).map(|c| c.nbf), Ok(Some(1)));
        assert_eq!(
            nbf(serde_json::json!(1_060.9)).map(|c| c.nbf),
            Ok(Some(1_060))
        );
        for bad in [
            serde_json::json!("1"),
            serde_json::json!(-3),
            serde_json::Value::Null,
        ] {
            assert_eq!(nbf(bad.clone()), Err((401, "token_malformed")), "nbf {bad}");
        }
    }

    // Rule: the edge refuses to verify with a secret under 32 bytes (500).
    #[test]
    fn short_secrets_are_refused_with_500() {
        let short = &SECRET[..MIN_SECRET_BYTES - 1];
        let token = mint(&claims(), short);
        let err = verify(&token, short, 1_000).unwrap_err();
        assert_eq!((err.status(), err.code()), (500, "server_misconfigured"));
        assert!(err.to_string().contains("at least 32 bytes"), "{err}");
        assert_eq!(check_secret(short), Err(AuthError::ShortSecret(31)));
        assert_eq!(check_secret(b""), Err(AuthError::NoSecret));
        assert_eq!(check_secret(SECRET), Ok(()));
    }
}
