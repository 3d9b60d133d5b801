//! RFC 4475's 49 torture messages through the running proxy (SPEC §4, §10; issue 13). The
//! table, with the RFC's verdict and sipedge's for each message, is
//! `sip/tests/data/cases.rs`, which the scanner's test shares.
//!
//! A terminal sends every message over UDP, and over TCP too (each on a connection of its
//! own); the Sipserver is played by the test's own sockets on the upstream address. The tests
//! assert that
//! - a valid request reaches the Sipserver with sipedge's Via on top and is otherwise the
//!   message the terminal sent, byte for byte, once the edits a proxy makes are taken out
//!   (`received`/`rport`, Max-Forwards, Record-Route or Path);
//! - an invalid request gets a 400 whose reason names the defect (505 for another SIP
//!   version, RFC 4475 3.1.2.16), or is dropped when it has
//!   nothing to answer with, and never reaches the Sipserver; every one is counted in
//!   `/metrics`; on TCP, one that leaves the stream unframable (ncl, mcl01) also closes its
//!   connection;
//! - a valid response from the Sipserver reaches the terminal without sipedge's Via and
//!   otherwise untouched, an invalid one is dropped, and none goes to a broadcast address;
//! - every relayed initial INVITE is a call: live until the Sipserver's 486, then a CDR;
//! - after the whole set, sipedge still relays ordinary SIPp calls.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH for the closing calls.

mod support;

#[path = "../sip/tests/data/cases.rs"]
mod cases;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use cases::{CASES, Case, Edge, Scan};
use serde_json::Value;
use sipedge_sip::scan::{self, HeaderName, Message, Method, RPort};
use support::config::{Config, Sip};
use support::ports::TERMINAL_IP;
use support::sipp::{Pair, Transport};
use support::{Sipedge, cdrs, http, wait_until};

/// How long anything sipedge should send may take to arrive.
const WAIT: Duration = Duration::from_secs(10);

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn case(name: &str) -> &'static Case {
    CASES
        .iter()
        .find(|c| c.name() == name)
        .unwrap_or_else(|| panic!("no {name} in the table"))
}

fn scanned(bytes: &[u8]) -> Message<'_> {
    scan::scan(bytes).unwrap_or_else(|e| panic!("{e}: {}", s(bytes)))
}

fn is_response(bytes: &[u8]) -> bool {
    bytes.starts_with(b"SIP/2.0 ")
}

fn call_id(bytes: &[u8]) -> String {
    s(scanned(bytes).call_id().unwrap_or_default())
}

/// The message a receiver takes from the datagram or frame: without what follows its
/// Content-Length (dblreq's INVITE, over UDP).
fn message_of(bytes: &[u8]) -> &[u8] {
    scanned(bytes).as_bytes()
}

/// Whether the request starts a dialog that call tracking follows: an INVITE without a To tag
/// (wsinv's To has one: a re-INVITE in a dialog sipedge never saw).
fn is_initial_invite(bytes: &[u8]) -> bool {
    let msg = scanned(bytes);
    msg.method() == Some(Method::Invite) && msg.to().is_some_and(|t| t.tag.is_none())
}

/// Removes the first occurrence of `what` from `from`, which must hold it.
fn remove_once(from: &mut Vec<u8>, what: &[u8], name: &str) {
    replace_once(from, what, b"", name);
}

fn replace_once(from: &mut Vec<u8>, what: &[u8], with: &[u8], name: &str) {
    let at = from
        .windows(what.len())
        .position(|w| w == what)
        .unwrap_or_else(|| panic!("{name}: no {:?} in\n{}", s(what), s(from)));
    from.splice(at..at + what.len(), with.iter().copied());
}

