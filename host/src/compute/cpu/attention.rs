//! Attention with ggml's CPU arithmetic: llama.cpp without flash attention,
//! built for AVX-512 (x86-64 with AVX512F/DQ, no AVX512-FP16), as at llama.cpp
//! 0c1e570. The graph there is `kq = mul_mat(k, q)`, `soft_max_ext(kq, mask,
//! scale)`, `kqv = mul_mat(v_transposed, kq)`, where both products convert
//! their f32 operand to f16 first. The summation order follows whichever kernel
//! ggml picks:
//!
//! - several query rows (prefill): llamafile's tinyBLAS (`sgemm.cpp`,
//!   `tinyBLAS<16, __m512, ...>`): one 16-lane f32 accumulator, fused
//!   multiply-adds over chunks of 16 along the reduced dimension, then
//!   `_mm512_reduce_add_ps`;
//! - one query row (decode): `ggml_vec_dot_f16`: four 16-lane accumulators
//!   over blocks of 64, combined 0+2, 1+3, then 0+1, reduced as above into a
//!   double, with any leftover products added in double.
//!
//! For `kqv` the reduced dimension is the cache position: lane = position mod
//! 16 (and accumulator = position / 16 mod 4), counting from cache cell 0,
//! because llama.cpp's `n_kv` is a multiple of 256 and masked positions weigh
//! exactly 0. The softmax is `ggml_compute_forward_soft_max_f32`: scale, max,
//! [`expf`] (ggml's `ggml_v_expf` polynomial) over aligned 16-wide chunks,
//! each chunk reduced in f32 and summed in double, then multiplied by
//! `(float)(1.0 / sum)`.
//!
//! Keys and values are converted from f16 once per call (per layer and step)
//! rather than per query row and head; f16 to f32 is exact, so this changes
//! no result.

use half::f16;
use rayon::prelude::*;

use super::vmath::expf;
use crate::compute::graph::Attention;

/// Lanes of one AVX-512 f32 vector.
const LANES: usize = 16;
/// Accumulators of `ggml_vec_dot_f16` on AVX-512 (`GGML_F16_STEP / GGML_F16_EPR`).
const VEC_DOT_ARR: usize = 4;

/// `_mm512_reduce_add_ps` as GCC expands it: upper half + lower half (8),
/// again (4), then (0+2) + (1+3).
#[inline(always)]
pub fn reduce16(x: &[f32; LANES]) -> f32 {
    let mut s8 = [0.0f32; 8];
    for i in 0..8 {
        s8[i] = x[i + 8] + x[i];
    }
    let mut s4 = [0.0f32; 4];
    for i in 0..4 {
        s4[i] = s8[i + 4] + s8[i];
    }
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

/// Which of ggml's kernels a product follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// llamafile tinyBLAS: one 16-lane accumulator.
    Tiny,
    /// `ggml_vec_dot_f16`: four 16-lane accumulators over blocks of 64.
    VecDot,
}

impl Order {
    fn accumulators(self) -> usize {
        match self {
            Order::Tiny => 1,
            Order::VecDot => VEC_DOT_ARR,
        }
    }
}

/// Σ a[i]·b[i] in ggml's order for `order`. Tiny needs a length that is a
/// multiple of 16.
#[inline(always)]
pub fn dot(order: Order, a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    match order {
        Order::Tiny => {
            debug_assert_eq!(a.len() % LANES, 0);
            let mut acc = [0.0f32; LANES];
            for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
                for l in 0..LANES {
                    acc[l] = ca[l].mul_add(cb[l], acc[l]);
                }
            }
            reduce16(&acc)
        }
        Order::VecDot => {
            let step = LANES * VEC_DOT_ARR;
            let np = a.len() / step * step;
            let mut acc = [[0.0f32; LANES]; VEC_DOT_ARR];
            for (ca, cb) in a[..np].chunks_exact(step).zip(b[..np].chunks_exact(step)) {
                for (j, acc) in acc.iter_mut().enumerate() {
                    for l in 0..LANES {
                        acc[l] = ca[j * LANES + l].mul_add(cb[j * LANES + l], acc[l]);
                    }
                }
            }
            let mut sum = combine4(&acc) as f64;
            for (x, y) in a[np..].iter().zip(&b[np..]) {
                sum += (x * y) as f64;
            }
            sum as f32
        }
    }
}

/// `GGML_F32x16_REDUCE` over four accumulators: 0+2, 1+3, 0+1, then
/// `_mm512_reduce_add_ps`.
#[inline(always)]
fn combine4(acc: &[[f32; LANES]; VEC_DOT_ARR]) -> f32 {
    let mut x = [0.0f32; LANES];
    for l in 0..LANES {
        x[l] = (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]);
    }
    reduce16(&x)
}

