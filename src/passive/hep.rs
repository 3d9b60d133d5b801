//! HEP v3 (the Homer encapsulation protocol): capture agents wrap each SIP message they see
//! with its addresses and capture time in TLV chunks. [`decode`] reads one packet (pure,
//! bounded by the input's own length); [`HepListener`] takes them over UDP and TCP and hands
//! the terminal hop's SIP to the running proxy's call tracking, the way the relay hands its
//! own messages ([`Relayed`], never waiting: a full queue refuses the packet and counts it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use sipedge_sip::flow::Transport;
use sipedge_sip::{Origin, Relayed};
use sipedge_store::Source;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::hep_config::HepConfig;
use super::{Leg, Sides};

/// The HEP3 header: magic and total length.
const HEADER: usize = 6;
/// Largest HEP3 packet (its length is 16 bits).
const MAX_PACKET: usize = 65_535;
/// TCP connections from agents served at once.
const MAX_CONNECTIONS: usize = 64;
/// An agent's connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(300);

/// One decoded HEP3 packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepPacket<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// From the IP protocol chunk: 6 is TCP, anything else counts as UDP.
    pub transport: Transport,
    pub at: SystemTime,
    /// Chunk 11: 1 is SIP.
    pub protocol_type: u8,
    /// Chunk 12, when sent.
    pub agent: Option<u32>,
    pub payload: &'a [u8],
}

/// Why a packet was refused; also the `reason` label of the refused counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HepError {
    #[error("shorter than the HEP3 header")]
    Short,
    #[error("no HEP3 magic")]
    Magic,
    #[error("the declared length disagrees with the bytes")]
    Length,
    #[error("a chunk's length is below its header or past the packet's end")]
    Chunk,
    #[error("a fixed-size chunk has the wrong size")]
    ChunkSize,
    #[error("a needed chunk is missing (addresses, ports, time, payload)")]
    Missing,
}

impl HepError {
    pub fn reason(self) -> &'static str {
        match self {
            HepError::Short => "short",
            HepError::Magic => "magic",
            HepError::Length => "length",
            HepError::Chunk => "chunk",
            HepError::ChunkSize => "chunk_size",
            HepError::Missing => "missing",
        }
    }
}

