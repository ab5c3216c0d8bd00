//! Element-wise ops of the CPU backend: normalisation, RoPE and the GELU
//! gate. They follow ggml's arithmetic (f64 sums in
//! norms, RoPE angles by repeated multiplication) to track llama.cpp closely.

use crate::compute::ops::RopeStyle;
use half::f16;

/// RMS-normalises each `group`-long slice of `x` in place, then scales by `weight`.
pub fn rms_norm(x: &mut [f32], group: usize, eps: f32, weight: Option<&[f32]>) {
    for slice in x.chunks_exact_mut(group) {
        let sum: f64 = slice.iter().map(|&v| (v * v) as f64).sum();
        let scale = 1.0 / ((sum / group as f64) as f32 + eps).sqrt();
        match weight {
            Some(w) => slice.iter_mut().zip(w).for_each(|(v, w)| *v = *v * scale * w),
            None => slice.iter_mut().for_each(|v| *v *= scale),
        }
    }
}

pub struct Rope {
    pub head_dim: usize,
    pub rotary_dims: usize,
    pub base: f32,
    pub freq_scale: f32,
    pub style: RopeStyle,
}

impl Rope {
    /// Rotates every head of `row`, a row at `position`. The angles depend
    /// on the position only, so their sines and cosines are computed once
    /// for all heads.
    pub fn apply(&self, row: &mut [f32], position: u32) {
        let theta_scale = self.base.powf(-2.0 / self.rotary_dims as f32);
        let half = self.rotary_dims / 2;
        let mut theta = position as f32;
        let mut angles = Vec::with_capacity(half);
        for _ in 0..half {
            angles.push((theta * self.freq_scale).sin_cos());
            theta *= theta_scale;
        }
        #[cfg(target_arch = "x86_64")]
        if super::kernels::features::has_avx2() {
            // SAFETY: AVX2 and FMA are present (checked above).
            return unsafe { self.rotate_fma(row, &angles) };
        }
        self.rotate(row, &angles);
    }

    /// `rotate` built with FMA, so `mul_add` is an instruction rather than
    /// a call (the same results: a fused multiply-add is exact either way).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rotate_fma(&self, row: &mut [f32], angles: &[(f32, f32)]) {
        self.rotate(row, angles)
    }

    #[inline(always)]
    fn rotate(&self, row: &mut [f32], angles: &[(f32, f32)]) {
        let half = self.rotary_dims / 2;
        for head in row.chunks_exact_mut(self.head_dim) {
            for (i, &(sin, cos)) in angles.iter().enumerate() {
                let (a, b) = match self.style {
                    RopeStyle::Normal => (2 * i, 2 * i + 1),
                    RopeStyle::Neox => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                // As GCC contracts ggml's rotate_pairs (-ffp-contract=fast;
                // see its disassembly): each result fuses its x0 product.
                head[a] = x0.mul_add(cos, -(x1 * sin));
                head[b] = x0.mul_add(sin, x1 * cos);
            }
        }
    }
}

/// GELU, tanh approximation, as GCC compiles ggml's `ggml_gelu_f32`
/// (-ffp-contract=fast): `1 + 0.044715·x·x` is one fused multiply-add.
pub fn gelu(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = (0.044_715 * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * inner).tanh())
}

/// GELU of the gate as ggml computes it for GeGLU: the input rounded to f16 and
/// GELU read from an f16 table (so the result is f16-rounded too); saturated
/// outside [-10, 10]. Like ggml, realm reads it from a table of all 65536 f16
/// inputs, built once from `gelu_gate_direct` (so the values are identical).
pub fn gelu_gate(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        gelu_table()[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// `gelu_gate(g[i]) · u[i]` over a row: eight at a time with F16C where the
/// CPU has it (the same f16 rounding and table), else one by one.
pub fn geglu_row(g: &[f32], u: &[f32], out: &mut [f32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::kernels::features::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        done = unsafe { geglu_f16c(g, u, out) };
    }
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u).skip(done) {
        *o = gelu_gate(g) * u;
    }
}

/// `geglu_row` for the whole groups of eight; returns how many it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn geglu_f16c(g: &[f32], u: &[f32], out: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let table = gelu_table();
    let n = g.len().min(u.len()).min(out.len()) / 8 * 8;
    for i in (0..n).step_by(8) {
        // SAFETY: `i + 8 <= n`, within all three slices.
        unsafe {
            let x = _mm256_loadu_ps(g.as_ptr().add(i));
            let mut bits = [0u16; 8];
            _mm_storeu_si128(
                bits.as_mut_ptr().cast(),
                _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x),
            );
            let looked: [u16; 8] = std::array::from_fn(|l| table[bits[l] as usize].to_bits());
            let gelu = _mm256_cvtph_ps(_mm_loadu_si128(looked.as_ptr().cast()));
            let low = _mm256_cmp_ps::<_CMP_LE_OQ>(x, _mm256_set1_ps(-10.0));
            let high = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(10.0));
            let gate = _mm256_blendv_ps(_mm256_andnot_ps(low, gelu), x, high);
            let y = _mm256_mul_ps(gate, _mm256_loadu_ps(u.as_ptr().add(i)));
            _mm256_storeu_ps(out.as_mut_ptr().add(i), y);
        }
    }
    n
}

