//! The monitoring loop's own cost (issue 7): CPU time per interval with 50 watched processes.
//! Spawns 50 sleepers under 50 distinct names, then runs the real sampling (`/proc`, disk)
//! and evaluation N times and reports the process CPU (user + system) per interval, for
//! watches by process name and by command-line regex (which also reads every command line).
//!
//! `cargo bench --bench monitor_cost`; `SIPEDGE_BENCH_ROUNDS` (default 200) sets N.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// The monitor lives in the binary crate; its modules are compiled here as they are there
// (as siblings at the root, so their `super::` paths resolve the same way).
#[allow(dead_code)]
#[path = "../src/monitor/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../src/monitor/evaluate.rs"]
mod evaluate;
// Built as a bench, `cfg(test)` is on but the harness is not: the modules' tests are inert.
#[cfg_attr(test, allow(unused_imports))]
#[allow(dead_code)]
#[path = "../src/monitor/sample.rs"]
mod sample;

use std::hint::black_box;
use std::process::{Child, Command};
use std::time::Instant;

use config::Matcher;
use evaluate::{Observation, Rules, State, WatchRule, evaluate};
use sample::Sampler;
use sipedge_store::UnixMs;

const WATCHED: usize = 50;

/// User + system CPU seconds this process has used.
fn cpu_seconds() -> f64 {
    let stat = procfs::process::Process::myself().unwrap().stat().unwrap();
    (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64
}

fn rules(names: &[String]) -> Rules {
    Rules {
        node: "bench".into(),
        watches: names
            .iter()
            .map(|name| WatchRule {
                name: name.clone(),
                matcher: format!("name {name}"),
                min_count: 1,
                max_cpu_percent: Some(90.0),
                max_rss_mb: Some(1024.0),
                critical: false,
            })
            .collect(),
        probe_failures: 3,
        upstream: "127.0.0.1:5060".into(),
        data_dir: "/tmp".into(),
        disk_min_free_mb: 1,
        disk_min_free_percent: 1.0,
    }
}

/// Runs `rounds` looks and evaluations; returns CPU µs and wall µs per round.
fn measure(sampler: &Sampler, rules: &Rules, rounds: usize) -> (f64, f64) {
    let mut state = State::default();
    let started_cpu = cpu_seconds();
    let started = Instant::now();
    for round in 0..rounds {
        let observation = Observation::Tick {
            processes: sampler.processes(),
            disk: sampler.disk(),
            store_failures: 0,
            store_failing: false,
        };
        let found: usize = match &observation {
            Observation::Tick { processes, .. } => processes.iter().map(Vec::len).sum(),
            Observation::Probe { .. }
            | Observation::Reload { .. }
            | Observation::SinkLag { .. } => 0,
        };
        assert_eq!(found, WATCHED, "every sleeper matched once");
        let (next, changes) = evaluate(rules, &state, &observation, UnixMs(round as i64 * 5000));
        black_box(changes);
        state = next;
    }
    let cpu = (cpu_seconds() - started_cpu) * 1e6 / rounds as f64;
    let wall = started.elapsed().as_secs_f64() * 1e6 / rounds as f64;
    (cpu, wall)
}

fn main() {
    let rounds: usize = std::env::var("SIPEDGE_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("coreutils sleep");
    let names: Vec<String> = (0..WATCHED)
        .map(|i| format!("mcost{i:02}-{}", std::process::id() % 10000))
        .collect();
    let mut children: Vec<Child> = names
        .iter()
        .map(|name| {
            let path = dir.path().join(name);
            std::fs::copy(sleep, &path).unwrap();
            Command::new(&path).arg("600").spawn().unwrap()
        })
        .collect();
    let total = procfs::process::all_processes().unwrap().count();
    let rules = rules(&names);

    let by_name = Sampler::new(
        names.iter().map(|n| Matcher::Name(n.clone())).collect(),
        dir.path(),
    );
    let by_cmdline = Sampler::new(
        names
            .iter()
            .map(|n| {
                Matcher::Cmdline(regex::Regex::new(&format!("/{} 600$", regex::escape(n))).unwrap())
            })
            .collect(),
        dir.path(),
    );
    // Warm the page cache and the allocator before measuring.
    measure(&by_name, &rules, 5);
    let (name_cpu, name_wall) = measure(&by_name, &rules, rounds);
    let (cmd_cpu, cmd_wall) = measure(&by_cmdline, &rules, rounds);

    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    println!(
        "monitor loop cost, {WATCHED} watched processes, {total} processes on the host, {rounds} rounds"
    );
    println!("  by name:    {name_cpu:8.0} µs CPU per interval ({name_wall:.0} µs wall)");
    println!("  by cmdline: {cmd_cpu:8.0} µs CPU per interval ({cmd_wall:.0} µs wall)");
    println!(
        "  at the default 5 s interval: {:.3}% / {:.3}% of one core",
        name_cpu / 5e6 * 100.0,
        cmd_cpu / 5e6 * 100.0
    );
}
