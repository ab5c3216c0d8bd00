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

/// A row kernel for the 32-value block types, chosen once per matrix product.
pub type RowKernel = unsafe fn(&[u8], &[BlockQ8]) -> f32;

/// The kernel `row_dot` would run for `ty`, resolved once so a mat-vec does
/// not repeat the dispatch per row. Calling it is safe once returned: the CPU
/// features it needs were checked here.
pub fn row_kernel(ty: GgmlType) -> Option<RowKernel> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let avx512 = has_avx512();
        return match ty {
            GgmlType::Q4_0 => Some(x86::row_q4_0 as RowKernel),
            GgmlType::Q4_1 => Some(x86::row_q4_1 as RowKernel),
            GgmlType::Q8_0 => Some(x86::row_q8_0 as RowKernel),
            GgmlType::Q5_0 if avx512 => Some(x86::q5_avx512::row_q5_0 as RowKernel),
            GgmlType::Q5_1 if avx512 => Some(x86::q5_avx512::row_q5_1 as RowKernel),
            GgmlType::Q5_0 => Some(x86::q5_avx2::row_q5_0 as RowKernel),
            GgmlType::Q5_1 => Some(x86::q5_avx2::row_q5_1 as RowKernel),
            _ => None,
        };
    }
    let _ = ty;
    None
}

/// Whether the AVX-512 variants can run as well (AVX-512 F, BW, VL and VNNI,
/// as on Zen 4 and Ice Lake or later). Checked once.
#[cfg(target_arch = "x86_64")]
pub fn has_avx512() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static LEVEL: AtomicU8 = AtomicU8::new(0);
    match LEVEL.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let yes = has_avx2()
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx512vnni");
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
                GgmlType::Q5_0 if has_avx512() => Some(x86::q5_avx512::row_q5_0(row, blocks)),
                GgmlType::Q5_1 if has_avx512() => Some(x86::q5_avx512::row_q5_1(row, blocks)),
                GgmlType::Q5_0 => Some(x86::q5_avx2::row_q5_0(row, blocks)),
                GgmlType::Q5_1 => Some(x86::q5_avx2::row_q5_1(row, blocks)),
                _ => None,
            }
        };
    }
    let _ = (ty, row, blocks);
    None
}

