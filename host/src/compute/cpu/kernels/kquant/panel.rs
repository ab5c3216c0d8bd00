//! Prefill kernels of Q4_K and Q6_K over panels of eight weight rows, one row
//! per i32 lane (as `q32::panel` for the 32-value types), on CPUs with
//! AVX-512 VNNI. They keep the float order of the kernels llama.cpp runs for
//! a prompt (see `portable`):
//!
//! - Q4_K, rows in whole groups of four: `gemm_q4_K_8x8_q8_K`'s order
//!   (`portable::dot_q4k` with `GEMM_GROUPS`): per 64 values the exact integer
//!   sum of the scaled products and of the mins times the group sums, each
//!   fused into its f32 chain, `acc - acc_min` at the end.
//! - Q6_K from eight rows: the tiled kernel's order
//!   (`portable::dot_tiled_portable`): per super-block the exact integer total,
//!   `r = s1 · d`, `acc = r · y.d + acc` (fused).
//!
//! With AVX-512 VNNI, one `vpdpbusd` forms four products of all eight rows
//! against four activation values (broadcast); a group's sums are scaled by
//! the rows' group scales with `vpmulld`. With AVX2 only, `vpmaddubsw` forms
//! pairs of those products in i16 lanes, which add up in i16 as far as they
//! cannot overflow (Q4_K: a group of 32; Q6_K: 16 values) before one
//! `vpmaddwd` with the rows' scales widens them. Either way the integer sums
//! are exact, so only the f32 steps matter, and they are the portable loops'
//! with eight rows in lanes: both paths give the same bits.

use std::arch::x86_64::*;

use crate::compute::cpu::kernels::features::{self, Isa};
use crate::compute::gguf::GgmlType;
use crate::compute::quant::kquants;
use crate::compute::quant::q8::BlockQ8K;
use crate::compute::quant::{GROUPS, QK_K};

/// Weight rows per panel.
pub const PANEL_ROWS: usize = 8;
/// Activation rows per kernel call.
pub const GROUP_ROWS: usize = 4;

/// One super-block of eight rows. `q[g][s]` holds in bytes `4r..4r + 4` row
/// `r`'s unsigned quants `32g + 4s..32g + 4s + 4` (Q4_K: the nibbles; Q6_K:
/// the stored value + 32); `scales[g]` the rows' scales of group `g` of 16;
/// Q4_K: `mins[p]` the mins of groups `4p` and `4p + 2` (of 16) as an i16
/// pair, and `dmin`.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub struct Panel {
    q: [[[u8; 32]; 8]; 8],
    scales: [[i32; 8]; GROUPS],
    mins: [[i32; 8]; 4],
    d: [f32; 8],
    dmin: [f32; 8],
}

/// Repacks the `PANEL_ROWS` rows that start at `w`, `row_bytes` apart, into
/// `out` (cleared first), one `Panel` per super-block.
pub type PackFn = fn(w: &[u8], row_bytes: usize, out: &mut Vec<Panel>);

/// A panel's eight rows times four activation rows: weight row `r` times
/// activation row `j` into `out[j][r]`.
pub type PanelKernel = unsafe fn(panel: &[Panel], ys: [&[BlockQ8K]; 4], out: &mut [[f32; 8]; 4]);

/// The packing and the kernel for `ty` (Q4_K in gemm order, Q6_K in tiled
/// order) at the level the kernels run at (`features::level`): AVX-512 VNNI
/// or AVX2. The kernel is safe to call once returned (the features were
/// checked here); it checks its slices' lengths.
pub fn kernels(ty: GgmlType) -> Option<(PackFn, PanelKernel)> {
    kernels_at(ty, features::level())
}

