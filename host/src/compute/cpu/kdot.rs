//! Dot products of K-quant rows with Q8_K activations, in the float order of
//! the kernel llama.cpp's x86 build (AVX-512, at 0c1e570) runs for the
//! product at hand: one activation row, rows in groups of four (repacked
//! Q4_K), or eight rows and more (the tiled kernel). The integer work is
//! exact in every order; only the f32 steps differ.

use super::kquants::{BlockQ8K, GROUPS, Q4K_BYTES, Q6K_BYTES, QK_K, block_bytes, decode};
use crate::compute::gguf::GgmlType;

/// `row . x` for a K-quant row and its activations quantized by `quantize_q8k`,
/// as llama.cpp's x86 build computes one activation row (see `dot_portable`):
/// the SIMD kernel where this CPU has one (bit-identical), else the portable loop.
pub fn dot(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    super::ksimd::row_dot(ty, row, x).unwrap_or_else(|| dot_portable(ty, row, x))
}

/// `dot` for four activation rows at once, as llama.cpp computes rows in
/// whole groups of four: Q4_K in `gemm_q4_K_8x8_q8_K`'s order (see `dot_q4k`),
/// the others as `dot`. None where neither a SIMD kernel nor a different
/// order calls for it (then `dot` per row is the same).
pub fn rows_dot4(ty: GgmlType, row: &[u8], x: [&[BlockQ8K]; 4]) -> Option<[f32; 4]> {
    super::ksimd::rows_dot4(ty, row, x)
        .or_else(|| (ty == GgmlType::Q4K).then(|| x.map(|x| dot_q4k(row, x, GEMM_GROUPS))))
}

/// Groups of 32 per fused step of llama.cpp's repacked Q4_K kernels: the whole
/// super-block in `gemv_q4_K_8x8_q8_K` (one activation row), two in
/// `gemm_q4_K_8x8_q8_K` (rows in groups of four). llama.cpp repacks the Q4_K
/// weights with a multiple of 8 rows (every one in the models tested here);
/// realm follows the repacked order for all.
pub const GEMV_GROUPS: usize = 8;
pub const GEMM_GROUPS: usize = 2;

/// The portable `dot`, in the order of the kernel llama.cpp's x86 build runs
/// for one activation row: Q4_K (repacked for AVX2) as `gemv_q4_K_8x8_q8_K`,
/// Q6_K as `ggml_vec_dot_q6_K_q8_K`. Q2_K, Q3_K and Q5_K per super-block in
/// two f32 steps, one exact integer sum of the scaled products and one of the
/// mins times the group sums (not ggml's order).
pub fn dot_portable(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    match ty {
        GgmlType::Q4K => dot_q4k(row, x, GEMV_GROUPS),
        GgmlType::Q6K => dot_q6k(row, x),
        _ => dot_two_steps(ty, row, x),
    }
}

/// Q4_K as llama.cpp's repacked kernels compute it: per step of `groups`
/// groups of 32 (`GEMV_GROUPS` or `GEMM_GROUPS`), the exact integer sums of
/// the scaled products and of the mins times the activations' group sums,
/// each fused into its f32 accumulator (`sum · (d · y.d) + acc`); the mins'
/// accumulator subtracted at the end.
pub fn dot_q4k(row: &[u8], x: &[BlockQ8K], groups: usize) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (block, y) in row.chunks_exact(Q4K_BYTES).zip(x) {
        let b = decode(GgmlType::Q4K, block);
        let (d, dmin) = (b.d * y.d, b.dmin * y.d);
        // Groups of 16 `2 * groups` at a time (the scales repeat over pairs).
        for step in (0..GROUPS).step_by(2 * groups) {
            let (mut sumi, mut summ) = (0i32, 0i32);
            for g in step..step + 2 * groups {
                let q16 = &b.q[16 * g..16 * g + 16];
                let y16 = &y.qs[16 * g..16 * g + 16];
                sumi += b.scales[g] * q16.iter().zip(y16).map(|(&a, &c)| a as i32 * c as i32).sum::<i32>();
                summ += b.mins[g] * y.bsums[g] as i32;
            }
            acc = d.mul_add(sumi as f32, acc);
            acc_min = dmin.mul_add(summ as f32, acc_min);
        }
    }
    acc - acc_min
}

