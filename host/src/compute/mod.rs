//! The GPU compute import's host side: shared model files, per-sequence KV
//! caches, step graphs validated once, and the backends that execute them.

pub mod budget;
pub mod cpu;
pub mod cuda;
pub mod gguf;
pub mod graph;
pub mod kv;
pub mod scheduler;
pub mod weights;

use std::sync::Arc;

pub use budget::Budget;
pub use graph::CompiledGraph;
pub use kv::KvCache;
pub use scheduler::{BatchPolicy, BatchTotals, Scheduler, Seat, StepRequest};
pub use weights::{ModelCatalog, ModelFile, WeightsRegistry};

/// Why a compute call failed; each case maps to the WIT `compute-error` case of
/// the same name.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ComputeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    InvalidFile(String),
    #[error("{0}")]
    InvalidGraph(String),
    #[error("{0}")]
    InvalidStep(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

/// What a step returns for its last position.
#[derive(Clone, Copy, Debug)]
pub enum OutputKind {
    Logits,
    TopK(usize),
}

#[derive(Clone, Debug)]
pub enum StepOutput {
    Logits(Vec<f32>),
    /// (token id, logit), logit descending, id ascending among equals.
    TopK(Vec<(u32, f32)>),
}

/// One sequence's part of a forward step: `tokens` at positions `start..`,
/// appending to `cache`, and what it returns for its last position.
pub struct Sequence<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub start: u32,
    pub output: OutputKind,
}

/// Where each sequence's rows lie in a batch's per-token values, and each
/// row's position.
pub struct Rows {
    /// Per sequence, its first row and its row count.
    pub spans: Vec<(usize, usize)>,
    /// Per row, its position in its sequence.
    pub positions: Vec<u32>,
}

