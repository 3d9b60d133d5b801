//! The call tracking state machine: SIP messages in, live-call states and CDRs out (SPEC §5).
//!
//! Pure: no I/O, no clock (times come from the events and from [`Tracker::tick`]), so every
//! rule is tested with message sequences. Memory is bounded: text fields are capped, each
//! call keeps a bounded history, and the number of calls is capped ([`Tracker::with_max_calls`]).

use std::collections::{BTreeMap, VecDeque};
use std::hash::RandomState;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sipedge_store::cdr::{
    CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Source, Transport, UnixMs,
};

pub use sipedge_store::live::{LiveCall, LiveState};

use super::key::KeyRef;
use super::logcap::LogUse;
use super::{CallKey, Method, SipEvent, SipKind};

/// RFC 3261 Timer C: a call still ringing with no final response this long after its last
/// provisional response (or its INVITE) is closed as `no_answer` (SPEC §5).
const TIMER_C_MS: i64 = 180_000;

/// 64×T1 (RFC 3261 §9.1): how long after a CANCEL the INVITE's final response can still
/// come; a CANCEL that got no final response by then closes the call as cancelled.
const CANCEL_WAIT_MS: i64 = 32_000;

/// How long an ended call's key is remembered, so that a late retransmission of its INVITE
/// does not start a second record: 64×T1, the longest a retransmission can lag.
const LINGER_MS: i64 = 32_000;

/// Longest Call-ID or tag that is tracked. Real ones are under 100 bytes; a longer one is
/// hostile or broken, and refusing it bounds the memory of a call.
const MAX_ID_LEN: usize = 256;

/// Longest URI kept; longer ones are cut (the call is still recorded).
const MAX_URI_LEN: usize = 512;

/// How many recent requests and responses of a call are remembered to recognise
/// retransmissions: retransmissions follow their original closely.
const SEEN_LEN: usize = 16;

/// How many forked branches' early SDP answers are remembered.
const MAX_BRANCHES: usize = 8;

/// Version of [`CallSnapshot::encode`]'s layout.
const SNAPSHOT_VERSION: u8 = 1;
/// Room for an encoded snapshot: a SIPp call's is about 650 bytes.
const SNAPSHOT_CAPACITY: usize = 1024;

/// Default cap on tracked calls: far above a node's concurrent calls (and 110 new calls a
/// second for all of Timer C), while a flood of INVITEs that fills it costs about 60 MB
/// (measured: 20,000 ringing calls plus as many recently ended keys).
pub const DEFAULT_MAX_CALLS: usize = 20_000;

/// What the tracker tells the rest of sipedge.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// A first INVITE was seen (SSE `call.started`).
    Started(LiveCall),
    /// The first 18x was seen (SSE `call.ringing`).
    Ringing(LiveCall),
    /// The initial INVITE got a 2xx (SSE `call.answered`).
    Answered(LiveCall),
    /// The call is over: store its CDR and drop its call-in-progress entry (SSE `call.ended`,
    /// with the call as the live view shows it last: `LiveCall::from(&cdr)`, sharing the
    /// tracker's text instead of copying the CDR's).
    Ended(Box<Cdr>, LiveCall),
    /// The call's state changed: store it ([`Tracker::call`]) as a call in progress so that
    /// it can be resumed. Only its key travels: when a call changes several times between
    /// two saves, only its state at the save is needed.
    Changed(CallKey),
    /// Something sipedge itself decided about the call, for the call's log.
    Event(CdrId, &'static str),
}

/// Counters for metrics and logs: what the tracker refused or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Ringing calls closed as `no_answer` to make room when the cap was hit.
    pub evicted: u64,
    /// Initial INVITEs not tracked: over-long Call-ID or tag, or the cap hit with every
    /// tracked call connected.
    pub refused: u64,
    /// Messages that belong to no tracked call (BYE without INVITE, stray responses…).
    pub ignored: u64,
}

/// Where the initial INVITE stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
enum Phase {
    /// Sent, no final response yet; Timer C runs.
    Setup,
    /// Got a 401/407 at `at`: waits for a new INVITE with a higher CSeq, or Timer C.
    Challenged { code: u16, at: UnixMs },
    /// The caller sent a CANCEL at `at`: waits for the INVITE's final response, which may
    /// still be a 2xx that crossed the CANCEL.
    Cancelling { at: UnixMs },
    /// Got a 2xx with status `code`: waits for a BYE, or `call_timeout`.
    Connected { code: u16 },
}

/// An SDP offer waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Offer {
    /// CSeq of the transaction that carries it, to pair the answer with it.
    cseq: u32,
    /// Method of that transaction (INVITE or UPDATE).
    method: Method,
    /// Offer in the request (answer in its 2xx) or in a 2xx (late offer, answer in the ACK).
    in_request: bool,
    /// Whether the caller made the offer: the answer comes from the other side.
    by_caller: bool,
    /// Whether the offer has video.
    video: bool,
}

