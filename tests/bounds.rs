//! The memory bounds of `[sip]` against the running binary (issue 13, SPEC §10): TCP
//! connections per source, the write queue of a peer that does not read, calls in progress
//! (`sip.max_calls`, a 503 with Retry-After) and the log kept per call. Each test hits one
//! bound with raw sockets and SIPp on loopback, checks what the others see (calls still pass)
//! and reads the bound's counter on `/metrics`; the memory figures it prints are in
//! BENCHMARKS.md.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::config::{Config, Sip};
use support::http::get_json;
use support::sipp::{Pair, Sipp, Transport, is_bound};
use support::{Sipedge, cdrs, http, wait_until};

/// A terminal address of its own, apart from SIPp's 127.0.0.1.
const CROWDED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// Another terminal address.
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
/// The peer that stops reading.
const STUCK: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));

/// sipedge's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// `sipedge_sip_refused_total` for the bound named by its key.
fn refused(se: &Sipedge, key: &str) -> u64 {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    let line = format!("sipedge_sip_refused_total{{bound=\"{key}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics:\n{text}"))
}

fn calls_active(se: &Sipedge) -> Option<u64> {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix("sipedge_calls_active "))
        .and_then(|v| v.trim().parse().ok())
}

/// A TCP connection to `to` from address `from`, as a terminal behind its own address
/// opens it; `recv_buffer` shrinks its receive buffer (and so its window) first.
fn connect_from(
    from: IpAddr,
    to: SocketAddr,
    recv_buffer: Option<u32>,
) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = socket.connect(to).await?.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