impl Rows {
    pub fn of(batch: &[Sequence<'_>]) -> Self {
        let mut spans = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        for seq in batch {
            spans.push((positions.len(), seq.tokens.len()));
            positions.extend((0..seq.tokens.len() as u32).map(|i| seq.start + i));
        }
        Self { spans, positions }
    }

    /// Each sequence's rows of a value: its tokens' rows, or its one row of a
    /// single-row value.
    pub fn spans_of(&self, single_row: bool) -> Vec<(usize, usize)> {
        if single_row {
            (0..self.spans.len()).map(|s| (s, 1)).collect()
        } else {
            self.spans.clone()
        }
    }

    /// The position of each row of a value: one per token, or each sequence's
    /// last position for a single-row value.
    pub fn positions_of(&self, single_row: bool) -> Vec<u32> {
        if single_row {
            self.spans
                .iter()
                .map(|&(first, n)| self.positions[first + n - 1])
                .collect()
        } else {
            self.positions.clone()
        }
    }
}

/// A compute backend: executes a step graph for a batch of sequences.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs `graph` once over every sequence of `batch` (each passed `check`):
    /// row-wise ops (matmuls, norms, activations) over all their rows at once;
    /// RoPE positions, the KV append and attention per sequence. Returns each
    /// sequence's output row as it asked (`Sequence::output`), in batch order.
    fn run_batch(&self, graph: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError>;
}

/// Rejects tokens outside the vocabulary, positions beyond the cache and a
/// cache of another shape than the graph's.
pub fn check(graph: &CompiledGraph, cache: &KvCache, tokens: &[u32], start: u32) -> Result<(), ComputeError> {
    if tokens.is_empty() {
        return Err(ComputeError::InvalidStep("a step needs at least one token".into()));
    }
    if let Some(bad) = tokens.iter().find(|&&t| t as usize >= graph.vocab) {
        return Err(ComputeError::InvalidStep(format!(
            "token {bad} is outside the vocabulary of {}",
            graph.vocab
        )));
    }
    let end = start as u64 + tokens.len() as u64;
    if end > cache.capacity() as u64 {
        return Err(ComputeError::InvalidStep(format!(
            "positions {start}..{end} exceed the KV cache of {}",
            cache.capacity()
        )));
    }
    if cache.layers() as usize != graph.kv_layers || cache.width() != graph.kv_width {
        return Err(ComputeError::InvalidStep(format!(
            "the KV cache is {}x{}, the graph needs {}x{}",
            cache.layers(),
            cache.width(),
            graph.kv_layers,
            graph.kv_width
        )));
    }
    Ok(())
}

/// Which backend `--device` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CUDA when a GPU is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Starts the backend for `device`, with `threads` CPU threads (0 = all cores).
pub fn start_backend(device: Device, threads: usize) -> anyhow::Result<Arc<dyn Backend>> {
    match device {
        Device::Cpu => Ok(Arc::new(cpu::CpuBackend::new(threads)?)),
        Device::Cuda => Ok(Arc::new(cuda::CudaBackend::new()?)),
        Device::Auto => match cuda::CudaBackend::new() {
            Ok(cuda) => Ok(Arc::new(cuda)),
            Err(reason) => {
                tracing::info!(%reason, "using the CPU backend");
                Ok(Arc::new(cpu::CpuBackend::new(threads)?))
            }
        },
    }
}

#[cfg(test)]
impl StepOutput {
    /// The logits of a step that asked for them.
    pub fn logits(self) -> Vec<f32> {
        match self {
            StepOutput::Logits(l) => l,
            StepOutput::TopK(_) => panic!("the step returned top-k, not logits"),
        }
    }
}

/// Shapes a step's output row as the guest asked.
pub fn shape_output(logits: &[f32], kind: OutputKind) -> StepOutput {
    match kind {
        OutputKind::Logits => StepOutput::Logits(logits.to_vec()),
        OutputKind::TopK(k) => StepOutput::TopK(top_k(logits, k)),
    }
}

/// The `k` largest logits, descending; the lower id first among equals.
/// The k up to which `top_k` scans once instead of selecting.
const SCANNED_K: usize = 256;

pub fn top_k(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    if k <= SCANNED_K {
        // One pass keeping the best k in order: past the first k values,
        // almost every value loses its one comparison with the k-th.
        // Chunks of 16 where no value beats the k-th go by in one vector
        // comparison of `total_cmp`'s integer keys; a later id never wins a tie.
        let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (c, chunk) in logits.chunks(16).enumerate() {
            if best.len() == k && chunk.len() == 16 {
                let kth = total_order_key(best[k - 1].1);
                if !chunk.iter().fold(false, |any, &l| any | (total_order_key(l) > kth)) {
                    continue;
                }
            }
            for (i, &l) in chunk.iter().enumerate() {
                let candidate = ((c * 16 + i) as u32, l);
                if best.len() == k && order(&candidate, &best[k - 1]).is_ge() {
                    continue;
                }
                let at = best.partition_point(|b| order(b, &candidate).is_lt());
                best.insert(at, candidate);
                best.truncate(k);
            }
        }
        return best;
    }
    let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_unstable_by(order);
    all
}

/// `f32::total_cmp`'s order as a signed integer: negative values' magnitude
/// bits flipped, so that integer comparison is the total order.
#[inline(always)]
fn total_order_key(x: f32) -> i32 {
    let bits = x.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

#[cfg(test)]
mod tests {
    #[test]
    fn top_k_orders_by_logit_then_id() {
        let logits = [0.5, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(super::top_k(&logits, 3), vec![(1, 3.0), (3, 3.0), (4, 2.0)]);
        assert_eq!(super::top_k(&logits, 1), vec![(1, 3.0)]);
        assert_eq!(super::top_k(&logits, 9).len(), 5);
    }

    #[test]
    fn the_scan_and_the_selection_agree() {
        // Few distinct values: ties everywhere, broken by the lower id.
        let logits: Vec<f32> = (0..5000u32).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
        for k in [1, 2, 40, 256, 257, 1000] {
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            assert_eq!(super::top_k(&logits, k), all, "k {k}");
        }
    }

    #[test]
    fn the_chunk_filter_keeps_total_cmp_order() {
        let mut s = 0x9e37_79b9_u32;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        let specials = [
            0.0,
            -0.0,
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MIN_POSITIVE,
        ];
        let logits: Vec<f32> = (0..4099)
            .map(|i| match i % 97 {
                0..7 => specials[i % 97],
                _ => f32::from_bits(next()),
            })
            .collect();
        for _ in 0..1000 {
            let (a, b) = (f32::from_bits(next()), f32::from_bits(next()));
            assert_eq!(
                super::total_order_key(a).cmp(&super::total_order_key(b)),
                a.total_cmp(&b)
            );
        }
        for k in [1, 3, 40, 256] {
            let mut all: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            all.truncate(k);
            let got = super::top_k(&logits, k);
            let bits = |v: &[(u32, f32)]| v.iter().map(|&(i, l)| (i, l.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&all), "k {k}");
        }
    }
}
