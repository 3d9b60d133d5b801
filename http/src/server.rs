//! One HTTP/1 accept loop for every listener of sipedge: a cap on connections, a deadline on
//! slow request heads, the client address handed to handlers, and a graceful drain on stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Limits that keep one misbehaving client from disturbing the others (SPEC §10).
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Connections served at once, half-open ones included; further clients wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// A client that has not sent a whole request head by then is disconnected. hyper runs
    /// this clock whenever it waits for a head, so it also closes idle kept-alive
    /// connections: a slowloris holds a connection no longer than this.
    pub header_read_timeout: Duration,
    /// How long a stop waits for requests in flight before closing their connections.
    pub drain_deadline: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            drain_deadline: Duration::from_secs(5),
        }
    }
}

/// What one listener's limits did, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections open now.
    open: AtomicU64,
    /// Times a client had to wait in the backlog because `max_connections` were open.
    capped: AtomicU64,
    /// Connections closed because a request head did not arrive within the timeout.
    header_timeouts: AtomicU64,
}

impl ListenerStats {
    pub fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    pub fn capped(&self) -> u64 {
        self.capped.load(Ordering::Relaxed)
    }

    pub fn header_timeouts(&self) -> u64 {
        self.header_timeouts.load(Ordering::Relaxed)
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut accept_errors = 0u32;
    loop {
        if permits.available_permits() == 0 {
            stats.capped.fetch_add(1, Ordering::Relaxed);
        }
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => { accept_errors = 0; conn }
                Err(err) => {
                    // Running out of file descriptors is the usual cause; backing off gives
                    // closing connections time to release theirs instead of spinning.
                    accept_errors = accept_errors.saturating_add(1);
                    let pause = Duration::from_millis(10u64 << accept_errors.min(6));
                    tracing::warn!(listener = name, error = %err, ?pause, "accept failed");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                if err.is_timeout() {
                    stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(listener = name, %remote, error = %err, "connection ended with an error");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(limits.drain_deadline) => {
            tracing::warn!(listener = name, "drain deadline passed; closing remaining connections");
        }
    }
}
