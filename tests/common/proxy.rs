//! The proxy under test, as a child process.
//!
//! By default that is the real `sipedge serve --config FILE` on a config written to a temp
//! dir; it is ready when its stderr has announced a listener on every SIP port (the line
//! contains `listening` with fields `listener=NAME addr=IP:PORT`). With
//! `SIPEDGE_TEST_PROXY=kamailio` it is Kamailio on `benches/kamailio/kamailio.cfg` with the
//! same ports and upstream, which is how the tests and scenarios themselves are validated
//! against a proxy known to work.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ports::{self, PROXY_IP, PortRange};
use super::{require_tool, signal_group, wait_until};

/// How long a proxy may take to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How long a graceful stop may take before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Where the proxy forwards requests from terminals (`sip.upstream`).
#[derive(Debug, Clone, Copy)]
pub enum Upstream {
    /// `"host"`: each listening port forwards to the same port on this address.
    SamePort(IpAddr),
    /// `"host:port"`: every port forwards to this one address.
    Fixed(SocketAddr),
}

impl Upstream {
    /// The `sip.upstream` value.
    fn config_value(&self) -> String {
        match self {
            Upstream::SamePort(ip) => ip.to_string(),
            Upstream::Fixed(addr) => addr.to_string(),
        }
    }
}

/// What to start: the SIP side of the config, plus any other keys a test needs.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    /// The ports of `sip.ports`; every one gets UDP and TCP.
    pub ports: PortRange,
    /// `sip.upstream`.
    pub upstream: Upstream,
    /// Extra keys by section, written as given (TOML values: quote strings yourself); a key
    /// given here replaces the harness's own value for it.
    pub extra: BTreeMap<String, BTreeMap<String, String>>,
}

impl ProxySpec {
    /// One fresh port, forwarding to the same port on the upstream address.
    pub fn one_port() -> Self {
        Self::range(1)
    }

    /// `len` fresh consecutive ports, each forwarding to the same port on the upstream.
    pub fn range(len: u16) -> Self {
        ProxySpec {
            ports: ports::free_range(len),
            upstream: Upstream::SamePort(ports::UPSTREAM_IP),
            extra: BTreeMap::new(),
        }
    }

    /// Sets `section.key = value` (a raw TOML value).
    pub fn set(mut self, section: &str, key: &str, value: &str) -> Self {
        self.extra
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), value.to_owned());
        self
    }

    /// The upstream address for traffic that arrived on `port`.
    pub fn upstream_for(&self, port: u16) -> SocketAddr {
        match self.upstream {
            Upstream::SamePort(ip) => SocketAddr::new(ip, port),
            Upstream::Fixed(addr) => addr,
        }
    }

    /// The sipedge config file for this spec, with its data under `data_dir`.
    fn sipedge_toml(&self, data_dir: &Path) -> String {
        let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut put = |section: &str, key: &str, value: String| {
            sections
                .entry(section.to_owned())
                .or_default()
                .insert(key.to_owned(), value);
        };
        put("node", "name", quote("test"));
        put("node", "data_dir", quote(&data_dir.display().to_string()));
        put("sip", "listen", quote(&PROXY_IP.to_string()));
        put("sip", "ports", quote(&self.ports.config_value()));
        put("sip", "upstream", quote(&self.upstream.config_value()));
        // Required keys of the account responder, which runs in the same process.
        put("account", "appids", "[\"sip-test-appid\"]".to_owned());
        put("account", "account", quote("sipserver"));
        // Its own free ports, so that parallel tests never fight over 14700 and 8068.
        put(
            "account",
            "listen",
            quote(&format!("{PROXY_IP}:{}", ports::free_port())),
        );
        put(
            "api",
            "listen",
            quote(&format!("{PROXY_IP}:{}", ports::free_port())),
        );
        // OPTIONS probes would reach the SIPp UAS as calls it does not expect.
        put("monitor", "probe_upstream", "false".to_owned());
        for (section, keys) in &self.extra {
            for (key, value) in keys {
                put(section, key, value.clone());
            }
        }
        let mut toml = String::new();
        for (section, keys) in &sections {
            toml.push_str(&format!("[{section}]\n"));
            for (key, value) in keys {
                toml.push_str(&format!("{key} = {value}\n"));
            }
            toml.push('\n');
        }
        toml
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Which proxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The binary under test.
    Sipedge,
    /// The reference proxy, to check the tests themselves.
    Kamailio,
}

impl Kind {
    /// From `SIPEDGE_TEST_PROXY` (`sipedge`, the default, or `kamailio`).
    pub fn from_env() -> Kind {
        match std::env::var("SIPEDGE_TEST_PROXY").as_deref() {
            Err(_) | Ok("") | Ok("sipedge") => Kind::Sipedge,
            Ok("kamailio") => Kind::Kamailio,
            Ok(other) => panic!("SIPEDGE_TEST_PROXY={other:?}: use `sipedge` or `kamailio`"),
        }
    }
}

