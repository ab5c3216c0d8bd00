//! Where a step's time goes, printed to stderr every 200 steps:
//! - `REALM_CUDA_PROFILE=ops`: each op's time on the device, between events
//!   recorded around it; steps are launched op by op (not as graphs) behind a
//!   kernel that holds the device until all are queued, so that the times
//!   are the kernels' own and not the host's launches. Matmuls are named by
//!   weight type and shape (n x k).
//! - `REALM_CUDA_PROFILE=step`: only the time to submit a step's work (from
//!   its ops' start) and the time then spent waiting for its output.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::compute::graph::{CompiledGraph, Node};

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
type Totals = BTreeMap<String, (u64, Duration)>;

/// Steps counted, and the totals since the last print.
static TOTALS: Mutex<(u64, Totals)> = Mutex::new((0, BTreeMap::new()));

pub fn kind(g: &CompiledGraph, node: &Node) -> String {
    match node {
        Node::Matmul { weight, .. } => {
            let t = g.tensor(*weight);
            format!("matmul {} {}x{}", t.ggml_type, t.rows(), t.row_len())
        }
        _ => simple_kind(node).to_string(),
    }
}

fn simple_kind(node: &Node) -> &'static str {
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

pub fn record(what: &str, since: Instant) {
    record_duration(what, since.elapsed());
}

pub fn record_duration(what: &str, took: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = totals.1.entry(what.to_string()).or_default();
    entry.0 += 1;
    entry.1 += took;
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
            eprintln!("  {what:28} {n:7} calls {:9.1} µs/step", t.as_secs_f64() * 1e6 / 200.0);
        }
        *totals = (0, BTreeMap::new());
    }
}
