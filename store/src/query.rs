//! CDR queries (SPEC §6): the filter, the plan that picks an index for it, newest-first pages
//! and statistics.
//!
//! Plans, by filter:
//! - a caller or called number: that number's index, read hour by hour from the newest; each
//!   hour's matches (type and status checked from the index value) sorted newest first in
//!   memory, then the CDRs fetched;
//! - only type and/or status: the kind index, one backward run per matching kind, merged;
//! - nothing but time: the `cdrs` table backwards.
//!
//! Statistics without a number filter add up the 15-minute rollups for the whole slots of each
//! bucket and read CDRs only for the ragged edges; with a number filter they add up the number
//! index's values, which carry kind and talk time.

use std::ops::{Bound, ControlFlow};

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::cdr::{CallStatus, CallType, Cdr, CdrId, UnixMs};
use crate::codec::{self, Kind};
use crate::engine::{Direction, Snapshot, Table, prefix_range};
use crate::keys;

/// How a caller or called number is matched.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberMatch {
    /// The whole number.
    Exact(String),
    /// Numbers starting with this (the API's trailing `*`).
    Prefix(String),
}

impl NumberMatch {
    pub fn matches(&self, number: &str) -> bool {
        self.matches_bytes(number.as_bytes())
    }

    fn matches_bytes(&self, number: &[u8]) -> bool {
        match self {
            NumberMatch::Exact(n) => number == n.as_bytes(),
            NumberMatch::Prefix(p) => number.starts_with(p.as_bytes()),
        }
    }

    fn text(&self) -> &str {
        match self {
            NumberMatch::Exact(n) | NumberMatch::Prefix(n) => n,
        }
    }
}

/// The query conditions of SPEC §6, shared by pages, export and statistics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CdrFilter {
    /// Calls that started at or after this…
    pub start: UnixMs,
    /// …and before this: `[start, end)` on the start time (the one in the CDR's id).
    pub end: UnixMs,
    /// Only audio or only video calls.
    pub call_type: Option<CallType>,
    /// A condition on the caller's number.
    pub caller: Option<NumberMatch>,
    /// A condition on the called number.
    pub called: Option<NumberMatch>,
    /// Only connected or only not connected calls.
    pub status: Option<CallStatus>,
}

impl CdrFilter {
    /// Every call that started in `[start, end)`.
    pub fn between(start: UnixMs, end: UnixMs) -> Self {
        CdrFilter {
            start,
            end,
            call_type: None,
            caller: None,
            called: None,
            status: None,
        }
    }

    /// The definition of a match, which every plan must agree with.
    pub fn matches(&self, cdr: &Cdr) -> bool {
        let start = cdr.id.start();
        start >= self.start
            && start < self.end
            && self.kind_matches(Kind::of(cdr))
            && self.caller.as_ref().is_none_or(|m| m.matches(&cdr.caller))
            && self.called.as_ref().is_none_or(|m| m.matches(&cdr.called))
    }

    fn kind_matches(&self, kind: Kind) -> bool {
        self.call_type.is_none_or(|t| t == kind.call_type())
            && self.status.is_none_or(|s| s == kind.status())
    }

    fn numbers_match(&self, cdr: &Cdr) -> bool {
        self.caller.as_ref().is_none_or(|m| m.matches(&cdr.caller))
            && self.called.as_ref().is_none_or(|m| m.matches(&cdr.called))
    }
}

/// Which index answers a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan<'f> {
    Scan,
    Kinds(Vec<Kind>),
    Number {
        table: Table,
        pattern: &'f NumberMatch,
    },
}

