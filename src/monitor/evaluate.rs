//! The monitor's decisions, without I/O: from the previous state and what was just observed,
//! the new state and the alarms raised or cleared.

use std::collections::BTreeMap;
use std::time::Duration;

use sipedge_store::{Alarm, AlarmId, AlarmKind, Severity, UnixMs};

/// A `process_restarted` alarm clears itself after this long (SPEC §11).
pub const RESTARTED_CLEARS_AFTER_MS: i64 = 5 * 60 * 1000;

/// What the rules need to know about one watched process.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchRule {
    /// Alarm target and display name; a reload keeps the history of a watch by its name.
    pub name: String,
    /// The matcher as `/api/processes` shows it; when a reload changes it, the watch's
    /// history no longer describes the processes it matches.
    pub matcher: String,
    /// Fewer matching processes is `process_missing`.
    pub min_count: usize,
    /// Over it (all matching processes together) is `process_cpu`.
    pub max_cpu_percent: Option<f64>,
    /// Over it (all matching processes together) is `process_memory`.
    pub max_rss_mb: Option<f64>,
    /// Missing makes the node unhealthy.
    pub critical: bool,
}

/// The fixed inputs of every evaluation, from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// `node.name`, stamped on alarms.
    pub node: String,
    /// One per `[[monitor.process]]`, in order; samples come in the same order.
    pub watches: Vec<WatchRule>,
    /// Consecutive unanswered probes that make the upstream down.
    pub probe_failures: u32,
    /// The probed upstream as shown in alarms.
    pub upstream: String,
    /// The data dir as shown in alarms.
    pub data_dir: String,
    /// `disk_low` below this many free MB (0 = no limit).
    pub disk_min_free_mb: u64,
    /// `disk_low` below this free percentage (0 = no limit).
    pub disk_min_free_percent: f64,
}

/// One process as read from `/proc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// Shown by `/api/processes`; with the start time, the process's identity.
    pub pid: i32,
    /// Start time in clock ticks after boot: with the pid, tells a reused pid from the same
    /// process.
    pub start_ticks: u64,
    /// User + system CPU time used so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory in MB.
    pub rss_mb: f64,
}

/// Free space of the data dir's file system.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskSample {
    /// Compared with `disk_min_free_mb`.
    pub free_mb: u64,
    /// Compared with `disk_min_free_percent`.
    pub free_percent: f64,
}

/// What one look at the system found.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The periodic look: per watch (in [`Rules::watches`] order) the processes that match;
    /// the disk when it could be read; the store writer's failure counter, and whether its
    /// last commit attempt failed (its retries back off to longer than an interval).
    Tick {
        processes: Vec<Vec<ProcSample>>,
        disk: Option<DiskSample>,
        store_failures: u64,
        store_failing: bool,
    },
    /// One upstream probe's outcome: answered (any status) or timed out.
    Probe { answered: bool },
    /// A reload's outcome: the configuration file, and why it did not load (`None` when it
    /// did).
    Reload { path: String, error: Option<String> },
    /// How old the oldest CDR waiting for the sink `sink` (shipping to `target`) is, and
    /// its `lag_alarm`.
    SinkLag {
        sink: String,
        target: String,
        lag: Duration,
        limit: Duration,
    },
}

/// A watched process's condition, as `/api/processes` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Not looked at yet.
    Unknown,
    Ok,
    Missing,
    OverLimit,
}

/// What is remembered of one watched process between looks.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchState {
    /// The processes of the last look, sorted by pid.
    pub current: Vec<ProcSample>,
    /// The last non-empty set of (pid, start): a process that comes back under another pid
    /// after being missing is a restart.
    pub known: Vec<(i32, u64)>,
    /// CPU % over the last interval, once two looks exist.
    pub cpu_percent: Option<f64>,
    /// Resident memory of all matching processes at the last look.
    pub rss_mb: f64,
    /// What `/api/processes` shows.
    pub condition: Condition,
    /// When `condition` last changed.
    pub since: Option<UnixMs>,
}

impl Default for WatchState {
    fn default() -> Self {
        WatchState {
            current: Vec::new(),
            known: Vec::new(),
            cpu_percent: None,
            rss_mb: 0.0,
            condition: Condition::Unknown,
            since: None,
        }
    }
}