/// `row . ys[r]` for four activation rows at once (prompt processing): each
/// weight block is unpacked once for all four. The result for each row is
/// bit-identical to `row_dot` (or the portable loop where `row_dot` has no
/// kernel), since every row keeps its own accumulators and order. None where
/// this CPU or type has no such kernel.
pub fn rows_dot4(ty: GgmlType, row: &[u8], ys: [&[BlockQ8]; 4]) -> Option<[f32; 4]> {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above); the kernels
        // read whole blocks of `row` and the matching blocks of each `ys[r]`.
        return unsafe {
            match ty {
                GgmlType::Q4_0 => Some(x86::rows4_q4_0(row, ys)),
                GgmlType::Q4_1 => Some(x86::rows4_q4_1(row, ys)),
                GgmlType::Q5_0 if has_avx512() => Some(x86::q5_avx512::rows4_q5_0(row, ys)),
                GgmlType::Q5_1 if has_avx512() => Some(x86::q5_avx512::rows4_q5_1(row, ys)),
                GgmlType::Q5_0 => Some(x86::q5_avx2::rows4_q5_0(row, ys)),
                GgmlType::Q5_1 => Some(x86::q5_avx2::rows4_q5_1(row, ys)),
                GgmlType::Q8_0 => Some(x86::rows4_q8_0(row, ys)),
                _ => None,
            }
        };
    }
    let _ = (ty, row, ys);
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

    /// The exact integer sums of four blocks' products (unsigned `x`, signed
    /// `y`), as four i32 lanes in block order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn sums4(x: [__m256i; 4], y: [__m256i; 4]) -> __m128i {
        let ones = _mm256_set1_epi16(1);
        let l0 = _mm256_madd_epi16(_mm256_maddubs_epi16(x[0], y[0]), ones);
        let l1 = _mm256_madd_epi16(_mm256_maddubs_epi16(x[1], y[1]), ones);
        let l2 = _mm256_madd_epi16(_mm256_maddubs_epi16(x[2], y[2]), ones);
        let l3 = _mm256_madd_epi16(_mm256_maddubs_epi16(x[3], y[3]), ones);
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(l0, l1), _mm256_hadd_epi32(l2, l3));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    }

    /// Adds the four lanes of `p` to `acc` one at a time, in lane order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn add_in_order(acc: f32, p: __m128) -> f32 {
        let acc = acc + _mm_cvtss_f32(p);
        let acc = acc + _mm_cvtss_f32(_mm_movehdup_ps(p));
        let acc = acc + _mm_cvtss_f32(_mm_movehl_ps(p, p));
        acc + _mm_cvtss_f32(_mm_shuffle_ps::<0b11_11_11_11>(p, p))
    }

    /// The f16 scales at `at` of four blocks of `bytes` bytes, as f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    fn scales4(w: &[u8], bytes: usize, at: usize) -> __m128 {
        let h0 = u16::from_le_bytes([w[at], w[at + 1]]) as i16;
        let h1 = u16::from_le_bytes([w[bytes + at], w[bytes + at + 1]]) as i16;
        let h2 = u16::from_le_bytes([w[2 * bytes + at], w[2 * bytes + at + 1]]) as i16;
        let h3 = u16::from_le_bytes([w[3 * bytes + at], w[3 * bytes + at + 1]]) as i16;
        _mm_cvtph_ps(_mm_setr_epi16(h0, h1, h2, h3, 0, 0, 0, 0))
    }

    /// The 32 bytes of `y.qs`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_y(y: &BlockQ8) -> __m256i {
        // SAFETY: `y.qs` is 32 bytes.
        unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) }
    }

    /// The Q5_0/Q5_1 kernels, stamped out for AVX2 and for AVX-512 (whose
    /// masked byte add and VNNI dot product shorten the unpacking and the
    /// integer sums; the integers, and so the results, are the same).
    macro_rules! q5_kernels {
        ($module:ident, $features:literal, $unpack:ident, $sums4:ident) => {
            pub mod $module {
                use super::*;

                /// Q5_0 and Q5_1 as the portable `dot_blocks` computes them (the order
                /// realm has always used; bit-identical to it): per block the exact
                /// integer sum (for Q5_0 `sum((q + 16) * y) - 16 * sum(y)`), then
                /// `(d * y.d) * sumi + m` (m = `m * y.s` for Q5_1, 0 for Q5_0) added in
                /// block order. Four blocks at a time share the horizontal sums.
                #[inline]
                #[target_feature(enable = $features)]
                fn row_q5<const MIN: bool>(row: &[u8], blocks: &[BlockQ8]) -> f32 {
                    let bytes = if MIN { 24 } else { 22 };
                    let qh_at = if MIN { 4 } else { 2 };
                    let mut acc = -0.0f32;
                    let quads = row.chunks_exact(4 * bytes).zip(blocks.chunks_exact(4));
                    let done = quads.len() * 4;
                    for (w, y) in quads {
                        let (a0, a1, a2, a3) = (qh_at, bytes + qh_at, 2 * bytes + qh_at, 3 * bytes + qh_at);
                        let x = [
                            $unpack(&w[a0..a0 + 4], &w[a0 + 4..a0 + 20]),
                            $unpack(&w[a1..a1 + 4], &w[a1 + 4..a1 + 20]),
                            $unpack(&w[a2..a2 + 4], &w[a2 + 4..a2 + 20]),
                            $unpack(&w[a3..a3 + 4], &w[a3 + 4..a3 + 20]),
                        ];
                        let mut sumi = $sums4(x, [load_y(&y[0]), load_y(&y[1]), load_y(&y[2]), load_y(&y[3])]);
                        if !MIN {
                            let ysum = _mm_setr_epi32(y[0].sum, y[1].sum, y[2].sum, y[3].sum);
                            sumi = _mm_sub_epi32(sumi, _mm_slli_epi32::<4>(ysum));
                        }
                        let dy = _mm_setr_ps(y[0].d, y[1].d, y[2].d, y[3].d);
                        let scaled = _mm_mul_ps(_mm_mul_ps(scales4(w, bytes, 0), dy), _mm_cvtepi32_ps(sumi));
                        let m = if MIN {
                            _mm_mul_ps(scales4(w, bytes, 2), _mm_setr_ps(y[0].s, y[1].s, y[2].s, y[3].s))
                        } else {
                            _mm_setzero_ps()
                        };
                        acc = add_in_order(acc, _mm_add_ps(scaled, m));
                    }
                    for (w, y) in row[done / 4 * 4 * bytes..]
                        .chunks_exact(bytes)
                        .zip(&blocks[done..])
                    {
                        let x = $unpack(&w[qh_at..qh_at + 4], &w[qh_at + 4..qh_at + 20]);
                        let mut sumi = madd(x, load_y(y));
                        let (d, m) = f16_pair(w, 0);
                        let m = if MIN { m * y.s } else { 0.0 };
                        if !MIN {
                            sumi -= 16 * y.sum;
                        }
                        acc += (d * y.d) * sumi as f32 + m;
                    }
                    acc
                }

                /// `row_q5` for four activation rows: the block's integer sums with the
                /// four rows are the four lanes, and each lane takes that row's f32 steps.
                #[inline]
                #[target_feature(enable = $features)]
                fn rows4_q5<const MIN: bool>(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
                    let bytes = if MIN { 24 } else { 22 };
                    let qh_at = if MIN { 4 } else { 2 };
                    let mut acc = _mm_set1_ps(-0.0);
                    for (b, w) in row.chunks_exact(bytes).enumerate() {
                        let (y0, y1, y2, y3) = (&ys[0][b], &ys[1][b], &ys[2][b], &ys[3][b]);
                        let x = $unpack(&w[qh_at..qh_at + 4], &w[qh_at + 4..qh_at + 20]);
                        let mut sumi = $sums4([x, x, x, x], [load_y(y0), load_y(y1), load_y(y2), load_y(y3)]);
                        if !MIN {
                            let ysum = _mm_setr_epi32(y0.sum, y1.sum, y2.sum, y3.sum);
                            sumi = _mm_sub_epi32(sumi, _mm_slli_epi32::<4>(ysum));
                        }
                        let (d, m) = f16_pair(w, 0);
                        let dy = _mm_setr_ps(y0.d, y1.d, y2.d, y3.d);
                        let scaled = _mm_mul_ps(_mm_mul_ps(_mm_set1_ps(d), dy), _mm_cvtepi32_ps(sumi));
                        let m = if MIN {
                            _mm_mul_ps(_mm_set1_ps(m), _mm_setr_ps(y0.s, y1.s, y2.s, y3.s))
                        } else {
                            _mm_setzero_ps()
                        };
                        acc = _mm_add_ps(acc, _mm_add_ps(scaled, m));
                    }
                    let mut out = [0.0f32; 4];
                    // SAFETY: `out` is four f32s.
                    unsafe { _mm_storeu_ps(out.as_mut_ptr(), acc) };
                    out
                }

                #[target_feature(enable = $features)]
                pub unsafe fn rows4_q5_0(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
                    rows4_q5::<false>(row, ys)
                }

                #[target_feature(enable = $features)]
                pub unsafe fn rows4_q5_1(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
                    rows4_q5::<true>(row, ys)
                }

                #[target_feature(enable = $features)]
                pub unsafe fn row_q5_0(row: &[u8], blocks: &[BlockQ8]) -> f32 {
                    row_q5::<false>(row, blocks)
                }

                #[target_feature(enable = $features)]
                pub unsafe fn row_q5_1(row: &[u8], blocks: &[BlockQ8]) -> f32 {
                    row_q5::<true>(row, blocks)
                }
            }
        };
    }

    q5_kernels!(q5_avx2, "avx2,fma,f16c", unpack_q5, sums4);
    q5_kernels!(
        q5_avx512,
        "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
        unpack_q5_avx512,
        sums4_avx512
    );

    /// `unpack_q5` with AVX-512: 16 is added where the `qh` bit (the mask) is set.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl")]
    fn unpack_q5_avx512(qh: &[u8], qs: &[u8]) -> __m256i {
        let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
        let nibbles = unpack_nibbles(qs);
        _mm256_mask_add_epi8(nibbles, bits, nibbles, _mm256_set1_epi8(0x10))
    }

    /// `sums4` with VNNI: `vpdpbusd` sums each lane's four u8 x i8 products
    /// in one step (the same integers: `maddubs` cannot saturate here).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn sums4_avx512(x: [__m256i; 4], y: [__m256i; 4]) -> __m128i {
        let zero = _mm256_setzero_si256();
        let l0 = _mm256_dpbusd_epi32(zero, x[0], y[0]);
        let l1 = _mm256_dpbusd_epi32(zero, x[1], y[1]);
        let l2 = _mm256_dpbusd_epi32(zero, x[2], y[2]);
        let l3 = _mm256_dpbusd_epi32(zero, x[3], y[3]);
        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(l0, l1), _mm256_hadd_epi32(l2, l3));
        _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
    }

    /// Q4_0, Q4_1 and Q8_0 for four activation rows, each row as `row_q4_0`,
    /// `row_q4_1`, `row_q8_0` compute it (eight f32 lanes per row, its own FMA
    /// chain and mins), with the weight block unpacked once.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn rows4_ggml<const TY: u8>(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
        // TY: 0 = Q4_0, 1 = Q4_1, 8 = Q8_0.
        let bytes = match TY {
            0 => 18,
            1 => 20,
            _ => 34,
        };
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0.0f32; 4];
        for (b, w) in row.chunks_exact(bytes).enumerate() {
            let x = match TY {
                0 => _mm256_sub_epi8(unpack_nibbles(&w[2..18]), _mm256_set1_epi8(8)),
                1 => unpack_nibbles(&w[4..20]),
                // SAFETY: a Q8_0 block holds 32 quant bytes after its scale.
                _ => unsafe { _mm256_loadu_si256(w[2..34].as_ptr().cast()) },
            };
            let ax = if TY == 1 { x } else { _mm256_sign_epi8(x, x) };
            let (_, m) = f16_pair(w, 0);
            for r in 0..4 {
                let y = &ys[r][b];
                let qy = load_y(y);
                let sy = if TY == 1 { qy } else { _mm256_sign_epi8(qy, x) };
                let products = pairs_ps(ax, sy);
                if TY == 1 {
                    mins[r] += m * y.s;
                    acc[r] = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc[r]);
                } else {
                    acc[r] = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc[r]);
                }
            }
        }
        let mut out = [hsum_ps(acc[0]), hsum_ps(acc[1]), hsum_ps(acc[2]), hsum_ps(acc[3])];
        if TY == 1 {
            for r in 0..4 {
                out[r] += mins[r];
            }
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q4_0(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
        rows4_ggml::<0>(row, ys)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q4_1(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
        rows4_ggml::<1>(row, ys)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn rows4_q8_0(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
        rows4_ggml::<8>(row, ys)
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
        // Both Q5 variants, whichever the dispatch picks, equal the portable loop.
        #[cfg(target_arch = "x86_64")]
        if has_avx512() {
            for ty in [GgmlType::Q5_0, GgmlType::Q5_1] {
                for seed in 0..20 {
                    let row = crate::compute::cpu::quant::tests::random_row(ty, 19, seed);
                    let x: Vec<f32> = noise(seed + 9, 19 * 32)
                        .iter()
                        .map(|&b| b as f32 / 64.0 - 2.0)
                        .collect();
                    let crate::compute::cpu::activations::Activations::Q8(y) =
                        crate::compute::cpu::activations::quantize(ty, &x)
                    else {
                        panic!("q8")
                    };
                    let reference = crate::compute::cpu::activations::dot_blocks(ty, &row, &y);
                    // SAFETY: AVX2 and AVX-512 are present (checked above).
                    let (a, b) = unsafe {
                        if ty == GgmlType::Q5_0 {
                            (x86::q5_avx2::row_q5_0(&row, &y), x86::q5_avx512::row_q5_0(&row, &y))
                        } else {
                            (x86::q5_avx2::row_q5_1(&row, &y), x86::q5_avx512::row_q5_1(&row, &y))
                        }
                    };
                    assert_eq!(a.to_bits(), reference.to_bits(), "{ty} avx2");
                    assert_eq!(b.to_bits(), reference.to_bits(), "{ty} avx512");
                    let ys = [&y[..], &y[..], &y[..], &y[..]];
                    // SAFETY: as above.
                    let quad = unsafe {
                        if ty == GgmlType::Q5_0 {
                            [x86::q5_avx2::rows4_q5_0(&row, ys), x86::q5_avx512::rows4_q5_0(&row, ys)]
                        } else {
                            [x86::q5_avx2::rows4_q5_1(&row, ys), x86::q5_avx512::rows4_q5_1(&row, ys)]
                        }
                    };
                    for v in quad.iter().flatten() {
                        assert_eq!(v.to_bits(), reference.to_bits(), "{ty} rows4");
                    }
                }
            }
        }
        let extreme = [127i8; 32];
        let low = [-127i8; 32];
        assert_eq!(signed_dot(&extreme, &low), -127 * 127 * 32);
        assert_eq!(nibbles_dot(&[0xFF; 16], &extreme), 15 * 127 * 32);
    }
}
