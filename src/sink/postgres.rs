//! The PostgreSQL side: the pool (schema version checked on every new connection), the
//! batched upsert of docs' `cdr` table contract, and the outbox and backfill loops.

use sipedge_http::render;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::{Deserialize, Serialize};
use sipedge_store::{Cdr, CdrId, OutboxEntry, Store, StoreError, UnixMs, WriteOp};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::config::PostgresConfig;
use super::{Backfill, Backoff, ErrorKind, NAME, Parked, Shared, SinkError, now_ms};

/// The `sipedge_schema_version` this build writes (etc/sql/postgres.sql).
pub const SCHEMA_VERSION: i32 = 2;

/// How often an empty outbox is looked at again: with the store's flush interval, the
/// usual delay between a call's end and its row.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often an idle sink gets a connection, which checks the login and schema when new.
const IDLE_CHECK: Duration = Duration::from_secs(10);

/// Every column the sink writes, in the statement's order (`shipped_at` and the generated
/// `duration_s`, `talk_s` are the database's).
const COLUMNS: [(&str, &str); 20] = [
    ("id", "text"),
    ("node", "text"),
    ("call_id", "text"),
    ("caller", "text"),
    ("called", "text"),
    ("caller_uri", "text"),
    ("called_uri", "text"),
    ("call_type", "text"),
    ("video_started_at", "timestamptz"),
    ("status", "text"),
    ("disposition", "text"),
    ("sip_code", "int2"),
    ("ended_by", "text"),
    ("start_time", "timestamptz"),
    ("ring_time", "timestamptz"),
    ("answer_time", "timestamptz"),
    ("end_time", "timestamptz"),
    ("transport", "text"),
    ("terminal", "text"),
    ("source", "text"),
];

/// `INSERT … SELECT * FROM unnest($1::text[], …) ON CONFLICT (id) DO UPDATE SET … WHERE
/// (…) IS DISTINCT FROM (…)`: one statement for the whole batch, a no-op for rows the
/// database already has as they are.
fn upsert_statement() -> String {
    let names: Vec<&str> = COLUMNS.iter().map(|(n, _)| *n).collect();
    let arrays: Vec<String> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("${}::{ty}[]", i + 1))
        .collect();
    let rest = &names[1..];
    let set: Vec<String> = rest.iter().map(|n| format!("{n} = EXCLUDED.{n}")).collect();
    let old: Vec<String> = rest.iter().map(|n| format!("cdr.{n}")).collect();
    let new: Vec<String> = rest.iter().map(|n| format!("EXCLUDED.{n}")).collect();
    format!(
        "INSERT INTO cdr ({}) SELECT * FROM unnest({}) ON CONFLICT (id) DO UPDATE SET {} WHERE ({}) IS DISTINCT FROM ({})",
        names.join(", "),
        arrays.join(", "),
        set.join(", "),
        old.join(", "),
        new.join(", ")
    )
}

/// A store time as the driver binds a timestamptz, to the millisecond.
fn time(t: UnixMs) -> SystemTime {
    let magnitude = Duration::from_millis(t.0.unsigned_abs());
    if t.0 >= 0 {
        UNIX_EPOCH + magnitude
    } else {
        UNIX_EPOCH - magnitude
    }
}

