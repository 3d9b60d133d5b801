//! The task end to end with a real store: relayed SIP text in, CDRs, logs, snapshots and
//! live events out, and calls in progress carried over a restart.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use sipedge_store::{
    CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Engine, Source, Store, StoreConfig,
    Transport, UnixMs,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::*;
use crate::call::LiveState;

const NODE: &str = "sh-01";
const CALL_ID: &str = "task-a84b4c76e66710";
const TERMINAL: &str = "192.0.2.10:5060";
const UPSTREAM: &str = "127.0.0.2:14500";
const SIPEDGE: &str = "127.0.0.1:14500";
const FROM: &str = "<sip:8001@bank>;tag=t1";
const TO: &str = "<sip:95566@bank>";
const TO_TAGGED: &str = "<sip:95566@bank>;tag=u1";
const VIDEO_SDP: &str = "v=0\r\nm=audio 4000 RTP/AVP 0\r\nm=video 4002 RTP/AVP 96\r\n";

/// A SIP message of the test call.
fn sip(first: &str, from: &str, to: &str, cseq: &str, body: &str) -> Bytes {
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    Bytes::from(format!(
        "{first}\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-1\r\nFrom: {from}\r\n\
         To: {to}\r\nCall-ID: {CALL_ID}\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\n\
         {content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a test address")
}

/// The test's clock: real time, so that the task's own ticks do not close the calls.
struct Clock(SystemTime);

impl Clock {
    fn at(&self, s: f64) -> SystemTime {
        self.0 + Duration::from_millis((s * 1000.0) as u64)
    }

    fn ms(&self, s: f64) -> UnixMs {
        unix_ms(self.at(s))
    }

    fn relayed(&self, s: f64, direction: Direction, origin: Origin, bytes: Bytes) -> Relayed {
        let (src, dst) = match (origin, direction) {
            (Origin::Local, _) => (addr(SIPEDGE), addr(TERMINAL)),
            (Origin::Forwarded, Direction::ToUpstream) => (addr(TERMINAL), addr(UPSTREAM)),
            (Origin::Forwarded, Direction::ToTerminal) => (addr(UPSTREAM), addr(TERMINAL)),
        };
        Relayed {
            at: self.at(s),
            direction,
            origin,
            transport: flow::Transport::Udp,
            src,
            dst,
            source: Source::Proxy,
            // As the relay hands them over: what it forwarded with its summary, its own
            // replies without.
            summary: match origin {
                Origin::Forwarded => scan::scan(&bytes).ok().map(|m| scan::Summary::of(&m)),
                Origin::Local => None,
            },
            bytes,
            charge: Default::default(),
        }
    }
}

fn config() -> TrackingConfig {
    TrackingConfig::new(NODE, Duration::from_secs(4 * 3600))
}

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), Engine::Redb, StoreConfig::default()).expect("the store opens")
}

/// A running task, its input and its stop button.
struct Running {
    handle: CallTracking,
    task: JoinHandle<()>,
    tx: mpsc::Sender<Relayed>,
    stop: oneshot::Sender<()>,
}

fn start(store: &Store) -> Running {
    start_with(store, config())
}

fn start_with(store: &Store, cfg: TrackingConfig) -> Running {
    let (tx, rx) = mpsc::channel(64);
    let (stop, stopped) = oneshot::channel::<()>();
    let (handle, task) = spawn(cfg, store, rx, async move {
        let _ = stopped.await;
    })
    .expect("the task starts");
    Running {
        handle,
        task,
        tx,
        stop,
    }
}

impl Running {
    async fn feed(&self, messages: Vec<Relayed>) {
        for r in messages {
            self.tx.send(r).await.expect("the task is running");
        }
    }

    /// Stops the task after it has processed everything fed (shutdown drains the queue).
    async fn stop(self, store: &Store) -> CallTracking {
        let _ = self.stop.send(());
        self.task.await.expect("the task ends cleanly");
        store
            .flush(Duration::from_secs(10))
            .expect("the store flushes");
        self.handle
    }
}

