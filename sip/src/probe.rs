//! The SIP OPTIONS keep-alive probe of the upstream Sipserver (SPEC §7): building the request
//! and recognising its reply. Off the relay path, so it allocates freely; the monitor owns the
//! socket and the timing.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::scan::{self, Method};

/// One probe request and what identifies its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The request as sent.
    pub bytes: Vec<u8>,
    /// Matched against the reply's top Via, so a late reply to an earlier probe (or any
    /// other datagram) is not taken for this one's.
    pub branch: String,
    /// Matched against the reply's Call-ID for the same reason.
    pub call_id: String,
}

/// Builds an OPTIONS to `target` (the upstream's `host` or `host:port` as configured, used in
/// the Request-URI and To) sent from `local`; `seq` distinguishes consecutive probes and
/// `nonce` the sender (a per-process random value keeps Call-IDs unique across restarts).
pub fn options(target: &str, local: SocketAddr, seq: u32, nonce: u64) -> Probe {
    let branch = format!("z9hG4bK-sipedge-probe-{nonce:016x}-{seq}");
    let call_id = format!("probe-{nonce:016x}-{seq}@sipedge");
    let mut text = String::with_capacity(400);
    // Writing into a String cannot fail.
    let _ = write!(
        text,
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:sipedge@{local}>;tag={nonce:x}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {seq} OPTIONS\r\n\
         Accept: application/sdp\r\n\
         User-Agent: sipedge/{version} probe\r\n\
         Content-Length: 0\r\n\r\n",
        version = env!("CARGO_PKG_VERSION"),
    );
    Probe {
        bytes: text.into_bytes(),
        branch,
        call_id,
    }
}

impl Probe {
    /// The status of `datagram` when it is a well-formed reply to this probe; any status
    /// counts as alive (a 404 or 483 still proves the Sipserver processes SIP).
    pub fn reply_status(&self, datagram: &[u8]) -> Option<u16> {
        let msg = scan::parse(datagram).ok()?;
        let status = msg.status()?;
        let cseq = msg.cseq()?;
        let branch = msg.top_via()?.branch?;
        let matches = cseq.method == Method::Options
            && msg.call_id()? == self.call_id.as_bytes()
            && branch == self.branch.as_bytes();
        matches.then_some(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 40000))
    }

    #[test]
    fn the_request_has_every_mandatory_header() {
        let probe = options("10.0.0.5:14500", local(), 7, 0xabc);
        let msg = scan::parse(&probe.bytes).unwrap();
        assert!(msg.is_mandatory_complete());
        assert_eq!(msg.method(), Some(Method::Options));
        assert_eq!(msg.call_id(), Some(probe.call_id.as_bytes()));
        let cseq = msg.cseq().unwrap();
        assert_eq!((cseq.number, cseq.method), (7, Method::Options));
        let via = msg.top_via().unwrap();
        assert_eq!(via.branch, Some(probe.branch.as_bytes()));
        assert!(probe.branch.starts_with("z9hG4bK"));
        assert_eq!((via.host, via.port), (&b"127.0.0.1"[..], Some(40000)));
        assert_eq!(msg.max_forwards(), Some(70));
        let text = String::from_utf8(probe.bytes.clone()).unwrap();
        assert!(
            text.starts_with("OPTIONS sip:10.0.0.5:14500 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nFrom: <sip:sipedge@127.0.0.1:40000>;tag=abc\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    /// A reply built from the probe's own headers, with `edit` applied to its text.
    fn reply(probe: &Probe, status: &str, edit: impl Fn(String) -> String) -> Vec<u8> {
        let request = String::from_utf8(probe.bytes.clone()).unwrap();
        let headers: String = request
            .lines()
            .filter(|l| {
                ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                    .iter()
                    .any(|h| l.starts_with(h))
            })
            .map(|l| format!("{l}\r\n"))
            .collect();
        edit(format!(
            "SIP/2.0 {status}\r\n{headers}Content-Length: 0\r\n\r\n"
        ))
        .into_bytes()
    }

    fn check(edit: impl Fn(String) -> String, status: &str, expected: Option<u16>) {
        let probe = options("sipserver", local(), 3, 1);
        let got = probe.reply_status(&reply(&probe, status, &edit));
        assert_eq!(got, expected, "{status}");
    }

    #[test]
    fn replies() {
        let same = |s: String| s;
        check(same, "200 OK", Some(200));
        check(same, "404 Not Found", Some(404));
        check(same, "503 Service Unavailable", Some(503));
        check(|s| s.replace("-3;rport", "-2;rport"), "200 OK", None);
        check(
            |s| s.replace("probe-0000000000000001-3@", "other@"),
            "200 OK",
            None,
        );
        check(|s| s.replace("3 OPTIONS", "3 INVITE"), "200 OK", None);
        check(
            |s| s.replace("SIP/2.0 200 OK", "OPTIONS sip:x SIP/2.0"),
            "200 OK",
            None,
        );
        check(|_| "garbage".to_owned(), "200 OK", None);
        check(|s| s[..s.len() / 2].to_owned(), "200 OK", None);
    }
}