/// Checks that `relayed`, what reached the Sipserver, is `original` as a proxy relays it:
/// sipedge's Via (over `transport`, from sipedge's `port`) on top, `received`/`rport` naming
/// `sender` on the terminal's Via, Max-Forwards one less (70 − 1 when absent), a Record-Route
/// (initial INVITE) or Path (REGISTER) naming sipedge, and nothing else changed.
fn assert_relayed_intact(
    name: &str,
    original: &[u8],
    relayed: &[u8],
    sender: SocketAddr,
    port: u16,
    transport: &str,
) {
    let orig = scanned(original);
    let msg = scanned(relayed);
    let ours = msg.top_via().unwrap_or_else(|| panic!("{name}: no Via"));
    assert_eq!(s(ours.transport_raw), transport, "{name}");
    assert_eq!(ours.host, b"127.0.0.1", "{name}");
    assert_eq!(ours.port, Some(port), "{name}");
    assert!(
        ours.branch
            .is_some_and(|b| b.len() > 7 && b.starts_with(b"z9hG4bK")),
        "{name}: sipedge's branch"
    );
    assert_eq!(msg.vias().count(), orig.vias().count() + 1, "{name}");
    assert_eq!(msg.call_id(), orig.call_id(), "{name}");
    assert_eq!(msg.cseq(), orig.cseq(), "{name}");
    assert_eq!(msg.body(), orig.body(), "{name}: body");

    let mut rest = relayed.to_vec();
    let own_via = format!("Via: {}\r\n", s(msg.vias().next().unwrap_or_default()));
    remove_once(&mut rest, own_via.as_bytes(), name);
    let route_header = match orig.method() {
        Some(Method::Register) => Some("Path"),
        _ if is_initial_invite(original) => Some("Record-Route"),
        _ => None,
    };
    if let Some(header) = route_header {
        let values: Vec<&[u8]> = msg
            .headers()
            .filter(|h| h.raw_name == header.as_bytes())
            .map(|h| h.value)
            .collect();
        let own = values
            .first()
            .filter(|v| v.ends_with(b";lr>") && s(v).contains(&format!("@127.0.0.1:{port}")))
            .unwrap_or_else(|| panic!("{name}: no {header} naming sipedge in\n{}", s(relayed)));
        remove_once(
            &mut rest,
            format!("{header}: {}\r\n", s(own)).as_bytes(),
            name,
        );
    }
    remove_once(
        &mut rest,
        format!(";received={}", sender.ip()).as_bytes(),
        name,
    );
    let rport = format!("rport={}", sender.port());
    match orig.top_via().map(|v| v.rport) {
        Some(RPort::Requested) => replace_once(&mut rest, rport.as_bytes(), b"rport", name),
        _ => remove_once(&mut rest, format!(";{rport}").as_bytes(), name),
    }
    match orig.max_forwards() {
        Some(n) => {
            // The line as the terminal wrote it (wsinv: `MaX-fOrWaRdS: 0068`), value replaced.
            let header = orig
                .headers()
                .find(|h| h.name == HeaderName::MaxForwards)
                .unwrap_or_else(|| panic!("{name}: Max-Forwards"));
            let line_start = original
                .windows(header.raw_name.len() + 2)
                .position(|w| w.starts_with(b"\r\n") && &w[2..] == header.raw_name)
                .map(|at| at + 2)
                .unwrap_or_else(|| panic!("{name}: Max-Forwards line"));
            let value_at = header.value.as_ptr() as usize - original.as_ptr() as usize;
            let prefix = &original[line_start..value_at];
            let relayed_line = [prefix, (n - 1).to_string().as_bytes(), b"\r\n"].concat();
            let original_line = [prefix, header.value, b"\r\n"].concat();
            replace_once(&mut rest, &relayed_line, &original_line, name);
        }
        None => remove_once(&mut rest, b"Max-Forwards: 69\r\n", name),
    }
    assert!(
        rest == original,
        "{name}: relayed with other changes than a proxy's\n--- sent\n{}\n--- relayed\n{}",
        s(original),
        s(relayed)
    );
}

