//! Quantized block formats (as ggml lays them out) and their row kernels:
//! dequantization, and a dot product of a quantized row with f32 activations.
//!
//! `dequantize_row` is the plain reference; `dot` must agree with
//! `dequantize_row` followed by an f32 dot product (tested below).

use half::{bf16, f16};

use super::kquants;
use crate::compute::gguf::GgmlType;

/// Types the CPU backend computes with.
pub fn supported(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::F32
            | GgmlType::F16
            | GgmlType::Bf16
            | GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::Q2K
            | GgmlType::Q3K
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    )
}

pub const QK: usize = 32;

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Dequantizes one block of 32 values (`block` is `ty.block_bytes()` long).
fn dequantize_block(ty: GgmlType, block: &[u8], out: &mut [f32; QK]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = f16_at(block, 0);
            for (j, &q) in block[2..18].iter().enumerate() {
                out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for (j, &q) in block[4..20].iter().enumerate() {
                out[j] = (q & 0x0F) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let has_min = ty == GgmlType::Q5_1;
            let d = f16_at(block, 0);
            let (m, rest) = if has_min {
                (f16_at(block, 2), &block[4..])
            } else {
                (0.0, &block[2..])
            };
            let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let offset = if has_min { 0 } else { 16 };
            for (j, &q) in rest[4..20].iter().enumerate() {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                out[j] = (((q & 0x0F) as u32 | h0) as i32 - offset) as f32 * d + m;
                out[j + 16] = (((q >> 4) as u32 | h1) as i32 - offset) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(block, 0);
            for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                *o = q as i8 as f32 * d;
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
        _ if kquants::is_k_quant(ty) => kquants::dequantize_row(ty, row, out),
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
        _ if kquants::is_k_quant(ty) => {
            let mut block = [0.0; kquants::QK_K];
            let mut sum = 0.0;
            for (b, xs) in row.chunks_exact(ty.block_bytes()).zip(x.chunks_exact(kquants::QK_K)) {
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
    for (b, xs) in row.chunks_exact(20).zip(x.chunks_exact(QK)) {
        let (d, m) = (f16_at(b, 0), f16_at(b, 2));
        let (lo, hi) = xs.split_at(16);
        let mut qx = 0.0;
        let mut sx = 0.0;
        for j in 0..16 {
            let q = b[4 + j];
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
pub mod tests {
    use super::*;

    /// The 32-value block types.
    pub const BLOCK_TYPES: [GgmlType; 5] = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];

    /// Deterministic pseudo-random bytes for block contents.
    pub fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    /// A random row of `blocks` blocks whose f16 scales are small and finite.
    pub fn random_row(ty: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut row = noise(seed, blocks * ty.block_bytes());
        let scales = match ty {
            GgmlType::Q4_1 | GgmlType::Q5_1 => 2,
            _ => 1,
        };
        for block in row.chunks_exact_mut(ty.block_bytes()) {
            for s in 0..scales {
                let v = f16::from_f32(0.01 + (block[2 * s + 5] as f32) / 4096.0 * if s == 1 { -1.0 } else { 1.0 });
                block[2 * s..2 * s + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        row
    }

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
