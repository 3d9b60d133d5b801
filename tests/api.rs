//! Black-box tests of the CDR interface on `api.listen` (SPEC §6, §10, §11): the real binary
//! on a store seeded with generated calls; every expected answer is computed from the same
//! generated list with the store's own definition of a match.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Duration as Span, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use sipedge_store::{
    Alarm, AlarmId, AlarmKind, CallStatus, CallType, Cdr, CdrFilter, Direction, LogEntry, LogKind,
    NumberMatch, Severity, Transport, UnixMs,
};
use support::config::{Config, Sip};
use support::events::{Event, Events};
use support::http::{Reply, get_with};
use support::seed::{self, Seed};
use support::sipp::{Pair, Transport as SippTransport};
use support::{Sipedge, http, wait_until};

const ZONE: Tz = chrono_tz::Asia::Shanghai;

fn config() -> Config {
    Config::new("api-01").set("node", "timezone", "\"Asia/Shanghai\"")
}

fn ms(t: DateTime<Utc>) -> UnixMs {
    UnixMs(t.timestamp_millis())
}

/// 00:00 today in Shanghai.
fn today() -> DateTime<Utc> {
    let date = Utc::now().with_timezone(&ZONE).date_naive();
    ZONE.from_local_datetime(&date.and_time(NaiveTime::MIN))
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// 1200 calls from two days before today to two days after, in Shanghai.
fn calls() -> Vec<Cdr> {
    let from = today() - Span::days(2);
    seed::cdrs("api-01", ms(from), 4 * 86_400_000, 1200, 7)
}

fn start(cdrs: &[Cdr]) -> Sipedge {
    Sipedge::start_seeded(
        &config(),
        &Seed {
            cdrs: cdrs.to_vec(),
            ..Seed::default()
        },
    )
}

fn get(se: &Sipedge, path: &str) -> Reply {
    http(se.addr("api"), "GET", path, "")
}

/// Query-string escaping of what the tests send.
fn enc(text: &str) -> String {
    text.replace('%', "%25")
        .replace(' ', "%20")
        .replace('+', "%2B")
        .replace('&', "%26")
}

/// Local `YYYYMMDDhhmmss` of a time.
fn compact(t: DateTime<Utc>) -> String {
    t.with_timezone(&ZONE).format("%Y%m%d%H%M%S").to_string()
}

/// Every item of a query, following `next_cursor`; checks each page's size and that no id
/// comes twice.
fn all_pages(se: &Sipedge, query: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    for _ in 0..10_000 {
        let mut path = format!("/api/cdrs?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let reply = get(se, &path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let page = reply.json();
        let page_items = page["items"].as_array().unwrap().clone();
        assert!(page_items.len() <= limit);
        for item in &page_items {
            assert!(
                seen.insert(item["id"].as_str().unwrap().to_owned()),
                "{item} twice"
            );
        }
        items.extend(page_items);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
    panic!("paging did not end");
}

/// The ids the store's own definition of a match selects, newest first.
fn expected_ids(cdrs: &[Cdr], filter: &CdrFilter) -> Vec<String> {
    let mut matching: Vec<&Cdr> = cdrs.iter().filter(|c| filter.matches(c)).collect();
    matching.sort_by_key(|c| std::cmp::Reverse(c.id));
    matching.iter().map(|c| c.id.to_string()).collect()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn each_filter_alone_and_combined_pages_every_record_once() {
    let cdrs = calls();
    let se = start(&cdrs);
    let from = today() - Span::days(2);
    let to = today() + Span::days(2);
    let range = format!("start={}&end={}", compact(from), compact(to));
    let base = CdrFilter::between(ms(from), ms(to));
    let exact_caller = cdrs[17].caller.clone();
    let cases: Vec<(String, CdrFilter)> = vec![
        (range.clone(), base.clone()),
        (
            format!("{range}&type=video"),
            CdrFilter {
                call_type: Some(CallType::Video),
                ..base.clone()
            },
        ),
        (
            format!("{range}&type=voice"),
            CdrFilter {
                call_type: Some(CallType::Audio),
                ..base.clone()
            },
        ),
        (
            format!("{range}&status=connected"),
            CdrFilter {
                status: Some(CallStatus::Connected),
                ..base.clone()
            },
        ),
        (
            format!("{range}&status=not_connected"),
            CdrFilter {
                status: Some(CallStatus::NotConnected),
                ..base.clone()
            },
        ),
        (
            format!("{range}&caller=1391*"),
            CdrFilter {
                caller: Some(NumberMatch::Prefix("1391".into())),
                ..base.clone()
            },
        ),
        (
            format!("{range}&caller={exact_caller}"),
            CdrFilter {
                caller: Some(NumberMatch::Exact(exact_caller.clone())),
                ..base.clone()
            },
        ),
        (
            format!("{range}&called=95588"),
            CdrFilter {
                called: Some(NumberMatch::Exact("95588".into())),
                ..base.clone()
            },
        ),
        (
            format!("{range}&type=audio&status=connected&caller=1380*&called=95566"),
            CdrFilter {
                call_type: Some(CallType::Audio),
                status: Some(CallStatus::Connected),
                caller: Some(NumberMatch::Prefix("1380".into())),
                called: Some(NumberMatch::Exact("95566".into())),
                ..base.clone()
            },
        ),
        (
            format!("{range}&type=video&called=400800"),
            CdrFilter {
                call_type: Some(CallType::Video),
                called: Some(NumberMatch::Exact("400800".into())),
                ..base.clone()
            },
        ),
        (
            format!("{range}&caller=0000*"),
            CdrFilter {
                caller: Some(NumberMatch::Prefix("0000".into())),
                ..base.clone()
            },
        ),
    ];
    for (query, filter) in cases {
        let want = expected_ids(&cdrs, &filter);
        for limit in [1000, 37] {
            let got = ids(&all_pages(&se, &query, limit));
            assert_eq!(got, want, "{query} limit {limit}");
        }
    }
    // Selective filters really select.
    let video = expected_ids(
        &cdrs,
        &CdrFilter {
            call_type: Some(CallType::Video),
            ..base.clone()
        },
    );
    assert!(video.len() > 100 && video.len() < cdrs.len() - 100);
}

#[test]
fn defaults_are_today_in_the_node_zone_and_limit_defaults_to_100() {
    let cdrs = calls();
    let se = start(&cdrs);
    let want = expected_ids(
        &cdrs,
        &CdrFilter::between(ms(today()), ms(today() + Span::days(1))),
    );
    assert!(want.len() > 100, "{} calls today", want.len());
    let first = get(&se, "/api/cdrs").json();
    assert_eq!(first["items"].as_array().unwrap().len(), 100);
    assert!(first["next_cursor"].is_string());
    assert_eq!(ids(&all_pages(&se, "", 100)), want);
    let stats = get(&se, "/api/stats").json();
    assert_eq!(stats["totals"]["all"]["calls"], want.len());
    assert_eq!(stats["bucket"], "hour");
    assert_eq!(
        stats["start"].as_str().unwrap(),
        today()
            .with_timezone(&ZONE)
            .format("%Y-%m-%dT00:00:00.000+08:00")
            .to_string()
    );
}

#[test]
fn the_three_time_formats_select_the_same_calls() {
    let cdrs = calls();
    let se = start(&cdrs);
    let from = today() - Span::hours(30);
    let to = today() + Span::minutes(90);
    let want = expected_ids(&cdrs, &CdrFilter::between(ms(from), ms(to)));
    let local = |t: DateTime<Utc>| {
        t.with_timezone(&ZONE)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    let rfc = |t: DateTime<Utc>| t.with_timezone(&ZONE).to_rfc3339();
    let utc = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    for (start, end) in [
        (compact(from), compact(to)),
        (local(from), local(to)),
        (rfc(from), rfc(to)),
        (utc(from), utc(to)),
        (compact(from), rfc(to)),
    ] {
        let query = format!("start={}&end={}", enc(&start), enc(&end));
        assert_eq!(ids(&all_pages(&se, &query, 1000)), want, "{query}");
    }
}

fn counters(v: &Value) -> (u64, u64, f64) {
    (
        v["calls"].as_u64().unwrap(),
        v["connected"].as_u64().unwrap(),
        v["talk_s"].as_f64().unwrap(),
    )
}

fn check_stats_against(cdrs: &[Cdr], filter: &CdrFilter, stats: &Value) {
    // Totals from the records.
    for (name, ty) in [
        ("audio", Some(CallType::Audio)),
        ("video", Some(CallType::Video)),
        ("all", None),
    ] {
        let matching: Vec<&Cdr> = cdrs
            .iter()
            .filter(|c| filter.matches(c) && ty.is_none_or(|t| c.call_type == t))
            .collect();
        let connected = matching
            .iter()
            .filter(|c| c.status == CallStatus::Connected)
            .count() as u64;
        let talk_ms: i64 = matching
            .iter()
            .map(|c| (c.talk_s() * 1000.0).round() as i64)
            .sum();
        let t = &stats["totals"][name];
        let (calls, conn, talk_s) = counters(t);
        assert_eq!((calls, conn), (matching.len() as u64, connected), "{name}");
        assert_eq!((talk_s * 1000.0).round() as i64, talk_ms, "{name}");
        let rate = t["connect_rate"].as_f64().unwrap();
        if calls > 0 {
            assert!((rate - conn as f64 / calls as f64).abs() < 1e-4, "{t}");
        }
        if conn > 0 {
            let avg = t["avg_talk_s"].as_f64().unwrap();
            assert!((avg - talk_s / conn as f64).abs() < 1e-3, "{t}");
        }
    }
    // Buckets add up to the totals.
    for name in ["audio", "video"] {
        let mut sum = (0u64, 0u64, 0i64);
        for bucket in stats["buckets"].as_array().unwrap() {
            let (calls, conn, talk_s) = counters(&bucket[name]);
            sum.0 += calls;
            sum.1 += conn;
            sum.2 += (talk_s * 1000.0).round() as i64;
        }
        let (calls, conn, talk_s) = counters(&stats["totals"][name]);
        assert_eq!(
            sum,
            (calls, conn, (talk_s * 1000.0).round() as i64),
            "{name}"
        );
    }
}

#[test]
fn stats_have_hourly_buckets_up_to_exactly_one_day_and_add_up() {
    let cdrs = calls();
    let se = start(&cdrs);
    let from = today() - Span::days(1);
    let one_day = format!(
        "start={}&end={}",
        compact(from),
        compact(from + Span::days(1))
    );
    let stats = get(&se, &format!("/api/stats?{one_day}")).json();
    assert_eq!(stats["bucket"], "hour", "{stats}");
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 24);
    assert_eq!(
        stats["buckets"][1]["start"].as_str().unwrap(),
        from.with_timezone(&ZONE)
            .format("%Y-%m-%dT01:00:00.000+08:00")
            .to_string()
    );
    check_stats_against(
        &cdrs,
        &CdrFilter::between(ms(from), ms(from + Span::days(1))),
        &stats,
    );

    let over = from + Span::days(1) + Span::seconds(1);
    let stats = get(
        &se,
        &format!("/api/stats?start={}&end={}", compact(from), compact(over)),
    )
    .json();
    assert_eq!(stats["bucket"], "day", "{stats}");
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 2);

    let from = today() - Span::days(2);
    let to = today() + Span::days(2);
    let filtered = format!(
        "start={}&end={}&caller=1500*&status=connected",
        compact(from),
        compact(to)
    );
    let stats = get(&se, &format!("/api/stats?{filtered}")).json();
    assert_eq!(stats["bucket"], "day");
    assert_eq!(stats["buckets"].as_array().unwrap().len(), 4);
    check_stats_against(
        &cdrs,
        &CdrFilter {
            caller: Some(NumberMatch::Prefix("1500".into())),
            status: Some(CallStatus::Connected),
            ..CdrFilter::between(ms(from), ms(to))
        },
        &stats,
    );
    let all = get(
        &se,
        &format!("/api/stats?start={}&end={}", compact(from), compact(to)),
    )
    .json();
    check_stats_against(&cdrs, &CdrFilter::between(ms(from), ms(to)), &all);
    assert_eq!(all["totals"]["all"]["calls"], cdrs.len());

    let svg = get(&se, &format!("/api/stats.svg?{filtered}"));
    assert_eq!(svg.status, 200);
    assert_eq!(
        svg.header("content-type"),
        Some("image/svg+xml; charset=utf-8")
    );
    assert!(svg.body.starts_with("<svg ") && svg.body.ends_with("</svg>"));
    assert_eq!(svg.body.matches("<rect x=").count(), 4 * 2 + 2);
    assert!(svg.body.contains(">video</text>"));
    let zh = get(&se, &format!("/api/stats.svg?{filtered}&lang=zh"));
    assert_eq!(zh.status, 200);
    assert!(zh.body.contains(">视频</text>"), "{}", zh.body);
}

/// Fields of one RFC 4180 line (the generated data has no line breaks inside fields).
fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

#[test]
fn the_csv_export_equals_the_json_pages() {
    let cdrs = calls();
    let se = start(&cdrs);
    let from = today() - Span::days(2);
    let to = today() + Span::days(2);
    for query in [
        format!("start={}&end={}", compact(from), compact(to)),
        format!(
            "start={}&end={}&type=video&caller=1862*",
            compact(from),
            compact(to)
        ),
    ] {
        let items = all_pages(&se, &query, 100);
        let reply = get(&se, &format!("/api/cdrs.csv?{query}"));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("text/csv; charset=utf-8")
        );
        let disposition = reply.header("content-disposition").unwrap();
        assert!(
            disposition.starts_with("attachment; filename=\"cdrs-api-01-"),
            "{disposition}"
        );
        let mut lines = reply.body.split("\r\n");
        let header = csv_fields(lines.next().unwrap());
        assert_eq!(
            header,
            [
                "id",
                "node",
                "call_id",
                "caller",
                "called",
                "caller_uri",
                "called_uri",
                "call_type",
                "video_started_at",
                "status",
                "disposition",
                "sip_code",
                "ended_by",
                "start_time",
                "ring_time",
                "answer_time",
                "end_time",
                "duration_s",
                "talk_s",
                "transport",
                "terminal",
                "source"
            ]
        );
        let rows: Vec<Vec<String>> = lines.filter(|l| !l.is_empty()).map(csv_fields).collect();
        assert_eq!(rows.len(), items.len(), "{query}");
        for (row, item) in rows.iter().zip(&items) {
            for (i, name) in header.iter().enumerate() {
                let cell = &row[i];
                let value = &item[name.as_str()];
                let want = match value {
                    Value::Null => String::new(),
                    Value::String(s) if name.ends_with("_time") || name.ends_with("_at") => {
                        DateTime::parse_from_rfc3339(s)
                            .unwrap()
                            .with_timezone(&ZONE)
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    }
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let same_number = matches!(
                    (cell.parse::<f64>(), want.parse::<f64>()),
                    (Ok(a), Ok(b)) if a == b
                );
                assert!(*cell == want || same_number, "{name}: {cell:?} vs {want:?}");
            }
        }
    }
}

#[test]
fn one_cdr_its_log_and_unknown_ids() {
    let cdrs = calls();
    let target = cdrs[42].clone();
    let log = vec![
        (
            target.id,
            LogEntry {
                at: target.start_time,
                kind: LogKind::Sip {
                    direction: Direction::Received,
                    transport: Transport::Udp,
                    src: "198.51.100.7:40000".parse().unwrap(),
                    dst: "127.0.0.1:14500".parse().unwrap(),
                    text: Bytes::from_static(b"INVITE sip:95566@bank.example SIP/2.0\r\n\r\n"),
                },
            },
        ),
        (
            target.id,
            LogEntry {
                at: UnixMs(target.start_time.0 + 1),
                kind: LogKind::Sip {
                    direction: Direction::Sent,
                    transport: Transport::Udp,
                    src: "127.0.0.1:14500".parse().unwrap(),
                    dst: "10.0.0.5:14500".parse().unwrap(),
                    text: Bytes::from_static(b"INVITE \xfe\xff\r\n"),
                },
            },
        ),
        (
            target.id,
            LogEntry {
                at: UnixMs(target.start_time.0 + 2),
                kind: LogKind::Event {
                    text: "upstream unreachable".into(),
                },
            },
        ),
    ];
    let se = Sipedge::start_seeded(
        &config(),
        &Seed {
            cdrs: cdrs.clone(),
            logs: log,
            ..Seed::default()
        },
    );
    let reply = get(&se, &format!("/api/cdrs/{}", target.id));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let cdr = reply.json();
    assert_eq!(cdr["id"], target.id.to_string());
    assert_eq!(cdr["caller"], target.caller);
    assert_eq!(cdr["duration_s"].as_f64().unwrap(), target.duration_s());
    assert_eq!(cdr["talk_s"].as_f64().unwrap(), target.talk_s());
    let start = DateTime::parse_from_rfc3339(cdr["start_time"].as_str().unwrap()).unwrap();
    assert_eq!(start.offset().local_minus_utc(), 8 * 3600);
    assert_eq!(start.timestamp_millis(), target.start_time.0);

    let log = get(&se, &format!("/api/cdrs/{}/log", target.id)).json();
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log}");
    assert_eq!(entries[0]["type"], "sip");
    assert_eq!(entries[0]["direction"], "received");
    assert_eq!(entries[0]["src"], "198.51.100.7:40000");
    assert_eq!(
        entries[0]["text"],
        "INVITE sip:95566@bank.example SIP/2.0\r\n\r\n"
    );
    assert_eq!(entries[1]["direction"], "sent");
    assert_eq!(entries[1]["text_base64"], "SU5WSVRFIP7/DQo=");
    assert_eq!(entries[2]["type"], "event");
    assert_eq!(entries[2]["text"], "upstream unreachable");

    // A CDR whose log has expired still answers, with no entries.
    let other = get(&se, &format!("/api/cdrs/{}/log", cdrs[1].id)).json();
    assert_eq!(other["entries"], Value::Array(vec![]));

    let unknown = "0".repeat(32);
    for path in [
        format!("/api/cdrs/{unknown}"),
        format!("/api/cdrs/{unknown}/log"),
    ] {
        let reply = get(&se, &path);
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.json()["error"].is_string());
    }
    let bad = get(&se, "/api/cdrs/not-an-id");
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"].as_str().unwrap().contains("id"));
    assert_eq!(get(&se, "/api/nothing").status, 404);
}

#[test]
fn bad_parameters_get_a_400_naming_them() {
    let cdrs = calls();
    let se = start(&cdrs);
    let cases = [
        ("/api/cdrs?start=yesterday", "start"),
        ("/api/cdrs?start=20260231000000", "start"),
        ("/api/cdrs?end=2026-13-01%2000:00:00", "end"),
        ("/api/cdrs?start=20261128000000&end=20261127000000", "end"),
        ("/api/cdrs?type=fax", "type"),
        ("/api/cdrs?status=up", "status"),
        ("/api/cdrs?caller=12*3", "caller"),
        ("/api/cdrs?called=1%202", "called"),
        ("/api/cdrs?limit=0", "limit"),
        ("/api/cdrs?limit=1001", "limit"),
        ("/api/cdrs?limit=many", "limit"),
        ("/api/cdrs?cursor=abc", "cursor"),
        ("/api/cdrs?colour=red", "colour"),
        ("/api/cdrs?type=audio&type=video", "type"),
        ("/api/cdrs.csv?start=tomorrow", "start"),
        ("/api/cdrs.csv?limit=5", "limit"),
        ("/api/stats?end=x", "end"),
        ("/api/stats?cursor=x", "cursor"),
        ("/api/stats.svg?type=fax", "type"),
        ("/api/stats.svg?lang=fr", "lang"),
        ("/api/stats?lang=zh", "lang"),
        ("/api/alarms?active=maybe", "active"),
        ("/api/alarms?start=never", "start"),
    ];
    for (path, name) in cases {
        let reply = get(&se, path);
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        let error = reply.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(name), "{path}: {error:?} should name {name}");
    }
    let events = get_with(se.addr("api"), "/api/events", &[("Last-Event-ID", "x1")]);
    assert_eq!(events.status, 400);
    assert!(events.body.contains("Last-Event-ID"), "{}", events.body);
}

