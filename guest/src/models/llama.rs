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
        let attended = g.self_attention(h, &prefix, layer, &shape, options);
        x = g.add(x, attended);
        let h = g.rms_norm(x, &format!("{prefix}.ffn_norm.weight"), hp.rms_eps);
        let ffn = g.gated_ffn(h, &prefix, Activation::Silu);
        x = g.add(x, ffn);
    }
    let last = g.last_row(x);
    let normed = g.rms_norm(last, TensorNames::OUTPUT_NORM, hp.rms_eps);
    g.matmul(normed, names.output());
    g.finish()
}
