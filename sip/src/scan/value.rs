//! Parsers for the header values the relay path reads: Via, name-addr (From, To, Contact,
//! Route, Record-Route), SIP URIs, CSeq and the numeric fields.
//!
//! They work on byte ranges of the original buffer and never allocate. Inside a header value a
//! CR or LF can only be part of a folded line (the scanner rejects bare CR and LF), so the
//! "linear white space" these parsers skip is SP, HTAB, CR and LF.

use super::ScanError;
use super::header::{HeaderName, is_host_byte, is_param_value_byte, is_token_byte};

/// Linear white space inside a header value (folds included).
pub(crate) use super::header::is_lws_byte as is_lws;

/// A byte range of the scanned buffer. `u32` offsets keep the header index small; the scanner
/// refuses inputs that do not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    /// Offset of the first byte.
    pub(crate) start: u32,
    /// Offset just past the last byte.
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: offset(start),
            end: offset(end),
        }
    }

    pub(crate) fn get(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or(&[])
    }

    pub(crate) fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// Converts a buffer position to a span offset. Positions are bounded by the scanner's input
/// size check, so the saturation never happens on a scanned message.
pub(crate) fn offset(pos: usize) -> u32 {
    u32::try_from(pos).unwrap_or(u32::MAX)
}

/// Narrows `span` so that it neither starts nor ends with linear white space.
pub(crate) fn trim(buf: &[u8], span: Span) -> Span {
    let start = span.start as usize;
    let untouched = |at: usize| buf.get(at).is_some_and(|&b| !is_lws(b));
    if span.start < span.end && untouched(start) && untouched(span.end as usize - 1) {
        return span;
    }
    let bytes = buf.get(start..span.end as usize).unwrap_or(&[]);
    let lead = bytes
        .iter()
        .position(|&b| !is_lws(b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| !is_lws(b))
        .map_or(lead, |i| i + 1);
    Span::new(start + lead, start + end)
}

/// A read position inside one header value.
struct Cursor<'a> {
    /// The whole buffer, so that positions are offsets usable for rewriting.
    buf: &'a [u8],
    /// Next byte to read.
    pos: usize,
    /// End of the value being parsed; nothing at or past it is read.
    end: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], span: Span) -> Cursor<'a> {
        let end = (span.end as usize).min(buf.len());
        Cursor {
            buf,
            pos: (span.start as usize).min(end),
            end,
        }
    }

    fn peek(&self) -> Option<u8> {
        if self.pos < self.end {
            self.buf.get(self.pos).copied()
        } else {
            None
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips linear white space; says whether there was any.
    #[inline]
    fn ws(&mut self) -> bool {
        // A plain loop: most calls find no white space, and this stays small enough to be
        // inlined at each of the many call sites.
        let from = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos > from
    }

    /// Advances over the bytes matching `pred`; slice iteration keeps the loop tight.
    #[inline]
    fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> Span {
        let from = self.pos;
        let rest = self.buf.get(from..self.end).unwrap_or(&[]);
        self.pos = from + rest.iter().position(|&b| !pred(b)).unwrap_or(rest.len());
        Span::new(from, self.pos)
    }

    /// Reads a quoted string starting at the opening quote; the span includes both quotes.
    fn quoted(&mut self) -> Option<Span> {
        let from = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        let close = closing_quote(self.buf.get(..self.end)?, self.pos)?;
        self.pos = close + 1;
        Some(Span::new(from, self.pos))
    }

    fn at_end(&self) -> bool {
        self.pos >= self.end
    }
}

/// One `;name[=value]` parameter of a header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Param {
    /// The name, matched case-insensitively by callers.
    pub(crate) name: Span,
    /// The value as written (quotes included); `None` for a flag such as `;lr` or `;rport`.
    pub(crate) value: Option<Span>,
    /// From the name to the end of the value, so a rewrite can replace the whole parameter.
    pub(crate) whole: Span,
}

/// Reads `*( SEMI generic-param )` up to the end of the value, calling `each` per parameter.
fn params(c: &mut Cursor<'_>, mut each: impl FnMut(Param)) -> Option<()> {
    loop {
        c.ws();
        if c.at_end() {
            return Some(());
        }
        if !c.eat(b';') {
            return None;
        }
        c.ws();
        let name = c.take_while(is_token_byte);
        if name.is_empty() {
            return None;
        }
        let after_name = c.pos;
        c.ws();
        let param = if c.eat(b'=') {
            c.ws();
            let value = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                c.take_while(is_param_value_byte)
            };
            if value.is_empty() {
                return None;
            }
            Param {
                name,
                value: Some(value),
                whole: Span::new(name.start as usize, value.end as usize),
            }
        } else {
            c.pos = after_name;
            Param {
                name,
                value: None,
                whole: name,
            }
        };
        each(param);
    }
}

