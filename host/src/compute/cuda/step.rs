//! A batched step: its inputs put on the device, then its ops launched one by
//! one, or, for a decode step (one token per sequence), replayed from a CUDA
//! graph captured the first time a decode batch of that size ran. A launch
//! costs the host microseconds, and a step has hundreds of ops: a replay is
//! one launch for all of them. Decode batches are padded to a few sizes
//! (1, 2, 4, 8, then multiples of 8) with rows of their own one-position
//! caches, so that tenants coming and going do not make a capture (tens of
//! ms) of every size in between; the rows are independent, so the padding
//! changes no real row's bits.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, CudaStream, result};

use super::driver;
use super::exec::{Buffers, Exec, Inputs, Value};
use super::kernels::{Kernels, KvRows};
use super::resident::{BufferPool, DeviceWeights, Retired, kv_stores, ptr};
use crate::compute::graph::{CompiledGraph, Node, TensorId};
use crate::compute::weights::ModelFile;
use crate::compute::{Budget, ComputeError, KvCache, OutputKind, Rows, Sequence, StepOutput};

/// `REALM_CUDA_GRAPHS=0` launches every op of every step (for comparison).
static GRAPHS: LazyLock<bool> = LazyLock::new(|| std::env::var("REALM_CUDA_GRAPHS").as_deref() != Ok("0"));

/// Captured plans kept at most; past it they are all dropped and captured again.
const MOST_PLANS: usize = 256;

pub struct Device<'a> {
    pub stream: &'a Arc<CudaStream>,
    pub kernels: &'a Kernels,
    pub weights: &'a mut DeviceWeights,
    pub pool: &'a mut BufferPool,
    pub plans: &'a mut Plans,
    pub retired: &'a Arc<Retired>,
}

/// Decode steps captured as CUDA graphs, by program, model file and batch
/// size; and the padding rows' caches.
#[derive(Default)]
pub struct Plans {
    plans: HashMap<(u64, usize, usize), Plan>,
    pads: Vec<KvCache>,
    /// Captures that failed (their steps ran op by op).
    pub failed: usize,
}

/// The batch size a decode batch of `n` runs as.
fn padded(n: usize) -> usize {
    if n <= 8 {
        n.next_power_of_two()
    } else {
        n.next_multiple_of(8)
    }
}

/// A captured decode step: its graph and everything the graph reads and writes.
struct Plan {
    model: Weak<ModelFile>,
    graph: Captured,
    inputs: DeviceInputs,
    _buffers: Vec<CudaSlice<f32>>,
    output: (u64, usize, usize),
}

/// A graph is launched and dropped only under the backend's lock, with its
/// context bound to the thread.
struct Captured(CudaGraph);
// SAFETY: see above; CUDA graph executables may be used from any thread.
unsafe impl Send for Captured {}

