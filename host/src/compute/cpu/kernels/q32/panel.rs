//! Prefill kernels of the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0) over panels of eight weight rows, on CPUs with AVX-512 VNNI; and
//! of all but Q8_0 on CPUs with AVX2 only.
//!
//! ggml's order (see `portable::dot_blocks`) keeps, per weight row and
//! activation row, eight f32 lanes: lane `l` of a block is the exact integer
//! sum of the products of values `4l..4l + 4`, fused with `d · y.d` into its
//! accumulator; the lanes are summed once at the end (`hsum_float_8`). The
//! row kernels (`q32::kernels`) keep one row's eight lanes in one vector
//! and pay a `vpdpbusd`, a conversion and an FMA per block and pair of rows.
//! Here a `Panel` holds eight weight rows' quants per block with one weight
//! row per i32 lane (as ggml's repacked `q4_0_8x8` kernels do): lane position
//! `l` of all eight rows is one vector, and one `vpdpbusd` against four
//! activation values (broadcast) forms it for the eight rows at once. The
//! eight lane positions become eight accumulators whose lanes are rows, so
//! the same fused steps run per row and `hsum_float_8` is seven vertical adds
//! for eight results: bit for bit what `dot_blocks` gives (tested below).
//!
//! The quants go in unsigned (the type's offset of 8, 16 or 128 added, as
//! the bytes `vpdpbusd` takes), and the offset comes back in as the
//! accumulator's start value, `-offset · Σ y`, precomputed per activation
//! block (`BlockQ8x4`). Every lane sum is the same exact integer as ggml's.
//!
//! Without VNNI, `vpmaddubsw` and `vpmaddwd` against ones form the same four
//! products' exact sum (the pairs in i16 hold at most 2 · 31 · 127; Q8_0's
//! unsigned quants, up to 255, would saturate them, so Q8_0 keeps the row
//! kernels there). With 16 vector registers, the lane positions go in four
//! passes of two rather than two of four.

use std::arch::x86_64::*;

use super::x86::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, layout, unpack_nibbles, unpack_q5};
use crate::compute::cpu::kernels::features::{self, Isa};
use crate::compute::cpu::kernels::x86::f16_pair;
use crate::compute::gguf::GgmlType;
use crate::compute::quant::q8::BlockQ8;

/// Weight rows per panel.
pub const PANEL_ROWS: usize = 8;
/// Activation rows per kernel call.
pub const GROUP_ROWS: usize = 4;

/// One block of a panel: `q[l]` holds in bytes `4r..4r + 4` weight row `r`'s
/// unsigned quants `4l..4l + 4`; `d` and `m` the rows' scales and mins (0
/// for types without a min).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Panel {
    q: [[u8; 32]; 8],
    d: [f32; 8],
    m: [f32; 8],
}

/// One block of four activation rows: `q[j][l]` row `j`'s values
/// `4l..4l + 4` (four i8s as one i32), `start[j][l]` minus the weight type's
/// offset times their sum, and the rows' `d` and `s`.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct BlockQ8x4 {
    q: [[i32; 8]; 4],
    start: [[i32; 8]; 4],
    d: [f32; 4],
    s: [f32; 4],
}

/// Repacks the `PANEL_ROWS` rows that start at `w`, `row_bytes` apart, into
/// `out` (cleared first), one `Panel` per block.
pub type PackFn = unsafe fn(w: &[u8], row_bytes: usize, out: &mut Vec<Panel>);

/// A panel's eight rows times four activation rows: weight row `r` times
/// activation row `j` into `out[j][r]`.
pub type PanelKernel = unsafe fn(panel: &[Panel], ys: &[BlockQ8x4], out: &mut [[f32; 8]; 4]);

/// The packing and the kernel for `ty` at the level the kernels run at
/// (`features::level`): AVX-512 VNNI, or AVX2 (not Q8_0). Both are safe to
/// call once returned (the features were checked here); they check their
/// slices' lengths.
pub fn kernels(ty: GgmlType) -> Option<(PackFn, PanelKernel)> {
    kernels_at(ty, features::level())
}

