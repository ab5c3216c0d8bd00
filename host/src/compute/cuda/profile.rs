//! Where a step's time goes, printed to stderr every 200 steps:
//! - `REALM_CUDA_PROFILE=ops`: each op is followed by a device
//!   synchronization and timed (which slows every op by a round trip);
//! - `REALM_CUDA_PROFILE=step`: only the time to submit a step's work (from
//!   its ops' start) and the time then spent waiting for its output.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::compute::graph::Node;

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    Off,
    Ops,
    Step,
}

pub static MODE: LazyLock<Mode> = LazyLock::new(|| match std::env::var("REALM_CUDA_PROFILE").as_deref() {
    Ok("ops") => Mode::Ops,
    Ok(_) => Mode::Step,
    Err(_) => Mode::Off,
});

/// Per kind of work: calls and time.
type Totals = BTreeMap<&'static str, (u64, Duration)>;

/// Steps counted, and the totals since the last print.
static TOTALS: Mutex<(u64, Totals)> = Mutex::new((0, BTreeMap::new()));

pub fn kind(node: &Node) -> &'static str {
    match node {
        Node::Embed { .. } => "embed",
        Node::RmsNorm { .. } => "rms_norm",
        Node::Matmul { .. } => "matmul",
        Node::AddTensor { .. } => "add_tensor",
        Node::Add(..) | Node::Mul(..) | Node::Scale(..) => "elementwise",
        Node::Rope { .. } => "rope",
        Node::Attention(_) => "attention",
        Node::Swiglu(..) | Node::Geglu(..) => "glu",
        Node::LastRow(_) => "last_row",
    }
}

pub fn record(what: &'static str, since: Instant) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = totals.1.entry(what).or_default();
    entry.0 += 1;
    entry.1 += since.elapsed();
}

/// Counts a step; every 200th prints the totals and starts again.
pub fn step_done() {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    totals.0 += 1;
    if totals.0 == 200 {
        let all: Duration = totals.1.values().map(|v| v.1).sum();
        eprintln!(
            "cuda profile, 200 steps, {:.1} µs/step:",
            all.as_secs_f64() * 1e6 / 200.0
        );
        for (what, (n, t)) in &totals.1 {
            eprintln!("  {what:12} {n:7} calls {:9.1} µs/step", t.as_secs_f64() * 1e6 / 200.0);
        }
        *totals = (0, BTreeMap::new());
    }
}
