//! The answers of the API endpoints for several nodes (`scope=cluster`, `node=NAME`): this
//! node's part read from its store while the peers are asked, then merged by
//! [`crate::merge`]. Every answer names the nodes that answered (`nodes`) and those that did
//! not (`unavailable`); a peer that is down or slow never fails the request.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sipedge_store::StatsResult;

use crate::api::{self, ApiError, ApiState};
use crate::cluster::Answer;
use crate::json_error;
use crate::merge::{self, CdrRow, NodePage};
use crate::params::{self, BucketSize, Extra};
use crate::render::{self, CdrView};

/// Which nodes answered and which did not, in the order they were asked.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    pub nodes: Vec<String>,
    pub unavailable: Vec<String>,
}

impl Reach {
    fn starting(state: &ApiState, local: bool) -> Reach {
        Reach {
            nodes: if local {
                vec![state.node.clone()]
            } else {
                Vec::new()
            },
            unavailable: Vec::new(),
        }
    }

    /// Each answer that could be used, the peer counted as answered or not.
    fn sort(&mut self, answers: Vec<Answer>, mut usable: impl FnMut(&Answer) -> bool) {
        for answer in answers {
            if usable(&answer) {
                self.nodes.push(answer.peer);
            } else {
                self.unavailable.push(answer.peer);
            }
        }
    }

    fn into_json(self, mut body: Value) -> Value {
        body["nodes"] = json!(self.nodes);
        body["unavailable"] = json!(self.unavailable);
        body
    }
}

/// The rows of a `{"items": […]}` answer, their times shown in `zone`.
fn items(mut body: Value, times: &[&str], zone: chrono_tz::Tz) -> Option<Vec<Value>> {
    let mut rows = match body.get_mut("items")?.take() {
        Value::Array(rows) => rows,
        _ => return None,
    };
    for row in &mut rows {
        merge::rezone(row, times, zone);
    }
    Some(rows)
}