/// The transport of a Via's sent-protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Sctp,
    Ws,
    Wss,
    /// An extension transport; the raw token is in [`Via::transport_raw`].
    Other,
}

impl Transport {
    fn from_bytes(token: &[u8]) -> Transport {
        // Upper case is what everybody writes; anything else takes the slow path.
        match token {
            b"UDP" => Transport::Udp,
            b"TCP" => Transport::Tcp,
            b"TLS" => Transport::Tls,
            b"SCTP" => Transport::Sctp,
            b"WS" => Transport::Ws,
            b"WSS" => Transport::Wss,
            _ => [
                (&b"UDP"[..], Transport::Udp),
                (b"TCP", Transport::Tcp),
                (b"TLS", Transport::Tls),
                (b"SCTP", Transport::Sctp),
                (b"WS", Transport::Ws),
                (b"WSS", Transport::Wss),
            ]
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(token))
            .map_or(Transport::Other, |(_, t)| t),
        }
    }
}

/// The `rport` parameter of a Via (RFC 3581).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RPort {
    /// No `rport`: the response goes to the sent-by port.
    Absent,
    /// `;rport` without a value: the client asks to be told its source port.
    Requested,
    /// `;rport=N`, as filled in by a previous hop.
    Port(u16),
}

/// Where the parts of one Via value sit in the buffer, for reading and rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ViaSpans {
    /// The whole value, trimmed; new parameters are appended at its end.
    pub(crate) value: Span,
    /// The transport token of the sent-protocol.
    pub(crate) transport: Span,
    /// The sent-by host (IPv6 references keep their brackets).
    pub(crate) host: Span,
    /// The sent-by port, when written.
    pub(crate) port: Option<u16>,
    /// `branch` parameter, to key transactions and derive sipedge's own branch.
    pub(crate) branch: Option<Param>,
    /// `received` parameter, replaced rather than duplicated on rewrite.
    pub(crate) received: Option<Param>,
    /// `rport` parameter, filled in on rewrite.
    pub(crate) rport: Option<Param>,
    /// `maddr` parameter, which overrides sent-by when routing a response.
    pub(crate) maddr: Option<Param>,
}

fn host(c: &mut Cursor<'_>) -> Option<Span> {
    let from = c.pos;
    if c.eat(b'[') {
        c.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !c.eat(b']') {
            return None;
        }
        return Some(Span::new(from, c.pos));
    }
    let span = c.take_while(is_host_byte);
    (!span.is_empty()).then_some(span)
}

fn port_number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    let mut n = 0u32;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(d - b'0');
    }
    u16::try_from(n).ok()
}

