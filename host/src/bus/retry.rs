//! Retry policies: exponential backoff with jitter.

use std::time::Duration;

use serde::Serialize;

/// A complete retry policy: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Deliveries before an event goes to the dead-letter queue (the first one included).
    pub max_attempts: u32,
    /// Delay before the first retry.
    pub initial_backoff: Duration,
    /// Longest delay between two attempts.
    pub max_backoff: Duration,
    /// Factor the delay grows by after each failed attempt.
    pub multiplier: f64,
    /// Random spread of each delay, as a fraction of it.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 5 attempts, 100 ms doubling up to 30 s, ±20 % jitter.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl RetryPolicy {
    /// One attempt and no retries: a failure is final.
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// How long to wait after attempt `failed_attempt` (1 for the first delivery) failed.
    /// `random` is a uniform sample from `0.0..1.0`: the delay is spread by up to ±jitter
    /// around the exponential value so that events that failed together do not retry in
    /// lockstep. Never more than `max_backoff`; whatever the policy's values (an infinite
    /// or NaN product included), never a panic.
    pub fn backoff(&self, failed_attempt: u32, random: f64) -> Duration {
        let exponent = i32::try_from(failed_attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = self.max_backoff.as_secs_f64();
        let base = (self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent)).min(max);
        let spread = 1.0 + self.jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::try_from_secs_f64((base * spread).clamp(0.0, max)).unwrap_or(self.max_backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_spreads_it() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.0,
        };
        let delays: Vec<u128> = (1..=5).map(|n| policy.backoff(n, 0.5).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        let jittery = RetryPolicy {
            jitter: 0.2,
            ..policy
        };
        assert_eq!(jittery.backoff(1, 0.0).as_millis(), 80);
        assert_eq!(jittery.backoff(1, 1.0).as_millis(), 120);
    }

    #[test]
    fn extreme_policies_saturate_instead_of_panicking() {
        let huge = RetryPolicy {
            max_attempts: u32::MAX,
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            multiplier: f64::MAX,
            jitter: 1.0,
        };
        for attempt in [1, 2, 1000, u32::MAX] {
            assert!(huge.backoff(attempt, 0.999) <= Duration::MAX);
        }
        let nan = RetryPolicy {
            multiplier: f64::NAN,
            max_backoff: Duration::from_secs(9),
            ..huge
        };
        assert_eq!(nan.backoff(3, 0.5), Duration::from_secs(9));
    }
}