/// The batch as one array per column.
#[derive(Debug, Default)]
struct Columns<'a> {
    id: Vec<String>,
    text: [Vec<&'a str>; 6],
    call_type: Vec<&'static str>,
    video_started_at: Vec<Option<SystemTime>>,
    status: Vec<&'static str>,
    disposition: Vec<&'static str>,
    sip_code: Vec<Option<i16>>,
    ended_by: Vec<&'static str>,
    start_time: Vec<SystemTime>,
    ring_time: Vec<Option<SystemTime>>,
    answer_time: Vec<Option<SystemTime>>,
    end_time: Vec<SystemTime>,
    transport: Vec<&'static str>,
    terminal: Vec<&'a str>,
    source: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn of(rows: &[&'a Cdr]) -> Columns<'a> {
        let mut c = Columns::default();
        for cdr in rows {
            c.id.push(cdr.id.to_string());
            for (col, value) in c.text.iter_mut().zip([
                &cdr.node,
                &cdr.call_id,
                &cdr.caller,
                &cdr.called,
                &cdr.caller_uri,
                &cdr.called_uri,
            ]) {
                col.push(value.as_str());
            }
            c.call_type.push(render::call_type_str(cdr.call_type));
            c.video_started_at.push(cdr.video_started_at.map(time));
            c.status.push(render::status_str(cdr.status));
            c.disposition.push(render::disposition_str(cdr.disposition));
            // A code past i16 cannot be SIP; the column's CHECK refuses it as it should.
            c.sip_code
                .push(cdr.sip_code.map(|s| i16::try_from(s).unwrap_or(i16::MAX)));
            c.ended_by.push(render::ended_by_str(cdr.ended_by));
            c.start_time.push(time(cdr.start_time));
            c.ring_time.push(cdr.ring_time.map(time));
            c.answer_time.push(cdr.answer_time.map(time));
            c.end_time.push(time(cdr.end_time));
            c.transport.push(render::transport_str(cdr.transport));
            c.terminal.push(cdr.terminal.as_str());
            c.source.push(render::source_str(cdr.source));
        }
        c
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 20] {
        let [node, call_id, caller, called, caller_uri, called_uri] = &self.text;
        [
            &self.id,
            node,
            call_id,
            caller,
            called,
            caller_uri,
            called_uri,
            &self.call_type,
            &self.video_started_at,
            &self.status,
            &self.disposition,
            &self.sip_code,
            &self.ended_by,
            &self.start_time,
            &self.ring_time,
            &self.answer_time,
            &self.end_time,
            &self.transport,
            &self.terminal,
            &self.source,
        ]
    }
}

/// A driver error as a kind and one line: the server's message with its SQLSTATE, or the
/// connection failure with its cause.
fn pg_error(err: &tokio_postgres::Error) -> SinkError {
    if let Some(db) = err.as_db_error() {
        let code = db.code().code();
        let mut message = format!("{} ({code})", db.message());
        if let Some(detail) = db.detail() {
            message.push_str(": ");
            message.push_str(detail);
        }
        return SinkError::new(ErrorKind::of_sqlstate(code), message);
    }
    let mut message = err.to_string();
    let mut timed_out = false;
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    // tokio-postgres reports a connect timeout as "timeout"; io timeouts likewise.
    let kind = if timed_out || message.contains("timeout") || message.contains("timed out") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connect
    };
    SinkError::new(kind, message)
}

fn pool_error(err: &PoolError) -> SinkError {
    match err {
        PoolError::Backend(e) => pg_error(e),
        PoolError::PostCreateHook(HookError::Backend(e)) => pg_error(e),
        PoolError::PostCreateHook(HookError::Message(m)) => {
            SinkError::new(ErrorKind::Schema, m.to_string())
        }
        PoolError::Timeout(what) => SinkError::new(
            ErrorKind::Timeout,
            format!("no database connection in time ({what:?})"),
        ),
        PoolError::Closed | PoolError::NoRuntimeSpecified => {
            SinkError::new(ErrorKind::Connect, err.to_string())
        }
    }
}

/// The schema check every new connection passes before it is used.
async fn check_schema(client: &tokio_postgres::Client) -> Result<(), HookError> {
    let row = client
        .query_one("SELECT max(version) FROM sipedge_schema_version", &[])
        .await
        .map_err(|e| match e.as_db_error().map(|d| d.code().code()) {
            Some("42P01") => HookError::message(
                "the database has no sipedge_schema_version table: apply etc/sql/postgres.sql (see etc/sql/README.md)",
            ),
            _ => HookError::Backend(e),
        })?;
    let found: Option<i32> = row.try_get(0).map_err(HookError::Backend)?;
    match found {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(v) => Err(HookError::message(format!(
            "the database schema is version {v}; this sipedge writes version {SCHEMA_VERSION} (upgrade sipedge or the schema, see etc/sql/README.md)"
        ))),
        None => Err(HookError::message(
            "sipedge_schema_version is empty: apply etc/sql/postgres.sql (see etc/sql/README.md)",
        )),
    }
}

pub fn pool(cfg: &PostgresConfig, pg: tokio_postgres::Config) -> Result<Pool, String> {
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(cfg.connect_timeout))
        .recycle_timeout(Some(cfg.connect_timeout))
        .post_create(Hook::async_fn(|client, _| {
            Box::pin(async move { check_schema(client).await })
        }))
        .build()
        .map_err(|e| format!("sink.postgres: cannot set up the connection pool: {e}"))
}

