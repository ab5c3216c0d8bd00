//! The CPU's kernels, one table per weight type (as ggml's
//! `type_traits_cpu`): how the type's activations are quantized, and the
//! dot products this CPU runs for it, resolved once per matrix product
//! (`TypeKernels::of`). Below the table: `features` (which vector
//! instructions may run) and `x86` (shared intrinsics), leaves; `quantize`
//! (activations to q8); the portable loops (`portable`, a leaf); and the
//! vector kernels of the 32-value types (`q32`) and the K-quants (`kquant`),
//! which equal the portable loops bit for bit and import only `features`
//! and `x86`.

pub mod features;
pub mod kquant;
pub mod portable;
pub mod q32;
pub mod quantize;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use half::{bf16, f16};

pub use quantize::Activations;

use crate::compute::gguf::GgmlType;
use crate::compute::quant::q8::{BlockQ8, BlockQ8K};
use crate::compute::quant::{self, VecDotType, reference};

/// What the CPU does with one weight type.
#[derive(Clone, Copy)]
pub struct TypeKernels {
    pub ty: GgmlType,
    /// How input rows are quantized for it.
    pub vec_dot: VecDotType,
    /// The 32-value types' vector row kernels (one row, four rows).
    q32: Option<(q32::RowKernel, q32::Rows4Kernel)>,
    /// The K-quants' vector kernels (each where this CPU and type have one).
    kquant: kquant::Kernels,
    /// From how many rows llama.cpp multiplies this type in its tiled
    /// kernel rather than row by row (Q3_K, Q5_K, Q6_K).
    tiled_from: Option<usize>,
    /// Whether llama.cpp multiplies whole groups of four rows in another
    /// order than one row (repacked Q4_K: gemm against gemv).
    gemm4: bool,
}

