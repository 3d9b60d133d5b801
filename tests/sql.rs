//! The bank's database (`etc/sql/`, SPEC §8) on a real PostgreSQL server: the schema and its
//! migrations, the checks, the sink's idempotent write, the README's roles and every README
//! query, on a known data set and against sipedge's own API for the same SIPp calls.
//!
//! Needs PostgreSQL 14+ (Debian `postgresql`) and `sipp` (Debian `sip-tester`).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use support::Sipedge;
use support::cdrs;
use support::config::{Config, Sip};
use support::http::get_json;
use support::msglog;
use support::postgres::{self, Postgres, SUPERUSER, literal};
use support::sipp::{Sipp, Transport, is_bound};
use support::wait_until;

const README: &str = include_str!("../etc/sql/README.md");
const ZONE: Tz = chrono_tz::Asia::Shanghai;
/// The README's setup blocks, run in this order; every other block is a query.
const SETUP: [&str; 3] = ["setup_roles", "setup_database", "setup_grants"];
/// The README's template of the next migration, which [`the_migration_template_upgrades_once`]
/// applies.
const TEMPLATE: &str = "migration_template";
/// Every README query, each of which [`readme_queries_on_a_known_data_set`] checks.
const QUERIES: [&str; 8] = [
    "schema_version",
    "cdrs",
    "totals_per_type",
    "hourly",
    "daily",
    "connect_rate",
    "outcomes",
    "per_node",
];
/// The columns a CDR is inserted with (all but the generated ones and `shipped_at`).
const COLUMNS: [&str; 20] = [
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
    "transport",
    "terminal",
    "source",
];

// ---------------------------------------------------------------- README blocks

/// One named block of the README.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Block {
    name: String,
    sql: String,
}

/// The ```sql blocks named by a `-- name: NAME` line just before the fence or as its first
/// line; unnamed blocks are prose examples and left out.
fn named_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut pending: Option<String> = None;
    let mut lines = markdown.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if let Some(name) = trimmed.strip_prefix("-- name:") {
            pending = Some(name.trim().to_owned());
            continue;
        }
        if trimmed == "```sql" {
            let mut name = pending.take();
            let mut sql = String::new();
            for body in lines.by_ref() {
                if body.trim() == "```" {
                    break;
                }
                match body.trim().strip_prefix("-- name:") {
                    Some(first) if name.is_none() && sql.is_empty() => {
                        name = Some(first.trim().to_owned());
                    }
                    _ => {
                        sql.push_str(body);
                        sql.push('\n');
                    }
                }
            }
            if let Some(name) = name {
                blocks.push(Block { name, sql });
            }
            continue;
        }
        if !trimmed.is_empty() {
            pending = None;
        }
    }
    blocks
}

fn block(name: &str) -> String {
    named_blocks(README)
        .into_iter()
        .find(|b| b.name == name)
        .map(|b| b.sql)
        .unwrap_or_else(|| panic!("etc/sql/README.md has no block `-- name: {name}`"))
}

#[test]
fn readme_blocks_are_found_by_name() {
    let cases: &[(&str, &[(&str, &str)])] = &[
        (
            "-- name: a\n```sql\nSELECT 1;\n```\n",
            &[("a", "SELECT 1;\n")],
        ),
        (
            "```sql\n-- name: b\nSELECT 2;\n```\n",
            &[("b", "SELECT 2;\n")],
        ),
        ("```sql\nSELECT 3;\n```\n", &[]),
        ("-- name: c\nprose\n```sql\nSELECT 4;\n```\n", &[]),
        (
            "-- name: d\n\n```sql\nSELECT 5;\n-- a comment\n```\n",
            &[("d", "SELECT 5;\n-- a comment\n")],
        ),
        ("-- name: e\n```sh\nls\n```\n```sql\nSELECT 6;\n```\n", &[]),
        (
            "-- name: f\n```sql\nSELECT 7;\n```\n-- name: g\n```sql\nSELECT 8;\n```\n",
            &[("f", "SELECT 7;\n"), ("g", "SELECT 8;\n")],
        ),
    ];
    for (markdown, expected) in cases {
        let expected: Vec<Block> = expected
            .iter()
            .map(|(name, sql)| Block {
                name: (*name).to_owned(),
                sql: (*sql).to_owned(),
            })
            .collect();
        assert_eq!(named_blocks(markdown), expected, "{markdown:?}");
    }
    let names: BTreeSet<String> = named_blocks(README).into_iter().map(|b| b.name).collect();
    let known: BTreeSet<String> = SETUP
        .iter()
        .chain(QUERIES.iter())
        .chain([TEMPLATE].iter())
        .map(|n| (*n).to_owned())
        .collect();
    assert_eq!(
        names, known,
        "the README's named blocks must be exactly those this test runs and checks"
    );
}

// ---------------------------------------------------------------- the harness

#[test]
fn the_harness_server_comes_back_on_its_port_after_a_stop() {
    let mut pg = Postgres::start();
    let port = pg.port();
    // PostgreSQL refuses root: under root the server runs as an unprivileged user.
    let pid: u32 = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid.split_whitespace().any(|id| id == "0"),
        "postgres runs as root: {uid}"
    );

    pg.create_database("bank");
    pg.psql("bank", "CREATE TABLE t (x int); INSERT INTO t VALUES (1);");
    pg.create_login_role("app", "a p@ss'word");
    pg.psql("bank", "GRANT SELECT ON t TO app;");
    assert_eq!(
        pg.url("bank", "app"),
        format!("postgres://app:a%20p%40ss%27word@127.0.0.1:{port}/bank")
    );
    assert_eq!(
        pg.url("bank", SUPERUSER),
        format!("postgres://postgres@127.0.0.1:{port}/bank")
    );
    assert_eq!(
        pg.psql_as("bank", "app", "SELECT x FROM t;").unwrap(),
        "1\n"
    );

    pg.stop();
    assert!(!pg.is_running());
    let err = pg.psql_as("bank", "app", "SELECT 1;").unwrap_err();
    assert!(err.contains("Connection refused"), "{err}");
    pg.start_again();
    assert_eq!(pg.port(), port);
    assert_eq!(
        pg.psql_as("bank", "app", "SELECT x FROM t;").unwrap(),
        "1\n"
    );
}

// ---------------------------------------------------------------- schema and migrations

