//! How the API shows what the store holds (SPEC §5, §11): CDRs as JSON and CSV rows, the
//! statistics, a call's log, alarms. Pure: the zone is an argument, nothing here does I/O.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;
use serde_json::{Value, json};
use sipedge_store::live::{LiveCall, LiveState};
use sipedge_store::query::{Counters, StatsResult};
use sipedge_store::{Alarm, CallStatus, CallType, Cdr, Disposition, EndedBy, LogEntry, LogKind};
use sipedge_store::{Direction, Source, Transport, UnixMs};

fn at(t: UnixMs, zone: Tz) -> DateTime<Tz> {
    zone.timestamp_millis_opt(t.0)
        .single()
        .unwrap_or_else(|| DateTime::<Utc>::default().with_timezone(&zone))
}

/// RFC 3339 with milliseconds and the zone's offset at that instant.
pub fn rfc3339(t: UnixMs, zone: Tz) -> String {
    at(t, zone).to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// `YYYY-MM-DD hh:mm:ss` in the zone, as the CSV shows times.
pub fn local(t: UnixMs, zone: Tz) -> String {
    at(t, zone).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// A CDR as the JSON API shows it: the §5 names in §5's order, zoned times, seconds. Each
/// field is the [`Cdr`] field of the same name (SPEC §5 says why each exists); times are
/// RFC 3339 in the node's zone.
#[derive(Debug, Serialize)]
pub struct CdrView<'a> {
    id: String,
    node: &'a str,
    call_id: &'a str,
    caller: &'a str,
    called: &'a str,
    caller_uri: &'a str,
    called_uri: &'a str,
    call_type: CallType,
    video_started_at: Option<String>,
    status: CallStatus,
    disposition: Disposition,
    sip_code: Option<u16>,
    ended_by: EndedBy,
    start_time: String,
    ring_time: Option<String>,
    answer_time: Option<String>,
    end_time: String,
    duration_s: f64,
    talk_s: f64,
    transport: Transport,
    terminal: &'a str,
    source: Source,
}

impl<'a> CdrView<'a> {
    pub fn new(cdr: &'a Cdr, zone: Tz) -> Self {
        let time = |t: UnixMs| rfc3339(t, zone);
        CdrView {
            id: cdr.id.to_string(),
            node: &cdr.node,
            call_id: &cdr.call_id,
            caller: &cdr.caller,
            called: &cdr.called,
            caller_uri: &cdr.caller_uri,
            called_uri: &cdr.called_uri,
            call_type: cdr.call_type,
            video_started_at: cdr.video_started_at.map(time),
            status: cdr.status,
            disposition: cdr.disposition,
            sip_code: cdr.sip_code,
            ended_by: cdr.ended_by,
            start_time: time(cdr.start_time),
            ring_time: cdr.ring_time.map(time),
            answer_time: cdr.answer_time.map(time),
            end_time: time(cdr.end_time),
            duration_s: cdr.duration_s(),
            talk_s: cdr.talk_s(),
            transport: cdr.transport,
            terminal: &cdr.terminal,
            source: cdr.source,
        }
    }
}

/// The CSV header: the same names, in the same order, as [`CdrView`].
pub const CSV_HEADER: &str = "id,node,call_id,caller,called,caller_uri,called_uri,call_type,\
video_started_at,status,disposition,sip_code,ended_by,start_time,ring_time,answer_time,\
end_time,duration_s,talk_s,transport,terminal,source\r\n";

fn csv_field(out: &mut String, text: &str) {
    let formula = looks_like_formula(text);
    if formula || text.contains([',', '"', '\r', '\n']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

/// Whether a spreadsheet would run `text` as a formula (CSV injection, OWASP): the numbers
/// and URIs come from SIP headers a terminal writes, and operators open exports in Excel.
/// Such a cell is written with a leading `'`, which spreadsheets show as text; a number
/// like `+8613800000000` or `-1` is left as it is.
fn looks_like_formula(text: &str) -> bool {
    match text.as_bytes().first() {
        Some(b'=' | b'@' | b'\t' | b'\r') => true,
        Some(b'+' | b'-') => !text
            .bytes()
            .skip(1)
            .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'.' | b'-' | b'(' | b')')),
        _ => false,
    }
}

/// The serde name of a unit variant, for the few non-CSV places that need it as text.
fn name<T: Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

// The CSV writer's own names, without a serde round trip per field; the test
// `csv_names_agree_with_json` keeps them equal to the serde ones.
pub fn call_type_str(t: CallType) -> &'static str {
    match t {
        CallType::Audio => "audio",
        CallType::Video => "video",
    }
}

