//! Activations as q8 blocks, ggml's `vec_dot_type`s: 32 values with an f16
//! scale (Q8_0/Q8_1) for the 32-value types, 256 values with an f32 scale and
//! group sums (Q8_K) for the K-quants. These are the reference quantizers;
//! a backend may compute them in vectors, with the same results.

use half::f16;

use super::{GROUPS, QK, QK_K};

/// A block of 32 activations: `x ~= d * qs`, and `s = d * sum(qs)` (Q8_1).
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    /// The exact sum of `qs`.
    pub sum: i32,
    pub qs: [i8; QK],
}

/// 256 activations as ggml's `block_q8_K`: `x ~= d * qs`, and `bsums[g]` is the
/// sum of `qs[16g..16g + 16]` (what the mins of Q2_K, Q4_K and Q5_K multiply).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; GROUPS],
}

const _: () = assert!(size_of::<BlockQ8K>() == crate::compute::gguf::GgmlType::Q8K.block_bytes());

pub fn round_f16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// ggml's `quantize_row_q8_1` for one block (Q8_0 is the same without `s`), as
/// its x86 SIMD path computes it: scaled by `127 / max` and rounded half to even.
/// (Its scalar reference multiplies by `1 / d` and rounds half away from zero,
/// which flips an occasional value; llama.cpp on x86 runs the SIMD path.)
#[inline]
pub fn quantize_block(x: &[f32]) -> BlockQ8 {
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

/// ggml's `quantize_row_q8_K_ref`, which is also what its x86 build runs:
/// `iscale = -127 / max` where `max` is the first value of largest magnitude
/// (its sign kept), `qs = min(127, nearest_int(iscale * x))` with ties to even,
/// `d = 1 / iscale`. An all-zero block has `d = 0`.
#[inline]
pub fn quantize_block_q8k(x: &[f32]) -> BlockQ8K {
    let mut block = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; GROUPS],
    };
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        return block;
    }
    let iscale = -127.0 / max;
    for (q, &v) in block.qs.iter_mut().zip(x) {
        *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
    }
    for (s, q16) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
        *s = q16.iter().map(|&q| q as i16).sum();
    }
    block.d = 1.0 / iscale;
    block
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn q8k_follows_ggml() {
        // max = -127 (the first of largest magnitude, sign kept): iscale = 1, d = 1.
        let mut x = [0.0f32; 2 * QK_K];
        x[..5].copy_from_slice(&[2.5, -127.0, 1.5, 0.5, 127.0]);
        x[20] = 3.0;
        // max = 2: iscale = -63.5, d = -1 / 63.5.
        x[QK_K..QK_K + 3].copy_from_slice(&[2.0, 1.0, -2.0]);
        let b: Vec<BlockQ8K> = x.chunks_exact(QK_K).map(quantize_block_q8k).collect();
        assert_eq!(b[0].d, 1.0);
        assert_eq!(&b[0].qs[..5], &[2, -127, 2, 0, 127], "ties to even");
        assert_eq!(b[0].qs[20], 3);
        assert_eq!(&b[0].bsums[..3], &[4, 3, 0]);
        assert_eq!(b[1].d, 1.0 / -63.5);
        assert_eq!(&b[1].qs[..3], &[-127, -64, 127]);
        assert_eq!(b[1].bsums[0], -64);
        let zero = quantize_block_q8k(&[0.0; QK_K]);
        assert_eq!((zero.d, zero.bsums), (0.0, [0; GROUPS]));
    }
}
