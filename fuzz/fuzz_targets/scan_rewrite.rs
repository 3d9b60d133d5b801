//! The scanner and the rewriter on any bytes: no panic, and a message the proxy rewrites
//! scans again with the same call fields (what call tracking reads), the Via it added on top
//! and the sender's Via right below it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipedge_sip::scan::{self, Message};

const OWN_VIA: &[u8] = b"SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKsEfuzz";

/// What call tracking and the CDR take from a message.
type Fields<'a> = (
    Option<&'a [u8]>,
    Option<(&'a [u8], Option<&'a [u8]>)>,
    Option<(&'a [u8], Option<&'a [u8]>)>,
    Option<(u32, &'a [u8])>,
    Option<&'a [u8]>,
    Option<u16>,
    Option<&'a [u8]>,
    &'a [u8],
);

fn fields<'a>(m: &Message<'a>) -> Fields<'a> {
    (
        m.call_id(),
        m.from().map(|f| (f.uri, f.tag)),
        m.to().map(|t| (t.uri, t.tag)),
        m.cseq().map(|c| (c.number, c.method_raw)),
        m.request_uri(),
        m.status(),
        m.content_type(),
        m.body(),
    )
}

/// Every accessor, for the panics they must not have.
fn touch(m: &Message<'_>) {
    let _ = (m.method(), m.method_bytes(), m.reason(), m.max_forwards());
    let _ = (m.content_length(), m.is_mandatory_complete(), m.validate());
    let _ = m.top_via();
    for _ in m.vias() {}
    for _ in m.routes().chain(m.record_routes()).chain(m.contacts()) {}
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = scan::scan(data) else { return };
    touch(&msg);
    if msg.validate().is_err() {
        return;
    }
    let before = fields(&msg);
    let top_branch = msg.top_via().and_then(|v| v.branch);
    let out = if msg.is_request() {
        msg.rewrite()
            .insert_via(OWN_VIA)
            .set_top_via_received(b"203.0.113.7")
            .set_top_via_rport(40000)
            .set_max_forwards(69)
            .insert_record_route(b"<sip:tok@192.0.2.10:14501;lr>")
            .finish()
    } else {
        msg.rewrite().remove_top_via().finish()
    };
    let again = scan::scan(&out).expect("a rewritten message scans");
    touch(&again);
    assert_eq!(fields(&again), before, "call fields changed by the rewrite");
    if msg.is_request() {
        assert_eq!(
            again.vias().next(),
            Some(OWN_VIA),
            "the added Via is not on top"
        );
        let sender = again.vias().nth(1).and_then(|v| scan::Via::parse(v).ok());
        assert_eq!(
            sender.and_then(|v| v.branch),
            top_branch,
            "the sender's Via moved"
        );
    }
});
