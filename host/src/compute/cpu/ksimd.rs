//! AVX2 row dot products of the K-quants with Q8_K activations, chosen at run
//! time. The integer work is that of ggml's x86 `ggml_vec_dot_q*_K_q8_K` (AVX2
//! path: `maddubs` of the unsigned quants with the activations, `madd` with the
//! group scales, eight i32 lanes per super-block); the lanes are then added to
//! the super-block's exact integer sum (and the mins' sum), which are combined
//! in f32 exactly as `kquants::dot_portable` does. So the two paths are
//! bit-identical on every CPU, and realm's numerics do not depend on the CPU's
//! features. (ggml keeps eight f32 lanes across the row instead, and on AVX2
//! llama.cpp runs repacked kernels for Q4_K with yet another order; realm's
//! golden tests against llama.cpp hold with this order.)

use super::kquants::BlockQ8K;
use crate::compute::gguf::GgmlType;

/// `row . x` for a K-quant row, or None where this CPU or type has no kernel.
pub fn row_dot(ty: GgmlType, row: &[u8], x: &[BlockQ8K]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above); the kernels
        // read whole super-blocks only (chunks_exact) and 32 bytes within each
        // block's arrays.
        return unsafe {
            match ty {
                GgmlType::Q2K => Some(x86::row_q2k(row, x)),
                GgmlType::Q3K => Some(x86::row_q3k(row, x)),
                GgmlType::Q4K => Some(x86::row_q4k(row, x)),
                GgmlType::Q5K => Some(x86::row_q5k(row, x)),
                GgmlType::Q6K => Some(x86::row_q6k(row, x)),
                _ => None,
            }
        };
    }
    let _ = (ty, row, x);
    None
}

/// A K-quant row kernel, chosen once per matrix product.
pub type RowKernel = unsafe fn(&[u8], &[BlockQ8K]) -> f32;

/// The kernel `row_dot` would run for `ty`; safe to call once returned (the
/// CPU features it needs were checked here).
pub fn row_kernel(ty: GgmlType) -> Option<RowKernel> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        return match ty {
            GgmlType::Q2K => Some(x86::row_q2k as RowKernel),
            GgmlType::Q3K => Some(x86::row_q3k as RowKernel),
            GgmlType::Q4K => Some(x86::row_q4k as RowKernel),
            GgmlType::Q5K => Some(x86::row_q5k as RowKernel),
            GgmlType::Q6K => Some(x86::row_q6k as RowKernel),
            _ => None,
        };
    }
    let _ = ty;
    None
}

