//! The store's behaviour through its public API, on both engines: every test body takes the
//! engine and `both!` makes one test per engine, so a failure names it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sipedge_store::{
    Alarm, AlarmId, AlarmKind, CallStatus, CallType, Cdr, CdrFilter, CdrId, Counters, Direction,
    Disposition, EndedBy, Engine, LogEntry, LogKind, NumberMatch, Severity, Source, Store,
    StoreConfig, StoreError, Transport, TypeCounters, UnixMs, WriteOp,
};

macro_rules! both {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn redb() {
                super::$name(sipedge_store::Engine::Redb);
            }
            #[test]
            fn sled() {
                super::$name(sipedge_store::Engine::Sled);
            }
        }
    )+};
}

both!(
    round_trip,
    a_call_logging_megabytes_in_one_batch_reads_back_whole,
    each_filter_alone_and_combined,
    stats_match_brute_force,
    retention_deletes_expired_records,
    reopen_after_drop_keeps_everything,
    re_putting_a_cdr_counts_it_once,
    alarms_newest_first,
    crash_loses_no_acknowledged_cdr,
    outbox_holds_every_stored_cdr_until_acked,
    outbox_survives_reopen_and_never_reuses_a_seq,
);

const FLUSH: Duration = Duration::from_secs(30);
const DAY: i64 = 86_400_000;

fn cfg() -> StoreConfig {
    StoreConfig {
        flush_interval: Duration::from_millis(20),
        ..StoreConfig::default()
    }
}

fn open(engine: Engine, dir: &Path) -> Store {
    Store::open(dir, engine, cfg()).unwrap()
}

fn now() -> UnixMs {
    UnixMs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

/// xorshift64*: reproducible random data without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn cdr(
    start: UnixMs,
    call_id: &str,
    caller: &str,
    called: &str,
    video: bool,
    connected: bool,
) -> Cdr {
    Cdr {
        id: CdrId::new(start, "sh-01", call_id),
        node: "sh-01".into(),
        call_id: call_id.into(),
        caller: caller.into(),
        called: called.into(),
        caller_uri: format!("sip:{caller}@10.0.0.1"),
        called_uri: format!("sip:{called}@10.0.0.5"),
        call_type: if video {
            CallType::Video
        } else {
            CallType::Audio
        },
        video_started_at: video.then_some(UnixMs(start.0 + 1_000)),
        status: if connected {
            CallStatus::Connected
        } else {
            CallStatus::NotConnected
        },
        disposition: if connected {
            Disposition::Answered
        } else {
            Disposition::Busy
        },
        sip_code: Some(if connected { 200 } else { 486 }),
        ended_by: EndedBy::Caller,
        start_time: start,
        ring_time: Some(UnixMs(start.0 + 500)),
        answer_time: connected.then_some(UnixMs(start.0 + 2_000)),
        end_time: UnixMs(start.0 + 2_000 + (start.0 % 97_000)),
        transport: Transport::Udp,
        source: Source::Proxy,
        terminal: "192.0.2.7:40000".into(),
    }
}

/// `n` CDRs spread over `span` ms from `t0`, with numbers from small pools so that exact and
/// prefix filters both find something.
fn random_cdrs(rng: &mut Rng, t0: UnixMs, span: i64, n: usize) -> Vec<Cdr> {
    let callers = [
        "13800000001",
        "13800000002",
        "13811112222",
        "13912345678",
        "15000000000",
        "95566",
    ];
    let called = ["95566", "95588", "4001", "4002"];
    (0..n)
        .map(|i| {
            let start = UnixMs(t0.0 + rng.below(span as u64) as i64);
            let caller = callers[rng.below(callers.len() as u64) as usize];
            let to = called[rng.below(called.len() as u64) as usize];
            cdr(
                start,
                &format!("call-{i}"),
                caller,
                to,
                rng.below(3) == 0,
                rng.below(4) != 0,
            )
        })
        .collect()
}

fn put_all(store: &Store, cdrs: &[Cdr]) {
    let w = store.writer();
    for c in cdrs {
        w.submit(WriteOp::PutCdr(Box::new(c.clone()))).unwrap();
    }
    store.flush(FLUSH).unwrap();
}

fn brute(cdrs: &[Cdr], filter: &CdrFilter) -> Vec<CdrId> {
    let mut ids: Vec<CdrId> = cdrs
        .iter()
        .filter(|c| filter.matches(c))
        .map(|c| c.id)
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    ids
}

