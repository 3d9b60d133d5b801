//! Value encodings: a leading version byte, then a compact hand-written layout (varints,
//! times as deltas from the call's start). Pure: no I/O, every decode error is a
//! [`StoreError::Corrupt`], never a panic.
//!
//! CDR value, version 1 (the id is the key, so it is not repeated):
//! `1 ‖ kind ‖ disposition ‖ ended_by ‖ transport ‖ start Δ ‖ end Δ ‖ video_started_at Δ? ‖
//! ring_time Δ? ‖ answer_time Δ? ‖ sip_code? ‖ node ‖ call_id ‖ caller ‖ called ‖ caller_uri ‖
//! called_uri ‖ terminal ‖ source?`, where `kind` at offset 1 lets scans filter on type and
//! status without decoding the rest. `source` is left out for relayed calls (`proxy`), so that
//! the records of stores written before it existed decode as what they are.
//!
//! A log value is one entry (version 1, what stores written before bundles hold) or a bundle:
//! `2 ‖ count ‖ text(body)`, where the body is `(length ‖ entry)…`, the entries of one call
//! that one batch commits, each as version 1 writes it, and `text` is stored like a SIP text
//! (compressed when that helps). A call's messages mostly arrive within one batch, so a bundle
//! is one B-tree insert and one compression where there were seven of each (the commit's and
//! call tracking's largest costs under load); its key is the first entry's sequence number.
//!
//! SIP text in the log is LZ4-compressed against [`SIP_DICT_1`], a dictionary of the boilerplate
//! every SIP message and SDP body repeats: on generated realistic messages it halves the
//! bytes (551 → 240 on average), and the bytes written, not CPU, bound the insert rate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::StoreError;
use crate::alarm::{Alarm, AlarmId, AlarmKind, Severity};
use crate::cdr::{
    CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Source, Transport, UnixMs,
};
use crate::log::{Direction, LogEntry, LogKind};

/// The version byte every value written by this build starts with.
pub(crate) const VERSION: u8 = 1;

/// The LZ4 dictionary of SIP text compression 1. Part of the file format: never edit it; add a
/// dictionary with a new compression byte instead.
const SIP_DICT_1: &[u8] = b"SIP/2.0 200 OK\r\nSIP/2.0 180 Ringing\r\nSIP/2.0 100 Trying\r\nINVITE sip:ACK sip:BYE \
sip:CANCEL sip:Via: SIP/2.0/UDP ;rport;branch=z9hG4bKVia: SIP/2.0/TCP Max-Forwards: 70\r\nFrom: <sip:To: \
<sip:>;tag=Call-ID: CSeq: 1 INVITE\r\nCSeq: 2 INVITE\r\nCSeq: 2 ACK\r\nCSeq: 3 BYE\r\nContact: <sip:;\
transport=udp>\r\nRecord-Route: <sip:;lr>\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE\r\n\
Supported: timer, replaces\r\nSession-Expires: 1800\r\nUser-Agent: Server: Content-Type: application/sdp\r\n\
Content-Length: 0\r\n\r\nContent-Length: v=0\r\no=- s=-\r\nc=IN IP4 t=0 0\r\nm=audio RTP/AVP 8 0 101\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=sendrecv\r\nm=video RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\na=fmtp:96 profile-level-id=42e01f;\
packetization-mode=1\r\n";

/// The version byte of a log bundle.
const LOG_BUNDLE: u8 = 2;

/// How a SIP text is stored.
const TEXT_RAW: u8 = 0;
const TEXT_LZ4_DICT_1: u8 = 1;

/// The largest SIP text a stored entry may claim, so a damaged length cannot make a decode
/// allocate gigabytes (sipedge refuses messages far smaller than this).
const MAX_SIP_TEXT: usize = 16 << 20;

/// Call type and status in two bits: the unit of the kind index and of the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Kind(pub(crate) u8);

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind(0), Kind(1), Kind(2), Kind(3)];

    pub(crate) fn new(call_type: CallType, status: CallStatus) -> Self {
        let video = u8::from(call_type == CallType::Video);
        let connected = u8::from(status == CallStatus::Connected);
        Kind(video | connected << 1)
    }

    pub(crate) fn of(cdr: &Cdr) -> Self {
        Kind::new(cdr.call_type, cdr.status)
    }

    pub(crate) fn call_type(self) -> CallType {
        if self.0 & 1 == 1 {
            CallType::Video
        } else {
            CallType::Audio
        }
    }

    pub(crate) fn status(self) -> CallStatus {
        if self.0 & 2 == 2 {
            CallStatus::Connected
        } else {
            CallStatus::NotConnected
        }
    }

    fn decode(byte: u8, what: &'static str) -> Result<Self, StoreError> {
        if byte < 4 {
            Ok(Kind(byte))
        } else {
            Err(corrupt(what, format!("kind byte {byte}")))
        }
    }
}

