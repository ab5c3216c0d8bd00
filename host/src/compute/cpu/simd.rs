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

/// Whether the AVX2 kernels can run: AVX2, FMA and F16C (all x86-64-v3 CPUs).
/// Checked once; later calls read a cached flag.
#[cfg(target_arch = "x86_64")]
pub fn has_avx2() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c");
            LEVEL.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
            yes
        }
    }
}

/// A whole row's dot product for the 32-value block types. Q4_0, Q4_1 and
/// Q8_0 as ggml's AVX2 kernels compute them: each block's integer products as
/// eight f32 lanes, scaled and accumulated with FMA across the row, summed once
/// at the end. Q5_0 and Q5_1 bit-identical to the portable `dot_blocks`. None
/// where this CPU or type has no such kernel.
pub fn row_dot(ty: GgmlType, row: &[u8], blocks: &[BlockQ8]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above); the kernels read
        // only within `row` and `blocks` (whole blocks, checked by chunks_exact).
        return unsafe {
            match ty {
                GgmlType::Q4_0 => Some(x86::row_q4_0(row, blocks)),
                GgmlType::Q4_1 => Some(x86::row_q4_1(row, blocks)),
                GgmlType::Q8_0 => Some(x86::row_q8_0(row, blocks)),
                GgmlType::Q5_0 => Some(x86::row_q5_0(row, blocks)),
                GgmlType::Q5_1 => Some(x86::row_q5_1(row, blocks)),
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
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8;

    /// Adds the eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn hsum(v: __m256i) -> i32 {
        let sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
        let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
        _mm_cvtsi128_si32(sum)
    }

    /// Σ x·y for unsigned x < 128 and signed y: pairs of u8·i8 products fit i16
    /// (at most 2·127·128), then pairs of i16 are widened to i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn madd(x: __m256i, y: __m256i) -> i32 {
        let pairs = _mm256_maddubs_epi16(x, y);
        hsum(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// ggml's `hsum_float_8`.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub fn hsum_ps(v: __m256) -> f32 {
        let sum = _mm_add_ps(_mm256_extractf128_ps::<1>(v), _mm256_castps256_ps128(v));
        let sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
        let sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
        _mm_cvtss_f32(sum)
    }

    /// Pairwise integer products of unsigned x and signed y as eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pairs_ps(x: __m256i, y: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
    }

    /// The 32 unsigned nibbles of a block: low halves first, then high halves.
    #[inline]
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

    /// The two little-endian f16s at `at` and `at + 2` as f32 (exactly, as
    /// ggml's table), converted together with F16C. The conversion is written
    /// as assembly because the compiler otherwise inserts the f16 into some
    /// live register (`vpinsrw`), a false dependency on that register's last
    /// writer, often an accumulator, which serialises the loop.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub fn f16_pair(bytes: &[u8], at: usize) -> (f32, f32) {
        let bits = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let halves = _mm_cvtsi32_si128(bits as i32);
        let both: __m128;
        // SAFETY: F16C is enabled; the instruction reads and writes registers only.
        unsafe {
            std::arch::asm!(
                "vcvtph2ps {out}, {halves}",
                out = lateout(xmm_reg) both,
                halves = in(xmm_reg) halves,
                options(pure, nomem, nostack, preserves_flags)
            );
        }
        (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
    }

    /// The f16 at `at`, where `at >= 2` (read as the high half of a pair).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub fn f16_at(bytes: &[u8], at: usize) -> f32 {
        f16_pair(bytes, at - 2).1
    }

    /// `f16 at bytes[at] * yd` in all eight lanes. Converting a broadcast f16
    /// (rather than one lane, then broadcasting) keeps the conversion off the
    /// accumulator's dependency chain.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn scale8(bytes: &[u8], at: usize, yd: f32) -> __m256 {
        let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        _mm256_mul_ps(_mm256_cvtph_ps(_mm_set1_epi16(bits as i16)), _mm256_set1_ps(yd))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q4_1(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0.0f32;
        for (w, y) in row.chunks_exact(20).zip(blocks) {
            mins += f16_pair(w, 0).1 * y.s;
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let products = pairs_ps(unpack_nibbles(&w[4..20]), qy);
            acc = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc);
        }
        hsum_ps(acc) + mins
    }

    /// ggml's `bytes_from_bits_32`: byte `i` is 0xFF where bit `i` of the
    /// little-endian u32 at `bytes` is set, else 0.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn bytes_from_bits(bytes: &[u8]) -> __m256i {
        let bits = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        // Byte i of the result starts as byte i / 8 of `bits`...
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(bits as i32),
            _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
        );
        // ...and is all ones once every bit but bit i % 8 is forced on.
        let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
        _mm256_cmpeq_epi8(others, _mm256_set1_epi64x(-1))
    }

    /// The 32 unsigned 5-bit values of a Q5 block: the nibbles at `qs`, and 16
    /// where the block's `qh` bit is set.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn unpack_q5(qh: &[u8], qs: &[u8]) -> __m256i {
        let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(unpack_nibbles(qs), high)
    }

    /// Q5_0 as the portable `dot_blocks` computes it (the order realm has
    /// always used; bit-identical to it): per block the exact integer sum
    /// `sum((q + 16) * y) - 16 * sum(y)`, then `(d * y.d) * sumi` added in
    /// block order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q5_0(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = -0.0f32;
        for (w, y) in row.chunks_exact(22).zip(blocks) {
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let sumi = madd(unpack_q5(&w[2..6], &w[6..22]), qy) - 16 * y.sum;
            let (d, _) = f16_pair(w, 0);
            acc += (d * y.d) * sumi as f32 + 0.0;
        }
        acc
    }

    /// Q5_1 as the portable `dot_blocks` computes it: `(d * y.d) * sumi + m * y.s`
    /// per block, added in block order.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q5_1(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = -0.0f32;
        for (w, y) in row.chunks_exact(24).zip(blocks) {
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let sumi = madd(unpack_q5(&w[4..8], &w[8..24]), qy);
            let (d, m) = f16_pair(w, 0);
            acc += (d * y.d) * sumi as f32 + m * y.s;
        }
        acc
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q4_0(row: &[u8], blocks: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (w, y) in row.chunks_exact(18).zip(blocks) {
            let qx = _mm256_sub_epi8(unpack_nibbles(&w[2..18]), _mm256_set1_epi8(8));
            // SAFETY: `y.qs` is 32 bytes.
            let qy = unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) };
            let products = pairs_ps(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            acc = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc);
        }
        hsum_ps(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
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
            acc = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc);
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
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
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
                if matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1) {
                    assert_eq!(fast.to_bits(), reference.to_bits(), "{ty}: {fast} vs {reference}");
                }
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
