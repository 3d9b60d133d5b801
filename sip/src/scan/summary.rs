//! What call tracking reads of a message, kept as positions so that it can travel with the
//! message's bytes: the relay makes a [`Summary`] from the scan it did anyway, and call
//! tracking reads it back against the bytes ([`Summary::facts`]) instead of scanning the
//! message a second time. A [`Message`]'s own index cannot travel: it borrows the receive
//! buffer that the next datagram overwrites, and it is most of a kilobyte.

use super::value::Span;
use super::{HeaderName, Message, StartLine};

/// The facts of [`Facts`] as spans of the message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Length of the bytes the spans index: a summary is only read against those.
    len: u32,
    line: LineSpans,
    call_id: Option<Span>,
    from: Option<PartySpans>,
    to: Option<PartySpans>,
    cseq: Option<(u32, Span)>,
    content_type: Option<Span>,
    body: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineSpans {
    Request { method: Span, uri: Span },
    Response { status: u16, reason: Span },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PartySpans {
    uri: Span,
    tag: Option<Span>,
}

/// What call tracking reads of one message, borrowed from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts<'a> {
    pub line: Line<'a>,
    pub call_id: Option<&'a [u8]>,
    pub from: Option<Party<'a>>,
    pub to: Option<Party<'a>>,
    /// CSeq number and method token.
    pub cseq: Option<(u32, &'a [u8])>,
    pub content_type: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// The start line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    Request { method: &'a [u8], uri: &'a [u8] },
    Response { status: u16, reason: &'a [u8] },
}

/// From or To: the URI without angle brackets, and the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Party<'a> {
    pub uri: &'a [u8],
    pub tag: Option<&'a [u8]>,
}

impl<'a> Message<'a> {
    /// What call tracking reads of this message.
    pub fn facts(&self) -> Facts<'a> {
        let party = |p: Option<super::NameAddr<'a>>| {
            p.map(|p| Party {
                uri: p.uri,
                tag: p.tag,
            })
        };
        Facts {
            line: match self.start_line {
                StartLine::Request {
                    method_raw, uri, ..
                } => Line::Request {
                    method: method_raw.get(self.buf),
                    uri: uri.get(self.buf),
                },
                StartLine::Response { status, reason } => Line::Response {
                    status,
                    reason: reason.get(self.buf),
                },
            },
            call_id: self.call_id(),
            from: party(self.from),
            to: party(self.to),
            cseq: self.cseq.map(|(n, method)| (n, method.get(self.buf))),
            content_type: self.content_type(),
            body: self.body(),
        }
    }
}

impl Summary {
    /// The positions of `msg`'s facts in the bytes it scanned.
    pub fn of(msg: &Message<'_>) -> Summary {
        let buf = msg.buf;
        let value = |name| msg.first_entry(name).map(|e| e.value);
        let party = |p: Option<super::NameAddr<'_>>| {
            p.map(|p| PartySpans {
                uri: span_in(buf, p.uri),
                tag: p.tag.map(|t| span_in(buf, t)),
            })
        };
        Summary {
            len: super::offset(buf.len()),
            line: match msg.start_line {
                StartLine::Request {
                    method_raw, uri, ..
                } => LineSpans::Request {
                    method: method_raw,
                    uri,
                },
                StartLine::Response { status, reason } => LineSpans::Response { status, reason },
            },
            call_id: value(HeaderName::CallId),
            from: party(msg.from),
            to: party(msg.to),
            cseq: msg.cseq,
            content_type: value(HeaderName::ContentType),
            body: msg.body,
        }
    }

    /// The facts read against `bytes`, which must be the bytes the summary was made of;
    /// `None` when their length differs (the summary belongs to other bytes).
    pub fn facts<'a>(&self, bytes: &'a [u8]) -> Option<Facts<'a>> {
        if usize::try_from(self.len).ok() != Some(bytes.len()) {
            return None;
        }
        let party = |p: Option<PartySpans>| {
            p.map(|p| Party {
                uri: p.uri.get(bytes),
                tag: p.tag.map(|t| t.get(bytes)),
            })
        };
        Some(Facts {
            line: match self.line {
                LineSpans::Request { method, uri } => Line::Request {
                    method: method.get(bytes),
                    uri: uri.get(bytes),
                },
                LineSpans::Response { status, reason } => Line::Response {
                    status,
                    reason: reason.get(bytes),
                },
            },
            call_id: self.call_id.map(|s| s.get(bytes)),
            from: party(self.from),
            to: party(self.to),
            cseq: self.cseq.map(|(n, m)| (n, m.get(bytes))),
            content_type: self.content_type.map(|s| s.get(bytes)),
            body: self.body.get(bytes),
        })
    }
}