/// The talk time a CDR adds to totals, in ms: what [`Cdr::talk_s`] says, kept in integers so
/// that sums are exact.
pub(crate) fn talk_ms(cdr: &Cdr) -> u64 {
    match (cdr.status, cdr.answer_time) {
        (CallStatus::Connected, Some(answer)) => {
            cdr.end_time.0.saturating_sub(answer.0).max(0) as u64
        }
        _ => 0,
    }
}

fn corrupt(what: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: detail.into(),
    }
}

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn signed(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// An optional time as a delta from `base`, 0 meaning none.
    fn opt_delta(&mut self, v: Option<UnixMs>, base: UnixMs) {
        match v {
            None => self.varint(0),
            Some(t) => {
                let d = t.0.wrapping_sub(base.0);
                self.varint((((d << 1) ^ (d >> 63)) as u64).wrapping_add(1));
            }
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// SIP text compressed against the dictionary, or as it is when that does not help.
    fn sip_text(&mut self, text: &[u8]) {
        let packed = lz4_flex::block::compress_with_dict(text, SIP_DICT_1);
        if packed.len() < text.len() {
            self.u8(TEXT_LZ4_DICT_1);
            self.varint(text.len() as u64);
            self.bytes(&packed);
        } else {
            self.u8(TEXT_RAW);
            self.bytes(text);
        }
    }

    fn addr(&mut self, a: SocketAddr) {
        match a.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.0.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.0.extend_from_slice(&ip.octets());
            }
        }
        self.0.extend_from_slice(&a.port().to_be_bytes());
    }
}

struct Dec<'a> {
    /// What is left to read.
    buf: &'a [u8],
    /// Names the value in errors.
    what: &'static str,
}

