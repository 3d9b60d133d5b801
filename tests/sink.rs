//! The PostgreSQL sink (issue 12) end to end: a real `sipedge serve` with `[sink.postgres]`,
//! a real PostgreSQL server (tests/support/postgres.rs) with the shipped schema, SIPp calls
//! or seeded stores, and the rows read back with psql and compared with the API's CDRs.
//!
//! Needs PostgreSQL 14+ and `sipp` (tests/setup.sh installs both).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sipedge_store::{Engine, Store, StoreConfig, UnixMs, WriteOp};
use support::Sipedge;
use support::cdrs::{self, ms};
use support::config::{Config, Sip, quote};
use support::http::get_json;
use support::postgres::Postgres;
use support::seed::{self, Seed};
use support::sipp::{Pair, Transport};
use support::{http, sipedge, wait_until};

const DB: &str = "cdr";
const ROLE: &str = "sipedge";
const PASSWORD: &str = "correct horse";
/// How long shipped CDRs may take to show in the database on a busy box.
const SHIP_WAIT: Duration = Duration::from_secs(60);

/// A server with the `cdr` database, the schema applied, and the login role the sink uses
/// with the privileges etc/sql/README.md grants.
fn database() -> Postgres {
    let pg = Postgres::start();
    pg.create_database(DB);
    pg.apply_schema(DB);
    pg.create_login_role(ROLE, PASSWORD);
    pg.psql(
        DB,
        &format!(
            "GRANT SELECT, INSERT, UPDATE ON cdr TO {ROLE}; GRANT SELECT ON sipedge_schema_version TO {ROLE};"
        ),
    );
    pg
}

/// The sink's config pointing at `pg`, with the password in a file under `dir`.
fn with_sink(config: Config, pg: &Postgres, dir: &Path, password: &str) -> Config {
    let file = dir.join(format!("pg-password-{}", std::process::id()));
    std::fs::write(&file, format!("{password}\n")).expect("write the password file");
    config
        .set(
            "sink.postgres",
            "url",
            &quote(&format!("postgres://{ROLE}@127.0.0.1:{}/{DB}", pg.port())),
        )
        .set(
            "sink.postgres",
            "password_file",
            &quote(&file.display().to_string()),
        )
        .set("sink.postgres", "connect_timeout", "\"2s\"")
        .set("store", "flush_interval", "\"20ms\"")
}

/// Every row of `cdr`, by id, with times as ms since the epoch.
fn rows(pg: &Postgres) -> HashMap<String, Value> {
    let ms = |c: &str| format!("'{c}', (extract(epoch FROM {c}) * 1000)::bigint");
    let fields = [
        "'id', id".to_owned(),
        "'node', node".to_owned(),
        "'call_id', call_id".to_owned(),
        "'caller', caller".to_owned(),
        "'called', called".to_owned(),
        "'caller_uri', caller_uri".to_owned(),
        "'called_uri', called_uri".to_owned(),
        "'call_type', call_type".to_owned(),
        ms("video_started_at"),
        "'status', status".to_owned(),
        "'disposition', disposition".to_owned(),
        "'sip_code', sip_code".to_owned(),
        "'ended_by', ended_by".to_owned(),
        ms("start_time"),
        ms("ring_time"),
        ms("answer_time"),
        ms("end_time"),
        "'duration_s', duration_s".to_owned(),
        "'transport', transport".to_owned(),
        "'terminal', terminal".to_owned(),
        "'source', source".to_owned(),
        ms("shipped_at"),
    ];
    let sql = format!(
        "SELECT coalesce(json_agg(json_build_object({})), '[]') FROM cdr;",
        fields.join(", ")
    );
    let text = pg.psql(DB, &sql);
    let list: Vec<Value> = serde_json::from_str(text.trim()).expect("psql printed JSON");
    list.into_iter()
        .map(|row| (row["id"].as_str().unwrap_or_default().to_owned(), row))
        .collect()
}

fn count(pg: &Postgres) -> u64 {
    pg.psql(DB, "SELECT count(*) FROM cdr;")
        .trim()
        .parse()
        .expect("a count")
}