/// `kernels` for the path `isa`, which must not be above `features::level()`.
fn kernels_at(ty: GgmlType, isa: Isa) -> Option<(PackFn, PanelKernel)> {
    debug_assert!(isa <= features::level());
    let (q4k, q6k): (PanelKernel, PanelKernel) = match isa {
        Isa::Avx512 => (kernel_q4k, kernel_q6k_tiled),
        Isa::Avx2 => (kernel_q4k_avx2, kernel_q6k_tiled_avx2),
        Isa::Portable => return None,
    };
    match ty {
        GgmlType::Q4K => Some((pack::<true> as PackFn, q4k)),
        GgmlType::Q6K => Some((pack::<false> as PackFn, q6k)),
        _ => None,
    }
}

/// Packs Q4_K (`Q4K`) or Q6_K rows.
fn pack<const Q4K: bool>(w: &[u8], row_bytes: usize, out: &mut Vec<Panel>) {
    let (ty, bytes) = if Q4K {
        (GgmlType::Q4K, kquants::Q4K_BYTES)
    } else {
        (GgmlType::Q6K, kquants::Q6K_BYTES)
    };
    let blocks = row_bytes / bytes;
    out.clear();
    for b in 0..blocks {
        let mut panel = Panel {
            q: [[[0; 32]; 8]; 8],
            scales: [[0; 8]; GROUPS],
            mins: [[0; 8]; 4],
            d: [0.0; 8],
            dmin: [0.0; 8],
        };
        for r in 0..PANEL_ROWS {
            let block = kquants::decode(ty, &w[r * row_bytes + b * bytes..][..bytes]);
            panel.d[r] = block.d;
            panel.dmin[r] = block.dmin;
            for (lanes, &s) in panel.scales.iter_mut().zip(&block.scales) {
                lanes[r] = s;
            }
            for (p, lanes) in panel.mins.iter_mut().enumerate() {
                let (lo, hi) = (block.mins[4 * p], block.mins[4 * p + 2]);
                lanes[r] = (lo as u16 as i32) | (hi << 16);
            }
            let offset = if Q4K { 0 } else { 32 };
            let mut unsigned = [0u8; QK_K];
            for (u, &q) in unsigned.iter_mut().zip(&block.q) {
                *u = q.wrapping_add(offset) as u8;
            }
            // Four values at a time: values 32g + 4s.. go to lane r of q[g][s].
            for (v, four) in unsigned.chunks_exact(4).enumerate() {
                panel.q[v / 8][v % 8][4 * r..4 * r + 4].copy_from_slice(four);
            }
        }
        out.push(panel);
    }
}

/// Four activation values at `at` of `y` as an i32 in every lane.
#[inline]
#[target_feature(enable = "avx2")]
fn splat4(y: &BlockQ8K, at: usize) -> __m256i {
    let q = &y.qs[at..at + 4];
    _mm256_set1_epi32(i32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]))
}

