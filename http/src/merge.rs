//! The pure half of the cluster view (issue 12): several nodes' answers made into one. A
//! merged CDR page and the cursor that resumes it on every node, statistics summed bucket by
//! bucket, rows of other nodes shown in this node's zone, and the query a peer is sent.
//! No I/O; times and keys are arguments.
//!
//! Why the merged cursor is one CDR id: a CDR id is its start time above a hash of node and
//! Call-ID, so ids of different nodes never collide and sort the same on every node. The
//! page after the last id `X` of a merged page is, on every node, "newest first, below `X`",
//! and the merge of those answers is the next merged page, whatever the number of nodes.

use chrono::DateTime;
use chrono_tz::Tz;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use sipedge_store::query::{CdrFilter, Counters, NumberMatch, StatsBucket, TypeCounters};
use sipedge_store::{CallStatus, CallType, CdrId, StatsResult, UnixMs};

use crate::params::BadParam;
use crate::render;

/// Time fields of a call in progress.
pub const LIVE_TIMES: &[&str] = &["start_time", "ring_time", "answer_time", "video_started_at"];
/// Time fields of an alarm.
pub const ALARM_TIMES: &[&str] = &["raised_at", "cleared_at"];
/// Time fields of a watched process.
pub const PROCESS_TIMES: &[&str] = &["last_change"];

/// A CDR as another node's API shows it ([`crate::render::CdrView`]), typed so that the
/// merged page keeps the §5 names in §5's order, as a local page does. Enumerations stay
/// text: they are shown, not interpreted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CdrRow {
    pub id: String,
    pub node: String,
    pub call_id: String,
    pub caller: String,
    pub called: String,
    pub caller_uri: String,
    pub called_uri: String,
    pub call_type: String,
    pub video_started_at: Option<String>,
    pub status: String,
    pub disposition: String,
    pub sip_code: Option<u16>,
    pub ended_by: String,
    pub start_time: String,
    pub ring_time: Option<String>,
    pub answer_time: Option<String>,
    pub end_time: String,
    pub duration_s: f64,
    pub talk_s: f64,
    pub transport: String,
    pub terminal: String,
    /// Absent from the pages of a node whose build predates it: all its calls were relayed.
    #[serde(default = "relayed")]
    pub source: String,
}

fn relayed() -> String {
    render::source_str(sipedge_store::Source::Proxy).to_owned()
}

fn rezone_text(text: &mut String, zone: Tz) {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        *text = render::rfc3339(UnixMs(t.timestamp_millis()), zone);
    }
}

impl CdrRow {
    /// Its times shown in `zone`.
    pub fn rezone(&mut self, zone: Tz) {
        for text in [&mut self.start_time, &mut self.end_time] {
            rezone_text(text, zone);
        }
        for text in [
            &mut self.video_started_at,
            &mut self.ring_time,
            &mut self.answer_time,
        ]
        .into_iter()
        .flatten()
        {
            rezone_text(text, zone);
        }
    }
}

/// One node's page of CDRs: its items newest first, and whether it has more after them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodePage {
    pub items: Vec<CdrRow>,
    pub more: bool,
}

/// The merged page of `limit` CDRs, newest first, and the id to resume after when any node
/// has more. Each node was asked for `limit` rows below the same id, so the `limit`-th
/// newest of all of them is never older than a row a node left out, and resuming below it
/// loses nothing. Rows without a readable id (a peer of another version) are left out.
pub fn merge_pages(pages: Vec<NodePage>, limit: usize) -> (Vec<CdrRow>, Option<CdrId>) {
    let any_more = pages.iter().any(|p| p.more);
    let mut rows: Vec<(CdrId, CdrRow)> = pages
        .into_iter()
        .flat_map(|p| p.items)
        .filter_map(|item| item.id.parse().ok().map(|id| (id, item)))
        .collect();
    rows.sort_by_key(|row| std::cmp::Reverse(row.0));
    rows.dedup_by(|a, b| a.0 == b.0);
    let more = any_more || rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(id, _)| *id)
    } else {
        None
    };
    (rows.into_iter().map(|(_, item)| item).collect(), next)
}