/// The SDP answer a forked branch gave in a provisional response (RFC 3262), kept until we
/// know which branch answers the call: only that branch's media counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EarlyAnswer {
    /// The branch's To-tag.
    to_tag: String,
    /// Whether the answer has video.
    video: bool,
    /// When it was seen: `video_started_at` if this branch answers with video.
    at: UnixMs,
}

/// A request already seen; the same again is a retransmission. Each side numbers its own
/// requests (RFC 3261 §12.2.1.1), so the side is part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeenRequest {
    /// Which side sent it.
    by_caller: bool,
    /// Its CSeq number.
    cseq: u32,
    /// Its method: an ACK or CANCEL shares the INVITE's CSeq number.
    method: Method,
}

/// A response already seen; the same again is a retransmission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct SeenResponse {
    /// Which side sent the request it answers.
    request_by_caller: bool,
    /// CSeq number of that request.
    cseq: u32,
    /// Method of that request.
    method: Method,
    /// The status code.
    status: u16,
    /// Hash of the To-tag: forked branches send the same status with different tags. A hash
    /// keeps this history small whatever the tags' length.
    to_tag: u64,
}

/// Everything known about one call in progress. It is serialisable so that the store keeps
/// calls in progress and [`Tracker::resume`] continues them after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallSnapshot {
    /// The CDR id, fixed at the first INVITE.
    id: CdrId,
    /// Identity of the call among the messages.
    key: CallKey,
    /// CDR `caller`.
    caller: Arc<str>,
    /// CDR `called`.
    called: Arc<str>,
    /// CDR `caller_uri`.
    caller_uri: Arc<str>,
    /// CDR `called_uri`.
    called_uri: Arc<str>,
    /// CDR `transport`, from the first INVITE.
    transport: Transport,
    /// CDR `terminal`, from the first INVITE.
    terminal: Arc<str>,
    /// Whether `transport` and `terminal` come from a message the terminal sent. When the
    /// Sipserver calls the terminal, the INVITE arrives on the upstream hop; the terminal's
    /// first response then tells how the terminal talks to sipedge.
    terminal_heard: bool,
    /// CDR `source`; absent from the snapshots of a build before it, all of relayed calls.
    #[serde(default)]
    source: Source,
    /// CDR `start_time`.
    start_time: UnixMs,
    /// CDR `ring_time`.
    ring_time: Option<UnixMs>,
    /// CDR `answer_time`.
    answer_time: Option<UnixMs>,
    /// CDR `video_started_at`; `call_type` is video exactly when it is set.
    video_started_at: Option<UnixMs>,
    /// Where the initial INVITE stands.
    phase: Phase,
    /// CSeq of the current initial INVITE: raised by a new INVITE after a challenge.
    invite_cseq: u32,
    /// Start of Timer C: the INVITE, then each provisional response.
    timer_c_from: UnixMs,
    /// The 2xx, then each session refresh (re-INVITE, UPDATE): start of `call_timeout`.
    last_refresh: UnixMs,
    /// The SDP offer waiting for its answer, if any.
    offer: Option<Offer>,
    /// Early answers of forked branches, until one branch answers.
    early: Vec<EarlyAnswer>,
    /// Recent requests, to recognise retransmissions.
    seen_requests: VecDeque<SeenRequest>,
    /// Recent responses, to recognise retransmissions.
    seen_responses: VecDeque<SeenResponse>,
    /// What the call's log holds so far, against `sip.max_log_*_per_call` (absent in calls
    /// saved before the cap existed: they start from nothing).
    #[serde(default)]
    log: LogUse,
    /// Position in the tracker's indexes; reassigned on resume.
    #[serde(skip)]
    seq: u64,
}

impl CallSnapshot {
    /// The CDR id the call will have: the store keeps calls in progress under it.
    pub fn id(&self) -> CdrId {
        self.id
    }

    /// The bytes the store keeps for a call in progress: a version byte, then JSON (small
    /// next to the call's log, and readable when debugging a resume).
    pub fn encode(&self) -> Vec<u8> {
        // Sized for a typical call, so that serialising does not grow the buffer step by step.
        let mut out = Vec::with_capacity(SNAPSHOT_CAPACITY);
        out.push(SNAPSHOT_VERSION);
        // Serialising plain fields and enums into a Vec cannot fail.
        if serde_json::to_writer(&mut out, self).is_err() {
            out.truncate(1);
        }
        out
    }

    /// Reads what [`CallSnapshot::encode`] wrote; `None` for another version or damage.
    pub fn decode(bytes: &[u8]) -> Option<CallSnapshot> {
        match bytes.split_first() {
            Some((&SNAPSHOT_VERSION, json)) => serde_json::from_slice(json).ok(),
            _ => None,
        }
    }