/// A decimal number of at most 19 digits (leading zeros allowed); `None` on anything else.
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = digits
        .iter()
        .position(|&d| d != b'0')
        .map_or(&[][..], |i| &digits[i..]);
    if significant.len() > 19 {
        return None;
    }
    Some(
        significant
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Parses one Via value (`sent-protocol LWS sent-by *(SEMI via-params)`), LWS allowed around
/// the slashes, colon, semicolons and equal signs as RFC 3261 §25.1 says.
pub(crate) fn via_spans(buf: &[u8], value: Span) -> Result<ViaSpans, ScanError> {
    via_inner(buf, value).ok_or(ScanError::BadValue(HeaderName::Via))
}

fn via_inner(buf: &[u8], value: Span) -> Option<ViaSpans> {
    let mut c = Cursor::new(buf, value);
    c.ws();
    // Nearly every Via starts with exactly this; only the others take the token-by-token
    // path that allows white space and any case.
    if buf
        .get(c.pos..c.end)
        .is_some_and(|v| v.starts_with(b"SIP/2.0/"))
    {
        c.pos += b"SIP/2.0/".len();
    } else {
        sent_protocol_prefix(&mut c)?;
    }
    c.ws();
    let transport = c.take_while(is_token_byte);
    if transport.is_empty() || !c.ws() {
        return None;
    }
    let host = host(&mut c)?;
    let after_host = c.pos;
    c.ws();
    let port = if c.eat(b':') {
        c.ws();
        Some(port_number(c.take_while(|b| b.is_ascii_digit()).get(buf))?)
    } else {
        c.pos = after_host;
        None
    };
    let mut spans = ViaSpans {
        value: trim(buf, value),
        transport,
        host,
        port,
        branch: None,
        received: None,
        rport: None,
        maddr: None,
    };
    params(&mut c, |p| {
        let name = p.name.get(buf);
        let slot = match name.len() {
            6 if name.eq_ignore_ascii_case(b"branch") => &mut spans.branch,
            8 if name.eq_ignore_ascii_case(b"received") => &mut spans.received,
            5 if name.eq_ignore_ascii_case(b"rport") => &mut spans.rport,
            5 if name.eq_ignore_ascii_case(b"maddr") => &mut spans.maddr,
            _ => return,
        };
        if slot.is_none() {
            *slot = Some(p);
        }
    })?;
    if let Some(rport) = spans.rport.and_then(|p| p.value) {
        port_number(rport.get(buf))?;
    }
    Some(spans)
}

/// `"SIP" "/" "2.0" "/"` with white space allowed around the slashes and any case for `SIP`
/// (RFC 3261 §25.1, RFC 4475 wsinv); leaves the cursor after the second slash.
fn sent_protocol_prefix(c: &mut Cursor<'_>) -> Option<()> {
    let buf = c.buf;
    let protocol = c.take_while(is_token_byte);
    if !protocol.get(buf).eq_ignore_ascii_case(b"SIP") {
        return None;
    }
    c.ws();
    if !c.eat(b'/') {
        return None;
    }
    c.ws();
    if c.take_while(is_token_byte).get(buf) != b"2.0" {
        return None;
    }
    c.ws();
    c.eat(b'/').then_some(())
}

/// A parsed Via value. Slices borrow from the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Transport the previous hop sent over; a response goes back over the same one.
    pub transport: Transport,
    /// The transport token as written, for extension transports.
    pub transport_raw: &'a [u8],
    /// Sent-by host (IPv6 references keep their brackets): where responses go without rport.
    pub host: &'a [u8],
    /// Sent-by port; `None` means the transport's default (5060).
    pub port: Option<u16>,
    /// Transaction identifier chosen by the previous hop.
    pub branch: Option<&'a [u8]>,
    /// Source address recorded by the next hop (RFC 3261 §18.2.1).
    pub received: Option<&'a [u8]>,
    /// RFC 3581 symmetric response routing.
    pub rport: RPort,
    /// Multicast/override address for responses.
    pub maddr: Option<&'a [u8]>,
}

impl<'a> Via<'a> {
    /// Parses one Via value, e.g. the second value of a response before relaying it.
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, ScanError> {
        let spans = via_spans(value, Span::new(0, value.len()))?;
        Ok(Via::from_spans(value, &spans))
    }

    pub(crate) fn from_spans(buf: &'a [u8], s: &ViaSpans) -> Via<'a> {
        let value = |p: Option<Param>| p.and_then(|p| p.value).map(|v| v.get(buf));
        let transport_raw = s.transport.get(buf);
        Via {
            transport: Transport::from_bytes(transport_raw),
            transport_raw,
            host: s.host.get(buf),
            port: s.port,
            branch: value(s.branch),
            received: value(s.received),
            rport: match s.rport {
                None => RPort::Absent,
                Some(Param { value: None, .. }) => RPort::Requested,
                Some(Param { value: Some(v), .. }) => {
                    port_number(v.get(buf)).map_or(RPort::Requested, RPort::Port)
                }
            },
            maddr: value(s.maddr),
        }
    }
}

/// An address header value: `[display-name] <uri> *(;param)` or `uri *(;param)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name without its quotes (escapes left as written); `None` when absent.
    pub display_name: Option<&'a [u8]>,
    /// The URI without angle brackets.
    pub uri: &'a [u8],
    /// The `tag` parameter, which identifies the dialog (From/To).
    pub tag: Option<&'a [u8]>,
    /// All header parameters as written, from the first `;` on (empty when none).
    pub params: &'a [u8],
}