fn read_sql(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn postgres_sql_equals_the_migrations_applied_in_order() {
    let pg = Postgres::start();
    pg.create_database("fresh");
    pg.create_database("migrated");
    pg.apply_schema("fresh");
    pg.apply_migrations("migrated");
    let fresh = pg.schema_dump("fresh");
    assert!(fresh.contains("CREATE TABLE public.cdr"), "{fresh}");
    assert_eq!(
        fresh,
        pg.schema_dump("migrated"),
        "postgres.sql and the migrations give different catalogs"
    );
    let versions = "SELECT version, description FROM sipedge_schema_version ORDER BY version;";
    assert_eq!(pg.psql("fresh", versions), pg.psql("migrated", versions));
    assert_eq!(
        pg.psql("fresh", "SELECT max(version) FROM sipedge_schema_version;")
            .trim(),
        "2"
    );

    // Applied again, each refuses and changes nothing.
    let schema = read_sql(&postgres::sql_dir().join("postgres.sql"));
    let again = pg.psql_as("fresh", SUPERUSER, &schema).unwrap_err();
    assert!(
        again.contains("this database already has the sipedge schema (version 2)"),
        "{again}"
    );
    let first = read_sql(&postgres::migrations()[0]);
    let again = pg.psql_as("migrated", SUPERUSER, &first).unwrap_err();
    assert!(again.contains("migration 1 is already applied"), "{again}");
    let second = read_sql(&postgres::migrations()[1]);
    let again = pg.psql_as("migrated", SUPERUSER, &second).unwrap_err();
    assert!(
        again.contains("migration 2 upgrades schema version 1, this database is at 2"),
        "{again}"
    );
    assert_eq!(fresh, pg.schema_dump("fresh"));
    assert_eq!(fresh, pg.schema_dump("migrated"));
    assert_eq!(pg.psql("migrated", versions), pg.psql("fresh", versions));

    // A database with someone else's `cdr` table is not taken over.
    pg.create_database("foreign");
    pg.psql("foreign", "CREATE TABLE cdr (x int);");
    let refused = pg.psql_as("foreign", SUPERUSER, &first).unwrap_err();
    assert!(refused.contains("not a sipedge schema"), "{refused}");
    assert!(
        pg.psql("foreign", "SELECT to_regclass('sipedge_schema_version');")
            .trim()
            .is_empty()
    );
}

#[test]
fn the_migration_template_upgrades_once() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_migrations("bank");
    let template = block(TEMPLATE);
    pg.psql("bank", &template);
    let versions = "SELECT version, description FROM sipedge_schema_version ORDER BY version;";
    assert_eq!(
        pg.psql("bank", versions),
        "1|initial: cdr and sipedge_schema_version\n2|cdr.source: proxy, pcap or hep\n\
         3|what it adds\n"
    );
    let again = pg.psql_as("bank", SUPERUSER, &template).unwrap_err();
    assert!(
        again.contains("migration 3 upgrades schema version 2, this database is at 3"),
        "{again}"
    );
    // Nor does it apply where migration 1 is missing.
    pg.create_database("empty");
    let refused = pg.psql_as("empty", SUPERUSER, &template).unwrap_err();
    assert!(refused.contains("sipedge_schema_version"), "{refused}");
    assert_eq!(pg.psql("bank", versions).lines().count(), 3);
}

#[test]
fn migration_2_marks_the_rows_already_there_as_relayed() {
    let pg = Postgres::start();
    pg.create_database("bank");
    let migrations = postgres::migrations();
    pg.psql_file("bank", &migrations[0]);
    let mut row = valid_row();
    row.remove("source");
    pg.psql("bank", &insert_sql(&row));
    pg.psql_file("bank", &migrations[1]);
    assert_eq!(
        pg.psql("bank", "SELECT source FROM cdr;").trim(),
        "proxy",
        "a release-1 row"
    );
    let validated = "SELECT convalidated FROM pg_constraint WHERE conname = 'cdr_source_known';";
    assert_eq!(pg.psql("bank", validated).trim(), "t");
}

/// A valid CDR as `column -> SQL literal`, one of each kind of value.
fn valid_row() -> BTreeMap<&'static str, String> {
    let text = |s: &str| literal(s);
    BTreeMap::from([
        ("id", text("0000018f9a3b2c00a1b2c3d4e5f60718")),
        ("node", text("sh-01")),
        ("call_id", text("abc@10.0.0.1")),
        ("caller", text("8001")),
        ("called", text("95566")),
        ("caller_uri", text("sip:8001@10.0.0.1")),
        ("called_uri", text("sip:95566@10.0.0.2")),
        ("call_type", text("audio")),
        ("video_started_at", "NULL".to_owned()),
        ("status", text("connected")),
        ("disposition", text("answered")),
        ("sip_code", "200".to_owned()),
        ("ended_by", text("caller")),
        ("start_time", text("2026-05-20 10:00:00.000+08")),
        ("ring_time", text("2026-05-20 10:00:00.400+08")),
        ("answer_time", text("2026-05-20 10:00:02.000+08")),
        ("end_time", text("2026-05-20 10:01:02.500+08")),
        ("transport", text("udp")),
        ("terminal", text("10.0.0.1:5060")),
        ("source", text("proxy")),
    ])
}

fn insert_sql(row: &BTreeMap<&'static str, String>) -> String {
    let columns: Vec<&str> = row.keys().copied().collect();
    let values: Vec<&str> = row.values().map(String::as_str).collect();
    format!(
        "INSERT INTO cdr ({}) VALUES ({});",
        columns.join(", "),
        values.join(", ")
    )
}

