//! One captured frame down to its UDP datagram or TCP segment: link layer (Ethernet with
//! VLAN tags, Linux cooked SLL and SLL2, raw IP, BSD loopback), IPv4 or IPv6, UDP or TCP,
//! or an IP fragment for [`super::defrag`]. Pure, no allocation: every answer borrows the frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Link-layer header types of pcap and pcapng (tcpdump.org/linktypes.html) this reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// 1: Ethernet II, with 802.1Q/802.1ad tags.
    Ethernet,
    /// 113: Linux cooked capture v1 (`tcpdump -i any` before libpcap 1.10).
    Sll,
    /// 276: Linux cooked capture v2 (`tshark -i any`).
    Sll2,
    /// 101, 228, 229: the frame is the IP packet.
    Raw,
    /// 0: BSD loopback, address family in host byte order.
    Null,
    /// 108: OpenBSD loopback, address family in network byte order.
    Loop,
}

impl Link {
    /// The link type of a capture's interface; `None` for one that cannot carry SIP here.
    pub fn from_linktype(linktype: i32) -> Option<Link> {
        match linktype {
            1 => Some(Link::Ethernet),
            113 => Some(Link::Sll),
            276 => Some(Link::Sll2),
            101 | 228 | 229 => Some(Link::Raw),
            0 => Some(Link::Null),
            108 => Some(Link::Loop),
            _ => None,
        }
    }
}

/// The transport payload of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    Udp(&'a [u8]),
    Tcp {
        seq: u32,
        syn: bool,
        /// FIN or RST: the stream ends after this segment's data.
        end: bool,
        data: &'a [u8],
    },
}

/// A decoded packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Payload<'a>,
}

/// One IPv4 or IPv6 fragment of a UDP or TCP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4's protocol, or the Next Header of IPv6's fragment header.
    pub proto: u8,
    /// IPv4's 16-bit identification or IPv6's 32-bit one.
    pub id: u32,
    /// Where `data` goes in the datagram's payload, in bytes.
    pub offset: usize,
    /// More fragments follow this one.
    pub more: bool,
    pub data: &'a [u8],
}

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    Packet(Packet<'a>),
    Fragment(Fragment<'a>),
}

/// Why a frame yields no datagram or segment; the import's summary counts each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// ARP, LLDP and the like.
    NotIp,
    /// ICMP, SCTP…
    NotUdpTcp,
    /// IP fragments are reassembled ([`super::defrag`]); these are the ones that made no
    /// datagram. Its datagram was still incomplete after 30 s of capture time, at the end of
    /// the capture, or when dropped to make room for newer ones; counted once a datagram.
    FragmentIncomplete,
    /// Its datagram had fragments overlapping with other bytes, or two different ends, and was
    /// discarded whole (RFC 5722); counted once a datagram.
    FragmentOverlap,
    /// A fragment repeating bytes already held, dropped alone.
    FragmentDuplicate,
    /// Its datagram would pass 65 535 bytes, or come in more than 128 separate pieces.
    FragmentTooLarge,
    /// The frame ends before its headers or its declared length do.
    Truncated,
    /// A header contradicts itself (bad version, header length below the minimum).
    Malformed,
}

