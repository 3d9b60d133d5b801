//! The terminals' account responder (SPEC §3), the interface of the bank's source document:
//! `POST /AgoraAccount` with `{"method","streamNumber","token","timestamp"}`, where `token` is
//! the hex MD5 of `appid + timestamp`.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use md5::{Digest, Md5};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::health::Health;
use crate::json_error;

/// The fixed value of `method` in requests and responses.
const METHOD: &str = "getAgoraAccount";
/// Larger bodies are refused with 413 before they are read further.
const MAX_BODY_BYTES: usize = 4096;

/// The `[account]` table of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The terminals' HTTP listener; the firewall plan puts it on 14700.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Every appid whose token is accepted; several allow an appid to be rotated.
    pub appids: Vec<String>,
    /// The Account this node hands out.
    pub account: String,
    /// Allowed distance between a request's timestamp and the server clock, either way.
    #[serde(default = "default_skew", with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Connections served at once (half-open ones included); more wait in the backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this (a new one, or one
    /// kept alive between requests) is closed.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A request whose body has not arrived whole within this gets 408.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Requests per second accepted from one client IP address, and the burst above it;
    /// more get 429. Generous: many terminals may share one carrier-NAT address. 0 = off.
    #[serde(default = "default_source_rate_limit")]
    pub source_rate_limit: u32,
    #[serde(default = "default_source_rate_burst")]
    pub source_rate_burst: u32,
}

fn default_max_connections() -> usize {
    4096
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_source_rate_limit() -> u32 {
    200
}

fn default_source_rate_burst() -> u32 {
    1000
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 14700))
}

fn default_skew() -> Duration {
    Duration::from_secs(3600)
}

impl AccountConfig {
    /// Problems a person must fix before the responder can run, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.appids.is_empty() {
            problems.push("account.appids: at least one appid is needed".to_owned());
        }
        if self.appids.iter().any(|a| a.trim().is_empty()) {
            problems.push("account.appids: an appid is empty".to_owned());
        }
        if self.account.trim().is_empty() {
            problems.push("account.account: the Account handed out is empty".to_owned());
        }
        if self.max_connections == 0 {
            problems.push("account.max_connections: must be at least 1".to_owned());
        }
        for (key, value) in [
            ("header_timeout", self.header_timeout),
            ("body_timeout", self.body_timeout),
        ] {
            if value < Duration::from_millis(100) {
                problems.push(format!("account.{key}: must be at least 100ms"));
            }
        }
        if self.source_rate_limit > 0 && self.source_rate_burst == 0 {
            problems.push(
                "account.source_rate_burst: must be at least 1 while source_rate_limit is on"
                    .to_owned(),
            );
        }
        problems
    }
}

/// Per-client-address admission. The root supplies the relay's token buckets, so that the
/// SIP ports and this listener limit a flooding source alike.
pub trait SourceGate: std::fmt::Debug + Send + Sync {
    /// Whether a request from `client` may be served now.
    fn allow(&self, client: IpAddr) -> bool;
    /// Applies a reloaded `source_rate_limit` and `source_rate_burst`.
    fn set(&self, rate: u32, burst: u32);
}

/// What the responder needs at run time; the root swaps it on reload.
#[derive(Debug)]
pub struct AccountState {
    /// The `[account]` table, replaced whole by a reload (SIGHUP) while requests run: each
    /// request reads one consistent copy.
    pub config: RwLock<Arc<AccountConfig>>,
    /// Zone of the request timestamps (`node.timezone`).
    pub timezone: Tz,
    pub node: String,
    pub health: Health,
    /// Requests by outcome; kept across reloads by cloning it into the new state.
    pub metrics: AccountMetrics,
    /// `source_rate_limit`: requests from one address past it get 429.
    pub gate: Arc<dyn SourceGate>,
}

impl AccountState {
    /// The `[account]` table as it is now.
    pub fn config(&self) -> Arc<AccountConfig> {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Serves `config` from the next request on; requests already reading keep their copy.
    pub fn set_config(&self, config: AccountConfig) {
        self.gate
            .set(config.source_rate_limit, config.source_rate_burst);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
    }
}

/// The label of `sipedge_account_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// `sipedge_account_requests_total{outcome}` (SPEC §9); clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct AccountMetrics {
    /// One counter per outcome.
    requests: Family<OutcomeLabel, Counter>,
}

impl AccountMetrics {
    /// Adds the counters to `registry` (which prefixes `sipedge_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "account_requests",
            "Account requests answered, by outcome",
            self.requests.clone(),
        );
    }

    pub fn count(&self, outcome: Outcome) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
    }

    /// The count of one outcome so far.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .get()
    }
}

