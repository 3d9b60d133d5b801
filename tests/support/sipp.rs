//! SIPp runs: a scenario from `tests/sipp/`, bounded in calls (`-m`) and time (`-timeout`),
//! run in its own temp dir, with its exit status and statistics CSV collected.
//!
//! SIPp's exit status says it all: 0 = every call passed, 1 = some failed, 97 = a scenario
//! stopped itself (a check failed), 99 = no call processed, 255 = fatal (or the global timeout,
//! with `-timeout_error`).

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use super::ports::{self, TERMINAL_IP};
use super::process::signal_group;
use super::{require_tool, wait_until};

/// Where the SIPp scenarios live.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
}

/// Extra time SIPp gets past its own `-timeout` before the harness kills it.
const KILL_MARGIN: Duration = Duration::from_secs(10);

/// SIPp's `-t` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `u1`: UDP, one socket.
    Udp,
    /// `t1`: TCP, one connection for all calls.
    Tcp,
    /// `tn`: TCP, one connection per call (many terminals).
    TcpPerCall,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
            Transport::TcpPerCall => "tn",
        }
    }

    /// The flag for the other side of the same traffic: a SIPp server takes one connection
    /// per peer whatever the client does, so `tn` there is `t1`.
    pub fn server_side(self) -> Transport {
        match self {
            Transport::TcpPerCall => Transport::Tcp,
            t => t,
        }
    }
}

/// A SIPp run to start.
#[derive(Debug, Clone)]
pub struct Sipp {
    /// Scenario file name in `tests/sipp/` without `.xml`, e.g. `call_uac`.
    scenario: String,
    /// Client: where it sends (the proxy). None for a server.
    remote: Option<SocketAddr>,
    /// Address it binds and writes into its headers.
    local: SocketAddr,
    transport: Transport,
    /// `-m`: calls to complete before exiting.
    calls: u32,
    /// `-r`: calls per second (client only).
    rate: u32,
    /// `-d`: length of the scenarios' `<pause/>`, in ms.
    pause_ms: u32,
    /// `-timeout`: SIPp gives up (and fails) after this.
    timeout: Duration,
    /// Any other arguments.
    extra: Vec<String>,
}

impl Sipp {
    /// A client (terminal) sending to `remote`, from a fresh port on the terminal address.
    pub fn uac(scenario: &str, remote: SocketAddr) -> Sipp {
        let local = SocketAddr::new(TERMINAL_IP, ports::free_port());
        Sipp::new(scenario, Some(remote), local)
    }

    /// A server (the Sipserver) listening on `local`.
    pub fn uas(scenario: &str, local: SocketAddr) -> Sipp {
        Sipp::new(scenario, None, local)
    }

    fn new(scenario: &str, remote: Option<SocketAddr>, local: SocketAddr) -> Sipp {
        Sipp {
            scenario: scenario.to_owned(),
            remote,
            local,
            transport: Transport::Udp,
            calls: 1,
            rate: 10,
            pause_ms: 0,
            timeout: Duration::from_secs(30),
            extra: Vec::new(),
        }
    }

    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn calls(mut self, calls: u32) -> Self {
        self.calls = calls;
        self
    }

    pub fn rate(mut self, per_second: u32) -> Self {
        self.rate = per_second;
        self
    }

    pub fn pause_ms(mut self, ms: u32) -> Self {
        self.pause_ms = ms;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra.push(arg.to_owned());
        self
    }

