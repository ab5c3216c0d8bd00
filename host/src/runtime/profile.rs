//! Where a step's time goes, for `realm-host bench`: the compute import's
//! `graph.run` accumulates, per thread, the nanoseconds spent inside the host
//! function and inside the backend's executor. A tenant's guest calls and its
//! `graph.run` calls happen on the thread that owns its store, so that thread's
//! counters, read before and after a guest call, split the call into guest time
//! (wasm and the canonical ABI), host glue and kernels. The cost is two
//! `Instant` pairs per step and a thread-local add.

use std::cell::Cell;
use std::time::Instant;

/// Totals of this thread's `graph.run` calls so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepProfile {
    /// `graph.run` calls.
    pub steps: u64,
    /// Nanoseconds inside the host function `graph.run`, executor included.
    pub host_ns: u64,
    /// Nanoseconds inside the backend executing the step graph (the kernels).
    pub kernel_ns: u64,
}

impl StepProfile {
    /// What was added between `earlier` and `self`.
    pub fn since(&self, earlier: &StepProfile) -> StepProfile {
        StepProfile {
            steps: self.steps - earlier.steps,
            host_ns: self.host_ns - earlier.host_ns,
            kernel_ns: self.kernel_ns - earlier.kernel_ns,
        }
    }
}

thread_local! {
    static PROFILE: Cell<StepProfile> = const { Cell::new(StepProfile { steps: 0, host_ns: 0, kernel_ns: 0 }) };
}

/// This thread's totals.
pub fn snapshot() -> StepProfile {
    PROFILE.with(Cell::get)
}

/// Adds one step that entered the host at `entered`, ran the executor from
/// `kernel_start` to `kernel_end`, and left the host now.
pub(crate) fn record(entered: Instant, kernel_start: Instant, kernel_end: Instant) {
    let left = Instant::now();
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    PROFILE.with(|p| {
        let mut v = p.get();
        v.steps += 1;
        v.host_ns += ns(left - entered);
        v.kernel_ns += ns(kernel_end - kernel_start);
        p.set(v);
    });
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn record_accumulates_on_this_thread_only() {
        let before = super::snapshot();
        let entered = Instant::now() - Duration::from_micros(10);
        let kernel_start = entered + Duration::from_micros(1);
        let kernel_end = kernel_start + Duration::from_micros(5);
        super::record(entered, kernel_start, kernel_end);
        let added = super::snapshot().since(&before);
        assert_eq!(added.steps, 1);
        assert_eq!(added.kernel_ns, 5_000);
        assert!(added.host_ns >= added.kernel_ns);
        let other = std::thread::spawn(super::snapshot).join().expect("thread");
        assert_eq!(other, super::StepProfile::default());
    }
}
