//! `sipedge serve`: load the config, bind every listener (so nothing half-starts), run every
//! part until a signal, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use chrono_tz::Tz;
use sipedge_http::access::Access;
use sipedge_http::account::{self, AccountMetrics, AccountState};
use sipedge_http::api::{self, ApiState, LiveSource};
use sipedge_http::events::EventHub;
use sipedge_http::health::Health;
use sipedge_http::render;
use sipedge_http::server::{self, ServerLimits};
use sipedge_sip::call::{self, LiveCall, LiveCalls, LiveEvent, TrackingConfig};
use sipedge_store::UnixMs;
use sipedge_store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::EXIT_CONFIG;
use crate::config::Config;

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot listen on {addr} for the {what}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot use the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot read or make the API cursor key in {path}: {source}")]
    CursorKey {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sip(#[from] sipedge_sip::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot watch signals: {0}")]
    Signals(std::io::Error),
}

pub fn main(config_path: &Path) -> ExitCode {
    let config = match Config::load(config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("sipedge: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&StartError::Runtime(err)),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &StartError) -> ExitCode {
    // Plain stderr, not the logger: this one line must reach the operator whatever the
    // configured level or format.
    eprintln!("sipedge: {err}");
    ExitCode::from(EXIT_CONFIG)
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

fn prepare_data_dir(path: &Path) -> Result<(), StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    // Creating the directory succeeds on a read-only mount that already has it; a probe file
    // finds that now rather than at the first CDR.
    let probe = path.join(".sipedge-write-probe");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)
}

async fn run(config: Config) -> Result<(), StartError> {
    prepare_data_dir(&config.node.data_dir)?;
    let account_listener = bind("account responder", config.account.listen).await?;
    let api_listener = bind("CDR API", config.api.listen).await?;
    let data_dir = config.node.data_dir.display().to_string();
    let store = Store::open(
        &config.node.data_dir,
        config.store.engine,
        config.store.settings(),
    )
    .map_err(|source| StartError::Store {
        path: data_dir.clone(),
        source,
    })?;
    let cursor_key =
        api::load_cursor_key(&config.node.data_dir).map_err(|source| StartError::CursorKey {
            path: data_dir,
            source,
        })?;
    // The relay hands every message to call tracking through this queue.
    let (tracking_tx, tracking_rx) =
        tokio::sync::mpsc::channel(config.sip.as_ref().map_or(1, |s| s.handoff_queue));
    let sip = match &config.sip {
        Some(sip) => Some(sipedge_sip::Proxy::bind(sip, &config.node.data_dir, tracking_tx).await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    crate::shutdown::watch(shutdown.clone()).map_err(StartError::Signals)?;
    let health = Health::default();
    let account_metrics = AccountMetrics::default();
    let events = EventHub::default();
    // Streams of /api/events end on stop, so that the API listener can drain.
    let closing = events.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        closing.close();
    });
    let zone = config.node.timezone.0;
    let tracking = match &config.sip {
        Some(sip) => {
            let (tracking, task) = call::task::spawn(
                TrackingConfig::new(config.node.name.clone(), sip.call_timeout),
                &store,
                tracking_rx,
                shutdown.clone().cancelled_owned(),
            )
            .map_err(|source| StartError::Store {
                path: config.node.data_dir.display().to_string(),
                source,
            })?;
            tokio::spawn(publish_call_events(
                tracking.subscribe(),
                events.clone(),
                zone,
            ));
            Some((tracking, task))
        }
        None => None,
    };
    let live: Arc<dyn LiveSource> = match &tracking {
        Some((tracking, _)) => Arc::new(TrackedCalls {
            calls: tracking.live().clone(),
            zone,
        }),
        None => Arc::new(NoCallTracking),
    };

    let account_router = account::router(Arc::new(AccountState {
        config: config.account.clone(),
        timezone: config.node.timezone.0,
        node: config.node.name.clone(),
        health: health.clone(),
        metrics: account_metrics.clone(),
    }));
    let api_router = api::router(Arc::new(ApiState {
        node: config.node.name.clone(),
        timezone: config.node.timezone.0,
        health: health.clone(),
        store: store.clone(),
        cursor_key,
        access: Arc::new(Access::new(config.api.allow.clone(), &config.api.users)),
        live,
        events,
        metrics: Arc::new(crate::metrics::registry(
            &account_metrics,
            &store,
            sip.as_ref().map(sipedge_sip::Proxy::metrics),
            tracking.as_ref().map(|(t, _)| t.clone()),
        )),
    }));

    for (name, listener) in [("account", &account_listener), ("api", &api_listener)] {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(listener = %name, addr = %addr, "listening");
        }
    }
    for (name, first, last) in sip.iter().flat_map(sipedge_sip::Proxy::listening) {
        tracing::info!(listener = %name, addr = %format!("{first}-{}", last.port()), "listening");
    }
    if let Some(proxy) = &sip {
        tracing::info!(advertise = %proxy.advertise(), "SIP Via and Record-Route address");
    }
    tracing::info!(node = %config.node.name, version = env!("CARGO_PKG_VERSION"), "sipedge started");

    let limits = ServerLimits::default();
    let tasks = [
        tokio::spawn(server::serve(
            "account",
            account_listener,
            account_router,
            limits,
            shutdown.clone(),
        )),
        tokio::spawn(server::serve(
            "api",
            api_listener,
            api_router,
            limits,
            shutdown.clone(),
        )),
    ];
    let sip_task = sip.map(|p| tokio::spawn(p.run(shutdown.clone().cancelled_owned())));
    let tracking_task = tracking.map(|(_, task)| task);
    for task in tasks.into_iter().chain(sip_task).chain(tracking_task) {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "a listener task failed");
        }
    }
    drop(store);
    tracing::info!("sipedge stopped");
    Ok(())
}

