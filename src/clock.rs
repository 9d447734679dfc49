//! Wall-clock time for every actor and pure core that needs it.
//!
//! Instants here are unix epoch **milliseconds** (`u64`), the unit the store, the records
//! and the platform's expiries use. Code that needs the time takes a [`Clock`] (cheap to
//! clone, `Send + Sync`) instead of reading the system clock, so tests move time
//! themselves:
//! - [`Clock::system`] reads the system clock (production);
//! - [`FakeClock`] is a settable instant shared by every clone of its [`Clock`]
//!   ([`FakeClock::advance`], [`FakeClock::set`]);
//! - [`Clock::from_fn`] wraps any `fn() -> u64` (e.g. a test helper that adds an offset
//!   to the system clock, per thread).
//!
//! Timers (actix `run_later`, tokio sleeps) still run on monotonic time; the clock only
//! answers "what instant is it", the way the records and the platform count.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The system's wall-clock time, unix epoch ms (0 if the system clock is before 1970).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A source of the current instant, unix epoch ms. See the module docs.
#[derive(Clone)]
pub struct Clock(Source);

#[derive(Clone)]
enum Source {
    System,
    Fn(fn() -> u64),
    Fake(Arc<AtomicU64>),
}

impl Clock {
    /// The system clock ([`unix_now_ms`]).
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that calls `now` (which must return unix epoch ms).
    pub fn from_fn(now: fn() -> u64) -> Clock {
        Clock(Source::Fn(now))
    }

    /// The current instant, unix epoch ms.
    pub fn now_ms(&self) -> u64 {
        match &self.0 {
            Source::System => unix_now_ms(),
            Source::Fn(now) => now(),
            Source::Fake(ms) => ms.load(Ordering::Acquire),
        }
    }

    /// True for [`Clock::system`].
    pub fn is_system(&self) -> bool {
        matches!(self.0, Source::System)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl From<fn() -> u64> for Clock {
    fn from(now: fn() -> u64) -> Self {
        Clock::from_fn(now)
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Source::System => f.write_str("Clock::system"),
            Source::Fn(_) => f.write_str("Clock::from_fn"),
            Source::Fake(ms) => write!(f, "Clock::fake({})", ms.load(Ordering::Acquire)),
        }
    }
}

/// A clock that only moves when told to; every [`Clock`] made by [`FakeClock::clock`]
/// reads the same instant.
#[derive(Debug, Clone)]
pub struct FakeClock {
    ms: Arc<AtomicU64>,
}

impl FakeClock {
    /// A fake clock standing at `start_ms` (unix epoch ms).
    pub fn new(start_ms: u64) -> FakeClock {
        FakeClock {
            ms: Arc::new(AtomicU64::new(start_ms)),
        }
    }

    /// A fake clock standing at the system's current instant.
    pub fn starting_now() -> FakeClock {
        FakeClock::new(unix_now_ms())
    }

    /// A [`Clock`] reading this fake clock.
    pub fn clock(&self) -> Clock {
        Clock(Source::Fake(self.ms.clone()))
    }

    /// The instant it stands at, unix epoch ms.
    pub fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Acquire)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.ms.fetch_add(by.as_millis() as u64, Ordering::AcqRel);
    }

    /// Sets the clock to `ms` (unix epoch ms; may go backwards, as a system clock can).
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_clock_moves_only_when_told_and_all_its_clocks_agree() {
        let fake = FakeClock::new(1_000);
        let (a, b) = (fake.clock(), fake.clock().clone());
        assert_eq!((a.now_ms(), b.now_ms()), (1_000, 1_000));
        fake.advance(Duration::from_millis(2_500));
        assert_eq!((a.now_ms(), b.now_ms()), (3_500, 3_500));
        fake.set(10);
        assert_eq!(a.now_ms(), 10);
        assert!(!a.is_system());
    }

    #[test]
    fn the_system_clock_and_a_function_clock_read_their_source() {
        fn fixed() -> u64 {
            42
        }
        assert_eq!(Clock::from_fn(fixed).now_ms(), 42);
        let before = unix_now_ms();
        let now = Clock::system().now_ms();
        assert!(now >= before && now < before + 60_000);
        assert!(Clock::default().is_system());
    }
}
