//! Call tracking fed any sequence of messages and clock ticks, with a few calls, tags and
//! CSeqs so that sequences hit the same dialogs: no panic, at most one record per call id,
//! records whose times and durations agree, a bounded table, calls in progress that survive
//! their encoding, and nothing left open after the longest timeout.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sipedge_sip::call::{CallSnapshot, LiveCall, Method, Output, SipEvent, SipKind, Tracker};
use sipedge_store::cdr::{CallStatus, Transport, UnixMs};

const T0: i64 = 1_700_000_000_000;
const MAX_CALLS: usize = 4;
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
const METHODS: [Method; 6] = [
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Update,
    Method::Other,
];
const STATUSES: [u16; 10] = [100, 180, 183, 200, 401, 486, 487, 500, 603, 408];

/// One message from four bytes: what it is, which call and side, tags, CSeq and SDP.
fn event(at: i64, b: [u8; 4]) -> SipEvent<'static> {
    let call = b[1] % 3;
    let caller_side = b[1] & 0x10 == 0;
    let cseq = u32::from(b[2] % 4) + 1;
    let method = METHODS[usize::from(b[2] >> 4) % METHODS.len()];
    let kind = if b[0] & 1 == 0 {
        SipKind::Request {
            method,
            request_uri: "sip:2002@bank.example".into(),
        }
    } else {
        SipKind::Response {
            status: STATUSES[usize::from(b[0] >> 1) % STATUSES.len()],
        }
    };
    let caller_tag = Some(format!("a{call}").into());
    let callee_tag = match b[3] % 3 {
        0 => None,
        n => Some(format!("b{n}").into()),
    };
    let (from_tag, to_tag, from_uri, to_uri) = if caller_side {
        (
            caller_tag,
            callee_tag,
            "sip:1001@bank.example",
            "sip:2002@bank.example",
        )
    } else {
        (
            callee_tag,
            caller_tag,
            "sip:2002@bank.example",
            "sip:1001@bank.example",
        )
    };
    SipEvent {
        at: UnixMs(at),
        from_terminal: caller_side == (b[0] & 2 == 0),
        transport: if b[3] & 0x40 == 0 {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        source: sipedge_store::Source::Proxy,
        terminal: ([203, 0, 113, 7], 5060).into(),
        kind,
        call_id: format!("call-{call}@fuzz").into(),
        from_uri: from_uri.into(),
        from_tag,
        to_uri: to_uri.into(),
        to_tag,
        cseq,
        cseq_method: if b[3] & 0x80 == 0 {
            method
        } else {
            Method::Invite
        },
        sdp_video: match (b[3] >> 2) % 3 {
            0 => None,
            1 => Some(false),
            _ => Some(true),
        },
    }
}

fn check(tracker: &Tracker, outputs: Vec<Output>, ended: &mut HashSet<u128>) {
    for out in outputs {
        match out {
            Output::Ended(cdr, live) => {
                assert_eq!(live, LiveCall::from(&*cdr), "the ended call's live view");
                assert!(ended.insert(cdr.id.0), "a second record for {}", cdr.id);
                assert!(cdr.end_time >= cdr.start_time, "{cdr:?}");
                assert!(
                    cdr.talk_s() >= 0.0 && cdr.talk_s() <= cdr.duration_s(),
                    "{cdr:?}"
                );
                assert_eq!(
                    cdr.status == CallStatus::Connected,
                    cdr.answer_time.is_some(),
                    "{cdr:?}"
                );
                if let Some(ring) = cdr.ring_time {
                    assert!(ring >= cdr.start_time, "{cdr:?}");
                }
            }
            Output::Changed(key) => {
                // A change is of a call in progress, whose state is read at the save.
                let snapshot = tracker.call(&key).expect("a changed call is in progress");
                // Its index position is not saved (resume hands out a new one), so the
                // saved bytes are what must survive.
                let bytes = snapshot.encode();
                let again = CallSnapshot::decode(&bytes).map(|s| s.encode());
                assert_eq!(again, Some(bytes), "a call in progress changed");
            }
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut tracker = Tracker::new("sh-01", CALL_TIMEOUT).with_max_calls(MAX_CALLS);
    let mut ended = HashSet::new();
    let mut now = T0;
    for chunk in data.chunks_exact(5) {
        // The fifth byte moves the clock: mostly milliseconds, sometimes minutes.
        now += match chunk[4] {
            0..=239 => i64::from(chunk[4]),
            n => i64::from(n - 239) * 60_000,
        };
        let b = [chunk[0], chunk[1], chunk[2], chunk[3]];
        if b[0] == 0xff {
            let out = tracker.tick(UnixMs(now));
            check(&tracker, out, &mut ended);
        } else {
            let out = tracker.on_event(&event(now, b));
            check(&tracker, out, &mut ended);
        }
        assert!(
            tracker.len() <= MAX_CALLS,
            "{} calls tracked",
            tracker.len()
        );
    }
    let out = tracker.tick(UnixMs(now + 24 * 3_600_000));
    check(&tracker, out, &mut ended);
    assert!(
        tracker.is_empty(),
        "{} calls left open forever",
        tracker.len()
    );
});
