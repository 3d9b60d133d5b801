//! Black-box tests of the account responder (SPEC §3): the real binary on free ports, driven
//! over plain HTTP/1.1.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::time::Duration;

use chrono::{Timelike, Utc};
use md5::{Digest, Md5};
use support::config::Config;
use support::{Sipedge, http};

const APPID: &str = "test-appid-0001";
const APPID2: &str = "test-appid-0002";

fn start() -> Sipedge {
    Sipedge::start(
        &Config::new("test-01")
            .set("node", "timezone", "\"Asia/Shanghai\"")
            .set("account", "appids", &format!("[\"{APPID}\", \"{APPID2}\"]"))
            .set("account", "max_clock_skew", "\"3600s\""),
    )
}

fn token(appid: &str, timestamp: &str) -> String {
    hex::encode(Md5::digest(format!("{appid}{timestamp}").as_bytes()))
}

/// `YYYYMMDDhhmmss` in Shanghai, `offset_s` from now. Called just after a second begins, so
/// that the server's clock, read a few milliseconds later, is still in the same second.
fn shanghai(offset_s: i64) -> String {
    let at = Utc::now() + chrono::Duration::seconds(offset_s);
    at.with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%Y%m%d%H%M%S")
        .to_string()
}

fn wait_for_second_start() {
    let nanos = Utc::now().nanosecond();
    if nanos > 100_000_000 {
        std::thread::sleep(Duration::from_nanos(
            u64::from(1_000_000_000 - nanos) + 5_000_000,
        ));
    }
}

fn body(stream: &str, token: &str, timestamp: &str) -> String {
    format!(
        r#"{{"method":"getAgoraAccount","streamNumber":"{stream}","token":"{token}","timestamp":"{timestamp}"}}"#
    )
}

#[test]
fn granted_and_refused_bodies_are_exact() {
    let se = start();
    let addr = se.addr("account");
    let ts = shanghai(0);

    let ok = http(
        addr,
        "POST",
        "/AgoraAccount",
        &body("89567", &token(APPID, &ts), &ts),
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        ok.body,
        r#"{"method":"getAgoraAccount","streamNumber":"89567","resCode":"0","account":"sipserver"}"#
    );
    assert_eq!(ok.header("content-type"), Some("application/json"));

    let second = http(
        addr,
        "POST",
        "/AgoraAccount",
        &body("7", &token(APPID2, &ts), &ts),
    );
    assert_eq!(
        second.body,
        r#"{"method":"getAgoraAccount","streamNumber":"7","resCode":"0","account":"sipserver"}"#
    );

    let wrong = http(
        addr,
        "POST",
        "/AgoraAccount",
        &body("89567", &token("other", &ts), &ts),
    );
    assert_eq!(wrong.status, 200);
    assert_eq!(
        wrong.body,
        r#"{"method":"getAgoraAccount","streamNumber":"89567","resCode":"1"}"#
    );
}

#[test]
fn clock_skew_window_is_one_hour_either_way() {
    let se = start();
    let addr = se.addr("account");
    for (offset, expected) in [(3599, "0"), (-3599, "0"), (3601, "1"), (-3601, "1")] {
        wait_for_second_start();
        let ts = shanghai(offset);
        let reply = http(
            addr,
            "POST",
            "/AgoraAccount",
            &body("1", &token(APPID, &ts), &ts),
        );
        assert_eq!(reply.status, 200);
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["resCode"], expected, "offset {offset}: {}", reply.body);
    }
}

