//! Admission: a tenant's concurrency, requests-per-minute and
//! tokens-per-minute limits. A request is admitted whole or refused with the
//! time after which asking again can succeed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Concurrency { limit: u32 },
    Requests { limit: u32, retry_after: Duration },
    Tokens { limit: u64, retry_after: Duration },
}

impl Refusal {
    pub fn retry_after(&self) -> Duration {
        match self {
            // A running request's end cannot be foreseen; one second is a fair poll.
            Self::Concurrency { .. } => Duration::from_secs(1),
            Self::Requests { retry_after, .. } | Self::Tokens { retry_after, .. } => *retry_after,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Concurrency { limit } => write!(f, "the tenant already has {limit} requests running (its limit)"),
            Self::Requests { limit, .. } => write!(f, "the tenant's limit of {limit} requests per minute is reached"),
            Self::Tokens { limit, .. } => write!(f, "the tenant's limit of {limit} tokens per minute is reached"),
        }
    }
}

#[derive(Default, Clone, Copy)]
pub struct RateLimits {
    pub concurrent_requests: Option<u32>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
}

pub struct Admission {
    limits: RateLimits,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    running: u32,
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
    tokens_in_window: u64,
}

impl Windows {
    fn forget_before(&mut self, horizon: Instant) {
        while self.requests.front().is_some_and(|&t| t <= horizon) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front()
            && t <= horizon
        {
            self.tokens_in_window -= n;
            self.tokens.pop_front();
        }
    }
}

impl Admission {
    pub fn new(limits: RateLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::default(),
        })
    }

    fn state(&self) -> MutexGuard<'_, Windows> {
        // The windows stay consistent across a panic elsewhere; keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a request of `generations` generations (its choices) now, or
    /// says why not; each counts against the concurrency limit. Tokens are
    /// counted when they are used (`Permit::record_tokens`), so one admitted
    /// request may take a tenant past its tokens-per-minute limit; the next
    /// one then waits.
    pub fn admit(self: &Arc<Self>, generations: u32) -> Result<Permit, Refusal> {
        self.admit_at(Instant::now(), generations)
    }

    fn admit_at(self: &Arc<Self>, now: Instant, generations: u32) -> Result<Permit, Refusal> {
        let mut state = self.state();
        if let Some(horizon) = now.checked_sub(WINDOW) {
            state.forget_before(horizon);
        }
        if let Some(limit) = self.limits.concurrent_requests
            && state.running.saturating_add(generations) > limit
        {
            return Err(Refusal::Concurrency { limit });
        }
        if let Some(limit) = self.limits.requests_per_minute
            && state.requests.len() >= limit as usize
        {
            let oldest = state.requests[state.requests.len() - limit as usize];
            let retry_after = wait_until(oldest + WINDOW, now);
            return Err(Refusal::Requests { limit, retry_after });
        }
        if let Some(limit) = self.limits.tokens_per_minute
            && state.tokens_in_window >= limit
        {
            // Wait until enough of the window has expired to bring it under the limit.
            let mut remaining = state.tokens_in_window;
            let mut until = now;
            for &(t, n) in &state.tokens {
                remaining -= n;
                until = t + WINDOW;
                if remaining < limit {
                    break;
                }
            }
            let retry_after = wait_until(until, now);
            return Err(Refusal::Tokens { limit, retry_after });
        }
        state.running += generations;
        if self.limits.requests_per_minute.is_some() {
            state.requests.push_back(now);
        }
        Ok(Permit {
            admission: self.clone(),
            generations,
        })
    }

    /// The most generations one request may run, if limited.
    pub fn most_generations(&self) -> Option<u32> {
        self.limits.concurrent_requests
    }

    pub fn running(&self) -> u32 {
        self.state().running
    }
}

/// Whole seconds to wait (at least one), as `Retry-After` counts them.
fn wait_until(when: Instant, now: Instant) -> Duration {
    let secs = when.saturating_duration_since(now).as_secs_f64().ceil().max(1.0);
    Duration::from_secs(secs as u64)
}

/// A running request's place in its tenant's limits; dropping it ends the request.
pub struct Permit {
    admission: Arc<Admission>,
    generations: u32,
}

impl Permit {
    /// Counts tokens (prompt and completion) against the tokens-per-minute window.
    pub fn record_tokens(&self, tokens: u64) {
        if self.admission.limits.tokens_per_minute.is_none() || tokens == 0 {
            return;
        }
        let mut state = self.admission.state();
        state.tokens.push_back((Instant::now(), tokens));
        state.tokens_in_window += tokens;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.state().running -= self.generations;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_released_when_a_permit_drops() {
        let admission = Admission::new(RateLimits {
            concurrent_requests: Some(2),
            ..RateLimits::default()
        });
        let a = admission.admit(1).expect("first");
        let _b = admission.admit(1).expect("second");
        assert_eq!(admission.admit(1).err(), Some(Refusal::Concurrency { limit: 2 }));
        drop(a);
        assert!(admission.admit(1).is_ok());
    }

    #[test]
    fn a_request_of_several_generations_holds_as_many_places() {
        let admission = Admission::new(RateLimits {
            concurrent_requests: Some(4),
            ..RateLimits::default()
        });
        let three = admission.admit(3).expect("three of four");
        assert_eq!(admission.admit(2).err(), Some(Refusal::Concurrency { limit: 4 }));
        let one = admission.admit(1).expect("the fourth");
        assert_eq!(admission.running(), 4);
        drop(three);
        assert_eq!(admission.running(), 1);
        assert!(admission.admit(3).is_ok());
        drop(one);
    }

    #[test]
    fn requests_per_minute_slide_with_time() {
        let admission = Admission::new(RateLimits {
            requests_per_minute: Some(2),
            ..RateLimits::default()
        });
        let start = Instant::now();
        drop(admission.admit_at(start, 1).expect("1"));
        drop(admission.admit_at(start + Duration::from_secs(10), 1).expect("2"));
        match admission.admit_at(start + Duration::from_secs(20), 1) {
            Err(Refusal::Requests { retry_after, .. }) => assert_eq!(retry_after, Duration::from_secs(40)),
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        assert!(admission.admit_at(start + Duration::from_secs(61), 1).is_ok());
    }

    #[test]
    fn tokens_per_minute_count_what_was_used() {
        let admission = Admission::new(RateLimits {
            tokens_per_minute: Some(100),
            ..RateLimits::default()
        });
        let permit = admission.admit(1).expect("first");
        permit.record_tokens(60);
        permit.record_tokens(50);
        drop(permit);
        match admission.admit(1) {
            Err(Refusal::Tokens {
                limit: 100,
                retry_after,
            }) => {
                assert!(retry_after <= WINDOW && retry_after >= Duration::from_secs(59))
            }
            other => panic!("expected a refusal, got {:?}", other.err()),
        }
        assert!(
            admission
                .admit_at(Instant::now() + WINDOW + Duration::from_secs(1), 1)
                .is_ok()
        );
    }
}