impl<'a> NameAddr<'a> {
    /// Parses a From, To or Contact value (addr-spec form allowed).
    pub fn parse(value: &'a [u8]) -> Option<NameAddr<'a>> {
        name_addr(value, false)
    }

    /// Parses a Route, Record-Route or Path value (angle brackets required).
    pub fn parse_route(value: &'a [u8]) -> Option<NameAddr<'a>> {
        name_addr(value, true)
    }

    /// The URI split into its parts, when it is a `sip:` or `sips:` URI.
    pub fn sip_uri(&self) -> Option<Uri<'a>> {
        Uri::parse(self.uri)
    }

    /// The user part of a SIP URI (the account or number), without display name or host.
    pub fn user(&self) -> Option<&'a [u8]> {
        self.sip_uri().and_then(|u| u.user)
    }

    /// Whether the URI carries `;lr` (a loose router, RFC 3261 §16.12).
    pub fn is_loose_route(&self) -> bool {
        self.sip_uri().is_some_and(|u| u.param(b"lr").is_some())
    }

    /// A header parameter's value (empty for a flag), matched case-insensitively.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        param_in(self.params, name)
    }
}

/// `scheme ":" ...` with an RFC 3986 scheme and something after the colon.
fn has_scheme(uri: &[u8]) -> bool {
    // One walk over the scheme's few bytes; `memchr` costs more to set up than that.
    let scheme_len = uri
        .iter()
        .position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))
        .unwrap_or(uri.len());
    uri.first().is_some_and(u8::is_ascii_alphabetic)
        && uri.get(scheme_len) == Some(&b':')
        && uri.len() > scheme_len + 1
}

fn name_addr(value: &[u8], require_brackets: bool) -> Option<NameAddr<'_>> {
    let mut c = Cursor::new(value, Span::new(0, value.len()));
    c.ws();
    let start = c.pos;
    let mut display = None;
    if c.peek() == Some(b'"') {
        let q = c.quoted()?;
        display = Some(Span::new(q.start as usize + 1, q.end as usize - 1));
        c.ws();
    } else {
        // `*(token LWS)` followed by '<' is a display name; anything else is an addr-spec.
        // UTF-8 is accepted in unquoted names too: terminals send it, and it is unambiguous.
        let mut last_end = None;
        loop {
            let token = c.take_while(|b| is_token_byte(b) || b >= 0x80);
            if token.is_empty() {
                break;
            }
            last_end = Some(token.end);
            c.ws();
        }
        match (c.peek(), last_end) {
            (Some(b'<'), Some(end)) => display = Some(Span::new(start, end as usize)),
            (Some(b'<'), None) => {}
            _ => c.pos = start,
        }
    }
    let uri = if c.eat(b'<') {
        // One walk to the closing '>' that also checks the URI holds no white space, '<' or
        // '"': stopping at any of them first means the value is malformed.
        let uri = c.take_while(|b| !(matches!(b, b'>' | b'<' | b'"') || is_lws(b)));
        if !c.eat(b'>') {
            return None;
        }
        uri
    } else {
        if require_brackets || display.is_some() {
            return None;
        }
        let uri = c.take_while(|b| !is_lws(b) && b != b';');
        // An addr-spec cannot carry URI headers or commas: those need the name-addr form
        // (RFC 3261 §20.10).
        if uri
            .get(value)
            .iter()
            .any(|&b| matches!(b, b'?' | b',' | b'<' | b'>' | b'"'))
        {
            return None;
        }
        uri
    };
    let uri_bytes = uri.get(value);
    if !has_scheme(uri_bytes) {
        return None;
    }
    c.ws();
    let params_start = c.pos;
    let mut tag = None;
    params(&mut c, |p| {
        if tag.is_none() && p.name.get(value).eq_ignore_ascii_case(b"tag") {
            tag = p.value;
        }
    })?;
    Some(NameAddr {
        display_name: display.map(|d| d.get(value)),
        uri: uri_bytes,
        tag: tag.map(|t| t.get(value)),
        params: Span::new(params_start, c.end).get(value),
    })
}

/// Looks up `name` in `;a=b;c` style parameters (case-insensitive names); a flag gives `b""`.
fn param_in<'a>(params: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    params.split(|&b| b == b';').find_map(|p| {
        let p = trim_slice(p);
        let (n, v) = match memchr::memchr(b'=', p) {
            Some(eq) => (trim_slice(&p[..eq]), trim_slice(&p[eq + 1..])),
            None => (p, &p[p.len()..]),
        };
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn trim_slice(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or(&[])
}

