//! The ops of one batched step on the device: every node is one launch over
//! all the batch's rows; the per-sequence parts (RoPE positions, the KV
//! append, attention) read the per-row tables of the step's `Inputs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, result, sys};

use super::kernels::{Activations, Addend, AttentionArgs, Binary, Kernels, KvRows, Ptr, RopeArgs};
use super::resident::{BufferPool, DeviceWeights, ptr};
use super::{driver, profile};
use crate::compute::gguf::GgmlType;
use crate::compute::graph::{CompiledGraph, Node, TensorId};
use crate::compute::ops::RopeStyle;
use crate::compute::{ComputeError, OutputKind, Rows, StepOutput, shape_output};

/// How long a profiled step holds the device while its ops are queued (about
/// 30 ms): longer than queueing them takes.
const HOLD_CYCLES: i64 = 50_000_000;

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

/// The add after a matmul that the matmul does as it writes.
#[derive(Clone, Copy)]
enum Epilogue {
    /// A value of the matmul's shape (a residual).
    Residual(usize),
    /// A tensor row added to each row (a bias).
    Bias(TensorId),
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
    /// Values prepared as matmul activations (by value and form), made once
    /// for the matmuls that share an input and freed with it.
    prepared: HashMap<(usize, Activations), Value>,
    started: Instant,
    /// Under `REALM_CUDA_PROFILE=ops`, the events around each op.
    op_events: Vec<(String, CudaEvent, CudaEvent)>,
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
            prepared: HashMap::new(),
            started: Instant::now(),
            op_events: Vec::new(),
        }
    }

    /// Launches every node of `g`; returns the output value (one row per sequence).
    pub fn nodes(&mut self, g: &CompiledGraph, inputs: &Inputs, rows: &Rows) -> Result<Value, ComputeError> {
        let ops = *profile::MODE == profile::Mode::Ops;
        let mut values: Vec<Option<Value>> = Vec::with_capacity(g.nodes.len());
        let event = || self.stream.record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
        if ops {
            self.kernels.hold(self.stream, HOLD_CYCLES)?;
        }
        let uses = use_counts(g);
        let mut i = 0;
        while i < g.nodes.len() {
            let node = &g.nodes[i];
            let before = if ops { Some(event().map_err(driver)?) } else { None };
            let epilogue = self.addend_after(g, i, &uses);
            let quantized_norm = self.norm_for_matmuls(g, i, &values);
            let (value, done) = match epilogue {
                Some(add) => {
                    let Node::Matmul { input, weight } = node else {
                        unreachable!("addend_after answers for matmuls only")
                    };
                    let add = match add {
                        Epilogue::Residual(v) => Addend::Rows(read(&values, v)?.at),
                        Epilogue::Bias(t) => Addend::Row(self.weights.vector(self.stream, g, t)?),
                    };
                    (self.matmul(g, *input, *weight, &values, Some(add))?, 2)
                }
                None => match quantized_norm {
                    Some(form) => (self.norm_quantized(g, node, &values, i, form)?, 1),
                    None => (self.node(g, node, &values, inputs, rows)?, 1),
                },
            };
            if let Some(before) = before {
                let after = event().map_err(driver)?;
                let kind = profile::kind(g, node);
                let kind = match (epilogue, quantized_norm) {
                    (Some(Epilogue::Residual(_)), _) => kind + " + add",
                    (Some(Epilogue::Bias(_)), _) => kind + " + bias",
                    (_, Some(_)) => kind + " + q8",
                    _ => kind,
                };
                self.op_events.push((kind, before, after));
            }
            // A matmul fused with the add after it leaves no value of its own.
            if done == 2 {
                values.push(None);
            }
            values.push(Some(value));
            for at in i..i + done {
                self.release_inputs(g, at, &mut values);
            }
            i += done;
        }
        let out = values
            .pop()
            .flatten()
            .ok_or_else(|| ComputeError::Internal("graph produced no output".into()))?;
        for v in values.into_iter().flatten() {
            self.give(v);
        }
        let prepared: Vec<Value> = self.prepared.drain().map(|(_, v)| v).collect();
        for v in prepared {
            self.give(v);
        }
        Ok(out)
    }

    /// Each sequence's output as it asked: the top-k on the device and only
    /// those k values copied when every sequence asks for at most MAX_K
    /// without a mask, else all logits. The value's buffer goes back to the pool.
    pub fn finish(
        &mut self,
        out: Value,
        kinds: &[(OutputKind, Option<&[u32]>)],
    ) -> Result<Vec<StepOutput>, ComputeError> {
        let mode = *profile::MODE;
        if mode != profile::Mode::Off {
            profile::record("submit", self.started);
        }
        let started = Instant::now();
        let ks: Option<Vec<i32>> = kinds
            .iter()
            .map(|kind| match kind {
                (OutputKind::TopK(k), None) if *k <= MAX_K => Some((*k).min(out.cols) as i32),
                _ => None,
            })
            .collect();
        let outputs = match ks {
            Some(ks) => self.top_k(&out, &ks)?,
            None => {
                let host = self.copy_out(out.at, out.rows * out.cols)?;
                host.chunks_exact(out.cols)
                    .zip(kinds)
                    .map(|(row, &(kind, allowed))| shape_output(row, kind, allowed))
                    .collect()
            }
        };
        if mode != profile::Mode::Off {
            profile::record("wait+output", started);
            for (what, before, after) in self.op_events.drain(..) {
                let ms = before.elapsed_ms(&after).map_err(driver)?;
                profile::record_duration(&what, std::time::Duration::from_secs_f32(ms / 1e3));
            }
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

    /// Gives back the values (and their prepared forms) that node `at` read last.
    fn release_inputs(&mut self, g: &CompiledGraph, at: usize, values: &mut [Option<Value>]) {
        for input in crate::compute::graph::inputs(&g.nodes[at]) {
            if g.last_use[input] != at {
                continue;
            }
            if let Some(v) = values[input].take() {
                self.give(v);
            }
            let finished: Vec<_> = self.prepared.keys().filter(|k| k.0 == input).copied().collect();
            for key in finished {
                if let Some(v) = self.prepared.remove(&key) {
                    self.give(v);
                }
            }
        }
    }

    /// When node `i` is a quantized matmul whose only reader is the add right
    /// after it, what that add adds: the matmul adds it as it writes (one
    /// launch fewer; the same f32 sums).
    fn addend_after(&self, g: &CompiledGraph, i: usize, uses: &[usize]) -> Option<Epilogue> {
        let Node::Matmul { weight, .. } = g.nodes[i] else {
            return None;
        };
        let addend = match g.nodes.get(i + 1)? {
            Node::Add(a, b) if *a == i && *b != i => Epilogue::Residual(*b),
            Node::Add(a, b) if *b == i && *a != i => Epilogue::Residual(*a),
            Node::AddTensor { input, tensor } if *input == i => Epilogue::Bias(*tensor),
            _ => return None,
        };
        (uses[i] == 1 && self.kernels.is_int8(g.tensor(weight).ggml_type)).then_some(addend)
    }

    /// When node `i` is an RMS norm over whole rows whose every reader is a
    /// quantized matmul taking the same q8 form, that form: the norm writes
    /// it directly (one launch fewer; the same bits).
    fn norm_for_matmuls(&self, g: &CompiledGraph, i: usize, values: &[Option<Value>]) -> Option<Activations> {
        let Node::RmsNorm { input, group, .. } = g.nodes[i] else {
            return None;
        };
        let x = values[input].as_ref()?;
        let mut forms = g.nodes[i + 1..=g.last_use[i].max(i)]
            .iter()
            .filter(|n| crate::compute::graph::inputs(n).contains(&i))
            .map(|n| match n {
                Node::Matmul { weight, .. } => {
                    let ty = g.tensor(*weight).ggml_type;
                    Activations::of(ty).filter(|_| self.kernels.is_int8(ty))
                }
                _ => None,
            });
        let form = forms.next()??;
        let block = if form == Activations::Q8K { 256 } else { 32 };
        let fits = matches!(form, Activations::Q8_0 | Activations::Q8K) && group == x.cols && group % block == 0;
        (fits && forms.all(|f| f == Some(form))).then_some(form)
    }

    /// The norm `node` (value `id`) as the q8 `form` its readers take; its own
    /// value is a stand-in with no f32s behind it.
    fn norm_quantized(
        &mut self,
        g: &CompiledGraph,
        node: &Node,
        values: &[Option<Value>],
        id: usize,
        form: Activations,
    ) -> Result<Value, ComputeError> {
        let Node::RmsNorm { input, weight, eps, .. } = node else {
            return Err(ComputeError::Internal("a fused norm that is not a norm".into()));
        };
        let x = read(values, *input)?;
        let (rows, cols, at) = (x.rows, x.cols, x.at);
        let w = match weight {
            Some(w) => self.weights.vector(self.stream, g, *w)?,
            None => 0,
        };
        let y = self.alloc(rows, form.row_slots(cols))?;
        self.kernels
            .rms_norm_q8(self.stream, at, y.at, w, (rows, cols), *eps, form)?;
        self.prepared.insert((id, form), y);
        Ok(Value::borrowed(0, rows, cols))
    }

    /// `x` (value `id`) as the matmul with weights of `ty` takes it.
    fn prepared_input(&mut self, id: usize, x: &Value, ty: GgmlType) -> Result<Ptr, ComputeError> {
        // `CudaBackend::supports` admitted only types with a matmul.
        let form =
            Activations::of(ty).ok_or_else(|| ComputeError::Internal(format!("no activations form for {ty}")))?;
        if form == Activations::F32 {
            return Ok(x.at);
        }
        if let Some(r) = self.prepared.get(&(id, form)) {
            return Ok(r.at);
        }
        let y = self.alloc(x.rows, form.row_slots(x.cols))?;
        if let Some(launched) = self.kernels.prepare(self.stream, form, x.at, y.at, x.rows * x.cols) {
            launched?;
        }
        let at = y.at;
        self.prepared.insert((id, form), y);
        Ok(at)
    }

    /// The matmul of value `input` by `weight`, plus `add` if given.
    fn matmul(
        &mut self,
        g: &CompiledGraph,
        input: usize,
        weight: TensorId,
        values: &[Option<Value>],
        add: Option<Addend>,
    ) -> Result<Value, ComputeError> {
        let x = read(values, input)?;
        let t = g.tensor(weight);
        // `CudaBackend::supports` checked the type and that k is whole q8 blocks.
        let (k, n, ty) = (t.row_len(), t.rows(), t.ggml_type);
        let row_bytes = ty.row_bytes(k).unwrap_or(0);
        let w = self.weights.stored(self.stream, g, weight)?;
        let xp = self.prepared_input(input, x, ty)?;
        let y = self.alloc(x.rows, n)?;
        self.kernels
            .matmul(self.stream, ty, w, xp, y.at, (x.rows, k, n), row_bytes, add)?;
        Ok(y)
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
        let get = |id: usize| read(values, id);
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
            Node::Matmul { input, weight } => self.matmul(g, *input, *weight, values, None)?,
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
                // `CudaBackend::supports` checked the head dim.
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

/// Value `id`, which a node is about to read.
fn read(values: &[Option<Value>], id: usize) -> Result<&Value, ComputeError> {
    values[id]
        .as_ref()
        .ok_or_else(|| ComputeError::Internal(format!("value {id} was freed before it was read")))
}

/// How many nodes read each value.
fn use_counts(g: &CompiledGraph) -> Vec<usize> {
    let mut uses = vec![0; g.nodes.len()];
    for node in &g.nodes {
        for input in crate::compute::graph::inputs(node) {
            uses[input] += 1;
        }
    }
    uses
}
