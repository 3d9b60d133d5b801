//! Call records end to end (SPEC §5): SIPp calls of every outcome through a real
//! `sipedge serve`, over UDP and TCP, and the CDRs it stored, read back through the API and
//! checked field by field, with each call's log.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;
use support::Sipedge;
use support::cdrs::{self, ms};
use support::config::{Config, Sip};
use support::http::get_json;
use support::msglog;
use support::sipp::{Pair, PairOutcome, Transport};

/// Calls per case and transport: enough to see duplicates, few enough to stay quick.
const CALLS: u32 = 3;
/// How long CDRs may take to appear: tracking, the writer's batch, a margin for a busy box.
const CDR_WAIT: Duration = Duration::from_secs(10);
/// Ms of slack between times taken by different processes and rounded to the millisecond.
const SLACK_MS: i64 = 2;

/// What a case's CDRs must say.
#[derive(Debug, Clone, Copy)]
struct Expect {
    /// Scenario pair in `tests/sipp/`.
    case: &'static str,
    /// `-d` of both sides: talk or ringing time.
    pause_ms: u32,
    video: bool,
    connected: bool,
    disposition: &'static str,
    sip_code: Option<u64>,
    ended_by: &'static str,
    /// Whether an 18x came before the final answer.
    rings: bool,
    /// Request or response start lines (prefixes) the log must hold, in this order.
    log: &'static [&'static str],
}

const CASES: &[Expect] = &[
    Expect {
        case: "call",
        pause_ms: 200,
        video: false,
        connected: true,
        disposition: "answered",
        sip_code: Some(200),
        ended_by: "caller",
        rings: true,
        log: &[
            "INVITE",
            "SIP/2.0 180",
            "SIP/2.0 200",
            "ACK",
            "BYE",
            "SIP/2.0 200",
        ],
    },
    Expect {
        case: "callee_bye",
        pause_ms: 200,
        video: false,
        connected: true,
        disposition: "answered",
        sip_code: Some(200),
        ended_by: "callee",
        rings: true,
        log: &[
            "INVITE",
            "SIP/2.0 180",
            "SIP/2.0 200",
            "ACK",
            "BYE",
            "SIP/2.0 200",
        ],
    },
    Expect {
        case: "video",
        pause_ms: 200,
        video: true,
        connected: true,
        disposition: "answered",
        sip_code: Some(200),
        ended_by: "caller",
        rings: true,
        log: &[
            "INVITE",
            "SIP/2.0 180",
            "SIP/2.0 200",
            "ACK",
            "BYE",
            "SIP/2.0 200",
        ],
    },
    Expect {
        case: "reinvite",
        pause_ms: 200,
        video: true,
        connected: true,
        disposition: "answered",
        sip_code: Some(200),
        ended_by: "caller",
        rings: true,
        log: &[
            "INVITE",
            "SIP/2.0 200",
            "ACK",
            "INVITE",
            "SIP/2.0 200",
            "ACK",
            "BYE",
            "SIP/2.0 200",
        ],
    },
    Expect {
        case: "busy",
        pause_ms: 0,
        video: false,
        connected: false,
        disposition: "busy",
        sip_code: Some(486),
        ended_by: "callee",
        rings: true,
        log: &["INVITE", "SIP/2.0 180", "SIP/2.0 486", "ACK"],
    },
    Expect {
        case: "declined",
        pause_ms: 0,
        video: false,
        connected: false,
        disposition: "declined",
        sip_code: Some(603),
        ended_by: "callee",
        rings: true,
        log: &["INVITE", "SIP/2.0 180", "SIP/2.0 603", "ACK"],
    },
    Expect {
        case: "noanswer_480",
        pause_ms: 300,
        video: false,
        connected: false,
        disposition: "no_answer",
        sip_code: Some(480),
        ended_by: "callee",
        rings: true,
        log: &["INVITE", "SIP/2.0 180", "SIP/2.0 480", "ACK"],
    },
    Expect {
        case: "noanswer_cancel",
        pause_ms: 300,
        video: false,
        connected: false,
        disposition: "cancelled",
        sip_code: Some(487),
        ended_by: "caller",
        rings: true,
        log: &["INVITE", "SIP/2.0 180", "CANCEL", "SIP/2.0 487", "ACK"],
    },
    Expect {
        case: "cancel",
        pause_ms: 0,
        video: false,
        connected: false,
        disposition: "cancelled",
        sip_code: Some(487),
        ended_by: "caller",
        rings: false,
        log: &["INVITE", "CANCEL", "SIP/2.0 487", "ACK"],
    },
    Expect {
        case: "auth",
        pause_ms: 0,
        video: false,
        connected: true,
        disposition: "answered",
        sip_code: Some(200),
        ended_by: "caller",
        rings: false,
        log: &[
            "INVITE",
            "SIP/2.0 401",
            "ACK",
            "INVITE",
            "SIP/2.0 200",
            "ACK",
            "BYE",
            "SIP/2.0 200",
        ],
    },
];