/// Where `part`, a slice the scanner took of `buf`, lies in it. The parsed From and To are
/// kept as slices by the scanner; this turns them back into positions. A slice from
/// elsewhere gives an empty span rather than a wrong one.
fn span_in(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr().addr().wrapping_sub(buf.as_ptr().addr());
    match start.checked_add(part.len()) {
        Some(end) if end <= buf.len() => Span::new(start, end),
        _ => Span::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::scan;

    const CASES: &[&str] = &[
        "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
         From: \"Al\" <sip:al@example.com>;tag=88\r\nTo: sip:bob@example.com\r\n\
         Call-ID: c1@10.0.0.1\r\nCSeq: 7 INVITE\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: 9\r\n\r\nv=0\r\nm=x\r\n",
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
         f: <sip:al@example.com>;tag=88\r\nt: <sip:bob@example.com>;tag=99\r\n\
         i: c1@10.0.0.1\r\nCSeq: 7 INVITE\r\nl: 0\r\n\r\n",
        // Folded From, no tags, an empty reason phrase, no body.
        "SIP/2.0 200 \r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
         From:\r\n <sip:al@example.com>\r\nTo: <sip:bob@example.com>\r\n\
         Call-ID: c2\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        // Leading CRLFs, and datagram bytes past Content-Length.
        "\r\n\r\nBYE sip:al@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK2\r\n\
         From: <sip:bob@example.com>;tag=99\r\nTo: <sip:al@example.com>;tag=88\r\n\
         Call-ID: c1@10.0.0.1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\nxx",
        // What call tracking needs is missing: no Call-ID, From, To or CSeq.
        "OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK3\r\nMax-Forwards: 1\r\n\r\n",
    ];

    #[test]
    fn a_summary_reads_back_the_scanned_facts() {
        for case in CASES {
            let msg = scan(case.as_bytes()).expect(case);
            let summary = Summary::of(&msg);
            // Read against a copy, as call tracking does with the relay's.
            let copy = case.as_bytes().to_vec();
            assert_eq!(summary.facts(&copy), Some(msg.facts()), "{case}");
        }
    }

    #[test]
    fn facts_are_what_the_accessors_say() {
        let msg = scan(CASES[1].as_bytes()).expect("a 180 scans");
        let facts = msg.facts();
        assert_eq!(
            facts.line,
            Line::Response {
                status: 180,
                reason: b"Ringing"
            }
        );
        assert_eq!(facts.call_id, Some(&b"c1@10.0.0.1"[..]));
        let from = facts.from.expect("a From");
        assert_eq!(
            (from.uri, from.tag),
            (&b"sip:al@example.com"[..], Some(&b"88"[..]))
        );
        let to = facts.to.expect("a To");
        assert_eq!(to.tag, Some(&b"99"[..]));
        assert_eq!(facts.cseq, Some((7, &b"INVITE"[..])));
        assert_eq!((facts.content_type, facts.body), (None, &b""[..]));
        let options = scan(CASES[4].as_bytes()).expect("an OPTIONS scans").facts();
        assert_eq!(
            (options.call_id, options.from, options.cseq),
            (None, None, None)
        );
    }

    #[test]
    fn a_summary_is_not_read_against_other_bytes() {
        let msg = scan(CASES[0].as_bytes()).expect("an INVITE scans");
        let summary = Summary::of(&msg);
        let shorter = &CASES[0].as_bytes()[..CASES[0].len() - 1];
        let longer = [CASES[0].as_bytes(), b"x"].concat();
        assert_eq!(summary.facts(shorter), None);
        assert_eq!(summary.facts(&longer), None);
        assert_eq!(summary.facts(b""), None);
    }

    #[test]
    fn a_slice_from_elsewhere_has_no_position() {
        let buf = b"abcdef";
        assert_eq!(span_in(buf, &buf[2..4]), Span::new(2, 4));
        assert_eq!(span_in(buf, &buf[6..]), Span::new(6, 6));
        let other = b"abcdef".to_vec();
        assert!(span_in(buf, &other[1..3]).is_empty());
    }
}
