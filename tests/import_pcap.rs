//! `sipedge import-pcap` (issue 14): a tshark capture of SIPp calls through a real sipedge
//! gives the CDRs the proxy wrote live; captures made up here check TCP reassembly, the
//! skipped and counted packets, a file cut mid-record and a file that is no capture.
//!
//! Needs `sipp` and `tshark` (tests/setup.sh), and root or capture rights on `lo`.

mod support;
mod tshark;

#[path = "../benches/support/pcap.rs"]
mod pcap;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap::{From, PcapWriter, answered_call};
use serde_json::Value;
use support::Sipedge;
use support::cdrs::{self, ms};
use support::config::{Config, Sip, Upstream, quote};
use support::http::get_json;
use support::msglog;
use support::sipp::{Pair, Transport};
use tshark::Tshark;

/// How far a CDR time from the capture may be from the proxy's own, in ms. Both read the
/// same kernel clock, but at different moments: the capture stamps a packet when it is
/// sent on `lo`, the proxy when its task has read it (a message to a terminal: when the
/// Sipserver's copy arrived, before the relay wrote it out), and either may be scheduled
/// late on a loaded machine.
const TOLERANCE_MS: i64 = 50;

/// The summary line of packets skipped because they are the Sipserver hop's copies.
const HOP: &str = "packets on the Sipserver hop (its messages are counted on the terminal hop)";

