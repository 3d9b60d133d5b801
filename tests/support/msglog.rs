//! SIPp's message log (`-trace_msg`): when each message of each call was sent or received,
//! which is how a test knows which calls had ended at a given instant.

use chrono::{Local, NaiveDateTime, TimeZone};

/// One message of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// When SIPp logged it, in ms since the Unix epoch (SIPp writes local time).
    pub at_ms: i64,
    /// True for a message SIPp sent, false for one it received.
    pub sent: bool,
    /// The start line: `INVITE sip:…` or `SIP/2.0 200 OK`.
    pub first_line: String,
    /// Its Call-ID, which names the call in the CDRs.
    pub call_id: String,
    /// Its CSeq method, to tell the 200 of a BYE from the 200 of an INVITE.
    pub cseq_method: String,
}

impl Logged {
    /// The status code of a response, None for a request.
    pub fn status(&self) -> Option<u16> {
        self.first_line
            .strip_prefix("SIP/2.0 ")?
            .get(..3)?
            .parse()
            .ok()
    }

    /// The method of a request, None for a response.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/2.0") {
            return None;
        }
        self.first_line.split(' ').next()
    }
}

/// Separator SIPp writes before each message, followed by the date and time.
const SEPARATOR: &str = "-----------------------------------------------";

/// Every message of a `-message_file`, in the order logged; blocks it cannot read are skipped.
pub fn parse(log: &str) -> Vec<Logged> {
    let mut out = Vec::new();
    let mut lines = log.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(stamp) = line.strip_prefix(SEPARATOR) else {
            continue;
        };
        let mut block = Vec::new();
        while let Some(next) = lines.peek() {
            if next.starts_with(SEPARATOR) {
                break;
            }
            block.push(*next);
            lines.next();
        }
        if let Some(logged) = block_of(stamp.trim(), &block) {
            out.push(logged);
        }
    }
    out
}

fn block_of(stamp: &str, block: &[&str]) -> Option<Logged> {
    let at = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    let at_ms = Local
        .from_local_datetime(&at)
        .earliest()?
        .timestamp_millis();
    let what = block.iter().find(|l| !l.trim().is_empty())?;
    let sent = what.contains(" sent");
    let first_line = block
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("SIP/2.0 ") || l.ends_with(" SIP/2.0"))?
        .to_owned();
    let header = |name: &str| {
        block.iter().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let call_id = header("Call-ID")?;
    let cseq_method = header("CSeq")?.split_whitespace().nth(1)?.to_owned();
    Some(Logged {
        at_ms,
        sent,
        first_line,
        call_id,
        cseq_method,
    })
}
