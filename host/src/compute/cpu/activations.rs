//! Activations in the form a weight type's dot product consumes them, as ggml
//! does (its `vec_dot_type`): 32-value blocks of i8 with an f16 scale for the
//! 32-value quantized weight types, 256-value Q8_K blocks (f32 scale, i16 group
//! sums) for the K-quants, f16 or bf16 for half-precision weights. Quantizing
//! each input row once per matrix product is what makes integer dot products
//! possible, and it keeps realm's logits within rounding of llama.cpp's.

use half::{bf16, f16};

use super::kquants::{self, BlockQ8K};
use super::quant::{self, QK};
use super::simd;
use crate::compute::gguf::GgmlType;

/// A block of 32 activations: `x ~= d * qs`, and `s = d * sum(qs)` (Q8_1).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    /// The exact sum of `qs`.
    pub sum: i32,
    pub qs: [i8; QK],
}

pub enum Activations {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Q8(Vec<BlockQ8>),
    /// 256-value blocks, for the K-quants.
    Q8K(Vec<BlockQ8K>),
}

fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Quantizes a row of activations for dot products with `weights`-typed rows.
pub fn quantize(weights: GgmlType, x: &[f32]) -> Activations {
    match weights {
        GgmlType::F32 => Activations::F32(x.to_vec()),
        GgmlType::F16 => Activations::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
        GgmlType::Bf16 => Activations::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
        _ if kquants::is_k_quant(weights) => Activations::Q8K(kquants::quantize_q8k(x)),
        _ => Activations::Q8(quantize_blocks(x)),
    }
}

fn quantize_blocks(x: &[f32]) -> Vec<BlockQ8> {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { quantize_blocks_avx2(x) };
    }
    x.chunks_exact(QK).map(quantize_block).collect()
}

/// The same code compiled for AVX2, so rounding is an instruction
/// (`vroundss`), not a call to libm's `rintf`. The results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_blocks_avx2(x: &[f32]) -> Vec<BlockQ8> {
    let mut out = Vec::with_capacity(x.len() / QK);
    for block in x.chunks_exact(QK) {
        out.push(quantize_block(block));
    }
    out
}

/// ggml's `quantize_row_q8_1` for one block (Q8_0 is the same without `s`), as
/// its x86 SIMD path computes it: scaled by `127 / max` and rounded half to even.
/// (Its scalar reference multiplies by `1 / d` and rounds half away from zero,
/// which flips an occasional value; llama.cpp on x86 runs the SIMD path.)
#[inline]
fn quantize_block(x: &[f32]) -> BlockQ8 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    BlockQ8 {
        d: round_f16(d),
        s: round_f16(sum as f32 * d),
        sum,
        qs,
    }
}

/// `row . x` for a weight row of type `ty` and activations quantized for it.
pub fn dot(ty: GgmlType, row: &[u8], x: &Activations) -> f32 {
    match x {
        Activations::F32(x) => quant::dot(ty, row, x),
        Activations::F16(x) => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, a)| f16::from_le_bytes([w[0], w[1]]).to_f32() * a.to_f32())
            .sum(),
        Activations::Bf16(x) => row
            .chunks_exact(2)
            .zip(x)
            .map(|(w, a)| bf16::from_le_bytes([w[0], w[1]]).to_f32() * a.to_f32())
            .sum(),
        Activations::Q8(blocks) => simd::row_dot(ty, row, blocks).unwrap_or_else(|| dot_blocks(ty, row, blocks)),
        Activations::Q8K(blocks) => kquants::dot(ty, row, blocks),
    }
}

