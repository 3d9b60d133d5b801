//! tshark capturing the loopback for the tests of passive inputs (tests/import_pcap.rs,
//! tests/hep.rs).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::support;
use crate::support::config::Sip;

/// tshark writing what crosses `lo` on sipedge's ports to a pcapng file.
pub struct Tshark {
    child: Child,
    file: PathBuf,
}

impl Tshark {
    pub fn start(dir: &Path, sip: &Sip) -> Tshark {
        let file = dir.join("calls.pcapng");
        let (first, last) = (sip.ports.first, sip.ports.last);
        let filter = format!("udp portrange {first}-{last} or tcp portrange {first}-{last}");
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f", &filter, "-P", "-w"])
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tshark must be installed (Debian tshark, tests/setup.sh)");
        let stderr = child.stderr.take().expect("tshark's stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("Capturing on") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("tshark never said `Capturing on`:\n{}", seen.join("\n"));
                }
            }
        }
        // `Capturing on` can come before the filter is attached: a datagram sipedge ignores
        // is sent until tshark prints it (-P), so that the calls' first packets are kept.
        let stdout = child.stdout.take().expect("tshark's stdout");
        let (tx, printed) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let probe = std::net::UdpSocket::bind((support::ports::TERMINAL_IP, 0)).expect("bind");
        let seen = (0..150).any(|_| {
            let _ = probe.send_to(b"capture probe", sip.addr());
            printed.recv_timeout(Duration::from_millis(200)).is_ok()
        });
        assert!(seen, "tshark never printed the probe datagram");
        Tshark { child, file }
    }

    /// SIGINT, as an operator's Ctrl-C: tshark writes out what it holds and exits.
    pub fn stop(mut self) -> PathBuf {
        let status = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -INT tshark");
        let status = self.child.wait().expect("wait for tshark");
        assert!(status.success(), "tshark exited with {status}");
        self.file.clone()
    }
}

impl Drop for Tshark {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