    fn connected(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. })
    }

    /// When the call closes by itself if nothing else happens.
    fn deadline(&self, call_timeout_ms: i64) -> UnixMs {
        let (from, wait) = match self.phase {
            Phase::Setup => (self.timer_c_from, TIMER_C_MS),
            Phase::Challenged { at, .. } => (at, TIMER_C_MS),
            Phase::Cancelling { at } => (at, CANCEL_WAIT_MS),
            Phase::Connected { .. } => (self.last_refresh, call_timeout_ms),
        };
        UnixMs(from.0.saturating_add(wait))
    }

    /// Why the call ended when its deadline passed, for its log.
    fn expiry_reason(&self) -> &'static str {
        match self.phase {
            Phase::Setup => "no final response within Timer C (3 min): closed as no_answer",
            Phase::Challenged { .. } => {
                "no new INVITE within Timer C (3 min) after the challenge: closed as failed"
            }
            Phase::Cancelling { .. } => {
                "no final response within 32 s of the CANCEL: closed as cancelled"
            }
            Phase::Connected { .. } => "no BYE within sip.call_timeout: closed as timeout",
        }
    }

    /// How the call ends when its deadline passes.
    fn expiry(&self, deadline: UnixMs) -> Ending {
        match self.phase {
            Phase::Setup => Ending::new(Disposition::NoAnswer, EndedBy::Sipedge, None, deadline),
            Phase::Challenged { code, at } => {
                Ending::new(Disposition::Failed, EndedBy::Callee, Some(code), at)
            }
            Phase::Cancelling { at } => {
                Ending::new(Disposition::Cancelled, EndedBy::Caller, None, at)
            }
            Phase::Connected { code } => {
                Ending::new(Disposition::Timeout, EndedBy::Sipedge, Some(code), deadline)
            }
        }
    }

    /// The call as the live view shows it.
    pub fn live(&self, node: &Arc<str>) -> LiveCall {
        let state = if self.connected() {
            LiveState::Connected
        } else if self.ring_time.is_some() {
            LiveState::Ringing
        } else {
            LiveState::Trying
        };
        LiveCall {
            id: self.id,
            node: Arc::clone(node),
            call_id: Arc::clone(&self.key.call_id),
            caller: Arc::clone(&self.caller),
            called: Arc::clone(&self.called),
            caller_uri: Arc::clone(&self.caller_uri),
            called_uri: Arc::clone(&self.called_uri),
            call_type: self.call_type(),
            state,
            start_time: self.start_time,
            ring_time: self.ring_time,
            answer_time: self.answer_time,
            video_started_at: self.video_started_at,
            transport: self.transport,
            terminal: Arc::clone(&self.terminal),
        }
    }

    fn call_type(&self) -> CallType {
        if self.video_started_at.is_some() {
            CallType::Video
        } else {
            CallType::Audio
        }
    }

    fn cdr(&self, node: &str, end: Ending) -> Cdr {
        let connected = self.connected();
        Cdr {
            id: self.id,
            node: node.to_owned(),
            call_id: self.key.call_id.to_string(),
            caller: self.caller.to_string(),
            called: self.called.to_string(),
            caller_uri: self.caller_uri.to_string(),
            called_uri: self.called_uri.to_string(),
            call_type: self.call_type(),
            video_started_at: self.video_started_at,
            status: if connected {
                CallStatus::Connected
            } else {
                CallStatus::NotConnected
            },
            disposition: end.disposition,
            sip_code: end.sip_code,
            ended_by: end.ended_by,
            start_time: self.start_time,
            ring_time: self.ring_time,
            answer_time: self.answer_time,
            end_time: end.at,
            transport: self.transport,
            terminal: self.terminal.to_string(),
            source: self.source,
        }
    }

    fn mark_video(&mut self, at: UnixMs) {
        // The first time counts: a re-INVITE that removes video later leaves the call video.
        if self.video_started_at.is_none() {
            self.video_started_at = Some(at);
        }
    }

    fn on_request(&mut self, by_caller: bool, method: Method, ev: &SipEvent) -> Effect {
        let seen = SeenRequest {
            by_caller,
            cseq: ev.cseq,
            method,
        };
        if self.seen_requests.contains(&seen) {
            return Effect::default();
        }
        push_bounded(&mut self.seen_requests, seen);
        let in_dialog = ev.to_tag.is_some();
        match method {
            Method::Invite if !in_dialog => self.on_new_invite(ev),
            Method::Invite | Method::Update => {
                let mut effect = Effect::default();
                if self.connected() {
                    // A session refresh (RFC 4028) proves the call is alive.
                    self.last_refresh = ev.at;
                    effect.changed = true;
                }
                if let Some(video) = ev.sdp_video {
                    self.offer = Some(Offer {
                        cseq: ev.cseq,
                        method,
                        in_request: true,
                        by_caller,
                        video,
                    });
                    effect.changed = true;
                }
                effect
            }
            Method::Ack => self.on_ack(by_caller, ev),
            Method::Bye => self.on_bye(by_caller, in_dialog, ev.at),
            Method::Cancel => {
                if by_caller && self.phase == Phase::Setup && ev.cseq == self.invite_cseq {
                    self.phase = Phase::Cancelling { at: ev.at };
                    Effect::changed()
                } else {
                    // A CANCEL after the final response (it crossed a 2xx) does nothing.
                    Effect::default()
                }
            }
            Method::Other => Effect::default(),
        }
    }

    /// A new out-of-dialog INVITE with the call's key: the retry after a 401/407 challenge.
    fn on_new_invite(&mut self, ev: &SipEvent) -> Effect {
        let retry = matches!(self.phase, Phase::Setup | Phase::Challenged { .. })
            && ev.cseq > self.invite_cseq;
        if !retry {
            return Effect::default();
        }
        self.invite_cseq = ev.cseq;
        self.phase = Phase::Setup;
        self.timer_c_from = ev.at;
        self.early.clear();
        self.offer = ev.sdp_video.map(|video| Offer {
            cseq: ev.cseq,
            method: Method::Invite,
            in_request: true,
            by_caller: true,
            video,
        });
        Effect::changed()
    }

    /// An ACK carries the answer to a late offer made in a 2xx.
    fn on_ack(&mut self, by_caller: bool, ev: &SipEvent) -> Effect {
        let (Some(offer), Some(video)) = (self.offer, ev.sdp_video) else {
            return Effect::default();
        };
        if offer.in_request || offer.cseq != ev.cseq || offer.by_caller == by_caller {
            return Effect::default();
        }
        if offer.video && video {
            self.mark_video(ev.at);
        }
        self.offer = None;
        Effect::changed()
    }

    fn on_bye(&mut self, by_caller: bool, in_dialog: bool, at: UnixMs) -> Effect {
        let ended_by = if by_caller {
            EndedBy::Caller
        } else {
            EndedBy::Callee
        };
        match self.phase {
            Phase::Connected { code } => {
                Effect::ended(Disposition::Answered, ended_by, Some(code), at)
            }
            // RFC 3261 §15 lets the caller end an early dialog with a BYE: it abandons the
            // call like a CANCEL. The callee may not, but if it does the call failed.
            Phase::Setup | Phase::Cancelling { .. } if in_dialog => {
                let disposition = if by_caller {
                    Disposition::Cancelled
                } else {
                    Disposition::Failed
                };
                Effect::ended(disposition, ended_by, None, at)
            }
            _ => Effect::default(),
        }
    }

    fn on_response(&mut self, request_by_caller: bool, status: u16, ev: &SipEvent) -> Effect {
        let to_tag = ev.to_tag.as_deref().unwrap_or_default().to_owned();
        let initial =
            request_by_caller && ev.cseq_method == Method::Invite && ev.cseq == self.invite_cseq;
        let seen = SeenResponse {
            request_by_caller,
            cseq: ev.cseq,
            method: ev.cseq_method,
            status,
            to_tag: stable_hash(&to_tag),
        };
        if self.seen_responses.contains(&seen) {
            // RFC 3261 §13.3.1.1: a callee still ringing repeats its 18x every minute so that
            // Timer C does not fire; the repeat restarts Timer C but changes no CDR time.
            if initial && self.phase == Phase::Setup && status > 100 && status < 200 {
                self.timer_c_from = self.timer_c_from.max(ev.at);
                return Effect::changed();
            }
            return Effect::default();
        }
        push_bounded(&mut self.seen_responses, seen);
        if initial {
            if self.connected() {
                // Another branch's 2xx, or a late answer to the initial INVITE: the first
                // answered branch won.
                return Effect::default();
            }
            return self.on_initial_response(status, to_tag, ev);
        }
        self.on_dialog_response(request_by_caller, status, ev)
    }

    fn on_initial_response(&mut self, status: u16, to_tag: String, ev: &SipEvent) -> Effect {
        let at = ev.at;
        match status {
            100 => Effect::default(),
            101..=199 => {
                let mut effect = Effect::default();
                if self.phase == Phase::Setup {
                    self.timer_c_from = self.timer_c_from.max(at);
                    effect.changed = true;
                }
                if (180..=189).contains(&status) && self.ring_time.is_none() {
                    self.ring_time = Some(at);
                    effect.changed = true;
                    effect.ringing = true;
                }
                if let (Some(video), Some(offer)) = (ev.sdp_video, self.initial_offer())
                    && offer.in_request
                    && self.early.len() < MAX_BRANCHES
                    && !self.early.iter().any(|e| e.to_tag == to_tag)
                {
                    self.early.push(EarlyAnswer { to_tag, video, at });
                    effect.changed = true;
                }
                effect
            }
            200..=299 => {
                self.phase = Phase::Connected { code: status };
                self.answer_time = Some(at);
                self.last_refresh = at;
                match self.initial_offer() {
                    Some(offer) if offer.in_request => {
                        // The answered branch's answer: an early one (RFC 3262) or this 2xx's.
                        let early = self.early.iter().find(|e| e.to_tag == to_tag);
                        let answer = match (early, ev.sdp_video) {
                            (Some(e), _) => Some((e.video, e.at)),
                            (None, Some(video)) => Some((video, at)),
                            (None, None) => None,
                        };
                        if let Some((video, answer_at)) = answer {
                            if offer.video && video {
                                self.mark_video(answer_at);
                            }
                            self.offer = None;
                        }
                    }
                    _ => {
                        if let Some(video) = ev.sdp_video {
                            self.offer = Some(Offer {
                                cseq: ev.cseq,
                                method: Method::Invite,
                                in_request: false,
                                by_caller: false,
                                video,
                            });
                        }
                    }
                }
                self.early.clear();
                Effect {
                    changed: true,
                    answered: true,
                    ..Effect::default()
                }
            }
            _ => match self.phase {
                Phase::Cancelling { at: cancel_at } if matches!(status, 401 | 407 | 487) => {
                    Effect::ended(
                        Disposition::Cancelled,
                        EndedBy::Caller,
                        Some(status),
                        cancel_at,
                    )
                }
                Phase::Setup if matches!(status, 401 | 407) => {
                    self.phase = Phase::Challenged { code: status, at };
                    Effect::changed()
                }
                _ => Effect::ended(disposition_of(status), EndedBy::Callee, Some(status), at),
            },
        }
    }

    /// The offer of the current initial INVITE, if it is still waiting for its answer.
    fn initial_offer(&self) -> Option<Offer> {
        self.offer
            .filter(|o| o.method == Method::Invite && o.cseq == self.invite_cseq && o.by_caller)
    }

    /// Responses inside the dialog: answers to re-INVITE / UPDATE offers, or late offers.
    fn on_dialog_response(
        &mut self,
        request_by_caller: bool,
        status: u16,
        ev: &SipEvent,
    ) -> Effect {
        let success = (200..300).contains(&status);
        match self.offer {
            Some(offer)
                if offer.in_request
                    && offer.cseq == ev.cseq
                    && offer.method == ev.cseq_method
                    && offer.by_caller == request_by_caller =>
            {
                if success && let Some(video) = ev.sdp_video {
                    if offer.video && video {
                        self.mark_video(ev.at);
                    }
                    self.offer = None;
                    Effect::changed()
                } else if status >= 300 {
                    // A rejected offer (488…) leaves the media as they were.
                    self.offer = None;
                    Effect::changed()
                } else {
                    Effect::default()
                }
            }
            None if success && self.connected() && ev.cseq_method == Method::Invite => {
                // A re-INVITE without SDP: its 2xx makes the offer, the ACK answers.
                match ev.sdp_video {
                    Some(video) => {
                        self.offer = Some(Offer {
                            cseq: ev.cseq,
                            method: Method::Invite,
                            in_request: false,
                            by_caller: !request_by_caller,
                            video,
                        });
                        Effect::changed()
                    }
                    None => Effect::default(),
                }
            }
            _ => Effect::default(),
        }
    }
}

