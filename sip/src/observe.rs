//! What the relay tells the rest of sipedge: counters for the metrics endpoint, and one
//! [`Relayed`] per message for call tracking, handed off without ever waiting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use sipedge_store::Source;
use tokio::sync::mpsc;

use crate::flow::Transport;
use crate::scan::Summary;

/// Which way a message went through sipedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a terminal towards the Sipserver.
    ToUpstream,
    /// From the Sipserver (or sipedge itself) towards a terminal.
    ToTerminal,
}

impl Direction {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToUpstream => "to_upstream",
            Direction::ToTerminal => "to_terminal",
        }
    }

    /// The other way.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::ToUpstream => Direction::ToTerminal,
            Direction::ToTerminal => Direction::ToUpstream,
        }
    }

    fn index(self) -> usize {
        match self {
            Direction::ToUpstream => 0,
            Direction::ToTerminal => 1,
        }
    }
}

/// Who wrote the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A peer's message that sipedge forwarded; `bytes` are as received, before sipedge's
    /// rewrite (that is what the peer said, and what parses the same for both sides).
    Forwarded,
    /// A reply sipedge made itself (400, 413, 483, 503, 200 to OPTIONS): call tracking sees
    /// e.g. "483 sent" or "upstream unreachable" as this response.
    Local,
}

/// Each relay thread's or task's copies of the messages it hands to call tracking, cut one after another
/// from a shared chunk: a message's copy is one reference count, not one allocation (and,
/// later, one free on call tracking's or the store's thread). A chunk is freed when the last
/// message cut from it is dropped, and reused in place when that happens before it is full.
#[derive(Debug, Default)]
pub(crate) struct Copies {
    chunk: BytesMut,
}

/// Size of a chunk: a few dozen messages. Small, since each busy port holds one.
const COPIES_CHUNK: usize = 32 * 1024;

