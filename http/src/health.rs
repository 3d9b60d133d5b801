//! Whether this node can serve calls (SPEC §7). The monitor writes it; `/healthz` and the
//! account responder read it so that the F5 and the terminals go to the other data centre
//! while it is down.

use std::sync::{Arc, RwLock};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Shared health state: empty reasons means healthy.
#[derive(Debug, Clone, Default)]
pub struct Health {
    /// Why the node cannot serve, one line each; read on every account request, written once
    /// per monitor interval, hence a lock rather than anything cleverer.
    reasons: Arc<RwLock<Vec<String>>>,
}

impl Health {
    /// Replaces the reasons the node is down; an empty list brings it back up.
    pub fn set_down_reasons(&self, reasons: Vec<String>) {
        match self.reasons.write() {
            Ok(mut guard) => *guard = reasons,
            Err(poisoned) => *poisoned.into_inner() = reasons,
        }
    }

    /// The reasons the node is down, or `None` when it can serve.
    pub fn down_reasons(&self) -> Option<Vec<String>> {
        let guard = match self.reasons.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if guard.is_empty() {
            None
        } else {
            Some(guard.clone())
        }
    }

    /// The `/healthz` answer shared by both listeners.
    pub fn response(&self, node: &str) -> Response {
        match self.down_reasons() {
            None => (StatusCode::OK, Json(json!({"status": "ok", "node": node}))).into_response(),
            Some(reasons) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "down", "node": node, "reasons": reasons})),
            )
                .into_response(),
        }
    }
}
