//! What every tenant's `Store` holds: WASI state, the resource table, the
//! tenant's view of compute, and its memory limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::compute::{Budget, ModelCatalog, Scheduler, Seat, WeightsRegistry};

/// What every tenant of a server shares: one backend behind one step
/// scheduler, one registry of mapped model files, the executor that runs
/// every instance's worker, and the server's instance counters.
pub struct ServerContext {
    pub scheduler: Arc<Scheduler>,
    pub registry: WeightsRegistry,
    pub instances: InstanceCounters,
    /// Guest calls run here, and a guest awaiting its step leaves its thread
    /// to the others. Always Some until dropped.
    executor: Option<tokio::runtime::Runtime>,
}

impl ServerContext {
    /// A server over `scheduler`, with an executor of a thread per core.
    pub fn new(scheduler: Arc<Scheduler>) -> anyhow::Result<Arc<Self>> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(2);
        let executor = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("realm-engine")
            .enable_all()
            .build()?;
        Ok(Arc::new(Self {
            scheduler,
            registry: WeightsRegistry::default(),
            instances: InstanceCounters::default(),
            executor: Some(executor),
        }))
    }

    pub fn executor(&self) -> &tokio::runtime::Handle {
        self.executor
            .as_ref()
            .expect("the executor lives as long as the server")
            .handle()
    }
}

impl Drop for ServerContext {
    /// Without waiting for workers: the last reference may go on one of
    /// the executor's own threads, or in another async context.
    fn drop(&mut self) {
        if let Some(executor) = self.executor.take() {
            executor.shutdown_background();
        }
    }
}

/// Engine instances of a server: alive now, and replaced after a trap or a
/// deadline since it started.
#[derive(Default)]
pub struct InstanceCounters {
    live: AtomicUsize,
    replaced: AtomicU64,
}

impl InstanceCounters {
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    pub(super) fn started(&self) {
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn ended(&self) {
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    pub(super) fn replacing(&self) {
        self.replaced.fetch_add(1, Ordering::Relaxed);
    }
}

/// A tenant's view of compute: which models it may open and what it may hold.
#[derive(Clone)]
pub struct TenantCompute {
    pub tenant: String,
    pub shared: Arc<ServerContext>,
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
