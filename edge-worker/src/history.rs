//! `GET /v1/conversations/{id}/messages?after=&before=&limit=`: history pages
//! over plain HTTP, read by the core's page reader
//! ([`protocol::server::read_page`]), the same one that answers `sync`: pages
//! without holes, at most `limit` messages and [`limits::PAGE_BYTES`] of
//! messages, `more` set when either cut the page.
//!
//! `after` set: ascending from `after + 1` (and below `before` if set); only
//! `before`: the `limit` messages just below it; neither: the latest page.
//! `limit` is 1..=500 (default 50). Each parameter appears at most once, as 1 to
//! 16 ASCII decimal digits (no sign, no spaces); anything else is a 400.

use protocol::server::{read_page, PageQuery};
use protocol::{limits, Seq, MAX_SEQ};
use worker::{Response, Result, Url};

use crate::http::{error_response, json_response};
use crate::store::Store;

const DEFAULT_LIMIT: u32 = 50;
/// Digits of MAX_SEQ (2^53 - 1): the longest integer a parameter may spell.
const MAX_DIGITS: usize = 16;

/// One integer parameter: absent, or exactly once as plain decimal digits.
fn param(url: &Url, name: &str) -> std::result::Result<Option<u64>, String> {
    let mut values = url.query_pairs().filter(|(k, _)| k == name).map(|(_, v)| v);
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("{name} is given more than once"));
    }
    let digits =
        !value.is_empty() && value.len() <= MAX_DIGITS && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u64>() {
        Ok(n) if digits && n <= MAX_SEQ => Ok(Some(n)),
        _ => Err(format!(
            "{name} must be an integer in 0..={MAX_SEQ} written in decimal digits"
        )),
    }
}

/// Parses `after`, `before` and `limit`; the reason on error.
fn parse_query(url: &Url) -> std::result::Result<(Option<u64>, Option<u64>, u32), String> {
    let after = param(url, "after")?;
    let before = param(url, "before")?;
    let limit = param(url, "limit")?.unwrap_or(u64::from(DEFAULT_LIMIT));
    if limit == 0 || limit > u64::from(limits::MAX_PAGE) {
        return Err(format!("limit must be 1..={}", limits::MAX_PAGE));
    }
    if let (Some(a), Some(b)) = (after, before) {
        if b <= a {
            return Err("before must be greater than after".to_owned());
        }
    }
    Ok((after, before, limit as u32))
}

/// Answers one history page.
pub fn page(store: &Store, url: &Url) -> Result<Response> {
    let (after, before, limit) = match parse_query(url) {
        Ok(p) => p,
        Err(reason) => return error_response(400, "bad_request", &reason),
    };
    // Every committed write is durable (see store.rs): the head is the last row.
    let head: Seq = store.last()?.map_or(0, |m| m.seq);
    let query = PageQuery {
        after,
        before,
        limit,
    };
    let page = match read_page(store, head, query, limits::PAGE_BYTES) {
        Ok(page) => page,
        Err(e) => return error_response(503, "storage_unavailable", &e.to_string()),
    };
    json_response(
        200,
        &serde_json::json!({ "messages": page.messages, "head": page.head, "more": page.more }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> std::result::Result<(Option<u64>, Option<u64>, u32), String> {
        let url = Url::parse(&format!(
            "http://edge/v1/conversations/room/messages?{query}"
        ))
        .expect("test URL");
        parse_query(&url)
    }

    #[test]
    fn plain_parameters_parse() {
        assert_eq!(parse(""), Ok((None, None, DEFAULT_LIMIT)));
        assert_eq!(
            parse("after=3&before=10&limit=5"),
            Ok((Some(3), Some(10), 5))
        );
        assert_eq!(parse("limit=05&access_token=x"), Ok((None, None, 5)));
        assert_eq!(
            parse(&format!("after={MAX_SEQ}")),
            Ok((Some(MAX_SEQ), None, 50))
        );
        assert_eq!(parse("before=0000000000000001"), Ok((None, Some(1), 50)));
    }

    // Rule: integers are 1..=16 ASCII decimal digits, nothing else.
    #[test]
    fn only_plain_decimal_digits_are_integers() {
        for bad in [
            "limit=%2B5", // "+5", which str::parse accepts
            "limit=+5",   // " 5" once form-decoded
            "after=05x",
            "after=",
            "after",
            "limit=%205",
            "limit=5%20",
            "limit=-1",
            "limit=5.0",
            "limit=0x5",
            "limit=%EF%BC%95",          // a full-width digit five
            "before=00000000000000001", // 17 digits
            "after=9007199254740992",   // MAX_SEQ + 1
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("decimal digits"), "{bad}: {err}");
        }
    }

    // Rule: a parameter given twice is refused.
    #[test]
    fn repeated_parameters_are_refused() {
        for bad in [
            "limit=5&limit=6",
            "limit=5&limit=5",
            "after=1&before=9&after=2",
            "before=3&before=",
        ] {
            let err = parse(bad).expect_err(bad);
            assert!(err.contains("more than once"), "{bad}: {err}");
        }
    }
}
