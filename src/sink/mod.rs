//! Shipping CDRs to the bank's PostgreSQL database (issue 12, SPEC §8).
//!
//! - [`config`]: the `[sink.postgres]` table.
//! - `postgres`: the two shipping loops (the outbox, the backfill) and the upsert.
//! - [`status`]: the status file and `sipedge sink status`.
//!
//! How it holds together:
//! - The store queues every new or changed CDR in its outbox in the batch that stores it
//!   (`StoreConfig::outbox`), so what is durable is shipped or waiting, whatever the database
//!   does. The outbox loop reads the oldest entries (a read snapshot on a blocking thread: it
//!   never holds the writer up), upserts them in one transaction, and acknowledges them only
//!   once COMMIT returned; a crash between the two ships them again, which the upsert
//!   absorbs (`ON CONFLICT (id) DO UPDATE … WHERE … IS DISTINCT FROM`), so the database has
//!   each CDR once, in its latest version.
//! - Every failure is retried with capped exponential backoff and jitter, the batch kept;
//!   nothing is dropped for a database that is down, slow, restarting, refusing the role or
//!   on another schema version (checked on every new connection). SIP and the API never
//!   wait for any of it: the loops are tasks of their own on the runtime, and the relay has
//!   its own threads.
//! - A row the database refuses (a data exception or constraint violation, SQLSTATE class
//!   22 or 23) must not wedge the queue: the batch is retried row by row and a row still
//!   refused is *parked*: logged with its id and the server's reason, counted
//!   (`sipedge_sink_parked_total`, `sink status`), and acknowledged. It stays in the
//!   embedded store (and the API), and a later change of the CDR queues it again.
//! - Backfill: a sink that finds no progress saved in the store (first start, or the store
//!   was opened without a sink meanwhile) walks every stored CDR oldest first at
//!   `backfill_rate`, saving its position after each committed chunk, beside the outbox loop.
//! - `sipedge sink status` cannot open the store the server holds, so the server writes
//!   its status atomically to `DATA_DIR/sink-postgres.json` every second and the command
//!   reads that file: it needs no API credentials and works with the API bound elsewhere.

pub mod config;
mod postgres;
pub mod status;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sipedge_store::{CdrId, Store, UnixMs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::config::PostgresConfig;

/// The name of the sink: its status file, its state in the store, the alarm target.
pub const NAME: &str = "postgres";

/// Why a batch did not reach the database, as metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Unreachable, refused, reset, shutting down or restarting.
    Connect,
    /// The server refused the login: wrong password, unknown role or database.
    Auth,
    /// The role lacks a privilege on the table.
    Permission,
    /// The schema is missing or of another version than this build writes.
    Schema,
    /// A connect, statement or whole-batch deadline passed.
    Timeout,
    /// The database refused a row (parked, see the module documentation).
    Rejected,
    /// Any other server error (serialisation failures, deadlocks…), retried.
    Database,
    /// Reading the embedded store failed.
    Store,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Connect,
        ErrorKind::Auth,
        ErrorKind::Permission,
        ErrorKind::Schema,
        ErrorKind::Timeout,
        ErrorKind::Rejected,
        ErrorKind::Database,
        ErrorKind::Store,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Permission => "permission",
            ErrorKind::Schema => "schema",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Database => "database",
            ErrorKind::Store => "store",
        }
    }

    /// The kind of a server error by its SQLSTATE.
    pub fn of_sqlstate(code: &str) -> ErrorKind {
        match code {
            "28000" | "28P01" | "3D000" => ErrorKind::Auth,
            "42501" => ErrorKind::Permission,
            // Undefined table, column or function, a wrong column type, no unique index
            // for ON CONFLICT: the schema is not the one etc/sql/postgres.sql makes.
            "42P01" | "42703" | "42883" | "42804" | "42P10" => ErrorKind::Schema,
            "57014" => ErrorKind::Timeout,
            _ if code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") => {
                ErrorKind::Connect
            }
            _ if code.starts_with("22") || code.starts_with("23") => ErrorKind::Rejected,
            _ => ErrorKind::Database,
        }
    }
}

/// A failure with its kind and a line an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub kind: ErrorKind,
    pub message: String,
}

impl SinkError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> SinkError {
        SinkError {
            kind,
            message: message.into(),
        }
    }
}

/// Retry delays: doubling from `BASE` up to `CAP`, each drawn in its upper half so that
/// nodes that lost the same database do not come back in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// Failures in a row.
    attempt: u32,
    /// xorshift64 state.
    rng: u64,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(10);

    pub fn new(seed: u64) -> Backoff {
        Backoff {
            attempt: 0,
            rng: seed | 1,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = ceiling / 2;
        let jitter_ns = self.rng % (half.as_nanos() as u64).max(1);
        half + Duration::from_nanos(jitter_ns)
    }
}