/// What the loops share.
#[derive(Debug)]
pub struct Ctx {
    pub pool: Pool,
    pub store: Store,
    pub shared: Arc<Shared>,
    pub batch_size: usize,
    /// Batches the outbox loop writes at once (`pool_size`).
    pub parallel: usize,
    pub backfill_rate: u32,
    /// The longest one statement (with getting its connection) is waited for.
    pub deadline: Duration,
    pub shutdown: CancellationToken,
}

/// What a batch came to.
#[derive(Debug, Default)]
struct Written {
    /// Rows committed.
    shipped: u64,
    /// Rows refused and parked.
    parked: Vec<Parked>,
}

impl Ctx {
    /// Runs a store read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SinkError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| SinkError::new(ErrorKind::Store, format!("store read failed: {e}")))?
            .map_err(|e| SinkError::new(ErrorKind::Store, format!("store read failed: {e}")))
    }

    /// `fut` within the deadline; on a miss the connection may be mid-transaction, so the
    /// pool's idle connections are closed (the server rolls an unfinished one back).
    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, SinkError>>,
    ) -> Result<T, SinkError> {
        match tokio::time::timeout(self.deadline, fut).await {
            Ok(result) => result,
            Err(_) => {
                self.pool.retain(|_, _| false);
                Err(SinkError::new(
                    ErrorKind::Timeout,
                    format!(
                        "the database did not answer within {}",
                        humantime::format_duration(self.deadline)
                    ),
                ))
            }
        }
    }

    /// Upserts `rows` in one transaction; on a refused row, row by row, parking the rows
    /// still refused. Anything else fails the whole batch, which is then retried as it is.
    async fn write(&self, rows: &[&Cdr]) -> Result<Written, SinkError> {
        if rows.is_empty() {
            return Ok(Written::default());
        }
        let mut client = self
            .timed(async { self.pool.get().await.map_err(|e| pool_error(&e)) })
            .await?;
        let result = match self.timed(upsert(&mut client, rows)).await {
            Ok(()) => Ok(Written {
                shipped: rows.len() as u64,
                parked: Vec::new(),
            }),
            Err(e) if e.kind == ErrorKind::Rejected => self.row_by_row(&mut client, rows).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // A broken connection is not handed out again.
            drop(Object::take(client));
        }
        result
    }

    async fn row_by_row(&self, client: &mut Object, rows: &[&Cdr]) -> Result<Written, SinkError> {
        let mut out = Written::default();
        for row in rows {
            match self.timed(upsert(client, std::slice::from_ref(row))).await {
                Ok(()) => out.shipped += 1,
                Err(e) if e.kind == ErrorKind::Rejected => out.parked.push(Parked {
                    id: row.id,
                    reason: e.message,
                    at: now_ms(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sleeps `d`; false when the sink is stopping.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(d) => true,
        }
    }
}

async fn upsert(client: &mut Object, rows: &[&Cdr]) -> Result<(), SinkError> {
    let columns = Columns::of(rows);
    let statement = client
        .prepare_cached(&upsert_statement())
        .await
        .map_err(|e| pg_error(&e))?;
    let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
    tx.execute(&statement, &columns.params())
        .await
        .map_err(|e| pg_error(&e))?;
    tx.commit().await.map_err(|e| pg_error(&e))
}

fn seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32)
}

/// The statements of one round: the entries' CDRs, each id once (a CDR changed twice is
/// queued twice, both entries carrying its latest version, and one statement may not upsert
/// an id twice; across the round, two transactions must not wait on each other's rows), cut
/// into batches of `batch_size`, each in id order so that concurrent transactions (these and
/// the backfill's) take row locks in one order and cannot deadlock.
fn plan(entries: Vec<OutboxEntry>, batch_size: usize) -> Vec<Vec<Cdr>> {
    let mut seen = HashSet::new();
    let rows: Vec<Cdr> = entries
        .into_iter()
        .filter_map(|e| e.cdr)
        .filter(|cdr| seen.insert(cdr.id))
        .collect();
    let mut batches: Vec<Vec<Cdr>> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let mut batch: Vec<Cdr> = rows.by_ref().take(batch_size.max(1)).collect();
        batch.sort_by_key(|c| c.id);
        batches.push(batch);
    }
    batches
}