/// `row . xs[r]` into `out[r]` for every activation row: four rows at a time
/// where a kernel shares the weight row's unpacking between them (the same
/// results as `dot` row by row), else one by one.
pub fn dot_rows(ty: GgmlType, row: &[u8], xs: &[Activations], out: &mut [f32]) {
    let mut done = 0;
    for (quad, o) in xs.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
        let result = match quad {
            [
                Activations::Q8(a),
                Activations::Q8(b),
                Activations::Q8(c),
                Activations::Q8(d),
            ] => simd::rows_dot4(ty, row, [a, b, c, d]),
            [
                Activations::Q8K(a),
                Activations::Q8K(b),
                Activations::Q8K(c),
                Activations::Q8K(d),
            ] => kquants::rows_dot4(ty, row, [a, b, c, d]),
            _ => None,
        };
        let Some(result) = result else { break };
        o.copy_from_slice(&result);
        done += 4;
    }
    for (o, x) in out[done..].iter_mut().zip(&xs[done..]) {
        *o = dot(ty, row, x);
    }
}

/// The portable row dot product: one exact integer sum per block, scaled and
/// summed in block order.
pub fn dot_blocks(ty: GgmlType, row: &[u8], blocks: &[BlockQ8]) -> f32 {
    row.chunks_exact(ty.block_bytes())
        .zip(blocks)
        .map(|(w, y)| block_dot(ty, w, y))
        .sum()
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// One weight block times one activation block, as ggml's `vec_dot_*_q8_*`.
fn block_dot(ty: GgmlType, w: &[u8], y: &BlockQ8) -> f32 {
    let d = f16_at(w, 0);
    match ty {
        GgmlType::Q4_0 => (simd::nibbles_dot(packed(&w[2..18]), &y.qs) - 8 * y.sum) as f32 * (d * y.d),
        GgmlType::Q4_1 => (d * y.d) * simd::nibbles_dot(packed(&w[4..20]), &y.qs) as f32 + f16_at(w, 2) * y.s,
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = ty == GgmlType::Q5_1;
            let rest = if has_min { &w[4..] } else { &w[2..] };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let mut x = [0u8; QK];
            for (j, &q) in rest[4..20].iter().enumerate() {
                x[j] = (q & 0x0F) | ((((qh >> j) << 4) & 0x10) as u8);
                x[j + 16] = (q >> 4) | (((qh >> (j + 12)) & 0x10) as u8);
            }
            let sumi = simd::unsigned_dot(&x, &y.qs) - if has_min { 0 } else { 16 * y.sum };
            let m = if has_min { f16_at(w, 2) * y.s } else { 0.0 };
            (d * y.d) * sumi as f32 + m
        }
        GgmlType::Q8_0 => {
            let x: &[i8; QK] = bytemuck_i8(&w[2..34]);
            simd::signed_dot(x, &y.qs) as f32 * (d * y.d)
        }
        _ => unreachable!("block_dot on {ty}"),
    }
}

fn packed(bytes: &[u8]) -> &[u8; 16] {
    bytes.try_into().expect("16 packed bytes")
}