/// `row_dot` for four activation rows, each super-block unpacked once: per
/// row bit-identical to `row_dot` (and so to the portable loop).
pub fn rows_dot4(ty: GgmlType, row: &[u8], x: [&[BlockQ8K]; 4]) -> Option<[f32; 4]> {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2() {
        // SAFETY: as `row_dot`; block `b` of the row pairs with block `b` of each `x[r]`.
        return unsafe {
            match ty {
                GgmlType::Q4K => Some(x86::rows4_q4k(row, x)),
                GgmlType::Q6K => Some(x86::rows4_q6k(row, x)),
                _ => None,
            }
        };
    }
    let _ = (ty, row, x);
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8K;
    use crate::compute::cpu::kquants::{Q2K_BYTES, Q3K_BYTES, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES};
    use crate::compute::cpu::simd::x86::{f16_at, f16_pair, hsum};

    /// 32 bytes at `at` of `bytes`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load(bytes: &[u8], at: usize) -> __m256i {
        let b = &bytes[at..at + 32];
        // SAFETY: `b` is 32 bytes long.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_q8(y: &BlockQ8K, at: usize) -> __m256i {
        let b = &y.qs[at..at + 32];
        // SAFETY: `b` is 32 bytes long.
        unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_bsums(y: &BlockQ8K) -> __m256i {
        // SAFETY: `bsums` is 16 i16s, 32 bytes.
        unsafe { _mm256_loadu_si256(y.bsums.as_ptr().cast()) }
    }

    /// The group scale `s` for 16 values (i16 lanes), as i16 in every lane.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn splat16(s: i16) -> __m256i {
        _mm256_set1_epi16(s)
    }

    /// Two group scales: `lo` for the first 16 values of a 32-value chunk, `hi`
    /// for the last 16 (eight i16 lanes each).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn split16(lo: i16, hi: i16) -> __m256i {
        _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
    }

    /// `scale · (pairs of u8 x · i8 y)` summed to eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn scaled(scale: __m256i, x: __m256i, y: __m256i) -> __m256i {
        _mm256_madd_epi16(scale, _mm256_maddubs_epi16(x, y))
    }

    /// Adds the four i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn hsum4(v: __m128i) -> i32 {
        let v = _mm_add_epi32(v, _mm_unpackhi_epi64(v, v));
        _mm_cvtsi128_si32(_mm_add_epi32(v, _mm_shuffle_epi32::<0b10_11_00_01>(v)))
    }

    /// ggml's `get_scale_min_k4` for all eight groups: (scales, mins).
    #[inline]
    fn scales_mins(q: &[u8]) -> ([i16; 8], [i16; 8]) {
        let (mut sc, mut mn) = ([0i16; 8], [0i16; 8]);
        for j in 0..4 {
            sc[j] = (q[j] & 63) as i16;
            mn[j] = (q[j + 4] & 63) as i16;
            sc[j + 4] = ((q[j + 8] & 0x0F) | ((q[j] >> 6) << 4)) as i16;
            mn[j + 4] = ((q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4)) as i16;
        }
        (sc, mn)
    }

    /// The products of the eight mins with the eight 32-value sums of `y`, as
    /// four i32 lanes (ggml: `madd(mins, hadd(bsums))`).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn mins_by_sums(mins: &[i16; 8], y: &BlockQ8K) -> __m128i {
        let bsums = load_bsums(y);
        let sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
        // SAFETY: `mins` is 8 i16s, 16 bytes.
        let mins = unsafe { _mm_loadu_si128(mins.as_ptr().cast()) };
        _mm_madd_epi16(mins, sums)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q4k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
        for (b, y) in row.chunks_exact(Q4K_BYTES).zip(x) {
            let (bd, bmin) = f16_pair(b, 0);
            let (sc, mn) = scales_mins(&b[4..16]);
            let summ = hsum4(mins_by_sums(&mn, y));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let bits = load(b, 16 + 32 * j);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                let p_lo = scaled(splat16(sc[2 * j]), lo, load_q8(y, 64 * j));
                let p_hi = scaled(splat16(sc[2 * j + 1]), hi, load_q8(y, 64 * j + 32));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc += (y.d * bd) * hsum(sumi) as f32;
            acc_min += (-y.d * bmin) * summ as f32;
        }
        acc + acc_min
    }

    /// The totals of four vectors of eight i32 lanes, as four lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn totals4(v0: __m256i, v1: __m256i, v2: __m256i, v3: __m256i) -> __m128i {
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v0, v1), _mm256_hadd_epi32(v2, v3));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store4(v: __m128) -> [f32; 4] {
        let mut out = [0.0f32; 4];
        // SAFETY: `out` is four f32s.
        unsafe { _mm_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q4k(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = (_mm_setzero_ps(), _mm_setzero_ps());
        for (i, b) in row.chunks_exact(Q4K_BYTES).enumerate() {
            let y = [&x[0][i], &x[1][i], &x[2][i], &x[3][i]];
            let (bd, bmin) = f16_pair(b, 0);
            let (sc, mn) = scales_mins(&b[4..16]);
            let mut sumi = [_mm256_setzero_si256(); 4];
            for j in 0..4 {
                let bits = load(b, 16 + 32 * j);
                let lo = _mm256_and_si256(bits, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
                let (s_lo, s_hi) = (splat16(sc[2 * j]), splat16(sc[2 * j + 1]));
                for r in 0..4 {
                    let p_lo = scaled(s_lo, lo, load_q8(y[r], 64 * j));
                    let p_hi = scaled(s_hi, hi, load_q8(y[r], 64 * j + 32));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p_lo, p_hi));
                }
            }
            let sumi = totals4(sumi[0], sumi[1], sumi[2], sumi[3]);
            let m = [
                mins_by_sums(&mn, y[0]),
                mins_by_sums(&mn, y[1]),
                mins_by_sums(&mn, y[2]),
                mins_by_sums(&mn, y[3]),
            ];
            let h = _mm_hadd_epi32(_mm_hadd_epi32(m[0], m[1]), _mm_hadd_epi32(m[2], m[3]));
            let yd = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
            let scaled_sum = _mm_mul_ps(_mm_mul_ps(yd, _mm_set1_ps(bd)), _mm_cvtepi32_ps(sumi));
            acc = _mm_add_ps(acc, scaled_sum);
            let neg_yd = _mm_xor_ps(yd, _mm_set1_ps(-0.0));
            let scaled_min = _mm_mul_ps(_mm_mul_ps(neg_yd, _mm_set1_ps(bmin)), _mm_cvtepi32_ps(h));
            acc_min = _mm_add_ps(acc_min, scaled_min);
        }
        store4(_mm_add_ps(acc, acc_min))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q6k(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        let mut acc = _mm_setzero_ps();
        for (i, b) in row.chunks_exact(Q6K_BYTES).enumerate() {
            let y = [&x[0][i], &x[1][i], &x[2][i], &x[3][i]];
            let d = f16_at(b, 208);
            let sc: [i16; 16] = std::array::from_fn(|g| b[192 + g] as i8 as i16);
            // SAFETY: `sc` is 16 i16s, 32 bytes.
            let scales = unsafe { _mm256_loadu_si256(sc.as_ptr().cast()) };
            let mut sumi = [_mm256_setzero_si256(); 4];
            for r in 0..4 {
                let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load_bsums(y[r]), scales));
                sumi[r] = _mm256_sub_epi32(sumi[r], offset);
            }
            for j in 0..2 {
                let ql1 = load(b, 64 * j);
                let ql2 = load(b, 64 * j + 32);
                let qh = load(b, 128 + 32 * j);
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, m4),
                        _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql2, m4),
                        _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C))),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                        _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8))),
                    ),
                ];
                for (t, &qt) in q.iter().enumerate() {
                    let g = 8 * j + 2 * t;
                    let s = split16(sc[g], sc[g + 1]);
                    for r in 0..4 {
                        let p = scaled(s, qt, load_q8(y[r], 128 * j + 32 * t));
                        sumi[r] = _mm256_add_epi32(sumi[r], p);
                    }
                }
            }
            let sumi = totals4(sumi[0], sumi[1], sumi[2], sumi[3]);
            let yd = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
            acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(yd, _mm_set1_ps(d)), _mm_cvtepi32_ps(sumi)));
        }
        // The portable loop adds its (zero) sum of mins.
        store4(_mm_add_ps(acc, _mm_setzero_ps()))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q5k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
        for (b, y) in row.chunks_exact(Q5K_BYTES).zip(x) {
            let (bd, bmin) = f16_pair(b, 0);
            let (sc, mn) = scales_mins(&b[4..16]);
            let summ = hsum4(mins_by_sums(&mn, y));
            let hbits = load(b, 16);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let bits = load(b, 48 + 32 * j);
                // The fifth bits: bit 2j (low nibbles) and 2j + 1 (high nibbles) of qh.
                let h = _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(2 * j as i32));
                let h_lo = _mm256_slli_epi16::<4>(_mm256_and_si256(h, _mm256_set1_epi8(1)));
                let h_hi = _mm256_slli_epi16::<3>(_mm256_and_si256(h, _mm256_set1_epi8(2)));
                let lo = _mm256_or_si256(_mm256_and_si256(bits, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4), h_hi);
                let p_lo = scaled(splat16(sc[2 * j]), lo, load_q8(y, 64 * j));
                let p_hi = scaled(splat16(sc[2 * j + 1]), hi, load_q8(y, 64 * j + 32));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
            }
            acc += (y.d * bd) * hsum(sumi) as f32;
            acc_min += (-y.d * bmin) * summ as f32;
        }
        acc + acc_min
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q6k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m4 = _mm256_set1_epi8(0x0F);
        let m2 = _mm256_set1_epi8(0x03);
        let mut acc = 0.0f32;
        for (b, y) in row.chunks_exact(Q6K_BYTES).zip(x) {
            let d = y.d * f16_at(b, 208);
            let sc: [i16; 16] = std::array::from_fn(|g| b[192 + g] as i8 as i16);
            // The values are stored plus 32: subtract 32 · scale · (group sum of y),
            // two groups per lane as ggml does.
            // SAFETY: `sc` is 16 i16s, 32 bytes.
            let scales = unsafe { _mm256_loadu_si256(sc.as_ptr().cast()) };
            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load_bsums(y), scales));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let ql1 = load(b, 64 * j);
                let ql2 = load(b, 64 * j + 32);
                let qh = load(b, 128 + 32 * j);
                let q0 = _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_slli_epi16::<4>(_mm256_and_si256(qh, m2)),
                );
                let q1 = _mm256_or_si256(
                    _mm256_and_si256(ql2, m4),
                    _mm256_slli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0x0C))),
                );
                let q2 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                    _mm256_and_si256(qh, _mm256_set1_epi8(0x30)),
                );
                let q3 = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                    _mm256_srli_epi16::<2>(_mm256_and_si256(qh, _mm256_set1_epi8(0xC0u8 as i8))),
                );
                let g = 8 * j;
                let p0 = scaled(split16(sc[g], sc[g + 1]), q0, load_q8(y, 128 * j));
                let p1 = scaled(split16(sc[g + 2], sc[g + 3]), q1, load_q8(y, 128 * j + 32));
                let p2 = scaled(split16(sc[g + 4], sc[g + 5]), q2, load_q8(y, 128 * j + 64));
                let p3 = scaled(split16(sc[g + 6], sc[g + 7]), q3, load_q8(y, 128 * j + 96));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p2, p3));
            }
            acc += d * hsum(_mm256_sub_epi32(sumi, offset)) as f32;
        }
        // The portable loop adds its (zero) sum of mins.
        acc + 0.0
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q3k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let mut acc = 0.0f32;
        for (b, y) in row.chunks_exact(Q3K_BYTES).zip(x) {
            let d = y.d * f16_at(b, 108);
            let s = &b[96..108];
            let mut sc = [0i16; 16];
            for j in 0..4 {
                let high = s[8 + j];
                sc[j] = ((s[j] & 0x0F) | ((high & 3) << 4)) as i16 - 32;
                sc[j + 4] = ((s[j + 4] & 0x0F) | (((high >> 2) & 3) << 4)) as i16 - 32;
                sc[j + 8] = ((s[j] >> 4) | (((high >> 4) & 3) << 4)) as i16 - 32;
                sc[j + 12] = ((s[j + 4] >> 4) | ((high >> 6) << 4)) as i16 - 32;
            }
            let hbits = load(b, 0);
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let bits = load(b, 32 + 32 * j);
                for t in 0..4 {
                    let bit = (4 * j + t) as i32;
                    let low = _mm256_and_si256(_mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * t as i32)), m3);
                    // 4 where the high bit is clear (the value is low - 4), else 0.
                    let clear =
                        _mm256_andnot_si256(_mm256_srl_epi16(hbits, _mm_cvtsi32_si128(bit)), _mm256_set1_epi8(1));
                    let minus = _mm256_slli_epi16::<2>(clear);
                    let q8 = load_q8(y, 128 * j + 32 * t);
                    let p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(low, q8), _mm256_maddubs_epi16(minus, q8));
                    let g = 8 * j + 2 * t;
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(split16(sc[g], sc[g + 1]), p16));
                }
            }
            acc += d * hsum(sumi) as f32;
        }
        acc + 0.0
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q2k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
        for (b, y) in row.chunks_exact(Q2K_BYTES).zip(x) {
            let (bd, bmin) = f16_pair(b, 80);
            let sc: [i16; 16] = std::array::from_fn(|g| (b[g] & 0x0F) as i16);
            let mn: [i16; 16] = std::array::from_fn(|g| (b[g] >> 4) as i16);
            // SAFETY: `mn` is 16 i16s, 32 bytes.
            let mins = unsafe { _mm256_loadu_si256(mn.as_ptr().cast()) };
            let summ = hsum(_mm256_madd_epi16(mins, load_bsums(y)));
            let mut sumi = _mm256_setzero_si256();
            for j in 0..2 {
                let bits = load(b, 16 + 32 * j);
                let q0 = _mm256_and_si256(bits, m3);
                let q1 = _mm256_and_si256(_mm256_srli_epi16::<2>(bits), m3);
                let q2 = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m3);
                let q3 = _mm256_and_si256(_mm256_srli_epi16::<6>(bits), m3);
                let g = 8 * j;
                let p0 = scaled(split16(sc[g], sc[g + 1]), q0, load_q8(y, 128 * j));
                let p1 = scaled(split16(sc[g + 2], sc[g + 3]), q1, load_q8(y, 128 * j + 32));
                let p2 = scaled(split16(sc[g + 4], sc[g + 5]), q2, load_q8(y, 128 * j + 64));
                let p3 = scaled(split16(sc[g + 6], sc[g + 7]), q3, load_q8(y, 128 * j + 96));
                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)),
                );
            }
            acc += (y.d * bd) * hsum(sumi) as f32;
            acc_min += (-y.d * bmin) * summ as f32;
        }
        acc + acc_min
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kquants::{self, QK_K};
    use crate::compute::cpu::quant::tests::noise;
    use half::f16;

    const TYPES: [GgmlType; 5] = [
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    fn scale_offsets(ty: GgmlType) -> &'static [usize] {
        match ty {
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q6K => &[208],
            _ => unreachable!(),
        }
    }

    /// A random row whose f16 scales are `scale(block byte)`.
    fn row(ty: GgmlType, blocks: usize, seed: u64, scale: impl Fn(u8) -> f32) -> Vec<u8> {
        let bytes = kquants::block_bytes(ty);
        let mut row = noise(seed, blocks * bytes);
        for block in row.chunks_exact_mut(bytes) {
            for &at in scale_offsets(ty) {
                let v = f16::from_f32(scale(block[at]));
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        row
    }

    #[test]
    fn k_quant_kernels_equal_the_portable_dot() {
        let blocks = 5;
        for ty in TYPES {
            for seed in 0..30u64 {
                // Integer scales and activations (Q8_K d = 1) make every f32 step
                // exact, so any difference in the integer sums would show.
                let w = row(ty, blocks, seed, |b| (b % 4) as f32 - 1.0);
                let mut ints: Vec<f32> = noise(seed + 500, blocks * QK_K)
                    .iter()
                    .map(|&b| (b as i8 / 16) as f32)
                    .collect();
                for block in ints.chunks_exact_mut(QK_K) {
                    block[(seed as usize * 37) % QK_K] = -127.0;
                }
                let y = kquants::quantize_q8k(&ints);
                assert!(y.iter().all(|b| b.d == 1.0));
                let Some(fast) = row_dot(ty, &w, &y) else { return };
                assert_eq!(fast, kquants::dot_portable(ty, &w, &y), "{ty} seed {seed} integers");

                // Real-valued scales: the same f32 steps, so the same bits.
                let w = row(ty, blocks, seed + 77, |b| 0.001 + b as f32 / 65536.0);
                let x: Vec<f32> = noise(seed + 9, blocks * QK_K)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let y = kquants::quantize_q8k(&x);
                let fast = row_dot(ty, &w, &y).expect("kernel");
                let reference = kquants::dot_portable(ty, &w, &y);
                assert_eq!(
                    fast.to_bits(),
                    reference.to_bits(),
                    "{ty} seed {seed}: {fast} vs {reference}"
                );
            }
        }
    }
}