#[test]
fn a_tampered_or_foreign_cursor_is_refused() {
    let cdrs = calls();
    let se = start(&cdrs);
    let page = get(&se, "/api/cdrs?limit=5").json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(
        get(&se, &format!("/api/cdrs?limit=5&cursor={cursor}")).status,
        200
    );
    let (id, mac) = cursor.split_once('.').unwrap();
    let mut forged_id: Vec<char> = id.chars().collect();
    forged_id[31] = if forged_id[31] == '0' { '1' } else { '0' };
    let forged_id: String = forged_id.into_iter().collect();
    for bad in [
        format!("{forged_id}.{mac}"),
        format!("{id}.{}", "0".repeat(32)),
        id.to_owned(),
        format!("{id}.{}", &mac[..10]),
    ] {
        let reply = get(&se, &format!("/api/cdrs?limit=5&cursor={bad}"));
        assert_eq!(reply.status, 400, "{bad}");
        assert!(reply.json()["error"].as_str().unwrap().contains("cursor"));
    }
    // The cursor of one query is no good for another.
    let other = get(
        &se,
        &format!("/api/cdrs?limit=5&type=video&cursor={cursor}"),
    );
    assert_eq!(other.status, 400);
}

#[test]
fn other_methods_get_405() {
    let se = start(&[]);
    for (method, path) in [
        ("POST", "/api/cdrs"),
        ("DELETE", "/api/cdrs/00000000000000000000000000000000"),
        ("PUT", "/api/stats"),
        ("POST", "/healthz"),
    ] {
        let reply = http(se.addr("api"), method, path, "{}");
        assert_eq!(reply.status, 405, "{method} {path}");
        assert_eq!(reply.header("allow"), Some("GET, HEAD"));
        assert!(reply.json()["error"].is_string());
    }
}

