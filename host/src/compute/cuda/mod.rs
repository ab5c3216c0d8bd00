//! The CUDA backend: the same step graphs on an NVIDIA GPU. Each model file's
//! weights are copied to the device once and shared by every tenant; each
//! sequence's KV cache lives on the device, owned by its `KvCache`.
//!
//! The driver and NVRTC are loaded at run time and the kernels (kernels.cu)
//! are compiled when the backend starts, so realm builds without a CUDA
//! toolkit, and `--device auto` falls back to the CPU where there is no GPU.

mod exec;
mod kernels;
mod profile;
mod resident;
mod step;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use cudarc::driver::{CudaContext, CudaStream, DriverError};

use super::graph::{CompiledGraph, Node};
use super::{Backend, Charge, ComputeError, KvCache, Sequence, StepOutput};
use kernels::Kernels;
use resident::{BufferPool, DeviceWeights, Retired};
use step::Plans;

pub struct CudaBackend {
    stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Held for a whole step: one step at a time on the device; the weights
    /// it uploads and the buffers it frees stay for the next.
    state: Mutex<(DeviceWeights, BufferPool, Plans)>,
    /// KV stores of caches dropped since the last step, freed by the next.
    retired: Arc<Retired>,
    device: String,
}

impl CudaBackend {
    pub fn new() -> anyhow::Result<Self> {
        // SAFETY: each only tries to load the library.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver library (libcuda.so) on this machine");
        }
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            bail!(
                "no NVRTC library (libnvrtc.so.13) on the library path; the CUDA backend compiles its kernels with it"
            );
        }
        let ctx = CudaContext::new(0).context("no CUDA device")?;
        // SAFETY: every allocation, copy and launch of this backend goes to
        // its one stream, so nothing needs events to order it.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability()?;
        let device = format!("{} (sm_{major}{minor})", ctx.name()?);
        // Its own stream: the legacy default stream cannot be captured as a graph.
        let stream = ctx.new_stream()?;
        let kernels = Kernels::compile(&ctx, major, minor)?;
        tracing::info!(%device, "CUDA backend ready");
        Ok(Self {
            stream,
            kernels,
            state: Mutex::new(Default::default()),
            retired: Arc::default(),
            device,
        })
    }

    /// Decode steps that could not be captured as graphs so far.
    #[cfg(test)]
    fn failed_captures(&self) -> usize {
        self.state.lock().map_or(usize::MAX, |s| s.2.failed)
    }

    /// The GPU's name and compute capability.
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }

    /// Matmuls of the float types or of a type with an int8 kernel, over rows
    /// of a multiple of 32 values; attention heads of a multiple of 32 values
    /// up to 256 (the kernels' warp layout). Embeddings and vectors are
    /// dequantized on the host.
    fn supports(&self, graph: &CompiledGraph) -> Result<(), ComputeError> {
        for node in &graph.nodes {
            match node {
                Node::Matmul { weight, .. } => {
                    let t = graph.tensor(*weight);
                    if !self.kernels.multiplies(t.ggml_type) {
                        return Err(ComputeError::Unsupported(format!(
                            "the CUDA backend has no matmul for `{}` of type {}",
                            t.name, t.ggml_type
                        )));
                    }
                    if !t.row_len().is_multiple_of(32) {
                        return Err(ComputeError::Unsupported(format!(
                            "the CUDA matmul takes rows of a multiple of 32 values; `{}` has {}",
                            t.name,
                            t.row_len()
                        )));
                    }
                }
                Node::Attention(a) if a.head_dim % 32 != 0 || a.head_dim > 256 => {
                    return Err(ComputeError::Unsupported(format!(
                        "the CUDA attention kernel takes head dims that are multiples of 32 up to 256, not {}",
                        a.head_dim
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn new_kv(&self, layers: u32, width: u32, capacity: u32, charge: Charge) -> Result<KvCache, ComputeError> {
        Ok(KvCache::device(self.name(), layers, width, capacity, charge))
    }

    /// Its caches live on the device.
    fn kv_host_bytes(&self) -> u64 {
        0
    }

    fn run_batch(&self, graph: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| ComputeError::Internal("the CUDA backend's lock is poisoned".into()))?;
        let (weights, pool, plans) = &mut *state;
        self.stream.context().bind_to_thread().map_err(driver)?;
        self.retired.free();
        let device = step::Device {
            stream: &self.stream,
            kernels: &self.kernels,
            weights,
            pool,
            plans,
            retired: &self.retired,
        };
        step::run(device, graph, batch)
    }
}

fn driver(e: DriverError) -> ComputeError {
    ComputeError::Internal(format!("CUDA: {e}"))
}
