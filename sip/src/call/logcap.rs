//! The per-call log cap (`sip.max_log_entries_per_call`, `sip.max_log_bytes_per_call`): a
//! call that sends without end (a re-INVITE or INFO loop, in-dialog OPTIONS every second for
//! hours) must not fill the store. Pure: the tracker keeps each call's [`LogUse`], the task
//! asks [`LogCap::admit`] before it logs a message. The tracker's own words about a call
//! (its expiry, its eviction: a few per call at most) are logged whatever the cap, since
//! they explain its CDR.

use serde::{Deserialize, Serialize};

/// The caps `sip.max_log_entries_per_call` and `sip.max_log_bytes_per_call` default to: a
/// 4-hour call with in-dialog OPTIONS every 30 s logs about 1,000 entries of ~1 KB.
pub const DEFAULT_LOG_CAP: LogCap = LogCap {
    max_entries: 2000,
    max_bytes: 2 << 20,
};

/// The two caps of one call's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCap {
    /// Entries kept at most.
    pub max_entries: u64,
    /// Bytes of text kept at most.
    pub max_bytes: u64,
}

/// Which of the two caps stopped a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cap {
    /// `sip.max_log_entries_per_call`.
    Entries,
    /// `sip.max_log_bytes_per_call`.
    Bytes,
}

impl Cap {
    /// The configuration key.
    pub fn key(self) -> &'static str {
        match self {
            Cap::Entries => "sip.max_log_entries_per_call",
            Cap::Bytes => "sip.max_log_bytes_per_call",
        }
    }
}

/// What one call has logged so far; kept with the call (also after it ended, while its last
/// messages may still come, and across restarts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogUse {
    /// Entries logged.
    pub entries: u64,
    /// Bytes of text logged.
    pub bytes: u64,
    /// The cap hit, if one was: nothing more is logged.
    pub cut: Option<Cap>,
}

/// What to do with one message's log entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log them.
    Log,
    /// The cap is hit now: log the one "truncated" event instead, and count them skipped.
    Truncate(Truncation),
    /// The cap was hit before: count them skipped.
    Skip(Cap),
}

/// The state of a log when it was cut, for its one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// Entries kept.
    pub entries: u64,
    /// Bytes kept.
    pub bytes: u64,
    /// Which cap was hit: the entries' when both were.
    pub cap: Cap,
}

impl Truncation {
    /// The event's text.
    pub fn text(&self) -> String {
        format!(
            "log truncated after {} entries ({} bytes, {}): the call's later messages are not \
             logged; its record is still kept",
            self.entries,
            self.bytes,
            self.cap.key()
        )
    }
}

impl LogCap {
    /// Whether `entries` more entries of `bytes` bytes in all fit in `used`, which counts
    /// them when they do.
    pub fn admit(&self, used: &mut LogUse, entries: u64, bytes: u64) -> Admit {
        if let Some(cap) = used.cut {
            return Admit::Skip(cap);
        }
        let over_entries = used.entries.saturating_add(entries) > self.max_entries;
        let over_bytes = used.bytes.saturating_add(bytes) > self.max_bytes;
        let cap = match (over_entries, over_bytes) {
            (true, _) => Cap::Entries,
            (false, true) => Cap::Bytes,
            (false, false) => {
                used.entries += entries;
                used.bytes += bytes;
                return Admit::Log;
            }
        };
        used.cut = Some(cap);
        Admit::Truncate(Truncation {
            entries: used.entries,
            bytes: used.bytes,
            cap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: LogCap = LogCap {
        max_entries: 4,
        max_bytes: 100,
    };

    fn cut(entries: u64, bytes: u64, cap: Cap) -> Admit {
        Admit::Truncate(Truncation {
            entries,
            bytes,
            cap,
        })
    }

    /// A case: its name, messages in turn as `(entries, bytes)`, what the cap says to each.
    type Case<'a> = (&'a str, &'a [(u64, u64)], &'a [Admit]);

    #[test]
    fn a_log_is_cut_once_at_either_cap() {
        let cases: [Case<'_>; 6] = [
            ("under both", &[(1, 10), (2, 20)], &[Admit::Log, Admit::Log]),
            (
                "exactly at both",
                &[(2, 50), (2, 50), (1, 0)],
                &[Admit::Log, Admit::Log, cut(4, 100, Cap::Entries)],
            ),
            (
                "entries first",
                &[(1, 1), (1, 1), (1, 1), (1, 1), (1, 1), (1, 1)],
                &[
                    Admit::Log,
                    Admit::Log,
                    Admit::Log,
                    Admit::Log,
                    cut(4, 4, Cap::Entries),
                    Admit::Skip(Cap::Entries),
                ],
            ),
            (
                "bytes first, then even a small one is skipped",
                &[(1, 60), (1, 60), (1, 1)],
                &[Admit::Log, cut(1, 60, Cap::Bytes), Admit::Skip(Cap::Bytes)],
            ),
            (
                "a message with its event counts as two entries",
                &[(2, 10), (2, 10), (1, 10)],
                &[Admit::Log, Admit::Log, cut(4, 20, Cap::Entries)],
            ),
            (
                "one message over the byte cap on its own",
                &[(1, 101)],
                &[cut(0, 0, Cap::Bytes)],
            ),
        ];
        for (name, messages, expected) in cases {
            let mut used = LogUse::default();
            let got: Vec<Admit> = messages
                .iter()
                .map(|&(n, b)| CAP.admit(&mut used, n, b))
                .collect();
            assert_eq!(got, expected, "{name}");
            assert!(used.entries <= CAP.max_entries && used.bytes <= CAP.max_bytes);
            assert_eq!(
                used.cut.is_some(),
                expected.iter().any(|a| *a != Admit::Log)
            );
        }
    }

    #[test]
    fn the_event_names_the_cap_hit() {
        let t = Truncation {
            entries: 2000,
            bytes: 812_345,
            cap: Cap::Entries,
        };
        assert_eq!(
            t.text(),
            "log truncated after 2000 entries (812345 bytes, sip.max_log_entries_per_call): \
             the call's later messages are not logged; its record is still kept"
        );
        let t = Truncation {
            cap: Cap::Bytes,
            ..t
        };
        assert!(t.text().contains("sip.max_log_bytes_per_call"));
    }
}
