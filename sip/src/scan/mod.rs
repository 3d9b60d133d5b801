//! Zero-copy scanner: indexes the start line and header fields of one SIP message as byte
//! ranges of the input, and validates what a stateless proxy relies on.
//!
//! [`scan`] builds the index and fails only when the bytes cannot be a SIP message at all
//! (no start line, bare CR/LF, NUL, unterminated header section, too big). Problems a proxy can
//! answer with a 400 (a bad CSeq, a missing From, conflicting Content-Length, ...) are recorded
//! instead and returned by [`Message::validate`]; [`parse`] is `scan` followed by `validate`.

mod header;
mod summary;
mod value;

use smallvec::SmallVec;

pub use header::{HeaderName, Method};
pub use summary::{Facts, Line, Party, Summary};
pub(crate) use value::{CommaSplit, Element, Param, Span, ViaSpans, number};
pub use value::{NameAddr, RPort, Transport, Uri, Via};

use header::{HEADER_NAME_COUNT, is_token_byte};
use value::{offset, trim};

/// Largest header section accepted (start line included). Nothing legitimate comes close; the
/// cap bounds the work spent on one message.
pub const MAX_HEADER_BYTES: usize = 65_535;

/// Most header lines accepted in one message; 32 are indexed without allocating.
pub const MAX_HEADERS: usize = 512;

/// Why bytes are not an acceptable SIP message. Each message names the first problem found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("empty message (only CRLFs)")]
    Empty,
    #[error("message larger than 4 GiB")]
    TooLarge,
    #[error("start line is neither a request line nor a SIP/2.0 status line")]
    BadStartLine,
    #[error("Request-URI is malformed (no scheme, white space, <>, or URI headers)")]
    BadRequestUri,
    #[error("unsupported SIP version: only SIP/2.0 is accepted")]
    BadVersion,
    #[error("status code is not three digits in 100..=699")]
    BadStatusCode,
    #[error("NUL byte in the header section outside a quoted-pair")]
    Nul,
    #[error("CR not followed by LF in the header section")]
    BareCr,
    #[error("LF not preceded by CR in the header section")]
    BareLf,
    #[error("header section does not end with an empty line")]
    UnterminatedHeaders,
    #[error("header section longer than {MAX_HEADER_BYTES} bytes")]
    HeadersTooLarge,
    #[error("more than {MAX_HEADERS} header lines")]
    TooManyHeaders,
    #[error("header line without a valid name followed by a colon")]
    MalformedHeader,
    #[error("mandatory header {0} is missing")]
    MissingHeader(HeaderName),
    #[error("header {0} appears more than once")]
    DuplicateHeader(HeaderName),
    #[error("malformed {0} value")]
    BadValue(HeaderName),
    #[error("CSeq is not a number below 2^31 followed by a method")]
    BadCSeq,
    #[error("CSeq method differs from the request method")]
    CSeqMethodMismatch,
    #[error("Max-Forwards is not a number in 0..=255")]
    BadMaxForwards,
    #[error("Content-Length is not a decimal number below 2^32")]
    BadContentLength,
    #[error("Content-Length headers disagree")]
    ConflictingContentLength,
    #[error("Content-Length {declared} exceeds the {available} body bytes present")]
    ContentLengthExceedsBody { declared: u32, available: u32 },
    #[error("Content-Length is required on stream transports")]
    MissingContentLength,
    #[error("top Via branch is the bare magic cookie z9hG4bK, without a transaction id")]
    EmptyBranch,
}

/// One indexed header line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    /// The whole line from its first byte to after its final CRLF, so it can be removed.
    pub(crate) line: Span,
    /// The value, trimmed; spans folded continuation lines.
    pub(crate) value: Span,
    /// Length of the name as written at the start of the line (extension headers are looked
    /// up by it); a length rather than a span keeps the index small.
    pub(crate) name_len: u16,
    /// Classified name, so lookups never compare strings again.
    pub(crate) name: HeaderName,
}

impl Entry {
    fn raw_name(&self) -> Span {
        Span {
            start: self.line.start,
            end: self.line.start + u32::from(self.name_len),
        }
    }
}

/// The parsed start line.
#[derive(Debug, Clone, Copy)]
enum StartLine {
    Request {
        /// Classified method.
        method: Method,
        /// Method token as written (extension methods, CSeq comparison).
        method_raw: Span,
        /// Request-URI, replaced when routing.
        uri: Span,
    },
    Response {
        /// Status code 100..=699.
        status: u16,
        /// Reason phrase (may be empty or non-ASCII).
        reason: Span,
    },
}