#[test]
fn checks_refuse_what_sipedge_never_writes() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_schema("bank");
    // (column, value, what the refusal names)
    let bad: &[(&str, &str, &str)] = &[
        ("id", "'0000018F9A3B2C00A1B2C3D4E5F60718'", "cdr_id_format"),
        ("id", "'0000018f9a3b2c00a1b2c3d4e5f6071'", "cdr_id_format"),
        ("id", "'0000018f9a3b2c00a1b2c3d4e5f607189'", "cdr_id_format"),
        ("id", "'0000018f9a3b2c00a1b2c3d4e5f6071g'", "cdr_id_format"),
        ("id", "NULL", "null value in column \"id\""),
        ("node", "''", "cdr_node_named"),
        ("node", "NULL", "null value in column \"node\""),
        ("caller", "NULL", "null value in column \"caller\""),
        ("call_type", "'voice'", "cdr_call_type_known"),
        ("call_type", "'Audio'", "cdr_call_type_known"),
        ("status", "'unknown'", "cdr_status_known"),
        ("status", "'answered'", "cdr_status_known"),
        ("disposition", "'hung_up'", "cdr_disposition_known"),
        ("sip_code", "99", "cdr_sip_code_range"),
        ("sip_code", "700", "cdr_sip_code_range"),
        ("sip_code", "70000", "smallint out of range"),
        ("ended_by", "'network'", "cdr_ended_by_known"),
        ("transport", "'sctp'", "cdr_transport_known"),
        ("transport", "'UDP'", "cdr_transport_known"),
        ("source", "'sngrep'", "cdr_source_known"),
        ("source", "'PCAP'", "cdr_source_known"),
        ("source", "NULL", "null value in column \"source\""),
        ("start_time", "NULL", "null value in column \"start_time\""),
        ("end_time", "NULL", "null value in column \"end_time\""),
        (
            "start_time",
            "'yesterday-ish'",
            "invalid input syntax for type timestamp",
        ),
        ("duration_s", "1.0", "duration_s"),
        ("talk_s", "1.0", "talk_s"),
    ];
    for (column, value, named) in bad {
        let mut row = valid_row();
        row.insert(column, (*value).to_owned());
        let err = pg
            .psql_as("bank", SUPERUSER, &insert_sql(&row))
            .expect_err(&format!("{column} = {value} was accepted"));
        assert!(
            err.contains(named),
            "{column} = {value}: the refusal should name {named:?}: {err}"
        );
    }
    assert_eq!(pg.psql("bank", "SELECT count(*) FROM cdr;").trim(), "0");

    // Every value sipedge does write is taken, with the derived durations.
    let good: &[(&str, &str)] = &[
        ("sip_code", "NULL"),
        ("sip_code", "100"),
        ("sip_code", "699"),
        ("ring_time", "NULL"),
        ("call_type", "'video'"),
        ("video_started_at", "'2026-05-20 10:00:30+08'"),
        ("transport", "'tcp'"),
        ("ended_by", "'sipedge'"),
        ("disposition", "'timeout'"),
        ("source", "'pcap'"),
        ("source", "'hep'"),
    ];
    for (i, (column, value)) in good.iter().enumerate() {
        let mut row = valid_row();
        row.insert("id", literal(&format!("{i:032x}")));
        row.insert(column, (*value).to_owned());
        pg.psql("bank", &insert_sql(&row));
    }
    // Not connected: no talk time even with an answer time; the end a millisecond before the
    // start (clocks of two messages) gives 0, never a negative duration.
    let mut row = valid_row();
    row.insert("id", literal(&format!("{:032x}", 100)));
    row.insert("status", literal("not_connected"));
    row.insert("end_time", literal("2026-05-20 09:59:59.999+08"));
    pg.psql("bank", &insert_sql(&row));
    let derived = pg.psql(
        "bank",
        "SELECT id, duration_s, talk_s FROM cdr WHERE id IN \
         ('00000000000000000000000000000000', '00000000000000000000000000000064') ORDER BY id;",
    );
    assert_eq!(
        derived,
        "00000000000000000000000000000000|62.500|60.500\n\
         00000000000000000000000000000064|0.000|0.000\n"
    );
}

/// The sink's statement of /work/notes/ddl.md: batched through unnest, idempotent on `id`,
/// rewriting a row only when the CDR changed.
fn sink_upsert(rows: &[BTreeMap<&'static str, String>]) -> String {
    let arrays: Vec<String> = COLUMNS
        .iter()
        .map(|column| {
            let values: Vec<&str> = rows.iter().map(|r| r[column].as_str()).collect();
            let cast = match *column {
                "sip_code" => "smallint",
                c if c.ends_with("_time") || c == "video_started_at" => "timestamptz",
                _ => "text",
            };
            format!("ARRAY[{}]::{cast}[]", values.join(", "))
        })
        .collect();
    let others: Vec<&str> = COLUMNS.iter().copied().filter(|c| *c != "id").collect();
    let set: Vec<String> = others
        .iter()
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let mine: Vec<String> = others.iter().map(|c| format!("cdr.{c}")).collect();
    let theirs: Vec<String> = others.iter().map(|c| format!("EXCLUDED.{c}")).collect();
    format!(
        "INSERT INTO cdr ({}) SELECT * FROM unnest({}) \
         ON CONFLICT (id) DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({});",
        COLUMNS.join(", "),
        arrays.join(", "),
        set.join(", "),
        mine.join(", "),
        theirs.join(", ")
    )
}

#[test]
fn a_cdr_shipped_twice_is_one_row_and_an_update_rewrites_it() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_schema("bank");
    let row = valid_row();
    let mut other = valid_row();
    other.insert("id", literal("0000018f9a3b2c00ffffffffffffffff"));
    other.insert("caller", literal("8002"));
    pg.psql("bank", &sink_upsert(&[row.clone(), other.clone()]));
    let state = "SELECT id, xmin, shipped_at, talk_s FROM cdr ORDER BY id;";
    let first = pg.psql("bank", state);
    assert_eq!(first.lines().count(), 2, "{first}");

    // A replay (the queue shipped it again after an outage): nothing changes, not even the
    // row version.
    pg.psql("bank", &sink_upsert(&[row.clone(), other.clone()]));
    pg.psql("bank", &sink_upsert(std::slice::from_ref(&row)));
    assert_eq!(pg.psql("bank", state), first);

    // The call changed (resumed after a restart, ended later): the row follows, its talk
    // time recomputed, its arrival time kept.
    let mut later = row.clone();
    later.insert("end_time", literal("2026-05-20 10:02:02.500+08"));
    later.insert("ended_by", literal("callee"));
    pg.psql("bank", &sink_upsert(&[later]));
    let after = pg.psql(
        "bank",
        "SELECT count(*), min(talk_s), max(talk_s), \
         count(DISTINCT shipped_at) FILTER (WHERE ended_by = 'callee') FROM cdr;",
    );
    assert_eq!(after.trim(), "2|60.500|120.500|1");
    let shipped = "SELECT shipped_at FROM cdr ORDER BY id;";
    let before: Vec<String> = first
        .lines()
        .map(|l| l.split('|').nth(2).unwrap().to_owned())
        .collect();
    let now: Vec<String> = pg
        .psql("bank", shipped)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(now, before, "shipped_at is when the row first arrived");
}