/// Waits until the database has `n` rows (fails with both sides' logs otherwise).
fn wait_for_rows(pg: &Postgres, se: &Sipedge, n: u64) {
    if !wait_until(SHIP_WAIT, || count(pg) >= n) {
        panic!(
            "the database has {} rows, {n} expected\n{}\n{}",
            count(pg),
            status_text(se),
            se.report()
        );
    }
}

/// `sipedge sink status --json` of `se`'s config.
fn status(se: &Sipedge) -> (i32, Value) {
    let out = sipedge::run([
        "sink".as_ref(),
        "status".as_ref(),
        "--json".as_ref(),
        "--config".as_ref(),
        se.config_path().as_os_str(),
    ]);
    let code = out.status.code().unwrap_or(-1);
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (code, value)
}

fn status_text(se: &Sipedge) -> String {
    let out = sipedge::run([
        "sink".as_ref(),
        "status".as_ref(),
        "--config".as_ref(),
        se.config_path().as_os_str(),
    ]);
    format!(
        "sink status (exit {:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn metrics(se: &Sipedge) -> String {
    let reply = http(se.addr("api"), "GET", "/metrics", "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// The value of the metric line `name` (with its labels), when present.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn alarm_active(se: &Sipedge, kind: &str) -> Option<bool> {
    let (code, body) = get_json(se.addr("api"), "/api/alarms?limit=1000");
    assert_eq!(code, 200, "{body}");
    body["items"]
        .as_array()?
        .iter()
        .find(|a| a["kind"] == kind)
        .map(|a| a["cleared_at"].is_null())
}

/// Checks that the row is the API's CDR field by field.
fn same_cdr(api: &Value, row: &Value) {
    let id = api["id"].as_str().unwrap_or_default();
    for field in [
        "id",
        "node",
        "call_id",
        "caller",
        "called",
        "caller_uri",
        "called_uri",
        "call_type",
        "status",
        "disposition",
        "sip_code",
        "ended_by",
        "transport",
        "terminal",
        "source",
    ] {
        assert_eq!(
            api[field], row[field],
            "{id}: {field}\napi {api:#}\ndb {row:#}"
        );
    }
    for field in [
        "video_started_at",
        "start_time",
        "ring_time",
        "answer_time",
        "end_time",
    ] {
        assert_eq!(
            ms(api, field),
            row[field].as_i64(),
            "{id}: {field}\napi {api:#}\ndb {row:#}"
        );
    }
    let duration = |v: &Value| match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    };
    let (a, d) = (duration(&api["duration_s"]), duration(&row["duration_s"]));
    assert!(
        matches!((a, d), (Some(a), Some(d)) if (a - d).abs() < 0.0015),
        "{id}: duration_s api {a:?} db {d:?}"
    );
}

/// The calls `Pair` made, by their Call-IDs in the UAC's log.
fn run_calls(se: &Sipedge, case: &str, transport: Transport, calls: u32, rate: u32) {
    let outcome = Pair::new(case, transport, calls)
        .rate(rate)
        .run(se.sip().addr(), se.sip().upstream_addr());
    outcome.assert_passed();
}

#[test]
fn cdrs_of_every_outcome_arrive_with_every_field_the_api_shows() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let se = Sipedge::start(&with_sink(
        Config::new("test").sip(Sip::one_port()),
        &pg,
        dir.path(),
        PASSWORD,
    ));
    let cases = [
        ("call", 200),
        ("callee_bye", 200),
        ("video", 200),
        ("reinvite", 200),
        ("busy", 0),
        ("declined", 0),
        ("noanswer_480", 300),
        ("noanswer_cancel", 300),
        ("cancel", 0),
        ("auth", 0),
    ];
    for (case, pause) in cases {
        for transport in [Transport::Udp, Transport::Tcp] {
            Pair::new(case, transport, 2)
                .pause_ms(pause)
                .run(se.sip().addr(), se.sip().upstream_addr())
                .assert_passed();
        }
    }
    let calls = cases.len() * 4;
    let api = se.addr("api");
    assert!(
        wait_until(SHIP_WAIT, || cdrs::all(api).len() >= calls),
        "{}",
        se.report()
    );
    let listed = cdrs::all(api);
    assert_eq!(listed.len(), calls);
    wait_for_rows(&pg, &se, calls as u64);
    let db = rows(&pg);
    assert_eq!(db.len(), calls, "one row per CDR");
    for cdr in &listed {
        let id = cdr["id"].as_str().unwrap_or_default();
        let row = db
            .get(id)
            .unwrap_or_else(|| panic!("{id} is not in the database"));
        same_cdr(cdr, row);
    }
    let mut dispositions: Vec<&str> = db
        .values()
        .filter_map(|r| r["disposition"].as_str())
        .collect();
    dispositions.sort_unstable();
    dispositions.dedup();
    assert_eq!(
        dispositions,
        ["answered", "busy", "cancelled", "declined", "no_answer"]
    );
    let (code, st) = status(&se);
    assert_eq!(code, 0, "{st:#}");
    // Waited for, not read once: the rows are visible in the database a moment before the
    // sink counts them as shipped and the store's next commit empties the outbox.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let st = status(&se).1;
            st["depth"] == 0 && st["shipped"].as_u64() >= Some(calls as u64)
        }),
        "{}",
        status_text(&se)
    );
    let m = metrics(&se);
    assert!(
        metric(&m, "sipedge_sink_shipped_total") >= Some(calls as f64),
        "{m}"
    );
    assert!(
        metric(&m, "sipedge_sink_last_success_timestamp_seconds") > Some(0.0),
        "{m}"
    );
    assert_eq!(
        metric(&m, "sipedge_sink_errors_total{kind=\"connect\"}"),
        Some(0.0),
        "{m}"
    );
}

