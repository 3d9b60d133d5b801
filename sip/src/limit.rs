//! Per-source rate limiting (SPEC §10 "a flood from one address"): a token bucket per source
//! IP, so one flooding address is cut off while the others keep being served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Above this many tracked sources, idle ones are forgotten so that a spoofed-source flood
/// cannot grow the table without bound.
const MAX_SOURCES: usize = 65_536;

/// Token buckets keyed by source IP.
#[derive(Debug)]
pub struct SourceLimiter {
    /// Tokens added per second; 0 turns limiting off.
    rate: f64,
    /// Bucket size: the burst a source may send at once.
    burst: f64,
    /// One bucket per recently seen source.
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl SourceLimiter {
    /// A limiter allowing `rate` messages per second with bursts of `burst`; `rate` 0 = off.
    pub fn new(rate: u32, burst: u32) -> SourceLimiter {
        SourceLimiter {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a message from `src` at `now` may pass; takes a token when it does.
    pub fn allow(&self, src: IpAddr, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        // A poisoned lock only means another task panicked mid-update; the buckets are
        // still usable numbers.
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&src) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refill(b, now, rate, burst) < burst);
            // Sweeps stay amortised O(1): after one, a quarter of the table is free.
            if buckets.len() > MAX_SOURCES / 4 * 3 {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(src).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        if refill(bucket, now, self.rate, self.burst) >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
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
        let l = SourceLimiter::new(rate, burst);
        let t0 = Instant::now();
        for (i, &(ms, src, expected)) in steps.iter().enumerate() {
            let got = l.allow(src.parse().unwrap(), t0 + Duration::from_millis(ms));
            assert_eq!(got, expected, "step {i}: {ms} ms from {src}");
        }
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