/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel_q4k(panel: &[Panel], ys: [&[BlockQ8K]; 4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.iter().all(|y| y.len() >= panel.len()));
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); GROUP_ROWS];
    let mut acc_min = [_mm256_setzero_ps(); GROUP_ROWS];
    for (b, p) in panel.iter().enumerate() {
        let y = [&ys[0][b], &ys[1][b], &ys[2][b], &ys[3][b]];
        // SAFETY: `d` and `dmin` are eight aligned f32s.
        let (d, dmin) = unsafe { (_mm256_load_ps(p.d.as_ptr()), _mm256_load_ps(p.dmin.as_ptr())) };
        let scale: [__m256; 4] = std::array::from_fn(|j| _mm256_mul_ps(d, _mm256_set1_ps(y[j].d)));
        let scale_min: [__m256; 4] = std::array::from_fn(|j| _mm256_mul_ps(dmin, _mm256_set1_ps(y[j].d)));
        for part in 0..4 {
            let mut sums = [zero; GROUP_ROWS];
            for g in [2 * part, 2 * part + 1] {
                let mut dots = [zero; GROUP_ROWS];
                for s in 0..8 {
                    // SAFETY: `q[g][s]` is 32 aligned bytes.
                    let x = unsafe { _mm256_load_si256(p.q[g][s].as_ptr().cast()) };
                    for j in 0..GROUP_ROWS {
                        dots[j] = _mm256_dpbusd_epi32(dots[j], x, splat4(y[j], 32 * g + 4 * s));
                    }
                }
                // SAFETY: `scales[2g]` is eight aligned i32s (the scale of
                // both groups of 16 in group `g` of 32).
                let sc = unsafe { _mm256_load_si256(p.scales[2 * g].as_ptr().cast()) };
                for j in 0..GROUP_ROWS {
                    sums[j] = _mm256_add_epi32(sums[j], _mm256_mullo_epi32(dots[j], sc));
                }
            }
            // SAFETY: `mins[part]` is eight aligned i32s.
            let mins = unsafe { _mm256_load_si256(p.mins[part].as_ptr().cast()) };
            for j in 0..GROUP_ROWS {
                let bs = &y[j].bsums[4 * part..4 * part + 4];
                let pair = ((bs[0] + bs[1]) as u16 as i32) | (((bs[2] + bs[3]) as i32) << 16);
                let min_sums = _mm256_madd_epi16(mins, _mm256_set1_epi32(pair));
                acc[j] = _mm256_fmadd_ps(scale[j], _mm256_cvtepi32_ps(sums[j]), acc[j]);
                acc_min[j] = _mm256_fmadd_ps(scale_min[j], _mm256_cvtepi32_ps(min_sums), acc_min[j]);
            }
        }
    }
    for (j, out) in out.iter_mut().enumerate() {
        // SAFETY: `out` is eight f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc[j], acc_min[j])) };
    }
}

/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn kernel_q6k_tiled(panel: &[Panel], ys: [&[BlockQ8K]; 4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.iter().all(|y| y.len() >= panel.len()));
    let mut acc = [_mm256_setzero_ps(); GROUP_ROWS];
    for (b, p) in panel.iter().enumerate() {
        let y = [&ys[0][b], &ys[1][b], &ys[2][b], &ys[3][b]];
        let mut s1 = [_mm256_setzero_si256(); GROUP_ROWS];
        for g in 0..GROUPS {
            // The stored +32 adds 32 times the group's sum: start there, negated.
            let mut dots: [__m256i; 4] = std::array::from_fn(|j| _mm256_set1_epi32(-32 * y[j].bsums[g] as i32));
            for s in 0..4 {
                let (g32, s32) = (g / 2, 4 * (g % 2) + s);
                // SAFETY: `q[g32][s32]` is 32 aligned bytes.
                let x = unsafe { _mm256_load_si256(p.q[g32][s32].as_ptr().cast()) };
                for j in 0..GROUP_ROWS {
                    dots[j] = _mm256_dpbusd_epi32(dots[j], x, splat4(y[j], 16 * g + 4 * s));
                }
            }
            // SAFETY: `scales[g]` is eight aligned i32s.
            let sc = unsafe { _mm256_load_si256(p.scales[g].as_ptr().cast()) };
            for j in 0..GROUP_ROWS {
                s1[j] = _mm256_add_epi32(s1[j], _mm256_mullo_epi32(dots[j], sc));
            }
        }
        // SAFETY: `d` is eight aligned f32s.
        let d = unsafe { _mm256_load_ps(p.d.as_ptr()) };
        for j in 0..GROUP_ROWS {
            let r = _mm256_mul_ps(_mm256_cvtepi32_ps(s1[j]), d);
            acc[j] = _mm256_fmadd_ps(r, _mm256_set1_ps(y[j].d), acc[j]);
        }
    }
    for (j, out) in out.iter_mut().enumerate() {
        // SAFETY: `out` is eight f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc[j]) };
    }
}

