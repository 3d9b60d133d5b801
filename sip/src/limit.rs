//! Per-source rate limiting (SPEC §10 "a flood from one address"): a token bucket per source
//! IP, so one flooding address is cut off while the others keep being served. The rate and
//! burst change on reload without a lock of their own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Above this many tracked sources, idle ones are forgotten so that a spoofed-source flood
/// cannot grow the table without bound.
const MAX_SOURCES: usize = 65_536;

/// Token buckets keyed by source IP.
#[derive(Debug)]
pub struct SourceLimiter {
    /// Tokens added per second (high 32 bits; 0 turns limiting off) and the bucket size, the
    /// burst a source may send at once (low 32 bits): one word, so that no message is judged
    /// by a reload's new rate with the old burst.
    limits: AtomicU64,
    /// One bucket per recently seen source.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Messages the source may still send now.
    tokens: f64,
    /// When `tokens` was last refilled.
    last: Instant,
}

impl SourceLimiter {
    /// A limiter allowing `rate` messages per second with bursts of `burst`; `rate` 0 = off.
    pub fn new(rate: u32, burst: u32) -> SourceLimiter {
        SourceLimiter {
            limits: AtomicU64::new(pack(rate, burst)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the rate and burst (a reload); buckets keep their tokens, capped at the new
    /// burst when next refilled.
    pub fn set(&self, rate: u32, burst: u32) {
        self.limits.store(pack(rate, burst), Ordering::Relaxed);
    }

    /// The rate and burst in force.
    pub fn limits(&self) -> (u32, u32) {
        let word = self.limits.load(Ordering::Relaxed);
        ((word >> 32) as u32, word as u32)
    }

    /// Whether a message from `src` at `now` may pass; takes a token when it does.
    pub fn allow(&self, src: IpAddr, now: Instant) -> bool {
        let (rate, burst) = self.limits();
        if rate == 0 {
            return true;
        }
        let (rate, burst) = (f64::from(rate), f64::from(burst));
        // A poisoned lock only means another task panicked mid-update; the buckets are
        // still usable numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&src) {
            buckets.retain(|_, b| refill(b, now, rate, burst) < burst);
            // Sweeps stay amortised O(1): after one, a quarter of the table is free.
            if buckets.len() > MAX_SOURCES / 4 * 3 {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(src).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        if refill(bucket, now, rate, burst) >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A burst of 0 would never let a message through: it counts as 1.
fn pack(rate: u32, burst: u32) -> u64 {
    (u64::from(rate) << 32) | u64::from(burst.max(1))
}

fn refill(b: &mut Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
    b.tokens = (b.tokens + elapsed * rate).min(burst);
    b.last = now;
    b.tokens
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `steps` of (milliseconds since start, source, expected verdict).
    fn check(rate: u32, burst: u32, steps: &[(u64, &str, bool)]) {
        check_reloaded(rate, burst, &[], steps);
    }

    /// As [`check`], with the limits replaced by `(rate, burst)` before the step of each
    /// `sets` index.
    fn check_reloaded(
        rate: u32,
        burst: u32,
        sets: &[(usize, u32, u32)],
        steps: &[(u64, &str, bool)],
    ) {
        let l = SourceLimiter::new(rate, burst);
        let t0 = Instant::now();
        for (i, &(ms, src, expected)) in steps.iter().enumerate() {
            for &(_, rate, burst) in sets.iter().filter(|s| s.0 == i) {
                l.set(rate, burst);
                assert_eq!(l.limits(), (rate, burst.max(1)));
            }
            let got = l.allow(src.parse().unwrap(), t0 + Duration::from_millis(ms));
            assert_eq!(got, expected, "step {i}: {ms} ms from {src}");
        }
    }

    #[test]
    fn reloaded_limits() {
        let a = "192.0.2.1";
        // Off, then on: the bucket starts full at the new burst.
        check_reloaded(
            0,
            0,
            &[(3, 10, 2)],
            &[
                (0, a, true),
                (0, a, true),
                (0, a, true),
                (0, a, true),
                (0, a, true),
                (0, a, false),
            ],
        );
        // On, then off: everything passes at once.
        check_reloaded(
            10,
            1,
            &[(2, 0, 1)],
            &[(0, a, true), (0, a, false), (0, a, true), (0, a, true)],
        );
        // A smaller burst caps the tokens already there; a higher rate refills faster.
        check_reloaded(
            1,
            5,
            &[(1, 1, 2), (4, 100, 2)],
            &[
                (0, a, true),
                (0, a, true),
                (0, a, true),
                (0, a, false),
                (10, a, true),
                (10, a, false),
            ],
        );
        // A burst of 0 counts as 1.
        check_reloaded(1, 5, &[(0, 1, 0)], &[(0, a, true), (0, a, false)]);
    }

    #[test]
    fn buckets() {
        let a = "192.0.2.1";
        let b = "192.0.2.2";
        check(0, 0, &[(0, a, true), (0, a, true), (0, a, true)]);
        check(
            10,
            2,
            &[
                (0, a, true),
                (0, a, true),
                (0, a, false),
                (0, b, true),
                (100, a, true),
                (100, a, false),
            ],
        );
        check(
            1,
            1,
            &[
                (0, a, true),
                (500, a, false),
                (1000, a, true),
                (60_000, a, true),
                (60_000, a, false),
            ],
        );
    }

    #[test]
    fn table_stays_bounded_under_spoofed_sources() {
        let l = SourceLimiter::new(1, 1);
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            l.allow(IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(l.buckets.lock().unwrap().len() <= MAX_SOURCES);
    }
}
