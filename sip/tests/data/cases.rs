//! The 49 torture messages of RFC 4475, one file each in this directory, transcribed from the
//! RFC with CRLF line ends (byte for byte what the RFC's archive of them holds), and one table
//! saying for each what the RFC expects of a receiver and what sipedge does with it.
//!
//! The file's directory is sipedge's verdict: `valid/` it relays (or, for an OPTIONS with
//! Max-Forwards 0, answers itself), `invalid/` it answers with a 400 or drops, `relayed/` the
//! RFC calls invalid only in a field a proxy does not interpret, so it is relayed as it is.
//!
//! Shared through `#[path]` by `sip/tests/rfc4475.rs` (what the scanner makes of each
//! message) and `tests/torture.rs` (what the running proxy does with it).

// Each test binary including the table reads only part of it.
#![allow(dead_code)]

use sipedge_sip::scan::{HeaderName as H, ScanError};

/// What the scanner makes of a message.
#[derive(Debug, Clone, Copy)]
pub enum Scan {
    /// Scans and validates: start line, Call-ID, CSeq, top Via host and branch, From user and
    /// tag, body length, as `rfc4475.rs` summarises them.
    Fields(&'static str),
    /// Scans, but [`sipedge_sip::scan::Message::validate`] refuses it.
    Defect(ScanError),
    /// Cannot even be indexed.
    Unscannable(ScanError),
}

/// What sipedge does with the message when a terminal sends it over UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// A request relayed to the upstream, with sipedge's Via on top; an INVITE becomes a call.
    Relayed,
    /// A response relayed to the terminal its second Via names, once sipedge's Via is on top
    /// (sent raw by a terminal, its top Via is not sipedge's and it is dropped as unroutable).
    ResponseRelayed,
    /// Answered by sipedge itself with this status, nothing relayed.
    Answered(u16),
    /// A stateless 400 whose reason names the defect, nothing relayed.
    BadRequest,
    /// Dropped and counted (no Via/From/To/Call-ID/CSeq to answer with, or a response).
    Dropped,
}

/// One torture message.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    /// `DIR/NAME`: the file `DIR/NAME.sip` next to this one.
    pub file: &'static str,
    /// That file's bytes.
    pub bytes: &'static [u8],
    /// Its section of RFC 4475.
    pub section: &'static str,
    /// What the RFC says a receiver (a proxy, where it says) should do.
    pub rfc: &'static str,
    /// What the scanner makes of it.
    pub scan: Scan,
    /// What sipedge does with it.
    pub edge: Edge,
}

impl Case {
    /// The message's name in the RFC.
    pub fn name(&self) -> &'static str {
        self.file.rsplit('/').next().unwrap_or(self.file)
    }
}

use Edge::{Answered, BadRequest, Dropped, Relayed, ResponseRelayed};
use Scan::{Defect, Fields, Unscannable};