impl Skip {
    pub fn name(self) -> &'static str {
        match self {
            Skip::NotIp => "not_ip",
            Skip::NotUdpTcp => "not_udp_tcp",
            Skip::FragmentIncomplete => "ip_fragment_incomplete",
            Skip::FragmentOverlap => "ip_fragment_overlap",
            Skip::FragmentDuplicate => "ip_fragment_duplicate",
            Skip::FragmentTooLarge => "ip_fragment_too_large",
            Skip::Truncated => "truncated",
            Skip::Malformed => "malformed",
        }
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one frame of a capture with link type `link`.
pub fn decode(link: Link, frame: &[u8]) -> Result<Decoded<'_>, Skip> {
    let (ethertype, ip) = match link {
        Link::Ethernet => {
            let mut at = 12;
            let mut ethertype = be16(frame, at).ok_or(Skip::Truncated)?;
            // Two tags at most: 802.1ad outer, 802.1Q inner.
            for _ in 0..2 {
                if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
                    break;
                }
                at += 4;
                ethertype = be16(frame, at).ok_or(Skip::Truncated)?;
            }
            (ethertype, frame.get(at + 2..).ok_or(Skip::Truncated)?)
        }
        Link::Sll => (
            be16(frame, 14).ok_or(Skip::Truncated)?,
            frame.get(16..).ok_or(Skip::Truncated)?,
        ),
        Link::Sll2 => (
            be16(frame, 0).ok_or(Skip::Truncated)?,
            frame.get(20..).ok_or(Skip::Truncated)?,
        ),
        Link::Raw => match frame.first().map(|b| b >> 4) {
            Some(4) => (ETHERTYPE_IPV4, frame),
            Some(6) => (ETHERTYPE_IPV6, frame),
            Some(_) => return Err(Skip::Malformed),
            None => return Err(Skip::Truncated),
        },
        Link::Null | Link::Loop => {
            let raw: [u8; 4] = frame
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or(Skip::Truncated)?;
            // Host order is the writer's: either order is tried, since no family is above 255.
            let family = if link == Link::Loop {
                u32::from_be_bytes(raw)
            } else {
                u32::from_le_bytes(raw).min(u32::from_be_bytes(raw))
            };
            let ethertype = match family {
                2 => ETHERTYPE_IPV4,
                10 | 24 | 28 | 30 => ETHERTYPE_IPV6,
                _ => return Err(Skip::NotIp),
            };
            (ethertype, &frame[4..])
        }
    };
    match ethertype {
        ETHERTYPE_IPV4 => ipv4(ip),
        ETHERTYPE_IPV6 => ipv6(ip),
        _ => Err(Skip::NotIp),
    }
}

fn ipv4(p: &[u8]) -> Result<Decoded<'_>, Skip> {
    let first = *p.first().ok_or(Skip::Truncated)?;
    if first >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return Err(Skip::Malformed);
    }
    let total = usize::from(be16(p, 2).ok_or(Skip::Truncated)?);
    if total < header_len {
        return Err(Skip::Malformed);
    }
    // Ethernet pads short frames: the IP length, not the frame's, says where the packet ends.
    let packet = p.get(..total).ok_or(Skip::Truncated)?;
    let flags_offset = be16(packet, 6).ok_or(Skip::Truncated)?;
    let proto = packet[9];
    let src = IpAddr::V4(Ipv4Addr::new(
        packet[12], packet[13], packet[14], packet[15],
    ));
    let dst = IpAddr::V4(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ));
    let data = &packet[header_len..];
    if flags_offset & 0x3fff != 0 {
        if proto != PROTO_UDP && proto != PROTO_TCP {
            return Err(Skip::NotUdpTcp);
        }
        return Ok(Decoded::Fragment(Fragment {
            src,
            dst,
            proto,
            id: u32::from(be16(packet, 4).ok_or(Skip::Truncated)?),
            offset: usize::from(flags_offset & 0x1fff) * 8,
            more: flags_offset & 0x2000 != 0,
            data,
        }));
    }
    transport(proto, src, dst, data).map(Decoded::Packet)
}

fn ipv6(p: &[u8]) -> Result<Decoded<'_>, Skip> {
    let header: &[u8; 40] = p
        .get(..40)
        .and_then(|h| h.try_into().ok())
        .ok_or(Skip::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    let rest = p.get(40..40 + payload_len).ok_or(Skip::Truncated)?;
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&header[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let (src, dst) = (addr(8), addr(24));
    match extensions(header[6], rest)? {
        Upper::Transport(proto, seg) => transport(proto, src, dst, seg).map(Decoded::Packet),
        Upper::Fragment { header, data } => {
            let proto = header[0];
            // Destination options may sit between the fragment header and UDP or TCP.
            if ![PROTO_UDP, PROTO_TCP, 60].contains(&proto) {
                return Err(Skip::NotUdpTcp);
            }
            let offset_more = u16::from_be_bytes([header[2], header[3]]);
            Ok(Decoded::Fragment(Fragment {
                src,
                dst,
                proto,
                id: u32::from_be_bytes([header[4], header[5], header[6], header[7]]),
                offset: usize::from(offset_more >> 3) * 8,
                more: offset_more & 1 != 0,
                data,
            }))
        }
    }
}

/// Where IPv6's extension headers lead.
enum Upper<'a> {
    Transport(u8, &'a [u8]),
    Fragment { header: [u8; 8], data: &'a [u8] },
}

/// Walks hop-by-hop, routing and destination options headers, up to a fragment header or
/// the upper layer.
fn extensions(mut next: u8, mut rest: &[u8]) -> Result<Upper<'_>, Skip> {
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let len = (usize::from(*rest.get(1).ok_or(Skip::Truncated)?) + 1) * 8;
                next = rest[0];
                rest = rest.get(len..).ok_or(Skip::Truncated)?;
            }
            44 => {
                let header: [u8; 8] = rest
                    .get(..8)
                    .and_then(|h| h.try_into().ok())
                    .ok_or(Skip::Truncated)?;
                return Ok(Upper::Fragment {
                    header,
                    data: &rest[8..],
                });
            }
            _ => break,
        }
    }
    Ok(Upper::Transport(next, rest))
}