impl Copies {
    /// A copy of `bytes` that call tracking can keep.
    pub(crate) fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if self.chunk.capacity() - self.chunk.len() < bytes.len() {
            // Only whole messages go in a chunk; an oversized one gets a chunk of its own.
            self.chunk.reserve(bytes.len().max(COPIES_CHUNK));
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

/// One message through sipedge, for call tracking and the per-call SIP log.
#[derive(Debug, Clone)]
pub struct Relayed {
    /// When sipedge received (or, for a local reply, sent) it.
    pub at: SystemTime,
    /// Towards the upstream or towards a terminal.
    pub direction: Direction,
    /// Whether it was forwarded or made by sipedge.
    pub origin: Origin,
    /// Transport on which it arrived (local replies: on which the request arrived).
    pub transport: Transport,
    /// The sender's address (local replies: sipedge's advertised address and port).
    pub src: SocketAddr,
    /// Where sipedge sent it.
    pub dst: SocketAddr,
    /// Whether sipedge relayed it or was sent a copy (HEP): the CDR's `source`.
    pub source: Source,
    /// The whole message.
    pub bytes: Bytes,
    /// What call tracking reads of `bytes`, from the relay's scan; `None` for a message the
    /// relay did not scan (sipedge's own replies, HEP), which call tracking scans itself.
    pub summary: Option<Summary>,
    /// Its share of the hand-off's byte budget, given back when call tracking is done with
    /// it.
    pub(crate) charge: Charge,
}

impl Relayed {
    /// A message seen elsewhere than on the relay (mirrored by HEP), holding none of the
    /// hand-off's byte budget.
    pub fn new(
        at: SystemTime,
        direction: Direction,
        origin: Origin,
        transport: Transport,
        (src, dst): (SocketAddr, SocketAddr),
        source: Source,
        bytes: Bytes,
    ) -> Relayed {
        Relayed {
            at,
            direction,
            origin,
            transport,
            src,
            dst,
            source,
            bytes,
            summary: None,
            charge: Charge::default(),
        }
    }
}

/// The bytes one queued message holds of [`Handoff`]'s budget; given back on drop. A clone
/// of a message is not in the queue and holds nothing.
#[derive(Debug, Default)]
pub(crate) struct Charge(Option<(Arc<AtomicUsize>, usize)>);

impl Clone for Charge {
    fn clone(&self) -> Self {
        Charge(None)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some((queued, n)) = &self.0 {
            queued.fetch_sub(*n, Ordering::Relaxed);
        }
    }
}

/// The sending half of the hand-off to call tracking: bounded in messages and in bytes, so
/// that call tracking falling behind costs at most `sip.handoff_queue_bytes`.
#[derive(Debug, Clone)]
pub struct Handoff {
    /// Bounded queue to call tracking; `try_send` only, so forwarding never waits.
    tx: mpsc::Sender<Relayed>,
    /// Bytes of the messages in the queue.
    queued: Arc<AtomicUsize>,
    /// `sip.handoff_queue_bytes`.
    max_bytes: usize,
}

impl Handoff {
    /// Wraps the sender the root created (see [`crate::ProxyConfig::handoff_queue`]), with
    /// a budget of `max_bytes` for what waits in it.
    pub fn new(tx: mpsc::Sender<Relayed>, max_bytes: usize) -> Handoff {
        Handoff {
            tx,
            queued: Arc::default(),
            max_bytes,
        }
    }

    /// Whether an observation of `len` bytes would be accepted now, else the bound that
    /// refuses it: lets the relay skip copying the bytes when call tracking is behind.
    pub fn room_for(&self, len: usize) -> Result<(), Bound> {
        if self.tx.capacity() == 0 {
            return Err(Bound::Handoff);
        }
        if self.queued.load(Ordering::Relaxed).saturating_add(len) > self.max_bytes {
            return Err(Bound::HandoffBytes);
        }
        Ok(())
    }

    /// Queues `r`, or drops it and counts the drop when either bound is reached or the
    /// queue is closed.
    pub fn send(&self, mut r: Relayed, metrics: &Metrics) {
        let len = r.bytes.len();
        let refused = match self.room_for(len) {
            Ok(()) => {
                self.queued.fetch_add(len, Ordering::Relaxed);
                r.charge = Charge(Some((Arc::clone(&self.queued), len)));
                // A refused message is dropped here, and gives its charge back.
                self.tx.try_send(r).err().map(|_| Bound::Handoff)
            }
            Err(bound) => Some(bound),
        };
        if let Some(bound) = refused {
            metrics.handoff_dropped.fetch_add(1, Ordering::Relaxed);
            metrics.refused(bound, 1);
        }
    }
}

/// Method names with their own counter; everything else counts as `OTHER`.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "PRACK",
    "SUBSCRIBE",
    "NOTIFY",
    "PUBLISH",
    "INFO",
    "REFER",
    "MESSAGE",
    "UPDATE",
    "OTHER",
];

/// Index of `method` in [`METHODS`] (methods are case-sensitive in SIP).
pub fn method_index(method: &[u8]) -> usize {
    METHODS
        .iter()
        .take(METHODS.len() - 1)
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Status codes 100..=699 each have a counter.
const STATUSES: usize = 600;

/// Why a message was not forwarded (besides a local reply, which is counted as a response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not SIP, or missing what even a 400 needs.
    Unparseable,
    /// A response whose top Via is not sipedge's, or has nowhere to go.
    Unroutable,
    /// Over the per-source rate limit.
    RateLimited,
    /// Sending failed (socket error, connection gone, peer's queue full).
    SendFailed,
    /// Over `max_message_bytes` and not answerable with 413.
    TooLarge,
    /// A TCP connection closed at its buffer cap or the connection cap.
    TcpCap,
}

/// Every [`DropReason`], in counter order, with its metrics label.
pub const DROP_REASONS: [(DropReason, &str); 6] = [
    (DropReason::Unparseable, "unparseable"),
    (DropReason::Unroutable, "unroutable"),
    (DropReason::RateLimited, "rate_limited"),
    (DropReason::SendFailed, "send_failed"),
    (DropReason::TooLarge, "too_large"),
    (DropReason::TcpCap, "tcp_cap"),
];

/// A memory bound of `[sip]` that input can run into (SPEC §10): each counts what it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Inbound TCP connections over all ports: connections closed on accept.
    TcpConnections,
    /// Inbound TCP connections from one source IP: connections closed on accept.
    TcpConnectionsPerSource,
    /// Bytes buffered per connection waiting for a message end: connections closed.
    TcpBuffer,
    /// Bytes queued to send on one connection: messages dropped (the connection is closed).
    TcpWriteQueue,
    /// Calls in progress: initial INVITEs answered 503.
    Calls,
    /// Log entries of one call: entries not logged.
    LogEntriesPerCall,
    /// Log bytes of one call: entries not logged.
    LogBytesPerCall,
    /// Messages waiting for call tracking: observations dropped.
    Handoff,
    /// Bytes waiting for call tracking: observations dropped.
    HandoffBytes,
}

