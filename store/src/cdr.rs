//! The call detail record (SPEC §5): one schema for every outcome of an INVITE dialog.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, UTC. Every time in the store has this type so that
/// zones only enter at the edges (API, CSV, buckets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMs(pub i64);

impl UnixMs {
    /// Whole seconds and a fraction between `self` and a later time; never negative, since
    /// clocks of different messages can disagree by a millisecond or two.
    pub fn seconds_until(self, later: UnixMs) -> f64 {
        (later.0 - self.0).max(0) as f64 / 1000.0
    }
}

/// Identity of a CDR: the start time in the high 64 bits, a hash of node and Call-ID in the
/// low 64. It sorts by start time, is the same for the same call whenever it is computed
/// (so a call resumed after a restart and a replay into the bank's database keep it), and
/// prints as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CdrId(pub u128);

impl CdrId {
    pub fn new(start: UnixMs, node: &str, call_id: &str) -> Self {
        Self::new_salted(start, node, call_id, 0)
    }

    /// The id of a call that would otherwise share [`CdrId::new`]'s with another: the same
    /// Call-ID starting again within the same millisecond (a new INVITE right after a final
    /// failure). `salt` 0 gives `new`'s id; call tracking uses the INVITE's CSeq.
    pub fn new_salted(start: UnixMs, node: &str, call_id: &str, salt: u32) -> Self {
        let salt = salt.to_be_bytes();
        let salt: &[u8] = if salt == [0; 4] { &[] } else { &salt };
        // FNV-1a: stable across builds and platforms, unlike std's RandomState hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let bytes = node.bytes().chain([0u8]).chain(call_id.bytes());
        for b in bytes.chain(salt.iter().copied()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        CdrId((u128::from(start.0 as u64) << 64) | u128::from(h))
    }

    pub fn start(self) -> UnixMs {
        UnixMs((self.0 >> 64) as u64 as i64)
    }
}

impl fmt::Display for CdrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The text of an id did not have 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a CDR id is 32 hexadecimal digits, got {0:?}")]
pub struct BadCdrId(pub String);

impl FromStr for CdrId {
    type Err = BadCdrId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadCdrId(s.chars().take(64).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(CdrId)
            .map_err(|_| BadCdrId(s.to_owned()))
    }
}

impl Serialize for CdrId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CdrId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `video` when an SDP offer and its answer both carried an `m=video` line with a non-zero
/// port at any time in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallType {
    Audio,
    Video,
}

/// Whether the initial INVITE got a 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Connected,
    NotConnected,
}

/// How the call ended, from the final response to the initial INVITE and what followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    Answered,
    Busy,
    Declined,
    NoAnswer,
    Cancelled,
    Failed,
    Timeout,
}

/// Which side ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    Caller,
    Callee,
    Sipedge,
}

/// The transport the terminal used to reach sipedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the call record was built from: the messages sipedge relayed, or a copy of them
/// (a capture file read by `sipedge import-pcap`, or HEP mirrored by a Sipserver or agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    #[default]
    Proxy,
    Pcap,
    Hep,
}

/// One finished call. Field names and order are those of SPEC §5; `duration_s` and `talk_s`
/// are derived from the times by [`Cdr::duration_s`] and [`Cdr::talk_s`], never stored, so
/// they cannot disagree with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cdr {
    pub id: CdrId,
    pub node: String,
    pub call_id: String,
    pub caller: String,
    pub called: String,
    pub caller_uri: String,
    pub called_uri: String,
    pub call_type: CallType,
    pub video_started_at: Option<UnixMs>,
    pub status: CallStatus,
    pub disposition: Disposition,
    pub sip_code: Option<u16>,
    pub ended_by: EndedBy,
    pub start_time: UnixMs,
    pub ring_time: Option<UnixMs>,
    pub answer_time: Option<UnixMs>,
    pub end_time: UnixMs,
    pub transport: Transport,
    /// `ip:port` the terminal's messages came from (its NAT's public side).
    pub terminal: String,
    /// Absent in what an older peer of the cluster sends: its records are all relayed ones.
    #[serde(default)]
    pub source: Source,
}

impl Cdr {
    pub fn duration_s(&self) -> f64 {
        self.start_time.seconds_until(self.end_time)
    }

    /// The talk time that totals and charts add up: 0 unless connected.
    pub fn talk_s(&self) -> f64 {
        match (self.status, self.answer_time) {
            (CallStatus::Connected, Some(answer)) => answer.seconds_until(self.end_time),
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_sorts_by_start_and_round_trips() {
        let a = CdrId::new(UnixMs(1_700_000_000_000), "sh-01", "abc@host");
        let b = CdrId::new(UnixMs(1_700_000_000_001), "sh-01", "abc@host");
        assert!(a < b);
        assert_eq!(a.start(), UnixMs(1_700_000_000_000));
        assert_eq!(
            a,
            CdrId::new(UnixMs(1_700_000_000_000), "sh-01", "abc@host")
        );
        assert_ne!(
            a,
            CdrId::new(UnixMs(1_700_000_000_000), "sz-01", "abc@host")
        );
        let salted = CdrId::new_salted(UnixMs(1_700_000_000_000), "sh-01", "abc@host", 2);
        assert_eq!(
            CdrId::new_salted(UnixMs(1_700_000_000_000), "sh-01", "abc@host", 0),
            a
        );
        assert_ne!(salted, a);
        assert_eq!(salted.start(), a.start());
        let text = a.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<CdrId>(), Ok(a));
    }

    #[test]
    fn bad_ids_are_refused() {
        for bad in ["", "xyz", "0123", &"g".repeat(32), &"0".repeat(33)] {
            assert!(bad.parse::<CdrId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn talk_time_is_zero_unless_connected() {
        let mut cdr = Cdr {
            id: CdrId(1),
            node: "n".into(),
            call_id: "c".into(),
            caller: "1".into(),
            called: "2".into(),
            caller_uri: "sip:1@h".into(),
            called_uri: "sip:2@h".into(),
            call_type: CallType::Audio,
            video_started_at: None,
            status: CallStatus::NotConnected,
            disposition: Disposition::Busy,
            sip_code: Some(486),
            ended_by: EndedBy::Callee,
            start_time: UnixMs(1_000),
            ring_time: Some(UnixMs(2_000)),
            answer_time: None,
            end_time: UnixMs(5_500),
            transport: Transport::Udp,
            terminal: "127.0.0.1:5060".into(),
            source: Source::Proxy,
        };
        assert_eq!(cdr.duration_s(), 4.5);
        assert_eq!(cdr.talk_s(), 0.0);
        cdr.status = CallStatus::Connected;
        cdr.answer_time = Some(UnixMs(3_000));
        assert_eq!(cdr.talk_s(), 2.5);
    }
}