/// Eight i32 lanes of scales (one row each, `|s| < 2^15`) as i16 pairs, the
/// scale in both halves of its row's lane, for `vpmaddwd`.
#[inline]
#[target_feature(enable = "avx2")]
fn scale_pairs(sc: __m256i) -> __m256i {
    _mm256_blend_epi16::<0b1010_1010>(sc, _mm256_slli_epi32::<16>(sc))
}

/// `kernel_q4k` with AVX2 only. A group of 32 values is eight `vpmaddubsw`
/// per activation row, summed in i16 (at most 8 · 2 · 15 · 127 = 30,480 a
/// lane), then one `vpmaddwd` with the group's scale.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_q4k_avx2(panel: &[Panel], ys: [&[BlockQ8K]; 4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.iter().all(|y| y.len() >= panel.len()));
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); GROUP_ROWS];
    let mut acc_min = [_mm256_setzero_ps(); GROUP_ROWS];
    for (b, p) in panel.iter().enumerate() {
        let y = [&ys[0][b], &ys[1][b], &ys[2][b], &ys[3][b]];
        // SAFETY: `d` and `dmin` are eight aligned f32s.
        let (d, dmin) = unsafe { (_mm256_load_ps(p.d.as_ptr()), _mm256_load_ps(p.dmin.as_ptr())) };
        let scale: [__m256; 4] = std::array::from_fn(|j| _mm256_mul_ps(d, _mm256_set1_ps(y[j].d)));
        let scale_min: [__m256; 4] = std::array::from_fn(|j| _mm256_mul_ps(dmin, _mm256_set1_ps(y[j].d)));
        for part in 0..4 {
            let mut sums = [zero; GROUP_ROWS];
            for g in [2 * part, 2 * part + 1] {
                let mut pairs = [zero; GROUP_ROWS];
                for s in 0..8 {
                    // SAFETY: `q[g][s]` is 32 aligned bytes.
                    let x = unsafe { _mm256_load_si256(p.q[g][s].as_ptr().cast()) };
                    for j in 0..GROUP_ROWS {
                        let products = _mm256_maddubs_epi16(x, splat4(y[j], 32 * g + 4 * s));
                        pairs[j] = _mm256_add_epi16(pairs[j], products);
                    }
                }
                // SAFETY: `scales[2g]` is eight aligned i32s (the scale of
                // both groups of 16 in group `g` of 32).
                let sc = scale_pairs(unsafe { _mm256_load_si256(p.scales[2 * g].as_ptr().cast()) });
                for j in 0..GROUP_ROWS {
                    sums[j] = _mm256_add_epi32(sums[j], _mm256_madd_epi16(pairs[j], sc));
                }
            }
            // SAFETY: `mins[part]` is eight aligned i32s.
            let mins = unsafe { _mm256_load_si256(p.mins[part].as_ptr().cast()) };
            for j in 0..GROUP_ROWS {
                let bs = &y[j].bsums[4 * part..4 * part + 4];
                let pair = ((bs[0] + bs[1]) as u16 as i32) | (((bs[2] + bs[3]) as i32) << 16);
                let min_sums = _mm256_madd_epi16(mins, _mm256_set1_epi32(pair));
                acc[j] = _mm256_fmadd_ps(scale[j], _mm256_cvtepi32_ps(sums[j]), acc[j]);
                acc_min[j] = _mm256_fmadd_ps(scale_min[j], _mm256_cvtepi32_ps(min_sums), acc_min[j]);
            }
        }
    }
    for (j, out) in out.iter_mut().enumerate() {
        // SAFETY: `out` is eight f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), _mm256_sub_ps(acc[j], acc_min[j])) };
    }
}

