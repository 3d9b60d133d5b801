//! The sled 0.34 engine, selectable for users who want the engine the design card named.
//!
//! All tables live in sled's default tree, each key prefixed with its table's one-byte tag, so
//! that one `apply_batch` (atomic in sled) covers a batch across tables; sled's multi-tree
//! transactions measured ~10× slower.
//!
//! Durability: on Linux `Tree::flush` ends with `sync_file_range`, which neither persists the
//! file's metadata nor flushes the drive's write cache, and blob files (tree nodes over ~128 KiB)
//! are written with no sync at all (sled issue #1452). So a commit here is `apply_batch`, then
//! `flush`, then a real `fsync` of the `db` file and of any blob file not synced before. What
//! remains sled's own: its recovery after an unclean stop, where its tracker has open corruption
//! reports (#1527, #1533); sled calls itself beta.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{Batch, Change, Direction, KeyRange, Kv, Snapshot, Table, Visit};
use crate::StoreError;

/// The directory sled owns inside the data directory.
pub(super) const DIR: &str = "sled";

fn fail(action: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
    move |e| StoreError::Engine {
        engine: "sled",
        action,
        source: Box::new(e),
    }
}

fn io_fail(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

fn tagged(table: Table, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(table.tag());
    out.extend_from_slice(key);
    out
}

fn tagged_bound(table: Table, bound: &Bound<Vec<u8>>, unbounded: Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Included(tagged(table, k)),
        Bound::Excluded(k) => Bound::Excluded(tagged(table, k)),
        Bound::Unbounded => unbounded,
    }
}

pub(super) struct SledKv {
    /// The open database; its default tree holds every table.
    db: sled::Db,
    /// sled's log file, fsynced after each flush since sled itself does not.
    log: File,
    /// Its path, for error messages.
    log_path: PathBuf,
    /// Where sled writes blob files, each needing its own fsync.
    blobs: PathBuf,
    /// Blob files already fsynced, so each commit only syncs new ones.
    synced_blobs: Mutex<HashSet<OsString>>,
}

/// How long an open waits for a previous handle's lock: sled's flusher thread outlives the
/// last `Db` handle by a moment, so a reopen right after a close (a restart, a reload) would
/// otherwise fail on a lock that is about to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

fn open_waiting_for_lock(path: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(path).open() {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("could not acquire lock") =>
            {
                return Err(StoreError::Locked {
                    dir: path.to_path_buf(),
                });
            }
            other => return other.map_err(fail("open the database")),
        }
    }
}

impl SledKv {
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DIR);
        let db = open_waiting_for_lock(&path)?;
        let log_path = path.join("db");
        let log = File::open(&log_path).map_err(io_fail("open sled's log file", &log_path))?;
        Ok(SledKv {
            db,
            log,
            log_path,
            blobs: path.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
        })
    }

    fn sync_blobs(&self) -> Result<(), StoreError> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_fail("list sled's blob files", &self.blobs)(e)),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut present = HashSet::new();
        let mut new_file = false;
        for entry in entries {
            let entry = entry.map_err(io_fail("list sled's blob files", &self.blobs))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let path = entry.path();
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_fail("fsync a sled blob file", &path))?;
                new_file = true;
            }
            present.insert(name);
        }
        if new_file {
            File::open(&self.blobs)
                .and_then(|f| f.sync_all())
                .map_err(io_fail("fsync sled's blob directory", &self.blobs))?;
        }
        *synced = present;
        Ok(())
    }
}

impl Kv for SledKv {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
        Ok(Box::new(SledSnapshot { tree: &self.db }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut sled_batch = sled::Batch::default();
        for change in &batch.changes {
            match change {
                Change::Put(table, key, value) => {
                    sled_batch.insert(tagged(*table, key), value.as_slice());
                }
                Change::Delete(table, key) => sled_batch.remove(tagged(*table, key)),
            }
        }
        self.db
            .apply_batch(sled_batch)
            .map_err(fail("apply a batch"))?;
        self.db.flush().map_err(fail("flush"))?;
        self.log
            .sync_all()
            .map_err(io_fail("fsync sled's log file", &self.log_path))?;
        self.sync_blobs()
    }
}

struct SledSnapshot<'a> {
    /// sled has no read snapshots; each batch is atomic, which is what the queries rely on.
    tree: &'a sled::Tree,
}

impl Snapshot for SledSnapshot<'_> {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree
            .get(tagged(table, key))
            .map_err(fail("read"))?
            .map(|v| v.to_vec()))
    }

    fn scan(
        &mut self,
        table: Table,
        range: KeyRange,
        direction: Direction,
        visit: &mut Visit<'_>,
    ) -> Result<(), StoreError> {
        if super::is_empty(&range) {
            return Ok(());
        }
        let lo = tagged_bound(table, &range.0, Bound::Included(vec![table.tag()]));
        let hi = tagged_bound(table, &range.1, Bound::Excluded(vec![table.tag() + 1]));
        let iter = self.tree.range::<Vec<u8>, _>((lo, hi));
        let step = |entry: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = entry.map_err(fail("scan"))?;
            visit(k.get(1..).unwrap_or_default(), &v)
        };
        super::walk(iter, direction, step)
    }
}
