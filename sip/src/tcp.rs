//! The TCP side: accept loops, one reader and one writer task per connection, the table of
//! open connections (by id and by remote address, so responses and flow-token requests find
//! a terminal's connection), and the pool of connections to the upstream (one per port).
//!
//! A message is written straight to the socket by the task that relays it when nothing is
//! queued before it; only what the socket does not take at once goes to the connection's
//! writer task. Handing every message to the writer woke a second task per message, which
//! cost 10-15 % of sipedge's CPU per call over TCP (BENCHMARKS.md, issue 4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::flow::{Flow, Transport};
use crate::frame::{Frame, Framer};
use crate::observe::{DropReason, Origin};
use crate::proxy::Shared;
use crate::relay::Decision;
use crate::relay::{Arrival, Side, StreamProblem};

/// Messages queued for one connection's writer; a peer that stops reading loses messages
/// beyond this instead of growing memory.
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
        !self.out.tx.is_closed()
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
    state: Mutex<Writing>,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, Writing> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes or queues `bytes`; false when the connection is closing, broken or its queue
    /// is full.
    fn send(&self, bytes: &[u8]) -> bool {
        let mut state = self.lock();
        match *state {
            Writing::Closed => false,
            Writing::Queued => self.tx.try_send(Bytes::copy_from_slice(bytes)).is_ok(),
            Writing::Idle => {
                let written = match self.wr.try_write(bytes) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                    Err(_) => return false,
                };
                let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) else {
                    return true;
                };
                // The queue is empty while idle, so this fails only once the writer is gone.
                if self.tx.try_send(Bytes::copy_from_slice(rest)).is_err() {
                    return false;
                }
                *state = Writing::Queued;
                true
            }
        }
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
        out: &mut Vec<u8>,
    ) {
        match self.relay.refuse_stream(arrival, buffered, problem, out) {
            Decision::Reply { direction, .. } => {
                // Handed to call tracking first, as in `process`.
                self.observe(Origin::Local, direction, arrival, arrival.src, out);
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

    /// Queues `out` on a connection; false when its queue is full or it is closing.
    pub(crate) fn send_tcp(&self, conn: &ConnHandle, out: &[u8]) -> bool {
        conn.out.send(out)
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
        let Ok(permit) = Arc::clone(&shared.conn_permits).try_acquire_owned() else {
            shared.metrics.dropped(DropReason::TcpCap);
            drop(stream);
            continue;
        };
        let side = shared.tcp_side(remote);
        start(
            Arc::clone(&shared),
            stream,
            remote,
            port,
            side,
            Some(permit),
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
        let Ok(permit) = Arc::clone(&shared.conn_permits).try_acquire_owned() else {
            shared.metrics.dropped(DropReason::TcpCap);
            return;
        };
        let conn = start(
            Arc::clone(&shared),
            stream,
            flow.remote,
            flow.local_port,
            Side::Terminal,
            Some(permit),
        );
        if !conn.out.send(&first) {
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
    permit: Option<OwnedSemaphorePermit>,
) -> ConnHandle {
    let _ = stream.set_nodelay(true);
    let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (rd, wr) = stream.into_split();
    let out = Arc::new(Outbox {
        wr,
        tx,
        state: Mutex::new(Writing::Idle),
    });
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
        let mut writer = tokio::spawn(write_loop(out, rx, stop_rx));
        let arrival = Arrival {
            transport: Transport::Tcp,
            local_port: port,
            src: remote,
            conn: id,
            side,
        };
        read_loop(&shared, rd, arrival).await;
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
        drop(permit);
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
                // No new messages; what is already queued still goes out.
                *out.lock() = Writing::Closed;
                rx.close();
                while let Some(bytes) = rx.recv().await {
                    if out.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                // Other tasks may still hold the write half: shut the socket down here
                // rather than when the last of them lets go.
                let _ = socket2::SockRef::from(out.wr.as_ref()).shutdown(std::net::Shutdown::Write);
                return;
            }
        };
        let Some(bytes) = bytes else {
            return;
        };
        if out.write_all(&bytes).await.is_err() {
            *out.lock() = Writing::Closed;
            return;
        }
        let mut state = out.lock();
        if *state == Writing::Queued && rx.is_empty() {
            *state = Writing::Idle;
        }
    }
}

/// Reads, frames and relays messages until the peer closes, the connection idles out, a cap
/// is hit, the stream cannot be framed, or sipedge shuts down.
async fn read_loop(shared: &Arc<Shared>, mut rd: tokio::net::tcp::OwnedReadHalf, arrival: Arrival) {
    let cap = shared.cfg.tcp_max_buffer_bytes;
    let idle = shared.cfg.tcp_idle_timeout;
    let mut framer = Framer::new(shared.cfg.max_message_bytes);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(4096);
    let mut closing = shared.closing.clone();
    loop {
        loop {
            match framer.frame(&buf) {
                Frame::Message { len } => {
                    let Some(data) = buf.get(..len) else {
                        return;
                    };
                    if shared.admit(arrival.side, arrival.src) {
                        shared.process(arrival, data, &mut out).await;
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
                    shared.refuse_stream(&arrival, &buf, StreamProblem::TooLarge, &mut out);
                    return;
                }
                Frame::Invalid(e) => {
                    shared.metrics.parse_errors.fetch_add(1, Ordering::Relaxed);
                    shared.refuse_stream(&arrival, &buf, StreamProblem::Unframable(e), &mut out);
                    return;
                }
            }
        }
        if buf.len() >= cap {
            shared.metrics.dropped(DropReason::TcpCap);
            return;
        }
        buf.reserve(READ_CHUNK.min(cap - buf.len()));
        let read = tokio::select! {
            r = tokio::time::timeout(idle, rd.read_buf(&mut buf)) => r,
            _ = closing.changed() => return,
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
    async fn outbox() -> (
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
        let out = Arc::new(Outbox {
            wr,
            tx,
            state: Mutex::new(Writing::Idle),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(Arc::clone(&out), rx, stop_rx));
        (out, peer, stop_tx, writer)
    }

    /// A peer that reads nothing for a while fills the socket: later messages queue behind
    /// the unwritten rest, and the peer still receives every byte once, in order.
    #[tokio::test]
    async fn direct_writes_and_queued_rests_keep_their_order() {
        let (out, mut peer, _stop, writer) = outbox().await;
        let messages: Vec<Vec<u8>> = (0..200u32)
            .map(|i| {
                let mut m = format!("message {i:04} ").into_bytes();
                m.resize(16 * 1024, b'a' + (i % 26) as u8);
                m
            })
            .collect();
        let mut queued_at_some_point = false;
        for m in &messages {
            assert!(out.send(m));
            queued_at_some_point |= *out.lock() == Writing::Queued;
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
        let (out, mut peer, stop, writer) = outbox().await;
        assert!(out.send(b"before"));
        stop.send(()).unwrap();
        writer.await.unwrap();
        assert!(!out.send(b"after"));
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
}
