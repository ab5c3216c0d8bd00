//! Activations in the form a weight type's dot product consumes them, as ggml
//! does (its `vec_dot_type`): 32-value blocks of i8 with an f16 scale for the
//! 32-value quantized weight types, 256-value Q8_K blocks (f32 scale, i16 group
//! sums) for the K-quants, f16 or bf16 for half-precision weights. Quantizing
//! each input row once per matrix product is what makes integer dot products
//! possible, and it keeps realm's logits within rounding of llama.cpp's.

use half::{bf16, f16};

use super::kdot;
use super::kquants::{self, BlockQ8K};
use super::quant::{self, QK};
use super::simd;
use crate::compute::gguf::GgmlType;

/// A block of 32 activations: `x ~= d * qs`, and `s = d * sum(qs)` (Q8_1).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    /// The exact sum of `qs`.
    pub sum: i32,
    pub qs: [i8; QK],
}

pub enum Activations {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Q8(Vec<BlockQ8>),
    /// 256-value blocks, for the K-quants.
    Q8K(Vec<BlockQ8K>),
}

fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Quantizes a row of activations for dot products with `weights`-typed rows.
pub fn quantize(weights: GgmlType, x: &[f32]) -> Activations {
    match weights {
        GgmlType::F32 => Activations::F32(x.to_vec()),
        GgmlType::F16 => Activations::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
        GgmlType::Bf16 => Activations::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
        _ if kquants::is_k_quant(weights) => Activations::Q8K(kquants::quantize_q8k(x)),
        _ => Activations::Q8(quantize_blocks(x)),
    }
}

fn quantize_blocks(x: &[f32]) -> Vec<BlockQ8> {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { quantize_blocks_avx2(x) };
    }
    x.chunks_exact(QK).map(quantize_block).collect()
}

/// `quantize_block` in AVX2 vectors, as ggml's x86 `quantize_row_q8_1`
/// computes it: the same maximum, the same product by `127 / max`, rounded
/// half to even (`vroundps`), so the same quants and scales.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_blocks_avx2(x: &[f32]) -> Vec<BlockQ8> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(x.len() / QK);
    for block in x.chunks_exact(QK) {
        let sign = _mm256_set1_ps(-0.0);
        let mut v = [_mm256_setzero_ps(); 4];
        let mut m = _mm256_setzero_ps();
        for (i, v) in v.iter_mut().enumerate() {
            // SAFETY: `block` is 32 f32s, four vectors of eight.
            *v = unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * i)) };
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *v));
        }
        let m = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mul = _mm256_set1_ps(id);
        let mut q = [_mm256_setzero_si256(); 4];
        for (q, &v) in q.iter_mut().zip(&v) {
            let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, mul));
            *q = _mm256_cvtps_epi32(r);
        }
        let sums = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = super::simd::x86::hsum(sums);
        // i32 -> i16 -> i8 packs interleave the 128-bit halves; the
        // permutation puts the 32 values back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        let mut qs = [0i8; QK];
        // SAFETY: `qs` is 32 bytes.
        unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), ordered) };
        out.push(BlockQ8 {
            d: round_f16(d),
            s: round_f16(sum as f32 * d),
            sum,
            qs,
        });
    }
    out
}

/// ggml's `quantize_row_q8_1` for one block (Q8_0 is the same without `s`), as
/// its x86 SIMD path computes it: scaled by `127 / max` and rounded half to even.
/// (Its scalar reference multiplies by `1 / d` and rounds half away from zero,
/// which flips an occasional value; llama.cpp on x86 runs the SIMD path.)
#[inline]
fn quantize_block(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    BlockQ8 {
        d: round_f16(d),
        s: round_f16(sum as f32 * d),
        sum,
        qs,
    }
}

/// `row . x` for a weight row of type `ty` and activations quantized for it.
pub fn dot(ty: GgmlType, row: &[u8], x: &Activations) -> f32 {
    match x {
        Activations::F32(x) => quant::dot(ty, row, x),
        Activations::F16(x) => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, a)| f16::from_le_bytes([w[0], w[1]]).to_f32() * a.to_f32())
            .sum(),
        Activations::Bf16(x) => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, a)| bf16::from_le_bytes([w[0], w[1]]).to_f32() * a.to_f32())
            .sum(),
        Activations::Q8(blocks) => simd::row_dot(ty, row, blocks).unwrap_or_else(|| dot_blocks(ty, row, blocks)),
        Activations::Q8K(blocks) => kdot::dot(ty, row, blocks),
    }
}

