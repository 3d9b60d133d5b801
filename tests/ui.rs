//! The web front end in a real browser (SPEC §6): Debian's Chromium driven by playwright-core
//! (`tests/e2e/`, run with `node --test`) against the real binary.
//!
//! - `the_front_end_in_a_browser`: a store seeded with three days of calls, a logged call and
//!   alarms; the browser tests compare what the pages show with what the API answers, and
//!   check the language switch, keyboard use and access control (a second node with
//!   `api.users`).
//! - `a_sipp_call_is_on_live_calls_while_it_is_up`: a SIPp video call through sipedge, seen
//!   appearing on Live calls, with its log while it is up, and leaving when it ends.
//!
//! Screenshots of each page at 1366×768 (and a wall display) go to `target/ui-screenshots/`.
//! Needs node, /usr/bin/chromium, `npm ci` in tests/e2e and sipp (tests/setup.sh installs
//! them); fails, saying which is missing, when one is.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{Duration as Span, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use sipedge_store::{
    Alarm, AlarmId, AlarmKind, CallStatus, CallType, Cdr, CdrId, Direction, LogEntry, LogKind,
    Severity, Transport, UnixMs,
};
use support::Sipedge;
use support::config::{Config, Sip};
use support::seed::{self, Seed};
use support::sipp::{Pair, Transport as SippTransport};

const ZONE: Tz = chrono_tz::Asia::Shanghai;
const CHROMIUM: &str = "/usr/bin/chromium";
const NODE: &str = "ui-01";
/// The Sipserver of the seeded logs, as sipedge sees it.
const UPSTREAM: &str = "10.0.0.5:5060";
/// sipedge's own SIP address in the seeded logs.
const EDGE: &str = "127.0.0.1:14500";

fn config() -> Config {
    Config::new(NODE)
        .set("node", "timezone", "\"Asia/Shanghai\"")
        .set("monitor", "interval", "\"1s\"")
        .set("monitor", "probe_timeout", "\"500ms\"")
        .append("[[monitor.process]]\nname = \"sipedge\"\nmatch_name = \"sipedge\"\n")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser tests need; the message says how to get what is missing.
fn check_tools() {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            let major: u32 = version
                .trim()
                .trim_start_matches('v')
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            if major < 18 {
                missing.push(format!("node 18 or later (found {})", version.trim()));
            }
        }
        _ => missing.push("node (apt-get install nodejs npm)".to_owned()),
    }
    if !Path::new(CHROMIUM).exists() {
        missing.push(format!("{CHROMIUM} (apt-get install chromium)"));
    }
    if !repo()
        .join("tests/e2e/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core in tests/e2e (cd tests/e2e && npm ci)".to_owned());
    }
    assert!(
        missing.is_empty(),
        "the browser tests cannot run; missing: {}. tests/setup.sh installs all of them.",
        missing.join(", ")
    );
}

fn ms(t: chrono::DateTime<Utc>) -> UnixMs {
    UnixMs(t.timestamp_millis())
}

fn today() -> chrono::DateTime<Utc> {
    let date = Utc::now().with_timezone(&ZONE).date_naive();
    ZONE.from_local_datetime(&date.and_time(NaiveTime::MIN))
        .single()
        .unwrap()
        .with_timezone(&Utc)
}

/// One SIP message of a seeded call flow: its time, direction, ends, first line, CSeq, and
/// whether it carries an SDP body.
type Message<'a> = (i64, Direction, &'a str, &'a str, String, &'a str, bool);

fn sip(cdr: &Cdr, (at, direction, src, dst, first, cseq, sdp): Message<'_>) -> LogEntry {
    let body = if sdp {
        "v=0\r\no=- 1 1 IN IP4 198.51.100.2\r\ns=-\r\nc=IN IP4 198.51.100.2\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP 0\r\nm=video 40002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n"
    } else {
        ""
    };
    let text = format!(
        "{first}\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK-{at}\r\nFrom: <{from}>;tag=a1\r\n\
         To: <{to}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nContent-Length: {len}\r\n{ctype}\r\n{body}",
        from = cdr.caller_uri,
        to = cdr.called_uri,
        call_id = cdr.call_id,
        len = body.len(),
        ctype = if sdp {
            "Content-Type: application/sdp\r\n"
        } else {
            ""
        },
    );
    LogEntry {
        at: UnixMs(at),
        kind: LogKind::Sip {
            direction,
            transport: Transport::Udp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            text: text.into_bytes().into(),
        },
    }
}

