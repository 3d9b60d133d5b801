//! Key layouts. Every number is big-endian so that byte order is time order.
//!
//! | table | key | value |
//! |---|---|---|
//! | `cdrs` | id (16) | CDR |
//! | `cdrs_by_caller`, `cdrs_by_called` | hour (4) ‖ number ‖ id (16) | kind, talk ms |
//! | `cdrs_by_kind` | kind (1) ‖ id (16) | empty |
//! | `cdr_rollup` | 15-minute slot (4) ‖ kind (1) | calls, talk ms |
//! | `calls` | id (16) | the tracker's bytes |
//! | `logs` | id (16) ‖ seq (8) | log entry |
//! | `alarms` | alarm id (16) | alarm |
//! | `sink_outbox` | seq (8) | CDR id (16) ‖ queued at (8) |
//! | `meta` | name | value |
//!
//! The number indexes lead with the hour so that a prefix filter reads, per hour, only the
//! entries under the prefix, and an hour's matches can be put in newest-first order in memory
//! (at most that hour's calls); a key of number first would need one seek per distinct number.

use crate::cdr::{CdrId, UnixMs};
use crate::codec::Kind;
use crate::engine::Key;

pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const SLOT_MS: i64 = 15 * 60_000;

/// The meta key of the schema version.
pub(crate) const SCHEMA_KEY: &[u8] = b"schema_version";
/// The meta key of the next log sequence number.
pub(crate) const LOG_SEQ_KEY: &[u8] = b"next_log_seq";
/// The meta key of the next outbox sequence number: kept apart from the entries so that a
/// drained outbox does not start numbering again (a shipper remembers the last seq it acked).
pub(crate) const OUTBOX_SEQ_KEY: &[u8] = b"next_outbox_seq";
/// Where sinks keep their own state in `meta`, each under this prefix and its name.
pub(crate) const SINK_STATE_PREFIX: &[u8] = b"sink_state/";

pub(crate) fn sink_state_key(name: &str) -> Vec<u8> {
    let mut key = SINK_STATE_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn id_key(id: CdrId) -> [u8; 16] {
    id.0.to_be_bytes()
}

pub(crate) fn id_of(key: &[u8]) -> Option<CdrId> {
    let bytes: [u8; 16] = key.get(..16)?.try_into().ok()?;
    Some(CdrId(u128::from_be_bytes(bytes)))
}

/// The smallest id whose start is `t`: ids sort by start, so `[lowest_id(a), lowest_id(b))`
/// holds exactly the calls that started in `[a, b)`. Times before 1970 are taken as 1970.
pub(crate) fn lowest_id(t: UnixMs) -> CdrId {
    CdrId(u128::from(t.0.max(0) as u64) << 64)
}

/// Time `t` divided into units of `unit_ms`, clamped to the u32 range the keys use.
fn unit_of(t: UnixMs, unit_ms: i64) -> u32 {
    u32::try_from(t.0.max(0) / unit_ms).unwrap_or(u32::MAX)
}

pub(crate) fn hour_of(t: UnixMs) -> u32 {
    unit_of(t, HOUR_MS)
}

pub(crate) fn slot_of(t: UnixMs) -> u32 {
    unit_of(t, SLOT_MS)
}

pub(crate) fn slot_start(slot: u32) -> UnixMs {
    UnixMs(i64::from(slot) * SLOT_MS)
}

pub(crate) fn number_key(id: CdrId, number: &str) -> Key {
    let mut key = Key::with_capacity(4 + number.len() + 16);
    key.extend_from_slice(&hour_of(id.start()).to_be_bytes());
    key.extend_from_slice(number.as_bytes());
    key.extend_from_slice(&id_key(id));
    key
}

/// The number and id of a number index key.
pub(crate) fn split_number_key(key: &[u8]) -> Option<(&[u8], CdrId)> {
    let rest = key.get(4..)?;
    let split = rest.len().checked_sub(16)?;
    let (number, id) = rest.split_at(split);
    Some((number, id_of(id)?))
}

/// The first bytes of every number index key of `hour` whose number starts with `prefix`.
pub(crate) fn number_prefix(hour: u32, prefix: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + prefix.len());
    key.extend_from_slice(&hour.to_be_bytes());
    key.extend_from_slice(prefix.as_bytes());
    key
}

pub(crate) fn kind_key(kind: Kind, id: CdrId) -> Key {
    let mut key = Key::with_capacity(17);
    key.push(kind.0);
    key.extend_from_slice(&id_key(id));
    key
}

pub(crate) fn rollup_key(slot: u32, kind: Kind) -> [u8; 5] {
    let s = slot.to_be_bytes();
    [s[0], s[1], s[2], s[3], kind.0]
}

pub(crate) fn split_rollup_key(key: &[u8]) -> Option<(u32, u8)> {
    match key {
        [a, b, c, d, kind] => Some((u32::from_be_bytes([*a, *b, *c, *d]), *kind)),
        _ => None,
    }
}

pub(crate) fn log_key(id: CdrId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&id_key(id));
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(crate) fn outbox_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub(crate) fn outbox_seq_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_keys_split_back() {
        let id = CdrId::new(UnixMs(7_200_000 + 5), "n", "c");
        for number in ["", "1", "13800000000", "a\u{0}b"] {
            let key = number_key(id, number);
            assert_eq!(split_number_key(&key), Some((number.as_bytes(), id)));
            assert!(key.starts_with(&number_prefix(2, number)));
        }
        assert_eq!(split_number_key(b"short"), None);
    }

    #[test]
    fn units_clamp() {
        let cases = [
            (-1, 0),
            (0, 0),
            (SLOT_MS - 1, 0),
            (SLOT_MS, 1),
            (i64::MAX, u32::MAX),
        ];
        for (t, slot) in cases {
            assert_eq!(slot_of(UnixMs(t)), slot, "{t}");
        }
        assert_eq!(hour_of(UnixMs(HOUR_MS * 5 + 1)), 5);
        assert_eq!(lowest_id(UnixMs(-9)), CdrId(0));
    }

    #[test]
    fn ids_order_like_times() {
        let a = lowest_id(UnixMs(1_000));
        let b = CdrId::new(UnixMs(1_000), "n", "c");
        let c = lowest_id(UnixMs(1_001));
        assert!(a <= b && b < c);
        assert!(log_key(b, 2) < log_key(b, 10));
        assert!(log_key(b, u64::MAX) < log_key(CdrId(b.0 + 1), 0));
    }
}
