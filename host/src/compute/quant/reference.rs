//! The reference arithmetic of every weight type: dequantization, and a dot
//! product of a quantized row with f32 activations.
//!
//! `dequantize_row` is the plain reference; `dot` must agree with
//! `dequantize_row` followed by an f32 dot product (tested below).

use half::{bf16, f16};

use super::blocks::{self, BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, fives};
use super::{QK, QK_K, is_k_quant, kquants};
use crate::compute::gguf::GgmlType;

/// Values `j` and `j + 16` of a 4-bit block: the low and high nibble of `qs[j]`.
fn nibbles(qs: &[u8; 16], out: &mut [f32; QK], f: impl Fn(u8) -> f32) {
    for (j, &q) in qs.iter().enumerate() {
        out[j] = f(q & 0x0F);
        out[j + 16] = f(q >> 4);
    }
}

/// Dequantizes one block of 32 values (`block` is `ty.block_bytes()` long).
fn dequantize_block(ty: GgmlType, block: &[u8], out: &mut [f32; QK]) {
    match ty {
        GgmlType::Q4_0 => {
            let b: &BlockQ4_0 = blocks::block(block);
            let d = b.d.get();
            nibbles(&b.qs, out, |q| (q as i32 - 8) as f32 * d);
        }
        GgmlType::Q4_1 => {
            let b: &BlockQ4_1 = blocks::block(block);
            let (d, m) = (b.d.get(), b.m.get());
            nibbles(&b.qs, out, |q| q as f32 * d + m);
        }
        GgmlType::Q5_0 => {
            let b: &BlockQ5_0 = blocks::block(block);
            let d = b.d.get();
            for (o, q) in out.iter_mut().zip(fives(b.qh, &b.qs)) {
                *o = (q as i32 - 16) as f32 * d;
            }
        }
        GgmlType::Q5_1 => {
            let b: &BlockQ5_1 = blocks::block(block);
            let (d, m) = (b.d.get(), b.m.get());
            for (o, q) in out.iter_mut().zip(fives(b.qh, &b.qs)) {
                *o = q as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let b: &BlockQ8_0 = blocks::block(block);
            let d = b.d.get();
            for (o, &q) in out.iter_mut().zip(&b.qs) {
                *o = q as f32 * d;
            }
        }
        _ => unreachable!("dequantize_block on a non-block type {ty}"),
    }
}

/// The reference dequantization of a row of `out.len()` values.
pub fn dequantize_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Bf16 => {
            for (o, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ if is_k_quant(ty) => kquants::dequantize_row(ty, row, out),
        _ => {
            let mut block = [0.0; QK];
            for (chunk, b) in out.chunks_exact_mut(QK).zip(row.chunks_exact(ty.block_bytes())) {
                dequantize_block(ty, b, &mut block);
                chunk.copy_from_slice(&block);
            }
        }
    }
}

/// `row . x` for a quantized row of `x.len()` values.
pub fn dot(ty: GgmlType, row: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => row
            .chunks_exact(4)
            .zip(x)
            .map(|(c, &v)| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * v)
            .sum(),
        GgmlType::F16 | GgmlType::Bf16 => {
            let mut buf = [0.0f32; QK];
            let mut sum = 0.0;
            for (bytes, xs) in row.chunks(QK * 2).zip(x.chunks(QK)) {
                let n = xs.len();
                dequantize_row(ty, bytes, &mut buf[..n]);
                sum += dot_f32(&buf[..n], xs);
            }
            sum
        }
        GgmlType::Q4_1 => dot_q4_1(row, x),
        _ if is_k_quant(ty) => {
            let mut block = [0.0; QK_K];
            let mut sum = 0.0;
            for (b, xs) in row.chunks_exact(ty.block_bytes()).zip(x.chunks_exact(QK_K)) {
                kquants::dequantize_row(ty, b, &mut block);
                sum += dot_f32(&block, xs);
            }
            sum
        }
        _ => {
            let mut block = [0.0; QK];
            let mut sum = 0.0;
            for (b, xs) in row.chunks_exact(ty.block_bytes()).zip(x.chunks_exact(QK)) {
                dequantize_block(ty, b, &mut block);
                sum += dot_f32(&block, xs);
            }
            sum
        }
    }
}

/// Q4_1 without materialising the block: d * sum(q * x) + m * sum(x).
fn dot_q4_1(row: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0;
    for (b, xs) in blocks::blocks::<BlockQ4_1>(row).iter().zip(x.chunks_exact(QK)) {
        let (d, m) = (b.d.get(), b.m.get());
        let (lo, hi) = xs.split_at(16);
        let mut qx = 0.0;
        let mut sx = 0.0;
        for j in 0..16 {
            let q = b.qs[j];
            qx += (q & 0x0F) as f32 * lo[j] + (q >> 4) as f32 * hi[j];
            sx += lo[j] + hi[j];
        }
        sum += d * qx + m * sx;
    }
    sum
}

/// An f32 dot product with eight independent accumulators, so it vectorises.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() / 8 * 8);
    let (b8, b_rest) = b.split_at(a8.len());
    for (ca, cb) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quant::testing::{BLOCK_TYPES, noise, random_row};

    #[test]
    fn q4_0_q8_0_layouts_match_ggml() {
        // Q4_0: d = 1.0, nibbles 0x0..0xF in order: low nibbles are x[0..16].
        let mut block = f16::from_f32(1.0).to_le_bytes().to_vec();
        block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0; QK];
        dequantize_block(GgmlType::Q4_0, &block, &mut out);
        assert_eq!(out[0], -8.0);
        assert_eq!(out[15], 7.0);
        assert_eq!(out[16], 7.0);
        // Q8_0: d = 0.5, q = -3.
        let mut block = f16::from_f32(0.5).to_le_bytes().to_vec();
        block.extend([(-3i8) as u8; 32]);
        dequantize_block(GgmlType::Q8_0, &block, &mut out);
        assert!(out.iter().all(|&v| v == -1.5));
    }

    #[test]
    fn q5_high_bits_come_from_qh() {
        let mut block = f16::from_f32(1.0).to_le_bytes().to_vec();
        block.extend(1u32.to_le_bytes()); // high bit set for x[0] only
        block.extend([0u8; 16]);
        let mut out = [0.0; QK];
        dequantize_block(GgmlType::Q5_0, &block, &mut out);
        assert_eq!(out[0], 0.0, "16 - 16");
        assert_eq!(out[1], -16.0);
    }

    #[test]
    fn dot_agrees_with_the_reference_dequantization() {
        for ty in BLOCK_TYPES {
            let blocks = 7;
            let row = random_row(ty, blocks, ty.id() as u64);
            let x: Vec<f32> = noise(99, blocks * QK).iter().map(|&b| b as f32 / 128.0 - 1.0).collect();
            let mut w = vec![0.0; blocks * QK];
            dequantize_row(ty, &row, &mut w);
            let reference: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
            let got = dot(ty, &row, &x);
            assert!(
                (got - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                "{ty}: {got} vs {reference}"
            );
        }
    }

    #[test]
    fn float_rows_round_trip() {
        let values = [1.5f32, -2.25, 0.0, 1024.0];
        let f16_row: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let bf16_row: Vec<u8> = values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        for (ty, row) in [(GgmlType::F16, f16_row), (GgmlType::Bf16, bf16_row)] {
            let mut out = [0.0; 4];
            dequantize_row(ty, &row, &mut out);
            assert_eq!(out, values, "{ty}");
            assert_eq!(dot(ty, &row, &[1.0; 4]), values.iter().sum::<f32>());
        }
    }
}
