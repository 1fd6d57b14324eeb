//! Validation of the ids that appear in URLs and tokens.

/// Conversation, user and device ids: 1..=64 bytes of `[A-Za-z0-9_.-]`.
pub fn validate_name(kind: &str, value: &str) -> std::result::Result<(), String> {
    let ok_len = !value.is_empty() && value.len() <= 64;
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(format!(
            "{kind} must be 1..=64 characters of [A-Za-z0-9_.-]"
        ))
    }
}

/// Checks a conversation id from the URL or from a token's `conversations`.
pub fn validate_conversation_id(id: &str) -> std::result::Result<(), String> {
    validate_name("conversation id", id)
}
