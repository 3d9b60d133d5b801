//! The HEP v3 listener (issue 14): a capture agent's copies of a call's messages, sent to a
//! running sipedge over UDP and over TCP, give the call's CDR with the agent's capture
//! times; the Sipserver hop's copies and hostile packets are refused and counted. A tshark
//! capture of SIPp calls through one sipedge, replayed over HEP into another on the same
//! ports, gives the first one's CDRs.

mod support;
mod tshark;

#[path = "../benches/support/pcap.rs"]
mod pcap;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap::{From, answered_call};
use support::Sipedge;
use support::cdrs::{self, ms};
use support::config::{Config, Sip};
use support::http::http;
use support::msglog;
use support::sipp::{Pair, Transport};
use tshark::Tshark;

/// A HEP3 packet as agents (heplify, Kamailio siptrace) write it.
fn hep3(src: SocketAddr, dst: SocketAddr, tcp: bool, at_us: i64, payload: &[u8]) -> Vec<u8> {
    let mut out = b"HEP3\0\0".to_vec();
    let mut chunk = |kind: u16, value: &[u8]| {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&((value.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(value);
    };
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only here");
    };
    chunk(1, &[2]);
    chunk(2, &[if tcp { 6 } else { 17 }]);
    chunk(3, &s.octets());
    chunk(4, &d.octets());
    chunk(7, &src.port().to_be_bytes());
    chunk(8, &dst.port().to_be_bytes());
    chunk(9, &((at_us / 1_000_000) as u32).to_be_bytes());
    chunk(10, &((at_us % 1_000_000) as u32).to_be_bytes());
    chunk(11, &[1]);
    chunk(12, &2001u32.to_be_bytes());
    chunk(15, payload);
    let len = (out.len() as u16).to_be_bytes();
    out[4..6].copy_from_slice(&len);
    out
}

/// The counter `name` (with its labels, as written) on /metrics; 0 when absent.
fn metric(proxy: &Sipedge, name: &str) -> u64 {
    let body = http(proxy.addr("api"), "GET", "/metrics", "").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hep_copies_of_calls_give_their_cdrs() {
    let hep_port = support::ports::free_port();
    let hep_addr = SocketAddr::new(support::ports::PROXY_IP, hep_port);
    let sip = Sip::range(1);
    let config = Config::new("test")
        .sip(sip)
        .set("hep", "listen", &format!("\"{hep_addr}\""));
    let proxy = Sipedge::start(&config);
    let terminal = |port| SocketAddr::new(support::ports::TERMINAL_IP, port);
    let (udp_terminal, tcp_terminal) = if sip.ports.first == 5999 {
        (terminal(6998), terminal(6999))
    } else {
        (terminal(5998), terminal(5999))
    };
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros() as i64;
    // A few seconds ago: the live tracking's own timers run on the wall clock.
    let t0 = now_us - 5_000_000;
    let packets = |call_id: &str, term: SocketAddr, tcp: bool, t0: i64| -> Vec<Vec<u8>> {
        let transport = if tcp { "TCP" } else { "UDP" };
        let mut out = Vec::new();
        for (i, (from, text)) in answered_call(call_id, term, sip.addr(), transport)
            .iter()
            .enumerate()
        {
            let at = t0 + i as i64 * 250_000;
            let (src, dst) = match from {
                From::Terminal => (term, sip.addr()),
                From::Sipserver => (sip.addr(), term),
            };
            out.push(hep3(src, dst, tcp, at, text.as_bytes()));
            // The agent also sees the copy on the Sipserver hop.
            let hop = match from {
                From::Terminal => (sip.addr(), sip.upstream_addr()),
                From::Sipserver => (sip.upstream_addr(), sip.addr()),
            };
            out.push(hep3(hop.0, hop.1, tcp, at + 300, text.as_bytes()));
        }
        out
    };
    let sender = UdpSocket::bind((support::ports::TERMINAL_IP, 0)).expect("bind");
    for p in packets("hep-udp-1", udp_terminal, false, t0) {
        sender.send_to(&p, hep_addr).expect("send");
    }
    // Hostile datagrams: not HEP, a length past the end, a HEP2 magic.
    let good = hep3(udp_terminal, sip.addr(), false, t0, b"x");
    let mut long = good.clone();
    long[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
    let mut hep2 = good.clone();
    hep2[3] = b'2';
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &long,
        &hep2,
        &good[..good.len() - 2],
    ] {
        sender.send_to(bad, hep_addr).expect("send");
    }
    // Over TCP: all packets written in one go, the stream cut at odd places.
    let stream: Vec<u8> = packets("hep-tcp-1", tcp_terminal, true, t0 + 100_000).concat();
    let mut conn = TcpStream::connect(hep_addr).expect("connect to the HEP listener");
    for piece in stream.chunks(333) {
        conn.write_all(piece).expect("write");
        conn.flush().expect("flush");
    }
    drop(conn);

    let api = proxy.addr("api");
    let ids = ["hep-udp-1".to_owned(), "hep-tcp-1".to_owned()];
    let listed = cdrs::by_call_id(&cdrs::wait_for(api, &ids, Duration::from_secs(10)));
    for (call_id, term, transport, start) in [
        ("hep-udp-1", udp_terminal, "udp", t0),
        ("hep-tcp-1", tcp_terminal, "tcp", t0 + 100_000),
    ] {
        let found = listed.get(call_id).cloned().unwrap_or_default();
        assert_eq!(
            found.len(),
            1,
            "{call_id}: one CDR, not one a hop: {found:#?}\n{}",
            proxy.report()
        );
        let cdr = &found[0];
        for (field, want) in [
            ("caller", "8001"),
            ("called", "95566"),
            ("status", "connected"),
            ("disposition", "answered"),
            ("ended_by", "caller"),
            ("transport", transport),
            ("source", "hep"),
        ] {
            assert_eq!(
                cdr[field].as_str(),
                Some(want),
                "{call_id}: {field}: {cdr:#}"
            );
        }
        assert_eq!(
            cdr["terminal"].as_str(),
            Some(term.to_string().as_str()),
            "{cdr:#}"
        );
        let start_ms = start / 1000;
        for (field, offset) in [
            ("start_time", 0),
            ("ring_time", 250),
            ("answer_time", 500),
            ("end_time", 1000),
        ] {
            assert_eq!(
                ms(cdr, field),
                Some(start_ms + offset),
                "{call_id}: {field}: {cdr:#}"
            );
        }
    }
    assert_eq!(metric(&proxy, "sipedge_hep_packets_accepted_total"), 12);
    assert_eq!(
        metric(
            &proxy,
            "sipedge_hep_packets_refused_total{reason=\"sipserver_hop\"}"
        ),
        12
    );
    assert_eq!(
        metric(
            &proxy,
            "sipedge_hep_packets_refused_total{reason=\"magic\"}"
        ),
        2
    );
    assert_eq!(
        metric(
            &proxy,
            "sipedge_hep_packets_refused_total{reason=\"length\"}"
        ),
        2
    );
}

#[test]
fn hep_without_sip_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Config::new("test")
        .set("hep", "listen", "\"127.0.0.1:9060\"")
        .write(dir.path());
    let out = support::sipedge::run(["check-config", "--config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("hep.listen: needs a [sip] table"),
        "{stderr}"
    );
}

/// How far the replayed CDRs' times may be from the proxy's own: see TOLERANCE_MS in
/// tests/import_pcap.rs, for the same reasons (HEP carries the capture's times).
const TOLERANCE_MS: i64 = 50;

/// The UDP packets of a capture, read back by tshark: (µs since the epoch, src, dst, payload).
fn udp_packets(file: &std::path::Path) -> Vec<(i64, SocketAddr, SocketAddr, Vec<u8>)> {
    let out = std::process::Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-Y", "udp", "-T", "fields", "-E", "separator=|"])
        .args([
            "-e",
            "frame.time_epoch",
            "-e",
            "ip.src",
            "-e",
            "udp.srcport",
        ])
        .args(["-e", "ip.dst", "-e", "udp.dstport", "-e", "udp.payload"])
        .output()
        .expect("tshark -r");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 6, "{line}");
            let (secs, frac) = f[0].split_once('.').expect("seconds.fraction");
            let micros: i64 = format!("{frac:0<6}")[..6].parse().expect("µs");
            let at = secs.parse::<i64>().expect("seconds") * 1_000_000 + micros;
            let addr = |ip: &str, port: &str| {
                SocketAddr::new(ip.parse().expect("ip"), port.parse().expect("port"))
            };
            let payload = hex::decode(f[5].replace(':', "")).expect("hex payload");
            (at, addr(f[1], f[2]), addr(f[3], f[4]), payload)
        })
        .collect()
}