// ---------------------------------------------------------------- roles of the README

/// Runs the README's setup on a new cluster: roles, database `sipedge`, schema as the owner
/// role, grants; the harness then knows both passwords.
fn bank_database(pg: &Postgres) {
    let vars = [
        ("sipedge_password", "sink pass'word"),
        ("report_password", "report-password"),
    ];
    pg.psql_with(SUPERUSER, SUPERUSER, &vars, &block("setup_roles"))
        .unwrap_or_else(|e| panic!("setup_roles: {e}"));
    pg.psql("sipedge", &block("setup_database"));
    let schema = read_sql(&postgres::sql_dir().join("postgres.sql"));
    pg.psql("sipedge", &format!("SET ROLE sipedge_owner;\n{schema}"));
    pg.psql("sipedge", &block("setup_grants"));
    pg.remember_password("sipedge", vars[0].1);
    pg.remember_password("sipedge_report", vars[1].1);
}

#[test]
fn the_readme_roles_have_least_privilege() {
    let pg = Postgres::start();
    bank_database(&pg);
    let owner = pg.psql(
        "sipedge",
        "SELECT tableowner FROM pg_tables WHERE tablename IN ('cdr', 'sipedge_schema_version');",
    );
    assert_eq!(owner, "sipedge_owner\nsipedge_owner\n");

    // The sink's role: its write and its version check work, with its password.
    let row = valid_row();
    pg.psql_as(
        "sipedge",
        "sipedge",
        &sink_upsert(std::slice::from_ref(&row)),
    )
    .unwrap();
    pg.psql_as(
        "sipedge",
        "sipedge",
        &sink_upsert(std::slice::from_ref(&row)),
    )
    .unwrap();
    let version = pg
        .psql_as("sipedge", "sipedge", &block("schema_version"))
        .unwrap();
    assert_eq!(version.trim(), "2");
    assert_eq!(
        pg.psql_as("sipedge", "sipedge", "SELECT count(*) FROM cdr;")
            .unwrap()
            .trim(),
        "1"
    );
    let refused: &[(&str, &str)] = &[
        ("DROP TABLE cdr;", "must be owner of table cdr"),
        (
            "ALTER TABLE cdr ADD COLUMN x int;",
            "must be owner of table cdr",
        ),
        (
            "CREATE INDEX x ON cdr (terminal);",
            "must be owner of table cdr",
        ),
        ("TRUNCATE cdr;", "permission denied for table cdr"),
        ("DELETE FROM cdr;", "permission denied for table cdr"),
        (
            "CREATE TABLE x (y int);",
            "permission denied for schema public",
        ),
        (
            "INSERT INTO sipedge_schema_version (version, description) VALUES (2, 'x');",
            "permission denied for table sipedge_schema_version",
        ),
        (
            "UPDATE sipedge_schema_version SET version = 2;",
            "permission denied for table sipedge_schema_version",
        ),
        ("CREATE SCHEMA x;", "permission denied for database sipedge"),
        (
            "CREATE TEMP TABLE x (y int);",
            "permission denied to create temporary tables",
        ),
    ];
    for (sql, named) in refused {
        let err = pg
            .psql_as("sipedge", "sipedge", sql)
            .expect_err(&format!("the sipedge role may run {sql}"));
        assert!(err.contains(named), "{sql}: expected {named:?}, got {err}");
    }

    // Reporting reads everything and writes nothing.
    assert_eq!(
        pg.psql_as("sipedge", "sipedge_report", "SELECT count(*) FROM cdr;")
            .unwrap()
            .trim(),
        "1"
    );
    for sql in [
        "DELETE FROM cdr;",
        "UPDATE cdr SET node = 'x';",
        "BEGIN READ WRITE; DELETE FROM cdr; COMMIT;",
        "DROP TABLE cdr;",
    ] {
        let err = pg
            .psql_as("sipedge", "sipedge_report", sql)
            .expect_err(&format!("the reporting role may run {sql}"));
        assert!(
            err.contains("read-only transaction")
                || err.contains("permission denied")
                || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }

    // Passwords are checked, and no one else gets in.
    pg.remember_password("sipedge", "wrong");
    let err = pg.psql_as("sipedge", "sipedge", "SELECT 1;").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    pg.create_login_role("stranger", "stranger-password");
    let err = pg.psql_as("sipedge", "stranger", "SELECT 1;").unwrap_err();
    assert!(err.contains("permission denied for database"), "{err}");
    assert_eq!(pg.psql("sipedge", "SELECT count(*) FROM cdr;").trim(), "1");
}

// ---------------------------------------------------------------- README queries, known data

/// A hand-made call of the known data set.
struct Call {
    node: &'static str,
    caller: &'static str,
    called: &'static str,
    call_type: &'static str,
    status: &'static str,
    disposition: &'static str,
    sip_code: Option<u16>,
    /// Local (Beijing) start, with milliseconds.
    start: &'static str,
    /// Ms from start to the answer, if any.
    answer_ms: Option<i64>,
    /// Ms from start to the end.
    end_ms: i64,
    /// What the `cdrs` block shows after the id.
    listed: &'static str,
}

const CALLS: [Call; 7] = [
    Call {
        node: "sh-01",
        caller: "8001",
        called: "95566",
        call_type: "audio",
        status: "connected",
        disposition: "answered",
        sip_code: Some(200),
        start: "2026-05-19 23:30:00.000",
        answer_ms: Some(2_000),
        end_ms: 62_500,
        listed: "2026-05-19 23:30:00|2026-05-19 23:31:02|audio|8001|95566|connected|answered|200|60.500|sh-01",
    },
    Call {
        node: "sh-01",
        caller: "8001",
        called: "95566",
        call_type: "video",
        status: "connected",
        disposition: "answered",
        sip_code: Some(200),
        start: "2026-05-20 00:10:00.250",
        answer_ms: Some(1_000),
        end_ms: 121_250,
        listed: "2026-05-20 00:10:00|2026-05-20 00:12:01|video|8001|95566|connected|answered|200|120.250|sh-01",
    },
    Call {
        node: "sh-01",
        caller: "8002",
        called: "95588",
        call_type: "audio",
        status: "not_connected",
        disposition: "busy",
        sip_code: Some(486),
        start: "2026-05-20 00:40:00.000",
        answer_ms: None,
        end_ms: 3_000,
        listed: "2026-05-20 00:40:00|2026-05-20 00:40:03|audio|8002|95588|not_connected|busy|486|0.000|sh-01",
    },
    Call {
        node: "sz-01",
        caller: "8001",
        called: "95566",
        call_type: "audio",
        status: "connected",
        disposition: "timeout",
        sip_code: Some(200),
        start: "2026-05-20 09:05:00.000",
        answer_ms: Some(1_500),
        end_ms: 7_201_500,
        listed: "2026-05-20 09:05:00|2026-05-20 11:05:01|audio|8001|95566|connected|timeout|200|7200.000|sz-01",
    },
    Call {
        node: "sz-01",
        caller: "9001",
        called: "95566",
        call_type: "video",
        status: "not_connected",
        disposition: "cancelled",
        sip_code: Some(487),
        start: "2026-05-20 09:59:59.999",
        answer_ms: None,
        end_ms: 5_000,
        listed: "2026-05-20 09:59:59|2026-05-20 10:00:04|video|9001|95566|not_connected|cancelled|487|0.000|sz-01",
    },
    Call {
        node: "sz-01",
        caller: "80011",
        called: "95599",
        call_type: "audio",
        status: "not_connected",
        disposition: "no_answer",
        sip_code: None,
        start: "2026-05-21 10:00:00.000",
        answer_ms: None,
        end_ms: 180_000,
        listed: "2026-05-21 10:00:00|2026-05-21 10:03:00|audio|80011|95599|not_connected|no_answer||0.000|sz-01",
    },
    Call {
        node: "sh-01",
        caller: "8001",
        called: "95566",
        call_type: "audio",
        status: "connected",
        disposition: "answered",
        sip_code: Some(200),
        start: "2026-05-21 00:00:00.000",
        answer_ms: Some(500),
        end_ms: 10_500,
        listed: "2026-05-21 00:00:00|2026-05-21 00:00:10|audio|8001|95566|connected|answered|200|10.000|sh-01",
    },
];

fn start_ms(call: &Call) -> i64 {
    let naive = NaiveDateTime::parse_from_str(call.start, "%Y-%m-%d %H:%M:%S%.3f").unwrap();
    ZONE.from_local_datetime(&naive)
        .single()
        .unwrap()
        .timestamp_millis()
}

/// As sipedge makes them: the start in the high half, so ids sort by start time.
fn call_id(i: usize) -> String {
    format!("{:016x}{:016x}", start_ms(&CALLS[i]), i + 1)
}

fn call_row(i: usize) -> BTreeMap<&'static str, String> {
    let call = &CALLS[i];
    let at = |offset: i64| {
        let t = Utc
            .timestamp_millis_opt(start_ms(call) + offset)
            .unwrap()
            .with_timezone(&ZONE);
        literal(&t.to_rfc3339())
    };
    let mut row = valid_row();
    row.insert("id", literal(&call_id(i)));
    row.insert("node", literal(call.node));
    row.insert("call_id", literal(&format!("call-{i}@10.0.0.1")));
    row.insert("caller", literal(call.caller));
    row.insert("called", literal(call.called));
    row.insert("call_type", literal(call.call_type));
    row.insert("status", literal(call.status));
    row.insert("disposition", literal(call.disposition));
    row.insert(
        "sip_code",
        call.sip_code.map_or("NULL".to_owned(), |c| c.to_string()),
    );
    row.insert("start_time", at(0));
    row.insert("ring_time", "NULL".to_owned());
    row.insert("answer_time", call.answer_ms.map_or("NULL".to_owned(), at));
    row.insert("end_time", at(call.end_ms));
    row
}

