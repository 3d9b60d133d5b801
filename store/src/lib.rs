//! The embedded store of sipedge. It is the only crate that knows the storage engines.
//!
//! - [`cdr`]: the call detail record model shared by call tracking, the store and the API.
//! - [`live`]: a call in progress as the live view shows it.
//! - [`log`]: the per-call log entries (SIP messages byte for byte, sipedge's events).
//! - [`alarm`]: the alarm type of SPEC §11.
//! - [`query`]: filters, newest-first pages, statistics, and how each filter picks an index.
//! - [`writer`]: the non-blocking write queue, its background batching thread and retention.
//! - [`outbox`]: CDRs queued for the bank's database, with what a sink saved of its progress.
//! - [`config`]: `[store]` settings.
//! - `engine`: the ordered key-value seam and its redb and sled implementations (private).
//! - `keys`, `codec`: key layouts and the versioned value encodings (private, pure).
//!
//! Use: [`Store::open`] once at start; give [`Store::writer`] clones to whoever records calls
//! ([`Writer::submit`] never blocks); read with the `Store` methods from anywhere (it is cheap to
//! clone, `Send` and `Sync`); at a clean stop call [`Store::flush`], then drop the last `Store`,
//! which commits what is left and closes the database. Writer clones fail with
//! [`StoreError::WriterStopped`] after that.
//!
//! Architecture invariant: no type of redb or sled appears in this crate's public API, so the
//! rest of sipedge cannot depend on either engine.
#![forbid(unsafe_code)]

pub mod alarm;
pub mod cdr;
mod codec;
pub mod config;
mod engine;
mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod keys;
pub mod live;
pub mod log;
pub mod outbox;
pub mod query;
pub mod writer;

use std::collections::HashMap;
use std::ops::{Bound, ControlFlow};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub use alarm::{Alarm, AlarmId, AlarmKind, Severity};
pub use cdr::{CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Source, Transport, UnixMs};
pub use config::StoreConfig;
pub use engine::Engine;
pub use error::StoreError;
pub use log::{Direction, LogEntry, LogKind};
pub use outbox::{OutboxEntry, OutboxStats};
pub use query::{CdrFilter, Counters, NumberMatch, StatsBucket, StatsResult, TypeCounters};
pub use writer::{Purged, WriteOp, Writer, WriterStats};

use engine::{Kv, Table, prefix_range};

/// The schema this build writes and reads; bumped when a key layout or table changes.
const SCHEMA_VERSION: u32 = 1;
/// How long closing waits for the last batch to be committed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// An open store: cheap to clone (all clones share one database and one writer thread).
#[derive(Clone)]
pub struct Store {
    /// Shared by the clones; the writer thread stops when the last one goes.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("engine", &self.inner.engine)
            .finish_non_exhaustive()
    }
}

struct Inner {
    /// Read side of the database (the writer thread holds the other reference).
    kv: Arc<dyn Kv>,
    /// For `Debug` and error messages.
    engine: Engine,
    /// The write queue.
    writer: Writer,
    /// Joined on close, so that the database is released when the last handle is dropped.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.writer.stop(CLOSE_TIMEOUT) {
            tracing::error!(error = %e, "closing the store did not finish its last commit");
            return;
        }
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the store's writer thread failed while closing");
        }
    }
}