/// Everything the monitor remembers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    /// One per watch.
    pub watches: Vec<WatchState>,
    /// When the last tick was, for CPU % over the elapsed time.
    pub last_tick: Option<UnixMs>,
    /// Probes in a row without a reply.
    pub probe_misses: u32,
    /// The store's failure counter at the last tick.
    pub store_failures: Option<u64>,
    /// Active alarms by (kind name, target).
    pub active: BTreeMap<(&'static str, String), Alarm>,
}

/// One alarm change, to store, publish and send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Raised(Alarm),
    Cleared(Alarm),
}

impl State {
    /// Why the node cannot serve (SPEC §7): the upstream is down or a critical process is
    /// missing; empty when it can.
    pub fn down_reasons(&self) -> Vec<String> {
        self.active
            .values()
            .filter(|a| {
                a.kind == AlarmKind::UpstreamDown
                    || (a.kind == AlarmKind::ProcessMissing && a.severity == Severity::Critical)
            })
            .map(|a| a.message.clone())
            .collect()
    }
}

/// Applies one observation.
pub fn evaluate(
    rules: &Rules,
    previous: &State,
    observation: &Observation,
    now: UnixMs,
) -> (State, Vec<Change>) {
    let mut next = previous.clone();
    let mut out = Alarms {
        rules,
        state: &mut next.active,
        changes: Vec::new(),
        now,
    };
    match observation {
        Observation::Probe { answered } => {
            next.probe_misses = if *answered {
                0
            } else {
                previous.probe_misses.saturating_add(1)
            };
            let down = next.probe_misses >= rules.probe_failures;
            out.set(
                AlarmKind::UpstreamDown,
                &rules.upstream,
                down,
                Severity::Critical,
                || {
                    format!(
                        "upstream Sipserver {} did not answer {} SIP OPTIONS probes in a row",
                        rules.upstream, next.probe_misses
                    )
                },
            );
        }
        Observation::Reload { path, error } => out.set(
            AlarmKind::ConfigInvalid,
            path,
            error.is_some(),
            Severity::Warning,
            || {
                format!(
                    "the configuration file did not load, the running configuration stays: {}",
                    error.as_deref().unwrap_or_default()
                )
            },
        ),
        Observation::SinkLag {
            sink,
            target,
            lag,
            limit,
        } => {
            // Raised over the limit, cleared under half of it: a lag that hovers at the
            // limit while a backlog drains does not flap.
            let on = if out.is_active(AlarmKind::SinkLag, sink) {
                *lag >= *limit / 2
            } else {
                *lag > *limit
            };
            out.set(AlarmKind::SinkLag, sink, on, Severity::Major, || {
                format!(
                    "CDRs have waited {} for the database {target}, over sink.{sink}.lag_alarm = {}; see `sipedge sink status`",
                    humantime::format_duration(Duration::from_secs(lag.as_secs())),
                    humantime::format_duration(*limit)
                )
            });
        }
        Observation::Tick {
            processes,
            disk,
            store_failures,
            store_failing,
        } => {
            next.watches
                .resize_with(rules.watches.len(), WatchState::default);
            let elapsed_s = previous
                .last_tick
                .map(|t| (now.0 - t.0) as f64 / 1000.0)
                .filter(|s| *s > 0.0);
            for (i, rule) in rules.watches.iter().enumerate() {
                let sample = processes.get(i).map_or(&[][..], Vec::as_slice);
                let watch = &mut next.watches[i];
                watch_tick(rule, watch, sample, elapsed_s, now, &mut out);
            }
            next.last_tick = Some(now);
            if let Some(disk) = disk {
                let low_mb = rules.disk_min_free_mb > 0 && disk.free_mb < rules.disk_min_free_mb;
                let low_pct = rules.disk_min_free_percent > 0.0
                    && disk.free_percent < rules.disk_min_free_percent;
                out.set(
                    AlarmKind::DiskLow,
                    &rules.data_dir,
                    low_mb || low_pct,
                    Severity::Major,
                    || {
                        format!(
                            "{} has {} MB ({:.1}%) free, below the limit of {} MB / {}%",
                            rules.data_dir,
                            disk.free_mb,
                            disk.free_percent,
                            rules.disk_min_free_mb,
                            rules.disk_min_free_percent
                        )
                    },
                );
            }
            let grown = previous
                .store_failures
                .map_or(0, |before| store_failures.saturating_sub(before));
            next.store_failures = Some(*store_failures);
            out.set(
                AlarmKind::StoreError,
                &rules.data_dir,
                grown > 0 || *store_failing,
                Severity::Critical,
                || format!("{grown} store commit attempts failed in the last interval (they are retried); check the disk of {}", rules.data_dir),
            );
            out.expire_restarts();
        }
    }
    let changes = out.changes;
    (next, changes)
}

