//! `sipedge cdrs --config FILE`: the offline listing, against a store a real sipedge filled
//! with SIPp calls; refused, in one line with exit 64, while that sipedge still runs.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.

mod support;

use std::process::Output;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use support::Sipedge;
use support::cdrs;
use support::config::{Config, Sip};
use support::sipedge::run;
use support::sipp::{Pair, Transport};

const CALLS: u32 = 4;

fn cdrs_command(proxy: &Sipedge, args: &[&str]) -> Output {
    let config = proxy.config_path().to_str().expect("a UTF-8 temp path");
    run(["cdrs", "--config", config].iter().chain(args))
}

/// The interval arguments around now, so that a run near midnight still lists today's calls.
fn around_now() -> [String; 4] {
    let now = Utc::now();
    let at = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    [
        "--start".to_owned(),
        at(now - chrono::Duration::hours(1)),
        "--end".to_owned(),
        at(now + chrono::Duration::hours(1)),
    ]
}

fn listing(engine: &str) {
    let mut proxy = Sipedge::start(&Config::new("test").sip(Sip::one_port()).set(
        "store",
        "engine",
        &format!("\"{engine}\""),
    ));
    Pair::new("call", Transport::Udp, CALLS)
        .run(proxy.sip().addr(), proxy.sip().upstream_addr())
        .assert_passed();
    Pair::new("busy", Transport::Udp, 1)
        .run(proxy.sip().addr(), proxy.sip().upstream_addr())
        .assert_passed();
    let api = proxy.addr("api");
    assert!(
        support::wait_until(Duration::from_secs(10), || cdrs::all(api).len()
            == CALLS as usize + 1),
        "{engine}: the CDRs never all reached the API\n{}",
        proxy.report()
    );
    let from_api = cdrs::all(api);

    let window = around_now();
    let window: Vec<&str> = window.iter().map(String::as_str).collect();
    let refused = cdrs_command(&proxy, &window);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{engine}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{engine}: one line, got {stderr:?}"
    );
    assert!(
        stderr.contains("another process has the store") && stderr.contains("stop it first"),
        "{engine}: {stderr:?}"
    );
    assert!(
        refused.stdout.is_empty(),
        "{engine}: printed while refusing"
    );

    let status = proxy.stop();
    assert!(
        status.success(),
        "{engine}: sipedge stopped with {status:?}"
    );

    let out = cdrs_command(&proxy, &window);
    assert!(
        out.status.success(),
        "{engine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{engine}: {e}: {l}")))
        .collect();
    assert_eq!(
        listed, from_api,
        "{engine}: the listing differs from the API's"
    );

    let mut limited = window.clone();
    limited.extend(["--limit", "2"]);
    let out = cdrs_command(&proxy, &limited);
    assert!(
        out.status.success(),
        "{engine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 2, "{engine}: --limit 2 printed {lines:#?}");
    assert_eq!(
        serde_json::from_str::<Value>(&lines[0]).expect("JSON line"),
        from_api[0],
        "{engine}: newest first"
    );

    let mut csv = window.clone();
    csv.push("--csv");
    let out = cdrs_command(&proxy, &csv);
    assert!(
        out.status.success(),
        "{engine}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert!(
        rows[0].starts_with("id,node,call_id,caller,called,"),
        "{engine}: {text}"
    );
    assert_eq!(
        rows.len(),
        CALLS as usize + 2,
        "{engine}: header and one row a call: {text}"
    );
    for (row, cdr) in rows[1..].iter().zip(&from_api) {
        let id = cdr["id"].as_str().expect("id");
        assert!(row.starts_with(&format!("{id},test,")), "{engine}: {row}");
        assert!(
            row.contains(cdr["disposition"].as_str().expect("disposition")),
            "{row}"
        );
    }

    for (bad, names) in [
        (&["--limit", "0"][..], "--limit"),
        (&["--start", "yesterday"][..], "--start"),
    ] {
        let out = cdrs_command(&proxy, bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{engine} {bad:?}: {stderr}");
        assert!(
            stderr.contains(names) && stderr.lines().count() == 1,
            "{engine} {bad:?}: {stderr:?}"
        );
    }
}

#[test]
fn lists_a_redb_store() {
    listing("redb");
}

#[test]
fn lists_a_sled_store() {
    listing("sled");
}
