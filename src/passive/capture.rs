//! Reading pcap and pcapng files (pcap-parser) into SIP messages: each frame is decoded
//! ([`super::packet`]), UDP payloads are messages as they are, and TCP streams are put back
//! together in sequence order and cut into messages by the relay's own framing
//! ([`sipedge_sip::frame::Framer`]), so a message split across segments, or several in one,
//! come out as the proxy would have read them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_parser::pcapng::Block;
use pcap_parser::{PcapBlockOwned, PcapError, create_reader};
use sipedge_sip::flow::Transport;
use sipedge_sip::frame::{Frame, Framer};

use super::packet::{self, Link, Payload};

/// Read buffer; grown up to [`MAX_BUFFER`] for a capture with jumbo frames.
const BUFFER: usize = 1 << 20;
const MAX_BUFFER: usize = 64 << 20;

/// TCP streams followed at once; a capture with more open connections than this has the
/// newest ones skipped and counted (each costs its buffered bytes).
const MAX_STREAMS: usize = 65_536;

/// One SIP message (or what may be one) as it crossed the wire.
#[derive(Debug, Clone, Copy)]
pub struct Wire<'a> {
    /// The capture time of the datagram, or of the segment that completed the message.
    pub at: SystemTime,
    pub transport: Transport,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub bytes: &'a [u8],
}

/// What the reader hands its messages to.
pub trait Handler {
    /// Whether packets between these ends are followed at all (others are counted by the
    /// handler and cost no reassembly).
    fn wanted(&mut self, src: SocketAddr, dst: SocketAddr) -> bool;
    fn message(&mut self, wire: Wire<'_>);
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a pcap or pcapng capture")]
    NotACapture { path: String },
    #[error("{path} is damaged after byte {offset}: {reason}")]
    Damaged {
        path: String,
        offset: usize,
        reason: String,
    },
}

/// Counts of what the reader saw and skipped, summed over files.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// Packet records read.
    pub packets: u64,
    /// Skipped packets (and stream bytes) by reason.
    pub skipped: BTreeMap<&'static str, u64>,
}

impl ReadCounts {
    pub fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }
}

/// One direction of a TCP connection.
#[derive(Debug)]
struct Stream {
    /// The sequence number the next byte should have.
    next: u32,
    /// Bytes not yet framed.
    buf: Vec<u8>,
    framer: Framer,
}

/// The reader's state across files: streams cut by a file rotation continue in the next.
#[derive(Debug)]
pub struct Reader {
    max_message_bytes: usize,
    streams: HashMap<(SocketAddr, SocketAddr), Stream>,
    pub counts: ReadCounts,
}

/// Interface of a pcapng section: link type, time units per second, offset in seconds.
#[derive(Debug, Clone, Copy)]
struct Interface {
    link: Option<Link>,
    resolution: u64,
    offset: i64,
}

impl Reader {
    /// A reader framing TCP messages of at most `max_message_bytes` (`sip.max_message_bytes`).
    pub fn new(max_message_bytes: usize) -> Reader {
        Reader {
            max_message_bytes,
            streams: HashMap::new(),
            counts: ReadCounts::default(),
        }
    }

