//! The listener on `api.listen` (port 8068, SPEC §6): the CDR interface, statistics and
//! chart, live calls and events, alarms, metrics and `/healthz`, behind [`crate::access`].
//! The web front end is another router the root merges in (see [`router`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use chrono_tz::Tz;
use ipnet::IpNet;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sipedge_store::{CdrId, Store, StoreError};

use crate::access::{self, Access, ApiUser};
use crate::chart::{self, Bar, Chart, Lang};
use crate::cluster::{self, Cluster, PeerCaller, Selection};
use crate::events::EventHub;
use crate::health::Health;
use crate::json_error;
use crate::params::{self, BadParam, Extra};
use crate::processes::ProcessSource;
use crate::render::{self, CdrView};

/// Rows per store batch of the CSV export; with [`CSV_QUEUE`] batches in flight this bounds
/// the export's memory whatever the number of rows.
const CSV_BATCH: usize = 1000;
const CSV_QUEUE: usize = 4;
/// File in the data dir holding the key that signs paging cursors, so that a cursor stays
/// valid across a restart.
const CURSOR_KEY_FILE: &str = "api-cursor.key";

/// The `[api]` table of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// The CDR interface's address; the bank's firewall table opens 8068.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Client networks that may reach the listener at all; others get 403.
    #[serde(default = "default_allow")]
    pub allow: Vec<IpNet>,
    /// Basic-auth users; with none, clients in `allow` need no credentials.
    #[serde(default)]
    pub users: Vec<ApiUser>,
    /// Connections served at once (half-open ones included); more wait in the backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this (a new one, or one
    /// kept alive between requests) is closed.
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Live-event streams (`/api/events`) open at once; more get 503.
    #[serde(default = "default_max_sse_clients")]
    pub max_sse_clients: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            allow: default_allow(),
            users: Vec::new(),
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
            max_sse_clients: default_max_sse_clients(),
        }
    }
}

fn default_max_connections() -> usize {
    1024
}

fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_max_sse_clients() -> usize {
    64
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8068))
}

fn default_allow() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}

impl ApiConfig {
    /// Problems a person must fix before the API can run, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.allow.is_empty() {
            problems.push("api.allow: empty, so every client would be refused".to_owned());
        }
        if self.max_connections == 0 {
            problems.push("api.max_connections: must be at least 1".to_owned());
        }
        if self.header_timeout < Duration::from_millis(100) {
            problems.push("api.header_timeout: must be at least 100ms".to_owned());
        }
        if self.max_sse_clients == 0 {
            problems.push("api.max_sse_clients: must be at least 1".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, user) in self.users.iter().enumerate() {
            if user.name.is_empty() || user.name.contains(':') || user.name.trim() != user.name {
                problems.push(format!(
                    "api.users[{i}].name: {:?} must be non-empty, without ':' or surrounding spaces",
                    user.name
                ));
            }
            if !seen.insert(user.name.as_str()) {
                problems.push(format!(
                    "api.users[{i}].name: {:?} appears twice",
                    user.name
                ));
            }
            if let Err(e) = access::check_hash(&user.password_hash) {
                problems.push(format!("api.users[{i}].password_hash: {e}"));
            }
        }
        problems
    }
}

/// The calls in progress, as call tracking sees them; the root provides it so that this
/// crate does not depend on the SIP side.
pub trait LiveSource: std::fmt::Debug + Send + Sync {
    /// Every call in progress as `/api/calls/live` and the `call.*` events show it.
    fn live_calls(&self) -> Vec<Value>;
}

/// What the API handlers share.
#[derive(Debug)]
pub struct ApiState {
    /// `node.name`, shown by `/healthz` and in export file names.
    pub node: String,
    /// `node.timezone`: of "today", of bucket edges, of every time shown.
    pub timezone: Tz,
    /// Shown by `/healthz`, for the F5.
    pub health: Health,
    /// Every query reads it; cheap to clone into blocking tasks.
    pub store: Store,
    /// Signs paging cursors (see [`load_cursor_key`]).
    pub cursor_key: Vec<u8>,
    /// `api.allow` and `api.users`.
    pub access: Arc<Access>,
    /// The calls in progress, from call tracking.
    pub live: Arc<dyn LiveSource>,
    /// Where `/api/events` reads from.
    pub events: EventHub,
    /// Everything `/metrics` shows; built by the root, which knows every part.
    pub metrics: Arc<Registry>,
    /// What `/api/processes` lists; the monitor in the root provides it.
    pub processes: Arc<dyn ProcessSource>,
    /// `[cluster]`: the peers that `scope=cluster` and `node=NAME` ask, and the secret that
    /// peer requests are signed with.
    pub cluster: Arc<Cluster>,
}

