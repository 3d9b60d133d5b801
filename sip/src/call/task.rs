//! The call tracking task: the glue between the relay, the [`Tracker`] and the store.
//!
//! It drains the relay's hand-off queue ([`Relayed`]), reads each message's facts back from
//! the relay's scan (scanning only what the relay did not: sipedge's own replies, HEP copies),
//! feeds the tracker, ticks it every second, and sends to the store's
//! non-blocking [`Writer`]: every message and sipedge event of a call into its log, call
//! snapshots while it is in progress, its CDR when it ends. It publishes live-call events on a
//! broadcast channel (SSE) and keeps the map of live calls (`/api/calls/live`). On start it
//! resumes the calls in progress saved by the previous run.
//!
//! Nothing here can slow SIP forwarding: the hand-off is `try_send` on the relay side, and
//! every write here is a queue push; a closed store is counted and logged, not fatal.

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipedge_store::log::Direction as LogDirection;
use sipedge_store::{
    CdrId, LogEntry, LogKind, Source, Store, StoreError, Transport, UnixMs, WriteOp, Writer,
};
use smallvec::SmallVec;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::logcap::{Admit, Cap, LogCap};
use super::sdp::sdp_video;
use super::{CallKey, CallSnapshot, LiveCall, Method, Output, SipEvent, SipKind, Tracker};
use crate::flow;
use crate::observe::{Bound, Direction, Metrics, Origin, Relayed};
use crate::scan;

/// How long the task lets relayed messages queue up before taking them in one go; well
/// under the hand-off queue's depth at any rate the relay sustains (about 500 messages at
/// 4000 calls/s). Each batch costs two wake-ups of the task and a save of every call it
/// changed, so a longer pause costs less per call (5 ms → 20 ms: the tracking threads' CPU
/// per call a third lower at 1000 calls/s); a call that starts and ends within one batch is
/// never saved as in progress. Live events lag by up to this much, which a person watching
/// the live view does not see.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What call tracking needs from the configuration.
#[derive(Debug, Clone)]
pub struct TrackingConfig {
    /// `node.name`: written into every CDR and part of its id.
    pub node: String,
    /// `sip.call_timeout`: a connected call with no BYE is closed as `timeout` after it.
    pub call_timeout: Duration,
    /// Cap on calls tracked at once (see [`Tracker::with_max_calls`]).
    pub max_calls: usize,
    /// Cap on each call's log.
    pub log_cap: LogCap,
    /// The relay's counters: call tracking keeps their count of calls in progress (which
    /// the relay holds new calls to) and counts the log entries it skips there.
    pub relay: Arc<Metrics>,
    /// Depth of the live-event channel: an SSE client that falls this far behind skips
    /// events (and is told so by `broadcast`) instead of slowing call tracking down.
    pub event_capacity: usize,
}

impl TrackingConfig {
    /// Defaults for everything but the node name and the call timeout.
    pub fn new(node: impl Into<String>, call_timeout: Duration) -> Self {
        TrackingConfig {
            node: node.into(),
            call_timeout,
            max_calls: super::DEFAULT_MAX_CALLS,
            log_cap: super::logcap::DEFAULT_LOG_CAP,
            relay: Arc::default(),
            event_capacity: 1024,
        }
    }

    /// The settings `[sip]` gives call tracking (the proxy's timeout, caps and counters).
    pub fn for_proxy(
        node: impl Into<String>,
        cfg: &crate::ProxyConfig,
        relay: Arc<Metrics>,
    ) -> Self {
        TrackingConfig {
            max_calls: tracking_cap(cfg.max_calls),
            log_cap: LogCap {
                max_entries: cfg.max_log_entries_per_call as u64,
                max_bytes: cfg.max_log_bytes_per_call as u64,
            },
            relay,
            ..TrackingConfig::new(node, cfg.call_timeout)
        }
    }
}

/// Call tracking's own cap for `sip.max_calls`: a quarter above, so that the INVITEs that
/// pass the relay while tracking lags behind it are still tracked rather than evicting
/// ringing calls.
fn tracking_cap(max_calls: usize) -> usize {
    max_calls
        .saturating_add(max_calls / 4)
        .max(max_calls.saturating_add(16))
}

/// SSE event names of SPEC §11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LiveEventKind {
    Started,
    Ringing,
    Answered,
    Ended,
}

