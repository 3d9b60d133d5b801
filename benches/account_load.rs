//! Load benchmark of the account responder (SPEC §3, `POST /AgoraAccount`) against a plain
//! hyper "hello" server, both driven by the same client in the same run, so that the ratio
//! between them means something on a machine whose speed and neighbours vary.
//!
//! Run with `cargo bench --bench account_load`; it takes about 45 s.
//!
//! What shares the cores: the real `sipedge` binary (release profile; its default runtime has
//! one worker per core), the hello server (a runtime in this process with the same worker
//! count) and the load client (another runtime in this process, same worker count). The
//! client's own CPU is therefore inside every throughput figure; the "CPU µs/req" column,
//! read from /proc, is what each server alone spends per answer, and the ratio of those is
//! what the throughput ratio would be with the cores to the server alone, as on a node.
//!
//! First every target's maximum: a closed loop at full speed. Then every target at half its
//! own maximum: an open loop whose latencies are counted from each request's scheduled send
//! time, so that a stalled server cannot hide the queue it causes (no coordinated omission).
//! The targets take turns in short windows, and the report says how much CPU other processes
//! took meanwhile. Every answer is checked: status 200 and `"resCode":"0"`.
//!
//! sipedge runs at `log.level = "info"`, as deployed, its one line per request read from its
//! stderr by a thread here as journald would; a second sipedge at `log.level = "warn"`
//! shows what that line costs.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Concurrent keep-alive connections of the client, the same for every target and phase.
const CONNECTIONS: usize = 32;
/// The targets take turns, one short window each per round, so that the other builders'
/// bursts on this shared machine fall on all of them alike instead of on whichever ran then.
const ROUNDS: usize = 10;
/// Once per target before the rounds: connections, caches and allocators settle.
const FIRST_WARMUP: Duration = Duration::from_millis(500);
/// Closed loop, each round: new connections settle, not counted.
const MAX_WARMUP: Duration = Duration::from_millis(150);
/// Closed loop, each round: the counted window.
const MAX_WINDOW: Duration = Duration::from_millis(500);
/// Open loop, each round: requests sent but not counted, so that the window starts steady.
const RATE_WARMUP: Duration = Duration::from_millis(200);
/// Open loop, each round: the counted window.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// Open loop: a server that falls this far behind its schedule is not waited for; what was
/// still unsent then is reported instead, which keeps the run bounded.
const RATE_GRACE: Duration = Duration::from_secs(2);
/// A request unanswered this long counts as a failed connection, which bounds every phase.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct prepared request bodies; the client cycles through them.
const BODIES: usize = 4096;
/// The appid of the benchmark's configuration, used to make the tokens.
const APPID: &str = "bench-appid";
/// The zone of the request timestamps, the example configuration's.
const ZONE: chrono_tz::Tz = chrono_tz::Asia::Shanghai;
/// What the hello server answers: the shape of a granted account reply, so that the client
/// does the same work on both servers' answers.
const HELLO: &[u8] =
    br#"{"method":"getAgoraAccount","streamNumber":"1","resCode":"0","account":"sipserver"}"#;
