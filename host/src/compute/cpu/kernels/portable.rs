//! The portable dot products of every quantized type, in the float order of
//! the kernel llama.cpp's x86 build (AVX-512, at 0c1e570) runs for the
//! product at hand; the vector kernels (`q32`, `kquant`) equal them bit for
//! bit. The 32-value types keep ggml's eight lanes of four products. The
//! K-quants take their order from the rows multiplied together: one
//! activation row, rows in groups of four (repacked Q4_K), or eight rows and
//! more (the tiled kernel). The integer work is exact in every order; only
//! the f32 steps differ.

use half::f16;

use crate::compute::gguf::GgmlType;
use crate::compute::quant::blocks::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, block, fives};
use crate::compute::quant::kquants::{Q4K_BYTES, Q6K_BYTES, decode};
use crate::compute::quant::q8::{BlockQ8, BlockQ8K};
use crate::compute::quant::{GROUPS, QK, QK_K};

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
    hsum_float_8(&acc)
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
pub fn dot_tiled_portable(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> f32 {
    let mut acc = 0.0f32;
    for (block, y) in row.chunks_exact(ty.block_bytes()).zip(x) {
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
    for (block, y) in row.chunks_exact(ty.block_bytes()).zip(x) {
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

/// The portable row dot product, in the order of ggml's x86 kernels (which
/// `q32`'s kernels run where they can, with the same results): per block, eight
/// lanes of four adjacent integer products, times `d * y.d` fused into eight
/// f32 accumulators; the lanes summed pairwise at the end (`hsum_float_8`),
/// then the mins `m * y.s` of Q4_1 and Q5_1 (exact in f32) added.
pub fn dot_blocks(ty: GgmlType, row: &[u8], blocks: &[BlockQ8]) -> f32 {
    let has_min = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1);
    let mut acc = [0.0f32; 8];
    let mut mins = 0.0f32;
    for (w, y) in row.chunks_exact(ty.block_bytes()).zip(blocks) {
        let x = block_quants(ty, w);
        let d = f16_at(w, 0) * y.d;
        for (lane, a) in acc.iter_mut().enumerate() {
            let sum: i32 = (4 * lane..4 * lane + 4).map(|j| x[j] * y.qs[j] as i32).sum();
            *a = d.mul_add(sum as f32, *a);
        }
        if has_min {
            mins += f16_at(w, 2) * y.s;
        }
    }
    let sum = hsum_float_8(&acc);
    if has_min { sum + mins } else { sum }
}

/// ggml's `hsum_float_8`: the upper four lanes added to the lower four, then
/// (0 + 2) + (1 + 3).
pub fn hsum_float_8(acc: &[f32; 8]) -> f32 {
    let half: [f32; 4] = std::array::from_fn(|i| acc[i + 4] + acc[i]);
    (half[0] + half[2]) + (half[1] + half[3])
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// A weight block's 32 quants in value order, as the integers ggml's kernels
/// multiply: `q - 8` for Q4_0, `q - 16` for Q5_0, the unsigned `q` of Q4_1 and
/// Q5_1 (their min is added apart), the signed bytes of Q8_0.
fn block_quants(ty: GgmlType, w: &[u8]) -> [i32; QK] {
    let nibbles = |qs: &[u8; 16], offset: i32| {
        let mut x = [0i32; QK];
        for (j, &q) in qs.iter().enumerate() {
            x[j] = (q & 0x0F) as i32 - offset;
            x[j + 16] = (q >> 4) as i32 - offset;
        }
        x
    };
    match ty {
        GgmlType::Q4_0 => nibbles(&block::<BlockQ4_0>(w).qs, 8),
        GgmlType::Q4_1 => nibbles(&block::<BlockQ4_1>(w).qs, 0),
        GgmlType::Q5_0 => {
            let b = block::<BlockQ5_0>(w);
            fives(b.qh, &b.qs).map(|q| q as i32 - 16)
        }
        GgmlType::Q5_1 => {
            let b = block::<BlockQ5_1>(w);
            fives(b.qh, &b.qs).map(|q| q as i32)
        }
        GgmlType::Q8_0 => block::<BlockQ8_0>(w).qs.map(i32::from),
        _ => unreachable!("block_quants on {ty}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quant::testing::{BLOCK_TYPES, random_row};

    /// ggml's per-element formula (`dequantize_row_*`) for quant `j` of a block.
    fn reference_quant(ty: GgmlType, w: &[u8], j: usize) -> i32 {
        let (lo, hi, at) = (j < 16, j >= 16, j % 16);
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 => {
                let q = w[if ty == GgmlType::Q4_0 { 2 } else { 4 } + at];
                let nibble = if lo { q & 0x0F } else { q >> 4 } as i32;
                if ty == GgmlType::Q4_0 { nibble - 8 } else { nibble }
            }
            GgmlType::Q5_0 | GgmlType::Q5_1 => {
                let rest = if ty == GgmlType::Q5_1 { &w[4..] } else { &w[2..] };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let q = rest[4 + at];
                let h = if hi {
                    (qh >> (at + 12)) & 0x10
                } else {
                    ((qh >> at) << 4) & 0x10
                };
                let x = (if lo { q & 0x0F } else { q >> 4 }) as u32 | h;
                x as i32 - if ty == GgmlType::Q5_0 { 16 } else { 0 }
            }
            _ => w[2 + j] as i8 as i32,
        }
    }

    #[test]
    fn block_quants_equal_ggml_formulas() {
        for ty in BLOCK_TYPES {
            for seed in 0..50 {
                let w = random_row(ty, 1, seed + 7);
                let expected: Vec<i32> = (0..QK).map(|j| reference_quant(ty, &w, j)).collect();
                assert_eq!(block_quants(ty, &w).to_vec(), expected, "{ty} seed {seed}");
            }
        }
    }
}
