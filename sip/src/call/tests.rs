//! Call tracking, tested with realistic message sequences (RFC 3665 call flows, forks,
//! challenges, retransmissions, hostile input) through one `check` helper that compares
//! every CDR field.

use std::time::Duration;

use sipedge_store::cdr::{
    CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Source, Transport, UnixMs,
};

use super::*;

const T0: i64 = 1_700_000_000_000;
const NODE: &str = "sh-01";
const CALL_ID: &str = "a84b4c76e66710@203.0.113.7";
const CALLER_URI: &str = "sip:1001@bank.example";
const CALLEE_URI: &str = "sip:2002@bank.example";
const CALLER_TAG: &str = "1928301774";
const TERMINAL: &str = "203.0.113.7:5060";
const CALL_TIMEOUT_S: i64 = 4 * 3600;

/// `s` seconds after the start of every test call.
fn ms(s: f64) -> UnixMs {
    UnixMs(T0 + (s * 1000.0).round() as i64)
}

#[derive(Clone, Copy)]
enum Sdp {
    None,
    Audio,
    Video,
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Caller,
    Callee,
}

/// The caller's initial INVITE, CSeq 1, no SDP.
fn invite(t: f64) -> SipEvent<'static> {
    SipEvent {
        at: ms(t),
        from_terminal: true,
        transport: Transport::Udp,
        source: Source::Proxy,
        terminal: TERMINAL.parse().unwrap(),
        kind: SipKind::Request {
            method: Method::Invite,
            request_uri: CALLEE_URI.into(),
        },
        call_id: CALL_ID.into(),
        from_uri: CALLER_URI.into(),
        from_tag: Some(CALLER_TAG.into()),
        to_uri: CALLEE_URI.into(),
        to_tag: None,
        cseq: 1,
        cseq_method: Method::Invite,
        sdp_video: None,
    }
}

/// An in-dialog request from `side` on branch `b1`: CSeq 2 from the caller, 1 from the callee.
fn req(t: f64, method: Method, side: Side) -> SipEvent<'static> {
    let base = invite(t);
    let (from_uri, from_tag, to_uri, to_tag, cseq) = match side {
        Side::Caller => (CALLER_URI, "b1", CALLEE_URI, "b1", 2),
        Side::Callee => (CALLEE_URI, "b1", CALLER_URI, CALLER_TAG, 1),
    };
    let from_tag = if side == Side::Caller {
        CALLER_TAG
    } else {
        from_tag
    };
    SipEvent {
        from_terminal: side == Side::Caller,
        kind: SipKind::Request {
            method,
            request_uri: to_uri.into(),
        },
        from_uri: from_uri.into(),
        from_tag: Some(from_tag.into()),
        to_uri: to_uri.into(),
        to_tag: Some(to_tag.into()),
        cseq,
        cseq_method: method,
        ..base
    }
}

/// The response `status` to `request`: same headers, To-tag `b1` added when it had none.
fn resp(t: f64, status: u16, request: &SipEvent<'static>) -> SipEvent<'static> {
    SipEvent {
        at: ms(t),
        from_terminal: !request.from_terminal,
        kind: SipKind::Response { status },
        to_tag: request.to_tag.clone().or(Some("b1".into())),
        sdp_video: None,
        ..request.clone()
    }
}

/// Changes to a built message, chained after it.
trait Edit: Sized {
    fn sdp(self, sdp: Sdp) -> Self;
    fn cseq(self, cseq: u32) -> Self;
    /// Puts the callee's tag of another forked branch where the callee's tag goes.
    fn branch(self, tag: &str) -> Self;
    fn no_to_tag(self) -> Self;
    fn at(self, t: f64) -> Self;
}

impl Edit for SipEvent<'static> {
    fn sdp(mut self, sdp: Sdp) -> Self {
        self.sdp_video = match sdp {
            Sdp::None => None,
            Sdp::Audio => Some(false),
            Sdp::Video => Some(true),
        };
        self
    }
    fn cseq(mut self, cseq: u32) -> Self {
        self.cseq = cseq;
        self
    }
    fn branch(mut self, tag: &str) -> Self {
        if self.from_tag.as_deref() == Some(CALLER_TAG) {
            self.to_tag = Some(tag.to_owned().into());
        } else {
            self.from_tag = Some(tag.to_owned().into());
        }
        self
    }
    fn no_to_tag(mut self) -> Self {
        self.to_tag = None;
        self
    }
    fn at(mut self, t: f64) -> Self {
        self.at = ms(t);
        self
    }
}

/// INVITE at 0 with `offer`, 100 at 0.05, 180 at 1.
fn ringing(offer: Sdp) -> Vec<SipEvent<'static>> {
    let inv = invite(0.0).sdp(offer);
    vec![
        inv.clone(),
        resp(0.05, 100, &inv).no_to_tag(),
        resp(1.0, 180, &inv),
    ]
}

/// `ringing`, then 200 at 5 with `answer` and the ACK at 5.1.
fn answered(offer: Sdp, answer: Sdp) -> Vec<SipEvent<'static>> {
    let mut events = ringing(offer);
    events.push(resp(5.0, 200, &invite(0.0)).sdp(answer));
    events.push(req(5.1, Method::Ack, Side::Caller).cseq(1));
    events
}

/// A BYE from `side` at `t` and its 200.
fn bye(t: f64, side: Side) -> Vec<SipEvent<'static>> {
    let bye = req(t, Method::Bye, side);
    vec![bye.clone(), resp(t + 0.02, 200, &bye)]
}