pub fn status_str(s: CallStatus) -> &'static str {
    match s {
        CallStatus::Connected => "connected",
        CallStatus::NotConnected => "not_connected",
    }
}

pub fn disposition_str(d: Disposition) -> &'static str {
    match d {
        Disposition::Answered => "answered",
        Disposition::Busy => "busy",
        Disposition::Declined => "declined",
        Disposition::NoAnswer => "no_answer",
        Disposition::Cancelled => "cancelled",
        Disposition::Failed => "failed",
        Disposition::Timeout => "timeout",
    }
}

pub fn ended_by_str(e: EndedBy) -> &'static str {
    match e {
        EndedBy::Caller => "caller",
        EndedBy::Callee => "callee",
        EndedBy::Sipedge => "sipedge",
    }
}

pub fn transport_str(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

pub fn source_str(s: Source) -> &'static str {
    match s {
        Source::Proxy => "proxy",
        Source::Pcap => "pcap",
        Source::Hep => "hep",
    }
}

/// Appends one CDR as a CSV row (RFC 4180: CRLF, quotes doubled) with local times.
pub fn csv_row(out: &mut String, cdr: &Cdr, zone: Tz) {
    let texts: [&str; 6] = [
        &cdr.node,
        &cdr.call_id,
        &cdr.caller,
        &cdr.called,
        &cdr.caller_uri,
        &cdr.called_uri,
    ];
    let _ = write!(out, "{}", cdr.id);
    for text in texts {
        out.push(',');
        csv_field(out, text);
    }
    let _ = write!(out, ",{},", call_type_str(cdr.call_type));
    csv_time(out, cdr.video_started_at, zone);
    let _ = write!(
        out,
        ",{},{},",
        status_str(cdr.status),
        disposition_str(cdr.disposition)
    );
    if let Some(code) = cdr.sip_code {
        let _ = write!(out, "{code}");
    }
    let _ = write!(out, ",{},", ended_by_str(cdr.ended_by));
    for t in [
        Some(cdr.start_time),
        cdr.ring_time,
        cdr.answer_time,
        Some(cdr.end_time),
    ] {
        csv_time(out, t, zone);
        out.push(',');
    }
    let _ = write!(
        out,
        "{},{},{},",
        cdr.duration_s(),
        cdr.talk_s(),
        transport_str(cdr.transport)
    );
    csv_field(out, &cdr.terminal);
    let _ = write!(out, ",{}\r\n", source_str(cdr.source));
}

/// [`local`] written in place: the export writes four times per row, and chrono's
/// `format` parses its pattern on every call.
fn csv_time(out: &mut String, t: Option<UnixMs>, zone: Tz) {
    use chrono::{Datelike, Timelike};
    if let Some(t) = t {
        let at = at(t, zone);
        let _ = write!(
            out,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            at.year(),
            at.month(),
            at.day(),
            at.hour(),
            at.minute(),
            at.second()
        );
    }
}

fn counters(c: &Counters) -> Value {
    let talk_s = seconds(c.talk_ms);
    let rate = if c.calls == 0 {
        0.0
    } else {
        c.connected as f64 / c.calls as f64
    };
    let avg = if c.connected == 0 {
        0.0
    } else {
        // Whole milliseconds, as every stored time.
        (c.talk_ms as f64 / c.connected as f64).round() / 1000.0
    };
    json!({
        "calls": c.calls,
        "connected": c.connected,
        "connect_rate": (rate * 10_000.0).round() / 10_000.0,
        "talk_s": talk_s,
        "avg_talk_s": avg,
    })
}