/// Walks every page and checks newest-first order and that nothing comes twice.
fn all_pages(store: &Store, filter: &CdrFilter, limit: usize) -> Vec<CdrId> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let (page, cursor) = store.cdrs_page(filter, after, limit).unwrap();
        assert!(page.len() <= limit);
        out.extend(page.iter().map(|c| c.id));
        match cursor {
            Some(c) => {
                assert_eq!(Some(c), page.last().map(|c| c.id));
                after = Some(c);
            }
            None => break,
        }
    }
    assert!(
        out.windows(2).all(|w| w[0] > w[1]),
        "not strictly newest first"
    );
    out
}

fn log_sip(at: i64, text: &[u8]) -> LogEntry {
    LogEntry {
        at: UnixMs(at),
        kind: LogKind::Sip {
            direction: Direction::Received,
            transport: Transport::Udp,
            src: "192.0.2.7:40000".parse().unwrap(),
            dst: "10.0.0.2:14500".parse().unwrap(),
            text: text.to_vec().into(),
        },
    }
}

fn round_trip(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let w = store.writer();
    let t = now();
    let a = cdr(t, "a", "13800000001", "95566", true, true);
    let b = cdr(UnixMs(t.0 + 1), "b", "13800000002", "95566", false, false);
    w.submit(WriteOp::PutCall(a.id, b"tracker state a".to_vec()))
        .unwrap();
    w.submit(WriteOp::PutCall(b.id, b"tracker state b".to_vec()))
        .unwrap();
    let log = vec![
        log_sip(t.0, b"INVITE sip:95566@x SIP/2.0\r\n\r\n\x00\xff"),
        LogEntry {
            at: UnixMs(t.0 + 1),
            kind: LogKind::Event {
                text: "upstream unreachable".into(),
            },
        },
        log_sip(t.0 + 2, b"SIP/2.0 200 OK\r\n\r\n"),
    ];
    // Two calls' entries interleaved in one batch: each call's come back alone, in order.
    let b_log = log_sip(t.0 + 1, b"INVITE sip:95566@y SIP/2.0\r\n\r\n");
    for (i, entry) in log.iter().enumerate() {
        w.submit(WriteOp::AppendLog(a.id, entry.clone())).unwrap();
        if i == 0 {
            w.submit(WriteOp::AppendLog(b.id, b_log.clone())).unwrap();
        }
    }
    store.flush(FLUSH).unwrap();
    assert_eq!(
        store.calls_in_progress().unwrap(),
        vec![
            (a.id, b"tracker state a".to_vec()),
            (b.id, b"tracker state b".to_vec())
        ]
    );
    assert_eq!(store.get_cdr(a.id).unwrap(), None);

    w.submit(WriteOp::PutCdr(Box::new(a.clone()))).unwrap();
    w.submit(WriteOp::RemoveCall(b.id)).unwrap();
    // A log line after the CDR (e.g. a late ACK) still lands after the others.
    w.submit(WriteOp::AppendLog(a.id, log_sip(t.0 + 3, b"ACK")))
        .unwrap();
    store.flush(FLUSH).unwrap();
    assert_eq!(store.get_cdr(a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.calls_in_progress().unwrap(), vec![]);
    let mut expected = log.clone();
    expected.push(log_sip(t.0 + 3, b"ACK"));
    assert_eq!(store.cdr_log(a.id).unwrap(), expected);
    assert_eq!(store.cdr_log(b.id).unwrap(), vec![b_log]);
    let stats = store.writer_stats();
    assert_eq!(stats.cdrs_written, 1);
    assert_eq!(stats.log_entries_written, 5);
    assert_eq!(stats.queued, 0);
    assert_eq!(stats.failures, 0);
    assert!(stats.batches >= 2);
}

/// More log in one batch than one value may hold (a decode refuses a text past 16 MiB):
/// the writer spreads it over several values, and it reads back whole and in order.
fn a_call_logging_megabytes_in_one_batch_reads_back_whole(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let w = store.writer();
    let t = now();
    let id = cdr(t, "big", "13800000001", "95566", false, true).id;
    let log: Vec<LogEntry> = (0..18u8)
        .map(|n| log_sip(t.0 + i64::from(n), &vec![b'a' + n; 1 << 20]))
        .collect();
    for entry in &log {
        w.submit(WriteOp::AppendLog(id, entry.clone())).unwrap();
    }
    store.flush(FLUSH).unwrap();
    assert_eq!(store.cdr_log(id).unwrap(), log);
}

fn each_filter_alone_and_combined(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let t0 = UnixMs(1_767_225_600_000); // 2026-01-01 UTC
    let cdrs = random_cdrs(&mut Rng(7), t0, 3 * DAY, 3_000);
    put_all(&store, &cdrs);

    let all = CdrFilter::between(t0, UnixMs(t0.0 + 3 * DAY));
    let day2 = CdrFilter::between(UnixMs(t0.0 + DAY + 7_013), UnixMs(t0.0 + 2 * DAY - 1));
    let with = |base: &CdrFilter, f: &dyn Fn(&mut CdrFilter)| {
        let mut x = base.clone();
        f(&mut x);
        x
    };
    let exact = |s: &str| Some(NumberMatch::Exact(s.into()));
    let prefix = |s: &str| Some(NumberMatch::Prefix(s.into()));
    let filters = [
        all.clone(),
        day2.clone(),
        CdrFilter::between(t0, t0),
        CdrFilter::between(UnixMs(t0.0 + DAY), t0),
        CdrFilter::between(UnixMs(0), UnixMs(i64::MAX)),
        with(&all, &|f| f.call_type = Some(CallType::Video)),
        with(&all, &|f| f.call_type = Some(CallType::Audio)),
        with(&all, &|f| f.status = Some(CallStatus::Connected)),
        with(&all, &|f| f.status = Some(CallStatus::NotConnected)),
        with(&all, &|f| f.caller = exact("13800000001")),
        with(&all, &|f| f.caller = exact("1380000000")),
        with(&all, &|f| f.caller = prefix("138")),
        with(&all, &|f| f.caller = prefix("")),
        with(&all, &|f| f.caller = prefix("99")),
        with(&all, &|f| f.called = exact("95566")),
        with(&all, &|f| f.called = prefix("400")),
        with(&day2, &|f| {
            f.caller = prefix("138");
            f.call_type = Some(CallType::Video);
            f.status = Some(CallStatus::Connected);
        }),
        with(&day2, &|f| {
            f.caller = prefix("1380");
            f.called = exact("95588");
        }),
        with(&all, &|f| {
            f.caller = exact("95566");
            f.called = prefix("95");
            f.status = Some(CallStatus::NotConnected);
        }),
        with(&day2, &|f| {
            f.call_type = Some(CallType::Audio);
            f.status = Some(CallStatus::NotConnected);
        }),
    ];
    for filter in &filters {
        let expected = brute(&cdrs, filter);
        for limit in [1, 7, 100, 5_000] {
            assert_eq!(
                all_pages(&store, filter, limit),
                expected,
                "{filter:?} limit {limit}"
            );
        }
        let batches: Vec<CdrId> = store
            .cdrs_batches(filter.clone(), 13)
            .flat_map(|b| b.unwrap())
            .map(|c| c.id)
            .collect();
        assert_eq!(batches, expected, "batches of {filter:?}");
    }
    // Paging with a cursor taken before new calls arrive still returns each old one once.
    let (first, cursor) = store.cdrs_page(&all, None, 100).unwrap();
    put_all(
        &store,
        &random_cdrs(&mut Rng(99), UnixMs(t0.0 + 3 * DAY - 60_000), 59_000, 50),
    );
    let mut seen: Vec<CdrId> = first.iter().map(|c| c.id).collect();
    let mut after = cursor;
    while let Some(c) = after {
        let (page, next) = store.cdrs_page(&all, Some(c), 100).unwrap();
        seen.extend(page.iter().map(|c| c.id));
        after = next;
    }
    assert_eq!(seen, brute(&cdrs, &all));
}

/// Per bucket and type, what stats must say, counted from the records.
fn brute_stats(cdrs: &[Cdr], filter: &CdrFilter, edges: &[UnixMs]) -> Vec<TypeCounters> {
    edges
        .windows(2)
        .map(|w| {
            let mut counts = TypeCounters::default();
            for c in cdrs {
                let t = c.start_time;
                if t < w[0] || t >= w[1] || !filter.matches(c) {
                    continue;
                }
                let talk = match (c.status, c.answer_time) {
                    (CallStatus::Connected, Some(a)) => (c.end_time.0 - a.0).max(0) as u64,
                    _ => 0,
                };
                let slot: &mut Counters = match c.call_type {
                    CallType::Audio => &mut counts.audio,
                    CallType::Video => &mut counts.video,
                };
                slot.calls += 1;
                slot.connected += u64::from(c.status == CallStatus::Connected);
                slot.talk_ms += talk;
            }
            counts
        })
        .collect()
}

fn stats_match_brute_force(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let t0 = UnixMs(1_767_225_600_000);
    let mut rng = Rng(42);
    let cdrs = random_cdrs(&mut rng, t0, 10 * DAY, 4_000);
    put_all(&store, &cdrs);

    let hour = 3_600_000;
    let ragged = UnixMs(t0.0 + 2 * DAY + 3 * hour + 7 * 60_000 + 13_000);
    let mut filters = vec![
        CdrFilter::between(ragged, UnixMs(ragged.0 + DAY)),
        CdrFilter::between(t0, UnixMs(t0.0 + 10 * DAY)),
        CdrFilter::between(UnixMs(t0.0 + hour + 1), UnixMs(t0.0 + hour + 600_000)),
    ];
    let mut video = filters[1].clone();
    video.call_type = Some(CallType::Video);
    let mut connected = filters[0].clone();
    connected.status = Some(CallStatus::Connected);
    let mut by_caller = filters[1].clone();
    by_caller.caller = Some(NumberMatch::Prefix("138".into()));
    by_caller.status = Some(CallStatus::Connected);
    let mut both_numbers = filters[1].clone();
    both_numbers.caller = Some(NumberMatch::Prefix("1380".into()));
    both_numbers.called = Some(NumberMatch::Exact("95566".into()));
    filters.extend([video, connected, by_caller, both_numbers]);

    for filter in &filters {
        // Hourly edges (with the API's partial first and last bucket), daily edges on a
        // +08:00 day boundary, and random edges not aligned to anything.
        let mut hourly = vec![filter.start];
        let mut t = (filter.start.0 / hour + 1) * hour;
        while t < filter.end.0 {
            hourly.push(UnixMs(t));
            t += hour;
        }
        hourly.push(filter.end);
        let mut daily = vec![UnixMs(t0.0 - 8 * hour)];
        for d in 1..=11 {
            daily.push(UnixMs(t0.0 - 8 * hour + d * DAY));
        }
        let mut random = vec![UnixMs(t0.0 - 1)];
        for _ in 0..20 {
            let last = random.last().unwrap().0;
            random.push(UnixMs(last + 1 + rng.below((DAY / 2) as u64) as i64));
        }
        for edges in [hourly, daily, random] {
            let got = store.stats(filter, &edges).unwrap();
            let expected = brute_stats(&cdrs, filter, &edges);
            assert_eq!(got.buckets.len(), expected.len());
            let mut sum = TypeCounters::default();
            for (bucket, want) in got.buckets.iter().zip(&expected) {
                assert_eq!(&bucket.counts, want, "{filter:?} bucket {:?}", bucket.start);
                for (s, b) in [
                    (&mut sum.audio, bucket.counts.audio),
                    (&mut sum.video, bucket.counts.video),
                ] {
                    s.calls += b.calls;
                    s.connected += b.connected;
                    s.talk_ms += b.talk_ms;
                }
            }
            assert_eq!(got.totals, sum);
        }
    }
    let bad: [&[UnixMs]; 3] = [&[], &[t0], &[t0, UnixMs(t0.0 - 1)]];
    for edges in bad {
        assert!(matches!(
            store.stats(&filters[0], edges),
            Err(StoreError::BadBuckets)
        ));
    }
}

fn retention_deletes_expired_records(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        cdr_retention: Duration::from_secs(10 * 86_400),
        trace_retention: Duration::from_secs(5 * 86_400),
        flush_interval: Duration::from_millis(20),
        outbox: false,
    };
    let store = Store::open(dir.path(), engine, cfg).unwrap();
    let t = now();
    let ages = [20, 12, 7, 1];
    let mut cdrs = Vec::new();
    // Enough old ones that retention needs several chunks.
    for i in 0..2_500 {
        cdrs.push(cdr(
            UnixMs(t.0 - 20 * DAY + i),
            &format!("old-{i}"),
            "13800000001",
            "95566",
            i % 2 == 0,
            true,
        ));
    }
    for (i, age) in ages.iter().enumerate() {
        cdrs.push(cdr(
            UnixMs(t.0 - age * DAY),
            &format!("c{i}"),
            "13800000001",
            "95566",
            false,
            true,
        ));
    }
    put_all(&store, &cdrs);
    let w = store.writer();
    // Two entries a call, committed as one value: retention counts entries, not values.
    for c in &cdrs[2_500..] {
        for text in [&b"INVITE"[..], b"BYE"] {
            w.submit(WriteOp::AppendLog(c.id, log_sip(c.start_time.0, text)))
                .unwrap();
        }
    }
    let old_alarm = alarm(UnixMs(t.0 - 30 * DAY), Some(UnixMs(t.0 - 29 * DAY)));
    let active_alarm = alarm(UnixMs(t.0 - 30 * DAY - 1), None);
    w.submit(WriteOp::PutAlarm(old_alarm.clone())).unwrap();
    w.submit(WriteOp::PutAlarm(active_alarm.clone())).unwrap();
    store.flush(FLUSH).unwrap();

    let purged = store.purge_expired(FLUSH).unwrap();
    assert_eq!(purged.cdrs, 2_500 + 2);
    assert_eq!(purged.log_entries, 6);
    assert_eq!(purged.alarms, 1);
    let everything = CdrFilter::between(UnixMs(0), UnixMs(i64::MAX));
    let left: Vec<Cdr> = cdrs[2_502..].to_vec();
    assert_eq!(
        all_pages(&store, &everything, 1000),
        brute(&left, &everything)
    );
    let mut by_caller = everything.clone();
    by_caller.caller = Some(NumberMatch::Exact("13800000001".into()));
    assert_eq!(
        all_pages(&store, &by_caller, 1000),
        brute(&left, &by_caller)
    );
    let mut video = everything.clone();
    video.call_type = Some(CallType::Video);
    assert_eq!(all_pages(&store, &video, 1000), vec![]);
    let edges = [UnixMs(t.0 - 30 * DAY), UnixMs(t.0 + DAY)];
    assert_eq!(
        store.stats(&everything, &edges).unwrap().totals.all().calls,
        2
    );
    assert_eq!(store.cdr_log(cdrs[2_502].id).unwrap(), vec![]);
    assert_eq!(store.cdr_log(cdrs[2_503].id).unwrap().len(), 2);
    assert_eq!(store.alarms(false, 10).unwrap(), vec![active_alarm]);
    assert_eq!(store.purge_expired(FLUSH).unwrap(), Default::default());
}

