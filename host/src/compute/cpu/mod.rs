//! The CPU backend: executes a compiled step graph on a dedicated thread pool.
//! Matrix products run over the memory-mapped weights in their stored type.

pub mod activations;
pub mod attention;
#[cfg(test)]
mod bench;
pub mod kdot;
pub mod kernels;
pub mod kquants;
pub mod ksimd;
pub mod quant;
pub mod simd;
pub mod vmath;

use half::f16;
use rayon::prelude::*;

use super::gguf::GgmlType;
use super::graph::{CompiledGraph, Node, TensorId};
use super::{Backend, ComputeError, Step};
use activations::Activations;
use kernels::Rope;

/// Output columns per parallel task of a matrix product.
const COLUMNS_PER_TASK: usize = 32;

pub struct CpuBackend {
    pool: rayon::ThreadPool,
}

impl CpuBackend {
    /// A backend with `threads` threads; 0 means one per core.
    pub fn new(threads: usize) -> anyhow::Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("realm-cpu-{i}"))
            .build()?;
        Ok(Self { pool })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, step: Step<'_>) -> Result<Vec<f32>, ComputeError> {
        check_step(&step)?;
        self.pool.install(|| execute(step))
    }
}

/// Rejects tokens outside the vocabulary and positions beyond the cache.
pub fn check_step(step: &Step<'_>) -> Result<(), ComputeError> {
    let g = step.graph;
    if step.tokens.is_empty() {
        return Err(ComputeError::InvalidStep("a step needs at least one token".into()));
    }
    if let Some(bad) = step.tokens.iter().find(|&&t| t as usize >= g.vocab) {
        return Err(ComputeError::InvalidStep(format!(
            "token {bad} is outside the vocabulary of {}",
            g.vocab
        )));
    }
    let end = step.start as u64 + step.tokens.len() as u64;
    if end > step.cache.capacity() as u64 {
        return Err(ComputeError::InvalidStep(format!(
            "positions {}..{end} exceed the KV cache of {}",
            step.start,
            step.cache.capacity()
        )));
    }
    if step.cache.layers() as usize != g.kv_layers || step.cache.width() != g.kv_width {
        return Err(ComputeError::InvalidStep(format!(
            "the KV cache is {}x{}, the graph needs {}x{}",
            step.cache.layers(),
            step.cache.width(),
            g.kv_layers,
            g.kv_width
        )));
    }
    Ok(())
}

/// A value: `rows` rows of `cols` f32s.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

