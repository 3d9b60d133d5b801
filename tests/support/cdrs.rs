//! Reading the CDRs of a running sipedge through its API (`/api/cdrs`, `/api/cdrs/{id}`,
//! `/api/cdrs/{id}/log`), and the time fields of a CDR as numbers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::http::get_json;
use super::wait_until;

/// Every CDR whose start is within a day of now, newest first, following `next_cursor`.
pub fn all(api: SocketAddr) -> Vec<Value> {
    let now = Utc::now();
    let start = (now - chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let end = (now + chrono::Duration::days(1)).format("%Y-%m-%dT%H:%M:%SZ");
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/cdrs?start={start}&end={end}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get_json(api, &path);
        assert_eq!(status, 200, "GET {path}: {page}");
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// The CDRs by Call-ID, each Call-ID with all its CDRs (more than one is a duplicate).
pub fn by_call_id(cdrs: &[Value]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    for cdr in cdrs {
        let call_id = cdr["call_id"].as_str().unwrap_or_default().to_owned();
        out.entry(call_id).or_default().push(cdr.clone());
    }
    out
}

/// Waits until the CDRs of every Call-ID in `call_ids` are listed (at most `limit`), then
/// returns every CDR listed.
pub fn wait_for(api: SocketAddr, call_ids: &[String], limit: Duration) -> Vec<Value> {
    let mut cdrs = Vec::new();
    wait_until(limit, || {
        cdrs = all(api);
        let seen = by_call_id(&cdrs);
        call_ids.iter().all(|c| seen.contains_key(c))
    });
    cdrs
}

/// A time field (RFC 3339) as ms since the epoch; None when null or absent.
pub fn ms(cdr: &Value, field: &str) -> Option<i64> {
    let text = cdr[field].as_str()?;
    let t = DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("{field} = {text:?} is not RFC 3339: {e}"));
    Some(t.timestamp_millis())
}
