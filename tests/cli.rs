//! The command line and configuration handling of the real binary (SPEC §2).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod support;

use std::net::TcpListener;

use support::config::Config;
use support::sipedge::run;
use support::{Sipedge, http};

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sipedge.toml")).unwrap()
}

/// Writes `text` as a config and runs `serve` on it, which must fail at once with exit 64
/// and one line naming `word`.
fn check_refused(text: &str, word: &str) {
    check_refused_by(&["check-config", "serve"], text, word);
}

fn check_refused_by(commands: &[&str], text: &str, word: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    for &command in commands {
        let out = run([command, "--config", path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{command}: {stderr}");
        let lines: Vec<_> = stderr
            .lines()
            .filter(|l| l.starts_with("sipedge:"))
            .collect();
        assert_eq!(lines.len(), 1, "{command}: one clear line, got {stderr:?}");
        assert!(
            lines[0].contains(word),
            "{command}: {:?} should name {word:?}",
            lines[0]
        );
    }
}

#[test]
fn the_example_config_passes_check_config() {
    let out = run([
        "check-config",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/etc/sipedge.toml"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("name = \"dev-01\""), "{shown}");
    assert!(shown.contains("timezone = \"Asia/Shanghai\""), "{shown}");
}

#[test]
fn bad_configs_are_refused_with_one_line() {
    let text = example();
    check_refused(
        &text.replace("[api]", "[api]\nlisten_port = 1"),
        "listen_port",
    );
    check_refused(
        &text.replace("max_clock_skew = \"3600s\"", "max_clock_skew = \"soon\""),
        "max_clock_skew",
    );
    check_refused(
        &text.replace(
            "timezone = \"Asia/Shanghai\"",
            "timezone = \"Asia/Atlantis\"",
        ),
        "Asia/Atlantis",
    );
    check_refused(
        &text.replace("appids = [\"dev-appid-change-me\"]", "appids = []"),
        "account.appids",
    );
    check_refused("[node\nname=1", "line 1");
    for (from, to, word) in [
        (
            "max_connections = 1024",
            "max_connections = 0",
            "api.max_connections",
        ),
        (
            "max_sse_clients = 64",
            "max_sse_clients = 0",
            "api.max_sse_clients",
        ),
        (
            "body_timeout = \"10s\"",
            "body_timeout = \"0s\"",
            "account.body_timeout",
        ),
        (
            "source_rate_burst = 1000",
            "source_rate_burst = 0",
            "account.source_rate_burst",
        ),
        (
            "webhook_queue = 1000",
            "webhook_queue = 0",
            "monitor.webhook_queue",
        ),
    ] {
        assert!(text.contains(from), "the example has {from}");
        check_refused(&text.replace(from, to), word);
    }

    let missing = run(["check-config", "--config", "/nonexistent/sipedge.toml"]);
    assert_eq!(missing.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/sipedge.toml"));
}

#[test]
fn an_address_in_use_is_one_line_and_exit_64() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let text = example()
        .replace("127.0.0.1:14700", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8068", "127.0.0.1:0")
        .replace(
            "target/sipedge-data",
            &dir.path().join("data").display().to_string(),
        );
    check_refused_by(&["serve"], &text, &format!("127.0.0.1:{port}"));
}

#[test]
fn an_unwritable_data_dir_is_one_line_and_exit_64() {
    let text = example()
        .replace("127.0.0.1:14700", "127.0.0.1:0")
        .replace("127.0.0.1:8068", "127.0.0.1:0")
        .replace("target/sipedge-data", "/proc/sipedge");
    check_refused_by(&["serve"], &text, "/proc/sipedge");
}

#[test]
fn version_and_help() {
    let version = run(["--version"]);
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sipedge "));
    let help = String::from_utf8_lossy(&run(["--help"]).stdout).to_string();
    for word in ["serve", "check-config", "token"] {
        assert!(help.contains(word), "{help}");
    }
}

#[test]
fn a_token_body_is_granted_by_the_service() {
    let se = Sipedge::start(
        &Config::new("t")
            .set("account", "appids", "[\"readme-appid\"]")
            .set("account", "account", "\"acct-7\""),
    );
    let out = run(["token", "--appid", "readme-appid", "--stream-number", "55"]);
    assert!(out.status.success());
    let body = String::from_utf8(out.stdout).unwrap();
    let reply = http(se.addr("account"), "POST", "/AgoraAccount", body.trim());
    assert_eq!(
        reply.body,
        r#"{"method":"getAgoraAccount","streamNumber":"55","resCode":"0","account":"acct-7"}"#
    );
    let bad_zone = run(["token", "--appid", "x", "--timezone", "Nowhere/City"]);
    assert_eq!(bad_zone.status.code(), Some(64));
}
