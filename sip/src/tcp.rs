//! The TCP side: accept loops, one reader and one writer task per connection, the table of
//! open connections (by id and by remote address, so responses and flow-token requests find
//! a terminal's connection), and the pool of connections to the upstream (one per port).
//!
//! A message is written straight to the socket by the task that relays it when nothing is
//! queued before it; only what the socket does not take at once goes to the connection's
//! writer task. Handing every message to the writer woke a second task per message, which
//! cost 10-15 % of sipedge's CPU per call over TCP (BENCHMARKS.md, issue 4).
//!
//! Memory per connection is bounded both ways: `sip.tcp_max_buffer_bytes` of unframed input,
//! `sip.tcp_max_write_queue_bytes` of output the peer has not taken. A peer that lets more
//! than that pile up is closed at once (the message that did not fit is dropped, and nothing
//! queued is flushed), never waited for. `sip.tcp_max_connections_per_source` caps what one
//! address may open.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, mpsc, oneshot};

use crate::flow::{Flow, Transport};
use crate::frame::{Frame, Framer};
use crate::observe::{Bound, Copies, DropReason, Origin};
use crate::proxy::Shared;
use crate::relay::Decision;
use crate::relay::{Arrival, Side, StreamProblem};

/// Messages queued for one connection's writer, besides the byte cap: a flood of tiny
/// messages (keep-alive answers) costs more than their bytes.
const WRITE_QUEUE: usize = 1024;

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long a closing connection may take to flush its queued messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// The way to write to one open connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    /// Id named by flow tokens.
    pub(crate) id: u64,
    /// The peer's address: checked against a token's address, and the key for Via routing.
    pub(crate) remote: SocketAddr,
    /// The connection's write side, shared by every task that sends on it.
    out: Arc<Outbox>,
}

impl ConnHandle {
    fn is_open(&self) -> bool {
        !self.out.tx.is_closed() && self.out.lock().writing != Writing::Closed
    }
}

/// One connection's write side: the socket, the writer task's queue, and who writes now.
#[derive(Debug)]
struct Outbox {
    /// Written directly by senders while the queue is idle, else by the writer task.
    wr: OwnedWriteHalf,
    /// Queue to the connection's writer task.
    tx: mpsc::Sender<Bytes>,
    /// Taken by every sender and by the writer task between two messages, so that messages
    /// never interleave or overtake one another.
    state: Mutex<OutState>,
    /// `sip.tcp_max_write_queue_bytes`.
    max_queued: usize,
    /// Tells the connection's reader that the peer let the queue overflow: the connection
    /// ends.
    overflow: Notify,
}

/// What an [`Outbox`]'s lock guards.
#[derive(Debug)]
struct OutState {
    /// Who writes now.
    writing: Writing,
    /// Bytes in the writer's queue.
    queued: usize,
    /// Whether the connection is closing because its queue overflowed (nothing is flushed).
    overflowed: bool,
}

impl OutState {
    fn new() -> Mutex<OutState> {
        Mutex::new(OutState {
            writing: Writing::Idle,
            queued: 0,
            overflowed: false,
        })
    }
}

/// Why [`Outbox::send`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The connection is closing or broken.
    Closed,
    /// The message did not fit in the queue: the connection is closing now because of it.
    Overflow,
}

/// Who may write to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writing {
    /// Nothing queued: a sender writes itself.
    Idle,
    /// The writer task has bytes to write: senders queue behind them.
    Queued,
    /// The connection is closing: nothing new is taken.
    Closed,
}

