//! AVX2 row dot products of the K-quants with Q8_K activations, chosen at run
//! time. The integer work is that of ggml's x86 `ggml_vec_dot_q*_K_q8_K` (AVX2
//! path: `maddubs` of the unsigned quants with the activations, `madd` with the
//! group scales, eight i32 lanes per super-block); the f32 steps are those of
//! `portable`'s loops (`dot_portable`, `dot_q4k` for `rows4_q4k`,
//! `dot_tiled_portable` for the `_tiled` kernels), so both paths are
//! bit-identical on every CPU.

use crate::compute::gguf::GgmlType;
use crate::compute::quant::q8::BlockQ8K;

#[cfg(target_arch = "x86_64")]
pub mod panel;

/// One weight row times one activation row.
pub type RowKernel = unsafe fn(&[u8], &[BlockQ8K]) -> f32;
/// One weight row times four activation rows, each super-block unpacked once.
pub type Rows4Kernel = unsafe fn(&[u8], [&[BlockQ8K]; 4]) -> [f32; 4];

/// The vector kernels of one K-quant on this CPU, each None where it has
/// none. Safe to call once returned (the features were checked here); they
/// read whole super-blocks of the row and the matching blocks of each
/// activation row.
#[derive(Clone, Copy, Default)]
pub struct Kernels {
    /// One activation row, in the single-row order (`portable::dot_portable`).
    pub row: Option<RowKernel>,
    /// Four rows, each exactly as `row` gives it alone.
    pub rows4_alone: Option<Rows4Kernel>,
    /// Four rows in llama.cpp's order for whole groups of four: Q4_K's gemm
    /// (`portable::dot_q4k` with `GEMM_GROUPS`), the others as alone.
    pub rows4: Option<Rows4Kernel>,
    /// One and four rows in the tiled kernel's order (`portable::dot_tiled_portable`).
    pub row_tiled: Option<RowKernel>,
    pub rows4_tiled: Option<Rows4Kernel>,
}

