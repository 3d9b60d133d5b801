//! Crash tests (SPEC §8), on both engines: `kill -9` sipedge under a steady SIPp load,
//! restart it 1.5 s later on the same data dir while the calls go on, then check from the terminal's
//! message log which calls had ended when, against the stored CDRs:
//!
//! - a call whose BYE was answered more than `store.flush_interval` (plus the commit's own
//!   time: [`FLUSH_MS`]) before the kill has
//!   exactly one CDR, answered by the caller;
//! - a call answered more than the flush interval before the kill and hung up after it is
//!   closed by its BYE after the restart (answered, caller) or, when every copy of the BYE
//!   was lost, by `sip.call_timeout` (timeout, sipedge);
//! - no call ever has two CDRs.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.

mod support;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::Sipedge;
use support::cdrs::{self, ms};
use support::config::{Config, Sip};
use support::msglog::{self, Logged};
use support::sipp::{Sipp, Transport, is_bound};
use support::wait_until;

/// How long before a kill a call's end may still be lost: the store's `flush_interval`
/// (100 ms, set below) plus 100 ms for the hand-off to tracking and the commit's fsync,
/// which on this shared machine were seen to take a call ended 182 ms before a kill with them
/// (SPEC §8 allows 200 ms).
const FLUSH_MS: i64 = 200;
/// `sip.call_timeout` of the test config, short so that lost BYEs close soon.
const CALL_TIMEOUT_S: u64 = 6;
/// Calls, rate and talk time of the load: 6 s of new calls lasting 2 s each.
const CALLS: u32 = 60;
const RATE: u32 = 10;
const TALK_MS: u32 = 2_000;
/// When the kill comes after the load started: some calls over, many in progress.
const KILL_AFTER: Duration = Duration::from_millis(4_500);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// What the terminal saw of one call.
#[derive(Debug, Default)]
struct Seen {
    /// The first INVITE left.
    invite_sent_at: Option<i64>,
    /// The 200 to the INVITE arrived.
    answered_at: Option<i64>,
    /// The first BYE left.
    bye_sent_at: Option<i64>,
    /// The 200 to the BYE arrived.
    bye_ok_at: Option<i64>,
}

fn calls_seen(log: &[Logged]) -> HashMap<String, Seen> {
    let mut out: HashMap<String, Seen> = HashMap::new();
    for m in log {
        let seen = out.entry(m.call_id.clone()).or_default();
        match (m.sent, m.method(), m.status(), m.cseq_method.as_str()) {
            (true, Some("INVITE"), _, _) => {
                seen.invite_sent_at.get_or_insert(m.at_ms);
            }
            (false, None, Some(200), "INVITE") => {
                seen.answered_at.get_or_insert(m.at_ms);
            }
            (true, Some("BYE"), _, _) => {
                seen.bye_sent_at.get_or_insert(m.at_ms);
            }
            (false, None, Some(200), "BYE") => {
                seen.bye_ok_at.get_or_insert(m.at_ms);
            }
            _ => {}
        }
    }
    out
}

/// How long sipedge stays dead: longer than a BYE's one resend.
const DOWNTIME: Duration = Duration::from_millis(1_500);

/// Ms either side of the call timeout where a BYE and the timeout race.
const MARGIN_MS: i64 = 300;
/// How often call tracking looks for calls whose timers ran out: a BYE after the deadline
/// but before the tick still closes its call.
const TICK_MS: i64 = 1_000;

/// A call closed by the caller's BYE, and one closed by `sip.call_timeout`.
const BY_BYE: (&str, &str) = ("answered", "caller");
const BY_TIMEOUT: (&str, &str) = ("timeout", "sipedge");

/// How a connected call whose BYE a kill may have delayed must close: by that BYE when it was
/// answered well within `call_timeout` of the call's answer, by the timeout when it was
/// answered well after the timeout and the tick that follows it (or never), and either way
/// (`None`) when the two raced.
fn expected_close(call: &Seen) -> Option<(&'static str, &'static str)> {
    let timeout_ms = CALL_TIMEOUT_S as i64 * 1000;
    match (call.answered_at, call.bye_ok_at) {
        (Some(answer), Some(ok)) if ok - answer < timeout_ms - MARGIN_MS => Some(BY_BYE),
        (Some(answer), Some(ok)) if ok - answer < timeout_ms + TICK_MS + MARGIN_MS => None,
        _ => Some(BY_TIMEOUT),
    }
}

