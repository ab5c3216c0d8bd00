//! The compute layer's own op list: what a step graph is made of before
//! `graph.rs` compiles it against a model file. It mirrors the WIT `op`
//! variant one for one (`runtime/compute_host.rs` converts), so compute can
//! be built, read and tested without the WIT bindings.

/// The index of an op in a graph's op list; the value the op produced.
pub type ValueId = u32;

/// One op of a forward-step graph; each op's result is the value whose id is
/// the op's index. Values are f32 matrices of one row per step token, except
/// after `LastRow` (one row per sequence).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The step's tokens looked up in an embedding tensor of [vocab, dim].
    Embed(String),
    RmsNorm(RmsNormOp),
    Matmul(MatmulOp),
    /// A 1-D tensor (a bias) added to every row.
    AddTensor((ValueId, String)),
    Add((ValueId, ValueId)),
    Mul((ValueId, ValueId)),
    Scale((ValueId, f32)),
    Rope(RopeOp),
    Attention(AttentionOp),
    /// silu(a) * b.
    Swiglu((ValueId, ValueId)),
    /// gelu(a) * b, tanh approximation.
    Geglu((ValueId, ValueId)),
    /// Only the last row of each sequence.
    LastRow(ValueId),
}

/// RMS normalisation of each row (or each `group`-long slice; 0 is the whole
/// row), then an optional scale by a 1-D weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct RmsNormOp {
    pub input: ValueId,
    pub weight: Option<String>,
    pub eps: f32,
    pub group: u32,
}

/// `input x weight^T` for a [n, k] weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct MatmulOp {
    pub input: ValueId,
    pub weight: String,
}

/// How RoPE pairs a head's dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1).
    Normal,
    /// Halves (i, i + n/2), GPT-NeoX style.
    Neox,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RopeOp {
    pub input: ValueId,
    pub head_dim: u32,
    pub rotary_dims: u32,
    pub base: f32,
    pub freq_scale: f32,
    pub style: RopeStyle,
}

/// Causal attention of one layer over the KV cache, after appending this
/// step's keys and values; `window` 0 attends to every position.
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOp {
    pub q: ValueId,
    pub k: ValueId,
    pub v: ValueId,
    pub layer: u32,
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    pub scale: f32,
    pub window: u32,
}