fn event(at: i64, text: String) -> LogEntry {
    LogEntry {
        at: UnixMs(at),
        kind: LogKind::Event { text },
    }
}

/// A whole answered call as sipedge logs it: INVITE out and back, ringing, answer, ACK, BYE,
/// with two of sipedge's own events.
fn call_log(cdr: &Cdr) -> Vec<(CdrId, LogEntry)> {
    use Direction::{Received as In, Sent as Out};
    let term = cdr.terminal.as_str();
    let request = |method: &str| format!("{method} {} SIP/2.0", cdr.called_uri);
    let status = |line: &str| format!("SIP/2.0 {line}");
    let s = cdr.start_time.0;
    let ring = cdr.ring_time.unwrap().0;
    let answer = cdr.answer_time.unwrap().0;
    let end = cdr.end_time.0;
    let messages: Vec<Message<'_>> = vec![
        (s, In, term, EDGE, request("INVITE"), "1 INVITE", true),
        (
            s + 2,
            Out,
            EDGE,
            UPSTREAM,
            request("INVITE"),
            "1 INVITE",
            true,
        ),
        (
            ring,
            In,
            UPSTREAM,
            EDGE,
            status("180 Ringing"),
            "1 INVITE",
            false,
        ),
        (
            ring + 1,
            Out,
            EDGE,
            term,
            status("180 Ringing"),
            "1 INVITE",
            false,
        ),
        (
            answer,
            In,
            UPSTREAM,
            EDGE,
            status("200 OK"),
            "1 INVITE",
            true,
        ),
        (
            answer + 1,
            Out,
            EDGE,
            term,
            status("200 OK"),
            "1 INVITE",
            true,
        ),
        (answer + 40, In, term, EDGE, request("ACK"), "1 ACK", false),
        (
            answer + 41,
            Out,
            EDGE,
            UPSTREAM,
            request("ACK"),
            "1 ACK",
            false,
        ),
        (end, In, term, EDGE, request("BYE"), "2 BYE", false),
        (end + 1, Out, EDGE, UPSTREAM, request("BYE"), "2 BYE", false),
        (
            end + 30,
            In,
            UPSTREAM,
            EDGE,
            status("200 OK"),
            "2 BYE",
            false,
        ),
        (end + 31, Out, EDGE, term, status("200 OK"), "2 BYE", false),
    ];
    let mut entries: Vec<LogEntry> = messages.into_iter().map(|m| sip(cdr, m)).collect();
    entries.push(event(s + 1, format!("upstream {UPSTREAM} selected")));
    entries.push(event(
        end + 32,
        "call ended by the caller; record written".into(),
    ));
    entries.sort_by_key(|e| e.at);
    entries.into_iter().map(|e| (cdr.id, e)).collect()
}

fn alarm(kind: AlarmKind, target: &str, severity: Severity, ago_min: i64, cleared: bool) -> Alarm {
    let raised = Utc::now() - Span::minutes(ago_min);
    Alarm {
        id: AlarmId::new(ms(raised), NODE, kind, target),
        node: NODE.into(),
        kind,
        target: target.into(),
        severity,
        message: format!("{target}: {}", kind.as_str().replace('_', " ")),
        raised_at: ms(raised),
        cleared_at: cleared.then(|| ms(raised + Span::minutes(3))),
    }
}