#[test]
fn a_database_outage_loses_nothing_duplicates_nothing_and_raises_sink_lag() {
    let mut pg = database();
    let dir = tempfile::tempdir().unwrap();
    let se = Sipedge::start(
        &with_sink(
            Config::new("test").sip(Sip::one_port()),
            &pg,
            dir.path(),
            PASSWORD,
        )
        .set("sink.postgres", "lag_alarm", "\"2s\"")
        .set("monitor", "interval", "\"1s\"")
        .set("monitor", "probe_timeout", "\"300ms\"")
        .set("monitor", "disk_min_free_mb", "0")
        .set("monitor", "disk_min_free_percent", "0.0"),
    );
    run_calls(&se, "call", Transport::Udp, 5, 50);
    wait_for_rows(&pg, &se, 5);
    pg.stop();
    run_calls(&se, "call", Transport::Udp, 500, 50);
    let api = se.addr("api");
    assert!(
        wait_until(SHIP_WAIT, || cdrs::all(api).len() >= 505),
        "{}",
        se.report()
    );
    assert!(
        wait_until(Duration::from_secs(30), || alarm_active(&se, "sink_lag")
            == Some(true)),
        "sink_lag not raised while the database is down\n{}",
        status_text(&se)
    );
    let (_, st) = status(&se);
    assert!(st["depth"].as_u64() >= Some(500), "{st:#}");
    assert_eq!(st["last_error"]["kind"], "connect", "{st:#}");
    let m = metrics(&se);
    assert!(
        metric(&m, "sipedge_sink_errors_total{kind=\"connect\"}") > Some(0.0),
        "{m}"
    );
    assert!(
        metric(&m, "sipedge_sink_outbox_depth") >= Some(500.0),
        "{m}"
    );
    assert!(metric(&m, "sipedge_sink_lag_seconds") > Some(2.0), "{m}");
    pg.start_again();
    wait_for_rows(&pg, &se, 505);
    assert!(
        wait_until(Duration::from_secs(30), || alarm_active(&se, "sink_lag")
            == Some(false)),
        "sink_lag not cleared after the database came back\n{}",
        status_text(&se)
    );
    std::thread::sleep(Duration::from_millis(500));
    let db = rows(&pg);
    let listed = cdrs::all(api);
    assert_eq!(listed.len(), 505);
    assert_eq!(db.len(), 505, "every CDR exactly once");
    for cdr in &listed {
        same_cdr(cdr, &db[cdr["id"].as_str().unwrap_or_default()]);
    }
    assert_eq!(status(&se).1["depth"], 0, "{}", status_text(&se));
}

