//! The loopback topology and free ports.
//!
//! A listener whose address the test only needs after the start (sipedge's account responder
//! and API) binds port 0 and is read back from sipedge's log; a port that must be known
//! before (the SIP ports, which the upstream SIPp shares, a fake upstream, a webhook
//! receiver, an address a reload moves to) is drawn here.
//!
//! Ports are drawn at random below the kernel's ephemeral range (32768-60999 on Linux) and
//! checked free by binding them. Below that range the kernel never hands them out by itself
//! (to an outgoing TCP connection or a bind to port 0) between the check and the moment
//! sipedge or SIPp binds them, which a bind-to-0 port would risk; the random draw keeps test
//! processes running in parallel (other test binaries, other worktrees) apart, and a
//! process-wide set stops one process from handing a port out twice.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Mutex;

/// Where the proxy listens.
pub const PROXY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
/// The Sipserver (the proxy's upstream).
pub const UPSTREAM_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Terminals (SIPp clients).
pub const TERMINAL_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

const LOWEST: u16 = 20_000;
const HIGHEST: u16 = 32_000;

/// Ports already given out by this process.
static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// An inclusive range of consecutive ports, as `sip.ports` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port (equal to `first` for one port).
    pub last: u16,
}

impl PortRange {
    /// The `sip.ports` value: `"first-last"`.
    pub fn config_value(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    /// Every port of the range.
    pub fn iter(&self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

/// `len` consecutive ports free over UDP and TCP on every loopback address of the topology,
/// so the proxy can listen on them and the upstream SIPp use the same numbers.
pub fn free_range(len: u16) -> PortRange {
    assert!(
        (1..100).contains(&len),
        "a test port range is 1 to 99 ports, not {len}"
    );
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let random = RandomState::new();
    for attempt in 0u64..500 {
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        hasher.write_u32(std::process::id());
        let span = u64::from(HIGHEST - LOWEST - len);
        let offset = u16::try_from(hasher.finish() % span).unwrap_or(0);
        let first = LOWEST + offset;
        let range = PortRange {
            first,
            last: first + len - 1,
        };
        if range.iter().all(|p| !taken.contains(&p) && is_free(p)) {
            taken.extend(range.iter());
            return range;
        }
    }
    panic!("no {len} consecutive free loopback ports found between {LOWEST} and {HIGHEST}");
}

/// One free port (see [`free_range`]).
pub fn free_port() -> u16 {
    free_range(1).first
}

/// Whether `port` can be bound over UDP and TCP on every address the topology uses.
fn is_free(port: u16) -> bool {
    [PROXY_IP, UPSTREAM_IP, TERMINAL_IP].iter().all(|&ip| {
        let addr = SocketAddr::new(ip, port);
        UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
    })
}