const NONE: u16 = u16::MAX;

/// The RFC 3261 §8.1.1.7 prefix of a branch that is a transaction id.
const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// An indexed SIP message borrowing its bytes. Accessors return slices of the input.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    /// The input buffer; all spans index into it.
    buf: &'a [u8],
    /// First byte of the start line (leading CRLFs are skipped).
    start: u32,
    /// Request or status line.
    start_line: StartLine,
    /// Header lines in order.
    headers: SmallVec<[Entry; 32]>,
    /// Index into `headers` of the first line with each name, for O(1) lookups.
    first: [u16; HEADER_NAME_COUNT],
    /// How many lines carry each name (saturating), for the duplicate checks.
    count: [u8; HEADER_NAME_COUNT],
    /// Start of the first header line: where headers are inserted "at the top".
    headers_start: u32,
    /// Start of the empty line ending the header section.
    headers_end: u32,
    /// The body; ends where the message ends (extra datagram bytes excluded).
    body: Span,
    /// Top Via, parsed once because both the proxy and the rewriter use it.
    top_via: Option<ViaSpans>,
    /// From, parsed once: call tracking reads its tag and user on every message.
    from: Option<NameAddr<'a>>,
    /// To, parsed once, for the same reason.
    to: Option<NameAddr<'a>>,
    /// CSeq number and method token.
    cseq: Option<(u32, Span)>,
    /// Max-Forwards value when valid.
    max_forwards: Option<u8>,
    /// Content-Length value when valid and consistent.
    content_length: Option<u32>,
    /// First problem found that a stateless 400 can report.
    defect: Option<ScanError>,
}

/// Scans and validates one message (a datagram or a frame cut by [`crate::frame::Framer`]).
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ScanError> {
    // The scan's result is returned as it is, rather than unwrapped and wrapped again, so that
    // the message (most of a kilobyte) is not copied on the way out.
    let msg = scan(buf);
    if let Ok(m) = &msg {
        m.validate()?;
    }
    msg
}

/// Indexes one message without rejecting it for problems a 400 can answer; see
/// [`Message::validate`] and [`Message::is_mandatory_complete`].
pub fn scan(buf: &[u8]) -> Result<Message<'_>, ScanError> {
    if u32::try_from(buf.len()).is_err() {
        return Err(ScanError::TooLarge);
    }
    let mut pos = 0;
    while buf.get(pos..pos + 2) == Some(b"\r\n") {
        pos += 2;
    }
    if pos >= buf.len() {
        return Err(ScanError::Empty);
    }
    let start = pos;
    let (line_end, mut pos) = next_line(buf, start, false)?;
    let mut defect = None;
    let start_line = start_line(buf, start, line_end, &mut defect)?;

    // Built here and filled in place: assembling it from locals at the end would copy the
    // header index once more.
    let mut msg = Message {
        buf,
        start: offset(start),
        start_line,
        headers: SmallVec::new(),
        first: [NONE; HEADER_NAME_COUNT],
        count: [0; HEADER_NAME_COUNT],
        headers_start: offset(pos),
        headers_end: 0,
        body: Span::default(),
        top_via: None,
        from: None,
        to: None,
        cseq: None,
        max_forwards: None,
        content_length: None,
        defect,
    };
    let Message {
        headers,
        first,
        count,
        defect,
        ..
    } = &mut msg;
    // Whether continuation lines belong to the last entry (false after a malformed line, whose
    // continuations are skipped with it).
    let mut folding_into_last = false;
    let (headers_end, body_start) = loop {
        if pos - start > MAX_HEADER_BYTES {
            return Err(ScanError::HeadersTooLarge);
        }
        let (end, next) = next_line(buf, pos, true)?;
        if end == pos {
            break (pos, next);
        }
        let line = buf.get(pos..end).unwrap_or(&[]);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            match headers.last_mut() {
                Some(last) if folding_into_last => {
                    // Trimming again from the same start gives what trimming the whole
                    // folded value once would.
                    last.value = trim(
                        buf,
                        Span {
                            start: last.value.start,
                            end: offset(end),
                        },
                    );
                    last.line.end = offset(next);
                }
                _ => {
                    defect.get_or_insert(ScanError::MalformedHeader);
                }
            }
        } else if let Some((name_len, name, value_start)) = header_name(line) {
            if headers.len() >= MAX_HEADERS {
                return Err(ScanError::TooManyHeaders);
            }
            let name_len = u16::try_from(name_len).map_err(|_| ScanError::HeadersTooLarge)?;
            let slot = name as usize;
            if let Some(f) = first.get_mut(slot).filter(|f| **f == NONE) {
                *f = u16::try_from(headers.len()).unwrap_or(NONE);
            }
            if let Some(c) = count.get_mut(slot) {
                *c = c.saturating_add(1);
            }
            headers.push(Entry {
                line: Span::new(pos, next),
                // Trimmed while the line is at hand rather than in a pass of its own.
                value: trim(buf, Span::new(pos + value_start, end)),
                name_len,
                name,
            });
            folding_into_last = true;
        } else {
            defect.get_or_insert(ScanError::MalformedHeader);
            folding_into_last = false;
        }
        pos = next;
    };
    msg.headers_end = offset(headers_end);
    msg.body = Span::new(body_start, buf.len());
    msg.check_fields();
    Ok(msg)
}

