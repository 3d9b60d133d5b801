//! Hostile traffic against the running binary (SPEC §10, issue 13): a flood from one address
//! while normal calls go on from another, thousands of idle TCP connections held open, and
//! slow HTTP clients (slowloris) on both listeners. Each asserts what the other users see
//! (calls pass, requests answered) and what sipedge's memory does; the rates and memory
//! figures it prints are in BENCHMARKS.md.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::config::{Config, Sip};
use support::sipp::{Pair, Transport};
use support::{Sipedge, http, wait_until};

/// sipedge's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

fn metric(se: &Sipedge, line_start: &str) -> Option<u64> {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// What the flood sends, in turn: random bytes, a request cut short, a response whose Via
/// names nobody (dropped), and an OPTIONS with Max-Forwards 0 (answered by sipedge itself).
/// None of it reaches the Sipserver, so the SIPp calls beside it stay countable.
fn flood_message(i: u64) -> Vec<u8> {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match i % 4 {
        0 => (0..64 + i % 400)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect(),
        1 => format!("INVITE sip:{i}@10.0.0.5 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bK{i}\r\nFrom: <sip:a@b>;tag={i}\r\n").into_bytes(),
        2 => format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 198.51.100.9:5060;branch=z9hG4bK{i}\r\nFrom: <sip:a@b>;tag=1\r\n\
             To: <sip:c@d>;tag=2\r\nCall-ID: flood-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
        _ => format!(
            "OPTIONS sip:x@10.0.0.5 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.5:5060;branch=z9hG4bKo{i}\r\n\
             Max-Forwards: 0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: flood-{i}\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes(),
    }
}

#[test]
fn a_flood_from_one_address_leaves_calls_from_another_untouched() {
    let sip = Sip::one_port();
    let mut se = Sipedge::start(&Config::new("flood").sip(sip));
    let target = sip.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let socket = UdpSocket::bind("127.0.0.5:0").expect("bind the flood source");
            let messages: Vec<Vec<u8>> = (0..1024).map(flood_message).collect();
            let started = Instant::now();
            // Paced at 60,000 a second in 1 ms slices; bounded by count and by time.
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed)
                && i < 3_000_000
                && started.elapsed() < Duration::from_secs(60)
            {
                let due = started.elapsed().as_micros() as u64 * 60_000 / 1_000_000;
                while i < due {
                    let _ = socket.send_to(&messages[(i % 1024) as usize], target);
                    i += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            sent.store(i, Ordering::Relaxed);
            (i, started.elapsed())
        })
    };
    // The calls run beside the flood; memory is compared from once both are under way (the
    // calls in progress, their logs and the allocator's pools have then grown to their size).
    let calls = std::thread::spawn(move || {
        Pair::new("call", Transport::Udp, 450)
            .rate(30)
            .run(sip.addr(), sip.upstream_addr())
    });
    std::thread::sleep(Duration::from_secs(5));
    let warm = rss_kib(se.pid());
    let peak = Arc::new(AtomicU64::new(warm));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), se.pid());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let outcome = calls.join().expect("the SIPp thread");
    stop.store(true, Ordering::Relaxed);
    let (messages, took) = flood.join().expect("the flood thread");
    sampler.join().expect("the sampler thread");
    let peak = peak.load(Ordering::Relaxed);
    let limited = metric(&se, "sipedge_sip_dropped_total{reason=\"rate_limited\"}").unwrap_or(0);
    eprintln!(
        "flood: {messages} messages in {took:?} ({:.0}/s), {limited} refused by the per-source \
         limit; sipedge RSS {warm} KiB 5 s into flood and calls, peak {peak} KiB after",
        messages as f64 / took.as_secs_f64()
    );
    outcome.assert_passed();
    assert!(
        peak * 10 <= warm * 11,
        "RSS grew from {warm} KiB to {peak} KiB under the flood"
    );
    assert!(se.stop().success(), "{}", se.report());
}

