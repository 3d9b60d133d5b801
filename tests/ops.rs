//! Black-box tests of operations (SPEC §9): the systemd unit, the notify protocol, reload on
//! SIGHUP without dropping calls or connections, and the graceful stop on SIGTERM.
//!
//! Needs `sipp` (Debian `sip-tester`) and `systemd-analyze` (Debian `systemd`) on PATH.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::config::{Config, Sip, quote};
use support::http::KeepAlive;
use support::ports::{self, PROXY_IP, UPSTREAM_IP};
use support::sipedge::{binary, run, token_body};
use support::sipp::{Pair, Sipp, Transport};
use support::{Sipedge, http, require_tool, wait_until};

/// A config with the account responder and the API on loopback, the API on a port drawn
/// here so that a reload can move it.
fn config(appid: &str, account: &str) -> Config {
    Config::new("ops-test")
        .set("node", "stop_timeout", "\"8s\"")
        .set("account", "appids", &format!("[{}]", quote(appid)))
        .set("account", "account", &quote(account))
        .set(
            "api",
            "listen",
            &quote(&format!("{PROXY_IP}:{}", ports::free_port())),
        )
        .set("api", "allow", "[\"127.0.0.0/8\"]")
}

/// The `account` of a reply, or None when it was refused.
fn granted(reply: &(u16, String)) -> Option<String> {
    assert_eq!(reply.0, 200, "{reply:?}");
    let value: Value = serde_json::from_str(&reply.1).unwrap();
    value["account"].as_str().map(str::to_owned)
}

/// Sends SIGHUP and waits until the log shows `count` reload outcomes in all.
fn reload(se: &Sipedge, count: usize) {
    se.signal("HUP");
    let done = wait_until(Duration::from_secs(10), || {
        let log = se.stderr();
        log.matches("configuration reloaded").count() + log.matches("reload refused").count()
            >= count
    });
    assert!(done, "no reload outcome logged:\n{}", se.stderr());
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_tool("systemd-analyze", "--version", "systemd");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/sipedge.service"),
    )
    .unwrap();
    // verify checks that the programs exist: point them at the binary under test.
    assert!(unit.contains("ExecStart=/usr/bin/sipedge serve"), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("sipedge.service");
    std::fs::write(&copy, unit.replace("/usr/bin/sipedge", binary())).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(needed), "the unit lacks {needed:?}");
    }
    // The monitor reads /proc of other processes.
    assert!(
        !unit
            .lines()
            .any(|l| l.starts_with("ProtectProc=") || l.starts_with("ProcSubset=")),
        "{unit}"
    );
}

/// Datagrams received on a notify socket, collected until `want` has been seen.
fn expect(socket: &UnixDatagram, seen: &mut Vec<String>, want: &str, se: &Sipedge) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.lines().any(|l| l == want);
            seen.push(message);
            if found {
                return;
            }
        }
    }
    panic!(
        "no {want:?} on the notify socket; got {seen:?}\n{}",
        se.stderr()
    );
}

#[test]
fn notify_protocol_ready_watchdog_reloading_stopping() {
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&sock_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let sock = sock_path.display().to_string();
    let mut se = Sipedge::start_env(
        &config("a1", "acc"),
        &[("NOTIFY_SOCKET", &sock), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    expect(&socket, &mut seen, "READY=1", &se);
    // Ready means bound: the account listener answers now.
    assert_eq!(http(se.addr("account"), "GET", "/healthz", "").status, 200);
    // Pings at half of 400 ms: at least three in a second.
    let before = seen.len();
    std::thread::sleep(Duration::from_secs(1));
    let mut buf = [0u8; 4096];
    let mut pings = 0;
    socket.set_nonblocking(true).unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            pings += 1;
        }
    }
    socket.set_nonblocking(false).unwrap();
    assert!(
        pings >= 3,
        "{pings} watchdog pings in 1 s; before: {seen:?}"
    );
    assert!(seen.len() >= before);

    seen.clear();
    se.signal("HUP");
    expect(&socket, &mut seen, "RELOADING=1", &se);
    let reloading = seen.last().unwrap().clone();
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    expect(&socket, &mut seen, "READY=1", &se);

    // stop() sends SIGTERM and waits for the exit; the datagrams stay queued on the socket.
    seen.clear();
    assert_eq!(se.stop().code(), Some(0), "{}", se.stderr());
    expect(&socket, &mut seen, "STOPPING=1", &se);
}

