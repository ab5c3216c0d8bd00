//! Row dot products of the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) with Q8 activations, in AVX2 (and AVX-512 VNNI) vectors, in the
//! order of ggml's x86 kernels. `portable::dot_blocks` is the loop they equal
//! bit for bit.

use crate::compute::gguf::GgmlType;
use crate::compute::quant::q8::BlockQ8;

#[cfg(target_arch = "x86_64")]
pub mod panel;

/// One weight row times one activation row.
pub type RowKernel = unsafe fn(&[u8], &[BlockQ8]) -> f32;
/// One weight row times four activation rows, each exactly as `RowKernel`.
pub type Rows4Kernel = unsafe fn(&[u8], [&[BlockQ8]; 4]) -> [f32; 4];

/// The row kernels this CPU runs for `ty`, or None. Safe to call once
/// returned: the CPU features they need were checked here; they read whole
/// blocks of the row and the matching blocks of each activation row.
pub fn kernels(ty: GgmlType) -> Option<(RowKernel, Rows4Kernel)> {
    #[cfg(target_arch = "x86_64")]
    if super::features::has_avx2() {
        macro_rules! pick {
            ($m:ident) => {
                match ty {
                    GgmlType::Q4_0 => Some((x86::$m::row_q4_0 as RowKernel, x86::$m::rows4_q4_0 as Rows4Kernel)),
                    GgmlType::Q4_1 => Some((x86::$m::row_q4_1 as RowKernel, x86::$m::rows4_q4_1 as Rows4Kernel)),
                    GgmlType::Q5_0 => Some((x86::$m::row_q5_0 as RowKernel, x86::$m::rows4_q5_0 as Rows4Kernel)),
                    GgmlType::Q5_1 => Some((x86::$m::row_q5_1 as RowKernel, x86::$m::rows4_q5_1 as Rows4Kernel)),
                    GgmlType::Q8_0 => Some((x86::$m::row_q8_0 as RowKernel, x86::$m::rows4_q8_0 as Rows4Kernel)),
                    _ => None,
                }
            };
        }
        return if super::features::has_avx512() {
            pick!(avx512)
        } else {
            pick!(avx2)
        };
    }
    let _ = ty;
    None
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::BlockQ8;
    use crate::compute::cpu::kernels::x86::{f16_pair, hsum_ps};
    use crate::compute::gguf::GgmlType;

    /// Pairwise integer products of unsigned x and signed y as eight f32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn pairs_ps(x: __m256i, y: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1)))
    }

    /// The 32 unsigned nibbles of a block: low halves first, then high halves.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn unpack_nibbles(bytes: &[u8]) -> __m256i {
        // SAFETY: callers pass the 16 packed bytes of one block.
        let packed = unsafe { _mm_loadu_si128(bytes[..16].as_ptr().cast()) };
        let mask = _mm_set1_epi8(0x0F);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(packed), mask),
            _mm_and_si128(packed, mask),
        )
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
    pub(super) fn unpack_q5(qh: &[u8], qs: &[u8]) -> __m256i {
        let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
        _mm256_or_si256(unpack_nibbles(qs), high)
    }

    /// The 32 bytes of `y.qs`.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn load_y(y: &BlockQ8) -> __m256i {
        // SAFETY: `y.qs` is 32 bytes.
        unsafe { _mm256_loadu_si256(y.qs.as_ptr().cast()) }
    }

    /// Tags of the weight types the generic kernels below are stamped out for.
    pub(super) const Q4_0: u8 = 0;
    pub(super) const Q4_1: u8 = 1;
    pub(super) const Q5_0: u8 = 5;
    pub(super) const Q5_1: u8 = 6;
    pub(super) const Q8_0: u8 = 8;

    /// A block's size in bytes, and whether it has a min (Q4_1, Q5_1: unsigned
    /// quants, and `m * y.s` added per block).
    pub(super) const fn layout(ty: u8) -> (usize, bool) {
        match ty {
            Q4_0 => (GgmlType::Q4_0.block_bytes(), false),
            Q4_1 => (GgmlType::Q4_1.block_bytes(), true),
            Q5_0 => (GgmlType::Q5_0.block_bytes(), false),
            Q5_1 => (GgmlType::Q5_1.block_bytes(), true),
            _ => (GgmlType::Q8_0.block_bytes(), false),
        }
    }

    /// A block's 32 quants as ggml's AVX2 kernels load them: signed for Q4_0
    /// (`q - 8`), Q5_0 (`q - 16`) and Q8_0, unsigned for Q4_1 and Q5_1.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn quants<const TY: u8>(w: &[u8]) -> __m256i {
        match TY {
            Q4_0 => _mm256_sub_epi8(unpack_nibbles(&w[2..18]), _mm256_set1_epi8(8)),
            Q4_1 => unpack_nibbles(&w[4..20]),
            // 0xF0 (-16 with the nibble) where the block's qh bit is clear.
            Q5_0 => {
                let minus16 = _mm256_andnot_si256(bytes_from_bits(&w[2..6]), _mm256_set1_epi8(0xF0u8 as i8));
                _mm256_or_si256(unpack_nibbles(&w[6..22]), minus16)
            }
            Q5_1 => unpack_q5(&w[4..8], &w[8..24]),
            // SAFETY: a Q8_0 block holds 32 quant bytes after its scale.
            _ => unsafe { _mm256_loadu_si256(w[2..34].as_ptr().cast()) },
        }
    }

    /// Pairwise integer products of unsigned x and signed y, each lane the sum
    /// of four adjacent products, as f32, with VNNI's `vpdpbusd` (the same
    /// integers as `pairs_ps`: `maddubs` cannot saturate on these operands).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
    fn pairs_vnni(x: __m256i, y: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), x, y))
    }

    /// The row kernels, stamped out for AVX2 and for AVX-512 VNNI (whose
    /// `vpdpbusd` forms the lanes' integer sums in one step; the results are
    /// the same).
    macro_rules! ggml_kernels {
        ($module:ident, $features:literal, $pairs:ident) => {
            pub mod $module {
                use super::*;

                /// The block's products with `qy` as eight f32 lanes of four
                /// adjacent products each (ggml's `mul_sum_i8_pairs_float` for
                /// signed quants, by their absolute values and `qy` with their
                /// signs; `mul_sum_us8_pairs_float` for unsigned ones).
                #[inline]
                #[target_feature(enable = $features)]
                fn products<const TY: u8>(x: __m256i, qy: __m256i) -> __m256 {
                    if layout(TY).1 {
                        $pairs(x, qy)
                    } else {
                        $pairs(_mm256_sign_epi8(x, x), _mm256_sign_epi8(qy, x))
                    }
                }

                /// A row as ggml's AVX2 `ggml_vec_dot_*_q8_*` computes it (and,
                /// for Q4_0, Q5_0 and Q8_0, llamafile's `tinyBLAS_Q0_AVX`, which
                /// llama.cpp runs for prompts: the same order): per block, the
                /// products' eight lanes times `d * y.d`, fused into eight
                /// accumulators; the lanes summed once at the end
                /// (`hsum_float_8`), then the mins `m * y.s` (exact in f32) added.
                #[inline]
                #[target_feature(enable = $features)]
                fn row_ggml<const TY: u8>(row: &[u8], blocks: &[BlockQ8]) -> f32 {
                    let (bytes, has_min) = layout(TY);
                    let mut acc = _mm256_setzero_ps();
                    let mut mins = 0.0f32;
                    for (w, y) in row.chunks_exact(bytes).zip(blocks) {
                        if has_min {
                            mins += f16_pair(w, 0).1 * y.s;
                        }
                        let products = products::<TY>(quants::<TY>(w), load_y(y));
                        acc = _mm256_fmadd_ps(scale8(w, 0, y.d), products, acc);
                    }
                    if has_min {
                        hsum_ps(acc) + mins
                    } else {
                        hsum_ps(acc)
                    }
                }

                /// `row_ggml` for four activation rows, with the weight block
                /// unpacked once: each row keeps its own accumulators, so its
                /// result is the same.
                #[inline]
                #[target_feature(enable = $features)]
                fn rows4_ggml<const TY: u8>(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
                    let (bytes, has_min) = layout(TY);
                    let mut acc = [_mm256_setzero_ps(); 4];
                    let mut mins = [0.0f32; 4];
                    for (b, w) in row.chunks_exact(bytes).enumerate() {
                        let x = quants::<TY>(w);
                        let m = f16_pair(w, 0).1;
                        for r in 0..4 {
                            let y = &ys[r][b];
                            if has_min {
                                mins[r] += m * y.s;
                            }
                            acc[r] = _mm256_fmadd_ps(scale8(w, 0, y.d), products::<TY>(x, load_y(y)), acc[r]);
                        }
                    }
                    let mut out = [hsum_ps(acc[0]), hsum_ps(acc[1]), hsum_ps(acc[2]), hsum_ps(acc[3])];
                    if has_min {
                        for r in 0..4 {
                            out[r] += mins[r];
                        }
                    }
                    out
                }

                wrappers! {
                    $features;
                    row_q4_0, rows4_q4_0, Q4_0;
                    row_q4_1, rows4_q4_1, Q4_1;
                    row_q5_0, rows4_q5_0, Q5_0;
                    row_q5_1, rows4_q5_1, Q5_1;
                    row_q8_0, rows4_q8_0, Q8_0;
                }
            }
        };
    }

    macro_rules! wrappers {
        ($features:literal; $($row:ident, $rows4:ident, $ty:ident;)*) => {
            $(
                #[target_feature(enable = $features)]
                pub unsafe fn $row(row: &[u8], blocks: &[BlockQ8]) -> f32 {
                    row_ggml::<$ty>(row, blocks)
                }

                #[target_feature(enable = $features)]
                pub unsafe fn $rows4(row: &[u8], ys: [&[BlockQ8]; 4]) -> [f32; 4] {
                    rows4_ggml::<$ty>(row, ys)
                }
            )*
        };
    }

    ggml_kernels!(avx2, "avx2,fma,f16c", pairs_ps);
    ggml_kernels!(avx512, "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni", pairs_vnni);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kernels::features::{Isa, can_test};
    use crate::compute::cpu::kernels::portable::dot_blocks;
    use crate::compute::quant::q8::quantize_block;
    use crate::compute::quant::testing::{BLOCK_TYPES, noise, random_row};

    /// The dispatched kernels (AVX-512 VNNI where present) and the AVX2 ones
    /// each equal the portable loop, one row and four.
    #[test]
    fn every_kernel_equals_the_portable_loop_bit_for_bit() {
        if !can_test(Isa::Avx2, "q32 row kernels") {
            return;
        }
        for ty in BLOCK_TYPES {
            for seed in 0..20 {
                let blocks = 18 + seed as usize % 3;
                let row = random_row(ty, blocks, seed);
                let ys: Vec<Vec<BlockQ8>> = (0..4)
                    .map(|r| {
                        noise(seed * 4 + r + 9, blocks * 32)
                            .iter()
                            .map(|&b| b as f32 / 64.0 - 2.0)
                            .collect::<Vec<f32>>()
                            .chunks_exact(32)
                            .map(quantize_block)
                            .collect()
                    })
                    .collect();
                let ys4 = [&ys[0][..], &ys[1], &ys[2], &ys[3]];
                let expected: Vec<u32> = ys.iter().map(|y| dot_blocks(ty, &row, y).to_bits()).collect();
                let (row_kernel, rows4_kernel) = kernels(ty).expect("a kernel for every block type");
                // SAFETY: `kernels` checked the features; whole blocks.
                let (one, four) = unsafe { (row_kernel(&row, &ys[0]), rows4_kernel(&row, ys4)) };
                assert_eq!(one.to_bits(), expected[0], "{ty} seed {seed}");
                assert_eq!(four.map(f32::to_bits).to_vec(), expected, "{ty} rows4 seed {seed}");
                #[cfg(target_arch = "x86_64")]
                {
                    // SAFETY: AVX2, FMA and F16C are present (`can_test`).
                    let (one, four) = unsafe {
                        match ty {
                            GgmlType::Q4_0 => (x86::avx2::row_q4_0(&row, &ys[0]), x86::avx2::rows4_q4_0(&row, ys4)),
                            GgmlType::Q4_1 => (x86::avx2::row_q4_1(&row, &ys[0]), x86::avx2::rows4_q4_1(&row, ys4)),
                            GgmlType::Q5_0 => (x86::avx2::row_q5_0(&row, &ys[0]), x86::avx2::rows4_q5_0(&row, ys4)),
                            GgmlType::Q5_1 => (x86::avx2::row_q5_1(&row, &ys[0]), x86::avx2::rows4_q5_1(&row, ys4)),
                            _ => (x86::avx2::row_q8_0(&row, &ys[0]), x86::avx2::rows4_q8_0(&row, ys4)),
                        }
                    };
                    assert_eq!(one.to_bits(), expected[0], "{ty} avx2");
                    assert_eq!(four.map(f32::to_bits).to_vec(), expected, "{ty} avx2 rows4");
                }
            }
        }
    }

    /// The AVX-512 VNNI kernels, tested on their own where the CPU has them.
    #[test]
    fn avx512_kernels_equal_the_portable_loop() {
        if !can_test(Isa::Avx512, "q32 AVX-512 row kernels") {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for ty in BLOCK_TYPES {
            let row = random_row(ty, 16, 3);
            let x: Vec<f32> = noise(4, 16 * 32).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
            let y: Vec<BlockQ8> = x.chunks_exact(32).map(quantize_block).collect();
            // SAFETY: AVX-512 VNNI is present (`can_test`).
            let got = unsafe {
                match ty {
                    GgmlType::Q4_0 => x86::avx512::row_q4_0(&row, &y),
                    GgmlType::Q4_1 => x86::avx512::row_q4_1(&row, &y),
                    GgmlType::Q5_0 => x86::avx512::row_q5_0(&row, &y),
                    GgmlType::Q5_1 => x86::avx512::row_q5_1(&row, &y),
                    _ => x86::avx512::row_q8_0(&row, &y),
                }
            };
            assert_eq!(got.to_bits(), dot_blocks(ty, &row, &y).to_bits(), "{ty}");
        }
    }
}