fn cat(parts: impl IntoIterator<Item = Vec<SipEvent<'static>>>) -> Vec<SipEvent<'static>> {
    parts.into_iter().flatten().collect()
}

/// The answered audio call of RFC 3665 §3.1: ringing at 1 s, answered at 5 s, the caller's
/// BYE at 65 s. Each case states how its CDR differs from this one.
fn cdr(edit: impl FnOnce(&mut Cdr)) -> Cdr {
    let mut cdr = Cdr {
        id: CdrId::new(ms(0.0), NODE, CALL_ID),
        node: NODE.into(),
        call_id: CALL_ID.into(),
        caller: "1001".into(),
        called: "2002".into(),
        caller_uri: CALLER_URI.into(),
        called_uri: CALLEE_URI.into(),
        call_type: CallType::Audio,
        video_started_at: None,
        status: CallStatus::Connected,
        disposition: Disposition::Answered,
        sip_code: Some(200),
        ended_by: EndedBy::Caller,
        start_time: ms(0.0),
        ring_time: Some(ms(1.0)),
        answer_time: Some(ms(5.0)),
        end_time: ms(65.0),
        transport: Transport::Udp,
        source: Source::Proxy,
        terminal: TERMINAL.parse().unwrap(),
    };
    edit(&mut cdr);
    cdr
}

/// A call that never connected, ended by the callee's final `code` at `t`.
fn refused(code: u16, disposition: Disposition, t: f64) -> Cdr {
    cdr(|c| {
        c.status = CallStatus::NotConnected;
        c.disposition = disposition;
        c.sip_code = Some(code);
        c.ended_by = EndedBy::Callee;
        c.answer_time = None;
        c.end_time = ms(t);
    })
}

struct Case {
    name: &'static str,
    events: Vec<SipEvent<'static>>,
    /// Time of a final `tick`, for cases that end by a timer.
    tick: Option<f64>,
    want: Vec<Cdr>,
}

fn tracker() -> Tracker {
    Tracker::new(NODE, Duration::from_secs(CALL_TIMEOUT_S as u64))
}

/// The CDRs a tracker produces from `events`, ticking every second as the task does (so
/// that timers are exercised between messages too), then at `tick`.
fn run(tracker: &mut Tracker, events: Vec<SipEvent<'static>>, tick: Option<f64>) -> Vec<Cdr> {
    let mut outputs = Vec::new();
    let mut clock = T0;
    for ev in events {
        while clock + 1000 <= ev.at.0 {
            clock += 1000;
            outputs.extend(tracker.tick(UnixMs(clock)));
        }
        outputs.extend(tracker.on_event(&ev));
        tracker.assert_indexes_agree();
    }
    if let Some(t) = tick {
        outputs.extend(tracker.tick(ms(t)));
        tracker.assert_indexes_agree();
    }
    ended(outputs)
}

fn check(case: Case) {
    let mut t = tracker();
    let got = run(&mut t, case.events, case.tick);
    assert_eq!(got, case.want, "case {:?}", case.name);
    assert!(t.is_empty(), "case {:?}: calls left open", case.name);
}

#[test]
fn outcomes() {
    let inv = invite(0.0);
    let cases = vec![
        Case {
            name: "answered, caller hangs up",
            events: cat([answered(Sdp::Audio, Sdp::Audio), bye(65.0, Side::Caller)]),
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "answered, callee hangs up",
            events: cat([answered(Sdp::Audio, Sdp::Audio), bye(65.0, Side::Callee)]),
            tick: None,
            want: vec![cdr(|c| c.ended_by = EndedBy::Callee)],
        },
        Case {
            name: "busy 486",
            events: cat([
                ringing(Sdp::Audio),
                vec![
                    resp(3.0, 486, &inv),
                    req(3.01, Method::Ack, Side::Caller).cseq(1),
                ],
            ]),
            tick: None,
            want: vec![refused(486, Disposition::Busy, 3.0)],
        },
        Case {
            name: "busy everywhere 600",
            events: cat([ringing(Sdp::Audio), vec![resp(3.0, 600, &inv)]]),
            tick: None,
            want: vec![refused(600, Disposition::Busy, 3.0)],
        },
        Case {
            name: "declined 603",
            events: cat([ringing(Sdp::Audio), vec![resp(3.0, 603, &inv)]]),
            tick: None,
            want: vec![refused(603, Disposition::Declined, 3.0)],
        },
        Case {
            name: "no answer 480",
            events: cat([ringing(Sdp::Audio), vec![resp(30.0, 480, &inv)]]),
            tick: None,
            want: vec![refused(480, Disposition::NoAnswer, 30.0)],
        },
        Case {
            name: "no answer 408, no provisional",
            events: vec![inv.clone(), resp(32.0, 408, &inv)],
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(408, Disposition::NoAnswer, 32.0);
                c.ring_time = None;
            })],
        },
        Case {
            name: "no answer: Timer C 3 min after the last provisional",
            events: cat([ringing(Sdp::Audio), vec![resp(20.0, 183, &inv)]]),
            tick: Some(200.0),
            want: vec![cdr(|c| {
                *c = refused(0, Disposition::NoAnswer, 200.0);
                c.sip_code = None;
                c.ended_by = EndedBy::Sipedge;
            })],
        },
        Case {
            name: "no answer: Timer C 3 min after the INVITE when no provisional came",
            events: vec![inv.clone(), resp(0.05, 100, &inv).no_to_tag()],
            tick: Some(180.0),
            want: vec![cdr(|c| {
                *c = refused(0, Disposition::NoAnswer, 180.0);
                c.sip_code = None;
                c.ring_time = None;
                c.ended_by = EndedBy::Sipedge;
            })],
        },
        Case {
            name: "a callee ringing for long repeats its 180 every minute (§13.3.1.1)",
            events: cat([
                ringing(Sdp::Audio),
                vec![
                    resp(61.0, 180, &inv),
                    resp(121.0, 180, &inv),
                    resp(240.0, 200, &inv),
                    req(240.1, Method::Ack, Side::Caller).cseq(1),
                ],
                bye(300.0, Side::Caller),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.answer_time = Some(ms(240.0));
                c.end_time = ms(300.0);
            })],
        },
        Case {
            name: "cancelled: CANCEL, 200 to it, 487",
            events: cat([
                ringing(Sdp::Audio),
                vec![
                    req(4.0, Method::Cancel, Side::Caller).cseq(1).no_to_tag(),
                    resp(4.01, 200, &req(4.0, Method::Cancel, Side::Caller).cseq(1)),
                    resp(4.02, 487, &inv),
                    req(4.03, Method::Ack, Side::Caller).cseq(1),
                ],
            ]),
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(487, Disposition::Cancelled, 4.0);
                c.ended_by = EndedBy::Caller;
            })],
        },
        Case {
            name: "cancelled: CANCEL and no final response within 64×T1",
            events: cat([
                ringing(Sdp::Audio),
                vec![req(4.0, Method::Cancel, Side::Caller).cseq(1).no_to_tag()],
            ]),
            tick: Some(36.0),
            want: vec![cdr(|c| {
                *c = refused(0, Disposition::Cancelled, 4.0);
                c.sip_code = None;
                c.ended_by = EndedBy::Caller;
            })],
        },
        Case {
            name: "cancelled: 487 without a CANCEL seen",
            events: cat([ringing(Sdp::Audio), vec![resp(4.0, 487, &inv)]]),
            tick: None,
            want: vec![refused(487, Disposition::Cancelled, 4.0)],
        },
        Case {
            name: "a CANCEL that crosses a 200 leaves the call connected",
            events: cat([
                ringing(Sdp::Audio),
                vec![
                    req(4.99, Method::Cancel, Side::Caller).cseq(1).no_to_tag(),
                    resp(5.0, 200, &inv).sdp(Sdp::Audio),
                    resp(5.01, 200, &req(4.99, Method::Cancel, Side::Caller).cseq(1)),
                    req(5.1, Method::Ack, Side::Caller).cseq(1),
                ],
                bye(5.2, Side::Caller),
            ]),
            tick: None,
            want: vec![cdr(|c| c.end_time = ms(5.2))],
        },
        Case {
            name: "a busy that crosses a CANCEL is busy",
            events: cat([
                ringing(Sdp::Audio),
                vec![
                    req(4.0, Method::Cancel, Side::Caller).cseq(1).no_to_tag(),
                    resp(4.01, 486, &inv),
                ],
            ]),
            tick: None,
            want: vec![refused(486, Disposition::Busy, 4.01)],
        },
        Case {
            name: "failed 404",
            events: vec![inv.clone(), resp(0.2, 404, &inv)],
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(404, Disposition::Failed, 0.2);
                c.ring_time = None;
            })],
        },
        Case {
            name: "failed 503 after ringing",
            events: cat([ringing(Sdp::Audio), vec![resp(2.0, 503, &inv)]]),
            tick: None,
            want: vec![refused(503, Disposition::Failed, 2.0)],
        },
        Case {
            name: "failed 302: a redirect is another final code",
            events: vec![inv.clone(), resp(0.2, 302, &inv)],
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(302, Disposition::Failed, 0.2);
                c.ring_time = None;
            })],
        },
        Case {
            name: "401 then a new INVITE with a higher CSeq is one answered call",
            events: cat([
                vec![
                    inv.clone().sdp(Sdp::Audio),
                    resp(0.1, 401, &inv),
                    req(0.11, Method::Ack, Side::Caller).cseq(1),
                    invite(0.5).cseq(2).sdp(Sdp::Audio),
                    resp(1.0, 180, &invite(0.5).cseq(2)),
                    resp(5.0, 200, &invite(0.5).cseq(2)).sdp(Sdp::Audio),
                    req(5.1, Method::Ack, Side::Caller).cseq(2),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(3))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "407 then a new INVITE that is busy",
            events: vec![
                inv.clone(),
                resp(0.1, 407, &inv),
                invite(0.5).cseq(2),
                resp(1.0, 180, &invite(0.5).cseq(2)),
                resp(3.0, 486, &invite(0.5).cseq(2)),
            ],
            tick: None,
            want: vec![refused(486, Disposition::Busy, 3.0)],
        },
        Case {
            name: "407 and no new INVITE within Timer C fails with 407",
            events: vec![inv.clone(), resp(0.1, 407, &inv)],
            tick: Some(180.1),
            want: vec![cdr(|c| {
                *c = refused(407, Disposition::Failed, 0.1);
                c.ring_time = None;
            })],
        },
        Case {
            name: "forked early dialogs are one call, the answered branch wins",
            events: vec![
                inv.clone(),
                resp(1.0, 180, &inv),
                resp(1.5, 180, &inv).branch("b2"),
                resp(5.0, 200, &inv).branch("b2"),
                resp(5.05, 200, &inv),
                req(5.1, Method::Ack, Side::Caller).cseq(1).branch("b2"),
                req(65.0, Method::Bye, Side::Callee).branch("b2"),
            ],
            tick: None,
            want: vec![cdr(|c| c.ended_by = EndedBy::Callee)],
        },
        Case {
            name: "forks: a video early answer on the branch that does not answer",
            events: vec![
                inv.clone().sdp(Sdp::Video),
                resp(1.0, 183, &inv).sdp(Sdp::Video),
                resp(1.5, 180, &inv).branch("b2"),
                resp(5.0, 200, &inv).branch("b2").sdp(Sdp::Audio),
                req(65.0, Method::Bye, Side::Caller).branch("b2"),
            ],
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "reliable 183 with a video answer, 200 without SDP",
            events: vec![
                inv.clone().sdp(Sdp::Video),
                resp(1.0, 183, &inv).sdp(Sdp::Video),
                resp(5.0, 200, &inv),
                req(65.0, Method::Bye, Side::Caller),
            ],
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(1.0));
            })],
        },
        Case {
            name: "retransmissions change nothing and move no time",
            events: vec![
                inv.clone().sdp(Sdp::Video),
                inv.clone().sdp(Sdp::Video).at(0.5),
                resp(1.0, 180, &inv),
                inv.clone().sdp(Sdp::Video).at(1.5),
                resp(2.0, 180, &inv),
                resp(5.0, 200, &inv).sdp(Sdp::Video),
                resp(5.5, 200, &inv).sdp(Sdp::Video),
                req(5.6, Method::Ack, Side::Caller).cseq(1),
                resp(6.5, 200, &inv).sdp(Sdp::Video),
                req(6.6, Method::Ack, Side::Caller).cseq(1),
                req(65.0, Method::Bye, Side::Caller),
                req(65.5, Method::Bye, Side::Caller),
                invite(66.0).sdp(Sdp::Video),
            ],
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.0));
            })],
        },
        Case {
            name: "timeout: connected, no BYE within call_timeout",
            events: answered(Sdp::Audio, Sdp::Audio),
            tick: Some(5.0 + CALL_TIMEOUT_S as f64 + 30.0),
            want: vec![cdr(|c| {
                c.disposition = Disposition::Timeout;
                c.ended_by = EndedBy::Sipedge;
                c.end_time = ms(5.0 + CALL_TIMEOUT_S as f64);
            })],
        },
        Case {
            name: "a session refresh re-INVITE restarts call_timeout",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(1800.0, Method::Invite, Side::Caller).sdp(Sdp::Audio),
                    resp(1800.1, 200, &req(1800.0, Method::Invite, Side::Caller)).sdp(Sdp::Audio),
                ],
            ]),
            tick: Some(1800.0 + CALL_TIMEOUT_S as f64),
            want: vec![cdr(|c| {
                c.disposition = Disposition::Timeout;
                c.ended_by = EndedBy::Sipedge;
                c.end_time = ms(1800.0 + CALL_TIMEOUT_S as f64);
            })],
        },
        Case {
            name: "a 200 with no ACK is still connected",
            events: cat([
                ringing(Sdp::Audio),
                vec![resp(5.0, 200, &inv).sdp(Sdp::Audio)],
                bye(65.0, Side::Callee),
            ]),
            tick: None,
            want: vec![cdr(|c| c.ended_by = EndedBy::Callee)],
        },
        Case {
            name: "video: offer and answer both have video",
            events: cat([answered(Sdp::Video, Sdp::Video), bye(65.0, Side::Caller)]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.0));
            })],
        },
        Case {
            name: "audio: video offered, answer without video",
            events: cat([answered(Sdp::Video, Sdp::Audio), bye(65.0, Side::Caller)]),
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "audio: video offered, never answered",
            events: cat([ringing(Sdp::Video), vec![resp(3.0, 486, &inv)]]),
            tick: None,
            want: vec![refused(486, Disposition::Busy, 3.0)],
        },
        Case {
            name: "late offer: video in the 200, video answer in the ACK",
            events: cat([
                ringing(Sdp::None),
                vec![
                    resp(5.0, 200, &inv).sdp(Sdp::Video),
                    req(5.1, Method::Ack, Side::Caller).cseq(1).sdp(Sdp::Video),
                ],
                bye(65.0, Side::Caller),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.1));
            })],
        },
        Case {
            name: "late offer: video in the 200, audio answer in the ACK",
            events: cat([
                ringing(Sdp::None),
                vec![
                    resp(5.0, 200, &inv).sdp(Sdp::Video),
                    req(5.1, Method::Ack, Side::Caller).cseq(1).sdp(Sdp::Audio),
                ],
                bye(65.0, Side::Caller),
            ]),
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "a re-INVITE from the caller adds video",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(20.0, Method::Invite, Side::Caller).sdp(Sdp::Video),
                    resp(20.2, 200, &req(20.0, Method::Invite, Side::Caller)).sdp(Sdp::Video),
                    req(20.3, Method::Ack, Side::Caller),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(3))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(20.2));
            })],
        },
        Case {
            name: "a re-INVITE from the callee adds video, then one removes it",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(20.0, Method::Invite, Side::Callee).sdp(Sdp::Video),
                    resp(20.2, 200, &req(20.0, Method::Invite, Side::Callee)).sdp(Sdp::Video),
                    req(20.3, Method::Ack, Side::Callee),
                    req(40.0, Method::Invite, Side::Caller).sdp(Sdp::Audio),
                    resp(40.2, 200, &req(40.0, Method::Invite, Side::Caller)).sdp(Sdp::Audio),
                ],
                bye(65.0, Side::Callee)
                    .into_iter()
                    .map(|e| e.cseq(2))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(20.2));
                c.ended_by = EndedBy::Callee;
            })],
        },
        Case {
            name: "a re-INVITE that removes video leaves the type video",
            events: cat([
                answered(Sdp::Video, Sdp::Video),
                vec![
                    req(20.0, Method::Invite, Side::Caller).sdp(Sdp::Audio),
                    resp(20.2, 200, &req(20.0, Method::Invite, Side::Caller)).sdp(Sdp::Audio),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(3))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.0));
            })],
        },
        Case {
            name: "video removed then added back keeps the first video_started_at",
            events: cat([
                answered(Sdp::Video, Sdp::Video),
                vec![
                    req(20.0, Method::Invite, Side::Caller).sdp(Sdp::Audio),
                    resp(20.2, 200, &req(20.0, Method::Invite, Side::Caller)).sdp(Sdp::Audio),
                    req(30.0, Method::Invite, Side::Caller)
                        .cseq(3)
                        .sdp(Sdp::Video),
                    resp(30.2, 200, &req(30.0, Method::Invite, Side::Caller).cseq(3))
                        .sdp(Sdp::Video),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(4))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.0));
            })],
        },
        Case {
            name: "a rejected re-INVITE (488) does not add video",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(20.0, Method::Invite, Side::Caller).sdp(Sdp::Video),
                    resp(20.2, 488, &req(20.0, Method::Invite, Side::Caller)),
                    resp(20.5, 200, &req(20.0, Method::Invite, Side::Caller)).sdp(Sdp::Video),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(3))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|_| {})],
        },
        Case {
            name: "an UPDATE adds video",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(20.0, Method::Update, Side::Callee).sdp(Sdp::Video),
                    resp(20.1, 200, &req(20.0, Method::Update, Side::Callee)).sdp(Sdp::Video),
                ],
                bye(65.0, Side::Caller),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(20.1));
            })],
        },
        Case {
            name: "a re-INVITE without SDP: video offer in its 200, answer in the ACK",
            events: cat([
                answered(Sdp::Audio, Sdp::Audio),
                vec![
                    req(20.0, Method::Invite, Side::Caller),
                    resp(20.2, 200, &req(20.0, Method::Invite, Side::Caller)).sdp(Sdp::Video),
                    req(20.3, Method::Ack, Side::Caller).sdp(Sdp::Video),
                ],
                bye(65.0, Side::Caller)
                    .into_iter()
                    .map(|e| e.cseq(3))
                    .collect(),
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(20.3));
            })],
        },
        Case {
            name: "the caller ends an early dialog with a BYE",
            events: cat([
                ringing(Sdp::Audio),
                vec![req(4.0, Method::Bye, Side::Caller)],
            ]),
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(0, Disposition::Cancelled, 4.0);
                c.sip_code = None;
                c.ended_by = EndedBy::Caller;
            })],
        },
        Case {
            name: "called from the Request-URI when To has no user part, over TCP",
            events: cat([
                vec![SipEvent {
                    transport: Transport::Tcp,
                    terminal: "[2001:db8::7]:50123".parse().unwrap(),
                    to_uri: "sip:bank.example".into(),
                    kind: SipKind::Request {
                        method: Method::Invite,
                        request_uri: "sip:2002;npdi@bank.example;user=phone".into(),
                    },
                    from_uri: "<tel:+8613800000000;cpc=ordinary>".into(),
                    ..inv.clone()
                }],
                vec![
                    resp(1.0, 180, &inv),
                    resp(5.0, 200, &inv),
                    req(65.0, Method::Bye, Side::Caller),
                ],
            ]),
            tick: None,
            want: vec![cdr(|c| {
                c.transport = Transport::Tcp;
                c.terminal = "[2001:db8::7]:50123".into();
                c.caller = "+8613800000000".into();
                c.caller_uri = "<tel:+8613800000000;cpc=ordinary>".into();
                c.called = "2002".into();
                c.called_uri = "sip:2002;npdi@bank.example;user=phone".into();
            })],
        },
        Case {
            name: "the Sipserver calls a TCP terminal: its first response tells how it is reached",
            events: vec![
                SipEvent {
                    from_terminal: false,
                    terminal: "198.51.100.9:5070".parse().unwrap(),
                    ..inv.clone()
                },
                SipEvent {
                    from_terminal: true,
                    transport: Transport::Tcp,
                    terminal: "198.51.100.9:40123".parse().unwrap(),
                    ..resp(0.05, 100, &inv).no_to_tag()
                },
                SipEvent {
                    from_terminal: true,
                    transport: Transport::Udp,
                    terminal: "192.0.2.99:5060".parse().unwrap(),
                    ..resp(1.0, 180, &inv)
                },
                resp(5.0, 200, &inv),
                req(65.0, Method::Bye, Side::Caller),
            ],
            tick: None,
            want: vec![cdr(|c| {
                c.transport = Transport::Tcp;
                c.terminal = "198.51.100.9:40123".into();
            })],
        },
        Case {
            name: "two calls interleaved keep apart",
            events: vec![
                inv.clone(),
                SipEvent {
                    from_tag: Some("other".into()),
                    at: ms(0.5),
                    ..inv.clone()
                },
                resp(3.0, 486, &inv),
                SipEvent {
                    kind: SipKind::Response { status: 603 },
                    from_tag: Some("other".into()),
                    to_tag: Some("x".into()),
                    at: ms(4.0),
                    ..inv.clone()
                },
            ],
            tick: None,
            want: vec![
                cdr(|c| {
                    *c = refused(486, Disposition::Busy, 3.0);
                    c.ring_time = None;
                }),
                cdr(|c| {
                    *c = refused(603, Disposition::Declined, 4.0);
                    c.ring_time = None;
                    c.id = CdrId::new(ms(0.5), NODE, CALL_ID);
                    c.start_time = ms(0.5);
                }),
            ],
        },
    ];
    for case in cases {
        check(case);
    }
}

