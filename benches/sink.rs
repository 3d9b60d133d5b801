//! The PostgreSQL sink's cost and speed (issue 12), with the real `sipedge` binary and a
//! throw-away PostgreSQL server (tests/support/postgres.rs, etc/sql/postgres.sql):
//!
//! - drain: a store with N CDRs waiting in its outbox (default 100,000), the sink started on
//!   it (batch 1000): the time until the database has them all, and CDRs/s (target ≥ 20,000);
//! - backfill: the same N CDRs in a store that never had a sink, `backfill_rate` out of the
//!   way: the backfill's CDRs/s;
//! - SIP relay CPU per call: SIPp calls at a fixed rate through sipedge, its user + system
//!   CPU from /proc/PID/stat divided by the calls, with the sink off and on.
//!
//! Measured on the 2-core development machine (shared, load 3–6), PostgreSQL 15 with the
//! harness's settings: drain 18,489 CDRs/s (100,000 in 5.41 s, pool 2; the same rows in one
//! server-side `INSERT … SELECT FROM generate_series` take 5.1 s, so the database is the
//! limit), backfill 14,873 CDRs/s, SIP CPU per call 475 µs off / 513 µs on (+8 %).
//!
//! `cargo bench --bench sink`; `SIPEDGE_BENCH_CDRS` sets N, `SIPEDGE_BENCH_CALLS` the calls
//! per CPU run (default 6,000 at 300/s), `SIPEDGE_BENCH_POOL` the pool size (default 2).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use sipedge_store::{Engine, Store, StoreConfig, UnixMs, WriteOp};
use support::Sipedge;
use support::config::{Config, Sip, quote};
use support::postgres::Postgres;
use support::seed;
use support::sipp::{Pair, Transport};

const ROLE: &str = "sipedge";
const PASSWORD: &str = "bench";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fresh_database(pg: &Postgres, name: &str) {
    pg.create_database(name);
    pg.apply_schema(name);
    pg.psql(
        name,
        &format!(
            "GRANT SELECT, INSERT, UPDATE ON cdr TO {ROLE}; GRANT SELECT ON sipedge_schema_version TO {ROLE};"
        ),
    );
}

fn sink_config(config: Config, pg: &Postgres, db: &str, dir: &Path) -> Config {
    let file = dir.join("pg-password");
    std::fs::write(&file, PASSWORD).unwrap();
    config
        .set(
            "sink.postgres",
            "url",
            &quote(&format!("postgres://{ROLE}@127.0.0.1:{}/{db}", pg.port())),
        )
        .set(
            "sink.postgres",
            "password_file",
            &quote(&file.display().to_string()),
        )
        .set("sink.postgres", "batch_size", "1000")
        .set(
            "sink.postgres",
            "pool_size",
            &env_u64("SIPEDGE_BENCH_POOL", 2).to_string(),
        )
        .set("sink.postgres", "backfill_rate", "10000000")
}

fn count(pg: &Postgres, db: &str) -> u64 {
    pg.psql(db, "SELECT count(*) FROM cdr;")
        .trim()
        .parse()
        .unwrap()
}

/// Writes the CDRs into a store under `data_dir`, queued in the outbox when `outbox`.
fn seed_store(data_dir: &Path, n: u64, outbox: bool) {
    std::fs::create_dir_all(data_dir).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let cdrs = seed::cdrs("bench", UnixMs(now - 86_400_000), 86_000_000, n, 42);
    let store = Store::open(
        data_dir,
        Engine::Redb,
        StoreConfig {
            outbox,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let writer = store.writer();
    if outbox {
        writer
            .submit(WriteOp::PutSinkState(
                "postgres".into(),
                br#"{"after":null,"done":true}"#.to_vec(),
            ))
            .unwrap();
    }
    for chunk in cdrs.chunks(20_000) {
        for cdr in chunk {
            writer
                .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
                .unwrap();
        }
        store.flush(Duration::from_secs(300)).unwrap();
    }
}

/// Starts sipedge on a seeded store and times until the database holds all `n` rows.
fn time_shipping(pg: &Postgres, db: &str, n: u64, outbox: bool) -> Duration {
    fresh_database(pg, db);
    let dir = tempfile::tempdir().unwrap();
    seed_store(&dir.path().join("data"), n, outbox);
    let config = sink_config(Config::new("bench"), pg, db, dir.path());
    let path = config.write(dir.path());
    let started = Instant::now();
    let se = Sipedge::start_file(&path, dir);
    while count(pg, db) < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not shipped in 10 minutes\n{}",
            se.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// sipedge's user + system CPU seconds so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = procfs::process::Process::new(pid as i32)
        .unwrap()
        .stat()
        .unwrap();
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

/// CPU µs per call of `calls` SIPp calls at `rate`/s through sipedge, sink on or off.
fn cpu_per_call(pg: &Postgres, sink: bool, calls: u32, rate: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new("bench").sip(Sip::one_port());
    if sink {
        let db = "cpu";
        fresh_database(pg, db);
        config = sink_config(config, pg, db, dir.path());
    }
    let path = config.write(dir.path());
    let sip = config.sip_side().unwrap();
    let se = Sipedge::start_file(&path, dir);
    // Warm-up: connections, caches, the first redb pages.
    Pair::new("call", Transport::Udp, 200)
        .rate(rate)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_seconds(se.pid());
    Pair::new("call", Transport::Udp, calls)
        .rate(rate)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    // Let the last CDRs be stored (and shipped) so their cost is counted.
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(se.pid()) - before;
    if sink {
        assert!(count(pg, "cpu") >= u64::from(calls), "{}", se.report());
    }
    used / f64::from(calls) * 1e6
}

fn main() {
    let n = env_u64("SIPEDGE_BENCH_CDRS", 100_000);
    let calls = env_u64("SIPEDGE_BENCH_CALLS", 6_000) as u32;
    let rate = 300;
    let pg = Postgres::start();
    pg.create_login_role(ROLE, PASSWORD);

    let drain = time_shipping(&pg, "drain", n, true);
    println!(
        "outbox drain: {n} CDRs in {:.2} s = {:.0} CDRs/s (batch 1000, pool {})",
        drain.as_secs_f64(),
        n as f64 / drain.as_secs_f64(),
        env_u64("SIPEDGE_BENCH_POOL", 2)
    );
    let backfill = time_shipping(&pg, "backfill", n, false);
    println!(
        "backfill: {n} CDRs in {:.2} s = {:.0} CDRs/s (batch 1000, rate unlimited)",
        backfill.as_secs_f64(),
        n as f64 / backfill.as_secs_f64()
    );
    let off = cpu_per_call(&pg, false, calls, rate);
    let on = cpu_per_call(&pg, true, calls, rate);
    println!(
        "sipedge CPU per call ({calls} calls at {rate}/s over UDP): sink off {off:.0} µs, sink on {on:.0} µs ({:+.1} %)",
        (on - off) / off * 100.0
    );
}