/// Ships the outbox, oldest first, until shutdown. Each round reads up to `parallel`
/// batches and writes them at once on as many connections (the database's work per row is
/// most of the cost, and each connection is a server process of its own); the round is
/// acknowledged when all of them committed. When one fails nothing of the round is
/// acknowledged: the next round ships the committed ones again, as no-ops.
pub async fn outbox_loop(ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(seed());
    // Entries up to here are committed in the database and acknowledged; the ack becomes
    // durable with the store's next commit, so the snapshot may still show them.
    let mut done: Option<u64> = None;
    let started = tokio::time::Instant::now();
    let mut last_contact = started.checked_sub(IDLE_CHECK).unwrap_or(started);
    loop {
        if ctx.shutdown.is_cancelled() {
            return;
        }
        let limit = ctx.batch_size.saturating_mul(ctx.parallel);
        let step = async {
            let entries = ctx.read(move |s| s.outbox_peek(done, limit)).await?;
            let Some(last) = entries.last().map(|e| e.seq) else {
                return Ok(None);
            };
            let mut writes = tokio::task::JoinSet::new();
            for batch in plan(entries, ctx.batch_size) {
                let ctx = ctx.clone();
                writes.spawn(async move {
                    let refs: Vec<&Cdr> = batch.iter().collect();
                    ctx.write(&refs).await
                });
            }
            let mut round = Written::default();
            let mut failure = None;
            while let Some(joined) = writes.join_next().await {
                match joined {
                    Ok(Ok(written)) => {
                        round.shipped += written.shipped;
                        round.parked.extend(written.parked);
                    }
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(e) => {
                        failure = failure.or(Some(SinkError::new(
                            ErrorKind::Database,
                            format!("a batch's task failed: {e}"),
                        )))
                    }
                }
            }
            match failure {
                Some(e) => Err(e),
                None => Ok::<_, SinkError>(Some((last, round))),
            }
        };
        let outcome = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            outcome = step => outcome,
        };
        match outcome {
            Ok(Some((last, written))) => {
                if ctx.store.writer().submit(WriteOp::AckOutbox(last)).is_err() {
                    return;
                }
                last_contact = tokio::time::Instant::now();
                done = Some(last);
                ctx.shared.succeeded(written.shipped, 0, written.parked);
                backoff.reset();
            }
            Ok(None) => {
                // An idle sink still finds out early that the database refuses it (a wrong
                // password, another schema version), not at the first call.
                if last_contact.elapsed() >= IDLE_CHECK {
                    last_contact = tokio::time::Instant::now();
                    let checked = ctx
                        .timed(async { ctx.pool.get().await.map_err(|e| pool_error(&e)) })
                        .await;
                    if let Err(e) = checked {
                        ctx.shared.failed(&e);
                        if !ctx.pause(backoff.next_delay()).await {
                            return;
                        }
                        continue;
                    }
                }
                backoff.reset();
                if !ctx.pause(IDLE_POLL).await {
                    return;
                }
            }
            Err(e) => {
                ctx.shared.failed(&e);
                if !ctx.pause(backoff.next_delay()).await {
                    return;
                }
            }
        }
    }
}

