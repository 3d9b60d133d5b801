//! The terminals' `POST /AgoraAccount` body, as any bytes: parsing and verification never
//! panic, and a request that parses verifies to an answer or a named error.
#![no_main]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use sipedge_http::account::{AccountRequest, verify};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = AccountRequest::parse(data) else {
        return;
    };
    let appids = ["dev-appid-change-me".to_owned(), "second".to_owned()];
    let now = Utc
        .timestamp_opt(1_559_361_600, 0)
        .single()
        .expect("a valid instant");
    for zone in [chrono_tz::Asia::Shanghai, chrono_tz::UTC] {
        if let Err(e) = verify(
            &appids,
            &request.token,
            &request.timestamp,
            zone,
            now,
            Duration::from_secs(3600),
        ) {
            assert!(!e.is_empty(), "an error without words");
        }
    }
});