#[test]
fn reload_serves_the_new_account_on_open_connections() {
    let se = Sipedge::start(&config("old-appid", "acc-old"));
    let path = se.config_path().to_owned();
    let account = se.addr("account");
    let mut conn = KeepAlive::open(account);
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("old-appid"))).as_deref(),
        Some("acc-old")
    );

    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace("[\"old-appid\"]", "[\"new-appid\"]")
        .replace("\"acc-old\"", "\"acc-new\"")
        .replace("allow = [\"127.0.0.0/8\"]", "allow = [\"10.0.0.0/8\"]");
    // A changed listen address needs a restart: the reload must say so, and keep the old one.
    let api_addr = se.addr("api");
    let changed = changed.replace(
        &format!("{api_addr}"),
        &format!("{PROXY_IP}:{}", ports::free_port()),
    );
    assert!(changed.contains("10.0.0.0/8") && !changed.contains(&api_addr.to_string()));
    // log.level applies too: the per-request info lines stop.
    let changed = format!("{changed}\n[log]\nlevel = \"warn\"\n");
    std::fs::write(&path, changed).unwrap();
    reload(&se, 1);
    let info_lines = se.stderr().matches("account request").count();
    assert_eq!(info_lines, 1, "{}", se.stderr());

    // The same connection, opened before the reload, gets the new account.
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("old-appid"))),
        None
    );
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("new-appid"))).as_deref(),
        Some("acc-new")
    );
    let mut fresh = KeepAlive::open(account);
    assert_eq!(
        granted(&fresh.post("/AgoraAccount", &token_body("new-appid"))).as_deref(),
        Some("acc-new")
    );
    assert_eq!(se.stderr().matches("account request").count(), info_lines);
    // api.allow applied: loopback is no longer allowed, on the unchanged listener.
    assert_eq!(http(api_addr, "GET", "/healthz", "").status, 403);
    let log = se.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("only after a restart") && l.contains("api.listen")),
        "{log}"
    );
}

/// The `config_invalid` alarms `/api/alarms` lists, newest first.
fn config_alarms(se: &Sipedge) -> Vec<Value> {
    let reply = http(se.addr("api"), "GET", "/api/alarms?limit=100", "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    value["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "config_invalid")
        .cloned()
        .collect()
}

/// The value of one unlabelled-or-labelled sample line of `/metrics`.
fn metric(se: &Sipedge, line_start: &str) -> Option<String> {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .map(|v| v.trim().to_owned())
}

#[test]
fn an_invalid_file_keeps_the_running_config_and_says_why() {
    let se = Sipedge::start(&config("kept-appid", "acc-kept"));
    let path = se.config_path().to_owned();
    let account = se.addr("account");
    let gauge = "sipedge_alarms_active{kind=\"config_invalid\"}";
    assert_eq!(metric(&se, gauge).as_deref(), Some("0"));
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("[account]", "[account]\ncolour = 1")
            .replace("[\"kept-appid\"]", "[\"other\"]"),
    )
    .unwrap();
    reload(&se, 1);
    let log = se.stderr();
    let refused = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains("colour"), "{refused}");
    let mut conn = KeepAlive::open(account);
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("kept-appid"))).as_deref(),
        Some("acc-kept")
    );
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("other"))),
        None
    );
    // An alarm, stored, counted and naming the file and the problem; health is not down.
    assert!(
        wait_until(Duration::from_secs(5), || config_alarms(&se).len() == 1),
        "{:?}\n{}",
        config_alarms(&se),
        se.stderr()
    );
    let alarm = config_alarms(&se).remove(0);
    assert_eq!(alarm["target"], path.display().to_string(), "{alarm}");
    assert_eq!(alarm["severity"], "warning", "{alarm}");
    assert_eq!(alarm["node"], "ops-test", "{alarm}");
    assert!(alarm["cleared_at"].is_null(), "{alarm}");
    assert!(
        alarm["message"].as_str().unwrap().contains("colour"),
        "{alarm}"
    );
    assert_eq!(metric(&se, gauge).as_deref(), Some("1"));
    assert_eq!(http(se.addr("api"), "GET", "/healthz", "").status, 200);

    // A file that cannot be read at all is refused the same way; the alarm stays the one.
    std::fs::remove_file(&path).unwrap();
    reload(&se, 2);
    assert_eq!(se.stderr().matches("reload refused").count(), 2);
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("kept-appid"))).as_deref(),
        Some("acc-kept")
    );

    // A good file again: applied, and the same alarm (same id) cleared.
    std::fs::write(&path, text.replace("\"acc-kept\"", "\"acc-fixed\"")).unwrap();
    reload(&se, 3);
    assert!(
        wait_until(Duration::from_secs(5), || {
            let alarms = config_alarms(&se);
            alarms.len() == 1 && !alarms[0]["cleared_at"].is_null()
        }),
        "{:?}\n{}",
        config_alarms(&se),
        se.stderr()
    );
    assert_eq!(config_alarms(&se)[0]["id"], alarm["id"]);
    assert_eq!(metric(&se, gauge).as_deref(), Some("0"));
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("kept-appid"))).as_deref(),
        Some("acc-fixed")
    );
}