/// The kernel order ggml uses for a step of `rows` query rows: tinyBLAS runs
/// only for more than one row and a reduced dimension divisible by 16 (`kq`:
/// the head size) with a row count divisible by 4 (`kqv`: the head size).
pub fn orders(rows: usize, head_dim: usize) -> (Order, Order) {
    let prefill = rows >= 2;
    let kq = if prefill && head_dim.is_multiple_of(LANES) {
        Order::Tiny
    } else {
        Order::VecDot
    };
    let kqv = if prefill && head_dim.is_multiple_of(4) {
        Order::Tiny
    } else {
        Order::VecDot
    };
    (kq, kqv)
}

/// Multi-head attention of `q` (rows × n_head·head_dim, at positions
/// `start..`) over the cached keys and values of positions `..start + rows`.
pub fn attention(a: &Attention, q: &[f32], keys: &[f16], values: &[f16], start: usize, out: &mut [f32]) {
    let (hd, width) = (a.head_dim, a.n_kv_head * a.head_dim);
    let rows = q.len() / (a.n_head * hd);
    let end = start + rows;
    let lo = first_position(a, start);
    let (kq, kqv) = orders(rows, hd);
    let (keys, values) = (&keys[lo * width..end * width], &values[lo * width..end * width]);
    // A decode step reads the f16 cache as it is; a prompt's rows share one
    // f32 copy (at 768 positions, widening a copy for each token moved more
    // memory than the products read).
    let (k32, v32);
    let cache = if rows == 1 && reads_f16(hd) {
        Cache {
            keys: Cells::F16(keys),
            values: Cells::F16(values),
            lo,
        }
    } else {
        (k32, v32) = (to_f32(keys), to_f32(values));
        Cache {
            keys: Cells::F32(&k32),
            values: Cells::F32(&v32),
            lo,
        }
    };
    out.par_chunks_mut(hd).enumerate().for_each(|(task, out_head)| {
        let (row, head) = (task / a.n_head, task % a.n_head);
        let query = &q[row * a.n_head * hd + head * hd..][..hd];
        head_attention(a, kq, kqv, &cache, query, start + row, head, out_head);
    });
}

/// Whether a decode step can take the f16 cache as it is: the kernels that
/// widen it as they read (`x86::vec_dot`, `x86::mul_add32_f16`) need
/// AVX2 and F16C, whole blocks of 64 for the scores and of 32 for the sums.
fn reads_f16(head_dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::features::has_avx2() && head_dim.is_multiple_of(LANES * VEC_DOT_ARR) {
        return true;
    }
    let _ = head_dim;
    false
}

/// Keys and values of positions `lo..`.
pub struct Cache<'a> {
    pub keys: Cells<'a>,
    pub values: Cells<'a>,
    pub lo: usize,
}

/// A cache's cells: the f16 store itself, or an f32 copy of it.
#[derive(Clone, Copy)]
pub enum Cells<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl Cells<'_> {
    /// `len` values from `at`, as f32 (a copy for f16 cells: the slow path).
    fn widened(&self, at: usize, len: usize) -> std::borrow::Cow<'_, [f32]> {
        match self {
            Cells::F32(c) => std::borrow::Cow::Borrowed(&c[at..at + len]),
            Cells::F16(c) => std::borrow::Cow::Owned(c[at..at + len].iter().map(|v| v.to_f32()).collect()),
        }
    }
}

fn first_position(a: &Attention, position: usize) -> usize {
    if a.window > 0 {
        (position + 1).saturating_sub(a.window)
    } else {
        0
    }
}

/// The cache converted to f32 (exact). The vector is not zeroed first: at
/// 768 positions that memset was a tenth of a SmolLM2 decode step.
fn to_f32(h: &[f16]) -> Vec<f32> {
    const CHUNK: usize = 1 << 16;
    let mut out: Vec<f32> = Vec::with_capacity(h.len());
    out.spare_capacity_mut()[..h.len()]
        .par_chunks_mut(CHUNK)
        .zip(h.par_chunks(CHUNK))
        .for_each(|(o, h)| {
            let mut done = 0;
            #[cfg(target_arch = "x86_64")]
            if super::kernels::features::has_avx2() {
                // SAFETY: F16C is present (checked with AVX2).
                done = unsafe { x86::widen(h, o) };
            }
            for (o, h) in o[done..].iter_mut().zip(&h[done..]) {
                o.write(h.to_f32());
            }
        });
    // SAFETY: the loops above wrote all `h.len()` values.
    unsafe { out.set_len(h.len()) };
    out
}

