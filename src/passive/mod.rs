//! Passive inputs (issue 14): call records built from SIP seen on the wire rather than
//! relayed — packet captures (`sipedge import-pcap`, [`import`]) and HEP v3 from capture
//! agents ([`hep`]) — with the proxy's own call tracking, so that a call gives the same CDR
//! however it was observed.
//!
//! - [`packet`]: a captured frame down to its UDP or TCP payload (pure).
//! - [`defrag`]: IPv4 and IPv6 fragment reassembly (pure).
//! - [`capture`]: pcap/pcapng files, TCP reassembly with the relay's framing.
//! - [`Sides`]: which hop a message was on, from the `[sip]` table.
//! - [`import`]: the command, driving the [`sipedge_sip::call::Tracker`] with capture times.
//! - [`hep`]: HEP3 decoding and the listener feeding the running proxy's call tracking.

pub mod capture;
pub mod defrag;
pub mod hep;
pub mod hep_config;
pub mod import;
pub mod packet;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use sipedge_sip::{Direction, PortRange, ProxyConfig};

/// Which hop through sipedge a message between two addresses was on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leg {
    /// Between a terminal and sipedge, going the given way: the hop call tracking describes
    /// (`terminal` and `transport` of a CDR are this hop's).
    Terminal(Direction),
    /// Between sipedge and the Sipserver: the same messages as on the terminal hop, which a
    /// capture on the proxy host sees too; taking one hop only keeps a call from counting twice.
    Upstream,
    /// Neither end is sipedge or the Sipserver.
    Unrelated,
}

/// The ends of sipedge's hops, from the `[sip]` table.
#[derive(Debug, Clone)]
pub struct Sides {
    /// `sip.listen`; `None` when it is the unspecified address (every local address).
    listen: Option<IpAddr>,
    ports: PortRange,
    /// `sip.upstream` resolved.
    upstream: Vec<IpAddr>,
    /// The upstream port; `None`: each sipedge port forwards to the same port there.
    upstream_port: Option<u16>,
}

impl Sides {
    /// Resolves `sip.upstream` once, as the proxy does at start.
    pub fn new(sip: &ProxyConfig) -> Result<Sides, String> {
        let upstream = (sip.upstream.host.as_str(), 0)
            .to_socket_addrs()
            .map_err(|e| format!("sip.upstream `{}` does not resolve: {e}", sip.upstream))?
            .map(|a| a.ip())
            .collect();
        Ok(Sides {
            listen: Some(sip.listen).filter(|ip| !ip.is_unspecified()),
            ports: sip.ports,
            upstream,
            upstream_port: sip.upstream.port,
        })
    }

    fn is_sipedge(&self, a: SocketAddr) -> bool {
        self.listen.is_none_or(|ip| ip == a.ip()) && self.ports.contains(a.port())
    }

    fn is_upstream(&self, a: SocketAddr) -> bool {
        self.upstream.contains(&a.ip())
            && match self.upstream_port {
                Some(port) => port == a.port(),
                None => self.ports.contains(a.port()),
            }
    }

    /// The hop of a message from `src` to `dst`. The upstream is checked first: sipedge
    /// talks to it from ports outside its range (TCP), and may share its address.
    pub fn leg(&self, src: SocketAddr, dst: SocketAddr) -> Leg {
        if self.is_upstream(src) || self.is_upstream(dst) {
            Leg::Upstream
        } else if self.is_sipedge(dst) {
            Leg::Terminal(Direction::ToUpstream)
        } else if self.is_sipedge(src) {
            Leg::Terminal(Direction::ToTerminal)
        } else {
            Leg::Unrelated
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_message_is_on_one_hop() {
        let sip = |listen: &str, upstream: &str| {
            let mut c = ProxyConfig::with_upstream(upstream.parse().expect("upstream"));
            c.listen = listen.parse().expect("listen");
            c.ports = PortRange {
                first: 14500,
                last: 14509,
            };
            Sides::new(&c).expect("sides")
        };
        let a = |s: &str| s.parse::<SocketAddr>().expect("address");
        let fixed = sip("10.0.0.1", "10.0.0.9:5060");
        let same_port = sip("0.0.0.0", "10.0.0.9");
        let cases = [
            (
                "terminal to sipedge",
                &fixed,
                "192.0.2.7:5060",
                "10.0.0.1:14503",
                Leg::Terminal(Direction::ToUpstream),
            ),
            (
                "sipedge to terminal",
                &fixed,
                "10.0.0.1:14503",
                "192.0.2.7:5060",
                Leg::Terminal(Direction::ToTerminal),
            ),
            (
                "sipedge to upstream",
                &fixed,
                "10.0.0.1:14503",
                "10.0.0.9:5060",
                Leg::Upstream,
            ),
            (
                "upstream over tcp to an ephemeral port",
                &fixed,
                "10.0.0.9:5060",
                "10.0.0.1:40001",
                Leg::Upstream,
            ),
            (
                "another address of the host",
                &fixed,
                "192.0.2.7:5060",
                "10.0.0.2:14503",
                Leg::Unrelated,
            ),
            (
                "port outside the range",
                &fixed,
                "192.0.2.7:5060",
                "10.0.0.1:14510",
                Leg::Unrelated,
            ),
            (
                "any address, range port",
                &same_port,
                "192.0.2.7:5060",
                "10.0.0.3:14509",
                Leg::Terminal(Direction::ToUpstream),
            ),
            (
                "upstream on the same port",
                &same_port,
                "10.0.0.1:14509",
                "10.0.0.9:14509",
                Leg::Upstream,
            ),
            (
                "upstream on another port",
                &same_port,
                "10.0.0.9:5060",
                "198.51.100.1:5060",
                Leg::Unrelated,
            ),
        ];
        for (name, sides, src, dst, want) in cases {
            assert_eq!(sides.leg(a(src), a(dst)), want, "{name}");
        }
    }
}
