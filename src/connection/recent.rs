//! A bounded, time-windowed set of recently seen `message_id`s: a redelivered data
//! message is acked again but not forwarded twice.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Recently seen message ids, forgotten after `window` or beyond `capacity` entries
/// (oldest first).
#[derive(Debug)]
pub struct RecentMessages {
    window: Duration,
    capacity: usize,
    seen: HashSet<Box<str>>,
    order: VecDeque<(Instant, Box<str>)>,
}

impl RecentMessages {
    /// An empty set keeping ids for `window`, at most `capacity` of them.
    pub fn new(window: Duration, capacity: usize) -> Self {
        RecentMessages {
            window,
            capacity: capacity.max(1),
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Records `id` at `now`; returns `false` when it was already present (a duplicate).
    /// An empty id is never treated as a duplicate.
    pub fn insert(&mut self, id: &str, now: Instant) -> bool {
        if id.is_empty() {
            return true;
        }
        self.prune(now);
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= self.capacity
            && let Some((_, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        let id: Box<str> = id.into();
        self.seen.insert(id.clone());
        self.order.push_back((now, id));
        true
    }

    /// Forgets ids older than the window.
    pub fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) <= self.window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.seen.remove(&id);
            }
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
    }
}