fn reopen_after_drop_keeps_everything(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let t0 = UnixMs(1_767_225_600_000);
    let cdrs = random_cdrs(&mut Rng(3), t0, DAY, 500);
    {
        let store = open(engine, dir.path());
        let w = store.writer();
        for c in &cdrs {
            w.submit(WriteOp::PutCdr(Box::new(c.clone()))).unwrap();
        }
        w.submit(WriteOp::PutCall(CdrId(5), b"open call".to_vec()))
            .unwrap();
        w.submit(WriteOp::AppendLog(CdrId(5), log_sip(1, b"INVITE")))
            .unwrap();
        // No flush: dropping the store must commit what is queued.
        drop(store);
        assert!(matches!(
            w.submit(WriteOp::RemoveCall(CdrId(5))),
            Err(StoreError::WriterStopped)
        ));
    }
    let store = open(engine, dir.path());
    let all = CdrFilter::between(t0, UnixMs(t0.0 + DAY));
    assert_eq!(all_pages(&store, &all, 100), brute(&cdrs, &all));
    assert_eq!(
        store.calls_in_progress().unwrap(),
        vec![(CdrId(5), b"open call".to_vec())]
    );
    // The log goes on where it stopped, in order.
    store
        .writer()
        .submit(WriteOp::AppendLog(CdrId(5), log_sip(2, b"BYE")))
        .unwrap();
    store.flush(FLUSH).unwrap();
    assert_eq!(
        store.cdr_log(CdrId(5)).unwrap(),
        vec![log_sip(1, b"INVITE"), log_sip(2, b"BYE")]
    );
    drop(store);
    let other = match engine {
        Engine::Redb => Engine::Sled,
        Engine::Sled => Engine::Redb,
    };
    let err = Store::open(dir.path(), other, cfg()).unwrap_err();
    assert!(matches!(err, StoreError::OtherEngine { .. }), "{err}");
}