/// The conditions of one query, as psql variables.
#[derive(Debug, Clone, Default)]
struct Conditions {
    start: String,
    end: String,
    call_type: &'static str,
    caller: &'static str,
    called: &'static str,
    status: &'static str,
}

impl Conditions {
    fn vars(&self) -> [(&str, &str); 6] {
        [
            ("start", &self.start),
            ("end", &self.end),
            ("type", self.call_type),
            ("caller", self.caller),
            ("called", self.called),
            ("status", self.status),
        ]
    }
}

fn day_20() -> Conditions {
    Conditions {
        start: "2026-05-20 00:00:00+08".into(),
        end: "2026-05-21 00:00:00+08".into(),
        ..Conditions::default()
    }
}

fn three_days() -> Conditions {
    Conditions {
        start: "2026-05-19 00:00:00+08".into(),
        end: "2026-05-22 00:00:00+08".into(),
        ..Conditions::default()
    }
}

/// Runs a README query in `db` with `conditions`, in a session whose own time zone is far
/// from Beijing, so that the answers cannot depend on it.
fn query(pg: &Postgres, db: &str, name: &str, conditions: &Conditions) -> String {
    let sql = format!("SET TimeZone = 'America/Los_Angeles';\n{}", block(name));
    pg.psql_with(db, SUPERUSER, &conditions.vars(), &sql)
        .unwrap_or_else(|e| panic!("README query {name} with {conditions:?}: {e}"))
}