/// Hostile or broken input: no panic, no record, nothing left tracked.
#[test]
fn hostile_sequences() {
    let inv = invite(0.0);
    let huge = "x".repeat(100_000);
    let cases = vec![
        Case {
            name: "BYE without INVITE",
            events: bye(1.0, Side::Caller),
            tick: Some(10_000_000.0),
            want: vec![],
        },
        Case {
            name: "responses, ACK and CANCEL for unknown calls",
            events: vec![
                resp(0.1, 180, &inv),
                resp(0.2, 200, &inv),
                resp(0.3, 486, &inv),
                req(0.4, Method::Ack, Side::Caller),
                req(0.5, Method::Cancel, Side::Caller).no_to_tag(),
            ],
            tick: Some(10_000_000.0),
            want: vec![],
        },
        Case {
            name: "a re-INVITE for a call never seen starts nothing",
            events: vec![req(0.0, Method::Invite, Side::Caller).sdp(Sdp::Video)],
            tick: Some(10_000_000.0),
            want: vec![],
        },
        Case {
            name: "huge Call-ID",
            events: vec![
                SipEvent {
                    call_id: huge.clone().into(),
                    ..inv.clone()
                },
                SipEvent {
                    call_id: huge.clone().into(),
                    ..resp(1.0, 200, &inv)
                },
            ],
            tick: Some(10_000_000.0),
            want: vec![],
        },
        Case {
            name: "huge tags",
            events: vec![
                SipEvent {
                    from_tag: Some(huge.clone().into()),
                    ..inv.clone()
                },
                SipEvent {
                    to_tag: Some(huge.clone().into()),
                    ..resp(1.0, 200, &inv)
                },
            ],
            tick: Some(10_000_000.0),
            want: vec![],
        },
        Case {
            name: "empty Call-ID",
            events: vec![SipEvent {
                call_id: String::new().into(),
                ..inv.clone()
            }],
            tick: Some(10_000_000.0),
            want: vec![],
        },
    ];
    for case in cases {
        check(case);
    }
}