/// The Call-IDs of the calls a terminal placed, from its message log.
fn call_ids(outcome: &PairOutcome) -> Vec<String> {
    let mut seen = HashSet::new();
    msglog::parse(&outcome.uac.messages)
        .into_iter()
        .filter(|m| m.sent && m.method() == Some("INVITE"))
        .map(|m| m.call_id)
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

/// Runs one case through `proxy` and checks its CDRs and logs.
fn check_case(proxy: &Sipedge, expect: &Expect, transport: Transport) {
    let what = format!("{} over {transport:?}", expect.case);
    let outcome = Pair::new(expect.case, transport, CALLS)
        .pause_ms(expect.pause_ms)
        .run(proxy.sip().addr(), proxy.sip().upstream_addr());
    outcome.assert_passed();
    let ids = call_ids(&outcome);
    assert_eq!(
        ids.len(),
        CALLS as usize,
        "{what}: Call-IDs in the UAC's log"
    );
    let api = proxy.addr("api");
    cdrs::wait_for(api, &ids, CDR_WAIT);
    // Late duplicates (a retransmission, a second close) would come within this.
    std::thread::sleep(Duration::from_millis(500));
    let listed = cdrs::by_call_id(&cdrs::all(api));
    for call_id in &ids {
        let found = listed.get(call_id).cloned().unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{what}: call {call_id} must have exactly one CDR, has {found:#?}\n{}",
            proxy.report()
        );
        let cdr = &found[0];
        check_cdr(cdr, expect, transport, &format!("{what}, call {call_id}"));
        let id = cdr["id"].as_str().expect("id is a string");
        let (status, one) = get_json(api, &format!("/api/cdrs/{id}"));
        assert_eq!(status, 200, "{what}: /api/cdrs/{id}: {one}");
        assert_eq!(&one, cdr, "{what}: /api/cdrs/{id} differs from the listing");
        check_log(api, id, call_id, expect, &what);
    }
}

fn check_cdr(cdr: &Value, expect: &Expect, transport: Transport, what: &str) {
    let text = |f: &str| {
        cdr[f]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {f} missing: {cdr:#}"))
    };
    let fail = |problem: &str| -> ! { panic!("{what}: {problem}\n{cdr:#}") };
    assert_eq!(text("node"), "test", "{what}: node");
    assert_eq!(text("caller"), "8001", "{what}: caller");
    assert_eq!(text("called"), "95566", "{what}: called");
    assert!(
        text("caller_uri").starts_with("sip:8001@127.0.0.1:"),
        "{what}: caller_uri {cdr:#}"
    );
    assert!(
        text("called_uri").starts_with("sip:95566@127.0.0.1:"),
        "{what}: called_uri {cdr:#}"
    );
    let kind = if expect.video { "video" } else { "audio" };
    assert_eq!(text("call_type"), kind, "{what}: call_type");
    let status = if expect.connected {
        "connected"
    } else {
        "not_connected"
    };
    assert_eq!(text("status"), status, "{what}: status");
    assert_eq!(
        text("disposition"),
        expect.disposition,
        "{what}: disposition"
    );
    assert_eq!(
        cdr["sip_code"].as_u64(),
        expect.sip_code,
        "{what}: sip_code"
    );
    assert_eq!(text("ended_by"), expect.ended_by, "{what}: ended_by");
    let proto = match transport {
        Transport::Udp => "udp",
        Transport::Tcp | Transport::TcpPerCall => "tcp",
    };
    assert_eq!(text("transport"), proto, "{what}: transport");
    let terminal: std::net::SocketAddr = text("terminal")
        .parse()
        .unwrap_or_else(|_| fail("terminal is not ip:port"));
    assert_eq!(
        terminal.ip(),
        support::ports::TERMINAL_IP,
        "{what}: terminal"
    );

    let start = ms(cdr, "start_time").unwrap_or_else(|| fail("no start_time"));
    let end = ms(cdr, "end_time").unwrap_or_else(|| fail("no end_time"));
    let ring = ms(cdr, "ring_time");
    let answer = ms(cdr, "answer_time");
    let video_at = ms(cdr, "video_started_at");
    assert_eq!(ring.is_some(), expect.rings, "{what}: ring_time presence");
    assert_eq!(
        answer.is_some(),
        expect.connected,
        "{what}: answer_time presence"
    );
    assert_eq!(
        video_at.is_some(),
        expect.video,
        "{what}: video_started_at set iff video"
    );
    let mut order = vec![("start_time", start)];
    order.extend(ring.map(|t| ("ring_time", t)));
    order.extend(answer.map(|t| ("answer_time", t)));
    order.push(("end_time", end));
    for pair in order.windows(2) {
        if pair[0].1 > pair[1].1 {
            fail(&format!("{} after {}", pair[0].0, pair[1].0));
        }
    }
    if let (Some(v), Some(a)) = (video_at, answer) {
        assert!(
            a <= v && v <= end,
            "{what}: video_started_at outside [answer, end]: {cdr:#}"
        );
        if expect.case == "reinvite" {
            assert!(
                v > a,
                "{what}: video came with a re-INVITE, after the answer: {cdr:#}"
            );
        }
    }
    if expect.connected && expect.pause_ms > 0 {
        assert!(
            end - answer.unwrap_or(end) >= i64::from(expect.pause_ms) - SLACK_MS,
            "{what}: talked less than the scenario's pause: {cdr:#}"
        );
    }
    let duration = cdr["duration_s"]
        .as_f64()
        .unwrap_or_else(|| fail("no duration_s"));
    let talk = cdr["talk_s"].as_f64().unwrap_or_else(|| fail("no talk_s"));
    let seconds = |ms: i64| ms as f64 / 1000.0;
    assert!(
        (duration - seconds(end - start)).abs() < 0.0015,
        "{what}: duration_s is not end - start: {cdr:#}"
    );
    let expected_talk = answer.map_or(0.0, |a| seconds(end - a));
    assert!(
        (talk - expected_talk).abs() < 0.0015,
        "{what}: talk_s is not end - answer (or 0): {cdr:#}"
    );
    assert!(talk <= duration, "{what}: talk_s > duration_s");
}

/// The call's log holds its SIP messages in order: the expected start lines appear as a
/// subsequence, times never go back, and every message is of this call.
fn check_log(api: std::net::SocketAddr, id: &str, call_id: &str, expect: &Expect, what: &str) {
    let (status, log) = get_json(api, &format!("/api/cdrs/{id}/log"));
    assert_eq!(status, 200, "{what}: /api/cdrs/{id}/log: {log}");
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    let mut last_at = i64::MIN;
    let mut firsts = Vec::new();
    for entry in &entries {
        let at = ms(entry, "at").unwrap_or_else(|| panic!("{what}: log entry without at"));
        assert!(at >= last_at, "{what}: log times go back: {log:#}");
        last_at = at;
        if entry["type"] != "sip" {
            continue;
        }
        let text = entry["text"].as_str().unwrap_or_default();
        assert!(
            text.lines()
                .any(|l| l.trim_end() == format!("Call-ID: {call_id}")),
            "{what}: a message of another call in the log: {text}"
        );
        firsts.push(text.lines().next().unwrap_or_default().to_owned());
    }
    let mut wanted = expect.log.iter().peekable();
    for first in &firsts {
        if wanted.peek().is_some_and(|w| first.starts_with(*w)) {
            wanted.next();
        }
    }
    assert!(
        wanted.peek().is_none(),
        "{what}: the log lacks {:?} in order; received messages: {firsts:#?}",
        wanted.collect::<Vec<_>>()
    );
}

/// Every case, one sipedge per transport.
fn every_outcome(transport: Transport) {
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    for expect in CASES {
        check_case(&proxy, expect, transport);
    }
}

#[test]
fn every_outcome_over_udp() {
    every_outcome(Transport::Udp);
}

#[test]
fn every_outcome_over_tcp() {
    every_outcome(Transport::Tcp);
}

#[test]
fn answered_calls_on_sled() {
    let proxy = Sipedge::start(
        &Config::new("test")
            .sip(Sip::one_port())
            .set("store", "engine", "\"sled\""),
    );
    for transport in [Transport::Udp, Transport::Tcp] {
        check_case(&proxy, &CASES[0], transport);
        check_case(&proxy, &CASES[1], transport);
    }
}

#[test]
fn cdrs_survive_a_restart() {
    // A clean stop flushes; the CDRs are there, unchanged, after the restart.
    let mut proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    check_case(&proxy, &CASES[0], Transport::Udp);
    let before = cdrs::all(proxy.addr("api"));
    let status = proxy.stop();
    assert!(
        status.success(),
        "sipedge stopped with {status:?}\n{}",
        proxy.report()
    );
    proxy.restart();
    assert_eq!(
        cdrs::all(proxy.addr("api")),
        before,
        "CDRs changed across a restart"
    );
}