/// An alarm of another node in the store: a node's start closes the active alarms it left
/// itself (whatever still holds is raised again), which would leave no active one to list.
fn alarm(kind: AlarmKind, target: &str, raised: DateTime<Utc>, cleared: bool) -> Alarm {
    Alarm {
        id: AlarmId::new(ms(raised), "api-02", kind, target),
        node: "api-02".into(),
        kind,
        target: target.into(),
        severity: Severity::Major,
        message: format!("{target} needs attention"),
        raised_at: ms(raised),
        cleared_at: cleared.then(|| ms(raised + Span::minutes(5))),
    }
}

#[test]
fn alarms_newest_first_with_active_and_time_filters() {
    let now = Utc::now();
    let alarms = vec![
        alarm(
            AlarmKind::ProcessMissing,
            "sipserver",
            now - Span::hours(30),
            true,
        ),
        alarm(
            AlarmKind::DiskLow,
            "/var/lib/sipedge",
            now - Span::hours(2),
            false,
        ),
        alarm(
            AlarmKind::UpstreamDown,
            "10.0.0.5:14500",
            now - Span::hours(1),
            true,
        ),
    ];
    let se = Sipedge::start_seeded(
        &config(),
        &Seed {
            alarms: alarms.clone(),
            ..Seed::default()
        },
    );
    let kinds = |path: &str| -> Vec<String> {
        let reply = get(&se, path);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        reply.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        kinds("/api/alarms"),
        ["upstream_down", "disk_low", "process_missing"]
    );
    assert_eq!(kinds("/api/alarms?active=true"), ["disk_low"]);
    assert_eq!(
        kinds(&format!(
            "/api/alarms?start={}",
            compact(now - Span::hours(24))
        )),
        ["upstream_down", "disk_low"]
    );
    assert_eq!(kinds("/api/alarms?limit=1"), ["upstream_down"]);
    let one = &get(&se, "/api/alarms?active=true").json()["items"][0];
    let keys: HashSet<&str> = one
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from([
            "id",
            "node",
            "kind",
            "target",
            "severity",
            "message",
            "raised_at",
            "cleared_at"
        ])
    );
    assert_eq!(one["cleared_at"], Value::Null);
    assert_eq!(one["id"], alarms[1].id.to_string());

    let metrics = get(&se, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .lines()
            .any(|l| l == "sipedge_alarms_active{kind=\"disk_low\"} 1"),
        "{}",
        metrics.body
    );
}