    /// Starts SIPp; panics if it is not installed.
    pub fn spawn(&self) -> SippRun {
        static CHECKED: Once = Once::new();
        CHECKED.call_once(|| require_tool("sipp", "-v", "sip-tester"));
        let file = scenario_dir().join(format!("{}.xml", self.scenario));
        assert!(file.is_file(), "no SIPp scenario {}", file.display());
        let dir = tempfile::tempdir().expect("temp dir for SIPp");
        let stats = dir.path().join("stats.csv");
        let errors = dir.path().join("errors.log");
        let messages = dir.path().join("messages.log");
        let out = dir.path().join("stdout.log");

        let mut args: Vec<String> = vec!["-sf".into(), file.display().to_string()];
        if let Some(remote) = self.remote {
            args.push(remote.to_string());
            args.extend(["-r".into(), self.rate.to_string()]);
        }
        let timeout_s = self.timeout.as_secs().max(1);
        args.extend([
            "-t".into(),
            self.transport.flag().into(),
            "-i".into(),
            self.local.ip().to_string(),
            "-p".into(),
            self.local.port().to_string(),
            "-bind_local".into(),
            "-mi".into(),
            self.local.ip().to_string(),
            "-s".into(),
            "95566".into(),
            "-m".into(),
            self.calls.to_string(),
            "-d".into(),
            self.pause_ms.to_string(),
            "-timeout".into(),
            format!("{timeout_s}s"),
            "-timeout_error".into(),
            "-nostdin".into(),
            "-trace_stat".into(),
            "-stf".into(),
            stats.display().to_string(),
            "-fd".into(),
            "1".into(),
            "-trace_err".into(),
            "-error_file".into(),
            errors.display().to_string(),
            "-trace_msg".into(),
            "-message_file".into(),
            messages.display().to_string(),
        ]);
        if self.transport == Transport::TcpPerCall {
            // SIPp refuses `tn` when its default socket cap (50000) exceeds the open-files
            // limit; 1000 connections at once is plenty for these tests.
            args.extend(["-max_socket".into(), "1000".into()]);
        }
        args.extend(self.extra.iter().cloned());

        let stdout = std::fs::File::create(&out).expect("SIPp stdout file");
        let stderr = stdout.try_clone().expect("SIPp stderr file");
        let child = Command::new("sipp")
            .args(&args)
            .current_dir(dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp {}: {e}", args.join(" ")));
        SippRun {
            command: format!("sipp {}", args.join(" ")),
            child: Some(child),
            deadline: Instant::now() + Duration::from_secs(timeout_s) + KILL_MARGIN,
            stats,
            errors,
            messages,
            out,
            dir,
        }
    }

    /// Runs to the end: spawn then wait.
    pub fn run(&self) -> SippOutcome {
        self.spawn().wait()
    }
}

/// A SIPp process; killed if dropped before it ends.
#[derive(Debug)]
pub struct SippRun {
    /// Command line, for reports.
    command: String,
    /// The process, taken by `wait`.
    child: Option<Child>,
    /// When the harness stops waiting for SIPp's own timeout and kills it.
    deadline: Instant,
    /// `-stf` file.
    stats: PathBuf,
    /// `-error_file`: unexpected messages and failed checks.
    errors: PathBuf,
    /// `-message_file`: every message sent and received, for diagnosis.
    messages: PathBuf,
    /// stdout and stderr (the final screens).
    out: PathBuf,
    /// SIPp's working dir, kept until the outcome is read.
    dir: tempfile::TempDir,
}

impl SippRun {
    /// Waits for SIPp to end (killing it past its timeout plus a margin) and collects the
    /// outcome.
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("waited once");
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    signal_group(child.id(), "KILL");
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        SippOutcome {
            command: self.command.clone(),
            status,
            stats: Stats::parse(&read(&self.stats)),
            errors: read(&self.errors),
            messages: read(&self.messages),
            screen: read(&self.out),
        }
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
        }
    }
}

/// How a SIPp run ended.
#[derive(Debug)]
pub struct SippOutcome {
    /// Command line, for reports.
    pub command: String,
    /// Exit status; None when the harness had to kill it.
    pub status: Option<ExitStatus>,
    /// Final counters from the statistics CSV, if SIPp wrote one.
    pub stats: Option<Stats>,
    /// Unexpected messages and failed checks.
    pub errors: String,
    /// Every message sent and received.
    pub messages: String,
    /// The final screens (stdout and stderr).
    pub screen: String,
}

impl SippOutcome {
    /// True when SIPp exited 0: every call went through the scenario.
    pub fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// True when SIPp exited 0 with at least `calls` successful calls and none failed.
    pub fn completed(&self, calls: u64) -> bool {
        self.passed()
            && self
                .stats
                .as_ref()
                .is_some_and(|s| s.successful >= calls && s.failed == 0)
    }

    /// Panics with the whole story unless every call passed and at least `calls` succeeded.
    pub fn assert_passed(&self, what: &str, calls: u64) {
        let successful = self.stats.as_ref().map_or(0, |s| s.successful);
        let failed = self.stats.as_ref().map_or(0, |s| s.failed);
        assert!(
            self.completed(calls),
            "{what}: expected {calls} successful calls and 0 failed, got {successful} successful, \
             {failed} failed, exit {:?}\n{}",
            self.status,
            self.report()
        );
    }

    /// Command, status, counters, screen, errors and the last messages exchanged.
    pub fn report(&self) -> String {
        format!(
            "----- {}\n----- exit: {:?}  stats: {:?}\n----- screen:\n{}\n----- errors:\n{}\n\
             ----- last messages:\n{}\n----- end of SIPp report",
            self.command,
            self.status,
            self.stats,
            tail(&self.screen, 4_000),
            tail(&self.errors, 6_000),
            tail(&self.messages, 6_000),
        )
    }
}

