//! `sipedge serve`: load the config, bind every listener (so nothing half-starts), run every
//! part until a signal, then drain.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use sipedge_http::access::Access;
use sipedge_http::account::{self, AccountMetrics, AccountState};
use sipedge_http::api::{self, ApiState};
use sipedge_http::cluster::Cluster;
use sipedge_http::events::EventHub;
use sipedge_http::health::Health;
use sipedge_http::server::{self, ListenerStats, ServerLimits};
use sipedge_sip::call::task as tracking_task;
use sipedge_sip::limit::SourceLimiter;
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
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    Sip(#[from] sipedge_sip::Error),
    #[error(transparent)]
    Monitor(#[from] crate::monitor::MonitorError),
    #[error("{0}")]
    Sink(String),
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
    let log_level = crate::logging::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => return fail(&StartError::Runtime(err)),
    };
    let outcome = runtime.block_on(run(config, config_path, log_level));
    // Tasks still winding down may log; their lines go out with the rest below.
    drop(runtime);
    crate::logwriter::flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &StartError) -> ExitCode {
    // Plain stderr, not the logger: this one line must reach the operator whatever the
    // configured level or format, after whatever was logged before it.
    crate::logwriter::flush();
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

async fn run(
    config: Config,
    config_path: &Path,
    log_level: crate::logging::LevelHandle,
) -> Result<(), StartError> {
    prepare_data_dir(&config.node.data_dir)?;
    let account_listener = bind("account responder", config.account.listen).await?;
    let api_listener = bind("CDR API", config.api.listen).await?;
    let data_dir = config.node.data_dir.display().to_string();
    let store = Store::open(
        &config.node.data_dir,
        config.store.engine,
        config.store_settings(),
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
    let cluster = Cluster::new(&config.node.name, &config.cluster).map_err(StartError::Cluster)?;
    let (relayed_tx, relayed_rx) =
        tokio::sync::mpsc::channel(config.sip.as_ref().map_or(1, |s| s.handoff_queue));
    let hep = match (&config.hep, &config.sip) {
        (Some(hep), Some(sip)) => Some((
            crate::passive::hep::HepListener::bind(hep, sip)
                .await
                .map_err(|source| StartError::Bind {
                    what: "HEP listener",
                    addr: hep.listen,
                    source,
                })?,
            relayed_tx.clone(),
        )),
        _ => None,
    };
    let sip = match &config.sip {
        Some(sip) => Some(sipedge_sip::Proxy::bind(sip, &config.node.data_dir, relayed_tx).await?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    crate::shutdown::watch(shutdown.clone(), config.node.stop_timeout)
        .map_err(StartError::Signals)?;
    let sink = match &config.sink.postgres {
        Some(pg) => Some(
            crate::sink::start(pg, &store, &config.node.data_dir, shutdown.clone())
                .map_err(StartError::Sink)?,
        ),
        None => None,
    };
    // Tracking ends when the proxy has stopped and dropped its end of the hand-off, so that
    // every message relayed before the stop still reaches a CDR.
    let tracking = match &sip {
        Some(proxy) => {
            let settings = proxy.tracking_config(config.node.name.clone());
            let (handle, task) =
                tracking_task::spawn(settings, &store, relayed_rx, std::future::pending())
                    .map_err(|source| StartError::Store {
                        path: config.node.data_dir.display().to_string(),
                        source,
                    })?;
            Some((handle, task))
        }
        None => None,
    };
    let health = Health::default();
    let account_metrics = AccountMetrics::default();
    let events = EventHub::default();
    events.set_max_clients(config.api.max_sse_clients);
    // Streams of /api/events end on stop, so that the API listener can drain.
    let closing = events.clone();
    let stopping = shutdown.clone();
    tokio::spawn(async move {
        stopping.cancelled().await;
        closing.close();
    });

    let monitor = crate::monitor::start(
        &config.monitor,
        &config.node.data_dir,
        config.sip.as_ref(),
        crate::monitor::Outputs {
            node: config.node.name.clone(),
            timezone: config.node.timezone.0,
            store: store.clone(),
            events: events.clone(),
            health: health.clone(),
            sink: sink.as_ref().map(|s| s.shared.clone()),
        },
        shutdown.clone(),
    )
    .await?;
    let mut registry = crate::metrics::registry(
        &account_metrics,
        &store,
        sip.as_ref().map(sipedge_sip::Proxy::metrics),
        tracking.as_ref().map(|(handle, _)| handle.clone()),
        sink.as_ref().map(|s| s.shared.clone()),
    );
    if let Some(webhook) = &monitor.webhook {
        webhook.register(&mut registry);
    }
    if let Some((listener, _)) = &hep {
        listener.metrics().register(&mut registry);
    }
    let account_stats = Arc::new(ListenerStats::default());
    let api_stats = Arc::new(ListenerStats::default());
    crate::metrics::register_http(
        &mut registry,
        events.clone(),
        [
            ("account", account_stats.clone()),
            ("api", api_stats.clone()),
        ],
    );

    let account_state = Arc::new(AccountState {
        config: std::sync::RwLock::new(Arc::new(config.account.clone())),
        timezone: config.node.timezone.0,
        node: config.node.name.clone(),
        health: health.clone(),
        metrics: account_metrics.clone(),
        gate: Arc::new(AccountGate(SourceLimiter::new(
            config.account.source_rate_limit,
            config.account.source_rate_burst,
        ))),
    });
    let access = Arc::new(Access::new(config.api.allow.clone(), &config.api.users));
    let account_router = account::router(account_state.clone());
    let api_router = api::router(Arc::new(ApiState {
        node: config.node.name.clone(),
        timezone: config.node.timezone.0,
        health: health.clone(),
        store: store.clone(),
        cursor_key,
        access: access.clone(),
        live: match &tracking {
            Some((handle, _)) => Arc::new(crate::live::TrackedCalls {
                tracking: handle.clone(),
                zone: config.node.timezone.0,
            }),
            None => Arc::new(crate::live::NoCallTracking),
        },
        events: events.clone(),
        metrics: Arc::new(registry),
        processes: monitor.processes,
        cluster: Arc::new(cluster),
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
    let live = crate::reload::Live {
        account: account_state,
        access,
        log: log_level,
        monitor: monitor.control,
        limiter: sip.as_ref().map(sipedge_sip::Proxy::limiter),
    };
    crate::reload::spawn(
        config_path.to_owned(),
        config.clone(),
        live,
        shutdown.clone(),
    )
    .map_err(StartError::Signals)?;
    tracing::info!(node = %config.node.name, version = env!("CARGO_PKG_VERSION"), "sipedge started");
    crate::notify::ready("serving");
    crate::notify::spawn_watchdog();

    let tasks = [
        tokio::spawn(server::serve(
            "account",
            account_listener,
            account_router,
            ServerLimits {
                max_connections: config.account.max_connections,
                header_read_timeout: config.account.header_timeout,
                ..ServerLimits::default()
            },
            account_stats,
            shutdown.clone(),
        )),
        tokio::spawn(server::serve(
            "api",
            api_listener,
            api_router,
            ServerLimits {
                max_connections: config.api.max_connections,
                header_read_timeout: config.api.header_timeout,
                ..ServerLimits::default()
            },
            api_stats,
            shutdown.clone(),
        )),
    ];
    let sip_task = sip.map(|p| tokio::spawn(p.run(shutdown.clone().cancelled_owned())));
    if let Some((handle, _)) = &tracking {
        tokio::spawn(crate::live::forward_events(
            handle.clone(),
            events,
            config.node.timezone.0,
        ));
    }
    let hep_task = hep.map(|(listener, tx)| tokio::spawn(listener.run(tx, shutdown.clone())));
    let tracking_task = tracking.map(|(_, task)| task);
    let sink_tasks = sink.into_iter().flat_map(|s| s.tasks);
    for task in tasks
        .into_iter()
        .chain(sip_task)
        .chain(hep_task)
        .chain(tracking_task)
        .chain(sink_tasks)
    {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "a task failed");
        }
    }
    // Every part has handed its last writes to the store; make them durable before exit.
    if let Err(err) = store.flush(config.node.stop_timeout) {
        tracing::error!(error = %err, "the store could not flush its last writes");
    }
    drop(store);
    tracing::info!("sipedge stopped");
    Ok(())
}

/// The relay's per-source token buckets, limiting the account listener's clients.
#[derive(Debug)]
struct AccountGate(SourceLimiter);

impl account::SourceGate for AccountGate {
    fn allow(&self, client: std::net::IpAddr) -> bool {
        self.0.allow(client, std::time::Instant::now())
    }

    fn set(&self, rate: u32, burst: u32) {
        self.0.set(rate, burst);
    }
}