/// A running proxy; stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proxy {
    /// Which proxy this is: some behaviours (listener names) only exist in sipedge.
    pub kind: Kind,
    /// What it was started with.
    pub spec: ProxySpec,
    /// The process; its own process group, so that workers die with it.
    child: Child,
    /// Every stderr line so far, for readiness and for the failure report.
    stderr: Arc<Mutex<Vec<String>>>,
    /// Listeners the proxy announced: (name, address). Empty for Kamailio.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The command line, for reports.
    command: String,
    /// The config file (sipedge) or the Kamailio config in use.
    pub config: PathBuf,
    /// Holds the config and the data dir for the process's lifetime.
    dir: tempfile::TempDir,
    /// Set when a panic message already carries the report, so that drop does not repeat it.
    reported: bool,
}

impl Proxy {
    /// Starts the proxy chosen by `SIPEDGE_TEST_PROXY` and waits until it listens on every
    /// SIP port; panics with its stderr if it exits or does not get there in time.
    pub fn start(spec: ProxySpec) -> Proxy {
        match Kind::from_env() {
            Kind::Sipedge => Self::start_sipedge(spec),
            Kind::Kamailio => Self::start_kamailio(spec),
        }
    }

    /// The address terminals send to: the first SIP port.
    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(PROXY_IP, self.spec.ports.first)
    }

    /// The address terminals send to on another port of the range.
    pub fn sip_addr_on(&self, port: u16) -> SocketAddr {
        assert!(
            self.spec.ports.iter().any(|p| p == port),
            "port {port} is not in the proxy's range {:?}",
            self.spec.ports
        );
        SocketAddr::new(PROXY_IP, port)
    }

    /// The upstream address for traffic sent to the first SIP port.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.spec.upstream_for(self.spec.ports.first)
    }

    /// The process id (for CPU accounting in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data dir given to sipedge (the store lives there).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stderr so far, one string.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Stops the proxy gracefully (SIGTERM; SIGKILL after 10 s) and returns how it exited,
    /// e.g. before reading the store it flushed.
    pub fn stop(&mut self) -> ExitStatus {
        signal_group(self.child.id(), "TERM");
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                _ => {
                    signal_group(self.child.id(), "KILL");
                    let status = self.child.wait();
                    self.reported = true;
                    panic!(
                        "{} did not stop within {STOP_LIMIT:?} of SIGTERM (killed: {status:?})\n{}",
                        self.command,
                        self.report()
                    );
                }
            }
        }
    }

    /// The API listener's address (`api.listen`), as sipedge announced it.
    pub fn api_addr(&self) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(name, _)| name == "api")
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("sipedge announced no `api` listener\n{}", self.report()))
    }

    /// `kill -9`: no flush, no goodbye, as a crash or a power cut.
    pub fn kill_hard(&mut self) {
        signal_group(self.child.id(), "KILL");
        let _ = self.child.wait();
    }

    /// Starts sipedge again on the same config and data dir (after [`Proxy::stop`] or
    /// [`Proxy::kill_hard`]) and waits until it listens on every SIP port.
    pub fn restart(&mut self) {
        assert_eq!(
            self.kind,
            Kind::Sipedge,
            "only sipedge restarts on its data dir"
        );
        assert!(
            !matches!(self.child.try_wait(), Ok(None)),
            "restart of a proxy that still runs"
        );
        let binary = env!("CARGO_BIN_EXE_sipedge");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1");
        let (child, stderr, lines) = spawn(&mut command);
        if let (Ok(mut all), Ok(before)) = (stderr.lock(), self.stderr.lock()) {
            let mut joined = before.clone();
            joined.push("----- restarted".to_owned());
            joined.append(&mut all);
            *all = joined;
        }
        self.child = child;
        self.stderr = stderr;
        self.listeners.clear();
        self.wait_for_listeners(&lines);
    }

    /// The command line and stderr, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "----- proxy: {}\n----- proxy stderr:\n{}\n----- end of proxy stderr",
            self.command,
            self.stderr()
        )
    }

    fn start_sipedge(spec: ProxySpec) -> Proxy {
        let dir = tempfile::tempdir().expect("temp dir for the sipedge config");
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("create the data dir");
        let config = dir.path().join("sipedge.toml");
        std::fs::write(&config, spec.sipedge_toml(&data_dir)).expect("write the sipedge config");
        let binary = env!("CARGO_BIN_EXE_sipedge");
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1");
        let (child, stderr, lines) = spawn(&mut command);
        let mut proxy = Proxy {
            kind: Kind::Sipedge,
            command: format!("{binary} serve --config {}", config.display()),
            spec,
            child,
            stderr,
            listeners: Vec::new(),
            config,
            dir,
            reported: false,
        };
        proxy.wait_for_listeners(&lines);
        proxy
    }

    /// Reads stderr lines until every SIP port has been announced as listening.
    fn wait_for_listeners(&mut self, lines: &Receiver<String>) {
        let deadline = Instant::now() + START_LIMIT;
        let mut missing: Vec<u16> = self.spec.ports.iter().collect();
        while !missing.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((name, addrs)) = parse_listening(&line) {
                        for addr in addrs {
                            if addr.ip() == PROXY_IP {
                                missing.retain(|&p| p != addr.port());
                            }
                            self.listeners.push((name.clone(), addr));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.reported = true;
                    panic!(
                        "sipedge did not announce listening on SIP ports {missing:?} within \
                     {START_LIMIT:?} (expected stderr lines with `listening listener=NAME \
                     addr={PROXY_IP}:PORT`)\n{}",
                        self.report()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait();
                    self.reported = true;
                    panic!(
                        "sipedge exited before listening on SIP ports {missing:?}: {status:?}\n{}",
                        self.report()
                    );
                }
            }
        }
    }

    fn start_kamailio(spec: ProxySpec) -> Proxy {
        require_tool("kamailio", "-v", "kamailio");
        let dir = tempfile::tempdir().expect("temp dir for kamailio");
        std::fs::create_dir_all(dir.path().join("data")).expect("create the data dir");
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
            .arg("-A")
            .arg("WITH_FLOWS")
            .arg("-A")
            .arg("WORKERS=1");
        match spec.upstream {
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
        for port in spec.ports.iter() {
            command.arg("-l").arg(format!("udp:{PROXY_IP}:{port}"));
            command.arg("-l").arg(format!("tcp:{PROXY_IP}:{port}"));
        }
        let command_line = format!("{command:?}");
        let (mut child, stderr, _lines) = spawn(&mut command);
        let ports: Vec<u16> = spec.ports.iter().collect();
        let listening = wait_until(START_LIMIT, || {
            matches!(child.try_wait(), Ok(None))
                && ports.iter().all(|&p| {
                    TcpStream::connect_timeout(
                        &SocketAddr::new(PROXY_IP, p),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
        });
        let mut proxy = Proxy {
            kind: Kind::Kamailio,
            command: command_line,
            spec,
            child,
            stderr,
            listeners: Vec::new(),
            config,
            dir,
            reported: false,
        };
        proxy.reported = !listening;
        assert!(
            listening,
            "kamailio is not listening on {:?}\n{}",
            proxy.spec.ports,
            proxy.report()
        );
        proxy
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id(), "TERM");
            let stopped = wait_until(STOP_LIMIT, || !matches!(self.child.try_wait(), Ok(None)));
            if !stopped {
                signal_group(self.child.id(), "KILL");
                let _ = self.child.wait();
            }
        }
        if std::thread::panicking() && !self.reported {
            eprintln!("{}", self.report());
        }
    }
}

/// Spawns `command` in its own process group with stderr collected line by line: into the
/// shared list (for reports) and onto a channel (for readiness); the channel closes when the
/// process closes stderr.
fn spawn(command: &mut Command) -> (Child, Arc<Mutex<Vec<String>>>, Receiver<String>) {
    let mut child = command
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pipe = child.stderr.take().expect("stderr is piped");
    let all = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&all);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if let Ok(mut all) = sink.lock() {
                all.push(line.clone());
            }
            // Nobody listens after readiness: that is fine.
            let _ = tx.send(line);
        }
    });
    (child, all, rx)
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