/// `dot(ty, row, xs[r])` into `out[r]`: each row exactly as alone, four at a
/// time where a kernel shares the weight row's unpacking in that order (the
/// K-quants' decode rows of several sequences).
pub fn dot_each(ty: GgmlType, row: &[u8], xs: &[&Activations], out: &mut [f32]) {
    let mut done = 0;
    for (quad, o) in xs.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        let result = match *quad {
            [
                Activations::Q8K(a),
                Activations::Q8K(b),
                Activations::Q8K(c),
                Activations::Q8K(d),
            ] => super::ksimd::rows_dot4_alone(ty, row, [a, b, c, d]),
            _ => None,
        };
        let Some(result) = result else { break };
        o.copy_from_slice(&result);
        done += 4;
    }
    for (o, x) in out[done..].iter_mut().zip(&xs[done..]) {
        *o = dot(ty, row, x);
    }
}

/// `row . xs[r]` into `out[r]` for every activation row: four rows at a time
/// where a kernel shares the weight row's unpacking between them, else one by
/// one. The results are `dot`'s, except where llama.cpp orders a product of
/// several rows differently: Q4_K rows in whole groups of four (see
/// `kdot::rows_dot4`), and every row of the K-quants it multiplies in its
/// tiled kernel (`kdot::is_tiled`).
pub fn dot_rows(ty: GgmlType, row: &[u8], xs: &[Activations], out: &mut [f32]) {
    let tiled = kdot::is_tiled(ty, xs.len());
    let mut done = 0;
    for (quad, o) in xs.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        let result = match quad {
            [
                Activations::Q8(a),
                Activations::Q8(b),
                Activations::Q8(c),
                Activations::Q8(d),
            ] => simd::rows_dot4(ty, row, [a, b, c, d]),
            [
                Activations::Q8K(a),
                Activations::Q8K(b),
                Activations::Q8K(c),
                Activations::Q8K(d),
            ] if tiled => Some(kdot::rows_dot4_tiled(ty, row, [a, b, c, d])),
            [
                Activations::Q8K(a),
                Activations::Q8K(b),
                Activations::Q8K(c),
                Activations::Q8K(d),
            ] => kdot::rows_dot4(ty, row, [a, b, c, d]),
            _ => None,
        };
        let Some(result) = result else { break };
        o.copy_from_slice(&result);
        done += 4;
    }
    for (o, x) in out[done..].iter_mut().zip(&xs[done..]) {
        *o = match x {
            Activations::Q8K(blocks) if tiled => kdot::dot_tiled(ty, row, blocks),
            _ => dot(ty, row, x),
        };
    }
}