#[test]
fn readme_queries_on_a_known_data_set() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_schema("bank");
    let rows: Vec<_> = (0..CALLS.len()).map(call_row).collect();
    pg.psql("bank", &sink_upsert(&rows));

    let listing = |calls: &[usize]| -> String {
        calls
            .iter()
            .map(|&n| format!("{}|{}\n", call_id(n - 1), CALLS[n - 1].listed))
            .collect()
    };
    let with = |base: Conditions, f: &dyn Fn(&mut Conditions)| {
        let mut c = base;
        f(&mut c);
        c
    };
    // (query, conditions, expected psql -A -t output); calls are numbered from 1 as in CALLS.
    let cases: Vec<(&str, Conditions, String)> = vec![
        ("schema_version", day_20(), "2\n".into()),
        // The day is Beijing's: call 1 (23:30 on the 19th) is out, call 7 (00:00 on the
        // 21st) is the end of the interval and out too.
        ("cdrs", day_20(), listing(&[5, 4, 3, 2])),
        (
            "cdrs",
            with(day_20(), &|c| c.caller = "8001"),
            listing(&[4, 2]),
        ),
        (
            "cdrs",
            with(three_days(), &|c| c.caller = "8001*"),
            listing(&[6, 7, 4, 2, 1]),
        ),
        (
            "cdrs",
            with(three_days(), &|c| c.called = "9559*"),
            listing(&[6]),
        ),
        (
            "cdrs",
            with(three_days(), &|c| c.called = "9559"),
            String::new(),
        ),
        (
            "cdrs",
            with(three_days(), &|c| {
                c.call_type = "voice";
                c.status = "connected";
            }),
            listing(&[7, 4, 1]),
        ),
        (
            "cdrs",
            with(day_20(), &|c| c.call_type = "video"),
            listing(&[5, 2]),
        ),
        (
            "cdrs",
            with(day_20(), &|c| c.status = "not_connected"),
            listing(&[5, 3]),
        ),
        (
            "totals_per_type",
            day_20(),
            "audio|2|1|0.5000|7200.000|7200.000\n\
             video|2|1|0.5000|120.250|120.250\n\
             all|4|2|0.5000|7320.250|3660.125\n"
                .into(),
        ),
        (
            "totals_per_type",
            with(day_20(), &|c| c.call_type = "video"),
            "video|2|1|0.5000|120.250|120.250\nall|2|1|0.5000|120.250|120.250\n".into(),
        ),
        (
            "totals_per_type",
            with(three_days(), &|c| c.caller = "8001"),
            "audio|3|3|1.0000|7270.500|2423.500\n\
             video|1|1|1.0000|120.250|120.250\n\
             all|4|4|1.0000|7390.750|1847.688\n"
                .into(),
        ),
        (
            "totals_per_type",
            with(three_days(), &|c| c.caller = "8001*"),
            "audio|4|3|0.7500|7270.500|2423.500\n\
             video|1|1|1.0000|120.250|120.250\n\
             all|5|4|0.8000|7390.750|1847.688\n"
                .into(),
        ),
        (
            "totals_per_type",
            with(day_20(), &|c| c.status = "not_connected"),
            "audio|1|0|0.0000|0.000|0\nvideo|1|0|0.0000|0.000|0\nall|2|0|0.0000|0.000|0\n".into(),
        ),
        (
            "totals_per_type",
            with(day_20(), &|c| c.caller = "7*"),
            "all|0|0|0|0|0\n".into(),
        ),
        (
            "hourly",
            day_20(),
            "2026-05-20 00:00:00|1|0.000|1|120.250\n2026-05-20 09:00:00|1|7200.000|1|0.000\n"
                .into(),
        ),
        (
            "hourly",
            with(day_20(), &|c| c.call_type = "audio"),
            "2026-05-20 00:00:00|1|0.000|0|0\n2026-05-20 09:00:00|1|7200.000|0|0\n".into(),
        ),
        (
            "daily",
            three_days(),
            "2026-05-19|1|60.500|0|0\n\
             2026-05-20|2|7200.000|2|120.250\n\
             2026-05-21|2|10.000|0|0\n"
                .into(),
        ),
        (
            "daily",
            with(three_days(), &|c| c.called = "95566"),
            "2026-05-19|1|60.500|0|0\n\
             2026-05-20|1|7200.000|2|120.250\n\
             2026-05-21|1|10.000|0|0\n"
                .into(),
        ),
        ("connect_rate", day_20(), "4|2|2|0.5000\n".into()),
        ("connect_rate", three_days(), "7|4|3|0.5714\n".into()),
        (
            "connect_rate",
            with(day_20(), &|c| c.caller = "7*"),
            "0|0|0|0\n".into(),
        ),
        (
            "outcomes",
            three_days(),
            "connected|answered|200|3\n\
             connected|timeout|200|1\n\
             not_connected|busy|486|1\n\
             not_connected|cancelled|487|1\n\
             not_connected|no_answer||1\n"
                .into(),
        ),
        (
            "per_node",
            three_days(),
            "sh-01|4|3|0.7500|70.500|120.250\nsz-01|3|1|0.3333|7200.000|0.000\n".into(),
        ),
        (
            "per_node",
            with(day_20(), &|c| c.status = "connected"),
            "sh-01|1|1|1.0000|0|120.250\nsz-01|1|1|1.0000|7200.000|0\n".into(),
        ),
    ];
    let checked: HashSet<&str> = cases.iter().map(|(name, _, _)| *name).collect();
    for name in QUERIES {
        assert!(
            checked.contains(name),
            "README query {name} has no case here"
        );
    }
    for (name, conditions, expected) in &cases {
        assert_eq!(
            &query(&pg, "bank", name, conditions),
            expected,
            "README query {name} with {conditions:?}"
        );
    }
}

#[test]
fn each_condition_has_its_index() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_schema("bank");
    let rows: Vec<_> = (0..CALLS.len()).map(call_row).collect();
    pg.psql("bank", &sink_upsert(&rows));
    pg.psql("bank", "ANALYZE cdr;");
    let explain = |sql: &str, conditions: &Conditions| -> String {
        let sql = format!("SET enable_seqscan = off;\nEXPLAIN (COSTS OFF)\n{sql}");
        pg.psql_with("bank", SUPERUSER, &conditions.vars(), &sql)
            .unwrap()
    };
    let cdrs = block("cdrs");
    let cases: Vec<(Conditions, &str)> = vec![
        (day_20(), "cdr_start_time_idx"),
        (
            Conditions {
                caller: "8001",
                ..day_20()
            },
            "cdr_caller_idx",
        ),
        (
            Conditions {
                called: "95566",
                ..day_20()
            },
            "cdr_called_idx",
        ),
        (
            Conditions {
                call_type: "video",
                ..day_20()
            },
            "cdr_call_type_idx",
        ),
        (
            Conditions {
                status: "connected",
                ..day_20()
            },
            "cdr_status_idx",
        ),
    ];
    for (conditions, index) in cases {
        let plan = explain(&cdrs, &conditions);
        assert!(
            plan.contains(index),
            "{conditions:?} should use {index}:\n{plan}"
        );
    }
    let by_node = explain(
        "SELECT count(*) FROM cdr WHERE node = 'sz-01' \
         AND start_time >= :'start' AND start_time < :'end';",
        &day_20(),
    );
    assert!(by_node.contains("cdr_node_idx"), "{by_node}");
    // An empty condition is folded away, not evaluated per row.
    let plain = explain(&cdrs, &day_20());
    assert!(!plain.contains("Filter"), "{plain}");
}