/// SPEC §5's disposition of a final error response to the initial INVITE.
fn disposition_of(status: u16) -> Disposition {
    match status {
        486 | 600 => Disposition::Busy,
        603 => Disposition::Declined,
        408 | 480 => Disposition::NoAnswer,
        487 => Disposition::Cancelled,
        _ => Disposition::Failed,
    }
}

/// How a call ends: the CDR fields only the end decides.
#[derive(Debug, Clone, Copy)]
struct Ending {
    /// CDR `disposition`.
    disposition: Disposition,
    /// CDR `ended_by`.
    ended_by: EndedBy,
    /// CDR `sip_code`.
    sip_code: Option<u16>,
    /// CDR `end_time`.
    at: UnixMs,
}

impl Ending {
    fn new(disposition: Disposition, ended_by: EndedBy, sip_code: Option<u16>, at: UnixMs) -> Self {
        Ending {
            disposition,
            ended_by,
            sip_code,
            at,
        }
    }
}

/// What one message did to a call, turned into [`Output`]s by the tracker.
#[derive(Debug, Default)]
struct Effect {
    /// The snapshot changed: the store must save it.
    changed: bool,
    /// The first 18x: `call.ringing`.
    ringing: bool,
    /// The 2xx to the initial INVITE: `call.answered`.
    answered: bool,
    /// The call is over.
    ended: Option<Ending>,
}