fn expected_cdr(clock: &Clock, edit: impl FnOnce(&mut Cdr)) -> Cdr {
    let mut cdr = Cdr {
        id: CdrId::new(clock.ms(0.0), NODE, CALL_ID),
        node: NODE.into(),
        call_id: CALL_ID.into(),
        caller: "8001".into(),
        called: "95566".into(),
        caller_uri: "sip:8001@bank".into(),
        called_uri: "sip:95566@bank".into(),
        call_type: CallType::Video,
        video_started_at: Some(clock.ms(5.0)),
        status: CallStatus::Connected,
        disposition: Disposition::Answered,
        sip_code: Some(200),
        ended_by: EndedBy::Callee,
        start_time: clock.ms(0.0),
        ring_time: Some(clock.ms(1.0)),
        answer_time: Some(clock.ms(5.0)),
        end_time: clock.ms(65.0),
        transport: Transport::Udp,
        source: Source::Proxy,
        terminal: TERMINAL.into(),
    };
    edit(&mut cdr);
    cdr
}

/// INVITE with video, 180, 200 with video, ACK.
fn answered(clock: &Clock) -> Vec<Relayed> {
    use Direction::*;
    let f = Origin::Forwarded;
    vec![
        clock.relayed(
            0.0,
            ToUpstream,
            f,
            sip(
                "INVITE sip:95566@bank SIP/2.0",
                FROM,
                TO,
                "1 INVITE",
                VIDEO_SDP,
            ),
        ),
        clock.relayed(
            1.0,
            ToTerminal,
            f,
            sip("SIP/2.0 180 Ringing", FROM, TO_TAGGED, "1 INVITE", ""),
        ),
        clock.relayed(
            5.0,
            ToTerminal,
            f,
            sip("SIP/2.0 200 OK", FROM, TO_TAGGED, "1 INVITE", VIDEO_SDP),
        ),
        clock.relayed(
            5.1,
            ToUpstream,
            f,
            sip("ACK sip:95566@bank SIP/2.0", FROM, TO_TAGGED, "1 ACK", ""),
        ),
    ]
}

/// The callee's BYE at 65 s and its 200.
fn callee_bye(clock: &Clock) -> Vec<Relayed> {
    let f = Origin::Forwarded;
    vec![
        clock.relayed(
            65.0,
            Direction::ToTerminal,
            f,
            sip(
                "BYE sip:8001@192.0.2.10 SIP/2.0",
                TO_TAGGED,
                FROM,
                "1 BYE",
                "",
            ),
        ),
        clock.relayed(
            65.1,
            Direction::ToUpstream,
            f,
            sip("SIP/2.0 200 OK", TO_TAGGED, FROM, "1 BYE", ""),
        ),
    ]
}

fn sip_lines(log: &[sipedge_store::LogEntry]) -> Vec<String> {
    log.iter()
        .map(|e| match &e.kind {
            LogKind::Sip {
                direction, text, ..
            } => {
                let first = String::from_utf8_lossy(text)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                format!("{direction:?} {first}")
            }
            LogKind::Event { text } => format!("event {text}"),
        })
        .collect()
}

fn drain(events: &mut broadcast::Receiver<LiveEvent>) -> Vec<(&'static str, LiveState)> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push((e.kind.name(), e.call.state));
    }
    out
}

