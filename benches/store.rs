//! Store benchmarks on both engines: CDR inserts per second with all indexes and 10 log
//! entries per call, bytes on disk per CDR and per log entry, time to open a store of N CDRs,
//! and the query latencies the API needs (SPEC §6, issues 4 and 5).
//!
//! `cargo bench --bench store`; `SIPEDGE_BENCH_CDRS` (default 1000000) sets N, spread over
//! N / 111111 days, the density of the 10-million-over-90-days target;
//! `SIPEDGE_BENCH_ENGINES` (default `redb,sled`) picks the engines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use sipedge_store::{
    CallStatus, CallType, Cdr, CdrFilter, CdrId, Direction, Disposition, EndedBy, Engine, LogEntry,
    LogKind, NumberMatch, Source, Store, StoreConfig, Transport, UnixMs, WriteOp,
};

// The allocator sipedge runs with (src/main.rs), so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000 - 8 * 3_600_000; // 2026-01-01 00:00 at +08:00
const FLUSH: Duration = Duration::from_secs(600);

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// The `k`th of the callers: 11-digit mobile numbers whose digits after "13" are spread
/// evenly (a splitmix64 hash of `k`), so "1385" matches about 1% of calls.
fn caller_number(k: u64) -> String {
    let mut z = k.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("13{:09}", (z ^ (z >> 31)) % 1_000_000_000)
}

/// A realistic CDR: callers are 100,000 mobile numbers (so a 4-digit prefix matches ~1% of
/// calls and each number has a few calls), called numbers a handful of service lines.
fn make_cdr(rng: &mut Rng, i: u64, start: UnixMs) -> Cdr {
    let caller = caller_number(rng.below(100_000));
    let called = ["95566", "95588", "4006695566", "4008895588"][rng.below(4) as usize];
    let video = rng.below(3) == 0;
    let connected = rng.below(5) != 0;
    let call_id = format!(
        "{:016x}-{i}@192.0.2.{}",
        rng.below(u64::MAX),
        rng.below(250)
    );
    let ring = start.0 + 300 + rng.below(2_000) as i64;
    let answer = ring + 1_000 + rng.below(10_000) as i64;
    let end = if connected {
        answer + rng.below(600_000) as i64
    } else {
        ring + 20_000
    };
    Cdr {
        id: CdrId::new(start, "sh-01", &call_id),
        node: "sh-01".into(),
        call_id,
        caller: caller.clone(),
        called: called.into(),
        caller_uri: format!("sip:{caller}@12.8.64.34:14500"),
        called_uri: format!("sip:{called}@10.0.0.5:14500"),
        call_type: if video {
            CallType::Video
        } else {
            CallType::Audio
        },
        video_started_at: video.then_some(UnixMs(answer)),
        status: if connected {
            CallStatus::Connected
        } else {
            CallStatus::NotConnected
        },
        disposition: if connected {
            Disposition::Answered
        } else {
            Disposition::NoAnswer
        },
        sip_code: Some(if connected { 200 } else { 480 }),
        ended_by: EndedBy::Caller,
        start_time: start,
        ring_time: Some(UnixMs(ring)),
        answer_time: connected.then_some(UnixMs(answer)),
        end_time: UnixMs(end),
        transport: Transport::Udp,
        source: Source::Proxy,
        terminal: format!(
            "203.0.113.{}:{}",
            rng.below(250),
            20_000 + rng.below(40_000)
        ),
    }
}

/// The ten log entries of a call: realistic SIP text (average 551 bytes), alternately
/// received and sent.
fn call_log(cdr: &Cdr, n: u64) -> Vec<LogEntry> {
    call_messages(n, &cdr.caller, &cdr.called)
        .into_iter()
        .enumerate()
        .map(|(i, text)| LogEntry {
            at: UnixMs(cdr.start_time.0 + i as i64 * 200),
            kind: LogKind::Sip {
                direction: if i % 2 == 0 {
                    Direction::Received
                } else {
                    Direction::Sent
                },
                transport: Transport::Udp,
                src: "203.0.113.9:40000".parse().unwrap(),
                dst: "10.0.0.2:14500".parse().unwrap(),
                text: text.into(),
            },
        })
        .collect()
}

