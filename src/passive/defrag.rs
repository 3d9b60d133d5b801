//! IP fragment reassembly for the capture reader: an INVITE with a video SDP often passes the
//! 1500-byte MTU and crosses the wire as IPv4 or IPv6 fragments, which a capture holds as they
//! were sent. Pure: fragments in with their capture time, whole datagrams out.
//!
//! Overlapping fragments are rejected, not merged: RFC 5722 says so for IPv6, and Linux does
//! the same for IPv4, so a datagram the receiver would have dropped is not read here either.
//! A fragment repeating bytes already held (a SPAN port that mirrors both directions of a
//! switch, a duplicated frame) is dropped on its own, as the kernel does.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use super::packet::{Fragment, Skip};

/// The largest datagram payload an IP length field can describe.
pub const MAX_DATAGRAM: usize = 65_535;
/// Datagrams being reassembled at once; the oldest is dropped to make room.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Payload bytes held over all datagrams: Linux's `ipfrag_high_thresh` default.
pub const MAX_HELD_BYTES: usize = 4 << 20;
/// Separate pieces of one datagram: a 64 KiB datagram over a 576-byte path is 114 fragments,
/// so more than this is a hostile capture, not a network.
pub const MAX_PIECES: usize = 128;
/// Capture time after a datagram's first fragment when an incomplete one is dropped: Linux's
/// `ipfrag_time` default.
pub const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    id: u32,
}

#[derive(Debug)]
struct Datagram {
    /// Its place in [`Defrag::order`].
    since: (SystemTime, u64),
    data: Vec<u8>,
    /// Byte ranges received, sorted, adjacent ones merged.
    have: Vec<(usize, usize)>,
    /// Where the payload ends, once the last fragment is seen.
    end: Option<usize>,
    /// Rejected: its later fragments are dropped with it until it times out, rather than
    /// starting a datagram that could only time out.
    dead: bool,
}

/// Datagrams being put back together, keyed as RFC 791 and RFC 8200 key them.
#[derive(Debug, Default)]
pub struct Defrag {
    pending: HashMap<Key, Datagram>,
    /// Pending datagrams by first fragment's capture time, for the timeout and eviction.
    order: BTreeMap<(SystemTime, u64), Key>,
    serial: u64,
    held: usize,
}

impl Defrag {
    pub fn new() -> Defrag {
        Defrag::default()
    }

    /// Adds a fragment captured at `at`; the datagram's payload when it completes it.
    /// `skip` hears why a fragment or a datagram was dropped.
    pub fn insert(
        &mut self,
        at: SystemTime,
        f: &Fragment<'_>,
        skip: &mut dyn FnMut(Skip),
    ) -> Option<Vec<u8>> {
        self.expire(at, skip);
        let start = f.offset;
        let end = start.saturating_add(f.data.len());
        if f.more && (f.data.is_empty() || !f.data.len().is_multiple_of(8)) {
            // Only the last fragment may end off an 8-byte boundary (RFC 791, RFC 8200).
            skip(Skip::Malformed);
            return None;
        }
        if start == 0 && !f.more {
            // An atomic fragment (RFC 6946): whole, and not to be mixed with others.
            return Some(f.data.to_vec());
        }
        let key = Key {
            src: f.src,
            dst: f.dst,
            proto: f.proto,
            id: f.id,
        };
        if !self.pending.contains_key(&key) {
            while self.pending.len() >= MAX_IN_FLIGHT {
                self.evict_oldest(None, skip);
            }
            self.serial += 1;
            let since = (at, self.serial);
            self.order.insert(since, key);
            self.pending.insert(
                key,
                Datagram {
                    since,
                    data: Vec::new(),
                    have: Vec::new(),
                    end: None,
                    dead: false,
                },
            );
        }
        let d = self.pending.get_mut(&key)?;
        if d.dead {
            return None;
        }
        if end > MAX_DATAGRAM {
            self.reject(key, Skip::FragmentTooLarge, skip);
            return None;
        }
        let last_have = d.have.last().map_or(0, |r| r.1);
        let contradicts = match (f.more, d.end) {
            (false, Some(e)) => e != end,
            (false, None) => last_have > end,
            (true, Some(e)) => end >= e,
            (true, None) => false,
        };
        if contradicts {
            self.reject(key, Skip::FragmentOverlap, skip);
            return None;
        }
        let touching = d.have.iter().find(|&&(s, e)| s < end && start < e).copied();
        if let Some((s, e)) = touching {
            if s <= start && end <= e && d.data.get(start..end) == Some(f.data) {
                skip(Skip::FragmentDuplicate);
            } else {
                self.reject(key, Skip::FragmentOverlap, skip);
            }
            return None;
        }
        if d.have.len() >= MAX_PIECES {
            self.reject(key, Skip::FragmentTooLarge, skip);
            return None;
        }
        let growth = end.saturating_sub(d.data.len());
        while self.held + growth > MAX_HELD_BYTES {
            if !self.evict_oldest(Some(key), skip) {
                break;
            }
        }
        let d = self.pending.get_mut(&key)?;
        if d.data.len() < end {
            d.data.resize(end, 0);
        }
        d.data.get_mut(start..end)?.copy_from_slice(f.data);
        self.held += growth;
        if !f.more {
            d.end = Some(end);
        }
        let at_pos = d.have.partition_point(|&(s, _)| s < start);
        d.have.insert(at_pos, (start, end));
        if let Some(next) = d.have.get(at_pos + 1).copied()
            && next.0 == end
        {
            d.have[at_pos].1 = next.1;
            d.have.remove(at_pos + 1);
        }
        if at_pos > 0 && d.have[at_pos - 1].1 == start {
            d.have[at_pos - 1].1 = d.have[at_pos].1;
            d.have.remove(at_pos);
        }
        let whole = d.end.is_some_and(|e| d.have == [(0, e)]);
        if !whole {
            return None;
        }
        let d = self.pending.remove(&key)?;
        self.order.remove(&d.since);
        self.held -= d.data.len();
        Some(d.data)
    }

