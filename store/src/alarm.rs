//! Alarms (SPEC §7, §11): raised by the monitor, kept in the store, listed newest first.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cdr::UnixMs;

/// Identity of an alarm: the raise time in the high 64 bits (so alarms list newest first by
/// key order) and a hash of node, kind and target in the low 64. Prints as 32 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AlarmId(pub u128);

impl AlarmId {
    pub fn new(raised_at: UnixMs, node: &str, kind: AlarmKind, target: &str) -> Self {
        // FNV-1a, as for CdrId: stable across builds.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in node
            .bytes()
            .chain([0u8])
            .chain(kind.as_str().bytes())
            .chain([0u8])
            .chain(target.bytes())
        {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        AlarmId((u128::from(raised_at.0 as u64) << 64) | u128::from(h))
    }
}

impl fmt::Display for AlarmId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The text of an alarm id did not have 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an alarm id is 32 hexadecimal digits, got {0:?}")]
pub struct BadAlarmId(pub String);

impl FromStr for AlarmId {
    type Err = BadAlarmId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadAlarmId(s.chars().take(64).collect()));
        }
        u128::from_str_radix(s, 16)
            .map(AlarmId)
            .map_err(|_| BadAlarmId(s.to_owned()))
    }
}

impl Serialize for AlarmId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AlarmId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the alarm is about (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmKind {
    ProcessMissing,
    ProcessRestarted,
    ProcessCpu,
    ProcessMemory,
    UpstreamDown,
    DiskLow,
    StoreError,
    /// A reload's file did not load; the running configuration stays (not in SPEC §11's
    /// list: issue 8 asks for an alarm there).
    ConfigInvalid,
    /// The bank's database has not taken CDRs for longer than `sink.postgres.lag_alarm`
    /// (issue 12; not in SPEC §11's list either).
    SinkLag,
}

impl AlarmKind {
    pub const ALL: [AlarmKind; 9] = [
        AlarmKind::ProcessMissing,
        AlarmKind::ProcessRestarted,
        AlarmKind::ProcessCpu,
        AlarmKind::ProcessMemory,
        AlarmKind::UpstreamDown,
        AlarmKind::DiskLow,
        AlarmKind::StoreError,
        AlarmKind::ConfigInvalid,
        AlarmKind::SinkLag,
    ];

    /// The name used in JSON, metrics labels and the id hash.
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::ProcessMissing => "process_missing",
            AlarmKind::ProcessRestarted => "process_restarted",
            AlarmKind::ProcessCpu => "process_cpu",
            AlarmKind::ProcessMemory => "process_memory",
            AlarmKind::UpstreamDown => "upstream_down",
            AlarmKind::DiskLow => "disk_low",
            AlarmKind::StoreError => "store_error",
            AlarmKind::ConfigInvalid => "config_invalid",
            AlarmKind::SinkLag => "sink_lag",
        }
    }
}

/// How urgent an alarm is, in the usual telecom (X.733) grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Minor,
    Major,
    Critical,
}

/// One alarm, raised and maybe cleared; the shape of SPEC §11.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    /// Stable key: re-putting an alarm with the same id updates it (e.g. to clear it).
    pub id: AlarmId,
    /// `node.name`, so alarms of several nodes can be told apart in one view.
    pub node: String,
    /// What kind of condition.
    pub kind: AlarmKind,
    /// What it is about: a process name, the upstream address, the data dir.
    pub target: String,
    /// How urgent.
    pub severity: Severity,
    /// One line an operator can act on.
    pub message: String,
    /// When it was raised.
    pub raised_at: UnixMs,
    /// When it cleared; `None` while it is active.
    pub cleared_at: Option<UnixMs>,
}

impl Alarm {
    pub fn is_active(&self) -> bool {
        self.cleared_at.is_none()
    }
}