/// The calls in progress as call tracking keeps them, shown in the node's zone.
#[derive(Debug)]
struct TrackedCalls {
    /// Written by the tracking task, read per request.
    calls: LiveCalls,
    /// `node.timezone`.
    zone: Tz,
}

impl LiveSource for TrackedCalls {
    fn live_calls(&self) -> Vec<serde_json::Value> {
        self.calls
            .list()
            .iter()
            .map(|c| live_call(c, self.zone))
            .collect()
    }
}

/// A live call as `/api/calls/live` and the `call.*` events show it: the CDR's names, times
/// RFC 3339 in the node's zone.
fn live_call(call: &LiveCall, zone: Tz) -> serde_json::Value {
    let time = |t: UnixMs| render::rfc3339(t, zone);
    serde_json::json!({
        "id": call.id.to_string(),
        "node": call.node,
        "call_id": call.call_id,
        "caller": call.caller,
        "called": call.called,
        "caller_uri": call.caller_uri,
        "called_uri": call.called_uri,
        "call_type": call.call_type,
        "state": call.state,
        "start_time": time(call.start_time),
        "ring_time": call.ring_time.map(time),
        "answer_time": call.answer_time.map(time),
        "video_started_at": call.video_started_at.map(time),
        "transport": call.transport,
        "terminal": call.terminal,
    })
}

/// Forwards call tracking's events to the API's event hub until tracking stops.
async fn publish_call_events(
    mut events: tokio::sync::broadcast::Receiver<LiveEvent>,
    hub: EventHub,
    zone: Tz,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(event) => {
                hub.publish(event.kind.name(), &live_call(&event.call, zone));
            }
            Err(RecvError::Lagged(skipped)) => {
                // Clients cannot replay what the hub never got: tell them to reload.
                tracing::warn!(skipped, "live-call events skipped: the API fell behind");
                hub.publish(
                    "reset",
                    &serde_json::json!({ "reason": format!("{skipped} call events were skipped") }),
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// The live-call source while no call tracking runs in this process: no calls in progress.
#[derive(Debug)]
struct NoCallTracking;

impl LiveSource for NoCallTracking {
    fn live_calls(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}
