//! Message framing for stream transports (TCP): where does the next message end?
//!
//! Pure and allocation-free: the caller owns the buffer, asks [`Framer::frame`] (or the
//! stateless [`frame`]) what its front holds, acts on the answer and drops the bytes it used.
//! On a stream, Content-Length is mandatory (RFC 3261 §18.3): without it the end of a
//! message cannot be known.

use memchr::memmem;

use crate::scan::{ScanError, number};

/// What the front of a stream buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message occupies `buf[..len]`: header section then Content-Length body bytes.
    Message { len: usize },
    /// The front is an incomplete message (or keep-alive); read more bytes.
    Incomplete,
    /// An RFC 5626 §3.5.1 keep-alive ping (`CRLFCRLF`) of `len` bytes: consume it and answer
    /// with a single CRLF.
    Ping { len: usize },
    /// A lone CRLF of `len` bytes (a pong, or a stray line ending before a message): consume it,
    /// no answer.
    Pong { len: usize },
    /// The header section does not end within the size limit, or the declared length exceeds
    /// it: answer 413 where possible, then close the connection.
    TooLarge,
    /// The framing information is unusable (missing or bad Content-Length): the stream cannot
    /// be resynchronised, so close the connection.
    Invalid(ScanError),
}

/// Frames the front of `buf` from scratch. For a buffer that grows by small reads, a [`Framer`]
/// avoids searching the same bytes again.
pub fn frame(buf: &[u8], max_message_bytes: usize) -> Frame {
    Framer::new(max_message_bytes).frame(buf)
}

/// Framing state of one connection, remembering how far the last `Incomplete` answer got so
/// that a message arriving byte by byte is searched in linear rather than quadratic time.
///
/// Contract: after any answer other than [`Frame::Incomplete`], the caller removes the bytes
/// it names from the front of the buffer (or closes the connection) before asking again.
#[derive(Debug, Clone)]
pub struct Framer {
    /// `sip.max_message_bytes`: a message (headers and body) longer than this is refused.
    max_message_bytes: usize,
    /// Bytes already searched for the end of the header section without finding it.
    searched: usize,
    /// Total length of the message at the front, once its header section has been read.
    pending_len: Option<usize>,
}

impl Framer {
    /// A framer refusing messages longer than `max_message_bytes`.
    pub fn new(max_message_bytes: usize) -> Framer {
        Framer {
            max_message_bytes,
            searched: 0,
            pending_len: None,
        }
    }

    /// Says what the front of `buf` holds.
    pub fn frame(&mut self, buf: &[u8]) -> Frame {
        let answer = self.frame_inner(buf);
        if answer != Frame::Incomplete {
            self.searched = 0;
            self.pending_len = None;
        }
        answer
    }

    fn frame_inner(&mut self, buf: &[u8]) -> Frame {
        if let Some(len) = self.pending_len {
            return if buf.len() >= len {
                Frame::Message { len }
            } else {
                Frame::Incomplete
            };
        }
        if buf.first() == Some(&b'\r') {
            return match buf.get(..4) {
                Some(b"\r\n\r\n") => Frame::Ping { len: 4 },
                // A prefix of a ping: wait to see whether it completes.
                _ if b"\r\n\r\n".starts_with(buf) => Frame::Incomplete,
                _ if buf.starts_with(b"\r\n") => Frame::Pong { len: 2 },
                _ => Frame::Invalid(ScanError::BareCr),
            };
        }
        let limit = buf.len().min(self.max_message_bytes);
        let from = self.searched.saturating_sub(3).min(limit);
        let window = buf.get(from..limit).unwrap_or(&[]);
        let Some(found) = memmem::find(window, b"\r\n\r\n") else {
            if buf.len() >= self.max_message_bytes {
                return Frame::TooLarge;
            }
            self.searched = limit;
            return Frame::Incomplete;
        };
        let header_len = from + found + 4;
        let body_len = match content_length(buf.get(..header_len).unwrap_or(&[])) {
            Ok(Some(n)) => n,
            Ok(None) => return Frame::Invalid(ScanError::MissingContentLength),
            Err(e) => return Frame::Invalid(e),
        };
        let Some(len) = header_len
            .checked_add(body_len)
            .filter(|&l| l <= self.max_message_bytes)
        else {
            return Frame::TooLarge;
        };
        if buf.len() >= len {
            Frame::Message { len }
        } else {
            self.pending_len = Some(len);
            Frame::Incomplete
        }
    }
}

