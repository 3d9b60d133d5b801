//! The running proxy: binds every port of the range, runs one thread per UDP socket and a task
//! per TCP listener, and carries out the [`Decision`]s of the relay core.
//!
//! The relay's parts:
//! - [`crate::config`]: the `[sip]` table.
//! - [`crate::relay`]: the stateless proxy rules (RFC 3261 §16.11), pure: one message in, a
//!   [`Decision`] and the bytes to send out. Tested with tables of messages.
//! - [`crate::flow`]: flow tokens (RFC 5626 style, HMAC-SHA256, key file in the data dir) and
//!   Via branch derivation.
//! - `udp`, `tcp` (private): sockets (a thread per UDP port, tasks for TCP), framing,
//!   connection table and upstream pool.
//! - [`crate::stun`]: answers to STUN keep-alives on the UDP ports (RFC 5626).
//! - [`crate::limit`]: per-source token buckets.
//! - [`crate::observe`]: counters and the non-blocking hand-off of [`Relayed`] messages to call
//!   tracking.
//!
//! Architecture invariant: the relay path never waits on anything but its own sockets (and a
//! TCP connect to the upstream, bounded by `upstream_connect_timeout`); call tracking is fed
//! with `try_send` only.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use sipedge_store::Source;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::call::TrackingConfig;
use crate::config::{PortRange, ProxyConfig};
use crate::error::Error;
use crate::flow::{Flow, FlowKey, Transport};
use crate::limit::SourceLimiter;
use crate::observe::{Copies, Direction, DropReason, Handoff, Metrics, Origin, Relayed};
use crate::relay::{Arrival, Decision, Relay, Side, Target};
use crate::scan::{self, Summary};
use crate::tcp::Conns;
use crate::udp::Wait;

/// A bound proxy, ready to [`run`](Proxy::run). Binding and running are separate so that the
/// root can bind every listener first and start nothing when one port is taken.
#[derive(Debug)]
pub struct Proxy {
    /// State shared by every task.
    shared: Arc<Shared>,
    /// One UDP socket per port of the range.
    udp: Vec<Arc<UdpSocket>>,
    /// One TCP listener per port of the range.
    tcp: Vec<TcpListener>,
}

/// What every transport task needs.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The routing rules.
    pub(crate) relay: Relay,
    /// The `[sip]` settings (timeouts, caps).
    pub(crate) cfg: ProxyConfig,
    /// sipedge's advertised address: the source of its own replies in observations.
    pub(crate) advertise: IpAddr,
    /// UDP sockets by port offset: replies and relayed messages leave from the port the
    /// peer talks to, so NAT bindings and the upstream's per-port mapping hold.
    pub(crate) udp: Vec<Arc<UdpSocket>>,
    /// Open TCP connections, by id and by remote address.
    pub(crate) conns: Conns,
    /// Call tracking's queue.
    pub(crate) handoff: Handoff,
    /// Per-source limits for the terminal side; shared with the reload, which sets them.
    pub(crate) limiter: Arc<SourceLimiter>,
    /// Counters, shared with the metrics endpoint.
    pub(crate) metrics: Arc<Metrics>,
    /// Caps inbound TCP connections.
    pub(crate) conn_permits: Arc<Semaphore>,
    /// Source of TCP connection ids (0 means UDP, so ids start at 1).
    pub(crate) next_conn: AtomicU64,
    /// Flips to `true` at shutdown; connection tasks watch it.
    pub(crate) closing: watch::Receiver<bool>,
    /// Set at shutdown before the UDP threads are woken, which then return.
    pub(crate) stopping: AtomicBool,
    /// Sender side of `closing`.
    closing_tx: watch::Sender<bool>,
}

