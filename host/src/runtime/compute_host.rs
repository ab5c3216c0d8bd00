//! The `compute` import, implemented over the tenant's store state: the guest
//! holds handles, the host holds the bytes.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::Resource;

use super::state::StoreState;
use super::wit::{AttentionOp, RopeStyle};
use super::wit::{
    GraphHandle, KvHandle, MetadataEntry, MetadataValue, Op, StepOutput, StepOutputKind, TensorInfo, Texts,
    WeightsHandle, WitComputeError, compute,
};
use crate::compute::gguf::{Array, Value};
use crate::compute::ops;
use crate::compute::{self as host, ComputeError, OutputKind, StepRequest};

type Reply<T> = wasmtime::Result<Result<T, WitComputeError>>;

impl From<ComputeError> for WitComputeError {
    fn from(e: ComputeError) -> Self {
        match e {
            ComputeError::NotFound(m) => Self::NotFound(m),
            ComputeError::Denied(m) => Self::Denied(m),
            ComputeError::InvalidFile(m) => Self::InvalidFile(m),
            ComputeError::InvalidGraph(m) => Self::InvalidGraph(m),
            ComputeError::InvalidStep(m) => Self::InvalidStep(m),
            ComputeError::QuotaExceeded(m) => Self::QuotaExceeded(m),
            ComputeError::Unsupported(m) => Self::Unsupported(m),
            ComputeError::Internal(m) => Self::Internal(m),
        }
    }
}

/// A WIT op as the compute layer's own op: the one place the two meet.
fn op(op: Op) -> ops::Op {
    match op {
        Op::Embed(table) => ops::Op::Embed(table),
        Op::RmsNorm(n) => ops::Op::RmsNorm(ops::RmsNormOp {
            input: n.input,
            weight: n.weight,
            eps: n.eps,
            group: n.group,
        }),
        Op::Matmul(m) => ops::Op::Matmul(ops::MatmulOp {
            input: m.input,
            weight: m.weight,
        }),
        Op::AddTensor(pair) => ops::Op::AddTensor(pair),
        Op::Add(pair) => ops::Op::Add(pair),
        Op::Mul(pair) => ops::Op::Mul(pair),
        Op::Scale(pair) => ops::Op::Scale(pair),
        Op::Rope(r) => ops::Op::Rope(ops::RopeOp {
            input: r.input,
            head_dim: r.head_dim,
            rotary_dims: r.rotary_dims,
            base: r.base,
            freq_scale: r.freq_scale,
            style: match r.style {
                RopeStyle::Normal => ops::RopeStyle::Normal,
                RopeStyle::Neox => ops::RopeStyle::Neox,
            },
        }),
        Op::Attention(a) => ops::Op::Attention(attention(a)),
        Op::Swiglu(pair) => ops::Op::Swiglu(pair),
        Op::Geglu(pair) => ops::Op::Geglu(pair),
        Op::LastRow(v) => ops::Op::LastRow(v),
    }
}

fn attention(a: AttentionOp) -> ops::AttentionOp {
    ops::AttentionOp {
        q: a.q,
        k: a.k,
        v: a.v,
        layer: a.layer,
        n_head: a.n_head,
        n_kv_head: a.n_kv_head,
        head_dim: a.head_dim,
        scale: a.scale,
        window: a.window,
    }
}

impl compute::Host for StoreState {}

impl compute::HostWeights for StoreState {
    fn open(&mut self, name: String) -> Reply<Resource<WeightsHandle>> {
        let c = &self.compute;
        if let Some(allowed) = &c.allowed_models
            && !allowed.iter().any(|m| m == &name)
        {
            return Ok(Err(WitComputeError::Denied(format!(
                "tenant `{}` may not use model `{name}`; allowed: {}",
                c.tenant,
                allowed.join(", ")
            ))));
        }
        let file = match c.catalog.resolve(&name).and_then(|path| c.shared.registry.open(&path)) {
            Ok(file) => file,
            Err(e) => return Ok(Err(e.into())),
        };
        Ok(Ok(self.table.push(WeightsHandle(file))?))
    }

    fn metadata(&mut self, weights: Resource<WeightsHandle>) -> wasmtime::Result<Vec<MetadataEntry>> {
        let file = &self.table.get(&weights)?.0;
        Ok(file
            .gguf
            .metadata
            .iter()
            .filter_map(|(key, value)| {
                Some(MetadataEntry {
                    key: key.clone(),
                    value: metadata_value(value)?,
                })
            })
            .collect())
    }

    fn tensors(&mut self, weights: Resource<WeightsHandle>) -> wasmtime::Result<Vec<TensorInfo>> {
        let file = &self.table.get(&weights)?.0;
        Ok(file
            .gguf
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type.id(),
            })
            .collect())
    }

    fn drop(&mut self, weights: Resource<WeightsHandle>) -> wasmtime::Result<()> {
        self.table.delete(weights)?;
        Ok(())
    }
}

fn metadata_value(value: &Value) -> Option<MetadataValue> {
    Some(match value {
        Value::Uint(v) => MetadataValue::Uint(*v),
        Value::Int(v) => MetadataValue::Int(*v),
        Value::Float(v) => MetadataValue::Float(*v),
        Value::Bool(v) => MetadataValue::Boolean(*v),
        Value::Text(v) => MetadataValue::Text(v.clone()),
        Value::Array(Array::Uints(v)) => MetadataValue::IntArray(v.iter().map(|&x| x as i64).collect()),
        Value::Array(Array::Ints(v)) => MetadataValue::IntArray(v.clone()),
        Value::Array(Array::Floats(v)) => MetadataValue::FloatArray(v.iter().map(|&x| x as f32).collect()),
        Value::Array(Array::Bools(v)) => MetadataValue::BoolArray(v.clone()),
        Value::Array(Array::Texts(v)) => MetadataValue::TextArray(packed(v)?),
        Value::Array(Array::Nested(_)) => return None,
    })
}