/// The router of the account listener: `/AgoraAccount` and `/healthz`.
pub fn router(state: Arc<AccountState>) -> Router {
    Router::new()
        .route("/AgoraAccount", post(agora_account))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

async fn healthz(State(state): State<Arc<AccountState>>) -> Response {
    state.health.response(&state.node)
}

async fn not_found() -> Response {
    json_error(
        StatusCode::NOT_FOUND,
        "no such path; POST /AgoraAccount or GET /healthz",
    )
}

/// The outcome of one request, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Granted,
    Refused,
    BadRequest,
    TooLarge,
    Unavailable,
    /// Over `source_rate_limit`.
    Limited,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Refused => "refused",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Unavailable => "unavailable",
            Outcome::Limited => "rate_limited",
        }
    }
}

async fn agora_account(
    State(state): State<Arc<AccountState>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let (outcome, stream_number, response) = if state.gate.allow(client.ip()) {
        answer(&state, body).await
    } else {
        let mut response = json_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests from this address; retry in a second",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        (Outcome::Limited, None, response)
    };
    state.metrics.count(outcome);
    tracing::info!(
        stream_number = stream_number.as_deref().unwrap_or("-"),
        %client,
        outcome = outcome.as_str(),
        "account request"
    );
    response
}

async fn answer(state: &AccountState, body: Body) -> (Outcome, Option<String>, Response) {
    if let Some(reasons) = state.health.down_reasons() {
        let msg = format!("this node cannot serve calls: {}", reasons.join("; "));
        return (
            Outcome::Unavailable,
            None,
            json_error(StatusCode::SERVICE_UNAVAILABLE, &msg),
        );
    }
    let bytes = match read_body(body, state.config().body_timeout).await {
        Ok(bytes) => bytes,
        Err((outcome, response)) => return (outcome, None, response),
    };
    let request = match AccountRequest::parse(&bytes) {
        Ok(request) => request,
        Err(msg) => {
            return (
                Outcome::BadRequest,
                None,
                json_error(StatusCode::BAD_REQUEST, &msg),
            );
        }
    };
    let stream_number = Some(request.stream_number.clone());
    let config = state.config();
    let verdict = verify(
        &config.appids,
        &request.token,
        &request.timestamp,
        state.timezone,
        Utc::now(),
        config.max_clock_skew,
    );
    match verdict {
        Err(msg) => (
            Outcome::BadRequest,
            stream_number,
            json_error(StatusCode::BAD_REQUEST, &msg),
        ),
        Ok(granted) => {
            let reply = AccountReply {
                method: METHOD,
                stream_number: &request.stream_number,
                res_code: if granted { "0" } else { "1" },
                account: granted.then_some(config.account.as_str()),
            };
            let outcome = if granted {
                Outcome::Granted
            } else {
                Outcome::Refused
            };
            (outcome, stream_number, axum::Json(reply).into_response())
        }
    }
}

async fn read_body(body: Body, timeout: Duration) -> Result<Bytes, (Outcome, Response)> {
    let too_large = || {
        let msg = format!("the body is larger than {MAX_BODY_BYTES} bytes");
        (
            Outcome::TooLarge,
            json_error(StatusCode::PAYLOAD_TOO_LARGE, &msg),
        )
    };
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
        Err(_) => Err((
            Outcome::BadRequest,
            json_error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(err)) => {
            // to_bytes reports the limit as a boxed LengthLimitError somewhere in the chain.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(e) = source {
                if e.is::<http_body_util::LengthLimitError>() {
                    return Err(too_large());
                }
                source = e.source();
            }
            Err((
                Outcome::BadRequest,
                json_error(StatusCode::BAD_REQUEST, "the body could not be read"),
            ))
        }
    }
}

/// The response body, fields in the document's order.
#[derive(Serialize)]
struct AccountReply<'a> {
    method: &'static str,
    #[serde(rename = "streamNumber")]
    stream_number: &'a str,
    #[serde(rename = "resCode")]
    res_code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
}

/// A request whose fields are all present and of the right kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRequest {
    pub stream_number: String,
    pub token: String,
    pub timestamp: String,
}

impl AccountRequest {
    /// Reads the body; the error text names the problem for the 400 answer.
    pub fn parse(body: &[u8]) -> Result<AccountRequest, String> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON: {e}"))?;
        let Value::Object(fields) = value else {
            return Err("the body must be a JSON object".to_owned());
        };
        let method = text_field(&fields, "method", "Method")?;
        if method.trim() != METHOD {
            return Err(format!("method must be \"{METHOD}\", got {method:?}"));
        }
        let stream_number = match field(&fields, "streamNumber", "StreamNumber")? {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return Err("streamNumber must be a string or a number".to_owned()),
        };
        Ok(AccountRequest {
            stream_number,
            token: text_field(&fields, "token", "Token")?.to_owned(),
            timestamp: text_field(&fields, "timestamp", "Timestamp")?.to_owned(),
        })
    }
}