impl TypeKernels {
    /// The table entry of `ty`, built on first use for this CPU; None for a
    /// type the CPU backend does not compute with.
    pub fn of(ty: GgmlType) -> Option<&'static TypeKernels> {
        static TABLE: OnceLock<Vec<TypeKernels>> = OnceLock::new();
        TABLE
            .get_or_init(|| quant::TYPES.iter().filter_map(|&ty| Self::resolve(ty)).collect())
            .iter()
            .find(|k| k.ty == ty)
    }

    fn resolve(ty: GgmlType) -> Option<Self> {
        Some(Self {
            ty,
            vec_dot: VecDotType::of(ty)?,
            q32: q32::kernels(ty),
            kquant: kquant::kernels(ty),
            tiled_from: matches!(ty, GgmlType::Q3K | GgmlType::Q5K | GgmlType::Q6K).then_some(portable::TILED_MIN_ROWS),
            gemm4: ty == GgmlType::Q4K,
        })
    }

    /// Quantizes an input row for this type.
    pub fn quantize(&self, x: &[f32]) -> Activations {
        quantize::quantize(self.vec_dot, x)
    }

    /// Whether `rows` rows multiplied together take the tiled kernel's order.
    pub fn is_tiled(&self, rows: usize) -> bool {
        self.tiled_from.is_some_and(|from| rows >= from)
    }

    /// Whether a row's result depends on how many rows are multiplied with it
    /// (the K-quants): a batch then multiplies each sequence's rows apart.
    pub fn order_depends_on_rows(&self) -> bool {
        self.vec_dot == VecDotType::Q8K
    }

    /// The vector kernel for one 32-value row, where this CPU has one.
    pub fn q32_row(&self) -> Option<q32::RowKernel> {
        self.q32.map(|(row, _)| row)
    }

    /// The vector kernel for one K-quant row, where this CPU has one.
    pub fn kquant_row(&self) -> Option<kquant::RowKernel> {
        self.kquant.row
    }

    /// `row . x` for one weight row and activations quantized for it, in
    /// the single-row order.
    pub fn dot(&self, row: &[u8], x: &Activations) -> f32 {
        match x {
            Activations::F32(x) => reference::dot(self.ty, row, x),
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
            Activations::Q8(blocks) => self.dot_q8(row, blocks),
            Activations::Q8K(blocks) => self.dot_q8k(row, blocks),
        }
    }

    fn dot_q8(&self, row: &[u8], blocks: &[BlockQ8]) -> f32 {
        match self.q32 {
            // SAFETY: `q32::kernels` checked the CPU features; whole blocks.
            Some((kernel, _)) => unsafe { kernel(row, blocks) },
            None => portable::dot_blocks(self.ty, row, blocks),
        }
    }

    fn dot_q8k(&self, row: &[u8], blocks: &[BlockQ8K]) -> f32 {
        match self.kquant.row {
            // SAFETY: `kquant::kernels` checked the CPU features; whole blocks.
            Some(kernel) => unsafe { kernel(row, blocks) },
            None => portable::dot_portable(self.ty, row, blocks),
        }
    }

    fn dot_q8k_tiled(&self, row: &[u8], blocks: &[BlockQ8K]) -> f32 {
        match self.kquant.row_tiled {
            // SAFETY: as `dot_q8k`.
            Some(kernel) => unsafe { kernel(row, blocks) },
            None => portable::dot_tiled_portable(self.ty, row, blocks),
        }
    }

    /// `dot(row, xs[r])` into `out[r]`: each row exactly as alone, four at a
    /// time where a kernel shares the weight row's unpacking in that order
    /// (the K-quants' decode rows of several sequences).
    pub fn dot_each(&self, row: &[u8], xs: &[&Activations], out: &mut [f32]) {
        let mut done = 0;
        if let Some(kernel) = self.kquant.rows4_alone {
            for (quad, o) in xs.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
                let Some(ys) = q8k_quad(quad.iter().copied()) else {
                    break;
                };
                // SAFETY: as `dot_q8k`; block `b` of the row pairs with block `b` of each row.
                o.copy_from_slice(&unsafe { kernel(row, ys) });
                done += 4;
            }
        }
        for (o, x) in out[done..].iter_mut().zip(&xs[done..]) {
            *o = self.dot(row, x);
        }
    }

    /// `row . xs[r]` into `out[r]` for activation rows multiplied together:
    /// four at a time where a kernel shares the weight row's unpacking, else
    /// one by one. The results are `dot`'s, except where llama.cpp orders a
    /// product of several rows differently: Q4_K rows in whole groups of four
    /// (`portable::dot_q4k` with `GEMM_GROUPS`), and every row of the
    /// K-quants it multiplies in its tiled kernel (`is_tiled`).
    pub fn dot_rows(&self, row: &[u8], xs: &[Activations], out: &mut [f32]) {
        let tiled = self.is_tiled(xs.len());
        let mut done = 0;
        for (quad, o) in xs.chunks_exact(4).zip(out.chunks_exact_mut(4)) {
            let Some(result) = self.quad(row, quad, tiled) else {
                break;
            };
            o.copy_from_slice(&result);
            done += 4;
        }
        for (o, x) in out[done..].iter_mut().zip(&xs[done..]) {
            *o = match x {
                Activations::Q8K(blocks) if tiled => self.dot_q8k_tiled(row, blocks),
                _ => self.dot(row, x),
            };
        }
    }

    /// Four rows of `dot_rows`, where a four-row kernel or order applies.
    fn quad(&self, row: &[u8], quad: &[Activations], tiled: bool) -> Option<[f32; 4]> {
        if let Some((_, kernel)) = self.q32
            && let Some(ys) = q8_quad(quad)
        {
            // SAFETY: as `dot_q8`.
            return Some(unsafe { kernel(row, ys) });
        }
        let ys = q8k_quad(quad.iter())?;
        if tiled {
            return Some(match self.kquant.rows4_tiled {
                // SAFETY: as `dot_q8k`.
                Some(kernel) => unsafe { kernel(row, ys) },
                None => ys.map(|y| self.dot_q8k_tiled(row, y)),
            });
        }
        match self.kquant.rows4 {
            // SAFETY: as `dot_q8k`.
            Some(kernel) => Some(unsafe { kernel(row, ys) }),
            None if self.gemm4 => Some(ys.map(|y| portable::dot_q4k(row, y, portable::GEMM_GROUPS))),
            None => None,
        }
    }
}

fn q8_quad(quad: &[Activations]) -> Option<[&[BlockQ8]; 4]> {
    match quad {
        [
            Activations::Q8(a),
            Activations::Q8(b),
            Activations::Q8(c),
            Activations::Q8(d),
        ] => Some([a, b, c, d]),
        _ => None,
    }
}