/// `kernel_q6k_tiled` with AVX2 only. A group of 16 values is four
/// `vpmaddubsw` per activation row, summed in i16 two by two (at most
/// 2 · 2 · 63 · 127 = 32,004 a lane), each sum widened by a `vpmaddwd` with
/// the group's scale. The stored +32 is taken off once per super-block:
/// 32 times the sum over groups of scale times the activations' group sum,
/// by `vpmaddwd`s of two groups' scales against their two sums.
///
/// # Safety
/// The CPU must have the features this function is compiled for.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_q6k_tiled_avx2(panel: &[Panel], ys: [&[BlockQ8K]; 4], out: &mut [[f32; 8]; 4]) {
    assert!(ys.iter().all(|y| y.len() >= panel.len()));
    let zero = _mm256_setzero_si256();
    let low = _mm256_set1_epi32(0xffff);
    let mut acc = [_mm256_setzero_ps(); GROUP_ROWS];
    for (b, p) in panel.iter().enumerate() {
        let y = [&ys[0][b], &ys[1][b], &ys[2][b], &ys[3][b]];
        let mut s1 = [zero; GROUP_ROWS];
        let mut offsets = [zero; GROUP_ROWS];
        for g in (0..GROUPS).step_by(2) {
            // SAFETY: `scales[g]` and `scales[g + 1]` are eight aligned i32s.
            let (sc0, sc1) = unsafe {
                (
                    _mm256_load_si256(p.scales[g].as_ptr().cast()),
                    _mm256_load_si256(p.scales[g + 1].as_ptr().cast()),
                )
            };
            // Each row's scales of groups g and g + 1 as an i16 pair.
            let both = _mm256_or_si256(_mm256_and_si256(sc0, low), _mm256_slli_epi32::<16>(sc1));
            for j in 0..GROUP_ROWS {
                let bs = &y[j].bsums;
                let sums = (bs[g] as u16 as i32) | ((bs[g + 1] as i32) << 16);
                offsets[j] = _mm256_add_epi32(offsets[j], _mm256_madd_epi16(both, _mm256_set1_epi32(sums)));
            }
            for (h, sc) in [(g, sc0), (g + 1, sc1)] {
                let sc = scale_pairs(sc);
                let (g32, s32) = (h / 2, 4 * (h % 2));
                // SAFETY: `q[g32][s32..s32 + 4]` are 32 aligned bytes each.
                let x: [__m256i; 4] =
                    std::array::from_fn(|s| unsafe { _mm256_load_si256(p.q[g32][s32 + s].as_ptr().cast()) });
                for j in 0..GROUP_ROWS {
                    let product = |s: usize| _mm256_maddubs_epi16(x[s], splat4(y[j], 16 * h + 4 * s));
                    let first = _mm256_add_epi16(product(0), product(1));
                    let second = _mm256_add_epi16(product(2), product(3));
                    let scaled = _mm256_add_epi32(_mm256_madd_epi16(first, sc), _mm256_madd_epi16(second, sc));
                    s1[j] = _mm256_add_epi32(s1[j], scaled);
                }
            }
        }
        // SAFETY: `d` is eight aligned f32s.
        let d = unsafe { _mm256_load_ps(p.d.as_ptr()) };
        for j in 0..GROUP_ROWS {
            let total = _mm256_sub_epi32(s1[j], _mm256_slli_epi32::<5>(offsets[j]));
            let r = _mm256_mul_ps(_mm256_cvtepi32_ps(total), d);
            acc[j] = _mm256_fmadd_ps(r, _mm256_set1_ps(y[j].d), acc[j]);
        }
    }
    for (j, out) in out.iter_mut().enumerate() {
        // SAFETY: `out` is eight f32s.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), acc[j]) };
    }
}

