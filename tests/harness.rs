//! The harness's own parsers (`tests/support/`), checked here once rather than in every test
//! binary that compiles the harness.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::net::SocketAddr;

use support::msglog;
use support::process::strip_ansi;
use support::sipedge::parse_listening;
use support::sipp::Stats;

fn check_listening(line: &str, expected: Option<(&str, &[&str])>) {
    let got = parse_listening(&strip_ansi(line));
    let expected = expected.map(|(n, addrs)| {
        let addrs = addrs
            .iter()
            .map(|a| a.parse().expect("valid address in the table"))
            .collect::<Vec<SocketAddr>>();
        (n.to_owned(), addrs)
    });
    assert_eq!(got, expected, "line: {line:?}");
}

#[test]
fn listening_lines() {
    check_listening(
        "2026-11-28T17:00:00Z  INFO sipedge: listening listener=sip-udp addr=127.0.0.1:14500",
        Some(("sip-udp", &["127.0.0.1:14500"])),
    );
    check_listening(
        "INFO sipedge::serve: listening listener=sip-tcp addr=127.0.0.1:14500-14502",
        Some((
            "sip-tcp",
            &["127.0.0.1:14500", "127.0.0.1:14501", "127.0.0.1:14502"],
        )),
    );
    check_listening("listening listener=sip addr=127.0.0.1:14502-14500", None);
    check_listening(
        "INFO listening listener=\"api\" addr=127.0.0.1:8068",
        Some(("api", &["127.0.0.1:8068"])),
    );
    check_listening(
        "\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0msip \
         \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5060",
        Some(("sip", &["127.0.0.1:5060"])),
    );
    check_listening("listening peer_addr=1.2.3.4:5 listener=x", None);
    check_listening("INFO started listener=sip addr=127.0.0.1:5060", None);
    check_listening("listening listener=sip addr=nonsense", None);
}

fn check_stats(csv: &str, expected: Option<(u64, u64, u64)>) {
    let expected = expected.map(|(created, successful, failed)| Stats {
        created,
        successful,
        failed,
    });
    assert_eq!(Stats::parse(csv), expected, "csv: {csv:?}");
}

#[test]
fn stats_csv() {
    let header = "StartTime;TotalCallCreated;CurrentCall;SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);";
    check_stats(
        &format!("{header}\na;5;0;1;4;0;1;\nb;10;0;2;9;0;1;\n"),
        Some((10, 9, 1)),
    );
    check_stats(&format!("{header}\n"), None);
    check_stats("", None);
    check_stats(&format!("{header}\nb;x;0;2;9;0;1;\n"), None);
}

fn check_log(log: &str, expected: &[(bool, &str, &str, &str)]) {
    let got: Vec<(bool, String, String, String)> = msglog::parse(log)
        .into_iter()
        .map(|m| (m.sent, m.first_line, m.call_id, m.cseq_method))
        .collect();
    let expected: Vec<(bool, String, String, String)> = expected
        .iter()
        .map(|(s, f, c, m)| (*s, f.to_string(), c.to_string(), m.to_string()))
        .collect();
    assert_eq!(got, expected, "log: {log}");
}

#[test]
fn message_logs() {
    let invite = "----------------------------------------------- 2026-11-28 18:41:32.062614\n\
        UDP message sent (400 bytes):\n\nINVITE sip:95566@127.0.0.2:29999 SIP/2.0\n\
        Call-ID: 1-10069@127.0.0.1\nCSeq: 1 INVITE\n\n";
    let ok = "----------------------------------------------- 2026-11-28 18:41:32.067473\n\
        UDP message received [300] bytes :\n\nSIP/2.0 200 OK\n\
        Call-ID: 1-10069@127.0.0.1\nCSeq: 2 BYE\n\n";
    check_log(
        &format!("{invite}{ok}"),
        &[
            (
                true,
                "INVITE sip:95566@127.0.0.2:29999 SIP/2.0",
                "1-10069@127.0.0.1",
                "INVITE",
            ),
            (false, "SIP/2.0 200 OK", "1-10069@127.0.0.1", "BYE"),
        ],
    );
    check_log("", &[]);
    check_log(
        "----------------------------------------------- not a time\nSIP/2.0 200 OK\n",
        &[],
    );
    let parsed = msglog::parse(ok);
    assert_eq!(parsed[0].status(), Some(200));
    assert_eq!(msglog::parse(invite)[0].method(), Some("INVITE"));
    assert!(parsed[1..].is_empty());
}