/// The key that signs paging cursors, from the data dir, made on first use.
pub fn load_cursor_key(data_dir: &Path) -> std::io::Result<Vec<u8>> {
    let path = data_dir.join(CURSOR_KEY_FILE);
    match std::fs::read(&path) {
        Ok(key) if key.len() >= 32 => return Ok(key),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let key = access::random_key()?;
    let tmp = data_dir.join(format!("{CURSOR_KEY_FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(key.to_vec())
}

/// The web front end's routes (`GET /` and its assets), merged into the API router behind
/// the same access rules; they must not set a fallback. The front end is built apart from
/// the API, and plugs in here.
fn ui_router() -> Router {
    crate::ui::router()
}

/// The router of the API listener.
pub fn router(state: Arc<ApiState>) -> Router {
    let guard = (state.access.clone(), state.cluster.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/cdrs", get(cdrs))
        .route("/api/cdrs.csv", get(cdrs_csv))
        .route("/api/cdrs/{id}", get(cdr))
        .route("/api/cdrs/{id}/log", get(cdr_log))
        .route("/api/stats", get(stats))
        .route("/api/stats.svg", get(stats_svg))
        .route("/api/calls/live", get(live_calls))
        .route("/api/events", get(events))
        .route("/api/alarms", get(alarms))
        .route("/api/processes", get(processes))
        .route("/api/cluster", get(cluster_nodes))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(ui_router())
        .fallback(not_found)
        .layer(middleware::from_fn(only_get))
        .layer(middleware::from_fn_with_state(guard, cluster::guard))
}

/// Every endpoint reads; anything but GET (and HEAD) is a 405 with `Allow`.
async fn only_get(request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let mut response = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{} is not supported here; use GET", request.method()),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    response
}

/// Why an API request failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error(transparent)]
    Bad(#[from] BadParam),
    #[error("{0}")]
    NotFound(String),
    #[error("the store cannot answer: {0}")]
    Store(#[from] StoreError),
    #[error("the query task failed: {0}")]
    Task(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Bad(e) => json_error(StatusCode::BAD_REQUEST, &e.0),
            ApiError::NotFound(what) => json_error(StatusCode::NOT_FOUND, what),
            ApiError::Store(_) | ApiError::Task(_) => {
                tracing::error!(error = %self, "API request failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, &self.to_string())
            }
        }
    }
}

/// Runs a store query on the blocking pool (the engines do file I/O).
pub(crate) async fn blocking<T: Send + 'static>(
    query: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(query)
        .await
        .map_err(|e| ApiError::Task(e.to_string()))?
        .map_err(ApiError::Store)
}

/// The query string as a map; a parameter given twice is refused rather than guessed at.
fn query_map(raw: Option<&str>) -> Result<HashMap<String, String>, BadParam> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.unwrap_or(""))
        .map_err(|e| BadParam(format!("query string: cannot be decoded: {e}")))?;
    let mut map = HashMap::new();
    for (name, value) in pairs {
        if map.contains_key(&name) {
            return Err(BadParam(format!("{name}: given more than once")));
        }
        map.insert(name, value);
    }
    Ok(map)
}

/// Whether the request came from a cluster peer (see [`cluster::guard`]).
type FromPeer = Option<Extension<PeerCaller>>;

pub(crate) fn parse_filters(
    state: &ApiState,
    params: &HashMap<String, String>,
    extra: Extra,
) -> Result<params::Query, BadParam> {
    params::parse(params, extra, state.timezone, Utc::now(), &state.cursor_key)
}

async fn healthz(State(state): State<Arc<ApiState>>) -> Response {
    state.health.response(&state.node)
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such path")
}

async fn cdrs(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    if let Selection::Nodes { local, peers } = state.cluster.select(&mut params, peer.is_some())? {
        return crate::peer::cdrs(&state, params, local, &peers).await;
    }
    let after = cluster::take_after(&mut params, peer.is_some())?;
    let mut query = parse_filters(&state, &params, Extra::Paging)?;
    query.after = after.or(query.after);
    let store = state.store.clone();
    let filter = query.filter.clone();
    let (page, next) = blocking(move || store.cdrs_page(&filter, query.after, query.limit)).await?;
    let items: Vec<CdrView> = page
        .iter()
        .map(|c| CdrView::new(c, state.timezone))
        .collect();
    let next_cursor = next.map(|id| params::make_cursor(id, &query.filter, &state.cursor_key));
    Ok(Json(json!({ "items": items, "next_cursor": next_cursor })).into_response())
}

/// A file name made of the node and the interval, with nothing a shell or a header could
/// trip on.
fn csv_file_name(node: &str, start: &str, end: &str) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let compact = |t: &str| t.chars().filter(char::is_ascii_digit).collect::<String>();
    format!("cdrs-{safe}-{}-{}.csv", compact(start), compact(end))
}

async fn cdrs_csv(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    if let Selection::Nodes { local, peers } = state.cluster.select(&mut params, peer.is_some())?
        && !(local && peers.is_empty())
    {
        // An export of several nodes could not say which nodes it lacks once its rows have
        // started; each node's own export is whole or fails.
        return Err(BadParam(format!(
            "scope: the CSV export covers this node ({}) only; download each node's export from that node",
            state.node
        ))
        .into());
    }
    let query = parse_filters(&state, &params, Extra::None)?;
    let zone = state.timezone;
    let name = csv_file_name(
        &state.node,
        &render::local(query.filter.start, zone),
        &render::local(query.filter.end, zone),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(CSV_QUEUE);
    let store = state.store.clone();
    let filter = query.filter;
    tokio::task::spawn_blocking(move || {
        if tx
            .blocking_send(Ok(Bytes::from_static(render::CSV_HEADER.as_bytes())))
            .is_err()
        {
            return;
        }
        for batch in store.cdrs_batches(filter, CSV_BATCH) {
            let chunk = batch.map(|rows| {
                let mut out = String::with_capacity(rows.len() * 320);
                for cdr in &rows {
                    render::csv_row(&mut out, cdr, zone);
                }
                Bytes::from(out)
            });
            let failed = chunk.is_err();
            if let Err(e) = &chunk {
                tracing::error!(error = %e, "CSV export stopped by a store error");
            }
            // A send error means the client went away: stop reading the store.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

fn cdr_id(text: &str) -> Result<CdrId, BadParam> {
    text.parse().map_err(|e| BadParam(format!("id: {e}")))
}

/// For a record's endpoints: `None` when this node holds it, or the peer named by `node`.
fn record_node(
    state: &ApiState,
    peer: &FromPeer,
    raw: Option<&str>,
) -> Result<Option<usize>, BadParam> {
    let mut params = query_map(raw)?;
    match state.cluster.select(&mut params, peer.is_some())? {
        Selection::Local => Ok(None),
        Selection::Nodes { local: true, peers } if peers.is_empty() => Ok(None),
        Selection::Nodes {
            local: false,
            peers,
        } if peers.len() == 1 => Ok(peers.first().copied()),
        Selection::Nodes { .. } => Err(BadParam(
            "scope: a record is kept by one node; give node=NAME instead of scope=cluster"
                .to_owned(),
        )),
    }
}

async fn cdr(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    UrlPath(id): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = cdr_id(&id)?;
    if let Some(at) = record_node(&state, &peer, raw.as_deref())? {
        return Ok(crate::peer::from_peer(&state, at, &format!("/api/cdrs/{id}")).await);
    }
    let store = state.store.clone();
    match blocking(move || store.get_cdr(id)).await? {
        Some(cdr) => Ok(Json(CdrView::new(&cdr, state.timezone)).into_response()),
        None => Err(ApiError::NotFound(format!("no CDR with id {id}"))),
    }
}

async fn cdr_log(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    UrlPath(id): UrlPath<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let id = cdr_id(&id)?;
    if let Some(at) = record_node(&state, &peer, raw.as_deref())? {
        return Ok(crate::peer::from_peer(&state, at, &format!("/api/cdrs/{id}/log")).await);
    }
    let store = state.store.clone();
    let (cdr, log) = blocking(move || Ok((store.get_cdr(id)?, store.cdr_log(id)?))).await?;
    if cdr.is_none() && log.is_empty() {
        return Err(ApiError::NotFound(format!("no call with id {id}")));
    }
    let entries: Vec<Value> = log
        .iter()
        .map(|e| render::log_entry(e, state.timezone))
        .collect();
    Ok(Json(json!({ "id": id.to_string(), "entries": entries })).into_response())
}

/// A query, its bucket size and the store's statistics for it.
type Stats = (
    params::Query,
    params::BucketSize,
    sipedge_store::StatsResult,
);

/// This node's statistics, in buckets of `zone` (this node's, or the zone of the peer that
/// merges them with its own).
async fn stats_of(
    state: &ApiState,
    params: &HashMap<String, String>,
    zone: Tz,
) -> Result<Stats, ApiError> {
    let query = parse_filters(state, params, Extra::None)?;
    let (size, edges) = params::bucket_edges(query.filter.start, query.filter.end, zone);
    let store = state.store.clone();
    let filter = query.filter.clone();
    let result = blocking(move || store.stats(&filter, &edges)).await?;
    Ok((query, size, result))
}

async fn stats(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    if let Selection::Nodes { local, peers } = state.cluster.select(&mut params, peer.is_some())? {
        return crate::peer::stats_json(&state, &params, local, &peers).await;
    }
    let zone = cluster::take_zone(&mut params, peer.is_some())?.unwrap_or(state.timezone);
    let (query, size, result) = stats_of(&state, &params, zone).await?;
    Ok(Json(render::stats(
        query.filter.start,
        query.filter.end,
        size.as_str(),
        &result,
        state.timezone,
    ))
    .into_response())
}

async fn stats_svg(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    let selection = state.cluster.select(&mut params, peer.is_some())?;
    let lang = match params.remove("lang").as_deref().map(str::trim) {
        None | Some("") | Some("en") => Lang::En,
        Some("zh") => Lang::Zh,
        Some(other) => {
            return Err(BadParam(format!("lang: {other:?} is not zh or en")).into());
        }
    };
    let (query, size, result, reach) = match selection {
        Selection::Local => {
            let (query, size, result) = stats_of(&state, &params, state.timezone).await?;
            (query, size, result, None)
        }
        Selection::Nodes { local, peers } => {
            let (query, size, result, reach) =
                crate::peer::stats(&state, &params, local, &peers).await?;
            (query, size, result, Some(reach))
        }
    };
    let chart = Chart {
        start: query.filter.start,
        end: query.filter.end,
        bucket: size,
        bars: result
            .buckets
            .iter()
            .map(|b| Bar {
                start: b.start,
                audio_talk_s: b.counts.audio.talk_ms as f64 / 1000.0,
                video_talk_s: b.counts.video.talk_ms as f64 / 1000.0,
            })
            .collect(),
        zone: state.timezone,
        lang,
    };
    let mut response = (
        [(header::CONTENT_TYPE, "image/svg+xml; charset=utf-8")],
        chart::svg(&chart),
    )
        .into_response();
    // A picture has no field to say it: the nodes whose calls the chart lacks go in a header.
    if let Some(value) = reach.as_ref().and_then(crate::peer::unavailable_header) {
        response
            .headers_mut()
            .insert("x-sipedge-unavailable", value);
    }
    Ok(response)
}

async fn live_calls(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    Ok(match state.cluster.select(&mut params, peer.is_some())? {
        Selection::Local => Json(json!({ "items": state.live.live_calls() })).into_response(),
        Selection::Nodes { local, peers } => crate::peer::live(&state, local, &peers).await,
    })
}

async fn processes(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    let selection = state.cluster.select(&mut params, peer.is_some())?;
    let local = crate::processes::processes(State(state.clone())).await;
    let Selection::Nodes { local: mine, peers } = selection else {
        return Ok(local);
    };
    let items = if mine {
        let body = axum::body::to_bytes(local.into_body(), usize::MAX)
            .await
            .map_err(|e| ApiError::Task(e.to_string()))?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| ApiError::Task(e.to_string()))?;
        Some(
            value
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        )
    } else {
        None
    };
    Ok(crate::peer::processes(&state, items, &peers).await)
}

/// `GET /api/cluster`: this node and its peers, for the front end's node selector.
async fn cluster_nodes(State(state): State<Arc<ApiState>>) -> Response {
    let peers: Vec<&str> = state
        .cluster
        .peers()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    Json(json!({ "node": state.cluster.node(), "peers": peers })).into_response()
}

async fn events(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    let last = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) if text.trim().is_empty() => None,
        Some(Ok(text)) => match text.trim().parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "Last-Event-ID: not an id this server sent",
                );
            }
        },
        Some(Err(_)) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID: not an id this server sent",
            );
        }
    };
    match state.events.sse(last) {
        Ok(stream) => stream.into_response(),
        Err(crate::events::TooManyClients(max)) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "{max} event streams are open, the most api.max_sse_clients allows; retry later"
            ),
        ),
    }
}