fn crash_under_load(engine: &str) {
    let config = Config::new("test")
        .sip(Sip::one_port())
        .set("store", "engine", &format!("\"{engine}\""))
        .set("sip", "call_timeout", &format!("\"{CALL_TIMEOUT_S}s\""))
        .set("store", "flush_interval", "\"100ms\"");
    let mut proxy = Sipedge::start(&config);
    let uas = Sipp::uas("call_uas", proxy.sip().upstream_addr())
        .transport(Transport::Udp)
        .calls(CALLS)
        .timeout(Duration::from_secs(40))
        .spawn();
    assert!(
        wait_until(Duration::from_secs(5), || is_bound(
            proxy.sip().upstream_addr(),
            Transport::Udp
        )),
        "the UAS never bound {}",
        proxy.sip().upstream_addr()
    );
    let uac = Sipp::uac("call_uac", proxy.sip().addr())
        .transport(Transport::Udp)
        .calls(CALLS)
        .rate(RATE)
        .pause_ms(TALK_MS)
        .timeout(Duration::from_secs(40))
        // One resend of a BYE, 500 ms later: the BYEs of the first part of the downtime are
        // lost for good (their calls must close by timeout), the later ones get through.
        .arg("-max_non_invite_retrans")
        .arg("1")
        // Nor a new BYE to abort a call whose BYE timed out (a default behaviour).
        .arg("-nd")
        .spawn();
    std::thread::sleep(KILL_AFTER);
    // Sending the signal takes a few ms (a `kill` process): the proxy died in between.
    let kill_at = now_ms();
    proxy.kill_hard();
    let dead_at = now_ms();
    std::thread::sleep(DOWNTIME);
    proxy.restart();
    let restarted_at = now_ms();
    let uac = uac.wait();
    drop(uas);

    let seen = calls_seen(&msglog::parse(&uac.messages));
    // Lost BYEs close by timeout: wait for the timeout, the one-second tick and a flush.
    std::thread::sleep(Duration::from_secs(CALL_TIMEOUT_S + 2));
    let api = proxy.addr("api");
    let listed = cdrs::by_call_id(&cdrs::all(api));
    let what = format!("{engine}: killed at {kill_at}, listening again at {restarted_at}");
    let report = || format!("{}\n{}", proxy.report(), uac.report());

    for (call_id, found) in &listed {
        assert!(
            found.len() == 1,
            "{what}: call {call_id} has {} CDRs: {found:#?}\n{}",
            found.len(),
            report()
        );
    }
    let (mut ended_before, mut closed_by_bye, mut closed_by_timeout) = (0, 0, 0);
    for (call_id, call) in &seen {
        let cdr: Option<&Value> = listed.get(call_id).and_then(|v| v.first());
        let ended_before_kill = call.bye_ok_at.is_some_and(|t| t < kill_at - FLUSH_MS);
        let in_progress = call.answered_at.is_some_and(|t| t < kill_at - FLUSH_MS)
            && call.bye_sent_at.is_some_and(|t| t > dead_at);
        let expected = if ended_before_kill {
            ended_before += 1;
            BY_BYE
        } else if let Some(close) = expected_close(call).filter(|_| in_progress) {
            if close == BY_BYE {
                closed_by_bye += 1;
            } else {
                closed_by_timeout += 1;
            }
            close
        } else {
            // Ended or answered within the flush interval of the kill, or a BYE that came
            // about when the timeout fell: either outcome is right, once.
            continue;
        };
        let cdr = cdr.unwrap_or_else(|| {
            panic!("{what}: call {call_id} ({call:?}) has no CDR\n{}", report())
        });
        let got = (
            cdr["disposition"].as_str().unwrap_or_default(),
            cdr["ended_by"].as_str().unwrap_or_default(),
        );
        assert_eq!(
            got,
            expected,
            "{what}: call {call_id} ({call:?}): {cdr:#}\n{}",
            report()
        );
        assert_eq!(
            cdr["status"], "connected",
            "{what}: call {call_id}: {cdr:#}"
        );
        let end = ms(cdr, "end_time").unwrap_or_default();
        if expected == BY_BYE && !ended_before_kill {
            assert!(
                end >= dead_at,
                "{what}: call {call_id} closed before the kill although its BYE came after: {cdr:#}"
            );
        }
        if ended_before_kill {
            assert!(
                end < kill_at,
                "{what}: call {call_id} ended after the kill: {cdr:#}"
            );
        }
    }
    eprintln!(
        "{what}: {} calls seen; {ended_before} ended before the kill, {closed_by_bye} closed \
         by their BYE after the restart, {closed_by_timeout} by timeout",
        seen.len()
    );
    assert!(
        ended_before > 0 && closed_by_bye > 0 && closed_by_timeout > 0,
        "{what}: the kill did not fall mid-load ({ended_before} calls ended before it, \
         {closed_by_bye} closed by BYE, {closed_by_timeout} by timeout)\n{}",
        report()
    );
}

#[test]
fn kill_9_under_load_on_redb() {
    crash_under_load("redb");
}

#[test]
fn kill_9_under_load_on_sled() {
    crash_under_load("sled");
}

/// Kills in the loop, and how long the load runs for them.
const KILLS: usize = 20;
const LOOP_CALLS: u32 = 400;
const LOOP_RATE: u32 = 10;