pub fn now_ms() -> UnixMs {
    UnixMs(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// Where the backfill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backfill {
    /// Not read from the store yet.
    Unknown,
    /// Walking the store; past this id (none: from the start).
    Running {
        after: Option<CdrId>,
    },
    Done,
}

/// A CDR the database refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub id: CdrId,
    pub reason: String,
    pub at: UnixMs,
}

/// The last failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub kind: ErrorKind,
    pub message: String,
    pub at: UnixMs,
}

/// Recent parked rows kept for `sink status`.
const PARKED_SHOWN: usize = 20;

/// Everything the loops report, for metrics, the monitor and the status file.
#[derive(Debug, Clone)]
pub struct State {
    /// Where the CDRs go, password-free.
    pub target: String,
    pub lag_alarm: Duration,
    /// Entries waiting in the outbox, as last counted.
    pub depth: u64,
    pub oldest_queued_at: Option<UnixMs>,
    /// When the outbox was last counted.
    pub counted_at: Option<UnixMs>,
    /// CDRs committed to the database from the outbox.
    pub shipped: u64,
    /// CDRs committed to the database by the backfill.
    pub backfilled: u64,
    /// Rows the database refused, acknowledged to unblock the queue.
    pub parked: u64,
    pub recent_parked: Vec<Parked>,
    pub errors: BTreeMap<ErrorKind, u64>,
    pub last_error: Option<LastError>,
    pub last_success_at: Option<UnixMs>,
    pub backfill: Backfill,
}

impl State {
    /// How old the oldest waiting CDR is at `now`; zero when nothing waits.
    pub fn lag(&self, now: UnixMs) -> Duration {
        match (self.depth, self.oldest_queued_at) {
            (1.., Some(oldest)) => {
                Duration::from_millis(now.0.saturating_sub(oldest.0).max(0) as u64)
            }
            _ => Duration::ZERO,
        }
    }
}

/// The state shared by the loops and its readers.
#[derive(Debug)]
pub struct Shared {
    state: Mutex<State>,
}

impl Shared {
    pub(crate) fn new(target: String, lag_alarm: Duration) -> Shared {
        Shared {
            state: Mutex::new(State {
                target,
                lag_alarm,
                depth: 0,
                oldest_queued_at: None,
                counted_at: None,
                shipped: 0,
                backfilled: 0,
                parked: 0,
                recent_parked: Vec::new(),
                errors: BTreeMap::new(),
                last_error: None,
                last_success_at: None,
                backfill: Backfill::Unknown,
            }),
        }
    }

