//! Call tracking: turns the SIP messages sipedge relays into live-call states and CDRs
//! (SPEC §5).
//!
//! - [`key`]: [`CallKey`], the identity a call is tracked under, and why.
//! - [`sdp`]: audio or video, from SDP bodies.
//! - [`logcap`]: the cap on each call's log, [`logcap::LogCap`].
//! - [`tracker`]: [`Tracker`], the pure state machine: fed [`SipEvent`]s and the time, it
//!   returns [`Output`]s; it does no I/O, so that every rule is tested with tables of
//!   message sequences.
//! - [`task`]: the tokio task that feeds it the relayed messages and sends what it says to
//!   the store, the live view and the SSE channel ([`task::spawn`]).
//!
//! [`SipEvent`] is the tracker's own small, owned view of one message, so that the tracker
//! does not depend on the parser: whoever feeds it fills it.

pub mod key;
pub mod logcap;
pub mod sdp;
pub mod task;
pub mod tracker;

use serde::{Deserialize, Serialize};
use sipedge_store::cdr::{Source, Transport, UnixMs};
use std::borrow::Cow;
use std::net::SocketAddr;

pub use key::CallKey;
pub use task::{
    CallTracking, LiveCalls, LiveEvent, LiveEventKind, TrackingConfig, TrackingCounters,
};
pub use tracker::{
    CallSnapshot, DEFAULT_MAX_CALLS, LiveCall, LiveState, Output, Tracker, TrackerStats,
};

/// One SIP message relayed by sipedge, as much of it as call tracking needs: borrowed from
/// the message, so that tracking copies only what a new call keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipEvent<'a> {
    /// When sipedge received the message: every CDR time comes from here.
    pub at: UnixMs,
    /// Whether the terminal sent this message (rather than the Sipserver or sipedge): only
    /// then do `transport` and `terminal` surely describe the terminal's own hop.
    pub from_terminal: bool,
    /// The transport of the hop the message arrived on; the CDR's `transport` comes from the
    /// first message the terminal sent in the call (the initial INVITE when it called).
    pub transport: Transport,
    /// `ip:port` of the terminal side of the relay (the source when the terminal sent the
    /// message, the destination otherwise); the CDR's `terminal`, like `transport`.
    pub terminal: SocketAddr,
    /// Relayed, captured or mirrored: the CDR's `source`, from the initial INVITE.
    pub source: Source,
    /// Request or response, with what only that kind has.
    pub kind: SipKind<'a>,
    /// The Call-ID header: first half of the [`CallKey`].
    pub call_id: Cow<'a, str>,
    /// The From URI (without display name or angle brackets): the caller on an initial INVITE.
    pub from_uri: Cow<'a, str>,
    /// The From tag: second half of the [`CallKey`] on the caller's messages.
    pub from_tag: Option<Cow<'a, str>>,
    /// The To URI: the called party on an initial INVITE.
    pub to_uri: Cow<'a, str>,
    /// The To tag: absent on an initial INVITE, names the forked branch on responses, and
    /// holds the caller's tag on the callee's requests.
    pub to_tag: Option<Cow<'a, str>>,
    /// The CSeq number: tells retransmissions from new requests and pairs responses with them.
    pub cseq: u32,
    /// The CSeq method: which request a response answers.
    pub cseq_method: Method,
    /// `Some(has video)` when the body is SDP (see [`sdp::sdp_video`]), `None` without SDP.
    pub sdp_video: Option<bool>,
}

/// What differs between a request and a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipKind<'a> {
    Request {
        /// The request-line method.
        method: Method,
        /// The Request-URI: names the called party when the To URI has no user part.
        request_uri: Cow<'a, str>,
    },
    Response {
        /// The status code.
        status: u16,
    },
}

/// The SIP methods call tracking tells apart; every other method is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Update,
    Other,
}

impl Method {
    /// The method named by a request line or a CSeq header (case-sensitive, RFC 3261 §7.1).
    pub fn from_bytes(name: &[u8]) -> Self {
        match name {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"UPDATE" => Method::Update,
            _ => Method::Other,
        }
    }
}

#[cfg(test)]
mod tests;
