//! The pure pacer under the [`TokenEndpointPacer`](super::TokenEndpointPacer): no actors,
//! no I/O, no clock; every call takes `now_ms` (unix epoch milliseconds).
//!
//! [`Pacer`] spreads token-endpoint calls under one budget (requests per second, default
//! 40, below the platform's ~50/s): a token bucket of capacity one, so a backlog (e.g.
//! after downtime) drains at the budget rate and never in a burst; each slot is pushed back
//! by a random jitter (up to a fraction of the interval), which only ever lowers the rate.

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

/// Paces token-endpoint calls under a budget, with jitter. See the module docs.
#[derive(Debug, Clone)]
pub struct Pacer {
    interval_us: u64,
    jitter_fraction: f64,
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
        let mut pacer = Pacer {
            interval_us: 0,
            jitter_fraction: jitter_fraction.clamp(0.0, 1.0),
            jitter_us: 0,
            next_us: 0,
            rng: StdRng::seed_from_u64(seed),
        };
        pacer.set_budget(budget_per_sec);
        pacer
    }

    /// Changes the budget (calls per second, clamped to at least 1) from the next slot on,
    /// keeping the jitter fraction; a slot already promised keeps its instant.
    pub fn set_budget(&mut self, budget_per_sec: u32) {
        self.interval_us = 1_000_000 / u64::from(budget_per_sec.max(1));
        self.jitter_us = (self.interval_us as f64 * self.jitter_fraction) as u64;
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

    #[test]
    fn a_new_budget_spaces_the_next_slots() {
        let mut pacer = Pacer::new(40, 0.0, 1);
        assert!(pacer.try_acquire(0).is_ok());
        assert_eq!(pacer.try_acquire(0), Err(25));
        pacer.set_budget(20);
        // The promised slot keeps its instant; the ones after are 50 ms apart.
        assert!(pacer.try_acquire(25).is_ok());
        assert_eq!(pacer.try_acquire(25), Err(75));
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
