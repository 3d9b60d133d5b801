//! Header names (long and compact forms) and request methods.

use std::fmt;

/// The header fields the relay path reads or rewrites; everything else is `Other`.
///
/// Names are matched case-insensitively, and the RFC 3261 §7.3.3 / IANA compact forms map to
/// the same variant (`v` is `Via`, `i` is `CallId`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    ContentLength,
    ContentType,
    Route,
    RecordRoute,
    Path,
    Supported,
    Require,
    Subject,
    ContentEncoding,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    Expires,
    Identity,
    /// Any header not listed above; its raw name is in [`crate::scan::Header::raw_name`].
    Other,
}

/// Number of variants, for per-name lookup tables.
pub(crate) const HEADER_NAME_COUNT: usize = HeaderName::Other as usize + 1;

impl HeaderName {
    /// Classifies a header name as written in a message (no surrounding whitespace).
    pub fn from_bytes(name: &[u8]) -> HeaderName {
        if let [c] = name {
            return match c.to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'k' => HeaderName::Supported,
                b's' => HeaderName::Subject,
                b'e' => HeaderName::ContentEncoding,
                b'o' => HeaderName::Event,
                b'u' => HeaderName::AllowEvents,
                b'r' => HeaderName::ReferTo,
                b'b' => HeaderName::ReferredBy,
                b'x' => HeaderName::SessionExpires,
                b'y' => HeaderName::Identity,
                _ => HeaderName::Other,
            };
        }
        // Dispatch on length and first letter so that a name is compared with at most two
        // candidates, written as senders usually write them so that an exact comparison
        // (one `memcmp`) settles most lines: this runs once per header line.
        let first = name.first().map_or(0, u8::to_ascii_lowercase);
        let candidates: &[(&[u8], HeaderName)] = match (name.len(), first) {
            (2, b't') => &[(b"To", HeaderName::To)],
            (3, b'v') => &[(b"Via", HeaderName::Via)],
            (4, b'f') => &[(b"From", HeaderName::From)],
            (4, b'c') => &[(b"CSeq", HeaderName::CSeq)],
            (4, b'p') => &[(b"Path", HeaderName::Path)],
            (5, b'r') => &[(b"Route", HeaderName::Route)],
            (5, b'e') => &[(b"Event", HeaderName::Event)],
            (7, b'c') => &[
                (b"Call-ID", HeaderName::CallId),
                (b"Contact", HeaderName::Contact),
            ],
            (7, b'r') => &[(b"Require", HeaderName::Require)],
            (7, b's') => &[(b"Subject", HeaderName::Subject)],
            (7, b'e') => &[(b"Expires", HeaderName::Expires)],
            (8, b'r') => &[(b"Refer-To", HeaderName::ReferTo)],
            (8, b'i') => &[(b"Identity", HeaderName::Identity)],
            (9, b's') => &[(b"Supported", HeaderName::Supported)],
            (11, b'r') => &[(b"Referred-By", HeaderName::ReferredBy)],
            (12, b'm') => &[(b"Max-Forwards", HeaderName::MaxForwards)],
            (12, b'c') => &[(b"Content-Type", HeaderName::ContentType)],
            (12, b'r') => &[(b"Record-Route", HeaderName::RecordRoute)],
            (12, b'a') => &[(b"Allow-Events", HeaderName::AllowEvents)],
            (14, b'c') => &[(b"Content-Length", HeaderName::ContentLength)],
            (15, b's') => &[(b"Session-Expires", HeaderName::SessionExpires)],
            (16, b'c') => &[(b"Content-Encoding", HeaderName::ContentEncoding)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(long, _)| name == *long || name.eq_ignore_ascii_case(long))
            .map_or(HeaderName::Other, |&(_, known)| known)
    }

