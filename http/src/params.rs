//! The query conditions of the source document, as URL parameters (SPEC §6): parsing,
//! defaults, the hour/day bucket switch and the opaque paging cursor. Pure: no I/O, the
//! clock and the zone are arguments.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sipedge_store::cdr::{CallStatus, CallType, CdrId, UnixMs};
use sipedge_store::query::{CdrFilter, NumberMatch};

/// A parameter that cannot be used; the text names it (SPEC §11: a 400's text contains the
/// parameter's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParam(pub String);

fn bad(name: &str, problem: impl std::fmt::Display) -> BadParam {
    BadParam(format!("{name}: {problem}"))
}

/// The longest interval a query may cover: ten years of daily buckets is still a small answer.
const MAX_INTERVAL_DAYS: i64 = 3660;
/// Numbers longer than this are no SIP user part a call centre sees.
const MAX_NUMBER_LEN: usize = 64;
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Which parameters an endpoint takes besides the filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extra {
    None,
    Paging,
}

/// Parsed filters and paging.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub filter: CdrFilter,
    pub limit: usize,
    /// Where the previous page stopped, checked against this filter.
    pub after: Option<CdrId>,
}

/// Reads the shared filters (and, for [`Extra::Paging`], `limit` and `cursor`); unknown
/// parameters are refused so that a misspelt condition does not silently return everything.
pub fn parse(
    params: &HashMap<String, String>,
    extra: Extra,
    zone: Tz,
    now: DateTime<Utc>,
    cursor_key: &[u8],
) -> Result<Query, BadParam> {
    let allowed: &[&str] = match extra {
        Extra::None => &["start", "end", "type", "caller", "called", "status"],
        Extra::Paging => &[
            "start", "end", "type", "caller", "called", "status", "limit", "cursor",
        ],
    };
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    if let Some(unknown) = names.into_iter().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(
            unknown,
            format!("unknown parameter; known ones are {}", allowed.join(", ")),
        ));
    }
    let get = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

    let today = midnight(zone, now.with_timezone(&zone).date_naive());
    let start = match get("start") {
        Some(text) => parse_time("start", text, zone)?,
        None => today,
    };
    let end = match get("end") {
        Some(text) => parse_time("end", text, zone)?,
        None => midnight(
            zone,
            now.with_timezone(&zone).date_naive() + Duration::days(1),
        ),
    };
    if end <= start {
        return Err(bad("end", "must be after start"));
    }
    if end - start > Duration::days(MAX_INTERVAL_DAYS) {
        return Err(bad(
            "end",
            format!("the interval is longer than {MAX_INTERVAL_DAYS} days"),
        ));
    }
    let call_type = match get("type") {
        None => None,
        Some("audio") | Some("voice") => Some(CallType::Audio),
        Some("video") => Some(CallType::Video),
        Some(other) => {
            return Err(bad(
                "type",
                format!("{other:?} is not audio, voice or video"),
            ));
        }
    };
    let status = match get("status") {
        None => None,
        Some("connected") => Some(CallStatus::Connected),
        Some("not_connected") => Some(CallStatus::NotConnected),
        Some(other) => {
            return Err(bad(
                "status",
                format!("{other:?} is not connected or not_connected"),
            ));
        }
    };
    let filter = CdrFilter {
        start: UnixMs(start.timestamp_millis()),
        end: UnixMs(end.timestamp_millis()),
        call_type,
        caller: get("caller").map(|v| number("caller", v)).transpose()?,
        called: get("called").map(|v| number("called", v)).transpose()?,
        status,
    };
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => parse_limit(text)?,
    };
    let after = get("cursor")
        .map(|c| open_cursor(c, &filter, cursor_key))
        .transpose()?;
    Ok(Query {
        filter,
        limit,
        after,
    })
}

/// Alarms read from the store per `/api/alarms` request at most, before the time filter;
/// alarms are rare and retention removes old ones, so this is every alarm in practice.
pub const MAX_ALARMS_SCANNED: usize = 100_000;

