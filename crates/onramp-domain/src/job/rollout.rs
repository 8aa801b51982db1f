//! How fast a job reaches its things (`jobExecutionsRolloutConfig`) and
//! when it gives up on them (`abortConfig`).
//!
//! The rollout rate is counted over a sliding window of 60 seconds: at any
//! `now`, the executions released in `(now - 60, now]` never exceed the
//! current rate. With an exponential rate, the rate starts at
//! `baseRatePerMinute` and is multiplied by `incrementFactor` each time
//! another `numberOfNotifiedThings` (or `numberOfSucceededThings`) things
//! have been notified (or have succeeded), never above `maximumPerMinute`.
//! Rates are whole executions per minute, rounded down, and each increase
//! adds at least one.

use super::{AbortConfig, AbortFailureType, RolloutConfig};
use crate::UnixTime;

/// The rollout window, in seconds.
pub const ROLLOUT_WINDOW_SECONDS: i64 = 60;

/// A job's rollout so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutState {
    /// Releases still inside the window: when, and how many.
    pub recent_releases: Vec<(UnixTime, u32)>,
    /// Executions released since the job began.
    pub released_total: u64,
    /// Things notified of the job so far.
    pub notified: u64,
    /// Things whose execution succeeded so far.
    pub succeeded: u64,
}

impl RolloutState {
    /// Records `count` executions released at `now`, and forgets releases
    /// that have left the window.
    pub fn record_release(&mut self, now: UnixTime, count: u32) {
        self.record_release_within(now, count, ROLLOUT_WINDOW_SECONDS);
    }

    /// [`RolloutState::record_release`] with a window of `window` seconds.
    pub fn record_release_within(&mut self, now: UnixTime, count: u32, window: i64) {
        self.recent_releases
            .retain(|&(at, _)| in_window(at, now, window));
        if count > 0 {
            self.recent_releases.push((now, count));
            self.released_total = self.released_total.saturating_add(u64::from(count));
        }
    }

    /// Executions released in the window ending at `now`.
    pub fn released_in_window(&self, now: UnixTime) -> u64 {
        self.released_within(now, ROLLOUT_WINDOW_SECONDS)
    }

    /// Executions released in the `window` seconds ending at `now`.
    pub fn released_within(&self, now: UnixTime, window: i64) -> u64 {
        self.recent_releases
            .iter()
            .filter(|&&(at, _)| in_window(at, now, window))
            .map(|&(_, count)| u64::from(count))
            .sum()
    }
}

/// Whether a release at `at` is inside the window of `window` seconds (at
/// least one) ending at `now`.
fn in_window(at: UnixTime, now: UnixTime, window: i64) -> bool {
    at <= now && at > now.saturating_sub(window.max(1))
}

/// Executions per minute allowed with the counts in `state`.
pub fn current_rate(config: &RolloutConfig, state: &RolloutState) -> u32 {
    let max = config.maximum_per_minute;
    let Some(exp) = config.exponential_rate.as_ref().filter(|_| max > 0) else {
        return max;
    };
    let criteria = exp.rate_increase_criteria;
    let (count, step) = match (
        criteria.number_of_notified_things,
        criteria.number_of_succeeded_things,
    ) {
        (Some(n), _) => (state.notified, n),
        (None, Some(n)) => (state.succeeded, n),
        (None, None) => (0, 1),
    };
    let increases = count / u64::from(step.max(1));
    let base = exp.base_rate_per_minute.clamp(1, max);
    let factor = exp.increment_factor;
    // A factor that validation would refuse never grows the rate.
    if !(factor.is_finite() && factor > 1.0) {
        return base;
    }
    // Applied one increase at a time in whole executions, so that a met
    // criterion always raises the rate by at least one (1 × 1.1 would
    // otherwise stay at 1 for ever) and no power can overflow. Each
    // increase adds one or more, so the loop ends within `max` rounds.
    let mut rate = base;
    let mut applied = 0u64;
    while applied < increases && rate < max {
        let grown = (f64::from(rate) * factor).floor().min(f64::from(max));
        // In rate..=max by the `min` above: the cast cannot truncate.
        rate = (grown as u32).max(rate + 1).min(max);
        applied += 1;
    }
    rate
}

/// How many more executions may be released at `now`.
pub fn released_allowance(config: &RolloutConfig, state: &RolloutState, now: UnixTime) -> u32 {
    released_allowance_within(config, state, now, ROLLOUT_WINDOW_SECONDS)
}