/// Odd but survivable input on a tracked call: still exactly one record.
#[test]
fn survivable_oddities() {
    let top = invite(0.0).cseq(u32::MAX);
    let cases = vec![
        Case {
            name: "CSeq at its maximum, challenged, retry wraps to 0: ignored, fails at Timer C",
            events: vec![
                top.clone(),
                resp(0.1, 401, &top),
                invite(0.5).cseq(0),
                resp(0.6, 200, &invite(0.5).cseq(0)),
            ],
            tick: Some(181.0),
            want: vec![cdr(|c| {
                *c = refused(401, Disposition::Failed, 0.1);
                c.ring_time = None;
            })],
        },
        Case {
            name: "status codes out of range and a request whose CSeq method disagrees",
            events: vec![
                invite(0.0),
                resp(0.1, 0, &invite(0.0)),
                resp(0.2, 999, &invite(0.0)),
                SipEvent {
                    cseq_method: Method::Bye,
                    ..req(0.3, Method::Cancel, Side::Caller).cseq(1).no_to_tag()
                },
                resp(1.0, 486, &invite(0.0)),
            ],
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(486, Disposition::Busy, 1.0);
                c.ring_time = None;
            })],
        },
        Case {
            name: "huge URIs are cut, the call is recorded",
            events: vec![
                SipEvent {
                    from_uri: format!("sip:{}@h", "é".repeat(1000)).into(),
                    ..invite(0.0)
                },
                resp(1.0, 486, &invite(0.0)),
            ],
            tick: None,
            want: vec![cdr(|c| {
                *c = refused(486, Disposition::Busy, 1.0);
                c.ring_time = None;
                c.caller = "é".repeat(256);
                c.caller_uri = format!("sip:{}", "é".repeat(254));
            })],
        },
    ];
    for case in cases {
        check(case);
    }
}