/// The parameters of `/api/alarms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmQuery {
    /// `active=true`: only alarms not cleared.
    pub active_only: bool,
    /// Raised at or after this, if given.
    pub start: Option<UnixMs>,
    /// Raised before this, if given.
    pub end: Option<UnixMs>,
    /// Alarms returned at most.
    pub limit: usize,
}

/// Reads `active`, `start`, `end` and `limit` of `/api/alarms`; unlike the CDR filters, no
/// time given means all of them.
pub fn parse_alarms(params: &HashMap<String, String>, zone: Tz) -> Result<AlarmQuery, BadParam> {
    const KNOWN: [&str; 4] = ["active", "start", "end", "limit"];
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    if let Some(unknown) = names.into_iter().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(bad(
            unknown,
            format!("unknown parameter; known ones are {}", KNOWN.join(", ")),
        ));
    }
    let get = |name: &str| params.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let active_only = match get("active") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad("active", format!("{other:?} is not true or false"))),
    };
    let time = |name: &str| {
        get(name)
            .map(|text| parse_time(name, text, zone).map(|t| UnixMs(t.timestamp_millis())))
            .transpose()
    };
    let (start, end) = (time("start")?, time("end")?);
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        return Err(bad("end", "must be after start"));
    }
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => parse_limit(text)?,
    };
    Ok(AlarmQuery {
        active_only,
        start,
        end,
        limit,
    })
}

fn parse_limit(text: &str) -> Result<usize, BadParam> {
    match text.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad(
            "limit",
            format!("must be a whole number from 1 to {MAX_LIMIT}"),
        )),
    }
}

/// `YYYYMMDDhhmmss` or `YYYY-MM-DD hh:mm:ss` in the node's zone, or RFC 3339 with its offset.
pub fn parse_time(name: &str, text: &str, zone: Tz) -> Result<DateTime<Utc>, BadParam> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let naive = ["%Y%m%d%H%M%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .ok_or_else(|| {
            bad(
                name,
                format!("{text:?} is not YYYYMMDDhhmmss, YYYY-MM-DD hh:mm:ss or RFC 3339"),
            )
        })?;
    zone.from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| bad(name, format!("{text:?} does not exist in {zone}")))
}

fn number(name: &str, text: &str) -> Result<NumberMatch, BadParam> {
    let (digits, prefix) = match text.strip_suffix('*') {
        Some(rest) => (rest, true),
        None => (text, false),
    };
    if digits.len() > MAX_NUMBER_LEN {
        return Err(bad(
            name,
            format!("longer than {MAX_NUMBER_LEN} characters"),
        ));
    }
    if digits.contains('*') || digits.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(name, "a number, optionally ending in * for a prefix"));
    }
    Ok(if prefix {
        NumberMatch::Prefix(digits.to_owned())
    } else {
        NumberMatch::Exact(digits.to_owned())
    })
}

/// 00:00 of `date` in `zone` (or the first instant of the day where midnight does not exist).
fn midnight(zone: Tz, date: NaiveDate) -> DateTime<Utc> {
    (0..=2)
        .find_map(|hour| {
            zone.from_local_datetime(&date.and_hms_opt(hour, 0, 0)?)
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default()))
}

/// Whether the chart has a bar group per hour or per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketSize {
    Hour,
    Day,
}

impl BucketSize {
    pub fn as_str(self) -> &'static str {
        match self {
            BucketSize::Hour => "hour",
            BucketSize::Day => "day",
        }
    }
}

