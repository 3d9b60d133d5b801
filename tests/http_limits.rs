//! The HTTP listeners' bounds (SPEC §10, issue 13), each set small in the config and driven
//! past it by raw clients on loopback: the head deadline also closes idle kept-alive
//! connections, the connection cap holds clients back without dropping them, event streams
//! past `api.max_sse_clients` get 503, and account requests past one address's
//! `source_rate_limit` get 429 while other addresses are served. Each bound shows in
//! `/metrics`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::config::Config;
use support::sipedge::token_body;
use support::{Sipedge, http, wait_until};

fn metric(se: &Sipedge, line: &str) -> u64 {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Whether the server closed `conn` (EOF or reset) within `limit`.
fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    conn.set_read_timeout(Some(limit)).expect("a read timeout");
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// Sends one request on `conn` and reads the status of its answer (the first line).
fn status_on(conn: &mut TcpStream, request: &str) -> u16 {
    conn.write_all(request.as_bytes()).expect("send a request");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let mut buf = [0u8; 256];
    let n = conn.read(&mut buf).expect("an answer");
    String::from_utf8_lossy(&buf[..n])
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {:?}", String::from_utf8_lossy(&buf[..n])))
}

const GET_HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_head_deadline() {
    let se = Sipedge::start(
        &Config::new("idle")
            .set("api", "header_timeout", "\"1s\"")
            .set("account", "header_timeout", "\"1s\""),
    );
    for (listener, label) in [("api", "api"), ("account", "account")] {
        let mut conn = TcpStream::connect(se.addr(listener)).expect("connect");
        assert_eq!(status_on(&mut conn, GET_HEALTH), 200, "{listener}");
        let idle = Instant::now();
        assert!(
            closed_within(&mut conn, Duration::from_secs(10)),
            "{listener}: an idle kept-alive connection stayed open"
        );
        // Not before the deadline: a client between two requests is left alone that long.
        assert!(idle.elapsed() >= Duration::from_millis(900), "{listener}");
        let line = format!("sipedge_http_header_timeouts_total{{listener=\"{label}\"}} ");
        assert!(
            wait_until(Duration::from_secs(5), || metric(&se, &line) >= 1),
            "{line} not counted"
        );
    }
}

#[test]
fn clients_past_the_connection_cap_wait_and_are_then_served() {
    const CAP: usize = 4;
    let se = Sipedge::start(
        &Config::new("cap")
            .set("api", "max_connections", &CAP.to_string())
            .set("api", "header_timeout", "\"2s\""),
    );
    let addr = se.addr("api");
    // CAP clients that connect and say nothing hold every place.
    let silent: Vec<TcpStream> = (0..CAP)
        .map(|_| TcpStream::connect(addr).expect("a silent client"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The next client is accepted by the kernel, and answered once a place frees up: when
    // the head deadline closes the silent ones.
    let started = Instant::now();
    let mut waiting = TcpStream::connect(addr).expect("a waiting client");
    assert_eq!(status_on(&mut waiting, GET_HEALTH), 200);
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "served at once ({:?}) although {CAP} connections were open",
        started.elapsed()
    );
    assert!(
        metric(
            &se,
            "sipedge_http_connections_capped_total{listener=\"api\"} "
        ) >= 1
    );
    drop(silent);
}

/// Opens `/api/events` and returns the connection and the status.
fn open_stream(addr: SocketAddr) -> (TcpStream, u16) {
    let mut conn = TcpStream::connect(addr).expect("connect");
    let status = status_on(
        &mut conn,
        "GET /api/events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n",
    );
    (conn, status)
}

#[test]
fn event_streams_past_the_cap_get_503_until_one_closes() {
    let se = Sipedge::start(&Config::new("sse").set("api", "max_sse_clients", "2"));
    let addr = se.addr("api");
    let (first, a) = open_stream(addr);
    let (_second, b) = open_stream(addr);
    assert_eq!((a, b), (200, 200));
    let (_, refused) = open_stream(addr);
    assert_eq!(refused, 503);
    assert_eq!(metric(&se, "sipedge_event_streams_open "), 2);
    assert_eq!(metric(&se, "sipedge_event_streams_refused_total "), 1);
    drop(first);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_conn, status) = open_stream(addr);
            status == 200
        }),
        "no place after a stream closed"
    );
}

/// POSTs a valid account request to `addr` from the loopback address `from`; the status.
fn account_from(addr: SocketAddr, from: &str, body: &str) -> u16 {
    let local: SocketAddr = format!("{from}:0").parse().expect("a loopback address");
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("a socket");
    socket.bind(&local.into()).expect("bind the source address");
    socket.connect(&addr.into()).expect("connect");
    let mut conn: TcpStream = socket.into();
    let request = format!(
        "POST /AgoraAccount HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    status_on(&mut conn, &request)
}

#[test]
fn account_requests_past_one_address_rate_get_429_and_others_are_served() {
    let se = Sipedge::start(
        &Config::new("rate")
            .set("account", "appids", "[\"appid-1\"]")
            .set("account", "source_rate_limit", "1")
            .set("account", "source_rate_burst", "5"),
    );
    let (addr, body) = (se.addr("account"), token_body("appid-1"));
    let statuses: Vec<u16> = (0..12)
        .map(|_| account_from(addr, "127.0.0.1", &body))
        .collect();
    let granted = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(granted + limited, statuses.len(), "{statuses:?}");
    // The burst of 5, and at most a token or two refilled at 1/s while the loop ran.
    assert!((5..=7).contains(&granted), "{statuses:?}");
    // Another address has its own bucket.
    assert_eq!(account_from(addr, "127.0.0.2", &body), 200);
    assert_eq!(
        metric(
            &se,
            "sipedge_account_requests_total{outcome=\"rate_limited\"} "
        ),
        limited as u64
    );
}