/// Finds the end of the line starting at `from`: returns (position of its CR, start of the
/// next line). `escaped_nul` allows a NUL right after a backslash, which only a quoted-pair
/// can produce (RFC 4475 intmeth).
fn next_line(buf: &[u8], from: usize, escaped_nul: bool) -> Result<(usize, usize), ScanError> {
    let mut i = from;
    loop {
        let rest = buf.get(i..).unwrap_or(&[]);
        let Some(hit) = memchr::memchr3(b'\r', b'\n', 0, rest) else {
            return Err(ScanError::UnterminatedHeaders);
        };
        let at = i + hit;
        match buf.get(at) {
            Some(b'\r') => {
                return match buf.get(at + 1) {
                    Some(b'\n') => Ok((at, at + 2)),
                    Some(_) => Err(ScanError::BareCr),
                    None => Err(ScanError::UnterminatedHeaders),
                };
            }
            Some(b'\n') => return Err(ScanError::BareLf),
            _ => {
                if !(escaped_nul && at > from && buf.get(at - 1) == Some(&b'\\')) {
                    return Err(ScanError::Nul);
                }
                i = at + 1;
            }
        }
    }
}

/// Splits `name HCOLON` off a header line; returns the name's length, the classified name
/// and where the value starts.
fn header_name(line: &[u8]) -> Option<(usize, HeaderName, usize)> {
    let (name_len, name) = HeaderName::at_line_start(line);
    let is_blank = |b: &u8| *b == b' ' || *b == b'\t';
    let colon = name_len + line.get(name_len..)?.iter().position(|b| !is_blank(b))?;
    if name_len == 0 || line.get(colon) != Some(&b':') {
        return None;
    }
    // The value starts after the blanks following the colon, so that trimming it usually
    // finds nothing to do.
    let rest = line.get(colon + 1..)?;
    Some((
        name_len,
        name,
        colon + 1 + rest.iter().position(|b| !is_blank(b)).unwrap_or(rest.len()),
    ))
}

fn start_line(
    buf: &[u8],
    start: usize,
    end: usize,
    defect: &mut Option<ScanError>,
) -> Result<StartLine, ScanError> {
    let line = buf.get(start..end).unwrap_or(&[]);
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        return status_line(line, start);
    }
    // A request as soon as it starts with `token SP`: problems after that are answerable.
    // The method is a few bytes: walking them beats setting up `memchr`.
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return Err(ScanError::BadStartLine);
    };
    let method_raw = line.get(..sp).unwrap_or(&[]);
    if method_raw.is_empty() || !method_raw.iter().all(|&b| is_token_byte(b)) {
        return Err(ScanError::BadStartLine);
    }
    let rest = line.get(sp + 1..).unwrap_or(&[]);
    let (uri_len, version) = match memchr::memchr(b' ', rest) {
        Some(sp2) => (sp2, rest.get(sp2 + 1..).unwrap_or(&[])),
        None => (rest.len(), &[][..]),
    };
    let uri = rest.get(..uri_len).unwrap_or(&[]);
    let problem = if uri.is_empty() || version.is_empty() || version.contains(&b' ') {
        Some(ScanError::BadStartLine)
    } else if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        Some(ScanError::BadVersion)
    } else if !value::request_uri_ok(uri) {
        Some(ScanError::BadRequestUri)
    } else {
        None
    };
    if let Some(problem) = problem {
        defect.get_or_insert(problem);
    }
    let uri_start = start + sp + 1;
    Ok(StartLine::Request {
        method: Method::from_bytes(method_raw),
        method_raw: Span::new(start, start + sp),
        uri: Span::new(uri_start, uri_start + uri_len),
    })
}

