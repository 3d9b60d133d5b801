//! The RFC 4475 torture messages through the scanner: every one of the 49 in the table of
//! `tests/data/cases.rs` gives the fields or the error the table names; a valid one stays
//! valid, with the same call fields, once rewritten the way the proxy relays it; a refused
//! request can be answered exactly when the table says sipedge answers it.

#![allow(clippy::unwrap_used)] // tests state expectations with unwrap

#[path = "data/cases.rs"]
mod cases;

use std::collections::BTreeSet;
use std::path::PathBuf;

use cases::{CASES, Case, Edge, Scan};
use sipedge_sip::scan::{HeaderName as H, Message, ScanError, Via, parse, scan};

fn case(name: &str) -> &'static Case {
    CASES.iter().find(|c| c.name() == name).unwrap()
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

/// A valid message rewritten as the proxy relays a request (its own Via on top, `received`
/// and `rport` on the sender's, Max-Forwards decremented, a Record-Route) still parses, with
/// the same Call-ID, CSeq, From, To and body.
fn survives_relaying(case: &Case, msg: &Message<'_>) {
    let name = case.name();
    let out = msg
        .rewrite()
        .insert_via(b"SIP/2.0/UDP 127.0.0.1:14500;branch=z9hG4bKedge")
        .set_top_via_received(b"127.0.0.2")
        .set_top_via_rport(40000)
        .set_max_forwards(69)
        .insert_record_route(b"<sip:token@127.0.0.1:14500;lr>")
        .finish();
    let relayed = parse(&out).unwrap_or_else(|e| panic!("{name}: rewrite broke it: {e}"));
    assert_eq!(relayed.call_id(), msg.call_id(), "{name}");
    assert_eq!(relayed.cseq(), msg.cseq(), "{name}");
    assert_eq!(relayed.from(), msg.from(), "{name}");
    assert_eq!(relayed.to(), msg.to(), "{name}");
    assert_eq!(relayed.body(), msg.body(), "{name}");
    assert_eq!(relayed.max_forwards(), Some(69), "{name}");
    assert_eq!(relayed.vias().count(), msg.vias().count() + 1, "{name}");
    assert_eq!(
        relayed.top_via().map(|v| v.host),
        Some(&b"127.0.0.1"[..]),
        "{name}"
    );
    let sender = Via::parse(relayed.vias().nth(1).unwrap()).unwrap();
    assert_eq!(sender.received, Some(&b"127.0.0.2"[..]), "{name}");
    assert_eq!(
        sender.rport,
        sipedge_sip::scan::RPort::Port(40000),
        "{name}"
    );
    assert_eq!(
        relayed.record_routes().next().map(|r| r.uri),
        Some(&b"sip:token@127.0.0.1:14500;lr"[..]),
        "{name}"
    );
}

#[test]
fn the_table_holds_every_message_of_the_rfc_once() {
    let names: BTreeSet<&str> = CASES.iter().map(Case::name).collect();
    assert_eq!(names.len(), CASES.len(), "a message is in the table twice");
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut files = BTreeSet::new();
    for dir in ["valid", "invalid", "relayed"] {
        for entry in std::fs::read_dir(data.join(dir)).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            files.insert(format!("{dir}/{}", file.strip_suffix(".sip").unwrap()));
        }
    }
    let listed: BTreeSet<String> = CASES.iter().map(|c| c.file.to_owned()).collect();
    assert_eq!(files, listed, "files in tests/data and the table differ");
    // In the RFC's order, each with its verdict.
    let section =
        |c: &Case| -> Vec<u32> { c.section.split('.').map(|n| n.parse().unwrap()).collect() };
    for pair in CASES.windows(2) {
        assert!(
            section(&pair[0]) < section(&pair[1]),
            "{} before {}",
            pair[0].section,
            pair[1].section
        );
    }
    for c in &CASES {
        assert!(!c.rfc.is_empty(), "{}: no verdict", c.file);
        // Every line ends with CRLF: a bare LF is a transcription slip, not a torture.
        let text = c.bytes;
        let bare_lf = text
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'\n' && (i == 0 || text[i - 1] != b'\r'));
        // mpart01's binary part holds LF octets of its own.
        assert!(!bare_lf || c.name() == "mpart01", "{}: bare LF", c.file);
    }
}

