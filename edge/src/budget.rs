//! How many commands one connection may send: a token bucket refilled at
//! `--client-command-rate` per second up to `--client-command-burst`.
//! Without it one 64 KiB message can carry thousands of `history` or
//! `presence` commands, each a task on the edge and a call (for presence a
//! cluster-wide fan-out) on the nodes. A command over budget is answered
//! with error 111 and not carried out; the connection stays open, and its
//! bounded outbox (3008) ends a client that floods faster than it reads the
//! refusals.
//!
//! Pure: the caller passes the current time, so the rule is tested without
//! sleeping.

use std::time::Instant;

/// One connection's command allowance.
#[derive(Debug, Clone)]
pub struct CommandBudget {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl CommandBudget {
    /// A full bucket: `burst` commands at once, `rate` per second after.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Spend one command's allowance; `false` when the connection is over
    /// its budget (answer 111, do not carry the command out).
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        self.at = self.at.max(now);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = CommandBudget::new(10, 5, t0);
        assert_eq!((0..100).filter(|_| b.take(t0)).count(), 5);
        // One second later: ten more, never above the burst.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..100).filter(|_| b.take(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!((0..100).filter(|_| b.take(t2)).count(), 3);
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut b = CommandBudget::new(10, 1, t0);
        assert!(b.take(t0));
        assert!(!b.take(t0 - Duration::from_secs(3)));
        assert!(!b.take(t0));
    }

    proptest::proptest! {
        /// Over any schedule, accepted commands never exceed the burst plus
        /// the rate times the elapsed time.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 1u32..1000,
            burst in 1u32..500,
            steps in proptest::collection::vec((0u64..50, 0usize..400), 1..40),
        ) {
            let t0 = Instant::now();
            let mut b = CommandBudget::new(rate, burst, t0);
            let mut now = t0;
            let mut accepted = 0u64;
            for (ms, n) in steps {
                now += Duration::from_millis(ms);
                accepted += (0..n).filter(|_| b.take(now)).count() as u64;
            }
            let allowed = f64::from(burst) + now.duration_since(t0).as_secs_f64() * f64::from(rate);
            proptest::prop_assert!(accepted as f64 <= allowed + 1e-6, "{accepted} > {allowed}");
        }
    }
}
