//! Writes off the relay path: [`Writer::submit`] queues and returns at once; one background
//! thread turns the queue into batches, commits each durably at least every
//! `flush_interval`, retries failed commits with backoff (never dropping them), and runs
//! retention between batches. Being the only writer lets it read-modify-write the rollup
//! counters and the log sequence numbers without transactions.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::ops::{Bound, ControlFlow};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::StoreError;
use crate::alarm::{Alarm, AlarmId};
use crate::cdr::{Cdr, CdrId, UnixMs};
use crate::codec::{self, Counts, Kind};
use crate::config::StoreConfig;
use crate::engine::{Batch, Direction, Kv, Snapshot, Table};
use crate::keys;
use crate::log::LogEntry;

/// One write.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Store a finished call's CDR (replacing one with the same id, counted once) and drop
    /// its call-in-progress entry in the same batch.
    PutCdr(Box<Cdr>),
    /// Append to a call's log; the store numbers entries in submission order.
    AppendLog(CdrId, LogEntry),
    /// Save (or replace) a call in progress: bytes owned by call tracking.
    PutCall(CdrId, Vec<u8>),
    /// Forget a call in progress that ended without a CDR.
    RemoveCall(CdrId),
    /// Store or update an alarm.
    PutAlarm(Alarm),
    /// Remove every outbox entry with a seq up to this one: a sink acknowledges what the
    /// bank's database committed. Durable with the next commit; a crash before it only means
    /// those entries are shipped again, which the sink's idempotent writes absorb.
    AckOutbox(u64),
    /// Save a sink's own state (its backfill progress) under its name.
    PutSinkState(String, Vec<u8>),
}

/// What a retention run deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// CDRs deleted, with their index entries and rollup counts.
    pub cdrs: u64,
    /// Log entries deleted (SIP messages and events).
    pub log_entries: u64,
    /// Cleared alarms deleted.
    pub alarms: u64,
}

/// Counters of the writer, for metrics and alarms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Batches committed.
    pub batches: u64,
    /// CDRs committed (a re-put counts again).
    pub cdrs_written: u64,
    /// Log entries committed.
    pub log_entries_written: u64,
    /// Failed commit attempts (each is retried).
    pub failures: u64,
    /// Duration of the last successful commit.
    pub last_commit: Duration,
    /// The last commit attempt failed and its batch is waiting for the next one (a full
    /// disk): true for as long as the writer is stuck, however slow its retries are.
    pub failing: bool,
    /// Writes submitted and not yet committed.
    pub queued: u64,
}

/// The live counters behind [`WriterStats`], updated by the thread and the submitters.
#[derive(Debug, Default)]
struct Counters {
    /// Batches committed.
    batches: AtomicU64,
    /// CDRs committed.
    cdrs: AtomicU64,
    /// Log entries committed.
    logs: AtomicU64,
    /// Failed commit attempts.
    failures: AtomicU64,
    /// Whether the last attempt failed.
    failing: AtomicBool,
    /// The last successful commit's duration, in µs.
    last_commit_us: AtomicU64,
    /// Ops accepted by `submit`; with `committed`, the queue depth.
    submitted: AtomicU64,
    /// Ops whose batch was committed.
    committed: AtomicU64,
    /// Alarms submitted and not yet committed, which readers see as if stored: the alarm
    /// that says the store cannot commit (a full disk) must be shown while that lasts.
    unsaved_alarms: Mutex<HashMap<AlarmId, Alarm>>,
}

/// A [`WriteOp`] as the writer thread takes it.
#[derive(Debug)]
enum Queued {
    Cdr(Box<Cdr>),
    /// Encoded by the writer straight into its call's bundle.
    Log(CdrId, LogEntry),
    PutCall(CdrId, Vec<u8>),
    RemoveCall(CdrId),
    Alarm(Alarm),
    Ack(u64),
    SinkState(String, Vec<u8>),
}

enum Msg {
    Op(Queued),
    /// Commit everything queued before, then answer.
    Flush(Sender<()>),
    /// Run retention to the end, then answer.
    Purge(Sender<Result<Purged, StoreError>>),
    /// Commit everything, answer, and end the thread.
    Stop(Sender<()>),
}

/// The handle that queues writes; cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The queue to the writer thread (unbounded: a slow disk must not slow SIP down).
    tx: Sender<Msg>,
    /// Shared with the thread, read by [`Writer::stats`].
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Op(_) => "Op",
            Msg::Flush(_) => "Flush",
            Msg::Purge(_) => "Purge",
            Msg::Stop(_) => "Stop",
        })
    }
}