    /// Drops every datagram still incomplete: the capture has ended.
    pub fn finish(&mut self, skip: &mut dyn FnMut(Skip)) {
        while self.evict_oldest(None, skip) {}
    }

    fn expire(&mut self, now: SystemTime, skip: &mut dyn FnMut(Skip)) {
        while let Some((&(first, _), _)) = self.order.first_key_value() {
            match now.duration_since(first) {
                Ok(age) if age > TIMEOUT => {
                    self.evict_oldest(None, skip);
                }
                _ => break,
            }
        }
    }

    /// Drops the oldest datagram other than `keep`; false when there is none.
    fn evict_oldest(&mut self, keep: Option<Key>, skip: &mut dyn FnMut(Skip)) -> bool {
        let victim = self
            .order
            .iter()
            .find(|(_, k)| Some(**k) != keep)
            .map(|(since, k)| (*since, *k));
        let Some((since, key)) = victim else {
            return false;
        };
        self.order.remove(&since);
        if let Some(d) = self.pending.remove(&key) {
            self.held -= d.data.len();
            if !d.dead {
                skip(Skip::FragmentIncomplete);
            }
        }
        true
    }

    fn reject(&mut self, key: Key, why: Skip, skip: &mut dyn FnMut(Skip)) {
        if let Some(d) = self.pending.get_mut(&key) {
            self.held -= d.data.len();
            d.data = Vec::new();
            d.have = Vec::new();
            d.dead = true;
        }
        skip(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn frag(id: u32, offset: usize, more: bool, data: &[u8]) -> Fragment<'_> {
        Fragment {
            src: "10.0.0.1".parse().expect("src"),
            dst: "10.0.0.2".parse().expect("dst"),
            proto: 17,
            id,
            offset,
            more,
            data,
        }
    }

    /// Fragments as (seconds, id, offset, more, data) go in; the datagrams that come out
    /// and the skips counted are compared.
    type Piece = (u64, u32, usize, bool, Vec<u8>);

    fn run(pieces: &[Piece]) -> (Vec<Vec<u8>>, BTreeMap<&'static str, u64>, Defrag) {
        let mut d = Defrag::new();
        let mut out = Vec::new();
        let mut skipped = BTreeMap::new();
        for (secs, id, offset, more, data) in pieces {
            let at = UNIX_EPOCH + Duration::from_secs(*secs);
            let f = frag(*id, *offset, *more, data);
            if let Some(whole) =
                d.insert(at, &f, &mut |s| *skipped.entry(s.name()).or_default() += 1)
            {
                out.push(whole);
            }
        }
        (out, skipped, d)
    }

    #[test]
    fn fragments_make_datagrams_or_are_counted() {
        let a = vec![b'a'; 16];
        let b = vec![b'b'; 16];
        let c = b"tail".to_vec();
        let whole: Vec<u8> = [a.clone(), b.clone(), c.clone()].concat();
        let other_b = vec![b'x'; 16];
        type Case = (
            &'static str,
            Vec<Piece>,
            Vec<Vec<u8>>,
            Vec<(&'static str, u64)>,
        );
        let cases: Vec<Case> = vec![
            (
                "in order",
                vec![
                    (0, 1, 0, true, a.clone()),
                    (0, 1, 16, true, b.clone()),
                    (0, 1, 32, false, c.clone()),
                ],
                vec![whole.clone()],
                vec![],
            ),
            (
                "last first, then the others reversed",
                vec![
                    (0, 1, 32, false, c.clone()),
                    (0, 1, 16, true, b.clone()),
                    (0, 1, 0, true, a.clone()),
                ],
                vec![whole.clone()],
                vec![],
            ),
            (
                "a duplicate is dropped alone",
                vec![
                    (0, 1, 0, true, a.clone()),
                    (0, 1, 0, true, a.clone()),
                    (0, 1, 16, true, b.clone()),
                    (0, 1, 32, false, c.clone()),
                ],
                vec![whole.clone()],
                vec![("ip_fragment_duplicate", 1)],
            ),
            (
                "overlap with other bytes rejects the datagram",
                vec![
                    (0, 1, 0, true, a.clone()),
                    (0, 1, 16, true, b.clone()),
                    (0, 1, 8, true, other_b.clone()),
                    (0, 1, 32, false, c.clone()),
                ],
                vec![],
                vec![("ip_fragment_overlap", 1)],
            ),
            (
                "two different ends",
                vec![(0, 1, 32, false, c.clone()), (0, 1, 16, false, b.clone())],
                vec![],
                vec![("ip_fragment_overlap", 1)],
            ),
            (
                "data past the end",
                vec![(0, 1, 16, false, c.clone()), (0, 1, 16, true, b.clone())],
                vec![],
                vec![("ip_fragment_overlap", 1)],
            ),
            (
                "past 65535 bytes",
                vec![(0, 1, 65_528, false, b.clone())],
                vec![],
                vec![("ip_fragment_too_large", 1)],
            ),
            (
                "empty middle fragment",
                vec![(0, 1, 16, true, vec![])],
                vec![],
                vec![("malformed", 1)],
            ),
            (
                "middle fragment off the 8-byte grid",
                vec![(0, 1, 0, true, vec![1; 12])],
                vec![],
                vec![("malformed", 1)],
            ),
            (
                "atomic fragment",
                vec![(0, 9, 0, false, c.clone())],
                vec![c.clone()],
                vec![],
            ),
            (
                "two datagrams interleaved, told apart by id",
                vec![
                    (0, 1, 16, false, c.clone()),
                    (0, 2, 16, false, b.clone()),
                    (0, 2, 0, true, a.clone()),
                    (0, 1, 0, true, b.clone()),
                ],
                vec![
                    [a.clone(), b.clone()].concat(),
                    [b.clone(), c.clone()].concat(),
                ],
                vec![],
            ),
            (
                "a hole times out after 30 s of capture time",
                vec![
                    (0, 1, 0, true, a.clone()),
                    (10, 2, 0, true, a.clone()),
                    (31, 1, 32, false, c.clone()),
                ],
                vec![],
                vec![("ip_fragment_incomplete", 1)],
            ),
            (
                "a late fragment within the timeout completes it",
                vec![(0, 1, 0, true, a.clone()), (30, 1, 16, false, c.clone())],
                vec![[a.clone(), c.clone()].concat()],
                vec![],
            ),
        ];
        for (name, pieces, want, skipped) in cases {
            let (got, got_skipped, _) = run(&pieces);
            assert_eq!(got, want, "{name}");
            let want_skipped: BTreeMap<&str, u64> = skipped.into_iter().collect();
            assert_eq!(got_skipped, want_skipped, "{name}");
        }
    }

    #[test]
    fn hostile_fragments_stay_within_the_bounds() {
        let mut d = Defrag::new();
        let mut skipped = 0u64;
        let mut count = |_: Skip| skipped += 1;
        let at = UNIX_EPOCH;
        // Each datagram claims the top of the 64 KiB range, costing the most bytes.
        for id in 0..5_000u32 {
            let f = frag(id, 65_528 - 8, true, &[0; 8]);
            assert_eq!(d.insert(at, &f, &mut count), None);
            assert!(d.held <= MAX_HELD_BYTES, "held {}", d.held);
            assert!(d.pending.len() <= MAX_IN_FLIGHT);
        }
        // Many separate pieces of one datagram.
        for i in 0..1_000usize {
            let f = frag(99_999, i * 32, true, &[0; 8]);
            let _ = d.insert(at, &f, &mut count);
        }
        assert!(d.pending.values().all(|g| g.have.len() <= MAX_PIECES));
        // Offsets and lengths at and past the limits.
        for (offset, len) in [(65_528, 8), (65_535, 0), (usize::MAX - 3, 8), (0, 70_000)] {
            let data = vec![0; len];
            let _ = d.insert(at, &frag(7, offset, false, &data), &mut count);
            let _ = d.insert(at, &frag(8, offset, true, &data), &mut count);
        }
        assert!(d.held <= MAX_HELD_BYTES);
        d.finish(&mut count);
        assert_eq!(d.held, 0);
        assert!(d.pending.is_empty() && d.order.is_empty());
        assert!(skipped > 0);
    }
}
