//! The stateless proxy core (RFC 3261 §16.11): for one received message, decide where it goes
//! and write what goes there. No I/O: the transports call [`Relay::handle`] and carry out the
//! [`Decision`], so every routing rule is tested here with plain bytes.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::PortRange;
use crate::flow::{self, BranchInput, Flow, FlowKey, Transport};
use crate::observe::{Bound, Direction, DropReason, Metrics};
use crate::scan::{self, HeaderName, Message, Method, RPort, ScanError, Uri, Via};

/// Max-Forwards written when a request has none (RFC 3261 §16.6 step 3).
const DEFAULT_MAX_FORWARDS: u8 = 70;

/// A stateless reply that replaces forwarding.
#[derive(Debug)]
struct Refusal<'r> {
    /// Status code of the reply.
    status: u16,
    /// Reason phrase (may name the defect, for a 400).
    reason: &'r [u8],
    /// Header lines added to the reply, each ending in CRLF.
    headers: &'r [u8],
    /// How the drop is counted when no reply is possible (an ACK, or missing headers).
    otherwise: DropReason,
}

const TOO_LARGE: Refusal<'static> = Refusal {
    status: 413,
    reason: b"Request Entity Too Large",
    headers: b"",
    otherwise: DropReason::TooLarge,
};

const TOO_MANY_HOPS: Refusal<'static> = Refusal {
    status: 483,
    reason: b"Too Many Hops",
    headers: b"",
    otherwise: DropReason::Unroutable,
};

const NOT_FOUND: Refusal<'static> = Refusal {
    status: 404,
    reason: b"Not Found (no flow or address)",
    headers: b"",
    otherwise: DropReason::Unroutable,
};

/// A new call past `sip.max_calls` (RFC 3261 §21.5.4): the terminal may retry later, or try
/// another node at once (RFC 3263 §4.3), which is what the other data centre is for.
const TOO_MANY_CALLS: Refusal<'static> = Refusal {
    status: 503,
    reason: b"Service Unavailable (too many calls)",
    headers: b"Retry-After: 10\r\n",
    otherwise: DropReason::Unroutable,
};

/// Why a TCP stream cannot be framed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProblem {
    /// The next message is over `max_message_bytes` (or its header section never ends).
    TooLarge,
    /// Its Content-Length is missing or unusable, so its end is unknown.
    Unframable(scan::ScanError),
}

/// Which side a connection or datagram source is on, as far as the transport can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The Sipserver: its requests go to the terminal's flow.
    Upstream,
    /// A terminal: its requests go only to the upstream.
    Terminal,
    /// An inbound TCP connection from the upstream's IP when that IP is a loopback address
    /// (terminals may share it on a test host): a request carrying a valid flow token that
    /// names another flow is the upstream's, anything else is a terminal's.
    Ambiguous,
}

/// Where and how a message arrived.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// UDP or TCP.
    pub transport: Transport,
    /// The sipedge port it arrived on.
    pub local_port: u16,
    /// The sender's address (after NAT).
    pub src: SocketAddr,
    /// The TCP connection's id; 0 for UDP.
    pub conn: u64,
    /// What the transport knows about the sender.
    pub side: Side,
}

/// Where a forwarded message goes; the transport layer turns it into a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The Sipserver, over `transport`, from sipedge port `local_port`.
    Upstream {
        /// The transport the request arrived on (UDP stays UDP, TCP stays TCP).
        transport: Transport,
        /// The port it arrived on; with a `host` upstream, also the port there.
        local_port: u16,
    },
    /// A terminal's flow named by a verified flow token.
    Flow(Flow),
    /// An address taken from a Via (responses) or a Request-URI / Route (upstream requests).
    Address(Flow),
}

/// What to do with one received message. The bytes to send are in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the rewritten message to `target`.
    Forward {
        /// Where it goes.
        target: Target,
        /// Towards the upstream or a terminal (for metrics and call tracking).
        direction: Direction,
    },
    /// Send the stateless reply back to the sender, the way the request came.
    Reply {
        /// Towards the sender's side.
        direction: Direction,
        /// The reply's status, e.g. 483.
        status: u16,
    },
    /// Nothing is sent.
    Drop(DropReason),
}

/// Static facts the routing rules need, shared by every transport task.
#[derive(Debug)]
pub struct Relay {
    /// Authenticates flow tokens.
    pub key: FlowKey,
    /// Host written into Via and Record-Route (IPv6 in brackets).
    pub advertise_host: Vec<u8>,
    /// Other host spellings that mean sipedge in a Route or Request-URI (the bound address).
    pub own_hosts: Vec<Vec<u8>>,
    /// sipedge's ports: a Route or Via naming one of them (on an own host) names sipedge.
    pub ports: PortRange,
    /// The Sipserver's address.
    pub upstream_ip: IpAddr,
    /// The Sipserver's port when fixed; `None` = same port as the sipedge port.
    pub upstream_port: Option<u16>,
    /// Larger messages get 413 or are dropped.
    pub max_message_bytes: usize,
    /// Counters updated for every message decided here.
    pub metrics: Arc<Metrics>,
}

impl Relay {
    /// The upstream address used from sipedge port `local_port`.
    pub fn upstream_addr(&self, local_port: u16) -> SocketAddr {
        SocketAddr::new(self.upstream_ip, self.upstream_port.unwrap_or(local_port))
    }

    /// Whether `addr` is the Sipserver sending from one of its SIP ports.
    pub fn is_upstream_addr(&self, addr: SocketAddr) -> bool {
        addr.ip() == self.upstream_ip
            && match self.upstream_port {
                Some(p) => addr.port() == p,
                None => self.ports.contains(addr.port()),
            }
    }

    /// Whether `addr` is on the Sipserver's side: its SIP ports, or any port of its address
    /// (its own TCP connections) unless that address is shared loopback.
    pub fn is_upstream_side(&self, addr: SocketAddr) -> bool {
        self.is_upstream_addr(addr) || (addr.ip() == self.upstream_ip && !addr.ip().is_loopback())
    }

    /// Decides what to do with `data` (one datagram or one TCP frame) and writes the bytes
    /// to send into `out` (cleared first).
    pub fn handle(&self, arrival: &Arrival, data: &[u8], out: &mut Vec<u8>) -> Decision {
        match self.scan(data) {
            Some(msg) => self.decide(arrival, &msg, out),
            None => {
                out.clear();
                Decision::Drop(DropReason::Unparseable)
            }
        }
    }