#[tokio::test]
async fn a_call_becomes_a_cdr_with_its_log_and_live_events() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let clock = Clock(SystemTime::now());
    let running = start(&store);
    let mut events = running.handle.subscribe();
    running.feed(answered(&clock)).await;
    running.feed(callee_bye(&clock)).await;
    let handle = running.stop(&store).await;

    let want = expected_cdr(&clock, |_| {});
    assert_eq!(store.get_cdr(want.id).expect("a read"), Some(want.clone()));
    assert_eq!(
        sip_lines(&store.cdr_log(want.id).expect("a read")),
        [
            "Received INVITE sip:95566@bank SIP/2.0",
            "Received SIP/2.0 180 Ringing",
            "Received SIP/2.0 200 OK",
            "Received ACK sip:95566@bank SIP/2.0",
            "Received BYE sip:8001@192.0.2.10 SIP/2.0",
            "Received SIP/2.0 200 OK",
        ]
    );
    assert_eq!(store.calls_in_progress().expect("a read"), vec![]);
    assert_eq!(
        drain(&mut events),
        [
            ("call.started", LiveState::Trying),
            ("call.ringing", LiveState::Ringing),
            ("call.answered", LiveState::Connected),
            ("call.ended", LiveState::Ended),
        ]
    );
    assert!(handle.live().is_empty());
    let counters = handle.counters();
    assert_eq!((counters.messages, counters.unparsed), (6, 0));
}

/// A call that keeps talking in its dialog: its log stops at the cap with one event saying
/// so, the rest is counted as skipped, and its CDR is the same as without the cap. The calls
/// in progress are counted for the relay meanwhile.
#[tokio::test]
async fn a_log_stops_at_its_cap_and_the_call_goes_on() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let clock = Clock(SystemTime::now());
    let mut cfg = config();
    cfg.log_cap = LogCap {
        max_entries: 6,
        max_bytes: 1 << 20,
    };
    let relay = Arc::clone(&cfg.relay);
    let running = start_with(&store, cfg);
    running.feed(answered(&clock)).await;
    let counted = async {
        while relay.calls.active() != 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), counted)
        .await
        .expect("the call in progress is counted for the relay");
    let mut info = Vec::new();
    for n in 2..7 {
        let cseq = format!("{n} INFO");
        let at = 10.0 + f64::from(n);
        info.push(clock.relayed(
            at,
            Direction::ToUpstream,
            Origin::Forwarded,
            sip("INFO sip:95566@bank SIP/2.0", FROM, TO_TAGGED, &cseq, ""),
        ));
        info.push(clock.relayed(
            at + 0.1,
            Direction::ToTerminal,
            Origin::Forwarded,
            sip("SIP/2.0 200 OK", FROM, TO_TAGGED, &cseq, ""),
        ));
    }
    running.feed(info).await;
    running.feed(callee_bye(&clock)).await;
    let handle = running.stop(&store).await;

    let want = expected_cdr(&clock, |_| {});
    assert_eq!(store.get_cdr(want.id).expect("a read"), Some(want.clone()));
    let log = sip_lines(&store.cdr_log(want.id).expect("a read"));
    assert_eq!(
        log[..6],
        [
            "Received INVITE sip:95566@bank SIP/2.0",
            "Received SIP/2.0 180 Ringing",
            "Received SIP/2.0 200 OK",
            "Received ACK sip:95566@bank SIP/2.0",
            "Received INFO sip:95566@bank SIP/2.0",
            "Received SIP/2.0 200 OK",
        ]
    );
    assert_eq!(log.len(), 7, "{log:#?}");
    assert!(
        log[6].starts_with("event log truncated after 6 entries (")
            && log[6].contains("sip.max_log_entries_per_call"),
        "{}",
        log[6]
    );
    assert_eq!(handle.counters().logs_truncated, 1);
    assert!(
        relay
            .refusals()
            .contains(&("sip.max_log_entries_per_call", 16 - 6)),
        "{:?}",
        relay.refusals()
    );
    assert_eq!(relay.calls.active(), 0);
}