/// The ten log entries of an answered video call through sipedge, as real-looking SIP text.
fn call_messages(n: u64, caller: &str, called: &str) -> Vec<Vec<u8>> {
    let call_id = format!(
        "{:016x}{:08x}@192.168.1.{}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        n as u32 ^ 0x5bd1_e995,
        n % 250
    );
    let ftag = format!("{:08x}", n.wrapping_mul(2_654_435_761) as u32);
    let ttag = format!("as{:08x}", n.wrapping_mul(40_503) as u32);
    let term = format!("203.0.113.{}:{}", n % 250, 20_000 + n % 40_000);
    let b1 = format!("z9hG4bK{:010}", n.wrapping_mul(97));
    let b2 = format!("z9hG4bKse{:x}", n.wrapping_mul(0x2545_f491));
    let sdp = |ip: &str, a: u32, v: u32| {
        format!(
            "v=0\r\no=- {n} {n} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {a} RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\nm=video {v} RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f;packetization-mode=1\r\na=sendrecv\r\n"
        )
    };
    let osdp = sdp(
        "203.0.113.9",
        30_000 + (n % 1000) as u32 * 2,
        31_000 + (n % 1000) as u32 * 2,
    );
    let asdp = sdp(
        "10.0.0.5",
        40_000 + (n % 1000) as u32 * 2,
        41_000 + (n % 1000) as u32 * 2,
    );
    let via_t = format!("Via: SIP/2.0/UDP {term};rport;branch={b1}\r\n");
    let via_s = format!("Via: SIP/2.0/UDP 12.8.64.34:14500;branch={b2}\r\n");
    let from = format!("From: <sip:{caller}@12.8.64.34:14500>;tag={ftag}\r\n");
    let to = format!("To: <sip:{called}@12.8.64.34:14500>\r\n");
    let to_t = format!("To: <sip:{called}@12.8.64.34:14500>;tag={ttag}\r\n");
    let cid = format!("Call-ID: {call_id}\r\n");
    let rr = "Record-Route: <sip:12.8.64.34:14500;lr>\r\n";
    let ua = "User-Agent: BankApp/5.2.1 (Android 14)\r\n";
    let server = "Server: Sipserver 3.4\r\n";
    let contact_t = format!("Contact: <sip:{caller}@{term};transport=udp>\r\n");
    let contact_s = format!("Contact: <sip:{called}@10.0.0.5:14500>\r\n");
    let body = |s: &str| {
        format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{s}",
            s.len()
        )
    };
    let none = "Content-Length: 0\r\n\r\n";
    let invite = |extra: &str| {
        format!(
            "INVITE sip:{called}@12.8.64.34:14500 SIP/2.0\r\n{extra}{via_t}Max-Forwards: 70\r\n{from}{to}{cid}CSeq: 2 INVITE\r\n{contact_t}Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\nSupported: timer, replaces\r\nSession-Expires: 1800\r\n{ua}{}",
            body(&osdp)
        )
    };
    let resp = |status: &str, extra: &str, tail: &str, with_to: &str| {
        format!("SIP/2.0 {status}\r\n{extra}{via_t}{from}{with_to}{cid}CSeq: 2 INVITE\r\n{tail}")
    };
    let ack = |extra: &str| {
        format!(
            "ACK sip:{called}@10.0.0.5:14500 SIP/2.0\r\n{extra}{via_t}Max-Forwards: 70\r\n{from}{to_t}{cid}CSeq: 2 ACK\r\n{none}"
        )
    };
    vec![
        invite(""),
        invite(&via_s),
        resp("100 Trying", &via_s, none, &to),
        resp("180 Ringing", &via_s, &format!("{rr}{contact_s}{server}{none}"), &to_t),
        resp("180 Ringing", "", &format!("{rr}{contact_s}{server}{none}"), &to_t),
        resp("200 OK", &via_s, &format!("{rr}{contact_s}{server}{}", body(&asdp)), &to_t),
        resp("200 OK", "", &format!("{rr}{contact_s}{server}{}", body(&asdp)), &to_t),
        ack(""),
        ack(&via_s),
        format!("BYE sip:{called}@10.0.0.5:14500 SIP/2.0\r\n{via_t}Max-Forwards: 70\r\n{from}{to_t}{cid}CSeq: 3 BYE\r\n{ua}{none}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect()
}

fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            disk_bytes(&entry.path())
        } else {
            meta.blocks() * 512
        };
    }
    total
}

fn rss_kb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used so far by the live store writer threads: a figure the other programs on
/// a shared machine do not move, unlike the wall-clock rates.
fn writer_cpu_secs() -> f64 {
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "sipedge-store" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // After the parenthesised name, utime and stime are the 12th and 13th fields.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        for i in [11, 12] {
            ticks += fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ticks as f64 / 100.0
}

/// Bytes this process caused to be written to disk so far.
fn written_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn cfg() -> StoreConfig {
    StoreConfig::default()
}