/// Rewrites the RFC 3339 times in `fields` of `item` into `zone`, so that a merged answer
/// shows every row in this node's zone whatever the peer's.
pub fn rezone(item: &mut Value, fields: &[&str], zone: Tz) {
    for field in fields {
        if let Some(Value::String(text)) = item.get_mut(*field) {
            rezone_text(text, zone);
        }
    }
}

/// The rows of several nodes, newest first by the RFC 3339 time in `field` (ties by `id`,
/// newest first), at most `limit`.
pub fn merge_by_time(lists: Vec<Vec<Value>>, field: &str, limit: usize) -> Vec<Value> {
    let key = |item: &Value| {
        let at = item
            .get(field)
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or(i64::MIN, |t| t.timestamp_millis());
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        (at, id)
    };
    let mut rows: Vec<((i64, String), Value)> = lists
        .into_iter()
        .flatten()
        .map(|item| (key(&item), item))
        .collect();
    rows.sort_by(|a, b| b.0.cmp(&a.0));
    rows.truncate(limit);
    rows.into_iter().map(|(_, item)| item).collect()
}

/// The counters of one `T` object of `/api/stats` (SPEC §11). `talk_s` is a whole number of
/// milliseconds written as seconds, so rounding gives back the exact sum.
fn counters(v: &Value) -> Option<Counters> {
    let talk_s = v.get("talk_s")?.as_f64()?;
    if !talk_s.is_finite() || talk_s < 0.0 {
        return None;
    }
    Some(Counters {
        calls: v.get("calls")?.as_u64()?,
        connected: v.get("connected")?.as_u64()?,
        talk_ms: (talk_s * 1000.0).round() as u64,
    })
}

fn type_counters(v: &Value) -> Option<TypeCounters> {
    Some(TypeCounters {
        audio: counters(v.get("audio")?)?,
        video: counters(v.get("video")?)?,
    })
}

/// A peer's `/api/stats` answer back as the store's result, checked against the bucket
/// edges this node asked for; the error says what does not fit.
pub fn stats_from_json(v: &Value, edges: &[UnixMs]) -> Result<StatsResult, String> {
    let buckets = v
        .get("buckets")
        .and_then(Value::as_array)
        .ok_or("the answer has no buckets")?;
    if buckets.len() + 1 != edges.len() {
        return Err(format!(
            "{} buckets where {} were asked for",
            buckets.len(),
            edges.len().saturating_sub(1)
        ));
    }
    let mut out = StatsResult {
        totals: TypeCounters::default(),
        buckets: Vec::with_capacity(buckets.len()),
    };
    for (i, bucket) in buckets.iter().enumerate() {
        let start = bucket
            .get("start")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| UnixMs(t.timestamp_millis()));
        if start != Some(edges[i]) {
            return Err(format!("bucket {i} does not start where it was asked to"));
        }
        let counts = type_counters(bucket).ok_or(format!("bucket {i} has no counters"))?;
        out.buckets.push(StatsBucket {
            start: edges[i],
            end: edges[i + 1],
            counts,
        });
    }
    out.totals = sum_buckets(&out.buckets);
    Ok(out)
}

fn add(into: &mut Counters, other: &Counters) {
    into.calls += other.calls;
    into.connected += other.connected;
    into.talk_ms += other.talk_ms;
}

fn sum_buckets(buckets: &[StatsBucket]) -> TypeCounters {
    let mut totals = TypeCounters::default();
    for b in buckets {
        add(&mut totals.audio, &b.counts.audio);
        add(&mut totals.video, &b.counts.video);
    }
    totals
}

/// Statistics of no calls in the buckets of `edges`, to add nodes' results into.
pub fn empty_stats(edges: &[UnixMs]) -> StatsResult {
    StatsResult {
        totals: TypeCounters::default(),
        buckets: edges
            .windows(2)
            .map(|w| StatsBucket {
                start: w[0],
                end: w[1],
                counts: TypeCounters::default(),
            })
            .collect(),
    }
}

