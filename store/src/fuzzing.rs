//! The store's value decoders as a fuzz target sees them (`--features fuzzing` only): what a
//! damaged or hostile file holds must give an error, never a panic, and whatever decodes
//! must encode back to a value that decodes the same.

use crate::alarm::AlarmId;
use crate::cdr::CdrId;
use crate::codec;

/// Runs every decoder on `bytes` and checks the round trip of each that accepts them.
pub fn decode_all(bytes: &[u8]) {
    let id = CdrId(0x0000_018b_cfe5_6800_0123_4567_89ab_cdef);
    if let Ok(cdr) = codec::decode_cdr(id, bytes) {
        let again = codec::decode_cdr(id, &codec::encode_cdr(&cdr));
        assert_eq!(again.ok(), Some(cdr), "a CDR changed on its way back");
        assert!(
            codec::cdr_kind(bytes).is_ok(),
            "a CDR whose kind does not read"
        );
    }
    if let Ok(entry) = codec::decode_log(bytes) {
        let again = codec::decode_log(&codec::encode_log(&entry));
        assert_eq!(
            again.ok(),
            Some(entry),
            "a log entry changed on its way back"
        );
    }
    let mut entries = Vec::new();
    if codec::decode_logs(bytes, &mut entries).is_ok() {
        let refs: Vec<_> = entries.iter().collect();
        let mut again = Vec::new();
        let decoded = codec::decode_logs(&codec::encode_log_bundle(&refs), &mut again);
        assert!(
            decoded.is_ok() && again == entries,
            "log entries changed on their way back through a bundle"
        );
    }
    let alarm_id = AlarmId(7);
    if let Ok(alarm) = codec::decode_alarm(alarm_id, bytes) {
        let again = codec::decode_alarm(alarm_id, &codec::encode_alarm(&alarm));
        assert_eq!(again.ok(), Some(alarm), "an alarm changed on its way back");
    }
    if let Ok(counts) = codec::decode_counts(bytes) {
        assert_eq!(
            codec::decode_counts(&codec::encode_counts(counts)).ok(),
            Some(counts)
        );
    }
    if let Ok((kind, talk)) = codec::decode_index_value(bytes) {
        let again = codec::decode_index_value(&codec::encode_index_value(kind, talk));
        assert_eq!(again.ok(), Some((kind, talk)));
    }
    if let Ok((cdr, at)) = codec::decode_outbox(bytes) {
        assert_eq!(
            codec::decode_outbox(&codec::encode_outbox(cdr, at)).ok(),
            Some((cdr, at))
        );
    }
}