/// INVITEs sent from one socket to sipedge's SIP port; returns how many reached the
/// upstream socket within a short quiet period.
fn flood(
    from: &std::net::UdpSocket,
    to: SocketAddr,
    upstream: &std::net::UdpSocket,
    tag: &str,
) -> usize {
    for i in 0..50 {
        let call_id = format!("{tag}-{i}");
        let invite = format!(
            "INVITE sip:95566@{UPSTREAM_IP} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.168.1.9;branch=z9hG4bK-{call_id};rport\r\n\
             From: <sip:8001@bank>;tag=t-{call_id}\r\nTo: <sip:95566@bank>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:8001@192.168.1.9:5060>\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n"
        );
        from.send_to(invite.as_bytes(), to).unwrap();
    }
    upstream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 65_535];
    let mut relayed = 0;
    // The monitor's OPTIONS probes reach the same socket: only this flood's INVITEs count.
    while let Ok(n) = upstream.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains(&format!("Call-ID: {tag}-")) {
            relayed += 1;
        }
    }
    relayed
}

#[test]
fn reload_applies_the_per_source_limits() {
    let se = Sipedge::start(
        &config("a", "acc")
            .sip(Sip::one_port())
            .set("sip", "source_rate_limit", "1")
            .set("sip", "source_rate_burst", "5"),
    );
    let path = se.config_path().to_owned();
    let target = se.sip().addr();
    let upstream = std::net::UdpSocket::bind(se.sip().upstream_addr()).unwrap();
    let terminal = std::net::UdpSocket::bind(SocketAddr::new(PROXY_IP, 0)).unwrap();
    let before = flood(&terminal, target, &upstream, "limited");
    assert!(
        (5..=6).contains(&before),
        "{before} of 50 relayed\n{}",
        se.stderr()
    );

    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("source_rate_limit = 1", "source_rate_limit = 0"),
    )
    .unwrap();
    reload(&se, 1);
    let log = se.stderr();
    assert!(!log.contains("only after a restart"), "{log}");
    let after = flood(&terminal, target, &upstream, "unlimited");
    assert_eq!(after, 50, "{}", se.stderr());

    // And back on, with a larger burst.
    std::fs::write(
        &path,
        text.replace("source_rate_burst = 5", "source_rate_burst = 20"),
    )
    .unwrap();
    reload(&se, 2);
    // Another source address: a bucket of its own, full at the new burst.
    let other = std::net::UdpSocket::bind("127.0.0.3:0").unwrap();
    let again = flood(&other, target, &upstream, "burst");
    assert!(
        (20..=21).contains(&again),
        "{again} of 50 relayed\n{}",
        se.stderr()
    );
}