fn kinds(outputs: &[Output]) -> Vec<&'static str> {
    outputs
        .iter()
        .map(|o| match o {
            Output::Started(_) => "started",
            Output::Ringing(_) => "ringing",
            Output::Answered(_) => "answered",
            Output::Ended(..) => "ended",
            Output::Changed(_) => "changed",
            Output::Event(..) => "event",
        })
        .collect()
}

#[test]
fn live_events_come_once_each_and_retransmissions_emit_nothing() {
    let mut t = tracker();
    let inv = invite(0.0).sdp(Sdp::Audio);
    let steps: Vec<(SipEvent<'static>, Vec<&str>)> = vec![
        (inv.clone(), vec!["started", "changed"]),
        (inv.clone().at(0.5), vec![]),
        (resp(0.6, 100, &inv).no_to_tag(), vec![]),
        (resp(1.0, 180, &inv), vec!["ringing", "changed"]),
        (resp(1.5, 180, &inv).branch("b2"), vec!["changed"]),
        (
            resp(5.0, 200, &inv).sdp(Sdp::Audio),
            vec!["answered", "changed"],
        ),
        (resp(5.5, 200, &inv).sdp(Sdp::Audio), vec![]),
        (req(5.6, Method::Ack, Side::Caller).cseq(1), vec![]),
        (req(65.0, Method::Bye, Side::Caller), vec!["ended"]),
        (req(65.5, Method::Bye, Side::Caller), vec![]),
        (
            resp(65.6, 200, &req(65.0, Method::Bye, Side::Caller)),
            vec![],
        ),
    ];
    let id = CdrId::new(ms(0.0), NODE, CALL_ID);
    for (i, (ev, want)) in steps.into_iter().enumerate() {
        let out = t.on_event(&ev);
        assert_eq!(kinds(&out), want, "step {i}");
        assert_eq!(
            t.log_of(&ev).map(|(id, _)| id),
            Some(id),
            "step {i}: the message belongs to the call's log"
        );
        for o in &out {
            let state = match o {
                Output::Started(l) => Some((l.state, LiveState::Trying)),
                Output::Ringing(l) => Some((l.state, LiveState::Ringing)),
                Output::Answered(l) => Some((l.state, LiveState::Connected)),
                _ => None,
            };
            if let Some((got, want)) = state {
                assert_eq!(got, want, "step {i}");
            }
        }
    }
    assert!(t.is_empty());
    assert_eq!(t.stats().ignored, 2, "the BYE retransmission and its 200");
    let stranger = SipEvent {
        call_id: "other".into(),
        ..invite(70.0)
    };
    assert_eq!(t.log_of(&stranger).map(|(id, _)| id), None);
    t.tick(ms(65.0 + 32.0));
    assert_eq!(
        t.log_of(&resp(98.0, 200, &req(65.0, Method::Bye, Side::Caller)))
            .map(|(id, _)| id),
        None,
        "an ended call is forgotten after 64×T1"
    );
}