fn re_putting_a_cdr_counts_it_once(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let t0 = UnixMs(1_767_225_600_000);
    let a = cdr(t0, "a", "13800000001", "95566", true, true);
    let w = store.writer();
    // Twice in one batch, then again in a later one.
    w.submit(WriteOp::PutCdr(Box::new(a.clone()))).unwrap();
    w.submit(WriteOp::PutCdr(Box::new(a.clone()))).unwrap();
    store.flush(FLUSH).unwrap();
    w.submit(WriteOp::PutCdr(Box::new(a.clone()))).unwrap();
    store.flush(FLUSH).unwrap();
    let all = CdrFilter::between(t0, UnixMs(t0.0 + DAY));
    let edges = [t0, UnixMs(t0.0 + DAY)];
    let one = store.stats(&all, &edges).unwrap().totals;
    assert_eq!(one.all().calls, 1);
    assert_eq!(one.video.connected, 1);
    assert_eq!(all_pages(&store, &all, 10), vec![a.id]);

    // A changed record replaces the old one in every index.
    let mut b = a.clone();
    b.caller = "15000000000".into();
    b.call_type = CallType::Audio;
    w.submit(WriteOp::PutCdr(Box::new(b.clone()))).unwrap();
    store.flush(FLUSH).unwrap();
    let mut old_caller = all.clone();
    old_caller.caller = Some(NumberMatch::Exact(a.caller.clone()));
    assert_eq!(all_pages(&store, &old_caller, 10), vec![]);
    let mut new_caller = all.clone();
    new_caller.caller = Some(NumberMatch::Exact(b.caller.clone()));
    assert_eq!(all_pages(&store, &new_caller, 10), vec![b.id]);
    let mut video = all.clone();
    video.call_type = Some(CallType::Video);
    assert_eq!(all_pages(&store, &video, 10), vec![]);
    let totals = store.stats(&all, &edges).unwrap().totals;
    assert_eq!((totals.audio.calls, totals.video.calls), (1, 0));
    assert_eq!(store.get_cdr(a.id).unwrap(), Some(b));
}

