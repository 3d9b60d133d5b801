use super::*;

/// Writes a message with `\n` line ends as SIP's CRLF.
pub(crate) fn crlf(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A one-line summary of everything the proxy and call tracking read from a message.
fn describe(msg: &Message<'_>) -> String {
    let mut out = Vec::new();
    match (msg.method_bytes(), msg.request_uri(), msg.status()) {
        (Some(m), Some(uri), _) => out.push(format!("{} {}", s(m), s(uri))),
        (_, _, Some(code)) => out.push(format!("{code} {}", s(msg.reason().unwrap_or_default()))),
        _ => out.push("?".into()),
    }
    if let Some(id) = msg.call_id() {
        out.push(format!("id={}", s(id)));
    }
    for (label, addr) in [("from", msg.from()), ("to", msg.to())] {
        if let Some(a) = addr {
            out.push(format!(
                "{label}={}{}",
                s(a.user().unwrap_or(b"-")),
                a.tag.map(|t| format!(";{}", s(t))).unwrap_or_default()
            ));
        }
    }
    if let Some(c) = msg.cseq() {
        out.push(format!("cseq={} {}", c.number, s(c.method_raw)));
    }
    if let Some(v) = msg.top_via() {
        out.push(format!(
            "via={:?} {}{}{}{}{}",
            v.transport,
            s(v.host),
            v.port.map(|p| format!(":{p}")).unwrap_or_default(),
            v.branch
                .map(|b| format!(" branch={}", s(b)))
                .unwrap_or_default(),
            match v.rport {
                RPort::Absent => String::new(),
                RPort::Requested => " rport".into(),
                RPort::Port(p) => format!(" rport={p}"),
            },
            v.received
                .map(|r| format!(" received={}", s(r)))
                .unwrap_or_default(),
        ));
    }
    let vias = msg.vias().count();
    if vias > 1 {
        out.push(format!("vias={vias}"));
    }
    if let Some(mf) = msg.max_forwards() {
        out.push(format!("mf={mf}"));
    }
    for r in msg.routes() {
        out.push(format!(
            "route={}{}",
            s(r.uri),
            if r.is_loose_route() { " lr" } else { "" }
        ));
    }
    for r in msg.record_routes() {
        out.push(format!("rr={}", s(r.uri)));
    }
    for c in msg.contacts() {
        out.push(format!("contact={}", s(c.uri)));
    }
    if let Some(ct) = msg.content_type() {
        out.push(format!("type={}", s(ct)));
    }
    if let Some(cl) = msg.content_length() {
        out.push(format!("cl={cl}"));
    }
    if !msg.body().is_empty() {
        out.push(format!("body={:?}", s(msg.body())));
    }
    out.join(" ")
}

/// Parses `input` and compares with the expected summary, or with `error: <Debug of error>`.
fn check(input: &[u8], expected: &str) {
    let got = match parse(input) {
        Ok(msg) => describe(&msg),
        Err(e) => format!("error: {e:?}"),
    };
    assert_eq!(got, expected, "input: {:?}", s(input));
}

const INVITE: &str = "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776;rport
Max-Forwards: 70
To: Bob <sip:bob@example.com>
From: \"Alice\" <sip:alice@example.com>;tag=1928
Call-ID: a84b4c76e66710
CSeq: 314159 INVITE
Contact: <sip:alice@192.0.2.1>
Content-Type: application/sdp
Content-Length: 5

v=0
";

#[test]
fn valid_messages() {
    let cases: &[(&str, &str)] = &[
        (
            INVITE,
            "INVITE sip:bob@example.com id=a84b4c76e66710 from=alice;1928 to=bob cseq=314159 INVITE \
             via=Udp 192.0.2.1:5060 branch=z9hG4bK776 rport mf=70 contact=sip:alice@192.0.2.1 \
             type=application/sdp cl=5 body=\"v=0\\r\\n\"",
        ),
        // Compact forms, lower and mixed case.
        (
            "BYE sip:bob@example.com SIP/2.0
v: SIP/2.0/TCP h.example.com;branch=z9hG4bKa
V: SIP/2.0/UDP 10.0.0.2;branch=z9hG4bKb
f: <sip:alice@example.com>;tag=x
T: sip:bob@example.com;tag=y
i: cid
CSEQ: 2 BYE
m: <sip:a@h>
c: text/plain
L: 0

",
            "BYE sip:bob@example.com id=cid from=alice;x to=bob;y cseq=2 BYE via=Tcp h.example.com \
             branch=z9hG4bKa vias=2 contact=sip:a@h type=text/plain cl=0",
        ),
        // Only the top Via's branch keys sipedge's own: a bare magic cookie further down, or
        // one with a transaction id after it, is no defect.
        (
            "ACK sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP h;branch=z9hG4bKz9hG4bK, SIP/2.0/UDP g;branch=z9hG4bK
From: <sip:alice@example.com>;tag=x
To: <sip:bob@example.com>;tag=y
Call-ID: cid
CSeq: 2 ACK
l: 0

",
            "ACK sip:bob@example.com id=cid from=alice;x to=bob;y cseq=2 ACK via=Udp h \
             branch=z9hG4bKz9hG4bK vias=2 cl=0",
        ),
        // Folded lines, LWS around the colon, comma-joined Vias over folds.
        (
            "OPTIONS sip:x@example.com SIP/2.0
Via  :  SIP/2.0/UDP a.example.com;branch=z9hG4bK1 ,
 SIP/2.0/UDP b.example.com;branch=z9hG4bK2,SIP/2.0/TCP c.example.com
From:
 <sip:alice@example.com>
  ;tag=f
To\t: <sip:x@example.com>
Call-ID: folded
CSeq: 7
\tOPTIONS
Max-Forwards:
 10
Route: <sip:p1.example.com;lr>, <sip:p2.example.com>
Route: <sip:p3.example.com;lr>
Record-Route: <sip:rr.example.com;lr>
Content-Length: 0

",
            "OPTIONS sip:x@example.com id=folded from=alice;f to=x cseq=7 OPTIONS via=Udp a.example.com \
             branch=z9hG4bK1 vias=3 mf=10 route=sip:p1.example.com;lr lr route=sip:p2.example.com \
             route=sip:p3.example.com;lr lr rr=sip:rr.example.com;lr cl=0",
        ),
        // A response; no Content-Length on a datagram means the body runs to the end.
        (
            "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKp;received=10.0.0.9;rport=5062, SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK776
To: <sip:bob@example.com>;tag=b
From: <sip:alice@example.com>;tag=a
Call-ID: r1
CSeq: 1 INVITE

xy",
            "180 Ringing id=r1 from=alice;a to=bob;b cseq=1 INVITE via=Udp proxy.example.com \
             branch=z9hG4bKp rport=5062 received=10.0.0.9 vias=2 body=\"xy\"",
        ),
        // Trailing datagram bytes past Content-Length are not part of the message.
        (
            "SIP/2.0 200 OK
Via: SIP/2.0/UDP h;branch=z9hG4bK1
To: <sip:b@h>;tag=2
From: <sip:a@h>;tag=1
Call-ID: t
CSeq: 5 BYE
Content-Length: 2

okEXTRA",
            "200 OK id=t from=a;1 to=b;2 cseq=5 BYE via=Udp h branch=z9hG4bK1 cl=2 body=\"ok\"",
        ),
        // Leading CRLFs are skipped; empty reason phrase; Contact wildcard.
        (
            "\n\nSIP/2.0 100 
Via: SIP/2.0/UDP h
To: <sip:b@h>
From: <sip:a@h>;tag=1
Call-ID: t
CSeq: 5 REGISTER
Contact: *
l: 0

",
            "100  id=t from=a;1 to=b cseq=5 REGISTER via=Udp h cl=0",
        ),
    ];
    for (input, expected) in cases {
        check(&crlf(input), expected);
    }
}

/// The INVITE with one header line replaced (or added when `from` is not found).
fn invite_with(from: &str, to: &str) -> Vec<u8> {
    let text = if INVITE.contains(from) {
        INVITE.replacen(from, to, 1)
    } else {
        INVITE.to_owned()
    };
    crlf(&text)
}

#[test]
fn invalid_messages() {
    use HeaderName as H;
    let cases: Vec<(Vec<u8>, ScanError)> = vec![
        (b"".to_vec(), ScanError::Empty),
        (b"\r\n\r\n".to_vec(), ScanError::Empty),
        (b"garbage".to_vec(), ScanError::UnterminatedHeaders),
        (b"garbage\r\n\r\n".to_vec(), ScanError::BadStartLine),
        (
            b" INVITE sip:a@b SIP/2.0\r\n\r\n".to_vec(),
            ScanError::BadStartLine,
        ),
        (
            b"SIP/2.0 099 Low\r\n\r\n".to_vec(),
            ScanError::BadStatusCode,
        ),
        (
            b"SIP/2.0 700 High\r\n\r\n".to_vec(),
            ScanError::BadStatusCode,
        ),
        (
            b"SIP/2.0 4294967301 better not break the receiver\r\n\r\n".to_vec(),
            ScanError::BadStatusCode,
        ),
        (b"SIP/2.0 20x OK\r\n\r\n".to_vec(), ScanError::BadStatusCode),
        (b"SIP/2.0 200OK\r\n\r\n".to_vec(), ScanError::BadStatusCode),
        (b"SIP/3.0 200 OK\r\n\r\n".to_vec(), ScanError::BadVersion),
        (invite_with("SIP/2.0\n", "SIP/7.0\n"), ScanError::BadVersion),
        (
            invite_with("sip:bob@example.com SIP", "<sip:bob@example.com> SIP"),
            ScanError::BadRequestUri,
        ),
        (
            invite_with("sip:bob@example.com SIP", "sip:bob@example.com;  lr SIP"),
            ScanError::BadStartLine,
        ),
        (
            invite_with("INVITE sip", "INVITE  sip"),
            ScanError::BadStartLine,
        ),
        (
            invite_with("SIP/2.0\n", "SIP/2.0 \n"),
            ScanError::BadStartLine,
        ),
        (
            invite_with("Call-ID: a84b4c76e66710\n", ""),
            ScanError::MissingHeader(H::CallId),
        ),
        (
            invite_with("Via: ", "X-Via: "),
            ScanError::MissingHeader(H::Via),
        ),
        (
            invite_with("From: ", "X-From: "),
            ScanError::MissingHeader(H::From),
        ),
        (
            invite_with("To: ", "X-To: "),
            ScanError::MissingHeader(H::To),
        ),
        (
            invite_with("CSeq: ", "X-CSeq: "),
            ScanError::MissingHeader(H::CSeq),
        ),
        (
            invite_with("Call-ID: a84b4c76e66710\n", "Call-ID: a\ni: b\n"),
            ScanError::DuplicateHeader(H::CallId),
        ),
        (
            invite_with("Max-Forwards: 70\n", "Max-Forwards: 70\nMax-Forwards: 70\n"),
            ScanError::DuplicateHeader(H::MaxForwards),
        ),
        (
            invite_with("Call-ID: a84b4c76e66710", "Call-ID:"),
            ScanError::BadValue(H::CallId),
        ),
        (
            invite_with("Call-ID: a84b4c76e66710", "Call-ID: a84b c76"),
            ScanError::BadValue(H::CallId),
        ),
        (
            invite_with("Call-ID: a84b4c76e66710", "Call-ID: a84b\tc76"),
            ScanError::BadValue(H::CallId),
        ),
        (
            invite_with("Call-ID: a84b4c76e66710\n", "Call-ID: a84b\n c76\n"),
            ScanError::BadValue(H::CallId),
        ),
        (
            invite_with("CSeq: 314159 INVITE", "CSeq: 314159"),
            ScanError::BadCSeq,
        ),
        (
            invite_with("CSeq: 314159 INVITE", "CSeq: 2147483648 INVITE"),
            ScanError::BadCSeq,
        ),
        (
            invite_with("CSeq: 314159 INVITE", "CSeq: 1 BYE"),
            ScanError::CSeqMethodMismatch,
        ),
        (
            invite_with("CSeq: 314159 INVITE", "CSeq: 1 invite"),
            ScanError::CSeqMethodMismatch,
        ),
        (
            invite_with("Max-Forwards: 70", "Max-Forwards: 256"),
            ScanError::BadMaxForwards,
        ),
        (
            invite_with("Max-Forwards: 70", "Max-Forwards: -1"),
            ScanError::BadMaxForwards,
        ),
        (
            invite_with("Content-Length: 5", "Content-Length: 6"),
            ScanError::ContentLengthExceedsBody {
                declared: 6,
                available: 5,
            },
        ),
        (
            invite_with("Content-Length: 5", "Content-Length: 5\nl: 3"),
            ScanError::ConflictingContentLength,
        ),
        (
            invite_with("Content-Length: 5", "Content-Length: five"),
            ScanError::BadContentLength,
        ),
        (
            invite_with(
                "Via: SIP/2.0/UDP 192.0.2.1:5060",
                "Via: SIP/2.0/UDP 192.0.2.1:5060;;",
            ),
            ScanError::BadValue(H::Via),
        ),
        (
            invite_with("Via: SIP/2.0/UDP", "Via: SIP/2.0 UDP"),
            ScanError::BadValue(H::Via),
        ),
        (
            invite_with("branch=z9hG4bK776;rport", "branch=z9hG4bK;rport"),
            ScanError::EmptyBranch,
        ),
        (
            invite_with(
                "To: Bob <sip:bob@example.com>",
                "To: Bob, Jr <sip:bob@example.com>",
            ),
            ScanError::BadValue(H::To),
        ),
        (
            invite_with("From: \"Alice\"", "From: \"Alice"),
            ScanError::BadValue(H::From),
        ),
        (
            invite_with("Contact: <sip:alice@192.0.2.1>", "Contact: sip:a@b?x=y"),
            ScanError::BadValue(H::Contact),
        ),
        (
            invite_with("Contact:", "Route: sip:p1.example.com;lr\nContact:"),
            ScanError::BadValue(H::Route),
        ),
        (
            invite_with("Contact:", "Record-Route: <sip:p1\nContact:"),
            ScanError::BadValue(H::RecordRoute),
        ),
        (
            invite_with("Contact:", "NoColon\nContact:"),
            ScanError::MalformedHeader,
        ),
        (
            invite_with("Contact:", "Bad Name: x\nContact:"),
            ScanError::MalformedHeader,
        ),
        (
            invite_with("Contact:", ": x\nContact:"),
            ScanError::MalformedHeader,
        ),
        (
            invite_with("Call-ID: a84b4c76e66710", "Call-ID: a84b\0c76e66710"),
            ScanError::Nul,
        ),
        (
            invite_with("Call-ID: a84b4c76e66710", "Call-ID: a84b\rc76e66710"),
            ScanError::BareCr,
        ),
        (
            b"INVITE sip:a@b SIP/2.0\r\nVia: x\n\r\n".to_vec(),
            ScanError::BareLf,
        ),
        (b"INVITE sip:a@b SIP/2.0\n\r\n".to_vec(), ScanError::BareLf),
        (
            b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n".to_vec(),
            ScanError::UnterminatedHeaders,
        ),
        (
            b"INVITE sip:a@b SIP/2.0\r\n folded-first: x\r\n\r\n".to_vec(),
            ScanError::MalformedHeader,
        ),
    ];
    for (input, expected) in cases {
        check(&input, &format!("error: {expected:?}"));
    }
}

#[test]
fn line_ending_errors_are_found_anywhere_in_the_header_section() {
    let base = crlf(INVITE);
    let body_at = base.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    // A NUL after a backslash can only be a quoted-pair: allowed (RFC 4475 intmeth).
    let quoted = invite_with("\"Alice\"", "\"A\\\0\"");
    assert_eq!(
        parse(&quoted).unwrap().from().unwrap().display_name,
        Some(&b"A\\\0"[..])
    );
    for at in 0..body_at {
        let mut with_nul = base.clone();
        with_nul.insert(at, 0);
        // Between CR and LF the NUL first makes the CR bare.
        let expected = if at > 0 && base[at - 1] == b'\r' {
            ScanError::BareCr
        } else {
            ScanError::Nul
        };
        assert_eq!(scan(&with_nul).err(), Some(expected), "NUL at {at}");
    }
}

#[test]
fn mandatory_completeness_decides_between_400_and_drop() {
    let bad_cseq = invite_with("CSeq: 314159 INVITE", "CSeq: x INVITE");
    let msg = scan(&bad_cseq).unwrap();
    assert_eq!(msg.validate(), Err(ScanError::BadCSeq));
    assert!(msg.is_mandatory_complete());
    assert_eq!(msg.call_id(), Some(&b"a84b4c76e66710"[..]));

    let no_from = invite_with("From: ", "X-From: ");
    let msg = scan(&no_from).unwrap();
    assert!(!msg.is_mandatory_complete());

    let bad_version = invite_with("SIP/2.0\n", "SIP/2.1\n");
    let msg = scan(&bad_version).unwrap();
    assert_eq!(msg.validate(), Err(ScanError::BadVersion));
    assert!(msg.is_mandatory_complete());
}

#[test]
fn folded_values_lose_outer_white_space_only() {
    let text = crlf(&INVITE.replacen(
        "Contact:",
        "Subject:  hello \t\n   world  \nX-Empty: \n\t\nX-Late:\n  late\nContact:",
        1,
    ));
    let msg = parse(&text).unwrap();
    assert_eq!(
        msg.header(HeaderName::Subject),
        Some(&b"hello \t\r\n   world"[..])
    );
    assert_eq!(msg.header_named(b"X-Empty"), Some(&b""[..]));
    assert_eq!(msg.header_named(b"X-Late"), Some(&b"late"[..]));
}

#[test]
fn generic_header_access() {
    let text = crlf(&INVITE.replacen("Contact:", "X-Custom:  a, b\nSubject: hi\nContact:", 1));
    let msg = parse(&text).unwrap();
    assert_eq!(msg.header_named(b"x-CUSTOM"), Some(&b"a, b"[..]));
    assert_eq!(msg.header_named(b"s"), Some(&b"hi"[..]));
    assert_eq!(msg.header(HeaderName::Subject), Some(&b"hi"[..]));
    let names: Vec<HeaderName> = msg.headers().map(|h| h.name).collect();
    assert_eq!(names.len(), 11);
    assert_eq!(names.iter().filter(|n| **n == HeaderName::Other).count(), 1);
    assert_eq!(msg.as_bytes(), &text[..]);
    assert_eq!(msg.method(), Some(Method::Invite));
    assert!(msg.is_request());
}

#[test]
fn many_headers_spill_and_are_capped() {
    let big = crlf(&INVITE.replacen("Contact:", &"X-A: 1\n".repeat(100), 1));
    let msg = parse(&big).unwrap();
    assert_eq!(msg.headers().count(), 108);
    assert_eq!(msg.content_type(), Some(&b"application/sdp"[..]));
    let too_many = crlf(&INVITE.replacen("Contact:", &"X-A: 1\n".repeat(MAX_HEADERS), 1));
    assert_eq!(scan(&too_many).err(), Some(ScanError::TooManyHeaders));
    let long = crlf(&INVITE.replacen(
        "Contact:",
        &format!("X-A: {}\nContact:", "a".repeat(MAX_HEADER_BYTES)),
        1,
    ));
    assert_eq!(scan(&long).err(), Some(ScanError::HeadersTooLarge));
}

/// Bounded pseudo-random mutations and truncations of valid messages: no input may panic, and
/// whatever scans must give a coherent index.
#[test]
fn mutated_and_truncated_input_never_panics() {
    let seeds = [
        crlf(INVITE),
        crlf(&INVITE.replace("Via:", "v:\n ").replace("To:", "t :")),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"\r\n \t:;,<>\"\\=@/0SIP2.v\0\xff";
    let mut parsed = 0;
    for seed in &seeds {
        for cut in 0..seed.len() {
            let _ = parse(&seed[..cut]);
        }
        for _ in 0..20_000 {
            let mut m = seed.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % m.len();
                let b = alphabet[(next() as usize) % alphabet.len()];
                match next() % 3 {
                    0 => m[at] = b,
                    1 => m.insert(at, b),
                    _ => {
                        m.remove(at);
                    }
                }
            }
            if let Ok(msg) = scan(&m) {
                let _ = describe(&msg);
                let _ = msg
                    .rewrite()
                    .insert_via(b"SIP/2.0/UDP p")
                    .set_top_via_received(b"1.2.3.4")
                    .set_top_via_rport(1)
                    .set_max_forwards(1)
                    .remove_top_route()
                    .insert_record_route(b"<sip:p;lr>")
                    .finish();
                let _ = msg
                    .rewrite()
                    .remove_top_via()
                    .set_request_uri(b"sip:x")
                    .finish();
                parsed += usize::from(msg.validate().is_ok());
            }
        }
    }
    assert!(
        parsed > 1000,
        "mutations should leave many messages valid, got {parsed}"
    );
}