fn status_line(line: &[u8], start: usize) -> Result<StartLine, ScanError> {
    // Right after `SIP/2.0`: a walk of a few bytes, cheaper than setting up `memchr`.
    let sp = line
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ScanError::BadStartLine)?;
    if !line
        .get(..sp)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"SIP/2.0"))
    {
        return Err(ScanError::BadVersion);
    }
    let rest = line.get(sp + 1..).unwrap_or(&[]);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let status = match rest.get(..digits) {
        Some(&[a, b, c]) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err(ScanError::BadStatusCode),
    };
    if !(100..=699).contains(&status) {
        return Err(ScanError::BadStatusCode);
    }
    // "SIP/2.0 100 " (RFC 4475 noreason) and the lenient "SIP/2.0 100" both give an empty reason.
    let reason_start = match rest.get(3) {
        None => start + sp + 1 + 3,
        Some(b' ') => start + sp + 1 + 4,
        Some(_) => return Err(ScanError::BadStatusCode),
    };
    Ok(StartLine::Response {
        status,
        reason: Span::new(reason_start, start + line.len()),
    })
}

impl<'a> Message<'a> {
    /// Validates the fields the relay path depends on, recording the first problem.
    fn check_fields(&mut self) {
        let mut problem = None;
        let mut note = |p: ScanError| {
            problem.get_or_insert(p);
        };
        for name in [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ] {
            if self.count_of(name) == 0 {
                note(ScanError::MissingHeader(name));
            }
        }
        for name in [
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
            HeaderName::MaxForwards,
        ] {
            if self.count_of(name) > 1 {
                note(ScanError::DuplicateHeader(name));
            }
        }
        // White space inside the value: SP or HTAB, or the CR of a fold (a LF never comes
        // without one, the scanner rejects bare LFs), found with one `memchr3`.
        if self
            .header(HeaderName::CallId)
            .is_some_and(|v| v.is_empty() || memchr::memchr3(b' ', b'\t', b'\r', v).is_some())
        {
            note(ScanError::BadValue(HeaderName::CallId));
        }

        if let Some(entry) = self.first_entry(HeaderName::CSeq) {
            match value::cseq(self.buf, entry.value) {
                Some((number, method)) => {
                    self.cseq = Some((number, method));
                    if let StartLine::Request { method_raw, .. } = self.start_line
                        && method_raw.get(self.buf) != method.get(self.buf)
                    {
                        note(ScanError::CSeqMethodMismatch);
                    }
                }
                None => note(ScanError::BadCSeq),
            }
        }
        if let Some(v) = self.header(HeaderName::MaxForwards) {
            match value::number(v).and_then(|n| u8::try_from(n).ok()) {
                Some(n) => self.max_forwards = Some(n),
                None => note(ScanError::BadMaxForwards),
            }
        }

        let mut content_length = None;
        for entry in self.entries(HeaderName::ContentLength) {
            match value::number(entry.value.get(self.buf)).and_then(|n| u32::try_from(n).ok()) {
                None => note(ScanError::BadContentLength),
                Some(n) if content_length.is_some_and(|c| c != n) => {
                    note(ScanError::ConflictingContentLength)
                }
                Some(n) => content_length = Some(n),
            }
        }
        if let Some(declared) = content_length {
            let available = self.body.end - self.body.start;
            if declared > available {
                note(ScanError::ContentLengthExceedsBody {
                    declared,
                    available,
                });
            } else {
                // On a datagram, bytes past Content-Length are not part of the message.
                self.body.end = self.body.start + declared;
                self.content_length = Some(declared);
            }
        }

        if let Some(top) = self
            .first_entry(HeaderName::Via)
            .and_then(|e| CommaSplit::new(self.buf, e.value).next())
        {
            match value::via_spans(self.buf, top.span) {
                Ok(spans) => {
                    // RFC 4475 badbranch: the cookie promises an RFC 3261 transaction id and
                    // gives none. Deriving sipedge's branch from it would give every such
                    // request of a sender the same branch, merging unrelated transactions
                    // upstream; the RFC allows a stateless 400.
                    if spans
                        .branch
                        .and_then(|b| b.value)
                        .is_some_and(|v| v.get(self.buf) == MAGIC_COOKIE)
                    {
                        note(ScanError::EmptyBranch);
                    }
                    self.top_via = Some(spans);
                }
                Err(e) => note(e),
            }
        }
        let from = self.header(HeaderName::From).map(NameAddr::parse);
        let to = self.header(HeaderName::To).map(NameAddr::parse);
        for (name, parsed) in [(HeaderName::From, from), (HeaderName::To, to)] {
            if parsed.is_some_and(|p| p.is_none()) {
                note(ScanError::BadValue(name));
            }
        }
        self.from = from.flatten();
        self.to = to.flatten();
        for v in self.values(HeaderName::Contact) {
            if v != b"*" && NameAddr::parse(v).is_none() {
                note(ScanError::BadValue(HeaderName::Contact));
            }
        }
        for name in [HeaderName::Route, HeaderName::RecordRoute, HeaderName::Path] {
            if self
                .values(name)
                .any(|v| NameAddr::parse_route(v).is_none())
            {
                note(ScanError::BadValue(name));
            }
        }
        if let Some(p) = problem {
            self.defect.get_or_insert(p);
        }
    }

