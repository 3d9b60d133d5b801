//! The per-call log (SPEC §5): every SIP message of a call, byte for byte, and sipedge's own
//! events about it, in the order they happened.

use std::net::SocketAddr;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cdr::{Transport, UnixMs};

/// Which way a SIP message crossed sipedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// sipedge received it (from the terminal or from the Sipserver).
    Received,
    /// sipedge sent it (relayed, or a response sipedge made itself).
    Sent,
}

/// One line of a call's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// When sipedge saw the message or the event, so the ladder diagram can show gaps.
    pub at: UnixMs,
    /// What happened.
    pub kind: LogKind,
}

/// A SIP message or one of sipedge's own events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum LogKind {
    Sip {
        /// Received or sent, so that with `src`/`dst` the UI can place the arrow.
        direction: Direction,
        /// The transport of this hop, which may differ between the two legs.
        transport: Transport,
        /// The sender's address.
        src: SocketAddr,
        /// The receiver's address.
        dst: SocketAddr,
        /// The message exactly as it crossed the wire (it need not be UTF-8); shared with
        /// the relay's copy, which call tracking received.
        text: Bytes,
    },
    Event {
        /// sipedge's own words, e.g. "upstream unreachable", "483 sent".
        text: String,
    },
}
