//! x86 helpers the AVX2 kernels of every weight type share.

use std::arch::x86_64::*;

/// Adds the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub fn hsum(v: __m256i) -> i32 {
    let sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum));
    _mm_cvtsi128_si32(sum)
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
