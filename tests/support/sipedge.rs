//! The binary under test, `sipedge serve`, started on a config written to a temp dir and
//! ready once its stderr says `sipedge started` (after every listener has been announced as
//! `listening listener=NAME addr=ADDR`); stopped, killed and restarted on the same data dir.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::config::{Config, Sip};
use super::process::Process;
use super::seed::{self, Seed};

/// How long sipedge may take to start.
const START_LIMIT: Duration = Duration::from_secs(30);

/// The binary cargo built for these tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sipedge")
}

/// Runs a one-shot `sipedge ARGS` (`check-config`, `cdrs`, `token`…) to its end.
pub fn run<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sipedge")
}

/// A valid account-request body for `appid`, made by `sipedge token`.
pub fn token_body(appid: &str) -> String {
    let out = run(["token", "--appid", appid]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("a UTF-8 token body")
        .trim()
        .to_owned()
}

/// A running `sipedge serve`; stopped when dropped, its stderr printed when a test fails.
#[derive(Debug)]
pub struct Sipedge {
    /// The process and its stderr.
    process: Process,
    /// Listeners it announced in its latest start: (name, address).
    listeners: Vec<(String, SocketAddr)>,
    /// The SIP side of its config, where the test wrote one.
    sip: Option<Sip>,
    /// The config file, which a test may rewrite before a reload.
    config: PathBuf,
    /// Extra environment variables, given again on a restart.
    env: Vec<(String, String)>,
    /// Holds the config and the data dir for the process's lifetime.
    dir: tempfile::TempDir,
}

impl Sipedge {
    /// Writes `config` into a fresh temp dir and starts sipedge on it.
    pub fn start(config: &Config) -> Sipedge {
        Sipedge::start_env(config, &[])
    }

    /// As [`Sipedge::start`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_env(config: &Config, env: &[(&str, &str)]) -> Sipedge {
        let dir = tempfile::tempdir().expect("temp dir for sipedge");
        Sipedge::spawn(config.write(dir.path()), dir, config.sip_side(), env)
    }

    /// As [`Sipedge::start`], with `seed` written into the data dir first.
    pub fn start_seeded(config: &Config, seed: &Seed) -> Sipedge {
        let dir = tempfile::tempdir().expect("temp dir for sipedge");
        seed::write(&dir.path().join("data"), seed);
        Sipedge::spawn(config.write(dir.path()), dir, config.sip_side(), &[])
    }

    /// Starts sipedge on a config file written by the caller, keeping `dir` for its lifetime.
    pub fn start_file(config: &Path, dir: tempfile::TempDir) -> Sipedge {
        Sipedge::spawn(config.to_owned(), dir, None, &[])
    }

    fn spawn(
        config: PathBuf,
        dir: tempfile::TempDir,
        sip: Option<Sip>,
        env: &[(&str, &str)],
    ) -> Sipedge {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (process, lines) = Process::spawn(&mut serve(&config, &env));
        let mut se = Sipedge {
            process,
            listeners: Vec::new(),
            sip,
            config,
            env,
            dir,
        };
        se.wait_until_started(&lines);
        se
    }

    /// Starts sipedge again on the same config and data dir, after [`Sipedge::stop`] or
    /// [`Sipedge::kill_hard`].
    pub fn restart(&mut self) {
        let lines = self.process.respawn(&mut serve(&self.config, &self.env));
        self.wait_until_started(&lines);
    }

    /// Reads stderr lines until `sipedge started`, noting the listeners on the way.
    fn wait_until_started(&mut self, lines: &Receiver<String>) {
        self.listeners.clear();
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("sipedge started") => return,
                Ok(line) => {
                    if let Some((name, addrs)) = parse_listening(&line) {
                        self.listeners
                            .extend(addrs.into_iter().map(|a| (name.clone(), a)));
                    }
                }
                Err(RecvTimeoutError::Timeout) => self
                    .process
                    .fail(&format!("sipedge did not start within {START_LIMIT:?}")),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.process.wait();
                    self.process
                        .fail(&format!("sipedge exited before it started: {status:?}"));
                }
            }
        }
    }

    /// The address a listener (`account`, `api`, `sip-udp`…) bound, as sipedge announced it.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| {
                panic!(
                    "sipedge announced no `{listener}` listener\n{}",
                    self.report()
                )
            })
    }

    /// The SIP side of the config it was started on.
    pub fn sip(&self) -> &Sip {
        self.sip
            .as_ref()
            .unwrap_or_else(|| panic!("sipedge was started without [sip]"))
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `signal` (`HUP` to reload, …).
    pub fn signal(&self, signal: &str) {
        self.process.signal(signal);
    }

    /// Stderr so far, over restarts.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// The command line and stderr, for failure messages.
    pub fn report(&self) -> String {
        self.process.report()
    }

    /// SIGTERM, then waits for the exit (e.g. before reading the store it flushed).
    pub fn stop(&mut self) -> ExitStatus {
        self.process.stop()
    }

    /// `kill -9`: no flush, no goodbye, as a crash or a power cut.
    pub fn kill_hard(&mut self) {
        self.process.kill_hard();
    }
}

/// `sipedge serve --config FILE` with a clean environment plus `env`.
fn serve(config: &Path, env: &[(String, String)]) -> Command {
    let mut command = Command::new(binary());
    command
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

/// `Some((name, addrs))` for a line announcing a listener: it contains `listening` and the
/// fields `listener=NAME` and `addr=IP:PORT` or, for a port range, `addr=IP:FIRST-LAST`
/// (values possibly quoted, as tracing prints strings).
pub fn parse_listening(line: &str) -> Option<(String, Vec<SocketAddr>)> {
    if !line.contains("listening") {
        return None;
    }
    let name = field(line, "listener")?;
    let addr = field(line, "addr")?;
    if let Ok(one) = addr.parse() {
        return Some((name, vec![one]));
    }
    let (first, last) = addr.rsplit_once('-')?;
    let first: SocketAddr = first.parse().ok()?;
    let last: u16 = last.parse().ok()?;
    let addrs = (first.port()..=last)
        .map(|port| SocketAddr::new(first.ip(), port))
        .collect::<Vec<_>>();
    (!addrs.is_empty()).then_some((name, addrs))
}

/// The value of ` key=value` in a log line: up to the next white space, quotes removed.
fn field(line: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let mut from = 0;
    while let Some(at) = line[from..].find(&needle) {
        let start = from + at;
        let standalone = start == 0 || line[..start].ends_with(char::is_whitespace);
        let value_start = start + needle.len();
        if standalone {
            let rest = &line[value_start..];
            let value = if let Some(quoted) = rest.strip_prefix('"') {
                quoted.split('"').next().unwrap_or("")
            } else {
                rest.split(char::is_whitespace).next().unwrap_or("")
            };
            return Some(value.to_owned());
        }
        from = value_start;
    }
    None
}
