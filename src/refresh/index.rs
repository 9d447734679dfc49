//! The scheduler's pure core: the ordered deadline index and the pacer. No actors, no I/O,
//! no clock: every call takes `now_ms` (unix epoch milliseconds).
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
//!
//! [`Pacer`] spreads refreshes under one budget (requests per second, default 40, below
//! the platform's ~50/s): a token bucket of capacity one, so a backlog (e.g. after
//! downtime) drains at the budget rate and never in a burst; each slot is pushed back by a
//! random jitter (up to a fraction of the interval), which only ever lowers the rate.

use std::cell::Cell;
use std::collections::BTreeSet;

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

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

/// Paces token-endpoint calls under a budget, with jitter. See the module docs.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval_us: u64,
    jitter_us: u64,
    /// Earliest instant of the next slot, unix µs.
    next_us: u64,
    rng: StdRng,
}

impl Pacer {
    /// The default budget, calls per second (`refresh.budget_per_sec`).
    pub const DEFAULT_BUDGET_PER_SEC: u32 = 40;

    /// A pacer allowing at most `budget_per_sec` calls in any one-second window (clamped
    /// to at least 1), each slot delayed by a random jitter of up to `jitter_fraction`
    /// (0.0–1.0) of the interval; `seed` makes the jitter reproducible in tests.
    pub fn new(budget_per_sec: u32, jitter_fraction: f64, seed: u64) -> Pacer {
        let interval_us = 1_000_000 / u64::from(budget_per_sec.max(1));
        Pacer {
            interval_us,
            jitter_us: (interval_us as f64 * jitter_fraction.clamp(0.0, 1.0)) as u64,
            next_us: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Takes a slot if one is free at `now_ms`: `Ok(())` to go ahead, or `Err(at_ms)`, the
    /// instant (unix ms, rounded up) to try again. Idle time does not accumulate credit.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<(), u64> {
        let now_us = now_ms.saturating_mul(1000);
        if now_us < self.next_us {
            return Err(self.next_us.div_ceil(1000));
        }
        let jitter = if self.jitter_us == 0 {
            0
        } else {
            self.rng.gen_range(0..=self.jitter_us)
        };
        self.next_us = now_us + self.interval_us + jitter;
        Ok(())
    }

    /// The minimum spacing of two slots, microseconds.
    pub fn interval_us(&self) -> u64 {
        self.interval_us
    }
}

#[cfg(test)]
mod tests {
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

    /// 1,000 grants due at once: no one-second window ever holds more than the budget,
    /// and the backlog still drains at close to the budget rate.
    #[test]
    fn the_pacer_holds_the_budget_over_every_window() {
        for (budget, jitter) in [(40u32, 0.2), (40, 0.0), (7, 0.5)] {
            let mut pacer = Pacer::new(budget, jitter, 42);
            let mut backlog = 1_000u32;
            let mut granted = Vec::new();
            let mut now = 5_000_000u64;
            while backlog > 0 {
                match pacer.try_acquire(now) {
                    Ok(()) => {
                        granted.push(now);
                        backlog -= 1;
                    }
                    Err(at) => {
                        assert!(at > now);
                        now = at;
                    }
                }
            }
            for (i, start) in granted.iter().enumerate() {
                let in_window = granted[i..]
                    .iter()
                    .take_while(|t| **t < start + 1000)
                    .count();
                assert!(
                    in_window <= budget as usize,
                    "{in_window} calls in the second from {start} (budget {budget})"
                );
            }
            let span_ms = granted.last().unwrap() - granted[0];
            let ideal_ms = 999 * 1000 / u64::from(budget);
            let slowest_ms = (ideal_ms as f64 * (1.0 + jitter) + 999.0 * 2.0) as u64;
            assert!(
                (ideal_ms..=slowest_ms).contains(&span_ms),
                "1000 calls took {span_ms} ms (budget {budget}, ideal {ideal_ms})"
            );
        }
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

    #[test]
    fn idle_time_gives_no_burst() {
        let mut pacer = Pacer::new(40, 0.0, 1);
        assert!(pacer.try_acquire(0).is_ok());
        // A long idle period, then a backlog: one call, then the spacing again.
        assert!(pacer.try_acquire(3_600_000).is_ok());
        assert_eq!(pacer.try_acquire(3_600_000), Err(3_600_025));
        assert!(pacer.try_acquire(3_600_025).is_ok());
    }
}
