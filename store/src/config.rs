//! The store's part of the configuration (`[store]`, SPEC §2).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Retention and durability settings.
/// `Serialize` writes the same duration syntax back, for `check-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// CDRs (with their index and rollup entries) older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub cdr_retention: Duration,
    /// Per-call logs older than this are deleted; they are big, so kept shorter than CDRs.
    #[serde(with = "humantime_serde")]
    pub trace_retention: Duration,
    /// The longest a submitted write waits before its batch is committed: what a kill -9 can
    /// lose (SPEC §8).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Whether every stored or changed CDR is also queued for a sink in the same batch: set
    /// by the root when a sink is configured, not a key of `[store]`.
    #[serde(skip)]
    pub outbox: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cdr_retention: Duration::from_secs(365 * 86_400),
            trace_retention: Duration::from_secs(30 * 86_400),
            flush_interval: Duration::from_millis(100),
            outbox: false,
        }
    }
}
