//! `GET /api/processes` (SPEC §7): the watched processes and their state. The monitor, in the
//! root crate, provides the snapshot through [`ProcessSource`], so this crate does not depend
//! on it.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sipedge_store::UnixMs;

use crate::api::ApiState;
use crate::render;

/// Where the API reads the watched processes from.
pub trait ProcessSource: std::fmt::Debug + Send + Sync {
    /// Every `[[monitor.process]]` entry, in configuration order, as of the last look.
    fn processes(&self) -> Vec<WatchedProcess>;
}

/// A watched process's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessState {
    /// Before the monitor's first look.
    Unknown,
    Ok,
    /// Fewer running than its `min_count`.
    Missing,
    /// Over its CPU or memory limit.
    OverLimit,
}

impl ProcessState {
    fn as_str(self) -> &'static str {
        match self {
            ProcessState::Unknown => "unknown",
            ProcessState::Ok => "ok",
            ProcessState::Missing => "missing",
            ProcessState::OverLimit => "over_limit",
        }
    }
}

/// One watched process as `/api/processes` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchedProcess {
    /// The entry's `name`, also the target of its alarms.
    pub name: String,
    /// How it is recognised, e.g. `name nginx`, `cmdline /java .*Sipserver/`.
    pub matcher: String,
    /// Its processes now, so an operator can go and look at them.
    pub pids: Vec<i32>,
    /// CPU of all of them over the last interval (100 = one core); unknown until two looks.
    pub cpu_percent: Option<f64>,
    /// Resident memory of all of them.
    pub rss_mb: f64,
    /// Ok, missing or over a limit.
    pub state: ProcessState,
    /// Missing makes the node unhealthy.
    pub critical: bool,
    /// When `state` last changed.
    pub last_change: Option<UnixMs>,
}

pub(crate) async fn processes(State(state): State<Arc<ApiState>>) -> Response {
    let items: Vec<_> = state
        .processes
        .processes()
        .into_iter()
        .map(|p| {
            json!({
                "name": p.name,
                "matcher": p.matcher,
                "pids": p.pids,
                "count": p.pids.len(),
                "cpu_percent": p.cpu_percent.map(|c| (c * 10.0).round() / 10.0),
                "rss_mb": (p.rss_mb * 10.0).round() / 10.0,
                "state": p.state.as_str(),
                "critical": p.critical,
                "last_change": p.last_change.map(|t| render::rfc3339(t, state.timezone)),
            })
        })
        .collect();
    Json(json!({ "items": items })).into_response()
}