/// The bucket edges of `[start, end)`: one bucket per local hour when the interval is one day
/// or less, per local day otherwise; the first and last may be partial.
pub fn bucket_edges(start: UnixMs, end: UnixMs, zone: Tz) -> (BucketSize, Vec<UnixMs>) {
    let size = if end.0 - start.0 <= 24 * 3600 * 1000 {
        BucketSize::Hour
    } else {
        BucketSize::Day
    };
    let mut edges = vec![start];
    let mut at = to_utc(start);
    loop {
        let next = next_boundary(at, size, zone);
        if next.timestamp_millis() >= end.0 {
            break;
        }
        edges.push(UnixMs(next.timestamp_millis()));
        at = next;
    }
    edges.push(end);
    (size, edges)
}

fn to_utc(t: UnixMs) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.0).single().unwrap_or_default()
}

fn next_boundary(at: DateTime<Utc>, size: BucketSize, zone: Tz) -> DateTime<Utc> {
    match size {
        // Every zone's offset is a whole number of quarter hours, so the next local hour
        // start is among the next few UTC quarter hours, even across a DST change.
        BucketSize::Hour => {
            const QUARTER_MS: i64 = 15 * 60 * 1000;
            let first = (at.timestamp_millis().div_euclid(QUARTER_MS) + 1) * QUARTER_MS;
            (0..8)
                .map(|i| to_utc(UnixMs(first + i * QUARTER_MS)))
                .find(|t| t.with_timezone(&zone).minute() == 0)
                .unwrap_or(at + Duration::hours(1))
        }
        BucketSize::Day => midnight(
            zone,
            at.with_timezone(&zone).date_naive() + Duration::days(1),
        ),
    }
}

type HmacSha256 = Hmac<Sha256>;

/// An opaque cursor: the last id of a page, bound to the filter it was made for and signed,
/// so it can be neither forged nor reused with other conditions.
pub fn make_cursor(last: CdrId, filter: &CdrFilter, key: &[u8]) -> String {
    let id = last.to_string();
    format!("{id}.{}", hex::encode(sign(&id, filter, key)))
}

fn open_cursor(text: &str, filter: &CdrFilter, key: &[u8]) -> Result<CdrId, BadParam> {
    let invalid = || {
        bad(
            "cursor",
            "not a cursor of this query; start again without it",
        )
    };
    let (id, mac) = text.split_once('.').ok_or_else(invalid)?;
    let mac = hex::decode(mac).map_err(|_| invalid())?;
    // A truncated-tag check accepts an empty tag; ours is always 16 bytes.
    if mac.len() != 16 {
        return Err(invalid());
    }
    let mut check = keyed(key);
    check.update(&material(id, filter));
    check.verify_truncated_left(&mac).map_err(|_| invalid())?;
    id.parse().map_err(|_| invalid())
}

fn sign(id: &str, filter: &CdrFilter, key: &[u8]) -> Vec<u8> {
    let mut mac = keyed(key);
    mac.update(&material(id, filter));
    mac.finalize().into_bytes()[..16].to_vec()
}

fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn material(id: &str, filter: &CdrFilter) -> Vec<u8> {
    format!("cursor-v1|{id}|{filter:?}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn zone() -> Tz {
        chrono_tz::Asia::Shanghai
    }

    /// 2026-11-28 10:30 in Shanghai.
    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 2, 30, 0)
            .single()
            .unwrap()
    }

    fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> UnixMs {
        UnixMs(
            zone()
                .with_ymd_and_hms(y, mo, d, h, mi, s)
                .single()
                .unwrap()
                .timestamp_millis(),
        )
    }

    fn check(pairs: &[(&str, &str)], expected: Result<CdrFilter, &str>) {
        let params: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = parse(&params, Extra::Paging, zone(), now(), KEY).map(|q| q.filter);
        match expected {
            Ok(filter) => assert_eq!(got, Ok(filter), "{pairs:?}"),
            Err(name) => {
                let err = got.expect_err(&format!("{pairs:?} should fail"));
                assert!(
                    err.0.starts_with(name),
                    "{pairs:?}: {err} should name {name}"
                );
            }
        }
    }

    fn today() -> CdrFilter {
        CdrFilter::between(ms(2026, 11, 28, 0, 0, 0), ms(2026, 11, 29, 0, 0, 0))
    }

    #[test]
    fn filters_table() {
        check(&[], Ok(today()));
        check(
            &[("type", ""), ("status", ""), ("caller", " ")],
            Ok(today()),
        );
        let day = CdrFilter::between(ms(2026, 11, 1, 8, 0, 0), ms(2026, 11, 2, 0, 0, 0));
        check(
            &[("start", "20261101080000"), ("end", "20261102000000")],
            Ok(day.clone()),
        );
        check(
            &[
                ("start", "2026-11-01 08:00:00"),
                ("end", "2026-11-02 00:00:00"),
            ],
            Ok(day.clone()),
        );
        check(
            &[
                ("start", "2026-11-01T00:00:00Z"),
                ("end", "2026-11-01T16:00:00Z"),
            ],
            Ok(day),
        );
        check(
            &[("type", "voice")],
            Ok(CdrFilter {
                call_type: Some(CallType::Audio),
                ..today()
            }),
        );
        check(
            &[("type", "audio")],
            Ok(CdrFilter {
                call_type: Some(CallType::Audio),
                ..today()
            }),
        );
        check(
            &[("type", "video")],
            Ok(CdrFilter {
                call_type: Some(CallType::Video),
                ..today()
            }),
        );
        check(
            &[("status", "not_connected")],
            Ok(CdrFilter {
                status: Some(CallStatus::NotConnected),
                ..today()
            }),
        );
        check(
            &[("caller", "1380*"), ("called", "95566")],
            Ok(CdrFilter {
                caller: Some(NumberMatch::Prefix("1380".into())),
                called: Some(NumberMatch::Exact("95566".into())),
                ..today()
            }),
        );
        check(&[("start", "yesterday")], Err("start"));
        check(&[("start", "20260231000000")], Err("start"));
        check(&[("end", "2026-11-28 25:00:00")], Err("end"));
        check(
            &[("start", "20261128120000"), ("end", "20261128120000")],
            Err("end"),
        );
        check(
            &[("start", "20000101000000"), ("end", "20261128120000")],
            Err("end"),
        );
        check(&[("type", "fax")], Err("type"));
        check(&[("status", "up")], Err("status"));
        check(&[("caller", "12*3")], Err("caller"));
        check(&[("called", &"9".repeat(65))], Err("called"));
        check(&[("limit", "0")], Err("limit"));
        check(&[("limit", "1001")], Err("limit"));
        check(&[("limit", "ten")], Err("limit"));
        check(&[("colour", "red")], Err("colour"));
        check(&[("cursor", "junk")], Err("cursor"));
    }

    fn check_alarms(pairs: &[(&str, &str)], expected: Result<AlarmQuery, &str>) {
        let params: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let got = parse_alarms(&params, zone());
        match expected {
            Ok(want) => assert_eq!(got, Ok(want), "{pairs:?}"),
            Err(name) => {
                let err = got.expect_err(&format!("{pairs:?} should fail"));
                assert!(
                    err.0.starts_with(name),
                    "{pairs:?}: {err} should name {name}"
                );
            }
        }
    }

    #[test]
    fn alarm_parameters_table() {
        let all = AlarmQuery {
            active_only: false,
            start: None,
            end: None,
            limit: DEFAULT_LIMIT,
        };
        check_alarms(&[], Ok(all.clone()));
        check_alarms(
            &[("active", "true"), ("limit", "5")],
            Ok(AlarmQuery {
                active_only: true,
                limit: 5,
                ..all.clone()
            }),
        );
        check_alarms(
            &[("start", "20261128000000"), ("end", "2026-11-29 00:00:00")],
            Ok(AlarmQuery {
                start: Some(ms(2026, 11, 28, 0, 0, 0)),
                end: Some(ms(2026, 11, 29, 0, 0, 0)),
                ..all
            }),
        );
        check_alarms(&[("active", "yes")], Err("active"));
        check_alarms(&[("start", "today")], Err("start"));
        check_alarms(
            &[("start", "20261129000000"), ("end", "20261128000000")],
            Err("end"),
        );
        check_alarms(&[("limit", "0")], Err("limit"));
        check_alarms(&[("kind", "disk_low")], Err("kind"));
    }

    #[test]
    fn cursors_are_bound_to_their_filter_and_key() {
        let filter = today();
        let id = CdrId::new(ms(2026, 11, 28, 9, 0, 0), "n", "c");
        let cursor = make_cursor(id, &filter, KEY);
        assert_eq!(open_cursor(&cursor, &filter, KEY), Ok(id));
        let other = CdrFilter {
            call_type: Some(CallType::Video),
            ..today()
        };
        assert!(open_cursor(&cursor, &other, KEY).is_err());
        assert!(open_cursor(&cursor, &filter, b"another key").is_err());
        let forged = cursor.replacen('0', "1", 1);
        assert!(open_cursor(&forged, &filter, KEY).is_err());
        assert!(open_cursor("", &filter, KEY).is_err());
        assert!(open_cursor(".", &filter, KEY).is_err());
    }

    #[test]
    fn buckets_switch_at_exactly_one_day() {
        let start = ms(2026, 11, 28, 0, 0, 0);
        let (size, edges) = bucket_edges(start, ms(2026, 11, 29, 0, 0, 0), zone());
        assert_eq!(size, BucketSize::Hour);
        assert_eq!(edges.len(), 25, "24 hourly buckets");
        assert_eq!(edges[1], ms(2026, 11, 28, 1, 0, 0));

        let (size, edges) = bucket_edges(start, ms(2026, 11, 29, 0, 0, 1), zone());
        assert_eq!(size, BucketSize::Day);
        assert_eq!(
            edges,
            vec![start, ms(2026, 11, 29, 0, 0, 0), ms(2026, 11, 29, 0, 0, 1)]
        );

        let (size, edges) =
            bucket_edges(ms(2026, 11, 25, 0, 0, 0), ms(2026, 11, 28, 0, 0, 0), zone());
        assert_eq!(size, BucketSize::Day);
        assert_eq!(edges.len(), 4, "3 daily buckets");

        // Ragged ends: a partial first and last hour.
        let (_, edges) = bucket_edges(
            ms(2026, 11, 28, 8, 30, 0),
            ms(2026, 11, 28, 10, 15, 0),
            zone(),
        );
        assert_eq!(
            edges,
            vec![
                ms(2026, 11, 28, 8, 30, 0),
                ms(2026, 11, 28, 9, 0, 0),
                ms(2026, 11, 28, 10, 0, 0),
                ms(2026, 11, 28, 10, 15, 0)
            ]
        );
    }

    #[test]
    fn buckets_follow_local_days_across_daylight_saving() {
        let ny = chrono_tz::America::New_York;
        let local = |d: u32| {
            UnixMs(
                ny.with_ymd_and_hms(2026, 11, d, 0, 0, 0)
                    .single()
                    .unwrap()
                    .timestamp_millis(),
            )
        };
        let (_, edges) = bucket_edges(local(1), local(3), ny);
        // 1 November 2026 is 25 hours long in New York.
        assert_eq!(edges, vec![local(1), local(2), local(3)]);
        let kolkata = chrono_tz::Asia::Kolkata;
        let start = UnixMs(
            kolkata
                .with_ymd_and_hms(2026, 11, 28, 0, 0, 0)
                .single()
                .unwrap()
                .timestamp_millis(),
        );
        let (_, edges) = bucket_edges(start, UnixMs(start.0 + 3 * 3_600_000), kolkata);
        assert_eq!(
            edges.len(),
            4,
            "half-hour offset zones get local hours: {edges:?}"
        );
    }
}