// ---------------------------------------------------------------- against the API

/// How long CDRs may take to appear in the API.
const CDR_WAIT: Duration = Duration::from_secs(10);

/// SIPp calls of `case` to number `called` through `proxy`, as `Pair` does with another
/// number; returns the Call-IDs.
fn place_calls(
    proxy: &Sipedge,
    case: &str,
    calls: u32,
    pause_ms: u32,
    called: &str,
) -> Vec<String> {
    let upstream = proxy.sip().upstream_addr();
    let uas = Sipp::uas(&format!("{case}_uas"), upstream)
        .calls(calls)
        .pause_ms(pause_ms)
        .spawn();
    if !wait_until(Duration::from_secs(5), || {
        is_bound(upstream, Transport::Udp)
    }) {
        panic!(
            "the {case} UAS never bound {upstream}\n{}",
            uas.wait().report()
        );
    }
    let uac = Sipp::uac(&format!("{case}_uac"), proxy.sip().addr())
        .calls(calls)
        .rate(50)
        .pause_ms(pause_ms)
        .arg("-s")
        .arg(called)
        .spawn();
    let uac = uac.wait();
    let uas = uas.wait();
    let calls = u64::from(calls);
    assert!(
        uac.completed(calls) && uas.completed(calls),
        "{case} to {called}: SIPp calls failed\n===== UAC\n{}\n===== UAS\n{}",
        uac.report(),
        uas.report()
    );
    let mut seen = HashSet::new();
    msglog::parse(&uac.messages)
        .into_iter()
        .filter(|m| m.sent && m.method() == Some("INVITE"))
        .map(|m| m.call_id)
        .filter(|c| seen.insert(c.clone()))
        .collect()
}

/// A CDR of the API as an `INSERT`'s values.
fn api_row(cdr: &Value) -> BTreeMap<&'static str, String> {
    COLUMNS
        .iter()
        .map(|&column| {
            let value = match &cdr[column] {
                Value::Null => "NULL".to_owned(),
                Value::String(s) => literal(s),
                Value::Number(n) => n.to_string(),
                other => panic!("{column} = {other} in {cdr}"),
            };
            (column, value)
        })
        .collect()
}

/// The API's query string for `conditions` (times in its `YYYYMMDDhhmmss` form, local).
fn api_query(c: &Conditions, start: DateTime<Tz>, end: DateTime<Tz>) -> String {
    let mut q = format!(
        "start={}&end={}",
        start.format("%Y%m%d%H%M%S"),
        end.format("%Y%m%d%H%M%S")
    );
    for (name, value) in [
        ("type", c.call_type),
        ("caller", c.caller),
        ("called", c.called),
        ("status", c.status),
    ] {
        if !value.is_empty() {
            q.push_str(&format!("&{name}={value}"));
        }
    }
    q
}

