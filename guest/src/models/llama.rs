//! The llama architecture (SmolLM2, TinyLlama and other Llama-style models):
//! pre-norm blocks of grouped-query attention with adjacent-pair RoPE and a
//! SwiGLU feed-forward network.

use super::graph::{Activation, AttentionOptions, GraphBuilder};
use super::{Hyperparameters, TensorNames};
use crate::compute::{Op, RopeStyle};

pub fn graph(hp: &Hyperparameters, names: &TensorNames) -> Vec<Op> {
    pre_norm_graph(hp, names, RopeStyle::Normal, AttentionOptions::default())
}

/// llama's pre-norm block stack, with the RoPE style and attention options that
/// llama-like architectures (qwen2) vary.
pub fn pre_norm_graph(
    hp: &Hyperparameters,
    names: &TensorNames,
    rope: RopeStyle,
    options: AttentionOptions,
) -> Vec<Op> {
    let shape = hp.attention(rope);
    let mut g = GraphBuilder::default();
    let mut x = g.embed(TensorNames::TOKEN_EMBEDDING);
    for layer in 0..hp.n_layer {
        let prefix = format!("blk.{layer}");
        let h = g.rms_norm(x, &format!("{prefix}.attn_norm.weight"), hp.rms_eps);
        let mut attended = g.self_attention(h, &prefix, layer, &shape, options);
        if layer + 1 == hp.n_layer {
            (attended, x) = g.last_rows(attended, x);
        }
        x = g.add(x, attended);
        let h = g.rms_norm(x, &format!("{prefix}.ffn_norm.weight"), hp.rms_eps);
        let ffn = g.gated_ffn(h, &prefix, Activation::Silu);
        x = g.add(x, ffn);
    }
    let normed = g.rms_norm(x, TensorNames::OUTPUT_NORM, hp.rms_eps);
    g.matmul(normed, names.output());
    g.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_row_goes_on_past_the_last_attention() {
        let hp = Hyperparameters {
            n_layer: 2,
            n_embd: 8,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 4,
            rotary_dims: 4,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            trained_context: 16,
        };
        let ops = graph(&hp, &TensorNames::new(&[]));
        let positions = |f: &dyn Fn(&Op) -> bool| -> Vec<usize> {
            ops.iter().enumerate().filter(|(_, op)| f(op)).map(|(i, _)| i).collect()
        };
        let last_attention = *positions(&|op| matches!(op, Op::Attention(_)))
            .last()
            .expect("attention");
        let last_gate = positions(&|op| matches!(op, Op::Matmul(m) if m.weight == "blk.1.ffn_gate.weight"));
        let last_rows = positions(&|op| matches!(op, Op::LastRow(_)));
        assert_eq!(last_rows.len(), 2, "the attention output and the residual");
        assert!(last_rows.iter().all(|&i| i > last_attention && i < last_gate[0]));
    }
}