#[test]
fn document_forms_are_accepted() {
    let se = start();
    let addr = se.addr("account");
    let ts = shanghai(0);
    // The document's example: a leading space and upper-case hex in the token.
    let doc_token = format!(" {}", token(APPID, &ts).to_uppercase());
    let spaced = format!(
        "{{\n   \"method\" : \"getAgoraAccount\",\n   \"streamNumber\" : \"89567\",\n\"token\" : \"{doc_token}\",\n\"timestamp\" : \"{ts}\"\n}}"
    );
    let reply = http(addr, "POST", "/AgoraAccount", &spaced);
    assert!(reply.body.contains(r#""resCode":"0""#), "{reply:?}");

    let capitalised = format!(
        r#"{{"Method":"getAgoraAccount","StreamNumber":"42","Token":"{}","Timestamp":"{ts}"}}"#,
        token(APPID, &ts)
    );
    let reply = http(addr, "POST", "/AgoraAccount", &capitalised);
    assert!(
        reply.body.contains(r#""streamNumber":"42","resCode":"0""#),
        "{reply:?}"
    );

    let numeric = format!(
        r#"{{"method":"getAgoraAccount","streamNumber":89567,"token":"{}","timestamp":"{ts}"}}"#,
        token(APPID, &ts)
    );
    let reply = http(addr, "POST", "/AgoraAccount", &numeric);
    assert!(
        reply
            .body
            .contains(r#""streamNumber":"89567","resCode":"0""#),
        "{reply:?}"
    );
}

#[test]
fn bad_requests_name_the_problem() {
    let se = start();
    let addr = se.addr("account");
    let ts = shanghai(0);
    let good = token(APPID, &ts);
    let cases = [
        ("not json at all".to_owned(), 400, "JSON"),
        (
            r#"{"method":"getAgoraAccount","streamNumber":"1","token":"x"}"#.to_owned(),
            400,
            "timestamp",
        ),
        (
            r#"{"method":"getAgoraAccount","token":"x","timestamp":"x"}"#.to_owned(),
            400,
            "streamNumber",
        ),
        (
            body("1", &good, &ts).replace("getAgoraAccount", "getOther"),
            400,
            "method",
        ),
        (body("1", &good, "2019-06-01 12:00:00"), 400, "timestamp"),
        (body("1", &good, "20190231120000"), 400, "timestamp"),
        (format!("{{\"pad\":\"{}\"}}", "x".repeat(5000)), 413, "4096"),
    ];
    for (request, status, word) in cases {
        let reply = http(addr, "POST", "/AgoraAccount", &request);
        assert_eq!(reply.status, status, "{request:.80}: {reply:?}");
        let v: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON error body");
        let text = v["error"].as_str().expect("error text");
        assert!(text.contains(word), "{text:?} should name {word}");
    }

    let get = http(addr, "GET", "/AgoraAccount", "");
    assert_eq!(get.status, 405);
    assert_eq!(get.header("allow"), Some("POST"));
    let other = http(addr, "POST", "/Other", "{}");
    assert_eq!(other.status, 404);
}

#[test]
fn healthz_on_both_listeners() {
    let se = start();
    for listener in ["account", "api"] {
        let reply = http(se.addr(listener), "GET", "/healthz", "");
        assert_eq!(reply.status, 200, "{listener}");
        let v: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["node"], "test-01");
    }
}

#[test]
fn two_hundred_concurrent_requests() {
    let se = start();
    let addr = se.addr("account");
    let ts = shanghai(0);
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let appid = if i % 2 == 0 { APPID } else { APPID2 };
            let request = body(&i.to_string(), &token(appid, &ts), &ts);
            std::thread::spawn(move || http(addr, "POST", "/AgoraAccount", &request))
        })
        .collect();
    for (i, t) in threads.into_iter().enumerate() {
        let reply = t.join().unwrap();
        assert_eq!(
            reply.body,
            format!(
                r#"{{"method":"getAgoraAccount","streamNumber":"{i}","resCode":"0","account":"sipserver"}}"#
            )
        );
    }
    // Log lines are written out in batches a few milliseconds apart.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut log = se.stderr();
    while log.matches("account request").count() < 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        log = se.stderr();
    }
    assert_eq!(
        log.matches("account request").count(),
        200,
        "one log line per request"
    );
    assert!(
        log.contains("stream_number=\"199\""),
        "stream number logged"
    );
}
