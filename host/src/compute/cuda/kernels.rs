//! kernels.cu, compiled for this GPU, and typed launches of its functions.

use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use super::driver;
use crate::compute::ComputeError;
use crate::compute::gguf::GgmlType;
use crate::compute::quant::VecDotType;

const SOURCE: &str = include_str!("kernels.cu");

/// Weight rows per matmul block (its warps); kernels.cu's WARPS.
const WARPS: u32 = 4;
/// Warps per attention block; kernels.cu's ATTN_WARPS.
const ATTN_WARPS: u32 = 16;
/// The float matmul's tilings (input rows per block row): the small one for
/// up to that many rows.
const SMALL_TILE: usize = 8;
const LARGE_TILE: usize = 32;
/// Warps per quantized-matmul block (kernels.cu's MMQ_WARPS), and its
/// tilings (weight rows, input rows per warp), each for up to that many rows.
const MMQ_WARPS: u32 = 4;
const MMQ_TILES: [(usize, usize); 3] = [(1, 4), (2, 8), (4, 16)];
/// Threads of the elementwise kernels' blocks.
const THREADS: u32 = 256;

/// The float types kernels.cu multiplies in f32, with their kernel's suffix.
const FLOAT_TYPES: [(GgmlType, &str); 3] = [(GgmlType::F32, "f32"), (GgmlType::F16, "f16"), (GgmlType::Bf16, "bf16")];

/// The quantized types kernels.cu multiplies in int8 against q8 activations.
const QUANT_TYPES: [(GgmlType, &str); 10] = [
    (GgmlType::Q4_0, "q4_0"),
    (GgmlType::Q4_1, "q4_1"),
    (GgmlType::Q5_0, "q5_0"),
    (GgmlType::Q5_1, "q5_1"),
    (GgmlType::Q8_0, "q8_0"),
    (GgmlType::Q2K, "q2_k"),
    (GgmlType::Q3K, "q3_k"),
    (GgmlType::Q4K, "q4_k"),
    (GgmlType::Q5K, "q5_k"),
    (GgmlType::Q6K, "q6_k"),
];

/// A device pointer, as the kernels take it.
pub type Ptr = u64;

/// What a quantized matmul adds to its output as it writes it, in place of
/// the add that would follow it (the same f32 sums).
#[derive(Clone, Copy, Debug)]
pub enum Addend {
    /// `[rows, n]` f32s: a residual.
    Rows(Ptr),
    /// `n` f32s added to every row: a bias.
    Row(Ptr),
}

/// How a matmul with weights of a type takes its activations, made from f32
/// rows as the CPU backend (and llama.cpp) makes them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Activations {
    F32,
    /// f32s rounded to f16 or bf16.
    F16,
    Bf16,
    /// q8 rows (kernels.cu's quantize_q8) in q8_0 blocks of 32 or q8_K blocks of 256.
    Q8_0,
    Q8K,
}

impl Activations {
    /// The form of `quant::VecDotType` (the CPU's, llama.cpp's); None for a
    /// type realm does not compute with, which `graph.compile` refused.
    pub fn of(ty: GgmlType) -> Option<Self> {
        Some(match VecDotType::of(ty)? {
            VecDotType::F32 => Self::F32,
            VecDotType::F16 => Self::F16,
            VecDotType::Bf16 => Self::Bf16,
            VecDotType::Q8 => Self::Q8_0,
            VecDotType::Q8K => Self::Q8K,
        })
    }

    /// The f32 slots a row of `k` values (a multiple of 32) takes: q8 rows
    /// hold k bytes, a scale per 32 values and a sum per 16.
    pub fn row_slots(self, k: usize) -> usize {
        match self {
            Self::Q8_0 | Self::Q8K => k / 4 + k / 32 + k / 16,
            _ => k,
        }
    }
}

