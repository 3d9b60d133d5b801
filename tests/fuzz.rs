//! A short run of every fuzz target (`fuzz/`, cargo fuzz with libFuzzer on the nightly
//! toolchain): each starts from its seeds (the test suites' messages and every crash found so
//! far) and fuzzes for a few seconds. The long runs are `cargo +nightly fuzz run TARGET
//! --fuzz-dir fuzz` by hand; their figures are in BENCHMARKS.md.

use std::path::Path;
use std::process::Command;

const TARGETS: [&str; 6] = [
    "scan_rewrite",
    "tcp_framing",
    "call_tracking",
    "account_request",
    "api_params",
    "store_codecs",
];
/// Seconds of fuzzing per target: enough to replay the seeds and look around them.
const SECONDS: &str = "8";

fn cargo_fuzz() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    // This test runs under a stable cargo whose settings must not leak into the nightly one.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(["+nightly", "fuzz"]);
    cmd
}

#[test]
fn every_fuzz_target_runs_clean_from_its_seeds() {
    let version = cargo_fuzz().arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => panic!(
            "`cargo +nightly fuzz` does not run; these tests fuzz for real. Install it with \
             `cargo install cargo-fuzz --locked --version 0.13.2` (tests/setup.sh does)"
        ),
    }
    let build = cargo_fuzz()
        .args(["build", "--fuzz-dir", "fuzz"])
        .output()
        .expect("cargo fuzz build runs");
    assert!(
        build.status.success(),
        "cargo fuzz build failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for target in TARGETS {
        let corpus = tempfile::tempdir().expect("a temporary corpus");
        let seeds = root.join("fuzz/seeds").join(target);
        assert!(
            seeds.is_dir(),
            "{target} has no seeds at {}",
            seeds.display()
        );
        let artifacts = tempfile::tempdir().expect("a temporary artifact dir");
        let out = cargo_fuzz()
            .args(["run", "--fuzz-dir", "fuzz", target])
            .arg(corpus.path())
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={SECONDS}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=10")
            .arg(format!("-artifact_prefix={}/", artifacts.path().display()))
            .output()
            .expect("cargo fuzz run runs");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && log.contains("Done "),
            "fuzz target {target} failed (its input is in the log below):\n{}",
            log.lines()
                .rev()
                .take(60)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
