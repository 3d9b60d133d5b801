//! The SIP proxy of the relay tests (`tests/sip_proxy.rs`): by default sipedge itself; with
//! `SIPEDGE_TEST_PROXY=kamailio` Kamailio on `benches/kamailio/kamailio.cfg` with the same
//! ports and upstream, which is how the tests and scenarios themselves are validated against
//! a proxy known to work.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::config::{Config, Sip, Upstream};
use super::ports::PROXY_IP;
use super::process::Process;
use super::sipedge::Sipedge;
use super::{require_tool, wait_until};

/// How long Kamailio may take to listen.
const START_LIMIT: Duration = Duration::from_secs(15);

/// A running proxy; stopped when dropped.
#[derive(Debug)]
pub enum Proxy {
    /// The binary under test.
    Sipedge(Sipedge),
    /// The reference proxy, to check the tests themselves.
    Kamailio(Kamailio),
}

impl Proxy {
    /// Starts the proxy `SIPEDGE_TEST_PROXY` names (`sipedge`, the default, or `kamailio`) on
    /// `sip`, ready once it listens on every SIP port.
    pub fn start(sip: Sip) -> Proxy {
        match std::env::var("SIPEDGE_TEST_PROXY").as_deref() {
            Err(_) | Ok("") | Ok("sipedge") => {
                Proxy::Sipedge(Sipedge::start(&Config::new("test").sip(sip)))
            }
            Ok("kamailio") => Proxy::Kamailio(Kamailio::start(sip)),
            Ok(other) => panic!("SIPEDGE_TEST_PROXY={other:?}: use `sipedge` or `kamailio`"),
        }
    }

    /// Its ports and upstream.
    pub fn sip(&self) -> &Sip {
        match self {
            Proxy::Sipedge(se) => se.sip(),
            Proxy::Kamailio(k) => &k.sip,
        }
    }
}

/// Kamailio relaying `sip` with one worker and flow tokens (`WITH_FLOWS`).
#[derive(Debug)]
pub struct Kamailio {
    /// Its ports and upstream.
    sip: Sip,
    /// The process (it forks workers into its group).
    process: Process,
    /// Its runtime dir (pid file, sockets) for its lifetime.
    _dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(sip: Sip) -> Kamailio {
        require_tool("kamailio", "-v", "kamailio");
        let dir = tempfile::tempdir().expect("temp dir for kamailio");
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/kamailio/kamailio.cfg");
        let mut command = Command::new("kamailio");
        command
            .arg("-DD")
            .arg("-E")
            .arg("-f")
            .arg(&config)
            .arg("-Y")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .args(["-A", "WITH_FLOWS", "-A", "WORKERS=1"]);
        match sip.upstream {
            Upstream::SamePort(ip) => {
                command.arg("-A").arg(format!("UPSTREAM_HOST=\"{ip}\""));
            }
            Upstream::Fixed(addr) => {
                command
                    .arg("-A")
                    .arg(format!("UPSTREAM_HOST=\"{}\"", addr.ip()));
                command
                    .arg("-A")
                    .arg(format!("UPSTREAM_PORT=\"{}\"", addr.port()));
            }
        }
        for port in sip.ports.iter() {
            command.arg("-l").arg(format!("udp:{PROXY_IP}:{port}"));
            command.arg("-l").arg(format!("tcp:{PROXY_IP}:{port}"));
        }
        let (mut process, _lines) = Process::spawn(&mut command);
        let listening = wait_until(START_LIMIT, || {
            process.is_running()
                && sip.ports.iter().all(|p| {
                    TcpStream::connect_timeout(
                        &SocketAddr::new(PROXY_IP, p),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
        });
        if !listening {
            process.fail(&format!("kamailio is not listening on {:?}", sip.ports));
        }
        Kamailio {
            sip,
            process,
            _dir: dir,
        }
    }
}