/// Decodes one whole HEP3 packet; bytes after its declared length are refused too, since a
/// datagram holds exactly one.
pub fn decode(buf: &[u8]) -> Result<HepPacket<'_>, HepError> {
    if buf.len() < HEADER {
        return Err(HepError::Short);
    }
    if &buf[..4] != b"HEP3" {
        return Err(HepError::Magic);
    }
    let total = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if total != buf.len() {
        return Err(HepError::Length);
    }
    let mut rest = &buf[HEADER..];
    let (mut family, mut proto, mut ptype, mut agent) = (None, None, None, None);
    let (mut src4, mut dst4, mut src6, mut dst6) = (None, None, None, None);
    let (mut sport, mut dport, mut secs, mut usecs, mut payload) = (None, None, None, None, None);
    while !rest.is_empty() {
        if rest.len() < 6 {
            return Err(HepError::Chunk);
        }
        let vendor = u16::from_be_bytes([rest[0], rest[1]]);
        let kind = u16::from_be_bytes([rest[2], rest[3]]);
        let len = usize::from(u16::from_be_bytes([rest[4], rest[5]]));
        if len < 6 || len > rest.len() {
            return Err(HepError::Chunk);
        }
        let value = &rest[6..len];
        rest = &rest[len..];
        if vendor != 0 {
            // Vendor chunks are the vendor's business.
            continue;
        }
        let u8_of = |v: &[u8]| {
            <[u8; 1]>::try_from(v)
                .map(|b| b[0])
                .map_err(|_| HepError::ChunkSize)
        };
        let u16_of = |v: &[u8]| {
            <[u8; 2]>::try_from(v)
                .map(u16::from_be_bytes)
                .map_err(|_| HepError::ChunkSize)
        };
        let u32_of = |v: &[u8]| {
            <[u8; 4]>::try_from(v)
                .map(u32::from_be_bytes)
                .map_err(|_| HepError::ChunkSize)
        };
        let v6_of = |v: &[u8]| {
            <[u8; 16]>::try_from(v)
                .map(Ipv6Addr::from)
                .map_err(|_| HepError::ChunkSize)
        };
        match kind {
            1 => family = Some(u8_of(value)?),
            2 => proto = Some(u8_of(value)?),
            3 => src4 = Some(Ipv4Addr::from(u32_of(value)?)),
            4 => dst4 = Some(Ipv4Addr::from(u32_of(value)?)),
            5 => src6 = Some(v6_of(value)?),
            6 => dst6 = Some(v6_of(value)?),
            7 => sport = Some(u16_of(value)?),
            8 => dport = Some(u16_of(value)?),
            9 => secs = Some(u32_of(value)?),
            10 => usecs = Some(u32_of(value)?),
            11 => ptype = Some(u8_of(value)?),
            12 => agent = Some(u32_of(value)?),
            15 => payload = Some(value),
            _ => {}
        }
    }
    let (src, dst): (IpAddr, IpAddr) = match family {
        Some(10) => (
            src6.ok_or(HepError::Missing)?.into(),
            dst6.ok_or(HepError::Missing)?.into(),
        ),
        _ => (
            src4.ok_or(HepError::Missing)?.into(),
            dst4.ok_or(HepError::Missing)?.into(),
        ),
    };
    let at = UNIX_EPOCH
        + Duration::from_secs(u64::from(secs.ok_or(HepError::Missing)?))
        + Duration::from_micros(u64::from(usecs.unwrap_or(0).min(999_999)));
    Ok(HepPacket {
        src: SocketAddr::new(src, sport.ok_or(HepError::Missing)?),
        dst: SocketAddr::new(dst, dport.ok_or(HepError::Missing)?),
        transport: if proto == Some(6) {
            Transport::Tcp
        } else {
            Transport::Udp
        },
        at,
        protocol_type: ptype.unwrap_or(1),
        agent,
        payload: payload.ok_or(HepError::Missing)?,
    })
}

/// Encodes a packet the way agents do, for the tests.
#[cfg(test)]
pub fn encode(p: &HepPacket<'_>) -> Vec<u8> {
    let mut out = b"HEP3\0\0".to_vec();
    let mut chunk = |kind: u16, value: &[u8]| {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&((value.len() + 6) as u16).to_be_bytes());
        out.extend_from_slice(value);
    };
    let since = p.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    match (p.src.ip(), p.dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            chunk(1, &[2]);
            chunk(3, &s.octets());
            chunk(4, &d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            chunk(1, &[10]);
            chunk(5, &v6(s).octets());
            chunk(6, &v6(d).octets());
        }
    }
    chunk(2, &[if p.transport == Transport::Tcp { 6 } else { 17 }]);
    chunk(7, &p.src.port().to_be_bytes());
    chunk(8, &p.dst.port().to_be_bytes());
    chunk(9, &(since.as_secs() as u32).to_be_bytes());
    chunk(10, &since.subsec_micros().to_be_bytes());
    chunk(11, &[p.protocol_type]);
    if let Some(agent) = p.agent {
        chunk(12, &agent.to_be_bytes());
    }
    chunk(15, p.payload);
    let len = (out.len().min(MAX_PACKET) as u16).to_be_bytes();
    out[4..6].copy_from_slice(&len);
    out
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// `sipedge_hep_packets_accepted_total`, `sipedge_hep_packets_refused_total{reason}`.
#[derive(Debug, Clone, Default)]
pub struct HepMetrics {
    accepted: Counter,
    refused: Family<Reason, Counter>,
}

impl HepMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "hep_packets_accepted",
            "HEP3 packets whose SIP went to call tracking",
            self.accepted.clone(),
        );
        registry.register(
            "hep_packets_refused",
            "HEP3 packets refused, by reason (undecodable, not SIP, Sipserver hop, queue full)",
            self.refused.clone(),
        );
    }

    fn refuse(&self, reason: &'static str) {
        self.refused.get_or_create(&Reason { reason }).inc();
    }
}

