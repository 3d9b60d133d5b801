//! Process monitoring, alarms and health (SPEC §7).
//!
//! - [`config`]: the `[monitor]` table.
//! - [`evaluate`]: the pure decisions (what is missing, restarted, over a limit, down).
//! - [`sample`]: reading `/proc` and the data dir's free space.
//! - [`webhook`]: alarms POSTed as JSON, queued and retried.
//!
//! One task runs the loop: every `interval` it samples and evaluates; every probe outcome
//! (from the probe task) is evaluated as it arrives, so that health goes down at the latest
//! `probe_failures × interval + probe_timeout` after the upstream stops answering. Each alarm
//! change is put in the store, published on `/api/events` and queued for the webhook; health
//! is set from the active alarms after every evaluation. A reload hands the loop a new
//! `[[monitor.process]]` list and its own outcome (a file that did not load is the
//! `config_invalid` alarm) through [`Control`].

pub mod config;
pub mod evaluate;
pub mod sample;
pub mod webhook;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono_tz::Tz;
use serde_json::json;
use sipedge_http::events::EventHub;
use sipedge_http::health::Health;
use sipedge_http::processes::{ProcessSource, ProcessState, WatchedProcess};
use sipedge_sip::ProxyConfig;
use sipedge_store::{Store, UnixMs, WriteOp};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use self::config::{Matcher, MonitorConfig, ProcessWatch, WebhookUrl};
use self::evaluate::{Change, Condition, Observation, Rules, State, WatchRule};
use self::sample::Sampler;
use self::webhook::Webhook;

/// Alarms read from the store at start to close those a previous run left active.
const MAX_STALE_ALARMS: usize = 10_000;

/// Why the monitor cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor: {0}")]
    Config(String),
    #[error("cannot open a UDP socket on {addr} for the upstream probe: {source}")]
    ProbeSocket {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the monitor writes to.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `node.name`, stamped on every alarm.
    pub node: String,
    /// Alarm times on `/api/events` and the webhook are shown in the node's zone.
    pub timezone: Tz,
    /// Keeps alarms (history for `/api/alarms`, the gauge for `/metrics`).
    pub store: Store,
    /// `alarm.raised` / `alarm.cleared` for `/api/events`.
    pub events: EventHub,
    /// Set from the active alarms after every evaluation.
    pub health: Health,
    /// The database sink, whose lag raises `sink_lag`, when one is configured.
    pub sink: Option<Arc<crate::sink::Shared>>,
}

/// The running monitor's handles, for the API, metrics and reloads.
#[derive(Debug)]
pub struct Running {
    /// What `/api/processes` lists.
    pub processes: Arc<ProcessTable>,
    /// Present when `monitor.webhook` is configured, for its counters.
    pub webhook: Option<Webhook>,
    /// For the reload: the new watch list, and whether the file loaded.
    pub control: Control,
}

/// What a reload tells the monitor's loop.
#[derive(Debug)]
enum Update {
    /// The reloaded `[[monitor.process]]` list.
    Watches(Vec<ProcessWatch>),
    /// Whether the file at `path` loaded.
    Reload { path: String, error: Option<String> },
}

/// Hands a reload's results to the running monitor, which applies them between two looks.
#[derive(Debug, Clone)]
pub struct Control {
    /// The loop's queue; a send fails only once the monitor has stopped, which a reload
    /// then has nothing to tell.
    updates: mpsc::Sender<Update>,
}

impl Control {
    /// Replaces the watched processes; watches that keep their name keep their history.
    pub async fn watch(&self, processes: Vec<ProcessWatch>) {
        let _ = self.updates.send(Update::Watches(processes)).await;
    }

    /// Raises `config_invalid` for `path` with `error`, or clears it when the file loaded.
    pub async fn reloaded(&self, path: &Path, error: Option<String>) {
        let update = Update::Reload {
            path: path.display().to_string(),
            error,
        };
        let _ = self.updates.send(update).await;
    }
}