pub fn kernels(ty: GgmlType) -> Kernels {
    #[cfg(target_arch = "x86_64")]
    if super::features::has_avx2() {
        let row = |k: RowKernel| Some(k);
        let rows4 = |k: Rows4Kernel| Some(k);
        return match ty {
            GgmlType::Q2K => Kernels {
                row: row(x86::row_q2k),
                ..Kernels::default()
            },
            GgmlType::Q3K => Kernels {
                row: row(x86::row_q3k),
                row_tiled: row(x86::row_q3k_tiled),
                ..Kernels::default()
            },
            GgmlType::Q4K => Kernels {
                row: row(x86::row_q4k),
                rows4_alone: rows4(x86::rows4_q4k_gemv),
                rows4: rows4(x86::rows4_q4k),
                ..Kernels::default()
            },
            GgmlType::Q5K => Kernels {
                row: row(x86::row_q5k),
                row_tiled: row(x86::row_q5k_tiled),
                ..Kernels::default()
            },
            GgmlType::Q6K => Kernels {
                row: row(x86::row_q6k),
                rows4_alone: rows4(x86::rows4_q6k),
                rows4: rows4(x86::rows4_q6k),
                row_tiled: row(x86::row_q6k_tiled),
                rows4_tiled: rows4(x86::rows4_q6k_tiled),
            },
            _ => Kernels::default(),
        };
    }
    let _ = ty;
    Kernels::default()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8K;
    use crate::compute::cpu::kernels::x86::{f16_at, f16_pair, hsum, hsum_ps};
    use crate::compute::quant::kquants::{Q2K_BYTES, Q3K_BYTES, Q4K_BYTES, Q5K_BYTES, Q6K_BYTES};

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

    /// Q4_K in `gemv_q4_K_8x8_q8_K`'s order (`portable::dot_q4k` with the
    /// whole super-block per step).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q4k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        rows_q4k_gemv::<1>(row, [x])[0]
    }

    /// `row_q4k` for four activation rows (each as if alone), each
    /// super-block's nibbles and scales unpacked once.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q4k_gemv(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        rows_q4k_gemv::<4>(row, x)
    }

    /// Q4_K for `N` rows in `row_q4k`'s order: per super-block and row, the
    /// integer sums (exact) and two fused f32 steps.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_q4k_gemv<const N: usize>(row: &[u8], x: [&[BlockQ8K]; N]) -> [f32; N] {
        let m4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = ([0.0f32; N], [0.0f32; N]);
        for (i, b) in row.chunks_exact(Q4K_BYTES).enumerate() {
            let (bd, bmin) = f16_pair(b, 0);
            let (sc, mn) = scales_mins(&b[4..16]);
            // Sub-block j: its low and high nibbles (groups 2j and 2j + 1).
            let nibbles: [(__m256i, __m256i); 4] = std::array::from_fn(|j| {
                let bits = load(b, 16 + 32 * j);
                (
                    _mm256_and_si256(bits, m4),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4),
                )
            });
            for r in 0..N {
                let y = &x[r][i];
                let summ = hsum4(mins_by_sums(&mn, y));
                let mut sumi = _mm256_setzero_si256();
                for (j, &(lo, hi)) in nibbles.iter().enumerate() {
                    let p_lo = scaled(splat16(sc[2 * j]), lo, load_q8(y, 64 * j));
                    let p_hi = scaled(splat16(sc[2 * j + 1]), hi, load_q8(y, 64 * j + 32));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
                }
                acc[r] = (bd * y.d).mul_add(hsum(sumi) as f32, acc[r]);
                acc_min[r] = (bmin * y.d).mul_add(summ as f32, acc_min[r]);
            }
        }
        std::array::from_fn(|r| acc[r] - acc_min[r])
    }

    /// The scaled products of sub-block `j` (values `64j..64j + 64`, groups of
    /// 32 `2j` and `2j + 1`) of a Q4_K super-block with `y`, as eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q4k_sub_block(b: &[u8], y: &BlockQ8K, j: usize, sc: &[i16; 8], m4: __m256i) -> __m256i {
        let bits = load(b, 16 + 32 * j);
        let lo = _mm256_and_si256(bits, m4);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
        let p_lo = scaled(splat16(sc[2 * j]), lo, load_q8(y, 64 * j));
        let p_hi = scaled(splat16(sc[2 * j + 1]), hi, load_q8(y, 64 * j + 32));
        _mm256_add_epi32(p_lo, p_hi)
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

    /// Q4_K for four activation rows in `gemm_q4_K_8x8_q8_K`'s order
    /// (`portable::dot_q4k` with two groups of 32 per step), one row per lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q4k(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let (mut acc, mut acc_min) = (_mm_setzero_ps(), _mm_setzero_ps());
        for (i, b) in row.chunks_exact(Q4K_BYTES).enumerate() {
            let y = [&x[0][i], &x[1][i], &x[2][i], &x[3][i]];
            let (bd, bmin) = f16_pair(b, 0);
            let (sc, mn) = scales_mins(&b[4..16]);
            let yd = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
            let (d, dmin) = (_mm_mul_ps(_mm_set1_ps(bd), yd), _mm_mul_ps(_mm_set1_ps(bmin), yd));
            // Lane j of row r's vector: the mins of sub-block j; transposed to
            // one vector per sub-block, lane r for row r.
            let m = transpose4([
                mins_by_sums(&mn, y[0]),
                mins_by_sums(&mn, y[1]),
                mins_by_sums(&mn, y[2]),
                mins_by_sums(&mn, y[3]),
            ]);
            for (j, &m) in m.iter().enumerate() {
                let sumi = totals4(
                    q4k_sub_block(b, y[0], j, &sc, m4),
                    q4k_sub_block(b, y[1], j, &sc, m4),
                    q4k_sub_block(b, y[2], j, &sc, m4),
                    q4k_sub_block(b, y[3], j, &sc, m4),
                );
                acc = _mm_fmadd_ps(_mm_cvtepi32_ps(sumi), d, acc);
                acc_min = _mm_fmadd_ps(_mm_cvtepi32_ps(m), dmin, acc_min);
            }
        }
        store4(_mm_sub_ps(acc, acc_min))
    }

    /// A 4 x 4 transpose of i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose4(r: [__m128i; 4]) -> [__m128i; 4] {
        let (t0, t1) = (_mm_unpacklo_epi32(r[0], r[1]), _mm_unpacklo_epi32(r[2], r[3]));
        let (t2, t3) = (_mm_unpackhi_epi32(r[0], r[1]), _mm_unpackhi_epi32(r[2], r[3]));
        [
            _mm_unpacklo_epi64(t0, t1),
            _mm_unpackhi_epi64(t0, t1),
            _mm_unpacklo_epi64(t2, t3),
            _mm_unpackhi_epi64(t2, t3),
        ]
    }

    /// Super-block `i` of a Q6_K row times block `i` of `N` activation rows,
    /// the unpacking shared: for each row the eight i32 lanes of
    /// `ggml_vec_dot_q6_K_q8_K` (the scaled products with the stored +32,
    /// less 32 times the scaled group sums).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_lanes<const N: usize>(b: &[u8], x: [&[BlockQ8K]; N], i: usize) -> [__m256i; N] {
        let (sc, scales) = q6k_scales(b);
        let mut lanes: [__m256i; N] =
            std::array::from_fn(|r| _mm256_sub_epi32(_mm256_setzero_si256(), q6k_offset(&x[r][i], scales)));
        for j in 0..2 {
            for (t, &qt) in q6k_quants(b, j).iter().enumerate() {
                let g = 8 * j + 2 * t;
                let s = split16(sc[g], sc[g + 1]);
                for (r, l) in lanes.iter_mut().enumerate() {
                    *l = _mm256_add_epi32(*l, scaled(s, qt, load_q8(&x[r][i], 128 * j + 32 * t)));
                }
            }
        }
        lanes
    }

    /// Q6_K for `N` rows in `vec_dot` order: each row's eight lanes fused
    /// (`lanes · (y.d · d) + acc`) into eight accumulators, summed at the end.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows_q6k<const N: usize>(row: &[u8], x: [&[BlockQ8K]; N]) -> [f32; N] {
        let mut acc = [_mm256_setzero_ps(); N];
        for (i, b) in row.chunks_exact(Q6K_BYTES).enumerate() {
            let lanes = q6k_lanes(b, x, i);
            let dw = f16_at(b, 208);
            for r in 0..N {
                let d = _mm256_set1_ps(x[r][i].d * dw);
                acc[r] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes[r]), acc[r]);
            }
        }
        acc.map(|a| hsum_ps(a))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q6k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        rows_q6k::<1>(row, [x])[0]
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q6k(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        rows_q6k::<4>(row, x)
    }

    /// Q6_K in the tiled kernel's order (`portable::dot_tiled_portable`).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q6k_tiled(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let mut acc = 0.0f32;
        for (i, b) in row.chunks_exact(Q6K_BYTES).enumerate() {
            let [lanes] = q6k_lanes(b, [x], i);
            acc = (hsum(lanes) as f32 * f16_at(b, 208)).mul_add(x[i].d, acc);
        }
        acc
    }

    /// `row_q6k_tiled` for four rows, one per f32 lane.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q6k_tiled(row: &[u8], x: [&[BlockQ8K]; 4]) -> [f32; 4] {
        let mut acc = _mm_setzero_ps();
        for (i, b) in row.chunks_exact(Q6K_BYTES).enumerate() {
            let [l0, l1, l2, l3] = q6k_lanes(b, x, i);
            let r = _mm_mul_ps(_mm_cvtepi32_ps(totals4(l0, l1, l2, l3)), _mm_set1_ps(f16_at(b, 208)));
            let yd = _mm_setr_ps(x[0][i].d, x[1][i].d, x[2][i].d, x[3][i].d);
            acc = _mm_fmadd_ps(r, yd, acc);
        }
        store4(acc)
    }

    /// The 16 group scales of a Q6_K super-block, as i16s and as a vector.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_scales(b: &[u8]) -> ([i16; 16], __m256i) {
        let sc: [i16; 16] = std::array::from_fn(|g| b[192 + g] as i8 as i16);
        // SAFETY: `sc` is 16 i16s, 32 bytes.
        let v = unsafe { _mm256_loadu_si256(sc.as_ptr().cast()) };
        (sc, v)
    }

    /// The stored quants (value + 32) of half `j` of a Q6_K super-block, as
    /// four chunks of 32: values `128j + 32t ..`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_quants(b: &[u8], j: usize) -> [__m256i; 4] {
        let m4 = _mm256_set1_epi8(0x0F);
        let ql1 = load(b, 64 * j);
        let ql2 = load(b, 64 * j + 32);
        let qh = load(b, 128 + 32 * j);
        [
            _mm256_or_si256(
                _mm256_and_si256(ql1, m4),
                _mm256_slli_epi16::<4>(_mm256_and_si256(qh, _mm256_set1_epi8(0x03))),
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
        ]
    }

    /// 32 · the scaled group sums of `y`, two groups per lane (what the stored
    /// +32 of the quants adds to the lanes).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn q6k_offset(y: &BlockQ8K, scales: __m256i) -> __m256i {
        _mm256_slli_epi32::<5>(_mm256_madd_epi16(load_bsums(y), scales))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q5k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        q5k::<false>(row, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q5k_tiled(row: &[u8], x: &[BlockQ8K]) -> f32 {
        q5k::<true>(row, x)
    }

    /// Q5_K: per super-block two f32 steps, or with `TILED` the tiled
    /// kernel's (`portable::dot_tiled_portable`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q5k<const TILED: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
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
            if TILED {
                let r = (-bmin).mul_add(summ as f32, hsum(sumi) as f32 * bd);
                acc = r.mul_add(y.d, acc);
            } else {
                acc += (y.d * bd) * hsum(sumi) as f32;
                acc_min += (-y.d * bmin) * summ as f32;
            }
        }
        if TILED { acc } else { acc + acc_min }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q3k(row: &[u8], x: &[BlockQ8K]) -> f32 {
        q3k::<false>(row, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn row_q3k_tiled(row: &[u8], x: &[BlockQ8K]) -> f32 {
        q3k::<true>(row, x)
    }

    /// Q3_K: per super-block one f32 step, or with `TILED` the tiled
    /// kernel's (`portable::dot_tiled_portable`).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn q3k<const TILED: bool>(row: &[u8], x: &[BlockQ8K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let mut acc = 0.0f32;
        for (b, y) in row.chunks_exact(Q3K_BYTES).zip(x) {
            let dw = f16_at(b, 108);
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
            if TILED {
                acc = (hsum(sumi) as f32 * dw).mul_add(y.d, acc);
            } else {
                acc += (y.d * dw) * hsum(sumi) as f32;
            }
        }
        if TILED { acc } else { acc + 0.0 }
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
    use crate::compute::cpu::kernels::features::{Isa, can_test};
    use crate::compute::cpu::kernels::portable;
    use crate::compute::quant::QK_K;
    use crate::compute::quant::q8::quantize_block_q8k;
    use crate::compute::quant::testing::{K_TYPES, noise, put_f16, scale_offsets};

    /// A random row whose f16 scales are `scale(block byte)`.
    fn row(ty: GgmlType, blocks: usize, seed: u64, scale: impl Fn(u8) -> f32) -> Vec<u8> {
        let bytes = ty.block_bytes();
        let mut row = noise(seed, blocks * bytes);
        for block in row.chunks_exact_mut(bytes) {
            for &at in scale_offsets(ty) {
                put_f16(block, at, scale(block[at]));
            }
        }
        row
    }

    fn q8k(x: &[f32]) -> Vec<BlockQ8K> {
        x.chunks_exact(QK_K).map(quantize_block_q8k).collect()
    }

    #[test]
    fn k_quant_kernels_equal_the_portable_dot() {
        if !can_test(Isa::Avx2, "K-quant row kernels") {
            return;
        }
        let blocks = 5;
        for ty in K_TYPES {
            let k = kernels(ty);
            let single = k.row.expect("a row kernel for every K-quant");
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
                let y = q8k(&ints);
                assert!(y.iter().all(|b| b.d == 1.0));
                // SAFETY (every kernel call below): `kernels` checked the
                // features; whole super-blocks.
                let fast = unsafe { single(&w, &y) };
                assert_eq!(fast, portable::dot_portable(ty, &w, &y), "{ty} seed {seed} integers");

                // Real-valued scales: the same f32 steps, so the same bits.
                let w = row(ty, blocks, seed + 77, |b| 0.001 + b as f32 / 65536.0);
                let x: Vec<f32> = noise(seed + 9, blocks * QK_K)
                    .iter()
                    .map(|&b| b as f32 / 64.0 - 2.0)
                    .collect();
                let y = q8k(&x);
                let fast = unsafe { single(&w, &y) };
                let reference = portable::dot_portable(ty, &w, &y);
                assert_eq!(
                    fast.to_bits(),
                    reference.to_bits(),
                    "{ty} seed {seed}: {fast} vs {reference}"
                );
                let ys: Vec<Vec<BlockQ8K>> = (0..4u64)
                    .map(|r| {
                        let x: Vec<f32> = noise(seed * 4 + r + 900, blocks * QK_K)
                            .iter()
                            .map(|&b| b as f32 / 64.0 - 2.0)
                            .collect();
                        q8k(&x)
                    })
                    .collect();
                let ys4 = [&ys[0][..], &ys[1], &ys[2], &ys[3]];
                let bits = |v: [f32; 4]| v.map(f32::to_bits);
                if let Some(tiled) = k.row_tiled {
                    let reference = portable::dot_tiled_portable(ty, &w, &y);
                    assert_eq!(
                        unsafe { tiled(&w, &y) }.to_bits(),
                        reference.to_bits(),
                        "{ty} seed {seed} tiled"
                    );
                }
                if let Some(quad) = k.rows4_tiled {
                    let expected = std::array::from_fn(|r| portable::dot_tiled_portable(ty, &w, &ys[r]));
                    assert_eq!(
                        bits(unsafe { quad(&w, ys4) }),
                        bits(expected),
                        "{ty} seed {seed} tiled rows4"
                    );
                }
                if let Some(quad) = k.rows4 {
                    let expected = std::array::from_fn(|r| {
                        if ty == GgmlType::Q4K {
                            portable::dot_q4k(&w, &ys[r], portable::GEMM_GROUPS)
                        } else {
                            portable::dot_portable(ty, &w, &ys[r])
                        }
                    });
                    assert_eq!(bits(unsafe { quad(&w, ys4) }), bits(expected), "{ty} seed {seed} rows4");
                }
                if let Some(quad) = k.rows4_alone {
                    let expected = std::array::from_fn(|r| portable::dot_portable(ty, &w, &ys[r]));
                    assert_eq!(
                        bits(unsafe { quad(&w, ys4) }),
                        bits(expected),
                        "{ty} seed {seed} rows4 alone"
                    );
                }
            }
        }
    }
}