/// Calls from two days before today to the end of today, a logged video call among them, and
/// a few alarms.
fn seed() -> (Seed, Cdr) {
    let from = today() - Span::days(2);
    let cdrs = seed::cdrs(NODE, ms(from), 3 * 86_400_000, 900, 11);
    let today_ms = ms(today()).0;
    let logged = cdrs
        .iter()
        .find(|c| {
            c.start_time.0 >= today_ms
                && c.status == CallStatus::Connected
                && c.call_type == CallType::Video
        })
        .unwrap()
        .clone();
    let alarms = vec![
        alarm(
            AlarmKind::UpstreamDown,
            UPSTREAM,
            Severity::Critical,
            4,
            false,
        ),
        alarm(
            AlarmKind::DiskLow,
            "/var/lib/sipedge",
            Severity::Minor,
            30,
            true,
        ),
        alarm(
            AlarmKind::ProcessMissing,
            "sipserver",
            Severity::Major,
            90,
            false,
        ),
        alarm(
            AlarmKind::ProcessRestarted,
            "mediaserver",
            Severity::Warning,
            300,
            true,
        ),
    ];
    let seed = Seed {
        logs: call_log(&logged),
        cdrs,
        alarms,
    };
    (seed, logged)
}

/// Runs the browser test `files` (under `tests/e2e/`) with `node --test` against `api`;
/// panics with node's whole output unless at least `min_passed` tests passed and none failed.
fn run_browser_tests(api: SocketAddr, files: &[&str], min_passed: u32, extra: &[(&str, String)]) {
    let shots = repo().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let mut command = Command::new("node");
    command
        .args(["--test", "--test-concurrency=1"])
        .args(files.iter().map(|f| format!("tests/e2e/{f}")))
        .current_dir(repo())
        .env("SIPEDGE_URL", format!("http://{api}"))
        .env("SIPEDGE_CHROMIUM", CHROMIUM)
        .env("SIPEDGE_SCREENSHOTS", &shots);
    for (name, value) in extra {
        command.env(name, value);
    }
    let out = command.output().expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "browser tests failed:\n{text}");
    // A run that found no test would also exit 0.
    let passed: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        passed >= min_passed,
        "only {passed} browser tests passed:\n{text}"
    );
}

#[test]
fn the_front_end_in_a_browser() {
    check_tools();
    let (seed, logged) = seed();
    let open = Sipedge::start_seeded(&config(), &seed);
    let password = "wall-display-7";
    let hash = sipedge_http::access::hash_password(password).unwrap();
    let guarded = Sipedge::start(&config().append(&format!(
        "[[api.users]]\nname = \"supervisor\"\npassword_hash = \"{hash}\"\n"
    )));
    run_browser_tests(
        open.addr("api"),
        &["ui.test.mjs", "i18n.test.mjs"],
        14,
        &[
            ("SIPEDGE_LOG_CDR", logged.id.to_string()),
            (
                "SIPEDGE_AUTH_URL",
                format!("http://{}", guarded.addr("api")),
            ),
            ("SIPEDGE_AUTH_USER", "supervisor".to_owned()),
            ("SIPEDGE_AUTH_PASSWORD", password.to_owned()),
        ],
    );
}

/// How long the SIPp call talks: long enough for the browser to see it and open its log.
const CALL_MS: u32 = 10_000;

#[test]
fn a_sipp_call_is_on_live_calls_while_it_is_up() {
    check_tools();
    support::require_tool("sipp", "-v", "sip-tester");
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));
    let api = proxy.addr("api");
    let (target, upstream) = (proxy.sip().addr(), proxy.sip().upstream_addr());
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // The call starts once the page is open and subscribed (the browser test writes `ready`).
    let waiting = ready.clone();
    let call = std::thread::spawn(move || {
        let opened = support::wait_until(std::time::Duration::from_secs(60), || waiting.exists());
        opened.then(|| {
            Pair::new("video", SippTransport::Udp, 1)
                .pause_ms(CALL_MS)
                .run(target, upstream)
        })
    });
    run_browser_tests(
        api,
        &["sipp.test.mjs"],
        1,
        &[
            ("SIPEDGE_READY_FILE", ready.display().to_string()),
            ("SIPEDGE_CALL_MS", CALL_MS.to_string()),
        ],
    );
    call.join()
        .unwrap()
        .expect("the browser test never said it was ready")
        .assert_passed();
}
