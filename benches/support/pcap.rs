//! A small pcap writer (the classic format, microseconds, Ethernet) and the SIP text of a
//! plain call, for captures made up by tests/import_pcap.rs, tests/hep.rs and the import bench.
#![allow(dead_code)]

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

/// TCP flags.
pub const SYN: u8 = 0x02;
pub const PSH_ACK: u8 = 0x18;
pub const FIN_ACK: u8 = 0x11;

/// Writes a pcap file record by record.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
}

impl<W: Write> PcapWriter<W> {
    /// Writes the file header: little-endian, version 2.4, microseconds, Ethernet.
    pub fn new(mut out: W) -> std::io::Result<PcapWriter<W>> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&[0; 8])?;
        out.write_all(&65_535u32.to_le_bytes())?;
        out.write_all(&1u32.to_le_bytes())?;
        Ok(PcapWriter { out })
    }

    /// One record of `frame` captured at `at_us` (µs since the epoch).
    pub fn frame(&mut self, at_us: i64, frame: &[u8]) -> std::io::Result<()> {
        let secs = u32::try_from(at_us / 1_000_000).unwrap_or(0);
        let micros = (at_us % 1_000_000) as u32;
        let len = frame.len() as u32;
        for v in [secs, micros, len, len] {
            self.out.write_all(&v.to_le_bytes())?;
        }
        self.out.write_all(frame)
    }

    pub fn udp(
        &mut self,
        at_us: i64,
        src: SocketAddr,
        dst: SocketAddr,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.frame(at_us, &ethernet(src, dst, None, data))
    }

    pub fn tcp(
        &mut self,
        at_us: i64,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        flags: u8,
        data: &[u8],
    ) -> std::io::Result<()> {
        self.frame(at_us, &ethernet(src, dst, Some((seq, flags)), data))
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// An Ethernet frame from `src` to `dst` over IPv4 (or IPv6 when either is v6) with a UDP
/// (`tcp: None`) or TCP (`Some((seq, flags))`) header; checksums 0, which no reader checks.
pub fn ethernet(src: SocketAddr, dst: SocketAddr, tcp: Option<(u32, u8)>, data: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + data.len());
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    let proto = match tcp {
        None => {
            l4.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
            17
        }
        Some((seq, flags)) => {
            l4.extend_from_slice(&seq.to_be_bytes());
            l4.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            6
        }
    };
    l4.extend_from_slice(data);
    let mut frame = vec![0u8; 12];
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
            frame.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            frame.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            frame.extend_from_slice(&s.octets());
            frame.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                IpAddr::V6(a) => a.octets(),
            };
            frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            frame.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            frame.extend_from_slice(&[proto, 64]);
            frame.extend_from_slice(&v6(s));
            frame.extend_from_slice(&v6(d));
        }
    }
    frame.extend_from_slice(&l4);
    frame
}

/// The Ethernet frames of a UDP datagram from `src` to `dst` cut into IP fragments of
/// `chunk` payload bytes (a multiple of 8), in order: IPv4 with identification `id` (its
/// low 16 bits), or IPv6 with a fragment header when either address is v6.
pub fn udp_fragments(
    src: SocketAddr,
    dst: SocketAddr,
    id: u32,
    data: &[u8],
    chunk: usize,
) -> Vec<Vec<u8>> {
    let whole = ethernet(src, dst, None, data);
    let v6 = !(src.is_ipv4() && dst.is_ipv4());
    let ip_header = if v6 { 40 } else { 20 };
    let (head, payload) = whole.split_at(14 + ip_header);
    let mut frames = Vec::new();
    for (i, part) in payload.chunks(chunk.max(8)).enumerate() {
        let offset = i * chunk.max(8);
        let more = offset + part.len() < payload.len();
        let mut frame = head.to_vec();
        if v6 {
            frame[14 + 4..14 + 6].copy_from_slice(&((8 + part.len()) as u16).to_be_bytes());
            frame[14 + 6] = 44;
            frame.extend_from_slice(&[17, 0]);
            frame.extend_from_slice(&((offset as u16) | u16::from(more)).to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
        } else {
            frame[14 + 2..14 + 4].copy_from_slice(&((20 + part.len()) as u16).to_be_bytes());
            frame[14 + 4..14 + 6].copy_from_slice(&(id as u16).to_be_bytes());
            let flags = ((offset / 8) as u16) | if more { 0x2000 } else { 0 };
            frame[14 + 6..14 + 8].copy_from_slice(&flags.to_be_bytes());
        }
        frame.extend_from_slice(part);
        frames.push(frame);
    }
    frames
}

/// Who sends a message of a made-up call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    Terminal,
    Sipserver,
}

/// The messages of an answered audio call the terminal places and hangs up: INVITE, 180,
/// 200 (with SDP), ACK, BYE, 200, each with who sends it. `transport` is `UDP` or `TCP`.
pub fn answered_call(
    call_id: &str,
    terminal: SocketAddr,
    proxy: SocketAddr,
    transport: &str,
) -> Vec<(From, String)> {
    let via = format!("Via: SIP/2.0/{transport} {terminal};branch=z9hG4bK-{call_id}");
    let from = format!("From: <sip:8001@{terminal}>;tag=caller-{call_id}");
    let to = format!("To: <sip:95566@{proxy}>");
    let to_tagged = format!("{to};tag=callee-{call_id}");
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let msg = |start: String, via: &str, to: &str, cseq: &str, body: &str| {
        let ctype = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        };
        format!(
            "{start}\r\n{via}\r\n{from}\r\n{to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\n\
             Contact: <sip:8001@{terminal}>\r\nMax-Forwards: 70\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let bye_via = format!("Via: SIP/2.0/{transport} {terminal};branch=z9hG4bK-bye-{call_id}");
    let ack_via = format!("Via: SIP/2.0/{transport} {terminal};branch=z9hG4bK-ack-{call_id}");
    vec![
        (
            From::Terminal,
            msg(
                format!("INVITE sip:95566@{proxy} SIP/2.0"),
                &via,
                &to,
                "1 INVITE",
                sdp,
            ),
        ),
        (
            From::Sipserver,
            msg(
                "SIP/2.0 180 Ringing".into(),
                &via,
                &to_tagged,
                "1 INVITE",
                "",
            ),
        ),
        (
            From::Sipserver,
            msg("SIP/2.0 200 OK".into(), &via, &to_tagged, "1 INVITE", sdp),
        ),
        (
            From::Terminal,
            msg(
                format!("ACK sip:95566@{proxy} SIP/2.0"),
                &ack_via,
                &to_tagged,
                "1 ACK",
                "",
            ),
        ),
        (
            From::Terminal,
            msg(
                format!("BYE sip:95566@{proxy} SIP/2.0"),
                &bye_via,
                &to_tagged,
                "2 BYE",
                "",
            ),
        ),
        (
            From::Sipserver,
            msg("SIP/2.0 200 OK".into(), &bye_via, &to_tagged, "2 BYE", ""),
        ),
    ]
}