/// Q6_K as `ggml_vec_dot_q6_K_q8_K` (AVX2): per super-block eight i32 lanes,
/// lane `l` the scaled products of the values at `p % 32 / 4 == l` with the
/// stored +32 kept, less 32 times the scaled group sums `2l, 2l + 1`; each
/// lane fused (`lane · (y.d · d) + acc`) into its f32 accumulator, the eight
/// summed once at the end (`hsum_float_8`).
fn dot_q6k(row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (block, y) in row.chunks_exact(Q6K_BYTES).zip(x) {
        let b = decode(GgmlType::Q6K, block);
        let d = y.d * b.d;
        for (l, a) in acc.iter_mut().enumerate() {
            let offset = y.bsums[2 * l] as i32 * b.scales[2 * l] + y.bsums[2 * l + 1] as i32 * b.scales[2 * l + 1];
            let products: i32 = (0..QK_K)
                .filter(|p| p % 32 / 4 == l)
                .map(|p| (b.q[p] as i32 + 32) * y.qs[p] as i32 * b.scales[p / 16])
                .sum();
            *a = d.mul_add((products - 32 * offset) as f32, *a);
        }
    }
    super::activations::hsum_float_8(&acc)
}

/// Activation rows from which llama.cpp's x86 build multiplies the K-quants
/// it does not repack (Q3_K, Q5_K, Q6_K) with its tiled kernel
/// (`ggml_compute_forward_mul_mat_tiled`) rather than `vec_dot`.
pub const TILED_MIN_ROWS: usize = 8;

/// Whether llama.cpp multiplies `ty` with `rows` activation rows in its tiled kernel.
pub fn is_tiled(ty: GgmlType, rows: usize) -> bool {
    rows >= TILED_MIN_ROWS && matches!(ty, GgmlType::Q3K | GgmlType::Q5K | GgmlType::Q6K)
}

/// `row . x` as llama.cpp's tiled kernel (AVX-512 VNNI build, as GCC
/// contracts it) computes it: per super-block the exact integer totals of the
/// scaled products `s1` (and of the mins times the group sums `s2`), then
/// `r = s1 · d` (less `dmin · s2`, fused) and `acc = r · y.d + acc` (fused).
pub fn dot_tiled(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    super::ksimd::row_dot_tiled(ty, row, x).unwrap_or_else(|| dot_tiled_portable(ty, row, x))
}

/// `dot_tiled` for four activation rows.
pub fn rows_dot4_tiled(ty: GgmlType, row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
    super::ksimd::rows_dot4_tiled(ty, row, x).unwrap_or_else(|| x.map(|x| dot_tiled(ty, row, x)))
}

/// The portable `dot_tiled`.
pub fn dot_tiled_portable(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (block, y) in row.chunks_exact(block_bytes(ty)).zip(x) {
        let b = decode(ty, block);
        let mut s1 = 0i32;
        for (g, (q16, y16)) in b.q.chunks_exact(16).zip(y.qs.chunks_exact(16)).enumerate() {
            s1 += b.scales[g] * q16.iter().zip(y16).map(|(&a, &c)| a as i32 * c as i32).sum::<i32>();
        }
        let mut r = s1 as f32 * b.d;
        if b.has_min {
            let s2: i32 = y.bsums.iter().zip(&b.mins).map(|(&s, m)| s as i32 * m).sum();
            r = (-b.dmin).mul_add(s2 as f32, r);
        }
        acc = r.mul_add(y.d, acc);
    }
    acc
}

/// Per super-block one exact integer sum of the scaled products (and one of
/// the mins times the group sums), then two f32 steps.
fn dot_two_steps(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    let mut acc_min = 0.0f32;
    for (block, y) in row.chunks_exact(block_bytes(ty)).zip(x) {
        let b = decode(ty, block);
        // Per group of 16: sum(q * q8), exact in i32 (|q| <= 63, |q8| <= 127).
        let mut groups = [0i32; GROUPS];
        for (s, (q16, y16)) in groups.iter_mut().zip(b.q.chunks_exact(16).zip(y.qs.chunks_exact(16))) {
            *s = q16.iter().zip(y16).map(|(&a, &c)| a as i32 * c as i32).sum();
        }
        let sumi: i32 = groups.iter().zip(&b.scales).map(|(s, sc)| s * sc).sum();
        acc += (y.d * b.d) * sumi as f32;
        if b.has_min {
            let summ: i32 = y.bsums.iter().zip(&b.mins).map(|(&s, m)| s as i32 * m).sum();
            acc_min += (-y.d * b.dmin) * summ as f32;
        }
    }
    acc + acc_min
}