impl<'a> Dec<'a> {
    /// Checks the version byte and positions after it.
    fn new(buf: &'a [u8], what: &'static str) -> Result<Self, StoreError> {
        match buf.split_first() {
            Some((&VERSION, rest)) => Ok(Dec { buf: rest, what }),
            Some((v, _)) => Err(corrupt(what, format!("unknown encoding version {v}"))),
            None => Err(corrupt(what, "empty value")),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(corrupt(self.what, "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn varint(&mut self) -> Result<u64, StoreError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt(self.what, "varint too long"))
    }

    fn signed(&mut self) -> Result<i64, StoreError> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn delta(&mut self, base: UnixMs) -> Result<UnixMs, StoreError> {
        Ok(UnixMs(base.0.wrapping_add(self.signed()?)))
    }

    fn opt_delta(&mut self, base: UnixMs) -> Result<Option<UnixMs>, StoreError> {
        match self.varint()? {
            0 => Ok(None),
            v => {
                let v = v - 1;
                let d = (v >> 1) as i64 ^ -((v & 1) as i64);
                Ok(Some(UnixMs(base.0.wrapping_add(d))))
            }
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = usize::try_from(self.varint()?).map_err(|_| corrupt(self.what, "length"))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, StoreError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| corrupt(self.what, "text is not UTF-8"))
    }

    fn addr(&mut self) -> Result<SocketAddr, StoreError> {
        let ip = match self.u8()? {
            4 => {
                let o: [u8; 4] = self
                    .take(4)?
                    .try_into()
                    .map_err(|_| corrupt(self.what, "ipv4"))?;
                IpAddr::V4(Ipv4Addr::from(o))
            }
            6 => {
                let o: [u8; 16] = self
                    .take(16)?
                    .try_into()
                    .map_err(|_| corrupt(self.what, "ipv6"))?;
                IpAddr::V6(Ipv6Addr::from(o))
            }
            t => return Err(corrupt(self.what, format!("address family {t}"))),
        };
        let p: [u8; 2] = self
            .take(2)?
            .try_into()
            .map_err(|_| corrupt(self.what, "port"))?;
        Ok(SocketAddr::new(ip, u16::from_be_bytes(p)))
    }

    fn sip_text(&mut self) -> Result<Vec<u8>, StoreError> {
        match self.u8()? {
            TEXT_RAW => Ok(self.bytes()?.to_vec()),
            TEXT_LZ4_DICT_1 => {
                let len = usize::try_from(self.varint()?).unwrap_or(usize::MAX);
                if len > MAX_SIP_TEXT {
                    return Err(corrupt(self.what, format!("SIP text of {len} bytes")));
                }
                let packed = self.bytes()?;
                lz4_flex::block::decompress_with_dict(packed, len, SIP_DICT_1)
                    .ok()
                    .filter(|text| text.len() == len)
                    .ok_or_else(|| corrupt(self.what, "compressed SIP text does not decompress"))
            }
            c => Err(corrupt(self.what, format!("unknown text compression {c}"))),
        }
    }

    fn finish<T>(self, value: T) -> Result<T, StoreError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(corrupt(self.what, "trailing bytes"))
        }
    }
}

/// Maps an enum to its byte and back; the byte values are part of the file format.
macro_rules! byte_enum {
    ($name:ident, $what:literal, $enc:ident, $dec:ident, [$($variant:path = $byte:literal),+ $(,)?]) => {
        fn $enc(v: $name) -> u8 {
            match v { $($variant => $byte),+ }
        }
        fn $dec(b: u8) -> Result<$name, StoreError> {
            match b {
                $($byte => Ok($variant),)+
                other => Err(corrupt($what, format!("unknown {} {other}", stringify!($name)))),
            }
        }
    };
}

byte_enum!(
    Disposition,
    "CDR",
    disposition_byte,
    disposition_of,
    [
        Disposition::Answered = 0,
        Disposition::Busy = 1,
        Disposition::Declined = 2,
        Disposition::NoAnswer = 3,
        Disposition::Cancelled = 4,
        Disposition::Failed = 5,
        Disposition::Timeout = 6,
    ]
);
byte_enum!(
    EndedBy,
    "CDR",
    ended_by_byte,
    ended_by_of,
    [
        EndedBy::Caller = 0,
        EndedBy::Callee = 1,
        EndedBy::Sipedge = 2,
    ]
);
byte_enum!(
    Transport,
    "record",
    transport_byte,
    transport_of,
    [Transport::Udp = 0, Transport::Tcp = 1,]
);
byte_enum!(
    Source,
    "CDR",
    source_byte,
    source_of,
    [Source::Proxy = 0, Source::Pcap = 1, Source::Hep = 2,]
);
byte_enum!(
    Direction,
    "log entry",
    direction_byte,
    direction_of,
    [Direction::Received = 0, Direction::Sent = 1,]
);
byte_enum!(
    Severity,
    "alarm",
    severity_byte,
    severity_of,
    [
        Severity::Warning = 0,
        Severity::Minor = 1,
        Severity::Major = 2,
        Severity::Critical = 3,
    ]
);
byte_enum!(
    AlarmKind,
    "alarm",
    alarm_kind_byte,
    alarm_kind_of,
    [
        AlarmKind::ProcessMissing = 0,
        AlarmKind::ProcessRestarted = 1,
        AlarmKind::ProcessCpu = 2,
        AlarmKind::ProcessMemory = 3,
        AlarmKind::UpstreamDown = 4,
        AlarmKind::DiskLow = 5,
        AlarmKind::StoreError = 6,
        AlarmKind::ConfigInvalid = 7,
        AlarmKind::SinkLag = 8,
    ]
);

pub(crate) fn encode_cdr(cdr: &Cdr) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(
        64 + cdr.caller_uri.len() + cdr.called_uri.len() + cdr.call_id.len(),
    ));
    let base = cdr.id.start();
    e.u8(VERSION);
    e.u8(Kind::of(cdr).0);
    e.u8(disposition_byte(cdr.disposition));
    e.u8(ended_by_byte(cdr.ended_by));
    e.u8(transport_byte(cdr.transport));
    e.signed(cdr.start_time.0.wrapping_sub(base.0));
    e.signed(cdr.end_time.0.wrapping_sub(cdr.start_time.0));
    e.opt_delta(cdr.video_started_at, cdr.start_time);
    e.opt_delta(cdr.ring_time, cdr.start_time);
    e.opt_delta(cdr.answer_time, cdr.start_time);
    e.varint(cdr.sip_code.map_or(0, |c| u64::from(c) + 1));
    for s in [
        &cdr.node,
        &cdr.call_id,
        &cdr.caller,
        &cdr.called,
        &cdr.caller_uri,
        &cdr.called_uri,
        &cdr.terminal,
    ] {
        e.bytes(s.as_bytes());
    }
    if cdr.source != Source::Proxy {
        e.u8(source_byte(cdr.source));
    }
    e.0
}