/// Adds `other`'s buckets into `into`'s; both were made for the same edges.
pub fn add_stats(into: &mut StatsResult, other: &StatsResult) {
    for (mine, theirs) in into.buckets.iter_mut().zip(&other.buckets) {
        add(&mut mine.counts.audio, &theirs.counts.audio);
        add(&mut mine.counts.video, &theirs.counts.video);
    }
    into.totals = sum_buckets(&into.buckets);
}

fn number(m: &NumberMatch) -> String {
    match m {
        NumberMatch::Exact(n) => n.clone(),
        NumberMatch::Prefix(p) => format!("{p}*"),
    }
}

/// `filter` as the query parameters of SPEC §6, with both ends as RFC 3339 instants: a peer
/// in another zone, or past midnight, reads the same interval.
pub fn filter_params(filter: &CdrFilter) -> Vec<(&'static str, String)> {
    let utc = |t: UnixMs| render::rfc3339(t, chrono_tz::UTC);
    let mut out = vec![("start", utc(filter.start)), ("end", utc(filter.end))];
    if let Some(t) = filter.call_type {
        out.push((
            "type",
            match t {
                CallType::Audio => "audio",
                CallType::Video => "video",
            }
            .to_owned(),
        ));
    }
    if let Some(m) = &filter.caller {
        out.push(("caller", number(m)));
    }
    if let Some(m) = &filter.called {
        out.push(("called", number(m)));
    }
    if let Some(s) = filter.status {
        out.push((
            "status",
            match s {
                CallStatus::Connected => "connected",
                CallStatus::NotConnected => "not_connected",
            }
            .to_owned(),
        ));
    }
    out
}

/// `path?query` with the pairs form-encoded.
pub fn path_with(path: &str, pairs: &[(&str, String)]) -> String {
    match serde_urlencoded::to_string(pairs) {
        Ok(query) if !query.is_empty() => format!("{path}?{query}"),
        _ => path.to_owned(),
    }
}

type HmacSha256 = Hmac<Sha256>;

fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

/// What a merged cursor signs: the id, the nodes asked and the filter, so that the cursor of
/// one selection is refused by another (and by a local query, whose cursors sign otherwise).
fn material(id: &str, nodes: &[&str], filter: &CdrFilter) -> Vec<u8> {
    format!("cluster-cursor-v1|{}|{id}|{filter:?}", nodes.join(",")).into_bytes()
}

/// The cursor of a merged page: the last id, signed with this node's cursor key.
pub fn make_cursor(last: CdrId, nodes: &[&str], filter: &CdrFilter, key: &[u8]) -> String {
    let id = last.to_string();
    let mut mac = keyed(key);
    mac.update(&material(&id, nodes, filter));
    format!("{id}.{}", hex::encode(&mac.finalize().into_bytes()[..16]))
}

