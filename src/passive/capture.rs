//! Reading pcap and pcapng files (pcap-parser) into SIP messages: each frame is decoded
//! ([`super::packet`]), UDP payloads are messages as they are, and TCP streams are put back
//! together in sequence order and cut into messages by the relay's own framing
//! ([`sipedge_sip::frame::Framer`]), so a message split across segments, or several in one,
//! come out as the proxy would have read them. IP fragments are put back together first
//! ([`super::defrag`]). Segments a mirror port reordered are held until the bytes before them
//! arrive, as the receiving kernel holds them, and retransmitted bytes are read once.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pcap_parser::pcapng::Block;
use pcap_parser::{PcapBlockOwned, PcapError, create_reader};
use sipedge_sip::flow::Transport;
use sipedge_sip::frame::{Frame, Framer};

use super::defrag::Defrag;
use super::packet::{self, Decoded, Link, Packet, Payload};

/// Read buffer; grown up to [`MAX_BUFFER`] for a capture with jumbo frames.
const BUFFER: usize = 1 << 20;
const MAX_BUFFER: usize = 64 << 20;

/// TCP streams followed at once; a capture with more open connections than this has the
/// newest ones skipped and counted (each costs its buffered bytes).
const MAX_STREAMS: usize = 65_536;

/// Bytes held ahead of a hole in one direction: a receive window of Linux's default size,
/// which is as far ahead as a sender may be.
const MAX_AHEAD_BYTES: usize = 256 << 10;
/// Segments held ahead of a hole in one direction (each is a scan when the hole fills).
const MAX_AHEAD_SEGMENTS: usize = 256;
/// Bytes held ahead of holes over all streams.
const MAX_AHEAD_TOTAL: usize = 64 << 20;
/// Capture time a hole is waited for: a retransmission after a lost segment comes within a
/// few retransmission timeouts (200 ms at least, doubling); a segment the capture itself
/// lost never does.
const HOLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Capture time a closed stream's end is remembered: its last segments (a FIN's own data
/// among them) are retransmitted within a few retransmission timeouts of the close, and a
/// Linux sender's TIME_WAIT is 60 s.
const CLOSED_FOR: Duration = Duration::from_secs(60);

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

/// One direction of a TCP connection, by its source and destination.
type Key = (SocketAddr, SocketAddr);

/// One direction of a TCP connection.
#[derive(Debug)]
struct Stream {
    /// The sequence number of the first byte followed (a SYN's ISN + 1, or the first data
    /// segment's when the SYN was not seen): a SYN giving it again is the opening SYN
    /// retransmitted, or reordered after the first data, and must not start the stream over.
    start: u32,
    /// The sequence number the next byte should have.
    next: u32,
    /// Bytes not yet framed.
    buf: Vec<u8>,
    framer: Framer,
    /// Segments past a hole, in arrival order.
    ahead: Vec<Ahead>,
    ahead_bytes: usize,
    /// [`HOLE_TIMEOUT`] after the oldest held segment, as entered in [`Reader::deadlines`].
    deadline: Option<SystemTime>,
}

/// A segment that arrived before the bytes preceding it.
#[derive(Debug)]
struct Ahead {
    at: SystemTime,
    seq: u32,
    end: bool,
    data: Vec<u8>,
}

/// Where a segment starting at `seq` lies from `next`: negative when it starts with bytes
/// already read. Sequence numbers wrap (RFC 9293 §3.4), so the distance is taken modulo 2^32.
fn distance(seq: u32, next: u32) -> i32 {
    seq.wrapping_sub(next) as i32
}