pub struct Kernels {
    _module: Arc<CudaModule>,
    /// Per float weight type, its kernels for the small and the large tiling.
    matmul: Vec<(GgmlType, [CudaFunction; 2])>,
    /// Per quantized weight type, its kernels for MMQ_TILES.
    mmq: Vec<(GgmlType, [CudaFunction; 3])>,
    quantize_q8: CudaFunction,
    rms_norm_q8: CudaFunction,
    round_activations: CudaFunction,
    rms_norm: CudaFunction,
    add: CudaFunction,
    mul: CudaFunction,
    scale: CudaFunction,
    add_row: CudaFunction,
    swiglu: CudaFunction,
    geglu: CudaFunction,
    rope: CudaFunction,
    gather_rows: CudaFunction,
    kv_append: CudaFunction,
    attention: CudaFunction,
    top_k: CudaFunction,
    hold: CudaFunction,
}

/// Arguments of `attention` and `kv_append` besides the tensors: where each
/// row's sequence keeps its keys and values ([position][layers][width] f16),
/// and each row's position.
pub struct KvRows {
    pub keys: Ptr,
    pub values: Ptr,
    pub positions: Ptr,
    pub layers: i32,
}

impl Kernels {
    pub fn compile(ctx: &Arc<CudaContext>, major: i32, minor: i32) -> anyhow::Result<Self> {
        let options = CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}")],
            ..Default::default()
        };
        let ptx = compile_ptx_with_opts(SOURCE, options).context("compiling kernels.cu with NVRTC")?;
        let module = ctx.load_module(ptx)?;
        let f = |name: &str| module.load_function(name).with_context(|| format!("kernel `{name}`"));
        let matmul = FLOAT_TYPES
            .iter()
            .map(|&(ty, suffix)| {
                let [small, large] = [SMALL_TILE, LARGE_TILE].map(|t| f(&format!("matmul_{suffix}_{t}")));
                Ok((ty, [small?, large?]))
            })
            .collect::<anyhow::Result<_>>()?;
        let mmq = QUANT_TYPES
            .iter()
            .map(|&(ty, suffix)| {
                let [a, b, c] = MMQ_TILES.map(|(tn, tr)| f(&format!("mmq_{suffix}_{tn}x{tr}")));
                Ok((ty, [a?, b?, c?]))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            matmul,
            mmq,
            quantize_q8: f("quantize_q8")?,
            rms_norm_q8: f("rms_norm_q8")?,
            round_activations: f("round_activations")?,
            rms_norm: f("rms_norm")?,
            add: f("add")?,
            mul: f("mul")?,
            scale: f("scale")?,
            add_row: f("add_row")?,
            swiglu: f("swiglu")?,
            geglu: f("geglu")?,
            rope: f("rope")?,
            gather_rows: f("gather_rows")?,
            kv_append: f("kv_append")?,
            attention: f("attention")?,
            top_k: f("top_k")?,
            hold: f("hold")?,
            _module: module,
        })
    }

    /// Whether weights of `ty` take the int8 matmul (over q8 rows, able to
    /// add a residual or a bias to its output) rather than the f32 one.
    pub fn is_int8(&self, ty: GgmlType) -> bool {
        self.mmq.iter().any(|(t, _)| *t == ty)
    }

    /// Whether there is a matmul for weights of `ty` at all.
    pub fn multiplies(&self, ty: GgmlType) -> bool {
        self.is_int8(ty) || FLOAT_TYPES.iter().any(|(t, _)| *t == ty)
    }

    /// `y[rows, n] = x[rows, k] . w[n, k]^T (+ add)` for weights of type
    /// `ty`, with `x` as `prepare` made it for `Activations::of(ty)`; `add`
    /// only where `is_int8(ty)`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        s: &Arc<CudaStream>,
        ty: GgmlType,
        w: Ptr,
        x: Ptr,
        y: Ptr,
        (rows, k, n): (usize, usize, usize),
        row_bytes: usize,
        add: Option<Addend>,
    ) -> Result<(), ComputeError> {
        let unsupported = || ComputeError::Unsupported(format!("the CUDA backend has no matmul for {ty}"));
        let quantized = self.mmq.iter().find(|(t, _)| *t == ty);
        if add.is_some() && quantized.is_none() {
            return Err(ComputeError::Internal(format!(
                "the {ty} matmul adds nothing to its output"
            )));
        }
        let (f, cfg) = if let Some((_, kernels)) = quantized {
            let tile = MMQ_TILES
                .iter()
                .position(|&(_, tr)| rows <= tr)
                .unwrap_or(MMQ_TILES.len() - 1);
            let (tn, tr) = MMQ_TILES[tile];
            let cfg = LaunchConfig {
                grid_dim: (
                    rows.div_ceil(tr) as u32 * (n as u32).div_ceil(tn as u32 * MMQ_WARPS),
                    1,
                    1,
                ),
                block_dim: (32 * MMQ_WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            (&kernels[tile], cfg)
        } else {
            let (_, kernels) = self.matmul.iter().find(|(t, _)| *t == ty).ok_or_else(unsupported)?;
            let (f, tile) = if rows <= SMALL_TILE {
                (&kernels[0], SMALL_TILE)
            } else {
                (&kernels[1], LARGE_TILE)
            };
            let cfg = LaunchConfig {
                grid_dim: ((n as u32).div_ceil(WARPS), rows.div_ceil(tile) as u32, 1),
                block_dim: (32 * WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            (f, cfg)
        };
        let (k, n, rows_i, row_bytes) = (k as i32, n as i32, rows as i32, row_bytes as i32);
        let (add, add_stride) = match add {
            None => (0, 0),
            Some(Addend::Rows(at)) => (at, n),
            Some(Addend::Row(at)) => (at, 0),
        };
        let mut b = s.launch_builder(f);
        b.arg(&w).arg(&x).arg(&y).arg(&k).arg(&n).arg(&rows_i).arg(&row_bytes);
        if quantized.is_some() {
            b.arg(&add).arg(&add_stride);
        }
        // SAFETY: the pointers hold [n, k] weights of `ty`, [rows, k] activations
        // prepared for them, [rows, n] f32s for y and `add`'s rows or n f32s
        // for its row.
        unsafe { b.launch(cfg) }.map(drop).map_err(driver)
    }

    /// `y` (`form.row_slots(k)` slots per row of `k`) is `x` (`n` values in
    /// rows of a multiple of the form's block) as `form`; None for f32, which
    /// is taken as it is.
    pub fn prepare(
        &self,
        s: &Arc<CudaStream>,
        form: Activations,
        x: Ptr,
        y: Ptr,
        n: usize,
    ) -> Option<Result<(), ComputeError>> {
        let (f, mode, per_warp) = match form {
            Activations::F32 => return None,
            Activations::F16 => (&self.round_activations, 3i32, 32),
            Activations::Bf16 => (&self.round_activations, 4, 32),
            Activations::Q8_0 => (&self.quantize_q8, 1, 32),
            Activations::Q8K => (&self.quantize_q8, 2, 256),
        };
        let n_i = n as i32;
        let mut b = s.launch_builder(f);
        b.arg(&x).arg(&y).arg(&n_i).arg(&mode);
        let warps = n.div_ceil(per_warp) as u32;
        // SAFETY: x holds n f32s and y the slots of n values in `form`.
        Some(
            unsafe { b.launch(blocks(warps.div_ceil(4), 128)) }
                .map(drop)
                .map_err(driver),
        )
    }

    /// RMS norm of each `group` values of `x` (`groups` of them) into `y`,
    /// times `weight` (a `group`-long f32 vector) unless it is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        y: Ptr,
        weight: Ptr,
        groups: usize,
        group: usize,
        eps: f32,
    ) -> Result<(), ComputeError> {
        let threads = (group as u32).next_multiple_of(32).min(THREADS);
        let group = group as i32;
        let mut b = s.launch_builder(&self.rms_norm);
        b.arg(&x).arg(&y).arg(&weight).arg(&group).arg(&eps);
        // SAFETY: x and y hold groups * group f32s, weight group or none.
        unsafe { b.launch(blocks(groups as u32, threads)) }
            .map(drop)
            .map_err(driver)
    }

    /// `rms_norm` of `rows` rows of `group` values, written only as q8 rows
    /// of `form` (Q8_0 or Q8K) into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_q8(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        out: Ptr,
        weight: Ptr,
        (rows, group): (usize, usize),
        eps: f32,
        form: Activations,
    ) -> Result<(), ComputeError> {
        let mode = match form {
            Activations::Q8_0 => 1i32,
            Activations::Q8K => 2,
            _ => return Err(ComputeError::Internal(format!("no fused norm for {form:?}"))),
        };
        let (group_i, n) = (group as i32, (rows * group) as i32);
        let mut b = s.launch_builder(&self.rms_norm_q8);
        b.arg(&x)
            .arg(&out)
            .arg(&weight)
            .arg(&group_i)
            .arg(&eps)
            .arg(&n)
            .arg(&mode);
        // SAFETY: x holds rows * group f32s, weight group or none, out the q8
        // rows of rows * group values; group is a multiple of the form's block.
        unsafe { b.launch(blocks(rows as u32, THREADS)) }
            .map(drop)
            .map_err(driver)
    }

    /// `y = a + b`, `a * b` (`mul`) or `silu(a) * b` / `gelu(a) * b` over `n` values.
    pub fn binary(
        &self,
        s: &Arc<CudaStream>,
        op: Binary,
        a: Ptr,
        b_: Ptr,
        y: Ptr,
        n: usize,
    ) -> Result<(), ComputeError> {
        let f = match op {
            Binary::Add => &self.add,
            Binary::Mul => &self.mul,
            Binary::Swiglu => &self.swiglu,
            Binary::Geglu => &self.geglu,
        };
        let n_i = n as i32;
        let mut b = s.launch_builder(f);
        b.arg(&a).arg(&b_).arg(&y).arg(&n_i);
        // SAFETY: a, b and y hold n f32s.
        unsafe { b.launch(elementwise(n)) }.map(drop).map_err(driver)
    }

    pub fn scale(&self, s: &Arc<CudaStream>, x: Ptr, y: Ptr, factor: f32, n: usize) -> Result<(), ComputeError> {
        let n_i = n as i32;
        let mut b = s.launch_builder(&self.scale);
        b.arg(&x).arg(&y).arg(&factor).arg(&n_i);
        // SAFETY: x and y hold n f32s.
        unsafe { b.launch(elementwise(n)) }.map(drop).map_err(driver)
    }

    /// `y = x + row` with `row` (`cols` f32s) added to each of x's rows.
    pub fn add_row(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        row: Ptr,
        y: Ptr,
        cols: usize,
        n: usize,
    ) -> Result<(), ComputeError> {
        let (cols, n_i) = (cols as i32, n as i32);
        let mut b = s.launch_builder(&self.add_row);
        b.arg(&x).arg(&row).arg(&y).arg(&cols).arg(&n_i);
        // SAFETY: x and y hold n f32s, row cols.
        unsafe { b.launch(elementwise(n)) }.map(drop).map_err(driver)
    }

    /// RoPE of `rows` rows of `cols`, each at its position (`positions`, i32).
    pub fn rope(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        y: Ptr,
        positions: Ptr,
        (rows, cols): (usize, usize),
        rope: &RopeArgs,
    ) -> Result<(), ComputeError> {
        let cols = cols as i32;
        let mut b = s.launch_builder(&self.rope);
        b.arg(&x).arg(&y).arg(&positions).arg(&cols);
        b.arg(&rope.head_dim)
            .arg(&rope.rotary_dims)
            .arg(&rope.theta_scale)
            .arg(&rope.freq_scale)
            .arg(&rope.neox);
        // SAFETY: x and y hold rows * cols f32s, positions rows i32s.
        unsafe { b.launch(blocks(rows as u32, 128)) }.map(drop).map_err(driver)
    }

    /// Row `i` of `y` is row `index[i]` of `x`.
    pub fn gather_rows(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        y: Ptr,
        index: Ptr,
        rows: usize,
        cols: usize,
    ) -> Result<(), ComputeError> {
        let cols = cols as i32;
        let mut b = s.launch_builder(&self.gather_rows);
        b.arg(&x).arg(&y).arg(&index).arg(&cols);
        // SAFETY: index holds rows in-bounds row numbers of x; y rows * cols f32s.
        unsafe { b.launch(blocks(rows as u32, THREADS)) }
            .map(drop)
            .map_err(driver)
    }

    /// Writes each row's keys and values (`width` f32s) at its position.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(
        &self,
        s: &Arc<CudaStream>,
        k: Ptr,
        v: Ptr,
        kv: &KvRows,
        rows: usize,
        layer: usize,
        width: usize,
    ) -> Result<(), ComputeError> {
        let (layer, width) = (layer as i32, width as i32);
        let mut b = s.launch_builder(&self.kv_append);
        b.arg(&k).arg(&v).arg(&kv.keys).arg(&kv.values).arg(&kv.positions);
        b.arg(&kv.layers).arg(&layer).arg(&width);
        // SAFETY: every row's stores hold its position (exec grew them).
        unsafe { b.launch(blocks(rows as u32, THREADS)) }
            .map(drop)
            .map_err(driver)
    }

    /// Each query row's heads over its sequence's cached positions.
    pub fn attention(
        &self,
        s: &Arc<CudaStream>,
        q: Ptr,
        out: Ptr,
        kv: &KvRows,
        rows: usize,
        a: &AttentionArgs,
    ) -> Result<(), ComputeError> {
        let mut b = s.launch_builder(&self.attention);
        b.arg(&q)
            .arg(&out)
            .arg(&kv.keys)
            .arg(&kv.values)
            .arg(&kv.positions)
            .arg(&kv.layers);
        b.arg(&a.layer)
            .arg(&a.n_head)
            .arg(&a.n_kv_head)
            .arg(&a.head_dim)
            .arg(&a.scale)
            .arg(&a.window);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, a.n_head as u32, 1),
            block_dim: (32 * ATTN_WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: q and out hold rows * n_head * head_dim f32s; every row's
        // stores hold positions 0..=its position of this layer.
        unsafe { b.launch(cfg) }.map(drop).map_err(driver)
    }
}

