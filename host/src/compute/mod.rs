//! The GPU compute import's host side: shared model files, per-sequence KV
//! caches, step graphs validated once, and the backends that execute them.

pub mod budget;
pub mod cpu;
pub mod cuda;
pub mod gguf;
pub mod graph;
pub mod kv;
pub mod ops;
pub mod output;
pub mod quant;
pub mod scheduler;
pub mod weights;

use std::sync::Arc;

pub use budget::{Budget, Charge};
pub use graph::CompiledGraph;
pub use kv::KvCache;
pub use output::{OutputKind, SampleParams, StepOutput, shape_output, top_k};
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

/// One sequence's part of a forward step: `tokens` at positions `start..`,
/// appending to `cache`, and what it returns for its last position.
pub struct Sequence<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    pub start: u32,
    pub output: OutputKind,
    /// The tokens the output may choose (a bitset), if the guest confined it.
    pub allowed: Option<&'a [u32]>,
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
    /// Whether this backend can run `graph`: its weight types and shapes.
    /// Asked once, when the graph is compiled (`compile`), so that a graph a
    /// backend cannot run is refused there with `Unsupported`, not at a step.
    fn supports(&self, graph: &CompiledGraph) -> Result<(), ComputeError>;
    /// A KV cache in this backend's storage, holding `charge` until dropped.
    fn new_kv(&self, layers: u32, width: u32, capacity: u32, charge: Charge) -> Result<KvCache, ComputeError>;
    /// Host bytes that the KV caches this backend made hold now.
    fn kv_host_bytes(&self) -> u64;
    /// Runs `graph` once over every sequence of `batch` (each passed `check`):
    /// row-wise ops (matmuls, norms, activations) over all their rows at once;
    /// RoPE positions, the KV append and attention per sequence. Returns each
    /// sequence's output row as it asked (`Sequence::output`), in batch order.
    fn run_batch(&self, graph: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError>;
}

/// Compiles `ops` against `model` for `backend`: the graph is checked, then
/// the backend says whether it can run it.
pub fn compile(
    backend: &dyn Backend,
    model: Arc<weights::ModelFile>,
    ops: &[ops::Op],
) -> Result<CompiledGraph, ComputeError> {
    let graph = CompiledGraph::compile(model, ops)?;
    backend.supports(&graph)?;
    Ok(graph)
}

/// Rejects tokens outside the vocabulary, positions beyond the cache, a
/// cache of another shape than the graph's and one another backend made.
pub fn check(
    backend: &dyn Backend,
    graph: &CompiledGraph,
    cache: &KvCache,
    tokens: &[u32],
    start: u32,
) -> Result<(), ComputeError> {
    if cache.backend() != backend.name() {
        return Err(ComputeError::InvalidStep(format!(
            "the KV cache was made for the {} backend, the step runs on {}",
            cache.backend(),
            backend.name()
        )));
    }
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