pub fn run(d: Device<'_>, g: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError> {
    let rows = Rows::of(batch);
    let kinds: Vec<(OutputKind, Option<&[u32]>)> = batch.iter().map(|s| (s.output, s.allowed)).collect();
    let host = HostInputs::of(d.stream, d.retired, g, batch, &rows)?;
    // Ops profiling synchronizes after each op, which a capture cannot hold.
    let capture = *GRAPHS && *super::profile::MODE != super::profile::Mode::Ops;
    let decode = capture && batch.iter().all(|s| s.tokens.len() == 1);
    if decode && padded(batch.len()) > batch.len() {
        return run_padded(d, g, batch);
    }
    if !decode {
        let inputs = DeviceInputs::upload(d.stream, &host)?;
        let mut exec = Exec::new(d.stream, d.kernels, d.weights, Buffers::Pool(d.pool));
        let out = exec.nodes(g, &inputs.view(g), &rows)?;
        return exec.finish(out, &kinds);
    }
    let key = (g.fingerprint, Arc::as_ptr(&g.model) as usize, batch.len());
    if let Some(plan) = d.plans.plans.get_mut(&key)
        && plan.model.upgrade().is_some_and(|m| Arc::ptr_eq(&m, &g.model))
    {
        plan.inputs.write(d.stream, &host)?;
        plan.graph.0.launch().map_err(driver)?;
        let (at, rows, cols) = plan.output;
        let mut exec = Exec::new(d.stream, d.kernels, d.weights, Buffers::Pool(d.pool));
        return exec.finish(Value::borrowed(at, rows, cols), &kinds);
    }
    // First a run that records its buffers, then the same ops captured over them.
    let inputs = DeviceInputs::upload(d.stream, &host)?;
    let mut kept = Vec::new();
    let mut exec = Exec::new(d.stream, d.kernels, d.weights, Buffers::Record(&mut kept));
    let out = exec.nodes(g, &inputs.view(g), &rows)?;
    let result = exec.finish(out, &kinds)?;
    d.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .map_err(driver)?;
    let mut exec = Exec::new(d.stream, d.kernels, d.weights, Buffers::Replay(&kept, 0));
    let captured = exec.nodes(g, &inputs.view(g), &rows);
    let graph = d
        .stream
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
    match (captured, graph) {
        (Ok(out), Ok(Some(graph))) => {
            if d.plans.plans.len() >= MOST_PLANS {
                d.plans.plans.clear();
            }
            let plan = Plan {
                model: Arc::downgrade(&g.model),
                graph: Captured(graph),
                inputs,
                _buffers: kept,
                output: (out.at, out.rows, out.cols),
            };
            d.plans.plans.insert(key, plan);
        }
        (captured, graph) => {
            d.plans.failed += 1;
            let why = captured
                .err()
                .map(|e| e.to_string())
                .or(graph.err().map(|e| e.to_string()));
            tracing::warn!(
                ?why,
                "a decode step could not be captured as a CUDA graph; it runs op by op"
            );
        }
    }
    Ok(result)
}

/// A decode batch run as `padded(len)` rows, the padding rows each a
/// one-token step at position 0 of a cache of its own; their outputs dropped.
fn run_padded(d: Device<'_>, g: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError> {
    let (layers, width) = (batch[0].cache.layers(), batch[0].cache.width());
    let extra = padded(batch.len()) - batch.len();
    let mut pads = std::mem::take(&mut d.plans.pads);
    pads.retain(|c| c.layers() == layers && c.width() == width);
    while pads.len() < extra {
        let bytes = KvCache::bytes_for(layers, width as u32, 1);
        let charge = Budget::unlimited("padding rows").charge(bytes)?;
        pads.push(KvCache::device("cuda", layers, width as u32, 1, charge));
    }
    const PAD_TOKEN: [u32; 1] = [0];
    let mut all: Vec<Sequence<'_>> = batch
        .iter_mut()
        .map(|s| Sequence {
            cache: &mut *s.cache,
            tokens: s.tokens,
            start: s.start,
            output: s.output,
            allowed: s.allowed,
        })
        .chain(pads.iter_mut().take(extra).map(|cache| Sequence {
            cache,
            tokens: &PAD_TOKEN,
            start: 0,
            output: OutputKind::TopK(1),
            allowed: None,
        }))
        .collect();
    let plans = &mut *d.plans;
    let device = Device {
        stream: d.stream,
        kernels: d.kernels,
        weights: d.weights,
        pool: d.pool,
        plans,
        retired: d.retired,
    };
    let outputs = run(device, g, &mut all);
    drop(all);
    plans.pads = pads;
    let mut outputs = outputs?;
    outputs.truncate(batch.len());
    Ok(outputs)
}

/// What a step reads, on the host: the per-row tables and each embedding
/// table's rows for the step's tokens.
struct HostInputs {
    /// Each row's key store, then each row's value store.
    pointers: Vec<u64>,
    /// Each row's position, each sequence's last position, each sequence's last row.
    numbers: Vec<i32>,
    rows: usize,
    sequences: usize,
    embedded: Vec<(TensorId, Vec<f32>)>,
}