/// The alarm kinds about one watched process, whose target is the watch's name.
const PROCESS_KINDS: [AlarmKind; 4] = [
    AlarmKind::ProcessMissing,
    AlarmKind::ProcessRestarted,
    AlarmKind::ProcessCpu,
    AlarmKind::ProcessMemory,
];

/// Applies a reloaded watch list (`rules.watches` is the running one): a watch that keeps
/// its name and matcher keeps its history and alarms; the alarms of a removed watch, or of
/// one whose matcher changed, are cleared, and that watch starts afresh. A watch whose
/// `critical` changed has its `process_missing` cleared, so that the next look raises it
/// again with the new severity and health follows.
pub fn rewatch(
    rules: &Rules,
    previous: &State,
    watches: &[WatchRule],
    now: UnixMs,
) -> (State, Vec<Change>) {
    let mut next = previous.clone();
    // A running watch by name, with its history once it has been looked at.
    let running = |name: &str| {
        let i = rules.watches.iter().position(|r| r.name == name)?;
        Some((rules.watches.get(i)?, previous.watches.get(i)))
    };
    next.watches = watches
        .iter()
        .map(|rule| match running(&rule.name) {
            Some((old, Some(state))) if old.matcher == rule.matcher => state.clone(),
            _ => WatchState::default(),
        })
        .collect();
    let stale: Vec<(AlarmKind, String)> = previous
        .active
        .values()
        .filter(|a| PROCESS_KINDS.contains(&a.kind))
        .filter(|a| {
            let new = watches.iter().find(|w| w.name == a.target);
            match (running(&a.target), new) {
                (Some((old, _)), Some(new)) => {
                    old.matcher != new.matcher
                        || (old.critical != new.critical && a.kind == AlarmKind::ProcessMissing)
                }
                _ => true,
            }
        })
        .map(|a| (a.kind, a.target.clone()))
        .collect();
    let mut out = Alarms {
        rules,
        state: &mut next.active,
        changes: Vec::new(),
        now,
    };
    for (kind, target) in stale {
        out.clear(kind, &target);
    }
    let changes = out.changes;
    (next, changes)
}

fn watch_tick(
    rule: &WatchRule,
    watch: &mut WatchState,
    sample: &[ProcSample],
    elapsed_s: Option<f64>,
    now: UnixMs,
    out: &mut Alarms<'_>,
) {
    let mut current = sample.to_vec();
    current.sort_by_key(|p| p.pid);
    let ids: Vec<(i32, u64)> = current.iter().map(|p| (p.pid, p.start_ticks)).collect();
    // A restart: a process seen before is gone and one not seen before is there.
    let restarted = !watch.known.is_empty()
        && !ids.is_empty()
        && watch.known.iter().any(|k| !ids.contains(k))
        && ids.iter().any(|k| !watch.known.contains(k));
    // CPU used by the processes present in both looks, over the time between them.
    watch.cpu_percent = elapsed_s.map(|elapsed| {
        let used: f64 = current
            .iter()
            .filter_map(|p| {
                watch
                    .current
                    .iter()
                    .find(|q| q.pid == p.pid && q.start_ticks == p.start_ticks)
                    .map(|q| (p.cpu_seconds - q.cpu_seconds).max(0.0))
            })
            .sum();
        used / elapsed * 100.0
    });
    watch.rss_mb = current.iter().map(|p| p.rss_mb).sum();
    if !ids.is_empty() {
        watch.known = ids;
    }
    let count = current.len();
    watch.current = current;

    let missing = count < rule.min_count;
    let severity = if rule.critical {
        Severity::Critical
    } else {
        Severity::Major
    };
    out.set(
        AlarmKind::ProcessMissing,
        &rule.name,
        missing,
        severity,
        || {
            format!(
                "process {} missing: {count} running, at least {} expected",
                rule.name, rule.min_count
            )
        },
    );
    if restarted && !out.is_active(AlarmKind::ProcessRestarted, &rule.name) {
        let pids: Vec<String> = watch.current.iter().map(|p| p.pid.to_string()).collect();
        out.raise(
            AlarmKind::ProcessRestarted,
            &rule.name,
            Severity::Minor,
            format!(
                "process {} restarted: now pid {}",
                rule.name,
                pids.join(", ")
            ),
        );
    }
    let cpu_over = match (rule.max_cpu_percent, watch.cpu_percent) {
        (Some(limit), Some(cpu)) => cpu > limit,
        _ => false,
    };
    let cpu = watch.cpu_percent.unwrap_or(0.0);
    out.set(
        AlarmKind::ProcessCpu,
        &rule.name,
        cpu_over,
        Severity::Minor,
        || {
            format!(
                "process {} uses {cpu:.1}% CPU, over its limit of {}%",
                rule.name,
                rule.max_cpu_percent.unwrap_or(0.0)
            )
        },
    );
    let rss = watch.rss_mb;
    let rss_over = rule.max_rss_mb.is_some_and(|limit| rss > limit);
    out.set(
        AlarmKind::ProcessMemory,
        &rule.name,
        rss_over,
        Severity::Major,
        || {
            format!(
                "process {} uses {rss:.1} MB resident memory, over its limit of {} MB",
                rule.name,
                rule.max_rss_mb.unwrap_or(0.0)
            )
        },
    );
    let condition = if missing {
        Condition::Missing
    } else if cpu_over || rss_over {
        Condition::OverLimit
    } else {
        Condition::Ok
    };
    if condition != watch.condition {
        watch.condition = condition;
        watch.since = Some(now);
    }
}

