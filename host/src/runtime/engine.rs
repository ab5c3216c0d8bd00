//! The process-wide wasmtime engine and the pre-instantiated realm component.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline};

use super::state::StoreState;
use super::wit::{RealmWorld, RealmWorldPre};

/// How often the epoch advances; deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Instances the pooling allocator keeps slots for.
const POOLED_INSTANCES: u32 = 256;
/// The most linear memory an instance's pool slot can hold (tenants set lower limits).
const MAX_GUEST_MEMORY: usize = 4 << 30;

pub struct Runtime {
    engine: Engine,
    pre: RealmWorldPre<StoreState>,
}

impl Runtime {
    /// Compiles (or loads from wasmtime's cache) the component at `path`, links
    /// WASI and the compute import, and starts the epoch ticker.
    pub fn load(path: &Path) -> anyhow::Result<Arc<Self>> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOLED_INSTANCES)
            .total_stacks(POOLED_INSTANCES)
            .total_core_instances(POOLED_INSTANCES * 4)
            .total_memories(POOLED_INSTANCES * 2)
            .total_tables(POOLED_INSTANCES * 4)
            .max_memory_size(MAX_GUEST_MEMORY);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Cache::from_file(None) {
            Ok(cache) => {
                config.cache(Some(cache));
            }
            Err(e) => tracing::warn!(error = %e, "compiling without wasmtime's code cache"),
        }
        let engine = Engine::new(&config)?;
        spawn_epoch_ticker(&engine);
        Self::with_engine(engine, path)
    }

    /// Another component on the same engine (its pool, its epoch and its code
    /// cache): a tenant that brings its own engine build.
    pub fn sibling(&self, path: &Path) -> anyhow::Result<Arc<Self>> {
        Self::with_engine(self.engine.clone(), path)
    }

    fn with_engine(engine: Engine, path: &Path) -> anyhow::Result<Arc<Self>> {
        let started = std::time::Instant::now();
        let component = Component::from_file(&engine, path)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("failed to load component `{}`", path.display()))?;
        tracing::info!(path = %path.display(), elapsed = ?started.elapsed(), "component ready");

        let mut linker = Linker::<StoreState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        RealmWorld::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |state| state)?;
        let pre = RealmWorldPre::new(linker.instantiate_pre(&component)?)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("`{}` is not a realm engine component", path.display()))?;
        Ok(Arc::new(Self { engine, pre }))
    }

    /// A fresh instance in its own store. Its guest yields to the executor at
    /// every epoch tick, and traps with `Trap::Interrupt` once the store's
    /// call deadline (`StoreState::arm_deadline`) has passed.
    pub async fn instantiate(&self, state: StoreState) -> anyhow::Result<(Store<StoreState>, RealmWorld)> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|store| {
            Ok(match store.data().deadline {
                Some(deadline) if Instant::now() >= deadline => UpdateDeadline::Interrupt,
                _ => UpdateDeadline::Yield(1),
            })
        });
        let bindings = self.pre.instantiate_async(&mut store).await?;
        Ok((store, bindings))
    }
}

/// Advances the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("realm-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .map(drop)
        .unwrap_or_else(|e| tracing::error!(error = %e, "no epoch ticker: deadlines are not enforced"));
}