    /// Scans `data`, counting what does not scan (which is dropped as
    /// [`DropReason::Unparseable`]).
    pub fn scan<'a>(&self, data: &'a [u8]) -> Option<Message<'a>> {
        let msg = scan::scan(data).ok();
        if msg.is_none() {
            self.metrics
                .parse_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        msg
    }

    /// [`Relay::handle`] for a message already scanned (the caller keeps the scan for call
    /// tracking).
    pub fn decide(&self, arrival: &Arrival, msg: &Message<'_>, out: &mut Vec<u8>) -> Decision {
        out.clear();
        if msg.is_request() {
            self.request(arrival, msg, msg.buf_len(), out)
        } else {
            self.response(msg, out)
        }
    }

    /// A TCP stream that cannot go on (`problem`): a 413 or 400 when the buffered header
    /// section allows a reply, otherwise nothing. The connection closes either way, since
    /// the stream cannot be resynchronised.
    pub fn refuse_stream(
        &self,
        arrival: &Arrival,
        buffered: &[u8],
        problem: StreamProblem,
        out: &mut Vec<u8>,
    ) -> Decision {
        out.clear();
        let (refusal, reason);
        let refusal = match problem {
            StreamProblem::TooLarge => &TOO_LARGE,
            StreamProblem::Unframable(e) => {
                reason = format!("Bad Request ({e})");
                refusal = Refusal {
                    status: 400,
                    reason: reason.as_bytes(),
                    headers: b"",
                    otherwise: DropReason::Unparseable,
                };
                &refusal
            }
        };
        let msg = match scan::scan(buffered) {
            Ok(msg) if msg.is_request() => msg,
            _ => return Decision::Drop(refusal.otherwise),
        };
        let back = match self.side_of(arrival, &msg) {
            Side::Upstream => Direction::ToUpstream,
            _ => Direction::ToTerminal,
        };
        self.refuse(&msg, arrival, back, refusal, out)
    }

    fn request(
        &self,
        arrival: &Arrival,
        msg: &Message<'_>,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Decision {
        let method = msg.method_bytes().unwrap_or_default();
        let side = self.side_of(arrival, msg);
        let back = match side {
            Side::Upstream => Direction::ToUpstream,
            _ => Direction::ToTerminal,
        };
        let is_ack = msg.method() == Some(Method::Ack);
        if len > self.max_message_bytes {
            return self.refuse(msg, arrival, back, &TOO_LARGE, out);
        }
        if let Err(e) = msg.validate() {
            self.metrics
                .parse_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Another SIP version has a code of its own (RFC 3261 §21.5.7, RFC 4475 3.1.2.16).
            let (status, reason) = match e {
                ScanError::BadVersion => (505, "Version Not Supported".to_owned()),
                _ => (400, format!("Bad Request ({e})")),
            };
            let bad = Refusal {
                status,
                reason: reason.as_bytes(),
                headers: b"",
                otherwise: DropReason::Unparseable,
            };
            return self.refuse(msg, arrival, back, &bad, out);
        }
        let max_forwards = msg.max_forwards().unwrap_or(DEFAULT_MAX_FORWARDS);
        let is_options = msg.method() == Some(Method::Options);
        if is_options && (max_forwards == 0 || self.is_options_for_us(msg)) {
            self.metrics.request(back.reverse(), method);
            self.reply(msg, arrival, 200, b"OK", b"", out);
            self.metrics.response(back, method, 200);
            return Decision::Reply {
                direction: back,
                status: 200,
            };
        }
        if max_forwards == 0 {
            return self.refuse(msg, arrival, back, &TOO_MANY_HOPS, out);
        }
        // RFC 3261 §16.3 step 5: sipedge understands no proxy extension, so any option tag
        // a request makes a proxy require gets 420, the tags listed in Unsupported. An ACK
        // cannot be answered and is relayed as it is.
        if !is_ack && let Some(unsupported) = unsupported_proxy_require(msg) {
            let refusal = Refusal {
                status: 420,
                reason: b"Bad Extension",
                headers: &unsupported,
                otherwise: DropReason::Unroutable,
            };
            return self.refuse(msg, arrival, back, &refusal, out);
        }
        let new_call =
            msg.method() == Some(Method::Invite) && msg.to().is_some_and(|t| t.tag.is_none());
        // Only the terminals' calls: the Sipserver's own are few, and it is not asked to back
        // off by the edge it relies on.
        if new_call && side != Side::Upstream {
            let call_id = msg.call_id().unwrap_or_default();
            let from_tag = msg.from().and_then(|f| f.tag).unwrap_or_default();
            if !self.metrics.calls.admit(call_id, from_tag) {
                self.metrics.refused(Bound::Calls, 1);
                return self.refuse(msg, arrival, back, &TOO_MANY_CALLS, out);
            }
        }
        let (target, pop_route) = match side {
            Side::Upstream => match self.upstream_target(arrival, msg) {
                Some(t) => t,
                None if is_ack => return Decision::Drop(DropReason::Unroutable),
                None => {
                    return self.refuse(msg, arrival, back, &NOT_FOUND, out);
                }
            },
            _ => (
                Target::Upstream {
                    transport: arrival.transport,
                    local_port: arrival.local_port,
                },
                self.top_route_is_ours(msg),
            ),
        };
        let out_flow = match target {
            Target::Upstream {
                transport,
                local_port,
            } => Flow {
                transport,
                local_port,
                remote: self.upstream_addr(local_port),
                conn: 0,
            },
            Target::Flow(f) | Target::Address(f) => f,
        };

        let mut via = Vec::with_capacity(96);
        let _ = write!(via, "SIP/2.0/{} ", out_flow.transport.via_name());
        via.extend_from_slice(&self.advertise_host);
        let _ = write!(via, ":{};branch=", out_flow.local_port);
        flow::derive_branch(branch_input(msg), &mut via);

        let mut received = Vec::with_capacity(40);
        let _ = write!(received, "{}", arrival.src.ip());

        let mut rewrite = msg.rewrite();
        rewrite
            .set_top_via_received(&received)
            .set_top_via_rport(arrival.src.port())
            .set_max_forwards(max_forwards - 1);
        if pop_route {
            rewrite.remove_top_route();
        }
        let mut rr = Vec::new();
        let creates_dialog = matches!(
            msg.method(),
            Some(Method::Invite | Method::Subscribe | Method::Refer)
        ) && msg.to().is_some_and(|t| t.tag.is_none());
        let is_register = msg.method() == Some(Method::Register);
        if creates_dialog || is_register {
            // The token names the terminal's flow: the arrival one for a terminal's request,
            // the chosen one for the Sipserver's.
            let terminal_flow = match side {
                Side::Upstream => out_flow,
                _ => Flow {
                    transport: arrival.transport,
                    local_port: arrival.local_port,
                    remote: arrival.src,
                    conn: arrival.conn,
                },
            };
            self.route_uri(&terminal_flow, &mut rr);
            if is_register {
                rewrite.insert_path(&rr);
            } else {
                rewrite.insert_record_route(&rr);
            }
        }
        rewrite.insert_via(&via);
        rewrite.write_into(out);

        let direction = back.reverse();
        self.metrics.request(direction, method);
        Decision::Forward { target, direction }
    }

    fn response(&self, msg: &Message<'_>, out: &mut Vec<u8>) -> Decision {
        if msg.validate().is_err() {
            self.metrics
                .parse_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Decision::Drop(DropReason::Unparseable);
        }
        let Some(ours) = msg.top_via().filter(|v| self.is_own_via(v)) else {
            return Decision::Drop(DropReason::Unroutable);
        };
        let Some(next) = msg.vias().nth(1).and_then(|v| Via::parse(v).ok()) else {
            return Decision::Drop(DropReason::Unroutable);
        };
        let Some(ip) = next.received.or(Some(next.host)).and_then(parse_ip) else {
            return Decision::Drop(DropReason::Unroutable);
        };
        let port = match next.rport {
            RPort::Port(p) => p,
            _ => next.port.unwrap_or(5060),
        };
        let remote = SocketAddr::new(ip, port);
        let local_port = ours.port.unwrap_or(5060);
        let direction = if self.is_upstream_side(remote) {
            Direction::ToUpstream
        } else {
            Direction::ToTerminal
        };
        // Towards a terminal, the transport is the one sipedge forwarded its request on,
        // which is the one the request arrived on: what a terminal writes in its Via is not
        // trusted to make sipedge open connections. The Sipserver's Via is.
        let via_transport = match direction {
            Direction::ToTerminal => ours.transport,
            Direction::ToUpstream => next.transport,
        };
        let transport = match via_transport {
            scan::Transport::Udp => Transport::Udp,
            scan::Transport::Tcp => Transport::Tcp,
            _ => return Decision::Drop(DropReason::Unroutable),
        };
        let mut rewrite = msg.rewrite();
        rewrite.remove_top_via();
        rewrite.write_into(out);
        if let (Some(cseq), Some(status)) = (msg.cseq(), msg.status()) {
            self.metrics.response(direction, cseq.method_raw, status);
        }
        Decision::Forward {
            target: Target::Address(Flow {
                transport,
                local_port,
                remote,
                conn: 0,
            }),
            direction,
        }
    }

    /// The arrival's side, resolving [`Side::Ambiguous`] by the request's flow token.
    fn side_of(&self, arrival: &Arrival, msg: &Message<'_>) -> Side {
        match arrival.side {
            Side::Ambiguous => {
                let names_other_flow = self
                    .token_flow(msg)
                    .is_some_and(|f| f.transport != arrival.transport || f.conn != arrival.conn);
                if names_other_flow {
                    Side::Upstream
                } else {
                    Side::Terminal
                }
            }
            side => side,
        }
    }

    /// Target of a request from the Sipserver: the flow its token names, else the next loose
    /// router, else the Request-URI's address. The bool says whether the top Route is
    /// sipedge's and must be removed.
    fn upstream_target(&self, arrival: &Arrival, msg: &Message<'_>) -> Option<(Target, bool)> {
        let pop = self.top_route_is_ours(msg);
        if let Some(flow) = self.token_flow(msg) {
            return Some((Target::Flow(flow), pop));
        }
        let mut routes = msg.routes();
        if pop {
            routes.next();
        }
        let next_hop = match routes.next() {
            Some(route) => route.sip_uri()?,
            None => Uri::parse(msg.request_uri()?)?,
        };
        if self.names_us(&next_hop) {
            return None;
        }
        let ip = parse_ip(next_hop.host)?;
        let transport = match next_hop.param(b"transport") {
            Some(t) if t.eq_ignore_ascii_case(b"tcp") => Transport::Tcp,
            Some(t) if t.eq_ignore_ascii_case(b"udp") => Transport::Udp,
            Some(_) => return None,
            None => arrival.transport,
        };
        Some((
            Target::Address(Flow {
                transport,
                local_port: arrival.local_port,
                remote: SocketAddr::new(ip, next_hop.port.unwrap_or(5060)),
                conn: 0,
            }),
            pop,
        ))
    }

    /// The flow named by a valid token in the top Route (when it names sipedge) or, for a
    /// strict-routing previous hop, in the Request-URI.
    fn token_flow(&self, msg: &Message<'_>) -> Option<Flow> {
        let top_route = msg.routes().next().and_then(|r| r.sip_uri());
        let uri = match top_route {
            Some(u) if self.names_us(&u) => u,
            _ => Uri::parse(msg.request_uri()?).filter(|u| self.names_us(u))?,
        };
        let flow = self.key.decode(uri.user?)?;
        self.ports.contains(flow.local_port).then_some(flow)
    }

    fn top_route_is_ours(&self, msg: &Message<'_>) -> bool {
        msg.routes()
            .next()
            .and_then(|r| r.sip_uri())
            .is_some_and(|u| self.names_us(&u))
    }

    fn is_options_for_us(&self, msg: &Message<'_>) -> bool {
        msg.routes().next().is_none()
            && msg
                .request_uri()
                .and_then(Uri::parse)
                .is_some_and(|u| u.user.is_none() && self.names_us(&u))
    }

    /// Whether a SIP URI names sipedge: one of its hosts and one of its ports.
    fn names_us(&self, uri: &Uri<'_>) -> bool {
        self.is_own_host(uri.host) && self.ports.contains(uri.port.unwrap_or(5060))
    }

    fn is_own_host(&self, host: &[u8]) -> bool {
        host.eq_ignore_ascii_case(&self.advertise_host)
            || self.own_hosts.iter().any(|h| host.eq_ignore_ascii_case(h))
    }

    fn is_own_via(&self, via: &Via<'_>) -> bool {
        self.is_own_host(via.host)
            && self.ports.contains(via.port.unwrap_or(5060))
            && via
                .branch
                .is_some_and(|b| b.starts_with(flow::BRANCH_PREFIX))
    }

    /// `<sip:TOKEN@host:port;transport=tcp;lr>` for Record-Route and Path.
    fn route_uri(&self, flow: &Flow, out: &mut Vec<u8>) {
        out.extend_from_slice(b"<sip:");
        self.key.encode(flow, out);
        out.push(b'@');
        out.extend_from_slice(&self.advertise_host);
        let _ = write!(out, ":{}", flow.local_port);
        if flow.transport == Transport::Tcp {
            out.extend_from_slice(b";transport=tcp");
        }
        out.extend_from_slice(b";lr>");
    }

    /// Answers a request that cannot be forwarded with `status`, or drops it when no reply
    /// is possible (an ACK, or the headers a reply needs are missing).
    fn refuse(
        &self,
        msg: &Message<'_>,
        arrival: &Arrival,
        back: Direction,
        refusal: &Refusal<'_>,
        out: &mut Vec<u8>,
    ) -> Decision {
        if msg.method() == Some(Method::Ack) || !msg.is_mandatory_complete() {
            return Decision::Drop(refusal.otherwise);
        }
        self.reply(
            msg,
            arrival,
            refusal.status,
            refusal.reason,
            refusal.headers,
            out,
        );
        let method = msg.method_bytes().unwrap_or_default();
        self.metrics.response(back, method, refusal.status);
        Decision::Reply {
            direction: back,
            status: refusal.status,
        }
    }

    /// Writes a stateless response to `msg` (RFC 3261 §8.2.6): its Vias (the top one with
    /// `received`/`rport`), From, To with a tag, Call-ID and CSeq copied byte for byte, then
    /// `headers` (whole lines, each ending in CRLF).
    pub fn reply(
        &self,
        msg: &Message<'_>,
        arrival: &Arrival,
        status: u16,
        reason: &[u8],
        headers: &[u8],
        out: &mut Vec<u8>,
    ) {
        out.clear();
        let _ = write!(out, "SIP/2.0 {status} ");
        out.extend(
            reason
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        out.extend_from_slice(b"\r\n");
        for (i, via) in msg.vias().enumerate() {
            out.extend_from_slice(b"Via: ");
            out.extend_from_slice(via);
            if i == 0 {
                let _ = write!(
                    out,
                    ";received={};rport={}",
                    arrival.src.ip(),
                    arrival.src.port()
                );
            }
            out.extend_from_slice(b"\r\n");
        }
        for (name, header) in [
            (&b"From: "[..], HeaderName::From),
            (b"To: ", HeaderName::To),
        ] {
            if let Some(v) = msg.header(header) {
                out.extend_from_slice(name);
                out.extend_from_slice(v);
                let needs_tag =
                    header == HeaderName::To && msg.to().is_some_and(|t| t.tag.is_none());
                if needs_tag {
                    out.extend_from_slice(b";tag=");
                    local_tag(msg, out);
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        for (name, header) in [
            (&b"Call-ID: "[..], HeaderName::CallId),
            (b"CSeq: ", HeaderName::CSeq),
        ] {
            if let Some(v) = msg.header(header) {
                out.extend_from_slice(name);
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(headers);
        out.extend_from_slice(b"Server: sipedge\r\nContent-Length: 0\r\n\r\n");
    }
}

/// The `Unsupported` line answering a request's `Proxy-Require` option tags, when it has any.
fn unsupported_proxy_require(msg: &Message<'_>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let required = msg.headers().filter(|h| {
        h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(b"Proxy-Require")
    });
    for header in required {
        let tags = header
            .value
            .split(|&b| b == b',')
            .map(|tag| tag.trim_ascii())
            .filter(|tag| !tag.is_empty());
        for tag in tags {
            line.extend_from_slice(if line.is_empty() {
                b"Unsupported: "
            } else {
                b", "
            });
            // A folded value keeps its line break; the reply's header must not.
            line.extend(
                tag.iter()
                    .map(|&b| if b.is_ascii_whitespace() { b' ' } else { b }),
            );
        }
    }
    if line.is_empty() {
        return None;
    }
    line.extend_from_slice(b"\r\n");
    Some(line)
}

fn branch_input<'a>(msg: &Message<'a>) -> BranchInput<'a> {
    let via = msg.top_via();
    let sent_by = via.map(|v| v.host).unwrap_or_default();
    let port = via.and_then(|v| v.port);
    match via.and_then(|v| v.branch) {
        Some(branch) if branch.starts_with(b"z9hG4bK") => BranchInput::Rfc3261 {
            branch,
            sent_by,
            port,
        },
        _ => BranchInput::Legacy {
            sent_by,
            port,
            call_id: msg.call_id().unwrap_or_default(),
            cseq: msg.cseq().map_or(0, |c| c.number),
            from_tag: msg.from().and_then(|f| f.tag).unwrap_or_default(),
            request_uri: msg.request_uri().unwrap_or_default(),
        },
    }
}

/// A To tag for a stateless reply: the same for every retransmission of the request.
fn local_tag(msg: &Message<'_>, out: &mut Vec<u8>) {
    let mut h = Sha256::new();
    h.update(msg.top_via().and_then(|v| v.branch).unwrap_or_default());
    h.update(msg.call_id().unwrap_or_default());
    h.update(msg.from().and_then(|f| f.tag).unwrap_or_default());
    for b in h.finalize().iter().take(6) {
        let _ = write!(out, "{b:02x}");
    }
}

/// An IP literal (IPv6 with or without brackets); host names are not resolved on the relay
/// path.
fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(host).ok()?;
    let s = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERMINAL: &str = "203.0.113.7:40000";
    const UPSTREAM: &str = "10.0.0.5:14501";

    fn relay() -> Relay {
        Relay {
            key: FlowKey::from_bytes(&[7; 32]).unwrap(),
            advertise_host: b"192.0.2.10".to_vec(),
            own_hosts: vec![b"sipedge.example".to_vec()],
            ports: "14500-14509".parse().unwrap(),
            upstream_ip: "10.0.0.5".parse().unwrap(),
            upstream_port: None,
            max_message_bytes: 2000,
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn udp_from(src: &str, side: Side) -> Arrival {
        Arrival {
            transport: Transport::Udp,
            local_port: 14501,
            src: src.parse().unwrap(),
            conn: 0,
            side,
        }
    }

    fn terminal() -> Arrival {
        udp_from(TERMINAL, Side::Terminal)
    }

    fn upstream() -> Arrival {
        udp_from(UPSTREAM, Side::Upstream)
    }

    fn terminal_flow() -> Flow {
        Flow {
            transport: Transport::Udp,
            local_port: 14501,
            remote: TERMINAL.parse().unwrap(),
            conn: 0,
        }
    }

    fn token(flow: &Flow) -> String {
        let mut out = Vec::new();
        relay().key.encode(flow, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// A request with `extra` header lines; `{ms}` stands for the Max-Forwards line.
    fn request(first: &str, method: &str, extra: &str) -> String {
        format!(
            "{first}\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKabc;rport\r\n\
             From: <sip:alice@bank>;tag=a1\r\nTo: <sip:bob@bank>\r\nCall-ID: c1@x\r\n\
             CSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    fn invite(extra: &str) -> String {
        request("INVITE sip:bob@10.0.0.5 SIP/2.0", "INVITE", extra)
    }

    /// Runs one message through the relay: the decision must match and the output must hold
    /// every `present` string and none of the `absent` ones.
    fn check(arrival: Arrival, input: &str, expected: Decision, present: &[&str], absent: &[&str]) {
        let r = relay();
        let mut out = Vec::new();
        let got = r.handle(&arrival, input.as_bytes(), &mut out);
        let text = String::from_utf8_lossy(&out);
        assert_eq!(got, expected, "input:\n{input}\noutput:\n{text}");
        for p in present {
            assert!(text.contains(p), "missing {p:?} in:\n{text}");
        }
        for a in absent {
            assert!(!text.contains(a), "unexpected {a:?} in:\n{text}");
        }
    }

    fn to_upstream(transport: Transport) -> Decision {
        Decision::Forward {
            target: Target::Upstream {
                transport,
                local_port: 14501,
            },
            direction: Direction::ToUpstream,
        }
    }

    #[test]
    fn requests_from_terminals_go_upstream() {
        let rr = format!(
            "Record-Route: <sip:{}@192.0.2.10:14501;lr>\r\n",
            token(&terminal_flow())
        );
        check(
            terminal(),
            &invite("Max-Forwards: 70\r\n"),
            to_upstream(Transport::Udp),
            &[
                "INVITE sip:bob@10.0.0.5 SIP/2.0\r\n",
                "Via: SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKsE",
                "branch=z9hG4bKabc;rport=40000;received=203.0.113.7\r\n",
                "Max-Forwards: 69\r\n",
                &rr,
            ],
            &["Max-Forwards: 70"],
        );
        // No Max-Forwards: one is added (RFC 3261 §16.6 step 3).
        check(
            terminal(),
            &invite(""),
            to_upstream(Transport::Udp),
            &["Max-Forwards: 69\r\n"],
            &[],
        );
        // Routes not naming sipedge stay; one naming sipedge is removed.
        check(
            terminal(),
            &invite("Route: <sip:192.0.2.10:14501;lr>, <sip:evil.example;lr>\r\n"),
            to_upstream(Transport::Udp),
            &["Route: <sip:evil.example;lr>\r\n"],
            &["<sip:192.0.2.10:14501;lr>"],
        );
        check(
            terminal(),
            &invite("Route: <sip:6.6.6.6;lr>\r\n"),
            to_upstream(Transport::Udp),
            &["Route: <sip:6.6.6.6;lr>\r\n"],
            &[],
        );
        // In-dialog requests get no Record-Route; REGISTER gets Path.
        check(
            terminal(),
            &request("BYE sip:bob@10.0.0.5 SIP/2.0", "BYE", "")
                .replace("To: <sip:bob@bank>", "To: <sip:bob@bank>;tag=b1"),
            to_upstream(Transport::Udp),
            &["BYE sip:bob@10.0.0.5 SIP/2.0\r\n"],
            &["Record-Route", "Path"],
        );
        let path = format!(
            "Path: <sip:{}@192.0.2.10:14501;lr>\r\n",
            token(&terminal_flow())
        );
        check(
            terminal(),
            &request("REGISTER sip:bank SIP/2.0", "REGISTER", ""),
            to_upstream(Transport::Udp),
            &[&path],
            &["Record-Route"],
        );
        // A token a terminal presents does not send its request anywhere but upstream.
        let other = Flow {
            remote: "198.51.100.1:5060".parse().unwrap(),
            ..terminal_flow()
        };
        check(
            terminal(),
            &invite(&format!(
                "Route: <sip:{}@192.0.2.10:14501;lr>\r\n",
                token(&other)
            )),
            to_upstream(Transport::Udp),
            &[],
            &[&token(&other)],
        );
    }

    #[test]
    fn branches_match_for_retransmissions_and_cancel() {
        let r = relay();
        let branch = |input: &str| {
            let mut out = Vec::new();
            r.handle(&terminal(), input.as_bytes(), &mut out);
            let text = String::from_utf8(out).unwrap();
            let start = text.find(";branch=z9hG4bKsE").unwrap();
            text[start..start + 50].to_owned()
        };
        let inv = invite("");
        let cancel = request("CANCEL sip:bob@10.0.0.5 SIP/2.0", "CANCEL", "");
        let other = inv.replace("z9hG4bKabc", "z9hG4bKabd");
        assert_eq!(branch(&inv), branch(&inv));
        assert_eq!(branch(&inv), branch(&cancel));
        assert_ne!(branch(&inv), branch(&other));
        // RFC 2543 clients: the transaction's fields decide.
        let old = inv.replace(";branch=z9hG4bKabc", "");
        let old_cancel = cancel.replace(";branch=z9hG4bKabc", "");
        assert_eq!(branch(&old), branch(&old_cancel));
        assert_ne!(branch(&old), branch(&old.replace("c1@x", "c2@x")));
    }

    #[test]
    fn stateless_replies() {
        let reply = |status| Decision::Reply {
            direction: Direction::ToTerminal,
            status,
        };
        check(
            terminal(),
            &invite("Max-Forwards: 0\r\n"),
            reply(483),
            &[
                "SIP/2.0 483 Too Many Hops\r\n",
                "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKabc;rport;received=203.0.113.7;rport=40000\r\n",
                "To: <sip:bob@bank>;tag=",
                "Call-ID: c1@x\r\nCSeq: 1 INVITE\r\n",
                "Content-Length: 0\r\n\r\n",
            ],
            &[],
        );
        check(
            terminal(),
            &request(
                "OPTIONS sip:bob@10.0.0.5 SIP/2.0",
                "OPTIONS",
                "Max-Forwards: 0\r\n",
            ),
            reply(200),
            &["SIP/2.0 200 OK\r\n", "CSeq: 1 OPTIONS\r\n"],
            &[],
        );
        check(
            terminal(),
            &request("OPTIONS sip:192.0.2.10:14501 SIP/2.0", "OPTIONS", ""),
            reply(200),
            &["SIP/2.0 200 OK\r\n"],
            &[],
        );
        check(
            terminal(),
            &request("ACK sip:bob@10.0.0.5 SIP/2.0", "ACK", "Max-Forwards: 0\r\n"),
            Decision::Drop(DropReason::Unroutable),
            &[],
            &[],
        );
        // Everything a reply needs is there, something else is wrong: 400.
        check(
            terminal(),
            &invite("Max-Forwards: many\r\n"),
            reply(400),
            &["SIP/2.0 400 Bad Request (Max-Forwards"],
            &[],
        );
        check(
            terminal(),
            &invite("").replace("CSeq: 1 INVITE", "CSeq: 1 BYE"),
            reply(400),
            &["SIP/2.0 400 Bad Request ("],
            &[],
        );
        // Another SIP version: 505 (RFC 3261 §21.5.7).
        check(
            terminal(),
            &request("INVITE sip:bob@10.0.0.5 SIP/7.0", "INVITE", ""),
            reply(505),
            &["SIP/2.0 505 Version Not Supported\r\n"],
            &[],
        );
        // Over max_message_bytes: 413.
        check(
            terminal(),
            &invite(&format!("X-Pad: {}\r\n", "a".repeat(2000))),
            reply(413),
            &["SIP/2.0 413 Request Entity Too Large\r\n"],
            &[],
        );
        // A To tag is kept when present.
        check(
            terminal(),
            &invite("Max-Forwards: 0\r\n")
                .replace("To: <sip:bob@bank>", "To: <sip:bob@bank>;tag=zz"),
            reply(483),
            &["To: <sip:bob@bank>;tag=zz\r\n"],
            &[";tag=zz;tag="],
        );
    }

    /// RFC 3261 §16.3 step 5: a Proxy-Require this proxy does not understand is a 420
    /// listing the tags; Require is the UAS's business and relayed; an ACK is relayed.
    #[test]
    fn proxy_require_gets_420_with_the_tags_unsupported() {
        let reply = |status| Decision::Reply {
            direction: Direction::ToTerminal,
            status,
        };
        check(
            terminal(),
            &invite("Max-Forwards: 70\r\nProxy-Require: foo, bar\r\nproxy-require: baz\r\n"),
            reply(420),
            &[
                "SIP/2.0 420 Bad Extension\r\n",
                "Call-ID: c1@x\r\nCSeq: 1 INVITE\r\n",
                "Unsupported: foo, bar, baz\r\n",
            ],
            &["Proxy-Require"],
        );
        check(
            terminal(),
            &invite("Max-Forwards: 70\r\nProxy-Require: a,\r\n b\r\n"),
            reply(420),
            &["Unsupported: a, b\r\n"],
            &[],
        );
        let relayed = |extra: &str| {
            let r = relay();
            let mut out = Vec::new();
            let msg = invite(extra);
            matches!(
                r.handle(&terminal(), msg.as_bytes(), &mut out),
                Decision::Forward { .. }
            )
        };
        assert!(relayed("Max-Forwards: 70\r\nRequire: foo\r\n"));
        assert!(relayed("Max-Forwards: 70\r\nProxy-Require: \r\n"));
        let r = relay();
        let mut out = Vec::new();
        let ack = request(
            "ACK sip:bob@10.0.0.5 SIP/2.0",
            "ACK",
            "Max-Forwards: 70\r\nProxy-Require: foo\r\n",
        );
        assert!(matches!(
            r.handle(&terminal(), ack.as_bytes(), &mut out),
            Decision::Forward { .. }
        ));
    }

    /// Past `sip.max_calls`, a terminal's new INVITE gets a stateless 503 with Retry-After;
    /// everything else is relayed as before.
    #[test]
    fn new_calls_past_the_cap_get_503() {
        let full = |tagged: bool| {
            let r = relay();
            r.metrics.calls.set_max(5);
            r.metrics.calls.set_active(if tagged { 4 } else { 5 });
            r
        };
        let in_dialog = |s: String| s.replace("To: <sip:bob@bank>", "To: <sip:bob@bank>;tag=b1");
        let refused = Decision::Reply {
            direction: Direction::ToTerminal,
            status: 503,
        };
        let from_upstream = "INVITE sip:8001@192.0.2.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 10.0.0.5:14501;branch=z9hG4bKup2\r\n\
             From: <sip:95566@bank>;tag=s1\r\nTo: <sip:8001@bank>\r\nCall-ID: c2@x\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            .to_owned();
        let cases: [(&str, Relay, Arrival, String, Decision); 7] = [
            (
                "a new call at the cap",
                full(false),
                terminal(),
                invite(""),
                refused,
            ),
            (
                "a new call under it",
                full(true),
                terminal(),
                invite(""),
                to_upstream(Transport::Udp),
            ),
            (
                "a re-INVITE at the cap",
                full(false),
                terminal(),
                in_dialog(invite("")),
                to_upstream(Transport::Udp),
            ),
            (
                "a BYE at the cap",
                full(false),
                terminal(),
                in_dialog(request("BYE sip:bob@10.0.0.5 SIP/2.0", "BYE", "")),
                to_upstream(Transport::Udp),
            ),
            (
                "an ACK at the cap",
                full(false),
                terminal(),
                request("ACK sip:bob@10.0.0.5 SIP/2.0", "ACK", ""),
                to_upstream(Transport::Udp),
            ),
            (
                "a REGISTER at the cap",
                full(false),
                terminal(),
                request("REGISTER sip:10.0.0.5 SIP/2.0", "REGISTER", ""),
                to_upstream(Transport::Udp),
            ),
            (
                "the Sipserver's new call at the cap",
                full(false),
                upstream(),
                from_upstream,
                Decision::Forward {
                    target: Target::Address(Flow {
                        transport: Transport::Udp,
                        local_port: 14501,
                        remote: "192.0.2.1:5060".parse().unwrap(),
                        conn: 0,
                    }),
                    direction: Direction::ToTerminal,
                },
            ),
        ];
        let r = full(true);
        let mut out = Vec::new();
        let first = r.handle(&terminal(), invite("").as_bytes(), &mut out);
        assert_eq!(first, to_upstream(Transport::Udp));
        r.metrics.calls.set_active(5);
        let again = r.handle(&terminal(), invite("").as_bytes(), &mut out);
        assert_eq!(
            again,
            to_upstream(Transport::Udp),
            "a retransmission of a call let through passes at the cap"
        );
        let retry = invite("").replace("CSeq: 1 INVITE", "CSeq: 2 INVITE");
        let retried = r.handle(&terminal(), retry.as_bytes(), &mut out);
        assert_eq!(
            retried,
            to_upstream(Transport::Udp),
            "the retry after a 401"
        );
        for (name, r, arrival, input, expected) in cases {
            let mut out = Vec::new();
            let got = r.handle(&arrival, input.as_bytes(), &mut out);
            let text = String::from_utf8_lossy(&out);
            assert_eq!(got, expected, "{name}:\n{text}");
            let counted = r.metrics.refusals().contains(&("sip.max_calls", 1));
            assert_eq!(counted, expected == refused, "{name}: refusal counted");
            if expected == refused {
                for line in [
                    "SIP/2.0 503 Service Unavailable (too many calls)\r\n",
                    "Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKabc;rport;received=203.0.113.7;rport=40000\r\n",
                    "From: <sip:alice@bank>;tag=a1\r\n",
                    "To: <sip:bob@bank>;tag=",
                    "Call-ID: c1@x\r\nCSeq: 1 INVITE\r\n",
                    "\r\nRetry-After: 10\r\n",
                    "Content-Length: 0\r\n\r\n",
                ] {
                    assert!(text.contains(line), "{name}: no {line:?} in\n{text}");
                }
                assert!(scan::parse(&out).is_ok(), "{name}: the 503 parses");
            }
        }
    }

    #[test]
    fn hostile_inputs_are_dropped() {
        let unparseable = Decision::Drop(DropReason::Unparseable);
        for input in [
            "",
            "\r\n\r\n",
            "hello",
            "INVITE\r\n\r\n",
            "\u{0}\u{1}\u{2}garbage\r\n\r\n",
            // No Call-ID: a reply cannot be built.
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCSeq: 1 INVITE\r\n\r\n",
            "SIP/2.0 200 OK\r\nVia: broken\r\n\r\n",
        ] {
            check(terminal(), input, unparseable, &[], &[]);
        }
        let bytes: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
        let mut out = Vec::new();
        assert!(matches!(
            relay().handle(&terminal(), &bytes, &mut out),
            Decision::Drop(_)
        ));
    }

    fn response(vias: &str) -> String {
        format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:alice@bank>;tag=a1\r\nTo: <sip:bob@bank>;tag=b1\r\n\
             Call-ID: c1@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn responses_follow_the_via_path() {
        let ours = "Via: SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKsE0123\r\n";
        check(
            upstream(),
            &response(&format!(
                "{ours}Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKabc;rport=40000;received=203.0.113.7\r\n"
            )),
            Decision::Forward {
                target: Target::Address(terminal_flow()),
                direction: Direction::ToTerminal,
            },
            &["SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bKabc;"],
            &["192.0.2.10"],
        );
        // Without received/rport: sent-by; sipedge's TCP Via means TCP.
        let ours_tcp = "Via: SIP/2.0/TCP 192.0.2.10:14501;branch=z9hG4bKsE0123\r\n";
        check(
            upstream(),
            &response(&format!(
                "{ours_tcp}Via: SIP/2.0/UDP 198.51.100.4;branch=z9hG4bKx\r\n"
            )),
            Decision::Forward {
                target: Target::Address(Flow {
                    transport: Transport::Tcp,
                    local_port: 14501,
                    remote: "198.51.100.4:5060".parse().unwrap(),
                    conn: 0,
                }),
                direction: Direction::ToTerminal,
            },
            &[],
            &[],
        );
        // A terminal's Via claiming TCP does not turn a UDP flow into a TCP connect.
        check(
            upstream(),
            &response(&format!(
                "{ours}Via: SIP/2.0/TCP 198.51.100.4:5070;branch=z9hG4bKx\r\n"
            )),
            Decision::Forward {
                target: Target::Address(Flow {
                    remote: "198.51.100.4:5070".parse().unwrap(),
                    ..terminal_flow()
                }),
                direction: Direction::ToTerminal,
            },
            &[],
            &[],
        );
        // Towards the upstream (a terminal answering the Sipserver's request).
        check(
            terminal(),
            &response(&format!(
                "{ours}Via: SIP/2.0/UDP 10.0.0.5:14501;branch=z9hG4bKup\r\n"
            )),
            Decision::Forward {
                target: Target::Address(Flow {
                    remote: UPSTREAM.parse().unwrap(),
                    ..terminal_flow()
                }),
                direction: Direction::ToUpstream,
            },
            &[],
            &[],
        );
        let unroutable = Decision::Drop(DropReason::Unroutable);
        // Not ours: wrong host, port outside the range, or a branch sipedge did not write.
        for top in [
            "Via: SIP/2.0/UDP 192.0.2.11:14501;branch=z9hG4bKsE0123\r\n",
            "Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKsE0123\r\n",
            "Via: SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKabc\r\n",
        ] {
            check(
                upstream(),
                &response(&format!(
                    "{top}Via: SIP/2.0/UDP 192.168.1.20;branch=z9hG4bKabc\r\n"
                )),
                unroutable,
                &[],
                &[],
            );
        }
        // Ours but nothing below it, or a host name / unsupported transport below it.
        check(upstream(), &response(ours), unroutable, &[], &[]);
        check(
            upstream(),
            &response(&format!(
                "{ours}Via: SIP/2.0/UDP phone.example;branch=z9hG4bKabc\r\n"
            )),
            unroutable,
            &[],
            &[],
        );
        check(
            upstream(),
            &response(&format!(
                "{ours}Via: SIP/2.0/SCTP 10.0.0.5:14501;branch=z9hG4bKabc\r\n"
            )),
            unroutable,
            &[],
            &[],
        );
    }

    fn from_upstream(first: &str, extra: &str) -> String {
        format!(
            "{first}\r\nVia: SIP/2.0/UDP 10.0.0.5:14501;branch=z9hG4bKup1\r\n\
             From: <sip:bob@bank>;tag=b1\r\nTo: <sip:alice@bank>;tag=a1\r\nCall-ID: c1@x\r\n\
             CSeq: 2 BYE\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    #[test]
    fn requests_from_upstream_follow_the_flow_token() {
        let flow = terminal_flow();
        let bye = |route: &str| {
            from_upstream(
                "BYE sip:alice@192.168.1.20:5060 SIP/2.0",
                &format!("Route: {route}\r\n"),
            )
        };
        let to_flow = |f| Decision::Forward {
            target: Target::Flow(f),
            direction: Direction::ToTerminal,
        };
        let to_contact = Decision::Forward {
            target: Target::Address(Flow {
                remote: "192.168.1.20:5060".parse().unwrap(),
                ..terminal_flow()
            }),
            direction: Direction::ToTerminal,
        };
        let good = token(&flow);
        check(
            upstream(),
            &bye(&format!("<sip:{good}@192.0.2.10:14501;lr>")),
            to_flow(flow),
            &[
                "BYE sip:alice@192.168.1.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:14501;branch=z9hG4bKsE",
                "branch=z9hG4bKup1;received=10.0.0.5;rport=14501\r\n",
            ],
            &["\nRoute:"],
        );
        // Host spelled as the bound name, and a TCP flow.
        let tcp = Flow {
            transport: Transport::Tcp,
            conn: 9,
            ..flow
        };
        check(
            upstream(),
            &bye(&format!(
                "<sip:{}@SIPEDGE.example:14501;transport=tcp;lr>",
                token(&tcp)
            )),
            to_flow(tcp),
            &["Via: SIP/2.0/TCP 192.0.2.10:14501;"],
            &[],
        );
        // Forged, tampered or foreign-host tokens are not followed: the Request-URI decides.
        let mut tampered = good.clone().into_bytes();
        tampered[8] = if tampered[8] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        let forged_flow = Flow {
            remote: "6.6.6.6:5060".parse().unwrap(),
            ..flow
        };
        let mut forged = Vec::new();
        FlowKey::from_bytes(&[9; 32])
            .unwrap()
            .encode(&forged_flow, &mut forged);
        let forged = String::from_utf8(forged).unwrap();
        for route in [
            format!("<sip:{tampered}@192.0.2.10:14501;lr>"),
            format!("<sip:{forged}@192.0.2.10:14501;lr>"),
            format!("<sip:{}@192.0.2.10:14501;lr>", &good[..20]),
            "<sip:alice@192.0.2.10:14501;lr>".to_owned(),
        ] {
            check(upstream(), &bye(&route), to_contact, &[], &["\nRoute:"]);
        }
        // A token on a Route naming someone else is not ours to follow; that Route stays.
        check(
            upstream(),
            &bye(&format!("<sip:{good}@192.0.2.99:14501;lr>")),
            Decision::Forward {
                target: Target::Address(Flow {
                    remote: "192.0.2.99:14501".parse().unwrap(),
                    ..terminal_flow()
                }),
                direction: Direction::ToTerminal,
            },
            &["Route: <sip:"],
            &[],
        );
        // No token, no route: the Request-URI's address (transport from its parameter).
        check(
            upstream(),
            &from_upstream("BYE sip:alice@192.168.1.20:5070;transport=tcp SIP/2.0", ""),
            Decision::Forward {
                target: Target::Address(Flow {
                    transport: Transport::Tcp,
                    local_port: 14501,
                    remote: "192.168.1.20:5070".parse().unwrap(),
                    conn: 0,
                }),
                direction: Direction::ToTerminal,
            },
            &["Via: SIP/2.0/TCP 192.0.2.10:14501;"],
            &[],
        );
        // Nowhere to go: a host name, or sipedge itself without a token.
        let not_found = Decision::Reply {
            direction: Direction::ToUpstream,
            status: 404,
        };
        check(
            upstream(),
            &from_upstream("BYE sip:alice@phone.example SIP/2.0", ""),
            not_found,
            &[],
            &[],
        );
        check(
            upstream(),
            &from_upstream("BYE sip:alice@192.0.2.10:14501 SIP/2.0", ""),
            not_found,
            &[],
            &[],
        );
    }

    #[test]
    fn calls_from_upstream_to_a_registered_terminal_get_a_record_route() {
        let flow = terminal_flow();
        let invite = format!(
            "INVITE sip:alice@192.168.1.20:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.5:14501;branch=z9hG4bKup2\r\n\
             Route: <sip:{}@192.0.2.10:14501;lr>\r\nFrom: <sip:bob@bank>;tag=b1\r\nTo: <sip:alice@bank>\r\n\
             Call-ID: c2@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            token(&flow)
        );
        let rr = format!(
            "Record-Route: <sip:{}@192.0.2.10:14501;lr>\r\n",
            token(&flow)
        );
        check(
            upstream(),
            &invite,
            Decision::Forward {
                target: Target::Flow(flow),
                direction: Direction::ToTerminal,
            },
            &[&rr],
            &["\nRoute:"],
        );
    }

    #[test]
    fn ambiguous_tcp_connections_are_told_apart_by_token() {
        let own = Flow {
            transport: Transport::Tcp,
            local_port: 14501,
            remote: "127.0.0.1:40000".parse().unwrap(),
            conn: 3,
        };
        let other = Flow {
            conn: 4,
            remote: "127.0.0.1:40001".parse().unwrap(),
            ..own
        };
        let arrival = Arrival {
            transport: Transport::Tcp,
            local_port: 14501,
            src: own.remote,
            conn: 3,
            side: Side::Ambiguous,
        };
        let bye = |f: &Flow| {
            from_upstream(
                "BYE sip:alice@127.0.0.1:5060 SIP/2.0",
                &format!(
                    "Route: <sip:{}@192.0.2.10:14501;transport=tcp;lr>\r\n",
                    token(f)
                ),
            )
        };
        check(
            arrival,
            &bye(&other),
            Decision::Forward {
                target: Target::Flow(other),
                direction: Direction::ToTerminal,
            },
            &[],
            &[],
        );
        check(arrival, &bye(&own), to_upstream(Transport::Tcp), &[], &[]);
        check(
            arrival,
            &invite(""),
            to_upstream(Transport::Tcp),
            &["Via: SIP/2.0/TCP 192.0.2.10:14501;"],
            &[],
        );
    }

    /// The RFC 4475 torture messages kept by the scanner's tests, sent by a terminal.
    fn torture(kind: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(kind);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                (path.display().to_string(), std::fs::read(&path).unwrap())
            })
            .collect();
        out.sort();
        assert!(!out.is_empty(), "no messages in {}", dir.display());
        out
    }

    #[test]
    fn rfc4475_invalid_messages_are_never_forwarded() {
        for (name, bytes) in torture("invalid") {
            let mut out = Vec::new();
            let got = relay().handle(&terminal(), &bytes, &mut out);
            let ok = matches!(
                got,
                Decision::Drop(_)
                    | Decision::Reply {
                        status: 400 | 505,
                        ..
                    }
            );
            assert!(ok, "{name}: {got:?}\n{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn rfc4475_valid_messages_are_relayed_or_answered() {
        for (name, bytes) in torture("valid") {
            let mut out = Vec::new();
            let got = relay().handle(&terminal(), &bytes, &mut out);
            // Responses among them carry no Via of sipedge's: not ours to route.
            let ok = if bytes.starts_with(b"SIP/2.0 ") {
                got == Decision::Drop(DropReason::Unroutable)
            } else {
                matches!(
                    got,
                    Decision::Forward { .. }
                        | Decision::Reply {
                            status: 200 | 413 | 420 | 483,
                            ..
                        }
                )
            };
            assert!(ok, "{name}: {got:?}\n{}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn counters_follow_decisions() {
        let r = relay();
        let mut out = Vec::new();
        r.handle(&terminal(), invite("").as_bytes(), &mut out);
        r.handle(&terminal(), b"junk", &mut out);
        r.handle(
            &terminal(),
            invite("Max-Forwards: 0\r\n").as_bytes(),
            &mut out,
        );
        let m = r.metrics.messages();
        assert!(
            m.iter().any(|c| c.method == "INVITE"
                && c.status.is_none()
                && c.direction == Direction::ToUpstream
                && c.count == 1),
            "{m:?}"
        );
        assert!(
            m.iter()
                .any(|c| c.status == Some(483) && c.direction == Direction::ToTerminal),
            "{m:?}"
        );
        assert_eq!(
            r.metrics
                .parse_errors
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