impl Effect {
    fn changed() -> Self {
        Effect {
            changed: true,
            ..Effect::default()
        }
    }

    fn ended(d: Disposition, by: EndedBy, code: Option<u16>, at: UnixMs) -> Self {
        Effect {
            ended: Some(Ending::new(d, by, code, at)),
            ..Effect::default()
        }
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= SEEN_LEN {
        list.pop_front();
    }
    list.push_back(item);
}

/// FNV-1a: stable across builds, unlike std's hashers, since snapshots outlive a restart.
fn stable_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `s` cut to at most `max` bytes on a character boundary.
fn bounded(s: &str, max: usize) -> Arc<str> {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().into()
}

/// The user part of a SIP or tel URI, `None` when it has none (`sip:host`).
fn user_part(uri: &str) -> Option<&str> {
    let uri = uri.trim();
    let uri = match uri.split_once('<') {
        Some((_, inner)) => inner.split_once('>').map_or(inner, |(u, _)| u),
        None => uri,
    };
    let (scheme, rest) = uri.split_once(':')?;
    let user = if scheme.eq_ignore_ascii_case("tel") {
        rest
    } else {
        rest.split_once('@')?.0
    };
    let user = user.split(';').next().unwrap_or_default();
    (!user.is_empty()).then_some(user)
}

/// An ended call, remembered for [`LINGER_MS`].
#[derive(Debug, Clone, Copy)]
struct Recent {
    /// Its CDR id, for [`Tracker::log_of`].
    id: CdrId,
    /// What its log holds: the messages after its end (the 200 to the BYE) are capped too.
    log: LogUse,
    /// CSeq of its last INVITE: only a higher one starts a new call under the same key.
    invite_cseq: u32,
    /// When it is forgotten.
    until: UnixMs,
}

/// Calls by key, looked up with a [`KeyRef`] borrowed from the message. SipHash, as in std:
/// terminals choose the Call-IDs.
type ByKey<V> = hashbrown::HashMap<CallKey, V, RandomState>;

/// The call tracking state machine. Feed it every relayed message with [`Tracker::on_event`]
/// and the time every second with [`Tracker::tick`]; act on the [`Output`]s it returns.
#[derive(Debug)]
pub struct Tracker {
    /// `node.name`, written into every CDR and part of its id.
    node: Arc<str>,
    /// `sip.call_timeout` in milliseconds: a connected call with no BYE closes after it.
    call_timeout_ms: i64,
    /// Cap on tracked calls, so that a flood of INVITEs cannot grow memory without limit.
    max_calls: usize,
    /// Calls in progress.
    calls: ByKey<CallSnapshot>,
    /// Every call by (deadline, seq): what [`Tracker::tick`] closes next.
    timers: BTreeMap<(UnixMs, u64), CallKey>,
    /// Calls not connected by (start, seq): who is evicted first when the cap is hit.
    unanswered: BTreeMap<(UnixMs, u64), CallKey>,
    /// Recently ended calls: a late INVITE retransmission must not start a second record,
    /// and the messages that follow the end (the 200 to the BYE, the ACK of a 486) still
    /// belong to the call's log.
    recent: ByKey<Recent>,
    /// `recent` in the order it expires.
    recent_order: VecDeque<(UnixMs, CallKey)>,
    /// Next index position to hand out.
    next_seq: u64,
    /// Counters of what was refused or dropped.
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(node: impl Into<String>, call_timeout: Duration) -> Self {
        Tracker {
            node: Arc::from(node.into()),
            call_timeout_ms: i64::try_from(call_timeout.as_millis()).unwrap_or(i64::MAX),
            max_calls: DEFAULT_MAX_CALLS,
            calls: ByKey::default(),
            timers: BTreeMap::new(),
            unanswered: BTreeMap::new(),
            recent: ByKey::default(),
            recent_order: VecDeque::new(),
            next_seq: 0,
            stats: TrackerStats::default(),
        }
    }

