//! The two-centre view (issue 12): `[cluster]` names the other nodes' APIs, and the CDR,
//! statistics, chart, live-call, alarm and process endpoints answer for several nodes with
//! `scope=cluster` (every node) or `node=NAME` (one of them). This node asks its peers at
//! once, each within its timeout, and names those that did not answer in `unavailable`.
//!
//! Nodes authenticate to each other with a shared secret: a peer request carries
//! `X-Sipedge-Peer: <node>:<unix-ts>:<hex HMAC-SHA256(secret, node|ts|method|path?query)>`,
//! accepted within [`MAX_SKEW_S`] of this node's clock. A peer request stands for the API
//! user who asked the first node, which checked that user; it is answered with this node's
//! own data only, so that a view never fans out twice and two nodes listing each other
//! cannot loop. Everyone else passes `api.allow` and `api.users` as before, so a client who
//! may not use this node cannot reach its peers through it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use sipedge_store::CdrId;

use crate::access::{self, Access};
use crate::client;
use crate::json_error;
use crate::params::BadParam;

/// The header a peer request carries.
pub const PEER_HEADER: &str = "x-sipedge-peer";
/// How far a peer request's timestamp may be from this node's clock, either way: the two
/// centres keep time by NTP, and a captured header is useless once it is this old.
pub const MAX_SKEW_S: i64 = 30;
/// The shortest secret accepted: 16 bytes, e.g. `openssl rand -hex 32` gives 64.
const MIN_SECRET_LEN: usize = 16;
/// The longest a peer's answer may be; 1000 CDRs are well under 2 MiB.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// The `[cluster]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The other nodes whose data the cluster view shows.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// A file holding the secret the nodes share (trailing white space is ignored); readable
    /// by sipedge only. Every node of the cluster needs it, also one that lists no peers but
    /// is listed by others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The secret written in the file itself, for a test bench; prefer `secret_file`. Never
    /// shown by `check-config`.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// How long a peer may take to answer before it is listed as unavailable.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// One `[[cluster.peers]]` entry (or an inline `{ name = …, url = … }`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's `node.name`, as the node selector and `unavailable` show it.
    pub name: String,
    /// Its API: `http://host[:port]`, the address of its `api.listen`.
    pub url: String,
    /// This peer's own timeout, e.g. for the far data centre; `cluster.timeout` otherwise.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde"
    )]
    pub timeout: Option<Duration>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            peers: Vec::new(),
            secret_file: None,
            secret: None,
            timeout: default_timeout(),
        }
    }
}

/// A timeout longer than this would hold an operator's page for nothing.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

impl ClusterConfig {
    /// Problems a person must fix, one line each naming the key; `node` is this node's name.
    /// Reads the secret file, so that `check-config` finds a missing one.
    pub fn problems(&self, node: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let timeout_problem = |key: String, t: Duration| {
            (t.is_zero() || t > MAX_TIMEOUT)
                .then(|| format!("{key}: must be longer than 0s and at most 60s"))
        };
        problems.extend(timeout_problem("cluster.timeout".into(), self.timeout));
        let mut seen = std::collections::HashSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let name = peer.name.as_str();
            if name.is_empty() || name.trim() != name || name.contains([':', ',']) {
                problems.push(format!(
                    "cluster.peers[{i}].name: {name:?} must be non-empty, without ':', ',' or surrounding spaces"
                ));
            } else if name == node {
                problems.push(format!(
                    "cluster.peers[{i}].name: {name:?} is this node's own node.name"
                ));
            } else if !seen.insert(name) {
                problems.push(format!("cluster.peers[{i}].name: {name:?} appears twice"));
            }
            if let Err(e) = PeerUrl::parse(&peer.url) {
                problems.push(format!("cluster.peers[{i}].url: {e}"));
            }
            if let Some(t) = peer.timeout {
                problems.extend(timeout_problem(format!("cluster.peers[{i}].timeout"), t));
            }
        }
        match self.secret() {
            Err(e) => problems.push(e),
            Ok(None) if !self.peers.is_empty() => problems.push(
                "cluster.secret_file: the peers need the secret the nodes share; \
                 write one (e.g. openssl rand -hex 32) into a file readable by sipedge only"
                    .to_owned(),
            ),
            Ok(_) => {}
        }
        problems
    }

    /// The shared secret, from `secret_file` or `secret`; `None` when neither is given.
    pub fn secret(&self) -> Result<Option<Vec<u8>>, String> {
        let (key, text) = match (&self.secret_file, &self.secret) {
            (Some(_), Some(_)) => {
                return Err(
                    "cluster.secret: give secret_file or secret, not both (prefer secret_file)"
                        .to_owned(),
                );
            }
            (None, None) => return Ok(None),
            (Some(path), None) => {
                let text = std::fs::read(path).map_err(|e| {
                    format!("cluster.secret_file: cannot read {}: {e}", path.display())
                })?;
                ("cluster.secret_file", text)
            }
            (None, Some(text)) => ("cluster.secret", text.clone().into_bytes()),
        };
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        let secret = text[..end].to_vec();
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "{key}: the secret must be at least {MIN_SECRET_LEN} bytes (e.g. openssl rand -hex 32)"
            ));
        }
        Ok(Some(secret))
    }
}