/// The targets the issue sets: sipedge's share of the hello server's maximum, and its p99 at
/// half its own maximum.
const TARGET_RATIO: f64 = 0.8;
const TARGET_P99: Duration = Duration::from_millis(2);

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("account_load: some answers were wrong; the figures above are not valid");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("account_load: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Measures every target and prints the table; `Ok(false)` when any answer was wrong.
fn run() -> Result<bool, String> {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let hello_runtime = runtime(workers, "hello-server")?;
    let client = runtime(workers, "load-client")?;
    let hello_addr = hello_runtime.block_on(start_hello())?;
    let mut info = Sipedge::start("info")?;
    let mut warn = Sipedge::start("warn")?;
    let bodies: Arc<[Bytes]> = account_bodies(APPID, BODIES).into();
    let load_before = loadavg();
    let ours = [
        Cpu::ThreadsNamed(""),
        Cpu::Process(info.child.id()),
        Cpu::Process(warn.child.id()),
    ];
    let ours_before: Duration = ours.iter().map(|c| cpu_time(*c)).sum();
    let busy_before = machine_busy();
    let started = Instant::now();

    let mut rows = [
        Row::new(
            "hello (plain hyper)",
            hello_addr,
            Cpu::ThreadsNamed("hello-server"),
        ),
        Row::new(
            "sipedge (log info)",
            info.addr,
            Cpu::Process(info.child.id()),
        ),
        Row::new(
            "sipedge (log warn)",
            warn.addr,
            Cpu::Process(warn.child.id()),
        ),
    ];
    client.block_on(measure(&mut rows, &bodies));
    let load_after = loadavg();
    let ours_used = ours
        .iter()
        .map(|c| cpu_time(*c))
        .sum::<Duration>()
        .saturating_sub(ours_before);
    let others = machine_busy()
        .saturating_sub(busy_before)
        .saturating_sub(ours_used)
        .as_secs_f64()
        / started.elapsed().as_secs_f64();

    let mut log_checks = Vec::new();
    for (sipedge, row) in [(&mut info, &rows[1]), (&mut warn, &rows[2])] {
        log_checks.push((row.name, sipedge.stop()?, row.answered()));
    }
    drop(hello_runtime);

    let machine = Machine {
        workers,
        load_before,
        load_after,
        others,
    };
    print_report(&machine, &rows, &log_checks);
    Ok(rows.iter().all(|r| r.wrong() == 0))
}

fn runtime(workers: usize, name: &str) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the {name} runtime: {e}"))
}