impl Kernels {
    /// The `k[row]` largest values of each of `rows` rows of `cols` (value
    /// descending, lower index first among equals) into `values` and `ids`,
    /// `max_k` slots per row.
    #[allow(clippy::too_many_arguments)]
    pub fn top_k(
        &self,
        s: &Arc<CudaStream>,
        x: Ptr,
        (rows, cols): (usize, usize),
        k: Ptr,
        max_k: usize,
        values: Ptr,
        ids: Ptr,
    ) -> Result<(), ComputeError> {
        let (cols, max_k) = (cols as i32, max_k as i32);
        let mut b = s.launch_builder(&self.top_k);
        b.arg(&x).arg(&cols).arg(&k).arg(&max_k).arg(&values).arg(&ids);
        // SAFETY: x holds rows * cols f32s, k rows i32s of at most max_k,
        // values and ids rows * max_k slots.
        unsafe { b.launch(blocks(rows as u32, 1024)) }.map(drop).map_err(driver)
    }
}

impl Kernels {
    /// Keeps the device busy for about `cycles` clock cycles (for profiling).
    pub fn hold(&self, s: &Arc<CudaStream>, cycles: i64) -> Result<(), ComputeError> {
        let mut b = s.launch_builder(&self.hold);
        b.arg(&cycles);
        // SAFETY: reads and writes nothing.
        unsafe { b.launch(blocks(1, 1)) }.map(drop).map_err(driver)
    }
}

#[derive(Clone, Copy)]
pub enum Binary {
    Add,
    Mul,
    Swiglu,
    Geglu,
}

pub struct RopeArgs {
    pub head_dim: i32,
    pub rotary_dims: i32,
    pub theta_scale: f32,
    pub freq_scale: f32,
    pub neox: i32,
}

pub struct AttentionArgs {
    pub layer: i32,
    pub n_head: i32,
    pub n_kv_head: i32,
    pub head_dim: i32,
    pub scale: f32,
    pub window: i32,
}

fn blocks(count: u32, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (count, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn elementwise(n: usize) -> LaunchConfig {
    blocks((n as u32).div_ceil(THREADS), THREADS)
}