    /// `Ok` when the message is fit to relay; otherwise the first problem found.
    pub fn validate(&self) -> Result<(), ScanError> {
        self.defect.map_or(Ok(()), Err)
    }

    /// Whether the start line and Via, From, To, Call-ID and CSeq were all found, i.e. whether a
    /// stateless error response can be built (for a request) rather than dropping the message.
    pub fn is_mandatory_complete(&self) -> bool {
        [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]
        .into_iter()
        .all(|n| self.count_of(n) > 0)
    }

    /// The message bytes: start line to end of body, without leading CRLFs or bytes of the
    /// datagram past Content-Length.
    pub fn as_bytes(&self) -> &'a [u8] {
        Span {
            start: self.start,
            end: self.body.end,
        }
        .get(self.buf)
    }

    /// Length of the scanned input: the whole datagram or frame, bytes past the message
    /// included.
    pub fn buf_len(&self) -> usize {
        self.buf.len()
    }

    /// Whether the start line is a request line.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line, StartLine::Request { .. })
    }

    /// The request method (`None` on a response).
    pub fn method(&self) -> Option<Method> {
        match self.start_line {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token as written, for extension methods.
    pub fn method_bytes(&self) -> Option<&'a [u8]> {
        match self.start_line {
            StartLine::Request { method_raw, .. } => Some(method_raw.get(self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (`None` on a response).
    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start_line {
            StartLine::Request { uri, .. } => Some(uri.get(self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code (`None` on a request).
    pub fn status(&self) -> Option<u16> {
        match self.start_line {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, as written (may be empty or UTF-8).
    pub fn reason(&self) -> Option<&'a [u8]> {
        match self.start_line {
            StartLine::Response { reason, .. } => Some(reason.get(self.buf)),
            StartLine::Request { .. } => None,
        }
    }

    /// The Call-ID value.
    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::CallId)
    }

    /// The From value, parsed.
    pub fn from(&self) -> Option<NameAddr<'a>> {
        self.from
    }

    /// The To value, parsed.
    pub fn to(&self) -> Option<NameAddr<'a>> {
        self.to
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<CSeq<'a>> {
        self.cseq.map(|(number, method)| {
            let raw = method.get(self.buf);
            CSeq {
                number,
                method: Method::from_bytes(raw),
                method_raw: raw,
            }
        })
    }

    /// The top (first) Via value, parsed.
    pub fn top_via(&self) -> Option<Via<'a>> {
        self.top_via.as_ref().map(|s| Via::from_spans(self.buf, s))
    }

    /// All Via values in order, across lines and commas; parse others with [`Via::parse`].
    pub fn vias(&self) -> Values<'_, 'a> {
        self.values(HeaderName::Via)
    }

    /// Max-Forwards, when present and valid.
    pub fn max_forwards(&self) -> Option<u8> {
        self.max_forwards
    }

    /// Route values in order (invalid ones skipped; [`Message::validate`] reports them).
    pub fn routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        self.values(HeaderName::Route)
            .filter_map(NameAddr::parse_route)
    }

    /// Record-Route values in order.
    pub fn record_routes(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        self.values(HeaderName::RecordRoute)
            .filter_map(NameAddr::parse_route)
    }

    /// Contact values in order (a `*` wildcard is skipped; see `header(HeaderName::Contact)`).
    pub fn contacts(&self) -> impl Iterator<Item = NameAddr<'a>> + '_ {
        self.values(HeaderName::Contact).filter_map(NameAddr::parse)
    }

    /// The Content-Type value.
    pub fn content_type(&self) -> Option<&'a [u8]> {
        self.header(HeaderName::ContentType)
    }

    /// Content-Length, when present, valid and consistent.
    pub fn content_length(&self) -> Option<u32> {
        self.content_length
    }

    /// The body, exactly as received (cut at Content-Length).
    pub fn body(&self) -> &'a [u8] {
        self.body.get(self.buf)
    }

    /// The value of the first header with this name (whole line value, commas included);
    /// for [`HeaderName::Other`], the first extension header (see [`Message::header_named`]).
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.first_entry(name).map(|e| e.value.get(self.buf))
    }

    /// The value of the first header whose name matches `name` case-insensitively (compact
    /// forms of known headers included).
    pub fn header_named(&self, name: &[u8]) -> Option<&'a [u8]> {
        match HeaderName::from_bytes(name) {
            HeaderName::Other => self
                .headers
                .iter()
                .find(|e| e.raw_name().get(self.buf).eq_ignore_ascii_case(name))
                .map(|e| e.value.get(self.buf)),
            known => self.header(known),
        }
    }

    /// Every comma-separated value of every header with this name, in order.
    pub fn values(&self, name: HeaderName) -> Values<'_, 'a> {
        Values {
            msg: self,
            name,
            next_entry: self.first_index(name),
            split: None,
        }
    }

    /// All header lines in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + '_ {
        self.headers.iter().map(|e| Header {
            name: e.name,
            raw_name: e.raw_name().get(self.buf),
            value: e.value.get(self.buf),
        })
    }

    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    pub(crate) fn start_offset(&self) -> u32 {
        self.start
    }

    pub(crate) fn end_offset(&self) -> u32 {
        self.body.end
    }

    pub(crate) fn headers_start(&self) -> u32 {
        self.headers_start
    }

    pub(crate) fn headers_end(&self) -> u32 {
        self.headers_end
    }

    pub(crate) fn request_uri_span(&self) -> Option<Span> {
        match self.start_line {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub(crate) fn top_via_spans(&self) -> Option<&ViaSpans> {
        self.top_via.as_ref()
    }

    fn count_of(&self, name: HeaderName) -> u8 {
        self.count.get(name as usize).copied().unwrap_or(0)
    }

    fn first_index(&self, name: HeaderName) -> usize {
        self.first.get(name as usize).map_or(usize::MAX, |&i| {
            if i == NONE {
                usize::MAX
            } else {
                usize::from(i)
            }
        })
    }

    pub(crate) fn first_entry(&self, name: HeaderName) -> Option<&Entry> {
        self.headers.get(self.first_index(name))
    }

    /// The first comma element of the first header with this name, and that header's entry.
    pub(crate) fn first_element(&self, name: HeaderName) -> Option<(&Entry, Element)> {
        let entry = self.first_entry(name)?;
        let element = CommaSplit::new(self.buf, entry.value).next()?;
        Some((entry, element))
    }

    fn entries(&self, name: HeaderName) -> impl Iterator<Item = &Entry> + '_ {
        self.headers
            .iter()
            .skip(self.first_index(name))
            .filter(move |e| e.name == name)
    }
}