impl Proxy {
    /// Resolves the upstream, loads (or creates) the flow key in `data_dir`, and binds UDP and
    /// TCP on every port of `cfg.ports`. Every relayed message goes to `tracking`, which should
    /// be created with `cfg.handoff_queue` slots and drained by call tracking.
    pub async fn bind(
        cfg: &ProxyConfig,
        data_dir: &Path,
        tracking: mpsc::Sender<Relayed>,
    ) -> Result<Proxy, Error> {
        cfg.validate()?;
        let upstream_ip = resolve(&cfg.upstream.host).await?;
        let key = FlowKey::load_or_create(data_dir)?;
        let advertise = advertise_ip(cfg, upstream_ip);

        let mut udp = Vec::with_capacity(cfg.ports.len());
        let mut tcp = Vec::with_capacity(cfg.ports.len());
        for port in cfg.ports.iter() {
            let addr = SocketAddr::new(cfg.listen, port);
            let sock = bind_udp(addr).map_err(|source| Error::Bind {
                transport: "UDP",
                addr,
                source,
            })?;
            udp.push(Arc::new(sock));
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    transport: "TCP",
                    addr,
                    source,
                })?;
            tcp.push(listener);
        }

        let mut own_hosts = Vec::new();
        if !cfg.listen.is_unspecified() && cfg.listen != advertise {
            own_hosts.push(host_bytes(cfg.listen));
        }
        let metrics = Arc::new(Metrics::default());
        metrics.calls.set_max(cfg.max_calls);
        let (closing_tx, closing) = watch::channel(false);
        let shared = Shared {
            relay: Relay {
                key,
                advertise_host: host_bytes(advertise),
                own_hosts,
                ports: cfg.ports,
                upstream_ip,
                upstream_port: cfg.upstream.port,
                max_message_bytes: cfg.max_message_bytes,
                metrics: Arc::clone(&metrics),
            },
            cfg: cfg.clone(),
            advertise,
            udp: udp.clone(),
            conns: Conns::new(cfg.ports.len()),
            handoff: Handoff::new(tracking, cfg.handoff_queue_bytes),
            limiter: Arc::new(SourceLimiter::new(
                cfg.source_rate_limit,
                cfg.source_rate_burst,
            )),
            metrics,
            conn_permits: Arc::new(Semaphore::new(cfg.tcp_max_connections)),
            next_conn: AtomicU64::new(1),
            closing,
            stopping: AtomicBool::new(false),
            closing_tx,
        };
        Ok(Proxy {
            shared: Arc::new(shared),
            udp,
            tcp,
        })
    }

    /// The bound ranges, for the start-up log: `(listener name, first address, last address)`.
    pub fn listening(&self) -> Vec<(&'static str, SocketAddr, SocketAddr)> {
        let range = |addrs: Vec<SocketAddr>| -> Option<(SocketAddr, SocketAddr)> {
            Some((*addrs.first()?, *addrs.last()?))
        };
        let udp = self
            .udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect();
        let tcp = self
            .tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect();
        [("sip-udp", range(udp)), ("sip-tcp", range(tcp))]
            .into_iter()
            .filter_map(|(name, r)| r.map(|(a, b)| (name, a, b)))
            .collect()
    }

    /// The address written into Via and Record-Route.
    pub fn advertise(&self) -> IpAddr {
        self.shared.advertise
    }

    /// The relay's counters, for the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// Call tracking's settings for this proxy: its timeout and caps, and the counters it
    /// shares with the relay (the calls in progress that `sip.max_calls` holds new calls to).
    pub fn tracking_config(&self, node: impl Into<String>) -> TrackingConfig {
        TrackingConfig::for_proxy(node, &self.shared.cfg, self.metrics())
    }

    /// The per-source limiter, whose rate and burst a reload sets while the proxy runs.
    pub fn limiter(&self) -> Arc<SourceLimiter> {
        Arc::clone(&self.shared.limiter)
    }

    /// Relays until `shutdown` completes, then stops every thread and task and closes every
    /// connection.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let first = self.shared.cfg.ports.first;
        let rt = tokio::runtime::Handle::current();
        let mut threads = Vec::with_capacity(self.udp.len());
        for (port, sock) in (first..).zip(&self.udp) {
            let (shared, sock, rt) = (Arc::clone(&self.shared), Arc::clone(sock), rt.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("sip-udp-{port}"))
                .spawn(move || crate::udp::serve(shared, port, sock, rt));
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    tracing::error!(port, error = %e, "no thread for the UDP port; it is not served")
                }
            }
        }
        let mut tasks = JoinSet::new();
        for (port, listener) in (first..).zip(self.tcp) {
            tasks.spawn(crate::tcp::accept(Arc::clone(&self.shared), port, listener));
        }
        shutdown.await;
        let _ = self.shared.closing_tx.send(true);
        self.shared.stopping.store(true, Ordering::Release);
        for sock in &self.udp {
            crate::udp::wake(sock);
        }
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        // A thread in the middle of a message finishes it (its sends do not wait on this task).
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a UDP relay thread ended in a panic");
                }
            }
        })
        .await;
    }
}

impl Shared {
    /// The UDP socket of sipedge port `port` (falling back to the first port, which cannot
    /// happen for ports the relay produced: they are checked to be in the range).
    pub(crate) fn udp_socket(&self, port: u16) -> Option<&Arc<UdpSocket>> {
        self.cfg
            .ports
            .offset(port)
            .and_then(|i| self.udp.get(i))
            .or_else(|| self.udp.first())
    }

