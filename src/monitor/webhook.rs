//! Alarms POSTed as JSON to `monitor.webhook`: a bounded queue the monitor pushes into
//! without waiting, and one task that sends in order, retrying with exponential backoff.
//! When the receiver stays away long enough for the queue to fill, the oldest are dropped
//! and counted.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use sipedge_http::client::{self, StatusCode, Target};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::WebhookUrl;

/// The first wait after a failed POST; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Connect + send + answer, so that a receiver that accepts and never answers is a failure.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Webhook {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Bodies waiting, oldest first, each with its sequence number so that the sender pops
    /// only the one it sent even if it was dropped meanwhile.
    queue: Mutex<(u64, VecDeque<(u64, Bytes)>)>,
    /// `monitor.webhook_queue`: bodies held at most.
    capacity: usize,
    /// Wakes the sender when the queue was empty.
    wake: Notify,
    /// Alarm changes dropped because the queue was full: `sipedge_webhook_dropped_total`.
    dropped: Counter,
    /// Failed POST attempts: `sipedge_webhook_failures_total`.
    failures: Counter,
}

impl Webhook {
    /// Starts the sending task; it ends on `shutdown`.
    pub fn start(url: WebhookUrl, capacity: usize, shutdown: CancellationToken) -> Webhook {
        let shared = Arc::new(Shared {
            queue: Mutex::new((0, VecDeque::new())),
            capacity: capacity.max(1),
            wake: Notify::new(),
            dropped: Counter::default(),
            failures: Counter::default(),
        });
        tokio::spawn(send_loop(url, shared.clone(), shutdown));
        Webhook { shared }
    }

    /// Queues one JSON document; never waits.
    pub fn send(&self, body: &serde_json::Value) {
        let body = Bytes::from(body.to_string());
        {
            let mut guard = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let (next, queue) = &mut *guard;
            if queue.len() >= self.shared.capacity {
                queue.pop_front();
                self.shared.dropped.inc();
            }
            *next += 1;
            queue.push_back((*next, body));
        }
        self.shared.wake.notify_one();
    }

    /// Registers the webhook's counters.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "webhook_dropped",
            "Alarm changes dropped because the webhook queue was full",
            self.shared.dropped.clone(),
        );
        registry.register(
            "webhook_failures",
            "Failed webhook POST attempts (each is retried)",
            self.shared.failures.clone(),
        );
    }
}

async fn send_loop(url: WebhookUrl, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let front = {
            let guard = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            guard.1.front().cloned()
        };
        let Some((seq, body)) = front else {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = shared.wake.notified() => continue,
            }
        };
        let outcome = tokio::time::timeout(POST_TIMEOUT, post(&url, body)).await;
        let result = match outcome {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {POST_TIMEOUT:?}")),
        };
        match result {
            Ok(status) if status.is_success() || status.is_client_error() => {
                if status.is_client_error() {
                    // The receiver refuses this document; sending it again would block the
                    // ones behind it forever.
                    tracing::warn!(%status, host = %url.authority, "webhook refused an alarm; not retried");
                }
                let mut guard = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
                if guard.1.front().is_some_and(|(s, _)| *s == seq) {
                    guard.1.pop_front();
                }
                backoff = FIRST_BACKOFF;
            }
            failed => {
                shared.failures.inc();
                let reason = match failed {
                    Ok(status) => format!("status {status}"),
                    Err(e) => e,
                };
                tracing::warn!(host = %url.authority, error = %reason, retry_in = ?backoff, "webhook POST failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One POST of an alarm document to the configured receiver.
async fn post(url: &WebhookUrl, body: Bytes) -> Result<StatusCode, String> {
    let target = Target {
        host: &url.host,
        port: url.port,
        authority: &url.authority,
        path: &url.path,
    };
    client::post_json(target, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_and_counts_them() {
        // A port nothing listens on: every POST fails, nothing leaves the queue.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = WebhookUrl::parse(&format!("http://127.0.0.1:{port}/x")).unwrap();
        let shutdown = CancellationToken::new();
        const QUEUE_LEN: usize = 20;
        let webhook = Webhook::start(url, QUEUE_LEN, shutdown.clone());
        for n in 0..(QUEUE_LEN + 5) {
            webhook.send(&serde_json::json!({ "n": n }));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(webhook.shared.dropped.get(), 5);
        assert!(webhook.shared.failures.get() >= 1);
        let guard = webhook.shared.queue.lock().unwrap();
        assert_eq!(guard.1.len(), QUEUE_LEN);
        assert_eq!(guard.1.front().unwrap().1, Bytes::from("{\"n\":5}"));
        shutdown.cancel();
    }
}
