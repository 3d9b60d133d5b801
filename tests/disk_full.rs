//! A full disk under the store (SPEC §10, issue 13): `node.data_dir` on a small tmpfs that a
//! filler file fills up while SIPp calls go on. SIP forwarding must not stop, the monitor
//! raises `disk_low` and `store_error`, and once space returns every call's CDR is written
//! (the store retries its commits, never dropping them) and the alarms clear.
//!
//! Needs root (to mount the tmpfs; CI runs as root) and `sipp` (Debian `sip-tester`).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::config::{Config, Sip, quote};
use support::sipp::{Pair, Transport};
use support::{Sipedge, cdrs, http, wait_until};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("a mount point");
        let path = dir.path().to_path_buf();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs at {} (this test needs root, as CI has): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path, _dir: dir }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Writes `path` until the file system says it is full.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let block = vec![0u8; 64 * 1024];
    loop {
        if file.write_all(&block).is_err() {
            break;
        }
    }
    let _ = file.sync_all();
}

fn active(se: &Sipedge, kind: &str) -> bool {
    let text = http(se.addr("api"), "GET", "/metrics", "").body;
    let line = format!("sipedge_alarms_active{{kind=\"{kind}\"}} 1");
    text.lines().any(|l| l == line)
}

#[test]
fn a_full_disk_raises_alarms_without_stopping_sip_and_loses_no_record() {
    const CALLS: u32 = 200;
    let disk = Tmpfs::mount("24m");
    let data = disk.path.join("data");
    let sip = Sip::one_port();
    let mut se = Sipedge::start(
        &Config::new("diskfull")
            .sip(sip)
            .set("node", "data_dir", &quote(&data.display().to_string()))
            .set("monitor", "interval", "\"1s\"")
            .set("monitor", "probe_timeout", "\"500ms\"")
            .set("monitor", "disk_min_free_mb", "4"),
    );
    let filler = disk.path.join("filler");
    fill(&filler);

    // Every call goes through while no commit can succeed.
    Pair::new("call", Transport::Udp, CALLS)
        .rate(50)
        .run(sip.addr(), sip.upstream_addr())
        .assert_passed();
    let alarmed = wait_until(Duration::from_secs(15), || {
        active(&se, "disk_low") && active(&se, "store_error")
    });
    assert!(
        alarmed,
        "no disk_low and store_error alarms on a full disk\n{}",
        se.report()
    );
    let stored_while_full = cdrs::all(se.addr("api")).len();

    std::fs::remove_file(&filler).expect("remove the filler");
    let resumed = wait_until(Duration::from_secs(30), || {
        cdrs::all(se.addr("api")).len() == CALLS as usize
    });
    assert!(
        resumed,
        "{} of {CALLS} CDRs after space returned ({stored_while_full} while full)\n{}",
        cdrs::all(se.addr("api")).len(),
        se.report()
    );
    let cleared = wait_until(Duration::from_secs(15), || {
        !active(&se, "disk_low") && !active(&se, "store_error")
    });
    assert!(
        cleared,
        "the alarms stayed raised after space returned\n{}",
        se.report()
    );
    eprintln!("disk full: {stored_while_full} of {CALLS} CDRs readable while full, all after");
    assert!(se.stop().success(), "{}", se.report());
}