#[test]
fn reload_during_a_sipp_load_fails_no_call() {
    require_tool("sipp", "-v", "sip-tester");
    let se = Sipedge::start(&config("a0", "acc-0").sip(Sip::one_port()));
    let path = se.config_path().to_owned();
    let (target, upstream) = (se.sip().addr(), se.sip().upstream_addr());
    let calls = 300;
    let load = std::thread::spawn(move || {
        Pair::new("call", Transport::Udp, calls)
            .rate(100)
            .pause_ms(200)
            .run(target, upstream)
    });
    let text = std::fs::read_to_string(&path).unwrap();
    for round in 1..=5 {
        std::thread::sleep(Duration::from_millis(300));
        let next = text
            .replace("[\"a0\"]", &format!("[\"a{round}\"]"))
            .replace("\"acc-0\"", &format!("\"acc-{round}\""));
        std::fs::write(&path, next).unwrap();
        reload(&se, round);
    }
    let outcome = load.join().unwrap();
    outcome.assert_passed();
    let mut conn = KeepAlive::open(se.addr("account"));
    assert_eq!(
        granted(&conn.post("/AgoraAccount", &token_body("a5"))).as_deref(),
        Some("acc-5")
    );
}

/// The CDRs the API lists (all of today's, which is when the test ran).
fn cdr_count(se: &Sipedge) -> usize {
    let reply = http(se.addr("api"), "GET", "/api/cdrs?limit=1000", "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let value: Value = serde_json::from_str(&reply.body).unwrap();
    value["items"].as_array().map_or(0, Vec::len)
}

#[test]
fn sigterm_during_calls_exits_0_and_loses_no_call() {
    require_tool("sipp", "-v", "sip-tester");
    let mut se = Sipedge::start(&config("a", "acc").sip(Sip::one_port()));
    let (target, upstream) = (se.sip().addr(), se.sip().upstream_addr());

    // Finished calls first: their CDRs must all be on disk after the stop.
    Pair::new("call", Transport::Udp, 20)
        .rate(50)
        .run(target, upstream)
        .assert_passed();
    // Then calls that are up when SIGTERM comes and hang up after the restart: the stop
    // saves them, the next start resumes them, and their BYEs (retransmitted over UDP while
    // the proxy is down) close them.
    let held = 10;
    let uas = Sipp::uas("call_uas", upstream)
        .calls(held)
        .pause_ms(5000)
        .spawn();
    assert!(wait_until(Duration::from_secs(5), || {
        std::net::UdpSocket::bind(upstream).is_err()
    }));
    let uac = Sipp::uac("call_uac", target)
        .calls(held)
        .rate(20)
        .pause_ms(5000)
        .spawn();
    std::thread::sleep(Duration::from_millis(2000));
    let stopped = Instant::now();
    assert_eq!(se.stop().code(), Some(0), "{}", se.stderr());
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(8), "the stop took {took:?}");
    assert!(se.stderr().contains("sipedge stopped"), "{}", se.stderr());
    // The relay's threads are woken out of their receive calls, not torn down.
    assert!(!se.stderr().contains("panicked"), "{}", se.stderr());

    se.restart();
    assert_eq!(cdr_count(&se), 20, "{}", se.stderr());
    let uac = uac.wait();
    let uas = uas.wait();
    uac.assert_passed("held calls, terminal side", u64::from(held));
    uas.assert_passed("held calls, Sipserver side", u64::from(held));
    assert!(
        wait_until(Duration::from_secs(5), || cdr_count(&se) == 30),
        "{} CDRs\n{}",
        cdr_count(&se),
        se.stderr()
    );
}

#[test]
fn the_packaged_config_needs_an_appid_and_is_a_node_config_once_it_has_one() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = |path: &Path, quiet: bool| {
        let mut args = vec!["check-config", "--config", path.to_str().unwrap()];
        if quiet {
            args.push("--quiet");
        }
        run(args)
    };
    let shipped = root.join("etc/debian/sipedge.toml");
    let out = check(&shipped, true);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("account.appids"),
        "{out:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let filled = dir.path().join("sipedge.toml");
    let text = std::fs::read_to_string(&shipped).unwrap();
    std::fs::write(
        &filled,
        text.replace("appids = []", "appids = [\"bank-appid\"]"),
    )
    .unwrap();
    let quiet = check(&filled, true);
    assert!(
        quiet.status.success() && quiet.stdout.is_empty(),
        "{quiet:?}"
    );
    let shown = String::from_utf8(check(&filled, false).stdout).unwrap();
    for expected in [
        "data_dir = \"/var/lib/sipedge\"",
        "listen = \"0.0.0.0:14700\"",
        "listen = \"0.0.0.0:8068\"",
        "listen = \"0.0.0.0\"",
        "stop_timeout = \"10s\"",
    ] {
        assert!(shown.contains(expected), "{expected} not in\n{shown}");
    }
}