fn field<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    capitalised: &str,
) -> Result<&'a Value, String> {
    fields
        .get(name)
        .or_else(|| fields.get(capitalised))
        .ok_or_else(|| format!("the field {name} is missing"))
}

fn text_field<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    capitalised: &str,
) -> Result<&'a str, String> {
    field(fields, name, capitalised)?
        .as_str()
        .ok_or_else(|| format!("the field {name} must be a string"))
}

/// Whether `token` is the MD5 of some appid followed by `timestamp`, and the timestamp lies
/// within `skew` of `now`. `Err` when the timestamp is not a real `YYYYMMDDhhmmss` time.
pub fn verify(
    appids: &[String],
    token: &str,
    timestamp: &str,
    timezone: Tz,
    now: DateTime<Utc>,
    skew: Duration,
) -> Result<bool, String> {
    let at = parse_timestamp(timestamp.trim(), timezone)?;
    let distance = (now - at).abs();
    let in_window = distance.to_std().map(|d| d <= skew).unwrap_or(false);
    let presented = decode_token(token);
    // Every appid is hashed and compared, and a malformed token is compared like a wrong one,
    // so the time taken says nothing about which appid or how many bytes matched.
    let mut matched = subtle::Choice::from(0u8);
    for appid in appids {
        let mut hasher = Md5::new();
        hasher.update(appid.as_bytes());
        hasher.update(timestamp.trim().as_bytes());
        let expected: [u8; 16] = hasher.finalize().into();
        matched |= expected.ct_eq(&presented);
    }
    Ok(bool::from(matched) && in_window)
}

/// The 16 bytes of a hex token, ignoring case and surrounding white space; anything else
/// becomes bytes that no digest equals in practice, so it is simply refused.
fn decode_token(token: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    if hex::decode_to_slice(token.trim(), &mut out).is_err() {
        out = [0xff; 16];
    }
    out
}