/// The bound sockets; [`HepListener::run`] serves them.
#[derive(Debug)]
pub struct HepListener {
    udp: UdpSocket,
    tcp: TcpListener,
    sides: Sides,
    metrics: HepMetrics,
}

impl HepListener {
    /// Binds UDP and TCP on `hep.listen` (before anything runs, like every listener).
    pub async fn bind(
        cfg: &HepConfig,
        sip: &sipedge_sip::ProxyConfig,
    ) -> std::io::Result<HepListener> {
        let sides = Sides::new(sip).map_err(std::io::Error::other)?;
        let udp = UdpSocket::bind(cfg.listen).await?;
        let tcp = TcpListener::bind(cfg.listen).await?;
        Ok(HepListener {
            udp,
            tcp,
            sides,
            metrics: HepMetrics::default(),
        })
    }

    pub fn metrics(&self) -> &HepMetrics {
        &self.metrics
    }

    /// Serves until `shutdown`; then drops its sender, so call tracking can end.
    pub async fn run(self, tx: mpsc::Sender<Relayed>, shutdown: CancellationToken) {
        let feed = Arc::new(Feed {
            sides: self.sides,
            metrics: self.metrics,
            tx,
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = self.udp.recv_from(&mut buf) => match r {
                    Ok((n, _)) => feed.packet(&buf[..n]),
                    Err(e) => tracing::debug!(error = %e, "HEP receive failed"),
                },
                r = self.tcp.accept() => {
                    let Ok((conn, peer)) = r else { continue };
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        feed.metrics.refuse("connections_full");
                        continue;
                    };
                    let feed = feed.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = feed.stream(conn) => {}
                        }
                        tracing::debug!(%peer, "HEP connection closed");
                        drop(slot);
                    });
                }
            }
        }
    }
}

struct Feed {
    sides: Sides,
    metrics: HepMetrics,
    tx: mpsc::Sender<Relayed>,
}