/// The baseline: hyper's HTTP/1 server with nothing but a service that reads the body and
/// answers a fixed JSON document.
async fn start_hello() -> Result<SocketAddr, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot bind the hello server: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("hello server address: {e}"))?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(hello);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    request.into_body().collect().await?;
    let mut response = Response::new(Full::new(Bytes::from_static(HELLO)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Request bodies as a terminal sends them, each with its own streamNumber and a valid token
/// for a timestamp a little before now (well inside the allowed skew for the whole run),
/// made before any timing starts so that hashing is not the client's cost.
fn account_bodies(appid: &str, count: usize) -> Vec<Bytes> {
    let now = Utc::now().with_timezone(&ZONE);
    (0..count)
        .map(|i| {
            let age = TimeDelta::seconds(i64::try_from(i % 600).unwrap_or(0));
            let timestamp = (now - age).format("%Y%m%d%H%M%S").to_string();
            let token = hex::encode_upper(Md5::digest(format!("{appid}{timestamp}")));
            let body = format!(
                r#"{{"method":"getAgoraAccount","streamNumber":"{}","token":"{token}","timestamp":"{timestamp}"}}"#,
                100_000 + i
            );
            Bytes::from(body)
        })
        .collect()
}

/// A running `sipedge serve`, killed on drop if not stopped. Its stderr goes into a pipe that
/// a thread of this process drains, as journald drains a unit's stderr on a node; a file
/// would instead make sipedge wait on this machine's busy disk.
struct Sipedge {
    /// The process, to find its CPU time and to stop it.
    child: Child,
    /// The account listener's bound address, read from the log.
    addr: SocketAddr,
    /// The log's first lines, for the start and for error messages.
    head: Arc<Mutex<String>>,
    /// Reads the log to its end; returns how many `account request` lines it held.
    reader: Option<std::thread::JoinHandle<u64>>,
    /// Holds the config and data directory until the end of the run.
    _dir: tempfile::TempDir,
}

/// Lines of the log kept in `Sipedge::head`.
const HEAD_LINES: usize = 50;

impl Sipedge {
    fn start(level: &str) -> Result<Sipedge, String> {
        // Below info the start lines are not logged, so the account port is chosen here and
        // the start is seen by connecting; at info it is read from the log as a user would.
        let fixed = if level == "info" {
            None
        } else {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("cannot find a free port: {e}"))?;
            Some(probe)
        };
        let listen = fixed.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let config = format!(
            "[node]\nname = \"bench\"\ntimezone = \"{zone}\"\ndata_dir = \"{data}\"\n\n\
             [account]\nlisten = \"{listen}\"\nappids = [\"{APPID}\"]\naccount = \"sipserver\"\n\
             source_rate_limit = 0\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\n[log]\nlevel = \"{level}\"\nformat = \"text\"\n",
            zone = ZONE.name(),
            data = dir.path().join("data").display(),
        );
        let config_path = dir.path().join("sipedge.toml");
        std::fs::write(&config_path, config).map_err(|e| format!("write config: {e}"))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start sipedge: {e}"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| "sipedge's stderr is not a pipe".to_owned())?;
        let head = Arc::new(Mutex::new(String::new()));
        let reader = {
            let head = head.clone();
            std::thread::Builder::new()
                .name("sipedge-log".to_owned())
                .spawn(move || drain_log(stderr, &head))
                .map_err(|e| format!("cannot start the log reader: {e}"))?
        };
        let mut sipedge = Sipedge {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            head,
            reader: Some(reader),
            _dir: dir,
        };
        sipedge.addr = sipedge.wait_started(fixed)?;
        Ok(sipedge)
    }

    fn head(&self) -> String {
        self.head.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Waits until sipedge serves and returns the account listener's address: from the
    /// `sipedge started` and `listening` lines, or, with a `fixed` address, by connecting.
    fn wait_started(&mut self, fixed: Option<SocketAddr>) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.head();
            if text.contains("sipedge started") {
                return account_addr(&text)
                    .ok_or_else(|| format!("no account listener in sipedge's log:\n{text}"));
            }
            if let Some(addr) = fixed
                && std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
            {
                return Ok(addr);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("sipedge exited at start ({status}):\n{text}"));
            }
            if Instant::now() > deadline {
                return Err(format!("sipedge did not start within 30 s:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, waits for the drain, and returns how many `account request` lines it logged.
    fn stop(&mut self) -> Result<u64, String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if Instant::now() > deadline {
                return Err("sipedge did not stop within 15 s of SIGTERM".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        match self.reader.take().map(|r| r.join()) {
            Some(Ok(lines)) => Ok(lines),
            _ => Err("the log reader failed".to_owned()),
        }
    }
}

/// Reads sipedge's stderr to its end, keeping the first lines and counting request lines.
fn drain_log(stderr: std::process::ChildStderr, head: &Mutex<String>) -> u64 {
    let mut reader = BufReader::with_capacity(1 << 16, stderr);
    let mut line = Vec::with_capacity(512);
    let mut kept = 0;
    let mut requests = 0;
    while reader.read_until(b'\n', &mut line).unwrap_or(0) > 0 {
        if line
            .windows(b"account request".len())
            .any(|w| w == b"account request")
        {
            requests += 1;
        }
        if kept < HEAD_LINES {
            kept += 1;
            if let Ok(mut head) = head.lock() {
                head.push_str(&String::from_utf8_lossy(&line));
            }
        }
        line.clear();
    }
    requests
}

impl Drop for Sipedge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The `addr=` of the `listening listener=account` line.
fn account_addr(log: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains(" listening ") && l.contains("listener=account"))
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .and_then(|a| a.trim_matches('"').parse().ok())
}

/// Where a server's CPU time is read.
#[derive(Clone, Copy)]
enum Cpu {
    /// Every thread of another process.
    Process(u32),
    /// The threads of this process whose name starts so.
    ThreadsNamed(&'static str),
}

/// The load client's threads: the runtime's workers and the pacer.
const CLIENT_CPU: Cpu = Cpu::ThreadsNamed("load-");

/// Time on CPU so far, from `/proc/…/task/*/schedstat` (nanoseconds, unlike the tick-rounded
/// `stat`).
fn cpu_time(cpu: Cpu) -> Duration {
    let (dir, prefix) = match cpu {
        Cpu::Process(pid) => (format!("/proc/{pid}/task"), None),
        Cpu::ThreadsNamed(prefix) => ("/proc/self/task".to_owned(), Some(prefix)),
    };
    let mut nanos = 0u64;
    for task in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = task.path();
        if let Some(prefix) = prefix {
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if !name.starts_with(prefix) {
                continue;
            }
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        nanos += stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Duration::from_nanos(nanos)
}

/// CPU time the whole machine spent busy so far, from `/proc/stat`, whose unit is the
/// kernel's USER_HZ: 100 per second on every Linux this runs on.
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle and iowait.
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The conditions of the run, printed with the figures.
struct Machine {
    /// Cores, hence tokio workers of every server and of the client.
    workers: usize,
    /// The load average as the measurement started and ended: how busy the machine was.
    load_before: String,
    load_after: String,
    /// Cores' worth of CPU that other processes used during the measurement.
    others: f64,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// Everything measured on one target.
struct Row {
    /// How the report names the target.
    name: &'static str,
    /// Where the client sends its requests.
    addr: SocketAddr,
    /// Where the target's CPU time is read.
    cpu: Cpu,
    /// The closed-loop windows of all rounds together.
    max: MaxReport,
    /// Each round's closed-loop rate, to show the spread within the run.
    round_rates: Vec<f64>,
    /// The open-loop windows of all rounds together.
    rate: RateReport,
}

impl Row {
    fn new(name: &'static str, addr: SocketAddr, cpu: Cpu) -> Row {
        Row {
            name,
            addr,
            cpu,
            max: MaxReport::default(),
            round_rates: Vec::new(),
            rate: RateReport::default(),
        }
    }

    fn wrong(&self) -> u64 {
        self.max.tally.wrong + self.rate.tally.wrong + self.rate.unsent
    }

    /// Requests the server answered with any HTTP response, warm-ups included.
    fn answered(&self) -> u64 {
        self.max.tally.answered + self.rate.tally.answered
    }
}

/// First every target's maximum, in rounds; then every target at half its own maximum, in
/// rounds.
async fn measure(rows: &mut [Row], bodies: &Arc<[Bytes]>) {
    for row in rows.iter_mut() {
        let warm = max_rate(row.addr, row.cpu, bodies, FIRST_WARMUP, Duration::ZERO).await;
        row.max.add(warm);
    }
    for _ in 0..ROUNDS {
        for row in rows.iter_mut() {
            let round = max_rate(row.addr, row.cpu, bodies, MAX_WARMUP, MAX_WINDOW).await;
            row.round_rates.push(round.per_second());
            row.max.add(round);
        }
    }
    for _ in 0..ROUNDS {
        for row in rows.iter_mut() {
            let rate = row.max.per_second() / 2.0;
            let round = fixed_rate(row.addr, bodies, rate).await;
            row.rate.add(round);
        }
    }
    for row in rows.iter_mut() {
        row.max.latencies.sort_unstable();
        row.rate.sort();
    }
}

/// Counts of one phase, warm-up included, and the first problem seen.
#[derive(Default)]
struct Tally {
    /// Answers of any status: each is one request the server handled (and logged).
    answered: u64,
    /// Answers that were not 200 with `"resCode":"0"`, and connections that failed.
    wrong: u64,
    /// Printed with the report, so that a wrong run says why.
    first_problem: Option<String>,
}

impl Tally {
    fn problem(&mut self, problem: Problem) {
        self.wrong += 1;
        if let Problem::Answer(_) = problem {
            self.answered += 1;
        }
        if self.first_problem.is_none() {
            self.first_problem = Some(problem.to_string());
        }
    }

    fn add(&mut self, other: Tally) {
        self.answered += other.answered;
        self.wrong += other.wrong;
        if self.first_problem.is_none() {
            self.first_problem = other.first_problem;
        }
    }
}

enum Problem {
    /// The connection failed; a new one is needed.
    Connection(String),
    /// The server answered, wrongly.
    Answer(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Connection(e) => write!(f, "connection: {e}"),
            Problem::Answer(e) => write!(f, "answer: {e}"),
        }
    }
}

/// One client connection.
struct Client {
    /// hyper's handle on the connection, whose driver runs as its own task.
    sender: SendRequest<Full<Bytes>>,
    /// HTTP/1.1 requires a Host header, and hyper's low-level client does not add one.
    host: HeaderValue,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, Problem> {
        let failed = |e: &dyn std::fmt::Display| Problem::Connection(format!("{addr}: {e}"));
        let stream = TcpStream::connect(addr).await.map_err(|e| failed(&e))?;
        stream.set_nodelay(true).map_err(|e| failed(&e))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
        tokio::spawn(connection);
        let host = HeaderValue::from_str(&addr.to_string()).map_err(|e| failed(&e))?;
        Ok(Client { sender, host })
    }

    /// One account request and the check of its answer.
    async fn exchange(&mut self, body: Bytes) -> Result<(), Problem> {
        let broken = |e: hyper::Error| Problem::Connection(e.to_string());
        self.sender.ready().await.map_err(broken)?;
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = hyper::Uri::from_static("/AgoraAccount");
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let exchange = async {
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, body.to_bytes()))
        };
        let (status, body) = tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| Problem::Connection(format!("no answer within {ANSWER_TIMEOUT:?}")))?
            .map_err(broken)?;
        check_answer(status, &body).map_err(Problem::Answer)
    }
}

#[derive(serde::Deserialize)]
struct Answer<'a> {
    /// The only field the check needs: "0" is a granted account.
    #[serde(rename = "resCode", borrow)]
    res_code: &'a str,
}

fn check_answer(status: StatusCode, body: &[u8]) -> Result<(), String> {
    let shown = || String::from_utf8_lossy(body).into_owned();
    if status != StatusCode::OK {
        return Err(format!("status {status}: {}", shown()));
    }
    match serde_json::from_slice::<Answer<'_>>(body) {
        Ok(answer) if answer.res_code == "0" => Ok(()),
        _ => Err(format!("not a granted answer: {}", shown())),
    }
}

/// The closed loop's result, of one window or of several added together.
#[derive(Default)]
struct MaxReport {
    /// Answers completed inside the counted windows.
    counted: u64,
    /// The counted windows' total length.
    window: Duration,
    /// The server's CPU time during the counted windows.
    cpu: Duration,
    /// The load client's CPU time during the counted windows: what the server could have
    /// used had it the cores to itself, as on a node.
    client_cpu: Duration,
    /// Response times at full speed (a closed loop: for information, not the target).
    latencies: Vec<u64>,
    /// Answered and wrong requests, warm-ups included.
    tally: Tally,
}

impl MaxReport {
    fn per_second(&self) -> f64 {
        self.counted as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn cpu_per_request(&self) -> Duration {
        self.cpu / u32::try_from(self.counted.max(1)).unwrap_or(u32::MAX)
    }

    fn client_cpu_per_request(&self) -> Duration {
        self.client_cpu / u32::try_from(self.counted.max(1)).unwrap_or(u32::MAX)
    }

    fn add(&mut self, other: MaxReport) {
        self.counted += other.counted;
        self.window += other.window;
        self.cpu += other.cpu;
        self.client_cpu += other.client_cpu;
        self.latencies.extend(other.latencies);
        self.tally.add(other.tally);
    }
}

/// Every connection sends its next request as soon as the previous answer arrives.
async fn max_rate(
    addr: SocketAddr,
    cpu: Cpu,
    bodies: &Arc<[Bytes]>,
    warmup: Duration,
    window: Duration,
) -> MaxReport {
    let start = Instant::now();
    let counted_from = start + warmup;
    let end = counted_from + window;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut latencies = Vec::new();
                let mut client = None;
                let mut next = k;
                while Instant::now() < end {
                    let Some(conn) = client.as_mut() else {
                        match Client::connect(addr).await {
                            Ok(c) => client = Some(c),
                            Err(p) => {
                                tally.problem(p);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        continue;
                    };
                    let body = bodies.get(next % bodies.len()).cloned().unwrap_or_default();
                    next += CONNECTIONS;
                    let sent = Instant::now();
                    let result = conn.exchange(body).await;
                    let done = Instant::now();
                    match result {
                        Ok(()) => {
                            tally.answered += 1;
                            if done > counted_from && done <= end {
                                latencies.push(nanos(done - sent));
                            }
                        }
                        Err(p @ Problem::Connection(_)) => {
                            client = None;
                            tally.problem(p);
                        }
                        Err(p) => tally.problem(p),
                    }
                }
                (tally, latencies)
            })
        })
        .collect();
    tokio::time::sleep_until(counted_from.into()).await;
    let cpu_before = cpu_time(cpu);
    let client_before = cpu_time(CLIENT_CPU);
    tokio::time::sleep_until(end.into()).await;
    let cpu_used = cpu_time(cpu).saturating_sub(cpu_before);
    let client_cpu = cpu_time(CLIENT_CPU).saturating_sub(client_before);

    let mut tally = Tally::default();
    let mut latencies = Vec::new();
    for task in tasks {
        match task.await {
            Ok((t, l)) => {
                tally.add(t);
                latencies.extend(l);
            }
            Err(e) => tally.problem(Problem::Connection(format!("client task: {e}"))),
        }
    }
    MaxReport {
        counted: latencies.len() as u64,
        window,
        cpu: cpu_used,
        client_cpu,
        latencies,
        tally,
    }
}

