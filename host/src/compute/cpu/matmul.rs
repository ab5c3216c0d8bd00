//! The CPU's matrix products: each input row quantized once for the weight
//! type, every weight row read once for all rows of a batch, spread over the
//! pool by columns. A lone row takes the table's row kernel; prompts take
//! the panel kernels where the CPU has them; otherwise each weight row is
//! multiplied with the rows span by span, so that a sequence's results do
//! not depend on its company.

use rayon::prelude::*;

use super::kernels::{Activations, TypeKernels, features, kquant, q32};
use crate::compute::gguf::GgmlType;

/// Output columns per parallel task of a matrix product.
const COLUMNS_PER_TASK: usize = 32;

/// One input row times every weight row with the table's vector row kernel
/// (what `TypeKernels::dot` runs per row). None where the type has no such
/// kernel on this CPU.
fn matvec(k: &TypeKernels, w: &[u8], row_bytes: usize, n: usize, x: &Activations) -> Option<Vec<f32>> {
    match x {
        Activations::Q8(blocks) => Some(rows_times(k.q32_row()?, w, row_bytes, n, blocks)),
        Activations::Q8K(blocks) => Some(rows_times(k.kquant_row()?, w, row_bytes, n, blocks)),
        _ => None,
    }
}

/// Every one of the `n` weight rows times `blocks`, with `kernel`, in parallel.
/// `kernel` comes from the kernel table, which checked the CPU's features.
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
                // SAFETY: the table checked the CPU features; the row is whole blocks.
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
fn dot_spans(k: &TypeKernels, w_row: &[u8], inputs: &[Activations], split: &SpanSplit, out_col: &mut [f32]) {
    for rows in split.singles.chunks(4) {
        let mut xs = [&inputs[rows[0]]; 4];
        for (x, &r) in xs.iter_mut().zip(rows) {
            *x = &inputs[r];
        }
        let mut out = [0.0f32; 4];
        k.dot_each(w_row, &xs[..rows.len()], &mut out[..rows.len()]);
        for (&r, &v) in rows.iter().zip(&out) {
            out_col[r] = v;
        }
    }
    for &(first, len) in &split.others {
        let span = first..first + len;
        k.dot_rows(w_row, &inputs[span.clone()], &mut out_col[span]);
    }
}