/// A `sip:` or `sips:` URI split into parts (RFC 3261 §19.1.1). Slices borrow the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    /// `sip` or `sips`, as written.
    pub scheme: &'a [u8],
    /// The user part (before `@`, without password), escapes as written.
    pub user: Option<&'a [u8]>,
    /// Host name or address (IPv6 references keep their brackets).
    pub host: &'a [u8],
    /// Explicit port.
    pub port: Option<u16>,
    /// URI parameters as written, from the first `;` (empty when none).
    pub params: &'a [u8],
    /// URI headers after `?`, which a Request-URI must not carry.
    pub headers: Option<&'a [u8]>,
}

impl<'a> Uri<'a> {
    /// Splits a SIP or SIPS URI; `None` for other schemes or a missing host.
    pub fn parse(uri: &'a [u8]) -> Option<Uri<'a>> {
        // The colon is within the first few bytes: a plain walk beats setting up `memchr`.
        let colon = uri.iter().position(|&b| b == b':')?;
        let (scheme, rest) = (uri.get(..colon)?, uri.get(colon + 1..)?);
        if !scheme.eq_ignore_ascii_case(b"sip") && !scheme.eq_ignore_ascii_case(b"sips") {
            return None;
        }
        // '@' may appear in neither host, port, parameters nor headers unescaped, so the first
        // one ends the userinfo even when the user part holds ';' or '?' (RFC 4475 intmeth).
        let (user, hostpart) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                let userinfo = rest.get(..at)?;
                let user = userinfo.split(|&b| b == b':').next().unwrap_or(userinfo);
                (Some(user), rest.get(at + 1..)?)
            }
            None => (None, rest),
        };
        let host_end = if hostpart.first() == Some(&b'[') {
            memchr::memchr(b']', hostpart)? + 1
        } else {
            hostpart
                .iter()
                .position(|&b| matches!(b, b':' | b';' | b'?'))
                .unwrap_or(hostpart.len())
        };
        let host = hostpart.get(..host_end)?;
        if host.is_empty() {
            return None;
        }
        let after_host = hostpart.get(host_end..)?;
        let param_start = after_host
            .iter()
            .position(|&b| b == b';' || b == b'?')
            .unwrap_or(after_host.len());
        let port = match after_host.get(..param_start)? {
            [] => None,
            [b':', digits @ ..] => Some(port_number(digits)?),
            _ => return None,
        };
        let tail = after_host.get(param_start..)?;
        // URI parameters are short or absent: a plain walk beats setting up `memchr`.
        let (params, headers) = match tail.iter().position(|&b| b == b'?') {
            Some(q) => (tail.get(..q)?, Some(tail.get(q + 1..)?)),
            None => (tail, None),
        };
        Some(Uri {
            scheme,
            user,
            host,
            port,
            params,
            headers,
        })
    }

    /// A URI parameter's value (empty for a flag like `lr`), matched case-insensitively.
    pub fn param(&self, name: &[u8]) -> Option<&'a [u8]> {
        param_in(self.params, name)
    }
}

/// Checks a Request-URI: a scheme, no white space or angle brackets, and for SIP URIs no
/// headers part (RFC 3261 §19.1.5; RFC 4475 ltgtruri, lwsruri, escruri).
pub(crate) fn request_uri_ok(uri: &[u8]) -> bool {
    if !has_scheme(uri)
        || uri
            .iter()
            .any(|&b| b <= b' ' || matches!(b, b'<' | b'>' | b'"' | 0x7f))
    {
        return false;
    }
    let scheme_is_sip = uri
        .get(..4)
        .is_some_and(|s| s.eq_ignore_ascii_case(b"sip:"))
        || uri
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"sips:"));
    !scheme_is_sip || Uri::parse(uri).is_some_and(|u| u.headers.is_none())
}

/// Parses a CSeq value: sequence number (below 2^31, RFC 3261 §8.1.1.5) and method token.
pub(crate) fn cseq(buf: &[u8], value: Span) -> Option<(u32, Span)> {
    let mut c = Cursor::new(buf, value);
    c.ws();
    let number = decimal(c.take_while(|b| b.is_ascii_digit()).get(buf))?;
    let number = u32::try_from(number).ok().filter(|&n| n < 1 << 31)?;
    if !c.ws() {
        return None;
    }
    let method = c.take_while(is_token_byte);
    c.ws();
    (!method.is_empty() && c.at_end()).then_some((number, method))
}

