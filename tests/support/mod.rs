//! The one harness of the black-box tests: the real `sipedge` binary and real peers on
//! loopback, each file one job.
//!
//! - [`ports`]: the loopback topology and free ports that parallel test processes do not share.
//! - [`config`]: the config file a test runs sipedge on, with the harness's defaults.
//! - [`process`]: a child process with its stderr kept, stopped or killed by signal.
//! - [`sipedge`]: `sipedge serve` started on a [`config::Config`], ready once it says so,
//!   stopped, killed and restarted on its data dir.
//! - [`proxy`]: the SIP proxy of `tests/sip_proxy.rs`: sipedge, or Kamailio with
//!   `SIPEDGE_TEST_PROXY=kamailio` to check the tests themselves.
//! - [`http`]: a plain HTTP/1.1 client that can also send what a well-behaved client would not.
//! - [`events`]: `/api/events` read in the background.
//! - [`cdrs`]: the CDRs of a running sipedge, read through its API.
//! - [`seed`]: generated CDRs written straight into a store.
//! - [`sipp`]: SIPp runs (scenarios from `tests/sipp/`), their exit status and statistics.
//! - [`msglog`]: SIPp's message log, to know when each message of each call went by.
//! - [`sentinel`]: a fake upstream that only records what reaches it.
//! - [`postgres`]: a throw-away PostgreSQL server for the bank's database and the sink.
//!
//! Topology: sipedge listens on 127.0.0.1; the Sipserver role is a SIPp UAS on 127.0.0.2 (the
//! proxy's upstream); terminals are SIPp UACs on 127.0.0.1 at other ports.

// Every test binary (and `benches/api_query.rs`) compiles this whole module and uses only
// part of it.
#![allow(dead_code)]

pub mod cdrs;
pub mod config;
pub mod events;
pub mod http;
pub mod msglog;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod seed;
pub mod sentinel;
pub mod sipedge;
pub mod sipp;

// What nearly every test (and `benches/api_query.rs`) names, at the root; unused in the
// few test binaries that only run SIPp or the CLI.
#[allow(unused_imports)]
pub use http::http;
#[allow(unused_imports)]
pub use sipedge::Sipedge;

use std::process::Command;
use std::time::Duration;

/// Panics with an install hint when an external tool the tests need is missing: such a test
/// must fail loudly, never skip.
pub fn require_tool(program: &str, version_arg: &str, package: &str) {
    match Command::new(program).arg(version_arg).output() {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not on PATH; these tests run it for real. \
             Install it (Debian: `apt-get install -y {package}`, or tests/setup.sh) and run \
             again."
        ),
        Err(e) => panic!("cannot run `{program} {version_arg}`: {e}"),
    }
}

/// Polls `ready` every 20 ms until it gives a value or `limit` has passed; the caller reports
/// the failure.
pub fn poll<T>(limit: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`poll`] for a condition: whether it became true within `limit`.
pub fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    poll(limit, || ready().then_some(())).is_some()
}
