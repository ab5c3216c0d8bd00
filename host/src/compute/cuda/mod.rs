//! The CUDA backend. This build has no CUDA kernels yet: asking for it fails
//! with a clear error, and `--device auto` falls back to the CPU.

use super::{Backend, CompiledGraph, ComputeError, Sequence};

pub struct CudaBackend {
    _private: (),
}

impl CudaBackend {
    pub fn new() -> anyhow::Result<Self> {
        anyhow::bail!("the CUDA backend is not available in this build of realm-host (use --device cpu)")
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn run_batch(&self, _graph: &CompiledGraph, _batch: &mut [Sequence<'_>]) -> Result<Vec<Vec<f32>>, ComputeError> {
        Err(ComputeError::Unsupported("the CUDA backend is not available".into()))
    }
}
