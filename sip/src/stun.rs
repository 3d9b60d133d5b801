//! STUN keep-alives on the SIP UDP ports (RFC 5626 §4.4.2, §8.4): terminals behind NAT send
//! STUN Binding requests on their flow, and an edge proxy answers them, so the NAT binding
//! stays open and the terminal learns whether its public address changed.
//!
//! Only what a keep-alive needs (RFC 5389): a Binding request is answered with a Binding
//! success response carrying XOR-MAPPED-ADDRESS and FINGERPRINT.

use std::net::{IpAddr, SocketAddr};

/// RFC 5389 magic cookie.
const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const HEADER_LEN: usize = 20;

/// Whether `data` looks like a STUN message rather than SIP: SIP never starts with a zero
/// or one byte, and STUN carries the magic cookie at offset 4.
pub fn is_stun(data: &[u8]) -> bool {
    data.len() >= HEADER_LEN
        && data.first().is_some_and(|&b| b < 2)
        && data.get(4..8) == Some(&MAGIC_COOKIE.to_be_bytes()[..])
}

/// Writes into `out` the answer to a Binding request `data` received from `src`; false (and
/// `out` empty) when `data` is not a well-formed Binding request.
pub fn answer(data: &[u8], src: SocketAddr, out: &mut Vec<u8>) -> bool {
    out.clear();
    if !is_stun(data) {
        return false;
    }
    let field = |at: usize| {
        data.get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_be_bytes)
    };
    let (Some(kind), Some(len)) = (field(0), field(2)) else {
        return false;
    };
    let Some(txid) = data.get(8..HEADER_LEN) else {
        return false;
    };
    if kind != BINDING_REQUEST || usize::from(len) != data.len() - HEADER_LEN || len % 4 != 0 {
        return false;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = src.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut attr = Vec::with_capacity(20);
    match src.ip() {
        IpAddr::V4(ip) => {
            attr.extend_from_slice(&[0, 1]);
            attr.extend_from_slice(&port.to_be_bytes());
            attr.extend(ip.octets().iter().zip(cookie).map(|(a, c)| a ^ c));
        }
        IpAddr::V6(ip) => {
            attr.extend_from_slice(&[0, 2]);
            attr.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(txid);
            attr.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    let attr_len = u16::try_from(attr.len()).unwrap_or(0);
    // Header, XOR-MAPPED-ADDRESS, then FINGERPRINT (8 bytes), whose CRC covers everything
    // before it with the length already counting it.
    let body_len = 4 + attr_len + 8;
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(&cookie);
    out.extend_from_slice(txid);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&attr_len.to_be_bytes());
    out.extend_from_slice(&attr);
    let crc = crc32(out) ^ FINGERPRINT_XOR;
    out.extend_from_slice(&FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    true
}

/// CRC-32 (IEEE 802.3), bit by bit: keep-alives are rare enough not to need a table.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(txid: [u8; 12], attrs: &[u8]) -> Vec<u8> {
        let mut m = vec![0, 1];
        m.extend_from_slice(&u16::try_from(attrs.len()).unwrap().to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        m.extend_from_slice(&txid);
        m.extend_from_slice(attrs);
        m
    }

    fn check(input: &[u8], src: &str, expected: Option<&str>) {
        let mut out = Vec::new();
        let answered = answer(input, src.parse().unwrap(), &mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            answered.then_some(hex.as_str()),
            expected,
            "input {input:02x?}"
        );
    }

    #[test]
    fn binding_requests_are_answered() {
        let tx = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        // 192.0.2.1:32853 (RFC 5769 §2.2's mapped address), by hand: port 0x8055 ^ 0x2112 =
        // 0xa147, address c0000201 ^ 2112a442 = e112a643.
        let v4 = "010100142112a442\
                  0102030405060708090a0b0c\
                  002000080001a147e112a643";
        let mut full = hex_bytes(&v4.replace(' ', ""));
        let crc = crc32(&full) ^ FINGERPRINT_XOR;
        full.extend_from_slice(&[0x80, 0x28, 0, 4]);
        full.extend_from_slice(&crc.to_be_bytes());
        let expected: String = full.iter().map(|b| format!("{b:02x}")).collect();
        check(&request(tx, &[]), "192.0.2.1:32853", Some(&expected));

        // IPv6: address XORed with cookie and transaction id.
        let mut out = Vec::new();
        assert!(answer(
            &request(tx, &[]),
            "[2001:db8::1]:5060".parse().unwrap(),
            &mut out
        ));
        assert_eq!(out.len(), 20 + 4 + 20 + 8);
        assert_eq!(&out[24..26], &[0, 2]);

        // Attributes in the request (e.g. its own FINGERPRINT) are fine.
        check(
            &request(tx, &[0x80, 0x28, 0, 4, 1, 2, 3, 4]),
            "192.0.2.1:32853",
            Some(&expected),
        );
    }

    #[test]
    fn other_bytes_are_not_answered() {
        let tx = [0; 12];
        let mut not_binding = request(tx, &[]);
        not_binding[1] = 0x11;
        let mut bad_len = request(tx, &[]);
        bad_len[3] = 4;
        check(&not_binding, "192.0.2.1:1", None);
        check(&bad_len, "192.0.2.1:1", None);
        check(&request(tx, &[1, 2, 3]), "192.0.2.1:1", None);
        check(&request(tx, &[])[..19], "192.0.2.1:1", None);
        check(b"OPTIONS sip:a SIP/2.0\r\n\r\n", "192.0.2.1:1", None);
        check(b"", "192.0.2.1:1", None);
        assert!(!is_stun(b"INVITE sip:x@y SIP/2.0\r\n"));
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