    pub fn snapshot(&self) -> State {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Counts a failure; logs it when it differs from the last one or a minute passed, so a
    /// database down for an hour is not thousands of lines.
    fn failed(&self, err: &SinkError) {
        let now = now_ms();
        let mut log = false;
        self.update(|s| {
            *s.errors.entry(err.kind).or_default() += 1;
            log = s
                .last_error
                .as_ref()
                .is_none_or(|last| last.message != err.message || now.0 - last.at.0 >= 60_000);
            if log || s.last_error.is_none() {
                s.last_error = Some(LastError {
                    kind: err.kind,
                    message: err.message.clone(),
                    at: now,
                });
            }
        });
        if log {
            tracing::warn!(sink = NAME, kind = err.kind.as_str(), error = %err.message, "CDRs not shipped; retrying");
        }
    }

    fn succeeded(&self, shipped: u64, backfilled: u64, parked: Vec<Parked>) {
        for p in &parked {
            tracing::error!(sink = NAME, cdr = %p.id, reason = %p.reason, "the database refused a CDR; it is parked (kept in the store, not shipped)");
        }
        let now = now_ms();
        let recovered = self.update_and(|s| {
            s.shipped += shipped;
            s.backfilled += backfilled;
            s.parked += parked.len() as u64;
            if !parked.is_empty() {
                *s.errors.entry(ErrorKind::Rejected).or_default() += parked.len() as u64;
            }
            s.recent_parked.extend(parked);
            let excess = s.recent_parked.len().saturating_sub(PARKED_SHOWN);
            s.recent_parked.drain(..excess);
            let recovered = s
                .last_error
                .as_ref()
                .is_some_and(|e| s.last_success_at.is_none_or(|ok| ok.0 < e.at.0));
            s.last_success_at = Some(now);
            recovered
        });
        if recovered {
            tracing::info!(sink = NAME, "shipping CDRs again");
        }
    }

    fn update_and<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The running sink: its shared state and its tasks (which end on shutdown).
#[derive(Debug)]
pub struct Running {
    pub shared: Arc<Shared>,
    pub tasks: Vec<JoinHandle<()>>,
}

/// Starts the sink's loops; the error (an unreadable password file) names its key.
pub fn start(
    cfg: &PostgresConfig,
    store: &Store,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> Result<Running, String> {
    let pg = cfg.connect_config()?;
    let shared = Arc::new(Shared::new(cfg.describe(), cfg.lag_alarm));
    let pool = postgres::pool(cfg, pg)?;
    let ctx = Arc::new(postgres::Ctx {
        pool,
        store: store.clone(),
        shared: shared.clone(),
        batch_size: cfg.batch_size,
        parallel: cfg.pool_size,
        backfill_rate: cfg.backfill_rate,
        deadline: cfg.connect_timeout + cfg.statement_timeout,
        shutdown: shutdown.clone(),
    });
    tracing::info!(sink = NAME, target = %cfg.describe(), batch_size = cfg.batch_size, "shipping CDRs to PostgreSQL");
    let tasks = vec![
        tokio::spawn(postgres::outbox_loop(ctx.clone())),
        tokio::spawn(postgres::backfill_loop(ctx)),
        tokio::spawn(status::refresh_loop(
            store.clone(),
            shared.clone(),
            status::path(data_dir),
            shutdown,
        )),
    ];
    Ok(Running { shared, tasks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for (code, kind) in [
            ("28P01", ErrorKind::Auth),
            ("28000", ErrorKind::Auth),
            ("3D000", ErrorKind::Auth),
            ("42501", ErrorKind::Permission),
            ("42P01", ErrorKind::Schema),
            ("42703", ErrorKind::Schema),
            ("42P10", ErrorKind::Schema),
            ("57014", ErrorKind::Timeout),
            ("57P01", ErrorKind::Connect),
            ("57P03", ErrorKind::Connect),
            ("08006", ErrorKind::Connect),
            ("53300", ErrorKind::Connect),
            ("23514", ErrorKind::Rejected),
            ("23502", ErrorKind::Rejected),
            ("22021", ErrorKind::Rejected),
            ("22P05", ErrorKind::Rejected),
            ("40001", ErrorKind::Database),
            ("40P01", ErrorKind::Database),
            ("XX000", ErrorKind::Database),
        ] {
            assert_eq!(ErrorKind::of_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(42);
        let ceilings_ms = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000];
        for ceiling in ceilings_ms {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} for {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
        // Two seeds do not retry in step.
        let (mut x, mut y) = (Backoff::new(1), Backoff::new(2));
        let xs: Vec<_> = (0..5).map(|_| x.next_delay()).collect();
        let ys: Vec<_> = (0..5).map(|_| y.next_delay()).collect();
        assert_ne!(xs, ys);
    }

    #[test]
    fn lag_is_the_oldest_waiting_age() {
        let shared = Shared::new("db".into(), Duration::from_secs(5));
        let mut s = shared.snapshot();
        assert_eq!(s.lag(UnixMs(10_000)), Duration::ZERO);
        s.depth = 3;
        s.oldest_queued_at = Some(UnixMs(4_000));
        assert_eq!(s.lag(UnixMs(10_000)), Duration::from_secs(6));
        assert_eq!(s.lag(UnixMs(3_000)), Duration::ZERO);
        s.depth = 0;
        assert_eq!(s.lag(UnixMs(10_000)), Duration::ZERO);
    }

    #[test]
    fn successes_and_failures_are_counted() {
        let shared = Shared::new("db".into(), Duration::from_secs(5));
        shared.failed(&SinkError::new(
            ErrorKind::Auth,
            "password authentication failed",
        ));
        shared.failed(&SinkError::new(
            ErrorKind::Auth,
            "password authentication failed",
        ));
        let parked: Vec<Parked> = (0..25)
            .map(|i| Parked {
                id: CdrId(i),
                reason: "check".into(),
                at: UnixMs(1),
            })
            .collect();
        shared.succeeded(10, 5, parked);
        let s = shared.snapshot();
        assert_eq!(s.errors.get(&ErrorKind::Auth), Some(&2));
        assert_eq!(s.errors.get(&ErrorKind::Rejected), Some(&25));
        assert_eq!((s.shipped, s.backfilled, s.parked), (10, 5, 25));
        assert_eq!(s.recent_parked.len(), PARKED_SHOWN);
        assert_eq!(s.recent_parked[0].id, CdrId(5));
        assert!(s.last_success_at.is_some());
        assert_eq!(
            s.last_error.map(|e| e.kind),
            Some(ErrorKind::Auth),
            "the last error stays shown after a success"
        );
    }
}