impl Feed {
    /// Reads packets framed by their own length until the agent closes or idles.
    async fn stream(&self, mut conn: tokio::net::TcpStream) {
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let head = tokio::time::timeout(IDLE, conn.read_exact(&mut buf[..HEADER])).await;
            if !matches!(head, Ok(Ok(_))) {
                return;
            }
            let total = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            if &buf[..4] != b"HEP3" || total < HEADER {
                // No way to find the next packet's start: the stream is not HEP3.
                self.metrics.refuse(HepError::Magic.reason());
                return;
            }
            let body = tokio::time::timeout(IDLE, conn.read_exact(&mut buf[HEADER..total])).await;
            if !matches!(body, Ok(Ok(_))) {
                return;
            }
            self.packet(&buf[..total]);
        }
    }

    fn packet(&self, bytes: &[u8]) {
        let p = match decode(bytes) {
            Ok(p) => p,
            Err(e) => return self.metrics.refuse(e.reason()),
        };
        if p.protocol_type != 1 {
            return self.metrics.refuse("not_sip");
        }
        let direction = match self.sides.leg(p.src, p.dst) {
            Leg::Terminal(d) => d,
            Leg::Upstream => return self.metrics.refuse("sipserver_hop"),
            Leg::Unrelated => return self.metrics.refuse("not_sipedge"),
        };
        let relayed = Relayed::new(
            p.at,
            direction,
            Origin::Forwarded,
            p.transport,
            (p.src, p.dst),
            Source::Hep,
            Bytes::copy_from_slice(p.payload),
        );
        match self.tx.try_send(relayed) {
            Ok(()) => {
                self.metrics.accepted.inc();
            }
            Err(_) => self.metrics.refuse("queue_full"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet() -> HepPacket<'static> {
        HepPacket {
            src: "192.0.2.7:5060".parse().expect("src"),
            dst: "10.0.0.1:14500".parse().expect("dst"),
            transport: Transport::Udp,
            at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            protocol_type: 1,
            agent: Some(2001),
            payload: b"OPTIONS sip:x SIP/2.0\r\n\r\n",
        }
    }

    /// Rewrites the first chunk of type `kind` with `f`, fixing the packet's total length.
    fn with_chunk(bytes: &[u8], kind: u16, f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut at = HEADER;
        while at + 6 <= bytes.len() {
            let len = usize::from(u16::from_be_bytes([bytes[at + 4], bytes[at + 5]]));
            if u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) == kind {
                let mut chunk = bytes[at..at + len].to_vec();
                f(&mut chunk);
                let mut out = bytes[..at].to_vec();
                out.extend_from_slice(&chunk);
                out.extend_from_slice(&bytes[at + len..]);
                let total = (out.len() as u16).to_be_bytes();
                out[4..6].copy_from_slice(&total);
                return out;
            }
            at += len;
        }
        panic!("no chunk {kind}");
    }

    #[test]
    fn good_and_hostile_packets() {
        let good = encode(&packet());
        let v6 = encode(&HepPacket {
            src: "[2001:db8::7]:5060".parse().expect("src"),
            dst: "[2001:db8::1]:14500".parse().expect("dst"),
            transport: Transport::Tcp,
            ..packet()
        });
        let mut vendor = good.clone();
        vendor.extend_from_slice(&[0, 9, 0, 1, 0, 8, 0xaa, 0xbb]);
        let total = (vendor.len() as u16).to_be_bytes();
        vendor[4..6].copy_from_slice(&total);
        let mut huge_total = good.clone();
        huge_total[4..6].copy_from_slice(&u16::MAX.to_be_bytes());
        let mut short_total = good.clone();
        short_total[4..6].copy_from_slice(&3u16.to_be_bytes());
        let huge_chunk = with_chunk(&good, 15, |c| {
            c[4..6].copy_from_slice(&u16::MAX.to_be_bytes())
        });
        let tiny_chunk = with_chunk(&good, 7, |c| c[4..6].copy_from_slice(&2u16.to_be_bytes()));
        let wide_port = with_chunk(&good, 7, |c| {
            c.push(0);
            let len = (c.len() as u16).to_be_bytes();
            c[4..6].copy_from_slice(&len);
        });
        let no_payload = with_chunk(&good, 15, |c| c[2..4].copy_from_slice(&99u16.to_be_bytes()));
        let mut trailing = good.clone();
        trailing.push(0);
        let mut hep2 = good.clone();
        hep2[3] = b'2';
        let cases: Vec<(&str, &[u8], Result<HepPacket<'_>, HepError>)> = vec![
            ("good", &good, Ok(packet())),
            (
                "ipv6 over tcp",
                &v6,
                Ok(HepPacket {
                    src: "[2001:db8::7]:5060".parse().expect("src"),
                    dst: "[2001:db8::1]:14500".parse().expect("dst"),
                    transport: Transport::Tcp,
                    ..packet()
                }),
            ),
            ("vendor chunk skipped", &vendor, Ok(packet())),
            ("empty", b"", Err(HepError::Short)),
            ("header only, cut", b"HEP3\0", Err(HepError::Short)),
            ("hep2", &hep2, Err(HepError::Magic)),
            (
                "declared longer than sent",
                &huge_total,
                Err(HepError::Length),
            ),
            (
                "declared shorter than the header",
                &short_total,
                Err(HepError::Length),
            ),
            ("bytes after the packet", &trailing, Err(HepError::Length)),
            (
                "cut mid-chunk",
                &good[..good.len() - 3],
                Err(HepError::Length),
            ),
            (
                "chunk length past the end",
                &huge_chunk,
                Err(HepError::Chunk),
            ),
            (
                "chunk length below its header",
                &tiny_chunk,
                Err(HepError::Chunk),
            ),
            ("three-byte port", &wide_port, Err(HepError::ChunkSize)),
            ("no payload", &no_payload, Err(HepError::Missing)),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(decode(bytes), want, "{name}");
        }
    }

    #[test]
    fn no_cut_of_a_packet_panics_or_decodes() {
        let good = encode(&packet());
        for end in 0..good.len() {
            let mut cut = good[..end].to_vec();
            if cut.len() >= HEADER {
                let total = (cut.len() as u16).to_be_bytes();
                cut[4..6].copy_from_slice(&total);
            }
            assert!(decode(&cut).is_err(), "cut at {end}");
        }
    }
}