/// Feeds `events` to a tracker, restarts after `split` of them from the snapshots the first
/// one emitted (encoded, as the store keeps them), and feeds the rest.
fn run_with_restart(events: Vec<SipEvent<'static>>, split: usize, tick: Option<f64>) -> Vec<Cdr> {
    let mut first = tracker();
    let mut snapshots = std::collections::HashMap::new();
    let mut events = events.into_iter();
    for ev in events.by_ref().take(split) {
        for o in first.on_event(&ev) {
            match o {
                Output::Changed(key) => {
                    let s = first.call(&key).expect("a changed call is in progress");
                    snapshots.insert(
                        s.id(),
                        serde_json::to_string(s).expect("a snapshot serialises"),
                    );
                }
                Output::Ended(cdr, _) => {
                    snapshots.remove(&cdr.id);
                }
                _ => {}
            }
        }
    }
    let mut second = tracker();
    second.resume(
        snapshots.values().map(|json| {
            serde_json::from_str::<CallSnapshot>(json).expect("a snapshot deserialises")
        }),
    );
    assert_eq!(second.len(), first.len());
    let mut live: Vec<_> = second.live_calls().collect();
    let mut before: Vec<_> = first.live_calls().collect();
    live.sort_by_key(|l| l.id);
    before.sort_by_key(|l| l.id);
    assert_eq!(live, before);
    run(&mut second, events.collect(), tick)
}

