//! Activations in the form a weight type's dot product consumes them (ggml's
//! `vec_dot_type`, `quant::VecDotType`): q8 blocks for the quantized types,
//! f16 or bf16 for half-precision weights. Each input row is quantized once
//! per matrix product, in AVX2 where the CPU has it (the same blocks as the
//! reference quantizers of `quant::q8`).

use half::{bf16, f16};

use crate::compute::quant::VecDotType;
use crate::compute::quant::q8::{BlockQ8, BlockQ8K, quantize_block, quantize_block_q8k, round_f16};
use crate::compute::quant::{GROUPS, QK, QK_K};

pub enum Activations {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Q8(Vec<BlockQ8>),
    /// 256-value blocks, for the K-quants.
    Q8K(Vec<BlockQ8K>),
}

impl Activations {
    /// The 32-value q8 blocks, if these are.
    pub fn q8(&self) -> Option<&[BlockQ8]> {
        match self {
            Self::Q8(blocks) => Some(blocks),
            _ => None,
        }
    }

    /// The Q8_K blocks, if these are.
    pub fn q8k(&self) -> Option<&[BlockQ8K]> {
        match self {
            Self::Q8K(blocks) => Some(blocks),
            _ => None,
        }
    }
}

/// Quantizes a row of activations as `kind`.
pub fn quantize(kind: VecDotType, x: &[f32]) -> Activations {
    match kind {
        VecDotType::F32 => Activations::F32(x.to_vec()),
        VecDotType::F16 => Activations::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
        VecDotType::Bf16 => Activations::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
        VecDotType::Q8K => Activations::Q8K(quantize_q8k(x)),
        VecDotType::Q8 => Activations::Q8(quantize_blocks(x)),
    }
}

fn quantize_blocks(x: &[f32]) -> Vec<BlockQ8> {
    #[cfg(target_arch = "x86_64")]
    if super::features::has_avx2() {
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
        let sum = super::x86::hsum(sums);
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

/// Q8_K blocks of `x` (a multiple of 256 values), as `quant::q8::quantize_block_q8k`.
pub fn quantize_q8k(x: &[f32]) -> Vec<BlockQ8K> {
    #[cfg(target_arch = "x86_64")]
    if super::features::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { quantize_q8k_avx2(x) };
    }
    x.chunks_exact(QK_K).map(quantize_block_q8k).collect()
}

/// `quantize_block_q8k` in AVX2 vectors: the largest magnitude by a vector
/// maximum, the first value that has it, then the same products by
/// `iscale`, rounded half to even (`vroundps`) and capped at 127, and the
/// group sums of the quants. The same blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q8k_avx2(x: &[f32]) -> Vec<BlockQ8K> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(x.len() / QK_K);
    let sign = _mm256_set1_ps(-0.0);
    for block in x.chunks_exact(QK_K) {
        let mut m = _mm256_setzero_ps();
        for c in block.chunks_exact(8) {
            // SAFETY: `c` is eight f32s.
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(c.as_ptr()) }));
        }
        let m = _mm_max_ps(_mm256_extractf128_ps::<1>(m), _mm256_castps256_ps128(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let mut q8 = BlockQ8K {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; GROUPS],
        };
        if amax == 0.0 {
            out.push(q8);
            continue;
        }
        let mut max = amax;
        for &v in block {
            if v.abs() == amax {
                max = v;
                break;
            }
        }
        let iscale = -127.0 / max;
        let mul = _mm256_set1_ps(iscale);
        let cap = _mm256_set1_epi32(127);
        for (g, (c, qs)) in block.chunks_exact(16).zip(q8.qs.chunks_exact_mut(16)).enumerate() {
            let mut q = [_mm256_setzero_si256(); 2];
            for (h, q) in q.iter_mut().enumerate() {
                // SAFETY: `c` is 16 f32s.
                let v = unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * h)) };
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(mul, v));
                *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), cap);
            }
            q8.bsums[g] = super::x86::hsum(_mm256_add_epi32(q[0], q[1])) as i16;
            // i32 -> i16 -> i8: the halves interleave; 16 values in order.
            let w = _mm256_packs_epi32(q[0], q[1]);
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(w);
            let b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            // SAFETY: `qs` is 16 bytes.
            unsafe { _mm_storeu_si128(qs.as_mut_ptr().cast(), b) };
        }
        q8.d = 1.0 / iscale;
        out.push(q8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kernels::features::{Isa, can_test};
    use crate::compute::quant::testing::noise;

    #[test]
    fn quantize_blocks_equal_the_portable_quantizer() {
        if !can_test(Isa::Avx2, "q8 quantizer") {
            return;
        }
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
    fn q8k_vectors_equal_the_portable_quantizer() {
        if !can_test(Isa::Avx2, "q8_K quantizer") {
            return;
        }
        for seed in 0..40u64 {
            let mut x: Vec<f32> = noise(seed + 300, 4 * QK_K)
                .iter()
                .map(|&b| (b as f32 - 128.0) / (1.0 + seed as f32))
                .collect();
            x[..QK_K].fill(0.0);
            // Two values of the largest magnitude, opposite signs: the first counts.
            x[QK_K + 5] = -300.0;
            x[QK_K + 9] = 300.0;
            x[2 * QK_K + 7] = 200.0 + seed as f32;
            let got = quantize_q8k(&x);
            for (g, block) in got.iter().zip(x.chunks_exact(QK_K)) {
                let e = quantize_block_q8k(block);
                assert_eq!(
                    (g.d.to_bits(), g.qs, g.bsums),
                    (e.d.to_bits(), e.qs, e.bsums),
                    "seed {seed}"
                );
            }
        }
    }
}
