//! The scheduler's pure core: the ordered deadline index (the pacer that spaces the calls
//! is [`crate::token_endpoint::Pacer`]). No actors, no I/O, no clock: every call takes
//! `now_ms` (unix epoch milliseconds).
//!
//! [`RefreshIndex`] keeps up to two deadlines per grant (DESIGN.md "Refresh policy"):
//! [`DeadlineKind::AccessRefresh`] for hot grants (refresh before the access token expires)
//! and [`DeadlineKind::KeepAlive`] (refresh before the refresh token lapses). Grants are
//! named by a dense `u32` slot the scheduler assigns (it keeps the `open_id` ↔ slot map),
//! so an entry is 13 bytes of key in a B-tree plus 16 bytes of slot table.
//!
//! Costs: [`RefreshIndex::set`] and [`RefreshIndex::remove`] are O(log n);
//! [`RefreshIndex::pop_due`] is O(k log n) for k entries popped, independent of the
//! number of grants; [`RefreshIndex::count_due`] (the backlog, read on every tick for the
//! metrics) is O(1) amortized: it counts each deadline once, when time passes it.

use std::cell::Cell;
use std::collections::BTreeSet;

/// Which of a grant's two deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeadlineKind {
    /// Refresh a hot grant's access token before it expires.
    AccessRefresh = 0,
    /// Refresh before the refresh token lapses, so an idle user stays authorized.
    KeepAlive = 1,
}

impl DeadlineKind {
    fn from_u8(v: u8) -> DeadlineKind {
        if v == 0 {
            DeadlineKind::AccessRefresh
        } else {
            DeadlineKind::KeepAlive
        }
    }
}

/// A deadline that came due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The grant's slot.
    pub grant: u32,
    /// Which deadline.
    pub kind: DeadlineKind,
    /// When it was due, unix ms.
    pub due_ms: u64,
}

const NONE: u64 = u64::MAX;

/// Deadlines of all grants, nearest first. See the module docs.
#[derive(Debug, Default, Clone)]
pub struct RefreshIndex {
    /// `(due_ms, slot, kind)`: the order of service.
    order: BTreeSet<(u64, u32, u8)>,
    /// Per slot, the deadline of each kind (`u64::MAX`: none).
    slots: Vec<[u64; 2]>,
    /// Deadlines at or before `due_cursor` are counted in `due_count` (the backlog as of
    /// the last [`count_due`](Self::count_due)); kept up to date by every change.
    due_cursor: Cell<u64>,
    due_count: Cell<usize>,
}

impl RefreshIndex {
    /// An empty index.
    pub fn new() -> RefreshIndex {
        RefreshIndex::default()
    }

    /// Sets (or, with `None`, clears) one deadline of `grant`, replacing the previous one of
    /// that kind. O(log n).
    pub fn set(&mut self, grant: u32, kind: DeadlineKind, due_ms: Option<u64>) {
        let slot = grant as usize;
        if slot >= self.slots.len() {
            if due_ms.is_none() {
                return;
            }
            self.slots.resize(slot + 1, [NONE; 2]);
        }
        let k = kind as usize;
        let old = self.slots[slot][k];
        if old != NONE {
            self.order.remove(&(old, grant, kind as u8));
            self.uncount(old);
        }
        let new = due_ms.unwrap_or(NONE).min(NONE - 1);
        if due_ms.is_some() {
            self.order.insert((new, grant, kind as u8));
            if new <= self.due_cursor.get() {
                self.due_count.set(self.due_count.get() + 1);
            }
            self.slots[slot][k] = new;
        } else {
            self.slots[slot][k] = NONE;
        }
    }

    /// Removes both deadlines of `grant` (revoked, needs re-authorization). O(log n).
    pub fn remove(&mut self, grant: u32) {
        self.set(grant, DeadlineKind::AccessRefresh, None);
        self.set(grant, DeadlineKind::KeepAlive, None);
    }

    /// The deadline of one kind of `grant`, unix ms.
    pub fn deadline(&self, grant: u32, kind: DeadlineKind) -> Option<u64> {
        self.slots
            .get(grant as usize)
            .map(|d| d[kind as usize])
            .filter(|d| *d != NONE)
    }