impl HostInputs {
    /// Grows each sequence's device KV cache to hold the step, and reads the
    /// step's embedding rows from the mapped file.
    fn of(
        s: &Arc<CudaStream>,
        retired: &Arc<Retired>,
        g: &CompiledGraph,
        batch: &mut [Sequence<'_>],
        rows: &Rows,
    ) -> Result<Self, ComputeError> {
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for seq in batch.iter_mut() {
            let (k, v) = if g.kv_layers > 0 {
                kv_stores(s, retired, seq.cache, seq.start as usize + seq.tokens.len())?
            } else {
                (0, 0)
            };
            keys.extend(std::iter::repeat_n(k, seq.tokens.len()));
            values.extend(std::iter::repeat_n(v, seq.tokens.len()));
        }
        let mut numbers: Vec<i32> = rows.positions.iter().map(|&p| p as i32).collect();
        numbers.extend(rows.positions_of(true).iter().map(|&p| p as i32));
        numbers.extend(rows.spans.iter().map(|&(first, n)| (first + n - 1) as i32));
        let tokens: Vec<u32> = batch.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        let mut embedded: Vec<(TensorId, Vec<f32>)> = Vec::new();
        for node in &g.nodes {
            if let Node::Embed { table } = node
                && !embedded.iter().any(|(t, _)| t == table)
            {
                embedded.push((*table, g.token_rows(*table, &tokens)));
            }
        }
        Ok(Self {
            pointers: [keys, values].concat(),
            numbers,
            rows: rows.positions.len(),
            sequences: batch.len(),
            embedded,
        })
    }
}

/// `HostInputs` on the device.
struct DeviceInputs {
    pointers: CudaSlice<u64>,
    numbers: CudaSlice<i32>,
    embedded: Vec<(TensorId, CudaSlice<f32>)>,
    rows: u64,
    sequences: u64,
}

impl DeviceInputs {
    fn upload(s: &Arc<CudaStream>, host: &HostInputs) -> Result<Self, ComputeError> {
        let embedded = host
            .embedded
            .iter()
            .map(|(t, rows)| Ok((*t, s.clone_htod(rows).map_err(driver)?)))
            .collect::<Result<_, ComputeError>>()?;
        Ok(Self {
            pointers: s.clone_htod(&host.pointers).map_err(driver)?,
            numbers: s.clone_htod(&host.numbers).map_err(driver)?,
            embedded,
            rows: host.rows as u64,
            sequences: host.sequences as u64,
        })
    }

    /// A replay's inputs into the buffers its graph reads (of the same shape).
    fn write(&mut self, s: &Arc<CudaStream>, host: &HostInputs) -> Result<(), ComputeError> {
        let stream = s.cu_stream();
        // SAFETY: each buffer was made from inputs of this shape, so it holds
        // exactly as many elements; the copies are ordered before the replay.
        unsafe {
            result::memcpy_htod_async(ptr(&self.pointers, s), &host.pointers, stream).map_err(driver)?;
            result::memcpy_htod_async(ptr(&self.numbers, s), &host.numbers, stream).map_err(driver)?;
            for ((_, device), (_, rows)) in self.embedded.iter().zip(&host.embedded) {
                result::memcpy_htod_async(ptr(device, s), rows, stream).map_err(driver)?;
            }
        }
        Ok(())
    }

    fn view(&self, g: &CompiledGraph) -> Inputs {
        let s = self.pointers.stream();
        let (p, q) = (ptr(&self.pointers, s), ptr(&self.numbers, s));
        Inputs {
            kv: KvRows {
                keys: p,
                values: p + 8 * self.rows,
                positions: q,
                layers: g.kv_layers as i32,
            },
            last_positions: q + 4 * self.rows,
            last_rows: q + 4 * (self.rows + self.sequences),
            embedded: self.embedded.iter().map(|(t, b)| (*t, ptr(b, s))).collect(),
        }
    }
}