/// The id a merged cursor resumes after, if this node made it for these nodes and filter.
pub fn open_cursor(
    text: &str,
    nodes: &[&str],
    filter: &CdrFilter,
    key: &[u8],
) -> Result<CdrId, BadParam> {
    let invalid = || {
        BadParam(
            "cursor: not a cursor of this query and node selection; start again without it"
                .to_owned(),
        )
    };
    let (id, tag) = text.trim().split_once('.').ok_or_else(invalid)?;
    let tag = hex::decode(tag).map_err(|_| invalid())?;
    if tag.len() != 16 {
        return Err(invalid());
    }
    let mut check = keyed(key);
    check.update(&material(id, nodes, filter));
    check.verify_truncated_left(&tag).map_err(|_| invalid())?;
    id.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn sample() -> CdrRow {
        serde_json::from_value(json!({
            "id": CdrId(0).to_string(), "node": "sz-01", "call_id": "c1", "caller": "1380",
            "called": "95566", "caller_uri": "sip:1380@a", "called_uri": "sip:95566@b",
            "call_type": "video", "video_started_at": null, "status": "connected",
            "disposition": "answered", "sip_code": 200, "ended_by": "caller",
            "start_time": "2026-11-18T06:06:40.123-05:00", "ring_time": null,
            "answer_time": "2026-11-18T11:06:41Z", "end_time": "2026-11-18T19:07:40.123+08:00",
            "duration_s": 60.0, "talk_s": 59.0, "transport": "udp", "terminal": "192.0.2.9:5060",
        }))
        .unwrap()
    }

    fn row(id: u128) -> CdrRow {
        CdrRow {
            id: CdrId(id).to_string(),
            ..sample()
        }
    }

    fn ids(items: &[CdrRow]) -> Vec<u128> {
        items
            .iter()
            .map(|i| i.id.parse::<CdrId>().unwrap().0)
            .collect()
    }

    #[test]
    fn a_row_is_written_back_as_the_node_wrote_it() {
        let start = UnixMs(1_795_000_000_123);
        let cdr = sipedge_store::Cdr {
            id: CdrId::new(start, "sz-01", "c1"),
            node: "sz-01".into(),
            call_id: "c1".into(),
            caller: "1380".into(),
            called: "95566".into(),
            caller_uri: "sip:1380@bank.example".into(),
            called_uri: "sip:95566@bank.example".into(),
            call_type: CallType::Video,
            video_started_at: Some(UnixMs(start.0 + 3_000)),
            status: CallStatus::Connected,
            disposition: sipedge_store::Disposition::Answered,
            sip_code: Some(200),
            ended_by: sipedge_store::EndedBy::Caller,
            start_time: start,
            ring_time: None,
            answer_time: Some(UnixMs(start.0 + 2_500)),
            end_time: UnixMs(start.0 + 62_501),
            transport: sipedge_store::Transport::Tcp,
            terminal: "203.0.113.9:40000".into(),
            source: sipedge_store::Source::Hep,
        };
        let text = serde_json::to_string(&render::CdrView::new(&cdr, chrono_tz::UTC)).unwrap();
        let row: CdrRow = serde_json::from_str(&text).unwrap();
        assert_eq!(
            serde_json::to_string(&row).unwrap(),
            text,
            "same names, same order"
        );
        let mut zoned = row.clone();
        zoned.rezone(chrono_tz::Asia::Shanghai);
        assert_eq!(
            serde_json::to_string(&zoned).unwrap(),
            serde_json::to_string(&render::CdrView::new(&cdr, chrono_tz::Asia::Shanghai)).unwrap()
        );
        assert_eq!(
            sample().source,
            "proxy",
            "a row of a node that predates `source`"
        );
    }

    fn page(ids: &[u128], more: bool) -> NodePage {
        NodePage {
            items: ids.iter().map(|&i| row(i)).collect(),
            more,
        }
    }

    /// (pages, limit, expected ids, expected next)
    type PageCase = (Vec<NodePage>, usize, Vec<u128>, Option<u128>);

    #[test]
    fn merged_pages_table() {
        let cases: Vec<PageCase> = vec![
            (vec![], 3, vec![], None),
            (
                vec![page(&[9, 5], false), page(&[8, 2], false)],
                3,
                vec![9, 8, 5],
                Some(5),
            ),
            (
                vec![page(&[9, 5], false), page(&[8], false)],
                3,
                vec![9, 8, 5],
                None,
            ),
            // A node with more past its last row: the page resumes even when it is not full.
            (
                vec![page(&[9, 5], true), page(&[], false)],
                2,
                vec![9, 5],
                Some(5),
            ),
            (vec![page(&[9], false), page(&[], false)], 2, vec![9], None),
            // The same row from two answers (a node listed twice) is shown once.
            (
                vec![page(&[9, 7], false), page(&[9, 7], false)],
                5,
                vec![9, 7],
                None,
            ),
            (
                vec![page(&[3, 2, 1], true), page(&[6, 5, 4], true)],
                3,
                vec![6, 5, 4],
                Some(4),
            ),
        ];
        for (pages, limit, want, next) in cases {
            let what = format!("{pages:?} limit {limit}");
            let (items, got_next) = merge_pages(pages, limit);
            assert_eq!(ids(&items), want, "{what}");
            assert_eq!(got_next.map(|c| c.0), next, "{what}");
        }
        let bad = CdrRow {
            id: "nope".into(),
            ..sample()
        };
        let (items, _) = merge_pages(
            vec![NodePage {
                items: vec![bad, row(4)],
                more: false,
            }],
            5,
        );
        assert_eq!(ids(&items), vec![4], "rows without an id are left out");
    }

    /// Walks `nodes` (each a sorted list of ids, newest first) page by page as the API does.
    fn walk(nodes: &[Vec<u128>], limit: usize) -> Vec<u128> {
        let mut after: Option<u128> = None;
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let pages = nodes
                .iter()
                .map(|ids| {
                    let below: Vec<u128> = ids
                        .iter()
                        .copied()
                        .filter(|&i| after.is_none_or(|a| i < a))
                        .collect();
                    page(&below[..below.len().min(limit)], below.len() > limit)
                })
                .collect();
            let (items, next) = merge_pages(pages, limit);
            seen.extend(ids(&items));
            match next {
                Some(id) => after = Some(id.0),
                None => return seen,
            }
        }
        panic!("the walk did not end");
    }

    #[test]
    fn a_walk_sees_every_row_once_in_order() {
        let a: Vec<u128> = (0..40).rev().map(|i| i * 3).collect();
        let b: Vec<u128> = (0..25).rev().map(|i| i * 6 + 1).collect();
        let c: Vec<u128> = vec![1000, 999, 2];
        let mut all: Vec<u128> = a.iter().chain(&b).chain(&c).copied().collect();
        all.sort_unstable_by(|x, y| y.cmp(x));
        for limit in [1, 2, 3, 7, 100] {
            assert_eq!(
                walk(&[a.clone(), b.clone(), c.clone()], limit),
                all,
                "limit {limit}"
            );
        }
    }

    #[test]
    fn times_are_shown_in_this_nodes_zone() {
        let mut row = sample();
        row.rezone(chrono_tz::Asia::Shanghai);
        assert_eq!(row.start_time, "2026-11-18T19:06:40.123+08:00");
        assert_eq!(
            row.answer_time.as_deref(),
            Some("2026-11-18T19:06:41.000+08:00")
        );
        assert_eq!(row.end_time, "2026-11-18T19:07:40.123+08:00");
        assert_eq!(row.ring_time, None);
        let mut item = json!({
            "start_time": "2026-11-18T06:06:40.123-05:00",
            "ring_time": null,
            "end_time": "not a time",
        });
        rezone(
            &mut item,
            &["start_time", "ring_time", "end_time"],
            chrono_tz::Asia::Shanghai,
        );
        assert_eq!(
            item,
            json!({
                "start_time": "2026-11-18T19:06:40.123+08:00",
                "ring_time": null,
                "end_time": "not a time",
            })
        );
    }

    #[test]
    fn rows_merge_newest_first_by_time() {
        let a = vec![
            json!({"id": "a2", "raised_at": "2026-11-18T10:00:00+08:00"}),
            json!({"id": "a1", "raised_at": "2026-11-18T08:00:00+08:00"}),
        ];
        let b = vec![json!({"id": "b1", "raised_at": "2026-11-18T01:30:00Z"})];
        let merged = merge_by_time(vec![a, b], "raised_at", 2);
        let got: Vec<&str> = merged.iter().map(|v| v["id"].as_str().unwrap()).collect();
        assert_eq!(got, vec!["a2", "b1"]);
    }

    fn t(calls: u64, connected: u64, talk_ms: u64) -> Counters {
        Counters {
            calls,
            connected,
            talk_ms,
        }
    }

    #[test]
    fn stats_sum_and_read_back_exactly() {
        let zone = chrono_tz::Asia::Shanghai;
        let edges = vec![UnixMs(0), UnixMs(3_600_000), UnixMs(5_400_000)];
        let result = |a: Counters, v: Counters| {
            let buckets = vec![
                StatsBucket {
                    start: edges[0],
                    end: edges[1],
                    counts: TypeCounters { audio: a, video: v },
                },
                StatsBucket {
                    start: edges[1],
                    end: edges[2],
                    counts: TypeCounters {
                        audio: a,
                        video: Counters::default(),
                    },
                },
            ];
            StatsResult {
                totals: sum_buckets(&buckets),
                buckets,
            }
        };
        let mine = result(t(3, 2, 61_001), t(1, 1, 7));
        let theirs = result(t(5, 0, 0), t(2, 2, 123_456_789));
        let json = render::stats(edges[0], edges[2], "hour", &theirs, zone);
        assert_eq!(stats_from_json(&json, &edges), Ok(theirs.clone()));
        let mut sum = empty_stats(&edges);
        add_stats(&mut sum, &mine);
        add_stats(&mut sum, &theirs);
        assert_eq!(sum.totals.audio, t(16, 4, 122_002));
        assert_eq!(sum.totals.video, t(3, 3, 123_456_796));
        assert_eq!(sum.buckets[1].counts.audio, t(8, 2, 61_001));

        let err = stats_from_json(&json, &edges[..2]).unwrap_err();
        assert!(err.contains("buckets"), "{err}");
        let shifted = [UnixMs(1), UnixMs(3_600_000), UnixMs(5_400_000)];
        assert!(stats_from_json(&json, &shifted).is_err());
        assert!(stats_from_json(&json!({}), &edges).is_err());
    }

    #[test]
    fn forwarded_filters_read_back_the_same() {
        use std::collections::HashMap;
        let zone = chrono_tz::Asia::Shanghai;
        let now = chrono::Utc::now();
        let filters = [
            CdrFilter::between(UnixMs(1_795_000_000_123), UnixMs(1_795_086_400_000)),
            CdrFilter {
                call_type: Some(CallType::Video),
                caller: Some(NumberMatch::Prefix("1380".into())),
                called: Some(NumberMatch::Exact("95566".into())),
                status: Some(CallStatus::NotConnected),
                ..CdrFilter::between(UnixMs(0), UnixMs(86_400_000))
            },
            CdrFilter {
                call_type: Some(CallType::Audio),
                status: Some(CallStatus::Connected),
                ..CdrFilter::between(UnixMs(-5), UnixMs(7))
            },
        ];
        for filter in filters {
            let params: HashMap<String, String> = filter_params(&filter)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            let back = crate::params::parse(&params, crate::params::Extra::None, zone, now, KEY)
                .unwrap()
                .filter;
            assert_eq!(back, filter);
        }
        assert_eq!(
            path_with("/api/cdrs", &[("caller", "13 8*".into())]),
            "/api/cdrs?caller=13+8*"
        );
        assert_eq!(path_with("/api/calls/live", &[]), "/api/calls/live");
    }

    #[test]
    fn cursors_are_bound_to_the_nodes_and_the_filter() {
        let filter = CdrFilter::between(UnixMs(0), UnixMs(86_400_000));
        let id = CdrId::new(UnixMs(5_000), "sh-01", "c1");
        let both = ["sh-01", "sz-01"];
        let cursor = make_cursor(id, &both, &filter, KEY);
        assert_eq!(open_cursor(&cursor, &both, &filter, KEY), Ok(id));
        let refused = [
            open_cursor(&cursor, &["sz-01"], &filter, KEY),
            open_cursor(
                &cursor,
                &both,
                &CdrFilter::between(UnixMs(1), UnixMs(86_400_000)),
                KEY,
            ),
            open_cursor(&cursor, &both, &filter, b"another key"),
            open_cursor(&cursor.replacen('0', "1", 1), &both, &filter, KEY),
            open_cursor("", &both, &filter, KEY),
            open_cursor(".", &both, &filter, KEY),
            open_cursor("zz.zz", &both, &filter, KEY),
            open_cursor(
                &crate::params::make_cursor(id, &filter, KEY),
                &both,
                &filter,
                KEY,
            ),
        ];
        for got in refused {
            let err = got.unwrap_err();
            assert!(err.0.starts_with("cursor"), "{err}");
        }
    }
}
