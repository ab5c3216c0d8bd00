//! The integer inner loops of the 32-value block dot products: AVX2 when the
//! CPU has it (checked at run time), a portable loop otherwise. The sums are
//! exact integers either way, so both paths give identical results; the
//! portable loops are the reference the AVX2 ones are tested against.

use super::activations::BlockQ8;
use crate::compute::gguf::GgmlType;

/// Σ lo(qs[j])·y[j] + hi(qs[j])·y[j+16] over 16 bytes of packed unsigned nibbles.
pub fn nibbles_dot(qs: &[u8; 16], y: &[i8; 32]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { x86::nibbles_dot(qs, y) };
    }
    portable::nibbles_dot(qs, y)
}

/// Σ x[i]·y[i] for unsigned x[i] < 128.
pub fn unsigned_dot(x: &[u8; 32], y: &[i8; 32]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { x86::unsigned_dot(x, y) };
    }
    portable::unsigned_dot(x, y)
}

/// Σ x[i]·y[i] for signed bytes.
pub fn signed_dot(x: &[i8; 32], y: &[i8; 32]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked above).
        return unsafe { x86::signed_dot(x, y) };
    }
    portable::signed_dot(x, y)
}

/// A whole row's dot product for the Q4_0, Q4_1 and Q8_0 weight types, as
/// ggml's AVX2 kernels compute it: each block's integer products as eight f32
/// lanes, scaled and accumulated with FMA across the row, summed once at the
/// end. None where this CPU or type has no such kernel.
pub fn row_dot(ty: GgmlType, row: &[u8], blocks: &[BlockQ8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: AVX2 and FMA are present (checked above); the kernels read
        // only within `row` and `blocks` (whole blocks, checked by chunks_exact).
        return unsafe {
            match ty {
                GgmlType::Q4_0 => Some(x86::row_q4_0(row, blocks)),
                GgmlType::Q4_1 => Some(x86::row_q4_1(row, blocks)),
                GgmlType::Q8_0 => Some(x86::row_q8_0(row, blocks)),
                _ => None,
            }
        };
    }
    let _ = (ty, row, blocks);
    None
}

mod portable {
    pub fn nibbles_dot(qs: &[u8; 16], y: &[i8; 32]) -> i32 {
        (0..16)
            .map(|j| (qs[j] & 0x0F) as i32 * y[j] as i32 + (qs[j] >> 4) as i32 * y[j + 16] as i32)
            .sum()
    }

    pub fn unsigned_dot(x: &[u8; 32], y: &[i8; 32]) -> i32 {
        x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum()
    }

