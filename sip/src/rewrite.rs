//! Rewriting a scanned message without reparsing it: edits are collected as (byte range,
//! replacement) pairs and applied in one pass into one output buffer sized once; unchanged
//! bytes, the body included, are copied as they are. Content-Length is never touched, since no
//! edit changes the body.

use smallvec::SmallVec;

use crate::scan::{HeaderName, Message, Param, Span};

/// One edit: replace `range` of the input with `text` (a range of the rewrite's [`Text`]).
#[derive(Debug, Clone, Copy)]
struct Edit {
    /// Input bytes replaced; empty for an insertion.
    range: Span,
    /// Replacement bytes in the rewrite's text buffer.
    text: Span,
}

/// A set of edits on one message, applied by [`Rewrite::finish`] or [`Rewrite::write_into`].
///
/// Edits at the same position apply in the order they were made. An edit touching bytes that
/// an earlier-positioned edit already removed or replaced is dropped: e.g. after
/// [`Rewrite::remove_top_via`], parameter edits on that Via have nothing left to change.
///
/// Inserted names and values are written verbatim: they must not contain CR or LF, which would
/// let them start header lines of their own (sipedge builds them itself, from addresses and
/// tokens).
#[derive(Debug)]
pub struct Rewrite<'m, 'a> {
    /// The message being rewritten; edits refer to its buffer.
    msg: &'m Message<'a>,
    /// Edits in the order they were made.
    edits: SmallVec<[Edit; 8]>,
    /// Inserted bytes of all edits, so that edits need no allocation of their own.
    text: Text,
}

impl<'a> Message<'a> {
    /// Starts a rewrite of this message.
    pub fn rewrite(&self) -> Rewrite<'_, 'a> {
        Rewrite {
            msg: self,
            edits: SmallVec::new(),
            text: Text::default(),
        }
    }
}

impl<'m, 'a> Rewrite<'m, 'a> {
    fn push(&mut self, range: Span, parts: &[&[u8]]) {
        let start = self.text.len();
        self.text.append(parts);
        let text = Span::new(start, self.text.len());
        self.edits.push(Edit { range, text });
    }

    fn push_number(&mut self, range: Span, prefix: &[u8], n: u16, suffix: &[u8]) {
        let mut digits = [0u8; 5];
        let len = decimal(n, &mut digits);
        self.push(range, &[prefix, digits.get(..len).unwrap_or(&[]), suffix]);
    }

    fn insert_line_at(&mut self, at: u32, name: &[u8], value: &[u8]) {
        self.push(Span { start: at, end: at }, &[name, b": ", value, b"\r\n"]);
    }

    /// Inserts `name: value` as the first header line.
    pub fn insert_header_top(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        let at = self.msg.headers_start();
        self.insert_line_at(at, name, value);
        self
    }

    /// Inserts `name: value` just before the first header called `anchor`, or as the first
    /// header line when there is none.
    pub fn insert_header_before(
        &mut self,
        anchor: HeaderName,
        name: &[u8],
        value: &[u8],
    ) -> &mut Self {
        let at = self
            .msg
            .first_entry(anchor)
            .map_or(self.msg.headers_start(), |e| e.line.start);
        self.insert_line_at(at, name, value);
        self
    }

    /// Adds the proxy's own Via (`value` without the `Via: `) above the existing ones.
    pub fn insert_via(&mut self, value: &[u8]) -> &mut Self {
        self.insert_header_before(HeaderName::Via, b"Via", value)
    }

    /// Adds a Record-Route value (e.g. `<sip:host;lr>`) above the existing ones.
    pub fn insert_record_route(&mut self, value: &[u8]) -> &mut Self {
        self.insert_header_before(HeaderName::RecordRoute, b"Record-Route", value)
    }

    /// Adds a Path value (REGISTER, RFC 3327) above the existing ones.
    pub fn insert_path(&mut self, value: &[u8]) -> &mut Self {
        self.insert_header_before(HeaderName::Path, b"Path", value)
    }

    /// Removes the first value of the first header called `name`: the whole line when it is
    /// the only value, otherwise that value and its comma (compact and folded lines alike).
    fn remove_first_value(&mut self, name: HeaderName) -> &mut Self {
        if let Some((entry, element)) = self.msg.first_element(name) {
            let range = match element.next {
                None => entry.line,
                Some(next) => Span {
                    start: element.span.start,
                    end: next,
                },
            };
            self.push(range, &[]);
        }
        self
    }

    /// Removes the top Via value (the proxy's own, from a response).
    pub fn remove_top_via(&mut self) -> &mut Self {
        self.remove_first_value(HeaderName::Via)
    }

    /// Removes the top Route value (the one naming this proxy).
    pub fn remove_top_route(&mut self) -> &mut Self {
        self.remove_first_value(HeaderName::Route)
    }

    /// Sets `received=addr` on the top Via, replacing any existing value.
    pub fn set_top_via_received(&mut self, addr: &[u8]) -> &mut Self {
        let Some(via) = self.msg.top_via_spans().copied() else {
            return self;
        };
        match via.received {
            Some(Param { value: Some(v), .. }) => self.push(v, &[addr]),
            Some(Param {
                name, value: None, ..
            }) => {
                self.push(
                    Span {
                        start: name.end,
                        end: name.end,
                    },
                    &[b"=", addr],
                );
            }
            None => {
                let end = via.value.end;
                self.push(Span { start: end, end }, &[b";received=", addr]);
            }
        }
        self
    }

