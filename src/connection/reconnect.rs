//! The reconnect delay policy, kept in one place so the `backoff` crate (unmaintained,
//! RUSTSEC-2025-0012) can be swapped for `backon` by editing this file alone.
//!
//! Rules (`lark-ws-protocol.md` §7.3, improved): the first attempt of an outage waits a
//! uniformly random time in `[0, ReconnectNonce)`; later attempts wait an exponential
//! backoff starting at `connection.backoff_initial_secs`, doubling, ±20 % jitter, capped at
//! the server's `ReconnectInterval`; at most `ReconnectCount` attempts per outage (unlimited
//! when negative). A successful connection resets everything.

use std::time::Duration;

use backoff::backoff::Backoff as _;
use rand::Rng as _;

use crate::protocol::endpoint::ConnectionTuning;

/// Decides how long to wait before each reconnect attempt, and when to give up.
#[derive(Debug)]
pub struct ReconnectPolicy {
    initial: Duration,
    backoff: backoff::ExponentialBackoff,
    attempts: u32,
}

impl ReconnectPolicy {
    /// A policy whose exponential steps start at `initial`.
    pub fn new(initial: Duration) -> Self {
        ReconnectPolicy {
            initial,
            backoff: Self::fresh_backoff(initial, Duration::from_secs(120)),
            attempts: 0,
        }
    }

    fn fresh_backoff(initial: Duration, cap: Duration) -> backoff::ExponentialBackoff {
        backoff::ExponentialBackoffBuilder::new()
            .with_initial_interval(initial.min(cap))
            .with_multiplier(2.0)
            .with_randomization_factor(0.2)
            .with_max_interval(cap)
            .with_max_elapsed_time(None)
            .build()
    }

    /// Records a successful connection: the next outage starts from scratch.
    pub fn connected(&mut self) {
        self.attempts = 0;
        self.backoff = Self::fresh_backoff(self.initial, self.backoff.max_interval);
    }

    /// Attempts made in the current outage.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt, or `None` when `ReconnectCount` attempts have
    /// been made in this outage (give up and report).
    pub fn next_delay(&mut self, tuning: &ConnectionTuning) -> Option<Duration> {
        if let Some(limit) = tuning.reconnect_count
            && self.attempts >= limit
        {
            return None;
        }
        self.attempts += 1;
        if self.attempts == 1 {
            let nonce = tuning.reconnect_nonce;
            if nonce.is_zero() {
                return Some(Duration::ZERO);
            }
            let ms = rand::thread_rng().gen_range(0..nonce.as_millis().max(1) as u64);
            return Some(Duration::from_millis(ms));
        }
        if self.backoff.max_interval != tuning.reconnect_interval {
            self.backoff.max_interval = tuning.reconnect_interval;
            if self.backoff.current_interval > tuning.reconnect_interval {
                self.backoff.current_interval = tuning.reconnect_interval;
            }
        }
        Some(
            self.backoff
                .next_backoff()
                .unwrap_or(tuning.reconnect_interval)
                .min(tuning.reconnect_interval),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(nonce: u64, interval: u64, count: Option<u32>) -> ConnectionTuning {
        ConnectionTuning {
            ping_interval: Duration::from_secs(120),
            reconnect_interval: Duration::from_secs(interval),
            reconnect_nonce: Duration::from_secs(nonce),
            reconnect_count: count,
        }
    }

    #[test]
    fn first_attempt_is_jittered_by_the_nonce_then_backoff_grows_to_the_cap() {
        let mut policy = ReconnectPolicy::new(Duration::from_secs(1));
        let t = tuning(30, 8, None);
        let first = policy.next_delay(&t).unwrap();
        assert!(first < Duration::from_secs(30));
        let delays: Vec<_> = (0..8).map(|_| policy.next_delay(&t).unwrap()).collect();
        assert!(
            delays[0] >= Duration::from_millis(800) && delays[0] <= Duration::from_millis(1200)
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(8)));
        // Capped at 8 s, with the ±20 % jitter applied below the cap.
        assert!(*delays.last().unwrap() >= Duration::from_millis(6400));
    }

    #[test]
    fn gives_up_after_reconnect_count_and_resets_on_success() {
        let mut policy = ReconnectPolicy::new(Duration::from_millis(10));
        let t = tuning(0, 1, Some(2));
        assert_eq!(policy.next_delay(&t), Some(Duration::ZERO));
        assert!(policy.next_delay(&t).is_some());
        assert_eq!(policy.next_delay(&t), None);
        policy.connected();
        assert_eq!(policy.next_delay(&t), Some(Duration::ZERO));
    }
}
