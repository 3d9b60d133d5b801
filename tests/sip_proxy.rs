//! Black-box tests of the SIP proxy (SPEC §4): SIPp terminals and a SIPp Sipserver talk
//! through a running `sipedge serve`, over UDP and TCP.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH. `SIPEDGE_TEST_PROXY=kamailio` runs the same
//! tests through Kamailio (`benches/kamailio/kamailio.cfg`), which is how the scenarios and
//! these tests were checked to be right.

mod support;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use support::config::{Sip, Upstream};
use support::ports::{self, UPSTREAM_IP};
use support::proxy::Proxy;
use support::sentinel::Sentinel;
use support::sipp::{Pair, Sipp, Transport};

const TRANSPORTS: [Transport; 2] = [Transport::Udp, Transport::Tcp];

/// Runs a scenario pair through a fresh proxy on one port.
fn through_proxy(pair: &Pair) {
    let proxy = Proxy::start(Sip::one_port());
    pair.run(proxy.sip().addr(), proxy.sip().upstream_addr())
        .assert_passed();
}

#[test]
fn basic_calls_over_udp_on_a_port_range() {
    // Three ports; calls use the last one, which must forward to the same port upstream.
    let proxy = Proxy::start(Sip::range(3));
    let port = proxy.sip().ports.last;
    Pair::new("call", Transport::Udp, 200)
        .rate(100)
        .run(proxy.sip().addr_on(port), proxy.sip().upstream_for(port))
        .assert_passed();
}

#[test]
fn basic_calls_over_tcp() {
    through_proxy(&Pair::new("call", Transport::Tcp, 200).rate(100));
}

#[test]
fn basic_calls_over_tcp_one_connection_per_call() {
    through_proxy(&Pair::new("call", Transport::TcpPerCall, 200).rate(100));
}

#[test]
fn callee_bye_reaches_a_terminal_whose_contact_is_unreachable() {
    for transport in TRANSPORTS {
        through_proxy(&Pair::new("callee_bye", transport, 20).pause_ms(200));
    }
}

#[test]
fn cancel_before_and_after_ringing() {
    for transport in TRANSPORTS {
        through_proxy(&Pair::new("cancel", transport, 10));
        through_proxy(&Pair::new("noanswer_cancel", transport, 10).pause_ms(300));
    }
}

#[test]
fn reinvite_adds_video() {
    for transport in TRANSPORTS {
        through_proxy(&Pair::new("reinvite", transport, 10).pause_ms(100));
    }
}

#[test]
fn register_then_call_from_the_sipserver_side() {
    for transport in TRANSPORTS {
        through_proxy(&Pair::new("register", transport, 10).pause_ms(100));
    }
}

#[test]
fn fixed_upstream_port() {
    // `sip.upstream = "host:port"`: every port forwards to that one address.
    let upstream = SocketAddr::new(UPSTREAM_IP, ports::free_port());
    let proxy = Proxy::start(Sip {
        upstream: Upstream::Fixed(upstream),
        ..Sip::range(2)
    });
    for transport in TRANSPORTS {
        Pair::new("call", transport, 10)
            .run(proxy.sip().addr_on(proxy.sip().ports.last), upstream)
            .assert_passed();
        Pair::new("register", transport, 5)
            .run(proxy.sip().addr(), upstream)
            .assert_passed();
    }
}

#[test]
fn every_call_outcome_relays() {
    for transport in TRANSPORTS {
        for (case, pause_ms) in [
            ("video", 0),
            ("busy", 0),
            ("declined", 0),
            ("noanswer_480", 300),
            ("auth", 0),
        ] {
            through_proxy(&Pair::new(case, transport, 10).pause_ms(pause_ms));
        }
    }
}

/// Runs a UAC-only scenario whose answer must come from the proxy itself, with a sentinel
/// on the upstream that must see no INVITE.
fn answered_by_the_proxy(scenario: &str, transport: Transport) {
    let proxy = Proxy::start(Sip::one_port());
    let upstream = Sentinel::bind(proxy.sip().upstream_addr());
    let outcome = Sipp::uac(scenario, proxy.sip().addr())
        .transport(transport)
        .calls(3)
        .run();
    outcome.assert_passed(&format!("{scenario} over {transport:?}"), 3);
    std::thread::sleep(Duration::from_millis(300));
    let invites = upstream.requests("INVITE");
    assert!(
        invites.is_empty(),
        "{scenario} over {transport:?}: the proxy forwarded {} INVITE(s) it had to answer itself",
        invites.len()
    );
}

#[test]
fn max_forwards_zero_gets_483() {
    for transport in TRANSPORTS {
        answered_by_the_proxy("maxfwd0_uac", transport);
    }
}

#[test]
fn broken_request_gets_400() {
    for transport in TRANSPORTS {
        answered_by_the_proxy("bad_request_uac", transport);
    }
}

#[test]
fn upstream_down_gets_503_over_tcp() {
    for transport in [Transport::Tcp, Transport::TcpPerCall] {
        // Nothing listens on the upstream port (it was free when drawn).
        let proxy = Proxy::start(Sip::one_port());
        Sipp::uac("upstream_down_uac", proxy.sip().addr())
            .transport(transport)
            .calls(3)
            .run()
            .assert_passed(&format!("upstream down over {transport:?}"), 3);
    }
}

#[test]
fn garbage_is_dropped_and_relaying_goes_on() {
    let proxy = Proxy::start(Sip::one_port());
    let junk: Vec<Vec<u8>> = vec![
        (0u32..1400)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
        b"\0\0\0\0\r\n\r\n".to_vec(),
        b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP".to_vec(),
        b"SIP/2.0 200 OK\r\n\r\n".to_vec(),
        b"\xff\xfe INVITE \x80\x81 SIP/9.9\r\nContent-Length: -1\r\n\r\n".to_vec(),
    ];
    let udp = UdpSocket::bind((ports::TERMINAL_IP, 0)).expect("UDP socket");
    for bytes in &junk {
        udp.send_to(bytes, proxy.sip().addr())
            .expect("send UDP junk");
        let mut tcp = TcpStream::connect(proxy.sip().addr()).expect("TCP connect");
        tcp.write_all(bytes).expect("send TCP junk");
    }
    for transport in TRANSPORTS {
        Pair::new("call", transport, 5)
            .run(proxy.sip().addr(), proxy.sip().upstream_addr())
            .assert_passed();
    }
}

#[test]
fn scenario_pairs_work_peer_to_peer() {
    // The scenarios themselves, without any proxy: a failure here is a scenario bug, not a
    // proxy bug. (callee_bye and register need a proxy by design.)
    for transport in TRANSPORTS {
        for case in [
            "call",
            "video",
            "reinvite",
            "busy",
            "declined",
            "noanswer_480",
            "noanswer_cancel",
            "cancel",
            "auth",
        ] {
            let uas = SocketAddr::new(UPSTREAM_IP, ports::free_port());
            Pair::new(case, transport, 3)
                .pause_ms(50)
                .run(uas, uas)
                .assert_passed();
        }
    }
}