/// Median and worst of `runs` timings of `f`, in ms.
fn time_ms(runs: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    let mut t: Vec<f64> = (0..runs)
        .map(|i| {
            let start = Instant::now();
            f(i);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[t.len() - 1])
}

fn insert_with_logs(engine: Engine, calls: u64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), engine, cfg()).unwrap();
    let w = store.writer();
    let mut rng = Rng(11);
    let written = written_bytes();
    let started = Instant::now();
    let mut logs = 0u64;
    for i in 0..calls {
        let cdr = make_cdr(&mut rng, i, UnixMs(T0 + i as i64 * 50));
        w.submit(WriteOp::PutCall(cdr.id, vec![0; 200])).unwrap();
        for entry in call_log(&cdr, i) {
            w.submit(WriteOp::AppendLog(cdr.id, entry)).unwrap();
            logs += 1;
        }
        w.submit(WriteOp::PutCdr(Box::new(cdr))).unwrap();
    }
    store.flush(FLUSH).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let cpu = writer_cpu_secs();
    let stats = store.writer_stats();
    println!(
        "{engine:?}: {calls} calls with indexes, call-in-progress put/remove and {logs} log entries: \
         {:.0} CDR/s ({:.0} log entries/s), {} batches, last commit {:?}, {:.0} MB written to disk",
        calls as f64 / secs,
        logs as f64 / secs,
        stats.batches,
        stats.last_commit,
        (written_bytes() - written) as f64 / 1e6
    );
    println!(
        "   writer thread CPU: {:.1} s, {:.0} µs per call with its logs, so {:.0} calls/s per core if the disk keeps up",
        cpu,
        cpu * 1e6 / calls as f64,
        calls as f64 / cpu.max(0.01)
    );
    drop(store);
    disk_bytes(dir.path())
}

