use super::*;
use crate::scan::{RPort, parse, scan};

fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// A set of edits applied to a test message.
type Edits = fn(&mut Rewrite<'_, '_>);

/// Applies `edit` to the message `input` (written with `\n` line ends) and compares the result
/// with `expected`; the result must itself parse.
fn check(input: &str, edit: Edits, expected: &str) {
    let input = crlf(input);
    let msg = scan(&input).unwrap();
    let mut rw = msg.rewrite();
    edit(&mut rw);
    let out = rw.finish();
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&crlf(expected))
    );
    assert_eq!(out.capacity(), out.len(), "output sized once, exactly");
    parse(&out).unwrap();
}

const REQUEST: &str = "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bK776;rport
Max-Forwards: 70
To: <sip:bob@example.com>
From: <sip:alice@example.com>;tag=1928
Call-ID: c1
CSeq: 1 INVITE
l: 0

";

#[test]
fn request_path_edits() {
    let cases: &[(&str, Edits, &str)] = &[
        (
            REQUEST,
            |rw| {
                rw.insert_via(b"SIP/2.0/UDP 10.0.0.1:14500;branch=z9hG4bKx")
                    .set_top_via_received(b"203.0.113.9")
                    .set_top_via_rport(40123)
                    .set_max_forwards(69)
                    .insert_record_route(b"<sip:10.0.0.1:14500;lr>");
            },
            "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 10.0.0.1:14500;branch=z9hG4bKx
Record-Route: <sip:10.0.0.1:14500;lr>
Via: SIP/2.0/UDP 192.168.1.5:5060;branch=z9hG4bK776;rport=40123;received=203.0.113.9
Max-Forwards: 69
To: <sip:bob@example.com>
From: <sip:alice@example.com>;tag=1928
Call-ID: c1
CSeq: 1 INVITE
l: 0

",
        ),
        // No rport: appended; an existing received is replaced, not duplicated.
        (
            "OPTIONS sip:x@h SIP/2.0
v: SIP/2.0/TCP a.example.com ; received = 1.1.1.1 , SIP/2.0/UDP b
Record-Route: <sip:old.example.com;lr>
t: <sip:x@h>
f: <sip:y@h>;tag=1
i: c2
CSeq: 3 OPTIONS

",
            |rw| {
                rw.set_top_via_received(b"2.2.2.2")
                    .set_top_via_rport(5060)
                    .insert_record_route(b"<sip:new.example.com;lr>");
            },
            "OPTIONS sip:x@h SIP/2.0
v: SIP/2.0/TCP a.example.com ; received = 2.2.2.2;rport=5060 , SIP/2.0/UDP b
Record-Route: <sip:new.example.com;lr>
Record-Route: <sip:old.example.com;lr>
t: <sip:x@h>
f: <sip:y@h>;tag=1
i: c2
CSeq: 3 OPTIONS

",
        ),
        // Missing Max-Forwards is added, received flag gets a value, rport value replaced.
        (
            "MESSAGE sip:x@h SIP/2.0
Via: SIP/2.0/UDP a;received;rport=1
To: <sip:x@h>
From: <sip:y@h>;tag=1
Call-ID: c3
CSeq: 3 MESSAGE

",
            |rw| {
                rw.set_top_via_received(b"9.9.9.9")
                    .set_top_via_rport(2)
                    .set_max_forwards(70);
            },
            "MESSAGE sip:x@h SIP/2.0
Via: SIP/2.0/UDP a;received=9.9.9.9;rport=2
To: <sip:x@h>
From: <sip:y@h>;tag=1
Call-ID: c3
CSeq: 3 MESSAGE
Max-Forwards: 70

",
        ),
        // Route popping (first of a comma list, then a whole line) and a new Request-URI.
        (
            "BYE sip:edge.example.com;lr SIP/2.0
Route: <sip:edge.example.com;lr>, <sip:next.example.com;lr>
Via: SIP/2.0/UDP a;branch=z9hG4bK1
To: <sip:x@h>;tag=2
From: <sip:y@h>;tag=1
Call-ID: c4
CSeq: 4 BYE

",
            |rw| {
                rw.remove_top_route()
                    .set_request_uri(b"sip:alice@198.51.100.2:5062");
            },
            "BYE sip:alice@198.51.100.2:5062 SIP/2.0
Route: <sip:next.example.com;lr>
Via: SIP/2.0/UDP a;branch=z9hG4bK1
To: <sip:x@h>;tag=2
From: <sip:y@h>;tag=1
Call-ID: c4
CSeq: 4 BYE

",
        ),
        (
            "BYE sip:x@h SIP/2.0
Route: <sip:edge.example.com;lr>
Route: <sip:next.example.com;lr>
Via: SIP/2.0/UDP a;branch=z9hG4bK1
To: <sip:x@h>;tag=2
From: <sip:y@h>;tag=1
Call-ID: c4
CSeq: 4 BYE

",
            |rw| {
                rw.remove_top_route().insert_header_top(b"X-Edge", b"1");
            },
            "BYE sip:x@h SIP/2.0
X-Edge: 1
Route: <sip:next.example.com;lr>
Via: SIP/2.0/UDP a;branch=z9hG4bK1
To: <sip:x@h>;tag=2
From: <sip:y@h>;tag=1
Call-ID: c4
CSeq: 4 BYE

",
        ),
    ];
    for &(input, edit, expected) in cases {
        check(input, edit, expected);
    }
}

