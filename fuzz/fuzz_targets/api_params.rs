//! The API's query conditions and cursors, as any query string: no panic, and every refusal
//! names a parameter (SPEC §11: a 400 names the parameter).
#![no_main]

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use sipedge_http::params::{self, Extra, bucket_edges};

const KEY: &[u8] = b"fuzzing cursor key, 32 bytes long";
const NAMES: [&str; 8] = [
    "start", "end", "type", "caller", "called", "status", "limit", "cursor",
];

fuzz_target!(|data: &[u8]| {
    let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return;
    };
    let query: HashMap<String, String> = pairs.into_iter().collect();
    let now = Utc
        .timestamp_opt(1_767_225_600, 0)
        .single()
        .expect("a valid instant");
    let zone = chrono_tz::Asia::Shanghai;
    for extra in [Extra::None, Extra::Paging] {
        match params::parse(&query, extra, zone, now, KEY) {
            Ok(q) => {
                assert!(q.limit >= 1 && q.limit <= 1000, "limit {}", q.limit);
                let (_, edges) = bucket_edges(q.filter.start, q.filter.end, zone);
                assert!(edges.windows(2).all(|w| w[0] < w[1]), "edges out of order");
                let cursor = params::make_cursor(sipedge_store::CdrId(7), &q.filter, KEY);
                let mut again = query.clone();
                again.insert("cursor".into(), cursor);
                if let Ok(next) = params::parse(&again, Extra::Paging, zone, now, KEY) {
                    assert_eq!(next.after, Some(sipedge_store::CdrId(7)));
                }
            }
            Err(e) => {
                let text = e.to_string();
                assert!(
                    NAMES.iter().any(|n| text.contains(n))
                        || query.keys().any(|k| text.contains(k.as_str())),
                    "a refusal that names no parameter: {text}"
                );
            }
        }
    }
});