    /// Which side a UDP source is on.
    pub(crate) fn udp_side(&self, src: SocketAddr) -> Side {
        if self.relay.is_upstream_addr(src) {
            Side::Upstream
        } else {
            Side::Terminal
        }
    }

    /// Which side an inbound TCP connection is on.
    pub(crate) fn tcp_side(&self, remote: SocketAddr) -> Side {
        if remote.ip() != self.relay.upstream_ip {
            Side::Terminal
        } else if remote.ip().is_loopback() {
            Side::Ambiguous
        } else {
            Side::Upstream
        }
    }

    /// Whether a message from `side`/`src` passes the per-source limit (the upstream always
    /// does).
    pub(crate) fn admit(&self, side: Side, src: SocketAddr) -> bool {
        if side == Side::Upstream || self.limiter.allow(src.ip(), std::time::Instant::now()) {
            return true;
        }
        self.metrics.dropped(DropReason::RateLimited);
        false
    }

    /// Runs one message through the relay and sends the result. `out` is scratch space.
    pub(crate) async fn process(
        self: &Arc<Self>,
        arrival: Arrival,
        data: &[u8],
        out: &mut Vec<u8>,
        copies: &mut Copies,
    ) {
        // The scan's index borrows `data` and is large: it is not kept across the sends
        // below, only what call tracking reads of it, as positions.
        let (decision, summary) = match self.relay.scan(data) {
            Some(msg) => (self.relay.decide(&arrival, &msg, out), Summary::of(&msg)),
            None => {
                self.metrics.dropped(DropReason::Unparseable);
                return;
            }
        };
        // Every message is handed to call tracking before it is sent: once sent, its answer
        // can come back on another task and be handed over first (seen under load: a 401 and
        // a 180 tracked before their INVITE, so missing from the call). A send that then
        // fails is counted; its message stays in the call's log.
        match decision {
            Decision::Drop(reason) => self.metrics.dropped(reason),
            Decision::Reply { direction, .. } => {
                let local = (&out[..], None);
                self.observe(
                    Origin::Local,
                    direction,
                    &arrival,
                    arrival.src,
                    local,
                    copies,
                );
                self.send_back(&arrival, out).await;
            }
            Decision::Forward { target, direction } => {
                let wait = Wait::relaying(arrival.transport);
                let mut forwarded = |dst| {
                    self.observe(
                        Origin::Forwarded,
                        direction,
                        &arrival,
                        dst,
                        (data, Some(summary)),
                        copies,
                    )
                };
                let sent = match target {
                    Target::Upstream {
                        transport: Transport::Udp,
                        local_port,
                    } => {
                        let dst = self.relay.upstream_addr(local_port);
                        forwarded(dst);
                        self.send_udp(local_port, dst, out, wait)
                    }
                    Target::Upstream {
                        transport: Transport::Tcp,
                        local_port,
                    } => {
                        let dst = self.relay.upstream_addr(local_port);
                        match self.upstream_conn(local_port).await {
                            Some(conn) => {
                                forwarded(dst);
                                self.send_tcp(&conn, out)
                            }
                            None => {
                                self.upstream_unreachable(&arrival, data, out, copies).await;
                                return;
                            }
                        }
                    }
                    Target::Flow(flow) | Target::Address(flow) => {
                        forwarded(flow.remote);
                        self.send_flow(flow, out, wait).await
                    }
                };
                if !sent {
                    self.metrics.dropped(DropReason::SendFailed);
                }
            }
        }
    }

    /// Sends to a terminal's flow (or an address): UDP from the flow's port; TCP over its
    /// connection when still open, else over any connection to its address, else a new one.
    async fn send_flow(self: &Arc<Self>, flow: Flow, out: &[u8], wait: Wait) -> bool {
        match flow.transport {
            Transport::Udp => self.send_udp(flow.local_port, flow.remote, out, wait),
            Transport::Tcp => {
                if let Some(conn) = self.conns.find(flow.conn, flow.remote) {
                    return self.send_tcp(&conn, out);
                }
                if self.relay.is_upstream_addr(flow.remote) {
                    return match self.upstream_conn(flow.local_port).await {
                        Some(conn) => self.send_tcp(&conn, out),
                        None => false,
                    };
                }
                crate::tcp::connect_and_send(Arc::clone(self), flow, Bytes::copy_from_slice(out));
                true
            }
        }
    }