fn parse_timestamp(text: &str, timezone: Tz) -> Result<DateTime<Utc>, String> {
    if text.len() != 14 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("timestamp must be YYYYMMDDhhmmss, got {text:?}"));
    }
    let naive = NaiveDateTime::parse_from_str(text, "%Y%m%d%H%M%S")
        .map_err(|_| format!("timestamp {text:?} is not a real date and time"))?;
    timezone
        .from_local_datetime(&naive)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| format!("timestamp {text:?} does not exist in {timezone}"))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn md5_hex(s: &str) -> String {
        hex::encode(Md5::digest(s.as_bytes()))
    }

    fn now() -> DateTime<Utc> {
        // 2019-06-01 12:00:00 in Shanghai.
        Utc.with_ymd_and_hms(2019, 6, 1, 4, 0, 0).single().unwrap()
    }

    #[test]
    fn verify_table() {
        let appids = vec!["app-one".to_owned(), "app-two".to_owned()];
        let skew = Duration::from_secs(3600);
        let ts = "20190601120000";
        let good = md5_hex(&format!("app-one{ts}"));
        let cases: Vec<(String, &str, Result<bool, ()>)> = vec![
            (good.clone(), ts, Ok(true)),
            (format!("  {}  ", good.to_uppercase()), ts, Ok(true)),
            (md5_hex(&format!("app-two{ts}")), ts, Ok(true)),
            (md5_hex(&format!("app-three{ts}")), ts, Ok(false)),
            ("not hex".to_owned(), ts, Ok(false)),
            (String::new(), ts, Ok(false)),
            (md5_hex("app-one20190601125959"), "20190601125959", Ok(true)),
            (md5_hex("app-one20190601130000"), "20190601130000", Ok(true)),
            (
                md5_hex("app-one20190601130001"),
                "20190601130001",
                Ok(false),
            ),
            (md5_hex("app-one20190601110000"), "20190601110000", Ok(true)),
            (
                md5_hex("app-one20190601105959"),
                "20190601105959",
                Ok(false),
            ),
            (good.clone(), "20190231120000", Err(())),
            (good.clone(), "2019060112000", Err(())),
            (good.clone(), "2019-06-01 12:00", Err(())),
            (good.clone(), "20191301120000", Err(())),
        ];
        for (token, timestamp, expected) in cases {
            let got = verify(
                &appids,
                &token,
                timestamp,
                chrono_tz::Asia::Shanghai,
                now(),
                skew,
            )
            .map_err(|_| ());
            assert_eq!(got, expected, "token {token:?} timestamp {timestamp}");
        }
    }

    #[test]
    fn parse_table() {
        let ok = |sn: &str| {
            Ok(AccountRequest {
                stream_number: sn.to_owned(),
                token: "t".to_owned(),
                timestamp: "20190601120000".to_owned(),
            })
        };
        let cases: Vec<(&str, Result<AccountRequest, &str>)> = vec![
            (
                r#"{"method":"getAgoraAccount","streamNumber":"89567","token":"t","timestamp":"20190601120000"}"#,
                ok("89567"),
            ),
            (
                r#"{"Method":"getAgoraAccount","StreamNumber":89567,"Token":"t","Timestamp":"20190601120000"}"#,
                ok("89567"),
            ),
            (
                r#"{"method":"getAgoraAccount","streamNumber":"1","token":"t"}"#,
                Err("timestamp"),
            ),
            (
                r#"{"method":"other","streamNumber":"1","token":"t","timestamp":"x"}"#,
                Err("method"),
            ),
            (
                r#"{"streamNumber":"1","token":"t","timestamp":"x"}"#,
                Err("method"),
            ),
            (
                r#"{"method":"getAgoraAccount","streamNumber":[],"token":"t","timestamp":"x"}"#,
                Err("streamNumber"),
            ),
            (
                r#"{"method":"getAgoraAccount","streamNumber":"1","token":5,"timestamp":"x"}"#,
                Err("token"),
            ),
            (r#"["method"]"#, Err("object")),
            ("not json", Err("JSON")),
            ("", Err("JSON")),
        ];
        for (body, expected) in cases {
            let got = AccountRequest::parse(body.as_bytes());
            match expected {
                Ok(want) => assert_eq!(got, Ok(want), "{body}"),
                Err(word) => {
                    let err = got.expect_err(body);
                    assert!(err.contains(word), "{body}: {err:?} should name {word}");
                }
            }
        }
    }

    /// Admits a fixed number of requests, then none: the handler's side of the limit (the
    /// token buckets themselves are the relay's, tested there).
    #[derive(Debug)]
    struct Budget(AtomicU32);

    impl SourceGate for Budget {
        fn allow(&self, _: IpAddr) -> bool {
            self.0
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
        }
        fn set(&self, _: u32, _: u32) {}
    }

    #[tokio::test]
    async fn a_node_that_cannot_serve_answers_503() {
        use tower::ServiceExt;
        let health = Health::default();
        let state = Arc::new(AccountState {
            config: RwLock::new(Arc::new(AccountConfig {
                listen: default_listen(),
                appids: vec!["a".to_owned()],
                account: "sipserver".to_owned(),
                max_clock_skew: default_skew(),
                max_connections: default_max_connections(),
                header_timeout: default_timeout(),
                body_timeout: default_timeout(),
                source_rate_limit: default_source_rate_limit(),
                source_rate_burst: default_source_rate_burst(),
            })),
            timezone: chrono_tz::Asia::Shanghai,
            node: "n1".to_owned(),
            health: health.clone(),
            metrics: AccountMetrics::default(),
            gate: Arc::new(Budget(AtomicU32::new(2))),
        });
        let call = |path: &'static str, method: &'static str| {
            let mut request = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from("{}"))
                .unwrap();
            request
                .extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 9))));
            router(state.clone()).oneshot(request)
        };
        let up = call("/AgoraAccount", "POST").await.unwrap();
        assert_eq!(up.status(), StatusCode::BAD_REQUEST);
        assert_eq!(state.metrics.requests(Outcome::BadRequest), 1);

        health.set_down_reasons(vec![
            "upstream 10.0.0.5:14500 does not answer OPTIONS".to_owned(),
        ]);
        let down = call("/AgoraAccount", "POST").await.unwrap();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(state.metrics.requests(Outcome::Unavailable), 1);
        let body = axum::body::to_bytes(down.into_body(), 4096).await.unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("does not answer OPTIONS"),
            "{v}"
        );
        let health_page = call("/healthz", "GET").await.unwrap();
        assert_eq!(health_page.status(), StatusCode::SERVICE_UNAVAILABLE);

        health.set_down_reasons(Vec::new());
        assert_eq!(
            call("/healthz", "GET").await.unwrap().status(),
            StatusCode::OK
        );
        // The gate's budget of two is spent: the next request is limited, health is not.
        let limited = call("/AgoraAccount", "POST").await.unwrap();
        assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "1");
        assert_eq!(state.metrics.requests(Outcome::Limited), 1);
    }
}