#[test]
fn every_message_scans_as_the_table_says() {
    for c in &CASES {
        let name = c.file;
        let (dir, _) = name.split_once('/').unwrap();
        match c.scan {
            Scan::Fields(fields) => {
                let msg = parse(c.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(summary(&msg), fields, "{name}");
                assert_ne!(dir, "invalid", "{name}: valid, so not in invalid/");
                assert!(
                    matches!(
                        c.edge,
                        Edge::Relayed | Edge::ResponseRelayed | Edge::Answered(_)
                    ),
                    "{name}: {:?} for a valid message",
                    c.edge
                );
                survives_relaying(c, &msg);
            }
            Scan::Defect(e) => {
                assert_eq!(dir, "invalid", "{name}");
                let msg = scan(c.bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(msg.validate(), Err(e), "{name}");
                assert_eq!(parse(c.bytes).err(), Some(e), "{name}");
                // An answer (400, or 505 for another SIP version) needs a request line
                // and the Via, From, To, Call-ID and CSeq it copies; without them the
                // message is dropped.
                let answerable = msg.is_request() && msg.is_mandatory_complete();
                let expected = if !answerable {
                    Edge::Dropped
                } else if e == ScanError::BadVersion {
                    Edge::Answered(505)
                } else {
                    Edge::BadRequest
                };
                assert_eq!(c.edge, expected, "{name}");
            }
            Scan::Unscannable(e) => {
                assert_eq!(dir, "invalid", "{name}");
                assert_eq!(scan(c.bytes).err(), Some(e), "{name}");
                assert_eq!(c.edge, Edge::Dropped, "{name}");
            }
        }
    }
}

#[test]
fn the_details_each_message_is_about() {
    let msg = parse(case("wsinv").bytes).unwrap();
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
        msg.from().unwrap().display_name,
        Some(&b"J Rosenberg \\\\\\\""[..])
    );
    let contact = msg.contacts().next().unwrap();
    assert_eq!(contact.param(b"q"), Some(&b"0.33"[..]));
    assert_eq!(contact.param(b"secondparam"), Some(&b""[..]));

    let msg = parse(case("intmeth").bytes).unwrap();
    assert_eq!(
        msg.to().unwrap().display_name,
        Some(&b"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f"[..])
    );
    assert_eq!(
        msg.to().unwrap().user(),
        Some(&b"1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"[..])
    );

    let msg = parse(case("esc01").bytes).unwrap();
    let uri = sipedge_sip::scan::Uri::parse(msg.request_uri().unwrap()).unwrap();
    assert_eq!(uri.user, Some(&b"sips%3Auser%40example.com"[..]));
    assert_eq!(uri.host, b"example.net");

    let msg = parse(case("esc02").bytes).unwrap();
    assert_eq!(msg.contacts().count(), 2, "C%6Fntact is not Contact");
    assert_eq!(msg.to().unwrap().display_name, Some(&b"%Z%45"[..]));

    let msg = parse(case("longreq").bytes).unwrap();
    assert_eq!(msg.vias().count(), 34);
    let last = Via::parse(msg.vias().last().unwrap()).unwrap();
    assert_eq!(
        last.branch.map(<[u8]>::len),
        Some("very".len() + 50 * "long".len() + "branchvalue".len())
    );
    assert_eq!(
        msg.to().unwrap().display_name.map(<[u8]>::len),
        Some("I have a user name of  proportion".len() + 10 * "extreme".len())
    );

    let dblreq = case("dblreq").bytes;
    let msg = parse(dblreq).unwrap();
    assert!(
        msg.as_bytes().len() < dblreq.len(),
        "the INVITE is not part of the REGISTER"
    );
    assert!(msg.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));

    let msg = parse(case("semiuri").bytes).unwrap();
    let uri = sipedge_sip::scan::Uri::parse(msg.request_uri().unwrap()).unwrap();
    assert_eq!(uri.user, Some(&b"user;par=u%40example.net"[..]));
    assert_eq!(uri.host, b"example.com");

    let msg = parse(case("transports").bytes).unwrap();
    let transports: Vec<String> = msg
        .vias()
        .map(|v| s(Via::parse(v).unwrap().transport_raw))
        .collect();
    assert_eq!(transports, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);

    let msg = parse(case("mpart01").bytes).unwrap();
    assert_eq!(msg.content_length(), Some(553));
    assert!(msg.body().contains(&0) && msg.body().contains(&0xff));
    assert!(msg.body().ends_with(b"--7a9cbec02ceef655--\r\n"));

    let msg = parse(case("noreason").bytes).unwrap();
    assert_eq!(msg.reason(), Some(&b""[..]));
    let msg = parse(case("unreason").bytes).unwrap();
    assert!(
        msg.reason()
            .unwrap()
            .starts_with(b"= 2**3 * 5**2 \xd0\xbd\xd0\xbe")
    );

    let msg = parse(case("unkscm").bytes).unwrap();
    assert_eq!(
        msg.request_uri(),
        Some(&b"nobodyKnowsThisScheme:totallyopaquecontent"[..])
    );
    let msg = parse(case("novelsc").bytes).unwrap();
    assert_eq!(
        msg.request_uri(),
        Some(&b"soap.beep://192.0.2.103:3002"[..])
    );

    let msg = parse(case("unksm2").bytes).unwrap();
    assert_eq!(msg.to().unwrap().uri, b"isbn:2983792873");
    assert_eq!(msg.contacts().next().unwrap().uri, b"name:John_Smith");

    let msg = parse(case("bcast").bytes).unwrap();
    let second = Via::parse(msg.vias().nth(1).unwrap()).unwrap();
    assert_eq!(second.host, b"255.255.255.255");

    // cparam01's unknownparam belongs to the Contact, cparam02's to its URI.
    let msg = parse(case("cparam01").bytes).unwrap();
    let contact = msg.contacts().next().unwrap();
    assert_eq!(contact.param(b"unknownparam"), Some(&b""[..]));
    assert_eq!(contact.sip_uri().unwrap().params, b"");
    let msg = parse(case("cparam02").bytes).unwrap();
    let contact = msg.contacts().next().unwrap();
    assert_eq!(contact.param(b"unknownparam"), None);
    assert_eq!(
        contact.sip_uri().unwrap().param(b"unknownparam"),
        Some(&b""[..])
    );

    let msg = parse(case("regescrt").bytes).unwrap();
    let uri = msg.contacts().next().unwrap().sip_uri().unwrap();
    assert_eq!(uri.headers, Some(&b"Route=%3Csip:sip.example.com%3E"[..]));

    let msg = parse(case("zeromf").bytes).unwrap();
    assert_eq!(msg.max_forwards(), Some(0));

    let msg = parse(case("inv2543").bytes).unwrap();
    assert_eq!(msg.max_forwards(), None);
    assert_eq!(msg.content_length(), None);
    assert_eq!(msg.top_via().unwrap().branch, None);
    assert!(msg.body().starts_with(b"v=0\r\n"));
    assert!(msg.body().ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
}
