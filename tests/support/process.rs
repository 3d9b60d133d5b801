//! A child process under test (sipedge, Kamailio) in its own process group, its stderr kept
//! line by line for readiness and for the report a failing test prints.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::wait_until;

/// How long a graceful stop may take before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A running child; stopped (SIGTERM, then SIGKILL) when dropped, its report printed then if
/// the test is failing.
#[derive(Debug)]
pub struct Process {
    /// The command line, for reports.
    command: String,
    /// The process, the leader of its own group so that forked workers die with it.
    child: Child,
    /// Every stderr line so far, over restarts too, for the report.
    stderr: Arc<Mutex<Vec<String>>>,
    /// Set when a panic message already carries the report, so that drop does not repeat it.
    reported: bool,
}

impl Process {
    /// Spawns `command` with stderr collected; returns it and a channel of its stderr lines,
    /// which closes when the process closes stderr.
    pub fn spawn(command: &mut Command) -> (Process, Receiver<String>) {
        Process::spawn_into(command, Arc::new(Mutex::new(Vec::new())))
    }

    /// Starts `command` again in place of this process (which must have exited), its stderr
    /// added to the same log.
    pub fn respawn(&mut self, command: &mut Command) -> Receiver<String> {
        assert!(!self.is_running(), "restart of a process that still runs");
        if let Ok(mut log) = self.stderr.lock() {
            log.push("----- restarted".to_owned());
        }
        let (next, lines) = Process::spawn_into(command, Arc::clone(&self.stderr));
        *self = next;
        lines
    }

    fn spawn_into(
        command: &mut Command,
        log: Arc<Mutex<Vec<String>>>,
    ) -> (Process, Receiver<String>) {
        let mut child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pipe = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Ok(mut log) = sink.lock() {
                    log.push(line.clone());
                }
                // Nobody listens after readiness: that is fine.
                let _ = tx.send(line);
            }
        });
        let process = Process {
            command: format!("{command:?}"),
            child,
            stderr: log,
            reported: false,
        };
        (process, rx)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`TERM`, `HUP`, `KILL`…) to the process itself.
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Stderr so far, one string.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The command line and stderr, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "----- {}\n----- stderr:\n{}\n----- end of stderr",
            self.command,
            self.stderr()
        )
    }

    /// Panics with `message` and the report, which drop then does not print again.
    pub fn fail(&mut self, message: &str) -> ! {
        self.reported = true;
        panic!("{message}\n{}", self.report());
    }

    /// Stops the process gracefully (SIGTERM to its group; SIGKILL and a panic after 20 s)
    /// and returns how it exited.
    pub fn stop(&mut self) -> ExitStatus {
        signal_group(self.pid(), "TERM");
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    signal_group(self.pid(), "KILL");
                    let status = self.child.wait();
                    self.fail(&format!(
                        "did not stop within {STOP_LIMIT:?} of SIGTERM (killed: {status:?})"
                    ));
                }
            }
        }
    }

    /// `kill -9` to the group: no flush, no goodbye, as a crash or a power cut.
    pub fn kill_hard(&mut self) {
        signal_group(self.pid(), "KILL");
        let _ = self.child.wait();
    }

    /// Waits for the exit of a process that is going (its stderr closed).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() {
            signal_group(self.pid(), "TERM");
            if !wait_until(STOP_LIMIT, || !self.is_running()) {
                self.kill_hard();
            }
        }
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.report());
        }
    }
}

/// Sends `signal` to a whole process group: Kamailio forks workers, and SIPp's group is
/// killed the same way, where a plain `Child::kill` would leave children running.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status();
}

/// Removes ANSI colour sequences (ESC [ ... letter), in case a logger colours its fields.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
