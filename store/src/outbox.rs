//! The sink outbox: CDRs waiting to be shipped to the bank's database (issue 12, SPEC §8).
//!
//! The writer thread queues a CDR here in the same batch that stores or changes it (when
//! [`crate::StoreConfig::outbox`] is set), so a CDR on disk is always either shipped or
//! waiting. A sink reads entries oldest first and acknowledges a prefix with
//! [`crate::WriteOp::AckOutbox`] once its database committed them; entries are therefore one
//! contiguous range of sequence numbers, which makes the depth a subtraction.

use std::ops::{Bound, ControlFlow};

use crate::StoreError;
use crate::cdr::{Cdr, CdrId, UnixMs};
use crate::codec;
use crate::engine::{Direction, Snapshot, Table};
use crate::keys;

/// One CDR waiting to be shipped.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// Position in the outbox: increasing in queueing order, never reused.
    pub seq: u64,
    pub id: CdrId,
    /// When the batch that stored the CDR was built (within a commit of being durable).
    pub queued_at: UnixMs,
    /// The CDR as stored now (a later change included); `None` once retention removed it,
    /// when the entry only needs acknowledging.
    pub cdr: Option<Cdr>,
}

/// How far behind a sink is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Entries waiting.
    pub depth: u64,
    /// When the oldest waiting entry was queued; `None` when nothing waits.
    pub oldest_queued_at: Option<UnixMs>,
}

fn seq_of(key: &[u8]) -> Result<u64, StoreError> {
    keys::outbox_seq_of(key).ok_or_else(|| StoreError::Corrupt {
        what: "outbox key",
        detail: format!("{} bytes", key.len()),
    })
}

/// Up to `limit` entries with a seq above `after`, oldest first, each with its CDR.
pub(crate) fn peek(
    snap: &mut dyn Snapshot,
    after: Option<u64>,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut raw = Vec::new();
    if limit == 0 {
        return Ok(Vec::new());
    }
    let lo = match after {
        Some(seq) => Bound::Excluded(keys::outbox_key(seq).to_vec()),
        None => Bound::Unbounded,
    };
    snap.scan(
        Table::Outbox,
        (lo, Bound::Unbounded),
        Direction::Forward,
        &mut |k, v| {
            let (id, queued_at) = codec::decode_outbox(v)?;
            raw.push((seq_of(k)?, id, queued_at));
            Ok(if raw.len() >= limit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            })
        },
    )?;
    raw.into_iter()
        .map(|(seq, id, queued_at)| {
            let cdr = match snap.get(Table::Cdrs, &keys::id_key(id))? {
                Some(value) => Some(codec::decode_cdr(id, &value)?),
                None => None,
            };
            Ok(OutboxEntry {
                seq,
                id,
                queued_at,
                cdr,
            })
        })
        .collect()
}

/// The depth and the oldest entry's age, from the first and last keys alone.
pub(crate) fn stats(snap: &mut dyn Snapshot) -> Result<OutboxStats, StoreError> {
    let mut first = None;
    let mut last = None;
    for (direction, slot) in [
        (Direction::Forward, &mut first),
        (Direction::Backward, &mut last),
    ] {
        snap.scan(
            Table::Outbox,
            (Bound::Unbounded, Bound::Unbounded),
            direction,
            &mut |k, v| {
                *slot = Some((seq_of(k)?, codec::decode_outbox(v)?.1));
                Ok(ControlFlow::Break(()))
            },
        )?;
    }
    Ok(match (first, last) {
        (Some((lo, queued_at)), Some((hi, _))) => OutboxStats {
            depth: hi.saturating_sub(lo).saturating_add(1),
            oldest_queued_at: Some(queued_at),
        },
        _ => OutboxStats::default(),
    })
}