/// One query row and head: dispatches to an FMA build of the same code where
/// the CPU has it (identical results; `mul_add` is exact either way).
#[allow(clippy::too_many_arguments)]
pub fn head_attention(
    a: &Attention,
    kq: Order,
    kqv: Order,
    cache: &Cache,
    query: &[f32],
    position: usize,
    head: usize,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if super::kernels::features::has_avx2() {
        // SAFETY: AVX2, FMA and F16C are present (checked above).
        return unsafe { head_attention_fma(a, kq, kqv, cache, query, position, head, out) };
    }
    head_attention_impl::<false>(a, kq, kqv, cache, query, position, head, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn head_attention_fma(
    a: &Attention,
    kq: Order,
    kqv: Order,
    cache: &Cache,
    query: &[f32],
    position: usize,
    head: usize,
    out: &mut [f32],
) {
    head_attention_impl::<true>(a, kq, kqv, cache, query, position, head, out)
}

/// One query row and head; with `SIMD` (AVX2 and FMA present) the scores of
/// `Order::Tiny` four keys at a time in vectors (the same results).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_attention_impl<const SIMD: bool>(
    a: &Attention,
    kq: Order,
    kqv: Order,
    cache: &Cache,
    query: &[f32],
    position: usize,
    head: usize,
    out: &mut [f32],
) {
    let hd = a.head_dim;
    let width = a.n_kv_head * hd;
    let group = a.n_head / a.n_kv_head;
    let kv_offset = (head / group) * hd;
    let first = first_position(a, position);
    let at = |t: usize| (t - cache.lo) * width + kv_offset;

    // kq: mul_mat converts q to f16.
    let q16: Vec<f32> = query.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    // soft_max: scale (the mask adds +0 to visible positions), max.
    // Plain loops, not iterator closures: a closure is compiled without this
    // function's target features, and its `mul_add`s become calls to libm.
    let mut p = vec![0.0f32; position + 1 - first];
    let mut t = first;
    #[cfg(target_arch = "x86_64")]
    if let (true, Order::Tiny, Cells::F32(cells)) = (SIMD, kq, cache.keys) {
        while t + 4 <= position + 1 {
            let keys = [t, t + 1, t + 2, t + 3].map(|u| &cells[at(u)..][..hd]);
            // SAFETY: SIMD is set only by `head_attention_fma`, which runs
            // where AVX2 and FMA are present.
            let dots = unsafe { x86::tiny_dots4(keys, &q16) };
            for (i, d) in dots.into_iter().enumerate() {
                p[t + i - first] = d * a.scale;
            }
            t += 4;
        }
    }
    #[cfg(target_arch = "x86_64")]
    if SIMD && kq == Order::VecDot && hd.is_multiple_of(LANES * VEC_DOT_ARR) {
        while t <= position {
            // SAFETY: as above (and F16C, which `head_attention_fma` enables too).
            let dot = unsafe {
                match cache.keys {
                    Cells::F32(cells) => x86::vec_dot(&cells[at(t)..][..hd], &q16),
                    Cells::F16(cells) => x86::vec_dot(&cells[at(t)..][..hd], &q16),
                }
            };
            p[t - first] = dot * a.scale;
            t += 1;
        }
    }
    while t <= position {
        p[t - first] = dot(kq, &cache.keys.widened(at(t), hd), &q16) * a.scale;
        t += 1;
    }
    let mut max = f32::NEG_INFINITY;
    for &x in &p {
        max = if max > x { max } else { x };
    }
    // exp over 16-aligned chunks of cache cells; masked lanes are exp(-inf) = 0.
    // The exponentials are element by element: 16 at a time with ggml's
    // AVX-512 code where the CPU has it (the same bits as `expf`).
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if SIMD && super::kernels::features::has_avx512() {
        for chunk in p.chunks_exact_mut(LANES) {
            let mut xs = [0.0f32; LANES];
            for (x, &v) in xs.iter_mut().zip(chunk.iter()) {
                *x = v - max;
            }
            // SAFETY: AVX-512F is present (checked above).
            chunk.copy_from_slice(&unsafe { super::vmath::avx512::expf16(&xs) });
            done += LANES;
        }
    }
    for x in &mut p[done..] {
        *x = expf(*x - max);
    }
    let mut sum = 0.0f64;
    let mut t = first;
    while t <= position {
        let chunk_end = ((t / LANES + 1) * LANES).min(position + 1);
        let mut lanes = [0.0f32; LANES];
        for u in t..chunk_end {
            lanes[u % LANES] = p[u - first];
        }
        sum += reduce16(&lanes) as f64;
        t = chunk_end;
    }
    let inv = (1.0 / sum) as f32;
    // kqv: mul_mat converts the weights to f16 (eight at a time with F16C
    // where present: the same rounding); lanes run over cache cells.
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if SIMD {
        // SAFETY: SIMD is set only where AVX2, FMA and F16C are present.
        done = unsafe { x86::f16_weights(&mut p, inv) };
    }
    for e in &mut p[done..] {
        *e = f16::from_f32(*e * inv).to_f32();
    }
    // The outputs in chunks of OUT_CHUNK, each with its own accumulators:
    // every output gets the same operations in the same order as with one
    // chunk, but the accumulators (arr x 16 lanes per output) stay in L1.
    //
    // A cell's accumulator (lane `t % 16` of accumulator `(t / 16) % arr`)
    // is slot `t % (16 · arr)`: each slot's cells go through in order with
    // its sums in registers, then it is stored once (a slot per cell, loaded
    // and stored back for every cell, cost twice the arithmetic).
    let slots = kqv.accumulators() * LANES;
    let mut buffer = [0.0f32; VEC_DOT_ARR * LANES * OUT_CHUNK];
    for d0 in (0..hd).step_by(OUT_CHUNK) {
        let n = OUT_CHUNK.min(hd - d0);
        let acc = &mut buffer[..slots * n];
        acc.fill(0.0);
        for (slot, acc) in acc.chunks_exact_mut(n).enumerate() {
            let mut t = first + (slot + slots - first % slots) % slots;
            if n == OUT_CHUNK {
                let mut sums = [0.0f32; OUT_CHUNK];
                while t <= position {
                    let w = p[t - first];
                    match cache.values {
                        Cells::F32(cells) => {
                            for (o, &v) in sums.iter_mut().zip(&cells[at(t) + d0..][..OUT_CHUNK]) {
                                *o = v.mul_add(w, *o);
                            }
                        }
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: F16 cells are read only where `reads_f16`
                        // found AVX2 and F16C.
                        Cells::F16(cells) if SIMD => unsafe {
                            x86::mul_add32_f16(&mut sums, &cells[at(t) + d0..][..OUT_CHUNK], w)
                        },
                        Cells::F16(_) => {
                            let values = cache.values.widened(at(t) + d0, OUT_CHUNK);
                            for (o, &v) in sums.iter_mut().zip(values.iter()) {
                                *o = v.mul_add(w, *o);
                            }
                        }
                    }
                    t += slots;
                }
                // A loop, not `copy_from_slice`: that is a call to memcpy per slot.
                for (a, s) in acc.iter_mut().zip(sums) {
                    *a = s;
                }
            } else {
                while t <= position {
                    let w = p[t - first];
                    for (o, &v) in acc.iter_mut().zip(cache.values.widened(at(t) + d0, n).iter()) {
                        *o = v.mul_add(w, *o);
                    }
                    t += slots;
                }
            }
        }
        reduce_lanes(kqv, acc, n, &mut out[d0..d0 + n]);
    }
}

/// Outputs per chunk of the weighted sum of values.
const OUT_CHUNK: usize = 32;

/// Each of `n` outputs' lanes (`acc`: [arr][LANES][n]) reduced into `out`
/// (`reduce16`, after `combine4` for VecDot) with the same adds, done for all
/// `n` outputs at once, row by row.
#[inline(always)]
fn reduce_lanes(kqv: Order, acc: &mut [f32], n: usize, out: &mut [f32]) {
    if kqv == Order::VecDot {
        let (a01, a23) = acc.split_at_mut(2 * LANES * n);
        let (a0, a1) = a01.split_at_mut(LANES * n);
        let (a2, a3) = a23.split_at(LANES * n);
        for (((x0, x1), x2), x3) in a0.iter_mut().zip(a1.iter()).zip(a2).zip(a3) {
            *x0 = (*x0 + *x2) + (*x1 + *x3);
        }
    }
    let (lo, hi) = acc[..LANES * n].split_at_mut(8 * n);
    for (a, b) in lo.iter_mut().zip(hi.iter()) {
        *a += *b;
    }
    let (lo, hi) = acc[..8 * n].split_at_mut(4 * n);
    for (a, b) in lo.iter_mut().zip(hi.iter()) {
        *a += *b;
    }
    let (s01, s23) = acc[..4 * n].split_at(2 * n);
    let (s0, s1) = s01.split_at(n);
    let (s2, s3) = s23.split_at(n);
    for ((((o, x0), x1), x2), x3) in out.iter_mut().zip(s0).zip(s1).zip(s2).zip(s3) {
        *o = (x0 + x2) + (x1 + x3);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `h` as f32 into `out` for the whole groups of eight; returns how many
    /// values it wrote.
    #[target_feature(enable = "avx2,f16c")]
    pub fn widen(h: &[half::f16], out: &mut [std::mem::MaybeUninit<f32>]) -> usize {
        let n = h.len().min(out.len()) / 8 * 8;
        for i in (0..n).step_by(8) {
            // SAFETY: eight f16s are read and eight f32s written, within
            // both slices (`i + 8 <= n`); MaybeUninit<f32> is an f32's layout.
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(h.as_ptr().add(i).cast()));
                _mm256_storeu_ps(out.as_mut_ptr().add(i).cast(), v);
            }
        }
        n
    }

    /// `f16(e · inv)` as f32 for the whole groups of eight values of `p`, in
    /// place; returns how many values it did.
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    pub fn f16_weights(p: &mut [f32], inv: f32) -> usize {
        let mut done = 0;
        for chunk in p.chunks_exact_mut(8) {
            // SAFETY: `chunk` is eight f32s.
            unsafe {
                let v = _mm256_mul_ps(_mm256_loadu_ps(chunk.as_ptr()), _mm256_set1_ps(inv));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm256_storeu_ps(chunk.as_mut_ptr(), _mm256_cvtph_ps(h));
            }
            done += 8;
        }
        done
    }

    /// A cache cell type the decode kernels read eight at a time as f32.
    pub trait Cell: Copy {
        /// # Safety
        /// Eight values from `p` must be readable; AVX2 and F16C present.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Cell for f32 {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Cell for half::f16 {
        /// Widened exactly by F16C.
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(p: *const half::f16) -> __m256 {
            // SAFETY: the caller's.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    /// `dot(Order::VecDot, key, q)` for a length that is a multiple of 64:
    /// accumulator `j` of 16 lanes (two vectors) takes block `j` of each 64,
    /// then `combine4` and `reduce16` with the same adds.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn vec_dot<C: Cell>(key: &[C], q: &[f32]) -> f32 {
        const STEP: usize = super::LANES * super::VEC_DOT_ARR;
        assert!(key.len() == q.len() && q.len().is_multiple_of(STEP));
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        for c in (0..q.len()).step_by(STEP) {
            for j in 0..4 {
                let at = c + j * super::LANES;
                // SAFETY: `at + 16 <= len` of both (asserted); the features are this function's.
                unsafe {
                    let (k, q) = (key.as_ptr().add(at), q.as_ptr().add(at));
                    lo[j] = _mm256_fmadd_ps(C::load8(k), _mm256_loadu_ps(q), lo[j]);
                    hi[j] = _mm256_fmadd_ps(C::load8(k.add(8)), _mm256_loadu_ps(q.add(8)), hi[j]);
                }
            }
        }
        vec_dot_sum(lo, hi)
    }

    /// `combine4`, then `reduce16`, of the four accumulators' low and high
    /// eight lanes: the same adds in the same order.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn vec_dot_sum(lo: [__m256; 4], hi: [__m256; 4]) -> f32 {
        let combine = |x: [__m256; 4]| _mm256_add_ps(_mm256_add_ps(x[0], x[2]), _mm256_add_ps(x[1], x[3]));
        let s8 = _mm256_add_ps(combine(hi), combine(lo));
        let s4 = _mm_add_ps(_mm256_extractf128_ps::<1>(s8), _mm256_castps256_ps128(s8));
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
    }

    /// `sums[i] = v[i] · w + sums[i]`, fused, for 32 f16 values widened as
    /// they are read.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub fn mul_add32_f16(sums: &mut [f32; 32], v: &[half::f16], w: f32) {
        assert!(v.len() >= 32);
        let w = _mm256_set1_ps(w);
        for i in (0..32).step_by(8) {
            // SAFETY: eight values at `i + 8 <= 32` of both (asserted).
            unsafe {
                let v = _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(i).cast()));
                let o = sums.as_mut_ptr().add(i);
                _mm256_storeu_ps(o, _mm256_fmadd_ps(v, w, _mm256_loadu_ps(o)));
            }
        }
    }

    /// `dot(Order::Tiny, key, q)` for four keys: the 16 lanes as two vectors
    /// per key, four keys' fused chains interleaved; then `reduce16`, which
    /// is `hsum_float_8` of the two halves' sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub fn tiny_dots4(keys: [&[f32]; 4], q: &[f32]) -> [f32; 4] {
        let n = q.len() / super::LANES * super::LANES;
        assert!(keys.iter().all(|k| k.len() >= n));
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
        for c in (0..n).step_by(super::LANES) {
            // SAFETY: `c + 16 <= n`, within `q` and every key (asserted).
            unsafe {
                let (q0, q1) = (
                    _mm256_loadu_ps(q.as_ptr().add(c)),
                    _mm256_loadu_ps(q.as_ptr().add(c + 8)),
                );
                for i in 0..4 {
                    let k = keys[i].as_ptr().add(c);
                    lo[i] = _mm256_fmadd_ps(_mm256_loadu_ps(k), q0, lo[i]);
                    hi[i] = _mm256_fmadd_ps(_mm256_loadu_ps(k.add(8)), q1, hi[i]);
                }
            }
        }
        std::array::from_fn(|i| {
            let s8 = _mm256_add_ps(hi[i], lo[i]);
            let s4 = _mm_add_ps(_mm256_extractf128_ps::<1>(s8), _mm256_castps256_ps128(s8));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::cpu::kernels::features::{Isa, can_test};

    /// `_mm512_reduce_add_ps` itself, as a reference.
    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx512f")]
        pub fn reduce_add(xs: &[f32; 16]) -> f32 {
            // SAFETY: 16 floats are read.
            _mm512_reduce_add_ps(unsafe { _mm512_loadu_ps(xs.as_ptr()) })
        }
    }

    fn pseudo_random(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                f16::from_f32(v * 3.0).to_f32()
            })
            .collect()
    }

    #[test]
    fn reduce16_is_the_gcc_tree() {
        // Values whose f32 sum depends on the order.
        let xs: [f32; 16] =
            std::array::from_fn(|i| [1e8f32, 1.0, -1e8, 3.5, 1e-3, 7.0, -2.25, 1e7][i % 8] * (i as f32 + 1.0));
        let s8: Vec<f32> = (0..8).map(|i| xs[i] + xs[i + 8]).collect();
        let s4: Vec<f32> = (0..4).map(|i| s8[i] + s8[i + 4]).collect();
        assert_eq!(reduce16(&xs), (s4[0] + s4[2]) + (s4[1] + s4[3]));
        // LLVM's reduction of _mm512_reduce_add_ps splits in halves as GCC does.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F is present (checked above).
            assert_eq!(reduce16(&xs).to_bits(), unsafe { avx512::reduce_add(&xs) }.to_bits());
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn tiny_dots4_equal_the_portable_dot() {
        if !can_test(Isa::Avx2, "attention's AVX2 dots") {
            return;
        }
        for (seed, hd) in [(1u64, 64usize), (2, 256), (3, 128), (4, 16)] {
            let q = pseudo_random(seed, hd);
            let keys: Vec<Vec<f32>> = (0..4).map(|i| pseudo_random(seed * 10 + i, hd)).collect();
            // SAFETY: AVX2 and FMA are present (checked above).
            let got = unsafe { super::x86::tiny_dots4([&keys[0], &keys[1], &keys[2], &keys[3]], &q) };
            for (i, g) in got.iter().enumerate() {
                assert_eq!(g.to_bits(), dot(Order::Tiny, &keys[i], &q).to_bits(), "hd {hd} key {i}");
            }
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn vec_dot_equals_the_portable_dot() {
        if !can_test(Isa::Avx2, "attention's AVX2 dots") {
            return;
        }
        for (seed, hd) in [(1u64, 64usize), (2, 256), (3, 128), (4, 512)] {
            for i in 0..8 {
                let (q, key) = (pseudo_random(seed, hd), pseudo_random(seed * 10 + i, hd));
                // SAFETY: AVX2 and FMA are present (checked above).
                let got = unsafe { super::x86::vec_dot(&key, &q) };
                assert_eq!(got.to_bits(), dot(Order::VecDot, &key, &q).to_bits(), "hd {hd} key {i}");
                // An f16 key, widened as it is read, as its f32 copy.
                let key16: Vec<f16> = key.iter().map(|&v| f16::from_f32(v)).collect();
                let widened: Vec<f32> = key16.iter().map(|v| v.to_f32()).collect();
                // SAFETY: as above (F16C is checked with AVX2).
                let got = unsafe { super::x86::vec_dot(&key16, &q) };
                assert_eq!(
                    got.to_bits(),
                    dot(Order::VecDot, &widened, &q).to_bits(),
                    "f16 hd {hd} key {i}"
                );
            }
        }
    }

    #[test]
    fn dots_agree_with_a_plain_sum() {
        for n in [16usize, 64, 96, 256, 1024, 80] {
            let (a, b) = (pseudo_random(1, n), pseudo_random(2, n));
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let bound: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 * *y as f64).abs())
                .sum::<f64>()
                * 1e-6;
            for order in [Order::Tiny, Order::VecDot] {
                if order == Order::Tiny && n % 16 != 0 {
                    continue;
                }
                let got = dot(order, &a, &b) as f64;
                assert!((got - exact).abs() <= bound, "{order:?} n={n}: {got} vs {exact}");
            }
        }
        // The orders differ from each other and from a sequential sum.
        let (a, b) = (pseudo_random(3, 256), pseudo_random(4, 256));
        let seq = a.iter().zip(&b).fold(0.0f32, |s, (x, y)| x.mul_add(*y, s));
        let (tiny, vec) = (dot(Order::Tiny, &a, &b), dot(Order::VecDot, &a, &b));
        assert!(
            tiny != vec || tiny != seq,
            "the test vectors do not separate the orders"
        );
    }

    #[test]
    fn dots_follow_the_lane_layout() {
        // tinyBLAS: lane l sums positions ≡ l (mod 16) in order.
        let n = 64;
        let (a, b) = (pseudo_random(5, n), pseudo_random(6, n));
        let lanes: [f32; 16] = std::array::from_fn(|l| (l..n).step_by(16).fold(0.0f32, |s, i| a[i].mul_add(b[i], s)));
        assert_eq!(dot(Order::Tiny, &a, &b).to_bits(), reduce16(&lanes).to_bits());
        // ggml_vec_dot_f16: accumulator j takes blocks j of each 64.
        let n = 200;
        let (a, b) = (pseudo_random(7, n), pseudo_random(8, n));
        let acc: [[f32; 16]; 4] = std::array::from_fn(|j| {
            std::array::from_fn(|l| {
                (0..192)
                    .filter(|i| (i / 16) % 4 == j && i % 16 == l)
                    .fold(0.0f32, |s, i| a[i].mul_add(b[i], s))
            })
        });
        let x: [f32; 16] = std::array::from_fn(|l| (acc[0][l] + acc[2][l]) + (acc[1][l] + acc[3][l]));
        let mut want = reduce16(&x) as f64;
        for i in 192..n {
            want += (a[i] * b[i]) as f64;
        }
        assert_eq!(dot(Order::VecDot, &a, &b).to_bits(), (want as f32).to_bits());
    }

    fn layer(n_head: usize, n_kv_head: usize, head_dim: usize, window: usize) -> Attention {
        Attention {
            q: 0,
            k: 0,
            v: 0,
            layer: 0,
            n_head,
            n_kv_head,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window,
        }
    }

    /// ggml's non-FA attention written out plainly over a padded cache of
    /// `n_kv` cells: the products as full mat-muls over all cells (masked
    /// weights 0), the softmax over the whole padded row.
    fn reference(a: &Attention, q: &[f32], keys: &[f16], values: &[f16], start: usize, n_kv: usize) -> Vec<f32> {
        let (hd, width) = (a.head_dim, a.n_kv_head * a.head_dim);
        let rows = q.len() / (a.n_head * hd);
        let (kq_order, kqv_order) = orders(rows, hd);
        let cell = |data: &[f16], t: usize, h: usize| -> Vec<f32> {
            if t < start + rows {
                data[t * width + h * hd..][..hd].iter().map(|v| v.to_f32()).collect()
            } else {
                vec![0.0; hd]
            }
        };
        let mut out = vec![0.0; q.len()];
        for row in 0..rows {
            let position = start + row;
            let first = first_position(a, position);
            for head in 0..a.n_head {
                let kvh = head / (a.n_head / a.n_kv_head);
                let q16: Vec<f32> = q[(row * a.n_head + head) * hd..][..hd]
                    .iter()
                    .map(|&v| f16::from_f32(v).to_f32())
                    .collect();
                let w: Vec<f32> = (0..n_kv)
                    .map(|t| {
                        let s = dot(kq_order, &cell(keys, t, kvh), &q16) * a.scale;
                        s + if (first..=position).contains(&t) {
                            0.0
                        } else {
                            f32::NEG_INFINITY
                        }
                    })
                    .collect();
                let max = w.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = w.iter().map(|&x| expf(x - max)).collect();
                let sum: f64 = e
                    .chunks(16)
                    .map(|c| reduce16(&std::array::from_fn(|l| c[l])) as f64)
                    .sum();
                let inv = (1.0 / sum) as f32;
                let p16: Vec<f32> = e.iter().map(|x| f16::from_f32(x * inv).to_f32()).collect();
                for d in 0..hd {
                    let v_t: Vec<f32> = (0..n_kv).map(|t| cell(values, t, kvh)[d]).collect();
                    out[(row * a.n_head + head) * hd + d] = dot(kqv_order, &v_t, &p16);
                }
            }
        }
        out
    }

    #[test]
    fn attention_equals_the_padded_reference() {
        for (a, rows, start) in [
            (layer(4, 2, 64, 0), 7, 0),
            (layer(4, 2, 64, 0), 1, 40),
            (layer(4, 2, 64, 0), 21, 30),
            (layer(2, 1, 32, 5), 9, 3),
            (layer(2, 1, 32, 5), 1, 20),
            (layer(3, 3, 24, 0), 6, 11),
            // Decode past several rounds of the 64 accumulator slots.
            (layer(4, 1, 256, 0), 1, 300),
            (layer(2, 1, 64, 100), 1, 250),
            (layer(2, 1, 64, 0), 3, 140),
        ] {
            let width = a.n_kv_head * a.head_dim;
            let n = start + rows;
            let keys: Vec<f16> = pseudo_random(11, n * width).iter().map(|&v| f16::from_f32(v)).collect();
            let values: Vec<f16> = pseudo_random(12, n * width).iter().map(|&v| f16::from_f32(v)).collect();
            let q = pseudo_random(13, rows * a.n_head * a.head_dim);
            let mut out = vec![0.0; q.len()];
            attention(&a, &q, &keys, &values, start, &mut out);
            let want = reference(&a, &q, &keys, &values, start, n.next_multiple_of(64));
            for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    w.to_bits(),
                    "rows {rows} start {start} element {i}: {g} vs {w}"
                );
            }
            // The portable build equals the FMA build.
            let cache_lo = first_position(&a, start);
            let to32 = |h: &[f16]| -> Vec<f32> { h[cache_lo * width..n * width].iter().map(|v| v.to_f32()).collect() };
            let (k32, v32) = (to32(&keys), to32(&values));
            let cache = Cache {
                keys: Cells::F32(&k32),
                values: Cells::F32(&v32),
                lo: cache_lo,
            };
            let (kq, kqv) = orders(rows, a.head_dim);
            let hd = a.head_dim;
            for row in 0..rows {
                for head in 0..a.n_head {
                    let mut o = vec![0.0; hd];
                    let query = &q[(row * a.n_head + head) * hd..][..hd];
                    head_attention_impl::<false>(&a, kq, kqv, &cache, query, start + row, head, &mut o);
                    assert_eq!(o, out[(row * a.n_head + head) * hd..][..hd]);
                }
            }
        }
    }

    #[test]
    fn attention_to_one_position_returns_its_value() {
        let a = Attention {
            q: 0,
            k: 0,
            v: 0,
            layer: 0,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 2,
            scale: 1.0,
            window: 0,
        };
        let keys: Vec<f16> = [1.0, 0.0].iter().map(|&v| f16::from_f32(v)).collect();
        let values: Vec<f16> = [3.0, -2.0].iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0.0; 4];
        attention(&a, &[0.5, 0.5, 1.0, 1.0], &keys, &values, 0, &mut out);
        assert_eq!(out, vec![3.0, -2.0, 3.0, -2.0]);
    }

    #[test]
    fn sliding_window_ignores_old_positions() {
        let a = Attention {
            q: 0,
            k: 0,
            v: 0,
            layer: 0,
            n_head: 1,
            n_kv_head: 1,
            head_dim: 1,
            scale: 1.0,
            window: 1,
        };
        let keys: Vec<f16> = [0.0, 0.0].iter().map(|&v| f16::from_f32(v)).collect();
        let values: Vec<f16> = [5.0, 7.0].iter().map(|&v| f16::from_f32(v)).collect();
        let mut out = vec![0.0; 1];
        attention(&a, &[1.0], &keys, &values, 1, &mut out);
        assert_eq!(out, vec![7.0]);
    }
}