#[test]
fn ten_thousand_idle_tcp_connections_leave_room_for_calls() {
    const IDLE: usize = 10_000;
    // Both this process and sipedge (which inherits the limit) hold one descriptor per
    // connection: the soft limit goes up to the hard one, which must leave room.
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= IDLE as u64 + 2_000,
        "the open-file hard limit is {hard}; this test needs {} (ulimit -Hn)",
        IDLE + 2_000
    );
    limit.current = Some(hard);
    setrlimit(Resource::Nofile, limit).expect("raise the open-file limit to the hard one");
    let sip = Sip::one_port();
    let mut se = Sipedge::start(
        &Config::new("idle")
            .sip(sip)
            .set("sip", "tcp_max_connections", &(IDLE + 1000).to_string())
            .set(
                "sip",
                "tcp_max_connections_per_source",
                &(IDLE + 1000).to_string(),
            )
            .set("sip", "source_rate_limit", "0"),
    );
    let before = rss_kib(se.pid());
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        match TcpStream::connect(sip.addr()) {
            Ok(c) => idle.push(c),
            Err(e) => panic!("connection {i} refused: {e}"),
        }
    }
    let gauge = "sipedge_sip_tcp_connections ";
    let all_open = wait_until(Duration::from_secs(30), || {
        metric(&se, gauge).is_some_and(|n| n >= IDLE as u64)
    });
    assert!(
        all_open,
        "sipedge holds {:?} connections",
        metric(&se, gauge)
    );
    let after = rss_kib(se.pid());
    eprintln!(
        "idle TCP: {IDLE} connections took sipedge from {before} to {after} KiB: {:.1} KiB each",
        (after.saturating_sub(before)) as f64 / IDLE as f64
    );
    for transport in [Transport::Udp, Transport::Tcp] {
        Pair::new("call", transport, 50)
            .rate(25)
            .run(sip.addr(), sip.upstream_addr())
            .assert_passed();
    }
    assert!(
        (after.saturating_sub(before)) < 64 * IDLE as u64,
        "{} KiB for {IDLE} idle connections",
        after.saturating_sub(before)
    );
    drop(idle);
    assert!(se.stop().success(), "{}", se.report());
}

/// The time of one plain request.
fn timed_get(addr: SocketAddr, path: &str) -> Duration {
    let started = Instant::now();
    let reply = http(addr, "GET", path, "");
    assert_eq!(reply.status, 200, "GET {path} on {addr}: {}", reply.body);
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn slow_http_clients_do_not_hold_up_the_others() {
    const SLOW: usize = 400;
    let se = Sipedge::start(&Config::new("slowloris"));
    let listeners = [se.addr("account"), se.addr("api")];
    let baseline: Vec<Duration> = (0..20)
        .flat_map(|_| listeners.map(|a| timed_get(a, "/healthz")))
        .collect();
    // Each slow client sends a request head one header line every two seconds, never
    // finishing it.
    let mut slow: Vec<TcpStream> = listeners
        .iter()
        .flat_map(|&addr| {
            (0..SLOW).map(move |_| {
                let mut c = TcpStream::connect(addr).expect("a slow client connects");
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .expect("first bytes");
                c
            })
        })
        .collect();
    let mut during = Vec::new();
    let started = Instant::now();
    let mut last_trickle = Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        if last_trickle.elapsed() >= Duration::from_secs(2) {
            for c in &mut slow {
                let _ = c.write_all(b"X-Slow: 1\r\n");
            }
            last_trickle = Instant::now();
        }
        for addr in listeners {
            during.push(timed_get(addr, "/healthz"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // By now (past the 10 s head deadline) the server has dropped every slow client.
    let mut closed = 0;
    for c in &mut slow {
        c.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("set a read timeout");
        let mut buf = [0u8; 512];
        match c.read(&mut buf) {
            Ok(0) | Err(_) => closed += 1,
            Ok(_) => {
                // A 408 before the close counts too.
                if matches!(c.read(&mut buf), Ok(0) | Err(_)) {
                    closed += 1;
                }
            }
        }
    }
    let (base, under) = (median(baseline), median(during));
    eprintln!(
        "slowloris: {} slow clients; median request {base:?} before, {under:?} during; {closed} slow clients closed by the server",
        slow.len()
    );
    assert_eq!(
        closed,
        slow.len(),
        "slow clients still connected after the head deadline"
    );
    // The same requests in the same run, so a busy machine slows both alike.
    assert!(
        under <= base * 10 + Duration::from_millis(20),
        "median request time went from {base:?} to {under:?} under slow clients"
    );
}