/// [`released_allowance`] with the rate counted over `window` seconds
/// instead of a minute: a shorter "minute", for watching a rollout's pace
/// through several windows in little time.
pub fn released_allowance_within(
    config: &RolloutConfig,
    state: &RolloutState,
    now: UnixTime,
    window: i64,
) -> u32 {
    let rate = u64::from(current_rate(config, state));
    let left = rate.saturating_sub(state.released_within(now, window));
    u32::try_from(left).unwrap_or(u32::MAX)
}

/// A job's execution outcomes, as the abort criteria count them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutionCounts {
    pub succeeded: u64,
    pub failed: u64,
    pub rejected: u64,
    pub timed_out: u64,
}

impl ExecutionCounts {
    /// Things whose execution has ended with an outcome of the device or of
    /// a timer; canceled and removed executions are not counted.
    pub fn executed(&self) -> u64 {
        self.succeeded
            .saturating_add(self.failed)
            .saturating_add(self.rejected)
            .saturating_add(self.timed_out)
    }

    fn failures(&self, failure_type: AbortFailureType) -> u64 {
        match failure_type {
            AbortFailureType::Failed => self.failed,
            AbortFailureType::Rejected => self.rejected,
            AbortFailureType::TimedOut => self.timed_out,
            AbortFailureType::All => self
                .failed
                .saturating_add(self.rejected)
                .saturating_add(self.timed_out),
        }
    }
}

/// Why a job is being aborted: the first criterion met.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbortReason {
    /// The criterion's position in `criteriaList`.
    pub criterion: usize,
    pub failure_type: AbortFailureType,
    pub failures: u64,
    pub executed: u64,
    pub threshold_percentage: f64,
}

