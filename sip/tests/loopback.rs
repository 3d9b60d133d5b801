//! The proxy through real loopback sockets: a terminal on 127.0.0.1, sipedge on 127.0.0.1,
//! the "Sipserver" on 127.0.0.2 (same port, `host` upstream mode).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sipedge_sip::frame::{Frame, frame};
use sipedge_sip::{Direction, Origin, Proxy, ProxyConfig, Relayed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

struct Running {
    port: u16,
    observed: mpsc::Receiver<Relayed>,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A port free on 127.0.0.1 and 127.0.0.2, UDP and TCP (best effort: checked by binding).
async fn free_port() -> u16 {
    loop {
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let ok = UdpSocket::bind(("127.0.0.2", port)).await.is_ok()
            && TcpListener::bind(("127.0.0.1", port)).await.is_ok()
            && TcpListener::bind(("127.0.0.2", port)).await.is_ok();
        if ok {
            return port;
        }
    }
}

async fn start(tweak: impl FnOnce(&mut ProxyConfig)) -> Running {
    let port = free_port().await;
    let mut cfg = ProxyConfig::with_upstream("127.0.0.2".parse().unwrap());
    cfg.listen = "127.0.0.1".parse().unwrap();
    cfg.ports = format!("{port}-{port}").parse().unwrap();
    tweak(&mut cfg);
    let dir = tempfile::tempdir().unwrap();
    let (tx, observed) = mpsc::channel(cfg.handoff_queue);
    let proxy = Proxy::bind(&cfg, dir.path(), tx).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy.run(async {
        let _ = stopped.await;
    }));
    Running {
        port,
        observed,
        stop: Some(stop),
        _dir: dir,
    }
}

fn invite(via: &str, call_id: &str, extra: &str) -> String {
    format!(
        "INVITE sip:95566@127.0.0.2 SIP/2.0\r\nVia: {via};branch=z9hG4bK-{call_id};rport\r\n\
         From: <sip:8001@bank>;tag=t-{call_id}\r\nTo: <sip:95566@bank>\r\nCall-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:8001@192.168.1.9:5060>\r\nMax-Forwards: 70\r\n{extra}\
         Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n"
    )
}

/// The value of the first header `name` in a message.
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n")
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(": ")))
}

/// A response to `req` (as received by the upstream): its Vias and Record-Route copied.
fn answer(req: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in req.split("\r\n").skip(1) {
        let copy = ["Via:", "Record-Route:", "From:", "Call-ID:", "CSeq:"];
        if copy.iter().any(|h| line.starts_with(h)) {
            out.push_str(line);
            out.push_str("\r\n");
        }
        if line.starts_with("To:") {
            out.push_str(line);
            out.push_str(";tag=uas\r\n");
        }
    }
    out.push_str("Contact: <sip:sipserver@127.0.0.2>\r\nContent-Length: 0\r\n\r\n");
    out
}

