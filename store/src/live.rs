//! A call in progress as the live view shows it: the CDR fields known so far. Call tracking
//! produces it; the API renders it; it lives here because both use the store's types.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cdr::{CallType, Cdr, CdrId, Transport, UnixMs};

/// Where a live call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LiveState {
    Trying,
    Ringing,
    Connected,
    Ended,
}

/// A call as the live view and `/api/calls/live` show it: the CDR fields known so far. Its
/// text is shared (`Arc<str>`) with call tracking's state of the call, since every change of
/// state makes one for the live view and its event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveCall {
    /// The id its CDR will have, so the live view can link to it.
    pub id: CdrId,
    /// `node.name`, so that views over several nodes can tell calls apart.
    pub node: Arc<str>,
    /// The SIP Call-ID, to find the call in SIP logs.
    pub call_id: Arc<str>,
    /// User part of the caller's URI.
    pub caller: Arc<str>,
    /// User part of the called URI.
    pub called: Arc<str>,
    /// The caller's full URI.
    pub caller_uri: Arc<str>,
    /// The called full URI.
    pub called_uri: Arc<str>,
    /// `video` once an offer and its answer both had video.
    pub call_type: CallType,
    /// Where the call stands now.
    pub state: LiveState,
    /// The first INVITE.
    pub start_time: UnixMs,
    /// The first 18x, if any.
    pub ring_time: Option<UnixMs>,
    /// The 2xx, if any.
    pub answer_time: Option<UnixMs>,
    /// When video was negotiated, if it was.
    pub video_started_at: Option<UnixMs>,
    /// How the terminal reached sipedge.
    pub transport: Transport,
    /// `ip:port` of the terminal.
    pub terminal: Arc<str>,
}

impl From<&Cdr> for LiveCall {
    fn from(cdr: &Cdr) -> Self {
        LiveCall {
            id: cdr.id,
            node: cdr.node.as_str().into(),
            call_id: cdr.call_id.as_str().into(),
            caller: cdr.caller.as_str().into(),
            called: cdr.called.as_str().into(),
            caller_uri: cdr.caller_uri.as_str().into(),
            called_uri: cdr.called_uri.as_str().into(),
            call_type: cdr.call_type,
            state: LiveState::Ended,
            start_time: cdr.start_time,
            ring_time: cdr.ring_time,
            answer_time: cdr.answer_time,
            video_started_at: cdr.video_started_at,
            transport: cdr.transport,
            terminal: cdr.terminal.as_str().into(),
        }
    }
}