/// Parses a header value that is one unsigned decimal number (Max-Forwards, Content-Length).
pub(crate) fn number(value: &[u8]) -> Option<u64> {
    decimal(trim_slice(value))
}

/// Iterates over the comma-separated elements of one header value, ignoring commas inside
/// quoted strings and `<...>`; each element is trimmed of LWS.
#[derive(Debug, Clone)]
pub(crate) struct CommaSplit<'a> {
    /// The buffer holding the value.
    buf: &'a [u8],
    /// Start of the next element; `None` once the last one was returned.
    next: Option<usize>,
    /// End of the value.
    end: usize,
}

/// One element found by [`CommaSplit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Element {
    /// The element, trimmed.
    pub(crate) span: Span,
    /// Where the following element starts (after the comma and LWS), so removing this element
    /// is deleting `span.start..next`; `None` for the last element of the value.
    pub(crate) next: Option<u32>,
}

impl<'a> CommaSplit<'a> {
    pub(crate) fn new(buf: &'a [u8], value: Span) -> CommaSplit<'a> {
        let end = (value.end as usize).min(buf.len());
        CommaSplit {
            buf,
            next: Some((value.start as usize).min(end)),
            end,
        }
    }
}

impl Iterator for CommaSplit<'_> {
    type Item = Element;

    fn next(&mut self) -> Option<Element> {
        let start = self.next?;
        let value = self.buf.get(..self.end).unwrap_or(&[]);
        // Most values hold one element: with no comma left, the rest is the last element,
        // whatever quotes and brackets it holds, and one `memchr` settles that.
        if memchr::memchr(b',', value.get(start..).unwrap_or(&[])).is_none() {
            self.next = None;
            return Some(Element {
                span: trim(self.buf, Span::new(start, self.end)),
                next: None,
            });
        }
        // Jump between the bytes that matter instead of walking the value byte by byte.
        let mut i = start;
        let elem_end = loop {
            let rest = value.get(i..).unwrap_or(&[]);
            let Some(hit) = memchr::memchr3(b',', b'"', b'<', rest) else {
                break self.end;
            };
            let at = i + hit;
            match value.get(at) {
                Some(b',') => break at,
                Some(b'"') => i = closing_quote(value, at + 1).map_or(self.end, |q| q + 1),
                _ => {
                    let rest = value.get(at..).unwrap_or(&[]);
                    i = memchr::memchr(b'>', rest).map_or(self.end, |g| at + g + 1);
                }
            }
        };
        let span = trim(self.buf, Span::new(start, elem_end));
        self.next = if elem_end < self.end {
            let mut n = elem_end + 1;
            while n < self.end && value.get(n).is_some_and(|&b| is_lws(b)) {
                n += 1;
            }
            Some(n)
        } else {
            None
        };
        Some(Element {
            span,
            next: self.next.map(offset),
        })
    }
}