    /// Sets `rport=port` on the top Via (RFC 3581), replacing `;rport` or an existing value,
    /// or appending it when absent.
    pub fn set_top_via_rport(&mut self, port: u16) -> &mut Self {
        let Some(via) = self.msg.top_via_spans().copied() else {
            return self;
        };
        match via.rport {
            Some(p) => self.push_number(p.whole, b"rport=", port, b""),
            None => {
                let end = via.value.end;
                self.push_number(Span { start: end, end }, b";rport=", port, b"");
            }
        }
        self
    }

    /// Sets Max-Forwards to `n`, inserting `Max-Forwards: n` at the end of the headers when the
    /// message has none (or an invalid one is replaced in place).
    pub fn set_max_forwards(&mut self, n: u8) -> &mut Self {
        match self.msg.first_entry(HeaderName::MaxForwards) {
            Some(entry) => {
                let value = entry.value;
                self.push_number(value, b"", u16::from(n), b"");
            }
            None => {
                let at = self.msg.headers_end();
                self.push_number(
                    Span { start: at, end: at },
                    b"Max-Forwards: ",
                    u16::from(n),
                    b"\r\n",
                );
            }
        }
        self
    }

    /// Replaces the Request-URI (no effect on a response).
    pub fn set_request_uri(&mut self, uri: &[u8]) -> &mut Self {
        if let Some(span) = self.msg.request_uri_span() {
            self.push(span, &[uri]);
        }
        self
    }

    /// Length of the output, after sorting the edits and dropping overlapping ones.
    fn plan(&mut self) -> usize {
        // Stable: edits at one position keep their call order; insertions sort before a
        // replacement starting at the same byte.
        self.edits.sort_by_key(|e| (e.range.start, e.range.end));
        let mut cursor = self.msg.start_offset();
        let mut len = (self.msg.end_offset() - cursor) as usize;
        self.edits.retain(|e| {
            let keep = e.range.start >= cursor && e.range.end <= self.msg.end_offset();
            if keep {
                cursor = e.range.end;
                len = len - (e.range.end - e.range.start) as usize
                    + (e.text.end - e.text.start) as usize;
            }
            keep
        });
        len
    }

    /// Applies the edits, appending the rewritten message to `out` (reserving once).
    pub fn write_into(&mut self, out: &mut Vec<u8>) {
        let len = self.plan();
        out.reserve(len);
        self.apply(out);
    }

    /// Applies the edits into a new buffer of exactly the output's size.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.plan());
        self.apply(&mut out);
        out
    }

    /// Copies the message with the planned edits into `out`.
    fn apply(&self, out: &mut Vec<u8>) {
        let buf = self.msg.buf();
        let mut cursor = self.msg.start_offset();
        for e in &self.edits {
            out.extend_from_slice(
                Span {
                    start: cursor,
                    end: e.range.start,
                }
                .get(buf),
            );
            out.extend_from_slice(e.text.get(self.text.bytes()));
            cursor = e.range.end;
        }
        out.extend_from_slice(
            Span {
                start: cursor,
                end: self.msg.end_offset(),
            }
            .get(buf),
        );
    }
}

/// Bytes inserted by edits: inline up to [`Text::INLINE`] bytes (a proxy's edits are a few
/// hundred), on the heap beyond. Appending is a plain copy, which matters at a few edits per
/// message.
#[derive(Debug)]
struct Text {
    /// Inline storage, used while everything fits.
    inline: [u8; Text::INLINE],
    /// Bytes used in `inline`.
    len: usize,
    /// All the bytes once they no longer fit inline.
    spilled: Option<Vec<u8>>,
}

impl Text {
    const INLINE: usize = 512;

    fn len(&self) -> usize {
        self.spilled.as_ref().map_or(self.len, Vec::len)
    }

    /// Appends the parts of one edit's text; whether they fit inline is decided once for all.
    fn append(&mut self, parts: &[&[u8]]) {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if self.spilled.is_none() && self.len + total <= Text::INLINE {
            for part in parts {
                if let Some(dst) = self.inline.get_mut(self.len..self.len + part.len()) {
                    dst.copy_from_slice(part);
                    self.len += part.len();
                }
            }
            return;
        }
        let spilled = self.spilled.get_or_insert_with(|| {
            let mut spilled = Vec::with_capacity(2 * (self.len + total));
            spilled.extend_from_slice(self.inline.get(..self.len).unwrap_or(&[]));
            spilled
        });
        for part in parts {
            spilled.extend_from_slice(part);
        }
    }

    fn bytes(&self) -> &[u8] {
        match &self.spilled {
            Some(spilled) => spilled,
            None => self.inline.get(..self.len).unwrap_or(&[]),
        }
    }
}

impl Default for Text {
    fn default() -> Text {
        Text {
            inline: [0; Text::INLINE],
            len: 0,
            spilled: None,
        }
    }
}

/// Writes `n` in decimal into `out`, returning the number of digits.
fn decimal(n: u16, out: &mut [u8; 5]) -> usize {
    let mut tmp = [0u8; 5];
    let mut len = 0;
    let mut n = n;
    loop {
        if let Some(slot) = tmp.get_mut(len) {
            *slot = b'0' + (n % 10) as u8;
        }
        len += 1;
        n /= 10;
        if n == 0 || len == tmp.len() {
            break;
        }
    }
    for (dst, src) in out
        .iter_mut()
        .zip(tmp.get(..len).unwrap_or(&[]).iter().rev())
    {
        *dst = *src;
    }
    len
}

#[cfg(test)]
mod tests;
