//! The redb engine: one redb table per [`Table`], one write transaction per batch, committed
//! with `Durability::Immediate` (fsync before `commit` returns) and quick-repair, so that
//! opening after a kill -9 does not walk the whole file.

use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, TableDefinition};

use super::{Batch, Change, Direction, KeyRange, Kv, Snapshot, Table, Visit};
use crate::StoreError;

/// The database file's name inside the data directory.
pub(super) const FILE: &str = "sipedge.redb";

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn def(table: Table) -> Def {
    TableDefinition::new(table.name())
}

fn fail<E: Into<redb::Error>>(action: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Engine {
        engine: "redb",
        action,
        source: Box::new(e.into()),
    }
}

pub(super) struct RedbKv {
    /// The data directory, to open the file again.
    dir: PathBuf,
    /// The open file; redb serialises writers itself and lets readers run alongside. `None`
    /// between closing a file that saw an I/O error and opening it again.
    db: RwLock<Option<Database>>,
    /// A commit failed with an I/O error (a full disk): redb then refuses every later write
    /// on that handle, so the next commit closes the file and opens it again (which repairs
    /// it) instead of failing forever once the disk has room again.
    broken: AtomicBool,
}

fn closed() -> StoreError {
    StoreError::Engine {
        engine: "redb",
        action: "open the database file again after an I/O error",
        source: Box::new(redb::Error::PreviousIo),
    }
}

impl RedbKv {
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(RedbKv {
            dir: dir.to_path_buf(),
            db: RwLock::new(Some(Self::open_file(dir)?)),
            broken: AtomicBool::new(false),
        })
    }

    fn open_file(dir: &Path) -> Result<Database, StoreError> {
        let db = Database::builder()
            .create(dir.join(FILE))
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Locked {
                    dir: dir.to_path_buf(),
                },
                other => fail("open the database file")(other),
            })?;
        // Readers open tables that must exist, so create them all up front.
        let mut txn = db.begin_write().map_err(fail("begin a write"))?;
        txn.set_quick_repair(true);
        for table in Table::ALL {
            txn.open_table(def(table)).map_err(fail("create a table"))?;
        }
        txn.commit().map_err(fail("commit"))?;
        Ok(db)
    }

    /// Closes a file that saw an I/O error and opens it again; until that succeeds (the
    /// disk may still be full), reads and writes fail and are retried by their callers.
    fn reopen(&self) -> Result<(), StoreError> {
        // Closing drops the handle readers use, and opening repairs the file, which needs
        // room: without it the old handle at least keeps serving reads.
        if !has_room(&self.dir) {
            return Err(closed());
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if self.broken.load(Ordering::Acquire) {
            // The old handle must be gone first: it holds the file's lock.
            drop(slot.take());
            *slot = Some(Self::open_file(&self.dir)?);
            self.broken.store(false, Ordering::Release);
            tracing::warn!(dir = %self.dir.display(), "reopened the redb store after an I/O error");
        }
        Ok(())
    }

    fn try_commit(db: &Database, batch: &Batch) -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(fail("begin a write"))?;
        txn.set_quick_repair(true);
        {
            let mut open: [Option<redb::Table<'_, &[u8], &[u8]>>; Table::COUNT] =
                Default::default();
            for change in &batch.changes {
                let table = match change {
                    Change::Put(t, _, _) | Change::Delete(t, _) => *t,
                };
                let slot = &mut open[usize::from(table.tag())];
                let handle = match slot {
                    Some(handle) => handle,
                    None => slot.insert(txn.open_table(def(table)).map_err(fail("open a table"))?),
                };
                match change {
                    Change::Put(_, key, value) => {
                        handle
                            .insert(key.as_slice(), value.as_slice())
                            .map_err(fail("write"))?;
                    }
                    Change::Delete(_, key) => {
                        handle.remove(key.as_slice()).map_err(fail("delete"))?;
                    }
                }
            }
        }
        txn.commit().map_err(fail("commit"))
    }
}

/// What [`has_room`] writes: enough for redb's repair and a few batches.
const ROOM_PROBE_BYTES: usize = 1 << 20;

/// Whether the file system under `dir` takes [`ROOM_PROBE_BYTES`] more now: a write is the
/// only test that holds for every file system (quotas, reserved blocks, tmpfs).
fn has_room(dir: &Path) -> bool {
    use std::io::Write;
    let probe = dir.join(".space-probe");
    let written = std::fs::File::create(&probe).and_then(|mut file| {
        file.write_all(&vec![0u8; ROOM_PROBE_BYTES])?;
        file.sync_data()
    });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

/// Whether redb failed on the file itself, after which that handle writes no more.
fn is_io(e: &StoreError) -> bool {
    match e {
        StoreError::Engine { source, .. } => matches!(
            source.downcast_ref::<redb::Error>(),
            Some(redb::Error::Io(_) | redb::Error::PreviousIo)
        ),
        _ => false,
    }
}

impl Kv for RedbKv {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
        if self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
        {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let txn = guard
            .as_ref()
            .ok_or_else(closed)?
            .begin_read()
            .map_err(fail("begin a read"))?;
        Ok(Box::new(RedbSnapshot {
            txn,
            tables: Table::ALL.map(|_| None),
        }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(PoisonError::into_inner);
        let result = Self::try_commit(guard.as_ref().ok_or_else(closed)?, batch);
        if let Err(e) = &result
            && is_io(e)
        {
            self.broken.store(true, Ordering::Release);
        }
        result
    }
}

struct RedbSnapshot {
    /// Every read of one snapshot sees the same committed state.
    txn: ReadTransaction,
    /// Tables opened so far in this snapshot, by tag, since opening costs a lookup.
    tables: [Option<ReadOnlyTable<&'static [u8], &'static [u8]>>; Table::COUNT],
}

impl RedbSnapshot {
    fn table(
        &mut self,
        table: Table,
    ) -> Result<&ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let slot = &mut self.tables[usize::from(table.tag())];
        match slot {
            Some(handle) => Ok(handle),
            None => Ok(slot.insert(
                self.txn
                    .open_table(def(table))
                    .map_err(fail("open a table"))?,
            )),
        }
    }
}

impl Snapshot for RedbSnapshot {
    fn get(&mut self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let handle = self.table(table)?;
        Ok(handle
            .get(key)
            .map_err(fail("read"))?
            .map(|guard| guard.value().to_vec()))
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
        let handle = self.table(table)?;
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (
            range.0.as_ref().map(Vec::as_slice),
            range.1.as_ref().map(Vec::as_slice),
        );
        let iter = handle.range::<&[u8]>(bounds).map_err(fail("scan"))?;
        let step = |entry: Result<_, redb::StorageError>| -> Result<ControlFlow<()>, StoreError> {
            let (k, v): (redb::AccessGuard<'_, &[u8]>, redb::AccessGuard<'_, &[u8]>) =
                entry.map_err(fail("scan"))?;
            visit(k.value(), v.value())
        };
        super::walk(iter, direction, step)
    }
}