/// Picks the index: a number beats type/status (far more selective); an exact number beats a
/// prefix, a longer text beats a shorter one, the caller wins ties.
pub(crate) fn plan(filter: &CdrFilter) -> Plan<'_> {
    let rank = |m: &NumberMatch| (matches!(m, NumberMatch::Exact(_)), m.text().len());
    let number = match (&filter.caller, &filter.called) {
        (Some(a), Some(b)) if rank(b) > rank(a) => Some((Table::ByCalled, b)),
        (Some(a), _) => Some((Table::ByCaller, a)),
        (None, Some(b)) => Some((Table::ByCalled, b)),
        (None, None) => None,
    };
    match number {
        Some((table, pattern)) => Plan::Number { table, pattern },
        None if filter.call_type.is_none() && filter.status.is_none() => Plan::Scan,
        None => Plan::Kinds(
            Kind::ALL
                .into_iter()
                .filter(|k| filter.kind_matches(*k))
                .collect(),
        ),
    }
}

/// Ids in `[lo, hi)`; the bounds of a query in id space.
#[derive(Debug, Clone, Copy)]
struct IdRange {
    lo: CdrId,
    hi: CdrId,
}

impl IdRange {
    fn of(start: UnixMs, end: UnixMs, after: Option<CdrId>) -> Self {
        let hi = keys::lowest_id(end);
        IdRange {
            lo: keys::lowest_id(start),
            hi: after.map_or(hi, |a| a.min(hi)),
        }
    }

    fn contains(self, id: CdrId) -> bool {
        self.lo <= id && id < self.hi
    }

    fn is_empty(self) -> bool {
        self.lo >= self.hi
    }

    fn key_range(self, prefix: &[u8]) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let with = |id: CdrId| [prefix, &keys::id_key(id)].concat();
        (
            Bound::Included(with(self.lo)),
            Bound::Excluded(with(self.hi)),
        )
    }

    /// The hours to visit (to be walked newest first), clamped to the hours that hold data at
    /// all so that an open-ended filter does not walk empty centuries.
    fn hours(
        self,
        snap: &mut dyn Snapshot,
    ) -> Result<Option<std::ops::RangeInclusive<u32>>, StoreError> {
        let Some((oldest, newest)) = data_bounds(snap)? else {
            return Ok(None);
        };
        let lo = self.lo.max(oldest);
        let hi = self.hi.min(CdrId(newest.0.saturating_add(1)));
        if lo >= hi {
            return Ok(None);
        }
        let top = keys::hour_of(CdrId(hi.0 - 1).start());
        Ok(Some(keys::hour_of(lo.start())..=top))
    }
}

/// The oldest and newest CDR ids in the store.
fn data_bounds(snap: &mut dyn Snapshot) -> Result<Option<(CdrId, CdrId)>, StoreError> {
    let mut edge = |direction| -> Result<Option<CdrId>, StoreError> {
        let mut found = None;
        snap.scan(
            Table::Cdrs,
            (Bound::Unbounded, Bound::Unbounded),
            direction,
            &mut |k, _| {
                found = keys::id_of(k);
                Ok(ControlFlow::Break(()))
            },
        )?;
        Ok(found)
    };
    let oldest = edge(Direction::Forward)?;
    let newest = edge(Direction::Backward)?;
    Ok(oldest.zip(newest))
}

fn bad_key(table: Table) -> StoreError {
    StoreError::Corrupt {
        what: "index key",
        detail: format!("malformed key in {}", table.name()),
    }
}

/// The CDR an index entry names; `None` when it is gone, which happens on sled (no read
/// snapshots) when retention deletes it between the index read and this one.
fn fetch(snap: &mut dyn Snapshot, id: CdrId) -> Result<Option<Cdr>, StoreError> {
    match snap.get(Table::Cdrs, &keys::id_key(id))? {
        Some(value) => codec::decode_cdr(id, &value).map(Some),
        None => Ok(None),
    }
}

/// One index entry of a number plan that passed the number and kind checks.
struct Hit {
    id: CdrId,
    kind: Kind,
    talk_ms: u64,
}