/// The backfill's progress as saved in the store's sink state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Progress {
    /// The last CDR id committed to the database.
    after: Option<CdrId>,
    done: bool,
}

fn load_progress(bytes: Option<Vec<u8>>) -> Progress {
    bytes
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Progress {
            after: None,
            done: false,
        })
}

/// Walks the stored CDRs oldest first at `backfill_rate` when the saved progress says so.
pub async fn backfill_loop(ctx: Arc<Ctx>) {
    let mut backoff = Backoff::new(seed().rotate_left(17));
    let mut progress = loop {
        match ctx.read(|s| s.sink_state(NAME)).await {
            Ok(bytes) => break load_progress(bytes),
            Err(e) => {
                ctx.shared.failed(&e);
                if !ctx.pause(backoff.next_delay()).await {
                    return;
                }
            }
        }
    };
    if progress.done {
        ctx.shared.update(|s| s.backfill = Backfill::Done);
        return;
    }
    tracing::info!(sink = NAME, after = ?progress.after.map(|id| id.to_string()), rate = ctx.backfill_rate, "backfilling the stored CDRs");
    let rate = f64::from(ctx.backfill_rate);
    let chunk = ctx.batch_size.min(ctx.backfill_rate as usize).max(1);
    let mut paced_from = tokio::time::Instant::now();
    let mut sent = 0u64;
    loop {
        ctx.shared.update(|s| {
            s.backfill = Backfill::Running {
                after: progress.after,
            }
        });
        let after = progress.after;
        let step = async {
            let rows = ctx.read(move |s| s.cdrs_ascending(after, chunk)).await?;
            let Some(last) = rows.last().map(|c| c.id) else {
                return Ok(None);
            };
            let refs: Vec<&Cdr> = rows.iter().collect();
            let written = ctx.write(&refs).await?;
            Ok::<_, SinkError>(Some((last, rows.len() as u64, written)))
        };
        let outcome = tokio::select! {
            () = ctx.shutdown.cancelled() => return,
            outcome = step => outcome,
        };
        match outcome {
            Ok(Some((last, n, written))) => {
                progress.after = Some(last);
                if !save(&ctx, progress) {
                    return;
                }
                ctx.shared.succeeded(0, written.shipped, written.parked);
                backoff.reset();
                sent += n;
                let due = paced_from + Duration::from_secs_f64(sent as f64 / rate);
                let wait = due.saturating_duration_since(tokio::time::Instant::now());
                if !ctx.pause(wait).await {
                    return;
                }
            }
            Ok(None) => {
                progress.done = true;
                save(&ctx, progress);
                ctx.shared.update(|s| s.backfill = Backfill::Done);
                tracing::info!(
                    sink = NAME,
                    "backfill done: every stored CDR has been shipped"
                );
                return;
            }
            Err(e) => {
                ctx.shared.failed(&e);
                if !ctx.pause(backoff.next_delay()).await {
                    return;
                }
                // No burst to catch up after an outage.
                paced_from = tokio::time::Instant::now();
                sent = 0;
            }
        }
    }
}