/// The first abort criterion met by `counts`, in list order: at least
/// `minNumberOfExecutedThings` executed, and failures of the criterion's
/// type at or above `thresholdPercentage` of them.
pub fn should_abort(config: &AbortConfig, counts: &ExecutionCounts) -> Option<AbortReason> {
    let executed = counts.executed();
    config
        .criteria_list
        .iter()
        .enumerate()
        .find_map(|(index, criteria)| {
            if executed < u64::from(criteria.min_number_of_executed_things) || executed == 0 {
                return None;
            }
            let failures = counts.failures(criteria.failure_type);
            // Hundredths of a percent, compared in integers so that the
            // threshold is met exactly, never early by rounding.
            let threshold = (criteria.threshold_percentage * 100.0).round();
            let threshold = if threshold.is_finite() && threshold > 0.0 {
                threshold.min(10_000.0) as u128
            } else {
                return None;
            };
            let met = u128::from(failures) * 10_000 >= threshold * u128::from(executed);
            met.then_some(AbortReason {
                criterion: index,
                failure_type: criteria.failure_type,
                failures,
                executed,
                threshold_percentage: criteria.threshold_percentage,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{AbortAction, AbortCriteria, ExponentialRate, RateIncreaseCriteria};
    use proptest::prelude::*;

    fn flat(max: u32) -> RolloutConfig {
        RolloutConfig {
            maximum_per_minute: max,
            exponential_rate: None,
        }
    }

    fn exponential(
        max: u32,
        base: u32,
        factor: f64,
        notified: Option<u32>,
        succeeded: Option<u32>,
    ) -> RolloutConfig {
        RolloutConfig {
            maximum_per_minute: max,
            exponential_rate: Some(ExponentialRate {
                base_rate_per_minute: base,
                increment_factor: factor,
                rate_increase_criteria: RateIncreaseCriteria {
                    number_of_notified_things: notified,
                    number_of_succeeded_things: succeeded,
                },
            }),
        }
    }

    fn criteria(failure_type: AbortFailureType, min: u32, threshold: f64) -> AbortCriteria {
        AbortCriteria {
            failure_type,
            action: AbortAction::Cancel,
            threshold_percentage: threshold,
            min_number_of_executed_things: min,
        }
    }

    #[test]
    fn the_documented_exponential_example() {
        let config = exponential(1000, 50, 2.0, Some(1000), None);
        let rate_at = |notified| {
            current_rate(
                &config,
                &RolloutState {
                    notified,
                    ..RolloutState::default()
                },
            )
        };
        assert_eq!(rate_at(0), 50);
        assert_eq!(rate_at(999), 50);
        assert_eq!(rate_at(1000), 100);
        assert_eq!(rate_at(2000), 200);
        assert_eq!(rate_at(3000), 400);
        assert_eq!(rate_at(4000), 800);
        assert_eq!(rate_at(5000), 1000, "capped by maximumPerMinute");
        assert_eq!(rate_at(u64::MAX), 1000);
    }

    #[test]
    fn every_increase_adds_at_least_one_execution_per_minute() {
        let config = exponential(1000, 1, 1.1, Some(10), None);
        let rates: Vec<u32> = (0..5)
            .map(|k| {
                current_rate(
                    &config,
                    &RolloutState {
                        notified: k * 10,
                        ..RolloutState::default()
                    },
                )
            })
            .collect();
        assert_eq!(rates, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_succeeded_criterion_ignores_notifications() {
        let config = exponential(500, 10, 1.5, None, Some(4));
        let state = RolloutState {
            notified: 1000,
            succeeded: 3,
            ..RolloutState::default()
        };
        assert_eq!(current_rate(&config, &state), 10);
        let state = RolloutState {
            succeeded: 8,
            ..state
        };
        assert_eq!(
            current_rate(&config, &state),
            22,
            "10 × 1.5 × 1.5, rounded down"
        );
    }

    #[test]
    fn an_unvalidated_factor_neither_grows_the_rate_nor_stalls() {
        for factor in [1.0, 0.5, f64::NAN, f64::INFINITY, 1.000_000_1] {
            let config = exponential(1000, 7, factor, Some(1), None);
            let state = RolloutState {
                notified: u64::MAX,
                ..RolloutState::default()
            };
            let rate = current_rate(&config, &state);
            assert!((7..=1000).contains(&rate), "{factor}: {rate}");
        }
        let zero_max = RolloutConfig {
            maximum_per_minute: 0,
            exponential_rate: None,
        };
        assert_eq!(
            released_allowance(&zero_max, &RolloutState::default(), 0),
            0
        );
        let zero_exponential = exponential(0, 7, 2.0, Some(1), None);
        assert_eq!(current_rate(&zero_exponential, &RolloutState::default()), 0);
    }

    #[test]
    fn a_shorter_window_paces_the_same_way_over_its_own_length() {
        let config = flat(10);
        let mut state = RolloutState::default();
        assert_eq!(released_allowance_within(&config, &state, 100, 5), 10);
        state.record_release_within(100, 10, 5);
        assert_eq!(released_allowance_within(&config, &state, 104, 5), 0);
        assert_eq!(
            released_allowance_within(&config, &state, 105, 5),
            10,
            "the release left the 5 s window"
        );
        // A minute's window still holds it.
        assert_eq!(released_allowance(&config, &state, 105), 0);
        state.record_release_within(105, 4, 5);
        assert_eq!(state.recent_releases, vec![(105, 4)], "forgotten after 5 s");
        assert_eq!(state.released_total, 14);
        // A window below one second counts as one.
        assert_eq!(released_allowance_within(&config, &state, 105, 0), 6);
        assert_eq!(released_allowance_within(&config, &state, 106, 0), 10);
    }

    #[test]
    fn the_allowance_is_what_the_window_has_left() {
        let config = flat(100);
        let mut state = RolloutState::default();
        assert_eq!(released_allowance(&config, &state, 0), 100);
        state.record_release(0, 70);
        assert_eq!(released_allowance(&config, &state, 30), 30);
        state.record_release(30, 30);
        assert_eq!(released_allowance(&config, &state, 59), 0);
        assert_eq!(
            released_allowance(&config, &state, 60),
            70,
            "the first release left the window"
        );
        assert_eq!(released_allowance(&config, &state, 90), 100);
        state.record_release(200, 0);
        assert!(
            state.recent_releases.is_empty(),
            "old releases are forgotten"
        );
        assert_eq!(state.released_total, 100);
    }

    #[test]
    fn abort_waits_for_the_minimum_then_triggers_at_the_threshold() {
        let config = AbortConfig {
            criteria_list: vec![criteria(AbortFailureType::Failed, 10, 20.0)],
        };
        let counts = |succeeded, failed| ExecutionCounts {
            succeeded,
            failed,
            ..ExecutionCounts::default()
        };
        assert_eq!(
            should_abort(&config, &counts(0, 9)),
            None,
            "9 of 9 failed, but fewer than 10 executed"
        );
        assert_eq!(should_abort(&config, &counts(9, 1)), None, "10% < 20%");
        let reason = should_abort(&config, &counts(8, 2)).unwrap();
        assert_eq!(
            (reason.failures, reason.executed, reason.criterion),
            (2, 10, 0)
        );
        assert_eq!(should_abort(&config, &counts(9, 2)), None, "18.18% < 20%");
    }

    #[test]
    fn abort_criteria_count_their_own_failure_type_and_are_tried_in_order() {
        let config = AbortConfig {
            criteria_list: vec![
                criteria(AbortFailureType::TimedOut, 1, 50.0),
                criteria(AbortFailureType::Rejected, 1, 50.0),
                criteria(AbortFailureType::All, 1, 50.0),
            ],
        };
        let counts = ExecutionCounts {
            succeeded: 2,
            failed: 1,
            rejected: 1,
            timed_out: 0,
        };
        let reason = should_abort(&config, &counts).unwrap();
        assert_eq!(reason.criterion, 2);
        assert_eq!(reason.failure_type, AbortFailureType::All);
        let counts = ExecutionCounts {
            timed_out: 4,
            ..counts
        };
        assert_eq!(should_abort(&config, &counts).unwrap().criterion, 0);
    }

    #[test]
    fn fractional_thresholds_are_met_exactly() {
        let config = AbortConfig {
            criteria_list: vec![criteria(AbortFailureType::Failed, 1, 12.5)],
        };
        let at = |failed, succeeded| {
            should_abort(
                &config,
                &ExecutionCounts {
                    failed,
                    succeeded,
                    ..ExecutionCounts::default()
                },
            )
        };
        assert!(at(1, 7).is_some(), "1 of 8 is 12.5%");
        assert!(at(1, 8).is_none());
        let config = AbortConfig {
            criteria_list: vec![criteria(AbortFailureType::Failed, 1, 33.33)],
        };
        let at = |failed, succeeded| {
            should_abort(
                &config,
                &ExecutionCounts {
                    failed,
                    succeeded,
                    ..ExecutionCounts::default()
                },
            )
        };
        assert!(at(1, 2).is_some(), "33.333…% >= 33.33%");
        assert!(at(3333, 6668).is_none(), "33.3266% < 33.33%");
    }

    proptest! {
        #[test]
        fn releases_never_exceed_the_maximum_in_any_window_and_fill_each_minute(
            max in 1u32..=1000,
            demand_per_second in 0u32..3000,
            seconds in 60i64..400,
        ) {
            let config = flat(max);
            let mut state = RolloutState::default();
            let mut per_second = Vec::new();
            let mut backlog = 0u64;
            for now in 0..seconds {
                backlog += u64::from(demand_per_second);
                let allowed = u64::from(released_allowance(&config, &state, now));
                let release = allowed.min(backlog) as u32;
                backlog -= u64::from(release);
                state.record_release(now, release);
                per_second.push(u64::from(release));
            }
            for start in 0..per_second.len() {
                let window: u64 = per_second[start..(start + 60).min(per_second.len())].iter().sum();
                prop_assert!(window <= u64::from(max));
            }
            // With demand above the rate from the start, every full minute
            // [60k, 60k + 60) releases exactly the rate.
            if u64::from(demand_per_second) >= u64::from(max) {
                for minute in per_second.chunks_exact(60) {
                    prop_assert_eq!(minute.iter().sum::<u64>(), u64::from(max));
                }
            }
        }

        #[test]
        fn exponential_rate_grows_only_once_its_criteria_are_met(
            base in 1u32..=1000,
            factor_tenths in 11u32..=50,
            step in 1u32..5000,
            notified in 0u64..100_000,
            use_succeeded in any::<bool>(),
        ) {
            let factor = f64::from(factor_tenths) / 10.0;
            let config = if use_succeeded {
                exponential(1000, base, factor, None, Some(step))
            } else {
                exponential(1000, base, factor, Some(step), None)
            };
            let state = if use_succeeded {
                RolloutState { succeeded: notified, ..RolloutState::default() }
            } else {
                RolloutState { notified, ..RolloutState::default() }
            };
            let rate = current_rate(&config, &state);
            prop_assert!(rate <= 1000);
            if notified < u64::from(step) {
                prop_assert_eq!(rate, base);
            } else {
                prop_assert!(rate > base || base == 1000);
                let increases = notified / u64::from(step);
                prop_assert!(u64::from(rate) >= (u64::from(base) + increases).min(1000));
            }
            // One more thing never lowers the rate.
            let more = if use_succeeded {
                RolloutState { succeeded: notified + 1, ..state.clone() }
            } else {
                RolloutState { notified: notified + 1, ..state.clone() }
            };
            prop_assert!(current_rate(&config, &more) >= rate);
            // The other count has no effect.
            let other = if use_succeeded {
                RolloutState { notified: u64::MAX, ..state.clone() }
            } else {
                RolloutState { succeeded: u64::MAX, ..state.clone() }
            };
            prop_assert_eq!(current_rate(&config, &other), rate);
        }

        #[test]
        fn abort_triggers_exactly_at_the_threshold_and_not_before_the_minimum(
            min in 1u32..300,
            executed_index in 0usize..EXACT_DIVISORS.len(),
            failed_seed in any::<u64>(),
        ) {
            // Executed counts that divide 10 000, so that every failure
            // count is a percentage with at most two decimals: the
            // threshold can be set to exactly that percentage.
            let executed = EXACT_DIVISORS[executed_index];
            let failed = 1 + failed_seed % executed;
            let threshold = (failed * 10_000 / executed) as f64 / 100.0;
            let config = AbortConfig { criteria_list: vec![criteria(AbortFailureType::Failed, min, threshold)] };
            let at = |failed: u64| should_abort(&config, &ExecutionCounts {
                failed,
                succeeded: executed - failed,
                ..ExecutionCounts::default()
            });
            let enough = executed >= u64::from(min);
            prop_assert_eq!(at(failed).is_some(), enough, "exactly at {}%", threshold);
            prop_assert!(at(failed - 1).is_none(), "just below {}%", threshold);
            if enough {
                prop_assert!(at(executed).is_some());
            }
        }

        #[test]
        fn an_exponential_rollout_never_exceeds_its_maximum_in_any_window(
            max in 1u32..=1000,
            base in 1u32..=1000,
            factor_tenths in 11u32..=50,
            step in 1u32..300,
            demand_per_second in 0u32..2000,
            seconds in 60i64..300,
        ) {
            let config = exponential(max, base, f64::from(factor_tenths) / 10.0, Some(step), None);
            let mut state = RolloutState::default();
            let mut per_second = Vec::new();
            let mut rates = Vec::new();
            for now in 0..seconds {
                let rate = current_rate(&config, &state);
                rates.push((rate, state.notified));
                let release = released_allowance(&config, &state, now).min(demand_per_second);
                state.record_release(now, release);
                // Every released execution notifies its thing.
                state.notified += u64::from(release);
                per_second.push(u64::from(release));
            }
            for start in 0..per_second.len() {
                let window: u64 = per_second[start..(start + 60).min(per_second.len())].iter().sum();
                prop_assert!(window <= u64::from(max));
            }
            // The rate changed only when another `step` things were notified.
            for pair in rates.windows(2) {
                let ((r0, n0), (r1, n1)) = (pair[0], pair[1]);
                if n0 / u64::from(step) == n1 / u64::from(step) {
                    prop_assert_eq!(r0, r1);
                }
            }
        }
    }

    proptest! {
        /// A pause stops releases; on resume the window still holds what
        /// went out before the pause, so no 60-second window (one that
        /// spans the pause included) ever exceeds `maximumPerMinute`, and
        /// after a pause of a minute or more the full rate is available.
        #[test]
        fn a_paused_rollout_resumes_at_its_rate_without_a_burst(
            max in 1u32..=1000,
            demand_per_second in 1u32..2000,
            pause_start in 0i64..120,
            pause_len in 0i64..200,
            seconds in 60i64..400,
        ) {
            let config = flat(max);
            let mut state = RolloutState::default();
            let mut per_second = Vec::new();
            for now in 0..seconds {
                let paused = (pause_start..pause_start + pause_len).contains(&now);
                let release = if paused {
                    0
                } else {
                    released_allowance(&config, &state, now).min(demand_per_second)
                };
                if now == pause_start + pause_len && pause_len >= ROLLOUT_WINDOW_SECONDS {
                    prop_assert_eq!(release, max.min(demand_per_second));
                }
                state.record_release(now, release);
                per_second.push(u64::from(release));
            }
            for start in 0..per_second.len() {
                let window: u64 = per_second[start..(start + 60).min(per_second.len())].iter().sum();
                prop_assert!(window <= u64::from(max));
            }
            let paused_total: u64 = per_second
                .iter()
                .enumerate()
                .filter(|(at, _)| (pause_start..pause_start + pause_len).contains(&(*at as i64)))
                .map(|(_, n)| *n)
                .sum();
            prop_assert_eq!(paused_total, 0);
        }
    }

    const EXACT_DIVISORS: [u64; 25] = [
        1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 80, 100, 125, 200, 250, 400, 500, 625, 1000, 1250,
        2000, 2500, 5000, 10_000,
    ];
}
