//! A bounded, time-windowed set of recently seen `message_id`s: a redelivered data
//! message is acked again but not forwarded twice.
//!
//! Every data message is checked and inserted, and once the set is full every insert also
//! evicts the oldest id, so this is on the hot path with up to `capacity` (100,000) ids:
//! far more than the CPU caches hold. The layout keeps cache misses per message low: the
//! ids with their hashes and times live in insertion order in one ring (`order`), and the
//! hash table holds only `(hash, sequence number)` pairs. A lookup compares strings only
//! when a stored hash equals the new one; an eviction finds its entry by sequence number
//! and never reads the evicted string; a rehash reads the hashes from the table itself.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

/// One remembered id, in insertion order.
#[derive(Debug)]
struct Seen {
    at: Instant,
    hash: u64,
    id: Box<str>,
}

/// Recently seen message ids, forgotten after `window` or beyond `capacity` entries
/// (oldest first).
#[derive(Debug)]
pub struct RecentMessages {
    window: Duration,
    capacity: usize,
    /// Keyed hashing (random per process): ids come from the network.
    hasher: std::collections::hash_map::RandomState,
    /// `(hash, sequence number)` of every id in `order`.
    table: HashTable<(u64, u64)>,
    /// The ids, oldest first; `order[i]` has sequence number `first_seq + i`.
    order: VecDeque<Seen>,
    first_seq: u64,
}

impl RecentMessages {
    /// An empty set keeping ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentMessages {
            window,
            capacity: capacity.max(1),
            hasher: std::collections::hash_map::RandomState::new(),
            table: HashTable::new(),
            order: VecDeque::new(),
            first_seq: 0,
        }
    }

    /// Records `id` at `now`; returns `false` when it was already present (a duplicate).
    /// An empty id is never treated as a duplicate.
    pub fn insert(&mut self, id: &str, now: Instant) -> bool {
        if id.is_empty() {
            return true;
        }
        self.prune(now);
        let hash = self.hasher.hash_one(id);
        let (order, first_seq) = (&self.order, self.first_seq);
        let present = self.table.find(hash, |&(h, seq)| {
            h == hash
                && order
                    .get((seq - first_seq) as usize)
                    .is_some_and(|seen| &*seen.id == id)
        });
        if present.is_some() {
            return false;
        }
        if self.order.len() >= self.capacity {
            self.pop_oldest();
        }
        let seq = self.first_seq + self.order.len() as u64;
        self.table.insert_unique(hash, (hash, seq), |&(h, _)| h);
        self.order.push_back(Seen {
            at: now,
            hash,
            id: id.into(),
        });
        true
    }

    /// Forgets the oldest id.
    fn pop_oldest(&mut self) {
        let Some(oldest) = self.order.pop_front() else {
            return;
        };
        let seq = self.first_seq;
        self.first_seq += 1;
        if let Ok(entry) = self.table.find_entry(oldest.hash, |&(_, s)| s == seq) {
            entry.remove();
        }
    }

    /// Forgets ids older than the window.
    pub fn prune(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            if now.saturating_duration_since(oldest.at) <= self.window {
                break;
            }
            self.pop_oldest();
        }
    }

    /// Number of ids held.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_inside_the_window_are_detected_and_forgotten_after() {
        let t0 = Instant::now();
        let mut recent = RecentMessages::new(Duration::from_secs(10), 100);
        assert!(recent.insert("a", t0));
        assert!(!recent.insert("a", t0 + Duration::from_secs(5)));
        assert!(recent.insert("b", t0 + Duration::from_secs(6)));
        assert!(recent.insert("a", t0 + Duration::from_secs(11)));
    }

    #[test]
    fn capacity_bounds_memory() {
        let t0 = Instant::now();
        let mut recent = RecentMessages::new(Duration::from_secs(10), 3);
        for id in ["a", "b", "c", "d"] {
            assert!(recent.insert(id, t0));
        }
        assert_eq!(recent.len(), 3);
        assert!(recent.insert("a", t0), "oldest id was evicted");
        assert!(!recent.insert("c", t0), "c is still held");
        assert!(!recent.insert("d", t0), "d is still held");
    }

    #[test]
    fn many_ids_with_eviction_stay_exact() {
        let t0 = Instant::now();
        let mut recent = RecentMessages::new(Duration::from_secs(10), 1000);
        for i in 0..5000 {
            assert!(recent.insert(&format!("m{i}"), t0), "{i} is new");
            if i >= 1 {
                assert!(!recent.insert(&format!("m{}", i - 1), t0));
            }
        }
        assert_eq!(recent.len(), 1000);
        assert_eq!(recent.table.len(), 1000);
        assert!(recent.insert("m3999", t0), "evicted");
        assert!(!recent.insert("m4500", t0));
        recent.prune(t0 + Duration::from_secs(11));
        assert!(recent.is_empty());
        assert_eq!(recent.table.len(), 0);
    }
}
