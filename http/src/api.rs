//! The listener on `api.listen` (port 8068): the CDR interface, the web front end and
//! metrics grow here; today it answers the F5's `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::health::Health;
use crate::json_error;

/// The `[api]` table of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The CDR interface's address; the bank's firewall table opens 8068.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8068))
}

/// What the API handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub node: String,
    pub health: Health,
}

pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    state.health.response(&state.node)
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such path")
}