impl LiveEventKind {
    /// The `event:` name on `/api/events`.
    pub fn name(self) -> &'static str {
        match self {
            LiveEventKind::Started => "call.started",
            LiveEventKind::Ringing => "call.ringing",
            LiveEventKind::Answered => "call.answered",
            LiveEventKind::Ended => "call.ended",
        }
    }
}

/// One live-call event: its name and the call as `/api/calls/live` shows it (the HTTP side
/// renders the times in `node.timezone`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveEvent {
    /// Which event.
    pub kind: LiveEventKind,
    /// The call after the event (state `ended` for `call.ended`).
    pub call: LiveCall,
}

/// The calls in progress now, shared with the HTTP side.
#[derive(Debug, Clone, Default)]
pub struct LiveCalls {
    /// By id; written only by the tracking task, read by API requests.
    calls: Arc<RwLock<HashMap<CdrId, LiveCall>>>,
}

impl LiveCalls {
    /// Every call in progress, oldest first.
    pub fn list(&self) -> Vec<LiveCall> {
        let calls = self.calls.read().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<LiveCall> = calls.values().cloned().collect();
        list.sort_by_key(|c| (c.start_time, c.id));
        list
    }

    pub fn get(&self, id: CdrId) -> Option<LiveCall> {
        let calls = self.calls.read().unwrap_or_else(PoisonError::into_inner);
        calls.get(&id).cloned()
    }

    /// `sipedge_calls_active`.
    pub fn len(&self) -> usize {
        self.calls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn upsert(&self, call: LiveCall) {
        let mut calls = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        calls.insert(call.id, call);
    }

    fn remove(&self, id: CdrId) {
        let mut calls = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        calls.remove(&id);
    }
}

/// Counters of call tracking, for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackingCounters {
    /// Messages taken from the hand-off queue.
    pub messages: u64,
    /// Relayed messages that did not scan (should stay 0: the relay scanned them too).
    pub unparsed: u64,
    /// Messages of no tracked call (see [`super::TrackerStats::ignored`]).
    pub ignored: u64,
    /// Initial INVITEs not tracked (see [`super::TrackerStats::refused`]).
    pub refused: u64,
    /// Ringing calls closed to make room (see [`super::TrackerStats::evicted`]).
    pub evicted: u64,
    /// Calls resumed from the store at start.
    pub resumed: u64,
    /// Saved calls in progress that could not be read back, dropped at start.
    pub unreadable: u64,
    /// Writes the store refused because it was closed.
    pub store_errors: u64,
    /// Calls whose log reached its cap.
    pub logs_truncated: u64,
}

/// Atomic twin of [`TrackingCounters`], written by the task.
#[derive(Debug, Default)]
struct Counters {
    messages: AtomicU64,
    unparsed: AtomicU64,
    ignored: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
    resumed: AtomicU64,
    unreadable: AtomicU64,
    store_errors: AtomicU64,
    logs_truncated: AtomicU64,
}

/// The handle the rest of sipedge keeps on call tracking.
#[derive(Debug, Clone)]
pub struct CallTracking {
    /// The calls in progress.
    live: LiveCalls,
    /// Live-call events; subscribe for SSE.
    events: broadcast::Sender<LiveEvent>,
    /// Shared with the task.
    counters: Arc<Counters>,
}

impl CallTracking {
    pub fn live(&self) -> &LiveCalls {
        &self.live
    }

    /// A receiver of every live-call event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<LiveEvent> {
        self.events.subscribe()
    }

    pub fn counters(&self) -> TrackingCounters {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TrackingCounters {
            messages: get(&c.messages),
            unparsed: get(&c.unparsed),
            ignored: get(&c.ignored),
            refused: get(&c.refused),
            evicted: get(&c.evicted),
            resumed: get(&c.resumed),
            unreadable: get(&c.unreadable),
            store_errors: get(&c.store_errors),
            logs_truncated: get(&c.logs_truncated),
        }
    }
}