/// The entries of `hour` in a number index that match `pattern`, `range` and the kind filter,
/// newest first.
fn number_hits(
    snap: &mut dyn Snapshot,
    table: Table,
    pattern: &NumberMatch,
    hour: u32,
    range: IdRange,
    filter: &CdrFilter,
) -> Result<Vec<Hit>, StoreError> {
    let mut hits = Vec::new();
    let prefix = keys::number_prefix(hour, pattern.text());
    snap.scan(
        table,
        prefix_range(&prefix),
        Direction::Forward,
        &mut |k, v| {
            let (number, id) = keys::split_number_key(k).ok_or_else(|| bad_key(table))?;
            if pattern.matches_bytes(number) && range.contains(id) {
                let (kind, talk_ms) = codec::decode_index_value(v)?;
                if filter.kind_matches(kind) {
                    hits.push(Hit { id, kind, talk_ms });
                }
            }
            Ok(ControlFlow::Continue(()))
        },
    )?;
    hits.sort_unstable_by_key(|h| std::cmp::Reverse(h.id));
    Ok(hits)
}

/// Up to `want` CDRs matching `filter` with ids below `after`, newest first.
pub(crate) fn newest_first(
    snap: &mut dyn Snapshot,
    filter: &CdrFilter,
    after: Option<CdrId>,
    want: usize,
) -> Result<Vec<Cdr>, StoreError> {
    let range = IdRange::of(filter.start, filter.end, after);
    let mut out = Vec::new();
    if range.is_empty() || want == 0 {
        return Ok(out);
    }
    match plan(filter) {
        Plan::Scan => {
            snap.scan(
                Table::Cdrs,
                range.key_range(&[]),
                Direction::Backward,
                &mut |k, v| {
                    let id = keys::id_of(k).ok_or_else(|| bad_key(Table::Cdrs))?;
                    out.push(codec::decode_cdr(id, v)?);
                    Ok(if out.len() >= want {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    })
                },
            )?;
        }
        Plan::Kinds(kinds) => {
            let mut ids = Vec::new();
            for kind in kinds {
                let mut taken = 0;
                snap.scan(
                    Table::ByKind,
                    range.key_range(&[kind.0]),
                    Direction::Backward,
                    &mut |k, _| {
                        let id = k
                            .get(1..)
                            .and_then(keys::id_of)
                            .ok_or_else(|| bad_key(Table::ByKind))?;
                        ids.push(id);
                        taken += 1;
                        Ok(if taken >= want {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        })
                    },
                )?;
            }
            ids.sort_unstable_by(|a, b| b.cmp(a));
            ids.truncate(want);
            for id in ids {
                out.extend(fetch(snap, id)?);
            }
        }
        Plan::Number { table, pattern } => {
            for hour in range.hours(snap)?.into_iter().flatten().rev() {
                for hit in number_hits(snap, table, pattern, hour, range, filter)? {
                    let Some(cdr) = fetch(snap, hit.id)? else {
                        continue;
                    };
                    if filter.numbers_match(&cdr) {
                        out.push(cdr);
                        if out.len() >= want {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Call counts of one call type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Every call.
    pub calls: u64,
    /// Calls whose initial INVITE got a 2xx.
    pub connected: u64,
    /// Summed talk time of the connected calls, in ms (exact, unlike summed seconds).
    pub talk_ms: u64,
}

impl Counters {
    fn add(&mut self, other: Counters) {
        self.calls += other.calls;
        self.connected += other.connected;
        self.talk_ms += other.talk_ms;
    }
}

/// Counts per call type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounters {
    /// Audio calls.
    pub audio: Counters,
    /// Video calls.
    pub video: Counters,
}

impl TypeCounters {
    /// Audio and video together.
    pub fn all(&self) -> Counters {
        let mut all = self.audio;
        all.add(self.video);
        all
    }

    fn add_kind(&mut self, kind: Kind, calls: u64, talk_ms: u64) {
        let connected = if kind.status() == CallStatus::Connected {
            calls
        } else {
            0
        };
        let c = Counters {
            calls,
            connected,
            talk_ms,
        };
        match kind.call_type() {
            CallType::Audio => self.audio.add(c),
            CallType::Video => self.video.add(c),
        }
    }

    fn add(&mut self, other: &TypeCounters) {
        self.audio.add(other.audio);
        self.video.add(other.video);
    }
}

/// One bucket of statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsBucket {
    /// The bucket's first instant, as the caller gave it.
    pub start: UnixMs,
    /// The instant after the bucket (the next bucket's start).
    pub end: UnixMs,
    /// Calls of the filter that started in the bucket.
    pub counts: TypeCounters,
}

/// The answer of [`crate::Store::stats`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResult {
    /// The sum of the buckets, so the two always agree.
    pub totals: TypeCounters,
    /// One per pair of consecutive edges.
    pub buckets: Vec<StatsBucket>,
}

/// Statistics of `filter` in the buckets `[edges[i], edges[i+1])`; calls outside
/// `[edges[0], edges[last])` are not counted.
pub(crate) fn stats(
    snap: &mut dyn Snapshot,
    filter: &CdrFilter,
    edges: &[UnixMs],
) -> Result<StatsResult, StoreError> {
    if edges.len() < 2 || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(StoreError::BadBuckets);
    }
    let mut buckets: Vec<StatsBucket> = edges
        .windows(2)
        .map(|w| StatsBucket {
            start: w[0],
            end: w[1],
            counts: TypeCounters::default(),
        })
        .collect();
    let clip = |lo: UnixMs, hi: UnixMs| (lo.max(filter.start), hi.min(filter.end));
    match plan(filter) {
        Plan::Number { table, pattern } => {
            let (lo, hi) = clip(edges[0], edges[edges.len() - 1]);
            let range = IdRange::of(lo, hi, None);
            if !range.is_empty() {
                let check_other = filter.caller.is_some() && filter.called.is_some();
                for hour in range.hours(snap)?.into_iter().flatten().rev() {
                    for hit in number_hits(snap, table, pattern, hour, range, filter)? {
                        if check_other
                            && !fetch(snap, hit.id)?.is_some_and(|c| filter.numbers_match(&c))
                        {
                            continue;
                        }
                        let at = hit.id.start();
                        let i = edges.partition_point(|e| *e <= at).saturating_sub(1);
                        if let Some(bucket) = buckets.get_mut(i) {
                            bucket.counts.add_kind(hit.kind, 1, hit.talk_ms);
                        }
                    }
                }
            }
        }
        Plan::Scan | Plan::Kinds(_) => {
            for bucket in &mut buckets {
                let (lo, hi) = clip(bucket.start, bucket.end);
                if lo < hi {
                    bucket.counts = time_only_counts(snap, filter, lo, hi)?;
                }
            }
        }
    }
    let mut totals = TypeCounters::default();
    for bucket in &buckets {
        totals.add(&bucket.counts);
    }
    Ok(StatsResult { totals, buckets })
}

/// Counts of `[lo, hi)` under a filter without numbers: rollups for whole slots, CDRs for the
/// parts before the first and after the last whole slot.
fn time_only_counts(
    snap: &mut dyn Snapshot,
    filter: &CdrFilter,
    lo: UnixMs,
    hi: UnixMs,
) -> Result<TypeCounters, StoreError> {
    let mut counts = TypeCounters::default();
    let first_whole = keys::slot_of(UnixMs(lo.0.saturating_add(keys::SLOT_MS - 1)));
    let end_whole = keys::slot_of(hi);
    let (a, b) = (keys::slot_start(first_whole), keys::slot_start(end_whole));
    if lo.0 < 0 || first_whole >= end_whole || a < lo || b > hi {
        scan_counts(snap, filter, lo, hi, &mut counts)?;
        return Ok(counts);
    }
    scan_counts(snap, filter, lo, a, &mut counts)?;
    let range = (
        Bound::Included(keys::rollup_key(first_whole, Kind(0)).to_vec()),
        Bound::Excluded(keys::rollup_key(end_whole, Kind(0)).to_vec()),
    );
    snap.scan(Table::Rollup, range, Direction::Forward, &mut |k, v| {
        let (_, kind) = keys::split_rollup_key(k).ok_or_else(|| bad_key(Table::Rollup))?;
        let kind = Kind(kind);
        if kind.0 < 4 && filter.kind_matches(kind) {
            let c = codec::decode_counts(v)?;
            counts.add_kind(kind, c.calls, c.talk_ms);
        }
        Ok(ControlFlow::Continue(()))
    })?;
    scan_counts(snap, filter, b, hi, &mut counts)?;
    Ok(counts)
}

fn scan_counts(
    snap: &mut dyn Snapshot,
    filter: &CdrFilter,
    lo: UnixMs,
    hi: UnixMs,
    counts: &mut TypeCounters,
) -> Result<(), StoreError> {
    let range = IdRange::of(lo, hi, None);
    if range.is_empty() {
        return Ok(());
    }
    snap.scan(
        Table::Cdrs,
        range.key_range(&[]),
        Direction::Forward,
        &mut |k, v| {
            let kind = codec::cdr_kind(v)?;
            if filter.kind_matches(kind) {
                let id = keys::id_of(k).ok_or_else(|| bad_key(Table::Cdrs))?;
                let talk = codec::talk_ms(&codec::decode_cdr(id, v)?);
                counts.add_kind(kind, 1, talk);
            }
            Ok(ControlFlow::Continue(()))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(
        caller: Option<NumberMatch>,
        called: Option<NumberMatch>,
        t: Option<CallType>,
        s: Option<CallStatus>,
    ) -> CdrFilter {
        CdrFilter {
            start: UnixMs(0),
            end: UnixMs(10),
            call_type: t,
            caller,
            called,
            status: s,
        }
    }

    fn check(f: CdrFilter, expected: Plan<'_>) {
        assert_eq!(plan(&f), expected, "{f:?}");
    }

    #[test]
    fn plans() {
        let exact = NumberMatch::Exact("1".into());
        let long_prefix = NumberMatch::Prefix("1380".into());
        let short_prefix = NumberMatch::Prefix("13".into());
        check(filter(None, None, None, None), Plan::Scan);
        check(
            filter(None, None, Some(CallType::Video), None),
            Plan::Kinds(vec![Kind(1), Kind(3)]),
        );
        check(
            filter(None, None, None, Some(CallStatus::Connected)),
            Plan::Kinds(vec![Kind(2), Kind(3)]),
        );
        check(
            filter(
                None,
                None,
                Some(CallType::Audio),
                Some(CallStatus::NotConnected),
            ),
            Plan::Kinds(vec![Kind(0)]),
        );
        check(
            filter(
                Some(short_prefix.clone()),
                None,
                Some(CallType::Audio),
                None,
            ),
            Plan::Number {
                table: Table::ByCaller,
                pattern: &short_prefix,
            },
        );
        check(
            filter(None, Some(short_prefix.clone()), None, None),
            Plan::Number {
                table: Table::ByCalled,
                pattern: &short_prefix,
            },
        );
        check(
            filter(Some(long_prefix.clone()), Some(exact.clone()), None, None),
            Plan::Number {
                table: Table::ByCalled,
                pattern: &exact,
            },
        );
        check(
            filter(
                Some(long_prefix.clone()),
                Some(short_prefix.clone()),
                None,
                None,
            ),
            Plan::Number {
                table: Table::ByCaller,
                pattern: &long_prefix,
            },
        );
        check(
            filter(Some(exact.clone()), Some(exact.clone()), None, None),
            Plan::Number {
                table: Table::ByCaller,
                pattern: &exact,
            },
        );
    }

    #[test]
    fn number_matching() {
        let cases = [
            (NumberMatch::Exact("138".into()), "138", true),
            (NumberMatch::Exact("138".into()), "1380", false),
            (NumberMatch::Prefix("138".into()), "1380", true),
            (NumberMatch::Prefix("138".into()), "13", false),
            (NumberMatch::Prefix(String::new()), "", true),
        ];
        for (m, number, expected) in cases {
            assert_eq!(m.matches(number), expected, "{m:?} {number}");
        }
    }
}