/// `GET /api/cdrs` for several nodes: each is asked for the page below the merged cursor's
/// id, and the newest `limit` of all of them make the page.
pub(crate) async fn cdrs(
    state: &Arc<ApiState>,
    mut params: HashMap<String, String>,
    local: bool,
    peers: &[usize],
) -> Result<Response, ApiError> {
    // The merged cursor is not a local one: read apart, bound to the nodes asked.
    let cursor = params.remove("cursor").filter(|c| !c.trim().is_empty());
    let query = api::parse_filters(state, &params, Extra::Paging)?;
    let names = state.cluster.names(local, peers);
    let after = cursor
        .map(|c| merge::open_cursor(&c, &names, &query.filter, &state.cursor_key))
        .transpose()?;
    let mut pairs = merge::filter_params(&query.filter);
    pairs.push(("limit", query.limit.to_string()));
    if let Some(id) = after {
        pairs.push(("after", id.to_string()));
    }
    let path = merge::path_with("/api/cdrs", &pairs);
    let store = state.store.clone();
    let filter = query.filter.clone();
    let limit = query.limit;
    let mine = async move {
        if local {
            api::blocking(move || store.cdrs_page(&filter, after, limit))
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let (mine, answers) = tokio::join!(mine, state.cluster.ask(peers, &path));
    let zone = state.timezone;
    let mut pages = Vec::new();
    if let Some((page, next)) = mine? {
        pages.push(NodePage {
            items: page
                .iter()
                .filter_map(|c| serde_json::to_value(CdrView::new(c, zone)).ok())
                .filter_map(|v| serde_json::from_value(v).ok())
                .collect(),
            more: next.is_some(),
        });
    }
    let mut reach = Reach::starting(state, local);
    reach.sort(answers, |answer| match answer.read::<PeerPage>() {
        Ok(mut page) => {
            for row in &mut page.items {
                row.rezone(zone);
            }
            pages.push(NodePage {
                items: page.items,
                more: page.next_cursor.is_some(),
            });
            true
        }
        Err(e) => {
            tracing::warn!(peer = %answer.peer, error = %e, "a peer's page cannot be used; listed as unavailable");
            false
        }
    });
    let (rows, next) = merge::merge_pages(pages, query.limit);
    let next_cursor =
        next.map(|id| merge::make_cursor(id, &names, &query.filter, &state.cursor_key));
    // A struct, not a `Value`: a map would sort each row's names.
    Ok(Json(MergedPage {
        items: rows,
        next_cursor,
        nodes: reach.nodes,
        unavailable: reach.unavailable,
    })
    .into_response())
}

/// A peer's own `/api/cdrs` page, as far as the merge reads it.
#[derive(Debug, serde::Deserialize)]
struct PeerPage {
    items: Vec<CdrRow>,
    next_cursor: Option<String>,
}

/// A merged `/api/cdrs` page: the local page's shape plus who answered.
#[derive(Debug, serde::Serialize)]
struct MergedPage {
    items: Vec<CdrRow>,
    next_cursor: Option<String>,
    nodes: Vec<String>,
    unavailable: Vec<String>,
}

/// The statistics of several nodes, summed bucket by bucket; every peer is asked for the
/// buckets of this node's zone, so that the hours and days line up.
pub(crate) async fn stats(
    state: &Arc<ApiState>,
    params: &HashMap<String, String>,
    local: bool,
    peers: &[usize],
) -> Result<(params::Query, BucketSize, StatsResult, Reach), ApiError> {
    let query = api::parse_filters(state, params, Extra::None)?;
    let (size, edges) = params::bucket_edges(query.filter.start, query.filter.end, state.timezone);
    let mut pairs = merge::filter_params(&query.filter);
    pairs.push(("zone", state.timezone.name().to_owned()));
    let path = merge::path_with("/api/stats", &pairs);
    let store = state.store.clone();
    let filter = query.filter.clone();
    let local_edges = edges.clone();
    let mine = async move {
        if local {
            api::blocking(move || store.stats(&filter, &local_edges))
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let (mine, answers) = tokio::join!(mine, state.cluster.ask(peers, &path));
    let mut sum = merge::empty_stats(&edges);
    if let Some(result) = mine? {
        merge::add_stats(&mut sum, &result);
    }
    let mut reach = Reach::starting(state, local);
    reach.sort(answers, |answer| {
        let read = answer.read::<Value>().map_err(|e| e.reason);
        match read.and_then(|body| merge::stats_from_json(&body, &edges)) {
            Ok(result) => {
                merge::add_stats(&mut sum, &result);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "a peer's statistics do not fit; listed as unavailable");
                false
            }
        }
    });
    Ok((query, size, sum, reach))
}

/// `GET /api/stats` for several nodes.
pub(crate) async fn stats_json(
    state: &Arc<ApiState>,
    params: &HashMap<String, String>,
    local: bool,
    peers: &[usize],
) -> Result<Response, ApiError> {
    let (query, size, result, reach) = stats(state, params, local, peers).await?;
    let body = render::stats(
        query.filter.start,
        query.filter.end,
        size.as_str(),
        &result,
        state.timezone,
    );
    Ok(Json(reach.into_json(body)).into_response())
}

/// The header that names, on the chart, the nodes whose calls it lacks.
pub(crate) fn unavailable_header(reach: &Reach) -> Option<HeaderValue> {
    if reach.unavailable.is_empty() {
        return None;
    }
    HeaderValue::from_str(&reach.unavailable.join(", ")).ok()
}

/// Rows of several nodes from `path`, each labelled with its node: this node's `mine`, then
/// each peer's in configured order.
async fn rows(
    state: &Arc<ApiState>,
    mine: Option<Vec<Value>>,
    peers: &[usize],
    path: &str,
    times: &[&str],
) -> (Vec<Vec<Value>>, Reach) {
    let answers = state.cluster.ask(peers, path).await;
    let mut reach = Reach::starting(state, mine.is_some());
    let mut lists = Vec::new();
    let label = |mut rows: Vec<Value>, node: &str| {
        for row in &mut rows {
            if let Some(object) = row.as_object_mut() {
                object.insert("node".to_owned(), json!(node));
            }
        }
        rows
    };
    if let Some(rows) = mine {
        lists.push(label(rows, &state.node));
    }
    for answer in answers {
        match answer
            .read::<Value>()
            .ok()
            .and_then(|b| items(b, times, state.timezone))
        {
            Some(rows) => {
                lists.push(label(rows, &answer.peer));
                reach.nodes.push(answer.peer);
            }
            None => reach.unavailable.push(answer.peer),
        }
    }
    (lists, reach)
}

/// `GET /api/calls/live` for several nodes.
pub(crate) async fn live(state: &Arc<ApiState>, local: bool, peers: &[usize]) -> Response {
    let mine = local.then(|| state.live.live_calls());
    let (lists, reach) = rows(state, mine, peers, "/api/calls/live", merge::LIVE_TIMES).await;
    let all: Vec<Value> = lists.into_iter().flatten().collect();
    Json(reach.into_json(json!({ "items": all }))).into_response()
}

/// `GET /api/processes` for several nodes; `mine` is this node's list when it is asked.
pub(crate) async fn processes(
    state: &Arc<ApiState>,
    mine: Option<Vec<Value>>,
    peers: &[usize],
) -> Response {
    let (lists, reach) = rows(state, mine, peers, "/api/processes", merge::PROCESS_TIMES).await;
    let all: Vec<Value> = lists.into_iter().flatten().collect();
    Json(reach.into_json(json!({ "items": all }))).into_response()
}

/// `GET /api/alarms` for several nodes, newest first, `limit` in all.
pub(crate) async fn alarms(
    state: &Arc<ApiState>,
    params: &HashMap<String, String>,
    local: bool,
    peers: &[usize],
) -> Result<Response, ApiError> {
    let query = params::parse_alarms(params, state.timezone)?;
    let utc = |t| render::rfc3339(t, chrono_tz::UTC);
    let mut pairs = vec![("limit", query.limit.to_string())];
    if query.active_only {
        pairs.push(("active", "true".to_owned()));
    }
    pairs.extend(query.start.map(|t| ("start", utc(t))));
    pairs.extend(query.end.map(|t| ("end", utc(t))));
    let path = merge::path_with("/api/alarms", &pairs);
    let mine = if local {
        Some(api::local_alarms(state, &query).await?)
    } else {
        None
    };
    let (lists, reach) = rows(state, mine, peers, &path, merge::ALARM_TIMES).await;
    let merged = merge::merge_by_time(lists, "raised_at", query.limit);
    Ok(Json(reach.into_json(json!({ "items": merged }))).into_response())
}

/// One record's answer (`/api/cdrs/{id}`, its log) from the peer that holds it: the peer's
/// own answer, or 502 naming the peer when it cannot be had.
pub(crate) async fn from_peer(state: &Arc<ApiState>, peer: usize, path: &str) -> Response {
    let Some(answer) = state.cluster.ask(&[peer], path).await.pop() else {
        return json_error(StatusCode::BAD_GATEWAY, "no such peer");
    };
    match answer.read::<Value>() {
        Ok(mut body) => {
            if let Some(entries) = body.get_mut("entries").and_then(Value::as_array_mut) {
                for entry in entries {
                    merge::rezone(entry, &["at"], state.timezone);
                }
            }
            // A CDR keeps its names' order (SPEC §5), as this node's own would.
            if let Ok(mut row) = serde_json::from_value::<CdrRow>(body.clone()) {
                row.rezone(state.timezone);
                return Json(row).into_response();
            }
            Json(body).into_response()
        }
        Err(failure) => match failure.status {
            Some(status) if status.is_client_error() => {
                json_error(status, &format!("{}: {}", answer.peer, failure.reason))
            }
            _ => json_error(
                StatusCode::BAD_GATEWAY,
                &format!("node {} is unavailable: {}", answer.peer, failure.reason),
            ),
        },
    }
}