async fn recv_udp(sock: &UdpSocket) -> (String, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("nothing received")
        .unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

async fn observed(r: &mut Running) -> Relayed {
    timeout(WAIT, r.observed.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn udp_call_goes_through_and_callee_bye_finds_the_flow() {
    let mut p = start(|_| {}).await;
    let sipedge: SocketAddr = ([127, 0, 0, 1], p.port).into();
    let upstream = UdpSocket::bind(("127.0.0.2", p.port)).await.unwrap();
    let terminal = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let t_addr = terminal.local_addr().unwrap();

    let inv = invite("SIP/2.0/UDP 192.168.1.9:5060", "c1", "");
    terminal.send_to(inv.as_bytes(), sipedge).await.unwrap();
    let (got, from) = recv_udp(&upstream).await;
    assert_eq!(from, sipedge, "relayed from the port the terminal used");
    assert!(
        got.starts_with("INVITE sip:95566@127.0.0.2 SIP/2.0\r\nRecord-Route: <sip:"),
        "{got}"
    );
    let own_via = format!("Via: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKsE", p.port);
    assert!(got.contains(&own_via), "{got}");
    assert!(
        got.contains(&format!(";rport={};received=127.0.0.1\r\n", t_addr.port())),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\nv=0\r\n"), "body kept: {got}");
    let o = observed(&mut p).await;
    assert_eq!(
        (o.direction, o.origin),
        (Direction::ToUpstream, Origin::Forwarded)
    );
    assert_eq!((o.src, o.dst), (t_addr, ([127, 0, 0, 2], p.port).into()));
    assert_eq!(o.bytes, inv.as_bytes());
    // With what the relay's scan found, so that call tracking need not scan it again.
    let facts = o.summary.and_then(|s| s.facts(&o.bytes));
    let scanned = sipedge_sip::scan::scan(&o.bytes).map(|m| m.facts()).ok();
    assert!(facts.is_some());
    assert_eq!(facts, scanned);

    // The retransmission gets the same branch.
    terminal.send_to(inv.as_bytes(), sipedge).await.unwrap();
    let (again, _) = recv_udp(&upstream).await;
    assert_eq!(header(&got, "Via"), header(&again, "Via"));

    // 200 back by the Via path, sipedge's Via removed.
    upstream
        .send_to(answer(&got, "200 OK").as_bytes(), sipedge)
        .await
        .unwrap();
    let (resp, from) = recv_udp(&terminal).await;
    assert_eq!(from, sipedge);
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("\r\nVia: SIP/2.0/UDP 192.168.1.9:5060;branch=z9hG4bK-c1;"),
        "{resp}"
    );
    assert!(!resp.contains("z9hG4bKsE"), "{resp}");

    // The callee hangs up: BYE to the unreachable Contact, routed by the Record-Route.
    let rr = header(&got, "Record-Route").unwrap();
    let bye = format!(
        "BYE sip:8001@192.168.1.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:{};branch=z9hG4bKbye1\r\n\
         Route: {rr}\r\nFrom: <sip:95566@bank>;tag=uas\r\nTo: <sip:8001@bank>;tag=t-c1\r\n\
         Call-ID: c1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        p.port
    );
    upstream.send_to(bye.as_bytes(), sipedge).await.unwrap();
    let (got_bye, _) = recv_udp(&terminal).await;
    assert!(
        got_bye.starts_with("BYE sip:8001@192.168.1.9:5060 SIP/2.0\r\n"),
        "{got_bye}"
    );
    assert!(!got_bye.contains("Route:"), "{got_bye}");
    // The terminal's 200 to the BYE goes back to the upstream.
    terminal
        .send_to(answer(&got_bye, "200 OK").as_bytes(), sipedge)
        .await
        .unwrap();
    let (bye_ok, _) = recv_udp(&upstream).await;
    assert!(bye_ok.starts_with("SIP/2.0 200 OK\r\n"), "{bye_ok}");
    assert!(
        bye_ok.contains("\r\nVia: SIP/2.0/UDP 127.0.0.2:"),
        "{bye_ok}"
    );
    assert!(!bye_ok.contains("z9hG4bKsE"), "{bye_ok}");

    // A forged token is not followed (the Request-URI's address is used instead).
    let forged = bye.replace(&rr[5..25], "00000000000000000000");
    upstream.send_to(forged.as_bytes(), sipedge).await.unwrap();
    assert!(
        timeout(
            Duration::from_millis(300),
            terminal.recv_from(&mut [0u8; 10])
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn stun_keepalives_are_answered_with_the_public_address() {
    let p = start(|_| {}).await;
    let terminal = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = vec![0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7; 12]);
    terminal.send_to(&req, ("127.0.0.1", p.port)).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = timeout(WAIT, terminal.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let resp = &buf[..n];
    assert_eq!(&resp[..2], &[1, 1], "Binding success: {resp:02x?}");
    assert_eq!(&resp[8..20], &[7; 12]);
    let port = u16::from_be_bytes([resp[26], resp[27]]) ^ 0x2112;
    assert_eq!(port, terminal.local_addr().unwrap().port());
}

#[tokio::test]
async fn udp_stateless_replies() {
    let p = start(|c| c.max_message_bytes = 1000).await;
    let sipedge: SocketAddr = ([127, 0, 0, 1], p.port).into();
    let _upstream = UdpSocket::bind(("127.0.0.2", p.port)).await.unwrap();
    let terminal = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cases = [
        (
            invite("SIP/2.0/UDP h", "m0", "").replace("Max-Forwards: 70", "Max-Forwards: 0"),
            "SIP/2.0 483 ",
        ),
        (
            invite("SIP/2.0/UDP h", "b1", "").replace("Max-Forwards: 70", "Max-Forwards: x"),
            "SIP/2.0 400 ",
        ),
        (
            invite(
                "SIP/2.0/UDP h",
                "big",
                &format!("X-Pad: {}\r\n", "p".repeat(1200)),
            ),
            "SIP/2.0 413 ",
        ),
    ];
    for (req, status) in cases {
        terminal.send_to(req.as_bytes(), sipedge).await.unwrap();
        let (resp, _) = recv_udp(&terminal).await;
        assert!(resp.starts_with(status), "{resp}");
    }
    // Garbage: nothing comes back.
    terminal
        .send_to(b"\x00\x01garbage\r\n\r\n", sipedge)
        .await
        .unwrap();
    assert!(
        timeout(
            Duration::from_millis(300),
            terminal.recv_from(&mut [0u8; 10])
        )
        .await
        .is_err()
    );
}

/// Reads one framed SIP message from a stream, with `buf` carrying leftovers between calls.
async fn read_msg(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Frame::Message { len } = frame(buf, 65535) {
            let msg: Vec<u8> = buf.drain(..len).collect();
            return String::from_utf8_lossy(&msg).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("no message")
            .unwrap();
        assert!(n > 0, "closed; buffered {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn closed(s: &mut TcpStream) -> bool {
    let mut sink = vec![0u8; 65536];
    loop {
        match timeout(WAIT, s.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn tcp_framing_and_keepalive() {
    let p = start(|_| {}).await;
    let upstream = TcpListener::bind(("127.0.0.2", p.port)).await.unwrap();
    let mut terminal = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();

    // Two messages in one write.
    let a = invite("SIP/2.0/TCP 192.168.1.9:5060", "a", "");
    let b = invite("SIP/2.0/TCP 192.168.1.9:5060", "b", "");
    terminal
        .write_all(format!("{a}{b}").as_bytes())
        .await
        .unwrap();
    let (mut up, _) = timeout(WAIT, upstream.accept()).await.unwrap().unwrap();
    let mut up_buf = Vec::new();
    let got_a = read_msg(&mut up, &mut up_buf).await;
    let got_b = read_msg(&mut up, &mut up_buf).await;
    assert_eq!(header(&got_a, "Call-ID"), Some("a"));
    assert_eq!(header(&got_b, "Call-ID"), Some("b"));
    assert!(got_a.contains(&format!(
        "Via: SIP/2.0/TCP 127.0.0.1:{};branch=z9hG4bKsE",
        p.port
    )));
    assert!(got_a.contains(";transport=tcp;lr>"), "{got_a}");

    // One message over many reads, the next one on the same pooled upstream connection.
    let c = invite("SIP/2.0/TCP 192.168.1.9:5060", "c", "");
    for byte in c.as_bytes() {
        terminal.write_all(&[*byte]).await.unwrap();
    }
    let got_c = read_msg(&mut up, &mut up_buf).await;
    assert_eq!(header(&got_c, "Call-ID"), Some("c"));
    assert!(got_c.ends_with("v=0\r\n"));

    // The answer comes back over the terminal's connection.
    up.write_all(answer(&got_c, "200 OK").as_bytes())
        .await
        .unwrap();
    let mut t_buf = Vec::new();
    let resp = read_msg(&mut terminal, &mut t_buf).await;
    assert!(resp.starts_with("SIP/2.0 200 OK\r\n"), "{resp}");
    assert!(
        resp.contains("\r\nVia: SIP/2.0/TCP 192.168.1.9:5060;branch=z9hG4bK-c;"),
        "{resp}"
    );
    assert!(!resp.contains("z9hG4bKsE"), "{resp}");

    // CRLF keep-alive ping gets a CRLF pong.
    terminal.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    timeout(WAIT, terminal.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");

    // A callee BYE from the upstream reaches the terminal over its connection.
    let rr = header(&got_c, "Record-Route").unwrap();
    let bye = format!(
        "BYE sip:8001@192.168.1.9:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:{};branch=z9hG4bKbye\r\n\
         Route: {rr}\r\nFrom: <sip:95566@bank>;tag=uas\r\nTo: <sip:8001@bank>;tag=t-c\r\n\
         Call-ID: c\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        p.port
    );
    up.write_all(bye.as_bytes()).await.unwrap();
    let got_bye = read_msg(&mut terminal, &mut t_buf).await;
    assert!(
        got_bye.starts_with("BYE sip:8001@192.168.1.9:5060;transport=tcp SIP/2.0\r\n"),
        "{got_bye}"
    );
}

#[tokio::test]
async fn tcp_caps_and_timeouts() {
    let p = start(|c| {
        c.max_message_bytes = 1000;
        c.tcp_max_buffer_bytes = 4000;
        c.tcp_idle_timeout = Duration::from_millis(300);
        c.tcp_max_connections = 3;
    })
    .await;

    // Oversized message: 413, then the connection closes.
    let mut t = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let big = invite(
        "SIP/2.0/TCP h",
        "big",
        &format!("X-Pad: {}\r\n", "p".repeat(1200)),
    );
    t.write_all(big.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let resp = read_msg(&mut t, &mut buf).await;
    assert!(resp.starts_with("SIP/2.0 413 "), "{resp}");
    assert!(closed(&mut t).await);

    // No Content-Length on a stream: its end is unknown, so 400 and close.
    let mut t = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let no_length = invite("SIP/2.0/TCP h", "ncl", "")
        .replace("Content-Length: 5\r\n", "")
        .replace("v=0\r\n", "");
    t.write_all(no_length.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let resp = read_msg(&mut t, &mut buf).await;
    assert!(resp.starts_with("SIP/2.0 400 Bad Request ("), "{resp}");
    assert!(closed(&mut t).await);

    // An endless header section: closed at the cap, never answered.
    let mut t = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let _ = t.write_all(b"INVITE sip:a@b SIP/2.0\r\n").await;
    for _ in 0..100 {
        if t.write_all(b"X-Endless: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n")
            .await
            .is_err()
        {
            break;
        }
    }
    assert!(closed(&mut t).await);

    // Idle connections are closed.
    let mut t = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    assert!(closed(&mut t).await);

    // Connection cap: the fourth concurrent connection is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
        held.push(s);
    }
    let mut extra = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    let mut b = [0u8; 1];
    let r = timeout(Duration::from_millis(250), extra.read(&mut b)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
}

#[tokio::test]
async fn tcp_upstream_down_gets_503() {
    let p = start(|c| c.upstream_connect_timeout = Duration::from_millis(500)).await;
    let mut t = TcpStream::connect(("127.0.0.1", p.port)).await.unwrap();
    t.write_all(invite("SIP/2.0/TCP h", "down", "").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let resp = read_msg(&mut t, &mut buf).await;
    assert!(resp.starts_with("SIP/2.0 503 "), "{resp}");
    assert!(resp.contains("Call-ID: down\r\n"), "{resp}");
}

#[tokio::test]
async fn a_port_in_use_is_named() {
    let taken = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = ProxyConfig::with_upstream("127.0.0.2".parse().unwrap());
    cfg.listen = "127.0.0.1".parse().unwrap();
    cfg.ports = format!("{port}-{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (tx, _rx) = mpsc::channel(1);
    let err = Proxy::bind(&cfg, dir.path(), tx)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("UDP"),
        "{err}"
    );
}

#[tokio::test]
async fn a_flooding_source_is_limited_and_others_still_served() {
    let p = start(|c| {
        c.source_rate_limit = 1;
        c.source_rate_burst = 5;
    })
    .await;
    let sipedge: SocketAddr = ([127, 0, 0, 1], p.port).into();
    let upstream = UdpSocket::bind(("127.0.0.2", p.port)).await.unwrap();
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..50 {
        let req = invite("SIP/2.0/UDP 192.168.1.9", &format!("flood{i}"), "");
        flooder.send_to(req.as_bytes(), sipedge).await.unwrap();
    }
    let mut relayed = 0;
    while timeout(
        Duration::from_millis(300),
        upstream.recv_from(&mut [0u8; 65536]),
    )
    .await
    .is_ok()
    {
        relayed += 1;
    }
    assert!(
        (5..=6).contains(&relayed),
        "{relayed} of 50 flood messages relayed"
    );
    // Another address is served as usual.
    let other = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let req = invite("SIP/2.0/UDP 192.168.1.10", "other", "");
    other.send_to(req.as_bytes(), sipedge).await.unwrap();
    let (got, _) = recv_udp(&upstream).await;
    assert_eq!(header(&got, "Call-ID"), Some("other"));
}