/// `kernels` for the path `isa`, which must not be above `features::level()`.
fn kernels_at(ty: GgmlType, isa: Isa) -> Option<(PackFn, PanelKernel)> {
    debug_assert!(isa <= features::level());
    fn of<const T: u8>(isa: Isa) -> Option<(PackFn, PanelKernel)> {
        match isa {
            Isa::Avx512 => Some((pack::<T>, kernel::<T>)),
            Isa::Avx2 if T != Q8_0 => Some((pack::<T>, kernel_avx2::<T>)),
            _ => None,
        }
    }
    match ty {
        GgmlType::Q4_0 => of::<Q4_0>(isa),
        GgmlType::Q4_1 => of::<Q4_1>(isa),
        GgmlType::Q5_0 => of::<Q5_0>(isa),
        GgmlType::Q5_1 => of::<Q5_1>(isa),
        GgmlType::Q8_0 => of::<Q8_0>(isa),
        _ => None,
    }
}

/// What the unsigned quants of `ty` exceed its values by.
fn offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q4_0 => 8,
        GgmlType::Q5_0 => 16,
        GgmlType::Q8_0 => 128,
        _ => 0,
    }
}

/// Groups of four activation rows (the last one padded by repeating its
/// last row), each interleaved block by block for the kernels of `ty`.
pub fn interleave(ty: GgmlType, rows: &[&[BlockQ8]]) -> Vec<BlockQ8x4> {
    let offset = offset(ty);
    let blocks = rows.first().map_or(0, |r| r.len());
    let mut out = Vec::with_capacity(blocks);
    #[allow(clippy::needless_range_loop)] // `b` indexes four rows
    for b in 0..blocks {
        let mut quad = BlockQ8x4 {
            q: [[0; 8]; 4],
            start: [[0; 8]; 4],
            d: [0.0; 4],
            s: [0.0; 4],
        };
        for j in 0..GROUP_ROWS {
            let y = &rows[j.min(rows.len() - 1)][b];
            for (l, four) in y.qs.chunks_exact(4).enumerate() {
                quad.q[j][l] = i32::from_le_bytes([four[0] as u8, four[1] as u8, four[2] as u8, four[3] as u8]);
                quad.start[j][l] = -offset * four.iter().map(|&v| v as i32).sum::<i32>();
            }
            quad.d[j] = y.d;
            quad.s[j] = y.s;
        }
        out.push(quad);
    }
    out
}

/// A block's 32 quants as unsigned bytes, in value order.
#[inline]
#[target_feature(enable = "avx2")]
fn unsigned<const T: u8>(w: &[u8]) -> __m256i {
    match T {
        Q4_0 => unpack_nibbles(&w[2..18]),
        Q4_1 => unpack_nibbles(&w[4..20]),
        Q5_0 => unpack_q5(&w[2..6], &w[6..22]),
        Q5_1 => unpack_q5(&w[4..8], &w[8..24]),
        _ => {
            let q = &w[2..34];
            // SAFETY: `q` is 32 bytes.
            let signed = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
            _mm256_xor_si256(signed, _mm256_set1_epi8(0x80u8 as i8))
        }
    }
}

/// A `PackFn` (of both paths).
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack<const T: u8>(w: &[u8], row_bytes: usize, out: &mut Vec<Panel>) {
    let (bytes, has_min) = layout(T);
    let blocks = row_bytes / bytes;
    out.clear();
    out.reserve(blocks);
    for b in 0..blocks {
        let block = |r: usize| &w[r * row_bytes + b * bytes..][..bytes];
        let mut panel = Panel {
            q: [[0; 32]; 8],
            d: [0.0; 8],
            m: [0.0; 8],
        };
        let rows: [__m256i; PANEL_ROWS] = std::array::from_fn(|r| unsigned::<T>(block(r)));
        for (l, words) in transpose_words(rows).into_iter().enumerate() {
            // SAFETY: `q[l]` is 32 bytes.
            unsafe { _mm256_storeu_si256(panel.q[l].as_mut_ptr().cast(), words) };
        }
        for r in 0..PANEL_ROWS {
            let (d, m) = f16_pair(block(r), 0);
            panel.d[r] = d;
            if has_min {
                panel.m[r] = m;
            }
        }
        out.push(panel);
    }
}