    /// The nearest deadline, unix ms (for arming the next tick, and as the oldest overdue
    /// deadline when it is in the past).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.order.first().map(|(due, _, _)| *due)
    }

    /// The nearest deadline if it is due at or before `now_ms` (not removed). O(1)
    /// amortized.
    pub fn first_due(&self, now_ms: u64) -> Option<Due> {
        self.order
            .first()
            .filter(|(due_ms, _, _)| *due_ms <= now_ms)
            .map(|&(due_ms, grant, kind)| Due {
                grant,
                kind: DeadlineKind::from_u8(kind),
                due_ms,
            })
    }

    /// How many deadlines are due at or before `now_ms` (the backlog). O(1) amortized:
    /// only deadlines that came due since the previous call are visited (a clock that
    /// went back recounts, O(k) for k due).
    pub fn count_due(&self, now_ms: u64) -> usize {
        let cursor = self.due_cursor.get();
        let count = if now_ms >= cursor {
            let newly_due = if now_ms == cursor {
                0
            } else {
                self.order
                    .range((cursor + 1, 0, 0)..=(now_ms, u32::MAX, u8::MAX))
                    .count()
            };
            self.due_count.get() + newly_due
        } else {
            self.order.range(..=(now_ms, u32::MAX, u8::MAX)).count()
        };
        self.due_cursor.set(now_ms);
        self.due_count.set(count);
        count
    }

    /// Takes a removed deadline out of the backlog count if it was counted.
    fn uncount(&self, due_ms: u64) {
        if due_ms <= self.due_cursor.get() {
            self.due_count.set(self.due_count.get() - 1);
        }
    }

    /// How many deadlines are due at or before `now_ms`, counting at most `limit`.
    /// O(min(k, limit)).
    pub fn count_due_at_most(&self, now_ms: u64, limit: usize) -> usize {
        self.order
            .range(..=(now_ms, u32::MAX, u8::MAX))
            .take(limit)
            .count()
    }

    /// Removes and returns up to `max` deadlines due at or before `now_ms`, nearest first.
    /// O(k log n) for k returned. The caller sets the next deadlines after refreshing.
    pub fn pop_due(&mut self, now_ms: u64, max: usize) -> Vec<Due> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(due_ms, grant, kind)) = self.order.first() else {
                break;
            };
            if due_ms > now_ms {
                break;
            }
            self.order.pop_first();
            self.uncount(due_ms);
            self.slots[grant as usize][kind as usize] = NONE;
            out.push(Due {
                grant,
                kind: DeadlineKind::from_u8(kind),
                due_ms,
            });
        }
        out
    }

    /// Deadlines held (up to two per grant).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when no deadline is held.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

    use super::*;

    #[test]
    fn pops_in_deadline_order_and_only_what_is_due() {
        let mut index = RefreshIndex::new();
        index.set(7, DeadlineKind::KeepAlive, Some(500));
        index.set(3, DeadlineKind::AccessRefresh, Some(100));
        index.set(3, DeadlineKind::KeepAlive, Some(900));
        index.set(1, DeadlineKind::AccessRefresh, Some(300));
        index.set(9, DeadlineKind::AccessRefresh, Some(50));
        // Update moves it, removal takes both.
        index.set(9, DeadlineKind::AccessRefresh, Some(450));
        index.set(4, DeadlineKind::KeepAlive, Some(10));
        index.remove(4);
        assert_eq!(index.len(), 5);
        assert_eq!(index.next_due_ms(), Some(100));
        let popped = index.pop_due(460, 10);
        assert_eq!(
            popped
                .iter()
                .map(|d| (d.due_ms, d.grant, d.kind))
                .collect::<Vec<_>>(),
            [
                (100, 3, DeadlineKind::AccessRefresh),
                (300, 1, DeadlineKind::AccessRefresh),
                (450, 9, DeadlineKind::AccessRefresh),
            ]
        );
        assert_eq!(index.deadline(3, DeadlineKind::AccessRefresh), None);
        assert_eq!(index.deadline(3, DeadlineKind::KeepAlive), Some(900));
        // `max` bounds a tick.
        let popped = index.pop_due(10_000, 1);
        assert_eq!((popped[0].grant, popped[0].due_ms), (7, 500));
        assert_eq!(index.pop_due(10_000, 10).len(), 1);
        assert!(index.is_empty());
    }

    #[test]
    fn a_tick_with_many_grants_and_few_due_touches_only_the_due() {
        let mut index = RefreshIndex::new();
        for g in 0..100_000u32 {
            index.set(g, DeadlineKind::KeepAlive, Some(1_000_000 + u64::from(g)));
        }
        for g in 0..100u32 {
            index.set(g * 7, DeadlineKind::AccessRefresh, Some(u64::from(g)));
        }
        let due = index.pop_due(10_000, usize::MAX);
        assert_eq!(due.len(), 100);
        assert!(due.windows(2).all(|w| w[0].due_ms <= w[1].due_ms));
        assert_eq!(index.len(), 100_000);
    }

    /// The incrementally kept backlog count equals a full count after any mix of sets,
    /// removals, pops and clock moves (including backwards).
    #[test]
    fn the_backlog_count_matches_a_full_count() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut index = RefreshIndex::new();
        let mut now = 1_000u64;
        for _ in 0..20_000 {
            let grant = rng.gen_range(0..200u32);
            let kind = if rng.gen_bool(0.5) {
                DeadlineKind::AccessRefresh
            } else {
                DeadlineKind::KeepAlive
            };
            match rng.gen_range(0..10) {
                0..=4 => index.set(grant, kind, Some(now - 500 + rng.gen_range(0..1_000))),
                5 => index.set(grant, kind, None),
                6 => index.remove(grant),
                7 => {
                    index.pop_due(now, rng.gen_range(0..5));
                }
                8 => now += rng.gen_range(0..300),
                _ => now = now.saturating_sub(rng.gen_range(0..100)).max(500),
            }
            if rng.gen_bool(0.3) {
                let full = index.order.range(..=(now, u32::MAX, u8::MAX)).count();
                assert_eq!(index.count_due(now), full);
            }
        }
    }
}
