//! Harness for the black-box tests: real peers on loopback around the real proxy.
//!
//! - [`ports`]: the loopback topology and free ports that parallel test processes do not share.
//! - [`proxy`]: the proxy under test, `sipedge serve` (or Kamailio, to validate the tests
//!   themselves, with `SIPEDGE_TEST_PROXY=kamailio`), started on a temp config and stopped on
//!   drop, its stderr printed when a test fails.
//! - [`sipp`]: SIPp runs (scenarios from `tests/sipp/`), their exit status and statistics.
//! - [`sentinel`]: a fake upstream that only records what reaches it, for the cases where
//!   nothing may.
//!
//! Topology: the proxy listens on 127.0.0.1; the Sipserver role is a SIPp UAS on 127.0.0.2 (the
//! proxy's upstream); terminals are SIPp UACs on 127.0.0.1 at other ports.

// Every integration-test binary compiles this module and uses only part of it.
#![allow(dead_code)]

pub mod cdrs;
pub mod msglog;
pub mod ports;
pub mod proxy;
pub mod sentinel;
pub mod sipp;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the SIPp scenarios live.
pub fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
}

/// Panics with an install hint when an external tool the tests need is missing: such a test
/// must fail loudly, never skip.
pub fn require_tool(program: &str, version_arg: &str, package: &str) {
    match Command::new(program).arg(version_arg).output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not on PATH; these tests run it for real. \
             Install it (Debian: `apt-get install -y {package}`) and run again."
        ),
        Err(e) => panic!("cannot run `{program} {version_arg}`: {e}"),
    }
}

/// Polls `ready` until it is true or `limit` has passed; the caller reports the failure.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM (or another signal) to a whole process group: Kamailio forks workers, and a
/// plain `Child::kill` would leave them running.
pub fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .status();
}