/// Resumes the calls in progress saved in `store`, then spawns the task that drains
/// `relayed` until `shutdown` completes or the relay drops its sender. At shutdown it
/// processes what is still queued, so that every snapshot and CDR reaches the writer before
/// the store is flushed. Fails only when the saved calls cannot be read.
pub fn spawn(
    cfg: TrackingConfig,
    store: &Store,
    relayed: mpsc::Receiver<Relayed>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(CallTracking, JoinHandle<()>), StoreError> {
    let saved = store.calls_in_progress()?;
    let (events, _) = broadcast::channel(cfg.event_capacity.max(1));
    let handle = CallTracking {
        live: LiveCalls::default(),
        events,
        counters: Arc::default(),
    };
    let mut worker = Worker {
        tracker: Tracker::new(cfg.node.clone(), cfg.call_timeout).with_max_calls(cfg.max_calls),
        writer: store.writer(),
        node: cfg.node.into(),
        handle: handle.clone(),
        changed: HashMap::new(),
        outputs: Vec::new(),
        log_cap: cfg.log_cap,
        relay: cfg.relay,
    };
    worker.resume(saved, unix_ms(SystemTime::now()));
    let task = tokio::spawn(worker.run(relayed, shutdown));
    Ok((handle, task))
}

/// The task's state.
struct Worker {
    /// The state machine.
    tracker: Tracker,
    /// Where CDRs, snapshots and logs go.
    writer: Writer,
    /// `node.name`, for the live view of snapshots.
    node: Arc<str>,
    /// What the rest of sipedge sees.
    handle: CallTracking,
    /// The calls that changed in the batch being taken, saved as they stand when the batch
    /// is done: a call that changes several times, or ends, within one batch is encoded and
    /// written once, or not at all.
    changed: HashMap<CdrId, CallKey>,
    /// The tracker's outputs for one message, kept between messages for its capacity.
    outputs: Vec<Output>,
    /// Cap on each call's log.
    log_cap: LogCap,
    /// Where the calls in progress and the skipped log entries are counted.
    relay: Arc<Metrics>,
}

impl Worker {
    async fn run(
        mut self,
        mut relayed: mpsc::Receiver<Relayed>,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                r = relayed.recv() => match r {
                    Some(r) => {
                        self.on_relayed(r);
                        // Let a batch gather: the relay's sends find no waiting task and
                        // wake nobody, which under load saves more CPU than the few
                        // milliseconds of lag on live events cost.
                        tokio::time::sleep(BATCH_PAUSE).await;
                        for _ in 0..relayed.len() {
                            let Ok(r) = relayed.try_recv() else { break };
                            self.on_relayed(r);
                        }
                        self.save_changed();
                    }
                    None => break,
                },
                _ = tick.tick() => self.tick(unix_ms(SystemTime::now())),
            }
        }
        // What was queued when the stop came, and no more: a relay still running must not
        // keep the task alive.
        for _ in 0..relayed.len() {
            let Ok(r) = relayed.try_recv() else { break };
            self.on_relayed(r);
        }
        self.save_changed();
    }

    fn resume(&mut self, saved: Vec<(CdrId, Vec<u8>)>, now: UnixMs) {
        let mut snapshots = Vec::with_capacity(saved.len());
        for (id, bytes) in saved {
            match CallSnapshot::decode(&bytes) {
                Some(s) if s.id() == id => snapshots.push(s),
                _ => {
                    tracing::warn!(%id, "a saved call in progress could not be read back; dropped");
                    self.handle
                        .counters
                        .unreadable
                        .fetch_add(1, Ordering::Relaxed);
                    self.submit(WriteOp::RemoveCall(id));
                }
            }
        }
        self.handle
            .counters
            .resumed
            .fetch_add(snapshots.len() as u64, Ordering::Relaxed);
        self.tracker.resume(snapshots);
        let live: Vec<LiveCall> = self.tracker.live_calls().collect();
        for call in live {
            let entry = LogEntry {
                at: now,
                kind: LogKind::Event {
                    text: "sipedge restarted; call tracking resumed".into(),
                },
            };
            self.submit(WriteOp::AppendLog(call.id, entry));
            self.handle.live.upsert(call);
        }
        self.tick(now);
        self.sync_stats();
    }

    fn on_relayed(&mut self, r: Relayed) {
        self.handle
            .counters
            .messages
            .fetch_add(1, Ordering::Relaxed);
        // The relay's summary, or a scan of what the relay did not scan.
        let facts = match r.summary.and_then(|s| s.facts(&r.bytes)) {
            Some(facts) => facts,
            None => match scan::scan(&r.bytes) {
                Ok(msg) => msg.facts(),
                Err(_) => {
                    self.handle
                        .counters
                        .unparsed
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let Some(ev) = event_of(&r, &facts) else {
            self.handle
                .counters
                .unparsed
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let at = ev.at;
        let mut outputs = std::mem::take(&mut self.outputs);
        self.tracker.on_event_into(&ev, &mut outputs);
        self.apply(&mut outputs, at);
        self.outputs = outputs;
        let log_cap = self.log_cap;
        let Some((id, used)) = self.tracker.log_of(&ev) else {
            self.sync_stats();
            return;
        };
        // Read before the message's bytes move into its log entry.
        let note = (r.origin == Origin::Local).then(|| reply_note(&facts, r.dst));
        drop(ev);
        let entries = log_entries(r, note, at);
        let bytes: usize = entries.iter().map(entry_bytes).sum();
        match log_cap.admit(used, entries.len() as u64, bytes as u64) {
            Admit::Log => {
                for entry in entries {
                    self.submit(WriteOp::AppendLog(id, entry));
                }
            }
            Admit::Truncate(cut) => {
                self.handle
                    .counters
                    .logs_truncated
                    .fetch_add(1, Ordering::Relaxed);
                self.skipped(cut.cap, entries.len());
                let entry = LogEntry {
                    at,
                    kind: LogKind::Event { text: cut.text() },
                };
                self.submit(WriteOp::AppendLog(id, entry));
            }
            Admit::Skip(cap) => self.skipped(cap, entries.len()),
        }
        self.sync_stats();
    }

    /// Counts log entries not written, under the cap that stopped them.
    fn skipped(&self, cap: Cap, n: usize) {
        let bound = match cap {
            Cap::Entries => Bound::LogEntriesPerCall,
            Cap::Bytes => Bound::LogBytesPerCall,
        };
        self.relay.refused(bound, n as u64);
    }

    fn tick(&mut self, now: UnixMs) {
        let mut outputs = self.tracker.tick(now);
        if !outputs.is_empty() {
            self.apply(&mut outputs, now);
            self.save_changed();
            self.sync_stats();
        }
    }

    /// Saves the calls that changed in this batch and are still in progress.
    fn save_changed(&mut self) {
        // Drained, not taken: the map keeps its capacity from batch to batch.
        let mut changed = std::mem::take(&mut self.changed);
        for (id, key) in changed.drain() {
            // A call that ended is no longer in the tracker (and was taken out of `changed`).
            let Some(snapshot) = self.tracker.call(&key).filter(|s| s.id() == id) else {
                continue;
            };
            let (live, encoded) = (snapshot.live(&self.node), snapshot.encode());
            self.handle.live.upsert(live);
            self.submit(WriteOp::PutCall(id, encoded));
        }
        self.changed = changed;
    }

    /// Acts on the tracker's outputs, leaving `outputs` empty.
    fn apply(&mut self, outputs: &mut Vec<Output>, at: UnixMs) {
        for output in outputs.drain(..) {
            match output {
                Output::Started(call) => self.publish(LiveEventKind::Started, call),
                Output::Ringing(call) => self.publish(LiveEventKind::Ringing, call),
                Output::Answered(call) => self.publish(LiveEventKind::Answered, call),
                Output::Changed(key) => {
                    if let Some(id) = self.tracker.call(&key).map(CallSnapshot::id) {
                        self.changed.insert(id, key);
                    }
                }
                Output::Ended(cdr, call) => {
                    self.changed.remove(&cdr.id);
                    self.handle.live.remove(cdr.id);
                    // The CDR write also drops the call-in-progress entry, in one batch.
                    self.submit(WriteOp::PutCdr(cdr));
                    // No subscriber is not an error: nobody watches the live view.
                    let _ = self.handle.events.send(LiveEvent {
                        kind: LiveEventKind::Ended,
                        call,
                    });
                }
                Output::Event(id, text) => {
                    let entry = LogEntry {
                        at,
                        kind: LogKind::Event { text: text.into() },
                    };
                    self.submit(WriteOp::AppendLog(id, entry));
                }
            }
        }
    }

    fn publish(&self, kind: LiveEventKind, call: LiveCall) {
        self.handle.live.upsert(call.clone());
        // No subscriber is not an error: nobody watches the live view.
        let _ = self.handle.events.send(LiveEvent { kind, call });
    }

    fn submit(&self, op: WriteOp) {
        if let Err(e) = self.writer.submit(op) {
            let before = self
                .handle
                .counters
                .store_errors
                .fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                tracing::error!(error = %e, "call tracking cannot write to the store");
            }
        }
    }

    fn sync_stats(&self) {
        self.relay.calls.set_active(self.tracker.len());
        let stats = self.tracker.stats();
        let c = &self.handle.counters;
        c.ignored.store(stats.ignored, Ordering::Relaxed);
        c.refused.store(stats.refused, Ordering::Relaxed);
        c.evicted.store(stats.evicted, Ordering::Relaxed);
    }
}

fn unix_ms(t: SystemTime) -> UnixMs {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMs(ms)
}

fn transport_of(t: flow::Transport) -> Transport {
    match t {
        flow::Transport::Udp => Transport::Udp,
        flow::Transport::Tcp => Transport::Tcp,
    }
}

/// The text size of a log entry, which the log cap counts.
fn entry_bytes(entry: &LogEntry) -> usize {
    match &entry.kind {
        LogKind::Sip { text, .. } => text.len(),
        LogKind::Event { text } => text.len(),
    }
}

/// `bytes` as text, invalid UTF-8 replaced. `from_utf8` first: its check runs a word at a
/// time over ASCII, where `from_utf8_lossy`'s goes by chunks, and header values are ASCII.
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The tracker's view of a relayed message; `None` when it lacks what every SIP message has
/// (Call-ID, From, To, CSeq).
fn event_of<'a>(r: &Relayed, facts: &scan::Facts<'a>) -> Option<SipEvent<'a>> {
    let from_terminal = r.origin == Origin::Forwarded && r.direction == Direction::ToUpstream;
    let terminal = match r.direction {
        Direction::ToUpstream => r.src,
        Direction::ToTerminal => r.dst,
    };
    sip_event(
        facts,
        r.at,
        from_terminal,
        (r.transport, terminal),
        r.source,
    )
}

