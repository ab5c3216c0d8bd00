//! Rows of random blocks for the kernel tests of every backend.

use half::f16;

use crate::compute::gguf::GgmlType;

/// The 32-value block types.
pub const BLOCK_TYPES: [GgmlType; 5] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// The K-quants.
pub const K_TYPES: [GgmlType; 5] = [
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
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

pub fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Byte offsets of the f16 `d` (and `dmin`) of each K-quant.
pub fn scale_offsets(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => unreachable!("{ty} is not a K-quant"),
    }
}

/// A random row of `blocks` super-blocks whose f16 `d` and `dmin` are small and finite.
pub fn random_k_row(ty: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
    let mut row = noise(seed, blocks * ty.block_bytes());
    for block in row.chunks_exact_mut(ty.block_bytes()) {
        for (i, &at) in scale_offsets(ty).iter().enumerate() {
            let v = 0.001 + block[at] as f32 / 65536.0;
            put_f16(block, at, if i == 1 { v * 0.5 } else { v });
        }
    }
    row
}

/// A random row of either kind of quantized type.
pub fn random_any_row(ty: GgmlType, values: usize, seed: u64) -> Vec<u8> {
    if super::is_k_quant(ty) {
        random_k_row(ty, values / super::QK_K, seed)
    } else {
        random_row(ty, values / super::QK, seed)
    }
}