/// The kind of an encoded CDR, read without decoding the rest.
pub(crate) fn cdr_kind(value: &[u8]) -> Result<Kind, StoreError> {
    match value {
        [VERSION, kind, ..] => Kind::decode(*kind, "CDR"),
        [v, ..] if *v != VERSION => Err(corrupt("CDR", format!("unknown encoding version {v}"))),
        _ => Err(corrupt("CDR", "truncated")),
    }
}

pub(crate) fn decode_cdr(id: CdrId, value: &[u8]) -> Result<Cdr, StoreError> {
    let mut d = Dec::new(value, "CDR")?;
    let kind = Kind::decode(d.u8()?, "CDR")?;
    let disposition = disposition_of(d.u8()?)?;
    let ended_by = ended_by_of(d.u8()?)?;
    let transport = transport_of(d.u8()?)?;
    let start_time = d.delta(id.start())?;
    let end_time = d.delta(start_time)?;
    let video_started_at = d.opt_delta(start_time)?;
    let ring_time = d.opt_delta(start_time)?;
    let answer_time = d.opt_delta(start_time)?;
    let sip_code = match d.varint()? {
        0 => None,
        c => Some(u16::try_from(c - 1).map_err(|_| corrupt("CDR", format!("sip code {c}")))?),
    };
    let cdr = Cdr {
        id,
        node: d.string()?,
        call_id: d.string()?,
        caller: d.string()?,
        called: d.string()?,
        caller_uri: d.string()?,
        called_uri: d.string()?,
        call_type: kind.call_type(),
        video_started_at,
        status: kind.status(),
        disposition,
        sip_code,
        ended_by,
        start_time,
        ring_time,
        answer_time,
        end_time,
        transport,
        terminal: d.string()?,
        source: match d.buf {
            [] => Source::Proxy,
            // One encoding per record: `proxy` is only ever the absence of the byte.
            [0, ..] => return Err(corrupt("CDR", "source proxy written out")),
            _ => source_of(d.u8()?)?,
        },
    };
    d.finish(cdr)
}

/// A number index entry's value: the kind and talk time, so that filtered pages and stats
/// need not read the CDR to apply type/status filters or to add up talk time.
pub(crate) fn encode_index_value(kind: Kind, talk_ms: u64) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(8));
    e.u8(VERSION);
    e.u8(kind.0);
    e.varint(talk_ms);
    e.0
}

pub(crate) fn decode_index_value(value: &[u8]) -> Result<(Kind, u64), StoreError> {
    let mut d = Dec::new(value, "index entry")?;
    let kind = Kind::decode(d.u8()?, "index entry")?;
    let talk = d.varint()?;
    d.finish((kind, talk))
}

/// Counters of one rollup slot and kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Calls that started in the slot.
    pub(crate) calls: u64,
    /// Their summed talk time in ms.
    pub(crate) talk_ms: u64,
}

pub(crate) fn encode_counts(c: Counts) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(12));
    e.u8(VERSION);
    e.varint(c.calls);
    e.varint(c.talk_ms);
    e.0
}

pub(crate) fn decode_counts(value: &[u8]) -> Result<Counts, StoreError> {
    let mut d = Dec::new(value, "rollup counter")?;
    let calls = d.varint()?;
    let talk_ms = d.varint()?;
    d.finish(Counts { calls, talk_ms })
}

/// An outbox entry's value: the CDR it ships and when it was queued.
pub(crate) fn encode_outbox(id: CdrId, queued_at: UnixMs) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(26));
    e.u8(VERSION);
    e.0.extend_from_slice(&id.0.to_be_bytes());
    e.signed(queued_at.0);
    e.0
}

pub(crate) fn decode_outbox(value: &[u8]) -> Result<(CdrId, UnixMs), StoreError> {
    let mut d = Dec::new(value, "outbox entry")?;
    let id = <[u8; 16]>::try_from(d.take(16)?)
        .map(|b| CdrId(u128::from_be_bytes(b)))
        .map_err(|_| corrupt("outbox entry", "short id"))?;
    let queued_at = UnixMs(d.signed()?);
    d.finish((id, queued_at))
}

/// A log entry as one value, its SIP text compressed: the layout of stores written before
/// bundles, and of each entry inside one.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode_log(entry: &LogEntry) -> Vec<u8> {
    encode_entry(entry, true)
}