/// Finds Content-Length (or compact `l`) in a header section ending with CRLFCRLF, following
/// folded lines; all occurrences must agree.
fn content_length(head: &[u8]) -> Result<Option<usize>, ScanError> {
    let mut found: Option<usize> = None;
    // Value range of the Content-Length header being read, extended by continuation lines.
    let mut current: Option<(usize, usize)> = None;
    let mut finish = |range: Option<(usize, usize)>| -> Result<(), ScanError> {
        let Some((start, end)) = range else {
            return Ok(());
        };
        let value = head.get(start..end).unwrap_or(&[]);
        let n = number(value)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or(ScanError::BadContentLength)?;
        match found {
            Some(prev) if prev != n => Err(ScanError::ConflictingContentLength),
            _ => {
                found = Some(n);
                Ok(())
            }
        }
    };
    // Skip the start line; each following line starts after an LF.
    let mut pos = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    while pos < head.len() {
        let end =
            memchr::memchr(b'\n', head.get(pos..).unwrap_or(&[])).map_or(head.len(), |i| pos + i);
        let line = head.get(pos..end).unwrap_or(&[]);
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if let Some((_, value_end)) = current.as_mut() {
                *value_end = end;
            }
        } else {
            finish(current.take())?;
            if let Some(colon) = memchr::memchr(b':', line) {
                let name = line.get(..colon).unwrap_or(&[]);
                let name_len = name
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t')
                    .map_or(0, |i| i + 1);
                let name = name.get(..name_len).unwrap_or(&[]);
                if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
                    current = Some((pos + colon + 1, end));
                }
            }
        }
        pos = end + 1;
    }
    finish(current)?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/TCP a;branch=z9hG4bK1\r\nl: 4\r\n\r\nbody";

    fn check(buf: &[u8], max: usize, expected: Frame) {
        assert_eq!(
            frame(buf, max),
            expected,
            "{:?}",
            String::from_utf8_lossy(buf)
        );
    }

    #[test]
    fn frames() {
        let head_only = &INVITE[..INVITE.len() - 4];
        let cases: &[(&[u8], usize, Frame)] = &[
            (INVITE, 1000, Frame::Message { len: INVITE.len() }),
            (head_only, 1000, Frame::Incomplete),
            (&INVITE[..10], 1000, Frame::Incomplete),
            (b"", 1000, Frame::Incomplete),
            (b"\r", 1000, Frame::Incomplete),
            (b"\r\n", 1000, Frame::Incomplete),
            (b"\r\n\r", 1000, Frame::Incomplete),
            (b"\r\n\r\n", 1000, Frame::Ping { len: 4 }),
            (b"\r\n\r\n\r\n", 1000, Frame::Ping { len: 4 }),
            (b"\r\nINVITE", 1000, Frame::Pong { len: 2 }),
            (b"\rX", 1000, Frame::Invalid(ScanError::BareCr)),
            (
                b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n",
                1000,
                Frame::Message { len: 37 },
            ),
            (
                b"SIP/2.0 200 OK\r\nCONTENT-LENGTH :\r\n 2\r\n\r\nab",
                1000,
                Frame::Message { len: 42 },
            ),
            (
                b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n",
                1000,
                Frame::Invalid(ScanError::MissingContentLength),
            ),
            (
                b"SIP/2.0 200 OK\r\nl: 1\r\nContent-Length: 2\r\n\r\nab",
                1000,
                Frame::Invalid(ScanError::ConflictingContentLength),
            ),
            (
                b"SIP/2.0 200 OK\r\nl: 2\r\nContent-Length: 02\r\n\r\nab",
                1000,
                Frame::Message { len: 46 },
            ),
            (
                b"SIP/2.0 200 OK\r\nl: -1\r\n\r\n",
                1000,
                Frame::Invalid(ScanError::BadContentLength),
            ),
            (
                b"SIP/2.0 200 OK\r\nl: 1x\r\n\r\n",
                1000,
                Frame::Invalid(ScanError::BadContentLength),
            ),
            (
                b"SIP/2.0 200 OK\r\nl: 99999999999999999999999\r\n\r\n",
                1000,
                Frame::Invalid(ScanError::BadContentLength),
            ),
            (b"SIP/2.0 200 OK\r\nl: 2000\r\n\r\n", 1000, Frame::TooLarge),
            (b"SIP/2.0 200 OK\r\nl: 10\r\n\r\n", 30, Frame::TooLarge),
            (
                b"SIP/2.0 200 OK\r\nX-Long: aaaaaaaaaaaaaaaaaaaaaaa",
                30,
                Frame::TooLarge,
            ),
            (b"SIP/2.0 200 OK\r\nX-Long: aaaa", 30, Frame::Incomplete),
            (
                b"SIP/2.0 200 OK\r\nX-Content-Length: 5\r\nl:0\r\n\r\n",
                1000,
                Frame::Message { len: 44 },
            ),
        ];
        for &(buf, max, expected) in cases {
            check(buf, max, expected);
        }
    }

    /// Consumes a stream the way a connection does, returning what was found.
    fn drain(framer: &mut Framer, buf: &mut Vec<u8>, out: &mut Vec<Frame>) {
        loop {
            let f = framer.frame(buf);
            match f {
                Frame::Message { len } | Frame::Ping { len } | Frame::Pong { len } => {
                    out.push(f);
                    buf.drain(..len);
                }
                Frame::Incomplete => return,
                Frame::TooLarge | Frame::Invalid(_) => {
                    out.push(f);
                    return;
                }
            }
        }
    }

    #[test]
    fn several_messages_in_one_read_and_byte_by_byte() {
        let ok = b"SIP/2.0 200 OK\r\nl: 3\r\n\r\nabc";
        let mut stream = Vec::new();
        stream.extend_from_slice(INVITE);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(ok);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(INVITE);
        let expected = vec![
            Frame::Message { len: INVITE.len() },
            Frame::Ping { len: 4 },
            Frame::Message { len: ok.len() },
            Frame::Pong { len: 2 },
            Frame::Message { len: INVITE.len() },
        ];

        let mut framer = Framer::new(1000);
        let (mut buf, mut got) = (stream.clone(), Vec::new());
        drain(&mut framer, &mut buf, &mut got);
        assert_eq!(got, expected);
        assert!(buf.is_empty());

        for chunk in [1, 2, 3, 7, 50] {
            let mut framer = Framer::new(1000);
            let (mut buf, mut got) = (Vec::new(), Vec::new());
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                drain(&mut framer, &mut buf, &mut got);
            }
            assert_eq!(got, expected, "chunk size {chunk}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn endless_header_section_is_cut_at_the_limit() {
        let mut framer = Framer::new(64);
        let mut buf = b"INVITE sip:x SIP/2.0\r\n".to_vec();
        let mut answer = framer.frame(&buf);
        while answer == Frame::Incomplete {
            buf.extend_from_slice(b"X: y\r\n");
            answer = framer.frame(&buf);
        }
        assert_eq!(answer, Frame::TooLarge);
        assert!(buf.len() < 64 + 6);
    }

    /// Bounded pseudo-random streams: framing never panics, never claims more bytes than the
    /// buffer holds, and every message it cuts scans or is refused without a panic.
    #[test]
    fn random_streams_never_panic() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pieces: [&[u8]; 8] = [
            b"\r\n",
            b"\r\n\r\n",
            b"l: 3\r\n",
            b"Content-Length: 99999\r\n",
            b"\r",
            b"abc",
            INVITE,
            b"l:x\r\n",
        ];
        for _ in 0..5_000 {
            let mut stream = Vec::new();
            for _ in 0..(next() % 6) {
                stream.extend_from_slice(pieces[(next() % 8) as usize]);
            }
            let mut framer = Framer::new(200);
            let mut buf = Vec::new();
            for chunk in stream.chunks((next() % 17 + 1) as usize) {
                buf.extend_from_slice(chunk);
                loop {
                    match framer.frame(&buf) {
                        Frame::Message { len } => {
                            assert!(len <= buf.len() && len <= 200);
                            let _ = crate::scan::parse(&buf[..len]);
                            buf.drain(..len);
                        }
                        Frame::Ping { len } | Frame::Pong { len } => {
                            buf.drain(..len);
                        }
                        Frame::Incomplete => break,
                        Frame::TooLarge | Frame::Invalid(_) => {
                            buf.clear();
                            framer = Framer::new(200);
                            break;
                        }
                    }
                }
            }
        }
    }
}