/// The `/api/stats` answer of SPEC §11.
pub fn stats(start: UnixMs, end: UnixMs, bucket: &str, result: &StatsResult, zone: Tz) -> Value {
    let buckets: Vec<Value> = result
        .buckets
        .iter()
        .map(|b| {
            json!({
                "start": rfc3339(b.start, zone),
                "audio": counters(&b.counts.audio),
                "video": counters(&b.counts.video),
            })
        })
        .collect();
    json!({
        "start": rfc3339(start, zone),
        "end": rfc3339(end, zone),
        "bucket": bucket,
        "totals": {
            "audio": counters(&result.totals.audio),
            "video": counters(&result.totals.video),
            "all": counters(&result.totals.all()),
        },
        "buckets": buckets,
    })
}

/// One entry of a call's log: a SIP message (its text as UTF-8, lossy, plus `text_base64`
/// with the exact bytes when they are not UTF-8) or one of sipedge's events.
pub fn log_entry(entry: &LogEntry, zone: Tz) -> Value {
    let at = rfc3339(entry.at, zone);
    match &entry.kind {
        LogKind::Sip {
            direction,
            transport,
            src,
            dst,
            text,
        } => {
            let mut v = json!({
                "at": at,
                "type": "sip",
                "direction": match direction {
                    Direction::Received => "received",
                    Direction::Sent => "sent",
                },
                "transport": transport_str(*transport),
                "src": src.to_string(),
                "dst": dst.to_string(),
                "text": String::from_utf8_lossy(text),
            });
            if std::str::from_utf8(text).is_err() {
                v["text_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(text));
            }
            v
        }
        LogKind::Event { text } => json!({ "at": at, "type": "event", "text": text }),
    }
}

/// An alarm in the shape of SPEC §11.
pub fn alarm(a: &Alarm, zone: Tz) -> Value {
    json!({
        "id": a.id.to_string(),
        "node": a.node,
        "kind": a.kind.as_str(),
        "target": a.target,
        "severity": name(a.severity),
        "message": a.message,
        "raised_at": rfc3339(a.raised_at, zone),
        "cleared_at": a.cleared_at.map(|t| rfc3339(t, zone)),
    })
}

/// A call in progress, as `/api/calls/live` and the `call.*` events show it. A struct rather
/// than a `Value`: every call event is rendered for the SSE replay ring, and building a map
/// per event was a measurable part of a call's CPU (issue 4).
#[derive(Debug, Serialize)]
pub struct LiveCallView<'a> {
    id: String,
    node: &'a str,
    call_id: &'a str,
    caller: &'a str,
    called: &'a str,
    caller_uri: &'a str,
    called_uri: &'a str,
    call_type: &'static str,
    state: &'static str,
    start_time: String,
    ring_time: Option<String>,
    answer_time: Option<String>,
    video_started_at: Option<String>,
    transport: &'static str,
    terminal: &'a str,
}