fn gelu_table() -> &'static [f16] {
    static TABLE: std::sync::OnceLock<Vec<f16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

/// `gelu_gate` computed directly (the table's definition).
pub fn gelu_gate_direct(x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        f16::from_f32(gelu(f16::from_f32(x).to_f32())).to_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_table_equals_the_direct_formula() {
        for bits in 0..=u16::MAX {
            let x = f16::from_bits(bits).to_f32();
            if x.is_nan() {
                continue;
            }
            assert_eq!(gelu_gate(x).to_bits(), gelu_gate_direct(x).to_bits(), "{x}");
        }
        for x in [-10.5f32, -10.0, 9.999, 10.0, 12.5, 0.1234567] {
            assert_eq!(gelu_gate(x).to_bits(), gelu_gate_direct(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn geglu_rows_equal_gelu_gate_times_up() {
        let n = 1000 + 5;
        let g: Vec<f32> = (0..n).map(|i| (i as f32 - 500.0) * 0.0251).collect();
        let mut g = g;
        g[3] = -10.0;
        g[4] = 10.0;
        g[5] = 9.999;
        g[6] = -0.0;
        let u: Vec<f32> = (0..n).map(|i| 1.5 - i as f32 * 0.003).collect();
        let mut out = vec![0.0; n];
        geglu_row(&g, &u, &mut out);
        for i in 0..n {
            assert_eq!(out[i].to_bits(), (gelu_gate(g[i]) * u[i]).to_bits(), "{}", g[i]);
        }
    }

    #[test]
    fn gelu_table_fuses_as_ggml() {
        // The one f16 input whose table entry the fused multiply-add changes:
        // ggml's table holds 0xa9d3 there (unfused, it would be 0xa9d2).
        let x = f16::from_bits(0xbfff).to_f32();
        assert_eq!(f16::from_f32(gelu_gate(x)).to_bits(), 0xa9d3);
    }

    #[test]
    fn rms_norm_gives_unit_mean_square() {
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 0.0, 0.0, 0.0];
        rms_norm(&mut x, 4, 0.0, None);
        for group in x.chunks(4) {
            let ms: f32 = group.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!((ms - 1.0).abs() < 1e-5, "{ms}");
        }
    }

    /// The rotation as written per head (angles recomputed for each head):
    /// `apply` must give the same bits.
    #[test]
    fn rope_shares_angles_across_heads_bit_for_bit() {
        for style in [RopeStyle::Normal, RopeStyle::Neox] {
            let rope = Rope {
                head_dim: 64,
                rotary_dims: 64,
                base: 1_000_000.0,
                freq_scale: 1.0,
                style,
            };
            for position in [0u32, 1, 7, 300, 4095] {
                let row: Vec<f32> = (0..64 * 5).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
                let mut got = row.clone();
                rope.apply(&mut got, position);
                let mut expected = row;
                let theta_scale = rope.base.powf(-2.0 / rope.rotary_dims as f32);
                let half = rope.rotary_dims / 2;
                for head in expected.chunks_exact_mut(rope.head_dim) {
                    let mut theta = position as f32;
                    for i in 0..half {
                        let (sin, cos) = (theta * rope.freq_scale).sin_cos();
                        let (a, b) = match style {
                            RopeStyle::Normal => (2 * i, 2 * i + 1),
                            RopeStyle::Neox => (i, i + half),
                        };
                        let (x0, x1) = (head[a], head[b]);
                        head[a] = x0.mul_add(cos, -(x1 * sin));
                        head[b] = x0.mul_add(sin, x1 * cos);
                        theta *= theta_scale;
                    }
                }
                let same = got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{style:?} position {position}");
            }
        }
    }

    #[test]
    fn rope_rotates_pairs_by_position() {
        let rope = Rope {
            head_dim: 4,
            rotary_dims: 4,
            base: 10_000.0,
            freq_scale: 1.0,
            style: RopeStyle::Normal,
        };
        let mut row = vec![1.0, 0.0, 1.0, 0.0];
        rope.apply(&mut row, 0);
        assert_eq!(row, vec![1.0, 0.0, 1.0, 0.0], "position 0 is the identity");
        rope.apply(&mut row, 1);
        assert!((row[0] - 1f32.cos()).abs() < 1e-6 && (row[1] - 1f32.sin()).abs() < 1e-6);
        let neox = Rope {
            style: RopeStyle::Neox,
            ..rope
        };
        let mut row = vec![1.0, 1.0, 0.0, 0.0];
        neox.apply(&mut row, 1);
        assert!((row[0] - 1f32.cos()).abs() < 1e-6 && (row[2] - 1f32.sin()).abs() < 1e-6);
    }
}