/// The reader's state across files: streams cut by a file rotation continue in the next.
#[derive(Debug)]
pub struct Reader {
    max_message_bytes: usize,
    streams: HashMap<Key, Stream>,
    /// Bytes held ahead of holes over all streams.
    ahead_total: usize,
    /// The deadline of every stream holding segments, soonest first. A hole is given up when
    /// capture time passes it on any stream, not only its own: a stream that went quiet
    /// (its FIN may be among the held segments) would otherwise keep its messages from the
    /// tracker, and its bytes from the shared budget, until the capture ends.
    deadlines: BTreeSet<(SystemTime, Key)>,
    /// Where each stream closed by a FIN or RST ended, and when: a retransmission of its last
    /// bytes would otherwise start a stream of its own and be read again.
    closed: HashMap<Key, (u32, SystemTime)>,
    /// The entries of `closed`, oldest first, to forget them (at most [`MAX_STREAMS`]).
    closed_order: VecDeque<(SystemTime, Key)>,
    defrag: Defrag,
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
            ahead_total: 0,
            deadlines: BTreeSet::new(),
            closed: HashMap::new(),
            closed_order: VecDeque::new(),
            defrag: Defrag::new(),
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
                            let since = Duration::new(secs, u32::try_from(frac).unwrap_or(0));
                            // Seconds as the unit, or a large offset, reach past the clock.
                            if let Some(at) = UNIX_EPOCH.checked_add(since) {
                                let caplen = usize::try_from(epb.caplen).unwrap_or(usize::MAX);
                                let data = epb.data.get(..caplen).unwrap_or(epb.data);
                                let snapped = epb.caplen < epb.origlen;
                                self.frame(iface.link, at, snapped, data, handler);
                            } else {
                                self.counts.packets += 1;
                                self.counts.skip("time_out_of_range");
                            }
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
        // Before this packet: the held messages are older than its own.
        self.expire(at, handler);
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
            Ok(Decoded::Packet(p)) => p,
            Ok(Decoded::Fragment(f)) => {
                let counts = &mut self.counts;
                let Some(payload) = self
                    .defrag
                    .insert(at, &f, &mut |skip| counts.skip(skip.name()))
                else {
                    return;
                };
                match packet::reassembled(f.proto, f.src, f.dst, &payload) {
                    Ok(p) => return self.packet(at, p, handler),
                    Err(skip) => {
                        self.counts.skip(skip.name());
                        return;
                    }
                }
            }
            Err(skip) => {
                self.counts.skip(skip.name());
                return;
            }
        };
        self.packet(at, pkt, handler);
    }

    fn packet(&mut self, at: SystemTime, pkt: Packet<'_>, handler: &mut dyn Handler) {
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
        let known = self.streams.get(&key).map(|s| s.start);
        if known.is_none_or(|start| syn && start != first) {
            if !syn && data.is_empty() {
                // A bare ACK of a stream not followed: nothing to start from.
                return;
            }
            if syn {
                self.closed.remove(&key);
            } else if self
                .closed
                .get(&key)
                .is_some_and(|&(end, _)| distance(first.wrapping_add(data.len() as u32), end) <= 0)
            {
                return;
            }
            if let Some(old) = self.streams.remove(&key) {
                // A new connection on the same ports: the old one closed unseen.
                self.close(key, old, "tcp_incomplete_at_close", handler);
            } else if self.streams.len() >= MAX_STREAMS {
                self.counts.skip("tcp_streams_full");
                return;
            }
            let stream = Stream {
                start: first,
                next: first,
                buf: Vec::new(),
                framer: Framer::new(self.max_message_bytes),
                ahead: Vec::new(),
                ahead_bytes: 0,
                deadline: None,
            };
            self.streams.insert(key, stream);
        }
        let Some(stream) = self.streams.get_mut(&key) else {
            return;
        };
        let mut out = Out {
            counts: &mut self.counts,
            handler,
            src,
            dst,
            max_message_bytes: self.max_message_bytes,
        };
        let held_before = stream.ahead_bytes;
        let gap = distance(first, stream.next);
        let mut open = true;
        if gap <= 0 {
            open = out.deliver(stream, at, first, data, end);
            if open {
                open = out.splice(stream, Some(at));
            }
        } else if data.is_empty() && !end {
            // A bare ACK ahead of a hole says nothing the held data does not.
        } else {
            let covered = stream.ahead.iter().any(|h| {
                let from = distance(first, h.seq);
                from >= 0 && from as usize + data.len() <= h.data.len() && (h.end || !end)
            });
            let far = gap as usize + data.len() > MAX_AHEAD_BYTES;
            if !covered {
                stream.ahead.push(Ahead {
                    at,
                    seq: first,
                    end,
                    data: data.to_vec(),
                });
                stream.ahead_bytes += data.len();
            }
            let full = stream.ahead_bytes > MAX_AHEAD_BYTES
                || stream.ahead.len() > MAX_AHEAD_SEGMENTS
                || self.ahead_total + stream.ahead_bytes - held_before > MAX_AHEAD_TOTAL;
            if far || full {
                open = out.give_up(stream);
            }
        }
        self.ahead_total = self.ahead_total + stream.ahead_bytes - held_before;
        let deadline = if open {
            let oldest = stream.ahead.iter().map(|h| h.at).min();
            oldest.and_then(|t| t.checked_add(HOLE_TIMEOUT))
        } else {
            self.ahead_total -= stream.ahead_bytes;
            None
        };
        if deadline != stream.deadline {
            if let Some(d) = stream.deadline {
                self.deadlines.remove(&(d, key));
            }
            if let Some(d) = deadline {
                self.deadlines.insert((d, key));
            }
            stream.deadline = deadline;
        }
        if !open {
            let end = stream.next;
            self.streams.remove(&key);
            self.remember_closed(key, end, at);
        }
    }

    fn remember_closed(&mut self, key: Key, end: u32, at: SystemTime) {
        if self.closed_order.len() >= MAX_STREAMS {
            self.forget_oldest_closed();
        }
        self.closed.insert(key, (end, at));
        self.closed_order.push_back((at, key));
    }

    fn forget_oldest_closed(&mut self) {
        if let Some((at, key)) = self.closed_order.pop_front() {
            // A later close of the same ports has an entry of its own.
            if self.closed.get(&key).is_some_and(|&(_, t)| t == at) {
                self.closed.remove(&key);
            }
        }
    }

    /// Forgets the streams closed [`CLOSED_FOR`] before `now`, and gives up the holes of
    /// every stream whose deadline `now` has passed, soonest first: a look at the oldest
    /// entry of each for a packet, plus the work of what is forgotten or given up.
    fn expire(&mut self, now: SystemTime, handler: &mut dyn Handler) {
        while self
            .closed_order
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at).is_ok_and(|age| age > CLOSED_FOR))
        {
            self.forget_oldest_closed();
        }
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline >= now {
                break;
            }
            self.deadlines.pop_first();
            let Some(stream) = self.streams.get_mut(&key) else {
                continue;
            };
            stream.deadline = None;
            self.ahead_total -= stream.ahead_bytes;
            let mut out = Out {
                counts: &mut self.counts,
                handler,
                src: key.0,
                dst: key.1,
                max_message_bytes: self.max_message_bytes,
            };
            if !out.give_up(stream) {
                let end = stream.next;
                self.streams.remove(&key);
                self.remember_closed(key, end, now);
            }
        }
    }

    /// Ends a stream no more segments will be read for: its holes are given up and a
    /// message still incomplete is counted under `incomplete`.
    fn close(
        &mut self,
        key: Key,
        mut stream: Stream,
        incomplete: &'static str,
        handler: &mut dyn Handler,
    ) {
        if let Some(d) = stream.deadline {
            self.deadlines.remove(&(d, key));
        }
        self.ahead_total -= stream.ahead_bytes;
        let mut out = Out {
            counts: &mut self.counts,
            handler,
            src: key.0,
            dst: key.1,
            max_message_bytes: self.max_message_bytes,
        };
        if !stream.ahead.is_empty() && !out.give_up(&mut stream) {
            return;
        }
        if !stream.buf.is_empty() {
            self.counts.skip(incomplete);
        }
    }

    /// Once the last file is read: holes still waited for are given up (their data framed
    /// and dated by its own segments), and streams that ended with a message still
    /// incomplete are counted.
    pub fn finish(&mut self, handler: &mut dyn Handler) {
        let counts = &mut self.counts;
        self.defrag.finish(&mut |skip| counts.skip(skip.name()));
        for (key, stream) in std::mem::take(&mut self.streams) {
            self.close(key, stream, "tcp_incomplete_at_end", handler);
        }
    }
}

