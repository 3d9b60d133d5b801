//! The two-centre view (issue 12): real sipedge nodes on loopback that list each other in
//! `[cluster]`, each with its own SIPp calls, asked for `scope=cluster` and `node=NAME`;
//! a node stopped or silent, peer requests forged, expired or from clients that may not use
//! the API, and bad parameters.
//!
//! Needs `sipp` (Debian `sip-tester`) on PATH.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use sipedge_store::UnixMs;
use support::Sipedge;
use support::config::{Config, Sip, quote};
use support::http::{get_json, get_with};
use support::ports::free_port;
use support::seed::{self, Seed};
use support::sipp::{Pair, Transport};

const SECRET: &str = "the two centres share this secret";
/// How long CDRs may take to appear: tracking, the writer's batch, a margin for a busy box.
const CDR_WAIT: Duration = Duration::from_secs(15);

/// A node named `name` whose API listens on `port` and whose peers are `peers` (name, port).
fn node(name: &str, port: u16, peers: &[(&str, u16)]) -> Config {
    let list: Vec<String> = peers
        .iter()
        .map(|(peer, port)| {
            format!(
                "{{ name = {}, url = \"http://127.0.0.1:{port}\" }}",
                quote(peer)
            )
        })
        .collect();
    Config::new(name)
        .set("api", "listen", &quote(&format!("127.0.0.1:{port}")))
        .set("cluster", "secret", &quote(SECRET))
        // Generous: a debug build on a loaded CI machine is slow; the silent peer sets its own.
        .set("cluster", "timeout", "\"5s\"")
        .set("cluster", "peers", &format!("[{}]", list.join(", ")))
}

/// Start and end of a window around now, as query parameters.
fn window() -> String {
    let now = Utc::now();
    let at = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    format!(
        "start={}&end={}",
        at(now - chrono::Duration::hours(12)),
        at(now + chrono::Duration::hours(12))
    )
}

fn get_ok(api: SocketAddr, path: &str) -> Value {
    let (status, body) = get_json(api, path);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Every CDR of `path` (which has its own conditions), following `next_cursor`.
fn walk(api: SocketAddr, path: &str) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut page_path = path.to_owned();
        if let Some(c) = &cursor {
            page_path.push_str(&format!("&cursor={c}"));
        }
        let page = get_ok(api, &page_path);
        pages += 1;
        assert!(pages < 1000, "the walk does not end");
        out.extend(page["items"].as_array().cloned().unwrap());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (out, pages),
        }
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Waits until `api` lists `count` CDRs of its own in the window.
fn wait_for_cdrs(api: SocketAddr, count: usize) -> Vec<Value> {
    let path = format!("/api/cdrs?{}&limit=1000", window());
    let mut items = Vec::new();
    let done = support::wait_until(CDR_WAIT, || {
        items = get_ok(api, &path)["items"].as_array().cloned().unwrap();
        items.len() >= count
    });
    assert!(done, "{api} has {} CDRs, expected {count}", items.len());
    assert_eq!(items.len(), count);
    items
}

/// `/api/stats` totals as (calls, connected, talk ms) per type.
fn totals(stats: &Value) -> Vec<(u64, u64, i64)> {
    ["audio", "video", "all"]
        .iter()
        .map(|t| {
            let c = &stats["totals"][t];
            (
                c["calls"].as_u64().unwrap(),
                c["connected"].as_u64().unwrap(),
                (c["talk_s"].as_f64().unwrap() * 1000.0).round() as i64,
            )
        })
        .collect()
}

