//! The CPU backend: executes a compiled step graph on a dedicated thread pool.
//! Matrix products run over the memory-mapped weights in their stored type.

pub mod activations;
pub mod attention;
/// `inputs` times every weight row into `out` with the panel kernels of the
/// 32-value types (`simd::panel`), where this CPU has them and there are at
/// least four rows; false otherwise (nothing written). Every result is bit
/// for bit `dot_rows`'s, whatever the rows' company (these types keep one
/// order for any row count).
fn panels(ty: GgmlType, w: &[u8], row_bytes: usize, inputs: &[Activations], out: &mut Product) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use simd::panel::{GROUP_ROWS, PANEL_ROWS};
        let rows = inputs.len();
        let Some((pack, kernel)) = simd::panel::kernels(ty).filter(|_| rows >= GROUP_ROWS) else {
            return false;
        };
        let blocks: Vec<&[activations::BlockQ8]> = inputs
            .iter()
            .filter_map(|a| match a {
                Activations::Q8(b) => Some(&b[..]),
                _ => None,
            })
            .collect();
        if blocks.len() != rows {
            return false;
        }
        let groups: Vec<_> = blocks
            .par_chunks(GROUP_ROWS)
            .map(|group| simd::panel::interleave(ty, group))
            .collect();
        out.by_columns(|first, columns, out| {
            let whole = columns / PANEL_ROWS * PANEL_ROWS;
            walk_panels(
                w,
                row_bytes,
                first..first + whole,
                groups.len(),
                // SAFETY: `kernels` checked the CPU features; the panel's
                // eight rows lie within `w`.
                |rows, panel| unsafe { pack(rows, row_bytes, panel) },
                |panel, p, g| {
                    let mut sums = [[0.0f32; PANEL_ROWS]; GROUP_ROWS];
                    // SAFETY: as above; every group has the row's blocks.
                    unsafe { kernel(panel, &groups[g], &mut sums) };
                    for (j, s) in sums.iter().enumerate().take(rows - g * GROUP_ROWS) {
                        out.set_run(g * GROUP_ROWS + j, p, s);
                    }
                },
            );
            let mut col = vec![0.0; rows];
            for c in whole..columns {
                let j = first + c;
                activations::dot_rows(ty, &w[j * row_bytes..(j + 1) * row_bytes], inputs, &mut col);
                out.set_column(c, &col);
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, w, row_bytes, inputs, out);
        false
    }
}

/// The whole panels of `PANEL_ROWS` weight rows among `columns` (weight rows
/// of `w`, a task's): each packed by `pack` into a panel, then `run(panel,
/// p, g)` for each of `groups` groups of input rows, `p` the panel's first
/// column within the task. The next panel's rows come in while the groups
/// run, a share before each: packing waited on memory for eight rows at a
/// time (eight streams, each cut by every 4 KiB page of the mapped file,
/// which the hardware prefetcher does not cross), and asking for all of
/// them at once filled the line buffers.
#[cfg(target_arch = "x86_64")]
fn walk_panels<P>(
    w: &[u8],
    row_bytes: usize,
    columns: std::ops::Range<usize>,
    groups: usize,
    pack: impl Fn(&[u8], &mut Vec<P>),
    mut run: impl FnMut(&[P], usize, usize),
) {
    const PANEL_ROWS: usize = simd::panel::PANEL_ROWS;
    const _: () = assert!(ksimd::panel::PANEL_ROWS == PANEL_ROWS);
    let mut panel = Vec::new();
    for p in (0..columns.len()).step_by(PANEL_ROWS) {
        let at = (columns.start + p) * row_bytes;
        pack(&w[at..at + PANEL_ROWS * row_bytes], &mut panel);
        let next = if p + 2 * PANEL_ROWS <= columns.len() {
            &w[at + PANEL_ROWS * row_bytes..at + 2 * PANEL_ROWS * row_bytes]
        } else {
            &[]
        };
        let share = next.len().div_ceil(groups.max(1)).next_multiple_of(64).max(64);
        let mut ahead = next.chunks(share);
        for g in 0..groups {
            simd::prefetch(ahead.next().unwrap_or_default());
            run(&panel, p, g);
        }
    }
}

