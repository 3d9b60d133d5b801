//! The CDR interface on a large store (issue 5): 10 million generated CDRs over 90 days
//! (`SIPEDGE_BENCH_CDRS` to change the number), served by the real `sipedge` binary, queried
//! over HTTP from this process:
//!
//! - the first page of a one-day query (target < 20 ms);
//! - the same filtered by a caller prefix (< 20 ms);
//! - statistics of a 31-day interval (< 100 ms);
//! - a CSV export of about 1 million rows (≥ 200,000 rows/s), with the server's resident
//!   memory sampled during the export (it must stay flat).
//!
//! The seeded store is kept under cargo's target tmp dir and reused by later runs.
//! Run: `cargo bench --bench api_query`.
#![allow(clippy::unwrap_used)] // a bench that cannot unwrap has failed

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use sipedge_store::{Engine, Store, StoreConfig, UnixMs, WriteOp};
use support::seed;

const ZONE: Tz = chrono_tz::Asia::Shanghai;
const DAY_MS: i64 = 86_400_000;
const DAYS: i64 = 90;
/// Calls generated and submitted between two flushes, so the write queue stays small.
const SEED_CHUNK: u64 = 100_000;

/// 00:00 tomorrow in Shanghai: the end of the seeded 90 days, so that "today" has data.
fn seed_end() -> UnixMs {
    let date = Utc::now().with_timezone(&ZONE).date_naive() + chrono::Duration::days(1);
    UnixMs(
        ZONE.from_local_datetime(&date.and_time(NaiveTime::MIN))
            .single()
            .unwrap()
            .timestamp_millis(),
    )
}