/// Queues the progress; false once the store is closing.
fn save(ctx: &Ctx, progress: Progress) -> bool {
    let bytes = serde_json::to_vec(&progress).unwrap_or_default();
    ctx.store
        .writer()
        .submit(WriteOp::PutSinkState(NAME.to_owned(), bytes))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipedge_store::{CallStatus, CallType, Disposition, EndedBy, Transport};

    #[test]
    fn the_statement_names_every_column_once() {
        let sql = upsert_statement();
        assert!(sql.starts_with("INSERT INTO cdr (id, node, call_id, caller, called, "));
        assert!(sql.contains("unnest($1::text[], $2::text[]"), "{sql}");
        assert!(
            sql.contains("$9::timestamptz[]") && sql.contains("$12::int2[]"),
            "{sql}"
        );
        assert!(sql.contains("$20::text[])"), "{sql}");
        assert!(!sql.contains("$21"), "{sql}");
        assert!(sql.contains("ON CONFLICT (id) DO UPDATE SET node = EXCLUDED.node,"));
        assert!(!sql.contains("id = EXCLUDED.id"), "{sql}");
        assert!(sql.contains("WHERE (cdr.node, cdr.call_id,"), "{sql}");
        assert!(
            sql.ends_with("EXCLUDED.terminal, EXCLUDED.source)"),
            "{sql}"
        );
    }

    #[test]
    fn a_round_is_each_id_once_in_batches_in_id_order() {
        let cdr = |id: u128| {
            let mut c = sipedge_store::Cdr {
                id: CdrId(id),
                node: "n".into(),
                call_id: "c".into(),
                caller: "1".into(),
                called: "2".into(),
                caller_uri: "sip:1@h".into(),
                called_uri: "sip:2@h".into(),
                call_type: CallType::Audio,
                video_started_at: None,
                status: CallStatus::NotConnected,
                disposition: Disposition::Busy,
                sip_code: Some(486),
                ended_by: EndedBy::Callee,
                start_time: UnixMs(1),
                ring_time: None,
                answer_time: None,
                end_time: UnixMs(2),
                transport: Transport::Udp,
                source: sipedge_store::Source::Proxy,
                terminal: "127.0.0.1:5060".into(),
            };
            c.call_id = format!("c{id}");
            c
        };
        let entry = |seq: u64, id: Option<u128>| OutboxEntry {
            seq,
            id: CdrId(id.unwrap_or(0)),
            queued_at: UnixMs(0),
            cdr: id.map(cdr),
        };
        let ids = |batches: &[Vec<Cdr>]| -> Vec<Vec<u128>> {
            batches
                .iter()
                .map(|b| b.iter().map(|c| c.id.0).collect())
                .collect()
        };
        // (seq, CDR id or retention removed it), batch size, the batches' ids.
        type Case<'a> = (&'a [(u64, Option<u128>)], usize, &'a [&'a [u128]]);
        let cases: &[Case] = &[
            (&[], 2, &[]),
            (&[(1, None)], 2, &[]),
            (
                &[(1, Some(5)), (2, Some(3)), (3, Some(4))],
                10,
                &[&[3, 4, 5]],
            ),
            (
                &[
                    (1, Some(5)),
                    (2, Some(3)),
                    (3, Some(5)),
                    (4, Some(9)),
                    (5, None),
                    (6, Some(1)),
                ],
                2,
                &[&[3, 5], &[1, 9]],
            ),
            (&[(1, Some(7)), (2, Some(7)), (3, Some(7))], 1, &[&[7]]),
        ];
        for (entries, batch_size, expected) in cases {
            let entries = entries.iter().map(|(s, id)| entry(*s, *id)).collect();
            let got = ids(&plan(entries, *batch_size));
            let want: Vec<Vec<u128>> = expected.iter().map(|b| b.to_vec()).collect();
            assert_eq!(got, want, "{entries:?}", entries = expected);
        }
    }

    #[test]
    fn times_bind_to_the_millisecond() {
        for ms in [0i64, 1, 1_767_225_600_123, -1_500] {
            let t = time(UnixMs(ms));
            let back = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => d.as_millis() as i64,
                Err(e) => -(e.duration().as_millis() as i64),
            };
            assert_eq!(back, ms);
        }
    }

    #[test]
    fn progress_survives_its_encoding_and_damage_restarts_it() {
        let p = Progress {
            after: Some(CdrId(0xabc)),
            done: false,
        };
        let bytes = serde_json::to_vec(&p).unwrap();
        assert_eq!(load_progress(Some(bytes)), p);
        let fresh = Progress {
            after: None,
            done: false,
        };
        assert_eq!(load_progress(None), fresh);
        assert_eq!(load_progress(Some(b"{garbage".to_vec())), fresh);
    }
}