/// `matmul_rows` over rows that come in `spans` (first row, row count), one
/// per sequence of a batch. Each weight row is read once for all of them, but
/// each span's rows are multiplied as `matmul_rows` multiplies them alone:
/// the K-quant products take their float order from the number of rows (as
/// llama.cpp's kernels do), so a sequence's results do not depend on its
/// company. The other types keep one order, and their rows go together.
///
/// Panics for a type the CPU has no kernels for: `CpuBackend::supports`
/// refuses graphs with such weights when they are compiled.
pub fn matmul_spans(ty: GgmlType, w: &[u8], k: usize, n: usize, x: &[f32], spans: &[(usize, usize)]) -> Vec<f32> {
    let kernels = TypeKernels::of(ty).unwrap_or_else(|| panic!("the CPU backend has no kernels for {ty}"));
    let row_bytes = ty.row_bytes(k).unwrap_or(0);
    let rows = x.len() / k;
    let inputs: Vec<Activations> = if rows == 1 {
        vec![kernels.quantize(x)]
    } else {
        x.par_chunks_exact(k).map(|row| kernels.quantize(row)).collect()
    };
    if rows == 1
        && let Some(out) = matvec(kernels, w, row_bytes, n, &inputs[0])
    {
        return out;
    }
    let mut data = vec![0.0f32; n * rows];
    let mut out = Product::new(&mut data, rows, n);
    if !panels(kernels, w, row_bytes, &inputs, &mut out) && !k_panels(kernels, w, row_bytes, &inputs, spans, &mut out) {
        let whole = [(0, rows)];
        let split = SpanSplit::of(if kernels.order_depends_on_rows() {
            spans
        } else {
            &whole[..]
        });
        out.by_columns(|first, columns, out| {
            let mut col = vec![0.0; rows];
            for c in 0..columns {
                let j = first + c;
                dot_spans(
                    kernels,
                    &w[j * row_bytes..(j + 1) * row_bytes],
                    &inputs,
                    &split,
                    &mut col,
                );
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

/// `inputs` times every weight row into `out` with the panel kernels of the
/// 32-value types (`q32::panel`), where this CPU has them and there are at
/// least four rows; false otherwise (nothing written). Every result is bit
/// for bit `dot_rows`'s, whatever the rows' company (these types keep one
/// order for any row count).
fn panels(k: &TypeKernels, w: &[u8], row_bytes: usize, inputs: &[Activations], out: &mut Product) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use q32::panel::{GROUP_ROWS, PANEL_ROWS};
        let (ty, rows) = (k.ty, inputs.len());
        let Some((pack, kernel)) = q32::panel::kernels(ty).filter(|_| rows >= GROUP_ROWS) else {
            return false;
        };
        let Some(blocks) = inputs.iter().map(Activations::q8).collect::<Option<Vec<_>>>() else {
            return false;
        };
        let groups: Vec<_> = blocks
            .par_chunks(GROUP_ROWS)
            .map(|group| q32::panel::interleave(ty, group))
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
                k.dot_rows(&w[j * row_bytes..(j + 1) * row_bytes], inputs, &mut col);
                out.set_column(c, &col);
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, w, row_bytes, inputs, out);
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
    const PANEL_ROWS: usize = q32::panel::PANEL_ROWS;
    const _: () = assert!(kquant::panel::PANEL_ROWS == PANEL_ROWS);
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
            features::prefetch(ahead.next().unwrap_or_default());
            run(&panel, p, g);
        }
    }
}

/// `panels` for the K-quants with panel kernels (`kquant::panel`: Q4_K, Q6_K),
/// span by span: each sequence's rows in the order llama.cpp gives them alone.
/// Q4_K's whole groups of four rows take the gemm kernel and the rest
/// `dot_rows` (the gemv order); Q6_K's spans of eight rows and more take the
/// tiled kernel (the last group padded with its last row), shorter ones
/// `dot_rows`. False where this CPU or type has no such kernels.
fn k_panels(
    k: &TypeKernels,
    w: &[u8],
    row_bytes: usize,
    inputs: &[Activations],
    spans: &[(usize, usize)],
    out: &mut Product,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use kquant::panel::{GROUP_ROWS, PANEL_ROWS};
        let (ty, rows) = (k.ty, inputs.len());
        let Some((pack, kernel)) = kquant::panel::kernels(ty) else {
            return false;
        };
        let Some(blocks) = inputs.iter().map(Activations::q8k).collect::<Option<Vec<_>>>() else {
            return false;
        };
        // Groups of four rows (first row, rows written), and the rows left
        // to `dot_rows`, span by span.
        let mut groups = Vec::new();
        let mut rest = Vec::new();
        for &(first, len) in spans {
            let covered = match ty {
                GgmlType::Q4K => len / GROUP_ROWS * GROUP_ROWS,
                _ if k.is_tiled(len) => len,
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
                dot_spans(k, w_row, inputs, todo, &mut col);
                out.set_rows(c, &col, todo);
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (k, w, row_bytes, inputs, spans, out);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quant::testing::{BLOCK_TYPES, K_TYPES, noise, random_any_row};

    #[test]
    fn matmul_rows_equals_dot_rows_per_weight_row_bit_for_bit() {
        for ty in BLOCK_TYPES.into_iter().chain(K_TYPES) {
            let kernels = TypeKernels::of(ty).expect("a CPU type");
            let (k, n) = (512, 70);
            let w = random_any_row(ty, n * k, 3);
            let row_bytes = ty.row_bytes(k).expect("whole blocks");
            for rows in [1, 6] {
                let x: Vec<f32> = noise(rows as u64, rows * k)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let out = matmul_rows(ty, &w, k, n, &x);
                let a: Vec<_> = x.chunks_exact(k).map(|xr| kernels.quantize(xr)).collect();
                for j in 0..n {
                    let mut expected = vec![0.0; rows];
                    kernels.dot_rows(&w[j * row_bytes..(j + 1) * row_bytes], &a, &mut expected);
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
            let w = random_any_row(ty, n * k, 5);
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