/// `panels` for the K-quants with panel kernels (`ksimd::panel`: Q4_K, Q6_K),
/// span by span: each sequence's rows in the order llama.cpp gives them alone.
/// Q4_K's whole groups of four rows take the gemm kernel and the rest
/// `dot_rows` (the gemv order); Q6_K's spans of eight rows and more take the
/// tiled kernel (the last group padded with its last row), shorter ones
/// `dot_rows`. False where this CPU or type has no such kernels.
fn k_panels(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    inputs: &[Activations],
    spans: &[(usize, usize)],
    out: &mut Product,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use ksimd::panel::{GROUP_ROWS, PANEL_ROWS};
        let rows = inputs.len();
        let Some((pack, kernel)) = ksimd::panel::kernels(ty) else {
            return false;
        };
        let blocks: Vec<&[kquants::BlockQ8K]> = inputs
            .iter()
            .filter_map(|a| match a {
                Activations::Q8K(b) => Some(&b[..]),
                _ => None,
            })
            .collect();
        if blocks.len() != rows {
            return false;
        }
        // Groups of four rows (first row, rows written), and the rows left
        // to `dot_rows`, span by span.
        let mut groups = Vec::new();
        let mut rest = Vec::new();
        for &(first, len) in spans {
            let covered = match ty {
                GgmlType::Q4K => len / GROUP_ROWS * GROUP_ROWS,
                _ if kdot::is_tiled(ty, len) => len,
                _ => 0,
            };
            for g in (0..covered).step_by(GROUP_ROWS) {
                groups.push((first + g, GROUP_ROWS.min(covered - g)));
            }
            if covered < len {
                rest.push((first + covered, len - covered));
            }
        }
        if groups.is_empty() {
            return false;
        }
        let (rest, all) = (SpanSplit::of(&rest), SpanSplit::of(spans));
        out.by_columns(|first, columns, out| {
            let whole = columns / PANEL_ROWS * PANEL_ROWS;
            walk_panels(
                w,
                row_bytes,
                first..first + whole,
                groups.len(),
                |rows, panel| pack(rows, row_bytes, panel),
                |panel, p, g| {
                    let (r0, n) = groups[g];
                    let ys = std::array::from_fn(|j| blocks[r0 + j.min(n - 1)]);
                    let mut sums = [[0.0f32; PANEL_ROWS]; GROUP_ROWS];
                    // SAFETY: `kernels` checked the CPU features; every
                    // row has the panel's blocks.
                    unsafe { kernel(panel, ys, &mut sums) };
                    for (j, s) in sums.iter().enumerate().take(n) {
                        out.set_run(r0 + j, p, s);
                    }
                },
            );
            let mut col = vec![0.0; rows];
            for c in 0..columns {
                let j = first + c;
                let w_row = &w[j * row_bytes..(j + 1) * row_bytes];
                let todo = if c < whole { &rest } else { &all };
                if todo.is_empty() {
                    continue;
                }
                dot_spans(ty, w_row, inputs, todo, &mut col);
                out.set_rows(c, &col, todo);
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, w, row_bytes, inputs, spans, out);
        false
    }
}

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
use super::graph::{Attention, CompiledGraph, Node, TensorId};
use super::{Backend, ComputeError, Rows, Sequence, StepOutput};
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

    fn run_batch(&self, graph: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Vec<StepOutput>, ComputeError> {
        let kinds: Vec<_> = batch.iter().map(|s| s.output).collect();
        self.pool.install(|| {
            let output = execute(graph, batch)?;
            Ok(output
                .data
                .par_chunks_exact(output.cols)
                .zip(kinds)
                .map(|(row, kind)| super::shape_output(row, kind))
                .collect())
        })
    }
}

/// A value: `rows` rows of `cols` f32s.
struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// The step's output: one row per sequence.
fn execute(g: &CompiledGraph, batch: &mut [Sequence<'_>]) -> Result<Matrix, ComputeError> {
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
                    kernels::rms_norm(row, *group, *eps, w.as_deref())
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
            Node::Geglu(a, b) => glu(get(&values, *a)?, get(&values, *b)?, kernels::geglu_row),
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
    kernels::attention(a, &q.data[first * q.cols..(first + n) * q.cols], keys, vals, start, out);
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

/// `f(r, row)` for every row `r` of `data` (rows of `cols`): in parallel
/// for several rows (a prompt), in place for one (decode, where a parallel
/// loop would cost more than the row). Rows are independent, so the results
/// are the same either way.
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
    let data = matmul_spans(t.ggml_type, g.model.data(t), k, n, &x.data, spans);
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
    matmul_spans(ty, w, k, n, x, &[(0, x.len() / k)])
}

/// A batch's spans as `dot_spans` takes them: the rows of one-row spans
/// (decode steps), when there are several, and the other spans.
struct SpanSplit {
    singles: Vec<usize>,
    others: Vec<(usize, usize)>,
}

impl SpanSplit {
    fn is_empty(&self) -> bool {
        self.singles.is_empty() && self.others.is_empty()
    }

    fn of(spans: &[(usize, usize)]) -> Self {
        let ones = spans.iter().filter(|s| s.1 == 1).count();
        let single = |s: &&(usize, usize)| s.1 == 1 && ones > 1;
        Self {
            singles: spans.iter().filter(single).map(|s| s.0).collect(),
            others: spans.iter().filter(|s| !single(s)).copied().collect(),
        }
    }
}

/// One weight row times the rows of `split` into `out_col`, each span as
/// `dot_rows` multiplies it alone: the one-row spans keep the single-row
/// order and go four at a time, sharing the weight row's unpacking.
fn dot_spans(ty: GgmlType, w_row: &[u8], inputs: &[Activations], split: &SpanSplit, out_col: &mut [f32]) {
    for rows in split.singles.chunks(4) {
        let mut xs = [&inputs[rows[0]]; 4];
        for (x, &r) in xs.iter_mut().zip(rows) {
            *x = &inputs[r];
        }
        let mut out = [0.0f32; 4];
        activations::dot_each(ty, w_row, &xs[..rows.len()], &mut out[..rows.len()]);
        for (&r, &v) in rows.iter().zip(&out) {
            out_col[r] = v;
        }
    }
    for &(first, len) in &split.others {
        let span = first..first + len;
        activations::dot_rows(ty, w_row, &inputs[span.clone()], &mut out_col[span]);
    }
}

/// `matmul_rows` over rows that come in `spans` (first row, row count), one
/// per sequence of a batch. Each weight row is read once for all of them, but
/// each span's rows are multiplied as `matmul_rows` multiplies them alone:
/// the K-quant products take their float order from the number of rows (as
/// llama.cpp's kernels do), so a sequence's results do not depend on its
/// company. The other types keep one order, and their rows go together.
pub fn matmul_spans(ty: GgmlType, w: &[u8], k: usize, n: usize, x: &[f32], spans: &[(usize, usize)]) -> Vec<f32> {
    let row_bytes = ty.row_bytes(k).unwrap_or(0);
    let rows = x.len() / k;
    let inputs: Vec<Activations> = if rows == 1 {
        vec![activations::quantize(ty, x)]
    } else {
        x.par_chunks_exact(k)
            .map(|row| activations::quantize(ty, row))
            .collect()
    };
    if rows == 1
        && let Some(out) = matvec(ty, w, row_bytes, n, &inputs[0])
    {
        return out;
    }
    let mut data = vec![0.0f32; n * rows];
    let mut out = Product::new(&mut data, rows, n);
    if !panels(ty, w, row_bytes, &inputs, &mut out) && !k_panels(ty, w, row_bytes, &inputs, spans, &mut out) {
        let whole = [(0, rows)];
        let split = SpanSplit::of(if kquants::is_k_quant(ty) { spans } else { &whole[..] });
        out.by_columns(|first, columns, out| {
            let mut col = vec![0.0; rows];
            for c in 0..columns {
                let j = first + c;
                dot_spans(ty, &w[j * row_bytes..(j + 1) * row_bytes], &inputs, &split, &mut col);
                out.set_column(c, &col);
            }
        });
    }
    data
}

/// A matrix product's `[rows, n]` result, filled by parallel tasks that each
/// own `COLUMNS_PER_TASK` columns and write them in place: the kernels give
/// eight columns of a row at a time, which land as one run, with no
/// transposed copy of the whole result to make and turn back.
struct Product<'a> {
    data: &'a mut [f32],
    rows: usize,
    n: usize,
}

/// One task's columns of a `Product`: `first..first + columns`.
struct TaskColumns {
    data: *mut f32,
    rows: usize,
    n: usize,
    first: usize,
    columns: usize,
}

// SAFETY: a `TaskColumns` writes only its own columns (checked in each
// method), and every task has different ones.
unsafe impl Send for TaskColumns {}

impl<'a> Product<'a> {
    fn new(data: &'a mut [f32], rows: usize, n: usize) -> Self {
        assert_eq!(data.len(), rows * n);
        Self { data, rows, n }
    }

    /// Runs `task(first, columns, out)` over the columns in parallel.
    fn by_columns(&mut self, task: impl Fn(usize, usize, &mut TaskColumns) + Sync + Send) {
        let (rows, n, base) = (self.rows, self.n, self.data.as_mut_ptr() as usize);
        (0..n.div_ceil(COLUMNS_PER_TASK)).into_par_iter().for_each(|t| {
            let first = t * COLUMNS_PER_TASK;
            let columns = COLUMNS_PER_TASK.min(n - first);
            let mut out = TaskColumns {
                data: base as *mut f32,
                rows,
                n,
                first,
                columns,
            };
            task(first, columns, &mut out);
        });
    }
}

impl TaskColumns {
    /// Row `row`, the task's columns `c..c + values.len()`.
    fn set_run(&mut self, row: usize, c: usize, values: &[f32]) {
        assert!(row < self.rows && c + values.len() <= self.columns);
        // SAFETY: the row is in the product, whose size `Product::new`
        // checked, and the columns are this task's (both checked).
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                self.data.add(row * self.n + self.first + c),
                values.len(),
            )
        };
    }

    /// Column `c` of the task, every row.
    fn set_column(&mut self, c: usize, values: &[f32]) {
        for (row, v) in values.iter().enumerate() {
            self.set_run(row, c, std::slice::from_ref(v));
        }
    }

    /// Column `c` of the task, the rows of `split` only.
    fn set_rows(&mut self, c: usize, values: &[f32], split: &SpanSplit) {
        for &row in &split.singles {
            self.set_run(row, c, &values[row..row + 1]);
        }
        for &(first, len) in &split.others {
            for row in first..first + len {
                self.set_run(row, c, &values[row..row + 1]);
            }
        }
    }
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

    /// A batch's rows give each sequence what it gets alone: one decode row
    /// beside others, or a prompt of 9 rows beside decode rows (the K-quants
    /// take other kernels at 1, 4 and 8 rows).
    #[test]
    fn a_sequence_in_a_batch_gets_its_rows_as_alone() {
        for ty in [
            GgmlType::Q4K,
            GgmlType::Q6K,
            GgmlType::Q5K,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
        ] {
            let (k, n) = (512, 40);
            let w = if kquants::is_k_quant(ty) {
                kquants::tests::random_k_row(ty, n * k / kquants::QK_K, 5)
            } else {
                random_row(ty, n * k / quant::QK, 5)
            };
            let x: Vec<f32> = noise(11, 13 * k).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
            // A prompt beside decode rows; then decode rows only (six: a
            // group of four sharing the unpacking, and two more).
            let mixed = vec![(0, 1), (1, 9), (10, 1), (11, 1), (12, 1)];
            let decodes: Vec<(usize, usize)> = (0..6).map(|r| (r, 1)).collect();
            for spans in [mixed, decodes] {
                let rows = spans.iter().map(|s| s.0 + s.1).max().unwrap_or(0);
                let batched = matmul_spans(ty, &w, k, n, &x[..rows * k], &spans);
                for &(first, len) in &spans {
                    let alone = matmul_rows(ty, &w, k, n, &x[first * k..(first + len) * k]);
                    let got = &batched[first * n..(first + len) * n];
                    let same = got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{ty}: the sequence at row {first} ({len} rows) differs batched");
                }
            }
        }
    }
}