fn import(args: &[&str]) -> Output {
    support::sipedge::run(std::iter::once("import-pcap").chain(args.iter().copied()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
        .collect()
}

/// Asserts each named field of a printed CDR.
fn expect_fields(cdr: &Value, want: &[(&str, Value)]) {
    for (field, value) in want {
        assert_eq!(&cdr[*field], value, "{field}: {cdr:#}");
    }
}

/// Asserts a printed CDR's start, ring, answer and end times, in ms since the epoch.
fn expect_times(cdr: &Value, [start, ring, answer, end]: [i64; 4]) {
    for (field, at) in [
        ("start_time", start),
        ("ring_time", ring),
        ("answer_time", answer),
        ("end_time", end),
    ] {
        assert_eq!(ms(cdr, field), Some(at), "{field}: {cdr:#}");
    }
}

/// The count a summary line `name: N` gives.
fn summary(out: &Output, name: &str) -> u64 {
    let text = stderr(out);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no `{name}: N` in the summary:\n{text}"))
}

/// Every `skipped REASON: N` line of the summary.
fn skipped(out: &Output) -> BTreeMap<String, u64> {
    stderr(out)
        .lines()
        .filter_map(|l| l.strip_prefix("skipped ")?.split_once(": "))
        .filter_map(|(reason, n)| Some((reason.to_owned(), n.parse().ok()?)))
        .collect()
}

#[test]
fn a_capture_of_proxied_calls_gives_the_cdrs_the_proxy_wrote() {
    let config = Config::new("test").sip(Sip::range(1));
    let proxy = Sipedge::start(&config);
    let dir = tempfile::tempdir().expect("tempdir");
    let tshark = Tshark::start(dir.path(), proxy.sip());
    let cases = [
        ("call", Transport::Udp, 200),
        ("busy", Transport::Udp, 0),
        ("cancel", Transport::Udp, 0),
        ("callee_bye", Transport::Tcp, 200),
        ("noanswer_cancel", Transport::Tcp, 300),
        ("auth", Transport::Tcp, 0),
    ];
    let mut call_ids = Vec::new();
    for (case, transport, pause) in cases {
        let outcome = Pair::new(case, transport, 2)
            .pause_ms(pause)
            .run(proxy.sip().addr(), proxy.sip().upstream_addr());
        outcome.assert_passed();
        let mut ids: Vec<String> = msglog::parse(&outcome.uac.messages)
            .into_iter()
            .filter(|m| m.sent && m.method() == Some("INVITE"))
            .map(|m| m.call_id)
            .collect();
        ids.dedup();
        call_ids.extend(ids);
    }
    let api = proxy.addr("api");
    let live = cdrs::wait_for(api, &call_ids, Duration::from_secs(10));
    let file = tshark.stop();

    let config_path = proxy.config_path().display().to_string();
    let file_arg = file.display().to_string();
    let out = import(&[&file_arg, "--config", &config_path, "--print", "json"]);
    assert!(out.status.success(), "import-pcap: {}", stderr(&out));
    let imported = json_lines(&out);
    let calls = call_ids.len() as u64;
    let found = cdrs::by_call_id(&imported);
    let missing: Vec<&String> = call_ids
        .iter()
        .filter(|c| !found.contains_key(*c))
        .collect();
    assert!(
        missing.is_empty(),
        "no CDR imported for {missing:?}\n{}",
        stderr(&out)
    );
    assert_eq!(summary(&out, "calls"), calls, "{}", stderr(&out));
    assert_eq!(summary(&out, "cdrs"), calls, "{}", stderr(&out));
    assert!(summary(&out, "sip messages") > 0, "{}", stderr(&out));
    assert!(
        summary(&out, HOP) > 0,
        "the capture has the Sipserver hop too: {}",
        stderr(&out)
    );

    let live = cdrs::by_call_id(&live);
    let imported_by_id = cdrs::by_call_id(&imported);
    assert_eq!(
        imported.len(),
        call_ids.len(),
        "one CDR a call: {imported:#?}"
    );
    let mut worst = 0;
    for call_id in &call_ids {
        let want = &live[call_id][0];
        let got = match imported_by_id.get(call_id).map(Vec::as_slice) {
            Some([one]) => one,
            other => panic!("call {call_id}: imported {other:#?}"),
        };
        let fields = want.as_object().expect("a CDR is an object");
        assert_eq!(
            fields.keys().collect::<BTreeSet<_>>(),
            got.as_object()
                .expect("object")
                .keys()
                .collect::<BTreeSet<_>>(),
            "call {call_id}: fields"
        );
        for (field, value) in fields {
            let is_time = field.ends_with("_time") || field == "video_started_at";
            if is_time {
                match (ms(want, field), ms(got, field)) {
                    (Some(a), Some(b)) => {
                        worst = worst.max((a - b).abs());
                        assert!(
                            (a - b).abs() <= TOLERANCE_MS,
                            "call {call_id}: {field} live {a}, imported {b}"
                        );
                    }
                    (a, b) => assert_eq!(a, b, "call {call_id}: {field}"),
                }
            } else if field.ends_with("_s") {
                // Durations are differences of two times, each within the tolerance.
                let (a, b) = (value.as_f64(), got[field].as_f64());
                let (Some(a), Some(b)) = (a, b) else {
                    panic!(
                        "call {call_id}: {field} live {value}, imported {}",
                        got[field]
                    );
                };
                assert!(
                    (a - b).abs() * 1000.0 <= 2.0 * TOLERANCE_MS as f64,
                    "call {call_id}: {field} live {a}, imported {b}"
                );
            } else if field == "source" {
                assert_eq!(
                    (value.as_str(), got[field].as_str()),
                    (Some("proxy"), Some("pcap"))
                );
            } else if field == "id" {
                // A function of the start time's ms: equal when the start times are.
                if ms(want, "start_time") == ms(got, "start_time") {
                    assert_eq!(value, &got[field], "call {call_id}: id");
                }
            } else {
                assert_eq!(
                    value, &got[field],
                    "call {call_id}: {field}\nlive {want:#}\nimported {got:#}"
                );
            }
        }
    }
    eprintln!("largest time difference between the live and the imported CDRs: {worst} ms");

    // Into a fresh store: the same CDRs, listed by `sipedge cdrs`.
    let fresh = tempfile::tempdir().expect("tempdir");
    let fresh_config = config.write(fresh.path()).display().to_string();
    let out = import(&[&file_arg, "--config", &fresh_config]);
    assert!(
        out.status.success(),
        "import-pcap into a store: {}",
        stderr(&out)
    );
    assert_eq!(summary(&out, "cdrs"), calls, "{}", stderr(&out));
    let listed = support::sipedge::run(["cdrs", "--config", &fresh_config, "--limit", "1000"]);
    assert!(listed.status.success(), "cdrs: {}", stderr(&listed));
    let stored: Vec<Value> = json_lines(&listed);
    let key = |v: &Value| v.to_string();
    assert_eq!(
        stored.iter().map(key).collect::<BTreeSet<_>>(),
        imported.iter().map(key).collect::<BTreeSet<_>>(),
        "the stored CDRs are the printed ones"
    );
}

/// Addresses of a made-up capture: sipedge's port from a fresh config, a terminal beside it.
struct Scene {
    _dir: tempfile::TempDir,
    config: String,
    proxy: SocketAddr,
    upstream: SocketAddr,
    terminal: SocketAddr,
    file: PathBuf,
}

fn scene() -> Scene {
    scene_with(false)
}

/// A scene on IPv6: sipedge on `::1` forwarding to `[::1]:5060`, the terminal on `::1`.
fn scene_v6() -> Scene {
    scene_with(true)
}

fn scene_with(v6: bool) -> Scene {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sip = Sip::range(1);
    let mut config = Config::new("test");
    let (proxy_ip, terminal_ip) = if v6 {
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        sip.upstream = Upstream::Fixed(SocketAddr::new(ip, 5060));
        config = config.set("sip", "listen", &quote(&ip.to_string()));
        (ip, ip)
    } else {
        (sip.addr().ip(), support::ports::TERMINAL_IP)
    };
    let config = config.sip(sip).write(dir.path()).display().to_string();
    let port = if sip.ports.first == 5999 { 6999 } else { 5999 };
    let file = dir.path().join("made.pcap");
    Scene {
        config,
        proxy: SocketAddr::new(proxy_ip, sip.ports.first),
        upstream: sip.upstream_addr(),
        terminal: SocketAddr::new(terminal_ip, port),
        file,
        _dir: dir,
    }
}

/// 2026-01-05 08:00:00 UTC, in µs.
const T0: i64 = 1_767_600_000_000_000;

#[test]
fn tcp_messages_split_across_segments_or_sharing_one_are_reassembled() {
    let s = scene();
    let msgs = answered_call("tcp-call-1", s.terminal, s.proxy, "TCP");
    let text = |i: usize| msgs[i].1.as_bytes();
    let mut w = PcapWriter::new(std::fs::File::create(&s.file).expect("create")).expect("header");
    let (mut up, mut down) = (1000u32, 5000u32);
    w.tcp(T0 - 2000, s.terminal, s.proxy, up - 1, pcap::SYN, b"")
        .expect("write");
    w.tcp(T0 - 1000, s.proxy, s.terminal, down - 1, pcap::SYN, b"")
        .expect("write");
    // The INVITE in three segments, the middle one sent twice.
    let invite = text(0);
    let (a, b) = (invite.len() / 3, 2 * invite.len() / 3);
    for (at, part) in [
        (0, &invite[..a]),
        (1000, &invite[a..b]),
        (1500, &invite[a..b]),
        (2000, &invite[b..]),
    ] {
        let seq = if at == 1500 { up - (b - a) as u32 } else { up };
        w.tcp(T0 + at, s.terminal, s.proxy, seq, pcap::PSH_ACK, part)
            .expect("write");
        if at != 1500 {
            up += part.len() as u32;
        }
    }
    // The same INVITE relayed to the Sipserver: skipped, counted.
    w.udp(T0 + 2500, s.proxy, s.upstream, invite)
        .expect("write");
    w.tcp(
        T0 + 100_000,
        s.proxy,
        s.terminal,
        down,
        pcap::PSH_ACK,
        text(1),
    )
    .expect("write");
    down += text(1).len() as u32;
    w.tcp(
        T0 + 1_000_000,
        s.proxy,
        s.terminal,
        down,
        pcap::PSH_ACK,
        text(2),
    )
    .expect("write");
    down += text(2).len() as u32;
    // ACK and BYE in one segment.
    let both = [text(3), text(4)].concat();
    w.tcp(
        T0 + 3_000_000,
        s.terminal,
        s.proxy,
        up,
        pcap::PSH_ACK,
        &both,
    )
    .expect("write");
    up += both.len() as u32;
    w.tcp(
        T0 + 3_001_000,
        s.proxy,
        s.terminal,
        down,
        pcap::PSH_ACK,
        text(5),
    )
    .expect("write");
    w.tcp(T0 + 3_002_000, s.terminal, s.proxy, up, pcap::FIN_ACK, b"")
        .expect("write");
    // Noise: an ARP frame, a keep-alive that is no SIP, traffic of another service.
    let mut arp = pcap::ethernet(s.terminal, s.proxy, None, b"x");
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    w.frame(T0 + 3_100_000, &arp).expect("write");
    w.udp(T0 + 3_200_000, s.terminal, s.proxy, b"\x00\x01\x00\x00")
        .expect("write");
    let other = SocketAddr::new(s.proxy.ip(), 8068);
    w.tcp(
        T0 + 3_300_000,
        s.terminal,
        other,
        1,
        pcap::PSH_ACK,
        b"GET / HTTP/1.1\r\n\r\n",
    )
    .expect("write");
    drop(w);

    let file = s.file.display().to_string();
    let out = import(&[&file, "--config", &s.config, "--print", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cdrs = json_lines(&out);
    assert_eq!(cdrs.len(), 1, "{cdrs:#?}\n{}", stderr(&out));
    let cdr = &cdrs[0];
    expect_fields(
        cdr,
        &[
            ("call_id", "tcp-call-1".into()),
            ("caller", "8001".into()),
            ("called", "95566".into()),
            ("call_type", "audio".into()),
            ("status", "connected".into()),
            ("disposition", "answered".into()),
            ("sip_code", 200.into()),
            ("ended_by", "caller".into()),
            ("transport", "tcp".into()),
            ("terminal", s.terminal.to_string().into()),
            ("node", "test".into()),
            ("source", "pcap".into()),
        ],
    );
    // Each message is dated by the segment that completed it.
    let t0 = T0 / 1000;
    expect_times(cdr, [t0 + 2, t0 + 100, t0 + 1000, t0 + 3000]);
    assert_eq!(summary(&out, "packets"), 15, "{}", stderr(&out));
    assert_eq!(summary(&out, "sip messages"), 6, "{}", stderr(&out));
    assert_eq!(summary(&out, "calls"), 1, "{}", stderr(&out));
    assert_eq!(summary(&out, "skipped not_ip"), 1, "{}", stderr(&out));
    assert_eq!(summary(&out, "skipped not_sip"), 1, "{}", stderr(&out));
    assert_eq!(summary(&out, "skipped not_sipedge"), 1, "{}", stderr(&out));
    assert_eq!(summary(&out, HOP), 1, "{}", stderr(&out));

    let csv = import(&[&file, "--config", &s.config, "--print", "csv"]);
    assert!(csv.status.success(), "{}", stderr(&csv));
    let text = String::from_utf8_lossy(&csv.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one row: {text}");
    assert!(lines[1].contains("tcp-call-1"), "{text}");
}

/// A UDP call of `answered_call` written at one message per 100 ms.
fn write_udp_call(s: &Scene, call_id: &str) -> Vec<u8> {
    let mut w = PcapWriter::new(Vec::new()).expect("header");
    for (i, (from, text)) in answered_call(call_id, s.terminal, s.proxy, "UDP")
        .iter()
        .enumerate()
    {
        let (src, dst) = match from {
            From::Terminal => (s.terminal, s.proxy),
            From::Sipserver => (s.proxy, s.terminal),
        };
        w.udp(T0 + i as i64 * 100_000, src, dst, text.as_bytes())
            .expect("write");
    }
    w.into_inner()
}

#[test]
fn a_capture_cut_mid_record_is_read_up_to_the_cut() {
    let s = scene();
    let whole = write_udp_call(&s, "udp-call-1");
    let file = s.file.display().to_string();
    std::fs::write(&s.file, &whole).expect("write");
    let out = import(&[&file, "--config", &s.config, "--print", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        json_lines(&out).len(),
        1,
        "the whole file has the call: {}",
        stderr(&out)
    );

    // Cut inside the BYE (the fifth record): the call is seen to start, not to end.
    let bye = answered_call("udp-call-1", s.terminal, s.proxy, "UDP")[4]
        .1
        .len();
    let last = answered_call("udp-call-1", s.terminal, s.proxy, "UDP")[5]
        .1
        .len();
    let record = |len: usize| 16 + 14 + 20 + 8 + len;
    let cut = whole.len() - record(last) - record(bye) / 2;
    std::fs::write(&s.file, &whole[..cut]).expect("write");
    let out = import(&[&file, "--config", &s.config, "--print", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_lines(&out).len(), 0, "{}", stderr(&out));
    assert_eq!(summary(&out, "packets"), 4, "{}", stderr(&out));
    assert_eq!(summary(&out, "skipped cut_record"), 1, "{}", stderr(&out));
    assert_eq!(
        summary(
            &out,
            "calls still in progress at the end of the capture (no CDR)"
        ),
        1,
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_file_that_is_no_capture_is_refused_with_its_exit_code() {
    let s = scene();
    let file = s.file.display().to_string();
    std::fs::write(&s.file, "INVITE sip:x SIP/2.0\r\n\r\n").expect("write");
    let out = import(&[&file, "--config", &s.config, "--print", "json"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a pcap or pcapng capture"),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());

    let missing = format!("{file}.missing");
    let out = import(&[&missing, "--config", &s.config]);
    assert_eq!(out.status.code(), Some(66), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot open"), "{}", stderr(&out));

    let no_sip = tempfile::tempdir().expect("tempdir");
    let no_sip = Config::new("test")
        .write(no_sip.path())
        .display()
        .to_string();
    let out = import(&[&file, "--config", &no_sip]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    assert!(stderr(&out).contains("[sip] is needed"), "{}", stderr(&out));
}

/// On a terminal the import shows its progress on stderr (indicatif), and clears it before
/// the summary; piped, as in every other test here, it shows none.
#[test]
fn a_long_import_on_a_terminal_shows_its_progress() {
    let s = scene();
    let mut w = PcapWriter::new(std::fs::File::create(&s.file).expect("create")).expect("header");
    let calls = 5_000;
    for n in 0..calls {
        let call_id = format!("progress-{n}");
        for (i, (from, text)) in answered_call(&call_id, s.terminal, s.proxy, "UDP")
            .iter()
            .enumerate()
        {
            let (src, dst) = match from {
                From::Terminal => (s.terminal, s.proxy),
                From::Sipserver => (s.proxy, s.terminal),
            };
            let at = T0 + (n * 1_000 + i as i64 * 100) * 1_000;
            w.udp(at, src, dst, text.as_bytes()).expect("write");
        }
    }
    drop(w);
    let size = std::fs::metadata(&s.file).expect("capture").len();
    // `script` runs the import on a pseudo-terminal and copies what it wrote there.
    let command = format!(
        "{} import-pcap {} --config {} --print csv > /dev/null",
        support::sipedge::binary(),
        s.file.display(),
        s.config
    );
    let out = std::process::Command::new("script")
        .args(["--quiet", "--return", "--command", &command, "/dev/null"])
        .output()
        .expect("run script (util-linux)");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    let mib = format!("{:.2} MiB", size as f64 / f64::from(1 << 20));
    assert!(
        tty.contains(&format!("/{mib}")) && tty.contains("eta"),
        "no progress bar of {mib} on the terminal:\n{tty}"
    );
    assert!(tty.contains(&format!("calls: {calls}")), "{tty}");

    let piped = import(&[
        &s.file.display().to_string(),
        "--config",
        &s.config,
        "--print",
        "csv",
    ]);
    assert!(piped.status.success(), "{}", stderr(&piped));
    assert!(!stderr(&piped).contains("eta"), "{}", stderr(&piped));
}

/// An INVITE cut into IPv4 fragments that arrive out of order gives the call's CDR as the
/// whole datagram does; with one fragment missing, no call is seen and the incomplete
/// datagram is counted.
#[test]
fn a_fragmented_invite_is_reassembled_and_a_missing_fragment_counted() {
    let s = scene();
    let file = s.file.display().to_string();
    for missing in [false, true] {
        let mut w = PcapWriter::new(Vec::new()).expect("header");
        for (i, (from, text)) in answered_call("frag-call-1", s.terminal, s.proxy, "UDP")
            .iter()
            .enumerate()
        {
            let (src, dst) = match from {
                From::Terminal => (s.terminal, s.proxy),
                From::Sipserver => (s.proxy, s.terminal),
            };
            let at = T0 + i as i64 * 100_000;
            if i > 0 {
                w.udp(at, src, dst, text.as_bytes()).expect("write");
                continue;
            }
            let mut pieces = pcap::udp_fragments(src, dst, 7, text.as_bytes(), 160);
            assert!(pieces.len() >= 3, "{} fragments", pieces.len());
            pieces.reverse();
            if missing {
                pieces.remove(1);
            }
            for piece in &pieces {
                w.frame(at, piece).expect("write");
            }
        }
        std::fs::write(&s.file, w.into_inner()).expect("write");
        let out = import(&[&file, "--config", &s.config, "--print", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let cdrs = json_lines(&out);
        let what = format!("missing {missing}: {}", stderr(&out));
        if missing {
            assert!(cdrs.is_empty(), "{what}");
            assert_eq!(summary(&out, "skipped ip_fragment_incomplete"), 1, "{what}");
        } else {
            assert_eq!(cdrs.len(), 1, "{what}");
            assert_eq!(cdrs[0]["call_id"], "frag-call-1", "{what}");
            assert_eq!(cdrs[0]["disposition"], "answered", "{what}");
        }
    }
}

/// The same over IPv6, with sipedge on `::1`: an INVITE in fragments (a Fragment extension
/// header each) arriving out of order gives exactly the CDR of the whole INVITE, and its
/// relayed copy is on the Sipserver hop; with one fragment missing, no call is seen and the
/// incomplete datagram is counted.
#[test]
fn a_fragmented_ipv6_invite_gives_the_cdr_of_a_whole_one() {
    let s = scene_v6();
    let file = s.file.display().to_string();
    let mut whole_cdrs = Vec::new();
    for case in ["whole", "fragmented", "missing"] {
        let mut w = PcapWriter::new(Vec::new()).expect("header");
        let mut frames = 0;
        for (i, (from, text)) in answered_call("frag6-call-1", s.terminal, s.proxy, "UDP")
            .iter()
            .enumerate()
        {
            let (src, dst) = match from {
                From::Terminal => (s.terminal, s.proxy),
                From::Sipserver => (s.proxy, s.terminal),
            };
            let at = T0 + i as i64 * 100_000;
            if i > 0 || case == "whole" {
                w.udp(at, src, dst, text.as_bytes()).expect("write");
                frames += 1;
            } else {
                let mut pieces = pcap::udp_fragments(src, dst, 0x1234_5678, text.as_bytes(), 160);
                assert!(pieces.len() >= 3, "{} fragments", pieces.len());
                pieces.reverse();
                if case == "missing" {
                    pieces.remove(1);
                }
                for piece in &pieces {
                    w.frame(at, piece).expect("write");
                }
                frames += pieces.len();
            }
            if i == 0 {
                w.udp(at + 2000, s.proxy, s.upstream, text.as_bytes())
                    .expect("write");
                frames += 1;
            }
        }
        std::fs::write(&s.file, w.into_inner()).expect("write");
        let out = import(&[&file, "--config", &s.config, "--print", "json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let cdrs = json_lines(&out);
        let what = format!("{case}: {}", stderr(&out));
        assert_eq!(summary(&out, "packets"), frames as u64, "{what}");
        match case {
            "whole" => {
                assert_eq!(cdrs.len(), 1, "{what}");
                let cdr = &cdrs[0];
                expect_fields(
                    cdr,
                    &[
                        ("call_id", "frag6-call-1".into()),
                        ("caller", "8001".into()),
                        ("called", "95566".into()),
                        ("status", "connected".into()),
                        ("disposition", "answered".into()),
                        ("sip_code", 200.into()),
                        ("ended_by", "caller".into()),
                        ("transport", "udp".into()),
                        ("terminal", s.terminal.to_string().into()),
                        ("source", "pcap".into()),
                    ],
                );
                let t0 = T0 / 1000;
                expect_times(cdr, [t0, t0 + 100, t0 + 200, t0 + 400]);
                whole_cdrs = cdrs;
            }
            "fragmented" => assert_eq!(cdrs, whole_cdrs, "{what}"),
            _ => {
                assert!(cdrs.is_empty(), "{what}");
                assert_eq!(summary(&out, "calls"), 0, "{what}");
            }
        }
        let (messages, want_skipped) = match case {
            "missing" => (
                5,
                BTreeMap::from([("ip_fragment_incomplete".to_owned(), 1)]),
            ),
            _ => (6, BTreeMap::new()),
        };
        assert_eq!(summary(&out, "sip messages"), messages, "{what}");
        assert_eq!(skipped(&out), want_skipped, "{what}");
        assert_eq!(summary(&out, HOP), 1, "{what}");
    }
}

/// A TCP call as a mirror port may show it: the INVITE's last part first, then a
/// retransmission overlapping the part still missing and the held one, the last part sent
/// again while held, and the first part last (and again after); the 200 sent twice; the BYE
/// ahead of the ACK, and again after the FIN. The CDR is the call's, no hole is given up, and the call's log in the
/// store holds each of its six messages once.
#[test]
fn reordered_and_retransmitted_tcp_segments_give_each_message_once() {
    let s = scene();
    // Close to now: the store would drop call logs past `store.trace_retention`.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let t0_us = (now as i64 - 3600) * 1_000_000;
    let msgs = answered_call("tcp-reorder-1", s.terminal, s.proxy, "TCP");
    let text = |i: usize| msgs[i].1.as_bytes();
    let mut w = PcapWriter::new(std::fs::File::create(&s.file).expect("create")).expect("header");
    let (up, down) = (1000u32, 5000u32);
    let mut seg = |at: i64, from: From, seq: u32, flags: u8, data: &[u8]| {
        let (src, dst) = match from {
            From::Terminal => (s.terminal, s.proxy),
            From::Sipserver => (s.proxy, s.terminal),
        };
        w.tcp(t0_us + at, src, dst, seq, flags, data)
            .expect("write");
    };
    seg(-2000, From::Terminal, up - 1, pcap::SYN, b"");
    seg(-1000, From::Sipserver, down - 1, pcap::SYN, b"");
    let invite = text(0);
    let (a, b) = (invite.len() / 3, 2 * invite.len() / 3);
    let at = |offset: usize| up + offset as u32;
    for (time, from, to) in [
        (0, b, invite.len()),
        (500, a - 10, b + 10),
        (1000, b, invite.len()),
        (2000, 0, a),
        (2500, 0, a),
    ] {
        seg(
            time,
            From::Terminal,
            at(from),
            pcap::PSH_ACK,
            &invite[from..to],
        );
    }
    let mut next_up = at(invite.len());
    seg(100_000, From::Sipserver, down, pcap::PSH_ACK, text(1));
    let ok = down + text(1).len() as u32;
    seg(1_000_000, From::Sipserver, ok, pcap::PSH_ACK, text(2));
    seg(1_500_000, From::Sipserver, ok, pcap::PSH_ACK, text(2));
    let mut next_down = ok + text(2).len() as u32;
    let bye = next_up + text(3).len() as u32;
    seg(2_999_000, From::Terminal, bye, pcap::PSH_ACK, text(4));
    seg(3_000_000, From::Terminal, next_up, pcap::PSH_ACK, text(3));
    next_up = bye + text(4).len() as u32;
    seg(
        3_001_000,
        From::Sipserver,
        next_down,
        pcap::PSH_ACK,
        text(5),
    );
    next_down += text(5).len() as u32;
    seg(3_002_000, From::Terminal, next_up, pcap::FIN_ACK, b"");
    seg(3_003_000, From::Sipserver, next_down, pcap::FIN_ACK, b"");
    seg(3_200_000, From::Terminal, bye, pcap::PSH_ACK, text(4));
    drop(w);

    let file = s.file.display().to_string();
    let out = import(&[&file, "--config", &s.config, "--print", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cdrs = json_lines(&out);
    assert_eq!(cdrs.len(), 1, "{cdrs:#?}\n{}", stderr(&out));
    let cdr = &cdrs[0];
    expect_fields(
        cdr,
        &[
            ("call_id", "tcp-reorder-1".into()),
            ("caller", "8001".into()),
            ("called", "95566".into()),
            ("status", "connected".into()),
            ("disposition", "answered".into()),
            ("sip_code", 200.into()),
            ("ended_by", "caller".into()),
            ("transport", "tcp".into()),
            ("terminal", s.terminal.to_string().into()),
        ],
    );
    // A message is dated by the segment that made it readable: the INVITE by its first
    // part, the BYE by the ACK before it.
    let t0 = t0_us / 1000;
    expect_times(cdr, [t0 + 2, t0 + 100, t0 + 1000, t0 + 3000]);
    assert_eq!(summary(&out, "packets"), 16, "{}", stderr(&out));
    assert_eq!(summary(&out, "sip messages"), 6, "{}", stderr(&out));
    assert_eq!(summary(&out, "calls"), 1, "{}", stderr(&out));
    assert_eq!(
        skipped(&out),
        BTreeMap::new(),
        "no tcp_gap: {}",
        stderr(&out)
    );

    let out = import(&[&file, "--config", &s.config]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(summary(&out, "cdrs"), 1, "{}", stderr(&out));
    let Scene {
        _dir: dir, config, ..
    } = s;
    let proxy = Sipedge::start_file(Path::new(&config), dir);
    let api = proxy.addr("api");
    let day = |secs: i64| {
        chrono::DateTime::from_timestamp(secs, 0)
            .expect("time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let path = format!(
        "/api/cdrs?start={}&end={}&limit=10",
        day(t0 / 1000 - 86_400),
        day(t0 / 1000 + 86_400)
    );
    let (status, page) = get_json(api, &path);
    assert_eq!(status, 200, "{page}");
    let stored = page["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(stored.len(), 1, "{page:#}");
    let id = stored[0]["id"].as_str().expect("an id");
    let (status, log) = get_json(api, &format!("/api/cdrs/{id}/log"));
    assert_eq!(status, 200, "{log}");
    let firsts: Vec<&str> = log["entries"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["type"] == "sip")
        .filter_map(|e| e["text"].as_str()?.lines().next())
        .collect();
    let want: Vec<String> = msgs
        .iter()
        .map(|(_, m)| m.lines().next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(firsts, want, "{log:#}");
}