/// The packet a reassembled datagram's payload makes, as [`decode`] reads an unfragmented one.
pub fn reassembled(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    payload: &[u8],
) -> Result<Packet<'_>, Skip> {
    let (proto, seg) = if src.is_ipv6() {
        match extensions(proto, payload)? {
            Upper::Transport(proto, seg) => (proto, seg),
            // A fragment inside a fragment is not something a sender makes.
            Upper::Fragment { .. } => return Err(Skip::Malformed),
        }
    } else {
        (proto, payload)
    };
    transport(proto, src, dst, seg)
}

fn transport(proto: u8, src: IpAddr, dst: IpAddr, seg: &[u8]) -> Result<Packet<'_>, Skip> {
    let port = |at| be16(seg, at).ok_or(Skip::Truncated);
    let (sport, dport) = (port(0)?, port(2)?);
    let payload = match proto {
        PROTO_UDP => {
            let len = usize::from(port(4)?);
            if len < 8 {
                return Err(Skip::Malformed);
            }
            Payload::Udp(seg.get(8..len).ok_or(Skip::Truncated)?)
        }
        PROTO_TCP => {
            let seq = be32(seg, 4).ok_or(Skip::Truncated)?;
            let offset = usize::from(*seg.get(12).ok_or(Skip::Truncated)? >> 4) * 4;
            let flags = *seg.get(13).ok_or(Skip::Truncated)?;
            if offset < 20 {
                return Err(Skip::Malformed);
            }
            Payload::Tcp {
                seq,
                syn: flags & 0x02 != 0,
                end: flags & 0x05 != 0,
                data: seg.get(offset..).ok_or(Skip::Truncated)?,
            }
        }
        _ => return Err(Skip::NotUdpTcp),
    };
    Ok(Packet {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload,
    })
}