/// Removes ANSI colour sequences (ESC [ ... letter), in case the logger colours fields.
fn strip_ansi(line: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, expected: Option<(&str, &[&str])>) {
        let got = parse_listening(&strip_ansi(line));
        let expected = expected.map(|(n, addrs)| {
            let addrs = addrs
                .iter()
                .map(|a| a.parse().expect("valid address in the table"))
                .collect::<Vec<SocketAddr>>();
            (n.to_owned(), addrs)
        });
        assert_eq!(got, expected, "line: {line:?}");
    }

    #[test]
    fn listening_lines() {
        check(
            "2026-11-28T17:00:00Z  INFO sipedge: listening listener=sip-udp addr=127.0.0.1:14500",
            Some(("sip-udp", &["127.0.0.1:14500"])),
        );
        check(
            "INFO sipedge::serve: listening listener=sip-tcp addr=127.0.0.1:14500-14502",
            Some((
                "sip-tcp",
                &["127.0.0.1:14500", "127.0.0.1:14501", "127.0.0.1:14502"],
            )),
        );
        check("listening listener=sip addr=127.0.0.1:14502-14500", None);
        check(
            "INFO listening listener=\"api\" addr=127.0.0.1:8068",
            Some(("api", &["127.0.0.1:8068"])),
        );
        check(
            "\u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0msip \
             \u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m127.0.0.1:5060",
            Some(("sip", &["127.0.0.1:5060"])),
        );
        check("listening peer_addr=1.2.3.4:5 listener=x", None);
        check("INFO started listener=sip addr=127.0.0.1:5060", None);
        check("listening listener=sip addr=nonsense", None);
    }
}