#[cfg(any(test, feature = "fuzzing"))]
fn encode_entry(entry: &LogEntry, pack: bool) -> Vec<u8> {
    let mut e = Enc::default();
    encode_entry_into(&mut e, entry, pack);
    e.0
}

fn encode_entry_into(e: &mut Enc, entry: &LogEntry, pack: bool) {
    e.u8(VERSION);
    e.signed(entry.at.0);
    match &entry.kind {
        LogKind::Sip {
            direction,
            transport,
            src,
            dst,
            text,
        } => {
            e.0.reserve(text.len() + 48);
            e.u8(0);
            e.u8(direction_byte(*direction));
            e.u8(transport_byte(*transport));
            e.addr(*src);
            e.addr(*dst);
            if pack {
                e.sip_text(text);
            } else {
                e.u8(TEXT_RAW);
                e.bytes(text);
            }
        }
        LogKind::Event { text } => {
            e.u8(1);
            e.bytes(text.as_bytes());
        }
    }
}

pub(crate) fn decode_log(value: &[u8]) -> Result<LogEntry, StoreError> {
    let mut d = Dec::new(value, "log entry")?;
    let at = UnixMs(d.signed()?);
    let kind = match d.u8()? {
        0 => LogKind::Sip {
            direction: direction_of(d.u8()?)?,
            transport: transport_of(d.u8()?)?,
            src: d.addr()?,
            dst: d.addr()?,
            text: d.sip_text()?.into(),
        },
        1 => LogKind::Event { text: d.string()? },
        t => return Err(corrupt("log entry", format!("unknown entry type {t}"))),
    };
    d.finish(LogEntry { at, kind })
}

/// The most entry bytes one bundle holds, far below what a decode accepts
/// ([`MAX_SIP_TEXT`]): the writer starts another bundle past it.
pub(crate) const MAX_BUNDLE_BYTES: usize = 1 << 20;

/// About the bytes `entry` takes in a bundle, which [`MAX_BUNDLE_BYTES`] bounds.
pub(crate) fn log_entry_size(entry: &LogEntry) -> usize {
    let text = match &entry.kind {
        LogKind::Sip { text, .. } => text.len(),
        LogKind::Event { text } => text.len(),
    };
    text + 64
}

/// Several log entries of one call in one value, compressed together: cheaper than each
/// alone, since compressing against the dictionary has a fixed cost per call and the
/// messages of one call repeat each other's Call-ID, tags and Via. Each entry is the layout
/// of a value of its own, its text left uncompressed.
pub(crate) fn encode_log_bundle(entries: &[&LogEntry]) -> Vec<u8> {
    let mut body = Enc(Vec::with_capacity(
        entries.iter().map(|e| log_entry_size(e)).sum::<usize>(),
    ));
    let mut entry = Enc::default();
    for e in entries {
        entry.0.clear();
        encode_entry_into(&mut entry, e, false);
        body.bytes(&entry.0);
    }
    pack_bundle(entries.len(), &body.0)
}

/// A bundle value of `count` entries from their framed (length-prefixed) encodings.
fn pack_bundle(count: usize, body: &[u8]) -> Vec<u8> {
    let mut e = Enc(Vec::with_capacity(body.len() / 2 + 16));
    e.u8(LOG_BUNDLE);
    e.varint(count as u64);
    e.sip_text(body);
    e.0
}

/// Appends the entries of one log value, a single entry or a bundle, to `out`.
pub(crate) fn decode_logs(value: &[u8], out: &mut Vec<LogEntry>) -> Result<(), StoreError> {
    let Some((&LOG_BUNDLE, rest)) = value.split_first() else {
        out.push(decode_log(value)?);
        return Ok(());
    };
    let mut d = Dec {
        buf: rest,
        what: "log bundle",
    };
    let count = d.varint()?;
    let body = d.sip_text()?;
    d.finish(())?;
    let mut entries = Dec {
        buf: &body,
        what: "log bundle",
    };
    // No reservation by the claimed count: a damaged one must not allocate; the loop ends at
    // the first entry the value does not hold.
    for _ in 0..count {
        out.push(decode_log(entries.bytes()?)?);
    }
    entries.finish(())
}

/// How many entries a log value holds, for retention's count; an unreadable one counts once.
pub(crate) fn log_count(value: &[u8]) -> u64 {
    match value.split_first() {
        Some((&LOG_BUNDLE, rest)) => Dec {
            buf: rest,
            what: "log bundle",
        }
        .varint()
        .unwrap_or(1),
        _ => 1,
    }
}