impl Store {
    /// Opens the store under `dir` (created if missing) with `engine`, and starts its writer
    /// thread. Dropping the last clone commits what is queued and closes the database.
    pub fn open(dir: &Path, engine: Engine, cfg: StoreConfig) -> Result<Store, StoreError> {
        let kv: Arc<dyn Kv> = Arc::from(engine::open(dir, engine)?);
        check_schema(kv.as_ref())?;
        if !cfg.outbox {
            forget_sink_states(kv.as_ref())?;
        }
        let (writer, thread) = writer::spawn(kv.clone(), cfg)?;
        Ok(Store {
            inner: Arc::new(Inner {
                kv,
                engine,
                writer,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// The write queue; clones of it may live anywhere, but stop working once the store is
    /// dropped.
    pub fn writer(&self) -> Writer {
        self.inner.writer.clone()
    }

    /// Blocks until everything submitted before is durable, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        self.inner.writer.flush(timeout)
    }

    /// Deletes what is past its retention now, instead of at the next background run.
    pub fn purge_expired(&self, timeout: Duration) -> Result<Purged, StoreError> {
        self.inner.writer.purge(timeout)
    }

    pub fn writer_stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }

    pub fn get_cdr(&self, id: CdrId) -> Result<Option<Cdr>, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        match snap.get(Table::Cdrs, &keys::id_key(id))? {
            Some(value) => codec::decode_cdr(id, &value).map(Some),
            None => Ok(None),
        }
    }

    /// One page of matching CDRs, newest first, with ids below `after` (the cursor a previous
    /// page returned). The cursor returned is the last id of this page, or `None` when
    /// nothing matches after it.
    pub fn cdrs_page(
        &self,
        filter: &CdrFilter,
        after: Option<CdrId>,
        limit: usize,
    ) -> Result<(Vec<Cdr>, Option<CdrId>), StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        let mut page = query::newest_first(snap.as_mut(), filter, after, limit.saturating_add(1))?;
        let more = page.len() > limit;
        page.truncate(limit);
        let cursor = if more {
            page.last().map(|c| c.id)
        } else {
            None
        };
        Ok((page, cursor))
    }

    /// Every matching CDR, newest first, in batches of `batch_size`: memory stays flat
    /// whatever the number of rows (for the CSV export).
    pub fn cdrs_batches(&self, filter: CdrFilter, batch_size: usize) -> CdrBatches {
        CdrBatches {
            store: self.clone(),
            filter,
            batch_size: batch_size.max(1),
            after: None,
            done: false,
        }
    }

    /// Statistics of `filter` per bucket `[edges[i], edges[i+1])` and per call type; the API
    /// passes the edges (local hours or days), the totals are the sum of the buckets.
    pub fn stats(&self, filter: &CdrFilter, edges: &[UnixMs]) -> Result<StatsResult, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        query::stats(snap.as_mut(), filter, edges)
    }

    /// The call's log in the order it was written.
    pub fn cdr_log(&self, id: CdrId) -> Result<Vec<LogEntry>, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        let mut out = Vec::new();
        snap.scan(
            Table::Logs,
            prefix_range(&keys::id_key(id)),
            engine::Direction::Forward,
            &mut |_, v| {
                codec::decode_logs(v, &mut out)?;
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(out)
    }

    /// The saved calls in progress, oldest first, as call tracking wrote them.
    pub fn calls_in_progress(&self) -> Result<Vec<(CdrId, Vec<u8>)>, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        let mut out = Vec::new();
        snap.scan(
            Table::Calls,
            (Bound::Unbounded, Bound::Unbounded),
            engine::Direction::Forward,
            &mut |k, v| {
                let id = keys::id_of(k).ok_or_else(|| StoreError::Corrupt {
                    what: "call key",
                    detail: format!("{} bytes", k.len()),
                })?;
                out.push((id, v.to_vec()));
                Ok(ControlFlow::Continue(()))
            },
        )?;
        Ok(out)
    }

    /// Up to `limit` outbox entries with a seq above `after`, oldest first.
    pub fn outbox_peek(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        outbox::peek(snap.as_mut(), after, limit)
    }