/// Eight rows of eight 4-byte words as eight vectors of word `l` of each row
/// (row order): the panel's interleave, in 24 shuffles rather than 64 copies.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose_words(v: [__m256i; 8]) -> [__m256i; 8] {
    let t = |a, b| (_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
    let (t0, t1) = t(v[0], v[1]);
    let (t2, t3) = t(v[2], v[3]);
    let (t4, t5) = t(v[4], v[5]);
    let (t6, t7) = t(v[6], v[7]);
    let u = |a, b| (_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
    // u0: words 0 and 4 of rows 0..4, u1: words 1 and 5, u2: 2 and 6, u3: 3 and 7.
    let (u0, u1) = u(t0, t2);
    let (u2, u3) = u(t1, t3);
    let (u4, u5) = u(t4, t6);
    let (u6, u7) = u(t5, t7);
    let lo = |a, b| _mm256_permute2x128_si256::<0x20>(a, b);
    let hi = |a, b| _mm256_permute2x128_si256::<0x31>(a, b);
    [
        lo(u0, u4),
        lo(u1, u5),
        lo(u2, u6),
        lo(u3, u7),
        hi(u0, u4),
        hi(u1, u5),
        hi(u2, u6),
        hi(u3, u7),
    ]
}

/// A `PanelKernel`. The eight lane positions go in two halves of four, so
/// that four activation rows' accumulators stay in registers.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel<const T: u8>(panel: &[Panel], ys: &[BlockQ8x4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.len() >= panel.len());
    let has_min = layout(T).1;
    let mut low = [[_mm256_setzero_ps(); 4]; GROUP_ROWS];
    let mut mins = [_mm256_setzero_ps(); GROUP_ROWS];
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); 4]; GROUP_ROWS];
        for (p, y) in panel.iter().zip(ys) {
            // SAFETY: `d`, `m` are eight aligned f32s, `q[l]` 32 aligned bytes.
            let (d, m) = unsafe { (_mm256_load_ps(p.d.as_ptr()), _mm256_load_ps(p.m.as_ptr())) };
            // SAFETY: as above.
            let x: [__m256i; 4] =
                std::array::from_fn(|l| unsafe { _mm256_load_si256(p.q[4 * half + l].as_ptr().cast()) });
            for j in 0..GROUP_ROWS {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(y.d[j]));
                for l in 0..4 {
                    let lane = 4 * half + l;
                    let start = _mm256_set1_epi32(y.start[j][lane]);
                    let sums = _mm256_dpbusd_epi32(start, x[l], _mm256_set1_epi32(y.q[j][lane]));
                    acc[j][l] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[j][l]);
                }
                if has_min && half == 0 {
                    mins[j] = _mm256_add_ps(mins[j], _mm256_mul_ps(m, _mm256_set1_ps(y.s[j])));
                }
            }
        }
        if half == 0 {
            low = acc;
            continue;
        }
        for (j, out) in out.iter_mut().enumerate() {
            // `hsum_float_8` with the lanes as vectors: x[4 + i] + x[i], then
            // (s0 + s2) + (s1 + s3); then the mins.
            let s: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(acc[j][i], low[j][i]));
            let sum = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
            let sum = if has_min { _mm256_add_ps(sum, mins[j]) } else { sum };
            // SAFETY: `out` is eight f32s.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        }
    }
}