/// A peer's API address split for the HTTP client.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerUrl {
    /// Host name or address to connect to (IPv6 without brackets).
    host: String,
    port: u16,
    /// What the `Host` header says.
    authority: String,
}

impl PeerUrl {
    /// `http://host[:port][/]`; plain HTTP like the rest of port 8068, whose clients already
    /// reach it across the bank's network.
    fn parse(url: &str) -> Result<PeerUrl, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} must start with http://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(format!(
                "{url:?} must be the peer's API address alone, without a path"
            ));
        }
        let bad = || format!("{url:?} has no usable host[:port]");
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (host, p.parse::<u16>().map_err(|_| bad())?),
                None if after.is_empty() => (host, 80),
                None => return Err(bad()),
            }
        } else {
            match authority.split_once(':') {
                Some((host, p)) => (host, p.parse::<u16>().map_err(|_| bad())?),
                None => (authority, 80),
            }
        };
        if host.is_empty() || port == 0 || host.contains(['@', ' ', '?', '#']) {
            return Err(bad());
        }
        Ok(PeerUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
        })
    }
}

/// One peer as the API asks it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    url: PeerUrl,
    timeout: Duration,
}

/// The cluster as this node's API uses it.
#[derive(Debug)]
pub struct Cluster {
    /// `node.name`: how peer requests from here sign, and how this node is selected.
    node: String,
    peers: Vec<Peer>,
    /// Absent: this node neither asks peers nor answers them.
    secret: Option<Vec<u8>>,
}

/// Why a peer request was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("this node has no [cluster] secret, so it answers no peer requests")]
    NoSecret,
    #[error("X-Sipedge-Peer: not <node>:<unix-time>:<hex HMAC>")]
    Malformed,
    #[error(
        "X-Sipedge-Peer: the timestamp is {0} s away from this node's clock (at most {MAX_SKEW_S} s); check NTP"
    )]
    Skew(i64),
    #[error("X-Sipedge-Peer: the signature does not match; do the nodes share the same secret?")]
    BadSignature,
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], node: &str, ts: i64, method: &str, path_and_query: &str) -> HmacSha256 {
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(format!("{node}|{ts}|{method}|{path_and_query}").as_bytes());
    mac
}

/// The `X-Sipedge-Peer` value of a request from `node` at `ts` (Unix seconds).
pub fn sign(secret: &[u8], node: &str, ts: i64, method: &str, path_and_query: &str) -> String {
    let tag = mac(secret, node, ts, method, path_and_query)
        .finalize()
        .into_bytes();
    format!("{node}:{ts}:{}", hex::encode(tag))
}