    pub fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        outbox::stats(snap.as_mut())
    }

    /// Up to `limit` CDRs with an id above `after`, oldest first: a sink's backfill walks
    /// the whole store with it.
    pub fn cdrs_ascending(
        &self,
        after: Option<CdrId>,
        limit: usize,
    ) -> Result<Vec<Cdr>, StoreError> {
        let mut snap = self.inner.kv.snapshot()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let lo = match after {
            Some(id) => Bound::Excluded(keys::id_key(id).to_vec()),
            None => Bound::Unbounded,
        };
        snap.scan(
            Table::Cdrs,
            (lo, Bound::Unbounded),
            engine::Direction::Forward,
            &mut |k, v| {
                let id = keys::id_of(k).ok_or_else(|| StoreError::Corrupt {
                    what: "CDR key",
                    detail: format!("{} bytes", k.len()),
                })?;
                out.push(codec::decode_cdr(id, v)?);
                Ok(if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        Ok(out)
    }

    /// What the sink `name` last saved with [`WriteOp::PutSinkState`] (committed only).
    pub fn sink_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner
            .kv
            .snapshot()?
            .get(Table::Meta, &keys::sink_state_key(name))
    }

    pub fn get_alarm(&self, id: AlarmId) -> Result<Option<Alarm>, StoreError> {
        if let Some(unsaved) = self.unsaved_alarms().into_iter().find(|a| a.id == id) {
            return Ok(Some(unsaved));
        }
        let mut snap = self.inner.kv.snapshot()?;
        match snap.get(Table::Alarms, &id.0.to_be_bytes())? {
            Some(value) => codec::decode_alarm(id, &value).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` alarms, newest raised first; only those not cleared if `active_only`.
    /// Alarms submitted and not yet committed are included, in their newest version.
    pub fn alarms(&self, active_only: bool, limit: usize) -> Result<Vec<Alarm>, StoreError> {
        let unsaved: HashMap<AlarmId, Alarm> = self
            .unsaved_alarms()
            .into_iter()
            .map(|a| (a.id, a))
            .collect();
        let mut snap = self.inner.kv.snapshot()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        snap.scan(
            Table::Alarms,
            (Bound::Unbounded, Bound::Unbounded),
            engine::Direction::Backward,
            &mut |k, v| {
                let id = <[u8; 16]>::try_from(k).map_err(|_| StoreError::Corrupt {
                    what: "alarm key",
                    detail: format!("{} bytes", k.len()),
                })?;
                let id = AlarmId(u128::from_be_bytes(id));
                if unsaved.contains_key(&id) {
                    return Ok(ControlFlow::Continue(()));
                }
                let alarm = codec::decode_alarm(id, v)?;
                if !active_only || alarm.is_active() {
                    out.push(alarm);
                }
                Ok(if out.len() >= limit {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        out.extend(
            unsaved
                .into_values()
                .filter(|a| !active_only || a.is_active()),
        );
        out.sort_unstable_by_key(|a| std::cmp::Reverse(a.id));
        out.truncate(limit);
        Ok(out)
    }

    fn unsaved_alarms(&self) -> Vec<Alarm> {
        self.inner.writer.unsaved_alarms()
    }
}

/// Refuses a store written with another schema, and stamps a new one.
fn check_schema(kv: &dyn Kv) -> Result<(), StoreError> {
    let stored = kv.snapshot()?.get(Table::Meta, keys::SCHEMA_KEY)?;
    match stored {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Corrupt {
                    what: "schema version",
                    detail: format!("{} bytes", bytes.len()),
                })?;
            if found != SCHEMA_VERSION {
                return Err(StoreError::SchemaVersion {
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            Ok(())
        }
        None => {
            let mut batch = engine::Batch::default();
            batch.put(
                Table::Meta,
                keys::SCHEMA_KEY,
                SCHEMA_VERSION.to_be_bytes().to_vec(),
            );
            kv.commit(&batch)
        }
    }
}

/// A store opened without a sink forgets what sinks saved: CDRs written now are queued for
/// no one, so a sink enabled again later must backfill from the start to find them.
fn forget_sink_states(kv: &dyn Kv) -> Result<(), StoreError> {
    let mut batch = engine::Batch::default();
    kv.snapshot()?.scan(
        Table::Meta,
        prefix_range(keys::SINK_STATE_PREFIX),
        engine::Direction::Forward,
        &mut |k, _| {
            batch.delete(Table::Meta, k);
            Ok(ControlFlow::Continue(()))
        },
    )?;
    if batch.is_empty() {
        return Ok(());
    }
    kv.commit(&batch)
}

/// Batches of matching CDRs, newest first; see [`Store::cdrs_batches`].
#[derive(Debug)]
pub struct CdrBatches {
    /// Each batch reads a fresh snapshot, so no read transaction stays open across batches.
    store: Store,
    /// What to export.
    filter: CdrFilter,
    /// Rows per batch.
    batch_size: usize,
    /// Where the next batch starts.
    after: Option<CdrId>,
    /// Set after the last batch or an error.
    done: bool,
}

impl Iterator for CdrBatches {
    type Item = Result<Vec<Cdr>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self
            .store
            .cdrs_page(&self.filter, self.after, self.batch_size)
        {
            Ok((rows, cursor)) => {
                self.after = cursor;
                self.done = cursor.is_none();
                if rows.is_empty() {
                    None
                } else {
                    Some(Ok(rows))
                }
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn with_each_engine(f: impl Fn(Engine, &Path)) {
        for engine in [Engine::Redb, Engine::Sled] {
            let dir = tempfile::tempdir().unwrap();
            f(engine, dir.path());
        }
    }

    fn raw_put(store: &Store, table: Table, key: &[u8], value: &[u8]) {
        let mut batch = engine::Batch::default();
        batch.put(table, key, value.to_vec());
        store.inner.kv.commit(&batch).unwrap();
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        with_each_engine(|engine, dir| {
            let store = Store::open(dir, engine, StoreConfig::default()).unwrap();
            let t = UnixMs(1_767_225_600_000);
            let id = CdrId::new(t, "n", "c");
            let filter = CdrFilter::between(t, UnixMs(t.0 + 1));
            for bad in [
                &[][..],
                &[2, 0, 0, 0, 0],
                &[1, 9],
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 50],
            ] {
                raw_put(&store, Table::Cdrs, &keys::id_key(id), bad);
                let corrupt =
                    |r: Result<(), StoreError>| matches!(r, Err(StoreError::Corrupt { .. }));
                assert!(corrupt(store.get_cdr(id).map(drop)), "{engine:?} {bad:?}");
                assert!(corrupt(store.cdrs_page(&filter, None, 10).map(drop)));
                assert!(corrupt(
                    store.stats(&filter, &[t, UnixMs(t.0 + 1)]).map(drop)
                ));
                raw_put(&store, Table::Logs, &keys::log_key(id, 0), bad);
                assert!(corrupt(store.cdr_log(id).map(drop)));
                raw_put(&store, Table::Alarms, &[7; 16], bad);
                assert!(corrupt(store.alarms(false, 5).map(drop)));
            }
            // Writing over a damaged record still works and repairs it.
            let mut cdr = codec::tests::cdr();
            cdr.id = id;
            cdr.start_time = t;
            store
                .writer()
                .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
                .unwrap();
            store.flush(Duration::from_secs(30)).unwrap();
            assert_eq!(store.get_cdr(id).unwrap(), Some(cdr));
        });
    }

    #[test]
    fn handles_can_be_shared_across_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Store>();
        shared::<Writer>();
    }

    #[test]
    fn another_schema_version_is_refused() {
        with_each_engine(|engine, dir| {
            let store = Store::open(dir, engine, StoreConfig::default()).unwrap();
            raw_put(&store, Table::Meta, keys::SCHEMA_KEY, &7u32.to_be_bytes());
            drop(store);
            let err = Store::open(dir, engine, StoreConfig::default()).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::SchemaVersion {
                        found: 7,
                        supported: SCHEMA_VERSION
                    }
                ),
                "{err}"
            );
        });
    }

    #[derive(Debug, Deserialize)]
    struct Section {
        engine: Engine,
    }

    fn check_config(text: &str, expected: Result<StoreConfig, &str>) {
        match (toml::from_str::<StoreConfig>(text), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(e), Err(needle)) => assert!(e.to_string().contains(needle), "{text}: {e}"),
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn config_reads_durations_and_refuses_unknown_keys() {
        let day = 86_400;
        let cases = [
            ("", Ok(StoreConfig::default())),
            (
                "cdr_retention = \"90d\"\ntrace_retention = \"12h\"\nflush_interval = \"50ms\"",
                Ok(StoreConfig {
                    cdr_retention: Duration::from_secs(90 * day),
                    trace_retention: Duration::from_secs(12 * 3600),
                    flush_interval: Duration::from_millis(50),
                    outbox: false,
                }),
            ),
            (
                "flush_interval = \"5s\"",
                Ok(StoreConfig {
                    flush_interval: Duration::from_secs(5),
                    ..StoreConfig::default()
                }),
            ),
            ("cdr_retentoin = \"1d\"", Err("cdr_retentoin")),
            ("trace_retention = \"soon\"", Err("trace_retention")),
        ];
        for (text, expected) in cases {
            check_config(text, expected);
        }
        assert_eq!(
            StoreConfig::default().cdr_retention,
            Duration::from_secs(365 * day)
        );
        assert_eq!(
            StoreConfig::default().trace_retention,
            Duration::from_secs(30 * day)
        );
        assert_eq!(
            toml::from_str::<Section>("engine = \"sled\"")
                .unwrap()
                .engine,
            Engine::Sled
        );
        assert_eq!(
            toml::from_str::<Section>("engine = \"redb\"")
                .unwrap()
                .engine,
            Engine::Redb
        );
        assert!(toml::from_str::<Section>("engine = \"Redb\"").is_err());
        let text = toml::to_string(&StoreConfig::default()).unwrap();
        assert_eq!(
            toml::from_str::<StoreConfig>(&text).unwrap(),
            StoreConfig::default()
        );
        assert!(text.contains("flush_interval = \"100ms\""), "{text}");
        assert_eq!(Engine::default(), Engine::Redb);
    }
}