    /// Finds the name at the start of a header line (the run of token bytes) and classifies
    /// it; returns its length and the name.
    ///
    /// Runs once per header line. Known long names are recognised by comparing the line's
    /// start with the few candidates for its first letter, which reads each name byte once
    /// instead of scanning for the name's end and then comparing; compact forms and extension
    /// names take the scan.
    pub(crate) fn at_line_start(line: &[u8]) -> (usize, HeaderName) {
        use HeaderName::*;
        let known = match line.first().map_or(0, u8::to_ascii_lowercase) {
            b'v' => name_at(line, b"Via", Via),
            b'f' => name_at(line, b"From", From),
            b't' => name_at(line, b"To", To),
            b'c' => name_at(line, b"CSeq", CSeq)
                .or_else(|| name_at(line, b"Call-ID", CallId))
                .or_else(|| name_at(line, b"Contact", Contact))
                .or_else(|| name_at(line, b"Content-Length", ContentLength))
                .or_else(|| name_at(line, b"Content-Type", ContentType))
                .or_else(|| name_at(line, b"Content-Encoding", ContentEncoding)),
            b'm' => name_at(line, b"Max-Forwards", MaxForwards),
            b'r' => name_at(line, b"Route", Route)
                .or_else(|| name_at(line, b"Record-Route", RecordRoute))
                .or_else(|| name_at(line, b"Require", Require))
                .or_else(|| name_at(line, b"Refer-To", ReferTo))
                .or_else(|| name_at(line, b"Referred-By", ReferredBy)),
            b'p' => name_at(line, b"Path", Path),
            b's' => name_at(line, b"Supported", Supported)
                .or_else(|| name_at(line, b"Subject", Subject))
                .or_else(|| name_at(line, b"Session-Expires", SessionExpires)),
            b'e' => name_at(line, b"Event", Event).or_else(|| name_at(line, b"Expires", Expires)),
            b'a' => name_at(line, b"Allow-Events", AllowEvents),
            b'i' => name_at(line, b"Identity", Identity),
            _ => None,
        };
        known.unwrap_or_else(|| {
            let len = line
                .iter()
                .position(|&b| !is_token_byte(b))
                .unwrap_or(line.len());
            (len, HeaderName::from_bytes(line.get(..len).unwrap_or(&[])))
        })
    }

    /// The canonical long form, as sipedge writes it in headers it inserts.
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::Path => "Path",
            HeaderName::Supported => "Supported",
            HeaderName::Require => "Require",
            HeaderName::Subject => "Subject",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Event => "Event",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::Expires => "Expires",
            HeaderName::Identity => "Identity",
            HeaderName::Other => "extension header",
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Some((N, known))` when `line` starts with the name `long` (any case) followed by a byte
/// that cannot continue a name. The length is a constant, so the exact-case comparison
/// compiles to a few word compares rather than a `memcmp` call.
#[inline]
fn name_at<const N: usize>(
    line: &[u8],
    long: &[u8; N],
    known: HeaderName,
) -> Option<(usize, HeaderName)> {
    let head = line.get(..N)?;
    let ends = !line.get(N).is_some_and(|&b| is_token_byte(b));
    (ends && (head == long || head.eq_ignore_ascii_case(long))).then_some((N, known))
}

/// A request method. Methods are case-sensitive (RFC 3261 §7.1): `invite` is an extension
/// method, not `INVITE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Register,
    Options,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    /// An extension method; the raw token is available from the message.
    Other,
}

impl Method {
    /// Classifies a method token.
    pub fn from_bytes(token: &[u8]) -> Method {
        match token {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            b"MESSAGE" => Method::Message,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

/// Byte classes the parsers test on every byte, as one table: a lookup instead of a chain of
/// comparisons in the innermost loops.
const TOKEN: u8 = 1;
const LWS: u8 = 2;
const PARAM_VALUE: u8 = 4;
const HOST: u8 = 8;

static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let token = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        let mut class = 0;
        if token {
            // RFC 3261 `token`: header names, methods, parameter names.
            class |= TOKEN | PARAM_VALUE;
        }
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            // Linear white space inside a value (CR and LF only occur in folds there).
            class |= LWS;
        }
        if matches!(c, b':' | b'[' | b']') {
            // `gen-value` also allows a host, IPv6 references included (`received`, `maddr`).
            class |= PARAM_VALUE;
        }
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_') {
            // Host names and IPv4 addresses (`_` tolerated, as senders use it).
            class |= HOST;
        }
        table[i] = class;
        i += 1;
    }
    table
};

#[inline]
fn class(b: u8) -> u8 {
    CLASS[usize::from(b)]
}

#[inline]
pub(crate) fn is_token_byte(b: u8) -> bool {
    class(b) & TOKEN != 0
}

#[inline]
pub(crate) fn is_lws_byte(b: u8) -> bool {
    class(b) & LWS != 0
}

#[inline]
pub(crate) fn is_param_value_byte(b: u8) -> bool {
    class(b) & PARAM_VALUE != 0
}