#[test]
fn snapshots_of_another_version_or_damaged_are_refused() {
    let mut t = tracker();
    let Some(Output::Changed(key)) = t.on_event(&invite(0.0)).pop() else {
        panic!("a first INVITE emits its change last");
    };
    let snapshot = t.call(&key).expect("the call is in progress");
    let good = snapshot.encode();
    let decoded = CallSnapshot::decode(&good).expect("a snapshot decodes");
    assert_eq!(decoded.encode(), good);
    let node = NODE.into();
    assert_eq!(decoded.live(&node), snapshot.live(&node));
    let mut other_version = good.clone();
    other_version[0] = 2;
    let cut = &good[..good.len() / 2];
    for bad in [&other_version[..], cut, b"", b"\x01{}", b"\x01\xff\xfe"] {
        assert_eq!(CallSnapshot::decode(bad), None, "{bad:?}");
    }
}

#[test]
fn calls_in_progress_survive_a_restart() {
    let inv = invite(0.0);
    // (name, events, restart after, final tick, CDR)
    type RestartCase = (
        &'static str,
        Vec<SipEvent<'static>>,
        usize,
        Option<f64>,
        Cdr,
    );
    let cases: Vec<RestartCase> = vec![
        (
            "connected video call, BYE after the restart",
            cat([answered(Sdp::Video, Sdp::Video), bye(65.0, Side::Callee)]),
            5,
            None,
            cdr(|c| {
                c.call_type = CallType::Video;
                c.video_started_at = Some(ms(5.0));
                c.ended_by = EndedBy::Callee;
            }),
        ),
        (
            "ringing call answered after the restart, retransmitted 180 ignored",
            cat([
                ringing(Sdp::Audio),
                vec![resp(1.5, 180, &inv)],
                answered(Sdp::Audio, Sdp::Audio).split_off(3),
                bye(65.0, Side::Caller),
            ]),
            3,
            None,
            cdr(|_| {}),
        ),
        (
            "ringing call, sipedge down past Timer C",
            ringing(Sdp::Audio),
            3,
            Some(3600.0),
            cdr(|c| {
                *c = refused(0, Disposition::NoAnswer, 181.0);
                c.sip_code = None;
                c.ended_by = EndedBy::Sipedge;
            }),
        ),
        (
            "challenged call retried after the restart",
            vec![
                inv.clone(),
                resp(0.1, 407, &inv),
                invite(0.5).cseq(2),
                resp(3.0, 603, &invite(0.5).cseq(2)),
            ],
            2,
            None,
            cdr(|c| {
                *c = refused(603, Disposition::Declined, 3.0);
                c.ring_time = None;
            }),
        ),
    ];
    for (name, events, split, tick, want) in cases {
        assert_eq!(run_with_restart(events, split, tick), vec![want], "{name}");
    }
}

