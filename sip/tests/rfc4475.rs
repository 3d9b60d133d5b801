//! RFC 4475 torture messages, transcribed into `tests/data/` with CRLF line ends:
//! `valid/` must parse with the fields below, `invalid/` must be refused with the given error,
//! `relayed/` are invalid only in a field a stateless proxy does not interpret (Date) and are
//! relayed as they are. Every message that scans must keep its body through a proxy rewrite.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

use std::path::PathBuf;

use sipedge_sip::scan::{HeaderName as H, Message, ScanError, parse, scan};

fn load(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(format!("{name}.sip"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Start line, Call-ID, CSeq, top Via host and branch, From user and tag, body length.
fn summary(msg: &Message<'_>) -> String {
    let start = match (msg.method_bytes(), msg.status()) {
        (Some(m), _) => s(m),
        (_, Some(code)) => code.to_string(),
        _ => String::new(),
    };
    let cseq = msg
        .cseq()
        .map(|c| format!("{} {}", c.number, s(c.method_raw)))
        .unwrap_or_default();
    let via = msg
        .top_via()
        .map(|v| format!("{} {}", s(v.host), s(v.branch.unwrap_or(b"-"))))
        .unwrap_or_default();
    let from = msg
        .from()
        .map(|f| {
            format!(
                "{};{}",
                s(f.user().unwrap_or(b"-")),
                s(f.tag.unwrap_or(b"-"))
            )
        })
        .unwrap_or_default();
    format!(
        "{start} | {} | {cseq} | {via} | {from} | {}",
        s(msg.call_id().unwrap_or_default()),
        msg.body().len()
    )
}

fn check(name: &str, expected: Result<&str, ScanError>) {
    let bytes = load(name);
    let got = parse(&bytes).map(|m| summary(&m));
    assert_eq!(got, expected.map(str::to_owned), "{name}");
    if let Ok(msg) = scan(&bytes) {
        let out = msg
            .rewrite()
            .insert_via(b"SIP/2.0/UDP 127.0.0.1:14500;branch=z9hG4bKedge")
            .set_top_via_received(b"127.0.0.2")
            .set_max_forwards(69)
            .finish();
        assert!(out.ends_with(msg.body()), "{name}: body changed by rewrite");
        // A valid message stays valid, with the same call fields, once relayed.
        if msg.validate().is_ok() {
            let relayed = parse(&out).unwrap_or_else(|e| panic!("{name}: rewrite broke it: {e}"));
            assert_eq!(relayed.call_id(), msg.call_id(), "{name}");
            assert_eq!(relayed.cseq(), msg.cseq(), "{name}");
            assert_eq!(relayed.body(), msg.body(), "{name}");
            assert_eq!(relayed.max_forwards(), Some(69), "{name}");
            assert_eq!(
                relayed.top_via().map(|v| v.host),
                Some(&b"127.0.0.1"[..]),
                "{name}"
            );
            let original = relayed
                .vias()
                .nth(1)
                .map(|v| sipedge_sip::scan::Via::parse(v).map(|v| v.received));
            assert_eq!(original, Some(Ok(Some(&b"127.0.0.2"[..]))), "{name}");
        }
    }
}

#[test]
fn valid_messages_parse() {
    let cases = [
        (
            "valid/wsinv",
            "INVITE | wsinv.ndaksdj@192.0.2.1 | 9 INVITE | 192.0.2.2 390skdjuw | jdrosen;98asjd8 | 150",
        ),
        (
            "valid/intmeth",
            "!interesting-Method0123456789_*+`.%indeed'~ | intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{ | \
             139122385 !interesting-Method0123456789_*+`.%indeed'~ | host1.example.com z9hG4bK-.!%66*_+`'~ | \
             mundane;_token~1'+`*%!-. | 0",
        ),
        (
            "valid/esc01",
            "INVITE | esc01.239409asdfakjkn23onasd0-3234 | 234234 INVITE | host5.example.net z9hG4bKkdjuw | I%20have%20spaces;938 | 150",
        ),
        (
            "valid/escnull",
            "REGISTER | escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd | 14398234 REGISTER | host5.example.com z9hG4bKkdjuw | null-%00-null;839923423 | 0",
        ),
        (
            "valid/esc02",
            "RE%47IST%45R | esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf | 29344 RE%47IST%45R | host.example.com z9hG4bK209%fzsnel234 | resource;f232jadfj23 | 0",
        ),
        (
            "valid/lwsdisp",
            "OPTIONS | lwsdisp.1234abcd@funky.example.com | 60 OPTIONS | funky.example.com z9hG4bKkdjuw | caller;323 | 0",
        ),
        (
            "valid/dblreq",
            "REGISTER | dblreq.0ha0isndaksdj99sdfafnl3lk233412 | 8 REGISTER | 192.0.2.125 z9hG4bKkdjuw23492 | j.user;43251j3j324 | 0",
        ),
        (
            "valid/semiuri",
            "OPTIONS | semiuri.0ha0isndaksdj | 8 OPTIONS | 192.0.2.1 z9hG4bKkdjuw | caller;33242 | 0",
        ),
        (
            "valid/transports",
            "OPTIONS | transports.kijh4akdnaqjkwendsasfdj | 60 OPTIONS | t1.example.com z9hG4bKkdjuw | caller;323 | 0",
        ),
        (
            "valid/mpart01",
            "MESSAGE | 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.. | 1 MESSAGE | 127.0.0.1 z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543- | fluffy;2fb0dcc9 | 388",
        ),
        (
            "valid/unreason",
            "200 | unreason.1234ksdfak3j2erwedfsASdf | 35 INVITE | 192.0.2.198 z9hG4bK1324923 | user;11141343 | 154",
        ),
        (
            "valid/noreason",
            "100 | noreason.asndj203insdf99223ndf | 35 INVITE | 192.0.2.105 z9hG4bK2398ndaoe | user;39ansfi3 | 0",
        ),
        (
            "valid/bext01",
            "OPTIONS | bext01.0ha0isndaksdj | 8 OPTIONS | fold-and-staple.example.com z9hG4bKkdjuw | caller;242etr | 0",
        ),
        (
            "valid/inv2543",
            "INVITE | inv2543.1717@ift.client.example.com | 56 INVITE | iftgw.example.com - | +13035551111;- | 105",
        ),
        (
            "valid/unksm2",
            "REGISTER | unksm2.daksdj@hyphenated-host.example.com | 234902 REGISTER | 192.0.2.21 z9hG4bKkdjuw | -;3234233 | 0",
        ),
        (
            "valid/zeromf",
            "OPTIONS | zeromf.jfasdlfnm2o2l43r5u0asdfas | 39234321 OPTIONS | host1.example.com z9hG4bKkdjuw2349i | caller;3ghsd41 | 0",
        ),
        (
            "valid/cparam01",
            "REGISTER | cparam01.70710@saturn.example.com | 2 REGISTER | saturn.example.com z9hG4bKkdjuw | watson;DkfVgjkrtMwaerKKpe | 0",
        ),
        (
            "relayed/baddate",
            "INVITE | baddate.239423mnsadf3j23lj42--sedfnm234 | 1392934 INVITE | host.example.com z9hG4bKkdjuw | caller;2234923 | 150",
        ),
    ];
    for (name, expected) in cases {
        check(name, Ok(expected));
    }
}

#[test]
fn rfc4475_details() {
    let wsinv = load("valid/wsinv");
    let msg = parse(&wsinv).unwrap();
    assert_eq!(msg.max_forwards(), Some(68));
    assert_eq!(msg.vias().count(), 3);
    assert_eq!(msg.header(H::Subject), Some(&b""[..]));
    assert_eq!(
        msg.header_named(b"newfangledheader"),
        Some(&b"newfangled value\r\n continued newfangled value"[..])
    );
    assert_eq!(
        msg.header_named(b"UnknownHeaderWithUnusualValue"),
        Some(&b";;,,;;,;"[..])
    );
    assert!(msg.routes().next().unwrap().is_loose_route());
    assert_eq!(msg.to().unwrap().tag, Some(&b"1918181833n"[..]));
    assert_eq!(
        msg.contacts().next().unwrap().param(b"q"),
        Some(&b"0.33"[..])
    );

    let intmeth = load("valid/intmeth");
    let msg = parse(&intmeth).unwrap();
    assert_eq!(
        msg.to().unwrap().display_name,
        Some(&b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"[..])
    );
    assert_eq!(
        msg.to().unwrap().user(),
        Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
    );

    let dblreq = load("valid/dblreq");
    let msg = parse(&dblreq).unwrap();
    assert!(
        msg.as_bytes().len() < dblreq.len(),
        "second request is not part of the first"
    );
    assert!(msg.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));

    let transports = load("valid/transports");
    let msg = parse(&transports).unwrap();
    let hosts: Vec<&[u8]> = msg
        .vias()
        .map(|v| sipedge_sip::scan::Via::parse(v).unwrap().host)
        .collect();
    assert_eq!(hosts.len(), 5);

    let mpart = load("valid/mpart01");
    let msg = parse(&mpart).unwrap();
    assert!(msg.body().contains(&0) && msg.body().contains(&0xff));
    assert!(msg.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
}

#[test]
fn invalid_messages_are_refused() {
    let cases = [
        ("invalid/badinv01", ScanError::BadValue(H::Via)),
        (
            "invalid/clerr",
            ScanError::ContentLengthExceedsBody {
                declared: 9999,
                available: 154,
            },
        ),
        ("invalid/ncl", ScanError::BadContentLength),
        ("invalid/scalar02", ScanError::BadCSeq),
        ("invalid/quotbal", ScanError::BadValue(H::To)),
        ("invalid/ltgtruri", ScanError::BadRequestUri),
        ("invalid/lwsruri", ScanError::BadStartLine),
        ("invalid/lwsstart", ScanError::BadStartLine),
        ("invalid/trws", ScanError::BadStartLine),
        ("invalid/escruri", ScanError::BadRequestUri),
        ("invalid/regbadct", ScanError::BadValue(H::Contact)),
        ("invalid/badaspec", ScanError::BadValue(H::To)),
        ("invalid/baddn", ScanError::BadValue(H::From)),
        ("invalid/badvers", ScanError::BadVersion),
        ("invalid/mismatch01", ScanError::CSeqMethodMismatch),
        ("invalid/mismatch02", ScanError::CSeqMethodMismatch),
        ("invalid/bigcode", ScanError::BadStatusCode),
        ("invalid/insuf", ScanError::MissingHeader(H::From)),
        ("invalid/multi01", ScanError::DuplicateHeader(H::From)),
        ("invalid/mcl01", ScanError::ConflictingContentLength),
        ("invalid/scalarlg", ScanError::BadCSeq),
    ];
    for (name, expected) in cases {
        check(name, Err(expected));
    }
}

#[test]
fn answerable_invalid_requests_keep_their_mandatory_fields() {
    // A 400 can be sent for these: the request line and Via/From/To/Call-ID/CSeq were found.
    for name in [
        "invalid/badinv01",
        "invalid/ncl",
        "invalid/scalar02",
        "invalid/ltgtruri",
        "invalid/badvers",
        "invalid/mismatch01",
        "invalid/mcl01",
    ] {
        let bytes = load(name);
        let msg = scan(&bytes).unwrap();
        assert!(msg.validate().is_err(), "{name}");
        assert!(msg.is_mandatory_complete(), "{name}");
        assert!(msg.is_request(), "{name}");
    }
    // insuf lacks From, To and Call-ID: nothing to answer with, so it is dropped.
    let bytes = load("invalid/insuf");
    assert!(!scan(&bytes).unwrap().is_mandatory_complete());
    // A response with a broken status line cannot be indexed at all.
    assert_eq!(
        scan(&load("invalid/bigcode")).err(),
        Some(ScanError::BadStatusCode)
    );
}
