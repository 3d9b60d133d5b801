//! The sink's status file and `sipedge sink status`.
//!
//! The running server holds the store (redb admits one process), so it writes what the
//! command shows: every second, `DATA_DIR/sink-postgres.json`, written to a temporary file
//! and renamed over the old one so that a reader never sees half of it. The command reads
//! it; a file not rewritten for [`STALE_AFTER`] means no server is running the sink.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::{Deserialize, Serialize};
use sipedge_store::{Store, UnixMs};
use tokio_util::sync::CancellationToken;

use super::{Backfill, ErrorKind, NAME, Shared, State, now_ms};
use crate::config::Config;

/// How often the outbox is counted and the file rewritten.
const REFRESH: Duration = Duration::from_secs(1);
/// A file older than this was left by a server that stopped.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("sink-{NAME}.json"))
}

fn rfc3339(t: UnixMs) -> String {
    DateTime::<Utc>::from_timestamp_millis(t.0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn parse_time(text: &str) -> Option<UnixMs> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| UnixMs(d.timestamp_millis()))
}

/// The file's (and `--json`'s) shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub sink: String,
    /// Where the CDRs go (no password).
    pub target: String,
    /// The server that writes the file.
    pub pid: u32,
    pub updated_at: String,
    /// Filled in by `sink status`: whether a server is keeping the file fresh.
    #[serde(default)]
    pub running: bool,
    /// CDRs waiting in the outbox.
    pub depth: u64,
    /// Age of the oldest waiting CDR, in seconds.
    pub lag_s: f64,
    pub oldest_queued_at: Option<String>,
    pub lag_alarm_s: f64,
    pub shipped: u64,
    pub backfilled: u64,
    pub parked: u64,
    pub errors: BTreeMap<String, u64>,
    pub last_success_at: Option<String>,
    pub last_error: Option<ReportError>,
    pub backfill: ReportBackfill,
    /// The latest rows the database refused.
    pub recent_parked: Vec<ReportParked>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportError {
    pub kind: String,
    pub message: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportBackfill {
    /// `starting`, `running` or `done`.
    pub state: String,
    /// The last CDR shipped by the backfill, and when that call started: how far it got.
    pub after: Option<String>,
    pub after_start_time: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportParked {
    pub id: String,
    pub reason: String,
    pub at: String,
}

impl Report {
    pub fn of(state: &State, now: UnixMs) -> Report {
        let (backfill_state, after) = match state.backfill {
            Backfill::Unknown => ("starting", None),
            Backfill::Running { after } => ("running", after),
            Backfill::Done => ("done", None),
        };
        Report {
            sink: NAME.to_owned(),
            target: state.target.clone(),
            pid: std::process::id(),
            updated_at: rfc3339(now),
            running: true,
            depth: state.depth,
            lag_s: state.lag(now).as_secs_f64(),
            oldest_queued_at: state.oldest_queued_at.map(rfc3339),
            lag_alarm_s: state.lag_alarm.as_secs_f64(),
            shipped: state.shipped,
            backfilled: state.backfilled,
            parked: state.parked,
            errors: ErrorKind::ALL
                .iter()
                .map(|k| {
                    (
                        k.as_str().to_owned(),
                        state.errors.get(k).copied().unwrap_or(0),
                    )
                })
                .collect(),
            last_success_at: state.last_success_at.map(rfc3339),
            last_error: state.last_error.as_ref().map(|e| ReportError {
                kind: e.kind.as_str().to_owned(),
                message: e.message.clone(),
                at: rfc3339(e.at),
            }),
            backfill: ReportBackfill {
                state: backfill_state.to_owned(),
                after: after.map(|id| id.to_string()),
                after_start_time: after.map(|id| rfc3339(id.start())),
            },
            recent_parked: state
                .recent_parked
                .iter()
                .map(|p| ReportParked {
                    id: p.id.to_string(),
                    reason: p.reason.clone(),
                    at: rfc3339(p.at),
                })
                .collect(),
        }
    }

    /// The text `sink status` prints.
    pub fn text(&self) -> String {
        let or_never = |t: &Option<String>| t.clone().unwrap_or_else(|| "never".to_owned());
        let mut out = String::new();
        let state = if self.running {
            "running"
        } else {
            "NOT RUNNING (the status is from the last run)"
        };
        out.push_str(&format!("sink {}: {state}, pid {}\n", self.sink, self.pid));
        out.push_str(&format!("target:        {}\n", self.target));
        out.push_str(&format!("updated:       {}\n", self.updated_at));
        out.push_str(&format!(
            "outbox:        {} waiting, lag {:.1}s (alarm over {:.0}s)\n",
            self.depth, self.lag_s, self.lag_alarm_s
        ));
        out.push_str(&format!(
            "shipped:       {} from the outbox, {} by backfill, {} parked\n",
            self.shipped, self.backfilled, self.parked
        ));
        out.push_str(&format!(
            "last success:  {}\n",
            or_never(&self.last_success_at)
        ));
        match &self.last_error {
            Some(e) => out.push_str(&format!(
                "last error:    {} [{}] {}\n",
                e.at, e.kind, e.message
            )),
            None => out.push_str("last error:    none\n"),
        }
        let failing: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if !failing.is_empty() {
            out.push_str(&format!("errors:        {}\n", failing.join(", ")));
        }
        let backfill = match (&self.backfill.after, &self.backfill.after_start_time) {
            (Some(id), Some(start)) => format!(
                "{}, past {id} (calls started up to {start})",
                self.backfill.state
            ),
            _ => self.backfill.state.clone(),
        };
        out.push_str(&format!("backfill:      {backfill}\n"));
        for p in &self.recent_parked {
            out.push_str(&format!(
                "parked:        {} at {}: {}\n",
                p.id, p.at, p.reason
            ));
        }
        out
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

/// Every second: counts the outbox (a read snapshot, on a blocking thread) and rewrites the
/// status file, until shutdown, when it writes the file a last time.
pub async fn refresh_loop(
    store: Store,
    shared: Arc<Shared>,
    file: PathBuf,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(REFRESH);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned = false;
    loop {
        let stopping = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let store = store.clone();
        let shared_for_read = shared.clone();
        let file = file.clone();
        let written = tokio::task::spawn_blocking(move || {
            if let Ok(stats) = store.outbox_stats() {
                shared_for_read.update(|s| {
                    s.depth = stats.depth;
                    s.oldest_queued_at = stats.oldest_queued_at;
                    s.counted_at = Some(now_ms());
                });
            }
            let report = Report::of(&shared_for_read.snapshot(), now_ms());
            let bytes = serde_json::to_vec_pretty(&report).unwrap_or_default();
            write_atomically(&file, &bytes).map_err(|e| (file, e))
        })
        .await;
        match written {
            Ok(Err((file, e))) if !warned => {
                warned = true;
                tracing::warn!(file = %file.display(), error = %e, "cannot write the sink status file");
            }
            Ok(Ok(())) => warned = false,
            _ => {}
        }
        if stopping {
            return;
        }
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The service's config: node.data_dir and [sink.postgres] are used.
    #[arg(long, value_name = "FILE", default_value = "/etc/sipedge/sipedge.toml")]
    config: PathBuf,
    /// Print the status as one JSON object.
    #[arg(long)]
    json: bool,
}

/// What `sink status` found: the report and whether a server is keeping it fresh.
#[derive(Debug)]
pub enum Found {
    Running(Report),
    Stale(Report),
}

/// Reads the status file; the error is one line for the operator.
pub fn read(config: &Config, now: UnixMs) -> Result<Found, String> {
    if config.sink.postgres.is_none() {
        return Err("the configuration has no [sink.postgres] table: no sink runs".to_owned());
    }
    let file = path(&config.node.data_dir);
    let text = std::fs::read(&file).map_err(|e| {
        format!(
            "no sink status in {} ({e}): sipedge serve has not run the sink on this data dir",
            file.display()
        )
    })?;
    let mut report: Report = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not a sink status file: {e}", file.display()))?;
    let age_ms = parse_time(&report.updated_at).map_or(i64::MAX, |t| now.0.saturating_sub(t.0));
    let fresh = age_ms <= STALE_AFTER.as_millis() as i64
        && Path::new(&format!("/proc/{}", report.pid)).exists();
    report.running = fresh;
    Ok(if fresh {
        Found::Running(report)
    } else {
        Found::Stale(report)
    })
}

/// `sipedge sink status`: exit 0 with a fresh status, 1 with a stale one (printed all the
/// same), 64 without a sink or a status file.
pub fn run(args: &StatusArgs) -> Result<bool, String> {
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let found = read(&config, now_ms())?;
    let (report, fresh) = match found {
        Found::Running(r) => (r, true),
        Found::Stale(r) => (r, false),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| e.to_string())?
        );
    } else {
        print!("{}", report.text());
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use sipedge_store::CdrId;

    use super::super::{LastError, Parked};
    use super::*;

    fn state() -> State {
        let shared = Shared::new("127.0.0.1:5432/cdr".into(), Duration::from_secs(60));
        let mut s = shared.snapshot();
        s.depth = 4;
        s.oldest_queued_at = Some(UnixMs(1_767_225_600_000));
        s.shipped = 10;
        s.errors.insert(ErrorKind::Auth, 3);
        s.last_error = Some(LastError {
            kind: ErrorKind::Auth,
            message: "password authentication failed for user \"sipedge\" (28P01)".into(),
            at: UnixMs(1_767_225_601_000),
        });
        s.backfill = Backfill::Running {
            after: Some(CdrId::new(UnixMs(1_767_225_000_000), "n", "c")),
        };
        s.recent_parked.push(Parked {
            id: CdrId(7),
            reason: "new row violates check constraint (23514)".into(),
            at: UnixMs(1_767_225_602_000),
        });
        s
    }

    #[test]
    fn the_report_reads_back_and_shows_every_part() {
        let report = Report::of(&state(), UnixMs(1_767_225_610_000));
        assert_eq!(report.lag_s, 10.0);
        assert_eq!(report.errors["auth"], 3);
        assert_eq!(report.errors["connect"], 0);
        assert_eq!(report.updated_at, "2026-01-01T00:00:10.000Z");
        let back: Report = serde_json::from_slice(&serde_json::to_vec(&report).unwrap()).unwrap();
        assert_eq!(back, report);
        let text = report.text();
        for needle in [
            "sink postgres: running",
            "4 waiting, lag 10.0s (alarm over 60s)",
            "last error:    2026-01-01T00:00:01.000Z [auth] password authentication failed",
            "errors:        auth 3",
            "backfill:      running, past ",
            "(calls started up to 2025-12-31T23:50:00.000Z)",
            "parked:        00000000000000000000000000000007",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
    }

    #[test]
    fn a_file_written_atomically_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        write_atomically(&file, b"one").unwrap();
        write_atomically(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
