//! kernels.cu, compiled for this GPU, and typed launches of its functions.

use std::sync::Arc;

use anyhow::Context;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};

use super::driver;
use crate::compute::ComputeError;
use crate::compute::gguf::GgmlType;

const SOURCE: &str = include_str!("kernels.cu");

/// Weight rows per matmul block (its warps); kernels.cu's WARPS.
const WARPS: u32 = 4;
/// Warps per attention block; kernels.cu's ATTN_WARPS.
const ATTN_WARPS: u32 = 16;
/// The matmul tilings (input rows per block row): the small one for up to
/// that many rows.
const SMALL_TILE: usize = 8;
const LARGE_TILE: usize = 32;
/// Threads of the elementwise kernels' blocks.
const THREADS: u32 = 256;

/// The types kernels.cu decodes, with their kernel's suffix.
const MATMUL_TYPES: [(GgmlType, &str); 13] = [
    (GgmlType::F32, "f32"),
    (GgmlType::F16, "f16"),
    (GgmlType::Bf16, "bf16"),
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

pub struct Kernels {
    _module: Arc<CudaModule>,
    /// Per weight type, its kernels for the small and the large tiling.
    matmul: Vec<(GgmlType, [CudaFunction; 2])>,
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
        let matmul = MATMUL_TYPES
            .iter()
            .map(|&(ty, suffix)| {
                let tiles = [SMALL_TILE, LARGE_TILE].map(|t| f(&format!("matmul_{suffix}_{t}")));
                let [small, large] = tiles;
                Ok((ty, [small?, large?]))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            matmul,
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
            _module: module,
        })
    }

    /// `y[rows, n] = x[rows, k] . w[n, k]^T` for weights of type `ty`.
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
    ) -> Result<(), ComputeError> {
        let kernels = self
            .matmul
            .iter()
            .find(|(t, _)| *t == ty)
            .map(|(_, f)| f)
            .ok_or_else(|| ComputeError::Unsupported(format!("the CUDA backend has no matmul for {ty}")))?;
        let (f, tile) = if rows <= SMALL_TILE {
            (&kernels[0], SMALL_TILE)
        } else {
            (&kernels[1], LARGE_TILE)
        };
        let (k, n, rows_i, row_bytes) = (k as i32, n as i32, rows as i32, row_bytes as i32);
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(WARPS), rows.div_ceil(tile) as u32, 1),
            block_dim: (32 * WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = s.launch_builder(f);
        b.arg(&w).arg(&x).arg(&y).arg(&k).arg(&n).arg(&rows_i).arg(&row_bytes);
        // SAFETY: the pointers hold [n, k] weights of `ty`, [rows, k] and [rows, n] f32s.
        unsafe { b.launch(cfg) }.map(drop).map_err(driver)
    }

    /// `y` is `x` (`n` values, a multiple of 32) rounded as activations for
    /// weights of `ty` are quantized; None where `ty` (f32) takes them as they are.
    pub fn round_activations(
        &self,
        s: &Arc<CudaStream>,
        ty: GgmlType,
        x: Ptr,
        y: Ptr,
        n: usize,
    ) -> Option<Result<(), ComputeError>> {
        let (mode, per_warp) = match ty {
            GgmlType::F32 => return None,
            GgmlType::F16 => (3i32, 32),
            GgmlType::Bf16 => (4, 32),
            _ if crate::compute::cpu::kquants::is_k_quant(ty) => (2, 256),
            _ => (1, 32),
        };
        let n_i = n as i32;
        let mut b = s.launch_builder(&self.round_activations);
        b.arg(&x).arg(&y).arg(&n_i).arg(&mode);
        let warps = n.div_ceil(per_warp) as u32;
        // SAFETY: x and y hold n f32s, n a multiple of the block (checked by the caller).
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