#[inline]
pub(crate) fn is_host_byte(b: u8) -> bool {
    class(b) & HOST != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, expected: HeaderName) {
        assert_eq!(HeaderName::from_bytes(name.as_bytes()), expected, "{name}");
    }

    #[test]
    fn names_long_compact_and_case() {
        let cases = [
            ("Via", HeaderName::Via),
            ("v", HeaderName::Via),
            ("V", HeaderName::Via),
            ("vIA", HeaderName::Via),
            ("i", HeaderName::CallId),
            ("CALL-ID", HeaderName::CallId),
            ("f", HeaderName::From),
            ("t", HeaderName::To),
            ("m", HeaderName::Contact),
            ("l", HeaderName::ContentLength),
            ("content-length", HeaderName::ContentLength),
            ("c", HeaderName::ContentType),
            ("k", HeaderName::Supported),
            ("s", HeaderName::Subject),
            ("e", HeaderName::ContentEncoding),
            ("o", HeaderName::Event),
            ("u", HeaderName::AllowEvents),
            ("r", HeaderName::ReferTo),
            ("b", HeaderName::ReferredBy),
            ("x", HeaderName::SessionExpires),
            ("y", HeaderName::Identity),
            ("IDENTITY", HeaderName::Identity),
            ("Session-Expires", HeaderName::SessionExpires),
            ("Content-Encoding", HeaderName::ContentEncoding),
            ("Allow-Events", HeaderName::AllowEvents),
            ("Referred-By", HeaderName::ReferredBy),
            ("Refer-To", HeaderName::ReferTo),
            ("Supported", HeaderName::Supported),
            ("Require", HeaderName::Require),
            ("Event", HeaderName::Event),
            ("Expires", HeaderName::Expires),
            ("Contact", HeaderName::Contact),
            ("Content-Type", HeaderName::ContentType),
            ("From", HeaderName::From),
            ("To", HeaderName::To),
            ("MaX-fOrWaRdS", HeaderName::MaxForwards),
            ("Record-Route", HeaderName::RecordRoute),
            ("route", HeaderName::Route),
            ("cseq", HeaderName::CSeq),
            ("Path", HeaderName::Path),
            ("a", HeaderName::Other),
            ("X-Via", HeaderName::Other),
            ("", HeaderName::Other),
            ("Content\rLength", HeaderName::Other),
            ("Call_ID", HeaderName::Other),
            ("C@ll-ID", HeaderName::Other),
        ];
        for (name, expected) in cases {
            check(name, expected);
        }
    }

    #[test]
    fn every_canonical_name_classifies_as_itself() {
        use HeaderName::*;
        let all = [
            Via,
            From,
            To,
            CallId,
            CSeq,
            MaxForwards,
            Contact,
            ContentLength,
            ContentType,
            Route,
            RecordRoute,
            Path,
            Supported,
            Require,
            Subject,
            ContentEncoding,
            Event,
            AllowEvents,
            ReferTo,
            ReferredBy,
            SessionExpires,
            Expires,
            Identity,
        ];
        assert_eq!(all.len() + 1, HEADER_NAME_COUNT);
        for name in all {
            check(name.as_str(), name);
            check(&name.as_str().to_ascii_uppercase(), name);
        }
    }

    fn check_line(line: &str, expected: (usize, HeaderName)) {
        assert_eq!(
            HeaderName::at_line_start(line.as_bytes()),
            expected,
            "{line:?}"
        );
    }

    #[test]
    fn names_at_line_start() {
        let cases = [
            ("Via: SIP/2.0/UDP h", (3, HeaderName::Via)),
            ("VIA :x", (3, HeaderName::Via)),
            ("v: x", (1, HeaderName::Via)),
            ("Via-X: x", (5, HeaderName::Other)),
            ("Vias: x", (4, HeaderName::Other)),
            ("Vi: x", (2, HeaderName::Other)),
            ("Via", (3, HeaderName::Via)),
            ("To:x", (2, HeaderName::To)),
            ("Toy: x", (3, HeaderName::Other)),
            ("t\t: x", (1, HeaderName::To)),
            ("CSeq: 1 INVITE", (4, HeaderName::CSeq)),
            ("call-id: a", (7, HeaderName::CallId)),
            ("Contact: <sip:a@b>", (7, HeaderName::Contact)),
            ("Content-Length: 0", (14, HeaderName::ContentLength)),
            ("Content-Type: a/b", (12, HeaderName::ContentType)),
            ("Content-Encoding: gzip", (16, HeaderName::ContentEncoding)),
            ("Content-Disposition: x", (19, HeaderName::Other)),
            ("Max-Forwards: 70", (12, HeaderName::MaxForwards)),
            ("Record-Route: <sip:p;lr>", (12, HeaderName::RecordRoute)),
            ("Route: <sip:p;lr>", (5, HeaderName::Route)),
            ("Referred-By: x", (11, HeaderName::ReferredBy)),
            ("Session-Expires: 90", (15, HeaderName::SessionExpires)),
            ("Allow: INVITE", (5, HeaderName::Other)),
            ("Allow-Events: talk", (12, HeaderName::AllowEvents)),
            ("X-Custom: 1", (8, HeaderName::Other)),
            ("Cont\ract: x", (4, HeaderName::Other)),
            (": x", (0, HeaderName::Other)),
            ("", (0, HeaderName::Other)),
        ];
        for (line, expected) in cases {
            check_line(line, expected);
        }
    }

    #[test]
    fn methods_are_case_sensitive() {
        assert_eq!(Method::from_bytes(b"INVITE"), Method::Invite);
        assert_eq!(Method::from_bytes(b"invite"), Method::Other);
        assert_eq!(Method::from_bytes(b"IN%56ITE"), Method::Other);
        assert_eq!(Method::from_bytes(b"BYE"), Method::Bye);
    }
}
