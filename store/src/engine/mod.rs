//! The narrow ordered key-value seam the store stands on, and its two engines.
//!
//! Everything above this module speaks in [`Table`]s of byte keys and byte values, one atomic
//! and durable [`Batch`] per commit, point reads and ordered scans through a [`Snapshot`]. The
//! engines (`redb.rs` by default, `sled.rs` when chosen) are only named here, so nothing outside
//! the store, nor its public API, depends on either.

mod redb;
mod sled;

use std::ops::{Bound, ControlFlow};
use std::path::Path;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::StoreError;

/// Which storage engine holds the data; `store.engine` in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// redb: stable file format, fsync on every durable commit. The default.
    #[default]
    Redb,
    /// sled 0.34: the engine the design card named; beta, see `engine/sled.rs` for its limits.
    Sled,
}

impl Engine {
    /// The name used in configuration and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Redb => "redb",
            Engine::Sled => "sled",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The named tables. The discriminant is the table's one-byte tag where an engine keeps all
/// tables in one keyspace, so it must never change for an existing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Table {
    Meta = 0,
    Cdrs = 1,
    ByCaller = 2,
    ByCalled = 3,
    ByKind = 4,
    Rollup = 5,
    Calls = 6,
    Logs = 7,
    Alarms = 8,
    Outbox = 9,
}

impl Table {
    pub(crate) const COUNT: usize = 10;
    pub(crate) const ALL: [Table; Table::COUNT] = [
        Table::Meta,
        Table::Cdrs,
        Table::ByCaller,
        Table::ByCalled,
        Table::ByKind,
        Table::Rollup,
        Table::Calls,
        Table::Logs,
        Table::Alarms,
        Table::Outbox,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Cdrs => "cdrs",
            Table::ByCaller => "cdrs_by_caller",
            Table::ByCalled => "cdrs_by_called",
            Table::ByKind => "cdrs_by_kind",
            Table::Rollup => "cdr_rollup",
            Table::Calls => "calls",
            Table::Logs => "logs",
            Table::Alarms => "alarms",
            Table::Outbox => "sink_outbox",
        }
    }

    pub(crate) fn tag(self) -> u8 {
        self as u8
    }
}

/// A key in a batch: inline up to 32 bytes, which holds every key but a long number's
/// index entry, so that a CDR's five keys cost no allocation.
pub(crate) type Key = SmallVec<[u8; 32]>;

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Put(Table, Key, Vec<u8>),
    Delete(Table, Key),
}

/// Changes committed together: after a crash either all of them are on disk or none.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Applied in order, so a later change to the same key wins.
    pub(crate) changes: Vec<Change>,
}

impl Batch {
    pub(crate) fn put(&mut self, table: Table, key: &[u8], value: Vec<u8>) {
        self.changes
            .push(Change::Put(table, Key::from_slice(key), value));
    }

    pub(crate) fn delete(&mut self, table: Table, key: &[u8]) {
        self.changes
            .push(Change::Delete(table, Key::from_slice(key)));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Which way a scan walks its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Forward,
    Backward,
}

/// A key range; owned so that callers can build bounds from computed keys.
pub(crate) type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// What a scan visitor is handed for each entry, and what it answers.
pub(crate) type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

/// A consistent view for reads (redb: one read transaction; sled: the live tree, which is
/// consistent per batch since each batch is applied atomically).
pub(crate) trait Snapshot {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `visit` on every entry of `range` in `direction` order until it breaks.
    fn scan(
        &mut self,
        table: Table,
        range: KeyRange,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError>;
}

/// An open database.
pub(crate) trait Kv: Send + Sync {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError>;

    /// Applies every change of `batch` atomically and returns once it is durable on disk.
    fn commit(&self, batch: &Batch) -> Result<(), StoreError>;
}

/// Opens (creating if needed) the database of `engine` under `dir`.
pub(crate) fn open(dir: &Path, engine: Engine) -> Result<Box<dyn Kv>, StoreError> {
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
        action: "create the data directory",
        path: dir.to_path_buf(),
        source,
    })?;
    let (ours, theirs) = match engine {
        Engine::Redb => (redb::FILE, sled::DIR),
        Engine::Sled => (sled::DIR, redb::FILE),
    };
    // A store written by the other engine would silently look empty: say so instead.
    if !dir.join(ours).exists() && dir.join(theirs).exists() {
        return Err(StoreError::OtherEngine {
            dir: dir.to_path_buf(),
            configured: engine.name(),
            found: match engine {
                Engine::Redb => Engine::Sled.name(),
                Engine::Sled => Engine::Redb.name(),
            },
        });
    }
    match engine {
        Engine::Redb => Ok(Box::new(redb::RedbKv::open(dir)?)),
        Engine::Sled => Ok(Box::new(sled::SledKv::open(dir)?)),
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None` when there is
/// none (the prefix is all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Hands `step` the entries of `iter` in `direction` order until it breaks or fails: the
/// walk both engines' scans share.
pub(crate) fn walk<T>(
    mut iter: impl DoubleEndedIterator<Item = T>,
    direction: Direction,
    mut step: impl FnMut(T) -> Result<ControlFlow<()>, StoreError>,
) -> Result<(), StoreError> {
    let mut go = |entries: &mut dyn Iterator<Item = T>| {
        for entry in entries {
            if step(entry)?.is_break() {
                break;
            }
        }
        Ok(())
    };
    match direction {
        Direction::Forward => go(&mut iter),
        Direction::Backward => go(&mut iter.rev()),
    }
}

/// Whether `range` holds no key at all; engines would otherwise panic on inverted bounds.
pub(crate) fn is_empty(range: &KeyRange) -> bool {
    match (&range.0, &range.1) {
        (Bound::Included(lo), Bound::Included(hi)) => lo > hi,
        (Bound::Included(lo) | Bound::Excluded(lo), Bound::Excluded(hi))
        | (Bound::Excluded(lo), Bound::Included(hi)) => lo >= hi,
        _ => false,
    }
}

/// The range of every key starting with `prefix`.
pub(crate) fn prefix_range(prefix: &[u8]) -> KeyRange {
    let hi = match prefix_end(prefix) {
        Some(end) => Bound::Excluded(end),
        None => Bound::Unbounded,
    };
    (Bound::Included(prefix.to_vec()), hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(prefix: &[u8], expected: Option<&[u8]>) {
        assert_eq!(prefix_end(prefix).as_deref(), expected, "{prefix:?}");
    }

    #[test]
    fn prefix_end_cases() {
        check(b"", None);
        check(b"\xff\xff", None);
        check(b"138", Some(b"139"));
        check(b"a\xff", Some(b"b"));
        check(b"\x00", Some(b"\x01"));
    }
}
