//! Flow tokens (RFC 5626 style) and Via branches.
//!
//! A flow token names the way back to a terminal: transport, the sipedge port it talks to,
//! its public (NAT) address and, over TCP, the connection. It travels in the user part of the
//! Record-Route / Path URI sipedge inserts, so the Sipserver's later requests carry it back.
//! Tokens are authenticated with HMAC-SHA256 under a key kept in the data dir: a forged or
//! altered token is never followed, and tokens survive a restart.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use crate::error::Error;

/// Name of the key file inside `node.data_dir`.
pub const KEY_FILE: &str = "sip-flow.key";

/// Bytes of HMAC kept in a token: 80 bits make forging by guessing hopeless.
const MAC_LEN: usize = 10;
/// A token's bytes before hex: kind, local port, remote IP (up to IPv6), remote port,
/// connection id, MAC.
const TOKEN_RAW_LEN: usize = 1 + 2 + 16 + 2 + 8 + MAC_LEN;

/// Prefix of every branch sipedge writes, after the RFC 3261 magic cookie: lets a response's
/// top Via be recognised as sipedge's own.
pub const BRANCH_PREFIX: &[u8] = b"z9hG4bKsE";

/// How a message travels between sipedge and a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams; the flow is the peer's source address and port.
    Udp,
    /// A stream; the flow is the connection.
    Tcp,
}

impl Transport {
    /// The name used in Via headers.
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// The name used for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A terminal's flow: everything needed to reach it again the way it reached sipedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// The transport the terminal used.
    pub transport: Transport,
    /// The sipedge port the terminal sent to: its NAT binding only lets replies from there in.
    pub local_port: u16,
    /// The terminal's address as seen by sipedge (after NAT).
    pub remote: SocketAddr,
    /// The TCP connection's id (0 for UDP); checked against `remote` before use, since ids
    /// restart with the process.
    pub conn: u64,
}

/// The secret that authenticates flow tokens and salts branches.
#[derive(Clone)]
pub struct FlowKey {
    /// HMAC state with the key already absorbed: cloning it is cheaper than re-keying.
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowKey(..)")
    }
}

impl FlowKey {
    /// A key from raw bytes (tests, and the file loader).
    pub fn from_bytes(key: &[u8; 32]) -> Result<FlowKey, hmac::digest::InvalidLength> {
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)?;
        Ok(FlowKey { mac })
    }

    /// Reads the key file in `data_dir`, creating it (32 random bytes, mode 0600) on first
    /// start, so tokens handed out before a restart stay valid after it.
    pub fn load_or_create(data_dir: &Path) -> Result<FlowKey, Error> {
        let path = data_dir.join(KEY_FILE);
        let fail = |reason: String| Error::KeyFile {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| fail(format!("creating the dir: {e}")))?;
        let mut key = [0u8; 32];
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                getrandom::fill(&mut key).map_err(|e| fail(format!("no randomness: {e}")))?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| fail(format!("writing: {e}")))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut file = std::fs::File::open(&path).map_err(|e| fail(e.to_string()))?;
                let mut data = Vec::new();
                file.read_to_end(&mut data)
                    .map_err(|e| fail(format!("reading: {e}")))?;
                key = data.as_slice().try_into().map_err(|_| {
                    fail(format!(
                        "holds {} bytes, expected 32; remove it to make a new key \
                         (open dialogs will lose their flows)",
                        data.len()
                    ))
                })?;
            }
            Err(e) => return Err(fail(format!("creating: {e}"))),
        }
        FlowKey::from_bytes(&key).map_err(|e| fail(e.to_string()))
    }

    /// Appends the token naming `flow` (lower-case hex, valid in a SIP URI user part).
    pub fn encode(&self, flow: &Flow, out: &mut Vec<u8>) {
        // On the stack (at most `TOKEN_RAW_LEN` bytes): a token is made for most relayed
        // requests.
        let mut raw: SmallVec<[u8; 64]> = SmallVec::new();
        let tcp = u8::from(flow.transport == Transport::Tcp);
        match flow.remote.ip() {
            IpAddr::V4(ip) => {
                raw.push(tcp);
                raw.extend_from_slice(&flow.local_port.to_be_bytes());
                raw.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                raw.push(tcp | 2);
                raw.extend_from_slice(&flow.local_port.to_be_bytes());
                raw.extend_from_slice(&ip.octets());
            }
        }
        raw.extend_from_slice(&flow.remote.port().to_be_bytes());
        raw.extend_from_slice(&flow.conn.to_be_bytes());
        let tag = self.tag(&raw);
        raw.extend_from_slice(tag.get(..MAC_LEN).unwrap_or_default());
        for b in &raw {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 15)]);
        }
    }

    /// The flow a token names, if the token is well formed and was made with this key.
    pub fn decode(&self, token: &[u8]) -> Option<Flow> {
        let mut raw = [0u8; TOKEN_RAW_LEN];
        if !token.len().is_multiple_of(2) || token.len() / 2 > raw.len() {
            return None;
        }
        let len = token.len() / 2;
        for (dst, pair) in raw.iter_mut().zip(token.chunks_exact(2)) {
            let hi = unhex(*pair.first()?)?;
            let lo = unhex(*pair.get(1)?)?;
            *dst = hi << 4 | lo;
        }
        let raw = raw.get(..len)?;
        let (&kind, rest) = raw.split_first()?;
        let ip_len = match kind & !1 {
            0 => 4,
            2 => 16,
            _ => return None,
        };
        let body_len = 1 + 2 + ip_len + 2 + 8;
        if len != body_len + MAC_LEN {
            return None;
        }
        let (body, mac) = raw.split_at(body_len);
        let mut check = self.mac.clone();
        check.update(body);
        check.verify_truncated_left(mac).ok()?;

        let local_port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let rest = rest.get(2..)?;
        let ip = if ip_len == 4 {
            let o: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            IpAddr::V4(Ipv4Addr::from(o))
        } else {
            let o: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(o))
        };
        let rest = rest.get(ip_len..)?;
        let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
        let conn = u64::from_be_bytes(rest.get(2..10)?.try_into().ok()?);
        Some(Flow {
            transport: if kind & 1 == 1 {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            local_port,
            remote: SocketAddr::new(ip, port),
            conn,
        })
    }

    fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A Via port for hashing: absent and written ports never collide.