fn main() {
    let n: u64 = std::env::var("SIPEDGE_BENCH_CDRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let engines: Vec<Engine> = std::env::var("SIPEDGE_BENCH_ENGINES")
        .unwrap_or_else(|_| "redb,sled".into())
        .split(',')
        .map(|e| {
            if e.trim() == "sled" {
                Engine::Sled
            } else {
                Engine::Redb
            }
        })
        .collect();
    let days = (n / 111_111).max(1) as i64;
    println!(
        "N = {n} CDRs over {days} days ({} per day)",
        n as i64 / days
    );
    for engine in engines {
        println!("== {engine:?}");
        let log_calls = 20_000;
        let with_logs = insert_with_logs(engine, log_calls);

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), engine, cfg()).unwrap();
        let w = store.writer();
        let mut rng = Rng(5);
        let step = days * DAY / n as i64;
        let started = Instant::now();
        for i in 0..n {
            let start = UnixMs(T0 + i as i64 * step + rng.below(step as u64) as i64);
            w.submit(WriteOp::PutCdr(Box::new(make_cdr(&mut rng, i, start))))
                .unwrap();
        }
        store.flush(FLUSH).unwrap();
        let secs = started.elapsed().as_secs_f64();
        let cpu = writer_cpu_secs();
        println!(
            "insert {n} CDRs (all indexes, no logs): {:.0} CDR/s; writer thread CPU {:.0} µs per CDR",
            n as f64 / secs,
            cpu * 1e6 / n as f64
        );
        drop(store);
        let bytes = disk_bytes(dir.path());
        let per_cdr = bytes as f64 / n as f64;
        println!(
            "disk: {:.1} MB, {per_cdr:.0} bytes per CDR with its indexes and rollups",
            bytes as f64 / 1e6
        );
        let log_bytes = with_logs as f64 - per_cdr * log_calls as f64;
        println!(
            "disk with logs: {:.1} MB for {log_calls} calls; {:.0} bytes per log entry (SIP text averages 551 bytes)",
            with_logs as f64 / 1e6,
            log_bytes / (log_calls as f64 * 10.0)
        );

        let opened = Instant::now();
        let store = Store::open(dir.path(), engine, cfg()).unwrap();
        println!(
            "open a store of {n} CDRs: {:.1} ms",
            opened.elapsed().as_secs_f64() * 1e3
        );

        let day_filter =
            |d: i64| CdrFilter::between(UnixMs(T0 + d * DAY), UnixMs(T0 + (d + 1) * DAY));
        let (med, max) = time_ms(20, |i| {
            let (page, _) = store
                .cdrs_page(&day_filter(i as i64 % days), None, 100)
                .unwrap();
            assert_eq!(page.len(), 100);
        });
        println!("first page (100) of a one-day query: median {med:.2} ms, max {max:.2} ms");
        let mut rows = 0;
        let (med, max) = time_ms(20, |i| {
            let mut f = day_filter(i as i64 % days);
            f.caller = Some(NumberMatch::Prefix(format!("13{}5", i % 10)));
            rows += store.cdrs_page(&f, None, 100).unwrap().0.len();
        });
        println!(
            "first page of a one-day query, caller prefix (~1% of calls) ({} rows/page): median {med:.2} ms, max {max:.2} ms",
            rows / 20
        );
        let mut rows = 0;
        let (med, max) = time_ms(20, |i| {
            let mut f = day_filter(i as i64 % days);
            f.caller = Some(NumberMatch::Prefix(format!("13{}{}", i % 10, i % 7)));
            f.status = Some(CallStatus::NotConnected);
            f.call_type = Some(CallType::Video);
            rows += store.cdrs_page(&f, None, 100).unwrap().0.len();
        });
        println!(
            "first page of a one-day query, caller prefix (~1%) + video + not connected ({} rows/page): median {med:.2} ms, max {max:.2} ms",
            rows / 20
        );
        let mut rows = 0;
        let (med, max) = time_ms(20, |i| {
            let mut f = day_filter(i as i64 % days);
            f.caller = Some(NumberMatch::Exact(caller_number(i as u64 * 997)));
            rows += store.cdrs_page(&f, None, 100).unwrap().0.len();
        });
        println!(
            "first page of a one-day query, exact caller ({} rows/page): median {med:.2} ms, max {max:.2} ms",
            rows / 20
        );
        let mut rows = 0;
        let (med, max) = time_ms(20, |i| {
            let mut f = day_filter(i as i64 % days);
            f.call_type = Some(CallType::Video);
            f.status = Some(CallStatus::NotConnected);
            rows += store.cdrs_page(&f, None, 100).unwrap().0.len();
        });
        println!(
            "first page of a one-day query, video + not connected ({} rows/page): median {med:.2} ms, max {max:.2} ms",
            rows / 20
        );

        // 31 local days ending after the data, daily buckets, ragged start and end.
        let month = CdrFilter::between(UnixMs(T0 + 61_000), UnixMs(T0 + 31 * DAY - 29_000));
        let daily: Vec<UnixMs> = std::iter::once(month.start)
            .chain((1..31).map(|d| UnixMs(T0 + d * DAY)))
            .chain(std::iter::once(month.end))
            .collect();
        let mut counted = 0;
        let (med, max) = time_ms(10, |_| {
            counted = store.stats(&month, &daily).unwrap().totals.all().calls;
        });
        println!(
            "stats of 31 days, daily buckets ({counted} calls): median {med:.2} ms, max {max:.2} ms"
        );
        let mut video = month.clone();
        video.call_type = Some(CallType::Video);
        let (med, max) = time_ms(10, |_| {
            black_box(store.stats(&video, &daily).unwrap());
        });
        println!("stats of 31 days, video only: median {med:.2} ms, max {max:.2} ms");
        let mut prefix = month.clone();
        prefix.caller = Some(NumberMatch::Prefix("1385".into()));
        let mut counted = 0;
        let (med, max) = time_ms(5, |_| {
            counted = store.stats(&prefix, &daily).unwrap().totals.all().calls;
        });
        println!(
            "stats of 31 days, caller prefix (~1%, {counted} calls): median {med:.2} ms, max {max:.2} ms"
        );
        let hourly: Vec<UnixMs> = (0..=24).map(|h| UnixMs(T0 + h * 3_600_000)).collect();
        let (med, max) = time_ms(10, |_| {
            black_box(store.stats(&day_filter(0), &hourly).unwrap());
        });
        println!("stats of one day, hourly buckets: median {med:.2} ms, max {max:.2} ms");

        let rss_before = rss_kb("VmRSS:");
        let all = CdrFilter::between(UnixMs(T0), UnixMs(T0 + days * DAY + DAY));
        let started = Instant::now();
        let mut rows = 0u64;
        let mut line = Vec::with_capacity(512);
        let mut peak = 0;
        for batch in store.cdrs_batches(all, 1_000) {
            for cdr in batch.unwrap() {
                line.clear();
                write!(
                    line,
                    "{},{},{},{},{},{},{:?},{:?},{},{}\r\n",
                    cdr.id,
                    cdr.node,
                    cdr.call_id,
                    cdr.caller,
                    cdr.called,
                    cdr.caller_uri,
                    cdr.call_type,
                    cdr.status,
                    cdr.start_time.0,
                    cdr.talk_s()
                )
                .unwrap();
                black_box(&line);
                rows += 1;
            }
            if rows.is_multiple_of(100_000) {
                peak = peak.max(rss_kb("VmRSS:"));
            }
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(rows, n);
        println!(
            "export of {rows} rows newest first (batches of 1000, formatted): {:.0} rows/s; RSS {} MB before, at most {} MB during",
            rows as f64 / secs,
            rss_before / 1024,
            peak.max(rss_kb("VmRSS:")) / 1024
        );
    }
}