/// A response the Sipserver sends back through sipedge: `sipedge_via` (the Via value sipedge
/// put on a request it relayed) on top, and on the terminal's Via the `received`/`rport`
/// sipedge would have added naming `terminal`. Returns it and what the terminal must get:
/// the same without sipedge's Via.
fn back_through_sipedge(
    response: &[u8],
    sipedge_via: &[u8],
    terminal: SocketAddr,
) -> (Vec<u8>, Vec<u8>) {
    let first_via = response
        .windows(6)
        .position(|w| w == b"\r\nVia:")
        .expect("a Via line")
        + 2;
    let via_end = first_via
        + response[first_via..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("its end");
    let expected = [
        &response[..via_end],
        format!(";received={};rport={}", terminal.ip(), terminal.port()).as_bytes(),
        &response[via_end..],
    ]
    .concat();
    let sent = [
        &expected[..first_via],
        b"Via: ",
        sipedge_via,
        b"\r\n",
        &expected[first_via..],
    ]
    .concat();
    (sent, expected)
}

/// `response` with its top Via replaced by sipedge's: sipedge is the element the RFC's bcast
/// reaches, with the broadcast address as the next hop.
fn with_sipedge_on_top(response: &[u8], sipedge_via: &[u8]) -> Vec<u8> {
    let first_via = response
        .windows(6)
        .position(|w| w == b"\r\nVia:")
        .expect("a Via line")
        + 2;
    let via_end = first_via
        + response[first_via..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("its end");
    [
        &response[..first_via],
        b"Via: ",
        sipedge_via,
        &response[via_end..],
    ]
    .concat()
}

/// The Sipserver's 486 to a relayed INVITE, sent back through sipedge.
fn busy(invite: &[u8]) -> Vec<u8> {
    let msg = scanned(invite);
    let mut out = b"SIP/2.0 486 Busy Here\r\n".to_vec();
    for via in msg.vias() {
        out.extend_from_slice(&[b"Via: ", via, b"\r\n"].concat());
    }
    let header = |name| msg.header(name).unwrap_or_default();
    out.extend_from_slice(&[b"From: ", header(HeaderName::From), b"\r\n"].concat());
    out.extend_from_slice(&[b"To: ", header(HeaderName::To), b";tag=up486\r\n"].concat());
    out.extend_from_slice(&[b"Call-ID: ", header(HeaderName::CallId), b"\r\n"].concat());
    out.extend_from_slice(&[b"CSeq: ", header(HeaderName::CSeq), b"\r\n"].concat());
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}

/// Checks a stateless reply of sipedge's to `request`: `status`, the request's Call-ID and
/// CSeq, and for a 400 a reason naming the defect.
fn assert_reply(name: &str, request: &[u8], reply: &[u8], status: u16) {
    let req = scanned(request);
    let msg = scanned(reply);
    assert_eq!(msg.status(), Some(status), "{name}: {}", s(reply));
    assert_eq!(msg.call_id(), req.call_id(), "{name}");
    assert_eq!(
        msg.header(HeaderName::CSeq),
        req.header(HeaderName::CSeq),
        "{name}"
    );
    if status == 400 {
        let reason = s(msg.reason().unwrap_or_default());
        assert!(
            reason.starts_with("Bad Request (") && reason.len() > "Bad Request ()".len(),
            "{name}: the reason names no defect: {reason}"
        );
    }
}

/// The relay's counters in `/metrics`.
#[derive(Debug, Clone, Default)]
struct Counters {
    /// `sipedge_sip_parse_errors_total`.
    parse_errors: u64,
    /// 400s sent to terminals (`sipedge_sip_messages_total{status="400"}`).
    bad_requests: u64,
    /// `sipedge_sip_dropped_total` by reason.
    dropped: HashMap<String, u64>,
}

impl Counters {
    fn read(se: &Sipedge) -> Counters {
        let text = http(se.addr("api"), "GET", "/metrics", "").body;
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let value = value.parse::<f64>().unwrap_or(0.0) as u64;
            if series == "sipedge_sip_parse_errors_total" {
                c.parse_errors = value;
            } else if series.starts_with("sipedge_sip_messages_total{")
                && series.contains("status=\"400\"")
                && series.contains("direction=\"to_terminal\"")
            {
                c.bad_requests += value;
            } else if let Some(labels) = series.strip_prefix("sipedge_sip_dropped_total{") {
                let reason = labels
                    .trim_start_matches("reason=\"")
                    .trim_end_matches("\"}")
                    .to_owned();
                *c.dropped.entry(reason).or_default() += value;
            }
        }
        c
    }

    fn dropped(&self, reason: &str) -> u64 {
        self.dropped.get(reason).copied().unwrap_or(0)
    }
}

/// A UDP socket that receives one datagram at a time, failing the test after [`WAIT`].
fn recv(sock: &UdpSocket, what: &str) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => buf[..n].to_vec(),
        Err(e) => panic!("{what}: nothing arrived within {WAIT:?} ({e})"),
    }
}