/// The open loop's result, of one window or of several added together; latencies in
/// nanoseconds.
#[derive(Default)]
struct RateReport {
    /// The rate asked for: half the target's maximum.
    asked: f64,
    /// The counted windows' total length.
    window: Duration,
    /// From the scheduled send time to the complete answer: what a terminal would wait.
    latencies: Vec<u64>,
    /// From the scheduled send time to the actual send: the pacer's wake-up slack (tens of
    /// µs) plus the wait for a free connection when all are busy, i.e. the server's queue.
    lateness: Vec<u64>,
    /// From the actual send to the complete answer.
    service: Vec<u64>,
    /// Scheduled requests not sent because the server was more than RATE_GRACE behind.
    unsent: u64,
    /// Answered and wrong requests, warm-ups included.
    tally: Tally,
}

impl RateReport {
    /// Answers completed per second of the counted windows.
    fn achieved(&self) -> f64 {
        self.latencies.len() as f64 / self.window.as_secs_f64().max(1e-9)
    }

    fn add(&mut self, other: RateReport) {
        self.asked = other.asked;
        self.window += other.window;
        self.latencies.extend(other.latencies);
        self.lateness.extend(other.lateness);
        self.service.extend(other.service);
        self.unsent += other.unsent;
        self.tally.add(other.tally);
    }