impl Writer {
    /// Queues `op`; it is durable after the next commit (within `flush_interval`). Fails only
    /// once the store has been closed.
    pub fn submit(&self, op: WriteOp) -> Result<(), StoreError> {
        self.counters.submitted.fetch_add(1, Ordering::Relaxed);
        let queued = match op {
            WriteOp::PutCdr(cdr) => Queued::Cdr(cdr),
            WriteOp::AppendLog(id, entry) => Queued::Log(id, entry),
            WriteOp::PutCall(id, bytes) => Queued::PutCall(id, bytes),
            WriteOp::RemoveCall(id) => Queued::RemoveCall(id),
            WriteOp::PutAlarm(alarm) => {
                self.counters
                    .unsaved_alarms
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(alarm.id, alarm.clone());
                Queued::Alarm(alarm)
            }
            WriteOp::AckOutbox(seq) => Queued::Ack(seq),
            WriteOp::PutSinkState(name, state) => Queued::SinkState(name, state),
        };
        self.tx.send(Msg::Op(queued)).map_err(|_| {
            self.counters.submitted.fetch_sub(1, Ordering::Relaxed);
            StoreError::WriterStopped
        })
    }

    /// Blocks until everything submitted before is durable, or `timeout` passes (the writes
    /// stay queued and keep being retried).
    pub fn flush(&self, timeout: Duration) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Flush(tx))
            .map_err(|_| StoreError::WriterStopped)?;
        wait(&rx, timeout)
    }

    pub fn stats(&self) -> WriterStats {
        let c = &self.counters;
        let submitted = c.submitted.load(Ordering::Relaxed);
        WriterStats {
            batches: c.batches.load(Ordering::Relaxed),
            cdrs_written: c.cdrs.load(Ordering::Relaxed),
            log_entries_written: c.logs.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            failing: c.failing.load(Ordering::Relaxed),
            last_commit: Duration::from_micros(c.last_commit_us.load(Ordering::Relaxed)),
            queued: submitted.saturating_sub(c.committed.load(Ordering::Relaxed)),
        }
    }

    /// The alarms submitted and not yet committed, newest version of each.
    pub(crate) fn unsaved_alarms(&self) -> Vec<Alarm> {
        self.counters
            .unsaved_alarms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn purge(&self, timeout: Duration) -> Result<Purged, StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Purge(tx))
            .map_err(|_| StoreError::WriterStopped)?;
        match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => Err(StoreError::FlushTimeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(StoreError::WriterStopped),
        }
    }

    pub(crate) fn stop(&self, timeout: Duration) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Msg::Stop(tx))
            .map_err(|_| StoreError::WriterStopped)?;
        wait(&rx, timeout)
    }
}

fn wait(rx: &Receiver<()>, timeout: Duration) -> Result<(), StoreError> {
    match rx.recv_timeout(timeout) {
        Ok(()) => Ok(()),
        Err(RecvTimeoutError::Timeout) => Err(StoreError::FlushTimeout(timeout)),
        Err(RecvTimeoutError::Disconnected) => Err(StoreError::WriterStopped),
    }
}

/// Ops per batch at most, so that one commit stays short under a burst.
const MAX_BATCH_OPS: usize = 20_000;
/// How often an open batch looks for a flush or stop request while it waits for its
/// deadline: a clean stop need not wait a whole flush interval.
const BATCH_POLL: Duration = Duration::from_millis(20);
/// CDRs deleted per retention batch, so that retention never holds up writes for long.
const PURGE_CHUNK: usize = 1_000;
/// Log entries deleted per retention batch.
const PURGE_LOG_CHUNK: usize = 10_000;
/// How often retention looks for expired data.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// First and longest pause between attempts of a failing commit.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Starts the writer thread.
pub(crate) fn spawn(
    kv: Arc<dyn Kv>,
    cfg: StoreConfig,
) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
    let (tx, rx) = mpsc::channel();
    let counters = Arc::new(Counters::default());
    let kv_for_seq = kv.clone();
    let mut thread = WriterThread {
        kv,
        cfg,
        counters: counters.clone(),
        next_log_seq: stored_seq(
            kv_for_seq.as_ref(),
            keys::LOG_SEQ_KEY,
            "log sequence counter",
        )?,
        next_outbox_seq: stored_seq(
            kv_for_seq.as_ref(),
            keys::OUTBOX_SEQ_KEY,
            "outbox sequence counter",
        )?,
        saved_calls: saved_calls(kv_for_seq.as_ref())?,
        // Not at once: opening must not compete with a burst of retention work, and tests
        // that purge explicitly see deterministic counts.
        next_purge: Instant::now() + PURGE_EVERY,
    };
    let handle = std::thread::Builder::new()
        .name("sipedge-store".into())
        .spawn(move || thread.run(&rx))
        .map_err(StoreError::Thread)?;
    Ok((Writer { tx, counters }, handle))
}

struct WriterThread {
    /// The database; this thread is its only writer.
    kv: Arc<dyn Kv>,
    /// Flush interval and retention ages.
    cfg: StoreConfig,
    /// Shared with every [`Writer`].
    counters: Arc<Counters>,
    /// The sequence number of the next log entry, of any call: one counter for all calls
    /// keeps each call's entries in submission order without a lookup per call. Stored in
    /// `meta` with every batch that uses it.
    next_log_seq: u64,
    /// The sequence number of the next outbox entry; stored in `meta` like the log's.
    next_outbox_seq: u64,
    /// The calls whose call-in-progress entry is committed: a call that ends without one
    /// (most calls end within the batch that would have saved them) costs no delete. A B-tree
    /// of small nodes, not a hash set: with 10,000 calls up, the hash table's one large block
    /// cost about 4 MB of RSS (`benches/call_memory.sh`: 5,094 against 4,728 bytes a call).
    saved_calls: BTreeSet<CdrId>,
    /// When retention runs next.
    next_purge: Instant,
}