    /// Sends a datagram from sipedge port `local_port`; waits for room in the socket's buffer
    /// only on that port's own thread (`wait`).
    pub(crate) fn send_udp(
        &self,
        local_port: u16,
        dst: SocketAddr,
        out: &[u8],
        wait: Wait,
    ) -> bool {
        self.udp_socket(local_port)
            .is_some_and(|sock| crate::udp::send(sock, dst, out, wait))
    }

    async fn send_back(&self, arrival: &Arrival, out: &[u8]) {
        let ok = match arrival.transport {
            Transport::Udp => self.send_udp(
                arrival.local_port,
                arrival.src,
                out,
                Wait::relaying(arrival.transport),
            ),
            Transport::Tcp => self
                .conns
                .find(arrival.conn, arrival.src)
                .is_some_and(|c| self.send_tcp(&c, out)),
        };
        if !ok {
            self.metrics.dropped(DropReason::SendFailed);
        }
    }

    /// The request could not be forwarded over TCP: 503 to the sender (not for an ACK, which
    /// has no response), seen by call tracking as "upstream unreachable".
    async fn upstream_unreachable(
        &self,
        arrival: &Arrival,
        data: &[u8],
        out: &mut Vec<u8>,
        copies: &mut Copies,
    ) {
        let Ok(msg) = scan::scan(data) else {
            return;
        };
        let method = msg.method_bytes().unwrap_or_default();
        if msg.method() == Some(scan::Method::Ack) {
            self.metrics.dropped(DropReason::SendFailed);
            return;
        }
        self.relay.reply(
            &msg,
            arrival,
            503,
            b"Service Unavailable (upstream unreachable)",
            b"",
            out,
        );
        self.metrics.response(Direction::ToTerminal, method, 503);
        self.observe(
            Origin::Local,
            Direction::ToTerminal,
            arrival,
            arrival.src,
            (out, None),
            copies,
        );
        self.send_back(arrival, out).await;
    }

    /// Hands one message to call tracking, with the relay's summary of it when there is one
    /// (sipedge's own replies have none: call tracking scans them); never waits.
    pub(crate) fn observe(
        &self,
        origin: Origin,
        direction: Direction,
        arrival: &Arrival,
        dst: SocketAddr,
        (bytes, summary): (&[u8], Option<Summary>),
        copies: &mut Copies,
    ) {
        if let Err(bound) = self.handoff.room_for(bytes.len()) {
            self.metrics.handoff_dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.refused(bound, 1);
            return;
        }
        let src = match origin {
            Origin::Forwarded => arrival.src,
            Origin::Local => SocketAddr::new(self.advertise, arrival.local_port),
        };
        self.handoff.send(
            Relayed {
                at: SystemTime::now(),
                direction,
                origin,
                transport: arrival.transport,
                src,
                dst,
                source: Source::Proxy,
                bytes: copies.copy(bytes),
                summary,
                charge: Default::default(),
            },
            &self.metrics,
        );
    }
}

/// Kernel receive buffer asked for each UDP socket: room for a few thousand datagrams, so a
/// burst while the relay is briefly descheduled is absorbed instead of dropped (the kernel
/// caps it at `net.core.rmem_max`, and only fills it under backlog).
const UDP_RECV_BUFFER: usize = 4 << 20;

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works.
    let _ = sock.set_recv_buffer_size(UDP_RECV_BUFFER);
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

/// The upstream host as an address (resolved once at start).
async fn resolve(host: &str) -> Result<IpAddr, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let fail = |reason: String| Error::Resolve {
        host: host.to_owned(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| fail(e.to_string()))?;
    addrs
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| fail("no address".into()))
}

/// `sip.advertise`, else the bound address, else the local address that routes to the
/// upstream (found without sending anything: connecting a UDP socket only picks a route).
fn advertise_ip(cfg: &ProxyConfig, upstream: IpAddr) -> IpAddr {
    if let Some(ip) = cfg.advertise {
        return ip;
    }
    if !cfg.listen.is_unspecified() {
        return cfg.listen;
    }
    let any: IpAddr = match upstream {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    std::net::UdpSocket::bind((any, 0))
        .and_then(|s| {
            s.connect((upstream, cfg.upstream.port.unwrap_or(cfg.ports.first)))?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(upstream)
}

/// How an address is written as a SIP host (IPv6 in brackets).
fn host_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.to_string().into_bytes(),
        IpAddr::V6(ip) => format!("[{ip}]").into_bytes(),
    }
}

impl PortRange {
    /// Index of `port` in the range (for per-port tables).
    pub(crate) fn offset(self, port: u16) -> Option<usize> {
        self.contains(port).then(|| usize::from(port - self.first))
    }
}
