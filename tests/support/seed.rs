//! Generated call records written straight into a store, so the API can be tested (and
//! benchmarked) on known data: the tests compute the expected answers from the same list.

use std::path::Path;
use std::time::Duration;

use sipedge_store::{
    Alarm, CallStatus, CallType, Cdr, CdrId, Disposition, EndedBy, Engine, LogEntry, Source, Store,
    StoreConfig, Transport, UnixMs, WriteOp,
};

/// Callers' numbers start with one of these, so prefix filters select known shares.
pub const CALLER_PREFIXES: [&str; 4] = ["1380", "1391", "1500", "1862"];
/// The call centre's service numbers.
pub const CALLED: [&str; 3] = ["95566", "95588", "400800"];

/// A small deterministic generator (SplitMix64): the same seed gives the same calls.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Call number `i` of node `node`, starting at `start`.
pub fn cdr(rng: &mut Rng, node: &str, i: u64, start: UnixMs) -> Cdr {
    let call_id = format!("call-{i}@gen");
    let caller = format!(
        "{}{:04}",
        CALLER_PREFIXES[rng.below(4) as usize],
        rng.below(10_000)
    );
    let called = CALLED[rng.below(3) as usize].to_owned();
    let call_type = if rng.below(3) == 0 {
        CallType::Video
    } else {
        CallType::Audio
    };
    let ring = UnixMs(start.0 + 500 + rng.below(3_000) as i64);
    let connected = rng.below(10) < 6;
    let (status, disposition, sip_code, answer, end, ended_by) = if connected {
        let answer = UnixMs(ring.0 + 1_000 + rng.below(10_000) as i64);
        let end = UnixMs(answer.0 + 1_000 + rng.below(600_000) as i64);
        let by = if rng.below(2) == 0 {
            EndedBy::Caller
        } else {
            EndedBy::Callee
        };
        (
            CallStatus::Connected,
            Disposition::Answered,
            Some(200),
            Some(answer),
            end,
            by,
        )
    } else {
        let (disposition, code, by) = match rng.below(4) {
            0 => (Disposition::Busy, Some(486), EndedBy::Callee),
            1 => (Disposition::Cancelled, Some(487), EndedBy::Caller),
            2 => (Disposition::NoAnswer, Some(480), EndedBy::Callee),
            _ => (Disposition::Failed, Some(503), EndedBy::Callee),
        };
        let end = UnixMs(ring.0 + rng.below(30_000) as i64);
        (CallStatus::NotConnected, disposition, code, None, end, by)
    };
    Cdr {
        id: CdrId::new(start, node, &call_id),
        node: node.to_owned(),
        caller_uri: format!("sip:{caller}@terminal.example"),
        called_uri: format!("sip:{called}@bank.example"),
        call_id,
        caller,
        called,
        call_type,
        video_started_at: (call_type == CallType::Video).then_some(answer.unwrap_or(ring)),
        status,
        disposition,
        sip_code,
        ended_by,
        start_time: start,
        ring_time: Some(ring),
        answer_time: answer,
        end_time: end,
        transport: if i.is_multiple_of(2) {
            Transport::Udp
        } else {
            Transport::Tcp
        },
        source: Source::Proxy,
        terminal: format!("198.51.100.{}:{}", i % 250 + 1, 40_000 + i % 20_000),
    }
}

/// `n` calls with start times spread over `[from, from + span_ms)`, in start order.
pub fn cdrs(node: &str, from: UnixMs, span_ms: i64, n: u64, seed: u64) -> Vec<Cdr> {
    let mut rng = Rng(seed);
    let mut starts: Vec<i64> = (0..n)
        .map(|_| from.0 + rng.below(span_ms.max(1) as u64) as i64)
        .collect();
    starts.sort_unstable();
    starts
        .into_iter()
        .enumerate()
        .map(|(i, s)| cdr(&mut rng, node, i as u64, UnixMs(s)))
        .collect()
}

/// What to put into a fresh store.
#[derive(Debug, Default)]
pub struct Seed {
    pub cdrs: Vec<Cdr>,
    pub logs: Vec<(CdrId, LogEntry)>,
    pub alarms: Vec<Alarm>,
}

/// Writes `seed` into a redb store under `data_dir` and closes it, so that sipedge can open it.
pub fn write(data_dir: &Path, seed: &Seed) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let store = Store::open(data_dir, Engine::Redb, StoreConfig::default()).expect("open store");
    let writer = store.writer();
    for cdr in &seed.cdrs {
        writer
            .submit(WriteOp::PutCdr(Box::new(cdr.clone())))
            .expect("submit");
    }
    for (id, entry) in &seed.logs {
        writer
            .submit(WriteOp::AppendLog(*id, entry.clone()))
            .expect("submit");
    }
    for alarm in &seed.alarms {
        writer
            .submit(WriteOp::PutAlarm(alarm.clone()))
            .expect("submit");
    }
    store.flush(Duration::from_secs(120)).expect("flush");
}
