//! Relay-path cost per message: scan, read the call fields, rewrite as a stateless proxy does,
//! for an INVITE with SDP (request path) and a 200 OK (response path); and, for comparison,
//! rsip 0.4 doing the same to the INVITE (parse, read, edit, serialise).
//!
//! `cargo bench --bench scan -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use rsip::Header;
use rsip::headers::{Headers, MaxForwards, RecordRoute, Via};
use rsip::prelude::*;
use sipedge_sip::scan::parse;

// The allocator sipedge runs with (src/main.rs), so that the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INVITE: &[u8] = b"INVITE sip:1002@10.0.0.5:14500 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK-524287-1---4c1b2a9f6d0e7a31;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:1001@192.168.1.23:5060;transport=UDP>\r\n\
To: <sip:1002@10.0.0.5:14500>\r\n\
From: \"Agent 1001\" <sip:1001@10.0.0.5:14500>;tag=8d2f4a1c\r\n\
Call-ID: 9bX2kq7LmP4rT8vW1yZ3aB5cD6eF@192.168.1.23\r\n\
CSeq: 1 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE\r\n\
Content-Type: application/sdp\r\n\
Supported: replaces, norefersub, extended-refer, timer, outbound, path\r\n\
User-Agent: Terminal/5.6.1\r\n\
Content-Length: 251\r\n\
\r\n\
v=0\r\n\
o=- 3912345678 3912345678 IN IP4 192.168.1.23\r\n\
s=call\r\n\
c=IN IP4 192.168.1.23\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 96\r\n";

const OK: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 10.0.0.9:14500;branch=z9hG4bKedge5f3a9c1d2e\r\n\
Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK-524287-1---4c1b2a9f6d0e7a31;rport=40112;received=198.51.100.7\r\n\
Record-Route: <sip:10.0.0.9:14500;lr;ftag=8d2f4a1c>\r\n\
Contact: <sip:1002@10.0.0.5:14500>\r\n\
To: <sip:1002@10.0.0.5:14500>;tag=as5e1f0b77\r\n\
From: \"Agent 1001\" <sip:1001@10.0.0.5:14500>;tag=8d2f4a1c\r\n\
Call-ID: 9bX2kq7LmP4rT8vW1yZ3aB5cD6eF@192.168.1.23\r\n\
CSeq: 1 INVITE\r\n\
Server: Sipserver\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 130\r\n\
\r\n\
v=0\r\n\
o=root 1 1 IN IP4 10.0.0.5\r\n\
s=call\r\n\
c=IN IP4 10.0.0.5\r\n\
t=0 0\r\n\
m=audio 18000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=sendrecv\r\n";

const OWN_VIA: &[u8] = b"SIP/2.0/UDP 10.0.0.9:14500;branch=z9hG4bKedge5f3a9c1d2e";
const OWN_RR: &[u8] = b"<sip:10.0.0.9:14500;lr;ftag=8d2f4a1c>";

/// Request path: what sipedge does to an INVITE from a terminal.
fn relay_invite(bytes: &[u8]) -> Vec<u8> {
    let msg = parse(bytes).expect("bench INVITE is valid");
    black_box((
        msg.call_id(),
        msg.from().map(|f| f.tag),
        msg.to().map(|t| t.user()),
        msg.cseq(),
    ));
    black_box(msg.top_via().map(|v| (v.branch, v.rport)));
    let max_forwards = msg.max_forwards().unwrap_or(70);
    msg.rewrite()
        .insert_via(OWN_VIA)
        .set_top_via_received(b"198.51.100.7")
        .set_top_via_rport(40112)
        .set_max_forwards(max_forwards.saturating_sub(1))
        .insert_record_route(OWN_RR)
        .finish()
}

/// Response path: a 200 OK from the Sipserver, sipedge's Via removed.
fn relay_ok(bytes: &[u8]) -> Vec<u8> {
    let msg = parse(bytes).expect("bench 200 is valid");
    black_box((
        msg.status(),
        msg.call_id(),
        msg.to().map(|t| t.tag),
        msg.cseq(),
    ));
    black_box(msg.vias().nth(1).map(sipedge_sip::scan::Via::parse));
    msg.rewrite().remove_top_via().finish()
}

/// The INVITE request path done with rsip 0.4.
fn relay_invite_rsip(bytes: &[u8]) -> Vec<u8> {
    let mut msg = rsip::SipMessage::try_from(bytes).expect("rsip parses the bench INVITE");
    black_box(msg.call_id_header().map(|h| h.value().len()).ok());
    black_box(msg.from_header().and_then(|h| h.tag()).ok());
    black_box(msg.to_header().and_then(|h| h.tag()).ok());
    black_box(msg.cseq_header().and_then(|h| h.seq()).ok());
    let top = msg.via_header().expect("Via").clone();
    black_box(top.typed().map(|v| v.branch().cloned()).ok());
    let max_forwards = msg
        .max_forwards_header()
        .and_then(|h| h.num())
        .unwrap_or(70);
    if let Ok(via) = msg.via_header_mut() {
        via.replace(format!(
            "{};received=198.51.100.7;rport=40112",
            top.value().trim_end_matches(";rport")
        ));
    }
    if let Ok(mf) = msg.max_forwards_header_mut() {
        *mf = MaxForwards::new(max_forwards.saturating_sub(1).to_string());
    }
    let old = std::mem::take(msg.headers_mut());
    let mut headers = Headers::from(Header::Via(Via::new(String::from_utf8_lossy(OWN_VIA))));
    headers.push(Header::RecordRoute(RecordRoute::new(
        String::from_utf8_lossy(OWN_RR),
    )));
    headers.extend(old.into_iter().collect());
    *msg.headers_mut() = headers;
    msg.to_string().into_bytes()
}

fn bench(c: &mut Criterion) {
    assert!(relay_invite(INVITE).ends_with(&INVITE[INVITE.len() - 40..]));
    assert!(relay_ok(OK).len() < OK.len());
    assert!(!relay_invite_rsip(INVITE).is_empty());
    c.bench_function("sipedge scan+rewrite INVITE", |b| {
        b.iter(|| relay_invite(black_box(INVITE)))
    });
    c.bench_function("sipedge scan+rewrite 200 OK", |b| {
        b.iter(|| relay_ok(black_box(OK)))
    });
    c.bench_function("rsip 0.4 parse+edit+serialise INVITE", |b| {
        b.iter(|| relay_invite_rsip(black_box(INVITE)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