    pub fn signed_dot(x: &[i8; 32], y: &[i8; 32]) -> i32 {
        x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum()
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8;

    /// Adds the eight i32 lanes.
    #[target_feature(enable = "avx2")]
    fn hsum(v: __m256i) -> i32 {
        let sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
        _mm_cvtsi128_si32(sum)
    }

    /// Σ x·y for unsigned x < 128 and signed y: pairs of u8·i8 products fit i16
    /// (at most 2·127·128), then pairs of i16 are widened to i32.
    #[target_feature(enable = "avx2")]
    fn madd(x: __m256i, y: __m256i) -> i32 {
        let pairs = _mm256_maddubs_epi16(x, y);
        hsum(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// ggml's `hsum_float_8`.
    #[target_feature(enable = "avx2")]
    fn hsum_ps(v: __m256) -> f32 {
        let sum = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
        let sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
        _mm_cvtss_f32(sum)
    }

    /// Pairwise integer products of unsigned x and signed y as eight f32 lanes.
    #[target_feature(enable = "avx2")]
    fn pairs_ps(x: __m256i, y: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
    }

    /// The 32 unsigned nibbles of a block: low halves first, then high halves.
    #[target_feature(enable = "avx2")]
    fn unpack_nibbles(bytes: &[u8]) -> __m256i {
        // SAFETY: callers pass the 16 packed bytes of one block.
        let packed = unsafe { _mm_loadu_si128(bytes[..16].as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(packed), mask),
            _mm_and_si128(packed, mask),
        )
    }

    fn f16_at(bytes: &[u8], at: usize) -> f32 {
        half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_q4_1(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0.0f32;
        for (w, y) in row.chunks_exact(20).zip(blocks) {
            mins += f16_at(w, 2) * y.s;
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let products = pairs_ps(unpack_nibbles(&w[4..20]), qy);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(w, 0) * y.d), products, acc);
        }
        hsum_ps(acc) + mins
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_q4_0(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (w, y) in row.chunks_exact(18).zip(blocks) {
            let qx = _mm256_sub_epi8(unpack_nibbles(&w[2..18]), _mm256_set1_epi8(8));
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let products = pairs_ps(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(w, 0) * y.d), products, acc);
        }
        hsum_ps(acc)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn row_q8_0(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (w, y) in row.chunks_exact(34).zip(blocks) {
            // SAFETY: a Q8_0 block holds 32 quant bytes after its scale; `y.qs` is 32 bytes.
            let (qx, qy) = unsafe {
                (
                    _mm256_loadu_si256(w[2..34].as_ptr().cast()),
                    _mm256_loadu_si256(y.qs.as_ptr().cast()),
                )
            };
            let products = pairs_ps(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(w, 0) * y.d), products, acc);
        }
        hsum_ps(acc)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn nibbles_dot(qs: &[u8; 16], y: &[i8; 32]) -> i32 {
        // SAFETY: both loads read exactly the 16 and 32 bytes the references cover.
        let (packed, y) = unsafe {
            (
                _mm_loadu_si128(qs.as_ptr().cast()),
                _mm256_loadu_si256(y.as_ptr().cast()),
            )
        };
        let mask = _mm_set1_epi8(0x0F);
        let low = _mm_and_si128(packed, mask);
        let high = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        madd(_mm256_set_m128i(high, low), y)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn unsigned_dot(x: &[u8; 32], y: &[i8; 32]) -> i32 {
        // SAFETY: each load reads exactly the 32 bytes its reference covers.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_si256(y.as_ptr().cast()),
            )
        };
        madd(x, y)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn signed_dot(x: &[i8; 32], y: &[i8; 32]) -> i32 {
        // SAFETY: each load reads exactly the 32 bytes its reference covers.
        let (x, y) = unsafe {
            (
                _mm256_loadu_si256(x.as_ptr().cast()),
                _mm256_loadu_si256(y.as_ptr().cast()),
            )
        };
        // |x|·(y with x's sign) = x·y, with the unsigned operand |x| <= 128; -128·y
        // would overflow i16 pairs only for x = y = -128, which Q8 never stores
        // (its values are within [-127, 127]).
        madd(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::quant::tests::noise;

    fn block<const N: usize>(seed: u64) -> [u8; N] {
        noise(seed, N).try_into().expect("N bytes")
    }

    #[test]
    fn every_path_equals_the_portable_reference() {
        for seed in 0..200 {
            let y: [i8; 32] = block::<32>(seed).map(|b| (b as i8).max(-127));
            let nibbles = block::<16>(seed + 1000);
            assert_eq!(nibbles_dot(&nibbles, &y), portable::nibbles_dot(&nibbles, &y));
            let unsigned = block::<32>(seed + 2000).map(|b| b & 0x1F);
            assert_eq!(unsigned_dot(&unsigned, &y), portable::unsigned_dot(&unsigned, &y));
            let signed = block::<32>(seed + 3000).map(|b| (b as i8).max(-127));
            assert_eq!(signed_dot(&signed, &y), portable::signed_dot(&signed, &y));
        }
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            for seed in 0..20 {
                let row = crate::compute::cpu::quant::tests::random_row(ty, 18, seed);
                let x: Vec<f32> = noise(seed + 9, 18 * 32)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let y = crate::compute::cpu::activations::quantize(ty, &x);
                let crate::compute::cpu::activations::Activations::Q8(blocks) = &y else {
                    panic!("q8")
                };
                let Some(fast) = row_dot(ty, &row, blocks) else { return };
                let reference = crate::compute::cpu::activations::dot_blocks(ty, &row, blocks);
                assert!(
                    (fast - reference).abs() <= 1e-5 * reference.abs().max(1.0),
                    "{ty}: {fast} vs {reference}"
                );
            }
        }
        let extreme = [127i8; 32];
        let low = [-127i8; 32];
        assert_eq!(signed_dot(&extreme, &low), -127 * 127 * 32);
        assert_eq!(nibbles_dot(&[0xFF; 16], &extreme), 15 * 127 * 32);
    }
}