/// Seeds `n` calls over the 90 days before `end` unless a previous run did; returns `end`
/// of the seeded data.
fn seed_store(dir: &Path, n: u64) -> UnixMs {
    let marker = dir.join("seeded-end");
    if let Ok(text) = std::fs::read_to_string(&marker) {
        println!("reusing the seeded store in {}", dir.display());
        return UnixMs(text.trim().parse().unwrap());
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let end = seed_end();
    let from = end.0 - DAYS * DAY_MS;
    let store = Store::open(dir, Engine::Redb, StoreConfig::default()).unwrap();
    let writer = store.writer();
    let chunks = n.div_ceil(SEED_CHUNK);
    let span = (end.0 - from) / chunks as i64;
    let began = Instant::now();
    for k in 0..chunks {
        let count = SEED_CHUNK.min(n - k * SEED_CHUNK);
        let chunk_from = UnixMs(from + k as i64 * span);
        for cdr in seed::cdrs("bench-01", chunk_from, span, count, 1000 + k) {
            writer.submit(WriteOp::PutCdr(Box::new(cdr))).unwrap();
        }
        store.flush(Duration::from_secs(600)).unwrap();
        if (k + 1) % 10 == 0 {
            let done = (k + 1) * SEED_CHUNK;
            println!(
                "  seeded {done} CDRs in {:.0} s ({:.0}/s)",
                began.elapsed().as_secs_f64(),
                done as f64 / began.elapsed().as_secs_f64()
            );
        }
    }
    drop(store);
    println!(
        "seeded {n} CDRs over {DAYS} days in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    std::fs::write(&marker, end.0.to_string()).unwrap();
    end
}

/// `YYYYMMDDhhmmss` in Shanghai.
fn compact(t: i64) -> String {
    ZONE.timestamp_millis_opt(t)
        .single()
        .unwrap()
        .format("%Y%m%d%H%M%S")
        .to_string()
}

/// One GET whose body is read to the end; panics unless it is a 200.
fn get(addr: SocketAddr, path: &str) -> usize {
    let reply = support::http(addr, "GET", path, "");
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply.body.len()
}

/// Runs `f` `times` times after two warm-up runs; prints min, median and max.
fn measure(what: &str, times: usize, mut f: impl FnMut(usize)) -> Duration {
    f(times);
    f(times + 1);
    let mut took: Vec<Duration> = (0..times)
        .map(|i| {
            let t = Instant::now();
            f(i);
            t.elapsed()
        })
        .collect();
    took.sort();
    let median = took[took.len() / 2];
    println!(
        "{what}: median {:.2} ms, min {:.2} ms, max {:.2} ms ({times} runs)",
        median.as_secs_f64() * 1e3,
        took[0].as_secs_f64() * 1e3,
        took[took.len() - 1].as_secs_f64() * 1e3
    );
    median
}

/// A field of `/proc/PID/status` in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Streams a CSV export, counting its rows without keeping them.
fn export(addr: SocketAddr, path: &str) -> u64 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::with_capacity(1 << 20, stream);
    let mut line = Vec::new();
    let mut rows = 0u64;
    // Chunk-size lines and the chunks' own line ends have no comma; every CSV line has.
    while reader.read_until(b'\n', &mut line).unwrap() > 0 {
        if line.starts_with(b"HTTP/1.1 ") {
            assert!(line.starts_with(b"HTTP/1.1 200"), "{line:?}");
        }
        if line.contains(&b',') {
            rows += 1;
        }
        line.clear();
    }
    rows - 1
}

fn main() {
    let n: u64 = std::env::var("SIPEDGE_BENCH_CDRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("api-bench-{n}"));
    let end = seed_store(&dir, n).0;

    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("sipedge.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"bench-01\"\ntimezone = \"Asia/Shanghai\"\ndata_dir = \"{}\"\n\
             [account]\nlisten = \"127.0.0.1:0\"\nappids = [\"a\"]\naccount = \"s\"\n\
             [api]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn,sipedge=info\"\n",
            dir.display()
        ),
    )
    .unwrap();
    let se = support::Sipedge::start_file(&config, config_dir);
    let addr = se.addr("api");
    let pid = se.pid();
    println!("{n} CDRs over {DAYS} days; sipedge pid {pid} on {addr}");

    // Different days each run, so no run answers from a page cache the previous warmed.
    let day = |i: usize| {
        let start = end - DAY_MS * (2 + (i as i64 % 60));
        (compact(start), compact(start + DAY_MS))
    };
    measure("first page of a one-day query (limit 100)", 40, |i| {
        let (s, e) = day(i);
        get(addr, &format!("/api/cdrs?start={s}&end={e}"));
    });
    measure("first page of a one-day query, caller=1391*", 40, |i| {
        let (s, e) = day(i);
        get(addr, &format!("/api/cdrs?start={s}&end={e}&caller=1391*"));
    });
    measure("first page of a one-day query, caller=13915*", 40, |i| {
        let (s, e) = day(i);
        get(addr, &format!("/api/cdrs?start={s}&end={e}&caller=13915*"));
    });
    measure("stats of a 31-day interval", 20, |i| {
        let start = end - DAY_MS * (32 + (i as i64 % 50));
        let (s, e) = (compact(start), compact(start + 31 * DAY_MS));
        get(addr, &format!("/api/stats?start={s}&end={e}"));
    });
    measure("stats of a 31-day interval, caller=1391*", 10, |i| {
        let start = end - DAY_MS * (32 + (i as i64 % 50));
        let (s, e) = (compact(start), compact(start + 31 * DAY_MS));
        get(addr, &format!("/api/stats?start={s}&end={e}&caller=1391*"));
    });

    // About a million rows: as many days as hold them.
    let days = ((1_000_000 * DAYS as u64).div_ceil(n) as i64).clamp(1, DAYS - 1);
    let start = end - DAY_MS * (days + 1);
    let path = format!(
        "/api/cdrs.csv?start={}&end={}",
        compact(start),
        compact(start + days * DAY_MS)
    );
    // The same export twice: the first fills the store's page cache, so memory that grows
    // again in the second would be the export's own.
    for pass in ["first", "second"] {
        let before = status_kb(pid, "VmRSS:");
        let peak = Arc::new(AtomicU64::new(before));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (peak, done) = (peak.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(status_kb(pid, "VmRSS:"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let t = Instant::now();
        let rows = export(addr, &path);
        let took = t.elapsed();
        done.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        let after = status_kb(pid, "VmRSS:");
        println!(
            "CSV export of {rows} rows ({days} days, {pass} pass): {:.2} s, {:.0} rows/s; \
             server RSS {} MiB before, peak {} MiB during, {} MiB after",
            took.as_secs_f64(),
            rows as f64 / took.as_secs_f64(),
            before / 1024,
            peak.load(Ordering::Relaxed) / 1024,
            after / 1024
        );
    }
}