#[test]
fn metrics_count_account_requests_and_stored_cdrs() {
    let se = start(&[]);
    let reply = http(se.addr("account"), "POST", "/AgoraAccount", "not json");
    assert_eq!(reply.status, 400);
    let metrics = get(&se, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
    );
    for line in [
        "sipedge_account_requests_total{outcome=\"bad_request\"} 1",
        "sipedge_cdrs_written_total 0",
    ] {
        assert!(
            metrics.body.lines().any(|l| l == line),
            "{line} in\n{}",
            metrics.body
        );
    }
    assert!(
        metrics
            .body
            .contains("# TYPE sipedge_store_write_seconds gauge")
    );
}

#[test]
fn live_calls_and_the_event_stream_answer() {
    let se = start(&[]);
    let live = get(&se, "/api/calls/live").json();
    assert_eq!(live["items"], Value::Array(vec![]));

    let mut stream = TcpStream::connect(se.addr("api")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut text = String::new();
    while !text.contains(": sipedge events") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert!(text.contains("retry: 2000"), "{text}");
}

const PASSWORD: &str = "correct horse battery staple";

fn hash_password(password: &str) -> String {
    let mut child = Command::new(support::sipedge::binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    hash
}

fn basic(user_password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(user_password)
    )
}

#[test]
fn users_need_the_right_password_but_healthz_stays_open() {
    let hash = hash_password(PASSWORD);
    let se = Sipedge::start_seeded(
        &config().append(&format!(
            "[[api.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n"
        )),
        &Seed::default(),
    );
    let addr = se.addr("api");
    let none = get_with(addr, "/api/cdrs", &[]);
    assert_eq!(none.status, 401);
    assert_eq!(
        none.header("www-authenticate"),
        Some("Basic realm=\"sipedge\", charset=\"UTF-8\"")
    );
    for wrong in ["ops:wrong", "root:correct horse battery staple", "ops"] {
        let reply = get_with(addr, "/api/cdrs", &[("Authorization", &basic(wrong))]);
        assert_eq!(reply.status, 401, "{wrong}");
    }
    let right = basic(&format!("ops:{PASSWORD}"));
    for path in ["/api/cdrs", "/api/stats", "/metrics"] {
        let reply = get_with(addr, path, &[("Authorization", &right)]);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    assert_eq!(get_with(addr, "/healthz", &[]).status, 200);
}

#[test]
fn clients_outside_allow_get_403_even_for_healthz() {
    let se = Sipedge::start_seeded(
        &config().set("api", "allow", "[\"10.9.0.0/16\"]"),
        &Seed::default(),
    );
    for path in ["/api/cdrs", "/healthz", "/metrics", "/nothing"] {
        let reply = get(&se, path);
        assert_eq!(reply.status, 403, "{path}");
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .contains("api.allow")
        );
    }
}

#[test]
fn a_bad_password_hash_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = config()
        .append("[[api.users]]\nname = \"ops\"\npassword_hash = \"plain\"\n")
        .write(dir.path());
    let out = support::sipedge::run(["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("api.users[0].password_hash"), "{err}");
}

#[test]
fn a_cursor_stays_valid_across_a_restart() {
    let mut se = start(&calls());
    let page = get(&se, "/api/cdrs?limit=10").json();
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let want = get(&se, &format!("/api/cdrs?limit=10&cursor={cursor}")).json();
    assert_eq!(se.stop().code(), Some(0));

    se.restart();
    let reply = get(&se, &format!("/api/cdrs?limit=10&cursor={cursor}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        ids(reply.json()["items"].as_array().unwrap()),
        ids(want["items"].as_array().unwrap())
    );
}

#[test]
fn metrics_show_the_relays_counters() {
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    let api = proxy.addr("api");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .send_to(b"this is not SIP\r\n\r\n", proxy.sip().addr())
        .unwrap();
    let options = format!(
        "OPTIONS sip:95566@127.0.0.2 SIP/2.0\r\nVia: SIP/2.0/UDP {0};branch=z9hG4bKm1\r\n\
         From: <sip:1380@t.example>;tag=1\r\nTo: <sip:95566@127.0.0.2>\r\nCall-ID: m1\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 0\r\nContent-Length: 0\r\n\r\n",
        socket.local_addr().unwrap()
    );
    socket
        .send_to(options.as_bytes(), proxy.sip().addr())
        .unwrap();
    let mut text = String::new();
    let counted = wait_until(Duration::from_secs(10), || {
        text = http(api, "GET", "/metrics", "").body;
        text.lines()
            .any(|l| l == "sipedge_sip_parse_errors_total 1")
            && text
                .lines()
                .any(|l| l.starts_with("sipedge_sip_messages_total{method=\"OPTIONS\""))
    });
    assert!(counted, "{text}");
}

fn wait_for(events: &Events, ended: usize) -> Vec<Event> {
    let done = wait_until(Duration::from_secs(20), || {
        events.data("call.ended").len() >= ended
    });
    let got = events.all();
    assert!(done, "{ended} call.ended expected in {got:#?}");
    got
}

#[test]
fn sipp_calls_make_events_in_order_and_cdrs_with_logs() {
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    let api = proxy.addr("api");
    let events = Events::open(api, None);
    let (target, upstream) = (proxy.sip().addr(), proxy.sip().upstream_addr());
    let calls = std::thread::spawn(move || {
        Pair::new("call", SippTransport::Udp, 3)
            .rate(10)
            .pause_ms(1500)
            .run(target, upstream)
            .assert_passed();
    });
    // While the calls talk, they are live.
    let mut live = Value::Null;
    let seen_live = wait_until(Duration::from_secs(10), || {
        live = http(api, "GET", "/api/calls/live", "").json();
        live["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "connected")
    });
    assert!(seen_live, "{live}");
    let mut metrics = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        metrics = http(api, "GET", "/metrics", "").body;
        metrics.lines().any(|l| {
            l.strip_prefix("sipedge_calls_active ")
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
        })
    });
    assert!(counted, "{metrics}");
    let call = &live["items"][0];
    assert_eq!(call["caller"], "8001");
    assert!(
        call["start_time"].as_str().unwrap().ends_with("+08:00"),
        "{call}"
    );
    calls.join().unwrap();
    let got = wait_for(&events, 3);

    // Per call, in order: started, maybe ringing, answered, ended; each once.
    let mut per_call: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for e in &got {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        per_call
            .entry(data["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e.name.clone());
    }
    assert_eq!(per_call.len(), 3, "{got:#?}");
    for (id, names) in &per_call {
        let without_ringing: Vec<&str> = names
            .iter()
            .map(String::as_str)
            .filter(|n| *n != "call.ringing")
            .collect();
        assert_eq!(
            without_ringing,
            ["call.started", "call.answered", "call.ended"],
            "{id}: {names:?}"
        );
        assert!(names.iter().filter(|n| *n == "call.ringing").count() <= 1);
    }
    let ids: Vec<u64> = got
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    let ended: Value = serde_json::from_str(&got.last().unwrap().data).unwrap();
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["caller"], "8001");

    // A client that saw only the first event gets exactly the rest.
    let again = Events::open(api, got[0].id.as_deref());
    let replay = wait_for(&again, 3);
    let replay_ids: Vec<&str> = replay.iter().filter_map(|e| e.id.as_deref()).collect();
    let want: Vec<&str> = got[1..].iter().filter_map(|e| e.id.as_deref()).collect();
    assert_eq!(replay_ids, want);

    // The CDRs and their logs.
    let mut items = Vec::new();
    let stored = wait_until(Duration::from_secs(10), || {
        items = http(api, "GET", "/api/cdrs", "").json()["items"]
            .as_array()
            .unwrap()
            .clone();
        items.len() == 3
    });
    assert!(stored, "{items:#?}");
    for cdr in &items {
        assert!(per_call.contains_key(cdr["id"].as_str().unwrap()), "{cdr}");
        assert_eq!(cdr["status"], "connected");
        assert_eq!(cdr["disposition"], "answered");
        assert_eq!(cdr["call_type"], "audio");
        assert_eq!(cdr["caller"], "8001");
        assert!(cdr["talk_s"].as_f64().unwrap() >= 1.4, "{cdr}");
        let log = http(
            api,
            "GET",
            &format!("/api/cdrs/{}/log", cdr["id"].as_str().unwrap()),
            "",
        )
        .json();
        let texts: Vec<&str> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "sip")
            .map(|e| e["text"].as_str().unwrap())
            .collect();
        assert!(
            texts.first().is_some_and(|t| t.starts_with("INVITE ")),
            "{log}"
        );
        assert!(texts.iter().any(|t| t.starts_with("BYE ")), "{log}");
    }
    let stats = http(api, "GET", "/api/stats", "").json();
    assert_eq!(stats["totals"]["audio"]["calls"], 3);
    assert_eq!(stats["totals"]["audio"]["connected"], 3);
    assert_eq!(
        http(api, "GET", "/api/calls/live", "").json()["items"],
        Value::Array(vec![])
    );
}

#[test]
fn paging_returns_every_record_once_while_calls_arrive() {
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    let api = proxy.addr("api");
    let (target, upstream) = (proxy.sip().addr(), proxy.sip().upstream_addr());
    Pair::new("call", SippTransport::Udp, 20)
        .rate(50)
        .run(target, upstream)
        .assert_passed();
    let mut before = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        before = ids(http(api, "GET", "/api/cdrs?limit=1000", "").json()["items"]
            .as_array()
            .unwrap());
        before.len() == 20
    }));
    let more = std::thread::spawn(move || {
        Pair::new("call", SippTransport::Udp, 30)
            .rate(10)
            .run(target, upstream)
            .assert_passed();
    });
    // Start paging once the new calls are being stored, and page slowly while more are.
    assert!(wait_until(Duration::from_secs(20), || {
        http(api, "GET", "/api/cdrs?limit=1000", "").json()["items"]
            .as_array()
            .unwrap()
            .len()
            > 21
    }));
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/cdrs?limit=3&cursor={c}"),
            None => "/api/cdrs?limit=3".to_owned(),
        };
        let page = http(api, "GET", &path, "").json();
        seen.extend(ids(page["items"].as_array().unwrap()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let total_after_paging = http(api, "GET", "/api/cdrs?limit=1000", "").json()["items"]
        .as_array()
        .unwrap()
        .len();
    more.join().unwrap();
    assert!(
        total_after_paging < 50 && total_after_paging > seen.len(),
        "calls arrived during paging: {total_after_paging} stored, {} seen",
        seen.len()
    );
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no record twice: {seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    for id in &before {
        assert!(unique.contains(id), "{id} missed");
    }
}
