//! Black-box tests of process monitoring, alarms, the upstream probe and health (SPEC §7):
//! the real binary watching real processes, a SIPp UAS as the upstream, and a plain TCP
//! webhook receiver.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::config::{Config, Sip, Upstream};
use support::events::Events;
use support::http::get_json;
use support::ports::{self, PROXY_IP};
use support::sipedge::token_body;
use support::sipp::Sipp;
use support::{Sipedge, http, poll};

/// A copy of `sleep` under a unique name, so that its process name is ours alone.
struct Helper {
    path: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Helper {
    fn new(tag: &str) -> Helper {
        let dir = tempfile::tempdir().unwrap();
        // The kernel keeps 15 bytes of a process name.
        let name: String = format!("{tag}{}", std::process::id())
            .chars()
            .take(15)
            .collect();
        let path = dir.path().join(&name);
        std::fs::copy(sleep_binary(), &path).unwrap();
        Helper {
            path,
            child: None,
            _dir: dir,
        }
    }

    fn name(&self) -> String {
        self.path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    fn start(&mut self) -> u32 {
        // A child another test thread forks while `new` writes the copy holds it open for
        // writing until that child execs: the copy is "text file busy" for that moment.
        let mut tries = 0;
        let child = loop {
            match Command::new(&self.path).arg("1000").spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                spawned => break spawned.unwrap(),
            }
        };
        let pid = child.id();
        self.child = Some(child);
        pid
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sleep_binary() -> PathBuf {
    ["/bin/sleep", "/usr/bin/sleep"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("the tests copy `sleep` (coreutils); install it")
}

/// A node whose monitor looks every second and never finds the disk too full.
fn base_config() -> Config {
    Config::new("mon-01")
        .set("account", "appids", "[\"test-appid-0001\"]")
        .set("store", "flush_interval", "\"20ms\"")
        .set("monitor", "interval", "\"1s\"")
        .set("monitor", "probe_timeout", "\"300ms\"")
        .set("monitor", "disk_min_free_mb", "0")
        .set("monitor", "disk_min_free_percent", "0.0")
}

/// The alarms `/api/alarms` lists (all, newest first).
fn alarms(se: &Sipedge) -> Vec<Value> {
    let (status, body) = get_json(se.addr("api"), "/api/alarms?limit=1000");
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(list: &'a [Value], kind: &str, target: &str, active: bool) -> Option<&'a Value> {
    list.iter()
        .find(|a| a["kind"] == kind && a["target"] == target && a["cleared_at"].is_null() == active)
}

#[test]
fn a_killed_process_raises_an_alarm_and_its_restart_clears_it() {
    let mut helper = Helper::new("mt-proc-");
    let first_pid = helper.start();
    let name = helper.name();
    let se = Sipedge::start(
        &base_config()
            .set("monitor", "probe_upstream", "false")
            .append(&format!(
                "[[monitor.process]]\nname = \"helper\"\nmatch_name = \"{name}\"\ncritical = true\nmax_rss_mb = 4096.0\n"
            )),
    );
    let api = se.addr("api");

    // Watched and fine.
    let row = poll(Duration::from_secs(5), || {
        let (_, body) = get_json(se.addr("api"), "/api/processes");
        let row = body["items"][0].clone();
        (row["state"] == "ok").then_some(row)
    })
    .expect("the helper shows as ok");
    assert_eq!(row["name"], "helper");
    assert_eq!(row["matcher"], format!("name {name}"));
    assert_eq!(row["pids"], serde_json::json!([first_pid]));
    assert_eq!(row["count"], 1);
    assert!(row["rss_mb"].as_f64().unwrap() > 0.0, "{row}");
    assert_eq!(http(api, "GET", "/healthz", "").status, 200);
    let events = Events::open(api, None);

    // Killed: missing within two intervals, on the API and the event stream; critical, so
    // health is down on both listeners.
    helper.kill();
    let killed = Instant::now();
    poll(Duration::from_secs(5), || {
        find(&alarms(&se), "process_missing", "helper", true).cloned()
    })
    .expect("a process_missing alarm");
    let took = killed.elapsed();
    eprintln!("process_missing on /api/alarms {took:?} after the kill");
    assert!(
        took <= Duration::from_millis(2000 + 500),
        "raised after {took:?}"
    );
    let raised = events.data("alarm.raised");
    let missing = raised
        .iter()
        .find(|a| a["kind"] == "process_missing")
        .unwrap_or_else(|| panic!("alarm.raised on /api/events: {:?}", events.all()));
    assert_eq!(missing["target"], "helper");
    assert_eq!(missing["severity"], "critical");
    assert_eq!(missing["node"], "mon-01");
    assert!(missing["cleared_at"].is_null());
    for listener in ["api", "account"] {
        let reply = http(se.addr(listener), "GET", "/healthz", "");
        assert_eq!(reply.status, 503, "{listener}: {}", reply.body);
        assert!(reply.body.contains("helper"), "{}", reply.body);
    }
    let (_, body) = get_json(se.addr("api"), "/api/processes");
    assert_eq!(body["items"][0]["state"], "missing");
    assert_eq!(body["items"][0]["count"], 0);

    // Started again: the same alarm cleared (same id), a restarted alarm, health back.
    let second_pid = helper.start();
    assert_ne!(first_pid, second_pid);
    let list = poll(Duration::from_secs(5), || {
        let list = alarms(&se);
        find(&list, "process_restarted", "helper", true)
            .is_some()
            .then_some(list)
    })
    .expect("a process_restarted alarm");
    let cleared = find(&list, "process_missing", "helper", false).expect("missing cleared");
    assert_eq!(cleared["id"], missing["id"]);
    assert!(find(&list, "process_missing", "helper", true).is_none());
    assert_eq!(http(api, "GET", "/healthz", "").status, 200);
    assert!(
        poll(Duration::from_secs(3), || {
            let cleared = events.data("alarm.cleared");
            cleared
                .iter()
                .any(|a| a["id"] == missing["id"])
                .then_some(())
        })
        .is_some(),
        "alarm.cleared on /api/events: {:?}",
        events.all()
    );
    assert!(
        events
            .data("alarm.raised")
            .iter()
            .any(|a| a["kind"] == "process_restarted")
    );
    let (_, body) = get_json(se.addr("api"), "/api/processes");
    assert_eq!(body["items"][0]["pids"], serde_json::json!([second_pid]));

    // The gauge counts active alarms by kind.
    let metrics = http(api, "GET", "/metrics", "").body;
    assert!(
        metrics
            .lines()
            .any(|l| l == "sipedge_alarms_active{kind=\"process_restarted\"} 1"),
        "{metrics}"
    );
}

/// A `[[monitor.process]]` entry watching `helper` by its process name.
fn watch(name: &str, helper: &Helper, critical: bool) -> String {
    format!(
        "[[monitor.process]]\nname = \"{name}\"\nmatch_name = \"{}\"\ncritical = {critical}\n",
        helper.name()
    )
}

/// The `(name, state)` rows of `/api/processes`, in order.
fn process_rows(se: &Sipedge) -> Vec<(String, String)> {
    let (_, body) = get_json(se.addr("api"), "/api/processes");
    body["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|row| {
            (
                row["name"].as_str().unwrap_or_default().to_owned(),
                row["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn a_reloaded_watch_list_applies_at_once_and_clears_the_alarms_of_removed_watches() {
    let mut kept = Helper::new("mt-kept-");
    let kept_pid = kept.start();
    let gone = Helper::new("mt-gone-");
    let mut added = Helper::new("mt-add-");
    added.start();
    let se = Sipedge::start(
        &base_config()
            .set("monitor", "probe_upstream", "false")
            .append(&(watch("kept", &kept, false) + &watch("gone", &gone, true))),
    );
    let path = se.config_path().to_owned();

    // `gone` never runs: missing, critical, so the node is down.
    let gone_alarm = poll(Duration::from_secs(5), || {
        find(&alarms(&se), "process_missing", "gone", true).cloned()
    })
    .expect("a process_missing alarm for the watch that never ran");
    assert_eq!(http(se.addr("api"), "GET", "/healthz", "").status, 503);
    let (_, body) = get_json(se.addr("api"), "/api/processes");
    let kept_since = body["items"][0]["last_change"].clone();
    assert_eq!(body["items"][0]["state"], "ok", "{body}");
    assert!(!kept_since.is_null(), "{body}");

    // Reloaded: `gone` removed, `added` watched, the interval changed (restart needed).
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace(&watch("gone", &gone, true), &watch("added", &added, false))
        .replace("interval = \"1s\"", "interval = \"2s\"");
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    se.signal("HUP");
    let wanted = vec![
        ("kept".to_owned(), "ok".to_owned()),
        ("added".to_owned(), "ok".to_owned()),
    ];
    poll(Duration::from_secs(5), || {
        (process_rows(&se) == wanted).then_some(())
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", process_rows(&se), se.stderr()));

    // The removed watch's alarm is cleared (same id), health is back.
    let list = poll(Duration::from_secs(5), || {
        let list = alarms(&se);
        find(&list, "process_missing", "gone", false)
            .is_some()
            .then_some(list)
    })
    .unwrap_or_else(|| {
        panic!(
            "the alarm of the removed watch is not cleared\n{}",
            se.stderr()
        )
    });
    assert_eq!(
        find(&list, "process_missing", "gone", false).unwrap()["id"],
        gone_alarm["id"]
    );
    assert!(find(&list, "process_missing", "gone", true).is_none());
    assert_eq!(http(se.addr("api"), "GET", "/healthz", "").status, 200);

    // The kept watch kept its history: the same pid, no restart, the same last change.
    let (_, body) = get_json(se.addr("api"), "/api/processes");
    assert_eq!(body["items"][0]["pids"], serde_json::json!([kept_pid]));
    assert_eq!(body["items"][0]["last_change"], kept_since, "{body}");
    assert!(find(&alarms(&se), "process_restarted", "kept", true).is_none());

    let log = se.stderr();
    let warning = log
        .lines()
        .find(|l| l.contains("only after a restart"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        warning.contains("monitor.interval") && !warning.contains("monitor.process"),
        "{warning}"
    );
}

/// SIPp answering every OPTIONS with 200, as the Sipserver's stand-in, until dropped.
fn options_uas(addr: SocketAddr) -> support::sipp::SippRun {
    Sipp::uas("options_uas", addr)
        .calls(1_000)
        .timeout(Duration::from_secs(120))
        .arg("-nd")
        .spawn()
}

fn account_status(se: &Sipedge) -> u16 {
    let body = token_body("test-appid-0001");
    http(se.addr("account"), "POST", "/AgoraAccount", &body).status
}

#[test]
fn a_silent_upstream_takes_the_node_out_and_its_return_brings_it_back() {
    let upstream = SocketAddr::new(PROXY_IP, ports::free_port());
    let uas = options_uas(upstream);
    let se = Sipedge::start(
        &base_config()
            .sip(Sip {
                upstream: Upstream::Fixed(upstream),
                ..Sip::one_port()
            })
            .set("monitor", "probe_upstream", "true")
            .set("monitor", "probe_failures", "2"),
    );
    let api = se.addr("api");
    // Up, answering: health and the account responder fine.
    poll(Duration::from_secs(10), || {
        (http(api, "GET", "/healthz", "").status == 200 && account_status(&se) == 200).then_some(())
    })
    .expect("healthy with the upstream answering");
    let up_at = Instant::now();
    // Stay up over several probes.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        http(api, "GET", "/healthz", "").status,
        200,
        "{}",
        se.stderr()
    );
    assert!(up_at.elapsed() > Duration::from_secs(2));
    let upstream_name = upstream.to_string();
    assert!(find(&alarms(&se), "upstream_down", &upstream_name, true).is_none());

    // Silent: down within probe_failures × interval + probe_timeout (2 × 1 s + 0.3 s).
    drop(uas);
    let stopped = Instant::now();
    poll(Duration::from_secs(6), || {
        (http(api, "GET", "/healthz", "").status == 503).then_some(())
    })
    .expect("health down once the upstream is silent");
    let took = stopped.elapsed();
    eprintln!("/healthz 503 {took:?} after the upstream stopped");
    assert!(
        took <= Duration::from_millis(2300 + 500),
        "down after {took:?}"
    );
    assert_eq!(account_status(&se), 503);
    let reply = http(se.addr("account"), "GET", "/healthz", "");
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains(&upstream_name), "{}", reply.body);
    // Health changes at once; the stored alarm follows within the store's flush interval.
    let alarm = poll(Duration::from_secs(3), || {
        find(&alarms(&se), "upstream_down", &upstream_name, true).cloned()
    })
    .expect("upstream_down active");
    assert_eq!(alarm["severity"], "critical");
    let id = alarm["id"].clone();

    // Back: 200 again and the alarm cleared.
    let _uas = options_uas(upstream);
    poll(Duration::from_secs(6), || {
        (http(api, "GET", "/healthz", "").status == 200).then_some(())
    })
    .expect("health back once the upstream answers");
    assert_eq!(account_status(&se), 200);
    let cleared = poll(Duration::from_secs(3), || {
        find(&alarms(&se), "upstream_down", &upstream_name, false).cloned()
    })
    .expect("upstream_down cleared");
    assert_eq!(cleared["id"], id);
}

/// A webhook receiver: answers every POST with 200 and keeps the JSON bodies.
struct Receiver {
    bodies: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    fn start(addr: SocketAddr) -> Receiver {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, halt) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(body) = read_post(stream) {
                            sink.lock()
                                .unwrap()
                                .push(serde_json::from_str(&body).unwrap());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Receiver { bodies, stop }
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads one POST (headers, then Content-Length bytes) and answers 200.
fn read_post(mut stream: TcpStream) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    assert!(line.starts_with("POST /hook "), "{line}");
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
            if name.eq_ignore_ascii_case("content-type") {
                assert_eq!(value.trim(), "application/json");
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()?;
    String::from_utf8(body).ok()
}

fn webhook_alarms(receiver: &Receiver, event: &str, kind: &str) -> usize {
    receiver
        .bodies()
        .iter()
        .filter(|b| b["event"] == event && b["alarm"]["kind"] == kind)
        .count()
}

#[test]
fn the_webhook_gets_every_alarm_change_even_after_being_away() {
    let hook = SocketAddr::new(PROXY_IP, ports::free_port());
    let mut helper = Helper::new("mt-hook-");
    let name = helper.name();
    // Nothing listens on the webhook's port yet, and the helper is not running: the
    // missing alarm is raised at the first look and must wait in the queue.
    let se = Sipedge::start(
        &base_config()
            .set("monitor", "probe_upstream", "false")
            .set("monitor", "webhook", &format!("\"http://{hook}/hook\""))
            .append(&format!(
                "[[monitor.process]]\nname = \"hooked\"\nmatch_name = \"{name}\"\n"
            )),
    );
    poll(Duration::from_secs(5), || {
        find(&alarms(&se), "process_missing", "hooked", true).map(|_| ())
    })
    .expect("process_missing raised");
    std::thread::sleep(Duration::from_secs(3));
    let metrics = http(se.addr("api"), "GET", "/metrics", "").body;
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sipedge_webhook_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(failures >= 2, "retried while away: {failures}");

    // The receiver comes up: the queued alarm arrives.
    let receiver = Receiver::start(hook);
    poll(Duration::from_secs(10), || {
        (webhook_alarms(&receiver, "alarm.raised", "process_missing") == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("queued alarm delivered: {:?}", receiver.bodies()));
    let first = &receiver.bodies()[0];
    assert_eq!(first["alarm"]["target"], "hooked");
    assert_eq!(first["alarm"]["node"], "mon-01");

    // Then changes as they happen, in order: cleared, restarted.
    helper.start();
    poll(Duration::from_secs(5), || {
        (webhook_alarms(&receiver, "alarm.raised", "process_restarted") == 0
            && webhook_alarms(&receiver, "alarm.cleared", "process_missing") == 1)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("cleared delivered: {:?}", receiver.bodies()));
    let bodies = receiver.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert_eq!(bodies[1]["alarm"]["id"], bodies[0]["alarm"]["id"]);
    assert!(bodies[1]["alarm"]["cleared_at"].is_string());
}