/// The portable row dot product, in the order of ggml's x86 kernels (which
/// `simd::row_dot` runs where it can, with the same results): per block, eight
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
    let mut x = [0i32; QK];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (at, offset) = if ty == GgmlType::Q4_0 { (2, 8) } else { (4, 0) };
            for (j, &q) in w[at..at + 16].iter().enumerate() {
                x[j] = (q & 0x0F) as i32 - offset;
                x[j + 16] = (q >> 4) as i32 - offset;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (at, offset) = if ty == GgmlType::Q5_0 { (2, 16) } else { (4, 0) };
            let qh = u32::from_le_bytes([w[at], w[at + 1], w[at + 2], w[at + 3]]);
            for (j, &q) in w[at + 4..at + 20].iter().enumerate() {
                x[j] = ((q & 0x0F) as u32 | (((qh >> j) << 4) & 0x10)) as i32 - offset;
                x[j + 16] = ((q >> 4) as u32 | ((qh >> (j + 12)) & 0x10)) as i32 - offset;
            }
        }
        GgmlType::Q8_0 => {
            for (v, &q) in x.iter_mut().zip(&w[2..34]) {
                *v = q as i8 as i32;
            }
        }
        _ => unreachable!("block_quants on {ty}"),
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::quant::tests::{BLOCK_TYPES, noise, random_row};

    #[test]
    fn quantized_dot_tracks_the_f32_reference_within_8_bit_error() {
        for ty in BLOCK_TYPES.into_iter().chain([GgmlType::F16, GgmlType::Bf16]) {
            let len = 8 * QK;
            let row = match ty {
                GgmlType::F16 | GgmlType::Bf16 => noise(5, len * 2)
                    .chunks(2)
                    .flat_map(|c| {
                        let v = (c[0] as f32 - 128.0) / 256.0;
                        if ty == GgmlType::F16 {
                            f16::from_f32(v).to_le_bytes()
                        } else {
                            bf16::from_f32(v).to_le_bytes()
                        }
                    })
                    .collect(),
                _ => random_row(ty, len / QK, 11),
            };
            let x: Vec<f32> = noise(3, len).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
            let reference = quant::dot(ty, &row, &x);
            let got = dot(ty, &row, &quantize(ty, &x));
            let magnitude: f32 = {
                let mut w = vec![0.0; len];
                quant::dequantize_row(ty, &row, &mut w);
                w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum()
            };
            assert!(
                (got - reference).abs() <= 0.01 * magnitude,
                "{ty}: {got} vs {reference} (scale {magnitude})"
            );
        }
    }

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

    #[test]
    fn row_dots_keep_ggml_lanes_of_four_products() {
        // Block 0 puts 2^24 in lane 0; block 1 adds 1 to each of the 8 lanes.
        // In ggml's lanes lane 0 rounds 2^24 + 1 back to 2^24 and the other
        // seven 1s are summed pairwise: 2^24 + 6. Summed per block it would be
        // 2^24 + 8.
        let block = |d: f32, quants: &[(usize, i8)]| {
            let mut w = vec![0u8; 34];
            w[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            let mut y = quantize_block(&[0.0; QK]);
            y.d = 1.0;
            for &(j, q) in quants {
                w[2 + j] = q as u8;
                y.qs[j] = q;
            }
            (w, y)
        };
        let (w0, y0) = block(4096.0, &[(0, 64)]);
        let ones: Vec<(usize, i8)> = (0..8).map(|lane| (4 * lane, 1)).collect();
        let (w1, y1) = block(1.0, &ones);
        let row = [w0, w1].concat();
        let expected = 16_777_216.0 + 6.0;
        assert_eq!(dot_blocks(GgmlType::Q8_0, &row, &[y0, y1]), expected);
        assert_eq!(dot(GgmlType::Q8_0, &row, &Activations::Q8(vec![y0, y1])), expected);
    }

    #[test]
    fn dot_rows_orders_whole_quads_as_llama_cpp_and_the_rest_as_dot() {
        let k_types = [
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for ty in BLOCK_TYPES.into_iter().chain(k_types) {
            for seed in 0..10u64 {
                let len = 3 * kquants::QK_K;
                let row = if kquants::is_k_quant(ty) {
                    kquants::tests::random_k_row(ty, len / kquants::QK_K, seed)
                } else {
                    random_row(ty, len / QK, seed)
                };
                for rows in [7, 9] {
                    let xs: Vec<Activations> = (0..rows)
                        .map(|r| {
                            let x: Vec<f32> = noise(seed * 10 + r, len)
                                .iter()
                                .map(|&b| b as f32 / 64.0 - 2.0)
                                .collect();
                            quantize(ty, &x)
                        })
                        .collect();
                    let mut out = vec![0.0; xs.len()];
                    dot_rows(ty, &row, &xs, &mut out);
                    for (r, (o, x)) in out.iter().zip(&xs).enumerate() {
                        let expected = match x {
                            Activations::Q8K(y) if kdot::is_tiled(ty, xs.len()) => {
                                kdot::dot_tiled_portable(ty, &row, y)
                            }
                            // Whole quads (rows 0..8 of 9, 0..4 of 7): llama.cpp's repacked gemm.
                            Activations::Q8K(y) if ty == GgmlType::Q4K && r < xs.len() / 4 * 4 => {
                                kdot::dot_q4k(&row, y, kdot::GEMM_GROUPS)
                            }
                            _ => dot(ty, &row, x),
                        };
                        assert_eq!(o.to_bits(), expected.to_bits(), "{ty} seed {seed} rows {rows} row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn quantize_blocks_equal_the_portable_quantizer() {
        for seed in 0..40u64 {
            let mut x: Vec<f32> = noise(seed, 8 * QK)
                .iter()
                .map(|&b| (b as f32 - 128.0) / (1.0 + seed as f32))
                .collect();
            x[..QK].fill(0.0);
            x[QK + 3] = -(seed as f32 + 1.5);
            let got = quantize_blocks(&x);
            for (g, block) in got.iter().zip(x.chunks_exact(QK)) {
                let e = quantize_block(block);
                assert_eq!(g.qs, e.qs, "seed {seed}");
                assert_eq!(
                    (g.d.to_bits(), g.s.to_bits(), g.sum),
                    (e.d.to_bits(), e.s.to_bits(), e.sum)
                );
            }
        }
    }

    #[test]
    fn q8_blocks_follow_ggml_rounding() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = -63.5;
        x[2] = 2.5;
        let b = quantize_block(&x);
        assert_eq!(b.d, 1.0);
        assert_eq!((b.qs[0], b.qs[1], b.qs[2]), (127, -64, 2), "round half to even");
        assert_eq!(b.s, (127 - 64 + 2) as f32);
    }
}