fn api_ids(api: std::net::SocketAddr, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get_json(api, &format!("/api/cdrs?{query}&limit=1000{cursor}"));
        assert_eq!(status, 200, "/api/cdrs?{query}: {page}");
        for cdr in page["items"].as_array().unwrap() {
            ids.push(cdr["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return ids,
        }
    }
}

fn lines(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

fn num(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a number: {e}"))
}

fn same(sql: &str, api: &Value, what: &str) {
    let api = api
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: {api} is not a number"));
    assert!(
        (num(sql) - api).abs() < 1e-9,
        "{what}: SQL says {sql}, the API {api}"
    );
}

/// The README's answers for `conditions` equal the API's for the same interval.
fn check_against_api(
    pg: &Postgres,
    api: std::net::SocketAddr,
    cdrs: &[Value],
    base: &Conditions,
    start: DateTime<Tz>,
    end: DateTime<Tz>,
) {
    let c = Conditions {
        start: start.to_rfc3339(),
        end: end.to_rfc3339(),
        ..base.clone()
    };
    let query_string = api_query(&c, start, end);
    let what = |name: &str| format!("{name} with {query_string}");
    let (status, stats) = get_json(api, &format!("/api/stats?{query_string}"));
    assert_eq!(status, 200, "/api/stats?{query_string}: {stats}");

    // Totals per type, and the connect rate.
    let totals = lines(&query(pg, "bank", "totals_per_type", &c));
    for kind in ["audio", "video", "all"] {
        let t = &stats["totals"][kind];
        match totals.iter().find(|r| r[0] == kind) {
            Some(r) => {
                for (i, field) in ["calls", "connected", "connect_rate", "talk_s", "avg_talk_s"]
                    .iter()
                    .enumerate()
                {
                    same(
                        &r[i + 1],
                        &t[field],
                        &what(&format!("totals_per_type {kind}.{field}")),
                    );
                }
            }
            None => assert_eq!(t["calls"], 0, "{}: no {kind} row", what("totals_per_type")),
        }
    }
    let rate = lines(&query(pg, "bank", "connect_rate", &c));
    let all = &stats["totals"]["all"];
    same(&rate[0][0], &all["calls"], &what("connect_rate calls"));
    same(
        &rate[0][1],
        &all["connected"],
        &what("connect_rate connected"),
    );
    same(&rate[0][3], &all["connect_rate"], &what("connect_rate"));

    // Buckets: the API lists every hour or day, the README's query those with calls.
    let (name, format) = match stats["bucket"].as_str() {
        Some("hour") => ("hourly", "%Y-%m-%d %H:%M:%S"),
        Some("day") => ("daily", "%Y-%m-%d"),
        other => panic!("bucket {other:?}"),
    };
    let api_buckets: Vec<Vec<String>> = stats["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["audio"]["calls"].as_u64().unwrap() + b["video"]["calls"].as_u64().unwrap() > 0
        })
        .map(|b| {
            let at = DateTime::parse_from_rfc3339(b["start"].as_str().unwrap())
                .unwrap()
                .with_timezone(&ZONE);
            vec![
                at.format(format).to_string(),
                b["audio"]["calls"].to_string(),
                b["audio"]["talk_s"].as_f64().unwrap().to_string(),
                b["video"]["calls"].to_string(),
                b["video"]["talk_s"].as_f64().unwrap().to_string(),
            ]
        })
        .collect();
    let sql_buckets: Vec<Vec<String>> = lines(&query(pg, "bank", name, &c))
        .into_iter()
        .map(|r| {
            vec![
                r[0].clone(),
                r[1].clone(),
                num(&r[2]).to_string(),
                r[3].clone(),
                num(&r[4]).to_string(),
            ]
        })
        .collect();
    assert_eq!(sql_buckets, api_buckets, "{}", what(name));

    // The records, in the API's order.
    let sql_ids: Vec<String> = lines(&query(pg, "bank", "cdrs", &c))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    let listed = api_ids(api, &query_string);
    assert_eq!(sql_ids, listed, "{}", what("cdrs"));

    // Outcomes and nodes, counted from the API's records.
    let mut outcomes: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for cdr in cdrs
        .iter()
        .filter(|c| listed.iter().any(|id| c["id"] == id.as_str()))
    {
        let code = cdr["sip_code"]
            .as_u64()
            .map_or(String::new(), |c| c.to_string());
        let key = (
            cdr["status"].as_str().unwrap().to_owned(),
            cdr["disposition"].as_str().unwrap().to_owned(),
            code,
        );
        *outcomes.entry(key).or_default() += 1;
    }
    let sql_outcomes: BTreeMap<(String, String, String), u64> =
        lines(&query(pg, "bank", "outcomes", &c))
            .into_iter()
            .map(|r| {
                (
                    (r[0].clone(), r[1].clone(), r[2].clone()),
                    r[3].parse().unwrap(),
                )
            })
            .collect();
    assert_eq!(sql_outcomes, outcomes, "{}", what("outcomes"));
    let nodes = lines(&query(pg, "bank", "per_node", &c));
    if all["calls"] == 0 {
        assert!(nodes.is_empty(), "{}: {nodes:?}", what("per_node"));
    } else {
        assert_eq!(nodes.len(), 1, "{}: {nodes:?}", what("per_node"));
        assert_eq!(nodes[0][0], "test");
        same(&nodes[0][1], &all["calls"], &what("per_node calls"));
        same(&nodes[0][2], &all["connected"], &what("per_node connected"));
        same(
            &nodes[0][3],
            &all["connect_rate"],
            &what("per_node connect_rate"),
        );
        same(
            &nodes[0][4],
            &stats["totals"]["audio"]["talk_s"],
            &what("per_node audio"),
        );
        same(
            &nodes[0][5],
            &stats["totals"]["video"]["talk_s"],
            &what("per_node video"),
        );
    }
}

#[test]
fn readme_queries_agree_with_the_api() {
    let pg = Postgres::start();
    pg.create_database("bank");
    pg.apply_schema("bank");
    let proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()));

    // (scenario, calls, talk or ringing ms, called number)
    let plan: [(&str, u32, u32, &str); 7] = [
        ("call", 3, 200, "95566"),
        ("call", 2, 300, "95588"),
        ("video", 2, 200, "95566"),
        ("busy", 2, 0, "95566"),
        ("declined", 1, 0, "95588"),
        ("cancel", 1, 0, "95566"),
        ("noanswer_480", 1, 100, "95566"),
    ];
    let mut call_ids = Vec::new();
    for (case, calls, pause_ms, called) in plan {
        call_ids.extend(place_calls(&proxy, case, calls, pause_ms, called));
    }
    let api = proxy.addr("api");
    cdrs::wait_for(api, &call_ids, CDR_WAIT);
    let listed = cdrs::all(api);
    assert_eq!(
        listed.len(),
        call_ids.len(),
        "one CDR per call: {listed:#?}"
    );
    let called: BTreeSet<&str> = listed
        .iter()
        .map(|c| c["called"].as_str().unwrap())
        .collect();
    assert_eq!(
        called,
        BTreeSet::from(["95566", "95588"]),
        "SIPp's -s gave the numbers"
    );

    // What the sink will do, by hand: every CDR into the table.
    let rows: Vec<_> = listed.iter().map(api_row).collect();
    pg.psql("bank", &sink_upsert(&rows));
    // The database derives the durations as sipedge does.
    for cdr in &listed {
        let id = cdr["id"].as_str().unwrap();
        let derived = pg.psql(
            "bank",
            &format!(
                "SELECT duration_s, talk_s FROM cdr WHERE id = {};",
                literal(id)
            ),
        );
        let derived: Vec<&str> = derived.trim().split('|').collect();
        same(
            derived[0],
            &cdr["duration_s"],
            &format!("duration_s of {id}"),
        );
        same(derived[1], &cdr["talk_s"], &format!("talk_s of {id}"));
    }

    // A day of hours around now and three local days, each with every kind of condition.
    let now = Utc::now().with_timezone(&ZONE);
    let hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap();
    let midnight = ZONE
        .from_local_datetime(&now.date_naive().and_hms_opt(0, 0, 0).unwrap())
        .single()
        .unwrap();
    let intervals = [
        (hour - Span::hours(12), hour + Span::hours(12)),
        (midnight - Span::days(1), midnight + Span::days(2)),
    ];
    let conditions: Vec<Conditions> = vec![
        Conditions::default(),
        Conditions {
            call_type: "audio",
            ..Conditions::default()
        },
        Conditions {
            call_type: "voice",
            ..Conditions::default()
        },
        Conditions {
            call_type: "video",
            ..Conditions::default()
        },
        Conditions {
            status: "connected",
            ..Conditions::default()
        },
        Conditions {
            status: "not_connected",
            ..Conditions::default()
        },
        Conditions {
            caller: "8001",
            ..Conditions::default()
        },
        Conditions {
            caller: "80*",
            ..Conditions::default()
        },
        Conditions {
            caller: "9*",
            ..Conditions::default()
        },
        Conditions {
            called: "95588",
            ..Conditions::default()
        },
        Conditions {
            called: "9556*",
            ..Conditions::default()
        },
        Conditions {
            call_type: "audio",
            status: "connected",
            called: "95566",
            ..Conditions::default()
        },
    ];
    for (start, end) in intervals {
        for c in &conditions {
            check_against_api(&pg, api, &listed, c, start, end);
        }
    }
}