const RESPONSE_TAIL: &str = "To: <sip:x@h>;tag=2
From: <sip:y@h>;tag=1
Call-ID: r
CSeq: 1 INVITE
Content-Length: 0

";

#[test]
fn top_via_removal() {
    let remove: Edits = |rw| {
        rw.remove_top_via();
    };
    let cases: &[(&str, &str)] = &[
        (
            "Via: SIP/2.0/UDP proxy;branch=z9hG4bKp\nVia: SIP/2.0/UDP ua;branch=z9hG4bKu\n",
            "Via: SIP/2.0/UDP ua;branch=z9hG4bKu\n",
        ),
        (
            "Via: SIP/2.0/UDP proxy;branch=z9hG4bKp, SIP/2.0/UDP ua;branch=z9hG4bKu\n",
            "Via: SIP/2.0/UDP ua;branch=z9hG4bKu\n",
        ),
        (
            "v:SIP/2.0/UDP proxy;branch=z9hG4bKp,SIP/2.0/UDP ua\n",
            "v:SIP/2.0/UDP ua\n",
        ),
        // Folded and compact, first element spanning a fold.
        (
            "v:  SIP  / 2.0  / TCP     proxy   ;\n  branch  =   z9hG4bK9ikj8  ,\n SIP  /    2.0   / UDP  ua   ; branch=\n z9hG4bK30239\n",
            "v:  SIP  /    2.0   / UDP  ua   ; branch=\n z9hG4bK30239\n",
        ),
        // The only value, on a folded line: the whole line with its continuation goes.
        (
            "Via:\n SIP/2.0/UDP proxy;branch=z9hG4bKp\nVIA: SIP/2.0/UDP ua\n",
            "VIA: SIP/2.0/UDP ua\n",
        ),
        // Quoted commas and brackets do not split.
        (
            "Via: SIP/2.0/UDP proxy;x=\"a,b\", SIP/2.0/UDP ua\n",
            "Via: SIP/2.0/UDP ua\n",
        ),
    ];
    for &(vias, expected_vias) in cases {
        let input = format!("SIP/2.0 200 OK\n{vias}{RESPONSE_TAIL}");
        let expected = format!("SIP/2.0 200 OK\n{expected_vias}{RESPONSE_TAIL}");
        check(&input, remove, &expected);
    }
}