#[test]
fn timers_fire_at_their_deadline_not_before() {
    let inv = invite(0.0);
    // (name, events, deadline in seconds)
    let cases: Vec<(&str, Vec<SipEvent<'static>>, f64)> = vec![
        ("Timer C after the 180", ringing(Sdp::Audio), 181.0),
        (
            "Timer C after a 401",
            vec![inv.clone(), resp(0.1, 401, &inv)],
            180.1,
        ),
        (
            "64×T1 after a CANCEL",
            cat([
                ringing(Sdp::Audio),
                vec![req(4.0, Method::Cancel, Side::Caller).cseq(1).no_to_tag()],
            ]),
            36.0,
        ),
        (
            "call_timeout after the 200",
            answered(Sdp::Audio, Sdp::Audio),
            5.0 + CALL_TIMEOUT_S as f64,
        ),
    ];
    for (name, events, deadline) in cases {
        let mut t = tracker();
        assert_eq!(
            run(&mut t, events, Some(deadline - 0.001)),
            vec![],
            "{name}"
        );
        assert_eq!(t.len(), 1, "{name}");
        assert_eq!(
            kinds(&t.tick(ms(deadline))),
            vec!["event", "ended"],
            "{name}"
        );
        assert!(t.is_empty(), "{name}");
    }
}

fn ended(outputs: Vec<Output>) -> Vec<Cdr> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Ended(cdr, live) => {
                assert_eq!(live, LiveCall::from(&*cdr), "the ended call's live view");
                Some(*cdr)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_cap_closes_the_oldest_ringing_calls() {
    let mut t = tracker().with_max_calls(2);
    let call = |n: u32, at: f64| SipEvent {
        call_id: format!("flood-{n}").into(),
        ..invite(at)
    };
    let mut cdrs = Vec::new();
    for ev in [
        call(0, 0.0),
        resp(0.5, 200, &call(0, 0.0)),
        call(1, 1.0),
        call(2, 2.0),
        call(3, 3.0),
    ] {
        cdrs.extend(ended(t.on_event(&ev)));
    }
    assert_eq!(t.len(), 2);
    assert_eq!(
        t.stats(),
        TrackerStats {
            evicted: 2,
            refused: 0,
            ignored: 0
        }
    );
    let evicted: Vec<_> = cdrs
        .iter()
        .map(|c| (c.call_id.as_str(), c.disposition, c.ended_by, c.end_time))
        .collect();
    assert_eq!(
        evicted,
        vec![
            ("flood-1", Disposition::NoAnswer, EndedBy::Sipedge, ms(2.0)),
            ("flood-2", Disposition::NoAnswer, EndedBy::Sipedge, ms(3.0)),
        ]
    );
    // With every tracked call connected, a new INVITE is refused rather than dropping one.
    assert_eq!(ended(t.on_event(&resp(3.5, 200, &call(3, 3.0)))), vec![]);
    assert_eq!(ended(t.on_event(&call(4, 4.0))), vec![]);
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats().refused, 1);
    let live: Vec<_> = t.live_calls().map(|l| l.state).collect();
    assert_eq!(live, vec![LiveState::Connected; 2]);
}

#[test]
fn a_new_invite_after_an_ended_call_with_a_higher_cseq_is_a_new_call() {
    let inv = invite(0.0);
    check(Case {
        name: "302 then a new INVITE to the new target",
        events: vec![
            inv.clone(),
            resp(0.1, 302, &inv),
            inv.clone().at(0.2),
            invite(1.0).cseq(2),
            resp(2.0, 486, &invite(1.0).cseq(2)),
        ],
        tick: None,
        want: vec![
            cdr(|c| {
                *c = refused(302, Disposition::Failed, 0.1);
                c.ring_time = None;
            }),
            cdr(|c| {
                *c = refused(486, Disposition::Busy, 2.0);
                c.ring_time = None;
                c.id = CdrId::new(ms(1.0), NODE, CALL_ID);
                c.start_time = ms(1.0);
            }),
        ],
    });
}

/// Found by the `call_tracking` fuzz target: a call refused (486) and a new INVITE of the
/// same dialog within the same millisecond made one CDR id for two calls, so the second
/// record would have replaced the first in the store.
#[test]
fn a_call_restarted_within_its_predecessors_millisecond_gets_its_own_record() {
    let first = invite(0.0);
    let second = invite(0.0).cseq(2);
    let events = vec![
        first.clone(),
        resp(0.0, 486, &first),
        second.clone(),
        resp(0.0, 486, &second),
    ];
    let mut t = tracker();
    let got = run(&mut t, events, None);
    let refused_at_0 = refused(486, Disposition::Busy, 0.0);
    let again = Cdr {
        id: CdrId::new_salted(ms(0.0), NODE, CALL_ID, 2),
        ring_time: None,
        ..refused_at_0.clone()
    };
    let first_cdr = Cdr {
        ring_time: None,
        ..refused_at_0
    };
    assert_eq!(got, vec![first_cdr, again]);
}
