//! ggml's vectorised math on x86 with AVX-512 (the build llama.cpp's goldens
//! come from): `ggml_v_expf`, and SwiGLU through `ggml_v_silu`.

/// ggml's `ggml_v_expf` (AVX-512 variant) for one lane: the ARM optimized
/// routines' polynomial, at most about 1.5 ulp from the true value.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0 = 1/ln 2
    let n = z - r;
    // fnmadd(a, b, c) = -(a·b) + c, which is fma(-a, b, c) exactly.
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scalef(j, n)
}

/// `_mm512_scalef_ps(j, n)` for an integral |n| ≤ 192: j·2ⁿ rounded once
/// (the product is exact in f64).
#[inline(always)]
fn scalef(j: f32, n: f32) -> f32 {
    let n = n as i64; // NaN gives 0; j is NaN then anyway
    (j as f64 * f64::from_bits(((n + 1023) as u64) << 52)) as f32
}

/// SiLU(x)·g over a row as ggml's `ggml_vec_swiglu_f32`: 16 lanes at a time
/// with `ggml_v_silu` (x / (1 + ggml_v_expf(0 - x))), the leftover elements
/// with libm's `expf`.
pub fn swiglu_row(x: &[f32], g: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::features::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { swiglu_row_fma(x, g, out) };
    }
    swiglu_row_impl(x, g, out)
}

/// The same code built with FMA, so `mul_add` is an instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn swiglu_row_fma(x: &[f32], g: &[f32], out: &mut [f32]) {
    swiglu_row_impl(x, g, out)
}

#[inline(always)]
fn swiglu_row_impl(x: &[f32], g: &[f32], out: &mut [f32]) {
    let vectorised = x.len() / 16 * 16;
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(g).take(vectorised) {
        *o = x / (1.0 + expf(0.0 - x)) * g;
    }
    for ((o, &x), &g) in out.iter_mut().zip(x).zip(g).skip(vectorised) {
        *o = x / (1.0 + (-x).exp()) * g;
    }
}

/// ggml_v_expf with AVX-512 intrinsics, as ggml writes it: 16 lanes of
/// `expf` (the same bits, tested).
#[cfg(target_arch = "x86_64")]
pub mod avx512 {
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub fn expf16(xs: &[f32; 16]) -> [f32; 16] {
        let s = _mm512_set1_ps;
        // SAFETY: 16 floats are read and written.
        let x = unsafe { _mm512_loadu_ps(xs.as_ptr()) };
        let r = s(f32::from_bits(0x4b40_0000));
        let z = _mm512_fmadd_ps(x, s(f32::from_bits(0x3fb8_aa3b)), r);
        let n = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(
            n,
            s(f32::from_bits(0x35bf_be8e)),
            _mm512_fnmadd_ps(n, s(f32::from_bits(0x3f31_7200)), x),
        );
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(n), s(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(s(f32::from_bits(0x3c07_2010)), b, s(f32::from_bits(0x3d2b_9f17))),
                u,
                _mm512_fmadd_ps(s(f32::from_bits(0x3e2a_af33)), b, s(f32::from_bits(0x3eff_fedb))),
            ),
            u,
            _mm512_fmadd_ps(s(f32::from_bits(0x3f7f_fff6)), b, s(1.0)),
        );
        let res = _mm512_scalef_ps(j, n);
        let zero = _mm512_setzero_ps();
        let alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LE_OQ>(n, zero), s(f32::INFINITY), zero);
        let v = _mm512_mask_blend_ps(d, res, alt);
        let mut out = [0.0f32; 16];
        // SAFETY: 16 floats are written.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between two finite positive floats.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn expf_is_within_two_ulps_of_exp() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(expf(x), want));
            x += 0.000_731;
        }
        assert!(worst <= 2, "worst {worst} ulps");
        assert_eq!(expf(0.0), 1.0);
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-1000.0), 0.0);
        assert_eq!(expf(f32::INFINITY), f32::INFINITY);
        assert_eq!(expf(200.0), f32::INFINITY);
        assert!(expf(f32::NAN).is_nan());
        // Subnormal results are rounded once, as _mm512_scalef_ps does.
        for x in [-90.0f32, -100.0, -103.0] {
            let want = (x as f64).exp();
            assert!((expf(x) as f64 - want).abs() <= 2.0 * f32::from_bits(1) as f64, "{x}");
        }
    }

    #[test]
    fn expf_equals_the_avx512_kernel() {
        if !crate::compute::cpu::kernels::features::can_test(
            crate::compute::cpu::kernels::features::Isa::Avx512,
            "expf16",
        ) {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut x = -110.0f32;
            while x < 90.0 {
                let xs: [f32; 16] = std::array::from_fn(|i| x + i as f32 * 0.0137);
                // SAFETY: AVX-512F is present (checked above).
                let got = unsafe { super::avx512::expf16(&xs) };
                for (g, &x) in got.iter().zip(&xs) {
                    assert_eq!(g.to_bits(), expf(x).to_bits(), "{x}");
                }
                x += 0.219;
            }
        }
    }

    #[test]
    fn swiglu_uses_ggml_v_expf_for_whole_vectors_only() {
        let n = 69;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.137 - 4.1).collect();
        let g: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.01).collect();
        let mut out = vec![0.0; n];
        swiglu_row(&x, &g, &mut out);
        for i in 0..n {
            let e = if i < 64 { expf(-x[i]) } else { (-x[i]).exp() };
            assert_eq!(out[i].to_bits(), (x[i] / (1.0 + e) * g[i]).to_bits(), "{i}");
        }
        assert!(
            (0..64).any(|i| expf(-x[i]) != (-x[i]).exp()),
            "the inputs do not tell the two exponentials apart"
        );
    }
}