#[test]
fn edits_inside_a_removed_value_are_dropped() {
    let input = crlf(&format!(
        "SIP/2.0 200 OK\nVia: SIP/2.0/UDP p;rport, SIP/2.0/UDP ua\n{RESPONSE_TAIL}"
    ));
    let msg = parse(&input).unwrap();
    let out = msg
        .rewrite()
        .remove_top_via()
        .set_top_via_received(b"1.2.3.4")
        .set_top_via_rport(9)
        .finish();
    assert_eq!(
        out,
        crlf(&format!(
            "SIP/2.0 200 OK\nVia: SIP/2.0/UDP ua\n{RESPONSE_TAIL}"
        ))
    );
}

#[test]
fn body_bytes_are_copied_exactly() {
    let body: &[u8] =
        b"\x00\xff\xfe\r\n\x00binary\x80\r\n\r\nINVITE sip:not-a-header SIP/2.0\r\n\x00";
    let mut input = crlf(&REQUEST.replace("l: 0", &format!("l: {}", body.len())));
    input.extend_from_slice(body);
    // Trailing datagram bytes past Content-Length and leading CRLFs are not relayed.
    input.extend_from_slice(b"junk");
    input.splice(0..0, b"\r\n".iter().copied());
    let msg = parse(&input).unwrap();
    assert_eq!(msg.body(), body);
    let out = msg
        .rewrite()
        .insert_via(b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKb")
        .set_top_via_received(b"1.2.3.4")
        .set_top_via_rport(1)
        .set_max_forwards(1)
        .finish();
    assert!(out.starts_with(b"INVITE "));
    assert!(out.ends_with(body));
    let again = parse(&out).unwrap();
    assert_eq!(again.body(), body);
    assert_eq!(
        again.content_length(),
        Some(u32::try_from(body.len()).unwrap())
    );
    assert_eq!(again.top_via().unwrap().host, b"10.0.0.1");
    assert_eq!(
        again
            .vias()
            .nth(1)
            .map(|v| crate::scan::Via::parse(v).unwrap().rport),
        Some(RPort::Port(1))
    );
}

#[test]
fn no_edits_reproduce_the_message_and_write_into_appends() {
    let input = crlf(REQUEST);
    let msg = parse(&input).unwrap();
    assert_eq!(msg.rewrite().finish(), input);
    let mut out = b"prefix".to_vec();
    msg.rewrite().set_max_forwards(0).write_into(&mut out);
    assert!(out.starts_with(b"prefixINVITE"));
    assert_eq!(out.len(), 6 + input.len() - 1);
}

#[test]
fn numbers_are_written_in_decimal() {
    for (n, text) in [
        (0u16, "0"),
        (7, "7"),
        (10, "10"),
        (255, "255"),
        (65535, "65535"),
    ] {
        let mut digits = [0u8; 5];
        let len = decimal(n, &mut digits);
        assert_eq!(&digits[..len], text.as_bytes());
    }
}

#[test]
fn long_inserted_text_spills_to_the_heap() {
    let input = crlf(REQUEST);
    let msg = parse(&input).unwrap();
    let long = vec![b'a'; 700];
    let mut value = b"SIP/2.0/UDP h;x=".to_vec();
    value.extend_from_slice(&long);
    let out = msg
        .rewrite()
        .insert_via(b"SIP/2.0/UDP short")
        .insert_via(&value)
        .set_max_forwards(5)
        .finish();
    let relayed = parse(&out).unwrap();
    let vias: Vec<&[u8]> = relayed.vias().collect();
    assert_eq!(vias[0], b"SIP/2.0/UDP short");
    assert_eq!(vias[1], &value[..]);
    assert_eq!(relayed.max_forwards(), Some(5));
    assert_eq!(
        out.len(),
        input.len() + 2 * "Via: \r\n".len() + 17 + value.len() - 1
    );
}