/// The peer named by a valid `X-Sipedge-Peer` value, checked against `now` (Unix seconds).
pub fn verify(
    secret: &[u8],
    header: &str,
    method: &str,
    path_and_query: &str,
    now: i64,
) -> Result<String, PeerAuthError> {
    let mut parts = header.trim().splitn(3, ':');
    let (Some(node), Some(ts), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(PeerAuthError::Malformed);
    };
    let ts: i64 = ts.parse().map_err(|_| PeerAuthError::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| PeerAuthError::Malformed)?;
    if node.is_empty() || tag.len() != 32 {
        return Err(PeerAuthError::Malformed);
    }
    let skew = now.saturating_sub(ts);
    if skew.saturating_abs() > MAX_SKEW_S {
        return Err(PeerAuthError::Skew(skew));
    }
    mac(secret, node, ts, method, path_and_query)
        .verify_slice(&tag)
        .map_err(|_| PeerAuthError::BadSignature)?;
    Ok(node.to_owned())
}

/// Marks a request that came from a peer, with the peer's name: it is answered with this
/// node's data only.
#[derive(Debug, Clone)]
pub struct PeerCaller(pub String);

/// Which nodes a request asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// No `scope` or `node`: this node alone, the answer of a single node.
    Local,
    /// Several nodes' answers merged: this node when `local`, and the peers at these indexes.
    Nodes { local: bool, peers: Vec<usize> },
}

/// What a peer answered (the body of its 200), or why it is unavailable.
#[derive(Debug)]
pub struct Answer {
    pub peer: String,
    pub body: Result<bytes::Bytes, Failure>,
}

impl Answer {
    /// The body read as `T`: read straight into the type the merge needs, since a peer's
    /// page of a thousand CDRs is most of a cluster query's work.
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, Failure> {
        let body = self.body.as_ref().map_err(Clone::clone)?;
        serde_json::from_slice(body)
            .map_err(|e| Failure::new(format!("the answer cannot be read: {e}")))
    }
}