pub const CASES: [Case; 49] = [
    // 3.1.1 Valid messages.
    Case {
        file: "valid/wsinv",
        bytes: include_bytes!("valid/wsinv.sip"),
        section: "3.1.1.1",
        rfc: "well-formed (folding, escapes in quotes, empty Subject, unknown headers); \
              proxies forward the unknown headers unchanged",
        scan: Fields(
            "INVITE | wsinv.ndaksdj@192.0.2.1 | 9 INVITE | 192.0.2.2 390skdjuw | jdrosen;98asjd8 | 150",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/intmeth",
        bytes: include_bytes!("valid/intmeth.sip"),
        section: "3.1.1.2",
        rfc: "well-formed (unusual method, URI, branch, quoted NUL); a proxy forwards it \
              normally, an endpoint answers 501",
        scan: Fields(
            "!interesting-Method0123456789_*+`.%indeed'~ | intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{ | \
             139122385 !interesting-Method0123456789_*+`.%indeed'~ | host1.example.com z9hG4bK-.!%66*_+`'~ | \
             mundane;_token~1'+`*%!-. | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/esc01",
        bytes: include_bytes!("valid/esc01.sip"),
        section: "3.1.1.3",
        rfc: "well-formed: % escapes in the Request-URI, From, To and Contact URIs",
        scan: Fields(
            "INVITE | esc01.239409asdfakjkn23onasd0-3234 | 234234 INVITE | host5.example.net z9hG4bKkdjuw | I%20have%20spaces;938 | 150",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/escnull",
        bytes: include_bytes!("valid/escnull.sip"),
        section: "3.1.1.4",
        rfc: "well-formed: escaped NULs (%00) in URIs",
        scan: Fields(
            "REGISTER | escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd | 14398234 REGISTER | host5.example.com z9hG4bKkdjuw | null-%00-null;839923423 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/esc02",
        bytes: include_bytes!("valid/esc02.sip"),
        section: "3.1.1.5",
        rfc: "well-formed: % is no escape in a method or header name; RE%47IST%45R is an \
              unknown method, C%6Fntact an unknown header (two Contacts, not three)",
        scan: Fields(
            "RE%47IST%45R | esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf | 29344 RE%47IST%45R | host.example.com z9hG4bK209%fzsnel234 | resource;f232jadfj23 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/lwsdisp",
        bytes: include_bytes!("valid/lwsdisp.sip"),
        section: "3.1.1.6",
        rfc: "well-formed: no LWS between display name and <",
        scan: Fields(
            "OPTIONS | lwsdisp.1234abcd@funky.example.com | 60 OPTIONS | funky.example.com z9hG4bKkdjuw | caller;323 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/longreq",
        bytes: include_bytes!("valid/longreq.sip"),
        section: "3.1.1.7",
        rfc: "well-formed: very long values and 34 Vias must not break a parser",
        scan: Fields(
            "INVITE | longreq.onereallyreallyreallyreallyreallyreallyreallyreallyreallyreally\
             reallyreallyreallyreallyreallyreallyreallyreallyreallyreallylongcallid | 3882340 INVITE | sip33.example.com - | \
             amazinglylongcallernameamazinglylongcallernameamazinglylongcallername\
             amazinglylongcallernameamazinglylongcallername;12982982982982982982982982982982982982982982982982982982982982\
             982982982982982982982982982982982982982982982982982982982982982982982982982982982982982982424 | 150",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/dblreq",
        bytes: include_bytes!("valid/dblreq.sip"),
        section: "3.1.1.8",
        rfc: "over UDP the REGISTER is processed and the INVITE after its Content-Length \
              discarded",
        scan: Fields(
            "REGISTER | dblreq.0ha0isndaksdj99sdfafnl3lk233412 | 8 REGISTER | 192.0.2.125 z9hG4bKkdjuw23492 | j.user;43251j3j324 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/semiuri",
        bytes: include_bytes!("valid/semiuri.sip"),
        section: "3.1.1.9",
        rfc: "well-formed: the Request-URI's user part is user;par=u@example.net",
        scan: Fields(
            "OPTIONS | semiuri.0ha0isndaksdj | 8 OPTIONS | 192.0.2.1 z9hG4bKkdjuw | caller;33242 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/transports",
        bytes: include_bytes!("valid/transports.sip"),
        section: "3.1.1.10",
        rfc: "well-formed: Vias over UDP, SCTP, TLS, an unknown transport and TCP",
        scan: Fields(
            "OPTIONS | transports.kijh4akdnaqjkwendsasfdj | 60 OPTIONS | t1.example.com z9hG4bKkdjuw | caller;323 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/mpart01",
        bytes: include_bytes!("valid/mpart01.sip"),
        section: "3.1.1.11",
        rfc: "well-formed: a multipart body with binary parts, relayed octet for octet",
        scan: Fields(
            "MESSAGE | 3d9485ad0c49859b@Zmx1ZmZ5LW1hYy0xNi5sb2NhbA.. | 1 MESSAGE | 127.0.0.1 z9hG4bK-d87543-4dade06d0bdb11ee-1--d87543- | fluffy;2fb0dcc9 | 553",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/unreason",
        bytes: include_bytes!("valid/unreason.sip"),
        section: "3.1.1.12",
        rfc: "well-formed response: a reason phrase of unusual and UTF-8 characters, not \
              interpreted",
        scan: Fields(
            "200 | unreason.1234ksdfak3j2erwedfsASdf | 35 INVITE | 192.0.2.198 z9hG4bK1324923 | user;11141343 | 154",
        ),
        edge: ResponseRelayed,
    },
    Case {
        file: "valid/noreason",
        bytes: include_bytes!("valid/noreason.sip"),
        section: "3.1.1.13",
        rfc: "well-formed response with an empty reason phrase",
        scan: Fields(
            "100 | noreason.asndj203insdf99223ndf | 35 INVITE | 192.0.2.105 z9hG4bK2398ndaoe | user;39ansfi3 | 0",
        ),
        edge: ResponseRelayed,
    },
    // 3.1.2 Invalid messages.
    Case {
        file: "invalid/badinv01",
        bytes: include_bytes!("invalid/badinv01.sip"),
        section: "3.1.2.1",
        rfc: "400: empty Via and Contact parameters (;;,;,,)",
        scan: Defect(ScanError::BadValue(H::Via)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/clerr",
        bytes: include_bytes!("invalid/clerr.sip"),
        section: "3.1.2.2",
        rfc: "Content-Length beyond the body: 400 over UDP; on a stream, wait for more and \
              close the connection",
        scan: Defect(ScanError::ContentLengthExceedsBody {
            declared: 9999,
            available: 154,
        }),
        edge: BadRequest,
    },
    Case {
        file: "invalid/ncl",
        bytes: include_bytes!("invalid/ncl.sip"),
        section: "3.1.2.3",
        rfc: "negative Content-Length: an error; over UDP the rest of the datagram is \
              discarded, over TCP the connection closed",
        scan: Defect(ScanError::BadContentLength),
        edge: BadRequest,
    },
    Case {
        file: "invalid/scalar02",
        bytes: include_bytes!("invalid/scalar02.sip"),
        section: "3.1.2.4",
        rfc: "400 for the CSeq beyond 2^32 (Max-Forwards and Expires alone could be \
              tolerated)",
        scan: Defect(ScanError::BadCSeq),
        edge: BadRequest,
    },
    Case {
        file: "invalid/scalarlg",
        bytes: include_bytes!("invalid/scalarlg.sip"),
        section: "3.1.2.5",
        rfc: "a response with overlarge CSeq and Retry-After: discard it",
        scan: Defect(ScanError::BadCSeq),
        edge: Dropped,
    },
    Case {
        file: "invalid/quotbal",
        bytes: include_bytes!("invalid/quotbal.sip"),
        section: "3.1.2.6",
        rfc: "unterminated quoted display name: 400 (or infer the closing quote)",
        scan: Defect(ScanError::BadValue(H::To)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/ltgtruri",
        bytes: include_bytes!("invalid/ltgtruri.sip"),
        section: "3.1.2.7",
        rfc: "<> around the Request-URI: 400 (or ignore them, never forwarding them)",
        scan: Defect(ScanError::BadRequestUri),
        edge: BadRequest,
    },
    Case {
        file: "invalid/lwsruri",
        bytes: include_bytes!("invalid/lwsruri.sip"),
        section: "3.1.2.8",
        rfc: "LWS inside the Request-URI: 400",
        scan: Defect(ScanError::BadStartLine),
        edge: BadRequest,
    },
    Case {
        file: "invalid/lwsstart",
        bytes: include_bytes!("invalid/lwsstart.sip"),
        section: "3.1.2.9",
        rfc: "several SPs between request-line elements: 400 (or be liberal)",
        scan: Defect(ScanError::BadStartLine),
        edge: BadRequest,
    },
    Case {
        file: "invalid/trws",
        bytes: include_bytes!("invalid/trws.sip"),
        section: "3.1.2.10",
        rfc: "SPs at the end of the request line: 400 (or be liberal)",
        scan: Defect(ScanError::BadStartLine),
        edge: BadRequest,
    },
    Case {
        file: "invalid/escruri",
        bytes: include_bytes!("invalid/escruri.sip"),
        section: "3.1.2.11",
        rfc: "escaped headers in the Request-URI: 400 (or ignore them; a proxy must not \
              forward them)",
        scan: Defect(ScanError::BadRequestUri),
        edge: BadRequest,
    },
    Case {
        file: "relayed/baddate",
        bytes: include_bytes!("relayed/baddate.sip"),
        section: "3.1.2.12",
        rfc: "Date in EST, not GMT: invalid, but an element that does not use the Date may \
              ignore it; a proxy forwards the request unchanged",
        scan: Fields(
            "INVITE | baddate.239423mnsadf3j23lj42--sedfnm234 | 1392934 INVITE | host.example.com z9hG4bKkdjuw | caller;2234923 | 150",
        ),
        edge: Relayed,
    },
    Case {
        file: "invalid/regbadct",
        bytes: include_bytes!("invalid/regbadct.sip"),
        section: "3.1.2.13",
        rfc: "a Contact URI with headers not enclosed in <>: 400 (a liberal element could \
              infer the brackets here)",
        scan: Defect(ScanError::BadValue(H::Contact)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/badaspec",
        bytes: include_bytes!("invalid/badaspec.sip"),
        section: "3.1.2.14",
        rfc: "spaces inside <> in the To addr-spec: 400 (or be liberal)",
        scan: Defect(ScanError::BadValue(H::To)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/baddn",
        bytes: include_bytes!("invalid/baddn.sip"),
        section: "3.1.2.15",
        rfc: "unquoted display names with commas: 400",
        scan: Defect(ScanError::BadValue(H::From)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/badvers",
        bytes: include_bytes!("invalid/badvers.sip"),
        section: "3.1.2.16",
        rfc: "SIP/7.0: 505 Version Not Supported",
        scan: Defect(ScanError::BadVersion),
        edge: Answered(505),
    },
    Case {
        file: "invalid/mismatch01",
        bytes: include_bytes!("invalid/mismatch01.sip"),
        section: "3.1.2.17",
        rfc: "CSeq method differs from the request's: 400",
        scan: Defect(ScanError::CSeqMethodMismatch),
        edge: BadRequest,
    },
    Case {
        file: "invalid/mismatch02",
        bytes: include_bytes!("invalid/mismatch02.sip"),
        section: "3.1.2.18",
        rfc: "unknown method and a CSeq naming INVITE: 501 or 400",
        scan: Defect(ScanError::CSeqMethodMismatch),
        edge: BadRequest,
    },
    Case {
        file: "invalid/bigcode",
        bytes: include_bytes!("invalid/bigcode.sip"),
        section: "3.1.2.19",
        rfc: "a response code of 4294967301: drop it",
        scan: Unscannable(ScanError::BadStatusCode),
        edge: Dropped,
    },
    // 3.2 Transaction layer semantics.
    Case {
        file: "invalid/badbranch",
        bytes: include_bytes!("invalid/badbranch.sip"),
        section: "3.2.1",
        rfc: "branch=z9hG4bK with no transaction id: must not break a parser; reject with a \
              400 (preferably statelessly) or fall back to RFC 2543 matching",
        scan: Defect(ScanError::EmptyBranch),
        edge: BadRequest,
    },
    // 3.3 Application-layer semantics.
    Case {
        file: "invalid/insuf",
        bytes: include_bytes!("invalid/insuf.sip"),
        section: "3.3.1",
        rfc: "no Call-ID, From or To: 400",
        scan: Defect(ScanError::MissingHeader(H::From)),
        edge: Dropped,
    },
    Case {
        file: "valid/unkscm",
        bytes: include_bytes!("valid/unkscm.sip"),
        section: "3.3.2",
        rfc: "a well-formed request with an unknown Request-URI scheme; an element that \
              routes on it answers 416",
        scan: Fields(
            "OPTIONS | unkscm.nasdfasser0q239nwsdfasdkl34 | 3923423 OPTIONS | host9.example.com z9hG4bKkdjuw39234 | caller;384 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/novelsc",
        bytes: include_bytes!("valid/novelsc.sip"),
        section: "3.3.3",
        rfc: "a Request-URI of a registered but atypical scheme (soap.beep): 416 or 404 \
              from an element that routes on it",
        scan: Fields(
            "OPTIONS | novelsc.asdfasser0q239nwsdfasdkl34 | 3923423 OPTIONS | host9.example.com z9hG4bKkdjuw39234 | caller;384 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/unksm2",
        bytes: include_bytes!("valid/unksm2.sip"),
        section: "3.3.4",
        rfc: "isbn:, http: and name: URIs in To, From and Contact: syntactically valid, \
              proxies treat it as any other request (a registrar answers 400)",
        scan: Fields(
            "REGISTER | unksm2.daksdj@hyphenated-host.example.com | 234902 REGISTER | 192.0.2.21 z9hG4bKkdjuw | -;3234233 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/bext01",
        bytes: include_bytes!("valid/bext01.sip"),
        section: "3.3.5",
        rfc: "unknown Proxy-Require and Require option tags: a proxy answers 420 listing the \
              Proxy-Require ones, the UAS 420 listing the Require ones",
        scan: Fields(
            "OPTIONS | bext01.0ha0isndaksdj | 8 OPTIONS | fold-and-staple.example.com z9hG4bKkdjuw | caller;242etr | 0",
        ),
        edge: Answered(420),
    },
    Case {
        file: "valid/invut",
        bytes: include_bytes!("valid/invut.sip"),
        section: "3.3.6",
        rfc: "an INVITE with a body of unknown type: the UAS answers 415",
        scan: Fields(
            "INVITE | invut.0ha0isndaksdjadsfij34n23d | 235448 INVITE | somehost.example.com z9hG4bKkdjuw | caller;8392034 | 40",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/regaut01",
        bytes: include_bytes!("valid/regaut01.sip"),
        section: "3.3.7",
        rfc: "an Authorization of unknown scheme: the registrar answers 401",
        scan: Fields(
            "REGISTER | regaut01.0ha0isndaksdj | 9338 REGISTER | 192.0.2.253 z9hG4bKkdjuw | j.user;87321hj23128 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "invalid/multi01",
        bytes: include_bytes!("invalid/multi01.sip"),
        section: "3.3.8",
        rfc: "two Call-IDs, CSeqs, Froms and Tos: 400",
        scan: Defect(ScanError::DuplicateHeader(H::From)),
        edge: BadRequest,
    },
    Case {
        file: "invalid/mcl01",
        bytes: include_bytes!("invalid/mcl01.sip"),
        section: "3.3.9",
        rfc: "two different Content-Lengths: 400 over UDP; a stream cannot be framed, so \
              its connection is closed",
        scan: Defect(ScanError::ConflictingContentLength),
        edge: BadRequest,
    },
    Case {
        file: "valid/bcast",
        bytes: include_bytes!("valid/bcast.sip"),
        section: "3.3.10",
        rfc: "a 200 whose second Via's sent-by is 255.255.255.255: well-formed; the element \
              whose Via is on top must not send it to the broadcast address",
        scan: Fields(
            "200 | bcast.0384840201234ksdfak3j2erwedfsASdf | 35 INVITE | 192.0.2.198 z9hG4bK1324923 | user;11141343 | 154",
        ),
        edge: ResponseRelayed,
    },
    Case {
        file: "valid/zeromf",
        bytes: include_bytes!("valid/zeromf.sip"),
        section: "3.3.11",
        rfc: "Max-Forwards 0: a proxy does not forward it (483; RFC 3261 §16.3 lets it answer \
              an OPTIONS itself)",
        scan: Fields(
            "OPTIONS | zeromf.jfasdlfnm2o2l43r5u0asdfas | 39234321 OPTIONS | host1.example.com z9hG4bKkdjuw2349i | caller;3ghsd41 | 0",
        ),
        edge: Answered(200),
    },
    Case {
        file: "valid/cparam01",
        bytes: include_bytes!("valid/cparam01.sip"),
        section: "3.3.12",
        rfc: "a REGISTER whose Contact has a header parameter (not a URI parameter): valid",
        scan: Fields(
            "REGISTER | cparam01.70710@saturn.example.com | 2 REGISTER | saturn.example.com z9hG4bKkdjuw | watson;DkfVgjkrtMwaerKKpe | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/cparam02",
        bytes: include_bytes!("valid/cparam02.sip"),
        section: "3.3.13",
        rfc: "a REGISTER whose Contact URI has an unknown URI parameter: valid",
        scan: Fields(
            "REGISTER | cparam02.70710@saturn.example.com | 3 REGISTER | saturn.example.com z9hG4bKkdjuw | watson;838293 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/regescrt",
        bytes: include_bytes!("valid/regescrt.sip"),
        section: "3.3.14",
        rfc: "a REGISTER whose Contact URI carries an escaped Route header: valid (the \
              registrar stores it)",
        scan: Fields(
            "REGISTER | regescrt.k345asrl3fdbv@192.0.2.1 | 14398234 REGISTER | host5.example.com z9hG4bKkdjuw | user;8 | 0",
        ),
        edge: Relayed,
    },
    Case {
        file: "valid/sdp01",
        bytes: include_bytes!("valid/sdp01.sip"),
        section: "3.3.15",
        rfc: "an INVITE accepting only an unknown body type: the UAS answers 406",
        scan: Fields(
            "INVITE | sdp01.ndaksdj9342dasdd | 8 INVITE | 192.0.2.15 z9hG4bKkdjuw | caller;234 | 150",
        ),
        edge: Relayed,
    },
    // 3.4 Backward compatibility.
    Case {
        file: "valid/inv2543",
        bytes: include_bytes!("valid/inv2543.sip"),
        section: "3.4.1",
        rfc: "RFC 2543 syntax (no branch, From tag, Max-Forwards or Content-Length): accept \
              it, the body being the rest of the datagram",
        scan: Fields(
            "INVITE | inv2543.1717@ift.client.example.com | 56 INVITE | iftgw.example.com - | +13035551111;- | 105",
        ),
        edge: Relayed,
    },
];