/// What framing a stream's bytes needs besides the stream.
struct Out<'r, 'h> {
    counts: &'r mut ReadCounts,
    handler: &'h mut dyn Handler,
    src: SocketAddr,
    dst: SocketAddr,
    max_message_bytes: usize,
}

impl Out<'_, '_> {
    /// Reads a segment starting at or before `stream.next`, trimming the bytes already read;
    /// false when it ends the stream.
    fn deliver(
        &mut self,
        stream: &mut Stream,
        at: SystemTime,
        seq: u32,
        data: &[u8],
        end: bool,
    ) -> bool {
        let seen = distance(seq, stream.next).unsigned_abs() as usize;
        let new = data.get(seen..).unwrap_or_default();
        stream.next = stream.next.wrapping_add(new.len() as u32);
        stream.buf.extend_from_slice(new);
        let mut start = 0;
        loop {
            match stream.framer.frame(&stream.buf[start..]) {
                Frame::Message { len } => {
                    self.handler.message(Wire {
                        at,
                        transport: Transport::Tcp,
                        src: self.src,
                        dst: self.dst,
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
            return false;
        }
        true
    }

    /// Reads the held segments the stream has reached, dated `at` (when they became
    /// readable) or, given `None`, each by its own capture time; false when one ends the
    /// stream.
    fn splice(&mut self, stream: &mut Stream, at: Option<SystemTime>) -> bool {
        while let Some(i) = stream
            .ahead
            .iter()
            .position(|h| distance(h.seq, stream.next) <= 0)
        {
            let held = stream.ahead.swap_remove(i);
            stream.ahead_bytes -= held.data.len();
            if !self.deliver(
                stream,
                at.unwrap_or(held.at),
                held.seq,
                &held.data,
                held.end,
            ) {
                return false;
            }
        }
        true
    }

    /// Gives up the holes before the held segments: what was waiting before each cannot be
    /// framed past it, so the stream starts over at the next held byte (counted `tcp_gap`),
    /// each segment dated by its own capture time. False when one ends the stream.
    fn give_up(&mut self, stream: &mut Stream) -> bool {
        while let Some(nearest) = stream
            .ahead
            .iter()
            .min_by_key(|h| distance(h.seq, stream.next))
            .map(|h| h.seq)
        {
            self.counts.skip("tcp_gap");
            stream.buf.clear();
            stream.framer = Framer::new(self.max_message_bytes);
            stream.next = nearest;
            if !self.splice(stream, None) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages framed, each with its capture time in seconds.
    #[derive(Default)]
    struct Collect(Vec<(u64, String)>);

    impl Handler for Collect {
        fn wanted(&mut self, _: SocketAddr, _: SocketAddr) -> bool {
            true
        }
        fn message(&mut self, wire: Wire<'_>) {
            let secs = wire
                .at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.0
                .push((secs, String::from_utf8_lossy(wire.bytes).into_owned()));
        }
    }

    const M1: &str = "OPTIONS sip:a SIP/2.0\r\nContent-Length: 2\r\n\r\nhi";
    const M2: &str = "OPTIONS sip:b SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    /// The flags of a [`Seg`].
    const DATA: u8 = 0;
    const FIN: u8 = 1;
    const SYN: u8 = 2;

    /// A segment: capture time in seconds, sequence number (relative to the opening SYN's
    /// 0, data from 1), flags, data.
    type Seg = (u64, u32, u8, &'static str);

    /// Sends a segment of the stream `key` opened at `isn` as [`Reader::frame`] would.
    fn send(reader: &mut Reader, got: &mut Collect, key: Key, isn: u32, seg: Seg) {
        let (secs, seq, flags, data) = seg;
        let at = UNIX_EPOCH + Duration::from_secs(secs);
        let seq = isn.wrapping_add(seq);
        reader.expire(at, got);
        let (syn, fin) = (flags == SYN, flags == FIN);
        reader.segment(at, key.0, key.1, seq, syn, fin, data.as_bytes(), got);
    }

    /// Name, segments, messages framed (with their times) once the capture ends, skips.
    type Case = (
        &'static str,
        Vec<Seg>,
        Vec<(u64, &'static str)>,
        Vec<(&'static str, u64)>,
    );

    #[test]
    fn streams_are_put_back_together() {
        let m1 = M1.len() as u32;
        let m2 = M2.len() as u32;
        let both: &'static str = Box::leak(format!("{M1}{M2}").into_boxed_str());
        let cases: Vec<Case> = vec![
            ("whole", vec![(0, 1, DATA, M1)], vec![(0, M1)], vec![]),
            (
                "split in three",
                vec![
                    (0, 1, DATA, &M1[..5]),
                    (1, 6, DATA, &M1[5..20]),
                    (2, 21, DATA, &M1[20..]),
                ],
                vec![(2, M1)],
                vec![],
            ),
            (
                "two in one",
                vec![(0, 1, DATA, both)],
                vec![(0, M1), (0, M2)],
                vec![],
            ),
            (
                "retransmission overlapping what is held",
                vec![(0, 1, DATA, &M1[..10]), (1, 6, DATA, &M1[5..])],
                vec![(1, M1)],
                vec![],
            ),
            (
                "whole retransmission",
                vec![(0, 1, DATA, M1), (1, 1, DATA, M1), (2, 1 + m1, DATA, M2)],
                vec![(0, M1), (2, M2)],
                vec![],
            ),
            (
                "keep-alive between messages",
                vec![
                    (0, 1, DATA, M1),
                    (1, 1 + m1, DATA, "\r\n\r\n"),
                    (2, 5 + m1, DATA, M2),
                ],
                vec![(0, M1), (2, M2)],
                vec![],
            ),
            (
                "reversed pair across the 2^32 wrap: read when the first arrives",
                vec![(0, 11, DATA, &M1[10..]), (1, 1, DATA, &M1[..10])],
                vec![(1, M1)],
                vec![],
            ),
            (
                "reordered, a segment ahead retransmitted and one overlapping both sides",
                vec![
                    (0, 1 + m1, DATA, M2),
                    (1, 21, DATA, &M1[20..]),
                    (2, 1 + m1, DATA, M2),
                    (3, 11, DATA, &M1[10..30]),
                    (4, 1, DATA, &M1[..15]),
                ],
                vec![(4, M1), (4, M2)],
                vec![],
            ),
            (
                "FIN ahead of the last data",
                vec![(0, 11, FIN, &M1[10..]), (1, 1, DATA, &M1[..10])],
                vec![(1, M1)],
                vec![],
            ),
            (
                "a hole that never fills is given up at the end, dated by its segments",
                vec![(0, 1, DATA, &M1[..10]), (1, 1 + m1, DATA, M2)],
                vec![(1, M2)],
                vec![("tcp_gap", 1)],
            ),
            (
                "a hole is given up after 5 s of capture time",
                vec![
                    (0, 1, DATA, &M1[..10]),
                    (1, 1 + m1, DATA, M2),
                    (7, 1 + m1 + m2, DATA, M2),
                ],
                vec![(1, M2), (7, M2)],
                vec![("tcp_gap", 1)],
            ),
            (
                "a segment further ahead than a window is a hole at once",
                vec![(0, 1, DATA, &M1[..10]), (1, 1 + 300_000, DATA, M2)],
                vec![(1, M2)],
                vec![("tcp_gap", 1)],
            ),
            (
                "closed mid-message",
                vec![(0, 1, FIN, &M1[..10])],
                vec![],
                vec![("tcp_incomplete_at_close", 1)],
            ),
            (
                "open mid-message at the end",
                vec![(0, 1, DATA, &M1[..10])],
                vec![],
                vec![("tcp_incomplete_at_end", 1)],
            ),
            (
                "no Content-Length on a stream",
                vec![(0, 1, DATA, "OPTIONS sip:a SIP/2.0\r\n\r\n")],
                vec![],
                vec![("tcp_unframed", 1)],
            ),
            (
                "a retransmission after the FIN is not read again",
                vec![(0, 1, FIN, M1), (1, 1, FIN, M1), (2, 6, DATA, &M1[5..])],
                vec![(0, M1)],
                vec![],
            ),
            (
                "data past a closed stream's end is a stream of its own",
                vec![(0, 1, FIN, M1), (1, 1 + m1 + 100, DATA, M2)],
                vec![(0, M1), (1, M2)],
                vec![],
            ),
            (
                "a closed stream is forgotten after a minute",
                vec![(0, 1, FIN, M1), (61, 1, DATA, M1)],
                vec![(0, M1), (61, M1)],
                vec![],
            ),
            (
                "the SYN retransmitted keeps what is read and held",
                vec![
                    (0, 1, DATA, &M1[..10]),
                    (1, 21, DATA, &M1[20..]),
                    (2, 0, SYN, ""),
                    (3, 11, DATA, &M1[10..20]),
                    (4, 1, DATA, &M1[..10]),
                ],
                vec![(3, M1)],
                vec![],
            ),
            (
                "the SYN retransmitted after a message does not have it read twice",
                vec![(0, 1, DATA, M1), (1, 0, SYN, ""), (2, 1, DATA, M1)],
                vec![(0, M1)],
                vec![],
            ),
            (
                "a SYN with another ISN is a new connection: the old one's hole is given up",
                vec![
                    (0, 1, DATA, &M1[..10]),
                    (1, 1 + m1, DATA, M2),
                    (2, 1000, SYN, ""),
                    (3, 1001, DATA, M2),
                ],
                vec![(1, M2), (3, M2)],
                vec![("tcp_gap", 1)],
            ),
            (
                "a SYN with another ISN counts the old connection's incomplete message",
                vec![
                    (0, 1, DATA, &M1[..10]),
                    (2, 1000, SYN, ""),
                    (3, 1001, DATA, M2),
                ],
                vec![(3, M2)],
                vec![("tcp_incomplete_at_close", 1)],
            ),
        ];
        let a: SocketAddr = "192.0.2.1:5060".parse().expect("a");
        let b: SocketAddr = "192.0.2.2:14500".parse().expect("b");
        for (name, segments, want, skipped) in cases {
            let mut reader = Reader::new(4096);
            let mut got = Collect::default();
            // The first message crosses the wrap of the 32-bit sequence number.
            let isn = u32::MAX - 20;
            send(&mut reader, &mut got, (a, b), isn, (0, 0, SYN, ""));
            for seg in segments {
                send(&mut reader, &mut got, (a, b), isn, seg);
            }
            reader.finish(&mut got);
            let want: Vec<(u64, String)> = want.into_iter().map(|(t, m)| (t, m.into())).collect();
            assert_eq!(got.0, want, "{name}");
            let want_skipped: BTreeMap<&str, u64> = skipped.into_iter().collect();
            assert_eq!(reader.counts.skipped, want_skipped, "{name}");
            assert_eq!(reader.ahead_total, 0, "{name}");
            assert!(
                reader.streams.is_empty() && reader.deadlines.is_empty(),
                "{name}"
            );
        }
    }

    /// A stream that goes quiet with a hole (here its FIN is held behind it) is given up
    /// when capture time passes its deadline on another stream: its messages reach the
    /// tracker then, not at the end of the capture, and its bytes leave the shared budget.
    #[test]
    fn a_quiet_stream_gives_up_its_hole_as_capture_time_passes() {
        let m1 = M1.len() as u32;
        let quiet: Key = (
            "192.0.2.1:5060".parse().expect("a"),
            "192.0.2.2:14500".parse().expect("b"),
        );
        let busy: Key = ("192.0.2.3:5060".parse().expect("c"), quiet.1);
        let mut reader = Reader::new(4096);
        let mut got = Collect::default();
        for (key, seg) in [
            (quiet, (0, 0, SYN, "")),
            (quiet, (0, 1, DATA, &M1[..10])),
            (quiet, (1, 1 + m1, FIN, M2)),
            (busy, (2, 0, SYN, "")),
            (busy, (3, 1, DATA, M1)),
        ] {
            send(&mut reader, &mut got, key, 100, seg);
        }
        assert_eq!(reader.ahead_total, M2.len());
        assert_eq!(reader.deadlines.len(), 1);
        send(&mut reader, &mut got, busy, 100, (7, 1 + m1, DATA, M2));
        let want: Vec<(u64, String)> = [(3, M1), (1, M2), (7, M2)]
            .into_iter()
            .map(|(t, m)| (t, m.into()))
            .collect();
        assert_eq!(got.0, want);
        assert_eq!(reader.counts.skipped, BTreeMap::from([("tcp_gap", 1)]));
        assert_eq!(reader.ahead_total, 0);
        assert!(reader.deadlines.is_empty());
        assert_eq!(reader.streams.keys().collect::<Vec<_>>(), [&busy]);
    }

    /// A pcapng interface may count time in whole seconds (`if_tsresol` 0) and shift it
    /// (`if_tsoffset`): a packet dated past what the clock can hold is counted, not a panic.
    #[test]
    fn a_pcapng_time_out_of_range_is_counted() {
        let block = |kind: u32, body: &[u8]| {
            let len = (12 + body.len()) as u32;
            [
                &kind.to_le_bytes()[..],
                &len.to_le_bytes(),
                body,
                &len.to_le_bytes(),
            ]
            .concat()
        };
        let section = [&0x1A2B_3C4Du32.to_le_bytes()[..], &[1, 0, 0, 0], &[0xff; 8]].concat();
        let mut interface = vec![1, 0, 0, 0, 0xff, 0xff, 0, 0];
        // if_tsresol = 0, then opt_endofopt.
        interface.extend_from_slice(&[9, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let packet = |ts_high: u32| {
            let frame = [0u8; 16];
            let mut body = vec![0, 0, 0, 0];
            body.extend_from_slice(&ts_high.to_le_bytes());
            body.extend_from_slice(&[0; 4]);
            body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            body.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            body.extend_from_slice(&frame);
            block(6, &body)
        };
        let file = [
            block(0x0A0D_0D0A, &section),
            block(1, &interface),
            packet(u32::MAX),
            packet(0),
        ]
        .concat();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("far.pcapng");
        std::fs::write(&path, file).expect("write");
        let mut reader = Reader::new(4096);
        let mut got = Collect::default();
        reader
            .read(&path, &mut got, &mut |_| {})
            .expect("a capture");
        assert_eq!(reader.counts.packets, 2);
        assert_eq!(reader.counts.skipped.get("time_out_of_range"), Some(&1));
    }

    #[test]
    fn segments_held_ahead_stay_within_the_bounds() {
        let mut reader = Reader::new(4096);
        let mut got = Collect::default();
        let chunk = vec![b'x'; 1000];
        for port in 0..300u16 {
            let a = SocketAddr::from(([192, 0, 2, 1], port));
            let b: SocketAddr = "192.0.2.2:5060".parse().expect("b");
            reader.segment(UNIX_EPOCH, a, b, 0, true, false, b"", &mut got);
            // Every other kilobyte: each segment is ahead of a hole.
            for i in 0..400u32 {
                reader.segment(
                    UNIX_EPOCH,
                    a,
                    b,
                    2 + i * 2000,
                    false,
                    false,
                    &chunk,
                    &mut got,
                );
                let held: usize = reader.streams.values().map(|s| s.ahead_bytes).sum();
                assert_eq!(held, reader.ahead_total);
                assert!(reader.ahead_total <= MAX_AHEAD_TOTAL);
                assert!(reader.streams.values().all(|s| {
                    s.ahead_bytes <= MAX_AHEAD_BYTES && s.ahead.len() <= MAX_AHEAD_SEGMENTS
                }));
                let holding = reader.streams.values().filter(|s| !s.ahead.is_empty());
                assert_eq!(reader.deadlines.len(), holding.count());
            }
        }
        assert!(reader.counts.skipped.get("tcp_gap").is_some_and(|&n| n > 0));
    }
}