fn port_bytes(port: Option<u16>) -> [u8; 3] {
    let [hi, lo] = port.unwrap_or(0).to_be_bytes();
    [u8::from(port.is_some()), hi, lo]
}

fn unhex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// What identifies the transaction of an incoming request for branch derivation.
#[derive(Debug, Clone, Copy)]
pub enum BranchInput<'a> {
    /// The top Via's branch carries the RFC 3261 cookie: branch and sent-by identify the
    /// transaction, and a CANCEL or non-2xx ACK carries the INVITE's.
    Rfc3261 {
        /// The incoming top Via's branch parameter.
        branch: &'a [u8],
        /// The incoming top Via's sent-by host.
        sent_by: &'a [u8],
        /// The incoming top Via's sent-by port, when written.
        port: Option<u16>,
    },
    /// An RFC 2543 client: RFC 3261 §16.11 says to hash what identifies the transaction.
    Legacy {
        /// The incoming top Via's sent-by host.
        sent_by: &'a [u8],
        /// The incoming top Via's sent-by port, when written.
        port: Option<u16>,
        /// The Call-ID.
        call_id: &'a [u8],
        /// The CSeq number (not the method, so a CANCEL matches its INVITE).
        cseq: u32,
        /// The From tag.
        from_tag: &'a [u8],
        /// The Request-URI.
        request_uri: &'a [u8],
    },
}