/// An OPTIONS for sipedge itself (no user part, no Route), which it answers with 200.
fn options_for_sipedge(sipedge: SocketAddr, local: SocketAddr, n: u32) -> String {
    format!(
        "OPTIONS sip:{sipedge} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-bounds-{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{local}>;tag=p{n}\r\nTo: <sip:{sipedge}>\r\n\
         Call-ID: bounds-{n}@{local}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Whether sipedge answers an OPTIONS on this connection (false once it closed it).
fn served(conn: &mut TcpStream, sipedge: SocketAddr, n: u32) -> bool {
    let local = conn.local_addr().expect("a local address");
    if conn
        .write_all(options_for_sipedge(sipedge, local, n).as_bytes())
        .is_err()
    {
        return false;
    }
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let mut reply = Vec::new();
    let mut buf = [0u8; 2048];
    while !reply.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply.starts_with(b"SIP/2.0 200 ")
}

#[test]
fn tcp_connections_per_source_are_capped_and_other_sources_are_still_served() {
    const CAP: u32 = 8;
    const EXTRA: u32 = 4;
    let sip = Sip::one_port();
    let se = Sipedge::start(&Config::new("per-source").sip(sip).set(
        "sip",
        "tcp_max_connections_per_source",
        &CAP.to_string(),
    ));
    let to = sip.addr();
    // One after the other, each answered: sipedge has accepted it before the next comes.
    let mut held: Vec<TcpStream> = (0..CAP)
        .map(|i| {
            let mut c = connect_from(CROWDED, to, None).expect("connect");
            assert!(
                served(&mut c, to, i),
                "connection {i} under the cap not served"
            );
            c
        })
        .collect();
    for i in 0..EXTRA {
        // The kernel completes the handshake; sipedge closes it on accept.
        let mut c = connect_from(CROWDED, to, None).expect("connect");
        assert!(
            !served(&mut c, to, 100 + i),
            "connection {} past the cap of {CAP} was served",
            CAP + i + 1
        );
    }
    assert_eq!(
        refused(&se, "sip.tcp_max_connections_per_source"),
        u64::from(EXTRA)
    );
    for (i, c) in (200..).zip(held.iter_mut()) {
        assert!(served(c, to, i), "a connection under the cap was disturbed");
    }
    let mut other = connect_from(OTHER, to, None).expect("connect from another source");
    assert!(
        served(&mut other, to, 300),
        "another source is held to the first one's cap"
    );
    Pair::new("call", Transport::Tcp, 5)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    // A connection that ends gives its place back.
    drop(held.pop());
    let mut n = 400;
    let again = wait_until(Duration::from_secs(10), || {
        n += 1;
        connect_from(CROWDED, to, None).is_ok_and(|mut c| served(&mut c, to, n))
    });
    assert!(again, "the place of a closed connection was not given back");
    eprintln!(
        "per-source TCP cap {CAP}: {} connections from {CROWDED} refused, {OTHER} and SIPp \
         calls served",
        refused(&se, "sip.tcp_max_connections_per_source")
    );
}

/// An OPTIONS towards the Sipserver with a `pad`-byte display name, which the Sipserver's
/// 200 copies back: a large response per request.
fn padded_options(upstream: SocketAddr, local: SocketAddr, n: u32, pad: &str) -> String {
    format!(
        "OPTIONS sip:probe@{upstream} SIP/2.0\r\nVia: SIP/2.0/TCP {local};branch=z9hG4bK-stuck-{n}\r\n\
         Max-Forwards: 70\r\nFrom: \"{pad}\" <sip:stuck@{local}>;tag=s{n}\r\nTo: <sip:probe@{upstream}>\r\n\
         Call-ID: stuck-{n}@{local}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_peer_that_stops_reading_is_closed_at_its_write_queue_cap() {
    const PAD: usize = 30_000;
    const REQUESTS: u32 = 4000;
    // Two ports: the stuck peer's responses come from a Sipserver on the first, the other
    // terminals' calls go through the second.
    let sip = Sip::range(2);
    let (flood_port, calls_port) = (sip.ports.first, sip.ports.first + 1);
    let mut se = Sipedge::start(&Config::new("stuck").sip(sip).set(
        "sip",
        "source_rate_limit",
        "0",
    ));
    let upstream = sip.upstream_for(flood_port);
    let sipserver = Sipp::uas("options_uas", upstream)
        .transport(Transport::Tcp)
        .calls(REQUESTS * 2)
        .timeout(Duration::from_secs(60))
        .spawn();
    assert!(
        wait_until(Duration::from_secs(5), || is_bound(
            upstream,
            Transport::Tcp
        )),
        "the OPTIONS UAS never bound {upstream}"
    );
    // Warm up: calls leave the allocator's pools and the call tables at their size.
    Pair::new("call", Transport::Tcp, 20)
        .run(sip.addr_on(calls_port), sip.upstream_for(calls_port))
        .assert_passed();
    let before = rss_kib(se.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), se.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let calls = std::thread::spawn(move || {
        Pair::new("call", Transport::Udp, 100)
            .rate(20)
            .run(sip.addr_on(calls_port), sip.upstream_for(calls_port))
    });
    // The stuck peer: a small window, and it never reads.
    let mut stuck =
        connect_from(STUCK, sip.addr_on(flood_port), Some(4096)).expect("the stuck peer connects");
    stuck
        .set_write_timeout(Some(Duration::from_secs(10)))
        .expect("set a write timeout");
    let local = stuck.local_addr().expect("a local address");
    let pad = "x".repeat(PAD);
    let started = Instant::now();
    let mut sent = 0u32;
    let mut bytes = 0usize;
    let closed = loop {
        if sent == REQUESTS {
            break None;
        }
        let request = padded_options(upstream, local, sent, &pad);
        match stuck.write_all(request.as_bytes()) {
            Ok(()) => {
                sent += 1;
                bytes += request.len();
            }
            Err(e) => break Some(e),
        }
    };
    let took = started.elapsed();
    let outcome = calls.join().expect("the SIPp thread");
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("the sampler thread");
    drop(sipserver);
    let peak = peak.load(Ordering::Relaxed);
    let after = rss_kib(se.pid());
    let overflowed = refused(&se, "sip.tcp_max_write_queue_bytes");
    eprintln!(
        "stuck peer: sent {sent} requests ({} MB) in {took:?}, closed by sipedge: {}; \
         sipedge RSS {before} KiB before, peak {peak} KiB, {after} KiB after; \
         sip.tcp_max_write_queue_bytes refused {overflowed}",
        bytes / 1_000_000,
        closed
            .as_ref()
            .map_or("no".to_owned(), |e| e.kind().to_string())
    );
    outcome.assert_passed();
    assert_eq!(
        overflowed, 1,
        "one message refused, then the connection closed"
    );
    let closed = closed.expect("sipedge never closed the peer that does not read");
    assert!(
        matches!(
            closed.kind(),
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset
        ),
        "the stuck peer's writes ended with {closed}"
    );
    // The queue's 1 MiB and a few messages in flight; what the kernel buffers is not RSS.
    assert!(
        peak.saturating_sub(before) < 24 * 1024,
        "RSS grew from {before} KiB to {peak} KiB for one peer that does not read"
    );
    assert!(
        se.stderr()
            .contains("sip.tcp_max_write_queue_bytes reached, connection closed"),
        "no warning logged:\n{}",
        se.report()
    );
    assert!(se.stop().success(), "{}", se.report());
}

/// A new INVITE from a terminal, by hand: the one past the cap.
fn invite(sipedge: SocketAddr, local: SocketAddr) -> String {
    format!(
        "INVITE sip:95566@{sipedge} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-over-1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:8009@{local}>;tag=over\r\nTo: <sip:95566@{sipedge}>\r\n\
         Call-ID: over-the-cap@{local}\r\nCSeq: 1 INVITE\r\nContact: <sip:8009@{local}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn past_max_calls_a_new_call_gets_503_and_calls_under_way_go_on() {
    const MAX: u32 = 5;
    let sip = Sip::one_port();
    let se = Sipedge::start(&Config::new("max-calls").sip(sip).set(
        "sip",
        "max_calls",
        &MAX.to_string(),
    ));
    // Five calls that talk for 6 s each.
    let long = std::thread::spawn(move || {
        Pair::new("call", Transport::Udp, MAX)
            .pause_ms(6000)
            .run(sip.addr(), sip.upstream_addr())
    });
    let full = wait_until(Duration::from_secs(5), || {
        calls_active(&se) == Some(u64::from(MAX))
    });
    assert!(
        full,
        "the five calls never were in progress together: {:?}",
        calls_active(&se)
    );
    let terminal = UdpSocket::bind("127.0.0.1:0").expect("bind a terminal socket");
    terminal
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    let local = terminal.local_addr().expect("a local address");
    terminal
        .send_to(invite(sip.addr(), local).as_bytes(), sip.addr())
        .expect("send the sixth INVITE");
    let mut buf = [0u8; 4096];
    let (n, _) = terminal
        .recv_from(&mut buf)
        .expect("an answer to the sixth INVITE");
    let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        reply.starts_with("SIP/2.0 503 Service Unavailable"),
        "the sixth call got:\n{reply}"
    );
    for line in [
        "Retry-After: 10",
        "Call-ID: over-the-cap@",
        "CSeq: 1 INVITE",
        "From: <sip:8009@",
    ] {
        assert!(
            reply.lines().any(|l| l.starts_with(line)),
            "no {line} in:\n{reply}"
        );
    }
    assert_eq!(refused(&se, "sip.max_calls"), 1);
    // The five go on to their BYEs; the sixth never reached the Sipserver, whose UAS would
    // have failed on an INVITE it did not expect.
    long.join().expect("the SIPp thread").assert_passed();
    let drained = wait_until(Duration::from_secs(5), || calls_active(&se) == Some(0));
    assert!(
        drained,
        "calls still counted after their BYEs: {:?}",
        calls_active(&se)
    );
    Pair::new("call", Transport::Udp, MAX)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    assert_eq!(
        refused(&se, "sip.max_calls"),
        1,
        "a call under the cap was refused"
    );
    let ids: Vec<String> = cdrs::all(se.addr("api"))
        .iter()
        .filter_map(|c| c["call_id"].as_str().map(str::to_owned))
        .collect();
    assert!(
        !ids.iter().any(|c| c.starts_with("over-the-cap@")),
        "the refused call has a CDR"
    );
}

#[test]
fn a_call_log_stops_at_its_cap_and_the_cdr_is_still_right() {
    const CAP: usize = 4;
    let sip = Sip::one_port();
    let se = Sipedge::start(&Config::new("log-cap").sip(sip).set(
        "sip",
        "max_log_entries_per_call",
        &CAP.to_string(),
    ));
    // INVITE, 180, 200, ACK, then the re-INVITE adding video, its 200 and ACK, the BYE and
    // its 200: the re-INVITE and its answer are past the cap, and still make the call a
    // video call.
    Pair::new("reinvite", Transport::Udp, 1)
        .pause_ms(200)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    let api = se.addr("api");
    let mut cdr = Value::Null;
    let listed = wait_until(Duration::from_secs(10), || {
        cdr = cdrs::all(api).into_iter().next().unwrap_or(Value::Null);
        !cdr.is_null()
    });
    assert!(listed, "no CDR for the call");
    for (field, value) in [
        ("call_type", "video"),
        ("status", "connected"),
        ("disposition", "answered"),
        ("ended_by", "caller"),
    ] {
        assert_eq!(cdr[field], value, "{field} in {cdr:#}");
    }
    let id = cdr["id"].as_str().expect("an id");
    let (status, log) = get_json(api, &format!("/api/cdrs/{id}/log"));
    assert_eq!(status, 200, "{log}");
    let entries = log["entries"].as_array().cloned().unwrap_or_default();
    let sip_entries = entries.iter().filter(|e| e["type"] == "sip").count();
    let cuts: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["type"] == "event"
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("log truncated after"))
        })
        .collect();
    assert_eq!(sip_entries, CAP, "{log:#}");
    assert_eq!(cuts.len(), 1, "one truncation event: {log:#}");
    assert!(
        cuts[0]["text"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("after {CAP} entries"))
                && t.contains("sip.max_log_entries_per_call")),
        "{log:#}"
    );
    assert!(
        entries.last() == Some(cuts[0]),
        "nothing is logged after the truncation event: {log:#}"
    );
    let skipped = refused(&se, "sip.max_log_entries_per_call");
    assert!(skipped >= 4, "{skipped} log entries counted as skipped");
    eprintln!("log cap {CAP}: {skipped} entries of the re-INVITE call not logged");
}