/// Raising and clearing against the active set, collecting the changes.
struct Alarms<'a> {
    /// For the node name stamped on raised alarms.
    rules: &'a Rules,
    /// The active alarms being updated.
    state: &'a mut BTreeMap<(&'static str, String), Alarm>,
    /// What changed, in order.
    changes: Vec<Change>,
    /// Raise and clear time.
    now: UnixMs,
}

impl Alarms<'_> {
    fn is_active(&self, kind: AlarmKind, target: &str) -> bool {
        self.state.contains_key(&(kind.as_str(), target.to_owned()))
    }

    /// Raises the alarm when `on` and it is not active, clears it when not `on` and it is.
    fn set(
        &mut self,
        kind: AlarmKind,
        target: &str,
        on: bool,
        severity: Severity,
        message: impl FnOnce() -> String,
    ) {
        match (on, self.is_active(kind, target)) {
            (true, false) => self.raise(kind, target, severity, message()),
            (false, true) => self.clear(kind, target),
            _ => {}
        }
    }

    fn raise(&mut self, kind: AlarmKind, target: &str, severity: Severity, message: String) {
        let alarm = Alarm {
            id: AlarmId::new(self.now, &self.rules.node, kind, target),
            node: self.rules.node.clone(),
            kind,
            target: target.to_owned(),
            severity,
            message,
            raised_at: self.now,
            cleared_at: None,
        };
        self.state
            .insert((kind.as_str(), target.to_owned()), alarm.clone());
        self.changes.push(Change::Raised(alarm));
    }

    fn clear(&mut self, kind: AlarmKind, target: &str) {
        if let Some(mut alarm) = self.state.remove(&(kind.as_str(), target.to_owned())) {
            alarm.cleared_at = Some(self.now);
            self.changes.push(Change::Cleared(alarm));
        }
    }

    fn expire_restarts(&mut self) {
        let due: Vec<String> = self
            .state
            .values()
            .filter(|a| {
                a.kind == AlarmKind::ProcessRestarted
                    && self.now.0 - a.raised_at.0 >= RESTARTED_CLEARS_AFTER_MS
            })
            .map(|a| a.target.clone())
            .collect();
        for target in due {
            self.clear(AlarmKind::ProcessRestarted, &target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            node: "sh-01".into(),
            watches: vec![
                WatchRule {
                    name: "web".into(),
                    matcher: "name web".into(),
                    min_count: 1,
                    max_cpu_percent: Some(50.0),
                    max_rss_mb: Some(100.0),
                    critical: false,
                },
                WatchRule {
                    name: "sipserver".into(),
                    matcher: "name sipserver".into(),
                    min_count: 2,
                    max_cpu_percent: None,
                    max_rss_mb: None,
                    critical: true,
                },
            ],
            probe_failures: 3,
            upstream: "10.0.0.5:14500".into(),
            data_dir: "/data".into(),
            disk_min_free_mb: 1000,
            disk_min_free_percent: 5.0,
        }
    }

    /// A process: pid, start, CPU seconds so far, RSS MB.
    fn p(pid: i32, start: u64, cpu: f64, rss: f64) -> ProcSample {
        ProcSample {
            pid,
            start_ticks: start,
            cpu_seconds: cpu,
            rss_mb: rss,
        }
    }

    const DISK_OK: DiskSample = DiskSample {
        free_mb: 50_000,
        free_percent: 50.0,
    };

    fn tick(web: &[ProcSample], sipserver: &[ProcSample]) -> Observation {
        tick_with(web, sipserver, Some(DISK_OK), 0)
    }

    fn tick_with(
        web: &[ProcSample],
        sipserver: &[ProcSample],
        disk: Option<DiskSample>,
        store_failures: u64,
    ) -> Observation {
        Observation::Tick {
            processes: vec![web.to_vec(), sipserver.to_vec()],
            disk,
            store_failures,
            store_failing: false,
        }
    }

    fn probe(answered: bool) -> Observation {
        Observation::Probe { answered }
    }

    fn reload(error: Option<&str>) -> Observation {
        Observation::Reload {
            path: "/etc/sipedge/sipedge.toml".into(),
            error: error.map(str::to_owned),
        }
    }

    fn sink_lag(lag_s: u64) -> Observation {
        Observation::SinkLag {
            sink: "postgres".into(),
            target: "db:5432/cdr".into(),
            lag: Duration::from_secs(lag_s),
            limit: Duration::from_secs(60),
        }
    }

    #[test]
    fn sink_lag_is_raised_over_the_limit_and_cleared_under_half_of_it() {
        check(
            &[
                (0, sink_lag(0), &[]),
                (1, sink_lag(60), &[]),
                (2, sink_lag(61), &["+sink_lag:postgres"]),
                (3, sink_lag(90), &[]),
                (4, sink_lag(45), &[]),
                (5, sink_lag(30), &[]),
                (6, sink_lag(29), &["-sink_lag:postgres"]),
                (7, sink_lag(59), &[]),
                (8, sink_lag(3600), &["+sink_lag:postgres"]),
                (9, sink_lag(0), &["-sink_lag:postgres"]),
            ],
            0,
        );
        let (state, changes) = evaluate(&rules(), &State::default(), &sink_lag(125), UnixMs(0));
        let Some(Change::Raised(alarm)) = changes.first() else {
            panic!("{changes:?}");
        };
        assert_eq!(alarm.severity, Severity::Major);
        assert!(
            alarm
                .message
                .contains("waited 2m 5s for the database db:5432/cdr"),
            "{}",
            alarm.message
        );
        assert!(
            state.down_reasons().is_empty(),
            "a lagging sink leaves the node healthy"
        );
    }

    fn sip_ok() -> Vec<ProcSample> {
        vec![p(200, 1, 0.0, 10.0), p(201, 1, 0.0, 10.0)]
    }

    /// Feeds the observations (at the given seconds) and compares the changes of each step,
    /// written `+kind:target` / `-kind:target`, and the down reasons at the end.
    fn check(steps: &[(u64, Observation, &[&str])], expected_down: usize) {
        let rules = rules();
        let mut state = State::default();
        for (i, (at_s, observation, expected)) in steps.iter().enumerate() {
            let (next, changes) = evaluate(
                &rules,
                &state,
                observation,
                UnixMs(1_795_000_000_000 + *at_s as i64 * 1000),
            );
            let got: Vec<String> = changes
                .iter()
                .map(|c| match c {
                    Change::Raised(a) => format!("+{}:{}", a.kind.as_str(), a.target),
                    Change::Cleared(a) => format!("-{}:{}", a.kind.as_str(), a.target),
                })
                .collect();
            assert_eq!(got, *expected, "step {i} at {at_s}s: {observation:?}");
            state = next;
        }
        assert_eq!(
            state.down_reasons().len(),
            expected_down,
            "{:?}",
            state.down_reasons()
        );
    }

    #[test]
    fn processes() {
        let web = [p(100, 7, 1.0, 20.0)];
        // All well: nothing.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (5, tick(&web, &sip_ok()), &[]),
            ],
            0,
        );
        // Missing, then back under another pid: cleared and restarted.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (5, tick(&[], &sip_ok()), &["+process_missing:web"]),
                (10, tick(&[], &sip_ok()), &[]),
                (
                    15,
                    tick(&[p(101, 9, 0.0, 20.0)], &sip_ok()),
                    &["-process_missing:web", "+process_restarted:web"],
                ),
            ],
            0,
        );
        // Pid changed between two looks: restarted only; auto-clears after five minutes.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(101, 9, 0.0, 20.0)], &sip_ok()),
                    &["+process_restarted:web"],
                ),
                (10, tick(&[p(102, 11, 0.0, 20.0)], &sip_ok()), &[]),
                (304, tick(&[p(102, 11, 0.0, 20.0)], &sip_ok()), &[]),
                (
                    305,
                    tick(&[p(102, 11, 0.0, 20.0)], &sip_ok()),
                    &["-process_restarted:web"],
                ),
            ],
            0,
        );
        // The same pid with another start time is a reused pid: restarted.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(100, 8, 0.0, 1.0)], &sip_ok()),
                    &["+process_restarted:web"],
                ),
            ],
            0,
        );
        // One more worker, or one fewer above the minimum, is not a restart.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(100, 7, 1.0, 20.0), p(105, 9, 0.0, 20.0)], &sip_ok()),
                    &[],
                ),
                (10, tick(&[p(105, 9, 0.0, 20.0)], &sip_ok()), &[]),
            ],
            0,
        );
        // Never seen at start: missing (no restart when it first appears).
        check(
            &[
                (0, tick(&[], &sip_ok()), &["+process_missing:web"]),
                (5, tick(&web, &sip_ok()), &["-process_missing:web"]),
            ],
            0,
        );
        // A critical process below its minimum count makes the node unhealthy.
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (
                    5,
                    tick(&web, &[p(200, 1, 0.0, 1.0)]),
                    &["+process_missing:sipserver"],
                ),
            ],
            1,
        );
        check(
            &[
                (0, tick(&web, &sip_ok()), &[]),
                (
                    5,
                    tick(&web, &[p(200, 1, 0.0, 1.0)]),
                    &["+process_missing:sipserver"],
                ),
                (10, tick(&web, &sip_ok()), &["-process_missing:sipserver"]),
            ],
            0,
        );
    }

    #[test]
    fn limits() {
        // 3 CPU seconds in 5 s = 60% > 50%; then 1 s in 5 s = 20%.
        check(
            &[
                (0, tick(&[p(100, 7, 10.0, 20.0)], &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(100, 7, 13.0, 20.0)], &sip_ok()),
                    &["+process_cpu:web"],
                ),
                (
                    10,
                    tick(&[p(100, 7, 14.0, 20.0)], &sip_ok()),
                    &["-process_cpu:web"],
                ),
            ],
            0,
        );
        // Summed over the processes present in both looks: 2 × 1.5 s in 5 s = 60%.
        check(
            &[
                (
                    0,
                    tick(&[p(100, 7, 0.0, 1.0), p(101, 7, 0.0, 1.0)], &sip_ok()),
                    &[],
                ),
                (
                    5,
                    tick(&[p(100, 7, 1.5, 1.0), p(101, 7, 1.5, 1.0)], &sip_ok()),
                    &["+process_cpu:web"],
                ),
            ],
            0,
        );
        // A new process's own past CPU does not count against the interval.
        check(
            &[
                (0, tick(&[p(100, 7, 0.0, 1.0)], &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(100, 7, 0.1, 1.0), p(102, 9, 500.0, 1.0)], &sip_ok()),
                    &[],
                ),
            ],
            0,
        );
        // RSS summed: 60 + 60 > 100 MB.
        check(
            &[
                (0, tick(&[p(100, 7, 0.0, 60.0)], &sip_ok()), &[]),
                (
                    5,
                    tick(&[p(100, 7, 0.0, 60.0), p(101, 9, 0.0, 60.0)], &sip_ok()),
                    &["+process_memory:web"],
                ),
                (
                    10,
                    tick(&[p(100, 7, 0.0, 60.0)], &sip_ok()),
                    &["-process_memory:web"],
                ),
            ],
            0,
        );
        // Disk: below the MB limit, or the percent limit; unreadable keeps the state.
        let low_mb = DiskSample {
            free_mb: 999,
            free_percent: 50.0,
        };
        let low_pct = DiskSample {
            free_mb: 90_000,
            free_percent: 4.9,
        };
        let web = [p(100, 7, 0.0, 1.0)];
        check(
            &[
                (
                    0,
                    tick_with(&web, &sip_ok(), Some(low_mb), 0),
                    &["+disk_low:/data"],
                ),
                (5, tick_with(&web, &sip_ok(), None, 0), &[]),
                (10, tick_with(&web, &sip_ok(), Some(low_pct), 0), &[]),
                (
                    15,
                    tick_with(&web, &sip_ok(), Some(DISK_OK), 0),
                    &["-disk_low:/data"],
                ),
            ],
            0,
        );
        // Store failures growing: alarm; an interval without new ones clears it. Failures
        // from before the first look do not count.
        check(
            &[
                (0, tick_with(&web, &sip_ok(), Some(DISK_OK), 4), &[]),
                (
                    5,
                    tick_with(&web, &sip_ok(), Some(DISK_OK), 6),
                    &["+store_error:/data"],
                ),
                (10, tick_with(&web, &sip_ok(), Some(DISK_OK), 7), &[]),
                (
                    15,
                    tick_with(&web, &sip_ok(), Some(DISK_OK), 7),
                    &["-store_error:/data"],
                ),
            ],
            0,
        );
        // A writer stuck on one batch retries less often than the monitor looks: the alarm
        // stays up while its last attempt failed, and clears when one succeeds.
        let stuck = |failures: u64, failing: bool| Observation::Tick {
            processes: vec![web.to_vec(), sip_ok().to_vec()],
            disk: Some(DISK_OK),
            store_failures: failures,
            store_failing: failing,
        };
        check(
            &[
                (0, stuck(0, false), &[]),
                (5, stuck(3, true), &["+store_error:/data"]),
                (10, stuck(3, true), &[]),
                (15, stuck(3, true), &[]),
                (20, stuck(3, false), &["-store_error:/data"]),
            ],
            0,
        );
    }

    #[test]
    fn upstream() {
        let up = "upstream_down:10.0.0.5:14500";
        let raised = format!("+{up}");
        let cleared = format!("-{up}");
        check(&[(0, probe(false), &[]), (5, probe(false), &[])], 0);
        check(
            &[
                (0, probe(false), &[]),
                (5, probe(false), &[]),
                (10, probe(false), &[&raised]),
                (15, probe(false), &[]),
            ],
            1,
        );
        // A reply in between starts the count again.
        check(
            &[
                (0, probe(false), &[]),
                (5, probe(false), &[]),
                (10, probe(true), &[]),
                (15, probe(false), &[]),
                (20, probe(false), &[]),
            ],
            0,
        );
        check(
            &[
                (0, probe(false), &[]),
                (5, probe(false), &[]),
                (10, probe(false), &[&raised]),
                (15, probe(true), &[&cleared]),
            ],
            0,
        );
    }

    #[test]
    fn reload_outcomes() {
        let alarm = "config_invalid:/etc/sipedge/sipedge.toml";
        let raised = format!("+{alarm}");
        let cleared = format!("-{alarm}");
        check(&[(0, reload(None), &[])], 0);
        // Raised once while files keep failing, cleared by the next good one; health stays up.
        check(
            &[
                (0, reload(Some("account.colour: unknown field")), &[&raised]),
                (5, reload(Some("another problem")), &[]),
                (10, tick(&[p(1, 1, 0.0, 1.0)], &sip_ok()), &[]),
                (15, reload(None), &[&cleared]),
                (20, reload(None), &[]),
            ],
            0,
        );
    }

    /// Feeds `ticks` under [`rules`], then applies the reloaded `watches` (named in `rules`'
    /// by name, or new ones by name and matcher); compares the changes, per new watch
    /// whether it kept its history, and the down reasons after.
    fn check_rewatch(
        ticks: &[Observation],
        watches: &[(&str, &str, bool)],
        expected: &[&str],
        kept: &[bool],
        expected_down: usize,
    ) {
        let rules = rules();
        let mut state = State::default();
        for (i, observation) in ticks.iter().enumerate() {
            state = evaluate(&rules, &state, observation, UnixMs(1000 * i as i64)).0;
        }
        let watches: Vec<WatchRule> = watches
            .iter()
            .map(|&(name, matcher, critical)| WatchRule {
                name: name.into(),
                matcher: matcher.into(),
                min_count: 1,
                max_cpu_percent: None,
                max_rss_mb: None,
                critical,
            })
            .collect();
        let (next, changes) = rewatch(&rules, &state, &watches, UnixMs(60_000));
        let got: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Raised(a) => format!("+{}:{}", a.kind.as_str(), a.target),
                Change::Cleared(a) => format!("-{}:{}", a.kind.as_str(), a.target),
            })
            .collect();
        assert_eq!(got, expected, "{watches:?}");
        let history: Vec<bool> = next.watches.iter().map(|w| !w.known.is_empty()).collect();
        assert_eq!(history, kept, "{watches:?}");
        assert_eq!(next.down_reasons().len(), expected_down, "{next:?}");
        // The next look runs under the new list.
        let rules = Rules { watches, ..rules };
        let (after, _) = evaluate(&rules, &next, &tick(&[], &[]), UnixMs(61_000));
        assert_eq!(after.watches.len(), rules.watches.len());
    }

    #[test]
    fn reloaded_watch_lists() {
        let web = [p(100, 7, 1.0, 20.0)];
        let all_up = [tick(&web, &sip_ok())];
        let web_missing = [tick(&web, &sip_ok()), tick(&[], &sip_ok())];
        let sip_missing = [tick(&web, &sip_ok()), tick(&web, &[p(200, 1, 0.0, 1.0)])];
        let same = [
            ("web", "name web", false),
            ("sipserver", "name sipserver", true),
        ];
        // The same list: nothing changes, every history kept.
        check_rewatch(&all_up, &same, &[], &[true, true], 0);
        check_rewatch(&sip_missing, &same, &[], &[true, true], 1);
        // Reordered and one added: histories follow the names; the new one starts afresh.
        check_rewatch(
            &all_up,
            &[
                ("db", "name postgres", false),
                ("sipserver", "name sipserver", true),
                ("web", "name web", false),
            ],
            &[],
            &[false, true, true],
            0,
        );
        // Removed while its alarm is active: the alarm is cleared.
        check_rewatch(
            &web_missing,
            &[("sipserver", "name sipserver", true)],
            &["-process_missing:web"],
            &[true],
            0,
        );
        check_rewatch(
            &sip_missing,
            &[("web", "name web", false)],
            &["-process_missing:sipserver"],
            &[true],
            0,
        );
        // The same name with another matcher: alarms cleared, history dropped.
        check_rewatch(
            &web_missing,
            &[
                ("web", "cmdline /web/", false),
                ("sipserver", "name sipserver", true),
            ],
            &["-process_missing:web"],
            &[false, true],
            0,
        );
        // No longer critical: process_missing cleared (raised again, as major, by the next
        // look), so health comes back; the history stays.
        check_rewatch(
            &sip_missing,
            &[
                ("web", "name web", false),
                ("sipserver", "name sipserver", false),
            ],
            &["-process_missing:sipserver"],
            &[true, true],
            0,
        );
        // Alarms that are not about a watch stay.
        let disk_low = [tick_with(
            &web,
            &sip_ok(),
            Some(DiskSample {
                free_mb: 1,
                free_percent: 0.1,
            }),
            0,
        )];
        check_rewatch(&disk_low, &[], &[], &[], 0);
        // Before the first look there is no history to keep.
        check_rewatch(&[], &same, &[], &[false, false], 0);
    }

    #[test]
    fn a_cleared_alarm_keeps_its_id_and_the_process_state_shows_the_change() {
        let rules = rules();
        let (s1, _) = evaluate(
            &rules,
            &State::default(),
            &tick(&[], &sip_ok()),
            UnixMs(1000),
        );
        let (s2, changes) = evaluate(
            &rules,
            &s1,
            &tick(&[p(1, 1, 0.0, 1.0)], &sip_ok()),
            UnixMs(6000),
        );
        let Change::Cleared(cleared) = &changes[0] else {
            panic!("{changes:?}")
        };
        assert_eq!(
            cleared.id,
            AlarmId::new(UnixMs(1000), "sh-01", AlarmKind::ProcessMissing, "web")
        );
        assert_eq!(cleared.cleared_at, Some(UnixMs(6000)));
        assert_eq!(s1.watches[0].condition, Condition::Missing);
        assert_eq!(s2.watches[0].condition, Condition::Ok);
        assert_eq!(s2.watches[0].since, Some(UnixMs(6000)));
        assert_eq!(s2.watches[1].since, Some(UnixMs(1000)));
    }
}