/// Frames for the tests: the inverse of [`decode`], shared with the integration tests.
#[cfg(test)]
#[path = "../../benches/support/pcap.rs"]
mod build;

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn frames_decode_or_say_why_not() {
        let a = addr("10.0.0.1:5060");
        let b = addr("10.0.0.2:14500");
        let a6 = addr("[2001:db8::1]:5060");
        let b6 = addr("[2001:db8::2]:14500");
        let udp = build::ethernet(a, b, None, b"hello");
        let tcp = build::ethernet(a, b, Some((7, 0x18)), b"seg");
        let udp6 = build::ethernet(a6, b6, None, b"v6");
        let mut vlan = udp[..12].to_vec();
        vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        vlan.extend_from_slice(&udp[12..]);
        let mut padded = udp.clone();
        padded.extend_from_slice(&[0; 9]);
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&udp[12..]);
        let mut sll2 = udp[12..14].to_vec();
        sll2.extend_from_slice(&[0; 18]);
        sll2.extend_from_slice(&udp[14..]);
        let mut null = vec![2, 0, 0, 0];
        null.extend_from_slice(&udp[14..]);
        let mut fragment = udp.clone();
        fragment[14 + 6] = 0x20;
        let mut arp = udp.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut icmp = udp.clone();
        icmp[14 + 9] = 1;
        let mut bad_ihl = udp.clone();
        bad_ihl[14] = 0x44;
        let mut long_udp = udp.clone();
        long_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&600u16.to_be_bytes());
        let cut = &udp[..udp.len() - 1];

        let frag6 = build::udp_fragments(a6, b6, 0x0102_0304, b"sixteen bytes!!!", 8);
        let ok_udp = |src, dst, data: &'static [u8]| {
            Ok(Decoded::Packet(Packet {
                src,
                dst,
                payload: Payload::Udp(data),
            }))
        };
        type Case<'a> = (&'a str, Link, &'a [u8], Result<Decoded<'a>, Skip>);
        let cases: Vec<Case<'_>> = vec![
            ("udp", Link::Ethernet, &udp, ok_udp(a, b, b"hello")),
            ("vlan", Link::Ethernet, &vlan, ok_udp(a, b, b"hello")),
            ("padding", Link::Ethernet, &padded, ok_udp(a, b, b"hello")),
            ("sll", Link::Sll, &sll, ok_udp(a, b, b"hello")),
            ("sll2", Link::Sll2, &sll2, ok_udp(a, b, b"hello")),
            ("raw", Link::Raw, &udp[14..], ok_udp(a, b, b"hello")),
            ("null", Link::Null, &null, ok_udp(a, b, b"hello")),
            ("ipv6", Link::Ethernet, &udp6, ok_udp(a6, b6, b"v6")),
            (
                "tcp",
                Link::Ethernet,
                &tcp,
                Ok(Decoded::Packet(Packet {
                    src: a,
                    dst: b,
                    payload: Payload::Tcp {
                        seq: 7,
                        syn: false,
                        end: false,
                        data: b"seg",
                    },
                })),
            ),
            (
                "fragment",
                Link::Ethernet,
                &fragment,
                Ok(Decoded::Fragment(Fragment {
                    src: a.ip(),
                    dst: b.ip(),
                    proto: 17,
                    id: 0,
                    offset: 0,
                    more: true,
                    data: &udp[14 + 20..],
                })),
            ),
            (
                "ipv6 fragment",
                Link::Ethernet,
                &frag6[1],
                Ok(Decoded::Fragment(Fragment {
                    src: a6.ip(),
                    dst: b6.ip(),
                    proto: 17,
                    id: 0x0102_0304,
                    offset: 8,
                    more: true,
                    data: b"sixteen ",
                })),
            ),
            ("arp", Link::Ethernet, &arp, Err(Skip::NotIp)),
            ("icmp", Link::Ethernet, &icmp, Err(Skip::NotUdpTcp)),
            (
                "ihl below 5",
                Link::Ethernet,
                &bad_ihl,
                Err(Skip::Malformed),
            ),
            (
                "udp length past the end",
                Link::Ethernet,
                &long_udp,
                Err(Skip::Truncated),
            ),
            ("cut by one byte", Link::Ethernet, cut, Err(Skip::Truncated)),
            ("empty", Link::Ethernet, &[], Err(Skip::Truncated)),
            (
                "raw garbage",
                Link::Raw,
                &[0x12, 0x34],
                Err(Skip::Malformed),
            ),
        ];
        for (name, link, frame, want) in cases {
            assert_eq!(decode(link, frame), want, "{name}");
        }
    }

    #[test]
    fn a_reassembled_payload_decodes_as_an_unfragmented_one() {
        let a6 = addr("[2001:db8::1]:5060");
        let b6 = addr("[2001:db8::2]:14500");
        let whole = build::ethernet(a6, b6, None, b"payload");
        let want = match decode(Link::Ethernet, &whole) {
            Ok(Decoded::Packet(p)) => p,
            other => panic!("{other:?}"),
        };
        let payload = &whole[14 + 40..];
        assert_eq!(reassembled(17, a6.ip(), b6.ip(), payload), Ok(want));
        let mut dest_opts = vec![17, 0, 1, 4, 0, 0, 0, 0];
        dest_opts.extend_from_slice(payload);
        assert_eq!(reassembled(60, a6.ip(), b6.ip(), &dest_opts), Ok(want));
        let nested = [17, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(
            reassembled(44, a6.ip(), b6.ip(), &nested),
            Err(Skip::Malformed)
        );
    }

    #[test]
    fn no_prefix_of_a_frame_panics() {
        let frame = build::ethernet(addr("[::1]:1"), addr("[::1]:2"), Some((1, 2)), b"abc");
        for link in [
            Link::Ethernet,
            Link::Sll,
            Link::Sll2,
            Link::Raw,
            Link::Null,
            Link::Loop,
        ] {
            for end in 0..frame.len() {
                let _ = decode(link, &frame[..end]);
            }
        }
    }
}
