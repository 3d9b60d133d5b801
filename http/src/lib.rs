//! The HTTP side of sipedge. It is the only crate that knows hyper and axum.
//!
//! - [`server`]: the accept loop every listener shares (connection cap, slow-client deadline,
//!   graceful drain).
//! - [`account`]: the terminals' `POST /AgoraAccount` responder of the source document.
//! - [`api`]: the listener on port 8068: the CDR interface, statistics, live calls, events,
//!   alarms, metrics.
//! - [`access`]: who may use port 8068 (`api.allow`, `api.users`).
//! - [`params`]: the query conditions of the source document as URL parameters.
//! - [`render`]: CDRs, statistics, logs and alarms as the API shows them; [`chart`]: the SVG.
//! - [`events`]: the replaying event hub behind `/api/events`.
//! - [`processes`]: `/api/processes`, from a snapshot the monitor provides.
//! - [`health`]: whether this node can serve calls, shown on `/healthz`.
//! - [`client`]: the outgoing requests: a JSON POST (the alarm webhook), a GET (a peer).
//! - [`cluster`]: `[cluster]`, the peers and how nodes authenticate to each other;
//!   [`merge`]: several nodes' answers made into one (pure); [`peer`]: the endpoints'
//!   answers for several nodes (`scope=cluster`, `node=NAME`).
//! - [`ui`]: the web front end, static files compiled in, served at `/`.
#![forbid(unsafe_code)]

pub mod access;
pub mod account;
pub mod api;
pub mod chart;
pub mod client;
pub mod cluster;
pub mod events;
pub mod health;
pub mod merge;
pub mod params;
pub(crate) mod peer;
pub mod processes;
pub mod render;
pub mod server;
pub mod ui;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The error shape of every endpoint: `{"error":"…"}`.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}