#[test]
fn two_nodes_with_their_own_calls_answer_as_one() {
    support::require_tool("sipp", "-v", "sip-tester");
    let (sh_port, sz_port) = (free_port(), free_port());
    // Shenzhen keeps its times in UTC: the merged view shows every row in Shanghai's zone.
    let sh = Sipedge::start(&node("sh-01", sh_port, &[("sz-01", sz_port)]).sip(Sip::one_port()));
    let sz = Sipedge::start(
        &node("sz-01", sz_port, &[("sh-01", sh_port)])
            .sip(Sip::one_port())
            .set("node", "timezone", "\"UTC\"")
            .set("monitor", "interval", "\"1s\"")
            .set("monitor", "probe_timeout", "\"500ms\"")
            .append("[[monitor.process]]\nname = \"ghost\"\nmatch_name = \"no-such-proc\"\n"),
    );
    let (a, b) = (sh.addr("api"), sz.addr("api"));

    Pair::new("call", Transport::Udp, 4)
        .pause_ms(100)
        .run(sh.sip().addr(), sh.sip().upstream_addr())
        .assert_passed();
    Pair::new("busy", Transport::Udp, 3)
        .run(sz.sip().addr(), sz.sip().upstream_addr())
        .assert_passed();
    Pair::new("video", Transport::Tcp, 2)
        .pause_ms(100)
        .run(sz.sip().addr(), sz.sip().upstream_addr())
        .assert_passed();
    let mine = wait_for_cdrs(a, 4);
    let theirs = wait_for_cdrs(b, 5);

    // Both nodes' records, newest first as a local page, each once: B lists A as a peer too,
    // and still answers A's peer request with its own records alone.
    let mut expected: Vec<String> = ids(&mine).into_iter().chain(ids(&theirs)).collect();
    expected.sort_unstable_by(|x, y| y.cmp(x));
    for api in [a, b] {
        let merged = get_ok(api, &format!("/api/cdrs?scope=cluster&{}", window()));
        assert_eq!(ids(merged["items"].as_array().unwrap()), expected, "{api}");
        assert_eq!(merged["next_cursor"], Value::Null);
        assert_eq!(strings(&merged["unavailable"]), Vec::<String>::new());
        let nodes: HashSet<String> = strings(&merged["nodes"]).into_iter().collect();
        assert_eq!(nodes, HashSet::from(["sh-01".into(), "sz-01".into()]));
    }
    let merged = get_ok(a, &format!("/api/cdrs?scope=cluster&{}", window()));
    for cdr in merged["items"].as_array().unwrap() {
        let start = cdr["start_time"].as_str().unwrap();
        assert!(start.ends_with("+08:00"), "shown in sh-01's zone: {cdr}");
        let own = if cdr["node"] == "sz-01" {
            &theirs
        } else {
            &mine
        };
        let same = own.iter().find(|c| c["id"] == cdr["id"]).unwrap();
        assert_eq!(
            support::cdrs::ms(same, "start_time"),
            support::cdrs::ms(cdr, "start_time")
        );
        assert_eq!(same["call_id"], cdr["call_id"]);
    }
    // The filters reach the peer: busy calls are Shenzhen's alone.
    let busy = get_ok(
        a,
        &format!("/api/cdrs?scope=cluster&status=not_connected&{}", window()),
    );
    let busy = busy["items"].as_array().unwrap();
    assert_eq!(busy.len(), 3);
    assert!(busy.iter().all(|c| c["node"] == "sz-01"));

    // One node by name, from the other.
    let one = get_ok(a, &format!("/api/cdrs?node=sz-01&{}", window()));
    assert_eq!(ids(one["items"].as_array().unwrap()), ids(&theirs));
    assert_eq!(strings(&one["nodes"]), vec!["sz-01"]);
    let id = theirs[0]["id"].as_str().unwrap();
    let record = get_ok(a, &format!("/api/cdrs/{id}?node=sz-01"));
    assert_eq!(record["id"], id);
    let log = get_ok(a, &format!("/api/cdrs/{id}/log?node=sz-01"));
    assert!(!log["entries"].as_array().unwrap().is_empty(), "{log}");
    let (status, missing) = get_json(a, &format!("/api/cdrs/{id}"));
    assert_eq!(status, 404, "not on this node: {missing}");

    // A cursor walks the merged list two at a time, without loss or repetition.
    let (walked, pages) = walk(a, &format!("/api/cdrs?scope=cluster&limit=2&{}", window()));
    assert_eq!(ids(&walked), expected);
    assert_eq!(pages, expected.len().div_ceil(2));
    let (walked, _) = walk(a, &format!("/api/cdrs?node=sz-01&limit=1&{}", window()));
    assert_eq!(ids(&walked), ids(&theirs));

    // Statistics: the sum of the two nodes' own, in the same hourly buckets.
    let local_a = get_ok(a, &format!("/api/stats?{}", window()));
    let local_b = get_ok(b, &format!("/api/stats?{}", window()));
    let cluster = get_ok(a, &format!("/api/stats?scope=cluster&{}", window()));
    let sum: Vec<(u64, u64, i64)> = totals(&local_a)
        .iter()
        .zip(totals(&local_b))
        .map(|(x, y)| (x.0 + y.0, x.1 + y.1, x.2 + y.2))
        .collect();
    assert_eq!(totals(&cluster), sum);
    assert_eq!(sum[2].0, 9, "every call counted");
    assert_eq!(cluster["bucket"], "hour");
    let buckets = cluster["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), local_a["buckets"].as_array().unwrap().len());
    let bucket_calls: u64 = buckets
        .iter()
        .map(|b| b["audio"]["calls"].as_u64().unwrap() + b["video"]["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(bucket_calls, 9);
    assert_eq!(strings(&cluster["unavailable"]), Vec::<String>::new());
    let chart = support::http::http(
        a,
        "GET",
        &format!("/api/stats.svg?scope=cluster&{}", window()),
        "",
    );
    assert_eq!(chart.status, 200);
    assert!(chart.body.starts_with("<svg"), "{}", chart.body);
    assert_eq!(chart.header("x-sipedge-unavailable"), None);

    // Alarms and processes, each row labelled with its node.
    let alarm = support::poll(Duration::from_secs(15), || {
        let alarms = get_ok(a, "/api/alarms?scope=cluster");
        alarms["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["target"] == "ghost")
            .cloned()
    })
    .expect("sz-01's process_missing alarm in the cluster's alarms");
    assert_eq!(alarm["node"], "sz-01");
    assert_eq!(alarm["kind"], "process_missing");
    assert!(alarm["raised_at"].as_str().unwrap().ends_with("+08:00"));
    let processes = get_ok(a, "/api/processes?scope=cluster");
    let ghost: Vec<&Value> = processes["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "ghost")
        .collect();
    assert_eq!(ghost.len(), 1, "{processes}");
    assert_eq!(ghost[0]["node"], "sz-01");
    assert_eq!(ghost[0]["state"], "missing");

    // A call in progress on Shenzhen is on Shanghai's cluster list while it lasts.
    let (target, upstream) = (sz.sip().addr(), sz.sip().upstream_addr());
    let call = std::thread::spawn(move || {
        Pair::new("call", Transport::Udp, 1)
            .pause_ms(3000)
            .run(target, upstream)
    });
    let live = support::poll(Duration::from_secs(10), || {
        let live = get_ok(a, "/api/calls/live?scope=cluster");
        let items = live["items"].as_array().unwrap();
        (!items.is_empty()).then(|| live.clone())
    })
    .expect("the call on sz-01 listed by sh-01");
    let items = live["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{live}");
    assert_eq!(items[0]["node"], "sz-01");
    assert_eq!(
        get_ok(a, "/api/calls/live")["items"],
        serde_json::json!([]),
        "the local list is sh-01's alone"
    );
    call.join().unwrap().assert_passed();
}

/// A TCP listener that accepts and never answers: a peer that hangs.
fn silent_peer() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

fn seeded(node_name: &str, n: u64, seed_no: u64) -> Seed {
    let from = UnixMs((Utc::now() - chrono::Duration::hours(6)).timestamp_millis());
    Seed {
        cdrs: seed::cdrs(node_name, from, 5 * 3_600_000, n, seed_no),
        ..Seed::default()
    }
}

#[test]
fn a_stopped_or_silent_peer_is_named_and_the_rest_is_served() {
    let (sh_port, sz_port) = (free_port(), free_port());
    let (silent, silent_port) = silent_peer();
    let sh = Sipedge::start_seeded(
        // The silent one's own timeout is short; the others keep the generous default.
        &node("sh-01", sh_port, &[]).set(
            "cluster",
            "peers",
            &format!(
                "[{{ name = \"sz-01\", url = \"http://127.0.0.1:{sz_port}\" }}, \
                 {{ name = \"sz-02\", url = \"http://127.0.0.1:{silent_port}\", timeout = \"400ms\" }}]"
            ),
        ),
        &seeded("sh-01", 30, 1),
    );
    let mut sz = Sipedge::start_seeded(&node("sz-01", sz_port, &[]), &seeded("sz-01", 20, 2));
    let a = sh.addr("api");
    let path = format!("/api/cdrs?scope=cluster&limit=1000&{}", window());

    let merged = get_ok(a, &path);
    assert_eq!(merged["items"].as_array().unwrap().len(), 50);
    assert_eq!(strings(&merged["nodes"]), vec!["sh-01", "sz-01"]);
    assert_eq!(strings(&merged["unavailable"]), vec!["sz-02"]);

    sz.stop();
    for path in [
        path.clone(),
        format!("/api/stats?scope=cluster&{}", window()),
        "/api/calls/live?scope=cluster".to_owned(),
        "/api/alarms?scope=cluster".to_owned(),
        "/api/processes?scope=cluster".to_owned(),
    ] {
        let answer = get_ok(a, &path);
        assert_eq!(strings(&answer["nodes"]), vec!["sh-01"], "{path}");
        assert_eq!(
            strings(&answer["unavailable"]),
            vec!["sz-01", "sz-02"],
            "{path}"
        );
    }
    let merged = get_ok(a, &path);
    let items = merged["items"].as_array().unwrap();
    assert_eq!(items.len(), 30, "sh-01's own records are served");
    assert!(items.iter().all(|c| c["node"] == "sh-01"));
    let stats = get_ok(a, &format!("/api/stats?scope=cluster&{}", window()));
    assert_eq!(totals(&stats)[2].0, 30);
    let chart = support::http::http(
        a,
        "GET",
        &format!("/api/stats.svg?scope=cluster&{}", window()),
        "",
    );
    assert_eq!(chart.status, 200);
    assert_eq!(chart.header("x-sipedge-unavailable"), Some("sz-01, sz-02"));
    let only = get_ok(a, &format!("/api/cdrs?node=sz-01&{}", window()));
    assert_eq!(only["items"], serde_json::json!([]));
    assert_eq!(strings(&only["unavailable"]), vec!["sz-01"]);
    let id = "0".repeat(32);
    let (status, body) = get_json(a, &format!("/api/cdrs/{id}?node=sz-01"));
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("sz-01"), "{body}");

    // Back again: it answers again, no restart of the asking node needed.
    sz.restart();
    let merged = get_ok(a, &path);
    assert_eq!(merged["items"].as_array().unwrap().len(), 50);
    assert_eq!(strings(&merged["unavailable"]), vec!["sz-02"]);
    drop(silent);
}

fn peer_header(secret: &str, node: &str, ts: i64, path: &str) -> String {
    sipedge_http::cluster::sign(secret.as_bytes(), node, ts, "GET", path)
}

#[test]
fn peer_requests_are_signed_and_answered_with_local_data_only() {
    let (sh_port, sz_port) = (free_port(), free_port());
    let hash = sipedge_http::access::hash_password("s3cret").unwrap();
    let users = format!("[[api.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\n");
    // sz-01 reads its secret from a file, as production should.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let sz_config = Config::new("sz-01")
        .set("api", "listen", &quote(&format!("127.0.0.1:{sz_port}")))
        .set(
            "cluster",
            "secret_file",
            &quote(&secret_file.display().to_string()),
        )
        .set(
            "cluster",
            "peers",
            &format!("[{{ name = \"sh-01\", url = \"http://127.0.0.1:{sh_port}\" }}]"),
        )
        .append(&users);
    let sz = Sipedge::start_seeded(&sz_config, &seeded("sz-01", 12, 3));
    let sh = Sipedge::start_seeded(
        &node("sh-01", sh_port, &[("sz-01", sz_port)]).append(&users),
        &seeded("sh-01", 7, 4),
    );
    let (a, b) = (sh.addr("api"), sz.addr("api"));
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:s3cret")
    );
    let wrong = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ops:guess")
    );
    let cluster_path = format!("/api/cdrs?scope=cluster&limit=1000&{}", window());

    // An operator who may use sh-01 sees both nodes; one who may not reaches neither.
    let ok = get_with(a, &cluster_path, &[("Authorization", &basic)]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json()["items"].as_array().unwrap().len(), 19);
    assert_eq!(strings(&ok.json()["unavailable"]), Vec::<String>::new());
    for headers in [vec![], vec![("Authorization", wrong.as_str())]] {
        let refused = get_with(a, &cluster_path, &headers);
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.json()["error"].is_string());
    }

    // A signed peer request needs no API user, and gets the local records only.
    let now = Utc::now().timestamp();
    let local_path = format!("/api/cdrs?limit=1000&{}", window());
    let signed = get_with(
        b,
        &local_path,
        &[(
            "X-Sipedge-Peer",
            &peer_header(SECRET, "sh-01", now, &local_path),
        )],
    );
    assert_eq!(signed.status, 200, "{}", signed.body);
    let items = signed.json()["items"].as_array().cloned().unwrap();
    assert_eq!(items.len(), 12);
    assert!(items.iter().all(|c| c["node"] == "sz-01"));

    // Forged, expired, malformed, signed for another path: 403 with the error shape.
    let refused = [
        peer_header("not the secret of these nodes", "sh-01", now, &local_path),
        peer_header(SECRET, "sh-01", now - 120, &local_path),
        peer_header(SECRET, "sh-01", now + 120, &local_path),
        peer_header(SECRET, "sh-01", now, "/api/cdrs?limit=1"),
        "sh-01".to_owned(),
        format!("sh-01:{now}:{}", "0".repeat(64)),
    ];
    for header in &refused {
        let reply = get_with(b, &local_path, &[("X-Sipedge-Peer", header)]);
        assert_eq!(reply.status, 403, "{header}: {}", reply.body);
        assert!(
            reply.json()["error"]
                .as_str()
                .unwrap()
                .contains("X-Sipedge-Peer"),
            "{}",
            reply.body
        );
        // Basic credentials beside a bad peer header do not let it through either.
        let reply = get_with(
            b,
            &local_path,
            &[("X-Sipedge-Peer", header), ("Authorization", &basic)],
        );
        assert_eq!(reply.status, 403, "{header}: {}", reply.body);
    }

    // No loops: a peer request never fans out again.
    let fan = format!("/api/cdrs?scope=cluster&{}", window());
    let reply = get_with(
        b,
        &fan,
        &[("X-Sipedge-Peer", &peer_header(SECRET, "sh-01", now, &fan))],
    );
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.json()["error"].as_str().unwrap().starts_with("scope"));
    let one = "/api/calls/live?node=sh-01";
    let reply = get_with(
        b,
        one,
        &[("X-Sipedge-Peer", &peer_header(SECRET, "sh-01", now, one))],
    );
    assert_eq!(reply.status, 400, "{}", reply.body);

    // The peer-only `after` is not for other clients.
    let after = format!("/api/cdrs?after={}&{}", "0".repeat(32), window());
    let reply = get_with(b, &after, &[("Authorization", &basic)]);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.json()["error"].as_str().unwrap().starts_with("after"));

    // A node without a cluster secret answers no peer request.
    let lone = Sipedge::start(&Config::new("lone"));
    let path = "/api/calls/live";
    let reply = get_with(
        lone.addr("api"),
        path,
        &[("X-Sipedge-Peer", &peer_header(SECRET, "sh-01", now, path))],
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[test]
fn clients_outside_api_allow_cannot_reach_the_peers() {
    let (sh_port, sz_port) = (free_port(), free_port());
    let sz = Sipedge::start(&node("sz-01", sz_port, &[]));
    let sh = Sipedge::start(&node("sh-01", sh_port, &[("sz-01", sz_port)]).set(
        "api",
        "allow",
        "[\"127.0.0.2/32\"]",
    ));
    let path = format!("/api/cdrs?scope=cluster&{}", window());
    let (status, body) = get_json(sh.addr("api"), &path);
    assert_eq!(status, 403, "{body}");
    // Nor with a valid peer header: api.allow applies to peers as well.
    let now = Utc::now().timestamp();
    let reply = get_with(
        sh.addr("api"),
        "/api/calls/live",
        &[(
            "X-Sipedge-Peer",
            &peer_header(SECRET, "sz-01", now, "/api/calls/live"),
        )],
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
    drop(sz);
}

#[test]
fn bad_cluster_parameters_are_400_naming_the_parameter() {
    let (sh_port, sz_port) = (free_port(), free_port());
    let _sz = Sipedge::start_seeded(&node("sz-01", sz_port, &[]), &seeded("sz-01", 5, 5));
    let sh = Sipedge::start_seeded(
        &node("sh-01", sh_port, &[("sz-01", sz_port)]),
        &seeded("sh-01", 5, 6),
    );
    let a = sh.addr("api");
    let w = window();
    let local = get_ok(a, &format!("/api/cdrs?limit=2&{w}"));
    let local_cursor = local["next_cursor"].as_str().unwrap().to_owned();
    let merged = get_ok(a, &format!("/api/cdrs?scope=cluster&limit=2&{w}"));
    let merged_cursor = merged["next_cursor"].as_str().unwrap().to_owned();
    let id = local["items"][0]["id"].as_str().unwrap().to_owned();
    let cases = [
        (format!("/api/cdrs?scope=world&{w}"), "scope"),
        (format!("/api/cdrs?scope=cluster&node=bj-01&{w}"), "node"),
        (format!("/api/cdrs?node=bj-01&{w}"), "node"),
        (format!("/api/cdrs?scope=local&node=sz-01&{w}"), "node"),
        (format!("/api/stats?scope=everywhere&{w}"), "scope"),
        (format!("/api/stats.svg?node=nowhere&{w}"), "node"),
        ("/api/calls/live?scope=all".to_owned(), "scope"),
        ("/api/alarms?node=x".to_owned(), "node"),
        ("/api/processes?scope=x".to_owned(), "scope"),
        (
            format!("/api/cdrs?scope=cluster&cursor=garbage&{w}"),
            "cursor",
        ),
        (
            format!("/api/cdrs?scope=cluster&cursor={local_cursor}&{w}"),
            "cursor",
        ),
        (format!("/api/cdrs?cursor={merged_cursor}&{w}"), "cursor"),
        (
            format!("/api/cdrs?node=sz-01&cursor={merged_cursor}&{w}"),
            "cursor",
        ),
        (format!("/api/cdrs?scope=cluster&limit=0&{w}"), "limit"),
        (format!("/api/cdrs?scope=cluster&colour=red&{w}"), "colour"),
        (format!("/api/cdrs?scope=cluster&zone=UTC&{w}"), "zone"),
        (format!("/api/cdrs.csv?scope=cluster&{w}"), "scope"),
        (format!("/api/cdrs.csv?node=sz-01&{w}"), "scope"),
        (format!("/api/cdrs/{id}?scope=cluster"), "scope"),
        (format!("/api/cdrs/{id}/log?node=nope"), "node"),
    ];
    for (path, name) in cases {
        let (status, body) = get_json(a, &path);
        assert_eq!(status, 400, "{path}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(name),
            "{path}: {error:?} should name {name}"
        );
    }
    // This node's own export is there under its own name, in both selections.
    for path in [
        format!("/api/cdrs.csv?{w}"),
        format!("/api/cdrs.csv?node=sh-01&{w}"),
    ] {
        let csv = support::http::http(a, "GET", &path, "");
        assert_eq!(csv.status, 200, "{path}");
        assert_eq!(csv.body.lines().count(), 6, "{path}: header and 5 rows");
    }
    // A merged CDR keeps the §5 names in §5's order, as a local one does.
    for path in [
        format!("/api/cdrs?scope=cluster&limit=1&{w}"),
        format!("/api/cdrs?node=sz-01&limit=1&{w}"),
        format!("/api/cdrs/{id}?node=sh-01"),
    ] {
        let raw = support::http::http(a, "GET", &path, "").body;
        let at = |name: &str| {
            raw.find(&format!("\"{name}\":"))
                .unwrap_or_else(|| panic!("{name} in {raw}"))
        };
        let order = [
            "id",
            "node",
            "call_id",
            "caller",
            "start_time",
            "end_time",
            "terminal",
            "source",
        ];
        let positions: Vec<usize> = order.iter().map(|n| at(n)).collect();
        assert!(positions.is_sorted(), "{path}: {raw}");
    }
    // A good merged cursor resumes.
    let next = get_ok(
        a,
        &format!("/api/cdrs?scope=cluster&limit=2&cursor={merged_cursor}&{w}"),
    );
    assert_eq!(next["items"].as_array().unwrap().len(), 2);
    // The front end learns the nodes.
    let nodes = get_ok(a, "/api/cluster");
    assert_eq!(
        nodes,
        serde_json::json!({"node": "sh-01", "peers": ["sz-01"]})
    );
}

const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// node, Chromium and playwright-core, as tests/ui.rs needs them; the message says how to
/// get what is missing.
fn check_browser_tools() {
    let mut missing = Vec::new();
    if !std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        missing.push("node (apt-get install nodejs npm)");
    }
    if !std::path::Path::new(CHROMIUM).exists() {
        missing.push("/usr/bin/chromium (apt-get install chromium)");
    }
    if !repo()
        .join("tests/e2e/node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push("playwright-core in tests/e2e (cd tests/e2e && npm ci)");
    }
    assert!(
        missing.is_empty(),
        "the browser test cannot run; missing: {}. tests/setup.sh installs all of them.",
        missing.join(", ")
    );
}

/// Alarms of `node`, raised `ago` minutes apart (the newest `ago[0]` minutes ago).
fn alarms(node: &str, ago: &[i64]) -> Vec<sipedge_store::Alarm> {
    use sipedge_store::{Alarm, AlarmId, AlarmKind, Severity};
    ago.iter()
        .enumerate()
        .map(|(i, minutes)| {
            let raised =
                UnixMs((Utc::now() - chrono::Duration::minutes(*minutes)).timestamp_millis());
            let target = format!("{node}-process-{i}");
            Alarm {
                id: AlarmId::new(raised, node, AlarmKind::ProcessMissing, &target),
                node: node.into(),
                kind: AlarmKind::ProcessMissing,
                target: target.clone(),
                severity: Severity::Major,
                message: format!("{target} is not running"),
                raised_at: raised,
                cleared_at: (i % 2 == 1).then_some(UnixMs(raised.0 + 60_000)),
            }
        })
        .collect()
}

/// Calls from today's midnight in Shanghai until now, so that the page's default query
/// (today) shows them.
fn today_seed(node_name: &str, n: u64, seed_no: u64, ago: &[i64]) -> Seed {
    let zone = chrono_tz::Asia::Shanghai;
    let now = Utc::now();
    let midnight = now
        .with_timezone(&zone)
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(zone).single())
        .unwrap()
        .with_timezone(&Utc);
    let span = (now - midnight).num_milliseconds().max(60_000);
    Seed {
        cdrs: seed::cdrs(
            node_name,
            UnixMs(midnight.timestamp_millis()),
            span,
            n,
            seed_no,
        ),
        alarms: alarms(node_name, ago),
        ..Seed::default()
    }
}

#[test]
fn the_cluster_view_in_a_browser() {
    check_browser_tools();
    let (sh_port, sz_port, down_port) = (free_port(), free_port(), free_port());
    let _sz = Sipedge::start_seeded(
        &node("sz-01", sz_port, &[]),
        &today_seed("sz-01", 40, 21, &[3, 50, 200]),
    );
    let sh = Sipedge::start_seeded(
        &node(
            "sh-01",
            sh_port,
            &[("sz-01", sz_port), ("sz-02", down_port)],
        ),
        &today_seed("sh-01", 60, 22, &[10, 100]),
    );
    let shots = repo().join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let out = std::process::Command::new("node")
        .args([
            "--test",
            "--test-concurrency=1",
            "tests/e2e/cluster.test.mjs",
        ])
        .current_dir(repo())
        .env("SIPEDGE_URL", format!("http://{}", sh.addr("api")))
        .env("SIPEDGE_CHROMIUM", CHROMIUM)
        .env("SIPEDGE_SCREENSHOTS", &shots)
        .output()
        .expect("run node");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "browser tests failed:\n{text}");
    // A run that found no test would also exit 0.
    let passed: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(passed >= 4, "only {passed} browser tests passed:\n{text}");
}