/// A sequence counter kept in `meta` as the last commit left it.
fn stored_seq(kv: &dyn Kv, key: &[u8], what: &'static str) -> Result<u64, StoreError> {
    match kv.snapshot()?.get(Table::Meta, key)? {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| StoreError::Corrupt {
                what,
                detail: format!("{} bytes", bytes.len()),
            }),
    }
}

/// The ids of the calls in progress the store holds.
fn saved_calls(kv: &dyn Kv) -> Result<BTreeSet<CdrId>, StoreError> {
    let mut ids = BTreeSet::new();
    kv.snapshot()?.scan(
        Table::Calls,
        (Bound::Unbounded, Bound::Unbounded),
        Direction::Forward,
        &mut |k, _| {
            // An unreadable key is left to `Store::calls_in_progress` to report.
            if let Some(id) = keys::id_of(k) {
                ids.insert(id);
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok(ids)
}

/// For each call that ends (its CDR or its removal) in `ops`, the position of its last end:
/// a call-in-progress put before it would be deleted again by the same atomic commit.
fn last_ends(ops: &[Queued]) -> HashMap<CdrId, usize> {
    let mut ends = HashMap::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Queued::Cdr(cdr) => {
                ends.insert(cdr.id, i);
            }
            Queued::RemoveCall(id) => {
                ends.insert(*id, i);
            }
            _ => {}
        }
    }
    ends
}

fn now_ms() -> UnixMs {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMs(ms)
}

fn age_cutoff(now: UnixMs, age: Duration) -> UnixMs {
    UnixMs(
        now.0
            .saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// One call's log entries of one batch, stored as one value keyed by the first one's seq.
struct Bundle<'a> {
    id: CdrId,
    first_seq: u64,
    /// About the entries' encoded bytes ([`codec::log_entry_size`]), held under
    /// [`codec::MAX_BUNDLE_BYTES`].
    bytes: usize,
    entries: Vec<&'a LogEntry>,
}

/// What the writer loop does after handling one message.
enum Next {
    Continue,
    Stop,
}

impl WriterThread {
    fn run(&mut self, rx: &Receiver<Msg>) {
        let mut pending: Vec<Queued> = Vec::new();
        loop {
            if pending.is_empty() {
                // Idle: block until the first write (or the next retention step).
                let timeout = self.next_purge.saturating_duration_since(Instant::now());
                match rx.recv_timeout(timeout) {
                    Ok(msg) => {
                        if let Next::Stop = self.handle(msg, rx, &mut pending) {
                            return;
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => self.background_purge(),
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                continue;
            }
            // A batch is open: sleep to its deadline and take everything queued meanwhile at
            // once. Blocking in `recv` instead would wake this thread for every write, and
            // under load those wake-ups cost more CPU than the commits themselves. A batch
            // that is already full is committed without sleeping: behind a backlog, every
            // pause would be throughput lost.
            let deadline = Instant::now() + self.cfg.flush_interval;
            loop {
                loop {
                    match rx.try_recv() {
                        Ok(msg) => {
                            if let Next::Stop = self.handle(msg, rx, &mut pending) {
                                return;
                            }
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.commit_ops(&mut pending);
                            return;
                        }
                    }
                    if pending.len() >= MAX_BATCH_OPS {
                        break;
                    }
                }
                let now = Instant::now();
                // A flush or purge message commits the batch itself and may leave it empty.
                if pending.is_empty() || pending.len() >= MAX_BATCH_OPS || now >= deadline {
                    break;
                }
                std::thread::sleep((deadline - now).min(BATCH_POLL));
            }
            self.commit_ops(&mut pending);
            // Here too under steady traffic, or retention would wait for a quiet night.
            self.background_purge();
        }
    }

    /// One message: a write joins the open batch; a flush, purge or stop commits it first.
    fn handle(&mut self, msg: Msg, rx: &Receiver<Msg>, pending: &mut Vec<Queued>) -> Next {
        match msg {
            Msg::Op(op) => pending.push(op),
            Msg::Flush(reply) => {
                self.commit_ops(pending);
                // The asker may have given up waiting; nothing to do then.
                let _ = reply.send(());
            }
            Msg::Purge(reply) => {
                self.commit_ops(pending);
                let mut total = Purged::default();
                let result = loop {
                    match self.purge_step() {
                        Ok((step, more)) => {
                            total.cdrs += step.cdrs;
                            total.log_entries += step.log_entries;
                            total.alarms += step.alarms;
                            if !more {
                                break Ok(total);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                };
                let _ = reply.send(result);
            }
            Msg::Stop(reply) => {
                // Writes other clones queued behind the stop are still taken.
                while let Ok(msg) = rx.try_recv() {
                    if let Msg::Op(op) = msg {
                        pending.push(op);
                    }
                }
                self.commit_ops(pending);
                let _ = reply.send(());
                return Next::Stop;
            }
        }
        Next::Continue
    }

    /// One retention chunk when due; soon again while there is more to delete.
    fn background_purge(&mut self) {
        if Instant::now() < self.next_purge {
            return;
        }
        self.next_purge = match self.purge_step() {
            Ok((_, true)) => Instant::now() + Duration::from_millis(10),
            Ok((_, false)) => Instant::now() + PURGE_EVERY,
            Err(e) => {
                tracing::error!(error = %e, "store retention failed; trying again later");
                Instant::now() + PURGE_EVERY
            }
        };
    }

    /// Commits `ops`, retrying until it succeeds: a write is never dropped.
    fn commit_ops(&mut self, ops: &mut Vec<Queued>) {
        if ops.is_empty() {
            return;
        }
        let mut pause = RETRY_FIRST;
        loop {
            match self.try_commit(ops) {
                Ok(()) => {
                    self.counters.failing.store(false, Ordering::Relaxed);
                    self.counters
                        .committed
                        .fetch_add(ops.len() as u64, Ordering::Relaxed);
                    self.forget_saved_alarms(ops);
                    self.note_saved_calls(ops);
                    ops.clear();
                    return;
                }
                Err(e) => {
                    self.counters.failures.fetch_add(1, Ordering::Relaxed);
                    self.counters.failing.store(true, Ordering::Relaxed);
                    tracing::error!(error = %e, ops = ops.len(), retry_in = ?pause,
                        "store commit failed; retrying, nothing is dropped");
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Drops the committed alarms from the unsaved ones, unless a newer version of one was
    /// submitted meanwhile.
    fn forget_saved_alarms(&self, ops: &[Queued]) {
        let mut unsaved = self
            .counters
            .unsaved_alarms
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for op in ops {
            if let Queued::Alarm(alarm) = op
                && unsaved.get(&alarm.id) == Some(alarm)
            {
                unsaved.remove(&alarm.id);
            }
        }
    }

    /// Follows the committed `ops` in the set of saved calls, in their order.
    fn note_saved_calls(&mut self, ops: &[Queued]) {
        for op in ops {
            match op {
                Queued::PutCall(id, _) => {
                    self.saved_calls.insert(*id);
                }
                Queued::Cdr(cdr) => {
                    self.saved_calls.remove(&cdr.id);
                }
                Queued::RemoveCall(id) => {
                    self.saved_calls.remove(id);
                }
                _ => {}
            }
        }
    }

    fn try_commit(&mut self, ops: &[Queued]) -> Result<(), StoreError> {
        let started = Instant::now();
        let kv = self.kv.clone();
        let mut snap = kv.snapshot()?;
        let mut build = BatchBuilder::default();
        let (mut cdrs, mut logs) = (0u64, 0u64);
        let mut seq = self.next_log_seq;
        let mut outbox_seq = self.next_outbox_seq;
        let queued_at = now_ms();
        // The highest ack taken in this batch so far: a later one only deletes past it.
        let mut acked: Option<u64> = None;
        // Each call's log entries of this batch, in order; a call's open bundle by its id.
        let mut bundles: Vec<Bundle<'_>> = Vec::new();
        let mut open_bundle: HashMap<CdrId, usize> = HashMap::new();
        let ends = last_ends(ops);
        for (i, op) in ops.iter().enumerate() {
            match op {
                Queued::Cdr(cdr) => {
                    if self.saved_calls.contains(&cdr.id) {
                        build.batch.delete(Table::Calls, &keys::id_key(cdr.id));
                    }
                    if build.put_cdr(snap.as_mut(), cdr)? && self.cfg.outbox {
                        build.batch.put(
                            Table::Outbox,
                            &keys::outbox_key(outbox_seq),
                            codec::encode_outbox(cdr.id, queued_at),
                        );
                        outbox_seq += 1;
                    }
                    cdrs += 1;
                }
                Queued::Ack(upto) => {
                    if acked.is_some_and(|done| done >= *upto) {
                        continue;
                    }
                    let lo = match acked {
                        Some(done) => Bound::Excluded(keys::outbox_key(done).to_vec()),
                        None => Bound::Unbounded,
                    };
                    let hi = Bound::Included(keys::outbox_key(*upto).to_vec());
                    let mut gone = Vec::new();
                    snap.scan(Table::Outbox, (lo, hi), Direction::Forward, &mut |k, _| {
                        gone.push(k.to_vec());
                        Ok(ControlFlow::Continue(()))
                    })?;
                    for key in gone {
                        build.batch.delete(Table::Outbox, &key);
                    }
                    acked = Some(*upto);
                }
                Queued::SinkState(name, state) => {
                    build
                        .batch
                        .put(Table::Meta, &keys::sink_state_key(name), state.clone())
                }
                Queued::Log(id, entry) => {
                    let size = codec::log_entry_size(entry);
                    let open = open_bundle
                        .get(id)
                        .and_then(|&i| bundles.get_mut(i))
                        .filter(|b| b.bytes + size <= codec::MAX_BUNDLE_BYTES);
                    match open {
                        Some(bundle) => {
                            bundle.bytes += size;
                            bundle.entries.push(entry);
                        }
                        // A call's first entry of the batch, or one past a full bundle.
                        None => {
                            open_bundle.insert(*id, bundles.len());
                            bundles.push(Bundle {
                                id: *id,
                                first_seq: seq,
                                bytes: size,
                                entries: vec![entry],
                            });
                        }
                    }
                    seq += 1;
                    logs += 1;
                }
                Queued::PutCall(id, bytes) => {
                    if ends.get(id).is_none_or(|&end| end < i) {
                        build
                            .batch
                            .put(Table::Calls, &keys::id_key(*id), bytes.clone());
                    }
                }
                Queued::RemoveCall(id) => {
                    if self.saved_calls.contains(id) {
                        build.batch.delete(Table::Calls, &keys::id_key(*id));
                    }
                }
                Queued::Alarm(alarm) => build.batch.put(
                    Table::Alarms,
                    &alarm.id.0.to_be_bytes(),
                    codec::encode_alarm(alarm),
                ),
            }
        }
        for b in bundles {
            build.batch.put(
                Table::Logs,
                &keys::log_key(b.id, b.first_seq),
                codec::encode_log_bundle(&b.entries),
            );
        }
        if seq != self.next_log_seq {
            build
                .batch
                .put(Table::Meta, keys::LOG_SEQ_KEY, seq.to_be_bytes().to_vec());
        }
        if outbox_seq != self.next_outbox_seq {
            build.batch.put(
                Table::Meta,
                keys::OUTBOX_SEQ_KEY,
                outbox_seq.to_be_bytes().to_vec(),
            );
        }
        let batch = build.finish(snap.as_mut())?;
        drop(snap);
        self.kv.commit(&batch)?;
        self.next_log_seq = seq;
        self.next_outbox_seq = outbox_seq;
        let c = &self.counters;
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.cdrs.fetch_add(cdrs, Ordering::Relaxed);
        c.logs.fetch_add(logs, Ordering::Relaxed);
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        c.last_commit_us.store(us, Ordering::Relaxed);
        Ok(())
    }

    /// Deletes one chunk of expired data; says whether more is left.
    fn purge_step(&mut self) -> Result<(Purged, bool), StoreError> {
        let now = now_ms();
        let cdr_cut = keys::lowest_id(age_cutoff(now, self.cfg.cdr_retention));
        let log_cut = keys::lowest_id(age_cutoff(now, self.cfg.trace_retention));
        let kv = self.kv.clone();
        let mut snap = kv.snapshot()?;
        let mut build = BatchBuilder::default();
        let mut purged = Purged::default();

        let mut expired = Vec::new();
        let below = |cut: CdrId| {
            (
                Bound::Unbounded,
                Bound::Excluded(keys::id_key(cut).to_vec()),
            )
        };
        snap.scan(
            Table::Cdrs,
            below(cdr_cut),
            Direction::Forward,
            &mut |k, v| {
                let id = keys::id_of(k).ok_or_else(|| StoreError::Corrupt {
                    what: "CDR key",
                    detail: format!("{} bytes", k.len()),
                })?;
                expired.push((id, codec::decode_cdr(id, v)));
                Ok(if expired.len() >= PURGE_CHUNK {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        let more_cdrs = expired.len() >= PURGE_CHUNK;
        for (id, cdr) in &expired {
            match cdr {
                Ok(cdr) => build.remove_cdr(snap.as_mut(), cdr)?,
                Err(e) => {
                    // Its index entries cannot be found; queries skip entries whose record
                    // is gone, so deleting the record is enough to make progress.
                    tracing::error!(error = %e, %id, "deleting an unreadable expired CDR");
                    build.batch.delete(Table::Cdrs, &keys::id_key(*id));
                }
            }
            purged.cdrs += 1;
        }

        let mut log_keys = Vec::new();
        snap.scan(
            Table::Logs,
            below(log_cut),
            Direction::Forward,
            &mut |k, v| {
                purged.log_entries += codec::log_count(v);
                log_keys.push(k.to_vec());
                Ok(if log_keys.len() >= PURGE_LOG_CHUNK {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                })
            },
        )?;
        let more_logs = log_keys.len() >= PURGE_LOG_CHUNK;
        for key in log_keys {
            build.batch.delete(Table::Logs, &key);
        }

        // Cleared alarms go with the CDRs of their time; active ones stay whatever their age.
        let alarm_cut = cdr_cut.0.to_be_bytes().to_vec();
        let mut old_alarms = Vec::new();
        snap.scan(
            Table::Alarms,
            (Bound::Unbounded, Bound::Excluded(alarm_cut)),
            Direction::Forward,
            &mut |k, v| {
                let id =
                    crate::alarm::AlarmId(u128::from_be_bytes(k.try_into().map_err(|_| {
                        StoreError::Corrupt {
                            what: "alarm key",
                            detail: format!("{} bytes", k.len()),
                        }
                    })?));
                if !codec::decode_alarm(id, v)?.is_active() {
                    old_alarms.push(k.to_vec());
                }
                Ok(ControlFlow::Continue(()))
            },
        )?;
        purged.alarms = old_alarms.len() as u64;
        for key in old_alarms {
            build.batch.delete(Table::Alarms, &key);
        }

        let batch = build.finish(snap.as_mut())?;
        drop(snap);
        if !batch.is_empty() {
            self.kv.commit(&batch)?;
            tracing::info!(
                cdrs = purged.cdrs,
                log_entries = purged.log_entries,
                alarms = purged.alarms,
                "store retention deleted expired data"
            );
        }
        Ok((purged, more_cdrs || more_logs))
    }
}

/// Builds one batch: CDRs with their index entries, and rollup changes summed per key and
/// applied to the stored counters at the end.
#[derive(Default)]
struct BatchBuilder<'a> {
    /// The changes so far.
    batch: Batch,
    /// CDRs written or deleted earlier in this batch, which the snapshot does not see yet,
    /// borrowed from the ops being committed.
    cdrs: HashMap<CdrId, Option<&'a Cdr>>,
    /// Net change of each rollup counter in this batch.
    rollup: HashMap<[u8; 5], (i64, i64)>,
}

impl<'a> BatchBuilder<'a> {
    fn stored(
        &self,
        snap: &mut dyn Snapshot,
        id: CdrId,
    ) -> Result<Option<Cow<'a, Cdr>>, StoreError> {
        if let Some(cdr) = self.cdrs.get(&id) {
            return Ok(cdr.map(Cow::Borrowed));
        }
        match snap.get(Table::Cdrs, &keys::id_key(id))? {
            None => Ok(None),
            Some(value) => match codec::decode_cdr(id, &value) {
                Ok(cdr) => Ok(Some(Cow::Owned(cdr))),
                Err(e) => {
                    // Its index entries cannot be found without it; the new record replaces it.
                    tracing::error!(error = %e, %id, "overwriting an unreadable stored CDR");
                    Ok(None)
                }
            },
        }
    }

    /// Stores `cdr` with its index entries; says whether it was new or changed.
    fn put_cdr(&mut self, snap: &mut dyn Snapshot, cdr: &'a Cdr) -> Result<bool, StoreError> {
        let old = self.stored(snap, cdr.id)?;
        if old.as_deref() == Some(cdr) {
            return Ok(false);
        }
        if let Some(old) = &old {
            self.unindex(old, -1);
        }
        let kind = Kind::of(cdr);
        let talk = codec::talk_ms(cdr);
        let index_value = codec::encode_index_value(kind, talk);
        self.batch
            .put(Table::Cdrs, &keys::id_key(cdr.id), codec::encode_cdr(cdr));
        self.batch.put(
            Table::ByCaller,
            &keys::number_key(cdr.id, &cdr.caller),
            index_value.clone(),
        );
        self.batch.put(
            Table::ByCalled,
            &keys::number_key(cdr.id, &cdr.called),
            index_value,
        );
        self.batch
            .put(Table::ByKind, &keys::kind_key(kind, cdr.id), Vec::new());
        self.count(cdr, 1);
        self.cdrs.insert(cdr.id, Some(cdr));
        Ok(true)
    }

    fn remove_cdr(&mut self, snap: &mut dyn Snapshot, cdr: &'a Cdr) -> Result<(), StoreError> {
        if self.stored(snap, cdr.id)?.is_some() {
            self.unindex(cdr, -1);
            self.batch.delete(Table::Cdrs, &keys::id_key(cdr.id));
            self.cdrs.insert(cdr.id, None);
        }
        Ok(())
    }

    /// Deletes the index entries of `old` (the record itself is overwritten or deleted by the
    /// caller) and takes it out of the rollups.
    fn unindex(&mut self, old: &Cdr, sign: i64) {
        self.batch
            .delete(Table::ByCaller, &keys::number_key(old.id, &old.caller));
        self.batch
            .delete(Table::ByCalled, &keys::number_key(old.id, &old.called));
        self.batch
            .delete(Table::ByKind, &keys::kind_key(Kind::of(old), old.id));
        self.count(old, sign);
    }

    fn count(&mut self, cdr: &Cdr, sign: i64) {
        let key = keys::rollup_key(keys::slot_of(cdr.id.start()), Kind::of(cdr));
        let talk = i64::try_from(codec::talk_ms(cdr)).unwrap_or(i64::MAX);
        let entry = self.rollup.entry(key).or_default();
        entry.0 += sign;
        entry.1 = entry.1.saturating_add(sign.saturating_mul(talk));
    }

    fn finish(mut self, snap: &mut dyn Snapshot) -> Result<Batch, StoreError> {
        for (key, (calls, talk)) in std::mem::take(&mut self.rollup) {
            if calls == 0 && talk == 0 {
                continue;
            }
            let current = match snap.get(Table::Rollup, &key)? {
                // A damaged counter must not block every later write: start it again.
                Some(value) => codec::decode_counts(&value).unwrap_or_else(|e| {
                    tracing::error!(error = %e, "resetting an unreadable rollup counter");
                    Counts::default()
                }),
                None => Counts::default(),
            };
            let next = Counts {
                calls: current.calls.saturating_add_signed(calls),
                talk_ms: current.talk_ms.saturating_add_signed(talk),
            };
            if next.calls == 0 {
                self.batch.delete(Table::Rollup, &key);
            } else {
                self.batch
                    .put(Table::Rollup, &key, codec::encode_counts(next));
            }
        }
        Ok(self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, Engine};
    use crate::log::LogKind;

    /// The real engine, with the first commits failing as on a full disk.
    struct FailingFirst {
        /// The real database.
        inner: Box<dyn Kv>,
        /// Commits still to fail.
        failures_left: AtomicU64,
    }

    impl Kv for FailingFirst {
        fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
            self.inner.snapshot()
        }

        fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
            let left = self.failures_left.load(Ordering::Relaxed);
            if left > 0 {
                self.failures_left.store(left - 1, Ordering::Relaxed);
                return Err(StoreError::Io {
                    action: "write (injected fault)",
                    path: "sipedge.redb".into(),
                    source: std::io::Error::other("no space left on device"),
                });
            }
            self.inner.commit(batch)
        }
    }

    /// An alarm raised while commits fail (the alarm about them, say) is readable at once
    /// and for as long as they fail, and leaves the unsaved set once committed.
    #[test]
    fn alarms_not_yet_committed_are_readable() {
        use crate::alarm::{AlarmKind, Severity};
        let dir = tempfile::tempdir().unwrap();
        let kv = Arc::new(FailingFirst {
            inner: engine::open(dir.path(), Engine::Redb).unwrap(),
            failures_left: AtomicU64::new(3),
        });
        let cfg = StoreConfig {
            flush_interval: Duration::from_millis(10),
            ..StoreConfig::default()
        };
        let (writer, thread) = spawn(kv.clone(), cfg).unwrap();
        let raised = Alarm {
            id: AlarmId::new(UnixMs(1_000), "n", AlarmKind::StoreError, "/data"),
            node: "n".into(),
            kind: AlarmKind::StoreError,
            target: "/data".into(),
            severity: Severity::Critical,
            message: "commits fail".into(),
            raised_at: UnixMs(1_000),
            cleared_at: None,
        };
        let cleared = Alarm {
            cleared_at: Some(UnixMs(2_000)),
            ..raised.clone()
        };
        writer.submit(WriteOp::PutAlarm(raised.clone())).unwrap();
        assert_eq!(writer.unsaved_alarms(), vec![raised.clone()]);
        writer.submit(WriteOp::PutAlarm(cleared.clone())).unwrap();
        assert_eq!(writer.unsaved_alarms(), vec![cleared.clone()]);
        writer.flush(Duration::from_secs(30)).unwrap();
        let stats = writer.stats();
        assert_eq!((stats.failures, stats.failing), (3, false));
        assert_eq!(writer.unsaved_alarms(), vec![]);
        let mut snap = kv.snapshot().unwrap();
        let stored = snap
            .get(Table::Alarms, &raised.id.0.to_be_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(codec::decode_alarm(raised.id, &stored).unwrap(), cleared);
        drop(snap);
        writer.stop(Duration::from_secs(5)).unwrap();
        thread.join().unwrap();
    }

    /// The real engine, keeping what each commit did to the calls-in-progress table.
    struct Recording {
        inner: Box<dyn Kv>,
        /// Per commit, its changes to `calls`: `true` for a put, `false` for a delete.
        calls: Mutex<Vec<Vec<(CdrId, bool)>>>,
    }

    impl Kv for Recording {
        fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
            self.inner.snapshot()
        }

        fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
            let calls = batch
                .changes
                .iter()
                .filter_map(|change| match change {
                    engine::Change::Put(Table::Calls, key, _) => Some((key, true)),
                    engine::Change::Delete(Table::Calls, key) => Some((key, false)),
                    _ => None,
                })
                .map(|(key, put)| (keys::id_of(key).unwrap(), put))
                .collect();
            self.calls.lock().unwrap().push(calls);
            self.inner.commit(batch)
        }
    }

    /// A call-in-progress entry is written only when no end of its call follows in the same
    /// commit, and deleted only when one is stored; what is left stored is the same either way.
    #[test]
    fn calls_in_progress_are_written_and_deleted_only_when_stored() {
        enum Step {
            Put(u128),
            Cdr(u128),
            Remove(u128),
            /// Ends the batch.
            Commit,
        }
        use Step::*;
        /// The calls table's changes of one commit: a call's id, and whether it was a put.
        type Changes = &'static [(u128, bool)];
        let cdr_of = |n: u128| {
            let mut cdr = codec::tests::cdr();
            cdr.id = CdrId(n);
            cdr
        };
        // Steps; per commit, the calls table changes; the ids left stored.
        let cases: &[(&[Step], &[Changes], &[u128])] = &[
            (&[Put(1), Cdr(1), Commit], &[&[]], &[]),
            (
                &[Put(1), Commit, Cdr(1), Commit],
                &[&[(1, true)], &[(1, false)]],
                &[],
            ),
            (&[Cdr(1), Commit], &[&[]], &[]),
            (&[Remove(1), Commit], &[&[]], &[]),
            (
                &[Put(1), Commit, Put(1), Put(2), Cdr(1), Commit],
                &[&[(1, true)], &[(2, true), (1, false)]],
                &[2],
            ),
            (&[Put(1), Remove(1), Put(1), Commit], &[&[(1, true)]], &[1]),
            (
                &[
                    Put(1),
                    Commit,
                    Put(1),
                    Remove(1),
                    Put(1),
                    Commit,
                    Remove(1),
                    Commit,
                ],
                &[&[(1, true)], &[(1, false), (1, true)], &[(1, false)]],
                &[],
            ),
        ];
        for (i, (steps, commits, left)) in cases.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let kv = Arc::new(Recording {
                inner: engine::open(dir.path(), Engine::Redb).unwrap(),
                calls: Mutex::default(),
            });
            // Long enough that only the flushes below end a batch.
            let cfg = StoreConfig {
                flush_interval: Duration::from_secs(60),
                ..StoreConfig::default()
            };
            let (writer, thread) = spawn(kv.clone(), cfg).unwrap();
            for step in *steps {
                match step {
                    Put(n) => writer.submit(WriteOp::PutCall(CdrId(*n), vec![1])).unwrap(),
                    Cdr(n) => writer
                        .submit(WriteOp::PutCdr(Box::new(cdr_of(*n))))
                        .unwrap(),
                    Remove(n) => writer.submit(WriteOp::RemoveCall(CdrId(*n))).unwrap(),
                    Commit => writer.flush(Duration::from_secs(30)).unwrap(),
                }
            }
            writer.stop(Duration::from_secs(30)).unwrap();
            thread.join().unwrap();
            let want: Vec<Vec<(CdrId, bool)>> = commits
                .iter()
                .map(|c| c.iter().map(|&(n, put)| (CdrId(n), put)).collect())
                .collect();
            assert_eq!(*kv.calls.lock().unwrap(), want, "case {i}");
            let stored: Vec<u128> = saved_calls(kv.as_ref())
                .unwrap()
                .iter()
                .map(|id| id.0)
                .collect();
            assert_eq!(stored, *left, "case {i}");
        }
    }

    /// A call saved by an earlier run is deleted when its CDR comes.
    #[test]
    fn calls_saved_before_a_restart_are_deleted_at_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let cdr = codec::tests::cdr();
        let cfg = StoreConfig {
            flush_interval: Duration::from_secs(60),
            ..StoreConfig::default()
        };
        let (writer, thread) = spawn(
            Arc::from(engine::open(dir.path(), Engine::Redb).unwrap()),
            cfg.clone(),
        )
        .unwrap();
        writer.submit(WriteOp::PutCall(cdr.id, vec![1])).unwrap();
        writer.stop(Duration::from_secs(30)).unwrap();
        thread.join().unwrap();

        let kv = Arc::new(Recording {
            inner: engine::open(dir.path(), Engine::Redb).unwrap(),
            calls: Mutex::default(),
        });
        let (writer, thread) = spawn(kv.clone(), cfg).unwrap();
        writer
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
        writer.stop(Duration::from_secs(30)).unwrap();
        thread.join().unwrap();
        assert_eq!(*kv.calls.lock().unwrap(), vec![vec![(cdr.id, false)]]);
        assert!(saved_calls(kv.as_ref()).unwrap().is_empty());
    }

    #[test]
    fn failed_commits_are_retried_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Arc::new(FailingFirst {
            inner: engine::open(dir.path(), Engine::Redb).unwrap(),
            failures_left: AtomicU64::new(3),
        });
        let cfg = StoreConfig {
            flush_interval: Duration::from_millis(10),
            ..StoreConfig::default()
        };
        let (writer, thread) = spawn(kv.clone(), cfg).unwrap();
        let cdr = codec::tests::cdr();
        let event = |text: &str| LogEntry {
            at: cdr.start_time,
            kind: LogKind::Event { text: text.into() },
        };
        writer
            .submit(WriteOp::AppendLog(cdr.id, event("first")))
            .unwrap();
        writer
            .submit(WriteOp::AppendLog(cdr.id, event("second")))
            .unwrap();
        writer
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .unwrap();
        writer.flush(Duration::from_secs(30)).unwrap();

        let stats = writer.stats();
        assert_eq!(
            (stats.failures, stats.cdrs_written, stats.queued),
            (3, 1, 0)
        );
        let mut snap = kv.snapshot().unwrap();
        let stored = snap
            .get(Table::Cdrs, &keys::id_key(cdr.id))
            .unwrap()
            .unwrap();
        assert_eq!(codec::decode_cdr(cdr.id, &stored).unwrap(), cdr);
        let mut log = Vec::new();
        snap.scan(
            Table::Logs,
            crate::prefix_range(&keys::id_key(cdr.id)),
            Direction::Forward,
            &mut |_, v| {
                codec::decode_logs(v, &mut log)?;
                Ok(ControlFlow::Continue(()))
            },
        )
        .unwrap();
        assert_eq!(log, [event("first"), event("second")]);
        drop(snap);
        writer.stop(Duration::from_secs(30)).unwrap();
        thread.join().unwrap();
    }
}
