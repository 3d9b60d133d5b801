//! The `/metrics` registry (SPEC §9, §11): every part keeps its own counters in its own
//! types; this module, which knows all parts, shows them under the `sipedge_` names. Values
//! that other crates keep as plain snapshots are read at each scrape by [`StoreCollector`]
//! and [`SipCollector`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use sipedge_http::account::AccountMetrics;
use sipedge_http::events::EventHub;
use sipedge_http::server::ListenerStats;
use sipedge_sip::Metrics as SipMetrics;
use sipedge_sip::call::CallTracking;
use sipedge_store::{AlarmKind, Store};

/// Active alarms read per scrape at most; more than this is a storm the number shows anyway.
const MAX_ACTIVE_ALARMS: usize = 10_000;

/// Builds the registry the API serves; `sip` is the relay's counters, `tracking` call
/// tracking and `sink` the database sink, when they run.
pub fn registry(
    account: &AccountMetrics,
    store: &Store,
    sip: Option<Arc<SipMetrics>>,
    tracking: Option<CallTracking>,
    sink: Option<Arc<crate::sink::Shared>>,
) -> Registry {
    let mut registry = Registry::with_prefix("sipedge");
    account.register(&mut registry);
    registry.register_collector(Box::new(StoreCollector {
        store: store.clone(),
    }));
    if let Some(metrics) = sip {
        registry.register_collector(Box::new(SipCollector { metrics }));
    }
    if let Some(tracking) = tracking {
        registry.register_collector(Box::new(CallsCollector { tracking }));
    }
    if let Some(sink) = sink {
        registry.register_collector(Box::new(SinkCollector { sink }));
    }
    registry
}

/// The database sink: the outbox it has not shipped, what it shipped, how it failed.
#[derive(Debug)]
struct SinkCollector {
    /// Updated by the sink's loops (the outbox counted once a second).
    sink: Arc<crate::sink::Shared>,
}