/// `kernel` with AVX2 only: each lane position's four products summed by
/// `vpmaddubsw` and `vpmaddwd` (exact: see the module's notes), in four
/// passes of two lane positions, so that the accumulators of four activation
/// rows fit the 16 registers.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_avx2<const T: u8>(panel: &[Panel], ys: &[BlockQ8x4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.len() >= panel.len());
    let has_min = layout(T).1;
    let ones = _mm256_set1_epi16(1);
    let mut lanes = [[_mm256_setzero_ps(); 8]; GROUP_ROWS];
    let mut mins = [_mm256_setzero_ps(); GROUP_ROWS];
    for pass in 0..4 {
        let mut acc = [[_mm256_setzero_ps(); 2]; GROUP_ROWS];
        for (p, y) in panel.iter().zip(ys) {
            // SAFETY: `d`, `m` are eight aligned f32s, `q[l]` 32 aligned bytes.
            let (d, m) = unsafe { (_mm256_load_ps(p.d.as_ptr()), _mm256_load_ps(p.m.as_ptr())) };
            // SAFETY: as above.
            let x: [__m256i; 2] =
                std::array::from_fn(|l| unsafe { _mm256_load_si256(p.q[2 * pass + l].as_ptr().cast()) });
            for j in 0..GROUP_ROWS {
                let scale = _mm256_mul_ps(d, _mm256_set1_ps(y.d[j]));
                for l in 0..2 {
                    let lane = 2 * pass + l;
                    let pairs = _mm256_maddubs_epi16(x[l], _mm256_set1_epi32(y.q[j][lane]));
                    let sums = _mm256_add_epi32(_mm256_set1_epi32(y.start[j][lane]), _mm256_madd_epi16(pairs, ones));
                    acc[j][l] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(sums), acc[j][l]);
                }
                if has_min && pass == 0 {
                    mins[j] = _mm256_add_ps(mins[j], _mm256_mul_ps(m, _mm256_set1_ps(y.s[j])));
                }
            }
        }
        for j in 0..GROUP_ROWS {
            lanes[j][2 * pass..2 * pass + 2].copy_from_slice(&acc[j]);
        }
    }
    for (j, out) in out.iter_mut().enumerate() {
        // As `kernel`: x[4 + i] + x[i], then (s0 + s2) + (s1 + s3); then the mins.
        let x = &lanes[j];
        let s: [__m256; 4] = std::array::from_fn(|i| _mm256_add_ps(x[4 + i], x[i]));
        let sum = _mm256_add_ps(_mm256_add_ps(s[0], s[2]), _mm256_add_ps(s[1], s[3]));
        let sum = if has_min { _mm256_add_ps(sum, mins[j]) } else { sum };
        // SAFETY: `out` is eight f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kernels::features::can_test;
    use crate::compute::cpu::kernels::portable::dot_blocks;
    use crate::compute::quant::q8::quantize_block;
    use crate::compute::quant::testing::{BLOCK_TYPES, noise, random_row};

    #[test]
    fn avx512_panels_equal_the_portable_loop_bit_for_bit() {
        if can_test(Isa::Avx512, "q32 panel kernels (AVX-512)") {
            panels_equal_the_portable_loop(Isa::Avx512);
        }
    }

    #[test]
    fn avx2_panels_equal_the_portable_loop_bit_for_bit() {
        if can_test(Isa::Avx2, "q32 panel kernels (AVX2)") {
            assert!(
                kernels_at(GgmlType::Q8_0, Isa::Avx2).is_none(),
                "Q8_0 would saturate vpmaddubsw"
            );
            panels_equal_the_portable_loop(Isa::Avx2);
        }
    }

    fn panels_equal_the_portable_loop(isa: Isa) {
        for ty in BLOCK_TYPES {
            let Some((pack, kernel)) = kernels_at(ty, isa) else {
                assert!(
                    isa == Isa::Avx2 && ty == GgmlType::Q8_0,
                    "{isa:?}: no panel kernel for {ty}"
                );
                continue;
            };
            let blocks = 13;
            let row_bytes = blocks * ty.block_bytes();
            for seed in 0..8 {
                let w: Vec<u8> = (0..8).flat_map(|r| random_row(ty, blocks, seed * 8 + r)).collect();
                // Three rows: the group is padded with the last.
                let ys: Vec<Vec<BlockQ8>> = (0..3)
                    .map(|j| {
                        let x: Vec<f32> = noise(seed * 4 + j + 50, blocks * 32)
                            .iter()
                            .map(|&b| b as f32 / 64.0 - 2.0)
                            .collect();
                        x.chunks_exact(32).map(quantize_block).collect()
                    })
                    .collect();
                let group: Vec<&[BlockQ8]> = ys.iter().map(|y| &y[..]).collect();
                let mut panels = Vec::new();
                let mut out = [[f32::NAN; 8]; 4];
                // SAFETY: `kernels` checked the features.
                unsafe {
                    pack(&w, row_bytes, &mut panels);
                    kernel(&panels, &interleave(ty, &group), &mut out);
                }
                for j in 0..4 {
                    for r in 0..8 {
                        let y = &ys[j.min(2)];
                        let expected = dot_blocks(ty, &w[r * row_bytes..(r + 1) * row_bytes], y);
                        assert_eq!(
                            out[j][r].to_bits(),
                            expected.to_bits(),
                            "{isa:?} {ty} seed {seed} ({j}, {r})"
                        );
                    }
                }
            }
        }
    }
}
