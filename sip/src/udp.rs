//! The UDP side: one thread per port, blocked in `recvfrom`, one datagram = one message.
//!
//! Why a thread and not a tokio task: at a call centre's rates a datagram arrives every
//! hundred microseconds or so, so nearly every one finds the relay idle. A task then pays the
//! runtime's wake-up for each (`epoll_wait` returning, the scheduler, the `recvfrom` that
//! finds the socket empty again before parking); a thread blocked in `recvfrom` pays one
//! system call in and one out, as Kamailio's receivers do. Sends from other tasks (a message
//! that came over TCP for a UDP flow) go out on the same socket without waiting.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::net::{RecvFlags, SendFlags};

use crate::flow::Transport;
use crate::observe::Copies;
use crate::proxy::Shared;
use crate::relay::Arrival;
use crate::stun;

/// Receive buffer: the largest UDP payload plus one byte, so an oversized datagram is seen as
/// such rather than silently cut.
const RECV_BUFFER: usize = 65_536;

/// Receives and relays datagrams on `sock` (sipedge port `port`, in blocking mode) until the
/// proxy closes, which [`wake`] makes it notice. `rt` runs what a message's relaying may await
/// (a TCP connection to the upstream), on this thread.
pub(crate) fn serve(
    shared: Arc<Shared>,
    port: u16,
    sock: Arc<UdpSocket>,
    rt: tokio::runtime::Handle,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(4096);
    let mut copies = Copies::default();
    loop {
        let received = receive(&sock, &mut buf);
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let (n, src) = match received {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            // ICMP errors from earlier sends surface here on some systems; they concern
            // another datagram, so keep serving.
            Err(e) => {
                tracing::debug!(port, error = %e, "UDP receive error");
                continue;
            }
        };
        let Some(data) = buf.get(..n) else {
            continue;
        };
        // Keep-alives (RFC 5626 §4.4.1 CRLF, or empty datagrams) need no answer over UDP.
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            continue;
        }
        let side = shared.udp_side(src);
        if !shared.admit(side, src) {
            continue;
        }
        if stun::is_stun(data) {
            if stun::answer(data, src, &mut out) {
                shared.send_udp(port, src, &out, Wait::Yes);
            }
            continue;
        }
        let arrival = Arrival {
            transport: Transport::Udp,
            local_port: port,
            src,
            conn: 0,
            side,
        };
        // Pinned here so that `block_on` moves a pointer, not the future (over a kilobyte,
        // copied twice per message when passed by value).
        let relaying = std::pin::pin!(shared.process(arrival, data, &mut out, &mut copies));
        rt.block_on(relaying);
    }
}

/// One datagram into `buf`: its length and sender, or `None` when the call returned without a
/// sender address, as a socket shut down by [`wake`] does (std's `recv_from` panics on that).
fn receive(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Option<(usize, SocketAddr)>> {
    let (n, _, from) = rustix::net::recvfrom(sock, buf, RecvFlags::empty())?;
    Ok(from
        .and_then(|a| SocketAddr::try_from(a).ok())
        .map(|src| (n, src)))
}

/// Wakes a thread blocked in [`serve`] on `sock` once the proxy is stopping: Linux ends a
/// blocked `recvfrom` when the socket is shut down for reading, connected or not (the call
/// itself reports `ENOTCONN` for an unconnected socket, which is expected here).
pub(crate) fn wake(sock: &UdpSocket) {
    let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Read);
}

/// Whether a send may wait for room in the socket's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// On a UDP relay thread, whose own socket it is: waiting is what a full buffer asks for.
    Yes,
    /// On a tokio task: a full buffer drops the datagram (counted by the caller), as a
    /// congested network would, and SIP's retransmissions recover it.
    No,
}

impl Wait {
    /// For relaying a message that arrived over `transport`: one that came over UDP is relayed
    /// on its port's thread, one that came over TCP on a task.
    pub(crate) fn relaying(transport: Transport) -> Wait {
        match transport {
            Transport::Udp => Wait::Yes,
            Transport::Tcp => Wait::No,
        }
    }
}

/// Sends one datagram; `false` when it was not sent.
pub(crate) fn send(sock: &UdpSocket, dst: SocketAddr, out: &[u8], wait: Wait) -> bool {
    match wait {
        Wait::Yes => sock.send_to(out, dst).is_ok(),
        Wait::No => rustix::net::sendto(sock, out, SendFlags::DONTWAIT, &dst).is_ok(),
    }
}