fn udp_socket(addr: SocketAddr) -> UdpSocket {
    let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    sock.set_read_timeout(Some(WAIT)).expect("read timeout");
    sock
}

/// Sends an OPTIONS with Max-Forwards 0, which sipedge answers itself, and waits for that
/// answer: sipedge handles a port's datagrams in order, so whatever it would have sent the
/// terminal for the datagrams before has arrived first.
fn barrier(term: &UdpSocket, sipedge: SocketAddr, n: &mut u32) {
    *n += 1;
    let id = format!("barrier-{n}");
    let options = format!(
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{id}\r\n\
         Max-Forwards: 0\r\nFrom: <sip:t@127.0.0.1>;tag=b\r\nTo: <sip:edge@127.0.0.1>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        term.local_addr().expect("local address")
    );
    term.send_to(options.as_bytes(), sipedge)
        .expect("send the barrier");
    let reply = recv(term, &id);
    assert_eq!(
        call_id(&reply),
        id,
        "the terminal got something else first: {}",
        s(&reply)
    );
}

/// The calls sipedge lists as live.
fn live_call_ids(se: &Sipedge) -> Vec<String> {
    let live = http(se.addr("api"), "GET", "/api/calls/live", "").json();
    live["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c["call_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Checks that the INVITEs whose Call-IDs are `tracked` were each one call: live while
/// unanswered (the caller answers them between the two checks), then one CDR each.
fn assert_live(se: &Sipedge, tracked: &[String]) {
    let mut live = Vec::new();
    let all_live = wait_until(WAIT, || {
        live = live_call_ids(se);
        tracked.iter().all(|id| live.contains(id))
    });
    assert!(all_live, "live calls {live:?}, expected {tracked:?}");
}

fn assert_cdrs(se: &Sipedge, tracked: &[String], untracked: &[String], transport: &str) {
    let all = cdrs::wait_for(se.addr("api"), tracked, WAIT);
    let by_id = cdrs::by_call_id(&all);
    for id in tracked {
        let list = by_id
            .get(id)
            .unwrap_or_else(|| panic!("no CDR for {id} in {all:?}"));
        assert_eq!(list.len(), 1, "{id}: {list:?}");
        let cdr = &list[0];
        assert_eq!(cdr["sip_code"], Value::from(486), "{id}: {cdr}");
        assert_eq!(cdr["disposition"], "busy", "{id}: {cdr}");
        assert_eq!(cdr["status"], "not_connected", "{id}: {cdr}");
        assert_eq!(cdr["transport"], transport, "{id}: {cdr}");
    }
    for id in untracked {
        assert!(!by_id.contains_key(id), "{id} has a CDR: {:?}", by_id[id]);
    }
    let live = live_call_ids(se);
    assert!(
        tracked.iter().chain(untracked).all(|id| !live.contains(id)),
        "still live: {live:?}"
    );
}

#[test]
fn every_torture_message_over_udp() {
    let sip = Sip::one_port();
    let upstream = udp_socket(sip.upstream_addr());
    let se = Sipedge::start(&Config::new("torture-udp").sip(sip));
    let term = udp_socket(SocketAddr::new(TERMINAL_IP, 0));
    let term_addr = term.local_addr().expect("terminal address");
    let port = sip.ports.first;
    let before = Counters::read(&se);
    let mut barriers = 0;
    let mut sipedge_via: Option<Vec<u8>> = None;
    let mut invites: Vec<(&Case, Vec<u8>)> = Vec::new();

    for c in CASES.iter().filter(|c| !is_response(c.bytes)) {
        let name = c.name();
        term.send_to(c.bytes, sip.addr()).expect("send");
        match c.edge {
            Edge::Relayed => {
                let got = recv(&upstream, name);
                assert_eq!(call_id(&got), call_id(c.bytes), "{name}: {}", s(&got));
                let original = message_of(c.bytes);
                assert_relayed_intact(name, original, &got, term_addr, port, "UDP");
                if sipedge_via.is_none() {
                    sipedge_via = scanned(&got).vias().next().map(<[u8]>::to_vec);
                }
                if scanned(&got).method() == Some(Method::Invite) {
                    invites.push((c, got));
                }
            }
            Edge::Answered(status) => assert_reply(name, c.bytes, &recv(&term, name), status),
            Edge::BadRequest => assert_reply(name, c.bytes, &recv(&term, name), 400),
            Edge::Dropped => barrier(&term, sip.addr(), &mut barriers),
            Edge::ResponseRelayed => unreachable!("{name} is a response"),
        }
    }

    let sipedge_via = sipedge_via.expect("sipedge relayed a request");
    for c in CASES.iter().filter(|c| is_response(c.bytes)) {
        let name = c.name();
        // Sent by a terminal, its top Via is not sipedge's: nowhere to go.
        term.send_to(c.bytes, sip.addr()).expect("send");
        barrier(&term, sip.addr(), &mut barriers);
        // Sent by the Sipserver as the answer to a request sipedge relayed.
        let (sent, expected) = back_through_sipedge(c.bytes, &sipedge_via, term_addr);
        upstream.send_to(&sent, sip.addr()).expect("send");
        match c.edge {
            Edge::ResponseRelayed => {
                let got = recv(&term, name);
                assert!(
                    got == expected,
                    "{name}: relayed with other changes than its Via\n--- expected\n{}\n--- got\n{}",
                    s(&expected),
                    s(&got)
                );
            }
            Edge::Dropped => barrier(&term, sip.addr(), &mut barriers),
            other => panic!("{name}: {other:?} for a response"),
        }
    }
    // bcast as the RFC means it: sipedge's Via on top, the broadcast address next. Loopback
    // cannot show a broadcast; the count of what sipedge did not send can.
    let bcast = with_sipedge_on_top(case("bcast").bytes, &sipedge_via);
    upstream.send_to(&bcast, sip.addr()).expect("send");
    barrier(&term, sip.addr(), &mut barriers);

    let after = Counters::read(&se);
    let count = |edge: Edge, responses: bool| {
        CASES
            .iter()
            .filter(|c| c.edge == edge && is_response(c.bytes) == responses)
            .count() as u64
    };
    let bad_requests = count(Edge::BadRequest, false);
    let dropped_requests = count(Edge::Dropped, false);
    // A defect too, answered with its own code.
    let other_version = count(Edge::Answered(505), false);
    // Each sent twice: by a terminal, then by the Sipserver.
    let dropped_responses = count(Edge::Dropped, true);
    let valid_responses = count(Edge::ResponseRelayed, true);
    assert_eq!(
        after.bad_requests - before.bad_requests,
        bad_requests,
        "400s: {after:?}"
    );
    assert_eq!(
        after.parse_errors - before.parse_errors,
        bad_requests + other_version + dropped_requests + 2 * dropped_responses,
        "{after:?}"
    );
    assert_eq!(
        after.dropped("unparseable") - before.dropped("unparseable"),
        dropped_requests + 2 * dropped_responses,
        "{after:?}"
    );
    // The valid responses a terminal sent, and bcast towards 255.255.255.255.
    assert_eq!(
        after.dropped("unroutable") + after.dropped("send_failed")
            - before.dropped("unroutable")
            - before.dropped("send_failed"),
        valid_responses + 1,
        "{after:?}"
    );

    let tracked: Vec<String> = invites
        .iter()
        .filter(|(c, _)| is_initial_invite(c.bytes))
        .map(|(c, _)| call_id(c.bytes))
        .collect();
    let untracked: Vec<String> = invites
        .iter()
        .filter(|(c, _)| !is_initial_invite(c.bytes))
        .map(|(c, _)| call_id(c.bytes))
        .collect();
    for name in ["esc01", "longreq", "invut", "sdp01", "baddate", "inv2543"] {
        assert!(tracked.contains(&call_id(case(name).bytes)), "{name}");
    }
    assert_eq!(untracked, [call_id(case("wsinv").bytes)]);
    assert_live(&se, &tracked);
    for (c, relayed) in &invites {
        upstream.send_to(&busy(relayed), sip.addr()).expect("send");
        let got = recv(&term, c.name());
        assert_eq!(scanned(&got).status(), Some(486), "{}", c.name());
        assert_eq!(call_id(&got), call_id(c.bytes), "{}", c.name());
    }
    assert_cdrs(&se, &tracked, &untracked, "udp");

    // Nothing else reached either side.
    barrier(&term, sip.addr(), &mut barriers);
    upstream.set_nonblocking(true).expect("nonblocking");
    let mut buf = vec![0u8; 65_536];
    if let Ok((n, _)) = upstream.recv_from(&mut buf) {
        panic!("the Sipserver got more: {}", s(&buf[..n]));
    }
    drop(upstream);
    Pair::new("call", Transport::Udp, 5)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
}

/// The Sipserver's end of sipedge's TCP connections: accepts them, frames what arrives by
/// Content-Length and hands each message over with a handle to answer on its connection.
#[derive(Debug)]
struct TcpUpstream {
    /// Messages received, each with a clone of its connection.
    frames: mpsc::Receiver<(TcpStream, Vec<u8>)>,
    /// Tells the threads to end.
    stop: Arc<AtomicBool>,
    /// The accepting thread (which joins the readers).
    thread: Option<JoinHandle<()>>,
}

impl TcpUpstream {
    fn bind(addr: SocketAddr) -> TcpUpstream {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).expect("nonblocking");
        let (tx, frames) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut readers = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (tx, stopping) = (tx.clone(), Arc::clone(&stopping));
                        readers.push(std::thread::spawn(move || {
                            let mut framed = Framed::new(stream, Duration::from_millis(100));
                            while !stopping.load(Ordering::Relaxed) {
                                match framed.next() {
                                    Ok(Some(frame)) => {
                                        let Ok(writer) = framed.stream.try_clone() else {
                                            return;
                                        };
                                        if tx.send((writer, frame)).is_err() {
                                            return;
                                        }
                                    }
                                    Ok(None) => continue,
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
            for reader in readers {
                let _ = reader.join();
            }
        });
        TcpUpstream {
            frames,
            stop,
            thread: Some(thread),
        }
    }

    /// The next message sipedge relayed, and its connection.
    fn next(&self, what: &str) -> (TcpStream, Vec<u8>) {
        self.frames
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("{what}: nothing reached the Sipserver ({e})"))
    }
}

impl Drop for TcpUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP connection read one SIP message at a time (framed by Content-Length).
#[derive(Debug)]
struct Framed {
    stream: TcpStream,
    /// Bytes read and not yet returned.
    buf: Vec<u8>,
}

impl Framed {
    fn new(stream: TcpStream, read_timeout: Duration) -> Framed {
        stream
            .set_read_timeout(Some(read_timeout))
            .expect("read timeout");
        Framed {
            stream,
            buf: Vec::new(),
        }
    }

    fn connect(addr: SocketAddr) -> Framed {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Framed::new(stream, WAIT)
    }

    fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local address")
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next message: `Ok(None)` when the read timed out, `Err` when the connection ended.
    fn next(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = &self.buf[..end];
                let length = head
                    .split(|&b| b == b'\n')
                    .filter_map(|line| {
                        let line = s(line);
                        let (name, value) = line.split_once(':')?;
                        let name = name.trim().to_ascii_lowercase();
                        (name == "content-length" || name == "l")
                            .then(|| value.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .next()
                    .unwrap_or(0);
                let len = end + 4 + length;
                if self.buf.len() >= len {
                    return Ok(Some(self.buf.drain(..len).collect()));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message, failing the test when none comes within [`WAIT`].
    fn expect(&mut self, what: &str) -> Vec<u8> {
        match self.next() {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("{what}: nothing arrived within {WAIT:?}"),
            Err(e) => panic!("{what}: the connection ended ({e})"),
        }
    }
}

#[test]
fn valid_torture_messages_over_tcp() {
    let sip = Sip::one_port();
    let upstream = TcpUpstream::bind(sip.upstream_addr());
    let se = Sipedge::start(&Config::new("torture-tcp").sip(sip));
    let port = sip.ports.first;
    let mut sipedge_via: Option<Vec<u8>> = None;
    // Relayed INVITEs: the terminal's connection, the Sipserver's, the INVITE as relayed.
    let mut invites: Vec<(String, usize, TcpStream, Vec<u8>)> = Vec::new();
    let mut terminals: Vec<Framed> = Vec::new();

    for c in CASES.iter() {
        if !matches!(c.scan, Scan::Fields(_)) || is_response(c.bytes) {
            continue;
        }
        let name = c.name();
        let mut term = Framed::connect(sip.addr());
        term.send(c.bytes);
        let sender = term.local_addr();
        // What the stream holds: dblreq is two messages on a stream (and a stray "C" line
        // its INVITE's Content-Length leaves over, after which sipedge closes it).
        let mut messages = vec![message_of(c.bytes)];
        if name == "dblreq" {
            let invite = c
                .bytes
                .windows(7)
                .position(|w| w == b"INVITE ")
                .expect("INVITE");
            messages.push(message_of(&c.bytes[invite..]));
        }
        match (name, c.edge) {
            // RFC 2543 syntax has no Content-Length: a stream cannot be framed without one
            // (RFC 3261 §18.3), so sipedge answers 400 and closes the connection.
            ("inv2543", _) => {
                let reply = term.expect(name);
                assert_reply(name, c.bytes, &reply, 400);
                assert!(s(&reply).contains("Content-Length"), "{}", s(&reply));
            }
            (_, Edge::Answered(status)) => assert_reply(name, c.bytes, &term.expect(name), status),
            (_, Edge::Relayed) => {
                for original in messages {
                    let (conn, got) = upstream.next(name);
                    assert_eq!(call_id(&got), call_id(original), "{name}: {}", s(&got));
                    assert_relayed_intact(name, original, &got, sender, port, "TCP");
                    if sipedge_via.is_none() {
                        sipedge_via = scanned(&got).vias().next().map(<[u8]>::to_vec);
                    }
                    if is_initial_invite(original) {
                        invites.push((call_id(original), terminals.len(), conn, got));
                    }
                }
            }
            (_, other) => panic!("{name}: {other:?} for a valid request"),
        }
        terminals.push(term);
    }

    // Responses from the Sipserver, over its connection, to a terminal's connection.
    let sipedge_via = sipedge_via.expect("sipedge relayed a request");
    let mut term = Framed::connect(sip.addr());
    let (mut conn, _) = {
        // A request first, so that sipedge's connection to the Sipserver exists and the
        // terminal's connection is known to sipedge.
        let options = case("lwsdisp").bytes;
        term.send(options);
        upstream.next("lwsdisp again")
    };
    for c in CASES.iter().filter(|c| c.edge == Edge::ResponseRelayed) {
        let (sent, expected) = back_through_sipedge(c.bytes, &sipedge_via, term.local_addr());
        conn.write_all(&sent).expect("write");
        let got = term.expect(c.name());
        assert!(
            got == expected,
            "{}: relayed with other changes than its Via\n--- expected\n{}\n--- got\n{}",
            c.name(),
            s(&expected),
            s(&got)
        );
    }

    let tracked: Vec<String> = invites.iter().map(|(id, ..)| id.clone()).collect();
    for name in ["esc01", "longreq", "invut", "sdp01", "baddate"] {
        assert!(tracked.contains(&call_id(case(name).bytes)), "{name}");
    }
    assert!(tracked.contains(&"dblreq.0ha0isnda977644900765@192.0.2.15".to_owned()));
    assert_live(&se, &tracked);
    for (id, terminal, conn, relayed) in &mut invites {
        conn.write_all(&busy(relayed)).expect("write");
        // dblreq's connection is closed by then (its stray line cannot be framed): the 486
        // has no way back, but call tracking sees it go.
        if id.starts_with("dblreq.") {
            continue;
        }
        let got = terminals[*terminal].expect(id);
        assert_eq!(scanned(&got).status(), Some(486), "{id}");
        assert_eq!(&call_id(&got), id);
    }
    assert_cdrs(
        &se,
        &tracked,
        &[call_id(case("wsinv").bytes), call_id(case("inv2543").bytes)],
        "tcp",
    );

    // The Sipserver's sockets go, for SIPp's to take their place.
    drop((upstream, conn, invites, terminals, term));
    Pair::new("call", Transport::Tcp, 5)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
}

/// The OPTIONS with Max-Forwards 0 of [`barrier`], for a TCP connection: sipedge handles a
/// connection's messages in order, so its answer comes after anything sent for the ones
/// before.
fn tcp_barrier(term: &mut Framed, n: u32) {
    let id = format!("tcp-barrier-{n}");
    let options = format!(
        "OPTIONS sip:edge@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP {};branch=z9hG4bK{id}\r\n\
         Max-Forwards: 0\r\nFrom: <sip:t@127.0.0.1>;tag=b\r\nTo: <sip:edge@127.0.0.1>\r\n\
         Call-ID: {id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        term.local_addr()
    );
    term.send(options.as_bytes());
    let reply = term.expect(&id);
    assert_eq!(
        call_id(&reply),
        id,
        "the terminal got something else first: {}",
        s(&reply)
    );
}

#[test]
fn invalid_torture_messages_over_tcp() {
    let sip = Sip::one_port();
    let upstream = TcpUpstream::bind(sip.upstream_addr());
    let se = Sipedge::start(&Config::new("torture-tcp-invalid").sip(sip));
    let before = Counters::read(&se);
    let mut open = Vec::new();
    for (n, c) in CASES.iter().enumerate() {
        if matches!(c.scan, Scan::Fields(_)) {
            continue;
        }
        let name = c.name();
        let mut term = Framed::connect(sip.addr());
        term.send(c.bytes);
        match (name, c.edge) {
            // Its Content-Length promises 9999 octets: sipedge waits for them (the RFC: wait,
            // then close), the test does not.
            ("clerr", _) => {}
            // A stream whose Content-Length is negative or given twice cannot be framed any
            // further: a 400, then the connection is closed.
            ("ncl" | "mcl01", _) => {
                assert_reply(name, c.bytes, &term.expect(name), 400);
                match term.next() {
                    Err(e) if e.kind() == ErrorKind::UnexpectedEof => {}
                    other => panic!("{name}: the connection stays open: {other:?}"),
                }
            }
            (_, Edge::BadRequest) => {
                assert_reply(name, c.bytes, &term.expect(name), 400);
                tcp_barrier(&mut term, n as u32);
            }
            (_, Edge::Answered(505)) => {
                assert_reply(name, c.bytes, &term.expect(name), 505);
                tcp_barrier(&mut term, n as u32);
            }
            (_, Edge::Dropped) => tcp_barrier(&mut term, n as u32),
            (_, other) => panic!("{name}: {other:?} for an invalid message"),
        }
        open.push(term);
    }
    // Whatever sipedge relayed would be written to the Sipserver before this request.
    let mut term = Framed::connect(sip.addr());
    let lwsdisp = case("lwsdisp").bytes;
    term.send(lwsdisp);
    let (_, first) = upstream.next("lwsdisp");
    assert_eq!(call_id(&first), call_id(lwsdisp), "relayed: {}", s(&first));
    let after = Counters::read(&se);
    let count = |edge: Edge| CASES.iter().filter(|c| c.edge == edge).count() as u64;
    // Every 400 but clerr's, and every drop.
    assert_eq!(
        after.bad_requests - before.bad_requests,
        count(Edge::BadRequest) - 1,
        "{after:?}"
    );
    assert_eq!(
        after.dropped("unparseable") - before.dropped("unparseable"),
        count(Edge::Dropped),
        "{after:?}"
    );
    drop((upstream, open, term));
    Pair::new("call", Transport::Tcp, 5)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
}