fn execute(step: Step<'_>) -> Result<Vec<f32>, ComputeError> {
    let g = step.graph;
    let n = step.tokens.len();
    let mut values: Vec<Option<Matrix>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let value = match node {
            Node::Embed { table } => embed(g, *table, step.tokens),
            Node::RmsNorm {
                input,
                weight,
                eps,
                group,
            } => {
                let mut m = copy(get(&values, *input)?);
                let w = weight.map(|w| vector(g, w));
                kernels::rms_norm(&mut m.data, *group, *eps, w.as_deref());
                m
            }
            Node::Matmul { input, weight } => matmul(g, *weight, get(&values, *input)?),
            Node::AddTensor { input, tensor } => {
                let mut m = copy(get(&values, *input)?);
                let t = vector(g, *tensor);
                m.data
                    .chunks_exact_mut(m.cols)
                    .for_each(|row| row.iter_mut().zip(&t).for_each(|(x, b)| *x += b));
                m
            }
            Node::Add(a, b) => zip(get(&values, *a)?, get(&values, *b)?, |x, y| x + y),
            Node::Mul(a, b) => zip(get(&values, *a)?, get(&values, *b)?, |x, y| x * y),
            Node::Swiglu(a, b) => {
                let (gate, up) = (get(&values, *a)?, get(&values, *b)?);
                let cols = up.cols;
                let mut out = Matrix {
                    rows: up.rows,
                    cols,
                    data: vec![0.0; up.data.len()],
                };
                for ((o, g), u) in out
                    .data
                    .chunks_exact_mut(cols)
                    .zip(gate.data.chunks_exact(cols))
                    .zip(up.data.chunks_exact(cols))
                {
                    vmath::swiglu_row(g, u, o);
                }
                out
            }
            Node::Geglu(a, b) => zip(get(&values, *a)?, get(&values, *b)?, |g, u| kernels::gelu_gate(g) * u),
            Node::Scale(a, factor) => {
                let mut m = copy(get(&values, *a)?);
                m.data.iter_mut().for_each(|x| *x *= factor);
                m
            }
            Node::Rope {
                input,
                head_dim,
                rotary_dims,
                base,
                freq_scale,
                style,
            } => {
                let rope = Rope {
                    head_dim: *head_dim,
                    rotary_dims: *rotary_dims,
                    base: *base,
                    freq_scale: *freq_scale,
                    style: *style,
                };
                let mut m = copy(get(&values, *input)?);
                let cols = m.cols;
                m.data
                    .chunks_exact_mut(cols)
                    .enumerate()
                    .for_each(|(r, row)| rope.apply(row, step.start + r as u32));
                m
            }
            Node::Attention(a) => {
                let (q, k, v) = (get(&values, a.q)?, get(&values, a.k)?, get(&values, a.v)?);
                let start = step.start as usize;
                let width = step.cache.width();
                let (keys, vals) = step.cache.layer_mut(a.layer, start + n);
                write_f16(&mut keys[start * width..], &k.data);
                write_f16(&mut vals[start * width..], &v.data);
                let mut out = vec![0.0; q.rows * q.cols];
                kernels::attention(a, &q.data, keys, vals, start, &mut out);
                Matrix {
                    rows: q.rows,
                    cols: q.cols,
                    data: out,
                }
            }
            Node::LastRow(input) => {
                let m = get(&values, *input)?;
                Matrix {
                    rows: 1,
                    cols: m.cols,
                    data: m.data[(m.rows - 1) * m.cols..].to_vec(),
                }
            }
        };
        values.push(Some(value));
        for input in super::graph::inputs(node) {
            if g.last_use[input] == i {
                values[input] = None;
            }
        }
    }
    let output = values
        .pop()
        .flatten()
        .ok_or_else(|| ComputeError::Internal("graph produced no output".into()))?;
    Ok(output.data)
}

fn get(values: &[Option<Matrix>], id: usize) -> Result<&Matrix, ComputeError> {
    values[id]
        .as_ref()
        .ok_or_else(|| ComputeError::Internal(format!("value {id} was freed before it was read")))
}

fn copy(m: &Matrix) -> Matrix {
    Matrix {
        rows: m.rows,
        cols: m.cols,
        data: m.data.clone(),
    }
}

fn zip(a: &Matrix, b: &Matrix, f: impl Fn(f32, f32) -> f32 + Sync) -> Matrix {
    let data = a.data.iter().zip(&b.data).map(|(&x, &y)| f(x, y)).collect();
    Matrix {
        rows: a.rows,
        cols: a.cols,
        data,
    }
}

fn write_f16(dst: &mut [f16], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s));
}

/// A 1-D tensor as f32.
fn vector(g: &CompiledGraph, id: TensorId) -> Vec<f32> {
    let t = g.tensor(id);
    let mut out = vec![0.0; t.row_len()];
    quant::dequantize_row(t.ggml_type, g.model.data(t), &mut out);
    out
}

fn embed(g: &CompiledGraph, table: TensorId, tokens: &[u32]) -> Matrix {
    let t = g.tensor(table);
    let cols = t.row_len();
    let row_bytes = t.ggml_type.row_bytes(cols).unwrap_or(0);
    let data_all = g.model.data(t);
    let mut data = vec![0.0; tokens.len() * cols];
    for (out, &token) in data.chunks_exact_mut(cols).zip(tokens) {
        let at = token as usize * row_bytes;
        quant::dequantize_row(t.ggml_type, &data_all[at..at + row_bytes], out);
    }
    Matrix {
        rows: tokens.len(),
        cols,
        data,
    }
}

/// `x . W^T` for a [n, k] weight in its stored type.
fn matmul(g: &CompiledGraph, weight: TensorId, x: &Matrix) -> Matrix {
    let t = g.tensor(weight);
    let (k, n) = (t.row_len(), t.rows());
    let data = matmul_rows(t.ggml_type, g.model.data(t), k, n, &x.data);
    Matrix {
        rows: x.rows,
        cols: n,
        data,
    }
}

