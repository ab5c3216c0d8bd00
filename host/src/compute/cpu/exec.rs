//! Executes a compiled step graph for a batch of sequences: embeddings,
//! norms, matmuls and activations over the rows of all of them at once (one
//! pass over each weight), RoPE at each row's own position, and per sequence
//! the KV append and attention over its own cache. Activations are freed
//! after their last use.

use half::f16;
use rayon::prelude::*;

use super::elementwise::{self, Rope};
use super::{attention, vmath};
use crate::compute::graph::{self, Attention, CompiledGraph, Node, TensorId};
use crate::compute::{ComputeError, Rows, Sequence};

/// A value: `rows` rows of `cols` f32s.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

/// The step's output: one row per sequence.
pub fn execute(g: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Matrix, ComputeError> {
    let rows = Rows::of(batch);
    let tokens: Vec<u32> = batch.iter().flat_map(|s| s.tokens.iter().copied()).collect();
    let mut values: Vec<Option<Matrix>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let value = match node {
            Node::Embed { table } => Matrix {
                rows: tokens.len(),
                cols: g.tensor(*table).row_len(),
                data: g.token_rows(*table, &tokens),
            },
            Node::RmsNorm {
                input,
                weight,
                eps,
                group,
            } => {
                let mut m = copy(get(&values, *input)?);
                let w = weight.map(|w| g.vector(w));
                let cols = m.cols;
                per_row(&mut m.data, cols, |_, row| {
                    elementwise::rms_norm(row, *group, *eps, w.as_deref())
                });
                m
            }
            Node::Matmul { input, weight } => {
                let spans = rows.spans_of(g.single_row[*input]);
                matmul(g, *weight, get(&values, *input)?, &spans)
            }
            Node::AddTensor { input, tensor } => {
                let mut m = copy(get(&values, *input)?);
                let t = g.vector(*tensor);
                let cols = m.cols;
                per_row(&mut m.data, cols, |_, row| {
                    row.iter_mut().zip(&t).for_each(|(x, b)| *x += b)
                });
                m
            }
            Node::Add(a, b) => zip(get(&values, *a)?, get(&values, *b)?, |x, y| x + y),
            Node::Mul(a, b) => zip(get(&values, *a)?, get(&values, *b)?, |x, y| x * y),
            Node::Swiglu(a, b) => glu(get(&values, *a)?, get(&values, *b)?, vmath::swiglu_row),
            Node::Geglu(a, b) => glu(get(&values, *a)?, get(&values, *b)?, elementwise::geglu_row),
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
                let positions = rows.positions_of(g.single_row[*input]);
                per_row(&mut m.data, cols, |r, row| rope.apply(row, positions[r]));
                m
            }
            Node::Attention(a) => {
                let (q, k, v) = (get(&values, a.q)?, get(&values, a.k)?, get(&values, a.v)?);
                let mut out = vec![0.0; q.rows * q.cols];
                for (seq, &(first, n)) in batch.iter_mut().zip(&rows.spans) {
                    append_kv(a.layer, seq, (k, v), first, n);
                }
                // One parallel pass over the sequences (each also parallel
                // over its heads): one join per layer, not one per sequence.
                let mut outs = Vec::with_capacity(batch.len());
                let mut rest = out.as_mut_slice();
                for &(_, n) in &rows.spans {
                    let (head, tail) = rest.split_at_mut(n * q.cols);
                    outs.push(head);
                    rest = tail;
                }
                batch
                    .par_iter()
                    .zip(&rows.spans)
                    .zip(outs)
                    .for_each(|((seq, &(first, n)), out)| attend(a, seq, q, first, n, out));
                Matrix {
                    rows: q.rows,
                    cols: q.cols,
                    data: out,
                }
            }
            Node::LastRow(input) => {
                let m = get(&values, *input)?;
                if g.single_row[*input] {
                    copy(m)
                } else {
                    let data = rows
                        .spans
                        .iter()
                        .flat_map(|&(first, n)| &m.data[(first + n - 1) * m.cols..(first + n) * m.cols])
                        .copied()
                        .collect();
                    Matrix {
                        rows: rows.spans.len(),
                        cols: m.cols,
                        data,
                    }
                }
            }
        };
        values.push(Some(value));
        for input in graph::inputs(node) {
            if g.last_use[input] == i {
                values[input] = None;
            }
        }
    }
    let output = values
        .pop()
        .flatten()
        .ok_or_else(|| ComputeError::Internal("graph produced no output".into()))?;
    Ok(output)
}

/// Appends a sequence's keys and values (rows `first..first + n` of `k` and
/// `v`) to its cache at its positions.
fn append_kv(layer: usize, seq: &mut Sequence<'_>, (k, v): (&Matrix, &Matrix), first: usize, n: usize) {
    let start = seq.start as usize;
    let width = seq.cache.width();
    let (keys, vals) = seq.cache.layer_mut(layer, start + n);
    write_f16(
        &mut keys[start * width..],
        &k.data[first * k.cols..(first + n) * k.cols],
    );
    write_f16(
        &mut vals[start * width..],
        &v.data[first * v.cols..(first + n) * v.cols],
    );
}

/// A sequence's queries (rows `first..first + n` of `q`) attending to its cache.
fn attend(a: &Attention, seq: &Sequence<'_>, q: &Matrix, first: usize, n: usize, out: &mut [f32]) {
    let start = seq.start as usize;
    let (keys, vals) = seq.cache.layer(a.layer, start + n);
    attention::attention(a, &q.data[first * q.cols..(first + n) * q.cols], keys, vals, start, out);
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
    let mut data = vec![0.0; a.data.len()];
    per_row(&mut data, a.cols, |r, out| {
        let at = r * a.cols..(r + 1) * a.cols;
        for ((o, &x), &y) in out.iter_mut().zip(&a.data[at.clone()]).zip(&b.data[at]) {
            *o = f(x, y);
        }
    });
    Matrix {
        rows: a.rows,
        cols: a.cols,
        data,
    }
}

/// A gated unit: `row(gate, up, out)` over each row, rows in parallel.
fn glu(gate: &Matrix, up: &Matrix, row: fn(&[f32], &[f32], &mut [f32])) -> Matrix {
    let cols = up.cols;
    let mut out = Matrix {
        rows: up.rows,
        cols,
        data: vec![0.0; up.data.len()],
    };
    per_row(&mut out.data, cols, |r, o| {
        let at = r * cols..(r + 1) * cols;
        row(&gate.data[at.clone()], &up.data[at], o)
    });
    out
}

/// `f(r, row)` for every row `r` of `data` (rows of `cols`): in parallel
/// for several rows (a prompt), in place for one (decode, where a parallel
/// loop would cost more than the row). Rows are independent, so the results
/// are the same either way.
fn per_row(data: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if data.len() > cols {
        data.par_chunks_mut(cols).enumerate().for_each(|(r, row)| f(r, row));
    } else {
        data.chunks_mut(cols).enumerate().for_each(|(r, row)| f(r, row));
    }
}

fn write_f16(dst: &mut [f16], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = f16::from_f32(s));
}

/// `x . W^T` for a [n, k] weight in its stored type; `spans` are the
/// sequences' rows of `x`.
fn matmul(g: &CompiledGraph, weight: TensorId, x: &Matrix, spans: &[(usize, usize)]) -> Matrix {
    let t = g.tensor(weight);
    let (k, n) = (t.row_len(), t.rows());
    let data = super::matmul::matmul_spans(t.ggml_type, g.model.data(t), k, n, &x.data, spans);
    Matrix {
        rows: x.rows,
        cols: n,
        data,
    }
}
