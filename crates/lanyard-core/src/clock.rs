//! The one place that reads the wall clock.
//!
//! Everything else takes a [`Clock`], so certificate validity, one-time-code expiry and the derived
//! PIV re-check can be tested by moving a [`ManualClock`] instead of sleeping.

use std::sync::Mutex;

use time::{Duration, OffsetDateTime};

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// The current instant (UTC).
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to. For tests and simulations.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<OffsetDateTime>,
}

impl ManualClock {
    /// A clock stopped at `at`.
    pub fn new(at: OffsetDateTime) -> Self {
        Self { now: Mutex::new(at) }
    }

    /// Moves the clock to `at` (backwards too: tests of clock skew need it).
    pub fn set(&self, at: OffsetDateTime) {
        *self.lock() = at;
    }

    /// Moves the clock forward by `by` (backwards when negative).
    pub fn advance(&self, by: Duration) {
        let mut now = self.lock();
        *now += by;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OffsetDateTime> {
        // A poisoned lock only means another test thread panicked while holding it; the stored
        // instant is still a valid value.
        self.now.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for ManualClock {
    /// 2025-01-01T00:00:00Z: a fixed, recognisable starting point.
    fn default() -> Self {
        Self::new(time::macros::datetime!(2025-01-01 00:00:00 UTC))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.lock()
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> OffsetDateTime {
        (**self).now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(datetime!(2030-06-01 12:00 UTC));
        assert_eq!(clock.now(), datetime!(2030-06-01 12:00 UTC));
        clock.advance(Duration::days(7));
        assert_eq!(clock.now(), datetime!(2030-06-08 12:00 UTC));
        clock.set(datetime!(2029-01-01 00:00 UTC));
        assert_eq!(clock.now(), datetime!(2029-01-01 00:00 UTC));
    }

    #[test]
    fn system_clock_is_after_2024() {
        assert!(SystemClock.now() > datetime!(2024-01-01 00:00 UTC));
    }
}
