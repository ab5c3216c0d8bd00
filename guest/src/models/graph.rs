//! Builds a forward-step graph (the `compute` op list) out of named blocks that
//! the architectures share. Each builder returns the id of the value it produced.

use crate::compute::{AttentionOp, MatmulOp, Op, RmsNormOp, RopeOp, RopeStyle, ValueId};

#[derive(Default)]
pub struct GraphBuilder {
    ops: Vec<Op>,
}

/// Attention hyper-parameters of one layer.
#[derive(Clone, Copy)]
pub struct AttentionShape {
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    pub rotary_dims: u32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
    pub window: u32,
}

impl GraphBuilder {
    fn push(&mut self, op: Op) -> ValueId {
        self.ops.push(op);
        (self.ops.len() - 1) as ValueId
    }

    pub fn finish(self) -> Vec<Op> {
        self.ops
    }

    pub fn embed(&mut self, table: &str) -> ValueId {
        self.push(Op::Embed(table.to_string()))
    }

    pub fn rms_norm(&mut self, input: ValueId, weight: &str, eps: f32) -> ValueId {
        let weight = Some(weight.to_string());
        self.push(Op::RmsNorm(RmsNormOp {
            input,
            weight,
            eps,
            group: 0,
        }))
    }

    pub fn matmul(&mut self, input: ValueId, weight: &str) -> ValueId {
        self.push(Op::Matmul(MatmulOp {
            input,
            weight: weight.to_string(),
        }))
    }

    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.push(Op::Add((a, b)))
    }

    pub fn swiglu(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        self.push(Op::Swiglu((gate, up)))
    }

    pub fn last_row(&mut self, input: ValueId) -> ValueId {
        self.push(Op::LastRow(input))
    }

    pub fn rope(&mut self, input: ValueId, shape: &AttentionShape) -> ValueId {
        self.push(Op::Rope(RopeOp {
            input,
            head_dim: shape.head_dim,
            rotary_dims: shape.rotary_dims,
            base: shape.rope_base,
            freq_scale: 1.0,
            style: shape.rope_style,
        }))
    }

    /// Q/K/V projections, RoPE, causal attention over the layer's KV cache and the
    /// output projection. `prefix` is the layer's tensor prefix (`blk.N`).
    pub fn self_attention(&mut self, input: ValueId, prefix: &str, layer: u32, shape: &AttentionShape) -> ValueId {
        let q = self.matmul(input, &format!("{prefix}.attn_q.weight"));
        let k = self.matmul(input, &format!("{prefix}.attn_k.weight"));
        let v = self.matmul(input, &format!("{prefix}.attn_v.weight"));
        let q = self.rope(q, shape);
        let k = self.rope(k, shape);
        let attended = self.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            layer,
            n_head: shape.n_head,
            n_kv_head: shape.n_kv_head,
            head_dim: shape.head_dim,
            scale: 1.0 / (shape.head_dim as f32).sqrt(),
            window: shape.window,
        }));
        self.matmul(attended, &format!("{prefix}.attn_output.weight"))
    }

    /// The gated feed-forward block: down(silu(gate(x)) * up(x)).
    pub fn swiglu_ffn(&mut self, input: ValueId, prefix: &str) -> ValueId {
        let gate = self.matmul(input, &format!("{prefix}.ffn_gate.weight"));
        let up = self.matmul(input, &format!("{prefix}.ffn_up.weight"));
        let hidden = self.swiglu(gate, up);
        self.matmul(hidden, &format!("{prefix}.ffn_down.weight"))
    }
}