    /// Reads one file, handing every message to `handler`; `progress` gets the bytes read
    /// so far. A file cut mid-record (a capture still being written, a copy stopped early)
    /// is read up to its last whole record and the cut is counted, not an error.
    pub fn read(
        &mut self,
        path: &Path,
        handler: &mut dyn Handler,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), CaptureError> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|source| CaptureError::Open {
            path: name.clone(),
            source,
        })?;
        let mut reader = match create_reader(BUFFER, BufReader::new(file)) {
            Ok(r) => r,
            Err(PcapError::ReadError) => {
                return Err(CaptureError::Open {
                    path: name,
                    source: std::io::Error::other("read failed"),
                });
            }
            Err(_) => return Err(CaptureError::NotACapture { path: name }),
        };
        let mut capacity = BUFFER;
        let mut legacy: Option<(Option<Link>, bool)> = None;
        let mut interfaces: Vec<Interface> = Vec::new();
        let mut consumed = 0u64;
        loop {
            match reader.next() {
                Ok((offset, block)) => {
                    match block {
                        PcapBlockOwned::LegacyHeader(h) => {
                            legacy = Some((
                                Link::from_linktype(h.network.0),
                                h.is_nanosecond_precision(),
                            ));
                        }
                        PcapBlockOwned::Legacy(b) => {
                            let (link, nanos) = legacy.unwrap_or((None, false));
                            let sub = if nanos {
                                b.ts_usec
                            } else {
                                b.ts_usec.saturating_mul(1000)
                            };
                            let at = UNIX_EPOCH
                                + Duration::new(u64::from(b.ts_sec), sub.min(999_999_999));
                            self.frame(link, at, b.caplen < b.origlen, b.data, handler);
                        }
                        PcapBlockOwned::NG(Block::SectionHeader(_)) => interfaces.clear(),
                        PcapBlockOwned::NG(Block::InterfaceDescription(idb)) => {
                            interfaces.push(Interface {
                                link: Link::from_linktype(idb.linktype.0),
                                resolution: idb.ts_resolution().unwrap_or(1_000_000).max(1),
                                offset: idb.ts_offset(),
                            });
                        }
                        PcapBlockOwned::NG(Block::EnhancedPacket(epb)) => {
                            let Some(iface) = usize::try_from(epb.if_id)
                                .ok()
                                .and_then(|i| interfaces.get(i).copied())
                            else {
                                self.counts.packets += 1;
                                self.counts.skip("unknown_interface");
                                reader.consume(offset);
                                continue;
                            };
                            let ts = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                            let secs = (ts / iface.resolution).saturating_add_signed(iface.offset);
                            let frac = u128::from(ts % iface.resolution) * 1_000_000_000
                                / u128::from(iface.resolution);
                            let at =
                                UNIX_EPOCH + Duration::new(secs, u32::try_from(frac).unwrap_or(0));
                            let caplen = usize::try_from(epb.caplen).unwrap_or(usize::MAX);
                            let data = epb.data.get(..caplen).unwrap_or(epb.data);
                            self.frame(iface.link, at, epb.caplen < epb.origlen, data, handler);
                        }
                        PcapBlockOwned::NG(Block::SimplePacket(_)) => {
                            // No interface time: nothing of a call can be dated from it.
                            self.counts.packets += 1;
                            self.counts.skip("no_timestamp");
                        }
                        PcapBlockOwned::NG(_) => {}
                    }
                    consumed += offset as u64;
                    progress(consumed);
                    reader.consume(offset);
                }
                Err(PcapError::Eof) => break,
                Err(PcapError::Incomplete(_)) => {
                    if reader.refill().is_err() {
                        return Err(CaptureError::Damaged {
                            path: name,
                            offset: reader.consumed(),
                            reason: "read failed".into(),
                        });
                    }
                }
                Err(PcapError::UnexpectedEof) => {
                    self.counts.skip("cut_record");
                    break;
                }
                Err(PcapError::BufferTooSmall) if capacity < MAX_BUFFER => {
                    capacity *= 4;
                    if !reader.grow(capacity) || reader.refill().is_err() {
                        return Err(CaptureError::Damaged {
                            path: name,
                            offset: reader.consumed(),
                            reason: "a record is too large to read".into(),
                        });
                    }
                }
                Err(e) => {
                    let reason: String = format!("{e:?}").chars().take(120).collect();
                    return Err(CaptureError::Damaged {
                        path: name,
                        offset: usize::try_from(consumed).unwrap_or(usize::MAX),
                        reason,
                    });
                }
            }
        }
        Ok(())
    }

    fn frame(
        &mut self,
        link: Option<Link>,
        at: SystemTime,
        snapped: bool,
        data: &[u8],
        handler: &mut dyn Handler,
    ) {
        self.counts.packets += 1;
        let Some(link) = link else {
            self.counts.skip("unsupported_link_type");
            return;
        };
        if snapped {
            // Cut by the capture's snap length: the SIP text is incomplete.
            self.counts.skip("snapped");
            return;
        }
        let pkt = match packet::decode(link, data) {
            Ok(p) => p,
            Err(skip) => {
                self.counts.skip(skip.name());
                return;
            }
        };
        if !handler.wanted(pkt.src, pkt.dst) {
            return;
        }
        match pkt.payload {
            Payload::Udp(bytes) => handler.message(Wire {
                at,
                transport: Transport::Udp,
                src: pkt.src,
                dst: pkt.dst,
                bytes,
            }),
            Payload::Tcp {
                seq,
                syn,
                end,
                data,
            } => self.segment(at, pkt.src, pkt.dst, seq, syn, end, data, handler),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn segment(
        &mut self,
        at: SystemTime,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        syn: bool,
        end: bool,
        data: &[u8],
        handler: &mut dyn Handler,
    ) {
        let key = (src, dst);
        // A SYN takes one sequence number before the first data byte.
        let first = if syn { seq.wrapping_add(1) } else { seq };
        if syn || !self.streams.contains_key(&key) {
            if !syn && data.is_empty() {
                // A bare ACK of a stream not followed: nothing to start from.
                return;
            }
            if self.streams.len() >= MAX_STREAMS && !self.streams.contains_key(&key) {
                self.counts.skip("tcp_streams_full");
                return;
            }
            self.streams.insert(
                key,
                Stream {
                    next: first,
                    buf: Vec::new(),
                    framer: Framer::new(self.max_message_bytes),
                },
            );
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let gap = first.wrapping_sub(stream.next) as i32;
        let new = if gap == 0 {
            data
        } else if gap < 0 {
            // A retransmission, whole or overlapping what is already held.
            let seen = gap.unsigned_abs() as usize;
            data.get(seen..).unwrap_or_default()
        } else {
            // Bytes are missing (lost by the capture): what was held cannot be framed past
            // the hole, so the stream starts over at this segment.
            self.counts.skip("tcp_gap");
            stream.buf.clear();
            stream.framer = Framer::new(self.max_message_bytes);
            data
        };
        stream.next = stream
            .next
            .wrapping_add(gap.max(0) as u32)
            .wrapping_add(new.len() as u32);
        stream.buf.extend_from_slice(new);
        let mut start = 0;
        loop {
            match stream.framer.frame(&stream.buf[start..]) {
                Frame::Message { len } => {
                    handler.message(Wire {
                        at,
                        transport: Transport::Tcp,
                        src,
                        dst,
                        bytes: &stream.buf[start..start + len],
                    });
                    start += len;
                }
                Frame::Ping { len } | Frame::Pong { len } => start += len,
                Frame::Incomplete => break,
                Frame::TooLarge | Frame::Invalid(_) => {
                    // The proxy closes such a connection; the rest of it is not SIP it read.
                    self.counts.skip("tcp_unframed");
                    start = stream.buf.len();
                    break;
                }
            }
        }
        stream.buf.drain(..start);
        if end {
            if !stream.buf.is_empty() {
                self.counts.skip("tcp_incomplete_at_close");
            }
            self.streams.remove(&key);
        }
    }

    /// Streams that ended with a message still incomplete are counted once the last file is
    /// read.
    pub fn finish(&mut self) {
        let open = self.streams.values().filter(|s| !s.buf.is_empty()).count();
        for _ in 0..open {
            self.counts.skip("tcp_incomplete_at_end");
        }
        self.streams.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<String>);

    impl Handler for Collect {
        fn wanted(&mut self, _: SocketAddr, _: SocketAddr) -> bool {
            true
        }
        fn message(&mut self, wire: Wire<'_>) {
            self.0
                .push(String::from_utf8_lossy(wire.bytes).into_owned());
        }
    }

    const M1: &str = "OPTIONS sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\nhi";
    const M2: &str = "OPTIONS sip:b SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    /// A segment: sequence number (relative to the SYN's 0, data from 1), FIN, data.
    type Seg = (u32, bool, &'static str);
    /// Name, segments, messages framed, skips counted.
    type Case = (
        &'static str,
        Vec<Seg>,
        Vec<&'static str>,
        Vec<(&'static str, u64)>,
    );

    #[test]
    fn streams_are_put_back_together() {
        let m1_len = M1.len() as u32;
        let both: &'static str = Box::leak(format!("{M1}{M2}").into_boxed_str());
        let cases: Vec<Case> = vec![
            ("whole", vec![(1, false, M1)], vec![M1], vec![]),
            (
                "split in three",
                vec![
                    (1, false, &M1[..5]),
                    (6, false, &M1[5..20]),
                    (21, false, &M1[20..]),
                ],
                vec![M1],
                vec![],
            ),
            ("two in one", vec![(1, false, both)], vec![M1, M2], vec![]),
            (
                "retransmission overlapping what is held",
                vec![(1, false, &M1[..10]), (6, false, &M1[5..])],
                vec![M1],
                vec![],
            ),
            (
                "whole retransmission",
                vec![(1, false, M1), (1, false, M1), (1 + m1_len, false, M2)],
                vec![M1, M2],
                vec![],
            ),
            (
                "keep-alive between messages",
                vec![
                    (1, false, M1),
                    (1 + m1_len, false, "\r\n\r\n"),
                    (5 + m1_len, false, M2),
                ],
                vec![M1, M2],
                vec![],
            ),
            (
                "a hole: the stream starts over",
                vec![(1, false, &M1[..10]), (1 + m1_len, false, M2)],
                vec![M2],
                vec![("tcp_gap", 1)],
            ),
            (
                "closed mid-message",
                vec![(1, true, &M1[..10])],
                vec![],
                vec![("tcp_incomplete_at_close", 1)],
            ),
            (
                "no Content-Length on a stream",
                vec![(1, false, "OPTIONS sip:a SIP/2.0\r\n\r\n")],
                vec![],
                vec![("tcp_unframed", 1)],
            ),
        ];
        let a: SocketAddr = "192.0.2.1:5060".parse().expect("a");
        let b: SocketAddr = "192.0.2.2:14500".parse().expect("b");
        for (name, segments, want, skipped) in cases {
            let mut reader = Reader::new(4096);
            let mut got = Collect::default();
            let isn = 4_294_967_000u32;
            reader.segment(UNIX_EPOCH, a, b, isn, true, false, b"", &mut got);
            for (seq, fin, data) in segments {
                let seq = isn.wrapping_add(seq);
                reader.segment(UNIX_EPOCH, a, b, seq, false, fin, data.as_bytes(), &mut got);
            }
            assert_eq!(got.0, want, "{name}");
            let want_skipped: BTreeMap<&str, u64> = skipped.into_iter().collect();
            assert_eq!(reader.counts.skipped, want_skipped, "{name}");
        }
    }
}
