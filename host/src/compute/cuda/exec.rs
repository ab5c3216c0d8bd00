//! The ops of one batched step on the device: every node is one launch over
//! all the batch's rows; the per-sequence parts (RoPE positions, the KV
//! append, attention) read the per-row tables of the step's `Inputs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, CudaStream, result};

use super::kernels::{AttentionArgs, Binary, Kernels, KvRows, Ptr, RopeArgs};
use super::resident::{BufferPool, DeviceWeights, ptr};
use super::{driver, profile};
use crate::compute::gguf::GgmlType;
use crate::compute::graph::{CompiledGraph, Node, RopeStyle, TensorId};
use crate::compute::{ComputeError, OutputKind, Rows, StepOutput, shape_output};

/// The largest k whose top-k is taken on the device; beyond it (and for
/// logits) the whole rows are copied to the host.
const MAX_K: usize = 256;

/// Where a step's values live.
pub enum Buffers<'p> {
    /// Taken from the pool and given back when read for the last time.
    Pool(&'p mut BufferPool),
    /// Fresh, and kept (in order) for the step's CUDA graph.
    Record(&'p mut Vec<CudaSlice<f32>>),
    /// The recorded ones again, in the same order, while capturing the graph.
    Replay(&'p [CudaSlice<f32>], usize),
}

/// A step's inputs on the device: the per-row tables, and each embedding
/// table's rows for the step's tokens.
pub struct Inputs {
    pub kv: KvRows,
    /// Each sequence's last position and the index of its last row.
    pub last_positions: Ptr,
    pub last_rows: Ptr,
    pub embedded: Vec<(TensorId, Ptr)>,
}

/// A value on the device: `rows` rows of `cols` f32s at `at`, and its buffer
/// when the step owns it (a pooled one).
pub struct Value {
    pub at: Ptr,
    pub rows: usize,
    pub cols: usize,
    own: Option<CudaSlice<f32>>,
}

impl Value {
    /// A value in a buffer the step does not own.
    pub fn borrowed(at: Ptr, rows: usize, cols: usize) -> Self {
        Self {
            at,
            rows,
            cols,
            own: None,
        }
    }
}

pub struct Exec<'a, 'p> {
    pub stream: &'a Arc<CudaStream>,
    pub kernels: &'a Kernels,
    pub weights: &'a mut DeviceWeights,
    pub buffers: Buffers<'p>,
    /// Values rounded for a weight type (by value and type), made once for
    /// the matmuls that share an input and freed with it.
    rounded: HashMap<(usize, GgmlType), Value>,
    started: Instant,
}

impl<'a, 'p> Exec<'a, 'p> {
    pub fn new(
        stream: &'a Arc<CudaStream>,
        kernels: &'a Kernels,
        weights: &'a mut DeviceWeights,
        buffers: Buffers<'p>,
    ) -> Self {
        Self {
            stream,
            kernels,
            weights,
            buffers,
            rounded: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Launches every node of `g`; returns the output value (one row per sequence).
    pub fn nodes(&mut self, g: &CompiledGraph, inputs: &Inputs, rows: &Rows) -> Result<Value, ComputeError> {
        let ops = *profile::MODE == profile::Mode::Ops;
        let mut values: Vec<Option<Value>> = Vec::with_capacity(g.nodes.len());
        for (i, node) in g.nodes.iter().enumerate() {
            let started = Instant::now();
            let value = self.node(g, node, &values, inputs, rows)?;
            if ops {
                let _ = self.stream.synchronize();
                profile::record(profile::kind(node), started);
            }
            values.push(Some(value));
            for input in crate::compute::graph::inputs(node) {
                if g.last_use[input] == i {
                    if let Some(v) = values[input].take() {
                        self.give(v);
                    }
                    let finished: Vec<_> = self.rounded.keys().filter(|k| k.0 == input).copied().collect();
                    for key in finished {
                        if let Some(v) = self.rounded.remove(&key) {
                            self.give(v);
                        }
                    }
                }
            }
        }
        let out = values
            .pop()
            .flatten()
            .ok_or_else(|| ComputeError::Internal("graph produced no output".into()))?;
        for v in values.into_iter().flatten() {
            self.give(v);
        }
        let rounded: Vec<Value> = self.rounded.drain().map(|(_, v)| v).collect();
        for v in rounded {
            self.give(v);
        }
        Ok(out)
    }

    /// Each sequence's output as it asked: the top-k on the device and only
    /// those k values copied when every sequence asks for at most MAX_K,
    /// else all logits. The value's buffer goes back to the pool.
    pub fn finish(&mut self, out: Value, kinds: &[OutputKind]) -> Result<Vec<StepOutput>, ComputeError> {
        let mode = *profile::MODE;
        if mode != profile::Mode::Off {
            profile::record("submit", self.started);
        }
        let started = Instant::now();
        let ks: Option<Vec<i32>> = kinds
            .iter()
            .map(|kind| match kind {
                OutputKind::TopK(k) if *k <= MAX_K => Some((*k).min(out.cols) as i32),
                _ => None,
            })
            .collect();
        let outputs = match ks {
            Some(ks) => self.top_k(&out, &ks)?,
            None => {
                let host = self.copy_out(out.at, out.rows * out.cols)?;
                host.chunks_exact(out.cols)
                    .zip(kinds)
                    .map(|(row, &kind)| shape_output(row.to_vec(), kind))
                    .collect()
            }
        };
        if mode != profile::Mode::Off {
            profile::record("wait+output", started);
            profile::step_done();
        }
        self.give(out);
        Ok(outputs)
    }

    fn top_k(&mut self, out: &Value, ks: &[i32]) -> Result<Vec<StepOutput>, ComputeError> {
        let s = self.stream;
        let max_k = ks.iter().copied().max().unwrap_or(0).max(1) as usize;
        let k = s.clone_htod(ks).map_err(driver)?;
        let values = self.alloc(out.rows, max_k)?;
        // SAFETY: top_k writes the first k[row] of each row's max_k slots, all that is read.
        let ids = unsafe { s.alloc::<i32>(out.rows * max_k) }.map_err(driver)?;
        let ids_at = ptr(&ids, s);
        self.kernels
            .top_k(s, out.at, (out.rows, out.cols), ptr(&k, s), max_k, values.at, ids_at)?;
        let host_values = self.copy_out(values.at, out.rows * max_k)?;
        let mut host_ids = vec![0i32; out.rows * max_k];
        // SAFETY: ids holds rows * max_k i32s, written by the launch above.
        unsafe { result::memcpy_dtoh_async(&mut host_ids, ids_at, s.cu_stream()) }.map_err(driver)?;
        s.synchronize().map_err(driver)?;
        self.give(values);
        Ok(ks
            .iter()
            .enumerate()
            .map(|(row, &k)| {
                let at = row * max_k;
                StepOutput::TopK(
                    (at..at + k as usize)
                        .map(|i| (host_ids[i] as u32, host_values[i]))
                        .collect(),
                )
            })
            .collect())
    }

    /// `len` f32s at `at`, on the host once the stream has written them.
    fn copy_out(&self, at: Ptr, len: usize) -> Result<Vec<f32>, ComputeError> {
        let mut host = vec![0.0f32; len];
        // SAFETY: `at` holds len f32s, written by work on this stream.
        unsafe { result::memcpy_dtoh_async(&mut host, at, self.stream.cu_stream()) }.map_err(driver)?;
        self.stream.synchronize().map_err(driver)?;
        Ok(host)
    }

    fn alloc(&mut self, rows: usize, cols: usize) -> Result<Value, ComputeError> {
        let len = rows * cols;
        let (at, own) = match &mut self.buffers {
            Buffers::Pool(pool) => {
                let buf = pool.take(self.stream, len)?;
                (ptr(&buf, self.stream), Some(buf))
            }
            Buffers::Record(kept) => {
                // SAFETY: every kernel writes all of its output before anything reads it.
                let buf = unsafe { self.stream.alloc::<f32>(len) }.map_err(driver)?;
                let at = ptr(&buf, self.stream);
                kept.push(buf);
                (at, None)
            }
            Buffers::Replay(kept, next) => {
                let buf = kept
                    .get(*next)
                    .filter(|b| b.len() == len)
                    .ok_or_else(|| ComputeError::Internal("a replayed step asked for other buffers".into()))?;
                *next += 1;
                (ptr(buf, self.stream), None)
            }
        };
        Ok(Value { at, rows, cols, own })
    }

    fn give(&mut self, v: Value) {
        if let (Some(buf), Buffers::Pool(pool)) = (v.own, &mut self.buffers) {
            pool.give(buf);
        }
    }

    /// `x` (value `id`) as the matmul with weights of `ty` takes it.
    fn rounded_input(&mut self, id: usize, x: &Value, ty: GgmlType) -> Result<Ptr, ComputeError> {
        if ty == GgmlType::F32 {
            return Ok(x.at);
        }
        if let Some(r) = self.rounded.get(&(id, ty)) {
            return Ok(r.at);
        }
        let y = self.alloc(x.rows, x.cols)?;
        let n = x.rows * x.cols;
        match self.kernels.round_activations(self.stream, ty, x.at, y.at, n) {
            None => {
                self.give(y);
                Ok(x.at)
            }
            Some(launched) => {
                launched?;
                let at = y.at;
                self.rounded.insert((id, ty), y);
                Ok(at)
            }
        }
    }

    fn node(
        &mut self,
        g: &CompiledGraph,
        node: &Node,
        values: &[Option<Value>],
        inputs: &Inputs,
        rows: &Rows,
    ) -> Result<Value, ComputeError> {
        let (s, k) = (self.stream, self.kernels);
        let get = |id: usize| {
            values[id]
                .as_ref()
                .ok_or_else(|| ComputeError::Internal(format!("value {id} was freed before it was read")))
        };
        let p = |v: &Value| v.at;
        Ok(match node {
            Node::Embed { table } => {
                let cols = g.tensor(*table).row_len();
                let (_, from) = inputs
                    .embedded
                    .iter()
                    .find(|(t, _)| t == table)
                    .ok_or_else(|| ComputeError::Internal("a step's embedded rows are missing".into()))?;
                let y = self.alloc(rows.positions.len(), cols)?;
                let bytes = y.rows * cols * size_of::<f32>();
                // SAFETY: both hold rows * cols f32s.
                unsafe { result::memcpy_dtod_async(y.at, *from, bytes, s.cu_stream()) }.map_err(driver)?;
                y
            }
            Node::RmsNorm {
                input,
                weight,
                eps,
                group,
            } => {
                let x = get(*input)?;
                let y = self.alloc(x.rows, x.cols)?;
                let w = match weight {
                    Some(w) => self.weights.vector(s, g, *w)?,
                    None => 0,
                };
                k.rms_norm(s, p(x), p(&y), w, x.rows * x.cols / group, *group, *eps)?;
                y
            }
            Node::Matmul { input, weight } => {
                let x = get(*input)?;
                let t = g.tensor(*weight);
                let (kk, n, ty) = (t.row_len(), t.rows(), t.ggml_type);
                if kk % 32 != 0 {
                    return Err(ComputeError::Unsupported(format!(
                        "the CUDA matmul takes rows of a multiple of 32 values, not {kk}"
                    )));
                }
                let row_bytes = ty.row_bytes(kk).unwrap_or(0);
                let w = self.weights.stored(s, g, *weight)?;
                let xp = self.rounded_input(*input, x, ty)?;
                let y = self.alloc(x.rows, n)?;
                k.matmul(s, ty, w, xp, p(&y), (x.rows, kk, n), row_bytes)?;
                y
            }
            Node::AddTensor { input, tensor } => {
                let x = get(*input)?;
                let y = self.alloc(x.rows, x.cols)?;
                let row = self.weights.vector(s, g, *tensor)?;
                k.add_row(s, p(x), row, p(&y), x.cols, x.rows * x.cols)?;
                y
            }
            Node::Add(a, b) | Node::Mul(a, b) | Node::Swiglu(a, b) | Node::Geglu(a, b) => {
                let op = match node {
                    Node::Add(..) => Binary::Add,
                    Node::Mul(..) => Binary::Mul,
                    Node::Swiglu(..) => Binary::Swiglu,
                    _ => Binary::Geglu,
                };
                let (a, b) = (get(*a)?, get(*b)?);
                let y = self.alloc(a.rows, a.cols)?;
                k.binary(s, op, p(a), p(b), p(&y), a.rows * a.cols)?;
                y
            }
            Node::Scale(a, factor) => {
                let x = get(*a)?;
                let y = self.alloc(x.rows, x.cols)?;
                k.scale(s, p(x), p(&y), *factor, x.rows * x.cols)?;
                y
            }
            Node::Rope {
                input,
                head_dim,
                rotary_dims,
                base,
                freq_scale,
                style,
            } => {
                let x = get(*input)?;
                let y = self.alloc(x.rows, x.cols)?;
                let positions = if g.single_row[*input] {
                    inputs.last_positions
                } else {
                    inputs.kv.positions
                };
                let args = RopeArgs {
                    head_dim: *head_dim as i32,
                    rotary_dims: *rotary_dims as i32,
                    theta_scale: base.powf(-2.0 / *rotary_dims as f32),
                    freq_scale: *freq_scale,
                    neox: (*style == RopeStyle::Neox) as i32,
                };
                k.rope(s, p(x), p(&y), positions, (x.rows, x.cols), &args)?;
                y
            }
            Node::Attention(a) => {
                if a.head_dim % 32 != 0 || a.head_dim > 256 {
                    return Err(ComputeError::Unsupported(format!(
                        "the CUDA attention kernel takes head dims that are multiples of 32 up to 256, not {}",
                        a.head_dim
                    )));
                }
                let (q, kv, v) = (get(a.q)?, get(a.k)?, get(a.v)?);
                k.kv_append(s, p(kv), p(v), &inputs.kv, q.rows, a.layer, kv.cols)?;
                let out = self.alloc(q.rows, q.cols)?;
                let args = AttentionArgs {
                    layer: a.layer as i32,
                    n_head: a.n_head as i32,
                    n_kv_head: a.n_kv_head as i32,
                    head_dim: a.head_dim as i32,
                    scale: a.scale,
                    window: a.window as i32,
                };
                k.attention(s, p(q), p(&out), &inputs.kv, q.rows, &args)?;
                out
            }
            Node::LastRow(input) => {
                let x = get(*input)?;
                if g.single_row[*input] {
                    let y = self.alloc(x.rows, x.cols)?;
                    let bytes = x.rows * x.cols * size_of::<f32>();
                    // SAFETY: both hold rows * cols f32s.
                    unsafe { result::memcpy_dtod_async(y.at, x.at, bytes, s.cu_stream()) }.map_err(driver)?;
                    y
                } else {
                    let y = self.alloc(rows.spans.len(), x.cols)?;
                    k.gather_rows(s, p(x), p(&y), inputs.last_rows, y.rows, x.cols)?;
                    y
                }
            }
        })
    }
}
