//! Reading the system: matching processes from `/proc` and the data dir's free space. The
//! decisions about what was read are in [`super::evaluate`].

use std::path::{Path, PathBuf};

use procfs::process::{Process, Stat};

use super::config::Matcher;
use super::evaluate::{DiskSample, ProcSample};

const MB: f64 = 1024.0 * 1024.0;

/// Reads what the watches match; built once from the configuration.
#[derive(Debug)]
pub struct Sampler {
    /// One per watch, in configuration order.
    matchers: Vec<Matcher>,
    /// Command lines are read only when some watch needs them: they are the costly part.
    needs_cmdline: bool,
    /// `/proc` counts CPU in clock ticks.
    ticks_per_second: f64,
    /// `/proc` counts resident memory in pages.
    page_bytes: f64,
    /// Whose file system's free space is watched.
    data_dir: PathBuf,
}

impl Sampler {
    pub fn new(matchers: Vec<Matcher>, data_dir: &Path) -> Sampler {
        Sampler {
            needs_cmdline: matchers.iter().any(|m| matches!(m, Matcher::Cmdline(_))),
            matchers,
            ticks_per_second: procfs::ticks_per_second().max(1) as f64,
            page_bytes: procfs::page_size().max(1) as f64,
            data_dir: data_dir.to_owned(),
        }
    }

    /// The same sampler with a reloaded watch list.
    pub fn rematch(&self, matchers: Vec<Matcher>) -> Sampler {
        Sampler::new(matchers, &self.data_dir)
    }

    /// Per watch, the live processes it matches. Processes that vanish while being read are
    /// simply not there; zombies do not count as running.
    pub fn processes(&self) -> Vec<Vec<ProcSample>> {
        let mut found: Vec<Vec<ProcSample>> = vec![Vec::new(); self.matchers.len()];
        let scans = self
            .matchers
            .iter()
            .any(|m| matches!(m, Matcher::Name(_) | Matcher::Cmdline(_)));
        if scans && let Ok(all) = procfs::process::all_processes() {
            for process in all.flatten() {
                let Ok(stat) = process.stat() else { continue };
                if is_dead(&stat) {
                    continue;
                }
                let cmdline = if self.needs_cmdline {
                    process
                        .cmdline()
                        .map(|args| args.join(" "))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                for (i, matcher) in self.matchers.iter().enumerate() {
                    let hit = match matcher {
                        Matcher::Name(name) => stat.comm == *name,
                        Matcher::Cmdline(re) => !cmdline.is_empty() && re.is_match(&cmdline),
                        Matcher::Pidfile(_) => false,
                    };
                    if hit && let Some(slot) = found.get_mut(i) {
                        slot.push(self.sample(&stat));
                    }
                }
            }
        }
        for (i, matcher) in self.matchers.iter().enumerate() {
            if let Matcher::Pidfile(path) = matcher
                && let Some(stat) = read_pidfile(path)
                && !is_dead(&stat)
                && let Some(slot) = found.get_mut(i)
            {
                slot.push(self.sample(&stat));
            }
        }
        found
    }

    fn sample(&self, stat: &Stat) -> ProcSample {
        ProcSample {
            pid: stat.pid,
            start_ticks: stat.starttime,
            cpu_seconds: (stat.utime + stat.stime) as f64 / self.ticks_per_second,
            rss_mb: stat.rss as f64 * self.page_bytes / MB,
        }
    }

    /// Free space of the data dir's file system, as an unprivileged user may use it.
    pub fn disk(&self) -> Option<DiskSample> {
        let vfs = rustix::fs::statvfs(&self.data_dir).ok()?;
        let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
        let total = vfs.f_blocks.saturating_mul(vfs.f_frsize);
        Some(DiskSample {
            free_mb: free / (1024 * 1024),
            free_percent: if total == 0 {
                100.0
            } else {
                free as f64 * 100.0 / total as f64
            },
        })
    }
}

fn is_dead(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X' | 'x')
}

/// The process a pidfile names, if the file reads and the process exists.
fn read_pidfile(path: &Path) -> Option<Stat> {
    let text = std::fs::read_to_string(path).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    if pid <= 0 {
        return None;
    }
    Process::new(pid).ok()?.stat().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_test_process_every_way() {
        let me = std::process::id() as i32;
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("me.pid");
        std::fs::write(&pidfile, format!("{me}\n")).unwrap();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let exe = std::env::args().next().unwrap();
        let sampler = Sampler::new(
            vec![
                Matcher::Name(comm.trim().to_owned()),
                Matcher::Cmdline(regex::Regex::new(&regex::escape(&exe)).unwrap()),
                Matcher::Pidfile(pidfile),
                Matcher::Pidfile(dir.path().join("absent.pid")),
                Matcher::Name("no-such-proc-x".to_owned()),
            ],
            dir.path(),
        );
        let found = sampler.processes();
        for slot in &found[..3] {
            let me = slot.iter().find(|p| p.pid == me).expect("this process");
            assert!(me.rss_mb > 0.1, "{me:?}");
            assert!(me.start_ticks > 0);
        }
        assert!(found[3].is_empty());
        assert!(found[4].is_empty());
        let disk = sampler.disk().unwrap();
        assert!(
            disk.free_percent > 0.0 && disk.free_percent <= 100.0,
            "{disk:?}"
        );
    }
}