#[tokio::test]
async fn sipedge_replies_are_logged_as_its_own_events() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let clock = Clock(SystemTime::now());
    let running = start(&store);
    running
        .feed(vec![
            clock.relayed(
                0.0,
                Direction::ToUpstream,
                Origin::Forwarded,
                sip("INVITE sip:95566@bank SIP/2.0", FROM, TO, "1 INVITE", ""),
            ),
            clock.relayed(
                0.2,
                Direction::ToTerminal,
                Origin::Local,
                sip(
                    "SIP/2.0 503 Service Unavailable (upstream unreachable)",
                    FROM,
                    TO_TAGGED,
                    "1 INVITE",
                    "",
                ),
            ),
        ])
        .await;
    running.stop(&store).await;

    let want = expected_cdr(&clock, |c| {
        c.call_type = CallType::Audio;
        c.video_started_at = None;
        c.status = CallStatus::NotConnected;
        c.disposition = Disposition::Failed;
        c.sip_code = Some(503);
        c.ring_time = None;
        c.answer_time = None;
        c.end_time = clock.ms(0.2);
    });
    assert_eq!(store.get_cdr(want.id).expect("a read"), Some(want.clone()));
    assert_eq!(
        sip_lines(&store.cdr_log(want.id).expect("a read")),
        [
            "Received INVITE sip:95566@bank SIP/2.0".to_owned(),
            "Sent SIP/2.0 503 Service Unavailable (upstream unreachable)".to_owned(),
            format!(
                "event sipedge replied 503 Service Unavailable (upstream unreachable) to {TERMINAL}"
            ),
        ]
    );
}

#[tokio::test]
async fn a_call_in_progress_survives_a_restart_and_its_bye_closes_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let clock = Clock(SystemTime::now());
    let first = start(&store);
    first.feed(answered(&clock)).await;
    first.stop(&store).await;
    assert_eq!(store.calls_in_progress().expect("a read").len(), 1);
    drop(store);

    let store = open(&dir);
    let second = start(&store);
    let live = second.handle.live().list();
    assert_eq!(
        live.iter()
            .map(|c| (&*c.call_id, c.state))
            .collect::<Vec<_>>(),
        [(CALL_ID, LiveState::Connected)]
    );
    assert_eq!(second.handle.counters().resumed, 1);
    second.feed(callee_bye(&clock)).await;
    let handle = second.stop(&store).await;

    let want = expected_cdr(&clock, |_| {});
    assert_eq!(store.get_cdr(want.id).expect("a read"), Some(want.clone()));
    assert_eq!(store.calls_in_progress().expect("a read"), vec![]);
    assert!(handle.live().is_empty());
    let log = sip_lines(&store.cdr_log(want.id).expect("a read"));
    assert_eq!(log.len(), 7, "{log:#?}");
    assert_eq!(
        log.get(4).map(String::as_str),
        Some("event sipedge restarted; call tracking resumed")
    );
}

#[tokio::test]
async fn unreadable_saved_calls_are_dropped_not_fatal() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let id = CdrId(42);
    store
        .writer()
        .submit(sipedge_store::WriteOp::PutCall(id, b"\x09garbage".to_vec()))
        .expect("a write");
    store
        .flush(Duration::from_secs(10))
        .expect("the store flushes");
    let running = start(&store);
    assert_eq!(running.handle.counters().unreadable, 1);
    running.stop(&store).await;
    assert_eq!(store.calls_in_progress().expect("a read"), vec![]);
}

#[test]
fn header_text_is_borrowed_when_valid_and_replaced_where_not() {
    let cases: [(&[u8], &str, bool); 4] = [
        (b"sip:8001@bank", "sip:8001@bank", true),
        ("sip:\u{5f20}@bank".as_bytes(), "sip:\u{5f20}@bank", true),
        (b"sip:\xff@bank", "sip:\u{fffd}@bank", false),
        (b"", "", true),
    ];
    for (bytes, want, borrowed) in cases {
        let got = text(bytes);
        assert_eq!(got, want, "{bytes:?}");
        assert_eq!(matches!(got, Cow::Borrowed(_)), borrowed, "{bytes:?}");
    }
}
