//! What the black-box tests share: the real `sipedge` binary started on free ports, and a
//! plain HTTP/1.1 client that can also send what a well-behaved client would not.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod seed;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `sipedge serve`, stopped with SIGTERM on drop; its stderr is kept and printed
/// when a test fails, so a failure shows what the service said.
pub struct Sipedge {
    child: Child,
    listeners: HashMap<String, String>,
    log: Arc<Mutex<String>>,
    pub dir: tempfile::TempDir,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_sipedge")
}

impl Sipedge {
    /// Writes `config` (with `{DATA}` replaced by a fresh data directory) and starts the
    /// binary on it, waiting until it says it has started.
    pub fn start(config: &str) -> Sipedge {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let config = config.replace("{DATA}", &data.display().to_string());
        let path = dir.path().join("sipedge.toml");
        std::fs::write(&path, config).expect("write config");
        Sipedge::start_file(&path, dir)
    }

    /// As [`Sipedge::start`], with `seed` written into the data directory first.
    pub fn start_seeded(config: &str, seed: &seed::Seed) -> Sipedge {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        seed::write(&data, seed);
        let config = config.replace("{DATA}", &data.display().to_string());
        let path = dir.path().join("sipedge.toml");
        std::fs::write(&path, config).expect("write config");
        Sipedge::start_file(&path, dir)
    }

    pub fn start_file(config: &Path, dir: tempfile::TempDir) -> Sipedge {
        Sipedge::start_file_env(config, dir, &[])
    }

    /// As [`Sipedge::start_file`], with extra environment variables (e.g. `NOTIFY_SOCKET`).
    pub fn start_file_env(config: &Path, dir: tempfile::TempDir, env: &[(&str, &str)]) -> Sipedge {
        let mut child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipedge");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("sipedge started") {
                    let _ = started_tx.send(());
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut se = Sipedge {
            child,
            listeners: HashMap::new(),
            log,
            dir,
        };
        if started_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("sipedge did not start:\n{}", se.stderr());
        }
        se.listeners = parse_listeners(&se.stderr());
        se
    }

    /// The address a listener bound, as the service logged it.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        let addr = self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener} in:\n{}", self.stderr()));
        addr.parse()
            .unwrap_or_else(|_| panic!("listener {listener} address {addr}"))
    }

    pub fn stderr(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; returns its code.
    pub fn stop(&mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("sipedge did not stop within 20 s:\n{}", self.stderr());
    }
}

impl Drop for Sipedge {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            std::thread::sleep(Duration::from_millis(50));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- sipedge stderr ---\n{}", self.stderr());
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// `listening listener=NAME addr=ADDR` lines, as logged at start.
pub fn parse_listeners(log: &str) -> HashMap<String, String> {
    let mut found = HashMap::new();
    for line in log.lines().filter(|l| l.contains(" listening ")) {
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(|v| v.trim_matches('"').to_owned())
        };
        if let (Some(name), Some(addr)) = (field("listener="), field("addr=")) {
            found.insert(name, addr);
        }
    }
    found
}

/// An HTTP answer as received.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection, `Connection: close`.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, request.as_bytes())
}

/// A GET with extra header lines, on a fresh connection, `Connection: close`.
pub fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    raw(addr, request.as_bytes())
}

/// Sends bytes as they are and reads the answer to the end.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A server may answer (413) and close before reading everything; that is not an error.
    let _ = stream.write_all(request);
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    parse_reply(&bytes)
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&bytes)))
}

fn parse_reply(bytes: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(bytes);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect::<Vec<_>>();
    let body = if headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