/// A store holding `n` generated CDRs queued in its outbox, the backfill marked done so that
/// only the outbox ships them.
fn outbox_backlog(data_dir: &Path, cdrs: &[sipedge_store::Cdr]) {
    std::fs::create_dir_all(data_dir).unwrap();
    let store = Store::open(
        data_dir,
        Engine::Redb,
        StoreConfig {
            outbox: true,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let writer = store.writer();
    writer
        .submit(WriteOp::PutSinkState(
            "postgres".into(),
            br#"{"after":null,"done":true}"#.to_vec(),
        ))
        .unwrap();
    for cdr in cdrs {
        writer
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
    }
    store.flush(Duration::from_secs(120)).unwrap();
    assert_eq!(store.outbox_stats().unwrap().depth, cdrs.len() as u64);
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[test]
fn a_kill_9_while_the_outbox_drains_ships_every_cdr_exactly_once() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    let generated = seed::cdrs("test", UnixMs(now_ms() - 3_600_000), 3_600_000, n, 7);
    outbox_backlog(&dir.path().join("data"), &generated);
    let config = with_sink(Config::new("test"), &pg, dir.path(), PASSWORD).set(
        "sink.postgres",
        "batch_size",
        "50",
    );
    let path = config.write(dir.path());
    let mut se = Sipedge::start_file(&path, dir);
    assert!(
        wait_until(SHIP_WAIT, || count(&pg) >= 2_000),
        "{}",
        se.report()
    );
    se.kill_hard();
    let at_kill = count(&pg);
    assert!(
        at_kill < n,
        "the kill came after the drain ({at_kill} rows)"
    );
    se.restart();
    wait_for_rows(&pg, &se, n);
    assert!(
        wait_until(Duration::from_secs(20), || status(&se).1["depth"] == 0),
        "{}",
        status_text(&se)
    );
    let db = rows(&pg);
    assert_eq!(db.len() as u64, n);
    for cdr in &generated {
        let row = &db[&cdr.id.to_string()];
        assert_eq!(row["call_id"], cdr.call_id.as_str());
        assert_eq!(row["end_time"].as_i64(), Some(cdr.end_time.0));
    }
    eprintln!("{at_kill} of {n} rows were in the database at the kill");
}

#[test]
fn a_cdr_shipped_twice_or_changed_stays_one_row_in_its_latest_version() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let mut cdr = seed::cdrs("test", UnixMs(now_ms() - 60_000), 1_000, 1, 3).remove(0);
    let data = dir.path().join("data");
    outbox_backlog(&data, std::slice::from_ref(&cdr));
    let config = with_sink(Config::new("test"), &pg, dir.path(), PASSWORD);
    let path = config.write(dir.path());
    let mut se = Sipedge::start_file(&path, dir);
    wait_for_rows(&pg, &se, 1);
    let first = rows(&pg).remove(&cdr.id.to_string()).unwrap();
    se.stop();
    // The CDR changed twice (a call resumed after a restart ends later), each version
    // queued: one row, the later version. Put again unchanged, it is not queued at all.
    {
        let store = Store::open(
            &data,
            Engine::Redb,
            StoreConfig {
                outbox: true,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        store
            .writer()
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
        store.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(store.outbox_stats().unwrap().depth, 0);
        cdr.end_time = UnixMs(cdr.end_time.0 + 1_000);
        store
            .writer()
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
        store.flush(Duration::from_secs(10)).unwrap();
        cdr.end_time = UnixMs(cdr.end_time.0 + 4_321);
        store
            .writer()
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
        store.flush(Duration::from_secs(10)).unwrap();
        assert_eq!(store.outbox_stats().unwrap().depth, 2);
    }
    se.restart();
    assert!(
        wait_until(SHIP_WAIT, || status(&se).1["depth"] == 0),
        "{}",
        status_text(&se)
    );
    let db = rows(&pg);
    assert_eq!(db.len(), 1);
    let row = &db[&cdr.id.to_string()];
    assert_eq!(row["end_time"].as_i64(), Some(cdr.end_time.0));
    assert_eq!(row["call_id"], first["call_id"]);
    // A backfill of the same store (the sink's progress forgotten by a run without it)
    // ships the CDR once more: still one row, and not even rewritten.
    let shipped_at = row["shipped_at"].clone();
    pg.psql(
        DB,
        "UPDATE cdr SET shipped_at = shipped_at - interval '1 hour';",
    );
    let shipped_at_before = rows(&pg)[&cdr.id.to_string()]["shipped_at"].clone();
    assert_ne!(shipped_at_before, shipped_at);
    se.stop();
    let without_sink = Config::new("test").set("store", "flush_interval", "\"20ms\"");
    std::fs::write(se.config_path(), without_sink.text(&se.data_dir())).unwrap();
    se.restart();
    se.stop();
    let again = with_sink(Config::new("test"), &pg, &se.data_dir(), PASSWORD);
    std::fs::write(se.config_path(), again.text(&se.data_dir())).unwrap();
    se.restart();
    assert!(
        wait_until(SHIP_WAIT, || status(&se).1["backfill"]["state"] == "done"),
        "{}",
        status_text(&se)
    );
    assert_eq!(status(&se).1["backfilled"], 1, "{}", status_text(&se));
    let db = rows(&pg);
    assert_eq!(db.len(), 1);
    assert_eq!(
        db[&cdr.id.to_string()]["shipped_at"],
        shipped_at_before,
        "an unchanged row is not rewritten"
    );
}

#[test]
fn a_wrong_password_shows_in_status_and_metrics_loses_nothing_and_a_restart_fixes_it() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let config = with_sink(
        Config::new("test").sip(Sip::one_port()),
        &pg,
        dir.path(),
        "wrong",
    );
    let mut se = Sipedge::start(&config);
    // Idle, the sink already finds out.
    assert!(
        wait_until(
            Duration::from_secs(20),
            || status(&se).1["last_error"]["kind"] == "auth"
        ),
        "{}",
        status_text(&se)
    );
    run_calls(&se, "call", Transport::Udp, 5, 20);
    let auth_failed = |st: &Value| st["last_error"]["kind"] == "auth" && st["depth"] == 5;
    assert!(
        wait_until(Duration::from_secs(30), || auth_failed(&status(&se).1)),
        "{}",
        status_text(&se)
    );
    let text = status_text(&se);
    assert!(text.contains("password authentication failed"), "{text}");
    assert!(
        !text.contains("wrong"),
        "the password is never shown: {text}"
    );
    let m = metrics(&se);
    assert!(
        metric(&m, "sipedge_sink_errors_total{kind=\"auth\"}") > Some(0.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sipedge_sink_shipped_total"), Some(0.0), "{m}");
    assert_eq!(count(&pg), 0);
    se.stop();
    let fixed = with_sink(
        Config::new("test").sip(*se.sip()),
        &pg,
        dir.path(),
        PASSWORD,
    );
    std::fs::write(se.config_path(), fixed.text(&se.data_dir())).unwrap();
    se.restart();
    wait_for_rows(&pg, &se, 5);
    assert!(
        wait_until(Duration::from_secs(20), || status(&se).1["depth"] == 0),
        "{}",
        status_text(&se)
    );
    assert_eq!(rows(&pg).len(), 5);
}

#[test]
fn another_schema_version_or_none_is_a_clear_error_and_nothing_is_lost() {
    let pg = database();
    pg.psql(
        DB,
        "INSERT INTO sipedge_schema_version (version, description) VALUES (3, 'from the future');",
    );
    let seeded = Seed {
        cdrs: seed::cdrs("test", UnixMs(now_ms() - 600_000), 60_000, 10, 5),
        ..Seed::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let se = Sipedge::start_seeded(
        &with_sink(Config::new("test"), &pg, dir.path(), PASSWORD),
        &seeded,
    );
    let schema_error = |st: &Value| st["last_error"]["kind"] == "schema";
    assert!(
        wait_until(Duration::from_secs(30), || schema_error(&status(&se).1)),
        "{}",
        status_text(&se)
    );
    let message = status(&se).1["last_error"]["message"].clone();
    let message = message.as_str().unwrap_or_default();
    assert!(
        message.contains("version 3") && message.contains("writes version 2"),
        "{message}"
    );
    assert!(
        se.stderr().contains("schema is version 3"),
        "{}",
        se.report()
    );
    assert_eq!(count(&pg), 0);
    // The DBA fixes it: the sink retries and ships what waited.
    pg.psql(DB, "DELETE FROM sipedge_schema_version WHERE version = 3;");
    wait_for_rows(&pg, &se, 10);

    let bare = Postgres::start();
    bare.create_database(DB);
    let dir = tempfile::tempdir().unwrap();
    let config = with_sink(Config::new("test"), &bare, dir.path(), PASSWORD).set(
        "sink.postgres",
        "url",
        &quote(&format!(
            "postgres://postgres@127.0.0.1:{}/{DB}",
            bare.port()
        )),
    );
    let se = Sipedge::start_seeded(&config, &seeded);
    let missing = |st: &Value| {
        st["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("apply etc/sql/postgres.sql"))
    };
    assert!(
        wait_until(Duration::from_secs(30), || missing(&status(&se).1)),
        "{}",
        status_text(&se)
    );
}

#[test]
fn backfill_ships_an_existing_store_into_a_fresh_database_and_parks_a_refused_row() {
    let pg = database();
    let mut cdrs = seed::cdrs("test", UnixMs(now_ms() - 86_400_000), 86_000_000, 3_000, 11);
    // PostgreSQL text cannot hold a NUL byte: the database refuses this row alone.
    cdrs[1234].call_id = "bad\0call".to_owned();
    let poison = cdrs[1234].id;
    let seeded = Seed {
        cdrs: cdrs.clone(),
        ..Seed::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let se = Sipedge::start_seeded(
        &with_sink(Config::new("test"), &pg, dir.path(), PASSWORD)
            .set("sink.postgres", "backfill_rate", "2000")
            .set("sink.postgres", "batch_size", "500"),
        &seeded,
    );
    wait_for_rows(&pg, &se, 2_999);
    assert!(
        wait_until(SHIP_WAIT, || status(&se).1["backfill"]["state"] == "done"),
        "{}",
        status_text(&se)
    );
    let (_, st) = status(&se);
    assert_eq!(st["backfilled"], 2_999, "{st:#}");
    assert_eq!(st["parked"], 1, "{st:#}");
    assert_eq!(st["recent_parked"][0]["id"], poison.to_string(), "{st:#}");
    assert!(
        se.stderr().contains(&poison.to_string()),
        "the parked CDR is logged\n{}",
        se.report()
    );
    let db = rows(&pg);
    assert_eq!(db.len(), 2_999);
    assert!(!db.contains_key(&poison.to_string()));
    let api = se.addr("api");
    for cdr in cdrs.iter().filter(|c| c.id != poison).step_by(97) {
        let id = cdr.id.to_string();
        let (code, shown) = get_json(api, &format!("/api/cdrs/{id}"));
        assert_eq!(code, 200);
        same_cdr(&shown, &db[&id]);
    }
    let m = metrics(&se);
    assert_eq!(
        metric(&m, "sipedge_sink_backfilled_total"),
        Some(2_999.0),
        "{m}"
    );
    assert_eq!(metric(&m, "sipedge_sink_parked_total"), Some(1.0), "{m}");
    // The parked CDR is still in the store.
    let (code, _) = get_json(api, &format!("/api/cdrs/{poison}"));
    assert_eq!(code, 200);
}

#[test]
fn bad_sink_settings_exit_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = "url = \"postgres://sipedge@127.0.0.1:5432/cdr\"";
    let cases = [
        ("url = \"http://x\"".to_owned(), "sink.postgres.url"),
        ("".to_owned(), "sink.postgres.url"),
        (
            "url = \"postgres://u:pw@127.0.0.1/cdr\"".to_owned(),
            "sink.postgres.url: holds a password",
        ),
        (format!("{url}\nbatch_size = 0"), "sink.postgres.batch_size"),
        (format!("{url}\npool_size = 0"), "sink.postgres.pool_size"),
        (
            format!("{url}\nlag_alarm = \"0s\""),
            "sink.postgres.lag_alarm",
        ),
        (
            format!("{url}\nbackfill_rate = 0"),
            "sink.postgres.backfill_rate",
        ),
        (format!("{url}\ncolour = 1"), "colour"),
        (
            "host = \"db\"\nuser = \"u\"".to_owned(),
            "sink.postgres.dbname",
        ),
    ];
    let base = Config::new("test").text(&dir.path().join("data"));
    for (table, key) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{base}\n[sink.postgres]\n{table}\n")).unwrap();
        for command in ["check-config", "serve"] {
            let out = sipedge::run([command.as_ref(), "--config".as_ref(), path.as_os_str()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{command} {table:?}: {stderr}");
            assert!(
                stderr.contains(key),
                "{command} {table:?}: {stderr} lacks {key}"
            );
        }
    }
    // The example's commented table, uncommented, is a valid one.
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sipedge.toml")).unwrap();
    let mut table = String::new();
    let mut inside = false;
    for line in example.lines() {
        inside |= line == "# [sink.postgres]";
        if inside {
            match line.strip_prefix("# ") {
                Some(l) => table.push_str(&format!("{l}\n")),
                None => break,
            }
        }
    }
    assert!(table.contains("batch_size = 1000"), "{table}");
    let path = dir.path().join("example.toml");
    std::fs::write(&path, format!("{base}\n{table}")).unwrap();
    let out = sipedge::run([
        "check-config".as_ref(),
        "--config".as_ref(),
        path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[sink.postgres]"));
    // A password file that cannot be read stops the start, naming the key.
    let path = dir.path().join("nopw.toml");
    std::fs::write(
        &path,
        format!("{base}\n[sink.postgres]\n{url}\npassword_file = \"/nonexistent/pw\"\n"),
    )
    .unwrap();
    let out = sipedge::run(["serve".as_ref(), "--config".as_ref(), path.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("sink.postgres.password_file"), "{stderr}");
    // `sink status` without a sink, or before any server ran it.
    let none = dir.path().join("nosink.toml");
    std::fs::write(&none, &base).unwrap();
    let out = sipedge::run(["sink", "status", "--config", none.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[sink.postgres]"));
    let out = sipedge::run(["sink", "status", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no sink status"));
}

#[test]
fn sink_status_says_when_the_server_is_not_running() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let mut se = Sipedge::start(&with_sink(Config::new("test"), &pg, dir.path(), PASSWORD));
    assert!(
        wait_until(Duration::from_secs(10), || status(&se).0 == 0),
        "{}",
        status_text(&se)
    );
    let (_, st) = status(&se);
    assert_eq!(st["running"], true);
    assert_eq!(st["pid"], se.pid());
    se.stop();
    let (code, st) = status(&se);
    assert_eq!(code, 1, "{st:#}");
    assert_eq!(st["running"], false);
    assert!(status_text(&se).contains("NOT RUNNING"));
}

#[test]
fn a_slow_database_times_out_is_retried_and_loses_nothing() {
    let pg = database();
    let dir = tempfile::tempdir().unwrap();
    let generated = seed::cdrs("test", UnixMs(now_ms() - 600_000), 60_000, 100, 9);
    outbox_backlog(&dir.path().join("data"), &generated);
    // The table stays locked for 6 s: every INSERT waits past its 1 s statement_timeout.
    let mut holder = std::process::Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            DB,
            "-p",
        ])
        .arg(pg.port().to_string())
        .args([
            "-c",
            "BEGIN; LOCK TABLE cdr IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run psql");
    assert!(
        wait_until(Duration::from_secs(10), || {
            pg.psql(DB, "SELECT count(*) FROM pg_locks WHERE relation = 'cdr'::regclass AND mode = 'AccessExclusiveLock' AND granted;")
                .trim()
                == "1"
        }),
        "the table was not locked"
    );
    let config = with_sink(Config::new("test"), &pg, dir.path(), PASSWORD).set(
        "sink.postgres",
        "statement_timeout",
        "\"1s\"",
    );
    let path = config.write(dir.path());
    let se = Sipedge::start_file(&path, dir);
    assert!(
        wait_until(
            Duration::from_secs(20),
            || status(&se).1["last_error"]["kind"] == "timeout"
        ),
        "{}",
        status_text(&se)
    );
    assert_eq!(count(&pg), 0);
    assert!(holder.wait().unwrap().success());
    wait_for_rows(&pg, &se, 100);
    assert!(
        wait_until(Duration::from_secs(20), || status(&se).1["depth"] == 0),
        "{}",
        status_text(&se)
    );
    let m = metrics(&se);
    assert!(
        metric(&m, "sipedge_sink_errors_total{kind=\"timeout\"}") > Some(0.0),
        "{m}"
    );
    assert_eq!(rows(&pg).len(), 100);
}