impl Collector for SinkCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self.sink.snapshot();
        let depth = ConstGauge::new(state.depth as i64);
        depth.encode(encoder.encode_descriptor(
            "sink_outbox_depth",
            "CDRs waiting in the outbox for the database",
            None,
            depth.metric_type(),
        )?)?;
        let lag = ConstGauge::new(state.lag(crate::sink::now_ms()).as_secs_f64());
        lag.encode(encoder.encode_descriptor(
            "sink_lag_seconds",
            "Age of the oldest CDR waiting for the database (0 when none waits)",
            None,
            lag.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "sink_shipped",
                "CDRs from the outbox committed to the database",
                state.shipped,
            ),
            (
                "sink_backfilled",
                "Stored CDRs committed to the database by the backfill",
                state.backfilled,
            ),
            (
                "sink_parked",
                "CDRs the database refused, kept in the store and not shipped",
                state.parked,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut errors = encoder.encode_descriptor(
            "sink_errors",
            "Failed attempts to ship CDRs (retried) and refused rows, by kind",
            None,
            MetricType::Counter,
        )?;
        for kind in crate::sink::ErrorKind::ALL {
            let count = state.errors.get(&kind).copied().unwrap_or(0);
            ConstCounter::new(count).encode(errors.encode_family(&[("kind", kind.as_str())])?)?;
        }
        let last = ConstGauge::new(state.last_success_at.map_or(0.0, |t| t.0 as f64 / 1000.0));
        last.encode(encoder.encode_descriptor(
            "sink_last_success_timestamp_seconds",
            "When the database last committed a batch (Unix time; 0 before the first)",
            None,
            last.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Adds what the HTTP listeners' limits did: connections open and held back, head
/// timeouts (slow or idle clients), event streams open and refused.
pub fn register_http<const N: usize>(
    registry: &mut Registry,
    events: EventHub,
    listeners: [(&'static str, Arc<ListenerStats>); N],
) {
    registry.register_collector(Box::new(HttpCollector {
        events,
        listeners: listeners.to_vec(),
    }));
}

#[derive(Debug)]
struct HttpCollector {
    events: EventHub,
    listeners: Vec<(&'static str, Arc<ListenerStats>)>,
}

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        type Read = fn(&ListenerStats) -> u64;
        let per_listener: [(&str, &str, MetricType, Read); 3] = [
            (
                "http_connections_open",
                "HTTP connections open now, by listener",
                MetricType::Gauge,
                ListenerStats::open,
            ),
            (
                "http_connections_capped",
                "Times a client waited because max_connections were open, by listener",
                MetricType::Counter,
                ListenerStats::capped,
            ),
            (
                "http_header_timeouts",
                "Connections closed for not sending a request head in time, by listener",
                MetricType::Counter,
                ListenerStats::header_timeouts,
            ),
        ];
        for (name, help, kind, read) in per_listener {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (listener, stats) in &self.listeners {
                let labels = [("listener", *listener)];
                let value = read(stats);
                if kind == MetricType::Gauge {
                    ConstGauge::new(value as i64).encode(family.encode_family(&labels)?)?;
                } else {
                    ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let open = ConstGauge::new(self.events.clients() as i64);
        open.encode(encoder.encode_descriptor(
            "event_streams_open",
            "Live-event streams (/api/events) open now",
            None,
            open.metric_type(),
        )?)?;
        let refused = ConstCounter::new(self.events.refused_clients());
        refused.encode(encoder.encode_descriptor(
            "event_streams_refused",
            "Live-event streams refused because api.max_sse_clients were open",
            None,
            refused.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Calls in progress and call tracking's own counters.
#[derive(Debug)]
struct CallsCollector {
    /// Its live map and counters, read at each scrape.
    tracking: CallTracking,
}

impl Collector for CallsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let active = ConstGauge::new(self.tracking.live().len() as i64);
        active.encode(encoder.encode_descriptor(
            "calls_active",
            "Calls in progress now",
            None,
            active.metric_type(),
        )?)?;
        let counters = self.tracking.counters();
        let unparsed = ConstCounter::new(counters.unparsed);
        unparsed.encode(encoder.encode_descriptor(
            "tracking_unparsed_messages",
            "Relayed messages call tracking could not read",
            None,
            unparsed.metric_type(),
        )?)?;
        Ok(())
    }
}

/// The relay's counters: messages by method, status and direction, parse errors, drops.
#[derive(Debug)]
struct SipCollector {
    /// Relaxed atomics the relay updates; read at each scrape.
    metrics: Arc<SipMetrics>,
}

impl Collector for SipCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "sip_messages",
            "SIP messages relayed or answered, by method (a response's CSeq method), status \
             (empty for requests) and direction",
            None,
            MetricType::Counter,
        )?;
        for m in self.metrics.messages() {
            let status = m.status.map(|s| s.to_string()).unwrap_or_default();
            let labels = [
                ("method", m.method),
                ("status", status.as_str()),
                ("direction", m.direction.as_str()),
            ];
            ConstCounter::new(m.count).encode(family.encode_family(&labels)?)?;
        }
        let parse_errors = ConstCounter::new(self.metrics.parse_errors.load(Ordering::Relaxed));
        parse_errors.encode(encoder.encode_descriptor(
            "sip_parse_errors",
            "SIP messages that could not be parsed",
            None,
            parse_errors.metric_type(),
        )?)?;
        let mut drops = encoder.encode_descriptor(
            "sip_dropped",
            "SIP messages not forwarded, by reason",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in self.metrics.drops() {
            ConstCounter::new(count).encode(drops.encode_family(&[("reason", reason)])?)?;
        }
        let mut refused = encoder.encode_descriptor(
            "sip_refused",
            "What each memory bound refused, by its [sip] key: connections, messages to a peer \
             that does not read, new calls (503), call log entries",
            None,
            MetricType::Counter,
        )?;
        for (bound, count) in self.metrics.refusals() {
            ConstCounter::new(count).encode(refused.encode_family(&[("bound", bound)])?)?;
        }
        let lost = ConstCounter::new(self.metrics.handoff_dropped.load(Ordering::Relaxed));
        lost.encode(encoder.encode_descriptor(
            "sip_tracking_dropped",
            "Relayed messages call tracking did not get because its queue was full",
            None,
            lost.metric_type(),
        )?)?;
        let tcp = ConstGauge::new(self.metrics.tcp_connections.load(Ordering::Relaxed) as i64);
        tcp.encode(encoder.encode_descriptor(
            "sip_tcp_connections",
            "SIP TCP connections open now",
            None,
            tcp.metric_type(),
        )?)?;
        Ok(())
    }
}

/// CDRs written, the last commit's duration and the active alarms, read from the store.
#[derive(Debug)]
struct StoreCollector {
    /// Read at each scrape (writer counters are atomics; alarms a short scan).
    store: Store,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.store.writer_stats();
        let written = ConstCounter::new(stats.cdrs_written);
        written.encode(encoder.encode_descriptor(
            "cdrs_written",
            "CDRs committed to the store",
            None,
            written.metric_type(),
        )?)?;
        let latency = ConstGauge::new(stats.last_commit.as_secs_f64());
        latency.encode(encoder.encode_descriptor(
            "store_write_seconds",
            "Duration of the store's last durable commit",
            None,
            latency.metric_type(),
        )?)?;
        let failures = ConstCounter::new(stats.failures);
        failures.encode(encoder.encode_descriptor(
            "store_write_failures",
            "Failed store commit attempts (each is retried)",
            None,
            failures.metric_type(),
        )?)?;
        // A store that cannot be read shows no alarm gauges rather than wrong zeros.
        let Ok(active) = self.store.alarms(true, MAX_ACTIVE_ALARMS) else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "alarms_active",
            "Alarms raised and not cleared, by kind",
            None,
            MetricType::Gauge,
        )?;
        for kind in AlarmKind::ALL {
            let count = active.iter().filter(|a| a.kind == kind).count() as i64;
            let labels = [("kind", kind.as_str())];
            ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sipedge_store::{Alarm, AlarmId, Severity, StoreConfig, UnixMs, WriteOp};

    use super::*;

    #[test]
    fn the_text_has_the_spec_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            sipedge_store::Engine::Redb,
            StoreConfig::default(),
        )
        .unwrap();
        let at = UnixMs(1_795_000_000_000);
        store
            .writer()
            .submit(WriteOp::PutAlarm(Alarm {
                id: AlarmId::new(at, "n", AlarmKind::DiskLow, "/data"),
                node: "n".into(),
                kind: AlarmKind::DiskLow,
                target: "/data".into(),
                severity: Severity::Major,
                message: "5% free".into(),
                raised_at: at,
                cleared_at: None,
            }))
            .unwrap();
        store.flush(Duration::from_secs(10)).unwrap();
        let account = AccountMetrics::default();
        account.count(sipedge_http::account::Outcome::Granted);
        let sip = Arc::new(SipMetrics::default());
        sip.request(sipedge_sip::Direction::ToUpstream, b"INVITE");
        sip.response(sipedge_sip::Direction::ToTerminal, b"INVITE", 180);
        sip.parse_errors.fetch_add(2, Ordering::Relaxed);
        let sink = Arc::new(crate::sink::Shared::new(
            "db".into(),
            Duration::from_secs(60),
        ));
        let registry = registry(&account, &store, Some(sip), None, Some(sink));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "sipedge_account_requests_total{outcome=\"granted\"} 1",
            "sipedge_cdrs_written_total 0",
            "sipedge_alarms_active{kind=\"disk_low\"} 1",
            "sipedge_alarms_active{kind=\"upstream_down\"} 0",
            "# TYPE sipedge_store_write_seconds gauge",
            "sipedge_sip_parse_errors_total 2",
            "sipedge_sink_outbox_depth 0",
            "sipedge_sink_lag_seconds 0.0",
            "sipedge_sink_shipped_total 0",
            "sipedge_sink_errors_total{kind=\"auth\"} 0",
            "sipedge_sink_errors_total{kind=\"rejected\"} 0",
            "# TYPE sipedge_sink_last_success_timestamp_seconds gauge",
            "sipedge_sip_refused_total{bound=\"sip.max_calls\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        let invites: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("sipedge_sip_messages_total{"))
            .collect();
        assert_eq!(invites.len(), 2, "{text}");
        assert!(
            invites
                .iter()
                .any(|l| l.contains("method=\"INVITE\"") && l.contains("status=\"180\"")),
            "{text}"
        );
    }
}