fn alarm(raised_at: UnixMs, cleared_at: Option<UnixMs>) -> Alarm {
    let target = format!("proc-{}", raised_at.0);
    Alarm {
        id: AlarmId::new(raised_at, "sh-01", AlarmKind::ProcessMissing, &target),
        node: "sh-01".into(),
        kind: AlarmKind::ProcessMissing,
        target,
        severity: Severity::Critical,
        message: "sipserver is not running".into(),
        raised_at,
        cleared_at,
    }
}

fn alarms_newest_first(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(engine, dir.path());
    let t = now();
    let a = alarm(UnixMs(t.0 - 3_000), None);
    let b = alarm(UnixMs(t.0 - 2_000), None);
    let c = alarm(UnixMs(t.0 - 1_000), None);
    let w = store.writer();
    for x in [&a, &b, &c] {
        w.submit(WriteOp::PutAlarm(x.clone())).unwrap();
    }
    let mut b_cleared = b.clone();
    b_cleared.cleared_at = Some(t);
    w.submit(WriteOp::PutAlarm(b_cleared.clone())).unwrap();
    store.flush(FLUSH).unwrap();
    assert_eq!(
        store.alarms(false, 10).unwrap(),
        vec![c.clone(), b_cleared.clone(), a.clone()]
    );
    assert_eq!(store.alarms(true, 10).unwrap(), vec![c.clone(), a]);
    assert_eq!(store.alarms(false, 1).unwrap(), vec![c]);
    assert_eq!(store.get_alarm(b.id).unwrap(), Some(b_cleared));
}