/// A Q8_0 block's quants as i8 (same size and alignment as u8).
fn bytemuck_i8(bytes: &[u8]) -> &[i8; QK] {
    let bytes: &[u8; QK] = bytes.try_into().expect("32 quant bytes");
    // SAFETY: u8 and i8 have the same size and alignment; every bit pattern is valid.
    unsafe { &*(bytes as *const [u8; QK]).cast::<[i8; QK]>() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::quant::tests::{BLOCK_TYPES, noise, random_row};

    #[test]
    fn quantized_dot_tracks_the_f32_reference_within_8_bit_error() {
        for ty in BLOCK_TYPES.into_iter().chain([GgmlType::F16, GgmlType::Bf16]) {
            let len = 8 * QK;
            let row = match ty {
                GgmlType::F16 | GgmlType::Bf16 => noise(5, len * 2)
                    .chunks(2)
                    .flat_map(|c| {
                        let v = (c[0] as f32 - 128.0) / 256.0;
                        if ty == GgmlType::F16 {
                            f16::from_f32(v).to_le_bytes()
                        } else {
                            bf16::from_f32(v).to_le_bytes()
                        }
                    })
                    .collect(),
                _ => random_row(ty, len / QK, 11),
            };
            let x: Vec<f32> = noise(3, len).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
            let reference = quant::dot(ty, &row, &x);
            let got = dot(ty, &row, &quantize(ty, &x));
            let magnitude: f32 = {
                let mut w = vec![0.0; len];
                quant::dequantize_row(ty, &row, &mut w);
                w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum()
            };
            assert!(
                (got - reference).abs() <= 0.01 * magnitude,
                "{ty}: {got} vs {reference} (scale {magnitude})"
            );
        }
    }

    /// ggml's per-element formulas for the integer sum of one block.
    fn reference_sumi(ty: GgmlType, w: &[u8], y: &BlockQ8) -> i32 {
        let value = |j: usize| -> i32 {
            let (lo, hi, at) = (j < 16, j >= 16, j % 16);
            match ty {
                GgmlType::Q4_0 | GgmlType::Q4_1 => {
                    let q = w[if ty == GgmlType::Q4_0 { 2 } else { 4 } + at];
                    let nibble = if lo { q & 0x0F } else { q >> 4 } as i32;
                    if ty == GgmlType::Q4_0 { nibble - 8 } else { nibble }
                }
                GgmlType::Q5_0 | GgmlType::Q5_1 => {
                    let rest = if ty == GgmlType::Q5_1 { &w[4..] } else { &w[2..] };
                    let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    let q = rest[4 + at];
                    let h = if hi {
                        (qh >> (at + 12)) & 0x10
                    } else {
                        ((qh >> at) << 4) & 0x10
                    };
                    let x = (if lo { q & 0x0F } else { q >> 4 }) as u32 | h;
                    x as i32 - if ty == GgmlType::Q5_0 { 16 } else { 0 }
                }
                _ => w[2 + j] as i8 as i32,
            }
        };
        (0..QK).map(|j| value(j) * y.qs[j] as i32).sum()
    }

    #[test]
    fn block_dots_equal_ggml_formulas_exactly() {
        for ty in BLOCK_TYPES {
            for seed in 0..50 {
                let w = random_row(ty, 1, seed + 7);
                let x: Vec<f32> = noise(seed, QK).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
                let y = quantize_block(&x);
                let (d, dy) = (f16_at(&w, 0), y.d);
                let sumi = reference_sumi(ty, &w, &y);
                let m = if matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    f16_at(&w, 2) * y.s
                } else {
                    0.0
                };
                let expected = if m != 0.0 || matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1) {
                    (d * dy) * sumi as f32 + m
                } else {
                    sumi as f32 * (d * dy)
                };
                assert_eq!(block_dot(ty, &w, &y), expected, "{ty} seed {seed}");
            }
        }
    }

    #[test]
    fn dot_rows_equals_dot_row_by_row_bit_for_bit() {
        let k_types = [
            GgmlType::Q2K,
            GgmlType::Q3K,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ];
        for ty in BLOCK_TYPES.into_iter().chain(k_types) {
            for seed in 0..10u64 {
                let len = 3 * kquants::QK_K;
                let row = if kquants::is_k_quant(ty) {
                    kquants::tests::random_k_row(ty, len / kquants::QK_K, seed)
                } else {
                    random_row(ty, len / QK, seed)
                };
                let xs: Vec<Activations> = (0..7)
                    .map(|r| {
                        let x: Vec<f32> = noise(seed * 10 + r, len)
                            .iter()
                            .map(|&b| b as f32 / 64.0 - 2.0)
                            .collect();
                        quantize(ty, &x)
                    })
                    .collect();
                let mut out = vec![0.0; xs.len()];
                dot_rows(ty, &row, &xs, &mut out);
                for (o, x) in out.iter().zip(&xs) {
                    assert_eq!(o.to_bits(), dot(ty, &row, x).to_bits(), "{ty} seed {seed}");
                }
            }
        }
    }

    #[test]
    fn q8_blocks_follow_ggml_rounding() {
        let mut x = [0.0f32; QK];
        x[0] = 127.0;
        x[1] = -63.5;
        x[2] = 2.5;
        let b = quantize_block(&x);
        assert_eq!(b.d, 1.0);
        assert_eq!((b.qs[0], b.qs[1], b.qs[2]), (127, -64, 2), "round half to even");
        assert_eq!(b.s, (127 - 64 + 2) as f32);
    }
}
