//! SIP for sipedge's relay path.
//!
//! Module map:
//! - [`frame`]: stream framing (TCP). [`frame::Framer::frame`] says whether the front of a
//!   connection buffer is a whole message (by Content-Length), a CRLF keep-alive ping/pong, too
//!   large, invalid, or incomplete. Pure, allocation-free.
//! - [`scan`]: zero-copy scanner. [`scan::parse`] indexes one message (a datagram or a frame)
//!   as byte ranges of the input, with compact header names, folded lines and comma-joined
//!   values, and validates what a stateless proxy relies on; [`scan::scan`] +
//!   [`scan::Message::validate`] + [`scan::Message::is_mandatory_complete`] let the proxy choose
//!   between a stateless 400 and a silent drop. Accessors return slices or small `Copy`
//!   structs: method, Request-URI, status, Call-ID, From/To (URI, tag, user), CSeq, Via
//!   (transport, sent-by, branch, rport, received), Max-Forwards, Route/Record-Route/Contact,
//!   Content-Type/-Length, body.
//! - [`rewrite`]: edits on a scanned message (own Via, `received`/`rport`, Max-Forwards,
//!   Record-Route/Path, Route and Via removal, Request-URI) applied in one pass into one
//!   buffer; the body is copied byte for byte and Content-Length left as it is.
//!
//! Errors: [`scan::ScanError`] names the first problem found in a message or a stream.
//!
//! Architecture invariant: `frame`, `scan` and `rewrite` do no I/O and never allocate per
//! header; a message is searched a constant number of times, and no input makes them panic.
//!
//! ```
//! use sipedge_sip::scan::parse;
//!
//! let bytes = b"INVITE sip:bob@example.com SIP/2.0\r\n\
//!     v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport\r\n\
//!     f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\n\
//!     i: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nl: 0\r\n\r\n";
//! let msg = parse(bytes).unwrap();
//! assert_eq!(msg.call_id(), Some(&b"c1"[..]));
//! let out = msg
//!     .rewrite()
//!     .insert_via(b"SIP/2.0/UDP 10.0.0.1:14500;branch=z9hG4bKp")
//!     .set_top_via_received(b"198.51.100.7")
//!     .set_top_via_rport(40000)
//!     .set_max_forwards(69)
//!     .insert_record_route(b"<sip:10.0.0.1:14500;lr>")
//!     .finish();
//! assert_eq!(
//!     out,
//!     b"INVITE sip:bob@example.com SIP/2.0\r\n\
//!     Via: SIP/2.0/UDP 10.0.0.1:14500;branch=z9hG4bKp\r\n\
//!     Record-Route: <sip:10.0.0.1:14500;lr>\r\n\
//!     v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport=40000;received=198.51.100.7\r\n\
//!     f: <sip:alice@example.com>;tag=a\r\nt: <sip:bob@example.com>\r\n\
//!     i: c1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 69\r\nl: 0\r\n\r\n"
//! );
//! ```
#![forbid(unsafe_code)]
// Tests state their expectations with unwrap; the library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod call;
pub mod frame;
pub mod rewrite;
pub mod scan;

// The relay itself (see `proxy` for the map of its parts).
pub mod config;
pub mod error;
pub mod flow;
pub mod limit;
pub mod observe;
pub mod probe;
pub mod proxy;
pub mod relay;
pub mod stun;
mod tcp;
mod udp;

pub use config::{PortRange, ProxyConfig, Upstream};
pub use error::Error;
pub use observe::{Direction, Metrics, Origin, Relayed};
pub use proxy::Proxy;