/// Both types' quants fit the panel's layout: 256 values, 8 groups of 32.
const _: () = assert!(QK_K == 8 * 32);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kernels::features::can_test;
    use crate::compute::cpu::kernels::portable;
    use crate::compute::quant::q8::quantize_block_q8k;
    use crate::compute::quant::testing::{noise, random_k_row};

    #[test]
    fn avx512_panels_equal_the_portable_orders_bit_for_bit() {
        if can_test(Isa::Avx512, "K-quant panel kernels (AVX-512)") {
            panels_equal_the_portable_orders(Isa::Avx512);
        }
    }

    #[test]
    fn avx2_panels_equal_the_portable_orders_bit_for_bit() {
        if can_test(Isa::Avx2, "K-quant panel kernels (AVX2)") {
            panels_equal_the_portable_orders(Isa::Avx2);
        }
    }

    #[test]
    fn the_i16_sums_of_the_avx2_panels_hold_the_largest_products() {
        if !can_test(Isa::Avx2, "K-quant panel kernels (AVX2), largest products") {
            return;
        }
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let (pack, kernel) = kernels_at(ty, Isa::Avx2).expect("panel kernels for Q4_K and Q6_K");
            let blocks = 2;
            let row_bytes = blocks * ty.block_bytes();
            // Every quant (and scale) byte all ones: the largest unsigned
            // quants, 15 (Q4_K) and 63 (Q6_K); d and dmin small.
            let mut w = vec![0xffu8; 8 * row_bytes];
            let sample = random_k_row(ty, 8 * blocks, 1);
            for (block, source) in w
                .chunks_exact_mut(ty.block_bytes())
                .zip(sample.chunks_exact(ty.block_bytes()))
            {
                let d_at = if ty == GgmlType::Q4K { 0..4 } else { 208..210 };
                block[d_at.clone()].copy_from_slice(&source[d_at]);
            }
            for value in [2.0f32, -2.0] {
                // All activations at 127 or -127.
                let y: Vec<BlockQ8K> = vec![quantize_block_q8k(&[value; QK_K]); blocks];
                assert_eq!(y[0].qs[0].unsigned_abs(), 127);
                let mut panels = Vec::new();
                let mut out = [[f32::NAN; 8]; 4];
                pack(&w, row_bytes, &mut panels);
                // SAFETY: `kernels_at` was given a level this CPU runs.
                unsafe { kernel(&panels, [&y, &y, &y, &y], &mut out) };
                let row = &w[..row_bytes];
                let expected = if ty == GgmlType::Q4K {
                    portable::dot_q4k(row, &y, portable::GEMM_GROUPS)
                } else {
                    portable::dot_tiled_portable(ty, row, &y)
                };
                assert_eq!(out[0][0].to_bits(), expected.to_bits(), "{ty} at {value}");
            }
        }
    }

    fn panels_equal_the_portable_orders(isa: Isa) {
        for ty in [GgmlType::Q4K, GgmlType::Q6K] {
            let (pack, kernel) = kernels_at(ty, isa).expect("panel kernels for Q4_K and Q6_K");
            let blocks = 3;
            let row_bytes = blocks * ty.block_bytes();
            for seed in 0..8u64 {
                let w = random_k_row(ty, 8 * blocks, seed);
                let ys: Vec<Vec<BlockQ8K>> = (0..4)
                    .map(|j| {
                        let x: Vec<f32> = noise(seed * 4 + j + 70, blocks * QK_K)
                            .iter()
                            .map(|&b| b as f32 / 64.0 - 2.0)
                            .collect();
                        x.chunks_exact(QK_K).map(quantize_block_q8k).collect()
                    })
                    .collect();
                let mut panels = Vec::new();
                let mut out = [[f32::NAN; 8]; 4];
                pack(&w, row_bytes, &mut panels);
                // SAFETY: `kernels` checked the features.
                unsafe { kernel(&panels, [&ys[0], &ys[1], &ys[2], &ys[3]], &mut out) };
                for (j, y) in ys.iter().enumerate() {
                    for r in 0..8 {
                        let row = &w[r * row_bytes..(r + 1) * row_bytes];
                        let expected = if ty == GgmlType::Q4K {
                            portable::dot_q4k(row, y, portable::GEMM_GROUPS)
                        } else {
                            portable::dot_tiled_portable(ty, row, y)
                        };
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
