//! Keyed token-bucket limits (per source address, per credential), and
//! back-off after failed credentials.

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Governor, state::keyed::DefaultKeyedStateStore};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `burst` requests at once, refilled at `per_second` (0 means one per ten seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

pub struct RateLimiter {
    limiter: Governor<String, DefaultKeyedStateStore<String>, DefaultClock>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        let burst = NonZeroU32::new(limit.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = match NonZeroU32::new(limit.per_second) {
            Some(rate) => Quota::per_second(rate),
            None => Quota::with_period(Duration::from_secs(10))
                .unwrap_or(Quota::per_second(NonZeroU32::MIN)),
        }
        .allow_burst(burst);
        RateLimiter {
            limiter: Governor::keyed(quota),
            clock: DefaultClock::default(),
        }
    }

    /// `Ok` if `key` may go ahead now, else the seconds to wait (at least 1).
    pub fn check(&self, key: &str) -> Result<(), u64> {
        match self.limiter.check_key(&key.to_string()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }

    pub fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// Back-off after failed credentials: `max_failures` failures in a row lock
/// the key for `backoff`, doubling with every further failure up to
/// `max_backoff`. A key with no failure for `max_backoff` starts afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureLimit {
    pub max_failures: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed-credential counts per key (a serial number, a source address).
/// The clock is passed in, so the rule is tested without waiting.
pub struct FailureLimiter {
    limit: FailureLimit,
    keys: Mutex<HashMap<String, Failures>>,
}

/// Keys tracked at most; beyond, new keys share one bucket, so a flood of
/// made-up keys locks itself out instead of growing memory.
const MAX_FAILURE_KEYS: usize = 100_000;
const OVERFLOW_KEY: &str = "(overflow)";

impl FailureLimiter {
    pub fn new(limit: FailureLimit) -> FailureLimiter {
        FailureLimiter {
            limit,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Ok` if `key` may try now, else the seconds until it may (at least 1).
    pub fn check(&self, key: &str, now: Instant) -> Result<(), u64> {
        let keys = self.lock();
        let state = keys.get(key).or_else(|| {
            (keys.len() >= MAX_FAILURE_KEYS)
                .then(|| keys.get(OVERFLOW_KEY))
                .flatten()
        });
        match state.and_then(|f| f.locked_until) {
            Some(until) if until > now => Err((until - now).as_secs_f64().ceil().max(1.0) as u64),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt for `key`.
    pub fn fail(&self, key: &str, now: Instant) {
        if self.limit.max_failures == 0 {
            return;
        }
        let mut keys = self.lock();
        let key = if keys.len() >= MAX_FAILURE_KEYS && !keys.contains_key(key) {
            OVERFLOW_KEY
        } else {
            key
        };
        let f = keys.entry(key.to_string()).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(f.last) > self.limit.max_backoff {
            f.count = 0;
            f.locked_until = None;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        if f.count >= self.limit.max_failures {
            let doublings = (f.count - self.limit.max_failures).min(20);
            let backoff = self
                .limit
                .backoff
                .saturating_mul(1 << doublings)
                .min(self.limit.max_backoff);
            f.locked_until = Some(now + backoff);
        }
    }

    /// A successful attempt clears the key's failures.
    pub fn succeed(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forgets keys that are neither locked nor recently failed.
    pub fn sweep(&self, now: Instant) {
        let reset = self.limit.max_backoff;
        self.lock().retain(|_, f| {
            f.locked_until.is_some_and(|u| u > now)
                || now.saturating_duration_since(f.last) <= reset
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit() -> FailureLimit {
        FailureLimit {
            max_failures: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        }
    }

    #[test]
    fn failures_lock_a_key_with_doubling_backoff_and_leave_others_alone() {
        let l = FailureLimiter::new(limit());
        let t0 = Instant::now();
        l.fail("SN-1", t0);
        l.fail("SN-1", t0);
        assert!(l.check("SN-1", t0).is_ok(), "two failures are allowed");
        l.fail("SN-1", t0);
        assert_eq!(l.check("SN-1", t0), Err(10));
        assert!(l.check("SN-2", t0).is_ok());
        let t1 = t0 + Duration::from_secs(10);
        assert!(l.check("SN-1", t1).is_ok(), "the back-off ends");
        l.fail("SN-1", t1);
        assert_eq!(l.check("SN-1", t1), Err(20), "it doubles");
        let t2 = t1 + Duration::from_secs(20);
        for _ in 0..5 {
            l.fail("SN-1", t2);
        }
        assert_eq!(l.check("SN-1", t2), Err(60), "capped");
    }

    #[test]
    fn success_or_a_quiet_period_clears_failures() {
        let l = FailureLimiter::new(limit());
        let t0 = Instant::now();
        l.fail("a", t0);
        l.fail("a", t0);
        l.succeed("a");
        l.fail("a", t0);
        assert!(
            l.check("a", t0).is_ok(),
            "the count restarted after success"
        );
        l.fail("b", t0);
        l.fail("b", t0);
        let later = t0 + Duration::from_secs(61);
        l.fail("b", later);
        assert!(l.check("b", later).is_ok(), "old failures expired");
        l.sweep(later + Duration::from_secs(61));
        assert!(l.lock().is_empty());
    }

    #[test]
    fn zero_max_failures_disables_the_limit() {
        let l = FailureLimiter::new(FailureLimit {
            max_failures: 0,
            ..limit()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            l.fail("k", t0);
        }
        assert!(l.check("k", t0).is_ok());
    }

    #[test]
    fn a_key_is_limited_after_its_burst_and_others_are_not() {
        let l = RateLimiter::new(RateLimit {
            per_second: 0,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(l.check("a").is_ok());
        }
        let wait = l.check("a").unwrap_err();
        assert!((1..=10).contains(&wait), "{wait}");
        assert!(l.check("b").is_ok());
    }
}