/// One input row times every weight row with the row kernel resolved once
/// (the same kernel `activations::dot` would pick per row). None where the
/// type has no such kernel on this CPU.
fn matvec(ty: GgmlType, w: &[u8], row_bytes: usize, n: usize, x: &Activations) -> Option<Vec<f32>> {
    match x {
        Activations::Q8(blocks) => Some(rows_times(simd::row_kernel(ty)?, w, row_bytes, n, blocks)),
        Activations::Q8K(blocks) => Some(rows_times(ksimd::row_kernel(ty)?, w, row_bytes, n, blocks)),
        _ => None,
    }
}

/// Every one of the `n` weight rows times `blocks`, with `kernel`, in parallel.
/// `kernel` comes from a `row_kernel`, which checked the CPU's features.
fn rows_times<B: Sync>(
    kernel: unsafe fn(&[u8], &[B]) -> f32,
    w: &[u8],
    row_bytes: usize,
    n: usize,
    blocks: &[B],
) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    out.par_chunks_mut(COLUMNS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            let first = task * COLUMNS_PER_TASK;
            for (c, o) in chunk.iter_mut().enumerate() {
                let w_row = &w[(first + c) * row_bytes..(first + c + 1) * row_bytes];
                // SAFETY: `row_kernel` checked the CPU features; the row is whole blocks.
                *o = unsafe { kernel(w_row, blocks) };
            }
        });
    out
}

/// `x . W^T` for `x.len() / k` rows of `k` values and `n` weight rows of type
/// `ty` (`w`), as `[rows, n]`. Each input row is quantized once for the weight
/// type; every weight row is read once and multiplied with all input rows.
pub fn matmul_rows(ty: GgmlType, w: &[u8], k: usize, n: usize, x: &[f32]) -> Vec<f32> {
    let row_bytes = ty.row_bytes(k).unwrap_or(0);
    let rows = x.len() / k;
    let inputs: Vec<Activations> = x.chunks_exact(k).map(|row| activations::quantize(ty, row)).collect();
    if rows == 1
        && let Some(out) = matvec(ty, w, row_bytes, n, &inputs[0])
    {
        return out;
    }
    let mut out_t = vec![0.0f32; n * rows];
    out_t
        .par_chunks_mut(COLUMNS_PER_TASK * rows)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (c, out_col) in chunk.chunks_exact_mut(rows).enumerate() {
                let j = task * COLUMNS_PER_TASK + c;
                let w_row = &w[j * row_bytes..(j + 1) * row_bytes];
                activations::dot_rows(ty, w_row, &inputs, out_col);
            }
        });
    if rows == 1 {
        return out_t;
    }
    // Transposed in 16 x 16 tiles: a plain loop strides one side by a whole
    // row (n floats), touching a new cache line (and often page) per value.
    const TILE: usize = 16;
    let mut data = vec![0.0; n * rows];
    for j0 in (0..n).step_by(TILE) {
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for j in j0..(j0 + TILE).min(n) {
                    data[r * n + j] = out_t[j * rows + r];
                }
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::quant::tests::{BLOCK_TYPES, noise, random_row};

    #[test]
    fn matmul_rows_equals_dot_rows_per_weight_row_bit_for_bit() {
        let k_types = [
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q5K,
        ];
        for ty in BLOCK_TYPES.into_iter().chain(k_types) {
            let (k, n) = (512, 70);
            let w = if kquants::is_k_quant(ty) {
                kquants::tests::random_k_row(ty, n * k / kquants::QK_K, 3)
            } else {
                random_row(ty, n * k / quant::QK, 3)
            };
            let row_bytes = ty.row_bytes(k).expect("whole blocks");
            for rows in [1, 6] {
                let x: Vec<f32> = noise(rows as u64, rows * k)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let out = matmul_rows(ty, &w, k, n, &x);
                let a: Vec<_> = x.chunks_exact(k).map(|xr| activations::quantize(ty, xr)).collect();
                for j in 0..n {
                    let mut expected = vec![0.0; rows];
                    activations::dot_rows(ty, &w[j * row_bytes..(j + 1) * row_bytes], &a, &mut expected);
                    for (r, e) in expected.iter().enumerate() {
                        assert_eq!(out[r * n + j].to_bits(), e.to_bits(), "{ty} rows {rows} ({r}, {j})");
                    }
                }
            }
        }
    }
}
