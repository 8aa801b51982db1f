//! Keyed token-bucket limits (per source address, per credential).

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter as Governor, state::keyed::DefaultKeyedStateStore};
use std::num::NonZeroU32;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