/// Appends the branch for sipedge's own Via: the magic cookie, sipedge's prefix, and 96 bits
/// of a hash of what identifies the incoming transaction, so the same request always gets the
/// same branch (retransmissions, CANCEL) and different ones practically never collide.
pub fn derive_branch(input: BranchInput<'_>, out: &mut Vec<u8>) {
    let mut h = Sha256::new();
    match input {
        BranchInput::Rfc3261 {
            branch,
            sent_by,
            port,
        } => {
            h.update([1]);
            h.update(branch);
            h.update([0]);
            h.update(sent_by);
            h.update(port_bytes(port));
        }
        BranchInput::Legacy {
            sent_by,
            port,
            call_id,
            cseq,
            from_tag,
            request_uri,
        } => {
            h.update([2]);
            for part in [sent_by, call_id, from_tag, request_uri] {
                h.update(part);
                h.update([0]);
            }
            h.update(cseq.to_be_bytes());
            h.update(port_bytes(port));
        }
    }
    let digest = h.finalize();
    out.extend_from_slice(BRANCH_PREFIX);
    for b in digest.iter().take(12) {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey::from_bytes(&[7; 32]).unwrap()
    }

    fn flow(transport: Transport, remote: &str, conn: u64) -> Flow {
        Flow {
            transport,
            local_port: 14501,
            remote: remote.parse().unwrap(),
            conn,
        }
    }

    fn token(f: &Flow) -> Vec<u8> {
        let mut out = Vec::new();
        key().encode(f, &mut out);
        out
    }

    #[test]
    fn tokens_round_trip() {
        for f in [
            flow(Transport::Udp, "203.0.113.9:40123", 0),
            flow(Transport::Tcp, "203.0.113.9:1", u64::MAX),
            flow(Transport::Tcp, "[2001:db8::1]:5060", 42),
            flow(Transport::Udp, "[::ffff:1.2.3.4]:65535", 0),
        ] {
            let t = token(&f);
            assert!(t.iter().all(|b| b.is_ascii_hexdigit()), "{t:?}");
            assert_eq!(key().decode(&t), Some(f));
            assert_eq!(key().decode(&t.to_ascii_uppercase()), Some(f));
        }
    }

    fn check_decode(input: &[u8], expected: Option<Flow>) {
        assert_eq!(
            key().decode(input),
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn forged_and_hostile_tokens_are_refused() {
        let good = token(&flow(Transport::Udp, "198.51.100.1:5060", 0));
        let other_key = {
            let mut out = Vec::new();
            FlowKey::from_bytes(&[8; 32])
                .unwrap()
                .encode(&flow(Transport::Udp, "198.51.100.1:5060", 0), &mut out);
            out
        };
        let mut flipped = good.clone();
        flipped[6] = if flipped[6] == b'0' { b'1' } else { b'0' };
        let mut mac_flipped = good.clone();
        let last = mac_flipped.len() - 1;
        mac_flipped[last] = if mac_flipped[last] == b'0' {
            b'1'
        } else {
            b'0'
        };
        // A token for another address, made by splicing the MAC of a valid one.
        let mut spliced = token(&flow(Transport::Udp, "10.0.0.1:5060", 0));
        let n = spliced.len();
        spliced[n - 2 * MAC_LEN..].copy_from_slice(&good[n - 2 * MAC_LEN..]);

        check_decode(&other_key, None);
        check_decode(&flipped, None);
        check_decode(&mac_flipped, None);
        check_decode(&spliced, None);
        check_decode(&good[..good.len() - 2], None);
        check_decode(&[good.clone(), b"00".to_vec()].concat(), None);
        check_decode(&good[..good.len() - 1], None);
        check_decode(b"", None);
        check_decode(b"alice", None);
        check_decode(b"zz", None);
        check_decode(&[b'0'; 1000], None);
        check_decode(&[0xff; 54], None);
        check_decode(b"\xc3\xa9\xc3\xa9", None);
        // A kind byte with unknown bits.
        let mut bad_kind = good.clone();
        bad_kind[0] = b'8';
        check_decode(&bad_kind, None);
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("data");
        let k1 = FlowKey::load_or_create(&sub).unwrap();
        let meta = std::fs::metadata(sub.join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let f = flow(Transport::Tcp, "192.0.2.1:1234", 3);
        let mut t = Vec::new();
        k1.encode(&f, &mut t);
        let k2 = FlowKey::load_or_create(&sub).unwrap();
        assert_eq!(k2.decode(&t), Some(f));

        std::fs::write(sub.join(KEY_FILE), b"short").unwrap();
        let err = FlowKey::load_or_create(&sub).unwrap_err().to_string();
        assert!(err.contains(KEY_FILE) && err.contains("5 bytes"), "{err}");
    }

    fn branch(input: BranchInput<'_>) -> String {
        let mut out = Vec::new();
        derive_branch(input, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn branches_are_stable_and_distinct() {
        let a = BranchInput::Rfc3261 {
            branch: b"z9hG4bK776",
            sent_by: b"10.0.0.1",
            port: Some(5060),
        };
        let b = BranchInput::Rfc3261 {
            branch: b"z9hG4bK777",
            sent_by: b"10.0.0.1",
            port: Some(5060),
        };
        let c = BranchInput::Rfc3261 {
            branch: b"z9hG4bK776",
            sent_by: b"10.0.0.1",
            port: Some(5061),
        };
        let legacy = |cseq| BranchInput::Legacy {
            sent_by: b"10.0.0.1",
            port: None,
            call_id: b"abc",
            cseq,
            from_tag: b"1",
            request_uri: b"sip:x@y",
        };
        assert_eq!(branch(a), branch(a));
        assert!(branch(a).starts_with("z9hG4bKsE"));
        assert_eq!(branch(a).len(), BRANCH_PREFIX.len() + 24);
        assert_ne!(branch(a), branch(b));
        assert_ne!(branch(a), branch(c));
        assert_eq!(branch(legacy(1)), branch(legacy(1)));
        assert_ne!(branch(legacy(1)), branch(legacy(2)));
    }
}