/// The end of `text`, at most `max` bytes (cut at a char boundary).
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Cumulative counters from SIPp's statistics CSV (`-trace_stat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// `TotalCallCreated`.
    pub created: u64,
    /// `SuccessfulCall(C)`.
    pub successful: u64,
    /// `FailedCall(C)`.
    pub failed: u64,
}

impl Stats {
    /// The last row of a `;`-separated SIPp statistics file, by header name.
    pub fn parse(csv: &str) -> Option<Stats> {
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines.next()?.split(';').collect();
        let last: Vec<&str> = lines.next_back()?.split(';').collect();
        let get = |name: &str| -> Option<u64> {
            let i = header.iter().position(|h| *h == name)?;
            last.get(i)?.trim().parse().ok()
        };
        Some(Stats {
            created: get("TotalCallCreated")?,
            successful: get("SuccessfulCall(C)")?,
            failed: get("FailedCall(C)")?,
        })
    }
}

/// A scenario pair: `<case>_uas` on the upstream address, `<case>_uac` sending through the
/// proxy, same number of calls on both sides.
#[derive(Debug, Clone)]
pub struct Pair {
    /// Case name: the files are `tests/sipp/<case>_uac.xml` and `<case>_uas.xml`.
    pub case: String,
    /// The client's transport (the server side follows, see [`Transport::server_side`]).
    pub transport: Transport,
    /// Calls on each side.
    pub calls: u32,
    /// Client call rate per second.
    pub rate: u32,
    /// `-d` on both sides (talk or ringing time).
    pub pause_ms: u32,
}

impl Pair {
    /// `calls` calls of `case` over `transport`, 50 calls/s, no pause.
    pub fn new(case: &str, transport: Transport, calls: u32) -> Pair {
        Pair {
            case: case.to_owned(),
            transport,
            calls,
            rate: 50,
            pause_ms: 0,
        }
    }

    pub fn rate(mut self, per_second: u32) -> Self {
        self.rate = per_second;
        self
    }

    pub fn pause_ms(mut self, ms: u32) -> Self {
        self.pause_ms = ms;
        self
    }

    /// Starts the UAS on `upstream`, waits until it is bound, runs the UAC against `target`
    /// (the proxy, or the UAS itself for a peer-to-peer check) and waits for both.
    pub fn run(&self, target: SocketAddr, upstream: SocketAddr) -> PairOutcome {
        let uas = Sipp::uas(&format!("{}_uas", self.case), upstream)
            .transport(self.transport.server_side())
            .calls(self.calls)
            .pause_ms(self.pause_ms)
            .spawn();
        let bound = wait_until(Duration::from_secs(5), || {
            is_bound(upstream, self.transport)
        });
        if !bound {
            panic!(
                "the {} UAS never bound {upstream}\n{}",
                self.case,
                uas.wait().report()
            );
        }
        let uac = Sipp::uac(&format!("{}_uac", self.case), target)
            .transport(self.transport)
            .calls(self.calls)
            .rate(self.rate)
            .pause_ms(self.pause_ms)
            .spawn();
        let uac = uac.wait();
        let uas = uas.wait();
        PairOutcome {
            what: format!("{} over {:?}", self.case, self.transport),
            calls: self.calls,
            uac,
            uas,
        }
    }
}

/// Whether something already holds `addr` for this transport (a bind there fails).
pub fn is_bound(addr: SocketAddr, transport: Transport) -> bool {
    match transport {
        Transport::Udp => std::net::UdpSocket::bind(addr).is_err(),
        Transport::Tcp | Transport::TcpPerCall => std::net::TcpListener::bind(addr).is_err(),
    }
}

/// Both sides of a pair.
#[derive(Debug)]
pub struct PairOutcome {
    /// Case and transport, for messages.
    pub what: String,
    /// Calls each side had to complete.
    pub calls: u32,
    /// The terminal side.
    pub uac: SippOutcome,
    /// The Sipserver side.
    pub uas: SippOutcome,
}

impl PairOutcome {
    /// Panics, with both SIPp reports, unless both sides completed every call.
    pub fn assert_passed(&self) {
        let calls = u64::from(self.calls);
        assert!(
            self.uac.completed(calls) && self.uas.completed(calls),
            "{}: expected {calls} calls passed on both sides; terminal (UAC): exit {:?} {:?}; \
             Sipserver (UAS): exit {:?} {:?}\n===== terminal (UAC)\n{}\n===== Sipserver (UAS)\n{}",
            self.what,
            self.uac.status,
            self.uac.stats,
            self.uas.status,
            self.uas.stats,
            self.uac.report(),
            self.uas.report(),
        );
    }
}
