//! The CPU backend: executes a compiled step graph on a dedicated thread
//! pool, over the memory-mapped weights in their stored type. `exec` walks
//! the graph; `matmul` drives the matrix products over `kernels`, one table
//! per weight type; `attention` and `elementwise` are the other ops.

pub mod attention;
#[cfg(test)]
mod bench;
pub mod elementwise;
pub mod exec;
pub mod kernels;
pub mod matmul;
pub mod vmath;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

pub use matmul::{matmul_rows, matmul_spans};

use super::graph::{CompiledGraph, Node};
use super::{Backend, Charge, ComputeError, KvCache, Sequence, StepOutput, shape_output};
use kernels::TypeKernels;

pub struct CpuBackend {
    pool: rayon::ThreadPool,
    /// Bytes its KV caches hold.
    kv_bytes: Arc<AtomicU64>,
}

impl CpuBackend {
    /// A backend with `threads` threads; 0 means one per core.
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("realm-cpu-{i}"))
            .build()?;
        Ok(Self {
            pool,
            kv_bytes: Arc::default(),
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    /// Every matmul's weight type has a kernel table; every other tensor
    /// is read through its reference dequantization, which the graph
    /// compiler already required.
    fn supports(&self, graph: &CompiledGraph) -> Result<(), ComputeError> {
        for node in &graph.nodes {
            if let Node::Matmul { weight, .. } = node {
                let t = graph.tensor(*weight);
                if TypeKernels::of(t.ggml_type).is_none() {
                    return Err(ComputeError::Unsupported(format!(
                        "the CPU backend has no matmul for `{}` of type {}",
                        t.name, t.ggml_type
                    )));
                }
            }
        }
        Ok(())
    }

    fn new_kv(&self, layers: u32, width: u32, capacity: u32, charge: Charge) -> Result<KvCache, ComputeError> {
        KvCache::host(layers, width, capacity, charge, self.kv_bytes.clone())
    }

    fn kv_host_bytes(&self) -> u64 {
        self.kv_bytes.load(Ordering::Relaxed)
    }

    fn run_batch(&self, graph: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError> {
        let kinds: Vec<_> = batch.iter().map(|s| (s.output, s.allowed)).collect();
        self.pool.install(|| {
            let output = exec::execute(graph, batch)?;
            Ok(output
                .data
                .par_chunks_exact(output.cols)
                .zip(kinds)
                .map(|(row, (kind, allowed))| shape_output(row, kind, allowed))
                .collect())
        })
    }
}