/// Checks [`attention`] against a llama.cpp run, bit for bit, from the
/// attention inputs and outputs that `llama-eval-callback` dumps with
/// `DUMP_DIR` set (see `scripts/golden/`): for example
/// `DUMP_DIR=/tmp/d llama-eval-callback -m SmolLM2.gguf -p "The capital of
/// France is" -c 2048 -t 2 -fa off -n 1`, then
/// `ATTN_DUMP=/tmp/d ATTN_SHAPE=9,3,64,0.125,0,30 cargo test --release -p
/// realm-host --lib against_llama_dump -- --ignored --nocapture`
/// (n_head, n_kv_head, head_dim, scale, window, layers).
#[cfg(test)]
mod dump_check {
    use super::*;

    fn read(dir: &str, name: &str) -> Vec<f32> {
        std::fs::read(format!("{dir}/{name}.f32"))
            .expect("a dumped tensor")
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Checks [`dot`] in `ggml_vec_dot_f16`'s order (the decode path) against
    /// that function itself: `VECDOT=file` holds cases written by a small C
    /// program linked to ggml-cpu, each `n: u32`, x and y as `n` f16 bits,
    /// then ggml's result as f32.
    #[test]
    #[ignore = "needs VECDOT, cases computed by ggml_vec_dot_f16"]
    fn vec_dot_equals_ggml() {
        let bytes = std::fs::read(std::env::var("VECDOT").expect("VECDOT")).expect("the cases");
        let (mut at, mut cases) = (0, 0);
        let u32_at = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        let halves = |i: usize, n: usize| -> Vec<f32> {
            (0..n)
                .map(|j| f16::from_bits(u16::from_le_bytes([bytes[i + 2 * j], bytes[i + 2 * j + 1]])).to_f32())
                .collect()
        };
        while at < bytes.len() {
            let n = u32_at(at) as usize;
            let (x, y) = (halves(at + 4, n), halves(at + 4 + 2 * n, n));
            let want = f32::from_bits(u32_at(at + 4 + 4 * n));
            assert_eq!(
                dot(Order::VecDot, &x, &y).to_bits(),
                want.to_bits(),
                "case {cases}, n {n}"
            );
            at += 8 + 4 * n;
            cases += 1;
        }
        eprintln!("{cases} cases equal ggml_vec_dot_f16");
    }

    #[test]
    #[ignore = "needs a llama-eval-callback dump (ATTN_DUMP, ATTN_SHAPE)"]
    fn against_llama_dump() {
        let dir = std::env::var("ATTN_DUMP").expect("ATTN_DUMP");
        let s: Vec<f32> = std::env::var("ATTN_SHAPE")
            .expect("ATTN_SHAPE")
            .split(',')
            .map(|v| v.parse().expect("a number"))
            .collect();
        let a = Attention {
            q: 0,
            k: 0,
            v: 0,
            layer: 0,
            n_head: s[0] as usize,
            n_kv_head: s[1] as usize,
            head_dim: s[2] as usize,
            scale: s[3],
            window: s[4] as usize,
        };
        let to_f16 = |x: Vec<f32>| -> Vec<f16> { x.iter().map(|&v| f16::from_f32(v)).collect() };
        for layer in 0..s[5] as usize {
            let q = read(&dir, &format!("Qcur-{layer}"));
            let k = to_f16(read(&dir, &format!("Kcur-{layer}")));
            let v = to_f16(read(&dir, &format!("Vcur-{layer}")));
            let want = read(&dir, &format!("kqv_out-{layer}"));
            let mut out = vec![0.0; q.len()];
            attention(&a, &q, &k, &v, 0, &mut out);
            let diff = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let same = out
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() == b.to_bits())
                .count();
            eprintln!("layer {layer}: {same}/{} identical, max diff {diff}", out.len());
            assert_eq!(same, out.len(), "layer {layer}");
        }
    }
}
