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
    /// Sliding window in positions; 0 = the whole context.
    pub window: u32,
}

/// What varies between architectures' attention blocks.
#[derive(Clone, Copy, Default)]
pub struct AttentionOptions {
    /// Q/K/V projections carry biases (`attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// RMS-normalise each head of Q and K (`attn_{q,k}_norm`) with this epsilon.
    pub qk_norm_eps: Option<f32>,
    /// Multiply Q by this after RoPE, and attend with scale 1 (gemma); otherwise
    /// attend with 1/sqrt(head dim).
    pub query_scale: Option<f32>,
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

    /// RMS norm of each `group`-long slice (each head) with a weight of that length.
    pub fn rms_norm_groups(&mut self, input: ValueId, weight: &str, eps: f32, group: u32) -> ValueId {
        let weight = Some(weight.to_string());
        self.push(Op::RmsNorm(RmsNormOp {
            input,
            weight,
            eps,
            group,
        }))
    }

    pub fn add_tensor(&mut self, input: ValueId, tensor: &str) -> ValueId {
        self.push(Op::AddTensor((input, tensor.to_string())))
    }

    pub fn scale(&mut self, input: ValueId, factor: f32) -> ValueId {
        self.push(Op::Scale((input, factor)))
    }

    pub fn geglu(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        self.push(Op::Geglu((gate, up)))
    }

    pub fn swiglu(&mut self, gate: ValueId, up: ValueId) -> ValueId {
        self.push(Op::Swiglu((gate, up)))
    }

    /// The last rows of the last layer's attention output and residual. From
    /// there on llama.cpp keeps only the position whose logits are wanted
    /// (`inp_out_ids`), so the rest of the layer runs as one-row products,
    /// whose kernels (and float order) differ from the many-row ones.
    pub fn last_rows(&mut self, attended: ValueId, residual: ValueId) -> (ValueId, ValueId) {
        (self.push(Op::LastRow(attended)), self.push(Op::LastRow(residual)))
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

    /// Q/K/V projections (with biases, per-head norms and a query scale where the
    /// architecture has them), RoPE, causal attention over the layer's KV cache
    /// and the output projection. `prefix` is the layer's tensor prefix (`blk.N`).
    pub fn self_attention(
        &mut self,
        input: ValueId,
        prefix: &str,
        layer: u32,
        shape: &AttentionShape,
        options: AttentionOptions,
    ) -> ValueId {
        let project = |g: &mut Self, name: &str| {
            let projected = g.matmul(input, &format!("{prefix}.attn_{name}.weight"));
            if options.qkv_bias {
                g.add_tensor(projected, &format!("{prefix}.attn_{name}.bias"))
            } else {
                projected
            }
        };
        let (mut q, mut k) = (project(self, "q"), project(self, "k"));
        let v = project(self, "v");
        if let Some(eps) = options.qk_norm_eps {
            q = self.rms_norm_groups(q, &format!("{prefix}.attn_q_norm.weight"), eps, shape.head_dim);
            k = self.rms_norm_groups(k, &format!("{prefix}.attn_k_norm.weight"), eps, shape.head_dim);
        }
        let mut q = self.rope(q, shape);
        let k = self.rope(k, shape);
        let scale = match options.query_scale {
            Some(factor) => {
                q = self.scale(q, factor);
                1.0
            }
            None => 1.0 / (shape.head_dim as f32).sqrt(),
        };
        let attended = self.push(Op::Attention(AttentionOp {
            q,
            k,
            v,
            layer,
            n_head: shape.n_head,
            n_kv_head: shape.n_kv_head,
            head_dim: shape.head_dim,
            scale,
            window: shape.window,
        }));
        self.matmul(attended, &format!("{prefix}.attn_output.weight"))
    }

    /// The gated feed-forward block: down(act(gate(x)) * up(x)), with SiLU
    /// (SwiGLU) or GELU (GeGLU).
    pub fn gated_ffn(&mut self, input: ValueId, prefix: &str, activation: Activation) -> ValueId {
        let gate = self.matmul(input, &format!("{prefix}.ffn_gate.weight"));
        let up = self.matmul(input, &format!("{prefix}.ffn_up.weight"));
        let hidden = match activation {
            Activation::Silu => self.swiglu(gate, up),
            Activation::Gelu => self.geglu(gate, up),
        };
        self.matmul(hidden, &format!("{prefix}.ffn_down.weight"))
    }
}

/// The gate activation of a feed-forward block.
#[derive(Clone, Copy)]
pub enum Activation {
    Silu,
    Gelu,
}