/// `call` with its times in `zone`.
pub fn live_call(call: &LiveCall, zone: Tz) -> LiveCallView<'_> {
    let time = |t: Option<UnixMs>| t.map(|t| rfc3339(t, zone));
    LiveCallView {
        id: call.id.to_string(),
        node: &call.node,
        call_id: &call.call_id,
        caller: &call.caller,
        called: &call.called,
        caller_uri: &call.caller_uri,
        called_uri: &call.called_uri,
        call_type: call_type_str(call.call_type),
        state: match call.state {
            LiveState::Trying => "trying",
            LiveState::Ringing => "ringing",
            LiveState::Connected => "connected",
            LiveState::Ended => "ended",
        },
        start_time: rfc3339(call.start_time, zone),
        ring_time: time(call.ring_time),
        answer_time: time(call.answer_time),
        video_started_at: time(call.video_started_at),
        transport: transport_str(call.transport),
        terminal: &call.terminal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipedge_store::CdrId;

    fn zone() -> Tz {
        chrono_tz::Asia::Shanghai
    }

    fn cdr() -> Cdr {
        let start = UnixMs(1_795_000_000_123);
        Cdr {
            id: CdrId::new(start, "sh-01", "c1"),
            node: "sh-01".into(),
            call_id: "c1".into(),
            caller: "1380".into(),
            called: "95566".into(),
            caller_uri: "sip:1380@bank.example;user=phone".into(),
            called_uri: "\"Agent, \"\"A\"\"\" <sip:95566@bank.example>".into(),
            call_type: CallType::Video,
            video_started_at: Some(UnixMs(start.0 + 3_000)),
            status: CallStatus::Connected,
            disposition: Disposition::Answered,
            sip_code: Some(200),
            ended_by: EndedBy::Caller,
            start_time: start,
            ring_time: Some(UnixMs(start.0 + 1_000)),
            answer_time: Some(UnixMs(start.0 + 2_500)),
            end_time: UnixMs(start.0 + 62_500),
            transport: Transport::Tcp,
            terminal: "203.0.113.9:40000".into(),
            source: Source::Proxy,
        }
    }

    fn check(got: &str, expected: &str) {
        assert_eq!(got, expected);
    }

    #[test]
    fn times_table() {
        let t = UnixMs(1_795_000_000_123);
        check(&rfc3339(t, zone()), "2026-11-18T19:06:40.123+08:00");
        check(&local(t, zone()), "2026-11-18 19:06:40");
        check(
            &rfc3339(t, chrono_tz::America::New_York),
            "2026-11-18T06:06:40.123-05:00",
        );
        check(&rfc3339(t, chrono_tz::UTC), "2026-11-18T11:06:40.123+00:00");
    }

    #[test]
    fn cdr_json_has_the_spec_names_in_order() {
        let cdr = cdr();
        let text = serde_json::to_string(&CdrView::new(&cdr, zone())).unwrap();
        let keys: Vec<String> = CSV_HEADER
            .trim_end()
            .split(',')
            .map(str::to_owned)
            .collect();
        let mut last = 0;
        for key in &keys {
            let pos = text
                .find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("{key}"));
            assert!(pos >= last, "{key} out of order in {text}");
            last = pos;
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["duration_s"], json!(62.5));
        assert_eq!(v["talk_s"], json!(60.0));
        assert_eq!(v["start_time"], json!("2026-11-18T19:06:40.123+08:00"));
        assert_eq!(v["call_type"], json!("video"));
        assert_eq!(v["ended_by"], json!("caller"));
        assert_eq!(v["transport"], json!("tcp"));
    }

    #[test]
    fn csv_fields_that_a_spreadsheet_would_run_are_text() {
        let check_field = |text: &str, expected: &str| {
            let mut out = String::new();
            csv_field(&mut out, text);
            assert_eq!(out, expected, "{text:?}");
        };
        check_field("1380", "1380");
        check_field("+8613800000000", "+8613800000000");
        check_field("-1", "-1");
        check_field("+86 (21) 555-0100", "+86 (21) 555-0100");
        check_field("sip:1380@bank.example", "sip:1380@bank.example");
        check_field(
            "=HYPERLINK(\"http://x\")",
            "\"'=HYPERLINK(\"\"http://x\"\")\"",
        );
        check_field("@SUM(A1)", "\"'@SUM(A1)\"");
        check_field("+cmd|' /C calc'!A0", "\"'+cmd|' /C calc'!A0\"");
        check_field("-2+3", "\"'-2+3\"");
        check_field("\t=1", "\"'\t=1\"");
        check_field("", "");
    }

    #[test]
    fn csv_rows_quote_what_needs_it() {
        let cdr = cdr();
        let mut row = String::new();
        csv_row(&mut row, &cdr, zone());
        check(
            &row,
            &format!(
                "{},sh-01,c1,1380,95566,sip:1380@bank.example;user=phone,\
                 \"\"\"Agent, \"\"\"\"A\"\"\"\"\"\" <sip:95566@bank.example>\",video,\
                 2026-11-18 19:06:43,connected,answered,200,caller,2026-11-18 19:06:40,\
                 2026-11-18 19:06:41,2026-11-18 19:06:42,2026-11-18 19:07:42,62.5,60,tcp,\
                 203.0.113.9:40000,proxy\r\n",
                cdr.id
            ),
        );
        let mut other = cdr.clone();
        other.caller = "a\nb".into();
        other.ring_time = None;
        other.sip_code = None;
        let mut row = String::new();
        csv_row(&mut row, &other, zone());
        assert!(row.contains(",\"a\nb\","), "{row}");
        assert!(row.contains(",caller,2026-11-18 19:06:40,,2026"), "{row}");
        assert!(row.contains(",answered,,caller,"), "{row}");
    }

    #[test]
    fn csv_times_agree_with_local() {
        for ms in [0, 1_795_000_000_123, -86_400_001, 4_102_444_799_999] {
            let mut out = String::new();
            csv_time(&mut out, Some(UnixMs(ms)), zone());
            assert_eq!(out, local(UnixMs(ms), zone()), "{ms}");
        }
        let mut out = String::new();
        csv_time(&mut out, None, zone());
        assert_eq!(out, "");
    }

    #[test]
    fn csv_names_agree_with_json() {
        for t in [CallType::Audio, CallType::Video] {
            assert_eq!(call_type_str(t), name(t));
        }
        for s in [CallStatus::Connected, CallStatus::NotConnected] {
            assert_eq!(status_str(s), name(s));
        }
        for d in [
            Disposition::Answered,
            Disposition::Busy,
            Disposition::Declined,
            Disposition::NoAnswer,
            Disposition::Cancelled,
            Disposition::Failed,
            Disposition::Timeout,
        ] {
            assert_eq!(disposition_str(d), name(d));
        }
        for e in [EndedBy::Caller, EndedBy::Callee, EndedBy::Sipedge] {
            assert_eq!(ended_by_str(e), name(e));
        }
        for t in [Transport::Udp, Transport::Tcp] {
            assert_eq!(transport_str(t), name(t));
        }
        for s in [Source::Proxy, Source::Pcap, Source::Hep] {
            assert_eq!(source_str(s), name(s));
        }
    }

    #[test]
    fn log_text_that_is_not_utf8_is_also_given_in_base64() {
        let sip = |text: &[u8]| LogEntry {
            at: UnixMs(0),
            kind: LogKind::Sip {
                direction: Direction::Received,
                transport: Transport::Udp,
                src: "192.0.2.1:5060".parse().unwrap(),
                dst: "192.0.2.2:14500".parse().unwrap(),
                text: text.to_vec().into(),
            },
        };
        let plain = log_entry(&sip(b"OPTIONS sip:a SIP/2.0\r\n\r\n"), zone());
        assert_eq!(plain["text"], json!("OPTIONS sip:a SIP/2.0\r\n\r\n"));
        assert_eq!(plain["direction"], json!("received"));
        assert!(plain.get("text_base64").is_none());
        let binary = log_entry(&sip(b"INVITE \xff\r\n"), zone());
        assert_eq!(binary["text"], json!("INVITE \u{fffd}\r\n"));
        assert_eq!(binary["text_base64"], json!("SU5WSVRFIP8NCg=="));
        let event = log_entry(
            &LogEntry {
                at: UnixMs(0),
                kind: LogKind::Event {
                    text: "483 sent".into(),
                },
            },
            zone(),
        );
        assert_eq!(
            event,
            json!({"at": "1970-01-01T08:00:00.000+08:00", "type": "event", "text": "483 sent"})
        );
    }

    #[test]
    fn live_calls_show_zoned_times_and_their_state() {
        let cdr = cdr();
        let mut call = LiveCall::from(&cdr);
        call.state = LiveState::Connected;
        call.ring_time = None;
        let v = serde_json::to_value(live_call(&call, zone())).unwrap();
        assert_eq!(v["state"], json!("connected"));
        assert_eq!(v["start_time"], json!("2026-11-18T19:06:40.123+08:00"));
        assert_eq!(v["ring_time"], Value::Null);
        assert_eq!(v["call_type"], json!("video"));
        assert_eq!(v["id"], json!(cdr.id.to_string()));
    }

    #[test]
    fn counters_table() {
        let c = |calls, connected, talk_ms| {
            counters(&Counters {
                calls,
                connected,
                talk_ms,
            })
        };
        assert_eq!(
            c(0, 0, 0),
            json!({"calls":0,"connected":0,"connect_rate":0.0,"talk_s":0.0,"avg_talk_s":0.0})
        );
        assert_eq!(
            c(3, 2, 3_001),
            json!({"calls":3,"connected":2,"connect_rate":0.6667,"talk_s":3.001,"avg_talk_s":1.501})
        );
    }
}