/// The matchers and rules of a watch list, or the first entry that does not compile.
fn watch_rules(processes: &[ProcessWatch]) -> Result<(Vec<Matcher>, Vec<WatchRule>), String> {
    let mut matchers = Vec::with_capacity(processes.len());
    let mut rules = Vec::with_capacity(processes.len());
    for (i, w) in processes.iter().enumerate() {
        let matcher = w.matcher(i)?;
        rules.push(WatchRule {
            name: w.name.clone(),
            matcher: matcher.describe(),
            min_count: w.min_count,
            max_cpu_percent: w.max_cpu_percent,
            max_rss_mb: w.max_rss_mb,
            critical: w.critical,
        });
        matchers.push(matcher);
    }
    Ok((matchers, rules))
}

/// The latest snapshot of the watched processes.
#[derive(Debug)]
pub struct ProcessTable {
    /// Replaced after every tick; read by each `/api/processes` request.
    rows: RwLock<Vec<WatchedProcess>>,
}

impl ProcessSource for ProcessTable {
    fn processes(&self) -> Vec<WatchedProcess> {
        self.rows
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The address probed and how it is shown: `sip.upstream`, with the first of `sip.ports` when
/// it names no port.
fn probe_target(sip: &ProxyConfig) -> (String, u16) {
    (
        sip.upstream.host.clone(),
        sip.upstream.port.unwrap_or(sip.ports.first),
    )
}

fn show_target(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Starts the monitor (and the probe and webhook tasks); everything ends on `shutdown`.
/// Binds the probe socket first, so a failure stops start-up before anything runs.
pub async fn start(
    config: &MonitorConfig,
    data_dir: &std::path::Path,
    sip: Option<&ProxyConfig>,
    outputs: Outputs,
    shutdown: CancellationToken,
) -> Result<Running, MonitorError> {
    let (matchers, watches) = watch_rules(&config.processes).map_err(MonitorError::Config)?;
    let probe = match sip {
        Some(sip) if config.probe_upstream => {
            let bind_ip = match sip.listen {
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                ip => ip,
            };
            let addr = SocketAddr::new(bind_ip, 0);
            let socket = UdpSocket::bind(addr)
                .await
                .map_err(|source| MonitorError::ProbeSocket { addr, source })?;
            Some((socket, probe_target(sip)))
        }
        _ => None,
    };
    let upstream = sip
        .map(|sip| {
            let (host, port) = probe_target(sip);
            show_target(&host, port)
        })
        .unwrap_or_default();
    let webhook = match &config.webhook {
        Some(url) => Some(Webhook::start(
            WebhookUrl::parse(url).map_err(|e| MonitorError::Config(format!("webhook: {e}")))?,
            config.webhook_queue,
            shutdown.clone(),
        )),
        None => None,
    };
    let rules = Rules {
        node: outputs.node.clone(),
        watches,
        probe_failures: config.probe_failures,
        upstream,
        data_dir: data_dir.display().to_string(),
        disk_min_free_mb: config.disk_min_free_mb,
        disk_min_free_percent: config.disk_min_free_percent,
    };
    let table = Arc::new(ProcessTable {
        rows: RwLock::new(Vec::new()),
    });
    let core = Core {
        rules,
        state: State::default(),
        outputs,
        webhook: webhook.clone(),
        table: table.clone(),
    };
    core.close_stale_alarms();
    core.publish_table();
    let (probe_tx, probe_rx) = mpsc::channel(8);
    if let Some((socket, target)) = probe {
        tracing::info!(upstream = %core.rules.upstream, "probing the upstream with SIP OPTIONS");
        tokio::spawn(probe_loop(
            socket,
            target,
            config.interval,
            config.probe_timeout,
            probe_tx,
            shutdown.clone(),
        ));
    }
    let sampler = Arc::new(Sampler::new(matchers, data_dir));
    let (updates, updates_rx) = mpsc::channel(8);
    tokio::spawn(run(
        core,
        sampler,
        config.interval,
        Inputs {
            probes: probe_rx,
            updates: updates_rx,
        },
        shutdown,
    ));
    Ok(Running {
        processes: table,
        webhook,
        control: Control { updates },
    })
}

/// The monitor's loop state and outputs.
#[derive(Debug)]
struct Core {
    /// The configuration as the evaluation needs it.
    rules: Rules,
    /// What the last evaluation left.
    state: State,
    outputs: Outputs,
    /// Where alarm changes are also sent, when configured.
    webhook: Option<Webhook>,
    /// Refreshed after every tick for `/api/processes`.
    table: Arc<ProcessTable>,
}

fn now() -> UnixMs {
    UnixMs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

impl Core {
    fn apply(&mut self, observation: &Observation) {
        let (next, changes) = evaluate::evaluate(&self.rules, &self.state, observation, now());
        self.settle(next, &changes);
    }

    /// Takes a reloaded watch list; returns its matchers for the sampler, or nothing when
    /// an entry does not compile (the reload's validation makes that unlikely), in which
    /// case the running list stays.
    fn rewatch(&mut self, processes: &[ProcessWatch]) -> Option<Vec<Matcher>> {
        let (matchers, watches) = match watch_rules(processes) {
            Ok(compiled) => compiled,
            Err(why) => {
                tracing::error!(reason = %why, "the reloaded monitor.process list is not applied");
                return None;
            }
        };
        let (next, changes) = evaluate::rewatch(&self.rules, &self.state, &watches, now());
        self.rules.watches = watches;
        self.settle(next, &changes);
        self.publish_table();
        Some(matchers)
    }

    fn settle(&mut self, next: State, changes: &[Change]) {
        self.state = next;
        for change in changes {
            self.emit(change);
        }
        self.outputs
            .health
            .set_down_reasons(self.state.down_reasons());
    }

    fn emit(&self, change: &Change) {
        let (event, alarm) = match change {
            Change::Raised(alarm) => ("alarm.raised", alarm),
            Change::Cleared(alarm) => ("alarm.cleared", alarm),
        };
        match change {
            Change::Raised(_) => {
                tracing::warn!(kind = alarm.kind.as_str(), target = %alarm.target, message = %alarm.message, "alarm raised")
            }
            Change::Cleared(_) => {
                tracing::info!(kind = alarm.kind.as_str(), target = %alarm.target, "alarm cleared")
            }
        }
        if let Err(e) = self
            .outputs
            .store
            .writer()
            .submit(WriteOp::PutAlarm(alarm.clone()))
        {
            tracing::error!(error = %e, "cannot store an alarm");
        }
        let shown = sipedge_http::render::alarm(alarm, self.outputs.timezone);
        self.outputs.events.publish(event, &shown);
        if let Some(webhook) = &self.webhook {
            webhook.send(&json!({ "event": event, "alarm": shown }));
        }
    }

    /// Alarms this node left active when it last stopped: whatever still holds is raised
    /// again by the first looks, so the old ones are closed rather than left open forever.
    fn close_stale_alarms(&self) {
        let Ok(active) = self.outputs.store.alarms(true, MAX_STALE_ALARMS) else {
            return;
        };
        let at = now();
        for mut alarm in active.into_iter().filter(|a| a.node == self.outputs.node) {
            alarm.cleared_at = Some(at);
            if self
                .outputs
                .store
                .writer()
                .submit(WriteOp::PutAlarm(alarm))
                .is_err()
            {
                return;
            }
        }
    }

    fn publish_table(&self) {
        let rows = self
            .rules
            .watches
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let watch = self.state.watches.get(i).cloned().unwrap_or_default();
                WatchedProcess {
                    name: rule.name.clone(),
                    matcher: rule.matcher.clone(),
                    pids: watch.current.iter().map(|p| p.pid).collect(),
                    cpu_percent: watch.cpu_percent,
                    rss_mb: watch.rss_mb,
                    state: match watch.condition {
                        Condition::Unknown => ProcessState::Unknown,
                        Condition::Ok => ProcessState::Ok,
                        Condition::Missing => ProcessState::Missing,
                        Condition::OverLimit => ProcessState::OverLimit,
                    },
                    critical: rule.critical,
                    last_change: watch.since,
                }
            })
            .collect();
        *self
            .table
            .rows
            .write()
            .unwrap_or_else(PoisonError::into_inner) = rows;
    }
}

/// What the loop hears from other tasks.
struct Inputs {
    /// Probe outcomes, as they come.
    probes: mpsc::Receiver<bool>,
    /// Reloads.
    updates: mpsc::Receiver<Update>,
}

async fn run(
    mut core: Core,
    mut sampler: Arc<Sampler>,
    interval: Duration,
    mut inputs: Inputs,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {
                let sampler = sampler.clone();
                let store = core.outputs.store.clone();
                // Reading /proc is blocking file I/O.
                let looked = tokio::task::spawn_blocking(move || {
                    let writer = store.writer_stats();
                    Observation::Tick {
                        processes: sampler.processes(),
                        disk: sampler.disk(),
                        store_failures: writer.failures,
                        store_failing: writer.failing,
                    }
                })
                .await;
                match looked {
                    Ok(observation) => {
                        core.apply(&observation);
                        core.publish_table();
                    }
                    Err(e) => tracing::error!(error = %e, "monitor sampling failed"),
                }
                if let Some(sink) = &core.outputs.sink {
                    let state = sink.snapshot();
                    let observation = Observation::SinkLag {
                        sink: crate::sink::NAME.to_owned(),
                        target: state.target.clone(),
                        lag: state.lag(now()),
                        limit: state.lag_alarm,
                    };
                    core.apply(&observation);
                }
            }
            Some(answered) = inputs.probes.recv() => core.apply(&Observation::Probe { answered }),
            Some(update) = inputs.updates.recv() => match update {
                Update::Watches(processes) => {
                    if let Some(matchers) = core.rewatch(&processes) {
                        sampler = Arc::new(sampler.rematch(matchers));
                    }
                }
                Update::Reload { path, error } => core.apply(&Observation::Reload { path, error }),
            },
        }
    }
}

