//! ggml's K-quant formats: super-blocks of 256 values in 16 groups of 16 (Q2_K,
//! Q3_K, Q6_K) or 8 groups of 32 (Q4_K, Q5_K), each group with its own small
//! integer scale (and min), under an f16 super-block scale `d` (and `dmin`).
//!
//! Every type decodes to the same shape: value `p` of a super-block is
//! `d * scale[p / 16] * q[p] - dmin * min[p / 16]` with small integers `q`,
//! `scale` and `min` (groups of 32 repeat their scale over two groups of 16).
//! `dequantize_row` is the reference and evaluates exactly the f32 expression
//! of ggml's `dequantize_row_q*_K`. Activations meet these rows as Q8_K
//! blocks (`q8`), ggml's `vec_dot_type` for every K-quant.

use super::blocks::{self, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use super::{GROUPS, QK_K};
use crate::compute::gguf::GgmlType;

pub const Q2K_BYTES: usize = GgmlType::Q2K.block_bytes();
pub const Q3K_BYTES: usize = GgmlType::Q3K.block_bytes();
pub const Q4K_BYTES: usize = GgmlType::Q4K.block_bytes();
pub const Q5K_BYTES: usize = GgmlType::Q5K.block_bytes();
pub const Q6K_BYTES: usize = GgmlType::Q6K.block_bytes();

/// A super-block as integers: value `p` is `d * scales[p / 16] * q[p] - dmin * mins[p / 16]`.
pub struct Decoded {
    pub d: f32,
    /// 0 for the types without mins (Q3_K, Q6_K).
    pub dmin: f32,
    pub has_min: bool,
    pub scales: [i32; GROUPS],
    pub mins: [i32; GROUPS],
    pub q: [i8; QK_K],
}

impl Decoded {
    fn new(d: f32, dmin: f32, has_min: bool) -> Self {
        Self {
            d,
            dmin,
            has_min,
            scales: [0; GROUPS],
            mins: [0; GROUPS],
            q: [0; QK_K],
        }
    }
}

pub fn decode(ty: GgmlType, block: &[u8]) -> Decoded {
    match ty {
        GgmlType::Q2K => decode_q2k(block),
        GgmlType::Q3K => decode_q3k(block),
        GgmlType::Q4K => decode_q4k(block),
        GgmlType::Q5K => decode_q5k(block),
        GgmlType::Q6K => decode_q6k(block),
        _ => unreachable!("{ty} is not a K-quant"),
    }
}

/// Q2_K: group `g` has scale `scales[g] & 0xF` and min `scales[g] >> 4`. Each
/// 128 values take 32 bytes of `qs`: value `128n + 32j + l` is bits `2j..2j+2`
/// of `qs[32n + l]`.
fn decode_q2k(b: &[u8]) -> Decoded {
    let b: &BlockQ2K = blocks::block(b);
    let (sc, qs) = (&b.scales, &b.qs);
    let mut out = Decoded::new(b.d.get(), b.dmin.get(), true);
    for (g, &s) in sc.iter().enumerate() {
        out.scales[g] = (s & 0x0F) as i32;
        out.mins[g] = (s >> 4) as i32;
    }
    for (q128, qs32) in out.q.chunks_exact_mut(128).zip(qs.chunks_exact(32)) {
        for (j, q32) in q128.chunks_exact_mut(32).enumerate() {
            for (q, &byte) in q32.iter_mut().zip(qs32) {
                *q = ((byte >> (2 * j)) & 3) as i8;
            }
        }
    }
    out
}

/// Q3_K: 16 6-bit scales, biased by 32. Scale `i` has its low 4 bits in the
/// low (i < 8) or high (i >= 8) nibble of `scales[i % 8]`, and its high 2 bits
/// at bits `2 * (i / 4)` of `scales[8 + i % 4]`. Value `128n + 32j + l` has its
/// low 2 bits at bits `2j..2j+2` of `qs[32n + l]`, and has 4 subtracted unless
/// bit `4n + j` of `hmask[l]` is set.
fn decode_q3k(b: &[u8]) -> Decoded {
    let b: &BlockQ3K = blocks::block(b);
    let (hmask, qs, sc) = (&b.hmask, &b.qs, &b.scales);
    let mut out = Decoded::new(b.d.get(), 0.0, false);
    for j in 0..4 {
        let high = sc[8 + j];
        out.scales[j] = ((sc[j] & 0x0F) | ((high & 3) << 4)) as i32 - 32;
        out.scales[j + 4] = ((sc[j + 4] & 0x0F) | (((high >> 2) & 3) << 4)) as i32 - 32;
        out.scales[j + 8] = ((sc[j] >> 4) | (((high >> 4) & 3) << 4)) as i32 - 32;
        out.scales[j + 12] = ((sc[j + 4] >> 4) | ((high >> 6) << 4)) as i32 - 32;
    }
    for (n, (q128, qs32)) in out.q.chunks_exact_mut(128).zip(qs.chunks_exact(32)).enumerate() {
        for (j, q32) in q128.chunks_exact_mut(32).enumerate() {
            let bit = 4 * n + j;
            for ((q, &byte), &h) in q32.iter_mut().zip(qs32).zip(hmask) {
                let low = (byte >> (2 * j)) & 3;
                let missing = (!h >> bit) & 1;
                *q = low as i8 - (missing << 2) as i8;
            }
        }
    }
    out
}

/// The 6-bit scales and mins of the 8 groups of 32 of Q4_K and Q5_K (ggml's
/// `get_scale_min_k4`). Groups 0..4 are the low 6 bits of bytes 0..4 (scales)
/// and 4..8 (mins); groups 4..8 take their low 4 bits from the low (scales) and
/// high (mins) nibbles of bytes 8..12 and their high 2 bits from the top bits
/// of bytes 0..4 (scales) and 4..8 (mins).
fn scales_mins_k4(q: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut scales, mut mins) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        scales[j] = q[j] & 63;
        mins[j] = q[j + 4] & 63;
        scales[j + 4] = (q[j + 8] & 0x0F) | ((q[j] >> 6) << 4);
        mins[j + 4] = (q[j + 8] >> 4) | ((q[j + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// Q4_K and Q5_K share the scales: group of 32 `j` spans groups of 16 `2j, 2j + 1`.
fn k4_scales(out: &mut Decoded, sc: &[u8]) {
    let (scales, mins) = scales_mins_k4(sc);
    for g in 0..GROUPS {
        out.scales[g] = scales[g / 2] as i32;
        out.mins[g] = mins[g / 2] as i32;
    }
}

/// Q4_K: each 64 values take 32 bytes of `qs`: value `64j + l` is the low
/// nibble of `qs[32j + l]`, value `64j + 32 + l` its high nibble.
fn decode_q4k(b: &[u8]) -> Decoded {
    let b: &BlockQ4K = blocks::block(b);
    let mut out = Decoded::new(b.d.get(), b.dmin.get(), true);
    k4_scales(&mut out, &b.scales);
    for (q64, qs32) in out.q.chunks_exact_mut(64).zip(b.qs.chunks_exact(32)) {
        let (lo, hi) = q64.split_at_mut(32);
        for ((l, h), &byte) in lo.iter_mut().zip(hi).zip(qs32) {
            *l = (byte & 0x0F) as i8;
            *h = (byte >> 4) as i8;
        }
    }
    out
}

/// Q5_K: Q4_K's layout plus a fifth bit (16): for value `64j + l` bit `2j` of
/// `qh[l]`, for value `64j + 32 + l` bit `2j + 1`.
fn decode_q5k(b: &[u8]) -> Decoded {
    let b: &BlockQ5K = blocks::block(b);
    let mut out = Decoded::new(b.d.get(), b.dmin.get(), true);
    k4_scales(&mut out, &b.scales);
    let qh = &b.qh;
    for (j, (q64, qs32)) in out.q.chunks_exact_mut(64).zip(b.qs.chunks_exact(32)).enumerate() {
        let (lo, hi) = q64.split_at_mut(32);
        for (((l, h), &byte), &high) in lo.iter_mut().zip(hi).zip(qs32).zip(qh) {
            *l = ((byte & 0x0F) | (((high >> (2 * j)) & 1) << 4)) as i8;
            *h = ((byte >> 4) | (((high >> (2 * j + 1)) & 1) << 4)) as i8;
        }
    }
    out
}

/// Q6_K: each 128 values take 64 bytes of `ql` and 32 of `qh`; for `l < 32`,
/// values `128n + l + 32k` (k = 0..4) are, minus 32: the low nibble of
/// `ql[64n + l]`, the low nibble of `ql[64n + 32 + l]`, the high nibble of
/// `ql[64n + l]`, the high nibble of `ql[64n + 32 + l]`, each with bits
/// `2k..2k+2` of `qh[32n + l]` above. Group scales are plain i8.
fn decode_q6k(b: &[u8]) -> Decoded {
    let b: &BlockQ6K = blocks::block(b);
    let (ql, qh) = (&b.ql, &b.qh);
    let mut out = Decoded::new(b.d.get(), 0.0, false);
    for (s, &scale) in out.scales.iter_mut().zip(&b.scales) {
        *s = scale as i32;
    }
    for ((q128, ql64), qh32) in out
        .q
        .chunks_exact_mut(128)
        .zip(ql.chunks_exact(64))
        .zip(qh.chunks_exact(32))
    {
        let (ql_a, ql_b) = ql64.split_at(32);
        let (q01, q23) = q128.split_at_mut(64);
        let (q0, q1) = q01.split_at_mut(32);
        let (q2, q3) = q23.split_at_mut(32);
        for l in 0..32 {
            let h = qh32[l];
            q0[l] = ((ql_a[l] & 0x0F) | ((h & 3) << 4)) as i8 - 32;
            q1[l] = ((ql_b[l] & 0x0F) | (((h >> 2) & 3) << 4)) as i8 - 32;
            q2[l] = ((ql_a[l] >> 4) | (((h >> 4) & 3) << 4)) as i8 - 32;
            q3[l] = ((ql_b[l] >> 4) | ((h >> 6) << 4)) as i8 - 32;
        }
    }
    out
}

/// The reference dequantization of a row of `out.len()` values (whole
/// super-blocks), as ggml's `dequantize_row_q*_K`: `(d * scale) * q - dmin * min`
/// in f32, never fused.
pub fn dequantize_row(ty: GgmlType, row: &[u8], out: &mut [f32]) {
    for (chunk, block) in out.chunks_exact_mut(QK_K).zip(row.chunks_exact(ty.block_bytes())) {
        let b = decode(ty, block);
        for (g, (o16, q16)) in chunk.chunks_exact_mut(16).zip(b.q.chunks_exact(16)).enumerate() {
            let dl = b.d * b.scales[g] as f32;
            if b.has_min {
                let ml = b.dmin * b.mins[g] as f32;
                o16.iter_mut().zip(q16).for_each(|(o, &q)| *o = dl * q as f32 - ml);
            } else {
                o16.iter_mut().zip(q16).for_each(|(o, &q)| *o = dl * q as f32);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quant::testing::put_f16;

    fn dequantize_one(ty: GgmlType, block: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; QK_K];
        dequantize_row(ty, block, &mut out);
        out
    }

    #[test]
    fn q4_k_layout_matches_ggml() {
        let mut b = vec![0u8; Q4K_BYTES];
        put_f16(&mut b, 0, 0.5); // d
        put_f16(&mut b, 2, 0.25); // dmin
        let sc = &mut b[4..16];
        // Group 0: scale 3, min 5. Group 1: scale 63, min 1.
        sc[0] = 3;
        sc[4] = 5;
        sc[1] = 63;
        sc[5] = 1;
        // Group 5: scale 0b01_0110 = 22 (low nibble 6 in sc[9], high bits 01 at the top of sc[1]),
        // min 0b10_0011 = 35 (high nibble 3 of sc[9], high bits 10 at the top of sc[5]).
        sc[9] = 0x36;
        sc[1] |= 0b01 << 6;
        sc[5] |= 0b10 << 6;
        let qs = &mut b[16..];
        qs[0] = 0x9_7; // value 0: 7 (group 0); value 32: 9 (group 1)
        qs[31] = 0xF_0; // value 31: 0 (group 0); value 63: 15 (group 1)
        qs[2 * 32 + 4] = 0xA_2; // value 128 + 4: 2 (group 4, scale 0); value 160 + 4: 10 (group 5)
        let y = dequantize_one(GgmlType::Q4K, &b);
        assert_eq!(y[0], 0.5 * 3.0 * 7.0 - 0.25 * 5.0);
        assert_eq!(y[31], -0.25 * 5.0);
        assert_eq!(y[32], 0.5 * 63.0 * 9.0 - 0.25);
        assert_eq!(y[63], 0.5 * 63.0 * 15.0 - 0.25);
        assert_eq!(y[132], 0.0);
        assert_eq!(y[164], 0.5 * 22.0 * 10.0 - 0.25 * 35.0);
        assert_eq!(y[165], -0.25 * 35.0);
    }

    #[test]
    fn q6_k_layout_matches_ggml() {
        let mut b = vec![0u8; Q6K_BYTES];
        put_f16(&mut b, 208, 0.5);
        for (g, s) in b[192..208].iter_mut().enumerate() {
            *s = (g as i8 - 8) as u8; // group g has scale g - 8
        }
        // Value 0: low nibble of ql[0], bits 0..2 of qh[0]: 0x5 | 0b10 << 4 = 37 -> 5.
        // Value 64: high nibble of ql[0], bits 4..6 of qh[0]: 0xC | 0b11 << 4 = 60 -> 28.
        b[0] = 0xC5;
        b[128] = 0b11_00_10;
        // Value 32 + 17 = 49: low nibble of ql[32 + 17], bits 2..4 of qh[17]: 0 -> -32.
        // Value 96 + 17 = 113: high nibble of ql[49], bits 6..8 of qh[17]: 0xF | 0b01 << 4 = 31 -> -1.
        b[49] = 0xF0;
        b[128 + 17] = 0b01 << 6;
        // Second half: value 128 + 96 + 1 = 225: high nibble of ql[64 + 33], top bits of qh[32 + 1].
        b[64 + 33] = 0x20;
        b[128 + 33] = 0b10 << 6; // 2 | 32 = 34 -> 2
        let y = dequantize_one(GgmlType::Q6K, &b);
        assert_eq!(y[0], 0.5 * -8.0 * 5.0);
        assert_eq!(y[64], 0.5 * -4.0 * 28.0);
        assert_eq!(y[49], 0.5 * -5.0 * -32.0);
        assert_eq!(y[113], 0.5, "scale -1 times q -1");
        assert_eq!(y[225], 0.5 * 6.0 * 2.0);
        assert_eq!(y[1], 0.5 * -8.0 * -32.0, "all-zero bits are -32");
    }

    #[test]
    fn q2_k_layout_matches_ggml() {
        let mut b = vec![0u8; Q2K_BYTES];
        put_f16(&mut b, 80, 2.0);
        put_f16(&mut b, 82, 0.5);
        b[0] = 0x3_7; // group 0: scale 7, min 3
        b[7] = 0x1_2; // group 7: scale 2, min 1
        b[16] = 0b11_10_01_00; // values 0, 32, 64, 96 are 0, 1, 2, 3
        b[16 + 17] = 0b10 << 6; // value 96 + 17 = 113 (group 7) is 2
        let y = dequantize_one(GgmlType::Q2K, &b);
        assert_eq!(y[0], -0.5 * 3.0);
        assert_eq!(y[32], 0.0); // group 2: scale 0, min 0
        assert_eq!(y[113], 2.0 * 2.0 * 2.0 - 0.5);
        assert_eq!(y[112], -0.5);
    }

    #[test]
    fn q3_k_layout_matches_ggml() {
        let mut b = vec![0u8; Q3K_BYTES];
        put_f16(&mut b, 108, 0.25);
        let (hmask, rest) = b.split_at_mut(32);
        let (qs, sc) = rest.split_at_mut(64);
        // Scale 0: low nibble of sc[0], high bits 0..2 of sc[8]: 15 | 2 << 4 = 47 -> 15.
        sc[0] = 0x0F;
        sc[8] = 0b10;
        // Scale 9: high nibble of sc[1], bits 4..6 of sc[9]: 5 | 3 << 4 = 53 -> 21.
        sc[1] = 0x50;
        sc[9] = 0b11 << 4;
        // Scales 10 and 11 stay 0 - 32.
        // Value 0: bits 0..2 of qs[0], hmask[0] bit 0 set: 3.
        qs[0] = 0b11;
        hmask[0] = 1;
        // Value 128 + 16 + 2 = 146 (group 9): bits 0..2 of qs[32 + 18], hmask[18] bit 4 set: 1.
        qs[32 + 18] = 0b01;
        hmask[18] = 1 << 4;
        // Value 128 + 32 + 2 = 162 (group 10): bits 2..4 of qs[32 + 2], hmask[2] bit 5 clear: 2 - 4.
        qs[32 + 2] = 0b10 << 2;
        // Value 128 + 32 + 18 = 178 (group 11): bits 2..4 of qs[32 + 18], hmask[18] bit 5 clear: 1 - 4.
        qs[32 + 18] |= 0b01 << 2;
        let y = dequantize_one(GgmlType::Q3K, &b);
        assert_eq!(y[0], 0.25 * 15.0 * 3.0);
        assert_eq!(y[1], 0.25 * 15.0 * -4.0, "a clear hmask bit subtracts 4");
        assert_eq!(y[146], 0.25 * 21.0 * 1.0);
        assert_eq!(y[162], 0.25 * -32.0 * -2.0);
        assert_eq!(y[178], 0.25 * -32.0 * -3.0);
    }

    #[test]
    fn q5_k_high_bits_come_from_qh() {
        let mut b = vec![0u8; Q5K_BYTES];
        put_f16(&mut b, 0, 1.0);
        put_f16(&mut b, 2, 1.0);
        b[4..8].fill(1); // groups 0..4: scale 1, min 0
        b[8] = 2; // group 0: min 2
        b[16 + 3] = 0b0000_0110; // qh[3]: value 32 + 3 (bit 1) and 64 + 3 (bit 2)
        b[48 + 3] = 0x21; // qs[3]: value 3 is 1, value 35 is 2
        let y = dequantize_one(GgmlType::Q5K, &b);
        assert_eq!(y[3], 1.0 - 2.0);
        assert_eq!(y[35], 18.0);
        assert_eq!(y[67], 16.0);
        assert_eq!(y[99], 0.0);
    }
}
