//! The qwen2 architecture (Qwen2, Qwen2.5): llama's block with biases on the
//! Q/K/V projections and NeoX-style (half-split) RoPE.

use super::graph::AttentionOptions;
use super::{Hyperparameters, TensorNames, llama};
use crate::compute::{Op, RopeStyle};

pub fn graph(hp: &Hyperparameters, names: &TensorNames) -> Vec<Op> {
    let options = AttentionOptions {
        qkv_bias: true,
        ..AttentionOptions::default()
    };
    llama::pre_norm_graph(hp, names, RopeStyle::Neox, options)
}