/// The strings back to back with their end offsets; none if they do not fit u32 offsets.
fn packed(strings: &[String]) -> Option<Texts> {
    let mut text = String::with_capacity(strings.iter().map(String::len).sum());
    let mut ends = Vec::with_capacity(strings.len());
    for s in strings {
        text.push_str(s);
        ends.push(u32::try_from(text.len()).ok()?);
    }
    Some(Texts { text, ends })
}

impl compute::HostKvCache for StoreState {
    fn allocate(&mut self, layers: u32, width: u32, capacity: u32) -> Reply<Resource<KvHandle>> {
        if layers == 0 || width == 0 || capacity == 0 {
            return Ok(Err(WitComputeError::InvalidStep(format!(
                "a {layers}x{width}x{capacity} KV cache is empty"
            ))));
        }
        let charge = match self.compute.kv_tokens.charge(capacity as u64) {
            Ok(charge) => charge,
            Err(e) => return Ok(Err(e.into())),
        };
        let backend = self.compute.shared.scheduler.backend();
        let cache = match backend.new_kv(layers, width, capacity, charge) {
            Ok(cache) => cache,
            Err(e) => return Ok(Err(e.into())),
        };
        Ok(Ok(self.table.push(KvHandle(Arc::new(Mutex::new(cache))))?))
    }

    fn capacity(&mut self, cache: Resource<KvHandle>) -> wasmtime::Result<u32> {
        Ok(host::scheduler::lock(&self.table.get(&cache)?.0).capacity())
    }

    fn drop(&mut self, cache: Resource<KvHandle>) -> wasmtime::Result<()> {
        self.table.delete(cache)?;
        Ok(())
    }
}

impl compute::HostGraph for StoreState {
    fn compile(&mut self, weights: Resource<WeightsHandle>, ops: Vec<Op>) -> Reply<Resource<GraphHandle>> {
        let file = self.table.get(&weights)?.0.clone();
        let ops: Vec<ops::Op> = ops.into_iter().map(op).collect();
        match host::compile(&**self.compute.shared.scheduler.backend(), file, &ops) {
            Ok(graph) => Ok(Ok(self.table.push(GraphHandle(Arc::new(graph)))?)),
            Err(e) => Ok(Err(e.into())),
        }
    }

    async fn run(
        &mut self,
        graph: Resource<GraphHandle>,
        cache: Resource<KvHandle>,
        tokens: Vec<u32>,
        start: u32,
        output: StepOutputKind,
        allowed: Option<Vec<u32>>,
    ) -> Reply<StepOutput> {
        let entered = Instant::now();
        if let Some(allowed) = &allowed {
            let problem = if matches!(output, StepOutputKind::Logits) {
                Some("logits are never masked: `allowed` goes with top-k or sample")
            } else if allowed.iter().all(|&word| word == 0) {
                Some("`allowed` allows no token")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Ok(Err(WitComputeError::InvalidStep(problem.into())));
            }
        }
        let output = match output {
            StepOutputKind::Logits => OutputKind::Logits,
            StepOutputKind::TopK(k) => OutputKind::TopK(k as usize),
            StepOutputKind::Sample(p) => {
                let valid = p.temperature > 0.0
                    && p.temperature.is_finite()
                    && p.top_p > 0.0
                    && p.top_p <= 1.0
                    && (0.0..=1.0).contains(&p.min_p)
                    && (0.0..1.0).contains(&p.draw);
                if !valid {
                    return Ok(Err(WitComputeError::InvalidStep(format!(
                        "sample: temperature > 0, top-p in (0, 1], min-p in [0, 1] and draw in [0, 1), not {p:?}"
                    ))));
                }
                OutputKind::Sample(host::SampleParams {
                    temperature: p.temperature,
                    top_k: p.top_k,
                    top_p: p.top_p,
                    min_p: p.min_p,
                    draw: p.draw,
                })
            }
        };
        let step = StepRequest {
            graph: self.table.get(&graph)?.0.clone(),
            cache: self.table.get(&cache)?.0.clone(),
            tokens,
            start,
            output,
            allowed,
        };
        let kernel_start = Instant::now();
        let (scheduler, seat) = (self.compute.shared.scheduler.clone(), self.seat.clone());
        let result = scheduler.run(&seat, step).await;
        let kernel_end = Instant::now();
        let output = match result {
            Ok(host::StepOutput::Logits(logits)) => Ok(StepOutput::Logits(logits)),
            Ok(host::StepOutput::Sampled(id, logit)) => Ok(StepOutput::Sampled(super::wit::Candidate { id, logit })),
            Ok(host::StepOutput::TopK(top)) => Ok(StepOutput::TopK(
                top.into_iter()
                    .map(|(id, logit)| super::wit::Candidate { id, logit })
                    .collect(),
            )),
            Err(e) => Err(e.into()),
        };
        super::profile::record(entered, kernel_start, kernel_end);
        Ok(output)
    }

    fn drop(&mut self, graph: Resource<GraphHandle>) -> wasmtime::Result<()> {
        self.table.delete(graph)?;
        Ok(())
    }
}
