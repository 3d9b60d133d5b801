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
    /// Any header not listed above; its raw name is in [`crate::Header::raw_name`].
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
                _ => HeaderName::Other,
            };
        }
        // Candidates grouped by length so that a name is compared with at most a few strings.
        let candidates: &[(&[u8], HeaderName)] = match name.len() {
            2 => &[(b"to", HeaderName::To)],
            3 => &[(b"via", HeaderName::Via)],
            4 => &[
                (b"from", HeaderName::From),
                (b"cseq", HeaderName::CSeq),
                (b"path", HeaderName::Path),
            ],
            5 => &[(b"route", HeaderName::Route), (b"event", HeaderName::Event)],
            7 => &[
                (b"call-id", HeaderName::CallId),
                (b"contact", HeaderName::Contact),
                (b"require", HeaderName::Require),
                (b"subject", HeaderName::Subject),
                (b"expires", HeaderName::Expires),
            ],
            8 => &[(b"refer-to", HeaderName::ReferTo)],
            9 => &[(b"supported", HeaderName::Supported)],
            11 => &[(b"referred-by", HeaderName::ReferredBy)],
            12 => &[
                (b"max-forwards", HeaderName::MaxForwards),
                (b"content-type", HeaderName::ContentType),
                (b"record-route", HeaderName::RecordRoute),
                (b"allow-events", HeaderName::AllowEvents),
            ],
            14 => &[(b"content-length", HeaderName::ContentLength)],
            15 => &[(b"session-expires", HeaderName::SessionExpires)],
            16 => &[(b"content-encoding", HeaderName::ContentEncoding)],
            _ => &[],
        };
        candidates
            .iter()
            .find(|(long, _)| long.eq_ignore_ascii_case(name))
            .map_or(HeaderName::Other, |&(_, known)| known)
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
            HeaderName::Other => "extension header",
        }
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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

/// RFC 3261 `token` characters (header names, methods, parameter names).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
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
            ("MaX-fOrWaRdS", HeaderName::MaxForwards),
            ("Record-Route", HeaderName::RecordRoute),
            ("route", HeaderName::Route),
            ("cseq", HeaderName::CSeq),
            ("Path", HeaderName::Path),
            ("a", HeaderName::Other),
            ("X-Via", HeaderName::Other),
            ("", HeaderName::Other),
        ];
        for (name, expected) in cases {
            check(name, expected);
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
