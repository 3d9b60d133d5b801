//! Import speed of `sipedge import-pcap` (issue 14): a made-up capture of IMPORT_CALLS
//! answered calls (default 100,000; UDP, 1,000 new calls a second, each 1.2 s long, so about
//! 1,200 at once) as a capture on the proxy host sees them — every message on the terminal
//! hop and again on the Sipserver hop — imported with `--print json` (tracking and
//! rendering, no store) and into a fresh store. Prints messages/s and calls/s of each.
//!
//! `cargo bench --bench import_pcap` (the binary is built with the bench profile).

#[path = "support/pcap.rs"]
mod pcap;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufWriter;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Instant;

use pcap::{From, PcapWriter, answered_call};

/// µs from a call's start of each of its six messages.
const OFFSETS_US: [i64; 6] = [0, 40_000, 200_000, 201_000, 1_200_000, 1_201_000];
/// µs between two calls' starts.
const CALL_EVERY_US: i64 = 1_000;
/// µs from a message on the terminal hop to its copy on the Sipserver hop.
const HOP_US: i64 = 150;

fn main() {
    let calls: u64 = std::env::var("IMPORT_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let proxy: SocketAddr = "10.0.0.1:14500".parse().expect("proxy");
    let upstream: SocketAddr = "10.0.0.9:5060".parse().expect("upstream");
    let config = dir.path().join("sipedge.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"bench\"\ndata_dir = \"{}\"\n\n[account]\nappids = [\"a\"]\n\
             account = \"sipserver\"\nlisten = \"127.0.0.1:0\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [sip]\nlisten = \"10.0.0.1\"\nports = \"14500\"\nupstream = \"{upstream}\"\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write the config");

    let file = dir.path().join("bench.pcap");
    let started = Instant::now();
    let t0: i64 = 1_767_600_000_000_000;
    let out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&file).expect("create"));
    let mut w = PcapWriter::new(out).expect("header");
    // Messages in time order: a heap of (time, call, message), at most the calls open at once.
    let mut due: BinaryHeap<Reverse<(i64, u64, usize)>> = BinaryHeap::new();
    let mut next_call = 0u64;
    let mut packets = 0u64;
    loop {
        let next_start = (next_call < calls).then(|| t0 + next_call as i64 * CALL_EVERY_US);
        let take_heap = match (due.peek(), next_start) {
            (Some(Reverse((at, _, _))), Some(start)) => *at < start,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if !take_heap {
            due.push(Reverse((
                t0 + next_call as i64 * CALL_EVERY_US,
                next_call,
                0,
            )));
            next_call += 1;
            continue;
        }
        let Some(Reverse((at, call, i))) = due.pop() else {
            break;
        };
        let n = u32::try_from(call).expect("call number");
        let terminal = SocketAddr::new(
            Ipv4Addr::new(10, 1, (n / 250 % 250) as u8, (n % 250 + 1) as u8).into(),
            5060 + (n / 62_500) as u16,
        );
        let call_id = format!("bench-{call}");
        let msgs = answered_call(&call_id, terminal, proxy, "UDP");
        let (from, text) = &msgs[i];
        let (term_hop, server_hop) = match from {
            From::Terminal => ((terminal, proxy), (proxy, upstream)),
            From::Sipserver => ((proxy, terminal), (upstream, proxy)),
        };
        // The Sipserver's message reaches sipedge first; the terminal's leaves second.
        let (first, second) = match from {
            From::Terminal => (term_hop, server_hop),
            From::Sipserver => (server_hop, term_hop),
        };
        w.udp(at, first.0, first.1, text.as_bytes()).expect("write");
        w.udp(at + HOP_US, second.0, second.1, text.as_bytes())
            .expect("write");
        packets += 2;
        if i + 1 < msgs.len() {
            let start = t0 + call as i64 * CALL_EVERY_US;
            due.push(Reverse((start + OFFSETS_US[i + 1], call, i + 1)));
        }
    }
    drop(w.into_inner());
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    println!(
        "capture: {calls} calls, {packets} packets, {:.0} MB, written in {:.1} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let messages = calls * OFFSETS_US.len() as u64;
    for (what, print) in [("--print json", true), ("into a fresh store", false)] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sipedge"));
        cmd.arg("import-pcap")
            .arg(&file)
            .arg("--config")
            .arg(&config);
        if print {
            cmd.args(["--print", "json"]);
        }
        let started = Instant::now();
        let out = cmd
            .stdout(Stdio::null())
            .output()
            .expect("run sipedge import-pcap");
        let secs = started.elapsed().as_secs_f64();
        let summary = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "import-pcap {what}: {summary}");
        assert!(
            summary.contains(&format!("cdrs: {calls}\n")),
            "import-pcap {what}: every call must have its CDR:\n{summary}"
        );
        println!(
            "import {what}: {secs:.2} s, {:.0} packets/s, {:.0} SIP messages/s (terminal hop), {:.0} calls/s",
            packets as f64 / secs,
            messages as f64 / secs,
            calls as f64 / secs
        );
    }
}