/// The env var that turns [`crash_child`] into the writer the crash test kills.
const CHILD_ENV: &str = "SIPEDGE_STORE_CRASH_CHILD";

fn crash_id(i: u64) -> CdrId {
    CdrId::new(
        UnixMs(1_767_225_600_000 + i as i64 * 10),
        "crash",
        &i.to_string(),
    )
}

fn crash_cdr(i: u64) -> Cdr {
    let start = UnixMs(1_767_225_600_000 + i as i64 * 10);
    let mut c = cdr(
        start,
        &i.to_string(),
        "13800000001",
        "95566",
        i.is_multiple_of(3),
        i.is_multiple_of(2),
    );
    c.node = "crash".into();
    c.id = crash_id(i);
    c
}

/// Writes CDRs in rounds: each round saves calls in progress, ends them with their CDRs and
/// logs, flushes, then prints how many CDRs are acknowledged. Runs until `deadline`.
fn write_rounds(store: &Store, deadline: Instant, mut acked: impl FnMut(u64)) {
    let w = store.writer();
    let mut next = 0u64;
    while Instant::now() < deadline {
        for i in next..next + 200 {
            w.submit(WriteOp::PutCall(crash_id(i), vec![1, 2, 3]))
                .unwrap();
            w.submit(WriteOp::AppendLog(
                crash_id(i),
                log_sip(i as i64, b"INVITE"),
            ))
            .unwrap();
            w.submit(WriteOp::PutCdr(Box::new(crash_cdr(i)))).unwrap();
        }
        next += 200;
        store.flush(FLUSH).unwrap();
        acked(next);
    }
}