/// Every [`Bound`], in counter order, labelled with its configuration key.
pub const BOUNDS: [(Bound, &str); 9] = [
    (Bound::TcpConnections, "sip.tcp_max_connections"),
    (
        Bound::TcpConnectionsPerSource,
        "sip.tcp_max_connections_per_source",
    ),
    (Bound::TcpBuffer, "sip.tcp_max_buffer_bytes"),
    (Bound::TcpWriteQueue, "sip.tcp_max_write_queue_bytes"),
    (Bound::Calls, "sip.max_calls"),
    (Bound::LogEntriesPerCall, "sip.max_log_entries_per_call"),
    (Bound::LogBytesPerCall, "sip.max_log_bytes_per_call"),
    (Bound::Handoff, "sip.handoff_queue"),
    (Bound::HandoffBytes, "sip.handoff_queue_bytes"),
];

/// Slots of [`CallGauge`]'s memory of new calls let through: at 100 new calls a second, one
/// is overwritten within a second with a chance of about 1 %.
const ADMITTED_SLOTS: usize = 8192;

/// The calls in progress as call tracking last counted them, and `sip.max_calls`: the relay
/// answers a new call 503 when they meet. Call tracking runs behind the relay by what waits
/// in the hand-off queue, so the cap is soft: INVITEs relayed meanwhile count only once
/// tracking has seen them (see [`crate::ProxyConfig::max_calls`]).
///
/// It also remembers the calls it let through lately (a hash of Call-ID and From tag per
/// slot), so that at the cap a retransmission of their INVITE, or the new INVITE after a
/// 401/407 challenge, still passes: a 503 to those would fail a call the Sipserver is
/// already setting up.
#[derive(Debug)]
pub struct CallGauge {
    /// Written by call tracking after every message it takes.
    active: AtomicUsize,
    /// The cap; `usize::MAX` until the proxy sets it.
    max: AtomicUsize,
    /// Hashes of new calls let through, each in the slot it selects (0 = empty).
    admitted: Box<[AtomicU64]>,
}