impl Outbox {
    fn new(wr: OwnedWriteHalf, tx: mpsc::Sender<Bytes>, max_queued: usize) -> Outbox {
        Outbox {
            wr,
            tx,
            state: OutState::new(),
            max_queued,
            overflow: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes or queues `bytes`; refused when the connection is closing or broken, or when
    /// they do not fit in the queue (which closes the connection).
    fn send(&self, bytes: &[u8]) -> Result<(), Refused> {
        let mut state = self.lock();
        let rest = match state.writing {
            Writing::Closed => return Err(Refused::Closed),
            Writing::Queued => bytes,
            Writing::Idle => {
                let written = match self.wr.try_write(bytes) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(_) => return Err(Refused::Closed),
                };
                match bytes.get(written..).filter(|rest| !rest.is_empty()) {
                    Some(rest) => rest,
                    None => return Ok(()),
                }
            }
        };
        let fits = state.queued.saturating_add(rest.len()) <= self.max_queued;
        if fits && self.tx.try_send(Bytes::copy_from_slice(rest)).is_ok() {
            state.queued += rest.len();
            state.writing = Writing::Queued;
            return Ok(());
        }
        if self.tx.is_closed() {
            return Err(Refused::Closed);
        }
        state.writing = Writing::Closed;
        state.overflowed = true;
        self.overflow.notify_one();
        Err(Refused::Overflow)
    }

    /// Writes all of `bytes` once the socket takes them.
    async fn write_all(&self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            self.wr.writable().await?;
            match self.wr.try_write(bytes) {
                Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Open connections, and the upstream pool.
#[derive(Debug)]
pub(crate) struct Conns {
    /// Both indexes under one lock, so they never disagree.
    table: Mutex<Table>,
    /// One connection to the upstream per sipedge port, reused by every terminal on that
    /// port; the async lock makes concurrent senders wait for one connect.
    pool: Vec<tokio::sync::Mutex<Option<ConnHandle>>>,
    /// Inbound connections per source IP.
    sources: Arc<SourceCounts>,
}

/// Inbound connections open per source IP, for `sip.tcp_max_connections_per_source`; a
/// source leaves the map with its last connection, so it holds at most one entry per
/// connection.
#[derive(Debug, Default)]
struct SourceCounts(Mutex<HashMap<IpAddr, usize>>);

/// One inbound connection's place in its source's count, given back when the connection
/// ends.
#[derive(Debug)]
struct SourceSlot {
    counts: Arc<SourceCounts>,
    ip: IpAddr,
}

impl SourceCounts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for one more connection from `ip`, unless it has `max` already.
    fn claim(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut counts = self.lock();
        let open = counts.entry(ip).or_insert(0);
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(SourceSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(open) = counts.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// What holds an inbound connection's places under the connection caps.
#[derive(Debug)]
struct Admission {
    _permit: OwnedSemaphorePermit,
    _source: Option<SourceSlot>,
}

#[derive(Debug, Default)]
struct Table {
    /// Connections by id, as flow tokens name them.
    by_id: HashMap<u64, ConnHandle>,
    /// Latest connection per remote address.
    by_addr: HashMap<SocketAddr, u64>,
}

impl Conns {
    pub(crate) fn new(ports: usize) -> Conns {
        Conns {
            table: Mutex::new(Table::default()),
            pool: (0..ports).map(|_| tokio::sync::Mutex::new(None)).collect(),
            sources: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere (each update is one insert or
        // remove), so a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection `id` if it still goes to `remote`, else the latest one to `remote`.
    pub(crate) fn find(&self, id: u64, remote: SocketAddr) -> Option<ConnHandle> {
        let t = self.lock();
        let by_id = t
            .by_id
            .get(&id)
            .filter(|c| c.remote == remote && c.is_open());
        by_id
            .or_else(|| {
                t.by_addr
                    .get(&remote)
                    .and_then(|id| t.by_id.get(id))
                    .filter(|c| c.is_open())
            })
            .cloned()
    }

    fn insert(&self, handle: ConnHandle) {
        let mut t = self.lock();
        t.by_addr.insert(handle.remote, handle.id);
        t.by_id.insert(handle.id, handle);
    }

    fn remove(&self, id: u64, remote: SocketAddr) {
        let mut t = self.lock();
        t.by_id.remove(&id);
        if t.by_addr.get(&remote) == Some(&id) {
            t.by_addr.remove(&remote);
        }
    }
}

impl Shared {
    /// Answers a stream that cannot go on (413 / 400 when possible) before it is closed.
    fn refuse_stream(
        &self,
        arrival: &Arrival,
        buffered: &[u8],
        problem: StreamProblem,
        (out, copies): (&mut Vec<u8>, &mut Copies),
    ) {
        match self.relay.refuse_stream(arrival, buffered, problem, out) {
            Decision::Reply { direction, .. } => {
                // Handed to call tracking first, as in `process`.
                let local = (&out[..], None);
                self.observe(
                    Origin::Local,
                    direction,
                    arrival,
                    arrival.src,
                    local,
                    copies,
                );
                let sent = self
                    .conns
                    .find(arrival.conn, arrival.src)
                    .is_some_and(|c| self.send_tcp(&c, out));
                if !sent {
                    self.metrics.dropped(DropReason::SendFailed);
                }
            }
            Decision::Drop(reason) => self.metrics.dropped(reason),
            Decision::Forward { .. } => {}
        }
    }

    /// Queues `out` on a connection; false when it is closing, or when its queue is full
    /// (then it closes: see the module's note).
    pub(crate) fn send_tcp(&self, conn: &ConnHandle, out: &[u8]) -> bool {
        match conn.out.send(out) {
            Ok(()) => true,
            Err(Refused::Closed) => false,
            Err(Refused::Overflow) => {
                self.metrics.refused(Bound::TcpWriteQueue, 1);
                tracing::warn!(
                    peer = %conn.remote,
                    cap = self.cfg.tcp_max_write_queue_bytes,
                    "TCP peer does not read: sip.tcp_max_write_queue_bytes reached, connection closed"
                );
                false
            }
        }
    }

    /// Places for an inbound connection from `remote` under `sip.tcp_max_connections` and
    /// (unless it is the upstream's) `sip.tcp_max_connections_per_source`; `None` counts
    /// the refusal.
    fn admit_connection(&self, remote: SocketAddr, side: Side) -> Option<Admission> {
        let Ok(permit) = Arc::clone(&self.conn_permits).try_acquire_owned() else {
            self.metrics.dropped(DropReason::TcpCap);
            self.metrics.refused(Bound::TcpConnections, 1);
            return None;
        };
        let source = match side {
            Side::Upstream => None,
            _ => {
                let max = self.cfg.tcp_max_connections_per_source;
                let Some(slot) = self.conns.sources.claim(remote.ip(), max) else {
                    self.metrics.dropped(DropReason::TcpCap);
                    self.metrics.refused(Bound::TcpConnectionsPerSource, 1);
                    return None;
                };
                Some(slot)
            }
        };
        Some(Admission {
            _permit: permit,
            _source: source,
        })
    }

    /// The pooled connection to the upstream for sipedge port `port`, connecting when there
    /// is none; `None` when the upstream cannot be reached within the connect timeout.
    pub(crate) async fn upstream_conn(self: &Arc<Self>, port: u16) -> Option<ConnHandle> {
        let slot = self
            .cfg
            .ports
            .offset(port)
            .and_then(|i| self.conns.pool.get(i))?;
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| c.is_open()) {
            return Some(conn.clone());
        }
        let dst = self.relay.upstream_addr(port);
        let stream = match tokio::time::timeout(
            self.cfg.upstream_connect_timeout,
            TcpStream::connect(dst),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(upstream = %dst, error = %e, "cannot connect to the upstream over TCP");
                return None;
            }
            Err(_) => {
                tracing::warn!(upstream = %dst, "TCP connect to the upstream timed out");
                return None;
            }
        };
        let conn = start(Arc::clone(self), stream, dst, port, Side::Upstream, None);
        *slot = Some(conn.clone());
        Some(conn)
    }
}

/// Accepts connections on sipedge port `port` until the task is aborted.
pub(crate) async fn accept(shared: Arc<Shared>, port: u16, listener: TcpListener) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(port, error = %e, "TCP accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let side = shared.tcp_side(remote);
        let Some(admission) = shared.admit_connection(remote, side) else {
            drop(stream);
            continue;
        };
        start(
            Arc::clone(&shared),
            stream,
            remote,
            port,
            side,
            Some(admission),
        );
    }
}

/// Opens a connection to a terminal whose connection is gone (the address its flow token or
/// Via names) and sends `first` on it, in the background: a terminal behind NAT may never
/// answer, and nothing else should wait for that.
pub(crate) fn connect_and_send(shared: Arc<Shared>, flow: Flow, first: Bytes) {
    tokio::spawn(async move {
        let connect = TcpStream::connect(flow.remote);
        let Ok(Ok(stream)) =
            tokio::time::timeout(shared.cfg.upstream_connect_timeout, connect).await
        else {
            shared.metrics.dropped(DropReason::SendFailed);
            return;
        };
        let Some(admission) = shared.admit_connection(flow.remote, Side::Terminal) else {
            return;
        };
        let conn = start(
            Arc::clone(&shared),
            stream,
            flow.remote,
            flow.local_port,
            Side::Terminal,
            Some(admission),
        );
        if !shared.send_tcp(&conn, &first) {
            shared.metrics.dropped(DropReason::SendFailed);
        }
    });
}

/// Registers a connection and starts its reader (which owns the writer and unregisters the
/// connection when it ends).
fn start(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    port: u16,
    side: Side,
    admission: Option<Admission>,
) -> ConnHandle {
    let _ = stream.set_nodelay(true);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (rd, wr) = stream.into_split();
    let out = Arc::new(Outbox::new(wr, tx, shared.cfg.tcp_max_write_queue_bytes));
    let handle = ConnHandle {
        id,
        remote,
        out: Arc::clone(&out),
    };
    shared.conns.insert(handle.clone());
    shared
        .metrics
        .tcp_connections
        .fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let (stop_tx, stop_rx) = oneshot::channel();
        let mut writer = tokio::spawn(write_loop(Arc::clone(&out), rx, stop_rx));
        let arrival = Arrival {
            transport: Transport::Tcp,
            local_port: port,
            src: remote,
            conn: id,
            side,
        };
        read_loop(&shared, rd, arrival, &out).await;
        // Let the writer flush what is queued (a final 413), but not wait on a stuck peer.
        let _ = stop_tx.send(());
        if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        shared.conns.remove(id, remote);
        shared
            .metrics
            .tcp_connections
            .fetch_sub(1, Ordering::Relaxed);
        drop(admission);
    });
    handle
}

async fn write_loop(
    out: Arc<Outbox>,
    mut rx: mpsc::Receiver<Bytes>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let bytes = tokio::select! {
            b = rx.recv() => b,
            _ = &mut stop => {
                let overflowed = {
                    let mut state = out.lock();
                    state.writing = Writing::Closed;
                    state.overflowed
                };
                rx.close();
                // No new messages; what is already queued still goes out, unless the peer
                // stopped reading it.
                while !overflowed && let Some(bytes) = rx.recv().await {
                    if out.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                // Other tasks may still hold the write half: shut the socket down here
                // rather than when the last of them lets go.
                let how = if overflowed {
                    std::net::Shutdown::Both
                } else {
                    std::net::Shutdown::Write
                };
                let _ = socket2::SockRef::from(out.wr.as_ref()).shutdown(how);
                return;
            }
        };
        let Some(bytes) = bytes else {
            return;
        };
        if out.write_all(&bytes).await.is_err() {
            out.lock().writing = Writing::Closed;
            return;
        }
        let mut state = out.lock();
        state.queued = state.queued.saturating_sub(bytes.len());
        if state.writing == Writing::Queued && rx.is_empty() {
            state.writing = Writing::Idle;
        }
    }
}

/// Reads, frames and relays messages until the peer closes, the connection idles out, a cap
/// is hit, the stream cannot be framed, or sipedge shuts down.
async fn read_loop(
    shared: &Arc<Shared>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    arrival: Arrival,
    out_box: &Outbox,
) {
    let cap = shared.cfg.tcp_max_buffer_bytes;
    let idle = shared.cfg.tcp_idle_timeout;
    let mut framer = Framer::new(shared.cfg.max_message_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(4096);
    let mut copies = Copies::default();
    let mut closing = shared.closing.clone();
    loop {
        loop {
            match framer.frame(&buf) {
                Frame::Message { len } => {
                    let Some(data) = buf.get(..len) else {
                        return;
                    };
                    if shared.admit(arrival.side, arrival.src) {
                        shared.process(arrival, data, &mut out, &mut copies).await;
                    }
                    buf.advance(len);
                }
                Frame::Ping { len } => {
                    if let Some(conn) = shared.conns.find(arrival.conn, arrival.src) {
                        shared.send_tcp(&conn, b"\r\n");
                    }
                    buf.advance(len);
                }
                Frame::Pong { len } => buf.advance(len),
                Frame::Incomplete => break,
                Frame::TooLarge => {
                    let scratch = (&mut out, &mut copies);
                    shared.refuse_stream(&arrival, &buf, StreamProblem::TooLarge, scratch);
                    return;
                }
                Frame::Invalid(e) => {
                    shared.metrics.parse_errors.fetch_add(1, Ordering::Relaxed);
                    let scratch = (&mut out, &mut copies);
                    shared.refuse_stream(&arrival, &buf, StreamProblem::Unframable(e), scratch);
                    return;
                }
            }
        }
        if buf.len() >= cap {
            shared.metrics.dropped(DropReason::TcpCap);
            shared.metrics.refused(Bound::TcpBuffer, 1);
            return;
        }
        buf.reserve(READ_CHUNK.min(cap - buf.len()));
        let read = tokio::select! {
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => r,
            _ = closing.changed() => return,
            () = out_box.overflow.notified() => return,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A connected pair on loopback, the first side's write half in an [`Outbox`] with its
    /// writer task running.
    async fn outbox(
        max_queued: usize,
    ) -> (
        Arc<Outbox>,
        TcpStream,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (peer, _) = accepted.unwrap();
        let client = client.unwrap();
        // A small send buffer, so that a few messages fill the socket whatever the host's
        // tuning.
        socket2::SockRef::from(&client)
            .set_send_buffer_size(4096)
            .unwrap();
        let (_rd, wr) = client.into_split();
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let out = Arc::new(Outbox::new(wr, tx, max_queued));
        let (stop_tx, stop_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(Arc::clone(&out), rx, stop_rx));
        (out, peer, stop_tx, writer)
    }

    /// A peer that reads nothing for a while fills the socket: later messages queue behind
    /// the unwritten rest, and the peer still receives every byte once, in order.
    #[tokio::test]
    async fn direct_writes_and_queued_rests_keep_their_order() {
        let (out, mut peer, _stop, writer) = outbox(usize::MAX).await;
        let messages: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let mut m = format!("message {i:04} ").into_bytes();
                m.resize(16 * 1024, b'a' + (i % 26) as u8);
                m
            })
            .collect();
        let mut queued_at_some_point = false;
        for m in &messages {
            assert_eq!(out.send(m), Ok(()));
            queued_at_some_point |= out.lock().writing == Writing::Queued;
        }
        assert!(queued_at_some_point, "the messages never filled the socket");

        let expected: Vec<u8> = messages.concat();
        let mut received = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(10), peer.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert!(received == expected, "bytes reordered or lost");
        writer.abort();
    }

    /// After the stop, what was sent before goes out, nothing new is taken, and the peer
    /// sees the end of the stream.
    #[tokio::test]
    async fn a_closed_outbox_flushes_then_takes_nothing() {
        let (out, mut peer, stop, writer) = outbox(usize::MAX).await;
        assert_eq!(out.send(b"before"), Ok(()));
        stop.send(()).unwrap();
        writer.await.unwrap();
        assert_eq!(out.send(b"after"), Err(Refused::Closed));
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            received, b"before",
            "the socket was not shut down after the flush"
        );
    }

    /// A peer that reads nothing: the queue grows to its cap and no further; the message
    /// that does not fit closes the connection at once (nothing is flushed to a peer that
    /// does not read), and later ones are refused.
    #[tokio::test]
    async fn a_peer_that_does_not_read_is_closed_at_the_queue_cap() {
        const CAP: usize = 256 * 1024;
        let (out, mut peer, stop, writer) = outbox(CAP).await;
        let message = vec![b'x'; 10_000];
        let mut sent = 0usize;
        let refused = loop {
            match out.send(&message) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(out.lock().queued <= CAP, "queued past the cap");
            assert!(sent < 10_000, "the queue never filled");
        };
        assert_eq!(refused, Refused::Overflow);
        assert!(
            out.lock().queued > CAP - message.len(),
            "refused before the queue was full: {} bytes queued",
            out.lock().queued
        );
        assert_eq!(out.send(b"later"), Err(Refused::Closed));
        tokio::time::timeout(Duration::from_secs(5), out.overflow.notified())
            .await
            .expect("the reader is told");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer)
            .await
            .expect("the writer stops without flushing to a peer that does not read")
            .unwrap();
        // What reached the peer is a prefix of what was sent, then the end of the stream.
        let mut received = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), peer.read_to_end(&mut received))
            .await
            .expect("the peer sees the connection end");
        assert!(received.len() <= sent * message.len());
        assert!(received.iter().all(|&b| b == b'x'));
    }

    /// Each source has its own count; a slot given back makes room, and a source with no
    /// connection left leaves the table.
    #[test]
    fn sources_are_counted_apart() {
        let counts = Arc::new(SourceCounts::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = counts.claim(a, 2).unwrap();
        let second = counts.claim(a, 2).unwrap();
        assert!(counts.claim(a, 2).is_none(), "a third from the same source");
        let other = counts.claim(b, 2).unwrap();
        drop(first);
        let again = counts.claim(a, 2).unwrap();
        assert!(counts.claim(a, 2).is_none());
        drop((second, again, other));
        assert!(counts.lock().is_empty(), "{:?}", counts.lock());
    }
}
