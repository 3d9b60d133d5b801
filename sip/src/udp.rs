//! The UDP side: one task per port, one datagram = one message.

use std::sync::Arc;

use tokio::net::UdpSocket;

use crate::flow::Transport;
use crate::observe::Copies;
use crate::proxy::Shared;
use crate::relay::Arrival;
use crate::stun;

/// Receive buffer: the largest UDP payload plus one byte, so an oversized datagram is seen as
/// such rather than silently cut.
const RECV_BUFFER: usize = 65_536;

/// Receives and relays datagrams on `sock` (sipedge port `port`) until the task is aborted.
pub(crate) async fn serve(shared: Arc<Shared>, port: u16, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::with_capacity(4096);
    let mut copies = Copies::default();
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
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
                shared.send_udp(port, src, &out).await;
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
        shared.process(arrival, data, &mut out, &mut copies).await;
    }
}