/// Whether a kill, known only to have landed within `(sent, dead)` (the signal goes through
/// `kill(1)`, so the process may relay for a few ms after `sent`; seen in CI: an INVITE sent
/// 1 ms after `sent` relayed by the dying process, its 200 by the next one, which rightly
/// tracked no call), may have fallen in `[from, to + FLUSH_MS]`, when what happened may not be
/// on disk.
fn killed_within(kills: &[(i64, i64)], from: i64, to: i64) -> bool {
    kills
        .iter()
        .any(|&(sent, dead)| dead >= from && sent <= to + FLUSH_MS)
}

/// SPEC §8 under repeated crashes (issue 13): 20 `kill -9`s at random moments of a steady
/// load, each followed by a restart on the same store. The store must open every time, no
/// call may have two CDRs, and every call that was answered and hung up (as the terminal's
/// own message log says) with no kill while it was being set up (its INVITE may have been
/// relayed by one process and its answer by the next) and none within a flush interval of
/// its answer or its end has its CDR, answered and ended by the caller. Kills while it was
/// connected are the point: such a call is resumed from its saved state.
#[test]
fn kill_9_twenty_times_under_load_on_redb() {
    let config = Config::new("test")
        .sip(Sip::one_port())
        .set("sip", "call_timeout", &format!("\"{CALL_TIMEOUT_S}s\""))
        .set("store", "flush_interval", "\"100ms\"");
    let mut proxy = Sipedge::start(&config);
    let uas = Sipp::uas("call_uas", proxy.sip().upstream_addr())
        .transport(Transport::Udp)
        .calls(LOOP_CALLS)
        .timeout(Duration::from_secs(120))
        .spawn();
    assert!(
        wait_until(Duration::from_secs(5), || is_bound(
            proxy.sip().upstream_addr(),
            Transport::Udp
        )),
        "the UAS never bound {}",
        proxy.sip().upstream_addr()
    );
    let uac = Sipp::uac("call_uac", proxy.sip().addr())
        .transport(Transport::Udp)
        .calls(LOOP_CALLS)
        .rate(LOOP_RATE)
        .pause_ms(1_000)
        .timeout(Duration::from_secs(120))
        .arg("-nd")
        .spawn();
    let mut seed = now_ms() as u64 | 1;
    eprintln!("kill loop: random seed {seed}");
    let mut kills = Vec::with_capacity(KILLS);
    std::thread::sleep(Duration::from_millis(1_500));
    for _ in 0..KILLS {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 900));
        let sent = now_ms();
        proxy.kill_hard();
        kills.push((sent, now_ms()));
        std::thread::sleep(Duration::from_millis(200));
        // `restart` fails the test unless the store opens and every listener is back.
        proxy.restart();
    }
    let uac = uac.wait();
    drop(uas);
    let seen = calls_seen(&msglog::parse(&uac.messages));
    std::thread::sleep(Duration::from_secs(CALL_TIMEOUT_S + 2));
    let listed = cdrs::by_call_id(&cdrs::all(proxy.addr("api")));
    let report = || format!("kills at {kills:?}\n{}\n{}", proxy.report(), uac.report());
    for (call_id, found) in &listed {
        assert_eq!(
            found.len(),
            1,
            "call {call_id} has {} CDRs: {found:#?}\n{}",
            found.len(),
            report()
        );
    }
    let (mut checked, mut late_byes) = (0, 0);
    for (call_id, call) in &seen {
        let (Some(invited), Some(answered), Some(bye_ok)) =
            (call.invite_sent_at, call.answered_at, call.bye_ok_at)
        else {
            continue;
        };
        if killed_within(&kills, invited, answered) || killed_within(&kills, bye_ok, bye_ok) {
            continue;
        }
        // A call in progress across a kill comes back from its saved state; a BYE that
        // arrived while sipedge was down and got through on a resend is the caller's too,
        // unless the kills ate its resends until `call_timeout` had run out (seen in CI: a
        // BYE's first four copies fell into four restarts, the fifth came 8.5 s after the
        // answer). Between the deadline and the next one-second tick either close is right.
        let Some(expected) = expected_close(call) else {
            continue;
        };
        if expected == BY_TIMEOUT {
            late_byes += 1;
        }
        let cdr = listed
            .get(call_id)
            .and_then(|v| v.first())
            .unwrap_or_else(|| {
                panic!(
                    "call {call_id} ({call:?}) ended cleanly but has no CDR\n{}",
                    report()
                )
            });
        assert_eq!(
            (cdr["disposition"].as_str(), cdr["ended_by"].as_str()),
            (Some(expected.0), Some(expected.1)),
            "call {call_id} ({call:?}): {cdr:#}\n{}",
            report()
        );
        checked += 1;
    }
    eprintln!(
        "kill loop: {KILLS} kills, {} calls seen, {checked} checked clean ({late_byes} of them \
         timed out with their BYE's resends lost), {} CDRs in all",
        seen.len(),
        listed.len()
    );
    assert!(
        checked > LOOP_CALLS as usize / 4,
        "too few calls to judge: {checked}\n{}",
        report()
    );
}