/// Not a test of its own when run normally: with [`CHILD_ENV`] set it is the process the crash
/// test kills; without, it checks that acknowledged writes are readable right away.
#[test]
fn crash_child() {
    match std::env::var(CHILD_ENV) {
        Ok(spec) => {
            let (engine, dir) = spec.split_once(':').unwrap();
            let engine = if engine == "sled" {
                Engine::Sled
            } else {
                Engine::Redb
            };
            let store = open(engine, Path::new(dir));
            write_rounds(&store, Instant::now() + Duration::from_secs(60), |n| {
                println!("acked {n}")
            });
        }
        Err(_) => {
            let dir = tempfile::tempdir().unwrap();
            let store = open(Engine::Redb, dir.path());
            write_rounds(&store, Instant::now() + Duration::from_millis(300), |n| {
                assert_eq!(
                    store.get_cdr(crash_id(n - 1)).unwrap(),
                    Some(crash_cdr(n - 1))
                );
            });
        }
    }
}

fn crash_loses_no_acknowledged_cdr(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let mut acked = 0u64;
    // Kill the writer at different moments: right after an ack, and a little later.
    for (round, wait_acks) in [(0, 3), (1, 7), (2, 12)] {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(
                CHILD_ENV,
                format!("{}:{}", engine.name(), dir.path().display()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while seen < wait_acks {
            let line = lines.next().expect("the child stopped early").unwrap();
            if let Some(n) = line.strip_prefix("acked ") {
                acked = acked.max(n.trim().parse().unwrap());
                seen += 1;
            }
        }
        if round == 1 {
            std::thread::sleep(Duration::from_millis(7));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = open(engine, dir.path());
        for i in 0..acked {
            assert_eq!(
                store.get_cdr(crash_id(i)).unwrap(),
                Some(crash_cdr(i)),
                "round {round}, CDR {i}"
            );
        }
        let all = CdrFilter::between(UnixMs(0), UnixMs(i64::MAX));
        let ids = all_pages(&store, &all, 1_000);
        let unique: HashSet<CdrId> = ids.iter().copied().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.len() as u64 >= acked);
        // Indexes and rollups were committed with their records, so they agree after the kill.
        let edges = [UnixMs(0), UnixMs(i64::MAX)];
        assert_eq!(
            store.stats(&all, &edges).unwrap().totals.all().calls,
            ids.len() as u64
        );
        let mut by_caller = all.clone();
        by_caller.caller = Some(NumberMatch::Prefix("138".into()));
        assert_eq!(all_pages(&store, &by_caller, 1_000), ids);
        let open_calls = store.calls_in_progress().unwrap();
        assert!(
            open_calls
                .iter()
                .all(|(id, _)| store.get_cdr(*id).unwrap().is_none())
        );
        drop(store);
    }
}

fn outbox_cfg(outbox: bool) -> StoreConfig {
    StoreConfig {
        cdr_retention: Duration::from_secs(10 * 86_400),
        outbox,
        ..cfg()
    }
}

fn seqs(store: &Store, after: Option<u64>) -> Vec<u64> {
    let entries = store.outbox_peek(after, 100).unwrap();
    entries.iter().map(|e| e.seq).collect()
}

fn submit_all(store: &Store, ops: impl IntoIterator<Item = WriteOp>) {
    for op in ops {
        store.writer().submit(op).unwrap();
    }
    store.flush(FLUSH).unwrap();
}

fn outbox_holds_every_stored_cdr_until_acked(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), engine, outbox_cfg(true)).unwrap();
    let t = now();
    let cdrs: Vec<Cdr> = (0..5)
        .map(|i| {
            cdr(
                UnixMs(t.0 - 60_000 + i),
                &format!("c{i}"),
                "1",
                "2",
                false,
                true,
            )
        })
        .collect();
    put_all(&store, &cdrs);
    // The same CDR again queues nothing; a changed one is queued again, and the entry reads
    // the CDR as it is now.
    let mut changed = cdrs[1].clone();
    changed.end_time = UnixMs(changed.end_time.0 + 5_000);
    let expired = cdr(UnixMs(t.0 - 20 * DAY), "old", "1", "2", false, false);
    submit_all(
        &store,
        [
            WriteOp::PutCdr(Box::new(cdrs[0].clone())),
            WriteOp::PutCdr(Box::new(changed.clone())),
            WriteOp::PutCdr(Box::new(expired.clone())),
        ],
    );
    let stats = store.outbox_stats().unwrap();
    assert_eq!(stats.depth, 7);
    assert!(
        stats
            .oldest_queued_at
            .is_some_and(|at| (at.0 - t.0).abs() < 60_000)
    );
    let first = store.outbox_peek(None, 3).unwrap();
    assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(first[0].cdr.as_ref(), Some(&cdrs[0]));
    assert_eq!(first[1].cdr.as_ref(), Some(&changed));
    let rest = store.outbox_peek(Some(2), 100).unwrap();
    assert_eq!(rest.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(
        (rest[2].id, rest[2].cdr.as_ref()),
        (changed.id, Some(&changed))
    );
    assert!(store.outbox_peek(None, 0).unwrap().is_empty());

    // Retention may remove a CDR before it ships: its entry stays, to be acknowledged.
    assert_eq!(store.purge_expired(FLUSH).unwrap().cdrs, 1);
    let last = store.outbox_peek(Some(5), 100).unwrap();
    assert_eq!((last[0].id, last[0].cdr.as_ref()), (expired.id, None));

    // Acks remove a prefix; acking again or below it changes nothing.
    submit_all(&store, [WriteOp::AckOutbox(2), WriteOp::AckOutbox(1)]);
    assert_eq!(seqs(&store, None), [3, 4, 5, 6]);
    assert_eq!(store.outbox_stats().unwrap().depth, 4);
    submit_all(&store, [WriteOp::AckOutbox(6)]);
    assert_eq!(store.outbox_stats().unwrap(), Default::default());

    // The backfill walk: every CDR once, oldest first, in pages.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = store.cdrs_ascending(after, 2).unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        walked.extend(page.iter().map(|c| c.id));
    }
    let mut expected: Vec<CdrId> = cdrs.iter().map(|c| c.id).collect();
    expected.sort();
    assert_eq!(walked, expected);
}