fn q8k_quad<'a>(mut quad: impl Iterator<Item = &'a Activations>) -> Option<[&'a [BlockQ8K]; 4]> {
    let mut next = || quad.next().and_then(Activations::q8k);
    Some([next()?, next()?, next()?, next()?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::quant::testing::{BLOCK_TYPES, K_TYPES, noise, random_any_row, random_k_row, random_row};
    use crate::compute::quant::{QK, QK_K, q8};

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
            let reference = reference::dot(ty, &row, &x);
            let k = TypeKernels::of(ty).expect("a CPU type");
            let got = k.dot(&row, &k.quantize(&x));
            let magnitude: f32 = {
                let mut w = vec![0.0; len];
                reference::dequantize_row(ty, &row, &mut w);
                w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum()
            };
            assert!(
                (got - reference).abs() <= 0.01 * magnitude,
                "{ty}: {got} vs {reference} (scale {magnitude})"
            );
        }
    }

    #[test]
    fn row_dots_keep_ggml_lanes_of_four_products() {
        // Block 0 puts 2^24 in lane 0; block 1 adds 1 to each of the 8 lanes.
        // In ggml's lanes lane 0 rounds 2^24 + 1 back to 2^24 and the other
        // seven 1s are summed pairwise: 2^24 + 6. Summed per block it would be
        // 2^24 + 8.
        let block = |d: f32, quants: &[(usize, i8)]| {
            let mut w = vec![0u8; 34];
            w[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
            let mut y = q8::quantize_block(&[0.0; QK]);
            y.d = 1.0;
            for &(j, q) in quants {
                w[2 + j] = q as u8;
                y.qs[j] = q;
            }
            (w, y)
        };
        let (w0, y0) = block(4096.0, &[(0, 64)]);
        let ones: Vec<(usize, i8)> = (0..8).map(|lane| (4 * lane, 1)).collect();
        let (w1, y1) = block(1.0, &ones);
        let row = [w0, w1].concat();
        let expected = 16_777_216.0 + 6.0;
        assert_eq!(portable::dot_blocks(GgmlType::Q8_0, &row, &[y0, y1]), expected);
        let k = TypeKernels::of(GgmlType::Q8_0).expect("a CPU type");
        assert_eq!(k.dot(&row, &Activations::Q8(vec![y0, y1])), expected);
    }

    #[test]
    fn dot_rows_orders_whole_quads_as_llama_cpp_and_the_rest_as_dot() {
        for ty in BLOCK_TYPES.into_iter().chain(K_TYPES) {
            let k = TypeKernels::of(ty).expect("a CPU type");
            for seed in 0..10u64 {
                let len = 3 * QK_K;
                let row = random_any_row(ty, len, seed);
                for rows in [7, 9] {
                    let xs: Vec<Activations> = (0..rows)
                        .map(|r| {
                            let x: Vec<f32> = noise(seed * 10 + r, len)
                                .iter()
                                .map(|&b| b as f32 / 64.0 - 2.0)
                                .collect();
                            k.quantize(&x)
                        })
                        .collect();
                    let mut out = vec![0.0; xs.len()];
                    k.dot_rows(&row, &xs, &mut out);
                    for (r, (o, x)) in out.iter().zip(&xs).enumerate() {
                        let expected = match x {
                            Activations::Q8K(y) if k.is_tiled(xs.len()) => portable::dot_tiled_portable(ty, &row, y),
                            // Whole quads (rows 0..8 of 9, 0..4 of 7): llama.cpp's repacked gemm.
                            Activations::Q8K(y) if ty == GgmlType::Q4K && r < xs.len() / 4 * 4 => {
                                portable::dot_q4k(&row, y, portable::GEMM_GROUPS)
                            }
                            _ => k.dot(&row, x),
                        };
                        assert_eq!(o.to_bits(), expected.to_bits(), "{ty} seed {seed} rows {rows} row {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn q8_k_dot_tracks_the_f32_reference_within_8_bit_error() {
        for ty in K_TYPES {
            let k = TypeKernels::of(ty).expect("a CPU type");
            for seed in 0..4u64 {
                let blocks = 3;
                let len = blocks * QK_K;
                let row = random_k_row(ty, blocks, 1000 * ty.id() as u64 + seed);
                let x: Vec<f32> = noise(77 + seed, len).iter().map(|&b| b as f32 / 64.0 - 2.0).collect();
                let mut w = vec![0.0; len];
                reference::dequantize_row(ty, &row, &mut w);
                let reference: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = w.iter().zip(&x).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let got = k.dot(&row, &k.quantize(&x));
                assert!(
                    (got as f64 - reference).abs() <= 0.01 * magnitude,
                    "{ty}: {got} vs {reference} (scale {magnitude})"
                );
                // With activations that Q8_K represents exactly, the dot is the exact sum.
                let mut has_max: Vec<f32> = noise(5 + seed, len).iter().map(|&b| (b as i8 / 2) as f32).collect();
                for block in has_max.chunks_exact_mut(QK_K) {
                    block[0] = -127.0; // max = -127: iscale = 1, d = 1
                }
                let reference: f64 = w.iter().zip(&has_max).map(|(&a, &b)| a as f64 * b as f64).sum();
                let magnitude: f64 = w.iter().zip(&has_max).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                let got = k.dot(&row, &k.quantize(&has_max));
                assert!(
                    (got as f64 - reference).abs() <= 1e-5 * magnitude.max(1.0),
                    "{ty}: exact activations {got} vs {reference}"
                );
            }
        }
    }
}