#[test]
fn a_capture_replayed_over_hep_gives_the_cdrs_the_proxy_wrote() {
    let sip = Sip::range(1);
    let first = Sipedge::start(&Config::new("test").sip(sip));
    let dir = tempfile::tempdir().expect("tempdir");
    let tshark = Tshark::start(dir.path(), &sip);
    let mut call_ids = Vec::new();
    for (case, pause) in [("call", 200), ("busy", 0), ("cancel", 0)] {
        let outcome = Pair::new(case, Transport::Udp, 2)
            .pause_ms(pause)
            .run(sip.addr(), sip.upstream_addr());
        outcome.assert_passed();
        let mut ids: Vec<String> = msglog::parse(&outcome.uac.messages)
            .into_iter()
            .filter(|m| m.sent && m.method() == Some("INVITE"))
            .map(|m| m.call_id)
            .collect();
        ids.dedup();
        call_ids.extend(ids);
    }
    let live = cdrs::by_call_id(&cdrs::wait_for(
        first.addr("api"),
        &call_ids,
        Duration::from_secs(10),
    ));
    let file = tshark.stop();
    drop(first);

    let hep_addr = SocketAddr::new(support::ports::PROXY_IP, support::ports::free_port());
    let second = Sipedge::start(&Config::new("test").sip(sip).set(
        "hep",
        "listen",
        &format!("\"{hep_addr}\""),
    ));
    let sender = UdpSocket::bind((support::ports::TERMINAL_IP, 0)).expect("bind");
    let mut sent = 0;
    for (at, src, dst, payload) in udp_packets(&file) {
        if payload == b"capture probe" {
            continue;
        }
        sender
            .send_to(&hep3(src, dst, false, at, &payload), hep_addr)
            .expect("send");
        sent += 1;
    }
    let replayed = cdrs::by_call_id(&cdrs::wait_for(
        second.addr("api"),
        &call_ids,
        Duration::from_secs(10),
    ));
    for call_id in &call_ids {
        let want = &live[call_id][0];
        let got = match replayed.get(call_id).map(Vec::as_slice) {
            Some([one]) => one,
            other => panic!("call {call_id}: replayed {other:#?}\n{}", second.report()),
        };
        for field in [
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
        ] {
            assert_eq!(
                want[field], got[field],
                "call {call_id}: {field}\nlive {want:#}\nreplayed {got:#}"
            );
        }
        for field in ["start_time", "ring_time", "answer_time", "end_time"] {
            match (ms(want, field), ms(got, field)) {
                (Some(a), Some(b)) => assert!(
                    (a - b).abs() <= TOLERANCE_MS,
                    "call {call_id}: {field} live {a}, replayed {b}"
                ),
                (a, b) => assert_eq!(a, b, "call {call_id}: {field}"),
            }
        }
        assert_eq!(want["source"], "proxy", "call {call_id}: {want:#}");
        assert_eq!(got["source"], "hep", "call {call_id}: {got:#}");
    }
    // Every packet is on one hop or the other: half of them are the Sipserver's copies.
    let accepted = metric(&second, "sipedge_hep_packets_accepted_total");
    let hop = metric(
        &second,
        "sipedge_hep_packets_refused_total{reason=\"sipserver_hop\"}",
    );
    assert_eq!(
        accepted + hop,
        sent,
        "accepted {accepted}, Sipserver hop {hop}"
    );
    assert_eq!(accepted, hop, "each message crosses both hops");
}