/// A CSeq value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number (below 2^31).
    pub number: u32,
    /// Classified method, to match responses and CANCEL/ACK to their INVITE.
    pub method: Method,
    /// Method token as written.
    pub method_raw: &'a [u8],
}

/// One header line as found in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Classified name (compact forms resolved).
    pub name: HeaderName,
    /// Name as written.
    pub raw_name: &'a [u8],
    /// Value, trimmed; folded lines keep their CRLF and leading white space.
    pub value: &'a [u8],
}

/// Iterator over the comma-separated values of all headers with one name.
#[derive(Debug, Clone)]
pub struct Values<'m, 'a> {
    /// The message whose headers are walked.
    msg: &'m Message<'a>,
    /// The header name being collected.
    name: HeaderName,
    /// Index of the next header line to split.
    next_entry: usize,
    /// Splitter over the current header line's value.
    split: Option<CommaSplit<'a>>,
}

impl<'a> Iterator for Values<'_, 'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            if let Some(element) = self.split.as_mut().and_then(Iterator::next) {
                return Some(element.span.get(self.msg.buf));
            }
            let (index, entry) = self
                .msg
                .headers
                .iter()
                .enumerate()
                .skip(self.next_entry)
                .find(|(_, e)| e.name == self.name)?;
            self.next_entry = index + 1;
            self.split = Some(CommaSplit::new(self.msg.buf, entry.value));
        }
    }
}

#[cfg(test)]
mod tests;