    fn sort(&mut self) {
        self.latencies.sort_unstable();
        self.lateness.sort_unstable();
        self.service.sort_unstable();
    }
}

/// Requests at fixed times regardless of answers: request i is due at `t0 + i/rate`, and the
/// first free connection sends it. A plain thread releases the due requests, because tokio's
/// timer rounds to whole milliseconds, half the latency target; its sleeps are exact to
/// tens of µs.
async fn fixed_rate(addr: SocketAddr, bodies: &Arc<[Bytes]>, rate: f64) -> RateReport {
    let mut tally = Tally::default();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        match Client::connect(addr).await {
            Ok(c) => clients.push(c),
            Err(p) => tally.problem(p),
        }
    }
    let rate = rate.max(1.0);
    let t0 = Instant::now() + Duration::from_millis(20);
    let counted_from = t0 + RATE_WARMUP;
    let end = counted_from + RATE_WINDOW;
    let give_up = end + RATE_GRACE;
    let due = move |i: u64| t0 + Duration::from_secs_f64(i as f64 / rate);
    let total = ((RATE_WARMUP + RATE_WINDOW).as_secs_f64() * rate).ceil() as u64;
    let released = Arc::new(tokio::sync::Semaphore::new(0));
    let taken = Arc::new(AtomicU64::new(0));

    let pacer = {
        let released = released.clone();
        std::thread::Builder::new()
            .name("load-pacer".to_owned())
            .spawn(move || {
                let mut count = 0u64;
                while count < total && Instant::now() < give_up {
                    let now = Instant::now();
                    let mut ready = 0usize;
                    while count < total && due(count) <= now {
                        count += 1;
                        ready += 1;
                    }
                    released.add_permits(ready);
                    std::thread::sleep(due(count).saturating_duration_since(Instant::now()));
                }
            })
    };

    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, client)| {
            let bodies = bodies.clone();
            let released = released.clone();
            let taken = taken.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut samples = Vec::new();
                let mut client = Some(client);
                let mut next = k;
                while let Ok(permit) = released.acquire().await {
                    permit.forget();
                    let scheduled = due(taken.fetch_add(1, Ordering::Relaxed));
                    let conn = match client.as_mut() {
                        Some(conn) => conn,
                        None => match Client::connect(addr).await {
                            Ok(c) => client.insert(c),
                            Err(p) => {
                                tally.problem(p);
                                continue;
                            }
                        },
                    };
                    let body = bodies.get(next % bodies.len()).cloned().unwrap_or_default();
                    next += CONNECTIONS;
                    let sent = Instant::now();
                    let result = conn.exchange(body).await;
                    let done = Instant::now();
                    match result {
                        Ok(()) => {
                            tally.answered += 1;
                            if scheduled >= counted_from {
                                samples.push((
                                    nanos(done - scheduled),
                                    nanos(sent - scheduled),
                                    nanos(done - sent),
                                ));
                            }
                        }
                        Err(p @ Problem::Connection(_)) => {
                            client = None;
                            tally.problem(p);
                        }
                        Err(p) => tally.problem(p),
                    }
                }
                (tally, samples)
            })
        })
        .collect();

    while taken.load(Ordering::Relaxed) < total && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    released.close();
    let mut samples = Vec::new();
    for task in tasks {
        match task.await {
            Ok((t, s)) => {
                tally.add(t);
                samples.extend(s);
            }
            Err(e) => tally.problem(Problem::Connection(format!("client task: {e}"))),
        }
    }
    match pacer.map(|p| p.join()) {
        Ok(Ok(())) => {}
        _ => tally.problem(Problem::Connection("the pacer thread failed".to_owned())),
    }
    let unsent = total.saturating_sub(taken.load(Ordering::Relaxed));
    RateReport {
        asked: rate,
        window: RATE_WINDOW,
        latencies: samples.iter().map(|s| s.0).collect(),
        lateness: samples.iter().map(|s| s.1).collect(),
        service: samples.iter().map(|s| s.2).collect(),
        unsent,
        tally,
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The value below which a fraction `q` of the sorted samples lie (nearest rank).
fn percentile(sorted: &[u64], q: f64) -> Option<u64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

fn ms(nanos: Option<u64>) -> String {
    nanos.map_or_else(|| "-".to_owned(), |n| format!("{:.3}", n as f64 / 1e6))
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

fn print_report(machine: &Machine, rows: &[Row], log_checks: &[(&str, u64, u64)]) {
    let Machine {
        workers,
        load_before,
        load_after,
        others,
    } = machine;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\naccount_load: POST /AgoraAccount, {CONNECTIONS} keep-alive connections, HTTP/1.1 on 127.0.0.1"
    );
    let _ = writeln!(
        out,
        "{workers} cores shared by every server ({workers} tokio workers each: sipedge's default, \
         and the hello server's) and this load client ({workers} workers); \
         load average before {load_before}, after {load_after}"
    );
    let _ = writeln!(
        out,
        "other processes used {others:.2} of the {workers} cores during the measurement{}",
        if *others > 0.2 {
            ": latencies are theirs as much as ours; compare the servers within this run only"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "targets take turns: {ROUNDS} rounds of one window each, after a {} s warm-up each",
        FIRST_WARMUP.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "\nmaximum: closed loop, per round {} s warm-up + {} s counted",
        MAX_WARMUP.as_secs_f64(),
        MAX_WINDOW.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>15} {:>10} {:>13} {:>7} {:>7} {:>6}",
        "server",
        "req/s",
        "rounds min-max",
        "CPU µs/req",
        "client µs/req",
        "p50 ms",
        "p99 ms",
        "wrong"
    );
    for row in rows {
        let low = row
            .round_rates
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min);
        let high = row.round_rates.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "{:<20} {:>8.0} {:>15} {:>10.1} {:>13.1} {:>7} {:>7} {:>6}",
            row.name,
            row.max.per_second(),
            format!("{low:.0}-{high:.0}"),
            row.max.cpu_per_request().as_secs_f64() * 1e6,
            row.max.client_cpu_per_request().as_secs_f64() * 1e6,
            ms(percentile(&row.max.latencies, 0.50)),
            ms(percentile(&row.max.latencies, 0.99)),
            row.max.tally.wrong,
        );
    }
    let _ = writeln!(
        out,
        "(CPU µs/req: the server's own CPU time per answer, from /proc/…/schedstat; \
         client µs/req: this client's, which the server shares the cores with here)"
    );
    let _ = writeln!(
        out,
        "\nhalf of each maximum: open loop, per round {} s warm-up + {} s counted; \
         latency from the scheduled send time",
        RATE_WARMUP.as_secs_f64(),
        RATE_WINDOW.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "{:<20} {:>8} {:>8} {:>7} {:>7} {:>8} {:>7} {:>11} {:>11} {:>6} {:>6}",
        "server",
        "asked/s",
        "got/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "late p99 ms",
        "serv p99 ms",
        "wrong",
        "unsent"
    );
    for row in rows {
        let r = &row.rate;
        let _ = writeln!(
            out,
            "{:<20} {:>8.0} {:>8.0} {:>7} {:>7} {:>8} {:>7} {:>11} {:>11} {:>6} {:>6}",
            row.name,
            r.asked,
            r.achieved(),
            ms(percentile(&r.latencies, 0.50)),
            ms(percentile(&r.latencies, 0.99)),
            ms(percentile(&r.latencies, 0.999)),
            ms(r.latencies.last().copied()),
            ms(percentile(&r.lateness, 0.99)),
            ms(percentile(&r.service, 0.99)),
            r.tally.wrong,
            r.unsent,
        );
    }
    let _ = writeln!(
        out,
        "(late: scheduled -> sent, i.e. waiting for a free connection; serv: sent -> answered)"
    );
    for row in rows {
        let problem = row.max.tally.first_problem.as_ref().or(row
            .rate
            .tally
            .first_problem
            .as_ref());
        if let Some(problem) = problem {
            let _ = writeln!(out, "first problem on {}: {problem}", row.name);
        }
    }
    for (name, lines, answered) in log_checks {
        let _ = writeln!(
            out,
            "{name}: {lines} \"account request\" log lines for {answered} answered requests"
        );
    }

    if let [hello, sipedge, rest @ ..] = rows {
        let ratio = sipedge.max.per_second() / hello.max.per_second().max(1.0);
        let mut per_round: Vec<f64> = sipedge
            .round_rates
            .iter()
            .zip(&hello.round_rates)
            .map(|(s, h)| s / h.max(1.0))
            .collect();
        per_round.sort_by(f64::total_cmp);
        let low = per_round.first().copied().unwrap_or(0.0);
        let high = per_round.last().copied().unwrap_or(0.0);
        let median = per_round.get(per_round.len() / 2).copied().unwrap_or(0.0);
        let p99 = percentile(&sipedge.rate.latencies, 0.99);
        let p99_met = p99.is_some_and(|p| p < nanos(TARGET_P99)) && sipedge.rate.unsent == 0;
        let _ = writeln!(
            out,
            "\ntarget: {} throughput >= {TARGET_RATIO} x {}: {ratio:.3} x (rounds {low:.3}-{high:.3}, median {median:.3}) -> {}",
            sipedge.name,
            hello.name,
            verdict(ratio >= TARGET_RATIO)
        );
        for other in rest {
            let _ = writeln!(
                out,
                "        {}: {:.3} x",
                other.name,
                other.max.per_second() / hello.max.per_second().max(1.0)
            );
        }
        for other in [sipedge].into_iter().chain(rest) {
            let _ = writeln!(
                out,
                "        CPU per answer, {} / {}: {:.3} (the ratio with the cores to itself)",
                hello.name,
                other.name,
                hello.max.cpu_per_request().as_secs_f64()
                    / other.max.cpu_per_request().as_secs_f64().max(1e-12)
            );
        }
        let _ = writeln!(
            out,
            "target: {} p99 < {} ms at half its maximum ({:.0}/s): {} ms -> {}",
            sipedge.name,
            TARGET_P99.as_secs_f64() * 1e3,
            sipedge.rate.asked,
            ms(p99),
            verdict(p99_met)
        );
    }
    print!("{out}");
}