pub(crate) fn encode_alarm(alarm: &Alarm) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(VERSION);
    e.u8(alarm_kind_byte(alarm.kind));
    e.u8(severity_byte(alarm.severity));
    e.signed(alarm.raised_at.0);
    e.opt_delta(alarm.cleared_at, alarm.raised_at);
    e.bytes(alarm.node.as_bytes());
    e.bytes(alarm.target.as_bytes());
    e.bytes(alarm.message.as_bytes());
    e.0
}

pub(crate) fn decode_alarm(id: AlarmId, value: &[u8]) -> Result<Alarm, StoreError> {
    let mut d = Dec::new(value, "alarm")?;
    let kind = alarm_kind_of(d.u8()?)?;
    let severity = severity_of(d.u8()?)?;
    let raised_at = UnixMs(d.signed()?);
    let cleared_at = d.opt_delta(raised_at)?;
    let alarm = Alarm {
        id,
        node: d.string()?,
        kind,
        target: d.string()?,
        severity,
        message: d.string()?,
        raised_at,
        cleared_at,
    };
    d.finish(alarm)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn cdr() -> Cdr {
        let start = UnixMs(1_700_000_000_123);
        Cdr {
            id: CdrId::new(start, "sh-01", "a@b"),
            node: "sh-01".into(),
            call_id: "a@b".into(),
            caller: "13800000000".into(),
            called: "95566".into(),
            caller_uri: "sip:13800000000@10.0.0.1".into(),
            called_uri: "sip:95566@10.0.0.5".into(),
            call_type: CallType::Video,
            video_started_at: Some(UnixMs(start.0 + 5_000)),
            status: CallStatus::Connected,
            disposition: Disposition::Answered,
            sip_code: Some(200),
            ended_by: EndedBy::Caller,
            start_time: start,
            ring_time: Some(UnixMs(start.0 + 800)),
            answer_time: Some(UnixMs(start.0 + 4_000)),
            end_time: UnixMs(start.0 + 60_000),
            transport: Transport::Tcp,
            terminal: "1.2.3.4:5060".into(),
            source: Source::Proxy,
        }
    }

    #[test]
    fn cdr_round_trips_and_is_compact() {
        let c = cdr();
        let bytes = encode_cdr(&c);
        assert_eq!(decode_cdr(c.id, &bytes).unwrap(), c);
        assert_eq!(
            cdr_kind(&bytes).unwrap(),
            Kind::new(CallType::Video, CallStatus::Connected)
        );
        assert!(bytes.len() < 110, "{} bytes", bytes.len());
        let mut odd = c.clone();
        odd.sip_code = None;
        odd.ring_time = None;
        odd.answer_time = None;
        odd.video_started_at = Some(odd.start_time);
        odd.start_time = UnixMs(odd.start_time.0 - 3);
        odd.end_time = UnixMs(odd.start_time.0 - 1);
        assert_eq!(decode_cdr(odd.id, &encode_cdr(&odd)).unwrap(), odd);
        for source in [Source::Pcap, Source::Hep] {
            let captured = Cdr {
                source,
                ..c.clone()
            };
            let encoded = encode_cdr(&captured);
            assert_eq!(encoded.len(), bytes.len() + 1, "{source:?}");
            assert_eq!(decode_cdr(c.id, &encoded).unwrap(), captured);
        }
    }

    fn check_corrupt(what: &str, result: Result<impl std::fmt::Debug, StoreError>) {
        assert!(
            matches!(result, Err(StoreError::Corrupt { .. })),
            "{what}: {result:?}"
        );
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let c = cdr();
        let good = encode_cdr(&c);
        check_corrupt("empty", decode_cdr(c.id, &[]));
        check_corrupt("version 2", decode_cdr(c.id, &[2, 0, 0]));
        check_corrupt("kind of version 9", cdr_kind(&[9, 0]));
        check_corrupt(
            "trailing",
            decode_cdr(c.id, &[good.as_slice(), &[0]].concat()),
        );
        check_corrupt(
            "two trailing",
            decode_cdr(c.id, &[good.as_slice(), &[1, 1]].concat()),
        );
        check_corrupt(
            "unknown source",
            decode_cdr(c.id, &[good.as_slice(), &[3]].concat()),
        );
        check_corrupt("bad kind", decode_cdr(c.id, &[1, 7, 0, 0, 0]));
        for cut in 0..good.len() {
            check_corrupt("truncated", decode_cdr(c.id, &good[..cut]));
        }
        check_corrupt(
            "varint",
            decode_counts(&[
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        );
        check_corrupt("log type", decode_log(&[1, 0, 9]));
        check_corrupt("addr", decode_log(&[1, 0, 0, 0, 0, 5]));
        check_corrupt("alarm kind", decode_alarm(AlarmId(1), &[1, 99]));
    }

    fn sip(text: &[u8]) -> LogEntry {
        LogEntry {
            at: UnixMs(1_700_000_000_000),
            kind: LogKind::Sip {
                direction: Direction::Sent,
                transport: Transport::Tcp,
                src: "10.1.2.3:5060".parse().unwrap(),
                dst: "[::1]:14500".parse().unwrap(),
                text: text.to_vec().into(),
            },
        }
    }

    /// Round-trips `text` and checks the encoded size against `max_len`.
    fn check_sip_text(text: &[u8], max_len: usize) {
        let entry = sip(text);
        let encoded = encode_log(&entry);
        assert_eq!(decode_log(&encoded).unwrap(), entry);
        assert!(
            encoded.len() <= max_len,
            "{} bytes for {} of text",
            encoded.len(),
            text.len()
        );
    }

    #[test]
    fn a_bundle_holds_entries_in_order_beside_single_entries() {
        let event = |text: &str| LogEntry {
            at: UnixMs(1_700_000_000_123),
            kind: LogKind::Event { text: text.into() },
        };
        let entries = [
            sip(b"INVITE sip:1@x SIP/2.0\r\n\r\n"),
            event("a"),
            event("b"),
        ];
        let encoded: Vec<Vec<u8>> = entries.iter().map(encode_log).collect();
        let bundle = encode_log_bundle(&entries.iter().collect::<Vec<_>>());
        let mut out = Vec::new();
        decode_logs(&bundle, &mut out).unwrap();
        // A value written before bundles existed reads as its one entry.
        decode_logs(&encoded[1], &mut out).unwrap();
        assert_eq!(out, [&entries[..], &entries[1..2]].concat());
        assert_eq!((log_count(&bundle), log_count(&encoded[0])), (3, 1));

        // A call's messages repeat each other: together they pack far tighter than alone.
        let call: Vec<LogEntry> = (1..=7)
            .map(|n| sip(format!("BYE sip:95566@12.8.64.34:14500 SIP/2.0\r\nCall-ID: a84b4c76e66710@pc33\r\nFrom: <sip:13812345678@12.8.64.34>;tag=1928301774\r\nCSeq: {n} BYE\r\n\r\n").as_bytes()))
            .collect();
        let alone: usize = call.iter().map(|e| encode_log(e).len()).sum();
        let together = encode_log_bundle(&call.iter().collect::<Vec<_>>());
        assert!(
            together.len() * 2 < alone,
            "{} bytes bundled, {alone} alone",
            together.len()
        );
        let mut out = Vec::new();
        decode_logs(&together, &mut out).unwrap();
        assert_eq!(out, call);

        let mut claims_more = bundle.clone();
        claims_more[1] = 4;
        let mut framed = Enc::default();
        framed.bytes(&bundle);
        framed.bytes(&encoded[0]);
        let nested = pack_bundle(2, &framed.0);
        let mut trailing = bundle.clone();
        trailing.push(0);
        let mut damaged_entry = bundle.clone();
        let last = damaged_entry.len() - 1;
        damaged_entry[last] ^= 0xff;
        for (what, value) in [
            ("count past the entries", claims_more),
            ("a bundle in a bundle", nested),
            ("trailing bytes", trailing),
            ("a damaged entry", damaged_entry),
            ("empty bundle header", vec![LOG_BUNDLE]),
            ("huge count", vec![LOG_BUNDLE, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(
                    decode_logs(&value, &mut out),
                    Err(StoreError::Corrupt { .. })
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn sip_text_is_compressed_when_it_helps() {
        let invite = b"INVITE sip:95566@12.8.64.34:14500 SIP/2.0\r\nVia: SIP/2.0/UDP 203.0.113.9:40000;\
rport;branch=z9hG4bK776asdhds\r\nMax-Forwards: 70\r\nFrom: <sip:13812345678@12.8.64.34:14500>;tag=1928301774\r\n\
To: <sip:95566@12.8.64.34:14500>\r\nCall-ID: a84b4c76e66710@pc33.example\r\nCSeq: 2 INVITE\r\n\
Contact: <sip:13812345678@203.0.113.9:40000;transport=udp>\r\nContent-Type: application/sdp\r\n\
Content-Length: 142\r\n\r\nv=0\r\no=- 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n";
        // Header for a compressed text: time, tags, two addresses, lengths.
        let overhead = 48;
        check_sip_text(invite, invite.len() * 2 / 3 + overhead);
        let noise: Vec<u8> = (0u32..300)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        check_sip_text(&noise, noise.len() + overhead);
        check_sip_text(b"", overhead);
        check_sip_text(b"\xff\x00 not UTF-8", overhead + 16);
    }

    #[test]
    fn damaged_sip_text_is_an_error() {
        let encoded = encode_log(&sip(&b"Via: SIP/2.0/UDP x\r\n".repeat(20)));
        // Header: version, time (6 bytes), type, direction, transport, two addresses.
        let header = 1 + 6 + 3 + 7 + 19;
        assert_eq!(encoded[header], TEXT_LZ4_DICT_1);
        let mut claims_huge = encoded[..=header].to_vec();
        claims_huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x7f, 1, 0]);
        check_corrupt("huge length", decode_log(&claims_huge));
        let mut wrong_len = encoded.clone();
        wrong_len[header + 1] ^= 1;
        check_corrupt("length mismatch", decode_log(&wrong_len));
        let mut unknown = encoded.clone();
        unknown[header] = 9;
        check_corrupt("unknown compression", decode_log(&unknown));
        // A match reaching 64 KiB back, past the dictionary: LZ4 has no checksum, so only
        // structurally broken data can be caught (the engines checksum their pages).
        let mut garbled = encoded[..=header].to_vec();
        garbled.extend_from_slice(&[10, 3, 0x00, 0xff, 0xff]);
        check_corrupt("garbled", decode_log(&garbled));
    }

    #[test]
    fn outbox_entries_round_trip_and_damage_is_an_error() {
        let id = cdr().id;
        for at in [UnixMs(0), UnixMs(1_767_225_600_123), UnixMs(-5)] {
            let bytes = encode_outbox(id, at);
            assert_eq!(decode_outbox(&bytes).unwrap(), (id, at));
            for cut in 0..bytes.len() {
                check_corrupt("truncated outbox", decode_outbox(&bytes[..cut]));
            }
            check_corrupt(
                "trailing",
                decode_outbox(&[bytes.as_slice(), &[0]].concat()),
            );
        }
        check_corrupt("version 2", decode_outbox(&[2; 26]));
    }

    #[test]
    fn logs_and_alarms_round_trip() {
        let entries = [
            LogEntry {
                at: UnixMs(1_700_000_000_000),
                kind: LogKind::Sip {
                    direction: Direction::Received,
                    transport: Transport::Udp,
                    src: "10.1.2.3:5060".parse().unwrap(),
                    dst: "[::1]:14500".parse().unwrap(),
                    text: b"INVITE sip:x@y SIP/2.0\r\n\r\n\xff".to_vec().into(),
                },
            },
            LogEntry {
                at: UnixMs(-5),
                kind: LogKind::Event {
                    text: "483 sent".into(),
                },
            },
        ];
        for entry in entries {
            assert_eq!(decode_log(&encode_log(&entry)).unwrap(), entry);
        }
        let alarm = Alarm {
            id: AlarmId::new(UnixMs(10), "sh-01", AlarmKind::DiskLow, "/var"),
            node: "sh-01".into(),
            kind: AlarmKind::DiskLow,
            target: "/var".into(),
            severity: Severity::Major,
            message: "5% free".into(),
            raised_at: UnixMs(10),
            cleared_at: Some(UnixMs(20)),
        };
        assert_eq!(
            decode_alarm(alarm.id, &encode_alarm(&alarm)).unwrap(),
            alarm
        );
        for kind in AlarmKind::ALL {
            let alarm = Alarm {
                kind,
                severity: Severity::Warning,
                cleared_at: None,
                ..alarm.clone()
            };
            assert_eq!(
                decode_alarm(alarm.id, &encode_alarm(&alarm)).unwrap(),
                alarm
            );
        }
        let counts = Counts {
            calls: 300,
            talk_ms: u64::MAX,
        };
        assert_eq!(decode_counts(&encode_counts(counts)).unwrap(), counts);
        assert_eq!(
            decode_index_value(&encode_index_value(Kind(3), 42)).unwrap(),
            (Kind(3), 42)
        );
    }
}