    /// Caps the number of tracked calls (at least 1).
    pub fn with_max_calls(mut self, max_calls: usize) -> Self {
        self.max_calls = max_calls.max(1);
        self
    }

    /// Continues calls saved before a restart; the next [`Tracker::tick`] closes those whose
    /// deadline passed meanwhile, with the times they would have had.
    pub fn resume(&mut self, snapshots: impl IntoIterator<Item = CallSnapshot>) {
        for mut call in snapshots {
            let key = call.key.clone();
            self.take(key.as_ref());
            call.seq = self.bump_seq();
            self.put(call);
        }
    }

    /// Calls in progress.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    pub fn stats(&self) -> TrackerStats {
        self.stats
    }

    /// The call in progress under `key` (see [`Output::Changed`]).
    pub fn call(&self, key: &CallKey) -> Option<&CallSnapshot> {
        self.calls.get(key)
    }

    /// Every call in progress, as the live view shows it.
    pub fn live_calls(&self) -> impl Iterator<Item = LiveCall> + '_ {
        self.calls.values().map(|c| c.live(&self.node))
    }

    /// The call a message belongs to, in progress or ended less than 64×T1 ago (where its
    /// log entry goes), with what the call's log holds so far, for the caller to check
    /// against the log cap and update. Call it after [`Tracker::on_event`], so that a first
    /// INVITE has its call.
    pub fn log_of(&mut self, ev: &SipEvent) -> Option<(CdrId, &mut LogUse)> {
        let from_tag = ev.from_tag.as_deref().unwrap_or_default();
        let tags = std::iter::once(from_tag).chain(ev.to_tag.as_deref());
        let key = tags
            .map(|from_tag| KeyRef {
                call_id: &ev.call_id,
                from_tag,
            })
            .find(|key| self.calls.contains_key(key) || self.recent.contains_key(key))?;
        if let Some(call) = self.calls.get_mut(&key) {
            return Some((call.id, &mut call.log));
        }
        self.recent.get_mut(&key).map(|r| (r.id, &mut r.log))
    }

    /// Takes one relayed message into account.
    pub fn on_event(&mut self, ev: &SipEvent) -> Vec<Output> {
        let mut out = Vec::new();
        self.on_event_into(ev, &mut out);
        out
    }

    /// [`Tracker::on_event`], appending to `out`: the live task reuses one buffer rather
    /// than allocate one for most messages.
    pub fn on_event_into(&mut self, ev: &SipEvent, out: &mut Vec<Output>) {
        let from_tag = ev.from_tag.as_deref().unwrap_or_default();
        let to_tag = ev.to_tag.as_deref();
        let sane = !ev.call_id.is_empty()
            && ev.call_id.len() <= MAX_ID_LEN
            && from_tag.len() <= MAX_ID_LEN
            && to_tag.map_or(0, str::len) <= MAX_ID_LEN;
        let initial_invite = matches!(
            ev.kind,
            SipKind::Request {
                method: Method::Invite,
                ..
            }
        ) && to_tag.is_none();
        if !sane {
            if initial_invite {
                self.stats.refused += 1;
            } else {
                self.stats.ignored += 1;
            }
            return;
        }
        let by_from = KeyRef {
            call_id: &ev.call_id,
            from_tag,
        };
        // Updated in place: most messages change neither the call's timer nor whether it is
        // answered, so its index entries stay as they are.
        let by_to = to_tag.map(|tag| KeyRef {
            call_id: &ev.call_id,
            from_tag: tag,
        });
        let found = if self.calls.contains_key(&by_from) {
            Some((by_from, true))
        } else {
            by_to
                .filter(|key| self.calls.contains_key(key))
                .map(|key| (key, false))
        };
        let Some((key, by_caller)) = found else {
            if initial_invite {
                self.start(by_from, ev, out);
            } else {
                self.stats.ignored += 1;
            }
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let timer = (call.deadline(self.call_timeout_ms), call.seq);
        let was_connected = call.connected();
        let mut effect = match &ev.kind {
            SipKind::Request { method, .. } if *method == ev.cseq_method => {
                call.on_request(by_caller, *method, ev)
            }
            SipKind::Response { status } if (100..700).contains(status) => {
                call.on_response(by_caller, *status, ev)
            }
            _ => {
                self.stats.ignored += 1;
                Effect::default()
            }
        };
        if ev.from_terminal && !call.terminal_heard {
            call.transport = ev.transport;
            call.terminal = ev.terminal.to_string().into();
            call.terminal_heard = true;
            effect.changed = true;
        }
        if let Some(end) = effect.ended {
            let Some(call) = self.calls.remove(&key) else {
                return;
            };
            self.timers.remove(&timer);
            if !was_connected {
                self.unanswered.remove(&(call.start_time, call.seq));
            }
            self.close(call, end, ev.at, out);
            return;
        }
        if effect.ringing {
            out.push(Output::Ringing(call.live(&self.node)));
        }
        if effect.answered {
            out.push(Output::Answered(call.live(&self.node)));
        }
        if effect.changed {
            out.push(Output::Changed(call.key.clone()));
        }
        let moved = (call.deadline(self.call_timeout_ms), call.seq);
        if moved != timer {
            self.timers.remove(&timer);
            self.timers.insert(moved, call.key.clone());
        }
        if call.connected() != was_connected {
            let entry = (call.start_time, call.seq);
            if call.connected() {
                self.unanswered.remove(&entry);
            } else {
                self.unanswered.insert(entry, call.key.clone());
            }
        }
    }

    /// Closes the calls whose timers (Timer C, CANCEL wait, `call_timeout`) ran out by `now`.
    pub fn tick(&mut self, now: UnixMs) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some((&(deadline, seq), key)) = self.timers.first_key_value() {
            if deadline > now {
                break;
            }
            let key = key.clone();
            match self.take(key.as_ref()) {
                Some(call) => {
                    let end = call.expiry(deadline);
                    out.push(Output::Event(call.id, call.expiry_reason()));
                    self.close(call, end, now, &mut out);
                }
                // Unreachable while `put`/`take` keep the indexes in step; never loop on it.
                None => {
                    self.timers.remove(&(deadline, seq));
                }
            }
        }
        while let Some((until, _)) = self.recent_order.front() {
            if *until > now {
                break;
            }
            self.forget_oldest_recent();
        }
        out
    }

    fn start(&mut self, key: KeyRef, ev: &SipEvent, out: &mut Vec<Output>) {
        if let Some(recent) = self.recent.get(&key)
            && ev.cseq <= recent.invite_cseq
        {
            // A late retransmission of an ended call's INVITE.
            self.stats.ignored += 1;
            return;
        }
        let SipKind::Request { request_uri, .. } = &ev.kind else {
            return;
        };
        if self.calls.len() >= self.max_calls && !self.evict_oldest_unanswered(ev.at, out) {
            self.stats.refused += 1;
            return;
        }
        let (called, called_uri) = match user_part(&ev.to_uri) {
            Some(user) => (user, &*ev.to_uri),
            None => (user_part(request_uri).unwrap_or_default(), &**request_uri),
        };
        let mut seen_requests = VecDeque::new();
        seen_requests.push_back(SeenRequest {
            by_caller: true,
            cseq: ev.cseq,
            method: Method::Invite,
        });
        let mut id = CdrId::new(ev.at, &self.node, key.call_id);
        if self.recent.get(&key).is_some_and(|r| r.id == id) {
            // The same call started again within the millisecond its predecessor ended in:
            // the same id would overwrite that call's record.
            id = CdrId::new_salted(ev.at, &self.node, key.call_id, ev.cseq);
        }
        let call = CallSnapshot {
            id,
            caller: bounded(user_part(&ev.from_uri).unwrap_or_default(), MAX_URI_LEN),
            called: bounded(called, MAX_URI_LEN),
            caller_uri: bounded(&ev.from_uri, MAX_URI_LEN),
            called_uri: bounded(called_uri, MAX_URI_LEN),
            transport: ev.transport,
            terminal: ev.terminal.to_string().into(),
            terminal_heard: ev.from_terminal,
            source: ev.source,
            start_time: ev.at,
            ring_time: None,
            answer_time: None,
            video_started_at: None,
            phase: Phase::Setup,
            invite_cseq: ev.cseq,
            timer_c_from: ev.at,
            last_refresh: ev.at,
            offer: ev.sdp_video.map(|video| Offer {
                cseq: ev.cseq,
                method: Method::Invite,
                in_request: true,
                by_caller: true,
                video,
            }),
            early: Vec::new(),
            seen_requests,
            seen_responses: VecDeque::new(),
            log: LogUse::default(),
            seq: self.bump_seq(),
            key: CallKey::new(key.call_id, key.from_tag),
        };
        out.push(Output::Started(call.live(&self.node)));
        out.push(Output::Changed(call.key.clone()));
        self.put(call);
    }

    /// Makes room for a new call by closing the oldest call not connected; false when every
    /// tracked call is connected (those are never dropped to make room).
    fn evict_oldest_unanswered(&mut self, now: UnixMs, out: &mut Vec<Output>) -> bool {
        let Some(key) = self.unanswered.first_key_value().map(|(_, k)| k.clone()) else {
            return false;
        };
        let Some(call) = self.take(key.as_ref()) else {
            return false;
        };
        self.stats.evicted += 1;
        out.push(Output::Event(
            call.id,
            "call table full: closed as no_answer to make room for a new call",
        ));
        let end = Ending::new(Disposition::NoAnswer, EndedBy::Sipedge, None, now);
        self.close(call, end, now, out);
        true
    }

    fn close(&mut self, call: CallSnapshot, end: Ending, now: UnixMs, out: &mut Vec<Output>) {
        let live = LiveCall {
            state: LiveState::Ended,
            ..call.live(&self.node)
        };
        out.push(Output::Ended(Box::new(call.cdr(&self.node, end)), live));
        let until = UnixMs(now.0.saturating_add(LINGER_MS));
        let recent = Recent {
            id: call.id,
            log: call.log,
            invite_cseq: call.invite_cseq,
            until,
        };
        self.recent.insert(call.key.clone(), recent);
        self.recent_order.push_back((until, call.key));
        while self.recent_order.len() > self.max_calls {
            self.forget_oldest_recent();
        }
    }

    fn forget_oldest_recent(&mut self) {
        if let Some((until, key)) = self.recent_order.pop_front()
            && self.recent.get(&key).is_some_and(|r| r.until == until)
        {
            self.recent.remove(&key);
        }
    }

    fn bump_seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Adds a call and its index entries.
    fn put(&mut self, call: CallSnapshot) {
        let deadline = call.deadline(self.call_timeout_ms);
        self.timers.insert((deadline, call.seq), call.key.clone());
        if !call.connected() {
            self.unanswered
                .insert((call.start_time, call.seq), call.key.clone());
        }
        self.calls.insert(call.key.clone(), call);
    }

    /// Panics unless every call has exactly its current timer and, while not connected, its
    /// eviction entry: what `put` and `take` must keep true.
    #[cfg(test)]
    pub(crate) fn assert_indexes_agree(&self) {
        let mut timers: Vec<_> = self.timers.iter().map(|(at, k)| (*at, k.clone())).collect();
        let mut expected: Vec<_> = self
            .calls
            .iter()
            .map(|(k, c)| ((c.deadline(self.call_timeout_ms), c.seq), k.clone()))
            .collect();
        timers.sort();
        expected.sort();
        assert_eq!(timers, expected, "timers out of step with the calls");
        let mut unanswered: Vec<_> = self.unanswered.values().cloned().collect();
        let mut expected: Vec<_> = self
            .calls
            .iter()
            .filter(|(_, c)| !c.connected())
            .map(|(k, _)| k.clone())
            .collect();
        unanswered.sort();
        expected.sort();
        assert_eq!(
            unanswered, expected,
            "unanswered out of step with the calls"
        );
    }

    /// Removes a call and its index entries; the caller puts it back if it goes on.
    fn take(&mut self, key: KeyRef) -> Option<CallSnapshot> {
        let call = self.calls.remove(&key)?;
        self.timers
            .remove(&(call.deadline(self.call_timeout_ms), call.seq));
        self.unanswered.remove(&(call.start_time, call.seq));
        Some(call)
    }
}
