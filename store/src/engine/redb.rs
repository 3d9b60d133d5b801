//! The redb engine: one redb table per [`Table`], one write transaction per batch, committed
//! with `Durability::Immediate` (fsync before `commit` returns) and quick-repair, so that
//! opening after a kill -9 does not walk the whole file.

use std::ops::{Bound, ControlFlow};
use std::path::Path;

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
    /// The open file; redb serialises writers itself and lets readers run alongside.
    db: Database,
}

impl RedbKv {
    pub(super) fn open(dir: &Path) -> Result<Self, StoreError> {
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
        Ok(RedbKv { db })
    }
}

impl Kv for RedbKv {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
        let txn = self.db.begin_read().map_err(fail("begin a read"))?;
        Ok(Box::new(RedbSnapshot {
            txn,
            tables: Table::ALL.map(|_| None),
        }))
    }

    fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(fail("begin a write"))?;
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
