//! Bridges call tracking (the `sip` crate) to the API (the `http` crate), which know nothing
//! of each other: the live-call list, and the `call.*` events on `/api/events`.

use chrono_tz::Tz;
use serde_json::Value;
use sipedge_http::api::LiveSource;
use sipedge_http::events::{self, EventHub};
use sipedge_http::render;
use sipedge_sip::call::CallTracking;
use tokio::sync::broadcast::error::RecvError;

/// `/api/calls/live` read from call tracking's map of calls in progress.
#[derive(Debug)]
pub struct TrackedCalls {
    pub tracking: CallTracking,
    /// `node.timezone`, in which every time is shown.
    pub zone: Tz,
}

impl LiveSource for TrackedCalls {
    fn live_calls(&self) -> Vec<Value> {
        self.tracking
            .live()
            .list()
            .iter()
            // A struct of strings and numbers: it always converts.
            .map(|call| {
                serde_json::to_value(render::live_call(call, self.zone)).unwrap_or_default()
            })
            .collect()
    }
}

/// The live-call source while no SIP proxy runs in this process: no calls in progress.
#[derive(Debug)]
pub struct NoCallTracking;

impl LiveSource for NoCallTracking {
    fn live_calls(&self) -> Vec<Value> {
        Vec::new()
    }
}

/// Forwards call tracking's events to the SSE hub until tracking stops.
pub async fn forward_events(tracking: CallTracking, hub: EventHub, zone: Tz) {
    let mut events = tracking.subscribe();
    loop {
        match events.recv().await {
            Ok(event) => {
                let name = event.kind.name();
                hub.publish_with(name, move || {
                    events::to_json(&render::live_call(&event.call, zone))
                });
            }
            // Some updates never reach the hub; a `reset` tells SSE clients to reload
            // /api/calls/live instead of trusting a list with gaps.
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "live-call events skipped: the event forwarder fell behind"
                );
                hub.publish("reset", &serde_json::json!({ "missed": missed }));
            }
            Err(RecvError::Closed) => break,
        }
    }
}
