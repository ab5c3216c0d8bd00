//! What every tenant's `Store` holds: WASI state, the resource table, the
//! tenant's view of compute, and its memory limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::compute::{Budget, ModelCatalog, Scheduler, Seat, WeightsRegistry};

/// Compute shared by every tenant of the process: one backend behind one step
/// scheduler, one registry of mapped model files.
pub struct SharedCompute {
    pub scheduler: Arc<Scheduler>,
    pub registry: WeightsRegistry,
}

/// A tenant's view of compute: which models it may open and what it may hold.
#[derive(Clone)]
pub struct TenantCompute {
    pub tenant: String,
    pub shared: Arc<SharedCompute>,
    pub catalog: ModelCatalog,
    /// Model names the tenant may open; None allows every model of the catalog.
    pub allowed_models: Option<Vec<String>>,
    /// KV cache positions the tenant's sequences may hold at once.
    pub kv_tokens: Arc<Budget>,
    /// The tenant's share of a full batch, relative to other tenants'.
    pub batch_weight: u32,
}

/// Bytes of a guest's stderr kept for the log (its panic message, mostly).
const GUEST_STDERR_CAPACITY: usize = 4096;

pub struct StoreState {
    pub wasi: WasiCtx,
    /// The guest's stderr: kept in memory, logged when the instance traps, never
    /// written to the host's own stderr.
    pub stderr: MemoryOutputPipe,
    pub table: ResourceTable,
    pub compute: TenantCompute,
    /// The instance's place in the step scheduler.
    pub seat: Arc<Seat>,
    pub limits: GuestLimits,
    /// When the guest call under way must end (see `Runtime::instantiate`).
    pub deadline: Option<Instant>,
}

impl StoreState {
    /// `guest_memory` caps the instance's linear memory, in bytes.
    pub fn new(compute: TenantCompute, seat: Arc<Seat>, guest_memory: usize) -> Self {
        let stderr = MemoryOutputPipe::new(GUEST_STDERR_CAPACITY);
        Self {
            // No preopens, no environment, no network: the guest sees only clocks,
            // random and a bounded stderr.
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            stderr,
            table: ResourceTable::new(),
            compute,
            seat,
            limits: GuestLimits {
                memory: guest_memory,
                refused: None,
            },
            deadline: None,
        }
    }

    /// Gives the next guest call `allowed` to run.
    pub fn arm_deadline(&mut self, allowed: Duration) {
        self.deadline = Some(Instant::now() + allowed);
    }
}

/// The instance's memory limit, remembering a refused growth so that the
/// trap which usually follows can be explained.
pub struct GuestLimits {
    pub memory: usize,
    /// The size a linear memory asked to grow to and was refused.
    pub refused: Option<usize>,
}

/// Core instances a realm component may create (it has a handful).
const MAX_CORE_INSTANCES: usize = 16;

impl ResourceLimiter for GuestLimits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