impl Default for CallGauge {
    fn default() -> Self {
        CallGauge {
            active: AtomicUsize::new(0),
            max: AtomicUsize::new(usize::MAX),
            admitted: (0..ADMITTED_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl CallGauge {
    /// Calls in progress, as last counted.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Call tracking's count.
    pub fn set_active(&self, calls: usize) {
        self.active.store(calls, Ordering::Relaxed);
    }

    /// Sets the cap.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Whether a new call would go over the cap.
    pub fn is_full(&self) -> bool {
        self.active() >= self.max.load(Ordering::Relaxed)
    }

    /// Whether the new call `(call_id, from_tag)` may start: under the cap, or one let
    /// through lately. A call let through is remembered.
    pub fn admit(&self, call_id: &[u8], from_tag: &[u8]) -> bool {
        let h = call_hash(call_id, from_tag);
        let Some(slot) = self.admitted.get(h as usize % ADMITTED_SLOTS) else {
            return true;
        };
        if !self.is_full() {
            slot.store(h, Ordering::Relaxed);
            return true;
        }
        slot.load(Ordering::Relaxed) == h
    }
}

/// A non-zero hash of a call's identity (0 marks an empty slot).
fn call_hash(call_id: &[u8], from_tag: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    call_id.hash(&mut h);
    from_tag.hash(&mut h);
    h.finish().max(1)
}

/// Counters of the relay, read by the metrics endpoint; all updates are relaxed atomics so
/// counting costs the relay nothing measurable.
#[derive(Debug)]
pub struct Metrics {
    /// Requests relayed or answered, by direction and method.
    requests: [[AtomicU64; METHODS.len()]; 2],
    /// Responses relayed or made, by direction, CSeq method and status.
    responses: Box<[[[AtomicU64; STATUSES]; METHODS.len()]; 2]>,
    /// Messages that could not be parsed (`sipedge_sip_parse_errors_total`).
    pub parse_errors: AtomicU64,
    /// Messages not forwarded, by [`DropReason`].
    drops: [AtomicU64; DROP_REASONS.len()],
    /// Observations lost because call tracking's queue was full.
    pub handoff_dropped: AtomicU64,
    /// TCP connections open now (inbound and outbound).
    pub tcp_connections: AtomicU64,
    /// What each [`Bound`] refused.
    refusals: [AtomicU64; BOUNDS.len()],
    /// Calls in progress against `sip.max_calls`; here because the relay and call tracking
    /// both hold these counters.
    pub calls: CallGauge,
}

/// One non-zero message counter, for export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageCount {
    /// Request method, or the CSeq method of a response.
    pub method: &'static str,
    /// Status code of a response; `None` for a request.
    pub status: Option<u16>,
    /// Which way it went.
    pub direction: Direction,
    /// How many so far.
    pub count: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            responses: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0)))
            })),
            parse_errors: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            handoff_dropped: AtomicU64::new(0),
            tcp_connections: AtomicU64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            calls: CallGauge::default(),
        }
    }
}