/// Why a peer's answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The peer's own status when it answered with an error (e.g. 404 for an unknown id).
    pub status: Option<StatusCode>,
    pub reason: String,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Failure {
        Failure {
            status: None,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Cluster {
    /// The cluster of `config`, its secret read; the error is one line naming the key.
    pub fn new(node: &str, config: &ClusterConfig) -> Result<Cluster, String> {
        if let Some(problem) = config.problems(node).into_iter().next() {
            return Err(problem);
        }
        let peers = config
            .peers
            .iter()
            .map(|p| {
                Ok(Peer {
                    name: p.name.clone(),
                    url: PeerUrl::parse(&p.url)?,
                    timeout: p.timeout.unwrap_or(config.timeout),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Cluster {
            node: node.to_owned(),
            peers,
            secret: config.secret()?,
        })
    }

    /// A node without peers that answers no peer requests.
    pub fn alone(node: &str) -> Cluster {
        Cluster {
            node: node.to_owned(),
            peers: Vec::new(),
            secret: None,
        }
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// Takes `scope` and `node` out of `params` and says which nodes they select.
    pub fn select(
        &self,
        params: &mut HashMap<String, String>,
        from_peer: bool,
    ) -> Result<Selection, BadParam> {
        let mut take = |name: &str| {
            params
                .remove(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let (scope, node) = (take("scope"), take("node"));
        if from_peer && (scope.is_some() || node.is_some()) {
            let name = if scope.is_some() { "scope" } else { "node" };
            return Err(BadParam(format!(
                "{name}: a peer's request is answered with this node's data only"
            )));
        }
        let cluster = match scope.as_deref() {
            None => false,
            Some("local") => {
                if node.is_some() {
                    return Err(BadParam(
                        "node: give node=NAME without scope=local (scope=local is this node)"
                            .to_owned(),
                    ));
                }
                false
            }
            Some("cluster") => true,
            Some(other) => {
                return Err(BadParam(format!(
                    "scope: {other:?} is not local or cluster"
                )));
            }
        };
        match node {
            Some(name) if name == self.node => Ok(Selection::Nodes {
                local: true,
                peers: Vec::new(),
            }),
            Some(name) => match self.peers.iter().position(|p| p.name == name) {
                Some(i) => Ok(Selection::Nodes {
                    local: false,
                    peers: vec![i],
                }),
                None => {
                    let mut known = vec![format!("{} (this node)", self.node)];
                    known.extend(self.peers.iter().map(|p| p.name.clone()));
                    Err(BadParam(format!(
                        "node: {name:?} is not a node of this cluster; known nodes are {}",
                        known.join(", ")
                    )))
                }
            },
            None if cluster => Ok(Selection::Nodes {
                local: true,
                peers: (0..self.peers.len()).collect(),
            }),
            None => Ok(Selection::Local),
        }
    }

    /// The node names of a selection, this node first, then the peers in configured order.
    pub fn names<'a>(&'a self, local: bool, peers: &[usize]) -> Vec<&'a str> {
        let mut names = Vec::new();
        if local {
            names.push(self.node.as_str());
        }
        names.extend(
            peers
                .iter()
                .filter_map(|&i| self.peers.get(i))
                .map(|p| p.name.as_str()),
        );
        names
    }

    /// GETs `path_and_query` from each peer at once, each within its timeout.
    pub async fn ask(&self, peers: &[usize], path_and_query: &str) -> Vec<Answer> {
        let asks = peers
            .iter()
            .filter_map(|&i| self.peers.get(i))
            .map(|peer| self.ask_one(peer, path_and_query));
        futures_util::future::join_all(asks).await
    }

    async fn ask_one(&self, peer: &Peer, path_and_query: &str) -> Answer {
        let body = match &self.secret {
            None => Err(Failure::new("this node has no cluster secret")),
            Some(secret) => {
                let header = sign(secret, &self.node, unix_now(), "GET", path_and_query);
                let target = client::Target {
                    host: &peer.url.host,
                    port: peer.url.port,
                    authority: &peer.url.authority,
                    path: path_and_query,
                };
                let headers = [(PEER_HEADER, header.as_str())];
                let request = client::get(target, &headers, MAX_ANSWER_BYTES);
                match tokio::time::timeout(peer.timeout, request).await {
                    Err(_) => Err(Failure::new(format!("no answer within {:?}", peer.timeout))),
                    Ok(Err(e)) => Err(Failure::new(e)),
                    Ok(Ok((status, body))) => decode(status, body),
                }
            }
        };
        if let Err(reason) = &body {
            tracing::warn!(peer = %peer.name, path = %path_and_query, %reason, "cluster peer unavailable");
        }
        Answer {
            peer: peer.name.clone(),
            body,
        }
    }
}

fn decode(status: client::StatusCode, body: bytes::Bytes) -> Result<bytes::Bytes, Failure> {
    if status == client::StatusCode::OK {
        return Ok(body);
    }
    let said = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    Err(Failure {
        status: Some(status),
        reason: format!("answered {status} {said}").trim_end().to_owned(),
    })
}

/// The id a peer request resumes after (`after`, sent by the node that merges): taken out of
/// `params` for a peer; others may not send it, and [`crate::params::parse`] refuses it as
/// unknown.
pub fn take_after(
    params: &mut HashMap<String, String>,
    from_peer: bool,
) -> Result<Option<CdrId>, BadParam> {
    if !from_peer {
        return Ok(None);
    }
    params
        .remove("after")
        .map(|text| {
            text.trim()
                .parse()
                .map_err(|e| BadParam(format!("after: {e}")))
        })
        .transpose()
}

/// The zone a peer request wants buckets in (`zone`, the merging node's), for a peer only.
pub fn take_zone(
    params: &mut HashMap<String, String>,
    from_peer: bool,
) -> Result<Option<chrono_tz::Tz>, BadParam> {
    if !from_peer {
        return Ok(None);
    }
    params
        .remove("zone")
        .map(|name| {
            name.trim()
                .parse()
                .map_err(|_| BadParam(format!("zone: {name:?} is not an IANA time zone")))
        })
        .transpose()
}

/// The API's access middleware: a request carrying `X-Sipedge-Peer` must come from
/// `api.allow` and be signed with the shared secret (403 otherwise); every other request
/// goes through [`access::guard`].
pub async fn guard(
    State((access, cluster)): State<(Arc<Access>, Arc<Cluster>)>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(header) = request.headers().get(PEER_HEADER).cloned() else {
        return access::guard(State(access), ConnectInfo(client), request, next).await;
    };
    if !access.allows(client.ip()) {
        tracing::info!(%client, "peer request from outside api.allow refused");
        return json_error(
            StatusCode::FORBIDDEN,
            "this client's address is not in api.allow",
        );
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let checked = match (&cluster.secret, header_text(&header)) {
        (None, _) => Err(PeerAuthError::NoSecret),
        (Some(_), None) => Err(PeerAuthError::Malformed),
        (Some(secret), Some(text)) => verify(
            secret,
            text,
            request.method().as_str(),
            &path_and_query,
            unix_now(),
        ),
    };
    match checked {
        Ok(peer) => {
            request.extensions_mut().insert(PeerCaller(peer));
            next.run(request).await
        }
        Err(e) => {
            tracing::warn!(%client, path = %path_and_query, error = %e, "peer request refused");
            json_error(StatusCode::FORBIDDEN, &e.to_string())
        }
    }
}

fn header_text(value: &HeaderValue) -> Option<&str> {
    value.to_str().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a shared secret of the two centres";

    #[test]
    fn peer_signatures_table() {
        let now = 1_800_000_000;
        let pq = "/api/cdrs?start=x&limit=5";
        let good = sign(SECRET, "sz-01", now - 3, "GET", pq);
        assert_eq!(verify(SECRET, &good, "GET", pq, now), Ok("sz-01".into()));
        let cases: Vec<(String, &str, &str, i64, PeerAuthError)> = vec![
            (
                good.clone(),
                "GET",
                "/api/cdrs?start=x&limit=6",
                now,
                PeerAuthError::BadSignature,
            ),
            (good.clone(), "HEAD", pq, now, PeerAuthError::BadSignature),
            (
                good.replacen("sz-01", "sz-02", 1),
                "GET",
                pq,
                now,
                PeerAuthError::BadSignature,
            ),
            (
                sign(b"another secret entirely", "sz-01", now, "GET", pq),
                "GET",
                pq,
                now,
                PeerAuthError::BadSignature,
            ),
            (
                sign(SECRET, "sz-01", now - 31, "GET", pq),
                "GET",
                pq,
                now,
                PeerAuthError::Skew(31),
            ),
            (
                sign(SECRET, "sz-01", now + 31, "GET", pq),
                "GET",
                pq,
                now,
                PeerAuthError::Skew(-31),
            ),
            (String::new(), "GET", pq, now, PeerAuthError::Malformed),
            ("sz-01".into(), "GET", pq, now, PeerAuthError::Malformed),
            (
                "sz-01:abc:00".into(),
                "GET",
                pq,
                now,
                PeerAuthError::Malformed,
            ),
            (
                format!("sz-01:{now}:zz"),
                "GET",
                pq,
                now,
                PeerAuthError::Malformed,
            ),
            (
                format!("sz-01:{now}:"),
                "GET",
                pq,
                now,
                PeerAuthError::Malformed,
            ),
            (
                format!(":{now}:{}", "0".repeat(64)),
                "GET",
                pq,
                now,
                PeerAuthError::Malformed,
            ),
            (
                format!("sz-01:{}:{}", i64::MIN, "0".repeat(64)),
                "GET",
                pq,
                now,
                PeerAuthError::Skew(i64::MAX),
            ),
        ];
        for (header, method, path, at, want) in cases {
            assert_eq!(
                verify(SECRET, &header, method, path, at),
                Err(want),
                "{header:?} {method} {path}"
            );
        }
        // HMAC-SHA256 as Python's hmac module computes it, so that another implementation
        // can sign for a node.
        assert_eq!(
            sign(SECRET, "sz-01", 1_800_000_000, "GET", "/api/cdrs?limit=5"),
            "sz-01:1800000000:9f0ccfa219577d2b007bb0d4306ce78e7e34b627418378fee2c668bdc5f0a0aa"
        );
        let edge = sign(SECRET, "sz-01", now - MAX_SKEW_S, "GET", pq);
        assert!(
            verify(SECRET, &edge, "GET", pq, now).is_ok(),
            "the window's edge is inside"
        );
    }

    fn config(text: &str) -> ClusterConfig {
        toml::from_str(text).unwrap()
    }

    fn problems(text: &str) -> Vec<String> {
        config(text).problems("sh-01")
    }

    #[test]
    fn config_problems_name_the_key() {
        let secret = "secret = \"0123456789abcdef\"\n";
        assert_eq!(problems(""), Vec::<String>::new());
        assert_eq!(problems(secret), Vec::<String>::new());
        let ok = format!(
            "{secret}timeout = \"500ms\"\npeers = [{{ name = \"sz-01\", url = \"http://127.0.0.1:8068\" }}, \
             {{ name = \"sz-02\", url = \"http://[::1]:8068/\", timeout = \"3s\" }}]\n"
        );
        assert_eq!(problems(&ok), Vec::<String>::new());
        let peer = |name: &str, url: &str| {
            format!("{secret}peers = [{{ name = \"{name}\", url = \"{url}\" }}]\n")
        };
        let cases: Vec<(String, &str)> = vec![
            (peer("", "http://a:1"), "cluster.peers[0].name"),
            (peer("sz 01 ", "http://a:1"), "cluster.peers[0].name"),
            (peer("a:b", "http://a:1"), "cluster.peers[0].name"),
            (
                peer("sh-01", "http://a:1"),
                "cluster.peers[0].name: \"sh-01\" is this node's",
            ),
            (peer("sz-01", "https://a:1"), "cluster.peers[0].url"),
            (peer("sz-01", "http://a:1/api"), "cluster.peers[0].url"),
            (peer("sz-01", "http://a:0"), "cluster.peers[0].url"),
            (peer("sz-01", "http://:80"), "cluster.peers[0].url"),
            (peer("sz-01", "http://a:99999"), "cluster.peers[0].url"),
            (
                format!(
                    "{secret}peers = [{{ name = \"a\", url = \"http://a:1\" }}, {{ name = \"a\", url = \"http://b:1\" }}]"
                ),
                "cluster.peers[1].name: \"a\" appears twice",
            ),
            (
                format!(
                    "{secret}peers = [{{ name = \"a\", url = \"http://a:1\", timeout = \"0s\" }}]"
                ),
                "cluster.peers[0].timeout",
            ),
            (format!("{secret}timeout = \"2m\""), "cluster.timeout"),
            (
                "peers = [{ name = \"a\", url = \"http://a:1\" }]".into(),
                "cluster.secret_file",
            ),
            (
                "secret = \"short\"".into(),
                "cluster.secret: the secret must be at least 16",
            ),
            (
                format!("{secret}secret_file = \"/x\""),
                "cluster.secret: give secret_file or secret",
            ),
            (
                "secret_file = \"/nonexistent/sipedge-secret\"".into(),
                "cluster.secret_file: cannot read /nonexistent",
            ),
        ];
        for (text, want) in cases {
            let got = problems(&text);
            assert!(
                got.iter().any(|p| p.starts_with(want)),
                "{text}\n=> {got:?}, want {want}"
            );
        }
        for text in [
            "colour = 1",
            "peers = [{ name = \"a\", url = \"http://a:1\", weight = 2 }]",
        ] {
            assert!(toml::from_str::<ClusterConfig>(text).is_err(), "{text}");
        }
    }

    #[test]
    fn the_secret_file_is_read_without_its_line_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        let cfg = ClusterConfig {
            secret_file: Some(path),
            ..ClusterConfig::default()
        };
        assert_eq!(cfg.secret(), Ok(Some(b"0123456789abcdef0123".to_vec())));
    }

    fn cluster() -> Cluster {
        Cluster::new(
            "sh-01",
            &config(
                "secret = \"0123456789abcdef\"\npeers = [{ name = \"sz-01\", url = \"http://127.0.0.1:1\" }, \
                 { name = \"sz-02\", url = \"http://127.0.0.1:2\" }]",
            ),
        )
        .unwrap()
    }

    /// (query pairs, whether a peer asks, the selection or how its error starts)
    type SelectionCase = (
        &'static [(&'static str, &'static str)],
        bool,
        Result<Selection, &'static str>,
    );

    #[test]
    fn selections_table() {
        let cluster = cluster();
        let all = Selection::Nodes {
            local: true,
            peers: vec![0, 1],
        };
        let cases: Vec<SelectionCase> = vec![
            (&[], false, Ok(Selection::Local)),
            (&[("scope", "local")], false, Ok(Selection::Local)),
            (&[("scope", " ")], false, Ok(Selection::Local)),
            (&[("scope", "cluster")], false, Ok(all.clone())),
            (
                &[("node", "sz-02")],
                false,
                Ok(Selection::Nodes {
                    local: false,
                    peers: vec![1],
                }),
            ),
            (
                &[("node", "sz-02"), ("scope", "cluster")],
                false,
                Ok(Selection::Nodes {
                    local: false,
                    peers: vec![1],
                }),
            ),
            (
                &[("node", "sh-01")],
                false,
                Ok(Selection::Nodes {
                    local: true,
                    peers: vec![],
                }),
            ),
            (
                &[("scope", "world")],
                false,
                Err("scope: \"world\" is not local or cluster"),
            ),
            (
                &[("node", "bj-01")],
                false,
                Err(
                    "node: \"bj-01\" is not a node of this cluster; known nodes are sh-01 (this node), sz-01, sz-02",
                ),
            ),
            (
                &[("node", "sz-01"), ("scope", "local")],
                false,
                Err("node: give node=NAME without scope=local"),
            ),
            (
                &[("scope", "cluster")],
                true,
                Err("scope: a peer's request"),
            ),
            (&[("node", "sz-01")], true, Err("node: a peer's request")),
            (&[], true, Ok(Selection::Local)),
        ];
        for (pairs, from_peer, want) in cases {
            let mut params: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .chain([("limit".to_owned(), "5".to_owned())])
                .collect();
            let got = cluster.select(&mut params, from_peer);
            match want {
                Ok(sel) => {
                    assert_eq!(got, Ok(sel), "{pairs:?}");
                    assert_eq!(params.len(), 1, "scope and node are taken out: {params:?}");
                }
                Err(text) => {
                    let err = got.expect_err(&format!("{pairs:?}"));
                    assert!(err.0.starts_with(text), "{pairs:?}: {err}");
                }
            }
        }
        assert_eq!(cluster.names(true, &[1]), vec!["sh-01", "sz-02"]);
    }

    #[test]
    fn peer_only_parameters_are_read_for_peers_alone() {
        let mut params: HashMap<String, String> = [
            ("after".to_owned(), "0".repeat(32)),
            ("zone".to_owned(), "Asia/Shanghai".to_owned()),
        ]
        .into();
        assert_eq!(take_after(&mut params, false), Ok(None));
        assert_eq!(take_zone(&mut params, false), Ok(None));
        assert_eq!(params.len(), 2, "left for the parser to refuse");
        assert_eq!(take_after(&mut params, true), Ok(Some(CdrId(0))));
        assert_eq!(
            take_zone(&mut params, true),
            Ok(Some(chrono_tz::Asia::Shanghai))
        );
        let mut bad: HashMap<String, String> = [
            ("after".to_owned(), "x".to_owned()),
            ("zone".to_owned(), "Mars/Base".to_owned()),
        ]
        .into();
        assert!(
            take_after(&mut bad, true)
                .unwrap_err()
                .0
                .starts_with("after")
        );
        assert!(take_zone(&mut bad, true).unwrap_err().0.starts_with("zone"));
    }

    #[tokio::test]
    async fn a_peer_that_is_not_there_is_unavailable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = listener.local_addr().unwrap();
        drop(listener);
        // One that accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let cluster = Cluster::new(
            "sh-01",
            &config(&format!(
                "secret = \"0123456789abcdef\"\ntimeout = \"200ms\"\npeers = [\
                 {{ name = \"down\", url = \"http://{closed}\" }}, \
                 {{ name = \"slow\", url = \"http://{silent_addr}\" }}]"
            )),
        )
        .unwrap();
        let answers = cluster.ask(&[0, 1], "/api/calls/live").await;
        drop(silent);
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].peer, "down");
        assert!(
            answers[0]
                .body
                .as_ref()
                .unwrap_err()
                .reason
                .contains("connect")
        );
        assert_eq!(answers[1].peer, "slow");
        assert!(
            answers[1]
                .body
                .as_ref()
                .unwrap_err()
                .reason
                .contains("within")
        );
    }
}