/// The tracker's view of a message (its [`scan::Facts`]), seen at `at` between `terminal` and
/// the Sipserver (relayed, or read from a capture); `None` when it lacks what every SIP
/// message has (Call-ID, From, To, CSeq).
pub fn sip_event<'a>(
    msg: &scan::Facts<'a>,
    at: SystemTime,
    from_terminal: bool,
    (transport, terminal): (flow::Transport, SocketAddr),
    source: Source,
) -> Option<SipEvent<'a>> {
    let call_id = msg.call_id?;
    let from = msg.from?;
    let to = msg.to?;
    let (cseq, cseq_method) = msg.cseq?;
    let kind = match msg.line {
        scan::Line::Response { status, .. } => SipKind::Response { status },
        scan::Line::Request { method, uri } => SipKind::Request {
            method: Method::from_bytes(method),
            request_uri: text(uri),
        },
    };
    let content_type = msg.content_type.and_then(|c| std::str::from_utf8(c).ok());
    Some(SipEvent {
        at: unix_ms(at),
        from_terminal,
        transport: transport_of(transport),
        terminal,
        source,
        kind,
        call_id: text(call_id),
        from_uri: text(from.uri),
        from_tag: from.tag.map(text),
        to_uri: text(to.uri),
        to_tag: to.tag.map(text),
        cseq,
        cseq_method: Method::from_bytes(cseq_method),
        sdp_video: sdp_video(content_type, msg.body),
    })
}

/// The call-log lines of one message: the message itself (its bytes move into the entry),
/// and `note`, what sipedge did in words when the message is a reply it made.
fn log_entries(r: Relayed, note: Option<String>, at: UnixMs) -> SmallVec<[LogEntry; 2]> {
    let direction = match r.origin {
        Origin::Forwarded => LogDirection::Received,
        Origin::Local => LogDirection::Sent,
    };
    let mut entries = SmallVec::new();
    entries.push(LogEntry {
        at,
        kind: LogKind::Sip {
            direction,
            transport: transport_of(r.transport),
            src: r.src,
            dst: r.dst,
            text: r.bytes,
        },
    });
    if let Some(text) = note {
        entries.push(LogEntry {
            at,
            kind: LogKind::Event { text },
        });
    }
    entries
}

/// What sipedge did, in words, when it sent the reply `msg` to `dst`.
fn reply_note(msg: &scan::Facts<'_>, dst: SocketAddr) -> String {
    let (status, reason) = match msg.line {
        scan::Line::Response { status, reason } => (status.to_string(), text(reason)),
        scan::Line::Request { .. } => (String::new(), Cow::Borrowed("")),
    };
    format!("sipedge replied {status} {reason} to {dst}")
}

#[cfg(test)]
mod tests;