impl Metrics {
    /// Counts a request going `direction`.
    pub fn request(&self, direction: Direction, method: &[u8]) {
        if let Some(c) = self
            .requests
            .get(direction.index())
            .and_then(|d| d.get(method_index(method)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a response going `direction`; codes outside 100..=699 are not SIP and ignored.
    pub fn response(&self, direction: Direction, cseq_method: &[u8], status: u16) {
        if let Some(c) = self
            .responses
            .get(direction.index())
            .and_then(|d| d.get(method_index(cseq_method)))
            .and_then(|m| m.get(usize::from(status).wrapping_sub(100)))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a message not forwarded.
    pub fn dropped(&self, reason: DropReason) {
        if let Some(i) = DROP_REASONS.iter().position(|(r, _)| *r == reason)
            && let Some(c) = self.drops.get(i)
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `n` refusals by `bound`.
    pub fn refused(&self, bound: Bound, n: u64) {
        if let Some(i) = BOUNDS.iter().position(|(b, _)| *b == bound)
            && let Some(c) = self.refusals.get(i)
        {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Refusals so far by bound, labelled with the bound's configuration key.
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        BOUNDS
            .iter()
            .zip(&self.refusals)
            .map(|((_, key), c)| (*key, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Drops so far, with their labels.
    pub fn drops(&self) -> Vec<(&'static str, u64)> {
        DROP_REASONS
            .iter()
            .zip(&self.drops)
            .map(|((_, label), c)| (*label, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// Every non-zero message counter (`sipedge_sip_messages_total{method,status,direction}`).
    pub fn messages(&self) -> Vec<MessageCount> {
        let mut out = Vec::new();
        for direction in [Direction::ToUpstream, Direction::ToTerminal] {
            let d = direction.index();
            for (m, method) in METHODS.iter().enumerate() {
                let count = self
                    .requests
                    .get(d)
                    .and_then(|x| x.get(m))
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                if count > 0 {
                    out.push(MessageCount {
                        method,
                        status: None,
                        direction,
                        count,
                    });
                }
                let Some(statuses) = self.responses.get(d).and_then(|x| x.get(m)) else {
                    continue;
                };
                for (status, c) in (100u16..).zip(statuses.iter()) {
                    let count = c.load(Ordering::Relaxed);
                    if count > 0 {
                        out.push(MessageCount {
                            method,
                            status: Some(status),
                            direction,
                            count,
                        });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_whole_cut_from_shared_chunks_and_outlive_them() {
        let mut copies = Copies::default();
        // Sizes around the chunk's: empty, small, exactly a chunk, and an oversized one.
        let sizes = [0, 1, 700, 1500, COPIES_CHUNK, 10, COPIES_CHUNK + 1, 3];
        let kept: Vec<(Vec<u8>, Bytes)> = (0u8..)
            .zip(sizes.iter().cycle().take(200))
            .map(|(i, &n)| {
                let message = vec![i; n];
                let copy = copies.copy(&message);
                (message, copy)
            })
            .collect();
        for (message, copy) in &kept {
            assert_eq!(
                &copy[..],
                &message[..],
                "a later copy overwrote an earlier one"
            );
        }
        // Small messages go one after another into one allocation.
        let mut copies = Copies::default();
        let first = copies.copy(&[1; 100]);
        let second = copies.copy(&[2; 100]);
        assert_eq!(second.as_ptr(), first.as_ptr().wrapping_add(100));
        // Once every copy from a chunk is gone, the chunk is taken again from its start.
        let start = first.as_ptr();
        drop((first, second));
        let reused = (0..=COPIES_CHUNK / 100).any(|_| copies.copy(&[3; 100]).as_ptr() == start);
        assert!(reused, "a chunk no copy holds any more was not reused");
    }

    #[test]
    fn counters() {
        let m = Metrics::default();
        m.request(Direction::ToUpstream, b"INVITE");
        m.request(Direction::ToUpstream, b"INVITE");
        m.request(Direction::ToTerminal, b"invite");
        m.response(Direction::ToTerminal, b"INVITE", 180);
        m.response(Direction::ToTerminal, b"BYE", 699);
        m.response(Direction::ToTerminal, b"BYE", 700);
        m.response(Direction::ToTerminal, b"BYE", 99);
        m.dropped(DropReason::RateLimited);
        let got: Vec<_> = m
            .messages()
            .into_iter()
            .map(|c| (c.method, c.status, c.direction, c.count))
            .collect();
        assert_eq!(
            got,
            [
                ("INVITE", None, Direction::ToUpstream, 2),
                ("INVITE", Some(180), Direction::ToTerminal, 1),
                ("BYE", Some(699), Direction::ToTerminal, 1),
                ("OTHER", None, Direction::ToTerminal, 1),
            ]
        );
        assert!(m.drops().contains(&("rate_limited", 1)));
        m.refused(Bound::Calls, 1);
        m.refused(Bound::LogBytesPerCall, 3);
        let refusals = m.refusals();
        assert_eq!(refusals.len(), BOUNDS.len());
        assert!(refusals.contains(&("sip.max_calls", 1)));
        assert!(refusals.contains(&("sip.max_log_bytes_per_call", 3)));
        assert!(refusals.contains(&("sip.tcp_max_connections", 0)));
    }

    /// At the cap, only calls let through before pass again (their retransmissions, their
    /// retry after a challenge); under it, every call passes and is remembered.
    #[test]
    fn at_the_cap_only_calls_let_through_before_pass() {
        let g = CallGauge::default();
        g.set_max(2);
        let steps: [(usize, &[u8], &[u8], bool); 7] = [
            (0, b"a@x", b"1", true),
            (1, b"b@x", b"1", true),
            (2, b"c@x", b"1", false),
            (2, b"a@x", b"1", true),
            (2, b"b@x", b"1", true),
            (2, b"b@x", b"2", false),
            (1, b"c@x", b"1", true),
        ];
        for (i, (active, call_id, tag, expected)) in steps.into_iter().enumerate() {
            g.set_active(active);
            assert_eq!(g.admit(call_id, tag), expected, "step {i}");
        }
        g.set_active(2);
        assert!(
            g.admit(b"c@x", b"1"),
            "admitted under the cap, so remembered"
        );
    }

    #[test]
    fn the_call_gauge_is_full_at_its_cap() {
        let g = CallGauge::default();
        g.set_active(1_000_000);
        assert!(!g.is_full(), "no cap until the proxy sets one");
        for (active, max, full) in [(0, 1, false), (1, 1, true), (4, 5, false), (6, 5, true)] {
            g.set_max(max);
            g.set_active(active);
            assert_eq!(g.is_full(), full, "{active} calls, cap {max}");
        }
    }

    #[tokio::test]
    async fn handoff_never_waits_and_counts_drops() {
        let (tx, mut rx) = mpsc::channel(1);
        let h = Handoff::new(tx, 1000);
        let m = Metrics::default();
        let r = relayed(1);
        assert_eq!(h.room_for(1), Ok(()));
        h.send(r.clone(), &m);
        assert_eq!(h.room_for(1), Err(Bound::Handoff));
        h.send(r.clone(), &m);
        assert_eq!(m.handoff_dropped.load(Ordering::Relaxed), 1);
        assert!(rx.recv().await.is_some());
        drop(rx);
        h.send(r, &m);
        assert_eq!(m.handoff_dropped.load(Ordering::Relaxed), 2);
        assert!(m.refusals().contains(&("sip.handoff_queue", 2)));
    }

    fn relayed(len: usize) -> Relayed {
        Relayed {
            at: SystemTime::now(),
            direction: Direction::ToUpstream,
            origin: Origin::Forwarded,
            transport: Transport::Udp,
            src: "192.0.2.1:5060".parse().unwrap(),
            dst: "192.0.2.2:5060".parse().unwrap(),
            source: Source::Proxy,
            bytes: Bytes::from(vec![b'x'; len]),
            summary: None,
            charge: Charge::default(),
        }
    }

    /// The queue holds at most its byte budget; what call tracking takes and drops gives
    /// its bytes back.
    #[tokio::test]
    async fn the_handoff_is_bounded_in_bytes() {
        let (tx, mut rx) = mpsc::channel(100);
        let h = Handoff::new(tx, 1000);
        let m = Metrics::default();
        let sizes = [400, 400, 300, 200];
        for len in sizes {
            h.send(relayed(len), &m);
        }
        assert_eq!(rx.len(), 3, "400 + 400 + 200 fit, 300 did not");
        assert!(m.refusals().contains(&("sip.handoff_queue_bytes", 1)));
        assert_eq!(h.room_for(1), Err(Bound::HandoffBytes));
        let taken = rx.recv().await.unwrap();
        assert_eq!(taken.bytes.len(), 400);
        let copy = taken.clone();
        drop(taken);
        assert_eq!(
            h.room_for(400),
            Ok(()),
            "the message taken gave its bytes back"
        );
        assert_eq!(h.room_for(401), Err(Bound::HandoffBytes));
        drop(copy);
        assert_eq!(
            h.room_for(401),
            Err(Bound::HandoffBytes),
            "a copy holds nothing"
        );
        drop(rx);
        assert_eq!(
            h.room_for(1000),
            Ok(()),
            "a closed queue's messages are freed"
        );
    }
}