fn outbox_survives_reopen_and_never_reuses_a_seq(engine: Engine) {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    let one = |i: i64| {
        cdr(
            UnixMs(t.0 - 1_000 + i),
            &format!("r{i}"),
            "1",
            "2",
            true,
            true,
        )
    };
    {
        let store = Store::open(dir.path(), engine, outbox_cfg(true)).unwrap();
        put_all(&store, &[one(0), one(1), one(2)]);
        submit_all(
            &store,
            [
                WriteOp::AckOutbox(0),
                WriteOp::PutSinkState("postgres".into(), b"cursor-1".to_vec()),
            ],
        );
        assert_eq!(
            store.sink_state("postgres").unwrap().as_deref(),
            Some(&b"cursor-1"[..])
        );
        assert_eq!(store.sink_state("other").unwrap(), None);
    }
    {
        let store = Store::open(dir.path(), engine, outbox_cfg(true)).unwrap();
        assert_eq!(seqs(&store, None), [1, 2]);
        assert_eq!(
            store.sink_state("postgres").unwrap().as_deref(),
            Some(&b"cursor-1"[..])
        );
        submit_all(&store, [WriteOp::AckOutbox(2)]);
        put_all(&store, &[one(3)]);
        // A drained outbox goes on numbering: a sink remembers the last seq it acked.
        assert_eq!(seqs(&store, Some(2)), [3]);
    }
    {
        // Without a sink nothing is queued, and what sinks saved is forgotten so that the
        // next one backfills what this run wrote.
        let store = Store::open(dir.path(), engine, outbox_cfg(false)).unwrap();
        put_all(&store, &[one(4)]);
        assert_eq!(seqs(&store, None), [3]);
        assert_eq!(store.sink_state("postgres").unwrap(), None);
    }
}
