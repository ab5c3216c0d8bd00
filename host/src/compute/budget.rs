//! Budgets: what a tenant holds (its KV cache positions) is charged against
//! its limit and given back when the charge is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::ComputeError;

#[derive(Debug)]
pub struct Budget {
    name: String,
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    pub fn new(name: impl Into<String>, limit: u64) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            limit,
            used: AtomicU64::new(0),
        })
    }

    pub fn unlimited(name: impl Into<String>) -> Arc<Self> {
        Self::new(name, u64::MAX)
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> Option<u64> {
        (self.limit != u64::MAX).then_some(self.limit)
    }

    /// Reserves `amount`, or fails without reserving anything.
    pub fn charge(self: &Arc<Self>, amount: u64) -> Result<Charge, ComputeError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(amount).filter(|&total| total <= self.limit)
            })
            .map_err(|used| {
                ComputeError::QuotaExceeded(format!(
                    "{} needs {amount} more, over its limit of {} ({used} in use)",
                    self.name, self.limit
                ))
            })?;
        Ok(Charge {
            budget: self.clone(),
            amount,
        })
    }
}

/// An amount held against a budget until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    amount: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.amount, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_refused_past_the_limit_and_refunded_on_drop() {
        let budget = Budget::new("tenant a", 100);
        let first = budget.charge(60).expect("fits");
        assert!(matches!(budget.charge(50), Err(ComputeError::QuotaExceeded(_))));
        assert_eq!(budget.used(), 60);
        drop(first);
        assert_eq!(budget.used(), 0);
        let _second = budget.charge(100).expect("fits after refund");
    }
}
