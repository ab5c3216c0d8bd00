//! The gemma3 architecture: embeddings scaled by sqrt(n_embd); layers that
//! alternate sliding-window (local) and full (global) attention, each with its
//! own RoPE base; per-head Q/K RMS norms; norms before and after both the
//! attention and the GeGLU feed-forward block.

use super::graph::{Activation, AttentionOptions, GraphBuilder};
use super::{Hyperparameters, TensorNames};
use crate::Error;
use crate::compute::{Op, RopeStyle};
use crate::metadata::Metadata;

/// In each run of this many layers, all but the last use the sliding window
/// (`{arch}.attention.sliding_window_pattern` overrides it).
const DEFAULT_SWA_PATTERN: u32 = 6;
/// RoPE base of the sliding-window layers (`{arch}.rope.freq_base_swa` overrides it).
const DEFAULT_SWA_ROPE_BASE: f32 = 10_000.0;

/// How gemma3's layers differ from each other.
pub struct Layers {
    window: u32,
    pattern: u32,
    local_rope_base: f32,
}

impl Layers {
    pub fn read(meta: &Metadata, hp: &Hyperparameters) -> Result<Self, Error> {
        let layers = Self {
            window: meta.arch_u32_or("attention.sliding_window", 0)?,
            pattern: meta.arch_u32_or("attention.sliding_window_pattern", DEFAULT_SWA_PATTERN)?,
            local_rope_base: meta.arch_f32_or("rope.freq_base_swa", DEFAULT_SWA_ROPE_BASE)?,
        };
        if hp.n_kv_head == 0 || hp.head_dim == 0 {
            return Err(Error::UnsupportedModel("gemma3: no attention heads".into()));
        }
        Ok(layers)
    }

    /// Whether `layer` attends through the sliding window.
    fn is_local(&self, layer: u32) -> bool {
        self.window > 0 && (self.pattern == 0 || layer % self.pattern < self.pattern - 1)
    }
}

pub fn graph(hp: &Hyperparameters, names: &TensorNames, layers: &Layers) -> Vec<Op> {
    let options = AttentionOptions {
        qk_norm_eps: Some(hp.rms_eps),
        query_scale: Some(1.0 / (hp.head_dim as f32).sqrt()),
        ..AttentionOptions::default()
    };
    let mut g = GraphBuilder::default();
    let embedded = g.embed(TensorNames::TOKEN_EMBEDDING);
    let mut x = g.scale(embedded, (hp.n_embd as f32).sqrt());
    for layer in 0..hp.n_layer {
        let prefix = format!("blk.{layer}");
        let mut shape = hp.attention(RopeStyle::Neox);
        if layers.is_local(layer) {
            shape.window = layers.window;
            shape.rope_base = layers.local_rope_base;
        }
        let h = g.rms_norm(x, &format!("{prefix}.attn_norm.weight"), hp.rms_eps);
        let mut attended = g.self_attention(h, &prefix, layer, &shape, options);
        if layer + 1 == hp.n_layer {
            (attended, x) = g.last_rows(attended, x);
        }
        let attended = g.rms_norm(attended, &format!("{prefix}.post_attention_norm.weight"), hp.rms_eps);
        x = g.add(attended, x);
        let h = g.rms_norm(x, &format!("{prefix}.ffn_norm.weight"), hp.rms_eps);
        let ffn = g.gated_ffn(h, &prefix, Activation::Gelu);
        let ffn = g.rms_norm(ffn, &format!("{prefix}.post_ffw_norm.weight"), hp.rms_eps);
        x = g.add(ffn, x);
    }
    let normed = g.rms_norm(x, TensorNames::OUTPUT_NORM, hp.rms_eps);
    g.matmul(normed, names.output());
    g.finish()
}