async fn alarms(
    State(state): State<Arc<ApiState>>,
    peer: FromPeer,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let mut params = query_map(raw.as_deref())?;
    if let Selection::Nodes { local, peers } = state.cluster.select(&mut params, peer.is_some())? {
        return crate::peer::alarms(&state, &params, local, &peers).await;
    }
    let query = params::parse_alarms(&params, state.timezone)?;
    let items = local_alarms(&state, &query).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

/// This node's alarms matching `query`, newest first.
pub(crate) async fn local_alarms(
    state: &ApiState,
    query: &params::AlarmQuery,
) -> Result<Vec<Value>, ApiError> {
    let store = state.store.clone();
    let active_only = query.active_only;
    let found = blocking(move || store.alarms(active_only, params::MAX_ALARMS_SCANNED)).await?;
    Ok(found
        .iter()
        .filter(|a| query.start.is_none_or(|s| a.raised_at >= s))
        .filter(|a| query.end.is_none_or(|e| a.raised_at < e))
        .take(query.limit)
        .map(|a| render::alarm(a, state.timezone))
        .collect())
}

async fn metrics(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let registry = state.metrics.clone();
    // Collectors may read the store, so the encoding runs off the async threads.
    let text = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).map(|()| text)
    })
    .await
    .map_err(|e| ApiError::Task(e.to_string()))?
    .map_err(|e| ApiError::Task(format!("cannot encode the metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_table() {
        let ok = |raw: &str, pairs: &[(&str, &str)]| {
            let want: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(query_map(Some(raw)), Ok(want), "{raw}");
        };
        ok("", &[]);
        ok(
            "caller=1380*&type=video",
            &[("caller", "1380*"), ("type", "video")],
        );
        ok(
            "start=2026-11-28+08%3A00%3A00",
            &[("start", "2026-11-28 08:00:00")],
        );
        ok(
            "start=2026-11-28T08:00:00%2B08:00",
            &[("start", "2026-11-28T08:00:00+08:00")],
        );
        let err = query_map(Some("type=audio&type=video")).unwrap_err();
        assert!(err.0.starts_with("type"), "{err}");
    }

    #[test]
    fn csv_file_names_are_plain() {
        assert_eq!(
            csv_file_name("sh-01", "2026-11-28 00:00:00", "2026-11-29 00:00:00"),
            "cdrs-sh-01-20261128000000-20261129000000.csv"
        );
        assert_eq!(csv_file_name("a\"b/c", "x", "y"), "cdrs-a_b_c--.csv");
    }

    #[test]
    fn config_problems_name_the_key() {
        let mut config = ApiConfig::default();
        assert!(config.problems().is_empty());
        config.allow.clear();
        config.users = vec![
            ApiUser {
                name: "a:b".into(),
                password_hash: "nope".into(),
            },
            ApiUser {
                name: "ops".into(),
                password_hash: access::hash_password("x").unwrap(),
            },
            ApiUser {
                name: "ops".into(),
                password_hash: access::hash_password("y").unwrap(),
            },
        ];
        let problems = config.problems();
        for needle in [
            "api.allow",
            "api.users[0].name",
            "api.users[0].password_hash",
            "api.users[2].name",
        ] {
            assert!(
                problems.iter().any(|p| p.starts_with(needle)),
                "{needle} in {problems:?}"
            );
        }
        assert_eq!(problems.len(), 4, "{problems:?}");
    }

    #[test]
    fn the_cursor_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_cursor_key(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(load_cursor_key(dir.path()).unwrap(), first);
    }
}