/// Position of the quote closing a quoted string whose content starts at `from`, skipping
/// quoted-pairs.
fn closing_quote(value: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    loop {
        let at = i + memchr::memchr2(b'"', b'\\', value.get(i..)?)?;
        if value.get(at) == Some(&b'"') {
            return Some(at);
        }
        i = at + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(s: &[u8]) -> Span {
        Span::new(0, s.len())
    }

    /// Transport, host, port, branch, rport.
    type ViaSummary<'s> = (Transport, &'s str, Option<u16>, Option<&'s str>, RPort);

    fn check_via(value: &str, expected: Option<ViaSummary<'_>>) {
        let got = Via::parse(value.as_bytes()).ok().map(|v| {
            (
                v.transport,
                String::from_utf8_lossy(v.host).into_owned(),
                v.port,
                v.branch.map(|b| String::from_utf8_lossy(b).into_owned()),
                v.rport,
            )
        });
        let expected =
            expected.map(|(t, h, p, b, r)| (t, h.to_owned(), p, b.map(str::to_owned), r));
        assert_eq!(got, expected, "{value:?}");
    }

    #[test]
    fn via_values() {
        use RPort::*;
        use Transport::*;
        let cases: &[(&str, Option<ViaSummary<'_>>)] = &[
            (
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1",
                Some((Udp, "10.0.0.1", Some(5060), Some("z9hG4bK1"), Absent)),
            ),
            (
                "SIP/2.0/tcp host.example.com;rport;branch=z9",
                Some((Tcp, "host.example.com", None, Some("z9"), Requested)),
            ),
            (
                "SIP/2.0/UDP [2001:db8::1]:5070;rport=1234",
                Some((Udp, "[2001:db8::1]", Some(5070), None, Port(1234))),
            ),
            (
                "SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw",
                Some((Udp, "192.0.2.2", None, Some("390skdjuw"), Absent)),
            ),
            (
                "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
                Some((
                    Tcp,
                    "spindle.example.com",
                    None,
                    Some("z9hG4bK9ikj8"),
                    Absent,
                )),
            ),
            (
                "SIP/2.0/UNKNOWN unknown.example.com;branch=x",
                Some((Other, "unknown.example.com", None, Some("x"), Absent)),
            ),
            (
                "SIP/2.0/UDP h : 5060",
                Some((Udp, "h", Some(5060), None, Absent)),
            ),
            (
                "SIP/2.0/ UDP h;branch=x",
                Some((Udp, "h", None, Some("x"), Absent)),
            ),
            (
                "sip/2.0/udp h;branch=x",
                Some((Udp, "h", None, Some("x"), Absent)),
            ),
            ("SIP/2.0/", None),
            ("SIP/2.0/UDPh", None),
            ("SIP/2.0 /UDP h", Some((Udp, "h", None, None, Absent))),
            ("SIP/2.00/UDP h", None),
            ("SIP/2.0/UDP 192.0.2.15;;", None),
            ("SIP/2.0/UDP 192.0.2.15;branch=", None),
            ("SIP/2.0/UDP", None),
            ("SIP/2.0/UDP ", None),
            ("SIP/3.0/UDP h", None),
            ("HTTP/2.0/UDP h", None),
            ("SIP/2.0/UDP h:99999", None),
            ("SIP/2.0/UDP h;rport=70000", None),
            ("SIP/2.0/UDP h junk", None),
            ("SIP/2.0/UDP [::1", None),
            ("", None),
        ];
        for &(value, expected) in cases {
            check_via(value, expected);
        }
    }

    /// Display name, URI, tag.
    type AddrSummary<'s> = (Option<&'s str>, &'s str, Option<&'s str>);

    fn check_addr(value: &str, route: bool, expected: Option<AddrSummary<'_>>) {
        let parsed = if route {
            NameAddr::parse_route(value.as_bytes())
        } else {
            NameAddr::parse(value.as_bytes())
        };
        let got = parsed.map(|n| {
            (
                n.display_name
                    .map(|d| String::from_utf8_lossy(d).into_owned()),
                String::from_utf8_lossy(n.uri).into_owned(),
                n.tag.map(|t| String::from_utf8_lossy(t).into_owned()),
            )
        });
        let expected =
            expected.map(|(d, u, t)| (d.map(str::to_owned), u.to_owned(), t.map(str::to_owned)));
        assert_eq!(got, expected, "{value:?}");
    }

    #[test]
    fn name_addr_values() {
        let cases: &[(&str, bool, Option<AddrSummary<'_>>)] = &[
            ("<sip:a@b>;tag=1", false, Some((None, "sip:a@b", Some("1")))),
            (
                "\"Alice\" <sip:a@b>",
                false,
                Some((Some("Alice"), "sip:a@b", None)),
            ),
            (
                "caller<sip:caller@example.com>;tag=323",
                false,
                Some((Some("caller"), "sip:caller@example.com", Some("323"))),
            ),
            (
                "sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n",
                false,
                Some((
                    None,
                    "sip:vivekg@chair-dnrc.example.com",
                    Some("1918181833n"),
                )),
            ),
            (
                "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
                false,
                Some((
                    Some("J Rosenberg \\\\\\\""),
                    "sip:jdrosen@example.com",
                    Some("98asjd8"),
                )),
            ),
            (
                "token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;tag=_token~1'+`*%!-.",
                false,
                Some((
                    Some("token1~` token2'+_ token3*%!.-"),
                    "sip:mundane@example.com",
                    Some("_token~1'+`*%!-."),
                )),
            ),
            (
                "sip:%75se%72@example.com",
                false,
                Some((None, "sip:%75se%72@example.com", None)),
            ),
            (
                "<sip:p1.example.com;lr>",
                true,
                Some((None, "sip:p1.example.com;lr", None)),
            ),
            ("sip:p1.example.com;lr", true, None),
            ("\"Mr. J. User <sip:j.user@example.com>", false, None),
            (
                "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
                false,
                None,
            ),
            (
                "sip:user@example.com?Route=%3Csip:sip.example.com%3E",
                false,
                None,
            ),
            ("< sip:user@example.com >", false, None),
            ("<sip:user@example.com", false, None),
            ("<user>", false, None),
            ("\"Joe\" <sip:joe@example.org>;;;;", false, None),
            ("Joe", false, None),
            ("<sip:>", false, None),
            ("<sip:a\"b@c>", false, None),
            ("<sip:a<b@c>", false, None),
            ("<sip:a b@c>", false, None),
            ("<sip:a@b>>", false, None),
            ("<1sip:a@b>", false, None),
            ("<:a@b>", false, None),
            ("<s+i-p.2:a@b>", false, Some((None, "s+i-p.2:a@b", None))),
            (
                "Agent M\u{fc}ller <sip:m@h>",
                false,
                Some((Some("Agent M\u{fc}ller"), "sip:m@h", None)),
            ),
            ("", false, None),
        ];
        for &(value, route, expected) in cases {
            check_addr(value, route, expected);
        }
    }

    #[test]
    fn uris() {
        let u =
            Uri::parse(b"sip:alice:secret@[2001:db8::1]:5070;transport=tcp;lr?subject=x").unwrap();
        assert_eq!(u.user, Some(&b"alice"[..]));
        assert_eq!(u.host, b"[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param(b"LR"), Some(&b""[..]));
        assert_eq!(u.param(b"transport"), Some(&b"tcp"[..]));
        assert_eq!(u.headers, Some(&b"subject=x"[..]));
        let odd = b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
        let u = Uri::parse(odd).unwrap();
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.headers, None);
        assert!(Uri::parse(b"tel:+1234").is_none());
        assert!(Uri::parse(b"sip:").is_none());
        assert!(Uri::parse(b"sip:host:port").is_none());
        assert!(request_uri_ok(b"sip:user;par=u%40example.net@example.com"));
        assert!(request_uri_ok(odd));
        assert!(request_uri_ok(b"soap.beep://192.0.2.103:3002"));
        assert!(!request_uri_ok(b"<sip:user@example.com>"));
        assert!(!request_uri_ok(
            b"sip:user@example.com?Route=%3Csip:example.com%3E"
        ));
        assert!(!request_uri_ok(b"user@example.com"));
    }

    #[test]
    fn cseq_and_numbers() {
        let check = |v: &str, expected: Option<(u32, &str)>| {
            let got = cseq(v.as_bytes(), whole(v.as_bytes()))
                .map(|(n, m)| (n, String::from_utf8_lossy(m.get(v.as_bytes())).into_owned()));
            assert_eq!(got, expected.map(|(n, m)| (n, m.to_owned())), "{v:?}");
        };
        check("1 INVITE", Some((1, "INVITE")));
        check("0009\r\n  INVITE", Some((9, "INVITE")));
        check(" 2147483647 BYE ", Some((2147483647, "BYE")));
        check("2147483648 BYE", None);
        check("36893488147419103232 REGISTER", None);
        check("1INVITE", None);
        check("INVITE", None);
        check("1 ", None);
        check("1 INVITE x", None);
        assert_eq!(number(b" 0068 "), Some(68));
        assert_eq!(number(b"-999"), None);
        assert_eq!(number(b""), None);
        assert_eq!(number(b"00000000000000000000000000001"), Some(1));
        assert_eq!(number(b"99999999999999999999"), None);
    }

    #[test]
    fn comma_split_respects_quotes_and_brackets() {
        let v = b"<sip:a,b@x>;p=\"x,y\" , \"A, B\" <sip:c@d>,sip:e@f";
        let parts: Vec<&[u8]> = CommaSplit::new(v, whole(v))
            .map(|e| e.span.get(v))
            .collect();
        assert_eq!(
            parts,
            vec![
                &b"<sip:a,b@x>;p=\"x,y\""[..],
                b"\"A, B\" <sip:c@d>",
                b"sip:e@f"
            ]
        );
        let one = b"abc";
        let elems: Vec<Element> = CommaSplit::new(one, whole(one)).collect();
        assert_eq!(
            elems,
            vec![Element {
                span: Span::new(0, 3),
                next: None
            }]
        );
        let folded = b"a  ,\r\n b";
        let elems: Vec<Element> = CommaSplit::new(folded, whole(folded)).collect();
        assert_eq!(
            elems[0],
            Element {
                span: Span::new(0, 1),
                next: Some(7)
            }
        );
    }
}