/// Sends one OPTIONS every `interval` and reports whether it was answered within `timeout`.
async fn probe_loop(
    socket: UdpSocket,
    (host, port): (String, u16),
    interval: Duration,
    timeout: Duration,
    outcomes: mpsc::Sender<bool>,
    shutdown: CancellationToken,
) {
    // Distinguishes this run's probes from an earlier run's late replies.
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let target = show_target(&host, port);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u32 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        seq = seq.wrapping_add(1) % (1 << 31);
        let answered = tokio::select! {
            () = shutdown.cancelled() => return,
            answered = probe_once(&socket, &host, port, &target, seq, nonce, timeout) => answered,
        };
        if outcomes.send(answered).await.is_err() {
            return;
        }
    }
}

async fn probe_once(
    socket: &UdpSocket,
    host: &str,
    port: u16,
    target: &str,
    seq: u32,
    nonce: u64,
    timeout: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    // Connecting (again) follows a name that moved, and picks the local address the
    // upstream will answer to.
    let sent = async {
        socket.connect((host, port)).await?;
        let local = socket.local_addr()?;
        let probe = sipedge_sip::probe::options(target, local, seq, nonce);
        socket.send(&probe.bytes).await?;
        Ok::<_, std::io::Error>(probe)
    };
    let probe = match tokio::time::timeout_at(deadline, sent).await {
        Ok(Ok(probe)) => probe,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, upstream = %target, "probe not sent");
            tokio::time::sleep_until(deadline).await;
            return false;
        }
        Err(_) => return false,
    };
    let mut buf = vec![0u8; 65_535];
    loop {
        match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(n)) => {
                if probe
                    .reply_status(buf.get(..n).unwrap_or_default())
                    .is_some()
                {
                    return true;
                }
            }
            // An ICMP unreachable for an earlier probe surfaces here; this one may still be
            // answered before the deadline.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, upstream = %target, "probe receive failed");
                tokio::time::sleep_until(deadline).await;
                return false;
            }
        }
    }
}
