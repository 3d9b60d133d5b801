//! A fake upstream that answers nothing and records the first line of every SIP message that
//! reaches it over UDP or TCP: for the cases where the proxy must answer itself and forward
//! nothing (483, 400).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Listening on one address, UDP and TCP, until dropped.
#[derive(Debug)]
pub struct Sentinel {
    /// First lines received (request or status lines), in arrival order.
    seen: Arc<Mutex<Vec<String>>>,
    /// Tells the listening threads to end.
    stop: Arc<AtomicBool>,
    /// The listening threads, joined on drop.
    threads: Vec<JoinHandle<()>>,
}

impl Sentinel {
    /// Binds UDP and TCP on `addr`.
    pub fn bind(addr: SocketAddr) -> Sentinel {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("sentinel UDP {addr}: {e}"));
        udp.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("UDP timeout");
        let tcp = TcpListener::bind(addr).unwrap_or_else(|e| panic!("sentinel TCP {addr}: {e}"));
        tcp.set_nonblocking(true).expect("nonblocking listener");

        let (udp_seen, udp_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let udp_thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !udp_stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = udp.recv_from(&mut buf) {
                    record(&udp_seen, &buf[..n]);
                }
            }
        });
        let (tcp_seen, tcp_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let tcp_thread = std::thread::spawn(move || {
            let mut streams = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !tcp_stop.load(Ordering::Relaxed) {
                if let Ok((stream, _)) = tcp.accept() {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(10)));
                    streams.push(stream);
                }
                for stream in &mut streams {
                    if let Ok(n) = stream.read(&mut buf)
                        && n > 0
                    {
                        record(&tcp_seen, &buf[..n]);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sentinel {
            seen,
            stop,
            threads: vec![udp_thread, tcp_thread],
        }
    }

    /// The first lines of the messages received so far.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The received messages whose first line starts with `method ` (e.g. "INVITE").
    pub fn requests(&self, method: &str) -> Vec<String> {
        let prefix = format!("{method} ");
        self.seen()
            .into_iter()
            .filter(|l| l.starts_with(&prefix))
            .collect()
    }
}

/// Keeps the first line of `bytes` (one read may hold several TCP messages: the first line of
/// each chunk is enough to see that something arrived).
fn record(seen: &Mutex<Vec<String>>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let first = text.trim_start().lines().next().unwrap_or("").to_owned();
    if !first.is_empty()
        && let Ok(mut seen) = seen.lock()
    {
        seen.push(first);
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
