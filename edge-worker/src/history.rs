//! `GET /v1/conversations/{id}/messages?after=&before=&limit=`: history pages
//! read straight from storage, for apps that want history over plain HTTP.
//!
//! `after` set: ascending from `after + 1` (and below `before` if set); only
//! `before`: the `limit` messages just below it; neither: the latest page.
//! `limit` is 1..=500 (default 50).

use protocol::{limits, Seq, MAX_SEQ};
use worker::{Response, Result, Url};

use crate::http::{error_response, json_response};
use crate::store::Store;

const DEFAULT_LIMIT: u32 = 50;

fn param(url: &Url, name: &str) -> std::result::Result<Option<u64>, String> {
    match url.query_pairs().find(|(k, _)| k == name) {
        None => Ok(None),
        Some((_, v)) => match v.parse::<u64>() {
            Ok(n) if n <= MAX_SEQ => Ok(Some(n)),
            _ => Err(format!("{name} must be an integer in 0..={MAX_SEQ}")),
        },
    }
}

/// Answers one history page.
pub fn page(store: &Store, url: &Url) -> Result<Response> {
    let parsed = (|| {
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
    })();
    let (after, before, limit) = match parsed {
        Ok(p) => p,
        Err(reason) => return error_response(400, "bad_request", &reason),
    };
    let head: Seq = store.last()?.map_or(0, |m| m.seq);
    let (messages, more) = match after {
        Some(after) => {
            let page = store.range(after, before, limit)?;
            let end = before.map_or(head, |b| b.saturating_sub(1).min(head));
            let more = page.last().is_some_and(|m| m.seq < end);
            (page, more)
        }
        None => {
            let below = before.unwrap_or(head + 1);
            let page = store.before(below, limit)?;
            let more = page.first().is_some_and(|m| m.seq > 1);
            (page, more)
        }
    };
    json_response(
        200,
        &serde_json::json!({ "messages": messages, "head": head, "more": more }),
    )
}
